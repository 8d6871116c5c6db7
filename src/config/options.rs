//! Every layered option, declared once ([`OPTIONS`] below): its key, type, environment
//! variable, default, meaning and check. From that one declaration come the flags
//! ([`OptionArgs`]), the config file's keys ([`FileOptions`]), the resolved values with
//! where each came from ([`Options`]), what `config show` prints
//! ([`Options::entries`]), and the list the docs are tested against ([`OPTIONS`]).
//!
//! Invariant: every value of an [`Options`] parsed and passed its option's check; a bad
//! one fails [`Options::resolve`] (or, in the file, [`FileOptions`]'s parse) with an error
//! that names its key.
//!
//! Adding an option: one entry in the `options!` call below, then use it where
//! [`crate::config::Settings`] is built.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ClickHouseIngest, ConfigError, ConsumerMode, KeyCheck, LogFormat, MessageFormat, Origin};
use crate::event::{FieldPath, Identity, PayloadMode, SchemaEvolution, TimeFormat};
use crate::table::Location;

/// One option as the docs describe it.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    /// The file key; the flag is `--` and this with `-` for `_`.
    pub name: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The default, as the file would spell it, or how it is derived (`<group>-clickhouse`).
    pub default: &'static str,
    /// What it means, one line per element.
    pub doc: &'static [&'static str],
}

impl OptionSpec {
    /// `--name-with-dashes`.
    pub fn flag(&self) -> String {
        format!("--{}", self.name.replace('_', "-"))
    }
}

/// A value an option can hold: parsed from the text of a flag, an environment variable or
/// a file value, and shown as the file would spell it.
pub trait OptionValue: Sized + Clone {
    fn parse(text: &str) -> Result<Self, String>;
    fn show(&self) -> String;
    /// Whether a value is set at all (an optional one may be unset).
    fn is_set(&self) -> bool {
        true
    }
}

/// The help line of an option: its doc and its default.
fn help(doc: &[&str], default: &str) -> String {
    let text: Vec<&str> = doc.iter().map(|l| l.trim()).collect();
    format!("{} [default: {default}]", text.join(" "))
}

/// An option's declared default, parsed (a test proves every default parses).
fn default_of<T: OptionValue>(key: &'static str, text: &str) -> Result<T, ConfigError> {
    T::parse(text).map_err(|reason| ConfigError::Invalid { key, reason: format!("(the default) {reason}") })
}

/// A file value of any TOML scalar, parsed as the option `key`'s type.
fn file_value<T: OptionValue>(key: &str, value: toml::Value) -> Result<T, String> {
    let text = match value {
        toml::Value::String(s) => s,
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => return Err(format!("invalid value for `{key}`: {other} is not a single value")),
    };
    T::parse(&text).map_err(|reason| format!("invalid value for `{key}`: {reason}"))
}

macro_rules! options {
    ($(
        $(#[doc = $doc:literal])+
        $(#[arg($($arg:tt)*)])?
        $name:ident: $ty:ty = $default:literal $(=> $derived:expr)?, env $env:literal $(, check $check:path)?;
    )+) => {
        /// The options as flags and environment variables: the text given, parsed (and
        /// named in errors) by [`Options::resolve`]. `None`: neither given, so the file
        /// or the default decides.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct OptionArgs {
            $(
                #[arg(long, global = true, env = $env, help = help(&[$($doc),+], $default) $(, $($arg)*)?)]
                pub $name: Option<String>,
            )+
        }

        /// The config file's keys (the long flags in snake case) and its `[kafka]` table,
        /// each value parsed as its option's type. Unknown keys are an error, so a typo
        /// never silently falls back to a default.
        #[derive(Debug, Default)]
        pub struct FileOptions {
            $(
                pub $name: Option<$ty>,
            )+
            /// librdkafka settings passed through to every Kafka client, e.g.
            /// `"max.poll.interval.ms" = "10000"` or SASL and TLS settings.
            pub kafka: BTreeMap<String, String>,
            /// Object-store options for the table, with object_store's and delta-rs's
            /// names, e.g. `aws_endpoint_url` or `aws_allow_http`.
            pub storage: BTreeMap<String, String>,
            /// Declared columns, by name: a type (`"decimal(12,2)"`) or a table with
            /// `type`, `field` (the event field's path; the name by default) and
            /// `required` ([`crate::config::column_specs`]).
            pub columns: BTreeMap<String, toml::Value>,
        }

        impl<'de> serde::Deserialize<'de> for FileOptions {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                use serde::de::Error as _;
                let table = BTreeMap::<String, toml::Value>::deserialize(d)?;
                let mut file = FileOptions::default();
                for (key, value) in table {
                    match key.as_str() {
                        "kafka" => {
                            file.kafka = value.try_into().map_err(|e| {
                                D::Error::custom(format!("`[kafka]` must be a table of strings: {e}"))
                            })?;
                        }
                        "columns" => {
                            file.columns = value.try_into().map_err(|e| {
                                D::Error::custom(format!("`[columns]` must be a table of column declarations: {e}"))
                            })?;
                        }
                        "storage" => {
                            file.storage = value.try_into().map_err(|e| {
                                D::Error::custom(format!("`[storage]` must be a table of strings: {e}"))
                            })?;
                        }
                        $(
                            stringify!($name) => {
                                file.$name = Some(file_value(&key, value).map_err(D::Error::custom)?);
                            }
                        )+
                        other => {
                            return Err(D::Error::custom(format!(
                                "unknown key `{other}` (the keys are the options' names: see `idempipe config show`)"
                            )));
                        }
                    }
                }
                Ok(file)
            }
        }

        /// The resolved options: defaults, then the file, then the environment, then
        /// flags. Its `Debug` shows [`Options::entries`], secrets redacted.
        #[derive(Clone)]
        pub struct Options {
            $(
                $(#[doc = $doc])+
                pub $name: $ty,
            )+
            /// Where each value came from.
            pub origins: BTreeMap<&'static str, Origin>,
        }

        impl Options {
            /// Layers the default, `file`, and `args` (flags and environment variables,
            /// which clap merged; `from_env` names those that came from the environment),
            /// parsing and checking each value.
            pub fn resolve(
                file: FileOptions,
                args: &OptionArgs,
                from_env: &BTreeSet<String>,
            ) -> Result<Self, ConfigError> {
                let mut origins = BTreeMap::new();
                $(
                    let key = stringify!($name);
                    let (given, origin): (Option<$ty>, Origin) = match (&args.$name, file.$name) {
                        (Some(text), _) => (
                            Some(<$ty as OptionValue>::parse(text).map_err(|reason| ConfigError::Invalid { key, reason })?),
                            if from_env.contains(key) { Origin::Env } else { Origin::Flag },
                        ),
                        (None, Some(value)) => (Some(value), Origin::File),
                        (None, None) => (None, Origin::Default),
                    };
                    origins.insert(key, origin);
                    let $name: $ty = match given {
                        Some(value) => value,
                        None => options!(@default $ty, key, $default $(, $derived)?),
                    };
                    $(
                        $check(&$name).map_err(|reason| ConfigError::Invalid { key, reason })?;
                    )?
                )+
                Ok(Self { $($name,)+ origins })
            }

            /// Every option as `(key, value, origin)`, in declaration order, secrets
            /// redacted.
            pub fn entries(&self) -> Vec<(String, String, Origin)> {
                vec![$(
                    (
                        stringify!($name).to_owned(),
                        if is_secret(stringify!($name)) && OptionValue::is_set(&self.$name) {
                            REDACTED.to_owned()
                        } else {
                            redact_url(&OptionValue::show(&self.$name))
                        },
                        self.origins.get(stringify!($name)).copied().unwrap_or(Origin::Default),
                    ),
                )+]
            }
        }

        impl std::fmt::Debug for Options {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_map().entries(self.entries().into_iter().map(|(k, v, _)| (k, v))).finish()
            }
        }

        /// Every option, in declaration order.
        pub const OPTIONS: &[OptionSpec] = &[$(
            OptionSpec { name: stringify!($name), env: $env, default: $default, doc: &[$($doc),+] },
        )+];
    };
    (@default $ty:ty, $key:expr, $default:literal, $derived:expr) => { $derived };
    (@default $ty:ty, $key:expr, $default:literal) => { default_of::<$ty>($key, $default)? };
}

options! {
    /// Kafka bootstrap servers.
    brokers: String = "127.0.0.1:9092", env "IDEMPIPE_BROKERS", check not_empty;
    /// Topic the events arrive on.
    raw_topic: String = "raw_events", env "IDEMPIPE_RAW_TOPIC", check topic_name;
    /// Topic newly stored events are sent to.
    processed_topic: String = "processed_events", env "IDEMPIPE_PROCESSED_TOPIC", check topic_name;
    /// Dead-letter topic for refused messages.
    dlq_topic: String = "raw_events_dlq", env "IDEMPIPE_DLQ_TOPIC", check topic_name;
    /// Consumer group of the processor; also the prefix of the Delta txn app ids.
    group: String = "idempipe", env "IDEMPIPE_GROUP", check not_empty;
    /// The Delta table: a local path, or a URL on an object store (`s3://bucket/path`,
    /// `s3a://`, `gs://`, `az://`, `abfss://`; reached with the `[storage]` options and
    /// the store's usual environment variables).
    delta_path: String = "./data/delta/events", env "IDEMPIPE_DELTA_PATH", check table_location;
    /// The batch log: one JSON line per committed batch, on local disk.
    batch_log: PathBuf = "<delta_path>.batches.jsonl, or data/<bucket>_<path>.batches.jsonl for a remote table"
        => Location::parse(&delta_path).map(|l| l.local_sibling(".batches.jsonl")).unwrap_or_default(),
        env "IDEMPIPE_BATCH_LOG", check not_empty_path;
    /// ClickHouse HTTP endpoint: `http://`, or `https://` (certificates verified against
    /// the system's roots and `clickhouse_ca_file`).
    clickhouse_url: String = "http://127.0.0.1:8123", env "IDEMPIPE_CLICKHOUSE_URL", check http_url;
    /// A PEM file of CA certificates that sign ClickHouse's (a private CA), trusted
    /// besides the system's roots for an `https://` URL.
    clickhouse_ca_file: Option<PathBuf> = "none" => None, env "IDEMPIPE_CLICKHOUSE_CA_FILE";
    /// ClickHouse database.
    clickhouse_database: String = "idempipe", env "IDEMPIPE_CLICKHOUSE_DATABASE", check identifier;
    /// ClickHouse events table.
    clickhouse_table: String = "events", env "IDEMPIPE_CLICKHOUSE_TABLE", check identifier;
    /// ClickHouse user.
    clickhouse_user: Option<String> = "server default" => None, env "IDEMPIPE_CLICKHOUSE_USER";
    /// ClickHouse password (prefer the environment variable to the flag).
    #[arg(hide_env_values = true)]
    clickhouse_password: Option<String> = "none" => None, env "IDEMPIPE_CLICKHOUSE_PASSWORD";
    /// How events reach ClickHouse: `sink` (the ClickHouse sink) or `kafka-engine`
    /// (ClickHouse consumes the processed topic; created by `setup`).
    clickhouse_ingest: ClickHouseIngest = "sink", env "IDEMPIPE_CLICKHOUSE_INGEST";
    /// Consumer group of the ClickHouse sink.
    clickhouse_group: String = "<group>-clickhouse" => format!("{group}-clickhouse"),
        env "IDEMPIPE_CLICKHOUSE_GROUP", check not_empty;
    /// Also run the ClickHouse sink inside `run`.
    #[arg(num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    clickhouse_in_run: bool = "false", env "IDEMPIPE_CLICKHOUSE_IN_RUN";
    /// How long the ClickHouse sink collects before an insert, e.g. 1s (at least 10ms).
    clickhouse_trigger: Duration = "1s", env "IDEMPIPE_CLICKHOUSE_TRIGGER", check at_least_10ms;
    /// Most rows in one ClickHouse insert.
    clickhouse_max_batch_rows: NonZeroUsize = "100000", env "IDEMPIPE_CLICKHOUSE_MAX_BATCH_ROWS";
    /// Most record bytes in one ClickHouse batch.
    clickhouse_max_batch_bytes: NonZeroUsize = "67108864", env "IDEMPIPE_CLICKHOUSE_MAX_BATCH_BYTES";
    /// Kafka brokers as ClickHouse's Kafka engine reaches them.
    clickhouse_kafka_brokers: String = "<brokers>" => brokers.clone(),
        env "IDEMPIPE_CLICKHOUSE_KAFKA_BROKERS", check not_empty;
    /// Partitions of the raw and processed topics created by `setup`.
    partitions: i32 = "4", env "IDEMPIPE_PARTITIONS", check partition_count;
    /// Replication factor of the topics `setup` creates: a number, or `default` (the
    /// broker's `default.replication.factor`).
    replication_factor: ReplicationFactor = "default", env "IDEMPIPE_REPLICATION_FACTOR";
    /// Largest accepted message; larger ones go to the dead-letter topic.
    max_message_bytes: NonZeroUsize = "1048576", env "IDEMPIPE_MAX_MESSAGE_BYTES";
    /// The fields whose values, with the event time, make an event's dedup key, in order,
    /// separated by commas; a nested field as its path (`order.id`). Each is a column of
    /// the table (a path's names joined by `_`). A table keeps the key it was created
    /// with: a processor that defines it otherwise is refused at start.
    event_key: String = "user_id,event_type", env "IDEMPIPE_EVENT_KEY", check key_field_list;
    /// The field that holds the event time (a path for a nested one).
    event_time: String = "timestamp", env "IDEMPIPE_EVENT_TIME", check field_path;
    /// How the event time is written: `auto` (an RFC 3339 string or integer epoch
    /// milliseconds), `rfc3339`, or a number (or numeric string) of `epoch_s`,
    /// `epoch_ms`, `epoch_us` or `epoch_ns`.
    event_time_format: TimeFormat = "auto", env "IDEMPIPE_EVENT_TIME_FORMAT";
    /// What the `payload` column keeps of a message: `message` (all of it), `rest` (the
    /// fields no key, time or declared column takes, as a JSON object) or `drop`.
    payload: PayloadMode = "message", env "IDEMPIPE_PAYLOAD";
    /// What becomes of a top-level field no column holds: `off` (it stays in `payload`)
    /// or `add_columns` (a string, boolean or number field becomes a nullable column of
    /// the type of its first value, in Delta and ClickHouse, while running; a later value
    /// of another type is a dead letter).
    schema_evolution: SchemaEvolution = "off", env "IDEMPIPE_SCHEMA_EVOLUTION";
    /// How raw messages are written: `json` (a JSON object per message) or
    /// `schema-registry` (the Confluent wire format: Avro, Protobuf or JSON Schema, the
    /// schema fetched by the id each message carries from `schema_registry_url`).
    message_format: MessageFormat = "json", env "IDEMPIPE_MESSAGE_FORMAT";
    /// The schema registry's Confluent-compatible API, e.g. `http://registry:8081` or
    /// Apicurio's `http://registry:8080/apis/ccompat/v7` (`https://`: certificates
    /// verified against the system's roots and `schema_registry_ca_file`).
    schema_registry_url: Option<String> = "none" => None, env "IDEMPIPE_SCHEMA_REGISTRY_URL";
    /// The registry user (HTTP basic authentication).
    schema_registry_user: Option<String> = "none" => None, env "IDEMPIPE_SCHEMA_REGISTRY_USER";
    /// The registry password (prefer the environment variable to the flag).
    #[arg(hide_env_values = true)]
    schema_registry_password: Option<String> = "none" => None, env "IDEMPIPE_SCHEMA_REGISTRY_PASSWORD";
    /// A PEM file of CA certificates that sign the registry's, trusted besides the
    /// system's roots.
    schema_registry_ca_file: Option<PathBuf> = "none" => None, env "IDEMPIPE_SCHEMA_REGISTRY_CA_FILE";
    /// The oldest accepted event time, as an age at the message's Kafka timestamp, e.g.
    /// 90days, or `off`: older events are dead letters (`event_time_out_of_window`).
    max_event_age: Interval = "off", env "IDEMPIPE_MAX_EVENT_AGE", check interval;
    /// How far ahead of the message's Kafka timestamp an event time may be, e.g. 1h, or `off`.
    max_event_future: Interval = "off", env "IDEMPIPE_MAX_EVENT_FUTURE", check interval;
    /// Micro-batch trigger interval, e.g. 15s or 200ms (at least 100ms).
    trigger: Duration = "15s", env "IDEMPIPE_TRIGGER", check at_least_100ms;
    /// Most messages in one micro-batch.
    max_batch_events: NonZeroUsize = "200000", env "IDEMPIPE_MAX_BATCH_EVENTS";
    /// Most message bytes in one micro-batch.
    max_batch_bytes: NonZeroUsize = "33554432", env "IDEMPIPE_MAX_BATCH_BYTES";
    /// How the processor gets partitions: `assign` (all of them, no group membership)
    /// or `group` (share them with other instances).
    consumer_mode: ConsumerMode = "assign", env "IDEMPIPE_CONSUMER_MODE";
    /// When a partition's stored offset lies outside what the broker holds (the raw topic
    /// was recreated, truncated, or replaced by another cluster's): `true` stops with an
    /// error naming it; `false` goes on from the earliest offset held and records the
    /// loss (log, metric, batch log, `status`).
    #[arg(num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    fail_on_data_loss: bool = "true", env "IDEMPIPE_FAIL_ON_DATA_LOSS";
    /// How the processor finds events the table already holds: `cache` (reads the keys
    /// of the files an event could be in, by its date and time, and keeps them within
    /// `key_cache_bytes`), `index` (every key in memory, built from Delta on start; 20 to
    /// 40 bytes per key) or `scan` (reads the batch's date partitions each batch).
    key_check: KeyCheck = "cache", env "IDEMPIPE_KEY_CHECK";
    /// Most bytes of keys the key cache keeps between batches (`key_check = cache`):
    /// 16 bytes a key, plus 256 a file.
    key_cache_bytes: NonZeroUsize = "134217728", env "IDEMPIPE_KEY_CACHE_BYTES";
    /// Log lines as `text` (for a terminal) or `json` (one object per line).
    log_format: LogFormat = "text", env "IDEMPIPE_LOG_FORMAT";
    /// Where `run` and `sink-clickhouse` serve /metrics, /healthz and /readyz, or `off`.
    metrics_addr: Option<SocketAddr> = "127.0.0.1:9898", env "IDEMPIPE_METRICS_ADDR";
    /// A Delta checkpoint every N table versions.
    checkpoint_every: NonZeroU64 = "100", env "IDEMPIPE_CHECKPOINT_EVERY";
    /// How long Delta log entries are kept behind a checkpoint, e.g. 30days (at least 1m).
    log_retention: Duration = "30days", env "IDEMPIPE_LOG_RETENTION", check log_retention_range;
    /// How often `run` compacts small data files, e.g. 1h, or `off` (while its batches are
    /// full, a backlog, it waits up to as long again).
    compact_every: Interval = "1h", env "IDEMPIPE_COMPACT_EVERY", check interval;
    /// How often `run` vacuums removed files, e.g. 1day, or `off`.
    vacuum_every: Interval = "1d", env "IDEMPIPE_VACUUM_EVERY", check interval;
    /// How long removed data files stay in storage before a vacuum deletes them (at
    /// least 1m).
    vacuum_retention: Duration = "7days", env "IDEMPIPE_VACUUM_RETENTION", check vacuum_retention_range;
}

/// What `config show` prints for a secret.
pub const REDACTED: &str = "<redacted>";

/// Whether a setting holds a secret (passwords, keys, tokens): an option's key or a
/// librdkafka setting's.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "token",
        "key.pem",
        "credential",
        "account_key",
        "sas_key",
        "sas_token",
        "oauthbearer.config",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// `text` with the password of a URL's user information (`scheme://user:password@host`)
/// redacted; other text as it is.
pub fn redact_url(text: &str) -> String {
    match url_credentials(text) {
        Some((_, Some(_), rest)) if text.contains("://") => {
            let scheme = &text[..text.find("://").unwrap_or(0) + 3];
            let (user, _) = user_and_password(text);
            format!("{scheme}{}:{REDACTED}@{rest}", user.unwrap_or_default())
        }
        _ => text.to_owned(),
    }
}

/// A URL's user and password, if it has user information: `(user, password, the rest
/// after the `@`)`.
fn url_credentials(text: &str) -> Option<(String, Option<String>, &str)> {
    let start = text.find("://")? + 3;
    let authority_end = text[start..].find(['/', '?', '#']).map_or(text.len(), |i| start + i);
    let at = text[start..authority_end].rfind('@')? + start;
    let userinfo = &text[start..at];
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u.to_owned(), Some(p.to_owned())),
        None => (userinfo.to_owned(), None),
    };
    Some((user, password, &text[at + 1..]))
}

fn user_and_password(text: &str) -> (Option<String>, Option<String>) {
    url_credentials(text).map_or((None, None), |(u, p, _)| ((!u.is_empty()).then_some(u), p))
}

/// Splits a URL's user information off: `(the URL without it, user, password)`, so that
/// the password reaches the client as a setting and never appears in a URL a message
/// shows.
pub fn split_url_credentials(text: &str) -> (String, Option<String>, Option<String>) {
    match url_credentials(text) {
        Some((user, password, rest)) => {
            let scheme = &text[..text.find("://").unwrap_or(0) + 3];
            (format!("{scheme}{rest}"), (!user.is_empty()).then_some(user), password)
        }
        None => (text.to_owned(), None, None),
    }
}

/// The replication factor of the topics `setup` creates: `None` leaves it to the broker's
/// `default.replication.factor` (what a managed cluster expects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicationFactor(pub Option<std::num::NonZeroU16>);

impl ReplicationFactor {
    /// As a CreateTopics request spells it: -1 for the broker's default.
    pub fn request(self) -> i32 {
        self.0.map_or(-1, |n| i32::from(n.get()))
    }
}

impl OptionValue for ReplicationFactor {
    fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "default" => Ok(Self(None)),
            t => t.parse().map(|n| Self(Some(n))).map_err(|_| {
                format!("{text:?} is not a replication factor: a whole number from 1 to 32767, or \"default\"")
            }),
        }
    }
    fn show(&self) -> String {
        self.0.map_or_else(|| "default".to_owned(), |n| n.to_string())
    }
}

/// An interval that can be switched off: `"off"` (or `"none"`, `"0"`) is `None`.
pub type Interval = Option<Duration>;

/// The longest retention or interval: about ten years (longer ones overflow the date
/// arithmetic of Delta's retention checks).
pub const MAX_MAINTENANCE_DURATION: Duration = Duration::from_secs(3650 * 24 * 3600);

// The values options hold.

impl OptionValue for PayloadMode {
    fn parse(text: &str) -> Result<Self, String> {
        PayloadMode::parse(text.trim())
    }
    fn show(&self) -> String {
        self.as_str().to_owned()
    }
}

impl OptionValue for SchemaEvolution {
    fn parse(text: &str) -> Result<Self, String> {
        SchemaEvolution::parse(text.trim())
    }
    fn show(&self) -> String {
        self.as_str().to_owned()
    }
}

impl OptionValue for TimeFormat {
    fn parse(text: &str) -> Result<Self, String> {
        TimeFormat::parse(text.trim())
    }
    fn show(&self) -> String {
        self.as_str().to_owned()
    }
}

impl OptionValue for String {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
    fn show(&self) -> String {
        self.clone()
    }
}

impl OptionValue for Option<String> {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(Some(text.to_owned()))
    }
    fn show(&self) -> String {
        self.clone().unwrap_or_else(|| "(none)".to_owned())
    }
    fn is_set(&self) -> bool {
        self.is_some()
    }
}

impl OptionValue for Option<PathBuf> {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(Some(PathBuf::from(text)))
    }
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| "(none)".to_owned(), |p| p.display().to_string())
    }
    fn is_set(&self) -> bool {
        self.is_some()
    }
}

impl OptionValue for PathBuf {
    fn parse(text: &str) -> Result<Self, String> {
        Ok(PathBuf::from(text))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

impl OptionValue for bool {
    fn parse(text: &str) -> Result<Self, String> {
        text.trim().parse().map_err(|_| format!("{text:?} is not `true` or `false`"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

macro_rules! number_option {
    ($($ty:ty),+) => {$(
        impl OptionValue for $ty {
            fn parse(text: &str) -> Result<Self, String> {
                let text = text.trim();
                match text.parse::<$ty>() {
                    Ok(n) => Ok(n),
                    Err(_) if text.parse::<u128>() == Ok(0) => Err("must be at least 1".to_owned()),
                    Err(_) => Err(format!("{text:?} is not a whole number")),
                }
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )+};
}
number_option!(i32, NonZeroUsize, NonZeroU64);

impl OptionValue for Duration {
    fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("{text:?} is not a duration such as \"15s\" or \"200ms\": {e}"))
    }
    fn show(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

/// A value that can be switched off: `"off"` (or `"none"`, `"0"`) is `None`, anything
/// else goes through `parse` (whose error says what else it takes: `"off"`).
fn switchable<T>(text: &str, what: &str, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    match text.trim() {
        "off" | "none" | "0" => Ok(None),
        t => parse(t).map(Some).map_err(|e| format!("{text:?} is not {what} (or \"off\"): {e}")),
    }
}

impl OptionValue for Interval {
    fn parse(text: &str) -> Result<Self, String> {
        switchable(text, "a duration such as \"1h\"", |t| humantime::parse_duration(t).map_err(|e| e.to_string()))
    }
    fn show(&self) -> String {
        self.map_or_else(|| "off".to_owned(), |d| humantime::format_duration(d).to_string())
    }
    fn is_set(&self) -> bool {
        self.is_some()
    }
}

impl OptionValue for Option<SocketAddr> {
    fn parse(text: &str) -> Result<Self, String> {
        switchable(text, "an address such as 127.0.0.1:9898", |t| {
            t.parse().map_err(|e: std::net::AddrParseError| e.to_string())
        })
    }
    fn show(&self) -> String {
        self.map_or_else(|| "off".to_owned(), |a| a.to_string())
    }
    fn is_set(&self) -> bool {
        self.is_some()
    }
}

macro_rules! value_enum_option {
    ($($ty:ty),+) => {$(
        impl OptionValue for $ty {
            fn parse(text: &str) -> Result<Self, String> {
                <$ty as clap::ValueEnum>::from_str(text.trim(), false).map_err(|_| {
                    let names: Vec<String> = <$ty as clap::ValueEnum>::value_variants()
                        .iter()
                        .filter_map(|v| clap::ValueEnum::to_possible_value(v))
                        .map(|p| p.get_name().to_owned())
                        .collect();
                    format!("{text:?} is not one of {}", names.join(", "))
                })
            }
            fn show(&self) -> String {
                clap::ValueEnum::to_possible_value(self).map_or_else(String::new, |p| p.get_name().to_owned())
            }
        }
    )+};
}
value_enum_option!(ClickHouseIngest, ConsumerMode, KeyCheck, LogFormat, MessageFormat);

// The checks of single values (relations between options are checked in
// `Settings::validate`).

fn not_empty(value: &str) -> Result<(), String> {
    if value.trim().is_empty() { Err("must not be empty".into()) } else { Ok(()) }
}

fn key_field_list(value: &str) -> Result<(), String> {
    Identity::new(&key_fields(value), "_", TimeFormat::Auto).map(drop)
}

fn field_path(value: &str) -> Result<(), String> {
    FieldPath::parse(value.trim()).map(drop)
}

/// The fields of an `event_key` value.
pub(crate) fn key_fields(value: &str) -> Vec<&str> {
    value.split(',').map(str::trim).filter(|f| !f.is_empty()).collect()
}

fn table_location(value: &str) -> Result<(), String> {
    Location::parse(value).map(|_| ())
}

fn not_empty_path(value: &Path) -> Result<(), String> {
    if value.as_os_str().is_empty() { Err("must not be empty".into()) } else { Ok(()) }
}

fn topic_name(topic: &str) -> Result<(), String> {
    not_empty(topic)?;
    if topic.len() > 249 || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(format!("{topic:?} is not a Kafka topic name (ASCII letters, digits, `.`, `_`, `-`)"));
    }
    Ok(())
}

fn http_url(url: &str) -> Result<(), String> {
    not_empty(url)?;
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(format!("{:?} is not an http:// or https:// URL", redact_url(url)));
    }
    Ok(())
}

fn identifier(name: &str) -> Result<(), String> {
    not_empty(name)?;
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 200 {
        return Err(format!(
            "{name:?} is not a plain identifier (ASCII letters, digits and `_`, not starting with a digit)"
        ));
    }
    Ok(())
}

fn at_least(value: Duration, min: Duration) -> Result<(), String> {
    if value < min {
        return Err(format!(
            "{} is below the minimum of {}",
            humantime::format_duration(value),
            humantime::format_duration(min)
        ));
    }
    Ok(())
}

fn at_least_10ms(value: &Duration) -> Result<(), String> {
    at_least(*value, Duration::from_millis(10))
}

fn at_least_100ms(value: &Duration) -> Result<(), String> {
    at_least(*value, crate::config::MIN_TRIGGER)
}

fn partition_count(n: &i32) -> Result<(), String> {
    if (1..=10_000).contains(n) { Ok(()) } else { Err(format!("{n} is not between 1 and 10000")) }
}

fn at_most_ten_years(value: Duration) -> Result<(), String> {
    if value > MAX_MAINTENANCE_DURATION { Err("must be at most 3650days".into()) } else { Ok(()) }
}

fn log_retention_range(value: &Duration) -> Result<(), String> {
    if *value < Duration::from_secs(60) {
        return Err(
            "must be at least 1m (a reader loading the table needs the entries after the last checkpoint)".into()
        );
    }
    at_most_ten_years(*value)
}

fn vacuum_retention_range(value: &Duration) -> Result<(), String> {
    if *value < Duration::from_secs(60) {
        return Err("must be at least 1m (readers at older versions and files being written need it)".into());
    }
    at_most_ten_years(*value)
}

fn interval(value: &Interval) -> Result<(), String> {
    match value {
        Some(every) if *every < Duration::from_secs(1) => Err("must be at least 1s, or \"off\"".into()),
        Some(every) => at_most_ten_years(*every),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_parses_and_passes_its_check() {
        let options = Options::resolve(FileOptions::default(), &OptionArgs::default(), &BTreeSet::new()).unwrap();
        assert_eq!(options.entries().len(), OPTIONS.len());
        assert!(options.origins.values().all(|o| *o == Origin::Default));
    }

    #[test]
    fn the_message_size_default_is_the_contracts_limit() {
        let options = Options::resolve(FileOptions::default(), &OptionArgs::default(), &BTreeSet::new()).unwrap();
        assert_eq!(options.max_message_bytes.get(), crate::event::DEFAULT_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn every_option_is_in_the_configuration_table_and_the_example_file() {
        let readme = include_str!("../../docs/CONFIGURATION.md");
        let example = include_str!("../../idempipe.example.toml");
        for o in OPTIONS {
            let row = format!("| `{}` / `{}` | `{}` | `{}` |", o.flag(), o.name, o.env, o.default);
            assert!(
                readme.lines().any(|l| l.starts_with(&row)),
                "docs/CONFIGURATION.md has no configuration row {row}"
            );
            let key = |l: &str| l.trim_start_matches(['#', ' ']).starts_with(&format!("{} =", o.name));
            assert!(example.lines().any(key), "idempipe.example.toml does not show `{}`", o.name);
        }
        let rows = readme.lines().filter(|l| l.starts_with("| `--") && l.contains("` / `")).count();
        assert_eq!(rows, OPTIONS.len(), "docs/CONFIGURATION.md's table has one row per option");
    }

    #[test]
    fn every_environment_variable_is_the_key_in_capitals() {
        for o in OPTIONS {
            assert_eq!(o.env, format!("IDEMPIPE_{}", o.name.to_uppercase()), "{}", o.name);
        }
    }
}
