//! Test helpers shared by the table's unit tests: rows of known keys and dates, a fresh
//! table, and the pipeline's check-then-insert step.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use deltalake::kernel::Transaction;

use crate::event::{DedupKey, EventTime};
use crate::table::{Columns, EventTable, InsertOutcome, Result, Row};

pub(crate) fn row(n: u32, day: i32, partition: i32) -> Row {
    let time = EventTime::from_micros(i64::from(day) * 86_400_000_000 + i64::from(n)).unwrap();
    let user_id = format!("u{n}");
    Row {
        key: DedupKey::compute(&user_id, "click", time),
        parts: vec![user_id, "click".into()],
        time,
        payload: Some("{}".into()),
        values: Vec::new(),
        source_partition: partition,
        source_offset: i64::from(n),
        unplaced: None,
    }
}

pub(crate) fn rows(range: std::ops::Range<u32>, day: i32, partition: i32) -> Vec<Row> {
    range.map(|n| row(n, day, partition)).collect()
}

pub(crate) fn probe(rows: &[Row]) -> Vec<(DedupKey, EventTime)> {
    rows.iter().map(|r| (r.key, r.time)).collect()
}

pub(crate) fn keys(rows: &[Row]) -> HashSet<DedupKey> {
    rows.iter().map(|r| r.key).collect()
}

/// Checks `rows` and inserts the new ones, as the pipeline does, with the txn of
/// Kafka partition `partition`.
pub(crate) async fn check_and_insert(table: &mut EventTable, rows: &[Row], partition: i32) -> Result<InsertOutcome> {
    let new = table.new_rows(rows).await?;
    let batch = Columns::default().batch(&new, 1, EventTime::from_micros(0).unwrap()).unwrap();
    let txns = [Transaction::new(format!("g-raw-{partition}"), rows.len() as i64)];
    table.insert(batch, &txns, serde_json::json!({})).await
}

/// An empty events table in a temporary directory (kept while the guard lives).
pub(crate) async fn new_table() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events");
    EventTable::create_if_missing(&path, &crate::event::EventSchema::default()).await.unwrap();
    (dir, path)
}

pub(crate) async fn indexed(path: &Path) -> EventTable {
    let mut table = EventTable::open(path).await.unwrap();
    table.enable_key_index().await.unwrap();
    table
}
