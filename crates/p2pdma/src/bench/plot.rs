//! `--plot FILE.svg`: throughput and p99 latency (log scale) against block size (log scale), one line per engine,
//! memory kind and queue depth (medians over the runs), drawn with plotters' SVG backend.

use plotters::prelude::*;

use super::report::{short_size, BenchReport, CaseResult, Engine, Measures};
use super::spec::MemKind;
use super::BenchError;

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Plot(e.to_string())
}

/// One line of a panel.
struct Line {
    label: String,
    engine: Engine,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// Groups `results` into lines keyed by (measures, mode, depth, engine); the colour follows
/// (measures, mode, depth) so p2pdma and fio of the same case share it.
fn lines(
    report: &BenchReport,
    keep: impl Fn(&CaseResult) -> bool,
    value: impl Fn(&CaseResult) -> Option<f64>,
) -> Vec<Line> {
    let mut keys: Vec<(Measures, MemKind, u32)> = Vec::new();
    let mut out: Vec<Line> = Vec::new();
    let mut cases: Vec<&CaseResult> = report.results.iter().filter(|r| keep(r)).collect();
    cases.sort_by_key(|r| (r.measures, r.mode, r.iodepth, r.engine, r.bs));
    for r in cases {
        let Some(v) = value(r) else { continue };
        let key = (r.measures, r.mode, r.iodepth);
        let colour_index = match keys.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                keys.push(key);
                keys.len() - 1
            }
        };
        let what = match r.measures {
            Measures::Workload => report.workload.to_string(),
            Measures::CeilingRead => "read alone".into(),
            Measures::CeilingWrite => "write alone".into(),
        };
        let label = format!("{} {what} {} depth {}", r.engine, r.mode, r.iodepth);
        match out.iter_mut().find(|l| l.label == label) {
            Some(l) => l.points.push(((r.bs as f64).log2(), v)),
            None => out.push(Line {
                label,
                engine: r.engine,
                color: COLORS[colour_index % COLORS.len()],
                points: vec![((r.bs as f64).log2(), v)],
            }),
        }
    }
    out
}

/// How a panel's y values are drawn.
#[derive(Clone, Copy)]
enum YAxis {
    /// As they are, from 0.
    Linear,
    /// The values are log10 of the figure; ticks at whole decades are labelled.
    Log10,
}

/// Block sizes are drawn as log2(bs); whole powers of two get a label.
fn bs_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-6 && *x >= 0.0 {
        short_size(1u64 << (x.round() as u32))
    } else {
        String::new()
    }
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    lines: &[Line],
    x_range: (f64, f64),
    y_axis: YAxis,
) -> Result<(), BenchError> {
    let values = || lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let (y_min, y_max) = match y_axis {
        YAxis::Linear => (0.0, values().fold(0.0f64, f64::max).max(1e-9) * 1.15),
        YAxis::Log10 => {
            let lo = values().fold(f64::MAX, f64::min);
            let hi = values().fold(f64::MIN, f64::max);
            if lo > hi {
                (0.0, 1.0)
            } else {
                (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
            }
        }
    };
    let y_label = move |y: &f64| match y_axis {
        YAxis::Linear => format!("{y:.0}"),
        YAxis::Log10 if (y - y.round()).abs() < 1e-6 => format!("{}", 10f64.powf(y.round())),
        YAxis::Log10 => String::new(),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.0..x_range.1, y_min..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("block size (log scale)")
        .y_desc(y_desc)
        .x_labels(((x_range.1 - x_range.0) * 2.0).ceil() as usize + 1)
        .x_label_formatter(&bs_label)
        .y_labels(match y_axis {
            YAxis::Linear => 10,
            YAxis::Log10 => ((y_max - y_min) * 4.0) as usize + 1,
        })
        .y_label_formatter(&y_label)
        .draw()
        .map_err(err)?;
    if lines.is_empty() {
        chart
            .draw_series(std::iter::once(Text::new(
                "no per-request latency in these runs",
                (x_range.0 + 0.1, (y_min + y_max) / 2.0),
                ("sans-serif", 14),
            )))
            .map_err(err)?;
        return Ok(());
    }
    for line in lines {
        let colour = line.color;
        let width = if line.engine == Engine::P2pdma { 2 } else { 1 };
        let style = colour.stroke_width(width);
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), style))
            .map_err(err)?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        match line.engine {
            Engine::P2pdma => chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|p| Circle::new(*p, 3, colour.filled())),
                )
                .map_err(err)?,
            Engine::Fio => chart
                .draw_series(
                    line.points
                        .iter()
                        .map(|p| Cross::new(*p, 4, colour.stroke_width(1))),
                )
                .map_err(err)?,
        };
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 11))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The SVG document: throughput (median MiB/s) on the left, p99 completion latency
/// (median µs) on the right, block size on a log axis; p2pdma thick with dots, fio thin
/// with crosses.
pub fn svg(report: &BenchReport) -> Result<String, BenchError> {
    let (lo, hi) = report
        .results
        .iter()
        .map(|r| (r.bs as f64).log2())
        .fold((f64::MAX, 0.0f64), |(lo, hi), b| (lo.min(b), hi.max(b)));
    if report.results.is_empty() {
        return Err(BenchError::Plot("there are no results to plot".into()));
    }
    let x_range = (lo - 0.5, hi + 0.5);
    let throughput = lines(
        report,
        |r| r.measures == Measures::Workload,
        |r| r.summary.as_ref().map(|s| s.bw_mib_s.median),
    );
    let latency = lines(
        report,
        |_| true,
        |r| {
            r.summary
                .as_ref()
                .and_then(|s| s.clat_ns.get("99.000000"))
                .map(|x| (x.median / 1000.0).max(1e-3).log10())
        },
    );
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1400, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let title = format!(
            "p2pdma bench {} ({}, {} job(s)), {}",
            report.workload, report.pattern, report.numjobs, report.machine.date
        );
        let (top, body) = root.split_vertically(36);
        top.draw(&Text::new(title, (12, 10), ("sans-serif", 18)))
            .map_err(err)?;
        let (left, right) = body.split_horizontally(700);
        panel(
            &left,
            &format!("{} throughput (median)", report.workload),
            "MiB/s",
            &throughput,
            x_range,
            YAxis::Linear,
        )?;
        panel(
            &right,
            "p99 completion latency (median)",
            "µs (log scale)",
            &latency,
            x_range,
            YAxis::Log10,
        )?;
        root.present().map_err(err)?;
    }
    Ok(out)
}
