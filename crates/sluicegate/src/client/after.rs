//! Dependencies between migrations (`--after A,B`): a migration runs only once each migration
//! it names has finished. Names are checked when it is queued (each must be queued already,
//! or come earlier among the definitions applied with it; not itself, not cancelled) and
//! resolved then to ids, each of a migration queued before it: the graph only ever points
//! back in time, so it has no cycle. Claims pass over a migration that waits (the store's
//! claim statement), and `status`/`show` say what it waits for.

use crate::client::{QueueRequest, Sluicegate};
use crate::error::{Error, Result};
use crate::model::Migration;
use crate::status::MigrationStatus;

impl Sluicegate {
    /// Refuses `req.after` when it names the migration itself, twice the same one, a
    /// migration not queued (and not among `earlier`, the definitions applied before it), or
    /// a cancelled one (it would never finish).
    pub(crate) async fn check_after(&self, req: &QueueRequest, earlier: &[String]) -> Result<()> {
        for (i, name) in req.after.iter().enumerate() {
            let refuse =
                |why: String| Err(Error::InvalidSettings(format!("--after {name:?}: {why}")));
            if name.trim().is_empty() {
                return refuse("an empty name".into());
            }
            if *name == req.name {
                return refuse("a migration cannot run after itself (a cycle)".into());
            }
            if req.after[..i].contains(name) {
                return refuse("named twice".into());
            }
            match self.store.migration_get_by_name(name).await? {
                Some(m) if m.status == MigrationStatus::Cancelled && !earlier.contains(name) => {
                    return refuse(format!(
                        "migration {} is cancelled and would never finish",
                        m.id
                    ))
                }
                Some(_) => {}
                None if earlier.contains(name) => {}
                None => {
                    return refuse(
                        "no migration of this name is queued (a definition it runs after must come earlier in file-name order)"
                            .into(),
                    )
                }
            }
        }
        Ok(())
    }

    /// The ids of the migrations `names` (the newest of each name), when `migration` is
    /// queued: each must be queued by then and not cancelled.
    pub(crate) async fn resolve_after(
        &self,
        migration: &str,
        names: &[String],
    ) -> Result<Vec<i64>> {
        let mut ids = Vec::with_capacity(names.len());
        for name in names {
            match self.store.migration_get_by_name(name).await? {
                Some(m) if m.status != MigrationStatus::Cancelled => ids.push(m.id),
                Some(m) => {
                    return Err(Error::InvalidSettings(format!(
                        "{migration:?} runs after {name:?}, but migration {} is cancelled",
                        m.id
                    )))
                }
                None => {
                    return Err(Error::InvalidSettings(format!(
                        "{migration:?} runs after {name:?}, which is not queued"
                    )))
                }
            }
        }
        Ok(ids)
    }

    /// The migrations `m` runs after that have not finished yet (what it waits for).
    pub async fn waiting_for(&self, m: &Migration) -> Result<Vec<Migration>> {
        let mut waiting = Vec::new();
        for id in &m.after {
            match self.store.migration_get(*id).await? {
                Some(d) if d.status != MigrationStatus::Finished => waiting.push(d),
                Some(_) => {}
                None => {
                    return Err(Error::Corrupt(format!(
                        "migration {} runs after migration {id}, which does not exist",
                        m.id
                    )))
                }
            }
        }
        Ok(waiting)
    }
}

/// Whether each migration of `all` can still run to its end without anyone: active or
/// finalizing, and every migration it runs after finished or itself able to (a migration
/// after a failed, paused or cancelled one waits for a person). `own` says which of them
/// a worker may run at all.
pub fn runnable_ids(all: &[Migration], own: impl Fn(&Migration) -> bool) -> Vec<i64> {
    // Dependencies point to older ids: deciding in id order sees each one first.
    let mut sorted: Vec<&Migration> = all.iter().collect();
    sorted.sort_by_key(|m| m.id);
    let mut runnable: Vec<i64> = Vec::new();
    for m in sorted {
        let live = matches!(
            m.status,
            MigrationStatus::Active | MigrationStatus::Finalizing
        ) && own(m);
        let after_ok = m.after.iter().all(|id| {
            runnable.contains(id)
                || all
                    .iter()
                    .any(|d| d.id == *id && d.status == MigrationStatus::Finished)
        });
        if live && after_ok {
            runnable.push(m.id);
        }
    }
    runnable
}
