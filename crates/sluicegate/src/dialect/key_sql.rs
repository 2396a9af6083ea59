//! The SQL shapes of a key that both engines write the same way: its columns as a row, its
//! order, its range predicate, a scope condition. Each engine supplies only how a bound value
//! is written (`CAST($1 AS uuid)` on PostgreSQL, `$1` on SQLite) and keeps the rest of its
//! key SQL (JSON building, the walk) in its own file.

use crate::ident::{self, TableName};
use crate::key::{KeyColumn, KeySpec};

/// How an engine writes bound parameter `$n` for a value of `column`.
pub(crate) type ParamSql = fn(&KeyColumn, usize) -> String;

/// The key's quoted columns, each qualified by `table` when given.
fn columns(key: &KeySpec, table: Option<&TableName>) -> Vec<String> {
    let prefix = table
        .map(|t| format!("{}.", t.quoted()))
        .unwrap_or_default();
    key.columns()
        .iter()
        .map(|c| format!("{prefix}{}", ident::quote(&c.name)))
        .collect()
}

/// The key's columns as a row, qualified by `table` when given: `("a", "b")`.
pub(crate) fn key_row(key: &KeySpec, table: Option<&TableName>) -> String {
    format!("({})", columns(key, table).join(", "))
}

/// The key's columns as a list, for `json_array(...)` and the like: `"a", "b"`.
pub(crate) fn key_list(key: &KeySpec) -> String {
    columns(key, None).join(", ")
}

/// The key's columns in `direction`, for `ORDER BY`.
pub(crate) fn key_order(key: &KeySpec, direction: &str) -> String {
    let cols: Vec<String> = columns(key, None)
        .into_iter()
        .map(|c| format!("{c} {direction}"))
        .collect();
    cols.join(", ")
}

/// A key bound as parameters `$first..`, one per column, as `param` writes them.
pub(crate) fn key_params(key: &KeySpec, first: usize, param: ParamSql) -> String {
    let parts: Vec<String> = key
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| param(c, first + i))
        .collect();
    format!("({})", parts.join(", "))
}

/// ` AND (scope)`, or nothing.
pub(crate) fn scope_condition(scope: Option<&str>) -> String {
    scope
        .filter(|s| !s.trim().is_empty())
        .map(|s| format!(" AND ({s})"))
        .unwrap_or_default()
}

/// `WHERE (scope)`, or nothing.
pub(crate) fn scope_filter(scope: Option<&str>) -> String {
    scope
        .filter(|s| !s.trim().is_empty())
        .map(|s| format!("WHERE ({s})"))
        .unwrap_or_default()
}

/// The range predicate of a sub-batch, numbered as
/// [`SubBatch::execute`](crate::kind::SubBatch::execute) binds it: the first key as
/// `$1..$n`, the last as `$n+1..$2n`; `"id" BETWEEN $1 AND $2` for one column (as the `sql`
/// kind's `$1`/`$2`), a row-value comparison for several. With a scope, only the rows matching
/// it. With a `qualifier` (the table's quoted name or its alias in a statement that joins
/// others), the key's columns are qualified by it and the scope is read in a subquery on
/// `table` alone, matched by key, so that its unqualified names can only mean `table`'s
/// columns, whatever the statement joins.
pub(crate) fn range_predicate(
    key: &KeySpec,
    scope: Option<&str>,
    table: &TableName,
    qualifier: Option<&str>,
    param: ParamSql,
) -> String {
    let n = key.len();
    let prefixed = |prefix: Option<&str>| -> Vec<String> {
        key.columns()
            .iter()
            .map(|c| match prefix {
                Some(p) => format!("{p}.{}", ident::quote(&c.name)),
                None => ident::quote(&c.name),
            })
            .collect()
    };
    let cols = prefixed(qualifier);
    let range = if n == 1 {
        let (lo, hi) = (param(&key.columns()[0], 1), param(&key.columns()[0], 2));
        format!("{} BETWEEN {lo} AND {hi}", cols[0])
    } else {
        let row = format!("({})", cols.join(", "));
        format!(
            "({row} >= {} AND {row} <= {})",
            key_params(key, 1, param),
            key_params(key, n + 1, param)
        )
    };
    let scope = scope.filter(|s| !s.trim().is_empty());
    match (scope, qualifier) {
        (None, _) => range,
        (Some(_), None) => format!("{range}{}", scope_condition(scope)),
        (Some(scope), Some(_)) => {
            const ALIAS: &str = "sluicegate_scope";
            let inner = prefixed(Some(ALIAS));
            format!(
                "{range} AND EXISTS (SELECT 1 FROM {} AS {ALIAS} WHERE ({}) = ({}) AND ({scope}))",
                table.quoted(),
                inner.join(", "),
                cols.join(", ")
            )
        }
    }
}
