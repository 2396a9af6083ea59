//! Read commands: `status`, `show`, `jobs`, `history`, as tables for people and JSON for
//! scripts. The JSON field names are stable and documented in the README.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};
use serde::Serialize;
use sluicegate::health::{HealthSettings, Reading, Signal};
use sluicegate::{
    lanes_by_node, Job, JobStatus, Lane, LaneProgress, Migration, MigrationStatus, NodeProgress,
    Progress, Sluicegate,
};
use sluicegate_cli::fit::{self, Grid};
use sluicegate_cli::json::{job_duration_ms, JobJson, ProtectionOffJson, StatusJson};
pub use sluicegate_cli::json::{key_value, MigrationJson};
pub use sluicegate_cli::units::{bytes, millis, thousands};
use sluicegate_cli::units::{rows_of, short_key};

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

pub(crate) fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "-".into())
}

/// A cell's text.
fn cell(x: impl ToString) -> String {
    x.to_string()
}

/// A table laid out for the output's width ([`fit`]): cells wrap between words, long words
/// are cut short with `…`, and the columns left out (if any) are named under it.
fn draw(g: &Grid) -> String {
    let width = fit::output_width();
    let f = g.fit(width);
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        // Laid out already: comfy-table would split words to fit.
        .set_content_arrangement(ContentArrangement::Disabled);
    if !color_enabled() {
        t.force_no_tty();
    }
    if !g.is_headless() {
        t.set_header(f.header);
    }
    for r in f.rows {
        t.add_row(r);
    }
    let mut out = t.to_string();
    if let (false, Some(width)) = (f.left_out.is_empty(), width) {
        let note = format!(
            "(left out to fit {width} columns: {}; a wider terminal or --json shows them)",
            f.left_out.join(", ")
        );
        out.push('\n');
        out.push_str(&fit::wrap(&note, width));
    }
    out
}

/// The time left: while it runs, at its recent pace; `paused` or `held` while it stands (no
/// time is promised then).
fn eta_text(p: &Progress) -> String {
    let m = &p.migration;
    if m.status.is_finished() {
        return "-".into();
    }
    if m.status == MigrationStatus::Paused {
        return "paused".into();
    }
    if m.held_since.is_some() {
        return "held".into();
    }
    opt(p
        .eta_seconds
        .map(|s| format_duration(Duration::from_secs_f64(s))))
}

/// What `m` waits for (`--after`): [`sluicegate_cli::json::waiting_for`].
async fn waiting_text(sg: &Sluicegate, m: &Migration) -> Result<Option<Vec<String>>> {
    Ok(sluicegate_cli::json::waiting_for(sg, m).await?)
}

/// The note of `status`: what a live migration waits for (`--after`), and the hold note.
fn note_text(p: &Progress, waiting: Option<&[String]>) -> String {
    let hold = hold_text(p);
    match waiting {
        Some(w) if !w.is_empty() && !p.migration.status.is_finished() => {
            let wait = format!("waiting for {}", w.join(", "));
            if hold.is_empty() {
                wait
            } else {
                format!("{wait}; {hold}")
            }
        }
        _ => hold,
    }
}

/// The note on a held or slowed migration: what the tool decided by itself, and why.
fn hold_text(p: &Progress) -> String {
    let m = &p.migration;
    match (m.held_since, &m.throttle_reason) {
        (Some(since), _) => format!(
            "on hold since {} (re-checked every {}): {}",
            time(Some(since)),
            format_duration(m.health.hold()),
            p.hold_reason.as_deref().unwrap_or("?")
        ),
        (None, Some(why)) if m.throttle_pause_ms > 0 => format!(
            "slowed down: {} ms between jobs ({why})",
            m.throttle_pause_ms
        ),
        _ => String::new(),
    }
}

/// The database a migration's table lives in, as shown.
fn target_text(m: &sluicegate::Migration) -> String {
    match &m.target {
        Some(t) => t.display.clone(),
        None => "unknown (queued before schema v5; `sluicegate adopt` it)".to_owned(),
    }
}

/// Says on stderr which health protections of migration `name` are off, each with the grant
/// that would turn it on.
pub fn warn_protections_off(name: &str, off: &[Reading], settings: &HealthSettings) {
    if let Some(notice) = sluicegate::health::protections_off_notice(off, settings) {
        eprintln!("warning: migration {name}: {notice}");
    }
}

/// The protections that are off for a migration that may still run (`None` for one that
/// cannot, or whose row is unreadable); an error reading them is said as the reading.
async fn live_protections_off(sg: &Sluicegate, m: &Migration) -> Option<Vec<Reading>> {
    let live = matches!(
        m.status,
        MigrationStatus::Active | MigrationStatus::Paused | MigrationStatus::Finalizing
    );
    // Readings of this connection's database say nothing of another target's.
    if !live || m.unreadable.is_some() || !sg.is_own_target(m) {
        return None;
    }
    Some(
        sg.protections_off(&m.table_name, &m.health)
            .await
            .unwrap_or_else(|e| {
                vec![Reading {
                    indicator: sluicegate::health::Indicator::Probe,
                    signal: Signal::Unknown,
                    reading: format!("health could not be read: {e}"),
                    threshold: String::new(),
                    cause: Some(sluicegate::health::UnknownCause::Failed),
                    grant: None,
                }]
            }),
    )
}

/// A row of `status`: its progress, its protections off, what it waits for.
type StatusRow = (Progress, Option<Vec<Reading>>, Option<Vec<String>>);

/// The lines under a table naming each migration's protections that are off.
fn protections_off_lines(rows: &[StatusRow]) -> Vec<String> {
    let mut lines = Vec::new();
    for (p, off, _) in rows {
        let m = &p.migration;
        if let Some(why) = &m.unreadable {
            lines.push(format!(
                "migration {} ({}) is unreadable: {why}; a worker fails it, `cancel` ends it",
                m.id, m.name
            ));
        }
        if let Some(notice) = off
            .as_deref()
            .and_then(|off| sluicegate::health::protections_off_notice(off, &m.health))
        {
            lines.push(format!("migration {} ({}): {notice}", m.id, m.name));
        }
    }
    lines
}

/// The statuses `status --status` asks for; an unknown one is refused, naming those there are.
fn status_filter(statuses: &[String]) -> Result<Vec<MigrationStatus>> {
    statuses
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<MigrationStatus>().map_err(|_| {
                let known: Vec<&str> = MigrationStatus::ALL.iter().map(|s| s.as_str()).collect();
                anyhow::anyhow!(
                    "unknown migration status {s:?} in --status (expected {})",
                    known.join(", ")
                )
            })
        })
        .collect()
}

pub async fn status(sg: &Sluicegate, statuses: &[String], json: bool) -> Result<()> {
    let wanted = status_filter(statuses)?;
    let mut rows = Vec::new();
    let mut laned: Vec<(String, Vec<NodeProgress>)> = Vec::new();
    for m in sg.migrations().await? {
        if !wanted.is_empty() && !wanted.contains(&m.status) {
            continue;
        }
        let off = live_protections_off(sg, &m).await;
        let lanes = sg.lanes(&m).await?;
        if !lanes.is_empty() {
            laned.push((m.name.clone(), lanes_by_node(&lanes)));
        }
        let waiting = waiting_text(sg, &m).await?;
        rows.push((sg.progress(&m).await?, off, waiting));
    }
    if json {
        let all: Vec<_> = rows
            .iter()
            .map(|(p, off, waiting)| StatusJson {
                protections_off: off.as_deref().map(ProtectionOffJson::from_readings),
                nodes: laned
                    .iter()
                    .find(|(name, _)| *name == p.migration.name)
                    .map(|(_, nodes)| nodes.clone()),
                waiting_for: waiting.clone(),
                ..StatusJson::from_progress(p)
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if rows.is_empty() {
        if wanted.is_empty() {
            outln!("no migrations queued");
        } else {
            let names: Vec<&str> = wanted.iter().map(|s| s.as_str()).collect();
            outln!("no migration is {}", names.join(" or "));
        }
        return Ok(());
    }
    let mut t = Grid::new(&[
        "ID",
        "NAME",
        "STATUS",
        "TABLE",
        "TARGET",
        "PROGRESS",
        "ROWS",
        "ROWS/S",
        "ETA",
        "BATCH",
        "JOBS ok/failed/all",
        "NOTE",
    ]);
    for (p, _, waiting) in &rows {
        let m = &p.migration;
        if m.unreadable.is_some() {
            t.row(vec![
                cell(m.id),
                cell(&m.name),
                cell(format!("{} (unreadable)", m.status)),
                cell(&m.table_name),
                cell("-"),
                cell("-"),
                cell("-"),
                cell("-"),
                cell("-"),
                cell("-"),
                cell(format!(
                    "{}/{}/{}",
                    p.jobs.succeeded,
                    p.jobs.failed,
                    p.jobs.total()
                )),
                cell("its stored row cannot be read back (see below)"),
            ]);
            continue;
        }
        t.row(vec![
            cell(m.id),
            cell(&m.name),
            cell(m.status),
            cell(format!("{}.{}", m.table_name, m.key.display_names())),
            cell(target_text(m)),
            cell(format!("{:.1}%", p.percent)),
            cell(rows_of(p.rows_done, p.rows_total)),
            cell(opt(p.rows_per_second.map(|r| thousands(r.round() as i64)))),
            cell(eta_text(p)),
            cell(format!(
                "{} / {}",
                thousands(m.batch_size),
                thousands(m.sub_batch_size)
            )),
            cell(format!(
                "{}/{}/{}",
                p.jobs.succeeded,
                p.jobs.failed,
                p.jobs.total()
            )),
            cell(note_text(p, waiting.as_deref())),
        ]);
    }
    // Narrow, notes, targets and long names are cut short first, then the target, the batch
    // and the job counts are left out (`show` and `--json` have them): a table's name is
    // never cut.
    let t = t.give_way_named(
        &["NOTE", "TARGET", "NAME"],
        &["TARGET", "BATCH", "JOBS ok/failed/all", "NOTE"],
    );
    outln!("{}", draw(&t));
    for (name, nodes) in &laned {
        outln!("lanes of {name} by node:");
        outln!("{}", draw(&nodes_table(nodes)));
    }
    for line in protections_off_lines(&rows) {
        outln!("{line}");
    }
    Ok(())
}

/// A migration's lanes summed per node.
fn nodes_table(nodes: &[NodeProgress]) -> Grid {
    let mut t = Grid::new(&[
        "NODE", "LANES", "DONE", "RUNNING", "HELD", "ROWS", "ETA", "NOTE",
    ]);
    for n in nodes {
        t.row(vec![
            cell(&n.node),
            cell(n.lanes),
            cell(n.done),
            cell(n.running),
            cell(n.held),
            cell(rows_of(n.rows_done, n.rows_estimate)),
            cell(seconds_text(n.eta_seconds)),
            cell(n.hold_reason.as_deref().unwrap_or("")),
        ]);
    }
    t.give_way_named(&["NOTE", "NODE"], &["NOTE"])
}

/// Each lane of a migration.
fn lanes_table(lanes: &[LaneProgress]) -> Grid {
    let mut t = Grid::new(&[
        "LANE",
        "SHARD",
        "NODE",
        "STATE",
        "ROWS",
        "JOBS ok/all",
        "ETA",
        "NOTE",
    ]);
    for l in lanes {
        t.row(vec![
            cell(l.lane),
            cell(format!("{} ({})", l.shard_id, l.relation)),
            cell(&l.node),
            cell(format!("{:?}", l.state).to_lowercase()),
            cell(rows_of(l.rows_done, l.rows_estimate)),
            cell(format!("{}/{}", l.jobs_done, l.jobs)),
            cell(seconds_text(l.eta_seconds)),
            cell(l.hold_reason.as_deref().unwrap_or("")),
        ]);
    }
    t.give_way_named(&["NOTE", "SHARD", "NODE"], &["NOTE"])
}

fn seconds_text(s: Option<f64>) -> String {
    match s {
        Some(s) if s <= 0.0 => "-".into(),
        Some(s) => format_duration(Duration::from_secs(s.round() as u64)).to_string(),
        None => "-".into(),
    }
}

fn jobs_table(jobs: &[Job], lanes: &[Lane]) -> Grid {
    let laned = jobs.iter().any(|j| j.lane.is_some());
    let mut header = vec![
        "JOB", "STATUS", "KEYS", "CURSOR", "ROWS", "ATTEMPTS", "BATCH", "SUB", "TOOK", "WORKER",
        "STARTED",
    ];
    if laned {
        header.insert(2, "LANE (SHARD @ NODE)");
    }
    let mut t = Grid::new(&header);
    for j in jobs {
        // Keys shortened (`0b7e…`): `--json` and `history --job` have them whole.
        let mut row = vec![
            cell(j.id),
            cell(j.status),
            cell(format!(
                "{} ..= {}",
                short_key(&j.min_value),
                short_key(&j.max_value)
            )),
            // The last key whose sub-batch committed: a retry resumes after it.
            cell(opt(j.cursor.as_ref().map(short_key))),
            cell(thousands(j.rows_affected)),
            cell(j.attempts),
            cell(thousands(j.batch_size)),
            cell(thousands(j.sub_batch_size)),
            cell(opt(job_duration_ms(j).map(|ms| {
                format_duration(Duration::from_millis(ms.max(0) as u64))
            }))),
            cell(j.worker.as_deref().unwrap_or("-")),
            cell(time(j.started_at)),
        ];
        if laned {
            row.insert(2, cell(lane_text(j, lanes)));
        }
        t.row(row);
    }
    t.give_way_named(
        // The start time wraps (date over time) before a key range does.
        &["WORKER", "STARTED", "LANE (SHARD @ NODE)", "CURSOR", "KEYS"],
        &["WORKER", "SUB", "ATTEMPTS", "STARTED"],
    )
}

/// `3 (102011 @ 10.0.0.2:5432)`: a job's lane, its shard and the shard's node.
fn lane_text(j: &Job, lanes: &[Lane]) -> String {
    match j.lane {
        None => "-".into(),
        Some(n) => match lanes.iter().find(|l| l.lane == n) {
            Some(l) => format!("{n} ({} @ {})", l.shard_id, l.node),
            None => n.to_string(),
        },
    }
}

pub async fn show(sg: &Sluicegate, migration: &str, json: bool) -> Result<()> {
    let m = sg.migration(migration).await?;
    let p = sg.progress(&m).await?;
    let off = live_protections_off(sg, &m).await;
    let jobs = sg.jobs(&m, None).await?;
    let lanes = sg.lanes(&m).await?;
    let lane_rows = sg.store().lane_list(m.id).await?;
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
    let waiting = waiting_text(sg, &m).await?;
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
            #[serde(skip_serializing_if = "Vec::is_empty")]
            lanes: Vec<LaneProgress>,
        }
        let out = Show {
            status: StatusJson {
                protections_off: off.as_deref().map(ProtectionOffJson::from_readings),
                nodes: (!lanes.is_empty()).then(|| lanes_by_node(&lanes)),
                waiting_for: waiting.clone(),
                ..StatusJson::from_progress(&p)
            },
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
            failed_jobs: failed
                .iter()
                .map(|j| JobJson::in_lanes(j, &lane_rows))
                .collect(),
            lanes: lanes.clone(),
        };
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut t = Grid::headless(2);
    let rows: Vec<(&str, String)> = vec![
        ("id", m.id.to_string()),
        ("name", m.name.clone()),
        (
            "status",
            format!("{} {}", m.status, note_text(&p, waiting.as_deref())),
        ),
        ("kind", m.job_kind.clone()),
        ("arguments", m.job_arguments.to_string()),
        (
            "table",
            format!("{}.{}", m.table_name, m.key.display_names()),
        ),
        ("target", target_text(&m)),
        (
            "key",
            m.key
                .columns()
                .iter()
                .map(|c| format!("{} {}", c.name, c.key_type.sql_name()))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "walk",
            m.key
                .walk()
                .describe()
                .unwrap_or_else(|| "batches count keys".into()),
        ),
        ("keys", format!("{} ..= {}", m.min_value, m.max_value)),
        (
            "scope",
            m.scope
                .clone()
                .unwrap_or_else(|| "every row (no --scope)".into()),
        ),
        (
            "verify",
            m.verify
                .clone()
                .unwrap_or_else(|| "- (no --verify)".into()),
        ),
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
            format!(
                "{} / {}",
                millis(m.interval.as_millis() as i64),
                millis(m.pause_ms)
            ),
        ),
        ("health", {
            let h = &m.health;
            format!(
                    "re-check every {}; replica lag max {} or {}; WAL archive backlog max {} segments; WAL rate max {}; \
                     transaction age max {}; latency drift max {}x; probe {}; autovacuum {}; off: {}",
                    millis(h.hold_ms),
                    bytes(h.max_replica_lag_bytes),
                    millis(h.max_replica_lag_ms),
                    h.max_wal_archive_backlog,
                    h.max_wal_rate_bytes
                        .map(|b| format!("{}/s", bytes(b)))
                        .unwrap_or_else(|| "none".into()),
                    millis(h.max_transaction_age_ms),
                    h.latency_drift_factor,
                    h.probe.as_deref().unwrap_or("none"),
                    h.autovacuum.as_str(),
                    if h.off.is_empty() {
                        "none".to_owned()
                    } else {
                        h.off.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", ")
                    },
                )
        }),
        (
            "sub-batch tuner",
            match (m.target_sub_batch_ms > 0, m.sub_batch_ceiling) {
                (true, Some(ceiling)) => format!(
                    "aims at {} ms per sub-batch, never above {ceiling} keys (the explicit sub-batch size)",
                    m.target_sub_batch_ms
                ),
                (true, None) => format!("aims at {} ms per sub-batch", m.target_sub_batch_ms),
                (false, _) => "off (fixed sizes)".into(),
            },
        ),
        (
            "timeouts",
            format!(
                "statement {}, lock {}",
                millis(m.statement_timeout_ms),
                millis(m.lock_timeout_ms)
            ),
        ),
        (
            "progress",
            format!(
                "{:.1}%, rows changed / in the table (estimated): {}",
                p.percent,
                rows_of(p.rows_done, p.rows_total)
            ),
        ),
        (
            "rate / ETA",
            format!(
                "{} rows/s, ETA {}{}",
                opt(p.rows_per_second.map(|r| thousands(r.round() as i64))),
                eta_text(&p),
                p.pace
                    .map(|pace| format!(
                        " (over the {} newest jobs, {} of running)",
                        pace.jobs,
                        format_duration(Duration::from_secs_f64(pace.seconds))
                    ))
                    .unwrap_or_default()
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
        t.row(vec![cell(k), cell(v)]);
    }
    if m.unreadable.is_some() {
        // Only its identity is real: the rest of the table would be placeholders.
        let mut t = Grid::headless(2);
        for (k, v) in [
            ("id", m.id.to_string()),
            ("name", m.name.clone()),
            ("status", m.status.to_string()),
            ("kind", m.job_kind.clone()),
            ("table", m.table_name.clone()),
        ] {
            t.row(vec![cell(k), cell(v)]);
        }
        outln!("{}", draw(&t));
    } else {
        outln!("{}", draw(&t));
    }
    for line in protections_off_lines(&[(p, off, None)]) {
        outln!("{line}");
    }
    if !lanes.is_empty() {
        outln!("lanes by node:");
        outln!("{}", draw(&nodes_table(&lanes_by_node(&lanes))));
        outln!("lanes:");
        outln!("{}", draw(&lanes_table(&lanes)));
    }
    if !failed.is_empty() {
        outln!("failed jobs:");
        outln!("{}", draw(&jobs_table(&failed, &lane_rows)));
    }
    Ok(())
}

pub async fn jobs(
    sg: &Sluicegate,
    migration: &str,
    status: Option<&str>,
    limit: Option<usize>,
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
    let mut jobs = sg.jobs(&m, status).await?;
    let lanes = sg.store().lane_list(m.id).await?;
    let total = jobs.len();
    if let Some(limit) = limit {
        // The newest first: the last jobs made are the ones a person looks for.
        jobs.reverse();
        jobs.truncate(limit);
    }
    if json {
        let all: Vec<_> = jobs.iter().map(|j| JobJson::in_lanes(j, &lanes)).collect();
        match limit {
            // Limited, the jobs shown are some of them: the total comes with them, as the
            // text's "3 of 10 job(s)" line says.
            Some(limit) => outln!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "total": total,
                    "limit": limit,
                    "status": status.map(|s| s.to_string()),
                    "jobs": all,
                }))?
            ),
            None => outln!("{}", serde_json::to_string_pretty(&all)?),
        }
    } else if jobs.is_empty() {
        outln!("no jobs");
    } else {
        outln!("{}", draw(&jobs_table(&jobs, &lanes)));
        if limit.is_some() {
            outln!(
                "{} of {} job(s){}, newest first",
                jobs.len(),
                total,
                status.map(|s| format!(" {s}")).unwrap_or_default()
            );
        }
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
            outln!("{}", serde_json::to_string_pretty(&log)?);
            return Ok(());
        }
        let mut t = Grid::new(&["TIME", "TRANSITION", "WORKER", "EXCEPTION", "MESSAGE"]);
        for r in &log {
            t.row(vec![
                cell(time(Some(r.created_at))),
                cell(format!("{} -> {}", r.previous_status, r.next_status)),
                cell(r.worker.as_deref().unwrap_or("-")),
                cell(r.exception_class.as_deref().unwrap_or("")),
                cell(r.exception_message.as_deref().unwrap_or("")),
            ]);
        }
        let lanes = sg.store().lane_list(m.id).await?;
        let lane = match j.lane {
            Some(_) => format!(", lane {}", lane_text(&j, &lanes)),
            None => String::new(),
        };
        outln!(
            "job {job_id} of migration {} (keys {} ..= {}{lane}):",
            m.name,
            j.min_value,
            j.max_value
        );
        outln!("{}", draw(&t));
        return Ok(());
    }
    let log = sg.migration_history(&m).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&log)?);
        return Ok(());
    }
    let mut t = Grid::new(&[
        "TIME",
        "EVENT",
        "TRANSITION",
        "ACTOR",
        "REASON",
        "EXCEPTION",
    ]);
    for r in &log {
        t.row(vec![
            cell(time(Some(r.created_at))),
            cell(r.event),
            cell(format!("{} -> {}", opt(r.previous_status), r.next_status)),
            cell(r.actor.as_deref().unwrap_or("-")),
            cell(r.reason.as_deref().unwrap_or("")),
            cell(match (&r.exception_class, &r.exception_message) {
                (Some(c), Some(msg)) => format!("{c}: {msg}"),
                (Some(c), None) => c.clone(),
                _ => String::new(),
            }),
        ]);
    }
    outln!("migration {} ({}):", m.id, m.name);
    outln!("{}", draw(&t));
    Ok(())
}

/// `health`: every indicator's signal and reading now.
pub async fn health(sg: &Sluicegate, migration: &str, json: bool) -> Result<()> {
    let m = sg.migration(migration).await?;
    let readings = sg.health(&m).await?;
    let p = sg.progress(&m).await?;
    let stop = readings.iter().any(|r| r.signal == Signal::Stop);
    if json {
        let out = serde_json::json!({
            "migration_id": m.id,
            "migration": m.name,
            "status": m.status,
            "stop": stop,
            "on_hold_until": m.on_hold_until.filter(|t| *t > Utc::now()),
            "hold_reason": p.hold_reason,
            "indicators": readings,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut t = Grid::new(&["INDICATOR", "SIGNAL", "READING", "THRESHOLD"]);
    for r in &readings {
        t.row(vec![
            cell(r.indicator),
            cell(r.signal),
            cell(r.shown()),
            cell(&r.threshold),
        ]);
    }
    outln!("{}", draw(&t));
    if let Some(notice) = sluicegate::health::protections_off_notice(&readings, &m.health) {
        outln!("{notice}");
    }
    let note = hold_text(&p);
    if !note.is_empty() {
        outln!("{}: {note}", m.name);
    }
    Ok(())
}
