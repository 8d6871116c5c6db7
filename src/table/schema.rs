//! The table's schema and rows: the columns (partitioned by `event_date`, the UTC date of
//! `event_time`), one [`Row`] per validated event, and their Arrow encoding.
//!
//! Invariant: [`Columns::arrow_schema`] and [`Columns::delta`] describe the same columns in
//! the same order ([`Columns::names`]): `dedup_key`, the identity's key columns, then
//! idempipe's own; every batch written to the table is built by [`Columns::batch`].

use std::collections::BTreeSet;
use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::{DataType, StructField};

use crate::event::{DedupKey, EventTime, Identity};

/// The partition column: the UTC date of `event_time`.
pub const PARTITION_COLUMN: &str = "event_date";

/// The columns after the key columns, in table order.
const OWN_COLUMNS: [&str; 7] =
    ["event_time", "event_date", "payload", "source_partition", "source_offset", "batch_id", "ingested_at"];

/// The columns of a table of an [`Identity`]: `dedup_key`, a string column per key field
/// (`user_id` and `event_type` by default), then idempipe's own.
#[derive(Debug, Clone)]
pub struct Columns {
    key: Vec<String>,
    schema: SchemaRef,
}

impl Columns {
    pub fn of(identity: &Identity) -> Self {
        let key = identity.key_columns();
        let utc_micros = ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let mut fields = vec![Field::new("dedup_key", ArrowType::Utf8, false)];
        fields.extend(key.iter().map(|c| Field::new(c, ArrowType::Utf8, true)));
        fields.extend([
            Field::new("event_time", utc_micros.clone(), true),
            Field::new("event_date", ArrowType::Date32, true),
            Field::new("payload", ArrowType::Utf8, true),
            Field::new("source_partition", ArrowType::Int32, true),
            Field::new("source_offset", ArrowType::Int64, true),
            Field::new("batch_id", ArrowType::Int64, true),
            Field::new("ingested_at", utc_micros, true),
        ]);
        Self { key, schema: Arc::new(Schema::new(fields)) }
    }

    /// The key columns, in key order.
    pub fn key(&self) -> &[String] {
        &self.key
    }

    /// Every column name, in table order.
    pub fn names(&self) -> Vec<&str> {
        self.schema.fields().iter().map(|f| f.name().as_str()).collect()
    }

    /// The Arrow schema of a batch of rows, matching the Delta schema.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The Delta schema's columns.
    pub(crate) fn delta(&self) -> Vec<StructField> {
        let mut columns = vec![StructField::new("dedup_key", DataType::STRING, false)];
        columns.extend(self.key.iter().map(|c| StructField::new(c, DataType::STRING, true)));
        columns.extend([
            StructField::new("event_time", DataType::TIMESTAMP, true),
            StructField::new("event_date", DataType::DATE, true),
            StructField::new("payload", DataType::STRING, true),
            StructField::new("source_partition", DataType::INTEGER, true),
            StructField::new("source_offset", DataType::LONG, true),
            StructField::new("batch_id", DataType::LONG, true),
            StructField::new("ingested_at", DataType::TIMESTAMP, true),
        ]);
        debug_assert_eq!(columns.len(), 1 + self.key.len() + OWN_COLUMNS.len());
        columns
    }

    /// Builds the Arrow batch of `rows`, stamped with the batch id and ingest time.
    pub fn batch(
        &self,
        rows: &[&Row],
        batch_id: i64,
        ingested_at: EventTime,
    ) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
        let keys: StringArray = rows.iter().map(|r| Some(r.key.to_string())).collect();
        let mut columns: Vec<ArrayRef> = vec![Arc::new(keys)];
        for i in 0..self.key.len() {
            let part: StringArray = rows.iter().map(|r| r.parts.get(i).map(String::as_str)).collect();
            columns.push(Arc::new(part));
        }
        let times =
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.time.micros())).with_timezone("UTC");
        let dates = Date32Array::from_iter_values(rows.iter().map(|r| r.time.days_since_epoch()));
        let payloads: StringArray = rows.iter().map(|r| Some(r.payload.as_str())).collect();
        let partitions = Int32Array::from_iter_values(rows.iter().map(|r| r.source_partition));
        let offsets = Int64Array::from_iter_values(rows.iter().map(|r| r.source_offset));
        let batch_ids = Int64Array::from_value(batch_id, rows.len());
        let ingested = TimestampMicrosecondArray::from_value(ingested_at.micros(), rows.len()).with_timezone("UTC");
        columns.extend([
            Arc::new(times) as ArrayRef,
            Arc::new(dates),
            Arc::new(payloads),
            Arc::new(partitions),
            Arc::new(offsets),
            Arc::new(batch_ids),
            Arc::new(ingested),
        ]);
        RecordBatch::try_new(self.arrow_schema(), columns)
    }
}

impl Default for Columns {
    /// The default identity's: `user_id` and `event_type`.
    fn default() -> Self {
        Self::of(&Identity::default())
    }
}

/// One row to insert: a validated event and where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: DedupKey,
    /// The key fields' values, in the identity's order.
    pub parts: Vec<String>,
    pub time: EventTime,
    pub payload: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

impl Row {
    /// The row of a validated event read at `partition` and `offset`.
    pub(crate) fn from_event(event: crate::event::Event<'_>, partition: i32, offset: i64) -> Self {
        Self {
            key: event.key,
            parts: event.parts.into_iter().map(std::borrow::Cow::into_owned).collect(),
            time: event.time,
            payload: event.payload.to_owned(),
            source_partition: partition,
            source_offset: offset,
        }
    }
}

/// A stored row as read back: owned, its times in microseconds since the epoch. The
/// processed topic's JSON carries it, one field per column (the string forms of the times,
/// derived from the numbers, left out), which the ClickHouse sink reads
/// ([`crate::output::processed::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub dedup_key: String,
    /// The key columns' values, in the identity's order.
    pub parts: Vec<String>,
    pub event_time_us: i64,
    pub payload: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub batch_id: i64,
    pub ingested_at_us: i64,
}

/// The distinct `event_date` values of a batch built by [`Columns::batch`].
pub(crate) fn batch_dates(batch: &RecordBatch) -> BTreeSet<i32> {
    batch
        .column_by_name(PARTITION_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<Date32Array>())
        .map(|a| a.iter().flatten().collect())
        .unwrap_or_default()
}

/// The keys of a batch built by [`Columns::batch`].
pub(crate) fn key_column(batch: &RecordBatch) -> Option<Vec<DedupKey>> {
    let keys = batch.column_by_name("dedup_key")?.as_any().downcast_ref::<StringArray>()?;
    keys.iter().map(|k| k.and_then(DedupKey::from_hex)).collect()
}

/// The `event_date` of each row of a batch built by [`Columns::batch`].
pub(crate) fn date_column(batch: &RecordBatch) -> Option<Vec<i32>> {
    let dates = batch.column_by_name(PARTITION_COLUMN)?.as_any().downcast_ref::<Date32Array>()?;
    dates.iter().collect()
}

/// `'YYYY-MM-DD', …` for a SQL IN list, distinct and sorted.
pub(crate) fn date_list(days: impl Iterator<Item = i32>) -> String {
    let days: BTreeSet<i32> = days.collect();
    days.into_iter()
        // A day outside the years 0001 to 9999 holds no event: it matches no partition.
        .map(|d| format!("'{}'", EventTime::from_days(d).map(EventTime::date).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}
