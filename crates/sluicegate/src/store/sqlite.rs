//! SQLite: every SQL statement Sluicegate sends to SQLite, for the tracking tables (prefixed
//! `sluicegate_`, in the same file as the data) and for the table being migrated.
//!
//! SQLite has one writer at a time: every read-then-write runs in `BEGIN IMMEDIATE`, which
//! takes the write lock up front, so a check and the write it guards cannot interleave with
//! another worker's. Times are written by Sluicegate as fixed-width UTC text, so they compare
//! correctly as text.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::SqlitePool;
use sqlx::{Row, SqliteConnection};

use super::rows;
use super::{
    check_hold, Backend, Capabilities, JobCreateParams, JobCreated, JobRange, JobSplitParams,
    JobTransitionParams, MigrationResizeParams, MigrationSetParams, MigrationThrottleParams,
    MigrationTransitionParams, PartitionReport, PerformedSubBatch, Store, SubBatchCommit,
    SubBatchCommitted, SubBatchSpec, Target, PROBE_TIMEOUT,
};
use crate::dialect::key_sql::{
    key_list, key_order, key_params, key_row, range_predicate, scope_condition, scope_filter,
};
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::health::HealthSample;
use crate::ident::{self, TableName};
use crate::key::{
    bind_key_values, Key, KeyColumn, KeySpec, KeyType, Lower, TableColumn, UniqueIndex,
};
use crate::kind::{SubBatch, SubBatchConnection};
use crate::model::{
    Job, JobCounts, JobTransition, Migration, MigrationTransition, NewMigration, TargetIdentity,
};
use crate::status::{JobStatus, MigrationEvent};

const SCHEMA_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("schema/sqlite_v1.sql")),
    (2, include_str!("schema/sqlite_v2.sql")),
    (3, include_str!("schema/sqlite_v3.sql")),
    (4, include_str!("schema/sqlite_v4.sql")),
    (5, include_str!("schema/sqlite_v5.sql")),
];

const SCHEMA_VERSIONS_CREATE: &str = "CREATE TABLE IF NOT EXISTS sluicegate_schema_versions (
    version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)";
const SCHEMA_VERSIONS_EXISTS: &str =
    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sluicegate_schema_versions'";
const SCHEMA_VERSION_GET: &str = "SELECT max(version) FROM sluicegate_schema_versions";
const SCHEMA_VERSION_INSERT: &str =
    "INSERT INTO sluicegate_schema_versions (version, applied_at) VALUES ($1, $2)";

const MIGRATION_INSERT: &str = "INSERT INTO sluicegate_migrations (name, job_kind, table_name,
    column_name, job_arguments, min_cursor, max_cursor, next_cursor, batch_size, sub_batch_size,
    max_batch_size, pause_ms, interval_ms, statement_timeout_ms, lock_timeout_ms, status,
    total_tuple_count, health_settings, target_sub_batch_ms, started_at, created_at, updated_at,
    key_columns, next_inclusive, scope, sub_batch_ceiling, target_id, target_display, key_unique)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        CASE WHEN $16 = 'active' THEN $20 END, $20, $20, $21, $22, $23, $24, $25, $26, $27)
    RETURNING *";
const MIGRATION_LOG_INSERT: &str = "INSERT INTO sluicegate_migration_transition_logs (migration_id,
    previous_status, next_status, event, reason, actor, exception_class, exception_message, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const MIGRATION_GET: &str = "SELECT * FROM sluicegate_migrations WHERE id = $1";
const MIGRATION_GET_BY_NAME: &str = "SELECT * FROM sluicegate_migrations WHERE name = $1
    ORDER BY id DESC LIMIT 1";
const MIGRATION_LIST: &str = "SELECT * FROM sluicegate_migrations ORDER BY id";
const MIGRATION_TRANSITION: &str = "UPDATE sluicegate_migrations SET
        status = $3,
        on_hold_until = CASE WHEN $4 = 'hold' THEN $5 END,
        held_since = CASE WHEN $4 = 'hold' THEN $6 END,
        throttle_pause_ms = CASE WHEN $4 IN ('hold', 'release') THEN throttle_pause_ms ELSE 0 END,
        throttle_reason = CASE WHEN $4 IN ('hold', 'release') THEN throttle_reason END,
        started_at = CASE WHEN $3 = 'active' THEN coalesce(started_at, $6) ELSE started_at END,
        finished_at = CASE WHEN $3 IN ('finished', 'failed', 'cancelled') THEN $6 END,
        updated_at = $6
    WHERE id = $1 AND status = $2
      AND ($4 <> 'hold' OR held_since IS NULL) AND ($4 <> 'release' OR held_since IS NOT NULL)
    RETURNING *";
/// A re-check that still says stop: the hold goes on, with no log row.
const MIGRATION_HOLD_EXTEND: &str = "UPDATE sluicegate_migrations
    SET on_hold_until = $2, updated_at = $3
    WHERE id = $1 AND status = 'active' AND held_since IS NOT NULL
    RETURNING *";
/// The worker's pause between jobs as a limit nears (its `throttle` log row follows).
const MIGRATION_THROTTLE: &str = "UPDATE sluicegate_migrations
    SET throttle_pause_ms = $2, throttle_reason = $3, updated_at = $4
    WHERE id = $1 AND status = 'active'
    RETURNING *";
const MIGRATION_RETRY_JOBS: &str = "UPDATE sluicegate_jobs
    SET status = 'pending', attempts = 0, finished_at = NULL, updated_at = $2
    WHERE migration_id = $1 AND status = 'failed'
    RETURNING id";
/// Due migrations (as PostgreSQL's claim decides them): active, not on hold, their interval
/// elapsed (computed as a float: a stored interval too long never elapses, never overflows),
/// or a finalizing one whose finalizer's lease ran out (or is worker `$4`'s own, which took it
/// over), or `$1` in any runnable status; and no other migration holds a live lease on the table.
/// Only migrations of the target this worker is connected to (`$3`): one of another database,
/// or of an unknown one (queued before schema v5, `target_id` NULL), is never claimed.
const MIGRATION_CLAIM_CANDIDATES: &str = "SELECT m.* FROM sluicegate_migrations m
    WHERE m.target_id = $3 AND (($1 IS NULL AND m.status = 'active'
            AND (m.on_hold_until IS NULL OR m.on_hold_until <= $2)
            AND (m.interval_ms = 0 OR m.last_job_started_at IS NULL
                 OR (julianday($2) - julianday(m.last_job_started_at)) * 86400000.0 >= m.interval_ms))
           OR ($1 IS NULL AND m.status = 'finalizing')
           OR (m.id = $1 AND m.status IN ('active', 'finalizing')))
      AND NOT EXISTS (SELECT 1 FROM sluicegate_table_leases l
                      WHERE l.table_name = m.table_name AND l.expires_at > $2
                        AND (l.migration_id <> m.id
                             OR ($1 IS NULL AND m.status = 'finalizing' AND l.worker <> $4)))
    ORDER BY m.last_job_started_at IS NOT NULL, m.last_job_started_at, m.id
    LIMIT 1";
/// The migration, if its next job may be created now (as PostgreSQL's job creation decides
/// it): runnable, its next key still `$3`, not on hold and due (finalizing ignores both), and
/// its table leased to it.
const MIGRATION_CREATABLE: &str = "SELECT m.* FROM sluicegate_migrations m
    WHERE m.id = $1 AND m.next_cursor = $3 AND m.next_inclusive = $4
      AND m.status IN ('active', 'finalizing')
      AND (m.status = 'finalizing' OR m.on_hold_until IS NULL OR m.on_hold_until <= $2)
      AND (m.status = 'finalizing' OR m.interval_ms = 0 OR m.last_job_started_at IS NULL
           OR (julianday($2) - julianday(m.last_job_started_at)) * 86400000.0 >= m.interval_ms)
      AND EXISTS (SELECT 1 FROM sluicegate_table_leases l
                  WHERE l.table_name = m.table_name AND l.migration_id = m.id
                    AND l.expires_at > $2)";
const TABLE_LEASE_PUT: &str =
    "INSERT INTO sluicegate_table_leases (table_name, migration_id, worker, expires_at)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (table_name) DO UPDATE SET migration_id = excluded.migration_id,
        worker = excluded.worker, expires_at = max(expires_at, excluded.expires_at)";
/// Only once no job of the migration runs under a live lease: those jobs still write the
/// table, and another migration of it must not start beside them.
const TABLE_LEASE_RELEASE: &str = "DELETE FROM sluicegate_table_leases WHERE migration_id = $1
    AND NOT EXISTS (SELECT 1 FROM sluicegate_jobs WHERE migration_id = $1 AND status = 'running'
                    AND lease_expires_at > $2)";
const TABLE_LEASE_RENEW: &str =
    "UPDATE sluicegate_table_leases SET expires_at = max(expires_at, $2)
    WHERE migration_id = $1";
const MIGRATION_RANGE_EXHAUST: &str =
    "UPDATE sluicegate_migrations SET next_cursor = NULL, updated_at = $3
    WHERE id = $1 AND next_cursor = $2 AND next_inclusive = $4";
const MIGRATION_RESIZE: &str = "UPDATE sluicegate_migrations
    SET batch_size = $2, sub_batch_size = min($3, $2, coalesce(sub_batch_ceiling, $3)),
        updated_at = $4
    WHERE id = $1 AND status IN ('active', 'paused', 'finalizing')
    RETURNING *";
/// An operator's change (`sluicegate set`): each given value, an explicit sub-batch size also
/// as the tuner's ceiling (its `set` log row follows).
const MIGRATION_SET: &str = "UPDATE sluicegate_migrations SET
        batch_size = coalesce($2, batch_size),
        sub_batch_size = coalesce($3, min(sub_batch_size, coalesce($2, batch_size))),
        sub_batch_ceiling = coalesce($3, sub_batch_ceiling),
        max_batch_size = coalesce($4, max_batch_size),
        pause_ms = coalesce($5, pause_ms),
        interval_ms = coalesce($6, interval_ms),
        health_settings = coalesce($7, health_settings),
        updated_at = $8
    WHERE id = $1 AND status IN ('active', 'paused')
    RETURNING *";
/// A migration of unknown target (queued before schema v5) given one (its `set` row follows).
const MIGRATION_ADOPT_TARGET: &str = "UPDATE sluicegate_migrations
    SET target_id = $2, target_display = $3, updated_at = $4
    WHERE id = $1 AND target_id IS NULL AND status NOT IN ('finished', 'cancelled')
    RETURNING *";
const MIGRATION_JOB_STARTED: &str = "UPDATE sluicegate_migrations
    SET next_cursor = $2, next_inclusive = 0, last_job_started_at = $3, updated_at = coalesce($3, updated_at),
        sub_batch_size = min($4, batch_size)
    WHERE id = $1";

const JOB_INSERT_RUNNING: &str =
    "INSERT INTO sluicegate_jobs (migration_id, min_cursor, max_cursor,
    batch_size, sub_batch_size, pause_ms, status, attempts, started_at, worker, lease_expires_at,
    created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, 'running', 1, $7, $8, $9, $7, $7)
    RETURNING *";
const JOB_LOG_INSERT: &str = "INSERT INTO sluicegate_job_transition_logs (job_id, migration_id,
    previous_status, next_status, exception_class, exception_message, worker, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const JOB_GET: &str = "SELECT * FROM sluicegate_jobs WHERE id = $1";
const JOB_LIST: &str =
    "SELECT * FROM sluicegate_jobs WHERE migration_id = $1 AND ($2 IS NULL OR status = $2)
    ORDER BY id";
/// A failed job waits out a backoff before its next attempt: 0.2 s after its first, 0.6 s
/// after its second, 1.8 s after more.
const JOB_FIND_RETRIABLE: &str = "SELECT * FROM sluicegate_jobs
    WHERE migration_id = $1
      AND (status = 'pending'
           OR (status = 'failed' AND attempts < $2
               AND (julianday($3) - julianday(finished_at)) * 86400000.0 >= CASE attempts
                   WHEN 0 THEN 0 WHEN 1 THEN 200 WHEN 2 THEN 600 ELSE 1800 END)
           OR (status = 'running' AND lease_expires_at < $3))
    ORDER BY id LIMIT 1";
const JOB_TRANSITION: &str = "UPDATE sluicegate_jobs SET
        status = $3,
        attempts = $5,
        started_at = CASE WHEN $3 = 'running' THEN $11 ELSE started_at END,
        finished_at = CASE WHEN $3 IN ('succeeded', 'failed') THEN $11 END,
        worker = CASE WHEN $3 = 'running' THEN $6 ELSE worker END,
        lease_expires_at = CASE WHEN $3 = 'running' THEN $7 END,
        metrics = coalesce($8, metrics),
        sub_batch_size = coalesce($9, sub_batch_size),
        updated_at = $11
    WHERE id = $1 AND status = $2 AND attempts = $4 AND (NOT $10 OR lease_expires_at < $11)
      -- No job of a held migration starts (finalizing ignores holds).
      AND ($3 <> 'running' OR NOT EXISTS (
          SELECT 1 FROM sluicegate_migrations mg
          WHERE mg.id = sluicegate_jobs.migration_id AND mg.status = 'active'
            AND mg.on_hold_until > $11))
    RETURNING *";
const JOB_SPLIT_FIRST: &str = "UPDATE sluicegate_jobs SET status = 'pending', attempts = 0,
        finished_at = NULL, max_cursor = $3, batch_size = $4, sub_batch_size = $5, updated_at = $6
    WHERE id = $1 AND status = 'failed' AND attempts = $2
    RETURNING *";
const JOB_SPLIT_SECOND: &str = "INSERT INTO sluicegate_jobs (migration_id, min_cursor, max_cursor,
    batch_size, sub_batch_size, pause_ms, status, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7)
    RETURNING *";
const JOB_CHECKPOINT: &str = "UPDATE sluicegate_jobs SET cursor = $3,
    rows_affected = rows_affected + $4, lease_expires_at = $5, updated_at = $6
    WHERE id = $1 AND attempts = $2 AND status = 'running'";
/// A job's last sub-batch: cursor, rows and `running -> succeeded`, fenced by attempt like the
/// checkpoint it replaces (its log row follows in the same transaction).
const JOB_FINISH_AT_CURSOR: &str = "UPDATE sluicegate_jobs SET status = 'succeeded',
    finished_at = $8, lease_expires_at = NULL, cursor = $3,
    rows_affected = rows_affected + $4, metrics = $5, sub_batch_size = coalesce($6, sub_batch_size),
    updated_at = $8
    WHERE id = $1 AND attempts = $2 AND status = 'running'
    RETURNING *";
const JOB_HEARTBEAT: &str = "UPDATE sluicegate_jobs SET lease_expires_at = $3, updated_at = $4
    WHERE id = $1 AND attempts = $2 AND status = 'running'
    RETURNING migration_id";
const JOB_COUNTS: &str = "SELECT
    coalesce(sum(status = 'pending'), 0),
    coalesce(sum(status = 'running'), 0),
    coalesce(sum(status = 'failed'), 0),
    coalesce(sum(status = 'succeeded'), 0),
    coalesce(sum(status = 'failed' AND attempts >= $2), 0),
    coalesce(sum(rows_affected), 0),
    coalesce(sum(CASE WHEN status = 'succeeded' THEN batch_size END), 0),
    min(started_at),
    max(finished_at)
  FROM sluicegate_jobs WHERE migration_id = $1";
const JOB_RECENT_SUCCEEDED: &str = "SELECT * FROM sluicegate_jobs
    WHERE migration_id = $1 AND status = 'succeeded'
    ORDER BY finished_at DESC, id DESC LIMIT $2";
const JOB_TRANSITION_LIST: &str =
    "SELECT * FROM sluicegate_job_transition_logs WHERE job_id = $1 ORDER BY created_at, id";
const JOB_TRANSITION_LIST_BY_MIGRATION: &str =
    "SELECT * FROM sluicegate_job_transition_logs WHERE migration_id = $1 ORDER BY created_at, id";
const MIGRATION_TRANSITION_LIST: &str =
    "SELECT * FROM sluicegate_migration_transition_logs WHERE migration_id = $1 ORDER BY created_at, id";
const JOB_LOG_RETENTION_DELETE: &str =
    "DELETE FROM sluicegate_job_transition_logs WHERE created_at < $1";

/// A time as SQLite stores it: fixed-width UTC text, microseconds.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// `now + by` as stored text; a duration past what a timestamp can hold is an error of the
/// value (recorded on its migration by the worker), never a panic.
fn later(by: Duration) -> Result<String> {
    chrono::Duration::from_std(by)
        .ok()
        .and_then(|by| now().checked_add_signed(by))
        .map(ts)
        .ok_or_else(|| Error::OutOfRange(format!("now + {}", humantime::format_duration(by))))
}

fn parse_ts(text: Option<String>) -> Result<Option<DateTime<Utc>>> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(&t)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| Error::Corrupt(format!("bad time {t:?}: {e}")))
    })
    .transpose()
}

/// Runs one or more statements with no parameters (DDL). A plain function, not a trait
/// method, so the borrow of the connection does not leak into the trait's `Send` analysis.
async fn exec_raw(conn: &mut SqliteConnection, sql: &str) -> std::result::Result<(), sqlx::Error> {
    sqlx::Executor::execute(conn, sql).await.map(|_| ())
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_missing_table(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.message().contains("no such table"))
}

const SCHEMA_CONTEXT: &str = "installing the tracking schema";

/// How SQLite writes a bound key value: as it is (comparisons take the column's affinity).
fn plain_param(_: &KeyColumn, n: usize) -> String {
    format!("${n}")
}

/// The SQLite steps of [`super::schema_install`], in one `BEGIN IMMEDIATE` transaction (which
/// already keeps concurrent setups apart).
struct SqliteSchemaSteps<'c> {
    tx: sqlx::Transaction<'c, sqlx::Sqlite>,
}

#[async_trait]
impl super::SchemaSteps for SqliteSchemaSteps<'_> {
    async fn prepare(&mut self) -> Result<()> {
        exec_raw(&mut self.tx, SCHEMA_VERSIONS_CREATE)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))
    }

    async fn current(&mut self) -> Result<i64> {
        let current: Option<i64> = sqlx::query_scalar(SCHEMA_VERSION_GET)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        Ok(current.unwrap_or(0))
    }

    async fn apply(&mut self, version: i64, script: &str) -> Result<()> {
        exec_raw(&mut self.tx, script)
            .await
            .map_err(Error::db(format!("applying schema version {version}")))?;
        sqlx::query(SCHEMA_VERSION_INSERT)
            .bind(version)
            .bind(ts(now()))
            .execute(&mut *self.tx)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await.map_err(Error::db(SCHEMA_CONTEXT))
    }
}

/// The tracking store on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The target whose migrations this store's claims hand out (none without one).
    target: Option<TargetIdentity>,
}

impl SqliteStore {
    /// A store on `pool`.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool, target: None }
    }

    /// The same store, claiming the migrations of `target` only (without one it claims none).
    pub fn for_target(mut self, target: TargetIdentity) -> Self {
        self.target = Some(target);
        self
    }

    /// The pool it uses.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin_immediate(
        &self,
        context: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::db(context))
    }

    /// The log row of an event that keeps the migration's status (`resize`, `throttle`), in
    /// the open transaction that made the change.
    async fn log_same_status(
        conn: &mut SqliteConnection,
        m: &Migration,
        event: MigrationEvent,
        reason: &str,
        actor: &str,
        at: &str,
    ) -> std::result::Result<(), sqlx::Error> {
        sqlx::query(MIGRATION_LOG_INSERT)
            .bind(m.id)
            .bind(m.status.as_str())
            .bind(m.status.as_str())
            .bind(event.as_str())
            .bind(reason)
            .bind(actor)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(at)
            .execute(conn)
            .await
            .map(|_| ())
    }

    async fn job_transition_in(
        conn: &mut SqliteConnection,
        p: &JobTransitionParams,
    ) -> Result<Job> {
        // The state machine again, below the engine: nothing illegal is ever written.
        p.check()?;
        let at = ts(now());
        let context = format!("changing job {} to {}", p.job_id, p.to);
        let row = sqlx::query(JOB_TRANSITION)
            .bind(p.job_id)
            .bind(p.from.as_str())
            .bind(p.to.as_str())
            .bind(p.expected_attempts)
            .bind(p.attempts)
            .bind(&p.worker)
            .bind(p.lease.map(later).transpose()?)
            .bind(p.metrics.as_ref().map(|m| m.to_string()))
            .bind(p.sub_batch_size)
            .bind(p.require_expired_lease)
            .bind(&at)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::db(&context))?;
        let Some(row) = row else {
            return Err(Error::Conflict {
                what: format!(
                    "job {} (expected {} attempt {})",
                    p.job_id, p.from, p.expected_attempts
                ),
            });
        };
        let job = rows::job(&row)?;
        sqlx::query(JOB_LOG_INSERT)
            .bind(job.id)
            .bind(job.migration_id)
            .bind(p.from.as_str())
            .bind(p.to.as_str())
            .bind(p.failure.as_ref().map(|f| f.class.as_str()))
            .bind(p.failure.as_ref().map(|f| f.message.as_str()))
            .bind(&p.worker)
            .bind(&at)
            .execute(&mut *conn)
            .await
            .map_err(Error::db(&context))?;
        Ok(job)
    }

    async fn migration_transition_in(
        conn: &mut SqliteConnection,
        p: &MigrationTransitionParams,
    ) -> Result<Migration> {
        // The state machine again, below the engine: nothing illegal is ever written.
        p.check()?;
        let at = ts(now());
        let context = format!("changing migration {} to {}", p.migration_id, p.to);
        let row = sqlx::query(MIGRATION_TRANSITION)
            .bind(p.migration_id)
            .bind(p.from.as_str())
            .bind(p.to.as_str())
            .bind(p.event.as_str())
            .bind(p.hold_until.map(later).transpose()?)
            .bind(&at)
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::db(&context))?;
        let Some(row) = row else {
            return Err(Error::Conflict {
                what: format!("migration {} (expected {})", p.migration_id, p.from),
            });
        };
        let migration = rows::migration(&row)?;
        sqlx::query(MIGRATION_LOG_INSERT)
            .bind(p.migration_id)
            .bind(p.from.as_str())
            .bind(p.to.as_str())
            .bind(p.event.as_str())
            .bind(p.reason.as_deref())
            .bind(&p.actor)
            .bind(p.failure.as_ref().map(|f| f.class.as_str()))
            .bind(p.failure.as_ref().map(|f| f.message.as_str()))
            .bind(&at)
            .execute(&mut *conn)
            .await
            .map_err(Error::db(&context))?;
        Ok(migration)
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::SQLITE
    }

    async fn schema_install(&self) -> Result<Vec<i64>> {
        // Version 4 rebuilds tables that others reference: with foreign keys on, dropping the
        // old one would cascade to its children. The pragma is a no-op inside a transaction,
        // so it is set on the connection before, and checked and restored after.
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        exec_raw(&mut conn, "PRAGMA foreign_keys = OFF")
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        let installed = async {
            let tx = sqlx::Transaction::begin(&mut *conn, Some("BEGIN IMMEDIATE".into()))
                .await
                .map_err(Error::db(SCHEMA_CONTEXT))?;
            super::schema_install(Box::new(SqliteSchemaSteps { tx }), SCHEMA_MIGRATIONS).await
        }
        .await;
        let restored = async {
            let broken: Vec<sqlx::sqlite::SqliteRow> = sqlx::query("PRAGMA foreign_key_check")
                .fetch_all(&mut *conn)
                .await?;
            exec_raw(&mut conn, "PRAGMA foreign_keys = ON").await?;
            Ok::<_, sqlx::Error>(broken.len())
        }
        .await;
        match restored {
            Ok(0) => installed,
            Ok(n) => {
                conn.detach();
                Err(Error::Corrupt(format!(
                    "{n} tracking row(s) reference a missing row after the schema upgrade"
                )))
            }
            Err(e) => {
                // Never hand a connection with foreign keys off back to the pool.
                conn.detach();
                installed.and(Err(Error::db(SCHEMA_CONTEXT)(e)))
            }
        }
    }

    async fn schema_version(&self) -> Result<Option<i64>> {
        let context = "reading the tracking schema version";
        let exists: i64 = sqlx::query_scalar(SCHEMA_VERSIONS_EXISTS)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(context))?;
        if exists == 0 {
            return Ok(None);
        }
        sqlx::query_scalar(SCHEMA_VERSION_GET)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(context))
    }

    async fn migration_insert(&self, m: &NewMigration) -> Result<Migration> {
        let context = format!("queueing migration {}", m.name);
        let at = ts(now());
        let mut tx = self.begin_immediate(&context).await?;
        let row = sqlx::query(MIGRATION_INSERT)
            .bind(&m.name)
            .bind(&m.job_kind)
            .bind(&m.table_name)
            .bind(m.key.display_names())
            .bind(m.job_arguments.to_string())
            .bind(m.min_value.to_json())
            .bind(m.max_value.to_json())
            .bind(m.next_start.as_ref().map(|l| l.key().to_json()))
            .bind(m.batch_size)
            .bind(m.sub_batch_size)
            .bind(m.max_batch_size)
            .bind(m.pause_ms)
            .bind(super::duration_ms(m.interval))
            .bind(m.statement_timeout_ms)
            .bind(m.lock_timeout_ms)
            .bind(m.status.as_str())
            .bind(m.total_tuple_count)
            .bind(serde_json::to_string(&m.health).expect("settings serialize"))
            .bind(m.target_sub_batch_ms)
            .bind(&at)
            .bind(serde_json::to_string(&m.key).expect("a key serializes"))
            .bind(m.next_start.as_ref().is_none_or(Lower::is_inclusive))
            .bind(m.scope.as_deref())
            .bind(m.sub_batch_ceiling)
            .bind(&m.target.id)
            .bind(&m.target.display)
            .bind(m.key_unique)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::DuplicateMigration(m.name.clone())
                } else if is_missing_table(&e) {
                    Error::SchemaMissing
                } else {
                    Error::db(&context)(e)
                }
            })?;
        let migration = rows::migration(&row)?;
        sqlx::query(MIGRATION_LOG_INSERT)
            .bind(migration.id)
            .bind(None::<&str>)
            .bind(migration.status.as_str())
            .bind("queue")
            .bind(None::<&str>)
            .bind(&m.actor)
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(&at)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        tx.commit().await.map_err(Error::db(&context))?;
        Ok(migration)
    }

    async fn migration_get(&self, id: i64) -> Result<Option<Migration>> {
        let row = sqlx::query(MIGRATION_GET)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(format!("reading migration {id}")))?;
        row.as_ref().map(rows::migration).transpose()
    }

    async fn migration_get_by_name(&self, name: &str) -> Result<Option<Migration>> {
        let row = sqlx::query(MIGRATION_GET_BY_NAME)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(format!("reading migration {name:?}")))?;
        row.as_ref().map(rows::migration).transpose()
    }

    async fn migration_list(&self) -> Result<Vec<Migration>> {
        let rows = sqlx::query(MIGRATION_LIST)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| {
                if is_missing_table(&e) {
                    Error::SchemaMissing
                } else {
                    Error::db("listing migrations")(e)
                }
            })?;
        rows.iter().map(rows::migration).collect()
    }

    async fn migration_transition(&self, p: &MigrationTransitionParams) -> Result<Migration> {
        let context = format!("changing migration {}", p.migration_id);
        let mut tx = self.begin_immediate(&context).await?;
        let migration = Self::migration_transition_in(&mut tx, p).await?;
        tx.commit().await.map_err(Error::db(&context))?;
        Ok(migration)
    }

    async fn migration_retry(&self, p: &MigrationTransitionParams) -> Result<Migration> {
        let context = format!("retrying migration {}", p.migration_id);
        let at = ts(now());
        let mut tx = self.begin_immediate(&context).await?;
        let migration = Self::migration_transition_in(&mut tx, p).await?;
        let ids: Vec<i64> = sqlx::query_scalar(MIGRATION_RETRY_JOBS)
            .bind(p.migration_id)
            .bind(&at)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        for id in ids {
            sqlx::query(JOB_LOG_INSERT)
                .bind(id)
                .bind(p.migration_id)
                .bind("failed")
                .bind("pending")
                .bind(None::<&str>)
                .bind(None::<&str>)
                .bind(&p.actor)
                .bind(&at)
                .execute(&mut *tx)
                .await
                .map_err(Error::db(&context))?;
        }
        tx.commit().await.map_err(Error::db(&context))?;
        Ok(migration)
    }

    async fn migration_claim(
        &self,
        worker: &str,
        lease: Duration,
        only: Option<i64>,
    ) -> Result<Option<Migration>> {
        let context = "claiming a migration";
        let at = now();
        let mut tx = self.begin_immediate(context).await?;
        let row = sqlx::query(MIGRATION_CLAIM_CANDIDATES)
            .bind(only)
            .bind(ts(at))
            .bind(self.target.as_ref().map(|t| t.id.as_str()))
            .bind(worker)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(context))?;
        let Some(m) = row.as_ref().map(rows::migration).transpose()? else {
            tx.commit().await.map_err(Error::db(context))?;
            return Ok(None);
        };
        sqlx::query(TABLE_LEASE_PUT)
            .bind(&m.table_name)
            .bind(m.id)
            .bind(worker)
            .bind(later(lease)?)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(context))?;
        tx.commit().await.map_err(Error::db(context))?;
        Ok(Some(m))
    }

    async fn table_lease_release(&self, migration_id: i64) -> Result<()> {
        sqlx::query(TABLE_LEASE_RELEASE)
            .bind(migration_id)
            .bind(ts(now()))
            .execute(&self.pool)
            .await
            .map_err(Error::db("releasing a table lease"))?;
        Ok(())
    }

    async fn migration_range_exhaust(&self, migration_id: i64, expected: &Lower) -> Result<bool> {
        let done = sqlx::query(MIGRATION_RANGE_EXHAUST)
            .bind(migration_id)
            .bind(expected.key().to_json())
            .bind(ts(now()))
            .bind(expected.is_inclusive())
            .execute(&self.pool)
            .await
            .map_err(Error::db("closing a migration's range"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn migration_set(&self, p: &MigrationSetParams) -> Result<Option<Migration>> {
        let context = format!("changing the settings of migration {}", p.migration_id);
        let at = ts(now());
        let mut tx = self.begin_immediate(&context).await?;
        let row = sqlx::query(MIGRATION_SET)
            .bind(p.migration_id)
            .bind(p.batch_size)
            .bind(p.sub_batch_size)
            .bind(p.max_batch_size)
            .bind(p.pause_ms)
            .bind(p.interval_ms)
            .bind(
                p.health
                    .as_ref()
                    .map(|h| serde_json::to_string(h).expect("settings serialize")),
            )
            .bind(&at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        let Some(m) = row.as_ref().map(rows::migration).transpose()? else {
            return Ok(None);
        };
        Self::log_same_status(&mut tx, &m, MigrationEvent::Set, &p.reason, &p.actor, &at)
            .await
            .map_err(Error::db(&context))?;
        tx.commit().await.map_err(Error::db(&context))?;
        Ok(Some(m))
    }

    async fn migration_adopt_target(
        &self,
        migration_id: i64,
        target: &TargetIdentity,
        reason: &str,
        actor: &str,
    ) -> Result<Option<Migration>> {
        let context = format!("adopting migration {migration_id} for {}", target.display);
        let at = ts(now());
        let mut tx = self.begin_immediate(&context).await?;
        let row = sqlx::query(MIGRATION_ADOPT_TARGET)
            .bind(migration_id)
            .bind(&target.id)
            .bind(&target.display)
            .bind(&at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::DuplicateMigration(format!(
                        "migration {migration_id} would duplicate a live migration of {}",
                        target.display
                    ))
                } else {
                    Error::db(&context)(e)
                }
            })?;
        let Some(m) = row.as_ref().map(rows::migration).transpose()? else {
            return Ok(None);
        };
        Self::log_same_status(&mut tx, &m, MigrationEvent::Set, reason, actor, &at)
            .await
            .map_err(Error::db(&context))?;
        tx.commit().await.map_err(Error::db(&context))?;
        Ok(Some(m))
    }

    async fn migration_resize(&self, p: &MigrationResizeParams) -> Result<Option<Migration>> {
        let context = format!("resizing the batches of migration {}", p.migration_id);
        let at = ts(now());
        let mut tx = self.begin_immediate(&context).await?;
        let row = sqlx::query(MIGRATION_RESIZE)
            .bind(p.migration_id)
            .bind(p.batch_size)
            .bind(p.sub_batch_size)
            .bind(&at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        let Some(m) = row.as_ref().map(rows::migration).transpose()? else {
            return Ok(None);
        };
        Self::log_same_status(
            &mut tx,
            &m,
            MigrationEvent::Resize,
            &p.reason,
            &p.actor,
            &at,
        )
        .await
        .map_err(Error::db(&context))?;
        tx.commit().await.map_err(Error::db(&context))?;
        Ok(Some(m))
    }

    async fn migration_hold_extend(&self, id: i64, hold: Duration) -> Result<Option<Migration>> {
        check_hold(hold)?;
        let row = sqlx::query(MIGRATION_HOLD_EXTEND)
            .bind(id)
            .bind(later(hold)?)
            .bind(ts(now()))
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(format!("extending the hold of migration {id}")))?;
        row.as_ref().map(rows::migration).transpose()
    }

    async fn migration_throttle(&self, p: &MigrationThrottleParams) -> Result<Option<Migration>> {
        let context = format!("throttling migration {}", p.migration_id);
        let at = ts(now());
        let mut tx = self.begin_immediate(&context).await?;
        let row = sqlx::query(MIGRATION_THROTTLE)
            .bind(p.migration_id)
            .bind(p.pause_ms)
            .bind(p.reason.as_deref())
            .bind(&at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        let Some(m) = row.as_ref().map(rows::migration).transpose()? else {
            return Ok(None);
        };
        Self::log_same_status(&mut tx, &m, MigrationEvent::Throttle, &p.log, &p.actor, &at)
            .await
            .map_err(Error::db(&context))?;
        tx.commit().await.map_err(Error::db(&context))?;
        Ok(Some(m))
    }

    async fn job_create(&self, p: &JobCreateParams) -> Result<JobCreated> {
        let context = format!("creating a job of migration {}", p.migration_id);
        let at = now();
        let mut tx = self.begin_immediate(&context).await?;
        let row = sqlx::query(MIGRATION_CREATABLE)
            .bind(p.migration_id)
            .bind(ts(at))
            .bind(p.expected_next.key().to_json())
            .bind(p.expected_next.is_inclusive())
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        let Some(m) = row.as_ref().map(rows::migration).transpose()? else {
            return Ok(JobCreated::NotNow);
        };
        let range = match &p.range {
            JobRange::Given { min, max } => Some((min.clone(), max.clone())),
            JobRange::Keyset {
                table,
                key,
                scope,
                size,
                statement_ms: _,
            } => SqliteTarget::range_next_in(
                &mut tx,
                (table, key, scope.as_deref()),
                &p.expected_next,
                &m.max_value,
                *size,
            )
            .await
            .map_err(Error::db(&context))?,
        };
        // Handed out when the range reached the migration's last key.
        let next = range
            .as_ref()
            .filter(|(_, last)| *last != m.max_value)
            .map(|(_, last)| Lower::After(last.clone()));
        sqlx::query(MIGRATION_JOB_STARTED)
            .bind(p.migration_id)
            .bind(next.as_ref().map(|l| l.key().to_json()))
            .bind(if range.is_some() {
                Some(ts(at))
            } else {
                m.last_job_started_at.map(ts)
            })
            .bind(p.sub_batch_size)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        let Some((first, last)) = range else {
            tx.commit().await.map_err(Error::db(&context))?;
            return Ok(JobCreated::Exhausted);
        };
        let row = sqlx::query(JOB_INSERT_RUNNING)
            .bind(p.migration_id)
            .bind(first.to_json())
            .bind(last.to_json())
            .bind(p.batch_size)
            .bind(p.sub_batch_size)
            .bind(p.pause_ms)
            .bind(ts(at))
            .bind(&p.worker)
            .bind(later(p.lease)?)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        let job = rows::job(&row)?;
        sqlx::query(JOB_LOG_INSERT)
            .bind(job.id)
            .bind(job.migration_id)
            .bind("pending")
            .bind("running")
            .bind(None::<&str>)
            .bind(None::<&str>)
            .bind(&p.worker)
            .bind(ts(at))
            .execute(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        sqlx::query(TABLE_LEASE_RENEW)
            .bind(p.migration_id)
            .bind(later(p.lease)?)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        tx.commit().await.map_err(Error::db(&context))?;
        Ok(JobCreated::Created(Box::new(job), next))
    }

    async fn job_get(&self, id: i64) -> Result<Option<Job>> {
        let row = sqlx::query(JOB_GET)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(format!("reading job {id}")))?;
        row.as_ref().map(rows::job).transpose()
    }

    async fn job_list(&self, migration_id: i64, status: Option<JobStatus>) -> Result<Vec<Job>> {
        let rows = sqlx::query(JOB_LIST)
            .bind(migration_id)
            .bind(status.map(JobStatus::as_str))
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db(format!(
                "listing jobs of migration {migration_id}"
            )))?;
        rows.iter().map(rows::job).collect()
    }

    async fn job_find_retriable(
        &self,
        migration_id: i64,
        max_attempts: i32,
    ) -> Result<Option<Job>> {
        let row = sqlx::query(JOB_FIND_RETRIABLE)
            .bind(migration_id)
            .bind(max_attempts)
            .bind(ts(now()))
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db("finding a job to retry"))?;
        row.as_ref().map(rows::job).transpose()
    }

    async fn job_transition(&self, p: &JobTransitionParams) -> Result<Job> {
        let context = format!("changing job {}", p.job_id);
        let mut tx = self.begin_immediate(&context).await?;
        let job = Self::job_transition_in(&mut tx, p).await?;
        tx.commit().await.map_err(Error::db(&context))?;
        Ok(job)
    }

    async fn job_split(&self, p: &JobSplitParams) -> Result<(Job, Job)> {
        let t = &p.transition;
        let context = format!("splitting job {}", t.job_id);
        let at = ts(now());
        let mut tx = self.begin_immediate(&context).await?;
        let first = sqlx::query(JOB_SPLIT_FIRST)
            .bind(t.job_id)
            .bind(t.expected_attempts)
            .bind(p.first_max.to_json())
            .bind(p.batch_size)
            .bind(p.sub_batch_size)
            .bind(&at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        let Some(first) = first else {
            return Err(Error::Conflict {
                what: format!(
                    "job {} (expected failed attempt {})",
                    t.job_id, t.expected_attempts
                ),
            });
        };
        let first = rows::job(&first)?;
        let second = sqlx::query(JOB_SPLIT_SECOND)
            .bind(first.migration_id)
            .bind(p.second_min.to_json())
            .bind(p.second_max.to_json())
            .bind(p.batch_size)
            .bind(p.sub_batch_size)
            .bind(first.pause_ms)
            .bind(&at)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        let second = rows::job(&second)?;
        let message = format!(
            "split: keys up to {} stay in this job, {}..{} moved to job {}",
            p.first_max, p.second_min, p.second_max, second.id
        );
        sqlx::query(JOB_LOG_INSERT)
            .bind(first.id)
            .bind(first.migration_id)
            .bind("failed")
            .bind("pending")
            .bind(None::<&str>)
            .bind(message)
            .bind(&t.worker)
            .bind(&at)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        tx.commit().await.map_err(Error::db(&context))?;
        Ok((first, second))
    }

    async fn job_checkpoint(
        &self,
        job_id: i64,
        attempts: i32,
        cursor: &Key,
        rows: i64,
        lease: Duration,
    ) -> Result<bool> {
        let done = sqlx::query(JOB_CHECKPOINT)
            .bind(job_id)
            .bind(attempts)
            .bind(cursor.to_json())
            .bind(rows)
            .bind(later(lease)?)
            .bind(ts(now()))
            .execute(&self.pool)
            .await
            .map_err(Error::db(format!("recording progress of job {job_id}")))?;
        Ok(done.rows_affected() == 1)
    }

    async fn job_heartbeat(&self, job_id: i64, attempts: i32, lease: Duration) -> Result<bool> {
        let context = format!("renewing the lease of job {job_id}");
        let mut tx = self.begin_immediate(&context).await?;
        let migration_id: Option<i64> = sqlx::query_scalar(JOB_HEARTBEAT)
            .bind(job_id)
            .bind(attempts)
            .bind(later(lease)?)
            .bind(ts(now()))
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        if let Some(migration_id) = migration_id {
            sqlx::query(TABLE_LEASE_RENEW)
                .bind(migration_id)
                .bind(later(lease)?)
                .execute(&mut *tx)
                .await
                .map_err(Error::db(&context))?;
        }
        tx.commit().await.map_err(Error::db(&context))?;
        Ok(migration_id.is_some())
    }

    async fn job_counts(&self, migration_id: i64, max_attempts: i32) -> Result<JobCounts> {
        let row = sqlx::query(JOB_COUNTS)
            .bind(migration_id)
            .bind(max_attempts)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(format!(
                "counting jobs of migration {migration_id}"
            )))?;
        Ok(JobCounts {
            pending: row.try_get(0).map_err(rows::decode)?,
            running: row.try_get(1).map_err(rows::decode)?,
            failed: row.try_get(2).map_err(rows::decode)?,
            succeeded: row.try_get(3).map_err(rows::decode)?,
            exhausted: row.try_get(4).map_err(rows::decode)?,
            rows_affected: row.try_get(5).map_err(rows::decode)?,
            keys_done: row.try_get(6).map_err(rows::decode)?,
            first_started_at: parse_ts(row.try_get(7).map_err(rows::decode)?)?,
            last_finished_at: parse_ts(row.try_get(8).map_err(rows::decode)?)?,
        })
    }

    async fn job_recent_succeeded(&self, migration_id: i64, limit: i64) -> Result<Vec<Job>> {
        let rows = sqlx::query(JOB_RECENT_SUCCEEDED)
            .bind(migration_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db("reading recent jobs"))?;
        rows.iter().map(rows::job).collect()
    }

    async fn job_transition_list(&self, job_id: i64) -> Result<Vec<JobTransition>> {
        let rows = sqlx::query(JOB_TRANSITION_LIST)
            .bind(job_id)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db(format!("reading the history of job {job_id}")))?;
        rows.iter().map(rows::job_transition).collect()
    }

    async fn job_transition_list_by_migration(
        &self,
        migration_id: i64,
    ) -> Result<Vec<JobTransition>> {
        let rows = sqlx::query(JOB_TRANSITION_LIST_BY_MIGRATION)
            .bind(migration_id)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db(format!(
                "reading job history of migration {migration_id}"
            )))?;
        rows.iter().map(rows::job_transition).collect()
    }

    async fn migration_transition_list(
        &self,
        migration_id: i64,
    ) -> Result<Vec<MigrationTransition>> {
        let rows = sqlx::query(MIGRATION_TRANSITION_LIST)
            .bind(migration_id)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db(format!(
                "reading the history of migration {migration_id}"
            )))?;
        rows.iter().map(rows::migration_transition).collect()
    }

    async fn log_partitions_maintain(
        &self,
        now: DateTime<Utc>,
        retention_months: u32,
    ) -> Result<PartitionReport> {
        use chrono::Datelike;
        let this_month =
            chrono::NaiveDate::from_ymd_opt(now.year(), now.month(), 1).expect("month");
        let cutoff = super::add_months(this_month, -(retention_months as i32));
        let cutoff = ts(super::month_start_utc(cutoff));
        let done = sqlx::query(JOB_LOG_RETENTION_DELETE)
            .bind(cutoff)
            .execute(&self.pool)
            .await
            .map_err(Error::db("deleting old job log rows"))?;
        Ok(PartitionReport {
            rows_deleted: done.rows_affected(),
            ..PartitionReport::default()
        })
    }

    async fn log_partitions_list(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// The table being migrated, on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteTarget {
    pool: SqlitePool,
    /// Whether the tracking tables share this file (exactly-once cursor commits).
    same_database_store: bool,
}

impl SqliteTarget {
    /// A target on `pool`; `same_database_store` when the tracking tables are in this file.
    pub fn new(pool: SqlitePool, same_database_store: bool) -> Self {
        Self {
            pool,
            same_database_store,
        }
    }

    /// The keyset walk as one row `(first, nth, last)` of JSON keys: the first key from the
    /// lower bound `$1..$n` (inclusive or not) up to `$n+1..$2n`, the `$2n+1`-th one, and the
    /// last one in range. Row-value comparisons over the key's columns (their own collations),
    /// which the key's index serves.
    fn range_next_sql(
        (table, key, scope): (&TableName, &KeySpec, Option<&str>),
        inclusive: bool,
    ) -> String {
        let n = key.len();
        let (t, row) = (table.quoted(), key_row(key, None));
        let json = format!("json_array({})", key_list(key));
        let op = if inclusive { ">=" } else { ">" };
        let in_range = format!(
            "FROM {t} WHERE {row} {op} {} AND {row} <= {}{}",
            key_params(key, 1, plain_param),
            key_params(key, n + 1, plain_param),
            scope_condition(scope)
        );
        let (asc, desc) = (key_order(key, "ASC"), key_order(key, "DESC"));
        format!(
            "SELECT (SELECT {json} {in_range} ORDER BY {asc} LIMIT 1),
                    (SELECT {json} {in_range} ORDER BY {asc} LIMIT 1 OFFSET ${} - 1),
                    (SELECT {json} {in_range} ORDER BY {desc} LIMIT 1)",
            2 * n + 1
        )
    }

    /// Inside the open transaction: finds the sub-batch's keys and performs the kind on them.
    /// `None` when no key is left in range.
    async fn perform_in(
        conn: &mut SqliteConnection,
        spec: &SubBatchSpec<'_>,
    ) -> std::result::Result<Option<((Key, Key), u64)>, Failure> {
        let range = match spec.whole_range() {
            Some(whole) => Some(whole),
            None => {
                let walk = (spec.table, spec.key, spec.scope);
                Self::range_next_in(conn, walk, spec.lower, spec.max, spec.size).await?
            }
        };
        let Some((start, end)) = range else {
            return Ok(None);
        };
        let predicate = range_predicate(spec.key, spec.scope, spec.table, None, plain_param);
        let mut batch = SubBatch {
            connection: SubBatchConnection::Sqlite(conn),
            table: spec.table,
            key: spec.key,
            scope: spec.scope,
            param: plain_param,
            predicate: &predicate,
            arguments: spec.arguments,
            start: &start,
            end: &end,
        };
        let rows = super::perform_catching_panics(spec.kind, &mut batch).await?;
        super::check_reach(spec, Backend::Sqlite, (&start, &end), rows)?;
        Ok(Some(((start, end), rows)))
    }

    async fn range_next_in(
        conn: &mut SqliteConnection,
        walk: (&TableName, &KeySpec, Option<&str>),
        lower: &Lower,
        max: &Key,
        size: i64,
    ) -> std::result::Result<Option<(Key, Key)>, sqlx::Error> {
        let sql = Self::range_next_sql(walk, lower.is_inclusive());
        let values = lower.key().values().iter().chain(max.values());
        let query = bind_key_values!(sqlx::query_as(&sql), values);
        let (first, nth, last): (Option<String>, Option<String>, Option<String>) =
            query.bind(size.max(1)).fetch_one(&mut *conn).await?;
        let decode = |text: String| {
            serde_json::from_str(&text)
                .map_err(|e| crate::Error::Corrupt(e.to_string()))
                .and_then(|v| Key::from_json(v, "a key read by the walk"))
                .map_err(|e| sqlx::Error::Decode(e.to_string().into()))
        };
        let Some(first) = first.map(decode).transpose()? else {
            return Ok(None);
        };
        let last = nth
            .or(last)
            .map(decode)
            .transpose()?
            .unwrap_or_else(|| first.clone());
        Ok(Some((first, last)))
    }
}

#[async_trait]
impl Target for SqliteTarget {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::SQLITE
    }

    /// `sqlite:` and the file's canonical path (symbolic links resolved), as SQLite names the
    /// main database: the same file by any URL or relative path, and nothing written into it.
    /// A copy is another target; a moved file is too (its migrations are then skipped, never
    /// run elsewhere). An in-memory database is one of a kind.
    async fn identity(&self) -> Result<String> {
        let file: Option<String> =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::db("reading the target database's identity"))?;
        Ok(match file.filter(|f| !f.is_empty()) {
            Some(file) => {
                let path = std::fs::canonicalize(&file).unwrap_or_else(|_| file.into());
                format!("sqlite:{}", path.display())
            }
            None => {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let at = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
                format!("sqlite::memory:{}-{at}-{n}", std::process::id())
            }
        })
    }

    /// SQLite has no date or time types: a key value is compared as it is stored, and a bound
    /// as it is given.
    async fn key_canonical(&self, _key: &KeySpec, value: &Key, _flag: &str) -> Result<Key> {
        Ok(value.clone())
    }

    async fn key_resolve(
        &self,
        table: &TableName,
        requested: Option<&[String]>,
        non_unique: bool,
    ) -> Result<(TableName, KeySpec)> {
        let context = format!("looking up table {}", table.quoted());
        let schema = table.schema.clone().unwrap_or_else(|| "main".to_owned());
        let master = format!("{}.sqlite_master", ident::quote(&schema));
        let found: Option<String> = sqlx::query_scalar(&format!(
            "SELECT name FROM {master} WHERE type = 'table' AND name = $1 COLLATE NOCASE"
        ))
        .bind(&table.table)
        .fetch_optional(&self.pool)
        .await
        .or_else(|e| match &e {
            // An unknown schema ("no such table: x.sqlite_master") is an unknown table.
            sqlx::Error::Database(db) if db.message().contains("no such") => Ok(None),
            _ => Err(e),
        })
        .map_err(Error::db(&context))?;
        let Some(name) = found else {
            return Err(Error::UnknownTable {
                table: table.table.clone(),
                hint: String::new(),
            });
        };
        let name_of_table = name.clone();
        let without_rowid: bool = sqlx::query_scalar(
            "SELECT coalesce((SELECT wr FROM pragma_table_list($1) WHERE schema = $2), 0)",
        )
        .bind(&name)
        .bind(&schema)
        .fetch_one(&self.pool)
        .await
        .map_err(Error::db(&context))?;
        let info: Vec<(String, String, bool, i64)> = sqlx::query_as(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info($1, $2) ORDER BY cid",
        )
        .bind(&name)
        .bind(&schema)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::db(&context))?;
        let mut pk: Vec<(i64, String)> = info
            .iter()
            .filter(|(_, _, _, pk)| *pk > 0)
            .map(|(name, _, _, pk)| (*pk, name.clone()))
            .collect();
        pk.sort();
        // A rowid table's single INTEGER PRIMARY KEY is the rowid itself, never NULL; a
        // WITHOUT ROWID table enforces NOT NULL on its key. Other primary keys of rowid tables
        // may hold NULL (an old SQLite quirk) unless declared NOT NULL.
        let rowid_alias = pk.len() == 1
            && !without_rowid
            && info
                .iter()
                .any(|(n, ty, _, p)| *p > 0 && n == &pk[0].1 && ty.eq_ignore_ascii_case("INTEGER"));
        // Such a key column that holds no NULL today is taken as NOT NULL (`id bigint PRIMARY
        // KEY` is common and never NULL in practice); one that holds a NULL is refused.
        let mut pk_without_nulls = Vec::new();
        for (name, _, not_null, pk) in &info {
            if *pk > 0 && !*not_null && !without_rowid && !rowid_alias {
                let sql = format!(
                    "SELECT NOT EXISTS (SELECT 1 FROM {} WHERE {} IS NULL)",
                    TableName {
                        schema: table.schema.clone(),
                        table: name_of_table.clone(),
                    }
                    .quoted(),
                    ident::quote(name)
                );
                let none: bool = sqlx::query_scalar(&sql)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(Error::db(&context))?;
                if none {
                    pk_without_nulls.push(name.clone());
                }
            }
        }
        let columns: Vec<TableColumn> = info
            .iter()
            .map(|(name, ty, not_null, pk)| {
                let upper = ty.to_ascii_uppercase();
                let key_type = if upper.contains("INT") {
                    Some(KeyType::Bigint)
                } else if ["CHAR", "CLOB", "TEXT"].iter().any(|t| upper.contains(t)) {
                    Some(KeyType::Text)
                } else {
                    None
                };
                TableColumn {
                    name: name.clone(),
                    key_type,
                    type_name: if ty.is_empty() {
                        "(none)".into()
                    } else {
                        ty.clone()
                    },
                    not_null: *not_null
                        || (*pk > 0 && (without_rowid || rowid_alias))
                        || pk_without_nulls.contains(name),
                }
            })
            .collect();
        let mut indexes = Vec::new();
        if !pk.is_empty() {
            indexes.push(UniqueIndex {
                name: "PRIMARY KEY".into(),
                primary: true,
                partial: false,
                columns: pk.into_iter().map(|(_, name)| name).collect(),
            });
        }
        let list: Vec<(String, bool)> = sqlx::query_as(
            "SELECT name, partial FROM pragma_index_list($1, $2) WHERE \"unique\" AND origin <> 'pk'",
        )
        .bind(&name)
        .bind(&schema)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::db(&context))?;
        for (index, partial) in list {
            let cols: Vec<Option<String>> =
                sqlx::query_scalar("SELECT name FROM pragma_index_info($1, $2) ORDER BY seqno")
                    .bind(&index)
                    .bind(&schema)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(Error::db(&context))?;
            let on_expressions = cols.iter().any(Option::is_none);
            indexes.push(UniqueIndex {
                name: index,
                primary: false,
                partial: partial || on_expressions,
                columns: cols.into_iter().flatten().collect(),
            });
        }
        // SQLite reads column names without regard to case: take them as it stores them.
        let requested: Option<Vec<String>> = requested.map(|names| {
            names
                .iter()
                .map(|n| {
                    columns
                        .iter()
                        .find(|c| c.name.eq_ignore_ascii_case(n))
                        .map_or_else(|| n.clone(), |c| c.name.clone())
                })
                .collect()
        });
        let key = crate::key::choose(
            &name,
            &columns,
            &indexes,
            requested.as_deref(),
            non_unique,
            "INTEGER or TEXT",
        )?;
        let resolved = TableName {
            schema: table.schema.clone(),
            table: name,
        };
        // SQLite keeps a value of any storage class in any column: a BLOB (or TEXT) in an
        // INTEGER key sorts after every number, outside the range the walk covers, so its row
        // would never be visited; a REAL stops the walk. Refused before anything is written.
        for column in key.columns() {
            let expected = if column.key_type.is_integer() {
                "integer"
            } else {
                "text"
            };
            let sql = format!(
                "SELECT count(*), min(typeof({c})) FROM {} WHERE typeof({c}) <> $1 AND {c} IS NOT NULL",
                resolved.quoted(),
                c = ident::quote(&column.name)
            );
            let (strays, kind): (i64, Option<String>) = sqlx::query_as(&sql)
                .bind(expected)
                .fetch_one(&self.pool)
                .await
                .map_err(Error::db(&context))?;
            if strays > 0 {
                return Err(Error::InvalidSettings(format!(
                    "key column {:?} of table {:?} holds {strays} value(s) stored as {} rather than {expected}: SQLite sorts them outside the key's range, so their rows would never be visited; store them as {expected} first",
                    column.name,
                    resolved.table,
                    kind.unwrap_or_default()
                )));
            }
        }
        Ok((resolved, key))
    }

    async fn key_bounds(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
    ) -> Result<Option<(Key, Key)>> {
        let (t, filter) = (table.quoted(), scope_filter(scope));
        let json = format!("json_array({})", key_list(key));
        let sql = format!(
            "SELECT (SELECT {json} FROM {t} {filter} ORDER BY {} LIMIT 1),
                    (SELECT {json} FROM {t} {filter} ORDER BY {} LIMIT 1)",
            key_order(key, "ASC"),
            key_order(key, "DESC")
        );
        let context = format!("reading the key range of {t}");
        let (min, max): (Option<String>, Option<String>) = sqlx::query_as(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(&context))?;
        let decode = |text: String| {
            serde_json::from_str(&text)
                .map_err(|e| Error::Corrupt(e.to_string()))
                .and_then(|v| Key::from_json(v, &context))
        };
        match (min, max) {
            (Some(min), Some(max)) => Ok(Some((decode(min)?, decode(max)?))),
            _ => Ok(None),
        }
    }

    async fn row_estimate(&self, table: &TableName) -> Result<Option<i64>> {
        let sql = format!("SELECT count(*) FROM {}", table.quoted());
        let n: i64 = sqlx::query_scalar(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db("counting rows"))?;
        Ok(Some(n))
    }

    async fn scope_estimate(&self, table: &TableName, scope: &str) -> Result<Option<i64>> {
        // SQLite keeps no estimate worth the name: count.
        let sql = format!("SELECT count(*) FROM {} WHERE ({scope})", table.quoted());
        let n: i64 = sqlx::query_scalar(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db("counting the rows of the scope"))?;
        Ok(Some(n))
    }

    async fn range_next(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
        lower: &Lower,
        max: &Key,
        size: i64,
        // SQLite has no statement timeout.
        _statement_ms: i64,
    ) -> Result<Option<(Key, Key)>> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(Error::db("finding the next key range"))?;
        Self::range_next_in(&mut conn, (table, key, scope), lower, max, size)
            .await
            .map_err(Error::db(format!(
                "finding the next key range of {}",
                table.quoted()
            )))
    }

    async fn sub_batch_perform(
        &self,
        mut spec: SubBatchSpec<'_>,
    ) -> std::result::Result<Option<Box<dyn PerformedSubBatch>>, Failure> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut performed = Self::perform_in(&mut tx, &spec).await;
        if performed.as_ref().is_err_and(super::escaped) {
            // As on PostgreSQL: walked again, keys inserted since count; an escape repeats.
            tx.rollback().await?;
            spec.whole_rest = false;
            tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            performed = Self::perform_in(&mut tx, &spec).await;
        }
        let Some((keys, rows)) = performed? else {
            tx.rollback().await?;
            return Ok(None);
        };
        Ok(Some(Box::new(SqlitePerformed {
            tx,
            keys,
            rows,
            same_database_store: self.same_database_store,
        })))
    }

    async fn sub_batch_try(&self, spec: SubBatchSpec<'_>) -> std::result::Result<u64, Failure> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let performed = Self::perform_in(&mut tx, &spec).await;
        tx.rollback().await?;
        Ok(performed?.map_or(0, |(_, rows)| rows))
    }

    /// SQLite has no vacuum workers, archiver, replicas or lock table to ask: only the probe
    /// means something here.
    async fn health_sample(&self, _table: &TableName, probe: Option<&str>) -> Result<HealthSample> {
        let mut sample = HealthSample {
            not_available: Some("not available on SQLite".into()),
            ..HealthSample::default()
        };
        if let Some(probe) = probe {
            let context = "running the health probe";
            let mut conn = self.pool.acquire().await.map_err(Error::db(context))?;
            sqlx::Executor::execute(&mut *conn, "PRAGMA query_only = 1")
                .await
                .map_err(Error::db(context))?;
            let answer = tokio::time::timeout(
                PROBE_TIMEOUT,
                sqlx::query_scalar::<_, Option<bool>>(probe).fetch_one(&mut *conn),
            )
            .await;
            sqlx::Executor::execute(&mut *conn, "PRAGMA query_only = 0")
                .await
                .map_err(Error::db(context))?;
            sample.probe = Some(match answer {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(sqlx::Error::RowNotFound)) => Err("it returned no row".into()),
                // Said in SQL's terms, not the driver's (which names Rust types).
                Ok(Err(sqlx::Error::ColumnDecode { .. })) => {
                    Err("it must return one boolean column (true or false, 1 or 0)".into())
                }
                Ok(Err(e)) => Err(Failure::from_sqlx(&e).message),
                Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
            });
        }
        Ok(sample)
    }
}

/// A sub-batch performed in its open SQLite transaction (which holds the write lock).
struct SqlitePerformed {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    keys: (Key, Key),
    rows: u64,
    same_database_store: bool,
}

#[async_trait]
impl PerformedSubBatch for SqlitePerformed {
    fn keys(&self) -> &(Key, Key) {
        &self.keys
    }

    fn rows(&self) -> u64 {
        self.rows
    }

    async fn commit(
        self: Box<Self>,
        how: SubBatchCommit<'_>,
    ) -> std::result::Result<SubBatchCommitted, Failure> {
        let SqlitePerformed {
            mut tx,
            keys: (_, end),
            rows,
            same_database_store,
        } = *self;
        let misuse = |what: &str| Failure::new("Internal", what.to_owned());
        match how {
            SubBatchCommit::Alone => {
                tx.commit().await?;
                Ok(SubBatchCommitted::Committed)
            }
            SubBatchCommit::Cursor(_) | SubBatchCommit::Finish(..) if !same_database_store => Err(
                misuse("a sub-batch on another database cannot commit the job's state"),
            ),
            SubBatchCommit::Cursor(cursor) => {
                let lease =
                    later(cursor.lease).map_err(|e| Failure::new("OutOfRange", e.to_string()))?;
                let done = sqlx::query(JOB_CHECKPOINT)
                    .bind(cursor.job_id)
                    .bind(cursor.attempts)
                    .bind(end.to_json())
                    .bind(rows as i64)
                    .bind(lease)
                    .bind(ts(now()))
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(SubBatchCommitted::Fenced);
                }
                tx.commit().await?;
                Ok(SubBatchCommitted::Committed)
            }
            SubBatchCommit::Finish(_, f) if f.then_create.is_some() => Err(misuse(
                "SQLite creates the next job with its own statement, not with a job's end",
            )),
            SubBatchCommit::Finish(cursor, f) => {
                let at = ts(now());
                let row = sqlx::query(JOB_FINISH_AT_CURSOR)
                    .bind(cursor.job_id)
                    .bind(cursor.attempts)
                    .bind(end.to_json())
                    .bind(rows as i64)
                    .bind(f.metrics.to_string())
                    .bind(f.sub_batch_size)
                    .bind(&f.worker)
                    .bind(&at)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Ok(SubBatchCommitted::Fenced);
                };
                let job = rows::job(&row).map_err(|e| Failure::new("Corrupt", e.to_string()))?;
                sqlx::query(JOB_LOG_INSERT)
                    .bind(job.id)
                    .bind(job.migration_id)
                    .bind("running")
                    .bind("succeeded")
                    .bind(None::<&str>)
                    .bind(None::<&str>)
                    .bind(&f.worker)
                    .bind(&at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(SubBatchCommitted::Finished {
                    job: Box::new(job),
                    next: None,
                })
            }
        }
    }
}
