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
