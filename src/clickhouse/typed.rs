//! Declared columns in ClickHouse: each column type's ClickHouse type in a layout, and the
//! RowBinary encoding of a value in its normal form ([`ColumnType::check`]).
//!
//! | column type | ClickHouse (both layouts unless said) |
//! |---|---|
//! | string | String |
//! | boolean | UInt8 (0 or 1; servers before 21.12 have no Bool) |
//! | int, long, double | Int32, Int64, Float64 |
//! | decimal(P,S) | Decimal(P, S) |
//! | date | Date (1970-01-01 to 2149-06-06; a date outside is clamped) |
//! | timestamp | DateTime64(6, 'UTC'); legacy: DateTime('UTC'), whole seconds |
//! | list<T> | Array(T) |
//! | map<string,T> | String: the map as JSON text (servers before 21.8 have no Map) |
//! | struct<…> | Tuple(…) in field order |
//!
//! Scalars are `Nullable` (in a list or struct too); an absent list is empty, an absent
//! struct a tuple of nulls (ClickHouse has no nullable Array or Tuple).

use serde_json::Value;

use crate::clickhouse::Layout;
use crate::event::{ColumnType, EventTime};

/// The ClickHouse type of a column of `kind` in `layout` (see the table above).
pub fn ch_type(kind: &ColumnType, layout: Layout) -> String {
    match kind {
        ColumnType::List(element) => format!("Array({})", ch_type(element, layout)),
        ColumnType::Struct(fields) => {
            let fields: Vec<String> = fields.iter().map(|(_, k)| ch_type(k, layout)).collect();
            format!("Tuple({})", fields.join(", "))
        }
        scalar => format!("Nullable({})", scalar_type(scalar, layout)),
    }
}

/// The ClickHouse type of a key column (never null).
pub fn key_type(kind: &ColumnType) -> &'static str {
    match kind {
        ColumnType::Int => "Int32",
        ColumnType::Long => "Int64",
        _ => "String",
    }
}

fn scalar_type(kind: &ColumnType, layout: Layout) -> String {
    match kind {
        ColumnType::String | ColumnType::Map(_) => "String".into(),
        ColumnType::Boolean => "UInt8".into(),
        ColumnType::Int => "Int32".into(),
        ColumnType::Long => "Int64".into(),
        ColumnType::Double => "Float64".into(),
        ColumnType::Decimal { precision, scale } => format!("Decimal({precision}, {scale})"),
        ColumnType::Date => "Date".into(),
        ColumnType::Timestamp => match layout {
            Layout::Current => "DateTime64(6, 'UTC')".into(),
            Layout::Legacy => "DateTime('UTC')".into(),
        },
        ColumnType::List(_) | ColumnType::Struct(_) => unreachable!("not a scalar: {kind}"),
    }
}

/// Appends `value` (a checked value in its normal form, or null) as RowBinary of
/// [`ch_type`]`(kind, layout)`.
pub fn encode(out: &mut Vec<u8>, kind: &ColumnType, layout: Layout, value: &Value) {
    match kind {
        ColumnType::List(element) => {
            let items = value.as_array().map_or(&[][..], Vec::as_slice);
            varint(out, items.len() as u64);
            for item in items {
                encode(out, element, layout, item);
            }
        }
        ColumnType::Struct(fields) => {
            for (name, field) in fields {
                encode(out, field, layout, value.get(name).unwrap_or(&Value::Null));
            }
        }
        _ if value.is_null() => out.push(1),
        scalar => {
            out.push(0);
            encode_scalar(out, scalar, layout, value);
        }
    }
}

/// A non-null scalar in its normal form. Values were checked: a form that does not parse
/// (it cannot happen) is written as the type's zero, keeping the row aligned.
fn encode_scalar(out: &mut Vec<u8>, kind: &ColumnType, layout: Layout, value: &Value) {
    match kind {
        ColumnType::String => string(out, value.as_str().unwrap_or_default()),
        ColumnType::Map(_) => string(out, &value.to_string()),
        ColumnType::Boolean => out.push(u8::from(value.as_bool().unwrap_or(false))),
        ColumnType::Int => out.extend_from_slice(&(value.as_i64().unwrap_or(0) as i32).to_le_bytes()),
        ColumnType::Long => out.extend_from_slice(&value.as_i64().unwrap_or(0).to_le_bytes()),
        ColumnType::Double => out.extend_from_slice(&value.as_f64().unwrap_or(0.0).to_le_bytes()),
        ColumnType::Decimal { precision, .. } => {
            let unscaled = value.as_str().map_or(0, unscaled_decimal);
            match precision {
                1..=9 => out.extend_from_slice(&(unscaled as i32).to_le_bytes()),
                10..=18 => out.extend_from_slice(&(unscaled as i64).to_le_bytes()),
                _ => out.extend_from_slice(&unscaled.to_le_bytes()),
            }
        }
        ColumnType::Date => {
            let days =
                value.as_str().and_then(|d| EventTime::parse_date(d).ok()).map_or(0, EventTime::days_since_epoch);
            out.extend_from_slice(&(days.clamp(0, i32::from(u16::MAX)) as u16).to_le_bytes());
        }
        ColumnType::Timestamp => {
            let micros = value.as_str().and_then(|t| EventTime::parse(t).ok()).map_or(0, EventTime::micros);
            match layout {
                Layout::Current => out.extend_from_slice(&micros.to_le_bytes()),
                Layout::Legacy => {
                    let seconds = micros.div_euclid(1_000_000).clamp(0, i64::from(u32::MAX)) as u32;
                    out.extend_from_slice(&seconds.to_le_bytes());
                }
            }
        }
        ColumnType::List(_) | ColumnType::Struct(_) => unreachable!("not a scalar: {kind}"),
    }
}

/// The digits of a decimal's normal form (`-12.30`) as one integer (`-1230`).
fn unscaled_decimal(text: &str) -> i128 {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let n = digits
        .bytes()
        .filter(u8::is_ascii_digit)
        .fold(0_i128, |n, d| n.saturating_mul(10).saturating_add(i128::from(d - b'0')));
    if negative { -n } else { n }
}

/// A string as RowBinary: its length as LEB128, then its bytes.
pub fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// LEB128, as RowBinary writes lengths.
pub fn varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn t(text: &str) -> ColumnType {
        ColumnType::parse(text).unwrap()
    }

    #[test]
    fn types_follow_the_layout() {
        let kind = t("struct<a:list<decimal(20,2)>,b:timestamp,c:map<string,int>>");
        assert_eq!(
            ch_type(&kind, Layout::Current),
            "Tuple(Array(Nullable(Decimal(20, 2))), Nullable(DateTime64(6, 'UTC')), Nullable(String))"
        );
        assert_eq!(ch_type(&t("timestamp"), Layout::Legacy), "Nullable(DateTime('UTC'))");
        assert_eq!(ch_type(&t("boolean"), Layout::Legacy), "Nullable(UInt8)");
        assert_eq!(key_type(&t("long")), "Int64");
    }

    #[test]
    fn values_are_encoded_as_rowbinary() {
        let mut out = Vec::new();
        encode(&mut out, &t("decimal(5,2)"), Layout::Current, &json!("-12.30"));
        assert_eq!(out, [[0_u8].as_slice(), &(-1230_i32).to_le_bytes()].concat());
        out.clear();
        encode(&mut out, &t("decimal(30,2)"), Layout::Current, &json!("1.00"));
        assert_eq!(out, [[0_u8].as_slice(), &100_i128.to_le_bytes()].concat());
        out.clear();
        encode(&mut out, &t("list<int>"), Layout::Current, &json!([1, null]));
        assert_eq!(out, [&[2_u8, 0][..], &1_i32.to_le_bytes(), &[1]].concat());
        out.clear();
        encode(&mut out, &t("list<int>"), Layout::Current, &Value::Null);
        assert_eq!(out, [0], "an absent list is empty");
        out.clear();
        encode(&mut out, &t("struct<a:string,b:date>"), Layout::Current, &json!({"a": "x", "b": "1970-01-03"}));
        assert_eq!(out, [&[0_u8, 1, b'x', 0][..], &2_u16.to_le_bytes()].concat());
        out.clear();
        encode(&mut out, &t("timestamp"), Layout::Legacy, &json!("1970-01-01T00:00:01.500000Z"));
        assert_eq!(out, [[0_u8].as_slice(), &1_u32.to_le_bytes()].concat());
        out.clear();
        encode(&mut out, &t("map<string,int>"), Layout::Current, &json!({"k": 1}));
        assert_eq!(out, [&[0_u8, 7][..], br#"{"k":1}"#].concat());
    }
}
