//! `verify`: what every store holds, counted independently.

use std::collections::HashSet;

use rdkafka::Message;
use rdkafka::message::Headers;
use serde::Serialize;

use crate::config::Settings;
use crate::kafka;
use crate::sink::clickhouse;
use crate::sink::delta::EventTable;
use crate::sink::dlq;

/// Counts per store; `None` where the store is not set up or does not answer.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub delta_rows: Option<u64>,
    pub delta_distinct_keys: Option<u64>,
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
}

pub async fn verify(settings: &Settings) -> Report {
    let mut report = Report::default();
    match EventTable::open(&settings.delta_path).await {
        Ok(table) => match table.counts().await {
            Ok(c) => {
                report.delta_rows = Some(c.rows);
                report.delta_distinct_keys = Some(c.distinct_keys);
                report.delta_version = Some(c.version);
                report.delta_files = Some(c.files);
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the Delta table"),
        },
        Err(e) => tracing::warn!(error = %e, "no Delta counts"),
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

    if let Some(c) = clickhouse::counts(&settings.clickhouse).await {
        report.clickhouse_rows = Some(c.rows);
        report.clickhouse_final_rows = Some(c.final_rows);
    }
    report
}

fn ok_or_warn<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> Option<T> {
    result.map_err(|e| tracing::warn!(error = %e, "no counts for the {what}")).ok()
}

impl Report {
    /// A two-column table for people.
    pub fn to_table(&self) -> String {
        let rows: [(&str, Option<u64>); 13] = [
            ("delta_rows", self.delta_rows),
            ("delta_distinct_keys", self.delta_distinct_keys),
            ("delta_version", self.delta_version),
            ("delta_files", self.delta_files),
            ("raw_records", self.raw_records),
            ("dlq_records", self.dlq_records),
            ("dlq_messages", self.dlq_messages),
            ("processed_records", self.processed_records),
            ("processed_distinct_keys", self.processed_distinct_keys),
            ("clickhouse_rows", self.clickhouse_rows),
            ("clickhouse_final_rows", self.clickhouse_final_rows),
            ("", None),
            ("", None),
        ];
        rows.iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, v)| format!("{name:<24} {}\n", v.map_or("-".to_string(), |v| v.to_string())))
            .collect()
    }
}
