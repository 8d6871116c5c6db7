//! The batch loop: the one place that knows the order of the steps.
//!
//! For each micro-batch:
//! 1. collect ([`crate::kafka::positioned`]): read messages until the trigger interval
//!    ends or a size limit is hit, parsing each as it arrives (rows and dead letters);
//! 2. dedup: keep the first copy of each key in the batch;
//! 3. reload the table and drop any offsets that Delta already records (another writer,
//!    or our own commit that reported an error but happened);
//! 4. check which keys the table already holds;
//! 5. send dead letters and the new events to their topics and wait for every ack
//!    (meanwhile, with the key cache or index, write the new rows' data files);
//! 6. commit the new events to Delta in one commit carrying each partition's last
//!    offset (txn, [`crate::table::offsets`]): the batch is done when, and only when,
//!    this commit exists;
//! 7. commit the offsets to the Kafka group (for lag tools) and log the batch.
//!
//! Sending (5) before committing (6) is what guarantees that every event in Delta is in
//! the processed topic: a crash between them leaves the batch uncommitted, so it is read
//! and sent again (a harmless re-send). Any failure in 3 to 6 restarts at 3, which
//! re-reads Delta rather than assuming the failed step did not happen.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::Message;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use tokio::runtime::Handle;

use crate::batch::Batch;
use crate::batch_log::{BatchLog, BatchRecord, Phases};
use crate::config::{KeyCheck, Settings};
use crate::dedup;
use crate::event::{DedupKey, EventTime, SchemaEvolution};
use crate::kafka::KafkaFailure;
use crate::kafka::positioned::{Collector, Positions};
use crate::kafka::ranges::OffsetReset;
use crate::metrics;
use crate::output::{Output, ProduceError};
use crate::output::{dlq, processed};
use crate::retry::{self, Backoff, OnShutdown, Policy, Step};
use crate::shutdown::Shutdown;
use crate::source::check::{Checks, SourceCheck};
use crate::source::{BrokerView, OrphanWatch, Source};
use crate::table::maintenance::MaintenanceTask;
use crate::table::{AppIds, DeltaError, EventTable};

/// Why the processor stopped with an error. Nothing is lost in any case: whatever was
/// not committed to Delta is read again on restart.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(transparent)]
    Produce(#[from] ProduceError),
    #[error("consumer failed: {0}")]
    Consumer(KafkaError),
    #[error("partition assignment failed: {0}")]
    Assignment(String),
    #[error("a Kafka client met an error no retry mends, so the processor stops: {0}")]
    FatalKafka(String),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error("building the Arrow batch failed: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    #[error(
        "{0}. Stopping so that no message is skipped silently; to read on from offset {low} and record \
         the loss, set fail_on_data_loss = false (IDEMPIPE_FAIL_ON_DATA_LOSS=false, --fail-on-data-loss=false)",
        low = .0.low
    )]
    DataLoss(OffsetReset),
    #[error(transparent)]
    Maintenance(#[from] crate::table::maintenance::MaintenanceStopped),
    #[error("batch {batch_id} failed after {attempts} attempts; last error: {last}")]
    GaveUp { batch_id: i64, attempts: u32, last: Box<PipelineError> },
}

/// The retries of one batch: 8 failed attempts before the processor stops (and,
/// restarted, tries again from what Delta records), 400 ms doubling to at most 3 s between
/// them, well below `max.poll.interval.ms`, so retries do not cost the group membership
/// as well.
const ATTEMPTS: Policy = Policy {
    backoff: Backoff { base: Duration::from_millis(200), cap: Duration::from_secs(3) },
    max_failures: Some(8),
};

/// How many lost commit races one batch accepts before they count as failures: each
/// means another writer made progress, so only a pathological contention reaches it.
const MAX_CONFLICTS: u32 = 100;

/// What a run did, for the exit summary.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct RunSummary {
    pub batches: u64,
    pub events_in: u64,
    pub invalid: u64,
    pub duplicates: u64,
    pub inserted: u64,
}

/// The processor: a consumer, the table and the output producer.
pub struct Pipeline {
    settings: Settings,
    source: Source,
    output: Output,
    table: EventTable,
    log: BatchLog,
    runtime: Handle,
    shutdown: Shutdown,
    /// Checkpoints, compaction and vacuum, beside the batch loop.
    maintenance: MaintenanceTask,
    /// The processed record's key and declared columns (the table's schema).
    fields: processed::RecordFields,
    /// The configuration's schema (`settings.schema` is the effective one: the
    /// configuration's with the table's columns beside).
    configured: crate::event::EventSchema,
    /// The table's schema `settings.schema` was made from: when the table's changes (a
    /// column added), so does the effective one.
    table_schema: crate::event::EventSchema,
    /// With `message_format = "schema-registry"`: the schemas of the ids seen, and the
    /// registry they come from.
    registry: Option<std::sync::Arc<crate::registry::Registry>>,
}

impl Pipeline {
    /// Opens the table and joins the group. Must run outside the runtime's workers
    /// (it blocks), with `runtime` a handle to a multi-thread runtime.
    pub fn start(settings: Settings, runtime: Handle, shutdown: Shutdown) -> Result<Self, PipelineError> {
        let table = runtime.block_on(async {
            // Before the first write: a store without put-if-absent loses commits.
            settings.delta_path.check_put_if_absent().await?;
            EventTable::open(&settings.delta_path).await
        })?;
        Self::start_with_table(settings, table, runtime, shutdown)
    }

    /// [`Pipeline::start`] with a table the caller opened (through a store of its own,
    /// say: see [`EventTable::open_with_store`]).
    pub fn start_with_table(
        mut settings: Settings,
        mut table: EventTable,
        runtime: Handle,
        shutdown: Shutdown,
    ) -> Result<Self, PipelineError> {
        // Events are read by the table's schema: the configuration's, with the columns the
        // table has beside (refused if the two disagree).
        let configured = settings.schema.clone();
        settings.schema = table.effective_schema(&configured)?;
        settings.clickhouse.schema = settings.schema.clone();
        if settings.key_check == KeyCheck::Cache {
            table.enable_key_cache(settings.key_cache_bytes)?;
            tracing::info!(
                budget_mib = settings.key_cache_bytes >> 20,
                files = table.live_files(),
                version = table.version(),
                "key cache: files listed; keys are read when a batch needs them"
            );
        }
        if settings.key_check == KeyCheck::Index {
            let stats = runtime.block_on(table.enable_key_index())?;
            if let Some(index) = table.key_index() {
                tracing::info!(
                    keys = index.len(),
                    files = stats.files_read,
                    version = index.version(),
                    heap_mib = index.heap_bytes() / (1 << 20),
                    elapsed = ?stats.elapsed,
                    "key index built from the table"
                );
            }
        }
        let output = Output::new(&settings)?;
        let source = Source::subscribe(&settings, runtime.clone(), table.without_stored_keys())?;
        let log = BatchLog::new(settings.batch_log.clone());
        let maintenance = MaintenanceTask::start(settings.maintenance, table.without_stored_keys(), &runtime);
        // It may have changed the table's properties.
        runtime.block_on(table.reload())?;
        metrics::table_state(table.version(), table.live_files(), table.stored_keys());
        // The reload may have brought columns another writer added.
        settings.schema = table.effective_schema(&configured)?;
        settings.clickhouse.schema = settings.schema.clone();
        let fields = processed::RecordFields::of(&settings.schema);
        let table_schema = table.schema().clone();
        let registry =
            match settings.message_format {
                crate::config::MessageFormat::Json => None,
                crate::config::MessageFormat::SchemaRegistry => Some(std::sync::Arc::new(
                    crate::registry::Registry::new(&settings.registry, runtime.clone(), shutdown.clone())?,
                )),
            };
        Ok(Self {
            settings,
            source,
            output,
            table,
            log,
            runtime,
            shutdown,
            maintenance,
            fields,
            configured,
            table_schema,
            registry,
        })
    }

    /// The highest offsets the processor's producer has had acknowledged, per topic and
    /// partition (updated as batches are sent).
    pub fn delivered(&self) -> crate::output::Delivered {
        self.output.delivered()
    }

    /// Runs batches until shutdown is requested, or, with `until_idle`, until every
    /// partition is caught up and nothing arrived for that long.
    pub fn run(mut self, until_idle: Option<Duration>) -> Result<RunSummary, PipelineError> {
        let mut summary = RunSummary::default();
        let mut positions = Positions::default();
        let mut checks = Checks::new(self.source.mode());
        loop {
            // Per batch: the schema grows when the table gains columns.
            let limits =
                crate::batch::Limits { registry: self.registry.clone(), ..crate::batch::Limits::of(&self.settings) };
            let started_at = EventTime::now();
            let collect_started = Instant::now();
            // The source check is asked while the batch is collected (`source::check`).
            let generation_before = checks.generation;
            let check = checks.ask(&positions);
            let mut collecting = Collecting {
                batch: Batch::default(),
                settings: &self.settings,
                limits: &limits,
                source: &self.source,
                generation: &mut checks.generation,
                consumer_error: false,
            };
            let source = &self.source;
            let (collected, view) = std::thread::scope(|scope| {
                let asked =
                    check.as_ref().map(|check| scope.spawn(|| source.broker_view(&check.next, check.read_to.as_ref())));
                let collected = source.collect(
                    &mut positions,
                    &mut collecting,
                    collect_started + self.settings.batch.trigger,
                    &self.shutdown,
                );
                (collected, asked.map(|asked| asked.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))))
            });
            collected?;
            let (consumer_error, batch) = (collecting.consumer_error, collecting.batch);
            if let Some(why) = &batch.abandoned {
                // A message waited for the registry when shutdown came: it is in no row,
                // dead letter or range, so nothing of this batch is committed; it is all
                // read again at the next start.
                tracing::warn!(error = %why, "shutdown while the schema registry did not answer: the batch in progress is not committed");
                return Ok(summary);
            }
            checks.collected(consumer_error);
            // A batch cut at its size limit: more is waiting (a backlog), and a compaction
            // waits for the loop to catch up (see `MaintenanceTask::committed`).
            let backlog = batch.is_at_limit(&self.settings.batch);
            let collect_time = collect_started.elapsed();
            if let Some(watch) = checks.orphan_watch_due() {
                self.watch_orphans(watch, &positions.next)?;
            }
            if !batch.is_empty() {
                let record = self.process(batch, started_at, collect_time)?;
                summary.batches += 1;
                summary.events_in += record.events_in;
                summary.invalid += record.invalid;
                summary.duplicates += record.in_batch_duplicates + record.stored_duplicates;
                summary.inserted += record.inserted.unwrap_or(0);
            }
            let asked = check.zip(view);
            if let Some((check, view)) = checks.to_act_on(&self.source, &positions, generation_before, asked) {
                // A consumer error during the collection leaves the check incomplete: the
                // broker's listing decides until a later check has had every
                // partition's range answered and found them all in range.
                let generation = checks.generation;
                let complete =
                    self.check_source(&mut positions, generation, consumer_error, check, view)? && !consumer_error;
                checks.acted(complete);
            }
            self.maintenance.committed(self.table.version(), backlog)?;
            if self.shutdown.is_requested() {
                tracing::info!("shutdown requested: stopping after the last committed batch");
                return Ok(summary);
            }
            if let Some(idle) = until_idle
                && positions.idle_for(idle)
            {
                tracing::info!(idle = ?idle, "caught up and idle: stopping");
                return Ok(summary);
            }
        }
    }

    /// Group mode: rejoins the group if a partition this instance does not hold has
    /// unread messages and has not moved in Delta for a long time.
    fn watch_orphans(
        &mut self,
        watch: &mut OrphanWatch,
        held: &BTreeMap<i32, Option<i64>>,
    ) -> Result<(), PipelineError> {
        // Only the partitions others hold: ours are watched by our own batches.
        let ends = self.source.ends((0..self.source.partitions()).filter(|p| !held.contains_key(p)));
        let rt = self.runtime.clone();
        let ids = AppIds::of(&self.settings);
        let stored = rt.block_on(async {
            self.table.reload().await?;
            self.table.stored_offsets(&ids, ends.keys().copied()).await
        });
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => {
                // The next batch meets the same failure and handles it; this check waits.
                tracing::debug!(error = %e, "cannot read the stored offsets for the orphan check");
                return Ok(());
            }
        };
        let held: BTreeSet<i32> = held.keys().copied().collect();
        let orphans = watch.observe(Instant::now(), &held, &stored, &ends);
        if !orphans.is_empty() {
            let why = "partitions with unread messages have made no progress for a long time and this \
                       instance does not hold them";
            self.source.rejoin(&orphans, why).map_err(PipelineError::Consumer)?;
        }
        Ok(())
    }

    /// Acts on what the broker said of the raw topic ([`SourceCheck`], asked while the
    /// batch was collected, or after an assignment was adopted): reads new partitions
    /// (assign mode; in group mode librdkafka rebalances), and handles partitions whose
    /// next offset the broker does not hold ([`crate::kafka::ranges`]): stops, or with
    /// `fail_on_data_loss = false` records the reset in Delta and reads on from the
    /// broker's first offset. A view is acted on only where it still applies
    /// ([`SourceCheck::still_applies`]; `consumer_error`: one came during the
    /// collection). Returns whether the check is complete (`false`: check again soon,
    /// after a lost commit race, a view that no longer applies, a rebalance or a
    /// partition whose range was not answered).
    fn check_source(
        &mut self,
        positions: &mut Positions,
        generation: u64,
        consumer_error: bool,
        check: SourceCheck,
        view: BrokerView,
    ) -> Result<bool, PipelineError> {
        if let Some(now) = view.partitions {
            self.source.follow_partition_count(now, positions).map_err(PipelineError::Assignment)?;
        }
        let (resets, current) = check.applying(view.resets, view.answered, generation, &positions.next, consumer_error);
        let Some(first) = resets.first() else {
            return Ok(current);
        };
        if self.settings.fail_on_data_loss {
            return Err(PipelineError::DataLoss(first.clone()));
        }
        // In Delta first, so that a restart starts from the broker's first offset too.
        let ids = AppIds::of(&self.settings);
        let now = EventTime::now();
        let lowered: BTreeMap<i32, i64> = resets.iter().map(|r| (r.partition, r.low - 1)).collect();
        let metadata = serde_json::json!({ "idempipe.offset_resets": resets, "idempipe.group": self.settings.group });
        let rt = self.runtime.clone();
        let committed = rt.block_on(async {
            self.table.reload().await?;
            self.table.record_offsets(&ids.txns(&lowered, now), metadata).await
        });
        let version = match committed {
            Ok(version) => version,
            Err(e) if e.is_write_conflict() => {
                tracing::info!(error = %e, "lost a commit race while recording offset resets; looking again");
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        // Never any other offset: on failure the processor stops, and restarts from the
        // offsets just recorded.
        let to: BTreeMap<i32, i64> = resets.iter().map(|r| (r.partition, r.low)).collect();
        if resets.iter().any(OffsetReset::starts_over) {
            // A recreated topic: a consumer that read the old one may never fetch the new
            // one's partitions (`Source::renew`). A new one starts from the offsets just
            // recorded, and the batch loop adopts its positions.
            let table = self.table.without_stored_keys();
            self.source.renew(&self.settings, self.runtime.clone(), table).map_err(PipelineError::from)?;
        } else {
            self.source.reposition(&to, &positions.next).map_err(PipelineError::Consumer)?;
        }
        for reset in &resets {
            positions.moved(reset.partition, reset.low);
            metrics::offset_reset(reset.kind(), reset.lost);
            tracing::warn!(
                partition = reset.partition,
                kind = reset.kind(),
                lost = reset.lost,
                delta_version = version,
                "{reset}; reading on from offset {} (fail_on_data_loss = false)",
                reset.low
            );
        }
        let record = BatchRecord {
            batch_id: now.micros(),
            started_at: Some(now),
            ended_at: Some(EventTime::now()),
            delta_version: version,
            offset_resets: resets,
            ..BatchRecord::default()
        };
        if let Err(e) = self.log.append(&record) {
            tracing::warn!(error = %e, path = %self.log.path().display(), "cannot write the batch log");
        }
        Ok(current)
    }

    /// Steps 2 to 7 for one collected batch.
    fn process(
        &mut self,
        mut batch: Batch,
        started_at: EventTime,
        collect_time: Duration,
    ) -> Result<BatchRecord, PipelineError> {
        let batch_id = started_at.micros();
        let mut record = BatchRecord {
            batch_id,
            started_at: Some(started_at),
            events_in: batch.messages(),
            invalid: batch.dead_letters.len() as u64,
            offset_gaps: batch.offset_gaps,
            events_per_partition: batch.per_partition(),
            phases: Phases { collect_ms: ms(collect_time), parse_ms: ms(batch.parse_time), ..Phases::default() },
            ..BatchRecord::default()
        };
        let t = Instant::now();
        let (rows, duplicates) = dedup::first_of_each_key(std::mem::take(&mut batch.rows), |r| r.key);
        batch.rows = rows;
        record.in_batch_duplicates = duplicates;
        record.phases.dedup_ms = ms(t.elapsed());

        let last_offsets: BTreeMap<i32, i64> = batch.ranges.iter().map(|(p, r)| (*p, r.last)).collect();
        // One ingestion time for every attempt: a retry does not send again the records an
        // earlier attempt sent, so the rows Delta stores must carry the time those carry.
        let ingested_at = EventTime::now();
        let mut sent = Sent::new(ingested_at);
        let (mut attempts, mut failures, mut conflicts) = (0_u32, 0_u32, 0_u32);
        // A wait cut short by shutdown is followed by one more attempt: the batch in
        // progress is committed (or given up) before the processor stops.
        let shutdown = self.shutdown.clone();
        let outcome = retry::retry(&shutdown, OnShutdown::Finish, |attempt| {
            attempts = attempt;
            match self.attempt(&mut batch, batch_id, &mut sent, &mut record) {
                Ok(()) => Step::Done(()),
                Err(PipelineError::Delta(e)) if e.is_write_conflict() && conflicts < MAX_CONFLICTS => {
                    // Another writer (an instance sharing the table) committed first: it
                    // made progress, so this is no failure. Redo the attempt on the new
                    // version after a short random pause, so that two instances do not
                    // keep colliding in step.
                    conflicts += 1;
                    // Another version took ours: on a store with a definite conditional
                    // put (local files, S3 with conditional writes) this commit did not
                    // land. (Were it our own write retried by the store, the next attempt
                    // still drops the stored offsets; only the log's wording would differ.)
                    sent.merge_attempted = false;
                    let pause = Duration::from_millis(50 + jitter() % 450);
                    tracing::info!(batch_id, conflicts, ?pause, error = %e, "lost a commit race to another writer; redoing the batch on the new version");
                    Step::Retry(PipelineError::Delta(e), pause)
                }
                Err(e) => {
                    failures += 1;
                    metrics::batch_attempt_failed();
                    if matches!(e, PipelineError::Produce(_))
                        && let Err(reset) = self.output.reset(&self.settings)
                    {
                        tracing::warn!(error = %reset, "cannot replace the producer after a failed send");
                    }
                    if let Some(backoff) = ATTEMPTS.after(failures) {
                        tracing::warn!(batch_id, attempt, error = %e, ?backoff, "batch attempt failed; reloading the table and retrying");
                    }
                    ATTEMPTS.step(failures, e)
                }
            }
        });
        if let Err(stopped) = outcome {
            return Err(PipelineError::GaveUp { batch_id, attempts, last: Box::new(stopped.into_error()) });
        }
        record.conflicts = conflicts;
        record.attempts = attempts;
        // The broker acknowledged the batch's records: Kafka answers.
        metrics::service_recovered("kafka");
        metrics::batch_committed(
            &record.figures(),
            Duration::from_micros((EventTime::now().micros() - batch_id).max(0) as u64),
        );
        metrics::table_state(self.table.version(), self.table.live_files(), self.table.stored_keys());
        tracing::debug!(batch_id, "batch phase: group offsets");
        self.source.commit_offsets(&last_offsets);
        record.ended_at = Some(EventTime::now());
        if let Err(e) = self.log.append(&record) {
            tracing::warn!(error = %e, path = %self.log.path().display(), "cannot write the batch log");
        }
        tracing::info!(
            batch_id,
            events_in = record.events_in,
            invalid = record.invalid,
            in_batch_duplicates = record.in_batch_duplicates,
            stored_duplicates = record.stored_duplicates,
            inserted = record.inserted,
            delta_version = record.delta_version,
            attempts = record.attempts,
            conflicts = record.conflicts,
            duration_ms = (EventTime::now().micros() - batch_id) / 1_000,
            "batch committed"
        );
        Ok(record)
    }

    /// Steps 3 to 6; safe to repeat after any failure.
    fn attempt(
        &mut self,
        batch: &mut Batch,
        batch_id: i64,
        sent: &mut Sent,
        record: &mut BatchRecord,
    ) -> Result<(), PipelineError> {
        let rt = self.runtime.clone();
        let t = Instant::now();
        rt.block_on(self.table.reload())?;
        self.follow_table(batch, sent)?;
        let ids = AppIds::of(&self.settings);
        let stored = rt.block_on(self.table.stored_offsets(&ids, batch.ranges.keys().copied()))?;
        let dropped = batch.drop_stored(&stored);
        record.phases.reload_ms += ms(t.elapsed());
        if dropped > 0 {
            if sent.merge_attempted {
                // Our own earlier commit reported an error but happened.
                tracing::warn!(batch_id, "a commit that reported an error is in the table: not writing it again");
                record.inserted = None;
            } else {
                tracing::warn!(batch_id, dropped, "offsets already stored by another writer: skipping them");
                record.already_committed += dropped;
            }
        }
        if batch.is_empty() {
            record.delta_version = self.table.version();
            return Ok(());
        }
        if self.settings.schema.evolution() == SchemaEvolution::AddColumns {
            self.evolve(batch, sent, record)?;
        }

        let t = Instant::now();
        let new_rows = rt.block_on(self.table.new_rows(&batch.rows))?;
        record.stored_duplicates = (batch.rows.len() - new_rows.len()) as u64;
        record.phases.check_ms += ms(t.elapsed());

        // Encoding the records counts as produce time.
        let encode = Instant::now();
        let ingested_at = sent.ingested_at;
        let settings = &self.settings;
        let dead_letters = batch
            .dead_letters
            .iter()
            .filter(|d| !sent.dead_letters.contains(&(d.partition, d.offset)))
            .map(|d| dlq::record(&settings.topics.dlq, &settings.topics.raw, d, settings.max_record_bytes()))
            .collect::<Vec<_>>();
        // Encoded one by one as they are sent: librdkafka copies each record, so a whole
        // batch of encoded records is never held beside its copies.
        let unsent = || new_rows.iter().filter(|r| !sent.events.contains(&r.key));
        let event_count = unsent().count();
        let fields = &self.fields;
        let events = unsent().map(|r| processed::record(&settings.topics.processed, fields, r, batch_id, ingested_at));
        record.phases.produce_ms += ms(encode.elapsed());
        let rows = self.table.columns().batch(&new_rows, batch_id, ingested_at)?;
        let dead_letter_count = dead_letters.len();
        let records = dead_letters.into_iter().chain(events);
        // The phase lines let the torture tests aim their kills (tests/torture.rs).
        tracing::debug!(batch_id, "batch phase: produce");
        // The data files do not depend on the acks: with the key cache or index they are
        // written meanwhile (the commit that makes them part of the table still waits for
        // every ack).
        let (output, table) = (&self.output, &mut self.table);
        let ((sent_result, send_time), (pending, write_time)) =
            rt.block_on(async { tokio::join!(timed(output.send_all(records)), timed(table.prepare(rows))) });
        record.phases.produce_ms += ms(send_time);
        record.phases.write_ms += ms(write_time);
        sent_result?;
        metrics::produced("dlq", dead_letter_count);
        metrics::produced("processed", event_count);
        sent.dead_letters.extend(batch.dead_letters.iter().map(|d| (d.partition, d.offset)));
        sent.events.extend(new_rows.iter().map(|r| r.key));
        let pending = pending?;

        let t = Instant::now();
        let last: BTreeMap<i32, i64> = batch.ranges.iter().map(|(p, r)| (*p, r.last)).collect();
        let txns = ids.txns(&last, ingested_at);
        let metadata = serde_json::json!({ "idempipe.batch_id": batch_id, "idempipe.group": settings.group });
        sent.merge_attempted = true;
        tracing::debug!(batch_id, "batch phase: delta commit");
        let outcome = rt.block_on(self.table.commit(pending, &txns, metadata))?;
        record.phases.commit_ms += ms(t.elapsed());
        record.inserted = Some(outcome.inserted);
        record.files_added = outcome.files_added;
        record.delta_version = outcome.version;
        if (outcome.inserted as usize) < new_rows.len() {
            // A concurrent writer stored some of these keys between the check and the
            // merge; the MERGE kept them single. Their re-send is harmless.
            tracing::info!(
                batch_id,
                raced = new_rows.len() - outcome.inserted as usize,
                "keys inserted concurrently by another writer"
            );
            record.stored_duplicates += new_rows.len() as u64 - outcome.inserted;
        }
        Ok(())
    }
}

impl Pipeline {
    /// Takes the table's columns when they changed (another writer, or this one, added
    /// some): the effective schema is made again, the batch's rows follow it, and records
    /// already sent are sent again, so that they carry the new columns too (ClickHouse
    /// keeps the last copy).
    fn follow_table(&mut self, batch: &mut Batch, sent: &mut Sent) -> Result<(), PipelineError> {
        if *self.table.schema() == self.table_schema {
            return Ok(());
        }
        let effective = self.table.effective_schema(&self.configured)?;
        batch.follow(&self.settings.schema, &effective);
        tracing::info!(
            version = self.table.version(),
            columns = ?effective.columns().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            "the table's columns changed: events are read by its new columns"
        );
        self.fields = processed::RecordFields::of(&effective);
        self.settings.clickhouse.schema = effective.clone();
        self.settings.schema = effective;
        self.table_schema = self.table.schema().clone();
        sent.events.clear();
        Ok(())
    }

    /// Schema evolution: places the batch's fields no column held when they were read
    /// ([`Batch::place`]), adding the columns they need to the table first (one metadata
    /// commit; a lost race is a write conflict, and the attempt starts again from the
    /// new version).
    fn evolve(&mut self, batch: &mut Batch, sent: &mut Sent, record: &mut BatchRecord) -> Result<(), PipelineError> {
        loop {
            let limits = crate::batch::Limits::of(&self.settings);
            let (additions, refused) = batch.place(&limits);
            record.invalid += refused;
            if additions.is_empty() {
                return Ok(());
            }
            let rt = self.runtime.clone();
            let version = rt.block_on(self.table.add_columns(&additions))?;
            tracing::info!(
                version,
                columns = ?additions.iter().map(|(name, kind)| format!("{name} {kind}")).collect::<Vec<_>>(),
                "schema evolution: added columns to the table"
            );
            metrics::columns_added(additions.len());
            self.follow_table(batch, sent)?;
        }
    }
}

/// Runs `f` and measures how long it took.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    (f.await, started.elapsed())
}

/// The batch under collection, and the assignment it is collected under.
struct Collecting<'a> {
    batch: Batch,
    settings: &'a Settings,
    /// What makes a message a row or a `too_large` dead letter (derived once per run).
    limits: &'a crate::batch::Limits,
    source: &'a Source,
    /// The assignment generation the batch belongs to.
    generation: &'a mut u64,
    /// A consumer error was seen: the collection ends and the partitions are checked.
    consumer_error: bool,
}

impl Collector for Collecting<'_> {
    type Error = PipelineError;

    fn is_full(&self) -> bool {
        self.consumer_error || self.batch.abandoned.is_some() || self.batch.is_at_limit(&self.settings.batch)
    }

    fn consumer_error(&mut self, error: KafkaError) {
        tracing::warn!(error = %error, "consumer error; checking the raw topic's partitions");
        self.consumer_error = true;
    }

    fn after_poll(&mut self, positions: &mut Positions) -> Result<(), PipelineError> {
        if let Some(fatal) = crate::kafka::fatal_client_error() {
            return Err(PipelineError::FatalKafka(fatal));
        }
        let mut assignment = self.source.assignment();
        if let Some(failure) = &assignment.failure {
            return Err(PipelineError::Assignment(failure.clone()));
        }
        if assignment.generation != *self.generation {
            // A rebalance: partitions revoked, or assigned again (their fetch starts over
            // from Delta's offsets), lose what was collected of them (it will be read
            // again, here or by their new owner); partitions a cooperative rebalance
            // left assigned go on where they are, their part of the batch kept.
            *self.generation = assignment.generation;
            let restarted = std::mem::take(&mut assignment.restarted);
            let kept: BTreeSet<i32> = positions
                .next
                .keys()
                .copied()
                .filter(|p| assignment.next.contains_key(p) && !restarted.contains(p))
                .collect();
            let gone: BTreeSet<i32> = self.batch.ranges.keys().copied().filter(|p| !kept.contains(p)).collect();
            let dropped = self.batch.drop_partitions(&gone);
            if dropped > 0 {
                tracing::info!(dropped, partitions = ?gone, kept = ?kept, "rebalance: dropping what was collected of partitions no longer read on");
            }
            positions.reassign(&assignment.next, &kept);
        }
        Ok(())
    }

    fn skip(&mut self, partition: i32, from: i64, to: i64) {
        tracing::debug!(partition, from, to, "offsets skipped at the partition's end (transaction markers)");
        self.batch.skip(partition, from, to);
    }

    fn take(&mut self, m: &BorrowedMessage<'_>, gap: u64) {
        if gap > 0 {
            // Inside the range the broker holds, a skipped offset is a transaction marker,
            // an aborted transaction's record (read_committed) or a compacted one: never
            // a loss. Losses are offsets below the partition's first one, which the range
            // check catches (`kafka::ranges`, `fail_on_data_loss`).
            tracing::debug!(
                partition = m.partition(),
                expected = m.offset() - gap as i64,
                got = m.offset(),
                "offsets skipped inside the partition (transaction markers, aborted transactions, compaction)"
            );
            self.batch.offset_gaps += gap;
        }
        // The window is judged against the message's own timestamp (the same on every
        // read), or the time it is read when the broker gives none.
        let reference = || {
            m.timestamp()
                .to_millis()
                .and_then(|ms| EventTime::from_micros(ms.saturating_mul(1_000)).ok())
                .unwrap_or_else(EventTime::now)
        };
        self.batch.add_at(m.partition(), m.offset(), m.key(), m.payload(), self.limits, reference);
    }
}

/// What earlier attempts of a batch already sent, so a retry does not send it again.
struct Sent {
    /// The batch's ingestion time, taken once: every record sent and every row stored
    /// carries it, whichever attempt sent or stored it.
    ingested_at: EventTime,
    dead_letters: HashSet<(i32, i64)>,
    events: BTreeSet<DedupKey>,
    merge_attempted: bool,
}

impl Sent {
    fn new(ingested_at: EventTime) -> Self {
        Self { ingested_at, dead_letters: HashSet::new(), events: BTreeSet::new(), merge_attempted: false }
    }
}

/// A few bits of randomness for pauses (the clock's nanoseconds are enough to keep two
/// processes out of step).
fn jitter() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::from(d.subsec_nanos()) / 1_000_000)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}
