//! Keys other than one integer column: UUIDs in random order, text under a non-C collation,
//! composite keys with gaps, a partitioned table's `(id, partition_id)`, quoted mixed-case
//! names, SQLite's WITHOUT ROWID tables; and the keys that are refused.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use sluicegate::store::Backend;
use sluicegate::testing::TestDb;
use sluicegate::{
    store_test, Error, Failure, JobKind, JobStatus, Key, Migration, MigrationStatus, Sluicegate,
    SubBatch,
};

use crate::common::*;

/// Queues `n = n + 1` over `table` walking `key` (default: the primary key) and runs it to the
/// end; every job's log is a chain. Returns the finished migration.
async fn increment_all(
    sg: &Sluicegate,
    table: &str,
    key: Option<&[&str]>,
    batch: i64,
    sub: i64,
) -> Migration {
    let mut req = fast("inc", "update", table, batch, sub).argument("set", "n = n + 1");
    req.key = key.map(|k| k.iter().map(|c| c.to_string()).collect());
    sg.queue(&req).await.unwrap();
    run_to_end(sg).await;
    let m = sg.migration("inc").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished, "{m:?}");
    assert_chains(sg, &m).await;
    m
}

/// Every row of `table` was incremented exactly once, and the jobs' rows add up to it.
async fn assert_each_row_once(db: &TestDb, sg: &Sluicegate, m: &Migration, table: &str) {
    let q = sluicegate::ident::quote(table);
    let rows = db.scalar(&format!("SELECT count(*) FROM {q}")).await;
    assert!(rows > 0);
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {q} WHERE n <> 1"))
            .await,
        0,
        "every row exactly once"
    );
    let jobs = sg.jobs(m, None).await.unwrap();
    assert_eq!(jobs.iter().map(|j| j.rows_affected).sum::<i64>(), rows);
}

/// `INSERT INTO table (cols) VALUES ...` of `rows`, one statement.
fn insert_sql(table: &str, cols: &str, rows: &[String]) -> String {
    format!(
        "INSERT INTO {} ({cols}) VALUES {}",
        sluicegate::ident::quote(table),
        rows.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uuid_keys_in_random_order_are_each_visited_once() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    db.exec(
        "CREATE TABLE tokens (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), n integer NOT NULL DEFAULT 0);
         INSERT INTO tokens (n) SELECT 0 FROM generate_series(1, 5000);
         ANALYZE tokens",
    )
    .await;
    let sg = db.sluicegate().await;
    let m = increment_all(&sg, "tokens", None, 500, 100).await;
    assert_eq!(m.key.display_names(), "id");
    assert_eq!(m.key.columns()[0].key_type, sluicegate::KeyType::Uuid);
    assert_each_row_once(&db, &sg, &m, "tokens").await;
    let jobs = sg.jobs(&m, None).await.unwrap();
    assert_eq!(jobs.len(), 10, "5,000 keys in jobs of 500");
    // Each job spans exactly its 500 keys, in the key's order, one after the other.
    let mut previous: Option<Key> = None;
    for job in &jobs {
        let (lo, hi) = (&job.min_value.values()[0], &job.max_value.values()[0]);
        let sql = format!(
            "SELECT count(*) FROM tokens WHERE id BETWEEN '{}' AND '{}'",
            lo.as_str().unwrap(),
            hi.as_str().unwrap()
        );
        assert_eq!(db.scalar(&sql).await, 500, "job {}", job.id);
        if let Some(prev) = previous {
            let sql = format!(
                "SELECT ('{}'::uuid < '{}'::uuid)::int::bigint",
                prev.values()[0].as_str().unwrap(),
                lo.as_str().unwrap()
            );
            assert_eq!(db.scalar(&sql).await, 1, "jobs follow each other");
        }
        previous = Some(job.max_value.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_keys_follow_their_columns_icu_collation() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    db.exec(
        r#"CREATE TABLE codes (code text COLLATE "und-x-icu" PRIMARY KEY, n integer NOT NULL DEFAULT 0)"#,
    )
    .await;
    let mut words: Vec<String> = [
        "apple", "Apple", "APPLE", "äpple", "apfel", "Zebra", "zebra", "éclair", "eclair",
        "Eclair", "ZZ", "a", "B", "b", "ß", "ss", "Ω", "z",
    ]
    .iter()
    .map(|w| format!("('{w}')"))
    .collect();
    words.extend((0..600).map(|i| format!("('k{i:04}')")));
    db.exec(&insert_sql("codes", "code", &words)).await;
    db.exec("ANALYZE codes").await;
    let sg = db.sluicegate().await;
    let m = increment_all(&sg, "codes", None, 50, 7).await;
    assert_each_row_once(&db, &sg, &m, "codes").await;
    // The jobs' bounds follow one another under the column's collation (in C order, 'Zebra'
    // would come before 'apple' and the ranges would overlap).
    let jobs = sg.jobs(&m, None).await.unwrap();
    for pair in jobs.windows(2) {
        let (prev, next) = (&pair[0].max_value, &pair[1].min_value);
        let sql = format!(
            r#"SELECT ('{}' < '{}' COLLATE "und-x-icu")::int::bigint"#,
            prev.values()[0].as_str().unwrap(),
            next.values()[0].as_str().unwrap()
        );
        assert_eq!(db.scalar(&sql).await, 1, "{prev} then {next}");
    }
    let first = &jobs[0].min_value.values()[0];
    assert_eq!(
        first, "a",
        "ICU order starts at 'a', not at 'APPLE' (C order)"
    );
}

store_test!(composite_keys_with_gaps_are_walked_in_order, |db| {
    db.exec(
        "CREATE TABLE pairs (a bigint NOT NULL, b integer NOT NULL, n integer NOT NULL DEFAULT 0,
                             PRIMARY KEY (a, b))",
    )
    .await;
    // A different number of rows under each first column, and gaps in both.
    let mut rows = Vec::new();
    for (a, count) in [
        (1, 3),
        (2, 40),
        (5, 1),
        (100, 17),
        (1_000_000, 55),
        (1_000_001, 2),
    ] {
        for b in 0..count {
            rows.push(format!("({a}, {})", b * 3 + 1));
        }
    }
    db.exec(&insert_sql("pairs", "a, b", &rows)).await;
    let sg = db.sluicegate().await;
    let m = increment_all(&sg, "pairs", None, 20, 7).await;
    assert_eq!(m.key.display_names(), "(a, b)");
    assert_eq!(m.min_value, Key(vec![1.into(), 1.into()]));
    assert_eq!(m.max_value, Key(vec![1_000_001.into(), 4.into()]));
    assert_each_row_once(&db, &sg, &m, "pairs").await;
    let jobs = sg.jobs(&m, None).await.unwrap();
    assert_eq!(jobs.len(), 118_usize.div_ceil(20), "118 keys in jobs of 20");
    let pair = |k: &Key| {
        (
            k.values()[0].as_i64().unwrap(),
            k.values()[1].as_i64().unwrap(),
        )
    };
    for w in jobs.windows(2) {
        assert!(pair(&w[0].max_value) < pair(&w[1].min_value), "{w:?}");
    }
    // A job's sub-batches each start from their own bound (no rescan from the job's start):
    // seven keys each, in order.
    let recent = &jobs[0].metrics.recent;
    assert_eq!(recent.len(), 3, "20 keys in sub-batches of 7");
    assert_eq!(recent[0].start, serde_json::json!([1, 1]));
    assert_eq!(recent[0].end, serde_json::json!([2, 10]));
    assert_eq!(recent[1].start, serde_json::json!([2, 13]));
    // Composite keys are counted too: seven a sub-batch, the last the rest (at most seven).
    assert_eq!(recent[0].key_count(), Some(7));
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_partitioned_table_is_walked_by_id_and_partition() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    db.exec(
        "CREATE TABLE builds (id bigint NOT NULL, partition_id integer NOT NULL,
                              n integer NOT NULL DEFAULT 0, PRIMARY KEY (id, partition_id))
             PARTITION BY LIST (partition_id);
         CREATE TABLE builds_100 PARTITION OF builds FOR VALUES IN (100);
         CREATE TABLE builds_101 PARTITION OF builds FOR VALUES IN (101);
         CREATE TABLE builds_102 PARTITION OF builds FOR VALUES IN (102);
         INSERT INTO builds (id, partition_id) SELECT g, 100 + g % 3 FROM generate_series(1, 3000) g;
         INSERT INTO builds (id, partition_id) SELECT g, 100 + (g + 1) % 3 FROM generate_series(1, 500) g;
         ANALYZE builds",
    )
    .await;
    let sg = db.sluicegate().await;
    let m = increment_all(&sg, "builds", None, 400, 100).await;
    assert_eq!(m.key.display_names(), "(id, partition_id)");
    assert_each_row_once(&db, &sg, &m, "builds").await;
    assert_eq!(
        sg.jobs(&m, None).await.unwrap().len(),
        9,
        "3,500 keys in jobs of 400"
    );
}

store_test!(quoted_mixed_case_key_columns_are_walked, |db| {
    db.exec(
        r#"CREATE TABLE "Tenant Rows" ("TenantId" bigint NOT NULL, "Row Id" text NOT NULL,
                                        n integer NOT NULL DEFAULT 0, PRIMARY KEY ("TenantId", "Row Id"))"#,
    )
    .await;
    let rows: Vec<String> = (0..300)
        .map(|i| format!("({}, 'r-{:03}')", i % 4, i))
        .collect();
    db.exec(&insert_sql("Tenant Rows", r#""TenantId", "Row Id""#, &rows))
        .await;
    let sg = db.sluicegate().await;
    if db.backend == Backend::Postgres {
        // PostgreSQL reads names as written: a case mismatch is refused, with a hint.
        let mut req = fast("wrong", "update", "Tenant Rows", 50, 10).argument("set", "n = n + 1");
        req.key = Some(vec!["tenantid".into(), "Row Id".into()]);
        let err = sg.queue(&req).await.unwrap_err().to_string();
        assert!(err.contains("did you mean \"TenantId\""), "{err}");
    }
    let m = increment_all(&sg, "Tenant Rows", Some(&["TenantId", "Row Id"]), 50, 10).await;
    assert_each_row_once(&db, &sg, &m, "Tenant Rows").await;
    assert_eq!(m.key.display_names(), "(TenantId, Row Id)");
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_without_rowid_table_with_a_nocase_text_key() {
    let db = TestDb::sqlite().await;
    db.exec(
        "CREATE TABLE words (w TEXT COLLATE NOCASE PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    )
    .await;
    let mut rows: Vec<String> = (0..400).map(|i| format!("('w{i:03}')")).collect();
    rows.extend(["('Apple')", "('banana')", "('Cherry')", "('date')"].map(String::from));
    db.exec(&insert_sql("words", "w", &rows)).await;
    let sg = db.sluicegate().await;
    let m = increment_all(&sg, "words", None, 64, 16).await;
    assert_eq!(m.key.columns()[0].key_type, sluicegate::KeyType::Text);
    assert_each_row_once(&db, &sg, &m, "words").await;
    // NOCASE order: Apple, banana, Cherry, date, w000...
    assert_eq!(m.min_value, Key(vec!["Apple".into()]));
}

store_test!(
    nullable_and_non_unique_keys_are_refused_unless_asked_for,
    |db| {
        db.exec(
            "CREATE TABLE orders (id bigint PRIMARY KEY, code text UNIQUE, grp bigint NOT NULL,
                              n integer NOT NULL DEFAULT 0, note json)",
        )
        .await;
        let rows: Vec<String> = (1..=200)
            .map(|i| format!("({i}, 'c{i}', {})", i % 7))
            .collect();
        db.exec(&insert_sql("orders", "id, code, grp", &rows)).await;
        let sg = db.sluicegate().await;
        let req = |name: &str, key: &str| {
            let mut r = fast(name, "update", "orders", 20, 5).argument("set", "n = n + 1");
            r.key = Some(vec![key.into()]);
            r
        };
        let err = sg.queue(&req("a", "code")).await.unwrap_err().to_string();
        assert!(
            err.contains("column \"code\" of table \"orders\" may be NULL"),
            "{err}"
        );
        let err = sg.queue(&req("b", "grp")).await.unwrap_err().to_string();
        assert!(err.contains("is not unique"), "{err}");
        assert!(err.contains("--non-unique-key"), "{err}");
        assert!(
            err.contains("(id)"),
            "names the unique key that would do: {err}"
        );
        let err = sg.queue(&req("c", "nope")).await.unwrap_err();
        assert!(matches!(err, Error::UnknownColumn { .. }), "{err}");
        if db.backend == Backend::Postgres {
            let err = sg.queue(&req("d", "note")).await.unwrap_err().to_string();
            assert!(err.contains("is of type json"), "{err}");
        }
        assert!(sg.migrations().await.unwrap().is_empty(), "nothing written");
        // Asked for explicitly: every row of one key value falls in one sub-batch.
        let mut explicit = req("inc", "grp");
        explicit.non_unique_key = true;
        sg.queue(&explicit).await.unwrap();
        run_to_end(&sg).await;
        let m = sg.migration("inc").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        assert_each_row_once(&db, &sg, &m, "orders").await;
    }
);

/// Times out every sub-batch that holds key `(a, b)` of a two-column key.
#[derive(Clone)]
struct TimeoutAt(i64, i64);

#[async_trait]
impl JobKind for TimeoutAt {
    fn name(&self) -> &str {
        "timeout-at"
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let pair = |k: &Key| {
            (
                k.values()[0].as_i64().unwrap(),
                k.values()[1].as_i64().unwrap(),
            )
        };
        if (pair(batch.start())..=pair(batch.end())).contains(&(self.0, self.1)) {
            return Err(Failure::new(
                "StatementTimeout",
                "simulated statement timeout",
            ));
        }
        increment(batch).await
    }
}

store_test!(a_job_on_a_composite_key_is_split_at_a_middle_key, |db| {
    db.exec(
        "CREATE TABLE pairs (a bigint NOT NULL, b integer NOT NULL, n integer NOT NULL DEFAULT 0,
                             PRIMARY KEY (a, b))",
    )
    .await;
    let rows: Vec<String> = (0..400)
        .map(|i| format!("({}, {})", i / 10, i % 10))
        .collect();
    db.exec(&insert_sql("pairs", "a, b", &rows)).await;
    let sg = db.sluicegate_with(registry_with(TimeoutAt(12, 5))).await;
    sg.queue(&fast("split", "timeout-at", "pairs", 100, 100))
        .await
        .unwrap();
    run_to_end(&sg).await;
    let m = sg.migration("split").await.unwrap();
    let jobs = assert_chains(&sg, &m).await;
    let splits: Vec<String> = {
        let mut found = Vec::new();
        for job in &jobs {
            for row in sg.job_history(job.id).await.unwrap() {
                if let Some(msg) = row.exception_message.filter(|m| m.starts_with("split:")) {
                    found.push(msg);
                }
            }
        }
        found
    };
    assert!(!splits.is_empty(), "the job holding (12, 5) was split");
    assert!(
        splits[0].contains("keys up to ("),
        "composite keys named: {splits:?}"
    );
    // The halves are ranges of existing keys that meet without a gap or an overlap, and only
    // the smallest one holding (12, 5) fails for good.
    let holding: Vec<_> = jobs
        .iter()
        .filter(|j| {
            let pair = |k: &Key| {
                (
                    k.values()[0].as_i64().unwrap(),
                    k.values()[1].as_i64().unwrap(),
                )
            };
            (pair(&j.min_value)..=pair(&j.max_value)).contains(&(12, 5))
        })
        .collect();
    assert_eq!(holding.len(), 1, "{jobs:?}");
    assert_eq!(holding[0].status, JobStatus::Failed);
    assert!(holding[0].batch_size < 100);
    // Only the failed job's rows are left undone; none was done twice.
    assert_eq!(db.scalar("SELECT count(*) FROM pairs WHERE n > 1").await, 0);
    let undone = db.scalar("SELECT count(*) FROM pairs WHERE n = 0").await;
    assert!(undone >= 1 && undone <= holding[0].batch_size, "{undone}");
    assert_eq!(
        db.scalar("SELECT CAST(n AS bigint) FROM pairs WHERE a = 12 AND b = 5")
            .await,
        0
    );
});

/// Fails the `nth` sub-batch it sees (once), after the ones before it committed.
#[derive(Clone)]
struct FailNth(Arc<AtomicI64>);

#[async_trait]
impl JobKind for FailNth {
    fn name(&self) -> &str {
        "fail-nth"
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        if self.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            return Err(Failure::new(
                "TestFailure",
                "the third sub-batch fails once",
            ));
        }
        increment(batch).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_a_uuid_key_resumes_after_its_cursor() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    db.exec(
        "CREATE TABLE tokens (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), n integer NOT NULL DEFAULT 0);
         INSERT INTO tokens (n) SELECT 0 FROM generate_series(1, 1000)",
    )
    .await;
    let sg = db
        // The fourth call: queue's trial sub-batch, then the job's first three.
        .sluicegate_with(registry_with(FailNth(Arc::new(AtomicI64::new(4)))))
        .await;
    sg.queue(&fast("resume", "fail-nth", "tokens", 1_000, 100))
        .await
        .unwrap();
    run_to_end(&sg).await;
    let m = sg.migration("resume").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    let jobs = assert_chains(&sg, &m).await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.attempts, 2, "failed once, then retried");
    // The retry started after the two committed sub-batches: 8 of 10, not 10.
    assert_eq!(job.metrics.sub_batches, Some(8), "{:?}", job.metrics);
    assert_eq!(job.cursor.as_ref(), Some(&job.max_value));
    assert_each_row_once(&db, &sg, &m, "tokens").await;
}

// GitLab's scope_to: a cleanup of 300 orphans among 30,000 rows makes jobs of 50 *matching*
// keys (6 jobs), not of 50 keys (600 jobs); the dry run says so; only matching rows are touched.
store_test!(a_scoped_cleanup_makes_jobs_of_matching_keys, |db| {
    db.exec(
        "CREATE TABLE events (id bigint PRIMARY KEY, state text NOT NULL, n integer NOT NULL DEFAULT 0)",
    )
    .await;
    let insert = match db.backend {
        Backend::Postgres => {
            "INSERT INTO events (id, state)
             SELECT g, CASE WHEN g % 100 = 0 THEN 'orphan' ELSE 'ok' END
             FROM generate_series(1, 30000) g"
        }
        Backend::Sqlite => {
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 30000)
             INSERT INTO events (id, state)
             SELECT g, CASE WHEN g % 100 = 0 THEN 'orphan' ELSE 'ok' END FROM s"
        }
    };
    db.exec(insert).await;
    if db.backend == Backend::Postgres {
        db.exec("ANALYZE events").await;
    }
    let sg = db.sluicegate().await;
    let mut req = fast("cleanup", "delete", "events", 50, 50);
    req.scope = Some("state = 'orphan'".into());
    let plan = sg.plan(&req).await.unwrap();
    let rows = plan.migration.total_tuple_count.unwrap();
    assert!(
        (225..=375).contains(&rows),
        "the dry run's rows: {rows} (300 match)"
    );
    let jobs = plan.estimated_jobs().unwrap();
    assert!(
        (5..=8).contains(&jobs),
        "the dry run's jobs: {jobs} (6 needed)"
    );
    assert_eq!(
        plan.trials[0].rows, 50,
        "the trial sub-batch held 50 orphans"
    );
    sg.queue(&req).await.unwrap();
    run_to_end(&sg).await;
    let m = sg.migration("cleanup").await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished);
    assert_eq!(
        m.min_value,
        Key::int(100),
        "the range starts at the first match"
    );
    assert_eq!(sg.jobs(&m, None).await.unwrap().len(), 6);
    assert_eq!(
        db.scalar("SELECT count(*) FROM events WHERE state = 'orphan'")
            .await,
        0
    );
    assert_eq!(db.scalar("SELECT count(*) FROM events").await, 29_700);
    // A scope that does not run is refused at queue time, naming it.
    let mut bad = fast("bad", "delete", "events", 50, 50);
    bad.scope = Some("stat = 'orphan'".into());
    let err = sg.queue(&bad).await.unwrap_err().to_string();
    assert!(
        err.contains("--scope \"stat = 'orphan'\" does not run"),
        "{err}"
    );
});

// The job bodies GitLab's migrations need: two statements (children, then parents), an
// `UPDATE ... FROM` join (the sharding-key backfills), lists of columns to copy, and `{range}`
// on a composite key.
store_test!(
    job_bodies_of_several_statements_joins_and_column_lists,
    |db| {
        db.exec(
        "CREATE TABLE parents (id bigint PRIMARY KEY, project_id bigint, doomed integer NOT NULL DEFAULT 0,
                               a text, b text, a2 text, b2 text, n integer NOT NULL DEFAULT 0)",
    )
    .await;
        db.exec("CREATE TABLE children (id bigint PRIMARY KEY, parent_id bigint NOT NULL)")
            .await;
        db.exec("CREATE TABLE projects (parent_id bigint PRIMARY KEY, project_id bigint NOT NULL)")
            .await;
        let parents: Vec<String> = (1..=300)
            .map(|i| format!("({i}, {}, 'a{i}', 'b{i}')", (i % 3 == 0) as i32))
            .collect();
        db.exec(&insert_sql("parents", "id, doomed, a, b", &parents))
            .await;
        let children: Vec<String> = (1..=600)
            .map(|i| format!("({i}, {})", (i + 1) / 2))
            .collect();
        db.exec(&insert_sql("children", "id, parent_id", &children))
            .await;
        let projects: Vec<String> = (1..=300).map(|i| format!("({i}, {})", 1000 + i)).collect();
        db.exec(&insert_sql("projects", "parent_id, project_id", &projects))
            .await;
        let sg = db.sluicegate().await;

        // Join: the sharding key comes from another table.
        let backfill = fast("shard", "update", "parents", 64, 16)
            .argument("set", "project_id = projects.project_id")
            .argument("from", "projects")
            .argument("join", "projects.parent_id = parents.id");
        sg.queue(&backfill).await.unwrap();
        // Lists of columns.
        let copy = fast("copy", "copy-column", "parents", 64, 16)
            .argument("from", "a,b")
            .argument("to", "a2,b2");
        sg.queue(&copy).await.unwrap();
        run_to_end(&sg).await;
        assert_eq!(
            db.scalar("SELECT count(*) FROM parents WHERE project_id = 1000 + id")
                .await,
            300
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM parents WHERE a2 = a AND b2 = b")
                .await,
            300
        );
        let mismatched = fast("bad", "copy-column", "parents", 64, 16)
            .argument("from", "a,b")
            .argument("to", "a2");
        let err = sg.queue(&mismatched).await.unwrap_err().to_string();
        assert!(err.contains("as many columns (2 and 1)"), "{err}");

        // Two statements: the doomed parents' children, then the parents; rows counted are the
        // last statement's.
        let cleanup = fast("cleanup", "sql", "parents", 64, 16).argument(
        "sql",
        "DELETE FROM children WHERE parent_id IN (SELECT id FROM parents WHERE {range} AND doomed = 1);
         DELETE FROM parents WHERE {range} AND doomed = 1",
    );
        sg.queue(&cleanup).await.unwrap();
        run_to_end(&sg).await;
        let m = sg.migration("cleanup").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        assert_eq!(db.scalar("SELECT count(*) FROM parents").await, 200);
        assert_eq!(db.scalar("SELECT count(*) FROM children").await, 400);
        let rows: i64 = sg
            .jobs(&m, None)
            .await
            .unwrap()
            .iter()
            .map(|j| j.rows_affected)
            .sum();
        assert_eq!(rows, 100, "the parents deleted, not the children");
        // A statement that is not restricted to the sub-batch is refused at queue time.
        let unbounded = fast("unbounded", "sql", "parents", 64, 16).argument(
            "sql",
            "DELETE FROM children WHERE parent_id = 0; DELETE FROM parents WHERE {range}",
        );
        let err = sg.queue(&unbounded).await.unwrap_err().to_string();
        assert!(
            err.contains("statement 1 of 2 must restrict itself"),
            "{err}"
        );
    }
);

store_test!(
    the_sql_kind_range_placeholder_works_on_a_composite_key,
    |db| {
        db.exec(
            "CREATE TABLE pairs (a bigint NOT NULL, b text NOT NULL, n integer NOT NULL DEFAULT 0,
                             PRIMARY KEY (a, b))",
        )
        .await;
        let rows: Vec<String> = (0..250)
            .map(|i| format!("({}, 'k{:03}')", i % 5, i))
            .collect();
        db.exec(&insert_sql("pairs", "a, b", &rows)).await;
        let sg = db.sluicegate().await;
        sg.queue(
            &fast("inc", "sql", "pairs", 40, 9)
                .argument("sql", "UPDATE pairs SET n = n + 1 WHERE {range}"),
        )
        .await
        .unwrap();
        run_to_end(&sg).await;
        let m = sg.migration("inc").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        assert_each_row_once(&db, &sg, &m, "pairs").await;
    }
);

// A composite key on a separate target database (the range found on the target, the cursor
// recorded apart), explicit composite bounds, and three workers side by side.
store_test!(
    a_composite_key_on_a_separate_target_with_bounds_and_three_workers,
    |db| {
        let target = match db.backend {
            Backend::Postgres => TestDb::postgres().await,
            Backend::Sqlite => TestDb::sqlite().await,
        };
        target
        .exec(
            "CREATE TABLE pairs (a bigint NOT NULL, b integer NOT NULL, n integer NOT NULL DEFAULT 0,
                                 PRIMARY KEY (a, b))",
        )
        .await;
        let rows: Vec<String> = (0..1000)
            .map(|i| format!("({}, {})", i / 10, i % 10))
            .collect();
        target.exec(&insert_sql("pairs", "a, b", &rows)).await;
        let mut opts = sluicegate::ConnectOptions::new(&db.url);
        opts.target_url = Some(target.url.clone());
        let sg = Sluicegate::connect_with(opts).await.unwrap();
        sg.setup().await.unwrap();
        let mut req = fast("remote", "update", "pairs", 40, 10).argument("set", "n = n + 1");
        req.min_value = Some("[10, 5]".into());
        req.max_value = Some("[89, 4]".into());
        let m = sg.queue(&req).await.unwrap();
        assert_eq!(m.min_value.to_string(), "(10, 5)");
        let workers: Vec<_> = (0..3).map(|i| worker(&sg, &format!("w{i}"))).collect();
        tokio::time::timeout(
            std::time::Duration::from_secs(120),
            futures::future::try_join_all(workers.iter().map(|w| w.run_until_idle())),
        )
        .await
        .unwrap()
        .unwrap();
        let m = sg.migration("remote").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        let jobs = assert_chains(&sg, &m).await;
        // (10, 5) ..= (89, 4): 790 keys, each once; none outside.
        assert_eq!(
            target
                .scalar("SELECT count(*) FROM pairs WHERE n = 1 AND a * 10 + b BETWEEN 105 AND 894")
                .await,
            790
        );
        assert_eq!(
            target
                .scalar("SELECT count(*) FROM pairs WHERE n <> 0 AND n <> 1")
                .await,
            0
        );
        assert_eq!(
        target
            .scalar("SELECT count(*) FROM pairs WHERE n = 1 AND (a * 10 + b < 105 OR a * 10 + b > 894)")
            .await,
        0
    );
        assert_eq!(jobs.len(), 20, "790 keys in jobs of 40");
        assert!(jobs.iter().all(|j| j.cursor.as_ref() == Some(&j.max_value)));
    }
);

/// The `sub_batch_latency` reading `sluicegate health` gives `m` after its jobs ran: measured
/// from the key counts its jobs' metrics keep, whatever the key.
async fn latency_reading(sg: &Sluicegate, m: &Migration) -> sluicegate::health::Reading {
    let readings = sg.health(m).await.unwrap();
    readings
        .into_iter()
        .find(|r| r.indicator == sluicegate::health::Indicator::SubBatchLatency)
        .expect("a latency reading")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_measures_latency_on_a_uuid_key() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    db.exec(
        "CREATE TABLE tokens (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), n integer NOT NULL DEFAULT 0);
         INSERT INTO tokens (n) SELECT 0 FROM generate_series(1, 600)",
    )
    .await;
    let sg = db.sluicegate().await;
    // Six jobs of ten sub-batches: more than the twenty sub-batches the indicator needs.
    let m = increment_all(&sg, "tokens", None, 100, 10).await;
    let r = latency_reading(&sg, &m).await;
    assert_eq!(r.signal, sluicegate::health::Signal::Normal, "{r:?}");
    assert!(r.reading.contains("the running median per key"), "{r:?}");
}

store_test!(health_measures_latency_on_a_composite_key, |db| {
    db.exec(
        "CREATE TABLE pairs (a bigint NOT NULL, b integer NOT NULL, n integer NOT NULL DEFAULT 0,
                             PRIMARY KEY (a, b))",
    )
    .await;
    let rows: Vec<String> = (0..600)
        .map(|i| format!("({}, {})", i / 7, i % 7 * 3))
        .collect();
    db.exec(&insert_sql("pairs", "a, b", &rows)).await;
    let sg = db.sluicegate().await;
    let m = increment_all(&sg, "pairs", None, 100, 10).await;
    let jobs = sg.jobs(&m, None).await.unwrap();
    assert!(
        jobs.iter()
            .flat_map(|j| &j.metrics.recent)
            .all(|s| s.key_count().is_some_and(|k| (1..=10).contains(&k))),
        "{:?}",
        jobs[0].metrics
    );
    let r = latency_reading(&sg, &m).await;
    assert_eq!(r.signal, sluicegate::health::Signal::Normal, "{r:?}");
    assert!(r.reading.contains("the running median per key"), "{r:?}");
});
