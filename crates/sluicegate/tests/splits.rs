//! Splits that always make progress (issue 18, item 12): a job that keeps timing out past
//! its middle is split from its cursor on, at whatever point remains, with a backoff between
//! attempts, until only what cannot be done is left.

use std::time::Duration;

use async_trait::async_trait;
use sluicegate::testing::TestDb;
use sluicegate::{
    skip_without_postgres, store_test, Failure, JobKind, JobStatus, MigrationStatus, Sluicegate,
    SubBatch,
};

use crate::common::*;

/// `n = n + 1`, but a sub-batch holding more than `most` keys of `from..=to` times out (a
/// slow region: on SQLite, which has no statement timeout, the timeout is the kind's word).
struct SlowRegion {
    from: i64,
    to: i64,
    most: i64,
}

#[async_trait]
impl JobKind for SlowRegion {
    fn name(&self) -> &str {
        "slow-region"
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let keys = keys(batch);
        let slow = ((*keys.end()).min(self.to) - (*keys.start()).max(self.from) + 1).max(0);
        if slow > self.most {
            return Err(Failure::new(
                "StatementTimeout",
                format!("{slow} slow keys in one sub-batch"),
            ));
        }
        increment(batch).await
    }
}

/// The migration finished, every row changed exactly once, a job was split past its middle
/// (from its cursor), and failed attempts were spaced by the backoff (0.2 s, then 0.6 s).
async fn finished_through_splits(db: &TestDb, sg: &Sluicegate, name: &str, table: &str) {
    tokio::time::timeout(Duration::from_secs(300), worker(sg, "w1").run_until_idle())
        .await
        .expect("the run ends")
        .expect("the run succeeds");
    let m = sg.migration(name).await.unwrap();
    assert_eq!(m.status, MigrationStatus::Finished, "{m:?}");
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM {table} WHERE n <> 1"))
            .await,
        0,
        "every row exactly once"
    );
    let jobs = assert_chains(sg, &m).await;
    assert_disjoint(&jobs);
    assert!(jobs.iter().all(|j| j.status == JobStatus::Succeeded));
    // The first job (1..=1000) timed out with its cursor at 800, past its middle: it was
    // split there, not given up.
    let first = sg.job_history(jobs[0].id).await.unwrap();
    let split = first
        .iter()
        .find(|r| {
            r.exception_message
                .as_deref()
                .unwrap_or("")
                .starts_with("split:")
        })
        .unwrap_or_else(|| panic!("the first job was split: {first:?}"));
    let said = split.exception_message.as_deref().unwrap();
    assert!(
        said.starts_with("split: keys up to 9") && said.contains("..1000 moved to job"),
        "split from the cursor (800) at the middle of what remains: {said}"
    );
    // Backoff: each retry of a failed attempt waited longer than the one before.
    let mut waits = Vec::new();
    for pair in first.windows(2) {
        if pair[0].next_status == JobStatus::Failed && pair[1].next_status == JobStatus::Running {
            waits.push((pair[1].created_at - pair[0].created_at).num_milliseconds());
        }
    }
    assert!(waits.len() >= 2, "{first:?}");
    assert!(waits[0] >= 200 && waits[1] >= 600, "backoff: {waits:?}");
}

store_test!(
    a_job_timing_out_past_its_middle_is_split_from_its_cursor_until_it_succeeds,
    |db| {
        // Keys 801..=810 are slow: a sub-batch holding more than two of them times out.
        let sg = db
            .sluicegate_with(registry_with(SlowRegion {
                from: 801,
                to: 810,
                most: 2,
            }))
            .await;
        db.create_items("items", &[(1, 1_000)]).await;
        sg.queue(&fast("slow", "slow-region", "items", 1_000, 100))
            .await
            .unwrap();
        finished_through_splits(&db, &sg, "slow", "items").await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_region_under_a_real_statement_timeout_is_split_until_it_succeeds() {
    skip_without_postgres!("SLUICEGATE_TEST_PG_URL");
    let db = TestDb::postgres().await;
    db.create_items("items", &[(1, 1_000)]).await;
    // Keys 801..=810 take 60 ms each to update: a sub-batch holding more than two of them
    // runs past the 150 ms statement timeout.
    db.exec(
        "CREATE FUNCTION slow_keys() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.id BETWEEN 801 AND 810 THEN PERFORM pg_sleep(0.06); END IF;
           RETURN NEW;
         END $$",
    )
    .await;
    db.exec(
        "CREATE TRIGGER slow_keys BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION slow_keys()",
    )
    .await;
    let sg = db.sluicegate().await;
    let mut req = fast("slow", "update", "items", 1_000, 100).argument("set", "n = n + 1");
    req.statement_timeout = Duration::from_millis(150);
    sg.queue(&req).await.unwrap();
    finished_through_splits(&db, &sg, "slow", "items").await;
}
