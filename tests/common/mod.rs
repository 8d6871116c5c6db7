//! Helpers for tests against the real services: each test gets its own topics, group
//! and Delta table, so tests run in parallel on one broker.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BROKERS: &str = "127.0.0.1:9092";

/// Longest a `run --until-idle` may take in a test: far above the seconds it needs.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// Fails the test with a clear message when the services are not running.
pub fn require_services() {
    let up = std::net::TcpStream::connect_timeout(&BROKERS.parse().unwrap(), Duration::from_secs(2)).is_ok();
    assert!(up, "no Kafka broker on {BROKERS}: run `scripts/services.sh up` (scripts/test.sh does)");
}

/// One isolated pipeline: topics, group and table of its own.
pub struct Pipeline {
    pub name: String,
    /// The test's directory: table, config, logs.
    pub root: PathBuf,
    pub config: PathBuf,
    /// Removes the directory at the end, unless `IDEMPIPE_TEST_KEEP` is set.
    _cleanup: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Pipeline {
    pub fn new(test: &str) -> Self {
        require_services();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("{test}_{}_{n}_{nanos}", std::process::id());
        let dir = tempfile::Builder::new().prefix(&format!("idempipe-{test}-")).tempdir().unwrap();
        let root = dir.path().to_owned();
        let cleanup = if std::env::var_os("IDEMPIPE_TEST_KEEP").is_some() {
            eprintln!("keeping {}", root.display());
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        let config = root.join("idempipe.toml");
        std::fs::write(
            &config,
            format!(
                r#"
brokers = "{BROKERS}"
raw_topic = "{name}_raw"
processed_topic = "{name}_processed"
dlq_topic = "{name}_dlq"
group = "{name}"
delta_path = "{}"
clickhouse_table = "{name}"
trigger = "500ms"

[kafka]
"max.poll.interval.ms" = "10000"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
"#,
                root.join("delta/events").display()
            ),
        )
        .unwrap();
        Self { name, root, config, _cleanup: cleanup }
    }

    pub fn delta_path(&self) -> PathBuf {
        self.root.join("delta/events")
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_idempipe"));
        c.arg("--config").arg(&self.config).args(args);
        c.env("IDEMPIPE_LOG", "info,deltalake=warn,datafusion=warn,buoyant_kernel=off,idempipe=debug");
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
    /// directory (a pipe nobody reads would stall it once full).
    pub fn spawn(&self, args: &[&str], name: &str) -> Child {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).unwrap();
        self.command(args).stdout(Stdio::null()).stderr(log).spawn().unwrap()
    }

    pub fn setup(&self) {
        self.ok(&["setup"]);
    }

    pub fn produce(&self, file: &Path) {
        self.ok(&["produce", "--input", file.to_str().unwrap()]);
    }

    /// Runs the processor until it is caught up and idle for two seconds; fails (with the
    /// processor's log) if that takes longer than `RUN_TIMEOUT`.
    pub fn run_until_idle(&self, extra: &[&str]) {
        let mut args = vec!["run", "--until-idle", "2s"];
        args.extend_from_slice(extra);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("run-{n}");
        let mut child = self.spawn(&args, &name);
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("`idempipe run` did not finish in {RUN_TIMEOUT:?}; its log:\n{}", self.tail(&name));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "`idempipe run` failed ({status}); its log:\n{}", self.tail(&name));
    }

    /// The last lines of a background command's log.
    pub fn tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    pub fn verify(&self) -> Value {
        serde_json::from_str(&self.ok(&["verify", "--json"])).unwrap()
    }

    /// Lines of the batch log.
    pub fn batch_log_lines(&self) -> usize {
        self.batch_log().len()
    }

    /// The batch log's records (one per committed batch).
    pub fn batch_log(&self) -> Vec<Value> {
        std::fs::read_to_string(self.root.join("delta/events.batches.jsonl"))
            .map(|t| t.lines().map(|l| serde_json::from_str(l).expect("batch log line is JSON")).collect())
            .unwrap_or_default()
    }
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn count(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("{field} is not a count in {v}"))
}
