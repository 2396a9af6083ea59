//! The library's front door: connect to the tracking (and target) database, install the
//! schema, queue migrations, and operate on them (pause, resume, retry, cancel, finalize,
//! progress, history).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::error::{Error, Result};
use crate::fragment;
use crate::health::HealthSettings;
use crate::ident::{self, TableName};
use crate::key::{Key, KeyOptions, KeyWalk, Lower};
use crate::kind::Registry;
use crate::model::{
    defaults, CitusTable, Job, JobCounts, JobTransition, Migration, MigrationTransition, NewLane,
    NewMigration, Settings, TargetIdentity, ValidSettings,
};
use crate::status::{JobStatus, MigrationEvent, MigrationStatus};
use crate::store::postgres::{PgStore, PgTarget};
use crate::store::sqlite::{SqliteStore, SqliteTarget};
use crate::store::{
    Backend, JobTransitionParams, MigrationSetParams, MigrationTransitionParams, PartitionReport,
    Store, Target, SCHEMA_VERSION,
};

mod after;
mod health;
mod if_absent;
pub mod lanes;
mod nodes;
pub mod pace;
mod trials;
mod verify;

pub use after::runnable_ids;
pub use if_absent::{definition_differences, IfAbsent};
pub use pace::{recent_pace, Pace};
pub use trials::rows_known;
pub use verify::{Verification, VERIFY_SAMPLES};

/// Default tracking schema on PostgreSQL.
pub const DEFAULT_SCHEMA: &str = "sluicegate";
/// Attempts per job before it counts as failed for good (GitLab's MAX_ATTEMPTS).
pub const MAX_ATTEMPTS: i32 = 3;
/// How long job-log partitions are kept (GitLab: 6 months).
pub const LOG_RETENTION_MONTHS: u32 = 6;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Tracking database: `postgres://...` or `sqlite:...`.
    pub database_url: String,
    /// Target database, when the migrated table lives elsewhere.
    pub target_url: Option<String>,
    /// Tracking schema on PostgreSQL.
    pub schema: String,
    /// Pool size per database.
    pub max_connections: u32,
    /// How long to wait for a connection.
    pub acquire_timeout: Duration,
    /// Job kinds.
    pub registry: Registry,
    /// Create a SQLite file that does not exist yet (`setup`, `queue`, workers); off, a
    /// missing file is an error and nothing is created (read commands).
    pub create_if_missing: bool,
}

impl ConnectOptions {
    /// Options for `database_url` with defaults for everything else.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            target_url: None,
            schema: DEFAULT_SCHEMA.to_owned(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            registry: Registry::default(),
            create_if_missing: true,
        }
    }
}

/// What `sluicegate set` changes; `None` keeps a value.
#[derive(Debug, Clone, Default)]
pub struct SettingsChange {
    /// Keys per job.
    pub batch_size: Option<i64>,
    /// Keys per sub-batch, also the tuner's ceiling from then on.
    pub sub_batch_size: Option<i64>,
    /// The optimizer's ceiling.
    pub max_batch_size: Option<i64>,
    /// Pause between sub-batches, in milliseconds.
    pub pause_ms: Option<i64>,
    /// Minimum time between job starts.
    pub interval: Option<Duration>,
    /// Every health setting (start from the migration's own to change a few).
    pub health: Option<HealthSettings>,
    /// Each sub-batch's statement timeout (PostgreSQL): a job that cannot finish within the
    /// one it was queued with gets a way out.
    pub statement_timeout: Option<Duration>,
    /// Each sub-batch's lock timeout (PostgreSQL).
    pub lock_timeout: Option<Duration>,
}

/// A migration to queue. [`QueueRequest::new`] fills in GitLab's defaults.
#[derive(Debug, Clone)]
pub struct QueueRequest {
    /// Unique name.
    pub name: String,
    /// Job kind name.
    pub job_kind: String,
    /// Target table (`table` or `schema.table`).
    pub table: String,
    /// The key to walk, its columns in order (default: the table's primary key).
    pub key: Option<Vec<String>>,
    /// Only the rows matching this condition are walked and touched (GitLab's `scope_to`):
    /// each job spans `batch_size` keys *that match*, so a sparse cleanup makes few jobs.
    pub scope: Option<String>,
    /// Walk `key` even though no primary key or unique index covers it (rows of one key
    /// value then always fall in one sub-batch).
    pub non_unique_key: bool,
    /// Walk a key column that may be NULL, never visiting the rows where it is NULL (`key IS
    /// NOT NULL` is part of every walk and sub-batch, placed by the engine): said at queue
    /// with an estimate of those rows. Harmless on a NOT NULL key.
    pub skip_null_keys: bool,
    /// A batch and a sub-batch span this many distinct values of the key, not rows (GitLab's
    /// `distinct_each_batch`); needs `non_unique_key`.
    pub distinct: bool,
    /// Arguments of the job kind (`{"set": ...}` for `update`, ...).
    pub arguments: Value,
    /// Keys per job (GitLab: 1,000).
    pub batch_size: i64,
    /// Keys per sub-batch (GitLab: 100).
    pub sub_batch_size: i64,
    /// A ceiling the sub-batch tuner never exceeds (the CLI sets it to an explicit
    /// `--sub-batch-size`): one bad row then rolls back at most this many keys.
    pub sub_batch_ceiling: Option<i64>,
    /// Optimizer ceiling.
    pub max_batch_size: Option<i64>,
    /// Pause between sub-batches in milliseconds (GitLab: 100).
    pub pause_ms: i64,
    /// Minimum time between job starts (default 0: full speed, held back by the health checks
    /// and the sub-batch tuner; GitLab's always-on Sidekiq paces at 2 minutes).
    pub interval: Duration,
    /// Range start (default: the key's current minimum): a value for a one-column key, a JSON
    /// array for a composite one ([`KeySpec::parse_bound`]).
    pub min_value: Option<String>,
    /// Range end (default: the key's current maximum).
    pub max_value: Option<String>,
    /// Queue as `paused`.
    pub paused: bool,
    /// Sub-batch statement timeout (PostgreSQL).
    pub statement_timeout: Duration,
    /// Sub-batch lock timeout (PostgreSQL).
    pub lock_timeout: Duration,
    /// Who queues it (written to its log).
    pub actor: String,
    /// Health thresholds and hold duration.
    pub health: HealthSettings,
    /// The sub-batch tuner aims each sub-batch transaction at this (default 100 ms); zero
    /// keeps the sub-batch size fixed (GitLab's behaviour).
    pub target_sub_batch_time: Duration,
    /// The migrations it runs after, by name (`--after`): each must be queued already (or
    /// come earlier among the definitions applied with it); no worker claims this one until
    /// each of them has finished.
    pub after: Vec<String>,
    /// A condition every row of its range (and scope) must meet after its last job
    /// (`--verify`, read like `--where`): checked then, it ends `finished` only when no row
    /// violates it.
    pub verify: Option<String>,
}

impl QueueRequest {
    /// A request with the [defaults](crate::model::defaults).
    pub fn new(
        name: impl Into<String>,
        job_kind: impl Into<String>,
        table: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            job_kind: job_kind.into(),
            table: table.into(),
            key: None,
            scope: None,
            non_unique_key: false,
            skip_null_keys: false,
            distinct: false,
            arguments: Value::Object(Default::default()),
            batch_size: defaults::BATCH_SIZE,
            sub_batch_size: defaults::SUB_BATCH_SIZE,
            sub_batch_ceiling: None,
            max_batch_size: None,
            pause_ms: defaults::PAUSE_MS,
            interval: defaults::INTERVAL,
            min_value: None,
            max_value: None,
            paused: false,
            statement_timeout: defaults::STATEMENT_TIMEOUT,
            lock_timeout: defaults::LOCK_TIMEOUT,
            actor: "library".to_owned(),
            health: HealthSettings::default(),
            target_sub_batch_time: defaults::TARGET_SUB_BATCH_TIME,
            after: Vec::new(),
            verify: None,
        }
    }

    /// Its settings, as [`Settings::validate`] checks them.
    pub fn settings(&self) -> Settings {
        Settings {
            batch_size: self.batch_size,
            sub_batch_size: self.sub_batch_size,
            sub_batch_ceiling: self.sub_batch_ceiling,
            max_batch_size: self.max_batch_size,
            pause_ms: self.pause_ms,
            interval: self.interval,
            statement_timeout: self.statement_timeout,
            lock_timeout: self.lock_timeout,
            target_sub_batch_time: self.target_sub_batch_time,
            health: self.health.clone(),
        }
    }

    /// What it asks of its key beyond the columns.
    pub fn key_options(&self) -> KeyOptions {
        KeyOptions {
            non_unique: self.non_unique_key,
            walk: KeyWalk {
                skip_nulls: self.skip_null_keys,
                distinct: self.distinct,
            },
        }
    }

    /// Sets one job argument.
    pub fn argument(mut self, key: &str, value: impl Into<Value>) -> Self {
        if let Value::Object(map) = &mut self.arguments {
            map.insert(key.to_owned(), value.into());
        }
        self
    }
}

/// A migration with its job counts and derived progress.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// The migration.
    pub migration: Migration,
    /// Its jobs by status.
    pub jobs: JobCounts,
    /// Rows written so far.
    pub rows_done: i64,
    /// Estimated rows in all (`total_tuple_count`).
    pub rows_total: Option<i64>,
    /// Percentage of the key range handed out and done, 0–100.
    pub percent: f64,
    /// Rows per second of its recent running work ([`Pace`]: pauses and holds between jobs
    /// do not count); while paused or held, the rate of the last work it ran.
    pub rows_per_second: Option<f64>,
    /// Estimated time left: the keys left at the recent pace, while it runs (`None` while
    /// paused, held, failed or cancelled; 0 once finished).
    pub eta_seconds: Option<f64>,
    /// The recent pace the rate and the time left come from.
    pub pace: Option<Pace>,
    /// While on hold: the indicator and reading that put it there.
    pub hold_reason: Option<String>,
}

/// What queueing a migration would do: the validated row, what its trial sub-batches (rolled
/// back) measured, and the estimate built on them ([`crate::estimate`]).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The migration as it would be inserted. Its `total_tuple_count` is the keys it will
    /// walk: the table's (or scope's) estimate, or, with `--min-value`/`--max-value`, the
    /// rows of that range (counted, or estimated from the range's share of the keys when the
    /// count would take too long).
    pub migration: NewMigration,
    /// The trial sub-batches run, in order, every one rolled back: the queue-time check (one
    /// at the start of the range, and a larger one for a built-in kind), or after
    /// [`Sluicegate::measure`] the dry run's sampled ones.
    pub trials: Vec<crate::estimate::Trial>,
    /// Rows the migration will change: the rows of its keys (range and scope) that its
    /// kind's `where` matches, estimated (a sampled count on PostgreSQL, a count on SQLite,
    /// an exact count of an explicit range). `None` when they cannot be known before it runs
    /// (`--kind sql`, a custom kind: their statements say what they change).
    pub rows_to_change: Option<i64>,
    /// On a non-unique key, the rows of one key value (the median at the dry run's
    /// positions): a sub-batch covers every row of its last value, so one asked for fewer
    /// keys than that still covers a whole value; 1 on a unique key.
    pub rows_per_key_value: f64,
    /// The loops the estimate is for (`--concurrency` of the dry run; 1 by default).
    pub concurrency: i64,
    /// The estimated duration and jobs, with the range the trials' positions span; `None`
    /// when nothing was tried (an empty range) or the table has no estimate.
    pub estimate: Option<crate::estimate::Estimate>,
    /// Its health protections that are off now: indicators not switched off that read
    /// `unknown` for a reason an operator can fix, with the grant that would turn each on
    /// ([`crate::health::protections_off`]).
    pub protections_off: Vec<crate::health::Reading>,
    /// The migrations it runs after, by name: resolved to their ids when it is queued.
    pub after: Vec<String>,
    /// With `skip_null_keys`: the rows it will never visit, those where a key column is NULL
    /// (estimated as a scope is: a sampled count on PostgreSQL, a count on SQLite).
    pub null_key_rows: Option<i64>,
    /// With `distinct`: the distinct key values it will walk, estimated
    /// ([`Target::distinct_estimate`]); its jobs count these.
    pub distinct_keys: Option<i64>,
}

impl Plan {
    /// What a walk that skips NULL keys leaves alone, said at queue: `rows where pipeline_id
    /// IS NULL are not visited: 12 estimated`. `None` for a key that does not skip them.
    pub fn null_keys_note(&self) -> Option<String> {
        let key = &self.migration.key;
        if !key.walk().skip_nulls {
            return None;
        }
        let columns: Vec<String> = key
            .columns()
            .iter()
            .map(|c| format!("{} IS NULL", c.name))
            .collect();
        Some(format!(
            "rows where {} are not visited: {} estimated",
            columns.join(" or "),
            self.null_key_rows
                .map_or_else(|| "an unknown number".to_owned(), |n| n.to_string())
        ))
    }

    /// The keys its jobs count, estimated: rows, or distinct values for a walk by distinct
    /// values.
    pub(crate) fn walked_keys(&self) -> Option<i64> {
        if self.migration.key.walk().distinct {
            self.distinct_keys
        } else {
            self.migration.total_tuple_count
        }
    }
}

/// How many recent jobs the running rate comes from.
const RECENT_JOBS: i64 = 20;

/// The longest reason an operator may give with a change of status or settings, in
/// characters (GitLab caps its job messages at the same length). Checked by
/// [`Sluicegate::transition`] (and so `apply`, `pause`, ...) and [`Sluicegate::set`]: the CLI,
/// the HTTP API and the library alike.
pub const MAX_REASON_CHARS: usize = 1_000;

/// Refuses a reason longer than [`MAX_REASON_CHARS`].
pub fn check_reason(reason: Option<&str>) -> Result<()> {
    let chars = reason.map_or(0, |r| r.chars().count());
    if chars > MAX_REASON_CHARS {
        return Err(Error::ReasonTooLong {
            chars,
            max: MAX_REASON_CHARS,
        });
    }
    Ok(())
}

/// Resolves the [`Backend`] of a URL.
fn backend_of(url: &str) -> Result<Backend> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else {
        Err(Error::InvalidUrl {
            url: mask_password(url),
            reason: "expected postgres://..., postgresql://... or sqlite:...".to_owned(),
        })
    }
}

/// `url` with any password replaced by `***`, for messages: the userinfo's (up to the last
/// `@` before the path, so a password holding `@` is masked whole) and a `password=` query
/// parameter's.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(end) => rest.split_at(end),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                        format!("{key}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// How a target is shown: its URL without password, query or fragment (`postgres://app@db:5432/
/// shop`, `sqlite:data/app.db`).
pub fn display_url(url: &str) -> String {
    let bare = url.split(['?', '#']).next().unwrap_or(url);
    let Some((scheme, rest)) = bare.split_once("://") else {
        return bare.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}@{host}")
        }
        None => bare.to_owned(),
    }
}

enum Pool {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// How long the first connection to a PostgreSQL server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn open_pool(url: &str, opts: &ConnectOptions) -> Result<Pool> {
    let invalid = |e: sqlx::Error| Error::InvalidUrl {
        url: mask_password(url),
        reason: e.to_string(),
    };
    let unreachable = |e: sqlx::Error| Error::Database {
        context: format!("connecting to {}", mask_password(url)),
        source: e,
    };
    match backend_of(url)? {
        Backend::Postgres => {
            let options = PgConnectOptions::from_str(url)
                .map_err(invalid)?
                .application_name("sluicegate");
            // One connection first, within a few seconds: a server that is down or refuses
            // the role is said plainly ("connection refused", "password authentication
            // failed"), where the pool would wait its acquire timeout and report only that.
            let first = tokio::time::timeout(
                CONNECT_TIMEOUT,
                <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
            )
            .await;
            match first {
                Ok(Ok(conn)) => {
                    let _ = sqlx::Connection::close(conn).await;
                }
                Ok(Err(e)) => return Err(unreachable(e)),
                Err(_) => {
                    return Err(unreachable(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                    ))))
                }
            }
            let pool = PgPoolOptions::new()
                .max_connections(opts.max_connections)
                .acquire_timeout(opts.acquire_timeout)
                // No ping before every acquire (a round trip each time, three a job): a
                // connection the server dropped fails on use, which workers already treat
                // as ConnectionLost and retry.
                .test_before_acquire(false)
                // Key values travel as text (jsonb cursors, bound parameters): every session
                // of ours prints and reads them in ISO and UTC, whatever the database's own
                // DateStyle and TimeZone (sqlx sends these at connect already; said here, so
                // the walk does not rest on a driver's default). Bounds a person gives are
                // read under the database's own settings instead (Target::key_canonical).
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::Executor::execute(
                            &mut *conn,
                            crate::store::postgres::SESSION_SETTINGS,
                        )
                        .await
                        .map(|_| ())
                    })
                })
                .connect_with(options)
                .await
                .map_err(unreachable)?;
            Ok(Pool::Postgres(pool))
        }
        Backend::Sqlite => {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(invalid)?
                .create_if_missing(opts.create_if_missing)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(30));
            // A command that only reads never creates the file: no file, no schema.
            let file = options.get_filename();
            if !opts.create_if_missing && file != std::path::Path::new(":memory:") && !file.exists()
            {
                // The target holds the table: its missing file is not a missing schema.
                if url != opts.database_url {
                    return Err(Error::InvalidUrl {
                        url: mask_password(url),
                        reason: "no such SQLite file".to_owned(),
                    });
                }
                return Err(Error::SchemaMissing);
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(opts.max_connections)
                .acquire_timeout(opts.acquire_timeout)
                .connect_with(options)
                .await
                .map_err(unreachable)?;
            Ok(Pool::Sqlite(pool))
        }
    }
}

/// A handle on Sluicegate's tracking database (and the target database). Cheap to clone.
#[derive(Clone)]
pub struct Sluicegate {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) target: Arc<dyn Target>,
    pub(crate) registry: Registry,
    pub(crate) schema: String,
    pub(crate) same_database: bool,
    /// The nodes of a Citus cluster the target is the coordinator of, for lanes.
    pub(crate) nodes: Arc<nodes::Nodes>,
    /// The database the migrated tables live in: stored with each migration queued, and the
    /// only one whose migrations this handle's workers run.
    pub(crate) target_identity: TargetIdentity,
}

impl std::fmt::Debug for Sluicegate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sluicegate")
            .field("backend", &self.store.backend())
            .field("same_database", &self.same_database)
            .field("target", &self.target_identity.display)
            .field("registry", &self.registry)
            .finish()
    }
}

impl Sluicegate {
    /// Connects with default options.
    pub async fn connect(database_url: &str) -> Result<Self> {
        Self::connect_with(ConnectOptions::new(database_url)).await
    }

    /// Connects as `opts` says.
    pub async fn connect_with(opts: ConnectOptions) -> Result<Self> {
        ident::validate(&opts.schema)?;
        let tracking = open_pool(&opts.database_url, &opts).await?;
        let separate_target = match &opts.target_url {
            Some(url) if url != &opts.database_url => Some(open_pool(url, &opts).await?),
            _ => None,
        };
        let same_database = separate_target.is_none();
        let target_url = match &separate_target {
            Some(_) => opts.target_url.as_deref().unwrap_or(&opts.database_url),
            None => &opts.database_url,
        };
        // The target first: the store claims only its migrations.
        let target: Arc<dyn Target> = match (&tracking, &separate_target) {
            (Pool::Postgres(pool), None) => {
                let store = PgStore::new(pool.clone(), &opts.schema)?;
                Arc::new(PgTarget::new(pool.clone(), Some(&store)))
            }
            (Pool::Sqlite(pool), None) => Arc::new(SqliteTarget::new(pool.clone(), true)),
            (_, Some(Pool::Postgres(pool))) => Arc::new(PgTarget::new(pool.clone(), None)),
            (_, Some(Pool::Sqlite(pool))) => Arc::new(SqliteTarget::new(pool.clone(), false)),
        };
        let target_identity = TargetIdentity {
            id: target.identity().await?,
            display: display_url(target_url),
        };
        let store: Arc<dyn Store> = match tracking {
            Pool::Postgres(pool) => {
                Arc::new(PgStore::new(pool, &opts.schema)?.for_target(target_identity.clone()))
            }
            Pool::Sqlite(pool) => {
                Arc::new(SqliteStore::new(pool).for_target(target_identity.clone()))
            }
        };
        Ok(Self {
            store,
            target,
            registry: opts.registry,
            schema: opts.schema.clone(),
            same_database,
            nodes: Arc::new(nodes::Nodes::new(target_url, opts.max_connections)),
            target_identity,
        })
    }

    /// The tracking store (primitive operations).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The target database.
    pub fn target(&self) -> &Arc<dyn Target> {
        &self.target
    }

    /// The tracking schema's name (PostgreSQL): a lane's ledger on a Citus node lives in a
    /// schema of the same name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The target on a Citus node (`host:port`), for a lane on it.
    pub async fn node_target(&self, node: &str) -> Result<Arc<dyn Target>> {
        self.nodes.target(node).await
    }

    /// The database the migrated tables live in, as this handle is connected to it.
    pub fn target_identity(&self) -> &TargetIdentity {
        &self.target_identity
    }

    /// Whether `m` is a migration of the target this handle is connected to (a migration of
    /// unknown target, queued before schema v5, is not).
    pub fn is_own_target(&self, m: &Migration) -> bool {
        m.target.as_ref().map(|t| &t.id) == Some(&self.target_identity.id)
    }

    /// Refuses to act on a migration of another target (or of an unknown one) as its worker:
    /// [`Error::WrongTarget`], saying which it is for and how to go on.
    pub fn check_target(&self, m: &Migration) -> Result<()> {
        if self.is_own_target(m) {
            return Ok(());
        }
        let (target, hint) = match &m.target {
            Some(t) => (
                t.display.clone(),
                format!(" (run it with --target-url {})", t.display),
            ),
            None => (
                "an unknown target (queued before schema v5)".to_owned(),
                format!(
                    " (if {} is its target, adopt it: `sluicegate adopt {}`)",
                    self.target_identity.display, m.name
                ),
            ),
        };
        Err(Error::WrongTarget {
            migration: m.name.clone(),
            target,
            connected: self.target_identity.display.clone(),
            hint,
        })
    }

    /// Active or finalizing migrations this handle's workers leave alone: of another target,
    /// or of an unknown one (queued before schema v5).
    pub async fn other_targets_runnable(&self) -> Result<Vec<Migration>> {
        Ok(self
            .store
            .migration_list()
            .await?
            .into_iter()
            .filter(|m| {
                matches!(
                    m.status,
                    MigrationStatus::Active | MigrationStatus::Finalizing
                ) && !self.is_own_target(m)
            })
            .collect())
    }

    /// Gives a migration of unknown target (queued before schema v5, when none was recorded)
    /// the target this handle is connected to, with a `set` row in its log, so that workers
    /// connected to it run it. Refused when its target is known, and for a finished or
    /// cancelled migration.
    pub async fn adopt_target(
        &self,
        id_or_name: &str,
        reason: Option<String>,
        actor: &str,
    ) -> Result<Migration> {
        check_reason(reason.as_deref())?;
        let m = self.migration(id_or_name).await?;
        if let Some(t) = &m.target {
            return Err(Error::InvalidSettings(format!(
                "migration {} already has its target: {}",
                m.name, t.display
            )));
        }
        let mut text = format!("target: unknown -> {}", self.target_identity.display);
        if let Some(reason) = reason.filter(|r| !r.trim().is_empty()) {
            text.push_str(&format!(" ({reason})"));
        }
        match self
            .store
            .migration_adopt_target(m.id, &self.target_identity, &text, actor)
            .await?
        {
            Some(m) => Ok(m),
            None => {
                let now = self.store.migration_get(m.id).await?.unwrap_or(m.clone());
                Err(Error::IllegalMigrationTransition {
                    migration: m.name.clone(),
                    event: "adopt".to_owned(),
                    from: now.status,
                })
            }
        }
    }

    /// The job kinds this handle knows.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Whether tracking and target are one database (sub-batches commit the job cursor with
    /// their writes: exactly-once).
    pub fn is_same_database(&self) -> bool {
        self.same_database
    }

    /// Installs or upgrades the tracking schema (idempotent) and creates the job log's
    /// partitions ahead. Returns the schema versions applied now.
    pub async fn setup(&self) -> Result<(Vec<i64>, PartitionReport)> {
        let applied = self.store.schema_install().await?;
        let partitions = self
            .store
            .log_partitions_maintain(Utc::now(), LOG_RETENTION_MONTHS)
            .await?;
        Ok((applied, partitions))
    }

    /// Fails unless the tracking schema is installed at a version this binary knows.
    pub async fn ensure_schema(&self) -> Result<()> {
        match self.store.schema_version().await? {
            None => Err(Error::SchemaMissing),
            Some(v) if v > SCHEMA_VERSION => Err(Error::SchemaTooNew {
                found: v,
                supported: SCHEMA_VERSION,
            }),
            Some(v) if v < SCHEMA_VERSION => Err(Error::SchemaMissing),
            Some(_) => Ok(()),
        }
    }

    /// The one reading of a migration's SQL by the parser, for `plan`, `queue_plan` and a
    /// worker's claim: the scope must be one condition (`Err`: refused as a setting), and the
    /// kind's fragments what their places expect (`Ok(Err(reason))`: each caller says whose).
    fn check_sql(
        &self,
        job_kind: &str,
        arguments: &Value,
        table: &TableName,
        key: &crate::key::KeySpec,
        scope: Option<&str>,
    ) -> Result<std::result::Result<(), String>> {
        let backend = self.target.backend();
        let scope = scope.filter(|s| !s.trim().is_empty());
        if let Some(scope) = scope {
            fragment::check_condition(backend, "--scope", scope).map_err(Error::InvalidSettings)?;
        }
        Ok(crate::kind::check_fragments(
            job_kind,
            arguments,
            backend,
            table,
            key,
            scope.is_some(),
        ))
    }

    /// Reads a stored migration's SQL again (its scope and its kind's fragments, as `queue`
    /// does): a definition stored before fragments were parsed, or written by hand, is refused
    /// before any of it runs. Workers call it when they claim a migration.
    pub fn check_definition(&self, m: &Migration) -> Result<()> {
        let table = TableName::parse(&m.table_name)?;
        if let Some(verify) = &m.verify {
            fragment::check_condition(self.target.backend(), "--verify", verify).map_err(
                |reason| {
                    Error::InvalidSettings(format!("the stored definition's --verify: {reason}"))
                },
            )?;
        }
        self.check_sql(
            &m.job_kind,
            &m.job_arguments,
            &table,
            &m.key,
            m.scope.as_deref(),
        )?
        .map_err(|reason| {
            Error::InvalidSettings(format!(
                "the stored definition of kind {}: {reason}",
                m.job_kind
            ))
        })
    }

    /// Validates a migration against the target database and returns what would be inserted,
    /// writing nothing: its first sub-batch runs inside a transaction that is rolled back.
    pub async fn plan(&self, req: &QueueRequest) -> Result<Plan> {
        self.plan_in(req, &[]).await
    }

    /// [`Self::plan`] among definitions applied together: `earlier` are the names of those
    /// before it, which `req.after` may name before they are queued.
    pub(crate) async fn plan_in(&self, req: &QueueRequest, earlier: &[String]) -> Result<Plan> {
        self.check_after(req, earlier).await?;
        if req.name.trim().is_empty() {
            return Err(Error::InvalidSettings("the migration name is empty".into()));
        }
        let chars = req.name.chars().count();
        if chars > MAX_NAME_LEN {
            return Err(Error::InvalidSettings(format!(
                "the migration name must be at most {MAX_NAME_LEN} characters (got {chars})"
            )));
        }
        if req.name.chars().any(char::is_control) {
            return Err(Error::InvalidSettings(
                "the migration name contains a control character".into(),
            ));
        }
        let settings = req.settings().validate()?;
        let kind = self
            .registry
            .get(&req.job_kind)
            .ok_or_else(|| Error::UnknownJobKind(req.job_kind.clone()))?;
        kind.validate_arguments(&req.arguments)
            .map_err(|reason| Error::InvalidJob {
                kind: req.job_kind.clone(),
                reason,
            })?;
        let table = TableName::parse_input(&req.table)?;
        let (table, key) = self
            .target
            .key_resolve(&table, req.key.as_deref(), req.key_options())
            .await?;
        // Without --non-unique-key, key_resolve refused any key it could not prove unique.
        let key_unique = !req.non_unique_key;
        // A Citus distributed table runs in lanes, one per shard, each written on its shard's
        // own table: a kind whose statements name the table itself would fan out instead.
        let citus = self.target.citus_table(&table).await?;
        if let Some((CitusTable::Distributed, lanes)) = &citus {
            if req.job_kind == "sql" {
                return Err(Error::InvalidJob {
                    kind: req.job_kind.clone(),
                    reason: format!(
                        "{} is a Citus distributed table ({} shards): its statements name the                          table, so each would run on every shard; use --kind update or delete,                          which run shard by shard",
                        table.quoted(),
                        lanes.len()
                    ),
                });
            }
        }
        let bound = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| key.parse_bound(flag, t))
                .transpose()
        };
        let (min, max) = (
            bound("--min-value", &req.min_value)?,
            bound("--max-value", &req.max_value)?,
        );
        // Read as the target database reads them (its DateStyle, its TimeZone), kept and shown
        // as its canonical text: the walk compares them with the keys it reads.
        let min = match min {
            Some(k) => Some(self.target.key_canonical(&key, &k, "--min-value").await?),
            None => None,
        };
        let max = match max {
            Some(k) => Some(self.target.key_canonical(&key, &k, "--max-value").await?),
            None => None,
        };
        let scope = req
            .scope
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let verify = req
            .verify
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        if let Some(verify) = &verify {
            fragment::check_condition(self.target.backend(), "--verify", verify)
                .map_err(Error::InvalidSettings)?;
        }
        // The operator's SQL is read before any of it runs (the bounds below run the scope).
        self.check_sql(
            &req.job_kind,
            &req.arguments,
            &table,
            &key,
            scope.as_deref(),
        )?
        .map_err(|reason| Error::InvalidJob {
            kind: req.job_kind.clone(),
            reason,
        })?;
        let bounds = self
            .target
            .key_bounds(&table, &key, scope.as_deref())
            .await
            .map_err(|e| match (&scope, e) {
                (Some(scope), Error::Database { source, .. }) => Error::InvalidSettings(format!(
                    "--scope {scope:?} does not run on table {:?}: {source}",
                    table.table
                )),
                (_, e) => e,
            })?;
        let empty = bounds.is_none();
        let bounds_seen = bounds.clone();
        let (min_value, max_value) = match (min, max, bounds) {
            (Some(min), Some(max), _) => (min, max),
            (min, max, Some((lo, hi))) => (min.unwrap_or(lo), max.unwrap_or(hi)),
            // An empty table and no explicit range: nothing to do, finishes at once.
            (min, max, None) => {
                let v = min.or(max).unwrap_or_else(|| key.placeholder());
                (v.clone(), v)
            }
        };
        if let (Some(lo), Some(hi)) = (min_value.as_i64(), max_value.as_i64()) {
            if lo > hi {
                return Err(Error::InvalidSettings(format!(
                    "--min-value {lo} is greater than --max-value {hi}"
                )));
            }
        }
        let next_start = (!empty).then(|| Lower::From(min_value.clone()));
        // The verification runs once on the first key, read only: a typo fails here.
        if let (Some(verify), false) = (&verify, empty) {
            self.target
                .verify_range(
                    &table,
                    &key,
                    scope.as_deref(),
                    verify,
                    &min_value,
                    &min_value,
                    0,
                    millis(req.statement_timeout),
                )
                .await
                .map_err(|e| match e {
                    Error::Database { source, .. } => Error::InvalidSettings(format!(
                        "--verify {verify:?} does not run on table {:?}: {source}",
                        table.table
                    )),
                    e => e,
                })?;
        }
        let protections_off = self.check_health_settings(&table, &settings, None).await?;
        let migration = NewMigration {
            name: req.name.clone(),
            job_kind: req.job_kind.clone(),
            table_name: stored_table_name(&table, &req.table),
            target: self.target_identity.clone(),
            key,
            key_unique,
            scope: scope.clone(),
            job_arguments: req.arguments.clone(),
            min_value,
            max_value,
            next_start,
            batch_size: settings.batch_size,
            sub_batch_size: settings.sub_batch_size,
            max_batch_size: settings.max_batch_size,
            sub_batch_ceiling: settings.sub_batch_ceiling,
            pause_ms: settings.pause_ms,
            interval: settings.interval,
            statement_timeout_ms: millis(settings.statement_timeout),
            lock_timeout_ms: millis(settings.lock_timeout),
            status: if req.paused {
                MigrationStatus::Paused
            } else {
                MigrationStatus::Active
            },
            total_tuple_count: None,
            health: settings.health.clone(),
            target_sub_batch_ms: millis(settings.target_sub_batch_time),
            actor: req.actor.clone(),
            citus: citus.as_ref().map(|(kind, _)| *kind),
            lanes: citus.map(|(_, lanes)| lanes).unwrap_or_default(),
            definition: Some(req.canonical_definition()),
            after: Vec::new(),
            verify: verify.clone(),
        };
        let mut migration = migration;
        self.refuse_duplicate(&migration).await?;
        // The keys it walks and the rows it will change: those its kind's `where` matches
        // among them.
        let filter = req
            .arguments
            .get("where")
            .and_then(Value::as_str)
            .filter(|w| !w.trim().is_empty());
        let explicit = req.min_value.is_some() || req.max_value.is_some();
        let (keys, rows) = self
            .keys_and_rows(&migration, &table, filter, explicit, bounds_seen)
            .await?;
        migration.total_tuple_count = keys;
        let rows_to_change = rows.filter(|_| trials::rows_known(&req.job_kind));
        // What skipping NULL keys leaves alone, counted by a condition of the engine's.
        let null_key_rows = if migration.key.walk().skip_nulls {
            let nulls = crate::dialect::key_sql::null_key_condition(&migration.key);
            self.target.scope_estimate(&table, &nulls).await?
        } else {
            None
        };
        // A distributed table's values are in its shards, not on the coordinator: no estimate.
        let sharded = migration.citus == Some(CitusTable::Distributed);
        let distinct_keys = if migration.key.walk().distinct && !sharded {
            let scope = migration.scope.as_deref();
            self.target
                .distinct_estimate(&table, &migration.key, scope)
                .await?
        } else {
            None
        };
        let mut plan = Plan {
            trials: self.check_trials(&migration).await?,
            migration,
            rows_to_change,
            rows_per_key_value: 1.0,
            concurrency: 1,
            estimate: None,
            protections_off,
            after: req.after.clone(),
            null_key_rows,
            distinct_keys,
        };
        plan.reestimate();
        Ok(plan)
    }

    /// The keys `m` walks (its range and scope) and the rows of them `filter` (its kind's
    /// `where`) matches. The whole table: the table's estimate (or the scope's sampled
    /// count). An explicit range (`explicit`): counted under [`trials::READ_MS`]; when that
    /// takes longer, the whole table's figures times the range's share of the keys `bounds`
    /// span (a one-column integer key), else the whole table's.
    async fn keys_and_rows(
        &self,
        m: &NewMigration,
        table: &TableName,
        filter: Option<&str>,
        explicit: bool,
        bounds: Option<(Key, Key)>,
    ) -> Result<(Option<i64>, Option<i64>)> {
        let scope = m.scope.as_deref();
        let condition = match (filter, scope) {
            (None, _) => None,
            (Some(w), None) => Some(w.to_owned()),
            (Some(w), Some(s)) => Some(format!("({s}) AND ({w})")),
        };
        let distributed = matches!(m.citus, Some(CitusTable::Distributed));
        if explicit && !distributed && m.next_start.is_some() {
            let counted = self
                .target
                .verify_range(
                    table,
                    &m.key,
                    scope,
                    filter.unwrap_or("true"),
                    &m.min_value,
                    &m.max_value,
                    0,
                    trials::READ_MS,
                )
                .await;
            if let Ok(c) = counted {
                return Ok((Some(c.checked), Some(c.checked - c.violations)));
            }
        }
        let keys = match distributed {
            // The coordinator's own table is empty: the rows are in the shards.
            true => self.lanes_estimate(&m.lanes, scope).await?,
            false => match scope {
                Some(scope) => self.target.scope_estimate(table, scope).await?,
                None => self.target.row_estimate(table).await?,
            },
        };
        let rows = match (condition, distributed) {
            (None, _) => keys,
            (Some(c), true) => self.lanes_estimate(&m.lanes, Some(&c)).await?,
            (Some(c), false) => self.target.scope_estimate(table, &c).await?,
        };
        // The range's share of the keys, when they are integers spread over the bounds.
        let share = match (explicit, bounds, m.min_value.as_i64(), m.max_value.as_i64()) {
            (true, Some((lo, hi)), Some(min), Some(max)) if m.key.is_single_integer() => {
                match (lo.as_i64(), hi.as_i64()) {
                    (Some(lo), Some(hi)) if hi >= lo => {
                        let inside = (max.min(hi) - min.max(lo) + 1).max(0) as f64;
                        inside / (hi - lo + 1) as f64
                    }
                    _ => 1.0,
                }
            }
            _ => 1.0,
        };
        let scaled = |n: Option<i64>| n.map(|n| (n as f64 * share).round() as i64);
        Ok((scaled(keys), scaled(rows)))
    }

    /// The rows of a distributed table's shards (matching `scope`), each estimated on its
    /// node as a table's are.
    async fn lanes_estimate(&self, lanes: &[NewLane], scope: Option<&str>) -> Result<Option<i64>> {
        let mut total = 0;
        for lane in lanes {
            let node = self.node_target(&lane.node).await?;
            let shard = TableName::parse(&lane.relation)?;
            let rows = match scope {
                Some(scope) => node.scope_estimate(&shard, scope).await?,
                None => node.row_estimate(&shard).await?,
            };
            total += rows.unwrap_or(0);
        }
        Ok(Some(total))
    }

    /// The checks of health settings that need the target database, made by `queue` and
    /// `set` alike: the probe (when it is new: `previous` is the probe stored) runs once,
    /// read-only and rolled back, and must answer true or false (`select 1/0 = 1`, several
    /// statements, no row or a non-boolean are refused). Returns the protections that are
    /// off for these settings now ([`crate::health::protections_off`]).
    async fn check_health_settings(
        &self,
        table: &TableName,
        settings: &ValidSettings,
        previous: Option<&str>,
    ) -> Result<Vec<crate::health::Reading>> {
        let health = &settings.health;
        // Read by the parser before it runs: one query, nothing after it.
        if let Some(probe) = health.probe.as_deref().filter(|p| previous != Some(*p)) {
            fragment::check_probe(self.target.backend(), "--health-probe", probe)
                .map_err(Error::InvalidSettings)?;
        }
        let sample = self
            .target
            .health_sample(table, health.probe.as_deref())
            .await?;
        if let (Some(probe), Some(answer)) = (&health.probe, &sample.probe) {
            let reason = match answer {
                Ok(Some(_)) => None,
                // NULL would read `unknown`, which never holds: a check silently off.
                Ok(None) => {
                    Some("it returned NULL; it must answer true or false (coalesce it)".to_owned())
                }
                Err(reason) => Some(reason.clone()),
            };
            if let Some(reason) = reason.filter(|_| previous != Some(probe.as_str())) {
                return Err(Error::InvalidSettings(format!(
                    "--health-probe failed on a trial run: {reason}"
                )));
            }
        }
        let readings = crate::health::evaluate(&sample, health, None, None);
        Ok(crate::health::protections_off(&readings, health)
            .into_iter()
            .cloned()
            .collect())
    }

    /// Refuses a migration whose name, or whose definition (kind, table, key, arguments,
    /// scope), a live one already has, naming that one. A finished or cancelled migration's
    /// name and definition may be queued again.
    async fn refuse_duplicate(&self, new: &NewMigration) -> Result<()> {
        let live: Vec<Migration> = self
            .store
            .migration_list()
            .await?
            .into_iter()
            .filter(|m| {
                !matches!(
                    m.status,
                    MigrationStatus::Finished | MigrationStatus::Cancelled
                )
            })
            .collect();
        let describe = |m: &Migration| format!("migration {} ({:?}, {})", m.id, m.name, m.status);
        if let Some(m) = live.iter().find(|m| m.name == new.name) {
            return Err(Error::DuplicateMigration(format!(
                "a migration named {:?} is already queued: {}; a finished or cancelled one's name may be used again",
                new.name,
                describe(m)
            )));
        }
        // The same definition on another database is another migration; one of unknown target
        // (queued before schema v5) may be on this one, and counts as a duplicate.
        let same = |m: &&Migration| {
            m.job_kind == new.job_kind
                && m.table_name == new.table_name
                && m.key == new.key
                && m.job_arguments == new.job_arguments
                && m.scope == new.scope
                && m.target.as_ref().is_none_or(|t| t.id == new.target.id)
        };
        if let Some(m) = live.iter().find(same) {
            let target = match &m.target {
                Some(t) => format!("on the same target ({})", t.display),
                None => "on an unknown target, queued before schema v5: `sluicegate adopt` it"
                    .to_owned(),
            };
            return Err(Error::DuplicateMigration(format!(
                "{:?} would do what {} already does (same kind, table, key, arguments and scope) {target}; cancel it first, or change it with `sluicegate set`",
                new.name,
                describe(m)
            )));
        }
        Ok(())
    }

    /// Validates and queues a migration. Nothing is written when anything is wrong.
    pub async fn queue(&self, req: &QueueRequest) -> Result<Migration> {
        let plan = self.plan(req).await?;
        self.queue_plan(&plan).await
    }

    /// Queues what [`Self::plan`] validated (checking again that no live migration has its
    /// name or definition: another may have been queued since).
    pub async fn queue_plan(&self, plan: &Plan) -> Result<Migration> {
        self.recheck(&plan.migration)?;
        self.refuse_duplicate(&plan.migration).await?;
        let mut new = plan.migration.clone();
        new.after = self.resolve_after(&new.name, &plan.after).await?;
        match self.store.migration_insert(&new).await {
            // Queued by someone else between the check and the insert: name it.
            Err(Error::DuplicateMigration(_)) => {
                self.refuse_duplicate(&plan.migration).await?;
                Err(Error::DuplicateMigration(format!(
                    "{:?} was queued concurrently by someone else",
                    plan.migration.name
                )))
            }
            other => other,
        }
    }

    /// A plan's fields are public: what [`Self::plan`] checked is checked again before it is
    /// stored (settings, the SQL it runs, its target), so that nothing reaches the tracking
    /// tables that `plan` would have refused.
    fn recheck(&self, m: &NewMigration) -> Result<()> {
        if m.target.id != self.target_identity.id {
            return Err(Error::InvalidSettings(format!(
                "the plan of {:?} is for {}, but this Sluicegate is connected to {}",
                m.name, m.target.display, self.target_identity.display
            )));
        }
        Settings {
            batch_size: m.batch_size,
            sub_batch_size: m.sub_batch_size,
            sub_batch_ceiling: m.sub_batch_ceiling,
            max_batch_size: m.max_batch_size,
            pause_ms: m.pause_ms,
            interval: m.interval,
            statement_timeout: Duration::from_millis(m.statement_timeout_ms.max(0) as u64),
            lock_timeout: Duration::from_millis(m.lock_timeout_ms.max(0) as u64),
            target_sub_batch_time: Duration::from_millis(m.target_sub_batch_ms.max(0) as u64),
            health: m.health.clone(),
        }
        .validate()?;
        let backend = self.target.backend();
        if let Some(verify) = &m.verify {
            fragment::check_condition(backend, "--verify", verify)
                .map_err(Error::InvalidSettings)?;
        }
        if let Some(probe) = &m.health.probe {
            fragment::check_probe(backend, "--health-probe", probe)
                .map_err(Error::InvalidSettings)?;
        }
        let table = TableName::parse(&m.table_name)?;
        self.check_sql(
            &m.job_kind,
            &m.job_arguments,
            &table,
            &m.key,
            m.scope.as_deref(),
        )?
        .map_err(|reason| Error::InvalidJob {
            kind: m.job_kind.clone(),
            reason,
        })
    }

    /// Changes the settings of an active or paused migration (`sluicegate set`): workers take
    /// them up at their next job. The change is a `set` row in the migration's log: who, and
    /// each value old -> new, with the operator's reason. An explicit sub-batch size also
    /// becomes the tuner's ceiling. Nothing is written when a value is invalid or nothing
    /// changes.
    pub async fn set(
        &self,
        m: &Migration,
        change: &SettingsChange,
        reason: Option<String>,
        actor: &str,
    ) -> Result<Migration> {
        if let Some(why) = &m.unreadable {
            return Err(Error::InvalidSettings(format!(
                "migration {} ({}) cannot be changed: its stored row is unreadable ({why}); cancel it and queue it again",
                m.id, m.name
            )));
        }
        check_reason(reason.as_deref())?;
        // The migration's settings with the change applied, checked as a queue request's are.
        let batch_size = change.batch_size.unwrap_or(m.batch_size);
        let merged = Settings {
            batch_size,
            sub_batch_size: change
                .sub_batch_size
                .unwrap_or(m.sub_batch_size.min(batch_size)),
            sub_batch_ceiling: change.sub_batch_size.or(m.sub_batch_ceiling),
            max_batch_size: change.max_batch_size.or(m.max_batch_size),
            pause_ms: change.pause_ms.unwrap_or(m.pause_ms),
            interval: change.interval.unwrap_or(m.interval),
            statement_timeout: change
                .statement_timeout
                .unwrap_or(Duration::from_millis(m.statement_timeout_ms.max(1) as u64)),
            lock_timeout: change
                .lock_timeout
                .unwrap_or(Duration::from_millis(m.lock_timeout_ms.max(1) as u64)),
            target_sub_batch_time: Duration::from_millis(m.target_sub_batch_ms.max(0) as u64),
            health: change.health.clone().unwrap_or_else(|| m.health.clone()),
        }
        .validate()?;
        if change.health.is_some() {
            // A new probe is tried where it will run: on the migration's own target.
            self.check_target(m)?;
            let table = TableName::parse(&m.table_name)?;
            self.check_health_settings(&table, &merged, m.health.probe.as_deref())
                .await?;
        }
        let mut diff = Vec::new();
        let mut note = |what: &str, old: String, new: String| {
            if old != new {
                diff.push(format!("{what} {old} -> {new}"));
            }
        };
        note(
            "batch_size",
            m.batch_size.to_string(),
            merged.batch_size.to_string(),
        );
        if let Some(sub) = change.sub_batch_size {
            note(
                "sub_batch_size",
                m.sub_batch_size.to_string(),
                sub.to_string(),
            );
            note(
                "sub_batch_ceiling",
                m.sub_batch_ceiling.map_or("none".into(), |c| c.to_string()),
                sub.to_string(),
            );
        }
        let opt = |v: Option<i64>| v.map_or("none".into(), |v| v.to_string());
        note(
            "max_batch_size",
            opt(m.max_batch_size),
            opt(merged.max_batch_size),
        );
        note(
            "pause_ms",
            m.pause_ms.to_string(),
            merged.pause_ms.to_string(),
        );
        note(
            "interval",
            humantime::format_duration(m.interval).to_string(),
            humantime::format_duration(merged.interval).to_string(),
        );
        let ms = |v: i64| humantime::format_duration(Duration::from_millis(v.max(0) as u64));
        note(
            "statement_timeout",
            ms(m.statement_timeout_ms).to_string(),
            humantime::format_duration(merged.statement_timeout).to_string(),
        );
        note(
            "lock_timeout",
            ms(m.lock_timeout_ms).to_string(),
            humantime::format_duration(merged.lock_timeout).to_string(),
        );
        if let Some(health) = &change.health {
            for (what, old, new) in m.health.differences(health) {
                note(&what, old, new);
            }
        }
        if diff.is_empty() {
            return Err(Error::InvalidSettings(format!(
                "nothing to change: migration {} already has these settings",
                m.name
            )));
        }
        let mut text = diff.join("; ");
        if let Some(reason) = reason.filter(|r| !r.trim().is_empty()) {
            text.push_str(&format!(" ({reason})"));
        }
        let params = MigrationSetParams {
            migration_id: m.id,
            batch_size: change.batch_size,
            sub_batch_size: change.sub_batch_size,
            max_batch_size: change.max_batch_size,
            pause_ms: change.pause_ms,
            interval_ms: change.interval.map(millis),
            health: change.health.clone(),
            statement_timeout_ms: change.statement_timeout.map(millis),
            lock_timeout_ms: change.lock_timeout.map(millis),
            reason: text,
            actor: actor.to_owned(),
        };
        match self.store.migration_set(&params).await? {
            Some(updated) => Ok(updated),
            None => {
                let now = self.store.migration_get(m.id).await?.unwrap_or(m.clone());
                Err(Error::IllegalMigrationTransition {
                    migration: m.name.clone(),
                    event: MigrationEvent::Set.as_str().to_owned(),
                    from: now.status,
                })
            }
        }
    }

    /// A migration by id (digits) or name.
    pub async fn migration(&self, id_or_name: &str) -> Result<Migration> {
        let by_id = match id_or_name.parse::<i64>() {
            Ok(id) => self.store.migration_get(id).await?,
            Err(_) => None,
        };
        match by_id {
            Some(m) => Ok(m),
            None => self
                .store
                .migration_get_by_name(id_or_name)
                .await?
                .ok_or_else(|| Error::MigrationNotFound(id_or_name.to_owned())),
        }
    }

    /// Every migration, oldest first.
    pub async fn migrations(&self) -> Result<Vec<Migration>> {
        self.store.migration_list().await
    }

    /// Applies `event` to a migration through the state machine, with its log row.
    ///
    /// # Transactions and locks
    /// One transaction: the status update only matches the status read just before, so a
    /// concurrent change makes this fail with [`Error::Conflict`] instead of overwriting it.
    pub async fn transition(
        &self,
        migration: &Migration,
        event: MigrationEvent,
        reason: Option<String>,
        actor: &str,
    ) -> Result<Migration> {
        check_reason(reason.as_deref())?;
        let params = MigrationTransitionParams::new(migration, event, actor)?.with_reason(reason);
        let to = params.to();
        let result = if event == MigrationEvent::Retry {
            self.store.migration_retry(&params).await
        } else {
            self.store.migration_transition(&params).await
        };
        let changed = result?;
        if to.is_finished() || to == MigrationStatus::Paused {
            self.store.table_lease_release(migration.id).await?;
        }
        Ok(changed)
    }

    /// Looks a migration up by id or name and applies `event` to it (see [`Self::transition`]).
    pub async fn apply(
        &self,
        id_or_name: &str,
        event: MigrationEvent,
        reason: Option<String>,
        actor: &str,
    ) -> Result<Migration> {
        let m = self.migration(id_or_name).await?;
        self.transition(&m, event, reason, actor).await
    }

    /// Pauses an active migration: its workers finish their current job and take no more.
    pub async fn pause(
        &self,
        id_or_name: &str,
        reason: Option<String>,
        actor: &str,
    ) -> Result<Migration> {
        self.apply(id_or_name, MigrationEvent::Pause, reason, actor)
            .await
    }

    /// Resumes a paused migration.
    pub async fn resume(
        &self,
        id_or_name: &str,
        reason: Option<String>,
        actor: &str,
    ) -> Result<Migration> {
        self.apply(id_or_name, MigrationEvent::Resume, reason, actor)
            .await
    }

    /// Retries a failed migration: it becomes active and its failed jobs pending again.
    pub async fn retry(
        &self,
        id_or_name: &str,
        reason: Option<String>,
        actor: &str,
    ) -> Result<Migration> {
        self.apply(id_or_name, MigrationEvent::Retry, reason, actor)
            .await
    }

    /// Cancels a migration for good.
    pub async fn cancel(
        &self,
        id_or_name: &str,
        reason: Option<String>,
        actor: &str,
    ) -> Result<Migration> {
        self.apply(id_or_name, MigrationEvent::Cancel, reason, actor)
            .await
    }

    /// A job by id.
    pub async fn job(&self, id: i64) -> Result<Job> {
        self.store.job_get(id).await?.ok_or(Error::JobNotFound(id))
    }

    /// Jobs of a migration, optionally of one status.
    pub async fn jobs(&self, migration: &Migration, status: Option<JobStatus>) -> Result<Vec<Job>> {
        self.store.job_list(migration.id, status).await
    }

    /// One job's transition log, oldest first.
    pub async fn job_history(&self, job_id: i64) -> Result<Vec<JobTransition>> {
        self.job(job_id).await?;
        self.store.job_transition_list(job_id).await
    }

    /// A migration's own transition log, oldest first.
    pub async fn migration_history(
        &self,
        migration: &Migration,
    ) -> Result<Vec<MigrationTransition>> {
        self.store.migration_transition_list(migration.id).await
    }

    /// Progress of a migration: rows done, rate, ETA.
    pub async fn progress(&self, migration: &Migration) -> Result<Progress> {
        let jobs = self.store.job_counts(migration.id, MAX_ATTEMPTS).await?;
        // A window by count: jobs grow to about a second each at full speed, so 20 jobs are
        // some 20 s of running work, enough that one slow job does not swing the rate and
        // short enough that a `set --batch-size` shows within 20 jobs. A window by time would
        // need every job of a long pause-free stretch read; by count it is one bounded read
        // (the rate's time is the jobs' own, so a window that spans pauses is no harm).
        let recent = self
            .store
            .job_recent_succeeded(migration.id, RECENT_JOBS)
            .await?;
        let mut progress = compute_progress(migration.clone(), jobs, &recent);
        // A hold lasts from its `hold` row to its `release` row, re-checks between included.
        if migration.held_since.is_some() {
            progress.hold_reason = self
                .migration_history(migration)
                .await?
                .into_iter()
                .rev()
                .find(|r| r.event == MigrationEvent::Hold)
                .and_then(|r| r.reason);
        }
        Ok(progress)
    }

    /// Changes one job's status through the state machine, with its log row. Operators act
    /// on migrations; this is for tools and tests that must move a single job.
    pub async fn job_transition(
        &self,
        job: &Job,
        to: JobStatus,
        failure: Option<crate::Failure>,
        actor: &str,
    ) -> Result<Job> {
        let params = JobTransitionParams::new(job, to, actor)?.with_failure(failure);
        self.store.job_transition(&params).await
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What goes in `migrations.table_name`: the canonical `schema.table` when it reads back
/// unambiguously, else the name as the user gave it.
fn stored_table_name(canonical: &TableName, given: &str) -> String {
    match &canonical.schema {
        Some(schema) if !schema.contains('.') && !canonical.table.contains('.') => {
            format!("{schema}.{}", canonical.table)
        }
        Some(_) => given.to_owned(),
        None => canonical.table.clone(),
    }
}

pub use crate::model::{MAX_PACING, MAX_TIMEOUT};

/// The longest migration name, in characters.
pub const MAX_NAME_LEN: usize = 200;

/// The share of the migration's keys its finished jobs walked. A one-column integer key is
/// counted by subtraction (keys handed out over the range, times the share of jobs done); any
/// other key by the keys its succeeded jobs walked over the table's estimated rows, never
/// above 99% before the end (the estimate is an estimate).
fn key_share_done(migration: &Migration, jobs: &JobCounts) -> f64 {
    // Lanes each walk the whole key range over their own shard: the keys done are the share.
    let one_range = migration.citus != Some(CitusTable::Distributed);
    if let (true, Some(min), Some(max)) = (
        one_range,
        migration.min_value.as_i64(),
        migration.max_value.as_i64(),
    ) {
        let span = (max as i128 - min as i128 + 1).max(1) as f64;
        let handed_out = match &migration.next_start {
            None => span,
            Some(next) => match next
                .inclusive_start(&migration.key)
                .and_then(|k| k.as_i64())
            {
                Some(next) => (next as i128 - min as i128) as f64,
                None => span,
            },
        };
        let open = (jobs.pending + jobs.running + jobs.failed) as f64;
        let total_jobs = jobs.total() as f64;
        let done_share = if total_jobs > 0.0 {
            (total_jobs - open) / total_jobs
        } else {
            0.0
        };
        return (handed_out / span * done_share).clamp(0.0, 1.0);
    }
    match migration.total_tuple_count.filter(|n| *n > 0) {
        Some(total) => (jobs.keys_done as f64 / total as f64).clamp(0.0, 0.99),
        None => 0.0,
    }
}

/// Progress arithmetic, apart from I/O so it can be tested. `recent` are the migration's
/// newest succeeded jobs, whose [`Pace`] gives the rate (a finished migration's too: the
/// pace of its last work, not its wall-clock time) and the time left.
pub fn compute_progress(migration: Migration, jobs: JobCounts, recent: &[Job]) -> Progress {
    let rows_done = jobs.rows_affected;
    let percent = match migration.status {
        MigrationStatus::Finished => 100.0,
        _ => key_share_done(&migration, &jobs) * 100.0,
    };
    let pace = recent_pace(recent, migration.interval);
    let running = matches!(
        migration.status,
        MigrationStatus::Active | MigrationStatus::Finalizing
    ) && migration.held_since.is_none();
    // In keys, as the share done is: rows changed would mix units (a `where` changes fewer
    // rows than the keys walked). Nothing is promised while it does not run.
    let eta_seconds = match (migration.status, pace, migration.total_tuple_count) {
        (MigrationStatus::Finished, _, _) => Some(0.0),
        (_, Some(pace), Some(total)) if running && pace.keys_per_second > 0.0 => {
            let left = total as f64 * (1.0 - percent / 100.0);
            Some(left.max(0.0) / pace.keys_per_second)
        }
        _ => None,
    };
    Progress {
        rows_total: migration.total_tuple_count,
        migration,
        jobs,
        rows_done,
        percent,
        rows_per_second: pace.map(|p| p.rows_per_second),
        eta_seconds,
        pace,
        hold_reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::display_url;

    #[test]
    fn a_target_is_shown_without_secrets() {
        assert_eq!(
            display_url("postgres://app:s3cret@db.internal:5432/shop?sslmode=require&password=x"),
            "postgres://app@db.internal:5432/shop"
        );
        assert_eq!(
            display_url("postgresql://app@db/shop"),
            "postgresql://app@db/shop"
        );
        assert_eq!(
            display_url("sqlite://data/app.db?mode=rwc"),
            "sqlite://data/app.db"
        );
        assert_eq!(display_url("sqlite:app.db"), "sqlite:app.db");
        // A password holding '@' or ':' is dropped whole.
        assert_eq!(
            display_url("postgres://app:p@ss:w@rd@db/shop"),
            "postgres://app@db/shop"
        );
    }
}
