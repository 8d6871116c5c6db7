//! Typed columns: the types a declared column may have, their spelling in the
//! configuration (`decimal(12,2)`, `list<string>`, `struct<street:string,zip:int>`), and
//! the check of an event's value against one, which gives the value in its normal form
//! (what the table, the processed record and ClickHouse get) or a rejection naming the
//! field.
//!
//! Invariant: [`ColumnType::check`] is pure and total, like the contract's parse: the same
//! value always gives the same normal form or the same rejection.

use std::fmt;

use serde_json::Value;

use super::key::EventTime;
use super::reject::{RejectClass, Rejection, quoted};

/// The deepest nesting of lists, maps and structs a declared type may have.
const MAX_TYPE_DEPTH: usize = 16;

/// The type of a declared column (or of a list's elements, a map's values, a struct's
/// fields). Every value may be null unless its column is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Boolean,
    /// 32-bit signed.
    Int,
    /// 64-bit signed.
    Long,
    /// 64-bit floating point.
    Double,
    /// Exact, `precision` digits of which `scale` after the point (precision 1 to 38).
    Decimal {
        precision: u8,
        scale: u8,
    },
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// An instant, UTC, microseconds: an RFC 3339 string or integer epoch milliseconds, as
    /// the default event time.
    Timestamp,
    List(Box<ColumnType>),
    /// String keys.
    Map(Box<ColumnType>),
    Struct(Vec<(String, ColumnType)>),
}

impl ColumnType {
    /// Parses a type's spelling: `string`, `boolean`, `int`, `long`, `double`,
    /// `decimal(P,S)`, `date`, `timestamp`, `list<T>`, `map<string,T>`,
    /// `struct<name:T,...>` (names as plain identifiers). Spaces are allowed between the
    /// parts.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut p = TypeParser { text, at: 0 };
        let kind = p.kind(0)?;
        p.space();
        if p.at != text.len() {
            return Err(format!("type {text:?} has {:?} after its end", &text[p.at..]));
        }
        Ok(kind)
    }

    /// The type a column added for a field of this first value gets (schema
    /// evolution): `string`, `boolean`, `long` for an integer within 64 bits, `double`
    /// for any other number; none for anything else.
    pub fn inferred(value: &Value) -> Option<Self> {
        match value {
            Value::String(_) => Some(ColumnType::String),
            Value::Bool(_) => Some(ColumnType::Boolean),
            Value::Number(n) if n.is_i64() => Some(ColumnType::Long),
            Value::Number(_) => Some(ColumnType::Double),
            _ => None,
        }
    }

    /// The type of a column inferred as `self` and as `other` for two values: a long and
    /// a double make a double; two other types have none.
    pub fn widened(&self, other: &Self) -> Option<Self> {
        match (self, other) {
            (a, b) if a == b => Some(a.clone()),
            (ColumnType::Long, ColumnType::Double) | (ColumnType::Double, ColumnType::Long) => Some(ColumnType::Double),
            _ => None,
        }
    }

    /// Whether a key field may have this type: its value is part of the key as text.
    pub fn can_be_key(&self) -> bool {
        matches!(self, ColumnType::String | ColumnType::Int | ColumnType::Long)
    }

    /// Checks `value` (a field's JSON value, not null) against the type; gives its normal
    /// form: strings, booleans and numbers as they are (integers within range), a decimal
    /// as its text with exactly `scale` fraction digits, a date as `YYYY-MM-DD`, a
    /// timestamp in the canonical form, lists, maps and structs with their elements
    /// checked (a struct keeps its declared fields only, in order; null where absent).
    /// `name` is the field's path, for the rejection.
    pub fn check(&self, value: &Value, name: &str) -> Result<Value, Rejection> {
        let wrong = |expected: &str| {
            Rejection::new(RejectClass::WrongType, format!("field `{name}` is {}; expected {expected}", kind_of(value)))
        };
        let out_of_range = |why: String| {
            Rejection::new(RejectClass::ValueOutOfRange, format!("field `{name}` ({}) {why}", shown(value)))
        };
        match self {
            ColumnType::String => value.as_str().map(|_| value.clone()).ok_or_else(|| wrong("a string")),
            ColumnType::Boolean => value.as_bool().map(Value::Bool).ok_or_else(|| wrong("a boolean")),
            ColumnType::Int | ColumnType::Long => {
                let Value::Number(n) = value else { return Err(wrong("an integer")) };
                let (min, max) = if *self == ColumnType::Int {
                    (i64::from(i32::MIN), i64::from(i32::MAX))
                } else {
                    (i64::MIN, i64::MAX)
                };
                match n.as_i64() {
                    Some(i) if (min..=max).contains(&i) => Ok(value.clone()),
                    Some(_) => Err(out_of_range(format!("is outside {min} to {max}"))),
                    None if n.is_u64() => Err(out_of_range(format!("is outside {min} to {max}"))),
                    None => Err(wrong("an integer")),
                }
            }
            ColumnType::Double => {
                if value.is_number() {
                    Ok(value.clone())
                } else {
                    Err(wrong("a number"))
                }
            }
            ColumnType::Decimal { precision, scale } => {
                let text = match value {
                    // Rust prints a float as its shortest exact decimal, never with an
                    // exponent (serde_json's own form may have one).
                    Value::Number(n) if n.is_f64() => n.as_f64().map(|f| f.to_string()).unwrap_or_default(),
                    Value::Number(n) => n.to_string(),
                    Value::String(s) => s.clone(),
                    _ => return Err(wrong("a number or a string of one")),
                };
                decimal(&text, *precision, *scale).map(Value::String).map_err(|e| match e {
                    DecimalError::Malformed => wrong(&format!("a decimal number, not {}", quoted(&text))),
                    DecimalError::DoesNotFit(why) => out_of_range(why),
                })
            }
            ColumnType::Date => {
                let Value::String(s) = value else { return Err(wrong("a date YYYY-MM-DD")) };
                match EventTime::parse_date(s) {
                    Ok(day) => Ok(Value::String(day.date())),
                    Err(super::TimeError::OutOfRange(m)) => Err(out_of_range(m)),
                    Err(super::TimeError::Malformed(_)) => Err(wrong("a date YYYY-MM-DD")),
                }
            }
            ColumnType::Timestamp => {
                let time = match value {
                    Value::String(s) => EventTime::parse(s),
                    Value::Number(n) => match n.as_i64() {
                        Some(ms) => EventTime::from_epoch_millis(ms),
                        None => return Err(wrong("an RFC 3339 string or an integer of epoch milliseconds")),
                    },
                    _ => return Err(wrong("an RFC 3339 string or an integer of epoch milliseconds")),
                };
                match time {
                    Ok(t) => Ok(Value::String(t.to_string())),
                    Err(super::TimeError::OutOfRange(m)) => Err(out_of_range(m)),
                    Err(super::TimeError::Malformed(_)) => {
                        Err(wrong("an RFC 3339 string or an integer of epoch milliseconds"))
                    }
                }
            }
            ColumnType::List(element) => {
                let Value::Array(items) = value else { return Err(wrong("a list")) };
                let checked = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| match item {
                        Value::Null => Ok(Value::Null),
                        item => element.check(item, &format!("{name}[{i}]")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Value::Array(checked))
            }
            ColumnType::Map(values) => {
                let Value::Object(entries) = value else { return Err(wrong("an object (a map)")) };
                let mut checked = serde_json::Map::new();
                for (key, item) in entries {
                    let item = match item {
                        Value::Null => Value::Null,
                        item => values.check(item, &format!("{name}.{key}"))?,
                    };
                    checked.insert(key.clone(), item);
                }
                Ok(Value::Object(checked))
            }
            ColumnType::Struct(fields) => {
                let Value::Object(entries) = value else { return Err(wrong("an object")) };
                let mut checked = serde_json::Map::new();
                for (field, kind) in fields {
                    let item = match entries.get(field) {
                        None | Some(Value::Null) => Value::Null,
                        Some(item) => kind.check(item, &format!("{name}.{field}"))?,
                    };
                    checked.insert(field.clone(), item);
                }
                Ok(Value::Object(checked))
            }
        }
    }
}

impl fmt::Display for ColumnType {
    /// The canonical spelling, which [`ColumnType::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::String => f.write_str("string"),
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Int => f.write_str("int"),
            ColumnType::Long => f.write_str("long"),
            ColumnType::Double => f.write_str("double"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::List(element) => write!(f, "list<{element}>"),
            ColumnType::Map(values) => write!(f, "map<string,{values}>"),
            ColumnType::Struct(fields) => {
                f.write_str("struct<")?;
                for (i, (name, kind)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{name}:{kind}")?;
                }
                f.write_str(">")
            }
        }
    }
}

/// What a JSON value is, for a rejection.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number with a fraction or exponent",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value as a rejection quotes it (short).
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => quoted(s),
        other => quoted(&other.to_string()),
    }
}

enum DecimalError {
    Malformed,
    DoesNotFit(String),
}

/// The decimal text of `text` (an optional `-`, digits, an optional fraction) with
/// exactly `scale` fraction digits, if it has at most `precision - scale` digits before
/// the point and no non-zero digit past `scale` after it.
fn decimal(text: &str, precision: u8, scale: u8) -> Result<String, DecimalError> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || (digits.contains('.') && fraction.is_empty())
    {
        return Err(DecimalError::Malformed);
    }
    let whole = whole.trim_start_matches('0');
    let (scale, precision) = (usize::from(scale), usize::from(precision));
    if whole.len() > precision - scale {
        return Err(DecimalError::DoesNotFit(format!(
            "has {} digits before the point; decimal({precision},{scale}) holds {}",
            whole.len(),
            precision - scale
        )));
    }
    if fraction.len() > scale && fraction[scale..].bytes().any(|b| b != b'0') {
        return Err(DecimalError::DoesNotFit(format!(
            "has more than {scale} digits after the point; decimal({precision},{scale}) would round it"
        )));
    }
    let mut out = String::with_capacity(precision + 3);
    let zero = whole.is_empty() && fraction.bytes().all(|b| b == b'0');
    if negative && !zero {
        out.push('-');
    }
    out.push_str(if whole.is_empty() { "0" } else { whole });
    if scale > 0 {
        out.push('.');
        let kept = &fraction[..fraction.len().min(scale)];
        out.push_str(kept);
        out.extend(std::iter::repeat_n('0', scale - kept.len()));
    }
    Ok(out)
}

/// A recursive-descent reader of a type's spelling.
struct TypeParser<'a> {
    text: &'a str,
    at: usize,
}

impl TypeParser<'_> {
    fn space(&mut self) {
        while self.text[self.at..].starts_with(' ') {
            self.at += 1;
        }
    }

    fn word(&mut self) -> &str {
        self.space();
        let rest = &self.text[self.at..];
        let len = rest.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
        self.at += len;
        &rest[..len]
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        self.space();
        if self.text[self.at..].starts_with(c) {
            self.at += c.len_utf8();
            Ok(())
        } else {
            Err(format!("type {:?}: expected `{c}` at {:?}", self.text, &self.text[self.at..]))
        }
    }

    fn number(&mut self) -> Result<u8, String> {
        let word = self.word().to_owned();
        word.parse().map_err(|_| format!("type {:?}: {word:?} is not a number", self.text))
    }

    fn kind(&mut self, depth: usize) -> Result<ColumnType, String> {
        if depth > MAX_TYPE_DEPTH {
            return Err(format!("type {:?} nests deeper than {MAX_TYPE_DEPTH} levels", self.text));
        }
        let word = self.word().to_ascii_lowercase();
        Ok(match word.as_str() {
            "string" => ColumnType::String,
            "boolean" => ColumnType::Boolean,
            "int" => ColumnType::Int,
            "long" => ColumnType::Long,
            "double" => ColumnType::Double,
            "date" => ColumnType::Date,
            "timestamp" => ColumnType::Timestamp,
            "decimal" => {
                self.expect('(')?;
                let precision = self.number()?;
                self.expect(',')?;
                let scale = self.number()?;
                self.expect(')')?;
                if !(1..=38).contains(&precision) || scale > precision {
                    return Err(format!(
                        "type {:?}: a decimal's precision is 1 to 38 and its scale at most its precision",
                        self.text
                    ));
                }
                ColumnType::Decimal { precision, scale }
            }
            "list" => {
                self.expect('<')?;
                let element = self.kind(depth + 1)?;
                self.expect('>')?;
                ColumnType::List(Box::new(element))
            }
            "map" => {
                self.expect('<')?;
                let key = self.word().to_ascii_lowercase();
                if key != "string" {
                    return Err(format!("type {:?}: a map's keys are strings (map<string,T>)", self.text));
                }
                self.expect(',')?;
                let values = self.kind(depth + 1)?;
                self.expect('>')?;
                ColumnType::Map(Box::new(values))
            }
            "struct" => {
                self.expect('<')?;
                let mut fields: Vec<(String, ColumnType)> = Vec::new();
                loop {
                    let name = self.word().to_owned();
                    if !super::identity::is_identifier(&name) {
                        return Err(format!("type {:?}: a struct's field name must be a plain identifier", self.text));
                    }
                    if fields.iter().any(|(n, _)| *n == name) {
                        return Err(format!("type {:?}: field {name:?} appears twice", self.text));
                    }
                    self.expect(':')?;
                    fields.push((name, self.kind(depth + 1)?));
                    self.space();
                    if self.text[self.at..].starts_with(',') {
                        self.at += 1;
                    } else {
                        break;
                    }
                }
                self.expect('>')?;
                ColumnType::Struct(fields)
            }
            "" => return Err(format!("type {:?}: expected a type at {:?}", self.text, &self.text[self.at..])),
            other => {
                return Err(format!(
                    "type {:?}: unknown type {other:?} (string, boolean, int, long, double, decimal(P,S), date, \
                     timestamp, list<T>, map<string,T>, struct<name:T,...>)",
                    self.text
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn t(text: &str) -> ColumnType {
        ColumnType::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn types_read_back_from_their_spelling() {
        for text in [
            "string",
            "boolean",
            "int",
            "long",
            "double",
            "decimal(12,2)",
            "date",
            "timestamp",
            "list<string>",
            "map<string,list<long>>",
            "struct<street:string,zip:int,tags:list<string>,at:struct<t:timestamp>>",
        ] {
            assert_eq!(t(text).to_string(), text);
        }
        assert_eq!(t(" Struct < a : Long , b:DECIMAL( 5 , 1 ) > ").to_string(), "struct<a:long,b:decimal(5,1)>");
        for bad in [
            "",
            "text",
            "decimal(39,2)",
            "decimal(5,6)",
            "decimal(5)",
            "map<long,string>",
            "list<string",
            "struct<a:string,a:int>",
            "struct<a-b:int>",
            "string string",
        ] {
            assert!(ColumnType::parse(bad).is_err(), "{bad:?} was taken");
        }
        let deep = format!("{}string{}", "list<".repeat(20), ">".repeat(20));
        assert!(ColumnType::parse(&deep).unwrap_err().contains("deeper"));
    }

    fn class(kind: &str, value: Value) -> RejectClass {
        t(kind).check(&value, "f").unwrap_err().class
    }

    #[test]
    fn values_are_checked_and_normalized() {
        let ok = |kind: &str, value: Value| t(kind).check(&value, "f").unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(ok("string", json!("x")), json!("x"));
        assert_eq!(ok("int", json!(-2147483648)), json!(-2147483648));
        assert_eq!(ok("long", json!(9223372036854775807_i64)), json!(9223372036854775807_i64));
        assert_eq!(ok("double", json!(7)), json!(7));
        assert_eq!(ok("decimal(5,2)", json!(12.3)), json!("12.30"));
        assert_eq!(ok("decimal(5,2)", json!("-012.300")), json!("-12.30"));
        assert_eq!(ok("decimal(5,2)", json!("-0.00")), json!("0.00"));
        assert_eq!(ok("decimal(3,0)", json!(999)), json!("999"));
        assert_eq!(ok("date", json!("2024-02-29")), json!("2024-02-29"));
        assert_eq!(ok("timestamp", json!("2024-01-01T01:00:00+01:00")), json!("2024-01-01T00:00:00.000000Z"));
        assert_eq!(ok("timestamp", json!(1704067200000_i64)), json!("2024-01-01T00:00:00.000000Z"));
        assert_eq!(ok("list<int>", json!([1, null, 3])), json!([1, null, 3]));
        assert_eq!(ok("map<string,decimal(3,1)>", json!({"a": 1, "b": null})), json!({"a": "1.0", "b": null}));
        assert_eq!(
            ok("struct<a:string,b:date>", json!({"b": "2024-01-01", "x": 1})),
            json!({"a": null, "b": "2024-01-01"})
        );

        assert_eq!(class("string", json!(1)), RejectClass::WrongType);
        assert_eq!(class("boolean", json!("true")), RejectClass::WrongType);
        assert_eq!(class("int", json!(1.5)), RejectClass::WrongType);
        assert_eq!(class("int", json!(2147483648_i64)), RejectClass::ValueOutOfRange);
        assert_eq!(class("long", json!(18446744073709551615_u64)), RejectClass::ValueOutOfRange);
        assert_eq!(class("double", json!("1")), RejectClass::WrongType);
        assert_eq!(class("decimal(5,2)", json!(1234.5)), RejectClass::ValueOutOfRange);
        assert_eq!(class("decimal(5,2)", json!("1.234")), RejectClass::ValueOutOfRange);
        assert_eq!(class("decimal(5,2)", json!("1e3")), RejectClass::WrongType);
        assert_eq!(class("date", json!("2023-02-29")), RejectClass::WrongType);
        assert_eq!(class("date", json!(20240101)), RejectClass::WrongType);
        assert_eq!(class("timestamp", json!("0000-01-01T00:00:00Z")), RejectClass::ValueOutOfRange);
        assert_eq!(class("list<int>", json!({"a": 1})), RejectClass::WrongType);
        assert_eq!(class("struct<a:int>", json!([1])), RejectClass::WrongType);
        let r = t("struct<a:list<int>>").check(&json!({"a": [1, "two"]}), "order").unwrap_err();
        assert!(r.message.contains("field `order.a[1]` is a string; expected an integer"), "{r}");
        let r = t("map<string,int>").check(&json!({"k": 5000000000_i64}), "m").unwrap_err();
        assert!(r.message.contains("field `m.k` (\"5000000000\") is outside"), "{r}");
    }
}
