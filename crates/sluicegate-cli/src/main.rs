//! `sluicegate`: queue, run and watch batched background data migrations from a terminal.

/// `println!` that hands back a write error instead of panicking, so that a closed pipe
/// (`sluicegate history x | head -1`) ends the command quietly: `main` treats `BrokenPipe` as
/// success.
macro_rules! outln {
    () => {
        std::io::Write::write_all(&mut std::io::stdout().lock(), b"\n")?
    };
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(
            &mut std::io::stdout().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        )?
    };
}

/// [`outln!`] where there is no caller to hand the error to (progress lines written from a
/// task): a closed pipe drops the line.
macro_rules! outln_or_drop {
    ($($arg:tt)*) => {{
        let _ = std::io::Write::write_fmt(
            &mut std::io::stdout().lock(),
            format_args!("{}\n", format_args!($($arg)*)),
        );
    }};
}

mod args;
mod demo;
mod output;
mod progress;
mod run;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use sluicegate::{ConnectOptions, MigrationEvent, Sluicegate};

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let tracking = tracking_database(&cli);
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A command that ends with a code of its own (`ensure`) has said why already.
            if let Some(exit) = err.downcast_ref::<run::Exit>() {
                let _ = std::io::stdout().flush();
                eprintln!("error: {}", exit.message);
                return ExitCode::from(exit.code);
            }
            let err = naming_the_database(err, tracking.as_deref());
            // A closed pipe (`sluicegate status | head`) is not an error.
            if err
                .chain()
                .filter_map(|e| e.downcast_ref::<std::io::Error>())
                .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            let _ = std::io::stdout().flush();
            eprintln!("error: {}", said_once(&err));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, each said once: a cause whose text the message already holds
/// (a database error quoting its driver's, which quotes the server's) adds nothing.
fn said_once(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

fn init_tracing(cli: &Cli) {
    use sluicegate_cli::term;
    // Through the bars when they are drawn (a line never lands at the end of one); sqlx's
    // own warnings only when asked for.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(term::log_filter())
        .with_writer(term::LogWriter)
        .with_ansi(output::color_enabled());
    if cli.wants_json() {
        builder.json().init();
    } else {
        builder.fmt_fields(term::log_fields()).init();
    }
}

/// Connects to the tracking database (and target) named on the command line. Only `setup`
/// creates a SQLite file that is not there: every other command needs the tracking schema
/// it would not hold (and read commands and `queue --dry-run` write nothing).
async fn connect(cli: &Cli) -> Result<Sluicegate> {
    let mut opts = ConnectOptions::new(&cli.database_url);
    opts.target_url = cli.target_url.clone();
    opts.schema = cli.schema.clone();
    opts.create_if_missing = matches!(cli.command, Command::Setup);
    Sluicegate::connect_with(opts)
        .await
        .map_err(anyhow::Error::from)
}

async fn connect_ready(cli: &Cli) -> Result<Sluicegate> {
    let sg = connect(cli).await?;
    sg.ensure_schema().await?;
    Ok(sg)
}

/// The tracking database a command uses, as an error may name it (its password masked):
/// `sqlite://sluicegate.db`, `schema "sluicegate" of postgres://app:***@db/app`. `None` for
/// the demo, which makes its own.
fn tracking_database(cli: &Cli) -> Option<String> {
    if matches!(cli.command, Command::Demo(_)) {
        return None;
    }
    let url = sluicegate::client::mask_password(&cli.database_url);
    Some(if url.starts_with("sqlite:") {
        url
    } else {
        format!("schema {:?} of {url}", cli.schema)
    })
}

/// The error a command ends with, where a missing tracking schema names the database looked
/// at: `the tracking schema is not installed in sqlite://sluicegate.db (run `sluicegate setup`
/// first)`.
fn naming_the_database(err: anyhow::Error, tracking: Option<&str>) -> anyhow::Error {
    let missing = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<sluicegate::Error>(),
            Some(sluicegate::Error::SchemaMissing)
        )
    });
    match tracking {
        Some(place) if missing => anyhow::anyhow!(
            "the tracking schema is not installed in {place} (run `sluicegate setup` first)"
        ),
        _ => err,
    }
}

/// How long `run` waits for a database that is restarting or not up yet.
const STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// [`connect_ready`] for workers: a worker started while the server restarts (or before it is
/// up) waits for it with backoff, as running workers do, instead of dying. Anything but a lost
/// or refused connection fails at once.
async fn connect_ready_waiting(cli: &Cli) -> Result<Sluicegate> {
    let started = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(200);
    loop {
        match connect_ready(cli).await {
            Ok(sg) => return Ok(sg),
            Err(e) if is_connection_lost(&e) && started.elapsed() < STARTUP_WAIT => {
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "database unavailable at startup; waiting");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_connection_lost(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<sluicegate::Error>(),
        Some(sluicegate::Error::Database { source, .. })
            if sluicegate::Failure::from_sqlx(source).is_connection_lost()
    )
}

async fn dispatch(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Setup => {
            let sg = connect(&cli).await?;
            let (applied, partitions) = sg.setup().await?;
            if applied.is_empty() {
                outln!("tracking schema is up to date");
            } else {
                let versions: Vec<String> = applied.iter().map(|v| v.to_string()).collect();
                outln!(
                    "installed tracking schema version(s) {}",
                    versions.join(", ")
                );
            }
            if !partitions.created.is_empty() {
                outln!(
                    "created job log partitions {}",
                    partitions.created.join(", ")
                );
            }
            Ok(())
        }
        Command::Queue(args) => {
            let sg = connect_ready(&cli).await?;
            run::queue(&sg, args).await
        }
        Command::Apply(args) => {
            let sg = connect_ready(&cli).await?;
            run::apply(&sg, args).await
        }
        Command::Run(args) => {
            let sg = connect_ready_waiting(&cli).await?;
            run::run(&sg, args).await
        }
        Command::Status(args) => {
            let sg = connect_ready(&cli).await?;
            output::status(&sg, &args.status, args.json).await
        }
        Command::Show(args) => {
            let sg = connect_ready(&cli).await?;
            output::show(&sg, &args.migration, args.json).await
        }
        Command::Health(args) => {
            let sg = connect_ready(&cli).await?;
            output::health(&sg, &args.migration, args.json).await
        }
        Command::Jobs(args) => {
            let sg = connect_ready(&cli).await?;
            output::jobs(
                &sg,
                &args.migration,
                args.status.as_deref(),
                args.limit,
                args.json,
            )
            .await
        }
        Command::History(args) => {
            let sg = connect_ready(&cli).await?;
            output::history(&sg, &args.migration, args.job, args.json).await
        }
        Command::Pause(args)
        | Command::Resume(args)
        | Command::Retry(args)
        | Command::Cancel(args) => {
            let sg = connect_ready(&cli).await?;
            let event = match &cli.command {
                Command::Pause(_) => MigrationEvent::Pause,
                Command::Resume(_) => MigrationEvent::Resume,
                Command::Retry(_) => MigrationEvent::Retry,
                _ => MigrationEvent::Cancel,
            };
            let m = sg
                .apply(&args.migration, event, args.reason.clone(), "cli")
                .await?;
            outln!("migration {} ({}) is {}", m.id, m.name, m.status);
            Ok(())
        }
        Command::Adopt(args) => {
            let sg = connect_ready(&cli).await?;
            let m = sg
                .adopt_target(&args.migration, args.reason.clone(), "cli")
                .await?;
            outln!(
                "migration {} ({}) is now for {}",
                m.id,
                m.name,
                sg.target_identity().display
            );
            Ok(())
        }
        Command::Set(args) => {
            let sg = connect_ready(&cli).await?;
            run::set(&sg, args).await
        }
        Command::Verify(args) => {
            let sg = connect_ready(&cli).await?;
            run::verify(&sg, &args.migration, args.json).await
        }
        Command::Ensure(args) => {
            let sg = connect_ready(&cli).await?;
            run::ensure(&sg, args).await
        }
        Command::Finalize(args) => {
            let sg = connect_ready(&cli).await?;
            run::finalize(&sg, &args.migration, args.json).await
        }
        Command::Serve(args) => {
            // The token and the address first: a refusal needs no database.
            let prepared = sluicegate_cli::serve::prepare(&sluicegate_cli::serve::ServeOptions {
                listen: args.listen.clone(),
                token_file: args.token_file.clone(),
                public_reads: args.public_reads,
                allowed_hosts: args.allowed_host.clone(),
            })
            .await?;
            let sg = connect_ready(&cli).await?;
            sluicegate_cli::serve::serve(prepared, sg).await
        }
        Command::Demo(args) => demo::demo(args).await.context("the demo failed"),
    }
}
