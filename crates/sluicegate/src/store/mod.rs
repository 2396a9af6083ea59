//! The storage layer: one trait of primitive operations on the tracking tables ([`Store`]),
//! one for the table being migrated ([`Target`]), and one implementation of each per backend
//! ([`postgres`], [`sqlite`]), each split by concern with its SQL beside the code that runs
//! it. What is the same on both is written once here, over small backend primitives: the
//! schema install ([`schema`]), the thin reads ([`reads`]), running a sub-batch
//! ([`sub_batch`]), and the mapping of [`Store`]'s primitives to each backend's concerns
//! ([`store_by_concern!`]). A backend says what it can do with [`Capabilities`].
//!
//! Layers: `store` uses `dialect` (the SQL shapes), `kind` (a sub-batch's job), `model`,
//! `status`, `key`, `ident`, `health` (its sample), `failure` and `error`; none of those uses
//! `store`, and `store` uses neither `client` nor `engine`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

pub use crate::dialect::Backend;
use crate::error::Result;
use crate::failure::Failure;
use crate::health::HealthSample;
use crate::ident::TableName;
use crate::key::{Key, KeyOptions, KeySpec, Lower};
use crate::model::{
    CitusTable, Job, JobCounts, JobTransition, Lane, Migration, MigrationTransition, NewLane,
    NewMigration, TargetIdentity,
};
use crate::status::JobStatus;

#[macro_use]
mod by_concern;
mod params;
pub mod postgres;
pub(crate) mod reads;
mod rows;
pub(crate) mod schema;
pub mod sqlite;
pub(crate) mod sub_batch;

pub(crate) use params::check_hold;
pub use params::{
    JobCreateParams, JobCreated, JobCursor, JobFinish, JobRange, JobSplitParams,
    JobTransitionParams, LaneHoldParams, LedgerCursor, MigrationResizeParams, MigrationSetParams,
    MigrationThrottleParams, MigrationTransitionParams, PartitionReport, SubBatchCommit,
    SubBatchCommitted, SubBatchSpec, Timeouts, TriedSubBatch, VerifyCount,
};

/// Newest tracking-schema version this binary knows.
pub const SCHEMA_VERSION: i64 = 9;

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
    /// The claim of [`Self::migration_claim`] (without `only`), among the migrations `ids`
    /// alone (`run --only`): the others are left to other workers.
    async fn migration_claim_among(
        &self,
        worker: &str,
        lease: Duration,
        ids: &[i64],
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
    /// A migration's lanes, in order, each with its running job (lease not run out).
    async fn lane_list(&self, migration_id: i64) -> Result<Vec<Lane>>;
    /// Hands out the keys of `lane` if its next key is still the one given (a walk found none
    /// left), then the migration's range once no lane has keys left; with no lane, only the
    /// latter. One at a time per migration. Returns whether the migration's range is handed
    /// out.
    async fn lane_exhaust(&self, migration_id: i64, lane: Option<(i32, &Lower)>) -> Result<bool>;
    /// Holds or releases lanes, with a `lane_hold`/`lane_release` log row when one changed;
    /// returns how many changed. A hold of a lane already held (its re-check due or not)
    /// only moves its re-check on: one hold lasts from its `lane_hold` row to its
    /// `lane_release` row.
    async fn lane_hold(&self, params: &LaneHoldParams) -> Result<usize>;
    /// Records that a lane's shard is now on `node`, with a `lane_move` log row saying
    /// `reason`; `false` when it already was.
    async fn lane_move(
        &self,
        migration_id: i64,
        lane: i32,
        node: &str,
        reason: &str,
        actor: &str,
    ) -> Result<bool>;
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
    /// by default the table's primary key. The key must be of supported types, NOT NULL unless
    /// `options` skips NULL keys, and unique (a primary key, or a unique non-partial index on
    /// exactly those columns) unless `options` says non-unique; distinct values only of a
    /// non-unique key. Returns the table's canonical name (schema resolved on PostgreSQL,
    /// stored spelling on SQLite) and the key, walked as `options` says.
    async fn key_resolve(
        &self,
        table: &TableName,
        columns: Option<&[String]>,
        options: KeyOptions,
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
    /// How many distinct values of `key` a walk of it visits (NULL keys left out when it skips
    /// them, only rows matching `scope`), for a `--distinct` migration's job estimate: counted
    /// on a small table (and always on SQLite), the planner's statistics of a one-column key
    /// on a large PostgreSQL table, `None` when nothing says.
    async fn distinct_estimate(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
    ) -> Result<Option<i64>>;
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
    /// Checks `condition` over the rows of `first ..= last` (and `scope`), read only: how many
    /// rows, how many for which it is not true (NULL included), and up to `samples` of their
    /// keys in key order (`--verify`). It runs under the statement timeout `statement_ms`
    /// (PostgreSQL).
    #[allow(clippy::too_many_arguments)]
    async fn verify_range(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
        condition: &str,
        first: &Key,
        last: &Key,
        samples: i64,
        statement_ms: i64,
    ) -> Result<VerifyCount>;
    /// Runs one sub-batch and rolls it back: the queue-time check of a migration, and the
    /// trials of its estimate (each from where the previous one ended, on rows not tried yet).
    async fn sub_batch_try(
        &self,
        spec: SubBatchSpec<'_>,
    ) -> std::result::Result<TriedSubBatch, Failure>;
    /// What the database says about its health as it concerns `table` (one query on
    /// PostgreSQL), and the answer of `probe`, run read-only and rolled back.
    async fn health_sample(&self, table: &TableName, probe: Option<&str>) -> Result<HealthSample>;
    /// What kind of Citus table `table` is, and for a distributed one its lanes: one per
    /// shard, in the order of the shards' ranges, with the node of its placement, read from
    /// Citus's catalog (`pg_dist_partition`, `pg_dist_shard`, `pg_dist_placement`,
    /// `pg_dist_node`). `None` on a plain table or where there is no Citus. A shard with more
    /// than one placement (statement replication) is refused: a write to one would leave the
    /// others behind.
    async fn citus_table(&self, table: &TableName) -> Result<Option<(CitusTable, Vec<NewLane>)>>;
    /// Fences a lane job's ledger row on this node for `ledger`'s attempt (creating the ledger
    /// in `schema` on first use) and returns the job's cursor as the ledger has it: the last
    /// key whose sub-batch committed here. `None` when a later attempt owns the job.
    async fn ledger_fence(
        &self,
        schema: &str,
        ledger: &LedgerCursor,
    ) -> Result<Option<Option<Key>>>;
}

/// How long a health probe may run.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

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
