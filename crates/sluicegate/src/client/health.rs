//! The [`Sluicegate`] handle's health readings: the protections that are off for a table's
//! settings, and every indicator of a migration now, as a worker would judge them.

use std::time::Duration;

use crate::error::Result;
use crate::health::{self, HealthSettings, LatencyTracker, Reading, WalRate};
use crate::ident::TableName;
use crate::model::Migration;
use crate::Sluicegate;

impl Sluicegate {
    /// The protections that are off for a migration on `table` with `settings`, read now from
    /// one health sample (the probe included): every indicator not switched off that reads
    /// `unknown` for a reason an operator can fix, with the grant that would turn it on
    /// ([`health::protections_off`]). What needs more samples (WAL rate, latency) is not in it.
    pub async fn protections_off(
        &self,
        table: &str,
        settings: &HealthSettings,
    ) -> Result<Vec<Reading>> {
        let table = TableName::parse(table)?;
        let sample = self
            .target()
            .health_sample(&table, settings.probe.as_deref())
            .await?;
        let readings = health::evaluate(&sample, settings, None, None);
        Ok(health::protections_off(&readings, settings)
            .into_iter()
            .cloned()
            .collect())
    }

    /// Every indicator's signal and reading for `migration` now, as a worker would judge them
    /// before its next job. Takes two samples a second apart for the WAL rate; sub-batch
    /// latency comes from the last jobs' recorded timings.
    pub async fn health(&self, migration: &Migration) -> Result<Vec<Reading>> {
        // Read on its own target only: this connection's database says nothing of another's.
        self.check_target(migration)?;
        let table = TableName::parse(&migration.table_name)?;
        let probe = migration.health.probe.as_deref();
        let mut wal = WalRate::default();
        let first = self.target().health_sample(&table, None).await?;
        wal.observe(first.wal_lsn);
        if first.wal_lsn.is_some() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let sample = self.target().health_sample(&table, probe).await?;
        let rate = wal.observe(sample.wal_lsn);
        let jobs = self.store().job_recent_succeeded(migration.id, 20).await?;
        let latency = LatencyTracker::from_jobs(&jobs);
        Ok(health::evaluate_while(
            &sample,
            &migration.health,
            rate,
            Some(&latency),
            migration.held_since.is_some(),
        ))
    }
}
