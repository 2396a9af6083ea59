//! How near its limits a migration runs: the share of the nearest limit that the worker slows
//! down by ([`pressure`]), from half of it ([`SLOW_DOWN_FROM`]) on.

use super::indicators::{human_ms, mib};
use super::{HealthSample, HealthSettings, Indicator, LatencyTracker};

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
    if on(Indicator::WalArchiveBacklog) {
        shares.extend(archive_backlog(sample, settings));
    }
    if on(Indicator::WalRate) {
        shares.extend(wal_rate_share(wal_rate, settings));
    }
    if on(Indicator::ReplicaLag) {
        shares.extend(replica_lag(sample, settings));
    }
    if on(Indicator::SubBatchLatency) {
        shares.extend(latency.and_then(|t| sub_batch_latency(t, settings)));
    }
    shares
        .into_iter()
        .filter(|(p, _)| *p >= SLOW_DOWN_FROM)
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// `value` as a share of `limit`, described; `None` without a limit.
fn share(value: f64, limit: f64, what: String) -> Option<(f64, String)> {
    (limit > 0.0).then(|| (value / limit, what))
}

/// WAL segments waiting for the archiver, when archiving is on.
fn archive_backlog(sample: &HealthSample, settings: &HealthSettings) -> Option<(f64, String)> {
    let (Some(true), Some(ready)) = (sample.archiving, sample.archive_ready) else {
        return None;
    };
    let max = settings.max_wal_archive_backlog;
    share(
        ready as f64,
        max as f64,
        format!("wal_archive_backlog: {ready} of {max} segments"),
    )
}

/// WAL written per second, when a limit is set.
fn wal_rate_share(wal_rate: Option<f64>, settings: &HealthSettings) -> Option<(f64, String)> {
    let (Some(rate), Some(max)) = (wal_rate, settings.max_wal_rate_bytes) else {
        return None;
    };
    share(
        rate,
        max as f64,
        format!("wal_rate: {}/s of {}/s", mib(rate), mib(max as f64)),
    )
}

/// Each replica's lag, in bytes and in time, as far as this role may read it.
fn replica_lag(sample: &HealthSample, settings: &HealthSettings) -> Vec<(f64, String)> {
    let mut shares = Vec::new();
    for r in sample.replicas.iter().flatten() {
        if let Some(bytes) = r.lag_bytes {
            let max = settings.max_replica_lag_bytes;
            shares.extend(share(
                bytes as f64,
                max as f64,
                format!(
                    "replica_lag: {} {} behind of {}",
                    r.name,
                    mib(bytes as f64),
                    mib(max as f64)
                ),
            ));
        }
        if let Some(ms) = r.replay_lag_ms {
            let max = settings.max_replica_lag_ms;
            shares.extend(share(
                ms,
                max as f64,
                format!(
                    "replica_lag: {} {} late of {}",
                    r.name,
                    human_ms(ms),
                    human_ms(max as f64)
                ),
            ));
        }
    }
    shares
}

/// Sub-batch latency drifting for fewer jobs in a row than stop the migration: one drifting
/// job already slows the worker down; each more, closer to a stop.
fn sub_batch_latency(tracker: &LatencyTracker, settings: &HealthSettings) -> Option<(f64, String)> {
    let drifting = tracker.drifting_jobs(settings.latency_drift_factor);
    if drifting == 0 || drifting >= LatencyTracker::SUSTAINED_JOBS {
        return None;
    }
    let of = LatencyTracker::SUSTAINED_JOBS as f64;
    Some((
        0.65 + 0.35 * drifting as f64 / of,
        format!(
            "sub_batch_latency: drifting for {drifting} job{} (stops at {of})",
            if drifting == 1 { "" } else { "s" }
        ),
    ))
}
