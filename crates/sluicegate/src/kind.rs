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
use crate::key::{bind_key_values, Key, KeySpec};

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
    pub(crate) predicate: &'c str,
    pub(crate) qualified_predicate: &'c str,
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
    /// statement that joins another table (`UPDATE t SET ... FROM other WHERE ...`).
    pub fn qualified_range_predicate(&self) -> &str {
        self.qualified_predicate
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
        let wanted = highest_placeholder(sql);
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

/// The highest `$k` placeholder in `sql` (0: none), outside quotes and comments.
fn highest_placeholder(sql: &str) -> usize {
    let mut highest = 0;
    for_each_code_char(sql, |bytes, i| {
        if bytes[i] == b'$' && (i == 0 || !is_word(bytes[i - 1])) {
            let digits: String = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .map(|b| *b as char)
                .collect();
            if let Ok(k) = digits.parse::<usize>() {
                highest = highest.max(k);
            }
        }
        false
    });
    highest
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Calls `f(bytes, i)` on every byte of `sql` that is code: not inside a string (`'...'`), a
/// quoted name (`"..."`), a dollar-quoted body (`$tag$...$tag$`) or a comment (`--`, `/* */`).
/// `f` returning true stops the scan.
fn for_each_code_char(sql: &str, mut f: impl FnMut(&[u8], usize) -> bool) {
    let bytes = sql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"--") {
            i += rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        } else if rest.starts_with(b"/*") {
            i += 2 + find(&rest[2..], b"*/").map_or(rest.len(), |p| p + 2);
        } else if bytes[i] == b'\'' || bytes[i] == b'"' {
            let quote = bytes[i];
            i += 1;
            while i < bytes.len() {
                if bytes[i] == quote {
                    // A doubled quote is one quote character inside.
                    if bytes.get(i + 1) == Some(&quote) {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
        } else if let Some(tag) = dollar_tag(rest) {
            i += tag.len();
            i += find(&bytes[i..], tag).map_or(bytes.len() - i, |p| p + tag.len());
        } else {
            if f(bytes, i) {
                return;
            }
            i += 1;
        }
    }
}

/// `$tag$` or `$$` at the start of `rest` (a dollar quote opening), not a `$1` placeholder.
fn dollar_tag(rest: &[u8]) -> Option<&[u8]> {
    if rest.first() != Some(&b'$') {
        return None;
    }
    let end = rest[1..].iter().position(|b| !is_word(*b))? + 1;
    let tag = &rest[1..end];
    let opens = rest.get(end) == Some(&b'$') && !tag.first().is_some_and(|b| b.is_ascii_digit());
    opens.then_some(&rest[..=end])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits a script into its statements at top-level `;` (not inside strings, quoted names,
/// dollar quotes or comments); empty statements are dropped.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut cuts = Vec::new();
    for_each_code_char(sql, |bytes, i| {
        if bytes[i] == b';' {
            cuts.push(i);
        }
        false
    });
    let mut statements = Vec::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain(std::iter::once(sql.len())) {
        let statement = sql[start..cut].trim();
        if !statement.is_empty() {
            statements.push(statement.to_owned());
        }
        start = cut + 1;
    }
    statements
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
/// `{range}` in a statement stands for the sub-batch's key range (any key:
/// [`SubBatch::range_predicate`], values bound); for a one-column key `$1` and `$2` are its
/// first and last key (on PostgreSQL a non-integer key's are text: cast them, e.g.
/// `$1::uuid`). Several statements are separated by `;` (GitLab's cleanups delete children,
/// then parents); each must name the range. The rows counted are the last statement's.
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
        let statements = split_statements(string_arg(args, "sql").unwrap_or_default());
        if statements.is_empty() {
            return Err("argument \"sql\" holds no statement".into());
        }
        for (i, sql) in statements.iter().enumerate() {
            let bounded = sql.contains("$1") && sql.contains("$2");
            if !(sql.contains(RANGE_PLACEHOLDER) || bounded) {
                return Err(format!(
                    "statement {} of {} must restrict itself to the sub-batch: use {RANGE_PLACEHOLDER} (its key range, any key) or $1 and $2 (its first and last key, one-column keys): {sql}",
                    i + 1,
                    statements.len()
                ));
            }
        }
        Ok(())
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let script = string_arg(batch.arguments, "sql").unwrap_or_default();
        let range = format!("({})", batch.range_predicate());
        let mut rows = 0;
        for statement in split_statements(script) {
            rows = batch
                .execute(&statement.replace(RANGE_PLACEHOLDER, &range))
                .await?;
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_top_level_semicolons_only() {
        let script = "DELETE FROM c WHERE p IN (SELECT id FROM p WHERE {range}); \
                      -- a comment; with a semicolon\n\
                      DELETE FROM p WHERE {range} AND note <> 'a;b' AND \"we;ird\" = $$x;y$$;;";
        let parts = split_statements(script);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(parts[1].ends_with("$$x;y$$"), "{parts:?}");
        assert!(parts[1].contains("'a;b'"));
    }

    #[test]
    fn placeholders_are_counted_outside_quotes() {
        assert_eq!(highest_placeholder("x BETWEEN $1 AND $2"), 2);
        assert_eq!(highest_placeholder("($1, $2) >= x AND x <= ($3, $4)"), 4);
        assert_eq!(highest_placeholder("note = '$9' AND a = $tag$ $7 $tag$"), 0);
        assert_eq!(highest_placeholder("SELECT 1 -- $5"), 0);
    }
}
