//! The `sluicegate` binary, run as a user runs it: exit codes, one-line errors, nothing
//! written on bad input, and exactly-once across workers killed with SIGKILL.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sluicegate::store::Backend;
use sluicegate::testing::TestDb;
use sluicegate::{store_test, Job, JobStatus, MigrationStatus};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluicegate"));
    // No width from the environment: tables print whole unless a test says COLUMNS.
    cmd.env_remove("DATABASE_URL")
        .env_remove("COLUMNS")
        .env("NO_COLOR", "1");
    cmd
}

fn sg(url: &str, args: &[&str]) -> Output {
    bin()
        .arg("--database-url")
        .arg(url)
        .args(args)
        .output()
        .expect("run sluicegate")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exits 1 with exactly one line on stderr, starting `error:` and containing `expected`.
fn assert_fails_with(out: &Output, expected: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "exit code 1; stderr: {err}");
    let lines: Vec<_> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err:?}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(err.contains(expected), "expected {expected:?} in {err:?}");
}

fn tracking(db: &TestDb, table: &str) -> String {
    match db.backend {
        Backend::Postgres => format!("sluicegate.{table}"),
        Backend::Sqlite => format!("sluicegate_{table}"),
    }
}

async fn counts(db: &TestDb) -> (i64, i64, i64, i64) {
    (
        db.scalar(&format!(
            "SELECT count(*) FROM {}",
            tracking(db, "migrations")
        ))
        .await,
        db.scalar(&format!(
            "SELECT count(*) FROM {}",
            tracking(db, "migration_transition_logs")
        ))
        .await,
        db.scalar(&format!("SELECT count(*) FROM {}", tracking(db, "jobs")))
            .await,
        db.scalar("SELECT coalesce(sum(n), 0) FROM items").await,
    )
}

store_test!(
    bad_input_exits_non_zero_with_one_line_and_changes_nothing,
    |db| {
        db.create_items("items", &[(1, 100)]).await;
        db.create_items("t", &[(1, 5)]).await;
        let url = db.url.clone();
        assert!(sg(&url, &["setup"]).status.success());
        let ok = sg(
            &url,
            &[
                "queue",
                "first",
                "--table",
                "items",
                "--kind",
                "update",
                "--set",
                "n = n + 1",
                "--interval",
                "0s",
            ],
        );
        assert!(ok.status.success(), "{}", stderr(&ok));
        let before = counts(&db).await;
        let queue = |extra: &[&str]| {
            let mut args = vec!["queue", "second", "--kind", "update", "--set", "n = 2"];
            args.extend_from_slice(extra);
            sg(&url, &args)
        };
        let hostile = "x\"; DROP TABLE t; --";
        let cases: Vec<(Output, &str)> = vec![
            (queue(&["--table", "nope"]), "unknown table \"nope\""),
            (
                queue(&["--table", "items", "--column", "nope"]),
                "unknown column \"nope\" in table",
            ),
            (
                sg(
                    &url,
                    &[
                        "queue", "second", "--table", "items", "--kind", "update", "--set",
                        "n = = 2",
                    ],
                ),
                "--set is not a list of assignments",
            ),
            // The issue's own reproductions: each would have reached past its range.
            (
                sg(
                    &url,
                    &[
                        "queue",
                        "cmt",
                        "--table",
                        "items",
                        "--kind",
                        "update",
                        "--set",
                        "n = n + 1 -- bump the counter",
                        "--dry-run",
                    ],
                ),
                "--set holds a comment (-- bump the counter",
            ),
            (
                queue(&["--table", "items", "--scope", "n >= 0) OR (true"]),
                "--scope is not one SQL condition: it goes on with \")\"",
            ),
            (
                sg(
                    &url,
                    &[
                        "queue",
                        "third",
                        "--table",
                        "items",
                        "--kind",
                        "sql",
                        "--sql",
                        "UPDATE items SET email = 'see {range} docs' WHERE {range}",
                    ],
                ),
                "writes {range} inside a string or a quoted name",
            ),
            (
                sg(
                    &url,
                    &[
                        "queue",
                        "third",
                        "--table",
                        "items",
                        "--kind",
                        "sql",
                        "--sql",
                        "DELETE FROM items WHERE id BETWEEN $1 AND $2",
                        "--scope",
                        "n > 5",
                    ],
                ),
                "uses $1 and $2, which carry no scope",
            ),
            (
                queue(&["--table", hostile]),
                "unknown table \"x\\\"; DROP TABLE t; --\"",
            ),
            (
                queue(&["--table", "items", "--batch-size", "0"]),
                "batch size must be at least 1 (got 0)",
            ),
            (
                queue(&["--table", "items", "--batch-size", "-10"]),
                "batch size must be at least 1 (got -10)",
            ),
            (
                queue(&[
                    "--table",
                    "items",
                    "--batch-size",
                    "10",
                    "--sub-batch-size",
                    "50",
                ]),
                "sub-batch size 50 is larger than batch size 10",
            ),
            (
                sg(
                    &url,
                    &[
                        "queue", "first", "--table", "items", "--kind", "update", "--set", "n = 3",
                    ],
                ),
                "a migration named \"first\" is already queued: migration 1 (\"first\", ",
            ),
            (
                sg(
                    &url,
                    &[
                        "queue", "x", "--table", "items", "--kind", "delete", "--set", "n = 3",
                    ],
                ),
                "--set does not apply to --kind delete",
            ),
            (sg(&url, &["show", "999"]), "no migration \"999\""),
            (
                sg(&url, &["history", "first", "--job", "999"]),
                "no job 999",
            ),
            (
                sg(&url, &["jobs", "first", "--status", "done"]),
                "unknown job status \"done\"",
            ),
        ];
        for (out, expected) in &cases {
            assert_fails_with(out, expected);
        }
        assert_eq!(
            counts(&db).await,
            before,
            "nothing written by any bad input"
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM t").await,
            5,
            "t is still there"
        );

        // An illegal transition: resume a finished migration.
        let run = sg(&url, &["run", "--until-idle", "--json"]);
        assert!(run.status.success(), "{}", stderr(&run));
        let out = sg(&url, &["resume", "first"]);
        assert_fails_with(&out, "cannot resume migration first: it is finished");
        let log_rows = db
            .scalar(&format!(
                "SELECT count(*) FROM {}",
                tracking(&db, "migration_transition_logs")
            ))
            .await;
        let out = sg(&url, &["pause", "first", "--reason", "x"]);
        assert_fails_with(&out, "cannot pause migration first: it is finished");
        assert_eq!(
            db.scalar(&format!(
                "SELECT count(*) FROM {}",
                tracking(&db, "migration_transition_logs")
            ))
            .await,
            log_rows
        );
    }
);

#[test]
fn unreachable_and_malformed_urls_are_one_line_errors() {
    let started = std::time::Instant::now();
    let out = sg("postgres://nobody:hunter2@127.0.0.1:1/nothing", &["status"]);
    // Said plainly and once, at once (not a pool timeout after 10 s).
    assert_fails_with(
        &out,
        "database error while connecting to postgres://nobody:***@127.0.0.1:1/nothing: error communicating with database: Connection refused",
    );
    assert_eq!(
        stderr(&out).matches("Connection refused").count(),
        1,
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        !stderr(&out).contains("hunter2"),
        "the password is never printed"
    );
    let out = sg("mysql://localhost/db", &["status"]);
    assert_fails_with(
        &out,
        "expected postgres://..., postgresql://... or sqlite:...",
    );
    let out = sg("postgres://user@[::1/db", &["status"]);
    assert_fails_with(&out, "invalid database URL");
}

#[test]
fn usage_errors_exit_2() {
    let out = bin()
        .args(["queue", "x", "--kind", "update"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--table"));
}

#[test]
fn commands_before_setup_say_to_run_setup() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/fresh.db", dir.path().display());
    for read in [
        &["status"][..],
        &["show", "x"],
        &["jobs", "x"],
        &["history", "x"],
    ] {
        let out = sg(&url, read);
        assert_fails_with(&out, "run `sluicegate setup` first");
    }
    assert!(
        !dir.path().join("fresh.db").exists(),
        "a read command creates no database file"
    );
}

#[test]
fn the_demo_backfills_and_shows_the_simulated_fault() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("demo.db");
    let out = bin()
        .args(["demo", "--rows", "20000", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{}", text, stderr(&out));
    assert!(
        text.contains("checked: 20000 of 20000 rows have email_lower = lower(email)"),
        "{text}"
    );
    assert!(text.contains("running -> failed"), "{text}");
    assert!(text.contains("SimulatedFault"), "{text}");
    assert!(text.contains("failed -> running"), "{text}");
    assert!(text.contains("running -> succeeded"), "{text}");
}

store_test!(json_output_has_the_documented_fields, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let url = db.url.clone();
    assert!(sg(&url, &["setup"]).status.success());
    let queue = [
        "queue",
        "m",
        "--table",
        "items",
        "--kind",
        "update",
        "--set",
        "n = 1",
        "--interval",
        "0s",
        "--batch-size",
        "50",
        "--sub-batch-size",
        "10",
    ];
    let out = sg(&url, &[&queue[..], &["--dry-run", "--json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["written"], false);
    assert_eq!(plan["estimated_jobs"], 2);
    // Each trial is reported: a warm-up (not counted), then the sub-batch size tried again.
    let trials = plan["trials"].as_array().unwrap();
    assert_eq!(trials[0]["warm_up"], true, "{plan}");
    let measured: Vec<_> = trials.iter().filter(|t| t["warm_up"] == false).collect();
    assert!(measured.len() >= 3, "{plan}");
    assert!(
        measured.iter().all(|t| t["keys"] == 10 && t["rows"] == 10),
        "{plan}"
    );
    assert!(plan["estimated_duration_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n <> 0").await,
        0,
        "dry run rolled back"
    );
    assert!(sg(&url, &queue).status.success());
    assert!(sg(&url, &["run", "--until-idle", "--json"])
        .status
        .success());
    let out = sg(&url, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &status[0];
    for field in [
        "id",
        "name",
        "status",
        "job_kind",
        "table",
        "column",
        "batch_size",
        "sub_batch_size",
        "rows_done",
        "rows_total",
        "percent",
        "rows_per_second",
        "eta_seconds",
        "jobs",
        "on_hold_until",
        "held_since",
        "throttle_pause_ms",
        "throttle_reason",
        "hold_reason",
        "health_settings",
        "target_sub_batch_ms",
        "created_at",
        "finished_at",
    ] {
        assert!(m.get(field).is_some(), "status --json has {field}: {m}");
    }
    assert_eq!(m["health_settings"]["hold_ms"], 5_000);
    assert_eq!(m["health_settings"]["autovacuum"], "wraparound");
    assert_eq!(m["health_settings"]["off"], serde_json::json!([]));
    assert_eq!(m["target_sub_batch_ms"], 50);
    let out = sg(&url, &["health", "m", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let health: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(health["migration"], "m");
    assert_eq!(health["stop"], false);
    let indicators = health["indicators"].as_array().unwrap();
    let names: Vec<&str> = indicators
        .iter()
        .map(|i| i["indicator"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "autovacuum",
            "wal_archive_backlog",
            "wal_rate",
            "replica_lag",
            "long_transactions",
            "lock_waits",
            "probe",
            "sub_batch_latency"
        ]
    );
    for i in indicators {
        assert!(
            ["normal", "stop", "unknown"].contains(&i["signal"].as_str().unwrap())
                && i["reading"].is_string()
                && i["threshold"].is_string(),
            "{i}"
        );
    }
    // The test server has no replica: a reading, not a guess.
    let replica = &indicators[3];
    match db.backend {
        sluicegate::store::Backend::Postgres => assert_eq!(
            (replica["signal"].as_str(), replica["reading"].as_str()),
            (
                Some("normal"),
                Some("no replicas streaming from this server")
            )
        ),
        sluicegate::store::Backend::Sqlite => assert_eq!(replica["signal"], "unknown"),
    }
    assert_eq!(m["status"], "finished");
    assert_eq!(m["rows_done"], 100);
    assert_eq!(m["jobs"]["succeeded"], 2);
    let out = sg(&url, &["jobs", "m", "--json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 2);
    let job_id = jobs[0]["id"].as_i64().unwrap().to_string();
    let out = sg(&url, &["history", "m", "--job", &job_id, "--json"]);
    let log: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(log[0]["previous_status"], "pending");
    assert_eq!(log[1]["next_status"], "succeeded");
});

/// Queues `n = n + 1` over `table` as migration `inc` (fixed sizes keep the run slow enough
/// to be killed mid-job), runs three workers killed with SIGKILL as soon as each holds a job
/// (a little later into the job each round), then one that finishes; checks every row was
/// incremented exactly once, every job's log is a chain, and each job a killed worker left
/// running shows `WorkerLost`. Returns the jobs.
async fn kill_three_workers_then_finish(db: &TestDb, table: &str, extra: &[&str]) -> Vec<Job> {
    let url = db.url.clone();
    assert!(sg(&url, &["setup"]).status.success());
    let mut args = vec![
        "queue",
        "inc",
        "--table",
        table,
        "--kind",
        "update",
        "--set",
        "n = n + 1",
        "--batch-size",
        "1000",
        "--sub-batch-size",
        "100",
        "--pause-ms",
        "10",
        "--interval",
        "0s",
        "--target-sub-batch-time",
        "0s",
    ];
    args.extend_from_slice(extra);
    let out = sg(&url, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let handle = sluicegate::Sluicegate::connect(&url).await.unwrap();
    // (job, attempt) pairs a killed worker left running.
    let mut killed_mid_job = std::collections::HashSet::new();
    for round in 0..3 {
        let mut child = bin()
            .args([
                "--database-url",
                &url,
                "run",
                "--until-idle",
                "--json",
                "--lease",
                "1s",
                "--worker",
            ])
            .arg(format!("victim-{round}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let victim = format!("victim-{round}");
        let m = handle.migration("inc").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let running = handle.jobs(&m, Some(JobStatus::Running)).await.unwrap();
            if running
                .iter()
                .any(|j| j.worker.as_deref() == Some(victim.as_str()))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{victim} never took a job"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(20 * round)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let m = handle.migration("inc").await.unwrap();
        for job in handle.jobs(&m, Some(JobStatus::Running)).await.unwrap() {
            killed_mid_job.insert((job.id, job.attempts));
        }
    }
    assert!(
        !killed_mid_job.is_empty(),
        "at least one worker died holding a job"
    );
    let finish = bin()
        .args([
            "--database-url",
            &url,
            "run",
            "--until-idle",
            "--json",
            "--lease",
            "1s",
            "--worker",
            "finisher",
        ])
        .output()
        .unwrap();
    assert!(finish.status.success(), "{}", stderr(&finish));
    let m = handle.migration("inc").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    let q = sluicegate::ident::quote(table);
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {q} WHERE n <> 1"))
            .await,
        0,
        "every row incremented exactly once"
    );
    let jobs = handle.jobs(&m, None).await.unwrap();
    let rows: i64 = jobs.iter().map(|j| j.rows_affected).sum();
    assert_eq!(
        rows,
        db.scalar(&format!("SELECT count(*) FROM {q}")).await,
        "the jobs' committed rows add up to the table"
    );
    let mut lost = 0;
    for job in &jobs {
        let log = handle.job_history(job.id).await.unwrap();
        assert_eq!(log[0].previous_status, JobStatus::Pending);
        for pair in log.windows(2) {
            assert_eq!(
                pair[0].next_status, pair[1].previous_status,
                "chain of job {}",
                job.id
            );
        }
        lost += log
            .iter()
            .filter(|r| r.exception_class.as_deref() == Some("WorkerLost"))
            .count();
    }
    assert_eq!(
        lost,
        killed_mid_job.len(),
        "each job left running by a killed worker shows WorkerLost"
    );
    jobs
}

// Workers are separate processes killed with SIGKILL mid-job; `n = n + 1` is not
// idempotent, so any sub-batch applied twice (or skipped) shows in the table.
store_test!(exactly_once_across_workers_killed_with_sigkill, |db| {
    db.create_items("items", &[(1, 20_000)]).await;
    let jobs = kill_three_workers_then_finish(&db, "items", &[]).await;
    let int = |k: &sluicegate::Key| k.as_i64().expect("an integer key");
    let mut ranges: Vec<_> = jobs
        .iter()
        .map(|j| (int(&j.min_value), int(&j.max_value)))
        .collect();
    ranges.sort();
    assert_eq!(ranges.first().unwrap().0, 1);
    assert_eq!(ranges.last().unwrap().1, 20_000);
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].1 + 1, pair[1].0, "no overlap, no hole: {pair:?}");
    }
});

// The same with UUIDv4 keys in random order: the walk, the exactly-once cursor and the resume
// of a killed worker's job all hold on a key that is not an integer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_on_uuid_keys_across_workers_killed_with_sigkill() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    db.exec(
        "CREATE TABLE tokens (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), n integer NOT NULL DEFAULT 0);
         INSERT INTO tokens (n) SELECT 0 FROM generate_series(1, 20000);
         ANALYZE tokens",
    )
    .await;
    let jobs = kill_three_workers_then_finish(&db, "tokens", &[]).await;
    // Every job is a range of existing keys, its bounds as text JSON.
    assert!(jobs.iter().all(|j| j.min_value.values()[0].is_string()));
    let out = sg(&db.url, &["jobs", "inc", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &listed[0];
    assert_eq!(
        first["min_cursor"].as_array().map(Vec::len),
        Some(1),
        "{first}"
    );
    assert!(
        first["min_value"].as_str().is_some_and(|v| v.len() == 36),
        "{first}"
    );
}

store_test!(a_closed_pipe_ends_read_commands_quietly, |db| {
    // Defect: `sluicegate history NAME | head -1` panicked now and then (exit 101). Here the
    // reading end is closed before the command writes, every time.
    db.create_items("items", &[(1, 2_000)]).await;
    let url = db.url.clone();
    assert!(sg(&url, &["setup"]).status.success());
    let queued = sg(
        &url,
        &[
            "queue",
            "piped",
            "--table",
            "items",
            "--kind",
            "update",
            "--set",
            "n = n + 1",
            "--batch-size",
            "100",
            "--interval",
            "0s",
            "--pause-ms",
            "0",
        ],
    );
    assert!(queued.status.success(), "{}", stderr(&queued));
    assert!(sg(&url, &["run", "--until-idle", "--json"])
        .status
        .success());
    for args in [
        &["history", "piped"][..],
        &["status"],
        &["jobs", "piped", "--json"],
        &["show", "piped"],
    ] {
        for _ in 0..5 {
            let mut child = bin()
                .arg("--database-url")
                .arg(&url)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            drop(child.stdout.take());
            let out = child.wait_with_output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{args:?} with a closed pipe: {}",
                stderr(&out)
            );
            assert!(stderr(&out).is_empty(), "{args:?}: {}", stderr(&out));
        }
    }
});

store_test!(run_once_with_concurrency_runs_one_step_per_loop, |db| {
    // Defect: `run --once --concurrency N` shared one worker's state between its N steps.
    db.create_items("items", &[(1, 1_000)]).await;
    let url = db.url.clone();
    assert!(sg(&url, &["setup"]).status.success());
    let queued = sg(
        &url,
        &[
            "queue",
            "once",
            "--table",
            "items",
            "--kind",
            "update",
            "--set",
            "n = n + 1",
            "--batch-size",
            "100",
            "--sub-batch-size",
            "100",
            "--interval",
            "0s",
            "--pause-ms",
            "0",
        ],
    );
    assert!(queued.status.success(), "{}", stderr(&queued));
    let out = sg(
        &url,
        &[
            "run",
            "--once",
            "--concurrency",
            "3",
            "--worker",
            "solo",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let jobs = tracking(&db, "jobs");
    // Three loops, one step each: a loop whose claim met another's row lock (SKIP LOCKED)
    // is idle for its step, so 1 to 3 jobs ran, each by its own loop, each a job of its own
    // and none left running for a loop that will not come back.
    let ran = stdout(&out)
        .lines()
        .filter(|l| l.contains("\"event\":\"job\""))
        .count() as i64;
    assert!((1..=3).contains(&ran), "{ran} jobs: {}", stdout(&out));
    let count = |sql: String| {
        let db = &db;
        async move { db.scalar(&sql).await }
    };
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM {jobs} WHERE status = 'succeeded'"
        ))
        .await,
        ran
    );
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM {jobs} WHERE status <> 'succeeded'"
        ))
        .await,
        0
    );
    assert_eq!(
        count(format!(
            "SELECT count(DISTINCT worker) FROM {jobs} WHERE worker IN ('solo#0', 'solo#1', 'solo#2')"
        ))
        .await,
        ran
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        100 * ran
    );
    assert_eq!(db.scalar("SELECT count(*) FROM items WHERE n > 1").await, 0);
});

/// An application role with no `pg_monitor` or `pg_read_all_stats`, owning its table, given
/// CREATE on the database: setup, queue, run, health and status all work; what it may not
/// read is `unknown`, names the grant, and never holds the migration; `queue`, `--dry-run`,
/// `status`, `show` and `run`'s start say which protections are off and the grant for each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_role_without_pg_monitor_runs_migrations() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    let role = format!("sg_app_{}", std::process::id());
    db.exec(&format!("CREATE ROLE {role} LOGIN")).await;
    let dbname = db.url.rsplit('/').next().unwrap().to_owned();
    db.exec(&format!("GRANT CREATE ON DATABASE \"{dbname}\" TO {role}"))
        .await;
    db.exec(&format!("GRANT CREATE ON SCHEMA public TO {role}"))
        .await;
    db.create_items("items", &[(1, 5_000)]).await;
    db.exec(&format!("ALTER TABLE items OWNER TO {role}")).await;
    let url = db
        .url
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let run = |args: &[&str]| {
        let out = sg(&url, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    };
    run(&["setup"]);
    let queue = |extra: &[&str]| {
        let mut args = vec![
            "queue",
            "app",
            "--table",
            "items",
            "--kind",
            "update",
            "--set",
            "n = n + 1",
            "--batch-size",
            "1000",
            "--interval",
            "0s",
            "--pause-ms",
            "0",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    // Before anything runs, the protections that are off are said, each with its grant.
    let grant = format!("GRANT pg_read_all_stats TO {role}");
    let said = |out: &std::process::Output, what: &str| {
        let err = stderr(out);
        assert!(
            err.contains("warning: migration app: ")
                && err.contains("cannot be read, reading unknown, which never holds")
                && err.contains(&format!(
                    "  autovacuum: not readable by role {role}: needs {grant}"
                )),
            "{what}: {err}"
        );
    };
    let dry = queue(&["--dry-run"]);
    said(&dry, "queue --dry-run");
    let dry_json = queue(&["--dry-run", "--json"]);
    let dry_json: serde_json::Value = serde_json::from_slice(&dry_json.stdout).unwrap();
    assert!(
        dry_json["protections_off"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["indicator"] == "autovacuum" && p["grant"] == grant.as_str()),
        "{dry_json}"
    );
    said(&queue(&[]), "queue");
    let health = run(&["health", "app", "--json"]);
    let health: serde_json::Value = serde_json::from_slice(&health.stdout).unwrap();
    assert_eq!(health["stop"], false, "{health}");
    let by = |name: &str| {
        health["indicators"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["indicator"] == name)
            .unwrap()
            .clone()
    };
    let i = by("autovacuum");
    assert_eq!(i["signal"], "unknown", "{i}");
    assert_eq!(i["cause"], "privilege", "{i}");
    assert_eq!(i["grant"], grant.as_str(), "{i}");
    // Its own sessions it can read: no other transaction is open.
    let i = by("long_transactions");
    assert_ne!(i["signal"], "stop", "{i}");
    let status = stdout(&run(&["status"]));
    assert!(
        status.contains("migration 1 (app): ") && status.contains(&grant),
        "{status}"
    );
    let show = stdout(&run(&["show", "app"]));
    assert!(show.contains(&grant), "{show}");
    let status = run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status[0]["protections_off"][0]["grant"],
        grant.as_str(),
        "{status}"
    );
    let ran = run(&["run", "--until-idle", "--json"]);
    said(&ran, "run");
    let status = run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status[0]["status"], "finished", "{status}");
    assert!(
        status[0].get("protections_off").is_none(),
        "not for a finished one: {status}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        5_000
    );
    // Leave nothing behind: the role owns the tracking schema and the table.
    db.exec(&format!("DROP OWNED BY {role}")).await;
    db.exec(&format!("DROP ROLE {role}")).await;
}

// The operator's experience: full speed by default, a warning when the settings would take
// more than a day, `set` on a queued migration (its log row), and a cancelled migration's name
// queued again.
store_test!(defaults_set_and_queue_again_from_the_command_line, |db| {
    db.create_items("items", &[(1, 5_000)]).await;
    let url = db.url.clone();
    assert!(sg(&url, &["setup"]).status.success());
    let queue = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "queue",
            name,
            "--table",
            "items",
            "--kind",
            "update",
            "--set",
            "n = n + 1",
            "--json",
        ];
        args.extend_from_slice(extra);
        sg(&url, &args)
    };
    // The batch pinned at 10 (the optimizer would grow it after 20 jobs, and the estimate
    // plays that out): 500 jobs, ten minutes apart.
    let out = queue(
        "slow",
        &[
            "--interval",
            "10m",
            "--batch-size",
            "10",
            "--sub-batch-size",
            "10",
            "--max-batch-size",
            "10",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: at these settings slow would take about"),
        "{}",
        stderr(&out)
    );
    let queued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        queued["sub_batch_ceiling"], 10,
        "an explicit sub-batch size is a ceiling"
    );
    // Human units, no raw bytes or milliseconds.
    let out = sg(&url, &["show", "slow"]);
    for needle in [
        "replica lag max 1 GiB or 30s",
        "transaction age max 10m",
        "statement 30s, lock 5s",
        "10m / 0 ms",
        "never above 10 keys (the explicit sub-batch size)",
    ] {
        assert!(
            stdout(&out).contains(needle),
            "{needle:?} in {}",
            stdout(&out)
        );
    }
    let out = sg(
        &url,
        &[
            "set",
            "slow",
            "--interval",
            "0s",
            "--batch-size",
            "500",
            "--max-batch-size",
            "500",
            "--reason",
            "catch up",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("batch_size 10 -> 500; interval 10m -> 0s (catch up)"),
        "{}",
        stdout(&out)
    );
    let out = sg(&url, &["history", "slow", "--json"]);
    let log: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = &log.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event"], "set");
    assert_eq!(last["actor"], "cli");
    // A bad value is refused with a non-zero exit, nothing written.
    assert_fails_with(
        &sg(&url, &["set", "slow", "--sub-batch-size", "900"]),
        "sub-batch size 900 is larger than batch size 500",
    );
    // Cancelled, the name may be queued again; by default at full speed.
    assert!(sg(&url, &["cancel", "slow"]).status.success());
    let out = queue("slow", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["id"], 2);
    assert_eq!(again["interval_ms"], 0);
    assert!(again["sub_batch_ceiling"].is_null());
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
});

/// Issue 18, item 13: no command prints a password, its help included (clap showed
/// `[env: DATABASE_URL=postgres://newbie:pw@...]`), nor an error, however the password is
/// written (holding `@`, or as `?password=`).
#[test]
fn no_help_or_error_prints_a_password() {
    let secret = "pw-S3cret";
    let env_url = format!("postgres://newbie:{secret}@127.0.0.1:1/newbie_app");
    let target = format!("postgres://app:{secret}@127.0.0.1:1/target");
    let commands: [&[&str]; 10] = [
        &["--help"],
        &["help", "status"],
        &["setup", "--help"],
        &["queue", "--help"],
        &["run", "--help"],
        &["status", "--help"],
        &["show", "-h"],
        &["pause", "--help"],
        &["set", "--help"],
        &["serve", "--help"],
    ];
    for args in commands {
        for with_flag in [false, true] {
            let mut cmd = bin();
            cmd.env("DATABASE_URL", &env_url)
                .env("SLUICEGATE_TARGET_URL", &target);
            if with_flag {
                cmd.args(["--target-url", &target, "--database-url", &env_url]);
            }
            let out = cmd.args(args).output().unwrap();
            let all = format!("{}{}", stdout(&out), stderr(&out));
            assert!(out.status.success(), "{args:?}: {all}");
            assert!(
                !all.contains(secret),
                "{args:?} prints the password:\n{all}"
            );
            if !with_flag && args != ["--help"] && args[0] != "help" {
                assert!(all.contains("[env: DATABASE_URL]"), "{args:?}: {all}");
                assert!(
                    all.contains("[env: SLUICEGATE_TARGET_URL]"),
                    "{args:?}: {all}"
                );
            }
        }
    }
    for url in [
        format!("postgres://newbie:{secret}@127.0.0.1:1/db"),
        format!("postgres://newbie:x@{secret}@127.0.0.1:1/db"),
        format!("postgres://newbie@127.0.0.1:1/db?sslmode=disable&password={secret}"),
    ] {
        let out = bin()
            .env("DATABASE_URL", &url)
            .env("SLUICEGATE_TARGET_URL", &target)
            .arg("status")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("127.0.0.1:1"), "names the server: {err}");
        assert!(!err.contains(secret) && !err.contains("S3cret"), "{err}");
    }
}

// Issue 18, item 17: with no `DATABASE_URL`, `queue ... --dry-run` ("writes nothing")
// created `sluicegate.db` in the current directory. No command but `setup` creates the
// tracking database now, and the refusal names the database it looked at.
store_test!(no_command_but_setup_creates_a_database, |db| {
    let dir = tempfile::tempdir().unwrap();
    let in_dir = |args: &[&str]| {
        bin()
            .current_dir(dir.path())
            .env_remove("SLUICEGATE_TARGET_URL")
            .args(args)
            .output()
            .unwrap()
    };
    let commands: [&[&str]; 8] = [
        &[
            "queue",
            "x",
            "--table",
            "t",
            "--kind",
            "delete",
            "--dry-run",
        ],
        &["queue", "x", "--table", "t", "--kind", "delete"],
        &["status"],
        &["show", "x"],
        &["health", "x"],
        &["pause", "x"],
        &["run", "--until-idle"],
        &["finalize", "x"],
    ];
    for args in commands {
        let out = in_dir(args);
        assert_fails_with(
            &out,
            "the tracking schema is not installed in sqlite://sluicegate.db (run `sluicegate setup` first)",
        );
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(files.is_empty(), "{args:?} created {files:?}");
    }
    // A tracking database that is there but was never set up: named too (on PostgreSQL, the
    // schema and the server, its password masked), and nothing is installed.
    let url = match db.backend {
        Backend::Postgres => db.url.clone(),
        Backend::Sqlite => {
            db.create_items("items", &[(1, 10)]).await;
            db.url.clone()
        }
    };
    let out = bin()
        .args(["--database-url", &url, "--schema", "never_set_up"])
        .args([
            "queue",
            "x",
            "--table",
            "items",
            "--kind",
            "delete",
            "--dry-run",
        ])
        .output()
        .unwrap();
    let expected = match db.backend {
        Backend::Postgres => format!(
            "the tracking schema is not installed in schema \"never_set_up\" of {}",
            sluicegate::client::mask_password(&url)
        ),
        Backend::Sqlite => format!("the tracking schema is not installed in {url}"),
    };
    assert_fails_with(&out, &expected);
    if db.backend == Backend::Postgres {
        assert_eq!(
            db.scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'never_set_up'")
                .await,
            0
        );
    }
    // `setup` creates it.
    assert!(in_dir(&["setup"]).status.success());
    assert!(dir.path().join("sluicegate.db").exists());
    // A target file that is not there is said as such, and not created either.
    let out = in_dir(&[
        "--target-url",
        "sqlite://elsewhere.db",
        "queue",
        "x",
        "--table",
        "t",
        "--kind",
        "delete",
        "--dry-run",
    ]);
    assert_fails_with(
        &out,
        "invalid database URL \"sqlite://elsewhere.db\": no such SQLite file",
    );
    assert!(!dir.path().join("elsewhere.db").exists());
});

// Issue 18, items 4 and 7 from the command line, on a database whose own DateStyle is
// `SQL, DMY` and TimeZone Asia/Kolkata: the dry run and the queue message print the bounds as
// the database read them, canonically (`01/02/2024` is 1 February, shown `2024-02-01`); a
// worker connected to another target says which migration it skips and for what, and changes
// nothing there; status, show and --json show the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_print_canonically_and_a_worker_says_which_targets_it_skips() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    let other = TestDb::postgres().await;
    let dbname = db.url.rsplit('/').next().unwrap().to_owned();
    db.exec(&format!(
        "ALTER DATABASE \"{dbname}\" SET DateStyle = 'SQL, DMY'"
    ))
    .await;
    db.exec(&format!(
        "ALTER DATABASE \"{dbname}\" SET TimeZone = 'Asia/Kolkata'"
    ))
    .await;
    let create = "CREATE TABLE days (day date PRIMARY KEY, n integer NOT NULL DEFAULT 0);
         INSERT INTO days (day) SELECT d::date FROM generate_series('2024-01-01'::date, '2024-03-31'::date, interval '1 day') d";
    db.exec(create).await;
    other.exec(create).await;
    let url = db.url.clone();
    assert!(sg(&url, &["setup"]).status.success());
    let queue = [
        "queue",
        "feb",
        "--table",
        "days",
        "--kind",
        "update",
        "--set",
        "n = n + 1",
        "--min-value",
        "01/02/2024",
        "--max-value",
        "2024-02-29",
        "--batch-size",
        "10",
        "--sub-batch-size",
        "5",
        "--pause-ms",
        "0",
    ];
    let dry = sg(&url, &[&queue[..], &["--dry-run"]].concat());
    assert!(dry.status.success(), "{}", stderr(&dry));
    let text = stdout(&dry);
    assert!(
        text.contains("range          2024-02-01 ..= 2024-02-29"),
        "{text}"
    );
    assert!(!text.contains("01/02/2024"), "{text}");
    let queued = sg(&url, &queue);
    assert!(queued.status.success(), "{}", stderr(&queued));
    let text = stdout(&queued);
    assert!(text.contains("keys 2024-02-01 ..= 2024-02-29"), "{text}");
    assert!(text.contains(&format!("(target {url})")), "{text}");

    // A worker on the other database: it skips the migration, saying so, and ends.
    let out = bin()
        .args(["--database-url", &url, "--target-url", &other.url])
        .args(["run", "--until-idle"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "skipping migration 1 (feb): it is for {url}; this worker is connected to {}",
            other.url
        )),
        "{err}"
    );
    assert_eq!(
        other.scalar("SELECT count(*) FROM days WHERE n <> 0").await,
        0
    );
    assert_eq!(db.scalar("SELECT count(*) FROM days WHERE n <> 0").await, 0);

    // Its own worker runs it: February's 29 days, not 59.
    let out = sg(&url, &["run", "--until-idle"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.scalar("SELECT count(*) FROM days WHERE n = 1").await, 29);
    assert_eq!(
        db.scalar("SELECT count(*) FROM days WHERE n = 1 AND extract(month FROM day) <> 2")
            .await,
        0
    );
    let status = stdout(&sg(&url, &["status"]));
    assert!(
        status.contains("TARGET") && status.contains(&url),
        "{status}"
    );
    let show = stdout(&sg(&url, &["show", "feb"]));
    assert!(show.contains("target") && show.contains(&url), "{show}");
    let json: serde_json::Value =
        serde_json::from_slice(&sg(&url, &["show", "feb", "--json"]).stdout).unwrap();
    assert_eq!(json["target"]["display"], url.as_str(), "{json}");
    assert!(
        json["target"]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("postgres:") && id.ends_with(&format!("/{dbname}"))),
        "{json}"
    );
    assert_eq!(json["min_value"], "2024-02-01", "{json}");
}

/// Corrupts a migration's stored health settings by hand, as no entry point may: a number
/// replaced by JSON null (what `set --max-latency-drift inf` used to store).
async fn corrupt_health_settings(db: &TestDb, name: &str) {
    let table = tracking(db, "migrations");
    let sql = match db.backend {
        Backend::Postgres => format!(
            "UPDATE {table} SET health_settings = jsonb_set(health_settings, '{{latency_drift_factor}}', 'null') WHERE name = '{name}'"
        ),
        Backend::Sqlite => format!(
            "UPDATE {table} SET health_settings = json_set(health_settings, '$.latency_drift_factor', json('null')) WHERE name = '{name}'"
        ),
    };
    db.exec(&sql).await;
}

// Non-finite numbers are refused by `queue` and `set` before anything is written; a row
// corrupted by hand is listed as unreadable, the others are listed and run, and the worker
// fails it with its class instead of dying.
store_test!(
    non_finite_settings_are_refused_and_an_unreadable_row_stops_nothing,
    |db| {
        db.create_items("items", &[(1, 300)]).await;
        db.create_items("t", &[(1, 300)]).await;
        let url = db.url.clone();
        assert!(sg(&url, &["setup"]).status.success());
        let queue = |name: &str, table: &str, extra: &[&str]| {
            let mut args = vec![
                "queue",
                name,
                "--table",
                table,
                "--kind",
                "update",
                "--set",
                "n = n + 1",
                "--pause-ms",
                "0",
            ];
            args.extend_from_slice(extra);
            sg(&url, &args)
        };
        assert_fails_with(
            &queue("inf", "items", &["--max-latency-drift", "1e400"]),
            "--max-latency-drift must be a finite number above 1 (got inf)",
        );
        assert!(queue("good", "items", &[]).status.success());
        assert!(queue("bad", "t", &[]).status.success());
        let before = counts(&db).await;
        for (args, expected) in [
            (
                vec!["set", "good", "--max-latency-drift", "inf"],
                "--max-latency-drift must be a finite number above 1 (got inf)",
            ),
            (
                vec!["set", "good", "--batch-size", "0"],
                "batch size must be at least 1",
            ),
            (
                vec!["set", "good", "--health-probe", "select 1/0 = 1"],
                "--health-probe failed on a trial run",
            ),
            (
                vec!["set", "good", "--health-probe", "select; drop table t"],
                "--health-probe must be one query",
            ),
        ] {
            assert_fails_with(&sg(&url, &args), expected);
        }
        assert_eq!(counts(&db).await, before, "nothing written");

        corrupt_health_settings(&db, "bad").await;
        let status = sg(&url, &["status"]);
        assert!(status.status.success(), "{}", stderr(&status));
        let text = stdout(&status);
        assert!(
            text.contains("good") && text.contains("active (unreadable)"),
            "{text}"
        );
        assert!(
            text.contains("migration 2 (bad) is unreadable: bad health_settings"),
            "{text}"
        );
        let json = sg(&url, &["status", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 2, "{json}");
        assert!(json[0].get("unreadable").is_none(), "{json}");
        assert!(
            json[1]["unreadable"]
                .as_str()
                .is_some_and(|w| w.contains("latency_drift_factor")),
            "{json}"
        );
        assert_fails_with(
            &sg(&url, &["set", "bad", "--pause-ms", "1"]),
            "is unreadable",
        );
        assert!(queue("other", "items", &["--where", "n = 0"])
            .status
            .success());
        let run = sg(&url, &["run", "--until-idle", "--json"]);
        assert!(run.status.success(), "{}", stderr(&run));
        let show = stdout(&sg(&url, &["show", "bad"]));
        assert!(
            show.contains("failed") && show.contains("unreadable"),
            "{show}"
        );
        let history = stdout(&sg(&url, &["history", "bad"]));
        assert!(history.contains("UnreadableMigration"), "{history}");
        let json = sg(&url, &["status", "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        let status_of = |name: &str| {
            json.as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == name)
                .unwrap()["status"]
                .clone()
        };
        assert_eq!(status_of("good"), "finished");
        assert_eq!(status_of("other"), "finished");
        assert_eq!(status_of("bad"), "failed");
        assert_eq!(db.scalar("SELECT count(*) FROM t WHERE n <> 0").await, 0);
    }
);

/// Sends `signal` (`TERM`, `INT`) to a child process.
fn signal(child: &std::process::Child, signal: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(sent.success());
}

/// Queues `inc` (`n = n + 1`) on `items` in jobs of `batch` keys and sub-batches of 50 keys
/// that each take about `sub_batch_ms`: PostgreSQL sleeps per row inside the sub-batch;
/// SQLite, which cannot sleep in SQL, pauses as long between sub-batches.
fn queue_slow(db: &TestDb, batch: u32, sub_batch_ms: u32) {
    let url = db.url.clone();
    assert!(sg(&url, &["setup"]).status.success());
    let batch = batch.to_string();
    let mut args = vec![
        "queue",
        "inc",
        "--table",
        "items",
        "--kind",
        "update",
        "--set",
        "n = n + 1",
        "--batch-size",
        &batch,
        "--sub-batch-size",
        "50",
        "--interval",
        "0s",
        "--target-sub-batch-time",
        "0s",
    ];
    let per_row = format!(
        "pg_sleep({}) IS NOT NULL",
        f64::from(sub_batch_ms) / 50_000.0
    );
    let pause = sub_batch_ms.to_string();
    match db.backend {
        Backend::Postgres => args.extend(["--where", &per_row, "--pause-ms", "0"]),
        Backend::Sqlite => args.extend(["--pause-ms", &pause]),
    }
    let out = sg(&url, &args);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Waits until a job of `inc` is running with a committed sub-batch (a cursor).
async fn inc_under_way(handle: &sluicegate::Sluicegate) -> Job {
    let m = handle.migration("inc").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let running = handle.jobs(&m, Some(JobStatus::Running)).await.unwrap();
        if let Some(job) = running.into_iter().find(|j| j.cursor.is_some()) {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "no job got under way");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// SIGTERM mid-job: the worker ends the sub-batch in flight, hands the job back and exits 0
// within about one sub-batch (100 ms here), not after the job's 100 sub-batches (10 s);
// the next `run` resumes the job after its cursor, every row changed exactly once.
store_test!(
    sigterm_ends_the_sub_batch_in_flight_and_the_next_run_resumes_the_job,
    |db| {
        db.create_items("items", &[(1, 5_000)]).await;
        queue_slow(&db, 5_000, 100);
        let url = db.url.clone();
        let handle = sluicegate::Sluicegate::connect(&url).await.unwrap();
        let mut child = bin()
            .args(["--database-url", &url, "run", "--until-idle", "--json"])
            .args(["--worker", "stopped"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        inc_under_way(&handle).await;
        let sent = std::time::Instant::now();
        signal(&child, "TERM");
        let status = child.wait().unwrap();
        let took = sent.elapsed();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        eprintln!("exited {} ms after SIGTERM", took.as_millis());
        assert_eq!(status.code(), Some(0), "{err}");
        assert!(
            err.contains("SIGTERM: stopping at the end of the current sub-batch"),
            "{err}"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
        let m = handle.migration("inc").await.unwrap();
        let jobs = handle.jobs(&m, None).await.unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].status, JobStatus::Pending);
        let cursor = jobs[0].cursor.as_ref().unwrap().as_i64().unwrap();
        assert!(cursor < 5_000, "{cursor}");
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
            cursor
        );
        assert_eq!(db.scalar("SELECT count(*) FROM items WHERE n > 1").await, 0);
        // The next run resumes after the cursor.
        let rest = sg(&url, &["run", "--until-idle", "--json", "--worker", "next"]);
        assert!(rest.status.success(), "{}", stderr(&rest));
        let m = handle.migration("inc").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
            0
        );
        let log = handle.job_history(jobs[0].id).await.unwrap();
        let interrupted = log
            .iter()
            .find(|r| r.exception_class.as_deref() == Some("Interrupted"))
            .expect("an Interrupted row");
        assert_eq!(interrupted.worker.as_deref(), Some("stopped"));
        assert!(interrupted
            .exception_message
            .as_deref()
            .unwrap()
            .contains(&format!("resumes after its cursor {cursor}")));
        assert_eq!(log.last().unwrap().next_status, JobStatus::Succeeded);
        assert_eq!(log.last().unwrap().worker.as_deref(), Some("next"));
    }
);

// A second signal exits at once (143 for SIGTERM) while a 2.5 s sub-batch is in flight; the
// sub-batch rolls back, the job's lease (1 s) covers the rest, and a later run finishes it
// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    db.create_items("items", &[(1, 150)]).await;
    queue_slow(&db, 150, 2_500);
    let url = db.url.clone();
    let handle = sluicegate::Sluicegate::connect(&url).await.unwrap();
    let mut child = bin()
        .args([
            "--database-url",
            &url,
            "run",
            "--until-idle",
            "--lease",
            "1s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    inc_under_way(&handle).await;
    let sent = std::time::Instant::now();
    signal(&child, "TERM");
    // The first signal is taken (said on stderr) before the second is sent.
    let mut stderr_pipe = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("SIGTERM: stopping") {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr_pipe, &mut line).unwrap();
        assert!(n > 0, "the first signal was said: {said}");
        said.push_str(&line);
    }
    signal(&child, "TERM");
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    eprintln!("exited {} ms after the first SIGTERM", took.as_millis());
    assert_eq!(status.code(), Some(143));
    assert!(took < Duration::from_millis(2_000), "{took:?}");
    let rest = sg(&url, &["run", "--until-idle", "--lease", "1s"]);
    assert!(rest.status.success(), "{}", stderr(&rest));
    assert_eq!(
        handle.migration("inc").await.unwrap().status,
        MigrationStatus::Finished
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
        0
    );
}

// `finalize` stopped by SIGINT: it ends the sub-batch in flight, hands the job back, gives
// the table back and exits 1 saying so; the migration stays `finalizing` and a worker with
// the default 30 s lease finishes it at once and at full speed (before: exit 130, the job
// left running, then one job per 30 s lease).
store_test!(
    finalize_stopped_by_sigint_is_finished_by_a_worker_at_full_speed,
    |db| {
        db.create_items("items", &[(1, 2_000)]).await;
        queue_slow(&db, 200, 20);
        let url = db.url.clone();
        let handle = sluicegate::Sluicegate::connect(&url).await.unwrap();
        let child = bin()
            .args(["--database-url", &url, "finalize", "inc"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        inc_under_way(&handle).await;
        let sent = std::time::Instant::now();
        signal(&child, "INT");
        let out = child.wait_with_output().unwrap();
        let took = sent.elapsed();
        eprintln!("finalize exited {} ms after SIGINT", took.as_millis());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("finalize of migration inc was stopped"),
            "{err}"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
        let m = handle.migration("inc").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finalizing);
        assert!(handle
            .jobs(&m, Some(JobStatus::Running))
            .await
            .unwrap()
            .is_empty());
        let started = std::time::Instant::now();
        let rest = sg(&url, &["run", "--until-idle", "--worker", "rescuer"]);
        let took = started.elapsed();
        eprintln!("a worker finished it in {} ms", took.as_millis());
        assert!(rest.status.success(), "{}", stderr(&rest));
        assert!(
            took < Duration::from_secs(20),
            "not one job per lease: {took:?}"
        );
        assert_eq!(
            handle.migration("inc").await.unwrap().status,
            MigrationStatus::Finished
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
            0
        );
    }
);

/// `sg` that must succeed; its stdout.
fn ok(url: &str, args: &[&str]) -> String {
    let out = sg(url, args);
    assert!(
        out.status.success(),
        "sluicegate {args:?}: {}{}",
        stderr(&out),
        stdout(&out)
    );
    stdout(&out)
}

store_test!(
    status_filters_jobs_limits_and_run_only_runs_the_named,
    |db| {
        db.create_items("items", &[(1, 100)]).await;
        db.create_items("others", &[(1, 100)]).await;
        db.create_items("thirds", &[(1, 100)]).await;
        let url = db.url.clone();
        ok(&url, &["setup"]);
        for (name, table) in [("one", "items"), ("two", "others"), ("three", "thirds")] {
            ok(
                &url,
                &[
                    "queue",
                    name,
                    "--table",
                    table,
                    "--kind",
                    "update",
                    "--set",
                    "n = n + 1",
                    "--batch-size",
                    "10",
                    "--sub-batch-size",
                    "10",
                    "--max-batch-size",
                    "10",
                ],
            );
        }
        // `run --only` works on the named migrations alone, and ends once they are done.
        let out = ok(
            &url,
            &["run", "--until-idle", "--only", "two,three", "--json"],
        );
        assert!(!out.contains("\"migration\":\"one\""), "{out}");
        assert_eq!(db.scalar("SELECT sum(n) FROM others").await, 100);
        assert_eq!(db.scalar("SELECT sum(n) FROM thirds").await, 100);
        assert_eq!(db.scalar("SELECT sum(n) FROM items").await, 0);
        assert_fails_with(
            &sg(&url, &["run", "--until-idle", "--only", "nope"]),
            "nope",
        );
        ok(
            &url,
            &[
                "queue", "four", "--table", "thirds", "--kind", "update", "--set", "n = 0",
                "--paused",
            ],
        );
        ok(&url, &["cancel", "four"]);

        // `status --status`: the statuses asked for, in text and JSON.
        let text = ok(&url, &["status", "--status", "active"]);
        assert!(
            text.contains("one") && !text.contains("two") && !text.contains("four"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&ok(
            &url,
            &["status", "--status", "finished,cancelled", "--json"],
        ))
        .unwrap();
        let names: Vec<&str> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["two", "three", "four"]);
        assert!(ok(&url, &["status", "--status", "failed"]).contains("no migration is failed"));
        assert_fails_with(
            &sg(&url, &["status", "--status", "actve"]),
            "unknown migration status \"actve\" in --status (expected paused, active",
        );

        // `jobs --limit`: the newest N, newest first, with the total.
        let all: serde_json::Value =
            serde_json::from_str(&ok(&url, &["jobs", "two", "--json"])).unwrap();
        let ids: Vec<i64> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids.len(), 10);
        let text = ok(&url, &["jobs", "two", "--limit", "3"]);
        assert!(text.contains("3 of 10 job(s), newest first"), "{text}");
        let newest: serde_json::Value =
            serde_json::from_str(&ok(&url, &["jobs", "two", "--limit", "3", "--json"])).unwrap();
        assert_eq!(newest["total"], 10, "{newest}");
        assert_eq!(newest["limit"], 3, "{newest}");
        let got: Vec<i64> = newest["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect();
        assert_eq!(got, [ids[9], ids[8], ids[7]]);
        // Each job's cursor is shown.
        assert!(text.contains("CURSOR"), "{text}");
    }
);

store_test!(
    queue_walks_a_nullable_key_only_with_skip_null_keys_and_batches_distinct_values,
    |db| {
        // GitLab's p_ci_stages: a nullable, non-unique pipeline_id; two stages without one.
        db.exec(
            "CREATE TABLE stages (id bigint PRIMARY KEY, pipeline_id bigint, n integer NOT NULL DEFAULT 0)",
        )
        .await;
        db.exec("CREATE INDEX stages_pipeline_id ON stages (pipeline_id)")
            .await;
        db.exec(
            "INSERT INTO stages (id, pipeline_id) VALUES (1, 10), (2, 10), (3, NULL), (4, 20),
             (5, 20), (6, 20), (7, 30), (8, NULL), (9, 40), (10, 50)",
        )
        .await;
        let url = db.url.clone();
        ok(&url, &["setup"]);
        let queue = |extra: &[&str]| {
            let mut args = vec![
                "queue",
                "stages",
                "--table",
                "stages",
                "--key",
                "pipeline_id",
                "--non-unique-key",
                "--kind",
                "update",
                "--set",
                "n = n + 1",
                "--batch-size",
                "2",
                "--sub-batch-size",
                "2",
                "--max-batch-size",
                "2",
                "--pause-ms",
                "0",
            ];
            args.extend_from_slice(extra);
            sg(&url, &args)
        };
        assert_fails_with(&queue(&[]), "pass --skip-null-keys to walk it");
        let plan = stdout(&queue(&["--skip-null-keys", "--distinct", "--dry-run"]));
        assert!(
            plan.contains("rows where pipeline_id IS NULL are not visited: 2 estimated")
                && plan.contains("from 2 distinct key values")
                && plan.contains(
                    "rows with a NULL key never visited, batches count distinct key values"
                ),
            "{plan}"
        );
        let json: serde_json::Value = serde_json::from_str(&stdout(&queue(&[
            "--skip-null-keys",
            "--distinct",
            "--dry-run",
            "--json",
        ])))
        .unwrap();
        assert_eq!(
            (
                &json["null_key_rows"],
                &json["skip_null_keys"],
                &json["distinct_keys"]
            ),
            (
                &serde_json::json!(2),
                &serde_json::json!(true),
                &serde_json::json!(true)
            ),
            "{json}"
        );
        assert_eq!(
            json["estimated_jobs"], 3,
            "5 pipelines in jobs of 2: {json}"
        );
        let out = queue(&["--skip-null-keys", "--distinct"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let said = stdout(&out);
        assert!(
            said.contains("rows where pipeline_id IS NULL are not visited: 2 estimated")
                && said.contains("batches of 2 distinct values of pipeline_id"),
            "{said}"
        );
        let show = ok(&url, &["show", "stages"]);
        assert!(
            show.contains("rows with a NULL key never visited, batches count distinct key values"),
            "{show}"
        );
        let shown: serde_json::Value =
            serde_json::from_str(&ok(&url, &["show", "stages", "--json"])).unwrap();
        assert_eq!(
            (&shown["skip_null_keys"], &shown["distinct_keys"]),
            (&serde_json::json!(true), &serde_json::json!(true))
        );
        ok(&url, &["run", "--until-idle"]);
        assert_eq!(
            db.scalar("SELECT count(*) FROM stages WHERE (pipeline_id IS NULL AND n = 0) OR (pipeline_id IS NOT NULL AND n = 1)")
                .await,
            10,
            "the stages without a pipeline untouched, the others once"
        );
        let jobs: serde_json::Value =
            serde_json::from_str(&ok(&url, &["jobs", "stages", "--json"])).unwrap();
        assert_eq!(
            jobs.as_array().unwrap().len(),
            3,
            "5 pipelines in jobs of 2: {jobs}"
        );
        // --distinct needs a non-unique key, said before anything is written.
        let out = sg(
            &url,
            &[
                "queue",
                "ids",
                "--table",
                "stages",
                "--kind",
                "update",
                "--set",
                "n = 0",
                "--distinct",
            ],
        );
        assert_fails_with(
            &out,
            "--distinct counts distinct values of a non-unique key: pass --non-unique-key",
        );
    }
);

store_test!(
    apply_queues_definitions_once_and_refuses_a_changed_one,
    |db| {
        db.create_items("items", &[(1, 100)]).await;
        db.create_items("others", &[(1, 100)]).await;
        let url = db.url.clone();
        ok(&url, &["setup"]);
        let dir = tempfile::tempdir().unwrap();
        let write = |file: &str, text: &str| std::fs::write(dir.path().join(file), text).unwrap();
        write(
        "001_backfill.toml",
        "name = \"backfill\"\ntable = \"items\"\nkind = \"update\"\nset = \"n = n + 1\"\nbatch_size = 20\npause_ms = 0\n",
    );
        write(
        "002_purge.toml",
        "name = \"purge\"\ntable = \"others\"\nkind = \"delete\"\nscope = \"id > 90\"\n[health]\nhold = \"1s\"\n",
    );
        write("README.md", "not a definition");
        let dir_arg = dir.path().to_str().unwrap().to_owned();

        // The dry run prints each plan and writes nothing.
        let dry = ok(&url, &["apply", &dir_arg, "--dry-run"]);
        assert!(dry.contains("backfill: would queue"), "{dry}");
        assert!(dry.contains("purge: would queue"), "{dry}");
        assert!(dry.contains("dry run: nothing was written"), "{dry}");
        assert!(ok(&url, &["status"]).contains("no migrations queued"));

        // Queued in file-name order; the second apply is a no-op that exits 0.
        let first = ok(&url, &["apply", &dir_arg]);
        assert!(
            first.contains("backfill: queued migration 1 (update on ")
                && first.contains("purge: queued migration 2 (delete on "),
            "{first}"
        );
        let second = ok(&url, &["apply", &dir_arg]);
        assert!(
            second.contains(
                "backfill: unchanged: migration 1 is queued with this definition (active)"
            ),
            "{second}"
        );
        assert!(second.contains("purge: unchanged: migration 2"), "{second}");
        let json: serde_json::Value =
            serde_json::from_str(&ok(&url, &["apply", &dir_arg, "--json"])).unwrap();
        assert_eq!(json[0]["action"], "unchanged", "{json}");
        assert_eq!(json[1]["migration_id"], 2, "{json}");

        // `queue --if-not-exists` with the same flags as the file: a no-op too.
        let same = ok(
            &url,
            &[
                "queue",
                "backfill",
                "--table",
                "items",
                "--kind",
                "update",
                "--set",
                "n = n + 1",
                "--batch-size",
                "20",
                "--pause-ms",
                "0",
                "--if-not-exists",
            ],
        );
        assert!(same.contains("unchanged: migration 1"), "{same}");
        let plain = sg(
            &url,
            &[
                "queue",
                "backfill",
                "--table",
                "items",
                "--kind",
                "update",
                "--set",
                "n = n + 1",
                "--batch-size",
                "20",
                "--pause-ms",
                "0",
            ],
        );
        assert_fails_with(&plain, "a migration named \"backfill\" is already queued");

        // A changed definition of a live migration: refused with the difference, non-zero exit,
        // nothing queued (not even the new file beside it).
        write(
        "001_backfill.toml",
        "name = \"backfill\"\ntable = \"items\"\nkind = \"update\"\nset = \"n = n + 2\"\nbatch_size = 20\npause_ms = 0\n",
    );
        write(
            "003_more.toml",
            "table = \"others\"\nkind = \"update\"\nset = \"n = 7\"\npaused = true\n",
        );
        let refused = sg(&url, &["apply", &dir_arg]);
        assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
        let out = stdout(&refused);
        assert!(
        out.contains("backfill: refused: migration 1 (\"backfill\", active) was queued from another definition: arguments.set: \"n = n + 1\" -> \"n = n + 2\""),
        "{out}"
    );
        assert!(
            stderr(&refused).contains("1 of 3 definition(s)")
                && stderr(&refused).contains("nothing was queued"),
            "{}",
            stderr(&refused)
        );
        assert_fails_with(
            &sg(
                &url,
                &[
                    "queue",
                    "backfill",
                    "--table",
                    "items",
                    "--kind",
                    "update",
                    "--set",
                    "n = n + 2",
                    "--batch-size",
                    "20",
                    "--pause-ms",
                    "0",
                    "--if-not-exists",
                ],
            ),
            "arguments.set: \"n = n + 1\" -> \"n = n + 2\"",
        );
        assert!(matches!(
            db.scalar(&format!(
                "SELECT count(*) FROM {}",
                tracking(&db, "migrations")
            ))
            .await,
            2
        ));

        // Once finished, a changed definition is left alone and apply goes on with the others.
        ok(&url, &["run", "--until-idle"]);
        let after = ok(&url, &["apply", &dir_arg]);
        assert!(
            after.contains("backfill: left alone: migration 1 finished; this definition differs"),
            "{after}"
        );
        assert!(after.contains("more: queued migration 3"), "{after}");
        assert_eq!(db.scalar("SELECT sum(n) FROM items").await, 100);

        // A file that does not read: named, with its line.
        write(
            "004_bad.toml",
            "table = \"items\"\nkind = \"update\"\nset_clause = \"n = 1\"\n",
        );
        assert_fails_with(
            &sg(&url, &["apply", &dir_arg]),
            "definition 004_bad.toml, line 3: unknown field `set_clause`",
        );
    }
);

/// A trigger on `items` that refuses to update row `id` (both engines), and its removal.
async fn block_row(db: &TestDb, id: i64) {
    match db.backend {
        Backend::Postgres => {
            db.exec(&format!(
                "CREATE FUNCTION block_row() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN IF NEW.id = {id} THEN RAISE EXCEPTION 'row {id} is blocked'; END IF;
                 RETURN NEW; END $$"
            ))
            .await;
            db.exec("CREATE TRIGGER block_row BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION block_row()")
                .await;
        }
        Backend::Sqlite => {
            db.exec(&format!(
                "CREATE TRIGGER block_row BEFORE UPDATE ON items WHEN NEW.id = {id}
                 BEGIN SELECT RAISE(ABORT, 'row {id} is blocked'); END"
            ))
            .await;
        }
    }
}

store_test!(
    ensure_exits_by_standing_and_finalize_finishes_after_three_failures,
    |db| {
        db.create_items("items", &[(1, 100)]).await;
        let url = db.url.clone();
        ok(&url, &["setup"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
        dir.path().join("backfill.toml"),
        "table = \"items\"\nkind = \"update\"\nset = \"n = n + 1\"\nbatch_size = 20\nsub_batch_size = 10\npause_ms = 0\n",
    )
    .unwrap();
        ok(&url, &["apply", dir.path().to_str().unwrap()]);

        // Queued, not run yet: still running (3); a name not queued: 5, the worst.
        let running = sg(&url, &["ensure", "backfill"]);
        assert_eq!(running.status.code(), Some(3), "{}", stderr(&running));
        assert!(
            stdout(&running).contains("backfill: still running: active, 0.0% done"),
            "{}",
            stdout(&running)
        );
        assert_eq!(
            stderr(&running).trim(),
            "error: 1 of 1 migration(s) not finished; still running: backfill"
        );
        let missing = sg(&url, &["ensure", "backfill", "nope", "--finalize"]);
        assert_eq!(missing.status.code(), Some(5), "{}", stderr(&missing));
        assert!(
            stdout(&missing).contains("nope: not queued"),
            "{}",
            stdout(&missing)
        );
        assert_eq!(
            db.scalar("SELECT sum(n) FROM items").await,
            0,
            "nothing ran"
        );
        // Waiting for workers that are not there: still running after the timeout.
        let waited = sg(&url, &["ensure", "backfill", "--timeout", "300ms"]);
        assert_eq!(waited.status.code(), Some(3));
        assert!(
            stdout(&waited).contains("(still, after 300ms)"),
            "{}",
            stdout(&waited)
        );

        // Row 60 cannot be updated: its job fails three times and the migration fails (4).
        block_row(&db, 60).await;
        ok(&url, &["run", "--until-idle"]);
        let failed = sg(&url, &["ensure", "backfill"]);
        assert_eq!(failed.status.code(), Some(4), "{}", stderr(&failed));
        let out = stdout(&failed);
        assert!(out.contains("backfill: failed: "), "{out}");
        assert!(out.contains("3 failed attempt(s) of 1 job(s): "), "{out}");
        assert!(out.contains("row 60 is blocked"), "{out}");
        // The failed job's cursor (its last committed key: a retry resumes after it) is shown.
        let failed_jobs = ok(&url, &["jobs", "backfill", "--status", "failed"]);
        let row = failed_jobs
            .lines()
            .find(|l| l.contains("41 ..= 60"))
            .unwrap_or_else(|| panic!("{failed_jobs}"));
        let cells: Vec<&str> = row.split('┆').map(str::trim).collect();
        assert_eq!(cells[3], "50", "{failed_jobs}");
        assert!(ok(&url, &["show", "backfill"]).contains("41 ..= 60"));
        let json: serde_json::Value =
            serde_json::from_slice(&sg(&url, &["ensure", "backfill", "--json"]).stdout).unwrap();
        assert_eq!(json[0]["standing"], "failed", "{json}");
        assert_eq!(json[0]["failures"][0]["attempts"], 3, "{json}");

        // Still blocked, --finalize cannot finish it: it says so, loudly (4).
        let stuck = sg(&url, &["ensure", "backfill", "--finalize"]);
        assert_eq!(stuck.status.code(), Some(4), "{}", stdout(&stuck));
        // The cause removed, --finalize retries the failed job with fresh attempts and finishes.
        match db.backend {
            Backend::Postgres => db.exec("DROP TRIGGER block_row ON items").await,
            Backend::Sqlite => db.exec("DROP TRIGGER block_row").await,
        }
        let done = sg(&url, &["ensure", "backfill", "--finalize"]);
        assert!(done.status.success(), "{}{}", stdout(&done), stderr(&done));
        assert!(
            stdout(&done).contains("backfill: finished at "),
            "{}",
            stdout(&done)
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
            100
        );
        ok(&url, &["ensure", "backfill"]);
    }
);

store_test!(
    after_is_shown_as_waiting_and_ensure_finalizes_in_order,
    |db| {
        db.create_items("items", &[(1, 50)]).await;
        db.create_items("others", &[(1, 50)]).await;
        let url = db.url.clone();
        ok(&url, &["setup"]);
        let queue = |name: &str, table: &str, extra: &[&str]| {
            let mut args = vec![
                "queue",
                name,
                "--table",
                table,
                "--kind",
                "update",
                "--set",
                "n = n + 1",
                "--batch-size",
                "10",
                "--pause-ms",
                "0",
            ];
            args.extend_from_slice(extra);
            sg(&url, &args)
        };
        assert!(queue("first", "items", &[]).status.success());
        let out = queue("second", "others", &["--after", "first"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_fails_with(
            &queue("third", "others", &["--after", "nope", "--dry-run"]),
            "--after \"nope\": no migration of this name is queued",
        );
        let status = ok(&url, &["status", "--status", "active"]);
        assert!(status.contains("waiting for first (active)"), "{status}");
        assert!(ok(&url, &["show", "second"]).contains("waiting for first (active)"));
        let json: serde_json::Value =
            serde_json::from_str(&ok(&url, &["show", "second", "--json"])).unwrap();
        assert_eq!(json["after"], serde_json::json!([1]), "{json}");
        assert_eq!(
            json["waiting_for"],
            serde_json::json!(["first (active)"]),
            "{json}"
        );
        // Finalizing the second alone: it waits for the first (3), nothing of it runs.
        let waiting = sg(&url, &["ensure", "second", "--finalize"]);
        assert_eq!(waiting.status.code(), Some(3), "{}", stderr(&waiting));
        assert!(
            stdout(&waiting).contains("waiting for first (active)"),
            "{}",
            stdout(&waiting)
        );
        assert_fails_with(
            &sg(&url, &["finalize", "second"]),
            "it runs after first (active)",
        );
        assert_eq!(db.scalar("SELECT sum(n) FROM others").await, 0);
        // Both, named in any order: the first is finalized first, then the second.
        ok(&url, &["ensure", "second", "first", "--finalize"]);
        assert_eq!(db.scalar("SELECT sum(n) FROM items").await, 50);
        assert_eq!(db.scalar("SELECT sum(n) FROM others").await, 50);
    }
);

store_test!(
    verify_fails_a_migration_whose_rows_changed_behind_its_back,
    |db| {
        db.create_items("items", &[(1, 100)]).await;
        let url = db.url.clone();
        ok(&url, &["setup"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
        dir.path().join("lower.toml"),
        "table = \"items\"\nkind = \"update\"\nset = \"email_lower = lower(email)\"\nverify = \"email_lower = lower(email)\"\nbatch_size = 20\npause_ms = 0\n",
    )
    .unwrap();
        ok(&url, &["apply", dir.path().to_str().unwrap()]);
        assert!(ok(&url, &["show", "lower"]).contains("email_lower = lower(email)"));
        // The first job (keys 1 ..= 20) runs; then row 5 is changed behind the migration's back.
        ok(&url, &["run", "--once"]);
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE id = 5 AND email_lower IS NOT NULL")
                .await,
            1
        );
        db.exec("UPDATE items SET email_lower = NULL WHERE id = 5")
            .await;
        ok(&url, &["run", "--until-idle"]);
        let failed = sg(&url, &["ensure", "lower"]);
        assert_eq!(failed.status.code(), Some(4), "{}", stderr(&failed));
        let out = stdout(&failed);
        assert!(
        out.contains("lower: failed: verify (email_lower = lower(email)): 100 rows checked, 1 violation; keys 5"),
        "{out}"
    );
        assert!(
            out.contains("VerificationFailed") || out.contains("failed: verify"),
            "{out}"
        );
        let history = ok(&url, &["history", "lower", "--json"]);
        assert!(history.contains("\"event\": \"verify\""), "{history}");
        assert!(history.contains("VerificationFailed"), "{history}");
        // `verify` reads it again on demand: exit 4 with the sample key.
        let again = sg(&url, &["verify", "lower"]);
        assert_eq!(again.status.code(), Some(4), "{}", stderr(&again));
        assert!(
            stdout(&again).contains("100 rows checked, 1 violation; keys 5"),
            "{}",
            stdout(&again)
        );
        // Fixed, the retried migration verifies clean and finishes; `verify` exits 0.
        db.exec("UPDATE items SET email_lower = lower(email) WHERE id = 5")
            .await;
        ok(&url, &["retry", "lower"]);
        ok(&url, &["run", "--until-idle"]);
        ok(&url, &["ensure", "lower"]);
        assert!(ok(&url, &["verify", "lower"]).contains("100 rows checked, 0 violations"));
    }
);

store_test!(
    set_takes_the_timeouts_and_a_small_batch_needs_no_sub_batch,
    |db| {
        db.create_items("items", &[(1, 100)]).await;
        let url = db.url.clone();
        ok(&url, &["setup"]);
        // `--batch-size 50` alone: the default sub-batch follows it down.
        ok(
            &url,
            &[
                "queue",
                "small",
                "--table",
                "items",
                "--kind",
                "update",
                "--set",
                "n = n + 1",
                "--batch-size",
                "50",
            ],
        );
        let out = ok(
            &url,
            &[
                "set",
                "small",
                "--statement-timeout",
                "2m",
                "--lock-timeout",
                "10s",
            ],
        );
        assert!(
            out.contains("statement_timeout 30s -> 2m; lock_timeout 5s -> 10s"),
            "{out}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&ok(&url, &["show", "small", "--json"])).unwrap();
        assert_eq!(json["statement_timeout_ms"], 120_000, "{json}");
        assert_eq!(json["lock_timeout_ms"], 10_000, "{json}");
        assert_eq!(json["sub_batch_size"], 50, "{json}");
        assert_fails_with(
            &sg(&url, &["set", "small", "--statement-timeout", "0s"]),
            "statement",
        );
    }
);

// `status` at 100 columns (the width it broke `finishe/d` and `users.i/d` at): every line
// fits, and every word is whole or cut short with `…`, never split over two lines; the
// columns left out are named.
store_test!(status_fits_100_columns_without_breaking_a_word, |db| {
    let table = "items_of_a_rather_long_table_name";
    db.create_items(table, &[(1, 300)]).await;
    let url = db.url.clone();
    assert!(sg(&url, &["setup"]).status.success());
    let queued = sg(
        &url,
        &[
            "queue",
            "backfill_every_item_of_the_long_table",
            "--table",
            table,
            "--kind",
            "update",
            "--set",
            "n = n + 1",
            "--batch-size",
            "100",
        ],
    );
    assert!(queued.status.success(), "{}", stderr(&queued));
    let ran = sg(&url, &["run", "--until-idle"]);
    assert!(ran.status.success(), "{}", stderr(&ran));
    let status_at = |columns: &str| {
        let out = bin()
            .env("COLUMNS", columns)
            .args(["--database-url", &url, "status"])
            .output()
            .expect("run sluicegate");
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let wide = status_at("1000");
    assert!(
        wide.lines().next().unwrap().chars().count() > 100,
        "the whole table is wider than 100 columns: {wide}"
    );
    let whole: Vec<&str> = wide.split_whitespace().collect();
    let narrow = status_at("100");
    for line in narrow.lines() {
        assert!(
            line.chars().count() <= 100,
            "{line:?} is wider than 100\n{narrow}"
        );
    }
    // Words, not the table's borders.
    let border = |w: &str| w.chars().all(|c| ('\u{2500}'..='\u{257f}').contains(&c));
    let (cells, _note) = narrow
        .split_once("\n(left out")
        .expect("a note of what was left out");
    for word in cells.split_whitespace().filter(|w| !border(w)) {
        let cut_short = word
            .strip_suffix('…')
            .is_some_and(|start| whole.iter().any(|w| w.starts_with(start)));
        assert!(
            whole.contains(&word) || cut_short,
            "{word:?} is a piece of a word\n{narrow}"
        );
    }
    assert!(narrow.contains("finished"), "{narrow}");
    assert!(narrow.contains(&format!("{table}.id")), "{narrow}");
    assert!(
        narrow.contains("left out to fit 100 columns: TARGET"),
        "{narrow}"
    );
});

// `jobs` shows a UUID key by its first four hex digits, as the README says (`0b7e…`), and
// `--json` has it whole.
store_test!(jobs_show_uuid_keys_short_and_json_whole, |db| {
    db.exec("CREATE TABLE accounts (id text PRIMARY KEY, n integer NOT NULL DEFAULT 0)")
        .await;
    db.exec(
        "INSERT INTO accounts (id) VALUES ('0b7e6c1e-9d1f-4c55-8a7e-2f1d3c4b5a69'), \
         ('5f1c2d3e-0000-4c55-8a7e-2f1d3c4b5a69'), ('9a8b7c6d-1111-4c55-8a7e-2f1d3c4b5a69')",
    )
    .await;
    let url = db.url.clone();
    assert!(sg(&url, &["setup"]).status.success());
    let queued = sg(
        &url,
        &[
            "queue", "acc", "--table", "accounts", "--kind", "update", "--set", "n = 1",
        ],
    );
    assert!(queued.status.success(), "{}", stderr(&queued));
    let ran = sg(&url, &["run", "--until-idle"]);
    assert!(ran.status.success(), "{}", stderr(&ran));
    let table = stdout(&sg(&url, &["jobs", "acc"]));
    assert!(table.contains("0b7e… ..= 9a8b…"), "{table}");
    assert!(!table.contains("0b7e6c1e"), "{table}");
    let json = stdout(&sg(&url, &["jobs", "acc", "--json"]));
    assert!(
        json.contains("\"0b7e6c1e-9d1f-4c55-8a7e-2f1d3c4b5a69\""),
        "{json}"
    );
});
