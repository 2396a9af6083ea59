//! Installing the tracking schema: idempotent, versioned, guarded by CHECK constraints.

use sluicegate::store::{Backend, SCHEMA_VERSION};
use sluicegate::{store_test, Error};

fn versions_table(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "sluicegate.schema_versions",
        Backend::Sqlite => "sluicegate_schema_versions",
    }
}

store_test!(setup_is_idempotent, |db| {
    let sg = db.sluicegate().await;
    let (applied, _) = sg.setup().await.unwrap();
    assert!(
        applied.is_empty(),
        "a second setup applies nothing: {applied:?}"
    );
    assert_eq!(
        sg.store().schema_version().await.unwrap(),
        Some(SCHEMA_VERSION)
    );
    sg.ensure_schema().await.unwrap();
});

store_test!(older_binary_refuses_newer_schema, |db| {
    let sg = db.sluicegate().await;
    db.exec(&format!(
        "INSERT INTO {} (version, applied_at) VALUES (99, '2030-01-01T00:00:00Z')",
        versions_table(db.backend)
    ))
    .await;
    let err = sg.setup().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::SchemaTooNew {
                found: 99,
                supported: SCHEMA_VERSION
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade sluicegate"), "{err}");
    assert!(matches!(
        sg.ensure_schema().await,
        Err(Error::SchemaTooNew { .. })
    ));
});

store_test!(commands_before_setup_say_so, |db| {
    let sg = sluicegate::Sluicegate::connect(&db.url).await.unwrap();
    assert!(matches!(
        sg.ensure_schema().await,
        Err(Error::SchemaMissing)
    ));
    let err = sg.migrations().await.unwrap_err();
    assert!(matches!(err, Error::SchemaMissing), "{err}");
});

store_test!(check_constraints_guard_statuses_and_finished_at, |db| {
    let sg = db.sluicegate().await;
    db.create_items("items", &[(1, 10)]).await;
    let m = sg
        .queue(&crate::common::fast("m", "update", "items", 5, 5).argument("set", "n = 1"))
        .await
        .unwrap();
    let (jobs, migrations) = match db.backend {
        Backend::Postgres => ("sluicegate.jobs", "sluicegate.migrations"),
        Backend::Sqlite => ("sluicegate_jobs", "sluicegate_migrations"),
    };
    let now = "'2026-01-01T00:00:00Z'";
    // An unknown status.
    let bad_status = format!(
        "INSERT INTO {jobs} (migration_id, min_value, max_value, batch_size, sub_batch_size, status, created_at, updated_at) \
         VALUES ({}, 1, 5, 5, 5, 'Running', {now}, {now})",
        m.id
    );
    assert!(
        db.try_exec(&bad_status).await.is_err(),
        "status must be lowercase and known"
    );
    // finished_at on a running job; a running job with no lease.
    let bad_finish = format!(
        "INSERT INTO {jobs} (migration_id, min_value, max_value, batch_size, sub_batch_size, status, finished_at, lease_expires_at, created_at, updated_at) \
         VALUES ({}, 1, 5, 5, 5, 'running', {now}, {now}, {now}, {now})",
        m.id
    );
    assert!(
        db.try_exec(&bad_finish).await.is_err(),
        "finished_at only when final"
    );
    let no_lease = format!(
        "INSERT INTO {jobs} (migration_id, min_value, max_value, batch_size, sub_batch_size, status, created_at, updated_at) \
         VALUES ({}, 1, 5, 5, 5, 'running', {now}, {now})",
        m.id
    );
    assert!(
        db.try_exec(&no_lease).await.is_err(),
        "running needs a lease"
    );
    // Range and sizes.
    let inverted = format!(
        "UPDATE {migrations} SET min_value = 100 WHERE id = {}",
        m.id
    );
    assert!(
        db.try_exec(&inverted).await.is_err(),
        "min_value <= max_value"
    );
    let sub_too_big = format!(
        "UPDATE {migrations} SET sub_batch_size = 50 WHERE id = {}",
        m.id
    );
    assert!(
        db.try_exec(&sub_too_big).await.is_err(),
        "sub_batch_size <= batch_size"
    );
    let finished_without_time = format!(
        "UPDATE {migrations} SET status = 'finished' WHERE id = {}",
        m.id
    );
    assert!(
        db.try_exec(&finished_without_time).await.is_err(),
        "finished needs finished_at"
    );
});
