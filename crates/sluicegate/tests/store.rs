//! The store conformance suite (River's `riverdrivertest`): every primitive of [`Store`] and
//! [`Target`], called directly, with the same expectations on PostgreSQL and SQLite. The
//! engine relies on exactly these behaviours; a backend that differs fails here first.

use std::time::Duration;

use serde_json::json;
use sluicegate::store::{
    JobCreateParams, JobCreated, JobCursor, JobFinish, JobRange, JobSplitParams,
    JobTransitionParams, MigrationResizeParams, MigrationTransitionParams, SubBatchCommit,
    SubBatchCommitted, SubBatchSpec, Timeouts,
};
use sluicegate::{
    ident::TableName, store_test, Error, JobStatus, Key, Lower, Migration, MigrationEvent,
    MigrationStatus, Sluicegate,
};

use crate::common::{fast, take_job};

const LEASE: Duration = Duration::from_secs(30);

async fn queued(sg: &Sluicegate, name: &str, table: &str, batch: i64) -> Migration {
    sg.queue(&fast(name, "update", table, batch, batch.min(100)).argument("set", "n = n + 1"))
        .await
        .unwrap()
}

fn k(v: i64) -> Key {
    Key::int(v)
}

fn create(m: &Migration, start: Lower, range: JobRange, worker: &str) -> JobCreateParams {
    JobCreateParams {
        migration_id: m.id,
        expected_next: start,
        range,
        batch_size: m.batch_size,
        sub_batch_size: m.sub_batch_size,
        pause_ms: 0,
        worker: worker.into(),
        lease: LEASE,
        lane: None,
    }
}

store_test!(migrations_are_inserted_read_and_listed, |db| {
    db.create_items("items", &[(1, 100)]).await;
    db.create_items("others", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let a = queued(&sg, "a", "items", 50).await;
    let b = queued(&sg, "b", "others", 50).await;
    let store = sg.store();
    assert_eq!(store.migration_get(a.id).await.unwrap().unwrap().name, "a");
    assert_eq!(
        store.migration_get_by_name("b").await.unwrap().unwrap().id,
        b.id
    );
    assert!(store.migration_get(b.id + 100).await.unwrap().is_none());
    let names: Vec<String> = store
        .migration_list()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    let log = store.migration_transition_list(a.id).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].event, MigrationEvent::Queue);
    assert_eq!(log[0].next_status, MigrationStatus::Active);
});

store_test!(a_claim_takes_only_due_migrations_and_one_per_table, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let store = sg.store();
    let mut paced = fast("paced", "update", "items", 50, 50).argument("set", "n = 1");
    paced.interval = Duration::from_secs(3600);
    let a = sg.queue(&paced).await.unwrap();
    let mut paused = fast("paused", "update", "items", 50, 50).argument("set", "n = 2");
    paused.paused = true;
    let b = sg.queue(&paused).await.unwrap();
    // Due: claimed, with the table lease.
    let claimed = store.migration_claim("w1", LEASE, None).await.unwrap();
    assert_eq!(claimed.map(|m| m.id), Some(a.id));
    // Its first job starts the interval: no longer due.
    let created = store
        .job_create(&create(
            &a,
            Lower::From(k(1)),
            JobRange::Given {
                min: k(1),
                max: k(50),
            },
            "w1",
        ))
        .await
        .unwrap();
    assert!(matches!(created, JobCreated::Created(..)), "{created:?}");
    assert!(store
        .migration_claim("w2", LEASE, None)
        .await
        .unwrap()
        .is_none());
    // A resumed migration of the same table waits for the table lease.
    sg.apply("paused", MigrationEvent::Resume, None, "cli")
        .await
        .unwrap();
    assert!(store
        .migration_claim("w2", LEASE, None)
        .await
        .unwrap()
        .is_none());
    // `only` claims a given migration whatever its interval, the table lease still applying.
    assert!(store
        .migration_claim("w2", LEASE, Some(b.id))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store
            .migration_claim("w1", LEASE, Some(a.id))
            .await
            .unwrap()
            .map(|m| m.id),
        Some(a.id)
    );
});

store_test!(
    a_hold_keeps_the_status_and_blocks_claims_until_it_ends,
    |db| {
        db.create_items("items", &[(1, 100)]).await;
        let sg = db.sluicegate().await;
        let store = sg.store();
        let m = queued(&sg, "held", "items", 50).await;
        let params = MigrationTransitionParams::new(&m, MigrationEvent::Hold, "w1")
            .unwrap()
            .with_reason(Some("probe: false".into()))
            .holding_for(
                sluicegate::health::Indicator::Probe,
                Duration::from_secs(3600),
            );
        let held = store.migration_transition(&params).await.unwrap();
        assert_eq!(held.status, MigrationStatus::Active);
        assert!(held.on_hold_until.is_some());
        assert!(store
            .migration_claim("w1", LEASE, None)
            .await
            .unwrap()
            .is_none());
        let log = store.migration_transition_list(m.id).await.unwrap();
        let hold = log.last().unwrap();
        assert_eq!(
            (hold.previous_status, hold.next_status, hold.event),
            (
                Some(MigrationStatus::Active),
                MigrationStatus::Active,
                MigrationEvent::Hold
            )
        );
        // A stale snapshot (already paused) is a conflict, not an overwrite.
        sg.apply("held", MigrationEvent::Pause, None, "cli")
            .await
            .unwrap();
        let err = store.migration_transition(&params).await.unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "{err}");
    }
);

store_test!(
    job_creation_walks_existing_keys_and_is_compare_and_set,
    |db| {
        db.create_items("items", &[(1, 10), (1_000, 1_004)]).await;
        let sg = db.sluicegate().await;
        let store = sg.store();
        let m = queued(&sg, "walk", "items", 8).await;
        store
            .migration_claim("w1", LEASE, None)
            .await
            .unwrap()
            .unwrap();
        let keyset = |size| JobRange::Keyset {
            table: TableName::parse("items").unwrap(),
            key: m.key.clone(),
            scope: None,
            size,
            statement_ms: 30_000,
        };
        let created = store
            .job_create(&create(&m, Lower::From(k(1)), keyset(8), "w1"))
            .await
            .unwrap();
        let JobCreated::Created(job, next) = created else {
            panic!("{created:?}")
        };
        assert_eq!(
            (job.min_value, job.max_value, next),
            (k(1), k(8), Some(Lower::After(k(8))))
        );
        assert_eq!(job.status, JobStatus::Running);
        assert_eq!(job.attempts, 1);
        // The same start again: the migration moved on, nothing written.
        let again = store
            .job_create(&create(&m, Lower::From(k(1)), keyset(8), "w1"))
            .await
            .unwrap();
        assert_eq!(again, JobCreated::NotNow);
        // Over the gap: 9, 10, 1000..1004 are the next 7 keys.
        let created = store
            .job_create(&create(&m, Lower::After(k(8)), keyset(8), "w1"))
            .await
            .unwrap();
        let JobCreated::Created(job, next) = created else {
            panic!("{created:?}")
        };
        assert_eq!((job.min_value, job.max_value, next), (k(9), k(1_004), None));
        assert_eq!(store.job_list(m.id, None).await.unwrap().len(), 2);
        let log = store.job_transition_list(job.id).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(
            (log[0].previous_status, log[0].next_status),
            (JobStatus::Pending, JobStatus::Running)
        );
    }
);

store_test!(the_range_is_exhausted_by_compare_and_set, |db| {
    db.create_items("items", &[(1, 10)]).await;
    let sg = db.sluicegate().await;
    let store = sg.store();
    let m = queued(&sg, "ex", "items", 5).await;
    let from = |v| Lower::From(k(v));
    assert!(!store.migration_range_exhaust(m.id, &from(7)).await.unwrap());
    assert!(!store
        .migration_range_exhaust(m.id, &Lower::After(k(1)))
        .await
        .unwrap());
    assert!(store.migration_range_exhaust(m.id, &from(1)).await.unwrap());
    assert_eq!(
        store.migration_get(m.id).await.unwrap().unwrap().next_start,
        None
    );
});

store_test!(resizes_are_logged_and_refused_on_final_migrations, |db| {
    db.create_items("items", &[(1, 10)]).await;
    let sg = db.sluicegate().await;
    let store = sg.store();
    let m = queued(&sg, "rs", "items", 500).await;
    let params = MigrationResizeParams {
        migration_id: m.id,
        batch_size: 200,
        sub_batch_size: 300,
        reason: "test: smaller".into(),
        actor: "w1".into(),
        expected_batch_size: None,
    };
    let resized = store.migration_resize(&params).await.unwrap().unwrap();
    assert_eq!((resized.batch_size, resized.sub_batch_size), (200, 200));
    let log = store.migration_transition_list(m.id).await.unwrap();
    assert_eq!(log.last().unwrap().event, MigrationEvent::Resize);
    assert_eq!(log.last().unwrap().reason.as_deref(), Some("test: smaller"));
    sg.apply("rs", MigrationEvent::Cancel, None, "cli")
        .await
        .unwrap();
    assert!(store.migration_resize(&params).await.unwrap().is_none());
});

store_test!(retriable_jobs_splits_checkpoints_and_heartbeats, |db| {
    db.create_items("items", &[(1, 400)]).await;
    let sg = db.sluicegate().await;
    let store = sg.store();
    let m = queued(&sg, "jobs", "items", 200).await;
    let (job, _) = take_job(&sg, &m, "w1", (1, 200), Duration::from_millis(300)).await;
    // Checkpoint and heartbeat are fenced by the attempt.
    assert!(store
        .job_checkpoint(job.id, 1, &k(50), 50, LEASE)
        .await
        .unwrap());
    assert!(!store
        .job_checkpoint(job.id, 2, &k(60), 10, LEASE)
        .await
        .unwrap());
    assert!(store
        .job_heartbeat(job.id, 1, Duration::from_millis(300))
        .await
        .unwrap());
    assert!(!store.job_heartbeat(job.id, 2, LEASE).await.unwrap());
    let job = store.job_get(job.id).await.unwrap().unwrap();
    assert_eq!((job.cursor, job.rows_affected), (Some(k(50)), 50));
    // Not retriable while its lease lives; retriable once it has run out.
    assert!(store.job_find_retriable(m.id, 3).await.unwrap().is_none());
    let expired = loop {
        if let Some(j) = store.job_find_retriable(m.id, 3).await.unwrap() {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(expired.id, job.id);
    let lost = JobTransitionParams::new(&expired, JobStatus::Failed, "w2")
        .unwrap()
        .if_lease_expired();
    let failed = store.job_transition(&lost).await.unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    // A split: the failed job keeps the first half, pending; a new pending job the rest.
    let (first, second) = store
        .job_split(&JobSplitParams {
            transition: JobTransitionParams::new(&failed, JobStatus::Pending, "w2").unwrap(),
            first_max: k(100),
            batch_size: 100,
            sub_batch_size: 50,
            second_min: k(101),
            second_max: k(200),
        })
        .await
        .unwrap();
    assert_eq!(
        (
            first.status,
            first.min_value,
            first.max_value,
            first.attempts
        ),
        (JobStatus::Pending, k(1), k(100), 0)
    );
    assert_eq!(
        (second.status, second.min_value, second.max_value),
        (JobStatus::Pending, k(101), k(200))
    );
    let counts = store.job_counts(m.id, 3).await.unwrap();
    assert_eq!((counts.pending, counts.running, counts.total()), (2, 0, 2));
    assert!(store
        .job_recent_succeeded(m.id, 20)
        .await
        .unwrap()
        .is_empty());
    let by_migration = store.job_transition_list_by_migration(m.id).await.unwrap();
    assert_eq!(by_migration.len(), 3, "{by_migration:?}");
});

store_test!(a_performed_sub_batch_commits_as_the_engine_says, |db| {
    db.create_items("items", &[(1, 300)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "sb", "items", 300).await;
    let (job, _) = take_job(&sg, &m, "w1", (1, 300), LEASE).await;
    let kind = sg.registry().get("update").unwrap();
    let table = TableName::parse("items").unwrap();
    let (max, lowers) = (
        k(300),
        [
            Lower::From(k(1)),
            Lower::After(k(100)),
            Lower::After(k(300)),
        ],
    );
    let spec = |start: usize, size| SubBatchSpec {
        kind: kind.as_ref(),
        table: &table,
        key: &m.key,
        scope: None,
        arguments: &m.job_arguments,
        lower: &lowers[start],
        max: &max,
        size,
        whole_rest: false,
        dense: false,
        timeouts: Timeouts {
            statement_ms: 30_000,
            lock_ms: 5_000,
        },
        key_unique: m.key_unique,
        shard: None,
    };
    let cursor = JobCursor {
        job_id: job.id,
        attempts: job.attempts,
        lease: LEASE,
    };
    // With the cursor.
    let performed = sg
        .target()
        .sub_batch_perform(spec(0, 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((performed.keys(), performed.rows()), (&(k(1), k(100)), 100));
    let committed = performed
        .commit(SubBatchCommit::Cursor(cursor))
        .await
        .unwrap();
    assert_eq!(committed, SubBatchCommitted::Committed);
    assert_eq!(sg.job(job.id).await.unwrap().cursor, Some(k(100)));
    // Fenced: a wrong attempt rolls the sub-batch back.
    let stale = JobCursor {
        attempts: job.attempts + 1,
        ..cursor
    };
    let performed = sg
        .target()
        .sub_batch_perform(spec(1, 100))
        .await
        .unwrap()
        .unwrap();
    let committed = performed
        .commit(SubBatchCommit::Cursor(stale))
        .await
        .unwrap();
    assert_eq!(committed, SubBatchCommitted::Fenced);
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        100
    );
    // Dropped uncommitted: rolled back.
    drop(
        sg.target()
            .sub_batch_perform(spec(1, 100))
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        100
    );
    // The last one, with the job's end.
    let finish = JobFinish {
        metrics: json!({"sub_batches": 2}),
        sub_batch_size: None,
        worker: "w1".into(),
        then_create: None,
    };
    let performed = sg
        .target()
        .sub_batch_perform(spec(1, 200))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(performed.keys(), &(k(101), k(300)));
    let committed = performed
        .commit(SubBatchCommit::Finish(cursor, &finish))
        .await
        .unwrap();
    let SubBatchCommitted::Finished { job: done, next } = committed else {
        panic!("{committed:?}")
    };
    assert!(next.is_none());
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!((done.cursor, done.rows_affected), (Some(k(300)), 300));
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        300
    );
    let log = sg.job_history(job.id).await.unwrap();
    assert_eq!(log.last().unwrap().next_status, JobStatus::Succeeded);
    // Nothing left in range: no transaction kept open.
    assert!(sg
        .target()
        .sub_batch_perform(spec(2, 100))
        .await
        .unwrap()
        .is_none());
});
