//! What is particular to the raw topic's consumer: group membership and the rebalance
//! hook, where each partition starts (Delta's offsets), and group mode's watch for
//! partitions nobody reads ([`orphans`]). The positions, the collect loop and the broker's
//! ranges are the positioned consumer's, shared with the ClickHouse sink
//! ([`crate::kafka::positioned`], [`crate::kafka::ranges`]).
//!
//! Invariant: Delta, not the Kafka group, says where a partition resumes. On every
//! assignment the rebalance hook reloads the table, reads each assigned partition's txn
//! version (the last offset stored) and assigns the partition at the offset after it, so
//! no message before that point is delivered and none after it is skipped. The Kafka
//! group offsets are written afterwards for lag tools only, and never read.

pub mod check;
pub mod orphans;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::config::{ConsumerMode, Settings};
use crate::kafka::positioned::{self, Collector, Positions};
use crate::kafka::ranges::{self, OffsetReset};
use crate::kafka::{self, KafkaFailure, Role, client_config};
use crate::shutdown::Shutdown;
pub use crate::source::orphans::OrphanWatch;
use crate::table::EventTable;
use crate::table::offsets::{self, AppIds};

/// What the rebalance hook tells the batch loop.
#[derive(Debug, Default)]
pub struct Assignment {
    /// Bumped on every assignment or revocation: the processor then looks at what
    /// changed.
    pub generation: u64,
    /// Assigned partitions and the next offset to read on each (`None`: from the
    /// beginning, nothing stored yet), as of their assignment.
    pub next: BTreeMap<i32, Option<i64>>,
    /// Partitions (re)assigned since the processor last looked: their fetch starts over at
    /// the offset in `next`, so what it collected of them is dropped. Partitions that a
    /// cooperative rebalance leaves assigned are not here: their reading goes on where
    /// it is, and so does their part of the batch.
    pub restarted: BTreeSet<i32>,
    /// A failure inside the hook (Delta unreadable): the processor must stop.
    pub failure: Option<String>,
}

/// The consumer context: holds what the rebalance hook needs to read Delta.
pub struct SourceContext {
    /// Raw topic, Delta path and the group, whose txn app ids ([`AppIds::of`], the same
    /// ids the pipeline commits with) hold the stored offsets.
    settings: Settings,
    /// The runtime to run the async Delta read on; the hook runs on the consumer's own
    /// thread, never on a runtime worker, so blocking on it is allowed.
    runtime: Handle,
    /// The table, opened once at start-up and brought up to date on each assignment.
    table: Mutex<EventTable>,
    state: Arc<Mutex<Assignment>>,
}

impl ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        kafka::log_client_error(error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::metrics::consumer_lag(&kafka::lag_from_stats(&statistics, &self.settings.topics.raw));
    }
}

impl SourceContext {
    fn state(&self) -> MutexGuard<'_, Assignment> {
        // A poisoned lock means a panic elsewhere already ended the processor.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Next offset to read per partition, from the table's txn versions.
    fn starts_from_delta(&self, partitions: &[i32]) -> Result<BTreeMap<i32, Option<i64>>, String> {
        let ids = AppIds::of(&self.settings);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let stored = self.runtime.block_on(async {
            table.reload().await?;
            table.stored_offsets(&ids, partitions.iter().copied()).await
        });
        let stored = stored.map_err(|e| e.to_string())?;
        Ok(offsets::starts(partitions.iter().copied(), &stored))
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<i32> = tpl
                    .elements()
                    .iter()
                    .filter(|e| e.topic() == self.settings.topics.raw)
                    .map(|e| e.partition())
                    .collect();
                match self.starts_from_delta(&partitions) {
                    Ok(starts) => {
                        for (p, start) in &starts {
                            let offset = start.map_or(Offset::Beginning, Offset::Offset);
                            if let Err(e) = tpl.set_partition_offset(&self.settings.topics.raw, *p, offset) {
                                // Never any other start than Delta's: take nothing and stop.
                                let _ =
                                    if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                                self.state().failure = Some(format!(
                                    "cannot start partition {p} at the offset Delta gives ({offset:?}): {e}"
                                ));
                                return;
                            }
                        }
                        let result = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                        if let Err(e) = result {
                            self.state().failure = Some(format!("assigning partitions failed: {e}"));
                            return;
                        }
                        tracing::info!(?starts, "partitions assigned; starting after the offsets stored in Delta");
                        let mut state = self.state();
                        state.generation += 1;
                        if !cooperative {
                            state.next.clear();
                        }
                        state.restarted.extend(starts.keys().copied());
                        state.next.extend(starts);
                    }
                    Err(e) => {
                        // Without Delta's offsets no start is safe: take nothing and stop.
                        tracing::error!(error = %e, "cannot read offsets from Delta on assignment");
                        let _ = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                        self.state().failure = Some(format!("reading the offsets stored in Delta failed: {e}"));
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?revoked, "partitions revoked");
                let _ = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                let mut state = self.state();
                state.generation += 1;
                for p in revoked {
                    state.next.remove(&p);
                    state.restarted.remove(&p);
                }
            }
            other => {
                tracing::warn!(?other, "rebalance error; unassigning to resynchronise");
                let _ = consumer.unassign();
                let mut state = self.state();
                state.generation += 1;
                state.next.clear();
                state.restarted.clear();
            }
        }
    }
}

/// What the broker said of the raw topic ([`Source::broker_view`]).
#[derive(Debug)]
pub struct BrokerView {
    /// Its partition count, if the broker answered.
    pub partitions: Option<i32>,
    /// The partitions asked about whose offset lies outside what the broker holds.
    pub resets: Vec<OffsetReset>,
    /// Whether every partition's range was answered.
    pub answered: bool,
}

/// The raw-topic consumer and the assignment state its hook maintains.
pub struct Source {
    consumer: BaseConsumer<SourceContext>,
    assignment: Arc<Mutex<Assignment>>,
    topic: String,
    mode: ConsumerMode,
    /// The raw topic's partition count when last looked at.
    partitions: i32,
}

impl Source {
    /// Takes the raw topic's partitions: in [`ConsumerMode::Assign`] all of them at once,
    /// in [`ConsumerMode::Group`] by joining the group. The topic must exist. `table` is
    /// the events table as the caller opened it (read for the stored offsets, and kept
    /// up to date incrementally: never opened again).
    pub fn subscribe(settings: &Settings, runtime: Handle, table: EventTable) -> Result<Self, KafkaFailure> {
        let state = Arc::new(Mutex::new(Assignment::default()));
        let consumer = Self::consumer(settings, runtime, table, state.clone())?;
        let partitions = Self::take(&consumer, settings, &state)?;
        Ok(Self {
            consumer,
            assignment: state,
            topic: settings.topics.raw.clone(),
            mode: settings.consumer_mode,
            partitions,
        })
    }

    /// Replaces the consumer with a new one that takes the partitions again as at start,
    /// from the offsets Delta stores (between batches, after a reset was recorded there).
    /// After the raw topic was deleted and recreated, librdkafka keeps the old topic's
    /// leader epochs and ignores the new topic's metadata as older wherever a leader had
    /// changed: such a partition is never fetched again, with no error. A new client has
    /// no such memory. The assignment generation goes on from the old consumer's, so the
    /// batch loop adopts the new positions.
    pub fn renew(&mut self, settings: &Settings, runtime: Handle, table: EventTable) -> Result<(), KafkaFailure> {
        tracing::info!(topic = %self.topic, "replacing the raw topic's consumer, which may hold the old topic's metadata");
        let consumer = Self::consumer(settings, runtime, table, self.assignment.clone())?;
        // The old consumer is closed first: in group mode it leaves the group, its
        // partitions revoked from the shared state, before the new one joins.
        drop(std::mem::replace(&mut self.consumer, consumer));
        self.partitions = Self::take(&self.consumer, settings, &self.assignment)?;
        Ok(())
    }

    /// A new consumer of the raw topic, sharing `state`, that has taken no partition yet.
    fn consumer(
        settings: &Settings,
        runtime: Handle,
        table: EventTable,
        state: Arc<Mutex<Assignment>>,
    ) -> Result<BaseConsumer<SourceContext>, KafkaFailure> {
        let context = SourceContext { settings: settings.clone(), runtime, table: Mutex::new(table), state };
        let consumer: BaseConsumer<SourceContext> = client_config(
            settings,
            Role::Consumer,
            &[
                ("group.id", settings.group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                // Every start is set explicitly, from Delta; one the broker does not hold
                // (topic recreated or truncated) is an error the processor decides on
                // (`ranges`), never a silent jump.
                ("auto.offset.reset", "error"),
                // How soon group mode sees new partitions (librdkafka then rebalances);
                // assign mode looks itself (`Source::partition_count_now`).
                ("topic.metadata.refresh.interval.ms", "10000"),
                // Records of aborted or open transactions are never events (the
                // pass-through cannot change it: `config::GUARDED_KAFKA_SETTINGS`).
                ("isolation.level", "read_committed"),
                // End-of-partition events tell `--until-idle` that a partition is caught up.
                ("enable.partition.eof", "true"),
                ("fetch.wait.max.ms", "50"),
                ("fetch.queue.backoff.ms", "20"),
                ("max.partition.fetch.bytes", "10485760"),
                // Messages fetched ahead while a batch is processed: 64 MiB keeps the
                // pipe full (over 600,000 events of 100 bytes) and bounds what it adds to
                // a batch's memory (BENCHMARKS.md, "Memory as events grow").
                ("queued.max.messages.kbytes", "65536"),
                ("statistics.interval.ms", kafka::STATS_INTERVAL_MS),
            ],
        )
        .create_with_context(context)
        .map_err(kafka::client_error(settings))?;
        Ok(consumer)
    }

    /// Takes the raw topic's partitions with `consumer` (see [`Source::subscribe`]);
    /// returns the topic's partition count.
    fn take(
        consumer: &BaseConsumer<SourceContext>,
        settings: &Settings,
        state: &Mutex<Assignment>,
    ) -> Result<i32, KafkaFailure> {
        let partitions = kafka::partition_count(settings, consumer.client(), Some(&settings.topics.raw))? as i32;
        match settings.consumer_mode {
            ConsumerMode::Group => {
                consumer.subscribe(&[&settings.topics.raw]).map_err(kafka::client_error(settings))?;
            }
            ConsumerMode::Assign => {
                // Every partition, each at the offset after the one Delta records.
                let all: Vec<i32> = (0..partitions).collect();
                let starts = consumer.context().starts_from_delta(&all).map_err(|e| KafkaFailure::Client {
                    brokers: settings.brokers.clone(),
                    source: KafkaError::Subscription(format!("reading the offsets stored in Delta failed: {e}")),
                })?;
                let tpl =
                    positioned::assignment(&settings.topics.raw, &starts).map_err(kafka::client_error(settings))?;
                consumer.assign(&tpl).map_err(kafka::client_error(settings))?;
                tracing::info!(?starts, "all partitions assigned; starting after the offsets stored in Delta");
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.generation += 1;
                s.restarted = starts.keys().copied().collect();
                s.next = starts;
            }
        }
        Ok(partitions)
    }

    pub fn assignment(&self) -> MutexGuard<'_, Assignment> {
        self.assignment.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records progress in the Kafka group, for lag tools; Delta stays the truth, so a
    /// failure here is logged, not fatal.
    pub fn commit_offsets(&self, last: &BTreeMap<i32, i64>) {
        if let Err(e) = positioned::commit_after(&self.consumer, &self.topic, last, CommitMode::Async) {
            tracing::debug!(error = %e, "committing group offsets failed (Delta holds the truth)");
        }
    }

    /// How the partitions are taken: all at once, or through the group.
    pub fn mode(&self) -> ConsumerMode {
        self.mode
    }

    /// The raw topic's partition count when last looked at.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// Polls the consumer into `batch` ([`crate::kafka::positioned::collect`]).
    pub fn collect<B: Collector>(
        &self,
        positions: &mut Positions,
        batch: &mut B,
        deadline: Instant,
        shutdown: &Shutdown,
    ) -> Result<(), B::Error> {
        crate::kafka::positioned::collect(&self.consumer, positions, batch, deadline, shutdown)
    }

    /// Follows the raw topic's partition count as the broker reports it (`now`): new
    /// partitions are read from Delta's offsets (assign mode, keeping every other
    /// partition at its place in `positions`), or the group is rejoined so that they are
    /// assigned (group mode: librdkafka rebalances when its metadata shows the new count,
    /// but the leader may assign from an older view; a rebalance now, with the new count
    /// known, assigns them).
    pub fn follow_partition_count(&mut self, now: i32, positions: &mut Positions) -> Result<(), String> {
        let known = self.partitions;
        if now == known {
            return Ok(());
        }
        tracing::warn!(topic = %self.topic, from = known, to = now, "the raw topic's partition count changed");
        let added: Vec<i32> = (known..now).collect();
        match self.mode {
            ConsumerMode::Assign if now > known => self.add_partitions(&added, positions)?,
            ConsumerMode::Group if now > known => self
                .rejoin(&added, "the raw topic has new partitions")
                .map_err(|e| format!("rejoining the group for the new partitions failed: {e}"))?,
            _ => {}
        }
        self.partitions = now;
        Ok(())
    }

    /// Leaves and joins the group again, forcing a rebalance, because of `partitions`
    /// (`why`: see [`OrphanWatch`], and new partitions in [`Source::follow_partition_count`]).
    pub fn rejoin(&self, partitions: &[i32], why: &str) -> Result<(), KafkaError> {
        tracing::warn!(topic = %self.topic, ?partitions, "{why}: rejoining the group to force a new assignment");
        self.consumer.unsubscribe();
        self.consumer.subscribe(&[&self.topic])
    }

    /// The raw topic's partition count now; `None` when the broker does not answer within
    /// a second or does not know the topic (deleted, being recreated).
    pub fn partition_count_now(&self) -> Option<i32> {
        crate::kafka::admin::partition_count_now(self.consumer.client(), &self.topic, Duration::from_secs(1))
    }

    /// Assign mode: starts reading `added` (new partitions of the raw topic) from the
    /// offsets Delta stores, or from the beginning, keeping every partition already read
    /// at its position in `positions` (between batches, so nothing collected is lost).
    fn add_partitions(&mut self, added: &[i32], positions: &mut Positions) -> Result<(), String> {
        let starts = self.consumer.context().starts_from_delta(added)?;
        let mut next = positions.next.clone();
        next.extend(starts.iter().map(|(p, start)| (*p, *start)));
        let tpl = positioned::assignment(&self.topic, &next).map_err(|e| e.to_string())?;
        self.consumer.assign(&tpl).map_err(|e| format!("assigning the new partitions failed: {e}"))?;
        tracing::info!(?starts, "new partitions of the raw topic assigned; starting after the offsets stored in Delta");
        positions.next.extend(starts);
        self.partitions = self.partitions.max(added.iter().max().map_or(0, |p| p + 1));
        Ok(())
    }

    /// The partitions in `next` (the next offset expected on each) whose offset lies
    /// outside what the broker holds; partitions it does not answer for are left out.
    /// `read_to`: how far this consumer read each partition, when no consumer error came
    /// since the last look (see [`ranges::out_of_range`]).
    pub fn out_of_range(
        &self,
        next: &BTreeMap<i32, Option<i64>>,
        read_to: Option<&BTreeMap<i32, i64>>,
    ) -> (Vec<OffsetReset>, bool) {
        ranges::out_of_range(&self.consumer, &self.topic, next, read_to)
    }

    /// What the broker says of the raw topic now: its partition count, and the
    /// partitions of `next` whose offset lies outside what it holds
    /// ([`ranges::out_of_range`]), both asked at once. Asked beside a batch's
    /// collection.
    pub fn broker_view(&self, next: &BTreeMap<i32, Option<i64>>, read_to: Option<&BTreeMap<i32, i64>>) -> BrokerView {
        std::thread::scope(|scope| {
            let partitions = scope.spawn(|| self.partition_count_now());
            let (resets, answered) = self.out_of_range(next, read_to);
            let partitions = partitions.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            BrokerView { partitions, resets, answered }
        })
    }

    /// Moves reading on the partitions in `to` to the offset given there (after resets
    /// were recorded in Delta), every other partition of `next` staying where it is
    /// expected ([`ranges::reposition`]).
    pub fn reposition(&self, to: &BTreeMap<i32, i64>, next: &BTreeMap<i32, Option<i64>>) -> Result<(), KafkaError> {
        ranges::reposition(&self.consumer, &self.topic, to, next)
    }

    /// The end (high watermark) of each partition; partitions the broker does not answer
    /// for (within a second: the caller is the batch loop) are left out.
    pub fn ends(&self, partitions: impl IntoIterator<Item = i32>) -> BTreeMap<i32, i64> {
        ranges::watermarks(&self.consumer, &self.topic, partitions)
            .into_iter()
            .filter_map(|(p, range)| Some((p, range?.1)))
            .collect()
    }
}
