//! What the database says about itself, as raw as it comes ([`HealthSample`], read by the
//! stores), and the WAL rate a worker derives from its samples ([`WalRate`]).

use std::time::{Duration, Instant};

use serde::Deserialize;

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
