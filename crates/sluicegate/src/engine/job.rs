//! Running one job: sub-batch by sub-batch under a heartbeat, committing each with the job's
//! cursor or its end, recording how it ended, and what follows a failure (split, auto-fail)
//! or the last job (finish or fail the migration).

use super::*;

/// How a job's run ended, for what follows it.
pub(super) struct JobRun {
    pub(super) job: Job,
    pub(super) outcome: JobOutcome,
    /// The next job, started by this job's end, and the migration's next key after it.
    pub(super) started_next: Option<(Job, Option<Lower>)>,
    /// What the sub-batch tuner learned in this job (a fixed cost), for the log.
    pub(super) tuner_found: Option<String>,
}

/// Stops a heartbeat task when the job is done.
pub(super) struct Heartbeat {
    pub(super) task: JoinHandle<()>,
    pub(super) lost: Arc<AtomicBool>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WorkerLoop {
    pub(super) fn start_heartbeat(&self, job: &Job) -> Heartbeat {
        let lost = Arc::new(AtomicBool::new(false));
        let (store, lease, id, attempts) =
            (self.sg().store.clone(), self.lease(), job.id, job.attempts);
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
    /// last one the job's end (and, given `prefetch` with a go, the next job's start).
    pub(super) async fn execute(
        &mut self,
        m: &Migration,
        kind: &dyn JobKind,
        table: &TableName,
        job: Job,
        mut prefetch: Option<&mut Prefetch>,
    ) -> Result<JobRun> {
        let lost = |job| {
            Ok(JobRun {
                job,
                outcome: JobOutcome::Lost,
                started_next: None,
                tuner_found: None,
            })
        };
        let heartbeat = self.start_heartbeat(&job);
        let started = Instant::now();
        let mut lower = Some(match &job.cursor {
            Some(cursor) => Lower::After(cursor.clone()),
            None => Lower::From(job.min_value.clone()),
        })
        .filter(|l| l.is_inclusive() || l.key() != &job.max_value);
        let mut sub_batch_size = job.sub_batch_size;
        let floor = self.tuner_floor.get(&m.id).copied().unwrap_or(1);
        let mut tuner = optimizer::SubBatchTuner::with_floor(floor);
        // An explicit sub-batch size is a ceiling the tuner never goes above.
        let most = job.batch_size.min(m.sub_batch_ceiling.unwrap_or(i64::MAX));
        let mut tally = Tally::default();
        let target_time = Duration::from_millis(m.target_sub_batch_ms.max(0) as u64);
        let cursor = JobCursor {
            job_id: job.id,
            attempts: job.attempts,
            lease: self.lease(),
        };
        self.latency.entry(m.id).or_default().job_started();
        let failure = loop {
            let Some(from) = lower.take() else {
                break None;
            };
            if heartbeat.lost.load(Ordering::Relaxed) {
                return lost(job);
            }
            if self.interrupted.load(Ordering::Relaxed) {
                // Stopped between two sub-batches: each committed its cursor, so the job is
                // handed back here and resumes after `from`.
                drop(heartbeat);
                return self
                    .hand_back(job, &from, &tally, started, sub_batch_size)
                    .await;
            }
            let t0 = Instant::now();
            let spec = SubBatchSpec {
                kind,
                table,
                key: &m.key,
                scope: m.scope.as_deref(),
                arguments: &m.job_arguments,
                lower: &from,
                max: &job.max_value,
                size: sub_batch_size,
                whole_rest: sub_batch_size >= job.batch_size,
                timeouts: Timeouts {
                    statement_ms: m.statement_timeout_ms,
                    lock_ms: m.lock_timeout_ms,
                },
                key_unique: m.key_unique,
            };
            let performed = match self.sg().target.sub_batch_perform(spec).await {
                Ok(Some(performed)) => performed,
                Ok(None) => break None,
                Err(failure) => break Some(failure),
            };
            let (first, end) = performed.keys().clone();
            let rows = performed.rows();
            if !self.sg().same_database {
                // Another database: commit there, then record the cursor here (at-least-once).
                if let Err(failure) = performed.commit(SubBatchCommit::Alone).await {
                    break Some(failure);
                }
                let recorded = self
                    .sg()
                    .store
                    .job_checkpoint(job.id, job.attempts, &end, rows as i64, self.lease())
                    .await?;
                if !recorded {
                    return lost(job);
                }
            } else if end == job.max_value {
                // The job's last sub-batch: its end commits with it.
                let took = t0.elapsed();
                let mut tally = tally.clone();
                tally.record(&first, &end, rows, took);
                let next_size = tuner.next(sub_batch_size, took, target_time, most);
                let then_create = match prefetch.as_deref_mut() {
                    Some(p) if self.may_start_ahead() => self.start_ahead(m, p, next_size),
                    _ => None,
                };
                let finish = JobFinish {
                    metrics: tally.metrics(started.elapsed(), next_size),
                    sub_batch_size: (next_size != job.sub_batch_size).then_some(next_size),
                    worker: self.name.clone(),
                    then_create,
                };
                match performed
                    .commit(SubBatchCommit::Finish(cursor, &finish))
                    .await
                {
                    Ok(SubBatchCommitted::Finished { job: done, next }) => {
                        drop(heartbeat);
                        self.observe_latency(m.id, t0.elapsed(), sub_batch_size);
                        self.tuner_floor.insert(m.id, tuner.floor());
                        return Ok(JobRun {
                            job: *done,
                            outcome: JobOutcome::Succeeded,
                            started_next: next.map(|(job, next_start)| (*job, next_start)),
                            tuner_found: tuner.take_found(),
                        });
                    }
                    Ok(SubBatchCommitted::Fenced) => return lost(job),
                    Ok(SubBatchCommitted::Committed) => {
                        return Err(Error::Corrupt(format!(
                            "job {}'s last sub-batch committed without its end",
                            job.id
                        )))
                    }
                    Err(failure) => break Some(failure),
                }
            } else {
                match performed.commit(SubBatchCommit::Cursor(cursor)).await {
                    Ok(SubBatchCommitted::Fenced) => return lost(job),
                    Ok(_) => {}
                    Err(failure) => break Some(failure),
                }
            }
            let took = t0.elapsed();
            self.observe_latency(m.id, took, sub_batch_size);
            sub_batch_size = tuner.next(sub_batch_size, took, target_time, most);
            tally.record(&first, &end, rows, took);
            // The walk is bounded by the job's last key: reaching it ends the job.
            lower = (end != job.max_value).then_some(Lower::After(end));
            if job.pause_ms > 0 && lower.is_some() {
                self.pause(Duration::from_millis(job.pause_ms as u64)).await;
            }
        };
        drop(heartbeat);
        if failure.as_ref().is_some_and(Failure::is_timeout) {
            sub_batch_size = ((sub_batch_size as f64) * 0.75).max(1.0) as i64;
        }
        let to = if failure.is_some() {
            JobStatus::Failed
        } else {
            JobStatus::Succeeded
        };
        let params = JobTransitionParams::new(&job, to, &self.name)?
            .with_metrics(tally.metrics(started.elapsed(), sub_batch_size))
            .with_failure(failure.clone())
            .with_sub_batch_size((sub_batch_size != job.sub_batch_size).then_some(sub_batch_size));
        let Some(job) = self.record_with_retry(&params).await? else {
            return lost(job);
        };
        let outcome = match failure {
            Some(failure) => JobOutcome::Failed { failure },
            None => JobOutcome::Succeeded,
        };
        self.tuner_floor.insert(m.id, tuner.floor());
        Ok(JobRun {
            job,
            outcome,
            started_next: None,
            tuner_found: tuner.take_found(),
        })
    }

    /// Hands a job back when the worker is stopped between two sub-batches: `running ->
    /// failed` (class `Interrupted`, saying where it stopped) then `failed -> pending`, so
    /// that the next worker resumes it from its cursor at once, its attempts reset.
    async fn hand_back(
        &self,
        job: Job,
        from: &Lower,
        tally: &Tally,
        started: Instant,
        sub_batch_size: i64,
    ) -> Result<JobRun> {
        let lost = |job| {
            Ok(JobRun {
                job,
                outcome: JobOutcome::Lost,
                started_next: None,
                tuner_found: None,
            })
        };
        let at = match from {
            Lower::After(cursor) => format!("after its cursor {cursor}"),
            Lower::From(first) => format!("from its first key {first}"),
        };
        let failure = Failure::new(
            FailureClass::Interrupted,
            format!(
                "worker {} was stopped after {} sub-batch(es) of this attempt; the job resumes {at}",
                self.name, tally.sub_batches
            ),
        );
        let params = JobTransitionParams::new(&job, JobStatus::Failed, &self.name)?
            .with_metrics(tally.metrics(started.elapsed(), sub_batch_size))
            .with_failure(Some(failure))
            .with_sub_batch_size((sub_batch_size != job.sub_batch_size).then_some(sub_batch_size));
        let Some(failed) = self.record_with_retry(&params).await? else {
            return lost(job);
        };
        let params = JobTransitionParams::new(&failed, JobStatus::Pending, &self.name)?;
        let job = match self.sg().store.job_transition(&params).await {
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
            tuner_found: None,
        })
    }

    pub(super) fn observe_latency(&mut self, migration_id: i64, took: Duration, keys: i64) {
        if let Some(tracker) = self.latency.get_mut(&migration_id) {
            tracker.observe(took.as_secs_f64() * 1000.0, keys);
        }
    }

    /// Records the end of a job, retrying with backoff while the database is unreachable (a
    /// restart takes seconds). Safe past the lease: if another worker has taken the job over
    /// meanwhile, the attempt no longer matches and nothing is written. `None` when the job is
    /// no longer ours.
    pub(super) async fn record_with_retry(
        &self,
        params: &JobTransitionParams,
    ) -> Result<Option<Job>> {
        let deadline = Instant::now() + (self.lease() * 3).max(RECORD_RETRY_FOR);
        let mut backoff = Backoff::default();
        loop {
            match self.sg().store.job_transition(params).await {
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

    pub(super) async fn reset_exhausted(&self, m: &Migration) -> Result<()> {
        for job in self
            .sg()
            .store
            .job_list(m.id, Some(JobStatus::Failed))
            .await?
        {
            let params = JobTransitionParams::new(&job, JobStatus::Pending, &self.name)?;
            match self.sg().store.job_transition(&params).await {
                Ok(_) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// After a failed job: split it when timeouts exhausted its attempts, and fail the
    /// migration when too many of its jobs failed.
    pub(super) async fn after_failure(
        &self,
        m: &Migration,
        table: &TableName,
        job: &Job,
        failure: &Failure,
    ) -> Result<()> {
        if failure.is(FailureClass::RangeEscaped) {
            // No retry can make a statement that reaches past its range safe: the migration
            // stops here, its sub-batch rolled back, before a second one runs.
            let current = self.sg().store.migration_get(m.id).await?;
            let failing = current.filter(|c| c.status.after(MigrationEvent::Fail).is_some());
            if let Some(current) = failing {
                let reason = format!("job {}: {}", job.id, failure.message);
                match self.fail_migration(&current, failure.clone(), reason).await {
                    Ok(_) | Err(Error::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
        if failure.is_timeout() {
            self.shrink_after_timeout(m, job, failure).await?;
            if job.attempts >= MAX_ATTEMPTS {
                self.split(m, table, job).await?;
            }
        }
        let counts = self.sg().store.job_counts(m.id, MAX_ATTEMPTS).await?;
        if counts.total() >= AUTO_FAIL_MIN_JOBS && counts.failed * 2 > counts.total() {
            let current = self.sg().store.migration_get(m.id).await?;
            if let Some(current) = current.filter(|c| c.status == MigrationStatus::Active) {
                let reason = format!(
                    "{} of {} jobs failed (more than half, with at least {AUTO_FAIL_MIN_JOBS} jobs)",
                    counts.failed,
                    counts.total()
                );
                let failure = Failure::new(FailureClass::TooManyFailedJobs, reason.clone());
                match self.fail_migration(&current, failure, reason).await {
                    Ok(_) | Err(Error::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Splits a job that kept timing out: from its cursor on (the keys before it are done),
    /// the rest is cut in two at the middle of what remains, however little that is — half of
    /// the batch size from the cursor when that much is left, else half of it again, down to
    /// one key. The first half keeps the cursor; the second starts at the next existing key.
    /// Nothing to split when one key or none remains.
    pub(super) async fn split(&self, m: &Migration, table: &TableName, job: &Job) -> Result<()> {
        let from = match &job.cursor {
            Some(c) => Lower::After(c.clone()),
            None => Lower::From(job.min_value.clone()),
        };
        let target = &self.sg().target;
        let walk = |lower: Lower, size: i64| async move {
            target
                .range_next(
                    table,
                    &m.key,
                    m.scope.as_deref(),
                    &lower,
                    &job.max_value,
                    size,
                    m.statement_timeout_ms,
                )
                .await
        };
        // The largest `size` (halving from half the batch) whose walk from the cursor stops
        // before the job's last key: the middle of what remains, give or take a factor of 2.
        let mut size = (job.batch_size / 2).max(1);
        let mut first_try = true;
        let mid = loop {
            match walk(from.clone(), size).await? {
                // No key left after the cursor: nothing to split.
                None => return Ok(()),
                Some((_, mid)) if mid != job.max_value => break mid,
                Some(_) if size > 1 => {
                    size /= 2;
                    first_try = false;
                }
                // One key (or a walk of one that reached the end): nothing to split.
                Some(_) => return Ok(()),
            }
        };
        // The middle key the walk found, and the first key after it: the second half starts
        // at an existing key, as every job does.
        let after = Lower::After(mid.clone());
        let Some((second_min, _)) = walk(after, 1).await? else {
            return Ok(());
        };
        // The second half holds at most what the first try left (the job's batch) or, after
        // a halving, about as many keys as the first half.
        let second_size = if first_try {
            (job.batch_size - size).max(1)
        } else {
            size
        };
        let half = size;
        let params = JobSplitParams {
            transition: JobTransitionParams::new(job, JobStatus::Pending, &self.name)?,
            first_max: mid,
            batch_size: half.max(second_size),
            sub_batch_size: job.sub_batch_size.min(half),
            second_min,
            second_max: job.max_value.clone(),
        };
        match self.sg().store.job_split(&params).await {
            Ok((first, second)) => {
                tracing::info!(
                    job = first.id,
                    new_job = second.id,
                    "split a job that kept timing out"
                );
                Ok(())
            }
            Err(Error::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn fail_migration(
        &self,
        m: &Migration,
        failure: Failure,
        reason: String,
    ) -> Result<Migration> {
        let params = MigrationTransitionParams::new(m, MigrationEvent::Fail, &self.name)?
            .with_reason(Some(reason))
            .with_failure(failure);
        let m = self.sg().store.migration_transition(&params).await?;
        self.sg().store.table_lease_release(m.id).await?;
        Ok(m)
    }

    /// No job left to start: finish (or fail) the migration when nothing is pending or
    /// running any more.
    pub(super) async fn complete_if_done(&self, m: &Migration) -> Result<StepOutcome> {
        // An unreadable row is failed by the next claim, never finished on its placeholders.
        let Some(m) =
            (self.sg().store.migration_get(m.id).await?).filter(|m| m.unreadable.is_none())
        else {
            return Ok(StepOutcome::Idle);
        };
        let runnable = matches!(
            m.status,
            MigrationStatus::Active | MigrationStatus::Finalizing
        );
        let counts = self.sg().store.job_counts(m.id, MAX_ATTEMPTS).await?;
        // A failed job with attempts left waits out its backoff: not done yet.
        let retriable = counts.failed > counts.exhausted;
        if !runnable
            || m.next_start.is_some()
            || counts.pending > 0
            || counts.running > 0
            || retriable
        {
            return Ok(StepOutcome::Waiting { migration_id: m.id });
        }
        let result = if counts.failed == 0 {
            let params = MigrationTransitionParams::new(&m, MigrationEvent::Finish, &self.name)?
                .with_reason(Some(format!(
                    "all {} jobs succeeded, {} rows affected",
                    counts.succeeded, counts.rows_affected
                )));
            let done = self.sg().store.migration_transition(&params).await;
            if done.is_ok() {
                self.sg().store.table_lease_release(m.id).await?;
            }
            done
        } else {
            let reason = format!(
                "{} job{} failed after {MAX_ATTEMPTS} attempts",
                counts.failed,
                if counts.failed == 1 { "" } else { "s" }
            );
            self.fail_migration(
                &m,
                Failure::new(FailureClass::JobsFailed, reason.clone()),
                reason,
            )
            .await
        };
        match result {
            Ok(m) => Ok(StepOutcome::Completed {
                migration: Box::new(m),
            }),
            Err(Error::Conflict { .. }) => Ok(StepOutcome::Waiting { migration_id: m.id }),
            Err(e) => Err(e),
        }
    }
}

/// What a job's sub-batches did, for its metrics.
#[derive(Debug, Default, Clone)]
pub(super) struct Tally {
    sub_batches: u64,
    rows: u64,
    slowest_ms: u64,
    /// The newest [`METRICS_KEPT`] sub-batches.
    recent: Vec<serde_json::Value>,
}

/// A key in a job's metrics: the value itself for a one-column key (as before keys were
/// typed), the array for a composite one.
fn metric_key(key: &Key) -> serde_json::Value {
    match key.values() {
        [v] => v.clone(),
        values => serde_json::Value::Array(values.to_vec()),
    }
}

impl Tally {
    pub(super) fn record(&mut self, start: &Key, end: &Key, rows: u64, took: Duration) {
        let ms = took.as_millis() as u64;
        self.sub_batches += 1;
        self.rows += rows;
        self.slowest_ms = self.slowest_ms.max(ms);
        if self.recent.len() == METRICS_KEPT {
            self.recent.remove(0);
        }
        self.recent.push(
            json!({"start": metric_key(start), "end": metric_key(end), "rows": rows, "ms": ms}),
        );
    }

    pub(super) fn metrics(&self, duration: Duration, sub_batch_size: i64) -> serde_json::Value {
        json!({
            "duration_ms": duration.as_millis() as u64,
            "sub_batches": self.sub_batches,
            "rows": self.rows,
            "slowest_sub_batch_ms": self.slowest_ms,
            "sub_batch_size": sub_batch_size,
            "recent": self.recent,
        })
    }
}
