//! Helpers for tests against the real services: each test gets its own topics, group
//! and Delta table, so tests run in parallel on one broker.
#![allow(dead_code, unreachable_pub)]

pub mod browser;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use std::collections::{BTreeMap, HashSet};

use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// The broker the tests use: `IDEMPIPE_TEST_BROKERS` (scripts/test.sh starts one of the
/// tests' own on :9192), else the services' broker on :9092.
pub fn brokers() -> String {
    std::env::var("IDEMPIPE_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Longest a `run --until-idle` may take in a test: far above the seconds it needs.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// Fails the test with a clear message when the services are not running.
pub fn require_services() {
    let brokers = brokers();
    let up = std::net::TcpStream::connect_timeout(&brokers.parse().unwrap(), Duration::from_secs(2)).is_ok();
    assert!(up, "no Kafka broker on {brokers}: run `scripts/services.sh up`, or the tests with scripts/test.sh");
}

/// One isolated pipeline: topics, group and table of its own.
pub struct Pipeline {
    pub name: String,
    /// The test's directory: table, config, logs.
    pub root: PathBuf,
    pub config: PathBuf,
    /// The S3 endpoint of a table on the tests' S3 server (see [`Pipeline::on_s3`]).
    s3: Option<String>,
    /// Where the processor writes its batch log.
    batch_log: PathBuf,
    /// The first of a test's pipelines (not an [`Pipeline::instance`]): drops the test's
    /// ClickHouse table at the end.
    owner: bool,
    /// Removes the directory at the end, unless `IDEMPIPE_TEST_KEEP` is set.
    _cleanup: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Pipeline {
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

    /// [`Pipeline::on_s3`] on the tests' S3 server, with `extra` in the config file.
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

    /// [`Pipeline::generate`] into the file `name` of the test's directory.
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

    /// [`Pipeline::run_until_idle`] with a time limit of the caller's (large runs).
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

impl Drop for Pipeline {
    /// Drops the test's ClickHouse table from the shared server (best effort).
    fn drop(&mut self) {
        if self.owner && self._cleanup.is_some() && self.clickhouse_url() == CLICKHOUSE_URL {
            let _ = clickhouse_query(CLICKHOUSE_URL, &format!("DROP TABLE IF EXISTS {}", self.clickhouse_table()));
        }
    }
}

pub const CLICKHOUSE_URL: &str = "http://127.0.0.1:8123";

/// Sends one statement to ClickHouse over HTTP and returns the body, independently of
/// the code under test (a plain HTTP/1.0 POST on a socket).
pub fn clickhouse_query(url: &str, sql: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request = format!("POST / HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{sql}", sql.len());
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_owned())
    } else {
        Err(format!("{sql}: {head}\n{body}"))
    }
}

/// The bucket of the tests' S3 server (`scripts/services.sh s3-up` makes it).
pub const S3_BUCKET: &str = "idempipe";

/// The tests' S3 server: `IDEMPIPE_TEST_S3` (scripts/test.sh starts moto), else the
/// services' on :9300.
pub fn s3_endpoint() -> String {
    std::env::var("IDEMPIPE_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:9300".into())
}

/// A plain-HTTP relay to `upstream` (host:port) that drops one request header, `header`
/// (lower case), from every request: a store that ignores what that header asks.
pub struct HeaderStrippingProxy {
    pub port: u16,
}

impl HeaderStrippingProxy {
    pub fn start(upstream: &str, header: &'static str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = upstream.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    let _ = relay(client, &upstream, header);
                });
            }
        });
        Self { port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Relays one connection: responses untouched, requests head by head without `header`,
/// each body by its Content-Length.
fn relay(client: std::net::TcpStream, upstream: &str, header: &str) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut server = std::net::TcpStream::connect(upstream)?;
    let (mut from_server, mut to_client) = (server.try_clone()?, client.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(std::net::Shutdown::Both);
    });
    let mut requests = BufReader::new(client);
    let drop = format!("{header}:");
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if requests.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let end = line == "\r\n";
            if !line.to_ascii_lowercase().starts_with(&drop) {
                head.push_str(&line);
            }
            if end {
                break;
            }
        }
        let length = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0_u64);
        server.write_all(head.as_bytes())?;
        std::io::copy(&mut (&mut requests).take(length), &mut server)?;
    }
}

/// The objects under `prefix` in the tests' bucket, read with boto3 (installed with moto
/// in the project's virtual environment), independently of the code under test.
pub fn s3_objects(prefix: &str) -> Vec<String> {
    let script = r#"
import json, sys, boto3
s3 = boto3.client("s3")
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[1], Prefix=sys.argv[2])
print(json.dumps([o["Key"] for page in pages for o in page.get("Contents", [])]))
"#;
    let out = Command::new(python()).args(["-c", script, S3_BUCKET, prefix]).envs(s3_env()).output().unwrap();
    assert!(out.status.success(), "listing the bucket failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The storage options (object_store's names) that reach the tests' S3 server through
/// `endpoint`.
pub fn s3_options(endpoint: &str) -> [(&'static str, String); 5] {
    [
        ("aws_endpoint_url", endpoint.to_owned()),
        ("aws_allow_http", "true".into()),
        ("aws_region", "us-east-1".into()),
        ("aws_access_key_id", "test".into()),
        ("aws_secret_access_key", "test".into()),
    ]
}

/// The environment that points AWS tools (the Python `deltalake`, boto3) at the tests'
/// S3 server: [`s3_options`] as environment variables.
pub fn s3_env() -> Vec<(String, String)> {
    s3_options(&s3_endpoint()).into_iter().map(|(k, v)| (k.to_ascii_uppercase(), v)).collect()
}

/// A loopback port nobody listens on (now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An Apache Kafka cluster of the test's own (`scripts/kafka.sh` in `dir`, on free ports:
/// a KRaft controller and two brokers, topics with 2 replicas): plain
/// ([`PrivateKafka::plain`]), or reached over TLS only, on the brokers' own TLS listeners
/// with a certificate from [`make_certificates`], and, with `scram`, SASL/SCRAM-SHA-512
/// authentication with that user and password.
pub struct PrivateKafka {
    dir: PathBuf,
    /// Broker 1's, the controller's and broker 2's plain ports.
    ports: [u16; 3],
    /// Broker 1's and broker 2's TLS ports; 0: no TLS listener.
    pub tls_ports: [u16; 2],
    /// The CA that signed the brokers' certificate.
    pub ca: PathBuf,
    /// The brokers' certificate and key, with TLS.
    tls: Option<(PathBuf, PathBuf)>,
    scram: Option<(String, String)>,
    /// Requests are authorized by ACLs (`KAFKA_ACL=1`).
    acls: bool,
}

impl PrivateKafka {
    /// A plain cluster (no TLS, no authentication): for tests that stop it.
    pub fn plain(dir: PathBuf) -> Self {
        let this = Self {
            dir,
            ports: [free_port(), free_port(), free_port()],
            tls_ports: [0, 0],
            ca: PathBuf::new(),
            tls: None,
            scram: None,
            acls: false,
        };
        this.script(&["fresh"]);
        this
    }

    pub fn start(dir: PathBuf, scram: Option<(&str, &str)>) -> Self {
        Self::start_with(dir, scram, false)
    }

    /// Over TLS with SCRAM, every request authorized by ACLs: the user may do what
    /// [`PrivateKafka::acl`] allows it and nothing else.
    pub fn with_acls(dir: PathBuf, user: &str, password: &str) -> Self {
        Self::start_with(dir, Some((user, password)), true)
    }

    fn start_with(dir: PathBuf, scram: Option<(&str, &str)>, acls: bool) -> Self {
        let (ca, cert, key) = make_certificates(&dir.join("tls"));
        let scram = scram.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let this = Self {
            dir,
            ports: [free_port(), free_port(), free_port()],
            tls_ports: [free_port(), free_port()],
            ca,
            tls: Some((cert, key)),
            scram,
            acls,
        };
        this.script(&["fresh"]);
        this
    }

    /// Runs Kafka's ACL tool with `args` (`scripts/kafka.sh acl`).
    pub fn acl(&self, args: &[&str]) {
        let mut all = vec!["acl"];
        all.extend(args);
        self.script(&all);
    }

    /// Stops the cluster (its storage stays).
    pub fn stop(&self) {
        self.script(&["down"]);
    }

    /// Starts the stopped cluster again, on the same storage.
    pub fn start_again(&self) {
        self.script(&["up"]);
    }

    /// Kills broker `n` (1 or 2) by SIGKILL, as in a crash.
    pub fn kill_broker(&self, n: u8) {
        self.script_with(&["stop-broker", &n.to_string()], &[("KILL", "1")]);
    }

    /// Starts broker `n` again on its storage and waits until it answers.
    pub fn start_broker(&self, n: u8) {
        self.script(&["start-broker", &n.to_string()]);
    }

    /// Kills the KRaft controller by SIGKILL.
    pub fn kill_controller(&self) {
        self.script_with(&["stop-controller"], &[("KILL", "1")]);
    }

    /// Starts the controller again.
    pub fn start_controller(&self) {
        self.script(&["start-controller"]);
    }

    /// Changes the SCRAM user's password to `password` on the running cluster, then
    /// restarts it: every connection (authenticated with the old password, which a live
    /// change leaves open) drops, and a client reconnecting with the old one is refused.
    pub fn change_password(&mut self, password: &str) {
        let user = self.scram.as_ref().expect("a cluster with SCRAM").0.clone();
        self.scram = Some((user, password.to_owned()));
        self.script(&["up"]);
        self.script(&["down"]);
        self.script(&["up"]);
    }

    /// `host:port` of both brokers' TLS listeners, or of their plain ones without TLS (a
    /// client starting while one broker is down bootstraps from the other).
    pub fn brokers(&self) -> String {
        let [one, two] = if self.tls.is_none() { [self.ports[0], self.ports[2]] } else { self.tls_ports };
        format!("127.0.0.1:{one},127.0.0.1:{two}")
    }

    /// The librdkafka settings that reach it: TLS with the test's CA, and SCRAM if on.
    pub fn client_settings(&self) -> Vec<(String, String)> {
        let mut settings = vec![("ssl.ca.location".to_owned(), self.ca.display().to_string())];
        match &self.scram {
            None => settings.push(("security.protocol".into(), "SSL".into())),
            Some((user, password)) => settings.extend([
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
                ("sasl.username".into(), user.clone()),
                ("sasl.password".into(), password.clone()),
            ]),
        }
        settings
    }

    /// A client configuration that reaches the cluster (its TLS and SCRAM settings).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.brokers());
        if self.tls.is_some() {
            for (k, v) in self.client_settings() {
                config.set(k, v);
            }
        }
        config
    }

    fn script(&self, args: &[&str]) {
        self.script_with(args, &[]);
    }

    fn script_with(&self, args: &[&str], env: &[(&str, &str)]) {
        let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"));
        let [port, controller, port2] = self.ports;
        command
            .args(args)
            .env("SERVICES_DIR", &self.dir)
            .env("KAFKA_PORT", port.to_string())
            .env("KAFKA_CONTROLLER_PORT", controller.to_string())
            .env("KAFKA_PORT2", port2.to_string())
            .envs(env.iter().copied());
        if let Some((cert, key)) = &self.tls {
            command
                .env("KAFKA_TLS_PORT", self.tls_ports[0].to_string())
                .env("KAFKA_TLS_PORT2", self.tls_ports[1].to_string())
                .env("KAFKA_TLS_CERT", cert)
                .env("KAFKA_TLS_KEY", key);
        }
        if let Some((user, password)) = &self.scram {
            command.env("KAFKA_SCRAM_USER", user).env("KAFKA_SCRAM_PASSWORD", password);
        }
        if self.acls {
            command.env("KAFKA_ACL", "1");
        }
        let status = command.stdout(std::process::Stdio::null()).status().unwrap();
        assert!(status.success(), "scripts/kafka.sh {args:?} failed for the private cluster");
    }
}

/// Adds partitions to `topic` on the cluster at `brokers` until it has `partitions`, with
/// the admin API (`CreatePartitions`), and waits until its metadata lists them.
pub fn add_partitions(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    futures::executor::block_on(async {
        let grow = NewPartitions::new(topic, partitions as usize);
        for result in admin.create_partitions(&[grow], &options).await.unwrap() {
            result.unwrap_or_else(|(t, e)| panic!("adding partitions to {t}: {e}"));
        }
    });
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    wait_until(Duration::from_secs(30), "the broker reporting the new partitions", || {
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .is_ok_and(|m| m.topics().iter().any(|t| t.name() == topic && t.partitions().len() == partitions as usize))
    });
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        self.script(&["down"]);
    }
}

/// A ClickHouse server of the test's own, on free ports, that the test may stop and
/// start (started by `scripts/services.sh clickhouse-up` with its own directory).
pub struct PrivateClickHouse {
    pub dir: PathBuf,
    pub http_port: u16,
    pub tcp_port: u16,
    tls: Option<Tls>,
}

/// A private ClickHouse's HTTPS port and certificate.
struct Tls {
    https_port: u16,
    cert: PathBuf,
    key: PathBuf,
}

/// Makes a CA and a server certificate for 127.0.0.1 signed by it, with `openssl`, in
/// `dir`: returns (CA certificate, server certificate, server key), PEM files.
pub fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::create_dir_all(dir).unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=idempipe test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

impl PrivateClickHouse {
    pub fn start(dir: PathBuf) -> Self {
        let this = Self { dir, http_port: free_port(), tcp_port: free_port(), tls: None };
        this.up();
        this
    }

    /// A server that also serves HTTPS with `cert` and `key` (PEM files).
    pub fn start_tls(dir: PathBuf, cert: PathBuf, key: PathBuf) -> Self {
        let tls = Some(Tls { https_port: free_port(), cert, key });
        let this = Self { dir, http_port: free_port(), tcp_port: free_port(), tls };
        this.up();
        this
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The HTTPS URL of a server started with [`PrivateClickHouse::start_tls`].
    pub fn https_url(&self) -> Option<String> {
        self.tls.as_ref().map(|t| format!("https://127.0.0.1:{}", t.https_port))
    }

    fn script(&self, action: &str) {
        let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"));
        command
            .arg(action)
            .env("SERVICES_DIR", &self.dir)
            .env("CLICKHOUSE_HTTP_PORT", self.http_port.to_string())
            .env("CLICKHOUSE_TCP_PORT", self.tcp_port.to_string());
        if let Some(tls) = &self.tls {
            command
                .env("CLICKHOUSE_HTTPS_PORT", tls.https_port.to_string())
                .env("CLICKHOUSE_TLS_CERT", &tls.cert)
                .env("CLICKHOUSE_TLS_KEY", &tls.key);
        }
        let status = command.status().unwrap();
        assert!(status.success(), "services.sh {action} failed for the private ClickHouse");
    }

    pub fn up(&self) {
        self.script("clickhouse-up");
    }

    pub fn down(&self) {
        self.script("clickhouse-down");
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.down();
    }
}

/// The Python with the independent readers (`deltalake`, `chdb`): the project's virtual
/// environment that scripts/test.sh makes (`IDEMPIPE_PYTHON`), else `python3`.
pub fn python() -> String {
    std::env::var("IDEMPIPE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs scripts/check_clickhouse.py (chdb: current ClickHouse in process) with `args` and
/// `input` on stdin, and returns its JSON answer; fails the test with its output otherwise.
pub fn chdb(args: &[&str], input: Option<&Value>) -> Value {
    use std::io::Write;
    let mut child = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check_clickhouse.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(input) = input {
        stdin.write_all(input.to_string().as_bytes()).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "check_clickhouse.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Deletes `topic` on the cluster at `brokers` and creates it again with `partitions`
/// partitions and 2 replicas, as an operator would with the admin API: its offsets start
/// over at 0. (A creation that races the deletion's completion is refused with
/// `TopicAlreadyExists`: it is tried again.)
pub fn recreate_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    futures::executor::block_on(async {
        for result in admin.delete_topics(&[topic], &options).await.unwrap() {
            result.unwrap_or_else(|(t, e)| panic!("deleting {t}: {e}"));
        }
    });
    wait_until(Duration::from_secs(60), "the topic created again", || {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(2));
        let results = futures::executor::block_on(admin.create_topics(&[new], &options)).unwrap();
        match &results[0] {
            Ok(_) => true,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => false,
            Err((t, e)) => panic!("creating {t} again: {e}"),
        }
    });
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    wait_until(Duration::from_secs(30), "the recreated topic's partitions", || {
        consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .is_ok_and(|m| m.topics().iter().any(|t| t.name() == topic && t.partitions().len() == partitions as usize))
    });
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

/// A record read back by [`read_all`].
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

/// Reads a whole topic with a plain consumer, independently of the code under test:
/// from the beginning until every partition reports its end (EOF, from the high
/// watermark of fetch responses).
pub fn read_all(topic: &str) -> Vec<Record> {
    read_all_from(&brokers(), topic)
}

/// [`read_all`] on the broker at `brokers`.
pub fn read_all_from(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut open: HashSet<i32> = (0..partitions).collect();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !open.is_empty() {
        assert!(std::time::Instant::now() < deadline, "reading {topic} timed out");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (x.key.to_string(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}
