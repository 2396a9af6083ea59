//! Installing the tracking schema: the algorithm, written once (as sqlx's migrator keeps
//! `run_direct` apart from each backend's primitives); each backend gives its steps.

use async_trait::async_trait;

use super::SCHEMA_VERSION;
use crate::error::Result;

/// The steps of installing the tracking schema that differ per engine, inside one open
/// transaction; [`schema_install`] is the algorithm, written once (as sqlx's migrator keeps
/// `run_direct` apart from each backend's primitives).
#[async_trait]
pub(crate) trait SchemaSteps: Send {
    /// Serializes concurrent setups (PostgreSQL: an advisory lock; SQLite: `BEGIN
    /// IMMEDIATE` already did) and creates the versions table when missing.
    async fn prepare(&mut self) -> Result<()>;
    /// The newest version applied (0: none).
    async fn current(&mut self) -> Result<i64>;
    /// Runs one version's script and records the version.
    async fn apply(&mut self, version: i64, script: &str) -> Result<()>;
    /// Commits the whole upgrade.
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// Installs or upgrades the tracking schema to [`SCHEMA_VERSION`] in one transaction: refuses
/// a schema newer than this binary, applies the missing versions in order, returns them.
pub(crate) async fn schema_install(
    mut steps: Box<dyn SchemaSteps + '_>,
    versions: &[(i64, &'static str)],
) -> Result<Vec<i64>> {
    steps.prepare().await?;
    let current = steps.current().await?;
    if current > SCHEMA_VERSION {
        return Err(crate::Error::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    let mut applied = Vec::new();
    for (version, script) in versions.iter().filter(|(v, _)| *v > current) {
        steps.apply(*version, script).await?;
        applied.push(*version);
    }
    steps.commit().await?;
    Ok(applied)
}
