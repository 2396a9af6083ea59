//! Sizes: GitLab's batch optimizer (rows-weighted), the sub-batch tuner's log rows, and the
//! shrink after a lock or statement timeout.

use super::*;

impl WorkerLoop {
    /// GitLab's optimizer over the last 20 succeeded jobs, weighted by rows affected and
    /// capped by the slowest cost per row (see [`optimizer::next_batch_size_by_rows`]); off at
    /// interval 0, where only the sub-batch tuner runs. A change is logged as `resize`.
    pub(super) async fn optimize(&self, m: &Migration) -> Result<()> {
        if m.interval.is_zero() {
            return Ok(());
        }
        let jobs = self
            .sg()
            .store
            .job_recent_succeeded(m.id, optimizer::SAMPLE_JOBS as i64)
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
        let Some(resize) = optimizer::next_batch_size_by_rows(
            m.batch_size,
            &samples,
            m.interval,
            m.max_batch_size,
        ) else {
            return Ok(());
        };
        // The batch never drops below the sub-batch: shrink that too when it must.
        let params = MigrationResizeParams {
            migration_id: m.id,
            batch_size: resize.batch_size,
            sub_batch_size: m.sub_batch_size.min(resize.batch_size),
            reason: format!("optimizer: {}", resize.reason),
            actor: self.name.clone(),
        };
        tracing::info!(migration = m.id, reason = %params.reason, "batch size changed");
        self.sg().store.migration_resize(&params).await?;
        Ok(())
    }

    /// The sub-batch tuner's decisions in the migration's log: a fixed cost it found, and any
    /// size it reached a factor of two or more away from the last one logged.
    pub(super) async fn log_tuner(&mut self, m: &Migration, run: &JobRun) -> Result<()> {
        if m.target_sub_batch_ms <= 0 {
            return Ok(());
        }
        let tuned = run.job.sub_batch_size;
        let logged = *self
            .logged_sub_batch
            .entry(m.id)
            .or_insert(m.sub_batch_size);
        let reason = match &run.tuner_found {
            Some(found) => format!("tuner: sub-batch size {logged} -> {tuned}: {found}"),
            None if tuned >= 2 * logged || 2 * tuned <= logged => {
                let slowest = run
                    .job
                    .metrics
                    .get("slowest_sub_batch_ms")
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or(0);
                format!(
                    "tuner: sub-batch size {logged} -> {tuned}: sub-batches aimed at {} ms (slowest of job {} took {slowest} ms)",
                    m.target_sub_batch_ms, run.job.id
                )
            }
            None => return Ok(()),
        };
        // The batch size as it is now: the optimizer may have just changed it.
        let Some(current) = self.sg().store.migration_get(m.id).await? else {
            return Ok(());
        };
        let params = MigrationResizeParams {
            migration_id: m.id,
            batch_size: current.batch_size,
            sub_batch_size: tuned.min(current.batch_size),
            reason,
            actor: self.name.clone(),
        };
        tracing::info!(migration = m.id, reason = %params.reason, "sub-batch size logged");
        self.sg().store.migration_resize(&params).await?;
        self.logged_sub_batch.insert(m.id, tuned);
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
        let Some(current) = self.sg().store.migration_get(m.id).await? else {
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
        };
        tracing::info!(migration = m.id, reason = %params.reason, "batch size shrunk after a timeout");
        self.sg().store.migration_resize(&params).await?;
        Ok(())
    }
}
