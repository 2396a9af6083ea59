//! The store conformance suite (River's driver tests): one test per primitive of [`Store`] and
//! [`Target`], named after it, run on PostgreSQL and SQLite with the same expectations, each
//! asserting the primitive's effect. [`every_primitive_has_a_conformance_test`] reads the two
//! traits' source and fails when a primitive is added without its test here.
//!
//! [`Store`]: sluicegate::store::Store
//! [`Target`]: sluicegate::store::Target

use std::time::Duration;

use serde_json::json;
use sluicegate::failure::Failure;
use sluicegate::model::{CitusTable, NewLane, NewMigration};
use sluicegate::store::{
    Backend, Capabilities, JobCreateParams, JobCreated, JobCursor, JobFinish, JobRange,
    JobSplitParams, JobTransitionParams, LaneHoldParams, LedgerCursor, MigrationSetParams,
    MigrationThrottleParams, MigrationTransitionParams, SubBatchCommit, SubBatchCommitted,
    SubBatchSpec, Timeouts, SCHEMA_VERSION,
};
use sluicegate::testing::TestDb;
use sluicegate::{
    ident::TableName, store_test, Error, Job, JobStatus, Key, KeyOptions, KeySpec, Lower,
    Migration, MigrationEvent, MigrationStatus, Sluicegate,
};

use crate::common::{fast, take_job};

const LEASE: Duration = Duration::from_secs(30);

fn k(v: i64) -> Key {
    Key::int(v)
}

fn items() -> TableName {
    TableName::parse("items").unwrap()
}

async fn queued(sg: &Sluicegate, name: &str, batch: i64) -> Migration {
    sg.queue(&fast(name, "update", "items", batch, batch.min(100)).argument("set", "n = n + 1"))
        .await
        .unwrap()
}

/// A second migration of `items`, queued paused (one table, one active migration) and then
/// resumed: the table lease alone keeps it from running beside the first.
async fn second(sg: &Sluicegate, name: &str) -> Migration {
    let mut req = fast(name, "update", "items", 50, 50).argument("set", "n = 2");
    req.paused = true;
    sg.queue(&req).await.unwrap();
    sg.apply(name, MigrationEvent::Resume, None, "cli")
        .await
        .unwrap()
}

/// A tracking table's name on `db`'s backend.
fn tracking(db: &TestDb, table: &str) -> String {
    match db.backend {
        Backend::Postgres => format!("sluicegate.{table}"),
        Backend::Sqlite => format!("sluicegate_{table}"),
    }
}

fn given(m: &Migration, start: Lower, (min, max): (i64, i64)) -> JobCreateParams {
    JobCreateParams {
        migration_id: m.id,
        expected_next: start,
        range: JobRange::Given {
            min: k(min),
            max: k(max),
        },
        batch_size: m.batch_size,
        sub_batch_size: m.sub_batch_size,
        pause_ms: 0,
        worker: "w1".into(),
        lease: LEASE,
        lane: None,
    }
}

/// A migration of `items` (keys 1..=100) with its first job (keys 1..=50) running.
async fn with_running_job(db: &TestDb) -> (Sluicegate, Migration, Job) {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "m", 50).await;
    let (job, _) = take_job(&sg, &m, "w1", (1, 50), LEASE).await;
    (sg, m, job)
}

fn spec<'a>(
    kind: &'a dyn sluicegate::JobKind,
    m: &'a Migration,
    table: &'a TableName,
    (lower, max): (&'a Lower, &'a Key),
    size: i64,
) -> SubBatchSpec<'a> {
    SubBatchSpec {
        kind,
        table,
        key: &m.key,
        scope: None,
        arguments: &m.job_arguments,
        lower,
        max,
        size,
        whole_rest: false,
        dense: false,
        timeouts: Timeouts {
            statement_ms: 30_000,
            lock_ms: 5_000,
        },
        key_unique: m.key_unique,
        shard: None,
    }
}

/// The methods of `trait $name` in the store's source.
fn trait_methods(source: &str, name: &str) -> Vec<String> {
    let start = source
        .find(&format!("pub trait {name}:"))
        .unwrap_or_else(|| panic!("trait {name} not found"));
    let body = &source[start..];
    let end = body.find("\n}\n").expect("end of trait");
    body[..end]
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("async ").unwrap_or(l);
            let rest = l.strip_prefix("fn ")?;
            Some(rest.split(['(', '<']).next()?.to_owned())
        })
        .collect()
}

#[test]
fn every_primitive_has_a_conformance_test() {
    let store = include_str!("../src/store/mod.rs");
    let suite = include_str!("conformance.rs");
    let mut missing = Vec::new();
    let mut methods = trait_methods(store, "Store");
    methods.extend(trait_methods(store, "Target"));
    assert!(methods.len() > 40, "read {} primitives", methods.len());
    for method in methods {
        let test = format!("store_test!({method},");
        let test_wrapped = format!("store_test!(\n    {method},");
        if !suite.contains(&test) && !suite.contains(&test_wrapped) {
            missing.push(method);
        }
    }
    assert!(
        missing.is_empty(),
        "primitives without a conformance test: {missing:?}"
    );
}

// --- Store and Target: what they are --------------------------------------------------------

store_test!(backend, |db| {
    let sg = db.sluicegate().await;
    assert_eq!(sg.store().backend(), db.backend);
    assert_eq!(sg.target().backend(), db.backend);
});

store_test!(capabilities, |db| {
    let sg = db.sluicegate().await;
    let expected = match db.backend {
        Backend::Postgres => Capabilities::POSTGRES,
        Backend::Sqlite => Capabilities::SQLITE,
    };
    assert_eq!(sg.store().capabilities(), expected);
    assert_eq!(sg.target().capabilities(), expected);
    // What the engine relies on: chaining jobs where the finish can create, one writer on SQLite.
    assert_eq!(
        expected.start_next_job_with_finish,
        db.backend == Backend::Postgres
    );
    assert_eq!(expected.concurrent_writers, db.backend == Backend::Postgres);
});

// --- Store: the schema ------------------------------------------------------------------------

store_test!(schema_install, |db| {
    let sg = db.sluicegate().await;
    let tables = db
        .scalar(&format!(
            "SELECT count(*) FROM {}",
            tracking(&db, "migrations")
        ))
        .await;
    assert_eq!(tables, 0, "installed, empty");
    // Installed already: nothing left to apply.
    assert!(sg.store().schema_install().await.unwrap().is_empty());
    let versions = db
        .scalar(&format!(
            "SELECT max(version) FROM {}",
            tracking(&db, "schema_versions")
        ))
        .await;
    assert_eq!(versions, SCHEMA_VERSION);
});

store_test!(schema_version, |db| {
    let sg = db.sluicegate().await;
    assert_eq!(
        sg.store().schema_version().await.unwrap(),
        Some(SCHEMA_VERSION)
    );
});

// --- Store: migrations --------------------------------------------------------------------------

store_test!(migration_insert, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "model", 50).await;
    let new = NewMigration {
        name: "inserted".into(),
        job_kind: m.job_kind.clone(),
        table_name: m.table_name.clone(),
        target: sg.target_identity().clone(),
        key: m.key.clone(),
        key_unique: m.key_unique,
        scope: Some("id > 10".into()),
        job_arguments: m.job_arguments.clone(),
        min_value: k(11),
        max_value: k(100),
        next_start: Some(Lower::From(k(11))),
        batch_size: 30,
        sub_batch_size: 10,
        max_batch_size: Some(60),
        sub_batch_ceiling: None,
        pause_ms: 7,
        interval: Duration::from_secs(2),
        statement_timeout_ms: 9_000,
        lock_timeout_ms: 900,
        health: m.health.clone(),
        target_sub_batch_ms: 0,
        status: MigrationStatus::Paused,
        total_tuple_count: Some(90),
        actor: "test".into(),
        citus: None,
        lanes: Vec::new(),
        definition: Some(r#"{"name":"inserted"}"#.into()),
        after: vec![m.id],
        verify: Some("n >= 0".into()),
    };
    let store = sg.store();
    let inserted = store.migration_insert(&new).await.unwrap();
    let read = store.migration_get(inserted.id).await.unwrap().unwrap();
    assert_eq!(read, inserted);
    // The definition it was queued from and what it runs after are kept as given (v8).
    assert_eq!(read.definition.as_deref(), Some(r#"{"name":"inserted"}"#));
    assert_eq!(read.after, [m.id]);
    assert_eq!(read.verify.as_deref(), Some("n >= 0"));
    assert_eq!(
        (
            read.name.as_str(),
            read.status,
            read.scope.as_deref(),
            read.min_value,
            read.next_start,
            read.batch_size,
            read.interval,
            read.target.as_ref()
        ),
        (
            "inserted",
            MigrationStatus::Paused,
            Some("id > 10"),
            k(11),
            Some(Lower::From(k(11))),
            30,
            Duration::from_secs(2),
            Some(sg.target_identity())
        )
    );
    let log = store.migration_transition_list(read.id).await.unwrap();
    assert_eq!(
        (log.len(), log[0].event, log[0].actor.as_deref()),
        (1, MigrationEvent::Queue, Some("test"))
    );
    let again = store.migration_insert(&new).await.unwrap_err();
    assert!(matches!(again, Error::DuplicateMigration(_)), "{again}");
});

store_test!(migration_get, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "got", 50).await;
    let got = sg.store().migration_get(m.id).await.unwrap().unwrap();
    assert_eq!((got.name.as_str(), got.key.clone()), ("got", m.key.clone()));
    assert!(sg.store().migration_get(m.id + 1).await.unwrap().is_none());
});

store_test!(migration_get_by_name, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "named", 50).await;
    let store = sg.store();
    let got = store.migration_get_by_name("named").await.unwrap().unwrap();
    assert_eq!(got.id, m.id);
    assert!(store
        .migration_get_by_name("other")
        .await
        .unwrap()
        .is_none());
});

store_test!(migration_list, |db| {
    db.create_items("items", &[(1, 100)]).await;
    db.create_items("others", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let a = queued(&sg, "a", 50).await;
    let b = sg
        .queue(&fast("b", "update", "others", 50, 50).argument("set", "n = 1"))
        .await
        .unwrap();
    let ids: Vec<i64> = sg
        .store()
        .migration_list()
        .await
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, [a.id, b.id]);
});

store_test!(migration_transition, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "t", 50).await;
    let params = MigrationTransitionParams::new(&m, MigrationEvent::Pause, "cli")
        .unwrap()
        .with_reason(Some("lunch".into()));
    let paused = sg.store().migration_transition(&params).await.unwrap();
    assert_eq!(paused.status, MigrationStatus::Paused);
    let log = sg.store().migration_transition_list(m.id).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        (
            last.event,
            last.previous_status,
            last.reason.as_deref(),
            last.actor.as_deref()
        ),
        (
            MigrationEvent::Pause,
            Some(MigrationStatus::Active),
            Some("lunch"),
            Some("cli")
        )
    );
    // From a stale snapshot: a conflict, nothing written.
    let err = sg.store().migration_transition(&params).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(
        sg.store()
            .migration_transition_list(m.id)
            .await
            .unwrap()
            .len(),
        2
    );
});

store_test!(migration_retry, |db| {
    let (sg, m, job) = with_running_job(&db).await;
    let store = sg.store();
    let failed_job = store
        .job_transition(
            &JobTransitionParams::new(&job, JobStatus::Failed, "w1")
                .unwrap()
                .with_failure(Some(Failure::new("TestFailure", "boom"))),
        )
        .await
        .unwrap();
    assert_eq!(failed_job.status, JobStatus::Failed);
    let m = store.migration_get(m.id).await.unwrap().unwrap();
    let fail = MigrationTransitionParams::new(&m, MigrationEvent::Fail, "w1").unwrap();
    let m = store.migration_transition(&fail).await.unwrap();
    assert_eq!(m.status, MigrationStatus::Failed);
    let retry = MigrationTransitionParams::new(&m, MigrationEvent::Retry, "cli").unwrap();
    let m = store.migration_retry(&retry).await.unwrap();
    assert_eq!(m.status, MigrationStatus::Active);
    let job = store.job_get(job.id).await.unwrap().unwrap();
    assert_eq!((job.status, job.attempts), (JobStatus::Pending, 0));
    let log = store.job_transition_list(job.id).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        (
            last.previous_status,
            last.next_status,
            last.worker.as_deref()
        ),
        (JobStatus::Failed, JobStatus::Pending, Some("cli"))
    );
});

store_test!(migration_claim, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let a = queued(&sg, "a", 50).await;
    let b = second(&sg, "b").await;
    let store = sg.store();
    // The oldest due migration, with its table's lease.
    let claimed = store.migration_claim("w1", LEASE, None).await.unwrap();
    assert_eq!(claimed.map(|m| m.id), Some(a.id));
    let leases = db
        .scalar(&format!(
            "SELECT count(*) FROM {} WHERE migration_id = {}",
            tracking(&db, "table_leases"),
            a.id
        ))
        .await;
    assert_eq!(leases, 1);
    // The other migration of the same table waits for the lease.
    assert!(store
        .migration_claim("w2", LEASE, Some(b.id))
        .await
        .unwrap()
        .is_none());
    // One that runs after `a` (`--after`) is passed over while `a` is not finished.
    db.create_items("others", &[(1, 10)]).await;
    let mut req = fast("c", "update", "others", 50, 50).argument("set", "n = 3");
    req.after = vec!["a".into()];
    let c = sg.queue(&req).await.unwrap();
    // With `a` paused (not finished) and `b` cancelled, nothing is due.
    sg.apply("a", MigrationEvent::Pause, None, "cli")
        .await
        .unwrap();
    sg.apply("b", MigrationEvent::Cancel, None, "cli")
        .await
        .unwrap();
    let claimed = store.migration_claim("w3", LEASE, None).await.unwrap();
    assert_eq!(claimed.map(|m| m.id), None);
    assert!(store
        .migration_claim("w3", LEASE, Some(c.id))
        .await
        .unwrap()
        .is_none());
});

store_test!(migration_claim_among, |db| {
    db.create_items("items", &[(1, 100)]).await;
    db.create_items("others", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let a = queued(&sg, "a", 50).await;
    let b = sg
        .queue(&fast("b", "update", "others", 50, 50).argument("set", "n = 2"))
        .await
        .unwrap();
    let store = sg.store();
    // The oldest due migration is `a`; among `b` alone, `b` is claimed, with its lease.
    let claimed = store
        .migration_claim_among("w1", LEASE, &[b.id])
        .await
        .unwrap();
    assert_eq!(claimed.map(|m| m.id), Some(b.id));
    // Among none, nothing; among `a`, `a` (its own table is free).
    assert!(store
        .migration_claim_among("w2", LEASE, &[])
        .await
        .unwrap()
        .is_none());
    let claimed = store
        .migration_claim_among("w2", LEASE, &[a.id, 9_999])
        .await
        .unwrap();
    assert_eq!(claimed.map(|m| m.id), Some(a.id));
    // A paused one is not due, even when named.
    sg.apply("b", MigrationEvent::Pause, None, "cli")
        .await
        .unwrap();
    store.table_lease_release(b.id).await.unwrap();
    assert!(store
        .migration_claim_among("w3", LEASE, &[b.id])
        .await
        .unwrap()
        .is_none());
});

store_test!(table_lease_release, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let a = queued(&sg, "a", 50).await;
    let b = second(&sg, "b").await;
    let store = sg.store();
    store
        .migration_claim("w1", LEASE, Some(a.id))
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .migration_claim("w2", LEASE, Some(b.id))
        .await
        .unwrap()
        .is_none());
    store.table_lease_release(a.id).await.unwrap();
    let claimed = store
        .migration_claim("w2", LEASE, Some(b.id))
        .await
        .unwrap();
    assert_eq!(claimed.map(|m| m.id), Some(b.id));
});

store_test!(migration_range_exhaust, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "ex", 50).await;
    let store = sg.store();
    // Compare-and-set on the next key.
    assert!(!store
        .migration_range_exhaust(m.id, &Lower::From(k(2)))
        .await
        .unwrap());
    assert!(store
        .migration_range_exhaust(m.id, &Lower::From(k(1)))
        .await
        .unwrap());
    let m = store.migration_get(m.id).await.unwrap().unwrap();
    assert_eq!(m.next_start, None);
});

store_test!(migration_resize, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "rs", 500).await;
    let params = sluicegate::store::MigrationResizeParams {
        migration_id: m.id,
        batch_size: 200,
        sub_batch_size: 300,
        reason: "smaller".into(),
        actor: "optimizer".into(),
        expected_batch_size: None,
    };
    let resized = sg.store().migration_resize(&params).await.unwrap().unwrap();
    // The sub-batch is clamped to the batch.
    assert_eq!((resized.batch_size, resized.sub_batch_size), (200, 200));
    let log = sg.store().migration_transition_list(m.id).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        (last.event, last.reason.as_deref()),
        (MigrationEvent::Resize, Some("smaller"))
    );
    sg.apply("rs", MigrationEvent::Cancel, None, "cli")
        .await
        .unwrap();
    assert!(sg
        .store()
        .migration_resize(&params)
        .await
        .unwrap()
        .is_none());
});

store_test!(migration_set, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "s", 50).await;
    let params = MigrationSetParams {
        migration_id: m.id,
        batch_size: Some(40),
        sub_batch_size: Some(20),
        pause_ms: Some(5),
        reason: "batch 50 -> 40".into(),
        actor: "cli".into(),
        ..MigrationSetParams::default()
    };
    let set = sg.store().migration_set(&params).await.unwrap().unwrap();
    assert_eq!(
        (
            set.batch_size,
            set.sub_batch_size,
            set.sub_batch_ceiling,
            set.pause_ms,
            set.interval
        ),
        (40, 20, Some(20), 5, m.interval),
        "given values set, a sub-batch size also the ceiling, the rest kept"
    );
    let log = sg.store().migration_transition_list(m.id).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        (last.event, last.reason.as_deref()),
        (MigrationEvent::Set, Some("batch 50 -> 40"))
    );
    // The timeouts, each kept when not given.
    let timeouts = MigrationSetParams {
        migration_id: m.id,
        statement_timeout_ms: Some(90_000),
        reason: "statement_timeout 30s -> 1m 30s".into(),
        actor: "cli".into(),
        ..MigrationSetParams::default()
    };
    let set = sg.store().migration_set(&timeouts).await.unwrap().unwrap();
    assert_eq!(
        (
            set.statement_timeout_ms,
            set.lock_timeout_ms,
            set.batch_size
        ),
        (90_000, m.lock_timeout_ms, 40)
    );
    sg.apply("s", MigrationEvent::Cancel, None, "cli")
        .await
        .unwrap();
    assert!(sg.store().migration_set(&params).await.unwrap().is_none());
});

store_test!(migration_adopt_target, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "adopt", 50).await;
    let store = sg.store();
    let target = sg.target_identity().clone();
    // Known already: nothing written.
    assert!(store
        .migration_adopt_target(m.id, &target, "again", "cli")
        .await
        .unwrap()
        .is_none());
    db.exec(&format!(
        "UPDATE {} SET target_id = NULL, target_display = NULL WHERE id = {}",
        tracking(&db, "migrations"),
        m.id
    ))
    .await;
    assert_eq!(
        store.migration_get(m.id).await.unwrap().unwrap().target,
        None
    );
    let adopted = store
        .migration_adopt_target(m.id, &target, "ours", "cli")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(adopted.target.as_ref(), Some(&target));
    let log = store.migration_transition_list(m.id).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        (last.event, last.reason.as_deref()),
        (MigrationEvent::Set, Some("ours"))
    );
});

store_test!(migration_hold_extend, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "h", 50).await;
    let store = sg.store();
    // No hold in progress: nothing to extend.
    assert!(store
        .migration_hold_extend(m.id, Duration::from_secs(60))
        .await
        .unwrap()
        .is_none());
    let hold = MigrationTransitionParams::new(&m, MigrationEvent::Hold, "w1")
        .unwrap()
        .holding_for(
            sluicegate::health::Indicator::Probe,
            Duration::from_secs(60),
        );
    let held = store.migration_transition(&hold).await.unwrap();
    let hold_row = store.migration_transition_list(m.id).await.unwrap();
    assert_eq!(
        hold_row.last().unwrap().indicator,
        Some(sluicegate::health::Indicator::Probe),
        "the hold row names its indicator"
    );
    let logged = store.migration_transition_list(m.id).await.unwrap().len();
    let extended = store
        .migration_hold_extend(m.id, Duration::from_secs(3600))
        .await
        .unwrap()
        .unwrap();
    let (before, after) = (held.on_hold_until.unwrap(), extended.on_hold_until.unwrap());
    assert!(
        after - before > chrono::Duration::minutes(50),
        "{before} -> {after}"
    );
    assert_eq!(extended.held_since, held.held_since);
    assert_eq!(
        store.migration_transition_list(m.id).await.unwrap().len(),
        logged,
        "no log row"
    );
    let too_long = store
        .migration_hold_extend(m.id, Duration::from_secs(400 * 24 * 3600))
        .await
        .unwrap_err();
    assert!(matches!(too_long, Error::OutOfRange(_)), "{too_long}");
});

store_test!(migration_throttle, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "th", 50).await;
    let params = MigrationThrottleParams {
        migration_id: m.id,
        pause_ms: 500,
        reason: Some("replica lag near its limit".into()),
        log: "pause 0 -> 500 ms".into(),
        actor: "w1".into(),
    };
    let throttled = sg
        .store()
        .migration_throttle(&params)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            throttled.throttle_pause_ms,
            throttled.throttle_reason.as_deref()
        ),
        (500, Some("replica lag near its limit"))
    );
    let log = sg.store().migration_transition_list(m.id).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        (last.event, last.reason.as_deref()),
        (MigrationEvent::Throttle, Some("pause 0 -> 500 ms"))
    );
    sg.apply("th", MigrationEvent::Pause, None, "cli")
        .await
        .unwrap();
    assert!(sg
        .store()
        .migration_throttle(&params)
        .await
        .unwrap()
        .is_none());
});

// --- Store: jobs --------------------------------------------------------------------------------

store_test!(job_create, |db| {
    db.create_items("items", &[(1, 10)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "c", 5).await;
    let store = sg.store();
    // No table lease yet: not now.
    let created = store
        .job_create(&given(&m, Lower::From(k(1)), (1, 5)))
        .await
        .unwrap();
    assert_eq!(created, JobCreated::NotNow);
    store
        .migration_claim("w1", LEASE, Some(m.id))
        .await
        .unwrap()
        .unwrap();
    let created = store
        .job_create(&given(&m, Lower::From(k(1)), (1, 5)))
        .await
        .unwrap();
    let JobCreated::Created(job, next) = created else {
        panic!("{created:?}")
    };
    assert_eq!(
        (job.status, job.attempts, job.min_value, job.max_value, next),
        (JobStatus::Running, 1, k(1), k(5), Some(Lower::After(k(5))))
    );
    assert_eq!(job.worker.as_deref(), Some("w1"));
    // The keyset walk in the statement finds no key left: exhausted.
    db.exec("DELETE FROM items").await;
    let walk = JobCreateParams {
        range: JobRange::Keyset {
            table: items(),
            key: m.key.clone(),
            scope: None,
            size: 5,
            statement_ms: 30_000,
        },
        ..given(&m, Lower::After(k(5)), (0, 0))
    };
    assert_eq!(
        store.job_create(&walk).await.unwrap(),
        JobCreated::Exhausted
    );
    let m = store.migration_get(m.id).await.unwrap().unwrap();
    assert_eq!(m.next_start, None);
});

store_test!(job_get, |db| {
    let (sg, m, job) = with_running_job(&db).await;
    let got = sg.store().job_get(job.id).await.unwrap().unwrap();
    assert_eq!(
        (got.migration_id, got.status, got.min_value, got.max_value),
        (m.id, JobStatus::Running, k(1), k(50))
    );
    assert!(sg.store().job_get(job.id + 1).await.unwrap().is_none());
});

store_test!(job_list, |db| {
    let (sg, m, job) = with_running_job(&db).await;
    let store = sg.store();
    let ids = |jobs: Vec<Job>| jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids(store.job_list(m.id, None).await.unwrap()), [job.id]);
    assert_eq!(
        ids(store
            .job_list(m.id, Some(JobStatus::Running))
            .await
            .unwrap()),
        [job.id]
    );
    assert!(store
        .job_list(m.id, Some(JobStatus::Pending))
        .await
        .unwrap()
        .is_empty());
});

store_test!(job_find_retriable, |db| {
    let (sg, m, job) = with_running_job(&db).await;
    let store = sg.store();
    // Running under a live lease: not to be retried.
    assert!(store.job_find_retriable(m.id, 3).await.unwrap().is_none());
    let failed = store
        .job_transition(&JobTransitionParams::new(&job, JobStatus::Failed, "w1").unwrap())
        .await
        .unwrap();
    // Failed after its first attempt: retriable once its backoff (0.2 s) has passed, and
    // not at all when it has had its attempts.
    let found = loop {
        if let Some(found) = store.job_find_retriable(m.id, 3).await.unwrap() {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(found.id, failed.id);
    assert!(store.job_find_retriable(m.id, 1).await.unwrap().is_none());
});

store_test!(job_transition, |db| {
    let (sg, _, job) = with_running_job(&db).await;
    let store = sg.store();
    let params = JobTransitionParams::new(&job, JobStatus::Failed, "w1")
        .unwrap()
        .with_failure(Some(Failure::new("TestFailure", "boom")));
    let failed = store.job_transition(&params).await.unwrap();
    assert_eq!((failed.status, failed.attempts), (JobStatus::Failed, 1));
    assert!(failed.finished_at.is_some());
    let log = store.job_transition_list(job.id).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(
        (
            last.next_status,
            last.exception_class.as_deref(),
            last.exception_message.as_deref()
        ),
        (JobStatus::Failed, Some("TestFailure"), Some("boom"))
    );
    // The same change again: the job moved on, a conflict.
    let err = store.job_transition(&params).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
});

store_test!(job_split, |db| {
    let (sg, m, job) = with_running_job(&db).await;
    let store = sg.store();
    let failed = store
        .job_transition(&JobTransitionParams::new(&job, JobStatus::Failed, "w1").unwrap())
        .await
        .unwrap();
    let (first, second) = store
        .job_split(&JobSplitParams {
            transition: JobTransitionParams::new(&failed, JobStatus::Pending, "w1").unwrap(),
            first_max: k(25),
            batch_size: 25,
            sub_batch_size: 25,
            second_min: k(26),
            second_max: k(50),
        })
        .await
        .unwrap();
    assert_eq!(
        (first.id, first.status, first.max_value, first.attempts),
        (job.id, JobStatus::Pending, k(25), 0)
    );
    assert_eq!(
        (
            second.migration_id,
            second.status,
            second.min_value,
            second.max_value
        ),
        (m.id, JobStatus::Pending, k(26), k(50))
    );
    let log = store.job_transition_list(job.id).await.unwrap();
    assert!(log
        .last()
        .unwrap()
        .exception_message
        .as_deref()
        .unwrap()
        .starts_with("split"));
});

store_test!(job_checkpoint, |db| {
    let (sg, _, job) = with_running_job(&db).await;
    let store = sg.store();
    assert!(store
        .job_checkpoint(job.id, job.attempts, &k(20), 20, LEASE)
        .await
        .unwrap());
    assert!(store
        .job_checkpoint(job.id, job.attempts, &k(30), 10, LEASE)
        .await
        .unwrap());
    // Fenced by the attempt.
    assert!(!store
        .job_checkpoint(job.id, job.attempts + 1, &k(40), 10, LEASE)
        .await
        .unwrap());
    let job = store.job_get(job.id).await.unwrap().unwrap();
    assert_eq!((job.cursor, job.rows_affected), (Some(k(30)), 30));
});

store_test!(job_heartbeat, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "hb", 50).await;
    let (job, _) = take_job(&sg, &m, "w1", (1, 50), Duration::from_secs(2)).await;
    let store = sg.store();
    let before = job.lease_expires_at.unwrap();
    assert!(store
        .job_heartbeat(job.id, job.attempts, LEASE)
        .await
        .unwrap());
    let after = store
        .job_get(job.id)
        .await
        .unwrap()
        .unwrap()
        .lease_expires_at
        .unwrap();
    assert!(
        after - before > chrono::Duration::seconds(20),
        "{before} -> {after}"
    );
    // The table lease is renewed with it.
    let leases = db
        .scalar(&format!(
            "SELECT count(*) FROM {} WHERE migration_id = {}",
            tracking(&db, "table_leases"),
            m.id
        ))
        .await;
    assert_eq!(leases, 1);
    assert!(!store
        .job_heartbeat(job.id, job.attempts + 1, LEASE)
        .await
        .unwrap());
});

store_test!(job_counts, |db| {
    let (sg, m, job) = with_running_job(&db).await;
    let store = sg.store();
    store
        .job_checkpoint(job.id, job.attempts, &k(50), 50, LEASE)
        .await
        .unwrap();
    let running = store.job_get(job.id).await.unwrap().unwrap();
    store
        .job_transition(&JobTransitionParams::new(&running, JobStatus::Succeeded, "w1").unwrap())
        .await
        .unwrap();
    let (second, _) = take_job(&sg, &m, "w1", (51, 100), LEASE).await;
    store
        .job_transition(&JobTransitionParams::new(&second, JobStatus::Failed, "w1").unwrap())
        .await
        .unwrap();
    let counts = store.job_counts(m.id, 1).await.unwrap();
    assert_eq!(
        (
            counts.pending,
            counts.running,
            counts.failed,
            counts.succeeded,
            counts.exhausted,
            counts.rows_affected,
            counts.keys_done
        ),
        (0, 0, 1, 1, 1, 50, 50)
    );
    assert!(counts.first_started_at.is_some() && counts.last_finished_at.is_some());
});

store_test!(job_recent_succeeded, |db| {
    let (sg, m, job) = with_running_job(&db).await;
    let store = sg.store();
    assert!(store
        .job_recent_succeeded(m.id, 10)
        .await
        .unwrap()
        .is_empty());
    store
        .job_transition(&JobTransitionParams::new(&job, JobStatus::Succeeded, "w1").unwrap())
        .await
        .unwrap();
    let (second, _) = take_job(&sg, &m, "w1", (51, 100), LEASE).await;
    store
        .job_transition(&JobTransitionParams::new(&second, JobStatus::Succeeded, "w1").unwrap())
        .await
        .unwrap();
    let ids = |jobs: Vec<Job>| jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.job_recent_succeeded(m.id, 10).await.unwrap()),
        [second.id, job.id],
        "newest first"
    );
    assert_eq!(
        ids(store.job_recent_succeeded(m.id, 1).await.unwrap()),
        [second.id]
    );
});

// --- Store: logs --------------------------------------------------------------------------------

store_test!(job_transition_list, |db| {
    let (sg, _, job) = with_running_job(&db).await;
    let store = sg.store();
    store
        .job_transition(&JobTransitionParams::new(&job, JobStatus::Succeeded, "w1").unwrap())
        .await
        .unwrap();
    let log = store.job_transition_list(job.id).await.unwrap();
    let steps: Vec<(JobStatus, JobStatus)> = log
        .iter()
        .map(|t| (t.previous_status, t.next_status))
        .collect();
    assert_eq!(
        steps,
        [
            (JobStatus::Pending, JobStatus::Running),
            (JobStatus::Running, JobStatus::Succeeded)
        ]
    );
    assert!(log.iter().all(|t| t.job_id == job.id));
});

store_test!(job_transition_list_by_migration, |db| {
    let (sg, m, job) = with_running_job(&db).await;
    let store = sg.store();
    store
        .job_transition(&JobTransitionParams::new(&job, JobStatus::Succeeded, "w1").unwrap())
        .await
        .unwrap();
    let (second, _) = take_job(&sg, &m, "w1", (51, 100), LEASE).await;
    let log = store.job_transition_list_by_migration(m.id).await.unwrap();
    let jobs: Vec<i64> = log.iter().map(|t| t.job_id).collect();
    assert_eq!(jobs, [job.id, job.id, second.id], "oldest first");
    assert!(log.iter().all(|t| t.migration_id == m.id));
});

store_test!(migration_transition_list, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = queued(&sg, "l", 50).await;
    sg.apply("l", MigrationEvent::Pause, None, "cli")
        .await
        .unwrap();
    sg.apply("l", MigrationEvent::Resume, None, "cli")
        .await
        .unwrap();
    let events: Vec<MigrationEvent> = sg
        .store()
        .migration_transition_list(m.id)
        .await
        .unwrap()
        .iter()
        .map(|t| t.event)
        .collect();
    assert_eq!(
        events,
        [
            MigrationEvent::Queue,
            MigrationEvent::Pause,
            MigrationEvent::Resume
        ]
    );
});

store_test!(log_partitions_maintain, |db| {
    let sg = db.sluicegate().await;
    let store = sg.store();
    let now = chrono::Utc::now();
    let report = store.log_partitions_maintain(now, 3).await.unwrap();
    let again = store.log_partitions_maintain(now, 3).await.unwrap();
    assert!(again.created.is_empty(), "{again:?}");
    let partitions = store.log_partitions_list().await.unwrap();
    match db.backend {
        Backend::Postgres => {
            use chrono::Datelike;
            let month = chrono::NaiveDate::from_ymd_opt(now.year(), now.month(), 1).unwrap();
            let name = sluicegate::store::postgres::partition_name(month);
            assert!(
                partitions.contains(&name),
                "{name} in {partitions:?} (created now: {report:?})"
            );
        }
        Backend::Sqlite => {
            // No partitions: old rows are deleted instead.
            assert_eq!((report.created.len(), report.rows_deleted), (0, 0));
            assert!(partitions.is_empty());
        }
    }
});

store_test!(log_partitions_list, |db| {
    let sg = db.sluicegate().await;
    let partitions = sg.store().log_partitions_list().await.unwrap();
    match db.backend {
        Backend::Postgres => {
            assert!(!partitions.is_empty());
            assert!(
                partitions
                    .iter()
                    .all(|p| p.starts_with("job_transition_logs_p")),
                "{partitions:?}"
            );
            let mut sorted = partitions.clone();
            sorted.sort();
            assert_eq!(partitions, sorted, "oldest first");
        }
        Backend::Sqlite => assert!(partitions.is_empty()),
    }
});

// --- Target ---------------------------------------------------------------------------------------

store_test!(key_resolve, |db| {
    db.create_items("items", &[(1, 10)]).await;
    let sg = db.sluicegate().await;
    let target = sg.target();
    let (table, key) = target
        .key_resolve(&items(), None, KeyOptions::default())
        .await
        .unwrap();
    assert_eq!(table.table, "items");
    assert_eq!(key.display_names(), "id");
    assert!(key.columns()[0].key_type.is_integer());
    // A column that is not unique is refused unless asked for.
    let n = ["n".to_owned()];
    assert!(target
        .key_resolve(&items(), Some(&n), KeyOptions::default())
        .await
        .is_err());
    let (_, key) = target
        .key_resolve(
            &items(),
            Some(&n),
            KeyOptions {
                non_unique: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(key.display_names(), "n");
    assert_eq!(key.walk(), sluicegate::KeyWalk::default());
    // How it is walked comes back with the key; distinct values only of a non-unique key.
    let walk = sluicegate::KeyWalk {
        skip_nulls: true,
        distinct: true,
    };
    let (_, key) = target
        .key_resolve(
            &items(),
            Some(&n),
            KeyOptions {
                non_unique: true,
                walk,
            },
        )
        .await
        .unwrap();
    assert_eq!(key.walk(), walk);
    let err = target
        .key_resolve(
            &items(),
            None,
            KeyOptions {
                non_unique: false,
                walk,
            },
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("pass --non-unique-key"), "{err}");
    // A nullable column only when its NULL rows are to be skipped.
    db.exec("CREATE TABLE loose (id bigint PRIMARY KEY, parent_id bigint)")
        .await;
    let loose = TableName::parse("loose").unwrap();
    let parent = ["parent_id".to_owned()];
    let options = |skip_nulls| KeyOptions {
        non_unique: true,
        walk: sluicegate::KeyWalk {
            skip_nulls,
            distinct: false,
        },
    };
    let err = target
        .key_resolve(&loose, Some(&parent), options(false))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("may be NULL") && err.contains("--skip-null-keys"),
        "{err}"
    );
    let (_, key) = target
        .key_resolve(&loose, Some(&parent), options(true))
        .await
        .unwrap();
    assert!(key.walk().skip_nulls);
    let unknown = TableName::parse("nothing").unwrap();
    let err = target
        .key_resolve(&unknown, None, KeyOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownTable { .. }), "{err}");
});

store_test!(identity, |db| {
    let sg = db.sluicegate().await;
    let first = sg.target().identity().await.unwrap();
    assert_eq!(sg.target().identity().await.unwrap(), first, "stable");
    let prefix = match db.backend {
        Backend::Postgres => "postgres:",
        Backend::Sqlite => "sqlite:",
    };
    assert!(first.starts_with(prefix), "{first}");
    assert_eq!(first, sg.target_identity().id);
});

store_test!(key_canonical, |db| {
    db.exec("CREATE TABLE named (code text PRIMARY KEY)").await;
    db.create_items("items", &[(1, 10)]).await;
    let sg = db.sluicegate().await;
    let target = sg.target();
    let (_, int_key) = target
        .key_resolve(&items(), None, KeyOptions::default())
        .await
        .unwrap();
    let canonical = target.key_canonical(&int_key, &k(7), "--min-value").await;
    assert_eq!(canonical.unwrap(), k(7));
    let named = TableName::parse("named").unwrap();
    let (_, text_key): (TableName, KeySpec) = target
        .key_resolve(&named, None, KeyOptions::default())
        .await
        .unwrap();
    let value = Key(vec![json!("abc")]);
    let canonical = target.key_canonical(&text_key, &value, "--min-value").await;
    assert_eq!(canonical.unwrap(), value);
});

store_test!(key_bounds, |db| {
    db.create_items("items", &[(5, 20)]).await;
    db.create_items("empty", &[]).await;
    let sg = db.sluicegate().await;
    let target = sg.target();
    let (_, key) = target
        .key_resolve(&items(), None, KeyOptions::default())
        .await
        .unwrap();
    let bounds = target.key_bounds(&items(), &key, None).await.unwrap();
    assert_eq!(bounds, Some((k(5), k(20))));
    let even = target
        .key_bounds(&items(), &key, Some("id % 2 = 1"))
        .await
        .unwrap();
    assert_eq!(even, Some((k(5), k(19))));
    let empty = TableName::parse("empty").unwrap();
    assert_eq!(target.key_bounds(&empty, &key, None).await.unwrap(), None);
});

store_test!(scope_estimate, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    // A small table is counted outright on both.
    let estimate = sg
        .target()
        .scope_estimate(&items(), "id <= 10")
        .await
        .unwrap();
    assert_eq!(estimate, Some(10));
});

store_test!(distinct_estimate, |db| {
    // 30 rows of 7 groups (n % 7), one of them NULL.
    db.exec("CREATE TABLE grouped (id bigint PRIMARY KEY, grp bigint)")
        .await;
    let rows: Vec<String> = (1..=30)
        .map(|i| match i % 7 {
            0 => format!("({i}, NULL)"),
            g => format!("({i}, {g})"),
        })
        .collect();
    db.exec(&format!("INSERT INTO grouped VALUES {}", rows.join(", ")))
        .await;
    let sg = db.sluicegate().await;
    let target = sg.target();
    let grouped = TableName::parse("grouped").unwrap();
    let grp = ["grp".to_owned()];
    let walk = sluicegate::KeyWalk {
        skip_nulls: true,
        distinct: true,
    };
    let options = KeyOptions {
        non_unique: true,
        walk,
    };
    let (table, key) = target
        .key_resolve(&grouped, Some(&grp), options)
        .await
        .unwrap();
    // The NULL key is not a value the walk visits; a scope narrows it.
    assert_eq!(
        target.distinct_estimate(&table, &key, None).await.unwrap(),
        Some(6)
    );
    assert_eq!(
        target
            .distinct_estimate(&table, &key, Some("grp <= 2"))
            .await
            .unwrap(),
        Some(2)
    );
    if db.backend == Backend::Postgres {
        // A large table is not counted: the planner's n_distinct, once analyzed.
        db.exec("CREATE TABLE builds (id bigint PRIMARY KEY, project_id bigint NOT NULL)")
            .await;
        db.exec("INSERT INTO builds SELECT i, i % 65 FROM generate_series(1, 120000) AS i")
            .await;
        db.exec("ANALYZE builds").await;
        let builds = TableName::parse("builds").unwrap();
        let project = ["project_id".to_owned()];
        let (table, key) = target
            .key_resolve(&builds, Some(&project), options)
            .await
            .unwrap();
        assert_eq!(
            target.distinct_estimate(&table, &key, None).await.unwrap(),
            Some(65)
        );
        assert_eq!(
            target
                .distinct_estimate(&table, &key, Some("project_id < 10"))
                .await
                .unwrap(),
            None,
            "no figure for a scope"
        );
    }
});

store_test!(row_estimate, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    assert_eq!(sg.target().row_estimate(&items()).await.unwrap(), Some(100));
});

store_test!(range_next, |db| {
    db.create_items("items", &[(1, 10), (100, 104)]).await;
    let sg = db.sluicegate().await;
    let target = sg.target();
    let (_, key) = target
        .key_resolve(&items(), None, KeyOptions::default())
        .await
        .unwrap();
    let next = |lower: Lower, size| {
        let key = key.clone();
        async move {
            target
                .range_next(&items(), &key, None, &lower, &k(104), size, 30_000)
                .await
                .unwrap()
        }
    };
    assert_eq!(next(Lower::From(k(1)), 5).await, Some((k(1), k(5))));
    // Over the gap: existing keys only.
    assert_eq!(next(Lower::After(k(8)), 5).await, Some((k(9), k(102))));
    // Fewer left than asked: up to the last.
    assert_eq!(next(Lower::After(k(101)), 5).await, Some((k(102), k(104))));
    assert_eq!(next(Lower::After(k(104)), 5).await, None);
    let scoped = target
        .range_next(
            &items(),
            &key,
            Some("id % 2 = 0"),
            &Lower::From(k(1)),
            &k(104),
            3,
            30_000,
        )
        .await
        .unwrap();
    assert_eq!(scoped, Some((k(2), k(6))));
});

store_test!(sub_batch_perform, |db| {
    let (sg, m, job) = with_running_job(&db).await;
    let kind = sg.registry().get("update").unwrap();
    let (table, lower, max) = (items(), Lower::From(k(1)), k(50));
    let performed = sg
        .target()
        .sub_batch_perform(spec(kind.as_ref(), &m, &table, (&lower, &max), 20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((performed.keys(), performed.rows()), (&(k(1), k(20)), 20));
    let cursor = JobCursor {
        job_id: job.id,
        attempts: job.attempts,
        lease: LEASE,
    };
    let committed = performed
        .commit(SubBatchCommit::Cursor(cursor))
        .await
        .unwrap();
    assert_eq!(committed, SubBatchCommitted::Committed);
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        20
    );
    assert_eq!(
        sg.store().job_get(job.id).await.unwrap().unwrap().cursor,
        Some(k(20))
    );
    // The job's end commits with its last sub-batch.
    let (lower, finish) = (
        Lower::After(k(20)),
        JobFinish {
            metrics: json!({"sub_batches": 2}),
            sub_batch_size: None,
            worker: "w1".into(),
            then_create: None,
        },
    );
    let performed = sg
        .target()
        .sub_batch_perform(spec(kind.as_ref(), &m, &table, (&lower, &max), 100))
        .await
        .unwrap()
        .unwrap();
    let committed = performed
        .commit(SubBatchCommit::Finish(cursor, &finish))
        .await
        .unwrap();
    let SubBatchCommitted::Finished { job: done, next } = committed else {
        panic!("{committed:?}")
    };
    assert_eq!(
        (done.status, done.rows_affected, next),
        (JobStatus::Succeeded, 50, None)
    );
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n = 1").await,
        50
    );
    // Nothing left in range.
    let lower = Lower::After(k(50));
    assert!(sg
        .target()
        .sub_batch_perform(spec(kind.as_ref(), &m, &table, (&lower, &max), 10))
        .await
        .unwrap()
        .is_none());
});

store_test!(sub_batch_try, |db| {
    let (sg, m, _) = with_running_job(&db).await;
    let kind = sg.registry().get("update").unwrap();
    let (table, lower, max) = (items(), Lower::From(k(1)), k(50));
    let tried = sg
        .target()
        .sub_batch_try(spec(kind.as_ref(), &m, &table, (&lower, &max), 30))
        .await
        .unwrap();
    assert_eq!(tried.rows, 30);
    assert_eq!(tried.keys, Some((k(1), k(30))), "the keys it tried");
    assert_eq!(
        db.scalar("SELECT count(*) FROM items WHERE n <> 0").await,
        0,
        "rolled back"
    );
});

store_test!(health_sample, |db| {
    db.create_items("items", &[(1, 10)]).await;
    let sg = db.sluicegate().await;
    let target = sg.target();
    let sample = target
        .health_sample(&items(), Some("SELECT count(*) = 10 FROM items"))
        .await
        .unwrap();
    assert_eq!(sample.probe, Some(Ok(Some(true))));
    assert_eq!(
        sample.not_available.is_none(),
        target.capabilities().health_indicators
    );
    if target.capabilities().health_indicators {
        assert!(sample.role.is_some() && sample.transactions.is_some());
    }
    let refused = target
        .health_sample(&items(), Some("SELECT 1 FROM nowhere"))
        .await
        .unwrap();
    assert!(matches!(refused.probe, Some(Err(_))), "{:?}", refused.probe);
    let none = target.health_sample(&items(), None).await.unwrap();
    assert_eq!(none.probe, None);
});

// --- Store and Target: lanes ----------------------------------------------------------------

/// A migration of `items` in two lanes (their relations and nodes made up: the store only
/// keeps them), active and claimed.
async fn laned(sg: &Sluicegate) -> Migration {
    let m = queued(sg, "plain", 50).await;
    sg.apply("plain", MigrationEvent::Cancel, None, "cli")
        .await
        .unwrap();
    let lane = |n: i32, node: &str| NewLane {
        lane: n,
        relation: format!("public.items_{}", 100 + n),
        shard_id: 100 + n as i64,
        node: node.into(),
    };
    let new = NewMigration {
        name: "laned".into(),
        job_kind: m.job_kind.clone(),
        table_name: m.table_name.clone(),
        target: sg.target_identity().clone(),
        key: m.key.clone(),
        key_unique: true,
        scope: None,
        job_arguments: m.job_arguments.clone(),
        min_value: k(1),
        max_value: k(100),
        next_start: Some(Lower::From(k(1))),
        batch_size: 30,
        sub_batch_size: 10,
        max_batch_size: None,
        sub_batch_ceiling: None,
        pause_ms: 0,
        interval: Duration::ZERO,
        statement_timeout_ms: 9_000,
        lock_timeout_ms: 900,
        health: m.health.clone(),
        target_sub_batch_ms: 0,
        status: MigrationStatus::Active,
        total_tuple_count: Some(100),
        actor: "test".into(),
        citus: Some(CitusTable::Distributed),
        lanes: vec![lane(0, "n1:5432"), lane(1, "n2:5432")],
        definition: None,
        after: Vec::new(),
        verify: None,
    };
    let m = sg.store().migration_insert(&new).await.unwrap();
    sg.store()
        .migration_claim("w1", LEASE, Some(m.id))
        .await
        .unwrap()
        .expect("claimed")
}

fn in_lane(m: &Migration, lane: i32, start: Lower, (min, max): (i64, i64)) -> JobCreateParams {
    JobCreateParams {
        lane: Some(lane),
        ..given(m, start, (min, max))
    }
}

store_test!(lane_list, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = laned(&sg).await;
    assert_eq!(m.citus, Some(CitusTable::Distributed));
    let store = sg.store();
    let lanes = store.lane_list(m.id).await.unwrap();
    assert_eq!(lanes.len(), 2);
    assert_eq!(
        (
            lanes[1].lane,
            lanes[1].shard_id,
            lanes[1].node.as_str(),
            lanes[1].relation.as_str()
        ),
        (1, 101, "n2:5432", "public.items_101")
    );
    assert!(lanes
        .iter()
        .all(|l| l.next_start == Some(Lower::From(k(1)))));
    assert!(lanes
        .iter()
        .all(|l| l.running_job.is_none() && l.on_hold_until.is_none()));
    // A job in lane 1 moves that lane's next key, and is its running job.
    let JobCreated::Created(job, then) = store
        .job_create(&in_lane(&m, 1, Lower::From(k(1)), (1, 30)))
        .await
        .unwrap()
    else {
        panic!("created");
    };
    assert_eq!((job.lane, then), (Some(1), Some(Lower::After(k(30)))));
    let lanes = store.lane_list(m.id).await.unwrap();
    assert_eq!(lanes[1].running_job, Some(job.id));
    assert_eq!(lanes[1].next_start, Some(Lower::After(k(30))));
    assert_eq!(
        lanes[0].next_start,
        Some(Lower::From(k(1))),
        "lane 0 untouched"
    );
    // One job at a time per lane: the next range of lane 1 waits for this job.
    assert_eq!(
        store
            .job_create(&in_lane(&m, 1, Lower::After(k(30)), (31, 60)))
            .await
            .unwrap(),
        JobCreated::NotNow
    );
    // A stale next key loses the compare-and-set.
    assert_eq!(
        store
            .job_create(&in_lane(&m, 0, Lower::After(k(5)), (6, 30)))
            .await
            .unwrap(),
        JobCreated::NotNow
    );
    // A lane's keys reach the migration's last key: the lane is handed out.
    let JobCreated::Created(_, then) = store
        .job_create(&in_lane(&m, 0, Lower::From(k(1)), (1, 100)))
        .await
        .unwrap()
    else {
        panic!("created");
    };
    assert_eq!(then, None);
    assert_eq!(store.lane_list(m.id).await.unwrap()[0].next_start, None);
});

store_test!(lane_exhaust, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = laned(&sg).await;
    let store = sg.store();
    // A stale next key changes nothing; the other lane still has keys.
    assert!(!store
        .lane_exhaust(m.id, Some((0, &Lower::After(k(9)))))
        .await
        .unwrap());
    assert!(!store
        .lane_exhaust(m.id, Some((0, &Lower::From(k(1)))))
        .await
        .unwrap());
    let lanes = store.lane_list(m.id).await.unwrap();
    assert_eq!(
        (lanes[0].next_start.clone(), lanes[1].next_start.is_some()),
        (None, true)
    );
    assert!(store
        .migration_get(m.id)
        .await
        .unwrap()
        .unwrap()
        .next_start
        .is_some());
    // The last lane handed out hands out the migration's range.
    assert!(store
        .lane_exhaust(m.id, Some((1, &Lower::From(k(1)))))
        .await
        .unwrap());
    assert_eq!(
        store.migration_get(m.id).await.unwrap().unwrap().next_start,
        None
    );
});

store_test!(lane_hold, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = laned(&sg).await;
    let store = sg.store();
    let hold = |until: Option<chrono::DateTime<chrono::Utc>>, reason: &str| LaneHoldParams {
        migration_id: m.id,
        lanes: vec![1],
        until,
        reason: reason.into(),
        actor: "w1".into(),
    };
    let until = chrono::Utc::now() + chrono::Duration::seconds(60);
    assert_eq!(
        store
            .lane_hold(&hold(Some(until), "node n2:5432: down"))
            .await
            .unwrap(),
        1
    );
    // Held again: the hold goes on, no second row.
    assert_eq!(
        store
            .lane_hold(&hold(Some(until), "node n2:5432: down"))
            .await
            .unwrap(),
        0
    );
    let lanes = store.lane_list(m.id).await.unwrap();
    assert!(lanes[1].is_held(chrono::Utc::now()) && !lanes[0].is_held(chrono::Utc::now()));
    assert_eq!(lanes[1].hold_reason.as_deref(), Some("node n2:5432: down"));
    // A held lane starts no job; the other lane does.
    assert_eq!(
        store
            .job_create(&in_lane(&m, 1, Lower::From(k(1)), (1, 30)))
            .await
            .unwrap(),
        JobCreated::NotNow
    );
    assert!(matches!(
        store
            .job_create(&in_lane(&m, 0, Lower::From(k(1)), (1, 30)))
            .await
            .unwrap(),
        JobCreated::Created(..)
    ));
    assert_eq!(
        store
            .lane_hold(&hold(None, "node n2:5432: back"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .lane_hold(&hold(None, "node n2:5432: back"))
            .await
            .unwrap(),
        0
    );
    let lanes = store.lane_list(m.id).await.unwrap();
    assert_eq!(
        (lanes[1].on_hold_until, lanes[1].hold_reason.clone()),
        (None, None)
    );
    let log: Vec<_> = store
        .migration_transition_list(m.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| {
            matches!(
                r.event,
                MigrationEvent::LaneHold | MigrationEvent::LaneRelease
            )
        })
        .map(|r| (r.event, r.reason.unwrap_or_default(), r.next_status))
        .collect();
    assert_eq!(
        log,
        vec![
            (
                MigrationEvent::LaneHold,
                "node n2:5432: down".into(),
                MigrationStatus::Active
            ),
            (
                MigrationEvent::LaneRelease,
                "node n2:5432: back".into(),
                MigrationStatus::Active
            ),
        ]
    );
});

store_test!(lane_move, |db| {
    db.create_items("items", &[(1, 100)]).await;
    let sg = db.sluicegate().await;
    let m = laned(&sg).await;
    let store = sg.store();
    assert!(store
        .lane_move(m.id, 1, "n1:5432", "moved to n1", "w1")
        .await
        .unwrap());
    assert!(!store
        .lane_move(m.id, 1, "n1:5432", "again", "w1")
        .await
        .unwrap());
    assert_eq!(store.lane_list(m.id).await.unwrap()[1].node, "n1:5432");
    let moves: Vec<_> = store
        .migration_transition_list(m.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event == MigrationEvent::LaneMove)
        .map(|r| r.reason.unwrap_or_default())
        .collect();
    assert_eq!(moves, vec!["moved to n1".to_owned()]);
});

store_test!(citus_table, |db| {
    db.create_items("items", &[(1, 10)]).await;
    let sg = db.sluicegate().await;
    // Neither engine here has Citus: a plain table is no Citus table.
    assert_eq!(sg.target().citus_table(&items()).await.unwrap(), None);
});

store_test!(ledger_fence, |db| {
    db.create_items("items", &[(1, 10)]).await;
    let sg = db.sluicegate().await;
    let ledger = |token| LedgerCursor {
        schema: "sluicegate".into(),
        tracking: "t".into(),
        job_id: 7,
        token,
    };
    let target = sg.target();
    match db.backend {
        Backend::Sqlite => {
            assert!(target.ledger_fence("sluicegate", &ledger(1)).await.is_err());
        }
        Backend::Postgres => {
            // First use creates the ledger; the job has no cursor there yet.
            assert_eq!(
                target.ledger_fence("sluicegate", &ledger(1)).await.unwrap(),
                Some(None)
            );
            // A sub-batch of the run whose token is 1 commits its cursor with its rows.
            let m = queued(&sg, "ledger", 50).await;
            let lower = Lower::From(k(1));
            let max = k(10);
            let kind = sg.registry().get("update").unwrap();
            let table = items();
            let one = spec(kind.as_ref(), &m, &table, (&lower, &max), 5);
            let performed = target.sub_batch_perform(one).await.unwrap().unwrap();
            assert_eq!(
                performed
                    .commit(SubBatchCommit::Ledger(&ledger(1)))
                    .await
                    .unwrap(),
                SubBatchCommitted::Committed
            );
            // A later run (token 2) fences it and reads its cursor.
            assert_eq!(
                target.ledger_fence("sluicegate", &ledger(2)).await.unwrap(),
                Some(Some(k(5)))
            );
            assert_eq!(
                target.ledger_fence("sluicegate", &ledger(1)).await.unwrap(),
                None
            );
            // The first run's next sub-batch is fenced: rolled back, its rows unwritten.
            let lower = Lower::After(k(5));
            let one = spec(kind.as_ref(), &m, &table, (&lower, &max), 5);
            let performed = target.sub_batch_perform(one).await.unwrap().unwrap();
            assert_eq!(
                performed
                    .commit(SubBatchCommit::Ledger(&ledger(1)))
                    .await
                    .unwrap(),
                SubBatchCommitted::Fenced
            );
            assert_eq!(db.scalar("SELECT count(*) FROM items WHERE n = 1").await, 5);
        }
    }
});

store_test!(verify_range, |db| {
    db.create_items("items", &[(1, 100)]).await;
    db.exec("UPDATE items SET email_lower = lower(email) WHERE id NOT IN (17, 42)")
        .await;
    let sg = db.sluicegate().await;
    let target = sg.target();
    let key = queued(&sg, "v", 50).await.key;
    let cond = "email_lower = lower(email)";
    let found = target
        .verify_range(&items(), &key, None, cond, &k(1), &k(100), 10, 30_000)
        .await
        .unwrap();
    assert_eq!(
        (found.checked, found.violations, found.samples),
        (100, 2, vec![k(17), k(42)])
    );
    // NULL is a violation; the scope and the range bound what is read; samples are capped.
    let found = target
        .verify_range(
            &items(),
            &key,
            Some("id > 20"),
            cond,
            &k(1),
            &k(100),
            1,
            30_000,
        )
        .await
        .unwrap();
    assert_eq!((found.checked, found.violations), (80, 1));
    assert_eq!(found.samples, [k(42)]);
    let found = target
        .verify_range(&items(), &key, None, cond, &k(1), &k(41), 0, 30_000)
        .await
        .unwrap();
    assert_eq!((found.checked, found.violations), (41, 1));
    assert!(found.samples.is_empty());
});
