//! A migration of a Citus distributed table, worked lane by lane: each lane is a shard, walked
//! on its own table on the node that holds its placement, one job at a time. Loops spread
//! over the free lanes; a node that is down or unhealthy holds only its own lanes (logged,
//! naming the node) while the others go on; a shard found on another node (a move, a
//! rebalance) is followed, and its job resumes there from the ledger the node keeps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::job::Route;
use super::migration_run::MigrationRun;
use super::next_job::Retaken;
use super::step::{Carry, Stepped};
use super::{JobOutcome, Mode, StepOutcome, WorkerLoop};
use crate::client::MAX_ATTEMPTS;
use crate::error::{Error, Result};
use crate::failure::{Failure, FailureClass};
use crate::health::{self, Signal};
use crate::ident::TableName;
use crate::model::{Job, Lane, Migration};
use crate::status::JobStatus;
use crate::store::{
    JobCreated, JobRange, JobTransitionParams, LaneHoldParams, LedgerCursor, Target,
};

/// A node found healthy is sampled again after this long.
const NODE_HEALTH_EVERY: Duration = Duration::from_secs(1);
/// A node that could not be reached is tried again after this long at most.
const NODE_DOWN_RECHECK: Duration = Duration::from_secs(15);
/// Between claims, the coordinator's health, the jobs to take up again and the shards'
/// placements are looked at again after this long.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What a lane's node said before a job.
enum NodeSays {
    Go(Arc<dyn Target>),
    /// Held (logged); look at the next lane.
    Held,
}

impl WorkerLoop {
    /// One step of migration `m` in lanes: a job of a lane to take up again, or a new range in
    /// a free lane on a healthy node, run on its shard. `None` when there is nothing to do
    /// now (the step then claims as usual).
    pub(super) async fn work_lanes(
        &mut self,
        run: &mut MigrationRun,
        m: Migration,
        claimed: bool,
        mode: Mode,
    ) -> Result<Option<Stepped>> {
        let table = TableName::parse(&m.table_name)?;
        // Between claims, what does not change from one lane's job to the next is looked at
        // once a second: the coordinator's health and the jobs to take up again.
        let look = claimed || run.lanes_looked.is_none_or(|t| t.elapsed() >= LOOK_EVERY);
        if look {
            run.lanes_looked = Some(Instant::now());
        }
        if mode == Mode::Normal && look {
            // The coordinator's own health first, as for any migration.
            let sample = self.health_sample(&m, &table).await?;
            if let Some(said) = self.check_health(run, &m, sample).await? {
                return Ok(Some((said, Carry::Nothing)));
            }
        }
        let lanes = self.lanes_placed(run, &m, &table, false).await?;
        let store = self.sluicegate().store.clone();
        let retriable = match look {
            true => store.job_find_retriable(m.id, MAX_ATTEMPTS).await?,
            false => None,
        };
        if let Some(job) = retriable {
            let lane = job.lane.and_then(|n| lanes.iter().find(|l| l.lane == n));
            if let Some(lane) = lane {
                if let NodeSays::Go(target) = self.node_says(run, &m, &lanes, lane, mode).await? {
                    if let Retaken::Running(job) = self.retake(job).await? {
                        return self
                            .run_lane_job(run, m, *job, (lane.clone(), target), mode)
                            .await
                            .map(Some);
                    }
                }
            }
        }
        let now = Utc::now();
        let count = lanes.len().max(1);
        run.lane_turn = (run.lane_turn + 1) % count;
        for i in 0..lanes.len() {
            let lane = &lanes[(run.lane_turn + i) % count];
            let Some(start) = lane.next_start.clone() else {
                continue;
            };
            if lane.running_job.is_some() || lane.is_held(now) {
                continue;
            }
            let NodeSays::Go(target) = self.node_says(run, &m, &lanes, lane, mode).await? else {
                continue;
            };
            let shard = TableName::parse(&lane.relation)?;
            let found = target
                .range_next(
                    &shard,
                    &m.key,
                    m.scope.as_deref(),
                    &start,
                    &m.max_value,
                    m.batch_size,
                    m.statement_timeout_ms,
                )
                .await;
            let (min, max) = match found {
                Ok(Some(range)) => range,
                Ok(None) => {
                    store.lane_exhaust(m.id, Some((lane.lane, &start))).await?;
                    continue;
                }
                Err(Error::Database { source, context }) if node_down(&source) => {
                    let why = format!("{context}: {source}");
                    self.hold_node(&m, &lanes, &lane.node, &why, true).await?;
                    continue;
                }
                // The shard's table gone from the node the catalog last named (a move, its
                // old placement dropped): read the catalog again; gone for good, it is the
                // migration's error.
                Err(Error::Database { source, context })
                    if Failure::from_sqlx(&source).class == "UndefinedTable" =>
                {
                    let placed = self.lanes_placed(run, &m, &table, true).await?;
                    if placed
                        .iter()
                        .any(|l| l.lane == lane.lane && l.node != lane.node)
                    {
                        continue;
                    }
                    return Err(Error::Database { source, context });
                }
                Err(e) => return Err(e),
            };
            let mut params = self.job_create_params(
                &m,
                start,
                JobRange::Given { min, max },
                run.sub_batch_size(&m),
            );
            params.lane = Some(lane.lane);
            if let JobCreated::Created(job, then) = store.job_create(&params).await? {
                if then.is_none() {
                    // Its lane is handed out: maybe the migration's whole range with it.
                    store.lane_exhaust(m.id, None).await?;
                }
                return self
                    .run_lane_job(run, m, *job, (lane.clone(), target), mode)
                    .await
                    .map(Some);
            }
        }
        if m.next_start.is_some() && lanes.iter().all(|l| l.next_start.is_none()) {
            store.lane_exhaust(m.id, None).await?;
        }
        if claimed {
            let outcome = self.complete_if_done(&m).await?;
            return Ok(Some((outcome, Carry::Nothing)));
        }
        Ok(None)
    }

    /// The migration's lanes, each where Citus's catalog says its shard is now (read at most
    /// once a second unless `fresh`): a lane whose shard moved is recorded on its new node (a
    /// `lane_move` row).
    async fn lanes_placed(
        &self,
        run: &mut MigrationRun,
        m: &Migration,
        table: &TableName,
        fresh: bool,
    ) -> Result<Vec<Lane>> {
        let store = &self.sluicegate().store;
        let mut lanes = store.lane_list(m.id).await?;
        let due = fresh
            || run
                .placements
                .as_ref()
                .is_none_or(|(read, _)| read.elapsed() >= LOOK_EVERY);
        if due {
            let Some((_, placed)) = self.sluicegate().target.citus_table(table).await? else {
                return Err(Error::InvalidSettings(format!(
                    "{} is no longer a Citus distributed table",
                    table.quoted()
                )));
            };
            run.placements = Some((Instant::now(), placed));
        }
        let now = run
            .placements
            .as_ref()
            .map(|(_, p)| p.as_slice())
            .unwrap_or_default();
        for lane in &mut lanes {
            let Some(placed) = now.iter().find(|p| p.shard_id == lane.shard_id) else {
                continue;
            };
            if placed.node != lane.node {
                let reason = format!(
                    "lane {} (shard {}, {}): placement moved from {} to {}",
                    lane.lane, lane.shard_id, lane.relation, lane.node, placed.node
                );
                store
                    .lane_move(m.id, lane.lane, &placed.node, &reason, &self.name)
                    .await?;
                tracing::info!(migration = m.id, %reason, "lane moved");
                lane.node = placed.node.clone();
            }
        }
        Ok(lanes)
    }

    /// Whether a job may start in `lane` now, by its node's health: a node that cannot be
    /// reached, or one of whose indicators says stop, holds its lanes (one `lane_hold` row
    /// naming the node); healthy again, they are released (a `lane_release` row). Finalizing
    /// ignores health, as for any migration, but not a node that is down.
    async fn node_says(
        &self,
        run: &mut MigrationRun,
        m: &Migration,
        lanes: &[Lane],
        lane: &Lane,
        mode: Mode,
    ) -> Result<NodeSays> {
        let target = self.sluicegate().node_target(&lane.node).await?;
        let fresh = run
            .nodes_healthy
            .get(&lane.node)
            .is_some_and(|t| t.elapsed() < NODE_HEALTH_EVERY);
        if fresh {
            return Ok(NodeSays::Go(target));
        }
        let shard = TableName::parse(&lane.relation)?;
        let sample = match target
            .health_sample(&shard, m.health.probe.as_deref())
            .await
        {
            Ok(sample) => sample,
            Err(Error::Database { source, context }) if node_down(&source) => {
                let why = format!("{context}: {source}");
                self.hold_node(m, lanes, &lane.node, &why, true).await?;
                return Ok(NodeSays::Held);
            }
            Err(e) => return Err(e),
        };
        if mode == Mode::Normal {
            let holding = lane.on_hold_until.is_some();
            let readings = health::evaluate_while(&sample, &m.health, None, None, holding);
            if let Some(stop) = readings.iter().find(|r| r.signal == Signal::Stop) {
                let why = format!("{}: {} ({})", stop.indicator, stop.reading, stop.threshold);
                self.hold_node(m, lanes, &lane.node, &why, false).await?;
                return Ok(NodeSays::Held);
            }
        }
        run.nodes_healthy.insert(lane.node.clone(), Instant::now());
        if lanes
            .iter()
            .any(|l| l.node == lane.node && l.on_hold_until.is_some())
        {
            let params = LaneHoldParams {
                migration_id: m.id,
                lanes: lanes_of(lanes, &lane.node),
                until: None,
                reason: format!("node {}: reachable and healthy again", lane.node),
                actor: self.name.clone(),
            };
            if self.sluicegate().store.lane_hold(&params).await? > 0 {
                tracing::info!(migration = m.id, node = %lane.node, "lanes of node released");
            }
        }
        Ok(NodeSays::Go(target))
    }

    /// Holds the lanes on `node` until the migration's next health re-check.
    async fn hold_node(
        &self,
        m: &Migration,
        lanes: &[Lane],
        node: &str,
        why: &str,
        down: bool,
    ) -> Result<()> {
        let held = lanes_of(lanes, node);
        // A node that is down is tried again sooner than an indicator is re-checked: a
        // restart takes seconds, and nothing is asked of it meanwhile.
        let recheck = match down {
            true => m.health.hold().min(NODE_DOWN_RECHECK),
            false => m.health.hold(),
        };
        let until = Utc::now() + chrono::Duration::from_std(recheck).unwrap_or_default();
        let reason = format!(
            "node {node} ({} lane{}: {}): {why}",
            held.len(),
            if held.len() == 1 { "" } else { "s" },
            lane_list(&held)
        );
        let params = LaneHoldParams {
            migration_id: m.id,
            lanes: held,
            until: Some(until),
            reason: reason.clone(),
            actor: self.name.clone(),
        };
        if self.sluicegate().store.lane_hold(&params).await? > 0 {
            tracing::warn!(migration = m.id, %reason, "lanes held");
        }
        Ok(())
    }

    /// Runs a lane's job on its node: the job first takes its ledger row there (fencing any
    /// earlier run) and resumes from the ledger's cursor, which is ahead of the tracking
    /// row's when a worker died between the two commits; then sub-batch by sub-batch as any
    /// job. A shard that moved or a node that went away hands the job back (no attempt
    /// spent) instead of failing it.
    async fn run_lane_job(
        &mut self,
        run: &mut MigrationRun,
        mut m: Migration,
        mut job: Job,
        (lane, target): (Lane, Arc<dyn Target>),
        mode: Mode,
    ) -> Result<Stepped> {
        let sg = self.sluicegate().clone();
        let shard = TableName::parse(&lane.relation)?;
        let ledger = LedgerCursor {
            schema: sg.schema().to_owned(),
            tracking: format!("{}/{}", sg.target_identity().id, sg.schema()),
            job_id: job.id,
            // Its run's start: later runs start later (attempts start over when a job is
            // handed back, so they cannot fence).
            token: job
                .started_at
                .map(|t| t.timestamp_micros())
                .ok_or_else(|| Error::Corrupt(format!("running job {} has no start", job.id)))?,
        };
        self.last_migration = Some(m.id);
        let fenced = match target.ledger_fence(sg.schema(), &ledger).await {
            Ok(fenced) => fenced,
            Err(Error::Database { source, context }) if node_down(&source) => {
                let why = format!("{context}: {source}");
                let lanes = sg.store.lane_list(m.id).await?;
                self.hold_node(&m, &lanes, &lane.node, &why, true).await?;
                let failure = Failure::new(
                    FailureClass::NodeDown,
                    format!("node {} of lane {}: {why}", lane.node, lane.lane),
                );
                let job = self.give_back(job, failure).await?;
                return Ok(ran(&m, job, JobOutcome::Stopped));
            }
            Err(e) => return Err(e),
        };
        let Some(cursor) = fenced else {
            return Ok(ran(&m, job, JobOutcome::Lost));
        };
        if let Some(cursor) = cursor.filter(|c| Some(c) != job.cursor.as_ref()) {
            // The node committed past what was recorded here: its ledger is the truth.
            let recorded = sg
                .store
                .job_checkpoint(job.id, job.attempts, &cursor, 0, self.lease())
                .await?;
            if !recorded {
                return Ok(ran(&m, job, JobOutcome::Lost));
            }
            job.cursor = Some(cursor);
        }
        let route = Route::Lane {
            target: target.clone(),
            shard: lane.shard_id,
            ledger,
        };
        let started = Instant::now();
        let done = self.execute_on(run, &m, &shard, job, &route).await?;
        run.job_time = started.elapsed();
        let mut outcome = done.outcome.clone();
        let mut job = done.job;
        match &done.outcome {
            JobOutcome::Failed { failure } if failure.is(FailureClass::ShardMoved) => {
                let table = TableName::parse(&m.table_name)?;
                self.lanes_placed(run, &m, &table, true).await?;
                job = self.requeue(job).await?;
                outcome = JobOutcome::Stopped;
            }
            JobOutcome::Failed { failure } if failure.is_connection_lost() => {
                let lanes = sg.store.lane_list(m.id).await?;
                let why = format!("{}: {}", failure.class, failure.message);
                self.hold_node(&m, &lanes, &lane.node, &why, true).await?;
                job = self.requeue(job).await?;
                outcome = JobOutcome::Stopped;
            }
            JobOutcome::Failed { failure } => {
                self.after_failure(&m, (target.as_ref(), &shard), &job, failure)
                    .await?
            }
            JobOutcome::Succeeded => {
                if mode == Mode::Normal {
                    if let Some(resized) = self.optimize(run, &m).await? {
                        m.batch_size = resized.batch_size;
                        m.sub_batch_size = resized.sub_batch_size;
                    }
                }
                self.log_tuner(run, &m, &job).await?;
            }
            _ => {}
        }
        let go_on = outcome == JobOutcome::Succeeded
            && (mode == Mode::Finalize || m.interval.is_zero())
            && !self.stopping.load(std::sync::atomic::Ordering::Relaxed);
        let (stepped, _) = ran(&m, job, outcome);
        let carry = match go_on {
            true => Carry::Continue {
                migration: Box::new(m),
            },
            false => Carry::Nothing,
        };
        Ok((stepped, carry))
    }

    /// A lane job that failed for its node's sake (the shard moved, the node went away) goes
    /// back to `pending`, its attempts reset, to resume from its cursor.
    async fn requeue(&self, failed: Job) -> Result<Job> {
        if failed.status != JobStatus::Failed {
            return Ok(failed);
        }
        let params = JobTransitionParams::new(&failed, JobStatus::Pending, &self.name)?;
        match self.sluicegate().store.job_transition(&params).await {
            Ok(job) => Ok(job),
            Err(Error::Conflict { .. }) => Ok(failed),
            Err(e) => Err(e),
        }
    }

    /// A running lane job that could not start on its node: recorded failed with `failure`,
    /// then back to `pending`.
    async fn give_back(&self, job: Job, failure: Failure) -> Result<Job> {
        let params = JobTransitionParams::new(&job, JobStatus::Failed, &self.name)?
            .with_failure(Some(failure));
        let failed = match self.sluicegate().store.job_transition(&params).await {
            Ok(job) => job,
            Err(Error::Conflict { .. }) => return Ok(job),
            Err(e) => return Err(e),
        };
        self.requeue(failed).await
    }
}

/// The step's outcome for a lane job, and no carry.
fn ran(m: &Migration, job: Job, outcome: JobOutcome) -> Stepped {
    (
        StepOutcome::Ran {
            migration_id: m.id,
            job: Box::new(job),
            outcome,
        },
        Carry::Nothing,
    )
}

/// The lanes on `node`.
fn lanes_of(lanes: &[Lane], node: &str) -> Vec<i32> {
    lanes
        .iter()
        .filter(|l| l.node == node)
        .map(|l| l.lane)
        .collect()
}

/// `0-3, 7, 9-10`.
fn lane_list(lanes: &[i32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lanes.len() {
        let mut j = i;
        while j + 1 < lanes.len() && lanes[j + 1] == lanes[j] + 1 {
            j += 1;
        }
        parts.push(match j > i {
            true => format!("{}-{}", lanes[i], lanes[j]),
            false => lanes[i].to_string(),
        });
        i = j + 1;
    }
    parts.join(", ")
}

/// Whether an error on a node's connection means the node cannot be reached.
fn node_down(source: &sqlx::Error) -> bool {
    Failure::from_sqlx(source).is_connection_lost()
}

#[cfg(test)]
mod tests {
    use super::lane_list;

    #[test]
    fn lane_lists_read_as_ranges() {
        assert_eq!(lane_list(&[0, 1, 2, 3, 7, 9, 10]), "0-3, 7, 9-10");
        assert_eq!(lane_list(&[5]), "5");
        assert_eq!(lane_list(&[]), "");
    }
}
