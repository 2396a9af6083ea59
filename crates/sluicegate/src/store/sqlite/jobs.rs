//! The `jobs` table and its log on SQLite: creating a migration's next job (the walk run in
//! the same `BEGIN IMMEDIATE` transaction), status changes, splits, checkpoints, leases and
//! counts. Each change is its statement and its log row's, in one transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Row, SqliteConnection};

use super::walk::walk;
use super::{later, now, parse_ts, ts, SqliteStore};
use crate::error::{Error, Result};
use crate::key::{Key, Lower};
use crate::model::{Job, JobCounts};
use crate::store::{
    rows, JobCreateParams, JobCreated, JobRange, JobSplitParams, JobTransitionParams,
};

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

const MIGRATION_JOB_STARTED: &str = "UPDATE sluicegate_migrations
    SET next_cursor = $2, next_inclusive = 0, last_job_started_at = $3, updated_at = coalesce($3, updated_at),
        sub_batch_size = min($4, batch_size)
    WHERE id = $1";

const TABLE_LEASE_RENEW: &str =
    "UPDATE sluicegate_table_leases SET expires_at = max(expires_at, $2)
    WHERE migration_id = $1";

const JOB_INSERT_RUNNING: &str =
    "INSERT INTO sluicegate_jobs (migration_id, min_cursor, max_cursor,
    batch_size, sub_batch_size, pause_ms, status, attempts, started_at, worker, lease_expires_at,
    created_at, updated_at, lane)
    VALUES ($1, $2, $3, $4, $5, $6, 'running', 1, $7, $8, $9, $7, $7, $10)
    RETURNING *";

pub(super) const JOB_LOG_INSERT: &str =
    "INSERT INTO sluicegate_job_transition_logs (job_id, migration_id,
    previous_status, next_status, exception_class, exception_message, worker, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// A failed job waits out a backoff before its next attempt: 0.2 s after its first, 0.6 s
/// after its second, 1.8 s after more.
const JOB_FIND_RETRIABLE: &str = "SELECT * FROM sluicegate_jobs
    WHERE migration_id = $1
      AND (status = 'pending'
           OR (status = 'failed' AND attempts < $2
               AND (julianday($3) - julianday(finished_at)) * 86400000.0 >= CASE attempts
                   WHEN 0 THEN 0 WHEN 1 THEN 200 WHEN 2 THEN 600 ELSE 1800 END)
           OR (status = 'running' AND lease_expires_at < $3))
      -- One job at a time per lane, and none in a held lane.
      AND (lane IS NULL OR (
          NOT EXISTS (SELECT 1 FROM sluicegate_jobs o
                      WHERE o.migration_id = sluicegate_jobs.migration_id
                        AND o.lane = sluicegate_jobs.lane AND o.id <> sluicegate_jobs.id
                        AND o.status = 'running' AND o.lease_expires_at > $3)
          AND NOT EXISTS (SELECT 1 FROM sluicegate_migration_lanes l
                          WHERE l.migration_id = sluicegate_jobs.migration_id
                            AND l.lane = sluicegate_jobs.lane AND l.on_hold_until > $3)))
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
    batch_size, sub_batch_size, pause_ms, status, created_at, updated_at, lane)
    VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7, $8)
    RETURNING *";

pub(super) const JOB_CHECKPOINT: &str = "UPDATE sluicegate_jobs SET cursor = $3,
    rows_affected = rows_affected + $4, lease_expires_at = $5, updated_at = $6
    WHERE id = $1 AND attempts = $2 AND status = 'running'";

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

/// [`Store::job_create`](crate::store::Store::job_create): written apart from PostgreSQL's one
/// CTE because SQLite cannot feed one statement's `RETURNING` into another: five statements in
/// one `BEGIN IMMEDIATE`.
pub(super) async fn create(store: &SqliteStore, p: &JobCreateParams) -> Result<JobCreated> {
    if let Some(lane) = p.lane {
        let JobRange::Given { min, max } = &p.range else {
            return Err(Error::Corrupt(format!(
                "a job in lane {lane} of migration {} needs its keys found on the lane's node",
                p.migration_id
            )));
        };
        return super::lanes::create_job(store, p, lane, (min, max)).await;
    }
    let context = format!("creating a job of migration {}", p.migration_id);
    let at = now();
    let mut tx = store.begin_immediate(&context).await?;
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
        } => walk(
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
    let job = insert_running(&mut tx, p, (&first, &last), &at, &context).await?;
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(JobCreated::Created(Box::new(job), next))
}

/// The new job's row, `running` under `p.worker`'s lease, its log row, and the table lease
/// renewed: the last three statements of [`create`].
pub(super) async fn insert_running(
    tx: &mut SqliteConnection,
    p: &JobCreateParams,
    (first, last): (&Key, &Key),
    at: &DateTime<Utc>,
    context: &str,
) -> Result<Job> {
    let row = sqlx::query(JOB_INSERT_RUNNING)
        .bind(p.migration_id)
        .bind(first.to_json())
        .bind(last.to_json())
        .bind(p.batch_size)
        .bind(p.sub_batch_size)
        .bind(p.pause_ms)
        .bind(ts(*at))
        .bind(&p.worker)
        .bind(later(p.lease)?)
        .bind(p.lane)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::db(context))?;
    let job = rows::job(&row)?;
    sqlx::query(JOB_LOG_INSERT)
        .bind(job.id)
        .bind(job.migration_id)
        .bind("pending")
        .bind("running")
        .bind(None::<&str>)
        .bind(None::<&str>)
        .bind(&p.worker)
        .bind(ts(*at))
        .execute(&mut *tx)
        .await
        .map_err(Error::db(context))?;
    sqlx::query(TABLE_LEASE_RENEW)
        .bind(p.migration_id)
        .bind(later(p.lease)?)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(context))?;
    Ok(job)
}

pub(super) async fn find_retriable(
    store: &SqliteStore,
    migration_id: i64,
    max_attempts: i32,
) -> Result<Option<Job>> {
    let row = sqlx::query(JOB_FIND_RETRIABLE)
        .bind(migration_id)
        .bind(max_attempts)
        .bind(ts(now()))
        .fetch_optional(&store.pool)
        .await
        .map_err(Error::db("finding a job to retry"))?;
    row.as_ref().map(rows::job).transpose()
}

pub(super) async fn transition_in(
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

pub(super) async fn transition(store: &SqliteStore, p: &JobTransitionParams) -> Result<Job> {
    let context = format!("changing job {}", p.job_id);
    let mut tx = store.begin_immediate(&context).await?;
    let job = transition_in(&mut tx, p).await?;
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(job)
}

/// [`Store::job_split`](crate::store::Store::job_split): statements in one `BEGIN IMMEDIATE`
/// where PostgreSQL writes a CTE (SQLite's `RETURNING` feeds no other statement).
pub(super) async fn split(store: &SqliteStore, p: &JobSplitParams) -> Result<(Job, Job)> {
    let t = &p.transition;
    let context = format!("splitting job {}", t.job_id);
    let at = ts(now());
    let mut tx = store.begin_immediate(&context).await?;
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
        .bind(first.lane)
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

pub(super) async fn checkpoint(
    store: &SqliteStore,
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
        .execute(&store.pool)
        .await
        .map_err(Error::db(format!("recording progress of job {job_id}")))?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn heartbeat(
    store: &SqliteStore,
    job_id: i64,
    attempts: i32,
    lease: Duration,
) -> Result<bool> {
    let context = format!("renewing the lease of job {job_id}");
    let mut tx = store.begin_immediate(&context).await?;
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

pub(super) async fn counts(
    store: &SqliteStore,
    migration_id: i64,
    max_attempts: i32,
) -> Result<JobCounts> {
    let row = sqlx::query(JOB_COUNTS)
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
        first_started_at: parse_ts(row.try_get(7).map_err(rows::decode)?)?,
        last_finished_at: parse_ts(row.try_get(8).map_err(rows::decode)?)?,
    })
}
