//! Deploying migrations: a worker limited to some migrations (`run --only`).

use std::time::Duration;

use sluicegate::{store_test, MigrationStatus};

use crate::common::*;

store_test!(a_worker_limited_to_one_migration_leaves_the_others, |db| {
    db.create_items("items", &[(1, 300)]).await;
    db.create_items("others", &[(1, 300)]).await;
    let sg = db.sluicegate().await;
    let a = sg
        .queue(&fast("a", "update", "items", 100, 50).argument("set", "n = n + 1"))
        .await
        .unwrap();
    let b = sg
        .queue(&fast("b", "update", "others", 100, 50).argument("set", "n = n + 1"))
        .await
        .unwrap();
    // `a` is older and due: a worker limited to `b` never claims it, and is idle once `b`
    // is done.
    tokio::time::timeout(
        Duration::from_secs(120),
        worker(&sg, "w1").only(vec![b.id]).run_until_idle(),
    )
    .await
    .expect("the worker ends once b is finished")
    .unwrap();
    let a = sg.migration(&a.id.to_string()).await.unwrap();
    let b = sg.migration(&b.id.to_string()).await.unwrap();
    assert_eq!(b.status, MigrationStatus::Finished);
    assert_eq!(a.status, MigrationStatus::Active);
    assert!(sg.jobs(&a, None).await.unwrap().is_empty());
    assert_eq!(db.scalar("SELECT sum(n) FROM others").await, 300);
    assert_eq!(db.scalar("SELECT coalesce(sum(n), 0) FROM items").await, 0);
});
