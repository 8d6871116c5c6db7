//! Reading a topic back, independently of any group: `verify`, `reconcile` and `drain`
//! read whole topics through it.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::kafka::admin::{is_transient, partition_count};
use crate::kafka::{KafkaFailure, LoggingContext, Result, Role, client_config, client_error};

/// How long [`read_topic`] waits without a record or a partition's end before it gives up.
const READ_STALL: Duration = Duration::from_secs(30);

/// Reads every record of `topic` from the beginning up to its current end, calling `f`
/// on each. Uses manual assignment and commits nothing, so it leaves no trace.
///
/// The end is where librdkafka reports partition EOF, which comes from the high
/// watermark of the very fetch responses the records came in (not a separate
/// ListOffsets answer, which a broker may give from another moment; tansu's memory
/// storage even answers it with the start of the newest batch).
pub fn read_topic(settings: &Settings, topic: &str, mut f: impl FnMut(&BorrowedMessage<'_>)) -> Result<u64> {
    // librdkafka wants a group id even for manual assignment. It is unique per reader, so
    // that no reader shares a group with anything (tansu 0.6.0 lets a shared group
    // disturb other groups' assignments).
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let group = format!("idempipe-reader-{}-{nanos}", std::process::id());
    let consumer: BaseConsumer<LoggingContext> = client_config(
        settings,
        Role::Consumer,
        &[("group.id", group.as_str()), ("enable.auto.commit", "false"), ("enable.partition.eof", "true")],
    )
    // Records retention deletes while the read runs: it goes on from the new start. Set
    // after the operator's settings, which would otherwise win.
    .set("auto.offset.reset", "earliest")
    .create_with_context(LoggingContext)
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
    let mut last_error: Option<KafkaError> = None;
    while !open.is_empty() {
        if last_progress.elapsed() > READ_STALL {
            return Err(KafkaFailure::Unreachable {
                brokers: settings.brokers.clone(),
                timeout: READ_STALL,
                what: match &last_error {
                    Some(e) => format!("reading {topic}; the last consumer error: {e}"),
                    None => format!("reading {topic}"),
                },
            });
        }
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
            // A fetch that timed out or a dropped connection, which librdkafka retries by
            // itself: waited out (up to READ_STALL without progress). Any other error ends
            // the read: some (a corrupt record) come with the record skipped, and the
            // count must be exact or fail.
            Some(Err(e)) if e.rdkafka_error_code().is_some_and(is_transient) => {
                tracing::warn!(topic, error = %e, "reading the topic: a consumer error; retrying");
                last_error = Some(e);
            }
            Some(Err(e)) => return Err(client_error(settings)(e)),
            None => {}
        }
    }
    Ok(count)
}
