//! `compact`: bin-packs the Delta table's small files; with `--clickhouse`, also merges
//! the ClickHouse table's parts. Safe while `run` writes (see [`EventTable::compact`]).

use serde::Serialize;

use crate::clickhouse::{ClickHouse, ClickHouseError};
use crate::config::Settings;
use crate::table::{CompactOutcome, DeltaError, EventTable};

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
}

#[derive(Debug, Serialize)]
pub struct CompactReport {
    pub delta: CompactOutcome,
    pub live_files_before: usize,
    pub live_files_after: usize,
    /// Whether `OPTIMIZE TABLE … FINAL` ran.
    pub clickhouse_optimized: bool,
}

pub async fn compact(settings: &Settings, clickhouse: bool) -> Result<CompactReport, CompactError> {
    settings.delta_path.check_put_if_absent().await.map_err(DeltaError::from)?;
    let mut table = EventTable::open(&settings.delta_path).await?;
    let live_files_before = table.live_files();
    let delta = table.compact().await?;
    if clickhouse {
        ClickHouse::connect(&settings.clickhouse).await?.optimize_final().await?;
    }
    Ok(CompactReport {
        delta,
        live_files_before,
        live_files_after: table.live_files(),
        clickhouse_optimized: clickhouse,
    })
}

impl std::fmt::Display for CompactReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "delta: {} files compacted into {} in {} partitions; live files {} -> {}; version {}",
            self.delta.files_removed,
            self.delta.files_added,
            self.delta.partitions,
            self.live_files_before,
            self.live_files_after,
            self.delta.version
        )?;
        if self.clickhouse_optimized {
            writeln!(f, "clickhouse: OPTIMIZE TABLE ... FINAL done")?;
        }
        Ok(())
    }
}
