//! Where the table lives: a local directory, or a URL on an object store (`s3://`,
//! `s3a://`, `gs://`, `az://`, `abfss://`, …), with the storage options that reach it.
//!
//! Invariants:
//! - a [`Location`] names a scheme this build can open: its object-store handlers are
//!   registered before the first one is parsed;
//! - before anything is written to a store, [`Location::check_put_if_absent`] proves the
//!   store refuses a second create of the same object: Delta's commits rely on it, and a
//!   store that ignores the condition loses concurrent commits without a word.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Once;

use deltalake::logstore::object_store::{self, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use deltalake::{DeltaTable, DeltaTableBuilder};
use url::Url;

use crate::event::EventTime;

/// The schemes of object stores this build reaches.
pub const REMOTE_SCHEMES: [&str; 8] = ["s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss"];

/// A table's place: a local directory or an object-store URL, and its storage options
/// (object_store's and delta-rs's names: `aws_endpoint_url`, `aws_allow_http`, …). Its
/// `Debug` redacts the secret options.
#[derive(Clone, PartialEq, Eq)]
pub struct Location {
    /// As given (a path or a URL): what messages show.
    text: String,
    place: Place,
    options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Place {
    Local(PathBuf),
    Remote(Url),
}

/// Registers the object-store handlers once per process (delta-rs also does it when its
/// crate is loaded; doing it here does not depend on that).
fn register_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        deltalake::aws::register_handlers(None);
        deltalake::gcp::register_handlers(None);
        deltalake::azure::register_handlers(None);
    });
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options = self.options.iter().map(|(k, v)| {
            (
                k,
                if crate::config::is_secret(k) {
                    crate::config::REDACTED.to_owned()
                } else {
                    crate::config::redact_url(v)
                },
            )
        });
        f.debug_struct("Location")
            .field("text", &self.text)
            .field("place", &self.place)
            .field("options", &options.collect::<BTreeMap<_, _>>())
            .finish()
    }
}

impl Location {
    /// Parses `text`: a URL of a known object-store scheme (or `file://`), else a local
    /// path.
    pub fn parse(text: &str) -> Result<Self, String> {
        register_handlers();
        let text = text.trim();
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        match text.split_once("://") {
            Some((scheme, _)) if REMOTE_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) => {
                let url = Url::parse(text.trim_end_matches('/')).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(format!("{text:?} names no bucket or container"));
                }
                Ok(Self { text: text.to_owned(), place: Place::Remote(url), options: BTreeMap::new() })
            }
            Some(("file", rest)) => Ok(Self::local(rest)),
            Some((scheme, _)) if scheme.bytes().all(|b| b.is_ascii_alphanumeric()) => Err(format!(
                "{text:?}: this build reaches a table on a local path or at {}:// URLs, not {scheme}://",
                REMOTE_SCHEMES.join("://, ")
            )),
            _ => Ok(Self::local(text)),
        }
    }

    /// A local directory.
    pub fn local(path: impl Into<PathBuf>) -> Self {
        let path: PathBuf = path.into();
        Self { text: path.display().to_string(), place: Place::Local(path), options: BTreeMap::new() }
    }

    /// The same place with `options` to reach it.
    pub fn with_options(mut self, options: BTreeMap<String, String>) -> Self {
        self.options = options;
        self
    }

    /// The directory of a local table.
    pub fn local_path(&self) -> Option<&Path> {
        match &self.place {
            Place::Local(path) => Some(path),
            Place::Remote(_) => None,
        }
    }

    /// The table's URL. For a local table, delta-rs makes the directory if it is missing.
    pub fn url(&self) -> Result<Url, deltalake::DeltaTableError> {
        match &self.place {
            Place::Local(path) => deltalake::ensure_table_uri(path.to_string_lossy()),
            Place::Remote(url) => Ok(url.clone()),
        }
    }

    pub fn options(&self) -> &BTreeMap<String, String> {
        &self.options
    }

    /// The options as delta-rs takes them.
    pub(crate) fn option_map(&self) -> HashMap<String, String> {
        self.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The table's name: the last segment of its path (`events` of `s3://b/delta/events`).
    pub fn name(&self) -> String {
        let segment = match &self.place {
            Place::Local(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()),
            Place::Remote(url) => url.path_segments().and_then(|mut s| s.rfind(|s| !s.is_empty()).map(str::to_owned)),
        };
        segment.unwrap_or_else(|| "events".to_owned())
    }

    /// Where this process keeps things of its own about the table (the batch log) when
    /// not told: beside a local table; for a remote one, under `data/` in the working
    /// directory, named after the bucket and path.
    pub(crate) fn local_sibling(&self, suffix: &str) -> PathBuf {
        match &self.place {
            Place::Local(path) => {
                let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "events".into());
                name.push(suffix);
                path.with_file_name(name)
            }
            Place::Remote(url) => {
                let host = url.host_str().unwrap_or("table");
                let path = url.path().trim_matches('/').replace('/', "_");
                let stem = if path.is_empty() { host.to_owned() } else { format!("{host}_{path}") };
                PathBuf::from("data").join(format!("{stem}{suffix}"))
            }
        }
    }

    /// A handle on the place with no table loaded: its object store, for the probe.
    pub(crate) fn unloaded(&self) -> Result<DeltaTable, deltalake::DeltaTableError> {
        DeltaTableBuilder::from_url(self.url()?)?.with_storage_options(self.option_map()).build()
    }

    /// Proves the store refuses to create an object that exists (put-if-absent, S3's
    /// `If-None-Match: *`): creates one object of its own under `_idempipe/` twice, expects
    /// the second to be refused, and deletes it. Delta's commits rely on it.
    ///
    /// A local directory that does not exist yet has nothing to prove (and is left
    /// uncreated): a local filesystem refuses to create a file that exists.
    pub async fn check_put_if_absent(&self) -> Result<(), ProbeError> {
        if self.local_path().is_some_and(|path| !path.is_dir()) {
            return Ok(());
        }
        let store = self.unloaded().map_err(|e| self.probe_error(e.to_string()))?.object_store();
        let now = EventTime::now().micros();
        let path = object_store::path::Path::from(format!("_idempipe/put-if-absent-{}-{now}", std::process::id()));
        let create = || PutOptions::from(PutMode::Create);
        store
            .put_opts(&path, PutPayload::from_static(b"1"), create())
            .await
            .map_err(|e| self.probe_error(format!("creating {path} failed: {e}")))?;
        let second = store.put_opts(&path, PutPayload::from_static(b"2"), create()).await;
        // The probe's object goes either way; a failed delete only leaves 1 byte behind.
        if let Err(e) = store.delete(&path).await {
            tracing::warn!(error = %e, %path, "cannot delete the put-if-absent probe's object");
        }
        if let Some(dir) = self.local_path() {
            // A directory is no object: the local store leaves the probe's behind.
            let _ = std::fs::remove_dir(dir.join("_idempipe"));
        }
        match second {
            Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Ok(_) => Err(ProbeError::Unsafe { store: self.to_string() }),
            Err(object_store::Error::NotImplemented { .. }) => Err(ProbeError::Unsafe { store: self.to_string() }),
            Err(e) => Err(self.probe_error(format!("the second create of {path} failed: {e}"))),
        }
    }

    fn probe_error(&self, what: String) -> ProbeError {
        ProbeError::Failed { store: self.to_string(), what }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Self {
        Self::local(path)
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Self {
        Self::local(path.clone())
    }
}

impl From<&Location> for Location {
    fn from(location: &Location) -> Self {
        location.clone()
    }
}

/// Why a store may not hold the table.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the object store of {store} does not honour put-if-absent (a second create of the same \
         object was not refused): Delta commits from several writers would overwrite each other \
         and be lost. Use a store with conditional writes (S3, or an S3-compatible server that \
         honours If-None-Match), and do not set `aws_conditional_put = \"disabled\"` in [storage]"
    )]
    Unsafe { store: String },
    #[error("cannot prove that the object store of {store} honours put-if-absent: {what}")]
    Failed { store: String, what: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_object_stores_and_paths_are_told_apart() {
        let s3 = Location::parse("s3://bucket/delta/events/").unwrap();
        assert_eq!((s3.url().unwrap().as_str(), s3.local_path()), ("s3://bucket/delta/events", None));
        assert_eq!(s3.name(), "events");
        assert_eq!(s3.local_sibling(".batches.jsonl"), PathBuf::from("data/bucket_delta_events.batches.jsonl"));
        assert!(
            Location::parse("s3a://b/t").is_ok() && Location::parse("abfss://c@acct.dfs.core.windows.net/t").is_ok()
        );
        let local = Location::parse("./data/delta/events").unwrap();
        assert_eq!(local.local_path(), Some(Path::new("./data/delta/events")));
        assert_eq!(local.local_sibling(".batches.jsonl"), PathBuf::from("./data/delta/events.batches.jsonl"));
        assert!(Location::parse("hdfs://nn/t").unwrap_err().contains("hdfs://"));
        assert!(Location::parse("s3:///t").is_err(), "no bucket");
    }

    #[tokio::test]
    async fn a_local_directory_honours_put_if_absent() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::local(dir.path().join("events"));
        std::fs::create_dir_all(dir.path().join("events")).unwrap();
        location.check_put_if_absent().await.unwrap();
        assert!(!dir.path().join("events/_idempipe").exists(), "the probe leaves nothing behind");
        let missing = Location::local(dir.path().join("not-yet"));
        missing.check_put_if_absent().await.unwrap();
        assert!(!dir.path().join("not-yet").exists(), "a missing directory is not made");
    }
}
