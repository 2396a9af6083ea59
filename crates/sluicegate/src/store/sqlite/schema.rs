//! Installing the tracking schema on SQLite: the steps of the shared
//! [`schema_install`] (`BEGIN IMMEDIATE` already serializes concurrent setups), run with
//! foreign keys off (version 4 rebuilds referenced tables), and reading the installed version.

use async_trait::async_trait;

use super::{exec_raw, now, ts, SqliteStore};
use crate::error::{Error, Result};
use crate::store::schema::{schema_install, SchemaSteps};

const SCHEMA_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../schema/sqlite_v1.sql")),
    (2, include_str!("../schema/sqlite_v2.sql")),
    (3, include_str!("../schema/sqlite_v3.sql")),
    (4, include_str!("../schema/sqlite_v4.sql")),
    (5, include_str!("../schema/sqlite_v5.sql")),
    (6, include_str!("../schema/sqlite_v6.sql")),
    (7, include_str!("../schema/sqlite_v7.sql")),
    (8, include_str!("../schema/sqlite_v8.sql")),
    (9, include_str!("../schema/sqlite_v9.sql")),
];

const SCHEMA_VERSIONS_CREATE: &str = "CREATE TABLE IF NOT EXISTS sluicegate_schema_versions (
    version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)";

const SCHEMA_VERSIONS_EXISTS: &str =
    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'sluicegate_schema_versions'";

const SCHEMA_VERSION_GET: &str = "SELECT max(version) FROM sluicegate_schema_versions";

const SCHEMA_VERSION_INSERT: &str =
    "INSERT INTO sluicegate_schema_versions (version, applied_at) VALUES ($1, $2)";

const SCHEMA_CONTEXT: &str = "installing the tracking schema";

/// The SQLite steps of [`schema_install`], in one `BEGIN IMMEDIATE` transaction (which
/// already keeps concurrent setups apart).
struct SqliteSchemaSteps<'c> {
    tx: sqlx::Transaction<'c, sqlx::Sqlite>,
}

#[async_trait]
impl SchemaSteps for SqliteSchemaSteps<'_> {
    async fn prepare(&mut self) -> Result<()> {
        exec_raw(&mut self.tx, SCHEMA_VERSIONS_CREATE)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))
    }

    async fn current(&mut self) -> Result<i64> {
        let current: Option<i64> = sqlx::query_scalar(SCHEMA_VERSION_GET)
            .fetch_one(&mut *self.tx)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        Ok(current.unwrap_or(0))
    }

    async fn apply(&mut self, version: i64, script: &str) -> Result<()> {
        exec_raw(&mut self.tx, script)
            .await
            .map_err(Error::db(format!("applying schema version {version}")))?;
        sqlx::query(SCHEMA_VERSION_INSERT)
            .bind(version)
            .bind(ts(now()))
            .execute(&mut *self.tx)
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await.map_err(Error::db(SCHEMA_CONTEXT))
    }
}

pub(super) async fn install(store: &SqliteStore) -> Result<Vec<i64>> {
    // Version 4 rebuilds tables that others reference: with foreign keys on, dropping the
    // old one would cascade to its children. The pragma is a no-op inside a transaction,
    // so it is set on the connection before, and checked and restored after.
    let mut conn = store
        .pool
        .acquire()
        .await
        .map_err(Error::db(SCHEMA_CONTEXT))?;
    exec_raw(&mut conn, "PRAGMA foreign_keys = OFF")
        .await
        .map_err(Error::db(SCHEMA_CONTEXT))?;
    let installed = async {
        let tx = sqlx::Transaction::begin(&mut *conn, Some("BEGIN IMMEDIATE".into()))
            .await
            .map_err(Error::db(SCHEMA_CONTEXT))?;
        schema_install(Box::new(SqliteSchemaSteps { tx }), SCHEMA_MIGRATIONS).await
    }
    .await;
    let restored = async {
        let broken: Vec<sqlx::sqlite::SqliteRow> = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&mut *conn)
            .await?;
        exec_raw(&mut conn, "PRAGMA foreign_keys = ON").await?;
        Ok::<_, sqlx::Error>(broken.len())
    }
    .await;
    match restored {
        Ok(0) => installed,
        Ok(n) => {
            conn.detach();
            Err(Error::Corrupt(format!(
                "{n} tracking row(s) reference a missing row after the schema upgrade"
            )))
        }
        Err(e) => {
            // Never hand a connection with foreign keys off back to the pool.
            conn.detach();
            installed.and(Err(Error::db(SCHEMA_CONTEXT)(e)))
        }
    }
}

pub(super) async fn version(store: &SqliteStore) -> Result<Option<i64>> {
    let context = "reading the tracking schema version";
    let exists: i64 = sqlx::query_scalar(SCHEMA_VERSIONS_EXISTS)
        .fetch_one(&store.pool)
        .await
        .map_err(Error::db(context))?;
    if exists == 0 {
        return Ok(None);
    }
    sqlx::query_scalar(SCHEMA_VERSION_GET)
        .fetch_one(&store.pool)
        .await
        .map_err(Error::db(context))
}
