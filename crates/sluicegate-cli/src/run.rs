//! `queue`, `run` and `finalize`: the commands that write.

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};
use sluicegate::definition::HealthDefinition;
use sluicegate::engine::default_worker_name;
use sluicegate::{
    Definition, IfAbsent, Plan, QueueRequest, SettingsChange, Sluicegate, StepOutcome,
    WorkerOptions,
};

use crate::args::{ApplyArgs, EnsureArgs, HealthArgs, QueueArgs, RunArgs, SetArgs};
use crate::output::{self, format_duration};
use crate::progress::{bars_wanted, Reporter};

/// `queue`'s flags as a definition: the one conversion to a request that definition files go
/// through too ([`Definition::request`]), so both are validated the same way.
fn definition(args: &QueueArgs) -> Definition {
    Definition {
        name: None,
        table: args.table.clone(),
        kind: args.kind.name().to_owned(),
        key: match (&args.key, &args.column) {
            (Some(key), _) => Some(key.iter().map(|c| c.trim().to_owned()).collect()),
            (None, Some(column)) => Some(vec![column.clone()]),
            (None, None) => None,
        },
        non_unique_key: args.non_unique_key,
        skip_null_keys: args.skip_null_keys,
        distinct: args.distinct,
        set: args.set_clause.clone(),
        where_clause: args.where_clause.clone(),
        scope: args.scope.clone(),
        from: args.from.clone(),
        to: args.to.clone(),
        join: args.join.clone(),
        sql: args.sql.clone(),
        arguments: None,
        batch_size: args.batch_size,
        sub_batch_size: args.sub_batch_size,
        max_batch_size: args.max_batch_size,
        pause_ms: Some(args.pause_ms),
        interval: Some(args.interval),
        min_value: args.min_value.clone(),
        max_value: args.max_value.clone(),
        statement_timeout: Some(args.statement_timeout),
        lock_timeout: Some(args.lock_timeout),
        target_sub_batch_time: Some(args.target_sub_batch_time),
        paused: args.paused,
        after: (!args.after.is_empty())
            .then(|| args.after.iter().map(|a| a.trim().to_owned()).collect()),
        verify: args.verify.clone(),
        health: args.health.definition(),
    }
}

/// Turns `queue` flags into a request, refusing flags that do not belong to the kind.
fn request(args: &QueueArgs) -> Result<QueueRequest> {
    let mut req = definition(args).request(&args.name)?;
    req.actor = "cli".into();
    Ok(req)
}

impl HealthArgs {
    /// The health flags given, as a definition's `[health]` table.
    pub fn definition(&self) -> HealthDefinition {
        HealthDefinition {
            max_replica_lag_bytes: self.max_replica_lag_bytes,
            max_replica_lag: self.max_replica_lag,
            max_wal_archive_backlog: self.max_wal_archive_backlog,
            max_wal_rate: self.max_wal_rate,
            max_transaction_age: self.max_transaction_age,
            probe: self.health_probe.clone(),
            hold: self.hold,
            max_latency_drift: self.max_latency_drift,
            autovacuum: self.autovacuum,
            off: Some(self.health_off.clone()),
            require_health: self.require_health,
        }
    }

    /// Applies the flags given to `health`.
    pub fn apply(&self, health: &mut sluicegate::health::HealthSettings) {
        self.definition().apply(health);
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
        statement_timeout: args.statement_timeout,
        lock_timeout: args.lock_timeout,
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
    let cols = match cols.as_slice() {
        [one] => one.clone(),
        _ => format!("({})", cols.join(", ")),
    };
    match key.walk().describe() {
        Some(walk) => format!("{cols}; {walk}"),
        None => cols,
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

/// A dry run's plan: JSON, or the lines a person reads.
fn dry_run_value(plan: &Plan) -> Value {
    let m = &plan.migration;
    let e = plan.estimate.as_ref();
    let secs = |d: Duration| d.as_secs_f64();
    json!({
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
        "rows_known": sluicegate::client::rows_known(&m.job_kind),
        "estimated_keys": m.total_tuple_count,
        "rows_per_key_value": plan.rows_per_key_value,
        "estimated_jobs": plan.estimated_jobs(),
        "skip_null_keys": m.key.walk().skip_nulls,
        "distinct_keys": m.key.walk().distinct,
        "null_key_rows": plan.null_key_rows,
        "batch_size": m.batch_size,
        "sub_batch_size": m.sub_batch_size,
        "pause_ms": m.pause_ms,
        "interval_ms": m.interval.as_millis() as u64,
        "trials": plan.trials.iter().map(|t| json!({
            "position": t.position,
            "from": t.from,
            "keys": t.keys,
            "rows": t.rows,
            "ms": secs(t.time) * 1000.0,
            "warm_up": t.warm_up,
        })).collect::<Vec<_>>(),
        "sub_batch_fixed_ms": e.map(|e| e.costs.median.fixed * 1000.0),
        "per_key_us": e.map(|e| e.costs.median.per_key * 1e6),
        "concurrency": plan.concurrency,
        "parallel_loops": plan.parallel_loops(plan.concurrency),
        "estimated_duration_seconds": e.map(|e| secs(e.duration)),
        "estimated_duration_low_seconds": e.map(|e| secs(e.low)),
        "estimated_duration_high_seconds": e.map(|e| secs(e.high)),
        "protections_off": sluicegate_cli::json::ProtectionOffJson::from_readings(&plan.protections_off),
        "written": false,
    })
}

/// `text` cut to `most` characters, its end shown as `…` when cut.
fn shorten(text: &str, most: usize) -> String {
    match text.chars().count() > most {
        true => text.chars().take(most - 1).chain(['…']).collect(),
        false => text.to_owned(),
    }
}

/// A dry run's plan, as a person reads it.
fn print_plan(plan: &Plan) -> Result<()> {
    let m = &plan.migration;
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
    if let Some(note) = plan.null_keys_note() {
        outln!("  NULL keys      {note}");
    }
    outln!("  range          {} ..= {}", m.min_value, m.max_value);
    let keys = output::opt(m.total_tuple_count.map(output::thousands));
    if sluicegate::client::rows_known(&m.job_kind) {
        outln!(
            "  rows (est.)    {} to change, of {keys} keys walked",
            output::opt(plan.rows_to_change.map(output::thousands)),
        );
    } else {
        outln!(
            "  rows (est.)    unknown before it runs (kind {}: its statements say what they change); {keys} keys walked",
            m.job_kind
        );
    }
    if plan.rows_per_key_value > 1.0 {
        outln!(
            "  non-unique key ~{:.0} rows per key value: a sub-batch covers every row of its last value",
            plan.rows_per_key_value
        );
    }
    let growth = if m.interval.is_zero() && m.max_batch_size.is_none_or(|max| max > m.batch_size) {
        " growing toward ~1 s each"
    } else {
        ""
    };
    outln!(
        "  jobs (est.)    {}, from {} {}{growth}; sub-batches from {}{}",
        output::opt(plan.estimated_jobs().map(output::thousands)),
        output::thousands(m.batch_size),
        if m.key.walk().distinct {
            "distinct key values"
        } else {
            "keys"
        },
        output::thousands(m.sub_batch_size),
        match (m.target_sub_batch_ms > 0, m.sub_batch_ceiling) {
            (true, Some(c)) => format!(
                ", tuned toward {} ms, never above {}",
                m.target_sub_batch_ms,
                output::thousands(c)
            ),
            (true, None) => format!(", tuned toward {} ms", m.target_sub_batch_ms),
            (false, _) => " (fixed)".into(),
        }
    );
    if !m.lanes.is_empty() {
        let mut nodes: Vec<&str> = m.lanes.iter().map(|l| l.node.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        outln!(
            "  lanes          {} (one per shard of the Citus distributed table) on {} node(s): {}; one job per lane at a time, lanes in parallel",
            m.lanes.len(),
            nodes.len(),
            nodes.join(", ")
        );
    }
    let warm_ups = plan.trials.iter().filter(|t| t.warm_up).count();
    outln!(
        "  trials         {} sub-batch(es), each rolled back{}{}:",
        plan.measured_trials().count(),
        if warm_ups > 0 {
            format!(", after {warm_ups} warm-up(s) not counted")
        } else {
            String::new()
        },
        match m.lanes.first() {
            Some(lane) => format!(" (on shard {} on {})", lane.shard_id, lane.node),
            None => String::new(),
        }
    );
    for t in plan.measured_trials() {
        outln!(
            "                   from {:<24} {:>7} keys {:>7} rows {:>9.1} ms",
            shorten(&t.from, 24),
            output::thousands(t.keys),
            output::thousands(t.rows as i64),
            t.time.as_secs_f64() * 1000.0
        );
    }
    let Some(e) = &plan.estimate else {
        outln!("  duration (est.) - (nothing to try)");
        return Ok(());
    };
    outln!(
        "  costs          {:.2} ms a sub-batch + {:.2} µs a key (medians over {} position(s))",
        e.costs.median.fixed * 1000.0,
        e.costs.median.per_key * 1e6,
        plan.measured_trials()
            .map(|t| t.position)
            .max()
            .map_or(0, |p| p + 1)
    );
    let range = if sluicegate::estimate::disagree(e) {
        format!(
            " (range {}–{}: the positions' costs per key differ)",
            format_duration(e.low),
            format_duration(e.high)
        )
    } else {
        String::new()
    };
    let loops = plan.parallel_loops(plan.concurrency);
    outln!(
        "  duration (est.) {}{range} at interval {} and pause {} ms, {}",
        format_duration(e.duration),
        format_duration(m.interval),
        m.pause_ms,
        match (plan.concurrency, m.lanes.is_empty()) {
            (1, true) => "one loop".to_string(),
            (n, true) => format!(
                "{n} loops: a plain table runs one job at a time (its lease), so no faster than one"
            ),
            (n, false) => format!(
                "{n} loop(s): {loops} of the {} lanes at once",
                m.lanes.len()
            ),
        }
    );
    Ok(())
}

pub async fn queue(sg: &Sluicegate, args: &QueueArgs) -> Result<()> {
    let req = request(args)?;
    // The same checks for a dry run as for the real thing (duplicates included).
    let plan = if args.if_not_exists {
        match sg.plan_if_absent(&req).await? {
            IfAbsent::Queue(plan) => *plan,
            other => {
                let m = other.existing().expect("an existing migration");
                if args.json {
                    outln!(
                        "{}",
                        serde_json::to_string(&output::MigrationJson::from_migration(m))?
                    );
                } else {
                    outln!("{}: {}", m.name, other.describe());
                }
                return Ok(());
            }
        }
    } else {
        sg.plan(&req).await?
    };
    warn_if_slow(&plan);
    output::warn_protections_off(
        &plan.migration.name,
        &plan.protections_off,
        &plan.migration.health,
    );
    if args.dry_run {
        let mut plan = plan;
        sg.measure(&mut plan, args.concurrency).await?;
        if args.json {
            outln!("{}", dry_run_value(&plan));
        } else {
            outln!("dry run: nothing was written");
            print_plan(&plan)?;
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
        if let Some(note) = plan.null_keys_note() {
            outln!("{note}");
        }
        if m.key.walk().distinct {
            outln!(
                "batches of {} distinct values of {}",
                output::thousands(m.batch_size),
                m.key.display_names()
            );
        }
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

/// One decision of `apply` as JSON: `{name, action, migration_id, status, differences,
/// error, plan}`.
fn applied_json(
    name: &str,
    decision: std::result::Result<&IfAbsent, &sluicegate::Error>,
    queued: Option<&sluicegate::Migration>,
) -> Value {
    let (action, existing, differences) = match decision {
        Ok(IfAbsent::Queue(_)) => ("queue", queued, Vec::new()),
        Ok(IfAbsent::Unchanged(m)) => ("unchanged", Some(m), Vec::new()),
        Ok(IfAbsent::FinishedDifferent {
            migration,
            differences,
        }) => ("finished_different", Some(migration), differences.clone()),
        Ok(IfAbsent::Unrecorded(m)) => ("unrecorded", Some(m), Vec::new()),
        Err(sluicegate::Error::DefinitionChanged { differences, .. }) => {
            ("refused", None, differences.clone())
        }
        Err(_) => ("refused", None, Vec::new()),
    };
    json!({
        "name": name,
        "action": action,
        "migration_id": existing.map(|m| m.id),
        "status": existing.map(|m| m.status),
        "differences": differences,
        "error": decision.err().map(|e| e.to_string()),
        "plan": match decision {
            Ok(IfAbsent::Queue(plan)) if queued.is_none() => Some(dry_run_value(plan)),
            _ => None,
        },
    })
}

/// `apply DIR`: queues the definitions of DIR not queued yet, in file-name order. Every file
/// is read and decided first: one that does not read or validate, or that changed under a
/// live migration, is shown with why, and nothing is queued (exit 1).
pub async fn apply(sg: &Sluicegate, args: &ApplyArgs) -> Result<()> {
    let mut requests = sluicegate::definition::read_dir(&args.dir)?;
    for req in &mut requests {
        req.actor = "cli".into();
    }
    if requests.is_empty() {
        bail!("no definition (*.toml) in {}", args.dir.display());
    }
    let decisions = sg.plan_definitions(&requests).await;
    let refused = decisions.iter().filter(|d| d.is_err()).count();
    if refused > 0 || args.dry_run {
        let mut all = Vec::new();
        for (req, decision) in requests.iter().zip(&decisions) {
            if args.json {
                all.push(applied_json(&req.name, decision.as_ref(), None));
                continue;
            }
            match decision {
                Ok(IfAbsent::Queue(plan)) => {
                    let mut plan = (**plan).clone();
                    sg.measure(&mut plan, 1).await?;
                    outln!("{}: would queue", req.name);
                    print_plan(&plan)?;
                }
                Ok(other) => outln!("{}: {}", req.name, other.describe()),
                Err(e) => outln!("{}: refused: {e}", req.name),
            }
        }
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&all)?);
        }
        if refused > 0 {
            bail!(
                "{refused} of {} definition(s) in {} refused; nothing was queued",
                requests.len(),
                args.dir.display()
            );
        }
        if !args.json {
            outln!("dry run: nothing was written");
        }
        return Ok(());
    }
    let mut all = Vec::new();
    for (req, decision) in requests.iter().zip(decisions) {
        let decision = decision?;
        let queued = match &decision {
            IfAbsent::Queue(plan) => Some(sg.queue_plan(plan).await?),
            _ => None,
        };
        if args.json {
            all.push(applied_json(&req.name, Ok(&decision), queued.as_ref()));
            continue;
        }
        match (&decision, &queued) {
            (IfAbsent::Queue(_), Some(m)) => outln!(
                "{}: queued migration {} ({} on {}.{}, keys {} ..= {}, {})",
                req.name,
                m.id,
                m.job_kind,
                m.table_name,
                m.key.display_names(),
                m.min_value,
                m.max_value,
                m.status
            ),
            (other, _) => outln!("{}: {}", req.name, other.describe()),
        }
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}

/// A command's end with an exit code of its own (`ensure`): `main` prints the message as the
/// one error line and exits with the code.
#[derive(Debug)]
pub struct Exit {
    /// The exit code.
    pub code: u8,
    /// The one line said on stderr.
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// `ensure`'s exit codes: still running, failed or cancelled, not queued.
pub const EXIT_RUNNING: u8 = 3;
/// See [`EXIT_RUNNING`].
pub const EXIT_FAILED: u8 = 4;
/// See [`EXIT_RUNNING`].
pub const EXIT_NOT_QUEUED: u8 = 5;

/// `ensure NAME...`: the deploy gate. One line per migration on stdout (its failures
/// grouped under a failed one); exit 0 when all are finished, else the worst one's code.
pub async fn ensure(sg: &Sluicegate, args: &EnsureArgs) -> Result<()> {
    use sluicegate::engine::{EnsureOptions, Standing};
    let options = EnsureOptions {
        finalize: args.finalize,
        timeout: args.timeout,
        actor: "cli".into(),
    };
    let reports = sg
        .ensure(
            &args.migrations,
            &options,
            sluicegate_cli::shutdown_signal(),
        )
        .await?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            outln!("{}: {}", r.name, r.reason);
            for g in r.failures.iter().take(5) {
                outln!(
                    "  {} failed attempt(s) of {} job(s): {}: {}",
                    g.attempts,
                    g.jobs,
                    g.class,
                    g.message
                );
            }
        }
    }
    let worst = reports
        .iter()
        .map(|r| r.standing)
        .max()
        .unwrap_or(Standing::Finished);
    let named = |standing: Standing| {
        reports
            .iter()
            .filter(|r| r.standing == standing)
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (code, what) = match worst {
        Standing::Finished => return Ok(()),
        Standing::Running => (EXIT_RUNNING, "still running"),
        Standing::Failed => (EXIT_FAILED, "failed or cancelled"),
        Standing::NotQueued => (EXIT_NOT_QUEUED, "not queued"),
    };
    let not_finished = reports
        .iter()
        .filter(|r| r.standing != Standing::Finished)
        .count();
    Err(Exit {
        code,
        message: format!(
            "{not_finished} of {} migration(s) not finished; {what}: {}",
            reports.len(),
            named(worst)
        ),
    }
    .into())
}

/// `verify MIGRATION`: its `--verify` condition checked now over its range, read only; exit
/// 4 (as `ensure` says of a failed migration) when a row violates it.
pub async fn verify(sg: &Sluicegate, migration: &str, json: bool) -> Result<()> {
    let m = sg.migration(migration).await?;
    let found = sg.verify_now(&m).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        outln!("{}: {}", m.name, found.describe());
    }
    if found.violations > 0 {
        return Err(Exit {
            code: EXIT_FAILED,
            message: format!(
                "{} row(s) of {} violate its --verify condition",
                found.violations, m.name
            ),
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use sluicegate::QueueRequest;

    use super::*;
    use crate::args::{Cli, Command};

    /// `queue` with no size or pacing flag asks for exactly the library's defaults: one set
    /// of defaults, whichever way a migration is queued.
    #[test]
    fn queue_without_flags_takes_the_library_defaults() {
        let cli = Cli::try_parse_from([
            "sluicegate",
            "queue",
            "b",
            "--table",
            "items",
            "--kind",
            "update",
            "--set",
            "n = 1",
        ])
        .unwrap();
        let Command::Queue(args) = cli.command else {
            panic!("not a queue command");
        };
        let from_flags = request(&args).unwrap().settings();
        let library = QueueRequest::new("b", "update", "items").settings();
        assert_eq!(from_flags, library);
    }
}
