//! What a loop knows of one migration it works, beyond the migration's row: created when the
//! loop takes the migration up (a claim, or `finalize`), kept while it runs the migration's
//! jobs, and dropped when it lets the migration go (the migration ended, or the loop has not
//! come back to it for a while: another worker's now, or paused).

use std::time::{Duration, Instant};

use super::prefetch::Prefetch;
use super::tuner::SubBatchTuner;
use crate::health::{LatencyTracker, SlowDown};
use crate::model::Migration;

/// A loop that has not run a migration for this long (or three of its intervals, if longer)
/// lets it go; taken up again, it starts afresh (its sizes come back from the migration's
/// row).
const LET_GO_AFTER: Duration = Duration::from_secs(600);
/// A migration's row is read again at most this often while a loop keeps running it without
/// a new claim, so that an operator's `set` reaches it.
const SETTINGS_EVERY: Duration = Duration::from_secs(1);

/// One migration as a loop works it.
#[derive(Debug)]
pub(super) struct MigrationRun {
    /// The migration.
    pub(super) id: i64,
    /// Its sub-batch sizes, floor and log rows.
    pub(super) tuner: SubBatchTuner,
    /// Its sub-batches' latency, as this loop measured them (`None` before its first job
    /// here: the indicator then says this process measured none).
    pub(super) latency: Option<LatencyTracker>,
    /// The pause this loop keeps between its jobs as a limit nears.
    pub(super) slow_down: SlowDown,
    /// The throttle pause last logged (a row is written only on change).
    pub(super) throttle_ms: i64,
    /// How long its last job here took (the unit of a throttle pause).
    pub(super) job_time: Duration,
    /// What its next job needs, read while the current one runs.
    pub(super) ahead: Option<Prefetch>,
    /// When its row was last read.
    settings_read: Instant,
    /// Its row's sub-batch size when last read: a change is someone else's (an operator's
    /// `set`, the optimizer, a timeout's shrink), and the tuner starts from it.
    stored_sub_batch: i64,
    /// When this loop last ran a job of it, or took it up.
    used: Instant,
    /// How long it is kept unused.
    keep_for: Duration,
    /// For a migration in lanes: when each node (`host:port`) was last found healthy, so
    /// that its health is sampled at most once a second.
    pub(super) nodes_healthy: std::collections::HashMap<String, Instant>,
    /// For a migration in lanes: where this loop's look for a free lane starts, moved on
    /// after each job, so that loops spread over the lanes.
    pub(super) lane_turn: usize,
    /// For a migration in lanes: where Citus's catalog placed its shards, and when it was
    /// read (again every second, and at once after a `ShardMoved`).
    pub(super) placements: Option<(Instant, Vec<crate::model::NewLane>)>,
    /// For a migration in lanes: when the coordinator's health and the jobs to take up again
    /// were last looked at (at most once a second between claims).
    pub(super) lanes_looked: Option<Instant>,
    /// At full speed: the jobs this loop finished since it last looked at the migration's
    /// jobs to grow its batch.
    pub(super) jobs_since_look: usize,
}

impl MigrationRun {
    fn new(m: &Migration) -> Self {
        let mut run = Self::with(m.id, m.sub_batch_size, m.throttle_pause_ms);
        run.keep_for = LET_GO_AFTER.max(m.interval * 3);
        run
    }

    /// A run of migration `id` whose row has `sub_batch_size` and `throttle_ms`.
    pub(super) fn with(id: i64, sub_batch_size: i64, throttle_ms: i64) -> Self {
        let now = Instant::now();
        Self {
            id,
            tuner: SubBatchTuner::new(sub_batch_size),
            latency: None,
            slow_down: SlowDown::default(),
            throttle_ms,
            job_time: Duration::from_millis(100),
            ahead: None,
            settings_read: now,
            stored_sub_batch: sub_batch_size,
            used: now,
            keep_for: LET_GO_AFTER,
            nodes_healthy: Default::default(),
            lane_turn: 0,
            placements: None,
            lanes_looked: None,
            jobs_since_look: 0,
        }
    }

    /// A sub-batch of `keys` keys took `took`.
    pub(super) fn observe_latency(&mut self, took: Duration, keys: i64) {
        if let Some(latency) = &mut self.latency {
            latency.observe(took.as_secs_f64() * 1000.0, keys);
        }
    }

    /// The sub-batch size its next job is created with.
    pub(super) fn sub_batch_size(&self, m: &Migration) -> i64 {
        self.tuner.size_or(m.sub_batch_size).min(m.batch_size)
    }

    /// Whether its row, carried from step to step, is due to be read again.
    pub(super) fn settings_due(&self) -> bool {
        self.settings_read.elapsed() >= SETTINGS_EVERY
    }

    /// `m` was just read from the store.
    pub(super) fn read(&mut self, m: &Migration) {
        self.settings_read = Instant::now();
        if m.sub_batch_size != self.stored_sub_batch {
            self.stored_sub_batch = m.sub_batch_size;
            self.tuner.adopt(m.sub_batch_size);
        }
    }

    /// The tuner's size was written to the row (a `resize` row).
    pub(super) fn stored(&mut self, sub_batch_size: i64) {
        self.stored_sub_batch = sub_batch_size;
    }
}

/// The migrations a loop works, each with its [`MigrationRun`]: usually one; more when one
/// loop alternates between migrations that wait out intervals.
#[derive(Debug, Default)]
pub(super) struct TakenUp {
    runs: Vec<MigrationRun>,
}

impl TakenUp {
    /// The run of `m`, taken out while a step works it (to be put back): the one kept, or a
    /// new one. `fresh` says `m` was just read from the store.
    pub(super) fn take_up(&mut self, m: &Migration, fresh: bool) -> MigrationRun {
        let now = Instant::now();
        self.runs
            .retain(|r| now.duration_since(r.used) < r.keep_for);
        let mut run = match self.runs.iter().position(|r| r.id == m.id) {
            Some(i) => self.runs.swap_remove(i),
            None => return MigrationRun::new(m),
        };
        if fresh {
            run.read(m);
            run.keep_for = LET_GO_AFTER.max(m.interval * 3);
        }
        run.used = now;
        run
    }

    /// Keeps `run` for the migration's next step.
    pub(super) fn put_back(&mut self, run: MigrationRun) {
        self.runs.push(run);
    }

    /// Lets every migration go (the loop stops).
    pub(super) fn let_go_all(&mut self) {
        self.runs.clear();
    }
}
