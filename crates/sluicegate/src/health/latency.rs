//! Sub-batch latency: a loop's running measure of its sub-batches' time per key, which the
//! `sub_batch_latency` indicator judges, and its rebuilding from stored job metrics for
//! `sluicegate health`.

use std::collections::VecDeque;

use super::{Indicator, Reading, Signal, UnknownCause};
use crate::model::Job;

/// Sub-batch time per key: a running median of the last [`LatencyTracker::KEPT`] sub-batches
/// against the median of the latest job's. Per key, because the sub-batch tuner changes
/// sub-batch sizes all the time.
#[derive(Debug, Default, Clone)]
pub struct LatencyTracker {
    history: VecDeque<f64>,
    recent_per_key: Vec<f64>,
    recent_ms: Vec<f64>,
    /// The jobs before the latest: (ratio to the running median per key, median ms), newest
    /// last. Drift must persist over [`LatencyTracker::SUSTAINED_JOBS`] jobs to stop.
    past: VecDeque<(f64, f64)>,
}

impl LatencyTracker {
    /// Sub-batches remembered for the running median.
    pub const KEPT: usize = 500;
    /// Sub-batches needed before the indicator says anything.
    pub const MIN_SAMPLES: usize = 20;
    /// Sub-batches faster than this never count as drifting (noise on tiny batches).
    pub const FLOOR_MS: f64 = 20.0;
    /// Jobs in a row that must drift before the indicator says stop: one slow job (a noisy
    /// host, a checkpoint) never holds; the first drifting ones slow the worker down.
    pub const SUSTAINED_JOBS: usize = 3;

    /// Starts a job's sample (the latest job's joins the past ones).
    pub fn job_started(&mut self) {
        if let Some(latest) = self.latest() {
            if self.past.len() == 16 {
                self.past.pop_front();
            }
            self.past.push_back(latest);
        }
        self.recent_per_key.clear();
        self.recent_ms.clear();
    }

    /// Forgets the latest jobs' drift (the running median stays): after a hold on it, the
    /// next jobs must show it again before it stops the migration again.
    pub fn forget_recent(&mut self) {
        self.recent_per_key.clear();
        self.recent_ms.clear();
        self.past.clear();
    }

    /// The latest job's (ratio to the running median per key, median ms), once there are
    /// enough samples to say.
    fn latest(&self) -> Option<(f64, f64)> {
        if self.history.len() < Self::MIN_SAMPLES || self.recent_per_key.is_empty() {
            return None;
        }
        let all = median(self.history.iter().copied().collect());
        let recent = median(self.recent_per_key.clone());
        let ratio = if all > 0.0 { recent / all } else { 1.0 };
        Some((ratio, median(self.recent_ms.clone())))
    }

    /// How many jobs in a row, the latest included, drifted past `factor`.
    pub fn drifting_jobs(&self, factor: f64) -> usize {
        let drifted = |(ratio, ms): &(f64, f64)| *ratio > factor && *ms >= Self::FLOOR_MS;
        match self.latest() {
            Some(latest) if drifted(&latest) => {
                1 + self.past.iter().rev().take_while(|j| drifted(j)).count()
            }
            _ => 0,
        }
    }

    /// One sub-batch of `keys` keys took `ms`.
    pub fn observe(&mut self, ms: f64, keys: i64) {
        let per_key = ms.max(0.0) / keys.max(1) as f64;
        self.recent_per_key.push(per_key);
        self.recent_ms.push(ms.max(0.0));
        if self.history.len() == Self::KEPT {
            self.history.pop_front();
        }
        self.history.push_back(per_key);
    }

    /// The indicator's verdict with drift `factor`.
    pub fn reading(&self, factor: f64) -> Reading {
        let threshold = format!(
            "max {factor}x the running median per key, {} jobs in a row",
            Self::SUSTAINED_JOBS
        );
        let reading = |signal, reading: String| Reading {
            indicator: Indicator::SubBatchLatency,
            signal,
            reading,
            threshold: threshold.clone(),
            cause: (signal == Signal::Unknown).then_some(UnknownCause::NoDataYet),
            grant: None,
        };
        if self.history.len() < Self::MIN_SAMPLES || self.recent_per_key.is_empty() {
            return reading(
                Signal::Unknown,
                format!(
                    "{} sub-batches measured so far, {} needed",
                    self.history.len(),
                    Self::MIN_SAMPLES
                ),
            );
        }
        let (ratio, recent_ms) = self.latest().unwrap_or((1.0, 0.0));
        let drifting = self.drifting_jobs(factor);
        let mut text = format!(
            "latest job's sub-batches {recent_ms:.1} ms median, {ratio:.1}x the running median per key"
        );
        if drifting > 0 {
            text.push_str(&format!(
                "; drifting for {drifting} job{} in a row (stops at {})",
                if drifting == 1 { "" } else { "s" },
                Self::SUSTAINED_JOBS
            ));
        }
        let signal = if drifting >= Self::SUSTAINED_JOBS {
            Signal::Stop
        } else {
            Signal::Normal
        };
        reading(signal, text)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

impl LatencyTracker {
    /// A tracker rebuilt from the sub-batch timings that jobs keep in their metrics (newest
    /// job first): what `sluicegate health` judges latency by, outside any worker. Per key,
    /// like a worker's own: each entry's key count, whatever the key's type. An entry stored
    /// before key counts were recorded counts its integer span, and is skipped for other keys.
    pub fn from_jobs(jobs_newest_first: &[Job]) -> Self {
        let mut tracker = Self::default();
        for job in jobs_newest_first.iter().rev() {
            tracker.job_started();
            for entry in &job.metrics.recent {
                if let Some(keys) = entry.key_count() {
                    tracker.observe(entry.ms as f64, keys);
                }
            }
        }
        tracker
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::tests::healthy;
    use crate::health::{pressure, HealthSettings, SLOW_DOWN_FROM};
    use crate::job_metrics::{JobMetrics, SubBatchMetric};
    use crate::key::Key;

    #[test]
    fn latency_drift_against_the_running_median_per_key() {
        let mut t = LatencyTracker::default();
        assert_eq!(t.reading(5.0).signal, Signal::Unknown, "no samples yet");
        // Forty sub-batches at 10 ms per 1,000 keys, growing sizes at the same pace per key.
        for i in 0..40 {
            t.job_started();
            t.observe(10.0 * (1 + i % 4) as f64, 1_000 * (1 + i % 4));
        }
        assert_eq!(t.reading(5.0).signal, Signal::Normal);
        // The latest job runs at 30 ms per 500 keys: 6x per key. One such job slows the
        // worker down (pressure), never stops it.
        t.job_started();
        for _ in 0..3 {
            t.observe(30.0, 500);
        }
        let r = t.reading(5.0);
        assert_eq!(r.signal, Signal::Normal, "{r:?}");
        assert!(
            r.reading.contains("6.0x the running median per key")
                && r.reading
                    .contains("drifting for 1 job in a row (stops at 3)"),
            "{r:?}"
        );
        let settings = HealthSettings::default();
        let (share, why) = pressure(&healthy(), &settings, None, Some(&t)).expect("pressure");
        assert!((SLOW_DOWN_FROM..1.0).contains(&share), "{share}");
        assert!(
            why.starts_with("sub_batch_latency: drifting for 1 job"),
            "{why}"
        );
        // Sustained over three jobs in a row: stop.
        for _ in 0..2 {
            t.job_started();
            for _ in 0..3 {
                t.observe(30.0, 500);
            }
        }
        let r = t.reading(5.0);
        assert_eq!(r.signal, Signal::Stop, "{r:?}");
        assert!(r.reading.contains("drifting for 3 jobs in a row"), "{r:?}");
        // After a hold the evidence starts afresh: no stop until new jobs drift again.
        let mut held = t.clone();
        held.forget_recent();
        assert_ne!(held.reading(5.0).signal, Signal::Stop);
        assert_eq!(held.drifting_jobs(5.0), 0);
        // One fast job in between starts the count again.
        t.job_started();
        t.observe(10.0, 1_000);
        assert_eq!(t.reading(5.0).signal, Signal::Normal);
        // The same drift on sub-batches too fast to matter is ignored.
        let mut tiny = LatencyTracker::default();
        for _ in 0..40 {
            tiny.observe(1.0, 1_000);
        }
        tiny.job_started();
        tiny.observe(10.0, 1_000);
        assert_eq!(tiny.reading(5.0).signal, Signal::Normal);
    }

    /// A succeeded job whose metrics hold `n` sub-batches of `keys` keys over `start`, `end`.
    fn job_with(start: Key, end: Key, keys: i64, ms: u64, n: usize) -> Job {
        let entry = SubBatchMetric::new(&start, &end, keys, 1, Duration::from_millis(ms));
        let job: Job = serde_json::from_value(serde_json::json!({
            "id": 1, "migration_id": 1, "min_value": [1], "max_value": [2], "batch_size": 1,
            "sub_batch_size": 1, "pause_ms": 0, "status": "succeeded", "attempts": 1,
            "started_at": null, "finished_at": null, "rows_affected": 0, "cursor": null,
            "metrics": {}, "worker": null, "lease_expires_at": null,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"
        }))
        .expect("a job");
        Job {
            metrics: JobMetrics {
                recent: vec![entry; n],
                ..JobMetrics::default()
            },
            ..job
        }
    }

    #[test]
    fn stored_jobs_measure_latency_per_key_for_every_key_type() {
        let uuid = |s: &str| Key(vec![serde_json::json!(s)]);
        let pair = |a: i64, b: &str| Key(vec![serde_json::json!(a), serde_json::json!(b)]);
        let int = |i: i64| Key(vec![serde_json::json!(i)]);
        for job in [
            job_with(uuid("00"), uuid("ff"), 500, 30, 10),
            job_with(pair(1, "a"), pair(7, "z"), 500, 30, 10),
            // Sparse integer keys: 500 keys over a span of 10,000 count as 500.
            job_with(int(1), int(10_000), 500, 30, 10),
        ] {
            let t = LatencyTracker::from_jobs(&[job.clone(), job.clone(), job]);
            let r = t.reading(5.0);
            assert_eq!(r.signal, Signal::Normal, "{r:?}");
            assert!(r.reading.contains("30.0 ms median"), "{r:?}");
            assert_eq!(t.history.len(), 30);
            assert!(
                (t.history[0] - 30.0 / 500.0).abs() < 1e-9,
                "{:?}",
                t.history
            );
        }
    }
}
