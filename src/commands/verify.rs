//! `verify`: what every store holds, counted independently.

use std::collections::HashSet;

use rdkafka::Message;
use rdkafka::message::Headers;
use serde::Serialize;

use crate::clickhouse::ClickHouse;
use crate::config::Settings;
use crate::event::DedupKey;
use crate::kafka;
use crate::output::dlq;
use crate::table::EventTable;

/// Counts per store; `None` where the store is not set up or does not answer.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub delta_rows: Option<u64>,
    pub delta_distinct_keys: Option<u64>,
    /// Delta rows whose `event_date` is not the UTC date of their `event_time` (another
    /// engine's rows, derived otherwise): the key check cannot find their keys.
    pub delta_misdated_rows: Option<u64>,
    pub delta_version: Option<u64>,
    pub delta_files: Option<u64>,
    pub raw_records: Option<u64>,
    /// Distinct refused messages, by source partition and offset (a crash can make the
    /// processor send a dead letter twice; both copies name the same source).
    pub dlq_records: Option<u64>,
    /// Every record in the dead-letter topic, copies included.
    pub dlq_messages: Option<u64>,
    pub processed_records: Option<u64>,
    pub processed_distinct_keys: Option<u64>,
    pub clickhouse_rows: Option<u64>,
    pub clickhouse_final_rows: Option<u64>,
    /// Whether ClickHouse (with `FINAL`) holds exactly Delta's keys: equal counts and
    /// equal key checksums. `None` when either store could not be read.
    pub clickhouse_keys_match: Option<bool>,
    /// Sum mod 2^64 of the first 8 bytes (big-endian) of every Delta key's MD5.
    pub delta_key_checksum: Option<u64>,
    /// The same sum over ClickHouse's `FINAL` rows.
    pub clickhouse_key_checksum: Option<u64>,
    /// When the key sets differ: Delta keys that ClickHouse lacks (`reconcile` fixes these)...
    pub clickhouse_missing_keys: Option<u64>,
    /// ...and ClickHouse keys that Delta does not hold.
    pub clickhouse_extra_keys: Option<u64>,
}

pub async fn verify(settings: &Settings) -> Report {
    let mut report = Report::default();
    let table = match EventTable::open(&settings.delta_path).await {
        Ok(table) => Some(table),
        Err(e) => {
            tracing::warn!(error = %e, "no Delta counts");
            None
        }
    };
    // Delta's keys, read once, for the checksum and, if needed, the comparison.
    let mut delta_keys = None;
    if let Some(table) = &table {
        match table.counts().await {
            Ok(c) => {
                report.delta_rows = Some(c.rows);
                report.delta_distinct_keys = Some(c.distinct_keys);
                report.delta_misdated_rows = Some(c.misdated_rows);
                if c.misdated_rows > 0 {
                    tracing::warn!(
                        rows = c.misdated_rows,
                        "rows whose event_date is not the UTC date of their event_time: the key check cannot find \
                         their keys, so their events sent again would be stored again"
                    );
                }
                report.delta_version = Some(c.version);
                report.delta_files = Some(c.files);
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the Delta table"),
        }
        match table.keys().await {
            Ok(keys) => {
                // Over distinct keys, as ClickHouse's FINAL is: duplicates in Delta are
                // reported by delta_rows != delta_distinct_keys, not by a key mismatch.
                let distinct: HashSet<&str> = keys.iter().map(String::as_str).collect();
                report.delta_key_checksum = Some(key_checksum(distinct.into_iter()));
                delta_keys = Some(keys);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the Delta keys"),
        }
    }

    let s = settings.clone();
    let topics = tokio::task::spawn_blocking(move || {
        let raw = kafka::read_topic(&s, &s.topics.raw, |_| {});
        let mut sources = HashSet::new();
        let dlq = kafka::read_topic(&s, &s.topics.dlq, |m| {
            let header = |name: &str| {
                m.headers().and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value).map(<[u8]>::to_vec))
            };
            sources.insert((header(dlq::HEADER_TOPIC), header(dlq::HEADER_PARTITION), header(dlq::HEADER_OFFSET)));
        });
        let mut keys = HashSet::new();
        let processed = kafka::read_topic(&s, &s.topics.processed, |m| {
            keys.insert(m.key().map(<[u8]>::to_vec));
        });
        (raw, dlq.map(|n| (n, sources.len() as u64)), processed.map(|n| (n, keys.len() as u64)))
    })
    .await;
    match topics {
        Ok((raw, dlq, processed)) => {
            report.raw_records = ok_or_warn(raw, "raw topic");
            if let Some((messages, distinct)) = ok_or_warn(dlq, "dead-letter topic") {
                report.dlq_messages = Some(messages);
                report.dlq_records = Some(distinct);
            }
            if let Some((records, keys)) = ok_or_warn(processed, "processed topic") {
                report.processed_records = Some(records);
                report.processed_distinct_keys = Some(keys);
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading the topics panicked"),
    }

    compare_with_clickhouse(settings, &mut report, delta_keys).await;
    report
}

/// Sum mod 2^64 of each key's first 8 bytes read big-endian: order-independent, so
/// both stores can compute it their own way. A key that is not 32 hex digits counts 0.
pub fn key_checksum<'a>(keys: impl Iterator<Item = &'a str>) -> u64 {
    keys.filter_map(DedupKey::from_hex).fold(0_u64, |sum, k| sum.wrapping_add(k.prefix_u64()))
}

async fn compare_with_clickhouse(settings: &Settings, report: &mut Report, delta_keys: Option<Vec<String>>) {
    let clickhouse = match ClickHouse::connect(&settings.clickhouse).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no ClickHouse counts");
            return;
        }
    };
    let counts = match clickhouse.counts().await {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::warn!(table = %clickhouse.table(), "no ClickHouse table: run `idempipe setup`");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot count the ClickHouse table");
            return;
        }
    };
    report.clickhouse_rows = Some(counts.rows);
    report.clickhouse_final_rows = Some(counts.final_rows);
    report.clickhouse_key_checksum = Some(counts.key_checksum);
    let Some(delta_keys) = delta_keys else { return };
    let same =
        report.delta_distinct_keys == Some(counts.final_rows) && report.delta_key_checksum == Some(counts.key_checksum);
    report.clickhouse_keys_match = Some(same);
    if same {
        report.clickhouse_missing_keys = Some(0);
        report.clickhouse_extra_keys = Some(0);
        return;
    }
    // They differ: find out by how much, key by key.
    match clickhouse.keys().await {
        Ok(ch_keys) => {
            let delta: HashSet<&str> = delta_keys.iter().map(String::as_str).collect();
            report.clickhouse_missing_keys = Some(delta.iter().filter(|k| !ch_keys.contains(**k)).count() as u64);
            report.clickhouse_extra_keys = Some(ch_keys.iter().filter(|k| !delta.contains(k.as_str())).count() as u64);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the ClickHouse keys"),
    }
}

fn ok_or_warn<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> Option<T> {
    result.map_err(|e| tracing::warn!(error = %e, "no counts for the {what}")).ok()
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_table())
    }
}

impl Report {
    /// A two-column table for people.
    pub fn to_table(&self) -> String {
        let matched = self.clickhouse_keys_match.map(u64::from);
        let rows: [(&str, Option<u64>); 17] = [
            ("delta_rows", self.delta_rows),
            ("delta_distinct_keys", self.delta_distinct_keys),
            ("delta_misdated_rows", self.delta_misdated_rows),
            ("delta_version", self.delta_version),
            ("delta_files", self.delta_files),
            ("raw_records", self.raw_records),
            ("dlq_records", self.dlq_records),
            ("dlq_messages", self.dlq_messages),
            ("processed_records", self.processed_records),
            ("processed_distinct_keys", self.processed_distinct_keys),
            ("clickhouse_rows", self.clickhouse_rows),
            ("clickhouse_final_rows", self.clickhouse_final_rows),
            ("delta_key_checksum", self.delta_key_checksum),
            ("clickhouse_key_checksum", self.clickhouse_key_checksum),
            ("clickhouse_missing_keys", self.clickhouse_missing_keys),
            ("clickhouse_extra_keys", self.clickhouse_extra_keys),
            ("clickhouse_keys_match", matched),
        ];
        rows.iter()
            .map(|(name, v)| {
                let shown = match (*name, v) {
                    (_, None) => "-".to_string(),
                    ("clickhouse_keys_match", Some(v)) => (*v == 1).to_string(),
                    (_, Some(v)) => v.to_string(),
                };
                format!("{name:<24} {shown}\n")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_order_independent_and_wraps() {
        let a = "0d268ed825d0878a0000000000000001";
        let b = "ffffffffffffffff0000000000000002";
        let c = "ffffffffffffffff0000000000000003";
        let sum = key_checksum([a, b, c].into_iter());
        assert_eq!(sum, key_checksum([c, a, b].into_iter()));
        assert_eq!(sum, 0x0d26_8ed8_25d0_878a_u64.wrapping_add(u64::MAX).wrapping_add(u64::MAX));
        assert_eq!(key_checksum(std::iter::empty()), 0);
    }
}
