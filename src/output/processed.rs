//! Records of `processed_events`: one per event that a batch found new, keyed by
//! `dedup_key`, for the speed layer. Re-sends are allowed (ClickHouse collapses them);
//! absence is not: a record is sent before the Delta commit that stores its event.

use serde::Serialize;

use crate::event::EventTime;
use crate::output::OutRecord;
use crate::table::{Row, StoredRow};

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
    pub event_date: String,
    pub payload: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
    pub batch_id: i64,
    pub ingested_at: String,
    pub ingested_at_us: i64,
}

/// Parses a processed record's value back into the stored row it carries; the error
/// says what is wrong with it.
pub fn parse(value: &[u8]) -> Result<StoredRow, serde_json::Error> {
    serde_json::from_slice(value)
}

/// The record of one row.
pub fn record(topic: &str, row: &Row, batch_id: i64, ingested_at: EventTime) -> OutRecord {
    OutRecord {
        topic: topic.to_owned(),
        key: Some(row.key.to_string().into_bytes()),
        value: Some(value(row, batch_id, ingested_at)),
        headers: None,
    }
}

/// The most bytes (key and value) the record of `row` can take, whatever its batch id and
/// ingestion time: the payload is JSON-escaped again inside it, so a string of quotes or
/// control characters grows up to six times.
pub fn record_bytes(row: &Row) -> usize {
    // The batch id and the ingestion time in microseconds are the only fields whose
    // width varies with what `record` is given (the canonical time text has one width):
    // each at most 20 characters more than measured here.
    const VARYING: usize = 2 * 20;
    const KEY_HEX: usize = 32;
    KEY_HEX + value(row, 0, row.time).len() + VARYING
}

/// The JSON value of `row`'s record.
fn value(row: &Row, batch_id: i64, ingested_at: EventTime) -> Vec<u8> {
    let value = ProcessedEvent {
        dedup_key: row.key.to_string(),
        user_id: &row.user_id,
        event_type: &row.event_type,
        event_date: row.time.date(),
        event_time: row.time.to_string(),
        event_time_us: row.time.micros(),
        payload: &row.payload,
        source_partition: row.source_partition,
        source_offset: row.source_offset,
        batch_id,
        ingested_at: ingested_at.to_string(),
        ingested_at_us: ingested_at.micros(),
    };
    // Serialising plain strings and integers cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DedupKey;

    #[test]
    fn a_record_reads_back_as_the_row_it_was_made_from() {
        let time = EventTime::from_micros(1_767_323_045_123_456).unwrap();
        let row = Row {
            key: DedupKey::from_hex("0d268ed825d0878a0d268ed825d0878a").unwrap(),
            user_id: "u1".into(),
            event_type: "click".into(),
            time,
            payload: r#"{"x":1}"#.into(),
            source_partition: 2,
            source_offset: 40,
        };
        let ingested = EventTime::from_micros(1_767_323_046_000_001).unwrap();
        let out = record("processed", &row, 7, ingested);
        let back = parse(out.value.as_deref().unwrap()).unwrap();
        assert_eq!(back.dedup_key, row.key.to_string());
        assert_eq!(back.event_time_us, time.micros());
        assert_eq!(back.ingested_at_us, ingested.micros());
        assert_eq!((back.source_partition, back.source_offset, back.batch_id), (2, 40, 7));
        assert_eq!(back.payload, row.payload);
        assert_eq!(out.key.as_deref(), Some(row.key.to_string().as_bytes()));
    }
}
