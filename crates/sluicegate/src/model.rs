//! The rows Sluicegate tracks: migrations, jobs and their transition logs, as Rust values.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job_metrics::JobMetrics;
use crate::key::{Key, KeySpec, Lower};
use crate::status::{JobStatus, MigrationEvent, MigrationStatus};

mod health_settings;
mod lanes;

pub use health_settings::{AutovacuumPolicy, HealthSettings, Indicator, MAX_PROBE_LEN};
pub use lanes::{CitusTable, Lane, NewLane};

/// One queued data migration over one table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    /// Primary key.
    pub id: i64,
    /// Unique name given at queue time.
    pub name: String,
    /// Registered job kind (`update`, `delete`, `copy-column`, `sql`, or a custom one).
    pub job_kind: String,
    /// Target table, as given (`table` or `schema.table`).
    pub table_name: String,
    /// The database the table lives in (`None`: queued before schema v5, target unknown;
    /// no worker runs it until it is adopted, see
    /// [`Sluicegate::adopt_target`](crate::Sluicegate::adopt_target)).
    pub target: Option<TargetIdentity>,
    /// The key the batches walk over (the primary key by default).
    pub key: KeySpec,
    /// Whether the key was proven unique at queue: a built-in kind's sub-batch then touches at
    /// most as many rows as it has keys, which the engine checks.
    #[serde(default)]
    pub key_unique: bool,
    /// Only rows matching this condition are walked (and touched): jobs span `batch_size`
    /// keys that match.
    pub scope: Option<String>,
    /// The job kind's arguments.
    pub job_arguments: Value,
    /// First key of the range (inclusive).
    pub min_value: Key,
    /// Last key of the range (inclusive).
    pub max_value: Key,
    /// Where the next new job's walk starts; `None` once the range has been handed out.
    pub next_start: Option<Lower>,
    /// Keys per job.
    pub batch_size: i64,
    /// Keys per sub-batch (one transaction).
    pub sub_batch_size: i64,
    /// Ceiling for the optimizer.
    pub max_batch_size: Option<i64>,
    /// An explicit sub-batch size: the tuner never goes above it.
    pub sub_batch_ceiling: Option<i64>,
    /// Pause between sub-batches, in milliseconds.
    pub pause_ms: i64,
    /// Minimum time between the starts of two jobs.
    #[serde(with = "duration_ms", rename = "interval_ms")]
    pub interval: Duration,
    /// Statement timeout of each sub-batch, in milliseconds (PostgreSQL).
    pub statement_timeout_ms: i64,
    /// Lock timeout of each sub-batch, in milliseconds (PostgreSQL).
    pub lock_timeout_ms: i64,
    /// Health thresholds and hold duration.
    pub health: HealthSettings,
    /// The sub-batch tuner aims each sub-batch transaction at this many milliseconds; 0 keeps
    /// the sub-batch size fixed.
    pub target_sub_batch_ms: i64,
    /// Current status.
    pub status: MigrationStatus,
    /// Estimated rows in the table at queue time (for progress).
    pub total_tuple_count: Option<i64>,
    /// Health holds it until then (the next re-check).
    pub on_hold_until: Option<DateTime<Utc>>,
    /// When the hold in progress began (`None`: not held).
    pub held_since: Option<DateTime<Utc>>,
    /// Extra pause between jobs while a limit nears (0: none).
    pub throttle_pause_ms: i64,
    /// Why the worker slows down, while it does.
    pub throttle_reason: Option<String>,
    /// When its most recent job was created.
    pub last_job_started_at: Option<DateTime<Utc>>,
    /// When it first became active.
    pub started_at: Option<DateTime<Utc>>,
    /// Set exactly when the status is `finished`, `failed` or `cancelled`.
    pub finished_at: Option<DateTime<Utc>>,
    /// Row creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Set when its stored row could not be read back (a value edited by hand, written by a
    /// version that stored what it could not read): why. Only its id, name, kind, table,
    /// status and times are then real; every other field is a placeholder that must not be
    /// acted on. It is listed as unreadable, a worker fails it (class
    /// `UnreadableMigration`) instead of running it, and `set` refuses it; it can be
    /// cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// The kind of Citus table it runs on (`None`: not a Citus table). A distributed one runs
    /// in lanes, one per shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub citus: Option<CitusTable>,
    /// The definition it was queued from, in canonical form (schema v8: every setting spelled
    /// out, as JSON text with a fixed order of fields; see
    /// [`QueueRequest::canonical_definition`](crate::QueueRequest::canonical_definition)):
    /// what `apply` compares a definition file with. `None` for migrations queued before v8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    /// The migrations it runs after (`--after`, schema v8), by id: no worker claims it until
    /// each of them has finished.
    #[serde(default)]
    pub after: Vec<i64>,
    /// `--verify`: the condition every row of its range (and scope) must meet after its last
    /// job; it ends `finished` only when none violates it (schema v8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
}

/// The settings of a migration an operator chooses, wherever they come from: `queue`, `set`,
/// the HTTP API, the library's [`QueueRequest`](crate::QueueRequest) and
/// [`Sluicegate::set`](crate::Sluicegate::set). [`Settings::validate`] is the one check they
/// all go through, and the only way to a [`ValidSettings`].
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Keys per job.
    pub batch_size: i64,
    /// Keys per sub-batch.
    pub sub_batch_size: i64,
    /// The tuner's ceiling (an explicit sub-batch size).
    pub sub_batch_ceiling: Option<i64>,
    /// The optimizer's ceiling.
    pub max_batch_size: Option<i64>,
    /// Pause between sub-batches, in milliseconds.
    pub pause_ms: i64,
    /// Minimum time between job starts.
    pub interval: Duration,
    /// Sub-batch statement timeout.
    pub statement_timeout: Duration,
    /// Sub-batch lock timeout.
    pub lock_timeout: Duration,
    /// The tuner's target time per sub-batch (zero: fixed sizes).
    pub target_sub_batch_time: Duration,
    /// Health thresholds, probe, hold, `--require-health`.
    pub health: HealthSettings,
}

/// [`Settings`] that passed [`Settings::validate`]: every number finite and in range, every
/// length bounded, and everything reads back as written once stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSettings(Settings);

impl std::ops::Deref for ValidSettings {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.0
    }
}

impl ValidSettings {
    /// The settings.
    pub fn into_inner(self) -> Settings {
        self.0
    }
}

/// The settings a migration gets when nothing is said: the fast path. Jobs start at
/// GitLab's 1,000 keys and, at full speed, grow toward a second each (the optimizer, logged as
/// `resize` rows); sub-batches start at 100 keys and are tuned toward
/// [`DEFAULT_TARGET_SUB_BATCH_TIME`]; no pause between them (the health indicators slow a
/// migration down or hold it when the database needs it).
pub mod defaults {
    use std::time::Duration;

    /// Keys per job to start from.
    pub const BATCH_SIZE: i64 = 1_000;
    /// Keys per sub-batch to start from.
    pub const SUB_BATCH_SIZE: i64 = 100;
    /// Pause between sub-batches, in milliseconds.
    pub const PAUSE_MS: i64 = 0;
    /// Minimum time between job starts (zero: full speed).
    pub const INTERVAL: Duration = Duration::ZERO;
    /// The tuner's target time per sub-batch transaction: a foreground write to a row the
    /// sub-batch has changed waits at most this long. 100 ms was as fast but left the
    /// benchmark's foreground p99 up to 1.5x the client loop's, in row lock waits; 50 ms and
    /// 30 ms kept it within 1.2x at 0.97x and 0.96x the loop's speed (`scripts/bench`).
    pub const TARGET_SUB_BATCH_TIME: Duration = Duration::from_millis(50);
    /// Each sub-batch's statement timeout.
    pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
    /// Each sub-batch's lock timeout.
    pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
}

/// The longest statement or lock timeout, pause between sub-batches, or target sub-batch time.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The longest interval or hold (wait between health re-checks).
pub const MAX_PACING: Duration = Duration::from_secs(365 * 24 * 3600);

impl Settings {
    /// Checks every setting, naming the flag of the first that is wrong
    /// ([`Error::InvalidSettings`](crate::Error::InvalidSettings)).
    pub fn validate(self) -> crate::Result<ValidSettings> {
        match self.invalid() {
            Some(reason) => Err(crate::Error::InvalidSettings(reason)),
            None => Ok(ValidSettings(self)),
        }
    }

    fn invalid(&self) -> Option<String> {
        if self.batch_size <= 0 {
            return Some(format!(
                "batch size must be at least 1 (got {})",
                self.batch_size
            ));
        }
        if self.sub_batch_size <= 0 {
            return Some(format!(
                "sub-batch size must be at least 1 (got {})",
                self.sub_batch_size
            ));
        }
        if let Some(ceiling) = self.sub_batch_ceiling.filter(|c| *c <= 0) {
            return Some(format!(
                "the sub-batch ceiling must be at least 1 (got {ceiling})"
            ));
        }
        if self.sub_batch_size > self.batch_size {
            return Some(format!(
                "sub-batch size {} is larger than batch size {}",
                self.sub_batch_size, self.batch_size
            ));
        }
        if let Some(max) = self.max_batch_size {
            if max < self.batch_size {
                return Some(format!(
                    "max batch size {max} is smaller than batch size {}",
                    self.batch_size
                ));
            }
        }
        if self.pause_ms < 0 {
            return Some(format!(
                "pause must not be negative (got {} ms)",
                self.pause_ms
            ));
        }
        if self.statement_timeout.is_zero() || self.lock_timeout.is_zero() {
            return Some("statement and lock timeouts must be positive".into());
        }
        // Stored durations feed timestamp arithmetic on every claim and hold: an absurd one
        // (`--interval 100000000y`) would overflow there, so it is refused here, by name.
        let hold = Duration::from_millis(self.health.hold_ms.max(0) as u64);
        let bounded = [
            ("--interval", self.interval, MAX_PACING, "365 days"),
            ("--hold", hold, MAX_PACING, "365 days"),
            (
                "--statement-timeout",
                self.statement_timeout,
                MAX_TIMEOUT,
                "24 hours",
            ),
            ("--lock-timeout", self.lock_timeout, MAX_TIMEOUT, "24 hours"),
            (
                "--pause-ms",
                Duration::from_millis(self.pause_ms.max(0) as u64),
                MAX_TIMEOUT,
                "24 hours",
            ),
            (
                "--target-sub-batch-time",
                self.target_sub_batch_time,
                MAX_TIMEOUT,
                "24 hours",
            ),
        ];
        if let Some((flag, value, _, max)) = bounded.iter().find(|(_, value, max, _)| value > max) {
            return Some(format!(
                "{flag} must be at most {max} (got {})",
                humantime::format_duration(*value)
            ));
        }
        self.health.invalid()
    }
}

/// Which database a migration's table lives in: a stable identity, compared by workers and
/// duplicate checks, and how to show it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TargetIdentity {
    /// Stable and compared: `postgres:<system identifier>/<database>` (the cluster's
    /// `pg_control_system()` identifier and `current_database()`), or `sqlite:<canonical path
    /// of the file>`.
    pub id: String,
    /// For people: the URL it was reached by, without password or parameters.
    pub display: String,
}

impl std::fmt::Display for TargetIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// One key range of a migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Primary key.
    pub id: i64,
    /// The migration it belongs to.
    pub migration_id: i64,
    /// First key (inclusive).
    pub min_value: Key,
    /// Last key (inclusive).
    pub max_value: Key,
    /// Batch size when it was created.
    pub batch_size: i64,
    /// Sub-batch size (shrunk ×0.75 after a sub-batch timeout).
    pub sub_batch_size: i64,
    /// Pause between sub-batches, in milliseconds.
    pub pause_ms: i64,
    /// Current status.
    pub status: JobStatus,
    /// How many times it was started; also the fencing token of its current run.
    pub attempts: i32,
    /// Start of its latest attempt.
    pub started_at: Option<DateTime<Utc>>,
    /// Set exactly when `succeeded` or `failed`.
    pub finished_at: Option<DateTime<Utc>>,
    /// Rows written by its committed sub-batches.
    pub rows_affected: i64,
    /// Last key whose sub-batch committed: a retaken job resumes after it.
    pub cursor: Option<Key>,
    /// Per-sub-batch timings of its latest attempt.
    pub metrics: JobMetrics,
    /// Worker of its latest attempt.
    pub worker: Option<String>,
    /// While running: when its lease runs out unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Its lane (a shard of a distributed table), if its migration runs in lanes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<i32>,
    /// Row creation.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// One row of a job's transition log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTransition {
    /// Primary key (with `created_at` on PostgreSQL, where the table is partitioned).
    pub id: i64,
    /// The job.
    pub job_id: i64,
    /// Its migration.
    pub migration_id: i64,
    /// Status before.
    pub previous_status: JobStatus,
    /// Status after.
    pub next_status: JobStatus,
    /// Exception class, when the change records a failure.
    pub exception_class: Option<String>,
    /// Exception message, when the change records a failure.
    pub exception_message: Option<String>,
    /// Who made the change (worker name, `cli`, ...).
    pub worker: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// One row of a migration's transition log. A hold has equal previous and next status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationTransition {
    /// Primary key.
    pub id: i64,
    /// The migration.
    pub migration_id: i64,
    /// Status before (`None` for the `queue` row).
    pub previous_status: Option<MigrationStatus>,
    /// Status after.
    pub next_status: MigrationStatus,
    /// What moved it.
    pub event: MigrationEvent,
    /// Free text: the operator's reason, or the health indicator and its reading.
    pub reason: Option<String>,
    /// For a hold: the indicator that stopped the migration (a hold row written before
    /// schema v6 whose reason names none reads `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indicator: Option<Indicator>,
    /// Who: a worker name, `cli` or `http`.
    pub actor: Option<String>,
    /// Exception class, when a failure moved it.
    pub exception_class: Option<String>,
    /// Exception message, when a failure moved it.
    pub exception_message: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// A migration as it is about to be inserted, after validation.
#[derive(Debug, Clone)]
pub struct NewMigration {
    /// Unique name.
    pub name: String,
    /// Job kind.
    pub job_kind: String,
    /// Target table as given.
    pub table_name: String,
    /// The database the table lives in.
    pub target: TargetIdentity,
    /// The key walked.
    pub key: KeySpec,
    /// Whether the key was proven unique (a primary key or a unique index on its columns).
    pub key_unique: bool,
    /// The rows walked (a condition), all when `None`.
    pub scope: Option<String>,
    /// Kind arguments.
    pub job_arguments: Value,
    /// Range start.
    pub min_value: Key,
    /// Range end.
    pub max_value: Key,
    /// Where the first job starts (`None`: nothing to do).
    pub next_start: Option<Lower>,
    /// Keys per job.
    pub batch_size: i64,
    /// Keys per sub-batch.
    pub sub_batch_size: i64,
    /// Optimizer ceiling.
    pub max_batch_size: Option<i64>,
    /// Tuner ceiling (an explicit sub-batch size).
    pub sub_batch_ceiling: Option<i64>,
    /// Pause between sub-batches.
    pub pause_ms: i64,
    /// Minimum time between job starts.
    pub interval: Duration,
    /// Sub-batch statement timeout.
    pub statement_timeout_ms: i64,
    /// Sub-batch lock timeout.
    pub lock_timeout_ms: i64,
    /// Health thresholds and hold duration.
    pub health: HealthSettings,
    /// Target sub-batch transaction time for the tuner.
    pub target_sub_batch_ms: i64,
    /// `active` or `paused`.
    pub status: MigrationStatus,
    /// Row estimate.
    pub total_tuple_count: Option<i64>,
    /// Who queued it.
    pub actor: String,
    /// The kind of Citus table it runs on.
    pub citus: Option<CitusTable>,
    /// Its lanes (a distributed table's shards), inserted with it.
    pub lanes: Vec<NewLane>,
    /// The definition it is queued from, in canonical form (stored from schema v8 on).
    pub definition: Option<String>,
    /// The ids of the migrations it runs after (`--after`), each queued before it.
    pub after: Vec<i64>,
    /// The condition checked after its last job (`--verify`).
    pub verify: Option<String>,
}

/// Counts of a migration's jobs by status, and its progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobCounts {
    /// Jobs waiting.
    pub pending: i64,
    /// Jobs running.
    pub running: i64,
    /// Jobs failed (retriable or not).
    pub failed: i64,
    /// Jobs done.
    pub succeeded: i64,
    /// Failed jobs whose attempts are exhausted.
    pub exhausted: i64,
    /// Rows written by all committed sub-batches.
    pub rows_affected: i64,
    /// Keys walked by succeeded jobs (the sum of their batch sizes: exact but for each
    /// migration's last, shorter job).
    pub keys_done: i64,
    /// Start of the first job.
    pub first_started_at: Option<DateTime<Utc>>,
    /// End of the last finished job.
    pub last_finished_at: Option<DateTime<Utc>>,
}

impl JobCounts {
    /// All jobs.
    pub fn total(&self) -> i64 {
        self.pending + self.running + self.failed + self.succeeded
    }
}

/// Serde helper: a [`Duration`] as whole milliseconds.
pub(crate) mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
