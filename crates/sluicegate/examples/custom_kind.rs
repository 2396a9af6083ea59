//! A custom job kind, queued and run in-app.
//!
//! Normalises phone numbers in batches: the kind receives each sub-batch's key range inside
//! a transaction, and Sluicegate records every job's transitions.
//!
//! Run with: `cargo run -p sluicegate --example custom_kind` (uses a temporary SQLite file;
//! set `DATABASE_URL=postgres://...` to run it on PostgreSQL instead).

use std::time::Duration;

use async_trait::async_trait;
use sluicegate::{
    ConnectOptions, Failure, JobKind, QueueRequest, Registry, Sluicegate, SubBatch,
    SubBatchConnection, WorkerOptions,
};

/// Strips everything but digits from `phone`, for the keys of one sub-batch.
struct NormalizePhones;

#[async_trait]
impl JobKind for NormalizePhones {
    fn name(&self) -> &str {
        "normalize-phones"
    }

    async fn perform(&self, batch: &mut SubBatch<'_>) -> Result<u64, Failure> {
        let table = batch.quoted_table();
        // "this sub-batch's keys", for any key (one column or several), its values bound.
        let in_range = batch.range_predicate().to_owned();
        // Each backend has its own way; the connection says which one this is.
        let expression = match batch.connection() {
            SubBatchConnection::Postgres(_) => "regexp_replace(phone, '[^0-9]', '', 'g')",
            SubBatchConnection::Sqlite(_) => {
                "replace(replace(replace(replace(phone, '-', ''), ' ', ''), '(', ''), ')', '')"
            }
        };
        batch
            .execute(&format!(
                "UPDATE {table} SET phone = {expression} WHERE {in_range}"
            ))
            .await
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}/example.db", dir.path().display()));

    let mut registry = Registry::default();
    registry.register(NormalizePhones);
    let mut options = ConnectOptions::new(&url);
    options.registry = registry;
    let sg = Sluicegate::connect_with(options).await?;
    sg.setup().await?;

    // The application's table.
    sluicegate_example_table(&url).await?;

    let mut request = QueueRequest::new("normalize_phones", "normalize-phones", "contacts");
    request.batch_size = 1_000;
    request.sub_batch_size = 250;
    request.pause_ms = 0;
    request.interval = Duration::ZERO;
    let migration = sg.queue(&request).await?;

    let worker = sg.worker(WorkerOptions {
        name: "example-worker".into(),
        ..WorkerOptions::default()
    });
    worker.run_until_idle().await?;

    let migration = sg.migration(&migration.name).await?;
    let progress = sg.progress(&migration).await?;
    println!(
        "migration {} is {}: {} rows in {} jobs",
        migration.name, migration.status, progress.rows_done, progress.jobs.succeeded
    );
    let first_job = &sg.jobs(&migration, None).await?[0];
    for row in sg.job_history(first_job.id).await? {
        println!(
            "job {}: {} -> {}",
            row.job_id, row.previous_status, row.next_status
        );
    }
    assert_eq!(migration.status, sluicegate::MigrationStatus::Finished);
    Ok(())
}

async fn sluicegate_example_table(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    let setup = "DROP TABLE IF EXISTS contacts;
        CREATE TABLE contacts (id bigint PRIMARY KEY, phone text NOT NULL);";
    let fill = if url.starts_with("sqlite:") {
        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 5000)
         INSERT INTO contacts SELECT i, '(555) 010-' || i FROM s"
    } else {
        "INSERT INTO contacts SELECT i, '(555) 010-' || i FROM generate_series(1, 5000) i"
    };
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await?;
        pool.execute(setup).await?;
        pool.execute(fill).await?;
    } else {
        let pool = sqlx::PgPool::connect(url).await?;
        pool.execute(setup).await?;
        pool.execute(fill).await?;
    }
    Ok(())
}
