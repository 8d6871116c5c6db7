//! The ClickHouse sink: the processed topic into ClickHouse.
//!
//! For each batch: collect records until the trigger interval ends or the row or byte
//! limit is hit; load them ([`ClickHouseSink::load`]); only after ClickHouse acknowledged
//! every row (or refused it, and it went to the dead-letter topic), commit the offsets to
//! the sink's own consumer group. Nothing is skipped, and a retry of an insert that did
//! land is harmless (the table collapses copies; where the server supports it, the
//! deduplication token makes it drop the retry outright).
//!
//! Loading never stalls on a valid row:
//! - rows go in inserts of at most [`crate::clickhouse::MAX_PARTITIONS_PER_INSERT`] ClickHouse partitions
//!   (months), which current servers require;
//! - a transient failure (unreachable, slow, busy) is retried with backoff for as long
//!   as it takes; a fatal one (the table dropped, credentials refused) too, the sink
//!   reporting itself unready meanwhile, so that it resumes once the table is back (with
//!   `--until-idle` it stops with the error instead);
//! - an insert ClickHouse refuses (a data error: any other server code), or one that
//!   times out while the server answers, is split in halves until the refused rows are
//!   alone; a row refused alone three times goes to the dead-letter topic (class
//!   `clickhouse_refused`, the server's message) and the others load.
//!
//! The sink holds every partition of the processed topic (static assignment) and starts
//! each from the group's committed offset, or from the beginning when there is none.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::clickhouse::{ClickHouse, ClickHouseError, Failure, Layout, insert_runs, partition_of};
use crate::config::{ClickHouseIngest, Settings, Topics};
use crate::kafka::{self, KafkaFailure, LagReporting, Role};
use crate::output::{OutRecord, Output, ProduceError};
use crate::output::{dlq, processed};
use crate::retry::Backoff;
use crate::source::{self, Collector, Positions};
use crate::table::StoredRow;

#[derive(Debug, thiserror::Error)]
pub enum ClickHouseSinkError {
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("consumer failed: {0}")]
    Consumer(KafkaError),
    #[error("a Kafka client met an error no retry mends, so the ClickHouse sink stops: {0}")]
    FatalKafka(String),
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

/// The wait between attempts of a failing insert or connection: 500 ms doubling to
/// [`MAX_BACKOFF`].
const BACKOFF: Backoff = Backoff { base: Duration::from_millis(250), cap: MAX_BACKOFF };

/// What a sink run did.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ClickHouseSinkSummary {
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
    /// Rows ClickHouse refused on their own: sent to the dead-letter topic (class
    /// `clickhouse_refused`), not loaded.
    pub refused: u64,
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
pub struct ClickHouseSink {
    settings: Settings,
    consumer: BaseConsumer<LagReporting>,
    /// For dead letters (records of the processed topic that are not ours).
    output: Output,
    clickhouse: ClickHouse,
    /// Made once per process and part of every insert token: a retry in this process
    /// carries the same token, while the same offsets read again after a restart (or from
    /// a recreated topic) never match an old insert.
    token_nonce: String,
    /// Positions moved back so far (a recreated topic): part of every insert token, so
    /// that records read again at the same offsets are never taken for a retry.
    resets: u64,
    layout: Layout,
    runtime: Handle,
    shutdown: Arc<AtomicBool>,
    /// The processor beside it, when the sink runs inside `run`.
    upstream: Option<Arc<Upstream>>,
    /// Whether a fatal ClickHouse failure is waited out (a service) or ends the sink.
    patient: bool,
    /// Per partition, the next offset to read (`None`: from the beginning, nothing
    /// committed); after each insert, the first offset not yet loaded.
    positions: Positions,
    /// Whether a consumer error came since the last check of the partitions that found
    /// them all in range: until one does, the broker's offset listing is believed over
    /// this consumer's reads ([`source::ranges::out_of_range`]).
    errors_since_check: bool,
    /// The processed topic's partition count when last looked at, and when that was.
    partitions: i32,
    partitions_checked: Instant,
}

impl ClickHouseSink {
    /// Connects to ClickHouse (waiting, with backoff, while it does not answer), checks
    /// the table, and assigns every partition at the group's committed offsets. Blocks;
    /// call it outside the runtime's workers. `patient`: wait, unready, while the table
    /// is missing or credentials are refused (a service); else fail at once (a job with
    /// `--until-idle`).
    pub fn start(
        settings: Settings,
        runtime: Handle,
        shutdown: Arc<AtomicBool>,
        patient: bool,
    ) -> Result<Self, ClickHouseSinkError> {
        if settings.clickhouse.ingest == ClickHouseIngest::KafkaEngine {
            return Err(ClickHouseSinkError::KafkaEngineConfigured);
        }
        let clickhouse = retrying(&shutdown, patient, "connecting to ClickHouse", || {
            runtime.block_on(ClickHouse::connect(&settings.clickhouse))
        })?;
        let layout = retrying(&shutdown, patient, "reading the ClickHouse table", || {
            runtime.block_on(clickhouse.layout())?.ok_or_else(|| clickhouse.missing_table())
        })?;
        let topic = settings.topics.processed.clone();
        let consumer: BaseConsumer<LagReporting> = kafka::client_config(
            &settings,
            Role::Consumer,
            &[
                ("group.id", settings.clickhouse.group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "true"),
                // Starts are set explicitly; one the broker does not hold is handled by
                // `check_partitions` (read on from the first offset held).
                ("auto.offset.reset", "error"),
                ("statistics.interval.ms", kafka::STATS_INTERVAL_MS),
            ],
        )
        .create_with_context(LagReporting { topic: topic.clone(), report: crate::metrics::clickhouse_sink_lag })
        .map_err(kafka::client_error(&settings))?;
        let count = kafka::partition_count(&settings, consumer.client(), Some(&topic))? as i32;
        let next = committed_starts(&settings, &consumer, 0..count)?;
        let tpl = assignment(&topic, &next).map_err(kafka::client_error(&settings))?;
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
            resets: 0,
            layout,
            runtime,
            shutdown,
            upstream: None,
            patient,
            positions: Positions::new(next),
            errors_since_check: false,
            partitions: count,
            partitions_checked: Instant::now(),
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
            (Some(_), Some(sent)) => {
                sent.iter().all(|(p, last)| self.positions.next.get(p).is_some_and(|n| n.is_some_and(|n| n > *last)))
            }
        }
    }

    /// Loads batches until shutdown, or with `until_idle`, until every partition is
    /// loaded and nothing arrived for that long.
    pub fn run(mut self, until_idle: Option<Duration>) -> Result<ClickHouseSinkSummary, ClickHouseSinkError> {
        let mut summary = ClickHouseSinkSummary::default();
        let mut upstream_running = self.upstream.is_some();
        loop {
            let mut batch = SinkBatch {
                rows: Vec::new(),
                sources: Vec::new(),
                bytes: 0,
                dead: Vec::new(),
                ranges: BTreeMap::new(),
                max_rows: self.settings.clickhouse.max_batch_rows.get(),
                max_bytes: self.settings.clickhouse.max_batch_bytes.get(),
                topics: &self.settings.topics,
                max_record_bytes: self.settings.max_record_bytes(),
                summary: &mut summary,
                consumer_error: false,
            };
            let deadline = Instant::now() + self.settings.clickhouse.trigger;
            let Ok(()) = source::collect(&self.consumer, &mut self.positions, &mut batch, deadline, &self.shutdown);
            if let Some(fatal) = kafka::fatal_client_error() {
                return Err(ClickHouseSinkError::FatalKafka(fatal));
            }
            let SinkBatch { rows, sources, dead, ranges, consumer_error, .. } = batch;
            self.errors_since_check |= consumer_error;
            if !ranges.is_empty() {
                if !dead.is_empty() {
                    self.runtime.block_on(self.output.send_all(dead))?;
                }
                // The reset count: offsets read again after a reset are other records.
                let token = format!(
                    "{}-{}/{}",
                    self.token_nonce,
                    self.resets,
                    dedup_token(&self.settings.topics.processed, &ranges)
                );
                let (rows, sources) = by_partition(self.layout, rows, sources);
                let Some(refused) = self.load(&rows, &token, &mut summary)? else {
                    // Nothing committed: the batch is read again on restart.
                    tracing::warn!("shutdown during a failing insert: leaving the batch uncommitted");
                    return Ok(summary);
                };
                if !refused.is_empty() {
                    let topics = &self.settings.topics;
                    let max = self.settings.max_record_bytes();
                    let letters: Vec<OutRecord> =
                        refused.iter().map(|(i, message)| refused_letter(topics, &sources[*i], message, max)).collect();
                    self.runtime.block_on(self.output.send_all(letters))?;
                    summary.refused += refused.len() as u64;
                    crate::metrics::clickhouse_refused(refused.len());
                }
                self.commit(&ranges);
                let loaded = rows.len() - refused.len();
                crate::metrics::clickhouse_loaded(loaded);
                summary.batches += 1;
                summary.rows += loaded as u64;
                tracing::debug!(rows = rows.len(), "ClickHouse batch loaded");
            }
            if self.shutdown.load(Ordering::Relaxed) {
                return Ok(summary);
            }
            if self.partitions_checked.elapsed() >= PARTITION_CHECK_EVERY {
                self.partitions_checked = Instant::now();
                self.check_partitions()?;
            }
            let last_sent = self.upstream.as_ref().and_then(|u| u.last_sent());
            if upstream_running && last_sent.is_some() {
                // The idle time counts from now: records sent just before may still come.
                upstream_running = false;
                self.positions.last_message = Instant::now();
            }
            if let Some(idle) = until_idle
                && !upstream_running
                && self.upstream_loaded(last_sent.as_ref())
                && self.positions.idle_for(idle)
            {
                tracing::info!(?idle, "ClickHouse sink caught up and idle: stopping");
                return Ok(summary);
            }
        }
    }

    /// Loads one batch's rows (sorted by ClickHouse partition: [`by_partition`]) as the
    /// module's doc says. Returns the rows ClickHouse refused alone (index, server
    /// message), or `None` when shutdown came during a failing insert (nothing may be
    /// committed then); an error only for a fatal failure when not `patient`.
    fn load(
        &self,
        rows: &[StoredRow],
        token: &str,
        summary: &mut ClickHouseSinkSummary,
    ) -> Result<Option<Vec<(usize, String)>>, ClickHouseSinkError> {
        let mut pieces = insert_runs(self.layout, rows.iter().map(|r| r.event_time_us));
        pieces.reverse();
        let mut refused = Vec::new();
        while let Some(piece) = pieces.pop() {
            // Pieces are the same for the same batch, so a retry carries the same token.
            let piece_token = format!("{token}#{}-{}", piece.start, piece.end);
            let mut failures = 0_u32;
            loop {
                let inserted = self.runtime.block_on(self.clickhouse.insert(
                    self.layout,
                    &rows[piece.clone()],
                    Some(&piece_token),
                ));
                let e = match inserted {
                    Ok(()) => {
                        crate::metrics::service_recovered("clickhouse");
                        break;
                    }
                    Err(e) => e,
                };
                crate::metrics::service_error("clickhouse", &e.to_string());
                summary.retries += 1;
                crate::metrics::clickhouse_insert_retried();
                failures += 1;
                let failure = match e.failure() {
                    // A server that answers but does not finish this insert in time: it
                    // is too heavy (or holds a row it chokes on), not an outage.
                    Failure::Transient
                        if matches!(e, ClickHouseError::Timeout { .. })
                            && self.runtime.block_on(self.clickhouse.ping()).is_ok() =>
                    {
                        Failure::Refused
                    }
                    f => f,
                };
                match failure {
                    Failure::Refused if piece.len() > 1 => {
                        tracing::warn!(rows = piece.len(), error = %e, "ClickHouse refused an insert: splitting it to find the rows it refuses");
                        let mid = piece.start + piece.len() / 2;
                        pieces.push(mid..piece.end);
                        pieces.push(piece.start..mid);
                        break;
                    }
                    Failure::Refused if failures >= REFUSALS_BEFORE_DEAD_LETTER => {
                        let row = &rows[piece.start];
                        let message = e.server_message().unwrap_or_else(|| e.to_string());
                        tracing::error!(
                            dedup_key = %row.dedup_key,
                            partition = row.source_partition,
                            offset = row.source_offset,
                            error = %message,
                            "ClickHouse refuses this event on its own: sent to the dead-letter topic"
                        );
                        refused.push((piece.start, message));
                        break;
                    }
                    Failure::Fatal if !self.patient => return Err(e.into()),
                    _ => {}
                }
                if self.shutdown.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                let backoff = BACKOFF.delay(failures);
                tracing::warn!(attempt = failures, error = %e, ?backoff, rows = piece.len(), "ClickHouse insert failed; retrying");
                BACKOFF.wait(failures, &self.shutdown);
            }
        }
        Ok(Some(refused))
    }

    /// Compares the partitions read with the broker's (between inserts, so nothing
    /// collected is lost): a partition whose position the broker no longer holds is read
    /// on from its first offset; new partitions of the processed topic are read from the
    /// group's committed offsets, or from the beginning, the others staying where they are.
    fn check_partitions(&mut self) -> Result<(), ClickHouseSinkError> {
        let topic = &self.settings.topics.processed;
        // ClickHouse keeps one row per key whatever is loaded twice, so a position the
        // broker no longer holds is read on from its first offset, with a warning: a
        // recreated topic is loaded again from its start, a truncated one from what is left
        // (`reconcile` repairs what retention deleted unread). A listing that puts a
        // partition's end below what this consumer has read from it, with no consumer
        // error since, is not believed (tansu's memory storage answers so): a topic
        // recreated under the sink fails its fetches instead.
        let read_to = (!self.errors_since_check).then_some(&self.positions.read_to);
        let (resets, answered) = source::ranges::out_of_range(&self.consumer, topic, &self.positions.next, read_to);
        self.errors_since_check &= !(answered && resets.is_empty());
        for reset in resets {
            tracing::warn!(
                partition = reset.partition,
                kind = reset.kind(),
                "{}; the ClickHouse sink reads on from offset {}",
                reset.explain(&format!("the ClickHouse sink's next offset is {}", reset.expected)),
                reset.low
            );
            self.consumer
                .seek(topic, reset.partition, Offset::Offset(reset.low), Duration::from_secs(10))
                .map_err(kafka::client_error(&self.settings))?;
            self.positions.next.insert(reset.partition, Some(reset.low));
            // What was read before the seek says nothing of the partition read now.
            self.positions.read_to.remove(&reset.partition);
            self.positions.at_end.remove(&reset.partition);
            self.resets += 1;
        }
        let Some(now) = self
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(1))
            .ok()
            .and_then(|m| m.topics().iter().find(|t| t.name() == topic).map(|t| t.partitions().len() as i32))
        else {
            return Ok(());
        };
        if now <= self.partitions {
            return Ok(());
        }
        let added = committed_starts(&self.settings, &self.consumer, self.partitions..now)?;
        tracing::warn!(topic = %topic, from = self.partitions, to = now, starts = ?added, "the processed topic has new partitions: reading them");
        let mut next = self.positions.next.clone();
        next.extend(added.clone());
        let tpl = assignment(topic, &next).map_err(kafka::client_error(&self.settings))?;
        self.consumer.assign(&tpl).map_err(kafka::client_error(&self.settings))?;
        self.positions.next.extend(added);
        self.partitions = now;
        Ok(())
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

/// How often the sink looks for new partitions of the processed topic.
const PARTITION_CHECK_EVERY: Duration = Duration::from_secs(10);

/// The next offset to read on each of `partitions`: the group's committed offset, or
/// `None` (from the beginning) where it has none.
fn committed_starts(
    settings: &Settings,
    consumer: &BaseConsumer<LagReporting>,
    partitions: std::ops::Range<i32>,
) -> Result<BTreeMap<i32, Option<i64>>, ClickHouseSinkError> {
    let topic = &settings.topics.processed;
    let mut wanted = TopicPartitionList::new();
    for p in partitions.clone() {
        wanted.add_partition(topic, p);
    }
    let committed =
        consumer.committed_offsets(wanted, kafka::METADATA_TIMEOUT).map_err(kafka::client_error(settings))?;
    Ok(partitions
        .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(n)) if n >= 0 => (p, Some(n)),
            _ => (p, None),
        })
        .collect())
}

/// The assignment of `topic` that reads each partition of `next` from its offset (`None`:
/// the beginning).
fn assignment(topic: &str, next: &BTreeMap<i32, Option<i64>>) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in next {
        tracing::info!(partition = p, ?offset, "sink reads from");
        tpl.add_partition_offset(topic, *p, offset.map_or(Offset::Beginning, Offset::Offset))?;
    }
    Ok(tpl)
}

/// One insert under collection.
struct SinkBatch<'a> {
    rows: Vec<StoredRow>,
    /// Where each row came from, for its dead letter should ClickHouse refuse it.
    sources: Vec<RowSource>,
    /// Bytes of the records taken.
    bytes: usize,
    max_bytes: usize,
    /// Records that are not processed-event JSON, for the dead-letter topic.
    dead: Vec<OutRecord>,
    /// Per partition: (first, last) offset read.
    ranges: BTreeMap<i32, (i64, i64)>,
    max_rows: usize,
    topics: &'a Topics,
    /// The largest dead letter it may send.
    max_record_bytes: usize,
    summary: &'a mut ClickHouseSinkSummary,
    /// Whether a consumer error came during the collection.
    consumer_error: bool,
}

impl Collector for SinkBatch<'_> {
    type Error = std::convert::Infallible;

    fn is_full(&self) -> bool {
        self.rows.len() >= self.max_rows || self.bytes >= self.max_bytes
    }

    fn consumer_error(&mut self, error: KafkaError) {
        tracing::warn!(error = %error, "consumer error");
        self.consumer_error = true;
    }

    fn take(&mut self, m: &BorrowedMessage<'_>, gap: u64) {
        let (p, offset) = (m.partition(), m.offset());
        if gap > 0 {
            self.summary.offset_gaps += gap;
            tracing::warn!(
                partition = p,
                expected = offset - gap as i64,
                got = offset,
                "offset gap on the processed topic (retention?): run `idempipe reconcile` \
                 to restore from Delta what ClickHouse lacks"
            );
        }
        self.ranges.entry(p).and_modify(|r| r.1 = offset).or_insert((offset, offset));
        self.bytes += m.payload_len() + m.key().map_or(0, <[u8]>::len);
        match processed::parse(m.payload().unwrap_or_default()) {
            Ok(record) => {
                self.rows.push(record);
                self.sources.push(RowSource {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    partition: p,
                    offset,
                });
            }
            Err(e) => {
                self.summary.unreadable += 1;
                tracing::error!(
                    partition = p,
                    offset,
                    error = %e,
                    "not a processed-event record: sent to the dead-letter topic"
                );
                self.dead.push(dead_letter(self.topics, m, &e.to_string(), self.max_record_bytes));
            }
        }
    }
}

/// A dead letter for a record of the processed topic that is not ours.
fn dead_letter(topics: &Topics, m: &BorrowedMessage<'_>, reason: &str, max_record_bytes: usize) -> OutRecord {
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
    dlq::record(&topics.dlq, &topics.processed, &dead, max_record_bytes)
}

/// A loaded row's record on the processed topic.
struct RowSource {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    partition: i32,
    offset: i64,
}

/// How many times a row alone in an insert is refused before it is a dead letter (a
/// refusal that passes is not the row's fault).
const REFUSALS_BEFORE_DEAD_LETTER: u32 = 3;

/// The dead letter of a row ClickHouse refused: its processed record, and the server's
/// message.
fn refused_letter(topics: &Topics, source: &RowSource, message: &str, max_record_bytes: usize) -> OutRecord {
    let dead = crate::batch::DeadLetter {
        key: source.key.clone(),
        value: Some(source.value.clone()),
        rejection: crate::event::Rejection::new(
            crate::event::RejectClass::ClickHouseRefused,
            format!("ClickHouse refused the event: {message}"),
        ),
        partition: source.partition,
        offset: source.offset,
    };
    dlq::record(&topics.dlq, &topics.processed, &dead, max_record_bytes)
}

/// `rows` and their sources in the order of their ClickHouse partition (stable within one).
fn by_partition(layout: Layout, rows: Vec<StoredRow>, sources: Vec<RowSource>) -> (Vec<StoredRow>, Vec<RowSource>) {
    let mut pairs: Vec<(StoredRow, RowSource)> = rows.into_iter().zip(sources).collect();
    pairs.sort_by_key(|(r, _)| partition_of(layout, r.event_time_us));
    pairs.into_iter().unzip()
}

/// The insert's deduplication token: the topic and each partition's offset range, so an
/// identical retry carries the same token and a different batch never does.
pub fn dedup_token(topic: &str, ranges: &BTreeMap<i32, (i64, i64)>) -> String {
    let parts: Vec<String> = ranges.iter().map(|(p, (first, last))| format!("{p}:{first}-{last}")).collect();
    format!("{topic}/{}", parts.join(","))
}

/// Runs `f` until it succeeds or shutdown is requested, backing off between attempts:
/// through transient failures, and, when `patient`, through fatal ones too (unready
/// meanwhile: the table may come back).
fn retrying<T>(
    shutdown: &AtomicBool,
    patient: bool,
    what: &str,
    mut f: impl FnMut() -> Result<T, ClickHouseError>,
) -> Result<T, ClickHouseSinkError> {
    let mut attempt = 0;
    loop {
        match f() {
            Ok(v) => {
                crate::metrics::service_recovered("clickhouse");
                return Ok(v);
            }
            Err(e) if shutdown.load(Ordering::Relaxed) || (!patient && e.failure() == Failure::Fatal) => {
                return Err(e.into());
            }
            Err(e) => {
                crate::metrics::service_error("clickhouse", &e.to_string());
                attempt += 1;
                let wait = BACKOFF.delay(attempt);
                tracing::warn!(attempt, error = %e, ?wait, "{what} failed; retrying");
                BACKOFF.wait(attempt, shutdown);
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
        assert_eq!(BACKOFF.delay(1), Duration::from_millis(500));
        assert!(BACKOFF.delay(3) > BACKOFF.delay(2));
        assert_eq!(BACKOFF.delay(50), MAX_BACKOFF);
    }
}
