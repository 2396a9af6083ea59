//! Citus, read from its own catalog: what kind of table a migration's table is, its shards and
//! the nodes of their placements (lanes), and what makes a write straight to a shard's
//! placement safe: the ledger (a lane job's cursor kept on the node, committed with the
//! sub-batch's rows) and the shard guard (Citus's shard metadata lock, then a check that the
//! placement is still on this node).

use sqlx::types::Json;
use sqlx::{PgConnection, Row};

use super::PgTarget;
use crate::error::{Error, Result};
use crate::failure::{Failure, FailureClass};
use crate::ident::{self, TableName};
use crate::key::Key;
use crate::model::{CitusTable, NewLane};
use crate::store::{rows, LedgerCursor};

/// Whether Citus is installed in this database.
const CITUS_INSTALLED: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')";

/// The table's distribution method and replication (`partmethod`: `h` hash, `r` range, `a`
/// append, `n` none: a reference or Citus-local table, told apart by `repmodel`).
const CITUS_TABLE: &str = "SELECT partmethod::text, repmodel::text
    FROM pg_catalog.pg_dist_partition WHERE logicalrelid = to_regclass($1)";

/// Each shard of the table, in the order of its range, with its own table's name and the
/// node of each placement: a shard with several rows has several placements.
const CITUS_SHARDS: &str =
    "SELECT s.shardid, pg_catalog.shard_name(s.logicalrelid, s.shardid) AS relation,
        n.nodename || ':' || n.nodeport AS node
    FROM pg_catalog.pg_dist_shard s
    JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid
    JOIN pg_catalog.pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'
    WHERE s.logicalrelid = to_regclass($1)
    ORDER BY s.shardminvalue::numeric NULLS FIRST, s.shardid, n.nodeid";

/// Citus's shard metadata lock, shared, as Citus's own writes take it on the node they start
/// from, appended to the sub-batch's `BEGIN`: a shard move takes it exclusively on every node
/// while it blocks writes, so a sub-batch either commits before the move's catch-up (which
/// copies it) or waits and then finds the placement gone. 5 is PostgreSQL's `ShareLock`; the
/// shard id is our own integer, safe to format.
pub(super) fn shard_lock_sql(shard: i64) -> String {
    format!("; SELECT pg_catalog.lock_shard_metadata(5, ARRAY[{shard}]::bigint[])")
}

/// Whether the shard's placement is on this node.
const SHARD_IS_HERE: &str = "SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_dist_placement p
    JOIN pg_catalog.pg_dist_local_group g ON g.groupid = p.groupid
    WHERE p.shardid = $1)";

/// One creator of a node's ledger at a time (a transaction-level advisory lock, released at
/// its commit).
const LEDGER_CREATE_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('sluicegate.lane_ledger'))";

const SCHEMA_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)";

/// The ledger: one row per lane job, its cursor and the token of the run that owns it.
const LEDGER_CREATE: &str = "CREATE TABLE IF NOT EXISTS {l} (
    tracking text   NOT NULL,
    job_id   bigint NOT NULL,
    token    bigint NOT NULL,
    cursor   jsonb,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tracking, job_id))";

/// Takes the job for the run whose token is $3 (unless a later run has it), returning its
/// cursor.
const LEDGER_FENCE: &str = "INSERT INTO {l} AS g (tracking, job_id, token) VALUES ($1, $2, $3)
    ON CONFLICT (tracking, job_id) DO UPDATE SET token = EXCLUDED.token, updated_at = now()
    WHERE g.token <= EXCLUDED.token
    RETURNING cursor";

/// The job's cursor, written by the run whose token is $3 only.
pub(super) const LEDGER_ADVANCE: &str = "UPDATE {l} SET cursor = $4, updated_at = now()
    WHERE tracking = $1 AND job_id = $2 AND token = $3";

/// The ledger's quoted name in `schema`.
pub(super) fn ledger_table(schema: &str) -> String {
    format!("{}.lane_ledger", ident::quote(schema))
}

pub(super) async fn table(
    target: &PgTarget,
    table: &TableName,
) -> Result<Option<(CitusTable, Vec<NewLane>)>> {
    let context = format!("reading Citus's catalog for {}", table.quoted());
    let installed: bool = sqlx::query_scalar(CITUS_INSTALLED)
        .fetch_one(&target.pool)
        .await
        .map_err(Error::db(&context))?;
    if !installed {
        return Ok(None);
    }
    let Some(row) = sqlx::query(CITUS_TABLE)
        .bind(table.quoted())
        .fetch_optional(&target.pool)
        .await
        .map_err(Error::db(&context))?
    else {
        return Ok(None);
    };
    let method: String = row.try_get(0).map_err(rows::decode)?;
    let replication: String = row.try_get(1).map_err(rows::decode)?;
    let kind = match (method.as_str(), replication.as_str()) {
        ("n", "t") => return Ok(Some((CitusTable::Reference, Vec::new()))),
        ("n", _) if !single_shard(target, table).await? => {
            return Ok(Some((CitusTable::Local, Vec::new())))
        }
        _ => CitusTable::Distributed,
    };
    let shards = sqlx::query(CITUS_SHARDS)
        .bind(table.quoted())
        .fetch_all(&target.pool)
        .await
        .map_err(Error::db(&context))?;
    let mut lanes: Vec<NewLane> = Vec::new();
    for row in &shards {
        let shard_id: i64 = row.try_get("shardid").map_err(rows::decode)?;
        let relation: String = row.try_get("relation").map_err(rows::decode)?;
        let node: String = row.try_get("node").map_err(rows::decode)?;
        if let Some(seen) = lanes.iter().find(|l| l.shard_id == shard_id) {
            return Err(Error::InvalidSettings(format!(
                "{} has more than one placement of shard {shard_id} (on {} and {node}): \
                 Sluicegate writes each shard on its one placement and refuses replicated \
                 shards (citus.shard_replication_factor > 1)",
                table.quoted(),
                seen.node
            )));
        }
        lanes.push(NewLane {
            lane: lanes.len() as i32,
            relation: qualified_shard(table, &relation)?,
            shard_id,
            node,
        });
    }
    Ok(Some((kind, lanes)))
}

/// A distributed table without a distribution column (schema-based sharding) has one shard
/// on a worker; a Citus-local table's one shard is on the coordinator.
async fn single_shard(target: &PgTarget, table: &TableName) -> Result<bool> {
    let sql = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_shard s
        JOIN pg_catalog.pg_dist_placement p ON p.shardid = s.shardid
        WHERE s.logicalrelid = to_regclass($1) AND p.groupid <> 0)";
    sqlx::query_scalar(sql)
        .bind(table.quoted())
        .fetch_one(&target.pool)
        .await
        .map_err(Error::db("reading Citus's catalog"))
}

/// The shard's table in the schema of its table, in the stored form of a table's name
/// (`schema.table`, read back by [`TableName::parse`]): `shard_name()` gives it unqualified
/// when that schema is on the search path, and quoted when it must be.
fn qualified_shard(table: &TableName, shard: &str) -> Result<String> {
    // `shard_name()` quotes a name that needs it (`"we""ird_102008"`): read it back.
    let last = shard.rsplit('.').next().unwrap_or(shard);
    let unquoted = match last.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => last.to_owned(),
    };
    let bare = unquoted.as_str();
    let schema = table.schema.as_deref().unwrap_or("public");
    let stored = format!("{schema}.{bare}");
    match TableName::parse(&stored) {
        Ok(parsed) if parsed.schema.as_deref() == Some(schema) && parsed.table == bare => {
            Ok(stored)
        }
        _ => Err(Error::InvalidSettings(format!(
            "{}: a distributed table whose schema or shard name holds a dot cannot be run in lanes \
             (its shard's name would not read back)",
            table.quoted()
        ))),
    }
}

pub(super) async fn ledger_fence(
    target: &PgTarget,
    schema: &str,
    ledger: &LedgerCursor,
) -> Result<Option<Option<Key>>> {
    let context = format!("fencing job {} in its lane's ledger", ledger.job_id);
    let table = ledger_table(schema);
    let fence = LEDGER_FENCE.replace("{l}", &table);
    let mut conn = target.pool.acquire().await.map_err(Error::db(&context))?;
    let row = match fence_once(&mut conn, &fence, ledger).await {
        Ok(row) => row,
        // First use on this node: the ledger is created, in the tracking schema's name.
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P01" | "3F000")) =>
        {
            ensure_ledger(&mut conn, schema, &table).await?;
            fence_once(&mut conn, &fence, ledger)
                .await
                .map_err(Error::db(&context))?
        }
        Err(e) => return Err(Error::db(&context)(e)),
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let cursor: Option<Json<serde_json::Value>> = row.try_get(0).map_err(rows::decode)?;
    Ok(Some(
        cursor.map(|c| Key::from_json(c.0, &context)).transpose()?,
    ))
}

async fn fence_once(
    conn: &mut PgConnection,
    fence: &str,
    ledger: &LedgerCursor,
) -> sqlx::Result<Option<sqlx::postgres::PgRow>> {
    sqlx::query(fence)
        .bind(&ledger.tracking)
        .bind(ledger.job_id)
        .bind(ledger.token)
        .fetch_optional(conn)
        .await
}

async fn ensure_ledger(conn: &mut PgConnection, schema: &str, table: &str) -> Result<()> {
    let context = format!("creating the lane ledger {table}");
    // Loops meeting a node for the first time create it at once: `IF NOT EXISTS` alone races
    // (two creators, one unique violation in the catalog), so they take turns.
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(Error::db(&context))?;
    sqlx::query(LEDGER_CREATE_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    let exists: bool = sqlx::query_scalar(SCHEMA_EXISTS)
        .bind(schema)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    if !exists {
        let create = format!("CREATE SCHEMA IF NOT EXISTS {}", ident::quote(schema));
        sqlx::query(&create)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(&context))?;
    }
    sqlx::query(&LEDGER_CREATE.replace("{l}", table))
        .execute(&mut *tx)
        .await
        .map_err(Error::db(&context))?;
    tx.commit().await.map_err(Error::db(&context))?;
    Ok(())
}

/// In a sub-batch's open transaction on the shard's node, once it holds the shard's metadata
/// lock ([`shard_lock_sql`]): the placement still here (read after the lock, by a statement
/// of its own, so with a snapshot that sees a move that committed meanwhile), else a
/// `ShardMoved` failure.
pub(super) async fn guard(conn: &mut PgConnection, shard: i64) -> std::result::Result<(), Failure> {
    let here: bool = sqlx::query_scalar(SHARD_IS_HERE)
        .bind(shard)
        .fetch_one(&mut *conn)
        .await?;
    if here {
        return Ok(());
    }
    Err(Failure::new(
        FailureClass::ShardMoved,
        format!("shard {shard} is no longer on this node (moved or rebalanced): the job resumes on its new node"),
    ))
}
