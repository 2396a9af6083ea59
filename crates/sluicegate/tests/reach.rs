//! The range is the engine's: no text an operator writes can widen a sub-batch's reach.
//! Fragments that could are refused at queue (nothing written, the table untouched), `{range}`
//! is placed by the parse and carries the scope, and a sub-batch that still reports more rows
//! than it has keys is rolled back and fails its migration (`RangeEscaped`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use sluicegate::store::Backend;
use sluicegate::testing::TestDb;
use sluicegate::{
    store_test, Error, Failure, FailureClass, JobKind, MigrationStatus, QueueRequest, SubBatch,
};

use crate::common::{fast, registry_with, run_to_end};

async fn migrations_count(db: &TestDb) -> i64 {
    let table = match db.backend {
        Backend::Postgres => "sluicegate.migrations",
        Backend::Sqlite => "sluicegate_migrations",
    };
    db.scalar(&format!("SELECT count(*) FROM {table}")).await
}

/// A table `t` of 1,000 rows, `n = 0`, plus `flag` (every tenth row) and `note`.
async fn table_t(db: &TestDb) {
    db.create_items("t", &[(1, 1000)]).await;
    db.exec("ALTER TABLE t ADD COLUMN flag boolean NOT NULL DEFAULT false")
        .await;
    db.exec("ALTER TABLE t ADD COLUMN note text").await;
    db.exec("UPDATE t SET flag = true WHERE id % 10 = 0").await;
}

/// A fragment tried: kind, arguments, scope, and what its refusal must say.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>, &'a str);

fn with(req: QueueRequest, args: &[(&str, &str)]) -> QueueRequest {
    args.iter().fold(req, |r, (k, v)| r.argument(k, *v))
}

store_test!(
    fragments_that_could_widen_the_range_are_refused_at_queue,
    |db| {
        let sg = db.sluicegate().await;
        table_t(&db).await;
        db.create_items("o", &[(1, 1000)]).await;
        // (kind, arguments, scope, what the refusal must say)
        let cases: &[Case] = &[
            (
                "update",
                &[("set", "n = n + 1 -- bump the counter")],
                None,
                "--set holds a comment",
            ),
            (
                "update",
                &[("set", "n = n + 1 /* bump */")],
                None,
                "--set holds a comment",
            ),
            (
                "update",
                &[("set", "n = 1 WHERE true")],
                None,
                "--set is not a list of assignments",
            ),
            (
                "update",
                &[("set", "n = n + 1"), ("where", "n >= 0) OR (true")],
                None,
                "--where is not one SQL condition",
            ),
            (
                "update",
                &[("set", "n = n + 1"), ("where", "true -- x")],
                None,
                "--where holds a comment",
            ),
            (
                "update",
                &[("set", "n = n + 1"), ("where", "id > $1")],
                None,
                "placeholder $1",
            ),
            (
                "update",
                &[("set", "n = n + 1")],
                Some("flag) OR (true"),
                "--scope is not one SQL condition",
            ),
            (
                "update",
                &[("set", "n = n + 1")],
                Some("flag; DELETE FROM t"),
                "--scope is not one SQL condition",
            ),
            (
                "update",
                &[
                    ("set", "n = o.n"),
                    ("from", "o"),
                    ("join", "o.id = t.id) OR (true"),
                ],
                None,
                "--join is not one SQL condition",
            ),
            (
                "delete",
                &[("where", "flag) OR (true")],
                None,
                "--where is not one SQL condition",
            ),
            (
                "sql",
                &[("sql", "UPDATE t SET n = n + 1 /* only rows in {range} */")],
                None,
                "inside a comment",
            ),
            (
                "sql",
                &[("sql", "UPDATE t SET n = n + 1 WHERE note = '$1 and $2'")],
                None,
                "must restrict itself",
            ),
            (
                "sql",
                &[(
                    "sql",
                    "UPDATE t SET note = 'see {range} docs' WHERE {range}",
                )],
                None,
                "inside a string",
            ),
            (
                "sql",
                &[("sql", "UPDATE t SET n = n + 1 WHERE {range} OR true")],
                None,
                "does not restrict it",
            ),
            (
                "sql",
                &[("sql", "UPDATE t SET n = n + 1 WHERE NOT ({range})")],
                None,
                "does not restrict it",
            ),
            (
                "sql",
                &[("sql", "DELETE FROM t WHERE id BETWEEN $1 AND $2")],
                Some("flag"),
                "carry no scope",
            ),
            (
                "sql",
                &[("sql", "UPDATE t SET n = n + 1 WHERE {range}; COMMIT")],
                None,
                "statement 2 of 2 must restrict",
            ),
            (
                "sql",
                &[(
                    "sql",
                    "WITH g AS (DELETE FROM t RETURNING id) UPDATE t SET n = n WHERE {range}",
                )],
                None,
                "changes rows in its WITH clause",
            ),
            (
                "sql",
                &[("sql", "DELETE FROM t WHERE n BETWEEN $1 AND $2")],
                None,
                "does not restrict it",
            ),
            (
                "sql",
                &[("sql", "SELECT count(*) FROM t WHERE {range}")],
                None,
                "must change rows",
            ),
        ];
        for (i, (kind, args, scope, says)) in cases.iter().enumerate() {
            let mut req = with(fast(&format!("f{i}"), kind, "t", 100, 50), args);
            req.scope = scope.map(str::to_owned);
            let err = sg
                .queue(&req)
                .await
                .expect_err(&format!("case {i} refused"));
            let text = err.to_string();
            assert!(
                matches!(err, Error::InvalidJob { .. } | Error::InvalidSettings(_)),
                "case {i}: {text}"
            );
            assert!(
                text.contains(says),
                "case {i}: {text:?} should say {says:?}"
            );
        }
        assert_eq!(migrations_count(&db).await, 0, "nothing queued");
        assert_eq!(db.scalar("SELECT count(*) FROM t WHERE n <> 0").await, 0);
        assert_eq!(db.scalar("SELECT count(*) FROM t").await, 1000);
    }
);

store_test!(a_comment_in_a_string_is_text_and_runs_confined, |db| {
    let sg = db.sluicegate().await;
    table_t(&db).await;
    let req = with(
        fast("strings", "update", "t", 100, 50),
        &[(
            "set",
            "n = n + 1, note = '-- not a comment /* nor this */ {range} $1'",
        )],
    );
    sg.queue(&req).await.unwrap();
    run_to_end(&sg).await;
    assert_eq!(db.scalar("SELECT count(*) FROM t WHERE n = 1").await, 1000);
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM t WHERE note = '-- not a comment /* nor this */ {range} $1'"
        )
        .await,
        1000
    );
});

store_test!(a_sql_script_with_range_carries_the_scope, |db| {
    let sg = db.sluicegate().await;
    table_t(&db).await;
    let mut req = with(
        fast("scoped_sql", "sql", "t", 20, 10),
        &[("sql", "DELETE FROM t WHERE {range}")],
    );
    req.scope = Some("flag".into());
    sg.queue(&req).await.unwrap();
    run_to_end(&sg).await;
    let m = sg.migration("scoped_sql").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    assert_eq!(db.scalar("SELECT count(*) FROM t WHERE flag").await, 0);
    assert_eq!(
        db.scalar("SELECT count(*) FROM t WHERE NOT flag").await,
        900,
        "no row outside the scope deleted"
    );
});

store_test!(
    range_is_qualified_in_joins_and_the_scope_reads_its_own_table,
    |db| {
        let sg = db.sluicegate().await;
        table_t(&db).await;
        // Another table with the same column names (`id`, `n`, `flag`): unqualified, both would
        // be ambiguous.
        db.create_items("o", &[(1, 1000)]).await;
        db.exec("ALTER TABLE o ADD COLUMN flag boolean NOT NULL DEFAULT false")
            .await;
        db.exec("UPDATE o SET n = 7").await;
        let mut req = with(
            fast("joined_sql", "sql", "t", 100, 50),
            &[(
                "sql",
                "UPDATE t SET n = o.n FROM o WHERE o.id = t.id AND {range}",
            )],
        );
        req.scope = Some("flag".into());
        sg.queue(&req).await.unwrap();
        run_to_end(&sg).await;
        assert_eq!(db.scalar("SELECT count(*) FROM t WHERE n = 7").await, 100);
        assert_eq!(
            db.scalar("SELECT count(*) FROM t WHERE n = 7 AND NOT flag")
                .await,
            0
        );
        // Now t.n is 7 on its 100 flagged rows and o.n is 7 on all 1,000: a scope `n = 7`
        // that read o's column would reach every row of t.
        let mut req = with(
            fast("joined_update", "update", "t", 100, 50),
            &[
                ("set", "note = 'joined'"),
                ("from", "o"),
                ("join", "o.id = t.id"),
            ],
        );
        req.scope = Some("n = 7".into());
        sg.queue(&req).await.unwrap();
        run_to_end(&sg).await;
        for name in ["joined_sql", "joined_update"] {
            let m = sg.migration(name).await.unwrap();
            assert_eq!(m.status, MigrationStatus::Finished, "{name}");
        }
        assert_eq!(
            db.scalar("SELECT count(*) FROM t WHERE note = 'joined'")
                .await,
            100,
            "the scope read t's n, not o's"
        );
    }
);

/// A kind whose statement ignores its range (it touches every row of `t`) while `escapes`
/// is not 0 (counting down; -1: forever), as a fragment that fooled the parser would; it says
/// its rows are its keys, as the built-in kinds do.
#[derive(Clone, Default)]
struct Greedy {
    escapes: Arc<AtomicI64>,
}

#[async_trait]
impl JobKind for Greedy {
    fn name(&self) -> &str {
        "greedy"
    }

    fn rows_are_keys(
        &self,
        _: &serde_json::Value,
        _: Backend,
        _: &sluicegate::ident::TableName,
    ) -> bool {
        true
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let escape = self.escapes.load(Ordering::SeqCst) != 0;
        if escape {
            self.escapes.fetch_sub(1, Ordering::SeqCst);
        }
        let sql = if escape {
            format!("UPDATE {} SET n = n + 1", batch.quoted_table())
        } else {
            format!(
                "UPDATE {} SET n = n + 1 WHERE {}",
                batch.quoted_table(),
                batch.range_predicate()
            )
        };
        batch.execute(&sql).await
    }
}

store_test!(
    a_sub_batch_reporting_more_rows_than_keys_is_refused_at_the_trial,
    |db| {
        let greedy = Greedy::default();
        greedy.escapes.store(-1, Ordering::SeqCst);
        let sg = db.sluicegate_with(registry_with(greedy)).await;
        table_t(&db).await;
        let err = sg
            .queue(&fast("greedy", "greedy", "t", 100, 50))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("RangeEscaped"), "{text}");
        assert!(text.contains("reported 1000 rows"), "{text}");
        assert_eq!(migrations_count(&db).await, 0);
        assert_eq!(db.scalar("SELECT count(*) FROM t WHERE n <> 0").await, 0);
    }
);

store_test!(
    a_sub_batch_that_escapes_at_run_time_is_rolled_back_and_fails_its_migration,
    |db| {
        let greedy = Greedy::default();
        let sg = db.sluicegate_with(registry_with(greedy.clone())).await;
        table_t(&db).await;
        let m = sg
            .queue(&fast("escapes", "greedy", "t", 100, 50))
            .await
            .unwrap();
        greedy.escapes.store(-1, Ordering::SeqCst);
        run_to_end(&sg).await;
        let m = sg.migration(&m.name).await.unwrap();
        assert_eq!(m.status, MigrationStatus::Failed);
        assert_eq!(
            db.scalar("SELECT count(*) FROM t WHERE n <> 0").await,
            0,
            "rolled back"
        );
        let log = sg.migration_history(&m).await.unwrap();
        let fail = log
            .iter()
            .find(|t| t.next_status == MigrationStatus::Failed)
            .expect("a fail row");
        assert_eq!(
            fail.exception_class.as_deref(),
            Some(FailureClass::RangeEscaped.as_str())
        );
        let message = fail.exception_message.clone().unwrap_or_default();
        assert!(message.contains("keys 1 ..= 50"), "{message}");
        assert!(message.contains("reported 1000 rows"), "{message}");
        let jobs = sg.jobs(&m, None).await.unwrap();
        assert_eq!(jobs.len(), 1, "no job after the one that escaped");
    }
);

store_test!(
    a_stored_definition_that_would_escape_fails_before_it_runs,
    |db| {
        let sg = db.sluicegate().await;
        table_t(&db).await;
        db.create_items("other", &[(1, 100)]).await;
        let bad = sg
            .queue(&with(
                fast("stored_bad", "update", "t", 100, 50),
                &[("set", "n = n + 1"), ("where", "flag")],
            ))
            .await
            .unwrap();
        let good = sg
            .queue(&with(
                fast("good", "update", "other", 100, 50),
                &[("set", "n = n + 1")],
            ))
            .await
            .unwrap();
        // A definition stored before fragments were parsed (or written by hand): its `where`
        // and its scope break out of the range's parentheses.
        let (table, json) = match db.backend {
            Backend::Postgres => (
                "sluicegate.migrations",
                "'{\"set\": \"n = n + 1\", \"where\": \"flag) OR (true\"}'::jsonb",
            ),
            Backend::Sqlite => (
                "sluicegate_migrations",
                "'{\"set\": \"n = n + 1\", \"where\": \"flag) OR (true\"}'",
            ),
        };
        db.exec(&format!(
            "UPDATE {table} SET job_arguments = {json}, scope = 'flag) OR (true' WHERE id = {}",
            bad.id
        ))
        .await;
        run_to_end(&sg).await;
        let bad = sg.migration(&bad.name).await.unwrap();
        assert_eq!(bad.status, MigrationStatus::Failed);
        let log = sg.migration_history(&bad).await.unwrap();
        let fail = log.last().expect("a fail row");
        assert_eq!(fail.exception_class.as_deref(), Some("InvalidSettings"));
        let message = fail.exception_message.clone().unwrap_or_default();
        assert!(
            message.contains("--scope is not one SQL condition"),
            "{message}"
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM t WHERE n <> 0").await,
            0,
            "t untouched"
        );
        assert_eq!(
            sg.migration(&good.name).await.unwrap().status,
            MigrationStatus::Finished
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM other WHERE n = 1").await,
            100
        );
    }
);

store_test!(
    a_sub_batch_that_over_counts_once_is_walked_again_and_goes_on,
    |db| {
        // Keys inserted into a range after it was walked make one sub-batch count more rows than
        // it walked: walked again, it counts them. Only a repeat is an escape.
        let greedy = Greedy::default();
        let sg = db.sluicegate_with(registry_with(greedy.clone())).await;
        table_t(&db).await;
        let m = sg
            .queue(&fast("once", "greedy", "t", 100, 50))
            .await
            .unwrap();
        greedy.escapes.store(1, Ordering::SeqCst);
        run_to_end(&sg).await;
        let m = sg.migration(&m.name).await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        // The over-counting sub-batch was rolled back; every row then changed once.
        assert_eq!(db.scalar("SELECT count(*) FROM t WHERE n = 1").await, 1000);
    }
);

/// SQLite keeps a value of any storage class in any column: a BLOB in an INTEGER key sorts
/// after every number, so the walk would never reach its row and the migration would finish
/// without it, saying nothing. Refused at queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_key_holding_values_of_another_type_is_refused_at_queue() {
    let db = TestDb::sqlite().await;
    let sg = db.sluicegate().await;
    for (value, stored) in [("x'00ff'", "blob"), ("'abc'", "text"), ("1.5", "real")] {
        db.exec("DROP TABLE IF EXISTS k").await;
        db.exec("CREATE TABLE k (id bigint PRIMARY KEY NOT NULL, n integer NOT NULL DEFAULT 0)")
            .await;
        db.exec("INSERT INTO k (id) VALUES (1), (2), (3)").await;
        db.exec(&format!("INSERT INTO k (id) VALUES ({value})"))
            .await;
        let err = sg
            .queue(&with(
                fast("k", "update", "k", 10, 5),
                &[("set", "n = n + 1")],
            ))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "holds 1 value(s) stored as {stored} rather than integer"
            )),
            "{text}"
        );
        assert_eq!(migrations_count(&db).await, 0);
    }
}
