//! Canonical event time and the dedup key.
//!
//! Invariant: two spellings of the same instant give the same [`EventTime`], and so the
//! same [`DedupKey`] for the same user and event type. The key is
//! `md5(user_id 0x1F event_type 0x1F canonical_time)`; the separator keeps (`ab`,`c`)
//! and (`a`,`bc`) apart, which plain concatenation would not.

use std::fmt;

use md5::{Digest, Md5};

use super::reject::quoted;

const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;
/// Byte placed between the key's fields: the ASCII unit separator.
const KEY_SEPARATOR: u8 = 0x1F;

/// Why a timestamp was refused; the message names the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeError {
    /// The text does not have one of the accepted shapes, or a field is out of its range
    /// (month 13, hour 24, February 30th, offset +25:00).
    Malformed(String),
    /// The instant is outside the years 0001 to 9999, which the canonical form can spell.
    OutOfRange(String),
}

/// An instant in UTC with microsecond precision: microseconds since 1970-01-01T00:00:00Z.
///
/// Range: years 0001 to 9999, the years that the canonical four-digit form can spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime(i64);

/// 0001-01-01T00:00:00Z in microseconds since the epoch.
const MIN_MICROS: i64 = -62_135_596_800 * MICROS_PER_SEC;
/// 9999-12-31T23:59:59.999999Z in microseconds since the epoch.
const MAX_MICROS: i64 = 253_402_300_800 * MICROS_PER_SEC - 1;

impl EventTime {
    /// The instant `micros` microseconds after the epoch, if the canonical form can spell it.
    pub fn from_micros(micros: i64) -> Result<Self, TimeError> {
        if (MIN_MICROS..=MAX_MICROS).contains(&micros) {
            Ok(Self(micros))
        } else {
            Err(TimeError::OutOfRange(format!(
                "{micros} microseconds since the epoch is outside the years 0001 to 9999"
            )))
        }
    }

    /// An integer of epoch milliseconds, as the contract allows in place of a string.
    pub fn from_epoch_millis(millis: i64) -> Result<Self, TimeError> {
        millis
            .checked_mul(1_000)
            .ok_or_else(|| TimeError::OutOfRange(format!("{millis} epoch milliseconds is out of range")))
            .and_then(Self::from_micros)
            .map_err(|_| {
                TimeError::OutOfRange(format!("{millis} epoch milliseconds is outside the years 0001 to 9999"))
            })
    }

    /// A decimal number of epoch units (`unit` nanoseconds each), as a JSON number prints
    /// or a string holds it: an optional `-`, digits, and an optional fraction. Precision
    /// past the microsecond is cut toward the past, as the canonical form cuts fraction
    /// digits. `format` names the unit in messages.
    pub(crate) fn from_epoch_decimal(text: &str, unit: i128, format: super::TimeFormat) -> Result<Self, TimeError> {
        let unit_name = format.as_str().strip_prefix("epoch_").unwrap_or_default();
        let malformed = || {
            TimeError::Malformed(format!(
                "timestamp {} is not a number of epoch {}; expected digits with an optional sign and fraction",
                quoted(text),
                match unit_name {
                    "s" => "seconds",
                    "ms" => "milliseconds",
                    "us" => "microseconds",
                    _ => "nanoseconds",
                }
            ))
        };
        let out_of_range = || {
            TimeError::OutOfRange(format!("timestamp {} ({format}) is outside the years 0001 to 9999", quoted(text)))
        };
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || !all_digits(whole)
            || !all_digits(fraction)
            || (digits.contains('.') && fraction.is_empty())
        {
            return Err(malformed());
        }
        // 25 digits of whole units is past the year 9999 in any unit.
        let whole = whole.trim_start_matches('0');
        if whole.len() > 25 {
            return Err(out_of_range());
        }
        let mut nanos: i128 = whole.bytes().fold(0, |n, b| n * 10 + i128::from(b - b'0')) * unit;
        // The fraction's digits worth at least a nanosecond.
        let mut scale = unit;
        for b in fraction.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos += i128::from(b - b'0') * scale;
        }
        // Toward the past: below zero, digits under the nanosecond make the instant
        // earlier than `-nanos`, so a whole microsecond there is cut to the one before.
        let mut micros = if negative { (-nanos).div_euclid(1_000) } else { nanos / 1_000 };
        if negative && nanos % 1_000 == 0 && sub_nanosecond_digits(fraction, unit) {
            micros -= 1;
        }
        let micros = i64::try_from(micros).map_err(|_| out_of_range())?;
        Self::from_micros(micros).map_err(|_| out_of_range())
    }

    /// Parses RFC 3339 (`T`, `t` or a space between date and time; `Z`, `z` or `±HH:MM`;
    /// 1 to 9 fraction digits), or the same without an offset, taken as UTC.
    /// Fraction digits past the sixth are cut, not rounded.
    pub fn parse(text: &str) -> Result<Self, TimeError> {
        let malformed = |why: &str| {
            TimeError::Malformed(format!(
                "timestamp {} {why}; expected RFC 3339 such as 2024-01-01T00:00:00.000Z, \
                 `YYYY-MM-DD HH:MM:SS[.fraction]` as UTC, or integer epoch milliseconds",
                quoted(text)
            ))
        };
        let b = text.as_bytes();
        if b.len() < 19 {
            return Err(malformed("is too short"));
        }
        let year = digits(&b[0..4]).ok_or_else(|| malformed("has no four-digit year"))?;
        if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
            return Err(malformed("is not shaped YYYY-MM-DD HH:MM:SS"));
        }
        if !matches!(b[10], b'T' | b't' | b' ') {
            return Err(malformed("has no `T` or space between date and time"));
        }
        let month = digits(&b[5..7]).ok_or_else(|| malformed("has no two-digit month"))?;
        let day = digits(&b[8..10]).ok_or_else(|| malformed("has no two-digit day"))?;
        let hour = digits(&b[11..13]).ok_or_else(|| malformed("has no two-digit hour"))?;
        let minute = digits(&b[14..16]).ok_or_else(|| malformed("has no two-digit minute"))?;
        let second = digits(&b[17..19]).ok_or_else(|| malformed("has no two-digit second"))?;
        if year == 0 {
            return Err(TimeError::OutOfRange(format!(
                "timestamp {} is in year 0000; the first year is 0001",
                quoted(text)
            )));
        }
        if !(1..=12).contains(&month) {
            return Err(malformed("has a month outside 01 to 12"));
        }
        if day == 0 || day > days_in_month(year, month) {
            return Err(malformed("names a day that its month does not have"));
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(malformed("has an hour, minute or second out of range"));
        }

        let mut rest = &b[19..];
        let mut micros_of_second: i64 = 0;
        if let Some((&b'.', fraction)) = rest.split_first() {
            let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            if len == 0 || len > 9 {
                return Err(malformed("must have 1 to 9 fraction digits"));
            }
            for (i, c) in fraction[..len].iter().enumerate() {
                if i < 6 {
                    micros_of_second = micros_of_second * 10 + i64::from(c - b'0');
                }
            }
            micros_of_second *= 10_i64.pow(6_u32.saturating_sub(len as u32));
            rest = &fraction[len..];
        }

        let offset_secs: i64 = match rest {
            [] | [b'Z'] | [b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let oh = digits(&[*h1, *h2]).ok_or_else(|| malformed("has a malformed offset"))?;
                let om = digits(&[*m1, *m2]).ok_or_else(|| malformed("has a malformed offset"))?;
                if oh > 23 || om > 59 {
                    return Err(malformed("has an offset outside -23:59 to +23:59"));
                }
                let secs = i64::from(oh) * 3600 + i64::from(om) * 60;
                if *sign == b'-' { -secs } else { secs }
            }
            _ => return Err(malformed("has trailing text or a malformed offset")),
        };

        let days = days_from_civil(i64::from(year), month, day);
        let local_secs = days * SECS_PER_DAY + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
        let utc_micros = (local_secs - offset_secs) * MICROS_PER_SEC + micros_of_second;
        Self::from_micros(utc_micros).map_err(|_| {
            TimeError::OutOfRange(format!(
                "timestamp {} falls outside the years 0001 to 9999 once taken to UTC",
                quoted(text)
            ))
        })
    }

    /// Microseconds since the epoch.
    pub fn micros(self) -> i64 {
        self.0
    }

    /// Days since 1970-01-01 of the UTC date: the `event_date` partition value.
    pub fn days_since_epoch(self) -> i32 {
        // The range check in `from_micros` keeps this within ±3,000,000 days.
        self.0.div_euclid(MICROS_PER_SEC * SECS_PER_DAY) as i32
    }

    /// The start (00:00:00 UTC) of the day `days` days after 1970-01-01.
    pub(crate) fn from_days(days: i32) -> Result<Self, TimeError> {
        Self::from_micros(i64::from(days) * SECS_PER_DAY * MICROS_PER_SEC)
    }

    /// Parses a date, `YYYY-MM-DD`, as its start (00:00:00 UTC): an `event_date`
    /// partition value.
    pub fn parse_date(text: &str) -> Result<Self, TimeError> {
        if text.len() != 10 {
            return Err(TimeError::Malformed(format!("date {} is not shaped YYYY-MM-DD", quoted(text))));
        }
        Self::parse(&format!("{text}T00:00:00Z"))
    }

    /// The UTC date, `YYYY-MM-DD`: the text of the `event_date` partition value.
    pub fn date(self) -> String {
        // The canonical form starts with the date.
        let mut text = self.to_string();
        text.truncate(10);
        text
    }
}

impl fmt::Display for EventTime {
    /// The canonical form: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.canonical();
        // Only ASCII digits and separators: always UTF-8.
        f.write_str(std::str::from_utf8(&bytes).map_err(|_| fmt::Error)?)
    }
}

impl EventTime {
    /// The current time (the clock is between 1970 and 9999).
    pub fn now() -> Self {
        let micros =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        Self::from_micros(micros).unwrap_or(Self(0))
    }

    /// The canonical form as bytes, `YYYY-MM-DDTHH:MM:SS.ffffffZ`, formatted by hand: the
    /// key of every event hashes it, and `fmt` machinery costs a fifth of the parse.
    pub fn canonical(self) -> [u8; CANONICAL_LEN] {
        let secs = self.0.div_euclid(MICROS_PER_SEC);
        let micros = self.0.rem_euclid(MICROS_PER_SEC) as u32;
        let days = secs.div_euclid(SECS_PER_DAY);
        let sod = secs.rem_euclid(SECS_PER_DAY) as u32;
        let (y, m, d) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00.000000Z";
        // The range of an EventTime keeps the year in 1..=9999.
        put_digits(&mut out[0..4], y.clamp(0, 9999) as u32);
        put_digits(&mut out[5..7], m);
        put_digits(&mut out[8..10], d);
        put_digits(&mut out[11..13], sod / 3600);
        put_digits(&mut out[14..16], sod / 60 % 60);
        put_digits(&mut out[17..19], sod % 60);
        put_digits(&mut out[20..26], micros);
        out
    }
}

/// Whether `fraction` (of a number of units of `unit` nanoseconds) has non-zero digits
/// below the nanosecond.
fn sub_nanosecond_digits(fraction: &str, unit: i128) -> bool {
    let places = unit.checked_ilog10().unwrap_or(0) as usize;
    fraction.bytes().skip(places).any(|b| b != b'0')
}

/// Length of the canonical form.
const CANONICAL_LEN: usize = 27;

/// Writes `value` as decimal digits filling `out` (zero-padded on the left).
fn put_digits(out: &mut [u8], mut value: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The 16-byte MD5 identity of an event; `Display` gives the lowercase hex form stored
/// as `dedup_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DedupKey(pub [u8; 16]);

impl DedupKey {
    /// `md5(user_id 0x1F event_type 0x1F canonical time)`: the default identity's key.
    pub fn compute(user_id: &str, event_type: &str, time: EventTime) -> Self {
        Self::compute_parts(&[user_id, event_type], time)
    }

    /// `md5(part 0x1F part … 0x1F canonical time)`.
    pub fn compute_parts(parts: &[impl AsRef<str>], time: EventTime) -> Self {
        let canonical = time.canonical();
        let mut md5 = Md5::new();
        for part in parts {
            md5.update(part.as_ref().as_bytes());
            md5.update([KEY_SEPARATOR]);
        }
        md5.update(canonical);
        Self(md5.finalize().into())
    }

    /// Parses the 32-character lowercase or uppercase hex form.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let b = hex.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let mut out = [0_u8; 16];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(Self(out))
    }

    /// The first eight bytes as a big-endian integer: the term an order-independent
    /// checksum of a key set adds up.
    pub(crate) fn prefix_u64(&self) -> u64 {
        let mut first = [0_u8; 8];
        first.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(first)
    }
}

impl fmt::Display for DedupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The value of a run of ASCII digits, or `None` if any byte is not a digit.
fn digits(b: &[u8]) -> Option<u32> {
    b.iter().try_fold(0_u32, |acc, c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')))
}

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canonical(text: &str) -> String {
        EventTime::parse(text).map(|t| t.to_string()).unwrap_or_else(|e| format!("{e:?}"))
    }

    #[test]
    fn offsets_are_taken_to_utc() {
        assert_eq!(canonical("2024-01-01T01:00:00+01:00"), "2024-01-01T00:00:00.000000Z");
        assert_eq!(canonical("2023-12-31T19:00:00-05:00"), "2024-01-01T00:00:00.000000Z");
        assert_eq!(canonical("2024-01-01T05:30:00+05:30"), "2024-01-01T00:00:00.000000Z");
        assert_eq!(canonical("2024-03-01T00:30:00+01:00"), "2024-02-29T23:30:00.000000Z");
        assert_eq!(canonical("2024-01-01T00:00:00-00:00"), "2024-01-01T00:00:00.000000Z");
    }

    #[test]
    fn fraction_digits_past_the_sixth_are_cut_not_rounded() {
        assert_eq!(canonical("2024-01-01T00:00:00.9Z"), "2024-01-01T00:00:00.900000Z");
        assert_eq!(canonical("2024-01-01T00:00:00.12Z"), "2024-01-01T00:00:00.120000Z");
        assert_eq!(canonical("2024-01-01T00:00:00.999999999Z"), "2024-01-01T00:00:00.999999Z");
        assert_eq!(canonical("2024-01-01 00:00:00.0000005"), "2024-01-01T00:00:00.000000Z");
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        for text in [
            "2024-01-01",
            "2024-01-01T00:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00.1234567890Z",
            "2024-13-01T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2024-01-01T00:00:60Z",
            "2024-01-01T00:00:00+25:00",
            "2024-01-01T00:00:00+01:60",
            "2024-01-01T00:00:00+0100",
            "2024-01-01T00:00:00 Z",
            "2024-01-01X00:00:00Z",
            "2024-1-01T00:00:00Z",
            "+2024-01-01T00:00:00Z",
            "２024-01-01T00:00:00Z",
        ] {
            assert!(
                matches!(EventTime::parse(text), Err(TimeError::Malformed(_))),
                "{text} should be malformed, got {:?}",
                EventTime::parse(text)
            );
        }
    }

    #[test]
    fn the_range_is_years_0001_to_9999() {
        assert_eq!(canonical("0001-01-01T00:00:00Z"), "0001-01-01T00:00:00.000000Z");
        assert_eq!(canonical("9999-12-31T23:59:59.999999999Z"), "9999-12-31T23:59:59.999999Z");
        for text in ["0000-01-01T00:00:00Z", "0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-00:01"] {
            assert!(matches!(EventTime::parse(text), Err(TimeError::OutOfRange(_))), "{text}");
        }
        assert!(EventTime::from_epoch_millis(253_402_300_799_999).is_ok());
        assert!(EventTime::from_epoch_millis(253_402_300_800_000).is_err());
        assert!(EventTime::from_epoch_millis(i64::MAX).is_err());
        assert!(EventTime::from_epoch_millis(i64::MIN).is_err());
    }

    #[test]
    fn negative_epoch_millis_are_before_1970() {
        let t = EventTime::from_epoch_millis(-1_000).unwrap();
        assert_eq!(t.to_string(), "1969-12-31T23:59:59.000000Z");
        assert_eq!(t.days_since_epoch(), -1);
        let t = EventTime::from_epoch_millis(-1).unwrap();
        assert_eq!(t.to_string(), "1969-12-31T23:59:59.999000Z");
    }

    #[test]
    fn event_date_is_the_utc_date() {
        let t = EventTime::parse("2024-01-01T23:30:00-01:00").unwrap();
        assert_eq!(t.days_since_epoch(), 19_724); // 2024-01-02
    }

    #[test]
    fn dates_round_trip_through_days() {
        let day = EventTime::parse_date("2024-01-02").unwrap();
        assert_eq!(day.days_since_epoch(), 19_724);
        assert_eq!(EventTime::from_days(19_724).unwrap(), day);
        assert_eq!(day.date(), "2024-01-02");
        assert_eq!(EventTime::from_days(-1).unwrap().date(), "1969-12-31");
        assert!(EventTime::parse_date("2024-01-02T00").is_err());
        assert!(EventTime::parse_date("2024-02-30").is_err());
    }

    #[test]
    fn the_separator_keeps_shifted_fields_apart() {
        let t = EventTime::parse("2024-01-01T00:00:00Z").unwrap();
        assert_ne!(DedupKey::compute("ab", "c", t), DedupKey::compute("a", "bc", t));
    }

    #[test]
    fn hex_round_trips() {
        let t = EventTime::parse("2024-01-01T00:00:00Z").unwrap();
        let key = DedupKey::compute("u1", "click", t);
        assert_eq!(key.to_string(), "0d268ed825d0878afe3a1761a47c13d8");
        assert_eq!(DedupKey::from_hex(&key.to_string()), Some(key));
        assert_eq!(DedupKey::from_hex("0D268ED825D0878AFE3A1761A47C13D8"), Some(key));
        assert_eq!(DedupKey::from_hex("0d26"), None);
        assert_eq!(key.prefix_u64(), 0x0d26_8ed8_25d0_878a);
    }

    proptest! {
        #[test]
        fn canonical_form_parses_back_to_the_same_instant(micros in MIN_MICROS..=MAX_MICROS) {
            let t = EventTime::from_micros(micros).unwrap();
            prop_assert_eq!(EventTime::parse(&t.to_string()).unwrap(), t);
        }

        #[test]
        fn any_offset_names_the_same_instant(
            micros in -10_000_000_000_000_000_i64..10_000_000_000_000_000,
            offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59_i64),
        ) {
            let t = EventTime::from_micros(micros).unwrap();
            let local = EventTime::from_micros(micros + offset_minutes * 60 * MICROS_PER_SEC).unwrap();
            let local = local.to_string();
            let sign = if offset_minutes < 0 { '-' } else { '+' };
            let text = format!(
                "{}{sign}{:02}:{:02}",
                &local[..26],
                offset_minutes.abs() / 60,
                offset_minutes.abs() % 60
            );
            prop_assert_eq!(EventTime::parse(&text).unwrap(), t);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = EventTime::parse(&text);
        }
    }
}
