//! The raw-topic consumer: group membership, and where each partition starts.
//!
//! Invariant: Delta, not the Kafka group, says where a partition resumes. On every
//! assignment the rebalance hook reloads the table, reads each assigned partition's txn
//! version (the last offset stored) and assigns the partition at the offset after it, so
//! no message before that point is delivered and none after it is skipped. The Kafka
//! group offsets are written afterwards for lag tools only, and never read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::config::{ConsumerMode, Settings};
use crate::kafka::{self, KafkaFailure, Role, client_config};
use crate::sink::delta::EventTable;

/// What the rebalance hook tells the batch loop.
#[derive(Debug, Default)]
pub struct Assignment {
    /// Bumped on every assignment or revocation: a batch collected under an older
    /// generation is dropped (its partitions restart from Delta).
    pub generation: u64,
    /// Assigned partitions and the next offset to read on each (`None`: from the
    /// beginning, nothing stored yet).
    pub next: BTreeMap<i32, Option<i64>>,
    /// A failure inside the hook (Delta unreadable): the processor must stop.
    pub failure: Option<String>,
}

/// The consumer context: holds what the rebalance hook needs to read Delta.
pub struct SourceContext {
    /// Raw topic, Delta path and the txn app ids ([`Settings::txn_app_id`], the same
    /// ids the pipeline commits with).
    settings: Settings,
    /// The runtime to run the async Delta read on; the hook runs on the consumer's own
    /// thread, never on a runtime worker, so blocking on it is allowed.
    runtime: Handle,
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
        let ids: Vec<(i32, String)> = partitions.iter().map(|p| (*p, self.settings.txn_app_id(*p))).collect();
        let path = self.settings.delta_path.clone();
        let versions = self.runtime.block_on(async move {
            let table = EventTable::open(&path).await?;
            table.txn_versions(ids.iter().map(|(p, id)| (*p, id.as_str()))).await
        });
        let versions = versions.map_err(|e| e.to_string())?;
        Ok(partitions.iter().map(|p| (*p, versions.get(p).map(|v| v + 1))).collect())
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
                                tracing::error!(partition = p, error = %e, "cannot set start offset");
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
                }
            }
            other => {
                tracing::warn!(?other, "rebalance error; unassigning to resynchronise");
                let _ = consumer.unassign();
                let mut state = self.state();
                state.generation += 1;
                state.next.clear();
            }
        }
    }
}

/// The raw-topic consumer and the assignment state its hook maintains.
pub struct Source {
    pub consumer: BaseConsumer<SourceContext>,
    pub assignment: Arc<Mutex<Assignment>>,
    pub topic: String,
    pub mode: ConsumerMode,
    /// The raw topic's partition count at start.
    pub partitions: i32,
}

impl Source {
    /// Takes the raw topic's partitions: in [`ConsumerMode::Assign`] all of them at once,
    /// in [`ConsumerMode::Group`] by joining the group. The topic must exist.
    pub fn subscribe(settings: &Settings, runtime: Handle) -> Result<Self, KafkaFailure> {
        let state = Arc::new(Mutex::new(Assignment::default()));
        let context = SourceContext { settings: settings.clone(), runtime, state: state.clone() };
        let consumer: BaseConsumer<SourceContext> = client_config(
            settings,
            Role::Consumer,
            &[
                ("group.id", settings.group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                // Only used if a stored start is out of range (topic recreated, retention):
                // then re-reading from the start is safe, the MERGE drops what is stored.
                ("auto.offset.reset", "earliest"),
                ("isolation.level", "read_uncommitted"),
                // End-of-partition events tell `--until-idle` that a partition is caught up.
                ("enable.partition.eof", "true"),
                ("fetch.wait.max.ms", "50"),
                ("fetch.queue.backoff.ms", "20"),
                ("max.partition.fetch.bytes", "10485760"),
                ("queued.max.messages.kbytes", "262144"),
                ("statistics.interval.ms", kafka::STATS_INTERVAL_MS),
            ],
        )
        .create_with_context(context)
        .map_err(kafka::client_error(settings))?;
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
                let mut tpl = TopicPartitionList::new();
                for (p, start) in &starts {
                    tpl.add_partition_offset(&settings.topics.raw, *p, start.map_or(Offset::Beginning, Offset::Offset))
                        .map_err(kafka::client_error(settings))?;
                }
                consumer.assign(&tpl).map_err(kafka::client_error(settings))?;
                tracing::info!(?starts, "all partitions assigned; starting after the offsets stored in Delta");
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.generation += 1;
                s.next = starts;
            }
        }
        Ok(Self {
            consumer,
            assignment: state,
            topic: settings.topics.raw.clone(),
            mode: settings.consumer_mode,
            partitions,
        })
    }

    pub fn assignment(&self) -> MutexGuard<'_, Assignment> {
        self.assignment.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records progress in the Kafka group, for lag tools; Delta stays the truth, so a
    /// failure here is logged, not fatal.
    pub fn commit_offsets(&self, last: &BTreeMap<i32, i64>) {
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in last {
            if tpl.add_partition_offset(&self.topic, *p, Offset::Offset(offset + 1)).is_err() {
                return;
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, rdkafka::consumer::CommitMode::Async)
        {
            tracing::debug!(error = %e, "committing group offsets failed (Delta holds the truth)");
        }
    }

    /// Leaves and joins the group again, forcing a rebalance (see [`OrphanWatch`]).
    pub fn rejoin(&self, orphans: &[i32]) -> Result<(), KafkaError> {
        tracing::warn!(
            topic = %self.topic,
            ?orphans,
            "partitions with unread messages have made no progress for a long time and this \
             instance does not hold them: rejoining the group to force a new assignment"
        );
        self.consumer.unsubscribe();
        self.consumer.subscribe(&[&self.topic])
    }

    /// The end (high watermark) of each partition; partitions the broker does not answer
    /// for (within a second: the caller is the batch loop) are left out.
    pub fn ends(&self, partitions: impl IntoIterator<Item = i32>) -> BTreeMap<i32, i64> {
        partitions
            .into_iter()
            .filter_map(|p| {
                self.consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(1))
                    .map(|(_, high)| (p, high))
                    .map_err(|e| tracing::debug!(partition = p, error = %e, "cannot read the partition's end"))
                    .ok()
            })
            .collect()
    }

    /// Polls for one message or event.
    pub fn poll(&self, timeout: Duration) -> Option<Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>> {
        self.consumer.poll(timeout)
    }
}

/// Group mode's guard against partitions that nobody reads.
///
/// A consumer group is only as live as its coordinator: tansu 0.6.0 sometimes keeps a
/// crashed member in the group for good, so the partitions assigned to it are read by
/// nobody (and a member that joins after a crash may get nothing at all). Each instance
/// therefore watches the partitions it does not hold: one with unread messages (its end
/// is past the offset Delta records) whose Delta offset has not moved for `patience` is
/// called an orphan, and the instance rejoins the group, which makes the coordinator
/// assign every partition again among the members that answer. Patience doubles after
/// each rejoin (up to [`OrphanWatch::MAX_PATIENCE`]) so that a slow owner costs a few
/// rebalances, not a storm.
#[derive(Debug)]
pub struct OrphanWatch {
    patience: Duration,
    /// Per partition: the last offset Delta recorded, and since when.
    seen: BTreeMap<i32, (Option<i64>, Instant)>,
}

impl OrphanWatch {
    pub const PATIENCE: Duration = Duration::from_secs(60);
    pub const MAX_PATIENCE: Duration = Duration::from_secs(600);

    pub fn new(patience: Duration) -> Self {
        Self { patience, seen: BTreeMap::new() }
    }

    /// Takes one observation: `held` are this instance's partitions, `stored` the last
    /// offset Delta records per partition, `ends` each partition's end offset. Returns the
    /// orphans; when there are some, the caller rejoins and the clock restarts.
    pub fn observe(
        &mut self,
        now: Instant,
        held: &BTreeSet<i32>,
        stored: &BTreeMap<i32, i64>,
        ends: &BTreeMap<i32, i64>,
    ) -> Vec<i32> {
        // A partition not observed this time (held by this instance, or no answer) starts
        // a fresh clock when it is observed again.
        self.seen.retain(|p, _| ends.contains_key(p));
        let mut orphans = Vec::new();
        for (&p, &end) in ends {
            let at = stored.get(&p).copied();
            // Unread: more than one offset past the last one stored. One is tolerated:
            // a transactional producer's commit marker takes an offset that no consumer
            // ever delivers, so a caught-up partition can end one past its last record.
            let unread = end > at.map_or(0, |o| o + 2);
            let entry = self.seen.entry(p).or_insert((at, now));
            // The clock runs only while the partition is behind and not moving: progress
            // or being caught up restarts it (so a burst after a quiet hour is no orphan).
            if entry.0 != at || !unread {
                *entry = (at, now);
            }
            if !held.contains(&p) && unread && now.duration_since(entry.1) >= self.patience {
                orphans.push(p);
            }
        }
        if !orphans.is_empty() {
            for entry in self.seen.values_mut() {
                entry.1 = now;
            }
            self.patience = (self.patience * 2).min(Self::MAX_PATIENCE);
        }
        orphans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_partition_with_unread_messages_that_nobody_moves_is_an_orphan() {
        let mut watch = OrphanWatch::new(MIN);
        let t0 = Instant::now();
        let held = BTreeSet::from([0, 1]);
        let ends = BTreeMap::from([(0, 100), (1, 100), (2, 100), (3, 50), (4, 51)]);
        // 2 is behind and stuck; 3 is caught up (offset 49 stored, end 50), and so is 4
        // (its last offset, 50, is a transaction marker).
        let stored = BTreeMap::from([(0, 10), (2, 40), (3, 49), (4, 49)]);
        assert!(watch.observe(t0, &held, &stored, &ends).is_empty());
        assert!(watch.observe(t0 + MIN / 2, &held, &stored, &ends).is_empty());
        assert_eq!(watch.observe(t0 + MIN, &held, &stored, &ends), vec![2]);
        // After a rejoin the clock restarts and patience doubles.
        assert!(watch.observe(t0 + MIN * 2, &held, &stored, &ends).is_empty());
        assert_eq!(watch.observe(t0 + MIN * 3, &held, &stored, &ends), vec![2]);
    }

    #[test]
    fn new_messages_after_a_quiet_spell_are_no_orphan_yet() {
        let mut watch = OrphanWatch::new(MIN);
        let t0 = Instant::now();
        let held = BTreeSet::new();
        let stored = BTreeMap::from([(0, 99)]);
        // Caught up for an hour, then a burst the owner has not committed yet.
        assert!(watch.observe(t0, &held, &stored, &BTreeMap::from([(0, 100)])).is_empty());
        assert!(watch.observe(t0 + MIN * 60, &held, &stored, &BTreeMap::from([(0, 100)])).is_empty());
        let burst = BTreeMap::from([(0, 500)]);
        assert!(watch.observe(t0 + MIN * 60 + MIN / 6, &held, &stored, &burst).is_empty());
        assert!(watch.observe(t0 + MIN * 60 + MIN / 2, &held, &stored, &burst).is_empty());
        // Still not moving a whole patience after the burst arrived: an orphan.
        assert_eq!(watch.observe(t0 + MIN * 61 + MIN / 6, &held, &stored, &burst), vec![0]);
    }

    #[test]
    fn progress_by_another_member_or_holding_it_is_no_orphan() {
        let mut watch = OrphanWatch::new(MIN);
        let t0 = Instant::now();
        let ends = BTreeMap::from([(0, 1_000)]);
        assert!(watch.observe(t0, &BTreeSet::new(), &BTreeMap::from([(0, 10)]), &ends).is_empty());
        // Another member moves it, slowly: never an orphan.
        assert!(watch.observe(t0 + MIN, &BTreeSet::new(), &BTreeMap::from([(0, 20)]), &ends).is_empty());
        assert!(watch.observe(t0 + MIN * 2, &BTreeSet::new(), &BTreeMap::from([(0, 30)]), &ends).is_empty());
        // Stuck, but this instance holds it (its own batches are failing): no rejoin.
        assert!(watch.observe(t0 + MIN * 5, &BTreeSet::from([0]), &BTreeMap::from([(0, 30)]), &ends).is_empty());
        // Nothing stored yet and messages waiting: an orphan once patience runs out.
        let mut fresh = OrphanWatch::new(MIN);
        assert!(fresh.observe(t0, &BTreeSet::new(), &BTreeMap::new(), &ends).is_empty());
        assert_eq!(fresh.observe(t0 + MIN, &BTreeSet::new(), &BTreeMap::new(), &ends), vec![0]);
        // An empty partition is never one.
        let mut empty = OrphanWatch::new(MIN);
        let none = BTreeMap::from([(0, 0)]);
        assert!(empty.observe(t0, &BTreeSet::new(), &BTreeMap::new(), &none).is_empty());
        assert!(empty.observe(t0 + MIN * 3, &BTreeSet::new(), &BTreeMap::new(), &none).is_empty());
    }
}
