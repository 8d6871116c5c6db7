//! The micro-batch being collected: parsed rows, refused messages and the offset range
//! read on each partition.
//!
//! Invariant: every offset read lands in exactly one place, a row or a dead letter, and
//! in the partition's range, so committing the range commits exactly what was handled.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::event::{self, Rejection};
use crate::table::Row;

/// A refused message, kept whole for the dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub rejection: Rejection,
    pub partition: i32,
    pub offset: i64,
}

/// The offsets a batch covers on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub first: i64,
    pub last: i64,
    pub messages: u64,
}

/// One micro-batch under collection.
#[derive(Debug, Default)]
pub struct Batch {
    pub rows: Vec<Row>,
    pub dead_letters: Vec<DeadLetter>,
    pub ranges: BTreeMap<i32, Range>,
    pub bytes: usize,
    /// Time spent parsing and validating, summed over messages.
    pub parse_time: Duration,
    /// Offsets the broker skipped: the next message on a partition came later than the
    /// offset expected (the start Delta gave, or the previous message + 1). Legitimate
    /// after compaction, retention or transaction markers; otherwise a broker fault.
    pub offset_gaps: u64,
}

impl Batch {
    /// Parses one message into a row or a dead letter and extends its partition's range.
    pub fn add(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        max_message_bytes: usize,
    ) {
        let started = std::time::Instant::now();
        match event::parse(value, max_message_bytes) {
            Ok(e) => self.rows.push(Row::from_event(e, partition, offset)),
            Err(rejection) => self.dead_letters.push(DeadLetter {
                key: key.map(<[u8]>::to_vec),
                value: value.map(<[u8]>::to_vec),
                rejection,
                partition,
                offset,
            }),
        }
        self.parse_time += started.elapsed();
        self.bytes += value.map_or(0, <[u8]>::len);
        self.ranges
            .entry(partition)
            .and_modify(|r| {
                r.last = r.last.max(offset);
                r.first = r.first.min(offset);
                r.messages += 1;
            })
            .or_insert(Range { first: offset, last: offset, messages: 1 });
    }

    pub fn messages(&self) -> u64 {
        self.ranges.values().map(|r| r.messages).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Drops what another writer already stored: on each partition, every offset up to
    /// and including `stored[p]`. Returns the number of messages dropped.
    pub fn drop_stored(&mut self, stored: &BTreeMap<i32, i64>) -> u64 {
        let done = |p: i32, offset: i64| stored.get(&p).is_some_and(|s| offset <= *s);
        let before = self.messages();
        self.rows.retain(|r| !done(r.source_partition, r.source_offset));
        self.dead_letters.retain(|d| !done(d.partition, d.offset));
        let mut counts: BTreeMap<i32, u64> = BTreeMap::new();
        for p in self.rows.iter().map(|r| r.source_partition).chain(self.dead_letters.iter().map(|d| d.partition)) {
            *counts.entry(p).or_default() += 1;
        }
        self.ranges.retain(|p, r| match stored.get(p) {
            Some(s) if *s >= r.last => false,
            Some(s) if *s >= r.first => {
                r.first = s + 1;
                r.messages = counts.get(p).copied().unwrap_or(0);
                true
            }
            _ => true,
        });
        before - self.messages()
    }

    /// Messages per partition, for the batch log.
    pub fn per_partition(&self) -> BTreeMap<i32, u64> {
        self.ranges.iter().map(|(p, r)| (*p, r.messages)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u32) -> Vec<u8> {
        format!(r#"{{"user_id":"u{n}","event_type":"e","timestamp":{n}}}"#).into_bytes()
    }

    #[test]
    fn every_offset_is_a_row_or_a_dead_letter() {
        let mut b = Batch::default();
        b.add(0, 10, None, Some(&msg(1)), 1024);
        b.add(0, 11, None, Some(b"garbage"), 1024);
        b.add(1, 5, Some(b"k"), None, 1024);
        b.add(0, 12, None, Some(&msg(2)), 1024);
        assert_eq!(b.rows.len(), 2);
        assert_eq!(b.dead_letters.len(), 2);
        assert_eq!(b.messages(), 4);
        assert_eq!(b.ranges[&0], Range { first: 10, last: 12, messages: 3 });
        assert_eq!(b.ranges[&1], Range { first: 5, last: 5, messages: 1 });
        assert_eq!(b.dead_letters[1].key.as_deref(), Some(&b"k"[..]));
    }

    #[test]
    fn offsets_stored_by_another_writer_are_dropped() {
        let mut b = Batch::default();
        for offset in 10..20 {
            b.add(0, offset, None, Some(&msg(offset as u32)), 1024);
            b.add(1, offset, None, Some(b"bad"), 1024);
            b.add(2, offset, None, Some(&msg(offset as u32)), 1024);
        }
        let dropped = b.drop_stored(&BTreeMap::from([(0, 14), (1, 25), (2, 3)]));
        assert_eq!(dropped, 5 + 10);
        assert_eq!(b.ranges[&0], Range { first: 15, last: 19, messages: 5 });
        assert!(!b.ranges.contains_key(&1));
        assert_eq!(b.ranges[&2], Range { first: 10, last: 19, messages: 10 });
        assert_eq!(b.rows.len(), 15);
        assert!(b.dead_letters.is_empty());
    }
}
