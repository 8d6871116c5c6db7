//! Apache Spark with Delta Lake beside idempipe: `pyspark` and `delta-spark` from the
//! project's virtual environment, driven through tests/spark/server.py. One Spark
//! session per test binary (a Spark JVM takes tens of seconds to come up), shared by its
//! tests one at a time.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::{Value, json};

use super::python;

pub struct Spark {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// `{"spark": VERSION, "delta": VERSION}`.
    pub versions: Value,
    /// Spark's own log (stderr of the session).
    pub log: std::path::PathBuf,
}

static SPARK: OnceLock<Mutex<Spark>> = OnceLock::new();

/// The binary's Spark session, started on first use; a test holds it until it drops the
/// guard.
pub fn spark() -> MutexGuard<'static, Spark> {
    SPARK.get_or_init(|| Mutex::new(Spark::start())).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Spark {
    fn start() -> Self {
        let scratch = std::env::temp_dir().join(format!("idempipe-spark-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        let log = scratch.join("spark.log");
        let server = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/spark/server.py");
        let mut child = Command::new(python())
            .arg(server)
            .env("SPARK_LOCAL_DIR", &scratch)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting Spark ({server}) with {}: {e}", python()));
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let versions: Value = serde_json::from_str(&first).unwrap_or_else(|_| {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String =
                tail.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            panic!("Spark did not start (scripts/test.sh installs pyspark and delta-spark); its log:\n{tail}")
        });
        eprintln!("spark: {versions}, log {}", log.display());
        Self { child, stdin, stdout, versions, log }
    }

    fn ask(&mut self, request: Value) -> Value {
        writeln!(self.stdin, "{request}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "Spark ended; its log: {}", self.log.display());
        serde_json::from_str(&line).unwrap()
    }

    /// Runs a statement; its rows, or Spark's error.
    pub fn try_sql(&mut self, sql: &str) -> Result<Vec<Vec<Value>>, String> {
        let answer = self.ask(json!({ "sql": sql }));
        match answer.get("error") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_owned()),
            None => Ok(serde_json::from_value(answer["rows"].clone()).unwrap()),
        }
    }

    /// Runs a statement that must succeed.
    pub fn sql(&mut self, sql: &str) -> Vec<Vec<Value>> {
        self.try_sql(sql).unwrap_or_else(|e| panic!("Spark refused {sql}: {e}"))
    }

    /// Runs Python with `spark` in scope; the value it leaves in `result`.
    pub fn py(&mut self, code: &str) -> Value {
        let answer = self.ask(json!({ "py": code }));
        if let Some(e) = answer.get("error") {
            panic!("Spark's Python failed: {e}\n{code}");
        }
        answer["result"].clone()
    }

    /// `(rows, distinct keys)` of the Delta table at `path`, as Spark counts them.
    pub fn counts(&mut self, path: &std::path::Path) -> (u64, u64) {
        let rows = self.sql(&format!("SELECT count(*), count(DISTINCT dedup_key) FROM delta.`{}`", path.display()));
        (rows[0][0].as_u64().unwrap(), rows[0][1].as_u64().unwrap())
    }
}

impl Drop for Spark {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
