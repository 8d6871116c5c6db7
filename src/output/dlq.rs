//! Records of the dead-letter topic: the refused message's original key and bytes, and
//! headers that say why and where it came from.
//!
//! Invariant: a dead letter is acknowledged before the Delta commit that moves past its
//! offset, so a refused message is never lost, only possibly sent twice after a crash
//! (the `source.*` headers identify the copies).
//!
//! A value too big to produce (a `too_large` message, typically) is cut to
//! [`MAX_VALUE_BYTES`] and marked `error.truncated: true` with its full length in
//! `source.value_bytes`: a dead letter that cannot be sent would stop the pipeline, and
//! the whole message is still in the source topic at `source.partition`/`source.offset`.

use rdkafka::message::{Header, OwnedHeaders};

use crate::batch::DeadLetter;
use crate::output::OutRecord;

pub const HEADER_CLASS: &str = "error.class";
pub const HEADER_MESSAGE: &str = "error.message";
pub const HEADER_TOPIC: &str = "source.topic";
pub const HEADER_PARTITION: &str = "source.partition";
pub const HEADER_OFFSET: &str = "source.offset";
pub const HEADER_TRUNCATED: &str = "error.truncated";
pub const HEADER_VALUE_BYTES: &str = "source.value_bytes";

/// The largest value a dead letter carries: below librdkafka's and Kafka's default
/// 1,000,000-byte message limit, with room for the key and headers.
pub const MAX_VALUE_BYTES: usize = 900 * 1024;

/// The record of one refused message.
pub fn record(dlq_topic: &str, source_topic: &str, dead: &DeadLetter) -> OutRecord {
    let partition = dead.partition.to_string();
    let offset = dead.offset.to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header { key: HEADER_CLASS, value: Some(dead.rejection.class.as_str()) })
        .insert(Header { key: HEADER_MESSAGE, value: Some(dead.rejection.message.as_str()) })
        .insert(Header { key: HEADER_TOPIC, value: Some(source_topic) })
        .insert(Header { key: HEADER_PARTITION, value: Some(partition.as_str()) })
        .insert(Header { key: HEADER_OFFSET, value: Some(offset.as_str()) });
    let mut value = dead.value.clone();
    if let Some(v) = &mut value
        && v.len() > MAX_VALUE_BYTES
    {
        let full = v.len().to_string();
        v.truncate(MAX_VALUE_BYTES);
        headers = headers
            .insert(Header { key: HEADER_TRUNCATED, value: Some("true") })
            .insert(Header { key: HEADER_VALUE_BYTES, value: Some(full.as_str()) });
    }
    let key = dead.key.clone().map(|mut k| {
        k.truncate(MAX_VALUE_BYTES / 8);
        k
    });
    OutRecord { topic: dlq_topic.to_owned(), key, value, headers: Some(headers) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{RejectClass, Rejection};
    use rdkafka::message::Headers;

    fn letter(value: Vec<u8>) -> OutRecord {
        let dead = DeadLetter {
            key: Some(b"k".to_vec()),
            value: Some(value),
            rejection: Rejection::new(RejectClass::TooLarge, "too big"),
            partition: 1,
            offset: 7,
        };
        record("dlq", "raw", &dead)
    }

    fn header(r: &OutRecord, name: &str) -> Option<String> {
        let h = r.headers.as_ref()?;
        h.iter().find(|x| x.key == name).and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn a_value_too_big_to_send_is_cut_and_marked() {
        let big = letter(vec![b'x'; 3 << 20]);
        assert_eq!(big.value.as_ref().unwrap().len(), MAX_VALUE_BYTES);
        assert_eq!(header(&big, HEADER_TRUNCATED).as_deref(), Some("true"));
        assert_eq!(header(&big, HEADER_VALUE_BYTES), Some((3 << 20).to_string()));
        assert_eq!(header(&big, HEADER_OFFSET).as_deref(), Some("7"));

        let small = letter(b"{oops".to_vec());
        assert_eq!(small.value.as_deref(), Some(&b"{oops"[..]));
        assert_eq!(header(&small, HEADER_TRUNCATED), None);
    }
}
