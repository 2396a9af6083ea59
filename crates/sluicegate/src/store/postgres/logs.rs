//! The job log's monthly partitions on PostgreSQL: created ahead, dropped whole past the
//! retention. (The logs themselves are written with each change and read by the shared reads.)

use chrono::{DateTime, Datelike, NaiveDate, Utc};

use super::{exec_raw, PgStore};
use crate::error::{Error, Result};
use crate::ident;
use crate::store::{add_months, month_start, PartitionReport};

const PARTITION_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext('sluicegate.partitions:' || $1))";

const PARTITION_LIST: &str = "SELECT c.relname::text FROM pg_catalog.pg_inherits i
    JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
    JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
    JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace
    WHERE p.relname = 'job_transition_logs' AND n.nspname = $1
    ORDER BY c.relname";

const PARTITION_PREFIX: &str = "job_transition_logs_p";

pub(super) async fn partitions_maintain(
    store: &PgStore,
    now: DateTime<Utc>,
    retention_months: u32,
) -> Result<PartitionReport> {
    let context = "maintaining the job log partitions";
    let mut tx = store.pool.begin().await.map_err(Error::db(context))?;
    sqlx::query(PARTITION_LOCK)
        .bind(&store.schema)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(context))?;
    let existing: Vec<String> = sqlx::query_scalar(PARTITION_LIST)
        .bind(&store.schema)
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::db(context))?;
    let mut report = PartitionReport::default();
    let this_month = month_start(now.year(), now.month());
    for start in [this_month, add_months(this_month, 1)] {
        let name = partition_name(start);
        if existing.contains(&name) {
            continue;
        }
        let end = add_months(start, 1);
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {}.{} PARTITION OF {}.job_transition_logs \
             FOR VALUES FROM ('{}') TO ('{}')",
            store.quoted_schema,
            ident::quote(&name),
            store.quoted_schema,
            start.format("%Y-%m-%d 00:00:00+00"),
            end.format("%Y-%m-%d 00:00:00+00"),
        );
        exec_raw(&mut tx, &ddl)
            .await
            .map_err(Error::db(format!("creating partition {name}")))?;
        report.created.push(name);
    }
    let cutoff = add_months(this_month, -(retention_months as i32));
    for name in &existing {
        let Some(start) = partition_month(name) else {
            continue;
        };
        if add_months(start, 1) <= cutoff {
            exec_raw(
                &mut tx,
                &format!("DROP TABLE {}.{}", store.quoted_schema, ident::quote(name)),
            )
            .await
            .map_err(Error::db(format!("dropping partition {name}")))?;
            report.dropped.push(name.clone());
        }
    }
    tx.commit().await.map_err(Error::db(context))?;
    Ok(report)
}

pub(super) async fn partitions_list(store: &PgStore) -> Result<Vec<String>> {
    sqlx::query_scalar(PARTITION_LIST)
        .bind(&store.schema)
        .fetch_all(&store.pool)
        .await
        .map_err(Error::db("listing the job log partitions"))
}

/// The name of the partition holding the month starting at `start`.
pub fn partition_name(start: NaiveDate) -> String {
    format!("{PARTITION_PREFIX}{}", start.format("%Y%m"))
}

fn partition_month(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix(PARTITION_PREFIX)?;
    if digits.len() != 6 {
        return None;
    }
    let year: i32 = digits[..4].parse().ok()?;
    let month: u32 = digits[4..].parse().ok()?;
    NaiveDate::from_ymd_opt(year, month, 1)
}
