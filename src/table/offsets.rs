//! Kafka offsets stored in Delta: the table, not the Kafka group, records how far each
//! partition of the raw topic is stored.
//!
//! Invariants:
//! - a consumer group's progress on partition P of topic T is the version of the Delta
//!   `txn` action whose app id is `<group>-<T>-<P>` ([`AppIds::for_partition`]): the last
//!   offset of P that the table holds;
//! - that action is written by the same commit that inserts the batch's rows
//!   ([`AppIds::txns`]), so rows and progress land together or not at all;
//! - a partition resumes at the offset after its stored one ([`starts`]); one with
//!   nothing stored starts at the beginning.

use std::collections::BTreeMap;

use deltalake::kernel::Transaction;

use crate::config::Settings;
use crate::event::EventTime;
use crate::table::{EventTable, Result};

/// The txn app ids of one consumer group reading one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppIds {
    group: String,
    topic: String,
}

impl AppIds {
    pub fn new(group: impl Into<String>, topic: impl Into<String>) -> Self {
        Self { group: group.into(), topic: topic.into() }
    }

    /// The processor's: its group reading the raw topic.
    pub fn of(settings: &Settings) -> Self {
        Self::new(&settings.group, &settings.topics.raw)
    }

    /// The app id that records progress on `partition`: `<group>-<topic>-<partition>`.
    pub(crate) fn for_partition(&self, partition: i32) -> String {
        format!("{}-{}-{partition}", self.group, self.topic)
    }

    /// The txn actions recording `last` (the last offset stored, per partition), stamped
    /// with `now`.
    pub fn txns(&self, last: &BTreeMap<i32, i64>, now: EventTime) -> Vec<Transaction> {
        let now_ms = now.micros() / 1_000;
        last.iter()
            .map(|(p, offset)| Transaction::new_with_last_update(self.for_partition(*p), *offset, Some(now_ms)))
            .collect()
    }
}

/// The next offset to read on each of `partitions`, given what the table stores: the
/// one after the stored offset, or `None` (from the beginning) when nothing is stored.
pub fn starts(partitions: impl IntoIterator<Item = i32>, stored: &BTreeMap<i32, i64>) -> BTreeMap<i32, Option<i64>> {
    partitions.into_iter().map(|p| (p, stored.get(&p).map(|v| v + 1))).collect()
}

impl EventTable {
    /// The last offset the loaded version stores for each of `partitions` that has one.
    pub async fn stored_offsets(
        &self,
        ids: &AppIds,
        partitions: impl IntoIterator<Item = i32>,
    ) -> Result<BTreeMap<i32, i64>> {
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        let log_store = self.table.log_store();
        let mut stored = BTreeMap::new();
        for partition in partitions {
            let app_id = ids.for_partition(partition);
            if let Some(v) =
                snapshot.transaction_version(log_store.as_ref(), &app_id).await.map_err(|e| self.error(e))?
            {
                stored.insert(partition, v);
            }
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_name_group_topic_and_partition() {
        let ids = AppIds::new("idempipe", "raw_events");
        assert_eq!(ids.for_partition(3), "idempipe-raw_events-3");
        let txns = ids.txns(&BTreeMap::from([(0, 41), (2, 7)]), EventTime::from_micros(5_000).unwrap());
        let got: Vec<(String, i64)> = txns.iter().map(|t| (t.app_id.clone(), t.version)).collect();
        assert_eq!(got, vec![("idempipe-raw_events-0".into(), 41), ("idempipe-raw_events-2".into(), 7)]);
    }

    #[test]
    fn a_partition_starts_after_its_stored_offset() {
        let starts = starts([0, 1], &BTreeMap::from([(1, 9)]));
        assert_eq!(starts, BTreeMap::from([(0, None), (1, Some(10))]));
    }
}
