//! Kafka client settings and the few admin and read-back helpers the commands share.
//!
//! Invariant: every client is built by [`client_config`], so brokers and the user's
//! librdkafka pass-through settings reach all of them the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::Settings;

/// Kafka failures, with the broker and topic they concern.
#[derive(Debug, thiserror::Error)]
pub enum KafkaFailure {
    #[error("Kafka client for {brokers}: {source}")]
    Client { brokers: String, source: KafkaError },
    #[error("topic {topic} does not exist on {brokers}: run `idempipe setup`")]
    NoTopic { topic: String, brokers: String },
    #[error("cannot create topic {topic} on {brokers}: {code}")]
    CreateTopic { topic: String, brokers: String, code: RDKafkaErrorCode },
    #[error(
        "Kafka broker {brokers} did not answer within {timeout:?} ({what}): is it running? (`scripts/services.sh up`)"
    )]
    Unreachable { brokers: String, timeout: Duration, what: String },
}

pub type Result<T, E = KafkaFailure> = std::result::Result<T, E>;

/// How long a metadata or watermark request may take before the broker counts as down.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A client context that logs librdkafka's errors, except partition EOF, which is
/// how idempipe learns that a partition is caught up, not a failure.
#[derive(Debug, Default, Clone, Copy)]
pub struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

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

/// The context of a consumer whose lag is a metric: it logs errors as [`QuietEof`] does
/// and hands each statistics report's lag on `topic` to `report`.
pub struct LagReporting {
    pub topic: String,
    pub report: fn(&std::collections::BTreeMap<i32, i64>),
}

impl rdkafka::ClientContext for LagReporting {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        (self.report)(&lag_from_stats(&statistics, &self.topic));
    }
}

impl rdkafka::consumer::ConsumerContext for LagReporting {}

/// The `error` callback shared by idempipe's client contexts.
pub(crate) fn log_client_error(error: KafkaError, reason: &str) {
    match error {
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
        e => tracing::error!(error = %e, reason, "librdkafka error"),
    }
}

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

/// Creates each topic with its partition count unless it exists. Returns, per topic,
/// whether it was created now.
pub async fn create_topics(settings: &Settings, topics: &[(&str, i32)]) -> Result<Vec<(String, bool)>> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(settings, Role::Admin, &[]).create().map_err(client_error(settings))?;
    // Fail fast and clearly when the broker is down, before the admin request's timeout.
    partition_count(settings, admin.inner(), None)?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|(name, n)| NewTopic::new(name, *n, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)).request_timeout(Some(METADATA_TIMEOUT));
    let results = admin.create_topics(&new, &options).await.map_err(client_error(settings))?;
    let mut out = Vec::new();
    for result in results {
        match result {
            Ok(name) => out.push((name, true)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => out.push((name, false)),
            Err((topic, code)) => {
                return Err(KafkaFailure::CreateTopic { topic, brokers: settings.brokers.clone(), code });
            }
        }
    }
    Ok(out)
}

/// Fails with [`KafkaFailure::Unreachable`] unless the broker answers a metadata request.
pub fn check_reachable(settings: &Settings) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(settings, Role::Admin, &[]).create().map_err(client_error(settings))?;
    partition_count(settings, admin.inner(), None).map(|_| ())
}

/// How many metadata timeouts a broker that accepts TCP connections gets before it
/// counts as down (a broken one that accepts nothing fails after the first).
const SLOW_BROKER_TRIES: u32 = 6;

/// Whether any bootstrap broker accepts a TCP connection within a second.
fn accepts_connections(brokers: &str) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    brokers.split(',').map(str::trim).filter(|b| !b.is_empty()).any(|broker| {
        // `host[:port]` (librdkafka's default port is 9092), with an optional
        // `PROTOCOL://` prefix.
        let address = broker.rsplit("://").next().unwrap_or(broker);
        let address = if address.rsplit(':').next().is_some_and(|p| p.parse::<u16>().is_ok()) {
            address.to_owned()
        } else {
            format!("{address}:9092")
        };
        address
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()))
    })
}

/// The number of partitions of `topic`, or (with `None`) just a check that the broker answers.
pub fn partition_count<C: rdkafka::ClientContext>(
    settings: &Settings,
    client: &rdkafka::client::Client<C>,
    topic: Option<&str>,
) -> Result<usize> {
    // A broker that is down fails after one timeout; one that accepts connections but is
    // slow to answer (overloaded) gets up to SLOW_BROKER_TRIES of them.
    let mut tries = 0;
    let metadata = loop {
        tries += 1;
        match client.fetch_metadata(topic, METADATA_TIMEOUT) {
            Ok(metadata) => break metadata,
            Err(
                KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut)
                | KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure),
            ) if tries < SLOW_BROKER_TRIES && accepts_connections(&settings.brokers) => {
                tracing::warn!(brokers = %settings.brokers, waited = ?METADATA_TIMEOUT * tries, "the broker accepts connections but has not answered a metadata request yet; waiting");
            }
            Err(
                KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut)
                | KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure),
            ) => {
                return Err(KafkaFailure::Unreachable {
                    brokers: settings.brokers.clone(),
                    timeout: METADATA_TIMEOUT * tries,
                    what: "metadata".into(),
                });
            }
            Err(e) => return Err(KafkaFailure::Client { brokers: settings.brokers.clone(), source: e }),
        }
    };
    let Some(topic) = topic else { return Ok(0) };
    let found = metadata.topics().iter().find(|t| t.name() == topic);
    match found {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len()),
        _ => Err(KafkaFailure::NoTopic { topic: topic.into(), brokers: settings.brokers.clone() }),
    }
}

/// One partition's offsets as the broker reports them, and a group's committed offset.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// The first offset still held (earlier ones were deleted by retention).
    pub low: i64,
    /// The offset the next record will get.
    pub high: i64,
    /// The group's committed offset (the next it will read), if any.
    pub committed: Option<i64>,
}

/// The low and high watermarks of every partition of `topic` and, with `group`, that
/// group's committed offsets. Reads only: joins no group and commits nothing.
pub fn partition_offsets(settings: &Settings, topic: &str, group: Option<&str>) -> Result<Vec<PartitionOffsets>> {
    let reader = format!("idempipe-status-{}", std::process::id());
    let consumer: BaseConsumer<QuietEof> = client_config(
        settings,
        Role::Consumer,
        &[("group.id", group.unwrap_or(&reader)), ("enable.auto.commit", "false")],
    )
    .create_with_context(QuietEof)
    .map_err(client_error(settings))?;
    let partitions = partition_count(settings, consumer.client(), Some(topic))? as i32;
    let committed = match group {
        Some(_) => {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(topic, p);
            }
            Some(consumer.committed_offsets(tpl, METADATA_TIMEOUT).map_err(client_error(settings))?)
        }
        None => None,
    };
    (0..partitions)
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(topic, p, METADATA_TIMEOUT).map_err(client_error(settings))?;
            let committed =
                committed.as_ref().and_then(|c| c.find_partition(topic, p)).and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            Ok(PartitionOffsets { partition: p, low, high, committed })
        })
        .collect()
}

/// Reads every record of `topic` from the beginning up to its current end, calling `f`
/// on each. Uses manual assignment and commits nothing, so it leaves no trace.
///
/// The end is where librdkafka reports partition EOF, which comes from the high
/// watermark of fetch responses. (ListOffsets is not used: tansu's memory storage
/// answers it with the start of the newest batch, not the end of the partition.)
pub fn read_topic(settings: &Settings, topic: &str, mut f: impl FnMut(&BorrowedMessage<'_>)) -> Result<u64> {
    // librdkafka wants a group id even for manual assignment. It is unique per reader:
    // tansu 0.6.0 lets a shared reader group disturb other groups' assignments.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let group = format!("idempipe-reader-{}-{nanos}", std::process::id());
    let consumer: BaseConsumer<QuietEof> = client_config(
        settings,
        Role::Consumer,
        &[("group.id", group.as_str()), ("enable.auto.commit", "false"), ("enable.partition.eof", "true")],
    )
    .create_with_context(QuietEof)
    .map_err(client_error(settings))?;
    let partitions = partition_count(settings, consumer.client(), Some(topic))? as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).map_err(client_error(settings))?;
    }
    consumer.assign(&tpl).map_err(client_error(settings))?;
    let mut open: std::collections::BTreeSet<i32> = (0..partitions).collect();
    let mut count = 0;
    let mut last_progress = std::time::Instant::now();
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last_progress = std::time::Instant::now();
                f(&m);
                count += 1;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                last_progress = std::time::Instant::now();
                open.remove(&p);
            }
            Some(Err(e)) => return Err(client_error(settings)(e)),
            None if last_progress.elapsed() > METADATA_TIMEOUT * 3 => {
                return Err(KafkaFailure::Unreachable {
                    brokers: settings.brokers.clone(),
                    timeout: METADATA_TIMEOUT * 3,
                    what: format!("reading {topic}"),
                });
            }
            None => {}
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listening_broker_counts_as_slow_rather_than_down() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(accepts_connections(&format!("127.0.0.1:{port}")));
        assert!(accepts_connections(&format!("127.0.0.1:1, PLAINTEXT://127.0.0.1:{port}")));
        drop(listener);
        assert!(!accepts_connections(&format!("127.0.0.1:{port}")));
        assert!(!accepts_connections("no-such-host.invalid:9092"));
        assert!(!accepts_connections(""));
    }
}
