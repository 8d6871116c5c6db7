//! `vacuum`: deletes data files the Delta table stopped using longer ago than the
//! retention. Safe while `run` writes (see [`EventTable::vacuum`]).

use std::time::Duration;

use crate::config::{MAX_MAINTENANCE_DURATION, Settings};
use crate::table::{DeltaError, EventTable, VacuumOutcome};

#[derive(Debug, thiserror::Error)]
pub enum VacuumError {
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error("invalid value for `--retention`: {0}")]
    Retention(String),
}

/// The shortest retention of `--full`, which also deletes files the log never mentions:
/// a batch's files wait for its Kafka acks before their commit (librdkafka's
/// `message.timeout.ms` is 5 minutes), and a compaction writes for minutes before its.
pub const MIN_FULL_RETENTION: Duration = Duration::from_secs(3600);

pub async fn vacuum(
    settings: &Settings,
    retention: Option<Duration>,
    dry_run: bool,
    full: bool,
) -> Result<VacuumOutcome, VacuumError> {
    let retention = retention.unwrap_or(settings.maintenance.vacuum_retention);
    if retention < Duration::from_secs(60) || retention > MAX_MAINTENANCE_DURATION {
        return Err(VacuumError::Retention("must be between 1m and 3650days".into()));
    }
    if full && retention < MIN_FULL_RETENTION {
        return Err(VacuumError::Retention(
            "must be at least 1h with --full, which deletes files not yet committed by a running processor if they \
             are older than the retention"
                .into(),
        ));
    }
    settings.delta_path.check_put_if_absent().await.map_err(DeltaError::from)?;
    let mut table = EventTable::open(&settings.delta_path).await?;
    Ok(table.vacuum(retention, dry_run, full).await?)
}

impl std::fmt::Display for VacuumOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run { "would delete" } else { "deleted" };
        for file in &self.files {
            writeln!(f, "{verb} {file}")?;
        }
        writeln!(f, "{verb} {} files; table version {}", self.files.len(), self.version)
    }
}
