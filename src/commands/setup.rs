//! `setup`: creates the topics, the Delta table and the ClickHouse schema. Running it
//! again changes nothing.

use crate::clickhouse::{ClickHouse, ClickHouseError, SchemaReport};
use crate::config::Settings;
use crate::kafka::{self, KafkaFailure};
use crate::table::{DeltaError, EventTable};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error("{0} (use `setup --skip-clickhouse` to set up without the speed layer)")]
    ClickHouse(#[from] ClickHouseError),
}

/// What setup found and did.
#[derive(Debug, serde::Serialize)]
pub struct SetupReport {
    pub topics: Vec<kafka::TopicReport>,
    pub delta_path: String,
    pub delta_version: u64,
    /// `None` with `--skip-clickhouse`.
    pub clickhouse: Option<SchemaReport>,
}

pub async fn setup(settings: &Settings, with_clickhouse: bool) -> Result<SetupReport, SetupError> {
    // Every store is checked before anything is written, so a bad path, a broker that
    // does not answer or a failing ClickHouse leaves no partial setup behind.
    if let Some(path) = settings.delta_path.local_path()
        && path.exists()
        && !path.is_dir()
    {
        return Err(DeltaError::NotADirectory { location: settings.delta_path.to_string() }.into());
    }
    kafka::check_reachable(settings)?;
    let clickhouse = match with_clickhouse {
        true => Some(ClickHouse::connect(&settings.clickhouse).await?),
        false => None,
    };
    // Before anything is written to it: a store without put-if-absent loses commits.
    settings.delta_path.check_put_if_absent().await.map_err(DeltaError::from)?;
    let table = EventTable::create_if_missing(&settings.delta_path, &settings.schema).await?;
    // ClickHouse takes the table's columns: the declared ones and those it has beside.
    let schema = table.effective_schema(&settings.schema)?;
    let topic = |name, partitions, written| kafka::TopicSpec { name, partitions, written };
    let topics = kafka::ensure_topics(
        settings,
        &[
            topic(&settings.topics.raw, settings.partitions, false),
            topic(&settings.topics.processed, settings.partitions, true),
            topic(&settings.topics.dlq, 1, true),
        ],
    )
    .await?;
    let clickhouse = match clickhouse {
        Some(c) => Some(
            c.with_schema(schema).ensure_schema(&settings.clickhouse.kafka_brokers, &settings.topics.processed).await?,
        ),
        None => None,
    };
    Ok(SetupReport { topics, delta_path: table.location().to_string(), delta_version: table.version(), clickhouse })
}

impl std::fmt::Display for SetupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for t in &self.topics {
            let limit = t
                .max_message_bytes
                .map_or_else(|| "record limit unknown".to_owned(), |n| format!("records up to {n} bytes"));
            writeln!(
                f,
                "topic {}: {}, {} partitions, {} replicas, {limit}",
                t.name,
                if t.created { "created" } else { "exists" },
                t.partitions,
                t.replicas
            )?;
        }
        writeln!(f, "delta table {}: version {}", self.delta_path, self.delta_version)?;
        if let Some(ch) = &self.clickhouse {
            writeln!(
                f,
                "clickhouse table {}: {} ({:?} layout, server {})",
                ch.table,
                if ch.created { "created" } else { "exists" },
                ch.layout,
                ch.server_version
            )?;
            if let Some([queue, view]) = &ch.kafka_engine {
                writeln!(f, "clickhouse kafka engine: {queue} -> {view} -> {}", ch.table)?;
            }
        }
        Ok(())
    }
}
