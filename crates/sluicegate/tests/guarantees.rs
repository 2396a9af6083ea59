//! Guarantees enforced in one place (issue 12), each pinned by the defect that broke it: the
//! table lease under operator actions, bounded and out-of-range durations, identifiers that
//! look like our placeholders, a finalizer that died, and illegal transitions refused by the
//! stores themselves.

use std::time::Duration;

use sluicegate::store::{Backend, JobTransitionParams, MigrationTransitionParams};
use sluicegate::{
    store_test, Error, FailureClass, JobStatus, MigrationEvent, MigrationStatus, StepOutcome,
};

use crate::common::{assert_chains, fast, run_to_end, take_job, worker};

/// The `migrations` table, as the test database names it.
fn migrations_table(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "sluicegate.migrations",
        Backend::Sqlite => "sluicegate_migrations",
    }
}

store_test!(
    pausing_with_a_job_in_flight_keeps_the_table_until_it_ends,
    |db| {
        // Defect: `pause` deleted the table lease while a job of the paused migration still
        // ran, and another migration of the same table started beside it.
        db.create_items("items", &[(1, 400)]).await;
        let sg = db.sluicegate().await;
        let a = sg
            .queue(&fast("a", "update", "items", 200, 50).argument("set", "n = n + 1"))
            .await
            .unwrap();
        let mut req_b = fast("b", "update", "items", 200, 50).argument("set", "email_lower = 'x'");
        req_b.paused = true;
        let b = sg.queue(&req_b).await.unwrap();
        // A worker holds a job of `a`, between its sub-batches.
        let (job, _) = take_job(&sg, &a, "busy", (1, 200), Duration::from_secs(60)).await;
        sg.apply("a", MigrationEvent::Pause, None, "cli")
            .await
            .unwrap();
        sg.apply("b", MigrationEvent::Resume, None, "cli")
            .await
            .unwrap();
        // Releasing the lease is refused while the job runs, and no worker starts `b`.
        sg.store().table_lease_release(a.id).await.unwrap();
        let mut other = worker(&sg, "other").new_loop();
        for _ in 0..3 {
            let outcome = other.step().await.unwrap();
            assert_eq!(outcome, StepOutcome::Idle, "b must wait for a's job");
        }
        assert!(sg.jobs(&b, None).await.unwrap().is_empty());
        // The job ends; then the lease goes and `b` runs.
        sg.job_transition(&job, JobStatus::Succeeded, None, "busy")
            .await
            .unwrap();
        sg.store().table_lease_release(a.id).await.unwrap();
        run_to_end(&sg).await;
        let b = sg.migration("b").await.unwrap();
        assert_eq!(b.status, MigrationStatus::Finished);
        let a_end = sg.job(job.id).await.unwrap().finished_at.unwrap();
        for j in sg.jobs(&b, None).await.unwrap() {
            assert!(
                j.started_at.unwrap() >= a_end,
                "b's job {} overlaps a's",
                j.id
            );
        }
    }
);

/// The same, through real workers on PostgreSQL (sub-batches slowed with `pg_sleep`): pausing
/// `a` and resuming `b` while `a`'s job runs never lets a job of `b` start before it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_jobs_in_flight_never_overlap_the_next_migration_of_the_table() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = sluicegate::testing::TestDb::postgres().await;
    db.create_items("items", &[(1, 2_000)]).await;
    let sg = db.sluicegate().await;
    let slow = "UPDATE items SET n = n + 1 FROM (SELECT pg_sleep(0.05)) AS z \
                WHERE id BETWEEN $1 AND $2";
    let a = sg
        .queue(&fast("a", "sql", "items", 500, 50).argument("sql", slow))
        .await
        .unwrap();
    let mut req_b = fast("b", "update", "items", 500, 100).argument("set", "email_lower = 'x'");
    req_b.paused = true;
    sg.queue(&req_b).await.unwrap();
    let w1 = worker(&sg, "w1");
    let first = tokio::spawn(async move { w1.run_until_idle().await });
    // Wait until a job of `a` runs, then pause it and resume `b`.
    loop {
        let jobs = sg.jobs(&a, Some(JobStatus::Running)).await.unwrap();
        if !jobs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sg.apply("a", MigrationEvent::Pause, None, "cli")
        .await
        .unwrap();
    sg.apply("b", MigrationEvent::Resume, None, "cli")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(120), worker(&sg, "w2").run_until_idle())
        .await
        .unwrap()
        .unwrap();
    first.await.unwrap().unwrap();
    let b = sg.migration("b").await.unwrap();
    assert_eq!(b.status, MigrationStatus::Finished);
    let a_jobs = sg.jobs(&a, None).await.unwrap();
    let a_end = a_jobs.iter().filter_map(|j| j.finished_at).max().unwrap();
    assert!(a_jobs.iter().all(|j| j.status != JobStatus::Running));
    for j in sg.jobs(&b, None).await.unwrap() {
        assert!(
            j.started_at.unwrap() >= a_end,
            "b's job {} started at {:?}, before a's last job ended at {a_end}",
            j.id,
            j.started_at
        );
    }
}

store_test!(absurd_durations_are_refused_at_queue, |db| {
    // Defect: `--interval 100000000y` was accepted, then killed every worker that claimed it.
    db.create_items("items", &[(1, 10)]).await;
    let sg = db.sluicegate().await;
    let mut req = fast("x", "update", "items", 10, 10).argument("set", "n = 1");
    req.interval = Duration::from_secs(100_000_000 * 365 * 24 * 3600);
    let err = sg.queue(&req).await.unwrap_err();
    assert!(
        err.to_string().contains("--interval must be at most"),
        "{err}"
    );
    let mut req = fast("x", "update", "items", 10, 10).argument("set", "n = 1");
    req.health.hold_ms = i64::MAX;
    let err = sg.queue(&req).await.unwrap_err();
    assert!(err.to_string().contains("--hold must be at most"), "{err}");
    let mut req = fast("x", "update", "items", 10, 10).argument("set", "n = 1");
    req.statement_timeout = Duration::from_secs(30 * 24 * 3600);
    let err = sg.queue(&req).await.unwrap_err();
    assert!(err.to_string().contains("--statement-timeout"), "{err}");
    assert!(sg.migrations().await.unwrap().is_empty(), "nothing written");
});

store_test!(a_stored_out_of_range_value_fails_only_its_migration, |db| {
    // Defect: a stored duration past what a timestamp holds panicked the worker (SQLite) or
    // made it exit (PostgreSQL): one bad migration stopped the whole fleet.
    db.create_items("bad_items", &[(1, 100)]).await;
    db.create_items("good_items", &[(1, 1_000)]).await;
    let sg = db.sluicegate().await;
    let mut bad = fast("bad", "update", "bad_items", 50, 50).argument("set", "n = n + 1");
    bad.health.probe = Some("SELECT false".into());
    sg.queue(&bad).await.unwrap();
    sg.queue(&fast("good", "update", "good_items", 100, 100).argument("set", "n = n + 1"))
        .await
        .unwrap();
    // Written behind the library's back, as a bad upgrade or a hand edit would: 285,000 years.
    let set = match db.backend {
        Backend::Postgres => {
            "health_settings = jsonb_set(health_settings, '{hold_ms}', '9000000000000000')"
        }
        Backend::Sqlite => {
            "health_settings = json_set(health_settings, '$.hold_ms', 9000000000000000)"
        }
    };
    db.exec(&format!(
        "UPDATE {} SET {set} WHERE name = 'bad'",
        migrations_table(db.backend)
    ))
    .await;
    run_to_end(&sg).await;
    let good = sg.migration("good").await.unwrap();
    assert_eq!(good.status, MigrationStatus::Finished);
    assert_eq!(
        db.scalar("SELECT count(*) FROM good_items WHERE n = 1")
            .await,
        1_000
    );
    let bad = sg.migration("bad").await.unwrap();
    assert_eq!(bad.status, MigrationStatus::Failed);
    let fail = sg.migration_history(&bad).await.unwrap().pop().unwrap();
    assert_eq!(fail.event, MigrationEvent::Fail);
    let class = fail.exception_class.unwrap_or_default();
    assert!(
        class == FailureClass::OutOfRange.as_str() || class == "DataException",
        "{class}: {:?}",
        fail.exception_message
    );
    assert!(
        fail.exception_message
            .as_deref()
            .is_some_and(|m| m.contains("out of range")),
        "{:?}",
        fail.exception_message
    );
    assert_eq!(db.scalar("SELECT sum(n) FROM bad_items").await, 0);
});

store_test!(a_table_named_like_a_placeholder_migrates, |db| {
    // Defect: `{s}` was filled in after the quoted table name went into job creation, so a
    // table named `a{s}b` broke every worker.
    db.create_items("a{s}b", &[(1, 1_000)]).await;
    let sg = db.sluicegate().await;
    sg.queue(&fast("braces", "update", "a{s}b", 300, 100).argument("set", "n = n + 1"))
        .await
        .unwrap();
    run_to_end(&sg).await;
    let m = sg.migration("braces").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    assert_chains(&sg, &m).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM \"a{s}b\" WHERE n = 1")
            .await,
        1_000
    );
});

store_test!(a_finalizer_that_died_is_taken_over_by_a_worker, |db| {
    // Defect: `finalize` killed mid-way left the migration `finalizing` forever, and
    // `run --until-idle` polled forever.
    db.create_items("items", &[(1, 600)]).await;
    let sg = db.sluicegate().await;
    let m = sg
        .queue(&fast("fin", "update", "items", 200, 50).argument("set", "n = n + 1"))
        .await
        .unwrap();
    // The finalizer moved it to `finalizing`, took a job, and died (its leases run out).
    let m = sg
        .transition(&m, MigrationEvent::Finalize, None, "cli")
        .await
        .unwrap();
    let (job, _) = take_job(&sg, &m, "finalizer", (1, 200), Duration::from_millis(300)).await;
    tokio::time::timeout(
        Duration::from_secs(60),
        worker(&sg, "rescuer").run_until_idle(),
    )
    .await
    .expect("run --until-idle ends")
    .unwrap();
    let m = sg.migration("fin").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    let log = sg.job_history(job.id).await.unwrap();
    assert!(
        log.iter()
            .any(|r| r.exception_class.as_deref() == Some("WorkerLost")),
        "{log:?}"
    );
    assert_chains(&sg, &m).await;
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        600
    );
});

store_test!(the_stores_refuse_illegal_transitions_themselves, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = sg
        .queue(&fast("s", "update", "items", 100, 100).argument("set", "n = n + 1"))
        .await
        .unwrap();
    let (job, _) = take_job(&sg, &m, "w", (1, 100), Duration::from_secs(30)).await;
    let job = sg
        .job_transition(&job, JobStatus::Succeeded, None, "w")
        .await
        .unwrap();
    // The state machine refuses to build it...
    let err = JobTransitionParams::new(&job, JobStatus::Running, "w").unwrap_err();
    assert!(matches!(err, Error::IllegalJobTransition { .. }), "{err}");
    // ...and a store handed one anyway refuses it too, writing nothing.
    let illegal = JobTransitionParams::unchecked(&job, JobStatus::Running, "w");
    let err = sg.store().job_transition(&illegal).await.unwrap_err();
    assert!(matches!(err, Error::IllegalJobTransition { .. }), "{err}");
    assert_eq!(sg.job(job.id).await.unwrap().status, JobStatus::Succeeded);
    assert_eq!(sg.job_history(job.id).await.unwrap().len(), 2);
    let m = sg.migration("s").await.unwrap();
    let err = MigrationTransitionParams::new(&m, MigrationEvent::Resume, "cli").unwrap_err();
    assert!(
        matches!(err, Error::IllegalMigrationTransition { .. }),
        "{err}"
    );
    let illegal =
        MigrationTransitionParams::unchecked(&m, MigrationEvent::Resume, MigrationStatus::Finished);
    let err = sg.store().migration_transition(&illegal).await.unwrap_err();
    assert!(
        matches!(err, Error::IllegalMigrationTransition { .. }),
        "{err}"
    );
    assert_eq!(
        sg.migration("s").await.unwrap().status,
        MigrationStatus::Active
    );
    assert_eq!(sg.migration_history(&m).await.unwrap().len(), 1);
});

store_test!(a_hold_by_one_worker_stops_every_other, |db| {
    // Holds are global: once one worker records a hold, no worker anywhere starts a job of
    // the migration until it ends, even one whose own health check would say go.
    db.create_items("items", &[(1, 2_000)]).await;
    db.exec("CREATE TABLE gate (open boolean NOT NULL)").await;
    db.exec("INSERT INTO gate VALUES (true)").await;
    let sg = db.sluicegate().await;
    let mut req = fast("global", "update", "items", 200, 100).argument("set", "n = n + 1");
    req.health.probe = Some("SELECT open FROM gate".into());
    req.health.hold_ms = 60_000;
    let m = sg.queue(&req).await.unwrap();
    // Worker B runs a job and keeps the migration for its next step.
    let mut b = worker(&sg, "b").new_loop();
    assert!(matches!(b.step().await.unwrap(), StepOutcome::Ran { .. }));
    // Worker A sees the probe say stop and holds it.
    db.exec("UPDATE gate SET open = false").await;
    let mut a = worker(&sg, "a").new_loop();
    let held = a.step().await.unwrap();
    assert!(matches!(held, StepOutcome::Held { .. }), "{held:?}");
    let hold_at = sg
        .migration_history(&m)
        .await
        .unwrap()
        .into_iter()
        .rfind(|r| r.event == MigrationEvent::Hold)
        .unwrap()
        .created_at;
    // For B the probe says go again; the hold still stops it, at every statement.
    db.exec("UPDATE gate SET open = true").await;
    for _ in 0..3 {
        let outcome = b.step().await.unwrap();
        if let StepOutcome::Ran { job, .. } = &outcome {
            // Only a job its last job's end started before the hold may still run.
            assert!(job.started_at.unwrap() < hold_at, "{outcome:?}");
        }
    }
    b.finish().await.unwrap();
    let started_after = sg
        .jobs(&m, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.started_at.is_some_and(|t| t > hold_at))
        .count();
    assert_eq!(started_after, 0, "no job starts while the hold lasts");
    let m = sg.migration("global").await.unwrap();
    let next = m.next_start.clone().expect("keys left");
    let start = crate::common::int(&next.inclusive_start(&m.key).expect("an integer key"));
    let created = sg
        .store()
        .job_create(&sluicegate::store::JobCreateParams {
            migration_id: m.id,
            expected_next: next,
            range: sluicegate::store::JobRange::Given {
                min: sluicegate::Key::int(start),
                max: sluicegate::Key::int(start + 10),
            },
            batch_size: 200,
            sub_batch_size: 100,
            pause_ms: 0,
            worker: "c".into(),
            lease: Duration::from_secs(30),
            lane: None,
        })
        .await
        .unwrap();
    assert_eq!(created, sluicegate::store::JobCreated::NotNow);
});

store_test!(
    an_error_of_its_own_met_mid_run_fails_only_the_migration,
    |db| {
        // The same kind of error met by a loop that continues a migration (no new claim, or a job
        // its last job's end started) fails that migration too, and the loop goes on: here its
        // table is dropped under it.
        db.create_items("items", &[(1, 2_000)]).await;
        db.create_items("others", &[(1, 500)]).await;
        let sg = db.sluicegate().await;
        sg.queue(&fast("midrun", "update", "items", 100, 100).argument("set", "n = n + 1"))
            .await
            .unwrap();
        let mut l = worker(&sg, "w").new_loop();
        assert!(matches!(l.step().await.unwrap(), StepOutcome::Ran { .. }));
        db.exec("DROP TABLE items").await;
        sg.queue(&fast("other", "update", "others", 100, 100).argument("set", "n = n + 1"))
            .await
            .unwrap();
        // The drop's lock may hold the migration for a re-check first (lock_waits): wait
        // for the event, not for a number of steps.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let m = loop {
            match l.step().await.unwrap() {
                StepOutcome::Completed { migration } if migration.name == "midrun" => {
                    break migration
                }
                other @ (StepOutcome::Idle | StepOutcome::Held { .. }) => {
                    seen.push(other);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => seen.push(other),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "midrun did not fail: {seen:?}"
            );
        };
        assert_eq!(m.status, MigrationStatus::Failed);
        let fail = sg.migration_history(&m).await.unwrap().pop().unwrap();
        assert_eq!(
            fail.exception_class.as_deref(),
            Some("UndefinedTable"),
            "{fail:?}"
        );
        // The loop goes on with the other migration.
        l.finish().await.unwrap();
        run_to_end(&sg).await;
        assert_eq!(
            sg.migration("other").await.unwrap().status,
            MigrationStatus::Finished
        );
    }
);
