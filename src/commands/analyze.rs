//! `analyze`: the batch log as a report (table, JSON) and, optionally, an HTML page with
//! charts.

use std::path::Path;

use crate::analyze::{AnalyzeError, Report};
use crate::batch_log::BatchLog;

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeCommandError {
    #[error("cannot read the batch log {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error(transparent)]
    Chart(#[from] AnalyzeError),
}

/// Reads the log at `log` and, with `html`, writes the page there.
pub fn analyze(log: &Path, html: Option<&Path>) -> Result<Report, AnalyzeCommandError> {
    let records = BatchLog::new(log.to_owned())
        .read()
        .map_err(|source| AnalyzeCommandError::Read { path: log.display().to_string(), source })?;
    let report = Report::from_records(&records);
    if let Some(path) = html {
        let page = report.to_html(&format!("idempipe batches: {}", log.display()))?;
        std::fs::write(path, page)
            .map_err(|source| AnalyzeCommandError::Write { path: path.display().to_string(), source })?;
    }
    Ok(report)
}
