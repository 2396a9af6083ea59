//! Reading the tracking tables' rows into the model, written once for both engines. Each
//! backend says only how it stores the two types they keep differently: times (PostgreSQL
//! `timestamptz`, SQLite RFC 3339 text) and JSON (`jsonb`, text).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::types::Json;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::job_metrics::JobMetrics;
use crate::key::{Key, KeySpec, KeyWalk, Lower};
use crate::model::{
    CitusTable, Indicator, Job, JobTransition, Lane, Migration, MigrationTransition, TargetIdentity,
};
use crate::status::MigrationStatus;

/// A driver error while reading a row: the stored data is not what we wrote.
pub(crate) fn decode(e: sqlx::Error) -> Error {
    Error::Corrupt(e.to_string())
}

/// The columns of a tracking row, typed.
pub(crate) trait ModelRow {
    /// A `bigint` column.
    fn int(&self, col: &str) -> Result<i64>;
    /// A nullable `bigint` column.
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    /// An `integer` column.
    fn int32(&self, col: &str) -> Result<i32>;
    /// A `boolean` column (an integer on SQLite).
    fn flag(&self, col: &str) -> Result<bool>;
    /// A `text` column.
    fn text(&self, col: &str) -> Result<String>;
    /// A nullable `text` column.
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    /// A nullable time column.
    fn time(&self, col: &str) -> Result<Option<DateTime<Utc>>>;
    /// A JSON column.
    fn json(&self, col: &str) -> Result<Value>;
    /// A nullable JSON column.
    fn opt_json(&self, col: &str) -> Result<Option<Value>>;

    /// A key column (`min_cursor`, ...).
    fn key(&self, col: &str) -> Result<Key> {
        Key::from_json(self.json(col)?, col)
    }
    /// A nullable key column.
    fn opt_key(&self, col: &str) -> Result<Option<Key>> {
        self.opt_json(col)?
            .map(|v| Key::from_json(v, col))
            .transpose()
    }
}

/// The columns both engines decode the same way.
macro_rules! plain_columns {
    () => {
        fn int(&self, col: &str) -> Result<i64> {
            self.try_get(col).map_err(decode)
        }
        fn opt_int(&self, col: &str) -> Result<Option<i64>> {
            self.try_get(col).map_err(decode)
        }
        fn int32(&self, col: &str) -> Result<i32> {
            self.try_get(col).map_err(decode)
        }
        fn flag(&self, col: &str) -> Result<bool> {
            self.try_get(col).map_err(decode)
        }
        fn text(&self, col: &str) -> Result<String> {
            self.try_get(col).map_err(decode)
        }
        fn opt_text(&self, col: &str) -> Result<Option<String>> {
            self.try_get(col).map_err(decode)
        }
    };
}

impl ModelRow for PgRow {
    plain_columns!();

    fn time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        self.try_get(col).map_err(decode)
    }

    fn json(&self, col: &str) -> Result<Value> {
        let Json(value) = self.try_get(col).map_err(decode)?;
        Ok(value)
    }

    fn opt_json(&self, col: &str) -> Result<Option<Value>> {
        let value: Option<Json<Value>> = self.try_get(col).map_err(decode)?;
        Ok(value.map(|Json(v)| v))
    }
}

impl ModelRow for SqliteRow {
    plain_columns!();

    fn time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        let text: Option<String> = self.try_get(col).map_err(decode)?;
        text.map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|e| Error::Corrupt(format!("bad time {t:?} in {col}: {e}")))
        })
        .transpose()
    }

    fn json(&self, col: &str) -> Result<Value> {
        let text: String = self.try_get(col).map_err(decode)?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("bad {col}: {e}")))
    }

    fn opt_json(&self, col: &str) -> Result<Option<Value>> {
        let text: Option<String> = self.try_get(col).map_err(decode)?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| Error::Corrupt(format!("bad {col}: {e}")))
        })
        .transpose()
    }
}

/// A `migrations` row. A row whose settings cannot be read back is still a migration: its
/// identity (id, name, kind, table, status, times) with placeholders for the rest and
/// [`Migration::unreadable`] saying why, so that one bad row fails only its migration, never
/// every command that lists them.
pub(crate) fn migration(row: &impl ModelRow) -> Result<Migration> {
    migration_strict(row).or_else(|e| unreadable_migration(row, e))
}

/// What can be read of a row [`migration_strict`] could not read: its identity, or `e` when
/// not even that reads.
fn unreadable_migration(row: &impl ModelRow, e: Error) -> Result<Migration> {
    let why = match &e {
        Error::Corrupt(what) => what.clone(),
        other => other.to_string(),
    };
    let id = row.int("id").map_err(|_| e)?;
    let status = row.text("status")?;
    let status = status
        .parse()
        .map_err(|_| Error::Corrupt(format!("migration {id}: unknown status {status:?}")))?;
    let time = |col: &str| row.time(col).ok().flatten();
    Ok(Migration {
        id,
        name: row.text("name")?,
        job_kind: row.text("job_kind")?,
        table_name: row.text("table_name")?,
        target: target(row).ok().flatten(),
        key: KeySpec::new(Vec::new()),
        key_unique: false,
        scope: None,
        job_arguments: Value::Null,
        min_value: Key(Vec::new()),
        max_value: Key(Vec::new()),
        next_start: None,
        batch_size: 0,
        sub_batch_size: 0,
        max_batch_size: None,
        sub_batch_ceiling: None,
        pause_ms: 0,
        interval: std::time::Duration::ZERO,
        statement_timeout_ms: 0,
        lock_timeout_ms: 0,
        health: Default::default(),
        target_sub_batch_ms: 0,
        status,
        total_tuple_count: None,
        on_hold_until: None,
        held_since: None,
        throttle_pause_ms: 0,
        throttle_reason: None,
        last_job_started_at: None,
        started_at: time("started_at"),
        finished_at: time("finished_at"),
        created_at: time("created_at").unwrap_or_default(),
        updated_at: time("updated_at").unwrap_or_default(),
        unreadable: Some(why),
        citus: None,
        definition: None,
        after: Vec::new(),
        verify: None,
    })
}

/// The target a migration was queued for (`None`: queued before schema v5).
fn target(row: &impl ModelRow) -> Result<Option<TargetIdentity>> {
    Ok(
        match (row.opt_text("target_id")?, row.opt_text("target_display")?) {
            (Some(id), display) => Some(TargetIdentity {
                display: display.unwrap_or_else(|| id.clone()),
                id,
            }),
            (None, _) => None,
        },
    )
}

/// A `migrations` row, every column read.
fn migration_strict(row: &impl ModelRow) -> Result<Migration> {
    let interval_ms = row.int("interval_ms")?;
    Ok(Migration {
        id: row.int("id")?,
        name: row.text("name")?,
        job_kind: row.text("job_kind")?,
        table_name: row.text("table_name")?,
        target: target(row)?,
        key: serde_json::from_value::<KeySpec>(row.json("key_columns")?)
            .map_err(|e| Error::Corrupt(format!("bad key_columns: {e}")))?
            .with_walk(KeyWalk {
                skip_nulls: row.flag("skip_null_keys")?,
                distinct: row.flag("distinct_keys")?,
            }),
        key_unique: row.flag("key_unique")?,
        scope: row.opt_text("scope")?,
        job_arguments: row.json("job_arguments")?,
        min_value: row.key("min_cursor")?,
        max_value: row.key("max_cursor")?,
        next_start: next_start(row)?,
        batch_size: row.int("batch_size")?,
        sub_batch_size: row.int("sub_batch_size")?,
        max_batch_size: row.opt_int("max_batch_size")?,
        sub_batch_ceiling: row.opt_int("sub_batch_ceiling")?,
        pause_ms: row.int("pause_ms")?,
        interval: std::time::Duration::from_millis(interval_ms.max(0) as u64),
        statement_timeout_ms: row.int("statement_timeout_ms")?,
        lock_timeout_ms: row.int("lock_timeout_ms")?,
        health: {
            let stored = row.json("health_settings")?;
            let health: crate::health::HealthSettings = serde_json::from_value(stored.clone())
                .map_err(|e| {
                    // Named by the field that does not read, when one alone does not.
                    let field = stored.as_object().and_then(|o| {
                        o.iter().find(|(k, v)| {
                            let one = serde_json::json!({ k.as_str(): v });
                            serde_json::from_value::<crate::health::HealthSettings>(one).is_err()
                        })
                    });
                    match field {
                        Some((k, _)) => Error::Corrupt(format!("bad health_settings: {k}: {e}")),
                        None => Error::Corrupt(format!("bad health_settings: {e}")),
                    }
                })?;
            if let Some(why) = health.invalid() {
                return Err(Error::Corrupt(format!("bad health_settings: {why}")));
            }
            health
        },
        target_sub_batch_ms: row.int("target_sub_batch_ms")?,
        status: row.text("status")?.parse()?,
        total_tuple_count: row.opt_int("total_tuple_count")?,
        on_hold_until: row.time("on_hold_until")?,
        held_since: row.time("held_since")?,
        throttle_pause_ms: row.int("throttle_pause_ms")?,
        throttle_reason: row.opt_text("throttle_reason")?,
        last_job_started_at: row.time("last_job_started_at")?,
        started_at: row.time("started_at")?,
        finished_at: row.time("finished_at")?,
        created_at: row.time("created_at")?.unwrap_or_default(),
        updated_at: row.time("updated_at")?.unwrap_or_default(),
        unreadable: None,
        definition: row.opt_text("definition")?,
        after: serde_json::from_value(row.json("after_ids")?)
            .map_err(|e| Error::Corrupt(format!("bad after_ids: {e}")))?,
        verify: row.opt_text("verify")?,
        citus: citus(row)?,
    })
}

/// The kind of Citus table of a `migrations` row (column `citus`).
fn citus(row: &impl ModelRow) -> Result<Option<CitusTable>> {
    row.opt_text("citus")?
        .map(|s| {
            CitusTable::parse(&s)
                .ok_or_else(|| Error::Corrupt(format!("unknown Citus table kind {s:?}")))
        })
        .transpose()
}

/// A `migration_lanes` row, with `running_job` (the lane's running job, when selected).
pub(crate) fn lane(row: &impl ModelRow) -> Result<Lane> {
    Ok(Lane {
        migration_id: row.int("migration_id")?,
        lane: row.int32("lane")?,
        relation: row.text("relation")?,
        shard_id: row.int("shard_id")?,
        node: row.text("node")?,
        next_start: next_start(row)?,
        on_hold_until: row.time("on_hold_until")?,
        hold_reason: row.opt_text("hold_reason")?,
        running_job: row.opt_int("running_job")?,
    })
}

/// The migration's `next_start` returned beside a job created with it (columns
/// `next_cursor`, `next_inclusive`).
pub(crate) fn next_start(row: &impl ModelRow) -> Result<Option<Lower>> {
    Ok(match row.opt_key("next_cursor")? {
        None => None,
        Some(k) if row.flag("next_inclusive")? => Some(Lower::From(k)),
        Some(k) => Some(Lower::After(k)),
    })
}

/// A `jobs` row.
pub(crate) fn job(row: &impl ModelRow) -> Result<Job> {
    Ok(Job {
        id: row.int("id")?,
        migration_id: row.int("migration_id")?,
        min_value: row.key("min_cursor")?,
        max_value: row.key("max_cursor")?,
        batch_size: row.int("batch_size")?,
        sub_batch_size: row.int("sub_batch_size")?,
        pause_ms: row.int("pause_ms")?,
        status: row.text("status")?.parse()?,
        attempts: row.int32("attempts")?,
        started_at: row.time("started_at")?,
        finished_at: row.time("finished_at")?,
        rows_affected: row.int("rows_affected")?,
        cursor: row.opt_key("cursor")?,
        metrics: JobMetrics::from_json(row.json("metrics")?),
        worker: row.opt_text("worker")?,
        lease_expires_at: row.time("lease_expires_at")?,
        lane: row.opt_int("lane")?.map(|l| l as i32),
        created_at: row.time("created_at")?.unwrap_or_default(),
        updated_at: row.time("updated_at")?.unwrap_or_default(),
    })
}

/// A `job_transition_logs` row.
pub(crate) fn job_transition(row: &impl ModelRow) -> Result<JobTransition> {
    Ok(JobTransition {
        id: row.int("id")?,
        job_id: row.int("job_id")?,
        migration_id: row.int("migration_id")?,
        previous_status: row.text("previous_status")?.parse()?,
        next_status: row.text("next_status")?.parse()?,
        exception_class: row.opt_text("exception_class")?,
        exception_message: row.opt_text("exception_message")?,
        worker: row.opt_text("worker")?,
        created_at: row.time("created_at")?.unwrap_or_default(),
    })
}

/// A `migration_transition_logs` row.
pub(crate) fn migration_transition(row: &impl ModelRow) -> Result<MigrationTransition> {
    Ok(MigrationTransition {
        id: row.int("id")?,
        migration_id: row.int("migration_id")?,
        previous_status: row
            .opt_text("previous_status")?
            .map(|s| s.parse::<MigrationStatus>())
            .transpose()?,
        next_status: row.text("next_status")?.parse()?,
        event: row.text("event")?.parse()?,
        reason: row.opt_text("reason")?,
        indicator: row
            .opt_text("indicator")?
            .map(|s| s.parse::<Indicator>())
            .transpose()
            .map_err(|e| Error::Corrupt(format!("migration log indicator: {e}")))?,
        actor: row.opt_text("actor")?,
        exception_class: row.opt_text("exception_class")?,
        exception_message: row.opt_text("exception_message")?,
        created_at: row.time("created_at")?.unwrap_or_default(),
    })
}
