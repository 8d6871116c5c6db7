//! Batch-log analysis: per-batch and whole-run statistics over the records of
//! [`crate::batch_log`] ([`Report::from_records`], this module), printed as a text table
//! ([`table`]), serialised as JSON, or drawn as one self-contained HTML page ([`page`]).
//!
//! Invariant: [`Report::from_records`] is a pure function of the records and never fails or panics on
//! odd input: a record whose times do not parse is kept (its duration comes from its
//! phases, its start from the previous batch's end), and every number it reports is
//! finite (0 where a ratio has nothing to divide by), so the JSON always serialises.
//!
//! Time is read from `started_at` and `ended_at`: a batch's duration runs from the start
//! of its collect wait to the line being written, so it includes the wait for messages;
//! `processing_ms` is the part after the collect phase. The processor writes no record
//! for a trigger interval without messages, so the time between one batch's end and the
//! next one's start is idle time ([`IdleGaps`]).

pub mod page;
pub mod table;

use std::collections::BTreeMap;

use serde::Serialize;

pub use crate::analyze::page::AnalyzeError;
use crate::batch_log::{BatchRecord, Phases};
use crate::event::EventTime;

/// A gap between two batches shorter than this is the processor's own overhead, not idle
/// time.
const IDLE_GAP_S: f64 = 1.0;

/// Everything `analyze` reports about a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every batch, in start order.
    pub batches: Vec<BatchStats>,
    pub summary: Summary,
}

/// One batch's figures: its record as logged, and what is computed from it.
#[derive(Debug, Clone, Serialize)]
pub struct BatchStats {
    #[serde(flatten)]
    pub record: BatchRecord,
    /// Seconds from the first batch's start to this one's: the x axis of the charts.
    pub offset_s: f64,
    /// True when `started_at` or `ended_at` did not parse: the duration is then the sum
    /// of the phases and the start is the previous batch's end.
    pub estimated_times: bool,
    /// `ended_at - started_at`: includes the collect wait.
    pub duration_ms: f64,
    /// `duration_ms` without the collect phase (never below 0).
    pub processing_ms: f64,
    /// `events_in` per second of `duration_ms`.
    pub events_per_sec: f64,
    /// Duplicates (in-batch and stored) per valid event (`events_in - invalid`); 0 with
    /// no valid event.
    pub duplicate_ratio: f64,
    /// Largest partition count over the mean of the partitions present in the batch:
    /// 1.0 is perfectly even; 0 when the batch has no events.
    pub partition_max_over_mean: f64,
    /// Fisher-Pearson skewness (g1) of the partition counts; 0 with fewer than three
    /// partitions or equal counts.
    pub partition_skewness: f64,
}

impl BatchStats {
    /// Seconds from the first batch's start to this one's end.
    fn end_s(&self) -> f64 {
        self.offset_s + self.duration_ms / 1_000.0
    }

    fn valid(&self) -> u64 {
        self.record.events_in.saturating_sub(self.record.invalid)
    }

    /// In-batch duplicates per valid event.
    fn in_batch_ratio(&self) -> f64 {
        ratio(self.record.in_batch_duplicates as f64, self.valid() as f64)
    }

    /// Already-stored duplicates per valid event.
    fn stored_ratio(&self) -> f64 {
        ratio(self.record.stored_duplicates as f64, self.valid() as f64)
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
impl Report {
    /// Computes the report of the records (in log order; sorted here by start time in
    /// case the log interleaves writers).
    pub fn from_records(records: &[BatchRecord]) -> Self {
        // Offset resets are logged as records of no batch: not part of the statistics.
        let records: Vec<BatchRecord> = records.iter().filter(|r| !r.is_reset_only()).cloned().collect();
        let batches = timeline(&records);
        let summary = summarise(&batches);
        Report { batches, summary }
    }
}

fn phases_ms(p: &Phases) -> f64 {
    p.collect_ms + p.dedup_ms + p.reload_ms + p.check_ms + p.produce_ms.max(p.write_ms) + p.commit_ms
}

/// Sorts the records by start and places them on one time axis.
fn timeline(records: &[BatchRecord]) -> Vec<BatchStats> {
    // A record whose start does not parse stays right after its predecessor in the log.
    let mut keyed = Vec::with_capacity(records.len());
    let mut previous_key = i64::MIN;
    for (index, record) in records.iter().enumerate() {
        let start = record.started_at.map(EventTime::micros);
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
        let end = record.ended_at.map(EventTime::micros);
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
        record: r.clone(),
        offset_s,
        estimated_times,
        duration_ms,
        processing_ms: (duration_ms - r.phases.collect_ms).max(0.0),
        events_per_sec: ratio(r.events_in as f64, duration_ms / 1_000.0),
        duplicate_ratio: ratio((r.in_batch_duplicates + r.stored_duplicates) as f64, valid as f64),
        partition_max_over_mean: max_over_mean(&counts),
        partition_skewness: skewness(&counts),
    }
}

fn summarise(batches: &[BatchStats]) -> Summary {
    let mut totals = Totals::default();
    let mut partition_totals = BTreeMap::<i32, u64>::new();
    let (mut attempts, mut conflicts) = (0_u64, 0_u64);
    for b in batches {
        totals.events_in += b.record.events_in;
        totals.invalid += b.record.invalid;
        totals.in_batch_duplicates += b.record.in_batch_duplicates;
        totals.stored_duplicates += b.record.stored_duplicates;
        totals.already_committed += b.record.already_committed;
        totals.offset_gaps += b.record.offset_gaps;
        match b.record.inserted {
            Some(n) => totals.inserted += n,
            None => totals.batches_with_unknown_inserted += 1,
        }
        for (p, n) in &b.record.events_per_partition {
            *partition_totals.entry(*p).or_default() += n;
        }
        attempts += u64::from(b.record.attempts);
        conflicts += u64::from(b.record.conflicts);
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
        collect: share(|b| b.record.phases.collect_ms),
        parse: share(|b| b.record.phases.parse_ms),
        dedup: share(|b| b.record.phases.dedup_ms),
        reload: share(|b| b.record.phases.reload_ms),
        check: share(|b| b.record.phases.check_ms),
        produce: share(|b| b.record.phases.produce_ms),
        write: share(|b| b.record.phases.write_ms),
        commit: share(|b| b.record.phases.commit_ms),
        other: share(|b| (b.duration_ms - phases_ms(&b.record.phases)).max(0.0)),
    };

    let values = |f: fn(&BatchStats) -> f64| batches.iter().map(f).collect::<Vec<_>>();
    let partition_counts: Vec<f64> = partition_totals.values().map(|&c| c as f64).collect();
    Summary {
        batches: batches.len(),
        first_started_at: batches.first().and_then(|b| b.record.started_at).map(|t| t.to_string()),
        last_ended_at: last.and_then(|b| b.record.ended_at).map(|t| t.to_string()),
        wall_s,
        events_per_sec_overall: ratio(totals.events_in as f64, wall_s),
        totals,
        duration_ms: distribution(&values(|b| b.duration_ms)),
        processing_ms: distribution(&values(|b| b.processing_ms)),
        events_per_sec: distribution(&values(|b| b.events_per_sec)),
        batch_size_skewness: skewness(&values(|b| b.record.events_in as f64)),
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

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A record starting `start_s` and ending `end_s` seconds after 2026-11-25T00:00:00Z.
    pub(crate) fn record(id: i64, start_s: f64, end_s: f64, events_in: u64, partitions: &[(i32, u64)]) -> BatchRecord {
        let at = |s: f64| {
            let micros = (s * 1e6).round() as i64;
            let text = format!(
                "2026-11-25T00:{:02}:{:02}.{:06}Z",
                micros / 60_000_000,
                micros / 1_000_000 % 60,
                micros % 1_000_000
            );
            EventTime::parse(&text).ok()
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

    pub(crate) fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// The first three lines of a real batch log (`idempipe run`, key index).
    pub(crate) const SAMPLE: &str = r#"{"batch_id":1795572800758213,"started_at":"2026-11-25T02:13:20.758213Z","ended_at":"2026-11-25T02:13:21.680549Z","events_in":332,"invalid":1,"in_batch_duplicates":141,"stored_duplicates":0,"inserted":190,"already_committed":0,"offset_gaps":0,"events_per_partition":{"0":93,"1":90,"2":68,"3":81},"phases":{"collect_ms":500.01443300000005,"parse_ms":9.588281,"dedup_ms":0.24658999999999998,"reload_ms":9.284512999999999,"check_ms":139.107823,"produce_ms":32.130416000000004,"commit_ms":241.273482},"attempts":1,"conflicts":0,"delta_version":1,"files_added":3}
{"batch_id":1795572801681098,"started_at":"2026-11-25T02:13:21.681098Z","ended_at":"2026-11-25T02:13:22.466354Z","events_in":354,"invalid":1,"in_batch_duplicates":158,"stored_duplicates":0,"inserted":195,"already_committed":0,"offset_gaps":0,"events_per_partition":{"0":93,"1":88,"2":88,"3":85},"phases":{"collect_ms":500.013978,"parse_ms":6.5500419999999995,"dedup_ms":0.28229299999999996,"reload_ms":12.835568,"check_ms":48.262324,"produce_ms":23.499281,"commit_ms":199.947594},"attempts":1,"conflicts":0,"delta_version":2,"files_added":3}
{"batch_id":1795572802466665,"started_at":"2026-11-25T02:13:22.466665Z","ended_at":"2026-11-25T02:13:23.266580Z","events_in":293,"invalid":0,"in_batch_duplicates":123,"stored_duplicates":1,"inserted":169,"already_committed":0,"offset_gaps":0,"events_per_partition":{"0":80,"1":73,"2":71,"3":69},"phases":{"collect_ms":500.014084,"parse_ms":6.216381,"dedup_ms":0.240555,"reload_ms":11.431405999999999,"check_ms":50.053430000000006,"produce_ms":25.979388999999998,"commit_ms":211.923502},"attempts":1,"conflicts":0,"delta_version":3,"files_added":3}"#;

    pub(crate) fn sample() -> Vec<BatchRecord> {
        SAMPLE.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

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
        let report = Report::from_records(&[second, first]);
        let [a, b] = &report.batches[..] else { panic!("two batches: {report:?}") };
        assert_eq!((a.record.batch_id, b.record.batch_id), (1, 2), "sorted by start");
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
        let s = Report::from_records(&records).summary;
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
        broken.started_at = None;
        broken.ended_at = None;
        broken.inserted = None;
        let records = vec![record(1, 0.0, 2.0, 10, &[(0, 10)]), broken, record(3, 10.0, 11.0, 10, &[(0, 10)])];
        let report = Report::from_records(&records);
        let b = &report.batches;
        assert_eq!(b.iter().map(|b| b.record.batch_id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(b[1].estimated_times && !b[0].estimated_times);
        assert!(close(b[1].offset_s, 2.0) && close(b[1].duration_ms, 600.0));
        assert!(close(b[2].offset_s, 10.0));
        assert_eq!(report.summary.totals.batches_with_unknown_inserted, 1);
        assert_eq!(report.summary.totals.inserted, 20);
        serde_json::to_string(&report).unwrap();
    }

    #[test]
    fn no_batches_make_an_empty_report_that_serialises() {
        let report = Report::from_records(&[]);
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
    fn a_real_log_yields_its_figures() {
        let report = Report::from_records(&sample());
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
}
