//! Deploying migrations: a worker limited to some migrations (`run --only`), definitions
//! queued once from their canonical form (`apply`, `Sluicegate::apply_definitions`), and the
//! deploy gate (`ensure`).

use std::time::Duration;

use sluicegate::engine::{EnsureOptions, FailureGroup, Standing};
use sluicegate::{store_test, Error, IfAbsent, MigrationEvent, MigrationStatus};

use crate::common::*;

store_test!(a_worker_limited_to_one_migration_leaves_the_others, |db| {
    db.create_items("items", &[(1, 300)]).await;
    db.create_items("others", &[(1, 300)]).await;
    let sg = db.sluicegate().await;
    let a = sg
        .queue(&fast("a", "update", "items", 100, 50).argument("set", "n = n + 1"))
        .await
        .unwrap();
    let b = sg
        .queue(&fast("b", "update", "others", 100, 50).argument("set", "n = n + 1"))
        .await
        .unwrap();
    // `a` is older and due: a worker limited to `b` never claims it, and is idle once `b`
    // is done.
    tokio::time::timeout(
        Duration::from_secs(120),
        worker(&sg, "w1").only(vec![b.id]).run_until_idle(),
    )
    .await
    .expect("the worker ends once b is finished")
    .unwrap();
    let a = sg.migration(&a.id.to_string()).await.unwrap();
    let b = sg.migration(&b.id.to_string()).await.unwrap();
    assert_eq!(b.status, MigrationStatus::Finished);
    assert_eq!(a.status, MigrationStatus::Active);
    assert!(sg.jobs(&a, None).await.unwrap().is_empty());
    assert_eq!(db.scalar("SELECT sum(n) FROM others").await, 300);
    assert_eq!(db.scalar("SELECT coalesce(sum(n), 0) FROM items").await, 0);
});

const BACKFILL: &str = r#"
table = "items"
kind = "update"
set = "email_lower = lower(email)"
batch_size = 100
sub_batch_size = 50
pause_ms = 0
target_sub_batch_time = "0s"
[health]
hold = "200ms"
"#;

const PURGE: &str = r#"
table = "others"
kind = "delete"
scope = "id > 250"
batch_size = 100
pause_ms = 0
"#;

store_test!(
    definitions_are_queued_once_and_a_changed_one_is_refused,
    |db| {
        db.create_items("items", &[(1, 300)]).await;
        db.create_items("others", &[(1, 300)]).await;
        let sg = db.sluicegate().await;
        let defs = [("backfill", BACKFILL), ("purge", PURGE)];
        let first = sg.apply_definitions(&defs).await.unwrap();
        assert!(
            first.iter().all(|(d, _)| matches!(d, IfAbsent::Queue(_))),
            "{first:?}"
        );
        let backfill = first[0].1.clone();
        assert_eq!(backfill.name, "backfill");
        assert_eq!(
            (backfill.batch_size, backfill.sub_batch_ceiling),
            (100, Some(50))
        );
        // The canonical definition is on the row, as the engine made it.
        let stored = sg.migration("backfill").await.unwrap().definition.unwrap();
        let req = sluicegate::definition::requests(&[("backfill", BACKFILL)]).unwrap();
        assert_eq!(stored, req[0].canonical_definition());

        // The same definitions again, spelled differently (a default written out): no-op.
        let respelled =
            BACKFILL.replace("pause_ms = 0", "pause_ms = 0\nstatement_timeout = \"30s\"");
        let again = sg
            .apply_definitions(&[("backfill", respelled.as_str()), ("purge", PURGE)])
            .await
            .unwrap();
        assert!(
            again
                .iter()
                .all(|(d, _)| matches!(d, IfAbsent::Unchanged(_))),
            "{again:?}"
        );
        assert_eq!(sg.migrations().await.unwrap().len(), 2);

        // A changed definition of a live migration is refused, naming the difference, and the
        // new definition beside it is not queued either.
        let changed = BACKFILL.replace("batch_size = 100", "batch_size = 200");
        let new = r#"
table = "thirds"
kind = "delete"
"#;
        db.create_items("thirds", &[(1, 10)]).await;
        let err = sg
            .apply_definitions(&[("backfill", changed.as_str()), ("third", new)])
            .await
            .unwrap_err();
        match &err {
            Error::DefinitionChanged {
                name, differences, ..
            } => {
                assert_eq!(name, "backfill");
                assert_eq!(differences, &["batch_size: 100 -> 200"]);
            }
            other => panic!("expected DefinitionChanged, got {other:?}"),
        }
        assert!(err.to_string().contains("batch_size: 100 -> 200"), "{err}");
        assert!(matches!(
            sg.migration("third").await,
            Err(Error::MigrationNotFound(_))
        ));

        // Finished: left alone, whatever the definition says now.
        run_to_end(&sg).await;
        let done = sg
            .apply_definitions(&[("backfill", changed.as_str())])
            .await
            .unwrap();
        match &done[0].0 {
            IfAbsent::FinishedDifferent { differences, .. } => {
                assert_eq!(differences, &["batch_size: 100 -> 200"])
            }
            other => panic!("expected FinishedDifferent, got {other:?}"),
        }
        assert_eq!(done[0].1.status, MigrationStatus::Finished);
        assert_eq!(sg.migrations().await.unwrap().len(), 2);
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE email_lower = lower(email)")
                .await,
            300
        );
        assert_eq!(db.scalar("SELECT count(*) FROM others").await, 250);
    }
);

store_test!(
    a_definition_that_does_not_read_names_its_file_and_line,
    |db| {
        let sg = db.sluicegate().await;
        let err = sg
            .apply_definitions(&[("bad", "table = \"items\"\nkind = \"update\"\nbatch = 5\n")])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("definition bad, line 3: unknown field `batch`"),
            "{err}"
        );
        assert!(sg.migrations().await.unwrap().is_empty());
    }
);

store_test!(a_small_batch_size_brings_the_default_sub_batch_down, |db| {
    db.create_items("items", &[(1, 120)]).await;
    let sg = db.sluicegate().await;
    // `--batch-size 50` alone: the default sub-batch (100) follows it down, no ceiling set.
    let applied = sg
        .apply_definitions(&[(
            "small",
            "table = \"items\"\nkind = \"update\"\nset = \"n = n + 1\"\nbatch_size = 50\npause_ms = 0\n",
        )])
        .await
        .unwrap();
    let m = &applied[0].1;
    assert_eq!(
        (m.batch_size, m.sub_batch_size, m.sub_batch_ceiling),
        (50, 50, None)
    );
    // Given explicitly, a larger sub-batch is still refused, naming both.
    let err = sg
        .apply_definitions(&[(
            "explicit",
            "table = \"items\"\nkind = \"update\"\nset = \"n = 2\"\nbatch_size = 50\nsub_batch_size = 100\n",
        )])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sub-batch size 100 is larger than batch size 50"),
        "{err}"
    );
    run_to_end(&sg).await;
    assert_eq!(db.scalar("SELECT sum(n) FROM items").await, 120);
});

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn cli() -> EnsureOptions {
    EnsureOptions {
        actor: "cli".into(),
        ..EnsureOptions::default()
    }
}

store_test!(
    ensure_reports_each_standing_and_finalize_finishes_a_failed_one,
    |db| {
        // Key 150's sub-batch fails three times, then succeeds (out of the queue's trials).
        let sg = db
            .sluicegate_with(registry_with(FailAt::new(150, "TestFailure", 3)))
            .await;
        db.create_items("items", &[(1, 300)]).await;
        db.create_items("others", &[(1, 300)]).await;
        sg.queue(&fast("flaky", "fail-at", "items", 100, 50))
            .await
            .unwrap();
        sg.queue(&fast("waiting", "update", "others", 100, 50).argument("set", "n = n + 1"))
            .await
            .unwrap();
        let pending = futures::future::pending::<()>;

        // Not queued: said, and nothing runs (not even with finalize).
        let mut finalize = cli();
        finalize.finalize = true;
        let r = sg
            .ensure(&names(&["waiting", "nope"]), &finalize, pending())
            .await
            .unwrap();
        assert_eq!(
            r.iter().map(|r| r.standing).collect::<Vec<_>>(),
            [Standing::Running, Standing::NotQueued]
        );
        assert_eq!(r[1].reason, "not queued");
        assert_eq!(db.scalar("SELECT coalesce(sum(n), 0) FROM others").await, 0);

        // Queued, not run: still running, with its progress.
        let r = sg
            .ensure(&names(&["waiting"]), &cli(), pending())
            .await
            .unwrap();
        assert_eq!(r[0].standing, Standing::Running);
        assert!(
            r[0].reason
                .starts_with("still running: active, 0.0% done, 0 of 0 job(s) succeeded"),
            "{}",
            r[0].reason
        );
        // Waiting (--timeout) while a worker runs `waiting` elsewhere: it ends finished.
        let mut wait = cli();
        wait.timeout = Some(Duration::from_secs(120));
        let running = worker(&sg, "w1").only(vec![sg.migration("waiting").await.unwrap().id]);
        let waiting = names(&["waiting"]);
        let (r, ran) = tokio::join!(
            sg.ensure(&waiting, &wait, pending()),
            running.run_until_idle()
        );
        ran.unwrap();
        let r = r.unwrap();
        assert_eq!(r[0].standing, Standing::Finished, "{}", r[0].reason);

        // The flaky one fails (a job failed three times): failed, its failures grouped.
        run_to_end(&sg).await;
        let r = sg
            .ensure(&names(&["flaky", "waiting"]), &cli(), pending())
            .await
            .unwrap();
        assert_eq!(r[0].standing, Standing::Failed, "{}", r[0].reason);
        assert!(r[0].reason.starts_with("failed: "), "{}", r[0].reason);
        assert_eq!(
            r[0].failures,
            [FailureGroup {
                class: "TestFailure".into(),
                message: "simulated failure at key 150".into(),
                attempts: 3,
                jobs: 1,
            }]
        );
        // Finalize: retried with fresh attempts, run inline to the end.
        let r = sg
            .ensure(&names(&["flaky", "waiting"]), &finalize, pending())
            .await
            .unwrap();
        assert_eq!(
            r.iter().map(|r| r.standing).collect::<Vec<_>>(),
            [Standing::Finished, Standing::Finished],
            "{r:?}"
        );
        let m = sg.migration("flaky").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
            300
        );
        let log = sg.migration_history(&m).await.unwrap();
        assert!(
            log.iter().any(|row| row.event == MigrationEvent::Retry
                && row
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("ensure --finalize"))),
            "{log:?}"
        );
    }
);

store_test!(
    after_waits_for_its_dependencies_and_refuses_cycles_and_unknown_names,
    |db| {
        let sg = db
            .sluicegate_with(registry_with(FailAt::new(150, "TestFailure", -1)))
            .await;
        for table in ["items", "others", "thirds", "fourths"] {
            db.create_items(table, &[(1, 200)]).await;
        }
        let update = |name: &str, table: &str| {
            fast(name, "update", table, 50, 50).argument("set", "n = n + 1")
        };
        let a = sg.queue(&update("a", "items")).await.unwrap();
        let mut req = update("b", "others");
        req.after = vec!["a".into()];
        let b = sg.queue(&req).await.unwrap();
        assert_eq!(b.after, [a.id]);
        assert_eq!(
            sg.waiting_for(&b)
                .await
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect::<Vec<_>>(),
            [a.id]
        );
        // Unknown names and cycles are refused at queue, writing nothing.
        let mut unknown = update("c", "thirds");
        unknown.after = vec!["nope".into()];
        let err = sg.queue(&unknown).await.unwrap_err().to_string();
        assert!(
            err.contains("--after \"nope\": no migration of this name is queued"),
            "{err}"
        );
        let mut own = update("d", "thirds");
        own.after = vec!["d".into()];
        let err = sg.queue(&own).await.unwrap_err().to_string();
        assert!(err.contains("cannot run after itself (a cycle)"), "{err}");
        let err = sg
            .apply_definitions(&[
                (
                    "x",
                    "table = \"thirds\"\nkind = \"delete\"\nafter = \"y\"\n",
                ),
                (
                    "y",
                    "table = \"fourths\"\nkind = \"delete\"\nafter = [\"x\"]\n",
                ),
            ])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("--after makes a cycle: x -> y -> x"), "{err}");
        assert_eq!(sg.migrations().await.unwrap().len(), 2);

        // `b` is not claimed before `a` finished: its first job starts after `a`'s end.
        run_to_end(&sg).await;
        let a = sg.migration("a").await.unwrap();
        let b = sg.migration("b").await.unwrap();
        assert_eq!(
            (a.status, b.status),
            (MigrationStatus::Finished, MigrationStatus::Finished)
        );
        let first_of_b = sg
            .jobs(&b, None)
            .await
            .unwrap()
            .iter()
            .map(|j| j.created_at)
            .min()
            .unwrap();
        assert!(
            first_of_b >= a.finished_at.unwrap(),
            "b started before a finished"
        );

        // In files, a definition runs after one of an earlier file; when that one fails, the
        // other is never claimed and a worker run until idle does not wait for it.
        let applied = sg
        .apply_definitions(&[
            ("flaky", "table = \"thirds\"\nkind = \"fail-at\"\nbatch_size = 100\nsub_batch_size = 50\npause_ms = 0\ntarget_sub_batch_time = \"0s\"\n"),
            ("next", "table = \"fourths\"\nkind = \"update\"\nset = \"n = 1\"\nafter = \"flaky\"\n"),
        ])
        .await
        .unwrap();
        assert_eq!(applied[1].1.after, [applied[0].1.id]);
        run_to_end(&sg).await;
        let flaky = sg.migration("flaky").await.unwrap();
        let next = sg.migration("next").await.unwrap();
        assert_eq!(flaky.status, MigrationStatus::Failed);
        assert_eq!(next.status, MigrationStatus::Active);
        assert!(sg.jobs(&next, None).await.unwrap().is_empty());
        assert_eq!(db.scalar("SELECT sum(n) FROM fourths").await, 0);
        // Finalizing it is refused while it waits, naming what for.
        let err = sg.finalize("next", "cli").await.unwrap_err().to_string();
        assert!(
            err.contains("it runs after flaky (failed), not finished"),
            "{err}"
        );
    }
);

store_test!(
    verification_fails_on_a_row_changed_behind_the_migrations_back,
    |db| {
        db.create_items("items", &[(1, 300)]).await;
        let sg = db.sluicegate().await;
        // A typo in the condition is refused at queue, naming it.
        let mut typo = fast("typo", "update", "items", 100, 50).argument("set", "n = 1");
        typo.verify = Some("email_lowr = lower(email)".into());
        let err = sg.queue(&typo).await.unwrap_err().to_string();
        assert!(
            err.contains("--verify \"email_lowr = lower(email)\" does not run"),
            "{err}"
        );
        let mut not_one = typo.clone();
        not_one.verify = Some("true; DELETE FROM items".into());
        let err = sg.queue(&not_one).await.unwrap_err().to_string();
        assert!(err.contains("--verify"), "{err}");

        let mut req = fast("backfill", "update", "items", 100, 50)
            .argument("set", "email_lower = lower(email)");
        req.verify = Some("email_lower = lower(email)".into());
        let m = sg.queue(&req).await.unwrap();
        assert_eq!(m.verify.as_deref(), Some("email_lower = lower(email)"));
        // One step: the first jobs run; then two rows they did are changed behind its back.
        let mut l = worker(&sg, "w1").new_loop();
        l.step().await.unwrap();
        l.finish().await.unwrap();
        assert_eq!(
            db.scalar(
                "SELECT count(*) FROM items WHERE id IN (17, 42) AND email_lower IS NOT NULL"
            )
            .await,
            2
        );
        db.exec("UPDATE items SET email_lower = 'changed' WHERE id IN (17, 42)")
            .await;
        run_to_end(&sg).await;
        let m = sg.migration("backfill").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Failed);
        let log = sg.migration_history(&m).await.unwrap();
        let verify = log
            .iter()
            .find(|r| r.event == MigrationEvent::Verify)
            .expect("a verify row");
        assert_eq!(
            verify.reason.as_deref(),
            Some(
                "verify (email_lower = lower(email)): 300 rows checked, 2 violations; keys 17, 42"
            )
        );
        let last = log.last().unwrap();
        assert_eq!(
            (last.event, last.exception_class.as_deref()),
            (MigrationEvent::Fail, Some("VerificationFailed"))
        );
        // Read again on demand; fixed and retried, it verifies clean and finishes.
        let now = sg.verify_now(&m).await.unwrap();
        assert_eq!((now.checked, now.violations), (300, 2));
        db.exec("UPDATE items SET email_lower = lower(email) WHERE id IN (17, 42)")
            .await;
        sg.retry("backfill", Some("rows fixed".into()), "cli")
            .await
            .unwrap();
        run_to_end(&sg).await;
        let m = sg.migration("backfill").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        let log = sg.migration_history(&m).await.unwrap();
        let verify = log
            .iter()
            .rev()
            .find(|r| r.event == MigrationEvent::Verify)
            .unwrap();
        assert_eq!(
            verify.reason.as_deref(),
            Some("verify (email_lower = lower(email)): 300 rows checked, 0 violations")
        );
    }
);

store_test!(set_changes_the_timeouts_of_a_queued_migration, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = sg
        .queue(&fast("t", "update", "items", 50, 50).argument("set", "n = n + 1"))
        .await
        .unwrap();
    assert_eq!((m.statement_timeout_ms, m.lock_timeout_ms), (30_000, 5_000));
    let change = sluicegate::SettingsChange {
        statement_timeout: Some(Duration::from_secs(120)),
        lock_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    let m = sg
        .set(&m, &change, Some("the big tenant".into()), "cli")
        .await
        .unwrap();
    assert_eq!(
        (m.statement_timeout_ms, m.lock_timeout_ms),
        (120_000, 10_000)
    );
    let row = sg
        .migration_history(&m)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .find(|r| r.event == MigrationEvent::Set)
        .unwrap();
    assert_eq!(
        row.reason.as_deref(),
        Some("statement_timeout 30s -> 2m; lock_timeout 5s -> 10s (the big tenant)")
    );
    // Bounded as at queue: zero and more than a day are refused, nothing written.
    for bad in [Duration::ZERO, Duration::from_secs(25 * 3600)] {
        let change = sluicegate::SettingsChange {
            statement_timeout: Some(bad),
            ..Default::default()
        };
        let err = sg
            .set(&m, &change, None, "cli")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("statement"), "{err}");
    }
    let read = sg.migration("t").await.unwrap();
    assert_eq!(read.statement_timeout_ms, 120_000);
    run_to_end(&sg).await;
    assert_eq!(db.scalar("SELECT sum(n) FROM items").await, 100);
});

/// `INSERT INTO table (columns) VALUES ...` of `rows`, for both engines.
async fn insert(db: &sluicegate::testing::TestDb, table: &str, columns: &str, rows: Vec<String>) {
    for chunk in rows.chunks(500) {
        db.exec(&format!(
            "INSERT INTO {table} ({columns}) VALUES {}",
            chunk.join(", ")
        ))
        .await;
    }
}

store_test!(
    gitlab_batched_migrations_as_definition_files_run_end_to_end,
    |db| {
        db.exec(
            "CREATE TABLE projects (id bigint PRIMARY KEY, project_namespace_id bigint NOT NULL)",
        )
        .await;
        db.exec("CREATE TABLE issues (id bigint PRIMARY KEY, project_id bigint NOT NULL, namespace_id bigint)")
        .await;
        db.exec("CREATE TABLE events (id integer PRIMARY KEY, id_convert_to_bigint bigint NOT NULL DEFAULT 0)")
        .await;
        db.exec("CREATE TABLE notes (id bigint PRIMARY KEY, noteable_id bigint NOT NULL)")
            .await;
        // GitLab's CI tables, simplified to the columns used (not partitioned here, so that
        // SQLite runs them too): p_ci_stages.pipeline_id is nullable and not unique.
        db.exec("CREATE TABLE p_ci_pipelines (id bigint NOT NULL, partition_id bigint NOT NULL, PRIMARY KEY (id, partition_id))")
            .await;
        db.exec("CREATE TABLE p_ci_stages (id bigint NOT NULL, partition_id bigint NOT NULL, pipeline_id bigint, name varchar(255), PRIMARY KEY (id, partition_id))")
            .await;
        db.exec("CREATE UNIQUE INDEX index_p_ci_stages_on_pipeline_id_and_name ON p_ci_stages (pipeline_id, name)")
            .await;
        db.exec("CREATE TABLE p_ci_builds (id bigint NOT NULL, partition_id bigint NOT NULL, project_id bigint NOT NULL, PRIMARY KEY (id, partition_id))")
            .await;
        db.exec("CREATE INDEX index_p_ci_builds_on_project_id ON p_ci_builds (project_id)")
            .await;
        db.exec("CREATE TABLE ci_project_mirrors (project_id bigint PRIMARY KEY, namespace_id bigint NOT NULL)")
            .await;
        // Pipelines 1..=40 in partition 100; stages of pipelines 1..=60 (those of 41..=60 are
        // orphans, 60 of them), pipeline 5's "test" stage in partition 101 (an orphan too: no
        // such pipeline there), and 15 stages without a pipeline, which stay.
        insert(
            &db,
            "p_ci_pipelines",
            "id, partition_id",
            (1..=40).map(|i| format!("({i}, 100)")).collect(),
        )
        .await;
        let mut stages: Vec<String> = (1..=60)
            .flat_map(|p| {
                ["build", "test", "deploy"]
                    .into_iter()
                    .enumerate()
                    .map(move |(s, name)| {
                        let partition = if p == 5 && name == "test" { 101 } else { 100 };
                        format!("({}, {partition}, {p}, '{name}')", p * 10 + s as i64)
                    })
            })
            .collect();
        stages.extend((1..=15).map(|i| format!("({}, 100, NULL, 'stage {i}')", 10_000 + i)));
        insert(
            &db,
            "p_ci_stages",
            "id, partition_id, pipeline_id, name",
            stages,
        )
        .await;
        // 500 builds of 20 projects.
        insert(
            &db,
            "p_ci_builds",
            "id, partition_id, project_id",
            (1..=500)
                .map(|i| format!("({i}, 100, {})", i % 20 + 1))
                .collect(),
        )
        .await;
        insert(
            &db,
            "projects",
            "id, project_namespace_id",
            (1..=20).map(|i| format!("({i}, {})", 1000 + i)).collect(),
        )
        .await;
        insert(
            &db,
            "issues",
            "id, project_id",
            (1..=400)
                .map(|i| format!("({i}, {})", i % 20 + 1))
                .collect(),
        )
        .await;
        insert(
            &db,
            "events",
            "id",
            (1..=1000).map(|i| format!("({i})")).collect(),
        )
        .await;
        // Notes of issues 2, 4, ... 600: those above 400 are orphans (100 of them).
        insert(
            &db,
            "notes",
            "id, noteable_id",
            (1..=300).map(|i| format!("({i}, {})", 2 * i)).collect(),
        )
        .await;
        let sg = db.sluicegate().await;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/definitions/gitlab");
        let requests = sluicegate::definition::read_dir(&dir).unwrap();
        let names: Vec<String> = requests.iter().map(|r| r.name.clone()).collect();
        assert_eq!(
            names,
            [
                "backfill_issues_namespace_id",
                "copy_events_id_to_bigint",
                "delete_orphaned_notes",
                "delete_orphaned_stage_records",
                "backfill_ci_project_mirrors"
            ]
        );
        let applied = sg.apply_requests(&requests).await.unwrap();
        assert!(applied.iter().all(|(d, _)| matches!(d, IfAbsent::Queue(_))));
        // Applied again: nothing new.
        let again = sg.apply_requests(&requests).await.unwrap();
        assert!(again
            .iter()
            .all(|(d, _)| matches!(d, IfAbsent::Unchanged(_))));
        run_to_end(&sg).await;
        let gate = sg
            .ensure(&names, &cli(), futures::future::pending())
            .await
            .unwrap();
        assert!(
            gate.iter().all(|r| r.standing == Standing::Finished),
            "{gate:?}"
        );
        assert_eq!(
        db.scalar("SELECT count(*) FROM issues i JOIN projects p ON p.id = i.project_id WHERE i.namespace_id = p.project_namespace_id")
            .await,
        400
    );
        assert_eq!(
            db.scalar("SELECT count(*) FROM events WHERE id_convert_to_bigint = id")
                .await,
            1000
        );
        assert_eq!(db.scalar("SELECT count(*) FROM notes").await, 200);
        assert_eq!(db.scalar("SELECT max(noteable_id) FROM notes").await, 400);
        // The orphaned stages are gone, the stages without a pipeline untouched: exactly the
        // 119 stages of pipelines 1..=40 (less pipeline 5's orphan) and the 15 without one.
        assert_eq!(
            db.scalar("SELECT count(*) FROM p_ci_stages WHERE pipeline_id IS NULL AND id BETWEEN 10001 AND 10015")
                .await,
            15
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM p_ci_stages WHERE pipeline_id BETWEEN 1 AND 40 AND partition_id = 100")
                .await,
            119
        );
        assert_eq!(db.scalar("SELECT count(*) FROM p_ci_stages").await, 134);
        assert_eq!(
            db.scalar("SELECT count(*) FROM p_ci_stages WHERE pipeline_id = 5 AND name = 'test'")
                .await,
            0
        );
        let stages = sg.migration("delete_orphaned_stage_records").await.unwrap();
        assert!(stages.key.walk().skip_nulls);
        let deleted: i64 = sg
            .jobs(&stages, None)
            .await
            .unwrap()
            .iter()
            .map(|j| j.rows_affected)
            .sum();
        assert_eq!(deleted, 61);
        // One mirror per project, each with its project's namespace, in one job per six
        // projects (rows would have made 84 of them).
        assert_eq!(
            db.scalar("SELECT count(*) FROM ci_project_mirrors").await,
            20
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM ci_project_mirrors m JOIN projects p ON p.id = m.project_id WHERE m.namespace_id = p.project_namespace_id")
                .await,
            20
        );
        let mirrors = sg.migration("backfill_ci_project_mirrors").await.unwrap();
        assert!(mirrors.key.walk().distinct);
        assert_eq!(sg.jobs(&mirrors, None).await.unwrap().len(), 4);
        // The two with --verify say so in their logs.
        for name in ["backfill_issues_namespace_id", "copy_events_id_to_bigint"] {
            let m = sg.migration(name).await.unwrap();
            let log = sg.migration_history(&m).await.unwrap();
            let verify = log
                .iter()
                .find(|r| r.event == MigrationEvent::Verify)
                .unwrap();
            assert!(
                verify.reason.as_deref().unwrap().ends_with(" 0 violations"),
                "{name}: {:?}",
                verify.reason
            );
        }
        // The cleanup ran after the backfill had finished.
        let backfill = sg.migration("backfill_issues_namespace_id").await.unwrap();
        let cleanup = sg.migration("delete_orphaned_notes").await.unwrap();
        let first = sg
            .jobs(&cleanup, None)
            .await
            .unwrap()
            .iter()
            .map(|j| j.created_at)
            .min()
            .unwrap();
        assert!(first >= backfill.finished_at.unwrap());
    }
);

store_test!(
    a_verify_condition_edited_by_hand_fails_its_migration_unrun,
    |db| {
        db.create_items("items", &[(1, 100)]).await;
        let sg = db.sluicegate().await;
        let mut req = fast("v", "update", "items", 50, 50).argument("set", "n = n + 1");
        req.verify = Some("n = 1".into());
        let m = sg.queue(&req).await.unwrap();
        let migrations = match db.backend {
            sluicegate::store::Backend::Postgres => "sluicegate.migrations",
            sluicegate::store::Backend::Sqlite => "sluicegate_migrations",
        };
        db.exec(&format!(
            "UPDATE {migrations} SET verify = 'true) OR (1 = 1' WHERE id = {}",
            m.id
        ))
        .await;
        run_to_end(&sg).await;
        let m = sg.migration("v").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Failed);
        let last = sg.migration_history(&m).await.unwrap().pop().unwrap();
        assert_eq!(last.exception_class.as_deref(), Some("InvalidSettings"));
        assert!(
            last.exception_message
                .as_deref()
                .unwrap_or_default()
                .contains("--verify"),
            "{last:?}"
        );
        assert_eq!(
            db.scalar("SELECT sum(n) FROM items").await,
            0,
            "nothing ran"
        );
    }
);
