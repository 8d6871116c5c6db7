//! The speed-layer sink: the processed topic into ClickHouse.
//!
//! For each batch: collect records until the trigger interval ends or the row limit is
//! hit; insert them in one request; only after ClickHouse acknowledged it, commit the
//! offsets to the sink's own consumer group. An insert that fails is retried with
//! backoff, for as long as it takes, without reading further: nothing is skipped, and a
//! retry of an insert that did land is harmless (the table collapses copies; where the
//! server supports it, the deduplication token makes it drop the retry outright).
//!
//! The sink holds every partition of the processed topic (static assignment) and starts
//! each from the group's committed offset, or from the beginning when there is none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::config::{ClickHouseIngest, Settings};
use crate::kafka::{self, KafkaFailure, LagReporting, Role};
use crate::sink::clickhouse::{ClickHouse, ClickHouseError, Layout};
use crate::sink::dlq;
use crate::sink::processed::ProcessedRecord;
use crate::sink::producer::{OutRecord, Output, ProduceError};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("ClickHouse table {table} does not exist: run `idempipe setup`")]
    NoTable { table: String },
    #[error("consumer failed: {0}")]
    Consumer(KafkaError),
    #[error("sending unreadable records to the dead-letter topic failed: {0}")]
    DeadLetters(#[from] ProduceError),
    #[error(
        "`clickhouse_ingest` is \"kafka-engine\": ClickHouse loads the topic itself, in the same consumer \
         group; run the sink only with `clickhouse_ingest = \"sink\"`"
    )]
    KafkaEngineConfigured,
}

/// The longest wait between two attempts of a failing insert.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What a sink run did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct SinkSummary {
    pub batches: u64,
    pub rows: u64,
    /// Records that are not processed-event JSON: sent to the dead-letter topic (class
    /// `unreadable_processed_record`), not loaded.
    pub unreadable: u64,
    /// Offsets the broker skipped (retention deleted records before the sink read them:
    /// `reconcile` restores what Delta holds).
    pub offset_gaps: u64,
    /// Insert attempts that failed and were retried.
    pub retries: u64,
}

/// What the sink waits for when it runs beside the processor (inside `run`): the
/// processor's end, and the last offset it had acknowledged on each partition of the
/// processed topic. With `until_idle`, the sink stops only once it has loaded those.
#[derive(Debug, Default)]
pub struct Upstream {
    finished: Mutex<Option<BTreeMap<i32, i64>>>,
}

impl Upstream {
    /// The processor stopped, having sent up to `last_sent` (last offset per partition).
    pub fn finish(&self, last_sent: BTreeMap<i32, i64>) {
        if let Ok(mut f) = self.finished.lock() {
            *f = Some(last_sent);
        }
    }

    fn last_sent(&self) -> Option<BTreeMap<i32, i64>> {
        self.finished.lock().ok().and_then(|f| f.clone())
    }
}

/// The sink: a consumer of the processed topic and a ClickHouse connection.
pub struct Sink {
    settings: Settings,
    consumer: BaseConsumer<LagReporting>,
    /// For dead letters (records of the processed topic that are not ours).
    output: Output,
    clickhouse: ClickHouse,
    /// Made once per process and part of every insert token: a retry in this process
    /// carries the same token, while the same offsets read again after a restart (or from
    /// a recreated topic) never match an old insert.
    token_nonce: String,
    layout: Layout,
    partitions: Vec<i32>,
    runtime: Handle,
    shutdown: Arc<AtomicBool>,
    /// The processor beside it, when the sink runs inside `run`.
    upstream: Option<Arc<Upstream>>,
    /// Per partition, the first offset not yet loaded.
    next: BTreeMap<i32, i64>,
}

impl Sink {
    /// Connects to ClickHouse (waiting, with backoff, while it does not answer), checks
    /// the table, and assigns every partition at the group's committed offsets. Blocks;
    /// call it outside the runtime's workers.
    pub fn start(settings: Settings, runtime: Handle, shutdown: Arc<AtomicBool>) -> Result<Self, SinkError> {
        if settings.clickhouse.ingest == ClickHouseIngest::KafkaEngine {
            return Err(SinkError::KafkaEngineConfigured);
        }
        let clickhouse = retrying(&shutdown, "connecting to ClickHouse", || {
            runtime.block_on(ClickHouse::connect(&settings.clickhouse))
        })?;
        let layout = retrying(&shutdown, "reading the ClickHouse table", || runtime.block_on(clickhouse.layout()))?
            .ok_or_else(|| SinkError::NoTable { table: clickhouse.table() })?;
        let topic = settings.topics.processed.clone();
        let consumer: BaseConsumer<LagReporting> = kafka::client_config(
            &settings,
            Role::Consumer,
            &[
                ("group.id", settings.clickhouse.group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "true"),
                ("auto.offset.reset", "earliest"),
                ("statistics.interval.ms", kafka::STATS_INTERVAL_MS),
            ],
        )
        .create_with_context(LagReporting { topic: topic.clone(), report: crate::metrics::clickhouse_sink_lag })
        .map_err(kafka::client_error(&settings))?;
        let count = kafka::partition_count(&settings, consumer.client(), Some(&topic))? as i32;
        let partitions: Vec<i32> = (0..count).collect();
        let mut wanted = TopicPartitionList::new();
        for p in &partitions {
            wanted.add_partition(&topic, *p);
        }
        let committed =
            consumer.committed_offsets(wanted, kafka::METADATA_TIMEOUT).map_err(kafka::client_error(&settings))?;
        let mut tpl = TopicPartitionList::new();
        let mut next = BTreeMap::new();
        for p in &partitions {
            let offset = match committed.find_partition(&topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(n)) if n >= 0 => {
                    next.insert(*p, n);
                    Offset::Offset(n)
                }
                _ => Offset::Beginning,
            };
            tracing::info!(partition = p, ?offset, group = %settings.clickhouse.group, "sink starts");
            tpl.add_partition_offset(&topic, *p, offset).map_err(kafka::client_error(&settings))?;
        }
        consumer.assign(&tpl).map_err(kafka::client_error(&settings))?;
        tracing::info!(
            server = %clickhouse.version().text,
            table = %clickhouse.table(),
            ?layout,
            dedup_token = clickhouse.version().has_dedup_token(),
            "ClickHouse sink ready"
        );
        let output = Output::new(&settings)?;
        let token_nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros())
        );
        Ok(Self {
            settings,
            consumer,
            output,
            clickhouse,
            token_nonce,
            layout,
            partitions,
            runtime,
            shutdown,
            upstream: None,
            next,
        })
    }

    /// Makes `until_idle` wait for the processor beside it (see [`Upstream`]), and count
    /// the idle time from its end.
    pub fn after(mut self, upstream: Arc<Upstream>) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// Whether every record the processor beside it sent is loaded (true when alone).
    fn upstream_loaded(&self, last_sent: Option<&BTreeMap<i32, i64>>) -> bool {
        match (&self.upstream, last_sent) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some(sent)) => sent.iter().all(|(p, last)| self.next.get(p).is_some_and(|n| n > last)),
        }
    }

    /// Loads batches until shutdown, or with `until_idle`, until every partition is
    /// loaded and nothing arrived for that long.
    pub fn run(mut self, until_idle: Option<Duration>) -> Result<SinkSummary, SinkError> {
        let mut summary = SinkSummary::default();
        let mut last_message = Instant::now();
        let mut at_end: BTreeSet<i32> = BTreeSet::new();
        let limits = (self.settings.clickhouse.trigger, self.settings.clickhouse.max_batch_rows.get());
        let mut upstream_running = self.upstream.is_some();
        loop {
            let deadline = Instant::now() + limits.0;
            let mut rows: Vec<ProcessedRecord> = Vec::new();
            let mut dead: Vec<OutRecord> = Vec::new();
            // Per partition: (first, last) offset read in this batch.
            let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
            while !self.shutdown.load(Ordering::Relaxed) && rows.len() < limits.1 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match self.consumer.poll(left.min(Duration::from_millis(100))) {
                    Some(Ok(m)) => {
                        last_message = Instant::now();
                        let (p, offset) = (m.partition(), m.offset());
                        at_end.remove(&p);
                        if let Some(expected) = self.next.get(&p)
                            && offset > *expected
                            && !ranges.contains_key(&p)
                        {
                            summary.offset_gaps += (offset - expected) as u64;
                            tracing::warn!(
                                partition = p,
                                expected,
                                got = offset,
                                "offset gap on the processed topic (retention?): run `idempipe reconcile` \
                                 to restore from Delta what ClickHouse lacks"
                            );
                        }
                        ranges.entry(p).and_modify(|r| r.1 = offset).or_insert((offset, offset));
                        match ProcessedRecord::from_json(m.payload().unwrap_or_default()) {
                            Ok(record) => rows.push(record),
                            Err(e) => {
                                summary.unreadable += 1;
                                tracing::error!(
                                    partition = p,
                                    offset,
                                    error = %e,
                                    "not a processed-event record: sent to the dead-letter topic"
                                );
                                dead.push(self.dead_letter(&m, &e.to_string()));
                            }
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(p))) => {
                        at_end.insert(p);
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                    None => {}
                }
            }
            if !ranges.is_empty() {
                if !dead.is_empty() {
                    self.runtime.block_on(self.output.send_all(dead))?;
                }
                let token = format!("{}/{}", self.token_nonce, dedup_token(&self.settings.topics.processed, &ranges));
                let mut attempt = 0_u32;
                loop {
                    match self.runtime.block_on(self.clickhouse.insert(self.layout, &rows, Some(&token))) {
                        Ok(()) => break,
                        Err(e) if !e.is_transient() => return Err(e.into()),
                        Err(e) => {
                            if self.shutdown.load(Ordering::Relaxed) {
                                // Nothing committed: the batch is read again on restart.
                                tracing::warn!(error = %e, "shutdown during a failing insert: leaving the batch uncommitted");
                                return Ok(summary);
                            }
                            attempt += 1;
                            summary.retries += 1;
                            crate::metrics::clickhouse_insert_retried();
                            let backoff = backoff(attempt);
                            tracing::warn!(attempt, error = %e, ?backoff, rows = rows.len(), "ClickHouse insert failed; retrying");
                            sleep_unless_shutdown(&self.shutdown, backoff);
                        }
                    }
                }
                self.commit(&ranges);
                for (p, (_, last)) in &ranges {
                    self.next.insert(*p, last + 1);
                }
                crate::metrics::clickhouse_loaded(rows.len());
                summary.batches += 1;
                summary.rows += rows.len() as u64;
                tracing::debug!(rows = rows.len(), "ClickHouse batch loaded");
            }
            if self.shutdown.load(Ordering::Relaxed) {
                return Ok(summary);
            }
            let last_sent = self.upstream.as_ref().and_then(|u| u.last_sent());
            if upstream_running && last_sent.is_some() {
                // The idle time counts from now: records sent just before may still come.
                upstream_running = false;
                last_message = Instant::now();
            }
            if let Some(idle) = until_idle
                && !upstream_running
                && self.upstream_loaded(last_sent.as_ref())
                && last_message.elapsed() >= idle
                && self.partitions.iter().all(|p| at_end.contains(p))
            {
                tracing::info!(?idle, "ClickHouse sink caught up and idle: stopping");
                return Ok(summary);
            }
        }
    }

    /// A dead letter for a record of the processed topic that is not ours.
    fn dead_letter(&self, m: &rdkafka::message::BorrowedMessage<'_>, reason: &str) -> OutRecord {
        let dead = crate::batch::DeadLetter {
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            rejection: crate::event::Rejection::new(
                crate::event::RejectClass::UnreadableProcessedRecord,
                format!("not a processed-event record: {reason}"),
            ),
            partition: m.partition(),
            offset: m.offset(),
        };
        dlq::record(&self.settings.topics.dlq, &self.settings.topics.processed, &dead)
    }

    /// Commits the offsets after each range. A failed commit is logged, not fatal: the
    /// records are re-read and re-inserted after a restart, which is harmless.
    fn commit(&self, ranges: &BTreeMap<i32, (i64, i64)>) {
        let mut tpl = TopicPartitionList::new();
        for (p, (_, last)) in ranges {
            if let Err(e) = tpl.add_partition_offset(&self.settings.topics.processed, *p, Offset::Offset(last + 1)) {
                tracing::warn!(error = %e, "cannot build the offset commit");
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
            tracing::warn!(error = %e, "committing the sink's offsets failed (they will be re-read after a restart)");
        }
    }
}

/// The insert's deduplication token: the topic and each partition's offset range, so an
/// identical retry carries the same token and a different batch never does.
pub fn dedup_token(topic: &str, ranges: &BTreeMap<i32, (i64, i64)>) -> String {
    let parts: Vec<String> = ranges.iter().map(|(p, (first, last))| format!("{p}:{first}-{last}")).collect();
    format!("{topic}/{}", parts.join(","))
}

fn backoff(attempt: u32) -> Duration {
    (Duration::from_millis(250) * 2_u32.saturating_pow(attempt.min(10))).min(MAX_BACKOFF)
}

fn sleep_unless_shutdown(shutdown: &AtomicBool, total: Duration) {
    let until = Instant::now() + total;
    while !shutdown.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100).min(until.saturating_duration_since(Instant::now())));
    }
}

/// Runs `f` until it succeeds or shutdown is requested, backing off between attempts.
fn retrying<T>(
    shutdown: &AtomicBool,
    what: &str,
    mut f: impl FnMut() -> Result<T, ClickHouseError>,
) -> Result<T, SinkError> {
    let mut attempt = 0;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if shutdown.load(Ordering::Relaxed) || !e.is_transient() => return Err(e.into()),
            Err(e) => {
                attempt += 1;
                let wait = backoff(attempt);
                tracing::warn!(attempt, error = %e, ?wait, "{what} failed; retrying");
                sleep_unless_shutdown(shutdown, wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_every_range_and_differ_between_batches() {
        let a = BTreeMap::from([(0, (5, 9)), (3, (0, 2))]);
        let b = BTreeMap::from([(0, (10, 12))]);
        assert_eq!(dedup_token("processed", &a), "processed/0:5-9,3:0-2");
        assert_ne!(dedup_token("processed", &a), dedup_token("processed", &b));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert!(backoff(3) > backoff(2));
        assert_eq!(backoff(50), MAX_BACKOFF);
    }
}
