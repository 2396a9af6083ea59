//! Progress of running workers: a bar per migration on a terminal, one JSON line per job
//! otherwise (or with `--json`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use sluicegate::engine::EventSink;
use sluicegate::{JobOutcome, Migration, Sluicegate, StepOutcome};
use sluicegate_cli::json::key_value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Receives a worker's step outcomes and shows them.
pub struct Reporter {
    /// `None` tells the task to stop: workers may still hold senders when we finish.
    tx: mpsc::UnboundedSender<Option<StepOutcome>>,
    task: JoinHandle<()>,
}

/// Whether progress bars fit: a terminal on stderr and no `--json`.
pub fn bars_wanted(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

impl Reporter {
    /// Starts showing; `bars` chooses bars over JSON lines.
    pub fn start(sg: Sluicegate, bars: bool) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Option<StepOutcome>>();
        let task = tokio::spawn(async move {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let mut shown: HashMap<i64, (Migration, Option<ProgressBar>)> = HashMap::new();
            while let Some(Some(event)) = rx.recv().await {
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
                let cached = shown.get(&migration_id).map(|(m, _)| m.clone());
                let m = match (cached, &event) {
                    (Some(m), StepOutcome::Ran { .. } | StepOutcome::Waiting { .. }) => m,
                    _ => match sg.migration(&migration_id.to_string()).await {
                        Ok(m) => m,
                        Err(_) => continue,
                    },
                };
                let entry = shown.entry(m.id).or_insert_with(|| {
                    let bar = bars.then(|| {
                        let bar = multi.add(ProgressBar::new(m.total_tuple_count.unwrap_or(0).max(1) as u64));
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{prefix:<20} [{bar:30}] {human_pos}/{human_len} rows  ETA {eta:<5} {msg}",
                            )
                            .expect("valid template")
                            .progress_chars("=> "),
                        );
                        bar.set_prefix(m.name.clone());
                        bar
                    });
                    (m.clone(), bar)
                });
                entry.0 = m.clone();
                match (&event, &entry.1) {
                    (StepOutcome::Ran { job, outcome, .. }, Some(bar)) => {
                        let mut rate = String::new();
                        if let Ok(p) = sg.progress(&m).await {
                            bar.set_position(p.rows_done.max(0) as u64);
                            if let Some(r) = p.rows_per_second {
                                rate = format!("{} rows/s  ", r.round() as i64);
                            }
                        }
                        let what = match outcome {
                            JobOutcome::Succeeded => "ok".to_owned(),
                            JobOutcome::Failed { failure } => format!("FAILED {}", failure.class),
                            JobOutcome::Lost => "lost".to_owned(),
                        };
                        bar.set_message(format!(
                            "{rate}batch {}  job {} {what}",
                            m.batch_size, job.id
                        ));
                        if let JobOutcome::Failed { failure } = outcome {
                            bar.println(format!(
                                "{}: job {} failed (attempt {}): {}: {}",
                                m.name, job.id, job.attempts, failure.class, failure.message
                            ));
                        }
                    }
                    (StepOutcome::Completed { migration }, Some(bar)) => {
                        if let Ok(p) = sg.progress(migration).await {
                            bar.set_length(p.rows_done.max(1) as u64);
                            bar.set_position(p.rows_done.max(0) as u64);
                        }
                        bar.finish_with_message(migration.status.to_string());
                    }
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
                                "duration_ms": job.metrics.get("duration_ms"),
                                "batch_size": job.batch_size,
                                "sub_batch_size": job.sub_batch_size,
                                "exception_class": class,
                                "exception_message": message,
                            })
                        );
                    }
                    (StepOutcome::Held { migration, reason }, Some(bar)) => {
                        let until = crate::output::time(migration.on_hold_until);
                        bar.set_message(format!("on hold until {until}"));
                        bar.println(format!(
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
