//! Why a message was refused: the stable classes carried by the dead-letter topic.
//!
//! Invariant: every class string is stable (operators alert and filter on them); a new
//! kind of refusal gets a new class rather than changing the meaning of an old one.

use std::fmt;

/// A stable, machine-readable reason for refusing a message, sent as the `error.class`
/// header of its dead-letter record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectClass {
    /// The message has no value at all (a Kafka tombstone).
    NullValue,
    /// The value is larger than the configured limit.
    TooLarge,
    /// The value is not valid UTF-8.
    NotUtf8,
    /// The value is not JSON (syntax error, empty, trailing text, nesting too deep).
    InvalidJson,
    /// Arrays and objects are nested deeper than [`crate::event::MAX_DEPTH`].
    TooDeep,
    /// The value is JSON but not an object.
    NotObject,
    /// A required field appears twice in the object.
    DuplicateField,
    /// A required field is absent.
    MissingField,
    /// A required field is present but null or of a type the contract does not allow.
    WrongType,
    /// A required string field is empty.
    EmptyField,
    /// The timestamp does not have an accepted shape or names an impossible time.
    InvalidTimestamp,
    /// The timestamp is well formed but outside the years 0001 to 9999.
    TimestampOutOfRange,
    /// Not a raw event: a record of the processed topic that the ClickHouse sink cannot
    /// read (something other than idempipe wrote to that topic).
    UnreadableProcessedRecord,
    /// A stored event ClickHouse refused on its own (alone in an insert, more than once),
    /// with the server's message: it is in Delta and the processed topic, not in the
    /// speed layer. Its source is the processed topic.
    ClickHouseRefused,
    /// The event time lies outside the accepted window (`max_event_age`,
    /// `max_event_future`).
    EventTimeOutOfWindow,
    /// A declared column's value has the right type but does not fit it (an integer
    /// past 32 or 64 bits, a decimal with too many digits, a date outside 0001 to 9999).
    ValueOutOfRange,
    /// With `message_format = "schema-registry"`: the message is not in the Confluent
    /// wire format (no magic byte 0, or shorter than its 5-byte header).
    NotWireFormat,
    /// The message's schema id is not in the schema registry.
    UnknownSchema,
    /// The body does not decode by its schema (or its schema cannot be read).
    Undecodable,
}

impl RejectClass {
    /// The header value, in snake case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NullValue => "null_value",
            Self::TooLarge => "too_large",
            Self::NotUtf8 => "not_utf8",
            Self::InvalidJson => "invalid_json",
            Self::TooDeep => "too_deep",
            Self::NotObject => "not_object",
            Self::DuplicateField => "duplicate_field",
            Self::MissingField => "missing_field",
            Self::WrongType => "wrong_type",
            Self::EmptyField => "empty_field",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::TimestampOutOfRange => "timestamp_out_of_range",
            Self::UnreadableProcessedRecord => "unreadable_processed_record",
            Self::ClickHouseRefused => "clickhouse_refused",
            Self::EventTimeOutOfWindow => "event_time_out_of_window",
            Self::ValueOutOfRange => "value_out_of_range",
            Self::NotWireFormat => "not_wire_format",
            Self::UnknownSchema => "unknown_schema",
            Self::Undecodable => "undecodable",
        }
    }
}

impl fmt::Display for RejectClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused message's class and a human-readable message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The stable class, for machines.
    pub class: RejectClass,
    /// What was wrong, for people: names the field and the rule.
    pub message: String,
}

impl Rejection {
    pub(crate) fn new(class: RejectClass, message: impl Into<String>) -> Self {
        Self { class, message: message.into() }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

impl std::error::Error for Rejection {}

/// The most characters of an input that a message quotes.
const QUOTED_CHARS: usize = 64;

/// `text` as a message quotes it: Debug-escaped, at most [`QUOTED_CHARS`] characters, and
/// when longer, its length in bytes after an ellipsis. A rejection travels in a Kafka
/// header, and a whole 400 KB field escaped to three times its size would make a dead
/// letter no broker takes; the whole input is in the record's value anyway.
pub(crate) fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_input_is_quoted_by_a_short_prefix_and_its_length() {
        assert_eq!(quoted("2024-13-01"), "\"2024-13-01\"");
        let long = "\u{80}".repeat(200_000);
        let q = quoted(&long);
        // At most ten bytes an escaped character (`\u{10ffff}`), and the length.
        assert!(q.len() <= 10 * QUOTED_CHARS + 32, "{} bytes", q.len());
        assert!(q.ends_with("… (400000 bytes)"), "{q}");
        let exact = "x".repeat(QUOTED_CHARS);
        assert_eq!(quoted(&exact), format!("{exact:?}"));
    }
}
