//! The running numbers: rows/s and the time left come from the time jobs ran, so a pause
//! between jobs changes neither; paused or held, no time left is promised.

use chrono::Duration as Gap;
use sluicegate::client::compute_progress;
use sluicegate::{store_test, JobStatus, MigrationEvent};

use crate::common::*;

store_test!(rate_and_time_left_count_only_the_time_jobs_ran, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 20_000)]).await;
    let m = sg
        .queue(&fast("pace", "update", "items", 1_000, 250).argument("set", "n = n + 1"))
        .await
        .unwrap();
    let mut lp = worker(&sg, "w1").new_loop();
    for _ in 0..4 {
        lp.step().await.unwrap();
    }
    lp.finish().await.unwrap();
    let m = sg.migration(&m.id.to_string()).await.unwrap();
    let running = sg.progress(&m).await.unwrap();
    let pace = running.pace.expect("jobs ran: a pace");
    assert!(pace.jobs >= 3, "{pace:?}");
    let rate = running.rows_per_second.expect("a rate");
    assert!(rate > 0.0);
    let eta = running.eta_seconds.expect("running: a time left");
    let left = 20_000.0 * (1.0 - running.percent / 100.0);
    assert!(
        (eta - left / pace.keys_per_second).abs() < 1e-6,
        "the time left is the keys left at the recent key rate: {eta} for {left} keys at {pace:?}"
    );

    // The same jobs with ten minutes between the oldest and the others (a pause, a hold, no
    // worker): the same rate, the same time left.
    let mut recent = sg.jobs(&m, Some(JobStatus::Succeeded)).await.unwrap();
    assert_eq!(recent.len(), pace.jobs);
    recent.sort_by_key(|j| j.started_at);
    for j in recent.iter_mut().skip(1) {
        j.started_at = j.started_at.map(|t| t + Gap::minutes(10));
        j.finished_at = j.finished_at.map(|t| t + Gap::minutes(10));
    }
    let counts = running.jobs.clone();
    let shifted = compute_progress(m.clone(), counts.clone(), &recent);
    assert_eq!(shifted.rows_per_second, Some(rate));
    assert_eq!(shifted.eta_seconds, Some(eta));

    // Held: no time left, the rate of the last work still shown.
    let mut held = m.clone();
    held.held_since = Some(chrono::Utc::now());
    let p = compute_progress(held, counts, &recent);
    assert_eq!((p.eta_seconds, p.rows_per_second), (None, Some(rate)));

    // Paused from another shell: no time left; resumed: the same time left as before, not
    // one lowered by the time it stood still.
    sg.apply("pace", MigrationEvent::Pause, None, "cli")
        .await
        .unwrap();
    let paused = sg
        .progress(&sg.migration("pace").await.unwrap())
        .await
        .unwrap();
    assert_eq!(paused.eta_seconds, None, "paused: no time left promised");
    assert_eq!(paused.rows_per_second, Some(rate), "the last work's rate");
    sg.apply("pace", MigrationEvent::Resume, None, "cli")
        .await
        .unwrap();
    let resumed = sg
        .progress(&sg.migration("pace").await.unwrap())
        .await
        .unwrap();
    assert_eq!(resumed.rows_per_second, Some(rate));
    assert_eq!(resumed.eta_seconds, Some(eta));
});
