//! PostgreSQL: every SQL statement Sluicegate sends to PostgreSQL, for the tracking tables
//! (in their own schema, `sluicegate` by default) and for the table being migrated.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde_json::Value;
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};

use std::sync::Arc;

use super::rows;
use super::{
    add_months, check_hold, duration_ms, month_start, Backend, Capabilities, JobCreateParams,
    JobCreated, JobRange, JobSplitParams, JobTransitionParams, MigrationResizeParams,
    MigrationSetParams, MigrationThrottleParams, MigrationTransitionParams, PartitionReport,
    PerformedSubBatch, Store, SubBatchCommit, SubBatchCommitted, SubBatchSpec, Target,
    PROBE_TIMEOUT,
};
use crate::dialect::key_sql::{self, key_order, key_row, scope_condition, scope_filter};
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::health::HealthSample;
use crate::ident::{self, TableName};
use crate::key::{Key, KeyColumn, KeySpec, KeyType, Lower, TableColumn, UniqueIndex};
use crate::kind::{SubBatch, SubBatchConnection};
use crate::model::{
    Job, JobCounts, JobTransition, Migration, MigrationTransition, NewMigration, TargetIdentity,
};
use crate::status::JobStatus;

/// Schema migrations, in order. `{s}` stands for the quoted tracking schema.
const SCHEMA_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("schema/postgres_v1.sql")),
    (2, include_str!("schema/postgres_v2.sql")),
    (3, include_str!("schema/postgres_v3.sql")),
    (4, include_str!("schema/postgres_v4.sql")),
    (5, include_str!("schema/postgres_v5.sql")),
];

const SETUP_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('sluicegate.setup:' || $1))";
const SCHEMA_VERSIONS_CREATE: &str = "CREATE TABLE IF NOT EXISTS {s}.schema_versions (
    version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())";
const SCHEMA_VERSIONS_EXISTS: &str = "SELECT to_regclass($1) IS NOT NULL";
const SCHEMA_VERSION_GET: &str = "SELECT max(version) FROM {s}.schema_versions";
const SCHEMA_VERSION_INSERT: &str = "INSERT INTO {s}.schema_versions (version) VALUES ($1)";

const MIGRATION_INSERT: &str = "
WITH m AS (
    INSERT INTO {s}.migrations (name, job_kind, table_name, column_name, job_arguments,
        min_cursor, max_cursor, next_cursor, batch_size, sub_batch_size, max_batch_size,
        pause_ms, interval_ms, statement_timeout_ms, lock_timeout_ms, status,
        total_tuple_count, health_settings, target_sub_batch_ms, started_at, key_columns,
        next_inclusive, scope, sub_batch_ceiling, target_id, target_display, key_unique)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        CASE WHEN $16 = 'active' THEN now() END, $21, $22, $23, $24, $25, $26, $27)
    RETURNING *
), log AS (
    INSERT INTO {s}.migration_transition_logs (migration_id, previous_status, next_status, event, actor)
    SELECT id, NULL, status, 'queue', $20 FROM m
)
SELECT * FROM m";
const MIGRATION_GET: &str = "SELECT * FROM {s}.migrations WHERE id = $1";
const MIGRATION_GET_BY_NAME: &str = "SELECT * FROM {s}.migrations WHERE name = $1
    ORDER BY id DESC LIMIT 1";
const MIGRATION_LIST: &str = "SELECT * FROM {s}.migrations ORDER BY id";
const MIGRATION_TRANSITION: &str = "
WITH m AS (
    UPDATE {s}.migrations SET
        status = $3,
        on_hold_until = CASE WHEN $4 = 'hold' THEN now() + $9 * interval '1 millisecond' END,
        held_since = CASE WHEN $4 = 'hold' THEN now() END,
        throttle_pause_ms = CASE WHEN $4 IN ('hold', 'release') THEN throttle_pause_ms ELSE 0 END,
        throttle_reason = CASE WHEN $4 IN ('hold', 'release') THEN throttle_reason END,
        started_at = CASE WHEN $3 = 'active' THEN coalesce(started_at, now()) ELSE started_at END,
        finished_at = CASE WHEN $3 IN ('finished', 'failed', 'cancelled') THEN now() END,
        updated_at = now()
    -- A hold starts only where none is in progress, a release ends only one that is: two
    -- workers seeing the same stop write one hold row.
    WHERE id = $1 AND status = $2
      AND ($4 <> 'hold' OR held_since IS NULL) AND ($4 <> 'release' OR held_since IS NOT NULL)
    RETURNING *
), log AS (
    INSERT INTO {s}.migration_transition_logs (migration_id, previous_status, next_status, event,
        reason, actor, exception_class, exception_message)
    SELECT id, $2, $3, $4, $5, $6, $7, $8 FROM m
)
SELECT * FROM m";
/// A re-check that still says stop: the hold goes on, with no log row.
const MIGRATION_HOLD_EXTEND: &str = "
UPDATE {s}.migrations SET on_hold_until = now() + $2 * interval '1 millisecond', updated_at = now()
WHERE id = $1 AND status = 'active' AND held_since IS NOT NULL
RETURNING *";
/// The worker's pause between jobs as a limit nears, with a `throttle` log row.
const MIGRATION_THROTTLE: &str = "
WITH m AS (
    UPDATE {s}.migrations SET throttle_pause_ms = $2, throttle_reason = $3, updated_at = now()
    WHERE id = $1 AND status = 'active'
    RETURNING *
), log AS (
    INSERT INTO {s}.migration_transition_logs (migration_id, previous_status, next_status, event,
        reason, actor)
    SELECT id, status, status, 'throttle', $4, $5 FROM m
)
SELECT * FROM m";
const MIGRATION_RETRY_JOBS: &str = "
WITH j AS (
    UPDATE {s}.jobs SET status = 'pending', attempts = 0, finished_at = NULL, updated_at = now()
    WHERE migration_id = $1 AND status = 'failed'
    RETURNING id, migration_id
), log AS (
    INSERT INTO {s}.job_transition_logs (job_id, migration_id, previous_status, next_status, worker)
    SELECT id, migration_id, 'failed', 'pending', $2 FROM j
)
SELECT count(*) FROM j";
/// Only migrations of the target this worker is connected to (`$4`): one of another database,
/// or of an unknown one (queued before schema v5, `target_id` NULL), is never claimed.
const MIGRATION_CLAIM: &str = "
WITH candidate AS (
    SELECT m.id, m.table_name FROM {s}.migrations m
    WHERE m.target_id = $4::text AND (($3::bigint IS NULL AND m.status = 'active'
            AND (m.on_hold_until IS NULL OR m.on_hold_until <= now())
            AND (m.interval_ms = 0 OR m.last_job_started_at IS NULL
                 OR extract(epoch FROM now() - m.last_job_started_at) * 1000 >= m.interval_ms))
           OR (m.id = $3 AND m.status IN ('active', 'finalizing'))
           -- A finalizing migration whose finalizer died or stopped: its table lease ran out
           -- or was given back, or is this worker's own (it took the migration over).
           OR ($3::bigint IS NULL AND m.status = 'finalizing'
               AND NOT EXISTS (SELECT 1 FROM {s}.table_leases l
                               WHERE l.table_name = m.table_name AND l.expires_at > now()
                                 AND l.worker <> $1)))
      AND NOT EXISTS (SELECT 1 FROM {s}.table_leases l
                      WHERE l.table_name = m.table_name AND l.migration_id <> m.id
                        AND l.expires_at > now())
    ORDER BY m.last_job_started_at NULLS FIRST, m.id
    LIMIT 1
    FOR UPDATE OF m SKIP LOCKED
), lease AS (
    INSERT INTO {s}.table_leases AS l (table_name, migration_id, worker, expires_at)
    SELECT table_name, id, $1, now() + $2 * interval '1 millisecond' FROM candidate
    ON CONFLICT (table_name) DO UPDATE
        SET migration_id = EXCLUDED.migration_id, worker = EXCLUDED.worker,
            expires_at = greatest(l.expires_at, EXCLUDED.expires_at)
        WHERE l.migration_id = EXCLUDED.migration_id OR l.expires_at <= now()
    RETURNING migration_id
)
SELECT m.* FROM {s}.migrations m JOIN lease ON lease.migration_id = m.id";
/// Only once no job of the migration runs under a live lease: those jobs still write the
/// table, and another migration of it must not start beside them.
const TABLE_LEASE_RELEASE: &str = "DELETE FROM {s}.table_leases WHERE migration_id = $1
    AND NOT EXISTS (SELECT 1 FROM {s}.jobs WHERE migration_id = $1 AND status = 'running'
                    AND lease_expires_at > now())";
const MIGRATION_RANGE_EXHAUST: &str =
    "UPDATE {s}.migrations SET next_cursor = NULL, updated_at = now()
    WHERE id = $1 AND next_cursor = $2 AND next_inclusive = $3";
const MIGRATION_RESIZE: &str = "
WITH m AS (
    UPDATE {s}.migrations
    SET batch_size = $2, sub_batch_size = least($3, $2, coalesce(sub_batch_ceiling, $3)),
        updated_at = now()
    WHERE id = $1 AND status IN ('active', 'paused', 'finalizing')
    RETURNING *
), log AS (
    INSERT INTO {s}.migration_transition_logs (migration_id, previous_status, next_status, event,
        reason, actor)
    SELECT id, status, status, 'resize', $4, $5 FROM m
)
SELECT * FROM m";
/// An operator's change (`sluicegate set`): each given value, an explicit sub-batch size also
/// as the tuner's ceiling, with its `set` log row.
const MIGRATION_SET: &str = "
WITH m AS (
    UPDATE {s}.migrations SET
        batch_size = coalesce($2, batch_size),
        sub_batch_size = coalesce($3, least(sub_batch_size, coalesce($2, batch_size))),
        sub_batch_ceiling = coalesce($3, sub_batch_ceiling),
        max_batch_size = coalesce($4, max_batch_size),
        pause_ms = coalesce($5, pause_ms),
        interval_ms = coalesce($6, interval_ms),
        health_settings = coalesce($7, health_settings),
        updated_at = now()
    WHERE id = $1 AND status IN ('active', 'paused')
    RETURNING *
), log AS (
    INSERT INTO {s}.migration_transition_logs (migration_id, previous_status, next_status, event,
        reason, actor)
    SELECT id, status, status, 'set', $8, $9 FROM m
)
SELECT * FROM m";

/// A migration of unknown target (queued before schema v5) given one, with its `set` log row.
const MIGRATION_ADOPT_TARGET: &str = "
WITH m AS (
    UPDATE {s}.migrations SET target_id = $2, target_display = $3, updated_at = now()
    WHERE id = $1 AND target_id IS NULL AND status NOT IN ('finished', 'cancelled')
    RETURNING *
), log AS (
    INSERT INTO {s}.migration_transition_logs (migration_id, previous_status, next_status, event,
        reason, actor)
    SELECT id, status, status, 'set', $4, $5 FROM m
)
SELECT * FROM m";

/// `{range}` is a query returning one row `(first, last)` of keys as jsonb: either the given
/// keys or the keyset walk over the target table (same database). The range is handed out when
/// its last key is the migration's last (or when it is empty). `MATERIALIZED`: inlined, the walk would
/// run once per reference to `r.first`/`r.last` (three times a job, seen with auto_explain).
const JOB_CREATE: &str = "
WITH r AS MATERIALIZED ({range}),
m AS (
    UPDATE {s}.migrations AS mg SET
        next_cursor = CASE WHEN r.first IS NOT NULL AND r.last <> mg.max_cursor THEN r.last END,
        next_inclusive = false,
        last_job_started_at = CASE WHEN r.first IS NULL THEN mg.last_job_started_at ELSE now() END,
        sub_batch_size = least($6, mg.batch_size),
        updated_at = now()
    FROM r
    WHERE mg.id = $1 AND mg.next_cursor = $2 AND mg.next_inclusive = $11
      AND mg.status IN ('active', 'finalizing')
      AND (mg.status = 'finalizing' OR mg.on_hold_until IS NULL OR mg.on_hold_until <= now())
      AND (mg.status = 'finalizing' OR mg.interval_ms = 0 OR mg.last_job_started_at IS NULL
           OR extract(epoch FROM now() - mg.last_job_started_at) * 1000 >= mg.interval_ms)
      AND EXISTS (SELECT 1 FROM {s}.table_leases l
                  WHERE l.table_name = mg.table_name AND l.migration_id = mg.id AND l.expires_at > now())
    RETURNING mg.id, mg.next_cursor, mg.next_inclusive, r.first, r.last
), lease AS (
    UPDATE {s}.table_leases SET expires_at = greatest(expires_at, now() + $9 * interval '1 millisecond')
    WHERE migration_id IN (SELECT id FROM m)
), j AS (
    INSERT INTO {s}.jobs (migration_id, min_cursor, max_cursor, batch_size, sub_batch_size, pause_ms,
        status, attempts, started_at, worker, lease_expires_at)
    SELECT id, first, last, $5, $6, $7, 'running', 1, now(), $8, now() + $9 * interval '1 millisecond'
    FROM m WHERE first IS NOT NULL
    RETURNING *
), log AS (
    INSERT INTO {s}.job_transition_logs (job_id, migration_id, previous_status, next_status, worker)
    SELECT id, migration_id, 'pending', 'running', worker FROM j
)
SELECT (SELECT count(*) FROM m) AS matched, (SELECT next_cursor FROM m) AS next_cursor,
    (SELECT next_inclusive FROM m) AS next_inclusive, j.*
FROM (SELECT 1) AS one LEFT JOIN j ON true";
const JOB_CREATE_GIVEN_RANGE: &str = "SELECT $3::jsonb AS first, $4::jsonb AS last";
const JOB_GET: &str = "SELECT * FROM {s}.jobs WHERE id = $1";
const JOB_LIST: &str =
    "SELECT * FROM {s}.jobs WHERE migration_id = $1 AND ($2::text IS NULL OR status = $2)
    ORDER BY id";
/// A failed job waits out a backoff before its next attempt: 0.2 s after its first, 0.6 s
/// after its second, 1.8 s after more.
const JOB_FIND_RETRIABLE: &str = "SELECT * FROM {s}.jobs
    WHERE migration_id = $1
      AND (status = 'pending'
           OR (status = 'failed' AND attempts < $2
               AND finished_at <= now() - CASE attempts WHEN 0 THEN 0 WHEN 1 THEN 200
                   WHEN 2 THEN 600 ELSE 1800 END * interval '1 millisecond')
           OR (status = 'running' AND lease_expires_at < now()))
    ORDER BY id LIMIT 1";
const JOB_TRANSITION: &str = "
WITH j AS (
    UPDATE {s}.jobs SET
        status = $3,
        attempts = $5,
        started_at = CASE WHEN $3 = 'running' THEN now() ELSE started_at END,
        finished_at = CASE WHEN $3 IN ('succeeded', 'failed') THEN now() END,
        worker = CASE WHEN $3 = 'running' THEN $6 ELSE worker END,
        lease_expires_at = CASE WHEN $3 = 'running' THEN now() + $7 * interval '1 millisecond' END,
        metrics = coalesce($8, metrics),
        sub_batch_size = coalesce($9, sub_batch_size),
        updated_at = now()
    WHERE id = $1 AND status = $2 AND attempts = $4 AND (NOT $10 OR lease_expires_at < now())
      -- No job of a held migration starts (finalizing ignores holds).
      AND ($3 <> 'running' OR NOT EXISTS (
          SELECT 1 FROM {s}.migrations mg
          WHERE mg.id = jobs.migration_id AND mg.status = 'active' AND mg.on_hold_until > now()))
    RETURNING *
), log AS (
    INSERT INTO {s}.job_transition_logs (job_id, migration_id, previous_status, next_status,
        exception_class, exception_message, worker)
    SELECT id, migration_id, $2, $3, $11, $12, $6 FROM j
)
SELECT * FROM j";
const JOB_SPLIT_FIRST: &str = "
WITH j AS (
    UPDATE {s}.jobs SET status = 'pending', attempts = 0, finished_at = NULL, max_cursor = $3,
        batch_size = $4, sub_batch_size = $5, updated_at = now()
    WHERE id = $1 AND status = 'failed' AND attempts = $2
    RETURNING *
), log AS (
    INSERT INTO {s}.job_transition_logs (job_id, migration_id, previous_status, next_status,
        exception_message, worker)
    SELECT id, migration_id, 'failed', 'pending', $6, $7 FROM j
)
SELECT * FROM j";
const JOB_SPLIT_SECOND: &str = "
INSERT INTO {s}.jobs (migration_id, min_cursor, max_cursor, batch_size, sub_batch_size, pause_ms, status)
SELECT migration_id, $2, $3, $4, $5, pause_ms, 'pending' FROM {s}.jobs WHERE id = $1
RETURNING *";
const JOB_CHECKPOINT: &str =
    "UPDATE {s}.jobs SET cursor = $3, rows_affected = rows_affected + $4,
    lease_expires_at = clock_timestamp() + $5 * interval '1 millisecond', updated_at = clock_timestamp()
    WHERE id = $1 AND attempts = $2 AND status = 'running'";
/// The two CTEs that end a job at its last sub-batch: `j` (cursor, rows, `running ->
/// succeeded`, fenced by attempt like the checkpoint it replaces) and `log`, its log row.
/// `clock_timestamp()`, not `now()`: the transaction began before the sub-batch ran, and the job
/// ends after it. Shared by [`JOB_FINISH_AT_CURSOR`] and [`JOB_FINISH_AND_CREATE`].
macro_rules! job_finish_ctes {
    () => {
        "
WITH j AS (
    UPDATE {s}.jobs SET status = 'succeeded', finished_at = clock_timestamp(),
        lease_expires_at = NULL, cursor = $3, rows_affected = rows_affected + $4,
        metrics = $5, sub_batch_size = coalesce($6, sub_batch_size), updated_at = clock_timestamp()
    WHERE id = $1 AND attempts = $2 AND status = 'running'
    RETURNING *
), log AS (
    INSERT INTO {s}.job_transition_logs (job_id, migration_id, previous_status, next_status, worker,
        created_at)
    SELECT id, migration_id, 'running', 'succeeded', $7, finished_at FROM j
)"
    };
}
/// A job's last sub-batch: its end (`job_finish_ctes!`), the finished job returned.
const JOB_FINISH_AT_CURSOR: &str = concat!(job_finish_ctes!(), "\nSELECT * FROM j");
/// [`JOB_FINISH_AT_CURSOR`], and when the job succeeds the migration's next job over a given
/// range, created running with its log row, the migration's next key moved on (compare-and-set)
/// and the table lease renewed: the whole of a job's bookkeeping between two jobs in the
/// statement that commits with its last sub-batch. One row per job, the finished one first.
const JOB_FINISH_AND_CREATE: &str = concat!(
    job_finish_ctes!(),
    ", m AS (
    UPDATE {s}.migrations AS mg SET
        next_cursor = CASE WHEN $10 <> mg.max_cursor THEN $10 END,
        next_inclusive = false,
        last_job_started_at = clock_timestamp(),
        sub_batch_size = least($12, mg.batch_size),
        updated_at = clock_timestamp()
    WHERE mg.id = $8 AND mg.next_cursor = $11 AND mg.next_inclusive = $16 AND mg.status = 'active'
      AND mg.interval_ms = 0
      AND (mg.on_hold_until IS NULL OR mg.on_hold_until <= clock_timestamp())
      AND EXISTS (SELECT 1 FROM j)
      AND EXISTS (SELECT 1 FROM {s}.table_leases l
                  WHERE l.table_name = mg.table_name AND l.migration_id = mg.id AND l.expires_at > now())
    RETURNING mg.id, mg.next_cursor, mg.next_inclusive
), lease AS (
    UPDATE {s}.table_leases
    SET expires_at = greatest(expires_at, clock_timestamp() + $15 * interval '1 millisecond')
    WHERE migration_id IN (SELECT id FROM m)
), j2 AS (
    INSERT INTO {s}.jobs (migration_id, min_cursor, max_cursor, batch_size, sub_batch_size, pause_ms,
        status, attempts, started_at, worker, lease_expires_at, created_at, updated_at)
    SELECT id, $9, $10, $13, $12, $14, 'running', 1, clock_timestamp(), $7,
        clock_timestamp() + $15 * interval '1 millisecond', clock_timestamp(), clock_timestamp()
    FROM m
    RETURNING *
), log2 AS (
    INSERT INTO {s}.job_transition_logs (job_id, migration_id, previous_status, next_status, worker,
        created_at)
    SELECT id, migration_id, 'pending', 'running', worker, started_at FROM j2
)
SELECT 0 AS ord, NULL::jsonb AS next_cursor, NULL::boolean AS next_inclusive, j.* FROM j
UNION ALL
SELECT 1, (SELECT next_cursor FROM m), (SELECT next_inclusive FROM m), j2.* FROM j2
ORDER BY ord"
);
const JOB_HEARTBEAT: &str = "
WITH j AS (
    UPDATE {s}.jobs SET lease_expires_at = now() + $3 * interval '1 millisecond', updated_at = now()
    WHERE id = $1 AND attempts = $2 AND status = 'running'
    RETURNING migration_id
), lease AS (
    UPDATE {s}.table_leases
    SET expires_at = greatest(expires_at, now() + $3 * interval '1 millisecond')
    WHERE migration_id IN (SELECT migration_id FROM j)
)
SELECT count(*) FROM j";
const JOB_COUNTS: &str = "SELECT
    count(*) FILTER (WHERE status = 'pending'),
    count(*) FILTER (WHERE status = 'running'),
    count(*) FILTER (WHERE status = 'failed'),
    count(*) FILTER (WHERE status = 'succeeded'),
    count(*) FILTER (WHERE status = 'failed' AND attempts >= $2),
    coalesce(sum(rows_affected), 0)::bigint,
    coalesce(sum(batch_size) FILTER (WHERE status = 'succeeded'), 0)::bigint,
    min(started_at),
    max(finished_at)
  FROM {s}.jobs WHERE migration_id = $1";
const JOB_RECENT_SUCCEEDED: &str =
    "SELECT * FROM {s}.jobs WHERE migration_id = $1 AND status = 'succeeded'
    ORDER BY finished_at DESC, id DESC LIMIT $2";
const JOB_TRANSITION_LIST: &str =
    "SELECT * FROM {s}.job_transition_logs WHERE job_id = $1 ORDER BY created_at, id";
const JOB_TRANSITION_LIST_BY_MIGRATION: &str =
    "SELECT * FROM {s}.job_transition_logs WHERE migration_id = $1 ORDER BY created_at, id";
const MIGRATION_TRANSITION_LIST: &str =
    "SELECT * FROM {s}.migration_transition_logs WHERE migration_id = $1 ORDER BY created_at, id";

const PARTITION_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext('sluicegate.partitions:' || $1))";
const PARTITION_LIST: &str = "SELECT c.relname::text FROM pg_catalog.pg_inherits i
    JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
    JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
    JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace
    WHERE p.relname = 'job_transition_logs' AND n.nspname = $1
    ORDER BY c.relname";
const PARTITION_PREFIX: &str = "job_transition_logs_p";

const TARGET_TABLE_FIND: &str = "SELECT n.nspname::text, c.relname::text
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = $1 AND c.relkind IN ('r', 'p')
      AND CASE WHEN $2::text IS NULL THEN n.nspname = ANY (current_schemas(false))
               ELSE n.nspname = $2 END
    ORDER BY array_position(current_schemas(false), n.nspname)
    LIMIT 1";
/// A table whose name matches `$1` but for case, for a "did you mean".
const TARGET_TABLE_FIND_ANY_CASE: &str = "SELECT n.nspname::text, c.relname::text
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE lower(c.relname) = lower($1) AND c.relkind IN ('r', 'p')
      AND CASE WHEN $2::text IS NULL THEN n.nspname = ANY (current_schemas(false))
               ELSE lower(n.nspname) = lower($2) END
    ORDER BY array_position(current_schemas(false), n.nspname)
    LIMIT 1";
/// The table's columns, with the type a key would be cast to (`format_type` without modifiers).
const TARGET_COLUMNS: &str = "SELECT a.attname::text, format_type(a.atttypid, NULL), a.attnotnull
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY a.attnum";
/// The table's valid unique indexes (the primary key first), their key columns in order.
const TARGET_UNIQUE_INDEXES: &str = "SELECT c.relname::text, i.indisprimary,
        (i.indpred IS NOT NULL OR i.indexprs IS NOT NULL),
        array(SELECT a.attname::text
              FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
              JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
    FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indisvalid
    ORDER BY NOT i.indisprimary, c.relname";
/// The target's identity: the cluster's system identifier (kept by every copy made of it with
/// `pg_basebackup`, so a replica promoted in its place is the same target) and the database.
const TARGET_IDENTITY: &str =
    "SELECT 'postgres:' || system_identifier::text || '/' || current_database()
    FROM pg_catalog.pg_control_system()";
/// The target's identity when `pg_control_system()` may not be executed: where the server
/// listens (`local` over a Unix socket) and the database.
const TARGET_IDENTITY_BY_ADDRESS: &str = "SELECT 'postgres:' || coalesce(host(inet_server_addr()), 'local')
    || ':' || coalesce(inet_server_port()::text, current_setting('port')) || '/' || current_database()";
/// How values are read on this database by a new session of this role that sets nothing
/// itself (psql's): `DateStyle` and `TimeZone` from `ALTER ROLE ... IN DATABASE`, `ALTER ROLE`,
/// `ALTER DATABASE` and `ALTER ROLE ALL`, the first that has one (PostgreSQL's own order). Our
/// sessions start with `DateStyle` ISO and `TimeZone` UTC (sqlx sends them at connect, and the
/// pool sets them again), which override all of these.
const TARGET_OWN_SETTINGS: &str = "
SELECT DISTINCT ON (lower(split_part(c.cfg, '=', 1)))
       lower(split_part(c.cfg, '=', 1)), substr(c.cfg, strpos(c.cfg, '=') + 1)
FROM pg_catalog.pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) AS c(cfg)
WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))
  AND s.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = session_user))
  AND lower(split_part(c.cfg, '=', 1)) IN ('datestyle', 'timezone')
ORDER BY lower(split_part(c.cfg, '=', 1)), s.setrole <> 0 DESC, s.setdatabase <> 0 DESC";
/// The same settings from the server's configuration files (`postgresql.conf`, `ALTER
/// SYSTEM`), where initdb writes the `datestyle` of the cluster's locale: readable by
/// superusers only; without it the server's own default is unknown and ours stands.
const TARGET_FILE_SETTINGS: &str = "SELECT DISTINCT ON (lower(name)) lower(name), setting
    FROM pg_catalog.pg_file_settings
    WHERE lower(name) IN ('datestyle', 'timezone') AND applied AND error IS NULL
    ORDER BY lower(name), seqno DESC";
/// Our sessions' own settings, put back after a value is parsed under the database's.
pub(crate) const SESSION_SETTINGS: &str = "SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC'";
const TARGET_ROW_ESTIMATE: &str =
    "SELECT reltuples::bigint FROM pg_catalog.pg_class WHERE oid = to_regclass($1)";

/// Everything the health indicators read, as one JSON row, in one round trip. Statistics of
/// other sessions need `pg_read_all_stats` and the archiver's directory `pg_monitor`; without
/// them the role reads what it may: its own sessions' transactions (and how many sessions of
/// other roles hold one: `backend_xid`/`backend_xmin` are public), the replicas streaming
/// (their lag is not), and the rest is NULL, `unknown`. `$1` is the quoted table.
/// The health sample: one query. `{archive_ready}` is [`ARCHIVE_READY`] when the role may
/// execute `pg_ls_archive_statusdir()`, else `NULL`: PostgreSQL checks EXECUTE when the query
/// starts, so a role without `pg_monitor` could not run the query at all with the call in it,
/// even behind a `CASE`.
const TARGET_HEALTH: &str = r"
WITH f AS (
    SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS stats,
           pg_has_role(current_user, 'pg_monitor', 'USAGE') AS monitor,
           pg_is_in_recovery() AS recovery,
           current_setting('archive_mode') <> 'off' AS archiving,
           to_regclass($1)::oid AS relid
)
SELECT json_build_object(
    'role', current_user,
    'stats', f.stats,
    'monitor', f.monitor,
    'archiving', f.archiving,
    'autovacuum', CASE WHEN f.stats THEN (
        SELECT coalesce(json_agg(json_build_object(
                   'pid', a.pid,
                   'wraparound', a.query LIKE '%(to prevent wraparound)%',
                   'seconds', extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start)))),
               '[]'::json)
        FROM pg_stat_progress_vacuum p JOIN pg_stat_activity a ON a.pid = p.pid
        WHERE p.relid = f.relid AND a.backend_type = 'autovacuum worker') END,
    'archive_ready', CASE WHEN f.monitor AND f.archiving THEN {archive_ready} END,
    'wal_lsn', CASE WHEN NOT f.recovery THEN pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END,
    'replicas', CASE WHEN NOT f.recovery THEN (
        SELECT coalesce(json_agg(json_build_object(
                   'name', coalesce(r.application_name, 'pid ' || r.pid),
                   'address', host(r.client_addr),
                   'lag_bytes', pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint,
                   'replay_lag_ms', extract(epoch FROM r.replay_lag) * 1000)),
               '[]'::json)
        FROM pg_stat_replication r) END,
    'replicas_hidden', CASE WHEN NOT f.stats AND NOT f.recovery THEN (
        SELECT count(*) FROM pg_stat_replication r WHERE r.replay_lsn IS NULL) ELSE 0 END,
    'sessions_hidden', CASE WHEN NOT f.stats THEN (
        SELECT count(*) FROM pg_stat_activity a
        WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
          AND a.backend_type IS NULL
          AND (a.backend_xid IS NOT NULL OR a.backend_xmin IS NOT NULL)
          -- Sluicegate's own (the tracking role's short bookkeeping transactions) are not
          -- what the indicator watches for.
          AND a.application_name IS DISTINCT FROM 'sluicegate') ELSE 0 END,
    'transactions', (
        SELECT coalesce(json_agg(t ORDER BY t.age_ms DESC), '[]'::json)
        FROM (SELECT a.pid, a.usename AS user, a.application_name AS application, a.state,
                     extract(epoch FROM now() - a.xact_start) * 1000 AS age_ms
              FROM pg_stat_activity a
              WHERE a.datname = current_database() AND a.backend_type = 'client backend'
                AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
              ORDER BY a.xact_start LIMIT 3) t),
    'locks', (
        SELECT coalesce(json_agg(json_build_object('pid', l.pid, 'mode', l.mode, 'granted', l.granted)),
               '[]'::json)
        FROM pg_locks l
        WHERE l.locktype = 'relation' AND l.relation = f.relid AND l.pid <> pg_backend_pid()
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND (NOT l.granted OR l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                                           'AccessExclusiveLock')))
)
FROM f";

/// WAL segments waiting for the archiver (needs EXECUTE on `pg_ls_archive_statusdir()`:
/// `pg_monitor`).
const ARCHIVE_READY: &str =
    r"(SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name ~ '^[0-9A-F]{24}\.ready$')";
/// Whether this role may list the archiver's status directory.
const ARCHIVE_READABLE: &str =
    "SELECT has_function_privilege('pg_catalog.pg_ls_archive_statusdir()', 'EXECUTE')";

/// The current row's key as jsonb: integers as numbers, anything else as its text.
fn key_json(key: &KeySpec) -> String {
    let cols: Vec<String> = key
        .columns()
        .iter()
        .map(|c| {
            let q = ident::quote(&c.name);
            if c.key_type.is_integer() {
                format!("{q}::bigint")
            } else {
                format!("{q}::text")
            }
        })
        .collect();
    format!("jsonb_build_array({})", cols.join(", "))
}

/// A key held in the jsonb expression `e` as a row of values of the key's types, to compare
/// with [`key_row`](key_sql::key_row): `(CAST((e)->>0 AS bigint), CAST((e)->>1 AS uuid))`. The type names come
/// from [`KeyType`](crate::key::KeyType)'s fixed list, never from the database or the user.
fn key_from_json(key: &KeySpec, e: &str) -> String {
    let parts: Vec<String> = key
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| format!("CAST(({e})->>{i} AS {})", c.key_type.sql_name()))
        .collect();
    format!("({})", parts.join(", "))
}

/// How PostgreSQL writes a bound key value: integers as `bigint`, the others as text cast to
/// the column's type (from [`KeyType`](crate::key::KeyType)'s fixed list).
fn pg_param(column: &KeyColumn, n: usize) -> String {
    if column.key_type.is_integer() {
        format!("${n}")
    } else {
        format!("CAST(${n} AS {})", column.key_type.sql_name())
    }
}

/// The keyset walk as one row `(first, last)` of jsonb keys: the first existing key (of a
/// row matching `scope`) from `lower` (inclusive or not) up to `max`, and the `size`-th one, or
/// the last one in range when fewer remain. `lower` and `max` are jsonb SQL expressions of ours
/// (parameters, a subquery), never user text; `scope` is the operator's condition, trusted like
/// `psql` input and checked at queue time. The comparisons are row values over the key's
/// columns, which its index serves, under the columns' own collations.
fn keyset_sql(
    table: &TableName,
    key: &KeySpec,
    scope: Option<&str>,
    (lower, inclusive, max): (&str, bool, &str),
    size: &str,
) -> String {
    let (t, row, json) = (table.quoted(), key_row(key, None), key_json(key));
    let op = if inclusive { ">=" } else { ">" };
    let in_range = format!(
        "FROM {t} WHERE {row} {op} {} AND {row} <= {}{}",
        key_from_json(key, lower),
        key_from_json(key, max),
        scope_condition(scope)
    );
    let (asc, desc) = (key_order(key, "ASC"), key_order(key, "DESC"));
    format!(
        "SELECT (SELECT {json} {in_range} ORDER BY {asc} LIMIT 1) AS first,
                coalesce((SELECT {json} {in_range} ORDER BY {asc} OFFSET {size} - 1 LIMIT 1),
                         (SELECT {json} {in_range} ORDER BY {desc} LIMIT 1)) AS last"
    )
}

const SCHEMA_CONTEXT: &str = "installing the tracking schema";

/// The PostgreSQL steps of [`super::schema_install`], in one transaction.
struct PgSchemaSteps {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    store: PgStore,
}

#[async_trait]
impl super::SchemaSteps for PgSchemaSteps {
    async fn prepare(&mut self) -> Result<()> {
        sqlx::query(SETUP_LOCK)
            .bind(&self.store.schema)
            .execute(&mut *self.tx)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        let create = format!("CREATE SCHEMA IF NOT EXISTS {}", self.store.quoted_schema);
        exec_raw(&mut self.tx, &create)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        exec_raw(&mut self.tx, &self.store.q(SCHEMA_VERSIONS_CREATE))
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))
    }

    async fn current(&mut self) -> Result<i64> {
        let current: Option<i64> = sqlx::query_scalar(&self.store.q(SCHEMA_VERSION_GET))
            .fetch_one(&mut *self.tx)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        Ok(current.unwrap_or(0))
    }

    async fn apply(&mut self, version: i64, script: &str) -> Result<()> {
        exec_raw(&mut self.tx, &self.store.q(script))
            .await
            .map_err(Error::db(format!("applying schema version {version}")))?;
        sqlx::query(&self.store.q(SCHEMA_VERSION_INSERT))
            .bind(version)
            .execute(&mut *self.tx)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await.map_err(Error::db(SCHEMA_CONTEXT))
    }
}

/// The tracking store on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    schema: String,
    quoted_schema: String,
    /// The target whose migrations this store's claims hand out (none without one).
    target: Option<TargetIdentity>,
}

impl PgStore {
    /// A store whose tables live in `schema`.
    pub fn new(pool: PgPool, schema: &str) -> Result<Self> {
        ident::validate(schema)?;
        Ok(Self {
            pool,
            schema: schema.to_owned(),
            quoted_schema: ident::quote(schema),
            target: None,
        })
    }

    /// The same store, claiming the migrations of `target` only (without one it claims none).
    pub fn for_target(mut self, target: TargetIdentity) -> Self {
        self.target = Some(target);
        self
    }

    /// The pool it uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A statement with the schema filled in.
    fn q(&self, template: &str) -> String {
        template.replace("{s}", &self.quoted_schema)
    }

    async fn job_transition_in(
        &self,
        conn: &mut PgConnection,
        p: &JobTransitionParams,
    ) -> Result<Job> {
        // The state machine again, below the engine: nothing illegal is ever written.
        p.check()?;
        let row = sqlx::query(&self.q(JOB_TRANSITION))
            .bind(p.job_id)
            .bind(p.from.as_str())
            .bind(p.to.as_str())
            .bind(p.expected_attempts)
            .bind(p.attempts)
            .bind(&p.worker)
            .bind(p.lease.map(duration_ms))
            .bind(p.metrics.clone().map(Json))
            .bind(p.sub_batch_size)
            .bind(p.require_expired_lease)
            .bind(p.failure.as_ref().map(|f| f.class.as_str()))
            .bind(p.failure.as_ref().map(|f| f.message.as_str()))
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::db(format!("changing job {} to {}", p.job_id, p.to)))?;
        match row {
            Some(row) => rows::job(&row),
            None => Err(Error::Conflict {
                what: format!(
                    "job {} (expected {} attempt {})",
                    p.job_id, p.from, p.expected_attempts
                ),
            }),
        }
    }

    async fn migration_transition_in(
        &self,
        conn: &mut PgConnection,
        p: &MigrationTransitionParams,
    ) -> Result<Migration> {
        // The state machine again, below the engine: nothing illegal is ever written.
        p.check()?;
        let row = sqlx::query(&self.q(MIGRATION_TRANSITION))
            .bind(p.migration_id)
            .bind(p.from.as_str())
            .bind(p.to.as_str())
            .bind(p.event.as_str())
            .bind(p.reason.as_deref())
            .bind(&p.actor)
            .bind(p.failure.as_ref().map(|f| f.class.as_str()))
            .bind(p.failure.as_ref().map(|f| f.message.as_str()))
            .bind(p.hold_until.map(duration_ms))
            .fetch_optional(&mut *conn)
            .await
            .map_err(Error::db(format!(
                "changing migration {} to {}",
                p.migration_id, p.to
            )))?;
        match row {
            Some(row) => rows::migration(&row),
            None => Err(Error::Conflict {
                what: format!("migration {} (expected {})", p.migration_id, p.from),
            }),
        }
    }
}

fn is_undefined_table(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") || db.code().as_deref() == Some("3F000"))
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::POSTGRES
    }

    async fn schema_install(&self) -> Result<Vec<i64>> {
        let tx = self.pool.begin().await.map_err(Error::db(SCHEMA_CONTEXT))?;
        let steps = PgSchemaSteps {
            tx,
            store: self.clone(),
        };
        super::schema_install(Box::new(steps), SCHEMA_MIGRATIONS).await
    }

    async fn schema_version(&self) -> Result<Option<i64>> {
        let context = "reading the tracking schema version";
        let exists: bool = sqlx::query_scalar(SCHEMA_VERSIONS_EXISTS)
            .bind(format!("{}.schema_versions", self.quoted_schema))
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(context))?;
        if !exists {
            return Ok(None);
        }
        sqlx::query_scalar(&self.q(SCHEMA_VERSION_GET))
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(context))
    }

    async fn migration_insert(&self, m: &NewMigration) -> Result<Migration> {
        let row = sqlx::query(&self.q(MIGRATION_INSERT))
            .bind(&m.name)
            .bind(&m.job_kind)
            .bind(&m.table_name)
            .bind(m.key.display_names())
            .bind(Json(&m.job_arguments))
            .bind(Json(&m.min_value))
            .bind(Json(&m.max_value))
            .bind(m.next_start.as_ref().map(|l| Json(l.key())))
            .bind(m.batch_size)
            .bind(m.sub_batch_size)
            .bind(m.max_batch_size)
            .bind(m.pause_ms)
            .bind(duration_ms(m.interval))
            .bind(m.statement_timeout_ms)
            .bind(m.lock_timeout_ms)
            .bind(m.status.as_str())
            .bind(m.total_tuple_count)
            .bind(Json(&m.health))
            .bind(m.target_sub_batch_ms)
            .bind(&m.actor)
            .bind(Json(&m.key))
            .bind(m.next_start.as_ref().is_none_or(Lower::is_inclusive))
            .bind(m.scope.as_deref())
            .bind(m.sub_batch_ceiling)
            .bind(&m.target.id)
            .bind(&m.target.display)
            .bind(m.key_unique)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::DuplicateMigration(m.name.clone())
                } else if is_undefined_table(&e) {
                    Error::SchemaMissing
                } else {
                    Error::db(format!("queueing migration {}", m.name))(e)
                }
            })?;
        rows::migration(&row)
    }

    async fn migration_get(&self, id: i64) -> Result<Option<Migration>> {
        let row = sqlx::query(&self.q(MIGRATION_GET))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(format!("reading migration {id}")))?;
        row.as_ref().map(rows::migration).transpose()
    }

    async fn migration_get_by_name(&self, name: &str) -> Result<Option<Migration>> {
        let row = sqlx::query(&self.q(MIGRATION_GET_BY_NAME))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(format!("reading migration {name:?}")))?;
        row.as_ref().map(rows::migration).transpose()
    }

    async fn migration_list(&self) -> Result<Vec<Migration>> {
        let rows = sqlx::query(&self.q(MIGRATION_LIST))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| {
                if is_undefined_table(&e) {
                    Error::SchemaMissing
                } else {
                    Error::db("listing migrations")(e)
                }
            })?;
        rows.iter().map(rows::migration).collect()
    }

    async fn migration_transition(&self, p: &MigrationTransitionParams) -> Result<Migration> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(Error::db("changing a migration"))?;
        self.migration_transition_in(&mut conn, p).await
    }

    async fn migration_retry(&self, p: &MigrationTransitionParams) -> Result<Migration> {
        let context = format!("retrying migration {}", p.migration_id);
        let mut tx = self.pool.begin().await.map_err(Error::db(&context))?;
        let migration = self.migration_transition_in(&mut tx, p).await?;
        sqlx::query(&self.q(MIGRATION_RETRY_JOBS))
            .bind(p.migration_id)
            .bind(&p.actor)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        tx.commit().await.map_err(Error::db(&context))?;
        Ok(migration)
    }

    async fn migration_claim(
        &self,
        worker: &str,
        lease: Duration,
        only: Option<i64>,
    ) -> Result<Option<Migration>> {
        let row = sqlx::query(&self.q(MIGRATION_CLAIM))
            .bind(worker)
            .bind(duration_ms(lease))
            .bind(only)
            .bind(self.target.as_ref().map(|t| t.id.as_str()))
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db("claiming a migration"))?;
        row.as_ref().map(rows::migration).transpose()
    }

    async fn table_lease_release(&self, migration_id: i64) -> Result<()> {
        sqlx::query(&self.q(TABLE_LEASE_RELEASE))
            .bind(migration_id)
            .execute(&self.pool)
            .await
            .map_err(Error::db("releasing a table lease"))?;
        Ok(())
    }

    async fn migration_range_exhaust(&self, migration_id: i64, expected: &Lower) -> Result<bool> {
        let done = sqlx::query(&self.q(MIGRATION_RANGE_EXHAUST))
            .bind(migration_id)
            .bind(Json(expected.key()))
            .bind(expected.is_inclusive())
            .execute(&self.pool)
            .await
            .map_err(Error::db("closing a migration's range"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn migration_set(&self, p: &MigrationSetParams) -> Result<Option<Migration>> {
        let row = sqlx::query(&self.q(MIGRATION_SET))
            .bind(p.migration_id)
            .bind(p.batch_size)
            .bind(p.sub_batch_size)
            .bind(p.max_batch_size)
            .bind(p.pause_ms)
            .bind(p.interval_ms)
            .bind(p.health.as_ref().map(Json))
            .bind(&p.reason)
            .bind(&p.actor)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(format!(
                "changing the settings of migration {}",
                p.migration_id
            )))?;
        row.as_ref().map(rows::migration).transpose()
    }

    async fn migration_adopt_target(
        &self,
        migration_id: i64,
        target: &TargetIdentity,
        reason: &str,
        actor: &str,
    ) -> Result<Option<Migration>> {
        let row = sqlx::query(&self.q(MIGRATION_ADOPT_TARGET))
            .bind(migration_id)
            .bind(&target.id)
            .bind(&target.display)
            .bind(reason)
            .bind(actor)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::DuplicateMigration(format!(
                        "migration {migration_id} would duplicate a live migration of {}",
                        target.display
                    ))
                } else {
                    Error::db(format!("adopting migration {migration_id}"))(e)
                }
            })?;
        row.as_ref().map(rows::migration).transpose()
    }

    async fn migration_resize(&self, p: &MigrationResizeParams) -> Result<Option<Migration>> {
        let row = sqlx::query(&self.q(MIGRATION_RESIZE))
            .bind(p.migration_id)
            .bind(p.batch_size)
            .bind(p.sub_batch_size)
            .bind(&p.reason)
            .bind(&p.actor)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(format!(
                "resizing the batches of migration {}",
                p.migration_id
            )))?;
        row.as_ref().map(rows::migration).transpose()
    }

    async fn migration_hold_extend(&self, id: i64, hold: Duration) -> Result<Option<Migration>> {
        check_hold(hold)?;
        let row = sqlx::query(&self.q(MIGRATION_HOLD_EXTEND))
            .bind(id)
            .bind(duration_ms(hold))
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(format!("extending the hold of migration {id}")))?;
        row.as_ref().map(rows::migration).transpose()
    }

    async fn migration_throttle(&self, p: &MigrationThrottleParams) -> Result<Option<Migration>> {
        let row = sqlx::query(&self.q(MIGRATION_THROTTLE))
            .bind(p.migration_id)
            .bind(p.pause_ms)
            .bind(p.reason.as_deref())
            .bind(&p.log)
            .bind(&p.actor)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(format!(
                "throttling migration {}",
                p.migration_id
            )))?;
        row.as_ref().map(rows::migration).transpose()
    }

    async fn job_create(&self, p: &JobCreateParams) -> Result<JobCreated> {
        // The range: given keys ($3, $4), or the keyset walk from the expected next key ($2,
        // inclusive when $11) to the migration's last key, over $10 keys.
        let (range_sql, given, keyset_size, walk_timeout) = match &p.range {
            JobRange::Given { min, max } => (
                JOB_CREATE_GIVEN_RANGE.to_owned(),
                Some((min, max)),
                None,
                None,
            ),
            JobRange::Keyset {
                table,
                key,
                scope,
                size,
                statement_ms,
            } => {
                let max = self.q("(SELECT max_cursor FROM {s}.migrations WHERE id = $1)");
                let inclusive = p.expected_next.is_inclusive();
                let bounds = ("$2::jsonb", inclusive, max.as_str());
                let sql = keyset_sql(table, key, scope.as_deref(), bounds, "$10");
                (sql, None, Some((*size).max(1)), Some(*statement_ms))
            }
        };
        let context = format!("creating a job of migration {}", p.migration_id);
        // The walk runs under the migration's statement timeout, not the database's default
        // (our own integer, safe to format).
        let mut tx = match walk_timeout {
            Some(ms) => self
                .pool
                .begin_with(format!(
                    "BEGIN; SET LOCAL statement_timeout = {}",
                    ms.max(1)
                ))
                .await
                .map_err(Error::db(&context))?,
            None => self.pool.begin().await.map_err(Error::db(&context))?,
        };
        // The schema goes in before the range: the range holds the table's and column's quoted
        // names, user text that may itself contain `{s}` (a table named `a{s}b`).
        let sql = self.q(JOB_CREATE).replacen("{range}", &range_sql, 1);
        let row = sqlx::query(&sql)
            .bind(p.migration_id)
            .bind(Json(p.expected_next.key()))
            .bind(given.map(|(min, _)| Json(min)))
            .bind(given.map(|(_, max)| Json(max)))
            .bind(p.batch_size)
            .bind(p.sub_batch_size)
            .bind(p.pause_ms)
            .bind(&p.worker)
            .bind(duration_ms(p.lease))
            .bind(keyset_size)
            .bind(p.expected_next.is_inclusive())
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        tx.commit().await.map_err(Error::db(&context))?;
        let matched: i64 = row.try_get("matched").map_err(rows::decode)?;
        if matched == 0 {
            return Ok(JobCreated::NotNow);
        }
        let id: Option<i64> = row.try_get("id").map_err(rows::decode)?;
        if id.is_none() {
            return Ok(JobCreated::Exhausted);
        }
        Ok(JobCreated::Created(
            Box::new(rows::job(&row)?),
            rows::next_start(&row)?,
        ))
    }

    async fn job_get(&self, id: i64) -> Result<Option<Job>> {
        let row = sqlx::query(&self.q(JOB_GET))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(format!("reading job {id}")))?;
        row.as_ref().map(rows::job).transpose()
    }

    async fn job_list(&self, migration_id: i64, status: Option<JobStatus>) -> Result<Vec<Job>> {
        let rows = sqlx::query(&self.q(JOB_LIST))
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
        let row = sqlx::query(&self.q(JOB_FIND_RETRIABLE))
            .bind(migration_id)
            .bind(max_attempts)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db("finding a job to retry"))?;
        row.as_ref().map(rows::job).transpose()
    }

    async fn job_transition(&self, p: &JobTransitionParams) -> Result<Job> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(Error::db("changing a job"))?;
        self.job_transition_in(&mut conn, p).await
    }

    async fn job_split(&self, p: &JobSplitParams) -> Result<(Job, Job)> {
        let t = &p.transition;
        let context = format!("splitting job {}", t.job_id);
        let mut tx = self.pool.begin().await.map_err(Error::db(&context))?;
        let second = sqlx::query(&self.q(JOB_SPLIT_SECOND))
            .bind(t.job_id)
            .bind(Json(&p.second_min))
            .bind(Json(&p.second_max))
            .bind(p.batch_size)
            .bind(p.sub_batch_size)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        let second = rows::job(&second)?;
        let message = format!(
            "split: keys up to {} stay in this job, {}..{} moved to job {}",
            p.first_max, p.second_min, p.second_max, second.id
        );
        let first = sqlx::query(&self.q(JOB_SPLIT_FIRST))
            .bind(t.job_id)
            .bind(t.expected_attempts)
            .bind(Json(&p.first_max))
            .bind(p.batch_size)
            .bind(p.sub_batch_size)
            .bind(message)
            .bind(&t.worker)
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
        tx.commit().await.map_err(Error::db(&context))?;
        Ok((rows::job(&first)?, second))
    }

    async fn job_checkpoint(
        &self,
        job_id: i64,
        attempts: i32,
        cursor: &Key,
        rows: i64,
        lease: Duration,
    ) -> Result<bool> {
        let done = sqlx::query(&self.q(JOB_CHECKPOINT))
            .bind(job_id)
            .bind(attempts)
            .bind(Json(cursor))
            .bind(rows)
            .bind(duration_ms(lease))
            .execute(&self.pool)
            .await
            .map_err(Error::db(format!("recording progress of job {job_id}")))?;
        Ok(done.rows_affected() == 1)
    }

    async fn job_heartbeat(&self, job_id: i64, attempts: i32, lease: Duration) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(&self.q(JOB_HEARTBEAT))
            .bind(job_id)
            .bind(attempts)
            .bind(duration_ms(lease))
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(format!("renewing the lease of job {job_id}")))?;
        Ok(n == 1)
    }

    async fn job_counts(&self, migration_id: i64, max_attempts: i32) -> Result<JobCounts> {
        let row = sqlx::query(&self.q(JOB_COUNTS))
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
            first_started_at: row.try_get(7).map_err(rows::decode)?,
            last_finished_at: row.try_get(8).map_err(rows::decode)?,
        })
    }

    async fn job_recent_succeeded(&self, migration_id: i64, limit: i64) -> Result<Vec<Job>> {
        let rows = sqlx::query(&self.q(JOB_RECENT_SUCCEEDED))
            .bind(migration_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db("reading recent jobs"))?;
        rows.iter().map(rows::job).collect()
    }

    async fn job_transition_list(&self, job_id: i64) -> Result<Vec<JobTransition>> {
        let rows = sqlx::query(&self.q(JOB_TRANSITION_LIST))
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
        let rows = sqlx::query(&self.q(JOB_TRANSITION_LIST_BY_MIGRATION))
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
        let rows = sqlx::query(&self.q(MIGRATION_TRANSITION_LIST))
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
        let context = "maintaining the job log partitions";
        let mut tx = self.pool.begin().await.map_err(Error::db(context))?;
        sqlx::query(PARTITION_LOCK)
            .bind(&self.schema)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(context))?;
        let existing: Vec<String> = sqlx::query_scalar(PARTITION_LIST)
            .bind(&self.schema)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(context))?;
        let mut report = PartitionReport::default();
        let this_month = month_start(now.year(), now.month());
        for start in [this_month, add_months(this_month, 1)] {
            let name = partition_name(start);
            if existing.contains(&name) {
                continue;
            }
            let end = add_months(start, 1);
            let ddl = format!(
                "CREATE TABLE IF NOT EXISTS {}.{} PARTITION OF {}.job_transition_logs \
                 FOR VALUES FROM ('{}') TO ('{}')",
                self.quoted_schema,
                ident::quote(&name),
                self.quoted_schema,
                start.format("%Y-%m-%d 00:00:00+00"),
                end.format("%Y-%m-%d 00:00:00+00"),
            );
            exec_raw(&mut tx, &ddl)
                .await
                .map_err(Error::db(format!("creating partition {name}")))?;
            report.created.push(name);
        }
        let cutoff = add_months(this_month, -(retention_months as i32));
        for name in &existing {
            let Some(start) = partition_month(name) else {
                continue;
            };
            if add_months(start, 1) <= cutoff {
                exec_raw(
                    &mut tx,
                    &format!("DROP TABLE {}.{}", self.quoted_schema, ident::quote(name)),
                )
                .await
                .map_err(Error::db(format!("dropping partition {name}")))?;
                report.dropped.push(name.clone());
            }
        }
        tx.commit().await.map_err(Error::db(context))?;
        Ok(report)
    }

    async fn log_partitions_list(&self) -> Result<Vec<String>> {
        sqlx::query_scalar(PARTITION_LIST)
            .bind(&self.schema)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db("listing the job log partitions"))
    }
}

/// The name of the partition holding the month starting at `start`.
pub fn partition_name(start: NaiveDate) -> String {
    format!("{PARTITION_PREFIX}{}", start.format("%Y%m"))
}

fn partition_month(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix(PARTITION_PREFIX)?;
    if digits.len() != 6 {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: u32 = digits[4..].parse().ok()?;
    NaiveDate::from_ymd_opt(year, month, 1)
}

/// Runs one or more statements with no parameters (DDL). A plain function, not a trait
/// method, so the borrow of the connection does not leak into the trait's `Send` analysis.
async fn exec_raw(conn: &mut PgConnection, sql: &str) -> std::result::Result<(), sqlx::Error> {
    sqlx::Executor::execute(conn, sql).await.map(|_| ())
}

/// The table being migrated, on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pool: PgPool,
    /// The tracking store's statements that commit with a sub-batch, when it lives in this
    /// same database.
    tracking: Option<Arc<TrackingSql>>,
    /// The health query for this role (with or without the archiver's directory), built at
    /// the first sample: what a role may execute does not change under a running worker.
    health_sql: Arc<tokio::sync::OnceCell<String>>,
}

/// The tracking statements a sub-batch commits with (schema filled in).
#[derive(Debug)]
struct TrackingSql {
    /// The job's cursor and lease ([`JOB_CHECKPOINT`]).
    checkpoint: String,
    /// The job's end ([`JOB_FINISH_AT_CURSOR`]).
    finish: String,
    /// The job's end and the next job's start ([`JOB_FINISH_AND_CREATE`]).
    finish_and_create: String,
}

impl PgTarget {
    /// Runs the user's probe read-only, with a statement timeout, and rolls it back. Its own
    /// errors are the answer (`Err`); only losing the connection is an error of ours.
    async fn probe(&self, probe: &str) -> Result<std::result::Result<Option<bool>, String>> {
        let context = "running the health probe";
        let mut tx = self.pool.begin().await.map_err(Error::db(context))?;
        let setup = format!(
            "SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = {}",
            PROBE_TIMEOUT.as_millis()
        );
        sqlx::Executor::execute(&mut *tx, setup.as_str())
            .await
            .map_err(Error::db(context))?;
        let answer = sqlx::query(probe).fetch_one(&mut *tx).await;
        let _ = tx.rollback().await;
        let row = match answer {
            Ok(row) => row,
            Err(sqlx::Error::RowNotFound) => return Ok(Err("it returned no row".into())),
            Err(e) => return Ok(Err(Failure::from_sqlx(&e).message)),
        };
        // Said in SQL's terms, not the driver's (which names Rust types).
        use sqlx::{Column, TypeInfo};
        let Some(column) = row.columns().first() else {
            return Ok(Err(
                "it must return one boolean column; it returned none".into()
            ));
        };
        let ty = column.type_info().name().to_ascii_lowercase();
        if ty != "bool" {
            return Ok(Err(format!(
                "it must return one boolean column; its first column is of type {ty}"
            )));
        }
        Ok(row
            .try_get::<Option<bool>, _>(0)
            .map_err(|_| "it must return one boolean column".to_owned()))
    }

    /// A target on `pool`; `same_database_store` makes each sub-batch commit the job cursor
    /// in its own transaction (exactly-once).
    pub fn new(pool: PgPool, same_database_store: Option<&PgStore>) -> Self {
        Self {
            pool,
            health_sql: Arc::default(),
            tracking: same_database_store.map(|store| {
                Arc::new(TrackingSql {
                    checkpoint: store.q(JOB_CHECKPOINT),
                    finish: store.q(JOB_FINISH_AT_CURSOR),
                    finish_and_create: store.q(JOB_FINISH_AND_CREATE),
                })
            }),
        }
    }

    /// Inside the open transaction: finds the sub-batch's keys and performs the kind on them.
    /// `None` when no key is left in range.
    async fn perform_in(
        conn: &mut PgConnection,
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
        let predicate = key_sql::range_predicate(spec.key, spec.scope, spec.table, None, pg_param);
        let mut batch = SubBatch {
            connection: SubBatchConnection::Postgres(conn),
            table: spec.table,
            key: spec.key,
            scope: spec.scope,
            param: pg_param,
            predicate: &predicate,
            arguments: spec.arguments,
            start: &start,
            end: &end,
        };
        let rows = super::perform_catching_panics(spec.kind, &mut batch).await?;
        super::check_reach(spec, Backend::Postgres, (&start, &end), rows)?;
        Ok(Some(((start, end), rows)))
    }

    async fn range_next_in(
        conn: &mut PgConnection,
        (table, key, scope): (&TableName, &KeySpec, Option<&str>),
        lower: &Lower,
        max: &Key,
        size: i64,
    ) -> std::result::Result<Option<(Key, Key)>, sqlx::Error> {
        let bounds = ("$1::jsonb", lower.is_inclusive(), "$2::jsonb");
        let sql = keyset_sql(table, key, scope, bounds, "$3");
        let (first, last): (Option<Json<Value>>, Option<Json<Value>>) = sqlx::query_as(&sql)
            .bind(Json(lower.key()))
            .bind(Json(max))
            .bind(size.max(1))
            .fetch_one(&mut *conn)
            .await?;
        let decode = |v: Json<Value>| {
            Key::from_json(v.0, "a key read by the walk")
                .map_err(|e| sqlx::Error::Decode(e.to_string().into()))
        };
        let Some(first) = first.map(decode).transpose()? else {
            return Ok(None);
        };
        let last = last
            .map(decode)
            .transpose()?
            .unwrap_or_else(|| first.clone());
        Ok(Some((first, last)))
    }

    async fn begin(
        &self,
        spec: &SubBatchSpec<'_>,
    ) -> std::result::Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        // Our own integers, not user text: safe to format.
        self.pool
            .begin_with(format!(
                "BEGIN; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}",
                spec.timeouts.statement_ms.max(1),
                spec.timeouts.lock_ms.max(1)
            ))
            .await
    }
}

#[async_trait]
impl Target for PgTarget {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::POSTGRES
    }

    async fn identity(&self) -> Result<String> {
        let context = "reading the target database's identity";
        match sqlx::query_scalar(TARGET_IDENTITY)
            .fetch_one(&self.pool)
            .await
        {
            Ok(id) => Ok(id),
            // EXECUTE on pg_control_system() revoked from this role: the server's address
            // instead (less stable: another address of the same server is another target,
            // whose migrations are then skipped, never run elsewhere).
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
                sqlx::query_scalar(TARGET_IDENTITY_BY_ADDRESS)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(Error::db(context))
            }
            Err(e) => Err(Error::db(context)(e)),
        }
    }

    async fn key_canonical(&self, key: &KeySpec, value: &Key, flag: &str) -> Result<Key> {
        if key.columns().iter().all(|c| c.key_type.is_integer()) {
            return Ok(value.clone());
        }
        let context = format!("reading {flag} {value} as the target database does");
        let mut tx = self.pool.begin().await.map_err(Error::db(&context))?;
        exec_raw(&mut tx, "SET TRANSACTION READ ONLY")
            .await
            .map_err(Error::db(&context))?;
        // The database's own settings, for this transaction only.
        let mut own: Vec<(String, String)> = Vec::new();
        if let Ok(file) = sqlx::query_as::<_, (String, String)>(TARGET_FILE_SETTINGS)
            .fetch_all(&mut *tx)
            .await
        {
            own = file;
        } else {
            // Not readable (not a superuser): the failed statement aborted the transaction.
            tx.rollback().await.map_err(Error::db(&context))?;
            tx = self.pool.begin().await.map_err(Error::db(&context))?;
            exec_raw(&mut tx, "SET TRANSACTION READ ONLY")
                .await
                .map_err(Error::db(&context))?;
        }
        let set: Vec<(String, String)> = sqlx::query_as(TARGET_OWN_SETTINGS)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        for (name, setting) in set {
            own.retain(|(n, _)| *n != name);
            own.push((name, setting));
        }
        for (name, setting) in &own {
            sqlx::query("SELECT set_config($1, $2, true)")
                .bind(name)
                .bind(setting)
                .execute(&mut *tx)
                .await
                .map_err(Error::db(&context))?;
        }
        // Parsed under the database's settings; JSON prints dates and times in ISO 8601 whatever
        // the DateStyle (a timestamptz with its offset), which reads back the same anywhere.
        let mut unambiguous = Vec::with_capacity(value.values().len());
        for (column, v) in key.columns().iter().zip(value.values()) {
            let Some(text) = v.as_str().filter(|_| !column.key_type.is_integer()) else {
                unambiguous.push(None);
                continue;
            };
            let sql = format!(
                "SELECT to_jsonb(CAST($1 AS {})) #>> '{{}}'",
                column.key_type.sql_name()
            );
            let parsed: std::result::Result<String, sqlx::Error> = sqlx::query_scalar(&sql)
                .bind(text)
                .fetch_one(&mut *tx)
                .await;
            match parsed {
                Ok(parsed) => unambiguous.push(Some(parsed)),
                Err(sqlx::Error::Database(db))
                    if db.code().is_some_and(|c| c.starts_with("22")) =>
                {
                    return Err(Error::InvalidSettings(format!(
                        "{flag} {text:?} is not a value of column {:?} ({}): {}",
                        column.name,
                        column.key_type.sql_name(),
                        db.message()
                    )))
                }
                Err(e) => return Err(Error::db(&context)(e)),
            }
        }
        // Printed as our sessions print it (ISO, UTC): the walk's own text for it.
        exec_raw(
            &mut tx,
            SESSION_SETTINGS.replace("SET ", "SET LOCAL ").as_str(),
        )
        .await
        .map_err(Error::db(&context))?;
        let mut values = Vec::with_capacity(value.values().len());
        for ((column, v), parsed) in key.columns().iter().zip(value.values()).zip(unambiguous) {
            let Some(parsed) = parsed else {
                values.push(v.clone());
                continue;
            };
            let sql = format!("SELECT CAST($1 AS {})::text", column.key_type.sql_name());
            let canonical: String = sqlx::query_scalar(&sql)
                .bind(parsed)
                .fetch_one(&mut *tx)
                .await
                .map_err(Error::db(&context))?;
            values.push(Value::String(canonical));
        }
        tx.rollback().await.map_err(Error::db(&context))?;
        Ok(Key(values))
    }

    async fn key_resolve(
        &self,
        table: &TableName,
        requested: Option<&[String]>,
        non_unique: bool,
    ) -> Result<(TableName, KeySpec)> {
        let context = format!("looking up table {}", table.quoted());
        let found: Option<(String, String)> = sqlx::query_as(TARGET_TABLE_FIND)
            .bind(&table.table)
            .bind(table.schema.as_deref())
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(&context))?;
        let Some((schema, name)) = found else {
            // PostgreSQL reads an unquoted name in lower case: a table whose name differs
            // only in case is probably the one meant.
            let near: Option<(String, String)> = sqlx::query_as(TARGET_TABLE_FIND_ANY_CASE)
                .bind(&table.table)
                .bind(table.schema.as_deref())
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::db(&context))?;
            let hint = near
                .map(|(schema, name)| {
                    let exact = TableName {
                        schema: Some(schema),
                        table: name,
                    };
                    format!(
                        " (did you mean {}? unquoted names are read in lower case: --table '{}')",
                        exact.quoted(),
                        exact.quoted()
                    )
                })
                .unwrap_or_default();
            return Err(Error::UnknownTable {
                table: display_table(table),
                hint,
            });
        };
        let resolved = TableName {
            schema: Some(schema),
            table: name,
        };
        let columns: Vec<(String, String, bool)> = sqlx::query_as(TARGET_COLUMNS)
            .bind(resolved.quoted())
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db(&context))?;
        let columns: Vec<TableColumn> = columns
            .into_iter()
            .map(|(name, type_name, not_null)| TableColumn {
                key_type: KeyType::from_sql_name(&type_name),
                name,
                type_name,
                not_null,
            })
            .collect();
        let indexes: Vec<(String, bool, bool, Vec<String>)> = sqlx::query_as(TARGET_UNIQUE_INDEXES)
            .bind(resolved.quoted())
            .fetch_all(&self.pool)
            .await
            .map_err(Error::db(&context))?;
        let indexes: Vec<UniqueIndex> = indexes
            .into_iter()
            .map(|(name, primary, partial, columns)| UniqueIndex {
                name,
                primary,
                partial,
                columns,
            })
            .collect();
        let key = crate::key::choose(
            &display_table(table),
            &columns,
            &indexes,
            requested,
            non_unique,
            KeyType::SUPPORTED_POSTGRES,
        )?;
        Ok((resolved, key))
    }

    async fn key_bounds(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
    ) -> Result<Option<(Key, Key)>> {
        let (t, json) = (table.quoted(), key_json(key));
        let filter = scope_filter(scope);
        let sql = format!(
            "SELECT (SELECT {json} FROM {t} {filter} ORDER BY {} LIMIT 1),
                    (SELECT {json} FROM {t} {filter} ORDER BY {} LIMIT 1)",
            key_order(key, "ASC"),
            key_order(key, "DESC")
        );
        let context = format!("reading the key range of {t}");
        let (min, max): (Option<Json<Value>>, Option<Json<Value>>) = sqlx::query_as(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(&context))?;
        match (min, max) {
            (Some(min), Some(max)) => Ok(Some((
                Key::from_json(min.0, &context)?,
                Key::from_json(max.0, &context)?,
            ))),
            _ => Ok(None),
        }
    }

    async fn row_estimate(&self, table: &TableName) -> Result<Option<i64>> {
        let estimate: Option<i64> = sqlx::query_scalar(TARGET_ROW_ESTIMATE)
            .bind(table.quoted())
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db("estimating rows"))?
            .flatten();
        if let Some(n) = estimate.filter(|n| *n >= 0) {
            return Ok(Some(n));
        }
        // Never analyzed: count once.
        let sql = format!("SELECT count(*) FROM {}", table.quoted());
        let n: i64 = sqlx::query_scalar(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db("counting rows"))?;
        Ok(Some(n))
    }

    async fn scope_estimate(&self, table: &TableName, scope: &str) -> Result<Option<i64>> {
        // A sampled count: the share of matching rows in about 30,000 rows read from whole
        // pages (TABLESAMPLE SYSTEM), times the table's estimate. The planner's own estimate
        // of an arbitrary condition is often a default selectivity (0.5% for `a % 4 = 0`), far
        // off; a small table is counted outright.
        let context = "estimating the rows of a condition";
        let Some(total) = self.row_estimate(table).await? else {
            return Ok(None);
        };
        let t = table.quoted();
        let percent = if total <= 100_000 {
            100.0
        } else {
            (30_000.0 / total as f64 * 100.0).clamp(0.01, 100.0)
        };
        let sql = format!(
            "SELECT count(*) FILTER (WHERE ({scope})), count(*) FROM {t} TABLESAMPLE SYSTEM ($1)"
        );
        let (matched, seen): (i64, i64) = sqlx::query_as(&sql)
            .bind(percent)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(context))?;
        if seen == 0 {
            return Ok(Some(0));
        }
        Ok(Some(
            (total as f64 * matched as f64 / seen as f64).round() as i64
        ))
    }

    async fn range_next(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
        lower: &Lower,
        max: &Key,
        size: i64,
        statement_ms: i64,
    ) -> Result<Option<(Key, Key)>> {
        // Under the migration's statement timeout (our own integer, safe to format).
        let mut tx = self
            .pool
            .begin_with(format!(
                "BEGIN READ ONLY; SET LOCAL statement_timeout = {}",
                statement_ms.max(1)
            ))
            .await
            .map_err(Error::db("finding the next key range"))?;
        let found = Self::range_next_in(&mut tx, (table, key, scope), lower, max, size)
            .await
            .map_err(Error::db(format!(
                "finding the next key range of {}",
                table.quoted()
            )))?;
        let _ = tx.rollback().await;
        Ok(found)
    }

    async fn sub_batch_perform(
        &self,
        mut spec: SubBatchSpec<'_>,
    ) -> std::result::Result<Option<Box<dyn PerformedSubBatch>>, Failure> {
        let mut tx = self.begin(&spec).await?;
        let mut performed = Self::perform_in(&mut tx, &spec).await;
        if performed.as_ref().is_err_and(super::escaped) {
            // Keys inserted into the range since it was walked are the one innocent cause:
            // walked again, the sub-batch counts them; an escape repeats.
            tx.rollback().await?;
            spec.whole_rest = false;
            tx = self.begin(&spec).await?;
            performed = Self::perform_in(&mut tx, &spec).await;
        }
        let Some((keys, rows)) = performed? else {
            tx.rollback().await?;
            return Ok(None);
        };
        Ok(Some(Box::new(PgPerformed {
            tx,
            keys,
            rows,
            tracking: self.tracking.clone(),
        })))
    }

    async fn sub_batch_try(&self, spec: SubBatchSpec<'_>) -> std::result::Result<u64, Failure> {
        let mut tx = self.begin(&spec).await?;
        let performed = Self::perform_in(&mut tx, &spec).await;
        tx.rollback().await?;
        Ok(performed?.map_or(0, |(_, rows)| rows))
    }

    async fn health_sample(&self, table: &TableName, probe: Option<&str>) -> Result<HealthSample> {
        #[derive(serde::Deserialize)]
        struct Row {
            role: String,
            stats: bool,
            monitor: bool,
            archiving: bool,
            autovacuum: Option<Vec<crate::health::AutovacuumWorker>>,
            archive_ready: Option<i64>,
            wal_lsn: Option<i64>,
            replicas: Option<Vec<crate::health::Replica>>,
            replicas_hidden: i64,
            sessions_hidden: i64,
            transactions: Option<Vec<crate::health::OpenTransaction>>,
            locks: Option<Vec<crate::health::TableLock>>,
        }
        let context = "reading health indicators";
        let sql = self
            .health_sql
            .get_or_try_init(|| async {
                let readable: bool = sqlx::query_scalar(ARCHIVE_READABLE)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(Error::db(context))?;
                let archive_ready = if readable {
                    ARCHIVE_READY
                } else {
                    "NULL::bigint"
                };
                Ok::<_, Error>(TARGET_HEALTH.replace("{archive_ready}", archive_ready))
            })
            .await?;
        let Json(row): Json<Row> = sqlx::query_scalar(sql)
            .bind(table.quoted())
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(context))?;
        // What the role may not read is named with the grant that would make it readable.
        let grant = |role: &str| crate::health::grant_statement(role, &row.role);
        let mut sample = HealthSample {
            not_available: None,
            stats_grant: (!row.stats).then(|| grant("pg_read_all_stats")),
            monitor_grant: (!row.monitor).then(|| grant("pg_monitor")),
            role: Some(row.role.clone()),
            replicas_hidden: row.replicas_hidden,
            sessions_hidden: row.sessions_hidden,
            autovacuum: row.autovacuum,
            archiving: Some(row.archiving),
            archive_ready: row.archive_ready,
            wal_lsn: row.wal_lsn,
            replicas: row.replicas,
            transactions: row.transactions,
            locks: row.locks,
            probe: None,
        };
        if let Some(probe) = probe {
            sample.probe = Some(self.probe(probe).await?);
        }
        Ok(sample)
    }
}

/// A sub-batch performed in its open PostgreSQL transaction.
struct PgPerformed {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    keys: (Key, Key),
    rows: u64,
    tracking: Option<Arc<TrackingSql>>,
}

#[async_trait]
impl PerformedSubBatch for PgPerformed {
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
        let PgPerformed {
            mut tx,
            keys: (_, end),
            rows,
            tracking,
        } = *self;
        let end = &end;
        let (cursor, finish) = match how {
            SubBatchCommit::Alone => {
                tx.commit().await?;
                return Ok(SubBatchCommitted::Committed);
            }
            SubBatchCommit::Cursor(cursor) => (cursor, None),
            SubBatchCommit::Finish(cursor, finish) => (cursor, Some(finish)),
        };
        let Some(sql) = tracking else {
            return Err(Failure::new(
                "Internal",
                "a sub-batch on another database cannot commit the job's state",
            ));
        };
        let Some(f) = finish else {
            let done = sqlx::query(&sql.checkpoint)
                .bind(cursor.job_id)
                .bind(cursor.attempts)
                .bind(Json(end))
                .bind(rows as i64)
                .bind(duration_ms(cursor.lease))
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(SubBatchCommitted::Fenced);
            }
            tx.commit().await?;
            return Ok(SubBatchCommitted::Committed);
        };
        let create = f.then_create.as_ref().and_then(|c| match &c.range {
            JobRange::Given { min, max } => Some((c, min, max)),
            JobRange::Keyset { .. } => None,
        });
        let query = sqlx::query(if create.is_some() {
            &sql.finish_and_create
        } else {
            &sql.finish
        })
        .bind(cursor.job_id)
        .bind(cursor.attempts)
        .bind(Json(end))
        .bind(rows as i64)
        .bind(Json(&f.metrics))
        .bind(f.sub_batch_size)
        .bind(&f.worker);
        let query = match create {
            Some((c, min, max)) => query
                .bind(c.migration_id)
                .bind(Json(min))
                .bind(Json(max))
                .bind(Json(c.expected_next.key()))
                .bind(c.sub_batch_size)
                .bind(c.batch_size)
                .bind(c.pause_ms)
                .bind(duration_ms(c.lease))
                .bind(c.expected_next.is_inclusive()),
            None => query,
        };
        let rows_back = query.fetch_all(&mut *tx).await?;
        let corrupt = |e: Error| Failure::new("Corrupt", e.to_string());
        let Some(row) = rows_back.first() else {
            tx.rollback().await?;
            return Ok(SubBatchCommitted::Fenced);
        };
        let job = rows::job(row).map_err(corrupt)?;
        let next = match rows_back.get(1) {
            Some(row) => Some((
                Box::new(rows::job(row).map_err(corrupt)?),
                rows::next_start(row).map_err(corrupt)?,
            )),
            None => None,
        };
        tx.commit().await?;
        Ok(SubBatchCommitted::Finished {
            job: Box::new(job),
            next,
        })
    }
}

fn display_table(table: &TableName) -> String {
    match &table.schema {
        Some(schema) => format!("{schema}.{}", table.table),
        None => table.table.clone(),
    }
}
