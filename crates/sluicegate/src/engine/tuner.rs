//! The sub-batch tuner of one migration a loop works: the size each sub-batch runs with,
//! aimed at the migration's target time ([`optimizer::next_sub_batch_size`]), a floor where a
//! fixed cost makes shrinking pointless, and what of it goes to the migration's log.
//!
//! A statement's fixed cost (a join that scans a parent table, a trigger) would drive a
//! 100 ms target down to one key a sub-batch, each still taking the fixed cost. The tuner
//! therefore watches its shrinks: one that saves much less than a proportional cost would
//! have is evidence of a fixed cost, and the size it shrank from becomes a floor. Sub-batch
//! times are noisy, so a shrink only counts when the saving it should have made stands well
//! clear of the run-to-run spread the tuner measures between sub-batches of one size; and a
//! floor is tested again now and then (one sub-batch below it), and dropped when that
//! sub-batch saves what a cost per key would.

use std::time::Duration;

use crate::optimizer;

/// The smallest run-to-run spread assumed, as a share of a sub-batch's time: a shrink must
/// promise to save more than [`NOISE_MARGIN`] times this (or the spread measured, if larger)
/// before its result says anything.
const MIN_SPREAD: f64 = 0.1;
/// How many spreads the saving a shrink should make must exceed to count as evidence.
const NOISE_MARGIN: f64 = 3.0;
/// Sub-batches held up by a floor (the tuner wanting smaller) before it tests the floor.
const TEST_FLOOR_AFTER: u32 = 20;

/// A migration's sub-batch tuner (see the module doc).
#[derive(Debug, Clone)]
pub struct SubBatchTuner {
    /// The size the next sub-batch runs with, once one ran under this tuner.
    size: Option<i64>,
    /// The previous sub-batch: its size and milliseconds.
    last: Option<(i64, f64)>,
    /// Never below this (1 until a fixed cost is found).
    floor: i64,
    /// The run-to-run spread between sub-batches of one size, as a share of their time
    /// (smoothed; `None` before two such sub-batches ran).
    spread: Option<f64>,
    /// Sub-batches in a row the floor held the size up.
    held_up: u32,
    /// While a floor is tested: the floor, restored unless the test disproves it.
    testing: Option<i64>,
    /// What changed about the floor since the last log row, for it.
    news: Option<String>,
    /// The sub-batch size last written to the migration's log.
    logged: i64,
    /// The milliseconds of the current job's sub-batches, for its log row.
    job_ms: Vec<f64>,
}

impl SubBatchTuner {
    /// A tuner for a migration whose stored sub-batch size is `stored`.
    pub fn new(stored: i64) -> Self {
        Self {
            size: None,
            last: None,
            floor: 1,
            spread: None,
            held_up: 0,
            testing: None,
            news: None,
            logged: stored,
            job_ms: Vec::new(),
        }
    }

    /// The size the migration's next job starts with: the tuned one, or `stored` (the
    /// migration's row) before any sub-batch ran here.
    pub fn size_or(&self, stored: i64) -> i64 {
        self.size.unwrap_or(stored).max(1)
    }

    /// The stored size was changed by someone else (an operator's `set`, the shrink after a
    /// timeout): start from it, and take it as logged.
    pub fn adopt(&mut self, stored: i64) {
        self.size = Some(stored.max(1));
        self.logged = stored;
        self.last = None;
    }

    /// The next job starts at `size` (a timeout shrank it).
    pub fn adopt_size(&mut self, size: i64) {
        self.size = Some(size.max(1));
    }

    /// The floor it keeps.
    #[cfg(test)]
    pub fn floor(&self) -> i64 {
        self.testing.unwrap_or(self.floor)
    }

    /// A job starts: its sub-batches' times are collected afresh for its log row.
    pub fn job_started(&mut self) {
        self.job_ms.clear();
    }

    /// The next size after a sub-batch of `current` keys took `took`, aiming at `target`,
    /// never above `ceiling`.
    pub fn next(&mut self, current: i64, took: Duration, target: Duration, ceiling: i64) -> i64 {
        let ms = took.as_secs_f64() * 1000.0;
        self.job_ms.push(ms);
        if let Some((previous, previous_ms)) = self.last {
            self.learn(previous, previous_ms, current, ms);
        }
        self.last = Some((current, ms));
        let wanted = optimizer::next_sub_batch_size(current, took, target, ceiling);
        let floor = self.floor.min(ceiling.max(1));
        if wanted < floor && self.testing.is_none() {
            self.held_up += 1;
            if self.held_up >= TEST_FLOOR_AFTER {
                // Test the floor: one sub-batch at half of it.
                self.held_up = 0;
                self.testing = Some(self.floor);
                self.floor = (self.floor / 2).max(1);
            }
        } else if wanted >= floor {
            self.held_up = 0;
        }
        let next = wanted.max(self.floor.min(ceiling.max(1)));
        self.size = Some(next);
        next
    }

    /// What a sub-batch of `current` keys taking `ms`, after one of `previous` keys taking
    /// `previous_ms`, says about the spread and a fixed cost.
    fn learn(&mut self, previous: i64, previous_ms: f64, current: i64, ms: f64) {
        if current == previous {
            let deviation = (ms - previous_ms).abs() / ms.max(previous_ms).max(1.0);
            self.spread = Some(match self.spread {
                Some(s) => 0.8 * s + 0.2 * deviation,
                None => deviation,
            });
        }
        if current >= previous || previous_ms <= 0.0 {
            return;
        }
        let would_save = previous_ms * (1.0 - current as f64 / previous as f64);
        let saved = previous_ms - ms;
        let noise = self.spread.unwrap_or(0.0).max(MIN_SPREAD) * previous_ms;
        if would_save < NOISE_MARGIN * noise {
            // A shrink this small cannot tell a fixed cost from noise (a floor under test
            // stands).
            if let Some(floor) = self.testing.take() {
                self.floor = floor;
            }
            return;
        }
        let fixed = saved < would_save / 2.0;
        match self.testing.take() {
            Some(floor) if fixed => {
                self.floor = floor;
                self.news = Some(format!(
                    "the fixed cost is still there: a sub-batch of {current} keys took {ms:.0} ms \
                     against {previous_ms:.0} ms at {previous}, so sub-batches stay at {floor} keys or more"
                ));
            }
            Some(floor) => {
                self.floor = 1;
                self.news = Some(format!(
                    "the fixed cost is gone: a sub-batch of {current} keys took {ms:.0} ms against \
                     {previous_ms:.0} ms at {previous}, so the floor of {floor} keys is dropped"
                ));
            }
            None if fixed && previous > self.floor => {
                self.floor = previous;
                self.held_up = 0;
                self.news = Some(format!(
                    "a sub-batch of {current} keys took {ms:.0} ms against {previous_ms:.0} ms at \
                     {previous} (a proportional cost would have saved {would_save:.0} ms; sub-batches \
                     vary by {:.0}%): a fixed cost dominates, so sub-batches stay at {previous} keys or more",
                    self.spread.unwrap_or(0.0).max(MIN_SPREAD) * 100.0
                ));
            }
            None => {}
        }
    }

    /// The reason of a `resize` row after a job that ended at `tuned` keys a sub-batch, if
    /// there is one to write: news of the floor, or a size a factor of two or more from the
    /// one last logged, moved the way the job's median sub-batch says (never a growth while
    /// too slow, nor a shrink while fast). The row is then taken as written.
    pub fn log_row(&mut self, job_id: i64, tuned: i64, target_ms: i64) -> Option<String> {
        let logged = self.logged;
        let median = median(&self.job_ms);
        let target = target_ms as f64;
        let sizes = if tuned == logged {
            format!("sub-batch size stays {tuned}")
        } else {
            format!("sub-batch size {logged} -> {tuned}")
        };
        let reason = match self.news.take() {
            Some(news) => format!("tuner: {sizes}: {news}"),
            None if tuned >= 2 * logged && median < target => format!(
                "tuner: {sizes}: job {job_id}'s sub-batches took {median:.0} ms (median) against the {target_ms} ms target"
            ),
            None if 2 * tuned <= logged && median > target => format!(
                "tuner: {sizes}: job {job_id}'s sub-batches took {median:.0} ms (median) against the {target_ms} ms target"
            ),
            None => return None,
        };
        self.logged = tuned;
        Some(reason)
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_real_fixed_cost_sets_a_floor() {
        // 200 ms whatever the size: the first shrink saves nothing, the floor is found.
        let mut t = SubBatchTuner::new(1_000);
        assert_eq!(t.next(1_000, ms(200), TARGET, 10_000), 500);
        assert_eq!(t.next(500, ms(199), TARGET, 10_000), 1_000);
        assert_eq!(t.floor(), 1_000);
        let row = t.log_row(1, 1_000, 100).expect("a row");
        assert!(row.contains("a fixed cost dominates"), "{row}");
        assert!(
            row.starts_with("tuner: sub-batch size stays 1000: "),
            "{row}"
        );
        assert_eq!(t.next(1_000, ms(201), TARGET, 10_000), 1_000);
        assert_eq!(t.log_row(2, 1_000, 100), None, "nothing new");
        // A cost per key: shrinking pays, no floor.
        let mut t = SubBatchTuner::new(1_000);
        assert_eq!(t.next(1_000, ms(400), TARGET, 10_000), 500);
        assert_eq!(t.next(500, ms(200), TARGET, 10_000), 250);
        assert_eq!(t.next(250, ms(100), TARGET, 10_000), 250);
        assert_eq!(t.floor(), 1);
    }

    #[test]
    fn noise_sets_no_floor() {
        // The rows of the issue: a small shrink that came out a little slower.
        let mut t = SubBatchTuner::new(16_487);
        t.next(16_487, ms(129), TARGET, 1_000_000);
        t.next(12_768, ms(137), TARGET, 1_000_000);
        assert_eq!(t.floor(), 1);
        // Sub-batches of one size that vary by half: a halving that saved a third proves
        // nothing either.
        let mut t = SubBatchTuner::new(13_775);
        for took in [170, 275, 180, 290, 175, 300] {
            t.next(13_775, ms(took), TARGET, 1_000_000);
        }
        t.next(6_888, ms(264), TARGET, 1_000_000);
        assert_eq!(t.floor(), 1, "{t:?}");
        assert_eq!(t.news, None);
    }

    #[test]
    fn a_floor_is_tested_and_dropped_when_disproved() {
        let mut t = SubBatchTuner::new(1_000);
        t.next(1_000, ms(200), TARGET, 10_000);
        t.next(500, ms(200), TARGET, 10_000);
        assert_eq!(t.floor(), 1_000);
        t.log_row(1, 1_000, 100);
        // The fixed cost goes away; the cost is now per key, 0.3 ms a key. Held up by the
        // floor for a while, the tuner then tries half of it.
        let (mut size, mut held) = (1_000, 0);
        while size == 1_000 {
            size = t.next(size, ms(300), TARGET, 10_000);
            held += 1;
            assert!(held <= TEST_FLOOR_AFTER, "never tested");
        }
        assert_eq!(size, 500, "the floor is tested");
        // Half the keys, half the time: the floor goes.
        let next = t.next(500, ms(150), TARGET, 10_000);
        assert_eq!(t.floor(), 1);
        assert!(next < 500, "{next}");
        let row = t.log_row(2, next, 100).expect("a row");
        assert!(row.contains("the fixed cost is gone"), "{row}");
        // A floor that holds is kept after its test.
        let mut t = SubBatchTuner::new(1_000);
        t.next(1_000, ms(200), TARGET, 10_000);
        t.next(500, ms(200), TARGET, 10_000);
        let mut size = 1_000;
        while size == 1_000 {
            size = t.next(size, ms(200), TARGET, 10_000);
        }
        assert_eq!(size, 500);
        assert_eq!(t.next(500, ms(200), TARGET, 10_000), 1_000);
        assert_eq!(t.floor(), 1_000);
    }

    #[test]
    fn rows_say_something_and_agree_with_the_times() {
        let mut t = SubBatchTuner::new(100);
        // 100 -> 100: no row.
        t.next(100, ms(100), TARGET, 10_000);
        assert_eq!(t.log_row(1, 100, 100), None);
        // Grown fourfold on fast sub-batches: a row, saying they were fast.
        t.job_started();
        for (size, took) in [(100, 20), (150, 30), (225, 45)] {
            t.next(size, ms(took), TARGET, 10_000);
        }
        let row = t.log_row(2, 400, 100).expect("a row");
        assert_eq!(
            row,
            "tuner: sub-batch size 100 -> 400: job 2's sub-batches took 30 ms (median) against the 100 ms target"
        );
        // Grown, yet the job's sub-batches were slow (it slowed down at its end): no row
        // that reads as growing while too slow.
        t.job_started();
        for took in [300, 250, 40] {
            t.next(400, ms(took), TARGET, 10_000);
        }
        assert_eq!(t.log_row(3, 800, 100), None);
    }
}
