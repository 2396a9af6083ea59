//! Installing the tracking schema: idempotent, versioned, guarded by CHECK constraints.

use sluicegate::health::Indicator;
use sluicegate::store::{Backend, SCHEMA_VERSION};
use sluicegate::{store_test, Error, Key, Lower, MigrationEvent, MigrationStatus};

fn versions_table(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "sluicegate.schema_versions",
        Backend::Sqlite => "sluicegate_schema_versions",
    }
}

store_test!(setup_is_idempotent, |db| {
    let sg = db.sluicegate().await;
    let (applied, _) = sg.setup().await.unwrap();
    assert!(
        applied.is_empty(),
        "a second setup applies nothing: {applied:?}"
    );
    assert_eq!(
        sg.store().schema_version().await.unwrap(),
        Some(SCHEMA_VERSION)
    );
    sg.ensure_schema().await.unwrap();
});

store_test!(older_binary_refuses_newer_schema, |db| {
    let sg = db.sluicegate().await;
    db.exec(&format!(
        "INSERT INTO {} (version, applied_at) VALUES (99, '2030-01-01T00:00:00Z')",
        versions_table(db.backend)
    ))
    .await;
    let err = sg.setup().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::SchemaTooNew {
                found: 99,
                supported: SCHEMA_VERSION
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade sluicegate"), "{err}");
    assert!(matches!(
        sg.ensure_schema().await,
        Err(Error::SchemaTooNew { .. })
    ));
});

store_test!(commands_before_setup_say_so, |db| {
    let sg = sluicegate::Sluicegate::connect(&db.url).await.unwrap();
    assert!(matches!(
        sg.ensure_schema().await,
        Err(Error::SchemaMissing)
    ));
    let err = sg.migrations().await.unwrap_err();
    assert!(matches!(err, Error::SchemaMissing), "{err}");
});

store_test!(check_constraints_guard_statuses_and_finished_at, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 10)]).await;
    let m = sg
        .queue(&crate::common::fast("m", "update", "items", 5, 5).argument("set", "n = 1"))
        .await
        .unwrap();
    let (jobs, migrations) = match db.backend {
        Backend::Postgres => ("sluicegate.jobs", "sluicegate.migrations"),
        Backend::Sqlite => ("sluicegate_jobs", "sluicegate_migrations"),
    };
    let now = "'2026-01-01T00:00:00Z'";
    // An unknown status.
    let bad_status = format!(
        "INSERT INTO {jobs} (migration_id, min_value, max_value, batch_size, sub_batch_size, status, created_at, updated_at) \
         VALUES ({}, 1, 5, 5, 5, 'Running', {now}, {now})",
        m.id
    );
    assert!(
        db.try_exec(&bad_status).await.is_err(),
        "status must be lowercase and known"
    );
    // finished_at on a running job; a running job with no lease.
    let bad_finish = format!(
        "INSERT INTO {jobs} (migration_id, min_value, max_value, batch_size, sub_batch_size, status, finished_at, lease_expires_at, created_at, updated_at) \
         VALUES ({}, 1, 5, 5, 5, 'running', {now}, {now}, {now}, {now})",
        m.id
    );
    assert!(
        db.try_exec(&bad_finish).await.is_err(),
        "finished_at only when final"
    );
    let no_lease = format!(
        "INSERT INTO {jobs} (migration_id, min_value, max_value, batch_size, sub_batch_size, status, created_at, updated_at) \
         VALUES ({}, 1, 5, 5, 5, 'running', {now}, {now})",
        m.id
    );
    assert!(
        db.try_exec(&no_lease).await.is_err(),
        "running needs a lease"
    );
    // Range and sizes.
    let inverted = format!(
        "UPDATE {migrations} SET min_value = 100 WHERE id = {}",
        m.id
    );
    assert!(
        db.try_exec(&inverted).await.is_err(),
        "min_value <= max_value"
    );
    let sub_too_big = format!(
        "UPDATE {migrations} SET sub_batch_size = 50 WHERE id = {}",
        m.id
    );
    assert!(
        db.try_exec(&sub_too_big).await.is_err(),
        "sub_batch_size <= batch_size"
    );
    let finished_without_time = format!(
        "UPDATE {migrations} SET status = 'finished' WHERE id = {}",
        m.id
    );
    assert!(
        db.try_exec(&finished_without_time).await.is_err(),
        "finished needs finished_at"
    );
});

/// The scripts of versions 1 to 3, as a binary of that time installed them.
fn scripts_before_any_key(backend: Backend) -> Vec<(i64, String)> {
    let raw: [&str; 3] = match backend {
        Backend::Postgres => [
            include_str!("../src/store/schema/postgres_v1.sql"),
            include_str!("../src/store/schema/postgres_v2.sql"),
            include_str!("../src/store/schema/postgres_v3.sql"),
        ],
        Backend::Sqlite => [
            include_str!("../src/store/schema/sqlite_v1.sql"),
            include_str!("../src/store/schema/sqlite_v2.sql"),
            include_str!("../src/store/schema/sqlite_v3.sql"),
        ],
    };
    raw.iter()
        .enumerate()
        .map(|(i, s)| (i as i64 + 1, s.replace("{s}", "sluicegate")))
        .collect()
}

// A tracking schema of version 3 (integer keys only) with a migration in flight: one job
// done, one failed after a committed sub-batch, keys left. `setup` upgrades it in place; the
// migration keeps its history and runs on, each row still migrated exactly once.
store_test!(
    an_integer_migration_queued_before_the_upgrade_runs_on,
    |db| {
        db.create_items("items", &[(1, 3_000)]).await;
        let (t, now) = match db.backend {
            Backend::Postgres => {
                db.exec("CREATE SCHEMA sluicegate").await;
                ("sluicegate.", "now()")
            }
            Backend::Sqlite => ("sluicegate_", "'2026-11-25T12:00:00.000000Z'"),
        };
        // The versions table as the binaries make it.
        let applied_type = match db.backend {
            Backend::Postgres => "timestamptz NOT NULL DEFAULT now()",
            Backend::Sqlite => "TEXT NOT NULL",
        };
        db.exec(&format!(
            "CREATE TABLE {t}schema_versions (version bigint PRIMARY KEY, applied_at {applied_type})"
        ))
        .await;
        for (version, script) in scripts_before_any_key(db.backend) {
            db.exec(&script).await;
            db.exec(&format!(
                "INSERT INTO {t}schema_versions VALUES ({version}, '2026-01-01T00:00:00Z')"
            ))
            .await;
        }
        db.exec(&format!(
            "INSERT INTO {t}migrations (name, job_kind, table_name, column_name, job_arguments,
             min_value, max_value, next_min_value, batch_size, sub_batch_size, pause_ms,
             interval_ms, statement_timeout_ms, lock_timeout_ms, status, target_sub_batch_ms,
             started_at, created_at, updated_at)
         VALUES ('old', 'update', 'items', 'id', '{{\"set\": \"n = n + 1\"}}', 1, 3000, 2001,
             1000, 100, 0, 0, 30000, 5000, 'active', 0, {now}, {now}, {now})"
        ))
        .await;
        db.exec(&format!(
            "INSERT INTO {t}migration_transition_logs (migration_id, previous_status, next_status,
             event, actor, created_at)
         VALUES (1, NULL, 'active', 'queue', 'cli', {now})"
        ))
        .await;
        // Two holds as the old binary logged them: the indicator only in the reason's text.
        db.exec(&format!(
            "INSERT INTO {t}migration_transition_logs (migration_id, previous_status, next_status,
             event, reason, actor, created_at)
         VALUES (1, 'active', 'active', 'hold', 'replica_lag: r1 is 40 MiB behind (max 16 MiB)', 'w-old', {now}),
                (1, 'active', 'active', 'hold', 'something: no indicator of ours', 'w-old', {now})"
        ))
        .await;
        db.exec(&format!(
        "INSERT INTO {t}jobs (migration_id, min_value, max_value, batch_size, sub_batch_size,
             status, attempts, started_at, finished_at, rows_affected, cursor_value, worker,
             created_at, updated_at)
         VALUES (1, 1, 1000, 1000, 100, 'succeeded', 1, {now}, {now}, 1000, 1000, 'w-old', {now}, {now}),
                (1, 1001, 2000, 1000, 100, 'failed', 1, {now}, {now}, 500, 1500, 'w-old', {now}, {now})"
    ))
    .await;
        if db.backend == Backend::Postgres {
            // The job log's partition for this month, as the old binary's setup made it.
            db.exec(
            "DO $$ BEGIN EXECUTE format(
                'CREATE TABLE sluicegate.job_transition_logs_p%s PARTITION OF sluicegate.job_transition_logs
                 FOR VALUES FROM (%L) TO (%L)', to_char(now(), 'YYYYMM'), date_trunc('month', now()),
                 date_trunc('month', now()) + interval '1 month'); END $$",
        )
        .await;
        }
        db.exec(&format!(
        "INSERT INTO {t}job_transition_logs (job_id, migration_id, previous_status, next_status,
             exception_class, exception_message, worker, created_at)
         VALUES (1, 1, 'pending', 'running', NULL, NULL, 'w-old', {now}),
                (1, 1, 'running', 'succeeded', NULL, NULL, 'w-old', {now}),
                (2, 1, 'pending', 'running', NULL, NULL, 'w-old', {now}),
                (2, 1, 'running', 'failed', 'StatementTimeout', 'canceling statement', 'w-old', {now})"
    ))
    .await;
        // What the old binary had done before it stopped.
        db.exec("UPDATE items SET n = 1 WHERE id <= 1500").await;

        let sg = db.sluicegate().await; // runs setup
        assert_eq!(
            sg.store().schema_version().await.unwrap(),
            Some(SCHEMA_VERSION)
        );
        let m = sg.migration("old").await.unwrap();
        assert_eq!(m.key.display_names(), "id");
        assert_eq!(
            (m.min_value.clone(), m.max_value.clone()),
            (Key::int(1), Key::int(3000))
        );
        assert_eq!(m.next_start, Some(Lower::From(Key::int(2001))));
        // Schema v6: a hold row names its indicator in a column, taken from the old reason.
        let holds: Vec<_> = sg
            .migration_history(&m)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.event == MigrationEvent::Hold)
            .map(|r| r.indicator)
            .collect();
        assert_eq!(holds, [Some(Indicator::ReplicaLag), None]);
        let jobs = sg.jobs(&m, None).await.unwrap();
        assert_eq!(jobs[1].cursor, Some(Key::int(1500)));
        let history = sg.job_history(jobs[1].id).await.unwrap();
        assert_eq!(history.len(), 2, "the history is kept");
        assert_eq!(
            history[1].exception_class.as_deref(),
            Some("StatementTimeout")
        );

        // Schema v5: nothing recorded which database it was queued for, so its target is
        // unknown, and no worker runs it (one of another target may have queued it)...
        assert_eq!(m.target, None);
        let run = || async {
            tokio::time::timeout(
                std::time::Duration::from_secs(60),
                sg.worker(sluicegate::WorkerOptions::default())
                    .run_until_idle(),
            )
            .await
            .expect("runs within a minute")
            .unwrap();
        };
        run().await;
        let m = sg.migration("old").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Active);
        assert_eq!(sg.jobs(&m, None).await.unwrap().len(), 2, "no job was made");
        assert!(matches!(
            sg.finalize("old", "test").await,
            Err(sluicegate::Error::WrongTarget { .. })
        ));
        // ... until an operator adopts it for the target it is connected to (a `set` row).
        let adopted = sg
            .adopt_target("old", Some("it was ours".into()), "cli")
            .await
            .unwrap();
        assert_eq!(adopted.target.as_ref(), Some(sg.target_identity()));
        let last = sg.migration_history(&adopted).await.unwrap().pop().unwrap();
        assert_eq!(last.event, sluicegate::MigrationEvent::Set);
        assert!(
            last.reason
                .as_deref()
                .unwrap()
                .starts_with("target: unknown -> "),
            "{last:?}"
        );
        assert!(
            sg.adopt_target("old", None, "cli").await.is_err(),
            "a known target is not adopted again"
        );
        run().await;
        let m = sg.migration("old").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
            0,
            "every row exactly once, across the upgrade"
        );
        let jobs = sg.jobs(&m, None).await.unwrap();
        assert_eq!(jobs.len(), 3);
        assert_eq!(
            jobs[1].attempts, 2,
            "the failed job resumed after its cursor"
        );
        assert_eq!(jobs[1].rows_affected, 1000);
    }
);

/// The scripts of versions 4 to 8, as a binary of version 8 installed them after 1 to 3.
fn scripts_4_to_8(backend: Backend) -> Vec<(i64, String)> {
    let raw: [&str; 5] = match backend {
        Backend::Postgres => [
            include_str!("../src/store/schema/postgres_v4.sql"),
            include_str!("../src/store/schema/postgres_v5.sql"),
            include_str!("../src/store/schema/postgres_v6.sql"),
            include_str!("../src/store/schema/postgres_v7.sql"),
            include_str!("../src/store/schema/postgres_v8.sql"),
        ],
        Backend::Sqlite => [
            include_str!("../src/store/schema/sqlite_v4.sql"),
            include_str!("../src/store/schema/sqlite_v5.sql"),
            include_str!("../src/store/schema/sqlite_v6.sql"),
            include_str!("../src/store/schema/sqlite_v7.sql"),
            include_str!("../src/store/schema/sqlite_v8.sql"),
        ],
    };
    raw.iter()
        .enumerate()
        .map(|(i, s)| (i as i64 + 4, s.replace("{s}", "sluicegate")))
        .collect()
}

// A tracking schema of version 8 with a migration in flight: `setup` adds version 9 (how a key
// is walked: `skip_null_keys`, `distinct_keys`); the migration reads back as a plain walk and
// runs on, and a migration queued after walks a nullable key by distinct values.
store_test!(
    a_version_8_schema_upgrades_to_9_and_its_migrations_walk_as_before,
    |db| {
        db.create_items("items", &[(1, 300)]).await;
        let (t, now) = match db.backend {
            Backend::Postgres => {
                db.exec("CREATE SCHEMA sluicegate").await;
                ("sluicegate.", "now()")
            }
            Backend::Sqlite => ("sluicegate_", "'2026-11-25T12:00:00.000000Z'"),
        };
        let applied_type = match db.backend {
            Backend::Postgres => "timestamptz NOT NULL DEFAULT now()",
            Backend::Sqlite => "TEXT NOT NULL",
        };
        db.exec(&format!(
        "CREATE TABLE {t}schema_versions (version bigint PRIMARY KEY, applied_at {applied_type})"
    ))
        .await;
        let mark = |version: i64| {
            format!("INSERT INTO {t}schema_versions VALUES ({version}, '2026-01-01T00:00:00Z')")
        };
        for (version, script) in scripts_before_any_key(db.backend) {
            db.exec(&script).await;
            db.exec(&mark(version)).await;
        }
        db.exec(&format!(
            "INSERT INTO {t}migrations (name, job_kind, table_name, column_name, job_arguments,
             min_value, max_value, next_min_value, batch_size, sub_batch_size, pause_ms,
             interval_ms, statement_timeout_ms, lock_timeout_ms, status, target_sub_batch_ms,
             started_at, created_at, updated_at)
         VALUES ('old', 'update', 'items', 'id', '{{\"set\": \"n = n + 1\"}}', 1, 300, 1,
             100, 50, 0, 0, 30000, 5000, 'active', 0, {now}, {now}, {now})"
        ))
        .await;
        db.exec(&format!(
            "INSERT INTO {t}migration_transition_logs (migration_id, previous_status, next_status,
             event, actor, created_at)
         VALUES (1, NULL, 'active', 'queue', 'cli', {now})"
        ))
        .await;
        for (version, script) in scripts_4_to_8(db.backend) {
            db.exec(&script).await;
            db.exec(&mark(version)).await;
        }
        let sg = db.sluicegate().await; // runs setup: 8 -> 9
        assert_eq!(sg.store().schema_version().await.unwrap(), Some(9));
        let m = sg.migration("old").await.unwrap();
        assert_eq!(m.key.walk(), sluicegate::KeyWalk::default(), "a plain walk");
        sg.adopt_target("old", None, "cli").await.unwrap();
        crate::common::run_to_end(&sg).await;
        let m = sg.migration("old").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
            300
        );
        assert_eq!(sg.jobs(&m, None).await.unwrap().len(), 3);

        // New columns, new walks: a nullable, non-unique key by distinct values.
        db.exec("CREATE TABLE stages (id bigint PRIMARY KEY, pipeline_id bigint, n integer NOT NULL DEFAULT 0)")
        .await;
        db.exec(
            "INSERT INTO stages (id, pipeline_id) VALUES (1, 7), (2, 7), (3, NULL), (4, 8), (5, 9)",
        )
        .await;
        let mut req =
            crate::common::fast("new", "update", "stages", 2, 2).argument("set", "n = n + 1");
        req.key = Some(vec!["pipeline_id".into()]);
        (req.non_unique_key, req.skip_null_keys, req.distinct) = (true, true, true);
        sg.queue(&req).await.unwrap();
        crate::common::run_to_end(&sg).await;
        let m = sg.migration("new").await.unwrap();
        assert_eq!(
            m.key.walk(),
            sluicegate::KeyWalk {
                skip_nulls: true,
                distinct: true
            }
        );
        assert_eq!(sg.jobs(&m, None).await.unwrap().len(), 2, "values 7, 8 | 9");
        assert_eq!(
            db.scalar("SELECT count(*) FROM stages WHERE n = 1").await,
            4
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM stages WHERE id = 3 AND n = 0")
                .await,
            1
        );
        // The tracking table itself refuses distinct values of a unique key.
        let migrations = format!("{t}migrations");
        assert!(
            db.try_exec(&format!(
                "UPDATE {migrations} SET key_unique = true WHERE name = 'new'"
            ))
            .await
            .is_err(),
            "distinct_keys only with a non-unique key"
        );
    }
);
