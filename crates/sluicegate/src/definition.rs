//! Definitions as files: one migration per TOML file, kept in the repository beside the schema
//! migrations and queued by the deploy pipeline (`sluicegate apply DIR`), or embedded in an
//! application (`include_str!`) and queued at start ([`Sluicegate::apply_definitions`]).
//!
//! A definition holds everything `queue` takes, under the flags' names (`batch_size`,
//! `statement_timeout = "30s"`, a `[health]` table for the health flags). It becomes a
//! [`QueueRequest`] through [`Definition::request`], the one conversion the CLI's `queue`
//! flags go through too, so that a file and a command line are validated the same way. An
//! unknown field is refused, naming it.
//!
//! ```toml
//! # db/data/002_backfill_domain.toml
//! table = "users"
//! kind = "update"
//! set = "domain = split_part(email, '@', 2)"
//! where = "domain IS NULL"
//! batch_size = 10000
//! sub_batch_size = 1000
//!
//! [health]
//! max_replica_lag = "10s"
//! ```
//!
//! Embedded, in the spirit of `sqlx::migrate!`:
//!
//! ```no_run
//! # async fn deploy(sg: &sluicegate::Sluicegate) -> sluicegate::Result<()> {
//! const DEFINITIONS: &[(&str, &str)] = &[
//!     ("backfill_domain", r#"table = "users"
//! kind = "update"
//! set = "domain = split_part(email, '@', 2)""#),
//!     // ("purge_events", include_str!("../db/data/003_purge_events.toml")),
//! ];
//! for (decision, migration) in sg.apply_definitions(DEFINITIONS).await? {
//!     println!("{}: {}", migration.name, decision.describe());
//! }
//! # Ok(())
//! # }
//! ```

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::client::{IfAbsent, QueueRequest};
use crate::error::{Error, Result};
use crate::health::{AutovacuumPolicy, HealthSettings, Indicator};
use crate::model::Migration;
use crate::Sluicegate;

/// The built-in kinds and the arguments each takes (the `queue` flags of the same names).
const KIND_ARGUMENTS: &[(&str, &[&str])] = &[
    ("update", &["set", "where", "from", "join"]),
    ("delete", &["where"]),
    ("copy-column", &["from", "to"]),
    ("sql", &["sql"]),
];

/// One migration's definition: a definition file, or `queue`'s flags. Fields left out take
/// `queue`'s defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The migration's name (default: the file's name without `.toml`, or the name paired
    /// with the text in [`Sluicegate::apply_definitions`]).
    pub name: Option<String>,
    /// Table to migrate (`table` or `schema.table`).
    pub table: String,
    /// Job kind: `update`, `delete`, `copy-column`, `sql`, or a registered custom kind.
    pub kind: String,
    /// The key's columns in order (`key = "id"` or `key = ["tenant_id", "id"]`).
    #[serde(default, deserialize_with = "name_list")]
    pub key: Option<Vec<String>>,
    /// Walk a key no unique index covers.
    #[serde(default)]
    pub non_unique_key: bool,
    /// Walk a key column that may be NULL, never visiting the rows where it is NULL.
    #[serde(default)]
    pub skip_null_keys: bool,
    /// Batches count distinct values of the (non-unique) key, not rows.
    #[serde(default)]
    pub distinct: bool,
    /// `update`: the SET clause.
    pub set: Option<String>,
    /// `update`, `delete`: the extra condition.
    #[serde(rename = "where")]
    pub where_clause: Option<String>,
    /// The rows the migration is about (any kind).
    pub scope: Option<String>,
    /// `copy-column`: source columns; `update`: the table to join.
    pub from: Option<String>,
    /// `copy-column`: destination columns.
    pub to: Option<String>,
    /// `update`: the join condition.
    pub join: Option<String>,
    /// `sql`: the statement(s).
    pub sql: Option<String>,
    /// A custom kind's arguments (a table), for kinds other than the built-in ones.
    pub arguments: Option<serde_json::Map<String, Value>>,
    /// Keys per job (1,000).
    pub batch_size: Option<i64>,
    /// Keys per sub-batch to start from; given, also the tuner's ceiling.
    pub sub_batch_size: Option<i64>,
    /// The batch-size optimizer's ceiling.
    pub max_batch_size: Option<i64>,
    /// Pause between sub-batches, in milliseconds (100).
    pub pause_ms: Option<i64>,
    /// Minimum time between job starts (`"0s"`).
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<Duration>,
    /// First key: a value, or an array for a composite key.
    #[serde(default, deserialize_with = "bound")]
    pub min_value: Option<String>,
    /// Last key.
    #[serde(default, deserialize_with = "bound")]
    pub max_value: Option<String>,
    /// Each sub-batch's statement_timeout (`"30s"`).
    #[serde(default, deserialize_with = "duration")]
    pub statement_timeout: Option<Duration>,
    /// Each sub-batch's lock_timeout (`"5s"`).
    #[serde(default, deserialize_with = "duration")]
    pub lock_timeout: Option<Duration>,
    /// The sub-batch tuner's target time (`"100ms"`; `"0s"` keeps sizes fixed).
    #[serde(default, deserialize_with = "duration")]
    pub target_sub_batch_time: Option<Duration>,
    /// Queue it paused.
    #[serde(default)]
    pub paused: bool,
    /// The migrations it runs after (`after = ["a", "b"]` or `"a,b"`): each queued already
    /// or defined in an earlier file.
    #[serde(default, deserialize_with = "name_list")]
    pub after: Option<Vec<String>>,
    /// A condition every row must meet after the last job (`--verify`).
    pub verify: Option<String>,
    /// The health flags.
    #[serde(default)]
    pub health: HealthDefinition,
}

/// The health flags of a definition (the `[health]` table), each left out keeping its default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthDefinition {
    /// `--max-replica-lag-bytes`.
    pub max_replica_lag_bytes: Option<i64>,
    /// `--max-replica-lag`.
    #[serde(default, deserialize_with = "duration")]
    pub max_replica_lag: Option<Duration>,
    /// `--max-wal-archive-backlog`.
    pub max_wal_archive_backlog: Option<i64>,
    /// `--max-wal-rate` (bytes per second).
    pub max_wal_rate: Option<i64>,
    /// `--max-transaction-age`.
    #[serde(default, deserialize_with = "duration")]
    pub max_transaction_age: Option<Duration>,
    /// `--health-probe`.
    #[serde(alias = "health_probe")]
    pub probe: Option<String>,
    /// `--hold`.
    #[serde(default, deserialize_with = "duration")]
    pub hold: Option<Duration>,
    /// `--max-latency-drift`.
    pub max_latency_drift: Option<f64>,
    /// `--autovacuum`.
    pub autovacuum: Option<AutovacuumPolicy>,
    /// `--health-off`.
    #[serde(alias = "health_off")]
    pub off: Option<Vec<Indicator>>,
    /// `--require-health`.
    pub require_health: Option<bool>,
}

impl HealthDefinition {
    /// Applies the settings given to `health`.
    pub fn apply(&self, health: &mut HealthSettings) {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if let Some(v) = self.max_replica_lag_bytes {
            health.max_replica_lag_bytes = v;
        }
        if let Some(v) = self.max_replica_lag {
            health.max_replica_lag_ms = ms(v);
        }
        if let Some(v) = self.max_wal_archive_backlog {
            health.max_wal_archive_backlog = v;
        }
        if let Some(v) = self.max_wal_rate {
            health.max_wal_rate_bytes = Some(v);
        }
        if let Some(v) = self.max_transaction_age {
            health.max_transaction_age_ms = ms(v);
        }
        if let Some(v) = &self.probe {
            health.probe = Some(v.clone());
        }
        if let Some(v) = self.hold {
            health.hold_ms = ms(v);
        }
        if let Some(v) = self.max_latency_drift {
            health.latency_drift_factor = v;
        }
        if let Some(v) = self.autovacuum {
            health.autovacuum = v;
        }
        if let Some(v) = self.off.as_ref().filter(|off| !off.is_empty()) {
            health.off = v.clone();
        }
        if let Some(v) = self.require_health {
            health.require_health = v;
        }
    }
}

impl Definition {
    /// Reads a definition file's text; `source` names it in errors (a file name).
    pub fn parse(source: &str, text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            Error::InvalidDefinition(format!(
                "definition {source}{}: {}",
                line.map(|l| format!(", line {l}")).unwrap_or_default(),
                e.message().trim_end()
            ))
        })
    }

    /// The request this definition queues, named by its own `name` when it has one, else
    /// `name` (a file's name without `.toml`). Refuses an argument its kind does not take, as
    /// `queue` does.
    pub fn request(&self, name: &str) -> Result<QueueRequest> {
        let name = self.name.clone().unwrap_or_else(|| name.to_owned());
        let mut req = QueueRequest::new(&name, &self.kind, &self.table);
        req.key = self.key.clone();
        req.non_unique_key = self.non_unique_key;
        req.skip_null_keys = self.skip_null_keys;
        req.distinct = self.distinct;
        req.scope = self.scope.clone();
        if let Some(v) = self.batch_size {
            req.batch_size = v;
        }
        match self.sub_batch_size {
            Some(sub) => {
                req.sub_batch_size = sub;
                req.sub_batch_ceiling = Some(sub);
                // And the other way: a sub-batch larger than the default batch, without a
                // batch size, brings the batch up to one sub-batch (the optimizer grows it
                // from there at full speed).
                if self.batch_size.is_none() && sub > req.batch_size {
                    req.batch_size = sub;
                }
            }
            // Defaults follow each other: a batch smaller than the default sub-batch brings
            // the sub-batch down to it (`--batch-size 50` alone is a batch of one sub-batch).
            None if req.batch_size > 0 => {
                req.sub_batch_size = req.sub_batch_size.min(req.batch_size);
            }
            None => {}
        }
        req.max_batch_size = self.max_batch_size;
        if let Some(v) = self.pause_ms {
            req.pause_ms = v;
        }
        if let Some(v) = self.interval {
            req.interval = v;
        }
        req.min_value = self.min_value.clone();
        req.max_value = self.max_value.clone();
        req.paused = self.paused;
        req.after = self.after.clone().unwrap_or_default();
        req.verify = self.verify.clone();
        if let Some(v) = self.statement_timeout {
            req.statement_timeout = v;
        }
        if let Some(v) = self.lock_timeout {
            req.lock_timeout = v;
        }
        if let Some(v) = self.target_sub_batch_time {
            req.target_sub_batch_time = v;
        }
        self.health.apply(&mut req.health);
        let given = [
            ("set", &self.set),
            ("where", &self.where_clause),
            ("from", &self.from),
            ("to", &self.to),
            ("join", &self.join),
            ("sql", &self.sql),
        ];
        match KIND_ARGUMENTS.iter().find(|(kind, _)| *kind == self.kind) {
            Some((kind, allowed)) => {
                if self.arguments.is_some() {
                    return Err(Error::InvalidDefinition(format!(
                        "{name}: `arguments` is for custom kinds; kind {kind} takes {}",
                        allowed.join(", ")
                    )));
                }
                for (arg, value) in given {
                    match value {
                        Some(_) if !allowed.contains(&arg) => {
                            return Err(Error::InvalidDefinition(format!(
                                "{name}: --{arg} does not apply to --kind {kind}"
                            )))
                        }
                        Some(v) => req = req.argument(arg, Value::String(v.clone())),
                        None => {}
                    }
                }
            }
            None => {
                if let Some((arg, _)) = given.iter().find(|(_, v)| v.is_some()) {
                    return Err(Error::InvalidDefinition(format!(
                        "{name}: --{arg} is for the built-in kinds; give a custom kind's in `arguments`"
                    )));
                }
                if let Some(arguments) = &self.arguments {
                    req.arguments = Value::Object(arguments.clone());
                }
            }
        }
        Ok(req)
    }
}

/// Reads the definitions of `(name, text)` pairs, in order: the requests they queue.
pub fn requests(definitions: &[(&str, &str)]) -> Result<Vec<QueueRequest>> {
    definitions
        .iter()
        .map(|(name, text)| Definition::parse(name, text)?.request(name))
        .collect()
}

/// Reads every `*.toml` file of `dir` (not its subdirectories), in file-name order, each
/// named by its file name without `.toml` unless it has a `name`: the requests they queue.
/// Any file that does not read is an error, and nothing is returned.
pub fn read_dir(dir: &Path) -> Result<Vec<QueueRequest>> {
    let unreadable =
        |e: std::io::Error| Error::InvalidDefinition(format!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(unreadable)?
        .into_iter()
        .map(|entry| entry.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = file.trim_end_matches(".toml");
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::InvalidDefinition(format!("cannot read {}: {e}", path.display()))
            })?;
            Definition::parse(&file, &text)?.request(stem)
        })
        .collect()
}

impl IfAbsent {
    /// One line for people: what was (or would be) done, and why.
    pub fn describe(&self) -> String {
        match self {
            IfAbsent::Queue(plan) => format!(
                "queue: {} on {}.{}, keys {} ..= {}",
                plan.migration.job_kind,
                plan.migration.table_name,
                plan.migration.key.display_names(),
                plan.migration.min_value,
                plan.migration.max_value
            ),
            IfAbsent::Unchanged(m) => format!(
                "unchanged: migration {} is queued with this definition ({})",
                m.id, m.status
            ),
            IfAbsent::FinishedDifferent {
                migration,
                differences,
            } => format!(
                "left alone: migration {} finished; this definition differs ({}): queue it under a new name to run it",
                migration.id,
                differences.join("; ")
            ),
            IfAbsent::Unrecorded(m) => format!(
                "left alone: migration {} ({}) was queued before definitions were recorded, so it cannot be compared",
                m.id, m.status
            ),
        }
    }
}

impl Sluicegate {
    /// What applying `requests` would do, one decision each, in order, writing nothing
    /// ([`Sluicegate::plan_if_absent`]); a refusal (a changed definition of a live migration,
    /// a definition that does not validate) is that request's error.
    pub async fn plan_definitions(&self, requests: &[QueueRequest]) -> Vec<Result<IfAbsent>> {
        let mut decisions = Vec::with_capacity(requests.len());
        let mut earlier: Vec<String> = Vec::new();
        for req in requests {
            decisions.push(match cycle(requests, &req.name) {
                Some(cycle) => Err(Error::InvalidSettings(format!(
                    "--after makes a cycle: {}",
                    cycle.join(" -> ")
                ))),
                None => self.plan_if_absent_in(req, &earlier).await,
            });
            earlier.push(req.name.clone());
        }
        decisions
    }

    /// Queues the definitions `(name, toml text)` that are not queued yet, in order (see
    /// [`Self::plan_if_absent`]): the same definition already queued is left as it is. All are
    /// read and decided before anything is queued: a definition that does not read or
    /// validate, or one that changed under a live migration, is an error and nothing is
    /// queued. Returns each decision with its migration (the one queued, or the one there).
    pub async fn apply_definitions(
        &self,
        definitions: &[(&str, &str)],
    ) -> Result<Vec<(IfAbsent, Migration)>> {
        let requests = requests(definitions)?;
        self.apply_requests(&requests).await
    }

    /// [`Self::apply_definitions`] for requests already read ([`read_dir`], [`requests`]).
    pub async fn apply_requests(
        &self,
        requests: &[QueueRequest],
    ) -> Result<Vec<(IfAbsent, Migration)>> {
        let decisions: Vec<IfAbsent> = self
            .plan_definitions(requests)
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        let mut applied = Vec::with_capacity(decisions.len());
        for decision in decisions {
            let migration = match &decision {
                IfAbsent::Queue(plan) => self.queue_plan(plan).await?,
                other => other.existing().cloned().expect("an existing migration"),
            };
            applied.push((decision, migration));
        }
        Ok(applied)
    }
}

/// A cycle of `after` among `requests` through `name` (`a -> b -> a`), if there is one.
fn cycle(requests: &[QueueRequest], name: &str) -> Option<Vec<String>> {
    fn walk(requests: &[QueueRequest], path: &mut Vec<String>, start: &str) -> bool {
        let last = path.last().cloned().unwrap_or_default();
        let Some(req) = requests.iter().find(|r| r.name == last) else {
            return false;
        };
        for next in &req.after {
            if next == start {
                path.push(next.clone());
                return true;
            }
            if path.contains(next) {
                continue;
            }
            path.push(next.clone());
            if walk(requests, path, start) {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = vec![name.to_owned()];
    walk(requests, &mut path, name).then_some(path)
}

/// A duration as `queue` reads it: `"500ms"`, `"10s"`, `"2m"`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Duration>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| {
        humantime::parse_duration(&t)
            .map_err(|e| serde::de::Error::custom(format!("{t:?}: {e} (examples: 500ms, 10s, 2m)")))
    })
    .transpose()
}

/// A key bound: a value (`42`, `"2024-01-01"`) or an array of values for a composite key.
fn bound<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    let value: Option<Value> = Option::deserialize(d)?;
    Ok(value.map(|v| match v {
        Value::String(s) => s,
        other => other.to_string(),
    }))
}

/// Names (key columns, `after`): one, comma-separated, or an array.
fn name_list<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Columns {
        One(String),
        Many(Vec<String>),
    }
    let columns: Option<Columns> = Option::deserialize(d)?;
    Ok(columns.map(|c| match c {
        Columns::One(one) => one.split(',').map(|c| c.trim().to_owned()).collect(),
        Columns::Many(many) => many.into_iter().map(|c| c.trim().to_owned()).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_and_the_same_flags_make_the_same_canonical_definition() {
        let text = r#"
            table = "users"
            kind = "update"
            set = "email_lower = lower(email)"
            batch_size = 500
            statement_timeout = "30s"
            [health]
            hold = "2s"
            off = ["autovacuum"]
        "#;
        let from_file = Definition::parse("x.toml", text)
            .unwrap()
            .request("backfill")
            .unwrap();
        let mut by_hand = QueueRequest::new("backfill", "update", "users")
            .argument("set", "email_lower = lower(email)");
        by_hand.batch_size = 500;
        by_hand.health.hold_ms = 2_000;
        by_hand.health.off = vec![Indicator::Autovacuum];
        by_hand.actor = "cli".into();
        assert_eq!(
            from_file.canonical_definition(),
            by_hand.canonical_definition()
        );
    }

    /// Sizes given alone pull the other default along, either way, and an explicit pair is
    /// kept as given (then validated as it is).
    #[test]
    fn a_size_given_alone_brings_the_other_default_with_it() {
        let sizes = |text: &str| {
            let req = Definition::parse(
                "s.toml",
                &format!("table = \"t\"\nkind = \"delete\"\n{text}"),
            )
            .unwrap()
            .request("s")
            .unwrap();
            (req.batch_size, req.sub_batch_size, req.sub_batch_ceiling)
        };
        assert_eq!(
            sizes("sub_batch_size = 10000"),
            (10_000, 10_000, Some(10_000))
        );
        assert_eq!(sizes("batch_size = 50"), (50, 50, None));
        assert_eq!(sizes("sub_batch_size = 20"), (1_000, 20, Some(20)));
        assert_eq!(
            sizes("batch_size = 500\nsub_batch_size = 10000"),
            (500, 10_000, Some(10_000))
        );
    }

    #[test]
    fn unknown_fields_and_arguments_of_another_kind_are_refused() {
        let err = Definition::parse("a.toml", "table = \"t\"\nkind = \"delete\"\nbatch = 5")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("definition a.toml, line 3: unknown field `batch`"),
            "{err}"
        );
        let err = Definition::parse(
            "b.toml",
            "table = \"t\"\nkind = \"delete\"\nset = \"n = 1\"",
        )
        .unwrap()
        .request("b")
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("b: --set does not apply to --kind delete"),
            "{err}"
        );
        let err = Definition::parse(
            "c.toml",
            "table = \"t\"\nkind = \"delete\"\ninterval = \"soon\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"soon\""), "{err}");
    }
}
