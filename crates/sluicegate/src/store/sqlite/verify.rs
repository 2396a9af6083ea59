//! Checking a migration's `--verify` condition over a key range, on SQLite: the rows of the
//! range (and scope), those that violate the condition, and the first keys of those.

use crate::dialect::key_sql::{key_list, key_order, range_predicate};
use crate::error::{Error, Result};
use crate::ident::TableName;
use crate::key::{bind_key_values, Key, KeySpec};
use crate::store::VerifyCount;

use super::walk::plain_param;
use super::SqliteTarget;

/// The count, the violations and up to `samples` violating keys of `first ..= last`. A row
/// violates the condition unless it is true (NULL violates it).
pub(super) async fn range(
    target: &SqliteTarget,
    (table, key, scope): (&TableName, &KeySpec, Option<&str>),
    condition: &str,
    (first, last): (&Key, &Key),
    samples: i64,
) -> Result<VerifyCount> {
    let context = "verifying a migration's condition";
    let t = table.quoted();
    let predicate = range_predicate(key, scope, table, None, plain_param);
    let bad = format!("NOT coalesce(({condition}), 0)");
    let sql = format!(
        "SELECT count(*), coalesce(sum(CASE WHEN {bad} THEN 1 ELSE 0 END), 0),
                (SELECT json_group_array(json(k)) FROM (SELECT json_array({cols}) AS k FROM {t}
                  WHERE {predicate} AND {bad} ORDER BY {asc} LIMIT {samples}))
         FROM {t} WHERE {predicate}",
        cols = key_list(key),
        asc = key_order(key, "ASC"),
        samples = samples.max(0),
    );
    let values = first.values().iter().chain(last.values());
    let (checked, violations, keys): (i64, i64, String) =
        bind_key_values!(sqlx::query_as(&sql), values)
            .fetch_one(&target.pool)
            .await
            .map_err(Error::db(context))?;
    let keys: serde_json::Value = serde_json::from_str(&keys)
        .map_err(|e| Error::Corrupt(format!("the verification's keys: {e}")))?;
    let samples = match keys {
        serde_json::Value::Array(keys) => keys
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
