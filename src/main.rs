//! The `idempipe` binary: parse, load the configuration, dispatch, and print the
//! command's report as text or (`--json`) JSON. The only place that uses `anyhow`.

use std::fmt::Display;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use idempipe::cli::{Cli, Command, ConfigCommand};
use idempipe::commands::{
    analyze, bench, compact, config, drain, generate, produce, reconcile, run, setup, sink_clickhouse, status, vacuum,
    verify,
};
use idempipe::config::{FileConfig, LogFormat, Settings};
use serde::Serialize;

/// jemalloc serves every allocation of the process, Rust's and librdkafka's: glibc's
/// malloc keeps memory freed into its per-thread arenas, so under it the processor's
/// resident memory climbs for as long as it runs while its live heap stays at a few MiB
/// between batches (TESTING.md says how to measure both).
/// Its settings are compiled in (`.cargo/config.toml`: freed memory goes back to the
/// system after 100 ms, from a background thread); `MALLOC_CONF` overrides them.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's own count of the heap, for `/metrics`: what the program holds against what
/// the allocator keeps in memory tells a leak from memory freed but not yet returned.
/// All three figures come from one snapshot of jemalloc's statistics (its JSON statistics
/// writer refreshes them once), so the threads' caches are a part of the allocated bytes
/// counted at the same moment. `tcache_bytes`, of the merged arenas: objects freed into
/// the threads' caches (up to 32 KiB each, kept for the same thread's next allocations and
/// counted as allocated); tikv-jemalloc-ctl wraps no mallctl for it. With some 50 threads
/// (tokio's blocking pool, librdkafka's) they can be most of the allocated bytes under
/// load (TESTING.md, "Heap profiles").
fn heap_stats() -> Option<idempipe::metrics::HeapStats> {
    use tikv_jemalloc_ctl::stats_print::{Options, stats_print};
    // Options has a private field: set what is wanted on the default.
    let mut options = Options::default();
    options.json_format = true;
    options.skip_constants = true;
    options.skip_per_arena = true;
    options.skip_bin_size_classes = true;
    options.skip_large_size_classes = true;
    options.skip_mutex_statistics = true;
    let mut json = Vec::new();
    stats_print(&mut json, options).ok()?;
    let stats: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let bytes = |pointer: &str| stats.pointer(pointer).and_then(serde_json::Value::as_u64);
    Some(idempipe::metrics::HeapStats {
        allocated: bytes("/jemalloc/stats/allocated")?,
        resident: bytes("/jemalloc/stats/resident")?,
        thread_cached: bytes("/jemalloc/stats.arenas/merged/tcache_bytes"),
    })
}

fn main() -> ExitCode {
    idempipe::metrics::report_heap_with(heap_stats);
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
        // Colour only on a terminal: a file or pipe gets plain text.
        .with((!json).then(|| {
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr)
        }))
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

/// Prints a command's report: one JSON object with `--json`, its text otherwise.
fn emit(report: &(impl Serialize + Display), json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
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
    let json = cli.json;
    match cli.command {
        Command::Config(ConfigCommand::Show) => emit(&config::show(&settings), json),
        Command::Analyze(args) => {
            let log = args.log.unwrap_or_else(|| settings.batch_log.clone());
            let report = analyze::analyze(&log, args.html.as_deref())?;
            if let Some(html) = &args.html {
                eprintln!("wrote {}", html.display());
            }
            emit(&report, json)
        }
        Command::Status(_) => emit(&runtime.block_on(status::status(&settings))?, json),
        Command::Compact(args) => emit(&runtime.block_on(compact::compact(&settings, args.clickhouse))?, json),
        Command::Vacuum(args) => {
            emit(&runtime.block_on(vacuum::vacuum(&settings, args.retention, args.dry_run, args.full))?, json)
        }
        Command::Setup(args) => emit(&runtime.block_on(setup::setup(&settings, !args.skip_clickhouse))?, json),
        Command::SinkClickhouse(args) => {
            emit(&sink_clickhouse::sink_clickhouse(settings, &runtime, args.until_idle)?, json)
        }
        Command::Reconcile(_) => emit(&runtime.block_on(reconcile::reconcile(&settings))?, json),
        Command::Generate(args) => {
            let spec = generate::Spec {
                unique: args.unique,
                duplicates: args.duplicates,
                invalid: args.invalid,
                seed: args.seed,
                days: args.days,
                time_order: args.time_order,
                text_fields: args.format == idempipe::registry::encode::Format::Protobuf,
            };
            emit(&generate::generate_file(&spec, &args.out)?, json)
        }
        Command::Produce(args) => {
            let _guard = runtime.enter();
            let encoding = produce::Encoding {
                format: args.format,
                schema: args.schema.clone(),
                message: args.message.clone(),
                strategy: args.subject_strategy,
            };
            emit(&produce::produce_as(&settings, &args.input, args.rate, &encoding)?, json)
        }
        Command::Run(args) => emit(&run::run(settings, &runtime, args.until_idle)?, json),
        Command::Drain(args) => emit(&drain::drain(&settings, args.topic)?, json),
        Command::BenchPrefill(args) => emit(
            &runtime.block_on(bench::prefill(&settings, args.rows, args.chunk.max(1), args.seed, args.days))?,
            json,
        ),
        Command::BenchEvents(args) => {
            let history = bench::History { total: args.rows, days: args.days, seed: args.seed };
            emit(&bench::events(history, &args.namespace, &args.on_days, args.count, &args.out)?, json)
        }
        Command::BenchLatency(args) => emit(&bench::latency(&settings, &runtime, args.rate, args.seconds)?, json),
        Command::Verify(_) => emit(&runtime.block_on(verify::verify(&settings)), json),
    }
}
