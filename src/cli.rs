//! Command-line definitions: one struct per command. Every layered option can also come
//! from the config file and from `IDEMPIPE_<OPTION>`; see [`crate::config`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::options::OptionArgs;

/// idempipe: a Kafka to Delta Lake pipeline that makes replays harmless.
#[derive(Debug, Parser)]
#[command(name = "idempipe", version, about)]
pub struct Cli {
    /// TOML config file; its keys are the long option names in snake case.
    #[arg(long, global = true, env = "IDEMPIPE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the command's report as one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(flatten)]
    pub common: CommonArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command: every layered option (declared in
/// [`crate::config::options`]) and the librdkafka pass-through.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    pub options: OptionArgs,
    /// A librdkafka setting for every Kafka client, e.g. `--kafka security.protocol=SSL`
    /// (repeatable; also the `[kafka]` table of the file).
    #[arg(long = "kafka", global = true, value_name = "KEY=VALUE", value_parser = key_value)]
    pub kafka: Vec<(String, String)>,
    /// An object-store option for the table, e.g. `--storage aws_endpoint_url=http://…`
    /// (repeatable; also the `[storage]` table of the file; object_store's and delta-rs's
    /// names).
    #[arg(long = "storage", global = true, value_name = "KEY=VALUE", value_parser = key_value)]
    pub storage: Vec<(String, String)>,
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
    /// Benchmarks: write events of a prefill's history (or new ones on its dates) to a file.
    #[command(hide = true)]
    BenchEvents(BenchEventsArgs),
    /// Benchmarks: trickle probe events and report produce-to-visible-in-Delta latency
    /// (a processor must be running).
    #[command(hide = true)]
    BenchLatency(BenchLatencyArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every setting's effective value and where it came from (default, file,
    /// env, flag), secrets redacted.
    Show,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Also write a self-contained HTML page with charts to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Read this batch log instead of the one beside the Delta table.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {}

#[derive(Debug, Args)]
pub struct CompactArgs {
    /// Also run `OPTIMIZE TABLE … FINAL` on the ClickHouse table (merges away the
    /// duplicate rows a ReplacingMergeTree holds until its background merges).
    #[arg(long)]
    pub clickhouse: bool,
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
}

#[derive(Debug, Args)]
pub struct BenchPrefillArgs {
    /// Rows to write.
    #[arg(long)]
    pub rows: u64,
    /// Rows per commit.
    #[arg(long, default_value_t = 1_000_000)]
    pub chunk: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 1_000_003)]
    pub seed: u64,
    /// Days of event time the rows spread over, from 2024-01-01 (as `generate --days`).
    #[arg(long, default_value_t = 3)]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct BenchEventsArgs {
    /// The prefill's `--rows`, `--days` and `--seed`: the history the events belong to.
    #[arg(long)]
    pub rows: u64,
    #[arg(long, default_value_t = 3)]
    pub days: u32,
    #[arg(long, default_value_t = 1_000_003)]
    pub seed: u64,
    /// `h`: events the prefill wrote; anything else: new events on the same dates.
    #[arg(long, default_value = "h")]
    pub namespace: String,
    /// The days to draw from (0 = 2024-01-01), e.g. `10,20,30`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub on_days: Vec<u32>,
    /// Events to write (distinct).
    #[arg(long)]
    pub count: u64,
    #[arg(long)]
    pub out: PathBuf,
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
    /// Lines in event-time order, as live traffic arrives (each re-send within 1% of the
    /// events after its original); without it they are shuffled through the whole file.
    #[arg(long)]
    pub time_order: bool,
    /// The format the file will be produced in (`produce --format`): with `protobuf`,
    /// every user id is a string and every time RFC 3339 text (the built-in Protobuf
    /// schema's fields have one type); the counts are the same in every format.
    #[arg(long, value_enum, default_value_t)]
    pub format: crate::registry::encode::Format,
    /// The file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// JSON-lines file: one message per line.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Send at this steady rate instead of as fast as possible.
    #[arg(long, value_name = "EVENTS_PER_SEC")]
    pub rate: Option<f64>,
    /// Write each line as it is (`json`), or in the Confluent wire format as `avro`,
    /// `protobuf` or `json-schema`, its schema registered at `schema_registry_url`. A
    /// line the schema cannot hold as it is goes as it is (the processor makes it a dead
    /// letter).
    #[arg(long, value_enum, default_value_t)]
    pub format: crate::registry::encode::Format,
    /// The schema to register (an `.avsc`, `.proto` or JSON Schema file); by default the
    /// built-in schema of the generator's events.
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    /// The Protobuf message the lines are (a full name); by default the schema's first.
    #[arg(long, value_name = "NAME")]
    pub message: Option<String>,
    /// The subject the schema is registered under: `topic` (`<topic>-value`), `record`
    /// (the record's full name) or `topic-record` (`<topic>-<record>`).
    #[arg(long, value_enum, default_value_t)]
    pub subject_strategy: crate::registry::encode::SubjectStrategy,
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
pub struct ReconcileArgs {}

#[derive(Debug, Args)]
pub struct VerifyArgs {}
