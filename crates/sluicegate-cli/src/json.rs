//! The JSON shapes of migrations, progress and jobs, shared by the CLI's `--json` output and
//! the HTTP API. Field names are stable: the README documents them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sluicegate::health::HealthSettings;
use sluicegate::{Job, JobStatus, Key, KeySpec, Lane, Migration, Progress};

/// A key as `min_value`/`max_value` show it: the value itself for a one-column key (a number
/// for an integer key, as before keys were typed), the array for a composite one. The typed
/// array is always there too, as `min_cursor`/`max_cursor`.
pub fn key_value(key: &Key) -> serde_json::Value {
    match key.values() {
        [v] => v.clone(),
        values => serde_json::Value::Array(values.to_vec()),
    }
}

/// A migration as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct MigrationJson {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub job_kind: String,
    pub table: String,
    /// The database the table lives in: `{"id": ..., "display": ...}`, `null` when unknown
    /// (queued before schema v5).
    pub target: Option<sluicegate::TargetIdentity>,
    pub column: String,
    pub key: &'static str,
    pub key_columns: KeySpec,
    /// `--skip-null-keys`: rows where a key column is NULL are never visited.
    pub skip_null_keys: bool,
    /// `--distinct`: batches count distinct key values, not rows.
    pub distinct_keys: bool,
    pub scope: Option<String>,
    pub job_arguments: serde_json::Value,
    pub min_value: serde_json::Value,
    pub max_value: serde_json::Value,
    pub min_cursor: Key,
    pub max_cursor: Key,
    pub batch_size: i64,
    pub sub_batch_size: i64,
    pub max_batch_size: Option<i64>,
    pub sub_batch_ceiling: Option<i64>,
    pub pause_ms: i64,
    pub interval_ms: u64,
    pub on_hold_until: Option<DateTime<Utc>>,
    pub held_since: Option<DateTime<Utc>>,
    pub throttle_pause_ms: i64,
    pub throttle_reason: Option<String>,
    pub health_settings: HealthSettings,
    pub target_sub_batch_ms: i64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why its stored row cannot be read back (only id, name, kind, table, status and times
    /// are real then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// The ids of the migrations it runs after (`--after`).
    pub after: Vec<i64>,
    /// The condition checked after its last job (`--verify`).
    pub verify: Option<String>,
}

impl MigrationJson {
    pub fn from_migration(m: &Migration) -> Self {
        Self {
            id: m.id,
            name: m.name.clone(),
            status: m.status.to_string(),
            job_kind: m.job_kind.clone(),
            table: m.table_name.clone(),
            target: m.target.clone(),
            column: m.key.display_names(),
            key: if m.key.len() == 1 {
                "single"
            } else {
                "composite"
            },
            key_columns: m.key.clone(),
            skip_null_keys: m.key.walk().skip_nulls,
            distinct_keys: m.key.walk().distinct,
            scope: m.scope.clone(),
            job_arguments: m.job_arguments.clone(),
            min_value: key_value(&m.min_value),
            max_value: key_value(&m.max_value),
            min_cursor: m.min_value.clone(),
            max_cursor: m.max_value.clone(),
            batch_size: m.batch_size,
            sub_batch_size: m.sub_batch_size,
            max_batch_size: m.max_batch_size,
            sub_batch_ceiling: m.sub_batch_ceiling,
            pause_ms: m.pause_ms,
            interval_ms: m.interval.as_millis() as u64,
            on_hold_until: m.on_hold_until,
            held_since: m.held_since,
            throttle_pause_ms: m.throttle_pause_ms,
            throttle_reason: m.throttle_reason.clone(),
            health_settings: m.health.clone(),
            target_sub_batch_ms: m.target_sub_batch_ms,
            created_at: m.created_at,
            started_at: m.started_at,
            finished_at: m.finished_at,
            unreadable: m.unreadable.clone(),
            after: m.after.clone(),
            verify: m.verify.clone(),
        }
    }
}

/// A health protection that is off (`status --json`, `show --json`, `queue --dry-run
/// --json`): an indicator that reads `unknown` for a reason an operator can fix, and the
/// grant that would turn it on.
#[derive(Debug, Clone, Serialize)]
pub struct ProtectionOffJson {
    pub indicator: String,
    pub reading: String,
    pub grant: Option<String>,
}

impl ProtectionOffJson {
    pub fn from_readings(readings: &[sluicegate::health::Reading]) -> Vec<Self> {
        readings
            .iter()
            .map(|r| Self {
                indicator: r.indicator.to_string(),
                reading: r.reading.clone(),
                grant: r.grant.clone(),
            })
            .collect()
    }
}

/// A migration with its progress, as `status --json` and `show --json` print it.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    #[serde(flatten)]
    pub migration: MigrationJson,
    pub rows_done: i64,
    pub rows_total: Option<i64>,
    pub percent: f64,
    pub rows_per_second: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub hold_reason: Option<String>,
    pub jobs: JobCountsJson,
    /// Its health protections that are off now (read by `status` and `show`, for live
    /// migrations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protections_off: Option<Vec<ProtectionOffJson>>,
    /// A migration in lanes: its lanes summed per node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<sluicegate::NodeProgress>>,
    /// The migrations it runs after that have not finished (names; read by `status` and
    /// `show`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct JobCountsJson {
    pub pending: i64,
    pub running: i64,
    pub failed: i64,
    pub succeeded: i64,
    pub total: i64,
}

impl StatusJson {
    /// The view of `p`.
    pub fn from_progress(p: &Progress) -> Self {
        Self {
            migration: MigrationJson::from_migration(&p.migration),
            rows_done: p.rows_done,
            rows_total: p.rows_total,
            percent: (p.percent * 10.0).round() / 10.0,
            rows_per_second: p.rows_per_second.map(|r| r.round()),
            eta_seconds: p.eta_seconds.map(|s| s.round()),
            hold_reason: p.hold_reason.clone(),
            jobs: JobCountsJson {
                pending: p.jobs.pending,
                running: p.jobs.running,
                failed: p.jobs.failed,
                succeeded: p.jobs.succeeded,
                total: p.jobs.total(),
            },
            protections_off: None,
            nodes: None,
            waiting_for: None,
        }
    }
}

/// A job as `jobs --json` prints it.
#[derive(Debug, Serialize)]
pub struct JobJson<'a> {
    pub id: i64,
    pub migration_id: i64,
    pub status: JobStatus,
    pub min_value: serde_json::Value,
    pub max_value: serde_json::Value,
    pub min_cursor: &'a Key,
    pub max_cursor: &'a Key,
    pub batch_size: i64,
    pub sub_batch_size: i64,
    pub attempts: i32,
    pub rows_affected: i64,
    pub cursor: Option<&'a Key>,
    pub worker: Option<&'a str>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub metrics: &'a sluicegate::job_metrics::JobMetrics,
    /// Its lane (a shard of a distributed table), with the shard and its node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lane: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// How long the job's latest attempt took.
pub fn job_duration_ms(j: &Job) -> Option<i64> {
    Some((j.finished_at? - j.started_at?).num_milliseconds())
}

impl<'a> JobJson<'a> {
    /// The view of `j`.
    pub fn from_job(j: &'a Job) -> Self {
        Self {
            id: j.id,
            migration_id: j.migration_id,
            status: j.status,
            min_value: key_value(&j.min_value),
            max_value: key_value(&j.max_value),
            min_cursor: &j.min_value,
            max_cursor: &j.max_value,
            batch_size: j.batch_size,
            sub_batch_size: j.sub_batch_size,
            attempts: j.attempts,
            rows_affected: j.rows_affected,
            cursor: j.cursor.as_ref(),
            worker: j.worker.as_deref(),
            started_at: j.started_at,
            finished_at: j.finished_at,
            duration_ms: job_duration_ms(j),
            metrics: &j.metrics,
            lane: j.lane,
            shard_id: None,
            node: None,
        }
    }

    /// The view of `j`, naming its lane's shard and node from `lanes`.
    pub fn in_lanes(j: &'a Job, lanes: &[Lane]) -> Self {
        let lane = j.lane.and_then(|n| lanes.iter().find(|l| l.lane == n));
        Self {
            shard_id: lane.map(|l| l.shard_id),
            node: lane.map(|l| l.node.clone()),
            ..Self::from_job(j)
        }
    }
}

/// The migrations `m` runs after (`--after`) that have not finished, as `name (status)`, for
/// `waiting_for`; `None` when it runs after none.
pub async fn waiting_for(
    sg: &sluicegate::Sluicegate,
    m: &Migration,
) -> Result<Option<Vec<String>>, sluicegate::Error> {
    if m.after.is_empty() || m.unreadable.is_some() {
        return Ok(None);
    }
    Ok(Some(
        sg.waiting_for(m)
            .await?
            .iter()
            .map(|d| format!("{} ({})", d.name, d.status))
            .collect(),
    ))
}

impl StatusJson {
    /// The view of `p` with what it waits for (`--after`), read from `sg`.
    pub async fn read(
        sg: &sluicegate::Sluicegate,
        p: &Progress,
    ) -> Result<Self, sluicegate::Error> {
        Ok(Self {
            waiting_for: waiting_for(sg, &p.migration).await?,
            ..Self::from_progress(p)
        })
    }
}
