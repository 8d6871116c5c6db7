//! What the processor sends to Kafka: newly stored events to the processed topic
//! ([`processed`]), refused messages to the dead-letter topic ([`dlq`]), both through one
//! idempotent producer ([`Output`]).
//!
//! Invariant: [`Output::send_all`] returns `Ok` only when the broker acknowledged every
//! record, so a caller may then advance past them (commit to Delta).

pub mod dlq;
pub mod processed;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::channel::oneshot::Canceled;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};

use crate::config::Settings;
use crate::kafka::{self, KafkaFailure, Role, client_config};

/// A record to send.
pub struct OutRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Option<OwnedHeaders>,
}

/// Failures to deliver.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("{failed} of {total} records to {topic} were not delivered: {first}")]
    NotDelivered { topic: String, failed: u64, total: u64, first: KafkaError },
    #[error(
        "partition {partition} of {topic} starts over (a record acknowledged at offset {offset}, below offset \
         {last} acknowledged earlier: the topic was recreated); {failed} of {total} records were purged, to be \
         sent again by a new producer"
    )]
    StartedOver { topic: String, partition: i32, offset: i64, last: i64, failed: u64, total: u64 },
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
}

/// The highest acknowledged offset per (topic, partition).
pub type Delivered = Arc<Mutex<BTreeMap<(String, i32), i64>>>;

/// An idempotent producer: retries inside librdkafka never duplicate or reorder.
pub struct Output {
    producer: FutureProducer,
    delivered: Delivered,
}

impl Output {
    pub fn new(settings: &Settings) -> Result<Self, KafkaFailure> {
        Ok(Self { producer: Self::producer(settings)?, delivered: Delivered::default() })
    }

    /// Replaces the producer with a new one (a new idempotent producer id). After a
    /// broker restart the old one can be stuck on errors the broker will not clear (its
    /// producer state is gone); what was not acknowledged is sent again by the caller.
    pub fn reset(&mut self, settings: &Settings) -> Result<(), KafkaFailure> {
        self.producer = Self::producer(settings)?;
        Ok(())
    }

    fn producer(settings: &Settings) -> Result<FutureProducer, KafkaFailure> {
        client_config(
            settings,
            Role::Producer,
            &[
                ("enable.idempotence", "true"),
                ("linger.ms", "5"),
                ("queue.buffering.max.messages", "1000000"),
                ("queue.buffering.max.kbytes", "1048576"),
                ("message.timeout.ms", "120000"),
            ],
        )
        .create()
        .map_err(kafka::client_error(settings))
    }

    /// The highest offset acknowledged so far on each (topic, partition): how far a
    /// reader of these topics must get to have seen everything this producer sent.
    pub fn delivered(&self) -> Delivered {
        self.delivered.clone()
    }

    /// Sends every record and waits until each is acknowledged.
    ///
    /// An acknowledgement below the last one this producer had for its partition means
    /// the topic started over (deleted and recreated). librdkafka then keeps the old
    /// topic's leader epochs and ignores the new topic's metadata where a leader had
    /// changed, so records for such a partition would wait out `message.timeout.ms` at a
    /// broker that no longer leads it: the records still pending are purged instead, and
    /// the call fails at once ([`ProduceError::StartedOver`]), for the caller to replace
    /// the producer and send them again. If every record was acknowledged anyway, it
    /// succeeds. Either way the topic's old offsets are dropped from
    /// [`Output::delivered`], the new ones taking their place.
    pub async fn send_all(&self, records: impl IntoIterator<Item = OutRecord>) -> Result<u64, ProduceError> {
        let before: BTreeMap<(String, i32), i64> = self.delivered.lock().map(|d| d.clone()).unwrap_or_default();
        let mut tally = Tally::new(&before, &self.producer);
        let mut pending = FuturesUnordered::new();
        for record in records {
            tally.total += 1;
            loop {
                let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&record.topic);
                if let Some(k) = &record.key {
                    r = r.key(k);
                }
                if let Some(v) = &record.value {
                    r = r.payload(v);
                }
                if let Some(h) = &record.headers {
                    r = r.headers(h.clone());
                }
                match self.producer.send_result(r) {
                    Ok(delivery) => {
                        let topic = record.topic.clone();
                        pending.push(delivery.map(move |result| (topic, result)));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // Let deliveries drain before trying again.
                        match pending.next().await {
                            Some((topic, result)) => tally.delivery(topic, result),
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((e, _)) => {
                        tally.fail(&record.topic, e);
                        break;
                    }
                }
            }
        }
        while let Some((topic, result)) = pending.next().await {
            tally.delivery(topic, result);
        }
        let Tally { acked, total, failed, first, started_over, .. } = tally;
        if let Ok(mut delivered) = self.delivered.lock() {
            if let Some((topic, ..)) = &started_over {
                // Every partition of a recreated topic starts over: the old topic's
                // offsets say nothing of the new one's (and a new producer's first
                // acknowledgements must not be taken for another start-over).
                delivered.retain(|(t, _), _| t != topic);
            }
            for (key, offset) in acked {
                let entry = delivered.entry(key).or_insert(offset);
                *entry = (*entry).max(offset);
            }
        }
        match (first, started_over) {
            (None, _) => Ok(total),
            (Some(_), Some((topic, partition, offset, last))) => {
                Err(ProduceError::StartedOver { topic, partition, offset, last, failed, total })
            }
            (Some((topic, first)), None) => Err(ProduceError::NotDelivered { topic, failed, total, first }),
        }
    }
}

/// What one [`Output::send_all`] call saw of its deliveries.
struct Tally<'a> {
    /// The last acknowledged offsets when the call began.
    before: &'a BTreeMap<(String, i32), i64>,
    producer: &'a FutureProducer,
    /// The highest acknowledged offset per (topic, partition).
    acked: BTreeMap<(String, i32), i64>,
    total: u64,
    failed: u64,
    first: Option<(String, KafkaError)>,
    /// The first acknowledgement below the last one: (topic, partition, its offset, the
    /// last one).
    started_over: Option<(String, i32, i64, i64)>,
}

impl<'a> Tally<'a> {
    fn new(before: &'a BTreeMap<(String, i32), i64>, producer: &'a FutureProducer) -> Self {
        Self { before, producer, acked: BTreeMap::new(), total: 0, failed: 0, first: None, started_over: None }
    }

    fn delivery(&mut self, topic: String, result: Result<OwnedDeliveryResult, Canceled>) {
        match result {
            Ok(Ok(d)) => self.ack(topic, d.partition, d.offset),
            Ok(Err((e, _))) => self.fail(&topic, e),
            Err(_) => self.fail(&topic, KafkaError::Canceled),
        }
    }

    fn ack(&mut self, topic: String, partition: i32, offset: i64) {
        let key = (topic, partition);
        if self.started_over.is_none()
            && let Some(&last) = self.before.get(&key)
            && offset < last
        {
            tracing::warn!(
                topic = %key.0,
                partition,
                offset,
                last,
                "a record was acknowledged below the partition's last acknowledged offset: the topic was \
                 recreated; purging the records still pending, to send them again with a new producer"
            );
            self.started_over = Some((key.0.clone(), partition, offset, last));
            self.producer.purge(PurgeConfig::default().queue().inflight().non_blocking());
        }
        let entry = self.acked.entry(key).or_insert(offset);
        *entry = (*entry).max(offset);
    }

    fn fail(&mut self, topic: &str, e: KafkaError) {
        self.failed += 1;
        self.first.get_or_insert((topic.to_owned(), e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acknowledgement_below_the_partitions_last_one_is_a_start_over_and_the_first_one_of_a_partition_is_not() {
        // No broker is needed: the producer is only asked to purge.
        let producer: FutureProducer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:1").create().unwrap();
        let before = BTreeMap::from([(("t".to_owned(), 0), 100), (("u".to_owned(), 0), 100)]);
        let mut tally = Tally::new(&before, &producer);
        tally.ack("t".to_owned(), 0, 101);
        tally.ack("t".to_owned(), 1, 0);
        tally.ack("v".to_owned(), 0, 0);
        assert_eq!(tally.started_over, None, "higher offsets, and partitions never acknowledged before");
        tally.ack("u".to_owned(), 0, 3);
        tally.ack("t".to_owned(), 0, 2);
        assert_eq!(tally.started_over, Some(("u".to_owned(), 0, 3, 100)), "the first start-over is kept");
        assert_eq!(tally.acked[&("t".to_owned(), 0)], 101);
    }
}
