//! The key of the table being migrated, on SQLite: resolving it from the table's pragmas (its
//! columns, its primary key, its unique indexes), and refusing key columns holding values of
//! another storage class, which the walk would never visit.

use sqlx::SqlitePool;

use super::SqliteTarget;
use crate::error::{Error, Result};
use crate::ident::{self, TableName};
use crate::key::{KeyOptions, KeySpec, KeyType, TableColumn, UniqueIndex};

/// The table as `pragma_table_info` describes it: each column's name, declared type, `NOT
/// NULL` and position in the primary key (0: none).
type TableInfo = Vec<(String, String, bool, i64)>;

/// [`Target::key_resolve`](crate::store::Target::key_resolve) on SQLite.
pub(super) async fn resolve(
    target: &SqliteTarget,
    table: &TableName,
    requested: Option<&[String]>,
    options: KeyOptions,
) -> Result<(TableName, KeySpec)> {
    let context = format!("looking up table {}", table.quoted());
    let pool = &target.pool;
    let schema = table.schema.clone().unwrap_or_else(|| "main".to_owned());
    let name = find_table(pool, table, &schema, &context).await?;
    let resolved = TableName {
        schema: table.schema.clone(),
        table: name,
    };
    let (columns, primary_key) = columns(pool, &resolved, &schema)
        .await
        .map_err(Error::db(&context))?;
    let mut indexes = Vec::new();
    if !primary_key.is_empty() {
        indexes.push(UniqueIndex {
            name: "PRIMARY KEY".into(),
            primary: true,
            partial: false,
            columns: primary_key,
        });
    }
    indexes.extend(
        unique_indexes(pool, &resolved.table, &schema)
            .await
            .map_err(Error::db(&context))?,
    );
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
        &resolved.table,
        &columns,
        &indexes,
        requested.as_deref(),
        options,
        "INTEGER or TEXT",
    )?;
    refuse_strays(pool, &resolved, &key, &context).await?;
    Ok((resolved, key))
}

/// The table's name as SQLite stores it (names are matched without regard to case).
async fn find_table(
    pool: &SqlitePool,
    table: &TableName,
    schema: &str,
    context: &str,
) -> Result<String> {
    let master = format!("{}.sqlite_master", ident::quote(schema));
    let found: Option<String> = sqlx::query_scalar(&format!(
        "SELECT name FROM {master} WHERE type = 'table' AND name = $1 COLLATE NOCASE"
    ))
    .bind(&table.table)
    .fetch_optional(pool)
    .await
    .or_else(|e| match &e {
        // An unknown schema ("no such table: x.sqlite_master") is an unknown table.
        sqlx::Error::Database(db) if db.message().contains("no such") => Ok(None),
        _ => Err(e),
    })
    .map_err(Error::db(context))?;
    found.ok_or_else(|| Error::UnknownTable {
        table: table.table.clone(),
        hint: String::new(),
    })
}

/// The table's columns, each with the key type it would have and whether it may hold NULL,
/// and its primary key's columns in order.
async fn columns(
    pool: &SqlitePool,
    table: &TableName,
    schema: &str,
) -> sqlx::Result<(Vec<TableColumn>, Vec<String>)> {
    let without_rowid: bool = sqlx::query_scalar(
        "SELECT coalesce((SELECT wr FROM pragma_table_list($1) WHERE schema = $2), 0)",
    )
    .bind(&table.table)
    .bind(schema)
    .fetch_one(pool)
    .await?;
    let info: TableInfo = sqlx::query_as(
        "SELECT name, type, \"notnull\", pk FROM pragma_table_info($1, $2) ORDER BY cid",
    )
    .bind(&table.table)
    .bind(schema)
    .fetch_all(pool)
    .await?;
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
    let enforced = without_rowid || rowid_alias;
    let without_nulls = pk_without_nulls(pool, table, &info, enforced).await?;
    let columns = info
        .iter()
        .map(|(name, ty, not_null, pk)| TableColumn {
            name: name.clone(),
            key_type: key_type(ty),
            type_name: if ty.is_empty() {
                "(none)".into()
            } else {
                ty.clone()
            },
            not_null: *not_null || (*pk > 0 && enforced) || without_nulls.contains(name),
        })
        .collect();
    Ok((columns, pk.into_iter().map(|(_, name)| name).collect()))
}

/// The key type of a column of declared type `ty`, by SQLite's affinity rules.
fn key_type(ty: &str) -> Option<KeyType> {
    let upper = ty.to_ascii_uppercase();
    if upper.contains("INT") {
        Some(KeyType::Bigint)
    } else if ["CHAR", "CLOB", "TEXT"].iter().any(|t| upper.contains(t)) {
        Some(KeyType::Text)
    } else {
        None
    }
}

/// The primary key's columns that SQLite does not keep from NULL (unless `enforced`) but that
/// hold none today: taken as NOT NULL (`id bigint PRIMARY KEY` is common and never NULL in
/// practice); one that holds a NULL is refused.
async fn pk_without_nulls(
    pool: &SqlitePool,
    table: &TableName,
    info: &TableInfo,
    enforced: bool,
) -> sqlx::Result<Vec<String>> {
    let mut without_nulls = Vec::new();
    for (name, _, not_null, pk) in info {
        if *pk > 0 && !*not_null && !enforced {
            let sql = format!(
                "SELECT NOT EXISTS (SELECT 1 FROM {} WHERE {} IS NULL)",
                table.quoted(),
                ident::quote(name)
            );
            if sqlx::query_scalar::<_, bool>(&sql).fetch_one(pool).await? {
                without_nulls.push(name.clone());
            }
        }
    }
    Ok(without_nulls)
}

/// The table's unique indexes other than its primary key; one on expressions counts as partial.
async fn unique_indexes(
    pool: &SqlitePool,
    name: &str,
    schema: &str,
) -> sqlx::Result<Vec<UniqueIndex>> {
    let list: Vec<(String, bool)> = sqlx::query_as(
        "SELECT name, partial FROM pragma_index_list($1, $2) WHERE \"unique\" AND origin <> 'pk'",
    )
    .bind(name)
    .bind(schema)
    .fetch_all(pool)
    .await?;
    let mut indexes = Vec::new();
    for (index, partial) in list {
        let cols: Vec<Option<String>> =
            sqlx::query_scalar("SELECT name FROM pragma_index_info($1, $2) ORDER BY seqno")
                .bind(&index)
                .bind(schema)
                .fetch_all(pool)
                .await?;
        let on_expressions = cols.iter().any(Option::is_none);
        indexes.push(UniqueIndex {
            name: index,
            primary: false,
            partial: partial || on_expressions,
            columns: cols.into_iter().flatten().collect(),
        });
    }
    Ok(indexes)
}

/// SQLite keeps a value of any storage class in any column: a BLOB (or TEXT) in an INTEGER
/// key sorts after every number, outside the range the walk covers, so its row would never be
/// visited; a REAL stops the walk. Refused before anything is written.
async fn refuse_strays(
    pool: &SqlitePool,
    table: &TableName,
    key: &KeySpec,
    context: &str,
) -> Result<()> {
    for column in key.columns() {
        let expected = if column.key_type.is_integer() {
            "integer"
        } else {
            "text"
        };
        let sql = format!(
            "SELECT count(*), min(typeof({c})) FROM {} WHERE typeof({c}) <> $1 AND {c} IS NOT NULL",
            table.quoted(),
            c = ident::quote(&column.name)
        );
        let (strays, kind): (i64, Option<String>) = sqlx::query_as(&sql)
            .bind(expected)
            .fetch_one(pool)
            .await
            .map_err(Error::db(context))?;
        if strays > 0 {
            return Err(Error::InvalidSettings(format!(
                "key column {:?} of table {:?} holds {strays} value(s) stored as {} rather than {expected}: SQLite sorts them outside the key's range, so their rows would never be visited; store them as {expected} first",
                column.name,
                table.table,
                kind.unwrap_or_default()
            )));
        }
    }
    Ok(())
}
