//! `setup`: creates the topics, the Delta table and the ClickHouse schema. Running it
//! again changes nothing.

use crate::config::Settings;
use crate::kafka::{self, KafkaFailure};
use crate::sink::clickhouse::{ClickHouse, ClickHouseError, SchemaReport};
use crate::sink::delta::{DeltaError, EventTable};

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
    /// `(topic, created now)`.
    pub topics: Vec<(String, bool)>,
    pub delta_path: String,
    pub delta_version: u64,
    /// `None` with `--skip-clickhouse`.
    pub clickhouse: Option<SchemaReport>,
}

pub async fn setup(settings: &Settings, with_clickhouse: bool) -> Result<SetupReport, SetupError> {
    // The table first: a bad path fails before anything is created on the broker.
    let table = EventTable::create_if_missing(&settings.delta_path).await?;
    let topics = kafka::create_topics(
        settings,
        &[
            (&settings.topics.raw, settings.partitions),
            (&settings.topics.processed, settings.partitions),
            (&settings.topics.dlq, 1),
        ],
    )
    .await?;
    let clickhouse = if with_clickhouse {
        let clickhouse = ClickHouse::connect(&settings.clickhouse).await?;
        Some(clickhouse.ensure_schema(&settings.clickhouse.kafka_brokers, &settings.topics.processed).await?)
    } else {
        None
    };
    Ok(SetupReport {
        topics,
        delta_path: table.path().display().to_string(),
        delta_version: table.version(),
        clickhouse,
    })
}
