//! The step loop: what a loop carries from one step to the next ([`Carry`]), the one
//! decision of what runs next ([`WorkerLoop::after_job`]), claiming, continuing a migration
//! with what was read while its last job ran, and finding the next job.

use super::*;

/// What a loop's next step starts from: the state it passes from step to step.
#[derive(Debug, Default)]
pub(super) enum Carry {
    /// Nothing: claim a due migration.
    #[default]
    Nothing,
    /// Continue the migration whose job this loop just ran, without claiming it again (its
    /// table lease is renewed by the statement that creates the next job).
    Continue {
        /// The migration, with its next key and the tuned sub-batch size.
        migration: Box<Migration>,
        /// The next job's health sample and key range, read while the last job ran.
        prefetch: Option<Box<Prefetch>>,
    },
    /// The last job's end created and started this job: run it.
    Started {
        /// Its migration, with its next key after this job.
        migration: Box<Migration>,
        /// The job, `running`.
        job: Box<Job>,
    },
}

/// Where a job to run came from, which says what may follow it without a new claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    /// Created from the migration's key range; where the migration's next job starts after
    /// it (`None`: the range is handed out).
    Range { next_start: Option<Lower> },
    /// A pending, failed or abandoned job taken up again.
    Retry,
}

/// What the next job of a migration needs (its health sample and key range), read on other
/// connections while the current job runs, so that neither costs time between jobs.
pub(super) struct Prefetch {
    pub(super) migration_id: i64,
    /// Where the range was read from.
    pub(super) start: Lower,
    pub(super) task: Option<JoinHandle<PrefetchResult>>,
    pub(super) result: Option<PrefetchResult>,
}

/// The health sample, and the next job's key range (`None`: no key left from the start).
pub(super) type PrefetchResult = (Result<HealthSample>, Result<Option<(Key, Key)>>);

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("migration_id", &self.migration_id)
            .field("start", &self.start)
            .field("ready", &self.result.is_some())
            .finish()
    }
}

impl Prefetch {
    /// Starts reading `m`'s health sample and its key range from `start`.
    pub(super) fn start(sg: &Sluicegate, m: &Migration, table: &TableName, start: Lower) -> Self {
        let target = sg.target.clone();
        let (table, key, probe) = (table.clone(), m.key.clone(), m.health.probe.clone());
        let scope = m.scope.clone();
        let (max, size) = (m.max_value.clone(), m.batch_size);
        let statement_ms = m.statement_timeout_ms;
        let from = start.clone();
        let task = tokio::spawn(async move {
            let sample = target.health_sample(&table, probe.as_deref());
            let range = target.range_next(
                &table,
                &key,
                scope.as_deref(),
                &from,
                &max,
                size,
                statement_ms,
            );
            futures::join!(sample, range)
        });
        Self {
            migration_id: m.id,
            start,
            task: Some(task),
            result: None,
        }
    }

    /// Its result if it is there now; never waits.
    pub(super) fn ready(&mut self) -> Option<&mut PrefetchResult> {
        if self.result.is_none() {
            let task = self.task.as_mut()?;
            if !task.is_finished() {
                return None;
            }
            let joined = task.now_or_never()?;
            self.task = None;
            self.result = Some(joined.unwrap_or_else(|e| {
                let lost = || Error::Corrupt(format!("prefetch task died: {e}"));
                (Err(lost()), Err(lost()))
            }));
        }
        self.result.as_mut()
    }

    /// Its result, waiting for it (outside any transaction).
    pub(super) async fn wait(mut self) -> Option<PrefetchResult> {
        if let Some(task) = self.task.take() {
            self.result = task.await.ok();
        }
        self.result.take()
    }
}

// A prefetch no longer wanted is left to finish on its own, never aborted: its reads run in
// transactions (the walk under the migration's statement timeout, the probe read-only), and
// a task cancelled between a `BEGIN` and its end could hand its connection back to the pool
// inside that transaction (seen: the next claim met "cannot execute SELECT FOR UPDATE in a
// read-only transaction").

impl WorkerLoop {
    /// This loop's name in leases and logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn sg(&self) -> &Sluicegate {
        &self.worker.sg
    }

    pub(super) fn lease(&self) -> Duration {
        self.worker.opts.lease
    }

    /// Whether a job's end may start the next job in the same statement (PostgreSQL, one
    /// database, and a loop that goes on to run it).
    pub(super) fn may_start_ahead(&self) -> bool {
        self.sg().same_database
            && self.sg().store.capabilities().start_next_job_with_finish
            && !self.stopping.load(Ordering::Relaxed)
    }

    /// One step: from what the last step carried, run one job (or hold, wait, finish), or
    /// claim a due migration and do so.
    pub async fn step(&mut self) -> Result<StepOutcome> {
        self.worker.maintain_partitions().await?;
        let outcome = match std::mem::take(&mut self.carry) {
            // A row that no longer reads back is failed, never run on its placeholders.
            Carry::Started { migration, .. } | Carry::Continue { migration, .. }
                if migration.unreadable.is_some() =>
            {
                self.step_migration(*migration).await?
            }
            Carry::Started { migration, job } => {
                let migration = Box::new(self.with_current_settings(*migration).await);
                let (id, next_start) = (migration.id, migration.next_start.clone());
                let run = self
                    .run_job(*migration, *job, Origin::Range { next_start }, Mode::Normal)
                    .await;
                self.own_errors(id, run).await?
            }
            Carry::Continue {
                migration,
                prefetch,
            } => {
                let id = migration.id;
                let migration = self.with_current_settings(*migration).await;
                let next = match self.continue_with(migration, prefetch).await {
                    Ok(next) => next,
                    Err(e) => Some(self.own_errors(id, Err(e)).await?),
                };
                match next {
                    Some(outcome) => outcome,
                    None => self.claim_and_step().await?,
                }
            }
            Carry::Nothing => self.claim_and_step().await?,
        };
        self.worker.emit(&outcome);
        Ok(outcome)
    }

    /// `m` as stored now when this loop last read it more than a second ago (an operator may
    /// have changed its settings with `sluicegate set`), else as carried. A failed read keeps
    /// the carried row: the next statement meets the same trouble and reports it.
    async fn with_current_settings(&mut self, m: Migration) -> Migration {
        let now = Instant::now();
        let read = *self.settings_read.entry(m.id).or_insert(now);
        if now.duration_since(read) < Duration::from_secs(1) {
            return m;
        }
        match self.sg().store.migration_get(m.id).await {
            Ok(Some(current)) if current.unreadable.is_none() => {
                self.settings_read.insert(m.id, now);
                current
            }
            _ => m,
        }
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
        self.stopping = Arc::new(AtomicBool::new(true));
        while matches!(self.carry, Carry::Started { .. }) {
            self.step().await?;
        }
        self.carry = Carry::Nothing;
        // Stopped (a signal): nothing of this loop runs on, so its table goes back.
        let last = self.last_migration.take();
        if let Some(id) = last.filter(|_| self.interrupted.load(Ordering::Relaxed)) {
            self.sg().store.table_lease_release(id).await?;
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

    /// The loop of [`Worker::run`]: until `stopping` is set between steps, or with
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

    pub(super) async fn claim_and_step(&mut self) -> Result<StepOutcome> {
        let started = Instant::now();
        let claimed = self
            .sg()
            .store
            .migration_claim(&self.name, self.lease(), None)
            .await?;
        // The soak script reads these lines to check that claiming stays flat under load.
        tracing::debug!(
            target: "sluicegate::claim",
            claim_ms = started.elapsed().as_secs_f64() * 1000.0,
            claimed = claimed.is_some(),
            worker = %self.name,
        );
        match claimed {
            Some(migration) => self.step_migration(migration).await,
            None => Ok(StepOutcome::Idle),
        }
    }

    /// One step of a claimed migration; an error that belongs to it fails it (see
    /// [`migration_failure`]) instead of stopping the worker.
    pub(super) async fn step_migration(&mut self, m: Migration) -> Result<StepOutcome> {
        let mode = match m.status {
            MigrationStatus::Finalizing => Mode::Finalize,
            _ => Mode::Normal,
        };
        // What it runs is read again before any of it runs: a definition stored before
        // fragments were parsed, or edited by hand, fails its migration here.
        let checked = match m.unreadable {
            // An unreadable row has no definition to read: step_migration_in fails it as such.
            Some(_) => Ok(()),
            None => self.sg().check_definition(&m),
        };
        let outcome = match checked {
            Ok(()) => self.step_migration_in(&m, mode).await,
            Err(e) => Err(e),
        };
        self.own_errors(m.id, outcome).await
    }

    /// An error that belongs to migration `m` (see [`migration_failure`]) fails `m` instead
    /// of stopping the worker; anything else passes through.
    pub(super) async fn own_errors(
        &mut self,
        migration_id: i64,
        outcome: Result<StepOutcome>,
    ) -> Result<StepOutcome> {
        match outcome {
            Err(e) => match migration_failure(&e) {
                Some(failure) => self.fail_for_error(migration_id, failure).await,
                None => Err(e),
            },
            ok => ok,
        }
    }

    pub(super) async fn step_migration_in(
        &mut self,
        m: &Migration,
        mode: Mode,
    ) -> Result<StepOutcome> {
        if let Some(why) = &m.unreadable {
            // Its settings are placeholders: fail it, with a class of its own, and go on.
            let failure = Failure::new(
                "UnreadableMigration",
                format!("its stored row cannot be read back: {why}"),
            );
            let m = self
                .fail_migration(m, failure, format!("its stored row is unreadable: {why}"))
                .await?;
            return Ok(StepOutcome::Completed {
                migration: Box::new(m),
            });
        }
        if self.sg().registry.get(&m.job_kind).is_none() {
            let failure = Failure::new(
                FailureClass::UnknownJobKind,
                format!(
                    "job kind {:?} is not registered in worker {}",
                    m.job_kind, self.name
                ),
            );
            let m = self
                .fail_migration(m, failure, "its job kind is not registered".into())
                .await?;
            return Ok(StepOutcome::Completed {
                migration: Box::new(m),
            });
        }
        let table = TableName::parse(&m.table_name)?;
        // Health protects the start of jobs; with none left to start, the migration ends
        // without waiting on it (an autovacuum its own last job set off, say).
        if m.next_start.is_none()
            && self
                .sg()
                .store
                .job_find_retriable(m.id, MAX_ATTEMPTS)
                .await?
                .is_none()
        {
            return self.complete_if_done(m).await;
        }
        if mode == Mode::Normal {
            let sample = self.health_sample(m, &table).await?;
            if let Some(held) = self.check_health(m, sample).await? {
                return Ok(held);
            }
        }
        match self.next_job(m, &table).await? {
            Some((job, origin)) => self.run_job(m.clone(), job, origin, mode).await,
            None => self.complete_if_done(m).await,
        }
    }

    /// Records an error of the migration's own on it (`fail`, with its class and message).
    pub(super) async fn fail_for_error(
        &mut self,
        migration_id: i64,
        failure: Failure,
    ) -> Result<StepOutcome> {
        tracing::warn!(migration = migration_id, class = %failure.class, message = %failure.message, "the migration failed on an error of its own");
        let current = self.sg().store.migration_get(migration_id).await?;
        let Some(current) = current.filter(|c| c.status.after(MigrationEvent::Fail).is_some())
        else {
            return Ok(StepOutcome::Waiting { migration_id });
        };
        let reason = format!("{}: {}", failure.class, failure.message);
        match self.fail_migration(&current, failure, reason).await {
            Ok(m) => Ok(StepOutcome::Completed {
                migration: Box::new(m),
            }),
            Err(Error::Conflict { .. }) => Ok(StepOutcome::Waiting { migration_id }),
            Err(e) => Err(e),
        }
    }

    /// The next job of the migration this loop just ran a job of, from what was prefetched
    /// while that job ran: a health check, then create+start in one statement. `None` when it
    /// is not to be had (paused, another worker moved the range on, the table lease gone):
    /// then the step claims as usual.
    pub(super) async fn continue_with(
        &mut self,
        m: Migration,
        prefetch: Option<Box<Prefetch>>,
    ) -> Result<Option<StepOutcome>> {
        let Some(start) = m.next_start.clone() else {
            return Ok(None);
        };
        let table = TableName::parse(&m.table_name)?;
        let prefetched = match prefetch.filter(|p| p.migration_id == m.id && p.start == start) {
            Some(p) => p.wait().await,
            None => None,
        };
        let (sample, range) = match prefetched {
            Some((sample, range)) => (sample?, range.ok().flatten()),
            None => (self.health_sample(&m, &table).await?, None),
        };
        if let Some(held) = self.check_health(&m, sample).await? {
            return Ok(Some(held));
        }
        let created = match range {
            Some((min, max)) => {
                self.create_job_in(&m, start, JobRange::Given { min, max })
                    .await
            }
            None => self.create_job(&m, &table, start).await,
        };
        match created? {
            JobCreated::Created(job, next_start) => {
                let outcome = self
                    .run_job(m, *job, Origin::Range { next_start }, Mode::Normal)
                    .await?;
                Ok(Some(outcome))
            }
            JobCreated::Exhausted | JobCreated::NotNow => {
                self.release_if_stopped(&m).await?;
                Ok(None)
            }
        }
    }

    /// Gives the table lease back when the migration no longer runs (paused, cancelled,
    /// failed): the store keeps it while any of its jobs still runs.
    pub(super) async fn release_if_stopped(&self, m: &Migration) -> Result<()> {
        let current = self.sg().store.migration_get(m.id).await?;
        if current.is_some_and(|c| {
            !matches!(
                c.status,
                MigrationStatus::Active | MigrationStatus::Finalizing
            )
        }) {
            self.sg().store.table_lease_release(m.id).await?;
        }
        Ok(())
    }

    /// Runs a job and what follows it: split or auto-fail after a failure, the optimizer after
    /// a success; then [`Self::after_job`] decides what the next step starts from.
    pub(super) async fn run_job(
        &mut self,
        m: Migration,
        job: Job,
        origin: Origin,
        mode: Mode,
    ) -> Result<StepOutcome> {
        let table = TableName::parse(&m.table_name)?;
        let kind = self
            .sg()
            .registry
            .get(&m.job_kind)
            .ok_or_else(|| Error::UnknownJobKind(m.job_kind.clone()))?;
        // At full speed, what the next job needs is read while this one runs.
        let mut prefetch = match &origin {
            Origin::Range {
                next_start: Some(start),
            } if mode == Mode::Normal && m.interval.is_zero() => {
                Some(Prefetch::start(self.sg(), &m, &table, start.clone()))
            }
            _ => None,
        };
        let started = Instant::now();
        self.last_migration = Some(m.id);
        let run = self
            .execute(&m, kind.as_ref(), &table, job, prefetch.as_mut())
            .await?;
        self.job_time.insert(m.id, started.elapsed());
        match &run.outcome {
            JobOutcome::Failed { failure } => {
                self.after_failure(&m, &table, &run.job, failure).await?
            }
            JobOutcome::Succeeded if mode == Mode::Normal => {
                self.optimize(&m).await?;
                self.log_tuner(&m, &run).await?;
            }
            _ => {}
        }
        let outcome = StepOutcome::Ran {
            migration_id: m.id,
            job: Box::new(run.job.clone()),
            outcome: run.outcome.clone(),
        };
        self.carry = Self::after_job(m, run, origin, mode, prefetch);
        Ok(outcome)
    }

    /// What runs next after a job of `m`: the one place that decides it. After a success at
    /// full speed with keys left, the same migration again — the job its end started, or a
    /// new one from the prefetched range; anything else goes back to claiming.
    pub(super) fn after_job(
        m: Migration,
        run: JobRun,
        origin: Origin,
        mode: Mode,
        prefetch: Option<Prefetch>,
    ) -> Carry {
        let Origin::Range {
            next_start: Some(start),
        } = origin
        else {
            return Carry::Nothing;
        };
        if mode != Mode::Normal || !m.interval.is_zero() || run.outcome != JobOutcome::Succeeded {
            return Carry::Nothing;
        }
        let mut again = m;
        again.sub_batch_size = run.job.sub_batch_size.min(again.batch_size);
        match run.started_next {
            Some((job, next_start)) => {
                again.next_start = next_start;
                Carry::Started {
                    migration: Box::new(again),
                    job: Box::new(job),
                }
            }
            None => {
                again.next_start = Some(start);
                Carry::Continue {
                    migration: Box::new(again),
                    prefetch: prefetch.map(Box::new),
                }
            }
        }
    }

    /// The next job to start with the end of the current one, if the prefetched health sample
    /// (read while this job ran) is there now and says go, and the next range is known. Never
    /// waits: called while the last sub-batch's transaction is open.
    pub(super) fn start_ahead(
        &mut self,
        m: &Migration,
        prefetch: &mut Prefetch,
        sub_batch_size: i64,
    ) -> Option<JobCreateParams> {
        let start = prefetch.start.clone();
        let (sample, range) = prefetch.ready()?;
        let (Ok(sample), Ok(Some((min, max)))) = (&*sample, &*range) else {
            return None;
        };
        let (min, max) = (min.clone(), max.clone());
        // A stop, or a limit near enough to slow down: the next step decides, outside this
        // transaction.
        let (readings, pressure) = self.judge(m, sample);
        let slowed = self
            .slow_down
            .get(&m.id)
            .is_some_and(|d| !d.pause().is_zero());
        if health::first_stop(&readings).is_some() || pressure.is_some() || slowed {
            return None;
        }
        // The range is spent on this job; the sample stays for the next step's own check.
        prefetch.result.as_mut()?.1 = Ok(None);
        Some(JobCreateParams {
            migration_id: m.id,
            expected_next: start,
            range: JobRange::Given { min, max },
            batch_size: m.batch_size,
            sub_batch_size: sub_batch_size.min(m.batch_size),
            pause_ms: m.pause_ms,
            worker: self.name.clone(),
            lease: self.lease(),
        })
    }

    pub(super) async fn health_sample(
        &self,
        m: &Migration,
        table: &TableName,
    ) -> Result<HealthSample> {
        self.sg()
            .target
            .health_sample(table, m.health.probe.as_deref())
            .await
    }

    /// Creates the migration's next job from `start`: in one statement with the keyset walk
    /// when the table is in the tracking database, else after finding the range on the target.
    pub(super) async fn create_job(
        &self,
        m: &Migration,
        table: &TableName,
        start: Lower,
    ) -> Result<JobCreated> {
        let range = if self.sg().same_database {
            JobRange::Keyset {
                table: table.clone(),
                key: m.key.clone(),
                scope: m.scope.clone(),
                size: m.batch_size,
                statement_ms: m.statement_timeout_ms,
            }
        } else {
            let found = self
                .sg()
                .target
                .range_next(
                    table,
                    &m.key,
                    m.scope.as_deref(),
                    &start,
                    &m.max_value,
                    m.batch_size,
                    m.statement_timeout_ms,
                )
                .await?;
            match found {
                Some((min, max)) => JobRange::Given { min, max },
                None if self
                    .sg()
                    .store
                    .migration_range_exhaust(m.id, &start)
                    .await? =>
                {
                    return Ok(JobCreated::Exhausted)
                }
                None => return Ok(JobCreated::NotNow),
            }
        };
        self.create_job_in(m, start, range).await
    }

    /// Creates the job over `range` if the migration's next key is still `start`.
    pub(super) async fn create_job_in(
        &self,
        m: &Migration,
        start: Lower,
        range: JobRange,
    ) -> Result<JobCreated> {
        self.sg()
            .store
            .job_create(&JobCreateParams {
                migration_id: m.id,
                expected_next: start,
                range,
                batch_size: m.batch_size,
                sub_batch_size: m.sub_batch_size.min(m.batch_size),
                pause_ms: m.pause_ms,
                worker: self.name.clone(),
                lease: self.lease(),
            })
            .await
    }

    /// The job to run now: a new range after the last one, or a pending, retriable or
    /// abandoned job. Concurrent workers race through compare-and-set; the loser looks again.
    pub(super) async fn next_job(
        &self,
        m: &Migration,
        table: &TableName,
    ) -> Result<Option<(Job, Origin)>> {
        let store = &self.sg().store;
        let mut m = m.clone();
        for attempt in 0.. {
            if attempt > 0 {
                m = match store.migration_get(m.id).await? {
                    Some(m) => m,
                    None => return Ok(None),
                };
            }
            if attempt > 100 {
                return Err(Error::Conflict {
                    what: format!("migration {} (too much contention for its next job)", m.id),
                });
            }
            if !matches!(
                m.status,
                MigrationStatus::Active | MigrationStatus::Finalizing
            ) {
                return Ok(None);
            }
            // A finalizing migration (its finalizer may have died) takes its pending, failed or
            // orphaned jobs first, then new ranges.
            let retriable_first = m.status == MigrationStatus::Finalizing;
            let found = match m.next_start.clone() {
                Some(_) if !retriable_first => None,
                _ => store.job_find_retriable(m.id, MAX_ATTEMPTS).await?,
            };
            if let (None, Some(start)) = (&found, m.next_start.clone()) {
                match self.create_job(&m, table, start).await? {
                    JobCreated::Created(job, next_start) => {
                        return Ok(Some((*job, Origin::Range { next_start })))
                    }
                    JobCreated::Exhausted => continue,
                    JobCreated::NotNow => {
                        // Another worker moved the range on: look again. Anything else (the
                        // interval, a pause, the table lease): not now.
                        let moved = store
                            .migration_get(m.id)
                            .await?
                            .is_some_and(|now| now.next_start != m.next_start);
                        if moved {
                            continue;
                        }
                        return Ok(None);
                    }
                }
            }
            // Here either a job was found or no range is left (and none was found).
            let Some(mut job) = found else {
                return Ok(None);
            };
            if job.status == JobStatus::Running {
                // Its worker stopped renewing the lease: record the gap, then retry it.
                let params = JobTransitionParams::new(&job, JobStatus::Failed, &self.name)?
                    .if_lease_expired()
                    .with_failure(Some(Failure::new(
                        FailureClass::WorkerLost,
                        format!(
                            "worker {} stopped renewing its lease, which expired at {}",
                            job.worker.as_deref().unwrap_or("?"),
                            job.lease_expires_at
                                .map(|t| t.to_rfc3339())
                                .unwrap_or_else(|| "?".into())
                        ),
                    )));
                job = match store.job_transition(&params).await {
                    Ok(job) => job,
                    Err(Error::Conflict { .. }) => continue,
                    Err(e) => return Err(e),
                };
                if job.attempts >= MAX_ATTEMPTS {
                    continue;
                }
            }
            let params = JobTransitionParams::new(&job, JobStatus::Running, &self.name)?
                .with_lease(self.lease());
            match store.job_transition(&params).await {
                Ok(job) => return Ok(Some((job, Origin::Retry))),
                Err(Error::Conflict { .. }) => {
                    // Held meanwhile (by another worker): no job of it starts now.
                    let held = store.migration_get(m.id).await?.is_some_and(|now| {
                        now.status == MigrationStatus::Active
                            && now.on_hold_until.is_some_and(|t| t > Utc::now())
                    });
                    if held {
                        return Ok(None);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }
}
