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
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};

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
    pub async fn send_all(&self, records: impl IntoIterator<Item = OutRecord>) -> Result<u64, ProduceError> {
        let mut pending = FuturesUnordered::new();
        let mut acked: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut total = 0;
        let mut failed = 0;
        let mut first: Option<(String, KafkaError)> = None;
        let mut note = |topic: &str, e: KafkaError, failed: &mut u64| {
            *failed += 1;
            first.get_or_insert((topic.to_owned(), e));
        };
        for record in records {
            total += 1;
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
                            Some((topic, Ok(Ok(d)))) => note_acked(&mut acked, topic, d.partition, d.offset),
                            Some((topic, Ok(Err((e, _))))) => note(&topic, e, &mut failed),
                            Some((topic, Err(_))) => note(&topic, KafkaError::Canceled, &mut failed),
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((e, _)) => {
                        note(&record.topic, e, &mut failed);
                        break;
                    }
                }
            }
        }
        while let Some((topic, result)) = pending.next().await {
            match result {
                Ok(Ok(d)) => note_acked(&mut acked, topic, d.partition, d.offset),
                Ok(Err((e, _))) => note(&topic, e, &mut failed),
                Err(_) => note(&topic, KafkaError::Canceled, &mut failed),
            }
        }
        if let Ok(mut delivered) = self.delivered.lock() {
            for (key, offset) in acked {
                let entry = delivered.entry(key).or_insert(offset);
                *entry = (*entry).max(offset);
            }
        }
        match first {
            None => Ok(total),
            Some((topic, first)) => Err(ProduceError::NotDelivered { topic, failed, total, first }),
        }
    }
}

fn note_acked(acked: &mut BTreeMap<(String, i32), i64>, topic: String, partition: i32, offset: i64) {
    let entry = acked.entry((topic, partition)).or_insert(offset);
    *entry = (*entry).max(offset);
}
