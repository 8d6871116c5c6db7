//! The one collect loop: poll a consumer into a batch until the trigger interval ends,
//! the batch is full, or shutdown is requested. The processor (raw topic into a
//! [`crate::batch::Batch`]) and the ClickHouse sink (processed topic into an insert) both
//! collect through it.
//!
//! Invariants kept by [`Positions`]:
//! - a message is taken only on a partition being read, and never before the offset
//!   expected there (the start Delta or the group gave, or the previous message + 1), so
//!   nothing before a partition's start is delivered twice;
//! - a message after the offset expected is taken and its gap reported to the batch,
//!   which counts it (offsets the broker skipped inside the partition: transaction
//!   markers, aborted transactions' records, compaction; offsets below the partition's
//!   first are the range check's: [`crate::kafka::ranges`]);
//! - a partition is "at its end" from its end-of-partition event until its next message;
//!   at that event, offsets between the one expected and the consumer's position (the
//!   markers that close transactions, aborted records: read_committed reads past them
//!   without delivering anything) are skipped too and reported to the batch, so that a
//!   partition ending on a marker is read to its end.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

use crate::shutdown::Shutdown;

/// How long one poll may block: the loop looks at the deadline and shutdown this often.
const POLL: Duration = Duration::from_millis(100);

/// Where reading stands on each partition, kept across batches.
#[derive(Debug)]
pub struct Positions {
    /// The partitions being read and the next offset expected on each (`None`: from
    /// wherever the consumer starts, nothing expected yet).
    pub next: BTreeMap<i32, Option<i64>>,
    /// Partitions whose end was reached (an end-of-partition event) with nothing read
    /// since.
    pub at_end: BTreeSet<i32>,
    /// When the last message was taken.
    pub last_message: Instant,
    /// Per partition, the offset after the last message this assignment read: how far
    /// the broker's fetches have shown the partition to reach.
    pub read_to: BTreeMap<i32, i64>,
}

impl Default for Positions {
    fn default() -> Self {
        Self { next: BTreeMap::new(), at_end: BTreeSet::new(), last_message: Instant::now(), read_to: BTreeMap::new() }
    }
}

impl Positions {
    /// Positions starting at `next`.
    pub fn new(next: BTreeMap<i32, Option<i64>>) -> Self {
        Self { next, ..Self::default() }
    }

    /// A new assignment, `next`, in which the partitions in `kept` go on where they are
    /// (a cooperative rebalance left them assigned) and every other one starts over at
    /// its offset in `next`.
    pub fn reassign(&mut self, next: &BTreeMap<i32, Option<i64>>, kept: &BTreeSet<i32>) {
        let mut now = next.clone();
        for p in kept {
            if let Some(at) = self.next.get(p) {
                now.insert(*p, *at);
            }
        }
        self.next = now;
        self.at_end.retain(|p| kept.contains(p));
        self.read_to.retain(|p, _| kept.contains(p));
    }

    /// Whether a message at `offset` of `partition` is to be taken, and if so how many
    /// offsets it lies past the one expected; takes note of it.
    fn accept(&mut self, partition: i32, offset: i64) -> Option<u64> {
        let gap = match self.next.get(&partition) {
            Some(Some(next)) if offset < *next => return None,
            Some(Some(next)) => (offset - next) as u64,
            Some(None) => 0,
            None => return None,
        };
        self.next.insert(partition, Some(offset + 1));
        self.read_to.insert(partition, offset + 1);
        self.at_end.remove(&partition);
        self.last_message = Instant::now();
        Some(gap)
    }

    /// Reading on `partition` moves to `offset` (a reset): what was read of it before
    /// says nothing of the partition read now.
    pub fn moved(&mut self, partition: i32, offset: i64) {
        self.next.insert(partition, Some(offset));
        self.read_to.remove(&partition);
        self.at_end.remove(&partition);
    }

    /// The consumer stands at `position` on `partition` with nothing delivered before it
    /// since the offset expected: moves the offset expected there and returns the first
    /// offset skipped, if any.
    fn skip_to(&mut self, partition: i32, position: i64) -> Option<i64> {
        let Some(Some(next)) = self.next.get(&partition).copied() else { return None };
        if position <= next {
            return None;
        }
        self.next.insert(partition, Some(position));
        self.read_to.insert(partition, position);
        Some(next)
    }

    /// Whether every partition read is at its end.
    pub fn caught_up(&self) -> bool {
        !self.next.is_empty() && self.next.keys().all(|p| self.at_end.contains(p))
    }

    /// Whether every partition is at its end and nothing arrived for `idle`.
    pub fn idle_for(&self, idle: Duration) -> bool {
        self.last_message.elapsed() >= idle && self.caught_up()
    }
}

/// A batch under collection.
pub trait Collector {
    type Error;

    /// Whether the batch is full: collection ends early.
    fn is_full(&self) -> bool;

    /// Runs after every poll, before its message is taken: where the batch may start over
    /// (a rebalance moved the positions) or stop the collection with an error.
    fn after_poll(&mut self, _positions: &mut Positions) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Takes one message, `gap` offsets past the one expected on its partition.
    fn take(&mut self, message: &BorrowedMessage<'_>, gap: u64);

    /// Offsets `from..to` of `partition` hold nothing to deliver (transaction markers,
    /// aborted records) and the partition ends at `to`: they count as read.
    fn skip(&mut self, _partition: i32, _from: i64, _to: i64) {}

    /// Hears of a consumer error (other than a partition's end), which is already
    /// counted ([`crate::kafka::note_consumer_error`]).
    fn consumer_error(&mut self, error: KafkaError) {
        tracing::warn!(error = %error, "consumer error");
    }
}

/// Polls `consumer` into `batch` until `deadline`, until the batch is full, or until
/// `shutdown` is set.
pub fn collect<C: ConsumerContext, B: Collector>(
    consumer: &BaseConsumer<C>,
    positions: &mut Positions,
    batch: &mut B,
    deadline: Instant,
    shutdown: &Shutdown,
) -> Result<(), B::Error> {
    while !shutdown.is_requested() && !batch.is_full() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let polled = consumer.poll(left.min(POLL));
        batch.after_poll(positions)?;
        match polled {
            Some(Ok(m)) => {
                if let Some(gap) = positions.accept(m.partition(), m.offset()) {
                    batch.take(&m, gap);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                positions.at_end.insert(p);
                if let Some(position) = position(consumer, p)
                    && let Some(from) = positions.skip_to(p, position)
                {
                    batch.skip(p, from, position);
                }
            }
            Some(Err(e)) => {
                crate::kafka::note_consumer_error(&e);
                batch.consumer_error(e);
            }
            None => {}
        }
    }
    Ok(())
}

/// The assignment of `topic` that reads each partition of `next` from its offset (`None`:
/// the beginning).
pub fn assignment(topic: &str, next: &BTreeMap<i32, Option<i64>>) -> Result<TopicPartitionList, KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in next {
        tpl.add_partition_offset(topic, *p, offset.map_or(Offset::Beginning, Offset::Offset))?;
    }
    Ok(tpl)
}

/// Commits, as the group's offsets of `topic`, the offset after `last` on each partition.
pub fn commit_after<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    last: &BTreeMap<i32, i64>,
    mode: CommitMode,
) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in last {
        tpl.add_partition_offset(topic, *p, Offset::Offset(offset + 1))?;
    }
    if tpl.count() == 0 {
        return Ok(());
    }
    consumer.commit(&tpl, mode)
}

/// The consumer's position on `partition` (the next offset it fetches), if it has one.
fn position<C: ConsumerContext>(consumer: &BaseConsumer<C>, partition: i32) -> Option<i64> {
    let positions = consumer.position().ok()?;
    let element = positions.elements().into_iter().find(|e| e.partition() == partition)?;
    element.offset().to_raw().filter(|o| *o >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_before_the_start_or_of_other_partitions_are_not_taken() {
        let mut at = Positions::new(BTreeMap::from([(0, Some(10)), (1, None)]));
        assert_eq!(at.accept(0, 9), None, "before the start");
        assert_eq!(at.accept(2, 0), None, "a partition not read");
        assert_eq!(at.accept(0, 10), Some(0));
        assert_eq!(at.accept(0, 14), Some(3), "offsets 11 to 13 skipped by the broker");
        assert_eq!(at.accept(1, 500), Some(0), "nothing expected yet");
        assert_eq!(at.next, BTreeMap::from([(0, Some(15)), (1, Some(501))]));
    }

    #[test]
    fn a_reassignment_keeps_the_partitions_kept_where_they_are() {
        let mut at = Positions::new(BTreeMap::from([(0, Some(10)), (1, Some(20)), (2, Some(30))]));
        at.accept(0, 15);
        at.accept(1, 25);
        at.at_end.extend([0, 1]);
        // Partition 0 kept; 1 assigned again (starts over at Delta's 21); 2 revoked; 3 new.
        let next = BTreeMap::from([(0, Some(10)), (1, Some(21)), (3, None)]);
        at.reassign(&next, &BTreeSet::from([0]));
        assert_eq!(at.next, BTreeMap::from([(0, Some(16)), (1, Some(21)), (3, None)]));
        assert_eq!(at.at_end, BTreeSet::from([0]));
        assert_eq!(at.read_to, BTreeMap::from([(0, 16)]));
    }

    #[test]
    fn a_position_past_the_offset_expected_skips_to_it() {
        let mut at = Positions::new(BTreeMap::from([(0, Some(10)), (1, None)]));
        assert_eq!(at.skip_to(0, 10), None, "nothing skipped");
        assert_eq!(at.skip_to(0, 12), Some(10), "a marker at 10 and 11");
        assert_eq!((at.next[&0], at.read_to[&0]), (Some(12), 12));
        assert_eq!(at.skip_to(0, 11), None, "never backwards");
        assert_eq!(at.skip_to(1, 5), None, "nothing expected yet: nothing known skipped");
        assert_eq!(at.skip_to(2, 5), None, "a partition not read");
        assert_eq!(at.accept(0, 12), Some(0), "the next message follows on");
    }

    #[test]
    fn caught_up_means_every_partition_at_its_end() {
        let mut at = Positions::new(BTreeMap::from([(0, Some(0)), (1, Some(0))]));
        assert!(!at.caught_up());
        at.at_end.extend([0, 1]);
        assert!(at.caught_up());
        at.accept(1, 0);
        assert!(!at.caught_up(), "a message since the end");
        assert!(!Positions::default().caught_up(), "no partitions: nothing to be caught up on");
    }
}
