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
use deltalake::kernel::engine::arrow_conversion::TryFromKernel;
use deltalake::kernel::{ArrayType, DataType, MapType, PrimitiveType, StructField, StructType};

use crate::event::{ColumnType, DedupKey, EventSchema, EventTime};

/// The partition column: the UTC date of `event_time`.
pub const PARTITION_COLUMN: &str = "event_date";

/// The columns after the key and declared columns, in table order.
pub(crate) const OWN_COLUMNS: [&str; 7] =
    ["event_time", "event_date", "payload", "source_partition", "source_offset", "batch_id", "ingested_at"];

/// The columns of a table of an [`EventSchema`]: `dedup_key`, a column per key field
/// (`user_id` and `event_type` by default; strings unless declared `int` or `long`), the
/// declared columns with their types, then idempipe's own.
#[derive(Debug, Clone)]
pub struct Columns {
    key: Vec<String>,
    key_types: Vec<ColumnType>,
    /// The declared columns: name, type.
    declared: Vec<(String, ColumnType)>,
    delta: Vec<StructField>,
    schema: SchemaRef,
    /// The Arrow schema of the declared columns alone (what their values are decoded by).
    declared_schema: SchemaRef,
}

impl Columns {
    /// The columns of `schema`. The error says which type Delta or Arrow cannot take.
    pub fn of(schema: &EventSchema) -> Result<Self, String> {
        let key = schema.identity().key_columns();
        let key_types: Vec<ColumnType> = schema.key_kinds().iter().map(|k| k.column_type()).collect();
        let declared: Vec<(String, ColumnType)> =
            schema.columns().iter().map(|c| (c.name.clone(), c.kind.clone())).collect();
        let mut delta = vec![StructField::new("dedup_key", DataType::STRING, false)];
        for (name, kind) in key.iter().zip(&key_types).chain(declared.iter().map(|(n, k)| (n, k))) {
            delta.push(StructField::new(name, delta_type(kind)?, true));
        }
        delta.extend([
            StructField::new("event_time", DataType::TIMESTAMP, true),
            StructField::new("event_date", DataType::DATE, true),
            StructField::new("payload", DataType::STRING, true),
            StructField::new("source_partition", DataType::INTEGER, true),
            StructField::new("source_offset", DataType::LONG, true),
            StructField::new("batch_id", DataType::LONG, true),
            StructField::new("ingested_at", DataType::TIMESTAMP, true),
        ]);
        let utc_micros = ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let arrow = |field: &StructField| -> Result<Field, String> {
            let kind = match field.name().as_str() {
                "event_time" | "ingested_at" => utc_micros.clone(),
                _ => ArrowType::try_from_kernel(field.data_type())
                    .map_err(|e| format!("column {}: no Arrow type for {}: {e}", field.name(), field.data_type()))?,
            };
            Ok(Field::new(field.name(), kind, field.is_nullable()))
        };
        let fields = delta.iter().map(arrow).collect::<Result<Vec<Field>, String>>()?;
        let first_declared = 1 + key.len();
        let declared_fields = fields[first_declared..first_declared + declared.len()].to_vec();
        Ok(Self {
            key,
            key_types,
            declared,
            delta,
            schema: Arc::new(Schema::new(fields)),
            declared_schema: Arc::new(Schema::new(declared_fields)),
        })
    }

    /// The key columns, in key order.
    pub fn key(&self) -> &[String] {
        &self.key
    }

    /// The declared columns (other than the key columns) and their types.
    pub fn declared(&self) -> &[(String, ColumnType)] {
        &self.declared
    }

    /// The Arrow types of the declared columns, in order.
    pub(crate) fn declared_arrow_types(&self) -> Vec<ArrowType> {
        self.declared_schema.fields().iter().map(|f| f.data_type().clone()).collect()
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
        self.delta.clone()
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
        for (i, kind) in self.key_types.iter().enumerate() {
            let parts = rows.iter().map(|r| r.parts.get(i).map(String::as_str));
            // A key part of an int or long column was checked to be one.
            columns.push(match kind {
                ColumnType::Int => Arc::new(parts.map(|p| p.and_then(|p| p.parse().ok())).collect::<Int32Array>()),
                ColumnType::Long => Arc::new(parts.map(|p| p.and_then(|p| p.parse().ok())).collect::<Int64Array>()),
                _ => Arc::new(parts.collect::<StringArray>()),
            });
        }
        if !self.declared.is_empty() {
            columns.extend(self.declared_arrays(rows)?);
        }
        let times =
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.time.micros())).with_timezone("UTC");
        let dates = Date32Array::from_iter_values(rows.iter().map(|r| r.time.days_since_epoch()));
        let payloads: StringArray = rows.iter().map(|r| r.payload.as_deref()).collect();
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

    /// The declared columns' arrays: the rows' checked values (in their normal form, see
    /// [`ColumnType::check`]) decoded as JSON into the columns' Arrow types.
    fn declared_arrays(&self, rows: &[&Row]) -> Result<Vec<ArrayRef>, deltalake::arrow::error::ArrowError> {
        if rows.is_empty() {
            // A batch with nothing new (a replay) still commits its offsets.
            let empty = |f: &std::sync::Arc<Field>| deltalake::arrow::array::new_empty_array(f.data_type());
            return Ok(self.declared_schema.fields().iter().map(empty).collect());
        }
        let mut decoder = deltalake::arrow::json::ReaderBuilder::new(self.declared_schema.clone())
            .with_batch_size(rows.len().max(1))
            .build_decoder()?;
        let objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
            .iter()
            .map(|r| self.declared.iter().map(|(name, _)| name.clone()).zip(r.values.iter().cloned()).collect())
            .collect();
        decoder.serialize(&objects)?;
        let decoded = decoder.flush()?.ok_or_else(|| {
            deltalake::arrow::error::ArrowError::JsonError("no rows decoded for the declared columns".into())
        })?;
        Ok(decoded.columns().to_vec())
    }
}

impl Default for Columns {
    /// The default schema's: `user_id` and `event_type`.
    fn default() -> Self {
        // The default schema's columns are all plain: they always convert.
        Self::of(&EventSchema::default()).unwrap_or_else(|e| unreachable!("{e}"))
    }
}

/// The value at `i` of `array` (of `kind`'s Arrow type, [`Columns::of`]) in the normal
/// form of [`ColumnType::check`]; null where null.
pub(crate) fn json_value(array: &dyn Array, i: usize, kind: &ColumnType) -> serde_json::Value {
    use deltalake::arrow::array::{AsArray, BooleanArray, Decimal128Array, Float64Array, MapArray};
    use serde_json::Value;
    if array.is_null(i) {
        return Value::Null;
    }
    let any = array.as_any();
    let from_date = |days: i32| EventTime::from_days(days).map_or(Value::Null, |d| Value::String(d.date()));
    match kind {
        ColumnType::String => {
            any.downcast_ref::<StringArray>().map_or(Value::Null, |a| Value::String(a.value(i).to_owned()))
        }
        ColumnType::Boolean => any.downcast_ref::<BooleanArray>().map_or(Value::Null, |a| Value::Bool(a.value(i))),
        ColumnType::Int => any.downcast_ref::<Int32Array>().map_or(Value::Null, |a| Value::from(a.value(i))),
        ColumnType::Long => any.downcast_ref::<Int64Array>().map_or(Value::Null, |a| Value::from(a.value(i))),
        ColumnType::Double => any
            .downcast_ref::<Float64Array>()
            .map_or(Value::Null, |a| serde_json::Number::from_f64(a.value(i)).map_or(Value::Null, Value::Number)),
        ColumnType::Decimal { .. } => {
            any.downcast_ref::<Decimal128Array>().map_or(Value::Null, |a| Value::String(a.value_as_string(i)))
        }
        ColumnType::Date => any.downcast_ref::<Date32Array>().map_or(Value::Null, |a| from_date(a.value(i))),
        ColumnType::Timestamp => any.downcast_ref::<TimestampMicrosecondArray>().map_or(Value::Null, |a| {
            EventTime::from_micros(a.value(i)).map_or(Value::Null, |t| Value::String(t.to_string()))
        }),
        ColumnType::List(element) => match array.as_list_opt::<i32>() {
            Some(list) => {
                let items = list.value(i);
                Value::Array((0..items.len()).map(|j| json_value(items.as_ref(), j, element)).collect())
            }
            None => Value::Null,
        },
        ColumnType::Map(values) => match any.downcast_ref::<MapArray>() {
            Some(map) => {
                let entries = map.value(i);
                let keys = entries.column(0).as_string_opt::<i32>();
                let items = entries.column(1);
                let mut out = serde_json::Map::new();
                for j in 0..entries.len() {
                    if let Some(keys) = keys {
                        out.insert(keys.value(j).to_owned(), json_value(items.as_ref(), j, values));
                    }
                }
                Value::Object(out)
            }
            None => Value::Null,
        },
        ColumnType::Struct(fields) => match array.as_struct_opt() {
            Some(structs) => Value::Object(
                fields
                    .iter()
                    .enumerate()
                    .map(|(j, (name, kind))| (name.clone(), json_value(structs.column(j).as_ref(), i, kind)))
                    .collect(),
            ),
            None => Value::Null,
        },
    }
}

/// The Delta type of a column type.
pub(crate) fn delta_type(kind: &ColumnType) -> Result<DataType, String> {
    Ok(match kind {
        ColumnType::String => DataType::STRING,
        ColumnType::Boolean => DataType::BOOLEAN,
        ColumnType::Int => DataType::INTEGER,
        ColumnType::Long => DataType::LONG,
        ColumnType::Double => DataType::DOUBLE,
        ColumnType::Decimal { precision, scale } => {
            DataType::decimal(*precision, *scale).map_err(|e| format!("{kind}: {e}"))?
        }
        ColumnType::Date => DataType::DATE,
        ColumnType::Timestamp => DataType::TIMESTAMP,
        ColumnType::List(element) => DataType::Array(Box::new(ArrayType::new(delta_type(element)?, true))),
        ColumnType::Map(values) => DataType::Map(Box::new(MapType::new(DataType::STRING, delta_type(values)?, true))),
        ColumnType::Struct(fields) => {
            let fields = fields
                .iter()
                .map(|(name, kind)| Ok(StructField::new(name, delta_type(kind)?, true)))
                .collect::<Result<Vec<_>, String>>()?;
            DataType::Struct(Box::new(StructType::try_new(fields).map_err(|e| format!("{kind}: {e}"))?))
        }
    })
}

/// The column type of a Delta type, if it is one a declared column may have.
pub(crate) fn column_type(delta: &DataType) -> Option<ColumnType> {
    Some(match delta {
        DataType::Primitive(p) => match p {
            PrimitiveType::String => ColumnType::String,
            PrimitiveType::Boolean => ColumnType::Boolean,
            PrimitiveType::Integer => ColumnType::Int,
            PrimitiveType::Long => ColumnType::Long,
            PrimitiveType::Double => ColumnType::Double,
            PrimitiveType::Decimal(d) => ColumnType::Decimal { precision: d.precision(), scale: d.scale() },
            PrimitiveType::Date => ColumnType::Date,
            PrimitiveType::Timestamp => ColumnType::Timestamp,
            _ => return None,
        },
        DataType::Array(a) => ColumnType::List(Box::new(column_type(a.element_type())?)),
        DataType::Map(m) if *m.key_type() == DataType::STRING => {
            ColumnType::Map(Box::new(column_type(m.value_type())?))
        }
        DataType::Struct(s) => ColumnType::Struct(
            s.fields().map(|f| Some((f.name().clone(), column_type(f.data_type())?))).collect::<Option<Vec<_>>>()?,
        ),
        _ => return None,
    })
}

/// One row to insert: a validated event and where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: DedupKey,
    /// The key fields' values, in the identity's order.
    pub parts: Vec<String>,
    pub time: EventTime,
    /// What the schema keeps of the message ([`crate::event::PayloadMode`]).
    pub payload: Option<String>,
    /// The declared columns' values, in their normal form, in the schema's order.
    pub values: Vec<serde_json::Value>,
    pub source_partition: i32,
    pub source_offset: i64,
    /// With schema evolution: the event's fields that no column holds yet.
    pub unplaced: Option<Box<Unplaced>>,
}

/// What schema evolution has still to place of a row: the top-level fields that no column
/// holds yet (strings, booleans and numbers), and the message, for the dead letter it
/// becomes should a value not fit the column added for its field.
#[derive(Debug, Clone)]
pub struct Unplaced {
    pub fields: Vec<(String, serde_json::Value)>,
    pub key: Option<Vec<u8>>,
    pub message: Vec<u8>,
}

impl Row {
    /// The row of a validated event read at `partition` and `offset`, with what the schema
    /// keeps of its message ([`crate::event::EventSchema::payload_of`]).
    pub(crate) fn from_event(
        event: crate::event::Event<'_>,
        payload: Option<String>,
        partition: i32,
        offset: i64,
    ) -> Self {
        let unplaced = (!event.unread.is_empty()).then(|| {
            Box::new(Unplaced { fields: event.unread, key: None, message: event.payload.as_bytes().to_vec() })
        });
        Self {
            key: event.key,
            parts: event.parts.into_iter().map(std::borrow::Cow::into_owned).collect(),
            time: event.time,
            payload,
            values: event.values,
            source_partition: partition,
            source_offset: offset,
            unplaced,
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
    /// The declared columns' values in their normal form (null where absent).
    pub values: Vec<serde_json::Value>,
    pub event_time_us: i64,
    pub payload: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub batch_id: i64,
    pub ingested_at_us: i64,
    /// The record's fields that no column named when it was read (columns added since:
    /// the sink follows the table, [`crate::clickhouse::sink`]).
    pub unknown: Vec<(String, serde_json::Value)>,
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
