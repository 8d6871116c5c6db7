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
//! - an insert ClickHouse refuses (a data error, a code it does not know, an answer
//!   without a code), or one that times out, while the server answers `SELECT 1`, is
//!   split in halves until the refused rows are alone (a server that does not answer is
//!   waited out instead: an outage is no refusal);
//! - a row refused alone is a dead letter (class `clickhouse_refused`, the server's
//!   message) only when the refusal is shown to be its own: the server took another
//!   insert since (another part of the same batch, or, when every part was refused, the
//!   last row it took before, inserted again, which the table keeps once), and refused
//!   the row again after. Otherwise (a server-wide condition as likely as a bad row)
//!   nothing is dead-lettered and nothing committed: the rows not loaded begin the next
//!   batch, after a backoff, and are tried again with whatever arrives (with
//!   `--until-idle`, the sink stops with an error naming them instead).
//!
//! The sink holds every partition of the processed topic (static assignment) and starts
//! each from the group's committed offset, or from the beginning when there is none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::clickhouse::{ClickHouse, ClickHouseError, Failure, Layout, insert_runs, partition_of};
use crate::config::{ClickHouseIngest, Settings, Topics};
use crate::kafka::positioned::{self, Collector, Positions};
use crate::kafka::ranges::{self, OffsetReset};
use crate::kafka::{self, KafkaFailure, LagReporting, Role};
use crate::output::{OutRecord, Output, ProduceError};
use crate::output::{dlq, processed};
use crate::retry::{self, Backoff, OnShutdown, Policy, Step, Stopped};
use crate::shutdown::Shutdown;
use crate::table::StoredRow;

#[derive(Debug, thiserror::Error)]
pub enum ClickHouseSinkError {
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("following the Delta table's columns: {0}")]
    Delta(#[from] crate::table::DeltaError),
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
    #[error(
        "ClickHouse refuses {rows} rows (the first, {first}: {message}) and took no other insert meanwhile, \
         so nothing shows the fault is theirs rather than the server's: left uncommitted, they are loaded \
         again at the next start"
    )]
    Unproven { rows: usize, first: String, message: String },
}

/// The longest wait between two attempts of a failing insert.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The wait between attempts of a failing insert or connection: 500 ms doubling to
/// [`MAX_BACKOFF`].
const BACKOFF: Backoff = Backoff { base: Duration::from_millis(250), cap: MAX_BACKOFF };

/// Inserts and connections are retried for as long as it takes: ClickHouse is the speed
/// layer, and nothing is lost while it is away.
const PATIENCE: Policy = Policy { backoff: BACKOFF, max_failures: None };

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
    shutdown: Shutdown,
    /// The processor beside it, when the sink runs inside `run`.
    upstream: Option<Arc<Upstream>>,
    /// Whether a fatal ClickHouse failure is waited out (a service) or ends the sink.
    patient: bool,
    /// Per partition, the next offset to read (`None`: from the beginning, nothing
    /// committed); after each insert, the first offset not yet loaded.
    positions: Positions,
    /// The configuration's schema; the sink loads the Delta table's columns beside
    /// ([`ClickHouseSink::follow_table`]).
    configured: crate::event::EventSchema,
    /// Record fields that no column of the Delta table named either, when last followed:
    /// skipped (each logged once).
    strangers: BTreeSet<String>,
    /// The last row ClickHouse took: inserted again, it shows whether the server takes
    /// inserts at all when every row of a batch is refused.
    last_loaded: Option<StoredRow>,
    /// Such inserts made so far: part of their tokens, so that none is taken for a retry.
    probes: u64,
    /// Whether a consumer error came since the last check of the partitions that found
    /// them all in range: until one does, the broker's offset listing is believed over
    /// this consumer's reads ([`ranges::out_of_range`]).
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
        shutdown: Shutdown,
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
        let consumer = sink_consumer(&settings)?;
        let count = kafka::partition_count(&settings, consumer.client(), Some(&topic))? as i32;
        let next = committed_starts(&settings, &consumer, 0..count)?;
        tracing::info!(starts = ?next, "sink reads from");
        let tpl = positioned::assignment(&topic, &next).map_err(kafka::client_error(&settings))?;
        consumer.assign(&tpl).map_err(kafka::client_error(&settings))?;
        tracing::info!(
            server = %clickhouse.version().text,
            table = %clickhouse.table(),
            ?layout,
            dedup_token = clickhouse.version().has_dedup_token(),
            "ClickHouse sink ready"
        );
        let configured = settings.clickhouse.schema.clone();
        let output = Output::new(&settings)?;
        let token_nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros())
        );
        let mut sink = Self {
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
            last_loaded: None,
            probes: 0,
            errors_since_check: false,
            partitions: count,
            partitions_checked: Instant::now(),
            configured,
            strangers: BTreeSet::new(),
        };
        sink.follow_table()?;
        Ok(sink)
    }

    /// Loads the Delta table's columns (those schema evolution or another engine added)
    /// beside the configuration's, adding to the ClickHouse table those it lacks; with no
    /// Delta table yet, the configuration's alone. The processor adds a column to Delta
    /// before it sends a record that holds it, so a record field the sink does not know
    /// is found here.
    fn follow_table(&mut self) -> Result<(), ClickHouseSinkError> {
        let path = self.settings.delta_path.clone();
        let schema = match self.runtime.block_on(crate::table::EventTable::open(&path)) {
            Ok(table) => table.effective_schema(&self.configured)?,
            Err(crate::table::DeltaError::Missing { .. }) => self.configured.clone(),
            Err(e) => return Err(e.into()),
        };
        if schema == self.settings.clickhouse.schema {
            return Ok(());
        }
        self.clickhouse.set_schema(schema.clone());
        let added = retrying(&self.shutdown, self.patient, "adding columns to the ClickHouse table", || {
            self.runtime.block_on(self.clickhouse.add_missing_columns())
        })?;
        if !added.is_empty() {
            crate::metrics::clickhouse_columns_added(added.len());
            tracing::info!(table = %self.clickhouse.table(), columns = ?added, "added the Delta table's new columns");
        }
        // The types of the columns it had are checked as at the start.
        retrying(&self.shutdown, self.patient, "reading the ClickHouse table", || {
            self.runtime.block_on(self.clickhouse.layout())?.ok_or_else(|| self.clickhouse.missing_table())
        })?;
        self.settings.clickhouse.schema = schema;
        Ok(())
    }

    /// Rows read with record fields `before` hold fields `fields` did not know: follows
    /// the table and moves each row's values to its columns (null in a column its record
    /// did not have).
    fn place_unknown(
        &mut self,
        rows: &mut [StoredRow],
        before: &processed::RecordFields,
    ) -> Result<(), ClickHouseSinkError> {
        self.follow_table()?;
        let after = processed::RecordFields::of(&self.settings.clickhouse.schema);
        for row in rows.iter_mut() {
            let mut old = std::mem::take(&mut row.values);
            row.values = after
                .declared
                .iter()
                .map(|name| match before.declared.iter().position(|n| n == name) {
                    Some(i) => std::mem::take(&mut old[i]),
                    None => row
                        .unknown
                        .iter()
                        .position(|(n, _)| n == name)
                        .map_or(serde_json::Value::Null, |i| row.unknown.swap_remove(i).1),
                })
                .collect();
            for (name, _) in std::mem::take(&mut row.unknown) {
                if self.strangers.insert(name.clone()) {
                    tracing::warn!(field = %name, "processed records hold a field that is no column of the Delta table: not loaded");
                }
            }
        }
        Ok(())
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
        // Rows not loaded for want of proof that ClickHouse refuses them on their own:
        // the next batch begins with them.
        let mut carried = Carried::default();
        // Rounds in a row that left rows not loaded: the backoff's attempt number.
        let mut unproven_rounds = 0;
        let mut fields = processed::RecordFields::of(&self.settings.clickhouse.schema);
        loop {
            let Carried { rows, sources, bytes, ranges } = std::mem::take(&mut carried);
            let mut batch = SinkBatch {
                rows,
                sources,
                bytes,
                dead: Vec::new(),
                ranges,
                max_rows: self.settings.clickhouse.max_batch_rows.get(),
                max_bytes: self.settings.clickhouse.max_batch_bytes.get(),
                topics: &self.settings.topics,
                fields: &fields,
                max_record_bytes: self.settings.max_record_bytes(),
                summary: &mut summary,
                consumer_error: false,
            };
            let deadline = Instant::now() + self.settings.clickhouse.trigger;
            let Ok(()) = positioned::collect(&self.consumer, &mut self.positions, &mut batch, deadline, &self.shutdown);
            if let Some(fatal) = kafka::fatal_client_error() {
                return Err(ClickHouseSinkError::FatalKafka(fatal));
            }
            let SinkBatch { mut rows, sources, dead, ranges, consumer_error, .. } = batch;
            if rows.iter().any(|r| r.unknown.iter().any(|(name, _)| !self.strangers.contains(name))) {
                self.place_unknown(&mut rows, &fields)?;
                fields = processed::RecordFields::of(&self.settings.clickhouse.schema);
            }
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
                let Some(loaded) = self.load(&rows, &token, &mut summary)? else {
                    // Nothing committed: the batch is read again on restart.
                    tracing::warn!("shutdown during a failing insert: leaving the batch uncommitted");
                    return Ok(summary);
                };
                if !loaded.refused.is_empty() {
                    let topics = &self.settings.topics;
                    let max = self.settings.max_record_bytes();
                    let letters: Vec<OutRecord> = loaded
                        .refused
                        .iter()
                        .map(|(i, message)| refused_letter(topics, &sources[*i], message, max))
                        .collect();
                    self.runtime.block_on(self.output.send_all(letters))?;
                    summary.refused += loaded.refused.len() as u64;
                    crate::metrics::clickhouse_refused(loaded.refused.len());
                }
                let stored = rows.len() - loaded.refused.len() - loaded.unloaded.len();
                crate::metrics::clickhouse_loaded(stored);
                summary.rows += stored as u64;
                if loaded.unloaded.is_empty() {
                    self.commit(&ranges);
                    summary.batches += 1;
                    unproven_rounds = 0;
                    tracing::debug!(rows = rows.len(), "ClickHouse batch loaded");
                } else {
                    unproven_rounds += 1;
                    let first = &rows[loaded.unloaded[0]];
                    let first = format!(
                        "partition {} offset {}, key {}",
                        first.source_partition, first.source_offset, first.dedup_key
                    );
                    let message = loaded.message.clone().unwrap_or_else(|| "not tried alone".into());
                    let rows_left = loaded.unloaded.len();
                    carried = Carried::keep(rows, sources, ranges, &loaded.unloaded);
                    let what = format!(
                        "ClickHouse refuses {rows_left} rows and took no other insert meanwhile: none is \
                         dead-lettered, they are tried again with the next rows"
                    );
                    crate::metrics::service_error("clickhouse", &what);
                    tracing::warn!(rows = rows_left, %first, error = %message, rounds = unproven_rounds, "{what}");
                    if let Some(idle) = until_idle
                        && !upstream_running
                        && self.positions.idle_for(idle)
                    {
                        return Err(ClickHouseSinkError::Unproven { rows: rows_left, first, message });
                    }
                    self.shutdown.sleep(BACKOFF.delay(unproven_rounds));
                }
            }
            if self.shutdown.is_requested() {
                if !carried.rows.is_empty() {
                    tracing::warn!(
                        rows = carried.rows.len(),
                        "shutdown with rows ClickHouse refused: leaving them uncommitted"
                    );
                }
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
                && carried.rows.is_empty()
                && self.upstream_loaded(last_sent.as_ref())
                && self.positions.idle_for(idle)
            {
                tracing::info!(?idle, "ClickHouse sink caught up and idle: stopping");
                return Ok(summary);
            }
        }
    }

    /// Loads one batch's rows (sorted by ClickHouse partition: [`by_partition`]) as the
    /// module's doc says. Returns what became of them, or `None` when shutdown came
    /// during a failing insert (nothing may be committed then); an error only for a fatal
    /// failure when not `patient`.
    fn load(
        &mut self,
        rows: &[StoredRow],
        token: &str,
        summary: &mut ClickHouseSinkSummary,
    ) -> Result<Option<Loaded>, ClickHouseSinkError> {
        let mut pieces = insert_runs(self.layout, rows.iter().map(|r| r.event_time_us));
        pieces.reverse();
        // Whether the server took an insert during this load: then a refusal is the rows'.
        let mut taking = false;
        // Rows refused alone, with the server's message.
        let mut alone: Vec<(usize, String)> = Vec::new();
        loop {
            while let Some(piece) = pieces.pop() {
                if !taking && alone.len() >= MAX_ALONE_UNPROVEN {
                    // Row after row refused and nothing taken: the server may refuse every
                    // insert. The rest waits, unsplit, until that is known.
                    pieces.push(piece);
                    break;
                }
                match self.insert_piece(rows, piece.clone(), token, summary)? {
                    None => return Ok(None),
                    Some(Inserted::Yes) => {
                        taking = true;
                        self.last_loaded = Some(rows[piece.end - 1].clone());
                    }
                    Some(Inserted::Refused(message)) if piece.len() > 1 => {
                        tracing::warn!(rows = piece.len(), error = %message, "ClickHouse refused an insert: splitting it to find the rows it refuses");
                        let mid = piece.start + piece.len() / 2;
                        pieces.push(mid..piece.end);
                        pieces.push(piece.start..mid);
                    }
                    Some(Inserted::Refused(message)) => alone.push((piece.start, message)),
                }
            }
            if taking || alone.is_empty() {
                break;
            }
            // Nothing of this batch was taken. A row the table took before, inserted again
            // (harmless: the table keeps one row per key), shows whether it takes any now.
            let Some(probe) = self.last_loaded.clone() else { break };
            self.probes += 1;
            let probe_token = format!("{token}#probe-{}", self.probes);
            match self.insert_piece(std::slice::from_ref(&probe), 0..1, &probe_token, summary)? {
                None => return Ok(None),
                Some(Inserted::Yes) => taking = true,
                Some(Inserted::Refused(_)) => break,
            }
        }
        let mut loaded = Loaded::default();
        if !taking {
            loaded.unloaded = alone.iter().map(|(i, _)| *i).chain(pieces.into_iter().flatten()).collect();
            loaded.unloaded.sort_unstable();
            loaded.message = alone.into_iter().next().map(|(_, m)| m);
            return Ok(Some(loaded));
        }
        // The server takes inserts now: a row it refuses again is refused for what it holds.
        for (i, _) in alone {
            match self.insert_piece(rows, i..i + 1, token, summary)? {
                None => return Ok(None),
                Some(Inserted::Yes) => {}
                Some(Inserted::Refused(message)) => {
                    let row = &rows[i];
                    tracing::error!(
                        dedup_key = %row.dedup_key,
                        partition = row.source_partition,
                        offset = row.source_offset,
                        error = %message,
                        "ClickHouse refuses this event on its own (it takes other rows): sent to the dead-letter topic"
                    );
                    loaded.refused.push((i, message));
                }
            }
        }
        Ok(Some(loaded))
    }

    /// Inserts `rows[piece]` until ClickHouse takes it or refuses it while answering
    /// `SELECT 1`; waits out, with backoff, an unreachable or busy server (and a fatal
    /// failure when `patient`). `None`: shutdown came first.
    fn insert_piece(
        &self,
        rows: &[StoredRow],
        piece: std::ops::Range<usize>,
        token: &str,
        summary: &mut ClickHouseSinkSummary,
    ) -> Result<Option<Inserted>, ClickHouseSinkError> {
        // Pieces are the same for the same batch, so a retry carries the same token.
        let piece_token = format!("{token}#{}-{}", piece.start, piece.end);
        let outcome = retry::retry(&self.shutdown, OnShutdown::Stop, |failures| {
            let inserted =
                self.runtime.block_on(self.clickhouse.insert(self.layout, &rows[piece.clone()], Some(&piece_token)));
            let e = match inserted {
                Ok(()) => {
                    crate::metrics::service_recovered("clickhouse");
                    return Step::Done(Inserted::Yes);
                }
                Err(e) => e,
            };
            crate::metrics::service_error("clickhouse", &e.to_string());
            summary.retries += 1;
            crate::metrics::clickhouse_insert_retried();
            // An insert that times out is judged like a refusal: by whether the server
            // answers meanwhile (then the insert is too heavy, or holds a row it chokes on).
            let refused = matches!(e.failure(), Failure::Refused) || matches!(e, ClickHouseError::Timeout { .. });
            if refused && self.runtime.block_on(self.clickhouse.ping()).is_ok() {
                return Step::Done(Inserted::Refused(e.server_message().unwrap_or_else(|| e.to_string())));
            }
            if e.failure() == Failure::Fatal && !self.patient {
                return Step::Stop(e);
            }
            let backoff = BACKOFF.delay(failures);
            tracing::warn!(attempt = failures, error = %e, ?backoff, rows = piece.len(), "ClickHouse insert failed; retrying");
            PATIENCE.step(failures, e)
        });
        match outcome {
            Ok(inserted) => Ok(Some(inserted)),
            Err(Stopped::Shutdown(_)) => Ok(None),
            Err(Stopped::Failed(e)) => Err(e.into()),
        }
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
        // error since, is not believed (a listing from a lagging broker): a topic
        // recreated under the sink fails its fetches instead.
        let read_to = (!self.errors_since_check).then_some(&self.positions.read_to);
        let (resets, answered) = ranges::out_of_range(&self.consumer, topic, &self.positions.next, read_to);
        self.errors_since_check &= !(answered && resets.is_empty());
        let to: BTreeMap<i32, i64> = resets.iter().map(|r| (r.partition, r.low)).collect();
        if resets.iter().any(OffsetReset::starts_over) {
            // A recreated topic: a consumer that read the old one may never fetch the new
            // one's partitions (`crate::source::Source::renew`); a new one starts where
            // the sink stands, the reset partitions at their first offset.
            tracing::info!(topic = %topic, "replacing the processed topic's consumer, which may hold the old topic's metadata");
            let mut next = self.positions.next.clone();
            next.extend(to.iter().map(|(p, low)| (*p, Some(*low))));
            let tpl = positioned::assignment(topic, &next).map_err(kafka::client_error(&self.settings))?;
            self.consumer = sink_consumer(&self.settings)?;
            self.consumer.assign(&tpl).map_err(kafka::client_error(&self.settings))?;
        } else if !to.is_empty() {
            ranges::reposition(&self.consumer, topic, &to, &self.positions.next)
                .map_err(kafka::client_error(&self.settings))?;
        }
        for reset in resets {
            tracing::warn!(
                partition = reset.partition,
                kind = reset.kind(),
                "{}; the ClickHouse sink reads on from offset {}",
                reset.explain(&format!("the ClickHouse sink's next offset is {}", reset.expected)),
                reset.low
            );
            self.positions.moved(reset.partition, reset.low);
            self.resets += 1;
        }
        let Some(now) = kafka::admin::partition_count_now(self.consumer.client(), topic, Duration::from_secs(1)) else {
            return Ok(());
        };
        if now <= self.partitions {
            return Ok(());
        }
        let added = committed_starts(&self.settings, &self.consumer, self.partitions..now)?;
        tracing::warn!(topic = %topic, from = self.partitions, to = now, starts = ?added, "the processed topic has new partitions: reading them");
        let mut next = self.positions.next.clone();
        next.extend(added.clone());
        let tpl = positioned::assignment(topic, &next).map_err(kafka::client_error(&self.settings))?;
        self.consumer.assign(&tpl).map_err(kafka::client_error(&self.settings))?;
        self.positions.next.extend(added);
        self.partitions = now;
        Ok(())
    }

    /// Commits the offsets after each range. A failed commit is logged, not fatal: the
    /// records are re-read and re-inserted after a restart, which is harmless.
    fn commit(&self, ranges: &BTreeMap<i32, (i64, i64)>) {
        let last: BTreeMap<i32, i64> = ranges.iter().map(|(p, (_, last))| (*p, *last)).collect();
        if let Err(e) =
            positioned::commit_after(&self.consumer, &self.settings.topics.processed, &last, CommitMode::Sync)
        {
            tracing::warn!(error = %e, "committing the sink's offsets failed (they will be re-read after a restart)");
        }
    }
}

/// A new consumer of the processed topic, that has taken no partition yet.
fn sink_consumer(settings: &Settings) -> Result<BaseConsumer<LagReporting>, ClickHouseSinkError> {
    let topic = settings.topics.processed.clone();
    let consumer = kafka::client_config(
        settings,
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
    .create_with_context(LagReporting { topic, report: crate::metrics::clickhouse_sink_lag })
    .map_err(kafka::client_error(settings))?;
    Ok(consumer)
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
    let committed = kafka::committed_offsets(settings, consumer, &wanted)?;
    Ok(partitions
        .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(n)) if n >= 0 => (p, Some(n)),
            _ => (p, None),
        })
        .collect())
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
    /// The names of a record's key and declared columns.
    fields: &'a processed::RecordFields,
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
        match processed::parse(m.payload().unwrap_or_default(), self.fields) {
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

/// How many rows of a batch may be refused alone, while nothing of it loaded, before the
/// sink stops splitting it for this round: a server that refuses every insert would
/// otherwise be sent one insert per row.
const MAX_ALONE_UNPROVEN: usize = 4;

/// What became of one insert attempt.
enum Inserted {
    Yes,
    /// Refused while the server answers, with its message.
    Refused(String),
}

/// What became of a batch's rows: loaded, but for these.
#[derive(Debug, Default)]
struct Loaded {
    /// Rows refused alone after other rows of the batch loaded: (index, server message).
    refused: Vec<(usize, String)>,
    /// Rows not loaded while nothing of the batch loaded (ascending indices).
    unloaded: Vec<usize>,
    /// The server's message for the first of those refused alone.
    message: Option<String>,
}

/// Rows not loaded for want of proof that ClickHouse refuses them on their own, which
/// begin the next batch, and the offsets read so far (nothing past them is committed).
#[derive(Default)]
struct Carried {
    rows: Vec<StoredRow>,
    sources: Vec<RowSource>,
    /// Bytes of their records, as the batch counts them.
    bytes: usize,
    ranges: BTreeMap<i32, (i64, i64)>,
}

impl Carried {
    /// The rows of `unloaded` (ascending indices into `rows`), and every range read.
    fn keep(
        rows: Vec<StoredRow>,
        sources: Vec<RowSource>,
        ranges: BTreeMap<i32, (i64, i64)>,
        unloaded: &[usize],
    ) -> Self {
        let mut kept = Self { ranges, ..Self::default() };
        let mut unloaded = unloaded.iter().copied().peekable();
        for (i, (row, source)) in rows.into_iter().zip(sources).enumerate() {
            if unloaded.next_if_eq(&i).is_some() {
                kept.bytes += source.value.len() + source.key.as_ref().map_or(0, Vec::len);
                kept.rows.push(row);
                kept.sources.push(source);
            }
        }
        kept
    }
}

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
    shutdown: &Shutdown,
    patient: bool,
    what: &str,
    mut f: impl FnMut() -> Result<T, ClickHouseError>,
) -> Result<T, ClickHouseSinkError> {
    retry::retry(shutdown, OnShutdown::Stop, |attempt| match f() {
        Ok(v) => {
            crate::metrics::service_recovered("clickhouse");
            Step::Done(v)
        }
        Err(e) if !patient && e.failure() == Failure::Fatal => Step::Stop(e),
        Err(e) => {
            crate::metrics::service_error("clickhouse", &e.to_string());
            let wait = BACKOFF.delay(attempt);
            tracing::warn!(attempt, error = %e, ?wait, "{what} failed; retrying");
            PATIENCE.step(attempt, e)
        }
    })
    .map_err(|stopped| stopped.into_error().into())
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
    fn rows_not_loaded_begin_the_next_batch_with_every_range_read() {
        let row = |offset: i64| StoredRow {
            dedup_key: format!("k{offset}"),
            parts: vec!["u".into(), "e".into()],
            values: Vec::new(),
            event_time_us: 0,
            payload: "{}".into(),
            source_partition: 0,
            source_offset: offset,
            batch_id: 1,
            ingested_at_us: 2,
            unknown: Vec::new(),
        };
        let source = |offset: i64| RowSource { key: Some(vec![b'k'; 2]), value: vec![b'v'; 10], partition: 0, offset };
        let ranges = BTreeMap::from([(0, (0, 4)), (1, (7, 9))]);
        let kept = Carried::keep((0..5).map(row).collect(), (0..5).map(source).collect(), ranges.clone(), &[1, 4]);
        assert_eq!(kept.rows.iter().map(|r| r.source_offset).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(kept.sources.iter().map(|s| s.offset).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(kept.bytes, 24);
        assert_eq!(kept.ranges, ranges, "nothing read is committed while rows wait");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(BACKOFF.delay(1), Duration::from_millis(500));
        assert!(BACKOFF.delay(3) > BACKOFF.delay(2));
        assert_eq!(BACKOFF.delay(50), MAX_BACKOFF);
    }
}
