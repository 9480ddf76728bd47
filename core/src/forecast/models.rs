//! Point models on the forecaster's grid of step means (30-s means by default).
//!
//! All functions are pure: they take the history (oldest first, one value per step, the last one
//! being the newest *complete* step) and return the means of the next `steps` steps. They are
//! implemented here rather than taken from a crate: `augurs-ets` (the maintained Rust ETS) refits
//! by numerical optimisation on every call and its fitted models are not `serde`-serialisable, while
//! the forecaster's whole state must be persisted and each forecast must stay well below 5 ms. The
//! models that matter here are tiny (last value, seasonal lag, Holt's linear trend, a local
//! parabola), so owning them costs less than adapting a crate to those constraints; the part that does
//! the real work, the online calibration of the upper band, has no crate equivalent anyway.

use serde::{Deserialize, Serialize};

/// A point model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Point {
    /// The last step mean, held flat.
    Naive,
    /// The value one season earlier; `Naive` until a season is known (the baseline).
    Seasonal,
    /// The value one season earlier, rescaled by the ratio of the last `level_window` steps to
    /// the same steps one season earlier. Not available without a season.
    SeasonalAdjusted,
    /// Holt's linear trend (ETS(A,A,N)), smoothing parameters fitted by grid search on one-step
    /// squared errors over the fit window.
    Holt,
    /// Least-squares parabola through the last `quad_window` steps, extrapolated with its slope
    /// and a damped curvature: follows the turns of smooth workloads.
    Quadratic,
}

/// Parameters the point models need.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PointParams {
    pub quad_window: usize,
    pub quad_curvature: f64,
    pub level_window: usize,
    pub holt_fit_window: usize,
    pub period: Option<usize>,
}

/// Means of the next `steps` steps after the end of `x` (`x` must not be empty), or `None` when
/// the model does not apply (a seasonal model without a season).
pub(crate) fn point_forecast(model: Point, x: &[f64], steps: usize, p: &PointParams) -> Option<Vec<f64>> {
    debug_assert!(!x.is_empty());
    let out = match model {
        Point::Naive => naive(x, steps),
        Point::Seasonal => match p.period.filter(|&per| per >= steps && x.len() >= per) {
            Some(per) => seasonal(x, steps, per, 1.0),
            None => naive(x, steps),
        },
        Point::SeasonalAdjusted => {
            let per = p.period.filter(|&per| per >= steps && x.len() >= per + p.level_window)?;
            let m = p.level_window.max(1);
            let n = x.len();
            let now: f64 = x[n - m..].iter().sum();
            let then: f64 = x[n - m - per..n - per].iter().sum();
            let ratio = if then > 0.0 { (now / then).clamp(0.5, 2.0) } else { 1.0 };
            seasonal(x, steps, per, ratio)
        }
        Point::Holt => holt(x, steps, p.holt_fit_window),
        Point::Quadratic => quadratic(x, steps, p.quad_window, p.quad_curvature),
    };
    Some(out.into_iter().map(|v| if v.is_finite() { v.max(0.0) } else { 0.0 }).collect())
}

fn naive(x: &[f64], steps: usize) -> Vec<f64> {
    vec![x[x.len() - 1]; steps]
}

fn seasonal(x: &[f64], steps: usize, per: usize, ratio: f64) -> Vec<f64> {
    let n = x.len();
    (1..=steps).map(|k| x[n - 1 + k - per] * ratio).collect()
}

/// Least-squares parabola through the last `window` points (time measured in steps, 0 at the
/// newest point), extrapolated as `c0 + c1·h + curvature·c2·h²`.
fn quadratic(x: &[f64], steps: usize, window: usize, curvature: f64) -> Vec<f64> {
    let w = window.min(x.len());
    if w < 4 {
        return naive(x, steps);
    }
    let y = &x[x.len() - w..];
    // Normal equations with t in [-(w-1), 0], scaled by w to keep them well conditioned.
    let scale = w as f64;
    let mut s = [0.0f64; 5];
    let mut r = [0.0f64; 3];
    for (j, &v) in y.iter().enumerate() {
        let t = (j as f64 - (w as f64 - 1.0)) / scale;
        let mut tp = 1.0;
        for (i, si) in s.iter_mut().enumerate() {
            *si += tp;
            if i < 3 {
                r[i] += tp * v;
            }
            tp *= t;
        }
    }
    let m = [[s[0], s[1], s[2]], [s[1], s[2], s[3]], [s[2], s[3], s[4]]];
    let Some(c) = solve3(m, r) else {
        return naive(x, steps);
    };
    (1..=steps)
        .map(|h| {
            let t = h as f64 / scale;
            c[0] + c[1] * t + curvature * c[2] * t * t
        })
        .collect()
}

/// Solves a 3×3 system by Cramer's rule; `None` when singular.
fn solve3(m: [[f64; 3]; 3], r: [f64; 3]) -> Option<[f64; 3]> {
    let det = |m: &[[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(&m);
    if !d.is_finite() || d.abs() < 1e-12 {
        return None;
    }
    let mut c = [0.0; 3];
    for (i, ci) in c.iter_mut().enumerate() {
        let mut mi = m;
        for (row, &rv) in mi.iter_mut().zip(&r) {
            row[i] = rv;
        }
        *ci = det(&mi) / d;
    }
    Some(c)
}

const HOLT_ALPHAS: [f64; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
const HOLT_BETAS: [f64; 7] = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5];

/// Holt's linear trend with (α, β) chosen on the last `fit_window` points.
fn holt(x: &[f64], steps: usize, fit_window: usize) -> Vec<f64> {
    let y = &x[x.len() - fit_window.clamp(1, x.len())..];
    if y.len() < 4 {
        return naive(x, steps);
    }
    let run = |alpha: f64, beta: f64| -> (f64, f64, f64) {
        let mut l = y[0];
        let mut b = y[1] - y[0];
        let mut sse = 0.0;
        for &v in &y[1..] {
            let pred = l + b;
            let e = v - pred;
            sse += e * e;
            let l_new = pred + alpha * e;
            b += alpha * beta * e;
            l = l_new;
        }
        (sse, l, b)
    };
    let mut best = (f64::INFINITY, y[y.len() - 1], 0.0);
    for &a in &HOLT_ALPHAS {
        for &bt in &HOLT_BETAS {
            let r = run(a, bt);
            if r.0 < best.0 {
                best = r;
            }
        }
    }
    let (_, l, b) = best;
    (1..=steps).map(|k| l + b * k as f64).collect()
}

/// Detects a season in `x` (one value per `step_s`), between `min_s` and `max_s`.
///
/// Works on 5-minute block means aligned to the end of `x`, on their first differences (so that a
/// trend does not pass for a season), and needs at least `min_overlap_s` of overlap between the
/// series and its lagged copy. Among the local maxima of the correlation within 0.05 of the best,
/// the shortest lag wins (so that 12 h does not beat 6 h on a 6-hour cycle). Returns the period in steps.
pub(crate) fn detect_period(
    x: &[f64],
    step_s: u32,
    min_s: u32,
    max_s: u32,
    min_overlap_s: u32,
    min_corr: f64,
) -> Option<usize> {
    let block_s = 300u32.max(step_s);
    let agg = (block_s / step_s).max(1) as usize;
    let block_s = agg as u32 * step_s;
    let m = x.len() / agg;
    if m < 4 {
        return None;
    }
    let start = x.len() - m * agg;
    let blocks: Vec<f64> = x[start..].chunks_exact(agg).map(|c| c.iter().sum::<f64>() / agg as f64).collect();
    let d: Vec<f64> = blocks.windows(2).map(|w| w[1] - w[0]).collect();
    let min_overlap = (min_overlap_s / block_s).max(4) as usize;
    let lag_lo = min_s.div_ceil(block_s).max(1) as usize;
    let lag_hi = ((max_s / block_s) as usize).min(d.len().saturating_sub(min_overlap));
    if lag_lo > lag_hi {
        return None;
    }
    let corrs: Vec<(usize, f64)> =
        (lag_lo..=lag_hi).map(|lag| (lag, pearson(&d[lag..], &d[..d.len() - lag]))).collect();
    let best = corrs.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    if best.is_nan() || best < min_corr {
        return None;
    }
    // The shortest lag that is a local maximum and close to the best.
    (0..corrs.len())
        .find(|&i| {
            let c = corrs[i].1;
            c >= best - 0.05
                && (i == 0 || c >= corrs[i - 1].1)
                && (i + 1 == corrs.len() || c >= corrs[i + 1].1)
        })
        .map(|i| corrs[i].0 * agg)
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 3 {
        return 0.0;
    }
    let ma = a[..n].iter().sum::<f64>() / n as f64;
    let mb = b[..n].iter().sum::<f64>() / n as f64;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (da, db) = (a[i] - ma, b[i] - mb);
        sab += da * db;
        saa += da * da;
        sbb += db * db;
    }
    if saa <= 0.0 || sbb <= 0.0 { 0.0 } else { sab / (saa * sbb).sqrt() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> PointParams {
        PointParams {
            quad_window: 10,
            quad_curvature: 1.0,
            level_window: 10,
            holt_fit_window: 240,
            period: None,
        }
    }

    #[test]
    fn trend_models_extrapolate_exactly() {
        let line: Vec<f64> = (0..50).map(|i| 100.0 + 2.0 * i as f64).collect();
        let h = point_forecast(Point::Holt, &line, 5, &params()).unwrap();
        assert!((h[4] - 208.0).abs() < 1e-6, "{h:?}");
        let parabola: Vec<f64> = (0..50).map(|i| 1000.0 + 3.0 * i as f64 - 0.05 * (i * i) as f64).collect();
        let q = point_forecast(Point::Quadratic, &parabola, 20, &params()).unwrap();
        for (k, v) in q.iter().enumerate() {
            let i = (50 + k) as f64;
            assert!((v - (1000.0 + 3.0 * i - 0.05 * i * i)).abs() < 1e-6, "{k}: {v}");
        }
        // Without a season the adjusted seasonal model does not apply; the baseline is naive.
        assert_eq!(point_forecast(Point::SeasonalAdjusted, &line, 5, &params()), None);
        assert_eq!(point_forecast(Point::Seasonal, &line, 2, &params()), Some(vec![198.0, 198.0]));
    }

    #[test]
    fn seasonal_repeats_the_cycle_and_detection_finds_it() {
        // 30-s steps, 2-hour cycle, 7 hours of data.
        let per = 240;
        let x: Vec<f64> = (0..840)
            .map(|i| 1000.0 + 300.0 * (2.0 * std::f64::consts::PI * i as f64 / per as f64).sin())
            .collect();
        let found = detect_period(&x, 30, 1800, 86_400, 3600, 0.6);
        assert_eq!(found, Some(per));
        let p = PointParams { period: found, ..params() };
        let f = point_forecast(Point::Seasonal, &x, 20, &p).unwrap();
        for (k, v) in f.iter().enumerate() {
            assert!((v - x[840 + k - per]).abs() < 1e-9);
        }
        // A straight line has no season.
        let line: Vec<f64> = (0..840).map(|i| i as f64).collect();
        assert_eq!(detect_period(&line, 30, 1800, 86_400, 3600, 0.6), None);
    }
}
