//! The key a migration walks: its columns (the table's primary key by default, or any unique
//! NOT NULL key, composite allowed), how it is walked ([`KeyWalk`]: NULL keys skipped, distinct
//! values counted), a value of it, and where a walk over it starts.
//!
//! A key value is kept as typed JSON, one element per column: integers as JSON numbers, every
//! other type (uuid, text, numeric, dates, timestamps) as the database's own text for it, e.g.
//! `[42]`, `["0b7e…"]` or `[7, 3]`. That is what the tracking tables store (readable in psql,
//! as GitLab's `min_cursor`/`max_cursor`), what `--json` prints and what the SQL of each backend
//! binds back, cast to the column's type, in row-value comparisons the key's index serves.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Binds key values to a query, in order: integers as `bigint`, everything else as text (cast
/// to the column's type by the statement on PostgreSQL). A macro, for sqlx's `Query` and
/// `QueryAs` of either engine alike.
macro_rules! bind_key_values {
    ($query:expr, $values:expr) => {{
        let mut query = $query;
        for value in $values {
            query = match value.as_i64() {
                Some(n) => query.bind(n),
                None => query.bind(value.as_str().unwrap_or_default().to_owned()),
            };
        }
        query
    }};
}
pub(crate) use bind_key_values;

/// The SQL type of a key column, from a fixed list: what the walk casts a bound value to, so
/// no type name read from the database ever reaches SQL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    /// `smallint`.
    Smallint,
    /// `integer`.
    Integer,
    /// `bigint` (also every integer key of a migration queued before keys were typed).
    Bigint,
    /// `uuid`.
    Uuid,
    /// `text` (SQLite: any column of TEXT affinity).
    Text,
    /// `character varying`.
    Varchar,
    /// `numeric`.
    Numeric,
    /// `date`.
    Date,
    /// `timestamp without time zone`.
    Timestamp,
    /// `timestamp with time zone`.
    Timestamptz,
}

impl KeyType {
    /// The type as PostgreSQL's `format_type` names it, for the walk's casts.
    pub fn sql_name(self) -> &'static str {
        match self {
            Self::Smallint => "smallint",
            Self::Integer => "integer",
            Self::Bigint => "bigint",
            Self::Uuid => "uuid",
            Self::Text => "text",
            Self::Varchar => "character varying",
            Self::Numeric => "numeric",
            Self::Date => "date",
            Self::Timestamp => "timestamp without time zone",
            Self::Timestamptz => "timestamp with time zone",
        }
    }

    /// The type `format_type` calls `name`, if a key may be of it.
    pub fn from_sql_name(name: &str) -> Option<Self> {
        [
            Self::Smallint,
            Self::Integer,
            Self::Bigint,
            Self::Uuid,
            Self::Text,
            Self::Varchar,
            Self::Numeric,
            Self::Date,
            Self::Timestamp,
            Self::Timestamptz,
        ]
        .into_iter()
        .find(|t| t.sql_name() == name)
    }

    /// Whether its values are JSON numbers (bound as `bigint`) rather than text.
    pub fn is_integer(self) -> bool {
        matches!(self, Self::Smallint | Self::Integer | Self::Bigint)
    }

    /// What a key may be made of, for error messages.
    pub const SUPPORTED_POSTGRES: &'static str =
        "smallint, integer, bigint, uuid, text, varchar, numeric, date, timestamp, timestamptz";
}

/// One column of a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyColumn {
    /// The column's name, as stored (quoted whenever it reaches SQL).
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub key_type: KeyType,
}

/// How a key is walked beyond its columns: chosen at queue, recorded on the migration in
/// columns of their own (schema v9), and carried with the key so that every walk, sub-batch
/// and bound built from it places the same conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KeyWalk {
    /// `--skip-null-keys`: the key's columns may be NULL, and the rows where one is are never
    /// visited (`"col" IS NOT NULL` for each column, in every walk and every sub-batch).
    pub skip_nulls: bool,
    /// `--distinct` (a non-unique key only): a batch and a sub-batch span that many distinct
    /// key values, not rows (GitLab's `distinct_each_batch`).
    pub distinct: bool,
}

impl KeyWalk {
    /// How it differs from a plain walk, for people: `NULL keys skipped, batches of distinct
    /// values`; `None` for a plain walk.
    pub fn describe(self) -> Option<String> {
        let parts: Vec<&str> = [
            (self.skip_nulls, "rows with a NULL key never visited"),
            (self.distinct, "batches count distinct key values"),
        ]
        .into_iter()
        .filter_map(|(on, what)| on.then_some(what))
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// What an operator asks of a key beyond its columns, checked when it is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyOptions {
    /// `--non-unique-key`: walk a key no unique index covers.
    pub non_unique: bool,
    /// How to walk it.
    pub walk: KeyWalk,
}

/// The columns a migration walks, in the key's order, and how it walks them. Serialized as
/// its columns alone (the `key_columns` JSON); the [`KeyWalk`] is stored beside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeySpec {
    columns: Vec<KeyColumn>,
    #[serde(skip)]
    walk: KeyWalk,
}

impl KeySpec {
    /// A key of these columns, walked plainly (every key value, NULL keys refused).
    pub fn new(columns: Vec<KeyColumn>) -> Self {
        Self {
            columns,
            walk: KeyWalk::default(),
        }
    }

    /// The same key walked as `walk` says.
    pub fn with_walk(mut self, walk: KeyWalk) -> Self {
        self.walk = walk;
        self
    }

    /// How it is walked.
    pub fn walk(&self) -> KeyWalk {
        self.walk
    }

    /// Its columns.
    pub fn columns(&self) -> &[KeyColumn] {
        &self.columns
    }

    /// How many columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Never true for a stored key; here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// One integer column: key values are numbers and can be counted by subtraction.
    pub fn is_single_integer(&self) -> bool {
        matches!(self.columns.as_slice(), [c] if c.key_type.is_integer())
    }

    /// The columns' names joined for display: `id`, or `(a, b)`.
    pub fn display_names(&self) -> String {
        match self.columns.as_slice() {
            [c] => c.name.clone(),
            cols => format!(
                "({})",
                cols.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Parses a bound given by the operator (`--min`, `--max`): a plain value for a
    /// one-column key (`42`, `0b7e…`, `2024-01-01`), a JSON array with one element per column
    /// for a composite key (`[5, 0]`, `["acme", 3]`).
    pub fn parse_bound(&self, flag: &str, text: &str) -> Result<Key> {
        let bad = |why: String| Error::InvalidSettings(format!("{flag} {text:?}: {why}"));
        let values: Vec<Value> = match self.columns.as_slice() {
            [column] if !text.trim_start().starts_with('[') => {
                vec![scalar_for(column, text).map_err(bad)?]
            }
            columns => {
                let parsed: Vec<Value> = serde_json::from_str(text).map_err(|_| {
                    bad(format!(
                        "a bound of the key {} is a JSON array of {} values, e.g. {}",
                        self.display_names(),
                        columns.len(),
                        self.example()
                    ))
                })?;
                if parsed.len() != columns.len() {
                    return Err(bad(format!(
                        "the key {} has {} column(s), the bound {} value(s)",
                        self.display_names(),
                        columns.len(),
                        parsed.len()
                    )));
                }
                columns
                    .iter()
                    .zip(parsed)
                    .map(|(column, value)| match value {
                        Value::String(s) => scalar_for(column, &s),
                        Value::Number(n) => scalar_for(column, &n.to_string()),
                        other => Err(format!(
                            "{other} is not a value of column {:?}",
                            column.name
                        )),
                    })
                    .collect::<std::result::Result<_, _>>()
                    .map_err(bad)?
            }
        };
        Ok(Key(values))
    }

    /// A key of the right shape for a migration with no key at all (an empty table): it is
    /// stored as the range's bounds but never walked.
    pub fn placeholder(&self) -> Key {
        Key(self
            .columns
            .iter()
            .map(|c| {
                if c.key_type.is_integer() {
                    Value::from(0)
                } else {
                    Value::from("")
                }
            })
            .collect())
    }

    fn example(&self) -> String {
        let parts: Vec<&str> = self
            .columns
            .iter()
            .map(|c| {
                if c.key_type.is_integer() {
                    "5"
                } else {
                    "\"a\""
                }
            })
            .collect();
        format!("'[{}]'", parts.join(", "))
    }
}

/// A value checked against its column's type: a number for an integer column, text for any
/// other (the database checks the text when it casts it).
fn scalar_for(column: &KeyColumn, text: &str) -> std::result::Result<Value, String> {
    if column.key_type.is_integer() {
        text.trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("column {:?} is an integer", column.name))
    } else {
        Ok(Value::String(text.to_owned()))
    }
}

/// A value of a key: one JSON scalar per column (a number for integer columns, text for the
/// others).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(pub Vec<Value>);

impl Key {
    /// A one-column integer key.
    pub fn int(value: i64) -> Self {
        Self(vec![Value::from(value)])
    }

    /// Its values, one per key column.
    pub fn values(&self) -> &[Value] {
        &self.0
    }

    /// The value of column `i` when it is an integer.
    pub fn int_at(&self, i: usize) -> Option<i64> {
        self.0.get(i).and_then(Value::as_i64)
    }

    /// The value of column `i` when it is text (uuid, text, numeric, dates: their text).
    pub fn text_at(&self, i: usize) -> Option<&str> {
        self.0.get(i).and_then(Value::as_str)
    }

    /// The value of a one-column integer key.
    pub fn as_i64(&self) -> Option<i64> {
        match self.0.as_slice() {
            [v] => v.as_i64(),
            _ => None,
        }
    }

    /// Its JSON text, as stored (`[42]`, `["a", 3]`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("a key serializes")
    }

    /// Reads a stored key (JSON text or value); `what` names it in the error.
    pub fn from_json(value: Value, what: &str) -> Result<Self> {
        match value {
            Value::Array(values)
                if !values.is_empty() && values.iter().all(|v| v.is_i64() || v.is_string()) =>
            {
                Ok(Self(values))
            }
            other => Err(Error::Corrupt(format!(
                "{what}: {other} is not a key (a JSON array of integers and strings)"
            ))),
        }
    }
}

impl fmt::Display for Key {
    /// `42`, a uuid in full for a one-column key; `(7, 3)`, `(acme, 3)` for a composite one.
    /// (The command's tables shorten long values: `0b7e…`.)
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match self.0.as_slice() {
            [v] => f.write_str(&part(v)),
            values => write!(
                f,
                "({})",
                values.iter().map(part).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// Where a walk starts: at a key (the first job of a migration, a job not yet begun) or after
/// one (the last job handed out, a job's cursor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lower {
    /// At this key, inclusive.
    From(Key),
    /// After this key, exclusive.
    After(Key),
}

impl Lower {
    /// The key it names.
    pub fn key(&self) -> &Key {
        match self {
            Self::From(k) | Self::After(k) => k,
        }
    }

    /// Whether the key itself is in the walk.
    pub fn is_inclusive(&self) -> bool {
        matches!(self, Self::From(_))
    }

    /// The first key of the walk when it can be named without reading the table: the key
    /// itself, or the next integer after a one-column integer key.
    pub fn inclusive_start(&self, key: &KeySpec) -> Option<Key> {
        match self {
            Self::From(k) => Some(k.clone()),
            Self::After(k) if key.is_single_integer() => {
                k.as_i64().and_then(|v| v.checked_add(1)).map(Key::int)
            }
            Self::After(_) => None,
        }
    }
}

impl fmt::Display for Lower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::From(k) => write!(f, "from {k}"),
            Self::After(k) => write!(f, "after {k}"),
        }
    }
}

/// A column of the table being migrated, as its catalog describes it.
#[derive(Debug, Clone)]
pub(crate) struct TableColumn {
    /// Its name as stored.
    pub name: String,
    /// Its type, when a key may be of it.
    pub key_type: Option<KeyType>,
    /// Its type as the database names it (for errors).
    pub type_name: String,
    /// Whether it can never hold NULL.
    pub not_null: bool,
}

/// A unique index (or the primary key) of the table being migrated.
#[derive(Debug, Clone)]
pub(crate) struct UniqueIndex {
    /// Its name.
    pub name: String,
    /// Whether it is the primary key.
    pub primary: bool,
    /// Partial, or on expressions: it proves nothing about the plain columns.
    pub partial: bool,
    /// Its key columns, in order.
    pub columns: Vec<String>,
}

/// Chooses the key to walk from what the catalog says: the requested columns, or by default
/// the primary key; refuses an unknown column (with a "did you mean" for a case mismatch), a
/// type a key cannot be of, a nullable column unless its NULL rows are to be skipped (they
/// would never be visited), a key no primary key or unique non-partial index covers unless
/// `non_unique`, and distinct values of a key not declared non-unique.
pub(crate) fn choose(
    table: &str,
    columns: &[TableColumn],
    indexes: &[UniqueIndex],
    requested: Option<&[String]>,
    options: KeyOptions,
    supported: &str,
) -> Result<KeySpec> {
    let non_unique = options.non_unique;
    if options.walk.distinct && !non_unique {
        return Err(Error::InvalidSettings(
            "--distinct counts distinct values of a non-unique key: pass --non-unique-key with it (the values of a unique key are all distinct, so without it a batch already counts values)".into(),
        ));
    }
    let usable: Vec<&UniqueIndex> = indexes.iter().filter(|i| !i.partial).collect();
    let list = |indexes: &[&UniqueIndex]| {
        indexes
            .iter()
            .map(|i| format!("({}) by {}", i.columns.join(", "), i.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let names: Vec<String> = match requested {
        Some(names) => names.to_vec(),
        None => match usable.iter().find(|i| i.primary) {
            Some(pk) => pk.columns.clone(),
            None => {
                return Err(Error::InvalidSettings(format!(
                    "table {table:?} has no primary key: give --key with a unique NOT NULL key{}",
                    if usable.is_empty() {
                        String::new()
                    } else {
                        format!(" (its unique indexes: {})", list(&usable))
                    }
                )))
            }
        },
    };
    if names.is_empty() {
        return Err(Error::InvalidSettings("the key has no column".into()));
    }
    let mut key = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        crate::ident::validate(name)?;
        if names[..i].contains(name) {
            return Err(Error::InvalidSettings(format!(
                "column {name:?} is named twice in the key"
            )));
        }
        let Some(column) = columns.iter().find(|c| &c.name == name) else {
            let hint = columns
                .iter()
                .find(|c| c.name.eq_ignore_ascii_case(name))
                .map(|c| format!(" (did you mean {:?}? names are case-sensitive)", c.name))
                .unwrap_or_default();
            return Err(Error::UnknownColumn {
                table: table.to_owned(),
                column: name.clone(),
                hint,
            });
        };
        let Some(key_type) = column.key_type else {
            return Err(Error::InvalidSettings(format!(
                "column {name:?} of table {table:?} is of type {}; a key column must be one of: {supported}",
                column.type_name
            )));
        };
        if !column.not_null && !options.walk.skip_nulls {
            return Err(Error::InvalidSettings(format!(
                "column {name:?} of table {table:?} may be NULL: rows where it is NULL would never be visited; pass --skip-null-keys to walk it and leave those rows alone, or walk a NOT NULL key (or add the constraint)"
            )));
        }
        key.push(KeyColumn {
            name: name.clone(),
            key_type,
        });
    }
    let unique = usable
        .iter()
        .any(|i| i.columns.len() == names.len() && names.iter().all(|n| i.columns.contains(n)));
    if !unique && !non_unique {
        return Err(Error::InvalidSettings(format!(
            "the key ({}) of table {table:?} is not unique: no primary key or unique index (not partial) is on exactly those columns{}; pass --non-unique-key to walk it anyway (all rows of one key value then fall in one sub-batch, which cannot be split)",
            names.join(", "),
            if usable.is_empty() {
                String::new()
            } else {
                format!("; unique keys: {}", list(&usable))
            }
        )));
    }
    Ok(KeySpec::new(key).with_walk(options.walk))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(types: &[KeyType]) -> KeySpec {
        KeySpec::new(
            types
                .iter()
                .enumerate()
                .map(|(i, t)| KeyColumn {
                    name: format!("c{i}"),
                    key_type: *t,
                })
                .collect(),
        )
    }

    #[test]
    fn bounds_parse_per_shape() {
        let int = spec(&[KeyType::Bigint]);
        assert_eq!(int.parse_bound("--min", "42").unwrap(), Key::int(42));
        assert!(int.parse_bound("--min", "forty").is_err());
        let uuid = spec(&[KeyType::Uuid]);
        let k = uuid.parse_bound("--min", "0b7e").unwrap();
        assert_eq!(k.to_json(), r#"["0b7e"]"#);
        let pair = spec(&[KeyType::Bigint, KeyType::Text]);
        let k = pair.parse_bound("--max", r#"[5, "x"]"#).unwrap();
        assert_eq!(k.to_json(), r#"[5,"x"]"#);
        assert_eq!(k.to_string(), "(5, x)");
        let err = pair.parse_bound("--max", "5").unwrap_err().to_string();
        assert!(err.contains("JSON array of 2 values"), "{err}");
        assert!(pair.parse_bound("--max", "[5]").is_err());
    }

    #[test]
    fn stored_keys_are_checked() {
        assert!(Key::from_json(serde_json::json!([1, "a"]), "k").is_ok());
        assert!(Key::from_json(serde_json::json!(1), "k").is_err());
        assert!(Key::from_json(serde_json::json!([]), "k").is_err());
        assert!(Key::from_json(serde_json::json!([1.5]), "k").is_err());
    }

    #[test]
    fn integer_walks_start_without_reading() {
        let int = spec(&[KeyType::Integer]);
        let after = Lower::After(Key::int(9));
        assert_eq!(after.inclusive_start(&int), Some(Key::int(10)));
        let text = spec(&[KeyType::Text]);
        let after = Lower::After(Key(vec![Value::from("m")]));
        assert_eq!(after.inclusive_start(&text), None);
        assert_eq!(Lower::After(Key::int(i64::MAX)).inclusive_start(&int), None);
    }
}
