//! Records of `processed_events`: one per event that a batch found new, keyed by
//! `dedup_key`, for the speed layer. Re-sends are allowed (ClickHouse collapses them);
//! absence is not: a record is sent before the Delta commit that stores its event.

use serde::Serialize;

use crate::event::EventTime;
use crate::sink::delta::Row;
use crate::sink::producer::OutRecord;

/// The JSON value of a processed record: the Delta row, one field per column.
#[derive(Debug, Serialize)]
pub struct ProcessedEvent<'a> {
    pub dedup_key: String,
    pub user_id: &'a str,
    pub event_type: &'a str,
    /// Canonical form, `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub event_time: String,
    /// The same instant as microseconds since the epoch, for consumers that want a number.
    pub event_time_us: i64,
    /// `YYYY-MM-DD`.
    pub event_date: &'a str,
    pub payload: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
    pub batch_id: i64,
    pub ingested_at: String,
    pub ingested_at_us: i64,
}

/// The record of one row.
pub fn record(topic: &str, row: &Row, batch_id: i64, ingested_at: EventTime) -> OutRecord {
    let key = row.key.to_string();
    let event_time = row.time.to_string();
    let value = ProcessedEvent {
        dedup_key: key.clone(),
        user_id: &row.user_id,
        event_type: &row.event_type,
        event_date: &event_time[..10],
        event_time: event_time.clone(),
        event_time_us: row.time.micros(),
        payload: &row.payload,
        source_partition: row.source_partition,
        source_offset: row.source_offset,
        batch_id,
        ingested_at: ingested_at.to_string(),
        ingested_at_us: ingested_at.micros(),
    };
    OutRecord {
        topic: topic.to_owned(),
        key: Some(key.into_bytes()),
        // Serialising plain strings and integers cannot fail.
        value: Some(serde_json::to_vec(&value).unwrap_or_default()),
        headers: None,
    }
}
