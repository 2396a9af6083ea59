//! The runner end to end on real databases: keyset ranges over existing keys, retries,
//! splits, auto-fail, panics, concurrent workers, the one-migration-per-table rule, leases.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluicegate::{
    store_test, Failure, JobKind, JobStatus, MigrationEvent, MigrationStatus, SubBatch, Worker,
    WorkerOptions,
};

use crate::common::*;

store_test!(backfill_runs_to_the_end, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 5_000)]).await;
    let m = sg
        .queue(
            &fast("backfill", "update", "items", 1_000, 250)
                .argument("set", "email_lower = lower(email)"),
        )
        .await
        .unwrap();
    assert_eq!(
        (m.min_value, m.max_value),
        (sluicegate::Key::int(1), sluicegate::Key::int(5_000)),
        "range defaults to min/max at queue time"
    );
    run_to_end(&sg).await;
    let m = sg.migration("backfill").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM items WHERE email_lower IS NULL OR email_lower <> lower(email)"
        )
        .await,
        0
    );
    let jobs = assert_chains(&sg, &m).await;
    assert_eq!(jobs.len(), 5);
    assert!(jobs
        .iter()
        .all(|j| j.status == JobStatus::Succeeded && j.rows_affected == 1_000));
    assert!(
        jobs.iter().all(|j| j.metrics.sub_batches == Some(4)),
        "{:?}",
        jobs[0].metrics
    );
    let progress = sg.progress(&m).await.unwrap();
    assert_eq!(progress.rows_done, 5_000);
    assert_eq!(progress.percent, 100.0);
    let log = sg.migration_history(&m).await.unwrap();
    assert_eq!(log.last().unwrap().event, MigrationEvent::Finish);
});

store_test!(gaps_in_ids_make_jobs_only_for_existing_keys, |db| {
    let sg = db.sluicegate().await;
    let far = 1_000_000_000_000i64;
    db.create_items("items", &[(1, 20_000), (far + 1, far + 20_000)])
        .await;
    sg.queue(&fast("gaps", "update", "items", 1_000, 1_000).argument("set", "n = n + 1"))
        .await
        .unwrap();
    run_to_end(&sg).await;
    let m = sg.migration("gaps").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    let jobs = sg.jobs(&m, None).await.unwrap();
    assert_eq!(
        jobs.len(),
        40,
        "40 jobs of 1,000 existing keys, not a billion empty ones"
    );
    assert_disjoint(&jobs);
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
        0
    );
});

store_test!(retries_then_failure_with_three_logged_attempts, |db| {
    let sg = db
        .sluicegate_with(registry_with(FailAt::new(500, "TestFailure", -1)))
        .await;
    db.create_items("items", &[(1, 2_000)]).await;
    sg.queue(&fast("flaky", "fail-at", "items", 1_000, 100))
        .await
        .unwrap();
    run_to_end(&sg).await;
    let m = sg.migration("flaky").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Failed);
    let jobs = assert_chains(&sg, &m).await;
    let failed: Vec<_> = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].attempts, 3);
    let log = sg.job_history(failed[0].id).await.unwrap();
    let failures: Vec<_> = log
        .iter()
        .filter(|r| r.next_status == JobStatus::Failed)
        .collect();
    assert_eq!(
        failures.len(),
        3,
        "three attempts, three failures logged: {log:?}"
    );
    for row in failures {
        assert_eq!(row.previous_status, JobStatus::Running);
        assert_eq!(row.exception_class.as_deref(), Some("TestFailure"));
        assert_eq!(
            row.exception_message.as_deref(),
            Some("simulated failure at key 500")
        );
    }
    let mlog = sg.migration_history(&m).await.unwrap();
    let last = mlog.last().unwrap();
    assert_eq!(
        (last.event, last.exception_class.as_deref()),
        (MigrationEvent::Fail, Some("JobsFailed"))
    );
    // The job's sub-batches before key 500 committed once; the rest of its range never ran.
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE id BETWEEN 1 AND 400 AND n = 1")
            .await,
        400
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE id BETWEEN 401 AND 1000 AND n = 0")
            .await,
        600
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE id > 1000 AND n = 1")
            .await,
        1_000
    );
});

store_test!(
    a_retried_job_resumes_after_its_last_committed_sub_batch,
    |db| {
        let sg = db
            .sluicegate_with(registry_with(FailAt::new(750, "TestFailure", 2)))
            .await;
        db.create_items("items", &[(1, 3_000)]).await;
        sg.queue(&fast("resume", "fail-at", "items", 1_000, 100))
            .await
            .unwrap();
        run_to_end(&sg).await;
        let m = sg.migration("resume").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        let jobs = assert_chains(&sg, &m).await;
        let retried = jobs
            .iter()
            .find(|j| j.attempts == 3)
            .expect("one job took three attempts");
        let statuses: Vec<_> = sg
            .job_history(retried.id)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.previous_status.as_str(), r.next_status.as_str()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("pending", "running"),
                ("running", "failed"),
                ("failed", "running"),
                ("running", "failed"),
                ("failed", "running"),
                ("running", "succeeded")
            ]
        );
        // n = n + 1 is not idempotent: each row was incremented exactly once.
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
            0
        );
        assert_eq!(retried.rows_affected, 1_000);
    }
);

store_test!(timeouts_shrink_sub_batches_and_split_jobs, |db| {
    let sg = db
        .sluicegate_with(registry_with(FailAt::new(500, "StatementTimeout", -1)))
        .await;
    db.create_items("items", &[(1, 1_000)]).await;
    sg.queue(&fast("slow", "fail-at", "items", 1_000, 100))
        .await
        .unwrap();
    run_to_end(&sg).await;
    let m = sg.migration("slow").await.unwrap();
    let jobs = assert_chains(&sg, &m).await;
    assert!(jobs.len() > 1, "the job was split: {jobs:?}");
    assert_disjoint(&jobs);
    let first_log = sg.job_history(jobs[0].id).await.unwrap();
    assert!(
        first_log.iter().any(|r| r.next_status == JobStatus::Pending
            && r.exception_message
                .as_deref()
                .unwrap_or("")
                .starts_with("split:")),
        "{first_log:?}"
    );
    // Halves that do not hold key 500 succeed; the smallest one holding it fails for good.
    let holding: Vec<_> = jobs
        .iter()
        .filter(|j| (int(&j.min_value)..=int(&j.max_value)).contains(&500))
        .collect();
    assert_eq!(holding.len(), 1);
    assert_eq!(holding[0].status, JobStatus::Failed);
    assert!(holding[0].batch_size <= holding[0].sub_batch_size || holding[0].batch_size < 1_000);
    assert!(
        holding[0].sub_batch_size < 100,
        "sub-batch shrank x0.75 per timeout"
    );
    assert!(jobs
        .iter()
        .filter(|j| j.id != holding[0].id)
        .all(|j| j.status == JobStatus::Succeeded));
    assert_eq!(m.status, MigrationStatus::Failed);
    // Each timeout shrank the migration's sizes at once, logged with its reason.
    let resizes: Vec<_> = sg
        .migration_history(&m)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event == MigrationEvent::Resize)
        .collect();
    assert!(!resizes.is_empty());
    let first = resizes[0].reason.as_deref().unwrap_or("");
    assert!(
        first.starts_with("StatementTimeout in job ")
            && first.ends_with("batch size 1000 -> 1000, sub-batch size 100 -> 75"),
        "{first}"
    );
    assert!(resizes
        .iter()
        .all(|r| r.previous_status == Some(r.next_status)));
    assert!(m.sub_batch_size < 100, "{m:?}");
    // Committed sub-batches count once, including those of the job that failed for good.
    let covered: i64 = jobs.iter().map(|j| j.rows_affected).sum();
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        covered
    );
    assert_eq!(db.scalar("SELECT count(*) FROM items WHERE n > 1").await, 0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE id = 500 AND n = 0")
            .await,
        1
    );
});

store_test!(migration_fails_when_half_of_fifty_jobs_failed, |db| {
    let sg = db.sluicegate_with(registry_with(FailFrom(21))).await;
    db.create_items("items", &[(1, 200)]).await;
    sg.queue(&fast("doomed", "fail-from", "items", 1, 1))
        .await
        .unwrap();
    run_to_end(&sg).await;
    let m = sg.migration("doomed").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Failed);
    let jobs = sg.jobs(&m, None).await.unwrap();
    let failed = jobs
        .iter()
        .filter(|j| j.status == JobStatus::Failed)
        .count();
    assert!(jobs.len() >= 50, "at least 50 jobs ran: {}", jobs.len());
    assert!(jobs.len() < 200, "it stopped early: {}", jobs.len());
    assert!(failed * 2 > jobs.len(), "{failed} of {}", jobs.len());
    let last = sg.migration_history(&m).await.unwrap().pop().unwrap();
    assert_eq!(last.exception_class.as_deref(), Some("TooManyFailedJobs"));
    assert!(last.reason.unwrap().contains("more than half"));
});

store_test!(
    a_panicking_job_kind_is_recorded_and_the_worker_lives_on,
    |db| {
        let sg = db.sluicegate_with(registry_with(PanicAt(150))).await;
        db.create_items("items", &[(1, 500)]).await;
        sg.queue(&fast("panics", "panic-at", "items", 100, 50))
            .await
            .unwrap();
        run_to_end(&sg).await;
        let m = sg.migration("panics").await.unwrap();
        let jobs = assert_chains(&sg, &m).await;
        let failed: Vec<_> = jobs
            .iter()
            .filter(|j| j.status == JobStatus::Failed)
            .collect();
        assert_eq!(failed.len(), 1);
        let log = sg.job_history(failed[0].id).await.unwrap();
        let row = log
            .iter()
            .find(|r| r.next_status == JobStatus::Failed)
            .unwrap();
        assert_eq!(row.exception_class.as_deref(), Some("Panic"));
        assert_eq!(
            row.exception_message.as_deref(),
            Some("job kind panicked at key 150")
        );
        assert_eq!(
            jobs.iter()
                .filter(|j| j.status == JobStatus::Succeeded)
                .count(),
            4
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE id > 200 AND n = 1")
                .await,
            300
        );
    }
);

store_test!(
    concurrent_workers_run_each_job_once_and_cover_every_key_once,
    |db| {
        let sg = db.sluicegate().await;
        db.create_items("items", &[(1, 6_000), (9_001, 15_000)])
            .await;
        sg.queue(&fast("parallel", "update", "items", 300, 100).argument("set", "n = n + 1"))
            .await
            .unwrap();
        let workers: Vec<_> = (0..4).map(|i| worker(&sg, &format!("w{i}"))).collect();
        let runs = workers.iter().map(|w| w.run_until_idle());
        tokio::time::timeout(
            Duration::from_secs(120),
            futures::future::try_join_all(runs),
        )
        .await
        .unwrap()
        .unwrap();
        let m = sg.migration("parallel").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        let jobs = assert_chains(&sg, &m).await;
        assert_disjoint(&jobs);
        assert_eq!(jobs.len(), 40);
        for job in &jobs {
            let starts = sg
                .job_history(job.id)
                .await
                .unwrap()
                .iter()
                .filter(|r| r.next_status == JobStatus::Running)
                .count();
            assert_eq!(starts, 1, "job {} ran once", job.id);
        }
        let runners: HashSet<_> = jobs.iter().filter_map(|j| j.worker.clone()).collect();
        // SQLite has one writer at a time: on a busy machine one worker may win every claim
        // (seen once in a full-suite run). PostgreSQL's workers do run side by side.
        if db.backend == sluicegate::store::Backend::Postgres {
            assert!(
                runners.len() > 1,
                "more than one worker ran jobs: {runners:?}"
            );
        }
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
            0
        );
        assert_eq!(jobs.iter().map(|j| j.rows_affected).sum::<i64>(), 12_000);
    }
);

store_test!(two_migrations_of_one_table_never_run_at_once, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 3_000)]).await;
    let a = sg
        .queue(&fast("a", "update", "items", 200, 100).argument("set", "n = n + 1"))
        .await
        .unwrap();
    let b = sg
        .queue(
            &fast("b", "update", "items", 200, 100).argument("set", "email_lower = lower(email)"),
        )
        .await
        .unwrap();
    let workers: Vec<_> = (0..3).map(|i| worker(&sg, &format!("w{i}"))).collect();
    tokio::time::timeout(
        Duration::from_secs(120),
        futures::future::try_join_all(workers.iter().map(|w| w.run_until_idle())),
    )
    .await
    .unwrap()
    .unwrap();
    let ja = sg.jobs(&a, None).await.unwrap();
    let jb = sg.jobs(&b, None).await.unwrap();
    assert_eq!(
        sg.migration("a").await.unwrap().status,
        MigrationStatus::Finished
    );
    assert_eq!(
        sg.migration("b").await.unwrap().status,
        MigrationStatus::Finished
    );
    for x in &ja {
        for y in &jb {
            let (xs, xe) = (x.started_at.unwrap(), x.finished_at.unwrap());
            let (ys, ye) = (y.started_at.unwrap(), y.finished_at.unwrap());
            assert!(
                xe <= ys || ye <= xs,
                "job {} of a and job {} of b overlapped",
                x.id,
                y.id
            );
        }
    }
});

store_test!(
    an_expired_lease_is_logged_as_worker_lost_then_retried,
    |db| {
        let sg = db.sluicegate().await;
        db.create_items("items", &[(1, 100)]).await;
        let m = sg
            .queue(&fast("lost", "update", "items", 100, 50).argument("set", "n = n + 1"))
            .await
            .unwrap();
        // A worker takes the job and dies at once: its lease is never renewed.
        let (ghost, next_min) =
            take_job(&sg, &m, "ghost", (1, 100), Duration::from_millis(200)).await;
        assert_eq!(next_min, None, "the whole range was handed out");
        let w = Worker::new(
            sg.clone(),
            WorkerOptions {
                name: "rescuer".into(),
                lease: Duration::from_secs(10),
                poll_interval: Duration::from_millis(50),
                concurrency: 1,
            },
        );
        // Before the lease runs out the job is not retaken.
        let first = w.new_loop().step().await.unwrap();
        assert!(
            !matches!(first, sluicegate::StepOutcome::Ran { .. }),
            "{first:?}"
        );
        // The run waits for the lease to run out by itself: no fixed sleep.
        tokio::time::timeout(Duration::from_secs(60), w.run_until_idle())
            .await
            .unwrap()
            .unwrap();
        let log = sg.job_history(ghost.id).await.unwrap();
        let steps: Vec<_> = log
            .iter()
            .map(|r| {
                (
                    r.previous_status.as_str(),
                    r.next_status.as_str(),
                    r.exception_class.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            [
                ("pending", "running", None),
                ("running", "failed", Some("WorkerLost")),
                ("failed", "running", None),
                ("running", "succeeded", None)
            ]
        );
        let lost = &log[1];
        assert_eq!(lost.worker.as_deref(), Some("rescuer"));
        assert!(
            lost.exception_message
                .as_deref()
                .unwrap()
                .contains("worker ghost"),
            "{lost:?}"
        );
        assert_eq!(
            sg.migration("lost").await.unwrap().status,
            MigrationStatus::Finished
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
            0
        );
    }
);

store_test!(operations_pause_resume_retry_cancel_finalize, |db| {
    let sg = db
        .sluicegate_with(registry_with(FailAt::new(30, "TestFailure", 3)))
        .await;
    db.create_items("items", &[(1, 100)]).await;
    let m = sg
        .queue(&fast("ops", "fail-at", "items", 20, 10))
        .await
        .unwrap();
    sg.pause("ops", Some("deploy freeze".into()), "cli")
        .await
        .unwrap();
    assert!(matches!(
        worker(&sg, "w").new_loop().step().await.unwrap(),
        sluicegate::StepOutcome::Idle
    ));
    sg.resume("ops", None, "cli").await.unwrap();
    run_to_end(&sg).await;
    // Key 30 failed three times: the migration failed; retry resets the job and runs it.
    assert_eq!(
        sg.migration("ops").await.unwrap().status,
        MigrationStatus::Failed
    );
    sg.retry("ops", Some("fixed the data".into()), "cli")
        .await
        .unwrap();
    let failed_after_retry = sg.jobs(&m, Some(JobStatus::Failed)).await.unwrap();
    assert!(failed_after_retry.is_empty());
    let m = sg.finalize("ops", "cli").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
        0
    );
    let events: Vec<_> = sg
        .migration_history(&m)
        .await
        .unwrap()
        .iter()
        .map(|r| r.event)
        .collect();
    use MigrationEvent::*;
    assert_eq!(
        events,
        [Queue, Pause, Resume, Fail, Retry, Finalize, Finish]
    );
    let err = sg.resume("ops", None, "cli").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot resume migration ops: it is finished"
    );
    // Cancel a fresh one.
    let c = sg
        .queue(&fast("other", "update", "items", 20, 10).argument("set", "n = 5"))
        .await
        .unwrap();
    let c = sg
        .cancel(&c.name, Some("not needed".into()), "cli")
        .await
        .unwrap();
    assert_eq!(c.status, MigrationStatus::Cancelled);
    assert!(c.finished_at.is_some());
});

store_test!(
    a_separate_target_database_is_migrated_and_tracked_apart,
    |db| {
        // Tracking in `db`, the table in another database of the same engine.
        let target = match db.backend {
            sluicegate::store::Backend::Postgres => sluicegate::testing::TestDb::postgres().await,
            sluicegate::store::Backend::Sqlite => sluicegate::testing::TestDb::sqlite().await,
        };
        target.create_items("items", &[(1, 2_000)]).await;
        let mut opts = sluicegate::ConnectOptions::new(&db.url);
        opts.target_url = Some(target.url.clone());
        let sg = sluicegate::Sluicegate::connect_with(opts).await.unwrap();
        sg.setup().await.unwrap();
        assert!(!sg.is_same_database());
        let m = sg
            .queue(&fast("remote", "update", "items", 500, 100).argument("set", "n = n + 1"))
            .await
            .unwrap();
        run_to_end(&sg).await;
        assert_eq!(
            sg.migration("remote").await.unwrap().status,
            MigrationStatus::Finished
        );
        assert_eq!(
            target
                .scalar("SELECT count(*) FROM items WHERE n = 1")
                .await,
            2_000
        );
        let jobs = assert_chains(&sg, &m).await;
        assert!(
            jobs.iter().all(|j| j.cursor.as_ref() == Some(&j.max_value)),
            "cursors recorded apart"
        );
        // The tracking database has no such table: the migration really ran elsewhere.
        assert!(db.try_exec("SELECT 1 FROM items").await.is_err());
    }
);

/// Bookkeeping costs one statement per job in the steady state (a job's end and the next job's
/// start, committed with its last sub-batch), counted by the server's pg_stat_statements: every
/// statement on the tracking tables except the cursor update that commits inside each
/// sub-batch. The next job's health sample and range are read while a job runs and never
/// waited for inside its transaction, so jobs here take 50 ms (a sleep in the kind's
/// statement), longer than that read even on a loaded machine (at 20 ms, a release build
/// beside the suite made about a third of the reads late); a job shorter than it falls back to
/// a create statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookkeeping_is_one_statement_per_job_on_postgres() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");

    let db = sluicegate::testing::TestDb::postgres().await;
    if db
        .try_exec("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .is_err()
        || db
            .try_exec("SELECT 1 FROM pg_stat_statements LIMIT 1")
            .await
            .is_err()
    {
        eprintln!("bookkeeping count: SKIPPED, the server has no pg_stat_statements preloaded");
        assert!(
            std::env::var_os("SLUICEGATE_TEST_PG_STATEMENTS").is_none(),
            "scripts/test's cluster preloads pg_stat_statements"
        );
        return;
    }
    db.create_items("items", &[(1, 20_000)]).await;
    let sg = db.sluicegate().await;
    let slow = "UPDATE items SET n = n + 1 FROM (SELECT pg_sleep(0.05)) AS z \
                WHERE id BETWEEN $1 AND $2";
    sg.queue(&fast("rt", "sql", "items", 250, 250).argument("sql", slow))
        .await
        .unwrap();
    let count = "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND toplevel AND query LIKE '%\"sluicegate\".%' AND query NOT LIKE '%SET cursor_value%'";
    let before = db.scalar(count).await;
    let started = std::time::Instant::now();
    run_to_end(&sg).await;
    let took = started.elapsed();
    let after = db.scalar(count).await;
    let jobs = 80; // 20,000 keys in jobs of 250
    let bookkeeping = after - before;
    eprintln!(
        "bookkeeping statements: {bookkeeping} for {jobs} jobs ({:.2} a job, fixed costs included)",
        bookkeeping as f64 / jobs as f64
    );
    // One per job (a job's end and the next job's start commit with its last sub-batch), plus
    // a fixed cost per run (first claim and job, partitions, the targets skipped, finishing,
    // idling), plus at most one re-read of the migration's row per second of the run (how a
    // loop takes up `sluicegate set`): a slow, loaded machine reads it more often.
    let rereads = took.as_secs() as i64 + 1;
    assert!(
        bookkeeping <= jobs + 15 + rereads,
        "{bookkeeping} bookkeeping statements for {jobs} jobs in {took:?}"
    );
}

/// `n = n + 1`, recording the server process each sub-batch runs in; the sub-batch whose
/// turn it is when the countdown reaches zero first fails with an SQL error, which leaves its
/// transaction aborted.
#[derive(Clone)]
struct RecordsSession(Arc<AtomicI64>);

#[async_trait]
impl JobKind for RecordsSession {
    fn name(&self) -> &str {
        "records-session"
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        batch
            .execute("INSERT INTO sessions (pid) VALUES (pg_backend_pid())")
            .await?;
        if self.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            batch.execute("SELECT 1 / 0").await?;
        }
        increment(batch).await
    }
}

/// A loop's sub-batches run in one server process: consecutive ones rotating over the
/// worker's connections made the foreground wait for the CPU (`store/postgres/work.rs`). A
/// sub-batch that fails leaves its session clean for the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loops_sub_batches_run_in_one_session_on_postgres() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = sluicegate::testing::TestDb::postgres().await;
    db.create_items("items", &[(1, 2_000)]).await;
    db.exec("CREATE TABLE sessions (pid integer NOT NULL)")
        .await;
    let countdown = Arc::new(AtomicI64::new(i64::MAX));
    let sg = db
        .sluicegate_with(registry_with(RecordsSession(countdown.clone())))
        .await;
    sg.queue(&fast("one", "records-session", "items", 500, 100))
        .await
        .unwrap();
    // The trials at queue ran and rolled back; the seventh sub-batch of the run fails once.
    countdown.store(7, Ordering::SeqCst);
    run_to_end(&sg).await;
    let m = sg.migration("one").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
        0
    );
    let mut failures = Vec::new();
    for job in sg.jobs(&m, None).await.unwrap() {
        for row in sg.job_history(job.id).await.unwrap() {
            if row.next_status == JobStatus::Failed {
                failures.push(row.exception_message.unwrap_or_default());
            }
        }
    }
    assert!(
        failures.len() == 1 && failures[0].contains("division by zero"),
        "the failed sub-batch, and only it, is in the jobs' log: {failures:?}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM sessions").await,
        20,
        "2,000 keys in sub-batches of 100, each recorded once (the failed one rolled back)"
    );
    assert_eq!(
        db.scalar("SELECT count(DISTINCT pid) FROM sessions").await,
        1,
        "one session for every sub-batch"
    );
}

// `sluicegate set`: an operator's change of a running migration is a `set` row (who, old ->
// new, why); a loop that keeps running the migration reads its row again at most once a
// second and takes the change up there; an invalid change writes nothing.
store_test!(settings_change_on_a_running_migration, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 6_000)]).await;
    // Slow jobs (5 sub-batches 40 ms apart): the run outlasts the loop's one-second re-read.
    let mut req = fast("tune", "update", "items", 500, 100).argument("set", "n = n + 1");
    req.pause_ms = 40;
    // No ceiling: the operator raises the batch below.
    req.max_batch_size = None;
    let m = sg.queue(&req).await.unwrap();
    let mut lp = worker(&sg, "w1").new_loop();
    lp.step().await.unwrap();
    let change = sluicegate::SettingsChange {
        batch_size: Some(2_000),
        sub_batch_size: Some(250),
        pause_ms: Some(5),
        ..Default::default()
    };
    let updated = sg
        .set(
            &m,
            &change,
            Some("faster: the replica keeps up".into()),
            "cli",
        )
        .await
        .unwrap();
    assert_eq!(
        (
            updated.batch_size,
            updated.sub_batch_size,
            updated.sub_batch_ceiling
        ),
        (2_000, 250, Some(250))
    );
    let row = sg.migration_history(&m).await.unwrap().pop().unwrap();
    assert_eq!(row.event, MigrationEvent::Set);
    assert_eq!(row.actor.as_deref(), Some("cli"));
    assert_eq!(
        row.reason.as_deref(),
        Some("batch_size 500 -> 2000; sub_batch_size 100 -> 250; sub_batch_ceiling none -> 250; pause_ms 40 -> 5 (faster: the replica keeps up)")
    );
    // Refused, nothing written: a sub-batch larger than the batch, or no change at all.
    let bad = sluicegate::SettingsChange {
        sub_batch_size: Some(5_000),
        ..Default::default()
    };
    let err = sg
        .set(&updated, &bad, None, "cli")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sub-batch size 5000 is larger than batch size 2000"),
        "{err}"
    );
    let same = sluicegate::SettingsChange {
        batch_size: Some(2_000),
        ..Default::default()
    };
    assert!(sg.set(&updated, &same, None, "cli").await.is_err());
    // The loop that kept the migration takes the change up: its last jobs span 2,000 keys,
    // in sub-batches of 250 at most.
    while !sg.migration("tune").await.unwrap().status.is_finished() {
        lp.step().await.unwrap();
    }
    lp.finish().await.unwrap();
    let jobs = sg.jobs(&m, None).await.unwrap();
    let sizes: Vec<i64> = jobs.iter().map(|j| j.batch_size).collect();
    assert_eq!(sizes[0], 500);
    assert_eq!(*sizes.last().unwrap(), 2_000, "{sizes:?}");
    assert!(jobs.last().unwrap().sub_batch_size <= 250);
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
        0
    );
    let finished = sg.migration("tune").await.unwrap();
    let err = sg.set(&finished, &change, None, "cli").await.unwrap_err();
    assert!(
        matches!(err, sluicegate::Error::IllegalMigrationTransition { .. }),
        "{err}"
    );
});

// An explicit sub-batch size is a ceiling: the tuner (aiming at 100 ms, far above what these
// sub-batches take) grows sub-batches up to it and never past it.
store_test!(an_explicit_sub_batch_size_is_the_tuners_ceiling, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 20_000)]).await;
    let mut req = fast("capped", "update", "items", 5_000, 50).argument("set", "n = n + 1");
    req.target_sub_batch_time = Duration::from_millis(100);
    req.sub_batch_ceiling = Some(200);
    let m = sg.queue(&req).await.unwrap();
    run_to_end(&sg).await;
    let jobs = sg.jobs(&m, None).await.unwrap();
    let sizes: Vec<i64> = jobs
        .iter()
        .flat_map(|j| j.metrics.recent.clone())
        .map(|s| s.end.as_i64().unwrap() - s.start.as_i64().unwrap() + 1)
        .collect();
    assert!(sizes.iter().all(|s| *s <= 200), "{sizes:?}");
    assert!(
        sizes.contains(&200),
        "the tuner grew them to the ceiling: {sizes:?}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
        0
    );
});

// One estimator: the dry run's rows follow the kind's `where` (a sampled count on PostgreSQL,
// a count on SQLite), not the table's size; while a migration does not run, no time left is
// promised.
store_test!(
    estimates_follow_the_where_and_eta_only_while_running,
    |db| {
        let sg = db.sluicegate().await;
        db.create_items("items", &[(1, 120_000)]).await;
        let req = fast("est", "update", "items", 1_000, 100)
            .argument("set", "n = n + 1")
            .argument("where", "id % 4 <> 0");
        let plan = sg.plan(&req).await.unwrap();
        let rows = plan.rows_to_change.unwrap();
        assert!(
            (67_500..=112_500).contains(&rows),
            "90,000 of 120,000 rows match; estimated {rows}"
        );
        assert_eq!(plan.estimated_jobs(), Some(120));
        // Sizes fixed (tuner off): every sub-batch has the trial's size, so its one size is
        // measured as it is; a tuned migration's check adds a larger one.
        assert_eq!(plan.trials.len(), 1, "{:?}", plan.trials);
        assert!(plan.estimate.is_some());
        let mut tuned = req.clone();
        tuned.target_sub_batch_time = Duration::from_millis(100);
        tuned.name = "tuned".into();
        let sizes: Vec<i64> = sg
            .plan(&tuned)
            .await
            .unwrap()
            .trials
            .iter()
            .map(|t| t.keys)
            .collect();
        assert_eq!(
            sizes,
            vec![100, 1_000],
            "a larger trial parts fixed from per-key costs"
        );
        let m = sg.queue(&req).await.unwrap();
        let mut lp = worker(&sg, "w1").new_loop();
        lp.step().await.unwrap();
        lp.step().await.unwrap();
        lp.finish().await.unwrap();
        let now = sg.migration(&m.id.to_string()).await.unwrap();
        let running = sg.progress(&now).await.unwrap();
        assert!(running.percent > 0.0);
        assert!(running.eta_seconds.is_some(), "running: a time left");
        sg.apply("est", MigrationEvent::Pause, None, "cli")
            .await
            .unwrap();
        let paused = sg
            .progress(&sg.migration("est").await.unwrap())
            .await
            .unwrap();
        assert_eq!(paused.eta_seconds, None, "paused: no time left promised");
    }
);

// `finalize` runs its jobs through the same steps as a worker and keeps what the tuner
// learned from one job to the next: sub-batches grow on from where the last job left them
// (not from the start size in every job), and the tuner logs its `resize` rows.
store_test!(finalize_keeps_tuned_sub_batch_sizes, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 20_000)]).await;
    let mut req = fast("fin", "update", "items", 2_000, 100).argument("set", "n = n + 1");
    // Far above what these sub-batches take anywhere: they only grow.
    req.target_sub_batch_time = Duration::from_secs(5);
    sg.queue(&req).await.unwrap();
    let m = sg.finalize("fin", "tester").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    let mut jobs = sg.jobs(&m, None).await.unwrap();
    jobs.sort_by_key(|j| j.id);
    assert!(jobs.len() >= 2, "{jobs:?}");
    for job in &jobs[1..] {
        let first = job.metrics.recent.first().expect("sub-batches");
        assert!(
            first.key_count().unwrap() > 100,
            "job {} started again at the start size: {:?}",
            job.id,
            job.metrics
        );
    }
    let log = sg.migration_history(&m).await.unwrap();
    let resized: Vec<&str> = log
        .iter()
        .filter(|r| r.event == MigrationEvent::Resize)
        .filter_map(|r| r.reason.as_deref())
        .collect();
    assert!(
        resized
            .iter()
            .any(|r| r.starts_with("tuner: sub-batch size 100 -> ")),
        "{resized:?}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
        0
    );
});

store_test!(at_full_speed_jobs_grow_toward_their_target_time, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 30_000)]).await;
    db.create_items("pinned", &[(1, 3_000)]).await;
    // No ceiling: after 3 short jobs the optimizer grows them (to GitLab's floor of 1,000
    // keys at once from 100), never shrinks them.
    let mut grows = fast("grows", "update", "items", 100, 100).argument("set", "n = n + 1");
    grows.max_batch_size = None;
    sg.queue(&grows).await.unwrap();
    // A ceiling equal to the batch pins it.
    sg.queue(&fast("pinned", "update", "pinned", 100, 100).argument("set", "n = n + 1"))
        .await
        .unwrap();
    run_to_end(&sg).await;
    let m = sg.migration("grows").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    let resizes: Vec<String> = sg
        .migration_history(&m)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event == MigrationEvent::Resize)
        .filter_map(|r| r.reason)
        .collect();
    assert!(
        resizes
            .first()
            .is_some_and(|r| r.starts_with("optimizer: batch size 100 -> 1000: ")
                && r.ends_with("(at full speed, jobs are grown toward 1s each)")),
        "{resizes:?}"
    );
    let jobs = sg.jobs(&m, None).await.unwrap();
    assert!(
        jobs.windows(2).all(|w| w[1].batch_size >= w[0].batch_size),
        "never shrinks"
    );
    assert!(jobs.iter().any(|j| j.batch_size >= 1_000), "jobs grew");
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
        0
    );
    let pinned = sg.migration("pinned").await.unwrap();
    assert_eq!(pinned.status, MigrationStatus::Finished);
    assert!(sg
        .jobs(&pinned, None)
        .await
        .unwrap()
        .iter()
        .all(|j| j.batch_size == 100));
});
