//! Health indicators: whether the database can take more of this migration now.
//!
//! A worker takes a [`HealthSample`] from the target database before every job (one query on
//! PostgreSQL, plus the user's probe when there is one), adds what only it knows (WAL rate
//! between its samples, its own sub-batch latencies), and [`evaluate`]s the lot against the
//! migration's [`HealthSettings`]. Any `stop` puts the migration on hold; `unknown` is
//! logged and does not hold. Evaluation is pure, so thresholds are unit-tested without a
//! server; the samples are tested against real catalog state in `tests/health.rs`.
//!
//! The files: `sample` (what is read), `reading` (what an indicator says), `indicators` (each
//! indicator's judgement), `pressure` (how near the limits); the settings live in
//! [`crate::model`], which stores them. Sub-batch latency and the worker's slow-down are here.

mod indicators;
mod pressure;
mod reading;
mod sample;

pub use crate::model::{AutovacuumPolicy, HealthSettings, Indicator, MAX_PROBE_LEN};
pub use indicators::{evaluate, evaluate_while, first_stop, RELEASE_BELOW};
pub use pressure::{pressure, SLOW_DOWN_FROM};
pub use reading::{
    grant_statement, protections_off, protections_off_notice, Reading, Signal, UnknownCause,
};
pub use sample::{AutovacuumWorker, HealthSample, OpenTransaction, Replica, TableLock, WalRate};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

/// The pause a loop keeps between the jobs of a migration as a measured limit nears: a small
/// controller, so that a signal such as the WAL rate settles under its limit instead of the
/// migration swinging between full speed and a hold. It is adjusted at most once a second
/// (the WAL rate is sampled over a second): it grows while the indicator nearest its limit is
/// at [`SlowDown::GROW_FROM`] of it or more, shrinks under [`SLOW_DOWN_FROM`], and stays in
/// between. A hold by a measured indicator leaves it at least twice the job's time, for when
/// the hold ends.
#[derive(Debug, Clone, Default)]
pub struct SlowDown {
    pause: Duration,
    adjusted: Option<Instant>,
}

impl SlowDown {
    /// Share of a limit from which the pause grows.
    pub const GROW_FROM: f64 = 0.7;
    /// The longest pause.
    pub const MAX: Duration = Duration::from_secs(10);

    /// The pause now.
    pub fn pause(&self) -> Duration {
        self.pause
    }

    /// The pause before the next job, at `pressure` (the nearest limit's share, `None` under
    /// half of every limit), for jobs that take `job`, at `now`.
    pub fn observe(&mut self, pressure: Option<f64>, job: Duration, now: Instant) -> Duration {
        let share = pressure.unwrap_or(0.0);
        // Starting to slow down is immediate; changing a pause waits for a fresh reading.
        let starting = self.pause.is_zero() && share >= Self::GROW_FROM;
        if !starting
            && self
                .adjusted
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return self.pause;
        }
        self.adjusted = Some(now);
        self.pause = if share >= 0.9 {
            (self.pause * 2).max(job)
        } else if share >= Self::GROW_FROM {
            self.pause.mul_f64(1.25).max(job / 2)
        } else if share >= SLOW_DOWN_FROM {
            self.pause
        } else {
            let less = self.pause.mul_f64(0.7);
            if less < Duration::from_millis(1) {
                Duration::ZERO
            } else {
                less
            }
        }
        .min(Self::MAX);
        self.pause
    }

    /// A measured indicator stopped the migration: after the hold, go on more slowly.
    pub fn after_stop(&mut self, job: Duration, now: Instant) {
        self.pause = (self.pause * 2).max(job * 2).min(Self::MAX);
        self.adjusted = Some(now);
    }
}

impl LatencyTracker {
    /// A tracker rebuilt from the sub-batch timings that jobs keep in their metrics (newest
    /// job first): what `sluicegate health` judges latency by, outside any worker.
    pub fn from_jobs(jobs_newest_first: &[crate::model::Job]) -> Self {
        let mut tracker = Self::default();
        for job in jobs_newest_first.iter().rev() {
            tracker.job_started();
            let entries = job.metrics.get("recent").and_then(|r| r.as_array());
            for entry in entries.into_iter().flatten() {
                let field = |k: &str| entry.get(k).and_then(serde_json::Value::as_i64);
                if let (Some(start), Some(end), Some(ms)) =
                    (field("start"), field("end"), field("ms"))
                {
                    tracker.observe(ms as f64, end - start + 1);
                }
            }
        }
        tracker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn healthy() -> HealthSample {
        HealthSample {
            not_available: None,
            autovacuum: Some(vec![]),
            archiving: Some(true),
            archive_ready: Some(0),
            wal_lsn: Some(1 << 30),
            replicas: Some(vec![]),
            transactions: Some(vec![]),
            locks: Some(vec![]),
            probe: None,
            ..HealthSample::default()
        }
    }

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

    #[test]
    fn the_worker_slows_down_as_a_limit_nears_and_settles() {
        let mut settings = HealthSettings {
            max_wal_rate_bytes: Some(100 << 20),
            ..HealthSettings::default()
        };
        assert!(
            pressure(&healthy(), &settings, Some(40e6), None).is_none(),
            "under half"
        );
        let (share, why) = pressure(&healthy(), &settings, Some(78_643_200.0), None).unwrap();
        assert!((share - 0.75).abs() < 1e-9, "{share}");
        assert_eq!(why, "wal_rate: 75.0 MiB/s of 100.0 MiB/s");
        settings.off = vec![Indicator::WalRate];
        assert!(pressure(&healthy(), &settings, Some(78_643_200.0), None).is_none());

        let job = Duration::from_millis(20);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = SlowDown::default();
        assert_eq!(
            d.observe(Some(0.6), job, at(0)),
            Duration::ZERO,
            "between: no change"
        );
        assert_eq!(d.observe(Some(0.75), job, at(1)), Duration::from_millis(10));
        // Adjusted at most once a second.
        assert_eq!(d.observe(Some(0.95), job, at(1)), Duration::from_millis(10));
        assert_eq!(d.observe(Some(0.95), job, at(2)), Duration::from_millis(20));
        assert_eq!(d.observe(Some(0.95), job, at(3)), Duration::from_millis(40));
        assert_eq!(
            d.observe(Some(0.6), job, at(4)),
            Duration::from_millis(40),
            "settled"
        );
        assert_eq!(d.observe(None, job, at(5)), Duration::from_millis(28));
        // A hold by a measured indicator: at least twice the job's time afterwards.
        let mut d = SlowDown::default();
        d.after_stop(job, at(0));
        assert_eq!(d.pause(), Duration::from_millis(40));
        assert_eq!(
            d.observe(Some(0.99), Duration::from_secs(60), at(9)),
            SlowDown::MAX
        );
        // Under half of every limit it fades out.
        let mut d = SlowDown::default();
        d.after_stop(Duration::from_micros(300), at(0));
        assert_eq!(d.observe(None, job, at(1)), Duration::ZERO);
        assert!(Indicator::WalRate.is_paced() && !Indicator::Probe.is_paced());
    }
}
