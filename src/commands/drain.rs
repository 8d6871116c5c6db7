//! `drain` (hidden, for benchmarks): reads a topic end to end with a bare consumer and
//! reports the rate, the ceiling the processor is compared with.

use std::time::Instant;

use crate::config::Settings;
use crate::kafka::{self, KafkaFailure};

/// What a drain read.
#[derive(Debug, serde::Serialize)]
pub struct DrainReport {
    pub topic: String,
    pub messages: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub messages_per_sec: f64,
}

/// Reads `topic` (the raw topic when `None`) from the beginning to its end.
pub fn drain(settings: &Settings, topic: Option<String>) -> Result<DrainReport, KafkaFailure> {
    let topic = topic.unwrap_or_else(|| settings.topics.raw.clone());
    let started = Instant::now();
    let mut bytes = 0_u64;
    let messages = kafka::read_topic(settings, &topic, |m| {
        bytes += rdkafka::Message::payload(m).map_or(0, <[u8]>::len) as u64;
    })?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(DrainReport { topic, messages, bytes, seconds, messages_per_sec: messages as f64 / seconds.max(1e-9) })
}

/// One JSON line either way: `scripts/bench.sh` reads it.
impl std::fmt::Display for DrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", serde_json::to_string(self).map_err(|_| std::fmt::Error)?)
    }
}
