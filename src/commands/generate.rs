//! `generate`: a JSON-lines file whose distinct, duplicate and invalid counts are known
//! exactly, so every store can be checked against them.
//!
//! Invariant: the same [`Spec`] gives the same bytes, on any machine and any version of
//! the dependencies (the generator is its own SplitMix64, not a library RNG).

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::event::EventTime;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Valid events with distinct dedup keys.
    pub unique: u64,
    /// Exact re-sends of randomly chosen valid lines.
    pub duplicates: u64,
    /// Invalid lines, cycling through the kinds of [`INVALID_KINDS`].
    pub invalid: u64,
    pub seed: u64,
    /// Days of event time the valid events spread over, from 2024-01-01.
    pub days: u32,
    /// Lines in event-time order, as live traffic arrives: each re-send comes within
    /// [`RESEND_WINDOW`] of the events after its original, invalid lines anywhere.
    /// Otherwise the lines are shuffled through the whole file.
    pub time_order: bool,
    /// Every user id a string and every time RFC 3339 text, as a schema whose fields
    /// have one type holds them (`--format protobuf`); otherwise some user ids are
    /// integers and some times epoch milliseconds.
    pub text_fields: bool,
}

/// In time order, how far after its original a re-send may come: this fraction of the
/// file's distinct events (at least one).
pub const RESEND_WINDOW: f64 = 0.01;

impl Spec {
    /// Refuses a spec that cannot be generated: re-sends need something to re-send.
    pub fn check(&self) -> Result<(), String> {
        if self.duplicates > 0 && self.unique == 0 {
            return Err("--duplicates needs --unique of at least 1: re-sends copy earlier events".into());
        }
        Ok(())
    }
}

/// The counts a store should end up with after ingesting the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Expected {
    pub lines: u64,
    pub valid_lines: u64,
    pub distinct_keys: u64,
    pub duplicates: u64,
    pub invalid: u64,
}

/// Why a file could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{0}")]
    Spec(String),
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// What `generate` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateReport {
    pub path: String,
    #[serde(flatten)]
    pub expected: Expected,
}

impl std::fmt::Display for GenerateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.expected;
        writeln!(f, "wrote {}", self.path)?;
        writeln!(f, "lines          {}", e.lines)?;
        writeln!(f, "valid lines    {}", e.valid_lines)?;
        writeln!(f, "distinct keys  {}  (expected delta_rows)", e.distinct_keys)?;
        writeln!(f, "duplicates     {}", e.duplicates)?;
        writeln!(f, "invalid        {}  (expected dlq_records)", e.invalid)
    }
}

/// Checks `spec`, writes its file to `out`, and reports the counts it holds.
pub fn generate_file(spec: &Spec, out: &Path) -> Result<GenerateReport, GenerateError> {
    spec.check().map_err(GenerateError::Spec)?;
    let expected =
        write_file(spec, out).map_err(|source| GenerateError::Write { path: out.display().to_string(), source })?;
    Ok(GenerateReport { path: out.display().to_string(), expected })
}

/// Writes the file described by `spec` and returns the counts it holds.
pub fn write_file(spec: &Spec, out: &Path) -> std::io::Result<Expected> {
    let (lines, expected) = generate(spec);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    for line in &lines {
        w.write_all(line)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(expected)
}

/// The lines of the file (without newlines) and their counts.
///
/// # Panics
/// If `spec` fails [`Spec::check`].
pub fn generate(spec: &Spec) -> (Vec<Vec<u8>>, Expected) {
    assert!(spec.check().is_ok(), "generate called with an unchecked spec");
    let mut rng = SplitMix64(spec.seed);
    let total = spec.unique + spec.duplicates + spec.invalid;
    let mut lines: Vec<Vec<u8>> = Vec::with_capacity(usize::try_from(total).unwrap_or(0));

    // Each event owns one slot of time, so canonical times (and keys) never collide;
    // slots are whole milliseconds so that epoch-millisecond spellings stay exact.
    let span_us = i64::from(spec.days.max(1)) * 86_400_000_000;
    let slot_us = (span_us / i64::try_from(spec.unique.max(1)).unwrap_or(i64::MAX)).max(1_000) / 1_000 * 1_000;
    let base_us = 1_704_067_200_000_000; // 2024-01-01T00:00:00Z
    let users = (spec.unique / 8).max(1);
    for i in 0..spec.unique {
        let ms_in_slot = rng.below(slot_us as u64 / 1_000) as i64;
        let mut t = base_us + i as i64 * slot_us + ms_in_slot * 1_000;
        let mut style = rng.below(8);
        if spec.text_fields && style == 0 {
            style = 1;
        }
        if style != 0 {
            t += rng.below(1_000) as i64; // sub-millisecond digits, except for epoch millis
        }
        let time = EventTime::from_micros(t).expect("generated times are in 2024");
        let user = rng.below(users);
        let user_json =
            if rng.below(10) == 0 && !spec.text_fields { user.to_string() } else { format!("\"user_{user}\"") };
        let event_type = EVENT_TYPES[rng.below(EVENT_TYPES.len() as u64) as usize];
        let ts_json = spell(time, style, &mut rng);
        let line = format!(
            r#"{{"user_id":{user_json},"event_type":"{event_type}","timestamp":{ts_json},"session_id":"s{:08x}","value":{}}}"#,
            rng.next_u64() as u32,
            rng.below(100_000)
        );
        lines.push(line.into_bytes());
    }
    // Where each line goes in time order: the i-th event at i·2^10, a re-send a little
    // after its original, an invalid line anywhere.
    let mut at: Vec<u64> = if spec.time_order { (0..spec.unique).map(|i| i << 10).collect() } else { Vec::new() };
    let mut order_rng = SplitMix64(spec.seed ^ 0x9e37_79b9_7f4a_7c15);
    let window = ((spec.unique as f64 * RESEND_WINDOW) as u64).max(1) << 10;
    for _ in 0..spec.duplicates {
        // `unique > 0` whenever `duplicates > 0`: checked by `Spec::check`.
        let original = rng.below(spec.unique) as usize;
        lines.push(lines[original].clone());
        if spec.time_order {
            at.push(((original as u64) << 10) + 1 + order_rng.below(window));
        }
    }
    for k in 0..spec.invalid {
        let kind = INVALID_KINDS[(k % INVALID_KINDS.len() as u64) as usize];
        let mut line = kind(k).into_bytes();
        if k % INVALID_KINDS.len() as u64 == 0 {
            line.extend_from_slice(b"\xff\xfe not utf-8"); // the not-UTF-8 kind
        }
        lines.push(line);
        if spec.time_order {
            at.push(order_rng.below(spec.unique.max(1) << 10));
        }
    }
    if spec.time_order {
        // A stable sort: lines at the same place keep the order they were made in.
        let mut placed: Vec<(u64, Vec<u8>)> = at.into_iter().zip(lines).collect();
        placed.sort_by_key(|(at, _)| *at);
        lines = placed.into_iter().map(|(_, line)| line).collect();
    } else {
        // Fisher-Yates, so re-sends and invalid lines are spread through the file.
        for i in (1..lines.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            lines.swap(i, j);
        }
    }
    let expected = Expected {
        lines: total,
        valid_lines: spec.unique + spec.duplicates,
        distinct_keys: spec.unique,
        duplicates: spec.duplicates,
        invalid: spec.invalid,
    };
    (lines, expected)
}

/// A table's history for benchmarks: `total` events spread evenly, in index order, over
/// `days` days from 2024-01-01, so that the events of consecutive indices are close in
/// time, as a stream writes them. Event `i` of a namespace is the same on every call
/// (its user, type and time come from `seed`, the namespace and `i`), so a benchmark can
/// write the history straight into a table and later send some of its events again, or
/// new events of another namespace on the same dates.
#[derive(Debug, Clone, Copy)]
pub struct History {
    pub total: u64,
    pub days: u32,
    pub seed: u64,
}

/// One event of a [`History`].
#[derive(Debug, Clone)]
pub struct HistoryEvent {
    pub user_id: String,
    pub event_type: &'static str,
    pub time: EventTime,
    /// The event as a JSON line.
    pub line: String,
}

impl History {
    const START_US: i64 = 1_704_067_200_000_000; // 2024-01-01T00:00:00Z
    const DAY_US: i64 = 86_400_000_000;

    fn slot_us(&self) -> i64 {
        (i64::from(self.days.max(1)) * Self::DAY_US / i64::try_from(self.total.max(1)).unwrap_or(i64::MAX)).max(1)
    }

    /// Event `i` of `namespace` (a prefix of its user ids: `h` for the history itself).
    pub fn event(&self, namespace: &str, i: u64) -> HistoryEvent {
        let salt = namespace.bytes().fold(self.seed, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let mut rng = SplitMix64(salt ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let slot = self.slot_us();
        let micros = Self::START_US + i as i64 * slot + rng.below(slot as u64) as i64;
        // A history reaching past year 9999 (millions of days) repeats the epoch there.
        let time = EventTime::from_micros(micros).unwrap_or_else(|_| time_zero());
        let user_id = format!("{namespace}{}", rng.below((self.total / 8).max(1)));
        let event_type = EVENT_TYPES[rng.below(EVENT_TYPES.len() as u64) as usize];
        let canonical = time.canonical();
        let line = format!(
            r#"{{"user_id":"{user_id}","event_type":"{event_type}","timestamp":"{}","value":{}}}"#,
            String::from_utf8_lossy(&canonical),
            rng.below(100_000)
        );
        HistoryEvent { user_id, event_type, time, line }
    }

    /// The indices of the events of day `day` (0 = 2024-01-01), by their slots' start.
    pub fn day(&self, day: u32) -> std::ops::Range<u64> {
        let slot = self.slot_us() as u64;
        let start = |d: u32| (u64::from(d) * Self::DAY_US as u64).div_ceil(slot).min(self.total);
        start(day)..start(day + 1)
    }
}

fn time_zero() -> EventTime {
    EventTime::from_micros(0).unwrap_or_else(|_| unreachable!("the epoch is within years 0001 to 9999"))
}

const EVENT_TYPES: [&str; 6] = ["click", "view", "purchase", "signup", "add_to_cart", "logout"];

/// One of the contract's spellings of `time`: epoch millis (style 0), RFC 3339 with
/// `Z` or an offset, with 0 to 9 fraction digits, or the space form without offset.
fn spell(time: EventTime, style: u64, rng: &mut SplitMix64) -> String {
    let canonical = time.to_string(); // YYYY-MM-DDTHH:MM:SS.ffffffZ
    match style {
        0 => (time.micros() / 1_000).to_string(),
        1 => format!("\"{canonical}\""),
        2 => format!("\"{}{:03}Z\"", &canonical[..26], rng.below(1_000)), // 9 digits, last 3 cut
        3 => format!("\"{} {}\"", &canonical[..10], &canonical[11..26]),
        _ => {
            let offset_min = [-480_i64, -300, 60, 330, 540][rng.below(5) as usize];
            let local = EventTime::from_micros(time.micros() + offset_min * 60_000_000)
                .expect("offsets keep 2024 times in range")
                .to_string();
            let sign = if offset_min < 0 { '-' } else { '+' };
            format!("\"{}{sign}{:02}:{:02}\"", &local[..26], offset_min.abs() / 60, offset_min.abs() % 60)
        }
    }
}

/// Invalid lines, one per kind of the contract; the index makes each line unique.
const INVALID_KINDS: [fn(u64) -> String; 12] = [
    |k| format!("{{\"user_id\":\"bad{k}\",\"event_type\":\"click\",\"timestamp\":\"2024-01-01T00:00:00Z\",\"note\":\""),
    |k| format!("{{not json {k}"),
    |k| format!("[{k},\"click\",\"2024-01-01T00:00:00Z\"]"),
    |k| format!("{{\"event_type\":\"click\",\"timestamp\":\"2024-01-01T00:00:00Z\",\"n\":{k}}}"),
    |k| format!("{{\"user_id\":\"\",\"event_type\":\"click\",\"timestamp\":\"2024-01-01T00:00:00Z\",\"n\":{k}}}"),
    |k| format!("{{\"user_id\":\"bad{k}\",\"event_type\":\"click\",\"timestamp\":\"2024-02-30T00:00:00Z\"}}"),
    |k| format!("{{\"user_id\":\"bad{k}\",\"event_type\":\"click\",\"timestamp\":1704067200000.0}}"),
    |k| format!("{{\"user_id\":\"bad{k}\",\"event_type\":\"click\",\"timestamp\":99999999999999999}}"),
    |k| format!("{{\"user_id\":true,\"event_type\":\"click\",\"timestamp\":\"2024-01-01T00:00:00Z\",\"n\":{k}}}"),
    |k| format!("{{\"user_id\":\"bad{k}\",\"user_id\":\"dup\",\"event_type\":\"click\",\"timestamp\":0}}"),
    |k| format!("{{\"user_id\":\"bad{k}\",\"event_type\":null,\"timestamp\":0}}"),
    |k| format!("\"just a string {k}\""),
];

/// SplitMix64: tiny, fast and fixed forever, so a seed always means the same file (the
/// torture tests use it for their seeded choices too).
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::event::{self, DEFAULT_MAX_MESSAGE_BYTES};

    const SAMPLE: Spec =
        Spec { unique: 5_000, duplicates: 700, invalid: 130, seed: 7, days: 3, time_order: false, text_fields: false };

    #[test]
    fn text_fields_spell_every_id_and_time_as_text_with_the_same_counts() {
        let (plain, expected) = generate(&SAMPLE);
        let (text, expected_text) = generate(&Spec { text_fields: true, ..SAMPLE });
        assert_eq!(expected, expected_text);
        let values = |lines: &[Vec<u8>]| -> Vec<serde_json::Value> {
            lines.iter().filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok()).collect()
        };
        let numbers = |events: &[serde_json::Value], field: &str| {
            events.iter().filter(|e| e.get("session_id").is_some() && e[field].is_number()).count()
        };
        let (plain, text) = (values(&plain), values(&text));
        assert!(numbers(&plain, "user_id") > 0 && numbers(&plain, "timestamp") > 0, "plain has numeric spellings");
        assert_eq!((numbers(&text, "user_id"), numbers(&text, "timestamp")), (0, 0), "every valid event as text");
        let keys = |lines: &[Vec<u8>]| -> std::collections::HashSet<String> {
            lines
                .iter()
                .filter_map(|l| event::parse(Some(l), DEFAULT_MAX_MESSAGE_BYTES).ok())
                .map(|e| e.key.to_string())
                .collect()
        };
        assert_eq!(keys(&generate(&Spec { text_fields: true, ..SAMPLE }).0).len() as u64, expected.distinct_keys);
    }

    #[test]
    fn the_file_holds_exactly_the_counts_it_claims() {
        let (lines, expected) = generate(&SAMPLE);
        assert_eq!(lines.len() as u64, expected.lines);
        let mut keys = HashSet::new();
        let (mut valid, mut invalid) = (0, 0);
        for line in &lines {
            assert!(!line.contains(&b'\n'));
            match event::parse(Some(line), DEFAULT_MAX_MESSAGE_BYTES) {
                Ok(e) => {
                    valid += 1;
                    keys.insert(e.key);
                }
                Err(_) => invalid += 1,
            }
        }
        assert_eq!(valid, expected.valid_lines);
        assert_eq!(invalid, expected.invalid);
        assert_eq!(keys.len() as u64, expected.distinct_keys);
        assert_eq!(
            expected,
            Expected { lines: 5_830, valid_lines: 5_700, distinct_keys: 5_000, duplicates: 700, invalid: 130 }
        );
    }

    #[test]
    fn every_invalid_kind_is_refused() {
        let spec = Spec {
            unique: 0,
            duplicates: 0,
            invalid: INVALID_KINDS.len() as u64 * 2,
            seed: 1,
            days: 1,
            time_order: false,
            text_fields: false,
        };
        let (lines, _) = generate(&spec);
        let mut classes = HashSet::new();
        for line in &lines {
            let r = event::parse(Some(line), DEFAULT_MAX_MESSAGE_BYTES).expect_err("invalid line accepted");
            classes.insert(r.class);
        }
        assert!(classes.len() >= 9, "only {classes:?}");
    }

    #[test]
    fn time_order_holds_the_same_lines_in_event_time() {
        let shuffled = SAMPLE;
        let (mut a, expected) = generate(&shuffled);
        let (mut b, expected_b) = generate(&Spec { time_order: true, ..shuffled });
        assert_eq!(expected, expected_b);
        // First sightings come in event time; a re-send after its original, within the window.
        let window = (shuffled.unique as f64 * RESEND_WINDOW) as usize;
        let mut first: std::collections::HashMap<_, usize> = std::collections::HashMap::new();
        let (mut last, mut resends, mut invalid) = (None, 0, 0);
        for line in &b {
            let Ok(e) = event::parse(Some(line), DEFAULT_MAX_MESSAGE_BYTES) else {
                invalid += 1;
                continue;
            };
            match first.get(&e.key) {
                None => {
                    assert!(last <= Some(e.time), "{:?} after {last:?}", e.time);
                    last = Some(e.time);
                    first.insert(e.key, first.len());
                }
                Some(&n) => {
                    resends += 1;
                    assert!(first.len() - n <= window + 1, "a re-send {} events after its original", first.len() - n);
                }
            }
        }
        assert_eq!(
            (first.len() as u64, resends, invalid),
            (expected.distinct_keys, expected.duplicates, expected.invalid)
        );
        a.sort();
        b.sort();
        assert_eq!(a, b, "time order changes the order of the lines, nothing else");
    }

    #[test]
    fn the_same_seed_gives_the_same_file_and_another_seed_does_not() {
        let spec =
            Spec { unique: 300, duplicates: 30, invalid: 12, seed: 42, days: 2, time_order: false, text_fields: false };
        assert_eq!(generate(&spec).0, generate(&spec).0);
        assert_ne!(generate(&spec).0, generate(&Spec { seed: 43, ..spec }).0);
    }

    #[test]
    fn dense_files_keep_keys_distinct() {
        // More events than milliseconds in the span: slots stay at least 1 ms wide.
        let spec =
            Spec { unique: 20_000, duplicates: 0, invalid: 0, seed: 3, days: 0, time_order: false, text_fields: false };
        let (lines, _) = generate(&spec);
        let keys: HashSet<_> =
            lines.iter().map(|l| event::parse(Some(l), DEFAULT_MAX_MESSAGE_BYTES).unwrap().key).collect();
        assert_eq!(keys.len(), 20_000);
    }
}
