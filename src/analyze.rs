//! Batch-log analysis: per-batch and whole-run statistics over the records of
//! [`crate::batch_log`], printed as a table, serialised as JSON, or drawn as one
//! self-contained HTML page.
//!
//! Invariant: [`analyze`] is a pure function of the records and never fails or panics on
//! odd input: a record whose times do not parse is kept (its duration comes from its
//! phases, its start from the previous batch's end), and every number it reports is
//! finite (0 where a ratio has nothing to divide by), so the JSON always serialises.
//!
//! Time is read from `started_at` and `ended_at`: a batch's duration runs from the start
//! of its collect wait to the line being written, so it includes the wait for messages;
//! `processing_ms` is the part after the collect phase. The processor writes no record
//! for a trigger interval without messages, so the time between one batch's end and the
//! next one's start is idle time ([`IdleGaps`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

use chrono::{DateTime, Timelike, Utc};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use crate::batch_log::{BatchRecord, Phases};

/// A gap between two batches shorter than this is the processor's own overhead, not idle
/// time.
const IDLE_GAP_S: f64 = 1.0;

/// Above this many batches the table shows only the first and last [`TABLE_EDGE`].
const TABLE_LIMIT: usize = 200;
const TABLE_EDGE: usize = 100;

/// Chart size in pixels (the page scales it down to the window's width).
const CHART_SIZE: (u32, u32) = (1160, 330);

/// Up to this many batches, each data point is also drawn as a dot (a run of one batch
/// would otherwise draw nothing visible).
const DOTS_UP_TO: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("drawing the {chart} chart failed: {message}")]
    Chart { chart: &'static str, message: String },
}

/// Everything `analyze` reports about a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every batch, in start order.
    pub batches: Vec<BatchStats>,
    pub summary: Summary,
}

/// One batch's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BatchStats {
    pub batch_id: i64,
    /// As in the log (RFC 3339, UTC).
    pub started_at: String,
    pub ended_at: String,
    /// Seconds from the first batch's start to this one's: the x axis of the charts.
    pub offset_s: f64,
    /// True when `started_at` or `ended_at` did not parse: the duration is then the sum
    /// of the phases and the start is the previous batch's end.
    pub estimated_times: bool,
    pub events_in: u64,
    pub invalid: u64,
    pub in_batch_duplicates: u64,
    pub stored_duplicates: u64,
    /// `None` when the log does not know it (a commit that reported an error but happened).
    pub inserted: Option<u64>,
    /// Messages skipped because another writer had already stored their offsets.
    pub already_committed: u64,
    /// Offsets the broker skipped inside the batch's ranges.
    pub offset_gaps: u64,
    /// `ended_at - started_at`: includes the collect wait.
    pub duration_ms: f64,
    /// `duration_ms` without the collect phase (never below 0).
    pub processing_ms: f64,
    /// `events_in` per second of `duration_ms`.
    pub events_per_sec: f64,
    /// Duplicates (in-batch and stored) per valid event (`events_in - invalid`); 0 with
    /// no valid event.
    pub duplicate_ratio: f64,
    pub phases: Phases,
    pub events_per_partition: BTreeMap<i32, u64>,
    /// Largest partition count over the mean of the partitions present in the batch:
    /// 1.0 is perfectly even; 0 when the batch has no events.
    pub partition_max_over_mean: f64,
    /// Fisher-Pearson skewness (g1) of the partition counts; 0 with fewer than three
    /// partitions or equal counts.
    pub partition_skewness: f64,
    pub attempts: u32,
    /// Attempts that lost a commit race to another writer (part of `attempts`).
    pub conflicts: u32,
    pub delta_version: u64,
}

impl BatchStats {
    /// Seconds from the first batch's start to this one's end.
    fn end_s(&self) -> f64 {
        self.offset_s + self.duration_ms / 1_000.0
    }

    fn valid(&self) -> u64 {
        self.events_in.saturating_sub(self.invalid)
    }

    /// In-batch duplicates per valid event.
    fn in_batch_ratio(&self) -> f64 {
        ratio(self.in_batch_duplicates as f64, self.valid() as f64)
    }

    /// Already-stored duplicates per valid event.
    fn stored_ratio(&self) -> f64 {
        ratio(self.stored_duplicates as f64, self.valid() as f64)
    }
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub batches: usize,
    pub first_started_at: Option<String>,
    pub last_ended_at: Option<String>,
    /// From the first batch's start to the last one's end, idle gaps included.
    pub wall_s: f64,
    pub totals: Totals,
    /// `totals.events_in / wall_s`.
    pub events_per_sec_overall: f64,
    pub duration_ms: Distribution,
    pub processing_ms: Distribution,
    /// Of the batches' own `events_per_sec`.
    pub events_per_sec: Distribution,
    /// Fisher-Pearson skewness (g1) of `events_in` over the batches: near 0 for even
    /// batches, large and positive for occasional spikes (a backfill, then a trickle).
    pub batch_size_skewness: f64,
    /// Events per Kafka partition over the run.
    pub partition_totals: BTreeMap<i32, u64>,
    /// Largest partition total over the mean partition total (1.0 = even).
    pub partition_max_over_mean: f64,
    pub idle_gaps: IdleGaps,
    pub phase_share: PhaseShare,
    pub attempts: u64,
    pub conflicts: u64,
}

/// Counts summed over the batches.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub events_in: u64,
    pub invalid: u64,
    pub in_batch_duplicates: u64,
    pub stored_duplicates: u64,
    /// The sum of the known `inserted` counts.
    pub inserted: u64,
    /// Batches whose `inserted` is not known (not part of `inserted`).
    pub batches_with_unknown_inserted: u64,
    /// Messages skipped because another writer had already stored their offsets.
    pub already_committed: u64,
    /// Offsets the broker skipped inside the batches' ranges.
    pub offset_gaps: u64,
}

/// Mean, median, nearest-rank 95th percentile and maximum; all 0 over no values.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Distribution {
    pub mean: f64,
    pub median: f64,
    pub p95: f64,
    pub max: f64,
}

/// Times between one batch's end and the next one's start of at least one second: the
/// processor was polling in empty trigger intervals (it logs no record for those).
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleGaps {
    pub count: usize,
    pub total_s: f64,
    pub longest_s: f64,
}

/// The fraction of the batches' total duration spent in each phase.
///
/// The shares overlap, so they do not add up to 1: `parse` is part of `collect`, and
/// `write` (the new rows' data files) runs concurrently with `produce`. `other` is the
/// rest: duration not covered by collect, dedup, reload, check, the longer of produce and
/// write, and commit (retry back-offs, bookkeeping, the batch-log line).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseShare {
    pub collect: f64,
    pub parse: f64,
    pub dedup: f64,
    pub reload: f64,
    pub check: f64,
    pub produce: f64,
    pub write: f64,
    pub commit: f64,
    pub other: f64,
}

/// Computes the report of the records (in log order; sorted here by start time in case
/// the log interleaves writers).
pub fn analyze(records: &[BatchRecord]) -> Report {
    let batches = timeline(records);
    let summary = summarise(&batches);
    Report { batches, summary }
}

/// A batch log time (RFC 3339), in microseconds since the epoch.
pub(crate) fn micros(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_micros())
}

/// The wall time a batch's phases account for (parse inside collect, write alongside
/// produce): its duration when its times are unknown.
fn phases_ms(p: &Phases) -> f64 {
    p.collect_ms + p.dedup_ms + p.reload_ms + p.check_ms + p.produce_ms.max(p.write_ms) + p.commit_ms
}

/// Sorts the records by start and places them on one time axis.
fn timeline(records: &[BatchRecord]) -> Vec<BatchStats> {
    // A record whose start does not parse stays right after its predecessor in the log.
    let mut keyed = Vec::with_capacity(records.len());
    let mut previous_key = i64::MIN;
    for (index, record) in records.iter().enumerate() {
        let start = micros(&record.started_at);
        let key = start.unwrap_or(previous_key);
        previous_key = key;
        let tie = if start.is_some() { (0, record.batch_id, index) } else { (1, 0, index) };
        keyed.push(((key, tie), record, start));
    }
    keyed.sort_by_key(|(key, _, _)| *key);

    let mut origin: Option<i64> = None;
    let mut previous_end_s = 0.0_f64;
    let mut out = Vec::with_capacity(keyed.len());
    for (_, record, start) in keyed {
        let end = micros(&record.ended_at);
        let measured = match (start, end) {
            (Some(s), Some(e)) if e >= s => Some((e - s) as f64 / 1_000.0),
            _ => None,
        };
        let duration_ms = measured.unwrap_or_else(|| phases_ms(&record.phases)).max(0.0);
        let offset_s = match (start, origin) {
            (Some(s), Some(o)) => (s - o) as f64 / 1e6,
            (Some(s), None) => {
                // The first parsed start: earlier (unparsed) batches keep their estimates.
                origin = Some(s - (previous_end_s * 1e6) as i64);
                previous_end_s
            }
            (None, _) => previous_end_s,
        };
        previous_end_s = offset_s + duration_ms / 1_000.0;
        out.push(batch_stats(record, offset_s, duration_ms, measured.is_none()));
    }
    out
}

fn batch_stats(r: &BatchRecord, offset_s: f64, duration_ms: f64, estimated_times: bool) -> BatchStats {
    let valid = r.events_in.saturating_sub(r.invalid);
    let counts: Vec<f64> = r.events_per_partition.values().map(|&c| c as f64).collect();
    BatchStats {
        batch_id: r.batch_id,
        started_at: r.started_at.clone(),
        ended_at: r.ended_at.clone(),
        offset_s,
        estimated_times,
        events_in: r.events_in,
        invalid: r.invalid,
        in_batch_duplicates: r.in_batch_duplicates,
        stored_duplicates: r.stored_duplicates,
        inserted: r.inserted,
        already_committed: r.already_committed,
        offset_gaps: r.offset_gaps,
        duration_ms,
        processing_ms: (duration_ms - r.phases.collect_ms).max(0.0),
        events_per_sec: ratio(r.events_in as f64, duration_ms / 1_000.0),
        duplicate_ratio: ratio((r.in_batch_duplicates + r.stored_duplicates) as f64, valid as f64),
        phases: r.phases.clone(),
        events_per_partition: r.events_per_partition.clone(),
        partition_max_over_mean: max_over_mean(&counts),
        partition_skewness: skewness(&counts),
        attempts: r.attempts,
        conflicts: r.conflicts,
        delta_version: r.delta_version,
    }
}

fn summarise(batches: &[BatchStats]) -> Summary {
    let mut totals = Totals::default();
    let mut partition_totals = BTreeMap::<i32, u64>::new();
    let (mut attempts, mut conflicts) = (0_u64, 0_u64);
    for b in batches {
        totals.events_in += b.events_in;
        totals.invalid += b.invalid;
        totals.in_batch_duplicates += b.in_batch_duplicates;
        totals.stored_duplicates += b.stored_duplicates;
        totals.already_committed += b.already_committed;
        totals.offset_gaps += b.offset_gaps;
        match b.inserted {
            Some(n) => totals.inserted += n,
            None => totals.batches_with_unknown_inserted += 1,
        }
        for (p, n) in &b.events_per_partition {
            *partition_totals.entry(*p).or_default() += n;
        }
        attempts += u64::from(b.attempts);
        conflicts += u64::from(b.conflicts);
    }
    let last = batches.iter().reduce(|a, b| if b.end_s() >= a.end_s() { b } else { a });
    let wall_s = last.map(BatchStats::end_s).unwrap_or(0.0);

    let mut gaps = IdleGaps::default();
    for gap in idle_gaps(batches) {
        let length = gap.to_s - gap.from_s;
        gaps.count += 1;
        gaps.total_s += length;
        gaps.longest_s = gaps.longest_s.max(length);
    }

    let total_ms: f64 = batches.iter().map(|b| b.duration_ms).sum();
    let share = |f: fn(&BatchStats) -> f64| ratio(batches.iter().map(f).sum(), total_ms);
    let phase_share = PhaseShare {
        collect: share(|b| b.phases.collect_ms),
        parse: share(|b| b.phases.parse_ms),
        dedup: share(|b| b.phases.dedup_ms),
        reload: share(|b| b.phases.reload_ms),
        check: share(|b| b.phases.check_ms),
        produce: share(|b| b.phases.produce_ms),
        write: share(|b| b.phases.write_ms),
        commit: share(|b| b.phases.commit_ms),
        other: share(|b| (b.duration_ms - phases_ms(&b.phases)).max(0.0)),
    };

    let values = |f: fn(&BatchStats) -> f64| batches.iter().map(f).collect::<Vec<_>>();
    let partition_counts: Vec<f64> = partition_totals.values().map(|&c| c as f64).collect();
    Summary {
        batches: batches.len(),
        first_started_at: batches.first().map(|b| b.started_at.clone()),
        last_ended_at: last.map(|b| b.ended_at.clone()),
        wall_s,
        events_per_sec_overall: ratio(totals.events_in as f64, wall_s),
        totals,
        duration_ms: distribution(&values(|b| b.duration_ms)),
        processing_ms: distribution(&values(|b| b.processing_ms)),
        events_per_sec: distribution(&values(|b| b.events_per_sec)),
        batch_size_skewness: skewness(&values(|b| b.events_in as f64)),
        partition_max_over_mean: max_over_mean(&partition_counts),
        partition_totals,
        idle_gaps: gaps,
        phase_share,
        attempts,
        conflicts,
    }
}

/// Idle time between two batches: `next` is the index of the batch after it.
struct Gap {
    next: usize,
    from_s: f64,
    to_s: f64,
}

/// The idle gaps (at least [`IDLE_GAP_S`]) between consecutive batches.
fn idle_gaps(batches: &[BatchStats]) -> Vec<Gap> {
    (1..batches.len())
        .map(|next| Gap { next, from_s: batches[next - 1].end_s(), to_s: batches[next].offset_s })
        .filter(|gap| gap.to_s - gap.from_s >= IDLE_GAP_S)
        .collect()
}

/// `a / b`, or 0 when that is not a finite number (nothing to divide by).
fn ratio(a: f64, b: f64) -> f64 {
    let r = a / b;
    if r.is_finite() { r } else { 0.0 }
}

fn mean(values: &[f64]) -> f64 {
    ratio(values.iter().sum(), values.len() as f64)
}

/// Mean, median (the mean of the middle two for an even count), nearest-rank p95, max.
fn distribution(values: &[f64]) -> Distribution {
    if values.is_empty() {
        return Distribution::default();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    // Nearest rank: the smallest value with at least 95 % of the values at or below it.
    let rank = (n * 95).div_ceil(100).max(1);
    Distribution { mean: mean(&sorted), median, p95: sorted[rank - 1], max: sorted[n - 1] }
}

/// Fisher-Pearson coefficient of skewness, g1 = m3 / m2^(3/2) with the biased central
/// moments; 0 with fewer than three values or no spread.
fn skewness(values: &[f64]) -> f64 {
    if values.len() < 3 {
        return 0.0;
    }
    let m = mean(values);
    let moment = |k: i32| mean(&values.iter().map(|v| (v - m).powi(k)).collect::<Vec<_>>());
    let m2 = moment(2);
    if m2 <= 0.0 {
        return 0.0;
    }
    ratio(moment(3), m2.powf(1.5))
}

/// The largest value over the mean (1.0 = even); 0 when there is nothing.
fn max_over_mean(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(0.0, f64::max);
    ratio(max, mean(values))
}

/// `HH:MM:SS.mmm` (UTC) of an RFC 3339 time, or `?`.
fn time_of_day(s: &str) -> String {
    match DateTime::parse_from_rfc3339(s) {
        Ok(t) => {
            let t = t.with_timezone(&Utc);
            format!("{:02}:{:02}:{:02}.{:03}", t.hour(), t.minute(), t.second(), t.nanosecond() / 1_000_000 % 1_000)
        }
        Err(_) => "?".to_owned(),
    }
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

impl Report {
    /// The summary as labelled lines: one source for the table and the page.
    fn summary_rows(&self) -> Vec<(&'static str, String)> {
        let s = &self.summary;
        let t = &s.totals;
        let dist = |d: &Distribution, decimals: usize| {
            format!(
                "mean {:.*}  median {:.*}  p95 {:.*}  max {:.*}",
                decimals, d.mean, decimals, d.median, decimals, d.p95, decimals, d.max
            )
        };
        let unknown = match t.batches_with_unknown_inserted {
            0 => String::new(),
            n => format!(" (+ {n} batches with an unknown count)"),
        };
        let partitions = if s.partition_totals.is_empty() {
            "none".to_owned()
        } else {
            let each: Vec<String> = s
                .partition_totals
                .iter()
                .map(|(p, n)| format!("{p}: {n} ({})", percent(ratio(*n as f64, t.events_in as f64))))
                .collect();
            format!("{}; max/mean {:.3}", each.join(", "), s.partition_max_over_mean)
        };
        let p = &s.phase_share;
        vec![
            ("batches", s.batches.to_string()),
            ("first start", s.first_started_at.clone().unwrap_or_else(|| "-".to_owned())),
            ("last end", s.last_ended_at.clone().unwrap_or_else(|| "-".to_owned())),
            ("wall time", format!("{:.3} s", s.wall_s)),
            ("events in", t.events_in.to_string()),
            ("invalid", t.invalid.to_string()),
            ("duplicates", format!("{} in-batch, {} already stored", t.in_batch_duplicates, t.stored_duplicates)),
            ("inserted", format!("{}{unknown}", t.inserted)),
            ("skipped", format!("{} already committed, {} offset gaps", t.already_committed, t.offset_gaps)),
            ("events/s overall", format!("{:.1}", s.events_per_sec_overall)),
            ("batch duration ms", dist(&s.duration_ms, 1)),
            ("processing ms", dist(&s.processing_ms, 1)),
            ("events/s per batch", dist(&s.events_per_sec, 1)),
            ("batch size skewness", format!("{:.3}", s.batch_size_skewness)),
            ("partitions", partitions),
            (
                "idle gaps (>= 1 s)",
                format!(
                    "{}, total {:.3} s, longest {:.3} s",
                    s.idle_gaps.count, s.idle_gaps.total_s, s.idle_gaps.longest_s
                ),
            ),
            (
                "phase share",
                format!(
                    "collect {} (parse {} of it), dedup {}, reload {}, check {}, produce {} \
                     (write {} alongside), commit {}, other {}",
                    percent(p.collect),
                    percent(p.parse),
                    percent(p.dedup),
                    percent(p.reload),
                    percent(p.check),
                    percent(p.produce),
                    percent(p.write),
                    percent(p.commit),
                    percent(p.other)
                ),
            ),
            ("attempts", format!("{} ({} lost a commit race)", s.attempts, s.conflicts)),
        ]
    }

    /// A fixed-width table, one line per batch (the first and last 100 when there are
    /// more than 200), then the summary.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail: the `fmt::Result`s below are always Ok.
        let _ = writeln!(
            out,
            "{:>5} {:>16} {:>12} {:>8} {:>7} {:>9} {:>10} {:>9} {:>11} {:>10} {:>8} {:>8}",
            "#",
            "batch_id",
            "start (UTC)",
            "in",
            "invalid",
            "dup batch",
            "dup stored",
            "inserted",
            "duration ms",
            "events/s",
            "max/mean",
            "attempts"
        );
        let n = self.batches.len();
        for (i, b) in self.batches.iter().enumerate() {
            if n > TABLE_LIMIT && i == TABLE_EDGE {
                let _ = writeln!(out, "{:>5} … {} batches omitted …", "", n - 2 * TABLE_EDGE);
            }
            if n > TABLE_LIMIT && (TABLE_EDGE..n - TABLE_EDGE).contains(&i) {
                continue;
            }
            let inserted = b.inserted.map_or_else(|| "?".to_owned(), |v| v.to_string());
            let _ = writeln!(
                out,
                "{:>5} {:>16} {:>12} {:>8} {:>7} {:>9} {:>10} {:>9} {:>11.1} {:>10.1} {:>8.3} {:>8}",
                i + 1,
                b.batch_id,
                time_of_day(&b.started_at),
                b.events_in,
                b.invalid,
                b.in_batch_duplicates,
                b.stored_duplicates,
                inserted,
                b.duration_ms,
                b.events_per_sec,
                b.partition_max_over_mean,
                b.attempts
            );
        }
        out.push('\n');
        for (label, value) in self.summary_rows() {
            let _ = writeln!(out, "{label:<20} {value}");
        }
        out
    }

    /// One self-contained HTML page (no external resources): the summary and five
    /// charts over the run's time, as inline SVG. A script writes `<chart id> <data
    /// lines> <their total rendered width>` per chart into `<pre id="render-check">` (the
    /// axes and ticks, 1 px polylines, are not counted), so a
    /// headless browser's DOM dump shows that the charts were laid out.
    pub fn to_html(&self, title: &str) -> Result<String, AnalyzeError> {
        let mut page = String::new();
        let title = escape(title);
        let _ = write!(
            page,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n\
             <style>{STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n<table class=\"summary\">\n"
        );
        for (label, value) in self.summary_rows() {
            let _ = writeln!(page, "<tr><th>{}</th><td>{}</td></tr>", escape(label), escape(&value));
        }
        page.push_str("</table>\n");
        let time = TimeAxis::of(self);
        for chart in self.charts() {
            let svg = chart.draw(&time)?;
            let _ = write!(page, "<div class=\"chart\" id=\"{}\">\n{svg}\n<div class=\"legend\">", chart.id);
            for s in &chart.series {
                let _ = write!(
                    page,
                    "<span class=\"key\"><i style=\"background:{}\"></i>{}</span>",
                    hex(&s.color),
                    escape(&s.name)
                );
            }
            if !time.gaps.is_empty() {
                let _ = write!(
                    page,
                    "<span class=\"key\"><i class=\"idle\" style=\"background:{}\"></i>idle (no batch for {IDLE_GAP_S} s \
                     or more)</span>",
                    hex(&IDLE_SHADE)
                );
            }
            page.push_str("</div>\n</div>\n");
        }
        let _ = write!(
            page,
            "<details><summary>Per-batch table</summary><pre class=\"table\">{}</pre></details>\n\
             <pre id=\"render-check\"></pre>\n<script>{SCRIPT}</script>\n</body>\n</html>\n",
            escape(&self.to_table())
        );
        Ok(page)
    }

    fn charts(&self) -> Vec<Chart> {
        let b = &self.batches;
        let line = |name: &str, color: RGBColor, f: &dyn Fn(&BatchStats) -> f64| Series {
            name: name.to_owned(),
            color,
            points: b.iter().map(|x| (x.offset_s, f(x))).collect(),
        };
        let partitions: Vec<i32> = self.summary.partition_totals.keys().copied().collect();
        let partition_series = partitions
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let p = *p;
                line(&format!("partition {p}"), color(i), &move |x: &BatchStats| {
                    x.events_per_partition.get(&p).copied().unwrap_or(0) as f64
                })
            })
            .collect();
        let phases: [(&str, PhaseOf); 8] = [
            ("collect (wait + read)", |p| p.collect_ms),
            ("parse (inside collect)", |p| p.parse_ms),
            ("dedup", |p| p.dedup_ms),
            ("reload", |p| p.reload_ms),
            ("check", |p| p.check_ms),
            ("produce", |p| p.produce_ms),
            ("write (alongside produce)", |p| p.write_ms),
            ("commit", |p| p.commit_ms),
        ];
        vec![
            Chart {
                id: "throughput",
                title: "Throughput per batch",
                y_desc: "events/s",
                percent: false,
                series: vec![line("events_in / batch duration", color(0), &|x| x.events_per_sec)],
            },
            Chart {
                id: "duplicates",
                title: "Duplicates per valid event",
                y_desc: "share of valid events",
                percent: true,
                series: vec![
                    line("in-batch duplicates", color(0), &|x| x.in_batch_ratio()),
                    line("already stored", color(1), &|x| x.stored_ratio()),
                ],
            },
            Chart {
                id: "partitions",
                title: "Events per partition per batch",
                y_desc: "events",
                percent: false,
                series: partition_series,
            },
            Chart {
                id: "batch-size",
                title: "Batch size",
                y_desc: "events in",
                percent: false,
                series: vec![line("events_in", color(0), &|x| x.events_in as f64)],
            },
            Chart {
                id: "phases",
                title: "Phase durations per batch",
                y_desc: "ms",
                percent: false,
                series: phases
                    .iter()
                    .enumerate()
                    .map(|(i, (name, f))| line(name, color(i), &|x| f(&x.phases)))
                    .collect(),
            },
        ]
    }
}

/// The x axis every chart shares: the run's seconds, broken at idle gaps.
struct TimeAxis {
    /// The last batch's end.
    end_s: f64,
    gaps: Vec<Gap>,
    /// Runs of batches without an idle gap between them: a line is not drawn across idle
    /// time, where there were no batches to measure.
    segments: Vec<Range<usize>>,
}

impl TimeAxis {
    fn of(report: &Report) -> Self {
        let gaps = idle_gaps(&report.batches);
        let starts = std::iter::once(0).chain(gaps.iter().map(|g| g.next));
        let ends = gaps.iter().map(|g| g.next).chain(std::iter::once(report.batches.len()));
        let segments = starts.zip(ends).filter(|(a, b)| a < b).map(|(a, b)| a..b).collect();
        Self { end_s: report.summary.wall_s, gaps, segments }
    }
}

/// The shade of idle time in the charts.
const IDLE_SHADE: RGBColor = RGBColor(226, 226, 226);

/// Reads one phase's milliseconds.
type PhaseOf = fn(&Phases) -> f64;

/// One line chart over the run's time axis.
struct Chart {
    id: &'static str,
    title: &'static str,
    y_desc: &'static str,
    /// Label the y axis as percentages (values are fractions).
    percent: bool,
    series: Vec<Series>,
}

struct Series {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

impl Chart {
    /// The chart as an `<svg>` element.
    fn draw(&self, time: &TimeAxis) -> Result<String, AnalyzeError> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
            self.draw_on(&root, time).map_err(|e| AnalyzeError::Chart { chart: self.id, message: e.to_string() })?;
            // The area borrows `svg` until it is dropped here.
        }
        Ok(svg)
    }

    fn draw_on(
        &self,
        root: &DrawingArea<SVGBackend<'_>, Shift>,
        time: &TimeAxis,
    ) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
        root.fill(&WHITE)?;
        let points = || self.series.iter().flat_map(|s| s.points.iter());
        let x_end = match points().map(|p| p.0).fold(time.end_s, f64::max) {
            end if end > 0.0 && end.is_finite() => end,
            _ => 1.0,
        };
        // A little room either side, so that the first and last dots are not cut.
        let x = padded(-x_end / 100.0, x_end * 1.01, false);
        let y = padded(0.0, points().map(|p| p.1).fold(0.0, f64::max), true);
        let dots = self.series.iter().map(|s| s.points.len()).max().unwrap_or(0) <= DOTS_UP_TO;
        let caption = if self.series.iter().all(|s| s.points.is_empty()) {
            format!("{} (no batches)", self.title)
        } else {
            self.title.to_owned()
        };
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
        let y_format = |v: &f64| {
            if self.percent {
                format!("{:.0}%", v * 100.0)
            } else if y.1 >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        let x_decimals = if x_end >= 10.0 {
            0
        } else if x_end >= 1.0 {
            1
        } else {
            2
        };
        // `+ 0.0` turns -0 into 0.
        let x_format = |v: &f64| format!("{:.*}", x_decimals, v + 0.0);
        chart
            .configure_mesh()
            .x_desc("seconds since the first batch started")
            .y_desc(self.y_desc)
            .x_labels(12)
            .y_labels(8)
            .x_label_formatter(&x_format)
            .y_label_formatter(&y_format)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()?;
        chart.draw_series(
            time.gaps.iter().map(|g| Rectangle::new([(g.from_s, y.0), (g.to_s, y.1)], IDLE_SHADE.filled())),
        )?;
        for s in &self.series {
            let style = s.color.filled().stroke_width(2);
            for segment in &time.segments {
                let points = s.points.get(segment.clone()).unwrap_or_default().iter().copied();
                chart.draw_series(LineSeries::new(points, style).point_size(if dots { 3 } else { 0 }))?;
            }
        }
        root.present()
    }
}

/// A range from `low` to a little above `high`, never empty.
fn padded(low: f64, high: f64, headroom: bool) -> (f64, f64) {
    let high = if headroom { high * 1.08 } else { high };
    if high > low && high.is_finite() { (low, high) } else { (low, low + 1.0) }
}

/// Series colours: Tableau 10, then spread hues.
fn color(i: usize) -> RGBColor {
    const TABLEAU: [RGBColor; 10] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    match TABLEAU.get(i) {
        Some(c) => *c,
        None => {
            let c = HSLColor((i as f64 * 0.618_034) % 1.0, 0.65, 0.45).to_backend_color();
            RGBColor(c.rgb.0, c.rgb.1, c.rgb.2)
        }
    }
}

fn hex(c: &RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// Escapes text for HTML element content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:16px 20px;color:#222}\
h1{font-size:22px;margin:0 0 12px}\
table.summary{border-collapse:collapse;margin-bottom:18px;font-size:14px}\
table.summary th{text-align:left;padding:3px 16px 3px 0;font-weight:600;vertical-align:top;white-space:nowrap}\
table.summary td{padding:3px 0;font-variant-numeric:tabular-nums}\
div.chart{margin:10px 0 24px}\
div.chart svg{display:block;max-width:100%;height:auto}\
div.legend{font-size:14px;margin:4px 0 0 94px}\
div.legend span.key{display:inline-block;margin-right:18px;white-space:nowrap}\
div.legend i{display:inline-block;width:22px;height:4px;vertical-align:middle;margin-right:6px}\
pre.table{font-size:12px}\
pre#render-check{font-size:11px;color:#999}";

/// Runs at the end of the body, when the charts are in the DOM: `getBBox` forces layout.
const SCRIPT: &str = "(function(){var out=[];\
document.querySelectorAll('div.chart').forEach(function(div){\
var lines=div.querySelectorAll('polyline[stroke-width=\"2\"]');var width=0;\
lines.forEach(function(p){width+=p.getBBox().width;});\
out.push(div.id+' '+lines.length+' '+Math.round(width));});\
document.getElementById('render-check').textContent=out.join('\\n');})();";

#[cfg(test)]
mod tests {
    use super::*;

    /// A record starting `start_s` and ending `end_s` seconds after 2026-11-25T00:00:00Z.
    fn record(id: i64, start_s: f64, end_s: f64, events_in: u64, partitions: &[(i32, u64)]) -> BatchRecord {
        let at = |s: f64| {
            let micros = (s * 1e6).round() as i64;
            format!(
                "2026-11-25T00:{:02}:{:02}.{:06}Z",
                micros / 60_000_000,
                micros / 1_000_000 % 60,
                micros % 1_000_000
            )
        };
        BatchRecord {
            batch_id: id,
            started_at: at(start_s),
            ended_at: at(end_s),
            events_in,
            inserted: Some(events_in),
            events_per_partition: partitions.iter().copied().collect(),
            phases: Phases { collect_ms: 500.0, commit_ms: 100.0, ..Phases::default() },
            attempts: 1,
            ..BatchRecord::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn distribution_uses_the_middle_pair_and_the_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        let d = distribution(&values);
        assert!(close(d.mean, 10.5) && close(d.median, 10.5) && close(d.max, 20.0), "{d:?}");
        // ceil(0.95 * 20) = 19th value.
        assert!(close(d.p95, 19.0), "{d:?}");
        let d = distribution(&[5.0, 1.0, 3.0]);
        // ceil(0.95 * 3) = 3rd value.
        assert!(close(d.median, 3.0) && close(d.p95, 5.0) && close(d.mean, 3.0), "{d:?}");
        let d = distribution(&[]);
        assert!(close(d.mean, 0.0) && close(d.p95, 0.0));
    }

    #[test]
    fn skewness_is_fisher_pearson_g1() {
        // mean 2, deviations -1 -1 -1 -1 4: m2 = 20/5 = 4, m3 = 60/5 = 12, g1 = 12/8.
        assert!(close(skewness(&[1.0, 1.0, 1.0, 1.0, 6.0]), 1.5));
        // mean 2, deviations -1 -1 -1 3: m2 = 12/4 = 3, m3 = 24/4 = 6, g1 = 6/3^1.5.
        assert!(close(skewness(&[1.0, 1.0, 1.0, 5.0]), 6.0 / 3.0_f64.powf(1.5)));
        assert!(close(skewness(&[1.0, 2.0, 3.0]), 0.0));
        assert!(close(skewness(&[4.0, 4.0, 4.0]), 0.0));
        assert!(close(skewness(&[1.0, 9.0]), 0.0));
    }

    #[test]
    fn batches_get_durations_rates_and_partition_skew() {
        let mut first = record(1, 0.0, 1.0, 60, &[(0, 10), (1, 20), (2, 30)]);
        first.invalid = 10;
        first.in_batch_duplicates = 5;
        first.stored_duplicates = 5;
        let second = record(2, 1.2, 3.2, 8, &[(0, 1), (1, 1), (2, 1), (3, 5)]);
        let report = analyze(&[second, first]);
        let [a, b] = &report.batches[..] else { panic!("two batches: {report:?}") };
        assert_eq!((a.batch_id, b.batch_id), (1, 2), "sorted by start");
        assert!(close(a.duration_ms, 1_000.0) && close(a.processing_ms, 500.0));
        assert!(close(a.events_per_sec, 60.0));
        // 10 duplicates of 50 valid events.
        assert!(close(a.duplicate_ratio, 0.2));
        // max 30 over mean 20; symmetric counts.
        assert!(close(a.partition_max_over_mean, 1.5) && close(a.partition_skewness, 0.0));
        assert!(close(b.offset_s, 1.2) && close(b.duration_ms, 2_000.0) && close(b.events_per_sec, 4.0));
        assert!(close(b.partition_max_over_mean, 2.5));
        assert!(close(b.partition_skewness, 6.0 / 3.0_f64.powf(1.5)));
        let s = &report.summary;
        assert_eq!(s.partition_totals, BTreeMap::from([(0, 11), (1, 21), (2, 31), (3, 5)]));
        // max 31 over mean 68/4 = 17.
        assert!(close(s.partition_max_over_mean, 31.0 / 17.0));
        assert!(close(s.wall_s, 3.2) && close(s.events_per_sec_overall, 68.0 / 3.2));
        assert_eq!(s.idle_gaps.count, 0, "a 0.2 s gap is overhead, not idle time");
    }

    #[test]
    fn summary_finds_idle_gaps_spikes_and_phase_shares() {
        // Durations 1, 2, 3, 4 and 10 s; gaps 0.5, 4 and 2 s (the last pair overlaps:
        // two writers).
        let records = vec![
            record(1, 0.0, 1.0, 1, &[(0, 1)]),
            record(2, 1.5, 3.5, 1, &[(0, 1)]),
            record(3, 7.5, 10.5, 1, &[(1, 1)]),
            record(4, 12.5, 16.5, 1, &[(1, 1)]),
            record(5, 16.0, 26.0, 6, &[(0, 3), (1, 3)]),
        ];
        let s = analyze(&records).summary;
        assert_eq!(s.batches, 5);
        assert!(close(s.duration_ms.mean, 4_000.0) && close(s.duration_ms.median, 3_000.0));
        assert!(close(s.duration_ms.p95, 10_000.0) && close(s.duration_ms.max, 10_000.0));
        assert!(close(s.processing_ms.median, 2_500.0));
        assert!(close(s.batch_size_skewness, 1.5));
        assert_eq!(s.idle_gaps.count, 2);
        assert!(close(s.idle_gaps.total_s, 6.0) && close(s.idle_gaps.longest_s, 4.0));
        assert!(close(s.wall_s, 26.0));
        assert_eq!(s.first_started_at.as_deref(), Some("2026-11-25T00:00:00.000000Z"));
        assert_eq!(s.last_ended_at.as_deref(), Some("2026-11-25T00:00:26.000000Z"));
        // 5 x 500 ms collect, 5 x 100 ms commit of 20 s.
        assert!(close(s.phase_share.collect, 0.125) && close(s.phase_share.commit, 0.025));
        assert!(close(s.phase_share.other, 1.0 - 0.15));
        assert_eq!(s.totals.events_in, 10);
        assert_eq!((s.attempts, s.conflicts), (5, 0));
    }

    #[test]
    fn unparsable_times_fall_back_to_phases_and_the_previous_end() {
        let mut broken = record(2, 0.0, 0.0, 10, &[(0, 10)]);
        broken.started_at = "yesterday".into();
        broken.ended_at = String::new();
        broken.inserted = None;
        let records = vec![record(1, 0.0, 2.0, 10, &[(0, 10)]), broken, record(3, 10.0, 11.0, 10, &[(0, 10)])];
        let report = analyze(&records);
        let b = &report.batches;
        assert_eq!(b.iter().map(|b| b.batch_id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(b[1].estimated_times && !b[0].estimated_times);
        assert!(close(b[1].offset_s, 2.0) && close(b[1].duration_ms, 600.0));
        assert!(close(b[2].offset_s, 10.0));
        assert_eq!(report.summary.totals.batches_with_unknown_inserted, 1);
        assert_eq!(report.summary.totals.inserted, 20);
        serde_json::to_string(&report).unwrap();
    }

    #[test]
    fn no_batches_make_an_empty_report_that_serialises() {
        let report = analyze(&[]);
        assert_eq!(report.summary.batches, 0);
        assert!(report.summary.first_started_at.is_none());
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"batches\":[]"), "{json}");
        let table = report.to_table();
        assert!(table.contains("batches") && table.contains("phase share"), "{table}");
        let html = report.to_html("empty").unwrap();
        for id in ["throughput", "duplicates", "partitions", "batch-size", "phases"] {
            assert!(html.contains(&format!("<div class=\"chart\" id=\"{id}\">")), "{id}");
        }
    }

    #[test]
    fn one_batch_draws_every_chart() {
        let report = analyze(&[record(1, 0.0, 1.0, 5, &[(0, 5)])]);
        serde_json::to_string(&report).unwrap();
        let html = report.to_html("one").unwrap();
        // Axes and ticks are polylines too, of width 1.
        assert_eq!(html.matches("stroke-width=\"2\" points=").count(), 1 + 2 + 1 + 1 + 8, "one line per series");
        assert!(!html.contains("NaN"));
    }

    #[test]
    fn lines_break_at_idle_gaps_which_are_shaded() {
        let records =
            [record(1, 0.0, 1.0, 5, &[(0, 5)]), record(2, 1.1, 2.0, 5, &[(0, 5)]), record(3, 7.0, 8.0, 5, &[(0, 5)])];
        let report = analyze(&records);
        let time = TimeAxis::of(&report);
        assert_eq!(time.segments, vec![0..2, 2..3]);
        let charts = report.charts();
        let throughput = charts.iter().find(|c| c.id == "throughput").unwrap().draw(&time).unwrap();
        assert_eq!(throughput.matches("stroke-width=\"2\" points=").count(), 2, "{throughput}");
        let shade = format!("fill=\"{}\"", hex(&IDLE_SHADE).to_uppercase());
        assert_eq!(throughput.matches(&shade).count(), 1, "one idle gap: {throughput}");
        assert!(report.to_html("gaps").unwrap().contains("idle (no batch for 1 s or more)"));
    }

    /// The first three lines of a real batch log (`idempipe run`, key index).
    const SAMPLE: &str = r#"{"batch_id":1795572800758213,"started_at":"2026-11-25T02:13:20.758213Z","ended_at":"2026-11-25T02:13:21.680549Z","events_in":332,"invalid":1,"in_batch_duplicates":141,"stored_duplicates":0,"inserted":190,"already_committed":0,"offset_gaps":0,"events_per_partition":{"0":93,"1":90,"2":68,"3":81},"phases":{"collect_ms":500.01443300000005,"parse_ms":9.588281,"dedup_ms":0.24658999999999998,"reload_ms":9.284512999999999,"check_ms":139.107823,"produce_ms":32.130416000000004,"commit_ms":241.273482},"attempts":1,"conflicts":0,"delta_version":1,"files_added":3}
{"batch_id":1795572801681098,"started_at":"2026-11-25T02:13:21.681098Z","ended_at":"2026-11-25T02:13:22.466354Z","events_in":354,"invalid":1,"in_batch_duplicates":158,"stored_duplicates":0,"inserted":195,"already_committed":0,"offset_gaps":0,"events_per_partition":{"0":93,"1":88,"2":88,"3":85},"phases":{"collect_ms":500.013978,"parse_ms":6.5500419999999995,"dedup_ms":0.28229299999999996,"reload_ms":12.835568,"check_ms":48.262324,"produce_ms":23.499281,"commit_ms":199.947594},"attempts":1,"conflicts":0,"delta_version":2,"files_added":3}
{"batch_id":1795572802466665,"started_at":"2026-11-25T02:13:22.466665Z","ended_at":"2026-11-25T02:13:23.266580Z","events_in":293,"invalid":0,"in_batch_duplicates":123,"stored_duplicates":1,"inserted":169,"already_committed":0,"offset_gaps":0,"events_per_partition":{"0":80,"1":73,"2":71,"3":69},"phases":{"collect_ms":500.014084,"parse_ms":6.216381,"dedup_ms":0.240555,"reload_ms":11.431405999999999,"check_ms":50.053430000000006,"produce_ms":25.979388999999998,"commit_ms":211.923502},"attempts":1,"conflicts":0,"delta_version":3,"files_added":3}"#;

    fn sample() -> Vec<BatchRecord> {
        SAMPLE.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn a_real_log_yields_its_figures() {
        let report = analyze(&sample());
        let [a, b, c] = &report.batches[..] else { panic!("three batches") };
        assert!(close(a.duration_ms, 922.336) && close(a.offset_s, 0.0));
        assert!(close(b.offset_s, 0.922885) && close(c.offset_s, 1.708452));
        // (141 + 0) / 331 valid events.
        assert!(close(a.duplicate_ratio, 141.0 / 331.0));
        let s = &report.summary;
        assert!(close(s.wall_s, 2.508367));
        assert_eq!((s.totals.events_in, s.totals.inserted, s.totals.stored_duplicates), (979, 554, 1));
        assert_eq!(s.partition_totals, BTreeMap::from([(0, 266), (1, 251), (2, 227), (3, 235)]));
        assert_eq!(s.idle_gaps.count, 0);
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"partition_max_over_mean\""));
    }

    #[test]
    fn the_table_has_every_batch_and_the_summary() {
        let report = analyze(&sample());
        let table = report.to_table();
        for b in &report.batches {
            assert!(table.contains(&b.batch_id.to_string()), "{table}");
        }
        assert!(table.contains("02:13:21.681"), "{table}");
        for label in ["batches", "wall time", "events/s overall", "idle gaps", "phase share", "attempts"] {
            assert!(table.lines().any(|l| l.starts_with(label)), "{label} missing:\n{table}");
        }
    }

    #[test]
    fn a_long_table_omits_the_middle() {
        let records: Vec<BatchRecord> =
            (0..250).map(|i| record(1_000 + i, i as f64 * 2.0, i as f64 * 2.0 + 1.0, 1, &[(0, 1)])).collect();
        let report = analyze(&records);
        let table = report.to_table();
        assert!(table.contains("… 50 batches omitted …"), "{table}");
        assert!(table.contains(" 1099 ") && table.contains(" 1150 ") && !table.contains(" 1100 "));
        assert_eq!(report.batches.len(), 250);
    }

    #[test]
    fn the_page_has_five_charts_and_escapes_text() {
        let html = analyze(&sample()).to_html("run <1> & \"more\"").unwrap();
        assert!(html.contains("<title>run &lt;1&gt; &amp; &quot;more&quot;</title>"));
        assert!(!html.contains("<1>"));
        for id in ["throughput", "duplicates", "partitions", "batch-size", "phases"] {
            let start = html.find(&format!("<div class=\"chart\" id=\"{id}\">")).unwrap_or_else(|| panic!("{id}"));
            let chart = &html[start..];
            let chart = &chart[..chart.find("<div class=\"legend\">").unwrap()];
            assert!(chart.contains("<svg") && chart.contains("<polyline"), "{id}");
        }
        assert!(html.contains("<pre id=\"render-check\"></pre>"));
        assert!(!html.contains(" src=") && !html.contains(" href="), "no external resources");
    }
}
