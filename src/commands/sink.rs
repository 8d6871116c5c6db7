//! `sink-clickhouse`: the built-in speed-layer sink, until a signal or (with
//! `--until-idle`) until caught up.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::commands::run::stop_on_signal;
use crate::config::Settings;
use crate::speed::{Sink, SinkError, SinkSummary};

pub fn sink(settings: Settings, runtime: &Runtime, until_idle: Option<Duration>) -> Result<SinkSummary, SinkError> {
    let shutdown = Arc::new(AtomicBool::new(false));
    stop_on_signal(runtime, shutdown.clone());
    Sink::start(settings, runtime.handle().clone(), shutdown)?.run(until_idle)
}
