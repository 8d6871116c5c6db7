//! The tests' S3 server (moto) and a proxy that strips a header on the way.

use std::process::Command;

use super::python;

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
