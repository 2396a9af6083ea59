//! Read commands: `status`, `show`, `jobs`, `history`, as tables for people and JSON for
//! scripts. The JSON field names are stable and documented in the README.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, ContentArrangement, Table};
use serde::Serialize;
use sluicegate::{Job, JobStatus, Migration, Progress, Sluicegate};

/// Colors only on a terminal and when `NO_COLOR` is unset.
pub fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

pub fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "-".into())
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if !color_enabled() {
        t.force_no_tty();
    }
    t
}

/// A migration as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct MigrationJson {
    pub id: i64,
    pub name: String,
    pub status: String,
    pub job_kind: String,
    pub table: String,
    pub column: String,
    pub job_arguments: serde_json::Value,
    pub min_value: i64,
    pub max_value: i64,
    pub batch_size: i64,
    pub sub_batch_size: i64,
    pub max_batch_size: Option<i64>,
    pub pause_ms: i64,
    pub interval_ms: u64,
    pub on_hold_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl MigrationJson {
    pub fn from_migration(m: &Migration) -> Self {
        Self {
            id: m.id,
            name: m.name.clone(),
            status: m.status.to_string(),
            job_kind: m.job_kind.clone(),
            table: m.table_name.clone(),
            column: m.column_name.clone(),
            job_arguments: m.job_arguments.clone(),
            min_value: m.min_value,
            max_value: m.max_value,
            batch_size: m.batch_size,
            sub_batch_size: m.sub_batch_size,
            max_batch_size: m.max_batch_size,
            pause_ms: m.pause_ms,
            interval_ms: m.interval.as_millis() as u64,
            on_hold_until: m.on_hold_until,
            created_at: m.created_at,
            started_at: m.started_at,
            finished_at: m.finished_at,
        }
    }
}

/// A migration with its progress, as `status --json` and `show --json` print it.
#[derive(Debug, Serialize)]
pub struct StatusJson {
    #[serde(flatten)]
    pub migration: MigrationJson,
    pub rows_done: i64,
    pub rows_total: Option<i64>,
    pub percent: f64,
    pub rows_per_second: Option<f64>,
    pub eta_seconds: Option<f64>,
    pub jobs: JobCountsJson,
}

#[derive(Debug, Serialize)]
pub struct JobCountsJson {
    pub pending: i64,
    pub running: i64,
    pub failed: i64,
    pub succeeded: i64,
    pub total: i64,
}

impl StatusJson {
    fn from_progress(p: &Progress) -> Self {
        Self {
            migration: MigrationJson::from_migration(&p.migration),
            rows_done: p.rows_done,
            rows_total: p.rows_total,
            percent: (p.percent * 10.0).round() / 10.0,
            rows_per_second: p.rows_per_second.map(|r| r.round()),
            eta_seconds: p.eta_seconds.map(|s| s.round()),
            jobs: JobCountsJson {
                pending: p.jobs.pending,
                running: p.jobs.running,
                failed: p.jobs.failed,
                succeeded: p.jobs.succeeded,
                total: p.jobs.total(),
            },
        }
    }
}

fn eta_text(p: &Progress) -> String {
    if p.migration.status.is_finished() {
        return "-".into();
    }
    opt(p
        .eta_seconds
        .map(|s| format_duration(Duration::from_secs_f64(s))))
}

fn hold_text(m: &Migration) -> String {
    match m.on_hold_until {
        Some(t) if t > Utc::now() => format!("on hold until {}", time(Some(t))),
        _ => String::new(),
    }
}

pub async fn status(sg: &Sluicegate, json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for m in sg.migrations().await? {
        rows.push(sg.progress(&m).await?);
    }
    if json {
        let all: Vec<_> = rows.iter().map(StatusJson::from_progress).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no migrations queued");
        return Ok(());
    }
    let mut t = table();
    t.set_header([
        "ID",
        "NAME",
        "STATUS",
        "TABLE",
        "PROGRESS",
        "ROWS",
        "ROWS/S",
        "ETA",
        "BATCH",
        "JOBS ok/failed/all",
        "NOTE",
    ]);
    for p in &rows {
        let m = &p.migration;
        t.add_row([
            Cell::new(m.id),
            Cell::new(&m.name),
            Cell::new(m.status),
            Cell::new(format!("{}.{}", m.table_name, m.column_name)),
            Cell::new(format!("{:.1}%", p.percent)),
            Cell::new(format!("{} / {}", p.rows_done, opt(p.rows_total))),
            Cell::new(opt(p.rows_per_second.map(|r| r.round() as i64))),
            Cell::new(eta_text(p)),
            Cell::new(format!("{} / {}", m.batch_size, m.sub_batch_size)),
            Cell::new(format!(
                "{}/{}/{}",
                p.jobs.succeeded,
                p.jobs.failed,
                p.jobs.total()
            )),
            Cell::new(hold_text(m)),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// A job as `jobs --json` prints it.
#[derive(Debug, Serialize)]
pub struct JobJson<'a> {
    pub id: i64,
    pub migration_id: i64,
    pub status: JobStatus,
    pub min_value: i64,
    pub max_value: i64,
    pub batch_size: i64,
    pub sub_batch_size: i64,
    pub attempts: i32,
    pub rows_affected: i64,
    pub cursor: Option<i64>,
    pub worker: Option<&'a str>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub metrics: &'a serde_json::Value,
}

fn job_duration_ms(j: &Job) -> Option<i64> {
    Some((j.finished_at? - j.started_at?).num_milliseconds())
}

impl<'a> JobJson<'a> {
    fn from_job(j: &'a Job) -> Self {
        Self {
            id: j.id,
            migration_id: j.migration_id,
            status: j.status,
            min_value: j.min_value,
            max_value: j.max_value,
            batch_size: j.batch_size,
            sub_batch_size: j.sub_batch_size,
            attempts: j.attempts,
            rows_affected: j.rows_affected,
            cursor: j.cursor,
            worker: j.worker.as_deref(),
            started_at: j.started_at,
            finished_at: j.finished_at,
            duration_ms: job_duration_ms(j),
            metrics: &j.metrics,
        }
    }
}

fn jobs_table(jobs: &[Job]) -> Table {
    let mut t = table();
    t.set_header([
        "JOB", "STATUS", "KEYS", "ROWS", "ATTEMPTS", "BATCH", "SUB", "TOOK", "WORKER", "STARTED",
    ]);
    for j in jobs {
        t.add_row([
            Cell::new(j.id),
            Cell::new(j.status),
            Cell::new(format!("{} ..= {}", j.min_value, j.max_value)),
            Cell::new(j.rows_affected),
            Cell::new(j.attempts),
            Cell::new(j.batch_size),
            Cell::new(j.sub_batch_size),
            Cell::new(opt(job_duration_ms(j).map(|ms| {
                format_duration(Duration::from_millis(ms.max(0) as u64))
            }))),
            Cell::new(j.worker.as_deref().unwrap_or("-")),
            Cell::new(time(j.started_at)),
        ]);
    }
    t
}

pub async fn show(sg: &Sluicegate, migration: &str, json: bool) -> Result<()> {
    let m = sg.migration(migration).await?;
    let p = sg.progress(&m).await?;
    let jobs = sg.jobs(&m, None).await?;
    // The history of batch sizes, from the job rows (each keeps the size it was made with).
    let mut sizes: Vec<(i64, i64, i64)> = Vec::new(); // (batch size, first job, jobs)
    for j in &jobs {
        match sizes.last_mut() {
            Some((size, _, n)) if *size == j.batch_size => *n += 1,
            _ => sizes.push((j.batch_size, j.id, 1)),
        }
    }
    let failed: Vec<Job> = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Failed)
        .cloned()
        .collect();
    if json {
        #[derive(Serialize)]
        struct Size {
            batch_size: i64,
            from_job: i64,
            jobs: i64,
        }
        #[derive(Serialize)]
        struct Show<'a> {
            #[serde(flatten)]
            status: StatusJson,
            statement_timeout_ms: i64,
            lock_timeout_ms: i64,
            batch_sizes: Vec<Size>,
            failed_jobs: Vec<JobJson<'a>>,
        }
        let out = Show {
            status: StatusJson::from_progress(&p),
            statement_timeout_ms: m.statement_timeout_ms,
            lock_timeout_ms: m.lock_timeout_ms,
            batch_sizes: sizes
                .iter()
                .map(|(batch_size, from_job, jobs)| Size {
                    batch_size: *batch_size,
                    from_job: *from_job,
                    jobs: *jobs,
                })
                .collect(),
            failed_jobs: failed.iter().map(JobJson::from_job).collect(),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut t = table();
    let rows: Vec<(&str, String)> = vec![
        ("id", m.id.to_string()),
        ("name", m.name.clone()),
        ("status", format!("{} {}", m.status, hold_text(&m))),
        ("kind", m.job_kind.clone()),
        ("arguments", m.job_arguments.to_string()),
        ("table", format!("{}.{}", m.table_name, m.column_name)),
        ("keys", format!("{} ..= {}", m.min_value, m.max_value)),
        (
            "batch / sub-batch",
            format!(
                "{} / {} (max {})",
                m.batch_size,
                m.sub_batch_size,
                opt(m.max_batch_size)
            ),
        ),
        (
            "interval / pause",
            format!("{} / {} ms", format_duration(m.interval), m.pause_ms),
        ),
        (
            "timeouts",
            format!(
                "statement {} ms, lock {} ms",
                m.statement_timeout_ms, m.lock_timeout_ms
            ),
        ),
        (
            "progress",
            format!(
                "{:.1}%, {} of {} rows",
                p.percent,
                p.rows_done,
                opt(p.rows_total)
            ),
        ),
        (
            "rate / ETA",
            format!(
                "{} rows/s, ETA {}",
                opt(p.rows_per_second.map(|r| r.round() as i64)),
                eta_text(&p)
            ),
        ),
        (
            "jobs",
            format!(
                "{} succeeded, {} failed, {} running, {} pending",
                p.jobs.succeeded, p.jobs.failed, p.jobs.running, p.jobs.pending
            ),
        ),
        (
            "created / finished",
            format!("{} / {}", time(Some(m.created_at)), time(m.finished_at)),
        ),
        (
            "batch sizes",
            sizes
                .iter()
                .map(|(size, from, n)| format!("{size} from job {from} ({n} jobs)"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ];
    for (k, v) in rows {
        t.add_row([Cell::new(k), Cell::new(v)]);
    }
    println!("{t}");
    if !failed.is_empty() {
        println!("failed jobs:");
        println!("{}", jobs_table(&failed));
    }
    Ok(())
}

pub async fn jobs(
    sg: &Sluicegate,
    migration: &str,
    status: Option<&str>,
    json: bool,
) -> Result<()> {
    let m = sg.migration(migration).await?;
    let status = match status {
        Some(s) => match s.parse::<JobStatus>() {
            Ok(s) => Some(s),
            Err(_) => {
                bail!("unknown job status {s:?} (expected pending, running, failed or succeeded)")
            }
        },
        None => None,
    };
    let jobs = sg.jobs(&m, status).await?;
    if json {
        let all: Vec<_> = jobs.iter().map(JobJson::from_job).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if jobs.is_empty() {
        println!("no jobs");
    } else {
        println!("{}", jobs_table(&jobs));
    }
    Ok(())
}

pub async fn history(sg: &Sluicegate, migration: &str, job: Option<i64>, json: bool) -> Result<()> {
    let m = sg.migration(migration).await?;
    if let Some(job_id) = job {
        let j = sg.job(job_id).await?;
        if j.migration_id != m.id {
            bail!(
                "job {job_id} belongs to migration {}, not to {}",
                j.migration_id,
                m.name
            );
        }
        let log = sg.job_history(job_id).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&log)?);
            return Ok(());
        }
        let mut t = table();
        t.set_header(["TIME", "TRANSITION", "WORKER", "EXCEPTION", "MESSAGE"]);
        for r in &log {
            t.add_row([
                Cell::new(time(Some(r.created_at))),
                Cell::new(format!("{} -> {}", r.previous_status, r.next_status)),
                Cell::new(r.worker.as_deref().unwrap_or("-")),
                Cell::new(r.exception_class.as_deref().unwrap_or("")),
                Cell::new(r.exception_message.as_deref().unwrap_or("")),
            ]);
        }
        println!(
            "job {job_id} of migration {} (keys {} ..= {}):",
            m.name, j.min_value, j.max_value
        );
        println!("{t}");
        return Ok(());
    }
    let log = sg.migration_history(&m).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&log)?);
        return Ok(());
    }
    let mut t = table();
    t.set_header([
        "TIME",
        "EVENT",
        "TRANSITION",
        "ACTOR",
        "REASON",
        "EXCEPTION",
    ]);
    for r in &log {
        t.add_row([
            Cell::new(time(Some(r.created_at))),
            Cell::new(r.event),
            Cell::new(format!("{} -> {}", opt(r.previous_status), r.next_status)),
            Cell::new(r.actor.as_deref().unwrap_or("-")),
            Cell::new(r.reason.as_deref().unwrap_or("")),
            Cell::new(match (&r.exception_class, &r.exception_message) {
                (Some(c), Some(msg)) => format!("{c}: {msg}"),
                (Some(c), None) => c.clone(),
                _ => String::new(),
            }),
        ]);
    }
    println!("migration {} ({}):", m.id, m.name);
    println!("{t}");
    Ok(())
}
