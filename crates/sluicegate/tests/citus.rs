//! Citus: a distributed table migrated lane by lane (one per shard) on the nodes, a reference
//! table and a local one through the coordinator, with the tracking tables on the coordinator.
//! Needs a Citus cluster (`SLUICEGATE_TEST_CITUS_URL`, the coordinator; `scripts/test` starts
//! one when Citus is installed). The tests share that cluster and run one at a time: one of
//! them stops a worker node, another moves a shard.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use sluicegate::{
    ConnectOptions, Error, Migration, QueueRequest, Sluicegate, Worker, WorkerOptions,
};
use sluicegate::{MigrationEvent, MigrationStatus};
use sqlx::postgres::PgPool;
use sqlx::Row;

/// One test at a time on the shared cluster.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The coordinator's URL, or `None` (said on stderr) when no cluster is configured; with
/// `SLUICEGATE_REQUIRE_CITUS` set (scripts/test, when Citus is installed) that is a failure.
fn citus_url() -> Option<String> {
    match std::env::var("SLUICEGATE_TEST_CITUS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("SLUICEGATE_REQUIRE_CITUS").is_none(),
                "SLUICEGATE_TEST_CITUS_URL is not set, and SLUICEGATE_REQUIRE_CITUS says a Citus \
                 cluster is required: run scripts/test"
            );
            eprintln!("SKIPPED (Citus): SLUICEGATE_TEST_CITUS_URL is not set; scripts/test starts a cluster when Citus is installed");
            None
        }
    }
}

/// A test's own schema for its tables and its own tracking schema, on the shared cluster.
struct CitusTest {
    admin: PgPool,
    schema: String,
    tracking: String,
    sg: Sluicegate,
}

fn suffix() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..10)
        .map(|_| (b'a' + rng.gen_range(0..26)) as char)
        .collect()
}

impl CitusTest {
    async fn new(url: &str) -> Self {
        let admin = PgPool::connect(url).await.expect("the coordinator answers");
        let (schema, tracking) = (format!("sgc_{}", suffix()), format!("sgt_{}", suffix()));
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        let mut opts = ConnectOptions::new(url);
        opts.schema = tracking.clone();
        let sg = Sluicegate::connect_with(opts).await.unwrap();
        sg.setup().await.unwrap();
        Self {
            admin,
            schema,
            tracking,
            sg,
        }
    }

    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `events (tenant_id, id, n)` distributed by `tenant_id` over `shards` shards, with
    /// `rows` rows over 100 tenants.
    async fn events(&self, shards: i32, rows: i64) -> String {
        let t = format!("{}.events", self.schema);
        self.exec(&format!(
            "CREATE TABLE {t} (tenant_id bigint, id bigint, n int NOT NULL DEFAULT 0,
                PRIMARY KEY (tenant_id, id));
             SET citus.shard_count = {shards};
             SELECT create_distributed_table('{t}', 'tenant_id');
             RESET citus.shard_count;
             INSERT INTO {t} SELECT g % 100, g, 0 FROM generate_series(1, {rows}) g;"
        ))
        .await;
        t
    }

    fn update(&self, name: &str, table: &str, batch: i64) -> QueueRequest {
        let mut req = QueueRequest::new(name, "update", table);
        req.arguments = json!({"set": "n = n + 1"});
        req.batch_size = batch;
        req.sub_batch_size = batch.min(100);
        req.pause_ms = 0;
        req.health.hold_ms = 300;
        req
    }

    fn worker(&self, name: &str, concurrency: usize) -> Worker {
        self.sg.worker(WorkerOptions {
            name: name.to_owned(),
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_millis(20),
            concurrency,
        })
    }

    async fn migration(&self, name: &str) -> Migration {
        self.sg.migration(name).await.unwrap()
    }

    /// Rows of `table` whose `n` is not exactly 1.
    async fn not_once(&self, table: &str) -> i64 {
        self.scalar(&format!("SELECT count(*) FROM {table} WHERE n <> 1"))
            .await
    }

    /// Waits (at most `within`) until `check` holds.
    async fn wait_for<F, Fut>(&self, what: &str, within: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The migration's log and its failed jobs' logs, for a failure's message.
    async fn story(&self, m: &Migration) -> String {
        let mut out = String::new();
        for r in self.sg.migration_history(m).await.unwrap() {
            out += &format!(
                "{} {} {:?} {:?} {:?}\n",
                r.created_at, r.event, r.reason, r.exception_class, r.exception_message
            );
        }
        for j in self.sg.jobs(m, None).await.unwrap() {
            if j.attempts > 1 || j.status == sluicegate::JobStatus::Failed {
                for r in self.sg.job_history(j.id).await.unwrap() {
                    out += &format!(
                        "job {} lane {:?}: {} -> {} {:?} {:?}\n",
                        j.id,
                        j.lane,
                        r.previous_status,
                        r.next_status,
                        r.exception_class,
                        r.exception_message
                    );
                }
            }
        }
        out
    }

    async fn finish(self) {
        self.exec(&format!(
            "DROP SCHEMA {} CASCADE; DROP SCHEMA IF EXISTS {} CASCADE;",
            self.schema, self.tracking
        ))
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_distributed_table_runs_lane_by_lane_exactly_once() {
    let Some(url) = citus_url() else { return };
    let _one = CLUSTER.lock().await;
    let t = CitusTest::new(&url).await;
    let table = t.events(8, 20_000).await;
    let m = t.sg.queue(&t.update("lanes", &table, 500)).await.unwrap();
    assert_eq!(m.citus, Some(sluicegate::CitusTable::Distributed));
    let lanes = t.sg.store().lane_list(m.id).await.unwrap();
    assert_eq!(lanes.len(), 8, "one lane per shard");
    let nodes: std::collections::BTreeSet<_> = lanes.iter().map(|l| l.node.clone()).collect();
    assert_eq!(
        nodes.len(),
        2,
        "the shards are on both worker nodes: {nodes:?}"
    );
    tokio::time::timeout(Duration::from_secs(120), t.worker("w", 4).run_until_idle())
        .await
        .expect("done within two minutes")
        .unwrap();
    let m = t.migration("lanes").await;
    assert_eq!(m.status, MigrationStatus::Finished);
    assert_eq!(t.not_once(&table).await, 0, "every row exactly once");
    let jobs = t.sg.jobs(&m, None).await.unwrap();
    assert!(
        jobs.iter().all(|j| j.lane.is_some()),
        "every job has its lane"
    );
    for lane in &lanes {
        let rows: i64 = jobs
            .iter()
            .filter(|j| j.lane == Some(lane.lane))
            .map(|j| j.rows_affected)
            .sum();
        let shard_rows = t
            .scalar(&format!(
                "SELECT count(*) FROM {table} WHERE get_shard_id_for_distribution_column('{table}', tenant_id) = {}",
                lane.shard_id
            ))
            .await;
        assert_eq!(
            rows, shard_rows,
            "lane {} wrote its shard's rows",
            lane.lane
        );
    }
    // Each job wrote one shard's table on its node: no statement through the coordinator
    // touched the distributed table (Citus counts none for it).
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_lane_jobs_resume_from_the_ledger_exactly_once() {
    let Some(url) = citus_url() else { return };
    let _one = CLUSTER.lock().await;
    let t = CitusTest::new(&url).await;
    let table = t.events(4, 8_000).await;
    let m =
        t.sg.queue(&t.update("resume", &table, 2_000))
            .await
            .unwrap();
    // A worker that stops mid-job, its lease then run out: abandoned jobs in their lanes.
    let w = t.worker("dies", 2);
    let run = tokio::spawn(async move { w.run_until_idle().await });
    let sg = t.sg.clone();
    let id = m.id;
    t.wait_for("a few sub-batches", Duration::from_secs(60), || {
        let sg = sg.clone();
        async move {
            let m = sg.migration(&id.to_string()).await.unwrap();
            sg.jobs(&m, None)
                .await
                .unwrap()
                .iter()
                .filter(|j| j.cursor.is_some())
                .count()
                >= 2
        }
    })
    .await;
    run.abort();
    let _ = run.await;
    // Whatever was committed on the nodes past the tracking rows is in the ledgers; a new
    // worker takes the jobs up after their leases run out and resumes from there.
    tokio::time::timeout(
        Duration::from_secs(120),
        t.worker("again", 2).run_until_idle(),
    )
    .await
    .expect("done within two minutes")
    .unwrap();
    assert_eq!(
        t.migration("resume").await.status,
        MigrationStatus::Finished
    );
    assert_eq!(t.not_once(&table).await, 0, "every row exactly once");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reference_and_local_tables_run_through_the_coordinator() {
    let Some(url) = citus_url() else { return };
    let _one = CLUSTER.lock().await;
    let t = CitusTest::new(&url).await;
    let (reference, local) = (format!("{}.refs", t.schema), format!("{}.plain", t.schema));
    t.exec(&format!(
        "CREATE TABLE {reference} (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         SELECT create_reference_table('{reference}');
         INSERT INTO {reference} SELECT g, 0 FROM generate_series(1, 3000) g;
         CREATE TABLE {local} (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         INSERT INTO {local} SELECT g, 0 FROM generate_series(1, 3000) g;"
    ))
    .await;
    let r =
        t.sg.queue(&t.update("reference", &reference, 500))
            .await
            .unwrap();
    let l = t.sg.queue(&t.update("local", &local, 500)).await.unwrap();
    assert_eq!(r.citus, Some(sluicegate::CitusTable::Reference));
    assert_eq!(
        l.citus, None,
        "a plain table on the coordinator is no Citus table"
    );
    tokio::time::timeout(Duration::from_secs(120), t.worker("w", 2).run_until_idle())
        .await
        .expect("done within two minutes")
        .unwrap();
    for name in ["reference", "local"] {
        assert_eq!(
            t.migration(name).await.status,
            MigrationStatus::Finished,
            "{name}"
        );
    }
    assert_eq!(t.not_once(&reference).await, 0);
    assert_eq!(t.not_once(&local).await, 0);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_kind_on_a_distributed_table_is_refused_at_queue() {
    let Some(url) = citus_url() else { return };
    let _one = CLUSTER.lock().await;
    let t = CitusTest::new(&url).await;
    let table = t.events(4, 100).await;
    let mut req = QueueRequest::new("sql", "sql", &table);
    req.arguments = json!({"sql": format!("UPDATE {table} SET n = n + 1 WHERE {{range}}")});
    let err = t.sg.queue(&req).await.unwrap_err();
    assert!(matches!(err, Error::InvalidJob { .. }), "{err}");
    assert!(err.to_string().contains("Citus distributed table"), "{err}");
    assert!(
        t.sg.migrations().await.unwrap().is_empty(),
        "nothing queued"
    );
    t.finish().await;
}

/// Runs `pg_ctl` on a node of the test cluster as the postgres user.
fn pg_ctl(node: &str, action: &str) {
    let dir = std::env::var("SLUICEGATE_TEST_CITUS_DIR").expect("SLUICEGATE_TEST_CITUS_DIR");
    let bin = std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let data = format!("{dir}/{node}");
    let log = format!("{dir}/{node}.log");
    let args = [
        "-u",
        "postgres",
        "--",
        &format!("{bin}/pg_ctl"),
        "-D",
        &data,
        "-l",
        &log,
        "-w",
        "-m",
        "fast",
        action,
    ];
    let status = Command::new("runuser")
        .args(args)
        .status()
        .expect("runuser runs");
    assert!(status.success(), "pg_ctl {action} {node}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_is_down_holds_only_its_lanes() {
    let Some(url) = citus_url() else { return };
    if std::env::var_os("SLUICEGATE_TEST_CITUS_DIR").is_none() {
        eprintln!("SKIPPED (Citus node stop): SLUICEGATE_TEST_CITUS_DIR is not set (scripts/test sets it)");
        return;
    }
    let _one = CLUSTER.lock().await;
    let t = CitusTest::new(&url).await;
    let table = t.events(8, 16_000).await;
    let m = t.sg.queue(&t.update("down", &table, 500)).await.unwrap();
    let lanes = t.sg.store().lane_list(m.id).await.unwrap();
    // The second worker node, by port: the cluster's nodes are coordinator, worker1, worker2.
    let mut nodes: Vec<String> = lanes.iter().map(|l| l.node.clone()).collect();
    nodes.sort();
    nodes.dedup();
    let down = nodes.last().unwrap().clone();
    pg_ctl("worker2", "stop");
    let w = t.worker("w", 2);
    let run = tokio::spawn(async move { w.run_until_idle().await });
    let sg = t.sg.clone();
    let (id, down_lanes): (i64, Vec<i32>) = (
        m.id,
        lanes
            .iter()
            .filter(|l| l.node == down)
            .map(|l| l.lane)
            .collect(),
    );
    // The other node's lanes finish; the stopped node's are held, its name in the log.
    t.wait_for(
        "the other node's lanes to finish",
        Duration::from_secs(90),
        || {
            let sg = sg.clone();
            let down = down.clone();
            async move {
                let lanes = sg.store().lane_list(id).await.unwrap();
                lanes
                    .iter()
                    .filter(|l| l.node != down)
                    .all(|l| l.next_start.is_none() && l.running_job.is_none())
            }
        },
    )
    .await;
    let m = t.migration("down").await;
    let history = t.sg.migration_history(&m).await.unwrap();
    let hold = history
        .iter()
        .find(|r| r.event == MigrationEvent::LaneHold)
        .expect("a lane_hold row");
    assert!(
        hold.reason.as_deref().unwrap_or_default().contains(&down),
        "the hold names the node: {:?}",
        hold.reason
    );
    let held = t.sg.store().lane_list(id).await.unwrap();
    assert!(
        held.iter()
            .filter(|l| down_lanes.contains(&l.lane))
            .all(|l| l.next_start.is_some()),
        "the stopped node's lanes wait"
    );
    assert_eq!(m.status, MigrationStatus::Active);
    pg_ctl("worker2", "start");
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("done within two minutes after the node is back")
        .unwrap()
        .unwrap();
    let m = t.migration("down").await;
    assert_eq!(m.status, MigrationStatus::Finished, "{}", t.story(&m).await);
    let history = t.sg.migration_history(&m).await.unwrap();
    assert!(
        history
            .iter()
            .any(|r| r.event == MigrationEvent::LaneRelease),
        "the lanes were released"
    );
    assert_eq!(t.not_once(&table).await, 0, "every row exactly once");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_moved_mid_run_is_followed_to_its_new_node() {
    let Some(url) = citus_url() else { return };
    let _one = CLUSTER.lock().await;
    let t = CitusTest::new(&url).await;
    let table = t.events(4, 40_000).await;
    let mut req = t.update("moved", &table, 1_000);
    req.sub_batch_size = 50;
    req.sub_batch_ceiling = Some(50);
    let m = t.sg.queue(&req).await.unwrap();
    let lanes = t.sg.store().lane_list(m.id).await.unwrap();
    let lane = lanes[0].clone();
    let to = lanes
        .iter()
        .map(|l| l.node.clone())
        .find(|n| *n != lane.node)
        .expect("two nodes");
    let w = t.worker("w", 2);
    let run = tokio::spawn(async move { w.run_until_idle().await });
    let sg = t.sg.clone();
    let id = m.id;
    let first = lane.lane;
    // Some of the lane done, most of it not.
    t.wait_for("lane 0 under way", Duration::from_secs(60), || {
        let sg = sg.clone();
        async move {
            let m = sg.migration(&id.to_string()).await.unwrap();
            sg.jobs(&m, None)
                .await
                .unwrap()
                .iter()
                .any(|j| j.lane == Some(first) && j.cursor.is_some())
        }
    })
    .await;
    let (from_host, from_port) = lane.node.rsplit_once(':').unwrap();
    let (to_host, to_port) = to.rsplit_once(':').unwrap();
    t.exec(&format!(
        "SELECT citus_move_shard_placement({}, '{from_host}', {from_port}, '{to_host}', {to_port}, \
         shard_transfer_mode => 'block_writes')",
        lane.shard_id
    ))
    .await;
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("done within two minutes")
        .unwrap()
        .unwrap();
    let m = t.migration("moved").await;
    assert_eq!(m.status, MigrationStatus::Finished);
    assert_eq!(t.not_once(&table).await, 0, "every row exactly once");
    let after = t.sg.store().lane_list(id).await.unwrap();
    assert_eq!(after[0].node, to, "the lane follows its shard");
    let history = t.sg.migration_history(&m).await.unwrap();
    let moved = history
        .iter()
        .find(|r| r.event == MigrationEvent::LaneMove)
        .expect("a lane_move row");
    let reason = moved.reason.clone().unwrap_or_default();
    assert!(
        reason.contains(&lane.node) && reason.contains(&to),
        "{reason}"
    );
    let row = sqlx::query("SELECT 1 FROM pg_dist_placement WHERE shardid = $1")
        .bind(lane.shard_id)
        .fetch_all(&t.admin)
        .await
        .unwrap();
    assert_eq!(row.len(), 1, "one placement after the move");
    let _ = row[0].try_get::<i32, _>(0);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shard_guard_refuses_a_node_that_does_not_hold_the_shard() {
    let Some(url) = citus_url() else { return };
    let _one = CLUSTER.lock().await;
    let t = CitusTest::new(&url).await;
    let table = t.events(2, 1_000).await;
    let m = t.sg.queue(&t.update("guard", &table, 500)).await.unwrap();
    let lanes = t.sg.store().lane_list(m.id).await.unwrap();
    let elsewhere = lanes
        .iter()
        .map(|l| l.node.clone())
        .find(|n| *n != lanes[0].node)
        .expect("the two shards are on two nodes");
    let kind = t.sg.registry().get("update").unwrap();
    let shard = sluicegate::ident::TableName::parse(&lanes[0].relation).unwrap();
    let lower = sluicegate::Lower::From(m.min_value.clone());
    let spec = |shard_id| sluicegate::store::SubBatchSpec {
        kind: kind.as_ref(),
        table: &shard,
        key: &m.key,
        scope: None,
        arguments: &m.job_arguments,
        lower: &lower,
        max: &m.max_value,
        size: 100,
        whole_rest: false,
        dense: false,
        timeouts: sluicegate::store::Timeouts {
            statement_ms: 5_000,
            lock_ms: 1_000,
        },
        key_unique: true,
        shard: Some(shard_id),
    };
    // On the node that holds it, the guard lets the sub-batch through (rolled back here).
    let home = t.sg.node_target(&lanes[0].node).await.unwrap();
    assert!(
        home.sub_batch_try(spec(lanes[0].shard_id))
            .await
            .unwrap()
            .rows
            > 0
    );
    // On another node, its placement is not there: refused before anything is read.
    let away = t.sg.node_target(&elsewhere).await.unwrap();
    let failure = away
        .sub_batch_try(spec(lanes[0].shard_id))
        .await
        .unwrap_err();
    assert_eq!(failure.class, "ShardMoved", "{failure}");
    assert_eq!(t.not_once(&table).await, 1_000, "nothing written");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_table_with_a_quote_in_its_name_runs_in_lanes() {
    let Some(url) = citus_url() else { return };
    let _one = CLUSTER.lock().await;
    let t = CitusTest::new(&url).await;
    let quoted = format!("{}.\"we\"\"ird\"", t.schema);
    t.exec(&format!(
        "CREATE TABLE {quoted} (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);
         SELECT create_distributed_table('{}', 'id');
         INSERT INTO {quoted} SELECT g, 0 FROM generate_series(1, 400) g;",
        quoted.replace('\'', "''")
    ))
    .await;
    // Its shards' names come back quoted from `shard_name()`: each lane names its own table.
    let m = t.sg.queue(&t.update("weird", &quoted, 50)).await.unwrap();
    let lanes = t.sg.store().lane_list(m.id).await.unwrap();
    assert!(
        lanes.iter().all(|l| l.relation.contains("we\"ird_")),
        "{:?}",
        lanes.iter().map(|l| &l.relation).collect::<Vec<_>>()
    );
    tokio::time::timeout(Duration::from_secs(60), t.worker("w", 2).run_until_idle())
        .await
        .expect("done within a minute")
        .unwrap();
    assert_eq!(t.migration("weird").await.status, MigrationStatus::Finished);
    assert_eq!(t.not_once(&quoted).await, 0, "every row exactly once");
    t.finish().await;
}
