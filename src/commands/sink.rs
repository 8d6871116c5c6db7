//! `sink-clickhouse`: the built-in speed-layer sink, until a signal or (with
//! `--until-idle`) until caught up.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::commands::run::{serve_metrics, stop_on_signal};
use crate::config::Settings;
use crate::speed::{Sink, SinkError, SinkSummary};

#[derive(Debug, thiserror::Error)]
pub enum SinkCommandError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

pub fn sink(
    settings: Settings,
    runtime: &Runtime,
    until_idle: Option<Duration>,
) -> Result<SinkSummary, SinkCommandError> {
    let health = serve_metrics(&settings, runtime)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    stop_on_signal(runtime, shutdown.clone());
    let sink = Sink::start(settings, runtime.handle().clone(), shutdown)?;
    health.set_ready(true);
    let summary = sink.run(until_idle);
    health.set_ready(false);
    Ok(summary?)
}
