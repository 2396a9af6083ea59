//! The duration estimate of a migration, as pure arithmetic: trial sub-batches (rolled back)
//! measured at a few positions of the key range are fitted to a cost per sub-batch and a cost
//! per key, so that one slow sample (a cold cache, a plan that changes along the range) moves
//! the estimate by its own share at most and never multiplies it; then the worker's own rules
//! ([`crate::optimizer`]: jobs grown ×4 after every few jobs at full speed, GitLab's rule at
//! an interval, sub-batches tuned ×1.5 a step toward their target time) are played out over
//! the keys to walk, job by job, sub-batch by sub-batch. The client measures; this module only
//! computes, so that every rule of the model has a unit test.

use std::time::Duration;

use crate::optimizer;

/// One trial sub-batch: where it ran, how many keys it was asked for, what it touched and how
/// long it took (begin, walk, statement, rollback).
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// Its position in the key range: 0 the start, then further along.
    pub position: usize,
    /// Where it started, as text (for the dry run's report): a key, or `> key` after one.
    pub from: String,
    /// Keys it was asked for (the sub-batch size).
    pub keys: i64,
    /// Rows it touched before it was rolled back.
    pub rows: u64,
    /// How long it took.
    pub time: Duration,
    /// A warm-up: run first at its position and size, then discarded from the fit (its time
    /// holds the cold cache, the first plan, the connection's first statement).
    pub warm_up: bool,
}

/// What a sub-batch costs: a fixed part (its transaction, walk, plan, round trips) and a part
/// per key, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costs {
    /// Seconds per sub-batch, whatever its size.
    pub fixed: f64,
    /// Seconds per key.
    pub per_key: f64,
}

impl Costs {
    /// The time of a sub-batch of `keys` keys.
    pub fn sub_batch(&self, keys: f64) -> f64 {
        self.fixed + self.per_key * keys
    }
}

/// The costs the trials say, at the median and at the extremes of their positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fitted {
    /// The median fixed cost with the median cost per key: the estimate.
    pub median: Costs,
    /// The cheapest position's cost per key (same fixed cost): the low end of the range.
    pub low: Costs,
    /// The dearest position's cost per key: the high end.
    pub high: Costs,
    /// Rows touched per key asked for, the median over the trials (the optimizer weighs jobs
    /// by their rows).
    pub rows_per_key: f64,
}

/// The rows a sub-batch asked for `keys` covers when each key value has `group` rows and it
/// starts at a value's first row (the one before ended with a whole value): whole values.
pub fn covered(keys: i64, group: f64) -> f64 {
    if group <= 1.0 {
        return keys as f64;
    }
    (keys as f64 / group).ceil().max(1.0) * group
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(match n % 2 {
        1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    })
}

/// Fits the costs to `trials` (warm-ups left out). At each position, the median time of each
/// size; two sizes part the fixed cost from the cost per key (the line through them), one
/// size alone is all cost per key. The fixed cost kept is the median over the positions, so
/// a cold or unlucky position cannot charge its delay to every sub-batch; the cost per key is
/// the median too, with the cheapest and dearest positions as the range. `None` without a
/// measured trial.
pub fn fit(trials: &[Trial]) -> Option<Fitted> {
    let measured: Vec<&Trial> = trials.iter().filter(|t| !t.warm_up && t.keys > 0).collect();
    let mut positions: Vec<usize> = measured.iter().map(|t| t.position).collect();
    positions.sort_unstable();
    positions.dedup();
    let (mut fixed, mut per_key) = (Vec::new(), Vec::new());
    for p in positions {
        let mut sizes: Vec<i64> = measured
            .iter()
            .filter(|t| t.position == p)
            .map(|t| t.keys)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        let time_of = |size: i64| {
            let times: Vec<f64> = measured
                .iter()
                .filter(|t| t.position == p && t.keys == size)
                .map(|t| t.time.as_secs_f64())
                .collect();
            median(&times).unwrap_or(0.0)
        };
        let (small, large) = (sizes[0], *sizes.last().expect("one size at least"));
        let (ts, tl) = (time_of(small), time_of(large));
        let c = if large > small {
            // The line through both; never steeper than all-per-key nor flatter than a tenth
            // of it (noise can put the small one above the large one).
            let slope = ((tl - ts) / (large - small) as f64)
                .clamp(tl / large as f64 / 10.0, tl / large as f64);
            Costs {
                fixed: (ts - slope * small as f64).max(0.0),
                per_key: slope,
            }
        } else {
            Costs {
                fixed: 0.0,
                per_key: tl / large as f64,
            }
        };
        fixed.push(c.fixed);
        per_key.push(c.per_key);
    }
    let fixed_median = median(&fixed)?;
    let per_key_median = median(&per_key)?;
    let lowest = per_key.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = per_key.iter().copied().fold(0.0, f64::max);
    let rows_per_key = median(
        &measured
            .iter()
            .map(|t| t.rows as f64 / t.keys as f64)
            .collect::<Vec<_>>(),
    )
    .unwrap_or(1.0);
    let at = |per_key| Costs {
        fixed: fixed_median,
        per_key,
    };
    Some(Fitted {
        median: at(per_key_median),
        low: at(lowest),
        high: at(highest),
        rows_per_key,
    })
}

/// What a migration walks and how the worker is set to walk it.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Keys to walk, in the units a sub-batch size counts (rows, on a non-unique key).
    pub keys: f64,
    /// Rows of one key value (1 on a unique key): a sub-batch covers every row of its last
    /// value, so it covers [`covered`] rows.
    pub rows_per_key_value: f64,
    /// Rows touched per key (for the optimizer's weights and its dense-batch cap).
    pub rows_per_key: f64,
    /// The batch size jobs start at.
    pub batch_size: i64,
    /// The sub-batch size the first sub-batch runs at.
    pub sub_batch_size: i64,
    /// The optimizer's ceiling.
    pub max_batch_size: Option<i64>,
    /// An explicit sub-batch size: the tuner's ceiling.
    pub sub_batch_ceiling: Option<i64>,
    /// The tuner's target per sub-batch (zero: sizes fixed).
    pub target_sub_batch: Duration,
    /// Pause between a job's sub-batches.
    pub pause: Duration,
    /// Minimum time between job starts (zero: full speed).
    pub interval: Duration,
}

/// What the worker adds to the trials' costs: per sub-batch, the job's cursor written and the
/// commit (a trial rolls back); per job, its end and the next one's start, and the optimizer's
/// look at recent jobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overheads {
    /// Seconds per sub-batch.
    pub sub_batch: f64,
    /// Seconds per job.
    pub job: f64,
}

/// What playing a workload out came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Simulated {
    /// Its duration, for one loop.
    pub duration: Duration,
    /// Jobs run.
    pub jobs: i64,
    /// Sub-batches run.
    pub sub_batches: i64,
    /// The batch size jobs ended at.
    pub final_batch_size: i64,
    /// The sub-batch size the tuner ended at.
    pub final_sub_batch_size: i64,
}

/// At most this many steps are played one by one; the rest (steady jobs) are multiplied.
const MAX_STEPS: u64 = 2_000_000;

/// Plays the worker's rules out over `w` at `costs` plus `over`: each job walks
/// `min(batch, keys left)` keys in sub-batches sized by [`optimizer::next_sub_batch_size`]
/// (carried from job to job, as the worker carries them), a sub-batch at the job's whole
/// batch or more running its rest at once; a shrink that would save less than a proportional
/// cost keeps the size it shrank from as a floor (the tuner's fixed-cost floor); jobs start
/// no more often than the interval; the batch grows as [`optimizer`] grows it (at full speed,
/// looked at after every [`optimizer::FULL_SPEED_SAMPLE_JOBS`] jobs). Once jobs repeat and
/// the optimizer would keep them, the rest are counted at once.
pub fn simulate(w: &Workload, costs: Costs, over: Overheads) -> Simulated {
    let full_speed = w.interval.is_zero();
    let target = w.target_sub_batch;
    let interval = w.interval.as_secs_f64();
    let pause = w.pause.as_secs_f64();
    let mut left = w.keys.max(0.0).round();
    let mut batch = w.batch_size.max(1);
    let mut sub = w.sub_batch_size.clamp(1, batch);
    let mut floor = 1_i64;
    let (mut total, mut jobs, mut sub_batches, mut steps) = (0.0_f64, 0_i64, 0_i64, 0_u64);
    let mut recent: Vec<optimizer::JobSample> = Vec::new();
    let mut since_look = 0_usize;
    let mut previous: Option<(f64, i64, f64)> = None;
    let group = w.rows_per_key_value.max(1.0);
    while left > 0.0 {
        let job_keys = covered(batch, group).min(left);
        let most = batch.min(w.sub_batch_ceiling.unwrap_or(i64::MAX)).max(1);
        let start_sub = sub;
        let mut inside = job_keys;
        let mut took_job = over.job;
        while inside > 0.0 && steps < MAX_STEPS {
            steps += 1;
            let keys = if sub >= batch {
                inside
            } else {
                covered(sub, group).min(inside)
            };
            let took = costs.sub_batch(keys) + over.sub_batch;
            let mut next = optimizer::next_sub_batch_size(
                sub,
                Duration::from_secs_f64(took.max(0.0)),
                target,
                most,
            );
            if next < sub && costs.fixed >= costs.per_key * sub as f64 {
                // The tuner finds shrinking saves little against the fixed cost and stops.
                floor = floor.max(sub);
            }
            next = next.max(floor.min(most));
            inside -= keys;
            took_job += took;
            sub_batches += 1;
            if next == sub && keys == covered(sub, group) && sub < batch {
                // Steady: the full sub-batches left in this job cost the same.
                let n = (inside / keys).floor();
                took_job += n * (took + pause);
                sub_batches += n as i64;
                inside -= n * keys;
            }
            if inside > 0.0 {
                took_job += pause;
            }
            sub = next;
        }
        if inside > 0.0 {
            // Out of steps: the rest at the last sub-batch's pace.
            took_job += inside / sub as f64 * (costs.sub_batch(sub as f64) + over.sub_batch);
        }
        total += took_job.max(interval);
        left -= job_keys;
        jobs += 1;
        recent.insert(
            0,
            optimizer::JobSample {
                duration: Duration::from_secs_f64(took_job),
                rows: (job_keys * w.rows_per_key).round() as i64,
            },
        );
        recent.truncate(optimizer::SAMPLE_JOBS);
        let resize = |current: i64, samples: &[optimizer::JobSample]| match full_speed {
            true => optimizer::next_batch_size_at_full_speed(current, samples, w.max_batch_size),
            false => {
                optimizer::next_batch_size_by_rows(current, samples, w.interval, w.max_batch_size)
            }
        };
        let pinned = w.max_batch_size.is_some_and(|max| max <= batch);
        let mut looked = false;
        if full_speed {
            since_look += 1;
            if !pinned && since_look >= optimizer::FULL_SPEED_SAMPLE_JOBS {
                since_look = 0;
                looked = true;
            }
        } else {
            looked = true;
        }
        if looked {
            if let Some(r) = resize(batch, &recent) {
                batch = r.batch_size;
                sub = sub.min(batch);
            }
        }
        // Jobs that repeat, under an optimizer that would keep repeating them: count the
        // rest of the full ones at once.
        let this = (job_keys, start_sub, took_job);
        if previous == Some(this) && sub == start_sub && job_keys == covered(batch, group) {
            let steady = vec![recent[0]; optimizer::SAMPLE_JOBS];
            if pinned || resize(batch, &steady).is_none() {
                let n = (left / job_keys).floor();
                total += n * took_job.max(interval);
                left -= n * job_keys;
                jobs += n as i64;
                sub_batches += n as i64 * (job_keys / covered(sub, group)).ceil() as i64;
            }
        }
        previous = Some(this);
    }
    Simulated {
        duration: Duration::from_secs_f64(total),
        jobs,
        sub_batches,
        final_batch_size: batch,
        final_sub_batch_size: sub,
    }
}

/// The estimate of a migration's duration: one number and the range its positions span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// At the median costs.
    pub duration: Duration,
    /// At the cheapest position's cost per key.
    pub low: Duration,
    /// At the dearest position's cost per key.
    pub high: Duration,
    /// Jobs at the median costs.
    pub jobs: i64,
    /// The costs it was computed from.
    pub costs: Fitted,
    /// Loops that work the migration at once (1 on a plain table: its lease lets one job
    /// run at a time; up to the lanes on a Citus distributed table).
    pub parallel: i64,
}

/// The estimate for `w` from `fitted`, with `parallel` loops at once (their work split
/// evenly: lanes of a distributed table).
pub fn estimate(w: &Workload, fitted: Fitted, over: Overheads, parallel: i64) -> Estimate {
    let parallel = parallel.max(1);
    let share = Workload {
        keys: (w.keys / parallel as f64).ceil(),
        ..w.clone()
    };
    let run = |c: Costs| simulate(&share, c, over);
    let mid = run(fitted.median);
    let (low, high) = (run(fitted.low), run(fitted.high));
    Estimate {
        duration: mid.duration,
        low: low.duration.min(mid.duration),
        high: high.duration.max(mid.duration),
        jobs: mid.jobs * parallel,
        costs: fitted,
        parallel,
    }
}

/// Whether a range is worth showing: its ends differ from the estimate by more than a tenth.
pub fn disagree(e: &Estimate) -> bool {
    let d = e.duration.as_secs_f64();
    e.low.as_secs_f64() < d * 0.9 || e.high.as_secs_f64() > d * 1.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(position: usize, keys: i64, ms: f64) -> Trial {
        Trial {
            position,
            from: String::new(),
            keys,
            rows: keys as u64,
            time: Duration::from_secs_f64(ms / 1000.0),
            warm_up: false,
        }
    }

    fn workload(keys: f64) -> Workload {
        Workload {
            keys,
            rows_per_key: 1.0,
            rows_per_key_value: 1.0,
            batch_size: 1_000,
            sub_batch_size: 100,
            max_batch_size: None,
            sub_batch_ceiling: None,
            target_sub_batch: Duration::from_millis(100),
            pause: Duration::ZERO,
            interval: Duration::ZERO,
        }
    }

    const NONE: Overheads = Overheads {
        sub_batch: 0.0,
        job: 0.0,
    };

    #[test]
    fn two_sizes_part_fixed_from_per_key_cost() {
        // 2 ms + 0.01 ms a key: 100 keys 3 ms, 1,000 keys 12 ms.
        let f = fit(&[trial(0, 100, 3.0), trial(0, 1_000, 12.0)]).unwrap();
        assert!((f.median.fixed - 0.002).abs() < 1e-9, "{f:?}");
        assert!((f.median.per_key - 0.000_01).abs() < 1e-12, "{f:?}");
    }

    #[test]
    fn one_slow_sample_cannot_multiply_the_fixed_cost() {
        // Three positions at 2 ms + 0.01 ms a key; one small trial cold (90 ms).
        let mut trials = Vec::new();
        for p in 0..3 {
            trials.push(trial(p, 100, if p == 0 { 90.0 } else { 3.0 }));
            trials.push(trial(p, 1_000, 12.0));
        }
        let f = fit(&trials).unwrap();
        assert!(
            f.median.fixed < 0.003,
            "the median fixed cost stays ~2 ms: {f:?}"
        );
        let w = workload(2_000_000.0);
        let good = estimate(&w, fit(&trials[2..]).unwrap(), NONE, 1);
        let with_slow = estimate(&w, f, NONE, 1);
        let ratio = with_slow.duration.as_secs_f64() / good.duration.as_secs_f64();
        assert!(ratio < 1.1, "one slow sample moved it {ratio:.2}×");
    }

    #[test]
    fn warm_ups_and_repeats_are_left_out_by_the_median() {
        let mut cold = trial(0, 100, 500.0);
        cold.warm_up = true;
        let f = fit(&[
            cold,
            trial(0, 100, 3.0),
            trial(0, 100, 3.0),
            trial(0, 100, 40.0),
        ])
        .unwrap();
        assert!((f.median.per_key - 0.000_03).abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn positions_that_disagree_give_a_range() {
        // A cheap start (a nested loop), dear later positions (a hash join).
        let trials = [
            trial(0, 100, 1.0),
            trial(0, 1_000, 10.0),
            trial(1, 100, 20.0),
            trial(1, 1_000, 200.0),
            trial(2, 100, 18.0),
            trial(2, 1_000, 180.0),
        ];
        let e = estimate(&workload(200_000.0), fit(&trials).unwrap(), NONE, 1);
        assert!(disagree(&e));
        assert!(e.low < e.duration && e.duration <= e.high, "{e:?}");
        // The median position (180 ms a thousand keys) is the estimate.
        let per_key = e.costs.median.per_key;
        assert!((per_key - 0.000_18).abs() < 1e-9, "{per_key}");
    }

    #[test]
    fn jobs_grow_at_full_speed_toward_a_second() {
        // 0.01 ms a key, no fixed cost: a second is 100,000 keys; jobs start at 1,000 and grow
        // ×4 after every 3 jobs (1,000, 4,000, 16,000, 64,000, then the 0.95 s aim).
        let w = workload(10_000_000.0);
        let c = Costs {
            fixed: 0.0,
            per_key: 0.000_01,
        };
        let s = simulate(&w, c, NONE);
        assert!(
            (90_000..=100_000).contains(&s.final_batch_size),
            "{}",
            s.final_batch_size
        );
        assert!(s.jobs < 200, "{} jobs", s.jobs);
        // Pure per-key cost: 100 s whatever the sizes.
        assert!((s.duration.as_secs_f64() - 100.0).abs() < 0.5, "{s:?}");
    }

    #[test]
    fn fixed_cost_is_paid_per_sub_batch_as_the_tuner_sizes_them() {
        // 5 ms a sub-batch + 0.01 ms a key, tuned toward 100 ms: sub-batches grow from 100
        // to ~9,500 keys, so the fixed cost is a few per cent, not 5 ms every 100 keys.
        let w = workload(2_000_000.0);
        let c = Costs {
            fixed: 0.005,
            per_key: 0.000_01,
        };
        let s = simulate(&w, c, NONE);
        let secs = s.duration.as_secs_f64();
        assert!((20.0..23.0).contains(&secs), "{s:?}");
        // Fixed sizes of 100 keys pay it every 100 keys: 20 s + 100 s.
        let fixed = Workload {
            target_sub_batch: Duration::ZERO,
            ..w
        };
        let s = simulate(&fixed, c, NONE);
        assert!((s.duration.as_secs_f64() - 120.0).abs() < 0.5, "{s:?}");
    }

    #[test]
    fn an_explicit_sub_batch_size_is_a_ceiling() {
        let w = Workload {
            batch_size: 10_000,
            sub_batch_size: 1_000,
            sub_batch_ceiling: Some(1_000),
            ..workload(1_000_000.0)
        };
        let c = Costs {
            fixed: 0.002,
            per_key: 0.000_01,
        };
        let s = simulate(&w, c, NONE);
        assert_eq!(s.final_sub_batch_size, 1_000);
        // Jobs grown to sizes that are not multiples of 1,000 end on a shorter sub-batch.
        assert!((1_000..1_050).contains(&s.sub_batches), "{s:?}");
        assert!((s.duration.as_secs_f64() - 12.0).abs() < 0.2, "{s:?}");
    }

    #[test]
    fn the_interval_paces_jobs() {
        let w = Workload {
            interval: Duration::from_secs(2),
            max_batch_size: Some(1_000),
            ..workload(10_000.0)
        };
        let c = Costs {
            fixed: 0.0,
            per_key: 0.000_01,
        };
        let s = simulate(&w, c, NONE);
        assert_eq!(s.jobs, 10);
        assert!((s.duration.as_secs_f64() - 20.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn parallel_lanes_divide_the_work() {
        let f = fit(&[trial(0, 100, 1.0), trial(0, 1_000, 10.0)]).unwrap();
        let w = workload(1_000_000.0);
        let one = estimate(&w, f, NONE, 1).duration.as_secs_f64();
        let four = estimate(&w, f, NONE, 4).duration.as_secs_f64();
        assert!((one / four - 4.0).abs() < 0.3, "{one} / {four}");
    }

    #[test]
    fn a_non_unique_key_is_walked_by_whole_values() {
        // 500 rows a value, sub-batches fixed at 100 keys: each covers a whole value, so
        // 1,000,000 rows take 2,000 sub-batches, not 10,000.
        let w = Workload {
            rows_per_key_value: 500.0,
            target_sub_batch: Duration::ZERO,
            max_batch_size: Some(1_000),
            ..workload(1_000_000.0)
        };
        let c = Costs {
            fixed: 0.001,
            per_key: 0.000_01,
        };
        let s = simulate(&w, c, NONE);
        assert_eq!(s.sub_batches, 2_000, "{s:?}");
        assert!((s.duration.as_secs_f64() - 12.0).abs() < 0.01, "{s:?}");
        assert_eq!(covered(100, 500.0), 500.0);
        assert_eq!(covered(1_200, 500.0), 1_500.0);
        assert_eq!(covered(100, 1.0), 100.0);
    }

    #[test]
    fn a_fixed_cost_above_the_target_floors_the_sub_batch() {
        // 150 ms a sub-batch: shrinking cannot reach 100 ms; the tuner stops shrinking.
        let w = Workload {
            sub_batch_size: 1_000,
            ..workload(100_000.0)
        };
        let c = Costs {
            fixed: 0.150,
            per_key: 0.000_001,
        };
        let s = simulate(&w, c, NONE);
        assert!(s.final_sub_batch_size >= 500, "{s:?}");
    }
}
