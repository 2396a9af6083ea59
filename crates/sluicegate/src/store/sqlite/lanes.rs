//! A migration's lanes on SQLite (see the PostgreSQL module of the same name). SQLite has no
//! Citus tables and never creates lanes itself; these keep one store contract for both
//! engines. Each change and its log row are one `BEGIN IMMEDIATE` transaction.

use sqlx::Row;

use super::jobs::insert_running;
use super::migrations::log_same_status;
use super::{now, ts, SqliteStore};
use crate::error::{Error, Result};
use crate::key::{Key, Lower};
use crate::model::{Lane, Migration};
use crate::status::MigrationEvent;
use crate::store::{rows, JobCreateParams, JobCreated, LaneHoldParams};

const LANE_LIST: &str = "
SELECT l.*, (SELECT j.id FROM sluicegate_jobs j
             WHERE j.migration_id = l.migration_id AND j.lane = l.lane AND j.status = 'running'
               AND j.lease_expires_at > $2
             ORDER BY j.id LIMIT 1) AS running_job
FROM sluicegate_migration_lanes l WHERE l.migration_id = $1 ORDER BY l.lane";

/// The migration, if a job of it may start now (as for a job of the whole table).
const MIGRATION_STARTABLE: &str = "SELECT m.* FROM sluicegate_migrations m
    WHERE m.id = $1 AND m.status IN ('active', 'finalizing')
      AND (m.status = 'finalizing' OR m.on_hold_until IS NULL OR m.on_hold_until <= $2)
      AND (m.status = 'finalizing' OR m.interval_ms = 0 OR m.last_job_started_at IS NULL
           OR (julianday($2) - julianday(m.last_job_started_at)) * 86400000.0 >= m.interval_ms)
      AND EXISTS (SELECT 1 FROM sluicegate_table_leases l
                  WHERE l.table_name = m.table_name AND l.migration_id = m.id
                    AND l.expires_at > $2)";

/// The lane, if its next key is still $3 (inclusive when $4), it is not held and no job runs
/// in it.
const LANE_STARTABLE: &str = "SELECT 1 FROM sluicegate_migration_lanes l
    WHERE l.migration_id = $1 AND l.lane = $5 AND l.next_cursor = $3 AND l.next_inclusive = $4
      AND (l.on_hold_until IS NULL OR l.on_hold_until <= $2)
      AND NOT EXISTS (SELECT 1 FROM sluicegate_jobs o
                      WHERE o.migration_id = $1 AND o.lane = $5 AND o.status = 'running'
                        AND o.lease_expires_at > $2)";

const LANE_JOB_STARTED: &str = "UPDATE sluicegate_migration_lanes
    SET next_cursor = $3, next_inclusive = 0, updated_at = $4
    WHERE migration_id = $1 AND lane = $2";

const MIGRATION_LANE_JOB_STARTED: &str = "UPDATE sluicegate_migrations
    SET last_job_started_at = $2, updated_at = $2, sub_batch_size = min($3, batch_size)
    WHERE id = $1";

const LANE_EXHAUST: &str =
    "UPDATE sluicegate_migration_lanes SET next_cursor = NULL, updated_at = $5
    WHERE migration_id = $1 AND lane = $2 AND next_cursor = $3 AND next_inclusive = $4";

const MIGRATION_EXHAUST_IF_LANES_ARE: &str = "UPDATE sluicegate_migrations
    SET next_cursor = NULL, updated_at = $2
    WHERE id = $1 AND next_cursor IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM sluicegate_migration_lanes
                      WHERE migration_id = $1 AND next_cursor IS NOT NULL)";

const MIGRATION_GET: &str = "SELECT * FROM sluicegate_migrations WHERE id = $1";

const LANE_GET: &str =
    "SELECT on_hold_until, node FROM sluicegate_migration_lanes WHERE migration_id = $1 AND lane = $2";

const LANE_HOLD: &str = "UPDATE sluicegate_migration_lanes
    SET on_hold_until = $3, hold_reason = CASE WHEN $3 IS NOT NULL THEN $4 END, updated_at = $5
    WHERE migration_id = $1 AND lane = $2";

const LANE_MOVE: &str = "UPDATE sluicegate_migration_lanes SET node = $3, updated_at = $4
    WHERE migration_id = $1 AND lane = $2 AND node <> $3";

pub(super) async fn list(store: &SqliteStore, migration_id: i64) -> Result<Vec<Lane>> {
    let found = sqlx::query(LANE_LIST)
        .bind(migration_id)
        .bind(ts(now()))
        .fetch_all(&store.pool)
        .await
        .map_err(Error::db(format!(
            "reading the lanes of migration {migration_id}"
        )))?;
    found.iter().map(rows::lane).collect()
}

pub(super) async fn create_job(
    store: &SqliteStore,
    p: &JobCreateParams,
    lane: i32,
    (min, max): (&Key, &Key),
) -> Result<JobCreated> {
    let context = format!(
        "creating a job in lane {lane} of migration {}",
        p.migration_id
    );
    let at = now();
    let mut tx = store.begin_immediate(&context).await?;
    let row = sqlx::query(MIGRATION_STARTABLE)
        .bind(p.migration_id)
        .bind(ts(at))
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    let Some(m) = row.as_ref().map(rows::migration).transpose()? else {
        return Ok(JobCreated::NotNow);
    };
    let startable = sqlx::query(LANE_STARTABLE)
        .bind(p.migration_id)
        .bind(ts(at))
        .bind(p.expected_next.key().to_json())
        .bind(p.expected_next.is_inclusive())
        .bind(lane)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    if startable.is_none() {
        return Ok(JobCreated::NotNow);
    }
    let next = (*max != m.max_value).then(|| Lower::After(max.clone()));
    sqlx::query(LANE_JOB_STARTED)
        .bind(p.migration_id)
        .bind(lane)
        .bind(next.as_ref().map(|l| l.key().to_json()))
        .bind(ts(at))
        .execute(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    sqlx::query(MIGRATION_LANE_JOB_STARTED)
        .bind(p.migration_id)
        .bind(ts(at))
        .bind(p.sub_batch_size)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    let job = insert_running(&mut tx, p, (min, max), &at, &context).await?;
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(JobCreated::Created(Box::new(job), next))
}

pub(super) async fn exhaust(
    store: &SqliteStore,
    migration_id: i64,
    lane: Option<(i32, &Lower)>,
) -> Result<bool> {
    let context = format!("handing out the keys of migration {migration_id}'s lanes");
    let at = ts(now());
    let mut tx = store.begin_immediate(&context).await?;
    if let Some((lane, expected)) = lane {
        sqlx::query(LANE_EXHAUST)
            .bind(migration_id)
            .bind(lane)
            .bind(expected.key().to_json())
            .bind(expected.is_inclusive())
            .bind(&at)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
    }
    sqlx::query(MIGRATION_EXHAUST_IF_LANES_ARE)
        .bind(migration_id)
        .bind(&at)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    let row = sqlx::query(MIGRATION_GET)
        .bind(migration_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    tx.commit().await.map_err(Error::db(&context))?;
    let m: Option<Migration> = row.as_ref().map(rows::migration).transpose()?;
    Ok(m.is_none_or(|m| m.next_start.is_none()))
}

pub(super) async fn hold(store: &SqliteStore, p: &LaneHoldParams) -> Result<usize> {
    let context = format!("holding lanes of migration {}", p.migration_id);
    let at = now();
    let mut tx = store.begin_immediate(&context).await?;
    let mut changed = 0;
    for lane in &p.lanes {
        let Some(row) = sqlx::query(LANE_GET)
            .bind(p.migration_id)
            .bind(lane)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db(&context))?
        else {
            continue;
        };
        let before: Option<String> = row.try_get("on_hold_until").map_err(rows::decode)?;
        let before = super::parse_ts(before)?;
        if p.until.is_none() && before.is_none() {
            continue;
        }
        sqlx::query(LANE_HOLD)
            .bind(p.migration_id)
            .bind(lane)
            .bind(p.until.map(ts))
            .bind(&p.reason)
            .bind(ts(at))
            .execute(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        if p.until.is_none() || before.is_none() {
            changed += 1;
        }
    }
    if changed > 0 {
        let event = match p.until {
            Some(_) => MigrationEvent::LaneHold,
            None => MigrationEvent::LaneRelease,
        };
        log_lanes(
            &mut tx,
            p.migration_id,
            event,
            &p.reason,
            &p.actor,
            &context,
        )
        .await?;
    }
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(changed)
}

pub(super) async fn relocate(
    store: &SqliteStore,
    migration_id: i64,
    lane: i32,
    node: &str,
    reason: &str,
    actor: &str,
) -> Result<bool> {
    let context = format!("moving lane {lane} of migration {migration_id}");
    let mut tx = store.begin_immediate(&context).await?;
    let moved = sqlx::query(LANE_MOVE)
        .bind(migration_id)
        .bind(lane)
        .bind(node)
        .bind(ts(now()))
        .execute(&mut *tx)
        .await
        .map_err(Error::db(&context))?
        .rows_affected()
        > 0;
    if moved {
        let event = MigrationEvent::LaneMove;
        log_lanes(&mut tx, migration_id, event, reason, actor, &context).await?;
    }
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(moved)
}

/// A lane event's log row, if the migration is running (its status kept).
async fn log_lanes(
    tx: &mut sqlx::SqliteConnection,
    migration_id: i64,
    event: MigrationEvent,
    reason: &str,
    actor: &str,
    context: &str,
) -> Result<()> {
    let row = sqlx::query(MIGRATION_GET)
        .bind(migration_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::db(context))?;
    let Some(m) = row.as_ref().map(rows::migration).transpose()? else {
        return Ok(());
    };
    if m.status.after(event).is_none() {
        return Ok(());
    }
    log_same_status(tx, &m, event, reason, actor, &ts(now()))
        .await
        .map_err(Error::db(context))
}
