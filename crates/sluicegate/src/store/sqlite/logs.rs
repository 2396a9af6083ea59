//! The job log's retention on SQLite, which has no partitions: rows older than the retention
//! are deleted. (The logs themselves are written with each change and read by the shared
//! reads.)

use chrono::{DateTime, Utc};

use super::{ts, SqliteStore};
use crate::error::{Error, Result};
use crate::store::{add_months, month_start_utc, PartitionReport};

const JOB_LOG_RETENTION_DELETE: &str =
    "DELETE FROM sluicegate_job_transition_logs WHERE created_at < $1";

pub(super) async fn partitions_maintain(
    store: &SqliteStore,
    now: DateTime<Utc>,
    retention_months: u32,
) -> Result<PartitionReport> {
    use chrono::Datelike;
    let this_month = chrono::NaiveDate::from_ymd_opt(now.year(), now.month(), 1).expect("month");
    let cutoff = add_months(this_month, -(retention_months as i32));
    let cutoff = ts(month_start_utc(cutoff));
    let done = sqlx::query(JOB_LOG_RETENTION_DELETE)
        .bind(cutoff)
        .execute(&store.pool)
        .await
        .map_err(Error::db("deleting old job log rows"))?;
    Ok(PartitionReport {
        rows_deleted: done.rows_affected(),
        ..PartitionReport::default()
    })
}

pub(super) async fn partitions_list(_store: &SqliteStore) -> Result<Vec<String>> {
    Ok(Vec::new())
}
