//! How a key is walked beyond its columns: a nullable key walked with `--skip-null-keys` (the
//! rows where it is NULL never visited, counted at queue), and batches of distinct key values
//! with `--distinct` (GitLab's `distinct_each_batch`); the refusals without them; and the
//! sub-batches of a job whose integer keys were dense, named by arithmetic with no walk.

use async_trait::async_trait;
use sluicegate::{store_test, Failure, JobKind, MigrationStatus, Sluicegate, SubBatch};

use crate::common::*;

/// `n = n + 1` over `table`, walking `key`.
fn increment(
    name: &str,
    table: &str,
    key: &[&str],
    batch: i64,
    sub: i64,
) -> sluicegate::QueueRequest {
    let mut req = fast(name, "update", table, batch, sub).argument("set", "n = n + 1");
    req.key = Some(key.iter().map(|c| c.to_string()).collect());
    req
}

/// Runs every migration to its end and checks that `name` finished, its job logs chained.
async fn finish(sg: &Sluicegate, name: &str) -> sluicegate::Migration {
    run_to_end(sg).await;
    let m = sg.migration(name).await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished, "{m:?}");
    assert_chains(sg, &m).await;
    m
}

store_test!(
    a_nullable_key_is_walked_only_when_asked_and_its_null_rows_are_never_visited,
    |db| {
        // A nullable unique column: 300 rows, every fifth without a pipeline (the non-unique
        // case, GitLab's own, is the ported definition in deploy.rs).
        db.exec(
        "CREATE TABLE stages (id bigint PRIMARY KEY, pipeline_id bigint, n integer NOT NULL DEFAULT 0)",
    )
    .await;
        db.exec("CREATE UNIQUE INDEX stages_pipeline_id ON stages (pipeline_id)")
            .await;
        let rows: Vec<String> = (1..=300)
            .map(|i| match i % 5 {
                0 => format!("({i}, NULL)"),
                _ => format!("({i}, {i})"),
            })
            .collect();
        db.exec(&format!(
            "INSERT INTO stages (id, pipeline_id) VALUES {}",
            rows.join(", ")
        ))
        .await;
        let sg = db.sluicegate().await;

        // Without the flag: refused, the message naming the flag; nothing written.
        let err = sg
            .queue(&increment("walk", "stages", &["pipeline_id"], 50, 20))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("column \"pipeline_id\" of table \"stages\" may be NULL")
                && err.contains("--skip-null-keys"),
            "{err}"
        );
        assert!(sg.migrations().await.unwrap().is_empty(), "nothing written");

        // With it: the plan says what it leaves alone, and the migration records it.
        let mut req = increment("walk", "stages", &["pipeline_id"], 50, 20);
        req.skip_null_keys = true;
        let plan = sg.plan(&req).await.unwrap();
        assert_eq!(plan.null_key_rows, Some(60));
        assert_eq!(
            plan.null_keys_note().as_deref(),
            Some("rows where pipeline_id IS NULL are not visited: 60 estimated")
        );
        assert_eq!(
            (
                plan.migration.min_value.as_i64(),
                plan.migration.max_value.as_i64()
            ),
            (Some(1), Some(299)),
            "the range's bounds are keys that are not NULL"
        );
        sg.queue_plan(&plan).await.unwrap();
        let m = finish(&sg, "walk").await;
        assert!(
            m.key.walk().skip_nulls && !m.key.walk().distinct,
            "recorded: {:?}",
            m.key.walk()
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM stages WHERE pipeline_id IS NULL AND n = 0")
                .await,
            60,
            "no row without a pipeline was visited"
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM stages WHERE pipeline_id IS NOT NULL AND n = 1")
                .await,
            240,
            "every other row exactly once"
        );
        let jobs = sg.jobs(&m, None).await.unwrap();
        assert_eq!(jobs.len(), 5, "jobs span keys that are not NULL: 240 / 50");
        assert_eq!(jobs.iter().map(|j| j.rows_affected).sum::<i64>(), 240);
    }
);

store_test!(
    a_nullable_column_of_a_composite_key_keeps_its_null_rows_out_of_every_sub_batch,
    |db| {
        // A row value comparison alone lets (2, NULL) into (1, 1) ..= (3, 2): the engine's
        // `IS NOT NULL` is what keeps it out. Sub-batches of 7 keys span three values of `a`
        // (checked: without it in the range predicate, the queue's trial escapes its range).
        db.exec("CREATE TABLE pairs (a bigint NOT NULL, b bigint, n integer NOT NULL DEFAULT 0)")
            .await;
        db.exec("CREATE UNIQUE INDEX pairs_a_b ON pairs (a, b)")
            .await;
        let rows: Vec<String> = (1..=40)
            .flat_map(|a| {
                (1..=3).map(move |b| match b {
                    2 if a % 2 == 0 => format!("({a}, NULL)"),
                    _ => format!("({a}, {b})"),
                })
            })
            .collect();
        db.exec(&format!(
            "INSERT INTO pairs (a, b) VALUES {}",
            rows.join(", ")
        ))
        .await;
        let sg = db.sluicegate().await;
        let err = sg
            .queue(&increment("pairs", "pairs", &["a", "b"], 10, 7))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"b\"") && err.contains("--skip-null-keys"),
            "{err}"
        );
        let mut req = increment("pairs", "pairs", &["a", "b"], 10, 7);
        req.skip_null_keys = true;
        let plan = sg.plan(&req).await.unwrap();
        assert_eq!(
            plan.null_keys_note().as_deref(),
            Some("rows where a IS NULL or b IS NULL are not visited: 20 estimated")
        );
        sg.queue_plan(&plan).await.unwrap();
        let m = finish(&sg, "pairs").await;
        assert_eq!(
            db.scalar("SELECT count(*) FROM pairs WHERE b IS NULL AND n <> 0")
                .await,
            0
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM pairs WHERE b IS NOT NULL AND n = 1")
                .await,
            100
        );
        let jobs = sg.jobs(&m, None).await.unwrap();
        assert_eq!(jobs.iter().map(|j| j.rows_affected).sum::<i64>(), 100);
        assert_eq!(jobs.len(), 10);
    }
);

store_test!(
    skipping_null_keys_on_a_not_null_key_is_accepted_and_harmless,
    |db| {
        db.create_items("items", &[(1, 120)]).await;
        let sg = db.sluicegate().await;
        let mut req = increment("all", "items", &["id"], 50, 20);
        req.skip_null_keys = true;
        let plan = sg.plan(&req).await.unwrap();
        assert_eq!(plan.null_key_rows, Some(0));
        sg.queue_plan(&plan).await.unwrap();
        let m = finish(&sg, "all").await;
        assert!(m.key.walk().skip_nulls);
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
            120
        );
        assert_eq!(sg.jobs(&m, None).await.unwrap().len(), 3);
    }
);

store_test!(
    distinct_batches_count_key_values_and_visit_every_row_once,
    |db| {
        // 1,000 builds of 65 projects, unevenly: project p has between 1 and 29 builds.
        db.exec(
        "CREATE TABLE builds (id bigint PRIMARY KEY, project_id bigint NOT NULL, n integer NOT NULL DEFAULT 0)",
    )
    .await;
        db.exec("CREATE INDEX builds_project_id ON builds (project_id)")
            .await;
        let rows: Vec<String> = (1..=1000)
            .map(|i: i64| format!("({i}, {})", 10 * ((i * i) % 65)))
            .collect();
        db.exec(&format!(
            "INSERT INTO builds (id, project_id) VALUES {}",
            rows.join(", ")
        ))
        .await;
        let distinct = db
            .scalar("SELECT count(DISTINCT project_id) FROM builds")
            .await;
        let sg = db.sluicegate().await;

        // Hostile: --distinct on a key not declared non-unique.
        let mut req = increment("d", "builds", &["project_id"], 10, 4);
        req.distinct = true;
        let err = sg.queue(&req).await.unwrap_err().to_string();
        assert!(
            err.contains("--distinct") && err.contains("--non-unique-key"),
            "{err}"
        );
        assert!(sg.migrations().await.unwrap().is_empty(), "nothing written");

        req.non_unique_key = true;
        let plan = sg.plan(&req).await.unwrap();
        assert_eq!(plan.distinct_keys, Some(distinct));
        assert_eq!(
            plan.estimated_jobs(),
            Some((distinct + 9) / 10),
            "jobs counted in values, not rows"
        );
        sg.queue_plan(&plan).await.unwrap();
        let m = finish(&sg, "d").await;
        assert!(
            m.key.walk().distinct && !m.key.walk().skip_nulls,
            "recorded: {:?}",
            m.key.walk()
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM builds WHERE n <> 1").await,
            0,
            "every row once"
        );
        let jobs = sg.jobs(&m, None).await.unwrap();
        assert_eq!(
            jobs.len() as i64,
            (distinct + 9) / 10,
            "one job per 10 values of {distinct}"
        );
        assert_eq!(jobs.iter().map(|j| j.rows_affected).sum::<i64>(), 1000);
        // Each job spans 10 values (the last one what is left), however many rows each has.
        for (i, job) in jobs.iter().enumerate() {
            let values = db
                .scalar(&format!(
                "SELECT count(DISTINCT project_id) FROM builds WHERE project_id BETWEEN {} AND {}",
                job.min_value.as_i64().unwrap(),
                job.max_value.as_i64().unwrap()
            ))
                .await;
            let expected = if i + 1 < jobs.len() {
                10
            } else {
                distinct - 10 * i as i64
            };
            assert_eq!(values, expected, "job {i}: {job:?}");
        }
        // Its sub-batches span 4 values each: 10 values make 3 of them.
        assert_eq!(
            jobs[0].metrics.sub_batches,
            Some(3),
            "{:?}",
            jobs[0].metrics
        );
    }
);

/// `n = n + 1`; the sub-batch that starts at key 1 also deletes keys 15 ..= 18, ahead of the
/// sub-batches that follow it.
#[derive(Clone)]
struct DeletesAhead;

#[async_trait]
impl JobKind for DeletesAhead {
    fn name(&self) -> &str {
        "deletes-ahead"
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        if batch.start().values()[0].as_i64() == Some(1) {
            let delete = format!(
                "DELETE FROM {} WHERE id BETWEEN 15 AND 18",
                batch.quoted_table()
            );
            batch.execute(&delete).await?;
        }
        crate::common::increment(batch).await
    }
}

store_test!(
    a_dense_jobs_sub_batches_are_named_by_arithmetic_and_a_sparse_jobs_are_walked,
    |db| {
        db.exec("CREATE TABLE items (id bigint PRIMARY KEY, n integer NOT NULL DEFAULT 0)")
            .await;
        // Keys 1 ..= 100, dense; then 1001 ..= 1399 odd only: 200 keys over twice their span.
        let keys: Vec<String> = (1..=100)
            .chain((1001..=1399).step_by(2))
            .map(|i| format!("({i})"))
            .collect();
        db.exec(&format!(
            "INSERT INTO items (id) VALUES {}",
            keys.join(", ")
        ))
        .await;
        let sg = db.sluicegate_with(registry_with(DeletesAhead)).await;
        sg.queue(&fast("dense", "deletes-ahead", "items", 100, 10))
            .await
            .unwrap();
        let m = finish(&sg, "dense").await;
        let mut jobs = sg.jobs(&m, None).await.unwrap();
        jobs.sort_by_key(|j| j.min_value.as_i64());
        let spans: Vec<_> = jobs
            .iter()
            .map(|j| (j.min_value.as_i64().unwrap(), j.max_value.as_i64().unwrap()))
            .collect();
        assert_eq!(spans, [(1, 100), (1001, 1199), (1201, 1399)]);
        let sub_batches = |job: usize| -> Vec<(i64, i64, u64)> {
            jobs[job]
                .metrics
                .recent
                .iter()
                .map(|s| (s.start.as_i64().unwrap(), s.end.as_i64().unwrap(), s.rows))
                .collect()
        };
        // The dense job: ten keys of arithmetic a sub-batch. The second lost the four rows
        // the first deleted and ran with six; a walk would have reached key 24 for ten.
        let dense = sub_batches(0);
        assert_eq!(dense.len(), 10, "{dense:?}");
        assert_eq!(dense[0], (1, 10, 10));
        assert_eq!(dense[1], (11, 20, 6));
        assert_eq!(dense[2], (21, 30, 10));
        assert_eq!(dense[9], (91, 100, 10));
        // The sparse jobs are walked: ten existing keys a sub-batch, over 19 integers each.
        for job in [1, 2] {
            let walked = sub_batches(job);
            assert_eq!(walked.len(), 10, "{walked:?}");
            assert!(
                walked
                    .iter()
                    .all(|&(start, end, rows)| rows == 10 && end - start == 18),
                "{walked:?}"
            );
        }
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE id BETWEEN 15 AND 18")
                .await,
            0
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
            296,
            "every row left visited once"
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
            0
        );
    }
);
