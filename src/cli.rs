//! Command-line definitions: one struct per command. Every layered option can also come
//! from the config file and from `IDEMPIPE_<OPTION>`; see [`crate::config`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// idempipe: a Kafka to Delta Lake pipeline that makes replays harmless.
#[derive(Debug, Parser)]
#[command(name = "idempipe", version, about)]
pub struct Cli {
    /// TOML config file; its keys are the long option names in snake case.
    #[arg(long, global = true, env = "IDEMPIPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub common: CommonArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command. `None` means: not given as a flag nor in the
/// environment, so the file or the default decides.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// Kafka bootstrap servers [default: 127.0.0.1:9092].
    #[arg(long, global = true, env = "IDEMPIPE_BROKERS")]
    pub brokers: Option<String>,
    /// Topic the events arrive on [default: raw_events].
    #[arg(long, global = true, env = "IDEMPIPE_RAW_TOPIC")]
    pub raw_topic: Option<String>,
    /// Topic newly stored events are sent to [default: processed_events].
    #[arg(long, global = true, env = "IDEMPIPE_PROCESSED_TOPIC")]
    pub processed_topic: Option<String>,
    /// Dead-letter topic for refused messages [default: raw_events_dlq].
    #[arg(long, global = true, env = "IDEMPIPE_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,
    /// Consumer group of the processor [default: idempipe].
    #[arg(long, global = true, env = "IDEMPIPE_GROUP")]
    pub group: Option<String>,
    /// Delta table location [default: ./data/delta/events].
    #[arg(long, global = true, env = "IDEMPIPE_DELTA_PATH", value_name = "PATH")]
    pub delta_path: Option<PathBuf>,
    /// ClickHouse HTTP endpoint [default: http://127.0.0.1:8123].
    #[arg(long, global = true, env = "IDEMPIPE_CLICKHOUSE_URL", value_name = "URL")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database [default: idempipe].
    #[arg(long, global = true, env = "IDEMPIPE_CLICKHOUSE_DATABASE")]
    pub clickhouse_database: Option<String>,
    /// ClickHouse events table [default: events].
    #[arg(long, global = true, env = "IDEMPIPE_CLICKHOUSE_TABLE")]
    pub clickhouse_table: Option<String>,
    /// ClickHouse user [default: the server's default user].
    #[arg(long, global = true, env = "IDEMPIPE_CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,
    /// ClickHouse password (prefer the environment variable to the flag).
    #[arg(long, global = true, env = "IDEMPIPE_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<String>,
    /// How events reach ClickHouse: `sink` (idempipe's own) or `kafka-engine`
    /// (ClickHouse consumes the processed topic; created by `setup`) [default: sink].
    #[arg(long, global = true, env = "IDEMPIPE_CLICKHOUSE_INGEST", value_enum)]
    pub clickhouse_ingest: Option<crate::config::ClickHouseIngest>,
    /// Consumer group of the ClickHouse sink [default: <group>-clickhouse].
    #[arg(long, global = true, env = "IDEMPIPE_CLICKHOUSE_GROUP")]
    pub clickhouse_group: Option<String>,
    /// Also run the ClickHouse sink inside `run` [default: false].
    #[arg(
        long,
        global = true,
        env = "IDEMPIPE_CLICKHOUSE_IN_RUN",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub clickhouse_in_run: Option<bool>,
    /// How long the sink collects before an insert, e.g. 1s [default: 1s].
    #[arg(long, global = true, env = "IDEMPIPE_CLICKHOUSE_TRIGGER", value_parser = humantime::parse_duration)]
    pub clickhouse_trigger: Option<Duration>,
    /// Most rows in one ClickHouse insert [default: 100000].
    #[arg(long, global = true, env = "IDEMPIPE_CLICKHOUSE_MAX_BATCH_ROWS", value_name = "N")]
    pub clickhouse_max_batch_rows: Option<usize>,
    /// Kafka brokers as ClickHouse's Kafka engine reaches them [default: --brokers].
    #[arg(long, global = true, env = "IDEMPIPE_CLICKHOUSE_KAFKA_BROKERS")]
    pub clickhouse_kafka_brokers: Option<String>,
    /// Partitions of the raw and processed topics created by `setup` [default: 4].
    #[arg(long, global = true, env = "IDEMPIPE_PARTITIONS")]
    pub partitions: Option<i32>,
    /// Largest accepted message; larger ones go to the dead-letter topic [default: 1048576].
    #[arg(long, global = true, env = "IDEMPIPE_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Micro-batch trigger interval, e.g. 15s or 200ms (at least 100ms) [default: 15s].
    #[arg(long, global = true, env = "IDEMPIPE_TRIGGER", value_parser = humantime::parse_duration)]
    pub trigger: Option<Duration>,
    /// Most messages in one micro-batch [default: 200000].
    #[arg(long, global = true, env = "IDEMPIPE_MAX_BATCH_EVENTS", value_name = "N")]
    pub max_batch_events: Option<usize>,
    /// Most message bytes in one micro-batch [default: 268435456].
    #[arg(long, global = true, env = "IDEMPIPE_MAX_BATCH_BYTES", value_name = "BYTES")]
    pub max_batch_bytes: Option<usize>,
    /// How the processor gets partitions: `assign` (all of them, no group membership)
    /// or `group` (share them with other instances) [default: assign].
    #[arg(long, global = true, env = "IDEMPIPE_CONSUMER_MODE", value_enum)]
    pub consumer_mode: Option<crate::config::ConsumerMode>,
    /// How the processor finds events the table already holds: `index` (every key in
    /// memory, built from Delta on start; 20 to 40 bytes per key) or `scan` (read the
    /// batch's date partitions each batch; no memory, cost grows with the table)
    /// [default: index].
    #[arg(long, global = true, env = "IDEMPIPE_KEY_CHECK", value_enum)]
    pub key_check: Option<crate::config::KeyCheck>,
    /// Log lines as `text` (for a terminal) or `json` (one object per line) [default: text].
    #[arg(long, global = true, env = "IDEMPIPE_LOG_FORMAT", value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
    /// Where `run` and `sink-clickhouse` serve /metrics, /healthz and /readyz, or `off`
    /// [default: 127.0.0.1:9898].
    #[arg(long, global = true, env = "IDEMPIPE_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// A Delta checkpoint every N table versions [default: 100].
    #[arg(long, global = true, env = "IDEMPIPE_CHECKPOINT_EVERY", value_name = "N")]
    pub checkpoint_every: Option<u64>,
    /// How long Delta log entries are kept behind a checkpoint, e.g. 30days [default: 30days].
    #[arg(long, global = true, env = "IDEMPIPE_LOG_RETENTION", value_parser = humantime::parse_duration)]
    pub log_retention: Option<Duration>,
    /// How often `run` compacts small data files, e.g. 1h, or `off` [default: 1h].
    #[arg(long, global = true, env = "IDEMPIPE_COMPACT_EVERY", value_name = "DURATION")]
    pub compact_every: Option<String>,
    /// How often `run` vacuums removed files, e.g. 1day, or `off` [default: 1d].
    #[arg(long, global = true, env = "IDEMPIPE_VACUUM_EVERY", value_name = "DURATION")]
    pub vacuum_every: Option<String>,
    /// How long removed data files stay in storage before a vacuum deletes them
    /// [default: 7days].
    #[arg(long, global = true, env = "IDEMPIPE_VACUUM_RETENTION", value_parser = humantime::parse_duration)]
    pub vacuum_retention: Option<Duration>,
    /// A librdkafka setting for every Kafka client, e.g. `--kafka security.protocol=SSL`
    /// (repeatable; also the `[kafka]` table of the file).
    #[arg(long = "kafka", global = true, value_name = "KEY=VALUE", value_parser = key_value)]
    pub kafka: Vec<(String, String)>,
    /// The options above whose value came from the environment rather than a flag
    /// (filled by `main` from clap's matches; for `config show`).
    #[arg(skip)]
    pub from_env: std::collections::BTreeSet<String>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the topics, the Delta table and the ClickHouse schema; running it again
    /// changes nothing.
    Setup(SetupArgs),
    /// Write a JSON-lines file of events with exactly known duplicate and invalid counts.
    Generate(GenerateArgs),
    /// Send a JSON-lines file to the raw topic, in bulk or as a steady trickle.
    Produce(ProduceArgs),
    /// Run the stream processor.
    Run(RunArgs),
    /// Count what every store holds, and compare Delta's keys with ClickHouse's.
    Verify(VerifyArgs),
    /// Load the processed topic into ClickHouse (the built-in sink).
    SinkClickhouse(SinkArgs),
    /// Insert into ClickHouse every Delta row whose key ClickHouse lacks.
    Reconcile(ReconcileArgs),
    /// Report per-batch throughput, duplicates, phases and skew from the batch log.
    Analyze(AnalyzeArgs),
    /// Show how far the processor and the ClickHouse sink are: lag per partition, the
    /// last batch, the Delta version.
    Status(StatusArgs),
    /// Compact the Delta table's small files (safe while `run` writes); optionally
    /// `OPTIMIZE TABLE … FINAL` in ClickHouse.
    Compact(CompactArgs),
    /// Delete data files the Delta table no longer uses, once older than the retention.
    Vacuum(VacuumArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Read a topic end to end with a bare consumer and report the rate: the ceiling
    /// that benchmarks compare the processor with.
    #[command(hide = true)]
    Drain(DrainArgs),
    /// Benchmarks: write generated rows straight into the Delta table.
    #[command(hide = true)]
    BenchPrefill(BenchPrefillArgs),
    /// Benchmarks: trickle probe events and report produce-to-visible-in-Delta latency
    /// (a processor must be running).
    #[command(hide = true)]
    BenchLatency(BenchLatencyArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every setting's effective value and where it came from (default, file,
    /// env, flag), secrets redacted.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Print the report as JSON (every batch and the summary).
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML page with charts to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Read this batch log instead of the one beside the Delta table.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Also run `OPTIMIZE TABLE … FINAL` on the ClickHouse table (merges away the
    /// duplicate rows a ReplacingMergeTree holds until its background merges).
    #[arg(long)]
    pub clickhouse: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VacuumArgs {
    /// Delete files removed longer ago than this [default: vacuum_retention].
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub retention: Option<Duration>,
    /// List what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete files the log never mentions (left by failed writes), if older than
    /// the retention.
    #[arg(long)]
    pub full: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchPrefillArgs {
    /// Rows to write.
    #[arg(long)]
    pub rows: u64,
    /// Rows per commit.
    #[arg(long, default_value_t = 1_000_000)]
    pub chunk: u64,
    /// Generator seed of the first commit (each commit uses the next one).
    #[arg(long, default_value_t = 1_000_003)]
    pub seed: u64,
    /// Days of event time the rows spread over (as `generate --days`).
    #[arg(long, default_value_t = 3)]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct BenchLatencyArgs {
    /// Probe events per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to send.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Leave ClickHouse alone (a pipeline without the speed layer).
    #[arg(long)]
    pub skip_clickhouse: bool,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// Topic to read [default: the raw topic].
    #[arg(long)]
    pub topic: Option<String>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Events with distinct dedup keys.
    #[arg(long)]
    pub unique: u64,
    /// Exact re-sends of earlier lines.
    #[arg(long, default_value_t = 0)]
    pub duplicates: u64,
    /// Invalid lines of varied kinds.
    #[arg(long, default_value_t = 0)]
    pub invalid: u64,
    /// Seed: the same seed gives the same file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Days of event time the events spread over.
    #[arg(long, default_value_t = 3)]
    pub days: u32,
    /// The file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Print the expected counts as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// JSON-lines file: one message per line.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Send at this steady rate instead of as fast as possible.
    #[arg(long, value_name = "EVENTS_PER_SEC")]
    pub rate: Option<f64>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Exit 0 once every partition is caught up and nothing new arrived for this long.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub until_idle: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Exit 0 once every partition is loaded and nothing new arrived for this long.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub until_idle: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}
