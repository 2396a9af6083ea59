//! How jobs and migrations end beyond a job's own run: what follows a failed job (split,
//! auto-fail), failing a migration on an error of its own, finishing (or failing) it when no
//! job is left, and giving its table lease back when it no longer runs.

use super::{migration_failure, StepOutcome, WorkerLoop, AUTO_FAIL_MIN_JOBS};
use crate::client::MAX_ATTEMPTS;
use crate::error::{Error, Result};
use crate::failure::{Failure, FailureClass};
use crate::ident::TableName;
use crate::key::Lower;
use crate::model::{Job, Migration};
use crate::status::{JobStatus, MigrationEvent, MigrationStatus};
use crate::store::{JobSplitParams, JobTransitionParams, MigrationTransitionParams, Target};

/// Which migrations [`WorkerLoop::fail_current`] fails.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Failable {
    /// Any the state machine lets fail.
    Any,
    /// Active ones only (a finalizing migration runs its failed jobs again instead).
    Active,
}

impl WorkerLoop {
    /// An error that belongs to migration `migration_id` (see [`migration_failure`]) fails it
    /// instead of stopping the worker; anything else passes through.
    pub(super) async fn fail_on_own_error(
        &self,
        migration_id: i64,
        e: Error,
    ) -> Result<StepOutcome> {
        let Some(failure) = migration_failure(&e) else {
            return Err(e);
        };
        tracing::warn!(migration = migration_id, class = %failure.class, message = %failure.message, "the migration failed on an error of its own");
        let reason = format!("{}: {}", failure.class, failure.message);
        Ok(
            match self
                .fail_current(migration_id, failure, reason, Failable::Any)
                .await?
            {
                Some(m) => StepOutcome::Completed {
                    migration: Box::new(m),
                },
                None => StepOutcome::Waiting { migration_id },
            },
        )
    }

    /// Fails the migration as it is stored now, if it is `failable`; `None` when it is not,
    /// or another worker moved it first.
    async fn fail_current(
        &self,
        migration_id: i64,
        failure: Failure,
        reason: String,
        failable: Failable,
    ) -> Result<Option<Migration>> {
        let current = self.sluicegate().store.migration_get(migration_id).await?;
        let Some(current) = current.filter(|c| match failable {
            Failable::Any => c.status.after(MigrationEvent::Fail).is_some(),
            Failable::Active => c.status == MigrationStatus::Active,
        }) else {
            return Ok(None);
        };
        match self.fail_migration(&current, failure, reason).await {
            Ok(m) => Ok(Some(m)),
            Err(Error::Conflict { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// After a failed job: split it when timeouts exhausted its attempts, and fail the
    /// migration when too many of its jobs failed.
    pub(super) async fn after_failure(
        &self,
        m: &Migration,
        (target, table): (&dyn Target, &TableName),
        job: &Job,
        failure: &Failure,
    ) -> Result<()> {
        if failure.is(FailureClass::RangeEscaped) {
            // No retry can make a statement that reaches past its range safe: the migration
            // stops here, its sub-batch rolled back, before a second one runs.
            let reason = format!("job {}: {}", job.id, failure.message);
            self.fail_current(m.id, failure.clone(), reason, Failable::Any)
                .await?;
            return Ok(());
        }
        if failure.is_timeout() {
            self.shrink_after_timeout(m, job, failure).await?;
            if job.attempts >= MAX_ATTEMPTS {
                self.split(m, (target, table), job).await?;
            }
        }
        let counts = self
            .sluicegate()
            .store
            .job_counts(m.id, MAX_ATTEMPTS)
            .await?;
        if counts.total() >= AUTO_FAIL_MIN_JOBS && counts.failed * 2 > counts.total() {
            let reason = format!(
                "{} of {} jobs failed (more than half, with at least {AUTO_FAIL_MIN_JOBS} jobs)",
                counts.failed,
                counts.total()
            );
            let failure = Failure::new(FailureClass::TooManyFailedJobs, reason.clone());
            self.fail_current(m.id, failure, reason, Failable::Active)
                .await?;
        }
        Ok(())
    }

    /// Splits a job that kept timing out: from its cursor on (the keys before it are done),
    /// the rest is cut in two at the middle of what remains, however little that is — half of
    /// the batch size from the cursor when that much is left, else half of it again, down to
    /// one key. The first half keeps the cursor; the second starts at the next existing key.
    /// Nothing to split when one key or none remains.
    async fn split(
        &self,
        m: &Migration,
        (target, table): (&dyn Target, &TableName),
        job: &Job,
    ) -> Result<()> {
        let from = match &job.cursor {
            Some(c) => Lower::After(c.clone()),
            None => Lower::From(job.min_value.clone()),
        };
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
        match self.sluicegate().store.job_split(&params).await {
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

    /// Fails `m` (its log row with `reason`) and gives its table lease back.
    pub(super) async fn fail_migration(
        &self,
        m: &Migration,
        failure: Failure,
        reason: String,
    ) -> Result<Migration> {
        let params = MigrationTransitionParams::new(m, MigrationEvent::Fail, &self.name)?
            .with_reason(Some(reason))
            .with_failure(failure);
        let m = self
            .sluicegate()
            .store
            .migration_transition(&params)
            .await?;
        self.sluicegate().store.table_lease_release(m.id).await?;
        Ok(m)
    }

    /// No job left to start: finish (or fail) the migration when nothing is pending or
    /// running any more.
    pub(super) async fn complete_if_done(&self, m: &Migration) -> Result<StepOutcome> {
        // An unreadable row is failed by the next claim, never finished on its placeholders.
        let Some(m) =
            (self.sluicegate().store.migration_get(m.id).await?).filter(|m| m.unreadable.is_none())
        else {
            return Ok(StepOutcome::Idle);
        };
        let runnable = matches!(
            m.status,
            MigrationStatus::Active | MigrationStatus::Finalizing
        );
        let counts = self
            .sluicegate()
            .store
            .job_counts(m.id, MAX_ATTEMPTS)
            .await?;
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
        // `--verify`: checked after the last job; a violation fails it instead.
        let unverified = match counts.failed {
            0 => self.verify_before_finish(&m).await?,
            _ => None,
        };
        let result = if let Some(failure) = unverified {
            let reason = failure.message.clone();
            self.fail_migration(&m, failure, reason).await
        } else if counts.failed == 0 {
            let params = MigrationTransitionParams::new(&m, MigrationEvent::Finish, &self.name)?
                .with_reason(Some(format!(
                    "all {} jobs succeeded, {} rows affected",
                    counts.succeeded, counts.rows_affected
                )));
            let done = self.sluicegate().store.migration_transition(&params).await;
            if done.is_ok() {
                self.sluicegate().store.table_lease_release(m.id).await?;
            }
            done
        } else {
            let reason = format!(
                "{} job{} failed after {MAX_ATTEMPTS} attempts",
                counts.failed,
                if counts.failed == 1 { "" } else { "s" }
            );
            let failure = Failure::new(FailureClass::JobsFailed, reason.clone());
            self.fail_migration(&m, failure, reason).await
        };
        match result {
            Ok(m) => Ok(StepOutcome::Completed {
                migration: Box::new(m),
            }),
            Err(Error::Conflict { .. }) => Ok(StepOutcome::Waiting { migration_id: m.id }),
            Err(e) => Err(e),
        }
    }

    /// Gives the table lease back when the migration no longer runs (paused, cancelled,
    /// failed): the store keeps it while any of its jobs still runs.
    pub(super) async fn release_if_stopped(&self, m: &Migration) -> Result<()> {
        let current = self.sluicegate().store.migration_get(m.id).await?;
        if current.is_some_and(|c| {
            !matches!(
                c.status,
                MigrationStatus::Active | MigrationStatus::Finalizing
            )
        }) {
            self.sluicegate().store.table_lease_release(m.id).await?;
        }
        Ok(())
    }

    /// `finalize` retries every job whose attempts ran out: they go back to `pending`.
    pub(super) async fn reset_exhausted(&self, m: &Migration) -> Result<()> {
        for job in self
            .sluicegate()
            .store
            .job_list(m.id, Some(JobStatus::Failed))
            .await?
        {
            let params = JobTransitionParams::new(&job, JobStatus::Pending, &self.name)?;
            match self.sluicegate().store.job_transition(&params).await {
                Ok(_) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
