//! The event contract: from a Kafka message's bytes to a validated [`Event`] with its
//! canonical time and dedup key, or a [`Rejection`] that says why not.
//!
//! Invariant: [`parse`] is total (it never panics and never loses a message: every input
//! is either an `Event` or a `Rejection`), and it is pure, so the same bytes always give
//! the same answer on every instance and after every restart.

mod identity;
mod key;
mod reject;
mod schema;
mod typed;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use identity::Wanted;
pub use identity::{FieldPath, Identity, KeyField, TABLE_PROPERTY, TimeFormat};
pub use key::{DedupKey, EventTime, TimeError};
pub use reject::{RejectClass, Rejection};
pub use schema::{ColumnSpec, EventSchema, KeyKind, PayloadMode, SchemaEvolution};
pub use typed::ColumnType;

/// Messages larger than this are refused unless configured otherwise: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The deepest nesting of arrays and objects accepted. serde_json skips ignored values
/// without a depth limit, and a 100,000-deep payload would be stored and then break
/// readers downstream, so the limit is checked here.
pub const MAX_DEPTH: usize = 64;

/// A message that passed the contract. Borrows from the message bytes where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// `md5(field 0x1F field … 0x1F canonical time)` over the identity's key fields.
    pub key: DedupKey,
    /// The key fields' values as text, in the identity's order: an integer is taken as
    /// its decimal digits.
    pub parts: Vec<Cow<'a, str>>,
    /// The event's instant, in UTC with microsecond precision.
    pub time: EventTime,
    /// The original message text, kept whole so that no field is lost.
    pub payload: &'a str,
    /// The declared columns' values in their normal form ([`ColumnType::check`]), null
    /// where absent, in the schema's order.
    pub values: Vec<serde_json::Value>,
    /// With [`SchemaEvolution::AddColumns`]: the top-level fields the schema does not
    /// read whose values are strings, booleans or numbers, in message order (empty
    /// otherwise).
    pub unread: Vec<(String, serde_json::Value)>,
}

/// Validates one message value against the contract of the default schema (the seed's:
/// `user_id`, `event_type`, `timestamp`) and computes its key.
pub fn parse(value: Option<&[u8]>, max_bytes: usize) -> Result<Event<'_>, Rejection> {
    parse_with(value, max_bytes, default_schema())
}

/// The default schema, built once.
fn default_schema() -> &'static EventSchema {
    static DEFAULT: std::sync::OnceLock<EventSchema> = std::sync::OnceLock::new();
    DEFAULT.get_or_init(EventSchema::default)
}

/// Validates one message value against `schema` and computes its key.
///
/// `value` is `None` for a Kafka message without a value (a tombstone).
pub fn parse_with<'a>(value: Option<&'a [u8]>, max_bytes: usize, schema: &EventSchema) -> Result<Event<'a>, Rejection> {
    let Some(bytes) = value else {
        return Err(Rejection::new(RejectClass::NullValue, "the message has no value"));
    };
    if bytes.len() > max_bytes {
        return Err(Rejection::new(
            RejectClass::TooLarge,
            format!("the message is {} bytes, over the limit of {max_bytes}", bytes.len()),
        ));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Rejection::new(RejectClass::NotUtf8, format!("the message is not valid UTF-8: {e}")))?;

    let first = text.bytes().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(b'{') {
        return Err(match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => Rejection::new(RejectClass::NotObject, "the message is JSON but not an object"),
            Err(e) => invalid_json(&e),
        });
    }
    if nesting_exceeds(text.as_bytes(), MAX_DEPTH) {
        return Err(Rejection::new(
            RejectClass::TooDeep,
            format!("arrays and objects are nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let identity = schema.identity();
    let key_len = identity.fields().len();
    let mut fields = Fields {
        slots: (0..=key_len).map(|_| None).collect(),
        values: (0..schema.columns().len()).map(|_| None).collect(),
        duplicate: None,
        unread: Vec::new(),
    };
    let top = Level {
        wanted: schema.wanted(),
        fields: &mut fields,
        keep_unread: schema.evolution() == SchemaEvolution::AddColumns,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    de::DeserializeSeed::deserialize(top, &mut de).map_err(|e| invalid_json(&e))?;
    de.end().map_err(|e| invalid_json(&e))?;

    let Fields { mut slots, values, duplicate, unread } = fields;
    if let Some(slot) = duplicate {
        let name = schema.path_of(slot).map(ToString::to_string).unwrap_or_default();
        return Err(Rejection::new(RejectClass::DuplicateField, format!("field `{name}` appears more than once")));
    }
    let time_value = slots.pop().flatten();
    let mut parts = Vec::with_capacity(key_len);
    for ((field, kind), value) in identity.fields().iter().zip(schema.key_kinds()).zip(slots) {
        parts.push(key_part(&field.path, *kind, required(&field.path, value)?)?);
    }
    let time = time_of(required(identity.time(), time_value)?, identity.format(), identity.time())?;
    let mut checked = Vec::with_capacity(values.len());
    for (spec, value) in schema.columns().iter().zip(values) {
        checked.push(match value {
            None | Some(serde_json::Value::Null) if spec.required => {
                return Err(Rejection::new(
                    RejectClass::MissingField,
                    format!("required field `{}` is missing or null", spec.field),
                ));
            }
            None | Some(serde_json::Value::Null) => serde_json::Value::Null,
            Some(value) => spec.kind.check(&value, &spec.field.to_string())?,
        });
    }
    let key = DedupKey::compute_parts(&parts, time);
    Ok(Event { key, parts, time, payload: text, values: checked, unread })
}

/// A key field's value as the key's text, if it is of its kind.
fn key_part<'a>(name: &FieldPath, kind: KeyKind, value: Scalar<'a>) -> Result<Cow<'a, str>, Rejection> {
    let in_range = |n: i64| kind != KeyKind::Int || i32::try_from(n).is_ok();
    let out_of_range = |n: &dyn fmt::Display| {
        Rejection::new(
            RejectClass::ValueOutOfRange,
            format!("field `{name}` ({n}) is outside the range of {}", kind.column_type()),
        )
    };
    match (kind, value) {
        (KeyKind::Text | KeyKind::TextOrInteger, Scalar::Str(s)) => non_empty(name, s),
        (KeyKind::TextOrInteger, Scalar::Int(n)) => Ok(Cow::Owned(n.to_string())),
        (KeyKind::TextOrInteger, Scalar::UInt(n)) => Ok(Cow::Owned(n.to_string())),
        (KeyKind::Int | KeyKind::Long, Scalar::Int(n)) if in_range(n) => Ok(Cow::Owned(n.to_string())),
        (KeyKind::Int | KeyKind::Long, Scalar::Int(n)) => Err(out_of_range(&n)),
        (KeyKind::Int | KeyKind::Long, Scalar::UInt(n)) => Err(out_of_range(&n)),
        (KeyKind::TextOrInteger, other) => Err(wrong_type(name, &other, "a non-empty string or an integer")),
        (KeyKind::Text, other) => Err(wrong_type(name, &other, "a non-empty string")),
        (KeyKind::Int | KeyKind::Long, other) => Err(wrong_type(name, &other, "an integer")),
    }
}

/// The event time of the time field's value, read in `format`.
fn time_of(value: Scalar<'_>, format: TimeFormat, name: &FieldPath) -> Result<EventTime, Rejection> {
    let time = match (format, value) {
        (TimeFormat::Auto | TimeFormat::Rfc3339, Scalar::Str(s)) => EventTime::parse(&s),
        (TimeFormat::Auto, Scalar::Int(millis)) => EventTime::from_epoch_millis(millis),
        (TimeFormat::Auto, Scalar::UInt(millis)) => {
            Err(TimeError::OutOfRange(format!("{millis} epoch milliseconds is outside the years 0001 to 9999")))
        }
        // An integer too large for 64 bits arrives as a float with no fraction.
        (TimeFormat::Auto, Scalar::Float(f)) if f.fract() == 0.0 && f.abs() >= 9.2e18 => {
            Err(TimeError::OutOfRange(format!("{f} epoch milliseconds is outside the years 0001 to 9999")))
        }
        (format, value) => match (format.epoch_unit_nanos(), value) {
            (Some(unit), Scalar::Int(n)) => EventTime::from_epoch_decimal(&n.to_string(), unit, format),
            (Some(unit), Scalar::UInt(n)) => EventTime::from_epoch_decimal(&n.to_string(), unit, format),
            // Rust prints a float as its shortest exact decimal, without an exponent.
            (Some(unit), Scalar::Float(f)) if f.is_finite() => {
                EventTime::from_epoch_decimal(&f.to_string(), unit, format)
            }
            (Some(unit), Scalar::Str(s)) => EventTime::from_epoch_decimal(&s, unit, format),
            (_, other) => return Err(wrong_type(name, &other, format.expected())),
        },
    };
    time.map_err(|e| match e {
        TimeError::Malformed(m) => Rejection::new(RejectClass::InvalidTimestamp, m),
        TimeError::OutOfRange(m) => Rejection::new(RejectClass::TimestampOutOfRange, m),
    })
}

/// Whether brackets outside strings nest deeper than `limit`. Runs before parsing, so
/// malformed text gives no false alarm worse than a refusal it would get anyway.
fn nesting_exceeds(bytes: &[u8], limit: usize) -> bool {
    // The depth never exceeds the number of opening brackets, and most messages have a
    // handful: one vectorised count spares them the byte-by-byte walk.
    if bytes.iter().filter(|&&b| b == b'[' || b == b'{').count() <= limit {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0_usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn invalid_json(e: &serde_json::Error) -> Rejection {
    Rejection::new(RejectClass::InvalidJson, format!("the message is not valid JSON: {e}"))
}

fn required<'a>(name: &impl fmt::Display, value: Option<Scalar<'a>>) -> Result<Scalar<'a>, Rejection> {
    value.ok_or_else(|| Rejection::new(RejectClass::MissingField, format!("required field `{name}` is missing")))
}

fn non_empty<'a>(name: &impl fmt::Display, s: Cow<'a, str>) -> Result<Cow<'a, str>, Rejection> {
    if s.is_empty() {
        Err(Rejection::new(RejectClass::EmptyField, format!("field `{name}` is an empty string")))
    } else {
        Ok(s)
    }
}

fn wrong_type(name: &impl fmt::Display, found: &Scalar<'_>, expected: &str) -> Rejection {
    Rejection::new(RejectClass::WrongType, format!("field `{name}` is {found}; expected {expected}"))
}

/// The values of the fields the identity reads (its key fields, then its time), each
/// found by its path; every other field is skipped unread.
struct Fields<'a> {
    /// The key fields' and the time's values.
    slots: Vec<Option<Scalar<'a>>>,
    /// The declared columns' values (slots after the time's).
    values: Vec<Option<serde_json::Value>>,
    /// The first wanted field seen twice: JSON parsers disagree on which copy wins, so
    /// such a message has no single meaning and is refused.
    duplicate: Option<usize>,
    /// The top-level fields not wanted whose values are scalars, when kept.
    unread: Vec<(String, serde_json::Value)>,
}

/// One level of the message (the object itself, or the value under a wanted name that
/// leads to wanted fields): the names wanted here, and where their values go. An object
/// is searched; any other value is skipped (the fields it would hold are then missing).
struct Level<'w, 'f, 'a> {
    wanted: &'w [Wanted],
    fields: &'f mut Fields<'a>,
    /// Keep the scalar values of the names not wanted here (the top level, evolving).
    keep_unread: bool,
}

impl<'de> de::DeserializeSeed<'de> for Level<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(name) = map.next_key::<Scalar<'de>>()? {
            let Some(wanted) = (match &name {
                Scalar::Str(s) => self.wanted.iter().find(|w| w.name == *s),
                _ => None,
            }) else {
                match (&name, self.keep_unread) {
                    (Scalar::Str(s), true) => {
                        if let Unread(Some(value)) = map.next_value::<Unread>()? {
                            self.fields.unread.push((s.to_string(), value));
                        }
                    }
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                continue;
            };
            if let Some(slot) = wanted.slot {
                let scalars = self.fields.slots.len();
                let seen = if slot < scalars {
                    let value = map.next_value::<Scalar<'de>>()?;
                    self.fields.slots[slot].replace(value).is_some()
                } else {
                    let value = map.next_value::<serde_json::Value>()?;
                    self.fields.values[slot - scalars].replace(value).is_some()
                };
                if seen {
                    self.fields.duplicate.get_or_insert(slot);
                }
            } else {
                map.next_value_seed(Level { wanted: &wanted.children, fields: &mut *self.fields, keep_unread: false })?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A field's value if it is a string, a boolean or a number (what a column may be added
/// for); anything else is skipped unread.
struct Unread(Option<serde_json::Value>);

impl<'de> Deserialize<'de> for Unread {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnreadVisitor)
    }
}

struct UnreadVisitor;

impl<'de> Visitor<'de> for UnreadVisitor {
    type Value = Unread;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Unread, E> {
        Ok(Unread(Some(serde_json::Value::String(v.to_owned()))))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Unread, E> {
        Ok(Unread(Some(serde_json::Value::String(v))))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Unread, E> {
        Ok(Unread(Some(serde_json::Value::Bool(v))))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Unread, E> {
        Ok(Unread(Some(v.into())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Unread, E> {
        Ok(Unread(Some(v.into())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Unread, E> {
        Ok(Unread(serde_json::Number::from_f64(v).map(serde_json::Value::Number)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Unread, E> {
        Ok(Unread(None))
    }
    fn visit_none<E: de::Error>(self) -> Result<Unread, E> {
        Ok(Unread(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unread, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Unread(None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unread, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Unread(None))
    }
}

/// A JSON value reduced to what the contract needs to know of it.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    /// Integers above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Bool,
    Null,
    Array,
    Object,
}

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scalar::Str(_) => "a string",
            Scalar::Int(_) | Scalar::UInt(_) => "an integer",
            Scalar::Float(_) => "a number with a fraction or exponent",
            Scalar::Bool => "a boolean",
            Scalar::Null => "null",
            Scalar::Array => "an array",
            Scalar::Object => "an object",
        })
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Scalar::UInt(v), Scalar::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(text: &str) -> RejectClass {
        match parse(Some(text.as_bytes()), DEFAULT_MAX_MESSAGE_BYTES) {
            Ok(e) => panic!("{text} was accepted as {e:?}"),
            Err(r) => r.class,
        }
    }

    fn key_of(text: &str) -> String {
        parse(Some(text.as_bytes()), DEFAULT_MAX_MESSAGE_BYTES)
            .unwrap_or_else(|r| panic!("{text} was refused: {r}"))
            .key
            .to_string()
    }

    const U1_CLICK_2024: &str = "0d268ed825d0878afe3a1761a47c13d8";

    #[test]
    fn every_spelling_of_one_instant_gives_one_key() {
        for ts in [
            r#""2024-01-01T00:00:00Z""#,
            r#""2024-01-01T01:00:00+01:00""#,
            r#""2024-01-01 00:00:00.000""#,
            r#""2024-01-01T00:00:00""#,
            r#""2024-01-01 00:00:00Z""#,
            r#""2024-01-01T00:00:00.000000000Z""#,
            "1704067200000",
        ] {
            let msg = format!(r#"{{"user_id":"u1","event_type":"click","timestamp":{ts}}}"#);
            assert_eq!(key_of(&msg), U1_CLICK_2024, "{msg}");
        }
    }

    #[test]
    fn integer_and_string_ids_are_one_user() {
        let int = key_of(r#"{"user_id":123,"event_type":"e","timestamp":0}"#);
        let text = key_of(r#"{"user_id":"123","event_type":"e","timestamp":0}"#);
        assert_eq!(int, text);
        let big = key_of(r#"{"user_id":18446744073709551615,"event_type":"e","timestamp":0}"#);
        let big_text = key_of(r#"{"user_id":"18446744073709551615","event_type":"e","timestamp":0}"#);
        assert_eq!(big, big_text);
        let neg = key_of(r#"{"user_id":-7,"event_type":"e","timestamp":0}"#);
        assert_eq!(neg, key_of(r#"{"user_id":"-7","event_type":"e","timestamp":0}"#));
    }

    /// Other fields are checked for JSON syntax and depth only, so a number beyond f64
    /// there (valid JSON; RFC 8259 sets no range) is accepted and kept whole in the
    /// payload, which travels as a string everywhere.
    #[test]
    fn an_other_field_may_hold_a_number_beyond_f64() {
        let msg = r#"{"user_id":"u1","event_type":"click","timestamp":"2024-01-01T00:00:00Z","v":4e0347,"w":-1e-999}"#;
        let e = parse(Some(msg.as_bytes()), DEFAULT_MAX_MESSAGE_BYTES).unwrap();
        assert_eq!(e.key.to_string(), U1_CLICK_2024);
        assert_eq!(e.payload, msg);
        assert!(serde_json::from_str::<serde_json::Value>(msg).is_err(), "serde_json values cannot hold it");
    }

    #[test]
    fn other_fields_and_field_order_do_not_change_the_key() {
        assert_eq!(
            key_of(r#"{"timestamp":"2024-01-01T00:00:00Z","x":[1,{"y":null}],"event_type":"click","user_id":"u1"}"#),
            U1_CLICK_2024
        );
    }

    #[test]
    fn escaped_strings_are_read_as_their_text() {
        assert_eq!(
            key_of(r#"{"user_\u0069d":"\u00751","event_type":"cl\u0069ck","timestamp":"2024-01-01T00:00:00Z"}"#),
            U1_CLICK_2024
        );
    }

    #[test]
    fn the_payload_is_the_message_text() {
        let text = r#" {"user_id":"u1","event_type":"click","timestamp":0,"extra":true} "#;
        let event = parse(Some(text.as_bytes()), 1024).unwrap();
        assert_eq!(event.payload, text);
        assert_eq!(event.parts, ["u1", "click"]);
    }

    #[test]
    fn each_invalid_class_is_named() {
        let cases: &[(&[u8], RejectClass)] = &[
            (b"\xff\xfe{}", RejectClass::NotUtf8),
            (b"{not json", RejectClass::InvalidJson),
            (b"", RejectClass::InvalidJson),
            (b"\xef\xbb\xbf{\"user_id\":\"u1\"}", RejectClass::InvalidJson),
            (b"{\"user_id\":\"u1\",\"event_type\":\"e\",\"timestamp\":0} {}", RejectClass::InvalidJson),
            (b"{\"user_id\":\"u\0\",\"event_type\":\"e\",\"timestamp\":0}", RejectClass::InvalidJson),
            (b"[1,2]", RejectClass::NotObject),
            (b"[\"u1\",\"click\",0]", RejectClass::NotObject),
            (b"\"str\"", RejectClass::NotObject),
            (b"null", RejectClass::NotObject),
            (b"12", RejectClass::NotObject),
            (br#"{"user_id":"u1","user_id":"u2","event_type":"e","timestamp":0}"#, RejectClass::DuplicateField),
            (br#"{"event_type":"e","timestamp":0}"#, RejectClass::MissingField),
            (br#"{"user_id":"u1","timestamp":0}"#, RejectClass::MissingField),
            (br#"{"user_id":"u1","event_type":"e"}"#, RejectClass::MissingField),
            (br#"{"user_id":null,"event_type":"e","timestamp":0}"#, RejectClass::WrongType),
            (br#"{"user_id":1.5,"event_type":"e","timestamp":0}"#, RejectClass::WrongType),
            (br#"{"user_id":true,"event_type":"e","timestamp":0}"#, RejectClass::WrongType),
            (br#"{"user_id":{},"event_type":"e","timestamp":0}"#, RejectClass::WrongType),
            (br#"{"user_id":"u1","event_type":7,"timestamp":0}"#, RejectClass::WrongType),
            (br#"{"user_id":"u1","event_type":"e","timestamp":1.0}"#, RejectClass::WrongType),
            (br#"{"user_id":"u1","event_type":"e","timestamp":[0]}"#, RejectClass::WrongType),
            (br#"{"user_id":"","event_type":"e","timestamp":0}"#, RejectClass::EmptyField),
            (br#"{"user_id":"u1","event_type":"","timestamp":0}"#, RejectClass::EmptyField),
            (br#"{"user_id":"u1","event_type":"e","timestamp":"yesterday"}"#, RejectClass::InvalidTimestamp),
            (br#"{"user_id":"u1","event_type":"e","timestamp":"0"}"#, RejectClass::InvalidTimestamp),
            (br#"{"user_id":"u1","event_type":"e","timestamp":99999999999999999}"#, RejectClass::TimestampOutOfRange),
            (
                br#"{"user_id":"u1","event_type":"e","timestamp":18446744073709551615}"#,
                RejectClass::TimestampOutOfRange,
            ),
            (
                br#"{"user_id":"u1","event_type":"e","timestamp":100000000000000000000000000000}"#,
                RejectClass::TimestampOutOfRange,
            ),
            (
                br#"{"user_id":"u1","event_type":"e","timestamp":"0000-12-31T23:59:59Z"}"#,
                RejectClass::TimestampOutOfRange,
            ),
        ];
        for (bytes, class) in cases {
            let got = parse(Some(bytes), DEFAULT_MAX_MESSAGE_BYTES).map(|e| e.key);
            assert_eq!(got.map_err(|r| r.class), Err(*class), "{}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(parse(None, 10).map(|e| e.key).map_err(|r| r.class), Err(RejectClass::NullValue));
        let big = format!(r#"{{"user_id":"u1","event_type":"e","timestamp":0,"pad":"{}"}}"#, "x".repeat(100));
        assert_eq!(parse(Some(big.as_bytes()), 100).map(|e| e.key).map_err(|r| r.class), Err(RejectClass::TooLarge));
        assert!(parse(Some(big.as_bytes()), big.len()).is_ok(), "the limit is inclusive");
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let nested = |n: usize| {
            format!(r#"{{"user_id":"u1","event_type":"e","timestamp":0,"x":{}{}}}"#, "[".repeat(n), "]".repeat(n))
        };
        assert_eq!(class_of(&nested(100_000)), RejectClass::TooDeep);
        assert_eq!(class_of(&nested(MAX_DEPTH)), RejectClass::TooDeep, "the object itself is one level");
        assert!(parse(Some(nested(MAX_DEPTH - 1).as_bytes()), DEFAULT_MAX_MESSAGE_BYTES).is_ok());
        // Brackets inside strings (and escaped quotes) do not count.
        let quoted = format!(
            r#"{{"user_id":"u1","event_type":"e","timestamp":0,"x":"{}\"{}"}}"#,
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(parse(Some(quoted.as_bytes()), DEFAULT_MAX_MESSAGE_BYTES).is_ok());
    }

    fn custom(key: &[&str], time: &str, format: TimeFormat) -> Identity {
        Identity::new(key, time, format).unwrap()
    }

    fn parsed<'a>(text: &'a str, identity: &Identity) -> Result<Event<'a>, Rejection> {
        parse_with(Some(text.as_bytes()), DEFAULT_MAX_MESSAGE_BYTES, &EventSchema::of(identity.clone()))
    }

    #[test]
    fn a_custom_identity_keys_its_own_fields() {
        let id = custom(&["customerId", "action"], "ts", TimeFormat::EpochMillis);
        let e = parsed(r#"{"action":"click","ts":1704067200000,"customerId":"u1","user_id":"x"}"#, &id).unwrap();
        // The same values in the same order give the default identity's key.
        assert_eq!(e.key.to_string(), U1_CLICK_2024);
        assert_eq!(e.parts, ["u1", "click"]);
        // Every key field of a configured identity takes integers.
        let e = parsed(r#"{"customerId":5,"action":7,"ts":0}"#, &id).unwrap();
        assert_eq!(e.parts, ["5", "7"]);
        let r = parsed(r#"{"customerId":"u1","ts":0}"#, &id).unwrap_err();
        assert_eq!(r.class, RejectClass::MissingField);
        assert!(r.message.contains("`action`"), "{r}");
    }

    #[test]
    fn nested_fields_are_found_by_their_path() {
        let id = custom(&["order.id", "line"], "meta.at", TimeFormat::Rfc3339);
        let text = r#"{"order":{"note":[1,{"id":9}],"id":"o-1"},"line":2,"meta":{"at":"2024-01-01T00:00:00Z"}}"#;
        let e = parsed(text, &id).unwrap();
        assert_eq!(e.parts, ["o-1", "2"]);
        assert_eq!(e.key, DedupKey::compute("o-1", "2", e.time));
        let r = parsed(r#"{"order":"o-1","line":2,"meta":{"at":"2024-01-01T00:00:00Z"}}"#, &id).unwrap_err();
        assert_eq!((r.class, r.message.contains("`order.id`")), (RejectClass::MissingField, true), "{r}");
        let r = parsed(r#"{"order":{"id":1,"id":2},"line":2,"meta":{"at":"2024-01-01T00:00:00Z"}}"#, &id).unwrap_err();
        assert_eq!((r.class, r.message.contains("`order.id`")), (RejectClass::DuplicateField, true), "{r}");
        let r = parsed(r#"{"order":{"id":1},"line":2,"meta":{"at":0}}"#, &id).unwrap_err();
        assert_eq!(r.class, RejectClass::WrongType, "rfc3339 takes strings only: {r}");
        assert!(r.message.contains("`meta.at`") && r.message.contains("RFC 3339"), "{r}");
    }

    #[test]
    fn every_epoch_unit_and_spelling_gives_one_instant() {
        let at = |format: TimeFormat, ts: &str| {
            let id = custom(&["u"], "ts", format);
            let text = format!(r#"{{"u":"a","ts":{ts}}}"#);
            parsed(&text, &id).map(|e| e.time.micros()).map_err(|r| r.class)
        };
        let start = Ok(1_704_067_200_000_000);
        for (format, spellings) in [
            (TimeFormat::EpochSeconds, &["1704067200", "\"1704067200\"", "1704067200.0", "\"1704067200.000\""][..]),
            (TimeFormat::EpochMillis, &["1704067200000", "\"1704067200000\"", "1704067200000.0004"][..]),
            (TimeFormat::EpochMicros, &["1704067200000000", "\"01704067200000000\""][..]),
            (TimeFormat::EpochNanos, &["1704067200000000999", "\"1704067200000000000\""][..]),
        ] {
            for ts in spellings {
                assert_eq!(at(format, ts), start, "{format} {ts}");
            }
        }
        assert_eq!(at(TimeFormat::EpochSeconds, "\"1704067200.123456789\""), Ok(1_704_067_200_123_456));
        assert_eq!(at(TimeFormat::EpochSeconds, "1.5"), Ok(1_500_000));
        // Toward the past below zero, as the canonical form cuts digits.
        assert_eq!(at(TimeFormat::EpochMillis, "-1.5"), Ok(-1_500));
        assert_eq!(at(TimeFormat::EpochNanos, "-1"), Ok(-1));
        assert_eq!(at(TimeFormat::EpochNanos, "\"-1000.5\""), Ok(-2));
        assert_eq!(at(TimeFormat::EpochMicros, "-7"), Ok(-7));
        for bad in ["\"12a\"", "\"\"", "\"1.\"", "\".5\"", "\"1e3\"", "\"+1\""] {
            assert_eq!(at(TimeFormat::EpochMillis, bad), Err(RejectClass::InvalidTimestamp), "{bad}");
        }
        for far in ["253402300800", "\"99999999999999999999999999999\"", "-62135596801"] {
            assert_eq!(at(TimeFormat::EpochSeconds, far), Err(RejectClass::TimestampOutOfRange), "{far}");
        }
        for wrong in ["true", "null", "[1]", "{}"] {
            assert_eq!(at(TimeFormat::EpochMillis, wrong), Err(RejectClass::WrongType), "{wrong}");
        }
    }

    #[test]
    fn rejection_messages_name_the_field() {
        let r = parse(Some(br#"{"user_id":"u1","event_type":"","timestamp":0}"#), 1024).unwrap_err();
        assert!(r.message.contains("event_type"), "{r}");
        let r = parse(Some(br#"{"user_id":"u1","event_type":"e","timestamp":true}"#), 1024).unwrap_err();
        assert!(r.message.contains("timestamp") && r.message.contains("boolean"), "{r}");
    }

    #[test]
    fn evolving_keeps_the_top_level_scalars_no_column_holds() {
        let text = r#"{"user_id":"u1","event_type":"click","timestamp":0,"coupon":"X1","n":3,"ok":true,
            "price":2.5,"tags":["a"],"meta":{"a":1},"gone":null}"#;
        let off = parse(Some(text.as_bytes()), 1 << 20).unwrap();
        assert!(off.unread.is_empty(), "off: nothing kept");
        let schema = EventSchema::default().with_evolution(SchemaEvolution::AddColumns);
        let on = parse_with(Some(text.as_bytes()), 1 << 20, &schema).unwrap();
        let names: Vec<&str> = on.unread.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["coupon", "n", "ok", "price"], "lists, objects and nulls are not kept");
        assert_eq!(on.unread[3].1, serde_json::json!(2.5));
        assert_eq!(on.key, off.key, "the key does not change");
    }
}
