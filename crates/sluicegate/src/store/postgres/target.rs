//! The table being migrated, on PostgreSQL: [`PgTarget`] and its [`Target`] primitives. The
//! key, the health sample and the sub-batches are in their own modules.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::PgPool;
use sqlx::types::Json;

use super::sub_batch::TrackingSql;
use super::walk::key_json;
use super::work::WorkSessions;
use super::{citus, health, key, PgStore};
use crate::dialect::key_sql::{distinct_count, key_order, walk_filter};
use crate::dialect::Backend;
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::health::HealthSample;
use crate::ident::TableName;
use crate::key::{Key, KeyOptions, KeySpec, Lower};
use crate::model::{CitusTable, NewLane};
use crate::store::{
    sub_batch, Capabilities, LedgerCursor, PerformedSubBatch, SubBatchSpec, Target,
};

/// The target's identity: the cluster's system identifier (kept by every copy made of it with
/// `pg_basebackup`, so a replica promoted in its place is the same target) and the database.
const TARGET_IDENTITY: &str =
    "SELECT 'postgres:' || system_identifier::text || '/' || current_database()
    FROM pg_catalog.pg_control_system()";

/// The target's identity when `pg_control_system()` may not be executed: where the server
/// listens (`local` over a Unix socket) and the database.
const TARGET_IDENTITY_BY_ADDRESS: &str = "SELECT 'postgres:' || coalesce(host(inet_server_addr()), 'local')
    || ':' || coalesce(inet_server_port()::text, current_setting('port')) || '/' || current_database()";

const TARGET_ROW_ESTIMATE: &str =
    "SELECT reltuples::bigint FROM pg_catalog.pg_class WHERE oid = to_regclass($1)";

/// The planner's estimate of a column's distinct values (negative: a share of the rows); a
/// partitioned table's figure is the one over all its partitions (`inherited`).
const TARGET_N_DISTINCT: &str = "SELECT n_distinct FROM pg_catalog.pg_stats
    WHERE schemaname = coalesce($1, current_schema()) AND tablename = $2 AND attname = $3
    ORDER BY inherited DESC LIMIT 1";

/// The table being migrated, on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgTarget {
    pub(super) pool: PgPool,
    /// The sessions sub-batches run in, the most recently used first ([`WorkSessions`]).
    pub(super) work: Arc<WorkSessions>,
    /// The tracking store's statements that commit with a sub-batch, when it lives in this
    /// same database.
    pub(super) tracking: Option<Arc<TrackingSql>>,
    /// The health query for this role (with or without the archiver's directory), built at
    /// the first sample: what a role may execute does not change under a running worker.
    pub(super) health_sql: Arc<tokio::sync::OnceCell<String>>,
}

impl PgTarget {
    /// A target on `pool`; `same_database_store` makes each sub-batch commit the job cursor
    /// in its own transaction (exactly-once).
    pub fn new(pool: PgPool, same_database_store: Option<&PgStore>) -> Self {
        let work = WorkSessions::new(&pool);
        Self {
            pool,
            work,
            health_sql: Arc::default(),
            tracking: same_database_store.map(|store| Arc::new(TrackingSql::of(store))),
        }
    }
}

#[async_trait]
impl Target for PgTarget {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::POSTGRES
    }

    async fn identity(&self) -> Result<String> {
        let context = "reading the target database's identity";
        match sqlx::query_scalar(TARGET_IDENTITY)
            .fetch_one(&self.pool)
            .await
        {
            Ok(id) => Ok(id),
            // EXECUTE on pg_control_system() revoked from this role: the server's address
            // instead (less stable: another address of the same server is another target,
            // whose migrations are then skipped, never run elsewhere).
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {
                sqlx::query_scalar(TARGET_IDENTITY_BY_ADDRESS)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(Error::db(context))
            }
            Err(e) => Err(Error::db(context)(e)),
        }
    }

    async fn key_canonical(&self, key: &KeySpec, value: &Key, flag: &str) -> Result<Key> {
        key::canonical(self, key, value, flag).await
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
        let (t, json) = (table.quoted(), key_json(key));
        let filter = walk_filter(key, scope);
        let sql = format!(
            "SELECT (SELECT {json} FROM {t} {filter} ORDER BY {} LIMIT 1),
                    (SELECT {json} FROM {t} {filter} ORDER BY {} LIMIT 1)",
            key_order(key, "ASC"),
            key_order(key, "DESC")
        );
        let context = format!("reading the key range of {t}");
        let (min, max): (Option<Json<Value>>, Option<Json<Value>>) = sqlx::query_as(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(&context))?;
        match (min, max) {
            (Some(min), Some(max)) => Ok(Some((
                Key::from_json(min.0, &context)?,
                Key::from_json(max.0, &context)?,
            ))),
            _ => Ok(None),
        }
    }

    async fn row_estimate(&self, table: &TableName) -> Result<Option<i64>> {
        let estimate: Option<i64> = sqlx::query_scalar(TARGET_ROW_ESTIMATE)
            .bind(table.quoted())
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db("estimating rows"))?
            .flatten();
        if let Some(n) = estimate.filter(|n| *n >= 0) {
            return Ok(Some(n));
        }
        // Never analyzed: count once.
        let sql = format!("SELECT count(*) FROM {}", table.quoted());
        let n: i64 = sqlx::query_scalar(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db("counting rows"))?;
        Ok(Some(n))
    }

    async fn scope_estimate(&self, table: &TableName, scope: &str) -> Result<Option<i64>> {
        // A sampled count: the share of matching rows in about 30,000 rows read from whole
        // pages (TABLESAMPLE SYSTEM), times the table's estimate. The planner's own estimate
        // of an arbitrary condition is often a default selectivity (0.5% for `a % 4 = 0`), far
        // off; a small table is counted outright.
        let context = "estimating the rows of a condition";
        let Some(total) = self.row_estimate(table).await? else {
            return Ok(None);
        };
        let t = table.quoted();
        let percent = if total <= 100_000 {
            100.0
        } else {
            (30_000.0 / total as f64 * 100.0).clamp(0.01, 100.0)
        };
        let sql = format!(
            "SELECT count(*) FILTER (WHERE ({scope})), count(*) FROM {t} TABLESAMPLE SYSTEM ($1)"
        );
        let (matched, seen): (i64, i64) = sqlx::query_as(&sql)
            .bind(percent)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db(context))?;
        if seen == 0 {
            return Ok(Some(0));
        }
        Ok(Some(
            (total as f64 * matched as f64 / seen as f64).round() as i64
        ))
    }

    async fn distinct_estimate(
        &self,
        table: &TableName,
        key: &KeySpec,
        scope: Option<&str>,
    ) -> Result<Option<i64>> {
        let context = "estimating the distinct values of the key";
        let Some(total) = self.row_estimate(table).await? else {
            return Ok(None);
        };
        // A small table is counted outright, as a scope is.
        if total <= 100_000 {
            let n: i64 = sqlx::query_scalar(&distinct_count(key, table, scope))
                .fetch_one(&self.pool)
                .await
                .map_err(Error::db(context))?;
            return Ok(Some(n));
        }
        // A large one: the planner's n_distinct of a one-column key (negative: a share of
        // the rows), which leaves NULL out; a scope or a composite key has no such figure.
        let [column] = key.columns() else {
            return Ok(None);
        };
        if scope.is_some() {
            return Ok(None);
        }
        let n_distinct: Option<f32> = sqlx::query_scalar(TARGET_N_DISTINCT)
            .bind(table.schema.as_deref())
            .bind(&table.table)
            .bind(&column.name)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db(context))?
            .flatten();
        Ok(n_distinct.map(|n| {
            if n < 0.0 {
                (-n as f64 * total as f64).round() as i64
            } else {
                n as i64
            }
        }))
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
        statement_ms: i64,
    ) -> Result<crate::store::VerifyCount> {
        super::verify::range(
            self,
            (table, key, scope),
            condition,
            (first, last),
            samples,
            statement_ms,
        )
        .await
    }

    async fn sub_batch_try(
        &self,
        spec: SubBatchSpec<'_>,
    ) -> std::result::Result<crate::store::TriedSubBatch, Failure> {
        sub_batch::try_rolled_back(self, spec).await
    }

    async fn health_sample(&self, table: &TableName, probe: Option<&str>) -> Result<HealthSample> {
        health::sample(self, table, probe).await
    }

    async fn citus_table(&self, table: &TableName) -> Result<Option<(CitusTable, Vec<NewLane>)>> {
        citus::table(self, table).await
    }

    async fn ledger_fence(
        &self,
        schema: &str,
        ledger: &LedgerCursor,
    ) -> Result<Option<Option<Key>>> {
        citus::ledger_fence(self, schema, ledger).await
    }
}
