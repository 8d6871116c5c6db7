//! Records of `processed_events`: one per event that a batch found new, keyed by
//! `dedup_key`, for the speed layer. Re-sends are allowed (ClickHouse collapses them);
//! absence is not: a record is sent before the Delta commit that stores its event.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};

use crate::event::EventTime;
use crate::output::OutRecord;
use crate::table::{Row, StoredRow};

/// The names of the fields of a processed record that follow the schema: the key columns
/// (by default `user_id` and `event_type`) and the declared columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFields {
    pub key: Vec<String>,
    pub declared: Vec<String>,
}

impl RecordFields {
    /// The fields of the default schema's records.
    pub fn of_default() -> Self {
        Self::of(&crate::event::EventSchema::default())
    }

    pub fn of(schema: &crate::event::EventSchema) -> Self {
        Self {
            key: schema.identity().key_columns(),
            declared: schema.columns().iter().map(|c| c.name.clone()).collect(),
        }
    }
}

/// The fields of a processed record after the key and declared columns, in order (every
/// column of the Delta row, plus the times as microseconds): `dedup_key`, the key columns
/// and the declared columns (their values in the normal form of
/// [`crate::event::ColumnType::check`]) come first.
pub const FIELDS: [&str; 9] = [
    "event_time",
    "event_time_us",
    "event_date",
    "payload",
    "source_partition",
    "source_offset",
    "batch_id",
    "ingested_at",
    "ingested_at_us",
];

/// Parses a processed record's value back into the stored row it carries, its key and
/// declared columns named by `fields`; the error says what is wrong with it.
pub fn parse(value: &[u8], fields: &RecordFields) -> Result<StoredRow, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(value);
    let row = RecordSeed { fields }.deserialize(&mut de)?;
    de.end()?;
    Ok(row)
}

/// The record of one row, its fields named by `fields`.
pub fn record(topic: &str, fields: &RecordFields, row: &Row, batch_id: i64, ingested_at: EventTime) -> OutRecord {
    OutRecord {
        topic: topic.to_owned(),
        key: Some(row.key.to_string().into_bytes()),
        value: Some(value(fields, row, batch_id, ingested_at)),
        headers: None,
    }
}

/// The most bytes (key and value) the record of `row` can take, whatever its batch id and
/// ingestion time: the payload is JSON-escaped again inside it, so a string of quotes or
/// control characters grows up to six times.
pub fn record_bytes(row: &Row, fields: &RecordFields) -> usize {
    // The batch id and the ingestion time in microseconds are the only fields whose
    // width varies with what `record` is given (the canonical time text has one width):
    // each at most 20 characters more than measured here.
    const VARYING: usize = 2 * 20;
    const KEY_HEX: usize = 32;
    KEY_HEX + value(fields, row, 0, row.time).len() + VARYING
}

/// The JSON value of `row`'s record: `dedup_key`, the key columns, the declared columns,
/// then [`FIELDS`].
fn value(fields: &RecordFields, row: &Row, batch_id: i64, ingested_at: EventTime) -> Vec<u8> {
    let mut out = Vec::with_capacity(row.payload.as_ref().map_or(0, String::len) + 256);
    let mut ser = serde_json::Serializer::new(&mut out);
    let written = (|| {
        let mut map = ser.serialize_map(Some(1 + fields.key.len() + fields.declared.len() + FIELDS.len()))?;
        map.serialize_entry("dedup_key", &row.key.to_string())?;
        for (column, part) in fields.key.iter().zip(&row.parts) {
            map.serialize_entry(column, part)?;
        }
        for (column, value) in fields.declared.iter().zip(&row.values) {
            map.serialize_entry(column, value)?;
        }
        map.serialize_entry("event_time", &row.time.to_string())?;
        map.serialize_entry("event_time_us", &row.time.micros())?;
        map.serialize_entry("event_date", &row.time.date())?;
        map.serialize_entry("payload", &row.payload)?;
        map.serialize_entry("source_partition", &row.source_partition)?;
        map.serialize_entry("source_offset", &row.source_offset)?;
        map.serialize_entry("batch_id", &batch_id)?;
        map.serialize_entry("ingested_at", &ingested_at.to_string())?;
        map.serialize_entry("ingested_at_us", &ingested_at.micros())?;
        map.end()
    })();
    // Serialising plain strings and integers into memory cannot fail.
    debug_assert!(written.is_ok());
    out
}

/// Reads a record into a [`StoredRow`]: the fields it needs, each once; the string forms
/// of the times (derived from the numbers) are skipped, fields `fields` do not name are
/// kept apart ([`StoredRow::unknown`]).
struct RecordSeed<'c> {
    fields: &'c RecordFields,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = StoredRow;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<StoredRow, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = StoredRow;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a processed record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StoredRow, A::Error> {
        let mut dedup_key: Option<String> = None;
        let mut parts: Vec<Option<String>> = vec![None; self.fields.key.len()];
        let mut values: Vec<Option<serde_json::Value>> = vec![None; self.fields.declared.len()];
        let (mut event_time_us, mut payload, mut source_partition, mut source_offset) =
            (None, None::<Option<String>>, None, None);
        let (mut batch_id, mut ingested_at_us) = (None, None);
        let mut unknown: Vec<(String, serde_json::Value)> = Vec::new();
        fn once<'de, T: de::Deserialize<'de>, A: MapAccess<'de>>(
            slot: &mut Option<T>,
            map: &mut A,
            name: &'static str,
        ) -> Result<(), A::Error> {
            if slot.is_some() {
                return Err(de::Error::duplicate_field(name));
            }
            *slot = Some(map.next_value()?);
            Ok(())
        }
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match name.as_ref() {
                "dedup_key" => once(&mut dedup_key, &mut map, "dedup_key")?,
                "event_time_us" => once(&mut event_time_us, &mut map, "event_time_us")?,
                "payload" => once(&mut payload, &mut map, "payload")?,
                "source_partition" => once(&mut source_partition, &mut map, "source_partition")?,
                "source_offset" => once(&mut source_offset, &mut map, "source_offset")?,
                "batch_id" => once(&mut batch_id, &mut map, "batch_id")?,
                "ingested_at_us" => once(&mut ingested_at_us, &mut map, "ingested_at_us")?,
                other => {
                    if let Some(i) = self.fields.key.iter().position(|c| c == other) {
                        if parts[i].is_some() {
                            return Err(de::Error::custom(format_args!("duplicate field `{other}`")));
                        }
                        parts[i] = Some(map.next_value()?);
                    } else if let Some(i) = self.fields.declared.iter().position(|c| c == other) {
                        if values[i].is_some() {
                            return Err(de::Error::custom(format_args!("duplicate field `{other}`")));
                        }
                        values[i] = Some(map.next_value()?);
                    } else if matches!(other, "event_time" | "event_date" | "ingested_at") {
                        // Derived from the numbers.
                        map.next_value::<IgnoredAny>()?;
                    } else {
                        // A column added to the table since `fields` were known.
                        unknown.push((other.to_owned(), map.next_value()?));
                    }
                }
            }
        }
        let missing = |name: &str| de::Error::custom(format_args!("missing field `{name}`"));
        let parts = parts
            .into_iter()
            .zip(&self.fields.key)
            .map(|(part, column)| part.ok_or_else(|| missing(column)))
            .collect::<Result<Vec<String>, A::Error>>()?;
        // A declared column's value may be null, never absent.
        let values = values
            .into_iter()
            .zip(&self.fields.declared)
            .map(|(value, column)| value.ok_or_else(|| missing(column)))
            .collect::<Result<Vec<serde_json::Value>, A::Error>>()?;
        Ok(StoredRow {
            dedup_key: dedup_key.ok_or_else(|| missing("dedup_key"))?,
            parts,
            values,
            event_time_us: event_time_us.ok_or_else(|| missing("event_time_us"))?,
            // Null when the schema keeps nothing of the message.
            payload: payload.ok_or_else(|| missing("payload"))?.unwrap_or_default(),
            source_partition: source_partition.ok_or_else(|| missing("source_partition"))?,
            source_offset: source_offset.ok_or_else(|| missing("source_offset"))?,
            batch_id: batch_id.ok_or_else(|| missing("batch_id"))?,
            ingested_at_us: ingested_at_us.ok_or_else(|| missing("ingested_at_us"))?,
            unknown,
        })
    }
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
            parts: vec!["u1".into(), "click".into()],
            time,
            payload: Some(r#"{"x":1}"#.into()),
            values: Vec::new(),
            source_partition: 2,
            source_offset: 40,
            unplaced: None,
        };
        let ingested = EventTime::from_micros(1_767_323_046_000_001).unwrap();
        let fields = RecordFields::of_default();
        let out = record("processed", &fields, &row, 7, ingested);
        let back = parse(out.value.as_deref().unwrap(), &fields).unwrap();
        assert_eq!(back.parts, row.parts);
        assert_eq!(back.dedup_key, row.key.to_string());
        assert_eq!(back.event_time_us, time.micros());
        assert_eq!(back.ingested_at_us, ingested.micros());
        assert_eq!((back.source_partition, back.source_offset, back.batch_id), (2, 40, 7));
        assert_eq!(Some(back.payload), row.payload);
        assert_eq!(out.key.as_deref(), Some(row.key.to_string().as_bytes()));
        // The record's format, field for field, in order (the default identity's).
        assert_eq!(
            std::str::from_utf8(out.value.as_deref().unwrap()).unwrap(),
            r#"{"dedup_key":"0d268ed825d0878a0d268ed825d0878a","user_id":"u1","event_type":"click","#.to_owned()
                + r#""event_time":"2026-01-02T03:04:05.123456Z","event_time_us":1767323045123456,"#
                + r#""event_date":"2026-01-02","payload":"{\"x\":1}","source_partition":2,"source_offset":40,"#
                + r#""batch_id":7,"ingested_at":"2026-01-02T03:04:06.000001Z","ingested_at_us":1767323046000001}"#
        );
    }

    /// ARCHITECTURE.md's table of the record's fields names the default record's fields,
    /// in order.
    #[test]
    fn the_documented_record_format_is_the_records() {
        let doc = include_str!("../../ARCHITECTURE.md");
        let section = &doc[doc.find("### The processed record").unwrap()..];
        let documented: Vec<String> = section
            .lines()
            .skip_while(|l| !l.starts_with("| field |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .flat_map(|l| {
                let first = l.split('|').nth(1).unwrap_or_default();
                first.split('`').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>()
            })
            .collect();
        let row = Row {
            key: crate::event::DedupKey([0; 16]),
            parts: vec!["u".into(), "e".into()],
            time: EventTime::from_micros(0).unwrap(),
            payload: None,
            values: Vec::new(),
            source_partition: 0,
            source_offset: 0,
            unplaced: None,
        };
        let out = record("t", &RecordFields::of_default(), &row, 1, EventTime::from_micros(0).unwrap());
        let value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(out.value.as_deref().unwrap()).unwrap();
        // serde_json's map is ordered by key: the order comes from the text.
        let text = String::from_utf8(out.value.unwrap()).unwrap();
        let mut fields: Vec<&String> = value.keys().collect();
        fields.sort_by_key(|k| text.find(&format!("\"{k}\":")));
        assert_eq!(fields, documented.iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_record_of_other_key_columns_needs_them_all() {
        let fields = RecordFields {
            key: vec!["customerId".to_owned(), "order_line".to_owned()],
            declared: vec!["amount".to_owned()],
        };
        let text = br#"{"dedup_key":"k","order_line":"7","customerId":"c1","amount":"1.50","event_time_us":1,"#;
        let tail = br#""payload":null,"source_partition":0,"source_offset":3,"batch_id":1,"ingested_at_us":2,"x":[1]}"#;
        let row = parse(&[&text[..], &tail[..]].concat(), &fields).unwrap();
        assert_eq!(row.parts, ["c1", "7"]);
        assert_eq!(row.values, [serde_json::json!("1.50")]);
        assert_eq!(row.payload, "", "a payload the schema dropped");
        let other = RecordFields { key: vec!["user_id".to_owned()], declared: Vec::new() };
        let err = parse(&[&text[..], &tail[..]].concat(), &other).unwrap_err();
        assert!(err.to_string().contains("missing field `user_id`"), "{err}");
        let twice = br#"{"dedup_key":"k","dedup_key":"k"}"#;
        assert!(parse(twice, &fields).unwrap_err().to_string().contains("duplicate field"));
    }
}
