//! `status`: where the processor and the ClickHouse sink are, read from the stores
//! themselves (Delta's txn versions, the brokers' watermarks, the sink group's offsets)
//! and the batch log; no running process is asked.

use std::fmt::Write as _;

use serde::Serialize;

use crate::batch_log::{BatchLog, BatchRecord};
use crate::config::{ClickHouseIngest, Settings};
use crate::kafka::ranges::OffsetReset;
use crate::kafka::{self, KafkaFailure};
use crate::table::{AppIds, DeltaError, EventTable};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error("cannot read the batch log: {0}")]
    Log(#[from] std::io::Error),
}

/// The processor's position on one raw-topic partition.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessorPartition {
    pub partition: i32,
    /// The partition's end (the next offset the broker will assign).
    pub end: i64,
    /// The last offset Delta records as processed (the partition's txn version).
    pub stored: Option<i64>,
    /// Messages not yet processed: `end - (stored + 1)`, or everything the broker
    /// still holds when nothing is stored.
    pub lag: i64,
}

/// The ClickHouse sink's position on one processed-topic partition.
#[derive(Debug, Clone, Serialize)]
pub struct SinkPartition {
    pub partition: i32,
    pub end: i64,
    /// The sink group's committed offset (the next it loads).
    pub committed: Option<i64>,
    pub lag: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub delta_path: String,
    pub delta_version: u64,
    pub delta_live_files: usize,
    pub raw_topic: String,
    pub processor: Vec<ProcessorPartition>,
    pub processor_lag: i64,
    pub last_batch: Option<BatchRecord>,
    /// Partitions read on from the broker's first offset because it no longer held the
    /// stored one (`fail_on_data_loss = false`), as the batch log records them.
    pub offset_resets: Vec<OffsetReset>,
    /// Seconds since the last batch ended.
    pub last_batch_age_s: Option<f64>,
    pub processed_topic: String,
    pub clickhouse_group: String,
    pub clickhouse_ingest: ClickHouseIngest,
    pub clickhouse_sink: Vec<SinkPartition>,
    pub clickhouse_sink_lag: i64,
    /// `ok` when ClickHouse answers and holds the events table; else what is wrong (the
    /// ClickHouse sink waits, unready, until it is mended).
    pub clickhouse: String,
}

pub async fn status(settings: &Settings) -> Result<Status, StatusError> {
    let table = EventTable::open(&settings.delta_path).await?;
    let raw = kafka::partition_offsets(settings, &settings.topics.raw, None)?;
    let stored = table.stored_offsets(&AppIds::of(settings), raw.iter().map(|p| p.partition)).await?;
    let processor: Vec<ProcessorPartition> = raw
        .iter()
        .map(|p| {
            let stored = stored.get(&p.partition).copied();
            let from = stored.map_or(p.low, |s| (s + 1).max(p.low));
            ProcessorPartition { partition: p.partition, end: p.high, stored, lag: (p.high - from).max(0) }
        })
        .collect();
    let sink: Vec<SinkPartition> =
        kafka::partition_offsets(settings, &settings.topics.processed, Some(&settings.clickhouse.group))?
            .into_iter()
            .map(|p| {
                let from = p.committed.unwrap_or(p.low).max(p.low);
                SinkPartition {
                    partition: p.partition,
                    end: p.high,
                    committed: p.committed,
                    lag: (p.high - from).max(0),
                }
            })
            .collect();
    let log = BatchLog::new(settings.batch_log.clone()).read()?;
    let offset_resets: Vec<OffsetReset> = log.iter().flat_map(|r| r.offset_resets.iter().cloned()).collect();
    let last_batch = log.into_iter().rev().find(|r| !r.is_reset_only());
    let last_batch_age_s = last_batch
        .as_ref()
        .and_then(|b| b.ended_at)
        .map(|ended| (crate::event::EventTime::now().micros() - ended.micros()) as f64 / 1e6);
    let clickhouse = match crate::clickhouse::ClickHouse::connect(&settings.clickhouse).await {
        Ok(c) => match c.layout().await {
            Ok(Some(_)) => "ok".to_owned(),
            Ok(None) => c.missing_table().to_string(),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    };
    Ok(Status {
        clickhouse,
        delta_path: settings.delta_path.to_string(),
        delta_version: table.version(),
        delta_live_files: table.live_files(),
        raw_topic: settings.topics.raw.clone(),
        processor_lag: processor.iter().map(|p| p.lag).sum(),
        processor,
        last_batch,
        last_batch_age_s,
        offset_resets,
        processed_topic: settings.topics.processed.clone(),
        clickhouse_group: settings.clickhouse.group.clone(),
        clickhouse_ingest: settings.clickhouse.ingest,
        clickhouse_sink_lag: sink.iter().map(|p| p.lag).sum(),
        clickhouse_sink: sink,
    })
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_table())
    }
}

impl Status {
    /// A plain-text report.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let opt = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let _ = writeln!(
            out,
            "delta table      {} (version {}, {} live files)",
            self.delta_path, self.delta_version, self.delta_live_files
        );
        match (&self.last_batch, self.last_batch_age_s) {
            (Some(b), age) => {
                let _ = writeln!(
                    out,
                    "last batch       {} ended {}{}: {} in, {} inserted, delta version {}",
                    b.batch_id,
                    b.ended_at.map_or_else(|| "?".to_owned(), |t| t.to_string()),
                    age.map_or_else(String::new, |a| format!(" ({a:.0} s ago)")),
                    b.events_in,
                    b.inserted.map_or_else(|| "?".to_owned(), |i| i.to_string()),
                    b.delta_version
                );
            }
            (None, _) => {
                let _ = writeln!(out, "last batch       none logged");
            }
        }
        for reset in &self.offset_resets {
            let lost = reset.lost.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
            let _ = writeln!(out, "offset reset     ({}, {lost} lost) {reset}", reset.kind());
        }
        let _ = writeln!(out, "\nprocessor on {} (lag {})", self.raw_topic, self.processor_lag);
        let _ = writeln!(out, "{:>9} {:>12} {:>14} {:>10}", "partition", "end", "stored offset", "lag");
        for p in &self.processor {
            let _ = writeln!(out, "{:>9} {:>12} {:>14} {:>10}", p.partition, p.end, opt(p.stored), p.lag);
        }
        let _ = writeln!(
            out,
            "\nclickhouse sink ({:?}, group {}) on {} (lag {})",
            self.clickhouse_ingest, self.clickhouse_group, self.processed_topic, self.clickhouse_sink_lag
        );
        let _ = writeln!(out, "clickhouse       {}", self.clickhouse);
        let _ = writeln!(out, "{:>9} {:>12} {:>14} {:>10}", "partition", "end", "committed", "lag");
        for p in &self.clickhouse_sink {
            let _ = writeln!(out, "{:>9} {:>12} {:>14} {:>10}", p.partition, p.end, opt(p.committed), p.lag);
        }
        out
    }
}
