//! The keyset walk on SQLite: bound key values as they are, and the walk's SQL, run alone or
//! in the transaction that creates a job.

use sqlx::SqliteConnection;

use crate::dialect::key_sql::{
    distinct_columns, distinct_cte, key_list, key_order, key_params, key_row, walk_condition,
};
use crate::ident::TableName;
use crate::key::{bind_key_values, Key, KeyColumn, KeySpec, Lower};
use crate::store::sub_batch::Walk;

/// How SQLite writes a bound key value: as it is (comparisons take the column's affinity).
pub(super) fn plain_param(_: &KeyColumn, n: usize) -> String {
    format!("${n}")
}

/// The keyset walk as one row `(first, nth, last)` of JSON keys: the first key from the
/// lower bound `$1..$n` (inclusive or not) up to `$n+1..$2n`, the `$2n+1`-th one, and the
/// last one in range. Row-value comparisons over the key's columns (their own collations),
/// which the key's index serves. A key that skips NULL keys walks only rows without one; a key
/// walked by distinct values counts distinct values instead of rows ([`distinct_sql`]).
fn walk_sql((table, key, scope): Walk<'_>, inclusive: bool) -> String {
    let n = key.len();
    let (t, row) = (table.quoted(), key_row(key, None));
    let json = format!("json_array({})", key_list(key));
    let op = if inclusive { ">=" } else { ">" };
    let upper = format!(
        "{row} <= {}{}",
        key_params(key, n + 1, plain_param),
        walk_condition(key, scope)
    );
    if key.walk().distinct {
        let start = format!("{row} {op} {} AND {upper}", key_params(key, 1, plain_param));
        return distinct_sql(table, key, &start, &upper, &format!("${}", 2 * n + 1));
    }
    let in_range = format!(
        "FROM {t} WHERE {row} {op} {} AND {upper}",
        key_params(key, 1, plain_param),
    );
    let (asc, desc) = (key_order(key, "ASC"), key_order(key, "DESC"));
    // The keys the OFFSET skips are read bare, the JSON built for the one kept only.
    let cols = key_list(key);
    format!(
        "SELECT (SELECT {json} {in_range} ORDER BY {asc} LIMIT 1),
                (SELECT {json} FROM (SELECT {cols} {in_range} ORDER BY {asc}
                                     LIMIT 1 OFFSET ${} - 1) AS sluicegate_nth),
                (SELECT {json} {in_range} ORDER BY {desc} LIMIT 1)",
        2 * n + 1
    )
}

/// The walk by distinct values (`--distinct`, [`distinct_cte`]) as one row `(first, nth,
/// last)` as [`walk_sql`]'s, the JSON built for the values returned only.
fn distinct_sql(table: &TableName, key: &KeySpec, start: &str, upper: &str, size: &str) -> String {
    let json = format!("json_array({})", distinct_columns(key).join(", "));
    format!(
        "{cte}
         SELECT (SELECT {json} FROM sluicegate_distinct
                 WHERE sluicegate_n = 1 AND sluicegate_k0 IS NOT NULL),
                NULL,
                (SELECT {json} FROM sluicegate_distinct WHERE sluicegate_k0 IS NOT NULL
                 ORDER BY sluicegate_n DESC LIMIT 1)",
        cte = distinct_cte(&table.quoted(), key, start, upper, size),
    )
}

pub(super) async fn walk(
    conn: &mut SqliteConnection,
    walk: Walk<'_>,
    lower: &Lower,
    max: &Key,
    size: i64,
) -> std::result::Result<Option<(Key, Key)>, sqlx::Error> {
    let sql = walk_sql(walk, lower.is_inclusive());
    let values = lower.key().values().iter().chain(max.values());
    let query = bind_key_values!(sqlx::query_as(&sql), values);
    let (first, nth, last): (Option<String>, Option<String>, Option<String>) =
        query.bind(size.max(1)).fetch_one(&mut *conn).await?;
    let decode = |text: String| {
        serde_json::from_str(&text)
            .map_err(|e| crate::Error::Corrupt(e.to_string()))
            .and_then(|v| Key::from_json(v, "a key read by the walk"))
            .map_err(|e| sqlx::Error::Decode(e.to_string().into()))
    };
    let Some(first) = first.map(decode).transpose()? else {
        return Ok(None);
    };
    let last = nth
        .or(last)
        .map(decode)
        .transpose()?
        .unwrap_or_else(|| first.clone());
    Ok(Some((first, last)))
}
