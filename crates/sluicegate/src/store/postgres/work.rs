//! The sessions sub-batches run in on PostgreSQL: a pool of their own, lent most recently
//! used first, so that a loop's sub-batches keep running in one server process.
//!
//! sqlx lends the connection that has been idle longest, and a connection it gets back goes
//! to the end of its queue (returned by a task of its own, after the next sub-batch may
//! already have asked for one). From the worker's shared pool, consecutive sub-batches
//! rotated over every connection the worker's other tasks had opened (four in the benchmark),
//! and with a pool of their own over two. Each sub-batch woke a backend that had slept through
//! the others, and the kernel's scheduler favours a process that slept: the foreground's
//! sessions waited for the CPU behind the migration's statement. Measured with
//! `scripts/bench`, the same 10,000-key sub-batches: three to four times as many foreground
//! updates over 5 ms as the client loop's, and the work statements 5% slower; from one
//! session, the client loop's figures.
//!
//! A committed or rolled-back session goes back on a stack here, and the next sub-batch takes
//! the newest: a loop that runs alone always gets the same session, and `--concurrency N`
//! keeps N. The pool is opened lazily with the worker pool's options and its own connection
//! limit, so that sessions held here never starve the worker's bookkeeping.

use std::borrow::Cow;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgTransactionManager;
use sqlx::{PgConnection, PgPool, Postgres, TransactionManager};

use crate::store::sub_batch::OpenTransaction;

/// The sub-batch sessions of one target (see the module doc).
#[derive(Debug)]
pub(crate) struct WorkSessions {
    pool: PgPool,
    /// Sessions between two sub-batches, the newest last.
    idle: Mutex<Vec<PoolConnection<Postgres>>>,
}

impl WorkSessions {
    /// Sessions on the database `pool` connects to, with `pool`'s options.
    pub(crate) fn new(pool: &PgPool) -> Arc<Self> {
        let pool = pool
            .options()
            .clone()
            .connect_lazy_with((*pool.connect_options()).clone());
        Arc::new(Self {
            pool,
            idle: Mutex::default(),
        })
    }

    /// A transaction begun by `statement` (which may set local settings after its `BEGIN`)
    /// in the newest idle session, or a new one.
    pub(crate) async fn begin(self: &Arc<Self>, statement: String) -> sqlx::Result<WorkTx> {
        let newest = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match newest {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        // A session that fails here (the server went away) is dropped: the pool tests it
        // on its way back and closes it.
        PgTransactionManager::begin(&mut *conn, Some(Cow::Owned(statement))).await?;
        Ok(WorkTx {
            conn: Some(conn),
            sessions: self.clone(),
        })
    }
}

/// A sub-batch's open transaction in one of [`WorkSessions`]' sessions. Dropped while open,
/// it is rolled back as sqlx's own transactions are: the `ROLLBACK` is queued, and the pool
/// sends it before it lends the session again.
#[derive(Debug)]
pub(crate) struct WorkTx {
    conn: Option<PoolConnection<Postgres>>,
    sessions: Arc<WorkSessions>,
}

impl WorkTx {
    /// Commits; the session goes back to the stack.
    pub(crate) async fn commit(mut self) -> sqlx::Result<()> {
        let mut conn = self
            .conn
            .take()
            .expect("an open transaction has its session");
        let committed = PgTransactionManager::commit(&mut *conn).await;
        self.release(conn, committed.is_ok());
        committed
    }

    /// Rolls back; the session goes back to the stack.
    pub(crate) async fn rollback(mut self) -> sqlx::Result<()> {
        let mut conn = self
            .conn
            .take()
            .expect("an open transaction has its session");
        let rolled_back = PgTransactionManager::rollback(&mut *conn).await;
        self.release(conn, rolled_back.is_ok());
        rolled_back
    }

    /// A session whose transaction ended cleanly is kept for the next sub-batch; one whose
    /// `COMMIT` or `ROLLBACK` failed still counts a transaction open, so it gets the queued
    /// `ROLLBACK` sqlx's own transactions get and goes back to the pool, which tests it.
    fn release(&self, mut conn: PoolConnection<Postgres>, ended: bool) {
        if ended {
            self.sessions
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
        } else {
            PgTransactionManager::start_rollback(&mut *conn);
        }
    }
}

#[async_trait]
impl OpenTransaction for WorkTx {
    async fn rollback(self) -> sqlx::Result<()> {
        WorkTx::rollback(self).await
    }
}

impl Drop for WorkTx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            PgTransactionManager::start_rollback(&mut **conn);
        }
    }
}

impl Deref for WorkTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn
            .as_ref()
            .expect("an open transaction has its session")
    }
}

impl DerefMut for WorkTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("an open transaction has its session")
    }
}
