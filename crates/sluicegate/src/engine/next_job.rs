//! Getting a migration's next job: the health gate first (outside finalize), then a job over
//! a new key range (from the range read ahead when there is one) or, after a claim, a
//! pending, failed or abandoned job taken up again. Concurrent workers race through
//! compare-and-set; the loser looks again.

use chrono::Utc;

use super::migration_run::MigrationRun;
use super::step::Origin;
use super::{Mode, StepOutcome, WorkerLoop};
use crate::client::MAX_ATTEMPTS;
use crate::error::{Error, Result};
use crate::failure::{Failure, FailureClass};
use crate::health::HealthSample;
use crate::ident::TableName;
use crate::key::Lower;
use crate::model::{Job, Migration};
use crate::status::{JobStatus, MigrationStatus};
use crate::store::{JobCreateParams, JobCreated, JobRange, JobTransitionParams};

/// A migration's next job, or why there is none.
pub(super) enum NextJob {
    /// Run this job.
    Run(Box<Job>, Origin),
    /// No job: the gate said this (a hold).
    Said(StepOutcome),
    /// No job to be had now.
    None,
}

/// Why a look for a job goes round again, checked against the row read for it.
enum LookAgain {
    /// A creation compare-and-set lost: look again only if the range moved on.
    IfMoved(Option<Lower>),
    /// Taking a job up lost: look again unless the migration was held meanwhile.
    UnlessHeld,
    /// Look again.
    Always,
}

/// What became of a job taken up again.
pub(super) enum Retaken {
    Running(Box<Job>),
    /// Someone else moved it, or its attempts ran out: look again.
    Gone,
    /// It could not be started: look again unless held.
    Refused,
}

impl WorkerLoop {
    /// `m`'s next job. `claimed`: the migration was just claimed (retries count, and no job
    /// left to start means it may be complete); else this loop continues it from its next key,
    /// with what was read ahead while its last job ran.
    pub(super) async fn next_job(
        &mut self,
        run: &mut MigrationRun,
        m: &Migration,
        table: &TableName,
        mode: Mode,
        claimed: bool,
    ) -> Result<NextJob> {
        let store = &self.sluicegate().store;
        // Health protects the start of jobs; with none left to start, the migration ends
        // without waiting on it (an autovacuum its own last job set off, say).
        if claimed
            && m.next_start.is_none()
            && store
                .job_find_retriable(m.id, MAX_ATTEMPTS)
                .await?
                .is_none()
        {
            return Ok(NextJob::None);
        }
        let ahead = match run.ahead.take() {
            Some(p) if !claimed && Some(&p.start) == m.next_start.as_ref() => p.wait().await,
            _ => None,
        };
        let (sample, range) = match ahead {
            Some(read) => (Some(read.sample), read.range.ok().flatten()),
            None => (None, None),
        };
        if mode == Mode::Normal {
            let sample = match sample {
                Some(sample) => sample?,
                None => self.health_sample(m, table).await?,
            };
            if let Some(said) = self.check_health(run, m, sample).await? {
                return Ok(NextJob::Said(said));
            }
        }
        if claimed {
            return Ok(match self.find_job(run, m, table).await? {
                Some((job, origin)) => NextJob::Run(Box::new(job), origin),
                None => NextJob::None,
            });
        }
        let Some(start) = m.next_start.clone() else {
            return Ok(NextJob::None);
        };
        let created = match range {
            Some((min, max)) => {
                let range = JobRange::Given { min, max };
                self.create_job_in(run, m, start, range).await?
            }
            None => self.create_job(run, m, table, start).await?,
        };
        Ok(match created {
            JobCreated::Created(job, then) => NextJob::Run(job, Origin::NewRange { then }),
            JobCreated::Exhausted | JobCreated::NotNow => NextJob::None,
        })
    }

    pub(super) async fn health_sample(
        &self,
        m: &Migration,
        table: &TableName,
    ) -> Result<HealthSample> {
        self.sluicegate()
            .target
            .health_sample(table, m.health.probe.as_deref())
            .await
    }

    /// The job to run now after a claim: a new range after the last one, or a pending,
    /// retriable or abandoned job (those first for a finalizing migration, whose finalizer
    /// may have died). The migration's row is read again only when a race was lost.
    async fn find_job(
        &self,
        run: &MigrationRun,
        m: &Migration,
        table: &TableName,
    ) -> Result<Option<(Job, Origin)>> {
        let store = &self.sluicegate().store;
        let mut m = m.clone();
        let mut again: Option<LookAgain> = None;
        for _ in 0..=100 {
            if let Some(why) = again.take() {
                let Some(now) = store.migration_get(m.id).await? else {
                    return Ok(None);
                };
                let stop = match why {
                    // Anything but another worker moving the range on (the interval, a pause,
                    // the table lease): not now.
                    LookAgain::IfMoved(before) => now.next_start == before,
                    // Held meanwhile (by another worker): no job of it starts now.
                    LookAgain::UnlessHeld => {
                        now.status == MigrationStatus::Active
                            && now.on_hold_until.is_some_and(|t| t > Utc::now())
                    }
                    LookAgain::Always => false,
                };
                if stop {
                    return Ok(None);
                }
                m = now;
            }
            if !matches!(
                m.status,
                MigrationStatus::Active | MigrationStatus::Finalizing
            ) {
                return Ok(None);
            }
            let retriable_first = m.status == MigrationStatus::Finalizing;
            let found = match m.next_start.clone() {
                Some(_) if !retriable_first => None,
                _ => store.job_find_retriable(m.id, MAX_ATTEMPTS).await?,
            };
            let job = match (found, m.next_start.clone()) {
                (Some(job), _) => job,
                (None, None) => return Ok(None),
                (None, Some(start)) => match self.create_job(run, &m, table, start).await? {
                    JobCreated::Created(job, then) => {
                        return Ok(Some((*job, Origin::NewRange { then })))
                    }
                    JobCreated::Exhausted => {
                        again = Some(LookAgain::Always);
                        continue;
                    }
                    JobCreated::NotNow => {
                        again = Some(LookAgain::IfMoved(m.next_start.clone()));
                        continue;
                    }
                },
            };
            match self.retake(job).await? {
                Retaken::Running(job) => return Ok(Some((*job, Origin::Retry))),
                Retaken::Gone => again = Some(LookAgain::Always),
                Retaken::Refused => again = Some(LookAgain::UnlessHeld),
            }
        }
        Err(Error::Conflict {
            what: format!("migration {} (too much contention for its next job)", m.id),
        })
    }

    /// Takes a pending, failed or abandoned job up again: one whose worker stopped renewing
    /// its lease is first recorded as failed (`WorkerLost`), then it runs under this loop.
    pub(super) async fn retake(&self, mut job: Job) -> Result<Retaken> {
        let store = &self.sluicegate().store;
        if job.status == JobStatus::Running {
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
                Err(Error::Conflict { .. }) => return Ok(Retaken::Gone),
                Err(e) => return Err(e),
            };
            if job.attempts >= MAX_ATTEMPTS {
                return Ok(Retaken::Gone);
            }
        }
        let params = JobTransitionParams::new(&job, JobStatus::Running, &self.name)?
            .with_lease(self.lease());
        match store.job_transition(&params).await {
            Ok(job) => Ok(Retaken::Running(Box::new(job))),
            Err(Error::Conflict { .. }) => Ok(Retaken::Refused),
            Err(e) => Err(e),
        }
    }

    /// Creates the migration's next job from `start`: in one statement with the keyset walk
    /// when the table is in the tracking database, else after finding the range on the target.
    async fn create_job(
        &self,
        run: &MigrationRun,
        m: &Migration,
        table: &TableName,
        start: Lower,
    ) -> Result<JobCreated> {
        // A Citus table is walked apart: Citus refuses the walk inside the tracking write.
        let range = if self.sluicegate().same_database && m.citus.is_none() {
            JobRange::Keyset {
                table: table.clone(),
                key: m.key.clone(),
                scope: m.scope.clone(),
                size: m.batch_size,
                statement_ms: m.statement_timeout_ms,
            }
        } else {
            let found = self
                .sluicegate()
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
                    .sluicegate()
                    .store
                    .migration_range_exhaust(m.id, &start)
                    .await? =>
                {
                    return Ok(JobCreated::Exhausted)
                }
                None => return Ok(JobCreated::NotNow),
            }
        };
        self.create_job_in(run, m, start, range).await
    }

    /// Creates the job over `range` if the migration's next key is still `start`.
    async fn create_job_in(
        &self,
        run: &MigrationRun,
        m: &Migration,
        start: Lower,
        range: JobRange,
    ) -> Result<JobCreated> {
        let params = self.job_create_params(m, start, range, run.sub_batch_size(m));
        self.sluicegate().store.job_create(&params).await
    }

    /// What creates a job of `m` over `range`, if its next key is still `start`.
    pub(super) fn job_create_params(
        &self,
        m: &Migration,
        start: Lower,
        range: JobRange,
        sub_batch_size: i64,
    ) -> JobCreateParams {
        JobCreateParams {
            migration_id: m.id,
            expected_next: start,
            range,
            batch_size: m.batch_size,
            sub_batch_size: sub_batch_size.min(m.batch_size),
            pause_ms: m.pause_ms,
            worker: self.name.clone(),
            lease: self.lease(),
            lane: None,
        }
    }
}
