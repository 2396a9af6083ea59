//! The health gate before a job: from a health sample and what the loop measured of the
//! migration, whether its next job may start, and how slowly. Decides only; `hold` writes
//! what it decided.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::migration_run::MigrationRun;
use crate::health::{self, HealthSample, Indicator, Reading};
use crate::model::Migration;

/// What the gate says before a job.
#[derive(Debug)]
pub(super) enum Verdict {
    /// An indicator says stop: start a hold, or keep the one in progress.
    Hold {
        /// The indicator and its reading, as logged.
        reason: String,
    },
    /// Every indicator is normal on a held migration: end the hold, then go.
    Release {
        /// When the hold started.
        since: DateTime<Utc>,
        /// The readings now, to say what cleared.
        readings: Vec<Reading>,
        /// The pace to go on at.
        pace: Pace,
    },
    /// Go, at `pace`.
    Go {
        /// The pace.
        pace: Pace,
    },
}

/// How fast the next job may follow: the pause before it, and the `throttle` row to write
/// when the pause changed enough to say so.
#[derive(Debug, PartialEq)]
pub(super) struct Pace {
    pub(super) pause: Duration,
    pub(super) row: Option<ThrottleRow>,
}

/// A `throttle` log row.
#[derive(Debug, PartialEq)]
pub(super) struct ThrottleRow {
    pub(super) pause_ms: i64,
    /// Why the migration is slowed down (none at full speed).
    pub(super) reason: Option<String>,
    /// The log row's text.
    pub(super) log: String,
}

impl MigrationRun {
    /// Every indicator's verdict on `sample` for `m` (with the release hysteresis while it
    /// is on hold), with the loop's WAL `rate` and this run's own sub-batch timings; and how
    /// near a limit it is ([`health::pressure`]).
    pub(super) fn readings(
        &self,
        m: &Migration,
        sample: &HealthSample,
        rate: Option<f64>,
    ) -> (Vec<Reading>, Option<(f64, String)>) {
        let latency = self.latency.as_ref();
        let holding = m.held_since.is_some();
        let readings = health::evaluate_while(sample, &m.health, rate, latency, holding);
        let pressure = health::pressure(sample, &m.health, rate, latency);
        (readings, pressure)
    }

    /// Whether a job may start with the end of the last one, inside its transaction: only
    /// when nothing stops, slows or holds it (anything else is for the next step's gate).
    pub(super) fn may_start_ahead(
        &self,
        m: &Migration,
        sample: &HealthSample,
        rate: Option<f64>,
    ) -> bool {
        let (readings, pressure) = self.readings(m, sample, rate);
        health::first_stop(&readings).is_none()
            && pressure.is_none()
            && self.slow_down.pause().is_zero()
            && m.held_since.is_none()
    }

    /// The gate's verdict on `sample` for `m`, at `now`. A stop by an indicator the worker's
    /// own pace drives leaves a pause for after the hold; a stop on latency starts its
    /// evidence afresh (no job runs during the hold to renew it, which would never end).
    pub(super) fn gate(
        &mut self,
        held_since: Option<DateTime<Utc>>,
        readings: Vec<Reading>,
        pressure: Option<(f64, String)>,
        now: Instant,
    ) -> Verdict {
        if let Some(stop) = health::first_stop(&readings) {
            if stop.indicator.is_paced() && held_since.is_none() {
                // Once per hold: its re-checks do not slow it further.
                self.slow_down.after_stop(self.job_time, now);
            }
            if stop.indicator == Indicator::SubBatchLatency {
                if let Some(latency) = &mut self.latency {
                    latency.forget_recent();
                }
            }
            return Verdict::Hold {
                reason: stop.reason(),
            };
        }
        let pace = self.pace(pressure, now);
        match held_since {
            Some(since) => Verdict::Release {
                since,
                readings,
                pace,
            },
            None => Verdict::Go { pace },
        }
    }

    /// The pause before the next job ([`health::SlowDown`]), with a `throttle` row when it
    /// starts, ends, or changes by a factor of two or more.
    fn pace(&mut self, pressure: Option<(f64, String)>, now: Instant) -> Pace {
        let pause = self
            .slow_down
            .observe(pressure.as_ref().map(|p| p.0), self.job_time, now);
        let pause_ms = pause.as_millis() as i64;
        let changed = match (self.throttle_ms, pause_ms) {
            (0, 0) => false,
            (0, _) | (_, 0) => true,
            (a, b) => b >= 2 * a || 2 * b <= a,
        };
        let row = changed.then(|| {
            let (reason, log) = match &pressure {
                Some((share, why)) if pause_ms > 0 => (
                    why.clone(),
                    format!(
                        "slowing down: {pause_ms} ms between jobs ({why}; {:.0}% of the limit)",
                        share * 100.0
                    ),
                ),
                // Easing back in after a hold, or fading out under half of every limit.
                None if pause_ms > 0 => {
                    let why = "easing back in: every measured indicator under half its limit";
                    (
                        why.to_owned(),
                        format!("slowing down: {pause_ms} ms between jobs ({why})"),
                    )
                }
                _ => (
                    String::new(),
                    "full speed again: every measured indicator under half its limit".into(),
                ),
            };
            ThrottleRow {
                pause_ms,
                reason: (pause_ms > 0).then_some(reason),
                log,
            }
        });
        Pace { pause, row }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Signal;

    fn reading(indicator: Indicator, signal: Signal) -> Reading {
        Reading {
            indicator,
            signal,
            reading: "r".into(),
            threshold: "t".into(),
            cause: None,
            grant: None,
        }
    }

    #[test]
    fn the_gate_holds_releases_and_paces() {
        let mut run = MigrationRun::with(1, 100, 0);
        let now = Instant::now();
        // A stop by a paced indicator holds, and leaves a pause for after the hold.
        let stop = vec![reading(Indicator::WalRate, Signal::Stop)];
        assert!(matches!(
            run.gate(None, stop, None, now),
            Verdict::Hold { .. }
        ));
        assert!(!run.slow_down.pause().is_zero());
        // Normal again on a held migration: release, easing back in with a throttle row.
        let normal = vec![reading(Indicator::WalRate, Signal::Normal)];
        let Verdict::Release { pace, .. } = run.gate(Some(Utc::now()), normal.clone(), None, now)
        else {
            panic!("a release")
        };
        let row = pace.row.expect("a throttle row");
        assert!(row.log.starts_with("slowing down:"), "{row:?}");
        run.throttle_ms = row.pause_ms;
        // Far under every limit, the pause fades out; full speed is said once.
        let mut later = now;
        let mut rows = vec![];
        for _ in 0..40 {
            later += Duration::from_secs(2);
            let Verdict::Go { pace } = run.gate(None, normal.clone(), None, later) else {
                panic!("go")
            };
            if let Some(row) = pace.row {
                run.throttle_ms = row.pause_ms;
                rows.push(row.log);
            }
        }
        assert_eq!(
            rows.last().map(String::as_str),
            Some("full speed again: every measured indicator under half its limit")
        );
        assert!(run.slow_down.pause().is_zero());
    }
}
