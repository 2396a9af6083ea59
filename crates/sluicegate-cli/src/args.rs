//! Command-line arguments, as clap parses them.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sluicegate::model::defaults;

/// Runs large data migrations on big tables in small batches, in the background, and records
/// every state change of every job.
#[derive(Debug, Parser)]
#[command(name = "sluicegate", version, about, max_term_width = 100)]
pub struct Cli {
    /// Tracking database: postgres://... or sqlite:...
    // `hide_env_values`: help shows `[env: DATABASE_URL]`, never its value (a password).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://sluicegate.db",
        global = true,
        hide_env_values = true
    )]
    pub database_url: String,

    /// Target database holding the table to migrate, when not the tracking database.
    #[arg(
        long,
        env = "SLUICEGATE_TARGET_URL",
        global = true,
        hide_env_values = true
    )]
    pub target_url: Option<String>,

    /// Schema of the tracking tables (PostgreSQL).
    #[arg(long, default_value = "sluicegate", global = true)]
    pub schema: String,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether the command prints JSON (then logs are JSON too).
    pub fn wants_json(&self) -> bool {
        match &self.command {
            Command::Queue(a) => a.json,
            Command::Apply(a) => a.json,
            Command::Run(a) => a.json,
            Command::Status(a) => a.json,
            Command::Show(a) | Command::Finalize(a) | Command::Health(a) | Command::Verify(a) => {
                a.json
            }
            Command::Jobs(a) => a.json,
            Command::History(a) => a.json,
            Command::Demo(a) => a.json,
            Command::Set(a) => a.json,
            Command::Ensure(a) => a.json,
            _ => false,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install or upgrade the tracking schema (idempotent).
    Setup,
    /// Validate and queue a migration.
    Queue(Box<QueueArgs>),
    /// Queue the definitions (one TOML file per migration) of a directory that are not
    /// queued yet, in file-name order; the same definition already queued is left as it is.
    Apply(ApplyArgs),
    /// Run workers: claim due migrations and run their jobs.
    Run(RunArgs),
    /// Every migration with its progress (or those in the statuses given).
    Status(StatusArgs),
    /// One migration: settings, progress, batch sizes, failed jobs.
    Show(MigrationArgs),
    /// Jobs of a migration.
    Jobs(JobsArgs),
    /// Transition log of a migration, or of one job with --job.
    History(HistoryArgs),
    /// Every health indicator's signal and reading for a migration, now.
    Health(MigrationArgs),
    /// Pause an active migration.
    Pause(ReasonArgs),
    /// Resume a paused migration.
    Resume(ReasonArgs),
    /// Retry a failed migration: its failed jobs run again.
    Retry(ReasonArgs),
    /// Cancel a migration for good.
    Cancel(ReasonArgs),
    /// Change an active or paused migration's settings; workers take them up at their next
    /// job, and the change (old -> new) is a row in its log.
    Set(Box<SetArgs>),
    /// Run a migration's remaining jobs now, inline, until it is finished.
    Finalize(MigrationArgs),
    /// Check a migration's --verify condition over its range now (read only): rows checked,
    /// violations and up to 10 of their keys; exit 4 when a row violates it.
    Verify(MigrationArgs),
    /// Deploy gate: exit 0 when every migration named is finished; 3 when one still runs, 4
    /// when one failed or was cancelled, 5 when one is not queued (the worst wins), each
    /// said in one line. With --finalize, run what is left of each inline first.
    Ensure(EnsureArgs),
    /// Give a migration queued before schema v5 (its target unknown) the target this command
    /// is connected to (--target-url, or the tracking database), so that its workers run it.
    Adopt(ReasonArgs),
    /// Live dashboard, JSON API and Prometheus /metrics over HTTP.
    Serve(ServeArgs),
    /// Run a real backfill end to end on a fresh SQLite file.
    Demo(DemoArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// UPDATE t SET <--set> [WHERE <--where>]
    Update,
    /// DELETE FROM t [WHERE <--where>]
    Delete,
    /// UPDATE t SET <--to> = <--from>
    CopyColumn,
    /// Your statement, with $1 and $2 bound to each sub-batch's first and last key.
    Sql,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::CopyColumn => "copy-column",
            Kind::Sql => "sql",
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 2m)"))
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Unique name of the migration.
    pub name: String,
    /// Table to migrate (table or schema.table).
    #[arg(long)]
    pub table: String,
    /// The key the batches walk, its columns in order, comma-separated (`--key id` or
    /// `--key tenant_id,id`) [default: the table's primary key]. It must be unique and NOT
    /// NULL; integer, uuid, text/varchar, numeric, date and timestamp columns (SQLite: INTEGER
    /// and TEXT).
    #[arg(long, value_delimiter = ',', conflicts_with = "column")]
    pub key: Option<Vec<String>>,
    /// A one-column key (the same as `--key COLUMN`, for a name that contains a comma).
    #[arg(long)]
    pub column: Option<String>,
    /// Walk a key no primary key or unique index covers (GitLab's loose index scan): every row
    /// of one key value falls in one sub-batch, which cannot be split.
    #[arg(long)]
    pub non_unique_key: bool,
    /// Walk a key column that may be NULL: the rows where it is NULL are never visited (said
    /// at queue with their estimated count; GitLab's batching of a nullable column).
    #[arg(long)]
    pub skip_null_keys: bool,
    /// A batch and a sub-batch span that many distinct values of the key, not rows (GitLab's
    /// `distinct_each_batch`); needs --non-unique-key.
    #[arg(long)]
    pub distinct: bool,
    /// What each sub-batch does.
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// SET clause (update).
    #[arg(long = "set")]
    pub set_clause: Option<String>,
    /// Extra condition (update, delete), in the statement only: the batches still span
    /// every key. For a sparse cleanup use --scope.
    #[arg(long = "where")]
    pub where_clause: Option<String>,
    /// The rows this migration is about (a condition on the table, any kind): the walk counts
    /// only rows that match, so each job spans --batch-size matching keys (GitLab's scope_to),
    /// and every sub-batch touches only them.
    #[arg(long)]
    pub scope: Option<String>,
    /// Source column(s), comma-separated (copy-column); or the table to join (update, with
    /// --join): `UPDATE t SET ... FROM <table> WHERE <join> AND <the sub-batch's keys>`.
    #[arg(long)]
    pub from: Option<String>,
    /// Destination column(s), comma-separated, as many as --from (copy-column).
    #[arg(long)]
    pub to: Option<String>,
    /// The join condition with the --from table (update).
    #[arg(long)]
    pub join: Option<String>,
    /// Statement(s), separated by `;`, run in order in each sub-batch's transaction (sql):
    /// `{range}` stands for the sub-batch's keys (any key), or use $1 and $2 (its first and
    /// last key, one-column keys). The rows counted are the last statement's.
    #[arg(long)]
    pub sql: Option<String>,
    /// Keys per job to start from [default: 1000, or --sub-batch-size when larger]; at full
    /// speed the optimizer grows it toward jobs of about a second (--max-batch-size caps that).
    #[arg(long, allow_negative_numbers = true)]
    pub batch_size: Option<i64>,
    /// Keys per sub-batch (one transaction) to start from [default: 100, tuned from there];
    /// given, it is also a ceiling the tuner never exceeds.
    #[arg(long, allow_negative_numbers = true)]
    pub sub_batch_size: Option<i64>,
    /// Ceiling for the batch-size optimizer.
    #[arg(long, allow_negative_numbers = true)]
    pub max_batch_size: Option<i64>,
    /// Pause between sub-batches, in milliseconds (0: none; the health indicators still slow
    /// down or hold a migration when the database needs it).
    #[arg(long, default_value_t = defaults::PAUSE_MS, allow_negative_numbers = true)]
    pub pause_ms: i64,
    /// Minimum time between job starts (0s: full speed).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub interval: Duration,
    /// First key (default: the key's minimum now): a value (`42`, a uuid, `2024-01-01`), or a
    /// JSON array with one value per column for a composite key (`'[5, 0]'`).
    #[arg(long, alias = "min", allow_hyphen_values = true)]
    pub min_value: Option<String>,
    /// Last key (default: the key's maximum now), written as `--min-value`.
    #[arg(long, alias = "max", allow_hyphen_values = true)]
    pub max_value: Option<String>,
    /// statement_timeout of each sub-batch (PostgreSQL).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub statement_timeout: Duration,
    /// lock_timeout of each sub-batch (PostgreSQL).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    #[command(flatten)]
    pub health: HealthArgs,
    /// Tune sub-batch sizes so each transaction takes about this long; 0s keeps them fixed.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub target_sub_batch_time: Duration,
    /// Run after these migrations (names, comma-separated): no worker claims it until each
    /// has finished. Each must be queued already; a cycle or an unknown name is refused.
    #[arg(long, value_delimiter = ',')]
    pub after: Vec<String>,
    /// A condition (read like --where) every row of the range (and scope) must meet after the
    /// last job: checked then in batches, logged as a `verify` row; a violation fails the
    /// migration (class VerificationFailed) instead of finishing it.
    #[arg(long)]
    pub verify: Option<String>,
    /// Queue it paused.
    #[arg(long)]
    pub paused: bool,
    /// Validate and print the plan; write nothing. Its trial sub-batches (all rolled back)
    /// are sampled across the key range, warm and repeated, for the estimate.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: the loops that will run it (`run --concurrency`, summed over
    /// workers), for the estimate. A plain table runs one job at a time whatever the loops;
    /// a Citus distributed table runs up to one per lane at once.
    #[arg(long, requires = "dry_run", default_value_t = 1)]
    pub concurrency: i64,
    /// Do nothing (exit 0) when a migration of this name was queued from this very
    /// definition; refuse when it was queued from another one and is not finished.
    #[arg(long)]
    pub if_not_exists: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EnsureArgs {
    /// Migrations (ids or names) the deploy depends on.
    #[arg(required = true)]
    pub migrations: Vec<String>,
    /// Run what is left of each inline, as `finalize` does (a failed one is retried first,
    /// its failed jobs with fresh attempts); fail loudly when one cannot finish.
    #[arg(long)]
    pub finalize: bool,
    /// Wait up to this long: for workers to finish them, or, with --finalize, for the
    /// finalize (then stopped at a sub-batch boundary; any worker finishes it).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print JSON: one object per migration.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Directory of definitions: one `NAME.toml` per migration, with the settings of `queue`.
    pub dir: std::path::PathBuf,
    /// Print what each definition would do (the plan of those to queue); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON: one object per definition.
    #[arg(long)]
    pub json: bool,
}

/// The health flags, shared by `queue` and `set`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Hold when any replica is more than this many bytes of WAL behind in replay [default: 1 GiB].
    #[arg(long, allow_negative_numbers = true)]
    pub max_replica_lag_bytes: Option<i64>,
    /// Hold when any replica replays later than this [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    pub max_replica_lag: Option<Duration>,
    /// Hold when more WAL segments than this wait for the archiver [default: 42, GitLab's].
    #[arg(long, allow_negative_numbers = true)]
    pub max_wal_archive_backlog: Option<i64>,
    /// Hold when WAL is written faster than this many bytes per second [default: no limit].
    #[arg(long, allow_negative_numbers = true)]
    pub max_wal_rate: Option<i64>,
    /// Hold while another session's transaction (idle in transaction included) is older [default: 10m].
    #[arg(long, value_parser = parse_duration)]
    pub max_transaction_age: Option<Duration>,
    /// Your own check, run before each job: a query returning one boolean; false holds.
    #[arg(long)]
    pub health_probe: Option<String>,
    /// How long a health stop waits before health is re-checked; the hold lasts while the
    /// stop does [default: 5s] (GitLab holds 10m at once).
    #[arg(long, value_parser = parse_duration)]
    pub hold: Option<Duration>,
    /// Hold when sub-batches take this many times their running median per key [default: 5].
    #[arg(long)]
    pub max_latency_drift: Option<f64>,
    /// Which autovacuum of the table holds the migration: wraparound (only one to prevent
    /// wraparound), any (GitLab's rule) or ignore [default: wraparound].
    #[arg(long, value_parser = parse_autovacuum)]
    pub autovacuum: Option<sluicegate::health::AutovacuumPolicy>,
    /// Health indicators to switch off for this migration (read and shown, never holding),
    /// comma-separated: autovacuum, wal_archive_backlog, wal_rate, replica_lag,
    /// long_transactions, lock_waits, probe, sub_batch_latency.
    #[arg(long, value_delimiter = ',', value_parser = parse_indicator)]
    pub health_off: Vec<sluicegate::health::Indicator>,
    /// Hold while any health indicator not switched off cannot be read (a missing grant, a
    /// failing probe), not only when one says stop; `--require-health=false` turns it off.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub require_health: Option<bool>,
}

/// `set`: what to change; a flag not given keeps its value.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Migration id or name.
    pub migration: String,
    /// Keys per job.
    #[arg(long, allow_negative_numbers = true)]
    pub batch_size: Option<i64>,
    /// Keys per sub-batch; also the ceiling the tuner never exceeds from then on.
    #[arg(long, allow_negative_numbers = true)]
    pub sub_batch_size: Option<i64>,
    /// Ceiling for the batch-size optimizer.
    #[arg(long, allow_negative_numbers = true)]
    pub max_batch_size: Option<i64>,
    /// Pause between sub-batches, in milliseconds.
    #[arg(long, allow_negative_numbers = true)]
    pub pause_ms: Option<i64>,
    /// Minimum time between job starts (0s: full speed).
    #[arg(long, value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// statement_timeout of each sub-batch from its next job on (PostgreSQL): a job that
    /// keeps timing out gets a way out.
    #[arg(long, value_parser = parse_duration)]
    pub statement_timeout: Option<Duration>,
    /// lock_timeout of each sub-batch from its next job on (PostgreSQL).
    #[arg(long, value_parser = parse_duration)]
    pub lock_timeout: Option<Duration>,
    #[command(flatten)]
    pub health: HealthArgs,
    /// Why: written to the migration's transition log with the change.
    #[arg(long)]
    pub reason: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run one step (at most one job per worker loop) and exit.
    #[arg(long, conflicts_with = "until_idle")]
    pub once: bool,
    /// Exit when no active migration is left to work on.
    #[arg(long)]
    pub until_idle: bool,
    /// Jobs run at once by this process.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Worker name in leases and logs (default: host:pid).
    #[arg(long)]
    pub worker: Option<String>,
    /// How long a job stays this worker's without renewal.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Work on these migrations only (ids or names; repeat or comma-separate): other
    /// migrations are left to other workers, and `--until-idle` ends once these are done.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub only: Vec<String>,
    /// One JSON line per job instead of progress bars.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only migrations in these statuses, comma-separated: active, paused, finalizing,
    /// finished, failed, cancelled.
    #[arg(long, value_delimiter = ',')]
    pub status: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MigrationArgs {
    /// Migration id or name.
    pub migration: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Migration id or name.
    pub migration: String,
    /// Only jobs in this status (pending, running, failed, succeeded).
    #[arg(long)]
    pub status: Option<String>,
    /// Only the newest N jobs (newest first); the total is printed with them.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Migration id or name.
    pub migration: String,
    /// One job's transitions instead of the migration's.
    #[arg(long)]
    pub job: Option<i64>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReasonArgs {
    /// Migration id or name.
    pub migration: String,
    /// Why: written to the migration's transition log.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. A non-loopback one needs --token-file (reads then need the
    /// token too) or --public-reads.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// File holding the bearer token (at least 32 characters; the file readable by its owner
    /// only): mutations need it, and on a non-loopback address reads too.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// On a non-loopback address, serve reads (pages, API, /metrics: SQL, probes, errors)
    /// to anyone, without the token.
    #[arg(long)]
    pub public_reads: bool,
    /// A host name the dashboard is reached by (the Host header), besides loopback names and
    /// the listen address; repeat or comma-separate. Other names are answered 421.
    #[arg(long, value_delimiter = ',')]
    pub allowed_host: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Rows in the demo table.
    #[arg(long, default_value_t = 200_000)]
    pub rows: i64,
    /// SQLite file to (re)create.
    #[arg(long, default_value = "sluicegate-demo.db")]
    pub file: std::path::PathBuf,
    /// JSON lines instead of tables and progress bars.
    #[arg(long)]
    pub json: bool,
}

fn parse_autovacuum(s: &str) -> Result<sluicegate::health::AutovacuumPolicy, String> {
    s.parse()
}

fn parse_indicator(s: &str) -> Result<sluicegate::health::Indicator, String> {
    s.trim().parse()
}
