//! The key index: every `dedup_key` the Delta table holds, in memory, so that the
//! already-stored check costs one hash lookup per event instead of a scan of the table
//! (whose cost grows with the table).
//!
//! Invariants:
//! - after [`KeyIndex::sync`] against a snapshot at version V, the index holds exactly
//!   the keys of the data files live at V: it has read the key column of every one of
//!   them; when files it read are no longer live, it keeps their keys only if they were
//!   all rewritten by a compaction (removes saying `dataChange = false`: the rows live on
//!   in the compaction's files, which it reads) and no rows were deleted since it last
//!   started from nothing (no new remove saying `dataChange = true`); otherwise it starts
//!   again from nothing, so it never answers "stored" for a key that is not;
//! - it lives only in memory and is built from Delta on start, so it cannot go stale
//!   across restarts, and it never replaces Delta's own guarantee: the commit that
//!   inserts the rows found new declares that it read the batch's `event_date`
//!   partitions, so a file another writer added there after V makes the commit a
//!   conflict, and the batch is checked again on the new version.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use deltalake::{DeltaTable, DeltaTableError, ObjectStore};
use futures::StreamExt;

use crate::event::DedupKey;
use crate::table::read::{KeySink, data_file_stream, scan_keys};
use crate::table::schema::PARTITION_COLUMN;

/// The keys of the table at one version, and the files they were read from.
#[derive(Default)]
pub struct KeyIndex {
    keys: HashSet<DedupKey>,
    /// Paths (relative to the table root, as the snapshot lists them) of the data files
    /// whose keys are in `keys`, read from the file itself.
    files: HashSet<String>,
    /// Data files with a deletion vector (rows deleted by another engine), whose live
    /// keys are in `keys`, read by a scan of their dates that applies the vectors (the
    /// raw file still holds the deleted rows): path and the vector's id.
    vectored: HashMap<String, String>,
    version: Option<u64>,
    /// Files this process wrote and is about to commit, with their keys: when they show
    /// up live, their keys are taken from here instead of being read back.
    pending: Option<Pending>,
    rebuilds: u64,
    /// Files removed as a change of data (deleted rows, not a compaction) that the keys
    /// already account for: those live in the table's tombstones when the index last
    /// started again from nothing. Any other such tombstone means rows were deleted
    /// since, and the index must start again.
    deletes_seen: HashSet<String>,
}

struct Pending {
    paths: Vec<String>,
    keys: Vec<DedupKey>,
}

/// What one [`KeyIndex::sync`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncStats {
    /// Data files whose key column was read.
    pub files_read: u64,
    /// Keys read from them.
    pub keys_read: u64,
    /// Keys taken from this process's own commit without reading.
    pub keys_own: u64,
    /// Whether the index started again from nothing (a file it had read is gone).
    pub rebuilt: bool,
    /// Files it had read that a compaction replaced (their keys stay).
    pub compacted: u64,
    pub elapsed: Duration,
}

impl KeyIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the table (at the synced version) holds `key`.
    pub fn contains(&self, key: &DedupKey) -> bool {
        self.keys.contains(key)
    }

    /// Keys in the index.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The table version the index reflects, once synced.
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    /// How many times a vanished file made the index start again.
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds
    }

    /// Approximate heap bytes: the hash table (16-byte key and one control byte per
    /// bucket; the buckets are a power of two, of which 7/8 are usable) plus the file list.
    pub fn heap_bytes(&self) -> usize {
        let capacity = self.keys.capacity();
        let buckets = if capacity < 8 { capacity + 1 } else { (capacity * 8 / 7).next_power_of_two() };
        let keys = buckets * (size_of::<DedupKey>() + 1);
        let files: usize = self.files.iter().map(|p| p.capacity() + size_of::<String>() + 1).sum();
        keys + files
    }

    /// Records that this process is about to commit `paths` holding `keys`: if they turn
    /// up live at the next sync, their keys are added without reading the files back. If
    /// the commit never lands, they never turn up and this is forgotten.
    pub fn expect_commit(&mut self, paths: Vec<String>, keys: Vec<DedupKey>) {
        self.pending = Some(Pending { paths, keys });
    }

    /// Brings the index to the version `table` has loaded: reads the key column of every
    /// live data file it has not read, and starts again if a file it read is gone.
    pub async fn sync(&mut self, table: &DeltaTable) -> Result<SyncStats, DeltaTableError> {
        let started = Instant::now();
        let snapshot = table.snapshot()?;
        let version = snapshot.version();
        let pending = self.pending.take();
        let mut stats = SyncStats::default();
        if self.version == Some(version) {
            return Ok(stats);
        }
        let live: Vec<LiveFile> = snapshot
            .log_data()
            .iter()
            .map(|f| LiveFile {
                path: f.path().into_owned(),
                location: f.object_store_path(),
                vector: f
                    .deletion_vector_descriptor()
                    .map(|d| format!("{:?}{}@{:?}", d.storage_type, d.path_or_inline_dv, d.offset)),
                date: f.partition_values_map().get(PARTITION_COLUMN).cloned().flatten(),
            })
            .collect();
        let live_paths: HashMap<&str, Option<&str>> =
            live.iter().map(|f| (f.path.as_str(), f.vector.as_deref())).collect();
        // A file read whole that has a deletion vector now had rows deleted: gone as read.
        let gone: Vec<String> =
            self.files.iter().filter(|p| !matches!(live_paths.get(p.as_str()), Some(None))).cloned().collect();
        // A file with a deletion vector that is gone or has another one now: rows deleted.
        let vectors_changed =
            self.vectored.iter().any(|(p, v)| live_paths.get(p.as_str()).copied().flatten() != Some(v.as_str()));
        let gone_removals = if gone.is_empty() { None } else { Some(removals(table, &gone).await?) };
        if vectors_changed {
            tracing::info!(version, "key index: rows were deleted with deletion vectors; rebuilding from the table");
            let deletes = match gone_removals {
                Some(gone) => gone.deletes,
                None => removals(table, &[]).await?.deletes,
            };
            self.start_again(deletes);
            stats.rebuilt = true;
        } else if let Some(removals) = gone_removals.as_ref().filter(|r| r.rewritten_only(&self.deletes_seen)) {
            // A compaction: its removes say the rows did not change, and no rows were
            // deleted since the index last read the table, so the keys stay; the files
            // it wrote are read below like any new file (their keys are already here:
            // reading them again changes nothing).
            for path in &gone {
                self.files.remove(path);
            }
            stats.compacted = removals.gone_rewritten as u64;
        } else if let Some(removals) = gone_removals {
            // A file whose keys we hold is gone: rows may have been deleted. Only a full
            // re-read is sure to drop exactly those.
            tracing::info!(version, "key index: a data file it read is no longer live; rebuilding from the table");
            self.start_again(removals.deletes);
            stats.rebuilt = true;
        }
        let mut own: HashSet<&str> = HashSet::new();
        if let Some(pending) = &pending
            && !stats.rebuilt
            && pending.paths.iter().all(|p| live_paths.get(p.as_str()) == Some(&None) && !self.files.contains(p))
        {
            self.keys.extend(pending.keys.iter().copied());
            stats.keys_own = pending.keys.len() as u64;
            own.extend(pending.paths.iter().map(String::as_str));
        }
        let store = table.object_store();
        let mut scan_dates = BTreeSet::new();
        for file in &live {
            if self.files.contains(&file.path) || self.vectored.contains_key(&file.path) {
                continue;
            }
            if let Some(vector) = &file.vector {
                // Read raw, the file would give its deleted rows back: its date is scanned.
                scan_dates.insert(file.date.clone());
                self.vectored.insert(file.path.clone(), vector.clone());
                continue;
            }
            if !own.contains(file.path.as_str()) {
                stats.keys_read += read_keys(store.clone(), file.location.clone(), &mut self.keys).await?;
                stats.files_read += 1;
            }
            self.files.insert(file.path.clone());
        }
        if !scan_dates.is_empty() {
            // Every live key of those dates (the other files' ones are here already).
            stats.keys_read += scan_keys(table, &scan_dates, &mut self.keys).await?;
        }
        self.version = Some(version);
        stats.elapsed = started.elapsed();
        Ok(stats)
    }

    /// Forgets every key and file, to read the table again from nothing; `deletes` are
    /// the files removed as a change of data that this reading accounts for.
    fn start_again(&mut self, deletes: HashSet<String>) {
        self.keys.clear();
        self.files.clear();
        self.vectored.clear();
        self.deletes_seen = deletes;
        self.rebuilds += 1;
    }
}

/// An index of given keys, tied to no table version (benchmarks and tests): a commit
/// refuses to rely on it until [`KeyIndex::sync`] has read a table.
impl FromIterator<DedupKey> for KeyIndex {
    fn from_iter<I: IntoIterator<Item = DedupKey>>(keys: I) -> Self {
        Self { keys: keys.into_iter().collect(), ..Self::default() }
    }
}

/// What the table's tombstones say about files the index read that are no longer live.
struct Removals {
    /// How many of them were removed with `dataChange = false` (rewritten elsewhere).
    gone_rewritten: usize,
    /// How many have no tombstone at all, or one saying the data changed.
    gone_otherwise: usize,
    /// Every file removed as a change of data (rows deleted).
    deletes: HashSet<String>,
}

impl Removals {
    /// Whether the gone files were only rewritten (a compaction) and no rows were
    /// deleted since the index last started from nothing.
    fn rewritten_only(&self, deletes_seen: &HashSet<String>) -> bool {
        self.gone_otherwise == 0 && self.deletes.is_subset(deletes_seen)
    }
}

/// A data file live at the version being synced.
struct LiveFile {
    path: String,
    location: deltalake::Path,
    /// Its deletion vector's id, if it has one.
    vector: Option<String>,
    /// Its `event_date` partition value (`None`: a null date).
    date: Option<String>,
}

/// Reads the table's tombstones for the files in `gone` (and every delete).
async fn removals(table: &DeltaTable, gone: &[String]) -> Result<Removals, DeltaTableError> {
    let mut unexplained: HashSet<&str> = gone.iter().map(String::as_str).collect();
    let mut removals = Removals { gone_rewritten: 0, gone_otherwise: 0, deletes: HashSet::new() };
    let log_store = table.log_store();
    let snapshot = table.snapshot()?;
    let mut tombstones = snapshot.all_tombstones(log_store.as_ref());
    while let Some(tombstone) = tombstones.next().await {
        let tombstone = tombstone?;
        let path = tombstone.path();
        if tombstone.data_change() {
            removals.deletes.insert(path.clone().into_owned());
        } else if unexplained.remove(path.as_ref()) {
            removals.gone_rewritten += 1;
        }
    }
    // Deleted, or gone with no tombstone at all (expired): the keys cannot be trusted.
    removals.gone_otherwise = unexplained.len();
    Ok(removals)
}

/// Adds the `dedup_key` column of one data file to `keys`; returns the rows read.
#[allow(deprecated)]
pub(crate) async fn read_keys(
    store: std::sync::Arc<dyn ObjectStore>,
    location: deltalake::Path,
    keys: &mut impl KeySink,
) -> Result<u64, DeltaTableError> {
    let mut stream = data_file_stream(store, location.clone(), Some("dedup_key")).await?;
    let mut rows = 0_u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let Some(column) = batch.columns().first() else {
            return Err(DeltaTableError::Generic(format!("data file {location} has no dedup_key column")));
        };
        rows += keys.add_key_column(column, &location)?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_counts_every_bucket_of_the_table() {
        for n in [1_000_u32, 100_000] {
            let index: KeyIndex = (0..n)
                .map(|i| {
                    let mut key = [0_u8; 16];
                    key[..4].copy_from_slice(&i.to_le_bytes());
                    DedupKey(key)
                })
                .collect();
            assert_eq!(index.len(), n as usize);
            // 17 bytes a bucket; between 7/8 and 7/16 of the buckets are full.
            let per_key = index.heap_bytes() as f64 / f64::from(n);
            assert!((17.0 * 8.0 / 7.0..=17.0 * 16.0 / 7.0 + 0.5).contains(&per_key), "{per_key} bytes per key");
            assert!(index.version().is_none(), "an index of given keys is tied to no table version");
        }
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;
    use crate::table::testing::*;

    #[tokio::test]
    async fn the_key_index_sees_every_writers_keys_and_agrees_with_a_scan() {
        let (_dir, path) = new_table().await;
        let (mut a, mut b) = (indexed(&path).await, indexed(&path).await);

        let first = [rows(0..50, 100, 0), rows(50..80, 101, 0)].concat();
        let outcome = check_and_insert(&mut a, &first, 0).await.unwrap();
        assert_eq!(outcome.inserted, 80);
        assert_eq!(outcome.files_added, 2, "one file per date");

        // The other writer reads a's files; a takes its own keys without reading them.
        b.reload().await.unwrap();
        let everything = [first.clone(), rows(80..120, 101, 1)].concat();
        let found = b.existing_keys(&probe(&everything)).await.unwrap();
        assert_eq!(found, keys(&first));
        assert_eq!(found, b.scan_existing_keys(&probe(&everything)).await.unwrap());
        let outcome = check_and_insert(&mut b, &everything, 1).await.unwrap();
        assert_eq!(outcome.inserted, 40, "only the keys a did not store");

        a.reload().await.unwrap();
        let found = a.existing_keys(&probe(&everything)).await.unwrap();
        assert_eq!(found, keys(&everything));
        assert_eq!(a.key_index().map(KeyIndex::len), Some(120));
        let counts = a.counts().await.unwrap();
        assert_eq!((counts.rows, counts.distinct_keys), (120, 120));
    }

    #[tokio::test]
    async fn an_append_conflicts_with_a_file_added_to_its_dates_since_its_check() {
        let (_dir, path) = new_table().await;
        let (mut a, mut b) = (indexed(&path).await, indexed(&path).await);

        check_and_insert(&mut a, &rows(0..30, 100, 0), 0).await.unwrap();
        // b checked at the old version, so keys 20..30 look new to it: its commit must
        // fail rather than store them a second time.
        let e = check_and_insert(&mut b, &rows(20..60, 100, 1), 1).await.unwrap_err();
        assert!(e.is_write_conflict(), "expected a lost race, got {e}");
        // A date a did not touch does not conflict.
        check_and_insert(&mut b, &rows(1_000..1_010, 200, 1), 1).await.unwrap();
        // Redone on the new version, the batch stores only what is new.
        b.reload().await.unwrap();
        let outcome = check_and_insert(&mut b, &rows(20..60, 100, 1), 1).await.unwrap();
        assert_eq!(outcome.inserted, 30);
        let counts = b.counts().await.unwrap();
        assert_eq!((counts.rows, counts.distinct_keys), (70, 70));
    }

    #[tokio::test]
    async fn a_compaction_keeps_the_rows_and_the_index_its_keys() {
        let (_dir, path) = new_table().await;
        let mut a = indexed(&path).await;
        let mut b = indexed(&path).await;
        for i in 0..3 {
            check_and_insert(&mut a, &rows(i * 10..i * 10 + 10, 100, 0), 0).await.unwrap();
        }
        check_and_insert(&mut a, &rows(30..35, 101, 0), 0).await.unwrap();
        let before = a.counts().await.unwrap();
        assert_eq!((before.files, before.rows), (4, 35));
        let outcome = a.compact().await.unwrap();
        assert_eq!((outcome.files_removed, outcome.files_added, outcome.partitions), (3, 1, 1), "{outcome:?}");
        let after = a.counts().await.unwrap();
        assert_eq!((after.files, after.rows, after.distinct_keys), (2, 35, 35));

        // Another writer's index, built before the compaction, keeps its keys too.
        b.reload().await.unwrap();
        let all = rows(0..40, 100, 0);
        for t in [&mut a, &mut b] {
            let found = t.existing_keys(&probe(&all)).await.unwrap();
            assert_eq!(found, keys(&all[..30]));
            let index = t.key_index().unwrap();
            assert_eq!((index.rebuilds(), index.len()), (0, 35));
        }
        // And a later batch still sees exactly what is stored.
        let outcome = check_and_insert(&mut b, &all, 0).await.unwrap();
        assert_eq!(outcome.inserted, 10);
        assert_eq!(b.counts().await.unwrap().rows, 45);
    }

    #[tokio::test]
    async fn rows_deleted_after_a_compaction_make_the_index_start_again() {
        let (_dir, path) = new_table().await;
        let mut a = indexed(&path).await;
        let mut b = indexed(&path).await;
        for i in 0..3 {
            check_and_insert(&mut a, &rows(i * 10..i * 10 + 10, 100, 0), 0).await.unwrap();
        }
        b.reload().await.unwrap();
        let all = rows(0..30, 100, 0);
        assert_eq!(b.existing_keys(&probe(&all)).await.unwrap().len(), 30);
        // A compaction, then (before `b` looks again) another engine deletes five rows
        // from the compacted file: `b`'s files were only rewritten, but rows are gone.
        a.compact().await.unwrap();
        let doomed: Vec<String> = all[..5].iter().map(|r| format!("'{}'", r.key)).collect();
        a.table.clone().delete().with_predicate(format!("dedup_key IN ({})", doomed.join(","))).await.unwrap();
        b.reload().await.unwrap();
        let found = b.existing_keys(&probe(&all)).await.unwrap();
        assert_eq!(found, keys(&all[5..]), "the deleted keys are not stored any more");
        assert_eq!(b.key_index().unwrap().rebuilds(), 1);
    }
}
