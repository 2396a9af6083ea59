//! Errors belong to the migration they were met on (issue 18, item 9): a poisoned migration
//! fails with its class in its log, and the same single worker goes on to finish another
//! migration on another table — one `run_until_idle` call, no restart.

use std::time::Duration;

use sluicegate::store::Backend;
use sluicegate::testing::TestDb;
use sluicegate::{skip_without_postgres, MigrationStatus, Sluicegate, StepOutcome};

use crate::common::*;

/// Queues `poison` on table `a` and `other` on table `b` (`n = n + 1`, jobs of 100 keys).
async fn two_migrations(db: &TestDb, scope: Option<&str>) -> Sluicegate {
    db.create_items("a", &[(1, 3_000)]).await;
    db.create_items("b", &[(1, 500)]).await;
    let sg = db.sluicegate().await;
    let mut poison = fast("poison", "update", "a", 100, 50).argument("set", "n = n + 1");
    poison.scope = scope.map(str::to_owned);
    sg.queue(&poison).await.unwrap();
    sg.queue(&fast("other", "update", "b", 100, 50).argument("set", "n = n + 1"))
        .await
        .unwrap();
    sg
}

/// One step of one loop: a job of `poison` runs (it is claimed first: queued first).
async fn one_poison_job(sg: &Sluicegate) {
    let mut l = worker(sg, "w").new_loop();
    let poison = sg.migration("poison").await.unwrap();
    match l.step().await.unwrap() {
        StepOutcome::Ran { migration_id, .. } => assert_eq!(migration_id, poison.id),
        other => panic!("a job of poison ran first: {other:?}"),
    }
    l.finish().await.unwrap();
}

/// The poisoned migration failed, with `class` on its `fail` row and `said` in its message;
/// the other one finished, every row of `b` changed once.
async fn poison_failed_other_finished(db: &TestDb, sg: &Sluicegate, class: &str, said: &str) {
    let poison = sg.migration("poison").await.unwrap();
    assert_eq!(poison.status, MigrationStatus::Failed, "{poison:?}");
    let history = sg.migration_history(&poison).await.unwrap();
    let fail = history
        .iter()
        .rev()
        .find(|r| r.next_status == MigrationStatus::Failed)
        .expect("a fail row");
    assert_eq!(fail.exception_class.as_deref(), Some(class), "{fail:?}");
    let message = fail.exception_message.as_deref().unwrap_or("");
    assert!(message.contains(said), "{said:?} in {message:?}");
    let other = sg.migration("other").await.unwrap();
    assert_eq!(other.status, MigrationStatus::Finished, "{other:?}");
    assert_eq!(db.scalar("SELECT count(*) FROM b WHERE n <> 1").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_column_whose_type_changed_fails_its_migration_and_the_worker_goes_on() {
    skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    let sg = two_migrations(&db, None).await;
    one_poison_job(&sg).await;
    // The stored cursors are integers; the column is text now.
    db.exec("ALTER TABLE a ALTER COLUMN id TYPE text").await;
    // One worker, one call: it must not end with an error (no restart).
    run_to_end(&sg).await;
    poison_failed_other_finished(
        &db,
        &sg,
        "UndefinedFunction",
        "operator does not exist: text >",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_scope_function_fails_its_migration_and_the_worker_goes_on() {
    skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    db.exec("CREATE FUNCTION keep(bigint) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT $1 % 2 = 0'")
        .await;
    let sg = two_migrations(&db, Some("keep(id)")).await;
    one_poison_job(&sg).await;
    db.exec("DROP FUNCTION keep(bigint)").await;
    run_to_end(&sg).await;
    poison_failed_other_finished(
        &db,
        &sg,
        "UndefinedFunction",
        "function keep(bigint) does not exist",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_value_in_a_sqlite_integer_key_fails_its_migration_and_the_worker_goes_on() {
    let db = TestDb::sqlite().await;
    assert_eq!(db.backend, Backend::Sqlite);
    let sg = two_migrations(&db, None).await;
    // `id bigint PRIMARY KEY` is not the rowid: SQLite keeps 100.5 as a REAL. The first job
    // ends at 100; the walk for the next one reads 100.5 first.
    db.exec("INSERT INTO a (id) VALUES (100.5)").await;
    run_to_end(&sg).await;
    poison_failed_other_finished(&db, &sg, "DecodeError", "a key read by the walk: [100.5]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_walk_runs_under_the_migrations_statement_timeout_not_the_databases() {
    skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    // A sparse scope (about one row in 8,000) that costs an md5 per row: a walk to the next
    // 100 matching keys reads the whole table, far longer than the database's default of
    // 100 ms.
    db.create_items("sparse", &[(1, 500_000)]).await;
    let scope = "md5(email) < '0008'";
    let matching = db
        .scalar(&format!("SELECT count(*) FROM sparse WHERE {scope}"))
        .await;
    assert!(matching > 0 && matching < 100, "{matching}");
    let sg = db.sluicegate().await;
    let mut req = fast("sparse", "update", "sparse", 100, 50).argument("set", "n = n + 1");
    req.scope = Some(scope.into());
    sg.queue(&req).await.unwrap();
    let database = db.url.rsplit('/').next().unwrap().to_owned();
    db.exec(&format!(
        "ALTER DATABASE {database} SET statement_timeout = '100ms'"
    ))
    .await;
    // A new handle: its connections start under the database's default.
    let sg = Sluicegate::connect(&db.url).await.unwrap();
    let timed_out = {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query(&format!("SELECT count(*) FROM sparse WHERE {scope}"))
            .fetch_one(&pool)
            .await
            .err()
            .map(|e| sluicegate::Failure::from_sqlx(&e).class)
    };
    // The premise: under the database's default, a read of the table times out.
    assert_eq!(timed_out.as_deref(), Some("StatementTimeout"));
    tokio::time::timeout(Duration::from_secs(120), worker(&sg, "w").run_until_idle())
        .await
        .expect("ends")
        .expect("the worker does not stop");
    let m = sg.migration("sparse").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished, "{m:?}");
    assert_eq!(
        db.scalar("SELECT count(*) FROM sparse WHERE n = 1").await,
        matching
    );
}
