//! The batch-size optimizer, with GitLab's numbers: efficiency of a job is its duration
//! divided by the migration's interval; aim for 0.9–0.95 of the interval.

use std::time::Duration;

/// How many succeeded jobs the optimizer looks at (GitLab: 20); with fewer it changes nothing.
pub const SAMPLE_JOBS: usize = 20;
/// Smoothing weight of the newest job (GitLab: 0.4).
pub const EMA_ALPHA: f64 = 0.4;
/// Efficiency range in which the batch size is kept (GitLab: 0.9–0.95).
pub const TARGET_EFFICIENCY: (f64, f64) = (0.9, 0.95);
/// Largest growth factor per step (GitLab: 1.2).
pub const MAX_GROWTH: f64 = 1.2;
/// Smallest batch size the optimizer sets (GitLab: 1,000).
pub const MIN_BATCH_SIZE: i64 = 1_000;
/// Largest batch size when the migration sets no ceiling (GitLab: 2,000,000).
pub const MAX_BATCH_SIZE: i64 = 2_000_000;

/// Exponentially smoothed efficiency of `durations` (newest first) against `interval`:
/// weights (1-α)^i, normalised. `None` with fewer than [`SAMPLE_JOBS`] samples or a zero
/// interval (full speed, where efficiency means nothing).
pub fn smoothed_efficiency(durations: &[Duration], interval: Duration) -> Option<f64> {
    if durations.len() < SAMPLE_JOBS || interval.is_zero() {
        return None;
    }
    let (mut weighted, mut weights) = (0.0, 0.0);
    for (i, d) in durations.iter().take(SAMPLE_JOBS).enumerate() {
        let weight = (1.0 - EMA_ALPHA).powi(i as i32);
        weighted += weight * d.as_secs_f64() / interval.as_secs_f64();
        weights += weight;
    }
    Some(weighted / weights)
}

/// The batch size to use next, or `None` to keep `current`.
pub fn next_batch_size(
    current: i64,
    durations: &[Duration],
    interval: Duration,
    max_batch_size: Option<i64>,
) -> Option<i64> {
    let efficiency = smoothed_efficiency(durations, interval)?;
    if (TARGET_EFFICIENCY.0..=TARGET_EFFICIENCY.1).contains(&efficiency) {
        return None;
    }
    let multiplier = if efficiency <= 0.0 {
        MAX_GROWTH
    } else {
        (TARGET_EFFICIENCY.1 / efficiency).min(MAX_GROWTH)
    };
    let ceiling = max_batch_size.unwrap_or(MAX_BATCH_SIZE).max(MIN_BATCH_SIZE);
    let next = ((current as f64 * multiplier) as i64).clamp(MIN_BATCH_SIZE, ceiling);
    (next != current).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64, n: usize) -> Vec<Duration> {
        vec![Duration::from_secs_f64(s); n]
    }

    const TWO_MINUTES: Duration = Duration::from_secs(120);

    #[test]
    fn fewer_than_twenty_jobs_change_nothing() {
        assert_eq!(
            next_batch_size(10_000, &secs(10.0, 19), TWO_MINUTES, None),
            None
        );
    }

    #[test]
    fn fast_jobs_grow_by_at_most_twenty_percent() {
        // 60 s of a 120 s interval: efficiency 0.5, 0.95 / 0.5 = 1.9, capped at 1.2.
        assert_eq!(
            next_batch_size(10_000, &secs(60.0, 20), TWO_MINUTES, None),
            Some(12_000)
        );
    }

    #[test]
    fn slow_jobs_shrink_proportionally() {
        // 240 s of a 120 s interval: efficiency 2.0, multiplier 0.475.
        assert_eq!(
            next_batch_size(10_000, &secs(240.0, 20), TWO_MINUTES, None),
            Some(4_750)
        );
    }

    #[test]
    fn inside_the_target_range_nothing_changes() {
        assert_eq!(
            next_batch_size(10_000, &secs(111.0, 20), TWO_MINUTES, None),
            None
        );
    }

    #[test]
    fn clamped_to_floor_and_ceiling() {
        assert_eq!(
            next_batch_size(1_000, &secs(1_000.0, 20), TWO_MINUTES, None),
            None,
            "already at the 1,000 floor"
        );
        assert_eq!(
            next_batch_size(1_900_000, &secs(1.0, 20), TWO_MINUTES, None),
            Some(2_000_000)
        );
        assert_eq!(
            next_batch_size(45_000, &secs(1.0, 20), TWO_MINUTES, Some(50_000)),
            Some(50_000)
        );
    }

    #[test]
    fn newest_jobs_weigh_most() {
        // Newest job slow, the rest fast: the smoothed efficiency leans to the newest.
        let mut d = secs(12.0, 20);
        d[0] = Duration::from_secs(240);
        let e = smoothed_efficiency(&d, TWO_MINUTES).unwrap();
        let plain_mean = (240.0 + 19.0 * 12.0) / 20.0 / 120.0;
        assert!(
            e > plain_mean,
            "{e} should exceed the plain mean {plain_mean}"
        );
    }

    #[test]
    fn zero_interval_turns_it_off() {
        assert_eq!(
            next_batch_size(10_000, &secs(1.0, 20), Duration::ZERO, None),
            None
        );
    }
}
