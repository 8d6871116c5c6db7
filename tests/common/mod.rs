//! Helpers for tests against the real services: each test gets its own topics, group
//! and Delta table, so tests run in parallel on one cluster. The harness that runs the
//! built binary ([`Harness`]) is here; each service's helpers are in a module of their
//! own ([`kafka`], [`clickhouse`], [`s3`], [`spark`]; certificates in [`tls`]).
#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod clickhouse;
pub mod kafka;
pub mod registry;
pub mod s3;
pub mod spark;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use clickhouse::*;
pub use kafka::*;
#[allow(unused_imports)]
pub use registry::*;
pub use s3::*;
pub use tls::*;

/// Longest a `run --until-idle` may take in a test: far above the seconds it needs.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// Fails the test with a clear message when the services are not running.
pub fn require_services() {
    let brokers = brokers();
    let up = std::net::TcpStream::connect_timeout(&brokers.parse().unwrap(), Duration::from_secs(2)).is_ok();
    assert!(up, "no Kafka broker on {brokers}: run `scripts/services.sh up`, or the tests with scripts/test.sh");
}

/// One isolated pipeline: topics, group and table of its own.
pub struct Harness {
    pub name: String,
    /// The test's directory: table, config, logs.
    pub root: PathBuf,
    pub config: PathBuf,
    /// The S3 endpoint of a table on the tests' S3 server (see [`Harness::on_s3`]).
    s3: Option<String>,
    /// Where the processor writes its batch log.
    batch_log: PathBuf,
    /// The first of a test's pipelines (not an [`Harness::instance`]): drops the test's
    /// ClickHouse table at the end.
    owner: bool,
    /// Removes the directory at the end, unless `IDEMPIPE_TEST_KEEP` is set.
    _cleanup: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Harness {
    pub fn new(test: &str) -> Self {
        Self::with_options(test, "")
    }

    /// A pipeline whose config file also has `extra` (top-level TOML lines).
    pub fn with_options(test: &str, extra: &str) -> Self {
        Self::with_brokers(test, &brokers(), extra)
    }

    /// A pipeline on the broker at `brokers` (a test's private broker, say).
    pub fn with_brokers(test: &str, brokers: &str, extra: &str) -> Self {
        Self::build(test, brokers, None, extra)
    }

    /// A pipeline whose table lives on the tests' S3 server ([`s3_endpoint`], bucket
    /// `idempipe`), reached at `endpoint` (the server, or a proxy in front of it), with
    /// the batch log in the test's directory.
    pub fn on_s3(test: &str, endpoint: &str) -> Self {
        Self::build(test, &brokers(), Some(endpoint), "")
    }

    /// [`Harness::on_s3`] on the tests' S3 server, with `extra` in the config file.
    pub fn on_s3_with_options(test: &str, extra: &str) -> Self {
        Self::build(test, &brokers(), Some(&s3_endpoint()), extra)
    }

    /// A directory of the test's own: removed at the end unless `IDEMPIPE_TEST_KEEP` is set.
    fn directory(test: &str) -> (PathBuf, Option<tempfile::TempDir>) {
        let dir = tempfile::Builder::new().prefix(&format!("idempipe-{test}-")).tempdir().unwrap();
        let root = dir.path().to_owned();
        if std::env::var_os("IDEMPIPE_TEST_KEEP").is_some() {
            eprintln!("keeping {}", root.display());
            let _ = dir.keep();
            (root, None)
        } else {
            (root, Some(dir))
        }
    }

    fn build(test: &str, brokers: &str, s3: Option<&str>, extra: &str) -> Self {
        require_services();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("{test}_{}_{n}_{nanos}", std::process::id());
        let (root, cleanup) = Self::directory(test);
        let config = root.join("idempipe.toml");
        // Beside a local table (its default); set explicitly for a table on S3.
        let batch_log = root.join("delta/events.batches.jsonl");
        let (table, storage) = match s3 {
            None => (format!("delta_path = \"{}\"", root.join("delta/events").display()), String::new()),
            Some(endpoint) => (
                format!("delta_path = \"s3://{S3_BUCKET}/{name}/events\"\nbatch_log = \"{}\"", batch_log.display()),
                s3_options(endpoint).iter().fold("\n[storage]\n".to_owned(), |t, (k, v)| t + &format!("{k} = {v:?}\n")),
            ),
        };
        std::fs::write(
            &config,
            format!(
                r#"
brokers = "{brokers}"
raw_topic = "{name}_raw"
processed_topic = "{name}_processed"
dlq_topic = "{name}_dlq"
group = "{name}"
{table}
clickhouse_table = "{name}"
trigger = "500ms"
clickhouse_trigger = "300ms"
metrics_addr = "127.0.0.1:0"
{extra}

[kafka]
"max.poll.interval.ms" = "10000"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
{storage}"#,
            ),
        )
        .unwrap();
        Self { name, root, config, s3: s3.map(str::to_owned), batch_log, owner: true, _cleanup: cleanup }
    }

    /// Adds librdkafka settings to the config file's `[kafka]` table.
    pub fn with_kafka_settings(self, settings: &[(String, String)]) -> Self {
        let lines: String = settings.iter().map(|(k, v)| format!("{k:?} = {v:?}\n")).collect();
        let text =
            std::fs::read_to_string(&self.config).unwrap().replace("\n[kafka]\n", &format!("\n[kafka]\n{lines}"));
        std::fs::write(&self.config, text).unwrap();
        self
    }

    /// Another instance of the same pipeline, as on another machine: a working directory
    /// of its own (config file, batch log, logs), sharing only the table, the broker's
    /// topics and group, and ClickHouse with `self`.
    pub fn instance(&self, label: &str) -> Self {
        let (root, cleanup) = Self::directory(label);
        let config = root.join("idempipe.toml");
        let batch_log = root.join("batches.jsonl");
        let text = std::fs::read_to_string(&self.config).unwrap();
        let rest: Vec<&str> = text.lines().filter(|l| !l.starts_with("batch_log =")).collect();
        std::fs::write(&config, format!("batch_log = \"{}\"\n{}\n", batch_log.display(), rest.join("\n"))).unwrap();
        let s3 = self.s3.clone();
        Self { name: self.name.clone(), root, config, s3, batch_log, owner: false, _cleanup: cleanup }
    }

    /// The table: its directory, or its URL on the tests' S3 server with the options to
    /// reach it.
    pub fn table(&self) -> idempipe::table::Location {
        match &self.s3 {
            None => self.delta_path().as_path().into(),
            Some(endpoint) => {
                let url = format!("s3://{S3_BUCKET}/{}/events", self.name);
                let options = s3_options(endpoint).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                idempipe::table::Location::parse(&url).unwrap().with_options(options)
            }
        }
    }

    /// The names of the files in the table's `_delta_log`.
    pub fn log_files(&self) -> Vec<String> {
        match &self.s3 {
            None => std::fs::read_dir(self.delta_path().join("_delta_log"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Some(_) => s3_objects(&format!("{}/events/_delta_log/", self.name))
                .into_iter()
                .map(|k| k.rsplit('/').next().unwrap().to_owned())
                .collect(),
        }
    }

    /// The ClickHouse URL in use (the shared server unless the config names another).
    pub fn clickhouse_url(&self) -> String {
        let text = std::fs::read_to_string(&self.config).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("clickhouse_url = \"").and_then(|r| r.strip_suffix('"')))
            .unwrap_or(CLICKHOUSE_URL)
            .to_owned()
    }

    /// `` `idempipe`.`<name>` ``: the test's ClickHouse table.
    pub fn clickhouse_table(&self) -> String {
        format!("`idempipe`.`{}`", self.name)
    }

    /// The directory of a local table.
    pub fn delta_path(&self) -> PathBuf {
        assert!(self.s3.is_none(), "the table of {} is on S3: use `table()`", self.name);
        self.root.join("delta/events")
    }

    /// Generates `events.jsonl` in the test's directory and returns it with the
    /// generator's expected counts (`distinct_keys`, `invalid`, …).
    pub fn generate(&self, unique: u64, duplicates: u64, invalid: u64, seed: u64) -> (PathBuf, Value) {
        self.generate_as("events.jsonl", unique, duplicates, invalid, seed)
    }

    /// [`Harness::generate`] into the file `name` of the test's directory.
    pub fn generate_as(&self, name: &str, unique: u64, duplicates: u64, invalid: u64, seed: u64) -> (PathBuf, Value) {
        let file = self.path(name);
        let out = self.ok(&[
            "generate",
            "--unique",
            &unique.to_string(),
            "--duplicates",
            &duplicates.to_string(),
            "--invalid",
            &invalid.to_string(),
            "--seed",
            &seed.to_string(),
            "--out",
            file.to_str().unwrap(),
            "--json",
        ]);
        (file, serde_json::from_str(&out).unwrap())
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_idempipe"));
        c.arg("--config").arg(&self.config).args(args);
        c.env("IDEMPIPE_LOG", format!("{},idempipe=debug", idempipe::DEFAULT_LOG_FILTER));
        c
    }

    /// Runs a command to completion; panics with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "idempipe {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Starts a command in the background; its stderr goes to `<name>.log` in the test's
    /// directory (a pipe nobody reads would stall it once full). It is killed when the
    /// returned guard drops, so a failing test leaves no process behind.
    pub fn spawn(&self, args: &[&str], name: &str) -> Background {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).unwrap();
        Background(self.command(args).stdout(Stdio::null()).stderr(log).spawn().unwrap())
    }

    pub fn setup(&self) {
        self.ok(&["setup"]);
    }

    /// Sets up, generates a file, produces it and runs the processor with the ClickHouse
    /// sink until idle; checks that every store holds exactly the generator's counts
    /// ([`assert_exact`]) and returns the file, those counts and `verify`'s answer.
    pub fn ingest_generated(&self, unique: u64, duplicates: u64, invalid: u64, seed: u64) -> (PathBuf, Value, Value) {
        self.setup();
        let (file, expected) = self.generate(unique, duplicates, invalid, seed);
        self.produce(&file);
        self.run_until_idle(&["--clickhouse-in-run"]);
        let v = self.verify();
        assert_exact(&v, &expected);
        (file, expected, v)
    }

    pub fn produce(&self, file: &Path) {
        self.ok(&["produce", "--input", file.to_str().unwrap()]);
    }

    /// Runs the processor until it is caught up and idle for two seconds; fails (with the
    /// processor's log) if that takes longer than `RUN_TIMEOUT`.
    pub fn run_until_idle(&self, extra: &[&str]) {
        self.run_until_idle_within(extra, RUN_TIMEOUT);
    }

    /// [`Harness::run_until_idle`] with a time limit of the caller's (large runs).
    pub fn run_until_idle_within(&self, extra: &[&str], limit: Duration) {
        let (status, log) = self.run_until_idle_ending(extra, limit);
        assert!(status.success(), "`idempipe run` failed ({status}); its log:\n{log}");
    }

    /// Runs `run --until-idle 2s` with `extra` to its end, successful or not (failing the
    /// test if that takes longer than `limit`): its exit status and the end of its log.
    pub fn run_until_idle_ending(&self, extra: &[&str], limit: Duration) -> (ExitStatus, String) {
        let mut args = vec!["run", "--until-idle", "2s"];
        args.extend_from_slice(extra);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("until-idle-{n}");
        let mut child = self.spawn(&args, &name);
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("`idempipe run` did not finish in {limit:?}; its log:\n{}", self.tail(&name));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        (status, self.tail(&name))
    }

    /// The test's raw topic.
    pub fn raw_topic(&self) -> String {
        format!("{}_raw", self.name)
    }

    /// The test's processed topic.
    pub fn processed_topic(&self) -> String {
        format!("{}_processed", self.name)
    }

    /// `status --json`.
    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// A background command's whole log.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// The last lines of a background command's log.
    pub fn tail(&self, name: &str) -> String {
        let text = self.log(name);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// `verify --json`. A count it could not take is null, with the reason on its
    /// stderr: printed here, so a test that then fails shows why.
    pub fn verify(&self) -> Value {
        let out = self.output(&["verify", "--json"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "idempipe verify failed: {stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if v.as_object().is_some_and(|o| o.values().any(Value::is_null)) {
            eprintln!("verify left counts out:\n{stderr}");
        }
        v
    }

    /// Lines of the batch log.
    pub fn batch_log_lines(&self) -> usize {
        self.batch_log().len()
    }

    /// The batch log's records (one per committed batch).
    pub fn batch_log(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.batch_log)
            .map(|t| t.lines().map(|l| serde_json::from_str(l).expect("batch log line is JSON")).collect())
            .unwrap_or_default()
    }
}

/// A child process that is killed (SIGKILL) when dropped.
pub struct Background(pub Child);

impl std::ops::Deref for Background {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Background {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for Harness {
    /// Drops the test's ClickHouse table from the shared server (best effort).
    fn drop(&mut self) {
        if self.owner && self._cleanup.is_some() && self.clickhouse_url() == CLICKHOUSE_URL {
            let _ = clickhouse_query(CLICKHOUSE_URL, &format!("DROP TABLE IF EXISTS {}", self.clickhouse_table()));
        }
    }
}

/// A loopback port nobody listens on (now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Python with the independent readers (`deltalake`, `chdb`): the project's virtual
/// environment that scripts/test.sh makes (`IDEMPIPE_PYTHON`), else `python3`.
pub fn python() -> String {
    std::env::var("IDEMPIPE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `GET path` over plain HTTP/1.1: (status code, body); `None` if nothing listens.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `verify`'s answer `v` holds exactly what the generator's counts `expected` say: each
/// distinct key once in Delta, in the processed topic and in ClickHouse (key for key),
/// every invalid message a dead letter.
pub fn assert_exact(v: &Value, expected: &Value) {
    let distinct = count(expected, "distinct_keys");
    assert_eq!((count(v, "delta_rows"), count(v, "delta_distinct_keys")), (distinct, distinct), "{v}");
    assert_eq!(count(v, "dlq_records"), count(expected, "invalid"), "{v}");
    assert_eq!(count(v, "processed_distinct_keys"), distinct, "{v}");
    assert_eq!(count(v, "clickhouse_final_rows"), distinct, "{v}");
    assert_eq!(v["clickhouse_keys_match"], true, "{v}");
}

pub fn count(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("{field} is not a count in {v}"))
}
