//! What a job's latest attempt measured, as stored in its row's `metrics` column: totals and
//! its newest sub-batches. Written by the worker that ran it and read by `health` (sub-batch
//! latency), the tuner's log rows, progress output and the dashboard, always through this type.
//!
//! Every field may be missing: a pending job's column is `{}`, and rows stored by older
//! versions lack the fields added since (a sub-batch's `keys`). Missing fields read as `None`
//! (or empty) and are left out again when written, so such a row reads back as it was.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::key::Key;

/// How many sub-batch entries a job's metrics keep (the newest); the totals cover all.
pub const RECENT_KEPT: usize = 50;

/// A job's metrics (its latest attempt).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobMetrics {
    /// How long the attempt took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Sub-batches it committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_batches: Option<u64>,
    /// Rows its sub-batches affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Its slowest sub-batch, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowest_sub_batch_ms: Option<u64>,
    /// The sub-batch size the tuner had reached at its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_batch_size: Option<i64>,
    /// Its newest [`RECENT_KEPT`] sub-batches, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<SubBatchMetric>,
}

/// One sub-batch of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubBatchMetric {
    /// Its first key, in the key's JSON form: the value itself for a one-column key, the array
    /// of values for a composite one.
    #[serde(default)]
    pub start: Value,
    /// Its last key, in the same form.
    #[serde(default)]
    pub end: Value,
    /// How many keys it covered: the size it was run with, which is what the worker measures
    /// latency per key by. The walk stops at the job's last key, so a job's last sub-batch
    /// may have held fewer (it is bounded by the span for an integer key). `None` in rows
    /// stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<i64>,
    /// Rows it affected.
    #[serde(default)]
    pub rows: u64,
    /// How long its transaction took, in milliseconds.
    #[serde(default)]
    pub ms: u64,
}

impl SubBatchMetric {
    /// The entry for a sub-batch over `start..=end` run with `size` keys.
    pub fn new(start: &Key, end: &Key, size: i64, rows: u64, took: Duration) -> Self {
        let keys = match (start.as_i64(), end.as_i64()) {
            (Some(a), Some(b)) if b >= a => size.min(b.saturating_sub(a).saturating_add(1)),
            _ => size,
        };
        Self {
            start: key_json(start),
            end: key_json(end),
            keys: Some(keys.max(1)),
            rows,
            ms: took.as_millis() as u64,
        }
    }

    /// How many keys it covered: as recorded, or for a row stored before key counts were,
    /// the span of an integer key (`None` for other keys, whose span cannot be counted).
    pub fn key_count(&self) -> Option<i64> {
        if let Some(keys) = self.keys {
            return Some(keys.max(1));
        }
        let (a, b) = (self.start.as_i64()?, self.end.as_i64()?);
        (b >= a).then(|| b.saturating_sub(a).saturating_add(1))
    }
}

/// A key as a job's metrics show it: the value itself for a one-column key (as before keys
/// were typed), the array for a composite one.
fn key_json(key: &Key) -> Value {
    match key.values() {
        [v] => v.clone(),
        values => Value::Array(values.to_vec()),
    }
}

impl JobMetrics {
    /// Whether anything was recorded (a job that never ran has `{}`).
    pub fn is_recorded(&self) -> bool {
        self.sub_batches.is_some() || self.duration_ms.is_some()
    }

    /// The JSON stored in the job row's column.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("metrics serialize")
    }

    /// The metrics in a job row's column; a column that does not read as metrics (edited by
    /// hand) reads as none rather than failing the job's row.
    pub fn from_json(value: Value) -> Self {
        serde_json::from_value(value).unwrap_or_default()
    }
}

/// What a job's sub-batches did so far: the running totals a worker keeps while it runs the
/// job, and the metrics they make.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    sub_batches: u64,
    rows: u64,
    slowest_ms: u64,
    recent: Vec<SubBatchMetric>,
}

impl Tally {
    /// Adds one committed sub-batch.
    pub fn record(&mut self, entry: SubBatchMetric) {
        self.sub_batches += 1;
        self.rows += entry.rows;
        self.slowest_ms = self.slowest_ms.max(entry.ms);
        if self.recent.len() == RECENT_KEPT {
            self.recent.remove(0);
        }
        self.recent.push(entry);
    }

    /// Sub-batches recorded.
    pub fn sub_batches(&self) -> u64 {
        self.sub_batches
    }

    /// The metrics of an attempt that took `duration` and ended at `sub_batch_size`.
    pub fn metrics(&self, duration: Duration, sub_batch_size: i64) -> JobMetrics {
        JobMetrics {
            duration_ms: Some(duration.as_millis() as u64),
            sub_batches: Some(self.sub_batches),
            rows: Some(self.rows),
            slowest_sub_batch_ms: Some(self.slowest_ms),
            sub_batch_size: Some(sub_batch_size),
            recent: self.recent.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn old_and_empty_rows_read_and_write_back_as_they_were() {
        assert_eq!(JobMetrics::from_json(json!({})).to_json(), json!({}));
        let old = json!({"duration_ms": 12, "sub_batches": 1, "rows": 3, "slowest_sub_batch_ms": 4,
            "sub_batch_size": 100, "recent": [{"start": 1, "end": 10, "rows": 3, "ms": 4}]});
        let m = JobMetrics::from_json(old.clone());
        assert_eq!(m.to_json(), old);
        assert_eq!(m.recent[0].key_count(), Some(10));
        // A UUID key stored before key counts: no count to be had.
        let uuid = json!({"recent": [{"start": "a", "end": "b", "rows": 1, "ms": 1}]});
        assert_eq!(JobMetrics::from_json(uuid).recent[0].key_count(), None);
        // Something else entirely (edited by hand) reads as nothing.
        assert_eq!(JobMetrics::from_json(json!("x")), JobMetrics::default());
    }

    #[test]
    fn entries_count_keys_for_every_key_type() {
        let took = Duration::from_millis(5);
        let uuid = |s: &str| Key(vec![json!(s)]);
        let e = SubBatchMetric::new(&uuid("0a"), &uuid("ff"), 250, 250, took);
        assert_eq!((e.key_count(), e.start.clone()), (Some(250), json!("0a")));
        let pair = |a: i64, b: &str| Key(vec![json!(a), json!(b)]);
        let e = SubBatchMetric::new(&pair(1, "x"), &pair(9, "y"), 40, 40, took);
        assert_eq!((e.key_count(), e.end.clone()), (Some(40), json!([9, "y"])));
        // An integer key: the keys run with, never more than the span holds.
        let int = |i: i64| Key(vec![json!(i)]);
        assert_eq!(
            SubBatchMetric::new(&int(1), &int(1000), 100, 1, took).key_count(),
            Some(100)
        );
        assert_eq!(
            SubBatchMetric::new(&int(1), &int(20), 100, 1, took).key_count(),
            Some(20)
        );
    }
}
