//! The processor's looks at the raw topic beside its batches: when to ask the broker for
//! the topic's partition count and the range each partition holds ([`Checks`]), what an
//! answer still says once the batch it was asked beside is done ([`SourceCheck`]), and
//! when group mode looks for partitions nobody reads.
//!
//! Invariants:
//! - a check is asked while a batch is collected (a broker may take a second to answer,
//!   and asked between batches it held the loop), every [`CHECK_EVERY`], or
//!   [`CHECK_AFTER_ERROR`] after a consumer error or an incomplete check;
//! - an assignment adopted during a collection (the first, a rebalance) is checked right
//!   after it, and a view asked under the previous assignment is dropped;
//! - a reset the broker reported is acted on only while it still speaks of the
//!   partition's position ([`SourceCheck::still_applies`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::ConsumerMode;
use crate::kafka::positioned::Positions;
use crate::kafka::ranges::OffsetReset;
use crate::source::orphans::OrphanWatch;
use crate::source::{BrokerView, Source};

/// How often the processor compares its partitions with the broker's: their number (new
/// partitions) and the range each holds ([`crate::kafka::ranges`]). A consumer error
/// makes it check sooner, but not more than once a second.
const CHECK_EVERY: Duration = Duration::from_secs(10);
const CHECK_AFTER_ERROR: Duration = Duration::from_secs(1);

/// How often, in group mode, the processor looks for partitions nobody reads
/// ([`OrphanWatch`]).
const ORPHAN_CHECK_EVERY: Duration = Duration::from_secs(10);

/// When the processor looks at the raw topic, across batches.
#[derive(Debug)]
pub struct Checks {
    /// The assignment generation the positions belong to (`u64::MAX`: none adopted yet;
    /// the first collection adopts the current one).
    pub generation: u64,
    /// A check is wanted soon: none was complete since the last consumer error.
    due: bool,
    last: Instant,
    /// Whether the consumer reported an error since the last complete check (see
    /// [`crate::kafka::ranges::out_of_range`]).
    errors_since: bool,
    /// Group mode's watch for partitions nobody reads.
    watch: Option<OrphanWatch>,
    last_watch: Instant,
}

impl Checks {
    pub fn new(mode: ConsumerMode) -> Self {
        Self {
            generation: u64::MAX,
            // Checked once the first collection has adopted the assignment.
            due: true,
            last: Instant::now(),
            errors_since: false,
            watch: (mode == ConsumerMode::Group).then(|| OrphanWatch::new(OrphanWatch::PATIENCE)),
            last_watch: Instant::now(),
        }
    }

    /// Before a collection: the check to ask beside it, if one is due. Positions not
    /// known yet (before the first collection adopts the assignment) are checked after it
    /// ([`Checks::to_act_on`]).
    pub fn ask(&mut self, positions: &Positions) -> Option<SourceCheck> {
        let since = self.last.elapsed();
        let due = self.generation != u64::MAX && (since >= CHECK_EVERY || (self.due && since >= CHECK_AFTER_ERROR));
        due.then(|| {
            self.last = Instant::now();
            SourceCheck::of(positions, self.errors_since, self.generation)
        })
    }

    /// After a collection in which the consumer reported an error, or not.
    pub fn collected(&mut self, consumer_error: bool) {
        self.due |= consumer_error;
        self.errors_since |= consumer_error;
    }

    /// Group mode's orphan watch, when it is time to look.
    pub fn orphan_watch_due(&mut self) -> Option<&mut OrphanWatch> {
        let watch = self.watch.as_mut()?;
        if self.last_watch.elapsed() < ORPHAN_CHECK_EVERY {
            return None;
        }
        self.last_watch = Instant::now();
        Some(watch)
    }

    /// After the batch: the check to act on. The one asked beside the collection, if the
    /// assignment stayed; after an assignment adopted during the collection (`before`:
    /// the generation it began under), a check of the new positions, asked now.
    pub fn to_act_on(
        &mut self,
        source: &Source,
        positions: &Positions,
        before: u64,
        asked: Option<(SourceCheck, BrokerView)>,
    ) -> Option<(SourceCheck, BrokerView)> {
        if self.generation == before {
            return asked;
        }
        self.last = Instant::now();
        let check = SourceCheck::of(positions, self.errors_since, self.generation);
        let view = source.broker_view(&check.next, check.read_to.as_ref());
        Some((check, view))
    }

    /// A check was acted on: `complete` if every partition's range was answered and
    /// found in range, with no consumer error during the collection.
    pub fn acted(&mut self, complete: bool) {
        self.due = !complete;
        self.errors_since &= !complete;
    }
}

/// The positions a source check asks the broker about, while a batch is collected.
#[derive(Debug)]
pub struct SourceCheck {
    pub next: BTreeMap<i32, Option<i64>>,
    /// How far this consumer read each partition, when no consumer error came since the
    /// last complete check ([`crate::kafka::ranges::out_of_range`]).
    pub read_to: Option<BTreeMap<i32, i64>>,
    /// The assignment generation the positions belong to.
    pub generation: u64,
}

impl SourceCheck {
    /// The current positions; how far each partition was read only if no consumer error
    /// came since the last complete check.
    pub fn of(positions: &Positions, errors_since_check: bool, generation: u64) -> Self {
        Self {
            next: positions.next.clone(),
            read_to: (!errors_since_check).then(|| positions.read_to.clone()),
            generation,
        }
    }

    /// The resets of `view` that still apply now (`next`, in assignment `generation`;
    /// `consumer_error`: one came during the collection), and whether the check is
    /// current: every range answered, every reset still applying, the same assignment.
    pub fn applying(
        &self,
        resets: Vec<OffsetReset>,
        answered: bool,
        generation: u64,
        next: &BTreeMap<i32, Option<i64>>,
        consumer_error: bool,
    ) -> (Vec<OffsetReset>, bool) {
        let asked = resets.len();
        let trust_reads = self.read_to.is_some() && !consumer_error;
        let resets: Vec<OffsetReset> =
            resets.into_iter().filter(|r| self.still_applies(generation, next, trust_reads, r)).collect();
        let current = answered && resets.len() == asked && generation == self.generation;
        (resets, current)
    }

    /// Whether the broker's `reset` still speaks of its partition now (`next`,
    /// in assignment `generation`). Not after a rebalance, which replaced every
    /// position. If something was read from the partition since the check, the broker's
    /// fetches served the offset asked about: a truncation no longer applies, and
    /// neither does a start-over while the consumer's reads are believed over the
    /// broker's listing (`trust_reads`: no consumer error since the last complete check,
    /// see [`crate::kafka::ranges::out_of_range`]). After an error the listing decides,
    /// as it did when the check was asked.
    pub fn still_applies(
        &self,
        generation: u64,
        next: &BTreeMap<i32, Option<i64>>,
        trust_reads: bool,
        reset: &OffsetReset,
    ) -> bool {
        let moved = next.get(&reset.partition) != self.next.get(&reset.partition);
        generation == self.generation && (!moved || (reset.lost.is_none() && !trust_reads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_answer_applies_to_a_partition_read_since_only_if_it_starts_over_and_reads_are_not_believed() {
        let check = SourceCheck { next: BTreeMap::from([(0, Some(10)), (1, Some(20))]), read_to: None, generation: 3 };
        let now = BTreeMap::from([(0, Some(10)), (1, Some(25))]);
        let truncated = |p, expected| OffsetReset::check("t", p, expected, expected + 5, expected + 50).unwrap();
        let rewound = |p, expected| OffsetReset::check("t", p, expected, 0, expected - 5).unwrap();
        for trust_reads in [true, false] {
            assert!(check.still_applies(3, &now, trust_reads, &truncated(0, 10)), "nothing read from it since");
            assert!(check.still_applies(3, &now, trust_reads, &rewound(0, 10)), "nothing read from it since");
            assert!(!check.still_applies(3, &now, trust_reads, &truncated(1, 20)), "read since: the offset was served");
            assert!(!check.still_applies(4, &now, trust_reads, &truncated(0, 10)), "a rebalance since the look");
            assert!(!check.still_applies(4, &now, trust_reads, &rewound(0, 10)), "a rebalance since the look");
        }
        assert!(!check.still_applies(3, &now, true, &rewound(1, 20)), "read since, and reads are believed");
        assert!(
            check.still_applies(3, &now, false, &rewound(1, 20)),
            "read since, but after an error the listing decides"
        );
    }

    #[test]
    fn a_check_is_due_every_interval_and_soon_after_an_error_never_before_an_assignment() {
        let mut checks = Checks::new(ConsumerMode::Assign);
        let positions = Positions::default();
        assert!(checks.ask(&positions).is_none(), "no assignment adopted yet");
        checks.generation = 1;
        checks.acted(true);
        assert!(checks.ask(&positions).is_none(), "checked just now");
        checks.last -= CHECK_AFTER_ERROR;
        assert!(checks.ask(&positions).is_none(), "complete, and not an interval yet");
        checks.collected(true);
        checks.last -= CHECK_AFTER_ERROR;
        let check = checks.ask(&positions).expect("due a second after an error");
        assert!(check.read_to.is_none(), "reads are not believed after an error");
        checks.acted(false);
        checks.last -= CHECK_EVERY;
        assert!(checks.ask(&positions).is_some(), "due every interval");
        assert!(checks.orphan_watch_due().is_none(), "assign mode has no orphan watch");
    }
}
