//! The report as one self-contained HTML page: the summary and five SVG charts over the
//! run's time (plotters), with idle gaps shaded, and a script that reports the charts'
//! rendered widths (so a headless browser can show they were laid out).

use std::fmt::Write as _;
use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::analyze::{BatchStats, Gap, IDLE_GAP_S, Report, idle_gaps};
use crate::batch_log::Phases;

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

impl Report {
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
                    x.record.events_per_partition.get(&p).copied().unwrap_or(0) as f64
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
                series: vec![line("events_in", color(0), &|x| x.record.events_in as f64)],
            },
            Chart {
                id: "phases",
                title: "Phase durations per batch",
                y_desc: "ms",
                percent: false,
                series: phases
                    .iter()
                    .enumerate()
                    .map(|(i, (name, f))| line(name, color(i), &|x| f(&x.record.phases)))
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
    use crate::analyze::testing::*;

    #[test]
    fn one_batch_draws_every_chart() {
        let report = Report::from_records(&[record(1, 0.0, 1.0, 5, &[(0, 5)])]);
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
        let report = Report::from_records(&records);
        let time = TimeAxis::of(&report);
        assert_eq!(time.segments, vec![0..2, 2..3]);
        let charts = report.charts();
        let throughput = charts.iter().find(|c| c.id == "throughput").unwrap().draw(&time).unwrap();
        assert_eq!(throughput.matches("stroke-width=\"2\" points=").count(), 2, "{throughput}");
        let shade = format!("fill=\"{}\"", hex(&IDLE_SHADE).to_uppercase());
        assert_eq!(throughput.matches(&shade).count(), 1, "one idle gap: {throughput}");
        assert!(report.to_html("gaps").unwrap().contains("idle (no batch for 1 s or more)"));
    }

    #[test]
    fn the_page_has_five_charts_and_escapes_text() {
        let html = Report::from_records(&sample()).to_html("run <1> & \"more\"").unwrap();
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
