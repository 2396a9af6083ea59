//! `queue`, `run` and `finalize`: the commands that write.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use sluicegate::engine::default_worker_name;
use sluicegate::{Plan, QueueRequest, SettingsChange, Sluicegate, StepOutcome, WorkerOptions};

use crate::args::{HealthArgs, Kind, QueueArgs, RunArgs, SetArgs};
use crate::output::{self, format_duration};
use crate::progress::{bars_wanted, Reporter};

/// Turns `queue` flags into a request, refusing flags that do not belong to the kind.
fn request(args: &QueueArgs) -> Result<QueueRequest> {
    let mut req = QueueRequest::new(&args.name, args.kind.name(), &args.table);
    req.key = match (&args.key, &args.column) {
        (Some(key), _) => Some(key.iter().map(|c| c.trim().to_owned()).collect()),
        (None, Some(column)) => Some(vec![column.clone()]),
        (None, None) => None,
    };
    req.non_unique_key = args.non_unique_key;
    req.scope = args.scope.clone();
    req.batch_size = args.batch_size;
    if let Some(sub) = args.sub_batch_size {
        req.sub_batch_size = sub;
        req.sub_batch_ceiling = Some(sub);
    }
    req.max_batch_size = args.max_batch_size;
    req.pause_ms = args.pause_ms;
    req.interval = args.interval;
    req.min_value = args.min_value.clone();
    req.max_value = args.max_value.clone();
    req.paused = args.paused;
    req.statement_timeout = args.statement_timeout;
    req.lock_timeout = args.lock_timeout;
    req.actor = "cli".into();
    req.target_sub_batch_time = args.target_sub_batch_time;
    args.health.apply(&mut req.health);
    let given = [
        ("--set", args.set_clause.as_ref()),
        ("--where", args.where_clause.as_ref()),
        ("--from", args.from.as_ref()),
        ("--to", args.to.as_ref()),
        ("--join", args.join.as_ref()),
        ("--sql", args.sql.as_ref()),
    ];
    let allowed: &[&str] = match args.kind {
        Kind::Update => &["--set", "--where", "--from", "--join"],
        Kind::Delete => &["--where"],
        Kind::CopyColumn => &["--from", "--to"],
        Kind::Sql => &["--sql"],
    };
    for (flag, value) in given {
        match value {
            Some(_) if !allowed.contains(&flag) => {
                bail!("{flag} does not apply to --kind {}", args.kind.name())
            }
            Some(v) => {
                req = req.argument(flag.trim_start_matches("--"), Value::String(v.clone()));
            }
            None => {}
        }
    }
    Ok(req)
}

impl HealthArgs {
    /// Applies the flags given to `health`.
    pub fn apply(&self, health: &mut sluicegate::health::HealthSettings) {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if let Some(v) = self.max_replica_lag_bytes {
            health.max_replica_lag_bytes = v;
        }
        if let Some(v) = self.max_replica_lag {
            health.max_replica_lag_ms = ms(v);
        }
        if let Some(v) = self.max_wal_archive_backlog {
            health.max_wal_archive_backlog = v;
        }
        if let Some(v) = self.max_wal_rate {
            health.max_wal_rate_bytes = Some(v);
        }
        if let Some(v) = self.max_transaction_age {
            health.max_transaction_age_ms = ms(v);
        }
        if let Some(v) = &self.health_probe {
            health.probe = Some(v.clone());
        }
        if let Some(v) = self.hold {
            health.hold_ms = ms(v);
        }
        if let Some(v) = self.max_latency_drift {
            health.latency_drift_factor = v;
        }
        if let Some(v) = self.autovacuum {
            health.autovacuum = v;
        }
        if !self.health_off.is_empty() {
            health.off = self.health_off.clone();
        }
        if let Some(v) = self.require_health {
            health.require_health = v;
        }
    }
}

/// `set`: changes an active or paused migration's settings and prints what changed.
pub async fn set(sg: &Sluicegate, args: &SetArgs) -> Result<()> {
    let m = sg.migration(&args.migration).await?;
    let mut health = m.health.clone();
    args.health.apply(&mut health);
    let change = SettingsChange {
        batch_size: args.batch_size,
        sub_batch_size: args.sub_batch_size,
        max_batch_size: args.max_batch_size,
        pause_ms: args.pause_ms,
        interval: args.interval,
        health: (health != m.health).then_some(health),
    };
    let updated = sg.set(&m, &change, args.reason.clone(), "cli").await?;
    let row = sg
        .migration_history(&updated)
        .await?
        .into_iter()
        .rev()
        .find(|r| r.event == sluicegate::MigrationEvent::Set);
    if args.json {
        outln!(
            "{}",
            serde_json::to_string(&json!({
                "migration": output::MigrationJson::from_migration(&updated),
                "log": row,
            }))?
        );
    } else {
        outln!(
            "migration {} ({}): {}",
            updated.id,
            updated.name,
            row.and_then(|r| r.reason).unwrap_or_default()
        );
        outln!("workers take it up at their next job");
    }
    Ok(())
}

/// The key's columns with their types: `id bigint`, `(tenant_id bigint, id uuid)`.
fn key_description(key: &sluicegate::KeySpec) -> String {
    let cols: Vec<String> = key
        .columns()
        .iter()
        .map(|c| format!("{} {}", c.name, c.key_type.sql_name()))
        .collect();
    match cols.as_slice() {
        [one] => one.clone(),
        _ => format!("({})", cols.join(", ")),
    }
}

/// Warns on stderr when the plan's estimate exceeds a day: the settings are likely GitLab's
/// pacing for an always-on Sidekiq, not a command an operator waits on.
fn warn_if_slow(plan: &Plan) {
    let Some(estimate) = plan.estimated_duration() else {
        return;
    };
    if estimate > Duration::from_secs(24 * 3600) {
        let m = &plan.migration;
        eprintln!(
            "warning: at these settings {} would take about {} (interval {}, batch {}, pause {} ms); \
             full speed is --interval 0s, and `sluicegate set` changes a queued migration",
            m.name,
            format_duration(estimate),
            format_duration(m.interval),
            m.batch_size,
            m.pause_ms
        );
    }
}

pub async fn queue(sg: &Sluicegate, args: &QueueArgs) -> Result<()> {
    let req = request(args)?;
    // The same checks for a dry run as for the real thing (duplicates included).
    let plan = sg.plan(&req).await?;
    warn_if_slow(&plan);
    output::warn_protections_off(
        &plan.migration.name,
        &plan.protections_off,
        &plan.migration.health,
    );
    if args.dry_run {
        let m = &plan.migration;
        let value = json!({
            "name": m.name,
            "job_kind": m.job_kind,
            "table": m.table_name,
            "target": m.target,
            "column": m.key.display_names(),
            "key_columns": m.key,
            "scope": m.scope,
            "job_arguments": m.job_arguments,
            "min_value": output::key_value(&m.min_value),
            "max_value": output::key_value(&m.max_value),
            "min_cursor": m.min_value,
            "max_cursor": m.max_value,
            "estimated_rows": plan.rows_to_change,
            "estimated_keys": m.total_tuple_count,
            "estimated_jobs": plan.estimated_jobs(),
            "batch_size": m.batch_size,
            "sub_batch_size": m.sub_batch_size,
            "pause_ms": m.pause_ms,
            "interval_ms": m.interval.as_millis() as u64,
            "trial_sub_batch_rows": plan.trial_rows,
            "trial_sub_batch_ms": plan.trial_time.as_secs_f64() * 1000.0,
            "estimated_duration_seconds": plan.estimated_duration().map(|d| d.as_secs_f64()),
            "protections_off": sluicegate_cli::json::ProtectionOffJson::from_readings(&plan.protections_off),
            "written": false,
        });
        if args.json {
            outln!("{value}");
        } else {
            outln!("dry run: nothing was written");
            outln!(
                "  migration      {} ({} on {}.{})",
                m.name,
                m.job_kind,
                m.table_name,
                m.key.display_names()
            );
            outln!("  target         {}", m.target);
            outln!("  key            {}", key_description(&m.key));
            if let Some(scope) = &m.scope {
                outln!("  scope          {scope} (jobs span matching keys only)");
            }
            outln!("  range          {} ..= {}", m.min_value, m.max_value);
            outln!(
                "  rows (est.)    {} to change, of {} keys walked",
                output::opt(plan.rows_to_change.map(output::thousands)),
                output::opt(m.total_tuple_count.map(output::thousands))
            );
            outln!(
                "  jobs (est.)    {} of {} keys, sub-batches of {}{}",
                output::opt(plan.estimated_jobs().map(output::thousands)),
                output::thousands(m.batch_size),
                output::thousands(m.sub_batch_size),
                if m.target_sub_batch_ms > 0 {
                    " (tuned from there)"
                } else {
                    ""
                }
            );
            outln!(
                "  trial          one sub-batch touched {} rows in {:.1} ms, rolled back",
                plan.trial_rows,
                plan.trial_time.as_secs_f64() * 1000.0
            );
            outln!(
                "  duration (est.) {} at interval {} and pause {} ms",
                plan.estimated_duration()
                    .map(format_duration)
                    .unwrap_or_else(|| "-".into()),
                format_duration(m.interval),
                m.pause_ms
            );
        }
        return Ok(());
    }
    let m = sg.queue_plan(&plan).await?;
    if args.non_unique_key {
        eprintln!(
            "warning: {} walks the non-unique key {}: all rows of one key value fall in one sub-batch, which cannot be split",
            m.name,
            m.key.display_names()
        );
    }
    if args.json {
        outln!(
            "{}",
            serde_json::to_string(&output::MigrationJson::from_migration(&m))?
        );
    } else {
        outln!(
            "queued migration {} ({}): {} on {}.{}, keys {} ..= {}, {} (target {})",
            m.id,
            m.name,
            m.job_kind,
            m.table_name,
            m.key.display_names(),
            m.min_value,
            m.max_value,
            m.status,
            output::opt(m.target.as_ref().map(|t| t.display.clone()))
        );
    }
    Ok(())
}

pub async fn run(sg: &Sluicegate, args: &RunArgs) -> Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.lease < Duration::from_millis(300) {
        bail!("--lease must be at least 300ms (it is renewed every third of it)");
    }
    // A worker runs the migrations of the target it is connected to only: it says which others
    // it leaves alone, and for what.
    for m in sg.other_targets_runnable().await? {
        eprintln!(
            "skipping migration {} ({}): it is for {}; this worker is connected to {}",
            m.id,
            m.name,
            m.target.as_ref().map_or(
                "an unknown target (queued before schema v5; `sluicegate adopt` it from a worker's connection to its target)".to_owned(),
                |t| t.display.clone()
            ),
            sg.target_identity().display
        );
    }
    // `--only`: the migrations named, each of which must exist.
    let mut only = Vec::new();
    for name in &args.only {
        only.push(sg.migration(name.trim()).await?.id);
    }
    let wanted = |m: &sluicegate::Migration| only.is_empty() || only.contains(&m.id);
    if args.until_idle {
        let all: Vec<_> = sg
            .migrations()
            .await?
            .into_iter()
            .filter(|m| sg.is_own_target(m) && wanted(m))
            .collect();
        let runnable = |m: &&sluicegate::Migration| {
            matches!(
                m.status,
                sluicegate::MigrationStatus::Active | sluicegate::MigrationStatus::Finalizing
            ) && sg.is_own_target(m)
        };
        if !all.iter().any(|m| runnable(&m)) {
            let mut by_status = std::collections::BTreeMap::new();
            for m in &all {
                *by_status.entry(m.status.as_str()).or_insert(0) += 1;
            }
            let counts: Vec<String> = by_status
                .iter()
                .map(|(status, n)| format!("{n} {status}"))
                .collect();
            eprintln!(
                "nothing to do: no migration of {} is active{}",
                sg.target_identity().display,
                if counts.is_empty() {
                    " (none queued: `sluicegate queue` one)".to_owned()
                } else {
                    format!(" ({})", counts.join(", "))
                }
            );
            return Ok(());
        }
    }
    // Protections that are off are said before anything runs, each with its grant.
    for m in sg.migrations().await? {
        let live = matches!(
            m.status,
            sluicegate::MigrationStatus::Active
                | sluicegate::MigrationStatus::Paused
                | sluicegate::MigrationStatus::Finalizing
        );
        // Another target's protections are read where it runs, not here.
        if live && m.unreadable.is_none() && sg.is_own_target(&m) && wanted(&m) {
            if let Ok(off) = sg.protections_off(&m.table_name, &m.health).await {
                output::warn_protections_off(&m.name, &off, &m.health);
            }
        }
    }
    let reporter = Reporter::start(sg.clone(), bars_wanted(args.json));
    let mut worker = sg
        .worker(WorkerOptions {
            name: args.worker.clone().unwrap_or_else(default_worker_name),
            lease: args.lease,
            poll_interval: Duration::from_millis(500),
            concurrency: args.concurrency,
        })
        .with_events(reporter.sink());
    if !only.is_empty() {
        worker = worker.only(only);
    }
    let result = if args.once {
        worker.run_once().await.map(|outcomes| {
            if outcomes.iter().all(|o| *o == StepOutcome::Idle) {
                eprintln!("nothing to do: no migration is due");
            }
        })
    } else {
        worker
            .run(args.until_idle, sluicegate_cli::shutdown_signal())
            .await
    };
    reporter.finish().await;
    result.map_err(Into::into)
}

pub async fn finalize(sg: &Sluicegate, migration: &str, json: bool) -> Result<()> {
    let m = sg.migration(migration).await?;
    let reporter = Reporter::start(sg.clone(), bars_wanted(json));
    let worker = sg
        .worker(WorkerOptions {
            name: format!("cli-finalize:{}", std::process::id()),
            ..WorkerOptions::default()
        })
        .with_events(reporter.sink());
    let result = worker
        .finalize_until(&m, "cli", sluicegate_cli::shutdown_signal())
        .await;
    reporter.finish().await;
    let m = result?;
    if m.status != sluicegate::MigrationStatus::Finished {
        let last = sg.migration_history(&m).await?.pop();
        let why = last
            .and_then(|row| row.reason.or(row.exception_message))
            .unwrap_or_else(|| "see its history".into());
        bail!(
            "migration {} could not be finalized: it ended {} ({why}); see `sluicegate history {}`",
            m.name,
            m.status,
            m.name
        );
    }
    if json {
        outln!(
            "{}",
            serde_json::to_string(&output::MigrationJson::from_migration(&m))?
        );
    } else {
        outln!("migration {} ({}) is finished", m.id, m.name);
    }
    Ok(())
}
