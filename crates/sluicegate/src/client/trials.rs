//! What a plan measures, and the estimate built on it: the queue-time check (one sub-batch
//! at the start of the range and, for a built-in kind, a larger one, both rolled back), the
//! dry run's sampled trials ([`Sluicegate::measure`]: warm and repeated, at the start, a third
//! and two thirds of the range, within a time budget), the keys and rows of an explicit range
//! counted, and the model of [`crate::estimate`] played out over them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Plan, Sluicegate};
use crate::error::{Error, Result};
use crate::estimate::{self, Overheads, Trial, Workload};
use crate::failure::Failure;
use crate::ident::TableName;
use crate::key::{Key, Lower};
use crate::kind::JobKind;
use crate::model::{CitusTable, NewMigration};
use crate::store::{SubBatchSpec, Target, Timeouts, TriedSubBatch};

/// Per sub-batch, what a trial does not do and the worker does: the job's cursor written and
/// the commit with its WAL flush (0.8–1.7 ms measured on a default PostgreSQL 15 with fsync on,
/// pgbench, one-row transactions committed against rolled back; less in the worker's runs of
/// `scripts/estimate-check` on an idle machine, more on a loaded one).
const SUB_BATCH_COMMIT: Duration = Duration::from_millis(1);
/// Per job: its end and the next one's start, the health read ahead, the optimizer's look.
const JOB_BOOKKEEPING: Duration = Duration::from_millis(3);
/// The dry run adds trials until they took this long (the start's are always run).
const TRIAL_BUDGET: Duration = Duration::from_secs(2);
/// Where along the range the dry run tries, as shares of its keys.
const POSITIONS: [f64; 3] = [0.0, 1.0 / 3.0, 2.0 / 3.0];
/// How many times the dry run tries each size at each position (the median is kept).
const REPEATS: usize = 3;

/// The large trial's size when nothing caps it: far enough above the start (100 keys by
/// default) that the line through both parts a sub-batch's fixed cost from its cost per key.
const LARGE_TRIAL: i64 = 2_000;
/// Statement timeout of the counts and walks a plan makes besides its trials: past it, the
/// plan estimates instead of counting, or tries at fewer positions.
pub(super) const READ_MS: i64 = 1_000;

/// Whether a kind is one of the built-in ones: SQL alone, so trying it again is harmless
/// (a custom kind may count or call out, and is tried once).
pub(super) fn built_in(kind: &str) -> bool {
    matches!(kind, "update" | "delete" | "copy-column" | "sql")
}

/// Whether the rows a kind reports are the rows it changed, known before it runs from its
/// `where` (and scope): not for `sql` (its last statement's rows, whatever they are) nor a
/// custom kind.
pub fn rows_known(kind: &str) -> bool {
    matches!(kind, "update" | "delete" | "copy-column")
}

/// Where a migration's trials run: the table, or a distributed table's first shard on its node.
struct Place {
    target: Arc<dyn Target>,
    table: TableName,
    shard: Option<i64>,
}

impl Plan {
    /// Estimated number of jobs: from the estimate (jobs grow as the optimizer grows them),
    /// else from the keys and the batch size.
    pub fn estimated_jobs(&self) -> Option<i64> {
        // A walk by distinct values counts its batches in values, which the estimate (in
        // keys walked) does not model: the values over the batch size.
        let distinct = self.migration.key.walk().distinct;
        if let (Some(e), false) = (&self.estimate, distinct) {
            return Some(e.jobs);
        }
        let keys = self.walked_keys()?;
        Some((keys + self.migration.batch_size - 1) / self.migration.batch_size)
    }

    /// Estimated duration at these settings, as the worker will run them
    /// ([`crate::estimate::simulate`]).
    pub fn estimated_duration(&self) -> Option<Duration> {
        self.estimate.map(|e| e.duration)
    }

    /// The trials the estimate rests on (warm-ups left out).
    pub fn measured_trials(&self) -> impl Iterator<Item = &Trial> {
        self.trials.iter().filter(|t| !t.warm_up)
    }

    /// Loops that will work the migration at once with `concurrency` loops on it: one on a
    /// plain table (its lease lets one job run at a time), up to the lanes on a Citus
    /// distributed table.
    pub fn parallel_loops(&self, concurrency: i64) -> i64 {
        match self.migration.citus {
            Some(CitusTable::Distributed) => {
                concurrency.clamp(1, self.migration.lanes.len().max(1) as i64)
            }
            _ => 1,
        }
    }

    /// Makes the estimate again from the trials, the keys, the settings and
    /// `self.concurrency` (after any of them was changed).
    pub fn reestimate(&mut self) {
        let m = &self.migration;
        let group = self.rows_per_key_value.max(1.0);
        // A non-unique key's sub-batch covers whole values: fitted per row covered.
        let covered: Vec<Trial> = self
            .trials
            .iter()
            .map(|t| Trial {
                keys: estimate::covered(t.keys, group).round() as i64,
                ..t.clone()
            })
            .collect();
        let Some(fitted) = estimate::fit(&covered) else {
            self.estimate = None;
            return;
        };
        let Some(keys) = m.total_tuple_count else {
            self.estimate = None;
            return;
        };
        let w = Workload {
            keys: keys as f64,
            rows_per_key_value: group,
            rows_per_key: fitted.rows_per_key,
            batch_size: m.batch_size,
            sub_batch_size: m.sub_batch_size,
            max_batch_size: m.max_batch_size,
            sub_batch_ceiling: m.sub_batch_ceiling,
            target_sub_batch: Duration::from_millis(m.target_sub_batch_ms.max(0) as u64),
            pause: Duration::from_millis(m.pause_ms.max(0) as u64),
            interval: m.interval,
        };
        let over = Overheads {
            sub_batch: SUB_BATCH_COMMIT.as_secs_f64(),
            job: JOB_BOOKKEEPING.as_secs_f64(),
        };
        let parallel = self.parallel_loops(self.concurrency);
        self.estimate = Some(estimate::estimate(&w, fitted, over, parallel));
    }
}

impl Sluicegate {
    /// Where `m`'s trials run.
    async fn trial_place(&self, m: &NewMigration) -> Result<Place> {
        match (&m.citus, m.lanes.first()) {
            // A distributed table's trial runs as its jobs will: on one shard, on its node.
            (Some(CitusTable::Distributed), Some(lane)) => Ok(Place {
                target: self.node_target(&lane.node).await?,
                table: TableName::parse(&lane.relation)?,
                shard: Some(lane.shard_id),
            }),
            _ => Ok(Place {
                target: self.target.clone(),
                table: TableName::parse(&m.table_name)?,
                shard: None,
            }),
        }
    }

    /// One trial sub-batch of `size` keys from `from`, rolled back: its rows and time.
    async fn try_once(
        place: &Place,
        m: &NewMigration,
        kind: &dyn JobKind,
        from: &Lower,
        size: i64,
    ) -> std::result::Result<(TriedSubBatch, Duration), Failure> {
        let spec = SubBatchSpec {
            kind,
            table: &place.table,
            key: &m.key,
            scope: m.scope.as_deref(),
            arguments: &m.job_arguments,
            lower: from,
            max: &m.max_value,
            size,
            whole_rest: false,
            dense: false,
            timeouts: Timeouts {
                statement_ms: m.statement_timeout_ms,
                lock_ms: m.lock_timeout_ms,
            },
            key_unique: m.key_unique,
            shard: place.shard,
        };
        let started = Instant::now();
        let tried = place.target.sub_batch_try(spec).await?;
        Ok((tried, started.elapsed()))
    }

    /// The queue-time check of `m`: one sub-batch at the start of its range (its statement
    /// must run), and for a built-in kind a larger one too, both rolled back. An empty range
    /// has nothing to try.
    pub(super) async fn check_trials(&self, m: &NewMigration) -> Result<Vec<Trial>> {
        let Some(start) = m.next_start.clone() else {
            return Ok(Vec::new());
        };
        let kind = self
            .registry
            .get(&m.job_kind)
            .ok_or_else(|| Error::UnknownJobKind(m.job_kind.clone()))?;
        let place = self.trial_place(m).await?;
        let mut trials = Vec::new();
        let small = m.sub_batch_size;
        let (tried, time) = Self::try_once(&place, m, kind.as_ref(), &start, small)
            .await
            .map_err(|failure| Error::InvalidJob {
                kind: m.job_kind.clone(),
                reason: format!(
                    "its statement failed on a trial sub-batch (rolled back): {failure}"
                ),
            })?;
        trials.push(trial(0, &start, small, tried.rows, time));
        if let Some(large) = large_trial(m).filter(|_| built_in(&m.job_kind)) {
            if let Ok((tried, time)) = Self::try_once(&place, m, kind.as_ref(), &start, large).await
            {
                trials.push(trial(0, &start, large, tried.rows, time));
            }
        }
        Ok(trials)
    }

    /// A dry run's measure of `plan`, replacing the queue-time check's: for a built-in kind,
    /// at the start of the range and (a plain table with keys enough) a third and two thirds
    /// along it, a warm-up sub-batch (discarded: a cold cache, a first plan) and then the
    /// small and the large trial [`REPEATS`] times each, all rolled back, each on rows the one before did not touch, until [`TRIAL_BUDGET`] is spent
    /// (the start's always run; twice the budget stops any); on a non-unique key, the rows of
    /// one key value at each position. The estimate is then made for `concurrency` loops. A custom kind keeps
    /// its one trial. Writes nothing.
    pub async fn measure(&self, plan: &mut Plan, concurrency: i64) -> Result<()> {
        if concurrency < 1 {
            return Err(Error::InvalidSettings(format!(
                "--concurrency must be at least 1 (got {concurrency})"
            )));
        }
        plan.concurrency = concurrency;
        let m = plan.migration.clone();
        let (Some(start), true) = (m.next_start.clone(), built_in(&m.job_kind)) else {
            plan.reestimate();
            return Ok(());
        };
        let kind = self
            .registry
            .get(&m.job_kind)
            .ok_or_else(|| Error::UnknownJobKind(m.job_kind.clone()))?;
        let place = self.trial_place(&m).await?;
        let mut sizes = vec![m.sub_batch_size];
        sizes.extend(large_trial(&m));
        let positions = self.positions(&m, &place, &start).await;
        let began = Instant::now();
        let mut trials = Vec::new();
        let mut coverage = Vec::new();
        for (p, at) in positions.iter().enumerate() {
            if p > 0 && began.elapsed() > TRIAL_BUDGET {
                break;
            }
            if !m.key_unique {
                coverage.extend(self.rows_of_a_value(&m, &place, at).await);
            }
            // The warm-up covers the rows the measured trials will: their pages and index
            // read into the cache, as the worker finds them once it has run a while (on a
            // random key too, its pages come back again and again), not as the first
            // statement after a restart does. Then each measured trial from where the one
            // before it ended.
            let span = REPEATS as i64 * sizes.iter().sum::<i64>();
            let mut runs = vec![(span, true)];
            for _ in 0..REPEATS {
                runs.extend(sizes.iter().map(|s| (*s, false)));
            }
            let mut from = at.clone();
            for (size, warm_up) in runs {
                if began.elapsed() > 2 * TRIAL_BUDGET {
                    // Slow statements: what was measured is what there is.
                    break;
                }
                let (tried, time) = Self::try_once(&place, &m, kind.as_ref(), &from, size)
                    .await
                    .map_err(|failure| Error::InvalidJob {
                        kind: m.job_kind.clone(),
                        reason: format!(
                            "its statement failed on a trial sub-batch from {} (rolled back): {failure}",
                            from.key()
                        ),
                    })?;
                let Some((_, last)) = tried.keys else {
                    break;
                };
                let mut t = trial(p, &from, size, tried.rows, time);
                t.warm_up = warm_up;
                trials.push(t);
                if warm_up {
                    continue;
                }
                if last == m.max_value {
                    break;
                }
                from = Lower::After(last);
            }
        }
        plan.trials = trials;
        plan.rows_per_key_value = estimate::median(&coverage).unwrap_or(1.0).max(1.0);
        plan.reestimate();
        Ok(())
    }

    /// The keys the dry run tries from: the range's start, and on a plain table a third and
    /// two thirds along it: by arithmetic on a one-column integer key, else by the walk
    /// (under [`READ_MS`]; a position it cannot reach in time is left out).
    async fn positions(&self, m: &NewMigration, place: &Place, start: &Lower) -> Vec<Lower> {
        let mut positions = vec![start.clone()];
        if place.shard.is_some() {
            return positions;
        }
        let keys = m.total_tuple_count.unwrap_or(0);
        for share in &POSITIONS[1..] {
            let at = match (m.min_value.as_i64(), m.max_value.as_i64()) {
                (Some(lo), Some(hi)) if m.key.is_single_integer() => {
                    let k = lo as f64 + (hi as f64 - lo as f64) * share;
                    Some(Key::int(k as i64))
                }
                _ if keys > 0 => {
                    let size = ((keys as f64 * share) as i64).max(1);
                    self.target
                        .range_next(
                            &place.table,
                            &m.key,
                            m.scope.as_deref(),
                            start,
                            &m.max_value,
                            size,
                            READ_MS,
                        )
                        .await
                        .ok()
                        .flatten()
                        .map(|(_, last)| last)
                }
                _ => None,
            };
            if let Some(k) = at {
                positions.push(Lower::From(k));
            }
        }
        positions
    }

    /// On a non-unique key: the rows of the first key value from `from` (a sub-batch covers
    /// every row of its last value).
    async fn rows_of_a_value(&self, m: &NewMigration, place: &Place, from: &Lower) -> Option<f64> {
        let (first, last) = place
            .target
            .range_next(
                &place.table,
                &m.key,
                m.scope.as_deref(),
                from,
                &m.max_value,
                1,
                READ_MS,
            )
            .await
            .ok()??;
        let count = place
            .target
            .verify_range(
                &place.table,
                &m.key,
                m.scope.as_deref(),
                "true",
                &first,
                &last,
                0,
                READ_MS,
            )
            .await
            .ok()?;
        Some(count.checked as f64)
    }
}

/// The large trial's size: [`LARGE_TRIAL`] or ten times the start, never above an explicit
/// sub-batch size (the tuner's ceiling) nor the optimizer's ceiling. `None` when sizes stay
/// fixed (tuner off) or nothing is larger than the start: its one size is then measured.
fn large_trial(m: &NewMigration) -> Option<i64> {
    if m.target_sub_batch_ms <= 0 {
        return None;
    }
    let large = LARGE_TRIAL
        .max(m.sub_batch_size.saturating_mul(10))
        .min(m.sub_batch_ceiling.unwrap_or(i64::MAX))
        .min(m.max_batch_size.unwrap_or(i64::MAX));
    (large > m.sub_batch_size).then_some(large)
}

fn trial(position: usize, from: &Lower, keys: i64, rows: u64, time: Duration) -> Trial {
    Trial {
        position,
        from: match from {
            Lower::From(k) => k.to_string(),
            Lower::After(k) => format!("> {k}"),
        },
        keys,
        rows,
        time,
        warm_up: false,
    }
}
