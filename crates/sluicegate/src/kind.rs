//! Job kinds: what one sub-batch does. The trait for custom kinds, the registry that names
//! them, and the built-in `update`, `delete`, `copy-column` and `sql`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{PgConnection, SqliteConnection};

use crate::dialect::key_sql::{self, ParamSql};
use crate::dialect::Backend;
use crate::failure::Failure;
use crate::fragment::{self, Script};
use crate::ident::{self, TableName};
use crate::key::{bind_key_values, Key, KeySpec};

pub use crate::fragment::RANGE_PLACEHOLDER;

/// The connection a sub-batch runs on, inside its own transaction.
pub enum SubBatchConnection<'c> {
    /// A PostgreSQL transaction (with `statement_timeout` and `lock_timeout` set locally).
    Postgres(&'c mut PgConnection),
    /// A SQLite write transaction (`BEGIN IMMEDIATE`).
    Sqlite(&'c mut SqliteConnection),
}

/// One sub-batch: a key range `[start, end]` of a migration's table (found by the keyset walk,
/// so both are existing keys, except that a one-column integer key's rest of a job may start
/// at the value after the last committed key), and the open transaction to change it in. The transaction commits after [`JobKind::perform`]
/// returns `Ok` (together with the job's cursor when tracking and target are one database) and
/// rolls back otherwise.
pub struct SubBatch<'c> {
    pub(crate) connection: SubBatchConnection<'c>,
    pub(crate) table: &'c TableName,
    pub(crate) key: &'c KeySpec,
    pub(crate) scope: Option<&'c str>,
    pub(crate) param: ParamSql,
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

    /// [`Self::range_predicate`] with the key's columns qualified by the table's name, for a
    /// statement that joins another table (`UPDATE t SET ... FROM other WHERE ...`); the
    /// migration's scope, if any, is read in a subquery on the table alone, so that its names
    /// cannot be taken for the other table's.
    pub fn qualified_range_predicate(&self) -> String {
        self.range_predicate_as(&self.table.quoted())
    }

    /// [`Self::qualified_range_predicate`] with the key's columns qualified by `qualifier`
    /// (the table's alias in the statement, already quoted).
    pub fn range_predicate_as(&self, qualifier: &str) -> String {
        key_sql::range_predicate(
            self.key,
            self.scope,
            self.table,
            Some(qualifier),
            self.param,
        )
    }

    /// The engine this sub-batch runs on.
    pub fn backend(&self) -> Backend {
        match self.connection {
            SubBatchConnection::Postgres(_) => Backend::Postgres,
            SubBatchConnection::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The open transaction's connection, for kinds that need more than [`Self::execute`].
    pub fn connection(&mut self) -> &mut SubBatchConnection<'c> {
        &mut self.connection
    }

    /// Runs `sql` with the sub-batch's bounds bound as [`Self::range_predicate`] numbers them:
    /// the first key's values as `$1..$n`, the last key's as `$n+1..$2n` (`n` key columns;
    /// integers bound as `bigint`, other values as text), on both backends; as many of them as
    /// the statement names (up to its highest `$k`). Returns the rows it affected.
    pub async fn execute(&mut self, sql: &str) -> Result<u64, Failure> {
        let wanted = fragment::highest_placeholder(self.backend(), sql);
        let values = self
            .start
            .values()
            .iter()
            .chain(self.end.values())
            .take(wanted);
        let rows = match &mut self.connection {
            SubBatchConnection::Postgres(conn) => bind_key_values!(sqlx::query(sql), values)
                .execute(&mut **conn)
                .await?
                .rows_affected(),
            SubBatchConnection::Sqlite(conn) => bind_key_values!(sqlx::query(sql), values)
                .execute(&mut **conn)
                .await?
                .rows_affected(),
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

    /// Whether every row `perform` reports is a row of the migration's table inside the
    /// sub-batch's range (true of the built-in kinds, but for a `sql` script whose last
    /// statement changes another table). The engine then checks, on a unique key, that a
    /// sub-batch reports no more rows than it has keys, and fails the migration with
    /// `RangeEscaped` otherwise. The default (a custom kind) is not checked.
    fn rows_are_keys(&self, _arguments: &Value, _backend: Backend, _table: &TableName) -> bool {
        false
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

/// The operator's `where`, when given.
fn user_filter<'a>(batch: &SubBatch<'a>) -> Option<&'a str> {
    string_arg(batch.arguments, "where").filter(|w| !w.trim().is_empty())
}

/// The sub-batch's range condition plus an optional user condition.
fn range_condition(batch: &SubBatch<'_>) -> String {
    let mut cond = batch.range_predicate().to_owned();
    if let Some(filter) = user_filter(batch) {
        cond.push_str(&format!(" AND ({filter})"));
    }
    cond
}

/// `update`: `UPDATE t SET <set> WHERE <the sub-batch's keys> [AND (<where>)]`.
/// Arguments: `set` (required), `where` (optional); `from` and `join` (together, optional) join
/// another table: `UPDATE t SET <set> FROM <from> WHERE (<join>) AND <keys> [AND (<where>)]`,
/// with the key's columns qualified by `t`. `set`, `where` and `join` are SQL written by the
/// operator and trusted like `psql` input; table names and key columns are quoted.
#[derive(Debug, Clone, Copy)]
pub struct UpdateKind;

#[async_trait]
impl JobKind for UpdateKind {
    fn name(&self) -> &str {
        "update"
    }

    fn validate_arguments(&self, args: &Value) -> Result<(), String> {
        require_string(args, "set")?;
        optional_string(args, "where")?;
        optional_string(args, "from")?;
        optional_string(args, "join")?;
        match (string_arg(args, "from"), string_arg(args, "join")) {
            (Some(from), Some(_)) => TableName::parse(from)
                .map(|_| ())
                .map_err(|e| format!("argument \"from\": {e}")),
            (None, None) => Ok(()),
            (Some(_), None) => Err("argument \"from\" needs \"join\" (the join condition)".into()),
            (None, Some(_)) => Err("argument \"join\" needs \"from\" (the table to join)".into()),
        }
    }

    fn rows_are_keys(&self, _arguments: &Value, _backend: Backend, _table: &TableName) -> bool {
        true
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let set = string_arg(batch.arguments, "set").unwrap_or_default();
        let joined = string_arg(batch.arguments, "from").zip(string_arg(batch.arguments, "join"));
        let sql = match joined {
            Some((from, join)) => {
                let from = TableName::parse(from)
                    .map_err(|e| Failure::new("InvalidArguments", e.to_string()))?;
                let mut cond = format!("({join}) AND {}", batch.qualified_range_predicate());
                if let Some(filter) = user_filter(batch) {
                    cond.push_str(&format!(" AND ({filter})"));
                }
                format!(
                    "UPDATE {} SET {set} FROM {} WHERE {cond}",
                    batch.quoted_table(),
                    from.quoted()
                )
            }
            None => format!(
                "UPDATE {} SET {set} WHERE {}",
                batch.quoted_table(),
                range_condition(batch)
            ),
        };
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

    fn rows_are_keys(&self, _arguments: &Value, _backend: Backend, _table: &TableName) -> bool {
        true
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

/// `copy-column`: `UPDATE t SET "to" = "from"` over the range; several at once with lists
/// (`from: "a,b"`, `to: "c,d"`, or JSON arrays): `SET "c" = "a", "d" = "b"`. Names are quoted.
#[derive(Debug, Clone, Copy)]
pub struct CopyColumnKind;

/// A column list argument: a JSON array of names, or one string of comma-separated names.
fn column_list(args: &Value, key: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = match args.get(key) {
        Some(Value::String(s)) => s.split(',').map(|n| n.trim().to_owned()).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("argument {key:?} must list column names"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("argument {key:?} must be a string or a list")),
        None => return Err(format!("argument {key:?} is required")),
    };
    for name in &names {
        ident::validate(name).map_err(|e| format!("argument {key:?}: {e}"))?;
    }
    Ok(names)
}

#[async_trait]
impl JobKind for CopyColumnKind {
    fn name(&self) -> &str {
        "copy-column"
    }

    fn validate_arguments(&self, args: &Value) -> Result<(), String> {
        let (from, to) = (column_list(args, "from")?, column_list(args, "to")?);
        if from.len() != to.len() {
            return Err(format!(
                "arguments \"from\" and \"to\" must name as many columns ({} and {})",
                from.len(),
                to.len()
            ));
        }
        Ok(())
    }

    fn rows_are_keys(&self, _arguments: &Value, _backend: Backend, _table: &TableName) -> bool {
        true
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let invalid = |e: String| Failure::new("InvalidArguments", e);
        let from = column_list(batch.arguments, "from").map_err(invalid)?;
        let to = column_list(batch.arguments, "to").map_err(invalid)?;
        let assignments: Vec<String> = to
            .iter()
            .zip(&from)
            .map(|(t, f)| format!("{} = {}", ident::quote(t), ident::quote(f)))
            .collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            batch.quoted_table(),
            assignments.join(", "),
            range_condition(batch)
        );
        batch.execute(&sql).await
    }
}

/// `sql`: the operator's own statements, run in order in the sub-batch's transaction.
/// `{range}` in a statement stands for the sub-batch's key range (any key, with the
/// migration's scope: [`SubBatch::range_predicate`], values bound), qualified by the table's
/// alias when the statement joins other tables; for a one-column key without a scope `$1` and
/// `$2` are its first and last key (on PostgreSQL a non-integer key's are text: cast them,
/// e.g. `$1::uuid`). Several statements are separated by `;` (GitLab's cleanups delete
/// children, then parents); each must name the range, and one that changes the migration's
/// own table must restrict itself to it at the top of its `WHERE` (see [`crate::fragment`]).
/// The rows counted are the last statement's.
#[derive(Debug, Clone, Copy)]
pub struct SqlKind;

impl SqlKind {
    fn script(
        args: &Value,
        backend: Backend,
        table: &TableName,
        key: &KeySpec,
        scoped: bool,
    ) -> Result<Script, String> {
        fragment::parse_script(
            backend,
            string_arg(args, "sql").unwrap_or_default(),
            table,
            Some(key),
            scoped,
        )
    }
}

#[async_trait]
impl JobKind for SqlKind {
    fn name(&self) -> &str {
        "sql"
    }

    fn validate_arguments(&self, args: &Value) -> Result<(), String> {
        require_string(args, "sql")
    }

    fn rows_are_keys(&self, arguments: &Value, backend: Backend, table: &TableName) -> bool {
        // Only the shape matters here (the statement that counts): key and scope do not
        // change which table a statement changes.
        let script = fragment::parse_script(
            backend,
            string_arg(arguments, "sql").unwrap_or_default(),
            table,
            None,
            false,
        );
        script.is_ok_and(|s| s.statements.last().is_some_and(|st| st.changes_own_rows))
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let script = Self::script(
            batch.arguments,
            batch.backend(),
            batch.table,
            batch.key,
            batch.scope.is_some(),
        )
        .map_err(|e| Failure::new("InvalidArguments", e))?;
        let mut rows = 0;
        for statement in &script.statements {
            let range = match &statement.qualifier {
                Some(alias) => batch.range_predicate_as(alias),
                None => batch.range_predicate().to_owned(),
            };
            rows = batch
                .execute(&statement.render(&format!("({range})")))
                .await?;
        }
        Ok(rows)
    }
}

/// Reads the SQL a built-in kind's arguments hold (`--set`, `--where`, `--join`, `--sql`) with
/// the target's parser, before anything runs: each fragment must be exactly what its place
/// expects (see [`crate::fragment`]). Custom kinds' arguments are theirs: `Ok`.
pub(crate) fn check_fragments(
    kind: &str,
    args: &Value,
    backend: Backend,
    table: &TableName,
    key: &KeySpec,
    scoped: bool,
) -> Result<(), String> {
    let condition =
        |key: &str, flag: &str| match string_arg(args, key).filter(|s| !s.trim().is_empty()) {
            Some(text) => fragment::check_condition(backend, flag, text),
            None => Ok(()),
        };
    match kind {
        "update" => {
            let set = string_arg(args, "set").unwrap_or_default();
            fragment::check_assignments(backend, "--set", set)?;
            condition("where", "--where")?;
            condition("join", "--join")
        }
        "delete" | "copy-column" => condition("where", "--where"),
        "sql" => SqlKind::script(args, backend, table, key, scoped).map(|_| ()),
        _ => Ok(()),
    }
}
