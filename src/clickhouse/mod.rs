//! ClickHouse, the speed layer: the client (this module: inserts, and what `verify` and
//! `reconcile` read back), the DDL ([`schema`]), and the ClickHouse sink ([`sink`]) that
//! loads the processed topic into it.
//!
//! Invariants:
//! - every query goes through plain `RowBinary` with the client's validation off:
//!   ClickHouse 18.16 has no `RowBinaryWithNamesAndTypes`, which validation needs;
//! - rows are written in the layout the existing table has (read from
//!   `system.columns`), not the one the server would create today, so a table created
//!   before a server upgrade keeps working;
//! - an insert either returns `Ok` after the server acknowledged every row, or an
//!   error after which the caller must assume nothing (re-sending is harmless: the table
//!   collapses copies, and a deduplication token drops an identical retry outright where
//!   the server supports it).

pub mod schema;
pub mod sink;
pub mod tls;
pub mod typed;

use std::collections::HashSet;
use std::time::Duration;

pub use crate::clickhouse::schema::{Layout, ServerVersion};
use crate::config::{ClickHouseIngest, ClickHouseSettings};
use crate::table::StoredRow;

/// Failures talking to ClickHouse, with the server and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    #[error("ClickHouse at {url}: {what}: {source}")]
    Request { url: String, what: String, source: Box<clickhouse::error::Error> },
    #[error("ClickHouse at {url} did not answer within {timeout:?} ({what}): is it running?")]
    Timeout { url: String, what: String, timeout: Duration },
    #[error("ClickHouse at {url}: {what}")]
    Unexpected { url: String, what: String },
    #[error("ClickHouse at {url}: {source}")]
    Tls { url: String, source: tls::TlsError },
}

/// What a failed request calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server is unreachable, slow or overloaded: try again later.
    Transient,
    /// The server answered but did not take the request, for a reason that may lie in its
    /// rows: a data error (a type or parse error, a server-side check, too many
    /// partitions in one insert), a code this list does not know, or an answer without a
    /// code (a proxy's 413 for a large insert). The ClickHouse sink splits such an insert
    /// to find the rows, and dead-letters a row only once another part of its batch
    /// loaded, which shows the refusal is the row's own.
    Refused,
    /// Credentials or the table are wrong or missing: only an operator (or `setup`)
    /// mends it; the sink waits, unready, and resumes when it is mended.
    Fatal,
}

impl ClickHouseError {
    /// Classifies the failure, as Vector's ClickHouse sink does, by the server's error
    /// code ([`FATAL_CODES`], [`TRANSIENT_CODES`]; any other code, or none: refused).
    pub fn failure(&self) -> Failure {
        match self {
            ClickHouseError::Timeout { .. } => Failure::Transient,
            ClickHouseError::Unexpected { .. } | ClickHouseError::Tls { .. } => Failure::Fatal,
            ClickHouseError::Request { source, .. } => match source.as_ref() {
                clickhouse::error::Error::Network(_) | clickhouse::error::Error::TimedOut => Failure::Transient,
                clickhouse::error::Error::BadResponse(text) => match error_code(text) {
                    // Not the server's own answer (a proxy's page): it says nothing of
                    // whether the rows or the server are at fault.
                    None => Failure::Refused,
                    Some(code) if FATAL_CODES.contains(&code) => Failure::Fatal,
                    Some(TOO_MANY_PARTS) if text.contains("partitions for single INSERT") => Failure::Refused,
                    Some(code) if TRANSIENT_CODES.contains(&code) => Failure::Transient,
                    Some(_) => Failure::Refused,
                },
                _ => Failure::Fatal,
            },
        }
    }

    /// Whether waiting and trying again can help ([`Failure::Transient`]).
    pub fn is_transient(&self) -> bool {
        self.failure() == Failure::Transient
    }

    /// The server's own message, when it answered with one.
    pub(crate) fn server_message(&self) -> Option<String> {
        match self {
            ClickHouseError::Request { source, .. } => match source.as_ref() {
                clickhouse::error::Error::BadResponse(text) => Some(text.trim().to_owned()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Server error codes that no retry fixes and no row causes: a table whose columns are not
/// ours (10, 16, 47), unknown table (60) or database (81), unknown user (192), wrong or
/// required password (193, 194), a setting the server's profile forbids (452), no grant
/// (497), authentication failed (516).
const FATAL_CODES: [u32; 11] = [10, 16, 47, 60, 81, 192, 193, 194, 452, 497, 516];

/// Server error codes of a busy, slow, full or restarting server, whatever the rows:
/// timeouts (159, 209), too slow (160), read-only or readonly table (164, 242), a quota
/// spent (201), too many queries or connections (202, 203), aborted (236), memory (241),
/// no disk space (243), too many parts awaiting merges (252), replicas (285), a write
/// quorum not reached (286), an insert whose fate is unknown (319), a query cancelled
/// (394, a server shutting down), a task the server cannot schedule (439), no ZooKeeper
/// (225), system and keeper errors (425, 999), network (210, 1000), a C++ exception the
/// server did not name (1001).
const TRANSIENT_CODES: [u32; 23] = [
    159, 160, 164, 201, 202, 203, 209, 210, 225, 236, 241, 242, 243, 252, 285, 286, 319, 394, 425, 439, 999, 1000, 1001,
];

/// `TOO_MANY_PARTS`: also what a current server answers to an insert with more
/// partitions than `max_partitions_per_insert_block` (refused, not transient).
const TOO_MANY_PARTS: u32 = 252;

/// The server's error code in an error text: `Code: 60, e.displayText() = …` (18.16) or
/// `Code: 60. DB::Exception: …` (current).
fn error_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

pub type Result<T, E = ClickHouseError> = std::result::Result<T, E>;

/// How long [`ClickHouse::ping`] waits.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a query or insert may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Raw and collapsed (`FINAL`) counts of the events table, with the key checksum of the
/// collapsed table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ClickHouseCounts {
    pub rows: u64,
    pub final_rows: u64,
    /// Sum, modulo 2^64, of [`crate::event::DedupKey::prefix_u64`] over the `FINAL` rows.
    pub key_checksum: u64,
}

/// What `setup` did in ClickHouse.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SchemaReport {
    pub server_version: String,
    pub table: String,
    pub layout: Layout,
    /// Whether the events table was created now (false: it existed).
    pub created: bool,
    /// The Kafka-engine objects, when that route was asked for.
    pub kafka_engine: Option<[String; 2]>,
}

/// A connection to one server and events table.
#[derive(Clone)]
pub struct ClickHouse {
    client: clickhouse::Client,
    settings: ClickHouseSettings,
    version: ServerVersion,
}

impl ClickHouse {
    /// Connects and reads the server version.
    pub async fn connect(settings: &ClickHouseSettings) -> Result<Self> {
        let client = if settings.url.starts_with("https://") {
            tls::client(settings.ca_file.as_deref())
                .map_err(|source| ClickHouseError::Tls { url: settings.url.clone(), source })?
        } else {
            clickhouse::Client::default()
        };
        let mut client = client.with_url(&settings.url).with_validation(false);
        if let Some(user) = &settings.user {
            client = client.with_user(user);
        }
        if let Some(password) = &settings.password {
            client = client.with_password(password);
        }
        let mut this = Self {
            client,
            settings: settings.clone(),
            version: ServerVersion { text: String::new(), major: 0, minor: 0 },
        };
        let text: String = this.fetch_one("SELECT version()", "reading the server version").await?;
        this.version = ServerVersion::parse(&text)
            .ok_or_else(|| this.unexpected(format!("cannot read the server version {text:?}")))?;
        Ok(this)
    }

    pub fn version(&self) -> &ServerVersion {
        &self.version
    }

    /// The same connection for events of `schema` (the effective one of a table: see
    /// [`crate::table::EventTable::effective_schema`]).
    pub fn with_schema(mut self, schema: crate::event::EventSchema) -> Self {
        self.settings.schema = schema;
        self
    }

    /// Events of `schema` from now on (the Delta table gained columns).
    pub fn set_schema(&mut self, schema: crate::event::EventSchema) {
        self.settings.schema = schema;
    }

    /// `` `db`.`table` `` of the events table.
    pub fn table(&self) -> String {
        schema::qualified(&self.settings.database, &self.settings.table)
    }

    /// The failure of finding no events table (fatal: `setup` creates it).
    pub fn missing_table(&self) -> ClickHouseError {
        self.unexpected(format!("table {} does not exist: run `idempipe setup`", self.table()))
    }

    /// Whether the server answers a trivial query within a few seconds.
    pub(crate) async fn ping(&self) -> Result<()> {
        self.timed_within(PING_TIMEOUT, "SELECT 1", self.client.query("SELECT 1").fetch_one::<u8>()).await.map(drop)
    }

    fn unexpected(&self, what: String) -> ClickHouseError {
        ClickHouseError::Unexpected { url: self.settings.url.clone(), what }
    }

    async fn timed<T>(&self, what: &str, fut: impl Future<Output = clickhouse::error::Result<T>>) -> Result<T> {
        self.timed_within(REQUEST_TIMEOUT, what, fut).await
    }

    async fn timed_within<T>(
        &self,
        timeout: Duration,
        what: &str,
        fut: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(ClickHouseError::Request {
                url: self.settings.url.clone(),
                what: what.to_owned(),
                source: Box::new(source),
            }),
            Err(_) => Err(ClickHouseError::Timeout { url: self.settings.url.clone(), what: what.to_owned(), timeout }),
        }
    }

    async fn execute(&self, sql: &str, what: &str) -> Result<()> {
        self.timed(what, self.client.query(sql).execute()).await
    }

    async fn fetch_one<T>(&self, sql: &str, what: &str) -> Result<T>
    where
        T: clickhouse::RowOwned + clickhouse::RowRead,
    {
        self.timed(what, self.client.query(sql).fetch_one::<T>()).await
    }

    /// Creates the database and events table if missing (and, for the Kafka-engine route,
    /// the Kafka table and view). Running it again changes nothing.
    pub(crate) async fn ensure_schema(&self, brokers: &str, topic: &str) -> Result<SchemaReport> {
        let s = &self.settings;
        self.execute(&schema::create_database(&s.database), "creating the database").await?;
        let existed = !self.table_columns().await?.is_empty();
        let create = schema::create_events(&self.version, &s.database, &s.table, &s.schema);
        self.execute(&create, "creating the events table").await?;
        // The Delta table's columns added since the table was made (schema evolution).
        self.add_missing_columns().await?;
        let layout = self
            .layout()
            .await?
            .ok_or_else(|| self.unexpected(format!("table {} is missing right after its creation", self.table())))?;
        let kafka_engine = match s.ingest {
            ClickHouseIngest::Sink => None,
            ClickHouseIngest::KafkaEngine if !s.schema.columns().is_empty() => {
                return Err(self.unexpected(
                    "the Kafka-engine route (`clickhouse_ingest = \"kafka_engine\"`) loads the key columns and \
                     idempipe's own; declared columns need the ClickHouse sink (`clickhouse_ingest = \"sink\"`)"
                        .into(),
                ));
            }
            ClickHouseIngest::KafkaEngine => {
                let ddl = schema::create_kafka_engine(
                    &self.version,
                    &s.database,
                    &s.table,
                    &s.schema.identity().key_columns(),
                    brokers,
                    topic,
                    &s.group,
                );
                for sql in &ddl {
                    self.execute(sql, "creating the Kafka-engine table and view").await?;
                }
                Some([
                    schema::qualified(&s.database, &schema::kafka_queue_name(&s.table)),
                    schema::qualified(&s.database, &schema::kafka_view_name(&s.table)),
                ])
            }
        };
        Ok(SchemaReport {
            server_version: self.version.text.clone(),
            table: self.table(),
            layout,
            created: !existed,
            kafka_engine,
        })
    }

    /// The events table's columns: name, type.
    async fn table_columns(&self) -> Result<Vec<(String, String)>> {
        self.timed(
            "reading the table's columns",
            self.client
                .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
                .bind(&self.settings.database)
                .bind(&self.settings.table)
                .fetch_all::<(String, String)>(),
        )
        .await
    }

    /// Adds to the events table the schema's declared columns it lacks, nullable (schema
    /// evolution: the sink follows the Delta table's columns), and returns their names; a
    /// table that lacks one of idempipe's own or key columns is left alone. Another sink adding one meanwhile is no failure. (Servers before 19.x have
    /// no `ADD COLUMN IF NOT EXISTS`: the columns are read again instead.)
    /// With no table, adds nothing.
    pub async fn add_missing_columns(&self) -> Result<Vec<String>> {
        let have = self.table_columns().await?;
        if have.is_empty() {
            return Ok(Vec::new());
        }
        let layout = layout_of(&have);
        let wanted = schema::columns(layout, &self.settings.schema);
        let declared = |name: &str| self.settings.schema.columns().iter().any(|c| c.name == name);
        let missing: Vec<(String, String)> =
            wanted.into_iter().filter(|(name, _)| !have.iter().any(|(n, _)| n == name)).collect();
        if missing.iter().any(|(name, _)| !declared(name)) {
            // Not an idempipe events table (one of idempipe's own or key columns is
            // missing): left as it is, for the layout check to name what is wrong.
            return Ok(Vec::new());
        }
        let mut added = Vec::new();
        for (name, kind) in missing {
            let sql = schema::add_column(&self.settings.database, &self.settings.table, &name, &kind);
            if let Err(e) = self.execute(&sql, &format!("adding column {name} {kind}")).await {
                if !self.table_columns().await?.iter().any(|(n, _)| *n == name) {
                    return Err(e);
                }
                continue;
            }
            added.push(name);
        }
        Ok(added)
    }

    /// The layout of the existing events table; `None` when there is no such table.
    pub async fn layout(&self) -> Result<Option<Layout>> {
        let columns = self.table_columns().await?;
        if columns.is_empty() {
            return Ok(None);
        }
        let layout = layout_of(&columns);
        // Inserts are RowBinary without validation: a column of another type would
        // misalign every row after it, so the types are checked here, once.
        let normal = |t: &str| t.replace(' ', "");
        for (name, want) in schema::columns(layout, &self.settings.schema) {
            match columns.iter().find(|(n, _)| *n == name) {
                Some((_, got)) if normal(got) == normal(&want) => {}
                Some((_, got)) => {
                    return Err(self.unexpected(format!(
                        "table {} is not an idempipe events table: column {name} is {got}, expected {want}",
                        self.table()
                    )));
                }
                None => {
                    return Err(self.unexpected(format!(
                        "table {} is not an idempipe events table: column {name} is missing",
                        self.table()
                    )));
                }
            }
        }
        Ok(Some(layout))
    }

    /// Inserts `rows` in one request, in the table's layout. `token`, where the server
    /// supports it, makes ClickHouse drop a retry of an insert it already applied.
    pub async fn insert(&self, layout: Layout, rows: &[StoredRow], token: Option<&str>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let token = token.filter(|_| self.version.has_dedup_token());
        let columns = schema::columns(layout, &self.settings.schema);
        let names: Vec<String> = columns.iter().map(|(name, _)| format!("`{name}`")).collect();
        let sql = format!("INSERT INTO {} ({}) FORMAT RowBinary", self.table(), names.join(", "));
        let what = format!("inserting {} rows into {}", rows.len(), self.table());
        let write = async {
            let mut insert =
                self.client.insert_formatted_with(sql).with_timeouts(Some(REQUEST_TIMEOUT), Some(REQUEST_TIMEOUT));
            if let Some(token) = token {
                insert = insert.with_setting("insert_deduplication_token", token);
            }
            let mut insert = insert.buffered();
            let mut encoded = Vec::with_capacity(1024);
            for row in rows {
                encoded.clear();
                encode_row(&mut encoded, layout, &self.settings.schema, row);
                let mut at = 0;
                while at < encoded.len() {
                    at += insert.write(&encoded[at..]).await?;
                }
            }
            insert.end().await
        };
        self.timed(&what, write).await
    }

    /// Raw and `FINAL` counts and the key checksum; `None` when the table is missing.
    pub async fn counts(&self) -> Result<Option<ClickHouseCounts>> {
        if self.layout().await?.is_none() {
            return Ok(None);
        }
        let s = &self.settings;
        let (rows, _): (u64, u64) =
            self.fetch_one(&schema::key_summary(&s.database, &s.table, false), "counting rows").await?;
        let (final_rows, key_checksum): (u64, u64) =
            self.fetch_one(&schema::key_summary(&s.database, &s.table, true), "counting rows with FINAL").await?;
        Ok(Some(ClickHouseCounts { rows, final_rows, key_checksum }))
    }

    /// Every distinct key in the table.
    pub async fn keys(&self) -> Result<HashSet<String>> {
        let sql = format!("SELECT DISTINCT dedup_key FROM {}", self.table());
        let read = async {
            let mut cursor = self.client.query(&sql).fetch::<String>()?;
            let mut keys = HashSet::new();
            while let Some(key) = cursor.next().await? {
                keys.insert(key);
            }
            Ok(keys)
        };
        self.timed("reading every key", read).await
    }

    /// `OPTIMIZE TABLE … FINAL`: merges every part, so rows with the same key are
    /// collapsed now rather than at a background merge (queries with `FINAL` are right
    /// either way; this makes them cheaper). Heavy on a large table.
    pub async fn optimize_final(&self) -> Result<()> {
        self.execute(
            &schema::optimize_final(&self.settings.database, &self.settings.table),
            "optimizing the events table",
        )
        .await
    }
}

/// The most partitions one insert touches: current servers refuse an insert into more
/// than `max_partitions_per_insert_block` (default 100) partitions.
pub const MAX_PARTITIONS_PER_INSERT: usize = 100;

/// The ClickHouse partition (`toYYYYMM(event_time)`, UTC) a row with this event time lands
/// in, as `YYYYMM`, in `layout`'s time type (the legacy `DateTime` clamps to 1970-2106).
pub(crate) fn partition_of(layout: Layout, event_time_us: i64) -> i64 {
    let days = match layout {
        Layout::Legacy => i64::from(seconds(event_time_us)).div_euclid(86_400),
        Layout::Current => event_time_us.div_euclid(86_400_000_000),
    };
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    year * 100 + month
}

/// Consecutive runs of rows, given their event times sorted by partition, that each touch
/// at most [`MAX_PARTITIONS_PER_INSERT`] ClickHouse partitions: the inserts the sink makes.
pub fn insert_runs(layout: Layout, times: impl IntoIterator<Item = i64>) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut partitions, mut last, mut len) = (0, 0, None, 0);
    for (i, time) in times.into_iter().enumerate() {
        len = i + 1;
        let partition = partition_of(layout, time);
        if last != Some(partition) {
            if partitions == MAX_PARTITIONS_PER_INSERT {
                runs.push(start..i);
                (start, partitions) = (i, 0);
            }
            partitions += 1;
            last = Some(partition);
        }
    }
    if start < len {
        runs.push(start..len);
    }
    runs
}

/// Days since the epoch as ClickHouse's `Date` (UInt16, 1970 to 2149): clamped.
fn date(micros: i64) -> u16 {
    micros.div_euclid(86_400_000_000).clamp(0, i64::from(u16::MAX)) as u16
}

/// Seconds since the epoch as `DateTime` (UInt32, 1970 to 2106): clamped.
fn seconds(micros: i64) -> u32 {
    micros.div_euclid(1_000_000).clamp(0, i64::from(u32::MAX)) as u32
}

/// The layout of a table of `columns` (name, type).
fn layout_of(columns: &[(String, String)]) -> Layout {
    if columns.iter().any(|(n, _)| n == "event_time_us") { Layout::Legacy } else { Layout::Current }
}

/// `rows` in RowBinary, in the column order of [`schema::columns`]`(layout, schema)`, as
/// the sink inserts them (for checks against a server of the tests' own).
pub fn encode_rows(layout: Layout, schema: &crate::event::EventSchema, rows: &[StoredRow]) -> Vec<u8> {
    let mut out = Vec::new();
    for row in rows {
        encode_row(&mut out, layout, schema, row);
    }
    out
}

/// Appends `row` in RowBinary, in the column order of [`schema::columns`]: strings as a
/// LEB128 length and the bytes, integers little-endian, `Date` as UInt16 days,
/// `DateTime` as UInt32 seconds, `DateTime64(6)` as Int64 microseconds, declared columns
/// as [`typed::encode`] writes them. A row missing a value (it cannot happen: the record
/// parser requires each) gets the type's zero, so the rows after it stay aligned.
fn encode_row(out: &mut Vec<u8>, layout: Layout, schema: &crate::event::EventSchema, row: &StoredRow) {
    use crate::event::ColumnType;
    let string = typed::string;
    string(out, &row.dedup_key);
    for (i, kind) in schema.key_kinds().iter().enumerate() {
        let part = row.parts.get(i).map_or("", String::as_str);
        match kind.column_type() {
            ColumnType::Int => out.extend_from_slice(&part.parse::<i32>().unwrap_or(0).to_le_bytes()),
            ColumnType::Long => out.extend_from_slice(&part.parse::<i64>().unwrap_or(0).to_le_bytes()),
            _ => string(out, part),
        }
    }
    for (i, column) in schema.columns().iter().enumerate() {
        typed::encode(out, &column.kind, layout, row.values.get(i).unwrap_or(&serde_json::Value::Null));
    }
    match layout {
        Layout::Current => out.extend_from_slice(&row.event_time_us.to_le_bytes()),
        Layout::Legacy => {
            out.extend_from_slice(&seconds(row.event_time_us).to_le_bytes());
            out.extend_from_slice(&row.event_time_us.to_le_bytes());
        }
    }
    out.extend_from_slice(&date(row.event_time_us).to_le_bytes());
    string(out, &row.payload);
    out.extend_from_slice(&row.source_partition.to_le_bytes());
    out.extend_from_slice(&row.source_offset.to_le_bytes());
    out.extend_from_slice(&row.batch_id.to_le_bytes());
    match layout {
        Layout::Current => out.extend_from_slice(&row.ingested_at_us.to_le_bytes()),
        Layout::Legacy => out.extend_from_slice(&seconds(row.ingested_at_us).to_le_bytes()),
    }
    out.extend_from_slice(&(row.ingested_at_us.max(0) as u64).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_a_retry_can_fix_are_transient() {
        let request = |source| ClickHouseError::Request { url: "u".into(), what: "w".into(), source: Box::new(source) };
        let bad = |text: &str| request(clickhouse::error::Error::BadResponse(text.into()));
        assert!(request(clickhouse::error::Error::Network("refused".into())).is_transient());
        assert!(bad("Code: 241, e.displayText() = DB::Exception: Memory limit exceeded").is_transient());
        assert!(!bad("Code: 516, e.displayText() = DB::Exception: default: Authentication failed").is_transient());
        assert!(!bad("Code: 60, e.displayText() = DB::Exception: Table idempipe.x doesn't exist.").is_transient());
        assert!(!bad("Code: 81. DB::Exception: Database nope does not exist. (UNKNOWN_DATABASE)").is_transient());
        assert_eq!(bad("Code: 6000. DB::Exception: a code we do not know").failure(), Failure::Refused);
        assert_eq!(bad("Code: 53, e.displayText() = DB::Exception: Type mismatch").failure(), Failure::Refused);
        assert_eq!(bad("Code: 117. DB::Exception: Incorrect data").failure(), Failure::Refused);
        assert_eq!(
            bad("Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100).").failure(),
            Failure::Refused
        );
        assert_eq!(
            bad("Code: 252. DB::Exception: Too many parts (300). Merges are slower").failure(),
            Failure::Transient
        );
        assert_eq!(bad("Code: 60. DB::Exception: Table x doesn't exist.").failure(), Failure::Fatal);
        // Server-wide conditions: no row is at fault, so none may be dead-lettered.
        for text in [
            "Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space. (NOT_ENOUGH_SPACE)",
            "Code: 201, e.displayText() = DB::Exception: Quota for user default for 3600s has been exceeded",
            "Code: 286. DB::Exception: Number of alive replicas (1) is less than requested quorum (2)",
            "Code: 160. DB::Exception: Estimated query execution time is too long. (TOO_SLOW)",
            "Code: 1001. DB::Exception: std::exception. Code: 1001, type: std::bad_alloc",
        ] {
            assert_eq!(bad(text).failure(), Failure::Transient, "{text}");
        }
        // An answer without a code (a proxy's): split to find out, never retried whole
        // for ever.
        assert_eq!(bad("<html><title>413 Request Entity Too Large</title></html>").failure(), Failure::Refused);
        assert!(!ClickHouseError::Unexpected { url: "u".into(), what: "w".into() }.is_transient());
    }

    #[test]
    fn partitions_are_the_utc_month_of_the_event_time() {
        let at = |text: &str| crate::event::EventTime::parse(text).unwrap().micros();
        assert_eq!(partition_of(Layout::Current, at("2026-11-26T23:59:59.999999Z")), 202611);
        assert_eq!(partition_of(Layout::Current, at("2024-02-29T00:00:00Z")), 202402);
        assert_eq!(partition_of(Layout::Current, at("0001-01-01T00:00:00Z")), 101);
        assert_eq!(partition_of(Layout::Current, at("9999-12-31T23:59:59Z")), 999912);
        assert_eq!(partition_of(Layout::Legacy, at("0001-01-01T00:00:00Z")), 197001, "clamped to DateTime's range");
        assert_eq!(partition_of(Layout::Legacy, at("1969-12-31T23:59:59Z")), 197001);
    }

    #[test]
    fn dates_and_seconds_round_down_and_clamp() {
        assert_eq!(date(0), 0);
        assert_eq!(date(86_400_000_000 - 1), 0);
        assert_eq!(date(1_767_323_045_123_456), 20_455);
        assert_eq!(date(-1), 0);
        assert_eq!(seconds(1_767_323_045_999_999), 1_767_323_045);
        assert_eq!(seconds(-5), 0);
    }

    #[test]
    fn rows_are_encoded_in_the_column_order_of_each_layout() {
        let row = StoredRow {
            dedup_key: "k".into(),
            parts: vec!["u".repeat(200), "e".into()],
            values: Vec::new(),
            event_time_us: 86_400_000_001,
            payload: "{}".into(),
            source_partition: 3,
            source_offset: 9,
            batch_id: 5,
            ingested_at_us: 2_000_000,
            unknown: Vec::new(),
        };
        let mut out = Vec::new();
        let schema = crate::event::EventSchema::default();
        encode_row(&mut out, Layout::Current, &schema, &row);
        let mut want = vec![1, b'k', 0xC8, 0x01];
        want.extend("u".repeat(200).bytes());
        want.extend([1, b'e']);
        want.extend(86_400_000_001_i64.to_le_bytes());
        want.extend(1_u16.to_le_bytes());
        want.extend([2, b'{', b'}']);
        want.extend(3_i32.to_le_bytes());
        want.extend(9_i64.to_le_bytes());
        want.extend(5_i64.to_le_bytes());
        want.extend(2_000_000_i64.to_le_bytes());
        want.extend(2_000_000_u64.to_le_bytes());
        assert_eq!(out, want);
        let mut legacy = Vec::new();
        encode_row(&mut legacy, Layout::Legacy, &schema, &row);
        // Whole seconds plus the exact microseconds; the ingest time in seconds.
        // 4 + 8 bytes of event time for 8, 4 of ingest time for 8.
        assert_eq!(legacy.len(), out.len());
        let at = 4 + 200 + 2;
        assert_eq!(legacy[at..at + 4], 86_400_u32.to_le_bytes());
        assert_eq!(schema::columns(Layout::Legacy, &schema).len(), 12);
    }
}
