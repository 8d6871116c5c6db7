//! The Delta Lake table of events: the source of truth.
//!
//! Invariants kept by this module and its parts:
//! - a row is inserted only after the already-stored check ([`write`]): a lookup in the
//!   stored keys (cache or index) with a commit that declares the batch's `event_date`
//!   partitions as read, or an insert-only MERGE on `dedup_key` reading those
//!   partitions; either way a concurrent writer inserting into the same dates makes a
//!   commit conflict, never a duplicate;
//! - the commit that inserts a batch also records, per Kafka partition, the last offset
//!   the batch covered ([`offsets`]); when nothing is new, a commit with only those
//!   records the progress;
//! - the outcome of a failed commit is never assumed: callers reload and read the stored
//!   offsets back ([`EventTable::stored_offsets`]);
//! - maintenance ([`maintenance`]) never changes rows: compaction rewrites them with
//!   `dataChange = false`, vacuum deletes only files no recent snapshot uses.
//!
//! Parts: [`schema`] (columns, rows, Arrow encoding), [`write`] (check, stage, commit,
//! MERGE), [`offsets`] (Kafka offsets as txn actions), [`read`] (reading back for
//! `verify` and `reconcile`), [`maintenance`] (compaction, vacuum, checkpoints, log
//! cleanup, and their schedule), [`key_cache`] (the keys of the files a batch could
//! touch, read on demand within a byte budget), [`key_index`] (every stored key in memory).

pub mod key_cache;
pub mod key_index;
pub mod location;
pub mod maintenance;
pub mod offsets;
pub mod read;
pub mod schema;
#[cfg(test)]
mod testing;
pub mod write;

use std::sync::Arc;

use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};

use crate::event::{EventSchema, Identity};

pub use crate::table::key_cache::{CheckStats, KeyCache};
pub use crate::table::key_index::{KeyIndex, SyncStats};
pub use crate::table::location::{Location, ProbeError};
pub use crate::table::maintenance::{CompactOutcome, VacuumOutcome};
pub use crate::table::offsets::AppIds;
pub use crate::table::read::TableCounts;
pub use crate::table::schema::{Columns, PARTITION_COLUMN, Row, StoredRow, Unplaced};
pub use crate::table::write::{InsertOutcome, PendingWrite};

/// Errors of the Delta table, with the path they concern.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("Delta table at {location}: {source}")]
    Table { location: String, source: Box<DeltaTableError> },
    #[error("no Delta table at {location}: run `idempipe setup` first")]
    Missing { location: String },
    #[error("Delta path {location} is not a directory")]
    NotADirectory { location: String },
    #[error("Delta table at {location}: {what}")]
    Unexpected { location: String, what: String },
    #[error("Delta table at {location} cannot take idempipe's events: {problems}")]
    Unsuitable { location: String, problems: String },
    #[error(
        "Delta table at {location} keys its events by {table}, this configuration by {configured}: a table keeps \
         the identity it was created with (set `event_key`, `event_time` and `event_time_format` as the table's, \
         or use another table)"
    )]
    OtherIdentity { location: String, table: String, configured: String },
    #[error(
        "Delta table at {location}: {files} of the files a compaction rewrote were removed or had rows deleted by \
         another writer since it read them (table version {version}); it committed nothing"
    )]
    CompactionOvertaken { location: String, files: usize, version: u64 },
    #[error(transparent)]
    Store(#[from] ProbeError),
}

impl DeltaError {
    /// Whether a compaction lost to another writer that removed or changed a file it
    /// rewrote first (the guard of [`EventTable::compact`]): nothing changed, nothing to
    /// repair.
    pub(crate) fn is_lost_compaction_race(&self) -> bool {
        matches!(self, DeltaError::CompactionOvertaken { .. })
    }

    /// Whether a commit lost a race: another writer committed first something this one
    /// read (new files in its partitions, files it read removed, new columns, or a txn of
    /// the same id), or others took every version delta-rs tried (`MaxCommitAttempts`:
    /// each of its puts-if-absent was refused, so none landed). The attempt must be redone
    /// on the new version. Other conflicts (a protocol change, a corrupt state) are plain
    /// failures.
    pub fn is_write_conflict(&self) -> bool {
        use deltalake::kernel::transaction::{CommitConflictError as C, TransactionError};
        matches!(
            self,
            DeltaError::Table { source, .. }
                if matches!(
                    **source,
                    DeltaTableError::Transaction {
                        source: TransactionError::CommitConflict(
                            C::ConcurrentAppend
                                | C::MetadataChanged
                                | C::ConcurrentDeleteRead
                                | C::ConcurrentDeleteDelete
                                | C::ConcurrentTransaction
                        ) | TransactionError::MaxCommitAttempts(_)
                    }
                )
        )
    }
}

pub type Result<T, E = DeltaError> = std::result::Result<T, E>;

/// The events table at one location.
pub struct EventTable {
    location: Location,
    table: DeltaTable,
    /// The table's event schema: the identity it was created with (the table property
    /// [`crate::event::TABLE_PROPERTY`]; the default one without it) and its other
    /// columns; and its columns.
    schema: EventSchema,
    columns: Columns,
    /// With a key index or a key cache, the already-stored check is a lookup and new
    /// rows are appended by a commit that declares the partitions it checked; with
    /// neither, the check is a semi-join and new rows go in by an insert-only MERGE.
    keys: Option<StoredKeys>,
}

/// What the already-stored check knows of the table's keys.
pub enum StoredKeys {
    /// Every key, in memory ([`KeyIndex`]).
    Index(KeyIndex),
    /// The keys of the files a batch's events could be in, read on demand into a cache
    /// with a byte budget ([`KeyCache`]).
    Cache(KeyCache),
}

impl StoredKeys {
    /// The table version the check reflects, once synced.
    pub fn version(&self) -> Option<u64> {
        match self {
            StoredKeys::Index(index) => index.version(),
            StoredKeys::Cache(cache) => cache.version(),
        }
    }
}

impl EventTable {
    /// The same table at the same version, without its stored keys (key index or key
    /// cache), so its already-stored check is the scan: for a reader or a maintenance task
    /// that follows the table by [`EventTable::reload`] (incremental) instead of opening it
    /// again, and checks no keys.
    pub(crate) fn without_stored_keys(&self) -> Self {
        Self {
            location: self.location.clone(),
            table: self.table.clone(),
            schema: self.schema.clone(),
            columns: self.columns.clone(),
            keys: None,
        }
    }

    /// Creates the table if there is none, with the columns of `schema` partitioned by
    /// `event_date`, recording its identity; opens it otherwise (and checks that its
    /// identity and declared columns agree: [`EventTable::effective_schema`]). Running it
    /// again changes nothing.
    pub async fn create_if_missing(location: impl Into<Location>, schema: &EventSchema) -> Result<Self> {
        let identity = schema.identity();
        let location = location.into();
        if let Some(path) = location.local_path()
            && path.exists()
            && !path.is_dir()
        {
            return Err(DeltaError::NotADirectory { location: location.to_string() });
        }
        let err = |source| DeltaError::Table { location: location.to_string(), source: Box::new(source) };
        let columns =
            Columns::of(schema).map_err(|what| DeltaError::Unexpected { location: location.to_string(), what })?;
        let url = location.url().map_err(err)?;
        let created = DeltaTable::try_from_url_with_storage_options(url.clone(), location.option_map())
            .await
            .map_err(err)?
            .create()
            .with_table_name("events")
            .with_comment("idempipe events: one row per distinct dedup_key")
            .with_columns(columns.delta())
            .with_partition_columns([PARTITION_COLUMN])
            .with_configuration([(crate::event::TABLE_PROPERTY, Some(identity.definition()))])
            // The identity's property is idempipe's, not one delta-rs knows.
            .with_raise_if_key_not_exists(false)
            .with_save_mode(SaveMode::Ignore)
            .await;
        let table = match created {
            Ok(table) => table,
            // Two `setup`s racing: the loser's version 0 conflicts; the winner's table is fine.
            Err(_) => deltalake::open_table_with_storage_options(url, location.option_map()).await.map_err(err)?,
        };
        let this = Self::loaded(location, table)?;
        this.effective_schema(schema)?;
        Ok(this)
    }

    /// Opens an existing table; an absent one is [`DeltaError::Missing`].
    pub async fn open(location: impl Into<Location>) -> Result<Self> {
        let location = location.into();
        if let Some(path) = location.local_path() {
            if path.exists() && !path.is_dir() {
                return Err(DeltaError::NotADirectory { location: location.to_string() });
            }
            // Checked before delta-rs, which would make the directory.
            if !path.join("_delta_log").is_dir() {
                return Err(DeltaError::Missing { location: location.to_string() });
            }
        }
        let err = |source| DeltaError::Table { location: location.to_string(), source: Box::new(source) };
        let url = location.url().map_err(err)?;
        let table =
            deltalake::open_table_with_storage_options(url, location.option_map()).await.map_err(|e| match e {
                DeltaTableError::NotATable(_) => DeltaError::Missing { location: location.to_string() },
                e => err(e),
            })?;
        Self::loaded(location, table)
    }

    /// Opens an existing table through `store`, the object store of the filesystem (or
    /// bucket) root, instead of the one delta-rs would pick for the location: for stores
    /// with custom wiring, instrumentation, or fault injection in tests.
    pub async fn open_with_store(
        location: impl Into<Location>,
        store: Arc<dyn deltalake::ObjectStore>,
    ) -> Result<Self> {
        let location = location.into();
        if location.local_path().is_some_and(|path| !path.join("_delta_log").is_dir()) {
            return Err(DeltaError::Missing { location: location.to_string() });
        }
        let err = |source| DeltaError::Table { location: location.to_string(), source: Box::new(source) };
        let url = location.url().map_err(err)?;
        let table = deltalake::DeltaTableBuilder::from_url(url.clone())
            .map_err(err)?
            .with_storage_options(location.option_map())
            .with_storage_backend(store, url)
            .load()
            .await
            .map_err(err)?;
        Self::loaded(location, table)
    }

    /// The table loaded from `location`, with the identity it records, once its layout is
    /// checked ([`EventTable::check_schema`]).
    fn loaded(location: Location, table: DeltaTable) -> Result<Self> {
        let snapshot =
            table.snapshot().map_err(|e| DeltaError::Table { location: location.to_string(), source: Box::new(e) })?;
        let identity = match snapshot.metadata().configuration().get(crate::event::TABLE_PROPERTY) {
            None => Identity::default(),
            Some(definition) => Identity::from_definition(definition).map_err(|what| DeltaError::Unexpected {
                location: location.to_string(),
                what: format!("its property {}: {what}", crate::event::TABLE_PROPERTY),
            })?,
        };
        let schema = table_schema(identity, snapshot.schema().as_ref());
        let columns =
            Columns::of(&schema).map_err(|what| DeltaError::Unexpected { location: location.to_string(), what })?;
        let this = Self { location, table, schema, columns, keys: None };
        this.check_schema()?;
        Ok(this)
    }

    /// The identity the table's events are keyed by.
    pub fn identity(&self) -> &Identity {
        self.schema.identity()
    }

    /// The table's event schema: its identity, its key columns' types, and its columns
    /// beside idempipe's own as declared columns (each holding the field of its name).
    pub fn schema(&self) -> &EventSchema {
        &self.schema
    }

    /// The schema events are read by for this table, given the configuration's: the
    /// configuration's declared columns (their fields, types and whether required) and
    /// the table's other columns as it has them, in the table's order; after
    /// [`EventTable::check_identity`]. Refused, naming the column: a declared column the
    /// table lacks or has with another type, a key column of another type.
    pub fn effective_schema(&self, configured: &EventSchema) -> Result<EventSchema> {
        self.check_identity(configured.identity())?;
        let refused = |what: String| DeltaError::Unexpected { location: self.location.to_string(), what };
        for ((column, theirs), ours) in
            self.identity().key_columns().iter().zip(self.schema.key_kinds()).zip(configured.key_kinds())
        {
            if theirs.column_type() != ours.column_type() {
                return Err(refused(format!(
                    "key column `{column}` is {} in the table; the configuration declares {}",
                    theirs.column_type(),
                    ours.column_type()
                )));
            }
        }
        for ours in configured.columns() {
            match self.schema.columns().iter().find(|c| c.name == ours.name) {
                None => {
                    return Err(refused(format!(
                        "the configuration declares column `{}` ({}), which the table does not have",
                        ours.name, ours.kind
                    )));
                }
                Some(theirs) if theirs.kind != ours.kind => {
                    return Err(refused(format!(
                        "column `{}` is {} in the table; the configuration declares {}",
                        ours.name, theirs.kind, ours.kind
                    )));
                }
                Some(_) => {}
            }
        }
        // The key fields' kinds as configured (of the same column types, checked above),
        // then the declared columns in the table's order.
        let identity = configured.identity();
        let mut specs: Vec<crate::event::ColumnSpec> = identity
            .fields()
            .iter()
            .zip(identity.key_columns())
            .zip(configured.key_kinds())
            .filter_map(|((field, name), kind)| {
                let kind = match kind {
                    crate::event::KeyKind::TextOrInteger => return None,
                    other => other.column_type(),
                };
                Some(crate::event::ColumnSpec { name, field: field.path.clone(), kind, required: true })
            })
            .collect();
        specs.extend(
            self.schema
                .columns()
                .iter()
                .map(|theirs| configured.columns().iter().find(|c| c.name == theirs.name).unwrap_or(theirs).clone()),
        );
        EventSchema::new(identity.clone(), specs, configured.payload())
            .map(|schema| schema.with_evolution(configured.evolution()))
            .map_err(refused)
    }

    /// The table's columns.
    pub fn columns(&self) -> &Columns {
        &self.columns
    }

    /// Refuses a processor whose identity is not the table's: its keys would not be the
    /// stored ones, so every replay would be stored again.
    pub fn check_identity(&self, configured: &Identity) -> Result<()> {
        if self.identity().same_definition(configured) {
            return Ok(());
        }
        Err(DeltaError::OtherIdentity {
            location: self.location.to_string(),
            table: self.identity().to_string(),
            configured: configured.to_string(),
        })
    }

    /// Refuses, before anything is written, a table idempipe would write to wrongly or not
    /// at all: one it did not create whose layout is not its own (see [`layout_problems`]).
    fn check_schema(&self) -> Result<()> {
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        let schema = snapshot.snapshot().arrow_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let missing: Vec<&str> = self.columns.names().into_iter().filter(|c| !names.contains(c)).collect();
        if !missing.is_empty() {
            return Err(DeltaError::Unexpected {
                location: self.location.to_string(),
                what: format!("is not an idempipe events table: columns {missing:?} are missing"),
            });
        }
        let problems = layout_problems(snapshot, &self.columns);
        if !problems.is_empty() {
            return Err(DeltaError::Unsuitable { location: self.location.to_string(), problems: problems.join("; ") });
        }
        Ok(())
    }

    fn error(&self, source: DeltaTableError) -> DeltaError {
        DeltaError::Table { location: self.location.to_string(), source: Box::new(source) }
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The loaded table version.
    pub fn version(&self) -> u64 {
        self.table.version().unwrap_or(0)
    }

    /// Brings the table to the latest committed version, and its schema with it (columns
    /// another writer added: [`EventTable::add_columns`]).
    pub async fn reload(&mut self) -> Result<()> {
        self.table.update_state().await.map_err(|e| self.error(e))?;
        self.follow_schema()
    }

    /// Takes the loaded version's columns, when they changed; refuses, as at load, a
    /// column of a type idempipe does not write.
    fn follow_schema(&mut self) -> Result<()> {
        let snapshot = self.table.snapshot().map_err(|e| self.error(e))?;
        let schema = table_schema(self.identity().clone(), snapshot.schema().as_ref());
        if schema == self.schema {
            return Ok(());
        }
        let columns = Columns::of(&schema)
            .map_err(|what| DeltaError::Unexpected { location: self.location.to_string(), what })?;
        tracing::info!(
            version = self.version(),
            columns = ?columns.declared().iter().map(|(name, kind)| format!("{name} {kind}")).collect::<Vec<_>>(),
            "the table's columns changed"
        );
        self.schema = schema;
        self.columns = columns;
        self.check_schema()
    }

    /// Adds nullable `columns` to the table in one metadata commit (schema evolution),
    /// and returns the new version. A column the table gained meanwhile makes it a write
    /// conflict ([`DeltaError::is_write_conflict`]): reload and look again.
    pub async fn add_columns(&mut self, columns: &[(String, crate::event::ColumnType)]) -> Result<u64> {
        let unexpected = |what: String| DeltaError::Unexpected { location: self.location.to_string(), what };
        let fields = columns
            .iter()
            .map(|(name, kind)| Ok(deltalake::kernel::StructField::new(name, schema::delta_type(kind)?, true)))
            .collect::<std::result::Result<Vec<_>, String>>()
            .map_err(unexpected)?;
        let added: Vec<String> = columns.iter().map(|(name, kind)| format!("{name} {kind}")).collect();
        let properties = CommitProperties::default()
            .with_metadata([("idempipe.added_columns".to_owned(), serde_json::json!(added))]);
        let table = self
            .table
            .clone()
            .add_columns()
            .with_fields(fields)
            .with_commit_properties(properties)
            .await
            .map_err(|e| self.error(e))?;
        self.table = table;
        self.follow_schema()?;
        Ok(self.version())
    }

    /// Switches the already-stored check to an in-memory index of every key in the table
    /// (see [`KeyIndex`]) and builds it from the loaded version.
    pub async fn enable_key_index(&mut self) -> Result<SyncStats> {
        let mut index = KeyIndex::new();
        let stats = index.sync(&self.table).await.map_err(|e| self.error(e))?;
        self.keys = Some(StoredKeys::Index(index));
        Ok(stats)
    }

    /// Switches the already-stored check to a cache of the keys of the files a batch's
    /// events could be in (see [`KeyCache`]), keeping at most `budget` bytes of keys
    /// between batches, and lists the loaded version's files (no key is read yet).
    pub fn enable_key_cache(&mut self, budget: usize) -> Result<()> {
        let mut cache = KeyCache::new(budget);
        cache.sync(&self.table).map_err(|e| self.error(e))?;
        self.keys = Some(StoredKeys::Cache(cache));
        Ok(())
    }

    /// The key index, when enabled.
    pub fn key_index(&self) -> Option<&KeyIndex> {
        match &self.keys {
            Some(StoredKeys::Index(index)) => Some(index),
            _ => None,
        }
    }

    /// The key cache, when enabled.
    pub fn key_cache(&self) -> Option<&KeyCache> {
        match &self.keys {
            Some(StoredKeys::Cache(cache)) => Some(cache),
            _ => None,
        }
    }

    /// What the already-stored check holds, unless it is the scan.
    pub(crate) fn stored_keys(&self) -> Option<&StoredKeys> {
        self.keys.as_ref()
    }

    fn unexpected(&self, what: &str) -> DeltaError {
        DeltaError::Unexpected { location: self.location.to_string(), what: what.into() }
    }

    /// Data files in the loaded snapshot.
    pub fn live_files(&self) -> usize {
        self.table.snapshot().map_or(0, |s| s.log_data().num_files())
    }
}

/// Commit properties without delta-rs's post-commit maintenance: checkpoints and log
/// cleanup are [`maintenance`]'s, on its own schedule (`checkpoint_every`,
/// `log_retention`); left on, delta-rs would also list the whole log after every commit.
/// What makes a table unfit for idempipe's writes, each said in a phrase (none: fit).
///
/// A table idempipe did not create is adopted only if it is laid out as `setup` would
/// have made it, because the already-stored check relies on that layout: the key check
/// finds a stored key through the `event_date` partition of its event time, and the key
/// cache, the key index and compaction read data files by column name. So the table
/// must: be one delta-rs can write (every table feature it needs is one this build
/// writes: not liquid clustering, identity columns, row tracking, ...); have idempipe's
/// columns with their types and no others (a `timestamp_ntz` event time is not UTC);
/// be partitioned by `event_date` alone; use no column mapping (files would name columns
/// otherwise); carry no CHECK constraint or invariant (a row it refused would stop the
/// batch instead of going to the dead-letter topic); and generate no column but
/// `event_date` as the date of `event_time`.
pub(crate) fn layout_problems(state: &deltalake::table::state::DeltaTableState, columns: &Columns) -> Vec<String> {
    use deltalake::kernel::transaction::{PROTOCOL, TableReference};
    let mut problems = Vec::new();
    if let Err(e) = PROTOCOL.can_write_to(state as &dyn TableReference) {
        problems.push(format!("this build of delta-rs cannot write to it ({e})"));
    }
    let schema = state.schema();
    let ours = columns.delta();
    for column in &ours {
        if let Some(theirs) = schema.field(column.name())
            && theirs.data_type() != column.data_type()
        {
            problems.push(format!(
                "column {} is {} where idempipe writes {}",
                column.name(),
                theirs.data_type(),
                column.data_type()
            ));
        }
    }
    let extra: Vec<&str> =
        schema.fields().map(|f| f.name().as_str()).filter(|n| !ours.iter().any(|c| c.name() == *n)).collect();
    if !extra.is_empty() {
        problems.push(format!(
            "columns {extra:?} are not idempipe's and not of a type a declared column may have (string, boolean, \
             int, long, double, decimal, date, timestamp, and lists, maps and structs of them)"
        ));
    }
    let partitions = state.metadata().partition_columns();
    if partitions != [PARTITION_COLUMN] {
        problems.push(format!(
            "it is partitioned by {partitions:?}, not by [{PARTITION_COLUMN:?}] alone (the key check finds a stored \
             key by the date of its event time)"
        ));
    }
    let configuration = state.metadata().configuration();
    if let Some(mode) = configuration.get("delta.columnMapping.mode").filter(|m| !m.eq_ignore_ascii_case("none")) {
        problems.push(format!(
            "it uses column mapping (delta.columnMapping.mode = {mode}): idempipe reads data files by column name"
        ));
    }
    let mut constraints: Vec<String> = configuration
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("delta.constraints.").map(|name| format!("{name} ({v})")))
        .collect();
    constraints.sort();
    if !constraints.is_empty() {
        problems.push(format!(
            "it has CHECK constraints {}: an event one refuses would stop its batch instead of going to the \
             dead-letter topic",
            constraints.join(", ")
        ));
    }
    for field in schema.fields() {
        let metadata = field.metadata();
        if metadata.contains_key("delta.invariants") {
            problems.push(format!("column {} has an invariant (a CHECK constraint of old)", field.name()));
        }
        if let Some(expression) = metadata.get("delta.generationExpression") {
            let expression = expression.to_string();
            if !(field.name() == PARTITION_COLUMN && is_date_of_event_time(&expression)) {
                problems.push(format!(
                    "column {} is generated as {expression} (only {PARTITION_COLUMN} may be, as \
                     CAST(event_time AS DATE))",
                    field.name()
                ));
            }
        }
    }
    problems
}

/// Whether a generation expression is `event_date`'s own derivation: the (UTC) date of
/// `event_time`.
fn is_date_of_event_time(expression: &str) -> bool {
    let plain: String =
        expression.chars().filter(|c| !c.is_whitespace() && *c != '`').collect::<String>().to_lowercase();
    matches!(plain.as_str(), "cast(event_timeasdate)" | "to_date(event_time)")
}

/// A table's event schema: `identity`, the key columns' types as the table has them, and
/// every other column the table has beside idempipe's own whose type a declared column
/// may have, as a declared column holding the field of its name (required if the column
/// is not nullable). Columns it cannot take stay out, for the layout check to name.
fn table_schema(identity: Identity, delta_schema: &deltalake::kernel::StructType) -> EventSchema {
    use crate::event::{ColumnSpec, FieldPath, PayloadMode};
    let key_columns = identity.key_columns();
    let own = |name: &str| name == "dedup_key" || schema::OWN_COLUMNS.contains(&name);
    let mut specs = Vec::new();
    for field in delta_schema.fields() {
        let name = field.name().as_str();
        if own(name) {
            continue;
        }
        let Some(kind) = schema::column_type(field.data_type()) else { continue };
        if let Some(i) = key_columns.iter().position(|k| k == name) {
            // A string key column keeps the identity's own kind (the default's
            // `event_type` is a string only; other key fields take integers too).
            if kind.can_be_key() && kind != crate::event::ColumnType::String {
                let field_path = identity.fields()[i].path.clone();
                specs.push(ColumnSpec { name: name.to_owned(), field: field_path, kind, required: false });
            }
            continue;
        }
        let Ok(path) = FieldPath::parse(name) else { continue };
        specs.push(ColumnSpec { name: name.to_owned(), field: path, kind, required: !field.is_nullable() });
    }
    EventSchema::new(identity.clone(), specs, PayloadMode::Message).unwrap_or_else(|_| EventSchema::of(identity))
}

pub(crate) fn without_post_commit_maintenance() -> CommitProperties {
    CommitProperties::default().with_create_checkpoint(false).with_cleanup_expired_logs(Some(false))
}

#[cfg(test)]
mod tests {
    use deltalake::kernel::transaction::{CommitConflictError, TransactionError};

    use super::*;

    fn table_error(source: DeltaTableError) -> DeltaError {
        DeltaError::Table { location: "/t".into(), source: Box::new(source) }
    }

    #[test]
    fn only_a_lost_commit_race_is_a_write_conflict() {
        let lost = |c| table_error(DeltaTableError::Transaction { source: TransactionError::CommitConflict(c) });
        assert!(lost(CommitConflictError::ConcurrentAppend).is_write_conflict());
        assert!(lost(CommitConflictError::ConcurrentTransaction).is_write_conflict());
        let exhausted = table_error(DeltaTableError::Transaction { source: TransactionError::MaxCommitAttempts(16) });
        assert!(exhausted.is_write_conflict(), "every version tried was taken: a lost race");
        // Outcome unknown or plain failures: not conflicts (they must reload and check).
        let version = table_error(DeltaTableError::Transaction { source: TransactionError::VersionAlreadyExists(3) });
        assert!(!version.is_write_conflict());
        assert!(lost(CommitConflictError::MetadataChanged).is_write_conflict(), "a column added: redo on it");
        assert!(!table_error(DeltaTableError::Generic("io".into())).is_write_conflict());
        assert!(!DeltaError::Missing { location: "/t".into() }.is_write_conflict());
    }

    #[tokio::test]
    async fn a_column_added_by_one_writer_is_a_conflict_for_the_other_which_then_writes_it() {
        use crate::event::ColumnType;
        use crate::table::testing;
        use std::collections::HashSet;
        let (_dir, path) = testing::new_table().await;
        let (mut a, mut b) = (EventTable::open(&path).await.unwrap(), EventTable::open(&path).await.unwrap());
        let ingested = crate::event::EventTime::from_micros(0).unwrap();
        let txns = |n: i64| [deltalake::kernel::Transaction::new("g-raw-0", n)];
        // b checks its batch before a adds the column, and commits after.
        let rows = testing::rows(0..10, 20_000, 0);
        let new = b.new_rows(&rows).await.unwrap();
        let pending = b.prepare(b.columns().batch(&new, 1, ingested).unwrap()).await.unwrap();
        let version =
            a.add_columns(&[("coupon".into(), ColumnType::String), ("n".into(), ColumnType::Long)]).await.unwrap();
        assert_eq!(a.schema().columns().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["coupon", "n"]);
        let lost = b.commit(pending, &txns(9), serde_json::json!({})).await.unwrap_err();
        assert!(lost.is_write_conflict(), "{lost}");
        b.reload().await.unwrap();
        assert_eq!(b.version(), version);
        assert_eq!(b.schema(), a.schema(), "b follows the table's new columns");
        assert!(b.columns().names().contains(&"coupon"));
        // Redone on the new version, with the new columns' values.
        let mut rows = rows;
        for (i, row) in rows.iter_mut().enumerate() {
            row.values = vec![serde_json::json!(format!("c{i}")), serde_json::Value::Null];
        }
        let new = b.new_rows(&rows).await.unwrap();
        let outcome = b.insert(b.columns().batch(&new, 1, ingested).unwrap(), &txns(9), serde_json::json!({})).await;
        assert_eq!(outcome.unwrap().inserted, 10);
        let keys: HashSet<String> = rows.iter().map(|r| r.key.to_string()).collect();
        let mut stored = b.rows_with_keys(&keys).await.unwrap();
        stored.sort_by_key(|r| r.source_offset);
        assert_eq!(stored.len(), 10);
        assert_eq!(stored[3].values, [serde_json::json!("c3"), serde_json::Value::Null]);
        // Adding a column the table has, with another type, is refused.
        let refused = a.add_columns(&[("coupon".into(), ColumnType::Long)]).await.unwrap_err();
        assert!(!refused.is_write_conflict(), "{refused}");
    }
}
