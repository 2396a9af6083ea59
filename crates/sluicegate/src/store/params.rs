//! The parameters and answers of the store's primitives: what the engine asks a [`Store`] or
//! [`Target`] to do, and what it did. The status changes are built only through constructors
//! that ask the state machine, and checked again by the stores before writing.

use std::time::Duration;

use crate::error::Result;
use crate::failure::Failure;
use crate::ident::TableName;
use crate::key::{Key, KeySpec, Lower};
use crate::kind::JobKind;
use crate::model::{Indicator, Job, Migration};
use crate::status::{JobStatus, MigrationEvent, MigrationStatus};

#[allow(unused_imports)]
use super::{Store, Target};

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
        Ok(self.from.check(self.to, self.job_id)?)
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
    /// For a hold: the indicator that stopped it (its log row's `indicator`).
    pub(crate) indicator: Option<Indicator>,
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
            indicator: None,
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
            indicator: None,
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

    /// For a hold: the indicator that stopped the migration, and how long until the next
    /// re-check.
    pub fn holding_for(mut self, indicator: Indicator, hold: Duration) -> Self {
        self.indicator = Some(indicator);
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
    /// The lane it is created in (its range then [`JobRange::Given`], found on the lane's
    /// node): the compare-and-set is on the lane's next key, and the lane must have no
    /// running job and not be held.
    pub lane: Option<i32>,
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

/// What checking a `--verify` condition over one key range found
/// ([`Target::verify_range`](crate::store::Target::verify_range)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyCount {
    /// Rows of the range (and scope) checked.
    pub checked: i64,
    /// Those for which the condition is not true.
    pub violations: i64,
    /// The first of their keys, in key order.
    pub samples: Vec<Key>,
}

/// A sub-batch tried and rolled back ([`Target::sub_batch_try`](super::Target::sub_batch_try)).
#[derive(Debug, Clone, PartialEq)]
pub struct TriedSubBatch {
    /// Its first and last key (`None`: no key was left in range).
    pub keys: Option<(Key, Key)>,
    /// The rows it touched before it was rolled back.
    pub rows: u64,
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
    /// Name the sub-batch's range by arithmetic, with no keyset walk: the next `size` integers
    /// from its first key, at most `max`. Only for a unique one-column integer key, where such
    /// a range can never hold more than `size` keys whatever the table holds; the engine asks
    /// for it where the job's keys were dense when it was walked (its span no wider than its
    /// batch), so the range holds `size` rows but for rows deleted since.
    pub dense: bool,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Whether the key is unique: a sub-batch of a kind whose rows are its keys
    /// ([`JobKind::rows_are_keys`]) is then refused when it reports more rows than `size`.
    pub key_unique: bool,
    /// The Citus shard whose own table `table` is, written directly on the node holding its
    /// placement: the sub-batch's transaction first takes the shard's metadata lock (shared,
    /// as Citus's own writes do; a shard move takes it exclusively) and checks that the
    /// placement is still on this node, else fails with class `ShardMoved`.
    pub shard: Option<i64>,
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

    /// The range [`Self::dense`] asks for, when its first key can be named without reading
    /// the table; `None` otherwise (then the sub-batch walks).
    pub(crate) fn dense_range(&self) -> Option<DenseRange> {
        if !self.dense || !self.key_unique || !self.key.is_single_integer() {
            return None;
        }
        let start = self.lower.inclusive_start(self.key)?;
        let (first, max) = (start.as_i64()?, self.max.as_i64()?);
        if first > max {
            return Some(DenseRange::Past);
        }
        let last = first.saturating_add(self.size.max(1) - 1).min(max);
        Some(DenseRange::Keys(start, Key::int(last)))
    }
}

/// A range named by arithmetic ([`SubBatchSpec::dense_range`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DenseRange {
    /// Its first and last key.
    Keys(Key, Key),
    /// No key is left before the job's last one.
    Past,
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

/// A lane job's cursor, kept on the node that holds the lane's shard and written in each
/// sub-batch's transaction there: the exactly-once record of a job whose rows are in
/// another database than its tracking row. Fenced by the run's start.
#[derive(Debug, Clone)]
pub struct LedgerCursor {
    /// The schema the ledger lives in on the node (the tracking schema's name).
    pub schema: String,
    /// The tracking database's identity: several may work one cluster.
    pub tracking: String,
    /// The job.
    pub job_id: i64,
    /// Fencing token: when this run of the job started, in microseconds. It only grows from
    /// one run to the next, where a job's attempts do not (a job handed back starts over at
    /// attempt 1).
    pub token: i64,
}

/// Holding (`until` set) or releasing (`until` `None`) some lanes of a migration.
#[derive(Debug, Clone)]
pub struct LaneHoldParams {
    /// The migration.
    pub migration_id: i64,
    /// The lanes.
    pub lanes: Vec<i32>,
    /// Held until then (the next re-check); `None` releases.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    /// Why, naming the node: the log row's and the lanes' reason.
    pub reason: String,
    /// Who.
    pub actor: String,
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
    /// With the lane job's cursor in the ledger on the shard's node (exactly-once where the
    /// rows are not in the tracking database); `Fenced` when another attempt owns the job.
    Ledger(&'a LedgerCursor),
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
    /// Only if the batch size is still this (the loops that saw the same jobs resize once).
    pub expected_batch_size: Option<i64>,
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
    /// Each sub-batch's statement timeout, in milliseconds.
    pub statement_timeout_ms: Option<i64>,
    /// Each sub-batch's lock timeout, in milliseconds.
    pub lock_timeout_ms: Option<i64>,
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
