//! `sink-clickhouse`: the ClickHouse sink, until a signal or (with
//! `--until-idle`) until caught up.

use std::time::Duration;

use tokio::runtime::Runtime;

use crate::clickhouse::sink::{ClickHouseSink, ClickHouseSinkError, ClickHouseSinkSummary};
use crate::config::Settings;
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum SinkClickHouseError {
    #[error(transparent)]
    ClickHouseSink(#[from] ClickHouseSinkError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

pub fn sink_clickhouse(
    settings: Settings,
    runtime: &Runtime,
    until_idle: Option<Duration>,
) -> Result<ClickHouseSinkSummary, SinkClickHouseError> {
    let health = crate::metrics::serve_if(settings.metrics_addr, runtime.handle())?;
    let shutdown = Shutdown::on_signals(runtime.handle());
    // A service waits out a dropped table or refused credentials, unready; a job ends.
    let sink = ClickHouseSink::start(settings, runtime.handle().clone(), shutdown, until_idle.is_none())?;
    health.set_ready(true);
    let summary = sink.run(until_idle);
    health.set_ready(false);
    Ok(summary?)
}

impl std::fmt::Display for ClickHouseSinkSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "loaded {} rows into ClickHouse in {} batches ({} retries, {} unreadable records)",
            self.rows, self.batches, self.retries, self.unreadable
        )
    }
}
