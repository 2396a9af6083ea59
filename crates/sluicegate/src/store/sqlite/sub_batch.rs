//! Sub-batches on SQLite: the primitives of the shared [`sub_batch`](crate::store::sub_batch)
//! code (a `BEGIN IMMEDIATE` transaction, which holds the write lock, the walk, the kind's
//! connection), and a performed sub-batch's commit, alone or with the job's cursor or end when
//! the tracking tables are in the same file.

use async_trait::async_trait;
use sqlx::{Sqlite, SqliteConnection, Transaction};

use super::jobs::{JOB_CHECKPOINT, JOB_LOG_INSERT};
use super::walk::{plain_param, walk};
use super::{later, now, ts, SqliteTarget};
use crate::dialect::key_sql::ParamSql;
use crate::dialect::Backend;
use crate::failure::Failure;
use crate::key::{Key, Lower};
use crate::kind::SubBatchConnection;
use crate::store::sub_batch::{SubBatchPrimitives, Walk};
use crate::store::{
    rows, JobCursor, JobFinish, PerformedSubBatch, SubBatchCommit, SubBatchCommitted, SubBatchSpec,
};

/// A job's last sub-batch: cursor, rows and `running -> succeeded`, fenced by attempt like the
/// checkpoint it replaces (its log row follows in the same transaction).
const JOB_FINISH_AT_CURSOR: &str = "UPDATE sluicegate_jobs SET status = 'succeeded',
    finished_at = $8, lease_expires_at = NULL, cursor = $3,
    rows_affected = rows_affected + $4, metrics = $5, sub_batch_size = coalesce($6, sub_batch_size),
    updated_at = $8
    WHERE id = $1 AND attempts = $2 AND status = 'running'
    RETURNING *";

#[async_trait]
impl SubBatchPrimitives for SqliteTarget {
    type Db = Sqlite;
    type Tx = Transaction<'static, Sqlite>;
    const BACKEND: Backend = Backend::Sqlite;
    const PARAM: ParamSql = plain_param;

    async fn begin_sub_batch(
        &self,
        _spec: &SubBatchSpec<'_>,
    ) -> sqlx::Result<Transaction<'static, Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// A plain read transaction: SQLite has no statement timeout.
    async fn begin_walk(&self, _statement_ms: i64) -> sqlx::Result<Transaction<'static, Sqlite>> {
        self.pool.begin().await
    }

    async fn walk(
        conn: &mut SqliteConnection,
        walk_over: Walk<'_>,
        lower: &Lower,
        max: &Key,
        size: i64,
    ) -> sqlx::Result<Option<(Key, Key)>> {
        walk(conn, walk_over, lower, max, size).await
    }

    fn connection(conn: &mut SqliteConnection) -> SubBatchConnection<'_> {
        SubBatchConnection::Sqlite(conn)
    }

    fn performed(
        &self,
        tx: Transaction<'static, Sqlite>,
        keys: (Key, Key),
        rows: u64,
    ) -> Box<dyn PerformedSubBatch> {
        Box::new(SqlitePerformed {
            tx,
            keys,
            rows,
            same_database_store: self.same_database_store,
        })
    }
}

/// A sub-batch performed in its open SQLite transaction (which holds the write lock).
struct SqlitePerformed {
    tx: Transaction<'static, Sqlite>,
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
        let done = (&end, rows as i64);
        let committed = match how {
            SubBatchCommit::Alone => SubBatchCommitted::Committed,
            SubBatchCommit::Ledger(_) => {
                return Err(misuse(
                    "SQLite has no lanes: a sub-batch here never commits to a lane's ledger",
                ))
            }
            SubBatchCommit::Cursor(_) | SubBatchCommit::Finish(..) if !same_database_store => {
                return Err(misuse(
                    "a sub-batch on another database cannot commit the job's state",
                ))
            }
            SubBatchCommit::Cursor(cursor) => checkpoint(&mut tx, cursor, done).await?,
            SubBatchCommit::Finish(_, f) if f.then_create.is_some() => {
                return Err(misuse(
                    "SQLite creates the next job with its own statement, not with a job's end",
                ))
            }
            SubBatchCommit::Finish(cursor, f) => finish_job(&mut tx, cursor, done, f).await?,
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
    conn: &mut SqliteConnection,
    cursor: JobCursor,
    (end, rows): (&Key, i64),
) -> std::result::Result<SubBatchCommitted, Failure> {
    let lease = later(cursor.lease).map_err(|e| Failure::new("OutOfRange", e.to_string()))?;
    let done = sqlx::query(JOB_CHECKPOINT)
        .bind(cursor.job_id)
        .bind(cursor.attempts)
        .bind(end.to_json())
        .bind(rows)
        .bind(lease)
        .bind(ts(now()))
        .execute(&mut *conn)
        .await?;
    Ok(if done.rows_affected() == 1 {
        SubBatchCommitted::Committed
    } else {
        SubBatchCommitted::Fenced
    })
}

/// The job's end (`running -> succeeded`) and its log row.
async fn finish_job(
    conn: &mut SqliteConnection,
    cursor: JobCursor,
    (end, rows): (&Key, i64),
    f: &JobFinish,
) -> std::result::Result<SubBatchCommitted, Failure> {
    let at = ts(now());
    let row = sqlx::query(JOB_FINISH_AT_CURSOR)
        .bind(cursor.job_id)
        .bind(cursor.attempts)
        .bind(end.to_json())
        .bind(rows)
        .bind(f.metrics.to_string())
        .bind(f.sub_batch_size)
        .bind(&f.worker)
        .bind(&at)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
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
        .execute(&mut *conn)
        .await?;
    Ok(SubBatchCommitted::Finished {
        job: Box::new(job),
        next: None,
    })
}
