//! `vacuum`: deletes data files the Delta table stopped using longer ago than the
//! retention. Safe while `run` writes (see [`EventTable::vacuum`]).

use std::time::Duration;

use crate::config::Settings;
use crate::sink::delta::{DeltaError, EventTable, VacuumOutcome};

pub async fn vacuum(
    settings: &Settings,
    retention: Option<Duration>,
    dry_run: bool,
    full: bool,
) -> Result<VacuumOutcome, DeltaError> {
    let mut table = EventTable::open(&settings.delta_path).await?;
    table.vacuum(retention.unwrap_or(settings.maintenance.vacuum_retention), dry_run, full).await
}
