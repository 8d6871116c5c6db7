//! `run`: the stream processor, until a signal or (with `--until-idle`) until caught up;
//! with `clickhouse_in_run`, the ClickHouse sink runs beside it in a thread.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::clickhouse::sink::{ClickHouseSink, ClickHouseSinkError, Upstream};
use crate::config::Settings;
use crate::pipeline::{Pipeline, PipelineError, RunSummary};
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("ClickHouse sink: {0}")]
    ClickHouseSink(#[from] ClickHouseSinkError),
    #[error("the ClickHouse sink thread panicked")]
    SinkPanicked,
    #[error("cannot start the ClickHouse sink thread: {0}")]
    SinkThread(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaFailure),
}

/// Runs the processor on the calling thread (it blocks), using `runtime` for the async
/// parts. SIGINT and SIGTERM stop it after the batch in progress.
pub fn run(settings: Settings, runtime: &Runtime, until_idle: Option<Duration>) -> Result<RunSummary, RunError> {
    // A topic that would refuse a record stops nothing later: it is refused now.
    runtime.block_on(crate::kafka::check_output_topics(&settings))?;
    let health = crate::metrics::serve_if(settings.metrics_addr, runtime.handle())?;
    let shutdown = Shutdown::on_signals(runtime.handle());
    let upstream = Arc::new(Upstream::default());
    let sink = settings.clickhouse.in_run.then(|| {
        let (settings, handle, shutdown) = (settings.clone(), runtime.handle().clone(), shutdown.clone());
        let done = upstream.clone();
        std::thread::Builder::new().name("clickhouse-sink".into()).spawn(move || {
            // The speed layer never holds the batch layer back: a failing sink is
            // unready and (as a service) waits for ClickHouse; if it stops, the processor
            // goes on, and `run` reports the sink's error at its end.
            let result = ClickHouseSink::start(settings, handle, shutdown, until_idle.is_none())
                .and_then(|s| s.after(done).run(until_idle));
            if let Err(e) = &result {
                tracing::error!(error = %e, "the ClickHouse sink stopped; the processor goes on");
                crate::metrics::service_failed("clickhouse", &e.to_string());
            }
            result
        })
    });
    let sink = match sink {
        Some(Ok(handle)) => Some(handle),
        Some(Err(e)) => return Err(RunError::SinkThread(e)),
        None => None,
    };
    let processed_topic = settings.topics.processed.clone();
    let (processed, delivered) = match Pipeline::start(settings, runtime.handle().clone(), shutdown.clone()) {
        Ok(pipeline) => {
            let delivered = pipeline.delivered();
            health.set_ready(true);
            let result = pipeline.run(until_idle);
            health.set_ready(false);
            (result, Some(delivered))
        }
        Err(e) => (Err(e), None),
    };
    let last_sent = delivered
        .and_then(|d| {
            d.lock()
                .ok()
                .map(|m| m.iter().filter(|((t, _), _)| *t == processed_topic).map(|((_, p), o)| (*p, *o)).collect())
        })
        .unwrap_or_default();
    upstream.finish(last_sent);
    if processed.is_err() || until_idle.is_none() {
        shutdown.request();
    }
    // With --until-idle the sink stops by itself once it has loaded everything.
    let sunk = sink.map(|handle| handle.join());
    let summary = processed?;
    if let Some(joined) = sunk {
        let sunk = joined.map_err(|_| RunError::SinkPanicked)??;
        tracing::info!(rows = sunk.rows, batches = sunk.batches, "ClickHouse sink stopped");
    }
    Ok(summary)
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "processed {} batches: {} events in, {} invalid, {} duplicates, {} inserted",
            self.batches, self.events_in, self.invalid, self.duplicates, self.inserted
        )
    }
}
