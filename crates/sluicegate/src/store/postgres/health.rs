//! The health indicators on PostgreSQL: one query reading what the role may read of vacuum
//! workers, the archiver, replicas, open transactions and locks on the table, and the
//! operator's probe, run read-only and rolled back.

use sqlx::types::Json;
use sqlx::Row;

use super::PgTarget;
use crate::error::{Error, Result};
use crate::failure::Failure;
use crate::health::HealthSample;
use crate::ident::TableName;
use crate::store::PROBE_TIMEOUT;

/// Everything the health indicators read, as one JSON row, in one round trip. Statistics of
/// other sessions need `pg_read_all_stats` and the archiver's directory `pg_monitor`; without
/// them the role reads what it may: its own sessions' transactions (and how many sessions of
/// other roles hold one: `backend_xid`/`backend_xmin` are public), the replicas streaming
/// (their lag is not), and the rest is NULL, `unknown`. `$1` is the quoted table.
/// The health sample: one query. `{archive_ready}` is [`ARCHIVE_READY`] when the role may
/// execute `pg_ls_archive_statusdir()`, else `NULL`: PostgreSQL checks EXECUTE when the query
/// starts, so a role without `pg_monitor` could not run the query at all with the call in it,
/// even behind a `CASE`.
const TARGET_HEALTH: &str = r"
WITH f AS (
    SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS stats,
           pg_has_role(current_user, 'pg_monitor', 'USAGE') AS monitor,
           pg_is_in_recovery() AS recovery,
           current_setting('archive_mode') <> 'off' AS archiving,
           to_regclass($1)::oid AS relid
)
SELECT json_build_object(
    'role', current_user,
    'stats', f.stats,
    'monitor', f.monitor,
    'archiving', f.archiving,
    'autovacuum', CASE WHEN f.stats THEN (
        SELECT coalesce(json_agg(json_build_object(
                   'pid', a.pid,
                   'wraparound', a.query LIKE '%(to prevent wraparound)%',
                   'seconds', extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start)))),
               '[]'::json)
        FROM pg_stat_progress_vacuum p JOIN pg_stat_activity a ON a.pid = p.pid
        WHERE p.relid = f.relid AND a.backend_type = 'autovacuum worker') END,
    'archive_ready', CASE WHEN f.monitor AND f.archiving THEN {archive_ready} END,
    'wal_lsn', CASE WHEN NOT f.recovery THEN pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END,
    'replicas', CASE WHEN NOT f.recovery THEN (
        SELECT coalesce(json_agg(json_build_object(
                   'name', coalesce(r.application_name, 'pid ' || r.pid),
                   'address', host(r.client_addr),
                   'lag_bytes', pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint,
                   'replay_lag_ms', extract(epoch FROM r.replay_lag) * 1000)),
               '[]'::json)
        FROM pg_stat_replication r) END,
    'replicas_hidden', CASE WHEN NOT f.stats AND NOT f.recovery THEN (
        SELECT count(*) FROM pg_stat_replication r WHERE r.replay_lsn IS NULL) ELSE 0 END,
    'sessions_hidden', CASE WHEN NOT f.stats THEN (
        SELECT count(*) FROM pg_stat_activity a
        WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
          AND a.backend_type IS NULL
          AND (a.backend_xid IS NOT NULL OR a.backend_xmin IS NOT NULL)
          -- Sluicegate's own (the tracking role's short bookkeeping transactions) are not
          -- what the indicator watches for.
          AND a.application_name IS DISTINCT FROM 'sluicegate') ELSE 0 END,
    'transactions', (
        SELECT coalesce(json_agg(t ORDER BY t.age_ms DESC), '[]'::json)
        FROM (SELECT a.pid, a.usename AS user, a.application_name AS application, a.state,
                     extract(epoch FROM now() - a.xact_start) * 1000 AS age_ms
              FROM pg_stat_activity a
              WHERE a.datname = current_database() AND a.backend_type = 'client backend'
                AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
              ORDER BY a.xact_start LIMIT 3) t),
    'locks', (
        SELECT coalesce(json_agg(json_build_object('pid', l.pid, 'mode', l.mode, 'granted', l.granted)),
               '[]'::json)
        FROM pg_locks l
        WHERE l.locktype = 'relation' AND l.relation = f.relid AND l.pid <> pg_backend_pid()
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND (NOT l.granted OR l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                                           'AccessExclusiveLock')))
)
FROM f";

/// WAL segments waiting for the archiver (needs EXECUTE on `pg_ls_archive_statusdir()`:
/// `pg_monitor`).
const ARCHIVE_READY: &str =
    r"(SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name ~ '^[0-9A-F]{24}\.ready$')";

/// Whether this role may list the archiver's status directory.
const ARCHIVE_READABLE: &str =
    "SELECT has_function_privilege('pg_catalog.pg_ls_archive_statusdir()', 'EXECUTE')";

pub(super) async fn sample(
    target: &PgTarget,
    table: &TableName,
    probe: Option<&str>,
) -> Result<HealthSample> {
    #[derive(serde::Deserialize)]
    struct Row {
        role: String,
        stats: bool,
        monitor: bool,
        archiving: bool,
        autovacuum: Option<Vec<crate::health::AutovacuumWorker>>,
        archive_ready: Option<i64>,
        wal_lsn: Option<i64>,
        replicas: Option<Vec<crate::health::Replica>>,
        replicas_hidden: i64,
        sessions_hidden: i64,
        transactions: Option<Vec<crate::health::OpenTransaction>>,
        locks: Option<Vec<crate::health::TableLock>>,
    }
    let context = "reading health indicators";
    let sql = target
        .health_sql
        .get_or_try_init(|| async {
            let readable: bool = sqlx::query_scalar(ARCHIVE_READABLE)
                .fetch_one(&target.pool)
                .await
                .map_err(Error::db(context))?;
            let archive_ready = if readable {
                ARCHIVE_READY
            } else {
                "NULL::bigint"
            };
            Ok::<_, Error>(TARGET_HEALTH.replace("{archive_ready}", archive_ready))
        })
        .await?;
    let Json(row): Json<Row> = sqlx::query_scalar(sql)
        .bind(table.quoted())
        .fetch_one(&target.pool)
        .await
        .map_err(Error::db(context))?;
    // What the role may not read is named with the grant that would make it readable.
    let grant = |role: &str| crate::health::grant_statement(role, &row.role);
    let mut sample = HealthSample {
        not_available: None,
        stats_grant: (!row.stats).then(|| grant("pg_read_all_stats")),
        monitor_grant: (!row.monitor).then(|| grant("pg_monitor")),
        role: Some(row.role.clone()),
        replicas_hidden: row.replicas_hidden,
        sessions_hidden: row.sessions_hidden,
        autovacuum: row.autovacuum,
        archiving: Some(row.archiving),
        archive_ready: row.archive_ready,
        wal_lsn: row.wal_lsn,
        replicas: row.replicas,
        transactions: row.transactions,
        locks: row.locks,
        probe: None,
    };
    if let Some(probe) = probe {
        sample.probe = Some(run_probe(target, probe).await?);
    }
    Ok(sample)
}

/// Runs the user's probe read-only, with a statement timeout, and rolls it back. Its own
/// errors are the answer (`Err`); only losing the connection is an error of ours.
async fn run_probe(
    target: &PgTarget,
    probe: &str,
) -> Result<std::result::Result<Option<bool>, String>> {
    let context = "running the health probe";
    let mut tx = target.pool.begin().await.map_err(Error::db(context))?;
    let setup = format!(
        "SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = {}",
        PROBE_TIMEOUT.as_millis()
    );
    sqlx::Executor::execute(&mut *tx, setup.as_str())
        .await
        .map_err(Error::db(context))?;
    let answer = sqlx::query(probe).fetch_one(&mut *tx).await;
    let _ = tx.rollback().await;
    let row = match answer {
        Ok(row) => row,
        Err(sqlx::Error::RowNotFound) => return Ok(Err("it returned no row".into())),
        Err(e) => return Ok(Err(Failure::from_sqlx(&e).message)),
    };
    // Said in SQL's terms, not the driver's (which names Rust types).
    use sqlx::{Column, TypeInfo};
    let Some(column) = row.columns().first() else {
        return Ok(Err(
            "it must return one boolean column; it returned none".into()
        ));
    };
    let ty = column.type_info().name().to_ascii_lowercase();
    if ty != "bool" {
        return Ok(Err(format!(
            "it must return one boolean column; its first column is of type {ty}"
        )));
    }
    Ok(row
        .try_get::<Option<bool>, _>(0)
        .map_err(|_| "it must return one boolean column".to_owned()))
}
