//! `demo`: a real backfill, end to end, on a fresh SQLite file: fill a table, queue
//! `email_lower = lower(email)`, run it with one simulated (clearly labelled) fault so that a
//! job fails once and is retried, then show the status and that job's history.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use sluicegate::kind::UpdateKind;
use sluicegate::{
    ConnectOptions, Failure, JobKind, QueueRequest, Registry, Sluicegate, SubBatch, WorkerOptions,
};
use sqlx::sqlite::SqliteConnectOptions;

use crate::args::DemoArgs;
use crate::output;
use crate::progress::{bars_wanted, Reporter};

/// The built-in `update`, except that its first sub-batch holding `fault_key` fails once
/// with a `SimulatedFault`, so the demo's history shows a failure and its retry.
struct UpdateWithDemoFault {
    fault_key: i64,
    fired: AtomicBool,
}

#[async_trait]
impl JobKind for UpdateWithDemoFault {
    fn name(&self) -> &str {
        "update-with-demo-fault"
    }

    fn validate_arguments(&self, arguments: &serde_json::Value) -> Result<(), String> {
        UpdateKind.validate_arguments(arguments)
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let (start, end) = (batch.start().as_i64(), batch.end().as_i64());
        if start
            .zip(end)
            .is_some_and(|(s, e)| (s..=e).contains(&self.fault_key))
            && !self.fired.swap(true, Ordering::SeqCst)
        {
            return Err(Failure::new(
                "SimulatedFault",
                format!(
                    "simulated fault injected by `sluicegate demo` (not a real error): the first attempt at key {} fails so that its retry shows in the history",
                    self.fault_key
                ),
            ));
        }
        UpdateKind.perform(batch).await
    }
}

pub async fn demo(args: &DemoArgs) -> Result<()> {
    if args.rows < 1 {
        bail!("--rows must be at least 1 (got {})", args.rows);
    }
    let started = Instant::now();
    let path = &args.file;
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing the old demo file {file}")),
        }
    }
    let url = format!("sqlite://{}", path.display());
    let say = |line: String| {
        if !args.json {
            outln_or_drop!("{line}");
        }
    };

    // The application's table, as it would exist before the migration.
    let pool = sqlx::SqlitePool::connect_with(
        SqliteConnectOptions::from_str(&url)?.create_if_missing(true),
    )
    .await
    .with_context(|| format!("creating {}", path.display()))?;
    sqlx::raw_sql(&format!(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL, email_lower TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows})
         INSERT INTO users (id, email) SELECT i, 'User' || i || '@Example.COM' FROM s;",
        rows = args.rows
    ))
    .execute(&pool)
    .await
    .context("filling the demo table")?;
    pool.close().await;
    say(format!(
        "created {} with table users ({} rows, email_lower empty)",
        path.display(),
        args.rows
    ));

    let fault_key = (args.rows / 3).max(1);
    let mut registry = Registry::default();
    registry.register(UpdateWithDemoFault {
        fault_key,
        fired: AtomicBool::new(false),
    });
    let mut opts = ConnectOptions::new(&url);
    opts.registry = registry;
    let sg = Sluicegate::connect_with(opts).await?;
    sg.setup().await?;

    let batch = (args.rows / 20).clamp(1, 10_000);
    let mut req = QueueRequest::new("backfill_email_lower", "update-with-demo-fault", "users")
        .argument("set", "email_lower = lower(email)");
    req.batch_size = batch;
    req.sub_batch_size = (batch / 5).max(1);
    req.pause_ms = 0;
    req.interval = Duration::ZERO;
    req.actor = "demo".into();
    let m = sg.queue(&req).await?;
    say(format!(
        "queued migration {} ({}): UPDATE users SET email_lower = lower(email), {} keys a job, {} a sub-batch",
        m.id, m.name, m.batch_size, m.sub_batch_size
    ));
    say(format!("a simulated fault (labelled SimulatedFault) will fail the job holding key {fault_key} once\n"));

    // A terminal gets bars; --json gets JSON lines; anything else gets the prose alone.
    let reporter = Reporter::start_with(sg.clone(), bars_wanted(args.json), args.json);
    let worker = sg
        .worker(WorkerOptions {
            name: "demo-worker".into(),
            poll_interval: Duration::from_millis(50),
            ..WorkerOptions::default()
        })
        .with_events(reporter.sink());
    let run = worker.run_until_idle().await;
    reporter.finish().await;
    run?;

    let m = sg.migration(&m.name).await?;
    let wrong: i64 = {
        let pool = sqlx::SqlitePool::connect(&url).await?;
        let n = sqlx::query_scalar(
            "SELECT count(*) FROM users WHERE email_lower IS NULL OR email_lower <> lower(email)",
        )
        .fetch_one(&pool)
        .await?;
        pool.close().await;
        n
    };
    let jobs = sg.jobs(&m, None).await?;
    let retried = jobs.iter().find(|j| j.attempts > 1);
    if args.json {
        let p = sg.progress(&m).await?;
        let history = match retried {
            Some(j) => sg.job_history(j.id).await?,
            None => Vec::new(),
        };
        outln!(
            "{}",
            serde_json::json!({
                "event": "demo",
                "migration": output::MigrationJson::from_migration(&m),
                "rows_done": p.rows_done,
                "rows_not_backfilled": wrong,
                "retried_job_id": retried.map(|j| j.id),
                "retried_job_history": history,
                "seconds": started.elapsed().as_secs_f64(),
            })
        );
    } else {
        outln!();
        output::status(&sg, &[], false).await?;
        if let Some(j) = retried {
            output::history(&sg, &m.name, Some(j.id), false).await?;
        }
        outln!(
            "checked: {} of {} rows have email_lower = lower(email); took {:.1}s",
            args.rows - wrong,
            args.rows,
            started.elapsed().as_secs_f64()
        );
        outln!(
            "look around: sluicegate --database-url {url} show {}",
            m.name
        );
    }
    if m.status != sluicegate::MigrationStatus::Finished || wrong != 0 {
        bail!(
            "the demo migration ended {} with {wrong} rows not backfilled",
            m.status
        );
    }
    Ok(())
}
