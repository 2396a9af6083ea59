//! Stopping (issue 18, items 10 and 11): a stopped worker or finalizer ends its job at a
//! sub-batch boundary and hands it back resumable from its cursor; it gives its table back;
//! a finalizing migration whose finalizer died is finished by a worker at full speed, its
//! orphaned job first. Every wait here waits for a state, never a fixed time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sluicegate::{
    store_test, Error, Failure, Job, JobKind, JobStatus, Migration, MigrationEvent,
    MigrationStatus, Sluicegate, StepOutcome, SubBatch,
};

use crate::common::*;

/// `n = n + 1`, each sub-batch taking at least `ms` milliseconds.
struct Slow(u64);

#[async_trait]
impl JobKind for Slow {
    fn name(&self) -> &str {
        "slow"
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        tokio::time::sleep(Duration::from_millis(self.0)).await;
        increment(batch).await
    }
}

/// Waits until a running job of `m` has committed a sub-batch (its cursor is set); returns it.
async fn a_job_under_way(sg: &Sluicegate, m: &Migration) -> Job {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = sg.jobs(m, Some(JobStatus::Running)).await.unwrap();
        if let Some(job) = running.into_iter().find(|j| j.cursor.is_some()) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "no job of {} got under way",
            m.name
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A shutdown future that fires once a job of `m` is under way, noting when.
fn stop_when_under_way(
    sg: &Sluicegate,
    m: &Migration,
    at: &Arc<Mutex<Option<Instant>>>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (sg, m, at) = (sg.clone(), m.clone(), at.clone());
    async move {
        a_job_under_way(&sg, &m).await;
        *at.lock().unwrap() = Some(Instant::now());
    }
}

store_test!(
    a_stopped_worker_ends_at_a_sub_batch_boundary_and_the_job_resumes_from_its_cursor,
    |db| {
        db.create_items("items", &[(1, 2_000)]).await;
        let sg = db.sluicegate_with(registry_with(Slow(100))).await;
        // One job of 2,000 keys in 40 sub-batches of 50, 100 ms each: 4 s if run to its end.
        let m = sg
            .queue(&fast("slow", "slow", "items", 2_000, 50))
            .await
            .unwrap();
        let at = Arc::new(Mutex::new(None));
        let w = worker(&sg, "w");
        w.run(false, stop_when_under_way(&sg, &m, &at))
            .await
            .unwrap();
        let took = at.lock().unwrap().expect("stopped").elapsed();
        eprintln!("stopped {} ms after the stop", took.as_millis());
        assert!(
            took < Duration::from_millis(1_500),
            "the worker ended within about one sub-batch (100 ms), not the job (4 s): {took:?}"
        );
        let jobs = sg.jobs(&m, None).await.unwrap();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        let job = &jobs[0];
        assert_eq!(job.status, JobStatus::Pending, "{job:?}");
        let cursor = int(job.cursor.as_ref().expect("a cursor"));
        assert!(cursor < 2_000, "stopped before the job's end: {cursor}");
        // What committed is exactly the keys up to the cursor, once each.
        assert_eq!(
            db.scalar(&format!(
                "SELECT count(*) FROM items WHERE n = 1 AND id <= {cursor}"
            ))
            .await,
            cursor
        );
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n <> 0 AND id > 0")
                .await,
            cursor
        );
        let log = sg.job_history(job.id).await.unwrap();
        let stopped = &log[log.len() - 2];
        assert_eq!(
            (stopped.previous_status, stopped.next_status),
            (JobStatus::Running, JobStatus::Failed)
        );
        assert_eq!(stopped.exception_class.as_deref(), Some("Interrupted"));
        let said = stopped.exception_message.as_deref().unwrap();
        assert!(
            said.contains(&format!("resumes after its cursor {cursor}")),
            "{said}"
        );
        let last = log.last().unwrap();
        assert_eq!(
            (last.previous_status, last.next_status),
            (JobStatus::Failed, JobStatus::Pending)
        );
        // The table is free at once, and the next run resumes the job after its cursor:
        // every row changes exactly once.
        run_to_end(&sg).await;
        let m = sg.migration("slow").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
            0
        );
        let job = sg.job(job.id).await.unwrap();
        assert_eq!(job.status, JobStatus::Succeeded);
        assert_eq!(job.rows_affected, 2_000);
        assert_chains(&sg, &m).await;
    }
);

store_test!(
    a_worker_stopped_while_its_migration_is_paused_gives_the_table_back,
    |db| {
        db.create_items("items", &[(1, 2_000)]).await;
        let sg = db.sluicegate_with(registry_with(Slow(50))).await;
        // A pause between sub-batches: on SQLite a writer waiting for the lock (the pause
        // below) gets it there, not while a sub-batch holds it.
        let mut a = fast("a", "slow", "items", 2_000, 50);
        a.pause_ms = 20;
        let a = sg.queue(&a).await.unwrap();
        let mut b = fast("b", "slow", "items", 100, 50);
        b.scope = Some("id > 1000".into());
        let b = sg.queue(&b).await.unwrap();
        // The worker runs a job of `a`; `a` is paused meanwhile; then the worker stops.
        let (sg2, a2) = (sg.clone(), a.clone());
        let stop = async move {
            a_job_under_way(&sg2, &a2).await;
            // The worker's own writes may race the pause (a conflict writes nothing): again.
            loop {
                match sg2
                    .apply("a", MigrationEvent::Pause, Some("test".into()), "test")
                    .await
                {
                    Ok(_) => break,
                    Err(Error::Conflict { .. }) => tokio::task::yield_now().await,
                    Err(e) => panic!("{e}"),
                }
            }
        };
        // A lease far longer than the test: only giving the table back lets `b` start.
        let w = sg.worker(sluicegate::WorkerOptions {
            name: "w".into(),
            lease: Duration::from_secs(600),
            poll_interval: Duration::from_millis(20),
            concurrency: 1,
        });
        w.run(false, stop).await.unwrap();
        assert_eq!(
            sg.migration("a").await.unwrap().status,
            MigrationStatus::Paused
        );
        assert!(sg
            .jobs(&a, Some(JobStatus::Running))
            .await
            .unwrap()
            .is_empty());
        // Another worker starts `b` on the same table at once, not after the lease.
        let started = Instant::now();
        let mut l = worker(&sg, "next").new_loop();
        match l.step().await.unwrap() {
            StepOutcome::Ran { migration_id, .. } => assert_eq!(migration_id, b.id),
            other => panic!("b ran at once: {other:?}"),
        }
        l.finish().await.unwrap();
        eprintln!(
            "b started {} ms after the stop",
            started.elapsed().as_millis()
        );
    }
);

store_test!(
    a_stopped_finalizer_hands_its_job_back_and_a_worker_finishes_at_full_speed,
    |db| {
        db.create_items("items", &[(1, 1_000)]).await;
        let sg = db.sluicegate_with(registry_with(Slow(20))).await;
        // 10 jobs of 100 keys, ten sub-batches of 20 ms each.
        let m = sg
            .queue(&fast("fin", "slow", "items", 100, 10))
            .await
            .unwrap();
        let at = Arc::new(Mutex::new(None));
        let finalizer = worker(&sg, "finalizer");
        let err = finalizer
            .finalize_until(&m, "cli", stop_when_under_way(&sg, &m, &at))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Stopped { .. }), "{err}");
        let took = at.lock().unwrap().expect("stopped").elapsed();
        eprintln!("finalize stopped {} ms after the stop", took.as_millis());
        assert!(took < Duration::from_millis(1_500), "{took:?}");
        let m = sg.migration("fin").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finalizing);
        let handed_back: Vec<Job> = sg
            .jobs(&m, None)
            .await
            .unwrap()
            .into_iter()
            .filter(|j| j.status != JobStatus::Succeeded)
            .collect();
        assert_eq!(handed_back.len(), 1, "{handed_back:?}");
        assert_eq!(handed_back[0].status, JobStatus::Pending);
        assert!(handed_back[0].cursor.is_some());
        let created_before = sg.jobs(&m, None).await.unwrap().len();
        // A worker (lease 10 s) takes it over at once and runs it at full speed.
        let started = Instant::now();
        run_to_end(&sg).await;
        let took = started.elapsed();
        eprintln!(
            "a worker finished the finalizing migration in {} ms",
            took.as_millis()
        );
        assert!(
            took < Duration::from_secs(10),
            "faster than one job per lease: {took:?}"
        );
        let m = sg.migration("fin").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
            0
        );
        // The handed-back job ran again before any new job was created.
        let jobs = sg.jobs(&m, None).await.unwrap();
        let resumed = sg.job_history(handed_back[0].id).await.unwrap();
        let resumed_at = resumed
            .iter()
            .rev()
            .find(|r| r.next_status == JobStatus::Running)
            .unwrap()
            .created_at;
        for later in jobs.iter().skip(created_before) {
            let first = sg.job_history(later.id).await.unwrap()[0].created_at;
            assert!(resumed_at <= first, "job {} started before it", later.id);
        }
    }
);

store_test!(
    a_finalizer_that_died_mid_job_is_finished_by_a_worker_orphan_first_at_full_speed,
    |db| {
        db.create_items("items", &[(1, 2_000)]).await;
        let sg = db.sluicegate().await;
        let m = sg
            .queue(&fast("fin", "update", "items", 100, 50).argument("set", "n = n + 1"))
            .await
            .unwrap();
        // The finalizer moved it to `finalizing`, took a job, and died (SIGKILL): its job
        // and table leases run out in 300 ms.
        let m = sg
            .transition(&m, MigrationEvent::Finalize, None, "cli")
            .await
            .unwrap();
        let (orphan, _) =
            take_job(&sg, &m, "finalizer", (1, 100), Duration::from_millis(300)).await;
        // A worker with a 10 s lease: before, it ran one job per lease of its own (20 jobs,
        // over 3 minutes); now it runs them back to back.
        let started = Instant::now();
        run_to_end(&sg).await;
        let took = started.elapsed();
        eprintln!(
            "a worker finished the dead finalizer's migration in {} ms",
            took.as_millis()
        );
        assert!(took < Duration::from_secs(10), "{took:?}");
        let m = sg.migration("fin").await.unwrap();
        assert_eq!(m.status, MigrationStatus::Finished);
        assert_eq!(
            db.scalar("SELECT count(*) FROM items WHERE n <> 1").await,
            0
        );
        let log = sg.job_history(orphan.id).await.unwrap();
        assert!(log
            .iter()
            .any(|r| r.exception_class.as_deref() == Some("WorkerLost")));
        let retried_at = log
            .iter()
            .rev()
            .find(|r| r.next_status == JobStatus::Running)
            .unwrap()
            .created_at;
        for job in sg.jobs(&m, None).await.unwrap() {
            if job.id != orphan.id {
                let first = sg.job_history(job.id).await.unwrap()[0].created_at;
                assert!(retried_at <= first, "the orphan ran first (job {})", job.id);
            }
        }
        assert_chains(&sg, &m).await;
    }
);
