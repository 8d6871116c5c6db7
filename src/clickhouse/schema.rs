//! The ClickHouse DDL, per server generation.
//!
//! Two layouts of the events table, picked by the server's version at `setup`:
//! - `Current` (ClickHouse 20.1 and later): `event_time` and `ingested_at` are
//!   `DateTime64(6, 'UTC')`;
//! - `Legacy` (older servers such as 18.16): `DateTime('UTC')` has whole seconds, so an
//!   `event_time_us` column (microseconds since the epoch, Int64) keeps the exact instant.
//!
//! Both are `ReplacingMergeTree(version)` ordered by `dedup_key` and partitioned by the
//! month of `event_time`; a key's copies always share a partition (the key is derived from
//! the time), so merges and `FINAL` collapse all of them. `version` is the ingest time in
//! microseconds of the Delta row, so the copy that survives is the one Delta holds.

use crate::clickhouse::typed;
use crate::event::EventSchema;

/// Which columns an events table has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Current,
    Legacy,
}

/// What a server supports, from its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    pub text: String,
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `SELECT version()` output such as `18.16.1` or `26.1.2.3`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { text: text.trim().to_owned(), major, minor })
    }

    /// `DateTime64` arrived in 20.1.
    pub fn has_datetime64(&self) -> bool {
        (self.major, self.minor) >= (20, 1)
    }

    /// `insert_deduplication_token` (and deduplication of inserts into a non-replicated
    /// MergeTree via `non_replicated_deduplication_window`) arrived in 22.2.
    pub fn has_dedup_token(&self) -> bool {
        (self.major, self.minor) >= (22, 2)
    }

    /// `fromUnixTimestamp64Micro`, used by the Kafka-engine view, arrived in 20.5.
    pub fn has_from_unix_timestamp64(&self) -> bool {
        (self.major, self.minor) >= (20, 5)
    }

    /// The layout a new table gets on this server.
    pub fn layout(&self) -> Layout {
        if self.has_datetime64() { Layout::Current } else { Layout::Legacy }
    }
}

/// `` `db`.`table` `` (names are validated plain identifiers, see `config`).
pub(crate) fn qualified(database: &str, table: &str) -> String {
    format!("`{database}`.`{table}`")
}

/// Merges every part of the events table now, folding rows of one key (the same on
/// every server version).
pub fn optimize_final(database: &str, table: &str) -> String {
    format!("OPTIMIZE TABLE {} FINAL", qualified(database, table))
}

pub fn create_database(database: &str) -> String {
    format!("CREATE DATABASE IF NOT EXISTS `{database}`")
}

/// The columns of each layout, in insert order, with their ClickHouse types: the one
/// list the DDL, the table check and the row encoding follow. After `dedup_key` come the
/// schema's key columns (`user_id`, `event_type` by default) and declared columns
/// ([`crate::clickhouse::typed`]).
pub fn columns(layout: Layout, schema: &EventSchema) -> Vec<(String, String)> {
    let time = match layout {
        Layout::Current => "DateTime64(6, 'UTC')",
        Layout::Legacy => "DateTime('UTC')",
    };
    let mut columns = vec![("dedup_key".to_owned(), "String".to_owned())];
    let key = schema.identity().key_columns();
    columns.extend(
        key.into_iter().zip(schema.key_kinds()).map(|(c, k)| (c, typed::key_type(&k.column_type()).to_owned())),
    );
    columns.extend(schema.columns().iter().map(|c| (c.name.clone(), typed::ch_type(&c.kind, layout))));
    columns.push(("event_time".to_owned(), time.to_owned()));
    if layout == Layout::Legacy {
        columns.push(("event_time_us".to_owned(), "Int64".to_owned()));
    }
    columns.extend(
        [
            ("event_date", "Date"),
            ("payload", "String"),
            ("source_partition", "Int32"),
            ("source_offset", "Int64"),
            ("batch_id", "Int64"),
            ("ingested_at", time),
            ("version", "UInt64"),
        ]
        .map(|(name, kind)| (name.to_owned(), kind.to_owned())),
    );
    columns
}

/// Adds column `name` of ClickHouse type `kind` to the events table (schema evolution;
/// without `IF NOT EXISTS`, which 18.16 lacks: the caller reads the columns again when it
/// fails).
pub fn add_column(database: &str, table: &str, name: &str, kind: &str) -> String {
    format!("ALTER TABLE {} ADD COLUMN `{name}` {kind}", qualified(database, table))
}

/// The events table.
pub fn create_events(server: &ServerVersion, database: &str, table: &str, schema: &EventSchema) -> String {
    let columns: Vec<String> =
        columns(server.layout(), schema).iter().map(|(name, kind)| format!("    `{name}` {kind}")).collect();
    let settings = if server.has_dedup_token() { "\nSETTINGS non_replicated_deduplication_window = 1000" } else { "" };
    format!(
        "CREATE TABLE IF NOT EXISTS {name} (\n{columns}\n) ENGINE = ReplacingMergeTree(version)\n\
         PARTITION BY toYYYYMM(event_time)\nORDER BY dedup_key{settings}",
        name = qualified(database, table),
        columns = columns.join(",\n"),
    )
}

/// Names of the Kafka-engine objects that feed `table`.
pub(crate) fn kafka_queue_name(table: &str) -> String {
    format!("{table}_kafka_queue")
}
pub(crate) fn kafka_view_name(table: &str) -> String {
    format!("{table}_kafka_mv")
}

/// The Kafka-engine route: a Kafka table reading the processed topic's JSON records and
/// a materialized view that converts them into events-table rows.
pub fn create_kafka_engine(
    server: &ServerVersion,
    database: &str,
    table: &str,
    key: &[String],
    brokers: &str,
    topic: &str,
    group: &str,
) -> [String; 2] {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('\'', "\\'");
    let queue = qualified(database, &kafka_queue_name(table));
    // Every field of the record is declared, so none is "unknown" to JSONEachRow.
    let key_columns: String = key.iter().map(|c| format!("`{c}` String, ")).collect();
    let key_select: String = key.iter().map(|c| format!("`{c}`, ")).collect();
    let columns = format!(
        "dedup_key String, {key_columns}event_time String, event_time_us Int64, event_date String, payload String, \
         source_partition Int32, source_offset Int64, batch_id Int64, ingested_at String, ingested_at_us Int64"
    );
    let engine = format!("Kafka('{}', '{}', '{}', 'JSONEachRow')", quote(brokers), quote(topic), quote(group));
    let queue_ddl = format!("CREATE TABLE IF NOT EXISTS {queue} ({columns}) ENGINE = {engine}");
    let (time_select, ingested_select) = match (server.layout(), server.has_from_unix_timestamp64()) {
        (Layout::Current, true) => (
            "fromUnixTimestamp64Micro(event_time_us, 'UTC') AS event_time".to_owned(),
            "fromUnixTimestamp64Micro(ingested_at_us, 'UTC') AS ingested_at",
        ),
        // 20.1 to 20.4: exact through Decimal128 arithmetic (a Float64 would round).
        (Layout::Current, false) => (
            "toDateTime64(toDecimal128(event_time_us, 6) / 1000000, 6, 'UTC') AS event_time".to_owned(),
            "toDateTime64(toDecimal128(ingested_at_us, 6) / 1000000, 6, 'UTC') AS ingested_at",
        ),
        (Layout::Legacy, _) => (
            "toDateTime(intDiv(event_time_us, 1000000), 'UTC') AS event_time, event_time_us".to_owned(),
            "toDateTime(intDiv(ingested_at_us, 1000000), 'UTC') AS ingested_at",
        ),
    };
    let view_ddl = format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {view} TO {target} AS SELECT \
         dedup_key, {key_select}{time_select}, toDate(event_date) AS event_date, payload, \
         source_partition, source_offset, batch_id, {ingested_select}, toUInt64(ingested_at_us) AS version \
         FROM {queue}",
        view = qualified(database, &kafka_view_name(table)),
        target = qualified(database, table),
    );
    [queue_ddl, view_ddl]
}

/// Row count, sum of key prefixes (mod 2^64) and, with `FINAL`, of the collapsed table.
/// The key prefix is the first 8 bytes of the MD5 read big-endian, as
/// [`crate::event::DedupKey::prefix_u64`] computes it.
pub fn key_summary(database: &str, table: &str, final_: bool) -> String {
    format!(
        "SELECT count(), sumWithOverflow(reinterpretAsUInt64(reverse(unhex(substring(dedup_key, 1, 16))))) \
         FROM {}{}",
        qualified(database, table),
        if final_ { " FINAL" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_pick_the_layout() {
        let old = ServerVersion::parse("18.16.1\n").unwrap();
        assert_eq!((old.major, old.minor), (18, 16));
        assert_eq!(old.layout(), Layout::Legacy);
        assert!(!old.has_dedup_token());
        let new = ServerVersion::parse("26.1.2.11").unwrap();
        assert_eq!(new.layout(), Layout::Current);
        assert!(new.has_dedup_token());
        assert!(ServerVersion::parse("x").is_none());
    }

    #[test]
    fn the_legacy_table_keeps_microseconds_in_a_column() {
        let schema = EventSchema::default();
        let ddl = create_events(&ServerVersion::parse("18.16.1").unwrap(), "db", "ev", &schema);
        assert!(ddl.contains("`event_time_us` Int64") && ddl.contains("`user_id` String"), "{ddl}");
        assert!(!ddl.contains("DateTime64"), "{ddl}");
        assert!(!ddl.contains("SETTINGS"), "{ddl}");
        let ddl = create_events(&ServerVersion::parse("24.8.1").unwrap(), "db", "ev", &schema);
        assert!(ddl.contains("DateTime64(6, 'UTC')") && ddl.contains("non_replicated_deduplication_window"));
    }
}
