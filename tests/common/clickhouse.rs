//! The tests' ClickHouse: the server `scripts/test.sh` starts, servers of a test's own
//! ([`PrivateClickHouse`]), and current ClickHouse in process (chdb).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{free_port, python};

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
