//! Installing the tracking schema on PostgreSQL: the steps of the shared
//! [`schema_install`](crate::store::schema::schema_install) (an advisory lock serializes
//! concurrent setups), and reading the installed version.

use async_trait::async_trait;

use super::{exec_raw, PgStore};
use crate::error::{Error, Result};
use crate::store::schema::{schema_install, SchemaSteps};

/// Schema migrations, in order. `{s}` stands for the quoted tracking schema.
const SCHEMA_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../schema/postgres_v1.sql")),
    (2, include_str!("../schema/postgres_v2.sql")),
    (3, include_str!("../schema/postgres_v3.sql")),
    (4, include_str!("../schema/postgres_v4.sql")),
    (5, include_str!("../schema/postgres_v5.sql")),
    (6, include_str!("../schema/postgres_v6.sql")),
    (7, include_str!("../schema/postgres_v7.sql")),
    (8, include_str!("../schema/postgres_v8.sql")),
    (9, include_str!("../schema/postgres_v9.sql")),
];

const SETUP_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('sluicegate.setup:' || $1))";

const SCHEMA_VERSIONS_CREATE: &str = "CREATE TABLE IF NOT EXISTS {s}.schema_versions (
    version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())";

const SCHEMA_VERSIONS_EXISTS: &str = "SELECT to_regclass($1) IS NOT NULL";

const SCHEMA_VERSION_GET: &str = "SELECT max(version) FROM {s}.schema_versions";

const SCHEMA_VERSION_INSERT: &str = "INSERT INTO {s}.schema_versions (version) VALUES ($1)";

const SCHEMA_CONTEXT: &str = "installing the tracking schema";

/// The PostgreSQL steps of [`schema_install`], in one transaction.
struct PgSchemaSteps {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    store: PgStore,
}

#[async_trait]
impl SchemaSteps for PgSchemaSteps {
    async fn prepare(&mut self) -> Result<()> {
        sqlx::query(SETUP_LOCK)
            .bind(&self.store.schema)
            .execute(&mut *self.tx)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        let create = format!("CREATE SCHEMA IF NOT EXISTS {}", self.store.quoted_schema);
        exec_raw(&mut self.tx, &create)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        exec_raw(&mut self.tx, &self.store.q(SCHEMA_VERSIONS_CREATE))
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))
    }

    async fn current(&mut self) -> Result<i64> {
        let current: Option<i64> = sqlx::query_scalar(&self.store.q(SCHEMA_VERSION_GET))
            .fetch_one(&mut *self.tx)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        Ok(current.unwrap_or(0))
    }

    async fn apply(&mut self, version: i64, script: &str) -> Result<()> {
        exec_raw(&mut self.tx, &self.store.q(script))
            .await
            .map_err(Error::db(format!("applying schema version {version}")))?;
        sqlx::query(&self.store.q(SCHEMA_VERSION_INSERT))
            .bind(version)
            .execute(&mut *self.tx)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await.map_err(Error::db(SCHEMA_CONTEXT))
    }
}

pub(super) async fn install(store: &PgStore) -> Result<Vec<i64>> {
    let tx = store
        .pool
        .begin()
        .await
        .map_err(Error::db(SCHEMA_CONTEXT))?;
    let steps = PgSchemaSteps {
        tx,
        store: store.clone(),
    };
    schema_install(Box::new(steps), SCHEMA_MIGRATIONS).await
}

pub(super) async fn version(store: &PgStore) -> Result<Option<i64>> {
    let context = "reading the tracking schema version";
    let exists: bool = sqlx::query_scalar(SCHEMA_VERSIONS_EXISTS)
        .bind(format!("{}.schema_versions", store.quoted_schema))
        .fetch_one(&store.pool)
        .await
        .map_err(Error::db(context))?;
    if !exists {
        return Ok(None);
    }
    sqlx::query_scalar(&store.q(SCHEMA_VERSION_GET))
        .fetch_one(&store.pool)
        .await
        .map_err(Error::db(context))
}
