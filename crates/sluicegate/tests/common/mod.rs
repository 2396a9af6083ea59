//! Helpers shared by the integration tests: test job kinds and invariant checks.

#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluicegate::store::{JobCreateParams, JobCreated, JobRange};
use sluicegate::{
    Failure, Job, JobKind, JobStatus, Key, Migration, QueueRequest, Registry, Sluicegate, SubBatch,
    Worker, WorkerOptions,
};

/// Increments `n` over the sub-batch, but fails sub-batches containing `key` while
/// `remaining` is positive (forever when it starts negative), with class `class`.
#[derive(Clone)]
pub struct FailAt {
    pub key: i64,
    pub class: &'static str,
    pub remaining: Arc<AtomicI64>,
}

impl FailAt {
    pub fn new(key: i64, class: &'static str, times: i64) -> Self {
        Self {
            key,
            class,
            remaining: Arc::new(AtomicI64::new(times)),
        }
    }
}

#[async_trait]
impl JobKind for FailAt {
    fn name(&self) -> &str {
        "fail-at"
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        if keys(batch).contains(&self.key) {
            let left = self.remaining.fetch_sub(1, Ordering::SeqCst);
            if left != 0 {
                return Err(Failure::new(
                    self.class,
                    format!("simulated failure at key {}", self.key),
                ));
            }
            self.remaining.store(0, Ordering::SeqCst);
        }
        increment(batch).await
    }
}

/// Fails every sub-batch at or above `from`, forever.
#[derive(Clone)]
pub struct FailFrom(pub i64);

#[async_trait]
impl JobKind for FailFrom {
    fn name(&self) -> &str {
        "fail-from"
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        if *keys(batch).end() >= self.0 {
            return Err(Failure::new(
                "TestFailure",
                format!("keys from {} always fail", self.0),
            ));
        }
        increment(batch).await
    }
}

/// Panics on sub-batches containing `key`.
#[derive(Clone)]
pub struct PanicAt(pub i64);

#[async_trait]
impl JobKind for PanicAt {
    fn name(&self) -> &str {
        "panic-at"
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        if keys(batch).contains(&self.0) {
            panic!("job kind panicked at key {}", self.0);
        }
        increment(batch).await
    }
}

/// A one-column integer key's value (every test table here is keyed by `id`).
pub fn int(key: &Key) -> i64 {
    key.as_i64().expect("a one-column integer key")
}

/// A sub-batch's keys on an integer-keyed table.
pub fn keys(batch: &SubBatch<'_>) -> std::ops::RangeInclusive<i64> {
    int(batch.start())..=int(batch.end())
}

/// `n = n + 1`: not idempotent, so a sub-batch applied twice shows.
pub async fn increment(batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
    let sql = format!(
        "UPDATE {} SET n = n + 1 WHERE {}",
        batch.quoted_table(),
        batch.range_predicate()
    );
    batch.execute(&sql).await
}

pub fn registry_with(kind: impl JobKind) -> Registry {
    let mut registry = Registry::default();
    registry.register(kind);
    registry
}

/// A fast migration request: no interval, no pause.
pub fn fast(name: &str, kind: &str, table: &str, batch: i64, sub: i64) -> QueueRequest {
    let mut req = QueueRequest::new(name, kind, table);
    req.batch_size = batch;
    req.sub_batch_size = sub;
    req.pause_ms = 0;
    req.interval = Duration::ZERO;
    // Fixed sizes: these tests count jobs and sub-batches. The tuner and the optimizer have
    // their own tests.
    req.target_sub_batch_time = Duration::ZERO;
    req.max_batch_size = Some(batch);
    // A busy test machine can make one job's sub-batches look like latency drift; a hold of
    // 10 minutes would then outlast the test. Holds have their own tests (health.rs).
    req.health.hold_ms = 200;
    req
}

pub fn worker(sg: &Sluicegate, name: &str) -> Worker {
    sg.worker(WorkerOptions {
        name: name.to_owned(),
        lease: Duration::from_secs(10),
        poll_interval: Duration::from_millis(20),
        concurrency: 1,
    })
}

pub async fn run_to_end(sg: &Sluicegate) {
    tokio::time::timeout(Duration::from_secs(120), worker(sg, "w1").run_until_idle())
        .await
        .expect("the run ends within two minutes")
        .expect("the run succeeds");
}

/// Every job's log is a chain: the first row leaves `pending`, each next row leaves the
/// status the previous one entered, and the last row's status is the job's status.
pub async fn assert_chains(sg: &Sluicegate, m: &Migration) -> Vec<Job> {
    let jobs = sg.jobs(m, None).await.unwrap();
    assert!(!jobs.is_empty(), "migration {} has jobs", m.name);
    for job in &jobs {
        let log = sg.job_history(job.id).await.unwrap();
        if job.status == JobStatus::Pending && log.is_empty() {
            continue; // created pending by a split and never run
        }
        assert!(!log.is_empty(), "job {} has a log", job.id);
        assert!(
            log[0].previous_status == JobStatus::Pending,
            "job {} log starts at pending: {log:?}",
            job.id
        );
        for pair in log.windows(2) {
            assert_eq!(
                pair[0].next_status, pair[1].previous_status,
                "job {} log is a chain: {log:?}",
                job.id
            );
        }
        assert_eq!(
            log.last().unwrap().next_status,
            job.status,
            "job {}",
            job.id
        );
    }
    jobs
}

/// Job ranges are disjoint and in order.
pub fn assert_disjoint(jobs: &[Job]) {
    let mut ranges: Vec<(i64, i64)> = jobs
        .iter()
        .map(|j| (int(&j.min_value), int(&j.max_value)))
        .collect();
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(
            pair[0].1 < pair[1].0,
            "ranges overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// Claims `m` for `worker` and creates its job over keys `min..=max` directly (no kind runs):
/// a job as a worker holds it between taking it and its first sub-batch. Returns the job and
/// the migration's next key afterwards.
pub async fn take_job(
    sg: &Sluicegate,
    m: &Migration,
    worker: &str,
    (min, max): (i64, i64),
    lease: Duration,
) -> (Job, Option<i64>) {
    let claimed = sg
        .store()
        .migration_claim(worker, lease, Some(m.id))
        .await
        .unwrap()
        .expect("claimed");
    let expected = claimed.next_start.clone().expect("keys left");
    assert_eq!(
        expected.inclusive_start(&claimed.key),
        Some(Key::int(min)),
        "the job starts where the migration's next job does"
    );
    let created = sg
        .store()
        .job_create(&JobCreateParams {
            migration_id: m.id,
            expected_next: expected,
            range: JobRange::Given {
                min: Key::int(min),
                max: Key::int(max),
            },
            batch_size: max - min + 1,
            sub_batch_size: (max - min + 1).min(50),
            pause_ms: 0,
            worker: worker.into(),
            lease,
            lane: None,
        })
        .await
        .unwrap();
    let JobCreated::Created(job, next) = created else {
        panic!("job created: {created:?}");
    };
    let next = next.map(|n| int(&n.inclusive_start(&claimed.key).expect("an integer key")));
    (*job, next)
}
