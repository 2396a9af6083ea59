//! The dashboard: server-rendered pages that refresh their content every two seconds
//! (the script asks for `?partial=1` and swaps the `<main>`). No CDN: the script and the
//! stylesheet are served by the binary.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;
use sluicegate::{Job, JobStatus, JobTransition, Migration, MigrationEvent, Progress};

use super::{ApiError, AppState};

const SCRIPT: &str = r#"(function () {
  var main = document.getElementById("live");
  if (!main) return;
  setInterval(function () {
    fetch(location.pathname + "?partial=1", { cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        main.innerHTML = html;
        var stamp = document.getElementById("updated");
        if (stamp) stamp.textContent = new Date().toLocaleTimeString();
      })
      .catch(function () {});
  }, 2000);
})();
"#;

const STYLE: &str = r#"body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2430; background: #f6f7f9; }
header { background: #1d2430; color: #fff; padding: 10px 24px; display: flex; justify-content: space-between; }
header a { color: #fff; text-decoration: none; font-weight: 600; }
main { padding: 16px 24px; }
table { border-collapse: collapse; width: 100%; background: #fff; margin: 8px 0 20px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e3e6eb; vertical-align: top; }
th { background: #eef0f4; font-weight: 600; }
.bar { width: 160px; height: 12px; background: #e3e6eb; border-radius: 6px; overflow: hidden; display: inline-block; vertical-align: middle; }
.bar span { display: block; height: 100%; background: #2f7d4f; }
.status-failed, .status-cancelled { color: #b3261e; font-weight: 600; }
.status-finished, .status-succeeded { color: #2f7d4f; }
.status-active, .status-running, .status-finalizing { color: #1f5fbf; }
.hold { color: #9a6700; }
.charts { display: flex; gap: 16px; flex-wrap: wrap; }
.chart { background: #fff; border: 1px solid #e3e6eb; }
code { font-size: 12px; }
"#;

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    partial: Option<u8>,
}

pub async fn script() -> Response {
    ([(header::CONTENT_TYPE, "application/javascript")], SCRIPT).into_response()
}

pub async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css")], STYLE).into_response()
}

/// The whole page, or only its live part when the script asks.
fn page(title: &str, query: &PageQuery, content: Markup) -> Html<String> {
    if query.partial == Some(1) {
        return Html(content.into_string());
    }
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (title) " · sluicegate" }
                    link rel="stylesheet" href="/static/app.css";
                }
                body {
                    header {
                        a href="/" { "sluicegate" }
                        span { "live · updated " span #updated { (Utc::now().format("%H:%M:%S")) } }
                    }
                    main #live { (content) }
                    script src="/static/app.js" {}
                }
            }
        }
        .into_string(),
    )
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

fn human_duration(seconds: f64) -> String {
    let d = Duration::from_secs_f64(seconds.max(0.0));
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

fn progress_bar(percent: f64) -> Markup {
    html! {
        span .bar title=(format!("{percent:.1}%")) { span style=(format!("width: {:.1}%", percent.clamp(0.0, 100.0))) {} }
        " " (format!("{percent:.1}%"))
    }
}

/// What the workers decided by themselves about `m`, and why: a hold in progress, or a
/// slow-down as a limit nears.
async fn hold_reason(st: &AppState, m: &Migration) -> Result<Option<String>, ApiError> {
    if m.held_since.is_none() && m.throttle_pause_ms > 0 {
        return Ok(Some(format!(
            "slowed down: {} ms between jobs ({})",
            m.throttle_pause_ms,
            m.throttle_reason.as_deref().unwrap_or("a limit nears")
        )));
    }
    match m.held_since {
        Some(since) => {
            let log = st.sg.migration_history(m).await?;
            let reason = log
                .iter()
                .rev()
                .find(|r| r.event == MigrationEvent::Hold)
                .and_then(|r| r.reason.clone())
                .unwrap_or_default();
            Ok(Some(format!(
                "on hold since {} (re-checked every {}): {reason}",
                time(Some(since)),
                humantime::format_duration(m.health.hold())
            )))
        }
        _ => Ok(None),
    }
}

fn eta(p: &Progress) -> String {
    if p.migration.status.is_finished() {
        return "-".into();
    }
    p.eta_seconds
        .map(human_duration)
        .unwrap_or_else(|| "-".into())
}

pub async fn overview(
    State(st): State<AppState>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, ApiError> {
    let mut rows = Vec::new();
    for m in st.sg.migrations().await? {
        let hold = hold_reason(&st, &m).await?;
        rows.push((st.sg.progress(&m).await?, hold));
    }
    let content = html! {
        h1 { "Migrations" }
        @if rows.is_empty() {
            p { "No migration is queued." }
        } @else {
            table {
                tr { th { "id" } th { "name" } th { "status" } th { "table" } th { "progress" } th { "rows" } th { "rows/s" } th { "ETA" } th { "batch" } th { "jobs ok / failed / all" } th { "note" } }
                @for (p, hold) in &rows {
                    @let m = &p.migration;
                    tr {
                        td { (m.id) }
                        td { a href=(format!("/migrations/{}", m.id)) { (m.name) } }
                        td class=(format!("status-{}", m.status)) { (m.status) }
                        td { code { (m.table_name) "." (m.key.display_names()) } }
                        td { (progress_bar(p.percent)) }
                        td { (p.rows_done) " / " (p.rows_total.map(|t| t.to_string()).unwrap_or_else(|| "?".into())) }
                        td { (p.rows_per_second.map(|r| format!("{r:.0}")).unwrap_or_else(|| "-".into())) }
                        td { (eta(p)) }
                        td { (m.batch_size) " / " (m.sub_batch_size) }
                        td { (p.jobs.succeeded) " / " (p.jobs.failed) " / " (p.jobs.total()) }
                        td .hold { (hold.clone().unwrap_or_default()) }
                    }
                }
            }
        }
    };
    Ok(page("Migrations", &q, content))
}

/// A small SVG line chart of `points` (x, y), y from 0.
fn line_chart(title: &str, points: &[(f64, f64)]) -> Markup {
    const W: f64 = 520.0;
    const H: f64 = 170.0;
    const PAD: f64 = 36.0;
    if points.is_empty() {
        return html! { div .chart { p { (title) ": no finished job yet" } } };
    }
    let (x0, x1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
            (lo.min(*x), hi.max(*x))
        });
    let y1 = points.iter().fold(0.0f64, |hi, (_, y)| hi.max(*y)).max(1.0);
    let sx = |x: f64| PAD + (x - x0) / (x1 - x0).max(1e-9) * (W - 2.0 * PAD);
    let sy = |y: f64| H - PAD + 10.0 - y / y1 * (H - 2.0 * PAD);
    let line: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
        .collect();
    html! {
        svg .chart width=(W) height=(H) viewBox=(format!("0 0 {W} {H}")) xmlns="http://www.w3.org/2000/svg" role="img" aria-label=(title) {
            text x="8" y="16" font-size="12" font-weight="600" { (title) }
            text x="4" y=(format!("{:.0}", sy(y1) + 4.0)) font-size="10" { (format!("{y1:.0}")) }
            text x="4" y=(format!("{:.0}", sy(0.0))) font-size="10" { "0" }
            line x1=(PAD) y1=(sy(0.0)) x2=(W - PAD) y2=(sy(0.0)) stroke="#aab" {}
            line x1=(PAD) y1=(sy(y1)) x2=(PAD) y2=(sy(0.0)) stroke="#aab" {}
            polyline points=(line.join(" ")) fill="none" stroke="#1f5fbf" stroke-width="2" {}
            @for (x, y) in points.iter().take(400) {
                circle cx=(format!("{:.1}", sx(*x))) cy=(format!("{:.1}", sy(*y))) r="2" fill="#1f5fbf" {}
            }
        }
    }
}

fn history_table(log: &[JobTransition]) -> Markup {
    html! {
        table {
            tr { th { "time" } th { "transition" } th { "worker" } th { "exception class" } th { "message" } }
            @for r in log {
                tr {
                    td { (time(Some(r.created_at))) }
                    td { (r.previous_status) " → " span class=(format!("status-{}", r.next_status)) { (r.next_status) } }
                    td { (r.worker.clone().unwrap_or_default()) }
                    td { (r.exception_class.clone().unwrap_or_default()) }
                    td { (r.exception_message.clone().unwrap_or_default()) }
                }
            }
        }
    }
}

fn job_seconds(j: &Job) -> Option<f64> {
    Some((j.finished_at? - j.started_at?).num_milliseconds() as f64 / 1000.0)
}

pub async fn migration(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, ApiError> {
    let m = st.sg.migration(&id).await?;
    let p = st.sg.progress(&m).await?;
    let jobs = st.sg.jobs(&m, None).await?;
    let log = st.sg.migration_history(&m).await?;
    let hold = hold_reason(&st, &m).await?;
    let start = jobs.iter().filter_map(|j| j.started_at).min();
    let throughput: Vec<(f64, f64)> = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Succeeded)
        .filter_map(|j| {
            let secs = job_seconds(j)?.max(0.001);
            let at = (j.finished_at? - start?).num_milliseconds() as f64 / 1000.0;
            Some((at, j.rows_affected as f64 / secs))
        })
        .collect();
    let sizes: Vec<(f64, f64)> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (i as f64, j.batch_size as f64))
        .collect();
    let mut failed = Vec::new();
    for j in jobs
        .iter()
        .filter(|j| j.status == JobStatus::Failed || j.attempts > 1)
    {
        failed.push((j, st.sg.job_history(j.id).await?));
    }
    let content = html! {
        h1 { "Migration " (m.id) ": " (m.name) }
        @if let Some(hold) = &hold { p .hold { (hold) } }
        table {
            tr { th { "status" } td class=(format!("status-{}", m.status)) { (m.status) } }
            tr { th { "progress" } td { (progress_bar(p.percent)) " — " (p.rows_done) " of " (p.rows_total.map(|t| t.to_string()).unwrap_or_else(|| "?".into())) " rows" } }
            tr { th { "rate / ETA" } td { (p.rows_per_second.map(|r| format!("{r:.0} rows/s")).unwrap_or_else(|| "-".into())) " / " (eta(&p)) } }
            tr { th { "kind" } td { (m.job_kind) " " code { (m.job_arguments.to_string()) } } }
            tr { th { "table" } td { code { (m.table_name) "." (m.key.display_names()) } " keys " (m.min_value) " ..= " (m.max_value) } }
            tr { th { "batch / sub-batch / max" } td { (m.batch_size) " / " (m.sub_batch_size) " / " (m.max_batch_size.map(|v| v.to_string()).unwrap_or_else(|| "-".into())) } }
            tr { th { "interval / pause" } td { (m.interval.as_millis()) " ms / " (m.pause_ms) " ms" } }
            tr { th { "timeouts" } td { "statement " (m.statement_timeout_ms) " ms, lock " (m.lock_timeout_ms) " ms" } }
            tr { th { "jobs" } td { (p.jobs.succeeded) " succeeded, " (p.jobs.failed) " failed, " (p.jobs.running) " running, " (p.jobs.pending) " pending" } }
            tr { th { "created / finished" } td { (time(Some(m.created_at))) " / " (time(m.finished_at)) } }
        }
        div .charts {
            (line_chart("throughput (rows/s per job, by seconds since start)", &throughput))
            (line_chart("batch size (by job)", &sizes))
        }
        h2 { "Transition log" }
        table {
            tr { th { "time" } th { "event" } th { "transition" } th { "actor" } th { "reason" } th { "exception" } }
            @for r in &log {
                tr {
                    td { (time(Some(r.created_at))) }
                    td { (r.event) }
                    td { (r.previous_status.map(|s| s.to_string()).unwrap_or_else(|| "-".into())) " → " (r.next_status) }
                    td { (r.actor.clone().unwrap_or_default()) }
                    td { (r.reason.clone().unwrap_or_default()) }
                    td { (r.exception_class.clone().unwrap_or_default()) " " (r.exception_message.clone().unwrap_or_default()) }
                }
            }
        }
        h2 { "Failed and retried jobs" }
        @if failed.is_empty() { p { "None." } }
        @for (j, history) in &failed {
            h3 { a href=(format!("/jobs/{}", j.id)) { "Job " (j.id) } " — keys " (j.min_value) " ..= " (j.max_value) ", " span class=(format!("status-{}", j.status)) { (j.status) } ", attempt " (j.attempts) }
            (history_table(history))
        }
    };
    Ok(page(&m.name, &q, content))
}

pub async fn job(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, ApiError> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("job id {id:?} is not a number"),
        )
    })?;
    let j = st.sg.job(id).await?;
    let m = st.sg.migration(&j.migration_id.to_string()).await?;
    let history = st.sg.job_history(id).await?;
    let recent = j
        .metrics
        .get("recent")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    let content = html! {
        h1 { "Job " (j.id) " of " a href=(format!("/migrations/{}", m.id)) { (m.name) } }
        table {
            tr { th { "status" } td class=(format!("status-{}", j.status)) { (j.status) } }
            tr { th { "keys" } td { (j.min_value) " ..= " (j.max_value) " (cursor " (j.cursor.as_ref().map(|c| c.to_string()).unwrap_or_else(|| "-".into())) ")" } }
            tr { th { "attempts" } td { (j.attempts) } }
            tr { th { "rows" } td { (j.rows_affected) } }
            tr { th { "batch / sub-batch" } td { (j.batch_size) " / " (j.sub_batch_size) } }
            tr { th { "started / finished" } td { (time(j.started_at)) " / " (time(j.finished_at)) } }
            tr { th { "took" } td { (job_seconds(&j).map(human_duration).unwrap_or_else(|| "-".into())) } }
            tr { th { "worker / lease" } td { (j.worker.clone().unwrap_or_default()) " / " (time(j.lease_expires_at)) } }
            tr { th { "sub-batches" } td { (j.metrics.get("sub_batches").map(|v| v.to_string()).unwrap_or_else(|| "-".into())) ", slowest " (j.metrics.get("slowest_sub_batch_ms").map(|v| v.to_string()).unwrap_or_else(|| "-".into())) " ms" } }
        }
        h2 { "Transition history" }
        (history_table(&history))
        h2 { "Recent sub-batches" }
        table {
            tr { th { "keys" } th { "rows" } th { "ms" } }
            @for s in &recent {
                tr { td { (s["start"]) " ..= " (s["end"]) } td { (s["rows"]) } td { (s["ms"]) } }
            }
        }
        (PreEscaped(""))
    };
    Ok(page(&format!("job {id}"), &q, content))
}
