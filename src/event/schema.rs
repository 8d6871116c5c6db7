//! The event schema: the identity (key fields and time) and the declared columns, each a
//! field (by path) mapped to a typed column; and what is kept of the rest of the message.
//!
//! Invariant: the table's columns follow from a schema in one order: `dedup_key`, the key
//! columns (in key order), the declared columns (in declaration order), then idempipe's
//! own; a key field declared as a column takes that column's type (a string, or an int or
//! long, whose decimal digits are the key's text).

use std::fmt;

use super::identity::{FieldPath, Identity, RESERVED_COLUMNS, Wanted, is_identifier, wanted_tree};
use super::typed::ColumnType;

/// A declared column: the field it holds, its type, and whether every event must have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    pub field: FieldPath,
    pub kind: ColumnType,
    /// A missing (or null) value is a dead letter (`missing_field`); otherwise null.
    pub required: bool,
}

/// What the `payload` column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadMode {
    /// The message text, whole (the default): nothing is lost.
    #[default]
    Message,
    /// The message's fields that no key field, time or declared column takes, as a JSON
    /// object (null when there are none).
    Rest,
    /// Nothing: the column is null.
    Drop,
}

impl PayloadMode {
    pub const NAMES: [&'static str; 3] = ["message", "rest", "drop"];

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "message" => Ok(Self::Message),
            "rest" => Ok(Self::Rest),
            "drop" => Ok(Self::Drop),
            other => Err(format!("unknown payload mode {other:?}; expected one of {}", Self::NAMES.join(", "))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Rest => "rest",
            Self::Drop => "drop",
        }
    }
}

impl fmt::Display for PayloadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What becomes of a top-level field that no column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaEvolution {
    /// It stays in `payload` (the default).
    #[default]
    Off,
    /// A field whose value is a string, a boolean or a number becomes a nullable column
    /// of the type of its first value (`string`, `boolean`, `long` for an integer,
    /// `double`), added to the table (and to ClickHouse) before the batch that holds it
    /// is written. A later value of another type is a dead letter (`wrong_type`).
    AddColumns,
}

impl SchemaEvolution {
    pub const NAMES: [&'static str; 2] = ["off", "add_columns"];

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(Self::Off),
            "add_columns" => Ok(Self::AddColumns),
            other => Err(format!("unknown schema evolution {other:?}; expected one of {}", Self::NAMES.join(", "))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::AddColumns => "add_columns",
        }
    }
}

impl fmt::Display for SchemaEvolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a key field's value may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A non-empty string (a key field declared `string`; the default's `event_type`).
    Text,
    /// A non-empty string or an integer, stored as text (a key field not declared).
    TextOrInteger,
    /// An integer within 32 bits (declared `int`).
    Int,
    /// An integer within 64 bits (declared `long`).
    Long,
}

impl KeyKind {
    /// The column type of a key field of this kind.
    pub fn column_type(self) -> ColumnType {
        match self {
            KeyKind::Text | KeyKind::TextOrInteger => ColumnType::String,
            KeyKind::Int => ColumnType::Int,
            KeyKind::Long => ColumnType::Long,
        }
    }
}

/// The whole schema of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSchema {
    identity: Identity,
    key_kinds: Vec<KeyKind>,
    columns: Vec<ColumnSpec>,
    /// The declarations of key columns (each types its key field: [`KeyKind`]).
    declared_keys: Vec<ColumnSpec>,
    payload: PayloadMode,
    evolution: SchemaEvolution,
    /// [`EventSchema::paths`] as a tree: what the parser looks for in one pass.
    wanted: Vec<Wanted>,
}

impl Default for EventSchema {
    /// The seed's: the default identity, no declared column, the message whole as payload.
    fn default() -> Self {
        Self::of(Identity::default())
    }
}

impl EventSchema {
    /// `identity` with no declared column, the message whole as payload.
    pub fn of(identity: Identity) -> Self {
        let key_kinds =
            identity.fields().iter().map(|f| if f.integers { KeyKind::TextOrInteger } else { KeyKind::Text }).collect();
        let mut this = Self {
            identity,
            key_kinds,
            columns: Vec::new(),
            declared_keys: Vec::new(),
            payload: PayloadMode::Message,
            evolution: SchemaEvolution::Off,
            wanted: Vec::new(),
        };
        this.wanted = wanted_tree(this.paths());
        this
    }

    /// `identity` with declared `columns` (a column named as a key column gives that key
    /// field its type: `string`, `int` or `long`) and a payload mode. The error names the
    /// column and what is wrong.
    pub fn new(identity: Identity, columns: Vec<ColumnSpec>, payload: PayloadMode) -> Result<Self, String> {
        let mut this = Self::of(identity);
        this.payload = payload;
        let key_columns = this.identity.key_columns();
        let mut seen: Vec<String> = key_columns.clone();
        for spec in columns {
            if !is_identifier(&spec.name) {
                return Err(format!("column {:?} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*)", spec.name));
            }
            if RESERVED_COLUMNS.contains(&spec.name.as_str()) {
                return Err(format!("column `{}` is one of idempipe's own columns", spec.name));
            }
            if let Some(i) = key_columns.iter().position(|k| *k == spec.name) {
                let key_field = &this.identity.fields()[i].path;
                if spec.field != *key_field {
                    return Err(format!(
                        "column `{}` is key field `{key_field}`'s column: it cannot hold field `{}`",
                        spec.name, spec.field
                    ));
                }
                this.key_kinds[i] = match spec.kind {
                    ColumnType::String => KeyKind::Text,
                    ColumnType::Int => KeyKind::Int,
                    ColumnType::Long => KeyKind::Long,
                    ref other => {
                        return Err(format!(
                            "column `{}` holds key field `{key_field}`: a key field is a string, an int or a long, \
                             not {other}",
                            spec.name
                        ));
                    }
                };
                this.declared_keys.push(spec);
                continue;
            }
            if seen.contains(&spec.name) {
                return Err(format!("column `{}` is declared twice", spec.name));
            }
            let mut paths = this.identity.fields().iter().map(|f| &f.path).chain(std::iter::once(this.identity.time()));
            if let Some(taken) = paths.find(|p| p.overlaps(&spec.field)) {
                return Err(format!(
                    "column `{}` would hold field `{}`, which overlaps the key or time field `{taken}`",
                    spec.name, spec.field
                ));
            }
            if let Some(other) = this.columns.iter().find(|c| c.field.overlaps(&spec.field)) {
                return Err(format!(
                    "columns `{}` and `{}` hold overlapping fields `{}` and `{}`",
                    other.name, spec.name, other.field, spec.field
                ));
            }
            seen.push(spec.name.clone());
            this.columns.push(spec);
        }
        this.wanted = wanted_tree(this.paths());
        Ok(this)
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn key_kinds(&self) -> &[KeyKind] {
        &self.key_kinds
    }

    /// The declared columns other than the key columns, in declaration order.
    pub fn columns(&self) -> &[ColumnSpec] {
        &self.columns
    }

    pub fn payload(&self) -> PayloadMode {
        self.payload
    }

    /// The same schema with `evolution`.
    pub fn with_evolution(mut self, evolution: SchemaEvolution) -> Self {
        self.evolution = evolution;
        self
    }

    pub fn evolution(&self) -> SchemaEvolution {
        self.evolution
    }

    /// The declared column that holds top-level field `name`, by index in
    /// [`EventSchema::columns`].
    pub fn column_of_field(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| matches!(c.field.names(), [only] if only == name))
    }

    /// Whether top-level field `name` may become a column of its own name: a plain
    /// identifier, and no column's name yet, in any case (Delta's column names are not
    /// case-sensitive).
    pub fn may_add_column(&self, name: &str) -> bool {
        is_identifier(name)
            && !RESERVED_COLUMNS.iter().any(|r| r.eq_ignore_ascii_case(name))
            && !self.identity.key_columns().iter().any(|k| k.eq_ignore_ascii_case(name))
            && !self.columns.iter().chain(&self.declared_keys).any(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The declarations of key columns, as given (see [`EventSchema::new`]).
    pub fn declared_keys(&self) -> &[ColumnSpec] {
        &self.declared_keys
    }

    /// What the `payload` column keeps of `message` (a valid event's text): all of it,
    /// nothing, or the rest ([`PayloadMode`]). The rest of a message that a JSON value
    /// cannot hold (a number beyond f64) is the message whole: nothing is lost.
    pub fn payload_of(&self, message: &str) -> Option<String> {
        match self.payload {
            PayloadMode::Message => Some(message.to_owned()),
            PayloadMode::Drop => None,
            PayloadMode::Rest => {
                let Ok(mut value) = serde_json::from_str::<serde_json::Value>(message) else {
                    return Some(message.to_owned());
                };
                for path in self.paths() {
                    remove(&mut value, path.names());
                }
                match value {
                    serde_json::Value::Object(rest) if rest.is_empty() => None,
                    rest => Some(rest.to_string()),
                }
            }
        }
    }

    pub(crate) fn wanted(&self) -> &[Wanted] {
        &self.wanted
    }

    /// The path of parser slot `slot`.
    pub(crate) fn path_of(&self, slot: usize) -> Option<&FieldPath> {
        self.paths().nth(slot)
    }

    /// The paths the parser looks for, by slot: the key fields, the time, then the
    /// declared columns' fields.
    pub(crate) fn paths(&self) -> impl Iterator<Item = &FieldPath> {
        self.identity
            .fields()
            .iter()
            .map(|f| &f.path)
            .chain(std::iter::once(self.identity.time()))
            .chain(self.columns.iter().map(|c| &c.field))
    }
}

/// Removes the field at `names` from `value`, and an object left empty above it.
fn remove(value: &mut serde_json::Value, names: &[String]) {
    let serde_json::Value::Object(object) = value else { return };
    match names {
        [] => {}
        [name] => {
            object.remove(name);
        }
        [first, rest @ ..] => {
            if let Some(child) = object.get_mut(first) {
                remove(child, rest);
                if child.as_object().is_some_and(serde_json::Map::is_empty) {
                    object.remove(first);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TimeFormat;

    fn spec(name: &str, field: &str, kind: &str) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            field: FieldPath::parse(field).unwrap(),
            kind: ColumnType::parse(kind).unwrap(),
            required: false,
        }
    }

    #[test]
    fn declared_key_columns_type_their_key_fields() {
        let identity = Identity::new(&["order_id", "line"], "ts", TimeFormat::EpochMillis).unwrap();
        let schema = EventSchema::new(
            identity,
            vec![spec("line", "line", "int"), spec("amount", "payment.amount", "decimal(12,2)")],
            PayloadMode::Rest,
        )
        .unwrap();
        assert_eq!(schema.key_kinds(), [KeyKind::TextOrInteger, KeyKind::Int]);
        assert_eq!(schema.columns().len(), 1);
        assert_eq!(schema.columns()[0].name, "amount");
        let paths: Vec<String> = schema.paths().map(ToString::to_string).collect();
        assert_eq!(paths, ["order_id", "line", "ts", "payment.amount"]);
        assert_eq!(EventSchema::default().key_kinds(), [KeyKind::TextOrInteger, KeyKind::Text]);
    }

    #[test]
    fn bad_declarations_are_refused_naming_the_column() {
        let refused = |columns: Vec<ColumnSpec>| {
            EventSchema::new(Identity::default(), columns, PayloadMode::Message).unwrap_err()
        };
        assert!(refused(vec![spec("a-b", "a", "int")]).contains("plain identifier"));
        assert!(refused(vec![spec("payload", "p", "string")]).contains("idempipe's own"));
        assert!(refused(vec![spec("user_id", "uid", "string")]).contains("cannot hold field `uid`"));
        assert!(refused(vec![spec("user_id", "user_id", "double")]).contains("not double"));
        assert!(refused(vec![spec("a", "a", "int"), spec("a", "b", "int")]).contains("declared twice"));
        assert!(refused(vec![spec("t", "timestamp", "timestamp")]).contains("overlaps the key or time"));
        assert!(refused(vec![spec("a", "a", "int"), spec("b", "a.b", "int")]).contains("overlapping"));
        assert_eq!(
            PayloadMode::parse("all").unwrap_err(),
            "unknown payload mode \"all\"; expected one of message, rest, drop"
        );
    }

    #[test]
    fn the_rest_of_a_message_is_what_no_column_takes() {
        let identity = Identity::new(&["order.id"], "ts", TimeFormat::EpochMillis).unwrap();
        let schema =
            EventSchema::new(identity, vec![spec("amount", "pay.amount", "double")], PayloadMode::Rest).unwrap();
        let rest = schema.payload_of(r#"{"order":{"id":1},"ts":5,"pay":{"amount":2,"currency":"EUR"},"note":"x"}"#);
        assert_eq!(rest.as_deref(), Some(r#"{"note":"x","pay":{"currency":"EUR"}}"#));
        assert_eq!(schema.payload_of(r#"{"order":{"id":1},"ts":5}"#), None);
        let kept = r#"{"order":{"id":1},"ts":5,"big":4e0347}"#;
        assert_eq!(schema.payload_of(kept).as_deref(), Some(kept), "a value serde cannot hold keeps the message");
    }
}
