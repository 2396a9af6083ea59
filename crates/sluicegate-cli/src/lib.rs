//! The parts of the `sluicegate` binary that tests and other programs reuse: the JSON views
//! and the HTTP server (dashboard, JSON API, `/metrics`).

pub mod fit;
pub mod json;
pub mod serve;
pub mod term;
pub mod units;

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM: the signal to end the sub-batch in
/// flight, hand its job back and stop. From then on, a second signal ends the process at once
/// (exit 130 for SIGINT, 143 for SIGTERM): a job in flight is then covered by its lease.
pub async fn shutdown_signal() {
    let first = signalled().await;
    term::say(&format!(
        "{first}: stopping at the end of the current sub-batch (send it again to exit at once)"
    ));
    tokio::spawn(async {
        let second = signalled().await;
        term::say(&format!(
            "{second} again: exiting now; a job in flight is taken over when its lease runs out"
        ));
        std::process::exit(match second {
            "SIGTERM" => 143,
            _ => 130,
        });
    });
}

/// Waits for SIGINT or SIGTERM and names it.
async fn signalled() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
