//! `/metrics`: GitLab's batched-migration metrics, job counts by status, health stops by
//! indicator and the process's own metrics, in Prometheus text format. Values are read from
//! the tracking database at each scrape, so any `serve` process shows every worker's work.

use std::collections::HashSet;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use sluicegate::{JobStatus, MigrationEvent};

use super::{ApiError, AppState};

/// The recorder of this server and the jobs whose sub-batch timings it has observed.
pub struct MetricsState {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    observed: Mutex<HashSet<(i64, i32)>>,
    process: metrics_process::Collector,
}

impl Default for MetricsState {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsState {
    /// A recorder of its own (not the global one), so tests can run many servers at once.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(
                    "batched_migration_job_query_duration_seconds".into(),
                ),
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        let process = metrics_process::Collector::default();
        metrics::with_local_recorder(&recorder, || {
            process.describe();
            describe();
        });
        Self {
            recorder,
            handle,
            observed: Mutex::new(HashSet::new()),
            process,
        }
    }
}

fn describe() {
    describe_gauge!(
        "batched_migration_job_batch_size",
        "Batch size of the migration's jobs"
    );
    describe_gauge!(
        "batched_migration_job_sub_batch_size",
        "Sub-batch size of the migration's jobs"
    );
    describe_gauge!(
        "batched_migration_job_interval_seconds",
        Unit::Seconds,
        "Interval between job starts"
    );
    describe_gauge!(
        "batched_migration_job_duration_seconds",
        Unit::Seconds,
        "Duration of the migration's last finished job"
    );
    describe_counter!(
        "batched_migration_job_updated_tuples_total",
        "Rows written by the migration's jobs"
    );
    describe_counter!(
        "batched_migration_migrated_tuples_total",
        "Rows migrated so far"
    );
    // GitLab calls this gauge batched_migration_total_tuple_count; promtool rejects a gauge
    // ending in _count (it reads as a histogram's or summary's count), so it is renamed.
    describe_gauge!(
        "batched_migration_total_tuples",
        "Estimated rows to migrate"
    );
    describe_gauge!(
        "batched_migration_last_update_time_seconds",
        Unit::Seconds,
        "Unix time of the migration's last finished job"
    );
    describe_histogram!(
        "batched_migration_job_query_duration_seconds",
        Unit::Seconds,
        "Duration of each sub-batch"
    );
    describe_gauge!("batched_migration_jobs", "Jobs of the migration by status");
    describe_gauge!(
        "batched_migration_health_stops",
        "Times health checks put the migration on hold, by indicator"
    );
}

async fn collect(st: &AppState) -> Result<(), ApiError> {
    let mut observations = Vec::new();
    let mut snapshot = Vec::new();
    for m in st.sg.migrations().await? {
        let p = st.sg.progress(&m).await?;
        let recent = st.sg.store().job_recent_succeeded(m.id, 100).await?;
        let holds = st
            .sg
            .migration_history(&m)
            .await?
            .into_iter()
            .filter(|r| r.event == MigrationEvent::Hold);
        let mut stops: Vec<(String, u64)> = Vec::new();
        for hold in holds {
            let indicator = hold.indicator.map_or("unknown", |i| i.as_str()).to_owned();
            match stops.iter_mut().find(|(name, _)| *name == indicator) {
                Some((_, n)) => *n += 1,
                None => stops.push((indicator, 1)),
            }
        }
        {
            let mut observed = st.metrics.observed.lock().expect("not poisoned");
            for job in &recent {
                if observed.insert((job.id, job.attempts)) {
                    for e in &job.metrics.recent {
                        observations.push((m.id, m.name.clone(), e.ms as f64 / 1000.0));
                    }
                }
            }
        }
        snapshot.push((m, p, recent.first().cloned(), stops));
    }
    metrics::with_local_recorder(&st.metrics.recorder, || {
        st.metrics.process.collect();
        for (m, p, last, stops) in &snapshot {
            let labels = [
                ("migration_id", m.id.to_string()),
                ("migration", m.name.clone()),
            ];
            gauge!("batched_migration_job_batch_size", &labels).set(m.batch_size as f64);
            gauge!("batched_migration_job_sub_batch_size", &labels).set(m.sub_batch_size as f64);
            gauge!("batched_migration_job_interval_seconds", &labels).set(m.interval.as_secs_f64());
            if let Some(job) = last {
                if let (Some(s), Some(f)) = (job.started_at, job.finished_at) {
                    gauge!("batched_migration_job_duration_seconds", &labels)
                        .set((f - s).num_milliseconds() as f64 / 1000.0);
                    gauge!("batched_migration_last_update_time_seconds", &labels)
                        .set(f.timestamp_millis() as f64 / 1000.0);
                }
            }
            counter!("batched_migration_job_updated_tuples_total", &labels)
                .absolute(p.rows_done.max(0) as u64);
            counter!("batched_migration_migrated_tuples_total", &labels)
                .absolute(p.rows_done.max(0) as u64);
            gauge!("batched_migration_total_tuples", &labels).set(p.rows_total.unwrap_or(0) as f64);
            for (status, n) in [
                (JobStatus::Pending, p.jobs.pending),
                (JobStatus::Running, p.jobs.running),
                (JobStatus::Failed, p.jobs.failed),
                (JobStatus::Succeeded, p.jobs.succeeded),
            ] {
                let labels = [
                    ("migration_id", m.id.to_string()),
                    ("migration", m.name.clone()),
                    ("status", status.to_string()),
                ];
                gauge!("batched_migration_jobs", &labels).set(n as f64);
            }
            for (indicator, n) in stops {
                let labels = [
                    ("migration_id", m.id.to_string()),
                    ("migration", m.name.clone()),
                    ("indicator", indicator.clone()),
                ];
                gauge!("batched_migration_health_stops", &labels).set(*n as f64);
            }
        }
        for (id, name, seconds) in observations {
            let labels = [("migration_id", id.to_string()), ("migration", name)];
            histogram!("batched_migration_job_query_duration_seconds", &labels).record(seconds);
        }
    });
    Ok(())
}

pub async fn metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    collect(&st).await?;
    let body = st.metrics.handle.render();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
