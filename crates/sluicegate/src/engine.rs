//! The runner: workers that claim due migrations and run their jobs, sub-batch by
//! sub-batch, recording every status change (DESIGN §5).
//!
//! A [`Worker`] runs one or more [`WorkerLoop`]s. Each loop owns its state and moves it by
//! value from one [`WorkerLoop::step`] to the next ([`Carry`]): nothing carried (claim a due
//! migration), continue the migration it just ran (with the next job's health sample and key
//! range, read while the last job ran), or run the job the last job's end already started.
//! [`WorkerLoop::after_job`] is the one place that decides which. The store never calls back
//! into the engine: a sub-batch is performed in its open transaction and handed back
//! ([`PerformedSubBatch`]); the engine then commits it alone, with the job's cursor, or with the
//! job's end and the next job's start, without waiting on anything in between.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::client::{Sluicegate, LOG_RETENTION_MONTHS, MAX_ATTEMPTS};
use crate::error::{Error, Result};
use crate::failure::{Failure, FailureClass};
use crate::health::{self, HealthSample, LatencyTracker, Signal, WalRate};
use crate::ident::TableName;
use crate::kind::JobKind;
use crate::model::{Job, Migration};
use crate::optimizer;
use crate::status::{JobStatus, MigrationEvent, MigrationStatus};
use crate::store::{
    Backend, JobCreateParams, JobCreated, JobCursor, JobFinish, JobRange, JobSplitParams,
    JobTransitionParams, MigrationResizeParams, MigrationThrottleParams, MigrationTransitionParams,
    SubBatchCommit, SubBatchCommitted, SubBatchSpec, Timeouts,
};

/// Jobs that must have run before the failure ratio can fail a migration (GitLab: 50).
pub const AUTO_FAIL_MIN_JOBS: i64 = 50;
/// How many sub-batch entries a job's metrics keep (the newest); totals cover all.
const METRICS_KEPT: usize = 50;
/// How long a worker keeps trying to record a job's end while the database is away.
const RECORD_RETRY_FOR: Duration = Duration::from_secs(60);
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
    /// Sub-batch latencies this loop measured, per migration.
    latency: HashMap<i64, LatencyTracker>,
    /// How long this loop's last job of each migration took (the unit of a throttle pause).
    job_time: HashMap<i64, Duration>,
    /// The throttle pause this loop last knew of, per migration (logged only on change).
    throttle_ms: HashMap<i64, i64>,
    /// The smallest sub-batch the tuner keeps, per migration (a fixed cost found).
    tuner_floor: HashMap<i64, i64>,
    /// The sub-batch size last written to each migration's log, for the tuner's rows.
    logged_sub_batch: HashMap<i64, i64>,
    /// Set when the loop is asked to stop (or runs a single step): a job's end then starts no
    /// next job, which nobody would run.
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for WorkerLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLoop")
            .field("name", &self.name)
            .field("carry", &self.carry)
            .finish()
    }
}

/// What a loop's next step starts from: the state it passes from step to step.
#[derive(Debug, Default)]
enum Carry {
    /// Nothing: claim a due migration.
    #[default]
    Nothing,
    /// Continue the migration whose job this loop just ran, without claiming it again (its
    /// table lease is renewed by the statement that creates the next job).
    Continue {
        /// The migration, with its next key and the tuned sub-batch size.
        migration: Box<Migration>,
        /// The next job's health sample and key range, read while the last job ran.
        prefetch: Option<Box<Prefetch>>,
    },
    /// The last job's end created and started this job: run it.
    Started {
        /// Its migration, with its next key after this job.
        migration: Box<Migration>,
        /// The job, `running`.
        job: Box<Job>,
    },
}

/// Where a job to run came from, which says what may follow it without a new claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Created from the migration's key range; the migration's next key after it (`None`:
    /// the range is handed out).
    Range { next_min: Option<i64> },
    /// A pending, failed or abandoned job taken up again.
    Retry,
}

/// What the next job of a migration needs (its health sample and key range), read on other
/// connections while the current job runs, so that neither costs time between jobs.
struct Prefetch {
    migration_id: i64,
    /// The key the range was read from.
    start: i64,
    task: Option<JoinHandle<PrefetchResult>>,
    result: Option<PrefetchResult>,
}

/// The health sample, and the next job's key range (`None`: no key left from the start).
type PrefetchResult = (Result<HealthSample>, Result<Option<(i64, i64)>>);

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("migration_id", &self.migration_id)
            .field("start", &self.start)
            .field("ready", &self.result.is_some())
            .finish()
    }
}

impl Prefetch {
    /// Starts reading `m`'s health sample and its key range from `start`.
    fn start(sg: &Sluicegate, m: &Migration, table: &TableName, start: i64) -> Self {
        let target = sg.target.clone();
        let (table, column, probe) = (table.clone(), m.column_name.clone(), m.health.probe.clone());
        let (max, size) = (m.max_value, m.batch_size);
        let task = tokio::spawn(async move {
            let sample = target.health_sample(&table, probe.as_deref());
            let range = target.range_next(&table, &column, start, max, size);
            futures::join!(sample, range)
        });
        Self {
            migration_id: m.id,
            start,
            task: Some(task),
            result: None,
        }
    }

    /// Its result if it is there now; never waits.
    fn ready(&mut self) -> Option<&mut PrefetchResult> {
        if self.result.is_none() {
            let task = self.task.as_mut()?;
            if !task.is_finished() {
                return None;
            }
            let joined = task.now_or_never()?;
            self.task = None;
            self.result = Some(joined.unwrap_or_else(|e| {
                let lost = || Error::Corrupt(format!("prefetch task died: {e}"));
                (Err(lost()), Err(lost()))
            }));
        }
        self.result.as_mut()
    }

    /// Its result, waiting for it (outside any transaction).
    async fn wait(mut self) -> Option<PrefetchResult> {
        if let Some(task) = self.task.take() {
            self.result = task.await.ok();
        }
        self.result.take()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// How a job's run ended, for what follows it.
struct JobRun {
    job: Job,
    outcome: JobOutcome,
    /// The next job, started by this job's end, and the migration's next key after it.
    started_next: Option<(Job, Option<i64>)>,
    /// What the sub-batch tuner learned in this job (a fixed cost), for the log.
    tuner_found: Option<String>,
}

/// Stops a heartbeat task when the job is done.
struct Heartbeat {
    task: JoinHandle<()>,
    lost: Arc<AtomicBool>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
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
        }
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
        self.loop_named(self.opts.name.clone(), Arc::default())
    }

    fn loop_named(&self, name: String, stopping: Arc<AtomicBool>) -> WorkerLoop {
        WorkerLoop {
            worker: self.clone(),
            name,
            carry: Carry::Nothing,
            wal_rate: WalRate::default(),
            latency: HashMap::new(),
            job_time: HashMap::new(),
            throttle_ms: HashMap::new(),
            tuner_floor: HashMap::new(),
            logged_sub_batch: HashMap::new(),
            stopping,
        }
    }

    /// `concurrency` loops sharing `stop`, each with its own name when there are several.
    fn loops(&self, stop: &Arc<AtomicBool>) -> Vec<WorkerLoop> {
        let n = self.opts.concurrency.max(1);
        (0..n)
            .map(|i| {
                let name = if n > 1 {
                    format!("{}#{i}", self.opts.name)
                } else {
                    self.opts.name.clone()
                };
                self.loop_named(name, stop.clone())
            })
            .collect()
    }

    /// One step of each of `concurrency` loops, at once (`run --once`); no job is started
    /// ahead, as no loop goes on to run it.
    pub async fn run_once(&self) -> Result<Vec<StepOutcome>> {
        let stop = Arc::new(AtomicBool::new(true));
        let steps = self.loops(&stop).into_iter().map(|mut l| async move {
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

    /// Runs `concurrency` step loops until `shutdown` resolves (then lets running jobs end)
    /// or, with `until_idle`, until no active migration is left.
    pub async fn run(
        &self,
        until_idle: bool,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let loops = self
            .loops(&stop)
            .into_iter()
            .map(|mut l| tokio::spawn(async move { l.run(until_idle).await }));
        let all = futures::future::try_join_all(loops);
        tokio::pin!(all);
        tokio::pin!(shutdown);
        let results = tokio::select! {
            results = &mut all => results,
            _ = &mut shutdown => {
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
        let mut l = self.loop_named(self.opts.name.clone(), Arc::new(AtomicBool::new(true)));
        l.reset_exhausted(&m).await?;
        let mut backoff = Backoff::default();
        loop {
            let current = self
                .sg
                .store
                .migration_get(m.id)
                .await?
                .ok_or_else(|| Error::MigrationNotFound(m.id.to_string()))?;
            if current.status != MigrationStatus::Finalizing {
                return Ok(current);
            }
            let claimed = self
                .sg
                .store
                .migration_claim(&l.name, self.opts.lease, Some(m.id))
                .await?;
            let Some(claimed) = claimed else {
                // Another migration of the same table holds it: wait for it.
                tokio::time::sleep(backoff.next()).await;
                continue;
            };
            match l.step_migration(claimed).await {
                Ok(StepOutcome::Completed { migration }) => {
                    self.emit(&StepOutcome::Completed {
                        migration: migration.clone(),
                    });
                    return Ok(*migration);
                }
                Ok(StepOutcome::Waiting { .. }) => tokio::time::sleep(backoff.next()).await,
                Ok(other) => {
                    backoff.reset();
                    self.emit(&other);
                }
                Err(e) => self.on_error(e, &mut backoff).await?,
            }
        }
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

    /// A database error in the loop: back off and go on when it is the connection;
    /// anything else (a missing schema, corrupt data) stops the worker.
    async fn on_error(&self, e: Error, backoff: &mut Backoff) -> Result<()> {
        let transient = match &e {
            Error::Database { source, .. } => Failure::from_sqlx(source).is_transient(),
            Error::Conflict { .. } => true,
            _ => false,
        };
        if !transient {
            return Err(e);
        }
        let wait = backoff.next();
        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, worker = %self.opts.name, "database unavailable; backing off");
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Whether an active or finalizing migration is left: one on hold counts, its work is
    /// not done and the worker waits the hold out.
    async fn has_runnable_migrations(&self) -> Result<bool> {
        Ok(self.sg.store.migration_list().await?.iter().any(|m| {
            matches!(
                m.status,
                MigrationStatus::Active | MigrationStatus::Finalizing
            )
        }))
    }
}

/// The failure an error is, when it belongs to the migration being worked on (its SQL, its
/// data, a stored value out of range) rather than to the worker or the database as a whole:
/// it is then recorded on that migration and the worker goes on with others.
fn migration_failure(e: &Error) -> Option<Failure> {
    match e {
        Error::OutOfRange(what) => Some(Failure::new(
            FailureClass::OutOfRange,
            format!("value out of range: {what}"),
        )),
        Error::InvalidIdentifier { .. } | Error::InvalidSettings(_) => {
            Some(Failure::new(FailureClass::InvalidSettings, e.to_string()))
        }
        Error::Database { source, .. } => {
            let failure = Failure::from_sqlx(source);
            let code = match source {
                sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                _ => None,
            };
            // Data exceptions (22: a value out of range, a bad cast) and a table or column
            // that is gone (42P01, 42703) are the migration's own; privileges, resources and
            // the connection are not.
            let own = code
                .as_deref()
                .is_some_and(|c| c.starts_with("22") || c == "42P01" || c == "42703");
            own.then(|| Failure::new(failure.class, format!("{e}")))
        }
        _ => None,
    }
}

impl WorkerLoop {
    /// This loop's name in leases and logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn sg(&self) -> &Sluicegate {
        &self.worker.sg
    }

    fn lease(&self) -> Duration {
        self.worker.opts.lease
    }

    /// Whether a job's end may start the next job in the same statement (PostgreSQL, one
    /// database, and a loop that goes on to run it).
    fn may_start_ahead(&self) -> bool {
        self.sg().same_database
            && self.sg().store.backend() == Backend::Postgres
            && !self.stopping.load(Ordering::Relaxed)
    }

    /// One step: from what the last step carried, run one job (or hold, wait, finish), or
    /// claim a due migration and do so.
    pub async fn step(&mut self) -> Result<StepOutcome> {
        self.worker.maintain_partitions().await?;
        let outcome = match std::mem::take(&mut self.carry) {
            Carry::Started { migration, job } => {
                let next_min = migration.next_min_value;
                self.run_job(*migration, *job, Origin::Range { next_min }, Mode::Normal)
                    .await?
            }
            Carry::Continue {
                migration,
                prefetch,
            } => match self.continue_with(*migration, prefetch).await? {
                Some(outcome) => outcome,
                None => self.claim_and_step().await?,
            },
            Carry::Nothing => self.claim_and_step().await?,
        };
        self.worker.emit(&outcome);
        Ok(outcome)
    }

    /// Runs the job the last step started ahead, if any, and starts no other: call it before
    /// dropping a loop stepped by hand, so that no job is left running with no one to run it
    /// (its lease would run out and another worker would log it `WorkerLost`).
    pub async fn finish(&mut self) -> Result<()> {
        self.stopping = Arc::new(AtomicBool::new(true));
        while matches!(self.carry, Carry::Started { .. }) {
            self.step().await?;
        }
        self.carry = Carry::Nothing;
        Ok(())
    }

    /// The loop of [`Worker::run`]: until `stopping` is set between steps, or with
    /// `until_idle` also until no active migration is left.
    async fn run(&mut self, until_idle: bool) -> Result<()> {
        let mut backoff = Backoff::default();
        while !self.stopping.load(Ordering::Relaxed) {
            match self.step().await {
                Ok(StepOutcome::Idle) => {
                    if until_idle {
                        match self.worker.has_runnable_migrations().await {
                            Ok(false) => return Ok(()),
                            Ok(true) => {}
                            Err(e) => {
                                self.worker.on_error(e, &mut backoff).await?;
                                continue;
                            }
                        }
                    }
                    backoff.reset();
                    tokio::time::sleep(self.worker.opts.poll_interval).await;
                }
                Ok(_) => backoff.reset(),
                Err(e) => self.worker.on_error(e, &mut backoff).await?,
            }
        }
        // A job started ahead is running already: it runs before the loop stops.
        self.finish().await
    }

    async fn claim_and_step(&mut self) -> Result<StepOutcome> {
        let started = Instant::now();
        let claimed = self
            .sg()
            .store
            .migration_claim(&self.name, self.lease(), None)
            .await?;
        // The soak script reads these lines to check that claiming stays flat under load.
        tracing::debug!(
            target: "sluicegate::claim",
            claim_ms = started.elapsed().as_secs_f64() * 1000.0,
            claimed = claimed.is_some(),
            worker = %self.name,
        );
        match claimed {
            Some(migration) => self.step_migration(migration).await,
            None => Ok(StepOutcome::Idle),
        }
    }

    /// One step of a claimed migration; an error that belongs to it fails it (see
    /// [`migration_failure`]) instead of stopping the worker.
    async fn step_migration(&mut self, m: Migration) -> Result<StepOutcome> {
        let mode = match m.status {
            MigrationStatus::Finalizing => Mode::Finalize,
            _ => Mode::Normal,
        };
        match self.step_migration_in(&m, mode).await {
            Err(e) => match migration_failure(&e) {
                Some(failure) => self.fail_for_error(&m, failure).await,
                None => Err(e),
            },
            ok => ok,
        }
    }

    async fn step_migration_in(&mut self, m: &Migration, mode: Mode) -> Result<StepOutcome> {
        if self.sg().registry.get(&m.job_kind).is_none() {
            let failure = Failure::new(
                FailureClass::UnknownJobKind,
                format!(
                    "job kind {:?} is not registered in worker {}",
                    m.job_kind, self.name
                ),
            );
            let m = self
                .fail_migration(m, failure, "its job kind is not registered".into())
                .await?;
            return Ok(StepOutcome::Completed {
                migration: Box::new(m),
            });
        }
        let table = TableName::parse(&m.table_name)?;
        // Health protects the start of jobs; with none left to start, the migration ends
        // without waiting on it (an autovacuum its own last job set off, say).
        if m.next_min_value.is_none()
            && self
                .sg()
                .store
                .job_find_retriable(m.id, MAX_ATTEMPTS)
                .await?
                .is_none()
        {
            return self.complete_if_done(m).await;
        }
        if mode == Mode::Normal {
            let sample = self.health_sample(m, &table).await?;
            if let Some(held) = self.check_health(m, sample).await? {
                return Ok(held);
            }
        }
        match self.next_job(m, &table).await? {
            Some((job, origin)) => self.run_job(m.clone(), job, origin, mode).await,
            None => self.complete_if_done(m).await,
        }
    }

    /// Records an error of the migration's own on it (`fail`, with its class and message).
    async fn fail_for_error(&mut self, m: &Migration, failure: Failure) -> Result<StepOutcome> {
        tracing::warn!(migration = m.id, name = %m.name, class = %failure.class, message = %failure.message, "the migration failed on an error of its own");
        let current = self.sg().store.migration_get(m.id).await?;
        let Some(current) = current.filter(|c| c.status.after(MigrationEvent::Fail).is_some())
        else {
            return Ok(StepOutcome::Waiting { migration_id: m.id });
        };
        let reason = format!("{}: {}", failure.class, failure.message);
        match self.fail_migration(&current, failure, reason).await {
            Ok(m) => Ok(StepOutcome::Completed {
                migration: Box::new(m),
            }),
            Err(Error::Conflict { .. }) => Ok(StepOutcome::Waiting { migration_id: m.id }),
            Err(e) => Err(e),
        }
    }

    /// The next job of the migration this loop just ran a job of, from what was prefetched
    /// while that job ran: a health check, then create+start in one statement. `None` when it
    /// is not to be had (paused, another worker moved the range on, the table lease gone):
    /// then the step claims as usual.
    async fn continue_with(
        &mut self,
        m: Migration,
        prefetch: Option<Box<Prefetch>>,
    ) -> Result<Option<StepOutcome>> {
        let Some(start) = m.next_min_value else {
            return Ok(None);
        };
        let table = TableName::parse(&m.table_name)?;
        let prefetched = match prefetch.filter(|p| p.migration_id == m.id && p.start == start) {
            Some(p) => p.wait().await,
            None => None,
        };
        let (sample, range) = match prefetched {
            Some((sample, range)) => (sample?, range.ok().flatten()),
            None => (self.health_sample(&m, &table).await?, None),
        };
        if let Some(held) = self.check_health(&m, sample).await? {
            return Ok(Some(held));
        }
        let created = match range {
            Some((min, max)) => {
                self.create_job_in(&m, start, JobRange::Given { min, max })
                    .await
            }
            None => self.create_job(&m, &table, start).await,
        };
        let created = match created {
            Ok(created) => created,
            Err(e) => match migration_failure(&e) {
                Some(failure) => return self.fail_for_error(&m, failure).await.map(Some),
                None => return Err(e),
            },
        };
        match created {
            JobCreated::Created(job, next_min) => {
                let outcome = self
                    .run_job(m, *job, Origin::Range { next_min }, Mode::Normal)
                    .await?;
                Ok(Some(outcome))
            }
            JobCreated::Exhausted | JobCreated::NotNow => {
                self.release_if_stopped(&m).await?;
                Ok(None)
            }
        }
    }

    /// Gives the table lease back when the migration no longer runs (paused, cancelled,
    /// failed): the store keeps it while any of its jobs still runs.
    async fn release_if_stopped(&self, m: &Migration) -> Result<()> {
        let current = self.sg().store.migration_get(m.id).await?;
        if current.is_some_and(|c| {
            !matches!(
                c.status,
                MigrationStatus::Active | MigrationStatus::Finalizing
            )
        }) {
            self.sg().store.table_lease_release(m.id).await?;
        }
        Ok(())
    }

    /// Runs a job and what follows it: split or auto-fail after a failure, the optimizer after
    /// a success; then [`Self::after_job`] decides what the next step starts from.
    async fn run_job(
        &mut self,
        m: Migration,
        job: Job,
        origin: Origin,
        mode: Mode,
    ) -> Result<StepOutcome> {
        let table = TableName::parse(&m.table_name)?;
        let kind = self
            .sg()
            .registry
            .get(&m.job_kind)
            .ok_or_else(|| Error::UnknownJobKind(m.job_kind.clone()))?;
        // At full speed, what the next job needs is read while this one runs.
        let mut prefetch = match origin {
            Origin::Range {
                next_min: Some(start),
            } if mode == Mode::Normal && m.interval.is_zero() => {
                Some(Prefetch::start(self.sg(), &m, &table, start))
            }
            _ => None,
        };
        let started = Instant::now();
        let run = self
            .execute(&m, kind.as_ref(), &table, job, prefetch.as_mut())
            .await?;
        self.job_time.insert(m.id, started.elapsed());
        match &run.outcome {
            JobOutcome::Failed { failure } => {
                self.after_failure(&m, &table, &run.job, failure).await?
            }
            JobOutcome::Succeeded if mode == Mode::Normal => {
                self.optimize(&m).await?;
                self.log_tuner(&m, &run).await?;
            }
            _ => {}
        }
        let outcome = StepOutcome::Ran {
            migration_id: m.id,
            job: Box::new(run.job.clone()),
            outcome: run.outcome.clone(),
        };
        self.carry = Self::after_job(m, run, origin, mode, prefetch);
        Ok(outcome)
    }

    /// What runs next after a job of `m`: the one place that decides it. After a success at
    /// full speed with keys left, the same migration again — the job its end started, or a
    /// new one from the prefetched range; anything else goes back to claiming.
    fn after_job(
        m: Migration,
        run: JobRun,
        origin: Origin,
        mode: Mode,
        prefetch: Option<Prefetch>,
    ) -> Carry {
        let Origin::Range {
            next_min: Some(start),
        } = origin
        else {
            return Carry::Nothing;
        };
        if mode != Mode::Normal || !m.interval.is_zero() || run.outcome != JobOutcome::Succeeded {
            return Carry::Nothing;
        }
        let mut again = m;
        again.sub_batch_size = run.job.sub_batch_size.min(again.batch_size);
        match run.started_next {
            Some((job, next_min)) => {
                again.next_min_value = next_min;
                Carry::Started {
                    migration: Box::new(again),
                    job: Box::new(job),
                }
            }
            None => {
                again.next_min_value = Some(start);
                Carry::Continue {
                    migration: Box::new(again),
                    prefetch: prefetch.map(Box::new),
                }
            }
        }
    }

    /// The next job to start with the end of the current one, if the prefetched health sample
    /// (read while this job ran) is there now and says go, and the next range is known. Never
    /// waits: called while the last sub-batch's transaction is open.
    fn start_ahead(
        &mut self,
        m: &Migration,
        prefetch: &mut Prefetch,
        sub_batch_size: i64,
    ) -> Option<JobCreateParams> {
        let start = prefetch.start;
        let (sample, range) = prefetch.ready()?;
        let (Ok(sample), Ok(Some((min, max)))) = (&*sample, &*range) else {
            return None;
        };
        let (min, max) = (*min, *max);
        // A stop, or a limit near enough to slow down: the next step decides, outside this
        // transaction.
        let (readings, pressure) = self.judge(m, sample);
        if health::first_stop(&readings).is_some() || pressure.is_some() {
            return None;
        }
        // The range is spent on this job; the sample stays for the next step's own check.
        prefetch.result.as_mut()?.1 = Ok(None);
        Some(JobCreateParams {
            migration_id: m.id,
            expected_next_min: start,
            range: JobRange::Given { min, max },
            batch_size: m.batch_size,
            sub_batch_size: sub_batch_size.min(m.batch_size),
            pause_ms: m.pause_ms,
            worker: self.name.clone(),
            lease: self.lease(),
        })
    }

    async fn health_sample(&self, m: &Migration, table: &TableName) -> Result<HealthSample> {
        self.sg()
            .target
            .health_sample(table, m.health.probe.as_deref())
            .await
    }

    /// Creates the migration's next job from `start`: in one statement with the keyset walk
    /// when the table is in the tracking database, else after finding the range on the target.
    async fn create_job(&self, m: &Migration, table: &TableName, start: i64) -> Result<JobCreated> {
        let range = if self.sg().same_database {
            JobRange::Keyset {
                table: table.clone(),
                column: m.column_name.clone(),
                size: m.batch_size,
            }
        } else {
            let found = self
                .sg()
                .target
                .range_next(table, &m.column_name, start, m.max_value, m.batch_size)
                .await?;
            match found {
                Some((min, max)) => JobRange::Given { min, max },
                None if self.sg().store.migration_range_exhaust(m.id, start).await? => {
                    return Ok(JobCreated::Exhausted)
                }
                None => return Ok(JobCreated::NotNow),
            }
        };
        self.create_job_in(m, start, range).await
    }

    /// Creates the job over `range` if the migration's next key is still `start`.
    async fn create_job_in(
        &self,
        m: &Migration,
        start: i64,
        range: JobRange,
    ) -> Result<JobCreated> {
        self.sg()
            .store
            .job_create(&JobCreateParams {
                migration_id: m.id,
                expected_next_min: start,
                range,
                batch_size: m.batch_size,
                sub_batch_size: m.sub_batch_size.min(m.batch_size),
                pause_ms: m.pause_ms,
                worker: self.name.clone(),
                lease: self.lease(),
            })
            .await
    }

    /// The job to run now: a new range after the last one, or a pending, retriable or
    /// abandoned job. Concurrent workers race through compare-and-set; the loser looks again.
    async fn next_job(&self, m: &Migration, table: &TableName) -> Result<Option<(Job, Origin)>> {
        let store = &self.sg().store;
        let mut m = m.clone();
        for attempt in 0.. {
            if attempt > 0 {
                m = match store.migration_get(m.id).await? {
                    Some(m) => m,
                    None => return Ok(None),
                };
            }
            if attempt > 100 {
                return Err(Error::Conflict {
                    what: format!("migration {} (too much contention for its next job)", m.id),
                });
            }
            if !matches!(
                m.status,
                MigrationStatus::Active | MigrationStatus::Finalizing
            ) {
                return Ok(None);
            }
            if let Some(start) = m.next_min_value {
                match self.create_job(&m, table, start).await? {
                    JobCreated::Created(job, next_min) => {
                        return Ok(Some((*job, Origin::Range { next_min })))
                    }
                    JobCreated::Exhausted => continue,
                    JobCreated::NotNow => {
                        // Another worker moved the range on: look again. Anything else (the
                        // interval, a pause, the table lease): not now.
                        let moved = store
                            .migration_get(m.id)
                            .await?
                            .is_some_and(|now| now.next_min_value != m.next_min_value);
                        if moved {
                            continue;
                        }
                        return Ok(None);
                    }
                }
            }
            let Some(mut job) = store.job_find_retriable(m.id, MAX_ATTEMPTS).await? else {
                return Ok(None);
            };
            if job.status == JobStatus::Running {
                // Its worker stopped renewing the lease: record the gap, then retry it.
                let params = JobTransitionParams::new(&job, JobStatus::Failed, &self.name)?
                    .if_lease_expired()
                    .with_failure(Some(Failure::new(
                        FailureClass::WorkerLost,
                        format!(
                            "worker {} stopped renewing its lease, which expired at {}",
                            job.worker.as_deref().unwrap_or("?"),
                            job.lease_expires_at
                                .map(|t| t.to_rfc3339())
                                .unwrap_or_else(|| "?".into())
                        ),
                    )));
                job = match store.job_transition(&params).await {
                    Ok(job) => job,
                    Err(Error::Conflict { .. }) => continue,
                    Err(e) => return Err(e),
                };
                if job.attempts >= MAX_ATTEMPTS {
                    continue;
                }
            }
            let params = JobTransitionParams::new(&job, JobStatus::Running, &self.name)?
                .with_lease(self.lease());
            match store.job_transition(&params).await {
                Ok(job) => return Ok(Some((job, Origin::Retry))),
                Err(Error::Conflict { .. }) => {
                    // Held meanwhile (by another worker): no job of it starts now.
                    let held = store.migration_get(m.id).await?.is_some_and(|now| {
                        now.status == MigrationStatus::Active
                            && now.on_hold_until.is_some_and(|t| t > Utc::now())
                    });
                    if held {
                        return Ok(None);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    fn start_heartbeat(&self, job: &Job) -> Heartbeat {
        let lost = Arc::new(AtomicBool::new(false));
        let (store, lease, id, attempts) =
            (self.sg().store.clone(), self.lease(), job.id, job.attempts);
        let flag = lost.clone();
        let task = tokio::spawn(async move {
            let every = (lease / 3).max(Duration::from_millis(50));
            loop {
                tokio::time::sleep(every).await;
                match store.job_heartbeat(id, attempts, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        flag.store(true, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => tracing::warn!(job = id, error = %e, "lease renewal failed"),
                }
            }
        });
        Heartbeat { task, lost }
    }

    /// Runs a job sub-batch by sub-batch, from its cursor on, and records how it ended. When
    /// tracking and target are one database each sub-batch commits the job's cursor, and the
    /// last one the job's end (and, given `prefetch` with a go, the next job's start).
    async fn execute(
        &mut self,
        m: &Migration,
        kind: &dyn JobKind,
        table: &TableName,
        job: Job,
        mut prefetch: Option<&mut Prefetch>,
    ) -> Result<JobRun> {
        let lost = |job| {
            Ok(JobRun {
                job,
                outcome: JobOutcome::Lost,
                started_next: None,
                tuner_found: None,
            })
        };
        let heartbeat = self.start_heartbeat(&job);
        let started = Instant::now();
        let mut start = match job.cursor {
            Some(cursor) => cursor.checked_add(1),
            None => Some(job.min_value),
        };
        let mut sub_batch_size = job.sub_batch_size;
        let floor = self.tuner_floor.get(&m.id).copied().unwrap_or(1);
        let mut tuner = optimizer::SubBatchTuner::with_floor(floor);
        let mut tally = Tally::default();
        let target_time = Duration::from_millis(m.target_sub_batch_ms.max(0) as u64);
        let cursor = JobCursor {
            job_id: job.id,
            attempts: job.attempts,
            lease: self.lease(),
        };
        self.latency.entry(m.id).or_default().job_started();
        let failure = loop {
            let Some(from) = start.filter(|s| *s <= job.max_value) else {
                break None;
            };
            if heartbeat.lost.load(Ordering::Relaxed) {
                return lost(job);
            }
            let t0 = Instant::now();
            let spec = SubBatchSpec {
                kind,
                table,
                column: &m.column_name,
                arguments: &m.job_arguments,
                start: from,
                max: job.max_value,
                size: sub_batch_size,
                whole_rest: sub_batch_size >= job.batch_size,
                timeouts: Timeouts {
                    statement_ms: m.statement_timeout_ms,
                    lock_ms: m.lock_timeout_ms,
                },
            };
            let performed = match self.sg().target.sub_batch_perform(spec).await {
                Ok(Some(performed)) => performed,
                Ok(None) => break None,
                Err(failure) => break Some(failure),
            };
            let (first, end) = performed.keys();
            let rows = performed.rows();
            if !self.sg().same_database {
                // Another database: commit there, then record the cursor here (at-least-once).
                if let Err(failure) = performed.commit(SubBatchCommit::Alone).await {
                    break Some(failure);
                }
                let recorded = self
                    .sg()
                    .store
                    .job_checkpoint(job.id, job.attempts, end, rows as i64, self.lease())
                    .await?;
                if !recorded {
                    return lost(job);
                }
            } else if end >= job.max_value {
                // The job's last sub-batch: its end commits with it.
                let took = t0.elapsed();
                let mut tally = tally.clone();
                tally.record(first, end, rows, took);
                let next_size = tuner.next(sub_batch_size, took, target_time, job.batch_size);
                let then_create = match prefetch.as_deref_mut() {
                    Some(p) if self.may_start_ahead() => self.start_ahead(m, p, next_size),
                    _ => None,
                };
                let finish = JobFinish {
                    metrics: tally.metrics(started.elapsed(), next_size),
                    sub_batch_size: (next_size != job.sub_batch_size).then_some(next_size),
                    worker: self.name.clone(),
                    then_create,
                };
                match performed
                    .commit(SubBatchCommit::Finish(cursor, &finish))
                    .await
                {
                    Ok(SubBatchCommitted::Finished { job: done, next }) => {
                        drop(heartbeat);
                        self.observe_latency(m.id, t0.elapsed(), sub_batch_size);
                        self.tuner_floor.insert(m.id, tuner.floor());
                        return Ok(JobRun {
                            job: *done,
                            outcome: JobOutcome::Succeeded,
                            started_next: next.map(|(job, next_min)| (*job, next_min)),
                            tuner_found: tuner.take_found(),
                        });
                    }
                    Ok(SubBatchCommitted::Fenced) => return lost(job),
                    Ok(SubBatchCommitted::Committed) => {
                        return Err(Error::Corrupt(format!(
                            "job {}'s last sub-batch committed without its end",
                            job.id
                        )))
                    }
                    Err(failure) => break Some(failure),
                }
            } else {
                match performed.commit(SubBatchCommit::Cursor(cursor)).await {
                    Ok(SubBatchCommitted::Fenced) => return lost(job),
                    Ok(_) => {}
                    Err(failure) => break Some(failure),
                }
            }
            let took = t0.elapsed();
            self.observe_latency(m.id, took, sub_batch_size);
            sub_batch_size = tuner.next(sub_batch_size, took, target_time, job.batch_size);
            tally.record(first, end, rows, took);
            start = end.checked_add(1);
            if job.pause_ms > 0 && start.is_some_and(|s| s <= job.max_value) {
                tokio::time::sleep(Duration::from_millis(job.pause_ms as u64)).await;
            }
        };
        drop(heartbeat);
        if failure.as_ref().is_some_and(Failure::is_timeout) {
            sub_batch_size = ((sub_batch_size as f64) * 0.75).max(1.0) as i64;
        }
        let to = if failure.is_some() {
            JobStatus::Failed
        } else {
            JobStatus::Succeeded
        };
        let params = JobTransitionParams::new(&job, to, &self.name)?
            .with_metrics(tally.metrics(started.elapsed(), sub_batch_size))
            .with_failure(failure.clone())
            .with_sub_batch_size((sub_batch_size != job.sub_batch_size).then_some(sub_batch_size));
        let Some(job) = self.record_with_retry(&params).await? else {
            return lost(job);
        };
        let outcome = match failure {
            Some(failure) => JobOutcome::Failed { failure },
            None => JobOutcome::Succeeded,
        };
        self.tuner_floor.insert(m.id, tuner.floor());
        Ok(JobRun {
            job,
            outcome,
            started_next: None,
            tuner_found: tuner.take_found(),
        })
    }

    fn observe_latency(&mut self, migration_id: i64, took: Duration, keys: i64) {
        if let Some(tracker) = self.latency.get_mut(&migration_id) {
            tracker.observe(took.as_secs_f64() * 1000.0, keys);
        }
    }

    /// Records the end of a job, retrying with backoff while the database is unreachable (a
    /// restart takes seconds). Safe past the lease: if another worker has taken the job over
    /// meanwhile, the attempt no longer matches and nothing is written. `None` when the job is
    /// no longer ours.
    async fn record_with_retry(&self, params: &JobTransitionParams) -> Result<Option<Job>> {
        let deadline = Instant::now() + (self.lease() * 3).max(RECORD_RETRY_FOR);
        let mut backoff = Backoff::default();
        loop {
            match self.sg().store.job_transition(params).await {
                Ok(job) => return Ok(Some(job)),
                Err(Error::Conflict { .. }) => return Ok(None),
                Err(Error::Database { source, context })
                    if Failure::from_sqlx(&source).is_connection_lost()
                        && Instant::now() < deadline =>
                {
                    let wait = backoff.next();
                    tracing::warn!(job = params.job_id(), error = %source, %context, retry_in_ms = wait.as_millis() as u64, "cannot record the job's end yet; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn reset_exhausted(&self, m: &Migration) -> Result<()> {
        for job in self
            .sg()
            .store
            .job_list(m.id, Some(JobStatus::Failed))
            .await?
        {
            let params = JobTransitionParams::new(&job, JobStatus::Pending, &self.name)?;
            match self.sg().store.job_transition(&params).await {
                Ok(_) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// After a failed job: split it when timeouts exhausted its attempts, and fail the
    /// migration when too many of its jobs failed.
    async fn after_failure(
        &self,
        m: &Migration,
        table: &TableName,
        job: &Job,
        failure: &Failure,
    ) -> Result<()> {
        if failure.is_timeout() {
            self.shrink_after_timeout(m, job, failure).await?;
            if job.attempts >= MAX_ATTEMPTS {
                self.split(m, table, job).await?;
            }
        }
        let counts = self.sg().store.job_counts(m.id, MAX_ATTEMPTS).await?;
        if counts.total() >= AUTO_FAIL_MIN_JOBS && counts.failed * 2 > counts.total() {
            let current = self.sg().store.migration_get(m.id).await?;
            if let Some(current) = current.filter(|c| c.status == MigrationStatus::Active) {
                let reason = format!(
                    "{} of {} jobs failed (more than half, with at least {AUTO_FAIL_MIN_JOBS} jobs)",
                    counts.failed,
                    counts.total()
                );
                let failure = Failure::new(FailureClass::TooManyFailedJobs, reason.clone());
                match self.fail_migration(&current, failure, reason).await {
                    Ok(_) | Err(Error::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn split(&self, m: &Migration, table: &TableName, job: &Job) -> Result<()> {
        let half = job.batch_size / 2;
        if half < 1 || job.batch_size <= job.sub_batch_size {
            return Ok(());
        }
        let from = match job.cursor {
            Some(c) => match c.checked_add(1) {
                Some(from) => from,
                None => return Ok(()),
            },
            None => job.min_value,
        };
        let range = self
            .sg()
            .target
            .range_next(table, &m.column_name, from, job.max_value, half)
            .await?;
        let Some((_, mid)) = range.filter(|(_, mid)| *mid < job.max_value) else {
            return Ok(());
        };
        let params = JobSplitParams {
            transition: JobTransitionParams::new(job, JobStatus::Pending, &self.name)?,
            first_max: mid,
            batch_size: half,
            sub_batch_size: job.sub_batch_size.min(half),
            second_min: mid + 1,
            second_max: job.max_value,
        };
        match self.sg().store.job_split(&params).await {
            Ok((first, second)) => {
                tracing::info!(
                    job = first.id,
                    new_job = second.id,
                    "split a job that kept timing out"
                );
                Ok(())
            }
            Err(Error::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn fail_migration(
        &self,
        m: &Migration,
        failure: Failure,
        reason: String,
    ) -> Result<Migration> {
        let params = MigrationTransitionParams::new(m, MigrationEvent::Fail, &self.name)?
            .with_reason(Some(reason))
            .with_failure(failure);
        let m = self.sg().store.migration_transition(&params).await?;
        self.sg().store.table_lease_release(m.id).await?;
        Ok(m)
    }

    /// No job left to start: finish (or fail) the migration when nothing is pending or
    /// running any more.
    async fn complete_if_done(&self, m: &Migration) -> Result<StepOutcome> {
        let Some(m) = self.sg().store.migration_get(m.id).await? else {
            return Ok(StepOutcome::Idle);
        };
        let runnable = matches!(
            m.status,
            MigrationStatus::Active | MigrationStatus::Finalizing
        );
        let counts = self.sg().store.job_counts(m.id, MAX_ATTEMPTS).await?;
        if !runnable || m.next_min_value.is_some() || counts.pending > 0 || counts.running > 0 {
            return Ok(StepOutcome::Waiting { migration_id: m.id });
        }
        let result = if counts.failed == 0 {
            let params = MigrationTransitionParams::new(&m, MigrationEvent::Finish, &self.name)?
                .with_reason(Some(format!(
                    "all {} jobs succeeded, {} rows affected",
                    counts.succeeded, counts.rows_affected
                )));
            let done = self.sg().store.migration_transition(&params).await;
            if done.is_ok() {
                self.sg().store.table_lease_release(m.id).await?;
            }
            done
        } else {
            let reason = format!(
                "{} job{} failed after {MAX_ATTEMPTS} attempts",
                counts.failed,
                if counts.failed == 1 { "" } else { "s" }
            );
            self.fail_migration(
                &m,
                Failure::new(FailureClass::JobsFailed, reason.clone()),
                reason,
            )
            .await
        };
        match result {
            Ok(m) => Ok(StepOutcome::Completed {
                migration: Box::new(m),
            }),
            Err(Error::Conflict { .. }) => Ok(StepOutcome::Waiting { migration_id: m.id }),
            Err(e) => Err(e),
        }
    }

    /// GitLab's optimizer over the last 20 succeeded jobs, weighted by rows affected and
    /// capped by the slowest cost per row (see [`optimizer::next_batch_size_by_rows`]); off at
    /// interval 0, where only the sub-batch tuner runs. A change is logged as `resize`.
    async fn optimize(&self, m: &Migration) -> Result<()> {
        if m.interval.is_zero() {
            return Ok(());
        }
        let jobs = self
            .sg()
            .store
            .job_recent_succeeded(m.id, optimizer::SAMPLE_JOBS as i64)
            .await?;
        let samples: Vec<optimizer::JobSample> = jobs
            .iter()
            .filter_map(|j| {
                let ms = (j.finished_at? - j.started_at?).num_milliseconds();
                Some(optimizer::JobSample {
                    duration: Duration::from_millis(ms.max(0) as u64),
                    rows: j.rows_affected,
                })
            })
            .collect();
        let Some(resize) = optimizer::next_batch_size_by_rows(
            m.batch_size,
            &samples,
            m.interval,
            m.max_batch_size,
        ) else {
            return Ok(());
        };
        // The batch never drops below the sub-batch: shrink that too when it must.
        let params = MigrationResizeParams {
            migration_id: m.id,
            batch_size: resize.batch_size,
            sub_batch_size: m.sub_batch_size.min(resize.batch_size),
            reason: format!("optimizer: {}", resize.reason),
            actor: self.name.clone(),
        };
        tracing::info!(migration = m.id, reason = %params.reason, "batch size changed");
        self.sg().store.migration_resize(&params).await?;
        Ok(())
    }

    /// The sub-batch tuner's decisions in the migration's log: a fixed cost it found, and any
    /// size it reached a factor of two or more away from the last one logged.
    async fn log_tuner(&mut self, m: &Migration, run: &JobRun) -> Result<()> {
        if m.target_sub_batch_ms <= 0 {
            return Ok(());
        }
        let tuned = run.job.sub_batch_size;
        let logged = *self
            .logged_sub_batch
            .entry(m.id)
            .or_insert(m.sub_batch_size);
        let reason = match &run.tuner_found {
            Some(found) => format!("tuner: sub-batch size {logged} -> {tuned}: {found}"),
            None if tuned >= 2 * logged || 2 * tuned <= logged => {
                let slowest = run
                    .job
                    .metrics
                    .get("slowest_sub_batch_ms")
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or(0);
                format!(
                    "tuner: sub-batch size {logged} -> {tuned}: sub-batches aimed at {} ms (slowest of job {} took {slowest} ms)",
                    m.target_sub_batch_ms, run.job.id
                )
            }
            None => return Ok(()),
        };
        // The batch size as it is now: the optimizer may have just changed it.
        let Some(current) = self.sg().store.migration_get(m.id).await? else {
            return Ok(());
        };
        let params = MigrationResizeParams {
            migration_id: m.id,
            batch_size: current.batch_size,
            sub_batch_size: tuned.min(current.batch_size),
            reason,
            actor: self.name.clone(),
        };
        tracing::info!(migration = m.id, reason = %params.reason, "sub-batch size logged");
        self.sg().store.migration_resize(&params).await?;
        self.logged_sub_batch.insert(m.id, tuned);
        Ok(())
    }

    /// A lock or statement timeout shrinks the migration's batch and sub-batch at once
    /// (×0.75), not after twenty jobs, and logs why.
    async fn shrink_after_timeout(
        &self,
        m: &Migration,
        job: &Job,
        failure: &Failure,
    ) -> Result<()> {
        let Some(current) = self.sg().store.migration_get(m.id).await? else {
            return Ok(());
        };
        let (batch, sub) = optimizer::after_timeout(current.batch_size, current.sub_batch_size);
        if (batch, sub) == (current.batch_size, current.sub_batch_size) {
            return Ok(());
        }
        let params = MigrationResizeParams {
            migration_id: m.id,
            batch_size: batch,
            sub_batch_size: sub,
            reason: format!(
                "{} in job {}: batch size {} -> {batch}, sub-batch size {} -> {sub}",
                failure.class, job.id, current.batch_size, current.sub_batch_size
            ),
            actor: self.name.clone(),
        };
        tracing::info!(migration = m.id, reason = %params.reason, "batch size shrunk after a timeout");
        self.sg().store.migration_resize(&params).await?;
        Ok(())
    }

    /// Every indicator's verdict on `sample` for `m` (with the release hysteresis while it is
    /// on hold), with this loop's WAL rate (the sample fed to it) and its own sub-batch
    /// timings of `m`; and how near a limit it is ([`health::pressure`]).
    fn judge(
        &mut self,
        m: &Migration,
        sample: &HealthSample,
    ) -> (Vec<health::Reading>, Option<(f64, String)>) {
        let rate = self.wal_rate.observe(sample.wal_lsn);
        let latency = self.latency.get(&m.id);
        let holding = m.held_since.is_some();
        let readings = health::evaluate_while(sample, &m.health, rate, latency, holding);
        let pressure = health::pressure(sample, &m.health, rate, latency);
        (readings, pressure)
    }

    /// Samples the target's health before a job. A stop starts a hold (one `hold` row with the
    /// indicator, reading and threshold; `on_hold_until` = the next re-check, `--hold` away),
    /// or, when a hold is on, moves its re-check on with no row. Every indicator normal on a
    /// held migration ends the hold (a `release` row: how long, what cleared). Near a limit
    /// the worker waits before the job, in proportion ([`health::slow_down`]), and logs a
    /// `throttle` row when that changes. `unknown` readings are logged at debug level.
    async fn check_health(
        &mut self,
        m: &Migration,
        sample: HealthSample,
    ) -> Result<Option<StepOutcome>> {
        let (readings, pressure) = self.judge(m, &sample);
        for r in readings.iter().filter(|r| r.signal == Signal::Unknown) {
            // What the role may not read is said once per worker, loudly, with the grant.
            let unreadable = r.reading.starts_with("not readable by role");
            let first = unreadable
                && self
                    .worker
                    .warned
                    .lock()
                    .expect("not poisoned")
                    .insert(r.reading.clone());
            if first {
                tracing::warn!(indicator = %r.indicator, reading = %r.reading, "health indicator unreadable: it reads unknown and never holds");
            } else {
                tracing::debug!(migration = m.id, indicator = %r.indicator, reading = %r.reading, "health indicator unknown");
            }
        }
        if let Some(stop) = health::first_stop(&readings) {
            let reason = stop.reason();
            return self.hold(m, reason).await.map(Some);
        }
        if let Some(since) = m.held_since {
            self.release(m, since, &readings).await?;
        }
        self.throttle(m, pressure).await?;
        Ok(None)
    }

    /// Starts a hold, or moves the one in progress on to its next re-check.
    async fn hold(&mut self, m: &Migration, reason: String) -> Result<StepOutcome> {
        let store = &self.sg().store;
        let started = match m.held_since {
            Some(_) => None,
            None => {
                let params = MigrationTransitionParams::new(m, MigrationEvent::Hold, &self.name)?
                    .with_reason(Some(reason.clone()))
                    .holding_for(m.health.hold());
                match store.migration_transition(&params).await {
                    Ok(held) => Some(held),
                    // Another worker started it (or it was paused): go on with theirs.
                    Err(Error::Conflict { .. }) => None,
                    Err(e) => return Err(e),
                }
            }
        };
        let held = match started {
            Some(held) => {
                tracing::warn!(migration = m.id, name = %m.name, %reason, "migration on hold");
                held
            }
            None => match store.migration_hold_extend(m.id, m.health.hold()).await? {
                Some(held) => held,
                None => return Ok(StepOutcome::Waiting { migration_id: m.id }),
            },
        };
        // The table lease is kept: jobs of this migration other loops are running renew it,
        // and no other migration of the table may start beside them. Unrenewed, it expires.
        Ok(StepOutcome::Held {
            migration: Box::new(held),
            reason,
        })
    }

    /// Ends the hold in progress: every indicator is normal at this re-check.
    async fn release(
        &mut self,
        m: &Migration,
        since: chrono::DateTime<Utc>,
        readings: &[health::Reading],
    ) -> Result<()> {
        let store = &self.sg().store;
        // What held it: the indicator named by the hold's log row, and its reading now.
        let log = store.migration_transition_list(m.id).await?;
        let cause = log
            .iter()
            .rev()
            .find(|r| r.event == MigrationEvent::Hold)
            .and_then(|r| r.reason.as_deref())
            .and_then(|r| r.split_once(':'))
            .map(|(indicator, _)| indicator.to_owned());
        let cleared = cause
            .as_deref()
            .and_then(|c| readings.iter().find(|r| r.indicator.as_str() == c))
            .map(|r| format!("; {}: {}", r.indicator, r.reading))
            .unwrap_or_default();
        let held_for = (Utc::now() - since).to_std().unwrap_or_default();
        let reason = format!(
            "held {}; every indicator normal again{cleared}",
            humantime::format_duration(Duration::from_millis(held_for.as_millis() as u64))
        );
        let params = MigrationTransitionParams::new(m, MigrationEvent::Release, &self.name)?
            .with_reason(Some(reason.clone()));
        match store.migration_transition(&params).await {
            Ok(_) => {
                tracing::info!(migration = m.id, name = %m.name, %reason, "hold ended");
                Ok(())
            }
            // Another worker ended it, or the migration moved on.
            Err(Error::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Near a limit, waits before the next job in proportion; logs a `throttle` row when the
    /// pause starts, ends, or changes by a factor of two or more.
    async fn throttle(&mut self, m: &Migration, pressure: Option<(f64, String)>) -> Result<()> {
        let job = self
            .job_time
            .get(&m.id)
            .copied()
            .unwrap_or(Duration::from_millis(100));
        let (pause, why) = match &pressure {
            Some((share, why)) => (health::slow_down(*share, job), Some(why.clone())),
            None => (Duration::ZERO, None),
        };
        let pause_ms = pause.as_millis() as i64;
        let known = *self.throttle_ms.entry(m.id).or_insert(m.throttle_pause_ms);
        let changed = match (known, pause_ms) {
            (0, 0) => false,
            (0, _) | (_, 0) => true,
            (a, b) => b >= 2 * a || 2 * b <= a,
        };
        if changed {
            let log = match &why {
                Some(why) if pause_ms > 0 => format!(
                    "slowing down: {} ms between jobs ({why}; {:.0}% of the limit)",
                    pause_ms,
                    pressure.as_ref().map_or(0.0, |p| p.0 * 100.0)
                ),
                _ => "full speed again: every measured indicator under half its limit".into(),
            };
            let params = MigrationThrottleParams {
                migration_id: m.id,
                pause_ms,
                reason: why.filter(|_| pause_ms > 0),
                log,
                actor: self.name.clone(),
            };
            self.sg().store.migration_throttle(&params).await?;
            self.throttle_ms.insert(m.id, pause_ms);
            tracing::info!(migration = m.id, pause_ms, "throttle changed");
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }
}

/// What a job's sub-batches did, for its metrics.
#[derive(Debug, Default, Clone)]
struct Tally {
    sub_batches: u64,
    rows: u64,
    slowest_ms: u64,
    /// The newest [`METRICS_KEPT`] sub-batches.
    recent: Vec<serde_json::Value>,
}

impl Tally {
    fn record(&mut self, start: i64, end: i64, rows: u64, took: Duration) {
        let ms = took.as_millis() as u64;
        self.sub_batches += 1;
        self.rows += rows;
        self.slowest_ms = self.slowest_ms.max(ms);
        if self.recent.len() == METRICS_KEPT {
            self.recent.remove(0);
        }
        self.recent
            .push(json!({"start": start, "end": end, "rows": rows, "ms": ms}));
    }

    fn metrics(&self, duration: Duration, sub_batch_size: i64) -> serde_json::Value {
        json!({
            "duration_ms": duration.as_millis() as u64,
            "sub_batches": self.sub_batches,
            "rows": self.rows,
            "slowest_sub_batch_ms": self.slowest_ms,
            "sub_batch_size": sub_batch_size,
            "recent": self.recent,
        })
    }
}

/// Exponential backoff from 100 ms to 30 s.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ms = 100u64.saturating_mul(1 << self.failures.min(9));
        self.failures += 1;
        Duration::from_millis(ms.min(30_000))
    }

    fn reset(&mut self) {
        self.failures = 0;
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
