//! A registered schema made a decoder, and bodies decoded into the JSON object the event
//! contract reads.
//!
//! Avro values map to JSON as Avro's JSON encoding does, with logical types made readable:
//! a union is its value, an enum its symbol, bytes and fixed their bytes as ISO-8859-1
//! text, a decimal its digits with the scale's fraction, a date `YYYY-MM-DD`, a timestamp
//! (UTC or local, any precision) the canonical RFC 3339 text (`event_time_format = auto`
//! or `rfc3339` reads it), times of day and durations their numbers. Protobuf messages map
//! by Protobuf's JSON mapping with the fields' proto names, 64-bit integers as numbers and
//! every field present (a proto3 scalar left unset is its default, as readers see it). A
//! JSON Schema body is JSON already.

use std::collections::HashMap;

use apache_avro::schema::{Name, Schema as AvroSchema};
use apache_avro::types::Value as AvroValue;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value;

use super::{Fetched, SchemaKind, wire};
use crate::event::{EventTime, RejectClass, Rejection};

/// The name under which a Protobuf schema from the registry is compiled.
const PROTO_FILE: &str = "registered.proto";

/// How the bodies of one schema id are decoded.
pub enum Decoder {
    Avro {
        schema: Box<AvroSchema>,
        /// The schemas it references.
        referenced: Vec<AvroSchema>,
        /// Every named type, by full name: what a reference (`Ref`) stands for.
        names: HashMap<Name, AvroSchema>,
    },
    Protobuf {
        /// The file's top-level messages, in order (the first message index picks one).
        messages: Vec<MessageDescriptor>,
    },
    Json,
    /// A schema the registry holds that cannot be read here: each body is refused.
    Unusable(String),
}

impl Decoder {
    /// The decoder of a fetched schema; the error says why it cannot be read.
    pub fn new(fetched: &Fetched) -> Result<Self, String> {
        match fetched.kind {
            SchemaKind::Avro => {
                let referenced: Vec<&str> = fetched.references.iter().map(|(_, text)| text.as_str()).collect();
                let (schema, referenced) = AvroSchema::parse_str_with_list(&fetched.text, referenced)
                    .map_err(|e| format!("not an Avro schema: {e}"))?;
                let mut names = HashMap::new();
                for s in std::iter::once(&schema).chain(&referenced) {
                    collect_names(s, &mut names);
                }
                Ok(Self::Avro { schema: Box::new(schema), referenced, names })
            }
            SchemaKind::Protobuf => {
                let pool = compile_proto(&fetched.text, &fetched.references)?;
                let file = pool.get_file_by_name(PROTO_FILE).ok_or("the compiled schema has no file")?;
                Ok(Self::Protobuf { messages: file.messages().collect() })
            }
            SchemaKind::Json => {
                serde_json::from_str::<Value>(&fetched.text).map_err(|e| format!("not a JSON Schema: {e}"))?;
                Ok(Self::Json)
            }
        }
    }

    /// The JSON text of `body` (the message after the wire format's header).
    pub fn decode(&self, body: &[u8]) -> Result<String, Rejection> {
        let undecodable = |why: String| Rejection::new(RejectClass::Undecodable, why);
        match self {
            Self::Avro { schema, referenced, names } => {
                let mut reader = body;
                let schema: &AvroSchema = schema;
                let schemata = std::iter::once(schema).chain(referenced).collect();
                let value = apache_avro::from_avro_datum_schemata(schema, schemata, &mut reader, None)
                    .map_err(|e| undecodable(format!("the body is not Avro of its schema: {e}")))?;
                if !reader.is_empty() {
                    return Err(undecodable(format!("{} bytes after the Avro record", reader.len())));
                }
                let json = avro_json(&value, schema, names).map_err(undecodable)?;
                Ok(json.to_string())
            }
            Self::Protobuf { messages } => {
                let (indexes, bytes) = wire::message_indexes(body).map_err(undecodable)?;
                let descriptor = message_at(messages, &indexes)
                    .ok_or_else(|| undecodable(format!("message indexes {indexes:?} name no message of the schema")))?;
                let message = DynamicMessage::decode(descriptor.clone(), bytes)
                    .map_err(|e| undecodable(format!("the body is not a Protobuf {}: {e}", descriptor.full_name())))?;
                let options = SerializeOptions::new()
                    .stringify_64_bit_integers(false)
                    .use_proto_field_name(true)
                    .skip_default_fields(false);
                let mut out = Vec::with_capacity(bytes.len() * 2);
                message
                    .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &options)
                    .map_err(|e| undecodable(format!("the message has no JSON form: {e}")))?;
                String::from_utf8(out).map_err(|e| undecodable(e.to_string()))
            }
            Self::Json => match std::str::from_utf8(body) {
                Ok(text) => Ok(text.to_owned()),
                Err(e) => Err(Rejection::new(RejectClass::NotUtf8, format!("the JSON body is not UTF-8: {e}"))),
            },
            Self::Unusable(why) => Err(undecodable(why.clone())),
        }
    }
}

/// The message at `indexes`: a top-level message, then nested ones.
fn message_at(messages: &[MessageDescriptor], indexes: &[i32]) -> Option<MessageDescriptor> {
    let (first, rest) = indexes.split_first()?;
    let mut message = messages.get(usize::try_from(*first).ok()?)?.clone();
    for index in rest {
        let child = message.child_messages().nth(usize::try_from(*index).ok()?)?;
        message = child;
    }
    Some(message)
}

/// Compiles `.proto` text (and the files it imports: its references, then Google's
/// well-known types) into descriptors.
pub(crate) fn compile_proto(text: &str, references: &[(String, String)]) -> Result<DescriptorPool, String> {
    let mut files: HashMap<String, String> = references.iter().cloned().collect();
    files.insert(PROTO_FILE.to_owned(), text.to_owned());
    let mut resolver = protox::file::ChainFileResolver::new();
    resolver.add(InMemory(files));
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.open_file(PROTO_FILE).map_err(|e| format!("not a Protobuf schema: {e}"))?;
    Ok(compiler.descriptor_pool())
}

/// `.proto` files by name.
struct InMemory(HashMap<String, String>);

impl protox::file::FileResolver for InMemory {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        match self.0.get(name) {
            Some(source) => protox::file::File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Every named type in `schema`, by full name.
fn collect_names(schema: &AvroSchema, out: &mut HashMap<Name, AvroSchema>) {
    match schema {
        AvroSchema::Record(record) => {
            out.insert(record.name.clone(), schema.clone());
            for field in &record.fields {
                collect_names(&field.schema, out);
            }
        }
        AvroSchema::Enum(e) => {
            out.insert(e.name.clone(), schema.clone());
        }
        AvroSchema::Fixed(f) => {
            out.insert(f.name.clone(), schema.clone());
        }
        AvroSchema::Array(a) => collect_names(&a.items, out),
        AvroSchema::Map(m) => collect_names(&m.types, out),
        AvroSchema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, out)),
        _ => {}
    }
}

/// The JSON form of Avro `value` of `schema` (see the module's doc).
fn avro_json(value: &AvroValue, schema: &AvroSchema, names: &HashMap<Name, AvroSchema>) -> Result<Value, String> {
    let schema = match schema {
        AvroSchema::Ref { name } => names.get(name).ok_or_else(|| format!("type {} is not defined", name.name))?,
        other => other,
    };
    let time = |micros: Option<i64>| {
        micros
            .and_then(|m| EventTime::from_micros(m).ok())
            .map(|t| Value::String(t.to_string()))
            .ok_or_else(|| "a timestamp outside the years 0001 to 9999".to_owned())
    };
    Ok(match value {
        AvroValue::Null => Value::Null,
        AvroValue::Boolean(b) => Value::Bool(*b),
        AvroValue::Date(days) => {
            EventTime::from_days(*days).map(|d| Value::String(d.date())).map_err(|_| "a date outside 0001 to 9999")?
        }
        AvroValue::Int(i) | AvroValue::TimeMillis(i) => Value::from(*i),
        AvroValue::Long(l) | AvroValue::TimeMicros(l) => Value::from(*l),
        AvroValue::Float(f) => number(f64::from(*f))?,
        AvroValue::Double(d) => number(*d)?,
        AvroValue::Bytes(bytes) | AvroValue::Fixed(_, bytes) => {
            Value::String(bytes.iter().map(|&b| b as char).collect())
        }
        AvroValue::String(s) | AvroValue::Enum(_, s) => Value::String(s.clone()),
        AvroValue::Uuid(u) => Value::String(u.to_string()),
        AvroValue::Union(index, inner) => {
            let AvroSchema::Union(union) = schema else { return Err("a union value of a schema that is none".into()) };
            let variant = union.variants().get(*index as usize).ok_or("a union index past its variants")?;
            avro_json(inner, variant, names)?
        }
        AvroValue::Array(items) => {
            let AvroSchema::Array(array) = schema else { return Err("an array value of a schema that is none".into()) };
            Value::Array(items.iter().map(|v| avro_json(v, &array.items, names)).collect::<Result<_, _>>()?)
        }
        AvroValue::Map(entries) => {
            let AvroSchema::Map(map) = schema else { return Err("a map value of a schema that is none".into()) };
            let mut object = serde_json::Map::new();
            for (key, v) in entries {
                object.insert(key.clone(), avro_json(v, &map.types, names)?);
            }
            Value::Object(object)
        }
        AvroValue::Record(fields) => {
            let AvroSchema::Record(record) = schema else {
                return Err("a record value of a schema that is none".into());
            };
            let mut object = serde_json::Map::new();
            for ((name, v), field) in fields.iter().zip(&record.fields) {
                object.insert(name.clone(), avro_json(v, &field.schema, names)?);
            }
            Value::Object(object)
        }
        AvroValue::Decimal(decimal) => {
            let AvroSchema::Decimal(d) = schema else { return Err("a decimal value of a schema that is none".into()) };
            let bytes = Vec::<u8>::try_from(decimal).map_err(|e| format!("a decimal: {e}"))?;
            Value::String(decimal_text(&bytes, d.scale)?)
        }
        AvroValue::BigDecimal(big) => Value::String(big.to_string()),
        AvroValue::TimestampMillis(ms) | AvroValue::LocalTimestampMillis(ms) => time(ms.checked_mul(1_000))?,
        AvroValue::TimestampMicros(us) | AvroValue::LocalTimestampMicros(us) => time(Some(*us))?,
        AvroValue::TimestampNanos(ns) | AvroValue::LocalTimestampNanos(ns) => time(Some(ns.div_euclid(1_000)))?,
        AvroValue::Duration(d) => serde_json::json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
    })
}

fn number(f: f64) -> Result<Value, String> {
    serde_json::Number::from_f64(f).map(Value::Number).ok_or_else(|| format!("{f} has no JSON form"))
}

/// The text of a decimal: its unscaled value (big-endian two's complement) with `scale`
/// fraction digits.
fn decimal_text(bytes: &[u8], scale: usize) -> Result<String, String> {
    if bytes.len() > 16 {
        return Err(format!("a decimal of {} bytes, more than 38 digits", bytes.len()));
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut padded = [if negative { 0xff } else { 0 }; 16];
    padded[16 - bytes.len()..].copy_from_slice(bytes);
    let unscaled = i128::from_be_bytes(padded);
    let digits = unscaled.unsigned_abs().to_string();
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return Ok(format!("{sign}{digits}"));
    }
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    Ok(format!("{sign}{whole}.{fraction}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_read_with_their_scale() {
        assert_eq!(decimal_text(&[0x04, 0xd2], 2).unwrap(), "12.34");
        assert_eq!(decimal_text(&[0xfb, 0x2e], 2).unwrap(), "-12.34");
        assert_eq!(decimal_text(&[0x05], 3).unwrap(), "0.005");
        assert_eq!(decimal_text(&[0x7b], 0).unwrap(), "123");
    }

    #[test]
    fn avro_records_read_as_the_json_the_contract_reads() {
        let schema = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
            {"name":"user_id","type":["null","string","long"]},
            {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"day","type":{"type":"int","logicalType":"date"}},
            {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}},
            {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["A","B"]}},
            {"name":"lines","type":{"type":"array","items":{"type":"record","name":"Line","fields":[{"name":"n","type":"int"}]}}},
            {"name":"again","type":["null","Line"]}]}"#;
        let fetched = Fetched { kind: SchemaKind::Avro, text: schema.into(), references: Vec::new() };
        let decoder = Decoder::new(&fetched).unwrap();
        let Decoder::Avro { schema, .. } = &decoder else { panic!() };
        let value = AvroValue::Record(vec![
            ("user_id".into(), AvroValue::Union(2, Box::new(AvroValue::Long(42)))),
            ("at".into(), AvroValue::TimestampMillis(1_704_067_200_123)),
            ("day".into(), AvroValue::Date(19_723)),
            ("amount".into(), AvroValue::Decimal(apache_avro::Decimal::from(vec![0x04, 0xd2]))),
            ("kind".into(), AvroValue::Enum(1, "B".into())),
            ("lines".into(), AvroValue::Array(vec![AvroValue::Record(vec![("n".into(), AvroValue::Int(3))])])),
            ("again".into(), AvroValue::Union(1, Box::new(AvroValue::Record(vec![("n".into(), AvroValue::Int(4))])))),
        ]);
        let body = apache_avro::to_avro_datum(schema, value).unwrap();
        let json: Value = serde_json::from_str(&decoder.decode(&body).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"user_id": 42, "at": "2024-01-01T00:00:00.123000Z", "day": "2024-01-01",
                "amount": "12.34", "kind": "B", "lines": [{"n": 3}], "again": {"n": 4}})
        );
        assert_eq!(decoder.decode(&body[..body.len() - 1]).unwrap_err().class, RejectClass::Undecodable);
    }

    #[test]
    fn protobuf_messages_read_by_their_indexes() {
        let proto = r#"syntax = "proto3";
            package shop;
            import "google/protobuf/timestamp.proto";
            message Other { string x = 1; }
            message Order {
              string user_id = 1;
              int64 value = 2;
              google.protobuf.Timestamp at = 3;
              message Line { int32 n = 1; }
              repeated Line lines = 4;
            }"#;
        let fetched = Fetched { kind: SchemaKind::Protobuf, text: proto.into(), references: Vec::new() };
        let decoder = Decoder::new(&fetched).unwrap();
        let Decoder::Protobuf { messages } = &decoder else { panic!() };
        let order = messages[1].clone();
        let json = serde_json::json!({"user_id": "u1", "value": "9007199254740993", "at": "2024-01-01T00:00:00.5Z",
            "lines": [{"n": 1}]});
        let message = DynamicMessage::deserialize(order, json).unwrap();
        let mut body = Vec::new();
        wire::write_message_indexes(&mut body, &[1]);
        body.extend(prost::Message::encode_to_vec(&message));
        let decoded: Value = serde_json::from_str(&decoder.decode(&body).unwrap()).unwrap();
        assert_eq!(decoded["user_id"], "u1");
        assert_eq!(decoded["value"], serde_json::json!(9_007_199_254_740_993_i64), "a number, exact");
        assert_eq!(decoded["at"], "2024-01-01T00:00:00.500Z");
        assert_eq!(decoded["lines"], serde_json::json!([{"n": 1}]));
        let line =
            DynamicMessage::deserialize(messages[1].child_messages().next().unwrap(), serde_json::json!({"n": 7}))
                .unwrap();
        let mut nested = Vec::new();
        wire::write_message_indexes(&mut nested, &[1, 0]);
        nested.extend(prost::Message::encode_to_vec(&line));
        assert_eq!(decoder.decode(&nested).unwrap(), r#"{"n":7}"#, "the nested message Order.Line");
        let mut missing = Vec::new();
        wire::write_message_indexes(&mut missing, &[5]);
        assert_eq!(decoder.decode(&missing).unwrap_err().class, RejectClass::Undecodable);
    }
}
