//! The `idempipe` binary: parse, load the configuration, dispatch. The only place that
//! uses `anyhow`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use idempipe::cli::{Cli, Command, ConfigCommand};
use idempipe::commands::{
    analyze, bench, compact, generate, produce, reconcile, run, setup, sink, status, vacuum, verify,
};
use idempipe::config::{FileConfig, LogFormat, Settings};

fn main() -> ExitCode {
    match main_inner() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, as text or JSON lines, filtered by `IDEMPIPE_LOG`.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDEMPIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(idempipe::DEFAULT_LOG_FILTER));
    let json = format == LogFormat::Json;
    tracing_subscriber::registry()
        .with(filter)
        .with(json.then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_writer(std::io::stderr)
        }))
        .with((!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr)))
        .init();
}

/// Parses the command line, noting which options came from the environment (clap
/// merges them with flags; `config show` tells them apart).
fn parse_cli() -> Cli {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    cli.common.from_env = matches
        .ids()
        .filter(|id| matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::EnvVariable))
        .map(|id| id.as_str().to_owned())
        .collect();
    cli
}

fn main_inner() -> anyhow::Result<()> {
    let cli = parse_cli();
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let settings = Settings::resolve(file, &cli.common)?;
    init_logging(settings.log_format);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    match cli.command {
        Command::Config(ConfigCommand::Show { json }) => {
            let entries = settings.entries();
            if json {
                let map: serde_json::Map<String, serde_json::Value> =
                    entries.into_iter().map(|(k, v, o)| (k, serde_json::json!({ "value": v, "origin": o }))).collect();
                println!("{}", serde_json::Value::Object(map));
            } else {
                let width = entries.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
                for (key, value, origin) in entries {
                    println!("{key:<width$}  {value}  ({origin})");
                }
            }
        }
        Command::Analyze(args) => {
            let log = args.log.unwrap_or_else(|| settings.batch_log_path());
            let report = analyze::analyze(&log, args.html.as_deref())?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_table());
            }
            if let Some(html) = &args.html {
                eprintln!("wrote {}", html.display());
            }
        }
        Command::Status(args) => {
            let status = runtime.block_on(status::status(&settings))?;
            if args.json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                print!("{}", status.to_table());
            }
        }
        Command::Compact(args) => {
            let report = runtime.block_on(compact::compact(&settings, args.clickhouse))?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "delta: {} files compacted into {} in {} partitions; live files {} -> {}; version {}",
                    report.delta.files_removed,
                    report.delta.files_added,
                    report.delta.partitions,
                    report.live_files_before,
                    report.live_files_after,
                    report.delta.version
                );
                if report.clickhouse_optimized {
                    println!("clickhouse: OPTIMIZE TABLE ... FINAL done");
                }
            }
        }
        Command::Vacuum(args) => {
            let outcome = runtime.block_on(vacuum::vacuum(&settings, args.retention, args.dry_run, args.full))?;
            if args.json {
                println!("{}", serde_json::to_string(&outcome)?);
            } else {
                for file in &outcome.files {
                    println!("{}{file}", if outcome.dry_run { "would delete " } else { "deleted " });
                }
                println!(
                    "{} {} files; table version {}",
                    if outcome.dry_run { "would delete" } else { "deleted" },
                    outcome.files.len(),
                    outcome.version
                );
            }
        }
        Command::Setup(args) => {
            let report = runtime.block_on(setup::setup(&settings, !args.skip_clickhouse))?;
            for (topic, created) in &report.topics {
                println!("topic {topic}: {}", if *created { "created" } else { "exists" });
            }
            println!("delta table {}: version {}", report.delta_path, report.delta_version);
            if let Some(ch) = &report.clickhouse {
                println!(
                    "clickhouse table {}: {} ({:?} layout, server {})",
                    ch.table,
                    if ch.created { "created" } else { "exists" },
                    ch.layout,
                    ch.server_version
                );
                if let Some([queue, view]) = &ch.kafka_engine {
                    println!("clickhouse kafka engine: {queue} -> {view} -> {}", ch.table);
                }
            }
        }
        Command::SinkClickhouse(args) => {
            let summary = sink::sink(settings, &runtime, args.until_idle)?;
            println!(
                "loaded {} rows into ClickHouse in {} batches ({} retries, {} unreadable records)",
                summary.rows, summary.batches, summary.retries, summary.unreadable
            );
        }
        Command::Reconcile(args) => {
            let summary = runtime.block_on(reconcile::reconcile(&settings))?;
            if args.json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "delta keys {}, clickhouse keys {}: {} missing, {} inserted, {} in ClickHouse only",
                    summary.delta_keys, summary.clickhouse_keys, summary.missing, summary.inserted, summary.extra
                );
            }
        }
        Command::Generate(args) => {
            let spec = generate::Spec {
                unique: args.unique,
                duplicates: args.duplicates,
                invalid: args.invalid,
                seed: args.seed,
                days: args.days,
            };
            spec.check().map_err(anyhow::Error::msg)?;
            let expected =
                generate::write_file(&spec, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
            if args.json {
                println!("{}", serde_json::to_string(&expected)?);
            } else {
                println!("wrote {}", args.out.display());
                println!("lines          {}", expected.lines);
                println!("valid lines    {}", expected.valid_lines);
                println!("distinct keys  {}  (expected delta_rows)", expected.distinct_keys);
                println!("duplicates     {}", expected.duplicates);
                println!("invalid        {}  (expected dlq_records)", expected.invalid);
            }
        }
        Command::Produce(args) => {
            let _guard = runtime.enter();
            let summary = produce::produce(&settings, &args.input, args.rate)?;
            if args.json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!(
                    "sent {} messages ({} bytes) to {} in {:.2} s: {:.0} messages/s",
                    summary.messages, summary.bytes, settings.topics.raw, summary.seconds, summary.messages_per_sec
                );
            }
        }
        Command::Run(args) => {
            let summary = run::run(settings, &runtime, args.until_idle)?;
            println!(
                "processed {} batches: {} events in, {} invalid, {} duplicates, {} inserted",
                summary.batches, summary.events_in, summary.invalid, summary.duplicates, summary.inserted
            );
        }
        Command::Drain(args) => {
            let topic = args.topic.unwrap_or_else(|| settings.topics.raw.clone());
            let started = std::time::Instant::now();
            let mut bytes = 0_u64;
            let messages = idempipe::kafka::read_topic(&settings, &topic, |m| {
                bytes += rdkafka::Message::payload(m).map_or(0, <[u8]>::len) as u64;
            })?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({
                    "topic": topic, "messages": messages, "bytes": bytes, "seconds": seconds,
                    "messages_per_sec": messages as f64 / seconds.max(1e-9),
                })
            );
        }
        Command::BenchPrefill(args) => {
            let summary =
                runtime.block_on(bench::prefill(&settings, args.rows, args.chunk.max(1), args.seed, args.days))?;
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::BenchLatency(args) => {
            let summary = bench::latency(&settings, &runtime, args.rate, args.seconds)?;
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Verify(args) => {
            let report = runtime.block_on(verify::verify(&settings));
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_table());
            }
        }
    }
    Ok(())
}
