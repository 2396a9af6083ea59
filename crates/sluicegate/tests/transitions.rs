//! Both state machines on real databases: every legal transition is applied with its log
//! row, every illegal one is refused with nothing written, and the two always commit together.

use std::time::Duration;

use sluicegate::store::{Backend, JobTransitionParams};
use sluicegate::testing::TestDb;
use sluicegate::{
    store_test, Error, Failure, Job, JobStatus, Migration, MigrationEvent, MigrationStatus,
    Sluicegate,
};

use crate::common::fast;

/// A new job of `m` in `status`, reached through legal transitions only.
async fn job_in(sg: &Sluicegate, m: &Migration, status: JobStatus) -> Job {
    let current = sg.migration(&m.id.to_string()).await.unwrap();
    let start = crate::common::int(
        &current
            .next_start
            .expect("range left")
            .inclusive_start(&current.key)
            .expect("an integer key"),
    );
    let (job, _) =
        crate::common::take_job(sg, m, "test", (start, start), Duration::from_secs(60)).await;
    let fail = || Some(Failure::new("TestFailure", "made to fail"));
    match status {
        JobStatus::Running => job,
        JobStatus::Succeeded => sg
            .job_transition(&job, JobStatus::Succeeded, None, "t")
            .await
            .unwrap(),
        JobStatus::Failed => sg
            .job_transition(&job, JobStatus::Failed, fail(), "t")
            .await
            .unwrap(),
        JobStatus::Pending => {
            let failed = sg
                .job_transition(&job, JobStatus::Failed, fail(), "t")
                .await
                .unwrap();
            sg.job_transition(&failed, JobStatus::Pending, None, "t")
                .await
                .unwrap()
        }
    }
}

async fn setup_jobs(db: &TestDb) -> (Sluicegate, Migration) {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 100)]).await;
    let m = sg
        .queue(&fast("m", "update", "items", 10, 5).argument("set", "n = 1"))
        .await
        .unwrap();
    (sg, m)
}

store_test!(every_job_transition_legal_and_illegal, |db| {
    let (sg, m) = setup_jobs(&db).await;
    let mut legal = 0;
    for from in JobStatus::ALL {
        for to in JobStatus::ALL {
            let job = job_in(&sg, &m, from).await;
            let log_before = sg.job_history(job.id).await.unwrap();
            let result = sg.job_transition(&job, to, None, "tester").await;
            let log_after = sg.job_history(job.id).await.unwrap();
            let stored = sg.job(job.id).await.unwrap();
            if from.can_become(to) {
                legal += 1;
                let changed = result.unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
                assert_eq!(changed.status, to);
                assert_eq!(stored.status, to);
                assert_eq!(
                    log_after.len(),
                    log_before.len() + 1,
                    "{from} -> {to} logged"
                );
                let row = log_after.last().unwrap();
                assert_eq!((row.previous_status, row.next_status), (from, to));
                assert_eq!(row.worker.as_deref(), Some("tester"));
                assert_eq!(stored.finished_at.is_some(), to.is_finished());
            } else {
                let err = result.expect_err(&format!("{from} -> {to} must be refused"));
                assert!(
                    matches!(err, Error::IllegalJobTransition { from: f, to: t, .. } if f == from && t == to),
                    "{err}"
                );
                assert_eq!(stored.status, from, "{from} -> {to} changed nothing");
                assert_eq!(
                    log_after.len(),
                    log_before.len(),
                    "{from} -> {to} logged nothing"
                );
            }
        }
    }
    assert_eq!(legal, 5, "five legal job transitions");
});

store_test!(stale_job_transition_is_a_conflict_not_an_overwrite, |db| {
    let (sg, m) = setup_jobs(&db).await;
    let job = job_in(&sg, &m, JobStatus::Running).await;
    sg.job_transition(&job, JobStatus::Succeeded, None, "a")
        .await
        .unwrap();
    // A second writer still holding the old snapshot (running) tries to fail it.
    let stale = JobTransitionParams::new(&job, JobStatus::Failed, "b")
        .unwrap()
        .with_failure(Some(Failure::new("Late", "too late")));
    let err = sg.store().job_transition(&stale).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(sg.job(job.id).await.unwrap().status, JobStatus::Succeeded);
    assert_eq!(sg.job_history(job.id).await.unwrap().len(), 2);
    // A wrong attempt number (fencing token) is refused the same way.
    let running = job_in(&sg, &m, JobStatus::Running).await;
    let fenced = JobTransitionParams::new(&running, JobStatus::Succeeded, "c")
        .unwrap()
        .expecting_attempts(running.attempts + 1);
    assert!(matches!(
        sg.store().job_transition(&fenced).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(sg.job(running.id).await.unwrap().status, JobStatus::Running);
});

/// A migration in `status`, reached through legal transitions only.
async fn migration_in(sg: &Sluicegate, k: usize, status: MigrationStatus) -> Migration {
    let mut req =
        fast(&format!("m{k}"), "update", "items", 10, 5).argument("set", format!("n = {k}"));
    req.paused = status == MigrationStatus::Paused;
    let m = sg.queue(&req).await.unwrap();
    let event = match status {
        MigrationStatus::Paused | MigrationStatus::Active => return m,
        MigrationStatus::Finalizing => MigrationEvent::Finalize,
        MigrationStatus::Finished => MigrationEvent::Finish,
        MigrationStatus::Failed => MigrationEvent::Fail,
        MigrationStatus::Cancelled => MigrationEvent::Cancel,
    };
    sg.transition(&m, event, None, "setup").await.unwrap()
}

store_test!(every_migration_transition_legal_and_illegal, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 100)]).await;
    let events = [
        MigrationEvent::Pause,
        MigrationEvent::Resume,
        MigrationEvent::Finalize,
        MigrationEvent::Finish,
        MigrationEvent::Fail,
        MigrationEvent::Retry,
        MigrationEvent::Cancel,
    ];
    let mut k = 0;
    let mut legal = 0;
    for from in MigrationStatus::ALL {
        for event in events {
            k += 1;
            let m = migration_in(&sg, k, from).await;
            let before = sg.migration_history(&m).await.unwrap().len();
            let result = sg
                .transition(&m, event, Some(format!("because {k}")), "cli")
                .await;
            let stored = sg.migration(&m.name).await.unwrap();
            let log = sg.migration_history(&m).await.unwrap();
            match from.after(event) {
                Some(to) => {
                    legal += 1;
                    let changed = result.unwrap_or_else(|e| panic!("{event} from {from}: {e}"));
                    assert_eq!((changed.status, stored.status), (to, to));
                    assert_eq!(log.len(), before + 1);
                    let row = log.last().unwrap();
                    assert_eq!(row.previous_status, Some(from));
                    assert_eq!(row.next_status, to);
                    assert_eq!(row.event, event);
                    assert_eq!(row.reason.as_deref(), Some(format!("because {k}").as_str()));
                    assert_eq!(row.actor.as_deref(), Some("cli"));
                    assert_eq!(stored.finished_at.is_some(), to.is_finished());
                }
                None => {
                    let err = result.expect_err(&format!("{event} from {from} must be refused"));
                    assert!(
                        matches!(err, Error::IllegalMigrationTransition { .. }),
                        "{err}"
                    );
                    assert!(err.to_string().contains(&format!("it is {from}")), "{err}");
                    assert_eq!(stored.status, from);
                    assert_eq!(log.len(), before);
                }
            }
        }
    }
    assert_eq!(legal, 13, "thirteen legal (status, event) pairs");
});

store_test!(queue_row_opens_every_migration_log, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 10)]).await;
    let mut req = fast("m", "update", "items", 5, 5).argument("set", "n = 1");
    req.actor = "cli".into();
    let m = sg.queue(&req).await.unwrap();
    let log = sg.migration_history(&m).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].event, MigrationEvent::Queue);
    assert_eq!(log[0].previous_status, None);
    assert_eq!(log[0].next_status, MigrationStatus::Active);
});

fn forced_failure_trigger(backend: Backend, table: &str) -> Vec<String> {
    match backend {
        Backend::Postgres => vec![
            "CREATE FUNCTION sluicegate.forced_failure() RETURNS trigger LANGUAGE plpgsql AS \
             $$BEGIN RAISE EXCEPTION 'forced failure between status change and log row'; END$$"
                .into(),
            format!(
                "CREATE TRIGGER forced_failure_{table} BEFORE INSERT ON sluicegate.{table} \
                 FOR EACH ROW EXECUTE FUNCTION sluicegate.forced_failure()"
            ),
        ],
        Backend::Sqlite => vec![format!(
            "CREATE TRIGGER forced_failure_{table} BEFORE INSERT ON sluicegate_{table} \
             BEGIN SELECT RAISE(ABORT, 'forced failure between status change and log row'); END"
        )],
    }
}

store_test!(
    status_change_and_log_row_commit_together_or_not_at_all,
    |db| {
        let (sg, m) = setup_jobs(&db).await;
        let job = job_in(&sg, &m, JobStatus::Running).await;
        let job_log = sg.job_history(job.id).await.unwrap().len();
        let migration_log = sg.migration_history(&m).await.unwrap().len();
        for sql in forced_failure_trigger(db.backend, "job_transition_logs") {
            db.exec(&sql).await;
        }
        for sql in forced_failure_trigger(db.backend, "migration_transition_logs") {
            if !sql.starts_with("CREATE FUNCTION") {
                db.exec(&sql).await;
            }
        }
        let err = sg
            .job_transition(&job, JobStatus::Succeeded, None, "t")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("forced failure"), "{err}");
        assert_eq!(
            sg.job(job.id).await.unwrap().status,
            JobStatus::Running,
            "status rolled back"
        );
        assert_eq!(
            sg.job_history(job.id).await.unwrap().len(),
            job_log,
            "no log row"
        );

        let err = sg.pause(&m.name, None, "cli").await.unwrap_err();
        assert!(err.to_string().contains("forced failure"), "{err}");
        assert_eq!(
            sg.migration(&m.name).await.unwrap().status,
            MigrationStatus::Active
        );
        assert_eq!(sg.migration_history(&m).await.unwrap().len(), migration_log);
    }
);

store_test!(long_messages_are_truncated_never_dropped, |db| {
    let (sg, m) = setup_jobs(&db).await;
    let job = job_in(&sg, &m, JobStatus::Running).await;
    let failure = Failure::new("C".repeat(300), "x".repeat(5_000));
    sg.job_transition(&job, JobStatus::Failed, Some(failure), "t")
        .await
        .unwrap();
    let log = sg.job_history(job.id).await.unwrap();
    let row = log.last().unwrap();
    assert_eq!(row.exception_class.as_ref().unwrap().chars().count(), 100);
    assert_eq!(
        row.exception_message.as_ref().unwrap().chars().count(),
        1_000
    );
});
