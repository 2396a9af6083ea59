//! The `migrations` table and its log on PostgreSQL: queueing, status changes, claims and
//! table leases, settings. Each change and its log row are one statement (data-modifying CTEs).

use std::time::Duration;

use sqlx::types::Json;
use sqlx::PgConnection;

use super::{is_undefined_table, is_unique_violation, PgStore};
use crate::error::{Error, Result};
use crate::key::Lower;
use crate::model::{Migration, NewMigration, TargetIdentity};
use crate::store::{
    check_hold, duration_ms, rows, MigrationResizeParams, MigrationSetParams,
    MigrationThrottleParams, MigrationTransitionParams,
};

const MIGRATION_INSERT: &str = "
WITH m AS (
    INSERT INTO {s}.migrations (name, job_kind, table_name, column_name, job_arguments,
        min_cursor, max_cursor, next_cursor, batch_size, sub_batch_size, max_batch_size,
        pause_ms, interval_ms, statement_timeout_ms, lock_timeout_ms, status,
        total_tuple_count, health_settings, target_sub_batch_ms, started_at, key_columns,
        next_inclusive, scope, sub_batch_ceiling, target_id, target_display, key_unique,
        definition, after_ids, verify, citus, skip_null_keys, distinct_keys)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        CASE WHEN $16 = 'active' THEN now() END, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30,
        $31, $33, $34)
    RETURNING *
), lanes AS (
    -- Each lane starts where the migration does.
    INSERT INTO {s}.migration_lanes (migration_id, lane, relation, shard_id, node, next_cursor,
        next_inclusive)
    SELECT m.id, l.lane, l.relation, l.shard_id, l.node, m.next_cursor, m.next_inclusive
    FROM m, jsonb_to_recordset($32) AS l(lane integer, relation text, shard_id bigint, node text)
), log AS (
    INSERT INTO {s}.migration_transition_logs (migration_id, previous_status, next_status, event, actor)
    SELECT id, NULL, status, 'queue', $20 FROM m
)
SELECT * FROM m";

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
        reason, actor, exception_class, exception_message, indicator)
    SELECT id, $2, $3, $4, $5, $6, $7, $8, $10 FROM m
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
      -- `run --only`: among these migrations alone.
      AND ($5::bigint[] IS NULL OR m.id = ANY($5::bigint[]))
      -- `--after`: not before every migration it runs after has finished.
      AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(m.after_ids) a
                      JOIN {s}.migrations d ON d.id = a.value::bigint
                      WHERE d.status <> 'finished')
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
      AND ($6::bigint IS NULL OR batch_size = $6)
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
        statement_timeout_ms = coalesce($10, statement_timeout_ms),
        lock_timeout_ms = coalesce($11, lock_timeout_ms),
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

pub(super) async fn insert(store: &PgStore, m: &NewMigration) -> Result<Migration> {
    let row = sqlx::query(&store.q(MIGRATION_INSERT))
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
        .bind(m.definition.as_deref())
        .bind(Json(&m.after))
        .bind(m.verify.as_deref())
        .bind(m.citus.map(|c| c.as_str()))
        .bind(Json(&m.lanes))
        .bind(m.key.walk().skip_nulls)
        .bind(m.key.walk().distinct)
        .fetch_one(&store.pool)
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

pub(super) async fn transition_in(
    store: &PgStore,
    conn: &mut PgConnection,
    p: &MigrationTransitionParams,
) -> Result<Migration> {
    // The state machine again, below the engine: nothing illegal is ever written.
    p.check()?;
    let row = sqlx::query(&store.q(MIGRATION_TRANSITION))
        .bind(p.migration_id)
        .bind(p.from.as_str())
        .bind(p.to.as_str())
        .bind(p.event.as_str())
        .bind(p.reason.as_deref())
        .bind(&p.actor)
        .bind(p.failure.as_ref().map(|f| f.class.as_str()))
        .bind(p.failure.as_ref().map(|f| f.message.as_str()))
        .bind(p.hold_until.map(duration_ms))
        .bind(p.indicator.map(|i| i.as_str()))
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

pub(super) async fn transition(
    store: &PgStore,
    p: &MigrationTransitionParams,
) -> Result<Migration> {
    let mut conn = store
        .pool
        .acquire()
        .await
        .map_err(Error::db("changing a migration"))?;
    transition_in(store, &mut conn, p).await
}

/// [`Store::migration_retry`](crate::store::Store::migration_retry): the migration's change,
/// then every failed job and its log row in one CTE, in one transaction.
pub(super) async fn retry(store: &PgStore, p: &MigrationTransitionParams) -> Result<Migration> {
    let context = format!("retrying migration {}", p.migration_id);
    let mut tx = store.pool.begin().await.map_err(Error::db(&context))?;
    let migration = transition_in(store, &mut tx, p).await?;
    sqlx::query(&store.q(MIGRATION_RETRY_JOBS))
        .bind(p.migration_id)
        .bind(&p.actor)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(migration)
}

/// [`Store::migration_claim`](crate::store::Store::migration_claim): one statement, passing
/// over candidates other workers lock (`SKIP LOCKED`) and taking the table lease.
pub(super) async fn claim(
    store: &PgStore,
    worker: &str,
    lease: Duration,
    only: Option<i64>,
) -> Result<Option<Migration>> {
    claim_filtered(store, worker, lease, only, None).await
}

/// [`Store::migration_claim_among`](crate::store::Store::migration_claim_among): the claim of
/// [`claim`], among `ids` alone.
pub(super) async fn claim_among(
    store: &PgStore,
    worker: &str,
    lease: Duration,
    ids: &[i64],
) -> Result<Option<Migration>> {
    claim_filtered(store, worker, lease, None, Some(ids)).await
}

async fn claim_filtered(
    store: &PgStore,
    worker: &str,
    lease: Duration,
    only: Option<i64>,
    among: Option<&[i64]>,
) -> Result<Option<Migration>> {
    let row = sqlx::query(&store.q(MIGRATION_CLAIM))
        .bind(worker)
        .bind(duration_ms(lease))
        .bind(only)
        .bind(store.target.as_ref().map(|t| t.id.as_str()))
        .bind(among)
        .fetch_optional(&store.pool)
        .await
        .map_err(Error::db("claiming a migration"))?;
    row.as_ref().map(rows::migration).transpose()
}

pub(super) async fn lease_release(store: &PgStore, migration_id: i64) -> Result<()> {
    sqlx::query(&store.q(TABLE_LEASE_RELEASE))
        .bind(migration_id)
        .execute(&store.pool)
        .await
        .map_err(Error::db("releasing a table lease"))?;
    Ok(())
}

pub(super) async fn range_exhaust(
    store: &PgStore,
    migration_id: i64,
    expected: &Lower,
) -> Result<bool> {
    let done = sqlx::query(&store.q(MIGRATION_RANGE_EXHAUST))
        .bind(migration_id)
        .bind(Json(expected.key()))
        .bind(expected.is_inclusive())
        .execute(&store.pool)
        .await
        .map_err(Error::db("closing a migration's range"))?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn set(store: &PgStore, p: &MigrationSetParams) -> Result<Option<Migration>> {
    let row = sqlx::query(&store.q(MIGRATION_SET))
        .bind(p.migration_id)
        .bind(p.batch_size)
        .bind(p.sub_batch_size)
        .bind(p.max_batch_size)
        .bind(p.pause_ms)
        .bind(p.interval_ms)
        .bind(p.health.as_ref().map(Json))
        .bind(&p.reason)
        .bind(&p.actor)
        .bind(p.statement_timeout_ms)
        .bind(p.lock_timeout_ms)
        .fetch_optional(&store.pool)
        .await
        .map_err(Error::db(format!(
            "changing the settings of migration {}",
            p.migration_id
        )))?;
    row.as_ref().map(rows::migration).transpose()
}

pub(super) async fn adopt_target(
    store: &PgStore,
    migration_id: i64,
    target: &TargetIdentity,
    reason: &str,
    actor: &str,
) -> Result<Option<Migration>> {
    let row = sqlx::query(&store.q(MIGRATION_ADOPT_TARGET))
        .bind(migration_id)
        .bind(&target.id)
        .bind(&target.display)
        .bind(reason)
        .bind(actor)
        .fetch_optional(&store.pool)
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

pub(super) async fn resize(
    store: &PgStore,
    p: &MigrationResizeParams,
) -> Result<Option<Migration>> {
    let row = sqlx::query(&store.q(MIGRATION_RESIZE))
        .bind(p.migration_id)
        .bind(p.batch_size)
        .bind(p.sub_batch_size)
        .bind(&p.reason)
        .bind(&p.actor)
        .bind(p.expected_batch_size)
        .fetch_optional(&store.pool)
        .await
        .map_err(Error::db(format!(
            "resizing the batches of migration {}",
            p.migration_id
        )))?;
    row.as_ref().map(rows::migration).transpose()
}

pub(super) async fn hold_extend(
    store: &PgStore,
    id: i64,
    hold: Duration,
) -> Result<Option<Migration>> {
    check_hold(hold)?;
    let row = sqlx::query(&store.q(MIGRATION_HOLD_EXTEND))
        .bind(id)
        .bind(duration_ms(hold))
        .fetch_optional(&store.pool)
        .await
        .map_err(Error::db(format!("extending the hold of migration {id}")))?;
    row.as_ref().map(rows::migration).transpose()
}

pub(super) async fn throttle(
    store: &PgStore,
    p: &MigrationThrottleParams,
) -> Result<Option<Migration>> {
    let row = sqlx::query(&store.q(MIGRATION_THROTTLE))
        .bind(p.migration_id)
        .bind(p.pause_ms)
        .bind(p.reason.as_deref())
        .bind(&p.log)
        .bind(&p.actor)
        .fetch_optional(&store.pool)
        .await
        .map_err(Error::db(format!(
            "throttling migration {}",
            p.migration_id
        )))?;
    row.as_ref().map(rows::migration).transpose()
}
