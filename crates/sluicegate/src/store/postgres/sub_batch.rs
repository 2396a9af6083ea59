//! Sub-batches on PostgreSQL: the primitives of the shared
//! [`sub_batch`](crate::store::sub_batch) code (a transaction under the migration's timeouts,
//! the walk, the kind's connection), and a performed sub-batch's commit, alone or with the
//! job's cursor or end (and the next job's start) when tracking and target are one database.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::types::Json;
use sqlx::{PgConnection, Postgres, Transaction};

use super::citus::{ledger_table, LEDGER_ADVANCE};
use super::jobs::JOB_CHECKPOINT;
use super::walk::{pg_param, walk};
use super::work::WorkTx;
use super::{PgStore, PgTarget};
use crate::dialect::key_sql::ParamSql;
use crate::dialect::Backend;
use crate::error::Error;
use crate::failure::Failure;
use crate::key::{Key, Lower};
use crate::kind::SubBatchConnection;
use crate::store::sub_batch::{SubBatchPrimitives, Walk};
use crate::store::{
    duration_ms, rows, JobCursor, JobFinish, JobRange, PerformedSubBatch, SubBatchCommit,
    SubBatchCommitted, SubBatchSpec,
};

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

/// The tracking statements a sub-batch commits with (schema filled in).
#[derive(Debug)]
pub(super) struct TrackingSql {
    /// The job's cursor and lease ([`JOB_CHECKPOINT`]).
    checkpoint: String,
    /// The job's end ([`JOB_FINISH_AT_CURSOR`]).
    finish: String,
    /// The job's end and the next job's start ([`JOB_FINISH_AND_CREATE`]).
    finish_and_create: String,
}

impl TrackingSql {
    /// `store`'s statements.
    pub(super) fn of(store: &PgStore) -> Self {
        Self {
            checkpoint: store.q(JOB_CHECKPOINT),
            finish: store.q(JOB_FINISH_AT_CURSOR),
            finish_and_create: store.q(JOB_FINISH_AND_CREATE),
        }
    }
}

#[async_trait]
impl SubBatchPrimitives for PgTarget {
    type Db = Postgres;
    type Tx = WorkTx;
    const BACKEND: Backend = Backend::Postgres;
    const PARAM: ParamSql = pg_param;

    async fn begin_sub_batch(&self, spec: &SubBatchSpec<'_>) -> sqlx::Result<WorkTx> {
        // Our own integers, not user text: safe to format. A shard's metadata lock is taken
        // in the same round trip, under the sub-batch's lock timeout.
        let shard_lock = match spec.shard {
            Some(shard) => super::citus::shard_lock_sql(shard),
            None => String::new(),
        };
        self.work
            .begin(format!(
                "BEGIN; SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {}{shard_lock}",
                spec.timeouts.statement_ms.max(1),
                spec.timeouts.lock_ms.max(1)
            ))
            .await
    }

    async fn guard(
        conn: &mut PgConnection,
        spec: &SubBatchSpec<'_>,
    ) -> std::result::Result<(), Failure> {
        match spec.shard {
            Some(shard) => super::citus::guard(conn, shard).await,
            None => Ok(()),
        }
    }

    async fn begin_walk(&self, statement_ms: i64) -> sqlx::Result<Transaction<'static, Postgres>> {
        // Under the migration's statement timeout (our own integer, safe to format).
        self.pool
            .begin_with(format!(
                "BEGIN READ ONLY; SET LOCAL statement_timeout = {}",
                statement_ms.max(1)
            ))
            .await
    }

    async fn walk(
        conn: &mut PgConnection,
        walk_over: Walk<'_>,
        lower: &Lower,
        max: &Key,
        size: i64,
    ) -> sqlx::Result<Option<(Key, Key)>> {
        walk(conn, walk_over, lower, max, size).await
    }

    fn connection(conn: &mut PgConnection) -> SubBatchConnection<'_> {
        SubBatchConnection::Postgres(conn)
    }

    fn performed(&self, tx: WorkTx, keys: (Key, Key), rows: u64) -> Box<dyn PerformedSubBatch> {
        Box::new(PgPerformed {
            tx,
            keys,
            rows,
            tracking: self.tracking.clone(),
        })
    }
}

/// A sub-batch performed in its open PostgreSQL transaction.
struct PgPerformed {
    tx: WorkTx,
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
        let (cursor, finish) = match how {
            SubBatchCommit::Alone => {
                tx.commit().await?;
                return Ok(SubBatchCommitted::Committed);
            }
            SubBatchCommit::Ledger(ledger) => {
                let advance = LEDGER_ADVANCE.replace("{l}", &ledger_table(&ledger.schema));
                let done = sqlx::query(&advance)
                    .bind(&ledger.tracking)
                    .bind(ledger.job_id)
                    .bind(ledger.token)
                    .bind(Json(&end))
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(SubBatchCommitted::Fenced);
                }
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
        let done = (cursor, &end, rows as i64);
        let committed = match finish {
            None => checkpoint(&mut tx, &sql, done).await?,
            Some(f) => finish_job(&mut tx, &sql, done, f).await?,
        };
        match committed {
            SubBatchCommitted::Fenced => tx.rollback().await?,
            _ => tx.commit().await?,
        }
        Ok(committed)
    }
}

/// The job's cursor, its rows and lease, fenced by attempt: `Fenced` when the job is no
/// longer this worker's.
async fn checkpoint(
    conn: &mut PgConnection,
    sql: &TrackingSql,
    (cursor, end, rows): (JobCursor, &Key, i64),
) -> std::result::Result<SubBatchCommitted, Failure> {
    let done = sqlx::query(&sql.checkpoint)
        .bind(cursor.job_id)
        .bind(cursor.attempts)
        .bind(Json(end))
        .bind(rows)
        .bind(duration_ms(cursor.lease))
        .execute(&mut *conn)
        .await?;
    Ok(if done.rows_affected() == 1 {
        SubBatchCommitted::Committed
    } else {
        SubBatchCommitted::Fenced
    })
}

/// The job's end, and the next job's start when `f` asks for one over a given range.
async fn finish_job(
    conn: &mut PgConnection,
    sql: &TrackingSql,
    (cursor, end, rows): (JobCursor, &Key, i64),
    f: &JobFinish,
) -> std::result::Result<SubBatchCommitted, Failure> {
    let create = f.then_create.as_ref().and_then(|c| match &c.range {
        JobRange::Given { min, max } => Some((c, min, max)),
        JobRange::Keyset { .. } => None,
    });
    let statement = match create {
        Some(_) => &sql.finish_and_create,
        None => &sql.finish,
    };
    let query = sqlx::query(statement)
        .bind(cursor.job_id)
        .bind(cursor.attempts)
        .bind(Json(end))
        .bind(rows)
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
    let rows_back = query.fetch_all(&mut *conn).await?;
    let corrupt = |e: Error| Failure::new("Corrupt", e.to_string());
    let Some(row) = rows_back.first() else {
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
    Ok(SubBatchCommitted::Finished {
        job: Box::new(job),
        next,
    })
}
