//! The parts of the `sluicegate` binary that tests and other programs reuse: the JSON views
//! and the HTTP server (dashboard, JSON API, `/metrics`).

pub mod json;
pub mod serve;
pub mod units;

/// Resolves on Ctrl-C or SIGTERM: the signal to finish the work in flight and stop.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::warn!("shutting down: finishing the work in progress");
}
