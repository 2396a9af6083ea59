//! The job transition log on PostgreSQL: partitioned by month, created ahead, dropped whole
//! after the retention.

use chrono::{Datelike, NaiveDate, Utc};
use sluicegate::store::month_start_utc;
use sluicegate::store::postgres::partition_name;
use sluicegate::testing::TestDb;

fn month(offset: i32) -> NaiveDate {
    let now = Utc::now();
    let index = now.year() * 12 + now.month0() as i32 + offset;
    NaiveDate::from_ymd_opt(index.div_euclid(12), index.rem_euclid(12) as u32 + 1, 1).unwrap()
}

#[tokio::test]
async fn partitions_are_created_ahead_and_dropped_after_retention() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");

    let db = TestDb::postgres().await;
    let sg = db.sluicegate().await;
    let parts = sg.store().log_partitions_list().await.unwrap();
    assert_eq!(
        parts,
        vec![partition_name(month(0)), partition_name(month(1))]
    );

    // A migration run today: its log rows land in this month's partition.
    db.create_items("items", &[(1, 10)]).await;
    let m = sg
        .queue(&crate::common::fast("m", "update", "items", 10, 10).argument("set", "n = 1"))
        .await
        .unwrap();
    crate::common::run_to_end(&sg).await;
    let job_id = sg.jobs(&m, None).await.unwrap()[0].id;

    // A worker that ran 8 months ago created that month's partition and the next.
    let old_now = month_start_utc(month(-8));
    let report = sg
        .store()
        .log_partitions_maintain(old_now, 6)
        .await
        .unwrap();
    assert_eq!(
        report.created,
        vec![partition_name(month(-8)), partition_name(month(-7))]
    );
    db.exec(&format!(
        "INSERT INTO sluicegate.job_transition_logs (job_id, migration_id, previous_status, next_status, created_at) \
         VALUES ({job_id}, {}, 'pending', 'running', '{}')",
        m.id,
        old_now.to_rfc3339()
    ))
    .await;
    let old_part = partition_name(month(-8));
    assert_eq!(
        db.scalar(&format!("SELECT count(*) FROM sluicegate.{old_part}"))
            .await,
        1
    );

    // Today, with 6 months' retention: the partitions of 8 and 7 months ago go, whole.
    let report = sg
        .store()
        .log_partitions_maintain(Utc::now(), 6)
        .await
        .unwrap();
    assert_eq!(
        report.dropped,
        vec![partition_name(month(-8)), partition_name(month(-7))]
    );
    assert!(report.created.is_empty());
    let parts = sg.store().log_partitions_list().await.unwrap();
    assert_eq!(
        parts,
        vec![partition_name(month(0)), partition_name(month(1))]
    );
    let history = sg.job_history(job_id).await.unwrap();
    assert_eq!(history.len(), 2, "this month's rows are kept: {history:?}");
}

#[tokio::test]
async fn workers_create_partitions_ahead_not_only_setup() {
    sluicegate::skip_without_postgres!("SLUICEGATE_TEST_PG_URL");

    let db = TestDb::postgres().await;
    let sg = db.sluicegate().await;
    db.exec(&format!(
        "DROP TABLE sluicegate.{}",
        partition_name(month(1))
    ))
    .await;
    assert_eq!(sg.store().log_partitions_list().await.unwrap().len(), 1);
    let mut worker = crate::common::worker(&sg, "w").new_loop();
    worker.step().await.unwrap();
    let parts = sg.store().log_partitions_list().await.unwrap();
    assert_eq!(
        parts,
        vec![partition_name(month(0)), partition_name(month(1))]
    );
}
