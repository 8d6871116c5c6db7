//! The batch log: one JSON line per processed micro-batch, beside the Delta table, for
//! `analyze` and for operators.
//!
//! Invariant: a line is written only after the batch's Delta commit, so the log never
//! claims a batch that Delta does not hold. (A crash between the commit and the line
//! loses the line, not data.) The log is bounded: past [`MAX_LOG_BYTES`] the file moves
//! to `<name>.1` (replacing the one before) and a new one starts; readers read both.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::event::EventTime;
use crate::kafka::ranges::OffsetReset;

/// Milliseconds spent in each phase of a batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Phases {
    /// Waiting for and reading messages (includes parsing).
    pub collect_ms: f64,
    /// Parsing, validating and computing keys (part of `collect_ms`).
    pub parse_ms: f64,
    /// In-batch dedup.
    pub dedup_ms: f64,
    /// Reloading the table and reading the txn versions.
    pub reload_ms: f64,
    /// Finding which keys the table already holds.
    pub check_ms: f64,
    /// Sending to the processed and dead-letter topics and awaiting acks.
    pub produce_ms: f64,
    /// Writing the new rows' data files (key index), alongside `produce_ms`.
    #[serde(default)]
    pub write_ms: f64,
    /// The Delta commit (with the key index), or the MERGE and its commit (scan).
    pub commit_ms: f64,
}

/// One processed batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchRecord {
    pub batch_id: i64,
    /// When the batch's collect wait began; `None` when a log line's time does not parse
    /// (a hand-edited or foreign log: `analyze` keeps the record and estimates).
    #[serde(with = "log_time")]
    pub started_at: Option<EventTime>,
    /// When the record was written, after the commit.
    #[serde(with = "log_time")]
    pub ended_at: Option<EventTime>,
    pub events_in: u64,
    pub invalid: u64,
    pub in_batch_duplicates: u64,
    pub stored_duplicates: u64,
    /// Rows the commit inserted; `None` when a commit that reported an error turned out
    /// to have happened, so the count is not known.
    pub inserted: Option<u64>,
    /// Messages skipped because another writer had already stored their offsets.
    pub already_committed: u64,
    /// Offsets skipped by the broker inside the batch's ranges (see `Batch::offset_gaps`).
    #[serde(default)]
    pub offset_gaps: u64,
    pub events_per_partition: BTreeMap<i32, u64>,
    pub phases: Phases,
    pub attempts: u32,
    /// Attempts that lost a commit race to another writer (another instance) and were
    /// redone; part of `attempts`.
    #[serde(default)]
    pub conflicts: u32,
    pub delta_version: u64,
    pub files_added: u64,
    /// Partitions whose stored offset the broker no longer held and which reading went on
    /// from its first offset (`fail_on_data_loss = false`). Such a reset is logged as a
    /// record of its own, with no events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offset_resets: Vec<OffsetReset>,
}

impl BatchRecord {
    /// Whether this record logs offset resets only, no batch.
    pub fn is_reset_only(&self) -> bool {
        !self.offset_resets.is_empty() && self.events_in == 0
    }
}

/// The size at which the log file is rotated: about 90,000 batches (a day at a 1 s
/// trigger), so `analyze` reads at most twice this.
pub const MAX_LOG_BYTES: u64 = 64 << 20;

/// Appends records to the log file.
pub struct BatchLog {
    path: PathBuf,
}

impl BatchLog {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and flushes it.
    pub(crate) fn append(&self, record: &BatchRecord) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() + line.len() as u64 > MAX_LOG_BYTES) {
            std::fs::rename(&self.path, self.previous())?;
        }
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        file.write_all(&line)
    }

    /// The last record, reading only the end of the file.
    pub fn last(&self) -> std::io::Result<Option<BatchRecord>> {
        use std::io::{Read, Seek, SeekFrom};
        for path in [self.path.clone(), self.previous()] {
            let mut file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let len = file.metadata()?.len();
            // A line is under 1 KiB unless a batch spans thousands of partitions.
            file.seek(SeekFrom::Start(len.saturating_sub(1 << 20)))?;
            let mut tail = Vec::new();
            file.read_to_end(&mut tail)?;
            let last =
                String::from_utf8_lossy(&tail).lines().rev().find_map(|l| serde_json::from_str::<BatchRecord>(l).ok());
            if last.is_some() {
                return Ok(last);
            }
        }
        Ok(None)
    }

    /// The rotated-out file.
    fn previous(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    /// Reads every record, the rotated-out file's first; a torn line (crash
    /// mid-write) is skipped.
    pub fn read(&self) -> std::io::Result<Vec<BatchRecord>> {
        let mut records = Vec::new();
        for path in [self.previous(), self.path.clone()] {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            records.extend(text.lines().filter_map(|l| serde_json::from_str::<BatchRecord>(l).ok()));
        }
        Ok(records)
    }
}

/// Times in the log are canonical RFC 3339 text (UTC, microseconds); one that does not
/// parse reads as `None`, written back as an empty string.
pub(crate) mod log_time {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::event::EventTime;

    pub(crate) fn serialize<S: Serializer>(time: &Option<EventTime>, s: S) -> Result<S::Ok, S::Error> {
        match time {
            Some(t) => s.collect_str(t),
            None => s.serialize_str(""),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<EventTime>, D::Error> {
        let text = String::deserialize(d)?;
        Ok(EventTime::parse(&text).ok())
    }
}

impl BatchRecord {
    /// The figures the metrics count of a committed batch.
    pub(crate) fn figures(&self) -> crate::metrics::BatchFigures {
        crate::metrics::BatchFigures {
            events_in: self.events_in,
            invalid: self.invalid,
            in_batch_duplicates: self.in_batch_duplicates,
            stored_duplicates: self.stored_duplicates,
            inserted: self.inserted.unwrap_or(0),
            conflicts: self.conflicts,
            delta_version: self.delta_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_an_unreadable_one_is_kept_as_unknown() {
        let t = EventTime::parse("2026-11-25T02:13:20.758213Z").unwrap();
        let record = BatchRecord { batch_id: 1, started_at: Some(t), ..BatchRecord::default() };
        let line = serde_json::to_string(&record).unwrap();
        assert!(line.contains("\"started_at\":\"2026-11-25T02:13:20.758213Z\",\"ended_at\":\"\""), "{line}");
        let back: BatchRecord = serde_json::from_str(&line).unwrap();
        assert_eq!((back.started_at, back.ended_at), (Some(t), None));
        let odd = line.replace("2026-11-25T02:13:20.758213Z", "yesterday");
        assert_eq!(serde_json::from_str::<BatchRecord>(&odd).unwrap().started_at, None);
    }

    #[test]
    fn records_round_trip_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = BatchLog::new(dir.path().join("events.batches.jsonl"));
        let record = BatchRecord { batch_id: 7, events_in: 10, inserted: Some(9), ..Default::default() };
        log.append(&record).unwrap();
        log.append(&BatchRecord { batch_id: 8, ..Default::default() }).unwrap();
        std::fs::OpenOptions::new().append(true).open(log.path()).unwrap().write_all(b"{\"batch_id\":9,").unwrap();
        let read = log.read().unwrap();
        assert_eq!(read.iter().map(|r| r.batch_id).collect::<Vec<_>>(), vec![7, 8]);
        assert_eq!(read[0].inserted, Some(9));
    }

    #[test]
    fn a_full_log_rotates_and_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let log = BatchLog::new(dir.path().join("events.batches.jsonl"));
        log.append(&BatchRecord { batch_id: 1, ..Default::default() }).unwrap();
        // Grow the file to just under the limit, as a day of batches would, ending with
        // a line for batch 3.
        let mut line = serde_json::to_vec(&BatchRecord { batch_id: 3, ..Default::default() }).unwrap();
        line.insert(0, b'\n');
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new().append(true).open(log.path()).unwrap();
        file.set_len(MAX_LOG_BYTES - 10 - line.len() as u64).unwrap();
        file.write_all(&line).unwrap();
        log.append(&BatchRecord { batch_id: 2, ..Default::default() }).unwrap();
        assert!(log.previous().exists());
        assert!(std::fs::metadata(log.path()).unwrap().len() < 1_000, "a new file was started");
        let ids: Vec<i64> = log.read().unwrap().iter().map(|r| r.batch_id).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        assert_eq!(log.last().unwrap().map(|r| r.batch_id), Some(2));
        std::fs::remove_file(log.path()).unwrap();
        assert_eq!(log.last().unwrap().map(|r| r.batch_id), Some(3), "from the rotated-out file");
    }
}
