//! The effective configuration: defaults, then the TOML file, then `IDEMPIPE_*`
//! environment variables, then command-line flags, each overriding the one before.
//!
//! Invariant: a [`Settings`] value is valid. Every bad value fails in [`Settings::resolve`]
//! with an error that names its key and where it came from, before any service is touched.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
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
    /// librdkafka pass-through settings, applied to every client after ours.
    pub kafka: BTreeMap<String, String>,
}

pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_DELTA_PATH: &str = "./data/delta/events";
pub const DEFAULT_CLICKHOUSE_URL: &str = "http://127.0.0.1:8123";
pub const DEFAULT_TRIGGER: Duration = Duration::from_secs(15);
/// The shortest trigger interval: below it the per-commit cost of Delta dominates.
pub const MIN_TRIGGER: Duration = Duration::from_millis(100);

impl Settings {
    /// Layers defaults, the file (if any), and the environment and flags (which clap has
    /// already merged, flags winning), then validates the result.
    pub fn resolve(file: FileConfig, args: &CommonArgs) -> Result<Self, ConfigError> {
        fn pick<T>(flag: &Option<T>, file: Option<T>, default: T) -> T
        where
            T: Clone,
        {
            flag.clone().or(file).unwrap_or(default)
        }
        let group = pick(&args.group, file.group, "idempipe".into());
        let brokers = pick(&args.brokers, file.brokers, DEFAULT_BROKERS.into());
        let settings = Settings {
            brokers: brokers.clone(),
            topics: Topics {
                raw: pick(&args.raw_topic, file.raw_topic, "raw_events".into()),
                processed: pick(&args.processed_topic, file.processed_topic, "processed_events".into()),
                dlq: pick(&args.dlq_topic, file.dlq_topic, "raw_events_dlq".into()),
            },
            group: group.clone(),
            delta_path: pick(&args.delta_path, file.delta_path, DEFAULT_DELTA_PATH.into()),
            clickhouse: ClickHouseSettings {
                url: pick(&args.clickhouse_url, file.clickhouse_url, DEFAULT_CLICKHOUSE_URL.into()),
                database: pick(&args.clickhouse_database, file.clickhouse_database, "idempipe".into()),
                table: pick(&args.clickhouse_table, file.clickhouse_table, "events".into()),
                user: args.clickhouse_user.clone().or(file.clickhouse_user),
                password: args.clickhouse_password.clone().or(file.clickhouse_password),
                ingest: pick(&args.clickhouse_ingest, file.clickhouse_ingest, ClickHouseIngest::default()),
                group: pick(&args.clickhouse_group, file.clickhouse_group, format!("{group}-clickhouse")),
                in_run: args.clickhouse_in_run.or(file.clickhouse_in_run).unwrap_or(false),
                trigger: pick(&args.clickhouse_trigger, file.clickhouse_trigger, Duration::from_secs(1)),
                max_batch_rows: non_zero(
                    "clickhouse_max_batch_rows",
                    pick(&args.clickhouse_max_batch_rows, file.clickhouse_max_batch_rows, 100_000),
                )?,
                kafka_brokers: pick(&args.clickhouse_kafka_brokers, file.clickhouse_kafka_brokers, brokers),
            },
            partitions: pick(&args.partitions, file.partitions, 4),
            max_message_bytes: pick(&args.max_message_bytes, file.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES),
            batch: BatchLimits {
                trigger: pick(&args.trigger, file.trigger, DEFAULT_TRIGGER),
                max_events: non_zero("max_batch_events", pick(&args.max_batch_events, file.max_batch_events, 200_000))?,
                max_bytes: non_zero("max_batch_bytes", pick(&args.max_batch_bytes, file.max_batch_bytes, 256 << 20))?,
            },
            consumer_mode: pick(&args.consumer_mode, file.consumer_mode, ConsumerMode::default()),
            key_check: pick(&args.key_check, file.key_check, KeyCheck::default()),
            kafka: file.kafka,
        };
        settings.validate()?;
        Ok(settings)
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
