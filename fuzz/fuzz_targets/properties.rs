//! The properties the fuzz targets check, shared with `tests/contract.rs` (which runs
//! them over the committed corpus on every test run, on stable Rust).
//!
//! The including crate provides `crate::event` (the contract module).

use crate::event::{self, DedupKey, EventTime};

const MAX: usize = event::DEFAULT_MAX_MESSAGE_BYTES;

/// `event::parse` on arbitrary bytes: total (the caller sees a panic otherwise),
/// deterministic, and every accepted event consistent with the contract (key, canonical
/// time, partition date, payload, re-encoding).
pub(crate) fn check_message(data: &[u8]) {
    let first = event::parse(Some(data), MAX);
    // Pure: the same bytes give the same answer (every instance, every restart).
    assert_eq!(first, event::parse(Some(data), MAX));
    match first {
        Err(rejection) => {
            assert!(!rejection.message.is_empty(), "a rejection without a reason: {rejection:?}");
            assert!(!rejection.class.as_str().is_empty());
        }
        Ok(e) => {
            // The key is md5 over the fields and the canonical time.
            assert_eq!(e.key, DedupKey::compute(&e.parts[0], &e.parts[1], e.time));
            assert_eq!(e.key, DedupKey::compute_parts(&e.parts, e.time));
            assert_eq!(DedupKey::from_hex(&e.key.to_string()), Some(e.key));
            // The canonical form parses back to the same instant, and the partition date
            // is that instant's UTC date.
            let canonical = e.time.to_string();
            assert_eq!(canonical.len(), 27, "{canonical}");
            assert_eq!(EventTime::parse(&canonical), Ok(e.time), "{canonical}");
            assert_eq!(&canonical[..10], &date_of_days(e.time.days_since_epoch()), "{canonical}");
            assert!(e.parts.len() == 2 && e.parts.iter().all(|p| !p.is_empty()));
            // The payload is the message, whole.
            assert_eq!(e.payload.as_bytes(), data);
            // Spacing and field order do not change the key: re-encode through a JSON
            // value (sorted keys, no spaces) and parse again. (A value cannot hold every
            // valid JSON number: an extra field of 4e0347 is valid JSON, accepted and
            // stored whole, but beyond f64. Found by this target; such input is skipped.)
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
            let again = serde_json::to_vec(&value).unwrap();
            if again.len() <= MAX {
                match event::parse(Some(&again), MAX) {
                    Ok(r) => assert_eq!(r.key, e.key, "re-encoded as {}", String::from_utf8_lossy(&again)),
                    Err(r) => panic!("re-encoded as {} and refused: {r}", String::from_utf8_lossy(&again)),
                }
            }
        }
    }
}

/// `EventTime::parse` on arbitrary text: whatever it accepts has a canonical form that
/// parses back to the same instant, is stable, and keeps microseconds.
pub(crate) fn check_timestamp(text: &str) {
    if let Ok(t) = EventTime::parse(text) {
        let canonical = t.to_string();
        assert_eq!(EventTime::parse(&canonical), Ok(t), "{text:?} -> {canonical}");
        assert_eq!(EventTime::parse(&canonical).unwrap().to_string(), canonical);
        assert_eq!(EventTime::from_micros(t.micros()), Ok(t));
        // The same instant given as epoch milliseconds, when it is a whole millisecond.
        if t.micros() % 1_000 == 0 {
            assert_eq!(EventTime::from_epoch_millis(t.micros() / 1_000), Ok(t));
        }
    }
}

/// `YYYY-MM-DD` of a day number, by a different route than the contract's (a day-by-day
/// walk from a 400-year anchor), so that a shared mistake is unlikely.
fn date_of_days(days: i32) -> String {
    // 146,097 days in 400 years; 0000-03-01 is day -719,468.
    let mut z = i64::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    z -= era * 146_097;
    let mut year = era * 400;
    // Walk years from 0000-03-01 (March-based years: the leap day is the last day).
    loop {
        let next = year + 1; // the March-based year `year` ends on next's Feb 28/29
        let len = if next % 4 == 0 && (next % 100 != 0 || next % 400 == 0) { 366 } else { 365 };
        if z < len {
            break;
        }
        z -= len;
        year += 1;
    }
    let next = year + 1;
    let feb = if next % 4 == 0 && (next % 100 != 0 || next % 400 == 0) { 29 } else { 28 };
    let months = [31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 31, feb]; // March .. February
    let mut m = 0;
    while z >= months[m] {
        z -= months[m];
        m += 1;
    }
    let (y, month) = if m >= 10 { (year + 1, m - 9) } else { (year, m + 3) };
    format!("{y:04}-{month:02}-{:02}", z + 1)
}
