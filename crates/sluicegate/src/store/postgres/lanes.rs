//! A migration's lanes on PostgreSQL: listing them with their running job, creating a job in
//! a lane (compare-and-set on the lane's next key, one running job per lane), handing a
//! lane's keys out, holding and releasing lanes, and recording a shard found on another
//! node. Each change and its log row are one statement or one transaction.

use sqlx::types::Json;
use sqlx::Row;

use super::PgStore;
use crate::error::{Error, Result};
use crate::key::{Key, Lower};
use crate::model::{Job, Lane};
use crate::store::{duration_ms, rows, JobCreateParams, JobCreated, LaneHoldParams};

/// The lanes and, for each, its running job whose lease has not run out.
const LANE_LIST: &str = "
SELECT l.*, (SELECT j.id FROM {s}.jobs j
             WHERE j.migration_id = l.migration_id AND j.lane = l.lane AND j.status = 'running'
               AND j.lease_expires_at > now()
             ORDER BY j.id LIMIT 1) AS running_job
FROM {s}.migration_lanes l WHERE l.migration_id = $1 ORDER BY l.lane";

/// A job over the given keys ($3, $4) of lane $11, created `running` if the lane's next key is
/// still $2 (inclusive when $10), the lane is not held and has no running job, and the
/// migration may start a job now (as for a job of the whole table). The lane's next key moves
/// past the job, or to none when the job reaches the migration's last key.
const JOB_CREATE_IN_LANE: &str = "
WITH l AS (
    UPDATE {s}.migration_lanes AS ln SET
        next_cursor = CASE WHEN $4::jsonb <> mg.max_cursor THEN $4::jsonb END,
        next_inclusive = false,
        updated_at = now()
    FROM {s}.migrations AS mg
    WHERE ln.migration_id = $1 AND ln.lane = $11 AND mg.id = ln.migration_id
      AND ln.next_cursor = $2 AND ln.next_inclusive = $10
      AND (ln.on_hold_until IS NULL OR ln.on_hold_until <= now())
      AND NOT EXISTS (SELECT 1 FROM {s}.jobs o
                      WHERE o.migration_id = $1 AND o.lane = $11 AND o.status = 'running'
                        AND o.lease_expires_at > now())
      AND mg.status IN ('active', 'finalizing')
      AND (mg.status = 'finalizing' OR mg.on_hold_until IS NULL OR mg.on_hold_until <= now())
      AND (mg.status = 'finalizing' OR mg.interval_ms = 0 OR mg.last_job_started_at IS NULL
           OR extract(epoch FROM now() - mg.last_job_started_at) * 1000 >= mg.interval_ms)
      AND EXISTS (SELECT 1 FROM {s}.table_leases tl
                  WHERE tl.table_name = mg.table_name AND tl.migration_id = mg.id
                    AND tl.expires_at > now())
    RETURNING ln.migration_id AS id, ln.next_cursor, ln.next_inclusive
), m AS (
    UPDATE {s}.migrations AS mg SET last_job_started_at = now(),
        sub_batch_size = least($6, mg.batch_size), updated_at = now()
    FROM l WHERE mg.id = l.id
    RETURNING mg.id
), lease AS (
    UPDATE {s}.table_leases SET expires_at = greatest(expires_at, now() + $9 * interval '1 millisecond')
    WHERE migration_id IN (SELECT id FROM m)
), j AS (
    INSERT INTO {s}.jobs (migration_id, min_cursor, max_cursor, batch_size, sub_batch_size, pause_ms,
        status, attempts, started_at, worker, lease_expires_at, lane)
    SELECT id, $3, $4, $5, $6, $7, 'running', 1, now(), $8, now() + $9 * interval '1 millisecond', $11
    FROM l
    RETURNING *
), log AS (
    INSERT INTO {s}.job_transition_logs (job_id, migration_id, previous_status, next_status, worker)
    SELECT id, migration_id, 'pending', 'running', worker FROM j
)
SELECT (SELECT count(*) FROM l) AS matched, (SELECT next_cursor FROM l) AS next_cursor,
    (SELECT next_inclusive FROM l) AS next_inclusive, j.*
FROM (SELECT 1) AS one LEFT JOIN j ON true";

const MIGRATION_LOCK: &str = "SELECT id FROM {s}.migrations WHERE id = $1 FOR UPDATE";

const LANE_EXHAUST: &str = "
UPDATE {s}.migration_lanes SET next_cursor = NULL, updated_at = now()
WHERE migration_id = $1 AND lane = $2 AND next_cursor = $3 AND next_inclusive = $4";

/// The migration's range is handed out once no lane has keys left.
const MIGRATION_EXHAUST_IF_LANES_ARE: &str = "
UPDATE {s}.migrations SET next_cursor = NULL, updated_at = now()
WHERE id = $1 AND next_cursor IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM {s}.migration_lanes
                  WHERE migration_id = $1 AND next_cursor IS NOT NULL)
RETURNING id";

const MIGRATION_NEXT_IS_NULL: &str = "SELECT next_cursor IS NULL FROM {s}.migrations WHERE id = $1";

/// Holds ($3 set: until then) or releases ($3 null) lanes $2, with one `lane_hold` or
/// `lane_release` row when a lane changed: a hold of a lane not held, a release of a held
/// one. A hold of a held lane (its re-check due or not) only moves its re-check on: one
/// hold lasts from its `lane_hold` row to its `lane_release` row. Returns the lanes changed.
const LANE_HOLD: &str = "
WITH old AS (
    SELECT lane, on_hold_until AS before FROM {s}.migration_lanes
    WHERE migration_id = $1 AND lane = ANY($2)
    FOR UPDATE
), l AS (
    UPDATE {s}.migration_lanes AS ln SET on_hold_until = $3,
        hold_reason = CASE WHEN $3 IS NOT NULL THEN $4 END, updated_at = now()
    FROM old
    WHERE ln.migration_id = $1 AND ln.lane = old.lane AND ($3 IS NOT NULL OR old.before IS NOT NULL)
    RETURNING ln.lane, ($3 IS NULL OR old.before IS NULL) AS changed
), log AS (
    INSERT INTO {s}.migration_transition_logs (migration_id, previous_status, next_status, event,
        reason, actor)
    SELECT m.id, m.status, m.status, CASE WHEN $3 IS NULL THEN 'lane_release' ELSE 'lane_hold' END,
        $4, $5
    FROM {s}.migrations m
    WHERE m.id = $1 AND m.status IN ('active', 'finalizing') AND EXISTS (SELECT 1 FROM l WHERE changed)
)
SELECT count(*) FILTER (WHERE changed) FROM l";

const LANE_MOVE: &str = "
WITH l AS (
    UPDATE {s}.migration_lanes SET node = $3, updated_at = now()
    WHERE migration_id = $1 AND lane = $2 AND node <> $3
    RETURNING lane, relation, shard_id
), log AS (
    INSERT INTO {s}.migration_transition_logs (migration_id, previous_status, next_status, event,
        reason, actor)
    SELECT m.id, m.status, m.status, 'lane_move', $4, $5
    FROM {s}.migrations m WHERE m.id = $1 AND EXISTS (SELECT 1 FROM l)
      AND m.status IN ('active', 'finalizing')
)
SELECT count(*) FROM l";

pub(super) async fn list(store: &PgStore, migration_id: i64) -> Result<Vec<Lane>> {
    let found = sqlx::query(&store.q(LANE_LIST))
        .bind(migration_id)
        .fetch_all(&store.pool)
        .await
        .map_err(Error::db(format!(
            "reading the lanes of migration {migration_id}"
        )))?;
    found.iter().map(rows::lane).collect()
}

/// [`Store::job_create`](crate::store::Store::job_create) in a lane: given keys only (a
/// lane's walk runs on its node, never inside this statement).
pub(super) async fn create_job(
    store: &PgStore,
    p: &JobCreateParams,
    lane: i32,
    (min, max): (&Key, &Key),
) -> Result<JobCreated> {
    let row = sqlx::query(&store.q(JOB_CREATE_IN_LANE))
        .bind(p.migration_id)
        .bind(Json(p.expected_next.key()))
        .bind(Json(min))
        .bind(Json(max))
        .bind(p.batch_size)
        .bind(p.sub_batch_size)
        .bind(p.pause_ms)
        .bind(&p.worker)
        .bind(duration_ms(p.lease))
        .bind(p.expected_next.is_inclusive())
        .bind(lane)
        .fetch_one(&store.pool)
        .await
        .map_err(Error::db(format!(
            "creating a job in lane {lane} of migration {}",
            p.migration_id
        )))?;
    let matched: i64 = row.try_get("matched").map_err(rows::decode)?;
    if matched == 0 {
        return Ok(JobCreated::NotNow);
    }
    let job: Job = rows::job(&row)?;
    Ok(JobCreated::Created(Box::new(job), rows::next_start(&row)?))
}

pub(super) async fn exhaust(
    store: &PgStore,
    migration_id: i64,
    lane: Option<(i32, &Lower)>,
) -> Result<bool> {
    let context = format!("handing out the keys of migration {migration_id}'s lanes");
    let mut tx = store.pool.begin().await.map_err(Error::db(&context))?;
    // One at a time per migration: two loops closing its last two lanes at once would each
    // see the other's still open.
    sqlx::query(&store.q(MIGRATION_LOCK))
        .bind(migration_id)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    if let Some((lane, expected)) = lane {
        sqlx::query(&store.q(LANE_EXHAUST))
            .bind(migration_id)
            .bind(lane)
            .bind(Json(expected.key()))
            .bind(expected.is_inclusive())
            .execute(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
    }
    sqlx::query(&store.q(MIGRATION_EXHAUST_IF_LANES_ARE))
        .bind(migration_id)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    let done: Option<bool> = sqlx::query_scalar(&store.q(MIGRATION_NEXT_IS_NULL))
        .bind(migration_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(done.unwrap_or(true))
}

pub(super) async fn hold(store: &PgStore, p: &LaneHoldParams) -> Result<usize> {
    let changed: i64 = sqlx::query_scalar(&store.q(LANE_HOLD))
        .bind(p.migration_id)
        .bind(&p.lanes)
        .bind(p.until)
        .bind(&p.reason)
        .bind(&p.actor)
        .fetch_one(&store.pool)
        .await
        .map_err(Error::db(format!(
            "holding lanes of migration {}",
            p.migration_id
        )))?;
    Ok(changed as usize)
}

pub(super) async fn relocate(
    store: &PgStore,
    migration_id: i64,
    lane: i32,
    node: &str,
    reason: &str,
    actor: &str,
) -> Result<bool> {
    let changed: i64 = sqlx::query_scalar(&store.q(LANE_MOVE))
        .bind(migration_id)
        .bind(lane)
        .bind(node)
        .bind(reason)
        .bind(actor)
        .fetch_one(&store.pool)
        .await
        .map_err(Error::db(format!(
            "moving lane {lane} of migration {migration_id}"
        )))?;
    Ok(changed > 0)
}
