//! The runner: workers that claim due migrations and run their jobs, sub-batch by
//! sub-batch, recording every status change. One [`Worker::step`] is DESIGN §5: claim, next
//! job (new range or retry), execute, record, split or fail on repeated timeouts, optimize.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::client::{Sluicegate, LOG_RETENTION_MONTHS, MAX_ATTEMPTS};
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::health::{self, HealthSample, LatencyTracker, Signal, WalRate};
use crate::ident::TableName;
use crate::kind::JobKind;
use crate::model::{Job, Migration};
use crate::optimizer;
use crate::status::{JobStatus, MigrationEvent, MigrationStatus};
use crate::store::{
    Checkpoint, JobCreateParams, JobCreated, JobFinish, JobRange, JobSplitParams,
    JobTransitionParams, MigrationResizeParams, MigrationTransitionParams, SubBatchOutcome,
    SubBatchSpec, Timeouts,
};

/// Jobs that must have run before the failure ratio can fail a migration (GitLab: 50).
pub const AUTO_FAIL_MIN_JOBS: i64 = 50;
/// How many sub-batch entries a job's metrics keep (the newest); totals cover all.
const METRICS_KEPT: usize = 50;
/// How long a worker keeps trying to record a job's end while the database is away.
const RECORD_RETRY_FOR: Duration = Duration::from_secs(60);
/// How long a job's last sub-batch waits (its transaction open) for the next job's prefetch
/// before going without it.
const PREFETCH_WAIT: Duration = Duration::from_millis(20);
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

/// A worker: runs jobs of due migrations. Clone it to share; [`Worker::run`] runs
/// `concurrency` loops at once.
#[derive(Clone)]
pub struct Worker {
    sg: Sluicegate,
    opts: WorkerOptions,
    events: Option<EventSink>,
    last_partition_check: Arc<std::sync::Mutex<Option<Instant>>>,
    /// The migration whose job this loop just ran, to continue without a new claim.
    sticky: Arc<std::sync::Mutex<Option<Migration>>>,
    /// WAL rate between this worker's health samples.
    wal_rate: Arc<std::sync::Mutex<WalRate>>,
    /// Sub-batch latencies this worker measured, per migration.
    latency: Arc<std::sync::Mutex<std::collections::HashMap<i64, LatencyTracker>>>,
    /// What the next job of the sticky migration needs, read while the current one runs.
    prefetch: Arc<std::sync::Mutex<Option<Prefetch>>>,
    /// A job created with the last one's end, to run next (see [`Worker::create_ahead`]).
    ready: Arc<std::sync::Mutex<Option<(Migration, NextJob)>>>,
    /// Whether a job's end may create the next job: only in step loops, which run it.
    ahead: bool,
    /// Set when the step loops are asked to stop: no more jobs are created ahead.
    stopping: Arc<AtomicBool>,
}

/// The health sample and the next key range of a migration, read on other connections while
/// its current job runs, so that neither costs time between jobs.
struct Prefetch {
    migration_id: i64,
    start: i64,
    task: JoinHandle<()>,
    result: Arc<std::sync::Mutex<Option<PrefetchResult>>>,
    /// Turns true when `result` is there.
    done: tokio::sync::watch::Receiver<bool>,
}

/// The health sample, and the next job's key range (`None`: none left from the start).
type PrefetchResult = (Result<HealthSample>, Result<Option<(i64, i64)>>);

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("opts", &self.opts).finish()
    }
}

/// A job to run, and — when it was just created from the range — the migration's
/// `next_min_value` after it.
struct NextJob {
    job: Job,
    next_min: Option<Option<i64>>,
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A worker's ordinary step.
    Normal,
    /// `finalize`: ignore interval and holds, reset exhausted jobs.
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
            sticky: Arc::new(std::sync::Mutex::new(None)),
            wal_rate: Arc::default(),
            latency: Arc::default(),
            prefetch: Arc::default(),
            ready: Arc::default(),
            ahead: false,
            stopping: Arc::default(),
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

    /// One step: claim a due migration and run one job of it.
    pub async fn step(&self) -> Result<StepOutcome> {
        self.maintain_partitions().await?;
        let ready = self.ready.lock().expect("not poisoned").take();
        if let Some((m, next)) = ready {
            let table = TableName::parse(&m.table_name)?;
            let kind = self
                .sg
                .registry
                .get(&m.job_kind)
                .ok_or_else(|| Error::UnknownJobKind(m.job_kind.clone()))?;
            let outcome = self
                .run_job(m, next, kind.as_ref(), &table, Mode::Normal)
                .await?;
            self.emit(&outcome);
            return Ok(outcome);
        }
        let cached = self.sticky.lock().expect("not poisoned").take();
        if let Some(m) = cached {
            if let Some(outcome) = self.step_sticky(m).await? {
                self.emit(&outcome);
                return Ok(outcome);
            }
        }
        let started = Instant::now();
        let claimed = self
            .sg
            .store
            .migration_claim(&self.opts.name, self.opts.lease, None)
            .await?;
        // The soak script reads these lines to check that claiming stays flat under load.
        tracing::debug!(
            target: "sluicegate::claim",
            claim_ms = started.elapsed().as_secs_f64() * 1000.0,
            claimed = claimed.is_some(),
            worker = %self.opts.name,
        );
        let Some(migration) = claimed else {
            return Ok(StepOutcome::Idle);
        };
        let outcome = self.step_migration(migration, Mode::Normal).await?;
        self.emit(&outcome);
        Ok(outcome)
    }

    /// Runs steps until no active migration is left to work on (all finished, failed,
    /// paused or cancelled), waiting for intervals, holds and other workers' jobs.
    pub async fn run_until_idle(&self) -> Result<()> {
        let mut worker = self.clone();
        worker.ahead = true;
        worker.run_loop(true, &AtomicBool::new(false)).await
    }

    /// The step loop of [`Worker::run`]: until `stop` is set between steps, or with
    /// `until_idle` also until no active migration is left.
    async fn run_loop(&self, until_idle: bool, stop: &AtomicBool) -> Result<()> {
        let mut backoff = Backoff::default();
        // A job created ahead is running already: it runs before the loop stops.
        while !stop.load(Ordering::Relaxed) || self.ready.lock().expect("not poisoned").is_some() {
            match self.step().await {
                Ok(StepOutcome::Idle) => {
                    if until_idle {
                        match self.has_runnable_migrations().await {
                            Ok(false) => return Ok(()),
                            Ok(true) => {}
                            Err(e) => {
                                self.on_error(e, &mut backoff).await?;
                                continue;
                            }
                        }
                    }
                    backoff.reset();
                    tokio::time::sleep(self.opts.poll_interval).await;
                }
                Ok(_) => backoff.reset(),
                Err(e) => self.on_error(e, &mut backoff).await?,
            }
        }
        Ok(())
    }

    /// Runs `concurrency` step loops until `shutdown` resolves (then lets running jobs end)
    /// or, with `until_idle`, until no active migration is left.
    pub async fn run(
        &self,
        until_idle: bool,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut loops = Vec::new();
        for i in 0..self.opts.concurrency.max(1) {
            let mut worker = self.clone();
            // Each loop keeps its own next migration, WAL samples and sub-batch timings.
            worker.sticky = Arc::new(std::sync::Mutex::new(None));
            worker.wal_rate = Arc::default();
            worker.latency = Arc::default();
            worker.prefetch = Arc::default();
            worker.ready = Arc::default();
            worker.ahead = true;
            worker.stopping = stop.clone();
            if self.opts.concurrency > 1 {
                worker.opts.name = format!("{}#{i}", self.opts.name);
            }
            let stop = stop.clone();
            loops.push(tokio::spawn(async move {
                worker.run_loop(until_idle, &stop).await
            }));
        }
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

    /// A database error in the loop: back off and go on when it is the connection;
    /// anything else (a missing schema, corrupt data) stops the worker.
    async fn on_error(&self, e: Error, backoff: &mut Backoff) -> Result<()> {
        let transient = match &e {
            Error::Database { source, .. } => {
                let f = Failure::from_sqlx(source);
                f.is_connection_lost() || f.class == "DatabaseBusy" || f.class == "DatabaseLocked"
            }
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

    /// Finalize: runs the migration's remaining jobs inline, back to back, resetting
    /// exhausted attempts, until it is finished or failed.
    pub async fn finalize(&self, migration: &Migration, actor: &str) -> Result<Migration> {
        let mut m = migration.clone();
        match m.status {
            MigrationStatus::Finished => return Ok(m),
            MigrationStatus::Active | MigrationStatus::Paused => {
                m = self
                    .sg
                    .transition(&m, MigrationEvent::Finalize, None, actor)
                    .await?;
            }
            MigrationStatus::Finalizing => {}
            from => {
                return Err(Error::IllegalMigrationTransition {
                    migration: m.name.clone(),
                    event: "finalize".into(),
                    from,
                })
            }
        }
        self.reset_exhausted(&m).await?;
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
                .migration_claim(&self.opts.name, self.opts.lease, Some(m.id))
                .await?;
            let Some(claimed) = claimed else {
                // Another migration of the same table holds it: wait for it.
                tokio::time::sleep(backoff.next()).await;
                continue;
            };
            match self.step_migration(claimed, Mode::Finalize).await {
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

    async fn reset_exhausted(&self, m: &Migration) -> Result<()> {
        for job in self
            .sg
            .store
            .job_list(m.id, Some(JobStatus::Failed))
            .await?
        {
            let mut params = JobTransitionParams::new(&job, JobStatus::Pending, &self.opts.name);
            params.attempts = 0;
            match self.sg.store.job_transition(&params).await {
                Ok(_) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn step_migration(&self, m: Migration, mode: Mode) -> Result<StepOutcome> {
        let Some(kind) = self.sg.registry.get(&m.job_kind) else {
            let failure = Failure::new(
                "UnknownJobKind",
                format!(
                    "job kind {:?} is not registered in worker {}",
                    m.job_kind, self.opts.name
                ),
            );
            let m = self
                .fail_migration(&m, failure, "its job kind is not registered".into())
                .await?;
            return Ok(StepOutcome::Completed {
                migration: Box::new(m),
            });
        };
        let table = TableName::parse(&m.table_name)?;
        if mode == Mode::Normal {
            let sample = self.health_sample(&m, &table).await?;
            if let Some(held) = self.check_health(&m, sample).await? {
                return Ok(held);
            }
        }
        match self.next_job(&m, &table).await? {
            Some(next) => self.run_job(m, next, kind.as_ref(), &table, mode).await,
            None => self.complete_if_done(&m).await,
        }
    }

    /// Runs a job and what follows it: split or auto-fail after a failure, the optimizer after
    /// a success. A job created from the range leaves its migration as this worker's next
    /// candidate (see [`Worker::step`]).
    async fn run_job(
        &self,
        m: Migration,
        next: NextJob,
        kind: &dyn JobKind,
        table: &TableName,
        mode: Mode,
    ) -> Result<StepOutcome> {
        let mut ahead = None;
        if let (Mode::Normal, true, Some(Some(start))) = (mode, m.interval.is_zero(), next.next_min)
        {
            self.start_prefetch(&m, table, start);
            ahead = Some(start).filter(|_| self.ahead && !self.stopping.load(Ordering::Relaxed));
        }
        let (job, outcome, created) = self.execute(&m, kind, table, next.job, ahead).await?;
        if let JobOutcome::Failed { failure } = &outcome {
            self.after_failure(&m, table, &job, failure).await?;
        } else if outcome == JobOutcome::Succeeded && mode == Mode::Normal {
            self.optimize(&m).await?;
            if let Some(next_min) = next.next_min.filter(|_| m.interval.is_zero()) {
                let mut again = m.clone();
                again.next_min_value = next_min;
                again.sub_batch_size = job.sub_batch_size.min(again.batch_size);
                match created {
                    Some(created) => {
                        again.next_min_value = created.next_min.flatten();
                        *self.ready.lock().expect("not poisoned") = Some((again, created));
                    }
                    None => *self.sticky.lock().expect("not poisoned") = Some(again),
                }
            }
        }
        Ok(StepOutcome::Ran {
            migration_id: m.id,
            job: Box::new(job),
            outcome,
        })
    }

    /// Reads, on other connections, what the next job of `m` will need (its health sample and
    /// the key range from `start`) while the current job runs.
    fn start_prefetch(&self, m: &Migration, table: &TableName, start: i64) {
        let target = self.sg.target.clone();
        let (table, column, probe) = (table.clone(), m.column_name.clone(), m.health.probe.clone());
        let (max, size) = (m.max_value, m.batch_size);
        let result = Arc::new(std::sync::Mutex::new(None));
        let slot = result.clone();
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let sample = target.health_sample(&table, probe.as_deref());
            let range = target.range_next(&table, &column, start, max, size);
            let both = futures::join!(sample, range);
            *slot.lock().expect("not poisoned") = Some(both);
            let _ = done_tx.send(true);
        });
        let previous = self
            .prefetch
            .lock()
            .expect("not poisoned")
            .replace(Prefetch {
                migration_id: m.id,
                start,
                task,
                result,
                done,
            });
        if let Some(p) = previous {
            p.task.abort();
        }
    }

    /// Waits, briefly, until the prefetch for `migration_id` has its result.
    async fn prefetch_ready(&self, migration_id: i64) {
        let done = self
            .prefetch
            .lock()
            .expect("not poisoned")
            .as_ref()
            .filter(|p| p.migration_id == migration_id)
            .map(|p| p.done.clone());
        if let Some(mut done) = done {
            let _ = tokio::time::timeout(PREFETCH_WAIT, done.wait_for(|d| *d)).await;
        }
    }

    /// The next job to create with the end of the current one, if the prefetched health sample
    /// (read while this job ran) says go and the next range is known: the job's end and the
    /// next job's start then commit in one statement with its last sub-batch, so nothing runs
    /// between two jobs but that statement. A stop, or a sample not ready yet, leaves it to the
    /// next step, which holds or creates the job itself.
    fn create_ahead(
        &self,
        m: &Migration,
        start: i64,
        sub_batch_size: i64,
    ) -> Option<JobCreateParams> {
        let prefetch = self.prefetch.lock().expect("not poisoned");
        let p = prefetch
            .as_ref()
            .filter(|p| p.migration_id == m.id && p.start == start)?;
        let mut slot = p.result.lock().expect("not poisoned");
        let Some((Ok(sample), Ok(Some((min, max))))) = slot.as_ref() else {
            return None;
        };
        if health::first_stop(&self.judge(m, sample)).is_some() {
            return None;
        }
        let (min, max) = (*min, *max);
        slot.take();
        Some(JobCreateParams {
            migration_id: m.id,
            expected_next_min: start,
            range: JobRange::Given { min, max },
            batch_size: m.batch_size,
            sub_batch_size: sub_batch_size.min(m.batch_size),
            pause_ms: m.pause_ms,
            worker: self.opts.name.clone(),
            lease: self.opts.lease,
        })
    }

    async fn health_sample(&self, m: &Migration, table: &TableName) -> Result<HealthSample> {
        self.sg
            .target
            .health_sample(table, m.health.probe.as_deref())
            .await
    }

    /// Creates the migration's next job from `start`: in one statement with the keyset walk
    /// when the table is in the tracking database, else after finding the range on the target.
    async fn create_job(&self, m: &Migration, table: &TableName, start: i64) -> Result<JobCreated> {
        let range = if self.sg.same_database {
            JobRange::Keyset {
                table: table.clone(),
                column: m.column_name.clone(),
                size: m.batch_size,
            }
        } else {
            let found = self
                .sg
                .target
                .range_next(table, &m.column_name, start, m.max_value, m.batch_size)
                .await?;
            match found {
                Some((min, max)) => JobRange::Given { min, max },
                None if self.sg.store.migration_range_exhaust(m.id, start).await? => {
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
        self.sg
            .store
            .job_create(&JobCreateParams {
                migration_id: m.id,
                expected_next_min: start,
                range,
                batch_size: m.batch_size,
                sub_batch_size: m.sub_batch_size.min(m.batch_size),
                pause_ms: m.pause_ms,
                worker: self.opts.name.clone(),
                lease: self.opts.lease,
            })
            .await
    }

    /// The next job of the migration this worker just ran a job of, without claiming it again
    /// (its table lease is renewed by the creating statement), when its end did not create it
    /// already ([`Worker::create_ahead`]): a health check, then create+start in one statement.
    /// `None` when it is not to be had (paused, another worker's range, the table lease gone):
    /// then claim as usual.
    async fn step_sticky(&self, m: Migration) -> Result<Option<StepOutcome>> {
        let (Some(start), Some(kind)) = (m.next_min_value, self.sg.registry.get(&m.job_kind))
        else {
            return Ok(None);
        };
        let table = TableName::parse(&m.table_name)?;
        let prefetched = self
            .prefetch
            .lock()
            .expect("not poisoned")
            .take()
            .filter(|p| p.migration_id == m.id && p.start == start);
        let mut result = None;
        if let Some(p) = prefetched {
            if p.task.await.is_ok() {
                result = p.result.lock().expect("not poisoned").take();
            }
        }
        let (sample, range) = match result {
            Some((sample, range)) => (sample?, range.ok().flatten()),
            None => (self.health_sample(&m, &table).await?, None),
        };
        if let Some(held) = self.check_health(&m, sample).await? {
            return Ok(Some(held));
        }
        let created = match range {
            Some((min, max)) => {
                self.create_job_in(&m, start, JobRange::Given { min, max })
                    .await?
            }
            None => self.create_job(&m, &table, start).await?,
        };
        match created {
            JobCreated::Created(job, next_min) => {
                let next = NextJob {
                    job: *job,
                    next_min: Some(next_min),
                };
                Ok(Some(
                    self.run_job(m, next, kind.as_ref(), &table, Mode::Normal)
                        .await?,
                ))
            }
            JobCreated::Exhausted | JobCreated::NotNow => Ok(None),
        }
    }

    /// The job to run now: a new range after the last one, or a pending, retriable or
    /// abandoned job. Concurrent workers race through compare-and-set; the loser looks again.
    async fn next_job(&self, m: &Migration, table: &TableName) -> Result<Option<NextJob>> {
        let store = &self.sg.store;
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
                        return Ok(Some(NextJob {
                            job: *job,
                            next_min: Some(next_min),
                        }))
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
                let mut params = JobTransitionParams::new(&job, JobStatus::Failed, &self.opts.name);
                params.require_expired_lease = true;
                params.failure = Some(Failure::new(
                    "WorkerLost",
                    format!(
                        "worker {} stopped renewing its lease, which expired at {}",
                        job.worker.as_deref().unwrap_or("?"),
                        job.lease_expires_at
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "?".into())
                    ),
                ));
                job = match store.job_transition(&params).await {
                    Ok(job) => job,
                    Err(Error::Conflict { .. }) => continue,
                    Err(e) => return Err(e),
                };
                if job.attempts >= MAX_ATTEMPTS {
                    continue;
                }
            }
            job.status.check(JobStatus::Running, job.id)?;
            let mut params = JobTransitionParams::new(&job, JobStatus::Running, &self.opts.name);
            params.attempts = job.attempts + 1;
            params.lease = Some(self.opts.lease);
            match store.job_transition(&params).await {
                Ok(job) => {
                    return Ok(Some(NextJob {
                        job,
                        next_min: None,
                    }))
                }
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    fn start_heartbeat(&self, job: &Job) -> Heartbeat {
        let lost = Arc::new(AtomicBool::new(false));
        let (store, lease, id, attempts) =
            (self.sg.store.clone(), self.opts.lease, job.id, job.attempts);
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

    /// Runs a job sub-batch by sub-batch, from its cursor on, and records how it ended.
    async fn execute(
        &self,
        m: &Migration,
        kind: &dyn JobKind,
        table: &TableName,
        job: Job,
        ahead: Option<i64>,
    ) -> Result<(Job, JobOutcome, Option<NextJob>)> {
        let heartbeat = self.start_heartbeat(&job);
        let started = Instant::now();
        let mut start = match job.cursor {
            Some(cursor) => cursor.checked_add(1),
            None => Some(job.min_value),
        };
        let mut sub_batch_size = job.sub_batch_size;
        let mut tally = Tally::default();
        let target_time = Duration::from_millis(m.target_sub_batch_ms.max(0) as u64);
        self.latency
            .lock()
            .expect("not poisoned")
            .entry(m.id)
            .or_default()
            .job_started();
        let failure = loop {
            let Some(from) = start.filter(|s| *s <= job.max_value) else {
                break None;
            };
            if heartbeat.lost.load(Ordering::Relaxed) {
                return Ok((job, JobOutcome::Lost, None));
            }
            let whole_rest = sub_batch_size >= job.batch_size;
            let t0 = Instant::now();
            let spec = SubBatchSpec {
                kind,
                table,
                column: &m.column_name,
                arguments: &m.job_arguments,
                start: from,
                max: job.max_value,
                size: sub_batch_size,
                whole_rest,
                timeouts: Timeouts {
                    statement_ms: m.statement_timeout_ms,
                    lock_ms: m.lock_timeout_ms,
                },
            };
            // The job's end commits with its last sub-batch (same database only).
            let tally_now = &tally;
            let finish = move |s: i64, end: i64, rows: u64| -> BoxFuture<'_, JobFinish> {
                let took = t0.elapsed();
                let mut tally = tally_now.clone();
                tally.record(s, end, rows, took);
                let next_size = optimizer::next_sub_batch_size(
                    sub_batch_size,
                    took,
                    target_time,
                    job.batch_size,
                );
                let metrics = tally.metrics(started.elapsed(), next_size);
                Box::pin(async move {
                    let then_create = match ahead {
                        Some(start) => {
                            // The next job's health sample and range, read while this job ran,
                            // are there by now but for the shortest jobs: wait for them briefly.
                            self.prefetch_ready(m.id).await;
                            self.create_ahead(m, start, next_size)
                        }
                        None => None,
                    };
                    JobFinish {
                        metrics,
                        sub_batch_size: (next_size != job.sub_batch_size).then_some(next_size),
                        worker: self.opts.name.clone(),
                        then_create,
                    }
                })
            };
            let checkpoint = self.sg.same_database.then_some(Checkpoint {
                job_id: job.id,
                attempts: job.attempts,
                lease: self.opts.lease,
                job_max: job.max_value,
                finish: Some(&finish),
            });
            match self.sg.target.sub_batch_run(spec, checkpoint).await {
                Ok(SubBatchOutcome::Exhausted) => break None,
                Ok(SubBatchOutcome::Fenced) => return Ok((job, JobOutcome::Lost, None)),
                Ok(SubBatchOutcome::Finished {
                    job: done, next, ..
                }) => {
                    drop(heartbeat);
                    if let Some(tracker) = self.latency.lock().expect("not poisoned").get_mut(&m.id)
                    {
                        tracker.observe(t0.elapsed().as_secs_f64() * 1000.0, sub_batch_size);
                    }
                    let next = next.map(|(job, next_min)| NextJob {
                        job: *job,
                        next_min: Some(next_min),
                    });
                    return Ok((*done, JobOutcome::Succeeded, next));
                }
                Ok(SubBatchOutcome::Done {
                    start: s,
                    end,
                    rows,
                }) => {
                    if checkpoint.is_none()
                        && !self
                            .sg
                            .store
                            .job_checkpoint(job.id, job.attempts, end, rows as i64, self.opts.lease)
                            .await?
                    {
                        return Ok((job, JobOutcome::Lost, None));
                    }
                    let took = t0.elapsed();
                    if let Some(tracker) = self.latency.lock().expect("not poisoned").get_mut(&m.id)
                    {
                        tracker.observe(took.as_secs_f64() * 1000.0, sub_batch_size);
                    }
                    sub_batch_size = optimizer::next_sub_batch_size(
                        sub_batch_size,
                        took,
                        target_time,
                        job.batch_size,
                    );
                    tally.record(s, end, rows, took);
                    start = end.checked_add(1);
                    if job.pause_ms > 0 && start.is_some_and(|s| s <= job.max_value) {
                        tokio::time::sleep(Duration::from_millis(job.pause_ms as u64)).await;
                    }
                }
                Err(failure) => {
                    if failure.is_timeout() {
                        sub_batch_size = ((sub_batch_size as f64) * 0.75).max(1.0) as i64;
                    }
                    break Some(failure);
                }
            }
        };
        drop(heartbeat);
        let metrics = tally.metrics(started.elapsed(), sub_batch_size);
        let to = if failure.is_some() {
            JobStatus::Failed
        } else {
            JobStatus::Succeeded
        };
        let mut params = JobTransitionParams::new(&job, to, &self.opts.name);
        params.metrics = Some(metrics);
        params.failure = failure.clone();
        if sub_batch_size != job.sub_batch_size {
            params.sub_batch_size = Some(sub_batch_size);
        }
        let recorded = self.record_with_retry(&params).await?;
        let Some(job) = recorded else {
            return Ok((job, JobOutcome::Lost, None));
        };
        let outcome = match failure {
            Some(failure) => JobOutcome::Failed { failure },
            None => JobOutcome::Succeeded,
        };
        Ok((job, outcome, None))
    }

    /// Records the end of a job, retrying with backoff while the database is unreachable (a
    /// restart takes seconds). Safe past the lease: if another worker has taken the job over
    /// meanwhile, the attempt no longer matches and nothing is written. `None` when the job is
    /// no longer ours.
    async fn record_with_retry(&self, params: &JobTransitionParams) -> Result<Option<Job>> {
        let deadline = Instant::now() + (self.opts.lease * 3).max(RECORD_RETRY_FOR);
        let mut backoff = Backoff::default();
        loop {
            match self.sg.store.job_transition(params).await {
                Ok(job) => return Ok(Some(job)),
                Err(Error::Conflict { .. }) => return Ok(None),
                Err(Error::Database { source, context })
                    if Failure::from_sqlx(&source).is_connection_lost()
                        && Instant::now() < deadline =>
                {
                    let wait = backoff.next();
                    tracing::warn!(job = params.job_id, error = %source, %context, retry_in_ms = wait.as_millis() as u64, "cannot record the job's end yet; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
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
        let counts = self.sg.store.job_counts(m.id, MAX_ATTEMPTS).await?;
        if counts.total() >= AUTO_FAIL_MIN_JOBS && counts.failed * 2 > counts.total() {
            let current = self.sg.store.migration_get(m.id).await?;
            if let Some(current) = current.filter(|c| c.status == MigrationStatus::Active) {
                let reason = format!(
                    "{} of {} jobs failed (more than half, with at least {AUTO_FAIL_MIN_JOBS} jobs)",
                    counts.failed,
                    counts.total()
                );
                let failure = Failure::new("TooManyFailedJobs", reason.clone());
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
            .sg
            .target
            .range_next(table, &m.column_name, from, job.max_value, half)
            .await?;
        let Some((_, mid)) = range.filter(|(_, mid)| *mid < job.max_value) else {
            return Ok(());
        };
        job.status.check(JobStatus::Pending, job.id)?;
        let params = JobSplitParams {
            transition: JobTransitionParams::new(job, JobStatus::Pending, &self.opts.name),
            first_max: mid,
            batch_size: half,
            sub_batch_size: job.sub_batch_size.min(half),
            second_min: mid + 1,
            second_max: job.max_value,
        };
        match self.sg.store.job_split(&params).await {
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
        let to = m.status.after(MigrationEvent::Fail).ok_or_else(|| {
            Error::IllegalMigrationTransition {
                migration: m.name.clone(),
                event: "fail".into(),
                from: m.status,
            }
        })?;
        let params = MigrationTransitionParams {
            migration_id: m.id,
            from: m.status,
            to,
            event: MigrationEvent::Fail,
            reason: Some(reason),
            actor: self.opts.name.clone(),
            failure: Some(failure),
            hold_until: None,
        };
        let m = self.sg.store.migration_transition(&params).await?;
        self.sg.store.table_lease_release(m.id).await?;
        Ok(m)
    }

    /// No job left to start: finish (or fail) the migration when nothing is pending or
    /// running any more.
    async fn complete_if_done(&self, m: &Migration) -> Result<StepOutcome> {
        let Some(m) = self.sg.store.migration_get(m.id).await? else {
            return Ok(StepOutcome::Idle);
        };
        let runnable = matches!(
            m.status,
            MigrationStatus::Active | MigrationStatus::Finalizing
        );
        let counts = self.sg.store.job_counts(m.id, MAX_ATTEMPTS).await?;
        if !runnable || m.next_min_value.is_some() || counts.pending > 0 || counts.running > 0 {
            return Ok(StepOutcome::Waiting { migration_id: m.id });
        }
        let result = if counts.failed == 0 {
            let params = MigrationTransitionParams {
                migration_id: m.id,
                from: m.status,
                to: MigrationStatus::Finished,
                event: MigrationEvent::Finish,
                reason: Some(format!(
                    "all {} jobs succeeded, {} rows affected",
                    counts.succeeded, counts.rows_affected
                )),
                actor: self.opts.name.clone(),
                failure: None,
                hold_until: None,
            };
            let done = self.sg.store.migration_transition(&params).await;
            if done.is_ok() {
                self.sg.store.table_lease_release(m.id).await?;
            }
            done
        } else {
            let reason = format!(
                "{} job{} failed after {MAX_ATTEMPTS} attempts",
                counts.failed,
                if counts.failed == 1 { "" } else { "s" }
            );
            self.fail_migration(&m, Failure::new("JobsFailed", reason.clone()), reason)
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
            .sg
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
            actor: self.opts.name.clone(),
        };
        tracing::info!(migration = m.id, reason = %params.reason, "batch size changed");
        self.sg.store.migration_resize(&params).await?;
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
        let Some(current) = self.sg.store.migration_get(m.id).await? else {
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
            actor: self.opts.name.clone(),
        };
        tracing::info!(migration = m.id, reason = %params.reason, "batch size shrunk after a timeout");
        self.sg.store.migration_resize(&params).await?;
        Ok(())
    }

    /// Every indicator's verdict on `sample` for `m`, with this worker's WAL rate (the sample
    /// fed to it) and its own sub-batch timings of `m`.
    fn judge(&self, m: &Migration, sample: &HealthSample) -> Vec<health::Reading> {
        let rate = self
            .wal_rate
            .lock()
            .expect("not poisoned")
            .observe(sample.wal_lsn);
        let latency = self.latency.lock().expect("not poisoned");
        health::evaluate(sample, &m.health, rate, latency.get(&m.id))
    }

    /// Samples the target's health before a job. On a stop, puts the migration on hold for
    /// its hold duration with the indicator and reading in its log; the batch size is left
    /// alone. `unknown` readings are logged at debug level.
    async fn check_health(
        &self,
        m: &Migration,
        sample: HealthSample,
    ) -> Result<Option<StepOutcome>> {
        let readings = self.judge(m, &sample);
        for r in readings.iter().filter(|r| r.signal == Signal::Unknown) {
            tracing::debug!(migration = m.id, indicator = %r.indicator, reading = %r.reading, "health indicator unknown");
        }
        let Some(stop) = health::first_stop(&readings) else {
            return Ok(None);
        };
        let reason = stop.reason();
        let params = MigrationTransitionParams {
            migration_id: m.id,
            from: m.status,
            to: m.status,
            event: MigrationEvent::Hold,
            reason: Some(reason.clone()),
            actor: self.opts.name.clone(),
            failure: None,
            hold_until: Some(m.health.hold()),
        };
        let held = match self.sg.store.migration_transition(&params).await {
            Ok(held) => held,
            // Paused or cancelled meanwhile: nothing to hold.
            Err(Error::Conflict { .. }) => {
                return Ok(Some(StepOutcome::Waiting { migration_id: m.id }))
            }
            Err(e) => return Err(e),
        };
        // The table lease is kept: jobs of this migration other loops are running renew it,
        // and no other migration of the table may start beside them. Unrenewed, it expires.
        tracing::warn!(migration = m.id, name = %m.name, until = ?held.on_hold_until, %reason, "migration on hold");
        Ok(Some(StepOutcome::Held {
            migration: Box::new(held),
            reason,
        }))
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
