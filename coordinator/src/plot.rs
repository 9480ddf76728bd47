//! PNG plots of a simulator comparison: input rate against forecast and capacity, resources over
//! time, and latency. Series are averaged per minute so that 18 h stay readable.

use demeter_sim::{SeriesRow, SimReport, StrategyRun};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

/// DejaVu Sans (see `assets/DejaVuSans.LICENSE`), embedded so that plots render the same on any
/// machine, with or without system fonts.
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

static FONT_ONCE: Once = Once::new();

fn register_font() {
    FONT_ONCE.call_once(|| {
        // Registration only fails for a malformed font, and this one is embedded and known good.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

const W: u32 = 1400;
const BUCKET_S: u64 = 60;

/// Colours per strategy, stable across plots.
fn colour(name: &str) -> RGBColor {
    match name {
        "static" => RGBColor(120, 120, 120),
        "hpa" => RGBColor(230, 159, 0),
        "operator" => RGBColor(86, 180, 233),
        "operator-defaults" => RGBColor(0, 114, 178),
        "demeter-upstream" => RGBColor(204, 121, 167),
        "demeter" => RGBColor(213, 94, 0),
        "oracle" => RGBColor(0, 158, 115),
        _ => RGBColor(60, 60, 60),
    }
}

/// Per-minute means of `f` over the series (skipping `None`), as (hours, value) points.
fn per_minute(series: &[SeriesRow], f: impl Fn(&SeriesRow) -> Option<f64>) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(series.len() / BUCKET_S as usize + 1);
    for chunk in series.chunks(BUCKET_S as usize) {
        let vals: Vec<f64> = chunk.iter().filter_map(&f).filter(|v| v.is_finite()).collect();
        if !vals.is_empty() {
            let t = chunk[0].t as f64 / 3600.0;
            out.push((t, vals.iter().sum::<f64>() / vals.len() as f64));
        }
    }
    out
}

fn max_of(points: &[(f64, f64)]) -> f64 {
    points.iter().map(|p| p.1).fold(0.0, f64::max)
}

fn hours(report: &SimReport) -> f64 {
    (report.duration_s as f64 / 3600.0).max(1.0 / 60.0)
}

/// Writes `rate.png`, `resources.png` and `latency.png` into `dir`.
pub fn write_all(dir: &Path, report: &SimReport) -> anyhow::Result<()> {
    register_font();
    rate(&dir.join("rate.png"), report)?;
    resources(&dir.join("resources.png"), report)?;
    latency(&dir.join("latency.png"), report)?;
    Ok(())
}

fn rate(path: &Path, report: &SimReport) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (W, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let Some(base) = report.strategies.first() else { return Ok(()) };
    let offered = per_minute(&base.series, |r| Some(r.offered_rate / 1000.0));
    let shown: Vec<&StrategyRun> = report
        .strategies
        .iter()
        .filter(|r| matches!(r.summary.strategy.as_str(), "demeter" | "oracle" | "operator" | "hpa"))
        .collect();
    let caps: Vec<(String, Vec<(f64, f64)>)> = shown
        .iter()
        .map(|r| (r.summary.strategy.clone(), per_minute(&r.series, |x| Some(x.capacity / 1000.0))))
        .collect();
    let forecast = report
        .get("demeter")
        .map(|r| per_minute(&r.series, |x| x.forecast.map(|f| f / 1000.0)))
        .unwrap_or_default();
    let ymax =
        caps.iter().map(|c| max_of(&c.1)).fold(max_of(&offered), f64::max).max(max_of(&forecast)) * 1.08;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: offered rate, demeter's forecast, and capacity", report.trace),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..hours(report), 0.0..ymax.max(1.0))?;
    chart
        .configure_mesh()
        .x_desc("hours")
        .y_desc("thousand records/s")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart
        .draw_series(AreaSeries::new(offered.iter().copied(), 0.0, RGBColor(200, 200, 200).mix(0.5)))?
        .label("offered rate")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], RGBColor(200, 200, 200).filled()));
    for (name, pts) in &caps {
        let c = colour(name);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(format!("capacity: {name}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    if !forecast.is_empty() {
        let c = RGBColor(0, 0, 0);
        chart
            .draw_series(LineSeries::new(forecast.iter().copied(), c.stroke_width(1)))?
            .label("demeter: forecast peak (upper band)")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

fn resources(path: &Path, report: &SimReport) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (W, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    type Panel<'a, A> = (&'a A, &'static str, &'static str, fn(&SeriesRow) -> f64);
    let panels: [Panel<'_, DrawingArea<_, _>>; 2] = [
        (&top, "allocated CPU (cores, profiling included)", "cores", |r| r.cpu + r.profiling_cpu),
        (&bottom, "allocated memory (GB, profiling included)", "GB", |r| {
            (r.memory_mb + r.profiling_memory_mb) / 1024.0
        }),
    ];
    for (area, title, unit, f) in panels {
        let series: Vec<(String, Vec<(f64, f64)>)> = report
            .strategies
            .iter()
            .map(|r| (r.summary.strategy.clone(), per_minute(&r.series, |x| Some(f(x)))))
            .collect();
        let ymax = series.iter().map(|s| max_of(&s.1)).fold(0.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{}: {title}", report.trace), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..hours(report), 0.0..ymax.max(1.0))?;
        chart.configure_mesh().x_desc("hours").y_desc(unit).label_style(("sans-serif", 13)).draw()?;
        for (name, pts) in &series {
            let c = colour(name);
            let label = report
                .get(name)
                .map(|r| {
                    format!("{name} ({:.2} / {:.2} of static)", r.summary.cpu_ratio, r.summary.memory_ratio)
                })
                .unwrap_or_else(|| name.clone());
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn latency(path: &Path, report: &SimReport) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (W, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let series: Vec<(String, Vec<(f64, f64)>)> = report
        .strategies
        .iter()
        .map(|r| {
            (
                r.summary.strategy.clone(),
                per_minute(&r.series, |x| x.p95_latency_ms.map(|v| (v / 1000.0).max(0.1))),
            )
        })
        .collect();
    let ymax = series.iter().map(|s| max_of(&s.1)).fold(10.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{}: p95 latency (per-minute mean, log scale)", report.trace), ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..hours(report), (0.1..ymax).log_scale())?;
    chart.configure_mesh().x_desc("hours").y_desc("seconds").label_style(("sans-serif", 14)).draw()?;
    chart
        .draw_series(LineSeries::new([(0.0, 5.0), (hours(report), 5.0)], RED.stroke_width(1)))?
        .label("5 s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RED.stroke_width(1)));
    for (name, pts) in &series {
        let c = colour(name);
        let label = report
            .get(name)
            .map(|r| format!("{name} ({:.2} % of seconds > 5 s)", r.summary.pct_seconds_latency_over_5s))
            .unwrap_or_else(|| name.clone());
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(1)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
