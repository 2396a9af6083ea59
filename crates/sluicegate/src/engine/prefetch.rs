//! What the next job of a migration needs (its health sample and key range), read on other
//! connections while the current job runs, so that neither costs time between jobs.

use futures::FutureExt;
use tokio::task::JoinHandle;

use crate::client::Sluicegate;
use crate::error::{Error, Result};
use crate::health::HealthSample;
use crate::ident::TableName;
use crate::key::{Key, Lower};
use crate::model::Migration;

/// A read of the next job's needs, started while the current job runs.
pub(super) struct Prefetch {
    /// Where the range was read from: the migration's next key when it started.
    pub(super) start: Lower,
    task: Option<JoinHandle<Prefetched>>,
    result: Option<Prefetched>,
}

/// What a [`Prefetch`] read.
pub(super) struct Prefetched {
    /// The target's health sample.
    pub(super) sample: Result<HealthSample>,
    /// The next job's key range from the start (`None`: no key left; also once a job was
    /// created over it, see [`Prefetched::use_range`]).
    pub(super) range: Result<Option<(Key, Key)>>,
}

impl Prefetched {
    /// The range, if one was read and not used yet; it is used up by this call (a job is
    /// created over it), and the sample stays for the next step's own health check.
    pub(super) fn use_range(&mut self) -> Option<(Key, Key)> {
        match std::mem::replace(&mut self.range, Ok(None)) {
            Ok(range) => range,
            Err(e) => {
                self.range = Err(e);
                None
            }
        }
    }
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("start", &self.start)
            .field("ready", &self.result.is_some())
            .finish()
    }
}

impl Prefetch {
    /// Starts reading `m`'s health sample and its key range from `start`.
    pub(super) fn start(sg: &Sluicegate, m: &Migration, table: &TableName, start: Lower) -> Self {
        let target = sg.target.clone();
        let (table, key, probe) = (table.clone(), m.key.clone(), m.health.probe.clone());
        let scope = m.scope.clone();
        let (max, size) = (m.max_value.clone(), m.batch_size);
        let statement_ms = m.statement_timeout_ms;
        let from = start.clone();
        let task = tokio::spawn(async move {
            let sample = target.health_sample(&table, probe.as_deref());
            let range = target.range_next(
                &table,
                &key,
                scope.as_deref(),
                &from,
                &max,
                size,
                statement_ms,
            );
            let (sample, range) = futures::join!(sample, range);
            Prefetched { sample, range }
        });
        Self {
            start,
            task: Some(task),
            result: None,
        }
    }

    /// Its result if it is there now; never waits.
    pub(super) fn ready(&mut self) -> Option<&mut Prefetched> {
        if self.result.is_none() {
            let task = self.task.as_mut()?;
            if !task.is_finished() {
                return None;
            }
            let joined = task.now_or_never()?;
            self.task = None;
            self.result = Some(joined.unwrap_or_else(|e| {
                let lost = || Error::Corrupt(format!("prefetch task died: {e}"));
                Prefetched {
                    sample: Err(lost()),
                    range: Err(lost()),
                }
            }));
        }
        self.result.as_mut()
    }

    /// Its result, waiting for it (outside any transaction).
    pub(super) async fn wait(mut self) -> Option<Prefetched> {
        if let Some(task) = self.task.take() {
            self.result = task.await.ok();
        }
        self.result.take()
    }
}

// A prefetch no longer wanted is left to finish on its own, never aborted: its reads run in
// transactions (the walk under the migration's statement timeout, the probe read-only), and
// a task cancelled between a `BEGIN` and its end could hand its connection back to the pool
// inside that transaction (seen: the next claim met "cannot execute SELECT FOR UPDATE in a
// read-only transaction").
