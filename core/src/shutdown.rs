//! Shutdown signals: SIGINT (Ctrl-C) or SIGTERM, or a cancellation token.

/// Completes on SIGINT or SIGTERM (on non-Unix systems, Ctrl-C only).
/// If the signal handlers cannot be installed, it logs why and never
/// completes, so the worker runs until its source ends instead of stopping.
///
/// ```no_run
/// # async fn demo(worker: sluicegate::Worker<sluicegate::memory::MemorySource>) {
/// worker.run_until(sluicegate::shutdown::signal()).await.unwrap();
/// # }
/// ```
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => tracing::info!("SIGINT received: shutting down"),
                    _ = terminate.recv() => tracing::info!("SIGTERM received: shutting down"),
                }
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, "cannot listen for SIGINT/SIGTERM; shutdown only when the source ends");
                std::future::pending::<()>().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C; shutdown only when the source ends");
            std::future::pending::<()>().await;
        }
    }
}

/// A token to stop a worker from code: pass `token.cancelled_owned()` (or
/// `async move { token.cancelled().await }`) to [`crate::Worker::run_until`].
pub use tokio_util::sync::CancellationToken;
