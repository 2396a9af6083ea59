//! `sluicegate serve`: every endpoint through the router (no server), the token rules,
//! `/metrics` checked by the real `promtool`, and the dashboard rendered by headless Chromium.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use sluicegate::store::Backend;
use sluicegate::testing::TestDb;
use sluicegate::{store_test, MigrationEvent, QueueRequest, Sluicegate, WorkerOptions};
use sluicegate_cli::serve::{router, serve_with, AppState};
use tower::ServiceExt;

/// A migration mid-run: some jobs done, the job holding key 150 failed once (a NOT NULL
/// violation, an error on both engines), more to come. Returns the handle and the failed job's id.
async fn running_migration(db: &TestDb) -> (Sluicegate, i64) {
    db.create_items("items", &[(1, 500)]).await;
    let sg = db.sluicegate().await;
    let mut req = QueueRequest::new("backfill_items", "sql", "items").argument(
        "sql",
        "UPDATE items SET n = CASE WHEN id = 150 THEN NULL ELSE n + 1 END WHERE id BETWEEN $1 AND $2",
    );
    req.batch_size = 50;
    req.sub_batch_size = 10;
    req.pause_ms = 0;
    req.interval = Duration::ZERO;
    // Fixed sizes: the figures below count rows of whole sub-batches.
    req.target_sub_batch_time = Duration::ZERO;
    // The trial sub-batch (keys 1..10) does not reach key 150: queueing succeeds.
    let m = sg.queue(&req).await.unwrap();
    let worker = sg.worker(WorkerOptions {
        name: "w1".into(),
        ..WorkerOptions::default()
    });
    // One job a call, none started ahead: four jobs on either engine.
    for _ in 0..4 {
        worker.run_once().await.unwrap();
    }
    let failed = sg
        .jobs(&m, Some(sluicegate::JobStatus::Failed))
        .await
        .unwrap();
    assert_eq!(failed.len(), 1, "one failed job");
    (sg, failed[0].id)
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, String, axum::http::HeaderMap) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "localhost:8080");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_owned())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&bytes).into_owned(),
        headers,
    )
}

/// The newest row of migration 1's transition log.
async fn last_log_row(sg: &Sluicegate) -> sluicegate::MigrationTransition {
    let m = sg.migration("1").await.unwrap();
    sg.migration_history(&m).await.unwrap().pop().unwrap()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn log_table(db: &TestDb) -> &'static str {
    match db.backend {
        Backend::Postgres => "sluicegate.migration_transition_logs",
        Backend::Sqlite => "sluicegate_migration_transition_logs",
    }
}

store_test!(dashboard_pages_render_and_refresh, |db| {
    let (sg, failed_job) = running_migration(&db).await;
    let st = AppState::new(sg, None);
    let (status, body, headers) = call(&st, "GET", "/", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(
        body.contains("backfill_items") && body.contains("/static/app.js"),
        "{body}"
    );
    assert!(body.contains("class=\"bar\""), "a progress bar: {body}");
    let (_, partial, _) = call(&st, "GET", "/?partial=1", None, None).await;
    assert!(
        partial.contains("backfill_items") && !partial.contains("<html"),
        "{partial}"
    );
    let (status, page, _) = call(&st, "GET", "/migrations/1", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for needle in [
        "Transition log",
        "<svg",
        "throughput",
        "batch size",
        "NotNullViolation",
        &format!("/jobs/{failed_job}"),
        "Failures, grouped",
        "id=\"actions\"",
        "Health, now",
        "sub_batch_latency",
        "<th>target</th>",
    ] {
        assert!(page.contains(needle), "migration page shows {needle:?}");
    }
    let (status, body, _) = call(&st, "GET", "/api/migrations/1/health", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["indicators"].as_array().map(Vec::len), Some(8));
    let (status, page, _) = call(&st, "GET", &format!("/jobs/{failed_job}"), None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("running → ") && page.contains("NotNullViolation"),
        "{page}"
    );
    let (status, script, _) = call(&st, "GET", "/static/app.js", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(script.contains("partial=1"));
    let (status, body, _) = call(&st, "GET", "/migrations/999", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"], "no migration \"999\"");
    let (status, _, _) = call(&st, "GET", "/nowhere", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
});

store_test!(the_dashboard_shows_holds_and_slow_downs, |db| {
    let (sg, _) = running_migration(&db).await;
    let m = sg.migration("backfill_items").await.unwrap();
    sg.store()
        .migration_throttle(&sluicegate::store::MigrationThrottleParams {
            migration_id: m.id,
            pause_ms: 150,
            reason: Some("wal_rate: 75.0 MiB/s of 100.0 MiB/s".into()),
            log: "slowing down: 150 ms between jobs".into(),
            actor: "w1".into(),
        })
        .await
        .unwrap();
    let st = AppState::new(sg.clone(), None);
    let (_, body, _) = call(&st, "GET", "/", None, None).await;
    assert!(
        body.contains("slowed down: 150 ms between jobs (wal_rate: 75.0 MiB/s of 100.0 MiB/s)"),
        "{body}"
    );
    let hold = sluicegate::store::MigrationTransitionParams::new(
        &sg.migration("backfill_items").await.unwrap(),
        MigrationEvent::Hold,
        "w1",
    )
    .unwrap()
    .with_reason(Some(
        "probe: the probe returned false (returns true)".into(),
    ))
    .holding_for(
        sluicegate::health::Indicator::Probe,
        std::time::Duration::from_secs(5),
    );
    sg.store().migration_transition(&hold).await.unwrap();
    let (_, page, _) = call(&st, "GET", "/migrations/1", None, None).await;
    assert!(
        page.contains("on hold since ") && page.contains("probe: the probe returned false"),
        "{page}"
    );
});

store_test!(api_read_endpoints, |db| {
    let (sg, failed_job) = running_migration(&db).await;
    let st = AppState::new(sg, None);
    let logs_before = db
        .scalar(&format!("SELECT count(*) FROM {}", log_table(&db)))
        .await;
    let (status, body, headers) = call(&st, "GET", "/api/migrations", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let all = json(&body);
    assert_eq!(all[0]["name"], "backfill_items");
    assert_eq!(all[0]["status"], "active");
    assert_eq!(all[0]["jobs"]["failed"], 1);
    for uri in ["/api/migrations/1", "/api/migrations/backfill_items"] {
        let (status, body, _) = call(&st, "GET", uri, None, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert_eq!(json(&body)["id"], 1);
    }
    let (_, body, _) = call(&st, "GET", "/api/migrations/1/jobs", None, None).await;
    assert_eq!(json(&body).as_array().unwrap().len(), 4);
    let (_, body, _) = call(&st, "GET", "/api/migrations/1/history", None, None).await;
    assert_eq!(json(&body)[0]["event"], "queue");
    let (_, body, _) = call(
        &st,
        "GET",
        &format!("/api/jobs/{failed_job}/history"),
        None,
        None,
    )
    .await;
    let history = json(&body);
    assert_eq!(history[1]["next_status"], "failed");
    assert_eq!(history[1]["exception_class"], "NotNullViolation");
    let (status, body, _) = call(&st, "GET", "/api/jobs/abc/history", None, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("not a number"));
    let (status, _, _) = call(&st, "GET", "/api/jobs/9999/history", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(&st, "GET", "/api/migrations/999/jobs", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {}", log_table(&db)))
            .await,
        logs_before,
        "reading never writes"
    );
});

store_test!(mutations_need_the_bearer_token, |db| {
    let (sg, _) = running_migration(&db).await;
    let off = AppState::new(sg.clone(), None);
    let (status, body, _) = call(
        &off,
        "POST",
        "/api/migrations/1/pause",
        Some("anything"),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "no token configured: mutations are off"
    );
    assert!(json(&body)["error"]
        .as_str()
        .unwrap()
        .contains("--token-file"));

    let on = AppState::new(sg.clone(), Some("s3cret-token".into()));
    let (status, _, headers) = call(&on, "POST", "/api/migrations/1/pause", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    let (status, _, _) = call(
        &on,
        "POST",
        "/api/migrations/1/pause",
        Some("s3cret-tokeN"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        sg.migration("1").await.unwrap().status,
        sluicegate::MigrationStatus::Active
    );

    let (status, body, _) = call(
        &on,
        "POST",
        "/api/migrations/1/pause",
        Some("s3cret-token"),
        Some(r#"{"reason": "deploy freeze"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["migration"]["status"], "paused");
    let last = last_log_row(&sg).await;
    assert_eq!(last.actor.as_deref(), Some("http"));
    assert_eq!(last.reason.as_deref(), Some("deploy freeze"));

    let (status, body, _) = call(
        &on,
        "POST",
        "/api/migrations/1/pause",
        Some("s3cret-token"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        json(&body)["error"],
        "cannot pause migration backfill_items: it is paused"
    );
    let (status, _, _) = call(
        &on,
        "POST",
        "/api/migrations/1/resume",
        Some("s3cret-token"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let last = last_log_row(&sg).await;
    assert_eq!(last.actor.as_deref(), Some("http"));
    assert_eq!(last.reason, None, "no reason given, none recorded");
    // `set` through the API: the change and its log row; without the token, refused.
    let set_body = r#"{"batch_size": 80, "pause_ms": 5, "reason": "catch up"}"#;
    let (status, _, _) = call(&on, "POST", "/api/migrations/1/set", None, Some(set_body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body, _) = call(
        &on,
        "POST",
        "/api/migrations/1/set",
        Some("s3cret-token"),
        Some(set_body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(json(&body)["migration"]["batch_size"], 80);
    let last = last_log_row(&sg).await;
    assert_eq!(last.event, MigrationEvent::Set);
    assert_eq!(
        last.reason.as_deref(),
        Some("batch_size 50 -> 80; pause_ms 0 -> 5 (catch up)")
    );
    let (status, body, _) = call(
        &on,
        "POST",
        "/api/migrations/1/set",
        Some("s3cret-token"),
        Some(r#"{"sub_batch_size": 500}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = call(
        &on,
        "POST",
        "/api/migrations/1/explode",
        Some("s3cret-token"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = call(
        &on,
        "POST",
        "/api/migrations/999/cancel",
        Some("s3cret-token"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
});

store_test!(metrics_pass_promtool, |db| {
    let (sg, _) = running_migration(&db).await;
    let st = AppState::new(sg, None);
    let (status, body, headers) = call(&st, "GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    for name in [
        "batched_migration_job_batch_size",
        "batched_migration_job_sub_batch_size",
        "batched_migration_job_interval_seconds",
        "batched_migration_job_duration_seconds",
        "batched_migration_job_updated_tuples_total",
        "batched_migration_migrated_tuples_total",
        "batched_migration_total_tuples",
        "batched_migration_last_update_time_seconds",
        "batched_migration_job_query_duration_seconds_bucket",
        "batched_migration_jobs",
        "process_cpu_seconds_total",
    ] {
        assert!(
            body.contains(&format!("{name}{{")) || body.contains(&format!("{name} ")),
            "{name} in /metrics:\n{body}"
        );
    }
    assert!(body.contains(r#"batched_migration_jobs{migration_id="1",migration="backfill_items",status="failed"} 1"#), "{body}");
    assert!(body.contains(r#"batched_migration_migrated_tuples_total{migration_id="1",migration="backfill_items"} 190"#), "{body}");
    // A second scrape must not observe the same sub-batches again.
    let (_, again, _) = call(&st, "GET", "/metrics", None, None).await;
    let count = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("batched_migration_job_query_duration_seconds_count"))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    };
    assert_eq!(count(&body), count(&again));
    check_with_promtool(&body);
});

fn check_with_promtool(body: &str) {
    let Ok(path) = which("promtool") else {
        eprintln!("promtool check metrics: SKIPPED, promtool not found (Debian package prometheus; scripts/test installs it)");
        assert!(
            std::env::var_os("SLUICEGATE_REQUIRE_TOOLS").is_none(),
            "promtool is required here"
        );
        return;
    };
    let mut child = Command::new(path)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{report}"
    );
    assert!(report.trim().is_empty(), "promtool has remarks:\n{report}");
    eprintln!("promtool check metrics: ok (no problems found)");
}

fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

/// Where test artefacts (the dashboard screenshot) are kept.
fn artefact_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Chromium, or `None` (the test skipped, saying so) when it is missing and not required.
fn chromium() -> Option<PathBuf> {
    match which("chromium").or_else(|_| which("chromium-browser")) {
        Ok(path) => Some(path),
        Err(()) => {
            eprintln!("browser test: SKIPPED, chromium not found (Debian package chromium; scripts/test installs it)");
            assert!(
                std::env::var_os("SLUICEGATE_REQUIRE_TOOLS").is_none(),
                "chromium is required here"
            );
            None
        }
    }
}

/// The dashboard served on a free local port: its address and the server's task.
async fn serve_locally(
    sg: Sluicegate,
    token: Option<&str>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state = AppState::new(sg, token.map(str::to_owned));
    let server = tokio::spawn(async move {
        serve_with(listener, router(state), std::future::pending())
            .await
            .unwrap();
    });
    (address, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_the_live_dashboard() {
    let Some(chromium) = chromium() else {
        return;
    };
    let db = TestDb::sqlite().await;
    let (sg, failed_job) = running_migration(&db).await;
    let handle = sg.clone();
    let (address, server) = serve_locally(sg, None).await;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{address}/migrations/1");
    let browser = |extra: &[String]| {
        let mut cmd = Command::new(&chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(&url);
        cmd
    };
    let dom = tokio::task::spawn_blocking({
        let mut cmd = browser(&["--dump-dom".into(), "--virtual-time-budget=3000".into()]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    for needle in [
        "backfill_items",
        "active",
        "%",
        "Transition log",
        "NotNullViolation",
        &format!("/jobs/{failed_job}"),
        "Failures, grouped",
        "id=\"actions\"",
        "running → ",
    ] {
        assert!(
            html.contains(needle),
            "the rendered page shows {needle:?}:\n{html}"
        );
    }
    let shot = artefact_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = tokio::task::spawn_blocking({
        let mut cmd = browser(&[format!("--screenshot={}", shot.display())]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "screenshot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "a real screenshot at {}: {size} bytes",
        shot.display()
    );
    eprintln!(
        "dashboard screenshot: {}",
        shot.canonicalize().unwrap().display()
    );
    // The overview, a held migration and a failed one, rendered and shot the same way.
    let shoot = |path: &str, file: &str| {
        let shot = artefact_dir().join(file);
        let _ = std::fs::remove_file(&shot);
        let mut cmd = Command::new(&chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1280,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("http://{address}{path}"));
        (cmd, shot)
    };
    let dump = |path: &str| {
        let mut cmd = Command::new(&chromium);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{address}{path}"));
        cmd
    };
    let hold = sluicegate::store::MigrationTransitionParams::new(
        &handle.migration("1").await.unwrap(),
        MigrationEvent::Hold,
        "test",
    )
    .unwrap()
    .with_reason(Some(
        "replica_lag: replica r1 is 40.9 MiB behind in replay (max 16.0 MiB or 30s)".into(),
    ))
    .holding_for(
        sluicegate::health::Indicator::ReplicaLag,
        Duration::from_secs(300),
    );
    handle.store().migration_transition(&hold).await.unwrap();
    let mut shots = Vec::new();
    for (path, file) in [
        ("/", "dashboard-overview.png"),
        ("/migrations/1", "dashboard-held.png"),
    ] {
        let (mut cmd, shot) = shoot(path, file);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        shots.push(shot);
    }
    let mut cmd = dump("/migrations/1");
    let held = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let held = String::from_utf8_lossy(&held.stdout).into_owned();
    assert!(held.contains("HELD — on hold since"), "{held}");
    assert!(held.contains("40.9 MiB behind"), "{held}");
    let fail = sluicegate::store::MigrationTransitionParams::new(
        &handle.migration("1").await.unwrap(),
        MigrationEvent::Fail,
        "test",
    )
    .unwrap()
    .with_failure(sluicegate::Failure::new(
        "NotNullViolation",
        "more than half of its jobs failed",
    ));
    handle.store().migration_transition(&fail).await.unwrap();
    let (mut cmd, shot) = shoot("/migrations/1", "dashboard-failed.png");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    shots.push(shot);
    for shot in &shots {
        let size = std::fs::metadata(shot).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 10_000,
            "a real screenshot at {}: {size} bytes",
            shot.display()
        );
        eprintln!(
            "dashboard screenshot: {}",
            shot.canonicalize().unwrap().display()
        );
    }
    server.abort();
}

// A composite key mid-run: the dashboard, the API and the progress (counted in keys walked
// over the estimated rows, as for any key that is not one integer column) all show it.
store_test!(a_composite_key_migration_is_shown_everywhere, |db| {
    db.exec(
        "CREATE TABLE pairs (a bigint NOT NULL, b integer NOT NULL, n integer NOT NULL DEFAULT 0,
                             PRIMARY KEY (a, b))",
    )
    .await;
    let rows: Vec<String> = (0..400)
        .map(|i| format!("({}, {})", i / 10, i % 10))
        .collect();
    db.exec(&format!(
        "INSERT INTO pairs (a, b) VALUES {}",
        rows.join(", ")
    ))
    .await;
    if db.backend == Backend::Postgres {
        db.exec("ANALYZE pairs").await;
    }
    let sg = db.sluicegate().await;
    let mut req = QueueRequest::new("pairs_inc", "update", "pairs").argument("set", "n = n + 1");
    req.batch_size = 100;
    req.sub_batch_size = 100;
    req.pause_ms = 0;
    req.interval = Duration::ZERO;
    let m = sg.queue(&req).await.unwrap();
    let worker = sg.worker(WorkerOptions {
        name: "w1".into(),
        ..WorkerOptions::default()
    });
    worker.run_once().await.unwrap();
    let progress = sg.progress(&m).await.unwrap();
    assert_eq!(progress.rows_total, Some(400));
    assert!(
        (progress.percent - 25.0).abs() < 0.01,
        "one job of 100 keys out of 400: {}",
        progress.percent
    );
    let st = AppState::new(sg, None);
    let (status, page, _) = call(&st, "GET", "/migrations/1", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("pairs.(a, b)"), "the key's columns: {page}");
    assert!(page.contains("(0, 0) ..= (39, 9)"), "the key range: {page}");
    let (status, page, _) = call(&st, "GET", "/jobs/1", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("(0, 0) ..= (9, 9) (cursor (9, 9))"),
        "the job's keys and cursor: {page}"
    );
    let (status, body, _) = call(&st, "GET", "/api/migrations/1/jobs", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let jobs = json(&body);
    assert_eq!(jobs[0]["min_cursor"], serde_json::json!([0, 0]), "{jobs}");
    assert_eq!(jobs[0]["max_value"], serde_json::json!([9, 9]), "{jobs}");
});

/// A page of headless Chromium driven over the DevTools protocol: JavaScript evaluated in it,
/// as a person's clicks would be.
struct DevToolsPage {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
    next_id: u64,
    browser: std::process::Child,
}

impl DevToolsPage {
    async fn open(chromium: &std::path::Path, profile: &std::path::Path, url: &str) -> Self {
        use std::io::BufRead;
        let mut browser = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = browser.stderr.take().unwrap();
        let endpoint = tokio::task::spawn_blocking(move || {
            std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .find_map(|line| {
                    line.strip_prefix("DevTools listening on ")
                        .map(str::to_owned)
                })
        })
        .await
        .unwrap()
        .expect("chromium prints its DevTools endpoint");
        let (ws, _) = tokio_tungstenite::connect_async(endpoint).await.unwrap();
        let mut page = Self {
            ws,
            session: String::new(),
            next_id: 0,
            browser,
        };
        let target = page
            .call(
                None,
                "Target.createTarget",
                serde_json::json!({ "url": url }),
            )
            .await;
        let attached = page
            .call(
                None,
                "Target.attachToTarget",
                serde_json::json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        page.session = attached["sessionId"].as_str().unwrap().to_owned();
        page
    }

    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        use futures::{SinkExt, StreamExt};
        self.next_id += 1;
        let id = self.next_id;
        let mut message = serde_json::json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = Value::from(session);
        }
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(
                message.to_string(),
            ))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within 60 s"))
                .expect("an answer")
                .unwrap();
            let Ok(text) = frame.into_text() else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `js` in the page and returns its value.
    async fn eval(&mut self, js: &str) -> Value {
        let session = self.session.clone();
        let result = self
            .call(
                Some(&session),
                "Runtime.evaluate",
                serde_json::json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        result["result"]["value"].clone()
    }

    /// Evaluates `js` until it returns a non-empty string (within 60 s: a busy machine starts
    /// Chromium slowly).
    async fn wait_for_text(&mut self, js: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(text) = self.eval(js).await.as_str().filter(|t| !t.is_empty()) {
                return text.to_owned();
            }
            assert!(std::time::Instant::now() < deadline, "no text from {js}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for DevToolsPage {
    fn drop(&mut self) {
        let _ = self.browser.kill();
        let _ = self.browser.wait();
    }
}

// The dashboard's buttons in a real browser: without the token a click is refused and the
// refusal shown; with it (typed once, kept for the session) the migration is paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicking_the_dashboards_buttons_in_chromium() {
    let Some(chromium) = chromium() else {
        return;
    };
    let db = TestDb::sqlite().await;
    let (sg, _) = running_migration(&db).await;
    let handle = sg.clone();
    let (address, server) = serve_locally(sg, Some("s3cret-token")).await;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{address}/migrations/1");
    let mut page = DevToolsPage::open(&chromium, profile.path(), &url).await;
    page.wait_for_text("document.getElementById('actions') ? 'ready' : ''")
        .await;
    // No token: refused, said on the page, nothing changed.
    page.eval("document.querySelector('button[data-action=pause]').click()")
        .await;
    let said = page
        .wait_for_text("document.getElementById('said').textContent")
        .await;
    assert!(said.starts_with("pause refused (401)"), "{said}");
    assert_eq!(
        handle.migration("1").await.unwrap().status,
        sluicegate::MigrationStatus::Active
    );
    // The token, typed once: the click pauses the migration, with its log row.
    page.eval(
        "var t = document.getElementById('token'); t.value = 's3cret-token';
         t.dispatchEvent(new Event('input'));
         document.getElementById('said').textContent = '';
         document.getElementById('reason').value = 'from the dashboard';
         document.querySelector('button[data-action=pause]').click()",
    )
    .await;
    let said = page
        .wait_for_text("document.getElementById('said').textContent")
        .await;
    assert_eq!(said, "pause: done, now paused");
    assert_eq!(
        handle.migration("1").await.unwrap().status,
        sluicegate::MigrationStatus::Paused
    );
    assert_eq!(
        page.eval("sessionStorage.getItem('sluicegate-token')")
            .await,
        "s3cret-token",
        "kept for the browser session"
    );
    let last = last_log_row(&handle).await;
    assert_eq!(last.actor.as_deref(), Some("http"));
    assert_eq!(last.reason.as_deref(), Some("from the dashboard"));
    // The set form takes the timeouts, as the CLI and the API do.
    page.eval(
        "document.getElementById('said').textContent = '';
         document.getElementById('reason').value = 'a big tenant';
         document.getElementById('set-statement_timeout_ms').value = '60000';
         document.getElementById('set-lock_timeout_ms').value = '2000';
         document.getElementById('set').requestSubmit()",
    )
    .await;
    let said = page
        .wait_for_text("document.getElementById('said').textContent")
        .await;
    assert_eq!(said, "set: done, now paused");
    let m = handle.migration("1").await.unwrap();
    assert_eq!((m.statement_timeout_ms, m.lock_timeout_ms), (60_000, 2_000));
    let last = last_log_row(&handle).await;
    assert_eq!(
        last.reason.as_deref(),
        Some("statement_timeout 30s -> 1m; lock_timeout 5s -> 2s (a big tenant)")
    );
    drop(page);
    server.abort();
}

/// The dashboard's edges (issue 18, item 15).
///
/// `status`, `content-type` and body of a request built by hand (headers as given, no Host
/// added).
async fn call_raw(state: &AppState, req: Request<Body>) -> (StatusCode, String, Value) {
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, content_type, body)
}

fn get_with_host(uri: &str, host: Option<&str>) -> Request<Body> {
    let mut req = Request::builder().uri(uri);
    if let Some(host) = host {
        req = req.header(header::HOST, host);
    }
    req.body(Body::empty()).unwrap()
}

store_test!(the_host_header_is_checked, |db| {
    let (sg, _) = running_migration(&db).await;
    // Loopback names and addresses only (a server on 127.0.0.1).
    let local = AppState::new(sg.clone(), None);
    for host in [
        "localhost",
        "localhost:8080",
        "127.0.0.1:8080",
        "[::1]:8080",
        "LOCALHOST.",
    ] {
        let (status, _, body) =
            call_raw(&local, get_with_host("/api/migrations", Some(host))).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }
    // DNS rebinding: a page of evil.example, whose name now resolves to 127.0.0.1.
    for host in [
        "evil.example:8080",
        "evil.example",
        "localhost.evil.example",
        "10.0.0.7",
    ] {
        let (status, content_type, body) =
            call_raw(&local, get_with_host("/api/migrations", Some(host))).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("--allowed-host"), "{error}");
        assert!(!error.contains("backfill_items"), "nothing read: {error}");
    }
    let (status, _, body) = call_raw(&local, get_with_host("/", None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "a Host header is required");
    // 0.0.0.0 with a configured name: that name and any address literal; other names not.
    let all =
        AppState::new(sg, None).with_hosts(sluicegate_cli::serve::AllowedHosts::for_listener(
            "0.0.0.0:8080".parse().unwrap(),
            &["Dash.Example.com".to_owned()],
        ));
    for (host, expected) in [
        ("dash.example.com:8080", StatusCode::OK),
        ("10.1.2.3:8080", StatusCode::OK),
        ("[2001:db8::1]:8080", StatusCode::OK),
        ("other.example.com", StatusCode::MISDIRECTED_REQUEST),
    ] {
        let (status, _, body) = call_raw(&all, get_with_host("/metrics", Some(host))).await;
        assert_eq!(status, expected, "{host}: {body}");
    }
});

store_test!(reads_need_the_token_off_loopback, |db| {
    use base64::Engine as _;
    let (sg, _) = running_migration(&db).await;
    let token = "0123456789abcdef0123456789abcdef";
    let guarded = AppState::new(sg, Some(token.into())).reads_need_token(true);
    let basic = |user_pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    };
    for uri in [
        "/",
        "/migrations/1",
        "/api/migrations",
        "/metrics",
        "/static/app.js",
    ] {
        let (status, content_type, body) =
            call_raw(&guarded, get_with_host(uri, Some("localhost"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(content_type.starts_with("application/json"));
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
        for authorization in [
            format!("Bearer {token}x"),
            basic(&format!("me:{token}x")),
            basic(token),
            "Basic !!!".to_owned(),
        ] {
            let req = Request::builder()
                .uri(uri)
                .header(header::HOST, "localhost")
                .header(header::AUTHORIZATION, &authorization)
                .body(Body::empty())
                .unwrap();
            let (status, _, _) = call_raw(&guarded, req).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{uri} with {authorization}"
            );
        }
        for authorization in [format!("Bearer {token}"), basic(&format!("anyone:{token}"))] {
            let req = Request::builder()
                .uri(uri)
                .header(header::HOST, "localhost")
                .header(header::AUTHORIZATION, &authorization)
                .body(Body::empty())
                .unwrap();
            let (status, _, _) = call_raw(&guarded, req).await;
            assert_eq!(status, StatusCode::OK, "{uri} with {authorization}");
        }
    }
    // The browser is asked for it.
    let resp = router(guarded.clone())
        .oneshot(get_with_host("/", Some("localhost")))
        .await
        .unwrap();
    assert_eq!(
        resp.headers()[header::WWW_AUTHENTICATE],
        "Basic realm=\"sluicegate\", charset=\"UTF-8\""
    );
    // Mutations still take the bearer token only: credentials a browser keeps (Basic) are
    // no way to act on a migration (no cross-site request can).
    let req = Request::builder()
        .method("POST")
        .uri("/api/migrations/1/pause")
        .header(header::HOST, "localhost")
        .header(header::AUTHORIZATION, basic(&format!("me:{token}")))
        .body(Body::empty())
        .unwrap();
    let (status, _, _) = call_raw(&guarded, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
});

store_test!(bad_paths_queries_and_bodies_answer_json_never_500, |db| {
    let (sg, _) = running_migration(&db).await;
    let token = "0123456789abcdef0123456789abcdef";
    let st = AppState::new(sg.clone(), Some(token.into()));
    let long_name = "x".repeat(20_000);
    let long_number = "9".repeat(40);
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            "/migrations/%00".into(),
            StatusCode::BAD_REQUEST,
            "control character",
        ),
        (
            "/api/migrations/%00".into(),
            StatusCode::BAD_REQUEST,
            "control character",
        ),
        (
            "/api/migrations/a%0Ab/jobs".into(),
            StatusCode::BAD_REQUEST,
            "control character",
        ),
        (
            "/jobs/%00".into(),
            StatusCode::BAD_REQUEST,
            "control character",
        ),
        (
            "/migrations/%FF".into(),
            StatusCode::BAD_REQUEST,
            "invalid path",
        ),
        (
            "/api/migrations/abc".into(),
            StatusCode::NOT_FOUND,
            "no migration \"abc\"",
        ),
        (
            format!("/api/migrations/{long_name}"),
            StatusCode::NOT_FOUND,
            "no migration",
        ),
        (
            format!("/migrations/{long_name}"),
            StatusCode::NOT_FOUND,
            "no migration",
        ),
        (
            format!("/api/migrations/{long_number}/history"),
            StatusCode::NOT_FOUND,
            "no migration",
        ),
        (
            format!("/api/jobs/{long_number}/history"),
            StatusCode::BAD_REQUEST,
            "not a number",
        ),
        (
            "/api/migrations/-1".into(),
            StatusCode::NOT_FOUND,
            "no migration",
        ),
        ("/?partial=abc".into(), StatusCode::BAD_REQUEST, "partial"),
    ];
    for (uri, expected, needle) in &cases {
        let (status, content_type, body) =
            call_raw(&st, get_with_host(uri, Some("localhost"))).await;
        let shown = &uri[..uri.len().min(60)];
        assert_eq!(status, *expected, "{shown}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{shown}: {content_type}"
        );
        let error = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{shown}: {body}"));
        assert!(error.contains(needle), "{shown}: {error}");
    }
    // Bodies: not JSON, malformed, the wrong shape, too large; a GET where only POST is.
    let post = |content_type: &str, body: Vec<u8>| {
        Request::builder()
            .method("POST")
            .uri("/api/migrations/1/set")
            .header(header::HOST, "localhost")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap()
    };
    let big = format!(r#"{{"reason": "{}"}}"#, "x".repeat(70 * 1024)).into_bytes();
    for (req, expected, needle) in [
        (
            post("text/plain", b"pause".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: application/json",
        ),
        (
            post("application/json", br#"{"reason": "#.to_vec()),
            StatusCode::BAD_REQUEST,
            "invalid JSON body",
        ),
        (
            post("application/json", br#"{"batch_size": "many"}"#.to_vec()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_size",
        ),
        (
            post("application/json", big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 64 KiB",
        ),
        (
            get_with_host("/api/migrations/1/pause", Some("localhost")),
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        ),
    ] {
        let (status, content_type, body) = call_raw(&st, req).await;
        assert_eq!(status, expected, "{body}");
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        let error = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
        assert!(error.contains(needle), "{error}");
    }
    assert_eq!(
        sg.migration("1").await.unwrap().batch_size,
        50,
        "nothing changed"
    );
});

store_test!(reasons_are_limited_wherever_they_come_from, |db| {
    let (sg, _) = running_migration(&db).await;
    let token = "0123456789abcdef0123456789abcdef";
    let st = AppState::new(sg.clone(), Some(token.into()));
    let logs = || async {
        db.scalar(&format!("SELECT count(*) FROM {}", log_table(&db)))
            .await
    };
    let before = logs().await;
    let max = sluicegate::MAX_REASON_CHARS;
    assert_eq!(max, 1_000);
    // 1.5 MB was once stored and rendered on every refresh; one character over is refused.
    for reason in ["é".repeat(max + 1), "x".repeat(1_500_000)] {
        let body = serde_json::json!({ "reason": reason }).to_string();
        for action in ["pause", "cancel", "set"] {
            let body = if action == "set" {
                serde_json::json!({ "reason": reason, "batch_size": 60 }).to_string()
            } else {
                body.clone()
            };
            let (status, text, _) = call(
                &st,
                "POST",
                &format!("/api/migrations/1/{action}"),
                Some(token),
                Some(&body),
            )
            .await;
            let expected = if body.len() > sluicegate_cli::serve::MAX_BODY_BYTES {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            assert_eq!(status, expected, "{action}: {text}");
            if expected == StatusCode::BAD_REQUEST {
                assert_eq!(
                    json(&text)["error"],
                    format!(
                        "the reason is {} characters long; at most 1000 are accepted",
                        max + 1
                    )
                );
            }
        }
        // The library refuses it too (the CLI's way in).
        let m = sg.migration("1").await.unwrap();
        let err = sg
            .apply("1", MigrationEvent::Pause, Some(reason.clone()), "cli")
            .await
            .unwrap_err();
        assert!(
            matches!(err, sluicegate::Error::ReasonTooLong { .. }),
            "{err}"
        );
        let change = sluicegate::SettingsChange {
            batch_size: Some(60),
            ..Default::default()
        };
        let err = sg.set(&m, &change, Some(reason), "cli").await.unwrap_err();
        assert!(
            matches!(err, sluicegate::Error::ReasonTooLong { .. }),
            "{err}"
        );
    }
    // And the CLI, through the library.
    let long = "x".repeat(max + 1);
    for args in [
        &["pause", "1", "--reason", &long][..],
        &["set", "1", "--batch-size", "60", "--reason", &long],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluicegate"))
            .args(["--database-url", &db.url])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", args[0]);
        assert_eq!(
            stderr.trim_end(),
            "error: the reason is 1001 characters long; at most 1000 are accepted"
        );
    }
    assert_eq!(logs().await, before, "nothing was written");
    let m = sg.migration("1").await.unwrap();
    assert_eq!(m.status, sluicegate::MigrationStatus::Active);
    assert_eq!(m.batch_size, 50);
    // Exactly the limit is accepted.
    let body = serde_json::json!({ "reason": "é".repeat(max) }).to_string();
    let (status, text, _) = call(
        &st,
        "POST",
        "/api/migrations/1/pause",
        Some(token),
        Some(&body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        last_log_row(&sg).await.reason.map(|r| r.chars().count()),
        Some(max)
    );
});

#[test]
fn tokens_must_be_long_and_their_files_private() {
    use sluicegate_cli::serve::read_token;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let long = "0123456789abcdef0123456789abcdef";
    let write = |content: &str, mode: u32| {
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    for mode in [0o644, 0o640, 0o604, 0o620] {
        write(long, mode);
        let err = read_token(&file).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "(mode {mode:o}): run `chmod 600 {}`",
                file.display()
            )),
            "{err}"
        );
    }
    write("x", 0o600);
    let err = read_token(&file).unwrap_err().to_string();
    assert!(
        err.contains("is 1 characters long; at least 32 are needed"),
        "{err}"
    );
    write(&long[..31], 0o600);
    assert!(read_token(&file).is_err(), "31 characters");
    write("   \n", 0o600);
    assert!(read_token(&file)
        .unwrap_err()
        .to_string()
        .contains("is empty"));
    write(&format!("{long}\n"), 0o400);
    assert_eq!(read_token(&file).unwrap(), long);
}

#[tokio::test]
async fn a_non_loopback_address_needs_a_token_or_public_reads() {
    use sluicegate_cli::serve::{prepare, ServeOptions};
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let open = ServeOptions {
        listen: "0.0.0.0:0".into(),
        ..Default::default()
    };
    let err = prepare(&open).await.err().unwrap().to_string();
    assert!(
        err.contains("refusing to serve on 0.0.0.0:") && err.contains("--public-reads"),
        "{err}"
    );
    let public = prepare(&ServeOptions {
        public_reads: true,
        ..open.clone()
    })
    .await
    .unwrap();
    assert!(!public.reads_need_token);
    assert_eq!(public.warnings.len(), 1);
    assert!(
        public.warnings[0].contains("--public-reads"),
        "{:?}",
        public.warnings
    );
    let guarded = prepare(&ServeOptions {
        token_file: Some(token_file.clone()),
        ..open.clone()
    })
    .await
    .unwrap();
    assert!(
        guarded.reads_need_token,
        "a token off loopback guards reads too"
    );
    assert!(guarded.warnings.is_empty());
    let local = prepare(&ServeOptions {
        listen: "127.0.0.1:0".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!local.reads_need_token && local.warnings.is_empty());

    // The binary says so and exits 1 before opening any database (there is none here).
    let out = Command::new(env!("CARGO_BIN_EXE_sluicegate"))
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: refusing to serve on 0.0.0.0:"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!dir.path().join("sluicegate.db").exists());
}

/// Half-sent requests (issue 18, item 15: 1,100 of them were still open after 40 s): a
/// connection that sends nothing, part of a request header, or a header and part of its body,
/// is closed by the server within its timeouts (5 s each), and the server keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_within_seconds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let db = TestDb::sqlite().await;
    let (sg, _) = running_migration(&db).await;
    let (address, server) = serve_locally(sg, Some("0123456789abcdef0123456789abcdef")).await;
    let partial: [&[u8]; 4] = [
        b"",
        b"GET /api/migrations HTTP/1.1\r\nHost: loc",
        b"GET /api/migrations HTTP/1.1\r\nHost: localhost\r\n",
        b"POST /api/migrations/1/pause HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer 0123456789abcdef0123456789abcdef\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"reason\":",
    ];
    const EACH: usize = 25;
    let started = std::time::Instant::now();
    let mut sockets = Vec::new();
    for (kind, bytes) in partial.iter().enumerate() {
        for _ in 0..EACH {
            let mut socket = TcpStream::connect(address).await.unwrap();
            socket.write_all(bytes).await.unwrap();
            sockets.push((kind, socket));
        }
    }
    // While they hang, a whole request is answered.
    let mut whole = TcpStream::connect(address).await.unwrap();
    whole
        .write_all(b"GET /api/migrations HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    whole.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    // Each half-sent one is closed by the server (EOF or reset) within the bound.
    let bound = Duration::from_secs(12);
    let mut slowest = Duration::ZERO;
    let waits = sockets.into_iter().map(|(kind, mut socket)| async move {
        let mut sink = Vec::new();
        let closed = tokio::time::timeout(bound, socket.read_to_end(&mut sink)).await;
        assert!(closed.is_ok(), "kind {kind}: still open after {bound:?}");
        (
            kind,
            started.elapsed(),
            String::from_utf8_lossy(&sink).into_owned(),
        )
    });
    for (kind, at, said) in futures::future::join_all(waits).await {
        slowest = slowest.max(at);
        if kind == 3 {
            // The half-sent body: the handler's read timed out, answered in JSON.
            assert!(said.is_empty() || said.contains("\"error\""), "{said}");
        }
    }
    eprintln!(
        "{} half-sent connections all closed by the server within {slowest:?}",
        partial.len() * EACH
    );
    assert!(
        slowest >= Duration::from_secs(4),
        "not before the timeout: {slowest:?}"
    );
    server.abort();
}

/// The binary on `0.0.0.0` with `--public-reads`: it starts, warns first, and its banner says
/// that reads are open; with a token instead, that reads need it.
#[test]
fn serve_says_who_may_read_when_it_starts() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let bin = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
        cmd.env_remove("DATABASE_URL")
            .env("NO_COLOR", "1")
            .args(["--database-url", &url]);
        cmd
    };
    assert!(bin().arg("setup").output().unwrap().status.success());
    let token_arg = format!("--token-file={}", token_file.display());
    for (extra, expected) in [
        (
            "--public-reads",
            "(reads open; mutations off: no --token-file)",
        ),
        (
            token_arg.as_str(),
            "(reads need the token; mutations need the bearer token)",
        ),
    ] {
        let mut child = bin()
            .args(["serve", "--listen", "0.0.0.0:0", extra])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let done = line.starts_with("serving the dashboard");
                let _ = tx.send(line);
                if done {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
            let done = line.starts_with("serving the dashboard");
            lines.push(line);
            if done {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let banner = lines.last().cloned().unwrap_or_default();
        assert!(
            banner.starts_with("serving the dashboard on http://0.0.0.0:"),
            "{lines:?}"
        );
        assert!(banner.ends_with(expected), "{lines:?}");
        if extra == "--public-reads" {
            assert_eq!(lines.len(), 2, "{lines:?}");
            assert!(
                lines[0].starts_with("warning: --public-reads: anyone who reaches 0.0.0.0:"),
                "{lines:?}"
            );
        } else {
            assert_eq!(lines.len(), 1, "no warning: {lines:?}");
        }
    }
}

// A row corrupted by hand: the API answers for the others and for it (as unreadable), its
// page says so, and `set` through the API is validated as the CLI's is (batch size 0, a
// reason too long): refused with 400, nothing written.
store_test!(
    the_api_answers_for_every_migration_when_one_row_is_unreadable,
    |db| {
        db.create_items("a", &[(1, 100)]).await;
        db.create_items("b", &[(1, 100)]).await;
        let sg = db.sluicegate().await;
        for (name, table) in [("good", "a"), ("bad", "b")] {
            let mut req = QueueRequest::new(name, "update", table).argument("set", "n = n + 1");
            req.batch_size = 50;
            req.sub_batch_size = 10;
            sg.queue(&req).await.unwrap();
        }
        let migrations = match db.backend {
            Backend::Postgres => "sluicegate.migrations",
            Backend::Sqlite => "sluicegate_migrations",
        };
        let corrupt = match db.backend {
        Backend::Postgres => {
            "health_settings = jsonb_set(health_settings, '{latency_drift_factor}', 'null')"
        }
        Backend::Sqlite => {
            "health_settings = json_set(health_settings, '$.latency_drift_factor', json('null'))"
        }
    };
        db.exec(&format!(
            "UPDATE {migrations} SET {corrupt} WHERE name = 'bad'"
        ))
        .await;
        let st = AppState::new(sg.clone(), Some("a-long-enough-token".into()));
        let (status, body, _) = call(&st, "GET", "/api/migrations", None, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let all = json(&body);
        assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
        assert_eq!(all[0]["name"], "good");
        assert!(all[0].get("unreadable").is_none(), "{all}");
        assert!(
            all[1]["unreadable"]
                .as_str()
                .is_some_and(|w| w.contains("latency_drift_factor")),
            "{all}"
        );
        let (status, body, _) = call(&st, "GET", "/api/migrations/bad", None, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, page, _) = call(&st, "GET", "/migrations/2", None, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.contains("UNREADABLE"), "{page}");
        let (status, page, _) = call(&st, "GET", "/", None, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.contains("good") && page.contains("bad"), "{page}");

        let before = db
            .scalar(&format!("SELECT count(*) FROM {}", log_table(&db)))
            .await;
        let token = Some("a-long-enough-token");
        for body in [
            r#"{"batch_size": 0}"#.to_owned(),
            r#"{"sub_batch_size": 100}"#.to_owned(),
            format!(r#"{{"pause_ms": 1, "reason": "{}"}}"#, "r".repeat(1_001)),
        ] {
            let (status, answer, _) =
                call(&st, "POST", "/api/migrations/good/set", token, Some(&body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        }
        let (status, answer, _) = call(
            &st,
            "POST",
            "/api/migrations/bad/set",
            token,
            Some(r#"{"pause_ms": 1}"#),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(answer.contains("unreadable"), "{answer}");
        assert_eq!(
            db.scalar(&format!("SELECT count(*) FROM {}", log_table(&db)))
                .await,
            before,
            "nothing written"
        );
        let (status, answer, _) = call(
            &st,
            "POST",
            "/api/migrations/bad/cancel",
            token,
            Some(r#"{"reason": "its row is corrupt"}"#),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(
            sg.migration("bad").await.unwrap().status,
            sluicegate::MigrationStatus::Cancelled
        );
    }
);

/// As an ordinary application role (nothing granted beyond its table), the migration page
/// lists the protections that are off, each with the grant that would turn it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_page_lists_the_protections_that_are_off() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    db.create_items("items", &[(1, 100)]).await;
    let role = format!("sg_page_{}", std::process::id());
    db.exec(&format!("CREATE ROLE {role} LOGIN")).await;
    db.exec(&format!("GRANT SELECT, UPDATE ON items TO {role}"))
        .await;
    let mut opts = sluicegate::ConnectOptions::new(&db.url);
    opts.target_url = Some(db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://{role}@"),
        1,
    ));
    let sg = Sluicegate::connect_with(opts).await.unwrap();
    sg.setup().await.unwrap();
    let req = QueueRequest::new("app", "update", "items").argument("set", "n = n + 1");
    sg.queue(&req).await.unwrap();
    let st = AppState::new(sg.clone(), None);
    let (status, page, _) = call(&st, "GET", "/migrations/1", None, None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("Protections off: ")
            && page.contains("read unknown, which never holds")
            && page.contains(&format!("GRANT pg_read_all_stats TO {role};")),
        "{page}"
    );
    drop((st, sg));
    db.exec(&format!("DROP OWNED BY {role}")).await;
    db.exec(&format!("DROP ROLE {role}")).await;
}

store_test!(
    the_api_says_what_a_migration_waits_for_and_sets_timeouts,
    |db| {
        db.create_items("items", &[(1, 50)]).await;
        db.create_items("others", &[(1, 50)]).await;
        let sg = db.sluicegate().await;
        let first = sg
            .queue(&QueueRequest::new("first", "update", "items").argument("set", "n = 1"))
            .await
            .unwrap();
        let mut req = QueueRequest::new("second", "update", "others").argument("set", "n = 1");
        req.after = vec!["first".into()];
        sg.queue(&req).await.unwrap();
        let st = AppState::new(sg.clone(), Some("s3cret-token".into()));
        let (status, body, _) = call(&st, "GET", "/api/migrations/second", None, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let view = json(&body);
        assert_eq!(view["after"], serde_json::json!([first.id]), "{view}");
        assert_eq!(
            view["waiting_for"],
            serde_json::json!(["first (active)"]),
            "{view}"
        );
        let (_, body, _) = call(&st, "GET", "/api/migrations", None, None).await;
        assert!(json(&body)[0].get("waiting_for").is_none(), "{body}");
        // The dashboard's set form has the timeouts, each showing its value now, and its
        // script sends them (clicked for real in clicking_the_dashboards_buttons_in_chromium).
        let (status, page, _) = call(&st, "GET", "/migrations/second", None, None).await;
        assert_eq!(status, StatusCode::OK);
        for (field, now) in [
            ("statement_timeout_ms", "30000"),
            ("lock_timeout_ms", "5000"),
        ] {
            let input =
                format!("id=\"set-{field}\" type=\"number\" min=\"0\" placeholder=\"{now}\"");
            assert!(page.contains(&input), "the form has {input}: {page}");
        }
        let (_, script, _) = call(&st, "GET", "/static/app.js", None, None).await;
        assert!(
            script.contains("\"statement_timeout_ms\", \"lock_timeout_ms\"].forEach"),
            "{script}"
        );
        // How a key is walked is shown on the page and in the API.
        let mut walked = QueueRequest::new("third", "update", "items").argument("set", "n = 1");
        walked.key = Some(vec!["n".into()]);
        (
            walked.non_unique_key,
            walked.skip_null_keys,
            walked.distinct,
        ) = (true, true, true);
        st.sg.queue(&walked).await.unwrap();
        let (_, page, _) = call(&st, "GET", "/migrations/third", None, None).await;
        assert!(
            page.contains("<th>walk</th><td>rows with a NULL key never visited, batches count distinct key values</td>"),
            "{page}"
        );
        let (_, body, _) = call(&st, "GET", "/api/migrations/third", None, None).await;
        let view = json(&body);
        assert_eq!(
            (&view["skip_null_keys"], &view["distinct_keys"]),
            (&Value::Bool(true), &Value::Bool(true))
        );
        let (_, page, _) = call(&st, "GET", "/migrations/second", None, None).await;
        assert!(!page.contains("<th>walk</th>"), "a plain walk says nothing");
        // `set` takes the timeouts, as the CLI does.
        let (status, body, _) = call(
            &st,
            "POST",
            "/api/migrations/second/set",
            Some("s3cret-token"),
            Some(r#"{"statement_timeout_ms": 60000, "lock_timeout_ms": 2000}"#),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let m = sg.migration("second").await.unwrap();
        assert_eq!((m.statement_timeout_ms, m.lock_timeout_ms), (60_000, 2_000));
        let last = sg.migration_history(&m).await.unwrap().pop().unwrap();
        assert_eq!(
            (last.event, last.reason.as_deref()),
            (
                MigrationEvent::Set,
                Some("statement_timeout 30s -> 1m; lock_timeout 5s -> 2s")
            )
        );
    }
);

/// A migration of a Citus distributed table, on the cluster `scripts/test` starts: the
/// migration page's "Lanes by node" table and the API's `nodes` name each worker node with its
/// lanes, and follow the migration to its end. Skipped (said) without a cluster, unless
/// `SLUICEGATE_REQUIRE_CITUS` says one is required.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_and_the_api_show_lanes_by_node_on_citus() {
    let Ok(url) = std::env::var("SLUICEGATE_TEST_CITUS_URL") else {
        assert!(
            std::env::var_os("SLUICEGATE_REQUIRE_CITUS").is_none(),
            "SLUICEGATE_TEST_CITUS_URL is not set, and SLUICEGATE_REQUIRE_CITUS says a Citus \
             cluster is required: run scripts/test"
        );
        eprintln!("SKIPPED (Citus): SLUICEGATE_TEST_CITUS_URL is not set");
        return;
    };
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let tag = format!("{}_{}", std::process::id(), rand_suffix());
    let (schema, tracking) = (format!("sgserve_{tag}"), format!("sgservet_{tag}"));
    sqlx::raw_sql(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.events (tenant_id bigint, id bigint, n int NOT NULL DEFAULT 0,
             PRIMARY KEY (tenant_id, id));
         SET citus.shard_count = 4;
         SELECT create_distributed_table('{schema}.events', 'tenant_id');
         RESET citus.shard_count;
         INSERT INTO {schema}.events SELECT g % 10, g, 0 FROM generate_series(1, 2000) g;"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let nodes: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT nodename || ':' || nodeport FROM pg_dist_shard_placement p
           JOIN pg_dist_shard s USING (shardid)
          WHERE s.logicalrelid = $1::regclass",
    )
    .bind(format!("{schema}.events"))
    .fetch_all(&admin)
    .await
    .unwrap();
    let mut opts = sluicegate::ConnectOptions::new(&url);
    opts.schema = tracking.clone();
    let sg = Sluicegate::connect_with(opts).await.unwrap();
    sg.setup().await.unwrap();
    let mut req = QueueRequest::new("lanes", "update", format!("{schema}.events"))
        .argument("set", "n = n + 1");
    req.batch_size = 100;
    let m = sg.queue(&req).await.unwrap();
    let st = AppState::new(sg.clone(), None);

    // Queued: every lane waits, on the nodes Citus placed them on.
    let (status, page, _) = call(&st, "GET", &format!("/migrations/{}", m.id), None, None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("Lanes by node") && page.contains("4 lanes (one per shard)"),
        "{page}"
    );
    for node in &nodes {
        assert!(page.contains(node.as_str()), "{node} in {page}");
    }
    let (_, body, _) = call(&st, "GET", &format!("/api/migrations/{}", m.id), None, None).await;
    let view = json(&body);
    let listed = view["nodes"].as_array().unwrap_or_else(|| panic!("{view}"));
    assert_eq!(listed.len(), nodes.len(), "{view}");
    assert_eq!(
        listed
            .iter()
            .map(|n| n["lanes"].as_u64().unwrap())
            .sum::<u64>(),
        4,
        "{view}"
    );

    // Run to the end: every lane done, every row written once, and the page says so.
    sg.worker(WorkerOptions {
        name: "serve-citus".into(),
        concurrency: 2,
        ..WorkerOptions::default()
    })
    .run_until_idle()
    .await
    .unwrap();
    let once: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}.events WHERE n = 1"))
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(once, 2000);
    let (_, body, _) = call(&st, "GET", &format!("/api/migrations/{}", m.id), None, None).await;
    let view = json(&body);
    let listed = view["nodes"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .all(|n| n["done"] == n["lanes"] && n["held"] == 0),
        "{view}"
    );
    assert_eq!(
        listed
            .iter()
            .map(|n| n["rows_done"].as_i64().unwrap())
            .sum::<i64>(),
        2000,
        "{view}"
    );
    let (_, page, _) = call(&st, "GET", &format!("/migrations/{}", m.id), None, None).await;
    assert!(page.contains("2,000"), "{page}");
    drop((st, sg));
    sqlx::raw_sql(&format!(
        "DROP SCHEMA {schema} CASCADE; DROP SCHEMA IF EXISTS {tracking} CASCADE;"
    ))
    .execute(&admin)
    .await
    .unwrap();
}

/// Ten lowercase letters, so that two runs on one cluster never share a schema.
fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (0..10)
        .map(|i| (b'a' + ((nanos >> (i * 3)) % 26) as u8) as char)
        .collect()
}
