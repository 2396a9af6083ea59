//! Job kinds: what one sub-batch does. The trait for custom kinds, the registry that names
//! them, and the built-in `update`, `delete`, `copy-column` and `sql`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{PgConnection, SqliteConnection};

use crate::failure::Failure;
use crate::ident::{self, TableName};
use crate::key::{Key, KeySpec};

/// The connection a sub-batch runs on, inside its own transaction.
pub enum SubBatchConnection<'c> {
    /// A PostgreSQL transaction (with `statement_timeout` and `lock_timeout` set locally).
    Postgres(&'c mut PgConnection),
    /// A SQLite write transaction (`BEGIN IMMEDIATE`).
    Sqlite(&'c mut SqliteConnection),
}

/// One sub-batch: a key range `[start, end]` of a migration's table (both existing keys), and
/// the open transaction to change it in. The transaction commits after [`JobKind::perform`]
/// returns `Ok` (together with the job's cursor when tracking and target are one database) and
/// rolls back otherwise.
pub struct SubBatch<'c> {
    pub(crate) connection: SubBatchConnection<'c>,
    pub(crate) table: &'c TableName,
    pub(crate) key: &'c KeySpec,
    pub(crate) predicate: &'c str,
    pub(crate) arguments: &'c Value,
    pub(crate) start: &'c Key,
    pub(crate) end: &'c Key,
}

impl<'c> SubBatch<'c> {
    /// First key of the sub-batch (inclusive), one value per key column.
    pub fn start(&self) -> &Key {
        self.start
    }

    /// Last key of the sub-batch (inclusive).
    pub fn end(&self) -> &Key {
        self.end
    }

    /// The key's columns and types.
    pub fn key(&self) -> &KeySpec {
        self.key
    }

    /// The migration's job arguments.
    pub fn arguments(&self) -> &Value {
        self.arguments
    }

    /// The target table, quoted for SQL.
    pub fn quoted_table(&self) -> String {
        self.table.quoted()
    }

    /// The condition "the row's key is in this sub-batch", ready for a `WHERE`, its values
    /// bound by [`Self::execute`]: `"id" BETWEEN $1 AND $2` for a one-column key, a row-value
    /// comparison (`("a", "b") >= ($1, $2) AND ("a", "b") <= ($3, $4)`) for a composite one.
    /// On PostgreSQL each non-integer value is cast to its column's type.
    pub fn range_predicate(&self) -> &str {
        self.predicate
    }

    /// The open transaction's connection, for kinds that need more than [`Self::execute`].
    pub fn connection(&mut self) -> &mut SubBatchConnection<'c> {
        &mut self.connection
    }

    /// Runs `sql` with the sub-batch's bounds bound as [`Self::range_predicate`] numbers them:
    /// the first key's values as `$1..$n`, the last key's as `$n+1..$2n` (`n` key columns;
    /// integers bound as `bigint`, other values as text), on both backends. Returns the rows
    /// it affected.
    pub async fn execute(&mut self, sql: &str) -> Result<u64, Failure> {
        let values = self.start.values().iter().chain(self.end.values());
        let rows = match &mut self.connection {
            SubBatchConnection::Postgres(conn) => {
                let mut query = sqlx::query(sql);
                for v in values {
                    query = match v.as_i64() {
                        Some(n) => query.bind(n),
                        None => query.bind(v.as_str().unwrap_or_default().to_owned()),
                    };
                }
                query.execute(&mut **conn).await?.rows_affected()
            }
            SubBatchConnection::Sqlite(conn) => {
                let mut query = sqlx::query(sql);
                for v in values {
                    query = match v.as_i64() {
                        Some(n) => query.bind(n),
                        None => query.bind(v.as_str().unwrap_or_default().to_owned()),
                    };
                }
                query.execute(&mut **conn).await?.rows_affected()
            }
        };
        Ok(rows)
    }
}

/// A kind of job: what to do to the rows of one sub-batch.
///
/// Implement it for a custom migration, register it in a [`Registry`], and queue migrations
/// with its name. `perform` runs inside a transaction it must not commit; it may run again
/// on the same range if the transaction did not commit (a crash, a timeout), so it should
/// either be idempotent or rely on the exactly-once cursor (tracking and target in one
/// database). A panic is caught and recorded as a `Panic` failure.
#[async_trait]
pub trait JobKind: Send + Sync + 'static {
    /// The name migrations use to refer to this kind.
    fn name(&self) -> &str;

    /// Checks the job arguments before anything is written. The default accepts any.
    fn validate_arguments(&self, _arguments: &Value) -> Result<(), String> {
        Ok(())
    }

    /// Performs one sub-batch and returns the rows it affected.
    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure>;
}

/// Maps job-kind names to implementations. [`Registry::default`] holds the built-in kinds.
#[derive(Clone)]
pub struct Registry {
    kinds: BTreeMap<String, Arc<dyn JobKind>>,
}

impl Default for Registry {
    fn default() -> Self {
        let mut registry = Self::empty();
        registry.register(UpdateKind);
        registry.register(DeleteKind);
        registry.register(CopyColumnKind);
        registry.register(SqlKind);
        registry
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.kinds.keys()).finish()
    }
}

impl Registry {
    /// A registry with no kind at all.
    pub fn empty() -> Self {
        Self {
            kinds: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) a kind under its name.
    pub fn register(&mut self, kind: impl JobKind) -> &mut Self {
        self.kinds.insert(kind.name().to_owned(), Arc::new(kind));
        self
    }

    /// The kind called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn JobKind>> {
        self.kinds.get(name).cloned()
    }

    /// Names of every registered kind.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }
}

fn string_arg<'a>(args: &'a Value, key: &str) -> Option<&'a str> {
    args.get(key).and_then(Value::as_str)
}

fn require_string(args: &Value, key: &str) -> Result<(), String> {
    match args.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(()),
        Some(Value::String(_)) => Err(format!("argument {key:?} is empty")),
        Some(_) => Err(format!("argument {key:?} must be a string")),
        None => Err(format!("argument {key:?} is required")),
    }
}

fn optional_string(args: &Value, key: &str) -> Result<(), String> {
    match args.get(key) {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(format!("argument {key:?} must be a string")),
    }
}

/// The sub-batch's range condition plus an optional user condition.
fn range_condition(batch: &SubBatch<'_>) -> String {
    let mut cond = batch.range_predicate().to_owned();
    if let Some(filter) = string_arg(batch.arguments, "where").filter(|w| !w.trim().is_empty()) {
        cond.push_str(&format!(" AND ({filter})"));
    }
    cond
}

/// `update`: `UPDATE t SET <set> WHERE key BETWEEN start AND end [AND (<where>)]`.
/// Arguments: `set` (required), `where` (optional). Both are SQL written by the operator and
/// trusted like `psql` input; the table and key column are quoted.
#[derive(Debug, Clone, Copy)]
pub struct UpdateKind;

#[async_trait]
impl JobKind for UpdateKind {
    fn name(&self) -> &str {
        "update"
    }

    fn validate_arguments(&self, args: &Value) -> Result<(), String> {
        require_string(args, "set")?;
        optional_string(args, "where")
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let set = string_arg(batch.arguments, "set").unwrap_or_default();
        let sql = format!(
            "UPDATE {} SET {set} WHERE {}",
            batch.quoted_table(),
            range_condition(batch)
        );
        batch.execute(&sql).await
    }
}

/// `delete`: `DELETE FROM t WHERE key BETWEEN start AND end [AND (<where>)]`.
#[derive(Debug, Clone, Copy)]
pub struct DeleteKind;

#[async_trait]
impl JobKind for DeleteKind {
    fn name(&self) -> &str {
        "delete"
    }

    fn validate_arguments(&self, args: &Value) -> Result<(), String> {
        optional_string(args, "where")
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let sql = format!(
            "DELETE FROM {} WHERE {}",
            batch.quoted_table(),
            range_condition(batch)
        );
        batch.execute(&sql).await
    }
}

/// `copy-column`: `UPDATE t SET "to" = "from"` over the range. Arguments: `from`, `to`
/// (column names, quoted).
#[derive(Debug, Clone, Copy)]
pub struct CopyColumnKind;

#[async_trait]
impl JobKind for CopyColumnKind {
    fn name(&self) -> &str {
        "copy-column"
    }

    fn validate_arguments(&self, args: &Value) -> Result<(), String> {
        require_string(args, "from")?;
        require_string(args, "to")?;
        for key in ["from", "to"] {
            ident::validate(string_arg(args, key).unwrap_or_default())
                .map_err(|e| format!("argument {key:?}: {e}"))?;
        }
        Ok(())
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let from = ident::quote(string_arg(batch.arguments, "from").unwrap_or_default());
        let to = ident::quote(string_arg(batch.arguments, "to").unwrap_or_default());
        let sql = format!(
            "UPDATE {} SET {to} = {from} WHERE {}",
            batch.quoted_table(),
            range_condition(batch)
        );
        batch.execute(&sql).await
    }
}

/// `sql`: the operator's own statement. `{range}` in it stands for the sub-batch's key range
/// (any key: [`SubBatch::range_predicate`], values bound); for a one-column key `$1` and `$2`
/// are its first and last key (on PostgreSQL a non-integer key's are text: cast them, e.g.
/// `$1::uuid`).
#[derive(Debug, Clone, Copy)]
pub struct SqlKind;

/// What stands for the sub-batch's range in a `sql` statement.
pub const RANGE_PLACEHOLDER: &str = "{range}";

#[async_trait]
impl JobKind for SqlKind {
    fn name(&self) -> &str {
        "sql"
    }

    fn validate_arguments(&self, args: &Value) -> Result<(), String> {
        require_string(args, "sql")?;
        let sql = string_arg(args, "sql").unwrap_or_default();
        let bounded = sql.contains("$1") && sql.contains("$2");
        if !(sql.contains(RANGE_PLACEHOLDER) || bounded) {
            return Err(format!(
                "the statement must restrict itself to the sub-batch: use {RANGE_PLACEHOLDER} (its key range, any key) or $1 and $2 (its first and last key, one-column keys)"
            ));
        }
        Ok(())
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let sql = string_arg(batch.arguments, "sql")
            .unwrap_or_default()
            .replace(RANGE_PLACEHOLDER, &format!("({})", batch.range_predicate()));
        batch.execute(&sql).await
    }
}
