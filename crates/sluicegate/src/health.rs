//! Health indicators: whether the database can take more of this migration now (DESIGN §8).
//!
//! A worker takes a [`HealthSample`] from the target database before every job (one query on
//! PostgreSQL, plus the user's probe when there is one), adds what only it knows (WAL rate
//! between its samples, its own sub-batch latencies), and [`evaluate`]s the lot against the
//! migration's [`HealthSettings`]. Any `stop` puts the migration on hold; `unknown` is
//! logged and does not hold. Evaluation is pure, so thresholds are unit-tested without a
//! server; the samples are tested against real catalog state in `tests/health.rs`.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

mod latency;
mod slow_down;

pub use latency::LatencyTracker;
pub use slow_down::SlowDown;

/// Per-migration thresholds, stored as JSON in `migrations.health_settings`. Fields missing
/// from the stored JSON take their defaults, so older rows read as the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthSettings {
    /// Replay lag of any replica, in bytes of WAL, above which to hold (default 1 GiB).
    pub max_replica_lag_bytes: i64,
    /// Replay lag of any replica, in milliseconds, above which to hold (default 30 s).
    pub max_replica_lag_ms: i64,
    /// WAL segments waiting for the archiver above which to hold (GitLab: 42).
    pub max_wal_archive_backlog: i64,
    /// WAL written per second (bytes) above which to hold; `None`: reported, never holds.
    pub max_wal_rate_bytes: Option<i64>,
    /// Age of the oldest transaction in the database (idle-in-transaction included) above
    /// which to hold, in milliseconds (default 10 minutes).
    pub max_transaction_age_ms: i64,
    /// A query returning one boolean: `false` holds.
    pub probe: Option<String>,
    /// How long a stop waits before health is re-checked, in milliseconds (default 5 s; a hold
    /// lasts as long as the stop, re-checked at this pace). GitLab holds 10 minutes at once.
    pub hold_ms: i64,
    /// Hold when recent sub-batches take this many times their running median per key.
    pub latency_drift_factor: f64,
    /// Which autovacuum on the table stops the migration (default: only one to prevent
    /// wraparound; an ordinary one, often started by the backfill's own dead tuples, is
    /// reported and obeyed no more).
    pub autovacuum: AutovacuumPolicy,
    /// Indicators switched off for this migration: read and shown, never stop it.
    pub off: Vec<Indicator>,
    /// `--require-health`: hold while any indicator not switched off reads `unknown` because
    /// it cannot be read (a missing grant, a failing probe), not only on a `stop`. Readings
    /// that need more samples first (WAL rate, sub-batch latency) and, on SQLite, indicators
    /// the engine has no notion of do not hold.
    pub require_health: bool,
}

/// The longest `--health-probe`, in characters.
pub const MAX_PROBE_LEN: usize = 10_000;

/// Which autovacuum of the table stops a migration (`--autovacuum`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutovacuumPolicy {
    /// Only an autovacuum to prevent transaction-ID wraparound (the default).
    #[default]
    Wraparound,
    /// Any autovacuum of the table (GitLab's rule).
    Any,
    /// None: autovacuum is reported only.
    Ignore,
}

impl AutovacuumPolicy {
    /// Its name as `--autovacuum` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wraparound => "wraparound",
            Self::Any => "any",
            Self::Ignore => "ignore",
        }
    }
}

impl std::str::FromStr for AutovacuumPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "wraparound" => Ok(Self::Wraparound),
            "any" => Ok(Self::Any),
            "ignore" => Ok(Self::Ignore),
            other => Err(format!(
                "unknown autovacuum policy {other:?} (wraparound, any or ignore)"
            )),
        }
    }
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            max_replica_lag_bytes: 1 << 30,
            max_replica_lag_ms: 30_000,
            max_wal_archive_backlog: 42,
            max_wal_rate_bytes: None,
            max_transaction_age_ms: 10 * 60 * 1000,
            probe: None,
            hold_ms: 5_000,
            latency_drift_factor: 5.0,
            autovacuum: AutovacuumPolicy::default(),
            off: Vec::new(),
            require_health: false,
        }
    }
}

impl HealthSettings {
    /// How long a stop waits before the next re-check.
    pub fn hold(&self) -> Duration {
        Duration::from_millis(self.hold_ms.max(0) as u64)
    }

    /// The settings that differ from `other`'s: (name, this value, other's value), as JSON
    /// text, for the log row of a change.
    pub fn differences(&self, other: &HealthSettings) -> Vec<(String, String, String)> {
        let (a, b) = (serde_json::json!(self), serde_json::json!(other));
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            return Vec::new();
        };
        a.iter()
            .filter_map(|(name, old)| {
                let new = b.get(name).cloned().unwrap_or_default();
                (old != &new).then(|| (name.clone(), old.to_string(), new.to_string()))
            })
            .collect()
    }

    /// The first setting that makes no sense, described.
    pub fn invalid(&self) -> Option<String> {
        let positive = [
            ("--max-replica-lag-bytes", self.max_replica_lag_bytes),
            ("--max-replica-lag", self.max_replica_lag_ms),
            ("--max-wal-archive-backlog", self.max_wal_archive_backlog),
            ("--max-transaction-age", self.max_transaction_age_ms),
            ("--hold", self.hold_ms),
            ("--max-wal-rate", self.max_wal_rate_bytes.unwrap_or(1)),
        ];
        if let Some((flag, value)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Some(format!("{flag} must be positive (got {value})"));
        }
        // JSON has no infinity or NaN: serde_json writes them as `null`, which never reads
        // back as a number.
        if !self.latency_drift_factor.is_finite() || self.latency_drift_factor <= 1.0 {
            return Some(format!(
                "--max-latency-drift must be a finite number above 1 (got {})",
                self.latency_drift_factor
            ));
        }
        if let Some(probe) = &self.probe {
            if probe.trim().is_empty() {
                return Some("--health-probe is empty".into());
            }
            let chars = probe.chars().count();
            if chars > MAX_PROBE_LEN {
                return Some(format!(
                    "--health-probe must be at most {MAX_PROBE_LEN} characters (got {chars})"
                ));
            }
            if probe.contains('\0') {
                return Some("--health-probe contains a NUL character".into());
            }
        }
        // Nothing is stored that cannot be read back.
        match serde_json::to_value(self).map(serde_json::from_value::<HealthSettings>) {
            Ok(Ok(back)) if &back == self => None,
            Ok(Ok(_)) => Some("the health settings do not read back as written".into()),
            Ok(Err(e)) | Err(e) => Some(format!(
                "the health settings would not read back once stored: {e}"
            )),
        }
    }
}

/// What an indicator says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    /// Go on.
    Normal,
    /// Hold the migration.
    Stop,
    /// Cannot tell (no privilege, no meaning on this engine, no data yet): logged, no hold.
    Unknown,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Normal => "normal",
            Self::Stop => "stop",
            Self::Unknown => "unknown",
        })
    }
}

/// The indicators, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Indicator {
    /// Autovacuum working on the target table (wraparound prevention above all).
    Autovacuum,
    /// WAL segments waiting for the archiver.
    WalArchiveBacklog,
    /// WAL written per second.
    WalRate,
    /// Replay lag of replicas.
    ReplicaLag,
    /// Old transactions, idle-in-transaction included.
    LongTransactions,
    /// Sessions waiting for a lock on the target table, or holding one that blocks writes.
    LockWaits,
    /// The user's SQL probe.
    Probe,
    /// Sub-batch time per key against its own running median.
    SubBatchLatency,
}

impl Indicator {
    /// Every indicator, in the order they are reported.
    pub const ALL: [Indicator; 8] = [
        Self::Autovacuum,
        Self::WalArchiveBacklog,
        Self::WalRate,
        Self::ReplicaLag,
        Self::LongTransactions,
        Self::LockWaits,
        Self::Probe,
        Self::SubBatchLatency,
    ];

    /// The name used in logs, hold reasons and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Autovacuum => "autovacuum",
            Self::WalArchiveBacklog => "wal_archive_backlog",
            Self::WalRate => "wal_rate",
            Self::ReplicaLag => "replica_lag",
            Self::LongTransactions => "long_transactions",
            Self::LockWaits => "lock_waits",
            Self::Probe => "probe",
            Self::SubBatchLatency => "sub_batch_latency",
        }
    }
}

impl std::str::FromStr for Indicator {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|i| i.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|i| i.as_str()).collect();
                format!("unknown health indicator {s:?} ({})", names.join(", "))
            })
    }
}

impl fmt::Display for Indicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an indicator reads `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownCause {
    /// This role may not read it: [`Reading::grant`] says what would turn it on.
    Privilege,
    /// The engine has no such thing (SQLite: no autovacuum workers, archiver, replicas).
    NotOnEngine,
    /// Not enough samples yet (the WAL rate's first sample, the first sub-batches).
    NoDataYet,
    /// The reading failed (the probe errored, returned NULL or no row).
    Failed,
}

/// One indicator's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    /// Which indicator.
    pub indicator: Indicator,
    /// What it says.
    pub signal: Signal,
    /// What it saw, for humans (`"replica standby1 is 52.0 MiB behind"`).
    pub reading: String,
    /// The threshold it compares against, for humans.
    pub threshold: String,
    /// Why it cannot tell, when it cannot (also set when `--require-health` turned that
    /// into a stop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<UnknownCause>,
    /// The exact statement that would make it readable (`GRANT pg_read_all_stats TO app`),
    /// when a missing privilege is why it cannot tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

impl Reading {
    /// `indicator: reading (threshold)`: the reason written to a hold's log row.
    pub fn reason(&self) -> String {
        format!("{}: {} ({})", self.indicator, self.reading, self.threshold)
    }

    /// Whether this reading is a protection that is off: it cannot be read for a reason an
    /// operator can fix (a grant, a failing probe), as opposed to one that only needs more
    /// samples or that the engine has no notion of.
    pub fn is_protection_off(&self) -> bool {
        matches!(
            self.cause,
            Some(UnknownCause::Privilege | UnknownCause::Failed)
        )
    }
}

/// The readings of `settings`' indicators (those not switched off) that are protections off
/// ([`Reading::is_protection_off`]): they read `unknown` and never hold, unless
/// `--require-health` is set.
pub fn protections_off<'a>(readings: &'a [Reading], settings: &HealthSettings) -> Vec<&'a Reading> {
    readings
        .iter()
        .filter(|r| r.is_protection_off() && !settings.off.contains(&r.indicator))
        .collect()
}

/// The notice for protections that are off, one line per indicator with the grant that
/// would turn it on, and what happens meanwhile; `None` when every protection is on.
pub fn protections_off_notice(readings: &[Reading], settings: &HealthSettings) -> Option<String> {
    let off = protections_off(readings, settings);
    if off.is_empty() {
        return None;
    }
    let mut lines = vec![format!(
        "{} health indicator{} cannot be read, {}:",
        off.len(),
        if off.len() == 1 { "" } else { "s" },
        if settings.require_health {
            "holding the migration until readable (--require-health)"
        } else {
            "reading unknown, which never holds (--require-health would hold instead)"
        }
    )];
    for r in off {
        // The reading names the grant when one would turn it on.
        let unknown = r.reading.strip_prefix("unknown: ").unwrap_or(&r.reading);
        lines.push(format!("  {}: {unknown}", r.indicator));
    }
    Some(lines.join("\n"))
}

/// A session running autovacuum on the target table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AutovacuumWorker {
    /// Its process id.
    pub pid: i64,
    /// Whether it runs to prevent transaction-id wraparound.
    pub wraparound: bool,
    /// Seconds since it started.
    pub seconds: f64,
}

/// A replica as the primary sees it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Replica {
    /// `application_name` of its WAL receiver.
    pub name: String,
    /// Its address, when it connects over TCP.
    pub address: Option<String>,
    /// WAL bytes written here and not replayed there.
    pub lag_bytes: Option<i64>,
    /// `replay_lag` in milliseconds.
    pub replay_lag_ms: Option<f64>,
}

/// An open transaction of another session.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct OpenTransaction {
    /// Process id.
    pub pid: i64,
    /// Its user.
    pub user: Option<String>,
    /// `application_name`.
    pub application: Option<String>,
    /// `active`, `idle in transaction`, ...
    pub state: Option<String>,
    /// Milliseconds since the transaction began.
    pub age_ms: f64,
}

/// A lock on the target table that matters to us.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TableLock {
    /// Process id.
    pub pid: i64,
    /// Lock mode (`AccessExclusiveLock`, ...).
    pub mode: String,
    /// Granted (a holder that blocks writes) or not (a waiter).
    pub granted: bool,
}

/// What the database says about itself, as raw as it comes. `None` means it could not be
/// read (no privilege, no meaning on this engine): its indicator reports `unknown`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthSample {
    /// Why the PostgreSQL-only parts are missing, when they are (`"SQLite"`, `"needs
    /// pg_read_all_stats"`).
    pub not_available: Option<String>,
    /// Autovacuum workers on the table.
    pub autovacuum: Option<Vec<AutovacuumWorker>>,
    /// `archive_mode` is on.
    pub archiving: Option<bool>,
    /// Segments marked `.ready` in `archive_status`.
    pub archive_ready: Option<i64>,
    /// Current WAL position in bytes (primary only).
    pub wal_lsn: Option<i64>,
    /// Replicas streaming from this server.
    pub replicas: Option<Vec<Replica>>,
    /// The oldest open transactions of other sessions in this database, oldest first.
    pub transactions: Option<Vec<OpenTransaction>>,
    /// Waiting locks and write-blocking locks held by others on the table.
    pub locks: Option<Vec<TableLock>>,
    /// The probe's answer: `Ok(Some(b))`, `Ok(None)` for NULL, `Err` for an error.
    pub probe: Option<Result<Option<bool>, String>>,
    /// The role the sample was read as (PostgreSQL).
    pub role: Option<String>,
    /// The grant that would let the role read other sessions' statistics (autovacuum
    /// workers, replicas' lag, other roles' transactions), when it lacks it.
    pub stats_grant: Option<String>,
    /// The grant that would let the role read the archiver's status directory, when it lacks it.
    pub monitor_grant: Option<String>,
    /// Replicas streaming from this server whose lag this role may not read
    /// (`pg_stat_replication` shows it only their pid); in `replicas` with no lag.
    pub replicas_hidden: i64,
    /// Sessions of this database this role may not see the transactions of, that hold one (a
    /// transaction id or snapshot: `backend_xid`/`backend_xmin`, which every role may read).
    pub sessions_hidden: i64,
}

/// WAL rate between samples at least a second apart, kept by each worker per target.
#[derive(Debug, Default)]
pub struct WalRate {
    last: Option<(i64, Instant)>,
    rate: Option<f64>,
}

impl WalRate {
    /// Feeds a WAL position; returns bytes per second over the last second or more.
    pub fn observe(&mut self, lsn: Option<i64>) -> Option<f64> {
        let lsn = lsn?;
        match self.last {
            Some((prev, at)) if at.elapsed() >= Duration::from_secs(1) => {
                self.rate = Some((lsn - prev).max(0) as f64 / at.elapsed().as_secs_f64());
                self.last = Some((lsn, Instant::now()));
            }
            Some(_) => {}
            None => self.last = Some((lsn, Instant::now())),
        }
        self.rate
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

fn human_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{:.0}ms", ms.max(0.0))
    } else {
        humantime::format_duration(Duration::from_secs((ms / 1000.0) as u64)).to_string()
    }
}

/// Judges a sample against the thresholds, one indicator at a time, in the documented
/// order. `wal_rate` is bytes per second from [`WalRate`]; `latency` is the worker's own
/// tracker for this migration.
pub fn evaluate(
    sample: &HealthSample,
    settings: &HealthSettings,
    wal_rate: Option<f64>,
    latency: Option<&LatencyTracker>,
) -> Vec<Reading> {
    evaluate_while(sample, settings, wal_rate, latency, false)
}

/// Share of a limit a reading must fall below to end a hold: the hysteresis that keeps a
/// signal hovering at its limit from holding and releasing the migration at every re-check.
pub const RELEASE_BELOW: f64 = 0.9;

/// [`evaluate`], for a migration on hold when `holding`: then the limits of the measured
/// indicators (WAL archive backlog and rate, replica lag, transaction age) stop already at
/// [`RELEASE_BELOW`] of themselves, so a hold ends only once the reading is clearly under.
pub fn evaluate_while(
    sample: &HealthSample,
    settings: &HealthSettings,
    wal_rate: Option<f64>,
    latency: Option<&LatencyTracker>,
    holding: bool,
) -> Vec<Reading> {
    let scale = if holding { RELEASE_BELOW } else { 1.0 };
    let mut readings = vec![
        autovacuum(sample, settings),
        wal_archive_backlog(sample, settings, scale),
        wal_rate_reading(sample, settings, wal_rate, scale),
        replica_lag(sample, settings, scale),
        long_transactions(sample, settings, scale),
        lock_waits(sample),
        probe(sample, settings),
        sub_batch_latency(settings, latency),
    ];
    // Switched off: still read and shown, never a stop.
    for r in readings.iter_mut() {
        if settings.off.contains(&r.indicator) {
            if r.signal == Signal::Stop {
                r.signal = Signal::Normal;
            }
            r.threshold = "switched off for this migration".into();
        } else if settings.require_health && r.signal == Signal::Unknown && r.is_protection_off() {
            // `--require-health`: a protection that cannot be read holds like a stop.
            r.signal = Signal::Stop;
            r.reading = format!("unknown: {}", r.reading);
            r.threshold = "--require-health: holds while it cannot be read".into();
        }
    }
    readings
}

impl Reading {
    /// A verdict: `stop` or `normal`.
    fn judged(indicator: Indicator, stop: bool, reading: String, threshold: String) -> Self {
        Self {
            indicator,
            signal: if stop { Signal::Stop } else { Signal::Normal },
            reading,
            threshold,
            cause: None,
            grant: None,
        }
    }

    /// No verdict, and why.
    fn unknown(
        indicator: Indicator,
        cause: UnknownCause,
        reading: String,
        threshold: String,
    ) -> Self {
        Self {
            indicator,
            signal: Signal::Unknown,
            reading,
            threshold,
            cause: Some(cause),
            grant: None,
        }
    }

    /// No verdict: the sample could not read what the indicator needs; `grant` is what would
    /// let the role read it, when that is why.
    fn unreadable(
        indicator: Indicator,
        sample: &HealthSample,
        grant: Option<&String>,
        threshold: String,
    ) -> Self {
        match (grant, &sample.not_available) {
            (Some(grant), _) => {
                Self::not_granted(indicator, sample, grant, String::new(), threshold)
            }
            (None, Some(why)) => {
                Self::unknown(indicator, UnknownCause::NotOnEngine, why.clone(), threshold)
            }
            (None, None) => Self::unknown(
                indicator,
                UnknownCause::Failed,
                "not readable".into(),
                threshold,
            ),
        }
    }

    /// No verdict: the role lacks `grant`; `what` says what it could read (or is empty).
    fn not_granted(
        indicator: Indicator,
        sample: &HealthSample,
        grant: &str,
        what: String,
        threshold: String,
    ) -> Self {
        let role = sample.role.as_deref().unwrap_or("?");
        let mut reading = format!("not readable by role {role}: needs {grant}");
        if !what.is_empty() {
            reading = format!("{what}; the rest is {reading}");
        }
        Self {
            grant: Some(grant.to_owned()),
            ..Self::unknown(indicator, UnknownCause::Privilege, reading, threshold)
        }
    }
}

/// `GRANT role TO member`, the member quoted when it must be.
pub fn grant_statement(granted: &str, member: &str) -> String {
    let plain = member
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && member
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    let member = if plain {
        member.to_owned()
    } else {
        format!("\"{}\"", member.replace('"', "\"\""))
    };
    format!("GRANT {granted} TO {member}")
}

/// An autovacuum worker on the table: by default only one to prevent wraparound stops; an
/// ordinary one is reported (`--autovacuum` says otherwise).
fn autovacuum(sample: &HealthSample, settings: &HealthSettings) -> Reading {
    let threshold = match settings.autovacuum {
        AutovacuumPolicy::Wraparound => "stops for an autovacuum to prevent wraparound only",
        AutovacuumPolicy::Any => "stops for any autovacuum of the table",
        AutovacuumPolicy::Ignore => "never stops (--autovacuum ignore)",
    }
    .to_owned();
    let Some(workers) = &sample.autovacuum else {
        return Reading::unreadable(
            Indicator::Autovacuum,
            sample,
            sample.stats_grant.as_ref(),
            threshold,
        );
    };
    match workers
        .iter()
        .max_by_key(|w| (w.wraparound, w.seconds as i64))
    {
        None => Reading::judged(
            Indicator::Autovacuum,
            false,
            "no autovacuum on the table".into(),
            threshold,
        ),
        Some(w) => Reading::judged(
            Indicator::Autovacuum,
            match settings.autovacuum {
                AutovacuumPolicy::Wraparound => w.wraparound,
                AutovacuumPolicy::Any => true,
                AutovacuumPolicy::Ignore => false,
            },
            format!(
                "autovacuum{} on the table (pid {}, running {})",
                if w.wraparound {
                    " to prevent wraparound"
                } else {
                    ""
                },
                w.pid,
                human_ms(w.seconds * 1000.0)
            ),
            threshold,
        ),
    }
}

/// WAL segments waiting for the archiver; `archive_mode = off` is normal.
fn wal_archive_backlog(sample: &HealthSample, settings: &HealthSettings, scale: f64) -> Reading {
    let threshold = format!("max {} segments", settings.max_wal_archive_backlog) + ending(scale);
    match (sample.archiving, sample.archive_ready) {
        (Some(false), _) => Reading::judged(
            Indicator::WalArchiveBacklog,
            false,
            "archive_mode is off".into(),
            threshold,
        ),
        (Some(true), Some(ready)) => Reading::judged(
            Indicator::WalArchiveBacklog,
            over(ready as f64, settings.max_wal_archive_backlog as f64, scale),
            format!("{ready} WAL segments waiting for the archiver"),
            threshold,
        ),
        _ => Reading::unreadable(
            Indicator::WalArchiveBacklog,
            sample,
            sample.monitor_grant.as_ref(),
            threshold,
        ),
    }
}

/// WAL bytes per second between this worker's samples; stops only above a limit set.
fn wal_rate_reading(
    sample: &HealthSample,
    settings: &HealthSettings,
    wal_rate: Option<f64>,
    scale: f64,
) -> Reading {
    let threshold = match settings.max_wal_rate_bytes {
        Some(max) => format!("max {}/s", mib(max as f64)) + ending(scale),
        None => "no limit set".into(),
    };
    match (sample.wal_lsn, wal_rate) {
        (None, _) => Reading::unreadable(Indicator::WalRate, sample, None, threshold),
        (Some(_), None) => Reading::unknown(
            Indicator::WalRate,
            UnknownCause::NoDataYet,
            "first sample; the rate needs two a second apart".into(),
            threshold,
        ),
        (Some(_), Some(rate)) => Reading::judged(
            Indicator::WalRate,
            settings
                .max_wal_rate_bytes
                .is_some_and(|max| over(rate, max as f64, scale)),
            format!("{}/s of WAL written", mib(rate)),
            threshold,
        ),
    }
}

/// The replica furthest behind, in bytes of WAL or in time.
fn replica_lag(sample: &HealthSample, settings: &HealthSettings, scale: f64) -> Reading {
    let threshold = format!(
        "max {} or {}",
        mib(settings.max_replica_lag_bytes as f64),
        human_ms(settings.max_replica_lag_ms as f64)
    ) + ending(scale);
    let Some(replicas) = &sample.replicas else {
        return Reading::unreadable(
            Indicator::ReplicaLag,
            sample,
            sample.stats_grant.as_ref(),
            threshold,
        );
    };
    let hidden = sample.replicas_hidden.max(0) as usize;
    let seen: Vec<&Replica> = replicas
        .iter()
        .filter(|r| hidden == 0 || r.lag_bytes.is_some() || r.replay_lag_ms.is_some())
        .collect();
    if hidden > 0 {
        let known = Replica::lag_of(&seen, settings, scale);
        if let Some((true, reading)) = &known {
            return Reading::judged(Indicator::ReplicaLag, true, reading.clone(), threshold);
        }
        let grant = sample.stats_grant.clone().unwrap_or_default();
        let what = format!(
            "{hidden} replica{} streaming from this server",
            if hidden == 1 { "" } else { "s" }
        );
        return Reading::not_granted(Indicator::ReplicaLag, sample, &grant, what, threshold);
    }
    match Replica::lag_of(&seen, settings, scale) {
        None => Reading::judged(
            Indicator::ReplicaLag,
            false,
            "no replicas streaming from this server".into(),
            threshold,
        ),
        Some((stop, reading)) => Reading::judged(Indicator::ReplicaLag, stop, reading, threshold),
    }
}

impl Replica {
    /// Whether the worst of `replicas` stops, and what it reads; `None` when there are none.
    fn lag_of(
        replicas: &[&Replica],
        settings: &HealthSettings,
        scale: f64,
    ) -> Option<(bool, String)> {
        if replicas.is_empty() {
            return None;
        }
        Some(Self::worst(replicas, settings, scale))
    }

    fn worst(replicas: &[&Replica], settings: &HealthSettings, scale: f64) -> (bool, String) {
        let name = |r: &Replica| match &r.address {
            Some(a) => format!("{} ({a})", r.name),
            None => r.name.clone(),
        };
        let worst_bytes = replicas
            .iter()
            .copied()
            .max_by_key(|r| r.lag_bytes.unwrap_or(0));
        let worst_time = replicas
            .iter()
            .copied()
            .max_by(|a, b| {
                a.replay_lag_ms
                    .unwrap_or(0.0)
                    .total_cmp(&b.replay_lag_ms.unwrap_or(0.0))
            })
            .filter(|r| r.replay_lag_ms.is_some());
        let bytes = worst_bytes.and_then(|r| r.lag_bytes).unwrap_or(0);
        let time = worst_time.and_then(|r| r.replay_lag_ms).unwrap_or(0.0);
        let (stop, reading) = match (worst_bytes, worst_time) {
            (Some(r), _) if over(bytes as f64, settings.max_replica_lag_bytes as f64, scale) => (
                true,
                format!(
                    "replica {} is {} behind in replay",
                    name(r),
                    mib(bytes as f64)
                ),
            ),
            (_, Some(r)) if over(time, settings.max_replica_lag_ms as f64, scale) => (
                true,
                format!("replica {} replays {} late", name(r), human_ms(time)),
            ),
            _ => (
                false,
                format!(
                    "{} replica{}, worst {} and {} behind",
                    replicas.len(),
                    if replicas.len() == 1 { "" } else { "s" },
                    mib(bytes as f64),
                    human_ms(time)
                ),
            ),
        };
        (stop, reading)
    }
}

/// The oldest transaction of another session of this database (idle in transaction too).
fn long_transactions(sample: &HealthSample, settings: &HealthSettings, scale: f64) -> Reading {
    let threshold =
        format!("max {}", human_ms(settings.max_transaction_age_ms as f64)) + ending(scale);
    let Some(open) = &sample.transactions else {
        return Reading::unreadable(
            Indicator::LongTransactions,
            sample,
            sample.stats_grant.as_ref(),
            threshold,
        );
    };
    let oldest = open.first().map(|t| {
        (
            over(t.age_ms, settings.max_transaction_age_ms as f64, scale),
            format!(
                "oldest transaction: pid {} ({}{}) {} for {}",
                t.pid,
                t.user.as_deref().unwrap_or("?"),
                t.application
                    .as_deref()
                    .filter(|a| !a.is_empty())
                    .map(|a| format!(", {a}"))
                    .unwrap_or_default(),
                t.state.as_deref().unwrap_or("in a transaction"),
                human_ms(t.age_ms)
            ),
        )
    });
    let hidden = sample.sessions_hidden.max(0);
    match (oldest, hidden, &sample.stats_grant) {
        // What the role can see (its own sessions) is enough to stop.
        (Some((true, text)), _, _) => {
            Reading::judged(Indicator::LongTransactions, true, text, threshold)
        }
        (oldest, 1.., Some(grant)) => {
            let role = sample.role.as_deref().unwrap_or("?");
            let seen = match oldest {
                Some((_, text)) => format!("among role {role}'s sessions the {text}"),
                None => format!("no open transaction among role {role}'s sessions"),
            };
            let what = format!(
                "{seen}; {hidden} session{} of other roles hold{} a transaction of unknown age",
                if hidden == 1 { "" } else { "s" },
                if hidden == 1 { "s" } else { "" }
            );
            Reading::not_granted(Indicator::LongTransactions, sample, grant, what, threshold)
        }
        (None, _, _) => Reading::judged(
            Indicator::LongTransactions,
            false,
            "no other open transactions".into(),
            threshold,
        ),
        (Some((stop, text)), _, _) => {
            Reading::judged(Indicator::LongTransactions, stop, text, threshold)
        }
    }
}

/// Sessions waiting for a lock on the table, or holding one that blocks writes.
fn lock_waits(sample: &HealthSample) -> Reading {
    let threshold = "no waiters, no write-blocking locks held".to_owned();
    let Some(locks) = &sample.locks else {
        return Reading::unreadable(Indicator::LockWaits, sample, None, threshold);
    };
    let waiting = locks.iter().filter(|l| !l.granted).count();
    let holder = locks.iter().find(|l| l.granted);
    let text = match (waiting, holder) {
        (0, None) => "no lock waits on the table".to_owned(),
        (w, Some(h)) => format!(
            "pid {} holds {} on the table; {w} session{} waiting",
            h.pid,
            h.mode,
            if w == 1 { "" } else { "s" }
        ),
        (w, None) => format!(
            "{w} session{} waiting for a lock on the table",
            if w == 1 { "" } else { "s" }
        ),
    };
    Reading::judged(
        Indicator::LockWaits,
        waiting > 0 || holder.is_some(),
        text,
        threshold,
    )
}

/// The user's probe: `false` stops; NULL or an error says nothing.
fn probe(sample: &HealthSample, settings: &HealthSettings) -> Reading {
    let threshold = "returns true".to_owned();
    match (&settings.probe, &sample.probe) {
        (None, _) => Reading::judged(
            Indicator::Probe,
            false,
            "no probe set".into(),
            "none".into(),
        ),
        (Some(_), None) => Reading::unknown(
            Indicator::Probe,
            UnknownCause::Failed,
            "the probe was not run".into(),
            threshold,
        ),
        (Some(_), Some(Ok(Some(ok)))) => Reading::judged(
            Indicator::Probe,
            !ok,
            format!("the probe returned {ok}"),
            threshold,
        ),
        (Some(_), Some(Ok(None))) => Reading::unknown(
            Indicator::Probe,
            UnknownCause::Failed,
            "the probe returned NULL".into(),
            threshold,
        ),
        (Some(_), Some(Err(e))) => Reading::unknown(
            Indicator::Probe,
            UnknownCause::Failed,
            format!("the probe failed: {e}"),
            threshold,
        ),
    }
}

/// The latest job's sub-batches against the running median, per key.
fn sub_batch_latency(settings: &HealthSettings, latency: Option<&LatencyTracker>) -> Reading {
    match latency {
        Some(tracker) => tracker.reading(settings.latency_drift_factor),
        None => Reading::unknown(
            Indicator::SubBatchLatency,
            UnknownCause::NoDataYet,
            "no sub-batches measured by this process".into(),
            format!(
                "max {}x the running median per key",
                settings.latency_drift_factor
            ),
        ),
    }
}

/// Whether `value` stops: over `limit`, or while a hold is on (`scale` < 1) not yet below
/// `scale` of it.
fn over(value: f64, limit: f64, scale: f64) -> bool {
    if scale < 1.0 {
        value >= limit * scale
    } else {
        value > limit
    }
}

/// The threshold's note while a hold is on.
fn ending(scale: f64) -> &'static str {
    if scale < 1.0 {
        "; on hold, it ends below 90% of that"
    } else {
        ""
    }
}

/// Share of a limit from which the worker slows down: between it and the limit its pause
/// grows in proportion, so that a signal settles under its limit instead of the migration
/// swinging between full speed and a hold.
pub const SLOW_DOWN_FROM: f64 = 0.5;

/// The indicator nearest its limit, as a share of that limit (WAL archive backlog and rate,
/// replica lag in bytes and time; sub-batch latency drifting for fewer jobs than stop it),
/// with a description, when it is at least [`SLOW_DOWN_FROM`]. Switched-off indicators and
/// readings this role cannot see do not count.
pub fn pressure(
    sample: &HealthSample,
    settings: &HealthSettings,
    wal_rate: Option<f64>,
    latency: Option<&LatencyTracker>,
) -> Option<(f64, String)> {
    let on = |i: Indicator| !settings.off.contains(&i);
    let mut shares: Vec<(f64, String)> = Vec::new();
    let mut share = |value: f64, limit: f64, what: String| {
        if limit > 0.0 {
            shares.push((value / limit, what));
        }
    };
    if on(Indicator::WalArchiveBacklog) {
        if let (Some(true), Some(ready)) = (sample.archiving, sample.archive_ready) {
            let max = settings.max_wal_archive_backlog;
            share(
                ready as f64,
                max as f64,
                format!("wal_archive_backlog: {ready} of {max} segments"),
            );
        }
    }
    if on(Indicator::WalRate) {
        if let (Some(rate), Some(max)) = (wal_rate, settings.max_wal_rate_bytes) {
            share(
                rate,
                max as f64,
                format!("wal_rate: {}/s of {}/s", mib(rate), mib(max as f64)),
            );
        }
    }
    if on(Indicator::ReplicaLag) {
        for r in sample.replicas.iter().flatten() {
            if let Some(bytes) = r.lag_bytes {
                let max = settings.max_replica_lag_bytes;
                share(
                    bytes as f64,
                    max as f64,
                    format!(
                        "replica_lag: {} {} behind of {}",
                        r.name,
                        mib(bytes as f64),
                        mib(max as f64)
                    ),
                );
            }
            if let Some(ms) = r.replay_lag_ms {
                let max = settings.max_replica_lag_ms;
                share(
                    ms,
                    max as f64,
                    format!(
                        "replica_lag: {} {} late of {}",
                        r.name,
                        human_ms(ms),
                        human_ms(max as f64)
                    ),
                );
            }
        }
    }
    if on(Indicator::SubBatchLatency) {
        if let Some(tracker) = latency {
            let drifting = tracker.drifting_jobs(settings.latency_drift_factor);
            if drifting > 0 && drifting < LatencyTracker::SUSTAINED_JOBS {
                // One drifting job already slows the worker down; each more, closer to a stop.
                let of = LatencyTracker::SUSTAINED_JOBS as f64;
                shares.push((
                    0.65 + 0.35 * drifting as f64 / of,
                    format!(
                        "sub_batch_latency: drifting for {drifting} job{} (stops at {of})",
                        if drifting == 1 { "" } else { "s" }
                    ),
                ));
            }
        }
    }
    shares
        .into_iter()
        .filter(|(p, _)| *p >= SLOW_DOWN_FROM)
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

impl Indicator {
    /// Whether it measures a quantity the worker's own pace drives (WAL written, replicas
    /// behind, segments to archive, its sub-batches' times): slowing down brings it back.
    pub fn is_paced(self) -> bool {
        matches!(
            self,
            Self::WalRate | Self::ReplicaLag | Self::WalArchiveBacklog | Self::SubBatchLatency
        )
    }
}

/// The first stopping reading, if any: what a hold is logged with.
pub fn first_stop(readings: &[Reading]) -> Option<&Reading> {
    readings.iter().find(|r| r.signal == Signal::Stop)
}

impl crate::Sluicegate {
    /// The protections that are off for a migration on `table` with `settings`, read now from
    /// one health sample (the probe included): every indicator not switched off that reads
    /// `unknown` for a reason an operator can fix, with the grant that would turn it on
    /// ([`protections_off`]). What needs more samples (WAL rate, latency) is not in it.
    pub async fn protections_off(
        &self,
        table: &str,
        settings: &HealthSettings,
    ) -> crate::Result<Vec<Reading>> {
        let table = crate::ident::TableName::parse(table)?;
        let sample = self
            .target()
            .health_sample(&table, settings.probe.as_deref())
            .await?;
        let readings = evaluate(&sample, settings, None, None);
        Ok(protections_off(&readings, settings)
            .into_iter()
            .cloned()
            .collect())
    }

    /// Every indicator's signal and reading for `migration` now, as a worker would judge them
    /// before its next job. Takes two samples a second apart for the WAL rate; sub-batch
    /// latency comes from the last jobs' recorded timings.
    pub async fn health(&self, migration: &crate::model::Migration) -> crate::Result<Vec<Reading>> {
        // Read on its own target only: this connection's database says nothing of another's.
        self.check_target(migration)?;
        let table = crate::ident::TableName::parse(&migration.table_name)?;
        let probe = migration.health.probe.as_deref();
        let mut wal = WalRate::default();
        let first = self.target().health_sample(&table, None).await?;
        wal.observe(first.wal_lsn);
        if first.wal_lsn.is_some() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let sample = self.target().health_sample(&table, probe).await?;
        let rate = wal.observe(sample.wal_lsn);
        let jobs = self.store().job_recent_succeeded(migration.id, 20).await?;
        let latency = LatencyTracker::from_jobs(&jobs);
        Ok(evaluate_while(
            &sample,
            &migration.health,
            rate,
            Some(&latency),
            migration.held_since.is_some(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(readings: &[Reading], indicator: Indicator) -> &Reading {
        readings.iter().find(|r| r.indicator == indicator).unwrap()
    }

    fn healthy() -> HealthSample {
        HealthSample {
            not_available: None,
            autovacuum: Some(vec![]),
            archiving: Some(true),
            archive_ready: Some(0),
            wal_lsn: Some(1 << 30),
            replicas: Some(vec![]),
            transactions: Some(vec![]),
            locks: Some(vec![]),
            probe: None,
            ..HealthSample::default()
        }
    }

    #[test]
    fn a_healthy_server_says_normal_everywhere_it_can() {
        let r = evaluate(&healthy(), &HealthSettings::default(), Some(1e6), None);
        assert_eq!(r.len(), 8, "every indicator reports");
        for reading in &r {
            let expect = match reading.indicator {
                Indicator::SubBatchLatency => Signal::Unknown,
                _ => Signal::Normal,
            };
            assert_eq!(reading.signal, expect, "{reading:?}");
        }
        assert!(first_stop(&r).is_none());
    }

    #[test]
    fn thresholds_are_strict_and_reasons_name_the_culprit() {
        let settings = HealthSettings::default();
        let mut s = healthy();
        s.archive_ready = Some(42);
        assert_eq!(
            by(
                &evaluate(&s, &settings, None, None),
                Indicator::WalArchiveBacklog
            )
            .signal,
            Signal::Normal,
            "42 is GitLab's limit, not above it"
        );
        s.archive_ready = Some(43);
        s.replicas = Some(vec![
            Replica {
                name: "r1".into(),
                address: None,
                lag_bytes: Some(10),
                replay_lag_ms: Some(45_000.0),
            },
            Replica {
                name: "r2".into(),
                address: Some("10.0.0.2".into()),
                lag_bytes: Some(2 << 30),
                replay_lag_ms: None,
            },
        ]);
        s.transactions = Some(vec![OpenTransaction {
            pid: 77,
            user: Some("app".into()),
            application: Some("psql".into()),
            state: Some("idle in transaction".into()),
            age_ms: 11.0 * 60_000.0,
        }]);
        s.locks = Some(vec![TableLock {
            pid: 9,
            mode: "AccessExclusiveLock".into(),
            granted: true,
        }]);
        s.autovacuum = Some(vec![
            AutovacuumWorker {
                pid: 5,
                wraparound: false,
                seconds: 300.0,
            },
            AutovacuumWorker {
                pid: 6,
                wraparound: true,
                seconds: 2.0,
            },
        ]);
        let r = evaluate(&s, &settings, None, None);
        let reason = |i| by(&r, i).reason();
        assert_eq!(
            reason(Indicator::WalArchiveBacklog),
            "wal_archive_backlog: 43 WAL segments waiting for the archiver (max 42 segments)"
        );
        assert_eq!(
            reason(Indicator::ReplicaLag),
            "replica_lag: replica r2 (10.0.0.2) is 2048.0 MiB behind in replay (max 1024.0 MiB or 30s)"
        );
        assert_eq!(
            reason(Indicator::LongTransactions),
            "long_transactions: oldest transaction: pid 77 (app, psql) idle in transaction for 11m (max 10m)"
        );
        assert!(reason(Indicator::LockWaits).starts_with(
            "lock_waits: pid 9 holds AccessExclusiveLock on the table; 0 sessions waiting"
        ));
        assert!(
            reason(Indicator::Autovacuum)
                .starts_with("autovacuum: autovacuum to prevent wraparound on the table (pid 6"),
            "wraparound prevention is reported first"
        );
        assert_eq!(
            first_stop(&r).unwrap().indicator,
            Indicator::Autovacuum,
            "the first stop in report order is logged"
        );
    }

    #[test]
    fn replay_time_lag_alone_stops() {
        let mut s = healthy();
        s.replicas = Some(vec![Replica {
            name: "r1".into(),
            address: None,
            lag_bytes: Some(0),
            replay_lag_ms: Some(31_000.0),
        }]);
        let r = evaluate(&s, &HealthSettings::default(), None, None);
        assert_eq!(
            by(&r, Indicator::ReplicaLag).reading,
            "replica r1 replays 31s late"
        );
    }

    #[test]
    fn what_cannot_be_read_is_unknown_never_normal() {
        let s = HealthSample {
            not_available: Some("needs the pg_read_all_stats role".into()),
            archiving: Some(true),
            ..HealthSample::default()
        };
        let r = evaluate(&s, &HealthSettings::default(), None, None);
        for i in [
            Indicator::Autovacuum,
            Indicator::WalArchiveBacklog,
            Indicator::WalRate,
            Indicator::ReplicaLag,
            Indicator::LongTransactions,
            Indicator::LockWaits,
        ] {
            assert_eq!(by(&r, i).signal, Signal::Unknown, "{i}");
            assert_eq!(by(&r, i).reading, "needs the pg_read_all_stats role");
        }
        assert!(first_stop(&r).is_none(), "unknown does not hold");
    }

    #[test]
    fn wal_rate_needs_a_limit_to_stop() {
        let mut settings = HealthSettings::default();
        let r = evaluate(&healthy(), &settings, Some(500e6), None);
        assert_eq!(by(&r, Indicator::WalRate).signal, Signal::Normal);
        settings.max_wal_rate_bytes = Some(100 << 20);
        let r = evaluate(&healthy(), &settings, Some(500e6), None);
        assert_eq!(by(&r, Indicator::WalRate).signal, Signal::Stop);
        let r = evaluate(&healthy(), &settings, None, None);
        assert_eq!(by(&r, Indicator::WalRate).signal, Signal::Unknown);
    }

    #[test]
    fn the_probe_holds_on_false_only() {
        let settings = HealthSettings {
            probe: Some("SELECT ok FROM gate".into()),
            ..HealthSettings::default()
        };
        let signal = |answer| {
            let mut s = healthy();
            s.probe = Some(answer);
            by(&evaluate(&s, &settings, None, None), Indicator::Probe).signal
        };
        assert_eq!(signal(Ok(Some(true))), Signal::Normal);
        assert_eq!(signal(Ok(Some(false))), Signal::Stop);
        assert_eq!(signal(Ok(None)), Signal::Unknown);
        assert_eq!(signal(Err("boom".into())), Signal::Unknown);
    }

    #[test]
    fn only_a_wraparound_autovacuum_stops_by_default() {
        let worker = |wraparound| AutovacuumWorker {
            pid: 7,
            wraparound,
            seconds: 0.018,
        };
        let mut s = healthy();
        s.autovacuum = Some(vec![worker(false)]);
        let mut settings = HealthSettings::default();
        let r = by(&evaluate(&s, &settings, None, None), Indicator::Autovacuum).clone();
        assert_eq!(r.signal, Signal::Normal, "{r:?}");
        assert_eq!(r.reading, "autovacuum on the table (pid 7, running 18ms)");
        assert_eq!(
            r.threshold,
            "stops for an autovacuum to prevent wraparound only"
        );
        s.autovacuum = Some(vec![worker(true)]);
        let r = by(&evaluate(&s, &settings, None, None), Indicator::Autovacuum).clone();
        assert_eq!(r.signal, Signal::Stop, "{r:?}");
        settings.autovacuum = AutovacuumPolicy::Ignore;
        let r = by(&evaluate(&s, &settings, None, None), Indicator::Autovacuum).clone();
        assert_eq!(r.signal, Signal::Normal, "{r:?}");
        settings.autovacuum = AutovacuumPolicy::Any;
        s.autovacuum = Some(vec![worker(false)]);
        let r = by(&evaluate(&s, &settings, None, None), Indicator::Autovacuum).clone();
        assert_eq!(r.signal, Signal::Stop, "{r:?}");
        // Switched off: read, shown, never a stop.
        settings.off = vec![Indicator::Autovacuum];
        let r = by(&evaluate(&s, &settings, None, None), Indicator::Autovacuum).clone();
        assert_eq!(r.signal, Signal::Normal, "{r:?}");
        assert_eq!(r.threshold, "switched off for this migration");
    }

    #[test]
    fn a_hold_ends_only_below_ninety_percent_of_the_limit() {
        let settings = HealthSettings {
            max_wal_archive_backlog: 10,
            ..HealthSettings::default()
        };
        let at = |ready, holding| {
            let mut s = healthy();
            s.archive_ready = Some(ready);
            by(
                &evaluate_while(&s, &settings, None, None, holding),
                Indicator::WalArchiveBacklog,
            )
            .signal
        };
        // At the limit: not over it, so no hold starts; but a hold on does not end yet.
        assert_eq!(at(10, false), Signal::Normal);
        assert_eq!(at(10, true), Signal::Stop);
        assert_eq!(at(9, true), Signal::Stop, "9 is not below 90% of 10");
        assert_eq!(at(8, true), Signal::Normal);
    }

    /// A PostgreSQL sample read by role `app`, which lacks `pg_read_all_stats` and
    /// `pg_monitor`: its own sessions and the replicas' presence are visible, nothing else.
    fn as_ordinary_role() -> HealthSample {
        HealthSample {
            autovacuum: None,
            archive_ready: None,
            role: Some("app".into()),
            stats_grant: Some(grant_statement("pg_read_all_stats", "app")),
            monitor_grant: Some(grant_statement("pg_monitor", "app")),
            ..healthy()
        }
    }

    #[test]
    fn what_an_ordinary_role_cannot_read_names_its_grant() {
        let r = evaluate(&as_ordinary_role(), &HealthSettings::default(), None, None);
        let auto = by(&r, Indicator::Autovacuum);
        assert_eq!(auto.signal, Signal::Unknown);
        assert_eq!(auto.cause, Some(UnknownCause::Privilege));
        assert_eq!(
            auto.grant.as_deref(),
            Some("GRANT pg_read_all_stats TO app")
        );
        assert_eq!(
            auto.reading,
            "not readable by role app: needs GRANT pg_read_all_stats TO app"
        );
        assert_eq!(
            by(&r, Indicator::WalArchiveBacklog).grant.as_deref(),
            Some("GRANT pg_monitor TO app")
        );
        // Its own sessions and no replica at all: known.
        assert_eq!(by(&r, Indicator::LongTransactions).signal, Signal::Normal);
        assert_eq!(by(&r, Indicator::ReplicaLag).signal, Signal::Normal);
        // Replicas it sees but whose lag it may not read; sessions of others with a
        // transaction: unknown, with the grant.
        let mut s = as_ordinary_role();
        s.replicas = Some(vec![Replica {
            name: "walreceiver".into(),
            address: None,
            lag_bytes: None,
            replay_lag_ms: None,
        }]);
        s.replicas_hidden = 1;
        s.sessions_hidden = 2;
        let r = evaluate(&s, &HealthSettings::default(), None, None);
        let lag = by(&r, Indicator::ReplicaLag);
        assert_eq!(
            (lag.signal, lag.cause),
            (Signal::Unknown, Some(UnknownCause::Privilege))
        );
        assert!(
            lag.reading.starts_with(
                "1 replica streaming from this server; the rest is not readable by role app"
            ),
            "{lag:?}"
        );
        let tx = by(&r, Indicator::LongTransactions);
        assert_eq!(tx.signal, Signal::Unknown, "{tx:?}");
        assert!(
            tx.reading
                .contains("2 sessions of other roles hold a transaction"),
            "{tx:?}"
        );
        // What it sees of its own sessions is enough to stop.
        s.transactions = Some(vec![OpenTransaction {
            pid: 7,
            user: Some("app".into()),
            application: None,
            state: Some("idle in transaction".into()),
            age_ms: 11.0 * 60_000.0,
        }]);
        let r = evaluate(&s, &HealthSettings::default(), None, None);
        assert_eq!(by(&r, Indicator::LongTransactions).signal, Signal::Stop);
        // A quoted role.
        assert_eq!(
            grant_statement("pg_monitor", "App\"1"),
            "GRANT pg_monitor TO \"App\"\"1\""
        );
    }

    #[test]
    fn require_health_holds_on_protections_that_are_off_only() {
        let mut settings = HealthSettings {
            require_health: true,
            ..HealthSettings::default()
        };
        let r = evaluate(&as_ordinary_role(), &settings, None, None);
        let stop = first_stop(&r).expect("held");
        assert_eq!(stop.indicator, Indicator::Autovacuum);
        assert_eq!(
            stop.reason(),
            "autovacuum: unknown: not readable by role app: needs GRANT pg_read_all_stats TO app \
             (--require-health: holds while it cannot be read)"
        );
        // Not yet enough samples (WAL rate, latency) never holds.
        for i in [Indicator::WalRate, Indicator::SubBatchLatency] {
            assert_eq!(by(&r, i).signal, Signal::Unknown, "{i}");
        }
        // Switched off: no hold for it.
        settings.off = vec![Indicator::Autovacuum, Indicator::WalArchiveBacklog];
        let r = evaluate(&as_ordinary_role(), &settings, None, None);
        assert!(first_stop(&r).is_none(), "{r:?}");
        assert!(protections_off(&r, &settings).is_empty());
        // A probe answering NULL is a protection off; on SQLite, what the engine lacks is not.
        let sqlite = HealthSample {
            not_available: Some("not available on SQLite".into()),
            probe: Some(Ok(None)),
            ..HealthSample::default()
        };
        let settings = HealthSettings {
            require_health: true,
            probe: Some("SELECT ok FROM gate".into()),
            ..HealthSettings::default()
        };
        let r = evaluate(&sqlite, &settings, None, None);
        assert_eq!(first_stop(&r).unwrap().indicator, Indicator::Probe);
        let off: Vec<Indicator> = protections_off(&r, &settings)
            .iter()
            .map(|r| r.indicator)
            .collect();
        assert_eq!(off, vec![Indicator::Probe]);
        // Without --require-health the same readings hold nothing, and the notice says so.
        let plain = HealthSettings::default();
        let r = evaluate(&as_ordinary_role(), &plain, None, None);
        assert!(first_stop(&r).is_none());
        let notice = protections_off_notice(&r, &plain).unwrap();
        assert!(
            notice.starts_with(
                "2 health indicators cannot be read, reading unknown, which never holds"
            ),
            "{notice}"
        );
        assert!(
            notice.contains(
                "  autovacuum: not readable by role app: needs GRANT pg_read_all_stats TO app"
            ),
            "{notice}"
        );
        assert!(
            notice.contains(
                "  wal_archive_backlog: not readable by role app: needs GRANT pg_monitor TO app"
            ),
            "{notice}"
        );
    }

    #[test]
    fn settings_that_would_not_read_back_are_invalid() {
        for drift in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1.0] {
            let s = HealthSettings {
                latency_drift_factor: drift,
                ..HealthSettings::default()
            };
            assert!(s.invalid().is_some(), "{drift}");
        }
        let s = HealthSettings {
            latency_drift_factor: 1.5,
            require_health: true,
            ..HealthSettings::default()
        };
        assert_eq!(s.invalid(), None);
        let back: HealthSettings = serde_json::from_value(serde_json::json!(s)).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn settings_missing_from_stored_json_take_defaults() {
        let s: HealthSettings = serde_json::from_str(r#"{"hold_ms": 5000}"#).unwrap();
        assert_eq!(s.hold(), Duration::from_secs(5));
        assert_eq!(s.max_wal_archive_backlog, 42);
        let s: HealthSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, HealthSettings::default());
        assert_eq!(s.invalid(), None);
    }
}
