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

/// The rows a walk of `key` may visit at all, as conditions to `AND`: its columns `IS NOT NULL`
/// when the key skips NULL keys (`--skip-null-keys`; placed here, from the key's own columns,
/// so that no walk, bound or sub-batch can leave them out), then the scope. Empty for a plain
/// key without a scope.
fn row_conditions(key: &KeySpec, scope: Option<&str>) -> Vec<String> {
    let mut conditions = not_null_conditions(key, None);
    if let Some(scope) = scope.filter(|s| !s.trim().is_empty()) {
        conditions.push(format!("({scope})"));
    }
    conditions
}

/// `"a" IS NOT NULL` for each column of a key that skips NULL keys (qualified by `qualifier`
/// when given), none for any other key.
pub(crate) fn not_null_conditions(key: &KeySpec, qualifier: Option<&str>) -> Vec<String> {
    if !key.walk().skip_nulls {
        return Vec::new();
    }
    key.columns()
        .iter()
        .map(|c| match qualifier {
            Some(q) => format!("{q}.{} IS NOT NULL", ident::quote(&c.name)),
            None => format!("{} IS NOT NULL", ident::quote(&c.name)),
        })
        .collect()
}

/// ` AND ...` the rows a walk of `key` may visit ([`row_conditions`]), or nothing.
pub(crate) fn walk_condition(key: &KeySpec, scope: Option<&str>) -> String {
    row_conditions(key, scope)
        .iter()
        .map(|c| format!(" AND {c}"))
        .collect()
}

/// `WHERE ...` the rows a walk of `key` may visit ([`row_conditions`]), or nothing.
pub(crate) fn walk_filter(key: &KeySpec, scope: Option<&str>) -> String {
    let conditions = row_conditions(key, scope);
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

/// Counts the distinct values of `key` that a walk of `table` visits (within `scope`, NULL
/// keys left out where the walk skips them): the dry run's figure for `--distinct` where it
/// counts outright.
pub(crate) fn distinct_count(key: &KeySpec, table: &TableName, scope: Option<&str>) -> String {
    format!(
        "SELECT count(*) FROM (SELECT DISTINCT {} FROM {} {}) AS sluicegate_values",
        key_list(key),
        table.quoted(),
        walk_filter(key, scope)
    )
}

/// `"a" IS NULL OR "b" IS NULL`: the rows a walk that skips NULL keys never visits (for the
/// estimate `queue` prints).
pub(crate) fn null_key_condition(key: &KeySpec) -> String {
    key.columns()
        .iter()
        .map(|c| format!("{} IS NULL", ident::quote(&c.name)))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The range predicate of a sub-batch, numbered as
/// [`SubBatch::execute`](crate::kind::SubBatch::execute) binds it: the first key as
/// `$1..$n`, the last as `$n+1..$2n`; `"id" BETWEEN $1 AND $2` for one column (as the `sql`
/// kind's `$1`/`$2`), a row-value comparison for several. With a scope, only the rows matching
/// it. With a `qualifier` (the table's quoted name or its alias in a statement that joins
/// others), the key's columns are qualified by it and the scope is read in a subquery on
/// `table` alone, matched by key, so that its unqualified names can only mean `table`'s
/// columns, whatever the statement joins. A key that skips NULL keys adds its columns' `IS NOT
/// NULL` (a row-value comparison alone would let `(2, NULL)` into `(1, 1) ..= (3, 3)`).
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
    let not_null = not_null_conditions(key, qualifier);
    let range = if not_null.is_empty() {
        range
    } else {
        format!("({range} AND {})", not_null.join(" AND "))
    };
    let scope = scope.filter(|s| !s.trim().is_empty());
    match (scope, qualifier) {
        (None, _) => range,
        (Some(scope), None) => format!("{range} AND ({scope})"),
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

/// The names the walk by distinct values (`--distinct`) gives a key value's columns in its CTE:
/// `sluicegate_k0`, `sluicegate_k1`, ...
pub(crate) fn distinct_columns(key: &KeySpec) -> Vec<String> {
    (0..key.len()).map(|i| format!("sluicegate_k{i}")).collect()
}

/// The walk by distinct values (`--distinct`), a loose index scan, as a recursive CTE
/// `sluicegate_distinct (sluicegate_k0, ..., sluicegate_n)`: it steps from one key value to the
/// next greater one, each step one probe of the key's index per column (`start`: the
/// conditions of the first value, `upper`: those of every value), and stops at the `size`-th
/// value or the end of the range; the duplicates in between are never read. A row whose
/// `sluicegate_k0` is NULL is the end of the range. Each engine selects the first and last
/// values from it, as its own JSON. `t` is the table, quoted.
pub(crate) fn distinct_cte(t: &str, key: &KeySpec, start: &str, upper: &str, size: &str) -> String {
    let (row, asc) = (key_row(key, None), key_order(key, "ASC"));
    let names = distinct_columns(key);
    let next = |condition: &str| -> String {
        key.columns()
            .iter()
            .map(|c| {
                format!(
                    "(SELECT {} FROM {t} WHERE {condition} ORDER BY {asc} LIMIT 1)",
                    ident::quote(&c.name)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let previous: Vec<String> = names.iter().map(|n| format!("d.{n}")).collect();
    let after = format!("{row} > ({}) AND {upper}", previous.join(", "));
    format!(
        "WITH RECURSIVE sluicegate_distinct ({cols}, sluicegate_n) AS (
             SELECT {first}, 1
             UNION ALL
             SELECT {then}, d.sluicegate_n + 1 FROM sluicegate_distinct AS d
             WHERE d.sluicegate_n < {size} AND d.sluicegate_k0 IS NOT NULL
         )",
        cols = names.join(", "),
        first = next(start),
        then = next(&after),
    )
}
