//! Slowing down as a limit nears: the pause a loop keeps between the jobs of a migration.

use std::time::{Duration, Instant};

use super::SLOW_DOWN_FROM;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::tests::healthy;
    use crate::health::{pressure, HealthSettings, Indicator};

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
