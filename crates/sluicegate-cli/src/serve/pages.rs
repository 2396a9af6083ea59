//! The dashboard: server-rendered pages that refresh their content every two seconds
//! (the script asks for `?partial=1` and swaps the `<main>`). No CDN: the script and the
//! stylesheet are served by the binary.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Deserialize;
use sluicegate::{Job, JobStatus, JobTransition, Migration, MigrationEvent, Progress};

use super::edge::{ApiQuery, Id};
use super::{ApiError, AppState};
use crate::units::{millis, rows_of, thousands};

const SCRIPT: &str = r#"(function () {
  // Actions: the token is kept for this browser session only and sent as the bearer header;
  // the answer (a refusal included) is shown next to the buttons.
  var panel = document.getElementById("actions");
  if (panel) {
    var token = document.getElementById("token");
    var said = document.getElementById("said");
    token.value = sessionStorage.getItem("sluicegate-token") || "";
    token.addEventListener("input", function () {
      sessionStorage.setItem("sluicegate-token", token.value);
    });
    var act = function (action, body) {
      fetch("/api/migrations/" + panel.dataset.migration + "/" + action, {
        method: "POST",
        headers: { "Authorization": "Bearer " + token.value, "Content-Type": "application/json" },
        body: JSON.stringify(body)
      })
        .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
        .then(function (answer) {
          var ok = answer[0] === 200;
          said.className = ok ? "said ok" : "said refused";
          said.textContent = ok
            ? action + ": done, now " + answer[1].migration.status
            : action + " refused (" + answer[0] + "): " + answer[1].error;
        })
        .catch(function (e) { said.className = "said refused"; said.textContent = String(e); });
    };
    panel.querySelectorAll("button[data-action]").forEach(function (b) {
      b.addEventListener("click", function () {
        act(b.dataset.action, { reason: document.getElementById("reason").value || null });
      });
    });
    document.getElementById("set").addEventListener("submit", function (e) {
      e.preventDefault();
      var body = { reason: document.getElementById("reason").value || null };
      ["batch_size", "sub_batch_size", "max_batch_size", "pause_ms", "interval_ms",
       "statement_timeout_ms", "lock_timeout_ms"].forEach(function (k) {
        var v = document.getElementById("set-" + k).value;
        if (v !== "") body[k] = Number(v);
      });
      act("set", body);
    });
  }
  var main = document.getElementById("live");
  if (!main) return;
  setInterval(function () {
    var query = location.search ? location.search + "&partial=1" : "?partial=1";
    fetch(location.pathname + query, { cache: "no-store" })
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
.held { background: #fff4d6; border: 2px solid #d4a72c; padding: 8px 12px; font-weight: 600; }
.status-held { color: #9a6700; font-weight: 700; }
#actions { background: #fff; border: 1px solid #e3e6eb; margin: 12px 24px 0; padding: 10px 12px; }
#actions input { width: 90px; }
#actions #token, #actions #reason { width: 180px; }
.signal-stop { color: #b3261e; font-weight: 700; } .signal-normal { color: #2f7d4f; } .signal-unknown { color: #6b7280; }
.said.ok { color: #2f7d4f; } .said.refused { color: #b3261e; font-weight: 600; }
nav.filter a { margin-right: 10px; }
.charts { display: flex; gap: 16px; flex-wrap: wrap; }
.chart { background: #fff; border: 1px solid #e3e6eb; }
code { font-size: 12px; }
"#;

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    partial: Option<u8>,
    /// Overview filter: a status, or `held`.
    status: Option<String>,
}

pub async fn script() -> Response {
    ([(header::CONTENT_TYPE, "application/javascript")], SCRIPT).into_response()
}

pub async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css")], STYLE).into_response()
}

/// The whole page, or only its live part when the script asks.
fn page(title: &str, query: &PageQuery, content: Markup) -> Html<String> {
    page_with(title, query, None, content)
}

/// [`page`] with a panel above the live part that the refresh leaves alone (the actions:
/// a token being typed must not be swapped away).
fn page_with(
    title: &str,
    query: &PageQuery,
    controls: Option<Markup>,
    content: Markup,
) -> Html<String> {
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
                    @if let Some(controls) = controls { (controls) }
                    main #live { (content) }
                    script src="/static/app.js" {}
                }
            }
        }
        .into_string(),
    )
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// A status as the dashboard shows it: `held` (prominent) while a hold lasts.
fn shown_status(m: &Migration) -> String {
    if m.held_since.is_some() && m.status == sluicegate::MigrationStatus::Active {
        "held".into()
    } else {
        m.status.to_string()
    }
}

/// Overview order: running work first (active, finalizing, held), then paused, failed, and
/// the ended ones; newest first within.
fn rank(m: &Migration) -> (u8, std::cmp::Reverse<i64>) {
    use sluicegate::MigrationStatus as S;
    let r = match m.status {
        S::Active | S::Finalizing => 0,
        S::Paused => 1,
        S::Failed => 2,
        S::Finished | S::Cancelled => 3,
    };
    (r, std::cmp::Reverse(m.id))
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

/// The time left at the recent pace; `paused` / `held` while it stands still.
fn eta(p: &Progress) -> String {
    let m = &p.migration;
    if m.status.is_finished() {
        return "-".into();
    }
    if m.status == sluicegate::MigrationStatus::Paused {
        return "paused".into();
    }
    if m.held_since.is_some() {
        return "held".into();
    }
    p.eta_seconds
        .map(human_duration)
        .unwrap_or_else(|| "-".into())
}

pub async fn overview(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Html<String>, ApiError> {
    let mut all = st.sg.migrations().await?;
    all.sort_by_key(rank);
    let filter = q.status.clone().filter(|s| !s.is_empty());
    let mut rows = Vec::new();
    for m in all {
        if filter
            .as_deref()
            .is_some_and(|f| f != shown_status(&m) && f != m.status.as_str())
        {
            continue;
        }
        let hold = hold_reason(&st, &m).await?;
        rows.push((st.sg.progress(&m).await?, hold));
    }
    let content = html! {
        h1 { "Migrations" }
        nav .filter {
            "show: "
            a href="/" { "all" }
            @for s in ["active", "held", "paused", "failed", "finished", "cancelled"] {
                a href=(format!("/?status={s}")) { (s) }
            }
        }
        @if rows.is_empty() {
            p { "No migration " (filter.as_deref().map(|f| format!("is {f}")).unwrap_or_else(|| "is queued".into())) "." }
        } @else {
            table {
                tr { th { "id" } th { "name" } th { "status" } th { "table" } th { "progress" } th { "rows" } th { "rows/s" } th { "ETA" } th { "batch" } th { "jobs ok / failed / all" } th { "note" } }
                @for (p, hold) in &rows {
                    @let m = &p.migration;
                    tr {
                        td { (m.id) }
                        td { a href=(format!("/migrations/{}", m.id)) { (m.name) } }
                        td class=(format!("status-{}", shown_status(m))) { (shown_status(m)) }
                        td { code { (m.table_name) "." (m.key.display_names()) } }
                        td { (progress_bar(p.percent)) }
                        td { (rows_of(p.rows_done, p.rows_total)) }
                        td { (p.rows_per_second.map(|r| thousands(r.round() as i64)).unwrap_or_else(|| "-".into())) }
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

/// A small SVG line chart of `points` (x, y), y from 0; with `time_axis`, x is seconds
/// (labelled at both ends) and gaps in time break the line.
fn line_chart(title: &str, points: &[(f64, f64)], time_axis: bool) -> Markup {
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
    // A gap (a pause, a hold, a stop) breaks the line rather than being drawn across: a step
    // more than three times the usual one, and at least a second, starts a new segment.
    let mut steps: Vec<f64> = points.windows(2).map(|w| w[1].0 - w[0].0).collect();
    steps.sort_by(|a, b| a.total_cmp(b));
    let usual = steps.get(steps.len() / 2).copied().unwrap_or(0.0);
    let mut segments: Vec<Vec<String>> = vec![Vec::new()];
    for (i, (x, y)) in points.iter().enumerate() {
        if i > 0 && time_axis && x - points[i - 1].0 > (3.0 * usual).max(1.0) {
            segments.push(Vec::new());
        }
        if let Some(segment) = segments.last_mut() {
            segment.push(format!("{:.1},{:.1}", sx(*x), sy(*y)));
        }
    }
    html! {
        svg .chart width=(W) height=(H) viewBox=(format!("0 0 {W} {H}")) xmlns="http://www.w3.org/2000/svg" role="img" aria-label=(title) {
            text x="8" y="16" font-size="12" font-weight="600" { (title) }
            text x="4" y=(format!("{:.0}", sy(y1) + 4.0)) font-size="10" { (format!("{y1:.0}")) }
            text x="4" y=(format!("{:.0}", sy(0.0))) font-size="10" { "0" }
            line x1=(PAD) y1=(sy(0.0)) x2=(W - PAD) y2=(sy(0.0)) stroke="#aab" {}
            line x1=(PAD) y1=(sy(y1)) x2=(PAD) y2=(sy(0.0)) stroke="#aab" {}
            @if time_axis {
                @let digits = if x1 - x0 < 10.0 { 1 } else { 0 };
                text x=(PAD) y=(format!("{:.0}", H - 4.0)) font-size="10" { (format!("{x0:.digits$}s")) }
                text x=(format!("{:.0}", W - PAD - 30.0)) y=(format!("{:.0}", H - 4.0)) font-size="10" { (format!("{x1:.digits$}s")) }
            }
            @for segment in &segments {
                polyline points=(segment.join(" ")) fill="none" stroke="#1f5fbf" stroke-width="2" {}
            }
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
    Id(id): Id,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Html<String>, ApiError> {
    let m = st.sg.migration(&id).await?;
    let p = st.sg.progress(&m).await?;
    let jobs = st.sg.jobs(&m, None).await?;
    let log = st.sg.migration_history(&m).await?;
    let hold = hold_reason(&st, &m).await?;
    let lanes = st.sg.lanes(&m).await?;
    let nodes = sluicegate::lanes_by_node(&lanes);
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
    let mut throughput = throughput;
    throughput.sort_by(|a, b| a.0.total_cmp(&b.0));
    let sizes: Vec<(f64, f64)> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (i as f64, j.batch_size as f64))
        .collect();
    // Failures grouped by class and message: how many, first and last, one history.
    struct Group<'a> {
        class: String,
        message: String,
        jobs: Vec<&'a Job>,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        history: Vec<JobTransition>,
    }
    let mut groups: Vec<Group> = Vec::new();
    for j in jobs
        .iter()
        .filter(|j| j.status == JobStatus::Failed || j.attempts > 1)
    {
        let history = st.sg.job_history(j.id).await?;
        for row in history.iter().filter(|r| r.exception_class.is_some()) {
            let class = row.exception_class.clone().unwrap_or_default();
            let message = row.exception_message.clone().unwrap_or_default();
            match groups
                .iter_mut()
                .find(|g| g.class == class && g.message == message)
            {
                Some(g) => {
                    if !g.jobs.iter().any(|x| x.id == j.id) {
                        g.jobs.push(j);
                    }
                    g.first = g.first.min(row.created_at);
                    g.last = g.last.max(row.created_at);
                }
                None => groups.push(Group {
                    class,
                    message,
                    jobs: vec![j],
                    first: row.created_at,
                    last: row.created_at,
                    history: history.clone(),
                }),
            }
        }
    }
    let running: Vec<&Job> = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Running)
        .collect();
    // Each indicator's live reading, while the migration may still run.
    let health = if m.status.is_finished() || m.unreadable.is_some() {
        None
    } else {
        Some(st.sg.health(&m).await.map_err(|e| e.to_string()))
    };
    let now = Utc::now();
    let held = m.held_since.is_some() && m.status == sluicegate::MigrationStatus::Active;
    let controls = html! {
        div #actions data-migration=(m.id) {
            strong { "Act on this migration " }
            input #token type="password" placeholder="token (kept for this session)";
            " "
            input #reason type="text" placeholder="reason (optional)";
            " "
            @for action in ["pause", "resume", "retry", "cancel"] {
                button data-action=(action) type="button" { (action) } " "
            }
            form #set style="margin-top: 8px" {
                "set: "
                @for (field, now) in [
                    ("batch_size", m.batch_size.to_string()),
                    ("sub_batch_size", m.sub_batch_size.to_string()),
                    ("max_batch_size", m.max_batch_size.map(|v| v.to_string()).unwrap_or_default()),
                    ("pause_ms", m.pause_ms.to_string()),
                    ("interval_ms", m.interval.as_millis().to_string()),
                    ("statement_timeout_ms", m.statement_timeout_ms.to_string()),
                    ("lock_timeout_ms", m.lock_timeout_ms.to_string()),
                ] {
                    label { (field) " " input id=(format!("set-{field}")) type="number" min="0" placeholder=(now); } " "
                }
                button type="submit" { "set" }
            }
            div #said .said {}
        }
    };
    // Protections that are off: indicators that cannot be read, and the grant for each.
    let off: Vec<&sluicegate::health::Reading> = match &health {
        Some(Ok(readings)) => sluicegate::health::protections_off(readings, &m.health),
        _ => Vec::new(),
    };
    let content = html! {
        h1 { "Migration " (m.id) ": " (m.name) }
        @if let Some(why) = &m.unreadable {
            p .held #unreadable { "UNREADABLE — its stored row cannot be read back (" (why) "); a worker fails it, cancel ends it. The settings below are placeholders." }
        }
        @if !off.is_empty() {
            div .hold #protections-off {
                strong {
                    "Protections off: " (off.len()) " health indicator(s) cannot be read; "
                    @if m.health.require_health { "they hold the migration until readable (--require-health)." }
                    @else { "they read unknown, which never holds (--require-health would hold instead)." }
                }
                ul {
                    @for r in &off {
                        li {
                            code { (r.indicator) } ": " (r.reading)
                            @if let Some(grant) = &r.grant { " — turn it on with " code { (grant) ";" } }
                        }
                    }
                }
            }
        }
        @if held {
            p .held {
                "HELD — " (hold.clone().unwrap_or_default()) "; next re-check at " (time(m.on_hold_until))
            }
        } @else if let Some(hold) = &hold { p .hold { (hold) } }
        table {
            tr { th { "status" } td class=(format!("status-{}", shown_status(&m))) { (shown_status(&m)) } }
            tr { th { "progress" } td { (progress_bar(p.percent)) " of keys — rows changed / in the table (estimated): " (rows_of(p.rows_done, p.rows_total)) } }
            tr { th { "rate / ETA" } td { (p.rows_per_second.map(|r| format!("{} rows/s", thousands(r.round() as i64))).unwrap_or_else(|| "-".into())) " / " (eta(&p)) } }
            tr { th { "kind" } td { (m.job_kind) " " code { (m.job_arguments.to_string()) } } }
            tr { th { "table" } td { code { (m.table_name) "." (m.key.display_names()) } " keys " (m.min_value) " ..= " (m.max_value) } }
            @if let Some(walk) = m.key.walk().describe() {
                tr { th { "walk" } td { (walk) } }
            }
            tr { th { "target" } td {
                @match &m.target {
                    Some(t) => { code { (t.display) } @if !st.sg.is_own_target(&m) { " (another target: its health is read by its own workers)" } }
                    None => { "unknown (queued before schema v5; `sluicegate adopt` it)" }
                }
            } }
            tr { th { "batch / sub-batch / max" } td { (thousands(m.batch_size)) " / " (thousands(m.sub_batch_size)) " / " (m.max_batch_size.map(thousands).unwrap_or_else(|| "-".into())) } }
            tr { th { "interval / pause" } td { (millis(m.interval.as_millis() as i64)) " / " (millis(m.pause_ms)) } }
            tr { th { "timeouts" } td { "statement " (millis(m.statement_timeout_ms)) ", lock " (millis(m.lock_timeout_ms)) } }
            tr { th { "jobs" } td { (p.jobs.succeeded) " succeeded, " (p.jobs.failed) " failed, " (p.jobs.running) " running, " (p.jobs.pending) " pending" } }
            tr { th { "created / finished" } td { (time(Some(m.created_at))) " / " (time(m.finished_at)) } }
        }
        @if !nodes.is_empty() {
            h2 { "Lanes by node" }
            table #lanes-by-node {
                tr { th { "node" } th { "lanes" } th { "done" } th { "running" } th { "held" } th { "rows" } th { "ETA" } th { "note" } }
                @for n in &nodes {
                    tr class=(if n.held > 0 { "held" } else { "" }) {
                        td { code { (n.node) } }
                        td { (n.lanes) }
                        td { (n.done) }
                        td { (n.running) }
                        td { (n.held) }
                        td { (rows_of(n.rows_done, n.rows_estimate)) }
                        td { (n.eta_seconds.filter(|s| *s > 0.0).map(|s| humantime::format_duration(std::time::Duration::from_secs(s.round() as u64)).to_string()).unwrap_or_else(|| "-".into())) }
                        td { (n.hold_reason.clone().unwrap_or_default()) }
                    }
                }
            }
            details {
                summary { (lanes.len()) " lanes (one per shard)" }
                table #lanes {
                    tr { th { "lane" } th { "shard" } th { "node" } th { "state" } th { "rows" } th { "jobs ok/all" } }
                    @for l in &lanes {
                        tr {
                            td { (l.lane) }
                            td { (l.shard_id) " " code { (l.relation) } }
                            td { code { (l.node) } }
                            td { (format!("{:?}", l.state).to_lowercase()) }
                            td { (rows_of(l.rows_done, l.rows_estimate)) }
                            td { (l.jobs_done) "/" (l.jobs) }
                        }
                    }
                }
            }
        }
        div .charts {
            (line_chart("throughput (rows/s per job, by seconds since the first job)", &throughput, true))
            (line_chart("batch size (by job)", &sizes, false))
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
        @if let Some(health) = &health {
            h2 { "Health, now" }
            @match health {
                Ok(readings) => {
                    table {
                        tr { th { "indicator" } th { "signal" } th { "reading" } th { "threshold" } }
                        @for r in readings {
                            tr {
                                td { (r.indicator) }
                                td class=(format!("signal-{}", r.signal)) { (r.signal) }
                                td { (r.shown()) }
                                td { (r.threshold) }
                            }
                        }
                    }
                }
                Err(e) => { p .hold { "health could not be read: " (e) } }
            }
        }
        h2 { "Running jobs" }
        @if running.is_empty() { p { "None." } } @else {
            table {
                tr { th { "job" } th { "keys" } th { "worker" } th { "running for" } th { "attempt" } th { "lease until" } }
                @for j in &running {
                    tr {
                        td { a href=(format!("/jobs/{}", j.id)) { (j.id) } }
                        td { (j.min_value) " ..= " (j.max_value) }
                        td { (j.worker.clone().unwrap_or_default()) }
                        td { (j.started_at.map(|s| human_duration((now - s).num_milliseconds() as f64 / 1000.0)).unwrap_or_else(|| "-".into())) }
                        td { (j.attempts) }
                        td { (time(j.lease_expires_at)) }
                    }
                }
            }
        }
        h2 { "Failures, grouped" }
        @if groups.is_empty() { p { "None." } }
        @for g in &groups {
            h3 { (g.class) ": " (g.message) }
            p {
                (g.jobs.len()) " job(s), first " (time(Some(g.first))) ", last " (time(Some(g.last))) "; jobs "
                @for j in &g.jobs { a href=(format!("/jobs/{}", j.id)) { (j.id) } " (" span class=(format!("status-{}", j.status)) { (j.status) } ") " }
            }
            details { summary { "history of job " (g.jobs[0].id) } (history_table(&g.history)) }
        }
    };
    Ok(page_with(&m.name, &q, Some(controls), content))
}

pub async fn job(
    State(st): State<AppState>,
    Id(id): Id,
    ApiQuery(q): ApiQuery<PageQuery>,
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
    let recent = &j.metrics.recent;
    let or_dash = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
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
            tr { th { "sub-batches (its latest attempt)" } td { (or_dash(j.metrics.sub_batches)) ", slowest " (or_dash(j.metrics.slowest_sub_batch_ms)) " ms" } }
        }
        h2 { "Transition history" }
        (history_table(&history))
        h2 { "Recent sub-batches" }
        table {
            tr { th { "keys" } th { "rows" } th { "ms" } }
            @for s in recent {
                tr { td { (s.start) " ..= " (s.end) } td { (s.rows) } td { (s.ms) } }
            }
        }
        (PreEscaped(""))
    };
    Ok(page(&format!("job {id}"), &q, content))
}
