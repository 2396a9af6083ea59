//! The table being migrated, on SQLite: [`SqliteTarget`] and its [`Target`] primitives. The
//! key and the sub-batches are in their own modules.

use async_trait::async_trait;
use sqlx::sqlite::SqlitePool;

use super::key;
use crate::dialect::key_sql::{distinct_count, key_list, key_order, walk_filter};
use crate::dialect::Backend;
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::health::HealthSample;
use crate::ident::TableName;
use crate::key::{Key, KeyOptions, KeySpec, Lower};
use crate::model::{CitusTable, NewLane};
use crate::store::{
    sub_batch, Capabilities, LedgerCursor, PerformedSubBatch, SubBatchSpec, Target, PROBE_TIMEOUT,
};

/// The table being migrated, on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteTarget {
    pub(super) pool: SqlitePool,
    /// Whether the tracking tables share this file (exactly-once cursor commits).
    pub(super) same_database_store: bool,
}

impl SqliteTarget {
    /// A target on `pool`; `same_database_store` when the tracking tables are in this file.
    pub fn new(pool: SqlitePool, same_database_store: bool) -> Self {
        Self {
            pool,
            same_database_store,
        }
    }
}

#[async_trait]
impl Target for SqliteTarget {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::SQLITE
    }

    /// `sqlite:` and the file's canonical path (symbolic links resolved), as SQLite names the
    /// main database: the same file by any URL or relative path, and nothing written into it.
    /// A copy is another target; a moved file is too (its migrations are then skipped, never
    /// run elsewhere). An in-memory database is one of a kind.
    async fn identity(&self) -> Result<String> {
        let file: Option<String> =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_optional(&self.pool)
                .await
                .map_err(Error::db("reading the target database's identity"))?;
        Ok(match file.filter(|f| !f.is_empty()) {
            Some(file) => {
                let path = std::fs::canonicalize(&file).unwrap_or_else(|_| file.into());
                format!("sqlite:{}", path.display())
            }
            None => {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let at = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
                format!("sqlite::memory:{}-{at}-{n}", std::process::id())
            }
        })
    }

    /// SQLite has no date or time types: a key value is compared as it is stored, and a bound
    /// as it is given.
    async fn key_canonical(&self, _key: &KeySpec, value: &Key, _flag: &str) -> Result<Key> {
        Ok(value.clone())
    }

    async fn key_resolve(
        &self,
        table: &TableName,
        requested: Option<&[String]>,
        options: KeyOptions,
    ) -> Result<(TableName, KeySpec)> {
        key::resolve(self, table, requested, options).await
    }

    async fn key_bounds(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
    ) -> Result<Option<(Key, Key)>> {
        let (t, filter) = (table.quoted(), walk_filter(key, scope));
        let json = format!("json_array({})", key_list(key));
        let sql = format!(
            "SELECT (SELECT {json} FROM {t} {filter} ORDER BY {} LIMIT 1),
                    (SELECT {json} FROM {t} {filter} ORDER BY {} LIMIT 1)",
            key_order(key, "ASC"),
            key_order(key, "DESC")
        );
        let context = format!("reading the key range of {t}");
        let (min, max): (Option<String>, Option<String>) = sqlx::query_as(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(&context))?;
        let decode = |text: String| {
            serde_json::from_str(&text)
                .map_err(|e| Error::Corrupt(e.to_string()))
                .and_then(|v| Key::from_json(v, &context))
        };
        match (min, max) {
            (Some(min), Some(max)) => Ok(Some((decode(min)?, decode(max)?))),
            _ => Ok(None),
        }
    }

    async fn row_estimate(&self, table: &TableName) -> Result<Option<i64>> {
        let sql = format!("SELECT count(*) FROM {}", table.quoted());
        let n: i64 = sqlx::query_scalar(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db("counting rows"))?;
        Ok(Some(n))
    }

    async fn scope_estimate(&self, table: &TableName, scope: &str) -> Result<Option<i64>> {
        // SQLite keeps no estimate worth the name: count.
        let sql = format!("SELECT count(*) FROM {} WHERE ({scope})", table.quoted());
        let n: i64 = sqlx::query_scalar(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db("counting the rows of the scope"))?;
        Ok(Some(n))
    }

    async fn distinct_estimate(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
    ) -> Result<Option<i64>> {
        // SQLite keeps no estimate worth the name: count, the key's index read in order.
        let n: i64 = sqlx::query_scalar(&distinct_count(key, table, scope))
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db("counting the distinct values of the key"))?;
        Ok(Some(n))
    }

    async fn range_next(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
        lower: &Lower,
        max: &Key,
        size: i64,
        statement_ms: i64,
    ) -> Result<Option<(Key, Key)>> {
        let bounds = (lower, max, size);
        sub_batch::range_next(self, (table, key, scope), bounds, statement_ms).await
    }

    async fn sub_batch_perform(
        &self,
        spec: SubBatchSpec<'_>,
    ) -> std::result::Result<Option<Box<dyn PerformedSubBatch>>, Failure> {
        sub_batch::perform(self, spec).await
    }

    async fn verify_range(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
        condition: &str,
        first: &Key,
        last: &Key,
        samples: i64,
        _statement_ms: i64,
    ) -> Result<crate::store::VerifyCount> {
        super::verify::range(self, (table, key, scope), condition, (first, last), samples).await
    }

    async fn sub_batch_try(
        &self,
        spec: SubBatchSpec<'_>,
    ) -> std::result::Result<crate::store::TriedSubBatch, Failure> {
        sub_batch::try_rolled_back(self, spec).await
    }

    /// SQLite has no vacuum workers, archiver, replicas or lock table to ask: only the probe
    /// means something here.
    async fn health_sample(&self, _table: &TableName, probe: Option<&str>) -> Result<HealthSample> {
        let mut sample = HealthSample {
            not_available: Some("not available on SQLite".into()),
            ..HealthSample::default()
        };
        if let Some(probe) = probe {
            let context = "running the health probe";
            let mut conn = self.pool.acquire().await.map_err(Error::db(context))?;
            sqlx::Executor::execute(&mut *conn, "PRAGMA query_only = 1")
                .await
                .map_err(Error::db(context))?;
            let answer = tokio::time::timeout(
                PROBE_TIMEOUT,
                sqlx::query_scalar::<_, Option<bool>>(probe).fetch_one(&mut *conn),
            )
            .await;
            sqlx::Executor::execute(&mut *conn, "PRAGMA query_only = 0")
                .await
                .map_err(Error::db(context))?;
            sample.probe = Some(match answer {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(sqlx::Error::RowNotFound)) => Err("it returned no row".into()),
                // Said in SQL's terms, not the driver's (which names Rust types).
                Ok(Err(sqlx::Error::ColumnDecode { .. })) => {
                    Err("it must return one boolean column (true or false, 1 or 0)".into())
                }
                Ok(Err(e)) => Err(Failure::from_sqlx(&e).message),
                Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
            });
        }
        Ok(sample)
    }

    /// SQLite has no Citus tables.
    async fn citus_table(&self, _table: &TableName) -> Result<Option<(CitusTable, Vec<NewLane>)>> {
        Ok(None)
    }

    /// SQLite has no lanes, so no ledger.
    async fn ledger_fence(
        &self,
        _schema: &str,
        ledger: &LedgerCursor,
    ) -> Result<Option<Option<Key>>> {
        Err(Error::Corrupt(format!(
            "job {} has a lane, but SQLite has no lanes and no lane ledger",
            ledger.job_id
        )))
    }
}
