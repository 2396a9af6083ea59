//! Deploy gates (`sluicegate ensure`, GitLab's
//! `ensure_batched_background_migration_is_finished`): where each migration a deploy depends
//! on stands — finished, still running, failed or cancelled, not queued — with a one-line
//! reason and, for a failed one, its failures grouped by class and message; and, asked to
//! finalize, what is left of each is run inline (a failed one retried first, its failed jobs
//! with fresh attempts), failing loudly when it cannot.

use std::time::Duration;

use serde::Serialize;

use crate::client::Sluicegate;
use crate::error::{Error, Result};
use crate::model::Migration;
use crate::status::{MigrationEvent, MigrationStatus};

use super::WorkerOptions;

/// Where a migration a deploy depends on stands. Ordered from best to worst: a set of
/// migrations stands as its worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    /// Finished: its work is done.
    Finished,
    /// Active, paused or finalizing: its work goes on (or waits).
    Running,
    /// Failed, or cancelled: its work will not end without someone.
    Failed,
    /// No migration of this name (or id) was ever queued.
    NotQueued,
}

/// Failed attempts of a migration's jobs with one exception class and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureGroup {
    /// The exception class (`StatementTimeout`, ...).
    pub class: String,
    /// The message.
    pub message: String,
    /// How many failed attempts said it.
    pub attempts: usize,
    /// How many jobs they were of.
    pub jobs: usize,
}

/// One migration's standing, as `ensure` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct EnsureReport {
    /// The name (or id) asked for.
    pub name: String,
    /// Where it stands.
    pub standing: Standing,
    /// Its status, when it is queued.
    pub status: Option<MigrationStatus>,
    /// Its id, when it is queued.
    pub migration_id: Option<i64>,
    /// Why, in one line.
    pub reason: String,
    /// For a failed one: its failures, most frequent first.
    pub failures: Vec<FailureGroup>,
}

/// How [`Sluicegate::ensure`] goes about it.
#[derive(Debug, Clone, Default)]
pub struct EnsureOptions {
    /// Run what is left of each migration not finished, inline: a failed one is retried
    /// first (its failed jobs with fresh attempts), then finalized.
    pub finalize: bool,
    /// Without `finalize`, wait up to this long for the migrations to finish (workers run
    /// them elsewhere); with it, finalize for at most this long. `None`: look once (without
    /// `finalize`), or finalize until done.
    pub timeout: Option<Duration>,
    /// Who asks (written to the logs of what `finalize` changes).
    pub actor: String,
}

/// How often a waiting `ensure` looks again.
const POLL: Duration = Duration::from_millis(200);

impl Sluicegate {
    /// Where the migration `name` (a name or an id) stands now, read only.
    pub async fn standing(&self, name: &str) -> Result<EnsureReport> {
        match self.migration(name).await {
            Ok(m) => self.report(name, &m).await,
            Err(Error::MigrationNotFound(_)) => Ok(EnsureReport {
                name: name.to_owned(),
                standing: Standing::NotQueued,
                status: None,
                migration_id: None,
                reason: "not queued".into(),
                failures: Vec::new(),
            }),
            Err(e) => Err(e),
        }
    }

    /// A deploy gate over `names`: where each stands, after waiting for them (`timeout`) or
    /// running what is left of them inline (`finalize`), as `options` says. A migration not
    /// queued is reported and nothing is run. `shutdown` (a signal) stops a finalize at the
    /// next sub-batch boundary, as `finalize` does; the migration is then reported running.
    pub async fn ensure(
        &self,
        names: &[String],
        options: &EnsureOptions,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<Vec<EnsureReport>> {
        let mut reports = Vec::with_capacity(names.len());
        for name in names {
            reports.push(self.standing(name).await?);
        }
        if reports.iter().any(|r| r.standing == Standing::NotQueued) {
            return Ok(reports);
        }
        let deadline = options.timeout.map(|t| tokio::time::Instant::now() + t);
        tokio::pin!(shutdown);
        if !options.finalize {
            while let Some(deadline) = deadline {
                let waiting = reports.iter().any(|r| r.standing == Standing::Running);
                if !waiting || reports.iter().any(|r| r.standing == Standing::Failed) {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL)) => {}
                    _ = &mut shutdown => break,
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                for (report, name) in reports.iter_mut().zip(names) {
                    if report.standing == Standing::Running {
                        *report = self.standing(name).await?;
                    }
                }
            }
            return Ok(self.timed_out(reports, options));
        }
        {
            let stop = async {
                match deadline {
                    Some(deadline) => tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = &mut shutdown => {}
                    },
                    None => shutdown.await,
                }
            };
            tokio::pin!(stop);
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            // Oldest first: a migration runs after older ones only (`--after`).
            let mut order: Vec<(usize, i64)> = reports
                .iter()
                .enumerate()
                .map(|(i, r)| (i, r.migration_id.unwrap_or_default()))
                .collect();
            order.sort_by_key(|(_, id)| *id);
            let body = async {
                for (i, _) in order {
                    let (report, name) = (&mut reports[i], &names[i]);
                    if report.standing == Standing::Finished {
                        continue;
                    }
                    if *stop_rx.borrow() {
                        break;
                    }
                    *report = self.finalize_one(name, options, stop_rx.clone()).await?;
                }
                Ok::<_, Error>(())
            };
            tokio::pin!(body);
            tokio::select! {
                result = &mut body => result?,
                _ = &mut stop => {
                    let _ = stop_tx.send(true);
                    body.await?;
                }
            }
        }
        Ok(self.timed_out(reports, options))
    }

    /// Runs what is left of `name` inline: retried first when failed, then finalized, until
    /// `stop` turns true.
    async fn finalize_one(
        &self,
        name: &str,
        options: &EnsureOptions,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<EnsureReport> {
        let mut m = self.migration(name).await?;
        if m.status == MigrationStatus::Cancelled {
            return self.report(name, &m).await;
        }
        // Not before the migrations it runs after: its report says which it waits for.
        if !self.waiting_for(&m).await?.is_empty() {
            return self.report(name, &m).await;
        }
        if m.status == MigrationStatus::Failed {
            m = self
                .transition(
                    &m,
                    MigrationEvent::Retry,
                    Some("ensure --finalize: failed jobs retried with fresh attempts".into()),
                    &options.actor,
                )
                .await?;
        }
        let worker = self.worker(WorkerOptions {
            name: format!("{}-ensure:{}", options.actor, std::process::id()),
            ..WorkerOptions::default()
        });
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        match worker.finalize_until(&m, &options.actor, stopped).await {
            Ok(m) => self.report(name, &m).await,
            Err(Error::Stopped { .. }) => {
                let m = self.migration(&m.id.to_string()).await?;
                let mut report = self.report(name, &m).await?;
                report.reason = format!(
                    "{}; stopped before the end (it stays {}: any worker finishes it)",
                    report.reason, m.status
                );
                Ok(report)
            }
            Err(e) => Err(e),
        }
    }

    /// Says, of the reports still running, that the time given ran out.
    fn timed_out(
        &self,
        mut reports: Vec<EnsureReport>,
        options: &EnsureOptions,
    ) -> Vec<EnsureReport> {
        if let Some(timeout) = options.timeout {
            for r in reports
                .iter_mut()
                .filter(|r| r.standing == Standing::Running && !r.reason.contains("stopped before"))
            {
                r.reason = format!(
                    "{} (still, after {})",
                    r.reason,
                    humantime::format_duration(timeout)
                );
            }
        }
        reports
    }

    /// The report of queued migration `m`.
    async fn report(&self, name: &str, m: &Migration) -> Result<EnsureReport> {
        let (standing, reason, failures) = match m.status {
            MigrationStatus::Finished => (
                Standing::Finished,
                format!(
                    "finished{}",
                    m.finished_at
                        .map(|t| format!(" at {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                        .unwrap_or_default()
                ),
                Vec::new(),
            ),
            MigrationStatus::Active | MigrationStatus::Paused | MigrationStatus::Finalizing => {
                let p = self.progress(m).await?;
                let waiting: Vec<String> = self
                    .waiting_for(m)
                    .await?
                    .iter()
                    .map(|d| format!("{} ({})", d.name, d.status))
                    .collect();
                (
                    Standing::Running,
                    format!(
                        "still running: {}, {:.1}% done, {} of {} job(s) succeeded{}{}",
                        m.status,
                        p.percent,
                        p.jobs.succeeded,
                        p.jobs.total(),
                        if p.jobs.failed > 0 {
                            format!(", {} failed", p.jobs.failed)
                        } else {
                            String::new()
                        },
                        if waiting.is_empty() {
                            String::new()
                        } else {
                            format!("; waiting for {}", waiting.join(", "))
                        }
                    ),
                    Vec::new(),
                )
            }
            MigrationStatus::Failed | MigrationStatus::Cancelled => {
                let last = self
                    .migration_history(m)
                    .await?
                    .into_iter()
                    .rev()
                    .find(|row| row.next_status == m.status);
                let why = last
                    .and_then(|row| row.reason.or(row.exception_message))
                    .unwrap_or_else(|| "see its history".into());
                (
                    Standing::Failed,
                    format!("{}: {why}", m.status),
                    self.failure_groups(m).await?,
                )
            }
        };
        Ok(EnsureReport {
            name: name.to_owned(),
            standing,
            status: Some(m.status),
            migration_id: Some(m.id),
            reason,
            failures,
        })
    }

    /// The failed attempts of `m`'s jobs grouped by class and message, most frequent first.
    pub async fn failure_groups(&self, m: &Migration) -> Result<Vec<FailureGroup>> {
        let mut groups: Vec<(FailureGroup, Vec<i64>)> = Vec::new();
        for row in self.store.job_transition_list_by_migration(m.id).await? {
            let Some(class) = row.exception_class else {
                continue;
            };
            let message = row.exception_message.unwrap_or_default();
            match groups
                .iter_mut()
                .find(|(g, _)| g.class == class && g.message == message)
            {
                Some((g, jobs)) => {
                    g.attempts += 1;
                    if !jobs.contains(&row.job_id) {
                        jobs.push(row.job_id);
                        g.jobs += 1;
                    }
                }
                None => groups.push((
                    FailureGroup {
                        class,
                        message,
                        attempts: 1,
                        jobs: 1,
                    },
                    vec![row.job_id],
                )),
            }
        }
        let mut groups: Vec<FailureGroup> = groups.into_iter().map(|(g, _)| g).collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.attempts));
        Ok(groups)
    }
}
