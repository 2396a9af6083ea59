//! Progress of running workers: a bar per migration on a terminal, one JSON line per job
//! otherwise (or with `--json`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use sluicegate::engine::EventSink;
use sluicegate::{JobOutcome, Migration, Sluicegate, StepOutcome};
use sluicegate_cli::json::key_value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A migration being shown: as last read, its bar, what its last job did, when it was last
/// read.
struct Shown {
    m: Migration,
    bar: Option<ProgressBar>,
    last_job: String,
    shown_at: Instant,
}

/// Receives a worker's step outcomes and shows them.
pub struct Reporter {
    /// `None` tells the task to stop: workers may still hold senders when we finish.
    tx: mpsc::UnboundedSender<Option<StepOutcome>>,
    task: JoinHandle<()>,
}

/// How often a bar is read again from the tracking database when no job of its migration
/// ended meanwhile: a pause or a hold from another shell shows within about this long.
const REFRESH: Duration = Duration::from_millis(500);

/// What a bar says of a migration as it stands: the share of keys done, rows changed, the
/// recent rate and the time left at it, its batch and sub-batch sizes now (a `set` shows at
/// once), and `PAUSED` / `HELD` (with the rate of its last work, and no time left) while it
/// stands still. `last_job` is said after it (`job 12 ok`).
fn bar_text(p: &sluicegate::Progress, last_job: &str) -> String {
    use crate::output::{format_duration, thousands};
    use sluicegate::MigrationStatus as S;
    let m = &p.migration;
    let rate = p
        .rows_per_second
        .map(|r| format!("{} rows/s", thousands(r.round() as i64)));
    let standing = match m.status {
        S::Paused => Some("PAUSED"),
        S::Active | S::Finalizing if m.held_since.is_some() => Some("HELD"),
        _ => None,
    };
    let (state, rate, eta) = match standing {
        Some(state) => (
            format!("{state}  "),
            rate.map(|r| format!("last ran at {r}"))
                .unwrap_or_else(|| "- rows/s".into()),
            format!("ETA - ({})", state.to_lowercase()),
        ),
        None => (
            String::new(),
            rate.unwrap_or_else(|| "- rows/s".into()),
            format!(
                "ETA {}",
                p.eta_seconds
                    .map(|s| format_duration(Duration::from_secs_f64(s)))
                    .unwrap_or_else(|| "-".into())
            ),
        ),
    };
    let hold = match (standing, &p.hold_reason) {
        (Some("HELD"), Some(why)) => format!(": {why}"),
        _ => String::new(),
    };
    format!(
        "{state}{:.1}% of keys  {} rows changed  {rate}  {eta}  batch {} / sub {}{}{hold}",
        p.percent,
        thousands(p.rows_done),
        thousands(m.batch_size),
        thousands(m.sub_batch_size),
        if last_job.is_empty() || standing.is_some() {
            String::new()
        } else {
            format!("  {last_job}")
        }
    )
}

/// Reads migration `id` and its progress again and shows it on `bar`; a migration that ended
/// ends its bar.
async fn refresh(sg: &Sluicegate, id: i64, bar: &ProgressBar, last_job: &str) -> Option<Migration> {
    let m = sg.migration(&id.to_string()).await.ok()?;
    if m.status.is_finished() {
        end_bar(sg, &m, bar).await;
        return Some(m);
    }
    let p = sg.progress(&m).await.ok()?;
    bar.set_position((p.percent * 10.0).round() as u64);
    bar.set_message(bar_text(&p, last_job));
    Some(m)
}

/// Ends a bar as the migration stands: full only when finished; a failed or cancelled one
/// stays where it stopped, and a paused or held one says so.
async fn end_bar(sg: &Sluicegate, m: &Migration, bar: &ProgressBar) {
    use sluicegate::MigrationStatus as S;
    let Ok(p) = sg.progress(m).await else {
        bar.abandon_with_message(m.status.to_string());
        return;
    };
    bar.set_position((p.percent * 10.0).round() as u64);
    match m.status {
        S::Finished => {
            bar.set_position(1000);
            bar.finish_with_message(format!(
                "finished  {} rows changed",
                crate::output::thousands(p.rows_done)
            ));
        }
        S::Failed | S::Cancelled => bar.abandon_with_message(format!(
            "{} at {:.1}% of keys  {} rows changed",
            m.status.as_str().to_uppercase(),
            p.percent,
            crate::output::thousands(p.rows_done)
        )),
        _ => bar.abandon_with_message(bar_text(&p, "")),
    }
}

/// Whether progress bars fit: a terminal on stderr and no `--json`.
pub fn bars_wanted(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

impl Reporter {
    /// Starts showing; `bars` chooses bars over JSON lines.
    pub fn start(sg: Sluicegate, bars: bool) -> Self {
        Self::start_with(sg, bars, true)
    }

    /// [`Self::start`], and without bars, JSON lines only when `lines` (the demo's prose is
    /// not interleaved with them when its output is not a terminal).
    pub fn start_with(sg: Sluicegate, bars: bool, lines: bool) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Option<StepOutcome>>();
        let task = tokio::spawn(async move {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            if bars {
                // Log lines and notices print above the bars from now on.
                sluicegate_cli::term::set_bars(Some(multi.clone()));
            }
            let mut shown: HashMap<i64, Shown> = HashMap::new();
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                let event = tokio::select! {
                    event = rx.recv() => match event {
                        Some(Some(event)) => event,
                        _ => break,
                    },
                    // Bars not moved by a job lately are read again: paused from another
                    // shell, held, or resized by `set`, they say so within a second.
                    _ = tick.tick(), if bars => {
                        for (id, s) in shown.iter_mut() {
                            let Some(bar) = s.bar.as_ref().filter(|b| !b.is_finished()) else {
                                continue;
                            };
                            if s.shown_at.elapsed() >= REFRESH {
                                if let Some(m) = refresh(&sg, *id, bar, &s.last_job).await {
                                    s.m = m;
                                }
                                s.shown_at = Instant::now();
                            }
                        }
                        continue;
                    }
                };
                let migration_id = match &event {
                    StepOutcome::Ran { migration_id, .. }
                    | StepOutcome::Waiting { migration_id } => *migration_id,
                    StepOutcome::Completed { migration } | StepOutcome::Held { migration, .. } => {
                        migration.id
                    }
                    StepOutcome::Idle => continue,
                };
                // A migration is read once, and again when it ends: a JSON line per job
                // costs no query.
                let cached = shown.get(&migration_id).map(|s| s.m.clone());
                let m = match (cached, &event) {
                    (Some(m), StepOutcome::Ran { .. } | StepOutcome::Waiting { .. }) => m,
                    _ => match sg.migration(&migration_id.to_string()).await {
                        Ok(m) => m,
                        Err(_) => continue,
                    },
                };
                let entry = shown.entry(m.id).or_insert_with(|| {
                    let bar = bars.then(|| {
                        // Measured in the share of keys done (per mille), as `status` is: rows
                        // changed and keys walked are different units.
                        let bar = multi.add(ProgressBar::new(1000));
                        bar.set_style(
                            ProgressStyle::with_template("{prefix:<20} [{bar:30}] {msg}")
                                .expect("valid template")
                                .progress_chars("=> "),
                        );
                        bar.set_prefix(m.name.clone());
                        bar
                    });
                    Shown {
                        m: m.clone(),
                        bar,
                        last_job: String::new(),
                        shown_at: Instant::now(),
                    }
                });
                entry.m = m.clone();
                match (&event, &entry.bar) {
                    (StepOutcome::Ran { job, outcome, .. }, Some(bar)) => {
                        let what = match outcome {
                            JobOutcome::Succeeded => "ok".to_owned(),
                            JobOutcome::Failed { failure } => format!("FAILED {}", failure.class),
                            JobOutcome::Lost => "lost".to_owned(),
                            JobOutcome::Stopped => "stopped (resumes from its cursor)".to_owned(),
                        };
                        // The migration as it stands now: its next key moved with this job, and
                        // its sizes are those `set` gave it since.
                        entry.last_job = format!("job {} {what}", job.id);
                        if let Some(now) = refresh(&sg, m.id, bar, &entry.last_job).await {
                            entry.m = now;
                        }
                        entry.shown_at = Instant::now();
                        if let JobOutcome::Failed { failure } = outcome {
                            sluicegate_cli::term::say(&format!(
                                "{}: job {} failed (attempt {}): {}: {}",
                                m.name, job.id, job.attempts, failure.class, failure.message
                            ));
                        }
                    }
                    (StepOutcome::Completed { migration }, Some(bar)) => {
                        end_bar(&sg, migration, bar).await;
                    }
                    (_, None) if !lines => {}
                    (StepOutcome::Ran { job, outcome, .. }, None) => {
                        let (class, message) = match outcome {
                            JobOutcome::Failed { failure } => {
                                (Some(failure.class.clone()), Some(failure.message.clone()))
                            }
                            _ => (None, None),
                        };
                        let outcome = match outcome {
                            JobOutcome::Succeeded => "succeeded",
                            JobOutcome::Failed { .. } => "failed",
                            JobOutcome::Lost => "lost",
                            JobOutcome::Stopped => "stopped",
                        };
                        outln_or_drop!(
                            "{}",
                            json!({
                                "event": "job",
                                "migration_id": m.id,
                                "migration": m.name,
                                "job_id": job.id,
                                "outcome": outcome,
                                "status": job.status,
                                "min_value": key_value(&job.min_value),
                                "max_value": key_value(&job.max_value),
                                "attempts": job.attempts,
                                "rows_affected": job.rows_affected,
                                "duration_ms": job.metrics.duration_ms,
                                "batch_size": job.batch_size,
                                "sub_batch_size": job.sub_batch_size,
                                "exception_class": class,
                                "exception_message": message,
                            })
                        );
                    }
                    (StepOutcome::Held { migration, reason }, Some(bar)) => {
                        let until = crate::output::time(migration.on_hold_until);
                        if let Some(now) = refresh(&sg, migration.id, bar, "").await {
                            entry.m = now;
                        }
                        entry.shown_at = Instant::now();
                        sluicegate_cli::term::say(&format!(
                            "{}: on hold until {until}: {reason}",
                            migration.name
                        ));
                    }
                    (StepOutcome::Held { migration, reason }, None) => {
                        outln_or_drop!(
                            "{}",
                            json!({
                                "event": "hold",
                                "migration_id": migration.id,
                                "migration": migration.name,
                                "on_hold_until": migration.on_hold_until,
                                "reason": reason,
                            })
                        );
                    }
                    (StepOutcome::Completed { migration }, None) => {
                        outln_or_drop!(
                            "{}",
                            json!({
                                "event": "migration",
                                "migration_id": migration.id,
                                "migration": migration.name,
                                "status": migration.status,
                            })
                        );
                    }
                    _ => {}
                }
            }
            // Bars of migrations that ended (or were paused) elsewhere say so, rather than
            // freezing at their last job.
            for s in shown.values() {
                if let Some(bar) = s.bar.as_ref().filter(|b| !b.is_finished()) {
                    if let Ok(now) = sg.migration(&s.m.id.to_string()).await {
                        end_bar(&sg, &now, bar).await;
                    }
                }
            }
            sluicegate_cli::term::set_bars(None);
        });
        Self { tx, task }
    }

    /// The callback to hand to a worker.
    pub fn sink(&self) -> EventSink {
        let tx = self.tx.clone();
        Arc::new(move |event: &StepOutcome| {
            let _ = tx.send(Some(event.clone()));
        })
    }

    /// Waits until everything sent has been shown.
    pub async fn finish(self) {
        let _ = self.tx.send(None);
        let _ = self.task.await;
    }
}
