//! Kafka, for every part of idempipe: client settings and contexts (here), the
//! process-wide error state ([`errors`]), topic administration ([`admin`]), the
//! positioned consumer that the processor and the ClickHouse sink read through
//! ([`positioned`]: positions, the collect loop; [`ranges`]: what the broker holds, resets
//! and repositioning) and reading a topic back ([`read_back`]).
//!
//! Invariant: every client is built by [`client_config`], so brokers and the user's
//! librdkafka pass-through settings reach all of them the same way.

pub mod admin;
pub mod errors;
pub mod positioned;
pub mod ranges;
pub mod read_back;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::Settings;
pub(crate) use crate::kafka::admin::committed_offsets;
pub use crate::kafka::admin::{
    KAFKA_DEFAULT_MAX_MESSAGE_BYTES, PartitionOffsets, TopicReport, TopicSpec, check_output_topics, check_reachable,
    check_record_limit, ensure_topics, partition_count, partition_offsets,
};
pub use crate::kafka::errors::{fatal_client_error, is_fatal, note_consumer_error};
pub(crate) use crate::kafka::errors::{log_client_error, log_client_line};
pub use crate::kafka::read_back::read_topic;

/// Kafka failures, with the broker and topic they concern.
#[derive(Debug, thiserror::Error)]
pub enum KafkaFailure {
    #[error("Kafka client for {brokers}: {source}")]
    Client { brokers: String, source: KafkaError },
    #[error("topic {topic} does not exist on {brokers}: run `idempipe setup`")]
    NoTopic { topic: String, brokers: String },
    #[error("topic {topic} on {brokers} is not available: the broker reports {code}")]
    TopicUnavailable { topic: String, brokers: String, code: RDKafkaErrorCode },
    #[error("cannot create topic {topic} on {brokers}: {code}")]
    CreateTopic { topic: String, brokers: String, code: RDKafkaErrorCode },
    #[error(
        "topic {topic} accepts records up to {accepts} bytes (its `max.message.bytes`), but idempipe may send \
         {sends} (librdkafka's `message.max.bytes`): raise the topic's `max.message.bytes`, or lower \
         `--kafka message.max.bytes`"
    )]
    RecordsTooLarge { topic: String, accepts: u64, sends: u64 },
    #[error(
        "Kafka broker {brokers} refused the connection's TLS or SASL handshake: {reason} (check \
         `security.protocol`, `ssl.ca.location` and the `sasl.*` settings in `[kafka]` or `--kafka`)"
    )]
    Handshake { brokers: String, reason: String },
    #[error(
        "Kafka broker {brokers} did not answer within {timeout:?} ({what}): is it running? (`scripts/services.sh up`)"
    )]
    Unreachable { brokers: String, timeout: Duration, what: String },
}

pub type Result<T, E = KafkaFailure> = std::result::Result<T, E>;

/// How long a metadata or watermark request may take before the broker counts as down.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The client context of admin clients and plain consumers: librdkafka's errors and log
/// lines go to `tracing` ([`log_client_error`], [`log_client_line`]); partition EOF,
/// which is how idempipe learns that a partition is caught up, is no error.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoggingContext;

impl rdkafka::ClientContext for LoggingContext {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        log_client_line(level, fac, message);
    }
}

impl rdkafka::consumer::ConsumerContext for LoggingContext {}

/// How often consumers report statistics: the lag gauges come from them, computed by
/// librdkafka from the high watermarks of its fetch responses (no extra requests).
pub const STATS_INTERVAL_MS: &str = "5000";

/// Per partition of `topic`, the lag librdkafka computed: high watermark minus the
/// group's committed offset; partitions it does not know yet are left out.
pub(crate) fn lag_from_stats(stats: &rdkafka::Statistics, topic: &str) -> std::collections::BTreeMap<i32, i64> {
    stats
        .topics
        .get(topic)
        .map(|t| {
            t.partitions
                .values()
                .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                .map(|p| (p.partition, p.consumer_lag))
                .collect()
        })
        .unwrap_or_default()
}

/// The context of a consumer whose lag is a metric: it logs errors as [`LoggingContext`] does
/// and hands each statistics report's lag on `topic` to `report`.
pub struct LagReporting {
    pub topic: String,
    pub report: fn(&std::collections::BTreeMap<i32, i64>),
}

impl rdkafka::ClientContext for LagReporting {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        log_client_line(level, fac, message);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        (self.report)(&lag_from_stats(&statistics, &self.topic));
    }
}

impl rdkafka::consumer::ConsumerContext for LagReporting {}

/// Which kind of client a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Producer,
    Admin,
}

/// Pass-through settings that only consumers understand; librdkafka warns when a
/// producer or admin client is given one, so they reach consumers only.
const CONSUMER_ONLY: [&str; 12] = [
    "group.",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "auto.offset.reset",
    "enable.auto.",
    "auto.commit.",
    "fetch.",
    "isolation.level",
    "queued.",
    "max.partition.fetch.bytes",
];

/// The base settings of every client: the brokers, ours, then the pass-through
/// settings (which win, so an operator can override any of ours).
pub fn client_config(settings: &Settings, role: Role, ours: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    for (k, v) in ours {
        config.set(*k, *v);
    }
    apply_passthrough(&mut config, role, &settings.kafka.values);
    config
}

fn apply_passthrough(config: &mut ClientConfig, role: Role, kafka: &BTreeMap<String, String>) {
    for (k, v) in kafka {
        let consumer_only = CONSUMER_ONLY.iter().any(|c| if c.ends_with('.') { k.starts_with(c) } else { k == c });
        if role == Role::Consumer || !consumer_only {
            config.set(k, v);
        }
    }
}

pub(crate) fn client_error(settings: &Settings) -> impl Fn(KafkaError) -> KafkaFailure + '_ {
    move |source| KafkaFailure::Client { brokers: settings.brokers.clone(), source }
}
