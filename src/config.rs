//! The effective configuration: defaults, then the TOML file, then `IDEMPIPE_*`
//! environment variables, then command-line flags, each overriding the one before.
//!
//! Invariant: a [`Settings`] value is valid. Every bad value fails in [`Settings::resolve`]
//! with an error that names its key and where it came from, before any service is touched.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::CommonArgs;
use crate::event::DEFAULT_MAX_MESSAGE_BYTES;

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

/// The TOML file's keys: the same names as the long flags, in snake case. Unknown keys
/// are an error, so a typo never silently falls back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub brokers: Option<String>,
    pub raw_topic: Option<String>,
    pub processed_topic: Option<String>,
    pub dlq_topic: Option<String>,
    pub group: Option<String>,
    pub delta_path: Option<PathBuf>,
    pub clickhouse_url: Option<String>,
    pub clickhouse_database: Option<String>,
    pub clickhouse_table: Option<String>,
    pub clickhouse_user: Option<String>,
    pub clickhouse_password: Option<String>,
    pub clickhouse_ingest: Option<ClickHouseIngest>,
    pub clickhouse_group: Option<String>,
    pub clickhouse_in_run: Option<bool>,
    #[serde(default, with = "humantime_serde_opt")]
    pub clickhouse_trigger: Option<Duration>,
    pub clickhouse_max_batch_rows: Option<usize>,
    pub clickhouse_kafka_brokers: Option<String>,
    pub partitions: Option<i32>,
    pub max_message_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    pub trigger: Option<Duration>,
    pub max_batch_events: Option<usize>,
    pub max_batch_bytes: Option<usize>,
    pub consumer_mode: Option<ConsumerMode>,
    pub key_check: Option<KeyCheck>,
    pub log_format: Option<LogFormat>,
    pub metrics_addr: Option<String>,
    pub checkpoint_every: Option<u64>,
    #[serde(default, with = "humantime_serde_opt")]
    pub log_retention: Option<Duration>,
    pub compact_every: Option<String>,
    pub vacuum_every: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub vacuum_retention: Option<Duration>,
    /// librdkafka settings passed through to every Kafka client, e.g.
    /// `"max.poll.interval.ms" = "10000"` or SASL and TLS settings.
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
}

impl FileConfig {
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
    /// coordinator (tansu 0.6.0's is unreliable, see the README).
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
    /// An in-memory index of every key in the table, built from Delta on start and kept
    /// in step with every commit (any writer's); new rows are appended by a commit that
    /// conflicts with any file added to the same dates since the check. Cost per batch
    /// does not grow with the table; memory does (20 to 40 bytes per key as the hash table fills and doubles; 28.5 at 10 M keys).
    #[default]
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

/// Delta table upkeep done by `run` between batches (never during one, so it cannot
/// race the processor's own commits).
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

/// Where ClickHouse is, which table holds the events, and how the sink loads it.
#[derive(Debug, Clone)]
pub struct ClickHouseSettings {
    pub url: String,
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
    /// The most rows in one insert.
    pub max_batch_rows: NonZeroUsize,
    /// The Kafka brokers as ClickHouse's Kafka engine reaches them.
    pub kafka_brokers: String,
}

/// The validated, effective configuration shared by every command.
#[derive(Debug, Clone)]
pub struct Settings {
    pub brokers: String,
    pub topics: Topics,
    /// Consumer group of the processor; also the prefix of the Delta txn app ids.
    pub group: String,
    pub delta_path: PathBuf,
    pub clickhouse: ClickHouseSettings,
    /// Partitions of the raw and processed topics that `setup` creates.
    pub partitions: i32,
    pub max_message_bytes: usize,
    pub batch: BatchLimits,
    pub consumer_mode: ConsumerMode,
    pub key_check: KeyCheck,
    pub log_format: LogFormat,
    /// Where `run` and `sink-clickhouse` serve `/metrics`, `/healthz` and `/readyz`;
    /// `None`: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    pub maintenance: Maintenance,
    /// librdkafka pass-through settings, applied to every client after ours.
    pub kafka: BTreeMap<String, String>,
    /// Where each key's value came from (`kafka.<option>` for pass-through settings).
    pub origins: BTreeMap<String, Origin>,
}

pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_DELTA_PATH: &str = "./data/delta/events";
pub const DEFAULT_CLICKHOUSE_URL: &str = "http://127.0.0.1:8123";
pub const DEFAULT_TRIGGER: Duration = Duration::from_secs(15);
/// The shortest trigger interval: below it the per-commit cost of Delta dominates.
pub const MIN_TRIGGER: Duration = Duration::from_millis(100);
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9898";
const HOUR: Duration = Duration::from_secs(3600);
/// The longest retention or interval: about ten years (longer ones overflow the date
/// arithmetic of Delta's retention checks).
pub const MAX_MAINTENANCE_DURATION: Duration = Duration::from_secs(3650 * 24 * 3600);

impl Settings {
    /// Layers defaults, the file (if any), and the environment and flags (which clap has
    /// already merged, flags winning), then validates the result.
    pub fn resolve(file: FileConfig, args: &CommonArgs) -> Result<Self, ConfigError> {
        let mut o = Origins { args, map: BTreeMap::new() };
        let group = o.pick("group", &args.group, file.group, "idempipe".into());
        let brokers = o.pick("brokers", &args.brokers, file.brokers, DEFAULT_BROKERS.into());
        let clickhouse_group =
            o.pick("clickhouse_group", &args.clickhouse_group, file.clickhouse_group, format!("{group}-clickhouse"));
        let clickhouse_kafka_brokers = o.pick(
            "clickhouse_kafka_brokers",
            &args.clickhouse_kafka_brokers,
            file.clickhouse_kafka_brokers,
            brokers.clone(),
        );
        let metrics_addr = o.pick("metrics_addr", &args.metrics_addr, file.metrics_addr, DEFAULT_METRICS_ADDR.into());
        let compact_every = o.pick("compact_every", &args.compact_every, file.compact_every, "1h".into());
        let vacuum_every = o.pick("vacuum_every", &args.vacuum_every, file.vacuum_every, "1d".into());
        let mut kafka = file.kafka;
        for key in kafka.keys() {
            o.map.insert(format!("kafka.{key}"), Origin::File);
        }
        for (key, value) in &args.kafka {
            kafka.insert(key.clone(), value.clone());
            o.map.insert(format!("kafka.{key}"), Origin::Flag);
        }
        let settings = Settings {
            brokers,
            topics: Topics {
                raw: o.pick("raw_topic", &args.raw_topic, file.raw_topic, "raw_events".into()),
                processed: o.pick(
                    "processed_topic",
                    &args.processed_topic,
                    file.processed_topic,
                    "processed_events".into(),
                ),
                dlq: o.pick("dlq_topic", &args.dlq_topic, file.dlq_topic, "raw_events_dlq".into()),
            },
            group,
            delta_path: o.pick("delta_path", &args.delta_path, file.delta_path, DEFAULT_DELTA_PATH.into()),
            clickhouse: ClickHouseSettings {
                url: o.pick("clickhouse_url", &args.clickhouse_url, file.clickhouse_url, DEFAULT_CLICKHOUSE_URL.into()),
                database: o.pick(
                    "clickhouse_database",
                    &args.clickhouse_database,
                    file.clickhouse_database,
                    "idempipe".into(),
                ),
                table: o.pick("clickhouse_table", &args.clickhouse_table, file.clickhouse_table, "events".into()),
                user: o.pick_opt("clickhouse_user", &args.clickhouse_user, file.clickhouse_user),
                password: o.pick_opt("clickhouse_password", &args.clickhouse_password, file.clickhouse_password),
                ingest: o.pick(
                    "clickhouse_ingest",
                    &args.clickhouse_ingest,
                    file.clickhouse_ingest,
                    ClickHouseIngest::default(),
                ),
                group: clickhouse_group,
                in_run: o.pick("clickhouse_in_run", &args.clickhouse_in_run, file.clickhouse_in_run, false),
                trigger: o.pick(
                    "clickhouse_trigger",
                    &args.clickhouse_trigger,
                    file.clickhouse_trigger,
                    Duration::from_secs(1),
                ),
                max_batch_rows: non_zero(
                    "clickhouse_max_batch_rows",
                    o.pick(
                        "clickhouse_max_batch_rows",
                        &args.clickhouse_max_batch_rows,
                        file.clickhouse_max_batch_rows,
                        100_000,
                    ),
                )?,
                kafka_brokers: clickhouse_kafka_brokers,
            },
            partitions: o.pick("partitions", &args.partitions, file.partitions, 4),
            max_message_bytes: o.pick(
                "max_message_bytes",
                &args.max_message_bytes,
                file.max_message_bytes,
                DEFAULT_MAX_MESSAGE_BYTES,
            ),
            batch: BatchLimits {
                trigger: o.pick("trigger", &args.trigger, file.trigger, DEFAULT_TRIGGER),
                max_events: non_zero(
                    "max_batch_events",
                    o.pick("max_batch_events", &args.max_batch_events, file.max_batch_events, 200_000),
                )?,
                max_bytes: non_zero(
                    "max_batch_bytes",
                    o.pick("max_batch_bytes", &args.max_batch_bytes, file.max_batch_bytes, 256 << 20),
                )?,
            },
            consumer_mode: o.pick("consumer_mode", &args.consumer_mode, file.consumer_mode, ConsumerMode::default()),
            key_check: o.pick("key_check", &args.key_check, file.key_check, KeyCheck::default()),
            log_format: o.pick("log_format", &args.log_format, file.log_format, LogFormat::default()),
            metrics_addr: optional("metrics_addr", &metrics_addr, |s| {
                s.parse::<SocketAddr>()
                    .map_err(|e| format!("{s:?} is not an address such as 127.0.0.1:9898 (or \"off\"): {e}"))
            })?,
            maintenance: Maintenance {
                checkpoint_every: NonZeroU64::new(o.pick(
                    "checkpoint_every",
                    &args.checkpoint_every,
                    file.checkpoint_every,
                    100,
                ))
                .ok_or(ConfigError::Invalid { key: "checkpoint_every", reason: "must be at least 1".into() })?,
                log_retention: o.pick("log_retention", &args.log_retention, file.log_retention, 30 * 24 * HOUR),
                compact_every: optional("compact_every", &compact_every, parse_interval)?,
                vacuum_every: optional("vacuum_every", &vacuum_every, parse_interval)?,
                vacuum_retention: o.pick(
                    "vacuum_retention",
                    &args.vacuum_retention,
                    file.vacuum_retention,
                    7 * 24 * HOUR,
                ),
            },
            kafka,
            origins: o.map,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Every setting as `(key, value, origin)`, in key order, secrets redacted: what
    /// `config show` prints.
    pub fn entries(&self) -> Vec<(String, String, Origin)> {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        let every =
            |d: Option<Duration>| d.map_or_else(|| "off".to_owned(), |d| humantime::format_duration(d).to_string());
        let c = &self.clickhouse;
        let m = &self.maintenance;
        let mut out: Vec<(String, String)> = vec![
            ("brokers".into(), self.brokers.clone()),
            ("raw_topic".into(), self.topics.raw.clone()),
            ("processed_topic".into(), self.topics.processed.clone()),
            ("dlq_topic".into(), self.topics.dlq.clone()),
            ("group".into(), self.group.clone()),
            ("delta_path".into(), self.delta_path.display().to_string()),
            ("clickhouse_url".into(), c.url.clone()),
            ("clickhouse_database".into(), c.database.clone()),
            ("clickhouse_table".into(), c.table.clone()),
            ("clickhouse_user".into(), c.user.clone().unwrap_or_else(|| "(server default)".into())),
            ("clickhouse_password".into(), if c.password.is_some() { REDACTED.into() } else { "(none)".into() }),
            ("clickhouse_ingest".into(), value_name(c.ingest)),
            ("clickhouse_group".into(), c.group.clone()),
            ("clickhouse_in_run".into(), c.in_run.to_string()),
            ("clickhouse_trigger".into(), d(c.trigger)),
            ("clickhouse_max_batch_rows".into(), c.max_batch_rows.to_string()),
            ("clickhouse_kafka_brokers".into(), c.kafka_brokers.clone()),
            ("partitions".into(), self.partitions.to_string()),
            ("max_message_bytes".into(), self.max_message_bytes.to_string()),
            ("trigger".into(), d(self.batch.trigger)),
            ("max_batch_events".into(), self.batch.max_events.to_string()),
            ("max_batch_bytes".into(), self.batch.max_bytes.to_string()),
            ("consumer_mode".into(), value_name(self.consumer_mode)),
            ("key_check".into(), value_name(self.key_check)),
            ("log_format".into(), value_name(self.log_format)),
            ("metrics_addr".into(), self.metrics_addr.map_or_else(|| "off".into(), |a| a.to_string())),
            ("checkpoint_every".into(), m.checkpoint_every.to_string()),
            ("log_retention".into(), d(m.log_retention)),
            ("compact_every".into(), every(m.compact_every)),
            ("vacuum_every".into(), every(m.vacuum_every)),
            ("vacuum_retention".into(), d(m.vacuum_retention)),
        ];
        out.extend(
            self.kafka
                .iter()
                .map(|(k, v)| (format!("kafka.{k}"), if is_secret(k) { REDACTED.into() } else { v.clone() })),
        );
        out.sort();
        out.into_iter()
            .map(|(k, v)| {
                let origin = self.origins.get(&k).copied().unwrap_or(Origin::Default);
                (k, v, origin)
            })
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.into() });
        for (key, value) in [
            ("brokers", &self.brokers),
            ("raw_topic", &self.topics.raw),
            ("processed_topic", &self.topics.processed),
            ("dlq_topic", &self.topics.dlq),
            ("group", &self.group),
            ("clickhouse_url", &self.clickhouse.url),
            ("clickhouse_database", &self.clickhouse.database),
            ("clickhouse_table", &self.clickhouse.table),
            ("clickhouse_group", &self.clickhouse.group),
            ("clickhouse_kafka_brokers", &self.clickhouse.kafka_brokers),
        ] {
            if value.trim().is_empty() {
                return invalid(key, "must not be empty");
            }
        }
        for (key, topic) in [
            ("raw_topic", &self.topics.raw),
            ("processed_topic", &self.topics.processed),
            ("dlq_topic", &self.topics.dlq),
        ] {
            if topic.len() > 249 || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                return invalid(
                    key,
                    &format!("{topic:?} is not a Kafka topic name (ASCII letters, digits, `.`, `_`, `-`)"),
                );
            }
        }
        if self.topics.raw == self.topics.processed
            || self.topics.raw == self.topics.dlq
            || self.topics.processed == self.topics.dlq
        {
            return invalid("raw_topic", "the raw, processed and dead-letter topics must be three different topics");
        }
        if self.delta_path.as_os_str().is_empty() {
            return invalid("delta_path", "must not be empty");
        }
        if self.clickhouse.url.starts_with("https://") {
            return invalid(
                "clickhouse_url",
                "https:// is not supported by this build (no TLS in its ClickHouse client); use http:// on a \
                 trusted network or a TLS-terminating proxy",
            );
        }
        if !self.clickhouse.url.starts_with("http://") {
            return invalid("clickhouse_url", &format!("{:?} is not an http:// URL", self.clickhouse.url));
        }
        for (key, name) in
            [("clickhouse_database", &self.clickhouse.database), ("clickhouse_table", &self.clickhouse.table)]
        {
            let mut chars = name.chars();
            let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 200 {
                return invalid(
                    key,
                    &format!(
                        "{name:?} is not a plain identifier (ASCII letters, digits and `_`, not starting with a digit)"
                    ),
                );
            }
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
        if self.clickhouse.trigger < Duration::from_millis(10) {
            return invalid(
                "clickhouse_trigger",
                &format!("{} is below the minimum of 10ms", humantime::format_duration(self.clickhouse.trigger)),
            );
        }
        if !(1..=10_000).contains(&self.partitions) {
            return invalid("partitions", &format!("{} is not between 1 and 10000", self.partitions));
        }
        if self.max_message_bytes == 0 {
            return invalid("max_message_bytes", "must be at least 1");
        }
        // librdkafka checks each name and value as it is set, without connecting.
        let mut kafka = rdkafka::ClientConfig::new();
        for (k, v) in &self.kafka {
            kafka.set(k, v);
        }
        if let Err(e) = kafka.create_native_config() {
            let key = match &e {
                rdkafka::error::KafkaError::ClientConfig(_, _, key, _) => key.clone(),
                _ => String::new(),
            };
            return Err(ConfigError::InvalidKafka { key, reason: e.to_string() });
        }
        let m = &self.maintenance;
        if m.log_retention < Duration::from_secs(60) {
            return invalid(
                "log_retention",
                "must be at least 1m (a reader loading the table needs the entries after the last checkpoint)",
            );
        }
        if m.vacuum_retention < Duration::from_secs(60) {
            return invalid(
                "vacuum_retention",
                "must be at least 1m (readers at older versions and files being written need it)",
            );
        }
        for (key, value) in [
            ("log_retention", Some(m.log_retention)),
            ("vacuum_retention", Some(m.vacuum_retention)),
            ("compact_every", m.compact_every),
            ("vacuum_every", m.vacuum_every),
        ] {
            if value.is_some_and(|v| v > MAX_MAINTENANCE_DURATION) {
                return invalid(key, "must be at most 3650days");
            }
        }
        for (key, every) in [("compact_every", m.compact_every), ("vacuum_every", m.vacuum_every)] {
            if every.is_some_and(|e| e < Duration::from_secs(1)) {
                return invalid(key, "must be at least 1s, or \"off\"");
            }
        }
        if self.batch.trigger < MIN_TRIGGER {
            return invalid(
                "trigger",
                &format!("{} is below the minimum of 100ms", humantime::format_duration(self.batch.trigger)),
            );
        }
        Ok(())
    }

    /// The Delta txn app id that records this group's progress on one partition of the
    /// raw topic: `<group>-<topic>-<partition>`.
    pub fn txn_app_id(&self, partition: i32) -> String {
        format!("{}-{}-{partition}", self.group, self.topics.raw)
    }

    /// The JSON-lines batch log, beside the table (not inside it, where `vacuum` would
    /// delete it as an unknown file).
    pub fn batch_log_path(&self) -> PathBuf {
        let mut name = self.delta_path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "events".into());
        name.push(".batches.jsonl");
        self.delta_path.with_file_name(name)
    }
}

fn non_zero(key: &'static str, value: usize) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or(ConfigError::Invalid { key, reason: "must be at least 1".into() })
}

/// Records where each picked value came from.
struct Origins<'a> {
    args: &'a CommonArgs,
    map: BTreeMap<String, Origin>,
}

impl Origins<'_> {
    /// The flag's (or environment's: clap merged them) value, else the file's, else the
    /// default.
    fn pick<T: Clone>(&mut self, key: &'static str, flag: &Option<T>, file: Option<T>, default: T) -> T {
        self.pick_opt(key, flag, file).unwrap_or(default)
    }

    fn pick_opt<T: Clone>(&mut self, key: &'static str, flag: &Option<T>, file: Option<T>) -> Option<T> {
        let (value, origin) = match (flag, file) {
            (Some(v), _) if self.args.from_env.contains(key) => (Some(v.clone()), Origin::Env),
            (Some(v), _) => (Some(v.clone()), Origin::Flag),
            (None, Some(v)) => (Some(v), Origin::File),
            (None, None) => (None, Origin::Default),
        };
        self.map.insert(key.to_owned(), origin);
        value
    }
}

const REDACTED: &str = "<redacted>";

/// Whether a librdkafka setting holds a secret (passwords, keys, tokens).
fn is_secret(key: &str) -> bool {
    ["password", "secret", "jaas", "token", "key.pem", "credential"].iter().any(|s| key.contains(s))
}

/// A clap value enum's name as it is written in flags and the file.
fn value_name(v: impl clap::ValueEnum) -> String {
    v.to_possible_value().map_or_else(String::new, |p| p.get_name().to_owned())
}

/// `"off"` (or `"none"`, `"0"`) is `None`, anything else goes through `parse`.
fn optional<T>(
    key: &'static str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, ConfigError> {
    match text.trim() {
        "off" | "none" | "0" => Ok(None),
        t => parse(t).map(Some).map_err(|reason| ConfigError::Invalid { key, reason }),
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration such as \"1h\" (or \"off\"): {e}"))
}

/// Durations in the file are strings such as `"15s"` or `"200ms"`.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text).map(Some).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration such as \"15s\" or \"200ms\": {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn resolve(file: &str, argv: &[&str]) -> Result<Settings, ConfigError> {
        let cli = crate::cli::Cli::try_parse_from(argv).unwrap();
        Settings::resolve(toml::from_str(file).unwrap(), &cli.common)
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
    fn the_example_config_parses() {
        let text = include_str!("../idempipe.example.toml");
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
    fn the_batch_log_sits_beside_the_table() {
        let s = resolve("delta_path = \"/data/delta/events\"", &["idempipe", "verify"]).unwrap();
        assert_eq!(s.batch_log_path(), PathBuf::from("/data/delta/events.batches.jsonl"));
        assert_eq!(s.txn_app_id(3), "idempipe-raw_events-3");
        assert_eq!(s.clickhouse.group, "idempipe-clickhouse");
        assert_eq!(s.clickhouse.kafka_brokers, DEFAULT_BROKERS);
    }
}
