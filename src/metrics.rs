//! Metric names and their recording in one place, and the HTTP endpoint that serves
//! them with `/healthz` and `/readyz`.
//!
//! Everything is recorded once per batch (or per maintenance run, or per lag probe),
//! never per event, through the functions here; the names are the constants below, so
//! dashboards and alerts have one list to read. Exposition is the `metrics` crate's
//! Prometheus recorder; the server is a few lines of tokio because the exporter's own
//! listener has no room for the health routes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::table::StoredKeys;

pub const EVENTS_IN: &str = "idempipe_events_in_total";
pub const EVENTS_INVALID: &str = "idempipe_events_invalid_total";
pub const DUPLICATES: &str = "idempipe_duplicates_total";
pub const EVENTS_INSERTED: &str = "idempipe_events_inserted_total";
pub const RECORDS_PRODUCED: &str = "idempipe_records_produced_total";
pub const BATCHES: &str = "idempipe_batches_total";
pub const BATCH_CONFLICTS: &str = "idempipe_batch_conflicts_total";
pub const BATCH_FAILED_ATTEMPTS: &str = "idempipe_batch_failed_attempts_total";
pub const BATCH_DURATION: &str = "idempipe_batch_duration_seconds";
pub const LAST_BATCH: &str = "idempipe_last_batch_timestamp_seconds";
pub const OFFSET_RESETS: &str = "idempipe_offset_resets_total";
pub const OFFSETS_LOST: &str = "idempipe_offsets_lost_total";
pub const CONSUMER_LAG: &str = "idempipe_consumer_lag";
pub const DELTA_VERSION: &str = "idempipe_delta_version";
pub const DELTA_LIVE_FILES: &str = "idempipe_delta_live_files";
pub const KEY_INDEX_KEYS: &str = "idempipe_key_index_keys";
pub const KEY_CACHE_BYTES: &str = "idempipe_key_cache_bytes";
pub const KEY_CACHE_KEYS: &str = "idempipe_key_cache_keys";
pub const KEY_CACHE_FILES_READ: &str = "idempipe_key_cache_files_read_total";
pub const KEY_CACHE_HITS: &str = "idempipe_key_cache_hits_total";
pub const MAINTENANCE: &str = "idempipe_maintenance_total";
pub const MAINTENANCE_FAILURES: &str = "idempipe_maintenance_failures_total";
pub const CLICKHOUSE_ROWS: &str = "idempipe_clickhouse_rows_inserted_total";
pub const CLICKHOUSE_REFUSED: &str = "idempipe_clickhouse_rows_refused_total";
pub const CLICKHOUSE_RETRIES: &str = "idempipe_clickhouse_insert_retries_total";
pub const COLUMNS_ADDED: &str = "idempipe_columns_added_total";
pub const CLICKHOUSE_SINK_LAG: &str = "idempipe_clickhouse_sink_lag";
pub const CLIENT_ERRORS: &str = "idempipe_client_errors_total";
pub const HEAP_ALLOCATED: &str = "idempipe_heap_allocated_bytes";
pub const HEAP_RESIDENT: &str = "idempipe_heap_resident_bytes";
pub const HEAP_THREAD_CACHED: &str = "idempipe_heap_thread_cached_bytes";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot install the metrics recorder: {0}")]
    Install(String),
    #[error("cannot listen on {addr} (`metrics_addr`): {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The process's recorder: installed on first use (a process has one global recorder).
pub fn handle() -> Result<PrometheusHandle, MetricsError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let buckets = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(BATCH_DURATION.into()), &buckets)
        .map_err(|e| MetricsError::Install(e.to_string()))?
        .install_recorder()
        .map_err(|e| MetricsError::Install(e.to_string()))?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_counter!(EVENTS_IN, "Messages read from the raw topic and processed in a committed batch.");
    describe_counter!(EVENTS_INVALID, "Messages refused by the contract and sent to the dead-letter topic.");
    describe_counter!(
        DUPLICATES,
        "Valid events not inserted: kind=in_batch (an earlier copy in the same batch) or kind=stored (the table holds the key)."
    );
    describe_counter!(EVENTS_INSERTED, "Rows inserted into the Delta table.");
    describe_counter!(RECORDS_PRODUCED, "Records acknowledged by Kafka, by topic (processed, dlq).");
    describe_counter!(BATCHES, "Batches committed to Delta.");
    describe_counter!(BATCH_CONFLICTS, "Batch attempts redone after another writer committed first.");
    describe_counter!(BATCH_FAILED_ATTEMPTS, "Batch attempts that failed and were retried.");
    describe_histogram!(BATCH_DURATION, "Seconds from the start of a batch's collection to its Delta commit.");
    describe_gauge!(LAST_BATCH, "Unix time of the last committed batch.");
    describe_counter!(
        OFFSET_RESETS,
        "Raw partitions read on from the broker's first offset because it no longer held the stored one \
         (fail_on_data_loss = false): kind=truncated (messages deleted unread) or kind=rewound (the topic starts over)."
    );
    describe_counter!(
        OFFSETS_LOST,
        "Raw-topic messages deleted by the broker before they were read (truncated resets)."
    );
    describe_gauge!(CONSUMER_LAG, "Messages on the raw topic not yet processed, per partition.");
    describe_gauge!(DELTA_VERSION, "The Delta table version after the last commit.");
    describe_gauge!(DELTA_LIVE_FILES, "Data files in the current Delta snapshot.");
    describe_gauge!(KEY_INDEX_KEYS, "Keys in the in-memory key index.");
    describe_gauge!(KEY_CACHE_BYTES, "Bytes of keys in the key cache (at most key_cache_bytes).");
    describe_gauge!(KEY_CACHE_KEYS, "Keys in the key cache.");
    describe_counter!(KEY_CACHE_FILES_READ, "Data files whose keys the key cache read.");
    describe_counter!(KEY_CACHE_HITS, "Candidate data files the key cache held when a batch needed them.");
    describe_counter!(
        MAINTENANCE,
        "Delta maintenance runs by kind (checkpoint, log_cleanup, compact, compact_lost_race, compact_deferred, vacuum)."
    );
    describe_counter!(MAINTENANCE_FAILURES, "Delta maintenance runs that failed, by kind.");
    describe_counter!(COLUMNS_ADDED, "Columns schema evolution added, by store (delta, clickhouse).");
    describe_counter!(CLICKHOUSE_ROWS, "Rows the ClickHouse sink inserted.");
    describe_counter!(CLICKHOUSE_REFUSED, "Rows ClickHouse refused on their own, sent to the dead-letter topic.");
    describe_counter!(CLICKHOUSE_RETRIES, "ClickHouse inserts retried.");
    describe_counter!(
        CLIENT_ERRORS,
        "Errors reported by a service's client, by service (kafka, clickhouse); errors that persist make /readyz fail."
    );
    describe_gauge!(
        CLICKHOUSE_SINK_LAG,
        "Records on the processed topic not yet loaded into ClickHouse, per partition."
    );
    describe_gauge!(
        HEAP_ALLOCATED,
        "Bytes allocated, the threads' caches included (the allocator's count, read at each scrape)."
    );
    describe_gauge!(
        HEAP_RESIDENT,
        "Bytes of the allocator's pages in memory: the allocated ones, freed ones not yet returned, its metadata."
    );
    describe_gauge!(
        HEAP_THREAD_CACHED,
        "Of the allocated bytes, those freed into the threads' caches for reuse: allocated minus these is what the program holds."
    );
}

/// The heap as the process's allocator counts it.
#[derive(Clone, Copy, Debug)]
pub struct HeapStats {
    /// Bytes allocated: what the program holds and, in `thread_cached`, what it freed into
    /// the threads' caches.
    pub allocated: u64,
    /// Bytes of the allocator's pages in memory (what it holds beyond `allocated` is
    /// freed memory not yet returned to the system, fragmentation and its metadata).
    pub resident: u64,
    /// Of `allocated`, bytes freed into the threads' caches for their next allocations
    /// (the program no longer holds them), if the allocator tells.
    pub thread_cached: Option<u64>,
}

static HEAP_STATS: OnceLock<fn() -> Option<HeapStats>> = OnceLock::new();

/// Lets the binary, which chooses the allocator, report its figures: read at each scrape
/// of /metrics as `idempipe_heap_allocated_bytes`, `idempipe_heap_resident_bytes` and
/// `idempipe_heap_thread_cached_bytes`. Without it (the library's tests) they are not reported.
pub fn report_heap_with(read: fn() -> Option<HeapStats>) {
    let _ = HEAP_STATS.set(read);
}

fn heap_gauges() {
    if let Some(stats) = HEAP_STATS.get().and_then(|read| read()) {
        gauge!(HEAP_ALLOCATED).set(stats.allocated as f64);
        gauge!(HEAP_RESIDENT).set(stats.resident as f64);
        if let Some(cached) = stats.thread_cached {
            gauge!(HEAP_THREAD_CACHED).set(cached as f64);
        }
    }
}

/// One failed attempt at a batch (counted as it fails, so an outage shows while it lasts).
pub(crate) fn batch_attempt_failed() {
    counter!(BATCH_FAILED_ATTEMPTS).increment(1);
}

/// A committed batch's figures ([`crate::batch_log::BatchRecord::figures`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchFigures {
    pub events_in: u64,
    pub invalid: u64,
    pub in_batch_duplicates: u64,
    pub stored_duplicates: u64,
    pub inserted: u64,
    pub conflicts: u32,
    pub delta_version: u64,
}

/// One committed batch.
pub(crate) fn batch_committed(record: &BatchFigures, duration: Duration) {
    counter!(EVENTS_IN).increment(record.events_in);
    counter!(EVENTS_INVALID).increment(record.invalid);
    counter!(DUPLICATES, "kind" => "in_batch").increment(record.in_batch_duplicates);
    counter!(DUPLICATES, "kind" => "stored").increment(record.stored_duplicates);
    counter!(EVENTS_INSERTED).increment(record.inserted);
    counter!(BATCHES).increment(1);
    counter!(BATCH_CONFLICTS).increment(u64::from(record.conflicts));
    histogram!(BATCH_DURATION).record(duration.as_secs_f64());
    gauge!(LAST_BATCH).set(crate::event::EventTime::now().micros() as f64 / 1e6);
    gauge!(DELTA_VERSION).set(record.delta_version as f64);
}

/// A partition read on from the broker's first offset, of `kind` (rewound or skipped),
/// with `lost` offsets skipped (see [`crate::kafka::ranges`]).
pub(crate) fn offset_reset(kind: &'static str, lost: Option<u64>) {
    counter!(OFFSET_RESETS, "kind" => kind).increment(1);
    counter!(OFFSETS_LOST).increment(lost.unwrap_or(0));
}

/// Records acknowledged on one of the pipeline's output topics (`processed` or `dlq`).
pub(crate) fn produced(topic: &'static str, records: usize) {
    counter!(RECORDS_PRODUCED, "topic" => topic).increment(records as u64);
}

/// The table's state after a batch's commit (a compaction shows at the next batch).
pub(crate) fn table_state(version: u64, live_files: usize, keys: Option<&StoredKeys>) {
    gauge!(DELTA_VERSION).set(version as f64);
    gauge!(DELTA_LIVE_FILES).set(live_files as f64);
    match keys {
        Some(StoredKeys::Index(index)) => gauge!(KEY_INDEX_KEYS).set(index.len() as f64),
        Some(StoredKeys::Cache(cache)) => {
            gauge!(KEY_CACHE_BYTES).set(cache.bytes() as f64);
            gauge!(KEY_CACHE_KEYS).set(cache.keys() as f64);
            let totals = cache.totals();
            counter!(KEY_CACHE_FILES_READ).absolute(totals.files_read);
            counter!(KEY_CACHE_HITS).absolute(totals.hits);
        }
        None => {}
    }
}

/// Lag per partition: its end minus the next offset to process.
pub fn consumer_lag(lag: &BTreeMap<i32, i64>) {
    for (p, lag) in lag {
        gauge!(CONSUMER_LAG, "partition" => p.to_string()).set(*lag as f64);
    }
}

pub fn clickhouse_sink_lag(lag: &BTreeMap<i32, i64>) {
    for (p, lag) in lag {
        gauge!(CLICKHOUSE_SINK_LAG, "partition" => p.to_string()).set(*lag as f64);
    }
}

pub(crate) fn clickhouse_loaded(rows: usize) {
    counter!(CLICKHOUSE_ROWS).increment(rows as u64);
}

/// Columns schema evolution added to the Delta table.
pub(crate) fn columns_added(columns: usize) {
    counter!(COLUMNS_ADDED, "store" => "delta").increment(columns as u64);
}

/// Columns the ClickHouse sink added to its table, following the Delta table's.
pub(crate) fn clickhouse_columns_added(columns: usize) {
    counter!(COLUMNS_ADDED, "store" => "clickhouse").increment(columns as u64);
}

/// Rows ClickHouse refused on their own (dead letters).
pub fn clickhouse_refused(rows: usize) {
    counter!(CLICKHOUSE_REFUSED).increment(rows as u64);
}

/// One failed ClickHouse insert that will be retried.
pub(crate) fn clickhouse_insert_retried() {
    counter!(CLICKHOUSE_RETRIES).increment(1);
}

/// One maintenance run of `kind` (checkpoint, log_cleanup, compact, compact_lost_race: another
/// compaction committed first, compact_deferred: a compaction put off for a backlog, vacuum).
pub fn maintenance(kind: &'static str, ok: bool) {
    if ok {
        counter!(MAINTENANCE, "kind" => kind).increment(1);
    } else {
        counter!(MAINTENANCE_FAILURES, "kind" => kind).increment(1);
    }
}

/// Liveness and readiness as the endpoint reports them: live while the process serves;
/// ready once the table is open and partitions are assigned, until shutdown begins, and
/// while no service's errors persist ([`service_error`]).
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Ready, or why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("not started, or stopping".to_owned());
        }
        match persistent_errors(Instant::now()) {
            problems if problems.is_empty() => Ok(()),
            problems => Err(problems.join("\n")),
        }
    }
}

/// Errors that come this close together form one streak.
const ERROR_STREAK_GAP: Duration = Duration::from_secs(30);
/// A streak this long makes the process unready.
const ERROR_STREAK_PERSISTS: Duration = Duration::from_secs(20);

/// One service's current streak of errors.
#[derive(Debug)]
struct Streak {
    first: Instant,
    last: Instant,
    reason: String,
    /// The service's client stopped for good ([`service_failed`]).
    stopped: bool,
}

static STREAKS: std::sync::Mutex<BTreeMap<&'static str, Streak>> = std::sync::Mutex::new(BTreeMap::new());

fn streaks() -> std::sync::MutexGuard<'static, BTreeMap<&'static str, Streak>> {
    STREAKS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One error of `service`'s client (`kafka`, `clickhouse`): counted, and part of a streak
/// that makes the process unready once it has lasted [`ERROR_STREAK_PERSISTS`], until
/// the service answers again ([`service_recovered`]) or no error comes for
/// [`ERROR_STREAK_GAP`].
pub fn service_error(service: &'static str, reason: &str) {
    service_error_at(service, reason, Instant::now());
}

fn service_error_at(service: &'static str, reason: &str, now: Instant) {
    counter!(CLIENT_ERRORS, "service" => service).increment(1);
    let mut streaks = streaks();
    match streaks.get_mut(service) {
        Some(streak) if now.saturating_duration_since(streak.last) <= ERROR_STREAK_GAP => {
            streak.last = now;
            streak.reason = reason.to_owned();
        }
        _ => {
            streaks.insert(service, Streak { first: now, last: now, reason: reason.to_owned(), stopped: false });
        }
    }
}

/// `service`'s client stopped with `reason` (the ClickHouse sink inside `run`): the
/// process stays unready until it ends.
pub(crate) fn service_failed(service: &'static str, reason: &str) {
    counter!(CLIENT_ERRORS, "service" => service).increment(1);
    let now = Instant::now();
    let streak = Streak { first: now, last: now, reason: format!("stopped: {reason}"), stopped: true };
    streaks().insert(service, streak);
}

/// `service` answered (a batch committed, an insert loaded): its streak ends.
pub fn service_recovered(service: &'static str) {
    let mut streaks = streaks();
    if streaks.get(service).is_some_and(|s| !s.stopped) {
        streaks.remove(service);
    }
}

/// The services whose errors persist at `now`, each with its last error.
fn persistent_errors(now: Instant) -> Vec<String> {
    streaks()
        .iter()
        .filter(|(_, s)| {
            s.stopped
                || (now.saturating_duration_since(s.last) <= ERROR_STREAK_GAP
                    && s.last.saturating_duration_since(s.first) >= ERROR_STREAK_PERSISTS)
        })
        .map(|(service, s)| {
            format!(
                "{service}: errors for {} s, the last: {}",
                s.last.saturating_duration_since(s.first).as_secs(),
                s.reason
            )
        })
        .collect()
}

/// The process's health, served with its metrics at `addr` when one is set
/// (`metrics_addr`, see [`serve`]).
pub(crate) fn serve_if(
    addr: Option<SocketAddr>,
    runtime: &tokio::runtime::Handle,
) -> Result<Arc<Health>, MetricsError> {
    let health = Arc::new(Health::default());
    if let Some(addr) = addr {
        serve(addr, runtime, health.clone())?;
    }
    Ok(health)
}

/// Binds `addr` now (so a bad or taken address fails at start-up) and serves
/// `/metrics`, `/healthz` and `/readyz` on `runtime` until the process ends. Returns the
/// bound address (`:0` picks a free port).
pub(crate) fn serve(
    addr: SocketAddr,
    runtime: &tokio::runtime::Handle,
    health: Arc<Health>,
) -> Result<SocketAddr, MetricsError> {
    let handle = handle()?;
    let bind = |source| MetricsError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let bound = listener.local_addr().map_err(bind)?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(bind)?
    };
    let upkeep = handle.clone();
    runtime.spawn(async move {
        // Histograms keep their samples until this drains them.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    runtime.spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let mut stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "metrics endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Every slot taken (slow or stuck clients): answer at once and close.
                tokio::spawn(async move {
                    let busy =
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n";
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        stream.write_all(busy.as_bytes()).await?;
                        stream.shutdown().await?;
                        // Closing with the request unread would reset the connection
                        // before the client reads the answer: drain it first.
                        let mut sink = [0_u8; 1024];
                        while stream.read(&mut sink).await? > 0 {}
                        Ok::<_, std::io::Error>(())
                    })
                    .await;
                });
                continue;
            };
            let (handle, health) = (handle.clone(), health.clone());
            tokio::spawn(async move {
                // A client that sends or reads slowly is cut off: it holds a slot no longer.
                let _ = tokio::time::timeout(REQUEST_TIME, answer(stream, handle, health)).await;
                drop(slot);
            });
        }
    });
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}

/// The most connections the endpoint serves at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request head.
const HEAD_TIME: Duration = Duration::from_secs(5);
/// How long one connection may last in all, the answer included.
const REQUEST_TIME: Duration = Duration::from_secs(10);

/// Answers one HTTP/1.1 request and closes the connection.
async fn answer(mut stream: tokio::net::TcpStream, handle: PrometheusHandle, health: Arc<Health>) {
    let mut buf = vec![0_u8; 8192];
    let mut len = 0;
    // Read up to the end of the request head (a scraper sends no body), within
    // HEAD_TIME in all.
    let deadline = tokio::time::Instant::now() + HEAD_TIME;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf[len..])).await {
            Ok(Ok(n)) if n > 0 => len += n,
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("");
    let path = words.next().unwrap_or("/").split('?').next().unwrap_or("/");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            heap_gauges();
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", handle.render())
        }
        ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET" | "HEAD", "/readyz") => match health.readiness() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_owned()),
            Err(why) => ("503 Service Unavailable", "text/plain", format!("not ready: {why}\n")),
        },
        ("GET" | "HEAD", _) => {
            ("404 Not Found", "text/plain", "not found: try /metrics, /healthz, /readyz\n".to_owned())
        }
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    if method != "HEAD" {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persists(service: &str, now: Instant) -> bool {
        persistent_errors(now).iter().any(|p| p.starts_with(&format!("{service}:")))
    }

    #[test]
    fn errors_make_the_process_unready_only_while_they_persist() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        service_error_at("test-streak", "refused", at(0));
        assert!(!persists("test-streak", at(1)), "one error is no trouble");
        service_error_at("test-streak", "refused", at(10));
        service_error_at("test-streak", "refused again", at(21));
        assert!(persists("test-streak", at(22)), "errors over 21 s");
        assert!(persistent_errors(at(22)).iter().any(|p| p.ends_with("the last: refused again")));
        assert!(!persists("test-streak", at(52)), "no error for more than 30 s: over");
        service_error_at("test-streak", "refused", at(60));
        assert!(!persists("test-streak", at(61)), "a new streak starts");
    }

    #[test]
    fn a_service_that_answers_ends_its_streak() {
        let t0 = Instant::now();
        service_error_at("test-recovered", "timeout", t0);
        service_error_at("test-recovered", "timeout", t0 + Duration::from_secs(25));
        assert!(persists("test-recovered", t0 + Duration::from_secs(26)));
        service_recovered("test-recovered");
        assert!(!persists("test-recovered", t0 + Duration::from_secs(26)));
    }
}
