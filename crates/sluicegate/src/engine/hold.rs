//! Health before a job: the verdict, holds (started, re-checked, released), and slowing down
//! as a limit nears.

use super::*;

impl WorkerLoop {
    /// Every indicator's verdict on `sample` for `m` (with the release hysteresis while it is
    /// on hold), with this loop's WAL rate (the sample fed to it) and its own sub-batch
    /// timings of `m`; and how near a limit it is ([`health::pressure`]).
    pub(super) fn judge(
        &mut self,
        m: &Migration,
        sample: &HealthSample,
    ) -> (Vec<health::Reading>, Option<(f64, String)>) {
        let rate = self.wal_rate.observe(sample.wal_lsn);
        let latency = self.latency.get(&m.id);
        let holding = m.held_since.is_some();
        let readings = health::evaluate_while(sample, &m.health, rate, latency, holding);
        let pressure = health::pressure(sample, &m.health, rate, latency);
        (readings, pressure)
    }

    /// Samples the target's health before a job. A stop starts a hold (one `hold` row with the
    /// indicator, reading and threshold; `on_hold_until` = the next re-check, `--hold` away),
    /// or, when a hold is on, moves its re-check on with no row. Every indicator normal on a
    /// held migration ends the hold (a `release` row: how long, what cleared). Near a limit
    /// the worker waits before the job ([`health::SlowDown`]), and logs a
    /// `throttle` row when that changes. `unknown` readings are logged at debug level.
    pub(super) async fn check_health(
        &mut self,
        m: &Migration,
        sample: HealthSample,
    ) -> Result<Option<StepOutcome>> {
        let (readings, pressure) = self.judge(m, &sample);
        for r in readings.iter().filter(|r| r.signal == Signal::Unknown) {
            // A protection that is off is said once per worker and indicator, loudly, with
            // the grant that would turn it on.
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
        if let Some(stop) = health::first_stop(&readings) {
            if stop.indicator.is_paced() && m.held_since.is_none() {
                // After the hold, go on more slowly than the pace that tripped it (once per
                // hold: its re-checks do not slow it further).
                let job = self.job_time(m.id);
                self.slow_down
                    .entry(m.id)
                    .or_default()
                    .after_stop(job, Instant::now());
            }
            if stop.indicator == health::Indicator::SubBatchLatency {
                // The drift is this loop's own evidence, and no job runs while the hold lasts
                // to renew it: start it afresh, or the hold would never end.
                if let Some(tracker) = self.latency.get_mut(&m.id) {
                    tracker.forget_recent();
                }
            }
            let reason = stop.reason();
            return self.hold(m, stop.indicator, reason).await.map(Some);
        }
        if let Some(since) = m.held_since {
            self.release(m, since, &readings).await?;
        }
        self.throttle(m, pressure).await?;
        Ok(None)
    }

    /// How long this loop's last job of migration `id` took (100 ms before any).
    fn job_time(&self, id: i64) -> Duration {
        self.job_time
            .get(&id)
            .copied()
            .unwrap_or(Duration::from_millis(100))
    }

    /// Starts a hold, or moves the one in progress on to its next re-check.
    pub(super) async fn hold(
        &mut self,
        m: &Migration,
        indicator: health::Indicator,
        reason: String,
    ) -> Result<StepOutcome> {
        let store = &self.sg().store;
        let started = match m.held_since {
            Some(_) => None,
            None => {
                let params = MigrationTransitionParams::new(m, MigrationEvent::Hold, &self.name)?
                    .with_reason(Some(reason.clone()))
                    .holding_for(indicator, m.health.hold());
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
    pub(super) async fn release(
        &mut self,
        m: &Migration,
        since: chrono::DateTime<Utc>,
        readings: &[health::Reading],
    ) -> Result<()> {
        let store = &self.sg().store;
        // What held it: the indicator named by the hold's log row, and its reading now.
        let log = store.migration_transition_list(m.id).await?;
        let cause = log
            .iter()
            .rev()
            .find(|r| r.event == MigrationEvent::Hold)
            .and_then(|r| r.indicator);
        let cleared = cause
            .and_then(|c| readings.iter().find(|r| r.indicator == c))
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

    /// Near a limit, waits before the next job ([`health::SlowDown`]); logs a `throttle` row
    /// when the pause starts, ends, or changes by a factor of two or more.
    pub(super) async fn throttle(
        &mut self,
        m: &Migration,
        pressure: Option<(f64, String)>,
    ) -> Result<()> {
        let job = self.job_time(m.id);
        let pause = self.slow_down.entry(m.id).or_default().observe(
            pressure.as_ref().map(|p| p.0),
            job,
            Instant::now(),
        );
        let why = match &pressure {
            Some((_, why)) => Some(why.clone()),
            // Easing back in after a hold, or fading out under half of every limit.
            None => {
                Some("easing back in: every measured indicator under half its limit".to_owned())
            }
        };
        let pause_ms = pause.as_millis() as i64;
        let known = *self.throttle_ms.entry(m.id).or_insert(m.throttle_pause_ms);
        let changed = match (known, pause_ms) {
            (0, 0) => false,
            (0, _) | (_, 0) => true,
            (a, b) => b >= 2 * a || 2 * b <= a,
        };
        if changed {
            let log = match (&pressure, &why) {
                (Some((share, why)), _) if pause_ms > 0 => format!(
                    "slowing down: {pause_ms} ms between jobs ({why}; {:.0}% of the limit)",
                    share * 100.0
                ),
                (None, Some(why)) if pause_ms > 0 => {
                    format!("slowing down: {pause_ms} ms between jobs ({why})")
                }
                _ => "full speed again: every measured indicator under half its limit".into(),
            };
            let params = MigrationThrottleParams {
                migration_id: m.id,
                pause_ms,
                reason: why.filter(|_| pause_ms > 0),
                log,
                actor: self.name.clone(),
            };
            self.sg().store.migration_throttle(&params).await?;
            self.throttle_ms.insert(m.id, pause_ms);
            tracing::info!(migration = m.id, pause_ms, "throttle changed");
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }
}
