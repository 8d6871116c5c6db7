//! `run`: the stream processor, until a signal or (with `--until-idle`) until caught up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::config::Settings;
use crate::pipeline::{Pipeline, PipelineError, RunSummary};

/// Runs the processor on the calling thread (it blocks), using `runtime` for the async
/// parts. SIGINT and SIGTERM stop it after the batch in progress.
pub fn run(settings: Settings, runtime: &Runtime, until_idle: Option<Duration>) -> Result<RunSummary, PipelineError> {
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = shutdown.clone();
    runtime.spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        tracing::info!("signal received: finishing the batch in progress");
        flag.store(true, Ordering::Relaxed);
    });
    Pipeline::start(settings, runtime.handle().clone(), shutdown)?.run(until_idle)
}
