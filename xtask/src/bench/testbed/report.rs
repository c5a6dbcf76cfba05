//! The results as a markdown table and an SVG bar chart.
use std::fmt::Write as _;

use super::{Column, Family, Row, Sample, Traffic};

/// Samples per (row, column); `None` where the cell is not measured.
pub struct Results {
    pub cells: Vec<(Row, Column, Vec<Sample>)>,
}

impl Results {
    fn samples(&self, row: Row, column: Column) -> Option<&[Sample]> {
        self.cells
            .iter()
            .find(|(r, c, _)| *r == row && *c == column)
            .map(|(_, _, s)| s.as_slice())
    }

    pub fn median(&self, row: Row, column: Column) -> Option<f64> {
        let mut rates: Vec<f64> = self.samples(row, column)?.iter().map(|s| s.rate).collect();
        if rates.is_empty() {
            return None;
        }
        rates.sort_by(f64::total_cmp);
        Some(rates[rates.len() / 2])
    }

    /// Received in all over sent in all, across the cell's runs.
    pub fn delivered(&self, row: Row, column: Column) -> Option<(u64, u64)> {
        let samples = self.samples(row, column)?;
        let sent = samples.iter().map(|s| s.sent).sum();
        let received = samples.iter().map(|s| s.received).sum();
        Some((received, sent))
    }

    /// The rows with a measured cell, in the table's order: a partial run
    /// shows only its own.
    fn rows(&self) -> Vec<Row> {
        Row::all()
            .filter(|&r| Column::ALL.iter().any(|&c| self.samples(r, c).is_some()))
            .collect()
    }

    pub fn markdown(&self, context: &str) -> String {
        let rows = self.rows();
        let mut md = String::from("| path |");
        let mut rule = String::from("|---|");
        for column in Column::ALL {
            let _ = write!(md, " {} |", column.title());
            rule.push_str("---|");
        }
        let _ = writeln!(md, "\n{rule}");
        for &row in &rows {
            let _ = write!(md, "| {} |", row.title());
            for column in Column::ALL {
                let cell = self.median(row, column).map_or("".into(), rate);
                let _ = write!(md, " {cell} |");
            }
            md.push('\n');
        }
        md.push_str("\nDatagrams per second received by the sink pod, median of the runs.\n");
        md.push_str("\nDelivered / sent (all runs of the cell):\n\n| path |");
        for column in Column::ALL {
            let _ = write!(md, " {} |", column.title());
        }
        let _ = writeln!(md, "\n{rule}");
        for &row in &rows {
            let _ = write!(md, "| {} |", row.title());
            for column in Column::ALL {
                let cell = self.delivered(row, column).map_or(String::new(), |(r, s)| {
                    format!("{:.1}% of {}", percent(r, s), count(s))
                });
                let _ = write!(md, " {cell} |");
            }
            md.push('\n');
        }
        for family in Family::ALL {
            let row = Row {
                family,
                traffic: Traffic::NorthSouthNewFlow,
            };
            let Some((r, s)) = self.delivered(row, Column::Xdplb) else {
                continue;
            };
            let verdict = if percent(r, s) >= 95.0 {
                "meets"
            } else {
                "MISSES"
            };
            let which = match family {
                Family::Ipv4 => "",
                Family::Ipv6 => "IPv6 ",
            };
            let _ = writeln!(
                md,
                "\nxdplb, {which}north-south, a new flow per packet: {} delivered of {} sent = {:.1}% ({verdict} the 95% target).",
                count(r),
                count(s),
                percent(r, s)
            );
        }
        let _ = writeln!(md, "\n{context}");
        md
    }

    /// A group of bars per row measured.
    pub fn svg(&self) -> String {
        const GROUP_W: f64 = 172.0;
        const H: f64 = 474.0;
        const LEFT: f64 = 80.0;
        const TOP: f64 = 50.0;
        const BOTTOM: f64 = 124.0;
        const COLORS: [&str; 4] = ["#8c8c8c", "#e4a72b", "#4c8bd6", "#3aa35b"];
        let rows = self.rows();
        let max = rows
            .iter()
            .flat_map(|&r| Column::ALL.iter().filter_map(move |&c| self.median(r, c)))
            .fold(1.0, f64::max);
        let scale = nice_ceiling(max);
        let plot_h = H - TOP - BOTTOM;
        // Never narrower than five groups: the legend needs the room.
        let w = LEFT + 20.0 + GROUP_W * rows.len().max(5) as f64;
        let bar_w = GROUP_W * 0.8 / Column::ALL.len() as f64;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{LEFT}\" y=\"20\" font-size=\"15\">UDP datagrams per second delivered at the sink (median of runs)</text>\n"
        );
        for i in 0..=4 {
            let v = scale * f64::from(i) / 4.0;
            let y = TOP + plot_h * (1.0 - v / scale);
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                w - 20.0,
                LEFT - 6.0,
                y + 4.0,
                rate(v)
            );
        }
        for (g, row) in rows.iter().enumerate() {
            let x0 = LEFT + GROUP_W * g as f64 + GROUP_W * 0.1;
            for (b, column) in Column::ALL.iter().enumerate() {
                let Some(v) = self.median(*row, *column) else {
                    continue;
                };
                let h = plot_h * v / scale;
                let x = x0 + bar_w * b as f64;
                let _ = writeln!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\">{}</text>",
                    TOP + plot_h - h,
                    bar_w - 2.0,
                    COLORS[b],
                    x + bar_w / 2.0,
                    TOP + plot_h - h - 3.0,
                    rate(v)
                );
            }
            for (l, line) in row.short().iter().enumerate() {
                let _ = writeln!(
                    svg,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{line}</text>",
                    x0 + GROUP_W * 0.4,
                    TOP + plot_h + 18.0 + 14.0 * l as f64
                );
            }
        }
        for (b, column) in Column::ALL.iter().enumerate() {
            let x = LEFT + 140.0 * b as f64;
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
                 <text x=\"{}\" y=\"{}\">{}</text>",
                H - 30.0,
                COLORS[b],
                x + 16.0,
                H - 20.0,
                column.title()
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

pub fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M/s", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0} k/s", v / 1e3)
    } else {
        format!("{:.1} k/s", v / 1e3)
    }
}

fn count(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.2} M", n as f64 / 1e6)
    } else {
        format!("{:.0} k", n as f64 / 1e3)
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The axis top: 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * power)
}
