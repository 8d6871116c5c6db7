//! Reading the table back: counts and keys for `verify`, rows by key for `reconcile`,
//! and the one reader of a data file's Parquet (the key index and compaction use it).
//!
//! Invariant: every read is of the loaded version (callers reload first for the latest),
//! through DataFusion with the table registered as `t`.

use std::collections::{BTreeMap, HashSet};

use deltalake::DeltaTableError;
use deltalake::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::DataType as ArrowType;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::parquet::arrow::ProjectionMask;
// Deprecated in parquet 59 in favour of a hand-written `AsyncFileReader`; it still reads
// only the footer and the projected column's pages, which is what this needs.
#[allow(deprecated)]
use deltalake::parquet::arrow::async_reader::{
    ParquetObjectReader, ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder,
};

use crate::event::DedupKey;
use crate::table::{EventTable, PARTITION_COLUMN, Result, StoredRow};

/// Counts of the table's content, for `verify`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct TableCounts {
    pub rows: u64,
    pub distinct_keys: u64,
    /// Rows whose `event_date` is not the UTC date of their `event_time` (written by
    /// another engine that derived it otherwise, in another time zone say): the key check
    /// looks for a stored key under the date of its event time, so it cannot find these.
    pub misdated_rows: u64,
    pub version: u64,
    pub files: u64,
}

impl EventTable {
    /// Whether commit `version` exists, asked of the log store for that one entry (no
    /// listing of the log, and nothing loaded).
    pub(crate) async fn has_commit(&self, version: u64) -> Result<bool> {
        let entry = self.table.log_store().read_commit_entry(version).await.map_err(|e| self.error(e))?;
        Ok(entry.is_some())
    }

    /// The batch id (`idempipe.batch_id` in the commit info) of each of the loaded
    /// version's last `limit` commits that has one, by version.
    pub async fn batch_ids(&self, limit: usize) -> Result<BTreeMap<u64, i64>> {
        use futures::TryStreamExt;
        let infos: Vec<_> = self.table.history(Some(limit)).try_collect().await.map_err(|e| self.error(e))?;
        // Newest first: the loaded version, then the ones before it.
        Ok(infos
            .iter()
            .enumerate()
            .filter_map(|(back, info)| {
                let version = self.version().checked_sub(back as u64)?;
                Some((version, info.info.get("idempipe.batch_id")?.as_i64()?))
            })
            .collect())
    }

    /// Runs `sql` against the table registered as `t` and returns the batches.
    async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        self.query_with(sql, None).await
    }

    /// [`EventTable::query`] with `extra`, a batch registered under its name beside `t`.
    pub(crate) async fn query_with(&self, sql: &str, extra: Option<(&str, RecordBatch)>) -> Result<Vec<RecordBatch>> {
        let ctx = SessionContext::new();
        let provider = self.table.table_provider().await.map_err(|e| self.error(e.into()))?;
        ctx.register_table("t", provider).map_err(|e| self.error(e.into()))?;
        if let Some((name, batch)) = extra {
            ctx.register_batch(name, batch).map_err(|e| self.error(e.into()))?;
        }
        ctx.sql(sql).await.map_err(|e| self.error(e.into()))?.collect().await.map_err(|e| self.error(e.into()))
    }

    /// Column `i` of `batch` as plain UTF-8 (DataFusion may hand back string views).
    pub(crate) fn strings(&self, batch: &RecordBatch, i: usize) -> Result<StringArray> {
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

    /// The rows whose key is in `keys`.
    pub async fn rows_with_keys(&self, keys: &HashSet<String>) -> Result<Vec<StoredRow>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Timestamps come back as microseconds; the cast below reads them as Int64.
        let key_columns = self.columns.key();
        let declared = self.columns.declared();
        let quoted: String =
            key_columns.iter().chain(declared.iter().map(|(name, _)| name)).map(|c| format!("\"{c}\", ")).collect();
        let sql = format!(
            "SELECT dedup_key, event_time, payload, source_partition, source_offset, batch_id, ingested_at, \
             {quoted}1 FROM t"
        );
        let declared_types = self.columns.declared_arrow_types();
        let mut out = Vec::new();
        for batch in self.query(&sql).await? {
            let (key, payload) = (self.strings(&batch, 0)?, self.strings(&batch, 2)?);
            let parts =
                (0..key_columns.len()).map(|i| self.strings(&batch, 7 + i)).collect::<Result<Vec<StringArray>>>()?;
            // In the columns' own Arrow types (DataFusion may hand back string views).
            let values = declared_types
                .iter()
                .enumerate()
                .map(|(j, kind)| {
                    deltalake::arrow::compute::cast(batch.column(7 + key_columns.len() + j), kind)
                        .map_err(|e| self.error(e.into()))
                })
                .collect::<Result<Vec<_>>>()?;
            let int64 = |i: usize| -> Result<Int64Array> {
                let c = deltalake::arrow::compute::cast(batch.column(i), &ArrowType::Int64)
                    .map_err(|e| self.error(e.into()))?;
                c.as_any().downcast_ref::<Int64Array>().cloned().ok_or_else(|| self.unexpected("expected integers"))
            };
            let (time, partition, offset, batch_id, ingested) = (int64(1)?, int64(3)?, int64(4)?, int64(5)?, int64(6)?);
            for i in 0..batch.num_rows() {
                if key.is_null(i) || !keys.contains(key.value(i)) {
                    continue;
                }
                out.push(StoredRow {
                    dedup_key: key.value(i).to_owned(),
                    parts: parts.iter().map(|p| p.value(i).to_owned()).collect(),
                    values: values
                        .iter()
                        .zip(declared)
                        .map(|(array, (_, kind))| crate::table::schema::json_value(array.as_ref(), i, kind))
                        .collect(),
                    event_time_us: time.value(i),
                    payload: payload.value(i).to_owned(),
                    source_partition: partition.value(i) as i32,
                    source_offset: offset.value(i),
                    batch_id: batch_id.value(i),
                    ingested_at_us: ingested.value(i),
                    unknown: Vec::new(),
                });
            }
        }
        Ok(out)
    }

    /// Row count, distinct key count, version and live file count.
    pub async fn counts(&self) -> Result<TableCounts> {
        let batches = self
            .query(&format!(
                "SELECT count(*), count(DISTINCT dedup_key), \
                 count(*) FILTER (WHERE {PARTITION_COLUMN} IS DISTINCT FROM CAST(event_time AS DATE)) FROM t"
            ))
            .await?;
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
            misdated_rows: value(2)?,
            version: self.version(),
            files: snapshot.log_data().num_files() as u64,
        })
    }
}

/// Adds to `keys` every live key of the `event_date` partitions `dates` (`None`: the null
/// date) by a scan of the table, which applies deletion vectors; returns the keys read.
pub(crate) async fn scan_keys(
    table: &deltalake::DeltaTable,
    dates: &std::collections::BTreeSet<Option<String>>,
    keys: &mut impl KeySink,
) -> std::result::Result<u64, DeltaTableError> {
    let mut conditions: Vec<String> = dates
        .iter()
        .flatten()
        // Partition values are dates the log wrote; anything else matches no row.
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
        .map(|d| format!("'{d}'"))
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|list| format!("{PARTITION_COLUMN} IN ({})", list.join(",")))
        .collect();
    if dates.contains(&None) {
        conditions.push(format!("{PARTITION_COLUMN} IS NULL"));
    }
    if conditions.is_empty() {
        return Ok(0);
    }
    let ctx = SessionContext::new();
    ctx.register_table("t", table.table_provider().await?)?;
    let sql = format!("SELECT dedup_key FROM t WHERE {}", conditions.join(" OR "));
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    let mut rows = 0_u64;
    while let Some(batch) = futures::StreamExt::next(&mut stream).await {
        rows += keys.add_key_column(batch?.column(0), &"the table scan")?;
    }
    Ok(rows)
}

/// A stream of the rows of one data file (only `column`, if given), in batches of 64 Ki
/// rows. Without the partition column, which lives in the path.
#[allow(deprecated)]
pub(crate) async fn data_file_stream(
    store: std::sync::Arc<dyn deltalake::ObjectStore>,
    location: deltalake::Path,
    column: Option<&str>,
) -> std::result::Result<ParquetRecordBatchStream<ParquetObjectReader>, DeltaTableError> {
    let builder = ParquetRecordBatchStreamBuilder::new(ParquetObjectReader::new(store, location)).await?;
    let builder = match column {
        Some(column) => {
            let mask = ProjectionMask::columns(builder.parquet_schema(), [column]);
            builder.with_projection(mask)
        }
        None => builder,
    };
    Ok(builder.with_batch_size(64 * 1024).build()?)
}

/// Where the key index's `read_keys` and the table scan of [`scan_keys`] put the keys
/// they read.
pub(crate) trait KeySink: Extend<DedupKey> {
    fn reserve_keys(&mut self, additional: usize);

    /// Adds the keys of a `dedup_key` column read from `source`; returns its rows. A
    /// value that is not a key's hex form can never equal one computed by the contract,
    /// so leaving it out keeps the check exact.
    fn add_key_column(
        &mut self,
        column: &deltalake::arrow::array::ArrayRef,
        source: &dyn std::fmt::Display,
    ) -> Result<u64, DeltaTableError> {
        let column = deltalake::arrow::compute::cast(column, &ArrowType::Utf8)?;
        let strings = column
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| DeltaTableError::Generic(format!("dedup_key in {source} is not a string column")))?;
        self.reserve_keys(strings.len());
        self.extend(strings.iter().flatten().filter_map(DedupKey::from_hex));
        Ok(strings.len() as u64)
    }
}

impl KeySink for HashSet<DedupKey> {
    fn reserve_keys(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

impl KeySink for Vec<DedupKey> {
    fn reserve_keys(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

#[cfg(test)]
mod tests {
    use crate::table::EventTable;
    use crate::table::testing::new_table;

    #[tokio::test]
    async fn a_commit_is_found_by_its_version_alone() {
        let (_dir, path) = new_table().await;
        let table = EventTable::open(&path).await.unwrap();
        assert!(table.has_commit(0).await.unwrap(), "the table's creation");
        assert!(!table.has_commit(1).await.unwrap(), "nothing committed since");
    }
}
