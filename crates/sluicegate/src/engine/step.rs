//! The step loop, read top to bottom: a step starts from what the last one carried
//! ([`Carry`]), takes the migration up, checks what a claim must check, asks the health
//! gate, gets its next job (started ahead, created from a range, or retried), runs it, and
//! returns what the next step starts from.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::migration_run::MigrationRun;
use super::next_job::NextJob;
use super::prefetch::Prefetch;
use super::{Backoff, JobOutcome, Mode, StepOutcome, WorkerLoop};
use crate::error::Result;
use crate::failure::{Failure, FailureClass};
use crate::ident::TableName;
use crate::key::Lower;
use crate::model::{CitusTable, Job, Migration};
use crate::status::MigrationStatus;

/// What a loop's next step starts from.
#[derive(Debug, Default)]
pub(super) enum Carry {
    /// Nothing: claim a due migration.
    #[default]
    Nothing,
    /// Continue the migration whose job this loop just ran, without claiming it again (its
    /// table lease is renewed by the statement that creates the next job).
    Continue {
        /// The migration, with its next key.
        migration: Box<Migration>,
    },
    /// The last job's end created and started this job: run it.
    Started {
        /// Its migration, with its next key after this job.
        migration: Box<Migration>,
        /// The job, `running`.
        job: Box<Job>,
    },
}

/// Where a step's job comes from.
#[derive(Debug)]
pub(super) enum JobSource {
    /// The migration was claimed: check it, then a new range or a job to retry.
    Claim,
    /// A new range from where the last job of this loop ended.
    NextRange,
    /// Started ahead by the last job's end, past the gate already.
    StartedAhead(Box<Job>),
}

/// Where a job came from, which says what may follow it without a new claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    /// Created from the migration's key range; `then` is where the migration's next job
    /// starts (`None`: the range is handed out).
    NewRange { then: Option<Lower> },
    /// A pending, failed or abandoned job taken up again.
    Retry,
}

/// A step's outcome and what the next step starts from.
pub(super) type Stepped = (StepOutcome, Carry);

impl WorkerLoop {
    /// This loop's name in leases and logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One step: from what the last step carried, run one job (or hold, wait, finish), or
    /// claim a due migration and do so.
    pub async fn step(&mut self) -> Result<StepOutcome> {
        self.worker.maintain_partitions().await?;
        let carry = std::mem::take(&mut self.carry);
        let (outcome, next) = self.step_from(carry).await?;
        self.carry = next;
        self.worker.emit(&outcome);
        Ok(outcome)
    }

    async fn step_from(&mut self, mut carry: Carry) -> Result<Stepped> {
        loop {
            let (m, source) = match carry {
                Carry::Nothing => match self.claim().await? {
                    Some(m) => (m, JobSource::Claim),
                    None => return Ok((StepOutcome::Idle, Carry::Nothing)),
                },
                // A row that no longer reads back is failed, never run on its placeholders.
                Carry::Continue { migration } | Carry::Started { migration, .. }
                    if migration.unreadable.is_some() =>
                {
                    (*migration, JobSource::Claim)
                }
                Carry::Continue { migration } => (*migration, JobSource::NextRange),
                Carry::Started { migration, job } => (*migration, JobSource::StartedAhead(job)),
            };
            // Nothing to continue with (paused, the range moved on): claim as usual.
            match self.step_migration(m, source).await? {
                Some(stepped) => return Ok(stepped),
                None => carry = Carry::Nothing,
            }
        }
    }

    async fn claim(&mut self) -> Result<Option<Migration>> {
        let started = Instant::now();
        let store = &self.sluicegate().store;
        let claimed = match &self.worker.only {
            Some(ids) => {
                store
                    .migration_claim_among(&self.name, self.lease(), ids)
                    .await?
            }
            None => {
                store
                    .migration_claim(&self.name, self.lease(), None)
                    .await?
            }
        };
        // The soak script reads these lines to check that claiming stays flat under load.
        tracing::debug!(
            target: "sluicegate::claim",
            claim_ms = started.elapsed().as_secs_f64() * 1000.0,
            claimed = claimed.is_some(),
            worker = %self.name,
        );
        Ok(claimed)
    }

    /// One step of migration `m`, its job from `source`; an error that belongs to it fails it
    /// (see [`super::migration_failure`]) instead of stopping the worker. `None` when there
    /// is nothing to continue with.
    pub(super) async fn step_migration(
        &mut self,
        m: Migration,
        source: JobSource,
    ) -> Result<Option<Stepped>> {
        let id = m.id;
        let fresh = matches!(source, JobSource::Claim);
        let mut run = self.taken.take_up(&m, fresh);
        let stepped = self.work(&mut run, m, source).await;
        let stepped = match stepped {
            Ok(stepped) => stepped,
            Err(e) => Some((self.fail_on_own_error(id, e).await?, Carry::Nothing)),
        };
        // A migration that ended is let go; any other is kept for its next step.
        if !matches!(stepped, Some((StepOutcome::Completed { .. }, _))) {
            self.taken.put_back(run);
        }
        Ok(stepped)
    }

    /// Health, then the job, then its run: written once for every source.
    async fn work(
        &mut self,
        run: &mut MigrationRun,
        m: Migration,
        source: JobSource,
    ) -> Result<Option<Stepped>> {
        let m = match source {
            JobSource::Claim => {
                if let Some(refused) = self.refusal(&m).await? {
                    return Ok(Some((refused, Carry::Nothing)));
                }
                m
            }
            _ => self.with_current_settings(run, m).await,
        };
        let mode = match m.status {
            MigrationStatus::Finalizing => Mode::Finalize,
            _ => Mode::Normal,
        };
        if m.citus == Some(CitusTable::Distributed) {
            // Lanes start no job ahead: every job is claimed from its lane.
            let claimed = matches!(source, JobSource::Claim);
            return self.work_lanes(run, m, claimed, mode).await;
        }
        let table = TableName::parse(&m.table_name)?;
        let (job, origin) = match source {
            JobSource::StartedAhead(job) => {
                let then = m.next_start.clone();
                (*job, Origin::NewRange { then })
            }
            JobSource::Claim | JobSource::NextRange => {
                let claimed = matches!(source, JobSource::Claim);
                match self.next_job(run, &m, &table, mode, claimed).await? {
                    NextJob::Run(job, origin) => (*job, origin),
                    NextJob::Said(outcome) => return Ok(Some((outcome, Carry::Nothing))),
                    NextJob::None if claimed => {
                        return Ok(Some((self.complete_if_done(&m).await?, Carry::Nothing)))
                    }
                    NextJob::None => {
                        self.release_if_stopped(&m).await?;
                        return Ok(None);
                    }
                }
            }
        };
        self.run_job(run, m, job, origin, mode).await.map(Some)
    }

    /// `m` as stored now when it was last read more than a second ago (an operator may have
    /// changed its settings with `sluicegate set`), else as carried. A failed read keeps the
    /// carried row: the next statement meets the same trouble and reports it.
    async fn with_current_settings(&self, run: &mut MigrationRun, m: Migration) -> Migration {
        if !run.settings_due() {
            return m;
        }
        match self.sluicegate().store.migration_get(m.id).await {
            Ok(Some(current)) if current.unreadable.is_none() => {
                run.read(&current);
                current
            }
            _ => m,
        }
    }

    /// Why a claimed migration cannot run at all, having failed it for that: its row does not
    /// read back, its job kind is not registered here, or its definition no longer parses.
    async fn refusal(&self, m: &Migration) -> Result<Option<StepOutcome>> {
        let (failure, reason) = if let Some(why) = &m.unreadable {
            // Its settings are placeholders: fail it, with a class of its own.
            (
                Failure::new(
                    "UnreadableMigration",
                    format!("its stored row cannot be read back: {why}"),
                ),
                format!("its stored row is unreadable: {why}"),
            )
        } else if self.sluicegate().registry.get(&m.job_kind).is_none() {
            (
                Failure::new(
                    FailureClass::UnknownJobKind,
                    format!(
                        "job kind {:?} is not registered in worker {}",
                        m.job_kind, self.name
                    ),
                ),
                "its job kind is not registered".to_owned(),
            )
        } else {
            // What it runs is read again before any of it runs: a definition stored before
            // fragments were parsed, or edited by hand, fails its migration here.
            self.sluicegate().check_definition(m)?;
            return Ok(None);
        };
        let m = self.fail_migration(m, failure, reason).await?;
        Ok(Some(StepOutcome::Completed {
            migration: Box::new(m),
        }))
    }

    /// Runs a job and what follows it (split or auto-fail after a failure, the optimizer and
    /// the tuner's log after a success), and says what the next step starts from.
    async fn run_job(
        &mut self,
        run: &mut MigrationRun,
        mut m: Migration,
        job: Job,
        origin: Origin,
        mode: Mode,
    ) -> Result<Stepped> {
        let table = TableName::parse(&m.table_name)?;
        // At full speed, what the next job needs is read while this one runs.
        run.ahead = match &origin {
            Origin::NewRange { then: Some(start) }
                if mode == Mode::Normal && m.interval.is_zero() =>
            {
                Some(Prefetch::start(
                    self.sluicegate(),
                    &m,
                    &table,
                    start.clone(),
                ))
            }
            _ => None,
        };
        let started = Instant::now();
        self.last_migration = Some(m.id);
        let ran = self.execute(run, &m, &table, job).await?;
        run.job_time = started.elapsed();
        match &ran.outcome {
            JobOutcome::Failed { failure } => {
                let target = self.sluicegate().target.clone();
                self.after_failure(&m, (target.as_ref(), &table), &ran.job, failure)
                    .await?
            }
            JobOutcome::Succeeded => {
                if mode == Mode::Normal {
                    if let Some(resized) = self.optimize(run, &m).await? {
                        m.batch_size = resized.batch_size;
                        m.sub_batch_size = resized.sub_batch_size;
                    }
                }
                self.log_tuner(run, &m, &ran.job).await?;
            }
            _ => {}
        }
        let outcome = StepOutcome::Ran {
            migration_id: m.id,
            job: Box::new(ran.job.clone()),
            outcome: ran.outcome.clone(),
        };
        let carry = next_carry(m, ran.outcome, ran.started_next, origin, mode);
        if !matches!(carry, Carry::Continue { .. }) {
            run.ahead = None;
        }
        Ok((outcome, carry))
    }

    /// Runs the job the last step started ahead, if any, and starts no other: call it before
    /// dropping a loop stepped by hand, so that no job is left running with no one to run it
    /// (its lease would run out and another worker would log it `WorkerLost`).
    ///
    /// When the worker was stopped (a signal), it also gives back the table lease of the
    /// migration it last ran (once no job of it runs): a stopped worker must not keep another
    /// migration of that table waiting for its lease to run out (a paused migration, say,
    /// whose job was in flight).
    pub async fn finish(&mut self) -> Result<()> {
        self.stopping = Arc::new(std::sync::atomic::AtomicBool::new(true));
        while matches!(self.carry, Carry::Started { .. }) {
            self.step().await?;
        }
        self.carry = Carry::Nothing;
        self.taken.let_go_all();
        // Stopped (a signal): nothing of this loop runs on, so its table goes back.
        let last = self.last_migration.take();
        if let Some(id) = last.filter(|_| self.interrupted.load(Ordering::Relaxed)) {
            self.sluicegate().store.table_lease_release(id).await?;
        }
        Ok(())
    }

    /// Sleeps `d`, or less when the worker is stopped meanwhile.
    pub(super) async fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.interrupted.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
    }

    /// The loop of [`super::Worker::run`]: until `stopping` is set between steps, or with
    /// `until_idle` also until no active migration is left.
    pub(super) async fn run(&mut self, until_idle: bool) -> Result<()> {
        let mut backoff = Backoff::default();
        while !self.stopping.load(Ordering::Relaxed) {
            match self.step().await {
                Ok(StepOutcome::Idle) => {
                    if until_idle {
                        match self.worker.has_runnable_migrations().await {
                            Ok(false) => return Ok(()),
                            Ok(true) => {}
                            Err(e) => {
                                self.worker.on_error(e, &mut backoff, self).await?;
                                continue;
                            }
                        }
                    }
                    backoff.reset();
                    self.pause(self.worker.opts.poll_interval).await;
                }
                Ok(StepOutcome::Waiting { .. }) => {
                    // Other workers' jobs, or a failed job's backoff: look again soon.
                    backoff.reset();
                    let poll = self.worker.opts.poll_interval;
                    self.pause(poll.min(Duration::from_millis(100))).await;
                }
                Ok(_) => backoff.reset(),
                Err(e) => self.worker.on_error(e, &mut backoff, self).await?,
            }
        }
        // A job started ahead is running already: it runs before the loop stops.
        self.finish().await
    }
}

/// What runs next after a job of `m`: the one place that decides it. After a success at full
/// speed (or while finalizing, which keeps no interval) with keys left, the same migration
/// again — the job its end started, or a new one from the range read ahead; anything else goes
/// back to claiming.
fn next_carry(
    m: Migration,
    outcome: JobOutcome,
    started_next: Option<(Job, Option<Lower>)>,
    origin: Origin,
    mode: Mode,
) -> Carry {
    let Origin::NewRange { then: Some(start) } = origin else {
        return Carry::Nothing;
    };
    if outcome != JobOutcome::Succeeded || (mode == Mode::Normal && !m.interval.is_zero()) {
        return Carry::Nothing;
    }
    let mut again = m;
    match started_next {
        Some((job, then)) => {
            again.next_start = then;
            Carry::Started {
                migration: Box::new(again),
                job: Box::new(job),
            }
        }
        None => {
            again.next_start = Some(start);
            Carry::Continue {
                migration: Box::new(again),
            }
        }
    }
}
