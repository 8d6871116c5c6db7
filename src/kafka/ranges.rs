//! Offsets the broker no longer holds.
//!
//! A partition's next offset (the one after the offset Delta stores) must lie within what
//! the broker holds: from the partition's first offset (`low`) to its end (`high`, the
//! offset the next message will get). Outside it, reading on would skip messages without
//! a word:
//! - below `low`: retention or a truncation deleted messages before they were read;
//! - above `high`: the topic starts over below the stored offsets (deleted and recreated,
//!   or replaced by another cluster's), and its new messages lie below them.
//!
//! The consumer never resets a position by itself (`auto.offset.reset=error`): an
//! out-of-range fetch is a consumer error, which makes the processor compare each
//! partition it reads with the broker's range ([`OffsetReset::check`]); it also does so
//! at start and every 10 s, for brokers that answer such a fetch with nothing.
//! By default (`fail_on_data_loss = true`) it then stops with an error naming the topic,
//! partition, stored offset and range. With `fail_on_data_loss = false` it records
//! `low - 1` as the partition's stored offset in Delta (one commit, so a restart does not
//! decide again; for a recreated topic this moves the txn version back), reads on from
//! `low`, and records the reset in the log, the metrics, the batch log and `status`.
//!
//! Not detectable from offsets: a recreated topic whose new end has already passed the
//! stored offset when the processor first looks (it was stopped meanwhile). Its messages
//! below the stored offset are then skipped as stored.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// The partitions of `topic` in `next` (the next offset expected on each) whose offset
/// lies outside what the broker holds, and whether every partition was answered for:
/// partitions it does not answer for within a second (a topic being recreated) are left
/// out.
///
/// With `fetched_ends` (per partition, the offset after the last message this consumer
/// read; passed only when no consumer error came since the last look), an end the
/// broker's offset listing puts below the expected offset is not believed when the
/// consumer's own fetches reached that offset: the two answers of one broker disagree,
/// and the fetches are the ones the data came through (a listing answered by a replica
/// that lags, or by tansu's memory storage, whose listing gives the first stored batch
/// when batches share a modification time). A topic recreated under the consumer makes its fetches fail on Kafka
/// (`OFFSET_OUT_OF_RANGE`, a consumer error, so no `fetched_ends`), and one recreated
/// before it started has nothing read yet: both are still found. On a broker that answers
/// a fetch beyond a partition's end with nothing instead, a topic recreated under a
/// running consumer is not found this way (ARCHITECTURE.md, "What is not here").
pub fn out_of_range<C: ConsumerContext + Sync>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    next: &BTreeMap<i32, Option<i64>>,
    fetched_ends: Option<&BTreeMap<i32, i64>>,
) -> (Vec<OffsetReset>, bool) {
    let expected: BTreeMap<i32, i64> = next.iter().filter_map(|(p, next)| Some((*p, (*next)?))).collect();
    let listed = watermarks(consumer, topic, expected.keys().copied());
    let answered = listed.values().all(Option::is_some);
    let resets = expected
        .into_iter()
        .filter_map(|(p, expected)| {
            let (low, high) = listed.get(&p).copied().flatten()?;
            let reset = OffsetReset::check(topic, p, expected, low, high)?;
            if reset.contradicted_by(fetched_ends) {
                warn_disbelieved(topic, p, high, expected);
                return None;
            }
            Some(reset)
        })
        .collect();
    (resets, answered)
}

/// Per topic and partition, when the last listing [`out_of_range`] did not believe was
/// logged, and how many since were not.
type Disbelieved = BTreeMap<(String, i32), (Option<Instant>, u64)>;
static DISBELIEVED: Mutex<Disbelieved> = Mutex::new(BTreeMap::new());

/// How often at most the same partition's disbelieved listing is logged: a broker that
/// answers so does it at every look (every 10 s, by the processor and the sink alike),
/// so logging each would bury the log in the same warning, hundreds an hour per
/// partition.
const DISBELIEVED_WARN_EVERY: Duration = Duration::from_secs(600);

fn warn_disbelieved(topic: &str, partition: i32, listed_end: i64, expected: i64) {
    let mut logged = DISBELIEVED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    let last = logged.entry((topic.to_owned(), partition)).or_insert((None, 0));
    if last.0.is_some_and(|at| now.duration_since(at) < DISBELIEVED_WARN_EVERY) {
        last.1 += 1;
        return;
    }
    let not_logged = std::mem::take(&mut last.1);
    last.0 = Some(now);
    tracing::warn!(
        topic,
        partition,
        listed_end,
        expected,
        not_logged,
        "the broker's offset listing puts the partition's end below what this consumer read from it: believing \
         the reads (logged at most once per partition every {DISBELIEVED_WARN_EVERY:?}; `not_logged` counts the \
         warnings suppressed since the last one)"
    );
}

/// Per partition, the range the broker holds (its first offset and its end), or `None`
/// if it does not answer within a second. The partitions are asked at once (by up to
/// [`MAX_ASKING`] threads, each asking its share in turn): one at a time, a slow broker
/// would hold the batch loop for seconds (librdkafka queues the request behind the
/// connection's long-polling fetch).
pub(crate) fn watermarks<C: ConsumerContext + Sync>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
) -> BTreeMap<i32, Option<(i64, i64)>> {
    let partitions: Vec<i32> = partitions.into_iter().collect();
    let share = partitions.len().div_ceil(MAX_ASKING).max(1);
    std::thread::scope(|scope| {
        let asks: Vec<_> = partitions
            .chunks(share)
            .map(|share| {
                scope.spawn(move || {
                    share
                        .iter()
                        .map(|&p| {
                            let range = consumer
                                .fetch_watermarks(topic, p, Duration::from_secs(1))
                                .map_err(
                                    |e| tracing::debug!(partition = p, error = %e, "cannot read the partition's range"),
                                )
                                .ok();
                            (p, range)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        asks.into_iter().flat_map(|ask| ask.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

/// The most threads [`watermarks`] asks with.
pub const MAX_ASKING: usize = 16;

/// A partition whose next offset lies outside the range the broker holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetReset {
    pub topic: String,
    pub partition: i32,
    /// The next offset the processor expected (the one after the offset Delta stores).
    pub expected: i64,
    /// The first offset the broker holds.
    pub low: i64,
    /// The partition's end: the offset its next message will get.
    pub high: i64,
    /// Messages deleted before they were read (`low - expected`) when the partition was
    /// truncated; `None` when it starts over below the expected offset, where how many of
    /// the old partition's messages were never read is not known.
    pub lost: Option<u64>,
}

impl OffsetReset {
    /// The reset `expected` calls for on a partition holding `low..high`, if any.
    pub fn check(topic: &str, partition: i32, expected: i64, low: i64, high: i64) -> Option<Self> {
        let lost = if expected < low {
            Some((low - expected) as u64)
        } else if expected > high {
            None
        } else {
            return None;
        };
        Some(Self { topic: topic.to_owned(), partition, expected, low, high, lost })
    }

    /// Whether this consumer's own reads (`read_to`: per partition, the offset after the
    /// last message read) reached past the end the listing gave: only a partition that
    /// starts over can be contradicted so (a truncation moves the start, not the end).
    pub fn contradicted_by(&self, read_to: Option<&BTreeMap<i32, i64>>) -> bool {
        self.lost.is_none() && read_to.and_then(|r| r.get(&self.partition)).is_some_and(|&read| read >= self.expected)
    }

    /// `truncated` (messages deleted unread) or `rewound` (the partition starts over
    /// below the stored offset).
    pub fn kind(&self) -> &'static str {
        if self.starts_over() { "rewound" } else { "truncated" }
    }

    /// Whether the partition starts over below the stored offset (a topic deleted and
    /// recreated, or another cluster's), rather than having lost messages to retention.
    pub fn starts_over(&self) -> bool {
        self.lost.is_none()
    }
}

impl OffsetReset {
    /// The reset as a sentence: `position` says where the reader stands (the processor's
    /// [`Display`](fmt::Display): what the Delta table stores).
    pub(crate) fn explain(&self, position: &str) -> String {
        let (topic, partition, expected) = (&self.topic, self.partition, self.expected);
        let held = if self.low == self.high {
            format!("no message there (its end is offset {})", self.high)
        } else {
            format!("offsets {} to {}", self.low, self.high - 1)
        };
        let what = match self.lost {
            Some(lost) => format!("{lost} messages from offset {expected} were deleted before they were read"),
            None => format!(
                "the partition starts over below offset {expected} (the topic was deleted and recreated, \
                 or is another cluster's)"
            ),
        };
        format!("partition {partition} of topic {topic}: {position}, but the broker holds {held}: {what}")
    }
}

impl fmt::Display for OffsetReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explain(&format!("the Delta table stores offsets up to {}", self.expected - 1)))
    }
}

/// Moves reading on the partitions of `topic` in `to` to the offset given there (resets
/// recorded in Delta), every other partition of `next` staying where it is expected. By
/// assignment, not seek: a partition whose fetch stopped on an out-of-range answer
/// (`auto.offset.reset = error`) refuses a seek (librdkafka: "Erroneous state"). Under
/// the cooperative protocol the moved partitions are assigned again alone; otherwise the
/// whole assignment is given again, at the offsets of `next` and `to`.
pub fn reposition<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    to: &BTreeMap<i32, i64>,
    next: &BTreeMap<i32, Option<i64>>,
) -> Result<(), KafkaError> {
    let mut tpl = TopicPartitionList::new();
    if matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative) {
        for p in to.keys() {
            tpl.add_partition(topic, *p);
        }
        consumer.incremental_unassign(&tpl)?;
        for (p, offset) in to {
            tpl.set_partition_offset(topic, *p, Offset::Offset(*offset))?;
        }
        return consumer.incremental_assign(&tpl);
    }
    let mut moved = next.clone();
    moved.extend(to.iter().map(|(p, offset)| (*p, Some(*offset))));
    consumer.assign(&crate::kafka::positioned::assignment(topic, &moved)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_range_is_no_reset() {
        assert_eq!(OffsetReset::check("t", 0, 10, 0, 20), None);
        assert_eq!(OffsetReset::check("t", 0, 20, 0, 20), None, "at the end: waiting for the next message");
        assert_eq!(OffsetReset::check("t", 0, 5, 5, 5), None, "an empty partition, all read");
    }

    #[test]
    fn below_the_first_offset_held_is_a_counted_loss() {
        let reset = OffsetReset::check("raw", 2, 10, 25, 40).unwrap();
        assert_eq!((reset.kind(), reset.lost), ("truncated", Some(15)));
        assert_eq!(
            reset.to_string(),
            "partition 2 of topic raw: the Delta table stores offsets up to 9, but the broker holds offsets \
             25 to 39: 15 messages from offset 10 were deleted before they were read"
        );
    }

    #[test]
    fn reads_past_the_listed_end_contradict_a_start_over_but_not_a_truncation() {
        let rewound = OffsetReset::check("raw", 1, 2_477, 0, 1).unwrap();
        let read: BTreeMap<i32, i64> = [(1, 2_477), (2, 10)].into();
        assert!(rewound.contradicted_by(Some(&read)), "this consumer read up to the expected offset");
        assert!(!rewound.contradicted_by(None), "a consumer error since: the listing is believed");
        assert!(!rewound.contradicted_by(Some(&[(1, 2_000)].into())), "read less far than expected");
        assert!(!rewound.contradicted_by(Some(&[(2, 9_999)].into())), "another partition's reads");
        let truncated = OffsetReset::check("raw", 1, 10, 25, 40).unwrap();
        assert!(!truncated.contradicted_by(Some(&[(1, 10)].into())));
    }

    #[test]
    fn past_the_end_is_a_partition_that_starts_over() {
        let reset = OffsetReset::check("raw", 1, 251, 0, 0).unwrap();
        assert_eq!((reset.kind(), reset.lost), ("rewound", None));
        assert!(reset.to_string().contains("stores offsets up to 250, but the broker holds no message there"));
        let reset = OffsetReset::check("raw", 1, 251, 0, 75).unwrap();
        assert!(reset.to_string().contains("holds offsets 0 to 74: the partition starts over"), "{reset}");
        assert_eq!(
            reset.explain("the sink reads from offset 251"),
            "partition 1 of topic raw: the sink reads from offset 251, but the broker holds offsets 0 to 74: \
             the partition starts over below offset 251 (the topic was deleted and recreated, or is \
             another cluster's)"
        );
    }
}
