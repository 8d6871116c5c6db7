//! `setup`: creates the topics and the Delta table. Running it again changes nothing.

use crate::config::Settings;
use crate::kafka::{self, KafkaFailure};
use crate::sink::delta::{DeltaError, EventTable};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(transparent)]
    Delta(#[from] DeltaError),
}

/// What setup found and did.
#[derive(Debug, serde::Serialize)]
pub struct SetupReport {
    /// `(topic, created now)`.
    pub topics: Vec<(String, bool)>,
    pub delta_path: String,
    pub delta_version: u64,
}

pub async fn setup(settings: &Settings) -> Result<SetupReport, SetupError> {
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
    Ok(SetupReport { topics, delta_path: table.path().display().to_string(), delta_version: table.version() })
}
