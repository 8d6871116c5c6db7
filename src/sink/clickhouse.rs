//! ClickHouse, the speed layer: for now, only what `verify` reads.
//!
//! Queries use plain `RowBinary` (validation off): ClickHouse 18.16 has no
//! `RowBinaryWithNamesAndTypes`, which the client's validation mode needs.

use std::time::Duration;

use crate::config::ClickHouseSettings;

/// Raw and collapsed (`FINAL`) row counts of the events table.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ClickHouseCounts {
    pub rows: u64,
    pub final_rows: u64,
}

fn client(settings: &ClickHouseSettings) -> clickhouse::Client {
    clickhouse::Client::default().with_url(&settings.url).with_validation(false)
}

/// The counts, or `None` when the server does not answer or the table does not exist.
pub async fn counts(settings: &ClickHouseSettings) -> Option<ClickHouseCounts> {
    let client = client(settings);
    let table = format!("`{}`.`{}`", settings.database, settings.table);
    let query = |sql: String| {
        let client = client.clone();
        async move { tokio::time::timeout(Duration::from_secs(10), client.query(&sql).fetch_one::<u64>()).await }
    };
    match (
        query(format!("SELECT count() FROM {table}")).await,
        query(format!("SELECT count() FROM {table} FINAL")).await,
    ) {
        (Ok(Ok(rows)), Ok(Ok(final_rows))) => Some(ClickHouseCounts { rows, final_rows }),
        (Ok(Err(e)), _) | (_, Ok(Err(e))) => {
            tracing::debug!(error = %e, "ClickHouse counts unavailable");
            None
        }
        _ => None,
    }
}
