//! Table maintenance: checkpoints (and log cleanup behind them), compaction of small
//! files, vacuum of removed ones, the tombstone retention; [`MaintenanceSchedule`], which
//! decides what is due; and [`MaintenanceTask`], the task that runs it beside the batch
//! loop.
//!
//! `run` runs [`MaintenanceSchedule::run_due`] in that task, never in the batch loop, so
//! its commits race the processor's own like any other writer's (a second instance, an
//! operator's `compact`). That is safe because none of it changes rows: a compaction's
//! files carry `dataChange = false`, a vacuum deletes only files no snapshot within the
//! retention uses, and a checkpoint or log cleanup rewrites no data. A failure is logged
//! and counted, never fatal: the batch loop's exactly-once bookkeeping does not depend on
//! maintenance.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::{ArrayRef, Date32Array, RecordBatch};
use deltalake::kernel::transaction::{CommitBuilder, TableReference};
use deltalake::kernel::{Action, Remove, Transaction};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};

use crate::config::Maintenance;
use crate::event::EventTime;
use crate::metrics;
use crate::table::read::data_file_stream;
use crate::table::schema::PARTITION_COLUMN;
use crate::table::{DeltaError, EventTable, Result, without_post_commit_maintenance};

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

impl EventTable {
    /// Bin-packs each date's small data files into files of about [`COMPACT_TARGET_BYTES`]
    /// (a bin closes once it holds two files or more and the next would pass the target,
    /// so a bin of two can reach nearly twice that).
    ///
    /// Not delta-rs's `optimize`: two of those running at once both commit, each removing
    /// the same files and adding its own copy of their rows (delta-rs 1.1's conflict
    /// checker ignores removes with `dataChange = false` when it looks for a file removed
    /// twice), which doubles the rows. This one commits only if every file it rewrites is
    /// still live, unchanged, in the version it commits onto (see
    /// [`EventTable::commit_compaction`]): any other compaction (idempipe's, Spark's
    /// `OPTIMIZE`, delta-rs's `optimize`) or delete that reached those files first makes it
    /// give up, having changed nothing.
    ///
    /// The rows do not change (removes and adds say `dataChange = false`), so a writer
    /// racing it keeps its exactly-once bookkeeping: its append conflicts if the
    /// compaction added a file to one of its dates, and is then redone (see
    /// `is_write_conflict`); the key cache reads the new file when a batch needs it, and
    /// the key index keeps its keys (see [`KeyIndex::sync`]).
    ///
    /// Compacts the loaded version (callers reload first if they want the latest).
    pub async fn compact(&mut self) -> Result<CompactOutcome> {
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        // Per date, the files below the target, smallest first, greedily packed.
        let mut by_date: BTreeMap<String, Vec<(i64, deltalake::Path, Remove)>> = BTreeMap::new();
        for file in snapshot.log_data().iter() {
            // A file with a deletion vector is left alone: read raw, its deleted rows
            // would come back.
            if file.size() as u64 >= COMPACT_TARGET_BYTES || file.deletion_vector_descriptor().is_some() {
                continue;
            }
            let date = file.partition_values_map().get(PARTITION_COLUMN).cloned().flatten().unwrap_or_default();
            by_date.entry(date).or_default().push((file.size(), file.object_store_path(), file.remove_action(false)));
        }
        let mut bins: Vec<(i32, Vec<(deltalake::Path, Remove)>)> = Vec::new();
        for (date, mut files) in by_date {
            let day = EventTime::parse_date(&date)
                .map_err(|e| self.unexpected(&format!("partition {PARTITION_COLUMN}={date:?} is not a date: {e:?}")))?
                .days_since_epoch();
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
        // Row groups of at most COMPACT_ROW_GROUP_ROWS rows or about COMPACT_ROW_GROUP_BYTES
        // (the writer's estimate, checked between input batches): the writer holds the one
        // in progress in memory, so these bound the compaction's memory (parquet's default
        // of 1 M rows would let it grow to hundreds of MiB); each finished group goes to
        // the store (delta-rs streams the file as a multipart upload of 5 MiB parts).
        let properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(COMPACT_ROW_GROUP_ROWS))
            .set_max_row_group_bytes(Some(COMPACT_ROW_GROUP_BYTES))
            .build();
        let mut writer =
            RecordBatchWriter::for_table(&self.table).map_err(|e| self.error(e))?.with_writer_properties(properties);
        for (day, files) in bins {
            outcome.partitions += 1;
            for (location, remove) in files {
                // Batch by batch: a whole input file decoded at once (up to 64 MiB of
                // Parquet) would cost several times its size.
                let mut batches = data_file_stream(store.clone(), location, None).await.map_err(|e| self.error(e))?;
                while let Some(batch) = futures::StreamExt::next(&mut batches).await {
                    let batch = batch.map_err(|e| self.error(e.into()))?;
                    let batch =
                        with_date(&self.columns.arrow_schema(), batch, day).map_err(|e| self.error(e.into()))?;
                    writer.write(batch).await.map_err(|e| self.error(e))?;
                }
                actions.push(Action::Remove(remove));
                outcome.files_removed += 1;
            }
            // One bin at a time: one output file per bin.
            for mut add in writer.flush().await.map_err(|e| self.error(e))? {
                add.data_change = false;
                actions.push(Action::Add(add));
                outcome.files_added += 1;
            }
        }
        self.commit_compaction(actions).await?;
        outcome.version = self.version();
        Ok(outcome)
    }

    /// Commits a compaction's `actions` (removes of the files it read, adds of their
    /// rewrite) only onto a table in which every file it removes is still live as it read
    /// it, and reports a lost race ([`DeltaError::is_lost_compaction_race`]) otherwise.
    ///
    /// delta-rs's own retries cannot be trusted with this: its conflict checker skips
    /// removes saying `dataChange = false` when it looks for a file removed twice, so a
    /// compaction by another engine (Spark's `OPTIMIZE`, auto-compaction, Python
    /// deltalake) committed since this one read the table would let both commit, each
    /// file's rows then living twice. So delta-rs never retries here (`max_retries` 0);
    /// each attempt reloads the table, checks every file against the latest version
    /// (still live, with no deletion vector since: a `DELETE` by another engine re-adds
    /// a file under the same path with one), and commits onto exactly that version, which
    /// put-if-absent makes the only version it can land on. A failed attempt is never
    /// assumed not to have landed: if the added files are live, it did.
    async fn commit_compaction(&mut self, actions: Vec<Action>) -> Result<()> {
        let removed: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove(r) => Some(r.path.clone()),
                _ => None,
            })
            .collect();
        let added: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Add(add) => Some(add.path.clone()),
                _ => None,
            })
            .collect();
        let operation =
            DeltaOperation::Optimize { predicate: None, target_size: COMPACT_TARGET_BYTES.min(i64::MAX as u64) as i64 };
        let mut attempts = 0_u32;
        let mut refused = None;
        loop {
            // Each live file, and whether it has a deletion vector.
            let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
            let live: HashMap<String, bool> = snapshot
                .log_data()
                .iter()
                .map(|f| (f.path().to_string(), f.deletion_vector_descriptor().is_some()))
                .collect();
            if refused.is_some() && !added.is_empty() && added.iter().all(|p| live.contains_key(p)) {
                // An attempt whose answer was an error did commit.
                return Ok(());
            }
            let gone = removed.iter().filter(|p| live.get(*p) != Some(&false)).count();
            if gone > 0 {
                return Err(DeltaError::CompactionOvertaken {
                    location: self.location.to_string(),
                    files: gone,
                    version: self.version(),
                });
            }
            if let Some(e) = refused.take()
                && attempts >= COMPACT_COMMIT_ATTEMPTS
            {
                return Err(self.error(e));
            }
            attempts += 1;
            // Kept for instances of earlier releases, whose compactions read this app id.
            let now = EventTime::now().micros();
            let claim = Transaction::new_with_last_update(COMPACTION_APP_ID, now, Some(now / 1_000));
            let committed = CommitBuilder::from(
                without_post_commit_maintenance().with_max_retries(0).with_application_transactions(vec![claim]),
            )
            .with_actions(actions.clone())
            .build(Some(snapshot as &dyn TableReference), self.table.log_store(), operation.clone())
            .await;
            match committed {
                Ok(_) => return self.reload().await,
                Err(e) => {
                    tracing::debug!(error = %e, attempts, "compaction commit refused; checking the latest version");
                    refused = Some(e);
                    self.reload().await?;
                }
            }
        }
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
            .with_commit_properties(without_post_commit_maintenance())
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
            .with_commit_properties(without_post_commit_maintenance())
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

    /// The version of the table's last checkpoint, whoever wrote it (from
    /// `_delta_log/_last_checkpoint`); `None` if it has none (or the hint is unreadable:
    /// then a checkpoint is simply due sooner).
    pub async fn last_checkpoint_version(&self) -> Option<u64> {
        let log_store = self.table.log_store();
        let hint = log_store.log_path().clone().join("_last_checkpoint");
        use deltalake::logstore::object_store::ObjectStoreExt as _;
        let bytes = log_store.object_store(None).get(&hint).await.ok()?.bytes().await.ok()?;
        serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["version"].as_u64()
    }

    /// Deletes commit log entries older than `retention` that lie behind a checkpoint;
    /// returns how many.
    pub async fn cleanup_log(&self, retention: std::time::Duration) -> Result<usize> {
        let cutoff = EventTime::now().micros() / 1_000 - retention.as_millis().min(i64::MAX as u128) as i64;
        deltalake::checkpoints::cleanup_expired_logs_for(self.version(), self.table.log_store().as_ref(), cutoff, None)
            .await
            .map_err(|e| self.error(e))
    }
}

/// Data files grow to about this size (on disk) through compaction; files this large
/// or larger are left alone.
pub const COMPACT_TARGET_BYTES: u64 = 64 << 20;

/// The rows of a row group in a compacted file: the writer holds the group in progress
/// in memory, so this is far below Parquet's default (1,048,576 rows).
pub const COMPACT_ROW_GROUP_ROWS: usize = 128 * 1024;

/// The most bytes (encoded, as the writer estimates them) of a row group in a compacted
/// file, whichever of this and [`COMPACT_ROW_GROUP_ROWS`] comes first: 131,072 events of
/// about 100 bytes encode to about 9 MiB, but of 1 KiB to over 100 MiB, which the
/// writer would hold beside the processor's batches.
pub const COMPACT_ROW_GROUP_BYTES: usize = 16 << 20;

/// The txn app id every compaction's commit carries, so that two compactions never
/// both commit (see [`EventTable::compact`]).
pub const COMPACTION_APP_ID: &str = "idempipe-compaction";

/// Commit attempts of one compaction: each one that finds the table moved on checks the
/// new version again ([`EventTable::commit_compaction`]); past this many, it gives up
/// until its next interval.
const COMPACT_COMMIT_ATTEMPTS: u32 = 5;

/// A data file's batch with the partition column put back, in the table's column order.
fn with_date(
    schema: &deltalake::arrow::datatypes::SchemaRef,
    batch: RecordBatch,
    day: i32,
) -> std::result::Result<RecordBatch, deltalake::arrow::error::ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| -> std::result::Result<ArrayRef, deltalake::arrow::error::ArrowError> {
            if field.name() == PARTITION_COLUMN {
                return Ok(Arc::new(Date32Array::from(vec![day; batch.num_rows()])));
            }
            let Some(column) = batch.column_by_name(field.name()) else {
                // A column added since the file was written (schema evolution): null in it.
                if field.is_nullable() {
                    return Ok(deltalake::arrow::array::new_null_array(field.data_type(), batch.num_rows()));
                }
                return Err(deltalake::arrow::error::ArrowError::SchemaError(format!(
                    "data file lacks column {}",
                    field.name()
                )));
            };
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                deltalake::arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// When each kind of maintenance last ran, and so what is due next.
#[derive(Debug)]
pub struct MaintenanceSchedule {
    settings: Maintenance,
    /// The version of the table's last checkpoint (by any writer, as of start-up, or
    /// this process's last): the next is due `checkpoint_every` versions later, so a
    /// process that restarts often still writes them.
    checkpointed: u64,
    last_compact: Instant,
    last_vacuum: Instant,
    /// Whether the table's tombstone retention has been checked this run.
    tombstones_set: bool,
    /// Whether the compaction now due was put off for a backlog (logged once).
    compact_deferred: bool,
}

/// What one [`MaintenanceSchedule::run_due`] did, for the log and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceOutcome {
    pub checkpoint: bool,
    pub log_entries_deleted: usize,
    pub compacted_files: u64,
    pub vacuumed_files: usize,
}

impl MaintenanceSchedule {
    /// A schedule for a table whose last checkpoint is at `last_checkpoint` (`None`:
    /// none yet, so one is due at version `checkpoint_every`); the first compaction and
    /// vacuum are due one interval from now.
    pub fn new(settings: Maintenance, last_checkpoint: Option<u64>) -> Self {
        let now = Instant::now();
        let checkpointed = last_checkpoint.unwrap_or(0);
        Self {
            settings,
            checkpointed,
            last_compact: now,
            last_vacuum: now,
            tombstones_set: false,
            compact_deferred: false,
        }
    }

    /// How long after the last compaction the next one runs: `compact_every`, or while
    /// the batch loop works through a `backlog` (its last batch was full), twice that.
    /// A compaction beside full batches adds its memory to theirs (BENCHMARKS.md, "A
    /// batch and a compaction at once"): it waits for the loop to catch up, but no
    /// longer than one more interval, so a processor that never catches up still
    /// compacts.
    fn compact_after(&self, backlog: bool) -> Option<Duration> {
        self.settings.compact_every.map(|every| if backlog { every.saturating_mul(2) } else { every })
    }

    /// Whether anything is due, with the table at `version` and the batch loop working
    /// through a `backlog` or not (a compaction it puts off is due once more, to be
    /// logged and counted as waiting).
    pub fn is_due(&self, version: u64, backlog: bool) -> bool {
        let elapsed = |every: Option<Duration>, last: Instant| every.is_some_and(|every| last.elapsed() >= every);
        elapsed(self.compact_after(backlog), self.last_compact)
            || (backlog && !self.compact_deferred && elapsed(self.settings.compact_every, self.last_compact))
            || elapsed(self.settings.vacuum_every, self.last_vacuum)
            || version >= self.checkpointed + self.settings.checkpoint_every.get()
    }

    /// How long until a compaction or vacuum is due (checkpoints are due by version).
    pub fn next_timed(&self, backlog: bool) -> Option<Duration> {
        let left = |every: Option<Duration>, last: Instant| every.map(|every| every.saturating_sub(last.elapsed()));
        match (left(self.compact_after(backlog), self.last_compact), left(self.settings.vacuum_every, self.last_vacuum))
        {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What must happen before the first batch: the table's tombstone retention, a
    /// metadata change that would make a batch's commit racing it fail.
    pub async fn prepare(&mut self, table: &mut EventTable) {
        if let (false, Some(every)) = (self.tombstones_set, self.settings.vacuum_every) {
            // A removed file's tombstone must outlive the vacuum that deletes the file
            // (or the file is forgotten on disk), and no longer: checkpoints carry
            // every live tombstone.
            let retention = self.settings.vacuum_retention + 2 * every;
            match table.set_tombstone_retention(retention).await {
                Ok(changed) => {
                    self.tombstones_set = true;
                    if changed {
                        tracing::info!(retention = %humantime::format_duration(retention), "set the table's tombstone retention");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot set the table's tombstone retention; trying again later"),
            }
        }
    }

    /// Runs whatever is due on `table` (loaded at its latest version by the caller),
    /// with the batch loop working through a `backlog` or not (see [`Self::is_due`]).
    pub async fn run_due(&mut self, table: &mut EventTable, backlog: bool) -> MaintenanceOutcome {
        let mut done = MaintenanceOutcome::default();
        self.prepare(table).await;
        let since = self.last_compact.elapsed();
        let due = self.settings.compact_every.is_some_and(|every| since >= every);
        let runs = self.compact_after(backlog).is_some_and(|after| since >= after);
        if due && !runs && !self.compact_deferred {
            self.compact_deferred = true;
            metrics::maintenance("compact_deferred", true);
            tracing::info!("compaction due: waiting for the batch loop to catch up (its batches are full)");
        }
        if runs {
            if backlog {
                let waited = since.saturating_sub(self.settings.compact_every.unwrap_or_default());
                tracing::info!(
                    waited = %humantime::format_duration(Duration::from_secs(waited.as_secs())),
                    "compaction due: running beside full batches, which have not caught up for a whole interval"
                );
            }
            self.last_compact = Instant::now();
            self.compact_deferred = false;
            let started = Instant::now();
            match table.compact().await {
                Ok(outcome) => {
                    metrics::maintenance("compact", true);
                    done.compacted_files = outcome.files_removed;
                    if outcome.files_removed > 0 {
                        tracing::info!(
                            files_removed = outcome.files_removed,
                            files_added = outcome.files_added,
                            partitions = outcome.partitions,
                            version = outcome.version,
                            elapsed = ?started.elapsed(),
                            "compacted the Delta table"
                        );
                    }
                }
                Err(e) if e.is_lost_compaction_race() => {
                    // Another writer compacted or deleted from the same files first: nothing changed.
                    metrics::maintenance("compact_lost_race", true);
                    tracing::info!(error = %e, "another writer changed the files first; compacting again at the next interval");
                }
                Err(e) => {
                    metrics::maintenance("compact", false);
                    tracing::warn!(error = %e, "compaction failed; trying again at the next interval");
                }
            }
        }
        if self.settings.vacuum_every.is_some_and(|every| self.last_vacuum.elapsed() >= every) {
            self.last_vacuum = Instant::now();
            match table.vacuum(self.settings.vacuum_retention, false, false).await {
                Ok(outcome) => {
                    metrics::maintenance("vacuum", true);
                    done.vacuumed_files = outcome.files.len();
                    tracing::info!(
                        files_deleted = outcome.files.len(),
                        version = outcome.version,
                        "vacuumed the Delta table"
                    );
                }
                Err(e) => {
                    metrics::maintenance("vacuum", false);
                    tracing::warn!(error = %e, "vacuum failed; trying again at the next interval");
                }
            }
        }
        let version = table.version();
        if version >= self.checkpointed + self.settings.checkpoint_every.get() {
            self.checkpointed = version;
            match table.checkpoint().await {
                Ok(()) => {
                    metrics::maintenance("checkpoint", true);
                    done.checkpoint = true;
                    match table.cleanup_log(self.settings.log_retention).await {
                        Ok(deleted) => {
                            metrics::maintenance("log_cleanup", true);
                            done.log_entries_deleted = deleted;
                        }
                        Err(e) => {
                            metrics::maintenance("log_cleanup", false);
                            tracing::warn!(error = %e, "deleting expired log entries failed");
                        }
                    }
                    tracing::debug!(version, log_entries_deleted = done.log_entries_deleted, "checkpoint written");
                }
                Err(e) => {
                    metrics::maintenance("checkpoint", false);
                    tracing::warn!(error = %e, version, "writing a checkpoint failed; trying again after the next batch");
                    // Due again at once rather than `checkpoint_every` versions later.
                    self.checkpointed = version.saturating_sub(self.settings.checkpoint_every.get());
                }
            }
        }
        done
    }
}

/// The maintenance schedule, run beside the batch loop: a task with its own handle on
/// the table, woken by the batch loop's commits (for checkpoints, due by version), by the
/// end of a backlog (a compaction waits for it: [`MaintenanceSchedule::is_due`]) and by
/// the compaction and vacuum intervals. It never holds a batch back; it stops when the
/// [`MaintenanceTask`] is dropped (a compaction cut short commits nothing: its files are
/// never part of the table, and `vacuum --full` deletes them).
pub(crate) struct MaintenanceTask {
    /// The table version the batch loop reached, and whether its last batch was full.
    seen: tokio::sync::watch::Sender<(u64, bool)>,
    task: tokio::task::JoinHandle<()>,
}

impl MaintenanceTask {
    /// Prepares the table (see [`MaintenanceSchedule::prepare`]: callers reload their own
    /// handle after) and starts the task on `runtime`, with `table` (a handle of its own:
    /// see [`EventTable::without_stored_keys`]). Blocks: must run outside the runtime's
    /// workers.
    pub(crate) fn start(settings: Maintenance, mut table: EventTable, runtime: &tokio::runtime::Handle) -> Self {
        let mut schedule = runtime.block_on(async {
            let mut schedule = MaintenanceSchedule::new(settings, table.last_checkpoint_version().await);
            schedule.prepare(&mut table).await;
            schedule
        });
        let (sender, mut seen) = tokio::sync::watch::channel((table.version(), false));
        let task = runtime.spawn(async move {
            let mut backlog = false;
            loop {
                let wait = schedule.next_timed(backlog).unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    changed = seen.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(wait) => {}
                }
                let latest;
                (latest, backlog) = *seen.borrow_and_update();
                if !schedule.is_due(latest, backlog) {
                    continue;
                }
                if let Err(e) = table.reload().await {
                    tracing::warn!(error = %e, "maintenance cannot load the table; trying again later");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let started = Instant::now();
                let done = schedule.run_due(&mut table, backlog).await;
                if done != MaintenanceOutcome::default() {
                    tracing::debug!(?done, elapsed = ?started.elapsed(), "maintenance ran beside the batch loop");
                }
            }
        });
        Self { seen: sender, task }
    }

    /// Tells the task the table reached `version` (a checkpoint may be due) and whether
    /// the batch loop's last batch was full, so more is waiting (`backlog`: a compaction
    /// waits for it to end). Fails if the task is gone: it ends only when the
    /// [`MaintenanceTask`] is dropped, so it panicked (the panic is in the log). The
    /// processor then stops, rather than run on with nothing compacting the table,
    /// checkpointing or cleaning its log; a restart starts the task again.
    pub(crate) fn committed(&self, version: u64, backlog: bool) -> Result<(), MaintenanceStopped> {
        if self.task.is_finished() {
            return Err(MaintenanceStopped);
        }
        self.seen.send_if_modified(|seen| {
            let changed = version > seen.0 || backlog != seen.1;
            if changed {
                *seen = (version.max(seen.0), backlog);
            }
            changed
        });
        Ok(())
    }
}

/// The maintenance task ended while the processor ran ([`MaintenanceTask::committed`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "the table's maintenance (compaction, checkpoints, log cleanup, vacuum) stopped: its task panicked (see the log above)"
)]
pub struct MaintenanceStopped;

impl Drop for MaintenanceTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;
    use crate::table::testing::*;

    #[tokio::test]
    async fn a_maintenance_task_that_panicked_stops_the_processor_at_its_next_commit() {
        let (seen, _seen) = tokio::sync::watch::channel((0, false));
        let maintenance = MaintenanceTask { seen, task: tokio::spawn(std::future::pending()) };
        assert!(maintenance.committed(1, false).is_ok(), "a task still running");
        let (seen, _seen) = tokio::sync::watch::channel((0, false));
        let maintenance = MaintenanceTask { seen, task: tokio::spawn(async { panic!("a bug in maintenance") }) };
        while !maintenance.task.is_finished() {
            tokio::task::yield_now().await;
        }
        assert!(maintenance.committed(1, false).is_err());
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
    async fn a_compaction_rewrites_files_written_before_a_column_was_added() {
        let (_dir, path) = new_table().await;
        let mut table = EventTable::open(&path).await.unwrap();
        check_and_insert(&mut table, &rows(0..10, 100, 0), 0).await.unwrap();
        table.add_columns(&[("coupon".into(), crate::event::ColumnType::String)]).await.unwrap();
        let mut later = rows(10..20, 100, 0);
        for row in &mut later {
            row.values = vec![serde_json::json!(format!("c{}", row.source_offset))];
        }
        let new = table.new_rows(&later).await.unwrap();
        let batch = table.columns().batch(&new, 2, EventTime::from_micros(0).unwrap()).unwrap();
        let txns = [deltalake::kernel::Transaction::new("g-raw-0", 20)];
        table.insert(batch, &txns, serde_json::json!({})).await.unwrap();
        let outcome = table.compact().await.unwrap();
        assert_eq!((outcome.files_removed, outcome.files_added), (2, 1));
        let table = EventTable::open(&path).await.unwrap();
        let counts = table.counts().await.unwrap();
        assert_eq!((counts.rows, counts.distinct_keys, counts.files), (20, 20, 1));
        let keys = rows(0..20, 100, 0).iter().map(|r| r.key.to_string()).collect();
        let mut stored = table.rows_with_keys(&keys).await.unwrap();
        stored.sort_by_key(|r| r.source_offset);
        assert_eq!(stored[3].values, [serde_json::Value::Null]);
        assert_eq!(stored[13].values, [serde_json::json!("c13")]);
    }

    #[tokio::test]
    async fn a_compaction_overtaken_by_another_engines_compaction_commits_nothing() {
        let (_dir, path) = new_table().await;
        let mut a = indexed(&path).await;
        for i in 0..3 {
            check_and_insert(&mut a, &rows(i * 10..i * 10 + 10, 100, 0), 0).await.unwrap();
        }
        // `b` reads the table; another engine's compaction (delta-rs's optimize, whose
        // removes say dataChange = false, as Spark's OPTIMIZE's do) commits first.
        let mut b = EventTable::open(&path).await.unwrap();
        a.table.clone().optimize().await.unwrap();
        let err = b.compact().await.unwrap_err();
        assert!(err.is_lost_compaction_race(), "{err}");
        assert!(err.to_string().contains("3 of the files"), "{err}");
        let counts = EventTable::open(&path).await.unwrap().counts().await.unwrap();
        assert_eq!((counts.rows, counts.distinct_keys, counts.files), (30, 30, 1));
    }

    #[tokio::test]
    async fn a_compaction_commits_past_writes_that_left_its_files_alone() {
        let (_dir, path) = new_table().await;
        let mut a = indexed(&path).await;
        for i in 0..3 {
            check_and_insert(&mut a, &rows(i * 10..i * 10 + 10, 100, 0), 0).await.unwrap();
        }
        // `b` reads the table; two appends (another date, and the same date) land first.
        let mut b = EventTable::open(&path).await.unwrap();
        let read_at = b.version();
        check_and_insert(&mut a, &rows(30..40, 101, 0), 0).await.unwrap();
        check_and_insert(&mut a, &rows(40..50, 100, 0), 0).await.unwrap();
        let outcome = b.compact().await.unwrap();
        assert_eq!((outcome.files_removed, outcome.files_added, outcome.version), (3, 1, read_at + 3));
        let counts = EventTable::open(&path).await.unwrap().counts().await.unwrap();
        assert_eq!((counts.rows, counts.distinct_keys, counts.files), (50, 50, 3));
    }

    #[tokio::test]
    async fn checkpoints_follow_the_table_version_across_restarts() {
        let (_dir, path) = new_table().await;
        let settings = Maintenance {
            checkpoint_every: std::num::NonZeroU64::new(3).unwrap(),
            log_retention: std::time::Duration::from_secs(3600),
            compact_every: None,
            vacuum_every: None,
            vacuum_retention: std::time::Duration::from_secs(3600),
        };
        // A process that restarts after every batch: a fresh schedule each time.
        let mut checkpoints = Vec::new();
        for i in 0..7 {
            let mut t = indexed(&path).await;
            let mut schedule = MaintenanceSchedule::new(settings, t.last_checkpoint_version().await);
            check_and_insert(&mut t, &rows(i * 10..i * 10 + 10, 100, 0), 0).await.unwrap();
            t.reload().await.unwrap();
            if schedule.run_due(&mut t, false).await.checkpoint {
                checkpoints.push(t.version());
            }
        }
        let table = EventTable::open(&path).await.unwrap();
        assert_eq!(checkpoints, [3, 6], "checkpoints every 3 table versions, whoever restarted");
        assert_eq!(table.last_checkpoint_version().await, Some(6));
    }

    #[tokio::test]
    async fn a_due_compaction_waits_for_a_backlog_to_end_but_not_for_longer_than_another_interval() {
        let (_dir, path) = new_table().await;
        let mut t = indexed(&path).await;
        let minute = Duration::from_secs(60);
        let settings = Maintenance {
            checkpoint_every: std::num::NonZeroU64::new(1_000).unwrap(),
            log_retention: minute,
            compact_every: Some(minute),
            vacuum_every: None,
            vacuum_retention: minute,
        };
        let mut schedule = MaintenanceSchedule::new(settings, None);
        let ago = |d: Duration| Instant::now().checked_sub(d).unwrap();
        for round in 0..2 {
            for i in 0..3 {
                let first = (round * 3 + i) * 10;
                check_and_insert(&mut t, &rows(first..first + 10, 100, 0), 0).await.unwrap();
            }
            t.reload().await.unwrap();
            let files = if round == 0 { 3 } else { 4 };
            if round == 0 {
                // Due a minute and a half ago: put off while the batches are full.
                schedule.last_compact = ago(minute * 3 / 2);
                assert!(schedule.is_due(t.version(), true), "due once, to say it waits");
                assert_eq!(schedule.run_due(&mut t, true).await.compacted_files, 0);
                assert!(!schedule.is_due(t.version(), true), "the batch loop is behind");
                assert!(schedule.is_due(t.version(), false), "caught up");
                assert_eq!(schedule.run_due(&mut t, false).await.compacted_files, files);
            } else {
                // Behind for a whole interval more: it runs beside the full batches.
                schedule.last_compact = ago(minute * 5 / 2);
                assert!(schedule.is_due(t.version(), true));
                assert_eq!(schedule.run_due(&mut t, true).await.compacted_files, files);
            }
            assert!(!schedule.is_due(t.version(), false), "the next one is an interval away");
        }
        let counts = EventTable::open(&path).await.unwrap().counts().await.unwrap();
        assert_eq!((counts.rows, counts.distinct_keys, counts.files), (60, 60, 1));
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
}
