//! The effective configuration: defaults, then the TOML file, then `IDEMPIPE_*`
//! environment variables, then command-line flags, each overriding the one before.
//!
//! Each option is declared once, in [`options`]; [`Settings`] is the validated whole the
//! library uses, grouped by concern (topics, ClickHouse, batch limits, maintenance).
//!
//! Invariant: a [`Settings`] value is valid. Every bad value fails in [`Settings::resolve`]
//! with an error that names its key and where it came from, before any service is touched.

pub mod options;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::CommonArgs;
pub use crate::config::options::{
    FileOptions, MAX_MAINTENANCE_DURATION, OPTIONS, Options, REDACTED, ReplicationFactor, is_secret, redact_url,
    split_url_credentials,
};
use crate::event::{ColumnSpec, ColumnType, EventSchema, FieldPath, Identity};
use crate::table::Location;

/// A configuration problem, found at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("invalid librdkafka setting `kafka.{key}`: {reason}")]
    InvalidKafka { key: String, reason: String },
}

/// The config file: every option's key (see [`options`]) and the `[kafka]` table.
pub type FileConfig = FileOptions;

impl FileOptions {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }
}

/// Kafka topics of one pipeline; several pipelines can share a broker with other names.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Where events arrive.
    pub raw: String,
    /// Where newly stored events go, for the speed layer.
    pub processed: String,
    /// Where refused messages go, with their reason.
    pub dlq: String,
}

/// How the processor gets its partitions of the raw topic. Either way Delta says where
/// each partition starts, and offsets are committed to the group for lag tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerMode {
    /// This instance reads every partition (static assignment, no group membership). The
    /// default: one processor per table, and no dependence on the broker's group
    /// coordinator.
    #[default]
    Assign,
    /// Join the consumer group and share the partitions with other instances; every
    /// rebalance re-reads the start offsets from Delta.
    Group,
}

/// How the processor finds the events of a batch that the table already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyCheck {
    /// The keys of the live files an event could be in (its date's files whose
    /// `event_time` statistics cover its time), read when a batch needs them and kept in a
    /// cache of whole files within `key_cache_bytes`; new rows are appended as with the
    /// index. Memory and start-up do not grow with the table; a batch of old dates reads
    /// those dates' files once, then finds them cached.
    #[default]
    Cache,
    /// An in-memory index of every key in the table, built from Delta on start and kept
    /// in step with every commit (any writer's); new rows are appended by a commit that
    /// conflicts with any file added to the same dates since the check. Cost per batch
    /// does not grow with the table; memory does (20 to 40 bytes per key as the hash table fills and doubles; 28.5 at 10 M keys).
    Index,
    /// A semi-join of the batch with its dates' partitions, then an insert-only MERGE:
    /// no memory beyond the batch, but each batch reads those partitions whole.
    Scan,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The settings of the Delta table's maintenance, which `run` runs in a task beside the
/// batch loop ([`crate::table::maintenance`]): its commits race the processor's like any
/// other writer's, which is safe because none of it changes rows.
#[derive(Debug, Clone, Copy)]
pub struct Maintenance {
    /// A checkpoint every this many table versions, after which log entries older than
    /// `log_retention` are deleted.
    pub checkpoint_every: NonZeroU64,
    /// How long commit log entries are kept (time travel reaches back this far).
    pub log_retention: Duration,
    /// How often small data files are bin-packed into larger ones; `None`: never.
    pub compact_every: Option<Duration>,
    /// How often files removed from the table longer than `vacuum_retention` ago are
    /// deleted from storage; `None`: never.
    pub vacuum_every: Option<Duration>,
    /// How long a removed file stays in storage (readers at older versions need it).
    pub vacuum_retention: Duration,
}

/// Where a setting's effective value came from, lowest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Default,
    File,
    Env,
    Flag,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Default => "default",
            Origin::File => "file",
            Origin::Env => "env",
            Origin::Flag => "flag",
        })
    }
}

/// Micro-batch limits: a batch closes at whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// How long a batch collects before it is processed.
    pub trigger: Duration,
    /// The most messages in one batch.
    pub max_events: NonZeroUsize,
    /// The most message bytes in one batch.
    pub max_bytes: NonZeroUsize,
}

/// How raw messages are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MessageFormat {
    /// A JSON object per message.
    #[default]
    Json,
    /// The Confluent wire format (Avro, Protobuf or JSON Schema), its schema in a schema
    /// registry.
    SchemaRegistry,
}

/// How events get from the processed topic into ClickHouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ClickHouseIngest {
    /// idempipe's own sink (`sink-clickhouse`, or inside `run`): commits its Kafka
    /// offsets only after ClickHouse acknowledged the insert.
    #[default]
    Sink,
    /// ClickHouse's Kafka engine: a Kafka table and a materialized view into the events
    /// table, created by `setup`; ClickHouse consumes the topic itself.
    KafkaEngine,
}

/// Where ClickHouse is, which table holds the events, and how the sink loads it. Its
/// `Debug` redacts the password.
#[derive(Clone)]
pub struct ClickHouseSettings {
    /// Without user information: a user and password given in `clickhouse_url` are
    /// moved to `user` and `password`, so no message that shows the URL shows them.
    pub url: String,
    /// CA certificates (PEM) trusted besides the system's, for `https://`.
    pub ca_file: Option<PathBuf>,
    pub database: String,
    pub table: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub ingest: ClickHouseIngest,
    /// Consumer group of the sink on the processed topic.
    pub group: String,
    /// Whether `run` also runs the sink, in a thread beside the processor.
    pub in_run: bool,
    /// How long the sink collects records before an insert.
    pub trigger: Duration,
    /// The most rows in one batch.
    pub max_batch_rows: NonZeroUsize,
    /// The most record bytes in one batch.
    pub max_batch_bytes: NonZeroUsize,
    /// The Kafka brokers as ClickHouse's Kafka engine reaches them.
    pub kafka_brokers: String,
    /// The event schema: its key and declared columns are the events table's columns
    /// after `dedup_key`, and fields of the processed record.
    pub schema: EventSchema,
}

impl std::fmt::Debug for ClickHouseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSettings")
            .field("url", &self.url)
            .field("ca_file", &self.ca_file)
            .field("database", &self.database)
            .field("table", &self.table)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("ingest", &self.ingest)
            .field("group", &self.group)
            .field("in_run", &self.in_run)
            .field("trigger", &self.trigger)
            .field("max_batch_rows", &self.max_batch_rows)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("kafka_brokers", &self.kafka_brokers)
            .finish()
    }
}

/// The accepted event times, relative to when a message is read; `None`: no bound.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventWindow {
    pub max_age: Option<Duration>,
    pub max_future: Option<Duration>,
}

/// The validated, effective configuration shared by every command. Its `Debug` shows no
/// secret (each part redacts its own).
#[derive(Debug, Clone)]
pub struct Settings {
    pub brokers: String,
    pub topics: Topics,
    /// Consumer group of the processor; also the prefix of the Delta txn app ids
    /// ([`crate::table::AppIds`]).
    pub group: String,
    /// The Delta table, with the `[storage]` options that reach it.
    pub delta_path: Location,
    /// The batch log: one JSON line per committed batch, on local disk (by default beside
    /// a local table, never inside it, where `vacuum` would delete it as an unknown file).
    pub batch_log: PathBuf,
    pub clickhouse: ClickHouseSettings,
    /// Partitions of the raw and processed topics that `setup` creates.
    pub partitions: i32,
    /// Replication factor of the topics that `setup` creates.
    pub replication_factor: ReplicationFactor,
    pub max_message_bytes: usize,
    /// Which fields make an event's key and its time, and the declared columns.
    pub schema: EventSchema,
    /// The accepted event times ([`crate::batch::Limits`]).
    pub event_window: EventWindow,
    pub batch: BatchLimits,
    pub consumer_mode: ConsumerMode,
    /// How raw messages are written, and the registry their schemas are in.
    pub message_format: MessageFormat,
    pub registry: crate::registry::RegistrySettings,
    /// Whether a stored offset the broker no longer holds stops the processor (`true`) or
    /// is skipped from, the loss recorded ([`crate::kafka::ranges`]).
    pub fail_on_data_loss: bool,
    pub key_check: KeyCheck,
    /// Most bytes of keys the key cache keeps between batches.
    pub key_cache_bytes: usize,
    pub log_format: LogFormat,
    /// Where `run` and `sink-clickhouse` serve `/metrics`, `/healthz` and `/readyz`;
    /// `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    pub maintenance: Maintenance,
    /// librdkafka pass-through settings, applied to every client after ours.
    pub kafka: PassThrough,
    /// Object-store options for the table: the `[storage]` table and `--storage` (given
    /// to delta-rs), and the store's environment variables (which delta-rs reads itself;
    /// listed for `config show`).
    pub storage: PassThrough,
    /// The options these settings were made from, with their origins: what `config
    /// show` prints.
    pub options: Options,
}

/// librdkafka settings the guarantees rest on: `(key, the values the pass-through may
/// give, why)`. An empty list: idempipe sets it and it cannot be given at all.
pub const GUARDED_KAFKA_SETTINGS: [(&str, &[&str], &str); 7] = [
    ("enable.idempotence", &["true"], "without it a retried produce can write a record twice or out of order"),
    ("acks", &["all", "-1"], "a record acknowledged by fewer replicas than all in sync can be lost"),
    ("request.required.acks", &["all", "-1"], "a record acknowledged by fewer replicas than all in sync can be lost"),
    ("isolation.level", &["read_committed"], "records of aborted or open transactions are not events"),
    (
        "enable.auto.commit",
        &["false"],
        "the processor's offsets live in the Delta table, the ClickHouse sink commits only after ClickHouse has its rows",
    ),
    ("enable.auto.offset.store", &["false"], "offsets are stored only for records that were handled"),
    ("auto.offset.reset", &[], "where a partition starts is decided from the Delta table's offsets"),
];

/// The declared columns of the `[columns]` table, in name order (a TOML table has no
/// order of its own): `name = "type"`, or `name = { type = "…", field = "a.b", required =
/// true }`. The error names the column.
pub(crate) fn column_specs(table: BTreeMap<String, toml::Value>) -> Result<Vec<ColumnSpec>, ConfigError> {
    let invalid =
        |name: &str, why: String| ConfigError::Invalid { key: "columns", reason: format!("column `{name}`: {why}") };
    let mut specs = Vec::new();
    for (name, value) in table {
        let (kind, field, required) = match value {
            toml::Value::String(kind) => (kind, name.clone(), false),
            toml::Value::Table(mut t) => {
                let kind = match t.remove("type") {
                    Some(toml::Value::String(kind)) => kind,
                    _ => return Err(invalid(&name, "needs `type = \"…\"`".into())),
                };
                let field = match t.remove("field") {
                    None => name.clone(),
                    Some(toml::Value::String(field)) => field,
                    Some(other) => return Err(invalid(&name, format!("`field` is {other}, not a string"))),
                };
                let required = match t.remove("required") {
                    None => false,
                    Some(toml::Value::Boolean(b)) => b,
                    Some(other) => return Err(invalid(&name, format!("`required` is {other}, not true or false"))),
                };
                if let Some(unknown) = t.keys().next() {
                    return Err(invalid(&name, format!("unknown key `{unknown}` (type, field, required)")));
                }
                (kind, field, required)
            }
            other => return Err(invalid(&name, format!("{other} is neither a type nor a table"))),
        };
        let kind = ColumnType::parse(&kind).map_err(|why| invalid(&name, why))?;
        let field = FieldPath::parse(field.trim()).map_err(|why| invalid(&name, why))?;
        specs.push(ColumnSpec { name, field, kind, required });
    }
    Ok(specs)
}

/// librdkafka's default `message.max.bytes`.
pub(crate) const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room left in a produce request beside one record: the record batch's header (61 bytes)
/// and the record's own lengths and varints, with a wide margin.
pub(crate) const RECORD_BATCH_OVERHEAD: usize = 1024;

/// The shortest trigger interval: below it the per-commit cost of Delta dominates.
pub(crate) const MIN_TRIGGER: Duration = Duration::from_millis(100);

impl Settings {
    /// Layers defaults, the file (if any), and the environment and flags (which clap has
    /// already merged, flags winning), then validates the result.
    pub fn resolve(mut file: FileConfig, args: &CommonArgs) -> Result<Self, ConfigError> {
        let kafka = PassThrough::layer(std::iter::empty(), std::mem::take(&mut file.kafka), &args.kafka);
        let columns = column_specs(std::mem::take(&mut file.columns))?;
        let storage_env = std::env::vars().filter(|(k, _)| STORAGE_ENV_PREFIXES.iter().any(|p| k.starts_with(p)));
        let storage = PassThrough::layer(storage_env, std::mem::take(&mut file.storage), &args.storage);
        let o = Options::resolve(file, &args.options, &args.from_env)?;
        // Checked by the option's declaration: it parses.
        let delta_path = Location::parse(&o.delta_path)
            .map_err(|reason| ConfigError::Invalid { key: "delta_path", reason })?
            .with_options(storage.given());
        let (clickhouse_url, url_user, url_password) = split_url_credentials(&o.clickhouse_url);
        let given_twice = |key| ConfigError::Invalid {
            key,
            reason: "is given both here and in `clickhouse_url`'s user information: give it once".into(),
        };
        if url_user.is_some() && o.clickhouse_user.is_some() {
            return Err(given_twice("clickhouse_user"));
        }
        if url_password.is_some() && o.clickhouse_password.is_some() {
            return Err(given_twice("clickhouse_password"));
        }
        let identity = Identity::new(&options::key_fields(&o.event_key), &o.event_time, o.event_time_format)
            .map_err(|reason| ConfigError::Invalid { key: "event_time", reason })?;
        let schema = EventSchema::new(identity, columns, o.payload)
            .map_err(|reason| ConfigError::Invalid { key: "columns", reason })?
            .with_evolution(o.schema_evolution);
        let settings = Settings {
            brokers: o.brokers.clone(),
            topics: Topics { raw: o.raw_topic.clone(), processed: o.processed_topic.clone(), dlq: o.dlq_topic.clone() },
            group: o.group.clone(),
            delta_path,
            batch_log: o.batch_log.clone(),
            clickhouse: ClickHouseSettings {
                url: clickhouse_url,
                ca_file: o.clickhouse_ca_file.clone(),
                database: o.clickhouse_database.clone(),
                table: o.clickhouse_table.clone(),
                user: o.clickhouse_user.clone().or(url_user),
                password: o.clickhouse_password.clone().or(url_password),
                ingest: o.clickhouse_ingest,
                group: o.clickhouse_group.clone(),
                in_run: o.clickhouse_in_run,
                trigger: o.clickhouse_trigger,
                max_batch_rows: o.clickhouse_max_batch_rows,
                max_batch_bytes: o.clickhouse_max_batch_bytes,
                kafka_brokers: o.clickhouse_kafka_brokers.clone(),
                schema: schema.clone(),
            },
            partitions: o.partitions,
            replication_factor: o.replication_factor,
            max_message_bytes: o.max_message_bytes.get(),
            schema,
            event_window: EventWindow { max_age: o.max_event_age, max_future: o.max_event_future },
            batch: BatchLimits { trigger: o.trigger, max_events: o.max_batch_events, max_bytes: o.max_batch_bytes },
            consumer_mode: o.consumer_mode,
            message_format: o.message_format,
            registry: crate::registry::RegistrySettings {
                url: o.schema_registry_url.clone(),
                user: o.schema_registry_user.clone(),
                password: o.schema_registry_password.clone(),
                ca_file: o.schema_registry_ca_file.clone(),
            },
            fail_on_data_loss: o.fail_on_data_loss,
            key_check: o.key_check,
            key_cache_bytes: o.key_cache_bytes.get(),
            log_format: o.log_format,
            metrics_addr: o.metrics_addr,
            maintenance: Maintenance {
                checkpoint_every: o.checkpoint_every,
                log_retention: o.log_retention,
                compact_every: o.compact_every,
                vacuum_every: o.vacuum_every,
                vacuum_retention: o.vacuum_retention,
            },
            kafka,
            storage,
            options: o,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// The largest produce request idempipe's producer sends: librdkafka's
    /// `message.max.bytes` (the pass-through's, else its default), which bounds a record
    /// batch and so any record in it.
    pub(crate) fn max_request_bytes(&self) -> usize {
        self.kafka
            .values
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
    }

    /// The largest record (key, value and headers) idempipe produces: a request less the
    /// record batch's own overhead. A valid event whose processed record would be larger,
    /// or a dead letter's value past it, is decided before anything is written (see
    /// [`crate::batch::Limits`], [`crate::output::dlq`]).
    pub fn max_record_bytes(&self) -> usize {
        self.max_request_bytes().saturating_sub(RECORD_BATCH_OVERHEAD)
    }

    /// Every setting as `(key, value, origin)`, in key order, secrets redacted: what
    /// `config show` prints.
    pub fn entries(&self) -> Vec<(String, String, Origin)> {
        let mut out = self.options.entries();
        out.extend(self.kafka.entries("kafka."));
        out.extend(self.storage.entries("storage."));
        out.extend(self.schema.declared_keys().iter().chain(self.schema.columns()).map(|c| {
            let required = if c.required { ", required" } else { "" };
            (format!("columns.{}", c.name), format!("{} (field {}{required})", c.kind, c.field), Origin::File)
        }));
        out.sort();
        out
    }

    /// The checks that relate options to each other (each option's own check is in
    /// its declaration), and librdkafka's check of the pass-through settings.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.into() });
        if self.topics.raw == self.topics.processed
            || self.topics.raw == self.topics.dlq
            || self.topics.processed == self.topics.dlq
        {
            return invalid("raw_topic", "the raw, processed and dead-letter topics must be three different topics");
        }
        if self.clickhouse.group == self.group {
            return invalid(
                "clickhouse_group",
                "must differ from `group`: the sink and the processor are different consumers",
            );
        }
        if self.clickhouse.in_run && self.clickhouse.ingest == ClickHouseIngest::KafkaEngine {
            return invalid(
                "clickhouse_in_run",
                "the built-in sink and `clickhouse_ingest = \"kafka-engine\"` would both load ClickHouse; pick one",
            );
        }
        if self.message_format == MessageFormat::SchemaRegistry && self.registry.url.is_none() {
            return invalid(
                "schema_registry_url",
                "must be set with `message_format = \"schema-registry\"`: each message's schema is fetched from it",
            );
        }
        if let Some(url) = &self.registry.url
            && !url.starts_with("http://")
            && !url.starts_with("https://")
        {
            return invalid("schema_registry_url", &format!("{:?} is not an http:// or https:// URL", redact_url(url)));
        }
        if self.schema.evolution() == crate::event::SchemaEvolution::AddColumns
            && self.clickhouse.ingest == ClickHouseIngest::KafkaEngine
        {
            return invalid(
                "schema_evolution",
                "`add_columns` needs the ClickHouse sink (`clickhouse_ingest = \"sink\"`): the Kafka-engine route \
                 loads a fixed set of columns",
            );
        }
        for (key, value) in &self.kafka.values {
            if let Some((_, allowed, why)) = GUARDED_KAFKA_SETTINGS.iter().find(|(k, _, _)| k == key)
                && !allowed.contains(&value.trim())
            {
                let reason = match allowed {
                    [] => format!("idempipe sets it itself: {why}"),
                    _ => format!("{value:?} is refused ({}): {why}", allowed.join(" or ")),
                };
                return Err(ConfigError::InvalidKafka { key: key.clone(), reason });
            }
        }
        // librdkafka checks each name and value as it is set, without connecting.
        let mut kafka = rdkafka::ClientConfig::new();
        for (k, v) in &self.kafka.values {
            kafka.set(k, v);
        }
        if let Err(e) = kafka.create_native_config() {
            let key = match &e {
                rdkafka::error::KafkaError::ClientConfig(_, _, key, _) => key.clone(),
                _ => String::new(),
            };
            return Err(ConfigError::InvalidKafka { key, reason: e.to_string() });
        }
        check_kafka_clients(&kafka)
    }
}

/// Makes a consumer and an idempotent producer from the pass-through settings, without
/// brokers (nothing connects), and drops them. Some settings are refused only beside
/// another, when librdkafka makes a client: a consumer's `max.poll.interval.ms` below its
/// `session.timeout.ms`, a producer's idempotence beside more than five requests in
/// flight. Checked here, such a pair fails every command at start-up, naming the settings,
/// instead of stopping `run` at its first consumer.
fn check_kafka_clients(passthrough: &rdkafka::ClientConfig) -> Result<(), ConfigError> {
    use rdkafka::config::RDKafkaLogLevel;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;

    let refused = |e: rdkafka::error::KafkaError| {
        let reason = e.to_string();
        // librdkafka names the settings in backquotes: the first is the key.
        let key = reason.split('`').nth(1).unwrap_or("?").to_owned();
        ConfigError::InvalidKafka { key, reason }
    };
    let mut config = passthrough.clone();
    config.set_log_level(RDKafkaLogLevel::Emerg);
    config.create::<BaseConsumer>().map_err(refused)?;
    // What every producer of idempipe sets (the pass-through may only repeat it).
    config.set("enable.idempotence", "true").set("acks", "all");
    config.create::<BaseProducer>().map_err(refused)?;
    Ok(())
}

/// The environment variables of the object stores, which delta-rs reads itself.
pub const STORAGE_ENV_PREFIXES: [&str; 3] = ["AWS_", "AZURE_", "GOOGLE_"];

/// Settings passed through by name to a library (librdkafka's, the object store's),
/// with where each came from. Its `Debug` redacts secrets ([`is_secret`]).
#[derive(Clone, Default)]
pub struct PassThrough {
    pub values: BTreeMap<String, String>,
    pub origins: BTreeMap<String, Origin>,
}

impl std::fmt::Debug for PassThrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.entries("").map(|(k, v, _)| (k, v))).finish()
    }
}

impl PassThrough {
    /// `env`, overridden by `file`, overridden by `flags`.
    fn layer(
        env: impl Iterator<Item = (String, String)>,
        file: BTreeMap<String, String>,
        flags: &[(String, String)],
    ) -> Self {
        let mut this = Self::default();
        let layers = env
            .map(|kv| (kv, Origin::Env))
            .chain(file.into_iter().map(|kv| (kv, Origin::File)))
            .chain(flags.iter().cloned().map(|kv| (kv, Origin::Flag)));
        for ((key, value), origin) in layers {
            this.origins.insert(key.clone(), origin);
            this.values.insert(key, value);
        }
        this
    }

    /// The settings given in the file or as flags (not the environment's).
    pub fn given(&self) -> BTreeMap<String, String> {
        self.values
            .iter()
            .filter(|(k, _)| self.origins.get(*k) != Some(&Origin::Env))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every setting as `(<prefix><key>, value, origin)`, secrets redacted.
    fn entries(&self, prefix: &'static str) -> impl Iterator<Item = (String, String, Origin)> + '_ {
        self.values.iter().map(move |(k, v)| {
            let value = if is_secret(k) { REDACTED.to_owned() } else { redact_url(v) };
            let origin = self.origins.get(k).copied().unwrap_or(Origin::Default);
            (format!("{prefix}{k}"), value, origin)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
    const DEFAULT_TRIGGER: Duration = Duration::from_secs(15);

    fn resolve(file: &str, argv: &[&str]) -> Result<Settings, ConfigError> {
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        let file = toml::from_str(file)
            .map_err(|source| ConfigError::Parse { path: "test.toml".into(), source: Box::new(source) })?;
        Settings::resolve(file, &cli.common)
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let s =
            resolve("group = \"from-file\"\nraw_topic = \"file_raw\"", &["idempipe", "--group", "from-flag", "verify"])
                .unwrap();
        assert_eq!(s.group, "from-flag");
        assert_eq!(s.topics.raw, "file_raw");
        assert_eq!(s.topics.dlq, "raw_events_dlq");
        assert_eq!(s.brokers, DEFAULT_BROKERS);
        assert_eq!(s.batch.trigger, DEFAULT_TRIGGER);
    }

    #[test]
    fn no_secret_shows_in_debug_output_or_the_settings_report() {
        const SECRETS: &str = r#"
clickhouse_url = "https://reader:url-secret-1@clickhouse.example:8443/"
delta_path = "s3://bucket/events"
[kafka]
"sasl.password" = "kafka-secret-2"
"sasl.oauthbearer.config" = "clientId=a clientSecret=oauth-secret-3"
[storage]
aws_secret_access_key = "aws-secret-4"
aws_endpoint_url = "http://user:endpoint-secret-5@s3.example"
"#;
        let settings = resolve(SECRETS, &["idempipe", "--clickhouse-password", "", "status"]);
        // Both a password flag and one in the URL: refused, naming the key.
        let err = settings.unwrap_err().to_string();
        assert!(err.contains("clickhouse_password") && !err.contains("url-secret-1"), "{err}");

        let settings = resolve(SECRETS, &["idempipe", "status"]).unwrap();
        assert_eq!(settings.clickhouse.url, "https://clickhouse.example:8443/");
        assert_eq!(settings.clickhouse.user.as_deref(), Some("reader"));
        assert_eq!(settings.clickhouse.password.as_deref(), Some("url-secret-1"));
        let shown = format!("{settings:?}\n{:?}", settings.entries());
        for secret in ["url-secret-1", "kafka-secret-2", "oauth-secret-3", "aws-secret-4", "endpoint-secret-5"] {
            assert!(!shown.contains(secret), "{secret} shows in:\n{shown}");
        }
        assert!(shown.contains("reader:<redacted>@clickhouse.example"), "{shown}");
    }

    #[test]
    fn settings_the_guarantees_rest_on_cannot_be_turned_off() {
        for (setting, key) in [
            ("enable.idempotence=false", "kafka.enable.idempotence"),
            ("acks=1", "kafka.acks"),
            ("isolation.level=read_uncommitted", "kafka.isolation.level"),
            ("enable.auto.commit=true", "kafka.enable.auto.commit"),
            ("auto.offset.reset=earliest", "kafka.auto.offset.reset"),
        ] {
            let err = resolve("", &["idempipe", "--kafka", setting, "verify"]).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")) && err.contains(": "), "{setting}: {err}");
        }
        // The values they already have are accepted; so is everything else.
        for setting in ["acks=all", "enable.idempotence=true", "isolation.level=read_committed", "linger.ms=20"] {
            resolve("", &["idempipe", "--kafka", setting, "verify"]).unwrap();
        }
    }

    /// A consumer setting refused only beside another (librdkafka checks the pair when it
    /// makes a consumer): the example file once set one and `run` stopped at its start.
    #[test]
    fn settings_refused_only_together_fail_at_start_up() {
        let err = resolve("[kafka]\n\"max.poll.interval.ms\" = \"10000\"", &["idempipe", "verify"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("max.poll.interval.ms") && text.contains("session.timeout.ms"), "{text}");
        let err =
            resolve("", &["idempipe", "--kafka", "max.in.flight.requests.per.connection=10", "verify"]).unwrap_err();
        assert!(err.to_string().contains("max.in.flight"), "{err}");
        let both = "[kafka]\n\"max.poll.interval.ms\" = \"10000\"\n\"session.timeout.ms\" = \"6000\"";
        resolve(both, &["idempipe", "verify"]).unwrap();
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../idempipe.example.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        let cli = crate::cli::Cli::try_parse_from(["idempipe", "verify"]).unwrap();
        Settings::resolve(file, &cli.common).unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = resolve("trigger = \"10ms\"", &["idempipe", "verify"]).unwrap_err();
        assert!(err.to_string().contains("`trigger`"), "{err}");
        let err = resolve("", &["idempipe", "--raw-topic", "a b", "verify"]).unwrap_err();
        assert!(err.to_string().contains("`raw_topic`"), "{err}");
        let err = resolve("max_batch_events = 0", &["idempipe", "verify"]).unwrap_err();
        assert!(err.to_string().contains("`max_batch_events`"), "{err}");
        let err = resolve("", &["idempipe", "--clickhouse-url", "localhost:8123", "verify"]).unwrap_err();
        assert!(err.to_string().contains("`clickhouse_url`"), "{err}");
        let err = resolve("clickhouse_table = \"events; DROP TABLE x\"", &["idempipe", "verify"]).unwrap_err();
        assert!(err.to_string().contains("`clickhouse_table`"), "{err}");
        let err = resolve("clickhouse_group = \"idempipe\"", &["idempipe", "verify"]).unwrap_err();
        assert!(err.to_string().contains("`clickhouse_group`"), "{err}");
        let err = resolve("clickhouse_max_batch_rows = 0", &["idempipe", "verify"]).unwrap_err();
        assert!(err.to_string().contains("`clickhouse_max_batch_rows`"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = toml::from_str::<FileConfig>("brokerz = \"x\"").unwrap_err();
        assert!(err.to_string().contains("brokerz"), "{err}");
        let err = toml::from_str::<FileConfig>("trigger = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("soon"), "{err}");
    }

    #[test]
    fn declared_columns_are_read_in_name_order_and_bad_ones_named() {
        let s = resolve(
            "event_key = \"order_id,line\"\npayload = \"rest\"\n[columns]\nline = \"int\"\n\
             zip = { type = \"int\", field = \"address.zip\", required = true }\namount = \"decimal(12, 2)\"",
            &["idempipe", "verify"],
        )
        .unwrap();
        let columns: Vec<String> =
            s.schema.columns().iter().map(|c| format!("{} {} {} {}", c.name, c.kind, c.field, c.required)).collect();
        assert_eq!(columns, ["amount decimal(12,2) amount false", "zip int address.zip true"]);
        assert_eq!(s.schema.key_kinds(), [crate::event::KeyKind::TextOrInteger, crate::event::KeyKind::Int]);
        assert_eq!(s.schema.payload(), crate::event::PayloadMode::Rest);
        assert_eq!(s.clickhouse.schema, s.schema);
        let shown: Vec<(String, String)> =
            s.entries().into_iter().filter(|(k, _, _)| k.starts_with("columns.")).map(|(k, v, _)| (k, v)).collect();
        assert_eq!(
            shown,
            [
                ("columns.amount".to_owned(), "decimal(12,2) (field amount)".to_owned()),
                ("columns.line".to_owned(), "int (field line)".to_owned()),
                ("columns.zip".to_owned(), "int (field address.zip, required)".to_owned()),
            ]
        );
        for (file, named) in [
            ("[columns]\nx = \"float\"", "column `x`"),
            ("[columns]\nx = { field = \"y\" }", "needs `type"),
            ("[columns]\nx = { type = \"int\", nullable = true }", "unknown key `nullable`"),
            ("[columns]\nuser_id = \"double\"", "not double"),
            ("[columns]\nx = 5", "neither a type"),
        ] {
            let err = resolve(file, &["idempipe", "verify"]).unwrap_err().to_string();
            assert!(err.contains("`columns`") && err.contains(named), "{file}: {err}");
        }
    }

    #[test]
    fn the_batch_log_sits_beside_the_table() {
        let s = resolve("delta_path = \"/data/delta/events\"", &["idempipe", "verify"]).unwrap();
        assert_eq!(s.batch_log, PathBuf::from("/data/delta/events.batches.jsonl"));
        assert_eq!(crate::table::AppIds::of(&s).for_partition(3), "idempipe-raw_events-3");
        assert_eq!(s.clickhouse.group, "idempipe-clickhouse");
        assert_eq!(s.clickhouse.kafka_brokers, DEFAULT_BROKERS);
    }
}
