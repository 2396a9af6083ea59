//! The parts of the `sluicegate` binary that tests and other programs reuse: the JSON views
//! and the HTTP server (dashboard, JSON API, `/metrics`).

pub mod fit;
pub mod json;
pub mod serve;
pub mod term;
pub mod units;

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM: the signal to end the sub-batch in
/// flight, hand its job back and stop. From then on, a second signal ends the process at once
/// (exit 130 for SIGINT, 143 for SIGTERM): a job in flight is then covered by its lease. The
/// listeners that hear the second signal are the ones that heard the first, kept from the
/// start: listeners made after the first was taken missed a second sent right after it was
/// said (a test that sent it on reading the notice saw the process finish its sub-batch).
pub async fn shutdown_signal() {
    let mut signals = Signals::new();
    let first = signals.next().await;
    term::say(&format!(
        "{first}: stopping at the end of the current sub-batch (send it again to exit at once)"
    ));
    tokio::spawn(async move {
        let second = signals.next().await;
        term::say(&format!(
            "{second} again: exiting now; a job in flight is taken over when its lease runs out"
        ));
        std::process::exit(match second {
            "SIGTERM" => 143,
            _ => 130,
        });
    });
}

/// The process's SIGINT and SIGTERM listeners.
struct Signals {
    #[cfg(unix)]
    listeners: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                listeners: signal(SignalKind::interrupt())
                    .and_then(|int| Ok((int, signal(SignalKind::terminate())?)))
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for the next SIGINT or SIGTERM and names it.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        if let Some((int, term)) = self.listeners.as_mut() {
            return tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
