//! The event contract: from a Kafka message's bytes to a validated [`Event`] with its
//! canonical time and dedup key, or a [`Rejection`] that says why not.
//!
//! Invariant: [`parse`] is total (it never panics and never loses a message: every input
//! is either an `Event` or a `Rejection`), and it is pure, so the same bytes always give
//! the same answer on every instance and after every restart.

mod key;
mod reject;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

pub use key::{DedupKey, EventTime, TimeError};
pub use reject::{RejectClass, Rejection};

/// Messages larger than this are refused unless configured otherwise: 1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The deepest nesting of arrays and objects accepted. serde_json skips ignored values
/// without a depth limit, and a 100,000-deep payload would be stored and then break
/// readers downstream, so the limit is checked here.
pub const MAX_DEPTH: usize = 64;

/// A message that passed the contract. Borrows from the message bytes where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// `md5(user_id 0x1F event_type 0x1F canonical time)`.
    pub key: DedupKey,
    /// The user, as text: an integer id is taken as its decimal digits.
    pub user_id: Cow<'a, str>,
    /// The event type, as sent.
    pub event_type: Cow<'a, str>,
    /// The event's instant, in UTC with microsecond precision.
    pub time: EventTime,
    /// The original message text, kept whole so that no field is lost.
    pub payload: &'a str,
}

/// Validates one message value against the contract and computes its key.
///
/// `value` is `None` for a Kafka message without a value (a tombstone).
pub fn parse(value: Option<&[u8]>, max_bytes: usize) -> Result<Event<'_>, Rejection> {
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
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = de.deserialize_map(FieldsVisitor).map_err(|e| invalid_json(&e))?;
    de.end().map_err(|e| invalid_json(&e))?;

    if let Some(name) = fields.duplicate {
        return Err(Rejection::new(RejectClass::DuplicateField, format!("field `{name}` appears more than once")));
    }
    let user_id = match required("user_id", fields.user_id)? {
        Scalar::Str(s) => non_empty("user_id", s)?,
        Scalar::Int(n) => Cow::Owned(n.to_string()),
        Scalar::UInt(n) => Cow::Owned(n.to_string()),
        other => {
            return Err(wrong_type("user_id", &other, "a non-empty string or an integer"));
        }
    };
    let event_type = match required("event_type", fields.event_type)? {
        Scalar::Str(s) => non_empty("event_type", s)?,
        other => return Err(wrong_type("event_type", &other, "a non-empty string")),
    };
    let time = match required("timestamp", fields.timestamp)? {
        Scalar::Str(s) => EventTime::parse(&s),
        Scalar::Int(millis) => EventTime::from_epoch_millis(millis),
        Scalar::UInt(millis) => {
            Err(TimeError::OutOfRange(format!("{millis} epoch milliseconds is outside the years 0001 to 9999")))
        }
        // An integer too large for 64 bits arrives as a float with no fraction.
        Scalar::Float(f) if f.fract() == 0.0 && f.abs() >= 9.2e18 => {
            Err(TimeError::OutOfRange(format!("{f} epoch milliseconds is outside the years 0001 to 9999")))
        }
        other => {
            return Err(wrong_type("timestamp", &other, "an RFC 3339 string or an integer of epoch milliseconds"));
        }
    }
    .map_err(|e| match e {
        TimeError::Malformed(m) => Rejection::new(RejectClass::InvalidTimestamp, m),
        TimeError::OutOfRange(m) => Rejection::new(RejectClass::TimestampOutOfRange, m),
    })?;

    let key = DedupKey::compute(&user_id, &event_type, time);
    Ok(Event { key, user_id, event_type, time, payload: text })
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

fn required<'a>(name: &str, value: Option<Scalar<'a>>) -> Result<Scalar<'a>, Rejection> {
    value.ok_or_else(|| Rejection::new(RejectClass::MissingField, format!("required field `{name}` is missing")))
}

fn non_empty<'a>(name: &str, s: Cow<'a, str>) -> Result<Cow<'a, str>, Rejection> {
    if s.is_empty() {
        Err(Rejection::new(RejectClass::EmptyField, format!("field `{name}` is an empty string")))
    } else {
        Ok(s)
    }
}

fn wrong_type(name: &str, found: &Scalar<'_>, expected: &str) -> Rejection {
    Rejection::new(RejectClass::WrongType, format!("field `{name}` is {found}; expected {expected}"))
}

/// The three fields the contract reads; every other field is skipped unread.
#[derive(Default)]
struct Fields<'a> {
    user_id: Option<Scalar<'a>>,
    event_type: Option<Scalar<'a>>,
    timestamp: Option<Scalar<'a>>,
    /// The first required field seen twice: JSON parsers disagree on which copy wins,
    /// so such a message has no single meaning and is refused.
    duplicate: Option<&'static str>,
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(name) = map.next_key::<Scalar<'de>>()? {
            let (slot, name) = match &name {
                Scalar::Str(s) if s == "user_id" => (&mut fields.user_id, "user_id"),
                Scalar::Str(s) if s == "event_type" => (&mut fields.event_type, "event_type"),
                Scalar::Str(s) if s == "timestamp" => (&mut fields.timestamp, "timestamp"),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = map.next_value::<Scalar<'de>>()?;
            if slot.is_some() {
                fields.duplicate.get_or_insert(name);
            }
            *slot = Some(value);
        }
        Ok(fields)
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
        assert_eq!(event.user_id, "u1");
        assert_eq!(event.event_type, "click");
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

    #[test]
    fn rejection_messages_name_the_field() {
        let r = parse(Some(br#"{"user_id":"u1","event_type":"","timestamp":0}"#), 1024).unwrap_err();
        assert!(r.message.contains("event_type"), "{r}");
        let r = parse(Some(br#"{"user_id":"u1","event_type":"e","timestamp":true}"#), 1024).unwrap_err();
        assert!(r.message.contains("timestamp") && r.message.contains("boolean"), "{r}");
    }
}
