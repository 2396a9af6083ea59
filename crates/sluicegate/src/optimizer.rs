//! The batch-size optimizer, with GitLab's numbers: efficiency of a job is its duration
//! divided by the migration's interval; aim for 0.9–0.95 of the interval. Beyond GitLab:
//! jobs weigh by the rows they affected and growth is capped by the slowest cost per row seen
//! (so sparse ranges cannot blow the batch up, gitlab#351786), and the sub-batch size that aims
//! each sub-batch transaction at a target time (the engine's tuner builds on it).

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
/// At full speed (interval 0) there is no interval to fill: jobs are grown toward this long
/// instead, and never shrunk. Long enough that a job's bookkeeping (its creation, its end, a
/// few statements on the tracking database) is noise against its work; short enough that a
/// pause, a hold or a stop waits little for the job in flight.
pub const FULL_SPEED_JOB_TIME: Duration = Duration::from_secs(1);
/// At full speed, the largest growth of the batch a step: jobs far shorter than their target
/// are mostly bookkeeping, so a migration started at the default 1,000 keys reaches jobs of
/// a second in a few steps (×4 a step: 1,000 to 256,000 in four).
pub const FULL_SPEED_MAX_GROWTH: f64 = 4.0;
/// At full speed, the succeeded jobs a growth step needs (newest first), and how many jobs a
/// loop finishes between two looks: a handful is enough, since a step only ever grows, by a
/// bounded factor, and the dense-batch cap still holds.
pub const FULL_SPEED_SAMPLE_JOBS: usize = 3;

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

/// One succeeded job as the optimizer sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobSample {
    /// How long it ran.
    pub duration: Duration,
    /// Rows it affected.
    pub rows: i64,
}

/// A batch-size change and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Resize {
    /// The new batch size.
    pub batch_size: i64,
    /// Why, for the migration's log.
    pub reason: String,
}

/// GitLab's rule on an efficiency smoothed with weights (1-α)^i × rows affected, newest
/// first; growth further capped so that a batch where every key is affected at the slowest
/// cost per row seen would still fit 0.95 of the interval. `None` keeps `current`: fewer than
/// [`SAMPLE_JOBS`] jobs, a zero interval, no rows affected at all, or inside the target.
pub fn next_batch_size_by_rows(
    current: i64,
    samples: &[JobSample],
    interval: Duration,
    max_batch_size: Option<i64>,
) -> Option<Resize> {
    next_batch_size_aimed(
        current,
        samples,
        SAMPLE_JOBS,
        interval,
        max_batch_size,
        MAX_GROWTH,
    )
}

/// At full speed: [`next_batch_size_by_rows`] aimed at [`FULL_SPEED_JOB_TIME`] per job, growing
/// up to [`FULL_SPEED_MAX_GROWTH`] a step (no interval to overshoot: the dense-batch cap alone
/// bounds it), never shrinking.
pub fn next_batch_size_at_full_speed(
    current: i64,
    samples: &[JobSample],
    max_batch_size: Option<i64>,
) -> Option<Resize> {
    let aim = FULL_SPEED_JOB_TIME;
    next_batch_size_aimed(
        current,
        samples,
        FULL_SPEED_SAMPLE_JOBS,
        aim,
        max_batch_size,
        FULL_SPEED_MAX_GROWTH,
    )
    .filter(|r| r.batch_size > current)
}

/// GitLab's rule over the newest `sample_jobs` of `samples`, aimed at `aim` per job, growing
/// at most `max_growth` a step.
fn next_batch_size_aimed(
    current: i64,
    samples: &[JobSample],
    sample_jobs: usize,
    interval: Duration,
    max_batch_size: Option<i64>,
    max_growth: f64,
) -> Option<Resize> {
    if samples.len() < sample_jobs || interval.is_zero() {
        return None;
    }
    let samples = &samples[..sample_jobs];
    let (mut weighted, mut weights) = (0.0, 0.0);
    for (i, s) in samples.iter().enumerate() {
        let weight = (1.0 - EMA_ALPHA).powi(i as i32) * s.rows.max(0) as f64;
        weighted += weight * s.duration.as_secs_f64() / interval.as_secs_f64();
        weights += weight;
    }
    if weights == 0.0 {
        return None;
    }
    let efficiency = weighted / weights;
    if (TARGET_EFFICIENCY.0..=TARGET_EFFICIENCY.1).contains(&efficiency) {
        return None;
    }
    let multiplier = if efficiency <= 0.0 {
        max_growth
    } else {
        (TARGET_EFFICIENCY.1 / efficiency).min(max_growth)
    };
    let ceiling = max_batch_size.unwrap_or(MAX_BATCH_SIZE).max(MIN_BATCH_SIZE);
    let mut next = ((current as f64 * multiplier) as i64).clamp(MIN_BATCH_SIZE, ceiling);
    let mut reason = format!(
        "efficiency {efficiency:.2} of the interval over the last {sample_jobs} jobs (weighted by rows)"
    );
    if next > current {
        let slowest_per_row = samples
            .iter()
            .filter(|s| s.rows > 0)
            .map(|s| s.duration.as_secs_f64() / s.rows as f64)
            .fold(0.0, f64::max);
        if slowest_per_row > 0.0 {
            let dense_cap = (TARGET_EFFICIENCY.1 * interval.as_secs_f64() / slowest_per_row) as i64;
            if dense_cap < next {
                next = dense_cap.max(current);
                reason.push_str(&format!(
                    "; growth capped at {next}: at {:.3} ms per row a dense batch must fit the interval",
                    slowest_per_row * 1000.0
                ));
            }
        }
    }
    (next != current).then(|| Resize {
        batch_size: next,
        reason: format!("batch size {current} -> {next}: {reason}"),
    })
}

/// Sub-batches taking between these fractions of the target are left alone.
pub const SUB_BATCH_DEAD_BAND: (f64, f64) = (0.8, 1.25);
/// Largest change of the sub-batch size per sub-batch (either way).
pub const SUB_BATCH_MAX_STEP: f64 = 1.5;

/// The sub-batch tuner: the next sub-batch size after one of `current` keys took `took`,
/// aiming at `target` (zero: off). Moves proportionally, at most ×1.5 or ÷2 per step, within
/// `[1, ceiling]`.
pub fn next_sub_batch_size(current: i64, took: Duration, target: Duration, ceiling: i64) -> i64 {
    if target.is_zero() {
        return current;
    }
    let ratio = if took.is_zero() {
        SUB_BATCH_MAX_STEP
    } else {
        target.as_secs_f64() / took.as_secs_f64()
    };
    if (1.0 / SUB_BATCH_DEAD_BAND.1..=1.0 / SUB_BATCH_DEAD_BAND.0).contains(&ratio) {
        return current.min(ceiling).max(1);
    }
    let factor = ratio.clamp(0.5, SUB_BATCH_MAX_STEP);
    ((current as f64 * factor).round() as i64).clamp(1, ceiling.max(1))
}

/// After a lock or statement timeout: batch and sub-batch shrink at once (×0.75, GitLab's
/// sub-batch factor), the batch not below the smaller of its size and [`MIN_BATCH_SIZE`].
pub fn after_timeout(batch_size: i64, sub_batch_size: i64) -> (i64, i64) {
    let sub = ((sub_batch_size as f64 * 0.75) as i64).max(1);
    let floor = batch_size.min(MIN_BATCH_SIZE);
    let batch = ((batch_size as f64 * 0.75) as i64).max(floor).max(sub);
    (batch, sub.min(batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs(secs: f64, rows: i64, n: usize) -> Vec<JobSample> {
        vec![
            JobSample {
                duration: Duration::from_secs_f64(secs),
                rows,
            };
            n
        ]
    }

    #[test]
    fn dense_jobs_follow_gitlab_rule() {
        // Every job dense (10,000 rows), 60 s of 120: grows by the 1.2 cap, as GitLab.
        let r = next_batch_size_by_rows(10_000, &jobs(60.0, 10_000, 20), TWO_MINUTES, None);
        assert_eq!(r.map(|r| r.batch_size), Some(12_000));
        // 240 s of 120: ×0.475, as GitLab.
        let r = next_batch_size_by_rows(10_000, &jobs(240.0, 10_000, 20), TWO_MINUTES, None);
        assert_eq!(r.map(|r| r.batch_size), Some(4_750));
        assert_eq!(
            next_batch_size_by_rows(10_000, &jobs(60.0, 10_000, 19), TWO_MINUTES, None),
            None
        );
    }

    #[test]
    fn sparse_fast_jobs_do_not_blow_the_batch_up() {
        // gitlab#351786: 100,000-key jobs touching 10 rows each in 1 s look 0.008 efficient,
        // so GitLab grows ×1.2 every time. At 100 ms per affected row, a dense batch of
        // 100,000 keys would take 10,000 s: no growth at all.
        let r = next_batch_size_by_rows(100_000, &jobs(1.0, 10, 20), TWO_MINUTES, None);
        assert_eq!(r, None);
        // GitLab's rule alone would have grown it.
        assert_eq!(
            next_batch_size(100_000, &secs(1.0, 20), TWO_MINUTES, None),
            Some(120_000)
        );
    }

    #[test]
    fn empty_jobs_weigh_nothing() {
        // The newest five jobs were empty and instant; the fifteen before were slow and
        // dense. GitLab's plain smoothing sees mostly the fast ones; by rows, the slow ones.
        let mut samples = jobs(0.0, 0, 5);
        samples.extend(jobs(240.0, 10_000, 15));
        let r = next_batch_size_by_rows(10_000, &samples, TWO_MINUTES, None).unwrap();
        assert_eq!(r.batch_size, 4_750, "{}", r.reason);
        assert_eq!(
            next_batch_size_by_rows(10_000, &jobs(0.0, 0, 20), TWO_MINUTES, None),
            None,
            "no rows at all: no evidence either way"
        );
    }

    #[test]
    fn growth_is_capped_where_a_dense_batch_would_overrun() {
        // 20 s for 1,000 rows of a 10,000-key batch: 20 ms per row. Dense, 0.95 × 120 s
        // allows 5,700 keys; GitLab's rule alone would say 12,000.
        let r = next_batch_size_by_rows(5_000, &jobs(20.0, 1_000, 20), TWO_MINUTES, None).unwrap();
        assert_eq!(r.batch_size, 5_700, "{}", r.reason);
        assert!(r.reason.contains("capped"), "{}", r.reason);
    }

    #[test]
    fn sub_batch_tuner_aims_at_the_target() {
        let target = Duration::from_millis(100);
        // 10 ms for 1,000 keys: ×1.5 at most per step.
        assert_eq!(
            next_sub_batch_size(1_000, Duration::from_millis(10), target, 10_000),
            1_500
        );
        // 400 ms: halve at most.
        assert_eq!(
            next_sub_batch_size(1_000, Duration::from_millis(400), target, 10_000),
            500
        );
        // 160 ms: proportional, 625.
        assert_eq!(
            next_sub_batch_size(1_000, Duration::from_millis(160), target, 10_000),
            625
        );
        // Inside the dead band: unchanged.
        assert_eq!(
            next_sub_batch_size(1_000, Duration::from_millis(110), target, 10_000),
            1_000
        );
        // Never above the batch, never below 1; off at zero.
        assert_eq!(
            next_sub_batch_size(9_000, Duration::from_millis(1), target, 10_000),
            10_000
        );
        assert_eq!(
            next_sub_batch_size(1, Duration::from_secs(10), target, 10_000),
            1
        );
        assert_eq!(
            next_sub_batch_size(1_000, Duration::from_millis(1), Duration::ZERO, 10_000),
            1_000
        );
    }

    #[test]
    fn timeouts_shrink_at_once() {
        assert_eq!(after_timeout(10_000, 1_000), (7_500, 750));
        assert_eq!(after_timeout(1_000, 1_000), (1_000, 750));
        assert_eq!(after_timeout(500, 100), (500, 75));
        assert_eq!(after_timeout(1, 1), (1, 1));
    }

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
