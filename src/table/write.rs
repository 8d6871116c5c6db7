//! Writing a batch: the already-stored check, then one commit with the new rows and the
//! Kafka offsets.
//!
//! Two ways, chosen once, by whether the table keeps stored keys ([`StoredKeys`]):
//! - **cache or index** (`key_check = cache`, the default, or `index`): the check reads
//!   the candidate files' keys through the
//!   [`KeyCache`](crate::table::key_cache::KeyCache), or looks them up in the
//!   [`KeyIndex`]; the new rows are written as data files ([`EventTable::prepare`],
//!   while the output topics' acks come in) and appended by a commit that declares it
//!   read their `event_date` partitions at the checked version, so a file another
//!   writer added there since makes it a conflict;
//! - **scan**: the check is a semi-join with the batch's dates' partitions, and the rows
//!   go in by an insert-only MERGE on `dedup_key` that reads those partitions.
//!
//! Invariant: either way, one commit carries the rows and the offsets' txn actions, and
//! a concurrent insert into the same dates makes it a conflict
//! ([`crate::table::DeltaError::is_write_conflict`]) rather than a duplicate.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use deltalake::arrow::array::{Date32Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema};
use deltalake::datafusion::prelude::{SessionContext, col};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};

use crate::event::{DedupKey, EventTime};
use crate::table::key_cache::parse_date;
use crate::table::schema::{PARTITION_COLUMN, batch_dates, date_column, date_list, key_column};
use crate::table::{DeltaError, EventTable, Result, Row, StoredKeys, without_post_commit_maintenance};

/// A batch's new rows on their way into the table: written as data files, not yet
/// committed (index), or held for the MERGE (scan).
#[derive(Debug)]
pub enum PendingWrite {
    Staged(Staged),
    Merge(RecordBatch),
}

/// Rows written as data files by [`EventTable::prepare`], not yet committed.
#[derive(Debug)]
pub struct Staged {
    adds: Vec<Add>,
    dates: BTreeSet<i32>,
    rows: u64,
    /// The table version the rows were checked at.
    version: u64,
}

/// What an insert did.
#[derive(Debug, Clone, Copy, Default)]
pub struct InsertOutcome {
    /// Rows inserted.
    pub inserted: u64,
    /// Data files added.
    pub files_added: u64,
    /// The table version after the commit.
    pub version: u64,
}

impl EventTable {
    /// Which of `probes` (key and event time) the table already holds, at the loaded
    /// version. With the key index, a lookup per key (after reading the files added since
    /// the index's version); with the key cache, a lookup in the keys of the files each
    /// event could be in (read if not cached); without either, a semi-join that reads only
    /// the partitions of the events' dates.
    pub async fn existing_keys(&mut self, probes: &[(DedupKey, EventTime)]) -> Result<HashSet<DedupKey>> {
        let location = self.location.to_string();
        let error = |e| DeltaError::Table { location: location.clone(), source: Box::new(e) };
        match self.keys.as_mut() {
            Some(StoredKeys::Index(index)) => {
                let stats = index.sync(&self.table).await.map_err(error)?;
                if stats.files_read > 0 || stats.rebuilt {
                    tracing::debug!(
                        files_read = stats.files_read,
                        keys_read = stats.keys_read,
                        rebuilt = stats.rebuilt,
                        elapsed = ?stats.elapsed,
                        "key index: read files added by others"
                    );
                }
                Ok(probes.iter().map(|(k, _)| *k).filter(|k| index.contains(k)).collect())
            }
            Some(StoredKeys::Cache(cache)) => {
                cache.sync(&self.table).map_err(error)?;
                let (mut found, to_scan, stats) =
                    cache.check(self.table.object_store(), probes).await.map_err(error)?;
                if stats.files_read > 0 {
                    tracing::debug!(
                        hits = stats.hits,
                        files_read = stats.files_read,
                        keys_read = stats.keys_read,
                        cached_mib = cache.bytes() >> 20,
                        elapsed = ?stats.elapsed,
                        "key cache: read the keys of candidate files"
                    );
                }
                if !to_scan.is_empty() {
                    found.extend(self.scan_existing_keys(&to_scan).await?);
                }
                Ok(found)
            }
            None => self.scan_existing_keys(probes).await,
        }
    }

    /// The already-stored check of a batch: the rows of `rows` (no key twice) whose key
    /// the loaded version does not hold.
    pub async fn new_rows<'r>(&mut self, rows: &'r [Row]) -> Result<Vec<&'r Row>> {
        let probe: Vec<(DedupKey, EventTime)> = rows.iter().map(|r| (r.key, r.time)).collect();
        let existing = self.existing_keys(&probe).await?;
        Ok(rows.iter().filter(|r| !existing.contains(&r.key)).collect())
    }

    /// [`EventTable::existing_keys`] by a semi-join of the batch's dates' partitions.
    pub(crate) async fn scan_existing_keys(&self, keys: &[(DedupKey, EventTime)]) -> Result<HashSet<DedupKey>> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let probe_schema = Arc::new(Schema::new(vec![
            Field::new("k", ArrowType::Utf8, false),
            Field::new("d", ArrowType::Date32, false),
        ]));
        let probe = RecordBatch::try_new(
            probe_schema,
            vec![
                Arc::new(keys.iter().map(|(k, _)| Some(k.to_string())).collect::<StringArray>()),
                Arc::new(Date32Array::from_iter_values(keys.iter().map(|(_, t)| t.days_since_epoch()))),
            ],
        )
        .map_err(|e| self.error(e.into()))?;
        let sql = format!(
            "SELECT t.dedup_key FROM t JOIN probe ON t.dedup_key = probe.k AND t.event_date = probe.d \
             WHERE t.event_date IN ({})",
            date_list(keys.iter().map(|(_, t)| t.days_since_epoch()))
        );
        let mut found = HashSet::new();
        for batch in self.query_with(&sql, Some(("probe", probe))).await? {
            let strings = self.strings(&batch, 0)?;
            found.extend(strings.iter().flatten().filter_map(DedupKey::from_hex));
        }
        Ok(found)
    }

    /// Step one of an insert: with stored keys (cache or index), writes `batch` (the rows
    /// [`EventTable::existing_keys`] found new at the loaded version) as data files, not
    /// yet part of the table; without, holds it for the MERGE. Independent of the output
    /// topics, so the pipeline runs it while their acks come in.
    pub async fn prepare(&mut self, batch: RecordBatch) -> Result<PendingWrite> {
        let Some(keys) = self.keys.as_ref() else {
            return Ok(PendingWrite::Merge(batch));
        };
        let checked_version = keys.version();
        if checked_version != Some(self.version()) {
            // The check must have been made on the version the commit will read from.
            return Err(self.unexpected(&format!(
                "the key check is at version {checked_version:?}, the table at {}: check the batch first",
                self.version()
            )));
        }
        let mut staged = Staged {
            adds: Vec::new(),
            dates: batch_dates(&batch),
            rows: batch.num_rows() as u64,
            version: self.version(),
        };
        if batch.num_rows() > 0 {
            let keys = key_column(&batch).ok_or_else(|| self.unexpected("the batch has no dedup_key column"))?;
            let dates = date_column(&batch).ok_or_else(|| self.unexpected("the batch has no event_date column"))?;
            let mut writer = RecordBatchWriter::for_table(&self.table).map_err(|e| self.error(e))?;
            writer.write(batch).await.map_err(|e| self.error(e))?;
            staged.adds = writer.flush().await.map_err(|e| self.error(e))?;
            match self.keys.as_mut() {
                Some(StoredKeys::Index(index)) => {
                    index.expect_commit(staged.adds.iter().map(|a| a.path.clone()).collect(), keys);
                }
                Some(StoredKeys::Cache(cache)) => {
                    let files = staged.adds.iter().filter_map(|a| Some((a.path.clone(), staged_date(a)?))).collect();
                    cache.expect_commit(files, keys.into_iter().zip(dates).collect());
                }
                None => {}
            }
        }
        Ok(PendingWrite::Staged(staged))
    }

    /// Step two: the one commit of the prepared rows with `txns` (and `metadata`, an
    /// object, in the commit info). When no row is new, commits the txns alone, so that
    /// the Kafka progress is recorded either way.
    pub async fn commit(
        &mut self,
        pending: PendingWrite,
        txns: &[Transaction],
        metadata: serde_json::Value,
    ) -> Result<InsertOutcome> {
        match pending {
            PendingWrite::Staged(staged) => self.commit_staged(staged, txns, metadata).await,
            PendingWrite::Merge(batch) => self.merge_insert(batch, txns, metadata).await,
        }
    }

    /// Both steps at once: inserts the rows of `batch` (checked with
    /// [`EventTable::existing_keys`] at the loaded version, no key twice) with `txns`.
    pub async fn insert(
        &mut self,
        batch: RecordBatch,
        txns: &[Transaction],
        metadata: serde_json::Value,
    ) -> Result<InsertOutcome> {
        let pending = self.prepare(batch).await?;
        self.commit(pending, txns, metadata).await
    }

    /// The cache or index way: one commit with the staged files and `txns`, which
    /// declares that it read the staged rows' `event_date` partitions at the checked
    /// version, so a file another writer added there since makes it a conflict. With no
    /// files, records the txns alone.
    async fn commit_staged(
        &mut self,
        staged: Staged,
        txns: &[Transaction],
        metadata: serde_json::Value,
    ) -> Result<InsertOutcome> {
        if staged.version != self.version() {
            return Err(self.unexpected(&format!(
                "the batch was checked at version {} but the table is at {}: check it again",
                staged.version,
                self.version()
            )));
        }
        let mut outcome =
            InsertOutcome { inserted: staged.rows, files_added: staged.adds.len() as u64, version: self.version() };
        if staged.adds.is_empty() && txns.is_empty() {
            return Ok(outcome);
        }
        let properties = commit_properties(txns, &metadata);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(vec![PARTITION_COLUMN.to_owned()]),
            predicate: (!staged.dates.is_empty())
                .then(|| format!("{PARTITION_COLUMN} IN ({})", date_list(staged.dates.iter().copied()))),
        };
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        CommitBuilder::from(properties)
            .with_actions(staged.adds.into_iter().map(Action::Add).collect())
            .build(Some(snapshot as &dyn TableReference), self.table.log_store(), operation)
            .await
            .map_err(|e| self.error(e))?;
        self.reload().await?;
        outcome.version = self.version();
        let synced = match self.keys.as_mut() {
            Some(StoredKeys::Index(index)) => index.sync(&self.table).await.map(drop),
            Some(StoredKeys::Cache(cache)) => cache.sync(&self.table),
            None => Ok(()),
        };
        if let Err(e) = synced {
            // The commit landed; the next check syncs again.
            tracing::warn!(error = %e, "cannot bring the key check to the new version yet");
        }
        Ok(outcome)
    }

    /// The scan way: an insert-only MERGE of `batch` on `dedup_key`, reading only the
    /// batch's dates' partitions, in one commit with `txns`. When no row is new, commits
    /// the txns alone.
    async fn merge_insert(
        &mut self,
        batch: RecordBatch,
        txns: &[Transaction],
        metadata: serde_json::Value,
    ) -> Result<InsertOutcome> {
        let dates = batch_dates(&batch);
        let properties = || commit_properties(txns, &metadata);
        let mut outcome = InsertOutcome::default();
        if batch.num_rows() > 0 {
            let ctx = SessionContext::new();
            let source = ctx.read_batch(batch).map_err(|e| self.error(e.into()))?;
            let columns: Vec<String> = self.columns.names().into_iter().map(str::to_owned).collect();
            // The literal date list keeps the read (and so the conflict check) to the
            // batch's partitions.
            let predicate = format!(
                "target.dedup_key = source.dedup_key AND target.event_date = source.event_date \
                 AND target.event_date IN ({})",
                date_list(dates.iter().copied())
            );
            let (table, metrics) = self
                .table
                .clone()
                .merge(source, predicate)
                .with_source_alias("source")
                .with_target_alias("target")
                .when_not_matched_insert(|insert| {
                    // Quoted: a key column's name may hold capitals, which SQL folds.
                    columns.iter().fold(insert, |i, c| i.set(format!("\"{c}\""), col(format!("source.\"{c}\""))))
                })
                .map_err(|e| self.error(e))?
                .with_commit_properties(properties())
                .await
                .map_err(|e| self.error(e))?;
            self.table = table;
            outcome.inserted = metrics.num_target_rows_inserted as u64;
            outcome.files_added = metrics.num_target_files_added as u64;
        }
        if outcome.files_added == 0 && !txns.is_empty() {
            // A merge that writes nothing makes no commit: record the offsets alone.
            self.record_offsets(txns, metadata).await?;
        }
        outcome.version = self.version();
        Ok(outcome)
    }

    /// Commits `txns` alone, no rows (with `metadata`, an object, in the commit info), and
    /// returns the new version. A txn may move a partition's offset back (a recreated
    /// topic: see [`crate::kafka::ranges`]).
    pub(crate) async fn record_offsets(&mut self, txns: &[Transaction], metadata: serde_json::Value) -> Result<u64> {
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        CommitBuilder::from(commit_properties(txns, &metadata))
            .with_actions(vec![])
            .build(
                Some(snapshot as &dyn TableReference),
                self.table.log_store(),
                DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None },
            )
            .await
            .map_err(|e| self.error(e))?;
        self.reload().await?;
        Ok(self.version())
    }
}

/// The `event_date` of a data file this process wrote, from its add action.
fn staged_date(add: &Add) -> Option<i32> {
    parse_date(add.partition_values.get(PARTITION_COLUMN)?.as_deref()?)
}

/// The properties of a batch's commit: its txns, and `metadata` (an object) in the
/// commit info.
fn commit_properties(txns: &[Transaction], metadata: &serde_json::Value) -> CommitProperties {
    let properties = without_post_commit_maintenance().with_application_transactions(txns.to_vec());
    match metadata {
        serde_json::Value::Object(map) => properties.with_metadata(map.clone()),
        _ => properties,
    }
}
