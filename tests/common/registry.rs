//! The schema registry of the tests (Apicurio Registry, Confluent's API under
//! `/apis/ccompat/v7`), and registries of a test's own that it can stop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The tests' registry: `IDEMPIPE_TEST_REGISTRY` (scripts/test.sh starts it), else the
/// services' one on :9180.
pub fn registry_url() -> String {
    std::env::var("IDEMPIPE_TEST_REGISTRY").unwrap_or_else(|_| "http://127.0.0.1:9180/apis/ccompat/v7".into())
}

/// The configuration lines of a pipeline reading the wire format through `url`.
pub fn registry_options(url: &str) -> String {
    format!("message_format = \"schema-registry\"\nschema_registry_url = \"{url}\"")
}

/// A registry of the test's own (`scripts/registry.sh` on a free port, its pid file and
/// log in `dir`): stopped, paused or resumed at will; killed when dropped.
pub struct PrivateRegistry {
    dir: PathBuf,
    port: u16,
    /// Its certificate and key, when it serves HTTPS only.
    tls: Option<(PathBuf, PathBuf)>,
}

impl PrivateRegistry {
    pub fn start(dir: &Path) -> Self {
        Self::launch(dir, None)
    }

    /// A registry that serves HTTPS only, with this PEM certificate and key.
    pub fn start_tls(dir: &Path, cert: &Path, key: &Path) -> Self {
        Self::launch(dir, Some((cert.to_owned(), key.to_owned())))
    }

    fn launch(dir: &Path, tls: Option<(PathBuf, PathBuf)>) -> Self {
        let this = Self { dir: dir.to_owned(), port: super::free_port(), tls };
        this.script("up");
        this
    }

    fn script(&self, action: &str) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut command = Command::new(root.join("scripts/registry.sh"));
        command.arg(action).env("REGISTRY_PORT", self.port.to_string()).env("SERVICES_DIR", &self.dir);
        if let Some((cert, key)) = &self.tls {
            command.env("REGISTRY_TLS_CERT", cert).env("REGISTRY_TLS_KEY", key);
        }
        let status = command.status().unwrap();
        assert!(status.success(), "scripts/registry.sh {action} failed");
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/apis/ccompat/v7", self.port)
    }

    fn signal(&self, signal: &str) {
        let pid = std::fs::read_to_string(self.dir.join("registry.pid")).unwrap();
        let status = Command::new("kill").args([signal, pid.trim()]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// The process stops answering (its connections hang) until [`PrivateRegistry::resume`].
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.script("down");
    }
}
