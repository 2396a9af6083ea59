//! The runner: workers that claim due migrations and run their jobs, sub-batch by
//! sub-batch, recording every status change.
//!
//! A [`Worker`] runs one or more [`WorkerLoop`]s. Each loop moves what it carries by value
//! from one [`WorkerLoop::step`] to the next (`step::Carry`), and each step returns the next
//! one: nothing carried (claim a due migration), continue the migration it just ran (with the
//! next job's health sample and key range, read while the last job ran), or run the job the
//! last job's end already started. What a loop knows of a migration beyond its row (tuned
//! sizes, latencies, slowing down, what it read ahead) lives in one `MigrationRun`, from the
//! moment the loop takes the migration up until it lets it go; `finalize` runs its jobs
//! through the same steps and state. The store never calls back into the engine: a
//! sub-batch is performed in its open transaction and handed back
//! ([`PerformedSubBatch`](crate::store::PerformedSubBatch)); the engine then commits it
//! alone, with the job's cursor, or with the job's end and the next job's start, without
//! waiting on anything in between.
//!
//! This module holds the worker, its options and outcomes. `step` is the loop, read top to
//! bottom; `next_job` finds a step's job behind the health `gate` (decisions) and `hold`
//! (their rows and pauses); `job` runs one job; `ending` is what follows failures and the
//! last job; `tuner` sizes sub-batches and `tuning` logs sizes; `migration_run` and
//! `prefetch` are the state a loop keeps per migration. `ensure` is the deploy gate, built on
//! `finalize`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use crate::client::{Sluicegate, LOG_RETENTION_MONTHS};
use crate::error::{Error, Result};
use crate::failure::{Blame, Failure, FailureClass};
use crate::health::WalRate;
use crate::model::{Job, Migration};
use crate::status::{MigrationEvent, MigrationStatus};

mod ending;
mod ensure;
mod gate;
mod hold;
mod job;
mod lanes;
mod migration_run;
mod next_job;
mod prefetch;
mod step;
mod tuner;
mod tuning;
mod verify;

pub use ensure::{EnsureOptions, EnsureReport, FailureGroup, Standing};
use migration_run::TakenUp;
use step::{Carry, JobSource};

/// Jobs that must have run before the failure ratio can fail a migration (GitLab: 50).
pub const AUTO_FAIL_MIN_JOBS: i64 = 50;
/// How long a worker keeps trying to record a job's end while the database is away.
pub(super) const RECORD_RETRY_FOR: Duration = Duration::from_secs(60);
/// How often a worker re-checks the job log's partitions.
const PARTITION_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Its name in leases and logs (default: host name and process id).
    pub name: String,
    /// How long a claim or a job stays ours without renewal; renewed every third of it.
    pub lease: Duration,
    /// How long to wait when there is nothing to do.
    pub poll_interval: Duration,
    /// How many jobs it runs at once.
    pub concurrency: usize,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            name: default_worker_name(),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            concurrency: 1,
        }
    }
}

/// `host:pid`.
pub fn default_worker_name() -> String {
    format!(
        "{}:{}",
        gethostname::gethostname().to_string_lossy(),
        std::process::id()
    )
}

/// How a job ended for the worker that ran it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JobOutcome {
    /// It succeeded.
    Succeeded,
    /// It failed and the failure is recorded.
    Failed {
        /// Why.
        failure: Failure,
    },
    /// Another worker took it over (our lease ran out); we wrote nothing more.
    Lost,
    /// The worker was stopped (a signal) at a sub-batch boundary: the job is `pending` again
    /// (logged `running -> failed` as `Interrupted`, then `failed -> pending`) and resumes
    /// after its cursor.
    Stopped,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum StepOutcome {
    /// No migration was due.
    Idle,
    /// A job ran.
    Ran {
        /// Its migration.
        migration_id: i64,
        /// The job after its run.
        job: Box<Job>,
        /// How it ended.
        outcome: JobOutcome,
    },
    /// The migration had no job left to start; others may still be running.
    Waiting {
        /// The migration.
        migration_id: i64,
    },
    /// The migration reached a final status in this step.
    Completed {
        /// The migration, final.
        migration: Box<Migration>,
    },
    /// A health indicator said stop: the migration is on hold, no job ran.
    Held {
        /// The migration, on hold.
        migration: Box<Migration>,
        /// The indicator and its reading, as logged.
        reason: String,
    },
}

/// Something a worker did, for progress displays.
pub type EventSink = Arc<dyn Fn(&StepOutcome) + Send + Sync>;

/// A worker: runs the jobs of due migrations in [`WorkerLoop`]s. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    sg: Sluicegate,
    opts: WorkerOptions,
    events: Option<EventSink>,
    /// When this worker's loops last checked the job log's partitions (one check for all).
    last_partition_check: Arc<std::sync::Mutex<Option<Instant>>>,
    /// Unreadable-indicator warnings already given (once per worker each).
    warned: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// `run --only`: the migrations this worker claims, none other ([`Worker::only`]).
    only: Option<Arc<[i64]>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("opts", &self.opts).finish()
    }
}

/// One step loop of a worker. It owns everything that carries from one step to the next;
/// nothing of it is shared with other loops.
pub struct WorkerLoop {
    worker: Worker,
    /// This loop's name in leases and logs.
    name: String,
    /// What the next step starts from.
    carry: Carry,
    /// WAL rate between this loop's health samples.
    wal_rate: WalRate,
    /// The migrations this loop works, each with what it knows of it.
    taken: TakenUp,
    /// Set when the loop is asked to stop (or runs a single step): a job's end then starts no
    /// next job, which nobody would run.
    stopping: Arc<AtomicBool>,
    /// Set when the worker is stopped (a signal): a running job ends at its next sub-batch
    /// boundary and is handed back, resumable from its cursor.
    interrupted: Arc<AtomicBool>,
    /// The migration this loop last ran a job of: its table lease is given back when the
    /// loop stops.
    last_migration: Option<i64>,
}

impl std::fmt::Debug for WorkerLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLoop")
            .field("name", &self.name)
            .field("carry", &self.carry)
            .finish()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    /// A worker's ordinary step.
    Normal,
    /// `finalize` (or a worker taking over a finalizing migration whose finalizer died):
    /// ignore interval and holds.
    Finalize,
}

impl Worker {
    /// A worker on `sg`.
    pub fn new(sg: Sluicegate, opts: WorkerOptions) -> Self {
        Self {
            sg,
            opts,
            events: None,
            last_partition_check: Arc::new(std::sync::Mutex::new(None)),
            warned: Arc::default(),
            only: None,
        }
    }

    /// Claims only the migrations `ids` (`run --only`): the others are left to other
    /// workers, and `until_idle` ends once none of these is left to work on.
    pub fn only(mut self, ids: Vec<i64>) -> Self {
        self.only = Some(ids.into());
        self
    }

    /// Calls `sink` after every step that did something.
    pub fn with_events(mut self, sink: EventSink) -> Self {
        self.events = Some(sink);
        self
    }

    /// Its options.
    pub fn options(&self) -> &WorkerOptions {
        &self.opts
    }

    /// A step loop named after the worker: what [`Worker::run`] runs, for stepping by hand.
    pub fn new_loop(&self) -> WorkerLoop {
        self.loop_named(self.opts.name.clone(), Arc::default(), Arc::default())
    }

    fn loop_named(
        &self,
        name: String,
        stopping: Arc<AtomicBool>,
        interrupted: Arc<AtomicBool>,
    ) -> WorkerLoop {
        WorkerLoop {
            worker: self.clone(),
            name,
            carry: Carry::Nothing,
            wal_rate: WalRate::default(),
            taken: TakenUp::default(),
            stopping,
            interrupted,
            last_migration: None,
        }
    }

    /// `concurrency` loops sharing `stop` and `interrupt`, each with its own name when there
    /// are several.
    fn loops(&self, stop: &Arc<AtomicBool>, interrupt: &Arc<AtomicBool>) -> Vec<WorkerLoop> {
        let n = self.opts.concurrency.max(1);
        (0..n)
            .map(|i| {
                let name = if n > 1 {
                    format!("{}#{i}", self.opts.name)
                } else {
                    self.opts.name.clone()
                };
                self.loop_named(name, stop.clone(), interrupt.clone())
            })
            .collect()
    }

    /// One step of each of `concurrency` loops, at once (`run --once`); no job is started
    /// ahead, as no loop goes on to run it.
    pub async fn run_once(&self) -> Result<Vec<StepOutcome>> {
        let stop = Arc::new(AtomicBool::new(true));
        let steps = self
            .loops(&stop, &Arc::default())
            .into_iter()
            .map(|mut l| async move {
                let outcome = l.step().await;
                l.finish().await?;
                outcome
            });
        futures::future::try_join_all(steps).await
    }

    /// Runs steps until no active migration is left to work on (all finished, failed,
    /// paused or cancelled), waiting for intervals, holds and other workers' jobs.
    pub async fn run_until_idle(&self) -> Result<()> {
        self.run(true, futures::future::pending()).await
    }

    /// Runs `concurrency` step loops until `shutdown` resolves or, with `until_idle`, until
    /// no active migration is left. On `shutdown` each running job ends at its next sub-batch
    /// boundary (every sub-batch commits its cursor) and is handed back `pending`, to resume
    /// from its cursor; no new job starts, and each loop gives its table lease back.
    pub async fn run(
        &self,
        until_idle: bool,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        self.log_skipped_targets().await;
        let stop = Arc::new(AtomicBool::new(false));
        let interrupt = Arc::new(AtomicBool::new(false));
        let loops = self
            .loops(&stop, &interrupt)
            .into_iter()
            .map(|mut l| tokio::spawn(async move { l.run(until_idle).await }));
        let all = futures::future::try_join_all(loops);
        tokio::pin!(all);
        tokio::pin!(shutdown);
        let results = tokio::select! {
            results = &mut all => results,
            _ = &mut shutdown => {
                interrupt.store(true, Ordering::Relaxed);
                stop.store(true, Ordering::Relaxed);
                all.await
            }
        };
        let results = results.map_err(|e| Error::Corrupt(format!("worker task died: {e}")))?;
        results.into_iter().collect()
    }

    /// Finalize: runs the migration's remaining jobs inline, back to back, resetting
    /// exhausted attempts, until it is finished or failed. The finalizer keeps the table's
    /// lease while it works; if it dies, a worker takes the migration over once that lease
    /// has run out.
    pub async fn finalize(&self, migration: &Migration, actor: &str) -> Result<Migration> {
        self.finalize_until(migration, actor, futures::future::pending())
            .await
    }

    /// [`Self::finalize`] until `shutdown` resolves: then the running job ends at its next
    /// sub-batch boundary and is handed back `pending` (resumable from its cursor), the table
    /// lease is given back, and [`Error::Stopped`] says so. The migration stays `finalizing`
    /// (the state machine has no way back) and is free at once: any worker takes it over and
    /// finishes it at full speed.
    pub async fn finalize_until(
        &self,
        migration: &Migration,
        actor: &str,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<Migration> {
        // Only on the database its table lives in (claims would never hand it out here).
        self.sg.check_target(migration)?;
        // Not before the migrations it runs after (`--after`) have finished.
        let waiting = self.sg.waiting_for(migration).await?;
        if !waiting.is_empty() && !migration.status.is_finished() {
            let names: Vec<String> = waiting
                .iter()
                .map(|d| format!("{} ({})", d.name, d.status))
                .collect();
            return Err(Error::FinalizeFailed {
                migration: migration.name.clone(),
                reason: format!(
                    "it runs after {}, not finished: finalize those first",
                    names.join(", ")
                ),
            });
        }
        let interrupt = Arc::new(AtomicBool::new(false));
        let mut l = self.loop_named(
            self.opts.name.clone(),
            Arc::new(AtomicBool::new(true)),
            interrupt.clone(),
        );
        let body = self.finalize_in(migration, actor, &mut l);
        tokio::pin!(body);
        tokio::pin!(shutdown);
        let result = tokio::select! {
            result = &mut body => result,
            _ = &mut shutdown => {
                interrupt.store(true, Ordering::Relaxed);
                body.await
            }
        };
        if !interrupt.load(Ordering::Relaxed) {
            return result;
        }
        // Stopped: whatever the body said, the table goes back (no job of it runs now).
        self.sg.store.table_lease_release(migration.id).await?;
        match result {
            Ok(m) if m.status.is_finished() => Ok(m),
            Ok(_) | Err(Error::Stopped { .. }) => Err(Error::Stopped {
                migration: migration.name.clone(),
            }),
            Err(e) => Err(e),
        }
    }

    async fn finalize_in(
        &self,
        migration: &Migration,
        actor: &str,
        l: &mut WorkerLoop,
    ) -> Result<Migration> {
        let mut m = migration.clone();
        match m.status {
            MigrationStatus::Finished => return Ok(m),
            MigrationStatus::Finalizing => {}
            _ => {
                m = self
                    .sg
                    .transition(&m, MigrationEvent::Finalize, None, actor)
                    .await?
            }
        }
        l.reset_exhausted(&m).await?;
        let mut backoff = Backoff::default();
        // After a job that succeeded with keys left, the next one is created straight from the
        // range, as `run` does (the statement that creates it renews the table lease); a
        // claim comes first only when there is nothing to continue with, so failed jobs are
        // retried once the range is handed out.
        let mut carry = Carry::Nothing;
        loop {
            // (A finalizer's loop is `stopping`: no job's end starts the next, so nothing
            // arrives `Started`; were one to, it is run rather than left to its lease.)
            let continued = match std::mem::take(&mut carry) {
                Carry::Nothing => None,
                Carry::Continue { migration } => Some((*migration, JobSource::NextRange)),
                Carry::Started { migration, job } => {
                    Some((*migration, JobSource::StartedAhead(job)))
                }
            };
            if let Some((migration, source)) = continued {
                let started = matches!(source, JobSource::StartedAhead(_));
                if started || !l.interrupted.load(Ordering::Relaxed) {
                    match l.step_migration(migration, source).await {
                        Ok(Some((outcome, next))) => {
                            carry = next;
                            if let Some(done) =
                                self.finalize_outcome(outcome, &mut backoff, l).await
                            {
                                return Ok(done);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => self.on_error(e, &mut backoff, l).await?,
                    }
                    continue;
                }
            }
            let claimed = match self.claim_finalizing(&m, l).await? {
                Finalizing::Claimed(claimed) => claimed,
                Finalizing::Ended(m) => return Ok(m),
                Finalizing::Stopped => {
                    return Err(Error::Stopped {
                        migration: m.name.clone(),
                    })
                }
                Finalizing::Busy => {
                    // Another migration of the same table holds it: wait for it.
                    l.pause(backoff.next()).await;
                    continue;
                }
            };
            match l.step_migration(claimed, JobSource::Claim).await {
                Ok(stepped) => {
                    let (outcome, next) = stepped.unwrap_or((StepOutcome::Idle, Carry::Nothing));
                    carry = next;
                    if let Some(done) = self.finalize_outcome(outcome, &mut backoff, l).await {
                        return Ok(done);
                    }
                }
                Err(e) => self.on_error(e, &mut backoff, l).await?,
            }
        }
    }

    /// What a finalizer does with a step's outcome: the migration when it completed, else
    /// `None` after reporting the outcome (or waiting, when it had to).
    async fn finalize_outcome(
        &self,
        outcome: StepOutcome,
        backoff: &mut Backoff,
        l: &WorkerLoop,
    ) -> Option<Migration> {
        match outcome {
            StepOutcome::Completed { migration } => {
                self.emit(&StepOutcome::Completed {
                    migration: migration.clone(),
                });
                Some(*migration)
            }
            StepOutcome::Waiting { .. } => {
                l.pause(backoff.next()).await;
                None
            }
            other => {
                backoff.reset();
                self.emit(&other);
                None
            }
        }
    }

    /// Claims `m` for its finalizer's next step. The claim hands back the row as it is now;
    /// it is read apart only when the claim does not hand it out (it ended, or its table's
    /// lease is held) or the finalizer was stopped (an ended migration is still an answer).
    async fn claim_finalizing(&self, m: &Migration, l: &WorkerLoop) -> Result<Finalizing> {
        let interrupted = l.interrupted.load(Ordering::Relaxed);
        if !interrupted {
            let claimed = self
                .sg
                .store
                .migration_claim(&l.name, self.opts.lease, Some(m.id))
                .await?;
            match claimed {
                Some(c) if c.status == MigrationStatus::Finalizing => {
                    return Ok(Finalizing::Claimed(c))
                }
                Some(other) => return Ok(Finalizing::Ended(other)),
                None => {}
            }
        }
        let current = self
            .sg
            .store
            .migration_get(m.id)
            .await?
            .ok_or_else(|| Error::MigrationNotFound(m.id.to_string()))?;
        Ok(if current.status != MigrationStatus::Finalizing {
            Finalizing::Ended(current)
        } else if interrupted {
            Finalizing::Stopped
        } else {
            Finalizing::Busy
        })
    }

    fn emit(&self, outcome: &StepOutcome) {
        if let Some(sink) = &self.events {
            if *outcome != StepOutcome::Idle {
                sink(outcome);
            }
        }
    }

    /// Creates next month's job-log partition ahead of time and drops expired ones, at most
    /// once an hour per worker.
    async fn maintain_partitions(&self) -> Result<()> {
        {
            let mut last = self.last_partition_check.lock().expect("not poisoned");
            if last.is_some_and(|t| t.elapsed() < PARTITION_CHECK_EVERY) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let report = self
            .sg
            .store
            .log_partitions_maintain(Utc::now(), LOG_RETENTION_MONTHS)
            .await?;
        if !report.created.is_empty() || !report.dropped.is_empty() {
            tracing::info!(created = ?report.created, dropped = ?report.dropped, "job log partitions maintained");
        }
        Ok(())
    }

    /// An error no migration owns: back off and go on when it is the connection's (or the
    /// server's for now: out of resources, shutting down, busy); anything else (the tracking
    /// schema gone, a read-only or corrupt tracking database) stops the worker.
    /// The wait is cut short when `l`'s worker is stopped.
    async fn on_error(&self, e: Error, backoff: &mut Backoff, l: &WorkerLoop) -> Result<()> {
        // A tracking statement that ran into the database's own statement or lock timeout
        // (a busy server, a low default) is tried again too.
        let timed_out =
            matches!(&e, Error::Database { source, .. } if Failure::from_sqlx(source).is_timeout());
        if e.blame() != Blame::Connection && !timed_out {
            return Err(e);
        }
        let wait = backoff.next();
        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, worker = %self.opts.name, "database unavailable; backing off");
        l.pause(wait).await;
        Ok(())
    }

    /// Whether an active or finalizing migration is left: one on hold counts, its work is
    /// not done and the worker waits the hold out.
    /// Only migrations of this worker's target count: one of another is not its work.
    /// One that runs after others (`--after`) counts only while those can finish too.
    async fn has_runnable_migrations(&self) -> Result<bool> {
        let all = self.sg.store.migration_list().await?;
        let runnable = crate::client::runnable_ids(&all, |m| self.sg.is_own_target(m));
        Ok(runnable
            .iter()
            .any(|id| self.only.as_ref().is_none_or(|ids| ids.contains(id))))
    }

    /// Says, once at start, which runnable migrations this worker leaves alone and why: they
    /// are of another target, or of an unknown one (queued before schema v5).
    async fn log_skipped_targets(&self) {
        let Ok(others) = self.sg.other_targets_runnable().await else {
            return;
        };
        for m in others {
            let target = m.target.as_ref().map_or(
                "an unknown target (queued before schema v5)".to_owned(),
                |t| t.display.clone(),
            );
            tracing::info!(
                worker = %self.opts.name,
                migration = %m.name,
                "skipping migration {} ({}): it is for {target}; this worker is connected to {}",
                m.id,
                m.name,
                self.sg.target_identity().display
            );
        }
    }
}

/// The failure an error is, when it belongs to the migration being worked on: by default
/// every error does (its SQL, its data, its table or key changed under it, its timeouts, a
/// stored value out of range), unless it is provably the connection's or the tracking
/// database's ([`Error::blame`]). It is then recorded on that migration and the worker goes
/// on with others.
fn migration_failure(e: &Error) -> Option<Failure> {
    if e.blame() != Blame::Migration {
        return None;
    }
    Some(match e {
        Error::Database { source, context } => {
            let f = Failure::from_sqlx(source);
            Failure::new(f.class, format!("{} (while {context})", f.message))
        }
        Error::OutOfRange(what) => Failure::new(
            FailureClass::OutOfRange,
            format!("value out of range: {what}"),
        ),
        Error::InvalidIdentifier { .. } | Error::InvalidSettings(_) | Error::InvalidJob { .. } => {
            Failure::new(FailureClass::InvalidSettings, e.to_string())
        }
        Error::UnknownTable { .. } => Failure::new("UndefinedTable", e.to_string()),
        Error::UnknownColumn { .. } => Failure::new("UndefinedColumn", e.to_string()),
        Error::UnknownJobKind(_) => Failure::new(FailureClass::UnknownJobKind, e.to_string()),
        Error::Corrupt(_) => Failure::new(FailureClass::Corrupt, e.to_string()),
        _ => Failure::new(FailureClass::Internal, e.to_string()),
    })
}

/// Where a finalizer's next step stands.
enum Finalizing {
    /// Claimed, still finalizing: step it.
    Claimed(Migration),
    /// It ended (finished or failed).
    Ended(Migration),
    /// The finalizer was stopped.
    Stopped,
    /// Another migration of its table holds the table.
    Busy,
}

/// Exponential backoff from 100 ms to 30 s.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    failures: u32,
}

impl Backoff {
    pub(super) fn next(&mut self) -> Duration {
        let ms = 100u64.saturating_mul(1 << self.failures.min(9));
        self.failures += 1;
        Duration::from_millis(ms.min(30_000))
    }

    pub(super) fn reset(&mut self) {
        self.failures = 0;
    }
}

impl WorkerLoop {
    pub(super) fn sluicegate(&self) -> &Sluicegate {
        &self.worker.sg
    }

    pub(super) fn lease(&self) -> Duration {
        self.worker.opts.lease
    }

    /// Whether a job's end may start the next job in the same statement (PostgreSQL, one
    /// database, and a loop that goes on to run it).
    pub(super) fn may_start_ahead(&self) -> bool {
        self.sluicegate().same_database
            && self
                .sluicegate()
                .store
                .capabilities()
                .start_next_job_with_finish
            && !self.stopping.load(Ordering::Relaxed)
    }
}

impl Sluicegate {
    /// A worker on this handle.
    pub fn worker(&self, opts: WorkerOptions) -> Worker {
        Worker::new(self.clone(), opts)
    }

    /// Finalizes a migration inline (see [`Worker::finalize`]) with a worker named `actor`.
    pub async fn finalize(&self, id_or_name: &str, actor: &str) -> Result<Migration> {
        let m = self.migration(id_or_name).await?;
        let worker = self.worker(WorkerOptions {
            name: format!("{actor}:{}", std::process::id()),
            ..WorkerOptions::default()
        });
        let m = worker.finalize(&m, actor).await?;
        if m.status != MigrationStatus::Finished {
            return Err(Error::FinalizeFailed {
                migration: m.name.clone(),
                reason: format!("it ended {}; see `sluicegate history {}`", m.status, m.name),
            });
        }
        Ok(m)
    }
}
