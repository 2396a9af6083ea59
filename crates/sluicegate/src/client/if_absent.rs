//! Queueing a definition only when it is not queued yet (`queue --if-not-exists`, `apply`):
//! a definition's canonical form ([`QueueRequest::canonical_definition`]), stored on the
//! migration row when it is queued (schema v8), decides whether the one asked for is the one
//! already there. The engine compares what it stored; the user's text is never read again.

use serde::Serialize;
use serde_json::Value;

use crate::client::{millis, Plan, QueueRequest};
use crate::error::{Error, Result};
use crate::model::Migration;
use crate::status::MigrationStatus;
use crate::Sluicegate;

/// The canonical form of a definition: every setting spelled out (defaults included), in a
/// fixed order, durations in milliseconds; two requests that queue the same migration have
/// the same one, however they were written.
#[derive(Serialize)]
struct Canonical<'a> {
    name: &'a str,
    kind: &'a str,
    table: &'a str,
    key: Option<&'a [String]>,
    non_unique_key: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    skip_null_keys: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    distinct: bool,
    scope: Option<&'a str>,
    arguments: std::collections::BTreeMap<&'a str, &'a Value>,
    batch_size: i64,
    sub_batch_size: i64,
    sub_batch_ceiling: Option<i64>,
    max_batch_size: Option<i64>,
    pause_ms: i64,
    interval_ms: i64,
    min_value: Option<&'a str>,
    max_value: Option<&'a str>,
    statement_timeout_ms: i64,
    lock_timeout_ms: i64,
    target_sub_batch_ms: i64,
    paused: bool,
    health: &'a crate::health::HealthSettings,
    after: &'a [String],
    verify: Option<&'a str>,
}

impl QueueRequest {
    /// This request in canonical form, as a migration row keeps it (JSON text): every setting
    /// spelled out with its default, fields in a fixed order, the kind's arguments sorted,
    /// blank optional text read as absent. Who queues it (`actor`) is not part of it.
    pub fn canonical_definition(&self) -> String {
        fn present(s: &Option<String>) -> Option<&str> {
            s.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        let arguments = match &self.arguments {
            Value::Object(map) => map.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            _ => Default::default(),
        };
        let canonical = Canonical {
            name: &self.name,
            kind: &self.job_kind,
            table: self.table.trim(),
            key: self.key.as_deref(),
            non_unique_key: self.non_unique_key,
            skip_null_keys: self.skip_null_keys,
            distinct: self.distinct,
            scope: present(&self.scope),
            arguments,
            batch_size: self.batch_size,
            sub_batch_size: self.sub_batch_size,
            sub_batch_ceiling: self.sub_batch_ceiling,
            max_batch_size: self.max_batch_size,
            pause_ms: self.pause_ms,
            interval_ms: millis(self.interval),
            min_value: present(&self.min_value),
            max_value: present(&self.max_value),
            statement_timeout_ms: millis(self.statement_timeout),
            lock_timeout_ms: millis(self.lock_timeout),
            target_sub_batch_ms: millis(self.target_sub_batch_time),
            paused: self.paused,
            health: &self.health,
            after: &self.after,
            verify: present(&self.verify),
        };
        serde_json::to_string(&canonical).expect("a definition serializes")
    }
}

/// How two canonical definitions differ, one line per setting: `batch_size: 1000 -> 500`
/// (health settings as `health.hold_ms`). Empty when they are the same.
pub fn definition_differences(stored: &str, given: &str) -> Vec<String> {
    let flat = |text: &str| -> Vec<(String, Value)> {
        let mut out = Vec::new();
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
            for (k, v) in map {
                match v {
                    Value::Object(inner) if k == "health" || k == "arguments" => {
                        for (ik, iv) in inner {
                            out.push((format!("{k}.{ik}"), iv));
                        }
                    }
                    v => out.push((k, v)),
                }
            }
        }
        out
    };
    let (old, new) = (flat(stored), flat(given));
    let mut keys: Vec<&String> = old.iter().chain(new.iter()).map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    let find = |list: &[(String, Value)], k: &str| {
        list.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::Null)
    };
    // A setting one side does not spell out at all (a definition stored by a version that
    // had no such setting) is its default there: absent, null, empty or false.
    let blank = |v: &Value| match v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    let has = |list: &[(String, Value)], k: &str| list.iter().any(|(key, _)| key == k);
    keys.into_iter()
        .filter_map(|k| {
            let (a, b) = (find(&old, k), find(&new, k));
            let absent_default = (!has(&old, k) && blank(&b)) || (!has(&new, k) && blank(&a));
            (a != b && !absent_default).then(|| format!("{k}: {a} -> {b}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::definition_differences;

    #[test]
    fn differences_name_each_setting_and_ignore_settings_a_side_never_had() {
        let stored = r#"{"name":"a","batch_size":1000,"health":{"hold_ms":5000}}"#;
        let given =
            r#"{"name":"a","batch_size":500,"health":{"hold_ms":2000},"after":[],"verify":null}"#;
        assert_eq!(
            definition_differences(stored, given),
            ["batch_size: 1000 -> 500", "health.hold_ms: 5000 -> 2000"]
        );
        // A setting newer than the stored definition, at its default: no difference; set, it is one.
        let newer = r#"{"name":"a","batch_size":1000,"health":{"hold_ms":5000},"after":["b"]}"#;
        assert_eq!(
            definition_differences(stored, newer),
            [r#"after: null -> ["b"]"#]
        );
        assert!(definition_differences(stored, stored).is_empty());
    }
}

/// What [`Sluicegate::plan_if_absent`] found a definition to need.
#[derive(Debug, Clone)]
pub enum IfAbsent {
    /// Not queued yet (or only a cancelled one with another definition): this plan queues it.
    Queue(Box<Plan>),
    /// The same definition is queued already, in any status: nothing to do.
    Unchanged(Migration),
    /// A finished migration of this name has another definition: left alone (a finished
    /// migration is history; queue a new name to run the new one).
    FinishedDifferent {
        /// The finished migration.
        migration: Migration,
        /// How its definition differs from the one given.
        differences: Vec<String>,
    },
    /// A migration of this name was queued before definitions were recorded (schema v8): it
    /// cannot be compared and is left alone.
    Unrecorded(Migration),
}

impl IfAbsent {
    /// The migration the decision is about, when there is one already.
    pub fn existing(&self) -> Option<&Migration> {
        match self {
            IfAbsent::Queue(_) => None,
            IfAbsent::Unchanged(m)
            | IfAbsent::Unrecorded(m)
            | IfAbsent::FinishedDifferent { migration: m, .. } => Some(m),
        }
    }
}

impl Sluicegate {
    /// What queueing `req` only if it is not queued yet would do, writing nothing: the newest
    /// migration of its name decides. None (or a cancelled one with another definition):
    /// [`IfAbsent::Queue`], with the plan [`Self::plan`] makes. One with the same canonical
    /// definition: [`IfAbsent::Unchanged`]. A finished one with another:
    /// [`IfAbsent::FinishedDifferent`]. A live or failed one with another definition is refused
    /// with [`Error::DefinitionChanged`], each difference named: change a running migration
    /// with `set`, or cancel it first.
    pub async fn plan_if_absent(&self, req: &QueueRequest) -> Result<IfAbsent> {
        self.plan_if_absent_in(req, &[]).await
    }

    /// [`Self::plan_if_absent`] among definitions applied together: `earlier` are the names
    /// of those before it ([`Self::plan_in`]).
    pub(crate) async fn plan_if_absent_in(
        &self,
        req: &QueueRequest,
        earlier: &[String],
    ) -> Result<IfAbsent> {
        let given = req.canonical_definition();
        let Some(existing) = self.store.migration_get_by_name(&req.name).await? else {
            return Ok(IfAbsent::Queue(Box::new(self.plan_in(req, earlier).await?)));
        };
        let Some(stored) = existing.definition.clone() else {
            return Ok(IfAbsent::Unrecorded(existing));
        };
        let differences = definition_differences(&stored, &given);
        if differences.is_empty() {
            return Ok(IfAbsent::Unchanged(existing));
        }
        match existing.status {
            MigrationStatus::Finished => Ok(IfAbsent::FinishedDifferent {
                migration: existing,
                differences,
            }),
            MigrationStatus::Cancelled => {
                Ok(IfAbsent::Queue(Box::new(self.plan_in(req, earlier).await?)))
            }
            status => Err(Error::DefinitionChanged {
                name: req.name.clone(),
                id: existing.id,
                status,
                differences,
            }),
        }
    }

    /// Queues `req` unless it is queued already ([`Self::plan_if_absent`] decides): returns
    /// the decision, with the migration queued in [`IfAbsent::Queue`]'s place.
    pub async fn queue_if_absent(&self, req: &QueueRequest) -> Result<(IfAbsent, Migration)> {
        let decision = self.plan_if_absent(req).await?;
        let migration = match &decision {
            IfAbsent::Queue(plan) => self.queue_plan(plan).await?,
            other => other.existing().cloned().expect("an existing migration"),
        };
        Ok((decision, migration))
    }
}
