//! Offline evaluation of the forecasting models on a trace, with the protocol of the issue:
//!
//! - the trace is scaled by [`EvalOptions::scale`] (**3.0 by default**: the upstream traces are per
//!   generator and were replayed by 3 generators, so callers pass the raw file values and must not
//!   multiply them again; synthetic traces are already offered rates and use `scale = 1.0`);
//! - decision points every `every_s` (600 s) after a `warmup_s` (2 h) warm-up, from the first
//!   timestamp, while the whole horizon lies inside the trace;
//! - at each point the forecaster has seen only the samples before it and forecasts the next
//!   `horizon_s` (600 s);
//! - F = [`Forecast::decision_peak`](super::Forecast::decision_peak) (peak of the ten 60-s bin means
//!   with the band or buffer), P = the real peak of the ten 60-s bin means;
//! - `under_forecast_rate` = share of points with P > F, `mean_overprovision` = mean of F/P − 1,
//!   `wape` = Σ|forecast bin − real bin| / Σ real bin (the point forecast, without band or buffer).
//!
//! Every model gets its own forecaster fed the same samples. The baselines run without the safe
//! fallback, so that they are measured as they are; the calibrated models run as configured.

use super::{ForecastConfig, ModelKind, WorkloadForecaster};
use serde::{Deserialize, Serialize};

/// Options of [`run`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalOptions {
    /// Name of the workload in the report.
    pub workload: String,
    /// Multiplier applied to the trace values (3.0: three generators replay the upstream traces).
    pub scale: f64,
    pub warmup_s: i64,
    pub every_s: i64,
    /// Models to evaluate, in report order.
    pub models: Vec<ModelKind>,
    /// Base config; `model` (and, for baselines, `fallback.enabled`) is overridden per model.
    pub config: ForecastConfig,
    /// Keep every decision point in the report (`ModelReport::detail`).
    pub keep_points: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            workload: String::new(),
            scale: 3.0,
            warmup_s: 7200,
            every_s: 600,
            models: ModelKind::ALL.to_vec(),
            config: ForecastConfig::default(),
            keep_points: false,
        }
    }
}

/// Figures of one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelReport {
    pub name: String,
    /// Whether this is the default model.
    pub default: bool,
    /// Fixed buffer of a buffered model (`None` for the calibrated ones).
    pub buffer: Option<f64>,
    pub wape: f64,
    pub under_forecast_rate: f64,
    pub mean_overprovision: f64,
    /// Decision points evaluated.
    pub points: usize,
    /// Points where the forecaster returned nothing (not enough history).
    pub skipped: usize,
    /// Worst relative shortfall P/F − 1 over the points (0 when never under).
    pub worst_underforecast: f64,
    /// 95th percentile of F/P − 1.
    pub p95_overprovision: f64,
    /// Points decided by the safe fallback.
    pub degraded_points: usize,
    /// Every decision point, when `EvalOptions::keep_points` is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detail: Vec<PointDetail>,
}

/// One decision point of one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointDetail {
    pub t: i64,
    /// P: the real peak of the bin means.
    pub real_peak: f64,
    /// F: the decision peak.
    pub decision_peak: f64,
    /// The peak of the forecast bin means, without band or buffer.
    pub peak_mean: f64,
    pub model: String,
    pub degraded: bool,
}

/// The evaluation of all models on one trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub workload: String,
    pub scale: f64,
    pub samples: usize,
    pub warmup_s: i64,
    pub every_s: i64,
    pub horizon_s: u32,
    pub bin_s: u32,
    pub models: Vec<ModelReport>,
}

impl EvalReport {
    /// The default model's figures.
    pub fn default_model(&self) -> Option<&ModelReport> {
        self.models.iter().find(|m| m.default)
    }

    /// A Markdown table of the figures.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from(
            "| model | default | WAPE | under-forecast rate | mean over-provision | p95 over-provision | worst shortfall | points | fallback points |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for m in &self.models {
            let name = match m.buffer {
                Some(b) if (b - 1.0).abs() > 1e-12 => format!("{} ×{b:.2}", m.name),
                _ => m.name.clone(),
            };
            s.push_str(&format!(
                "| {name} | {} | {:.2} % | {:.1} % | {:+.1} % | {:+.1} % | {:.1} % | {} | {} |\n",
                if m.default { "✔" } else { "" },
                100.0 * m.wape,
                100.0 * m.under_forecast_rate,
                100.0 * m.mean_overprovision,
                100.0 * m.p95_overprovision,
                100.0 * m.worst_underforecast,
                m.points,
                m.degraded_points
            ));
        }
        s
    }
}

/// One decision point: its time and the real bin means of its horizon.
struct Point {
    t: i64,
    real_bins: Vec<f64>,
}

/// Replays `trace` (sorted by time) through every model of `opts` with the protocol above.
pub fn run(trace: &[(i64, f64)], opts: &EvalOptions) -> EvalReport {
    let cfg = &opts.config;
    let horizon = cfg.horizon_s as i64;
    let bin = cfg.bin_s as i64;
    let nb = (horizon / bin) as usize;
    let scaled: Vec<(i64, f64)> = trace.iter().map(|&(t, v)| (t, v * opts.scale)).collect();
    let mut points = Vec::new();
    if let (Some(&(t0, _)), Some(&(t_last, _))) = (scaled.first(), scaled.last()) {
        let mut t = t0 + opts.warmup_s;
        let mut idx = 0;
        while t + horizon <= t_last + 1 {
            while idx < scaled.len() && scaled[idx].0 < t {
                idx += 1;
            }
            let mut sums = vec![(0.0, 0usize); nb];
            let mut j = idx;
            while j < scaled.len() && scaled[j].0 < t + horizon {
                let (ts, v) = scaled[j];
                if v.is_finite() && v >= 0.0 {
                    let b = ((ts - t) / bin) as usize;
                    sums[b].0 += v;
                    sums[b].1 += 1;
                }
                j += 1;
            }
            if sums.iter().all(|s| s.1 > 0) {
                points.push(Point { t, real_bins: sums.iter().map(|s| s.0 / s.1 as f64).collect() });
            }
            t += opts.every_s.max(1);
        }
    }
    let models = opts.models.iter().map(|&m| eval_model(&scaled, &points, m, opts)).collect();
    EvalReport {
        workload: opts.workload.clone(),
        scale: opts.scale,
        samples: trace.len(),
        warmup_s: opts.warmup_s,
        every_s: opts.every_s,
        horizon_s: cfg.horizon_s,
        bin_s: cfg.bin_s,
        models,
    }
}

fn eval_model(scaled: &[(i64, f64)], points: &[Point], model: ModelKind, opts: &EvalOptions) -> ModelReport {
    let mut cfg = opts.config.clone();
    cfg.model = model;
    if model.default_buffer().is_some() {
        cfg.fallback.enabled = false;
    }
    let buffer = model.default_buffer().map(|b| cfg.buffer.unwrap_or(b));
    let mut fc = WorkloadForecaster::new(cfg.clone());
    let (mut abs_err, mut actual) = (0.0, 0.0);
    let mut under = 0usize;
    let mut worst: f64 = 0.0;
    let mut overs = Vec::with_capacity(points.len());
    let (mut skipped, mut degraded) = (0usize, 0usize);
    let mut detail = Vec::new();
    let mut idx = 0;
    for p in points {
        while idx < scaled.len() && scaled[idx].0 < p.t {
            fc.observe(scaled[idx].0, scaled[idx].1);
            idx += 1;
        }
        let Some(f) = fc.forecast(p.t) else {
            skipped += 1;
            continue;
        };
        let fb = f.bin_means(cfg.bin_s);
        abs_err += fb.iter().zip(&p.real_bins).map(|(a, b)| (a - b).abs()).sum::<f64>();
        actual += p.real_bins.iter().sum::<f64>();
        let real_peak = p.real_bins.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if real_peak > f.decision_peak {
            under += 1;
            worst = worst.max(real_peak / f.decision_peak - 1.0);
        }
        overs.push(f.decision_peak / real_peak - 1.0);
        if opts.keep_points {
            detail.push(PointDetail {
                t: p.t,
                real_peak,
                decision_peak: f.decision_peak,
                peak_mean: f.peak_mean,
                model: f.model.clone(),
                degraded: f.degraded,
            });
        }
        if f.degraded {
            degraded += 1;
        }
    }
    let n = overs.len();
    let mean_over = if n > 0 { overs.iter().sum::<f64>() / n as f64 } else { 0.0 };
    overs.sort_by(f64::total_cmp);
    let p95 = if n > 0 { overs[((0.95 * n as f64).ceil() as usize).clamp(1, n) - 1] } else { 0.0 };
    ModelReport {
        name: model.name().to_string(),
        default: model.is_default(),
        buffer,
        wape: if actual > 0.0 { abs_err / actual } else { 0.0 },
        under_forecast_rate: if n > 0 { under as f64 / n as f64 } else { 0.0 },
        mean_overprovision: mean_over,
        points: n,
        skipped,
        worst_underforecast: worst,
        p95_overprovision: p95,
        degraded_points: degraded,
        detail,
    }
}

/// An unreadable trace.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TraceError {
    #[error("the trace is empty (expected the header `timestamp|value`)")]
    Empty,
    #[error("line 1: expected the header `timestamp|value`, found {0:?}")]
    Header(String),
    #[error("line {line}: {reason}: {text:?}")]
    Row { line: usize, reason: String, text: String },
    #[error("the trace has a header but no rows")]
    NoRows,
}

/// Parses a pipe-separated `timestamp|value` trace with a header line. Timestamps are integer Unix
/// seconds, strictly increasing; values are finite, non-negative numbers. Blank lines are skipped.
pub fn load_trace(csv_text: &str) -> Result<Vec<(i64, f64)>, TraceError> {
    let mut lines = csv_text.lines().enumerate();
    let header = loop {
        match lines.next() {
            None => return Err(TraceError::Empty),
            Some((_, l)) if l.trim().is_empty() => continue,
            Some((_, l)) => break l.trim().trim_start_matches('\u{feff}'),
        }
    };
    let cols: Vec<&str> = header.split('|').map(str::trim).collect();
    if cols.len() != 2 || !cols[0].eq_ignore_ascii_case("timestamp") || !cols[1].eq_ignore_ascii_case("value")
    {
        return Err(TraceError::Header(header.to_string()));
    }
    let mut out: Vec<(i64, f64)> = Vec::new();
    for (i, raw) in lines {
        let line = i + 1;
        let text = raw.trim();
        if text.is_empty() {
            continue;
        }
        let bad = |reason: &str| TraceError::Row { line, reason: reason.to_string(), text: text.to_string() };
        let mut parts = text.split('|');
        let (Some(ts), Some(v), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected two fields `timestamp|value`"));
        };
        let ts: i64 = ts.trim().parse().map_err(|_| bad("timestamp is not an integer"))?;
        let v: f64 = v.trim().parse().map_err(|_| bad("value is not a number"))?;
        if !v.is_finite() || v < 0.0 {
            return Err(bad("value must be finite and non-negative"));
        }
        if out.last().is_some_and(|&(prev, _)| ts <= prev) {
            return Err(bad("timestamps must be strictly increasing"));
        }
        out.push((ts, v));
    }
    if out.is_empty() {
        return Err(TraceError::NoRows);
    }
    Ok(out)
}
