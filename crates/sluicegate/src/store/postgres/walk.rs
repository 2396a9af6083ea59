//! The keyset walk on PostgreSQL: a key as jsonb, bound key values, and the walk's SQL (run
//! alone, or inside the statement that creates a job).

use serde_json::Value;
use sqlx::types::Json;
use sqlx::PgConnection;

use crate::dialect::key_sql::{
    distinct_columns, distinct_cte, key_list, key_order, key_row, walk_condition,
};
use crate::ident::{self, TableName};
use crate::key::{Key, KeyColumn, KeySpec, Lower};
use crate::store::sub_batch::Walk;

/// The current row's key as jsonb: integers as numbers, anything else as its text.
pub(super) fn key_json(key: &KeySpec) -> String {
    let cols: Vec<String> = key
        .columns()
        .iter()
        .map(|c| {
            let q = ident::quote(&c.name);
            if c.key_type.is_integer() {
                format!("{q}::bigint")
            } else {
                format!("{q}::text")
            }
        })
        .collect();
    format!("jsonb_build_array({})", cols.join(", "))
}

/// A key held in the jsonb expression `e` as a row of values of the key's types, to compare
/// with [`key_row`](key_sql::key_row): `(CAST((e)->>0 AS bigint), CAST((e)->>1 AS uuid))`. The type names come
/// from [`KeyType`](crate::key::KeyType)'s fixed list, never from the database or the user.
fn key_from_json(key: &KeySpec, e: &str) -> String {
    let parts: Vec<String> = key
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| format!("CAST(({e})->>{i} AS {})", c.key_type.sql_name()))
        .collect();
    format!("({})", parts.join(", "))
}

/// How PostgreSQL writes a bound key value: integers as `bigint`, the others as text cast to
/// the column's type (from [`KeyType`](crate::key::KeyType)'s fixed list).
pub(super) fn pg_param(column: &KeyColumn, n: usize) -> String {
    if column.key_type.is_integer() {
        format!("${n}")
    } else {
        format!("CAST(${n} AS {})", column.key_type.sql_name())
    }
}

/// The keyset walk as one row `(first, last)` of jsonb keys: the first existing key (of a
/// row matching `scope`) from `lower` (inclusive or not) up to `max`, and the `size`-th one, or
/// the last one in range when fewer remain. `lower` and `max` are jsonb SQL expressions of ours
/// (parameters, a subquery), never user text; `scope` is the operator's condition, trusted like
/// `psql` input and checked at queue time. The comparisons are row values over the key's
/// columns, which its index serves, under the columns' own collations. A key that skips NULL
/// keys walks only rows without one; a key walked by distinct values counts `size` distinct
/// values instead of rows ([`distinct_sql`]).
pub(super) fn keyset_sql(
    table: &TableName,
    key: &KeySpec,
    scope: Option<&str>,
    (lower, inclusive, max): (&str, bool, &str),
    size: &str,
) -> String {
    let (t, row, json) = (table.quoted(), key_row(key, None), key_json(key));
    let op = if inclusive { ">=" } else { ">" };
    let upper = format!(
        "{row} <= {}{}",
        key_from_json(key, max),
        walk_condition(key, scope)
    );
    if key.walk().distinct {
        let start = format!("{row} {op} {} AND {upper}", key_from_json(key, lower));
        return distinct_sql(&t, key, &start, &upper, size);
    }
    let in_range = format!(
        "FROM {t} WHERE {row} {op} {} AND {upper}",
        key_from_json(key, lower),
    );
    let (asc, desc) = (key_order(key, "ASC"), key_order(key, "DESC"));
    // The keys the OFFSET skips are read bare and the jsonb built for the one kept: built in
    // the scan, it would be built for every key skipped (3–4× the walk's time).
    let columns = key_list(key);
    format!(
        "SELECT (SELECT {json} {in_range} ORDER BY {asc} LIMIT 1) AS first,
                coalesce((SELECT {json} FROM (SELECT {columns} {in_range} ORDER BY {asc}
                                              OFFSET {size} - 1 LIMIT 1) AS sluicegate_nth),
                         (SELECT {json} {in_range} ORDER BY {desc} LIMIT 1)) AS last"
    )
}

/// The walk by distinct values (`--distinct`, [`distinct_cte`]) as one row `(first, last)`
/// of jsonb keys, built for those two values only.
fn distinct_sql(t: &str, key: &KeySpec, start: &str, upper: &str, size: &str) -> String {
    let json: Vec<String> = key
        .columns()
        .iter()
        .zip(distinct_columns(key))
        .map(|(c, n)| {
            if c.key_type.is_integer() {
                format!("{n}::bigint")
            } else {
                format!("{n}::text")
            }
        })
        .collect();
    let json = format!("jsonb_build_array({})", json.join(", "));
    format!(
        "{cte}
         SELECT (SELECT {json} FROM sluicegate_distinct
                 WHERE sluicegate_n = 1 AND sluicegate_k0 IS NOT NULL) AS first,
                (SELECT {json} FROM sluicegate_distinct WHERE sluicegate_k0 IS NOT NULL
                 ORDER BY sluicegate_n DESC LIMIT 1) AS last",
        cte = distinct_cte(t, key, start, upper, size),
    )
}

pub(super) async fn walk(
    conn: &mut PgConnection,
    (table, key, scope): Walk<'_>,
    lower: &Lower,
    max: &Key,
    size: i64,
) -> std::result::Result<Option<(Key, Key)>, sqlx::Error> {
    let bounds = ("$1::jsonb", lower.is_inclusive(), "$2::jsonb");
    let sql = keyset_sql(table, key, scope, bounds, "$3");
    let (first, last): (Option<Json<Value>>, Option<Json<Value>>) = sqlx::query_as(&sql)
        .bind(Json(lower.key()))
        .bind(Json(max))
        .bind(size.max(1))
        .fetch_one(&mut *conn)
        .await?;
    let decode = |v: Json<Value>| {
        Key::from_json(v.0, "a key read by the walk")
            .map_err(|e| sqlx::Error::Decode(e.to_string().into()))
    };
    let Some(first) = first.map(decode).transpose()? else {
        return Ok(None);
    };
    let last = last
        .map(decode)
        .transpose()?
        .unwrap_or_else(|| first.clone());
    Ok(Some((first, last)))
}
