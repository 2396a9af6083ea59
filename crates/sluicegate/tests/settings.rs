//! Settings are validated once, the same way, wherever they come from (the library's
//! `QueueRequest` and `set`; the CLI and the HTTP API go through these), nothing is stored that
//! cannot be read back, and a row that cannot be read fails only its own migration.

use std::time::Duration;

use sluicegate::health::{Indicator, Signal};
use sluicegate::store::Backend;
use sluicegate::testing::TestDb;
use sluicegate::{
    store_test, Error, MigrationEvent, MigrationStatus, QueueRequest, SettingsChange, Sluicegate,
    StepOutcome, WorkerOptions,
};

fn request(name: &str, table: &str) -> QueueRequest {
    let mut req = QueueRequest::new(name, "update", table).argument("set", "n = n + 1");
    req.batch_size = 100;
    req.sub_batch_size = 50;
    req.pause_ms = 0;
    req.interval = Duration::ZERO;
    req
}

fn tracking(db: &TestDb, table: &str) -> String {
    match db.backend {
        Backend::Postgres => format!("sluicegate.{table}"),
        Backend::Sqlite => format!("sluicegate_{table}"),
    }
}

/// Rows in the tracking tables: migrations and their log.
async fn written(db: &TestDb) -> (i64, i64) {
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
    )
}

fn refused(result: sluicegate::Result<impl std::fmt::Debug>, expected: &str) {
    match result {
        Err(Error::InvalidSettings(msg)) => {
            assert!(msg.contains(expected), "expected {expected:?} in {msg:?}")
        }
        other => panic!("expected InvalidSettings({expected:?}), got {other:?}"),
    }
}

store_test!(
    non_finite_numbers_and_bad_settings_are_refused_by_queue_and_set,
    |db| {
        db.create_items("a", &[(1, 300)]).await;
        let sg = db.sluicegate().await;
        // Queue: infinity (what `1e400` parses to), NaN, batch size 0, lengths.
        for drift in [f64::INFINITY, "1e400".parse::<f64>().unwrap(), f64::NAN] {
            let mut req = request("a", "a");
            req.health.latency_drift_factor = drift;
            refused(
                sg.queue(&req).await,
                "--max-latency-drift must be a finite number",
            );
            refused(sg.plan(&req).await.map(|_| ()), "finite");
        }
        let mut req = request("a", "a");
        req.batch_size = 0;
        refused(sg.queue(&req).await, "batch size must be at least 1");
        let mut req = request("a", "a");
        req.health.probe = Some(format!("SELECT true{}", " ".repeat(10_001)));
        refused(sg.queue(&req).await, "--health-probe must be at most 10000");
        refused(
            sg.queue(&request(&"x".repeat(201), "a")).await,
            "name must be at most 200",
        );
        // The probe's run-time checks.
        for (probe, says) in [
            ("select 1/0 = 1", "--health-probe failed on a trial run"),
            ("select; drop table a", "--health-probe must be one query"),
        ] {
            let mut req = request("a", "a");
            req.health.probe = Some(probe.into());
            refused(sg.queue(&req).await, says);
        }
        assert_eq!(written(&db).await, (0, 0), "nothing written by a refusal");

        let m = sg.queue(&request("a", "a")).await.unwrap();
        let before = written(&db).await;
        // Set: the same checks, through the same type.
        let change = |f: &dyn Fn(&mut SettingsChange)| {
            let mut c = SettingsChange::default();
            f(&mut c);
            c
        };
        let with_health = |f: &dyn Fn(&mut sluicegate::health::HealthSettings)| {
            let mut h = m.health.clone();
            f(&mut h);
            SettingsChange {
                health: Some(h),
                ..SettingsChange::default()
            }
        };
        for drift in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 0.5] {
            refused(
                sg.set(
                    &m,
                    &with_health(&|h| h.latency_drift_factor = drift),
                    None,
                    "test",
                )
                .await,
                "finite",
            );
        }
        refused(
            sg.set(&m, &change(&|c| c.batch_size = Some(0)), None, "test")
                .await,
            "batch size must be at least 1",
        );
        refused(
            sg.set(
                &m,
                &with_health(&|h| h.probe = Some("select 1/0 = 1".into())),
                None,
                "test",
            )
            .await,
            "--health-probe failed on a trial run",
        );
        refused(
            sg.set(
                &m,
                &with_health(&|h| h.probe = Some("select; drop table a".into())),
                None,
                "test",
            )
            .await,
            "--health-probe must be one query",
        );
        let long = sg
            .set(
                &m,
                &change(&|c| c.pause_ms = Some(5)),
                Some("r".repeat(1_001)),
                "test",
            )
            .await;
        assert!(
            matches!(
                long,
                Err(Error::ReasonTooLong {
                    chars: 1_001,
                    max: 1_000
                })
            ),
            "{long:?}"
        );
        assert_eq!(written(&db).await, before, "nothing written by a refusal");
        assert_eq!(
            db.scalar("SELECT count(*) FROM a").await,
            300,
            "table a intact"
        );
        // Every migration still reads back, and a good change goes through.
        let all = sg.migrations().await.unwrap();
        assert!(all.iter().all(|m| m.unreadable.is_none()), "{all:?}");
        let changed = sg
            .set(
                &m,
                &with_health(&|h| {
                    h.latency_drift_factor = 7.5;
                    h.probe = Some("SELECT count(*) >= 0 FROM a".into());
                }),
                None,
                "test",
            )
            .await
            .unwrap();
        assert_eq!(changed.health.latency_drift_factor, 7.5);
        assert_eq!(
            sg.migration("a").await.unwrap().health,
            changed.health,
            "reads back as written"
        );
    }
);

/// Corrupts a migration's stored health settings by hand, as no entry point may: a number
/// replaced by JSON null (what `inf` used to be stored as).
async fn corrupt(db: &TestDb, name: &str) {
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

store_test!(an_unreadable_row_fails_only_its_migration, |db| {
    for t in ["a", "b", "c", "d"] {
        db.create_items(t, &[(1, 200)]).await;
    }
    let sg = db.sluicegate().await;
    sg.queue(&request("good", "a")).await.unwrap();
    sg.queue(&request("broken", "b")).await.unwrap();
    sg.queue(&request("cancel_me", "c")).await.unwrap();
    corrupt(&db, "broken").await;
    corrupt(&db, "cancel_me").await;

    // Listed, each bad one as unreadable, the good one whole.
    let all = sg.migrations().await.unwrap();
    assert_eq!(all.len(), 3);
    let by = |name: &str| all.iter().find(|m| m.name == name).unwrap().clone();
    assert_eq!(by("good").unreadable, None);
    let broken = by("broken");
    let why = broken.unreadable.clone().expect("unreadable");
    assert!(
        why.contains("health_settings: latency_drift_factor: invalid type: null"),
        "{why}"
    );
    assert_eq!(broken.status, MigrationStatus::Active);
    assert!(broken.table_name.ends_with('b'), "{}", broken.table_name);
    // By id and by name too; its progress is computed.
    assert!(sg.migration("broken").await.unwrap().unreadable.is_some());
    sg.progress(&broken).await.unwrap();
    // `set` refuses it; cancel ends it; queue on another table is not blocked.
    refused(
        sg.set(
            &broken,
            &SettingsChange {
                pause_ms: Some(1),
                ..Default::default()
            },
            None,
            "t",
        )
        .await,
        "unreadable",
    );
    let cancelled = sg.cancel("cancel_me", None, "test").await.unwrap();
    assert_eq!(cancelled.status, MigrationStatus::Cancelled);
    sg.queue(&request("other", "d")).await.unwrap();

    // A worker fails the broken one with its class and finishes the others.
    let worker = sg.worker(WorkerOptions {
        name: "w".into(),
        concurrency: 1,
        ..WorkerOptions::default()
    });
    worker.run_until_idle().await.unwrap();
    let status = |name: &str| {
        let sg = sg.clone();
        let name = name.to_owned();
        async move { sg.migration(&name).await.unwrap().status }
    };
    assert_eq!(status("good").await, MigrationStatus::Finished);
    assert_eq!(status("other").await, MigrationStatus::Finished);
    assert_eq!(status("broken").await, MigrationStatus::Failed);
    assert_eq!(status("cancel_me").await, MigrationStatus::Cancelled);
    let log = sg.migration_history(&broken).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(last.event, MigrationEvent::Fail);
    assert_eq!(last.exception_class.as_deref(), Some("UnreadableMigration"));
    assert!(
        last.exception_message
            .as_deref()
            .is_some_and(|m| m.contains("health_settings")),
        "{last:?}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM b WHERE n <> 0").await,
        0,
        "b untouched"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM c WHERE n <> 0").await,
        0,
        "c untouched"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM a WHERE n = 1").await, 200);
    assert_eq!(db.scalar("SELECT count(*) FROM d WHERE n = 1").await, 200);
});

/// A role made for the test: LOGIN, nothing but what `grants` gives it. Dropped by the caller.
async fn ordinary_role(db: &TestDb, grants: &[&str]) -> (String, String) {
    let role = format!("sg_app_{}_{}", std::process::id(), rand_suffix());
    db.exec(&format!("CREATE ROLE {role} LOGIN")).await;
    for g in grants {
        db.exec(&g.replace("{role}", &role)).await;
    }
    let url = db
        .url
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    assert_ne!(url, db.url, "the test URL names user postgres: {}", db.url);
    (role, url)
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

/// As an ordinary application role (no `pg_read_all_stats`, nothing granted beyond its
/// table), on a target separate from the tracking tables: the protections that are off are
/// named with their grant before anything runs; the role's own idle-in-transaction session
/// stops `long_transactions`; `--require-health` holds the migration, with the reason in its
/// log, until it is turned off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_role_is_told_which_protections_are_off_and_require_health_holds() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    db.create_items("items", &[(1, 500)]).await;
    let (role, app_url) = ordinary_role(&db, &["GRANT SELECT, UPDATE ON items TO {role}"]).await;
    let mut opts = sluicegate::ConnectOptions::new(&db.url);
    opts.target_url = Some(app_url.clone());
    let sg = Sluicegate::connect_with(opts).await.unwrap();
    sg.setup().await.unwrap();

    // Before anything runs: the plan names autovacuum and the exact grant.
    let mut req = request("held", "items");
    req.health.max_transaction_age_ms = 2_000;
    req.health.hold_ms = 200;
    req.health.require_health = true;
    let plan = sg.plan(&req).await.unwrap();
    let grant = format!("GRANT pg_read_all_stats TO {role}");
    let auto = plan
        .protections_off
        .iter()
        .find(|r| r.indicator == Indicator::Autovacuum)
        .unwrap_or_else(|| panic!("autovacuum is off: {:?}", plan.protections_off));
    assert_eq!(auto.grant.as_deref(), Some(grant.as_str()), "{auto:?}");
    assert!(
        !plan
            .protections_off
            .iter()
            .any(|r| r.indicator == Indicator::ReplicaLag),
        "no replica streams from this server: that much the role can see: {:?}",
        plan.protections_off
    );
    let m = sg.queue_plan(&plan).await.unwrap();

    // --require-health: held, with the reason in the log and in progress; no row changed.
    let worker = sg.worker(WorkerOptions {
        name: "w".into(),
        ..WorkerOptions::default()
    });
    let mut l = worker.new_loop();
    let reason = match l.step().await.unwrap() {
        StepOutcome::Held { reason, .. } => reason,
        other => panic!("expected a hold, got {other:?}"),
    };
    assert!(
        reason.starts_with("autovacuum: unknown: not readable by role")
            && reason.contains(&grant)
            && reason.contains("--require-health"),
        "{reason}"
    );
    let log = sg.migration_history(&m).await.unwrap();
    let hold = log
        .iter()
        .rev()
        .find(|r| r.event == MigrationEvent::Hold)
        .unwrap();
    assert_eq!(hold.reason.as_deref(), Some(reason.as_str()));
    let held = sg.migration("held").await.unwrap();
    assert_eq!(
        sg.progress(&held).await.unwrap().hold_reason.as_deref(),
        Some(reason.as_str())
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n <> 0").await,
        0
    );

    // The role's own idle-in-transaction session, past --max-transaction-age: a stop.
    let mut idle = <sqlx::PgConnection as sqlx::Connection>::connect(&app_url)
        .await
        .unwrap();
    sqlx::Executor::execute(&mut idle, "BEGIN; SELECT txid_current()")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reading = loop {
        let readings = sg.health(&held).await.unwrap();
        let r = readings
            .into_iter()
            .find(|r| r.indicator == Indicator::LongTransactions)
            .unwrap();
        if r.signal == Signal::Stop || std::time::Instant::now() > deadline {
            break r;
        }
    };
    assert_eq!(reading.signal, Signal::Stop, "{reading:?}");
    assert!(
        reading.reading.contains("idle in transaction") && reading.reading.contains(&role),
        "{reading:?}"
    );
    sqlx::Executor::execute(&mut idle, "ROLLBACK")
        .await
        .unwrap();
    drop(idle);

    // Turned off, the migration runs to the end.
    let mut health = held.health.clone();
    health.require_health = false;
    sg.set(
        &held,
        &SettingsChange {
            health: Some(health),
            ..SettingsChange::default()
        },
        Some("accept unknown indicators".into()),
        "test",
    )
    .await
    .unwrap();
    drop(l);
    worker.run_until_idle().await.unwrap();
    assert_eq!(
        sg.migration("held").await.unwrap().status,
        MigrationStatus::Finished
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        500
    );
    drop(sg);
    db.exec(&format!("DROP OWNED BY {role}")).await;
    db.exec(&format!("DROP ROLE {role}")).await;
}

/// On the health primary (a streaming replica attached), an ordinary role sees that a
/// replica streams but not its lag: `replica_lag` reads unknown with the grant, never a
/// made-up normal, and is listed as a protection off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_role_sees_a_replica_stream_but_not_its_lag() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_HEALTH_PG_URL");
    let db = TestDb::postgres_health().await;
    db.create_items("items", &[(1, 100)]).await;
    let (role, app_url) = ordinary_role(&db, &["GRANT SELECT, UPDATE ON items TO {role}"]).await;
    let mut opts = sluicegate::ConnectOptions::new(&db.url);
    opts.target_url = Some(app_url);
    let sg = Sluicegate::connect_with(opts).await.unwrap();
    sg.setup().await.unwrap();
    let off = sg
        .protections_off("items", &Default::default())
        .await
        .unwrap();
    let lag = off
        .iter()
        .find(|r| r.indicator == Indicator::ReplicaLag)
        .unwrap_or_else(|| panic!("replica_lag is off: {off:?}"));
    assert_eq!(lag.signal, Signal::Unknown);
    assert!(
        lag.reading
            .starts_with("1 replica streaming from this server; the rest is not readable by role"),
        "{lag:?}"
    );
    assert_eq!(
        lag.grant.as_deref(),
        Some(format!("GRANT pg_read_all_stats TO {role}").as_str())
    );
    // As the superuser the same replica's lag is read: normal.
    let admin = db.sluicegate().await;
    let off = admin
        .protections_off("items", &Default::default())
        .await
        .unwrap();
    assert!(off.is_empty(), "{off:?}");
    drop((sg, admin));
    db.exec(&format!("DROP OWNED BY {role}")).await;
    db.exec(&format!("DROP ROLE {role}")).await;
}
