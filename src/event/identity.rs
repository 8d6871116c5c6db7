//! An event's identity: which fields make its dedup key (in order) and which field is
//! its time, in which format. The default is the seed's contract: `user_id` and
//! `event_type`, and `timestamp` as RFC 3339 or integer epoch milliseconds.
//!
//! Invariants:
//! - the key is `md5(field 0x1F field … 0x1F canonical time)`, so the default identity
//!   gives the seed's keys byte for byte;
//! - a table records the definition of the identity it was created with
//!   ([`Identity::definition`], the table property [`TABLE_PROPERTY`]); two definitions
//!   never meet in one table (a table without the property was made before identities
//!   could be configured, with the default one).

use std::fmt;

/// The table property that records a table's identity ([`Identity::definition`]).
pub const TABLE_PROPERTY: &str = "idempipe.identity";

/// Names the table, the processed record and the speed layer use for their own columns
/// and fields: no key field or declared column may take one.
pub(crate) const RESERVED_COLUMNS: [&str; 11] = [
    "dedup_key",
    "event_time",
    "event_time_us",
    "event_date",
    "payload",
    "source_partition",
    "source_offset",
    "batch_id",
    "ingested_at",
    "ingested_at_us",
    "version",
];

/// The most fields a key may have.
pub(crate) const MAX_KEY_FIELDS: usize = 16;

/// A field of the event: a name, or a path of names into nested objects (`order.id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Parses `a.b.c`: names separated by dots, none empty.
    pub fn parse(text: &str) -> Result<Self, String> {
        let names: Vec<String> = text.split('.').map(str::to_owned).collect();
        if names.iter().any(String::is_empty) {
            return Err(format!("field `{text}` has an empty name (a path is names separated by single dots)"));
        }
        Ok(Self(names))
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// The column that holds the field: its names joined by `_`.
    pub fn column(&self) -> String {
        self.0.join("_")
    }

    /// Whether one of the two paths leads into the other (`a` and `a.b`): no event can
    /// hold both as values.
    pub(crate) fn overlaps(&self, other: &FieldPath) -> bool {
        let n = self.0.len().min(other.0.len());
        self.0[..n] == other.0[..n]
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// How the time field is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeFormat {
    /// The seed's: an RFC 3339 string (a space for `T`, no offset taken as UTC) or an
    /// integer of epoch milliseconds.
    #[default]
    Auto,
    /// An RFC 3339 string (as `auto`'s strings).
    Rfc3339,
    /// A number of seconds since the epoch (an integer, a fraction, or a string of one).
    EpochSeconds,
    /// Milliseconds since the epoch, as a number or a numeric string.
    EpochMillis,
    /// Microseconds since the epoch, as a number or a numeric string.
    EpochMicros,
    /// Nanoseconds since the epoch, as a number or a numeric string (cut to microseconds).
    EpochNanos,
}

impl TimeFormat {
    pub const NAMES: [&'static str; 6] = ["auto", "rfc3339", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns"];

    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "auto" => Self::Auto,
            "rfc3339" => Self::Rfc3339,
            "epoch_s" => Self::EpochSeconds,
            "epoch_ms" => Self::EpochMillis,
            "epoch_us" => Self::EpochMicros,
            "epoch_ns" => Self::EpochNanos,
            other => return Err(format!("unknown time format {other:?}; expected one of {}", Self::NAMES.join(", "))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Rfc3339 => "rfc3339",
            Self::EpochSeconds => "epoch_s",
            Self::EpochMillis => "epoch_ms",
            Self::EpochMicros => "epoch_us",
            Self::EpochNanos => "epoch_ns",
        }
    }

    /// Nanoseconds per unit of an epoch format.
    pub(crate) fn epoch_unit_nanos(self) -> Option<i128> {
        match self {
            Self::EpochSeconds => Some(1_000_000_000),
            Self::EpochMillis => Some(1_000_000),
            Self::EpochMicros => Some(1_000),
            Self::EpochNanos => Some(1),
            Self::Auto | Self::Rfc3339 => None,
        }
    }

    /// What a value of this format is, for a rejection's "expected …".
    pub(crate) fn expected(self) -> &'static str {
        match self {
            Self::Auto => "an RFC 3339 string or an integer of epoch milliseconds",
            Self::Rfc3339 => "an RFC 3339 string",
            Self::EpochSeconds => "a number of epoch seconds (or a string of one)",
            Self::EpochMillis => "a number of epoch milliseconds (or a string of one)",
            Self::EpochMicros => "a number of epoch microseconds (or a string of one)",
            Self::EpochNanos => "a number of epoch nanoseconds (or a string of one)",
        }
    }
}

impl fmt::Display for TimeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One field of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyField {
    pub path: FieldPath,
    /// Whether an integer is taken (as its decimal digits, so `7` and `"7"` are one
    /// value) besides a non-empty string.
    pub integers: bool,
}

/// Which fields make an event's key, and which is its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    fields: Vec<KeyField>,
    time: FieldPath,
    format: TimeFormat,
}

/// A name the parser looks for at one level of the message, and what lies under it: the
/// value of a slot (see [`crate::event::EventSchema`]'s paths), or names one level deeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub name: String,
    pub slot: Option<usize>,
    pub children: Vec<Wanted>,
}

impl Default for Identity {
    /// The seed's contract: `user_id` (a non-empty string or an integer), `event_type` (a
    /// non-empty string), `timestamp` (`auto`).
    fn default() -> Self {
        let field = |name: &str, integers| KeyField { path: FieldPath(vec![name.to_owned()]), integers };
        Self::build(
            vec![field("user_id", true), field("event_type", false)],
            FieldPath(vec!["timestamp".to_owned()]),
            TimeFormat::Auto,
        )
    }
}

impl Identity {
    /// The identity of the given key fields (each a non-empty string or an integer), time
    /// field and format. The key fields, `event_key`, and the time field as the error
    /// names them. The default's fields and time give [`Identity::default`] exactly.
    pub fn new(key: &[&str], time: &str, format: TimeFormat) -> Result<Self, String> {
        let seed = Self::default();
        if key.len() == seed.fields.len()
            && key.iter().zip(&seed.fields).all(|(k, f)| *k == f.path.to_string())
            && time == seed.time.to_string()
        {
            return Ok(Self { format, ..seed });
        }
        if key.is_empty() {
            return Err("the key needs at least one field".into());
        }
        if key.len() > MAX_KEY_FIELDS {
            return Err(format!("the key has {} fields; at most {MAX_KEY_FIELDS}", key.len()));
        }
        let fields = key
            .iter()
            .map(|k| FieldPath::parse(k.trim()).map(|path| KeyField { path, integers: true }))
            .collect::<Result<Vec<_>, _>>()?;
        let time = FieldPath::parse(time.trim())?;
        let mut columns: Vec<String> = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            let column = field.path.column();
            if !is_identifier(&column) {
                return Err(format!(
                    "key field `{}` would be column `{column}`, which is not a plain identifier \
                     ([A-Za-z_][A-Za-z0-9_]*)",
                    field.path
                ));
            }
            if RESERVED_COLUMNS.contains(&column.as_str()) {
                return Err(format!(
                    "key field `{}` would be column `{column}`, one of idempipe's own columns ({})",
                    field.path,
                    RESERVED_COLUMNS.join(", ")
                ));
            }
            if columns.contains(&column) {
                return Err(format!("two key fields would both be column `{column}`"));
            }
            columns.push(column);
            for other in &fields[i + 1..] {
                if field.path.overlaps(&other.path) {
                    return Err(format!("key fields `{}` and `{}` overlap", field.path, other.path));
                }
            }
            if field.path.overlaps(&time) {
                return Err(format!("key field `{}` and the time field `{time}` overlap", field.path));
            }
        }
        Ok(Self::build(fields, time, format))
    }

    fn build(fields: Vec<KeyField>, time: FieldPath, format: TimeFormat) -> Self {
        Self { fields, time, format }
    }

    pub fn fields(&self) -> &[KeyField] {
        &self.fields
    }

    pub fn time(&self) -> &FieldPath {
        &self.time
    }

    pub fn format(&self) -> TimeFormat {
        self.format
    }

    /// The columns that hold the key fields, in key order.
    pub fn key_columns(&self) -> Vec<String> {
        self.fields.iter().map(|f| f.path.column()).collect()
    }

    /// The definition a table records: what makes the key, not what values are taken.
    pub fn definition(&self) -> String {
        let key: Vec<String> = self.fields.iter().map(|f| f.path.to_string()).collect();
        serde_json::json!({ "key": key, "time": self.time.to_string(), "time_format": self.format.as_str() })
            .to_string()
    }

    /// The identity a table's recorded definition describes.
    pub fn from_definition(text: &str) -> Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Definition {
            key: Vec<String>,
            time: String,
            time_format: String,
        }
        let d: Definition =
            serde_json::from_str(text).map_err(|e| format!("the recorded identity {text:?} is not readable: {e}"))?;
        let key: Vec<&str> = d.key.iter().map(String::as_str).collect();
        Self::new(&key, &d.time, TimeFormat::parse(&d.time_format)?)
    }

    /// Whether events keyed by `self` and by `other` get the same keys.
    pub fn same_definition(&self, other: &Identity) -> bool {
        self.definition() == other.definition()
    }
}

impl fmt::Display for Identity {
    /// `md5(user_id, event_type, time) with the time from `timestamp` (auto)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key: Vec<String> = self.fields.iter().map(|f| f.path.to_string()).collect();
        write!(f, "md5({}, time) with the time from `{}` ({})", key.join(", "), self.time, self.format)
    }
}

/// `paths` as a tree of the names the parser looks for, slot `i` at the end of path `i`.
pub(crate) fn wanted_tree<'a>(paths: impl Iterator<Item = &'a FieldPath>) -> Vec<Wanted> {
    let mut wanted: Vec<Wanted> = Vec::new();
    for (slot, path) in paths.enumerate() {
        let mut level = &mut wanted;
        for (depth, name) in path.names().iter().enumerate() {
            let at = match level.iter().position(|w| &w.name == name) {
                Some(at) => at,
                None => {
                    level.push(Wanted { name: name.clone(), slot: None, children: Vec::new() });
                    level.len() - 1
                }
            };
            if depth + 1 == path.names().len() {
                level[at].slot = Some(slot);
            } else {
                level = &mut level[at].children;
            }
        }
    }
    wanted
}

/// `[A-Za-z_][A-Za-z0-9_]*`: a name Delta, ClickHouse and SQL take unquoted.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_spelled_out_is_the_default() {
        let spelled = Identity::new(&["user_id", "event_type"], "timestamp", TimeFormat::Auto).unwrap();
        assert_eq!(spelled, Identity::default());
        assert!(!spelled.fields()[1].integers, "the seed's event_type is a string");
        assert_eq!(Identity::default().key_columns(), ["user_id", "event_type"]);
        let again = Identity::from_definition(&Identity::default().definition()).unwrap();
        assert_eq!(again, Identity::default());
    }

    #[test]
    fn a_custom_identity_records_and_names_its_definition() {
        let id = Identity::new(&["order.id", "line"], "ts", TimeFormat::EpochMillis).unwrap();
        assert_eq!(id.key_columns(), ["order_id", "line"]);
        assert!(id.fields().iter().all(|f| f.integers));
        assert_eq!(id.definition(), r#"{"key":["order.id","line"],"time":"ts","time_format":"epoch_ms"}"#);
        assert_eq!(Identity::from_definition(&id.definition()).unwrap(), id);
        assert!(!id.same_definition(&Identity::default()));
        assert_eq!(id.to_string(), "md5(order.id, line, time) with the time from `ts` (epoch_ms)");
        // One tree: `order` holds `id`; `line` and `ts` at the top.
        let tree = wanted_tree(id.fields().iter().map(|f| &f.path).chain([id.time()]));
        let names: Vec<&str> = tree.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["order", "line", "ts"]);
        assert_eq!(tree[0].children[0].slot, Some(0));
        assert_eq!(tree[2].slot, Some(2));
    }

    #[test]
    fn bad_identities_are_refused_with_the_reason() {
        let refused = |key: &[&str], time: &str| Identity::new(key, time, TimeFormat::Auto).unwrap_err();
        assert!(refused(&[], "ts").contains("at least one"));
        assert!(refused(&["a..b"], "ts").contains("empty name"));
        assert!(refused(&["a-b"], "ts").contains("not a plain identifier"));
        assert!(refused(&["payload"], "ts").contains("idempipe's own columns"));
        assert!(refused(&["a.b", "a_b"], "ts").contains("both be column `a_b`"));
        assert!(refused(&["a", "a.b"], "ts").contains("overlap"));
        assert!(refused(&["ts"], "ts").contains("overlap"));
        assert!(refused(&["a"; 17], "ts").contains("at most 16"));
        assert!(TimeFormat::parse("epoch").unwrap_err().contains("epoch_ms"));
        for name in TimeFormat::NAMES {
            assert_eq!(TimeFormat::parse(name).unwrap().as_str(), name);
        }
    }
}
