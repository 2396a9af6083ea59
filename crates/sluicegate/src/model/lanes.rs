//! Lanes: the parts of a migration's key space that run in parallel, one job at a time each.
//! A migration of a Citus distributed table has one lane per shard; its jobs walk the shard's
//! own table on the node that holds its placement. What kind of Citus table a migration is
//! on ([`CitusTable`]) decides how its jobs are created and routed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::key::Lower;

/// What kind of Citus table a migration's table is (`None` on a plain PostgreSQL or SQLite
/// table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CitusTable {
    /// Split in shards over the worker nodes: one lane per shard.
    Distributed,
    /// Copied to every node: written through the coordinator (each write goes to all nodes).
    Reference,
    /// A Citus-managed local table on the coordinator.
    Local,
}

impl CitusTable {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Distributed => "distributed",
            Self::Reference => "reference",
            Self::Local => "local",
        }
    }

    /// From its stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "distributed" => Some(Self::Distributed),
            "reference" => Some(Self::Reference),
            "local" => Some(Self::Local),
            _ => None,
        }
    }
}

/// A lane as queued: a shard, and where its placement is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewLane {
    /// Its number in the migration, from 0, in the order of the shards' ranges.
    pub lane: i32,
    /// The shard's own table, `schema.table`: what its jobs walk and write.
    pub relation: String,
    /// Citus's shard id.
    pub shard_id: i64,
    /// The node its placement is on, `host:port` as Citus's catalog names it.
    pub node: String,
}

/// A lane as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lane {
    /// Its migration.
    pub migration_id: i64,
    /// Its number.
    pub lane: i32,
    /// The shard's own table.
    pub relation: String,
    /// Citus's shard id.
    pub shard_id: i64,
    /// The node its placement was last seen on.
    pub node: String,
    /// Where its next job starts; `None` once its keys are handed out.
    pub next_start: Option<Lower>,
    /// Held until then (its node down or unhealthy).
    pub on_hold_until: Option<DateTime<Utc>>,
    /// Why, while held.
    pub hold_reason: Option<String>,
    /// The job running in it now (its lease not run out), if any.
    pub running_job: Option<i64>,
}

impl Lane {
    /// Whether it is held at `now`.
    pub fn is_held(&self, now: DateTime<Utc>) -> bool {
        self.on_hold_until.is_some_and(|t| t > now)
    }
}
