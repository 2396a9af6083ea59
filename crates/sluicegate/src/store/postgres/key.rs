//! The key of the table being migrated, on PostgreSQL: resolving it from the catalog (the
//! table found in the search path, its columns, its unique indexes), and reading a key value a
//! person gives under the database's own settings.

use serde_json::Value;
use sqlx::PgConnection;

use super::{exec_raw, PgTarget, SESSION_SETTINGS};
use crate::error::{Error, Result};
use crate::ident::TableName;
use crate::key::{Key, KeyOptions, KeySpec, KeyType, TableColumn, UniqueIndex};

const TARGET_TABLE_FIND: &str = "SELECT n.nspname::text, c.relname::text
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = $1 AND c.relkind IN ('r', 'p')
      AND CASE WHEN $2::text IS NULL THEN n.nspname = ANY (current_schemas(false))
               ELSE n.nspname = $2 END
    ORDER BY array_position(current_schemas(false), n.nspname)
    LIMIT 1";

/// A table whose name matches `$1` but for case, for a "did you mean".
const TARGET_TABLE_FIND_ANY_CASE: &str = "SELECT n.nspname::text, c.relname::text
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE lower(c.relname) = lower($1) AND c.relkind IN ('r', 'p')
      AND CASE WHEN $2::text IS NULL THEN n.nspname = ANY (current_schemas(false))
               ELSE lower(n.nspname) = lower($2) END
    ORDER BY array_position(current_schemas(false), n.nspname)
    LIMIT 1";

/// The table's columns, with the type a key would be cast to (`format_type` without modifiers).
const TARGET_COLUMNS: &str = "SELECT a.attname::text, format_type(a.atttypid, NULL), a.attnotnull
    FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY a.attnum";

/// The table's valid unique indexes (the primary key first), their key columns in order.
const TARGET_UNIQUE_INDEXES: &str = "SELECT c.relname::text, i.indisprimary,
        (i.indpred IS NOT NULL OR i.indexprs IS NOT NULL),
        array(SELECT a.attname::text
              FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
              JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE k.ord <= i.indnkeyatts ORDER BY k.ord)
    FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
    WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indisvalid
    ORDER BY NOT i.indisprimary, c.relname";

/// How values are read on this database by a new session of this role that sets nothing
/// itself (psql's): `DateStyle` and `TimeZone` from `ALTER ROLE ... IN DATABASE`, `ALTER ROLE`,
/// `ALTER DATABASE` and `ALTER ROLE ALL`, the first that has one (PostgreSQL's own order). Our
/// sessions start with `DateStyle` ISO and `TimeZone` UTC (sqlx sends them at connect, and the
/// pool sets them again), which override all of these.
const TARGET_OWN_SETTINGS: &str = "
SELECT DISTINCT ON (lower(split_part(c.cfg, '=', 1)))
       lower(split_part(c.cfg, '=', 1)), substr(c.cfg, strpos(c.cfg, '=') + 1)
FROM pg_catalog.pg_db_role_setting s CROSS JOIN LATERAL unnest(s.setconfig) AS c(cfg)
WHERE s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()))
  AND s.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = session_user))
  AND lower(split_part(c.cfg, '=', 1)) IN ('datestyle', 'timezone')
ORDER BY lower(split_part(c.cfg, '=', 1)), s.setrole <> 0 DESC, s.setdatabase <> 0 DESC";

/// The same settings from the server's configuration files (`postgresql.conf`, `ALTER
/// SYSTEM`), where initdb writes the `datestyle` of the cluster's locale: readable by
/// superusers only; without it the server's own default is unknown and ours stands.
const TARGET_FILE_SETTINGS: &str = "SELECT DISTINCT ON (lower(name)) lower(name), setting
    FROM pg_catalog.pg_file_settings
    WHERE lower(name) IN ('datestyle', 'timezone') AND applied AND error IS NULL
    ORDER BY lower(name), seqno DESC";

pub(super) async fn resolve(
    target: &PgTarget,
    table: &TableName,
    requested: Option<&[String]>,
    options: KeyOptions,
) -> Result<(TableName, KeySpec)> {
    let context = format!("looking up table {}", table.quoted());
    let (schema, name) = find_table(target, table, &context).await?;
    let resolved = TableName {
        schema: Some(schema),
        table: name,
    };
    let columns: Vec<(String, String, bool)> = sqlx::query_as(TARGET_COLUMNS)
        .bind(resolved.quoted())
        .fetch_all(&target.pool)
        .await
        .map_err(Error::db(&context))?;
    let columns: Vec<TableColumn> = columns
        .into_iter()
        .map(|(name, type_name, not_null)| TableColumn {
            key_type: KeyType::from_sql_name(&type_name),
            name,
            type_name,
            not_null,
        })
        .collect();
    let indexes: Vec<(String, bool, bool, Vec<String>)> = sqlx::query_as(TARGET_UNIQUE_INDEXES)
        .bind(resolved.quoted())
        .fetch_all(&target.pool)
        .await
        .map_err(Error::db(&context))?;
    let indexes: Vec<UniqueIndex> = indexes
        .into_iter()
        .map(|(name, primary, partial, columns)| UniqueIndex {
            name,
            primary,
            partial,
            columns,
        })
        .collect();
    let key = crate::key::choose(
        &display_table(table),
        &columns,
        &indexes,
        requested,
        options,
        KeyType::SUPPORTED_POSTGRES,
    )?;
    Ok((resolved, key))
}

/// The table's schema and name as stored, or an error naming it (with the table meant when
/// only the case differs).
async fn find_table(
    target: &PgTarget,
    table: &TableName,
    context: &str,
) -> Result<(String, String)> {
    let found: Option<(String, String)> = sqlx::query_as(TARGET_TABLE_FIND)
        .bind(&table.table)
        .bind(table.schema.as_deref())
        .fetch_optional(&target.pool)
        .await
        .map_err(Error::db(context))?;
    if let Some(found) = found {
        return Ok(found);
    }
    // PostgreSQL reads an unquoted name in lower case: a table whose name differs
    // only in case is probably the one meant.
    let near: Option<(String, String)> = sqlx::query_as(TARGET_TABLE_FIND_ANY_CASE)
        .bind(&table.table)
        .bind(table.schema.as_deref())
        .fetch_optional(&target.pool)
        .await
        .map_err(Error::db(context))?;
    let hint = near
        .map(|(schema, name)| {
            let exact = TableName {
                schema: Some(schema),
                table: name,
            };
            format!(
                " (did you mean {}? unquoted names are read in lower case: --table '{}')",
                exact.quoted(),
                exact.quoted()
            )
        })
        .unwrap_or_default();
    Err(Error::UnknownTable {
        table: display_table(table),
        hint,
    })
}

pub(super) async fn canonical(
    target: &PgTarget,
    key: &KeySpec,
    value: &Key,
    flag: &str,
) -> Result<Key> {
    if key.columns().iter().all(|c| c.key_type.is_integer()) {
        return Ok(value.clone());
    }
    let context = format!("reading {flag} {value} as the target database does");
    let mut tx = under_database_settings(target, &context).await?;
    let unambiguous = parse_as_database(&mut tx, key, value, flag, &context).await?;
    // Printed as our sessions print it (ISO, UTC): the walk's own text for it.
    exec_raw(
        &mut tx,
        SESSION_SETTINGS.replace("SET ", "SET LOCAL ").as_str(),
    )
    .await
    .map_err(Error::db(&context))?;
    let mut values = Vec::with_capacity(value.values().len());
    for ((column, v), parsed) in key.columns().iter().zip(value.values()).zip(unambiguous) {
        let Some(parsed) = parsed else {
            values.push(v.clone());
            continue;
        };
        let sql = format!("SELECT CAST($1 AS {})::text", column.key_type.sql_name());
        let canonical: String = sqlx::query_scalar(&sql)
            .bind(parsed)
            .fetch_one(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
        values.push(Value::String(canonical));
    }
    tx.rollback().await.map_err(Error::db(&context))?;
    Ok(Key(values))
}

/// A read-only transaction under the target database's own settings (its configuration file's
/// where readable, then those set for the database and role), not our sessions' ones: a bound
/// is read the way the operator's own sessions would read it.
async fn under_database_settings(
    target: &PgTarget,
    context: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = target.pool.begin().await.map_err(Error::db(context))?;
    exec_raw(&mut tx, "SET TRANSACTION READ ONLY")
        .await
        .map_err(Error::db(context))?;
    let mut own: Vec<(String, String)> = Vec::new();
    if let Ok(file) = sqlx::query_as::<_, (String, String)>(TARGET_FILE_SETTINGS)
        .fetch_all(&mut *tx)
        .await
    {
        own = file;
    } else {
        // Not readable (not a superuser): the failed statement aborted the transaction.
        tx.rollback().await.map_err(Error::db(context))?;
        tx = target.pool.begin().await.map_err(Error::db(context))?;
        exec_raw(&mut tx, "SET TRANSACTION READ ONLY")
            .await
            .map_err(Error::db(context))?;
    }
    let set: Vec<(String, String)> = sqlx::query_as(TARGET_OWN_SETTINGS)
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::db(context))?;
    for (name, setting) in set {
        own.retain(|(n, _)| *n != name);
        own.push((name, setting));
    }
    for (name, setting) in &own {
        sqlx::query("SELECT set_config($1, $2, true)")
            .bind(name)
            .bind(setting)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(context))?;
    }
    Ok(tx)
}

/// Each non-integer value of `value` parsed under the transaction's settings, as ISO 8601 JSON
/// text (which reads back the same whatever the DateStyle); `None` for integers. A value the
/// column's type refuses (SQLSTATE class 22) is an error naming the flag and the column.
async fn parse_as_database(
    tx: &mut PgConnection,
    key: &KeySpec,
    value: &Key,
    flag: &str,
    context: &str,
) -> Result<Vec<Option<String>>> {
    let mut unambiguous = Vec::with_capacity(value.values().len());
    for (column, v) in key.columns().iter().zip(value.values()) {
        let Some(text) = v.as_str().filter(|_| !column.key_type.is_integer()) else {
            unambiguous.push(None);
            continue;
        };
        let sql = format!(
            "SELECT to_jsonb(CAST($1 AS {})) #>> '{{}}'",
            column.key_type.sql_name()
        );
        let parsed: std::result::Result<String, sqlx::Error> = sqlx::query_scalar(&sql)
            .bind(text)
            .fetch_one(&mut *tx)
            .await;
        match parsed {
            Ok(parsed) => unambiguous.push(Some(parsed)),
            Err(sqlx::Error::Database(db)) if db.code().is_some_and(|c| c.starts_with("22")) => {
                return Err(Error::InvalidSettings(format!(
                    "{flag} {text:?} is not a value of column {:?} ({}): {}",
                    column.name,
                    column.key_type.sql_name(),
                    db.message()
                )))
            }
            Err(e) => return Err(Error::db(context)(e)),
        }
    }
    Ok(unambiguous)
}

fn display_table(table: &TableName) -> String {
    match &table.schema {
        Some(schema) => format!("{schema}.{}", table.table),
        None => table.table.clone(),
    }
}
