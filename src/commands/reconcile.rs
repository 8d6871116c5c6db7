//! `reconcile`: inserts into ClickHouse every Delta row whose key ClickHouse lacks, for
//! recovery after an outage longer than the processed topic's retention, or a dropped
//! table. Delta is the truth; ClickHouse is made to hold at least its keys.

use std::collections::HashSet;

use crate::clickhouse::{ClickHouse, ClickHouseError};
use crate::config::Settings;
use crate::table::{DeltaError, EventTable};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("ClickHouse table {table} does not exist: run `idempipe setup` first")]
    NoTable { table: String },
}

/// What reconcile found and did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReconcileSummary {
    pub delta_keys: u64,
    pub clickhouse_keys: u64,
    /// Delta keys ClickHouse lacked.
    pub missing: u64,
    /// Rows inserted (equal to `missing` unless Delta changed meanwhile).
    pub inserted: u64,
    /// Keys in ClickHouse that Delta does not hold (reported, never deleted).
    pub extra: u64,
}

pub async fn reconcile(settings: &Settings) -> Result<ReconcileSummary, ReconcileError> {
    let table = EventTable::open(&settings.delta_path).await?;
    // The rows go to ClickHouse in the table's columns.
    let schema = table.effective_schema(&settings.schema)?;
    let clickhouse = ClickHouse::connect(&settings.clickhouse).await?.with_schema(schema);
    // Columns schema evolution added to Delta that no sink has added yet.
    clickhouse.add_missing_columns().await?;
    let layout = clickhouse.layout().await?.ok_or_else(|| ReconcileError::NoTable { table: clickhouse.table() })?;
    let delta_keys: HashSet<String> = table.keys().await?.into_iter().collect();
    let clickhouse_keys = clickhouse.keys().await?;
    let missing: HashSet<String> = delta_keys.difference(&clickhouse_keys).cloned().collect();
    let extra = clickhouse_keys.difference(&delta_keys).count() as u64;
    let mut rows = table.rows_with_keys(&missing).await?;
    rows.sort_by(|a, b| a.dedup_key.cmp(&b.dedup_key));
    let mut inserted = 0;
    for chunk in rows.chunks(settings.clickhouse.max_batch_rows.get()) {
        // No deduplication token: each run computes what is missing now, and a token
        // could make the server drop rows that were deleted since an earlier run.
        clickhouse.insert(layout, chunk, None).await?;
        inserted += chunk.len() as u64;
        tracing::info!(inserted, of = rows.len(), "reconcile: inserted missing rows");
    }
    Ok(ReconcileSummary {
        delta_keys: delta_keys.len() as u64,
        clickhouse_keys: clickhouse_keys.len() as u64,
        missing: missing.len() as u64,
        inserted,
        extra,
    })
}

impl std::fmt::Display for ReconcileSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "delta keys {}, clickhouse keys {}: {} missing, {} inserted, {} in ClickHouse only",
            self.delta_keys, self.clickhouse_keys, self.missing, self.inserted, self.extra
        )
    }
}
