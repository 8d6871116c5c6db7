//! Records of the dead-letter topic: the refused message's original key and bytes, and
//! headers that say why and where it came from.
//!
//! Invariant: a dead letter is acknowledged before the Delta commit that moves past its
//! offset, so a refused message is never lost, only possibly sent twice after a crash
//! (the `source.*` headers identify the copies).

use rdkafka::message::{Header, OwnedHeaders};

use crate::batch::DeadLetter;
use crate::sink::producer::OutRecord;

pub const HEADER_CLASS: &str = "error.class";
pub const HEADER_MESSAGE: &str = "error.message";
pub const HEADER_TOPIC: &str = "source.topic";
pub const HEADER_PARTITION: &str = "source.partition";
pub const HEADER_OFFSET: &str = "source.offset";

/// The record of one refused message.
pub fn record(dlq_topic: &str, source_topic: &str, dead: &DeadLetter) -> OutRecord {
    let partition = dead.partition.to_string();
    let offset = dead.offset.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header { key: HEADER_CLASS, value: Some(dead.rejection.class.as_str()) })
        .insert(Header { key: HEADER_MESSAGE, value: Some(dead.rejection.message.as_str()) })
        .insert(Header { key: HEADER_TOPIC, value: Some(source_topic) })
        .insert(Header { key: HEADER_PARTITION, value: Some(partition.as_str()) })
        .insert(Header { key: HEADER_OFFSET, value: Some(offset.as_str()) });
    OutRecord { topic: dlq_topic.to_owned(), key: dead.key.clone(), value: dead.value.clone(), headers: Some(headers) }
}
