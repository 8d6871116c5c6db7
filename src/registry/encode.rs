//! Writing JSON lines in the wire format (`produce --format`): a schema (the built-in one
//! of the generator's events, or the user's) registered under the subject its naming
//! strategy gives, then each line encoded by it.
//!
//! A line its schema cannot hold as it is (not JSON, a key given twice, a value of
//! another type) is sent unframed, as the line itself: the processor makes it a dead
//! letter, as it would the JSON line, so a generated file's counts hold in every format.

use std::fmt;

use apache_avro::schema::Schema as AvroSchema;
use apache_avro::types::Value as AvroValue;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{RegistryClient, RegistryError, SchemaKind, wire};

/// The format `produce` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// The lines as they are.
    #[default]
    Json,
    /// Avro, in the wire format.
    Avro,
    /// Protobuf, in the wire format.
    Protobuf,
    /// JSON checked by a JSON Schema, in the wire format.
    JsonSchema,
}

impl Format {
    fn kind(self) -> Option<SchemaKind> {
        match self {
            Self::Json => None,
            Self::Avro => Some(SchemaKind::Avro),
            Self::Protobuf => Some(SchemaKind::Protobuf),
            Self::JsonSchema => Some(SchemaKind::Json),
        }
    }
}

/// The subject a schema is registered under (Confluent's subject name strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SubjectStrategy {
    /// `<topic>-value`: one schema (and its versions) per topic.
    #[default]
    Topic,
    /// The record's full name (Avro's record, Protobuf's message, a JSON Schema's
    /// `title`): one record type in many topics.
    Record,
    /// `<topic>-<record name>`: several record types in one topic.
    TopicRecord,
}

/// The built-in Avro schema of the generator's events: each field optional, the user id
/// and time a string or a number, as the generator spells them.
pub const AVRO_EVENT: &str = r#"{"type": "record", "name": "Event", "namespace": "idempipe", "fields": [
  {"name": "user_id", "type": ["null", "string", "long"], "default": null},
  {"name": "event_type", "type": ["null", "string"], "default": null},
  {"name": "timestamp", "type": ["null", "string", "long"], "default": null},
  {"name": "session_id", "type": ["null", "string"], "default": null},
  {"name": "value", "type": ["null", "long"], "default": null}
]}"#;

/// The built-in Protobuf schema of the generator's events (a field has one type: the
/// user id and time are strings, as `generate --format protobuf` spells them).
pub const PROTOBUF_EVENT: &str = r#"syntax = "proto3";
package idempipe;

message Event {
  string user_id = 1;
  string event_type = 2;
  string timestamp = 3;
  string session_id = 4;
  int64 value = 5;
}
"#;

/// The built-in JSON Schema of the generator's events.
pub const JSON_SCHEMA_EVENT: &str = r#"{
  "$schema": "http://json-schema.org/draft-07/schema#",
  "title": "idempipe.Event",
  "type": "object",
  "properties": {
    "user_id": {"type": ["string", "integer"]},
    "event_type": {"type": "string"},
    "timestamp": {"type": ["string", "integer"]},
    "session_id": {"type": "string"},
    "value": {"type": "integer"}
  }
}"#;

/// Why lines cannot be written in a format.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the {format:?} schema cannot be used: {why}")]
    Schema { format: Format, why: String },
}

/// Lines to messages of one registered schema.
pub struct Encoder {
    id: u32,
    subject: String,
    kind: Kind,
}

enum Kind {
    Avro(AvroSchema),
    Protobuf { message: MessageDescriptor, indexes: Vec<i32> },
    Json,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder").field("id", &self.id).field("subject", &self.subject).finish_non_exhaustive()
    }
}

impl Encoder {
    /// Registers `schema` (the built-in one when `None`) of `format` for `topic`'s values
    /// under the subject `strategy` gives; `message` picks a Protobuf schema's message (by
    /// full name; the first one by default).
    pub async fn register(
        client: &RegistryClient,
        format: Format,
        schema: Option<&str>,
        message: Option<&str>,
        topic: &str,
        strategy: SubjectStrategy,
    ) -> Result<Self, EncodeError> {
        let Some(kind) = format.kind() else {
            return Err(EncodeError::Schema { format, why: "plain JSON has no schema".into() });
        };
        let bad = |why: String| EncodeError::Schema { format, why };
        let text = schema.unwrap_or(match format {
            Format::Avro => AVRO_EVENT,
            Format::Protobuf => PROTOBUF_EVENT,
            _ => JSON_SCHEMA_EVENT,
        });
        let (record, encoder) = match format {
            Format::Avro => {
                let schema = AvroSchema::parse_str(text).map_err(|e| bad(e.to_string()))?;
                let name = schema.name().map(|n| n.fullname(None)).unwrap_or_default();
                (name, Kind::Avro(schema))
            }
            Format::Protobuf => {
                let pool = super::decode::compile_proto(text, &[]).map_err(bad)?;
                let file = pool.get_file_by_name("registered.proto").ok_or_else(|| bad("no file compiled".into()))?;
                let (indexes, message) = find_message(&file.messages().collect::<Vec<_>>(), message)
                    .ok_or_else(|| bad(format!("no message {}", message.unwrap_or("at all"))))?;
                (message.full_name().to_owned(), Kind::Protobuf { message, indexes })
            }
            _ => {
                let schema: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
                let title = schema.get("title").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
                (title, Kind::Json)
            }
        };
        let subject = match strategy {
            SubjectStrategy::Topic => format!("{topic}-value"),
            SubjectStrategy::Record | SubjectStrategy::TopicRecord if record.is_empty() => {
                return Err(bad("the record name strategies need a named record (a JSON Schema's `title`)".into()));
            }
            SubjectStrategy::Record => record,
            SubjectStrategy::TopicRecord => format!("{topic}-{record}"),
        };
        let id = client.register(&subject, kind, text).await?;
        Ok(Self { id, subject, kind: encoder })
    }

    /// The id the schema is registered under.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// `line` in the wire format; `None` when the schema cannot hold it as it is.
    pub fn encode(&self, line: &[u8]) -> Option<Vec<u8>> {
        match &self.kind {
            Kind::Json => {
                serde_json::from_slice::<IgnoredAny>(line).ok()?;
                Some(wire::frame(self.id, line))
            }
            Kind::Avro(schema) => {
                if has_duplicate_keys(line) {
                    return None;
                }
                let json: serde_json::Value = serde_json::from_slice(line).ok()?;
                if !json.is_object() {
                    return None;
                }
                let value = AvroValue::from(json).resolve(schema).ok()?;
                let body = apache_avro::to_avro_datum(schema, value).ok()?;
                Some(wire::frame(self.id, &body))
            }
            Kind::Protobuf { message, indexes } => {
                if has_duplicate_keys(line) {
                    return None;
                }
                let mut de = serde_json::Deserializer::from_slice(line);
                let decoded = DynamicMessage::deserialize(message.clone(), &mut de).ok()?;
                de.end().ok()?;
                let mut body = Vec::with_capacity(line.len());
                wire::write_message_indexes(&mut body, indexes);
                prost::Message::encode(&decoded, &mut body).ok()?;
                Some(wire::frame(self.id, &body))
            }
        }
    }
}

/// The message named `name` (a full name; the first top-level message when `None`) and
/// its message indexes.
fn find_message(top: &[MessageDescriptor], name: Option<&str>) -> Option<(Vec<i32>, MessageDescriptor)> {
    let Some(name) = name else {
        return top.first().map(|m| (vec![0], m.clone()));
    };
    fn search(level: &[MessageDescriptor], name: &str, path: &mut Vec<i32>) -> Option<MessageDescriptor> {
        for (i, message) in level.iter().enumerate() {
            path.push(i as i32);
            if message.full_name() == name {
                return Some(message.clone());
            }
            let children: Vec<MessageDescriptor> = message.child_messages().collect();
            if let Some(found) = search(&children, name, path) {
                return Some(found);
            }
            path.pop();
        }
        None
    }
    let mut path = Vec::new();
    search(top, name, &mut path).map(|m| (path, m))
}

/// Whether `line` is JSON with a key given twice in one object (JSON parsers disagree on
/// which copy wins, so no schema can hold it as it is). Not JSON: false.
pub fn has_duplicate_keys(line: &[u8]) -> bool {
    struct Check;
    impl<'de> de::DeserializeSeed<'de> for Check {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Check {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut twice = false;
            while let Some(key) = map.next_key::<String>()? {
                twice |= !seen.insert(key);
                twice |= map.next_value_seed(Check)?;
            }
            Ok(twice)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let mut twice = false;
            while let Some(inner) = seq.next_element_seed(Check)? {
                twice |= inner;
            }
            Ok(twice)
        }
        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_str<E>(self, _: &str) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(line);
    de::DeserializeSeed::deserialize(Check, &mut de).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Decoder, Fetched};

    fn encoder(kind: Kind) -> Encoder {
        Encoder { id: 7, subject: "t-value".into(), kind }
    }

    fn decoder(kind: SchemaKind, text: &str) -> Decoder {
        Decoder::new(&Fetched { kind, text: text.into(), references: Vec::new() }).unwrap()
    }

    /// Encoded, then decoded as the processor does: the JSON it reads.
    fn round_trip(encoder: &Encoder, decoder: &Decoder, line: &str) -> Option<serde_json::Value> {
        let message = encoder.encode(line.as_bytes())?;
        let framed = wire::Framed::parse(&message).unwrap();
        assert_eq!(framed.id, 7);
        Some(serde_json::from_str(&decoder.decode(framed.body).unwrap()).unwrap())
    }

    #[test]
    fn the_generators_lines_survive_avro_and_what_it_cannot_hold_is_sent_as_it_is() {
        let e = encoder(Kind::Avro(AvroSchema::parse_str(AVRO_EVENT).unwrap()));
        let d = decoder(SchemaKind::Avro, AVRO_EVENT);
        let line = r#"{"user_id":12,"event_type":"click","timestamp":1704067200123,"session_id":"s1","value":5}"#;
        let back = round_trip(&e, &d, line).unwrap();
        assert_eq!(back, serde_json::from_str::<serde_json::Value>(line).unwrap());
        let text = r#"{"user_id":"u1","event_type":"click","timestamp":"2024-01-01T00:00:00Z"}"#;
        assert_eq!(round_trip(&e, &d, text).unwrap()["session_id"], serde_json::Value::Null);
        for unheld in [
            r#"{"user_id":true,"event_type":"click","timestamp":0}"#,
            r#"{"user_id":"a","user_id":"b","event_type":"click","timestamp":0}"#,
            r#"{"user_id":"a","event_type":"click","timestamp":1.5}"#,
            r#"[1,2]"#,
            r#"{not json"#,
        ] {
            assert!(e.encode(unheld.as_bytes()).is_none(), "{unheld}");
        }
    }

    #[test]
    fn protobuf_and_json_schema_lines_survive_too() {
        let pool = crate::registry::decode::compile_proto(PROTOBUF_EVENT, &[]).unwrap();
        let top: Vec<MessageDescriptor> = pool.get_file_by_name("registered.proto").unwrap().messages().collect();
        let (indexes, message) = find_message(&top, Some("idempipe.Event")).unwrap();
        assert_eq!(indexes, [0]);
        let e = encoder(Kind::Protobuf { message, indexes });
        let d = decoder(SchemaKind::Protobuf, PROTOBUF_EVENT);
        let line = r#"{"user_id":"u1","event_type":"click","timestamp":"2024-01-01T00:00:00Z","value":5}"#;
        let back = round_trip(&e, &d, line).unwrap();
        assert_eq!(back["user_id"], "u1");
        assert_eq!(back["value"], 5);
        assert_eq!(back["session_id"], "", "proto3: unset is the default");
        assert!(e.encode(br#"{"user_id":1,"event_type":"click","timestamp":"x"}"#).is_none(), "a number for a string");

        let e = encoder(Kind::Json);
        let d = decoder(SchemaKind::Json, JSON_SCHEMA_EVENT);
        assert_eq!(round_trip(&e, &d, line).unwrap(), serde_json::from_str::<serde_json::Value>(line).unwrap());
        assert!(e.encode(b"{not json").is_none());
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        assert!(!has_duplicate_keys(br#"{"a":1,"b":{"a":2},"c":[{"a":1,"b":2}]}"#));
        assert!(has_duplicate_keys(br#"{"a":1,"a":2}"#));
        assert!(has_duplicate_keys(br#"{"a":{"x":1,"x":2}}"#));
        assert!(has_duplicate_keys(br#"[{"x":1,"x":2}]"#));
        assert!(!has_duplicate_keys(b"not json"));
    }
}
