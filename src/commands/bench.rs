//! Benchmark helpers (hidden commands, used by `scripts/bench.sh`):
//! - `bench-prefill`: fills the Delta table with generated rows directly, so that the
//!   pipeline can be measured against a table that already holds millions of rows;
//! - `bench-latency`: sends a steady trickle of probe events, each carrying its send time,
//!   watches the table's versions for the commits that make them visible, and reports
//!   the produce-to-visible latency distribution.
//!
//! Both go through the library's own paths: the table's check and insert, the raw
//! topic's sender.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use deltalake::kernel::Transaction;

pub use crate::commands::generate::History;

use crate::commands::generate;
use crate::commands::produce::{ProduceFileError, RawSender};
use crate::config::Settings;
use crate::dedup;
use crate::event::{self, EventTime};
use crate::kafka::KafkaFailure;
use crate::shutdown::Shutdown;
use crate::table::{DeltaError, EventTable, Location, Row};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error("building the Arrow batch failed: {0}")]
    Arrow(#[from] deltalake::arrow::error::ArrowError),
    #[error("{missing} of {sent} probe events did not become visible in Delta within {waited:?}")]
    NotVisible { sent: u64, missing: u64, waited: Duration },
    #[error(transparent)]
    Produce(#[from] ProduceFileError),
    #[error("the Delta log watcher {0}")]
    Watcher(String),
}

/// What `bench-prefill` wrote.
#[derive(Debug, serde::Serialize)]
pub struct PrefillSummary {
    pub rows: u64,
    pub commits: u64,
    pub seconds: f64,
    pub version: u64,
}

/// Writes the first `rows` events of a [`History`] of `rows` events over `days` days
/// (seed `seed`) into the table, in time order, in commits of `chunk` rows, each checked
/// against the table like a pipeline batch with the key cache (a chunk's times follow
/// the last's, so the check reads almost nothing).
pub async fn prefill(
    settings: &Settings,
    rows: u64,
    chunk: u64,
    seed: u64,
    days: u32,
) -> Result<PrefillSummary, BenchError> {
    let started = Instant::now();
    settings.delta_path.check_put_if_absent().await.map_err(DeltaError::from)?;
    let mut table = EventTable::open(&settings.delta_path).await?;
    // The prefill writes the default identity's events.
    table.check_identity(&event::Identity::default())?;
    table.enable_key_cache(settings.key_cache_bytes)?;
    let history = History { total: rows, days, seed };
    let (mut written, mut commits) = (0_u64, 0_u64);
    while written < rows {
        let n = chunk.min(rows - written);
        let parsed: Vec<Row> = (written..written + n)
            .map(|i| {
                let e = history.event("h", i);
                Row {
                    key: event::DedupKey::compute(&e.user_id, e.event_type, e.time),
                    parts: vec![e.user_id, e.event_type.to_owned()],
                    time: e.time,
                    payload: Some(e.line),
                    values: Vec::new(),
                    source_partition: -1,
                    source_offset: i as i64,
                    unplaced: None,
                }
            })
            .collect();
        let (parsed, _) = dedup::first_of_each_key(parsed, |r| r.key);
        let new = table.new_rows(&parsed).await?;
        let batch = table.columns().batch(&new, -1, EventTime::now())?;
        // A txn of the prefill's own, so the commit is never empty of progress.
        let txns = [Transaction::new("idempipe-bench-prefill", commits as i64)];
        table.insert(batch, &txns, serde_json::json!({ "idempipe.bench": "prefill" })).await?;
        written += n;
        commits += 1;
        tracing::info!(written, rows, "prefill");
    }
    Ok(PrefillSummary { rows: written, commits, seconds: started.elapsed().as_secs_f64(), version: table.version() })
}

/// What `bench-events` wrote.
#[derive(Debug, serde::Serialize)]
pub struct EventsSummary {
    pub events: u64,
    pub dates: u32,
}

/// Writes `count` distinct events of namespace `namespace` of a [`History`] to `out` as
/// JSON lines, in random order: indices drawn from the days `days_chosen`. `h`, the
/// prefill's namespace, gives events the table holds (at most all of those days'); any
/// other gives new events on the same dates, as many as asked (when the days hold fewer
/// indices, each is used again under the namespace followed by a round number).
pub fn events(
    history: History,
    namespace: &str,
    days_chosen: &[u32],
    count: u64,
    out: &std::path::Path,
) -> Result<EventsSummary, std::io::Error> {
    use std::io::Write;
    let ranges: Vec<std::ops::Range<u64>> = days_chosen.iter().map(|d| history.day(*d)).collect();
    let indices: Vec<u64> = ranges.iter().flat_map(Clone::clone).collect();
    let available = indices.len() as u64;
    let mut rng = generate::SplitMix64(history.seed ^ 0x5EED);
    let count = if namespace == "h" { count.min(available) } else { count };
    // (round, position in `indices`), drawn without repeats.
    let mut chosen: HashSet<(u64, u64)> = HashSet::new();
    let rounds = count.div_ceil(available.max(1));
    while (chosen.len() as u64) < count && available > 0 {
        chosen.insert((rng.below(rounds), rng.below(available)));
    }
    let mut order: Vec<(u64, u64)> = chosen.into_iter().collect();
    order.sort_unstable();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    for (round, k) in &order {
        let namespace = if *round == 0 { namespace.to_owned() } else { format!("{namespace}{round}_") };
        writeln!(file, "{}", history.event(&namespace, indices[*k as usize]).line)?;
    }
    file.flush()?;
    Ok(EventsSummary { events: order.len() as u64, dates: days_chosen.len() as u32 })
}

/// Produce-to-visible latency of a trickle, in milliseconds.
#[derive(Debug, serde::Serialize)]
pub struct LatencySummary {
    pub events: u64,
    pub rate: f64,
    pub commits: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Sends `rate` probe events a second for `seconds`, each with its send time in
/// `sent_us`, while a thread watches the table and notes when each version appears;
/// then reads the probes back from Delta and maps each to the version that stored it
/// (by batch id). A running processor (`idempipe run`) must be consuming the raw topic.
pub fn latency(
    settings: &Settings,
    runtime: &tokio::runtime::Runtime,
    rate: f64,
    seconds: f64,
) -> Result<LatencySummary, BenchError> {
    // Checks the rate and that the raw topic exists, before anything starts.
    let mut sender = RawSender::new(settings, Some(rate))?;
    let start_version = runtime.block_on(EventTable::open(&settings.delta_path))?.version();
    let stop = Shutdown::new();
    let watcher = {
        let (stop, path, handle) = (stop.clone(), settings.delta_path.clone(), runtime.handle().clone());
        std::thread::spawn(move || handle.block_on(watch_versions(&path, start_version, &stop)))
    };

    let run_id = now_us();
    let total = (rate * seconds).round() as u64;
    let mut keys = HashSet::new();
    for n in 0..total {
        let time = EventTime::now();
        let sent_us = time.micros();
        let line = format!(
            r#"{{"user_id":"latency-{run_id}-{n}","event_type":"latency_probe","timestamp":"{time}","sent_us":{sent_us}}}"#
        );
        if let Ok(e) = event::parse(Some(line.as_bytes()), usize::MAX) {
            keys.insert(e.key.to_string());
        }
        sender.send(line.as_bytes(), Some(format!("latency-{n}").as_bytes()))?;
    }
    sender.finish()?;

    // Wait until every probe is in Delta.
    let waited = Instant::now();
    let rows = loop {
        let rows = runtime.block_on(async {
            let table = EventTable::open(&settings.delta_path).await?;
            table.rows_with_keys(&keys).await
        })?;
        if rows.len() as u64 >= total {
            break rows;
        }
        if waited.elapsed() > Duration::from_secs(120) {
            stop.request();
            return Err(BenchError::NotVisible {
                sent: total,
                missing: total - rows.len() as u64,
                waited: waited.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    stop.request();
    let seen = watcher.join().map_err(|_| BenchError::Watcher("panicked".into()))??;
    let batch_ids = runtime.block_on(async {
        let table = EventTable::open(&settings.delta_path).await?;
        let newest = table.version();
        table.batch_ids(newest.saturating_sub(start_version) as usize).await
    })?;
    let commits = seen.len() as u64;
    let visible_at: HashMap<i64, i64> =
        seen.into_iter().filter_map(|(version, at)| Some((*batch_ids.get(&version)?, at))).collect();

    let mut latencies: Vec<f64> = rows
        .iter()
        .filter_map(|r| {
            let payload: serde_json::Value = serde_json::from_str(&r.payload).ok()?;
            let sent = payload.get("sent_us")?.as_i64()?;
            let at = visible_at.get(&r.batch_id)?;
            Some((at - sent) as f64 / 1_000.0)
        })
        .collect();
    if (latencies.len() as u64) < total {
        tracing::warn!(
            measured = latencies.len(),
            total,
            "some probes could not be matched to the commit that stored them"
        );
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies.get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or(f64::NAN)
    };
    Ok(LatencySummary {
        events: latencies.len() as u64,
        rate,
        commits,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
    })
}

/// Asks the log store every millisecond for the commit after `after`, then the next, …,
/// and notes when each was first seen; ends (after a last look) once `stop` is set. One
/// entry is asked for each time, not a listing of the log: the watcher shares the
/// machine with the processor it measures.
async fn watch_versions(path: &Location, after: u64, stop: &Shutdown) -> Result<BTreeMap<u64, i64>, BenchError> {
    let table = EventTable::open(path).await?;
    let mut seen = BTreeMap::new();
    let mut next = after + 1;
    loop {
        let last_round = stop.is_requested();
        if table.has_commit(next).await? {
            seen.insert(next, now_us());
            next += 1;
            continue;
        }
        if last_round {
            return Ok(seen);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn now_us() -> i64 {
    EventTime::now().micros()
}

/// The bench commands' reports print as one JSON line either way: `scripts/bench.sh`
/// reads them.
macro_rules! json_display {
    ($($ty:ty),+) => {$(
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                writeln!(f, "{}", serde_json::to_string(self).map_err(|_| std::fmt::Error)?)
            }
        }
    )+};
}
json_display!(PrefillSummary, EventsSummary, LatencySummary);
