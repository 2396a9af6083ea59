//! Sizes in the migration's row and log: GitLab's batch optimizer (rows-weighted), the
//! sub-batch tuner's `resize` rows, and the shrink after a lock or statement timeout.

use std::time::Duration;

use super::migration_run::MigrationRun;
use super::WorkerLoop;
use crate::error::Result;
use crate::failure::Failure;
use crate::model::{Job, Migration};
use crate::optimizer;
use crate::store::MigrationResizeParams;

impl WorkerLoop {
    /// GitLab's optimizer over the last 20 succeeded jobs, weighted by rows affected and
    /// capped by the slowest cost per row (see [`optimizer::next_batch_size_by_rows`]); at
    /// interval 0 it aims jobs at [`optimizer::FULL_SPEED_JOB_TIME`] and only grows them. A
    /// change is a compare-and-set on the batch size (loops that saw the same jobs make one),
    /// logged as `resize`; the migration as resized is returned, for this loop to go on with.
    pub(super) async fn optimize(
        &self,
        run: &mut MigrationRun,
        m: &Migration,
    ) -> Result<Option<Migration>> {
        // At full speed, jobs grow toward a target time of their own (never shrink: nothing
        // waits on them but their own bookkeeping), looked at after every few jobs of this
        // loop (reading the jobs is one more statement), and not at all when the migration's
        // ceiling is its batch.
        let full_speed = m.interval.is_zero();
        if full_speed {
            let pinned = m.max_batch_size.is_some_and(|max| max <= m.batch_size);
            run.jobs_since_look += 1;
            if pinned || run.jobs_since_look < optimizer::FULL_SPEED_SAMPLE_JOBS {
                return Ok(None);
            }
            run.jobs_since_look = 0;
        }
        let aim = match full_speed {
            true => optimizer::FULL_SPEED_JOB_TIME,
            false => m.interval,
        };
        let sample_jobs = match full_speed {
            true => optimizer::FULL_SPEED_SAMPLE_JOBS,
            false => optimizer::SAMPLE_JOBS,
        };
        let jobs = self
            .sluicegate()
            .store
            .job_recent_succeeded(m.id, sample_jobs as i64)
            .await?;
        let samples: Vec<optimizer::JobSample> = jobs
            .iter()
            .filter_map(|j| {
                let ms = (j.finished_at? - j.started_at?).num_milliseconds();
                Some(optimizer::JobSample {
                    duration: Duration::from_millis(ms.max(0) as u64),
                    rows: j.rows_affected,
                })
            })
            .collect();
        let resize = match full_speed {
            true => {
                optimizer::next_batch_size_at_full_speed(m.batch_size, &samples, m.max_batch_size)
            }
            false => {
                optimizer::next_batch_size_by_rows(m.batch_size, &samples, aim, m.max_batch_size)
            }
        };
        let Some(resize) = resize else {
            return Ok(None);
        };
        let resize = match full_speed {
            true => optimizer::Resize {
                reason: format!(
                    "{} (at full speed, jobs are grown toward {} each)",
                    resize.reason.replace("the interval", "the job target"),
                    humantime::format_duration(aim)
                ),
                ..resize
            },
            false => resize,
        };
        // The batch never drops below the sub-batch: shrink that too when it must.
        let params = MigrationResizeParams {
            migration_id: m.id,
            batch_size: resize.batch_size,
            sub_batch_size: m.sub_batch_size.min(resize.batch_size),
            reason: format!("optimizer: {}", resize.reason),
            actor: self.name.clone(),
            expected_batch_size: Some(m.batch_size),
        };
        let resized = self.sluicegate().store.migration_resize(&params).await?;
        if resized.is_some() {
            tracing::info!(migration = m.id, reason = %params.reason, "batch size changed");
        }
        Ok(resized)
    }

    /// The sub-batch tuner's news after `job` in the migration's log, as a `resize` row:
    /// a fixed cost found or gone, or a size a factor of two or more from the last one logged
    /// ([`super::tuner::SubBatchTuner::log_row`]).
    pub(super) async fn log_tuner(
        &self,
        run: &mut MigrationRun,
        m: &Migration,
        job: &Job,
    ) -> Result<()> {
        if m.target_sub_batch_ms <= 0 {
            return Ok(());
        }
        let tuned = job.sub_batch_size;
        let Some(reason) = run.tuner.log_row(job.id, tuned, m.target_sub_batch_ms) else {
            return Ok(());
        };
        // The batch size as it is now: the optimizer may have just changed it.
        let Some(current) = self.sluicegate().store.migration_get(m.id).await? else {
            return Ok(());
        };
        let params = MigrationResizeParams {
            migration_id: m.id,
            batch_size: current.batch_size,
            sub_batch_size: tuned.min(current.batch_size),
            reason,
            actor: self.name.clone(),
            expected_batch_size: None,
        };
        tracing::info!(migration = m.id, reason = %params.reason, "sub-batch size logged");
        if let Some(resized) = self.sluicegate().store.migration_resize(&params).await? {
            run.stored(resized.sub_batch_size);
        }
        Ok(())
    }

    /// A lock or statement timeout shrinks the migration's batch and sub-batch at once
    /// (×0.75), not after twenty jobs, and logs why.
    pub(super) async fn shrink_after_timeout(
        &self,
        m: &Migration,
        job: &Job,
        failure: &Failure,
    ) -> Result<()> {
        let Some(current) = self.sluicegate().store.migration_get(m.id).await? else {
            return Ok(());
        };
        let (batch, sub) = optimizer::after_timeout(current.batch_size, current.sub_batch_size);
        if (batch, sub) == (current.batch_size, current.sub_batch_size) {
            return Ok(());
        }
        let params = MigrationResizeParams {
            migration_id: m.id,
            batch_size: batch,
            sub_batch_size: sub,
            reason: format!(
                "{} in job {}: batch size {} -> {batch}, sub-batch size {} -> {sub}",
                failure.class, job.id, current.batch_size, current.sub_batch_size
            ),
            actor: self.name.clone(),
            expected_batch_size: None,
        };
        tracing::info!(migration = m.id, reason = %params.reason, "batch size shrunk after a timeout");
        self.sluicegate().store.migration_resize(&params).await?;
        Ok(())
    }
}
