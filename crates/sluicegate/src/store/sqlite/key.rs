//! The key of the table being migrated, on SQLite: resolving it from the table's pragmas (its
//! columns, its primary key, its unique indexes), and refusing key columns holding values of
//! another storage class, which the walk would never visit.

use super::SqliteTarget;
use crate::error::{Error, Result};
use crate::ident::{self, TableName};
use crate::key::{KeySpec, KeyType, TableColumn, UniqueIndex};

pub(super) async fn resolve(
    target: &SqliteTarget,
    table: &TableName,
    requested: Option<&[String]>,
    non_unique: bool,
) -> Result<(TableName, KeySpec)> {
    let context = format!("looking up table {}", table.quoted());
    let schema = table.schema.clone().unwrap_or_else(|| "main".to_owned());
    let master = format!("{}.sqlite_master", ident::quote(&schema));
    let found: Option<String> = sqlx::query_scalar(&format!(
        "SELECT name FROM {master} WHERE type = 'table' AND name = $1 COLLATE NOCASE"
    ))
    .bind(&table.table)
    .fetch_optional(&target.pool)
    .await
    .or_else(|e| match &e {
        // An unknown schema ("no such table: x.sqlite_master") is an unknown table.
        sqlx::Error::Database(db) if db.message().contains("no such") => Ok(None),
        _ => Err(e),
    })
    .map_err(Error::db(&context))?;
    let Some(name) = found else {
        return Err(Error::UnknownTable {
            table: table.table.clone(),
            hint: String::new(),
        });
    };
    let name_of_table = name.clone();
    let without_rowid: bool = sqlx::query_scalar(
        "SELECT coalesce((SELECT wr FROM pragma_table_list($1) WHERE schema = $2), 0)",
    )
    .bind(&name)
    .bind(&schema)
    .fetch_one(&target.pool)
    .await
    .map_err(Error::db(&context))?;
    let info: Vec<(String, String, bool, i64)> = sqlx::query_as(
        "SELECT name, type, \"notnull\", pk FROM pragma_table_info($1, $2) ORDER BY cid",
    )
    .bind(&name)
    .bind(&schema)
    .fetch_all(&target.pool)
    .await
    .map_err(Error::db(&context))?;
    let mut pk: Vec<(i64, String)> = info
        .iter()
        .filter(|(_, _, _, pk)| *pk > 0)
        .map(|(name, _, _, pk)| (*pk, name.clone()))
        .collect();
    pk.sort();
    // A rowid table's single INTEGER PRIMARY KEY is the rowid itself, never NULL; a
    // WITHOUT ROWID table enforces NOT NULL on its key. Other primary keys of rowid tables
    // may hold NULL (an old SQLite quirk) unless declared NOT NULL.
    let rowid_alias = pk.len() == 1
        && !without_rowid
        && info
            .iter()
            .any(|(n, ty, _, p)| *p > 0 && n == &pk[0].1 && ty.eq_ignore_ascii_case("INTEGER"));
    // Such a key column that holds no NULL today is taken as NOT NULL (`id bigint PRIMARY
    // KEY` is common and never NULL in practice); one that holds a NULL is refused.
    let mut pk_without_nulls = Vec::new();
    for (name, _, not_null, pk) in &info {
        if *pk > 0 && !*not_null && !without_rowid && !rowid_alias {
            let sql = format!(
                "SELECT NOT EXISTS (SELECT 1 FROM {} WHERE {} IS NULL)",
                TableName {
                    schema: table.schema.clone(),
                    table: name_of_table.clone(),
                }
                .quoted(),
                ident::quote(name)
            );
            let none: bool = sqlx::query_scalar(&sql)
                .fetch_one(&target.pool)
                .await
                .map_err(Error::db(&context))?;
            if none {
                pk_without_nulls.push(name.clone());
            }
        }
    }
    let columns: Vec<TableColumn> = info
        .iter()
        .map(|(name, ty, not_null, pk)| {
            let upper = ty.to_ascii_uppercase();
            let key_type = if upper.contains("INT") {
                Some(KeyType::Bigint)
            } else if ["CHAR", "CLOB", "TEXT"].iter().any(|t| upper.contains(t)) {
                Some(KeyType::Text)
            } else {
                None
            };
            TableColumn {
                name: name.clone(),
                key_type,
                type_name: if ty.is_empty() {
                    "(none)".into()
                } else {
                    ty.clone()
                },
                not_null: *not_null
                    || (*pk > 0 && (without_rowid || rowid_alias))
                    || pk_without_nulls.contains(name),
            }
        })
        .collect();
    let mut indexes = Vec::new();
    if !pk.is_empty() {
        indexes.push(UniqueIndex {
            name: "PRIMARY KEY".into(),
            primary: true,
            partial: false,
            columns: pk.into_iter().map(|(_, name)| name).collect(),
        });
    }
    let list: Vec<(String, bool)> = sqlx::query_as(
        "SELECT name, partial FROM pragma_index_list($1, $2) WHERE \"unique\" AND origin <> 'pk'",
    )
    .bind(&name)
    .bind(&schema)
    .fetch_all(&target.pool)
    .await
    .map_err(Error::db(&context))?;
    for (index, partial) in list {
        let cols: Vec<Option<String>> =
            sqlx::query_scalar("SELECT name FROM pragma_index_info($1, $2) ORDER BY seqno")
                .bind(&index)
                .bind(&schema)
                .fetch_all(&target.pool)
                .await
                .map_err(Error::db(&context))?;
        let on_expressions = cols.iter().any(Option::is_none);
        indexes.push(UniqueIndex {
            name: index,
            primary: false,
            partial: partial || on_expressions,
            columns: cols.into_iter().flatten().collect(),
        });
    }
    // SQLite reads column names without regard to case: take them as it stores them.
    let requested: Option<Vec<String>> = requested.map(|names| {
        names
            .iter()
            .map(|n| {
                columns
                    .iter()
                    .find(|c| c.name.eq_ignore_ascii_case(n))
                    .map_or_else(|| n.clone(), |c| c.name.clone())
            })
            .collect()
    });
    let key = crate::key::choose(
        &name,
        &columns,
        &indexes,
        requested.as_deref(),
        non_unique,
        "INTEGER or TEXT",
    )?;
    let resolved = TableName {
        schema: table.schema.clone(),
        table: name,
    };
    // SQLite keeps a value of any storage class in any column: a BLOB (or TEXT) in an
    // INTEGER key sorts after every number, outside the range the walk covers, so its row
    // would never be visited; a REAL stops the walk. Refused before anything is written.
    for column in key.columns() {
        let expected = if column.key_type.is_integer() {
            "integer"
        } else {
            "text"
        };
        let sql = format!(
            "SELECT count(*), min(typeof({c})) FROM {} WHERE typeof({c}) <> $1 AND {c} IS NOT NULL",
            resolved.quoted(),
            c = ident::quote(&column.name)
        );
        let (strays, kind): (i64, Option<String>) = sqlx::query_as(&sql)
            .bind(expected)
            .fetch_one(&target.pool)
            .await
            .map_err(Error::db(&context))?;
        if strays > 0 {
            return Err(Error::InvalidSettings(format!(
                "key column {:?} of table {:?} holds {strays} value(s) stored as {} rather than {expected}: SQLite sorts them outside the key's range, so their rows would never be visited; store them as {expected} first",
                column.name,
                resolved.table,
                kind.unwrap_or_default()
            )));
        }
    }
    Ok((resolved, key))
}
