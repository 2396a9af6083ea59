//! A migration's health settings as stored (`migrations.health_settings`): the thresholds
//! of the health indicators, their names, which of them are switched off, and the check that
//! a setting makes sense and reads back. The indicators themselves are judged in
//! [`crate::health`]; these settings sit below it because a [`Migration`](super::Migration)
//! holds them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;

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
