//! The `jobs` table and its log on PostgreSQL: creating a migration's next job (with the keyset
//! walk inside the statement when tracking and target are one database), status changes,
//! splits, checkpoints, leases and counts. Each change and its log row are one statement.

use std::time::Duration;

use sqlx::types::Json;
use sqlx::{PgConnection, Row};

use super::walk::keyset_sql;
use super::PgStore;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::model::{Job, JobCounts};
use crate::store::{
    duration_ms, rows, JobCreateParams, JobCreated, JobRange, JobSplitParams, JobTransitionParams,
};

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

/// A failed job waits out a backoff before its next attempt: 0.2 s after its first, 0.6 s
/// after its second, 1.8 s after more.
const JOB_FIND_RETRIABLE: &str = "SELECT * FROM {s}.jobs
    WHERE migration_id = $1
      AND (status = 'pending'
           OR (status = 'failed' AND attempts < $2
               AND finished_at <= now() - CASE attempts WHEN 0 THEN 0 WHEN 1 THEN 200
                   WHEN 2 THEN 600 ELSE 1800 END * interval '1 millisecond')
           OR (status = 'running' AND lease_expires_at < now()))
      -- One job at a time per lane, and none in a held lane.
      AND (lane IS NULL OR (
          NOT EXISTS (SELECT 1 FROM {s}.jobs o
                      WHERE o.migration_id = jobs.migration_id AND o.lane = jobs.lane
                        AND o.id <> jobs.id AND o.status = 'running' AND o.lease_expires_at > now())
          AND NOT EXISTS (SELECT 1 FROM {s}.migration_lanes l
                          WHERE l.migration_id = jobs.migration_id AND l.lane = jobs.lane
                            AND l.on_hold_until > now())))
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
INSERT INTO {s}.jobs (migration_id, min_cursor, max_cursor, batch_size, sub_batch_size, pause_ms, status,
    lane)
SELECT migration_id, $2, $3, $4, $5, pause_ms, 'pending', lane FROM {s}.jobs WHERE id = $1
RETURNING *";

pub(super) const JOB_CHECKPOINT: &str =
    "UPDATE {s}.jobs SET cursor = $3, rows_affected = rows_affected + $4,
    lease_expires_at = clock_timestamp() + $5 * interval '1 millisecond', updated_at = clock_timestamp()
    WHERE id = $1 AND attempts = $2 AND status = 'running'";

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

/// [`Store::job_create`](crate::store::Store::job_create): one statement (data-modifying CTEs,
/// the walk inside when it is one database), one round trip a job; SQLite's is statements.
pub(super) async fn create(store: &PgStore, p: &JobCreateParams) -> Result<JobCreated> {
    if let Some(lane) = p.lane {
        let JobRange::Given { min, max } = &p.range else {
            return Err(Error::Corrupt(format!(
                "a job in lane {lane} of migration {} needs its keys found on the lane's node",
                p.migration_id
            )));
        };
        return super::lanes::create_job(store, p, lane, (min, max)).await;
    }
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
            let max = store.q("(SELECT max_cursor FROM {s}.migrations WHERE id = $1)");
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
        Some(ms) => store
            .pool
            .begin_with(format!(
                "BEGIN; SET LOCAL statement_timeout = {}",
                ms.max(1)
            ))
            .await
            .map_err(Error::db(&context))?,
        None => store.pool.begin().await.map_err(Error::db(&context))?,
    };
    // The schema goes in before the range: the range holds the table's and column's quoted
    // names, user text that may itself contain `{s}` (a table named `a{s}b`).
    let sql = store.q(JOB_CREATE).replacen("{range}", &range_sql, 1);
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

pub(super) async fn find_retriable(
    store: &PgStore,
    migration_id: i64,
    max_attempts: i32,
) -> Result<Option<Job>> {
    let row = sqlx::query(&store.q(JOB_FIND_RETRIABLE))
        .bind(migration_id)
        .bind(max_attempts)
        .fetch_optional(&store.pool)
        .await
        .map_err(Error::db("finding a job to retry"))?;
    row.as_ref().map(rows::job).transpose()
}

pub(super) async fn transition_in(
    store: &PgStore,
    conn: &mut PgConnection,
    p: &JobTransitionParams,
) -> Result<Job> {
    // The state machine again, below the engine: nothing illegal is ever written.
    p.check()?;
    let row = sqlx::query(&store.q(JOB_TRANSITION))
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

pub(super) async fn transition(store: &PgStore, p: &JobTransitionParams) -> Result<Job> {
    let mut conn = store
        .pool
        .acquire()
        .await
        .map_err(Error::db("changing a job"))?;
    transition_in(store, &mut conn, p).await
}

/// [`Store::job_split`](crate::store::Store::job_split): the second half inserted, then the
/// first updated with its log row (a CTE), in one transaction.
pub(super) async fn split(store: &PgStore, p: &JobSplitParams) -> Result<(Job, Job)> {
    let t = &p.transition;
    let context = format!("splitting job {}", t.job_id);
    let mut tx = store.pool.begin().await.map_err(Error::db(&context))?;
    let second = sqlx::query(&store.q(JOB_SPLIT_SECOND))
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
    let first = sqlx::query(&store.q(JOB_SPLIT_FIRST))
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

pub(super) async fn checkpoint(
    store: &PgStore,
    job_id: i64,
    attempts: i32,
    cursor: &Key,
    rows: i64,
    lease: Duration,
) -> Result<bool> {
    let done = sqlx::query(&store.q(JOB_CHECKPOINT))
        .bind(job_id)
        .bind(attempts)
        .bind(Json(cursor))
        .bind(rows)
        .bind(duration_ms(lease))
        .execute(&store.pool)
        .await
        .map_err(Error::db(format!("recording progress of job {job_id}")))?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn heartbeat(
    store: &PgStore,
    job_id: i64,
    attempts: i32,
    lease: Duration,
) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(&store.q(JOB_HEARTBEAT))
        .bind(job_id)
        .bind(attempts)
        .bind(duration_ms(lease))
        .fetch_one(&store.pool)
        .await
        .map_err(Error::db(format!("renewing the lease of job {job_id}")))?;
    Ok(n == 1)
}

pub(super) async fn counts(
    store: &PgStore,
    migration_id: i64,
    max_attempts: i32,
) -> Result<JobCounts> {
    let row = sqlx::query(&store.q(JOB_COUNTS))
        .bind(migration_id)
        .bind(max_attempts)
        .fetch_one(&store.pool)
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
