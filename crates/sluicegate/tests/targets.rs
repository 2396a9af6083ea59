//! Issue 18, items 4 and 7: a migration knows the database its table lives in (a worker runs
//! only its own target's migrations, duplicates are per target), and key bounds are read as
//! the target database reads them (its DateStyle and TimeZone), kept in canonical form.

use sluicegate::store::Backend;
use sluicegate::testing::TestDb;
use sluicegate::{store_test, ConnectOptions, Error, MigrationStatus, Sluicegate};

use crate::common::*;

/// Another fresh database of the same engine.
async fn another(db: &TestDb) -> TestDb {
    match db.backend {
        Backend::Postgres => TestDb::postgres().await,
        Backend::Sqlite => TestDb::sqlite().await,
    }
}

/// A handle on the tracking database `tracking` whose target is `target`.
async fn on_target(tracking: &TestDb, target: &TestDb) -> Sluicegate {
    let mut opts = ConnectOptions::new(&tracking.url);
    opts.target_url = Some(target.url.clone());
    let sg = Sluicegate::connect_with(opts).await.unwrap();
    sg.setup().await.unwrap();
    sg
}

/// Rows of `items` whose `n` is not 0.
async fn changed(db: &TestDb) -> i64 {
    db.scalar("SELECT count(*) FROM items WHERE n <> 0").await
}

// Symptom 1: queued with --target-url A, the migration was run by a worker connected to B, on
// B's table. Now B's worker leaves it alone (and says so), and A's runs it on A.
store_test!(a_worker_runs_only_the_migrations_of_its_own_target, |db| {
    let (a, b) = (another(&db).await, another(&db).await);
    a.create_items("items", &[(1, 500)]).await;
    b.create_items("items", &[(1, 500)]).await;
    let (sg_a, sg_b) = (on_target(&db, &a).await, on_target(&db, &b).await);
    assert_ne!(sg_a.target_identity().id, sg_b.target_identity().id);
    let m = sg_a
        .queue(&fast("bump", "update", "items", 100, 50).argument("set", "n = n + 1"))
        .await
        .unwrap();
    let target = m.target.clone().expect("a migration knows its target");
    assert_eq!(&target, sg_a.target_identity());
    assert!(!target.display.contains("password"));

    // B's worker: nothing of its own to do, so it ends; the migration is untouched.
    run_to_end(&sg_b).await;
    assert_eq!(changed(&b).await, 0, "B's table is not A's migration's");
    assert_eq!(changed(&a).await, 0);
    let after = sg_b.migration("bump").await.unwrap();
    assert_eq!(after.status, MigrationStatus::Active);
    assert!(sg_b.jobs(&after, None).await.unwrap().is_empty());
    let skipped = sg_b.other_targets_runnable().await.unwrap();
    assert_eq!(
        skipped.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![m.id],
        "B's worker names what it leaves alone"
    );
    assert!(sg_a.other_targets_runnable().await.unwrap().is_empty());

    // A's worker runs it on A.
    run_to_end(&sg_a).await;
    let m = sg_a.migration("bump").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    assert_eq!(
        a.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        500
    );
    assert_eq!(changed(&b).await, 0);
});

// Symptom 2: a worker started with no --target-url (its target: the tracking database, which
// has no such table) marked another target's migration `failed` (UndefinedTable). Now it
// leaves it active, and refuses to finalize it, naming both targets.
store_test!(
    a_worker_without_a_target_url_does_not_fail_another_targets_migration,
    |db| {
        let a = another(&db).await;
        a.create_items("items", &[(1, 300)]).await;
        let sg_a = on_target(&db, &a).await;
        sg_a.queue(&fast("remote", "update", "items", 100, 50).argument("set", "n = n + 1"))
            .await
            .unwrap();
        let local = db.sluicegate().await;
        assert_ne!(local.target_identity().id, sg_a.target_identity().id);
        run_to_end(&local).await;
        let m = local.migration("remote").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Active, "not failed: {m:?}");
        let history = local.migration_history(&m).await.unwrap();
        assert_eq!(history.len(), 1, "only its queue row: {history:?}");
        let err = local.finalize("remote", "test").await.unwrap_err();
        assert!(matches!(err, Error::WrongTarget { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&sg_a.target_identity().display), "{text}");
        assert!(text.contains(&local.target_identity().display), "{text}");
        assert_eq!(
            local.migration("remote").await.unwrap().status,
            MigrationStatus::Active,
            "finalize wrote nothing"
        );
        assert_eq!(changed(&a).await, 0);
        run_to_end(&sg_a).await;
        assert_eq!(changed(&a).await, 300);
    }
);

// Symptom 3: the same migration queued for B was refused as a duplicate of A's. Now a
// definition is a duplicate only on the same target, in the check and in the unique index.
store_test!(the_same_definition_may_be_queued_once_per_target, |db| {
    let (a, b) = (another(&db).await, another(&db).await);
    a.create_items("items", &[(1, 200)]).await;
    b.create_items("items", &[(1, 300)]).await;
    let (sg_a, sg_b) = (on_target(&db, &a).await, on_target(&db, &b).await);
    let req = |name: &str| fast(name, "update", "items", 100, 50).argument("set", "n = n + 1");
    // A plan made before anything is queued, to insert below the checks later.
    let early = sg_a.plan(&req("direct")).await.unwrap();
    sg_a.queue(&req("on_a")).await.unwrap();
    let on_b = sg_b.queue(&req("on_b")).await.unwrap();
    assert_eq!(on_b.target.as_ref(), Some(sg_b.target_identity()));
    let err = sg_a.queue(&req("again_on_a")).await.unwrap_err();
    assert!(matches!(err, Error::DuplicateMigration(_)), "{err}");
    assert!(err.to_string().contains("on_a"), "{err}");
    // The index says the same, below the check: the plan of a duplicate inserted directly.
    let plan = sg_b.plan(&req("on_b_twice")).await;
    assert!(
        matches!(plan, Err(Error::DuplicateMigration(_))),
        "{plan:?}"
    );
    let err = sg_a
        .store()
        .migration_insert(&early.migration)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateMigration(_)), "{err}");
    let mut elsewhere = early.migration.clone();
    elsewhere.target.id = format!("{}-elsewhere", elsewhere.target.id);
    let inserted = sg_a.store().migration_insert(&elsewhere).await.unwrap();
    sg_a.cancel(&inserted.id.to_string(), None, "test")
        .await
        .unwrap();

    run_to_end(&sg_a).await;
    run_to_end(&sg_b).await;
    assert_eq!(
        a.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        200
    );
    assert_eq!(
        b.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        300
    );
    for name in ["on_a", "on_b"] {
        assert_eq!(
            sg_a.migration(name).await.unwrap().status,
            MigrationStatus::Finished
        );
    }
});

// The identity is the database's, not the URL's: two spellings of one target are one target.
store_test!(a_target_is_the_same_by_any_url, |db| {
    let sg = db.sluicegate().await;
    let other_spelling = match db.backend {
        Backend::Postgres => db.url.replace("127.0.0.1", "localhost"),
        Backend::Sqlite => {
            let path = db.url.trim_start_matches("sqlite://");
            let dir = std::path::Path::new(path).parent().unwrap();
            format!("sqlite://{}/./test.db", dir.display())
        }
    };
    assert_ne!(other_spelling, db.url);
    let again = Sluicegate::connect(&other_spelling).await.unwrap();
    assert_eq!(again.target_identity().id, sg.target_identity().id);
    let prefix = match db.backend {
        Backend::Postgres => "postgres:",
        Backend::Sqlite => "sqlite:/",
    };
    assert!(
        sg.target_identity().id.starts_with(prefix),
        "{:?}",
        sg.target_identity()
    );
});

/// A PostgreSQL database whose own settings read `01/02/2024` as 1 February and times in
/// Kolkata (UTC+05:30), unlike our sessions (ISO, UTC).
async fn dmy_kolkata() -> TestDb {
    let db = TestDb::postgres().await;
    let name: String = match &db.pool {
        sluicegate::testing::RawPool::Postgres(p) => {
            sqlx::query_scalar("SELECT current_database()")
                .fetch_one(p)
                .await
                .unwrap()
        }
        _ => unreachable!(),
    };
    db.exec(&format!(
        "ALTER DATABASE \"{name}\" SET DateStyle = 'SQL, DMY'"
    ))
    .await;
    db.exec(&format!(
        "ALTER DATABASE \"{name}\" SET TimeZone = 'Asia/Kolkata'"
    ))
    .await;
    db
}

// Item 7, dates: `--min-value 01/02/2024` on a database whose DateStyle is `SQL, DMY` is
// 1 February, as psql reads it (not 2 January, as our ISO, MDY sessions would), and is kept
// and shown as `2024-02-01`: February's 29 days change, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_bounds_are_read_in_the_databases_own_date_style() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = dmy_kolkata().await;
    db.exec(
        "CREATE TABLE days (day date PRIMARY KEY, n integer NOT NULL DEFAULT 0);
         INSERT INTO days (day) SELECT d::date FROM generate_series('2024-01-01'::date, '2024-03-31'::date, interval '1 day') d",
    )
    .await;
    let sg = db.sluicegate().await;
    let mut req = fast("feb", "update", "days", 10, 5).argument("set", "n = n + 1");
    // As the issue found it: an ambiguous start, an ISO end (read the same by any DateStyle).
    req.min_value = Some("01/02/2024".into());
    req.max_value = Some("2024-02-29".into());
    let mut dmy_end = req.clone();
    dmy_end.max_value = Some("29/02/2024".into());
    for req in [&req, &dmy_end] {
        let plan = sg.plan(req).await.unwrap();
        assert_eq!(
            (
                plan.migration.min_value.to_string(),
                plan.migration.max_value.to_string()
            ),
            ("2024-02-01".to_owned(), "2024-02-29".to_owned()),
            "the dry run shows the canonical bounds"
        );
    }
    let m = sg.queue(&req).await.unwrap();
    assert_eq!(m.min_value.to_json(), r#"["2024-02-01"]"#);
    assert_eq!(m.max_value.to_json(), r#"["2024-02-29"]"#);
    run_to_end(&sg).await;
    assert_eq!(
        sg.migration("feb").await.unwrap().status,
        MigrationStatus::Finished
    );
    assert_eq!(db.scalar("SELECT count(*) FROM days WHERE n = 1").await, 29);
    assert_eq!(
        db.scalar("SELECT count(*) FROM days WHERE n = 1 AND extract(month FROM day) <> 2")
            .await,
        0
    );
    // A value the database cannot read is refused, naming the flag.
    let mut bad = fast("bad", "update", "days", 10, 5).argument("set", "n = n + 1");
    bad.min_value = Some("31/31/2024".into());
    let err = sg.plan(&bad).await.unwrap_err();
    assert!(matches!(err, Error::InvalidSettings(_)), "{err}");
    assert!(err.to_string().contains("--min-value"), "{err}");
}

// Item 7, times: with the database's TimeZone Asia/Kolkata, `01/02/2024 00:00` is
// 2024-01-31 18:30 UTC, kept as `2024-01-31 18:30:00+00`; the walk over the stored cursors
// (canonical, read the same by every session) changes exactly the hours between the bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamptz_bounds_are_read_in_the_databases_own_time_zone() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = dmy_kolkata().await;
    db.exec(
        "CREATE TABLE ticks (at timestamptz PRIMARY KEY, n integer NOT NULL DEFAULT 0);
         INSERT INTO ticks (at) SELECT g FROM generate_series('2024-01-31 00:00+00'::timestamptz, '2024-02-01 23:00+00'::timestamptz, interval '1 hour') g",
    )
    .await;
    let sg = db.sluicegate().await;
    let mut req = fast("ticks", "update", "ticks", 4, 2).argument("set", "n = n + 1");
    req.min_value = Some("01/02/2024 00:00".into());
    req.max_value = Some("01/02/2024 06:00".into());
    let m = sg.queue(&req).await.unwrap();
    assert_eq!(m.min_value.to_string(), "2024-01-31 18:30:00+00");
    assert_eq!(m.max_value.to_string(), "2024-02-01 00:30:00+00");
    run_to_end(&sg).await;
    let m = sg.migration("ticks").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    // 19:00, 20:00, ..., 00:00 UTC.
    assert_eq!(db.scalar("SELECT count(*) FROM ticks WHERE n = 1").await, 6);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM ticks WHERE n = 1 AND at NOT BETWEEN '2024-01-31 19:00+00' AND '2024-02-01 00:00+00'"
        )
        .await,
        0
    );
    assert_eq!(db.scalar("SELECT count(*) FROM ticks WHERE n > 1").await, 0);
    // Every cursor the walk stored is in canonical form.
    for job in sg.jobs(&m, None).await.unwrap() {
        for key in [&job.min_value, &job.max_value] {
            let text = key.to_string();
            assert!(text.ends_with("+00") && text.starts_with("2024-"), "{text}");
        }
    }
}

// The same for an ordinary role, which may not read the server's configuration files
// (pg_file_settings): the database's own settings still apply, and a role's own setting
// (ALTER ROLE ... IN DATABASE) comes before the database's, as PostgreSQL orders them. With
// EXECUTE on pg_control_system() revoked, the target is known by the server's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_role_reads_bounds_with_its_own_settings() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = dmy_kolkata().await;
    let dbname = db.url.rsplit('/').next().unwrap().to_owned();
    let role = format!("sg_dmy_{}", std::process::id());
    db.exec(&format!("DROP ROLE IF EXISTS {role}")).await;
    db.exec(&format!("CREATE ROLE {role} LOGIN")).await;
    db.exec(&format!("GRANT CREATE ON DATABASE \"{dbname}\" TO {role}"))
        .await;
    db.exec(&format!("GRANT CREATE ON SCHEMA public TO {role}"))
        .await;
    db.exec(&format!(
        "ALTER ROLE {role} IN DATABASE \"{dbname}\" SET TimeZone = 'America/New_York'"
    ))
    .await;
    db.exec("CREATE TABLE ticks (at timestamptz PRIMARY KEY, n integer NOT NULL DEFAULT 0)")
        .await;
    db.exec(&format!("ALTER TABLE ticks OWNER TO {role}")).await;
    let url = db
        .url
        .replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    // A DBA may revoke pg_control_system(): the target is then known by the server's address.
    db.exec("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_control_system() FROM PUBLIC")
        .await;
    let sg = Sluicegate::connect(&url).await.unwrap();
    sg.setup().await.unwrap();
    let id = &sg.target_identity().id;
    assert!(
        id.starts_with("postgres:127.0.0.1:") && id.ends_with(&format!("/{dbname}")),
        "{id}"
    );
    let mut req = fast("ny", "update", "ticks", 4, 2).argument("set", "n = n + 1");
    // DMY from the database, New York (UTC-5 in February) from the role.
    req.min_value = Some("01/02/2024 00:00".into());
    req.max_value = Some("02/02/2024 00:00".into());
    let plan = sg.plan(&req).await.unwrap();
    assert_eq!(
        plan.migration.min_value.to_string(),
        "2024-02-01 05:00:00+00"
    );
    assert_eq!(
        plan.migration.max_value.to_string(),
        "2024-02-02 05:00:00+00"
    );
    drop(sg);
    drop(plan);
    db.exec(&format!("DROP OWNED BY {role} CASCADE")).await;
    db.exec(&format!("DROP ROLE {role}")).await;
}
