//! Bad input is refused with a clear error, before anything is written.

use sluicegate::store::Backend;
use sluicegate::testing::TestDb;
use sluicegate::{store_test, Error};

use crate::common::{fast, run_to_end};

async fn migrations_count(db: &TestDb) -> i64 {
    let table = match db.backend {
        Backend::Postgres => "sluicegate.migrations",
        Backend::Sqlite => "sluicegate_migrations",
    };
    db.scalar(&format!("SELECT count(*) FROM {table}")).await
}

const HOSTILE: &str = "x\"; DROP TABLE t; --";

store_test!(a_hostile_table_name_is_refused_and_nothing_changes, |db| {
    let sg = db.sluicegate().await;
    db.create_items("t", &[(1, 10)]).await;
    let err = sg
        .queue(&fast("evil", "update", HOSTILE, 10, 10).argument("set", "n = 1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownTable { table, .. } if table == HOSTILE),
        "{err}"
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM t").await,
        10,
        "t still exists"
    );
    assert_eq!(migrations_count(&db).await, 0);
});

store_test!(a_hostile_table_name_that_exists_is_safely_quoted, |db| {
    let sg = db.sluicegate().await;
    db.create_items("t", &[(1, 10)]).await;
    db.create_items(HOSTILE, &[(1, 10)]).await;
    let m = sg
        .queue(&fast("quoted", "update", HOSTILE, 5, 5).argument("set", "n = n + 1"))
        .await
        .unwrap();
    crate::common::run_to_end(&sg).await;
    assert_eq!(
        sg.migration(&m.name).await.unwrap().status,
        sluicegate::MigrationStatus::Finished
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM t WHERE n = 0").await,
        10,
        "t untouched"
    );
    let q = sluicegate::ident::quote(HOSTILE);
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {q} WHERE n = 1"))
            .await,
        10
    );
});

store_test!(bad_settings_are_clear_errors_and_write_nothing, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 10)]).await;
    let base = || fast("m", "update", "items", 10, 5).argument("set", "n = 1");
    let cases: Vec<(sluicegate::QueueRequest, &str)> = vec![
        (
            {
                let mut r = base();
                r.batch_size = 0;
                r
            },
            "batch size must be at least 1 (got 0)",
        ),
        (
            {
                let mut r = base();
                r.batch_size = -5;
                r
            },
            "batch size must be at least 1 (got -5)",
        ),
        (
            {
                let mut r = base();
                r.sub_batch_size = 0;
                r
            },
            "sub-batch size must be at least 1",
        ),
        (
            {
                let mut r = base();
                r.sub_batch_size = 20;
                r
            },
            "sub-batch size 20 is larger than batch size 10",
        ),
        (
            {
                let mut r = base();
                r.table = "nope".into();
                r
            },
            "unknown table \"nope\"",
        ),
        (
            {
                let mut r = base();
                r.key = Some(vec!["nope".into()]);
                r
            },
            "unknown column \"nope\" in table",
        ),
        (
            {
                let mut r = base();
                r.key = Some(vec!["email".into()]);
                r
            },
            "may be NULL: rows where it is NULL would never be visited",
        ),
        (
            {
                let mut r = base();
                r.min_value = Some("9".into());
                r.max_value = Some("3".into());
                r
            },
            "greater than --max-value",
        ),
        (
            {
                let mut r = base();
                r.job_kind = "nope".into();
                r
            },
            "unknown job kind \"nope\"",
        ),
        (
            fast("m", "update", "items", 10, 5),
            "argument \"set\" is required",
        ),
        (
            fast("m", "update", "items", 10, 5).argument("set", "n = = 1"),
            "--set is not a list of assignments",
        ),
        (
            fast("m", "update", "items", 10, 5).argument("set", "missing_column = 1"),
            "failed on a trial sub-batch",
        ),
        (
            fast("m", "copy-column", "items", 10, 5)
                .argument("from", "email")
                .argument("to", "nope"),
            "failed on a trial sub-batch",
        ),
        (
            fast("m", "sql", "items", 10, 5).argument("sql", "UPDATE items SET n = 1"),
            "use {range} (its key range, any key) or $1 and $2",
        ),
        (
            {
                let mut r = base();
                r.name = " ".into();
                r
            },
            "the migration name is empty",
        ),
    ];
    for (req, expected) in cases {
        let err = sg.queue(&req).await.expect_err(expected);
        assert!(
            err.to_string().contains(expected),
            "expected {expected:?} in {err}"
        );
        assert_eq!(
            migrations_count(&db).await,
            0,
            "{expected}: nothing written"
        );
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n <> 0").await,
        0,
        "trial rolled back"
    );
});

store_test!(a_migration_queued_twice_is_refused, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 10)]).await;
    let req = fast("twice", "update", "items", 10, 5).argument("set", "n = 1");
    let first = sg.queue(&req).await.unwrap();
    let err = sg.queue(&req).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "a migration named \"twice\" is already queued: migration 1 (\"twice\", active); a finished or cancelled one's name may be used again"
    );
    // The dry run makes the same check.
    assert!(matches!(
        sg.plan(&req).await,
        Err(Error::DuplicateMigration(_))
    ));
    // Same configuration under another name: refused too (GitLab's unique key), naming it.
    let mut renamed = req.clone();
    renamed.name = "again".into();
    let err = sg.queue(&renamed).await.unwrap_err();
    assert!(matches!(err, Error::DuplicateMigration(_)), "{err}");
    assert!(
        err.to_string().contains(
            "\"again\" would do what migration 1 (\"twice\", active) already does (same kind, table, key, arguments and scope)"
        ),
        "{err}"
    );
    assert_eq!(migrations_count(&db).await, 1);
    // Cancelled, its name and definition may be queued again: a new id; the old one stays
    // readable by id, the name finds the newest.
    sg.apply("twice", sluicegate::MigrationEvent::Cancel, None, "cli")
        .await
        .unwrap();
    let second = sg.queue(&req).await.unwrap();
    assert_ne!(second.id, first.id);
    assert_eq!(sg.migration("twice").await.unwrap().id, second.id);
    let old = sg.migration(&first.id.to_string()).await.unwrap();
    assert_eq!(old.status, sluicegate::MigrationStatus::Cancelled);
    assert_eq!(migrations_count(&db).await, 2);
});

store_test!(an_unknown_migration_is_a_clear_error, |db| {
    let sg = db.sluicegate().await;
    assert_eq!(
        sg.migration("42").await.unwrap_err().to_string(),
        "no migration \"42\""
    );
    assert_eq!(sg.job_history(7).await.unwrap_err().to_string(), "no job 7");
});

#[tokio::test]
async fn bad_urls_are_clear_errors() {
    let err = sluicegate::Sluicegate::connect("mysql://x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expected postgres://"), "{err}");
    let err = sluicegate::Sluicegate::connect("postgres://u:secret@127.0.0.1:1/db")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("connecting to postgres://u:***@127.0.0.1:1/db"),
        "{text}"
    );
    assert!(
        !text.contains("secret"),
        "the password is never shown: {text}"
    );
}

// Table names are read as PostgreSQL reads them: quoted parts exactly, unquoted ones in lower
// case, with a "did you mean" for a case mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quoted_and_mixed_case_table_names() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = sluicegate::testing::TestDb::postgres().await;
    db.exec(
        r#"CREATE TABLE "Users" (id bigint PRIMARY KEY, n integer NOT NULL DEFAULT 0);
           INSERT INTO "Users" (id) SELECT generate_series(1, 10);
           CREATE SCHEMA "Billing";
           CREATE TABLE "Billing"."InvoiceLines" (id bigint PRIMARY KEY, n integer NOT NULL DEFAULT 0);
           INSERT INTO "Billing"."InvoiceLines" (id) SELECT generate_series(1, 10)"#,
    )
    .await;
    let sg = db.sluicegate().await;
    let req = |name: &str, table: &str| fast(name, "update", table, 10, 5).argument("set", "n = 1");
    let err = sg.queue(&req("a", "Users")).await.unwrap_err().to_string();
    assert_eq!(
        err,
        r#"unknown table "users" (did you mean "public"."Users"? unquoted names are read in lower case: --table '"public"."Users"')"#
    );
    let m = sg.queue(&req("b", r#""Users""#)).await.unwrap();
    assert_eq!(m.table_name, "public.Users");
    let m = sg
        .queue(&req("c", r#""Billing"."InvoiceLines""#))
        .await
        .unwrap();
    assert_eq!(m.table_name, "Billing.InvoiceLines");
    run_to_end(&sg).await;
    assert_eq!(
        db.scalar(r#"SELECT count(*) FROM "Users" WHERE n = 1"#)
            .await,
        10
    );
    assert_eq!(
        db.scalar(r#"SELECT count(*) FROM "Billing"."InvoiceLines" WHERE n = 1"#)
            .await,
        10
    );
}
