//! Running one job: sub-batch by sub-batch under a heartbeat, committing each with the job's
//! cursor or, the last one, with the job's end (and the next job's start, when the health
//! read ahead says go); then recording how it ended. A stopped worker hands the job back at a
//! sub-batch boundary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::migration_run::MigrationRun;
use super::{Backoff, JobOutcome, WorkerLoop, RECORD_RETRY_FOR};
use crate::error::{Error, Result};
use crate::failure::{Failure, FailureClass};
use crate::ident::TableName;
use crate::job_metrics::{SubBatchMetric, Tally};
use crate::key::{Key, Lower};
use crate::kind::JobKind;
use crate::model::{Job, Migration};
use crate::status::JobStatus;
use crate::store::{
    JobCreateParams, JobCursor, JobFinish, JobRange, JobTransitionParams, LedgerCursor,
    PerformedSubBatch, SubBatchCommit, SubBatchCommitted, SubBatchSpec, Target, Timeouts,
};

/// How a job's run ended, for what follows it.
pub(super) struct JobRun {
    pub(super) job: Job,
    pub(super) outcome: JobOutcome,
    /// The next job, started by this job's end, and the migration's next key after it.
    pub(super) started_next: Option<(Job, Option<Lower>)>,
}

impl JobRun {
    fn lost(job: Job) -> Self {
        Self {
            job,
            outcome: JobOutcome::Lost,
            started_next: None,
        }
    }
}

/// Stops a heartbeat task when the job is done.
struct Heartbeat {
    task: JoinHandle<()>,
    lost: Arc<AtomicBool>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a job's sub-batches run and how each commits.
pub(super) enum Route {
    /// On the migration's target: with the job's cursor when it is the tracking database,
    /// else alone, the cursor then recorded here (at-least-once).
    Target,
    /// In a lane: on the shard's own table on the node holding its placement, each
    /// sub-batch under the shard guard and committed with the job's cursor in the node's
    /// ledger (exactly-once), the cursor then recorded here too.
    Lane {
        /// The node's target.
        target: Arc<dyn Target>,
        /// Citus's shard id.
        shard: i64,
        /// The job's ledger row on the node.
        ledger: LedgerCursor,
    },
}

/// One attempt at a job, as it goes.
struct Attempt<'a> {
    m: &'a Migration,
    /// The table its sub-batches write: the migration's, or a lane's shard.
    table: &'a TableName,
    route: &'a Route,
    kind: &'a dyn JobKind,
    job: Job,
    heartbeat: Heartbeat,
    started: Instant,
    tally: Tally,
    /// The size of the next sub-batch.
    size: i64,
    /// The largest sub-batch: the job's batch, and an explicit sub-batch size (a ceiling the
    /// tuner never goes above).
    most: i64,
    target: Duration,
}

/// What one sub-batch came to.
enum SubBatchEnd {
    /// Committed; the next one starts here (`None`: the job's keys are done).
    Next(Option<Lower>),
    /// It failed (rolled back).
    Failed(Failure),
    /// The job is no longer ours.
    Lost,
    /// It was the job's last, committed with the job's end.
    Finished(Box<JobRun>),
}

impl WorkerLoop {
    fn start_heartbeat(&self, job: &Job) -> Heartbeat {
        let lost = Arc::new(AtomicBool::new(false));
        let (store, lease, id, attempts) = (
            self.sluicegate().store.clone(),
            self.lease(),
            job.id,
            job.attempts,
        );
        let flag = lost.clone();
        let task = tokio::spawn(async move {
            let every = (lease / 3).max(Duration::from_millis(50));
            loop {
                tokio::time::sleep(every).await;
                match store.job_heartbeat(id, attempts, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        flag.store(true, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => tracing::warn!(job = id, error = %e, "lease renewal failed"),
                }
            }
        });
        Heartbeat { task, lost }
    }

    /// Runs a job sub-batch by sub-batch, from its cursor on, and records how it ended. When
    /// tracking and target are one database each sub-batch commits the job's cursor, and the
    /// last one the job's end (and, with a go from what was read ahead, the next job's start).
    pub(super) async fn execute(
        &mut self,
        run: &mut MigrationRun,
        m: &Migration,
        table: &TableName,
        job: Job,
    ) -> Result<JobRun> {
        self.execute_on(run, m, table, job, &Route::Target).await
    }

    /// [`Self::execute`] along `route`, on `table` (a lane's shard table for a lane).
    pub(super) async fn execute_on(
        &mut self,
        run: &mut MigrationRun,
        m: &Migration,
        table: &TableName,
        job: Job,
        route: &Route,
    ) -> Result<JobRun> {
        let kind = self
            .sluicegate()
            .registry
            .get(&m.job_kind)
            .ok_or_else(|| Error::UnknownJobKind(m.job_kind.clone()))?;
        let mut lower = Some(match &job.cursor {
            Some(cursor) => Lower::After(cursor.clone()),
            None => Lower::From(job.min_value.clone()),
        })
        .filter(|l| l.is_inclusive() || l.key() != &job.max_value);
        let mut a = Attempt {
            m,
            table,
            route,
            kind: kind.as_ref(),
            heartbeat: self.start_heartbeat(&job),
            started: Instant::now(),
            tally: Tally::default(),
            size: job.sub_batch_size,
            most: job.batch_size.min(m.sub_batch_ceiling.unwrap_or(i64::MAX)),
            target: Duration::from_millis(m.target_sub_batch_ms.max(0) as u64),
            job,
        };
        run.latency
            .get_or_insert_with(Default::default)
            .job_started();
        run.tuner.job_started();
        let failure = loop {
            let Some(from) = lower.take() else {
                break None;
            };
            if a.heartbeat.lost.load(Ordering::Relaxed) {
                return Ok(JobRun::lost(a.job));
            }
            if self.interrupted.load(Ordering::Relaxed) {
                // Stopped between two sub-batches: each committed its cursor, so the job is
                // handed back here and resumes after `from`.
                return self.hand_back(a, &from).await;
            }
            match self.sub_batch(run, &mut a, &from).await? {
                SubBatchEnd::Next(next) => lower = next,
                SubBatchEnd::Failed(failure) => break Some(failure),
                SubBatchEnd::Lost => return Ok(JobRun::lost(a.job)),
                SubBatchEnd::Finished(done) => return Ok(*done),
            }
        };
        self.record_end(run, a, failure).await
    }

    /// Performs and commits one sub-batch from `from`, and tunes the next one's size.
    async fn sub_batch(
        &mut self,
        run: &mut MigrationRun,
        a: &mut Attempt<'_>,
        from: &Lower,
    ) -> Result<SubBatchEnd> {
        let t0 = Instant::now();
        let (m, job) = (a.m, &a.job);
        let spec = SubBatchSpec {
            kind: a.kind,
            table: a.table,
            key: &m.key,
            scope: m.scope.as_deref(),
            arguments: &m.job_arguments,
            lower: from,
            max: &job.max_value,
            size: a.size,
            whole_rest: a.size >= job.batch_size,
            dense: keys_were_dense(job),
            timeouts: Timeouts {
                statement_ms: m.statement_timeout_ms,
                lock_ms: m.lock_timeout_ms,
            },
            key_unique: m.key_unique,
            shard: match a.route {
                Route::Lane { shard, .. } => Some(*shard),
                Route::Target => None,
            },
        };
        let target = match a.route {
            Route::Lane { target, .. } => target,
            Route::Target => &self.sluicegate().target,
        };
        let performed = match target.sub_batch_perform(spec).await {
            Ok(Some(performed)) => performed,
            Ok(None) => return Ok(SubBatchEnd::Next(None)),
            Err(failure) => return Ok(SubBatchEnd::Failed(failure)),
        };
        let (first, end) = performed.keys().clone();
        let rows = performed.rows();
        let apart = match a.route {
            // In the lane's ledger on its node, with the rows; then here.
            Route::Lane { ledger, .. } => Some(SubBatchCommit::Ledger(ledger)),
            // Another database: commit there, then record the cursor here (at-least-once).
            Route::Target if !self.sluicegate().same_database => Some(SubBatchCommit::Alone),
            Route::Target => None,
        };
        if let Some(how) = apart {
            match performed.commit(how).await {
                Ok(SubBatchCommitted::Fenced) => return Ok(SubBatchEnd::Lost),
                Ok(_) => {}
                Err(failure) => return Ok(SubBatchEnd::Failed(failure)),
            }
            let recorded = self
                .sluicegate()
                .store
                .job_checkpoint(job.id, job.attempts, &end, rows as i64, self.lease())
                .await?;
            if !recorded {
                return Ok(SubBatchEnd::Lost);
            }
        } else if end == job.max_value {
            return self.finish_job(run, a, performed, (first, end), t0).await;
        } else {
            match performed
                .commit(SubBatchCommit::Cursor(self.cursor(job)))
                .await
            {
                Ok(SubBatchCommitted::Fenced) => return Ok(SubBatchEnd::Lost),
                Ok(_) => {}
                Err(failure) => return Ok(SubBatchEnd::Failed(failure)),
            }
        }
        let took = t0.elapsed();
        run.observe_latency(took, a.size);
        a.tally
            .record(SubBatchMetric::new(&first, &end, a.size, rows, took));
        a.size = run.tuner.next(a.size, took, a.target, a.most);
        // The walk is bounded by the job's last key: reaching it ends the job.
        let next = (end != a.job.max_value).then_some(Lower::After(end));
        if a.job.pause_ms > 0 && next.is_some() {
            self.pause(Duration::from_millis(a.job.pause_ms as u64))
                .await;
        }
        Ok(SubBatchEnd::Next(next))
    }

    fn cursor(&self, job: &Job) -> JobCursor {
        JobCursor {
            job_id: job.id,
            attempts: job.attempts,
            lease: self.lease(),
        }
    }

    /// Commits the job's last sub-batch with the job's end, and the next job's start when
    /// what was read ahead says go.
    async fn finish_job(
        &mut self,
        run: &mut MigrationRun,
        a: &mut Attempt<'_>,
        performed: Box<dyn PerformedSubBatch>,
        (first, end): (Key, Key),
        t0: Instant,
    ) -> Result<SubBatchEnd> {
        let took = t0.elapsed();
        let mut tally = a.tally.clone();
        let rows = performed.rows();
        tally.record(SubBatchMetric::new(&first, &end, a.size, rows, took));
        let next_size = run.tuner.next(a.size, took, a.target, a.most);
        let then_create = match self.may_start_ahead() {
            true => self.start_ahead(run, a.m, next_size),
            false => None,
        };
        let finish = JobFinish {
            metrics: tally.metrics(a.started.elapsed(), next_size).to_json(),
            sub_batch_size: (next_size != a.job.sub_batch_size).then_some(next_size),
            worker: self.name.clone(),
            then_create,
        };
        let cursor = self.cursor(&a.job);
        match performed
            .commit(SubBatchCommit::Finish(cursor, &finish))
            .await
        {
            Ok(SubBatchCommitted::Finished { job: done, next }) => {
                run.observe_latency(t0.elapsed(), a.size);
                Ok(SubBatchEnd::Finished(Box::new(JobRun {
                    job: *done,
                    outcome: JobOutcome::Succeeded,
                    started_next: next.map(|(job, next_start)| (*job, next_start)),
                })))
            }
            Ok(SubBatchCommitted::Fenced) => Ok(SubBatchEnd::Lost),
            Ok(SubBatchCommitted::Committed) => Err(Error::Corrupt(format!(
                "job {}'s last sub-batch committed without its end",
                a.job.id
            ))),
            Err(failure) => Ok(SubBatchEnd::Failed(failure)),
        }
    }

    /// The next job to start with the end of the current one, if the health sample read
    /// ahead (while this job ran) is there now and says go, and the next range is known.
    /// Never waits: called while the last sub-batch's transaction is open.
    fn start_ahead(
        &mut self,
        run: &mut MigrationRun,
        m: &Migration,
        sub_batch_size: i64,
    ) -> Option<JobCreateParams> {
        let mut ahead = run.ahead.take()?;
        let params = (|| {
            let start = ahead.start.clone();
            let read = ahead.ready()?;
            let (Ok(sample), Ok(Some(_))) = (&read.sample, &read.range) else {
                return None;
            };
            let rate = self.wal_rate.observe(sample.wal_lsn);
            // A stop, or a limit near enough to slow down: the next step decides, outside
            // this transaction.
            if !run.may_start_ahead(m, sample, rate) {
                return None;
            }
            let (min, max) = read.use_range()?;
            let range = JobRange::Given { min, max };
            Some(self.job_create_params(m, start, range, sub_batch_size))
        })();
        run.ahead = Some(ahead);
        params
    }

    /// Records how a job ended after its sub-batches: succeeded, or failed with `failure`
    /// (a timeout shrinks its sub-batch first).
    async fn record_end(
        &self,
        run: &mut MigrationRun,
        a: Attempt<'_>,
        failure: Option<Failure>,
    ) -> Result<JobRun> {
        let Attempt {
            job,
            heartbeat,
            tally,
            started,
            mut size,
            ..
        } = a;
        drop(heartbeat);
        if failure.as_ref().is_some_and(Failure::is_timeout) {
            size = ((size as f64) * 0.75).max(1.0) as i64;
            run.tuner.adopt_size(size);
        }
        let to = match failure {
            Some(_) => JobStatus::Failed,
            None => JobStatus::Succeeded,
        };
        let params = JobTransitionParams::new(&job, to, &self.name)?
            .with_metrics(tally.metrics(started.elapsed(), size).to_json())
            .with_failure(failure.clone())
            .with_sub_batch_size((size != job.sub_batch_size).then_some(size));
        let Some(job) = self.record_with_retry(&params).await? else {
            return Ok(JobRun::lost(job));
        };
        let outcome = match failure {
            Some(failure) => JobOutcome::Failed { failure },
            None => JobOutcome::Succeeded,
        };
        Ok(JobRun {
            job,
            outcome,
            started_next: None,
        })
    }

    /// Hands a job back when the worker is stopped between two sub-batches: `running ->
    /// failed` (class `Interrupted`, saying where it stopped) then `failed -> pending`, so
    /// that the next worker resumes it from its cursor at once, its attempts reset.
    async fn hand_back(&self, a: Attempt<'_>, from: &Lower) -> Result<JobRun> {
        let Attempt {
            job,
            heartbeat,
            tally,
            started,
            size,
            ..
        } = a;
        drop(heartbeat);
        let at = match from {
            Lower::After(cursor) => format!("after its cursor {cursor}"),
            Lower::From(first) => format!("from its first key {first}"),
        };
        let failure = Failure::new(
            FailureClass::Interrupted,
            format!(
                "worker {} was stopped after {} sub-batch(es) of this attempt; the job resumes {at}",
                self.name,
                tally.sub_batches()
            ),
        );
        let params = JobTransitionParams::new(&job, JobStatus::Failed, &self.name)?
            .with_metrics(tally.metrics(started.elapsed(), size).to_json())
            .with_failure(Some(failure))
            .with_sub_batch_size((size != job.sub_batch_size).then_some(size));
        let Some(failed) = self.record_with_retry(&params).await? else {
            return Ok(JobRun::lost(job));
        };
        let params = JobTransitionParams::new(&failed, JobStatus::Pending, &self.name)?;
        let job = match self.sluicegate().store.job_transition(&params).await {
            Ok(job) => job,
            // Someone else moved it on (an operator's retry): theirs now.
            Err(Error::Conflict { .. }) => failed,
            Err(e) => return Err(e),
        };
        tracing::info!(job = job.id, worker = %self.name, "stopped: the job is pending again and resumes from its cursor");
        Ok(JobRun {
            job,
            outcome: JobOutcome::Stopped,
            started_next: None,
        })
    }

    /// Records the end of a job, retrying with backoff while the database is unreachable (a
    /// restart takes seconds). Safe past the lease: if another worker has taken the job over
    /// meanwhile, the attempt no longer matches and nothing is written. `None` when the job is
    /// no longer ours.
    async fn record_with_retry(&self, params: &JobTransitionParams) -> Result<Option<Job>> {
        let deadline = Instant::now() + (self.lease() * 3).max(RECORD_RETRY_FOR);
        let mut backoff = Backoff::default();
        loop {
            match self.sluicegate().store.job_transition(params).await {
                Ok(job) => return Ok(Some(job)),
                Err(Error::Conflict { .. }) => return Ok(None),
                Err(Error::Database { source, context })
                    if Failure::from_sqlx(&source).is_connection_lost()
                        && Instant::now() < deadline =>
                {
                    let wait = backoff.next();
                    tracing::warn!(job = params.job_id(), error = %source, %context, retry_in_ms = wait.as_millis() as u64, "cannot record the job's end yet; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether `job`'s keys were dense when its range was walked: a range no wider than the job's
/// batch. A job of `batch_size` keys then holds every integer in it, and its sub-batches name
/// their ranges by arithmetic instead of walking the key's index again
/// ([`SubBatchSpec::dense`], which itself allows it only on a unique one-column integer key;
/// a job that was not dense after all, a last one with fewer keys, only runs sub-batches with
/// fewer rows, never more).
fn keys_were_dense(job: &Job) -> bool {
    match (job.min_value.as_i64(), job.max_value.as_i64()) {
        (Some(min), Some(max)) => max
            .checked_sub(min)
            .is_some_and(|span| span < job.batch_size),
        _ => false,
    }
}
