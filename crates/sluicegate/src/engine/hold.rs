//! Acting on the health gate before a job: holds (started, re-checked, released) and the
//! `throttle` rows and pauses of slowing down as a limit nears.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::gate::{Pace, Verdict};
use super::migration_run::MigrationRun;
use super::{StepOutcome, WorkerLoop};
use crate::error::{Error, Result};
use crate::health::{HealthSample, Reading, Signal};
use crate::model::Migration;
use crate::status::MigrationEvent;
use crate::store::{MigrationThrottleParams, MigrationTransitionParams};

impl WorkerLoop {
    /// Samples the target's health before a job and acts on the gate's verdict. A stop starts
    /// a hold (one `hold` row with the indicator, reading and threshold; `on_hold_until` = the
    /// next re-check, `--hold` away), or, when a hold is on, moves its re-check on with no
    /// row. Every indicator normal on a held migration ends the hold (a `release` row: how
    /// long, what cleared). Near a limit the worker waits before the job, and logs a
    /// `throttle` row when that changes. `unknown` readings are logged at debug level.
    /// `Some` when no job may start now.
    pub(super) async fn check_health(
        &mut self,
        run: &mut MigrationRun,
        m: &Migration,
        sample: HealthSample,
    ) -> Result<Option<StepOutcome>> {
        let rate = self.wal_rate.observe(sample.wal_lsn);
        let (readings, pressure) = run.readings(m, &sample, rate);
        self.say_unknown(m, &readings);
        match run.gate(m.held_since, readings, pressure, Instant::now()) {
            Verdict::Hold { reason } => self.hold(m, reason).await.map(Some),
            Verdict::Release {
                since,
                readings,
                pace,
            } => {
                self.release(m, since, &readings).await?;
                self.keep_pace(run, m, pace).await?;
                Ok(None)
            }
            Verdict::Go { pace } => {
                self.keep_pace(run, m, pace).await?;
                Ok(None)
            }
        }
    }

    /// A protection that is off is said once per worker and indicator, loudly, with the grant
    /// that would turn it on; other unknown readings at debug level.
    fn say_unknown(&self, m: &Migration, readings: &[Reading]) {
        for r in readings.iter().filter(|r| r.signal == Signal::Unknown) {
            let key = format!(
                "{}: {}",
                r.indicator,
                r.grant.as_deref().unwrap_or(&r.reading)
            );
            let first = r.is_protection_off()
                && self.worker.warned.lock().expect("not poisoned").insert(key);
            if first {
                tracing::warn!(indicator = %r.indicator, reading = %r.reading, grant = r.grant.as_deref().unwrap_or("-"), "health indicator unreadable: it reads unknown and never holds (--require-health would hold)");
            } else {
                tracing::debug!(migration = m.id, indicator = %r.indicator, reading = %r.reading, "health indicator unknown");
            }
        }
    }

    /// Starts a hold, or moves the one in progress on to its next re-check.
    async fn hold(&self, m: &Migration, reason: String) -> Result<StepOutcome> {
        let store = &self.sluicegate().store;
        let started = match m.held_since {
            Some(_) => None,
            None => {
                let params = MigrationTransitionParams::new(m, MigrationEvent::Hold, &self.name)?
                    .with_reason(Some(reason.clone()))
                    .holding_for(m.health.hold());
                match store.migration_transition(&params).await {
                    Ok(held) => Some(held),
                    // Another worker started it (or it was paused): go on with theirs.
                    Err(Error::Conflict { .. }) => None,
                    Err(e) => return Err(e),
                }
            }
        };
        let held = match started {
            Some(held) => {
                tracing::warn!(migration = m.id, name = %m.name, %reason, "migration on hold");
                held
            }
            None => match store.migration_hold_extend(m.id, m.health.hold()).await? {
                Some(held) => held,
                None => return Ok(StepOutcome::Waiting { migration_id: m.id }),
            },
        };
        // The table lease is kept: jobs of this migration other loops are running renew it,
        // and no other migration of the table may start beside them. Unrenewed, it expires.
        Ok(StepOutcome::Held {
            migration: Box::new(held),
            reason,
        })
    }

    /// Ends the hold in progress: every indicator is normal at this re-check.
    async fn release(
        &self,
        m: &Migration,
        since: DateTime<Utc>,
        readings: &[Reading],
    ) -> Result<()> {
        let store = &self.sluicegate().store;
        // What held it: the indicator named by the hold's log row, and its reading now.
        let log = store.migration_transition_list(m.id).await?;
        let cause = log
            .iter()
            .rev()
            .find(|r| r.event == MigrationEvent::Hold)
            .and_then(|r| r.reason.as_deref())
            .and_then(|r| r.split_once(':'))
            .map(|(indicator, _)| indicator.to_owned());
        let cleared = cause
            .as_deref()
            .and_then(|c| readings.iter().find(|r| r.indicator.as_str() == c))
            .map(|r| format!("; {}: {}", r.indicator, r.reading))
            .unwrap_or_default();
        let held_for = (Utc::now() - since).to_std().unwrap_or_default();
        let reason = format!(
            "held {}; every indicator normal again{cleared}",
            humantime::format_duration(Duration::from_millis(held_for.as_millis() as u64))
        );
        let params = MigrationTransitionParams::new(m, MigrationEvent::Release, &self.name)?
            .with_reason(Some(reason.clone()));
        match store.migration_transition(&params).await {
            Ok(_) => {
                tracing::info!(migration = m.id, name = %m.name, %reason, "hold ended");
                Ok(())
            }
            // Another worker ended it, or the migration moved on.
            Err(Error::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes the pace's `throttle` row, if it has one, and waits its pause.
    async fn keep_pace(&self, run: &mut MigrationRun, m: &Migration, pace: Pace) -> Result<()> {
        if let Some(row) = pace.row {
            let params = MigrationThrottleParams {
                migration_id: m.id,
                pause_ms: row.pause_ms,
                reason: row.reason,
                log: row.log,
                actor: self.name.clone(),
            };
            self.sluicegate().store.migration_throttle(&params).await?;
            run.throttle_ms = row.pause_ms;
            tracing::info!(
                migration = m.id,
                pause_ms = row.pause_ms,
                "throttle changed"
            );
        }
        if !pace.pause.is_zero() {
            tokio::time::sleep(pace.pause).await;
        }
        Ok(())
    }
}
