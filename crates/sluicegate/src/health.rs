//! Health indicators: whether the database can take more of this migration now.
//!
//! A worker takes a [`HealthSample`] from the target database before every job (one query on
//! PostgreSQL, plus the user's probe when there is one), adds what only it knows (WAL rate
//! between its samples, its own sub-batch latencies), and [`evaluate`]s the lot against the
//! migration's [`HealthSettings`]. Any `stop` puts the migration on hold; `unknown` is
//! logged and does not hold. Evaluation is pure, so thresholds are unit-tested without a
//! server; the samples are tested against real catalog state in `tests/health.rs`.
//!
//! The files: `sample` (what is read), `reading` (what an indicator says), `indicators` (each
//! indicator's judgement), `pressure` (how near the limits); the settings live in
//! [`crate::model`], which stores them; `latency` (the worker's own sub-batch latencies) and
//! `slow_down` (the pause it keeps as a limit nears).

mod indicators;
mod latency;
mod pressure;
mod reading;
mod sample;
mod slow_down;

pub use crate::model::{AutovacuumPolicy, HealthSettings, Indicator, MAX_PROBE_LEN};
pub use indicators::{evaluate, evaluate_while, first_stop, RELEASE_BELOW};
pub use latency::LatencyTracker;
pub use pressure::{pressure, SLOW_DOWN_FROM};
pub use reading::{
    grant_statement, protections_off, protections_off_notice, Reading, Signal, UnknownCause,
};
pub use sample::{AutovacuumWorker, HealthSample, OpenTransaction, Replica, TableLock, WalRate};
pub use slow_down::SlowDown;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn healthy() -> HealthSample {
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
}
