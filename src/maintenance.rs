//! Delta table upkeep on a schedule: checkpoints (and log cleanup behind them),
//! compaction of small files, vacuum of removed ones.
//!
//! `run` calls [`Schedule::run_due`] between batches, never during one, so the upkeep
//! cannot race the processor's own commits; racing another process (a second instance,
//! an operator's `compact`) is safe because none of it changes rows: a compaction's
//! files carry `dataChange = false`, a vacuum deletes only files no snapshot within the
//! retention uses, and a checkpoint or log cleanup rewrites no data. A failure is logged
//! and counted, never fatal: the batch loop's exactly-once bookkeeping does not depend on
//! upkeep.

use std::time::Instant;

use crate::config::Maintenance;
use crate::metrics;
use crate::sink::delta::EventTable;

/// When each kind of upkeep last ran.
#[derive(Debug)]
pub struct Schedule {
    settings: Maintenance,
    /// The version of the last checkpoint this process wrote (or the version it started
    /// at): the next is due `checkpoint_every` versions later.
    checkpointed: u64,
    last_compact: Instant,
    last_vacuum: Instant,
    /// Whether the table's tombstone retention has been checked this run.
    tombstones_set: bool,
}

/// What one [`Schedule::run_due`] did, for the log and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub checkpoint: bool,
    pub log_entries_deleted: usize,
    pub compacted_files: u64,
    pub vacuumed_files: usize,
}

impl Schedule {
    /// A schedule for a table loaded at `version`; the first compaction and vacuum are
    /// due one interval from now.
    pub fn new(settings: Maintenance, version: u64) -> Self {
        let now = Instant::now();
        Self { settings, checkpointed: version, last_compact: now, last_vacuum: now, tombstones_set: false }
    }

    /// Runs whatever is due on `table` (loaded at its latest version by the caller).
    pub async fn run_due(&mut self, table: &mut EventTable) -> Done {
        let mut done = Done::default();
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
        if self.settings.compact_every.is_some_and(|every| self.last_compact.elapsed() >= every) {
            self.last_compact = Instant::now();
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
                            "compacted the Delta table"
                        );
                    }
                }
                Err(e) if e.is_lost_compaction_race() => {
                    // Another process compacted the same files first: nothing to do.
                    metrics::maintenance("compact_lost_race", true);
                    tracing::info!("another compaction committed first; trying again at the next interval");
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
