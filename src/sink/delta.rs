//! The Delta Lake table: the source of truth.
//!
//! Invariants kept here:
//! - a row is inserted only by an insert-only MERGE on `dedup_key`, whose read predicate
//!   (the batch's `event_date` partitions) makes a concurrent writer inserting into the
//!   same partitions a commit conflict rather than a duplicate;
//! - the commit that inserts a batch also records, per Kafka partition, the last offset
//!   the batch covered (a `txn` action with app id `<group>-<topic>-<partition>`); when
//!   nothing is new, a commit with only those `txn` actions records the progress;
//! - the outcome of a failed commit is never assumed: callers reload and read the txn
//!   versions back ([`EventTable::txn_versions`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deltalake::arrow::array::{
    Array, ArrayRef, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::datafusion::prelude::{SessionContext, col};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::kernel::{Action, Add, DataType, Remove, StructField, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};

use crate::event::{DedupKey, EventTime};
use crate::sink::key_index::{KeyIndex, SyncStats};
use crate::sink::processed::ProcessedRecord;

/// Errors of the Delta table, with the path they concern.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("Delta table at {path}: {source}")]
    Table { path: PathBuf, source: Box<DeltaTableError> },
    #[error("no Delta table at {path}: run `idempipe setup` first")]
    Missing { path: PathBuf },
    #[error("Delta path {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("Delta table at {path}: {what}")]
    Unexpected { path: PathBuf, what: String },
}

impl DeltaError {
    /// Whether a compaction lost to another compaction that committed first (the
    /// guard of [`EventTable::compact`]): nothing changed, nothing to repair.
    pub fn is_lost_compaction_race(&self) -> bool {
        use deltalake::kernel::transaction::{CommitConflictError, TransactionError};
        matches!(
            self,
            DeltaError::Table { source, .. }
                if matches!(
                    **source,
                    DeltaTableError::Transaction {
                        source: TransactionError::CommitConflict(CommitConflictError::ConcurrentTransaction)
                    }
                )
        )
    }

    /// Whether a commit lost a race: another writer committed first something this one
    /// read (new files in its partitions, files it read removed, or a txn of the same
    /// id). The attempt must be redone on the new version. Other conflicts (a metadata or
    /// protocol change, a corrupt state) are plain failures.
    pub fn is_write_conflict(&self) -> bool {
        use deltalake::kernel::transaction::{CommitConflictError as C, TransactionError};
        matches!(
            self,
            DeltaError::Table { source, .. }
                if matches!(
                    **source,
                    DeltaTableError::Transaction {
                        source: TransactionError::CommitConflict(
                            C::ConcurrentAppend
                                | C::ConcurrentDeleteRead
                                | C::ConcurrentDeleteDelete
                                | C::ConcurrentTransaction
                        )
                    }
                )
        )
    }
}

pub type Result<T, E = DeltaError> = std::result::Result<T, E>;

/// The partition column: the UTC date of `event_time`.
pub const PARTITION_COLUMN: &str = "event_date";

/// Column names in table order.
pub const COLUMNS: [&str; 10] = [
    "dedup_key",
    "user_id",
    "event_type",
    "event_time",
    "event_date",
    "payload",
    "source_partition",
    "source_offset",
    "batch_id",
    "ingested_at",
];

fn delta_columns() -> Vec<StructField> {
    vec![
        StructField::new("dedup_key", DataType::STRING, false),
        StructField::new("user_id", DataType::STRING, true),
        StructField::new("event_type", DataType::STRING, true),
        StructField::new("event_time", DataType::TIMESTAMP, true),
        StructField::new("event_date", DataType::DATE, true),
        StructField::new("payload", DataType::STRING, true),
        StructField::new("source_partition", DataType::INTEGER, true),
        StructField::new("source_offset", DataType::LONG, true),
        StructField::new("batch_id", DataType::LONG, true),
        StructField::new("ingested_at", DataType::TIMESTAMP, true),
    ]
}

/// The Arrow schema of a batch of rows, matching the Delta schema.
pub fn arrow_schema() -> SchemaRef {
    let utc_micros = ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("dedup_key", ArrowType::Utf8, false),
        Field::new("user_id", ArrowType::Utf8, true),
        Field::new("event_type", ArrowType::Utf8, true),
        Field::new("event_time", utc_micros.clone(), true),
        Field::new("event_date", ArrowType::Date32, true),
        Field::new("payload", ArrowType::Utf8, true),
        Field::new("source_partition", ArrowType::Int32, true),
        Field::new("source_offset", ArrowType::Int64, true),
        Field::new("batch_id", ArrowType::Int64, true),
        Field::new("ingested_at", utc_micros, true),
    ]))
}

/// One row to insert: a validated event and where it came from.
#[derive(Debug, Clone)]
pub struct Row {
    pub key: DedupKey,
    pub user_id: String,
    pub event_type: String,
    pub time: EventTime,
    pub payload: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

impl Row {
    /// The row of a validated event read at `partition` and `offset`.
    pub fn from_event(event: crate::event::Event<'_>, partition: i32, offset: i64) -> Self {
        Self {
            key: event.key,
            user_id: event.user_id.into_owned(),
            event_type: event.event_type.into_owned(),
            time: event.time,
            payload: event.payload.to_owned(),
            source_partition: partition,
            source_offset: offset,
        }
    }
}

/// Builds the Arrow batch of `rows`, stamped with the batch id and ingest time.
pub fn to_record_batch(
    rows: &[&Row],
    batch_id: i64,
    ingested_at: EventTime,
) -> Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    let keys: StringArray = rows.iter().map(|r| Some(r.key.to_string())).collect();
    let users: StringArray = rows.iter().map(|r| Some(r.user_id.as_str())).collect();
    let types: StringArray = rows.iter().map(|r| Some(r.event_type.as_str())).collect();
    let times = TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.time.micros())).with_timezone("UTC");
    let dates = Date32Array::from_iter_values(rows.iter().map(|r| r.time.days_since_epoch()));
    let payloads: StringArray = rows.iter().map(|r| Some(r.payload.as_str())).collect();
    let partitions = Int32Array::from_iter_values(rows.iter().map(|r| r.source_partition));
    let offsets = Int64Array::from_iter_values(rows.iter().map(|r| r.source_offset));
    let batch_ids = Int64Array::from_value(batch_id, rows.len());
    let ingested = TimestampMicrosecondArray::from_value(ingested_at.micros(), rows.len()).with_timezone("UTC");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(keys),
        Arc::new(users),
        Arc::new(types),
        Arc::new(times),
        Arc::new(dates),
        Arc::new(payloads),
        Arc::new(partitions),
        Arc::new(offsets),
        Arc::new(batch_ids),
        Arc::new(ingested),
    ];
    RecordBatch::try_new(arrow_schema(), columns)
}

/// Rows written as data files by [`EventTable::stage`], not yet committed.
#[derive(Debug)]
pub struct Staged {
    adds: Vec<Add>,
    dates: BTreeSet<i32>,
    rows: u64,
    /// The table version the rows were checked at.
    version: u64,
}

/// What a merge did.
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeOutcome {
    /// Rows the merge inserted.
    pub inserted: u64,
    /// Data files it added.
    pub files_added: u64,
    /// The table version after the commit.
    pub version: u64,
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CompactOutcome {
    pub files_removed: u64,
    pub files_added: u64,
    pub partitions: u64,
    /// The table version after it.
    pub version: u64,
}

/// What a vacuum deleted (or, dry, would delete).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VacuumOutcome {
    pub dry_run: bool,
    pub files: Vec<String>,
    pub version: u64,
}

/// Counts of the table's content, for `verify`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TableCounts {
    pub rows: u64,
    pub distinct_keys: u64,
    pub version: u64,
    pub files: u64,
}

/// The events table at one path.
pub struct EventTable {
    path: PathBuf,
    table: DeltaTable,
    /// With a key index, the already-stored check is a lookup and new rows are appended
    /// by a commit that declares the partitions it checked; without, the check is a
    /// semi-join and new rows go in by an insert-only MERGE.
    index: Option<KeyIndex>,
}

impl EventTable {
    /// Creates the table if there is none, with the events schema partitioned by
    /// `event_date`; opens it otherwise. Running it again changes nothing.
    pub async fn create_if_missing(path: &Path) -> Result<Self> {
        if path.exists() && !path.is_dir() {
            return Err(DeltaError::NotADirectory { path: path.to_owned() });
        }
        let err = |source| DeltaError::Table { path: path.to_owned(), source: Box::new(source) };
        let url = deltalake::ensure_table_uri(path.to_string_lossy()).map_err(err)?;
        let created = DeltaTable::try_from_url(url.clone())
            .await
            .map_err(err)?
            .create()
            .with_table_name("events")
            .with_comment("idempipe events: one row per distinct dedup_key")
            .with_columns(delta_columns())
            .with_partition_columns([PARTITION_COLUMN])
            .with_save_mode(SaveMode::Ignore)
            .await;
        let table = match created {
            Ok(table) => table,
            // Two `setup`s racing: the loser's version 0 conflicts; the winner's table is fine.
            Err(_) => deltalake::open_table(url).await.map_err(err)?,
        };
        let this = Self { path: path.to_owned(), table, index: None };
        this.check_schema()?;
        Ok(this)
    }

    /// Opens an existing table; an absent one is [`DeltaError::Missing`].
    pub async fn open(path: &Path) -> Result<Self> {
        if path.exists() && !path.is_dir() {
            return Err(DeltaError::NotADirectory { path: path.to_owned() });
        }
        if !path.join("_delta_log").is_dir() {
            return Err(DeltaError::Missing { path: path.to_owned() });
        }
        let err = |source| DeltaError::Table { path: path.to_owned(), source: Box::new(source) };
        let url = deltalake::ensure_table_uri(path.to_string_lossy()).map_err(err)?;
        let table = deltalake::open_table(url).await.map_err(|e| match e {
            DeltaTableError::NotATable(_) => DeltaError::Missing { path: path.to_owned() },
            e => err(e),
        })?;
        let this = Self { path: path.to_owned(), table, index: None };
        this.check_schema()?;
        Ok(this)
    }

    /// Opens an existing table through `store`, the object store of the filesystem (or
    /// bucket) root, instead of the one delta-rs would pick for the path: for stores with
    /// custom wiring, instrumentation, or fault injection in tests.
    pub async fn open_with_store(path: &Path, store: Arc<dyn deltalake::ObjectStore>) -> Result<Self> {
        if !path.join("_delta_log").is_dir() {
            return Err(DeltaError::Missing { path: path.to_owned() });
        }
        let err = |source| DeltaError::Table { path: path.to_owned(), source: Box::new(source) };
        let url = deltalake::ensure_table_uri(path.to_string_lossy()).map_err(err)?;
        let table = deltalake::DeltaTableBuilder::from_url(url.clone())
            .map_err(err)?
            .with_storage_backend(store, url)
            .load()
            .await
            .map_err(err)?;
        let this = Self { path: path.to_owned(), table, index: None };
        this.check_schema()?;
        Ok(this)
    }

    /// Refuses a table whose columns are not ours: writing to it would fail mid-batch.
    fn check_schema(&self) -> Result<()> {
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        let schema = snapshot.snapshot().arrow_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let missing: Vec<&str> = COLUMNS.iter().copied().filter(|c| !names.contains(c)).collect();
        if !missing.is_empty() {
            return Err(DeltaError::Unexpected {
                path: self.path.clone(),
                what: format!("is not an idempipe events table: columns {missing:?} are missing"),
            });
        }
        Ok(())
    }

    fn error(&self, source: DeltaTableError) -> DeltaError {
        DeltaError::Table { path: self.path.clone(), source: Box::new(source) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The loaded table version.
    pub fn version(&self) -> u64 {
        self.table.version().unwrap_or(0)
    }

    /// Brings the table to the latest committed version.
    pub async fn reload(&mut self) -> Result<()> {
        self.table.update_state().await.map_err(|e| self.error(e))
    }

    /// The txn version (last stored Kafka offset) of each app id that has one.
    pub async fn txn_versions<'a>(
        &self,
        app_ids: impl IntoIterator<Item = (i32, &'a str)>,
    ) -> Result<BTreeMap<i32, i64>> {
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        let log_store = self.table.log_store();
        let mut versions = BTreeMap::new();
        for (partition, app_id) in app_ids {
            if let Some(v) =
                snapshot.transaction_version(log_store.as_ref(), app_id).await.map_err(|e| self.error(e))?
            {
                versions.insert(partition, v);
            }
        }
        Ok(versions)
    }

    /// Switches the already-stored check to an in-memory index of every key in the table
    /// (see [`KeyIndex`]) and builds it from the loaded version.
    pub async fn enable_key_index(&mut self) -> Result<SyncStats> {
        let mut index = KeyIndex::new();
        let stats = index.sync(&self.table).await.map_err(|e| self.error(e))?;
        self.index = Some(index);
        Ok(stats)
    }

    /// The key index, when enabled.
    pub fn key_index(&self) -> Option<&KeyIndex> {
        self.index.as_ref()
    }

    /// Which of `keys` (with their dates) the table already holds, at the loaded version.
    /// With the key index, a lookup per key (after reading the files added since the
    /// index's version); without, a semi-join that reads only the partitions of those
    /// dates.
    pub async fn existing_keys(&mut self, keys: &[(DedupKey, i32)]) -> Result<HashSet<DedupKey>> {
        if let Some(index) = self.index.as_mut() {
            let stats = index
                .sync(&self.table)
                .await
                .map_err(|e| DeltaError::Table { path: self.path.clone(), source: Box::new(e) })?;
            if stats.files_read > 0 || stats.rebuilt {
                tracing::debug!(
                    files_read = stats.files_read,
                    keys_read = stats.keys_read,
                    rebuilt = stats.rebuilt,
                    elapsed = ?stats.elapsed,
                    "key index: read files added by others"
                );
            }
            return Ok(keys.iter().map(|(k, _)| *k).filter(|k| index.contains(k)).collect());
        }
        self.scan_existing_keys(keys).await
    }

    /// [`EventTable::existing_keys`] by a semi-join of the batch's dates' partitions.
    async fn scan_existing_keys(&self, keys: &[(DedupKey, i32)]) -> Result<HashSet<DedupKey>> {
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
                Arc::new(Date32Array::from_iter_values(keys.iter().map(|(_, d)| *d))),
            ],
        )
        .map_err(|e| self.error(e.into()))?;
        let ctx = SessionContext::new();
        let provider = self.table.table_provider().await.map_err(|e| self.error(e.into()))?;
        ctx.register_table("t", provider).map_err(|e| self.error(e.into()))?;
        ctx.register_batch("probe", probe).map_err(|e| self.error(e.into()))?;
        let sql = format!(
            "SELECT t.dedup_key FROM t JOIN probe ON t.dedup_key = probe.k AND t.event_date = probe.d \
             WHERE t.event_date IN ({})",
            date_list(keys.iter().map(|(_, d)| *d))
        );
        let batches =
            ctx.sql(&sql).await.map_err(|e| self.error(e.into()))?.collect().await.map_err(|e| self.error(e.into()))?;
        let mut found = HashSet::new();
        for batch in &batches {
            // DataFusion may hand back a string view; normalise to plain UTF-8.
            let column =
                deltalake::arrow::compute::cast(batch.column(0), &ArrowType::Utf8).map_err(|e| self.error(e.into()))?;
            let strings = column
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| self.unexpected("dedup_key is not a string column"))?;
            for i in 0..strings.len() {
                if let Some(key) = DedupKey::from_hex(strings.value(i)) {
                    found.insert(key);
                }
            }
        }
        Ok(found)
    }

    fn unexpected(&self, what: &str) -> DeltaError {
        DeltaError::Unexpected { path: self.path.clone(), what: what.into() }
    }

    /// Inserts the rows of `batch` whose `dedup_key` the table does not hold, in one
    /// commit that also carries `txns`. When no row is new, commits the txns alone, so
    /// that the Kafka progress is recorded either way. `batch` must not repeat a key.
    ///
    /// With the key index, `batch` must be exactly the rows [`EventTable::existing_keys`]
    /// found new at the loaded version: they are appended by a commit that declares it
    /// read their dates' partitions at that version, so if another writer added a file
    /// there since, the commit fails as a conflict instead of risking a duplicate.
    /// Without it, an insert-only MERGE joins the batch with those partitions.
    pub async fn merge_insert(
        &mut self,
        batch: RecordBatch,
        txns: &[Transaction],
        metadata: serde_json::Value,
    ) -> Result<MergeOutcome> {
        if self.index.is_some() {
            let staged = self.stage(batch).await?;
            return self.commit_staged(staged, txns, metadata).await;
        }
        let dates = batch_dates(&batch);
        let properties = || commit_properties(txns, &metadata);
        let mut outcome = MergeOutcome::default();
        if batch.num_rows() > 0 {
            let ctx = SessionContext::new();
            let source = ctx.read_batch(batch).map_err(|e| self.error(e.into()))?;
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
                    COLUMNS.iter().fold(insert, |i, c| i.set(*c, col(format!("source.{c}"))))
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
            let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
            CommitBuilder::from(properties())
                .with_actions(vec![])
                .build(
                    Some(snapshot as &dyn TableReference),
                    self.table.log_store(),
                    DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None },
                )
                .await
                .map_err(|e| self.error(e))?;
            self.reload().await?;
        }
        outcome.version = self.version();
        Ok(outcome)
    }

    /// The key-index path, step one: writes `batch` (rows [`EventTable::existing_keys`]
    /// found new at the loaded version) as data files, not yet part of the table.
    /// Independent of the output topics, so the pipeline runs it while their acks come in.
    pub async fn stage(&mut self, batch: RecordBatch) -> Result<Staged> {
        let index_version = self.index.as_ref().and_then(KeyIndex::version);
        if index_version != Some(self.version()) {
            // The check must have been made on the version the commit will read from.
            return Err(self.unexpected(&format!(
                "the key index is at version {index_version:?}, the table at {}: check the batch first",
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
            let mut writer = RecordBatchWriter::for_table(&self.table).map_err(|e| self.error(e))?;
            writer.write(batch).await.map_err(|e| self.error(e))?;
            staged.adds = writer.flush().await.map_err(|e| self.error(e))?;
            if let Some(index) = self.index.as_mut() {
                index.expect_commit(staged.adds.iter().map(|a| a.path.clone()).collect(), keys);
            }
        }
        Ok(staged)
    }

    /// The key-index path, step two: one commit with the staged files and `txns`, which
    /// declares that it read the staged rows' `event_date` partitions at the checked
    /// version, so a file another writer added there since makes it a conflict. With no
    /// files, records the txns alone.
    pub async fn commit_staged(
        &mut self,
        staged: Staged,
        txns: &[Transaction],
        metadata: serde_json::Value,
    ) -> Result<MergeOutcome> {
        if staged.version != self.version() {
            return Err(self.unexpected(&format!(
                "the batch was checked at version {} but the table is at {}: check it again",
                staged.version,
                self.version()
            )));
        }
        let mut outcome =
            MergeOutcome { inserted: staged.rows, files_added: staged.adds.len() as u64, version: self.version() };
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
        if let Some(index) = self.index.as_mut()
            && let Err(e) = index.sync(&self.table).await
        {
            // The commit landed; the next check syncs again.
            tracing::warn!(error = %e, "cannot bring the key index to the new version yet");
        }
        Ok(outcome)
    }

    /// Runs `sql` against the table registered as `t` and returns the batches.
    async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let ctx = SessionContext::new();
        let provider = self.table.table_provider().await.map_err(|e| self.error(e.into()))?;
        ctx.register_table("t", provider).map_err(|e| self.error(e.into()))?;
        ctx.sql(sql).await.map_err(|e| self.error(e.into()))?.collect().await.map_err(|e| self.error(e.into()))
    }

    /// Column `i` of `batch` as plain UTF-8 (DataFusion may hand back string views).
    fn strings(&self, batch: &RecordBatch, i: usize) -> Result<StringArray> {
        let column =
            deltalake::arrow::compute::cast(batch.column(i), &ArrowType::Utf8).map_err(|e| self.error(e.into()))?;
        column
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| self.unexpected("expected a string column"))
    }

    /// Every key in the table (for comparing with the speed layer).
    pub async fn keys(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        for batch in self.query("SELECT dedup_key FROM t").await? {
            let column = self.strings(&batch, 0)?;
            keys.extend(column.iter().flatten().map(str::to_owned));
        }
        Ok(keys)
    }

    /// The rows whose key is in `keys`, in the processed topic's record form.
    pub async fn rows_with_keys(&self, keys: &HashSet<String>) -> Result<Vec<ProcessedRecord>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Timestamps come back as microseconds; the cast below reads them as Int64.
        let sql = "SELECT dedup_key, user_id, event_type, event_time, payload, \
                   source_partition, source_offset, batch_id, ingested_at FROM t";
        let mut out = Vec::new();
        for batch in self.query(sql).await? {
            let (key, user, kind, payload) = (
                self.strings(&batch, 0)?,
                self.strings(&batch, 1)?,
                self.strings(&batch, 2)?,
                self.strings(&batch, 4)?,
            );
            let int64 = |i: usize| -> Result<Int64Array> {
                let c = deltalake::arrow::compute::cast(batch.column(i), &ArrowType::Int64)
                    .map_err(|e| self.error(e.into()))?;
                c.as_any().downcast_ref::<Int64Array>().cloned().ok_or_else(|| self.unexpected("expected integers"))
            };
            let (time, partition, offset, batch_id, ingested) = (int64(3)?, int64(5)?, int64(6)?, int64(7)?, int64(8)?);
            for i in 0..batch.num_rows() {
                if key.is_null(i) || !keys.contains(key.value(i)) {
                    continue;
                }
                out.push(ProcessedRecord {
                    dedup_key: key.value(i).to_owned(),
                    user_id: user.value(i).to_owned(),
                    event_type: kind.value(i).to_owned(),
                    event_time_us: time.value(i),
                    payload: payload.value(i).to_owned(),
                    source_partition: partition.value(i) as i32,
                    source_offset: offset.value(i),
                    batch_id: batch_id.value(i),
                    ingested_at_us: ingested.value(i),
                });
            }
        }
        Ok(out)
    }

    /// Data files in the loaded snapshot.
    pub fn live_files(&self) -> usize {
        self.table.snapshot().map_or(0, |s| s.log_data().num_files())
    }

    /// Bin-packs each date's small data files into files of up to [`COMPACT_TARGET_BYTES`].
    ///
    /// Not delta-rs's `optimize`: two of those running at once both commit, each removing
    /// the same files and adding its own copy of their rows (delta-rs 1.1's conflict
    /// checker ignores removes with `dataChange = false` when it looks for a file removed
    /// twice), which doubles the rows. This commit carries a txn action of the app id
    /// [`COMPACTION_APP_ID`], so any other compaction that committed since this one read
    /// the table makes it a conflict (`ConcurrentTransaction`) instead.
    ///
    /// The rows do not change (removes and adds say `dataChange = false`), so a writer
    /// racing it keeps its exactly-once bookkeeping: its append conflicts if the
    /// compaction added a file to one of its dates, and is then redone (see
    /// `is_write_conflict`); the key index keeps its keys (see [`KeyIndex::sync`]).
    ///
    /// Compacts the loaded version (callers reload first if they want the latest).
    pub async fn compact(&mut self) -> Result<CompactOutcome> {
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        // Per date, the files below the target, smallest first, greedily packed.
        let mut by_date: BTreeMap<String, Vec<(i64, deltalake::Path, Remove)>> = BTreeMap::new();
        for file in snapshot.log_data().iter() {
            if file.size() as u64 >= COMPACT_TARGET_BYTES {
                continue;
            }
            let date = file.partition_values_map().get(PARTITION_COLUMN).cloned().flatten().unwrap_or_default();
            by_date.entry(date).or_default().push((file.size(), file.object_store_path(), file.remove_action(false)));
        }
        let mut bins: Vec<(i32, Vec<(deltalake::Path, Remove)>)> = Vec::new();
        for (date, mut files) in by_date {
            let day = chrono::NaiveDate::parse_from_str(&date, "%Y-%m-%d")
                .map_err(|e| self.unexpected(&format!("partition {PARTITION_COLUMN}={date:?} is not a date: {e}")))?;
            let day = (day - chrono::NaiveDate::default()).num_days() as i32;
            files.sort_by_key(|f| f.0);
            let mut bin: Vec<(deltalake::Path, Remove)> = Vec::new();
            let mut bytes = 0_u64;
            for (size, location, remove) in files {
                if bytes + size as u64 > COMPACT_TARGET_BYTES && bin.len() > 1 {
                    bins.push((day, std::mem::take(&mut bin)));
                    bytes = 0;
                }
                bytes += size as u64;
                bin.push((location, remove));
            }
            if bin.len() > 1 {
                bins.push((day, bin));
            }
        }
        let mut outcome = CompactOutcome { version: self.version(), ..CompactOutcome::default() };
        if bins.is_empty() {
            return Ok(outcome);
        }
        let store = self.table.object_store();
        let mut actions = Vec::new();
        let mut writer = RecordBatchWriter::for_table(&self.table).map_err(|e| self.error(e))?;
        for (day, files) in bins {
            outcome.partitions += 1;
            for (location, remove) in files {
                for batch in read_data_file(store.clone(), location).await.map_err(|e| self.error(e))? {
                    let batch = with_date(batch, day).map_err(|e| self.error(e.into()))?;
                    writer.write(batch).await.map_err(|e| self.error(e))?;
                }
                actions.push(Action::Remove(remove));
                outcome.files_removed += 1;
            }
            // One date at a time: no more than one bin's rows in memory.
            for mut add in writer.flush().await.map_err(|e| self.error(e))? {
                add.data_change = false;
                actions.push(Action::Add(add));
                outcome.files_added += 1;
            }
        }
        let now = EventTime::now().micros();
        let claim = Transaction::new_with_last_update(COMPACTION_APP_ID, now, Some(now / 1_000));
        let operation =
            DeltaOperation::Optimize { predicate: None, target_size: COMPACT_TARGET_BYTES.min(i64::MAX as u64) as i64 };
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        CommitBuilder::from(upkeep_free().with_application_transactions(vec![claim]))
            .with_actions(actions)
            .build(Some(snapshot as &dyn TableReference), self.table.log_store(), operation)
            .await
            .map_err(|e| self.error(e))?;
        self.reload().await?;
        outcome.version = self.version();
        Ok(outcome)
    }

    /// Deletes data files removed from the table more than `retention` ago (and with
    /// `full`, files the log never mentions that are older than that: failed writes).
    /// Files in the current snapshot are never touched, so a running writer is safe as
    /// long as no reader lags behind by more than `retention`.
    pub async fn vacuum(&mut self, retention: std::time::Duration, dry_run: bool, full: bool) -> Result<VacuumOutcome> {
        use deltalake::operations::vacuum::VacuumMode;
        let period = chrono::Duration::from_std(retention)
            .map_err(|_| self.unexpected(&format!("retention {retention:?} is out of range")))?;
        let (table, metrics) = self
            .table
            .clone()
            .vacuum()
            .with_retention_period(period)
            // The configuration checked the period (at least a minute); the table's own
            // default (7 days) is only the default of `vacuum_retention`.
            .with_enforce_retention_duration(false)
            .with_dry_run(dry_run)
            .with_mode(if full { VacuumMode::Full } else { VacuumMode::Lite })
            .with_commit_properties(upkeep_free())
            .await
            .map_err(|e| self.error(e))?;
        self.table = table;
        Ok(VacuumOutcome { dry_run, files: metrics.files_deleted, version: self.version() })
    }

    /// Sets the table's `delta.deletedFileRetentionDuration` (how long a removed file's
    /// tombstone is kept in checkpoints) to `retention`, unless it is that already;
    /// returns whether it changed it. Without it, tombstones stay 7 days, and every
    /// checkpoint carries each file every compaction removed in that time.
    pub async fn set_tombstone_retention(&mut self, retention: std::time::Duration) -> Result<bool> {
        const KEY: &str = "delta.deletedFileRetentionDuration";
        let value = format!("interval {} seconds", retention.as_secs());
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        if snapshot.metadata().configuration().get(KEY) == Some(&value) {
            return Ok(false);
        }
        let table = self
            .table
            .clone()
            .set_tbl_properties()
            .with_properties(std::collections::HashMap::from([(KEY.to_owned(), value)]))
            .with_commit_properties(upkeep_free())
            .await
            .map_err(|e| self.error(e))?;
        self.table = table;
        Ok(true)
    }

    /// Writes a checkpoint of the loaded version: readers then load it instead of
    /// replaying every commit since the previous one.
    pub async fn checkpoint(&self) -> Result<()> {
        deltalake::checkpoints::create_checkpoint(&self.table, None).await.map_err(|e| self.error(e))
    }

    /// Deletes commit log entries older than `retention` that lie behind a checkpoint;
    /// returns how many.
    pub async fn cleanup_log(&self, retention: std::time::Duration) -> Result<usize> {
        let cutoff = EventTime::now().micros() / 1_000 - retention.as_millis().min(i64::MAX as u128) as i64;
        deltalake::checkpoints::cleanup_expired_logs_for(self.version(), self.table.log_store().as_ref(), cutoff, None)
            .await
            .map_err(|e| self.error(e))
    }

    /// Row count, distinct key count, version and live file count.
    pub async fn counts(&self) -> Result<TableCounts> {
        let batches = self.query("SELECT count(*), count(DISTINCT dedup_key) FROM t").await?;
        let value = |i: usize| -> Result<u64> {
            batches
                .first()
                .and_then(|b| b.column(i).as_any().downcast_ref::<Int64Array>())
                .filter(|a| !a.is_empty())
                .map(|a| a.value(0) as u64)
                .ok_or_else(|| self.unexpected("count query returned no row"))
        };
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        Ok(TableCounts {
            rows: value(0)?,
            distinct_keys: value(1)?,
            version: self.version(),
            files: snapshot.log_data().num_files() as u64,
        })
    }
}

/// Data files grow to about this size (on disk) through compaction; a compaction holds
/// one date's worth of up to this much in memory, as Arrow.
pub const COMPACT_TARGET_BYTES: u64 = 64 << 20;

/// The txn app id every compaction's commit carries, so that two compactions never
/// both commit (see [`EventTable::compact`]).
pub const COMPACTION_APP_ID: &str = "idempipe-compaction";

/// Every row of one data file (without the partition column, which lives in the path).
async fn read_data_file(
    store: Arc<dyn deltalake::ObjectStore>,
    location: deltalake::Path,
) -> std::result::Result<Vec<RecordBatch>, DeltaTableError> {
    use futures::TryStreamExt;
    let stream = crate::sink::key_index::data_file_stream(store, location, None).await?;
    Ok(stream.try_collect().await?)
}

/// A data file's batch with the partition column put back, in the table's column order.
fn with_date(batch: RecordBatch, day: i32) -> std::result::Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    let schema = arrow_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|field| -> std::result::Result<ArrayRef, deltalake::arrow::error::ArrowError> {
            if field.name() == PARTITION_COLUMN {
                return Ok(Arc::new(Date32Array::from(vec![day; batch.num_rows()])));
            }
            let column = batch.column_by_name(field.name()).ok_or_else(|| {
                deltalake::arrow::error::ArrowError::SchemaError(format!("data file lacks column {}", field.name()))
            })?;
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                deltalake::arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns)
}

/// The distinct `event_date` values of a batch built by [`to_record_batch`].
fn batch_dates(batch: &RecordBatch) -> BTreeSet<i32> {
    batch
        .column_by_name(PARTITION_COLUMN)
        .and_then(|c| c.as_any().downcast_ref::<Date32Array>())
        .map(|a| a.iter().flatten().collect())
        .unwrap_or_default()
}

/// The properties of a batch's commit: its txns, and `metadata` (an object) in the
/// commit info.
fn commit_properties(txns: &[Transaction], metadata: &serde_json::Value) -> CommitProperties {
    let properties = upkeep_free().with_application_transactions(txns.to_vec());
    match metadata {
        serde_json::Value::Object(map) => properties.with_metadata(map.clone()),
        _ => properties,
    }
}

/// Commit properties without delta-rs's post-commit upkeep: checkpoints and log cleanup
/// are the maintenance's, on its own schedule (`checkpoint_every`, `log_retention`);
/// left on, delta-rs would also list the whole log after every commit.
fn upkeep_free() -> CommitProperties {
    CommitProperties::default().with_create_checkpoint(false).with_cleanup_expired_logs(Some(false))
}

/// The keys of a batch built by [`to_record_batch`].
fn key_column(batch: &RecordBatch) -> Option<Vec<DedupKey>> {
    let keys = batch.column_by_name("dedup_key")?.as_any().downcast_ref::<StringArray>()?;
    keys.iter().map(|k| k.and_then(DedupKey::from_hex)).collect()
}

/// `'YYYY-MM-DD', …` for a SQL IN list, distinct and sorted.
fn date_list(days: impl Iterator<Item = i32>) -> String {
    let days: BTreeSet<i32> = days.collect();
    days.into_iter()
        .map(|d| {
            let canonical =
                EventTime::from_micros(i64::from(d) * 86_400_000_000).map(|t| t.to_string()).unwrap_or_default();
            format!("'{}'", &canonical[..10.min(canonical.len())])
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use deltalake::kernel::transaction::{CommitConflictError, TransactionError};

    use super::*;

    fn table_error(source: DeltaTableError) -> DeltaError {
        DeltaError::Table { path: PathBuf::from("/t"), source: Box::new(source) }
    }

    #[test]
    fn only_a_lost_commit_race_is_a_write_conflict() {
        let lost = |c| table_error(DeltaTableError::Transaction { source: TransactionError::CommitConflict(c) });
        assert!(lost(CommitConflictError::ConcurrentAppend).is_write_conflict());
        assert!(lost(CommitConflictError::ConcurrentTransaction).is_write_conflict());
        // Outcome unknown or plain failures: not conflicts (they must reload and check).
        let version = table_error(DeltaTableError::Transaction { source: TransactionError::VersionAlreadyExists(3) });
        assert!(!version.is_write_conflict());
        assert!(!lost(CommitConflictError::MetadataChanged).is_write_conflict());
        assert!(!table_error(DeltaTableError::Generic("io".into())).is_write_conflict());
        assert!(!DeltaError::Missing { path: PathBuf::from("/t") }.is_write_conflict());
    }
}

#[cfg(test)]
mod key_index_tests {
    use super::*;

    fn row(n: u32, day: i32, partition: i32) -> Row {
        let time = EventTime::from_micros(i64::from(day) * 86_400_000_000 + i64::from(n)).unwrap();
        let user_id = format!("u{n}");
        Row {
            key: DedupKey::compute(&user_id, "click", time),
            user_id,
            event_type: "click".into(),
            time,
            payload: "{}".into(),
            source_partition: partition,
            source_offset: i64::from(n),
        }
    }

    fn rows(range: std::ops::Range<u32>, day: i32, partition: i32) -> Vec<Row> {
        range.map(|n| row(n, day, partition)).collect()
    }

    fn probe(rows: &[Row]) -> Vec<(DedupKey, i32)> {
        rows.iter().map(|r| (r.key, r.time.days_since_epoch())).collect()
    }

    fn keys(rows: &[Row]) -> HashSet<DedupKey> {
        rows.iter().map(|r| r.key).collect()
    }

    /// Checks `rows` and inserts the new ones, as the pipeline does, with the txn of
    /// Kafka partition `partition`.
    async fn check_and_insert(table: &mut EventTable, rows: &[Row], partition: i32) -> Result<MergeOutcome> {
        let existing = table.existing_keys(&probe(rows)).await?;
        let new: Vec<&Row> = rows.iter().filter(|r| !existing.contains(&r.key)).collect();
        let batch = to_record_batch(&new, 1, EventTime::from_micros(0).unwrap()).unwrap();
        let txns = [Transaction::new(format!("g-raw-{partition}"), rows.len() as i64)];
        table.merge_insert(batch, &txns, serde_json::json!({})).await
    }

    /// An empty events table in a temporary directory (kept while the guard lives).
    async fn new_table() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events");
        EventTable::create_if_missing(&path).await.unwrap();
        (dir, path)
    }

    async fn indexed(path: &Path) -> EventTable {
        let mut table = EventTable::open(path).await.unwrap();
        table.enable_key_index().await.unwrap();
        table
    }

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
    async fn a_second_compaction_of_the_same_version_conflicts_instead_of_doubling_the_rows() {
        let (_dir, path) = new_table().await;
        let mut a = indexed(&path).await;
        for i in 0..3 {
            check_and_insert(&mut a, &rows(i * 10..i * 10 + 10, 100, 0), 0).await.unwrap();
        }
        // Both read the same version; `a` commits first.
        let mut b = EventTable::open(&path).await.unwrap();
        a.compact().await.unwrap();
        let err = b.compact().await.unwrap_err();
        assert!(err.is_lost_compaction_race(), "{err}");
        let counts = EventTable::open(&path).await.unwrap().counts().await.unwrap();
        assert_eq!((counts.rows, counts.distinct_keys, counts.files), (30, 30, 1));
    }

    #[tokio::test]
    async fn the_tombstone_retention_is_set_once_and_read_back() {
        let (_dir, path) = new_table().await;
        let mut t = indexed(&path).await;
        let retention = std::time::Duration::from_secs(900);
        assert!(t.set_tombstone_retention(retention).await.unwrap());
        assert!(!t.set_tombstone_retention(retention).await.unwrap(), "already set: no commit");
        let reopened = EventTable::open(&path).await.unwrap();
        let snapshot = reopened.table.snapshot().unwrap();
        use deltalake::table::config::TablePropertiesExt as _;
        assert_eq!(snapshot.table_config().deleted_file_retention_duration(), retention);
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
