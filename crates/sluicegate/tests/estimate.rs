//! The dry run's estimate (issue 21, item 3): its trials are reported and sampled across the
//! range, an explicit range narrows the keys and rows, `--kind sql` says its rows are unknown,
//! a non-unique key is walked in the units its sub-batches cover, and nothing is written.

use std::time::Duration;

use sluicegate::store::Backend;
use sluicegate::testing::TestDb;
use sluicegate::{store_test, QueueRequest, Sluicegate};

use crate::common::*;

/// A request with the engine's own defaults (sizes tuned, jobs grown), as a user queues it.
fn defaults(name: &str, kind: &str, table: &str) -> QueueRequest {
    let mut req = QueueRequest::new(name, kind, table);
    req.health.hold_ms = 200;
    req
}

/// Rows of `table` whose `n` is not 0, and the migrations stored: what a dry run must leave.
async fn written(db: &TestDb, sg: &Sluicegate, table: &str) -> (i64, usize) {
    let changed = db
        .scalar(&format!("SELECT count(*) FROM {table} WHERE n <> 0"))
        .await;
    (changed, sg.migrations().await.unwrap().len())
}

store_test!(
    a_dry_run_reports_its_trials_across_the_range_and_writes_nothing,
    |db| {
        db.create_items("items", &[(1, 30_000)]).await;
        let sg = db.sluicegate().await;
        let req = defaults("est", "update", "items").argument("set", "n = n + 1");
        let mut plan = sg.plan(&req).await.unwrap();
        let checked = plan.trials.len();
        assert!(checked >= 1, "queue's own check tries a sub-batch");
        sg.measure(&mut plan, 1).await.unwrap();
        let positions: std::collections::BTreeSet<usize> =
            plan.measured_trials().map(|t| t.position).collect();
        assert_eq!(
            positions.len(),
            3,
            "the start, a third and two thirds along: {:?}",
            plan.trials
        );
        let froms: Vec<&str> = plan
            .measured_trials()
            .filter(|t| t.position > 0)
            .map(|t| t.from.as_str())
            .collect();
        assert!(
            froms
                .iter()
                .any(|f| f.trim_start_matches("> ").parse::<i64>().unwrap() > 10_000),
            "tried along the range, not only at its start: {froms:?}"
        );
        assert!(plan.trials.iter().any(|t| t.warm_up), "a warm-up first");
        let sizes: std::collections::BTreeSet<i64> =
            plan.measured_trials().map(|t| t.keys).collect();
        assert!(sizes.len() >= 2, "a small and a large size: {sizes:?}");
        for t in plan.measured_trials() {
            assert_eq!(t.rows, t.keys as u64, "every key's row is tried: {t:?}");
        }
        let e = plan.estimate.expect("an estimate");
        assert!(e.low <= e.duration && e.duration <= e.high, "{e:?}");
        assert!(e.duration > Duration::ZERO && e.jobs >= 1, "{e:?}");
        assert_eq!(
            written(&db, &sg, "items").await,
            (0, 0),
            "every trial rolled back, nothing queued"
        );
    }
);

store_test!(an_explicit_range_narrows_the_keys_and_rows, |db| {
    db.create_items("items", &[(1, 40_000)]).await;
    let sg = db.sluicegate().await;
    let req = |name: &str| {
        defaults(name, "update", "items")
            .argument("set", "n = n + 1")
            .argument("where", "id % 4 <> 0")
    };
    let whole = sg.plan(&req("whole")).await.unwrap();
    let mut ranged = req("ranged");
    ranged.min_value = Some("10001".into());
    ranged.max_value = Some("14000".into());
    let part = sg.plan(&ranged).await.unwrap();
    // A tenth of the keys, three quarters of them matching the `where`: counted exactly.
    assert_eq!(part.migration.total_tuple_count, Some(4_000));
    assert_eq!(part.rows_to_change, Some(3_000));
    let whole_rows = whole.rows_to_change.unwrap() as f64;
    assert!(
        (22_500.0..=37_500.0).contains(&whole_rows),
        "the whole table's rows: {whole_rows}"
    );
    let (w, p) = (
        whole.estimate.unwrap().duration.as_secs_f64(),
        part.estimate.unwrap().duration.as_secs_f64(),
    );
    assert!(
        p < w,
        "the range's estimate is below the table's: {p} against {w}"
    );
    assert_eq!(written(&db, &sg, "items").await, (0, 0));
});

store_test!(sql_kind_rows_are_unknown_and_keys_known, |db| {
    db.create_items("items", &[(1, 5_000)]).await;
    let sg = db.sluicegate().await;
    let req = defaults("sq", "sql", "items").argument(
        "sql",
        "UPDATE items SET n = n + 1 WHERE {range} AND id % 10 = 0",
    );
    let mut plan = sg.plan(&req).await.unwrap();
    sg.measure(&mut plan, 1).await.unwrap();
    assert_eq!(
        plan.rows_to_change, None,
        "its statements say what they change"
    );
    assert!(!sluicegate::client::rows_known("sql"));
    let keys = plan.migration.total_tuple_count.unwrap();
    assert!((3_750..=6_250).contains(&keys), "keys walked: {keys}");
    assert!(plan.estimate.is_some());
    assert_eq!(written(&db, &sg, "items").await, (0, 0));
});

store_test!(
    a_non_unique_key_is_walked_in_the_rows_its_sub_batches_cover,
    |db| {
        // 50 rows per value of `grp`: a sub-batch of 100 "keys" covers every row of its last value.
        db.exec("CREATE TABLE g (id bigint PRIMARY KEY, grp bigint NOT NULL, n integer NOT NULL DEFAULT 0)")
        .await;
        db.exec("CREATE INDEX g_grp ON g (grp)").await;
        let insert = match db.backend {
            Backend::Postgres => {
                "INSERT INTO g (id, grp) SELECT i, i / 50 FROM generate_series(1, 20000) i"
            }
            Backend::Sqlite => {
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 20000)
             INSERT INTO g (id, grp) SELECT i, i / 50 FROM s"
            }
        };
        db.exec(insert).await;
        if db.backend == Backend::Postgres {
            db.exec("ANALYZE g").await;
        }
        let sg = db.sluicegate().await;
        let mut req = fast("nu", "update", "g", 1_000, 10).argument("set", "n = n + 1");
        req.key = Some(vec!["grp".into()]);
        req.non_unique_key = true;
        let mut plan = sg.plan(&req).await.unwrap();
        sg.measure(&mut plan, 1).await.unwrap();
        assert!(
            (49.0..=50.0).contains(&plan.rows_per_key_value),
            "each value of grp has 50 rows (the first 49): {}",
            plan.rows_per_key_value
        );
        // Sub-batches of 10 keys cover a whole value (50 rows): 400 of them, not 2,000.
        let fixed = {
            let mut p = plan.clone();
            p.rows_per_key_value = 1.0;
            p.reestimate();
            p.estimate.unwrap().duration
        };
        let e = plan.estimate.unwrap().duration;
        assert!(
            e.as_secs_f64() < fixed.as_secs_f64() / 2.0,
            "walked by whole values: {e:?} against {fixed:?} as if unique"
        );
        assert_eq!(written(&db, &sg, "g").await, (0, 0));
    }
);

store_test!(concurrency_on_a_plain_table_changes_nothing, |db| {
    db.create_items("items", &[(1, 10_000)]).await;
    let sg = db.sluicegate().await;
    let req = defaults("c", "update", "items").argument("set", "n = n + 1");
    let mut plan = sg.plan(&req).await.unwrap();
    sg.measure(&mut plan, 4).await.unwrap();
    assert_eq!(plan.concurrency, 4);
    assert_eq!(
        plan.parallel_loops(4),
        1,
        "one job at a time on a plain table"
    );
    assert_eq!(plan.estimate.unwrap().parallel, 1);
    let err = sg.measure(&mut plan, 0).await.unwrap_err().to_string();
    assert!(err.contains("--concurrency must be at least 1"), "{err}");
});
