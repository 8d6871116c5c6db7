//! Group mode's guard against partitions that nobody reads ([`OrphanWatch`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Group mode's guard against partitions that nobody reads.
///
/// A partition is read only while the member it is assigned to reads it, and a group may
/// keep a member that does not: a crashed member with a static `group.instance.id` keeps
/// its partitions until its session times out, and a coordinator may keep a crashed
/// member for good (tansu 0.6.0 does), so the partitions assigned to it are read by
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
