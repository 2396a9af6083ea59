//! Checking a migration's `--verify` condition over a key range, on PostgreSQL: the rows of
//! the range (and scope), those that violate the condition, and the first keys of those, in
//! one read-only statement under the migration's statement timeout.

use serde_json::Value;
use sqlx::types::Json;

use super::walk::{key_json, pg_param};
use super::PgTarget;
use crate::dialect::key_sql::{key_order, range_predicate};
use crate::error::{Error, Result};
use crate::ident::TableName;
use crate::key::{bind_key_values, Key, KeySpec};
use crate::store::VerifyCount;

/// The count, the violations and up to `samples` violating keys of `first ..= last`. A row
/// violates the condition unless it is true (NULL violates it).
#[allow(clippy::too_many_arguments)]
pub(super) async fn range(
    target: &PgTarget,
    (table, key, scope): (&TableName, &KeySpec, Option<&str>),
    condition: &str,
    (first, last): (&Key, &Key),
    samples: i64,
    statement_ms: i64,
) -> Result<VerifyCount> {
    let context = "verifying a migration's condition";
    let t = table.quoted();
    let predicate = range_predicate(key, scope, table, None, pg_param);
    let bad = format!("NOT coalesce(({condition}), false)");
    let sql = format!(
        "SELECT count(*), count(*) FILTER (WHERE {bad}),
                (SELECT coalesce(jsonb_agg(k), '[]') FROM (SELECT {json} AS k FROM {t}
                  WHERE {predicate} AND {bad} ORDER BY {asc} LIMIT {samples}) s)
         FROM {t} WHERE {predicate}",
        json = key_json(key),
        asc = key_order(key, "ASC"),
        samples = samples.max(0),
    );
    let mut tx = target.pool.begin().await.map_err(Error::db(context))?;
    let setup = format!(
        "SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = {}",
        statement_ms.max(0)
    );
    sqlx::Executor::execute(&mut *tx, setup.as_str())
        .await
        .map_err(Error::db(context))?;
    let values = first.values().iter().chain(last.values());
    let (checked, violations, keys): (i64, i64, Json<Value>) =
        bind_key_values!(sqlx::query_as(&sql), values)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db(context))?;
    tx.rollback().await.map_err(Error::db(context))?;
    let samples = match keys.0 {
        Value::Array(keys) => keys
            .into_iter()
            .map(|k| Key::from_json(k, "a key read by the verification"))
            .collect::<Result<Vec<_>>>()?,
        _ => Vec::new(),
    };
    Ok(VerifyCount {
        checked,
        violations,
        samples,
    })
}
