//! SQLite: the tracking store ([`SqliteStore`], its tables prefixed `sluicegate_`, in the same
//! file as the data or another) and the table being migrated ([`SqliteTarget`]), by concern:
//! the schema ([`schema`]), the migrations and their table leases ([`migrations`]), the jobs
//! ([`jobs`]), the job log's retention ([`logs`]), the target ([`target`]): its key
//! ([`key`]), the keyset walk ([`walk`]) and sub-batches ([`sub_batch`]). Each statement lives
//! beside the code that runs it.
//!
//! SQLite has one writer at a time: every read-then-write runs in `BEGIN IMMEDIATE`, which
//! takes the write lock up front, so a check and the write it guards cannot interleave with
//! another worker's. Times are written by Sluicegate as fixed-width UTC text, so they compare
//! correctly as text.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::SqliteConnection;

use crate::error::{Error, Result};
use crate::model::TargetIdentity;
use crate::store::reads::{Arg, Reads};
use crate::store::Capabilities;

mod jobs;
mod key;
mod lanes;
mod logs;
mod migrations;
mod schema;
mod sub_batch;
mod target;
mod verify;
mod walk;

pub use target::SqliteTarget;

/// A time as SQLite stores it: fixed-width UTC text, microseconds.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// `now + by` as stored text; a duration past what a timestamp can hold is an error of the
/// value (recorded on its migration by the worker), never a panic.
fn later(by: Duration) -> Result<String> {
    chrono::Duration::from_std(by)
        .ok()
        .and_then(|by| now().checked_add_signed(by))
        .map(ts)
        .ok_or_else(|| Error::OutOfRange(format!("now + {}", humantime::format_duration(by))))
}

fn parse_ts(text: Option<String>) -> Result<Option<DateTime<Utc>>> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(&t)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|e| Error::Corrupt(format!("bad time {t:?}: {e}")))
    })
    .transpose()
}

/// Runs one or more statements with no parameters (DDL). A plain function, not a trait
/// method, so the borrow of the connection does not leak into the trait's `Send` analysis.
async fn exec_raw(conn: &mut SqliteConnection, sql: &str) -> std::result::Result<(), sqlx::Error> {
    sqlx::Executor::execute(conn, sql).await.map(|_| ())
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_missing_table(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.message().contains("no such table"))
}

/// The tracking store on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The target whose migrations this store's claims hand out (none without one).
    target: Option<TargetIdentity>,
}

impl SqliteStore {
    /// A store on `pool`.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool, target: None }
    }

    /// The same store, claiming the migrations of `target` only (without one it claims none).
    pub fn for_target(mut self, target: TargetIdentity) -> Self {
        self.target = Some(target);
        self
    }

    /// The pool it uses.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin_immediate(
        &self,
        context: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::db(context))
    }
}

store_by_concern!(
    SqliteStore,
    crate::dialect::Backend::Sqlite,
    Capabilities::SQLITE
);

#[async_trait]
impl Reads for SqliteStore {
    type Row = SqliteRow;

    fn tables(&self, sql: &str) -> String {
        sql.replace("{s}.", "sluicegate_")
    }

    async fn fetch(&self, sql: &str, args: &[Arg<'_>]) -> sqlx::Result<Vec<SqliteRow>> {
        let mut query = sqlx::query(sql);
        for arg in args {
            query = match *arg {
                Arg::Int(v) => query.bind(v),
                Arg::Text(t) => query.bind(t),
            };
        }
        query.fetch_all(&self.pool).await
    }

    fn is_missing_table(e: &sqlx::Error) -> bool {
        is_missing_table(e)
    }
}
