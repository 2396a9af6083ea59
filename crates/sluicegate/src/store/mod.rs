//! The storage layer: one trait of primitive operations on the tracking tables ([`Store`]),
//! one for the table being migrated ([`Target`]), and one implementation of each per backend.
//! Every SQL statement of a backend lives in that backend's file.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

pub use crate::dialect::Backend;
use crate::error::Result;
use crate::failure::Failure;
use crate::health::HealthSample;
use crate::ident::TableName;
use crate::key::{Key, KeySpec, Lower};
use crate::kind::JobKind;
use crate::model::{
    Job, JobCounts, JobTransition, Migration, MigrationTransition, NewMigration, TargetIdentity,
};
use crate::status::{JobStatus, MigrationEvent, MigrationStatus};

pub mod postgres;
mod rows;
pub mod sqlite;

/// Newest tracking-schema version this binary knows.
pub const SCHEMA_VERSION: i64 = 5;

/// What a backend can do, asked by name where the engine or the client depends on it, rather
/// than asking which backend it is ([`Backend`] chooses only the SQL dialect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Several connections write at once (row locks), so a job's sub-batches and other
    /// workers' jobs run side by side; SQLite has one writer at a time.
    pub concurrent_writers: bool,
    /// A claim passes over a migration another worker is claiming (`FOR UPDATE SKIP LOCKED`)
    /// instead of waiting for it.
    pub skip_locked: bool,
    /// A job's last sub-batch can start the migration's next job in the statement that ends
    /// it ([`JobFinish::then_create`]), when tracking and target are one database.
    pub start_next_job_with_finish: bool,
    /// Sub-batches and walks run under a statement timeout and a lock timeout.
    pub statement_timeouts: bool,
    /// [`Target::health_sample`] reads the server's own indicators (vacuum workers, replicas,
    /// the archiver, locks), not only the probe.
    pub health_indicators: bool,
    /// The job log is kept in monthly partitions, dropped whole; otherwise old rows are
    /// deleted.
    pub log_partitions: bool,
}

impl Capabilities {
    /// PostgreSQL's.
    pub const POSTGRES: Self = Self {
        concurrent_writers: true,
        skip_locked: true,
        start_next_job_with_finish: true,
        statement_timeouts: true,
        health_indicators: true,
        log_partitions: true,
    };
    /// SQLite's.
    pub const SQLITE: Self = Self {
        concurrent_writers: false,
        skip_locked: false,
        start_next_job_with_finish: false,
        statement_timeouts: false,
        health_indicators: false,
        log_partitions: false,
    };
}

/// A job status change, applied with its log row in one transaction. Built only through
/// [`JobTransitionParams::new`], which refuses a change the state machine does not allow; the
/// stores check it again before writing.
#[derive(Debug, Clone)]
pub struct JobTransitionParams {
    pub(crate) job_id: i64,
    /// The status it must be in now (`WHERE status = from`).
    pub(crate) from: JobStatus,
    pub(crate) to: JobStatus,
    /// The attempt count it must have now: the fencing token of the run being changed.
    pub(crate) expected_attempts: i32,
    /// Its attempt count afterwards.
    pub(crate) attempts: i32,
    /// Who makes the change (written to the log, and to the job when it starts running).
    pub(crate) worker: String,
    /// The lease to take when moving to `running`.
    pub(crate) lease: Option<Duration>,
    pub(crate) failure: Option<Failure>,
    /// Only match when the job's lease has run out (a lost worker's job).
    pub(crate) require_expired_lease: bool,
    pub(crate) metrics: Option<serde_json::Value>,
    pub(crate) sub_batch_size: Option<i64>,
}

impl JobTransitionParams {
    /// A change of `job` from its current status to `to`, by `worker`: an
    /// [`Error::IllegalJobTransition`](crate::Error::IllegalJobTransition) when the state
    /// machine does not allow it. Moving to `running` starts the next attempt (with a 30 s
    /// lease unless [`with_lease`](Self::with_lease) says otherwise); moving to `pending`
    /// resets the attempts.
    pub fn new(job: &Job, to: JobStatus, worker: impl Into<String>) -> Result<Self> {
        job.status.check(to, job.id)?;
        let attempts = match to {
            JobStatus::Running => job.attempts + 1,
            JobStatus::Pending => 0,
            _ => job.attempts,
        };
        Ok(Self::build(job, to, worker.into(), attempts))
    }

    /// The same change with no check at all, to test that the stores refuse what the state
    /// machine does not allow.
    #[cfg(feature = "testing")]
    pub fn unchecked(job: &Job, to: JobStatus, worker: impl Into<String>) -> Self {
        Self::build(job, to, worker.into(), job.attempts)
    }

    fn build(job: &Job, to: JobStatus, worker: String, attempts: i32) -> Self {
        Self {
            job_id: job.id,
            from: job.status,
            to,
            expected_attempts: job.attempts,
            attempts,
            worker,
            lease: (to == JobStatus::Running).then_some(Duration::from_secs(30)),
            failure: None,
            require_expired_lease: false,
            metrics: None,
            sub_batch_size: None,
        }
    }

    /// The lease taken when moving to `running`.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        if self.to == JobStatus::Running {
            self.lease = Some(lease);
        }
        self
    }

    /// Records `failure` with the change.
    pub fn with_failure(mut self, failure: Option<Failure>) -> Self {
        self.failure = failure;
        self
    }

    /// New per-sub-batch metrics.
    pub fn with_metrics(mut self, metrics: serde_json::Value) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// A new sub-batch size.
    pub fn with_sub_batch_size(mut self, size: Option<i64>) -> Self {
        self.sub_batch_size = size;
        self
    }

    /// Matches only when the job's lease has run out (its worker was lost).
    pub fn if_lease_expired(mut self) -> Self {
        self.require_expired_lease = true;
        self
    }

    /// Expects attempt `attempts` instead of the job's (a stale snapshot, in tests).
    pub fn expecting_attempts(mut self, attempts: i32) -> Self {
        self.expected_attempts = attempts;
        self
    }

    /// The job.
    pub fn job_id(&self) -> i64 {
        self.job_id
    }

    /// Its status before and after.
    pub fn statuses(&self) -> (JobStatus, JobStatus) {
        (self.from, self.to)
    }

    /// Refuses a change the state machine does not allow (the stores' own check).
    pub(crate) fn check(&self) -> Result<()> {
        self.from.check(self.to, self.job_id)
    }
}

/// A migration status change (or a hold, or a resize), applied with its log row in one
/// transaction. Built only through [`MigrationTransitionParams::new`], which asks the state
/// machine for the next status; the stores check it again before writing.
#[derive(Debug, Clone)]
pub struct MigrationTransitionParams {
    pub(crate) migration_id: i64,
    /// The status it must be in now.
    pub(crate) from: MigrationStatus,
    /// The status it moves to (equal to `from` for a hold).
    pub(crate) to: MigrationStatus,
    pub(crate) event: MigrationEvent,
    /// The operator's reason, or the health reading.
    pub(crate) reason: Option<String>,
    /// Who: a worker name, `cli`, `http`.
    pub(crate) actor: String,
    pub(crate) failure: Option<Failure>,
    /// For a hold: until when.
    pub(crate) hold_until: Option<Duration>,
}

impl MigrationTransitionParams {
    /// `event` applied to `m` by `actor`: an
    /// [`Error::IllegalMigrationTransition`](crate::Error::IllegalMigrationTransition) when
    /// the state machine does not allow it from `m`'s status.
    pub fn new(m: &Migration, event: MigrationEvent, actor: impl Into<String>) -> Result<Self> {
        let to = m
            .status
            .after(event)
            .ok_or_else(|| crate::Error::IllegalMigrationTransition {
                migration: m.name.clone(),
                event: event.as_str().to_owned(),
                from: m.status,
            })?;
        Ok(Self {
            migration_id: m.id,
            from: m.status,
            to,
            event,
            reason: None,
            actor: actor.into(),
            failure: None,
            hold_until: None,
        })
    }

    /// The same change with no check at all, to test that the stores refuse what the state
    /// machine does not allow.
    #[cfg(feature = "testing")]
    pub fn unchecked(m: &Migration, event: MigrationEvent, to: MigrationStatus) -> Self {
        Self {
            migration_id: m.id,
            from: m.status,
            to,
            event,
            reason: None,
            actor: "test".into(),
            failure: None,
            hold_until: None,
        }
    }

    /// Why, for the log.
    pub fn with_reason(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }

    /// The failure that moves it.
    pub fn with_failure(mut self, failure: Failure) -> Self {
        self.failure = Some(failure);
        self
    }

    /// For a hold: how long.
    pub fn holding_for(mut self, hold: Duration) -> Self {
        self.hold_until = Some(hold);
        self
    }

    /// The status it moves to.
    pub fn to(&self) -> MigrationStatus {
        self.to
    }

    /// Refuses a change the state machine does not allow (the stores' own check), and a hold
    /// longer than any that may be queued.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(hold) = self.hold_until {
            check_hold(hold)?;
        }
        if self.from.after(self.event) == Some(self.to) {
            return Ok(());
        }
        Err(crate::Error::IllegalMigrationTransition {
            migration: self.migration_id.to_string(),
            event: self.event.as_str().to_owned(),
            from: self.from,
        })
    }
}

/// Where a new job's key range comes from.
#[derive(Debug, Clone)]
pub enum JobRange {
    /// Already found on the target (a separate database): `[min, max]`.
    Given {
        /// First key.
        min: Key,
        /// Last key.
        max: Key,
    },
    /// Found by the keyset walk inside the creating statement (tracking and target are one
    /// database): the next `size` existing keys from the migration's `next_start`.
    Keyset {
        /// Target table.
        table: TableName,
        /// The key walked.
        key: KeySpec,
        /// Only rows matching it count.
        scope: Option<String>,
        /// How many existing keys.
        size: i64,
        /// The migration's statement timeout, which the walk runs under (PostgreSQL; SQLite
        /// has none), not the database's default.
        statement_ms: i64,
    },
}

/// A new job, created directly in `running` (its log's first row is `pending -> running`),
/// if and only if the migration is still runnable and due, its `next_start` is still
/// `expected_next`, and its table lease is still its own (which this renews).
#[derive(Debug, Clone)]
pub struct JobCreateParams {
    /// The migration.
    pub migration_id: i64,
    /// Compare-and-set guard on the migration's `next_start`; the walk starts there.
    pub expected_next: Lower,
    /// The job's keys.
    pub range: JobRange,
    /// Batch size.
    pub batch_size: i64,
    /// Sub-batch size.
    pub sub_batch_size: i64,
    /// Pause between sub-batches.
    pub pause_ms: i64,
    /// The worker that will run it.
    pub worker: String,
    /// Its lease (and the table lease's renewal).
    pub lease: Duration,
}

/// What [`Store::job_create`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum JobCreated {
    /// The job, and the migration's `next_start` after it.
    Created(Box<Job>, Option<Lower>),
    /// No key is left in the range: `next_start` is now `None`.
    Exhausted,
    /// Nothing written: the migration moved on (another worker, a pause, the interval, its
    /// table lease).
    NotNow,
}

/// The second half of a split job, inserted `pending`.
#[derive(Debug, Clone)]
pub struct JobSplitParams {
    /// The failed job going back to `pending` with its first half.
    pub transition: JobTransitionParams,
    /// The first half's last key.
    pub first_max: Key,
    /// The halves' batch size.
    pub batch_size: i64,
    /// The halves' sub-batch size.
    pub sub_batch_size: i64,
    /// The second half's first key.
    pub second_min: Key,
    /// The second half's last key.
    pub second_max: Key,
}

/// What partition maintenance did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionReport {
    /// Partitions created.
    pub created: Vec<String>,
    /// Partitions dropped (older than the retention).
    pub dropped: Vec<String>,
    /// Log rows deleted (SQLite, which has no partitions).
    pub rows_deleted: u64,
}

/// Primitive operations on the tracking tables.
///
/// # Transactions and locks
/// Each method is one transaction. Status changes update only rows in the expected previous
/// status (and attempt), and write their log row in the same transaction; when the row moved
/// on meanwhile they return [`Error::Conflict`](crate::Error::Conflict) and write nothing.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The engine behind this store: the SQL dialect it speaks.
    fn backend(&self) -> Backend;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// Installs or upgrades the tracking schema; returns the versions applied now.
    async fn schema_install(&self) -> Result<Vec<i64>>;
    /// The installed schema version (`None` when not installed).
    async fn schema_version(&self) -> Result<Option<i64>>;

    /// Inserts a migration and its `queue` log row.
    async fn migration_insert(&self, new: &NewMigration) -> Result<Migration>;
    /// A migration by id.
    async fn migration_get(&self, id: i64) -> Result<Option<Migration>>;
    /// A migration by name.
    async fn migration_get_by_name(&self, name: &str) -> Result<Option<Migration>>;
    /// Every migration, oldest first.
    async fn migration_list(&self) -> Result<Vec<Migration>>;
    /// Changes a migration's status (or holds it) with its log row.
    async fn migration_transition(&self, params: &MigrationTransitionParams) -> Result<Migration>;
    /// Operator retry: `failed -> active` and every failed job `-> pending` (attempts reset),
    /// each with its log row, in one transaction.
    async fn migration_retry(&self, params: &MigrationTransitionParams) -> Result<Migration>;
    /// Claims a due migration for `worker`: active (or `only`, in any runnable status), not on
    /// hold, its interval elapsed, and its table leased to it and to no other migration.
    async fn migration_claim(
        &self,
        worker: &str,
        lease: Duration,
        only: Option<i64>,
    ) -> Result<Option<Migration>>;
    /// Gives up the table lease of a migration.
    async fn table_lease_release(&self, migration_id: i64) -> Result<()>;
    /// Marks the migration's range as handed out (compare-and-set on `next_start`).
    async fn migration_range_exhaust(
        &self,
        migration_id: i64,
        expected_next: &Lower,
    ) -> Result<bool>;
    /// Changes the batch and sub-batch sizes (sub-batch clamped to the batch and to its
    /// ceiling) with a `resize` log row, in one transaction. `None` when the migration is final
    /// (nothing written).
    async fn migration_resize(&self, params: &MigrationResizeParams) -> Result<Option<Migration>>;
    /// An operator's change of settings with its `set` log row, in one transaction; `None`
    /// when the migration is neither active nor paused (nothing written).
    async fn migration_set(&self, params: &MigrationSetParams) -> Result<Option<Migration>>;

    /// Gives a migration whose target is unknown (queued before schema v5) the target
    /// `target`, with a `set` log row (`reason`), in one transaction. `None` when its target
    /// is already known or it is finished or cancelled (nothing written).
    async fn migration_adopt_target(
        &self,
        migration_id: i64,
        target: &TargetIdentity,
        reason: &str,
        actor: &str,
    ) -> Result<Option<Migration>>;

    /// A re-check that still says stop: moves the hold in progress on to `now + hold`, with
    /// no log row. `None` when no hold is in progress (released, paused, ended).
    async fn migration_hold_extend(
        &self,
        migration_id: i64,
        hold: Duration,
    ) -> Result<Option<Migration>>;
    /// Sets the worker's extra pause between jobs (and why) with a `throttle` log row, in one
    /// transaction. `None` when the migration is not active (nothing written).
    async fn migration_throttle(
        &self,
        params: &MigrationThrottleParams,
    ) -> Result<Option<Migration>>;

    /// Creates the migration's next job, running, in one statement (see [`JobCreateParams`]).
    async fn job_create(&self, params: &JobCreateParams) -> Result<JobCreated>;
    /// A job by id.
    async fn job_get(&self, id: i64) -> Result<Option<Job>>;
    /// Jobs of a migration, by id, optionally of one status.
    async fn job_list(&self, migration_id: i64, status: Option<JobStatus>) -> Result<Vec<Job>>;
    /// A job to (re)run: pending, failed with attempts left, or running with an expired lease.
    async fn job_find_retriable(&self, migration_id: i64, max_attempts: i32)
        -> Result<Option<Job>>;
    /// Changes a job's status with its log row.
    async fn job_transition(&self, params: &JobTransitionParams) -> Result<Job>;
    /// Splits a failed job: it returns to `pending` as the first half and a new pending job
    /// takes the second half, in one transaction.
    async fn job_split(&self, params: &JobSplitParams) -> Result<(Job, Job)>;
    /// Records a committed sub-batch (cursor, rows) and renews the lease, fenced by attempt;
    /// used when the target is another database. `false` when the job is no longer ours.
    async fn job_checkpoint(
        &self,
        job_id: i64,
        attempts: i32,
        cursor: &Key,
        rows: i64,
        lease: Duration,
    ) -> Result<bool>;
    /// Renews a running job's lease and its table lease. `false` when the job is no longer ours.
    async fn job_heartbeat(&self, job_id: i64, attempts: i32, lease: Duration) -> Result<bool>;
    /// Counts of a migration's jobs by status, and rows done.
    async fn job_counts(&self, migration_id: i64, max_attempts: i32) -> Result<JobCounts>;
    /// The migration's last `limit` succeeded jobs, newest first.
    async fn job_recent_succeeded(&self, migration_id: i64, limit: i64) -> Result<Vec<Job>>;

    /// One job's transition log, oldest first.
    async fn job_transition_list(&self, job_id: i64) -> Result<Vec<JobTransition>>;
    /// Every job transition of a migration, oldest first.
    async fn job_transition_list_by_migration(
        &self,
        migration_id: i64,
    ) -> Result<Vec<JobTransition>>;
    /// A migration's own transition log, oldest first.
    async fn migration_transition_list(
        &self,
        migration_id: i64,
    ) -> Result<Vec<MigrationTransition>>;

    /// Creates the job log's partitions for the month of `now` and the next one, and drops
    /// (PostgreSQL) or empties (SQLite) what is older than `retention_months`.
    async fn log_partitions_maintain(
        &self,
        now: DateTime<Utc>,
        retention_months: u32,
    ) -> Result<PartitionReport>;
    /// Names of the job log's partitions, oldest first (empty on SQLite).
    async fn log_partitions_list(&self) -> Result<Vec<String>>;
}

/// How long each sub-batch statement and lock wait may take (PostgreSQL).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `statement_timeout`, set locally in each sub-batch transaction.
    pub statement_ms: i64,
    /// `lock_timeout`, set locally in each sub-batch transaction.
    pub lock_ms: i64,
}

/// One sub-batch to run: the next `size` existing keys from `lower`, at most `max`.
#[derive(Clone, Copy)]
pub struct SubBatchSpec<'a> {
    /// The job kind.
    pub kind: &'a dyn JobKind,
    /// Target table.
    pub table: &'a TableName,
    /// The key walked.
    pub key: &'a KeySpec,
    /// Only rows matching this condition are walked and handed to the kind.
    pub scope: Option<&'a str>,
    /// The kind's arguments.
    pub arguments: &'a serde_json::Value,
    /// Where the walk starts.
    pub lower: &'a Lower,
    /// Largest key to consider.
    pub max: &'a Key,
    /// How many existing keys.
    pub size: i64,
    /// Take the rest of the range as it is, with no keyset walk, when its first key can be
    /// named without reading ([`Lower::inclusive_start`]): the rest of the job fits in one
    /// sub-batch (saves a query per job when sub-batch and batch sizes are equal).
    pub whole_rest: bool,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Whether the key is unique: a sub-batch of a kind whose rows are its keys
    /// ([`JobKind::rows_are_keys`]) is then refused when it reports more rows than `size`.
    pub key_unique: bool,
}

impl SubBatchSpec<'_> {
    /// The whole rest of the range, when [`Self::whole_rest`] asks for it and its first key
    /// can be named without reading the table.
    pub(crate) fn whole_range(&self) -> Option<(Key, Key)> {
        let start = self
            .whole_rest
            .then(|| self.lower.inclusive_start(self.key))??;
        Some((start, self.max.clone()))
    }
}

/// The job a sub-batch belongs to, for committing its cursor or its end with the sub-batch
/// when tracking and target are one database.
#[derive(Debug, Clone, Copy)]
pub struct JobCursor {
    /// The job.
    pub job_id: i64,
    /// Fencing token: the attempt the worker runs.
    pub attempts: i32,
    /// Lease renewal.
    pub lease: Duration,
}

/// A job's `running -> succeeded`, written with its last sub-batch.
#[derive(Debug, Clone)]
pub struct JobFinish {
    /// The job's metrics.
    pub metrics: serde_json::Value,
    /// Its sub-batch size at the end, when the tuner or a timeout changed it.
    pub sub_batch_size: Option<i64>,
    /// Who (the log row's worker).
    pub worker: String,
    /// The migration's next job, to create (running) in the same statement when the job
    /// succeeds: its range must be [`JobRange::Given`]. Only where
    /// [`Capabilities::start_next_job_with_finish`]: elsewhere it is refused.
    pub then_create: Option<JobCreateParams>,
}

/// How a performed sub-batch commits.
#[derive(Debug, Clone, Copy)]
pub enum SubBatchCommit<'a> {
    /// Alone: the target is another database, and the worker records the cursor on the
    /// tracking store afterwards (at-least-once).
    Alone,
    /// With the job's cursor and a lease renewal, fenced by attempt (exactly-once).
    Cursor(JobCursor),
    /// With the job's end, and the next job's start when [`JobFinish::then_create`] is given:
    /// the job's last sub-batch.
    Finish(JobCursor, &'a JobFinish),
}

/// What committing a sub-batch did.
#[derive(Debug, Clone, PartialEq)]
pub enum SubBatchCommitted {
    /// Committed (with the cursor, when asked).
    Committed,
    /// The job is no longer this worker's (its lease was taken over): rolled back.
    Fenced,
    /// Committed with the job's end.
    Finished {
        /// The job, `succeeded`.
        job: Box<Job>,
        /// The next job created with it, running, and the migration's `next_start` after
        /// it; `None` when none was asked for or the migration had moved on.
        next: Option<(Box<Job>, Option<Lower>)>,
    },
}

/// A sub-batch performed inside its still open transaction: the engine decides how it
/// commits (alone, with the job's cursor, or with the job's end). Dropped, it rolls back.
///
/// # Transactions and locks
/// It holds the sub-batch's transaction, and with it the row locks of what the kind wrote
/// (and on SQLite the database's write lock), until [`commit`](Self::commit): commit it at
/// once, waiting on nothing else.
#[async_trait]
pub trait PerformedSubBatch: Send {
    /// The first and last key it covered.
    fn keys(&self) -> &(Key, Key);
    /// Rows the kind affected.
    fn rows(&self) -> u64;
    /// Commits, with what `how` says, in the same transaction.
    async fn commit(
        self: Box<Self>,
        how: SubBatchCommit<'_>,
    ) -> std::result::Result<SubBatchCommitted, Failure>;
}

/// Operations on the database holding the table being migrated.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// The engine behind this target: the SQL dialect it speaks.
    fn backend(&self) -> Backend;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// Checks that the table exists and resolves the key to walk: `columns` in that order, or
    /// by default the table's primary key. The key must be of supported types, NOT NULL, and
    /// unique (a primary key, or a unique non-partial index on exactly those columns) unless
    /// `non_unique` asks otherwise. Returns the table's canonical name (schema resolved on
    /// PostgreSQL, stored spelling on SQLite) and the key.
    async fn key_resolve(
        &self,
        table: &TableName,
        columns: Option<&[String]>,
        non_unique: bool,
    ) -> Result<(TableName, KeySpec)>;
    /// The identity of this database, stable across connections and URLs (see
    /// [`TargetIdentity::id`]): PostgreSQL's system identifier and database name, SQLite's
    /// canonical file path.
    async fn identity(&self) -> Result<String>;
    /// A key value given by a person (`--min-value`, [`QueueRequest`]'s bounds) as the database
    /// reads it: each non-integer value parsed by the database under its own settings
    /// (PostgreSQL: the `DateStyle` and `TimeZone` a new session of this role on this database
    /// starts with, as psql would read it, not the fixed ones of our sessions) and returned in
    /// canonical form: the text our sessions (`DateStyle` ISO, `TimeZone` UTC) print for it, as
    /// the walk's cursors are. A value the database refuses is an
    /// [`Error::InvalidSettings`](crate::Error::InvalidSettings) naming `flag`.
    ///
    /// [`QueueRequest`]: crate::QueueRequest
    async fn key_canonical(&self, key: &KeySpec, value: &Key, flag: &str) -> Result<Key>;
    /// Smallest and largest key (of the rows matching `scope`), `None` when there is none.
    async fn key_bounds(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
    ) -> Result<Option<(Key, Key)>>;
    /// How many rows match `scope` (the planner's estimate on PostgreSQL, a count on SQLite).
    async fn scope_estimate(&self, table: &TableName, scope: &str) -> Result<Option<i64>>;
    /// Estimated rows in the table.
    async fn row_estimate(&self, table: &TableName) -> Result<Option<i64>>;
    /// The first existing key from `lower` and the `size`-th one (or the last `<= max`):
    /// a keyset walk over existing keys, so gaps cost nothing. It runs under the migration's
    /// statement timeout `statement_ms` (PostgreSQL; SQLite has none).
    #[allow(clippy::too_many_arguments)]
    async fn range_next(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
        lower: &Lower,
        max: &Key,
        size: i64,
        statement_ms: i64,
    ) -> Result<Option<(Key, Key)>>;
    /// Opens a sub-batch's transaction (with its timeouts), finds its keys and performs the
    /// kind on them; `None` (rolled back) when no key is left in range. A panic in the kind
    /// becomes a `Panic` failure.
    async fn sub_batch_perform(
        &self,
        spec: SubBatchSpec<'_>,
    ) -> std::result::Result<Option<Box<dyn PerformedSubBatch>>, Failure>;
    /// Runs one sub-batch and rolls it back: the queue-time check of a migration.
    async fn sub_batch_try(&self, spec: SubBatchSpec<'_>) -> std::result::Result<u64, Failure>;
    /// What the database says about its health as it concerns `table` (one query on
    /// PostgreSQL), and the answer of `probe`, run read-only and rolled back.
    async fn health_sample(&self, table: &TableName, probe: Option<&str>) -> Result<HealthSample>;
}

/// How long a health probe may run.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A batch-size change and why.
#[derive(Debug, Clone)]
pub struct MigrationResizeParams {
    /// The migration.
    pub migration_id: i64,
    /// New batch size.
    pub batch_size: i64,
    /// New sub-batch size (clamped to the batch size).
    pub sub_batch_size: i64,
    /// Why, for the log (`"optimizer: efficiency 0.50 over 20 jobs"`).
    pub reason: String,
    /// Who.
    pub actor: String,
}

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

/// Refuses a hold longer than any that may be queued: a stored value past it is out of range
/// (written, its timestamp would not read back).
pub(crate) fn check_hold(hold: Duration) -> Result<()> {
    if hold > crate::model::MAX_PACING {
        return Err(crate::Error::OutOfRange(format!(
            "a hold of {} (at most 365 days)",
            humantime::format_duration(hold)
        )));
    }
    Ok(())
}

/// An operator's change of a migration's settings (`sluicegate set`); `None` keeps a value.
#[derive(Debug, Clone, Default)]
pub struct MigrationSetParams {
    /// The migration.
    pub migration_id: i64,
    /// Keys per job.
    pub batch_size: Option<i64>,
    /// Keys per sub-batch, which also becomes the tuner's ceiling.
    pub sub_batch_size: Option<i64>,
    /// The optimizer's ceiling.
    pub max_batch_size: Option<i64>,
    /// Pause between sub-batches.
    pub pause_ms: Option<i64>,
    /// Minimum time between job starts, in milliseconds.
    pub interval_ms: Option<i64>,
    /// Health thresholds and hold duration (all of them).
    pub health: Option<crate::health::HealthSettings>,
    /// The log row's reason: what changed, old -> new, and the operator's why.
    pub reason: String,
    /// Who.
    pub actor: String,
}

/// A change of the worker's pause as a limit nears, and why.
#[derive(Debug, Clone)]
pub struct MigrationThrottleParams {
    /// The migration.
    pub migration_id: i64,
    /// Extra pause between jobs (0: none).
    pub pause_ms: i64,
    /// Why, while it slows down (shown in `status`).
    pub reason: Option<String>,
    /// The log row's reason (what changed).
    pub log: String,
    /// Who.
    pub actor: String,
}

/// The engine's own check of a sub-batch's reach: on a unique key, a kind whose rows are its
/// keys cannot report more rows than the sub-batch has keys (at most `spec.size`: the walk
/// counted them, and a whole rest of a job is no longer than one sub-batch). More means its
/// statement reached rows outside the range: a `RangeEscaped` failure, and the caller rolls
/// the sub-batch back.
pub(crate) fn check_reach(
    spec: &SubBatchSpec<'_>,
    backend: Backend,
    (start, end): (&Key, &Key),
    rows: u64,
) -> std::result::Result<(), Failure> {
    let most = spec.size.max(1) as u64;
    if spec.key_unique
        && rows > most
        && spec.kind.rows_are_keys(spec.arguments, backend, spec.table)
    {
        return Err(Failure::new(
            crate::failure::FailureClass::RangeEscaped,
            format!(
                "the sub-batch of keys {start} ..= {end} (at most {most} keys of a unique key) reported {rows} rows changed by kind {}: its statement reached rows outside the sub-batch; rolled back",
                spec.kind.name()
            ),
        ));
    }
    Ok(())
}

/// Whether a failure is the engine's refusal of a sub-batch that escaped its range.
pub(crate) fn escaped(failure: &Failure) -> bool {
    failure.is(crate::failure::FailureClass::RangeEscaped)
}

/// Runs `perform` on a sub-batch, turning a panic into a `Panic` failure.
pub(crate) async fn perform_catching_panics(
    kind: &dyn JobKind,
    batch: &mut crate::kind::SubBatch<'_>,
) -> std::result::Result<u64, Failure> {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(kind.perform(batch))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "job kind panicked".to_owned());
            Err(Failure::new(crate::failure::FailureClass::Panic, message))
        }
    }
}

/// A duration as whole milliseconds, saturating.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The first day of a month.
pub(crate) fn month_start(year: i32, month: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, 1).expect("valid month")
}

/// First day of the month `delta` months after `date`'s month.
pub(crate) fn add_months(date: NaiveDate, delta: i32) -> NaiveDate {
    let index = date.year() * 12 + date.month0() as i32 + delta;
    month_start(index.div_euclid(12), index.rem_euclid(12) as u32 + 1)
}

/// Midnight UTC of `date` (a month start, for partition bounds and retention cutoffs).
pub fn month_start_utc(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight"))
}
