//! Each indicator's judgement of a [`HealthSample`] against the [`HealthSettings`]: pure
//! functions, unit-tested here without a server. [`evaluate_while`] runs them in the order
//! they are reported and applies what the settings say of switched-off indicators and
//! `--require-health`.

use std::time::Duration;

use super::{
    AutovacuumPolicy, HealthSample, HealthSettings, Indicator, LatencyTracker, Reading, Replica,
    Signal, UnknownCause,
};

pub(super) fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

pub(super) fn human_ms(ms: f64) -> String {
    if ms < 1000.0 {
        format!("{:.0}ms", ms.max(0.0))
    } else {
        humantime::format_duration(Duration::from_secs((ms / 1000.0) as u64)).to_string()
    }
}

/// Judges a sample against the thresholds, one indicator at a time, in the documented
/// order. `wal_rate` is bytes per second from [`WalRate`](super::WalRate); `latency` is the
/// worker's own tracker for this migration.
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
            // `--require-health`: a protection that cannot be read holds like a stop (its
            // cause stays: `Reading::shown` says `unknown:` from it).
            r.signal = Signal::Stop;
            r.threshold = "--require-health: holds while it cannot be read".into();
        }
    }
    readings
}

/// The first stopping reading, if any: what a hold is logged with.
pub fn first_stop(readings: &[Reading]) -> Option<&Reading> {
    readings.iter().find(|r| r.signal == Signal::Stop)
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
        let what = format!(
            "{hidden} replica{} streaming from this server",
            if hidden == 1 { "" } else { "s" }
        );
        // A privilege is the cause only with the grant that would lift it.
        return match &sample.stats_grant {
            Some(grant) => {
                Reading::not_granted(Indicator::ReplicaLag, sample, grant, what, threshold)
            }
            None => Reading::unknown(
                Indicator::ReplicaLag,
                UnknownCause::Failed,
                format!("{what}; their lag is not readable"),
                threshold,
            ),
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::tests::healthy;
    use crate::health::{
        grant_statement, protections_off, protections_off_notice, AutovacuumWorker,
        OpenTransaction, TableLock,
    };

    fn by(readings: &[Reading], indicator: Indicator) -> &Reading {
        readings.iter().find(|r| r.indicator == indicator).unwrap()
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
    fn every_unknown_reading_has_a_typed_cause_and_a_privilege_its_grant() {
        let mut hidden = as_ordinary_role();
        hidden.replicas_hidden = 1;
        hidden.sessions_hidden = 1;
        let no_grant = HealthSample {
            stats_grant: None,
            ..hidden.clone()
        };
        let sqlite = HealthSample {
            not_available: Some("not available on SQLite".into()),
            probe: Some(Err("boom".into())),
            ..HealthSample::default()
        };
        let settings = HealthSettings {
            probe: Some("SELECT true".into()),
            ..HealthSettings::default()
        };
        for sample in [healthy(), as_ordinary_role(), hidden, no_grant, sqlite] {
            for r in evaluate(&sample, &settings, None, None) {
                assert_eq!(r.signal == Signal::Unknown, r.cause.is_some(), "{r:?}");
                assert_eq!(
                    r.cause == Some(UnknownCause::Privilege),
                    r.grant.is_some(),
                    "{r:?}"
                );
            }
        }
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
}
