//! Records of the dead-letter topic: the refused message's original key and bytes, and
//! headers that say why and where it came from.
//!
//! Invariant: a dead letter is acknowledged before the Delta commit that moves past its
//! offset, so a refused message is never lost, only possibly sent twice after a crash
//! (the `source.*` headers identify the copies).
//!
//! A value too big to produce (a `too_large` message, typically) is cut so that key,
//! value and headers fit the largest record idempipe produces
//! ([`crate::config::Settings::max_record_bytes`]) and marked `error.truncated: true` with
//! its full length in `source.value_bytes`: a dead letter that cannot be sent would stop
//! the pipeline, and the whole message is still in the source topic at
//! `source.partition`/`source.offset`. A key longer than a sixteenth of that is cut too,
//! and so is an `error.message` longer than [`MAX_MESSAGE_HEADER_BYTES`] (a server's
//! message may quote the data it refused): every header is bounded, so a dead letter
//! always fits.

use rdkafka::message::{Header, OwnedHeaders};

use crate::batch::DeadLetter;
use crate::output::OutRecord;

pub const HEADER_CLASS: &str = "error.class";
pub const HEADER_MESSAGE: &str = "error.message";
pub(crate) const HEADER_TOPIC: &str = "source.topic";
pub(crate) const HEADER_PARTITION: &str = "source.partition";
pub(crate) const HEADER_OFFSET: &str = "source.offset";
pub const HEADER_TRUNCATED: &str = "error.truncated";
pub const HEADER_VALUE_BYTES: &str = "source.value_bytes";

/// The longest `error.message` header: enough for any reason idempipe writes and for a
/// server's message with the start of what it quotes.
pub const MAX_MESSAGE_HEADER_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes at a character boundary, marked with an ellipsis and
/// the full length when cut.
fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let suffix = format!("… ({} bytes in all)", text.len());
    let mut cut = max.saturating_sub(suffix.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &text[..cut]).into()
}

/// The record of one refused message, at most `max_record_bytes` of key, value and
/// headers.
pub fn record(dlq_topic: &str, source_topic: &str, dead: &DeadLetter, max_record_bytes: usize) -> OutRecord {
    let partition = dead.partition.to_string();
    let offset = dead.offset.to_string();
    let message = bounded(&dead.rejection.message, MAX_MESSAGE_HEADER_BYTES.min(max_record_bytes / 16));
    let fields = [
        (HEADER_CLASS, dead.rejection.class.as_str()),
        (HEADER_MESSAGE, message.as_ref()),
        (HEADER_TOPIC, source_topic),
        (HEADER_PARTITION, partition.as_str()),
        (HEADER_OFFSET, offset.as_str()),
    ];
    let mut headers = OwnedHeaders::new();
    for (key, value) in fields {
        headers = headers.insert(Header { key, value: Some(value) });
    }
    let key = dead.key.clone().map(|mut k| {
        k.truncate(max_record_bytes / 16);
        k
    });
    // What the value may take: the rest, with room for the two truncation headers.
    const TRUNCATION_HEADERS: usize = 64;
    let taken = key.as_ref().map_or(0, Vec::len)
        + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + TRUNCATION_HEADERS;
    let budget = max_record_bytes.saturating_sub(taken);
    let mut value = dead.value.clone();
    if let Some(v) = &mut value
        && v.len() > budget
    {
        let full = v.len().to_string();
        v.truncate(budget);
        headers = headers
            .insert(Header { key: HEADER_TRUNCATED, value: Some("true") })
            .insert(Header { key: HEADER_VALUE_BYTES, value: Some(full.as_str()) });
    }
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
        record("dlq", "raw", &dead, LIMIT)
    }

    const LIMIT: usize = 1_000_000 - 1024;

    /// Key, value and headers: what librdkafka counts against `message.max.bytes`.
    fn size(r: &OutRecord) -> usize {
        let headers =
            r.headers.as_ref().map_or(0, |h| h.iter().map(|x| x.key.len() + x.value.map_or(0, <[u8]>::len)).sum());
        r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len) + headers
    }

    fn header(r: &OutRecord, name: &str) -> Option<String> {
        let h = r.headers.as_ref()?;
        h.iter().find(|x| x.key == name).and_then(|x| x.value).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn a_value_too_big_to_send_is_cut_and_marked() {
        let big = letter(vec![b'x'; 3 << 20]);
        let cut = big.value.as_ref().unwrap().len();
        assert!(cut > LIMIT - 1024 && size(&big) <= LIMIT, "{cut} bytes of value, {} in all", size(&big));
        assert_eq!(header(&big, HEADER_TRUNCATED).as_deref(), Some("true"));
        assert_eq!(header(&big, HEADER_VALUE_BYTES), Some((3 << 20).to_string()));
        assert_eq!(header(&big, HEADER_OFFSET).as_deref(), Some("7"));

        let small = letter(b"{oops".to_vec());
        assert_eq!(small.value.as_deref(), Some(&b"{oops"[..]));
        assert_eq!(header(&small, HEADER_TRUNCATED), None);

        // A huge key is cut too, and the whole still fits.
        let dead = DeadLetter {
            key: Some(vec![b'k'; 1 << 20]),
            value: Some(vec![b'x'; 1 << 20]),
            rejection: Rejection::new(RejectClass::TooLarge, "too big"),
            partition: 0,
            offset: 1,
        };
        let both = record("dlq", "raw", &dead, LIMIT);
        assert_eq!(both.key.as_ref().unwrap().len(), LIMIT / 16);
        assert!(size(&both) <= LIMIT, "{}", size(&both));
    }

    /// A reason that quotes a whole 400 KB field, escaped to 1.2 MB, once made a header no
    /// broker takes, and the batch failed on every attempt.
    #[test]
    fn a_reason_of_any_length_fits_the_record() {
        let long = format!("timestamp {:?} is malformed", "\u{80}".repeat(200_000));
        assert!(long.len() > 1_000_000);
        let dead = DeadLetter {
            key: Some(b"k".to_vec()),
            value: Some(vec![b'x'; 400_000]),
            rejection: Rejection::new(RejectClass::InvalidTimestamp, long.clone()),
            partition: 2,
            offset: 9,
        };
        let r = record("dlq", "raw", &dead, LIMIT);
        assert!(size(&r) <= LIMIT, "{} bytes", size(&r));
        let message = header(&r, HEADER_MESSAGE).unwrap();
        assert!(message.len() <= MAX_MESSAGE_HEADER_BYTES, "{} bytes", message.len());
        assert!(message.starts_with("timestamp \"\\u{80}"), "{message}");
        assert!(message.ends_with(&format!("… ({} bytes in all)", long.len())), "{message}");
        assert_eq!(r.value.as_ref().map(Vec::len), Some(400_000), "the value is whole");
        // A short reason is left as it is, and a cut never splits a character.
        assert_eq!(bounded("too big", 64), "too big");
        let accents = "é".repeat(100);
        let cut = bounded(&accents, 41);
        assert!(cut.len() <= 41 && cut.starts_with('é'), "{cut}");
    }
}
