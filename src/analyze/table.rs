//! The report as fixed-width text: one line per batch, then the summary.

use std::fmt::{self, Write as _};

use crate::analyze::{Distribution, Report, ratio};
use crate::event::EventTime;

/// Above this many batches the table shows only the first and last [`TABLE_EDGE`].
const TABLE_LIMIT: usize = 200;
const TABLE_EDGE: usize = 100;

impl Report {
    /// The summary as labelled lines: one source for the table and the page.
    pub(crate) fn summary_rows(&self) -> Vec<(&'static str, String)> {
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
            let inserted = b.record.inserted.map_or_else(|| "?".to_owned(), |v| v.to_string());
            let _ = writeln!(
                out,
                "{:>5} {:>16} {:>12} {:>8} {:>7} {:>9} {:>10} {:>9} {:>11.1} {:>10.1} {:>8.3} {:>8}",
                i + 1,
                b.record.batch_id,
                time_of_day(b.record.started_at),
                b.record.events_in,
                b.record.invalid,
                b.record.in_batch_duplicates,
                b.record.stored_duplicates,
                inserted,
                b.duration_ms,
                b.events_per_sec,
                b.partition_max_over_mean,
                b.record.attempts
            );
        }
        out.push('\n');
        for (label, value) in self.summary_rows() {
            let _ = writeln!(out, "{label:<20} {value}");
        }
        out
    }
}

/// `HH:MM:SS.mmm` (UTC) of a time, or `?`.
fn time_of_day(t: Option<EventTime>) -> String {
    // The canonical form is `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    t.map_or_else(|| "?".to_owned(), |t| t.to_string()[11..23].to_owned())
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_table())
    }
}

#[cfg(test)]
mod tests {
    use crate::analyze::Report;
    use crate::analyze::testing::*;
    use crate::batch_log::BatchRecord;

    #[test]
    fn the_table_has_every_batch_and_the_summary() {
        let report = Report::from_records(&sample());
        let table = report.to_table();
        for b in &report.batches {
            assert!(table.contains(&b.record.batch_id.to_string()), "{table}");
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
        let report = Report::from_records(&records);
        let table = report.to_table();
        assert!(table.contains("… 50 batches omitted …"), "{table}");
        assert!(table.contains(" 1099 ") && table.contains(" 1150 ") && !table.contains(" 1100 "));
        assert_eq!(report.batches.len(), 250);
    }
}
