//! Topic administration and the broker's answers about topics: creating and checking the
//! pipeline's topics, partition counts, watermarks and committed offsets, each with the
//! retries the broker's transient answers need.

use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier, TopicReplication,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::kafka::errors::{diagnose_handshake, refused_handshake};
use crate::kafka::{KafkaFailure, LoggingContext, METADATA_TIMEOUT, Result, Role, client_config, client_error};
use crate::retry::{self, Backoff, OnShutdown, Policy, Step, Stopped};
use crate::shutdown::Shutdown;

/// A topic `setup` needs: its name, the partitions it gets when created, and whether
/// idempipe writes to it (then it must accept the largest record idempipe sends).
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec<'a> {
    pub name: &'a str,
    pub partitions: i32,
    pub written: bool,
}

/// What `setup` found of a topic, created now or not.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TopicReport {
    pub name: String,
    pub created: bool,
    pub partitions: usize,
    /// Replicas of partition 0.
    pub replicas: usize,
    /// The topic's `max.message.bytes`; `None` if the broker does not say (a broker
    /// without DescribeConfigs).
    pub max_message_bytes: Option<u64>,
}

/// Kafka's default `max.message.bytes` of a topic (`message.max.bytes` of the broker).
pub const KAFKA_DEFAULT_MAX_MESSAGE_BYTES: u64 = 1_048_588;

/// Whether a topic accepts the largest record idempipe sends to it: `accepts` is its
/// `max.message.bytes` as the broker reported it (`None`: not reported, so not checked,
/// and said in the log).
pub fn check_record_limit(spec: &TopicSpec<'_>, accepts: Option<u64>, sends: u64) -> Result<()> {
    if !spec.written {
        return Ok(());
    }
    match accepts {
        Some(accepts) if accepts < sends => {
            Err(KafkaFailure::RecordsTooLarge { topic: spec.name.into(), accepts, sends })
        }
        Some(_) => Ok(()),
        None => {
            tracing::warn!(
                topic = spec.name,
                sends,
                "the broker did not report the topic's `max.message.bytes`: not checked that it accepts idempipe's largest record"
            );
            Ok(())
        }
    }
}

/// Creates each topic unless it exists (with `replication_factor`, or the broker's
/// default), then reads every one back: its partitions, replicas and
/// `max.message.bytes`. Fails if a topic idempipe writes to would refuse its largest
/// record ([`Settings::max_request_bytes`]), naming the topic and both limits.
pub async fn ensure_topics(settings: &Settings, topics: &[TopicSpec<'_>]) -> Result<Vec<TopicReport>> {
    let admin: AdminClient<LoggingContext> = client_config(settings, Role::Admin, &[])
        .create_with_context(LoggingContext)
        .map_err(client_error(settings))?;
    // Fail fast and clearly when the broker is down, before the admin request's timeout.
    partition_count(settings, admin.inner(), None)?;
    let replication = settings.replication_factor.request();
    // A topic idempipe writes to must take a produce request of this size.
    let sends = settings.max_request_bytes() as u64;
    let largest = sends.to_string();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let topic = NewTopic::new(t.name, t.partitions, TopicReplication::Fixed(replication));
            // Kafka's default limit fits librdkafka's default; a producer allowed more
            // gets topics that take it.
            match t.written && sends > KAFKA_DEFAULT_MAX_MESSAGE_BYTES {
                true => topic.set("max.message.bytes", &largest),
                false => topic,
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)).request_timeout(Some(METADATA_TIMEOUT));
    let results = admin.create_topics(&new, &options).await.map_err(client_error(settings))?;
    let mut created = std::collections::BTreeSet::new();
    for result in results {
        match result {
            Ok(name) => {
                created.insert(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaFailure::CreateTopic { topic, brokers: settings.brokers.clone(), code });
            }
        }
    }
    let limits = record_limits(&admin, topics).await;
    let mut reports = Vec::new();
    for spec in topics {
        let (partitions, replicas) = listed_topic(settings, &admin, spec.name)?;
        let max_message_bytes = limits.get(spec.name).copied().flatten();
        let report = TopicReport {
            name: spec.name.to_owned(),
            created: created.contains(spec.name),
            partitions,
            replicas,
            max_message_bytes,
        };
        if spec.partitions as usize != report.partitions && !report.created {
            tracing::info!(
                topic = spec.name,
                partitions = report.partitions,
                "the topic exists with a partition count of its own; `partitions` applies only to topics setup creates"
            );
        }
        check_record_limit(spec, max_message_bytes, sends)?;
        reports.push(report);
    }
    Ok(reports)
}

/// A topic's partition count and the replicas of its partition 0, as the broker's
/// metadata lists them. A cluster's brokers learn a new topic from the controller a
/// moment after it is created, so a topic created just now is asked for again meanwhile
/// ([`NEW_TOPIC`]); one still missing then is missing.
fn listed_topic(settings: &Settings, admin: &AdminClient<LoggingContext>, name: &str) -> Result<(usize, usize)> {
    retry::retry(&Shutdown::new(), OnShutdown::Stop, |attempt| {
        let metadata = match admin.inner().fetch_metadata(Some(name), METADATA_TIMEOUT) {
            Ok(metadata) => metadata,
            Err(e) => return Step::Stop(client_error(settings)(e)),
        };
        let topic = metadata.topics().iter().find(|t| t.name() == name && t.error().is_none());
        match topic.filter(|t| !t.partitions().is_empty()) {
            Some(t) => Step::Done((t.partitions().len(), t.partitions()[0].replicas().len())),
            None => {
                NEW_TOPIC.step(attempt, KafkaFailure::NoTopic { topic: name.into(), brokers: settings.brokers.clone() })
            }
        }
    })
    .map_err(Stopped::into_error)
}

/// How long a topic just created may take to reach the broker's metadata: 100 ms
/// doubling to 1 s between looks, about 20 s in all.
const NEW_TOPIC: Policy = Policy {
    backoff: Backoff { base: Duration::from_millis(50), cap: Duration::from_secs(1) },
    max_failures: Some(25),
};

/// Each topic's `max.message.bytes` as the broker describes it (`None`: not described).
async fn record_limits<'a>(
    admin: &AdminClient<LoggingContext>,
    topics: &[TopicSpec<'a>],
) -> std::collections::BTreeMap<&'a str, Option<u64>> {
    let specifiers: Vec<ResourceSpecifier<'_>> = topics.iter().map(|t| ResourceSpecifier::Topic(t.name)).collect();
    let options = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
    let configs = match admin.describe_configs(&specifiers, &options).await {
        Ok(configs) => configs,
        Err(e) => {
            tracing::warn!(error = %e, "the broker did not describe the topics' configs");
            Vec::new()
        }
    };
    topics
        .iter()
        .map(|spec| {
            let limit = configs
                .iter()
                .flatten()
                .find(|c| matches!(&c.specifier, OwnedResourceSpecifier::Topic(name) if name == spec.name))
                .and_then(|c| c.get("max.message.bytes")?.value.as_deref()?.trim().parse().ok());
            (spec.name, limit)
        })
        .collect()
}

/// At `run`'s start: the processed and dead-letter topics take the largest record
/// idempipe sends (see [`check_record_limit`]); `setup` checked them too, but a topic's
/// limit can change after it.
pub async fn check_output_topics(settings: &Settings) -> Result<()> {
    let admin: AdminClient<LoggingContext> = client_config(settings, Role::Admin, &[])
        .create_with_context(LoggingContext)
        .map_err(client_error(settings))?;
    partition_count(settings, admin.inner(), None)?;
    let topics = [
        TopicSpec { name: &settings.topics.processed, partitions: settings.partitions, written: true },
        TopicSpec { name: &settings.topics.dlq, partitions: 1, written: true },
    ];
    let limits = record_limits(&admin, &topics).await;
    for spec in &topics {
        check_record_limit(spec, limits.get(spec.name).copied().flatten(), settings.max_request_bytes() as u64)?;
    }
    Ok(())
}

/// Fails with [`KafkaFailure::Unreachable`] unless the broker answers a metadata request.
pub fn check_reachable(settings: &Settings) -> Result<()> {
    let admin: AdminClient<LoggingContext> = client_config(settings, Role::Admin, &[])
        .create_with_context(LoggingContext)
        .map_err(client_error(settings))?;
    partition_count(settings, admin.inner(), None).map(|_| ())
}

/// A broker that accepts TCP connections gets six metadata timeouts before it counts as
/// down (a broken one that accepts nothing fails after the first); each request's own
/// timeout is the wait between them.
const SLOW_BROKER: Policy =
    Policy { backoff: Backoff { base: Duration::ZERO, cap: Duration::ZERO }, max_failures: Some(6) };

/// A topic error that passes (no leader yet) is asked about again a second later, six
/// times in all.
const TOPIC_ERRORS: Policy =
    Policy { backoff: Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(1) }, max_failures: Some(6) };

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
    let Some(topic) = topic else {
        answered_metadata(settings, client, None)?;
        return Ok(0);
    };
    retry::retry(&Shutdown::new(), OnShutdown::Stop, |tries| {
        let metadata = match answered_metadata(settings, client, Some(topic)) {
            Ok(metadata) => metadata,
            Err(e) => return Step::Stop(e),
        };
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        let error = found.and_then(|t| t.error()).map(RDKafkaErrorCode::from);
        match (found, error) {
            (Some(t), None) if !t.partitions().is_empty() => Step::Done(t.partitions().len()),
            (None, _) | (_, Some(RDKafkaErrorCode::UnknownTopicOrPartition)) | (Some(_), None) => {
                Step::Stop(KafkaFailure::NoTopic { topic: topic.into(), brokers: settings.brokers.clone() })
            }
            (Some(_), Some(code)) => {
                let failure =
                    KafkaFailure::TopicUnavailable { topic: topic.into(), brokers: settings.brokers.clone(), code };
                if !is_transient(code) {
                    return Step::Stop(failure);
                }
                // An error of the topic's that passes (no leader yet): asked again.
                tracing::warn!(topic, error = %code, "the broker reports an error for the topic; asking again");
                TOPIC_ERRORS.step(tries, failure)
            }
        }
    })
    .map_err(Stopped::into_error)
}

/// The cluster's metadata (of `topic` only, if given). A broker that is down fails after
/// one timeout; one that accepts connections but is slow to answer (overloaded) gets up
/// to [`SLOW_BROKER`]'s attempts, each its own timeout long. Both are checks at start or
/// between batches, bounded by their policies: no shutdown cuts them short.
fn answered_metadata<C: rdkafka::ClientContext>(
    settings: &Settings,
    client: &rdkafka::client::Client<C>,
    topic: Option<&str>,
) -> Result<rdkafka::metadata::Metadata> {
    retry::retry(&Shutdown::new(), OnShutdown::Stop, |tries| {
        let answer = client.fetch_metadata(topic, METADATA_TIMEOUT);
        if answer.is_err()
            && let Some(reason) = refused_handshake().or_else(|| diagnose_handshake(settings))
        {
            return Step::Stop(KafkaFailure::Handshake { brokers: settings.brokers.clone(), reason });
        }
        match answer {
            Ok(metadata) => Step::Done(metadata),
            Err(
                KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut)
                | KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure),
            ) => {
                let failure = KafkaFailure::Unreachable {
                    brokers: settings.brokers.clone(),
                    timeout: METADATA_TIMEOUT * tries,
                    what: "metadata".into(),
                };
                if !accepts_connections(&settings.brokers) {
                    return Step::Stop(failure);
                }
                tracing::warn!(brokers = %settings.brokers, waited = ?METADATA_TIMEOUT * tries, "the broker accepts connections but has not answered a metadata request yet; waiting");
                SLOW_BROKER.step(tries, failure)
            }
            Err(e) => Step::Stop(KafkaFailure::Client { brokers: settings.brokers.clone(), source: e }),
        }
    })
    .map_err(Stopped::into_error)
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
    let consumer: BaseConsumer<LoggingContext> = client_config(
        settings,
        Role::Consumer,
        &[("group.id", group.unwrap_or(&reader)), ("enable.auto.commit", "false")],
    )
    .create_with_context(LoggingContext)
    .map_err(client_error(settings))?;
    let partitions = partition_count(settings, consumer.client(), Some(topic))? as i32;
    let committed = match group {
        Some(_) => {
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(topic, p);
            }
            Some(committed_offsets(settings, &consumer, &tpl)?)
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

/// Errors librdkafka retries by itself and that pass once a broker is back or a leader
/// is elected: a request or connection that timed out or dropped, a partition between
/// leaders. Waited out where a command must not fail on the first ([`read_topic`],
/// [`partition_count`]); every other error is an answer.
/// `topic`'s partition count now, as `client` sees it; `None` when the broker does not
/// answer within `timeout` or does not know the topic (deleted, being recreated).
pub fn partition_count_now<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Option<i32> {
    let metadata = client.fetch_metadata(Some(topic), timeout).ok()?;
    let found = metadata.topics().iter().find(|t| t.name() == topic)?;
    (found.error().is_none() && !found.partitions().is_empty()).then(|| found.partitions().len() as i32)
}

/// The offsets `group` of `consumer` committed on the partitions of `wanted`. A group
/// coordinator that is moving or loading (a cluster just started, a broker restarted)
/// is asked again, for about 20 s.
pub(crate) fn committed_offsets<C: rdkafka::consumer::ConsumerContext>(
    settings: &Settings,
    consumer: &BaseConsumer<C>,
    wanted: &TopicPartitionList,
) -> Result<TopicPartitionList> {
    retry::retry(&Shutdown::new(), OnShutdown::Stop, |tries| {
        match consumer.committed_offsets(wanted.clone(), METADATA_TIMEOUT) {
            Ok(committed) => Step::Done(committed),
            Err(e) if e.rdkafka_error_code().is_some_and(is_coordinator_moving) => {
                tracing::debug!(error = %e, "the group coordinator is not ready; asking again");
                COORDINATOR_NOT_READY.step(tries, client_error(settings)(e))
            }
            Err(e) => Step::Stop(client_error(settings)(e)),
        }
    })
    .map_err(Stopped::into_error)
}

/// How long a group coordinator may take to load or move (a cluster just started, a
/// broker restarted): 100 ms doubling to 1 s between asks, about 20 s in all.
const COORDINATOR_NOT_READY: Policy = Policy {
    backoff: Backoff { base: Duration::from_millis(50), cap: Duration::from_secs(1) },
    max_failures: Some(25),
};

/// A group coordinator that moves or loads: it answers once it is ready.
fn is_coordinator_moving(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::CoordinatorLoadInProgress
    )
}

pub(crate) fn is_transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::ReplicaNotAvailable
            | RDKafkaErrorCode::KafkaStorageError
            | RDKafkaErrorCode::FencedLeaderEpoch
            | RDKafkaErrorCode::UnknownLeaderEpoch
            | RDKafkaErrorCode::OffsetNotAvailable
    )
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

    #[test]
    fn a_topic_written_to_must_take_the_largest_record() {
        let processed = TopicSpec { name: "processed", partitions: 4, written: true };
        let raw = TopicSpec { name: "raw", partitions: 4, written: false };
        let err = check_record_limit(&processed, Some(500_000), 1_000_000).unwrap_err().to_string();
        assert!(err.contains("topic processed accepts records up to 500000 bytes"), "{err}");
        assert!(err.contains("may send 1000000") && err.contains("message.max.bytes"), "{err}");
        assert!(
            check_record_limit(
                &processed,
                Some(KAFKA_DEFAULT_MAX_MESSAGE_BYTES),
                crate::config::DEFAULT_MESSAGE_MAX_BYTES as u64
            )
            .is_ok()
        );
        assert!(check_record_limit(&processed, None, 1_000_000).is_ok(), "an unreported limit is not checked");
        assert!(check_record_limit(&raw, Some(1), 1_000_000).is_ok(), "idempipe does not write the raw topic");
    }
}
