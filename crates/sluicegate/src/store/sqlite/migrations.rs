//! The `migrations` table and its log on SQLite: queueing, status changes, claims and table
//! leases, settings. Each change is its statement and its log row's, in one `BEGIN IMMEDIATE`
//! transaction (SQLite's `RETURNING` cannot feed another statement, so the CTEs PostgreSQL
//! writes them as are statements here).

use std::time::Duration;

use sqlx::SqliteConnection;

use super::jobs::JOB_LOG_INSERT;
use super::{is_missing_table, is_unique_violation, later, now, ts, SqliteStore};
use crate::error::{Error, Result};
use crate::key::Lower;
use crate::model::{Migration, NewMigration, TargetIdentity};
use crate::status::MigrationEvent;
use crate::store::{
    check_hold, duration_ms, rows, MigrationResizeParams, MigrationSetParams,
    MigrationThrottleParams, MigrationTransitionParams,
};

const MIGRATION_INSERT: &str = "INSERT INTO sluicegate_migrations (name, job_kind, table_name,
    column_name, job_arguments, min_cursor, max_cursor, next_cursor, batch_size, sub_batch_size,
    max_batch_size, pause_ms, interval_ms, statement_timeout_ms, lock_timeout_ms, status,
    total_tuple_count, health_settings, target_sub_batch_ms, started_at, created_at, updated_at,
    key_columns, next_inclusive, scope, sub_batch_ceiling, target_id, target_display, key_unique,
    definition, after_ids, verify, citus, skip_null_keys, distinct_keys)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
        CASE WHEN $16 = 'active' THEN $20 END, $20, $20, $21, $22, $23, $24, $25, $26, $27, $28,
        $29, $30, $31, $32, $33)
    RETURNING *";

/// A lane, starting where its migration does.
const LANE_INSERT: &str = "INSERT INTO sluicegate_migration_lanes (migration_id, lane, relation,
    shard_id, node, next_cursor, next_inclusive, updated_at)
    SELECT id, $2, $3, $4, $5, next_cursor, next_inclusive, $6 FROM sluicegate_migrations WHERE id = $1";

const MIGRATION_LOG_INSERT: &str = "INSERT INTO sluicegate_migration_transition_logs (migration_id,
    previous_status, next_status, event, reason, actor, exception_class, exception_message, created_at,
    indicator)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

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
      -- `run --only`: among these migrations alone (a JSON array of ids).
      AND ($5 IS NULL OR m.id IN (SELECT value FROM json_each($5)))
      -- `--after`: not before every migration it runs after has finished.
      AND NOT EXISTS (SELECT 1 FROM json_each(m.after_ids) a
                      JOIN sluicegate_migrations d ON d.id = a.value
                      WHERE d.status <> 'finished')
    ORDER BY m.last_job_started_at IS NOT NULL, m.last_job_started_at, m.id
    LIMIT 1";

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

const MIGRATION_RANGE_EXHAUST: &str =
    "UPDATE sluicegate_migrations SET next_cursor = NULL, updated_at = $3
    WHERE id = $1 AND next_cursor = $2 AND next_inclusive = $4";

const MIGRATION_RESIZE: &str = "UPDATE sluicegate_migrations
    SET batch_size = $2, sub_batch_size = min($3, $2, coalesce(sub_batch_ceiling, $3)),
        updated_at = $4
    WHERE id = $1 AND status IN ('active', 'paused', 'finalizing')
      AND ($5 IS NULL OR batch_size = $5)
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
        statement_timeout_ms = coalesce($9, statement_timeout_ms),
        lock_timeout_ms = coalesce($10, lock_timeout_ms),
        updated_at = $8
    WHERE id = $1 AND status IN ('active', 'paused')
    RETURNING *";

/// A migration of unknown target (queued before schema v5) given one (its `set` row follows).
const MIGRATION_ADOPT_TARGET: &str = "UPDATE sluicegate_migrations
    SET target_id = $2, target_display = $3, updated_at = $4
    WHERE id = $1 AND target_id IS NULL AND status NOT IN ('finished', 'cancelled')
    RETURNING *";

/// The log row of an event that keeps the migration's status (`resize`, `throttle`), in
/// the open transaction that made the change.
pub(super) async fn log_same_status(
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
        .bind(None::<&str>)
        .execute(conn)
        .await
        .map(|_| ())
}

pub(super) async fn insert(store: &SqliteStore, m: &NewMigration) -> Result<Migration> {
    let context = format!("queueing migration {}", m.name);
    let at = ts(now());
    let mut tx = store.begin_immediate(&context).await?;
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
        .bind(duration_ms(m.interval))
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
        .bind(m.definition.as_deref())
        .bind(serde_json::to_string(&m.after).expect("ids serialize"))
        .bind(m.verify.as_deref())
        .bind(m.citus.map(|c| c.as_str()))
        .bind(m.key.walk().skip_nulls)
        .bind(m.key.walk().distinct)
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
    for lane in &m.lanes {
        sqlx::query(LANE_INSERT)
            .bind(migration.id)
            .bind(lane.lane)
            .bind(&lane.relation)
            .bind(lane.shard_id)
            .bind(&lane.node)
            .bind(&at)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
    }
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
        .bind(None::<&str>)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(migration)
}

pub(super) async fn transition_in(
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
        .bind(p.indicator.map(|i| i.as_str()))
        .execute(&mut *conn)
        .await
        .map_err(Error::db(&context))?;
    Ok(migration)
}

pub(super) async fn transition(
    store: &SqliteStore,
    p: &MigrationTransitionParams,
) -> Result<Migration> {
    let context = format!("changing migration {}", p.migration_id);
    let mut tx = store.begin_immediate(&context).await?;
    let migration = transition_in(&mut tx, p).await?;
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(migration)
}

/// [`Store::migration_retry`](crate::store::Store::migration_retry): the jobs' log rows written
/// one by one from Rust where PostgreSQL inserts them from a CTE.
pub(super) async fn retry(store: &SqliteStore, p: &MigrationTransitionParams) -> Result<Migration> {
    let context = format!("retrying migration {}", p.migration_id);
    let at = ts(now());
    let mut tx = store.begin_immediate(&context).await?;
    let migration = transition_in(&mut tx, p).await?;
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

/// [`Store::migration_claim`](crate::store::Store::migration_claim): the candidate, then its
/// table lease, in one `BEGIN IMMEDIATE` (one writer: no `SKIP LOCKED` to write it in one).
pub(super) async fn claim(
    store: &SqliteStore,
    worker: &str,
    lease: Duration,
    only: Option<i64>,
) -> Result<Option<Migration>> {
    claim_filtered(store, worker, lease, only, None).await
}

/// [`Store::migration_claim_among`](crate::store::Store::migration_claim_among): the claim of
/// [`claim`], among `ids` alone.
pub(super) async fn claim_among(
    store: &SqliteStore,
    worker: &str,
    lease: Duration,
    ids: &[i64],
) -> Result<Option<Migration>> {
    claim_filtered(store, worker, lease, None, Some(ids)).await
}

async fn claim_filtered(
    store: &SqliteStore,
    worker: &str,
    lease: Duration,
    only: Option<i64>,
    among: Option<&[i64]>,
) -> Result<Option<Migration>> {
    let context = "claiming a migration";
    let among = among.map(|ids| serde_json::to_string(ids).expect("ids serialize"));
    let at = now();
    let mut tx = store.begin_immediate(context).await?;
    let row = sqlx::query(MIGRATION_CLAIM_CANDIDATES)
        .bind(only)
        .bind(ts(at))
        .bind(store.target.as_ref().map(|t| t.id.as_str()))
        .bind(worker)
        .bind(among)
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

pub(super) async fn lease_release(store: &SqliteStore, migration_id: i64) -> Result<()> {
    sqlx::query(TABLE_LEASE_RELEASE)
        .bind(migration_id)
        .bind(ts(now()))
        .execute(&store.pool)
        .await
        .map_err(Error::db("releasing a table lease"))?;
    Ok(())
}

pub(super) async fn range_exhaust(
    store: &SqliteStore,
    migration_id: i64,
    expected: &Lower,
) -> Result<bool> {
    let done = sqlx::query(MIGRATION_RANGE_EXHAUST)
        .bind(migration_id)
        .bind(expected.key().to_json())
        .bind(ts(now()))
        .bind(expected.is_inclusive())
        .execute(&store.pool)
        .await
        .map_err(Error::db("closing a migration's range"))?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn set(store: &SqliteStore, p: &MigrationSetParams) -> Result<Option<Migration>> {
    let context = format!("changing the settings of migration {}", p.migration_id);
    let at = ts(now());
    let mut tx = store.begin_immediate(&context).await?;
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
        .bind(p.statement_timeout_ms)
        .bind(p.lock_timeout_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    let Some(m) = row.as_ref().map(rows::migration).transpose()? else {
        return Ok(None);
    };
    log_same_status(&mut tx, &m, MigrationEvent::Set, &p.reason, &p.actor, &at)
        .await
        .map_err(Error::db(&context))?;
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(Some(m))
}

pub(super) async fn adopt_target(
    store: &SqliteStore,
    migration_id: i64,
    target: &TargetIdentity,
    reason: &str,
    actor: &str,
) -> Result<Option<Migration>> {
    let context = format!("adopting migration {migration_id} for {}", target.display);
    let at = ts(now());
    let mut tx = store.begin_immediate(&context).await?;
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
    log_same_status(&mut tx, &m, MigrationEvent::Set, reason, actor, &at)
        .await
        .map_err(Error::db(&context))?;
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(Some(m))
}

pub(super) async fn resize(
    store: &SqliteStore,
    p: &MigrationResizeParams,
) -> Result<Option<Migration>> {
    let context = format!("resizing the batches of migration {}", p.migration_id);
    let at = ts(now());
    let mut tx = store.begin_immediate(&context).await?;
    let row = sqlx::query(MIGRATION_RESIZE)
        .bind(p.migration_id)
        .bind(p.batch_size)
        .bind(p.sub_batch_size)
        .bind(&at)
        .bind(p.expected_batch_size)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    let Some(m) = row.as_ref().map(rows::migration).transpose()? else {
        return Ok(None);
    };
    log_same_status(
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

pub(super) async fn hold_extend(
    store: &SqliteStore,
    id: i64,
    hold: Duration,
) -> Result<Option<Migration>> {
    check_hold(hold)?;
    let row = sqlx::query(MIGRATION_HOLD_EXTEND)
        .bind(id)
        .bind(later(hold)?)
        .bind(ts(now()))
        .fetch_optional(&store.pool)
        .await
        .map_err(Error::db(format!("extending the hold of migration {id}")))?;
    row.as_ref().map(rows::migration).transpose()
}

pub(super) async fn throttle(
    store: &SqliteStore,
    p: &MigrationThrottleParams,
) -> Result<Option<Migration>> {
    let context = format!("throttling migration {}", p.migration_id);
    let at = ts(now());
    let mut tx = store.begin_immediate(&context).await?;
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
    log_same_status(&mut tx, &m, MigrationEvent::Throttle, &p.log, &p.actor, &at)
        .await
        .map_err(Error::db(&context))?;
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(Some(m))
}
