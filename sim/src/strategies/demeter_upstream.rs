//! `demeter-upstream`: the upstream Demeter autoscaler (dos-group/demeter, ICPE'24, commit
//! 8ae535a) as faithfully as practical, quirks included, as a baseline for the comparison.
//!
//! Upstream is a Java state machine (two background loops) talking to a Python analytics service
//! (pmdarima forecasting, scikit-learn latency normalisation, Ax/BoTorch multi-objective BO with
//! RGPE transfer learning). Everything below is re-implemented from that code; the reference is
//! `/work/shared/docs/demeter-upstream.md` and the upstream sources it cites.
//!
//! # The two loops (optimizer `execution/demeter/Graph.java`)
//! - **OPTIMIZE**: every 60 s, check `now − lastTs ≥ 600`; if so, ask for a rescale decision and,
//!   on `RESCALE`, redeploy with a savepoint ([`ReconfigKind::Redeploy`]), wait 60 s and set
//!   `lastTs`. `lastTs` is also set by the failures injected into the production job. Between two
//!   evaluations there are 1 s + 60 s of sleep plus the analytics call (≈4 s in the runs' logs, so
//!   an idle evaluation every 65 s).
//! - **PROFILE**: wait 600 s once, then loop: ask `/profile` (the call runs until its 600 s
//!   timeout measured from `now − 10 s`: 590 s, as the runs' logs show for nearly every round),
//!   start every returned configuration as a short-lived profiling job on the live input, measure
//!   it over [120 s, 180 s] of its life, inject a 30 s network failure 5 s before its next
//!   checkpoint, give it 20 s (heartbeat timeout) plus up to 340 s to recover (stored as 360 s if it
//!   never does), delete all jobs of the round when the slowest is done, loop. An empty answer
//!   loops straight into the next request.
//!
//! # The analytics pipeline, per request
//! 1. **Forecast** (§1.3): Savitzky–Golay (51, 3) + centred exponential window (60, τ = 1) on the
//!    observed input rate; 20 ARIMA models on the series subsampled at strides i × 30 s (backwards
//!    from the last point); each forecasts its own stride points over the next 600 s; per second the
//!    available model values are combined with `ewm(span=5, adjust=False)` across models (last
//!    column), interpolated, smoothed by a centred 120 s rolling mean; 10 bins of 60 s, and
//!    `pred = round(max(bins) × 1.10, 2)`.
//! 2. **Latency normalisation** (§1.4): over all profiles plus the current production sample,
//!    in-sample GBR prediction on (scaleout, throughput), then `max(0, tanh(log4(lat / min)))`,
//!    class = `round(norm)` (abnormal ⇔ lat ≥ 2.14 × min).
//! 3. **Bucketing** (§1.5): 10k-events/s buckets from the minimum throughput, target bucket = first
//!    whose lower edge ≥ `pred`, profiles assigned by direct fit / stable-above / bottlenecked-below,
//!    sorted by |thr − t1| and deduplicated, trimmed by `_filter_by_num_init`; up to 2 support buckets
//!    strictly above the target with ≥ 3 profiles.
//! 4. **Models**: per bucket, 4 independent fixed-noise GPs (ln cpu, ln memory — deterministic, yet
//!    modelled: upstream quirk —, log1p(normalised latency), ln recovery), each target value with
//!    N(0, 0.1) noise drawn from a generator seeded by the bucket (upstream reseeds numpy with
//!    `int(t0 + t1)`), on the 5 knobs index-encoded and unit-scaled in alphabetical order. Target
//!    model: a single bucket GP (`num_init` 3, Ax `StandardizeY`) or, with support buckets, RGPE
//!    (`num_init` 1, manual standardisation that keeps the noise variance at 0.01: upstream quirk).
//!    Until a bucket has `num_init` profiles it is "Sobol": no predictions.
//! 5. **Rescale decision** (§1.6, `get_optimized_configs`): abnormal current latency ⇒ default
//!    config; Sobol ⇒ keep; otherwise predict every option except the current one, keep those whose
//!    upper-1σ constraints × 1.25 hold, drop the cheapest quarter per objective
//!    (`mean < max(min + ln 1.25, q25)`), score `comb_obj = Σ (mean + σ) / threshold`; if the current
//!    config "can handle" the load (passes the constraint filter, or is the default) keep it only
//!    when the best candidate is better by at most 5 %, **otherwise switch to the best candidate even
//!    when it scores worse** (upstream quirk); if it cannot, switch to the best or to the default.
//! 6. **Profiling suggestions** (`get_suggestions`): budget `(max_cluster − N_total) ×
//!    0.95^{#profiles in the target bucket}` with `max_cluster` = 50 CPU / 430,000 MB, candidate
//!    options within the budget and "greater" than `factor × N` (0.25 when N copes, 0.75 after a
//!    bad-latency or cannot-cope decision, none while Sobol); accepted proposals must be candidates,
//!    not yet profiled in the bucket, not bottlenecked at a rate ≤ the target's lower edge nor
//!    stable at a rate ≥ its upper edge, and fit the budget cumulatively. When the GT filter leaves
//!    no candidate, upstream falls back to every option within the budget (N included).
//!
//! The production job's own observations never become training data (upstream quirk: its rows
//! carry `recTime = −1` and are filtered out); they only enter the latency normalisation and the
//! decision as the "current profile".
//!
//! # Simplifications (every deviation from upstream)
//! - **Forecaster training.** Upstream pre-trained its ARIMA models offline on ≈36 h of the very
//!   trace the experiment replays (so it had seen the future). A strategy here never sees the
//!   future: the models are fitted on the input observed so far only, and a stride model joins the
//!   ensemble once its subsampled series has [`MIN_ARIMA_POINTS`] points (stride 30 s after 10 min,
//!   stride 600 s after 3.3 h); before any model exists the forecast is the last smoothed value.
//! - **auto-ARIMA.** pmdarima's stepwise search with statsmodels' exact likelihood is replaced by:
//!   `d` from a KPSS level test (α = 0.05, up to 2, pmdarima's default test), then a full grid
//!   p ≤ 3, q ≤ 2, with and without intercept when d ≤ 1, each fitted by Hannan–Rissanen
//!   (long-AR residuals, then least squares), rejected when not stationary/invertible, selected by
//!   conditional-likelihood AIC. Models are refitted at every request on at most
//!   [`UpstreamSettings::max_fit_points`] recent stride points instead of being updated online, and
//!   the stride grid is aligned to the newest point (upstream keeps the phase of its training end).
//! - **Pre-processing** is done once over the whole observed history (cached; bit-identical to
//!   re-processing it all) instead of separately on each request's slice since `lastTs`, so there
//!   are no slice-edge effects.
//! - **GBR.** A depth-10 GBR with 3·N trees and learning rate 0.1 isolates every distinct
//!   (scaleout, throughput) point in each tree, so its in-sample prediction has the closed form
//!   `g + (ȳ − g)·0.9^{3N}` (g = the point's group mean, ȳ = overall mean): that is what is
//!   computed. Equal inputs are averaged, as the trees do.
//! - **RGPE.** Ranking losses use [`UpstreamSettings::rgpe_samples`] independent draws from each
//!   model's *marginal* posterior (upstream: 1024 joint Sobol-QMC samples); the target's LOOCV
//!   refits the GP on n − 1 points. Pruning (RGPE v4, α = 0, 20 evaluations), tie splitting, the
//!   small-target rules and the mean/variance combination (Σ w μ, Σ w² σ², mapped back with the
//!   target's y-mean and y-std) follow upstream.
//! - **GP.** BoTorch 0.6's `FixedNoiseGP` (Matérn-5/2 ARD, constant mean, Gamma priors, fitted by
//!   `fit_gpytorch_model`) is `demeter_core::gp::Gp`: Matérn-5/2 ARD, the noise variance pinned to
//!   upstream's value, MAP hyperparameters under log-normal priors moment-matched to BoTorch's
//!   Gamma(3, 6) lengthscale and Gamma(2, 0.15) outputscale priors, and an integrated constant
//!   (bias variance 1) instead of a fitted constant mean.
//! - **qNEHVI proposals.** Upstream loops `get_next_trial` (qNEHVI over the 1,200-point grid) until
//!   the 590 s timeout. Here each proposal is the grid point (not yet in the bucket's experiment nor
//!   proposed) with the highest constrained expected hypervolume improvement: 2 objectives,
//!   reference point = upstream's thresholds, Pareto front of the posterior means at the bucket's
//!   feasible profiles, hard feasibility of sampled constraints, [`UpstreamSettings::acq_samples`]
//!   common random draws. As upstream, accepted proposals stay pending and condition the next one
//!   (here their posterior mean joins the front, "Kriging believer", rather than qNEHVI's
//!   fantasies), and a valid proposal over the budget is completed with the artificial *feasible*
//!   values `0.1 · r · thresholds`, which join the front; an invalid proposal (r = 20, infeasible)
//!   is only skipped: the GP is not refitted with its artificial values. The number of proposals
//!   per 590 s call is an assumption, not in any log: ≈30 s per proposal (RGPE refit with LOOCV and
//!   1024-sample rank weights, qNEHVI optimisation with 20 restarts and 1024 raw samples), so
//!   [`UpstreamSettings::proposals_per_round`] = 20. It bounds the size of model-based profiling
//!   rounds.
//! - **Sobol** uses Joe–Kuo direction numbers with a random digital shift seeded per bucket
//!   (Ax: scrambled torch Sobol seeded with `int(t0 + t1)`), mapped to grid indices by rounding as
//!   Ax's `IntToFloat` does; the whole grid is walked (Sobol generation is fast enough that upstream
//!   exhausts it within the timeout).
//! - **Reference point.** The objective thresholds use upstream's formula with one draw of 100k
//!   normals from this strategy's generator.
//! - **Failure injections.** The strategy cannot see the simulator's failure schedule; it detects an
//!   injected failure from the production observations (see [`FailureDetector`]: throughput below
//!   20 % of the offered rate after ≥ 30 s above 50 %, outside reconfigurations) and sets `lastTs` at
//!   the detected onset, within a second or two of upstream's injection instant. A failure that hits
//!   a job already processing less than half its input (heavily overloaded) is not detected.
//! - **Analytics latency.** A rescale decision is applied at the check instead of ≈4 s later (the
//!   call's duration); a profiling answer arrives 590 s after its request, with the decision taken
//!   on the data at the request, as upstream's.
//! - **Profiling job lifetime.** Each profiling run ends when its own recovery has been measured
//!   (or censored); upstream deletes all jobs of a round together when the slowest is done, so a
//!   round's faster jobs cost upstream a little more than here. The round itself ends with its
//!   slowest job, as upstream's.
//! - **Invalid samples.** Upstream's request validation rejects a profile with zero throughput or
//!   latency (HTTP 422, which fails the whole loop iteration). Such profiles are dropped here, and an
//!   OPTIMIZE check or PROFILE request whose production throughput or latency over the last 60 s is
//!   zero or missing fails like upstream's call (the OPTIMIZE loop sleeps on, the PROFILE loop
//!   retries at once).
//! - Ties in the `comb_obj` sort are broken by candidate order (pandas' quicksort is unstable).
//!
//! [`Strategy::forecast_rate`] reports the latest `pred` (forecast peak × 1.10), the number the
//! decisions use.

use std::collections::{BTreeMap, HashMap, HashSet};

use demeter_common::{JobConfig, Quota, SearchSpace};
use demeter_core::obs::RecoveryTime;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::strategy::{Command, ProfileId, ReconfigKind, StepContext, Strategy};

/// Stride models need at least this many points to be fitted.
pub const MIN_ARIMA_POINTS: usize = 20;

/// Upstream's settings (`demeter.properties`, analytics `configuration.py`) and the few
/// assumptions of this re-implementation. The defaults are upstream's values.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamSettings {
    /// `evalInt`: minimum time since `lastTs` before a rescale evaluation (s).
    pub eval_interval_s: i64,
    /// The OPTIMIZE loop's sleep between checks (s).
    pub optimize_poll_s: i64,
    /// Extra time per evaluation: the loop's 1 s sleep plus the analytics call (s).
    pub optimize_call_s: i64,
    /// Wait after a redeploy before `lastTs` is taken (s).
    pub rescale_settle_s: i64,
    /// `avgWindow`: window of the production throughput and latency averages (s).
    pub avg_window_s: usize,
    /// The PROFILE loop's initial wait (s).
    pub profile_first_wait_s: i64,
    /// Duration of a `/profile` call: the 600 s timeout counted from `now − 10 s`.
    pub profile_request_s: i64,
    /// Profiling job start-up wait before metrics are read (s).
    pub profile_startup_s: u32,
    /// Profiling measurement window (s).
    pub profile_measure_s: u32,
    /// Recovery time stored for a run that never recovered: 20 s heartbeat timeout + 340 s.
    pub recovery_censor_s: f64,
    /// `cpuConst` / `max_cluster_cpu`.
    pub max_cluster_cpu: f64,
    /// `memConst` / `max_cluster_memory` (MB).
    pub max_cluster_memory_mb: f64,
    /// `recTimeConst` (s).
    pub recovery_bound_s: f64,
    /// Bound on the normalised latency (`constraints.latency`).
    pub latency_bound: f64,
    /// Assumed number of qNEHVI proposals within one `/profile` call (see the module doc).
    pub proposals_per_round: usize,
    /// Posterior draws per model for the RGPE ranking losses.
    pub rgpe_samples: usize,
    /// Common random draws for the acquisition function.
    pub acq_samples: usize,
    /// Most recent stride points an ARIMA model is fitted on.
    pub max_fit_points: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            eval_interval_s: 600,
            optimize_poll_s: 60,
            optimize_call_s: 5,
            rescale_settle_s: 60,
            avg_window_s: 60,
            profile_first_wait_s: 600,
            profile_request_s: 590,
            profile_startup_s: 120,
            profile_measure_s: 61,
            recovery_censor_s: 360.0,
            max_cluster_cpu: 50.0,
            max_cluster_memory_mb: 430_000.0,
            recovery_bound_s: 180.0,
            latency_bound: 0.5,
            proposals_per_round: 20,
            rgpe_samples: 256,
            acq_samples: 64,
            max_fit_points: 400,
        }
    }
}

// Analytics constants (`configuration.py`).
const FORECAST_STEP_S: usize = 30;
const FORECAST_HORIZON_S: usize = 600;
const FORECAST_BINS: usize = 10;
const FORECAST_BUFFER: f64 = 1.10;
const SAVGOL_WINDOW: usize = 51;
const SAVGOL_POLY: usize = 3;
const BUCKET_WIDTH: f64 = 10_000.0;
const MAX_SUPPORT_MODELS: usize = 2;
const MIN_IMPROVEMENT: f64 = 0.05;
const BASE_FACTOR: f64 = 0.95;
const CONST_SCALER: f64 = 1.25;
const OBJ_SCALER: f64 = 1.25;
const NOISE_SD: f64 = 0.1;
const NUM_INIT: usize = 3;
const RGPE_EVALUATIONS: f64 = 20.0;

// ---------------------------------------------------------------------------------------------
// Small numerics
// ---------------------------------------------------------------------------------------------

/// numpy/Python rounding to 2 decimals (half to even).
fn round2(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

/// Python's `round(norm)` as the latency class.
fn latency_class(norm: f64) -> i64 {
    norm.round_ties_even() as i64
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() { 0.0 } else { xs.iter().sum::<f64>() / xs.len() as f64 }
}

/// Standard deviation with `ddof` degrees of freedom removed (NaN when undefined).
fn std_dev(xs: &[f64], ddof: usize) -> f64 {
    if xs.len() <= ddof {
        return f64::NAN;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - ddof) as f64).sqrt()
}

/// numpy's default (linear) quantile.
fn quantile_linear(xs: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Solves the dense `n × n` system `a x = b` (row-major) by Gaussian elimination with partial
/// pivoting; `None` when singular.
fn solve_dense(mut a: Vec<f64>, mut b: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    let scale = a.iter().fold(0.0_f64, |m, v| m.max(v.abs())).max(1e-300);
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))?;
        if a[piv * n + col].abs() <= 1e-13 * scale {
            return None;
        }
        if piv != col {
            for k in 0..n {
                a.swap(piv * n + k, col * n + k);
            }
            b.swap(piv, col);
        }
        for r in col + 1..n {
            let f = a[r * n + col] / a[col * n + col];
            if f != 0.0 {
                for k in col..n {
                    a[r * n + k] -= f * a[col * n + k];
                }
                b[r] -= f * b[col];
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r * n + k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r * n + r];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

/// Accumulated normal equations of a least-squares problem.
struct NormalEq {
    k: usize,
    xtx: Vec<f64>,
    xty: Vec<f64>,
}

impl NormalEq {
    fn new(k: usize) -> Self {
        NormalEq { k, xtx: vec![0.0; k * k], xty: vec![0.0; k] }
    }

    fn add(&mut self, row: &[f64], y: f64) {
        for (i, ri) in row.iter().enumerate() {
            self.xty[i] += ri * y;
            for (j, rj) in row.iter().enumerate() {
                self.xtx[i * self.k + j] += ri * rj;
            }
        }
    }

    fn solve(self) -> Option<Vec<f64>> {
        if self.k == 0 {
            return Some(Vec::new());
        }
        solve_dense(self.xtx, self.xty, self.k)
    }
}

// ---------------------------------------------------------------------------------------------
// Forecasting (§1.3)
// ---------------------------------------------------------------------------------------------

/// Least-squares weights that evaluate, at window position `pos`, the degree-`poly` polynomial
/// fitted to a window of `w` points.
fn savgol_weights(w: usize, poly: usize, pos: usize) -> Vec<f64> {
    let half = (w / 2).max(1) as f64;
    let t = |k: usize| (k as f64 - (w / 2) as f64) / half;
    let m = poly + 1;
    let mut ata = vec![0.0; m * m];
    for k in 0..w {
        let tk = t(k);
        for i in 0..m {
            for j in 0..m {
                ata[i * m + j] += tk.powi((i + j) as i32);
            }
        }
    }
    let e: Vec<f64> = (0..m).map(|j| t(pos).powi(j as i32)).collect();
    let z = solve_dense(ata, e, m).unwrap_or_else(|| {
        let mut v = vec![0.0; m];
        v[0] = 1.0 / w as f64;
        v
    });
    (0..w).map(|k| (0..m).map(|j| t(k).powi(j as i32) * z[j]).sum()).collect()
}

/// `scipy.signal.savgol_filter(data, window, poly)` with its default `mode="interp"`, and the
/// window/order corrections of upstream's `_smooth` for short inputs.
fn savgol(data: &[f64], window: usize, poly: usize) -> Vec<f64> {
    let n = data.len();
    if n == 0 {
        return Vec::new();
    }
    let mut w = window.min(n);
    if w.is_multiple_of(2) {
        w -= 1;
    }
    let p = poly.min(w - 1);
    if w == 1 {
        return data.to_vec();
    }
    let half = w / 2;
    let centre = savgol_weights(w, p, half);
    let mut out = vec![0.0; n];
    for (i, o) in out.iter_mut().enumerate().take(n - half).skip(half) {
        *o = centre.iter().zip(&data[i - half..i + half + 1]).map(|(c, x)| c * x).sum();
    }
    for pos in 0..half {
        let wts = savgol_weights(w, p, pos);
        out[pos] = wts.iter().zip(&data[..w]).map(|(c, x)| c * x).sum();
        let pos_end = w - 1 - pos;
        let wts = savgol_weights(w, p, pos_end);
        out[n - w + pos_end] = wts.iter().zip(&data[n - w..]).map(|(c, x)| c * x).sum();
    }
    out
}

/// `pd.Series.rolling(window, min_periods=1, center=True, win_type="exponential").mean()` with
/// scipy's default τ = 1.
fn exponential_window_mean(data: &[f64], window: usize) -> Vec<f64> {
    let centre = (window as f64 - 1.0) / 2.0;
    let weights: Vec<f64> = (0..window).map(|j| (-(j as f64 - centre).abs()).exp()).collect();
    let offset = (window - 1) / 2;
    let n = data.len() as i64;
    (0..n)
        .map(|i| {
            let start = i - (window as i64 - 1) + offset as i64;
            let (mut s, mut ws) = (0.0, 0.0);
            for (j, w) in weights.iter().enumerate() {
                let idx = start + j as i64;
                if (0..n).contains(&idx) {
                    s += w * data[idx as usize];
                    ws += w;
                }
            }
            s / ws
        })
        .collect()
}

/// Centred rolling mean with `min_periods=1` (pandas' window `[i − w/2, i + w/2 − 1]`).
fn centred_rolling_mean(data: &[f64], window: usize) -> Vec<f64> {
    let n = data.len();
    let mut prefix = vec![0.0; n + 1];
    for (i, x) in data.iter().enumerate() {
        prefix[i + 1] = prefix[i] + x;
    }
    let back = window - 1 - (window - 1) / 2;
    let fwd = (window - 1) / 2;
    (0..n)
        .map(|i| {
            let lo = i.saturating_sub(back);
            let hi = (i + fwd).min(n - 1);
            (prefix[hi + 1] - prefix[lo]) / (hi + 1 - lo) as f64
        })
        .collect()
}

fn diff(x: &[f64]) -> Vec<f64> {
    x.windows(2).map(|w| w[1] - w[0]).collect()
}

/// KPSS level-stationarity statistic with pmdarima's short lag (`trunc(3√n / 13)`).
fn kpss_stat(y: &[f64]) -> f64 {
    let n = y.len();
    let m = mean(y);
    let e: Vec<f64> = y.iter().map(|v| v - m).collect();
    let mut s = 0.0;
    let mut eta = 0.0;
    for v in &e {
        s += v;
        eta += s * s;
    }
    let nf = n as f64;
    eta /= nf * nf;
    let lags = (3.0 * nf.sqrt() / 13.0) as usize;
    let mut s2 = e.iter().map(|v| v * v).sum::<f64>() / nf;
    for k in 1..=lags.min(n.saturating_sub(1)) {
        let w = 1.0 - k as f64 / (lags as f64 + 1.0);
        let cov: f64 = (k..n).map(|t| e[t] * e[t - k]).sum();
        s2 += 2.0 * w * cov / nf;
    }
    if s2 <= 0.0 { 0.0 } else { eta / s2 }
}

/// `pmdarima.arima.ndiffs(test="kpss", alpha=0.05, max_d=2)`.
fn ndiffs(y: &[f64]) -> usize {
    const KPSS_CRIT_5PCT: f64 = 0.463;
    let mut z = y.to_vec();
    let mut d = 0;
    while d < 2 && z.len() > 3 && kpss_stat(&z) > KPSS_CRIT_5PCT {
        z = diff(&z);
        d += 1;
    }
    d
}

/// Whether `1 − Σ a_i Bⁱ` has all roots outside the unit circle (Durbin–Levinson step-down).
fn is_stable(coefs: &[f64]) -> bool {
    let mut a = coefs.to_vec();
    while let Some(&k) = a.last() {
        if !k.is_finite() || k.abs() >= 0.999 {
            return false;
        }
        let p = a.len();
        let denom = 1.0 - k * k;
        let prev: Vec<f64> = (0..p - 1).map(|i| (a[i] + k * a[p - 2 - i]) / denom).collect();
        a = prev;
    }
    true
}

/// Conditional residuals of an ARMA model (zero before the first `p` points).
fn arma_residuals(z: &[f64], c: f64, phi: &[f64], theta: &[f64]) -> Vec<f64> {
    let p = phi.len();
    let mut e = vec![0.0; z.len()];
    for t in p..z.len() {
        let mut v = z[t] - c;
        for (i, f) in phi.iter().enumerate() {
            v -= f * z[t - 1 - i];
        }
        for (j, th) in theta.iter().enumerate() {
            if t > j {
                v -= th * e[t - 1 - j];
            }
        }
        e[t] = v;
    }
    e
}

/// A fitted ARIMA(p, d, q) model.
#[derive(Clone, Debug, PartialEq)]
struct Arima {
    d: usize,
    c: f64,
    phi: Vec<f64>,
    theta: Vec<f64>,
}

impl Arima {
    /// Forecasts `h` steps after the end of `y` (the series the model was fitted on).
    fn forecast(&self, y: &[f64], h: usize) -> Vec<f64> {
        let mut levels: Vec<Vec<f64>> = vec![y.to_vec()];
        for _ in 0..self.d {
            let next = diff(levels.last().map(Vec::as_slice).unwrap_or(&[]));
            levels.push(next);
        }
        let z = levels.last().cloned().unwrap_or_default();
        let mut e = arma_residuals(&z, self.c, &self.phi, &self.theta);
        let mut zz = z.clone();
        for _ in 0..h {
            let t = zz.len();
            let mut v = self.c;
            for (i, f) in self.phi.iter().enumerate() {
                if t > i {
                    v += f * zz[t - 1 - i];
                }
            }
            for (j, th) in self.theta.iter().enumerate() {
                if t > j {
                    v += th * e[t - 1 - j];
                }
            }
            zz.push(v);
            e.push(0.0);
        }
        let mut fut: Vec<f64> = zz[z.len()..].to_vec();
        for lvl in (0..self.d).rev() {
            let mut last = levels[lvl].last().copied().unwrap_or(0.0);
            for f in fut.iter_mut() {
                last += *f;
                *f = last;
            }
        }
        fut
    }
}

/// Fits ARMA(p, q) with or without intercept by Hannan–Rissanen on the standardised series `zz`
/// (with long-AR residuals `ehat`), from `t0` on. Returns (c, φ, θ, AIC) on the `zz` scale.
fn fit_arma(
    zz: &[f64],
    ehat: &[f64],
    p: usize,
    q: usize,
    intercept: bool,
    t0: usize,
) -> Option<(f64, Vec<f64>, Vec<f64>, f64)> {
    let k = usize::from(intercept) + p + q;
    let mut ne = NormalEq::new(k);
    let mut row = Vec::with_capacity(k);
    for t in t0..zz.len() {
        row.clear();
        if intercept {
            row.push(1.0);
        }
        row.extend((1..=p).map(|i| zz[t - i]));
        row.extend((1..=q).map(|j| ehat[t - j]));
        ne.add(&row, zz[t]);
    }
    let beta = ne.solve()?;
    let c = if intercept { beta[0] } else { 0.0 };
    let off = usize::from(intercept);
    let phi = beta[off..off + p].to_vec();
    let theta = beta[off + p..].to_vec();
    let neg_theta: Vec<f64> = theta.iter().map(|v| -v).collect();
    if !is_stable(&phi) || !is_stable(&neg_theta) {
        return None;
    }
    let e = arma_residuals(zz, c, &phi, &theta);
    let n_eff = (zz.len() - t0) as f64;
    let sse: f64 = e[t0..].iter().map(|v| v * v).sum();
    let sigma2 = (sse / n_eff).max(1e-300);
    let aic = n_eff * sigma2.ln() + 2.0 * (k as f64 + 1.0);
    aic.is_finite().then_some((c, phi, theta, aic))
}

/// The auto-ARIMA approximation (see the module doc).
fn auto_arima(y: &[f64]) -> Option<Arima> {
    if y.len() < MIN_ARIMA_POINTS || y.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let d = ndiffs(y);
    let mut z = y.to_vec();
    for _ in 0..d {
        z = diff(&z);
    }
    let m = z.len();
    let long = (m / 10).clamp(2, 8);
    let t0 = long + 2;
    if m < t0 + 10 {
        return None;
    }
    let mu = mean(&z);
    let sd = match std_dev(&z, 0) {
        s if s.is_finite() && s > 1e-9 => s,
        _ => return Some(Arima { d, c: if d <= 1 { mu } else { 0.0 }, phi: vec![], theta: vec![] }),
    };
    let mut best: Option<(f64, Arima)> = None;
    let intercepts: &[bool] = if d <= 1 { &[true, false] } else { &[false] };
    for &intercept in intercepts {
        let zz: Vec<f64> = z.iter().map(|v| if intercept { (v - mu) / sd } else { v / sd }).collect();
        // Stage 1: long autoregression for the innovations.
        let mut ne = NormalEq::new(long + usize::from(intercept));
        let mut row = Vec::new();
        for t in long..m {
            row.clear();
            if intercept {
                row.push(1.0);
            }
            row.extend((1..=long).map(|i| zz[t - i]));
            ne.add(&row, zz[t]);
        }
        let Some(ar) = ne.solve() else { continue };
        let mut ehat = vec![0.0; m];
        for t in long..m {
            let off = usize::from(intercept);
            let mut v = zz[t] - if intercept { ar[0] } else { 0.0 };
            for i in 1..=long {
                v -= ar[off + i - 1] * zz[t - i];
            }
            ehat[t] = v;
        }
        for p in 0..=3 {
            for q in 0..=2 {
                let Some((c, phi, theta, aic)) = fit_arma(&zz, &ehat, p, q, intercept, t0) else { continue };
                let sum_phi: f64 = phi.iter().sum();
                let c_raw = if intercept { mu * (1.0 - sum_phi) + sd * c } else { 0.0 };
                let model = Arima { d, c: c_raw, phi, theta };
                if best.as_ref().is_none_or(|(a, _)| aic < *a) {
                    best = Some((aic, model));
                }
            }
        }
    }
    best.map(|(_, m)| m)
}

/// The forecaster's input: the observed input rate, smoothed as upstream's `_process_workload`.
#[derive(Clone, Debug, Default)]
struct Workload {
    raw: Vec<f64>,
    processed: Vec<f64>,
    /// `processed[..stable]` can no longer change as more data arrives.
    stable: usize,
}

impl Workload {
    const MARGIN: usize = 200;

    fn push(&mut self, v: f64) {
        let last = self.raw.last().copied().unwrap_or(0.0);
        self.raw.push(if v.is_finite() && v >= 0.0 { v } else { last });
    }

    fn process(&mut self) -> &[f64] {
        let n = self.raw.len();
        if self.processed.len() == n && self.stable + 60 >= n {
            return &self.processed;
        }
        let s0 = self.stable.saturating_sub(Self::MARGIN);
        let sg = savgol(&self.raw[s0..], SAVGOL_WINDOW, SAVGOL_POLY);
        let ew = exponential_window_mean(&sg, 2 * FORECAST_STEP_S);
        self.processed.truncate(self.stable);
        self.processed.extend_from_slice(&ew[self.stable - s0..]);
        self.stable = n.saturating_sub(60).max(self.stable);
        &self.processed
    }
}

/// The 600 one-second forecasts of upstream's `_predict_routine` from the processed series.
fn ensemble_forecast(processed: &[f64], max_fit_points: usize) -> Vec<f64> {
    let n = processed.len();
    let Some(&last) = processed.last() else { return vec![0.0; FORECAST_HORIZON_S] };
    let num_models = FORECAST_HORIZON_S / FORECAST_STEP_S;
    // table[row][model]
    let mut table: Vec<Vec<Option<f64>>> = vec![vec![None; num_models]; FORECAST_HORIZON_S + 1];
    let mut available = vec![false; num_models];
    for (i, avail) in available.iter_mut().enumerate() {
        let stride = (i + 1) * FORECAST_STEP_S;
        let mut pts: Vec<f64> = (0..)
            .map(|k| k * stride)
            .take_while(|&o| o < n)
            .map(|o| processed[n - 1 - o])
            .take(max_fit_points)
            .collect();
        pts.reverse();
        let Some(model) = auto_arima(&pts) else { continue };
        *avail = true;
        let h = FORECAST_HORIZON_S / stride;
        for (k, v) in model.forecast(&pts, h).into_iter().enumerate() {
            table[(k + 1) * stride][i] = v.is_finite().then_some(v);
        }
    }
    let alpha = 2.0 / (5.0 + 1.0);
    let mut combined: Vec<Option<f64>> = table
        .iter()
        .enumerate()
        .map(|(r, row)| {
            let mut acc: Option<f64> = None;
            for (i, v) in row.iter().enumerate() {
                let v = if r == 0 && available[i] { Some(last) } else { *v };
                if let Some(x) = v {
                    acc = Some(acc.map_or(x, |a| (1.0 - alpha) * a + alpha * x));
                }
            }
            acc
        })
        .collect();
    combined[0] = Some(combined[0].unwrap_or(last));
    // Linear interpolation in time, nearest value beyond the last known row.
    let known: Vec<usize> = (0..combined.len()).filter(|&r| combined[r].is_some()).collect();
    let mut filled = vec![last; combined.len()];
    for w in known.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (va, vb) = (combined[a].unwrap_or(last), combined[b].unwrap_or(last));
        for (r, f) in filled.iter_mut().enumerate().take(b + 1).skip(a) {
            *f = va + (vb - va) * (r - a) as f64 / (b - a) as f64;
        }
    }
    if let Some(&lk) = known.last() {
        let v = combined[lk].unwrap_or(last);
        for f in filled.iter_mut().skip(lk) {
            *f = v;
        }
    }
    let smoothed = centred_rolling_mean(&filled, 120);
    smoothed[1..].to_vec()
}

/// `RecoveryTimeModelImpl.subsample`: means of `bins` nearly equal slices.
fn bin_means(data: &[f64], bins: usize) -> Vec<f64> {
    let n = data.len();
    (0..bins)
        .map(|b| {
            let lo = b * n / bins;
            let hi = (b + 1) * n / bins;
            mean(&data[lo..hi.max(lo + 1).min(n)])
        })
        .collect()
}

/// `pred = round(max(bins) × 1.10, 2)`.
fn predicted_peak(forecast: &[f64]) -> f64 {
    let m = bin_means(forecast, FORECAST_BINS).into_iter().fold(f64::NEG_INFINITY, f64::max);
    round2(m * FORECAST_BUFFER)
}

// ---------------------------------------------------------------------------------------------
// Latency normalisation (§1.4)
// ---------------------------------------------------------------------------------------------

/// Normalised latencies of `(scaleout, throughput, latency_ms)` points, as
/// `alter_profiled_latencies` computes them (with the closed-form GBR; see the module doc).
fn normalise_latencies(points: &[(u32, f64, f64)]) -> Vec<f64> {
    let n = points.len();
    if n == 0 {
        return Vec::new();
    }
    let ybar = mean(&points.iter().map(|p| p.2).collect::<Vec<_>>());
    let mut groups: HashMap<(u32, u64), (f64, usize)> = HashMap::new();
    for &(s, t, l) in points {
        let g = groups.entry((s, t.to_bits())).or_insert((0.0, 0));
        g.0 += l;
        g.1 += 1;
    }
    let shrink = 0.9_f64.powi((3 * n).min(i32::MAX as usize) as i32);
    let pred: Vec<f64> = points
        .iter()
        .map(|&(s, t, _)| {
            let (sum, cnt) = groups[&(s, t.to_bits())];
            let g = sum / cnt as f64;
            g + (ybar - g) * shrink
        })
        .collect();
    let min = pred.iter().copied().fold(f64::INFINITY, f64::min);
    pred.iter()
        .map(|&l| {
            let r = if min > 0.0 { l / min } else { 1.0 };
            (r.ln() / 4f64.ln()).tanh().max(0.0)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Search space and encoding (§1.5)
// ---------------------------------------------------------------------------------------------

/// The five knobs' value lists in upstream's (alphabetical) feature order: checkpoint interval,
/// container cpu, container memory, scaleout, task slots.
#[derive(Clone, Debug)]
struct Encoding {
    values: [Vec<u64>; 5],
    /// Every combination of the five value lists (upstream's BO search space).
    grid: Vec<JobConfig>,
    /// The candidate options: full TaskManagers within the default's resources.
    options: Vec<JobConfig>,
}

fn knobs(c: &JobConfig) -> [u64; 5] {
    [
        c.checkpoint_interval_ms,
        c.tm_cpu_milli as u64,
        c.tm_memory_mb as u64,
        c.parallelism as u64,
        c.task_slots as u64,
    ]
}

impl Encoding {
    fn new(space: &SearchSpace, quota: &Quota) -> Self {
        let values = [
            space.checkpoint_interval_ms.values().collect::<Vec<_>>(),
            space.tm_cpu_milli.values().collect(),
            space.tm_memory_mb.values().collect(),
            space.parallelism.values().collect(),
            space.task_slots.values().collect(),
        ];
        let mut grid = Vec::new();
        for &k in &values[0] {
            for &c in &values[1] {
                for &m in &values[2] {
                    for &p in &values[3] {
                        for &s in &values[4] {
                            grid.push(JobConfig {
                                parallelism: p as u32,
                                task_slots: s as u32,
                                tm_cpu_milli: c as u32,
                                tm_memory_mb: m as u32,
                                checkpoint_interval_ms: k,
                            });
                        }
                    }
                }
            }
        }
        Encoding { values, grid, options: space.candidates(quota) }
    }

    /// Index encoding scaled to [0, 1] (Ax `OrderedChoiceEncode` + `UnitX`).
    fn features(&self, c: &JobConfig) -> [f64; 5] {
        let k = knobs(c);
        let mut f = [0.0; 5];
        for (d, v) in self.values.iter().enumerate() {
            let idx = v.iter().position(|x| *x == k[d]).unwrap_or_else(|| {
                // Outside the grid (never for configs this strategy produces): nearest value.
                v.iter().enumerate().min_by_key(|(_, x)| x.abs_diff(k[d])).map(|(i, _)| i).unwrap_or(0)
            });
            f[d] = if v.len() > 1 { idx as f64 / (v.len() - 1) as f64 } else { 0.0 };
        }
        f
    }

    /// The grid configuration at unit-cube point `u` (Ax `IntToFloat` rounding).
    fn config_at(&self, u: &[f64; 5]) -> JobConfig {
        let mut k = [0u64; 5];
        for (d, v) in self.values.iter().enumerate() {
            let idx = (u[d] * (v.len() - 1) as f64).round() as usize;
            k[d] = v[idx.min(v.len() - 1)];
        }
        JobConfig {
            checkpoint_interval_ms: k[0],
            tm_cpu_milli: k[1] as u32,
            tm_memory_mb: k[2] as u32,
            parallelism: k[3] as u32,
            task_slots: k[4] as u32,
        }
    }
}

/// A 5-D Sobol sequence (Joe–Kuo direction numbers) with a random digital shift.
struct Sobol5 {
    v: [[u32; 32]; 5],
    x: [u32; 5],
    shift: [u32; 5],
    n: u32,
}

impl Sobol5 {
    fn new(rng: &mut ChaCha8Rng) -> Self {
        // (s, a, m) for dimensions 2..=5 (new-joe-kuo-6.21201).
        const PARAMS: [(usize, u32, [u32; 3]); 4] =
            [(1, 0, [1, 0, 0]), (2, 1, [1, 3, 0]), (3, 1, [1, 3, 1]), (3, 2, [1, 1, 1])];
        let mut v = [[0u32; 32]; 5];
        for (k, vk) in v[0].iter_mut().enumerate() {
            *vk = 1u32 << (31 - k);
        }
        for (d, &(s, a, m)) in PARAMS.iter().enumerate() {
            let dim = &mut v[d + 1];
            for k in 0..32 {
                dim[k] = if k < s {
                    m[k] << (31 - k)
                } else {
                    let mut val = dim[k - s] ^ (dim[k - s] >> s);
                    for j in 1..s {
                        if (a >> (s - 1 - j)) & 1 == 1 {
                            val ^= dim[k - j];
                        }
                    }
                    val
                };
            }
        }
        let shift = [rng.random(), rng.random(), rng.random(), rng.random(), rng.random()];
        Sobol5 { v, x: [0; 5], shift, n: 0 }
    }

    fn next_point(&mut self) -> [f64; 5] {
        let c = self.n.trailing_ones() as usize;
        if self.n > 0 {
            for d in 0..5 {
                self.x[d] ^= self.v[d][c.min(31)];
            }
        }
        // First point: 0 ^ shift; afterwards Gray-code order.
        self.n = self.n.wrapping_add(1);
        std::array::from_fn(|d| (self.x[d] ^ self.shift[d]) as f64 / 4_294_967_296.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Profiles, bucketing (§1.5 `_prepare_data`)
// ---------------------------------------------------------------------------------------------

/// One profiling run as stored in upstream's `profiles` table.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamProfile {
    pub config: JobConfig,
    /// Mean throughput over the measurement window (events/s).
    pub throughput: f64,
    /// Mean p95 latency over the measurement window (ms).
    pub latency_ms: f64,
    /// Recovery time after the injected failure (s), 360 when it never recovered.
    pub recovery_s: f64,
}

/// A profile after latency normalisation.
#[derive(Clone, Debug, PartialEq)]
struct NormProfile {
    config: JobConfig,
    throughput: f64,
    norm_latency: f64,
    recovery_s: f64,
}

impl NormProfile {
    fn class(&self) -> i64 {
        latency_class(self.norm_latency)
    }

    /// `{objective_cpu, objective_memory, constraint_latency, constraint_recovery_time}`.
    fn scores(&self) -> [f64; 4] {
        [
            self.config.total_cpu().ln(),
            (self.config.total_memory_mb() as f64).ln(),
            self.norm_latency.ln_1p(),
            self.recovery_s.ln(),
        ]
    }
}

type Chunk = (f64, f64);

/// The output of `_prepare_data`.
#[derive(Clone, Debug)]
struct Prepared {
    chunks: Vec<Chunk>,
    target: usize,
    /// Per chunk index: (profile index, direct fit), sorted and deduplicated.
    history: BTreeMap<usize, Vec<(usize, bool)>>,
    profiles: Vec<NormProfile>,
    current: NormProfile,
}

/// `_filter_by_num_init`.
fn filter_by_num_init(list: &[(usize, bool)], profiles: &[NormProfile], num_init: usize) -> Vec<usize> {
    let direct = list.iter().filter(|(_, d)| *d).count();
    let diverse = list.iter().any(|&(i, d)| d && profiles[i].class() == 0)
        && list.iter().any(|&(i, d)| d && profiles[i].class() == 1);
    if direct >= num_init && diverse {
        list.iter().filter(|(_, d)| *d).map(|(i, _)| *i).collect()
    } else {
        list.iter().map(|(i, _)| *i).collect()
    }
}

fn prepare(raw: &[UpstreamProfile], current: &UpstreamProfile, pred: f64) -> Prepared {
    // Latency normalisation over profiles + current.
    let mut pts: Vec<(u32, f64, f64)> =
        raw.iter().map(|p| (p.config.parallelism, p.throughput, p.latency_ms)).collect();
    pts.push((current.config.parallelism, current.throughput, current.latency_ms));
    let norms = if pts.len() > 1 { normalise_latencies(&pts) } else { vec![0.0] };
    let profiles: Vec<NormProfile> = raw
        .iter()
        .zip(&norms)
        .map(|(p, &n)| NormProfile {
            config: p.config,
            throughput: p.throughput,
            norm_latency: n,
            recovery_s: p.recovery_s,
        })
        .collect();
    let current = NormProfile {
        config: current.config,
        throughput: current.throughput,
        norm_latency: norms.last().copied().unwrap_or(0.0),
        recovery_s: current.recovery_s,
    };
    // Chunks.
    let all: Vec<f64> = raw.iter().map(|p| p.throughput).chain([current.throughput, pred]).collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let count = ((hi + 2.0 * BUCKET_WIDTH - lo) / BUCKET_WIDTH).ceil().max(2.0) as usize;
    let edges: Vec<f64> = (0..count).map(|k| round2(lo + k as f64 * BUCKET_WIDTH)).collect();
    let chunks: Vec<Chunk> = edges.windows(2).map(|w| (w[0], w[1])).collect();
    let target = chunks.iter().position(|c| c.0 >= pred).unwrap_or(chunks.len() - 1);
    // Assignment.
    let mut ext: BTreeMap<usize, Vec<(f64, usize, bool)>> = BTreeMap::new();
    for (pi, p) in profiles.iter().enumerate() {
        let thr = round2(p.throughput);
        for (ci, &(t0, t1)) in chunks.iter().enumerate() {
            let direct = t0 <= thr && thr <= t1;
            if direct || (thr > t1 && p.class() == 0) || (thr < t0 && p.class() == 1) {
                ext.entry(ci).or_default().push(((p.throughput - t1).abs(), pi, direct));
            }
        }
    }
    let mut history = BTreeMap::new();
    for (ci, mut list) in ext {
        list.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut out: Vec<(usize, bool)> = Vec::new();
        for (_, pi, direct) in list {
            if out.iter().all(|&(q, _)| profiles[q].config != profiles[pi].config) {
                out.push((pi, direct));
            }
        }
        history.insert(ci, out);
    }
    Prepared { chunks, target, history, profiles, current }
}

impl Prepared {
    fn target_chunk(&self) -> Chunk {
        self.chunks[self.target]
    }

    /// Configurations bottlenecked at a throughput ≤ the target's lower edge.
    fn bottlenecked_at_lower_rates(&self) -> HashSet<JobConfig> {
        let t0 = self.target_chunk().0;
        self.history
            .values()
            .flatten()
            .map(|&(i, _)| &self.profiles[i])
            .filter(|p| p.throughput <= t0 && p.class() == 1)
            .map(|p| p.config)
            .collect()
    }

    /// Configurations stable at a throughput ≥ the target's upper edge.
    fn stable_at_higher_rates(&self) -> HashSet<JobConfig> {
        let t1 = self.target_chunk().1;
        self.history
            .values()
            .flatten()
            .map(|&(i, _)| &self.profiles[i])
            .filter(|p| p.throughput >= t1 && p.class() == 0)
            .map(|p| p.config)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Models (§1.5 surrogate, RGPE)
// ---------------------------------------------------------------------------------------------

/// Mean and standard deviation of the four outcomes at one configuration, in model units.
pub type Prediction = [(f64, f64); 4];

/// Anything that predicts the four outcomes (the bucket models; test doubles).
pub trait OutcomePredictor {
    fn predict(&self, configs: &[JobConfig]) -> Vec<Prediction>;
}

/// A seed for a bucket's generator, like upstream's `np.random.seed(int(t0 + t1))`.
fn bucket_seed(seed: u64, chunk: Chunk) -> u64 {
    let key = (chunk.0 + chunk.1) as i64 as u64;
    let mut z = seed ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One bucket's four GPs (`CustomModelListGP` of `FixedNoiseGP`s).
struct TaskModel {
    gps: Vec<gpw::FittedGp>,
    x: Vec<[f64; 5]>,
    /// Training targets (noisy), per outcome.
    y: [Vec<f64>; 4],
    y_mean: [f64; 4],
    y_std: [f64; 4],
}

impl TaskModel {
    /// Fits the four GPs. `manual_normalize` is `BOModel(normalize=True)`: y standardised with the
    /// unbiased std and the noise variance left at 0.01; otherwise Ax `StandardizeY`, which scales
    /// the noise variance too.
    fn fit(x: Vec<[f64; 5]>, y: [Vec<f64>; 4], manual_normalize: bool) -> Option<TaskModel> {
        let mut gps = Vec::with_capacity(4);
        let mut y_mean = [0.0; 4];
        let mut y_std = [1.0; 4];
        for o in 0..4 {
            let m = mean(&y[o]);
            let s = std_dev(&y[o], if manual_normalize { 1 } else { 0 });
            if !s.is_finite() || s <= 0.0 {
                return None;
            }
            let ys: Vec<f64> = y[o].iter().map(|v| (v - m) / s).collect();
            let noise = if manual_normalize { NOISE_SD * NOISE_SD } else { NOISE_SD * NOISE_SD / (s * s) };
            gps.push(gpw::FittedGp::fit(&x, &ys, noise)?);
            y_mean[o] = m;
            y_std[o] = s;
        }
        Some(TaskModel { gps, x, y, y_mean, y_std })
    }

    /// Standardised posterior (mean, variance) of outcome `o`.
    fn predict_std(&self, o: usize, x: &[[f64; 5]]) -> Vec<(f64, f64)> {
        self.gps[o].predict(x)
    }
}

/// The target bucket's model.
enum TargetModel {
    /// Not enough profiles for a model step: Ax would still be in its Sobol step.
    Sobol,
    Task(TaskModel),
    Rgpe {
        supports: Vec<TaskModel>,
        target: Option<TaskModel>,
        weights: [Vec<f64>; 4],
    },
}

/// A fitted model together with the encoding, to predict configurations.
struct BucketPredictor<'a> {
    model: &'a TargetModel,
    enc: &'a Encoding,
}

impl OutcomePredictor for BucketPredictor<'_> {
    fn predict(&self, configs: &[JobConfig]) -> Vec<Prediction> {
        let x: Vec<[f64; 5]> = configs.iter().map(|c| self.enc.features(c)).collect();
        let mut out = vec![[(0.0, 0.0); 4]; x.len()];
        match self.model {
            TargetModel::Sobol => {}
            TargetModel::Task(t) => {
                for (o, (mean, sd)) in t.y_mean.iter().zip(&t.y_std).enumerate() {
                    for (row, (m, v)) in out.iter_mut().zip(t.predict_std(o, &x)) {
                        row[o] = (m * sd + mean, v.max(0.0).sqrt() * sd);
                    }
                }
            }
            TargetModel::Rgpe { supports, target, weights } => {
                let models: Vec<&TaskModel> = supports.iter().chain(target.iter()).collect();
                for o in 0..4 {
                    let w = &weights[o];
                    let mut mean_acc = vec![0.0; x.len()];
                    let mut var_acc = vec![0.0; x.len()];
                    for (mi, m) in models.iter().enumerate() {
                        let wi = w.get(mi).copied().unwrap_or(0.0);
                        if wi == 0.0 {
                            continue;
                        }
                        for (i, (mu, var)) in m.predict_std(o, &x).into_iter().enumerate() {
                            if target.is_some() {
                                mean_acc[i] += wi * mu;
                                var_acc[i] += wi * wi * var.max(0.0);
                            } else {
                                mean_acc[i] += wi * (mu * m.y_std[o] + m.y_mean[o]);
                                var_acc[i] += wi * wi * var.max(0.0) * m.y_std[o] * m.y_std[o];
                            }
                        }
                    }
                    for i in 0..x.len() {
                        out[i][o] = match target {
                            Some(t) => {
                                (mean_acc[i] * t.y_std[o] + t.y_mean[o], var_acc[i].sqrt() * t.y_std[o])
                            }
                            None => (mean_acc[i], var_acc[i].sqrt()),
                        };
                    }
                }
            }
        }
        out
    }
}

/// Training data of a bucket: its configs and noisy scores (noise from the bucket's generator).
fn bucket_training(
    enc: &Encoding,
    profiles: &[NormProfile],
    idx: &[usize],
    rng: &mut ChaCha8Rng,
) -> (Vec<[f64; 5]>, [Vec<f64>; 4]) {
    let mut x = Vec::with_capacity(idx.len());
    let mut y: [Vec<f64>; 4] = Default::default();
    for &i in idx {
        let p = &profiles[i];
        x.push(enc.features(&p.config));
        let s = p.scores();
        for o in 0..4 {
            let z: f64 = rng.sample(StandardNormal);
            y[o].push(s[o] + NOISE_SD * z);
        }
    }
    (x, y)
}

/// Number of ordered pairs whose order differs between `f` and `y`.
fn ranking_loss(f: &[f64], y: &[f64]) -> usize {
    let n = y.len();
    let mut loss = 0;
    for a in 0..n {
        for b in 0..n {
            if a != b && ((f[a] < f[b]) ^ (y[a] < y[b])) {
                loss += 1;
            }
        }
    }
    loss
}

/// RGPE rank weights of `supports` and `target` (last) for outcome `o` (`compute_rank_weights`).
fn rgpe_weights(
    supports: &[TaskModel],
    target: &TaskModel,
    o: usize,
    samples: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<f64> {
    let n = target.x.len();
    let y = &target.y[o];
    let mut losses: Vec<Vec<f64>> = Vec::with_capacity(supports.len() + 1);
    for s in supports {
        let post = s.predict_std(o, &target.x);
        let mut l = Vec::with_capacity(samples);
        let mut f = vec![0.0; n];
        for _ in 0..samples {
            for (fi, (m, v)) in f.iter_mut().zip(&post) {
                let z: f64 = rng.sample(StandardNormal);
                *fi = m + v.max(0.0).sqrt() * z;
            }
            l.push(ranking_loss(&f, y) as f64);
        }
        losses.push(l);
    }
    // Target: leave-one-out models, each compared at all training points.
    let mut loo_posts: Vec<Vec<(f64, f64)>> = Vec::with_capacity(n);
    for i in 0..n {
        let xs: Vec<[f64; 5]> =
            target.x.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, v)| *v).collect();
        let ys: Vec<f64> = y.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, v)| *v).collect();
        let m = mean(&ys);
        let sd = std_dev(&ys, 1);
        let sd = if sd.is_finite() && sd > 0.0 { sd } else { 1.0 };
        let yst: Vec<f64> = ys.iter().map(|v| (v - m) / sd).collect();
        let post = gpw::FittedGp::fit_like(&target.gps[o], &xs, &yst, NOISE_SD * NOISE_SD)
            .map(|g| g.predict(&target.x))
            .unwrap_or_else(|| vec![(0.0, 1.0); n]);
        loo_posts.push(post);
    }
    let mut tl = Vec::with_capacity(samples);
    let mut f = vec![vec![0.0; n]; n];
    for _ in 0..samples {
        for (row, post) in f.iter_mut().zip(&loo_posts) {
            for (fi, (m, v)) in row.iter_mut().zip(post) {
                let z: f64 = rng.sample(StandardNormal);
                *fi = m + v.max(0.0).sqrt() * z;
            }
        }
        let mut loss = 0usize;
        for a in 0..n {
            for b in 0..n {
                if (f[a][a] < f[a][b]) ^ (y[a] < y[b]) {
                    loss += 1;
                }
            }
        }
        tl.push(loss as f64);
    }
    losses.push(tl);
    // Pruning (RGPE v4, α = 0).
    let max_loss = losses.iter().flatten().copied().fold(0.0, f64::max);
    let keep_scale = 1.0 - n as f64 / RGPE_EVALUATIONS;
    let t_idx = losses.len() - 1;
    for i in 0..supports.len() {
        let better = (0..samples).filter(|&s| losses[i][s] < losses[t_idx][s]).count();
        let p_keep = better as f64 / samples as f64 * keep_scale;
        let r: f64 = rng.random();
        if r > p_keep {
            for v in losses[i].iter_mut() {
                *v = 2.0 * max_loss + 1.0;
            }
        }
    }
    // Proportion of samples in which each model is best, ties split.
    let mut w = vec![0.0; losses.len()];
    for s in 0..samples {
        let min = losses.iter().map(|l| l[s]).fold(f64::INFINITY, f64::min);
        let ties = losses.iter().filter(|l| l[s] == min).count() as f64;
        for (wi, l) in w.iter_mut().zip(&losses) {
            if l[s] == min {
                *wi += 1.0 / ties;
            }
        }
    }
    w.iter_mut().for_each(|v| *v /= samples as f64);
    w
}

/// Builds the target bucket's model (`_prepare_data` supports + `_get_target_model`).
/// Returns the model and the number of profiles the target experiment holds.
fn build_target_model(
    enc: &Encoding,
    prep: &Prepared,
    seed: u64,
    settings: &UpstreamSettings,
) -> (TargetModel, Vec<usize>) {
    let target_chunk = prep.target_chunk();
    // Support models: buckets strictly above the target, ascending, with ≥ 3 profiles.
    let mut supports = Vec::new();
    for (&ci, list) in &prep.history {
        if supports.len() == MAX_SUPPORT_MODELS {
            break;
        }
        if prep.chunks[ci].0 < target_chunk.1 || list.len() < 3 {
            continue;
        }
        let idx = filter_by_num_init(list, &prep.profiles, NUM_INIT);
        if idx.len() < NUM_INIT {
            continue;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(bucket_seed(seed, prep.chunks[ci]));
        let (x, y) = bucket_training(enc, &prep.profiles, &idx, &mut rng);
        if let Some(m) = TaskModel::fit(x, y, true) {
            supports.push(m);
        }
    }
    let empty = Vec::new();
    let list = prep.history.get(&prep.target).unwrap_or(&empty);
    let idx = filter_by_num_init(list, &prep.profiles, NUM_INIT);
    let mut rng = ChaCha8Rng::seed_from_u64(bucket_seed(seed, target_chunk));
    let num_init = if supports.is_empty() { NUM_INIT } else { 1 };
    if idx.len() < num_init {
        return (TargetModel::Sobol, idx);
    }
    let (x, y) = bucket_training(enc, &prep.profiles, &idx, &mut rng);
    if supports.is_empty() {
        return match TaskModel::fit(x, y, false) {
            Some(t) => (TargetModel::Task(t), idx),
            None => (TargetModel::Sobol, idx),
        };
    }
    let target = if idx.len() > 1 { TaskModel::fit(x, y, true) } else { None };
    let k = supports.len() + usize::from(target.is_some());
    let uniform = vec![1.0 / k as f64; k];
    let mut weights: [Vec<f64>; 4] = [uniform.clone(), uniform.clone(), uniform.clone(), uniform];
    if let Some(t) = target.as_ref().filter(|_| idx.len() >= 3) {
        for (o, w) in weights.iter_mut().enumerate() {
            *w = rgpe_weights(&supports, t, o, settings.rgpe_samples, &mut rng);
        }
    }
    for w in weights.iter_mut() {
        let s: f64 = w.iter().sum();
        if s > 0.0 {
            w.iter_mut().for_each(|v| *v /= s);
        }
    }
    (TargetModel::Rgpe { supports, target, weights }, idx)
}

// ---------------------------------------------------------------------------------------------
// Decision logic (§1.6)
// ---------------------------------------------------------------------------------------------

/// The bounds and reference point of the optimisation problem.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Problem {
    /// Objective thresholds (reference point) for ln cpu and ln memory.
    pub thresholds: [f64; 2],
    /// `log1p(latency bound)`.
    pub latency_bound: f64,
    /// `ln(recovery bound)`.
    pub recovery_bound: f64,
    pub max_cluster_cpu: f64,
    pub max_cluster_memory_mb: f64,
}

impl Problem {
    fn new(settings: &UpstreamSettings, space: &SearchSpace, rng: &mut ChaCha8Rng) -> Self {
        let max_tms = space.parallelism.max.div_ceil(space.task_slots.min.max(1)) as f64;
        let v_cpu = (max_tms * space.tm_cpu_milli.max as f64 / 1000.0).ln();
        let v_mem = (max_tms * space.tm_memory_mb.max as f64).ln();
        let mut adapt = |v: f64| {
            let m = (0..100_000).map(|_| rng.sample::<f64, _>(StandardNormal).abs()).fold(0.0, f64::max)
                * NOISE_SD;
            (1.1 * v).max(v + m)
        };
        Problem {
            thresholds: [adapt(v_cpu), adapt(v_mem)],
            latency_bound: settings.latency_bound.ln_1p(),
            recovery_bound: settings.recovery_bound_s.ln(),
            max_cluster_cpu: settings.max_cluster_cpu,
            max_cluster_memory_mb: settings.max_cluster_memory_mb,
        }
    }

    /// `filter_by_constraints` on one prediction: upper-1σ values × 1.25 within the bounds. A NaN
    /// comparison keeps the candidate, as pandas does.
    fn passes_constraints(&self, p: &Prediction) -> bool {
        let lat = ((p[2].0 + p[2].1).exp_m1() * CONST_SCALER).ln_1p();
        let rec = ((p[3].0 + p[3].1).exp() * CONST_SCALER).ln();
        let over = |v: f64, bound: f64| v.partial_cmp(&bound) == Some(std::cmp::Ordering::Greater);
        !over(lat, self.latency_bound) && !over(rec, self.recovery_bound)
    }

    /// `comb_obj = Σ (mean + σ) / threshold`.
    fn comb_obj(&self, p: &Prediction) -> f64 {
        (p[0].0 + p[0].1) / self.thresholds[0] + (p[1].0 + p[1].1) / self.thresholds[1]
    }

    /// `_process_predictions` (not `is_prod`): constraint filter, objective filter, sort by
    /// `comb_obj`. Returns (index into `preds`, comb_obj), best first.
    fn rank_candidates(&self, preds: &[Prediction]) -> Vec<(usize, f64)> {
        let kept: Vec<usize> = (0..preds.len()).filter(|&i| self.passes_constraints(&preds[i])).collect();
        let mut valid = vec![true; kept.len()];
        if kept.len() > 1 {
            for o in [0, 1] {
                let means: Vec<f64> = kept.iter().map(|&i| preds[i][o].0).collect();
                let min = means.iter().copied().fold(f64::INFINITY, f64::min);
                let floor = (min.exp() * OBJ_SCALER).ln().max(quantile_linear(&means, OBJ_SCALER - 1.0));
                for (v, m) in valid.iter_mut().zip(&means) {
                    *v &= *m >= floor;
                }
            }
        }
        let mut out: Vec<(usize, f64)> = kept
            .iter()
            .zip(&valid)
            .filter(|(_, v)| **v)
            .map(|(&i, _)| (i, self.comb_obj(&preds[i])))
            .collect();
        out.sort_by(|a, b| a.1.total_cmp(&b.1));
        out
    }

    /// `has_resources` with the usage ratio used for artificial trial values.
    fn fits(cpu: f64, mem: f64, max_cpu: f64, max_mem: f64) -> bool {
        cpu <= max_cpu && mem <= max_mem
    }
}

/// Why the rescale logic chose what it chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RescaleReason {
    /// The current config's normalised latency rounds to 1: go to the default.
    BadLatency,
    /// The target bucket is still in its Sobol step: keep the current config.
    NoModel,
    /// The current config copes and no other candidate survives the filters.
    NoOtherCandidate,
    /// The best candidate is better by at most 5 %: keep.
    WithinMinImprovement,
    /// Switch to the best candidate (also when it scores worse: upstream quirk).
    BestCandidate,
    /// The current config cannot cope and nothing else passes: default.
    CannotCopeDefault,
    /// The current config cannot cope: best candidate.
    CannotCopeBest,
}

/// The result of `get_optimized_configs`.
#[derive(Clone, Debug, PartialEq)]
pub struct RescaleDecision {
    pub production: JobConfig,
    /// `GT` factor for the profiling candidates, `None` while Sobol.
    pub gt_factor: Option<f64>,
    pub reason: RescaleReason,
    /// `comb_obj` of the current config and of the best candidate, when computed.
    pub current_score: Option<f64>,
    pub best_score: Option<f64>,
}

/// `get_optimized_configs`: the rescale decision for the production job.
///
/// `model` is `None` while the target bucket is in its Sobol step.
pub fn rescale_decision(
    model: Option<&dyn OutcomePredictor>,
    current: JobConfig,
    current_norm_latency: f64,
    default: JobConfig,
    options: &[JobConfig],
    problem: &Problem,
) -> RescaleDecision {
    if latency_class(current_norm_latency) == 1 {
        return RescaleDecision {
            production: default,
            gt_factor: Some(0.75),
            reason: RescaleReason::BadLatency,
            current_score: None,
            best_score: None,
        };
    }
    let Some(model) = model else {
        return RescaleDecision {
            production: current,
            gt_factor: None,
            reason: RescaleReason::NoModel,
            current_score: None,
            best_score: None,
        };
    };
    let cur_pred = model.predict(&[current])[0];
    let can_handle = problem.passes_constraints(&cur_pred) || current == default;
    let cur_obj = problem.comb_obj(&cur_pred);
    let max_cpu = problem.max_cluster_cpu - current.total_cpu();
    let max_mem = problem.max_cluster_memory_mb - current.total_memory_mb() as f64;
    let cands: Vec<JobConfig> = options
        .iter()
        .filter(|c| {
            **c != current && Problem::fits(c.total_cpu(), c.total_memory_mb() as f64, max_cpu, max_mem)
        })
        .copied()
        .collect();
    let preds = model.predict(&cands);
    let ranked = problem.rank_candidates(&preds);
    let best = ranked.first().map(|&(i, s)| (cands[i], s));
    let (production, gt, reason) = if can_handle {
        match best {
            None => (current, 0.25, RescaleReason::NoOtherCandidate),
            Some((cfg, best_obj)) => {
                let rel = (best_obj.max(cur_obj) - best_obj.min(cur_obj)).abs() / cur_obj.abs();
                if best_obj < cur_obj && rel <= MIN_IMPROVEMENT {
                    (current, 0.25, RescaleReason::WithinMinImprovement)
                } else {
                    (cfg, 0.25, RescaleReason::BestCandidate)
                }
            }
        }
    } else {
        match best {
            None => (default, 0.75, RescaleReason::CannotCopeDefault),
            Some((cfg, _)) => (cfg, 0.75, RescaleReason::CannotCopeBest),
        }
    };
    RescaleDecision {
        production,
        gt_factor: Some(gt),
        reason,
        current_score: Some(cur_obj),
        best_score: best.map(|b| b.1),
    }
}

/// 2-D hypervolume (minimisation) of `points` below the reference point.
fn hypervolume_2d(points: &[(f64, f64)], reference: (f64, f64)) -> f64 {
    let mut pts: Vec<(f64, f64)> =
        points.iter().copied().filter(|p| p.0 < reference.0 && p.1 < reference.1).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut hv = 0.0;
    let mut min_y = reference.1;
    for p in pts {
        if p.1 < min_y {
            hv += (reference.0 - p.0) * (min_y - p.1);
            min_y = p.1;
        }
    }
    hv
}

/// Constrained expected hypervolume improvement of each prediction over the 2-D Pareto `front`
/// (ln cpu, ln memory), with common random numbers `z`.
fn acquisition(preds: &[Prediction], front: &[(f64, f64)], problem: &Problem, z: &[[f64; 4]]) -> Vec<f64> {
    let reference = (problem.thresholds[0], problem.thresholds[1]);
    let base = hypervolume_2d(front, reference);
    let mut with = front.to_vec();
    with.push((0.0, 0.0));
    preds
        .iter()
        .map(|p| {
            let mut acc = 0.0;
            for zs in z {
                let s: [f64; 4] = std::array::from_fn(|o| p[o].0 + p[o].1 * zs[o]);
                if s[2] > problem.latency_bound || s[3] > problem.recovery_bound {
                    continue;
                }
                if let Some(last) = with.last_mut() {
                    *last = (s[0], s[1]);
                }
                acc += hypervolume_2d(&with, reference) - base;
            }
            acc / z.len().max(1) as f64
        })
        .collect()
}

/// `has_resources`' usage ratio: the mean over cpu and memory of `max(x, 1/x)`, `x ≥ 0.1`.
fn resource_ratio(cpu: f64, mem: f64, max_cpu: f64, max_mem: f64) -> f64 {
    let f = |v: f64, m: f64| {
        let x = (v / m).max(0.1);
        x.max(1.0 / x)
    };
    (f(cpu, max_cpu) + f(mem, max_mem)) / 2.0
}

/// Inputs of one `/profile` answer besides the model.
struct SuggestionInput<'a> {
    enc: &'a Encoding,
    problem: &'a Problem,
    decision: &'a RescaleDecision,
    /// Configurations already in the target bucket's experiment.
    bucket_configs: &'a [JobConfig],
    bottlenecked: &'a HashSet<JobConfig>,
    stable: &'a HashSet<JobConfig>,
    proposals: usize,
    acq_samples: usize,
}

/// `_prepare_optimization_result` + `get_suggestions`: the profiling configurations.
fn profiling_suggestions(
    input: &SuggestionInput<'_>,
    model: &TargetModel,
    rng: &mut ChaCha8Rng,
) -> Vec<JobConfig> {
    let n = input.decision.production;
    let p = input.problem;
    let scaler = BASE_FACTOR.powi(input.bucket_configs.len() as i32);
    let max_cpu = (p.max_cluster_cpu - n.total_cpu()) * scaler;
    let max_mem = (p.max_cluster_memory_mb - n.total_memory_mb() as f64) * scaler;
    let mut options: Vec<JobConfig> = input
        .enc
        .options
        .iter()
        .filter(|o| **o != n && Problem::fits(o.total_cpu(), o.total_memory_mb() as f64, max_cpu, max_mem))
        .copied()
        .collect();
    if let Some(f) = input.decision.gt_factor {
        let (rc, rm) = (n.total_cpu() / max_cpu * f, n.total_memory_mb() as f64 / max_mem * f);
        options.retain(|o| {
            let (oc, om) = (o.total_cpu() / max_cpu, o.total_memory_mb() as f64 / max_mem);
            oc > rc || om > rm || oc + om > rc + rm
        });
    }
    let (budget_cpu, budget_mem) = (round2(max_cpu), round2(max_mem));
    if options.is_empty() {
        // `calculate_remaining_resources` with an empty `resource_options` recomputes them: every
        // option within the budget, with neither the GT filter nor N excluded (upstream quirk).
        options = input
            .enc
            .options
            .iter()
            .filter(|o| Problem::fits(o.total_cpu(), o.total_memory_mb() as f64, budget_cpu, budget_mem))
            .copied()
            .collect();
    }
    let in_bucket: HashSet<JobConfig> = input.bucket_configs.iter().copied().collect();
    let acceptable: HashSet<JobConfig> = options
        .into_iter()
        .filter(|o| !in_bucket.contains(o) && !input.bottlenecked.contains(o) && !input.stable.contains(o))
        .collect();
    let mut accepted: Vec<JobConfig> = Vec::new();
    let (mut used_cpu, mut used_mem) = (0.0, 0.0);
    // Accepts `c` if it is a valid candidate and fits the budget together with the others.
    let consider = |c: JobConfig, accepted: &mut Vec<JobConfig>, used_cpu: &mut f64, used_mem: &mut f64| {
        if acceptable.contains(&c) && !accepted.contains(&c) {
            let (nc, nm) = (*used_cpu + c.total_cpu(), *used_mem + c.total_memory_mb() as f64);
            if Problem::fits(nc, nm, budget_cpu, budget_mem) {
                *used_cpu = nc;
                *used_mem = nm;
                accepted.push(c);
            }
        }
    };
    let mut proposed: HashSet<JobConfig> = in_bucket.clone();
    match model {
        TargetModel::Sobol => {
            let mut sobol = Sobol5::new(rng);
            let max_draws = 64 * input.enc.grid.len();
            let mut draws = 0;
            while proposed.len() < input.enc.grid.len() && draws < max_draws {
                draws += 1;
                let c = input.enc.config_at(&sobol.next_point());
                if proposed.insert(c) {
                    consider(c, &mut accepted, &mut used_cpu, &mut used_mem);
                }
            }
        }
        _ => {
            // Sequential qNEHVI proposals. Accepted configurations stay pending in the experiment
            // and the next proposal is conditioned on them (their posterior mean joins the front,
            // "Kriging believer"); a valid proposal over the budget is completed with the
            // artificial values `0.1 · r · thresholds` (feasible), which join the front too; an
            // invalid one gets `r = 20` (infeasible: the front does not change).
            let predictor = BucketPredictor { model, enc: input.enc };
            let grid: Vec<JobConfig> =
                input.enc.grid.iter().filter(|c| !proposed.contains(c)).copied().collect();
            let preds = predictor.predict(&grid);
            let feasible_mean = |q: &Prediction| q[2].0 <= p.latency_bound && q[3].0 <= p.recovery_bound;
            let mut front: Vec<(f64, f64)> = predictor
                .predict(input.bucket_configs)
                .iter()
                .filter(|q| feasible_mean(q))
                .map(|q| (q[0].0, q[1].0))
                .collect();
            let z: Vec<[f64; 4]> = (0..input.acq_samples)
                .map(|_| std::array::from_fn(|_| rng.sample::<f64, _>(StandardNormal)))
                .collect();
            let mut open = vec![true; grid.len()];
            let mut acq = acquisition(&preds, &front, p, &z);
            for _ in 0..input.proposals {
                let Some(i) = (0..grid.len())
                    .filter(|&i| open[i])
                    .max_by(|&a, &b| acq[a].total_cmp(&acq[b]).then(b.cmp(&a)))
                else {
                    break;
                };
                open[i] = false;
                let c = grid[i];
                let before = accepted.len();
                consider(c, &mut accepted, &mut used_cpu, &mut used_mem);
                let front_len = front.len();
                if accepted.len() > before {
                    if feasible_mean(&preds[i]) {
                        front.push((preds[i][0].0, preds[i][1].0));
                    }
                } else if acceptable.contains(&c) {
                    let r = resource_ratio(
                        used_cpu + c.total_cpu(),
                        used_mem + c.total_memory_mb() as f64,
                        budget_cpu,
                        budget_mem,
                    );
                    front.push((0.1 * r * p.thresholds[0], 0.1 * r * p.thresholds[1]));
                }
                if front.len() != front_len {
                    acq = acquisition(&preds, &front, p, &z);
                }
            }
        }
    }
    accepted
}

/// What one request to the analytics service concluded.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamRequest {
    /// Seconds since the start of the run.
    pub at_s: i64,
    /// `pred`: the forecast peak × 1.10.
    pub pred: f64,
    /// The target bucket (t0, t1) and the profiles its experiment holds.
    pub target_bucket: (f64, f64),
    pub bucket_profiles: usize,
    pub support_models: usize,
    pub current_norm_latency: f64,
    pub decision: RescaleDecision,
    /// Whether this was a `/profile` request (otherwise `/rescale`).
    pub profile: bool,
    /// Profiling configurations (empty for rescale requests).
    pub suggestions: Vec<JobConfig>,
}

/// The analytics service's fixed inputs.
struct Analytics<'a> {
    enc: &'a Encoding,
    problem: &'a Problem,
    settings: &'a UpstreamSettings,
    seed: u64,
    default: JobConfig,
}

/// Runs the analytics pipeline for one request.
fn analyse(
    a: &Analytics<'_>,
    profiles: &[UpstreamProfile],
    current: &UpstreamProfile,
    pred: f64,
    with_suggestions: bool,
) -> UpstreamRequest {
    let Analytics { enc, problem, settings, seed, default } = *a;
    let prep = prepare(profiles, current, pred);
    let (model, idx) = build_target_model(enc, &prep, seed, settings);
    let predictor = BucketPredictor { model: &model, enc };
    let dyn_model: Option<&dyn OutcomePredictor> = match model {
        TargetModel::Sobol => None,
        _ => Some(&predictor),
    };
    let decision = rescale_decision(
        dyn_model,
        prep.current.config,
        prep.current.norm_latency,
        default,
        &enc.options,
        problem,
    );
    let bucket_configs: Vec<JobConfig> = idx.iter().map(|&i| prep.profiles[i].config).collect();
    let suggestions = if with_suggestions {
        let bottlenecked = prep.bottlenecked_at_lower_rates();
        let stable = prep.stable_at_higher_rates();
        let input = SuggestionInput {
            enc,
            problem,
            decision: &decision,
            bucket_configs: &bucket_configs,
            bottlenecked: &bottlenecked,
            stable: &stable,
            proposals: settings.proposals_per_round,
            acq_samples: settings.acq_samples,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(bucket_seed(seed ^ 0x50F1_1E55, prep.target_chunk()));
        profiling_suggestions(&input, &model, &mut rng)
    } else {
        Vec::new()
    };
    let support_models = match &model {
        TargetModel::Rgpe { supports, .. } => supports.len(),
        _ => 0,
    };
    UpstreamRequest {
        at_s: 0,
        pred,
        target_bucket: prep.target_chunk(),
        bucket_profiles: idx.len(),
        support_models,
        current_norm_latency: prep.current.norm_latency,
        decision,
        profile: with_suggestions,
        suggestions,
    }
}

// ---------------------------------------------------------------------------------------------
// The strategy: the optimizer's state machine (§2.3)
// ---------------------------------------------------------------------------------------------

/// Detects the failures the simulator injects into the production job (upstream's EXECUTE loop
/// sets `lastTs` at each injection): a sudden collapse of the throughput while the job is not
/// being reconfigured.
#[derive(Clone, Debug, Default)]
pub struct FailureDetector {
    healthy_s: u32,
    cooldown_until: i64,
}

impl FailureDetector {
    /// Seconds of healthy processing required before an onset counts.
    const HEALTHY_S: u32 = 30;
    /// No second detection within this time.
    const COOLDOWN_S: i64 = 600;

    /// Feeds one second; returns true at a detected onset.
    pub fn observe(&mut self, t: i64, throughput: f64, offered: f64, reconfiguring: bool) -> bool {
        if reconfiguring || offered <= 0.0 {
            self.healthy_s = 0;
            return false;
        }
        let ratio = throughput / offered;
        if ratio >= 0.5 {
            self.healthy_s = self.healthy_s.saturating_add(1);
            return false;
        }
        let onset = ratio < 0.2 && self.healthy_s >= Self::HEALTHY_S && t >= self.cooldown_until;
        self.healthy_s = 0;
        if onset {
            self.cooldown_until = t + Self::COOLDOWN_S;
        }
        onset
    }
}

/// Counters of what the strategy did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpstreamStats {
    pub rescale_requests: u64,
    pub rescales: u64,
    pub profile_requests: u64,
    pub profile_rounds: u64,
    pub profiling_runs: u64,
    pub detected_failures: u64,
    /// Requests that failed for want of production metrics (upstream: HTTP 422).
    pub skipped_checks: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum ProfilePhase {
    FirstWait { until: i64 },
    Requesting { until: i64, configs: Vec<JobConfig> },
    Running { ids: Vec<ProfileId> },
}

/// The `demeter-upstream` strategy.
#[derive(Debug)]
pub struct DemeterUpstream {
    name: String,
    settings: UpstreamSettings,
    seed: u64,
    enc: Encoding,
    problem: Problem,
    default: JobConfig,
    start: Option<i64>,
    workload: Workload,
    throughput: std::collections::VecDeque<f64>,
    latency: std::collections::VecDeque<Option<f64>>,
    profiles: Vec<UpstreamProfile>,
    running: HashMap<ProfileId, JobConfig>,
    last_ts: i64,
    next_check: i64,
    phase: ProfilePhase,
    next_id: ProfileId,
    failures: FailureDetector,
    forecast_cache: Option<(i64, f64)>,
    last_pred: Option<f64>,
    stats: UpstreamStats,
    requests: Vec<UpstreamRequest>,
}

impl DemeterUpstream {
    /// Upstream's settings, search space (840 options) and default configuration.
    pub fn new(seed: u64) -> Self {
        Self::with_settings(UpstreamSettings::default(), SearchSpace::default(), Quota::default(), seed)
    }

    pub fn with_settings(settings: UpstreamSettings, space: SearchSpace, quota: Quota, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let problem = Problem::new(&settings, &space, &mut rng);
        let start_phase = ProfilePhase::FirstWait { until: settings.profile_first_wait_s };
        let next_check = 1 + settings.optimize_poll_s;
        DemeterUpstream {
            name: "demeter-upstream".into(),
            enc: Encoding::new(&space, &quota),
            problem,
            default: JobConfig::STATIC_DEFAULT,
            start: None,
            workload: Workload::default(),
            throughput: Default::default(),
            latency: Default::default(),
            profiles: Vec::new(),
            running: HashMap::new(),
            last_ts: 0,
            next_check,
            phase: start_phase,
            next_id: 1,
            failures: FailureDetector::default(),
            forecast_cache: None,
            last_pred: None,
            stats: UpstreamStats::default(),
            requests: Vec::new(),
            settings,
            seed,
        }
    }

    pub fn stats(&self) -> &UpstreamStats {
        &self.stats
    }

    /// Every analytics request so far (rescale and profile), in order.
    pub fn requests(&self) -> &[UpstreamRequest] {
        &self.requests
    }

    /// The profiles collected so far (the training data).
    pub fn profiles(&self) -> &[UpstreamProfile] {
        &self.profiles
    }

    /// The optimisation problem (thresholds and bounds).
    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// The candidate options (the 840 of upstream's space).
    pub fn options(&self) -> &[JobConfig] {
        &self.enc.options
    }

    fn pred(&mut self, t: i64) -> f64 {
        if let Some((_, v)) = self.forecast_cache.filter(|(at, _)| *at == t) {
            return v;
        }
        let processed = self.workload.process();
        let v = if processed.is_empty() {
            0.0
        } else {
            predicted_peak(&ensemble_forecast(processed, self.settings.max_fit_points))
        };
        self.forecast_cache = Some((t, v));
        self.last_pred = Some(v);
        v
    }

    /// The production job as upstream's "current profile": 60 s averages over the seconds with
    /// metrics, `recTime = −1`.
    fn current_profile(&self, current: JobConfig) -> Option<UpstreamProfile> {
        // Prometheus has no samples while the job publishes no metrics.
        let thrs: Vec<f64> =
            self.throughput.iter().zip(&self.latency).filter(|(_, l)| l.is_some()).map(|(t, _)| *t).collect();
        let thr = mean(&thrs);
        let lats: Vec<f64> = self.latency.iter().flatten().copied().collect();
        if thr <= 0.0 || lats.is_empty() {
            return None;
        }
        let lat = mean(&lats);
        (lat > 0.0).then_some(UpstreamProfile {
            config: current,
            throughput: thr,
            latency_ms: lat,
            recovery_s: -1.0,
        })
    }

    fn request(&mut self, t: i64, current: JobConfig, with_suggestions: bool) -> Option<UpstreamRequest> {
        let cur = self.current_profile(current)?;
        let pred = self.pred(t);
        let analytics = Analytics {
            enc: &self.enc,
            problem: &self.problem,
            settings: &self.settings,
            seed: self.seed,
            default: self.default,
        };
        let mut req = analyse(&analytics, &self.profiles, &cur, pred, with_suggestions);
        req.at_s = t;
        self.requests.push(req.clone());
        Some(req)
    }

    fn optimize_loop(&mut self, t: i64, ctx: &mut StepContext<'_>) {
        if t < self.next_check {
            return;
        }
        if t - self.last_ts < self.settings.eval_interval_s {
            self.next_check = t + self.settings.optimize_poll_s;
            return;
        }
        self.stats.rescale_requests += 1;
        let Some(req) = self.request(t, ctx.current, false) else {
            self.stats.skipped_checks += 1;
            self.next_check = t + self.settings.optimize_call_s + self.settings.optimize_poll_s;
            return;
        };
        let to = req.decision.production;
        if to != ctx.current {
            self.stats.rescales += 1;
            ctx.reconfigure(to, ReconfigKind::Redeploy);
            self.last_ts = t + self.settings.rescale_settle_s;
            self.next_check = self.last_ts + 1 + self.settings.optimize_poll_s;
        } else {
            self.next_check = t + self.settings.optimize_call_s + self.settings.optimize_poll_s;
        }
    }

    /// Age of a profiling job when its measurement ends and the failure injection is due: 120 s
    /// start-up wait, 60 s, 1 s. The simulator then waits until 5 s before the job's next
    /// checkpoint, as upstream's injection loop does.
    fn injection_age(&self) -> u32 {
        self.settings.profile_startup_s + self.settings.profile_measure_s
    }

    fn profile_loop(&mut self, t: i64, ctx: &mut StepContext<'_>) {
        for o in ctx.profile_outcomes {
            if let Some(cfg) = self.running.remove(&o.id) {
                let s = &o.sample;
                let rec = match s.recovery {
                    Some(RecoveryTime::Measured(v)) => Some(v.min(self.max_recovery_s())),
                    Some(RecoveryTime::NotRecovered(_)) => Some(self.max_recovery_s()),
                    None => None,
                };
                if let Some(rec) = rec.filter(|r| *r > 0.0 && s.throughput > 0.0 && s.p95_latency_ms > 0.0) {
                    self.profiles.push(UpstreamProfile {
                        config: cfg,
                        throughput: s.throughput,
                        latency_ms: s.p95_latency_ms,
                        recovery_s: rec,
                    });
                }
            }
        }
        loop {
            match &mut self.phase {
                ProfilePhase::FirstWait { until } => {
                    if t < *until {
                        return;
                    }
                    self.start_profile_request(t, ctx.current);
                }
                ProfilePhase::Requesting { until, configs } => {
                    if t < *until {
                        return;
                    }
                    let configs = std::mem::take(configs);
                    if configs.is_empty() {
                        self.start_profile_request(t, ctx.current);
                        return;
                    }
                    self.stats.profile_rounds += 1;
                    let mut ids = Vec::with_capacity(configs.len());
                    for cfg in configs {
                        let id = self.next_id;
                        self.next_id += 1;
                        // The run ends once its recovery is measured (or censored): the round
                        // ends with its slowest job, as upstream's latch does.
                        let inject = self.injection_age();
                        let duration = inject;
                        ctx.commands.push(Command::StartProfile {
                            id,
                            config: cfg,
                            duration_s: duration,
                            inject_failure_after_s: Some(inject),
                        });
                        self.running.insert(id, cfg);
                        self.stats.profiling_runs += 1;
                        ids.push(id);
                    }
                    self.phase = ProfilePhase::Running { ids };
                    return;
                }
                ProfilePhase::Running { ids } => {
                    if ids.iter().any(|id| self.running.contains_key(id)) {
                        return;
                    }
                    self.start_profile_request(t, ctx.current);
                    return;
                }
            }
        }
    }

    fn max_recovery_s(&self) -> f64 {
        self.settings.recovery_censor_s
    }

    fn start_profile_request(&mut self, t: i64, current: JobConfig) {
        self.stats.profile_requests += 1;
        match self.request(t, current, true) {
            Some(r) => {
                self.phase = ProfilePhase::Requesting {
                    until: t + self.settings.profile_request_s,
                    configs: r.suggestions,
                }
            }
            // No production metrics over the last 60 s (the job is down): upstream's request fails
            // validation (HTTP 422) at once and the loop retries straight away.
            None => {
                self.stats.skipped_checks += 1;
                self.phase = ProfilePhase::FirstWait { until: t + 1 };
            }
        }
    }
}

impl Strategy for DemeterUpstream {
    fn name(&self) -> &str {
        &self.name
    }

    fn initial_config(&self) -> JobConfig {
        self.default
    }

    fn step(&mut self, ctx: &mut StepContext<'_>) {
        let now_s = ctx.now.0.div_euclid(1000);
        let start = *self.start.get_or_insert(now_s);
        let t = now_s - start;
        let obs = ctx.observation;
        self.workload.push(obs.offered_rate);
        self.throughput.push_back(obs.throughput);
        self.latency.push_back(obs.p95_latency_ms.filter(|v| v.is_finite()));
        while self.throughput.len() > self.settings.avg_window_s {
            self.throughput.pop_front();
        }
        while self.latency.len() > self.settings.avg_window_s {
            self.latency.pop_front();
        }
        if self.failures.observe(t, obs.throughput, obs.offered_rate, ctx.reconfiguring) {
            self.stats.detected_failures += 1;
            self.last_ts = self.last_ts.max(t);
        }
        self.profile_loop(t, ctx);
        self.optimize_loop(t, ctx);
    }

    fn forecast_rate(&self) -> Option<f64> {
        self.last_pred
    }
}

// ---------------------------------------------------------------------------------------------
// GP wrapper
// ---------------------------------------------------------------------------------------------

mod gpw {
    //! The thin layer over [`demeter_core::gp`] used by the bucket models.
    //!
    //! BoTorch 0.6's `FixedNoiseGP`: Matérn-5/2 ARD with a constant mean, the noise variance fixed
    //! (pinned through the noise prior's box), MAP hyperparameters under log-normal priors
    //! moment-matched to BoTorch's Gamma(3, 6) lengthscale and Gamma(2, 0.15) outputscale priors.
    //! Targets arrive standardised by the caller (`y_scale = 1`).

    use demeter_core::gp::{Gp, GpConfig, GpState, LogPrior};

    /// ln Gamma(3, 6): mean ψ(3) − ln 6, sd √ψ′(3).
    const LENGTHSCALE_PRIOR: (f64, f64) = (-0.8690, 0.6284);
    /// ln Gamma(2, 0.15): mean ψ(2) − ln 0.15, sd √ψ′(2).
    const OUTPUTSCALE_PRIOR: (f64, f64) = (2.3200, 0.8031);

    fn config(noise_var: f64) -> GpConfig {
        let ln_noise = noise_var.max(1e-12).ln();
        GpConfig {
            y_scale: Some(1.0),
            min_points_to_optimize: 2,
            lengthscale_prior: LogPrior::new(
                LENGTHSCALE_PRIOR.0,
                LENGTHSCALE_PRIOR.1,
                0.01f64.ln(),
                50f64.ln(),
            ),
            signal_prior: LogPrior::new(OUTPUTSCALE_PRIOR.0, OUTPUTSCALE_PRIOR.1, 1e-4f64.ln(), 1e3f64.ln()),
            noise_prior: LogPrior::new(ln_noise, 1.0, ln_noise, ln_noise),
            ..GpConfig::default()
        }
    }

    /// A [`GpState`] holding `x` (and `y`), built through its serialised form: the simulator crate
    /// does not depend on `ndarray` directly, and this is the only place that needs its arrays.
    fn state(x: &[[f64; 5]], y: &[f64], cfg: &GpConfig, hyper: serde_json::Value) -> Option<GpState> {
        let n = x.len();
        let flat: Vec<f64> = x.iter().flatten().copied().collect();
        let y: Vec<f64> = if y.len() == n { y.to_vec() } else { vec![0.0; n] };
        let y_mean = if n > 0 { y.iter().sum::<f64>() / n as f64 } else { 0.0 };
        let v = serde_json::json!({
            "x": {"v": 1, "dim": [n, 5], "data": flat},
            "y": {"v": 1, "dim": [n], "data": y},
            "noise_mult": {"v": 1, "dim": [n], "data": vec![1.0; n]},
            "y_mean": y_mean,
            "y_scale": 1.0,
            "hyper": hyper,
            "matern_dims": null,
            "linear_dims": [],
            "bias_variance": cfg.bias_variance,
            "jitter": cfg.jitter,
        });
        serde_json::from_value(v).ok()
    }

    fn default_hyper(cfg: &GpConfig) -> serde_json::Value {
        let ls = vec![cfg.lengthscale_prior.mu; 5];
        serde_json::json!({
            "log_lengthscales": ls,
            "log_signal_var": cfg.signal_prior.mu,
            "log_noise_var": cfg.noise_prior.mu,
            "log_linear_var": null,
        })
    }

    /// A fitted GP on 5-D unit-scaled features with a fixed observation-noise variance.
    pub struct FittedGp {
        gp: Gp,
    }

    impl FittedGp {
        pub fn fit(x: &[[f64; 5]], y: &[f64], noise_var: f64) -> Option<FittedGp> {
            let cfg = config(noise_var);
            let data = state(x, y, &cfg, default_hyper(&cfg))?;
            let gp = Gp::fit(data.x.view(), data.y.view(), &cfg).ok()?;
            Some(FittedGp { gp })
        }

        /// The GP on other data with `like`'s hyperparameters, not refitted (upstream's LOOCV
        /// models load the target's state dict with `refit=False`).
        pub fn fit_like(like: &FittedGp, x: &[[f64; 5]], y: &[f64], noise_var: f64) -> Option<FittedGp> {
            let cfg = config(noise_var);
            let hyper = serde_json::to_value(like.gp.hyper()).ok()?;
            let data = state(x, y, &cfg, hyper)?;
            let gp = Gp::from_state(data).ok()?;
            Some(FittedGp { gp })
        }

        /// Latent posterior (mean, variance) at `x`.
        pub fn predict(&self, x: &[[f64; 5]]) -> Vec<(f64, f64)> {
            if x.is_empty() {
                return Vec::new();
            }
            let Some(q) = state(x, &[], &config(1e-2), default_hyper(&config(1e-2))) else {
                return vec![(0.0, 1.0); x.len()];
            };
            let (m, v) = self.gp.predict(q.x.view());
            m.iter().zip(v.iter()).map(|(a, b)| (*a, *b)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(p: u32, s: u32, cpu: u32, mem: u32, chk_s: u64) -> JobConfig {
        JobConfig {
            parallelism: p,
            task_slots: s,
            tm_cpu_milli: cpu * 1000,
            tm_memory_mb: mem,
            checkpoint_interval_ms: chk_s * 1000,
        }
    }

    #[test]
    fn savgol_reproduces_cubics_including_edges() {
        let poly = |x: f64| 3.0 - 0.5 * x + 0.02 * x * x - 0.0003 * x * x * x;
        let data: Vec<f64> = (0..200).map(|i| poly(i as f64)).collect();
        let out = savgol(&data, 51, 3);
        for (a, b) in data.iter().zip(&out) {
            assert!((a - b).abs() < 1e-6 * (1.0 + a.abs()), "{a} vs {b}");
        }
        // Short inputs: window shrinks to the (odd) length, order to window − 1.
        assert_eq!(savgol(&[5.0], 51, 3), vec![5.0]);
        let short = savgol(&[1.0, 2.0, 4.0, 8.0], 51, 3);
        assert!((short[1] - 2.0).abs() < 1e-9 && (short[2] - 4.0).abs() < 1e-9);
    }

    #[test]
    fn smoothers_keep_constants_and_follow_ramps() {
        let c = vec![7.0; 100];
        assert!(exponential_window_mean(&c, 60).iter().all(|v| (v - 7.0).abs() < 1e-9));
        assert!(centred_rolling_mean(&c, 120).iter().all(|v| (v - 7.0).abs() < 1e-9));
        let ramp: Vec<f64> = (0..100).map(f64::from).collect();
        let r = centred_rolling_mean(&ramp, 4);
        // pandas: window [i − 2, i + 1]
        assert!((r[10] - (8.0 + 9.0 + 10.0 + 11.0) / 4.0).abs() < 1e-12);
        assert!((r[0] - 0.5).abs() < 1e-12);
    }

    #[test]
    fn workload_processing_is_incremental_and_exact() {
        let mut w = Workload::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let raw: Vec<f64> = (0..3000)
            .map(|i| 30_000.0 + 5_000.0 * (i as f64 / 400.0).sin() + rng.random_range(-1500.0..1500.0))
            .collect();
        for (i, v) in raw.iter().enumerate() {
            w.push(*v);
            if i % 97 == 0 {
                w.process();
            }
        }
        let inc = w.process().to_vec();
        let full = exponential_window_mean(&savgol(&raw, 51, 3), 60);
        assert_eq!(inc.len(), full.len());
        for (a, b) in inc.iter().zip(&full) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn arima_recovers_an_ar1_and_extrapolates_a_trend() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut y = vec![0.0];
        for _ in 0..600 {
            let e: f64 = rng.sample(StandardNormal);
            let last = *y.last().unwrap();
            y.push(100.0 + 0.7 * (last - 100.0) + e);
        }
        let m = auto_arima(&y[1..]).expect("fits");
        assert_eq!(m.d, 0);
        assert!(!m.phi.is_empty());
        let f = m.forecast(&y[1..], 50);
        assert!((f[49] - 100.0).abs() < 2.0, "reverts to the mean: {}", f[49]);

        let trend: Vec<f64> =
            (0..200).map(|i| 1000.0 + 25.0 * i as f64 + rng.random_range(-5.0..5.0)).collect();
        let m = auto_arima(&trend).expect("fits");
        assert!(m.d >= 1);
        let f = m.forecast(&trend, 10);
        let expect = 1000.0 + 25.0 * 209.0;
        assert!((f[9] - expect).abs() < 60.0, "{} vs {expect}", f[9]);
        assert!(auto_arima(&trend[..10]).is_none());
    }

    #[test]
    fn stability_check_matches_roots() {
        assert!(is_stable(&[0.5]));
        assert!(!is_stable(&[1.2]));
        assert!(is_stable(&[0.5, 0.3]));
        assert!(!is_stable(&[0.5, 0.6])); // root inside: 1 − 0.5B − 0.6B² has |root| < 1
        assert!(is_stable(&[]));
    }

    #[test]
    fn ensemble_forecast_of_a_flat_series_is_flat_and_peak_has_the_buffer() {
        let flat = vec![42_000.0; 4000];
        let f = ensemble_forecast(&flat, 400);
        assert_eq!(f.len(), 600);
        assert!(f.iter().all(|v| (v - 42_000.0).abs() < 1.0));
        assert_eq!(predicted_peak(&f), round2(42_000.0 * 1.10));
        // A rising input is forecast to keep rising.
        let ramp: Vec<f64> = (0..4000).map(|i| 20_000.0 + 3.0 * i as f64).collect();
        let f = ensemble_forecast(&ramp, 400);
        assert!(f[599] > ramp[3999] + 500.0, "{} vs {}", f[599], ramp[3999]);
        // With too little history: persistence of the last value.
        let f = ensemble_forecast(&[1.0, 2.0, 3.0], 400);
        assert!(f.iter().all(|v| (*v - 3.0).abs() < 1e-9));
    }

    #[test]
    fn bins_are_numpy_slices() {
        let data: Vec<f64> = (0..600).map(f64::from).collect();
        let b = bin_means(&data, 10);
        assert_eq!(b.len(), 10);
        assert!((b[0] - 29.5).abs() < 1e-12 && (b[9] - 569.5).abs() < 1e-12);
    }

    #[test]
    fn latency_threshold_is_2_14_times_the_minimum() {
        // Many distinct points: the GBR fit is essentially exact, so the threshold is visible.
        let mut pts: Vec<(u32, f64, f64)> =
            (0..40).map(|i| (8 + (i % 5) * 4, 10_000.0 + i as f64, 1000.0)).collect();
        pts.push((24, 50_000.0, 2100.0));
        pts.push((24, 50_001.0, 2200.0));
        let n = normalise_latencies(&pts);
        assert_eq!(latency_class(n[40]), 0, "2.1× is normal ({})", n[40]);
        assert_eq!(latency_class(n[41]), 1, "2.2× is abnormal ({})", n[41]);
        assert!(n[..40].iter().all(|v| *v < 1e-6));
        // Two points shrink strongly towards the mean (0.9^6): 1 s vs 40 s is still abnormal.
        let n = normalise_latencies(&[(24, 30_000.0, 1000.0), (8, 20_000.0, 40_000.0)]);
        assert_eq!(latency_class(n[0]), 0);
        assert_eq!(latency_class(n[1]), 1);
        // Equal inputs are averaged, as the trees do.
        let n = normalise_latencies(&[(8, 1.0, 1000.0), (8, 1.0, 3000.0), (12, 2.0, 1000.0)]);
        assert!((n[0] - n[1]).abs() < 1e-12);
    }

    fn profile(c: JobConfig, thr: f64, lat: f64, rec: f64) -> UpstreamProfile {
        UpstreamProfile { config: c, throughput: thr, latency_ms: lat, recovery_s: rec }
    }

    #[test]
    fn bucketing_follows_prepare_data() {
        let a = cfg(8, 1, 1, 1024, 10);
        let b = cfg(12, 1, 1, 1024, 10);
        let c = cfg(16, 1, 1, 1024, 10);
        let raw: Vec<UpstreamProfile> = (0..30)
            .map(|i| {
                profile(
                    cfg(8 + 4 * (i % 4), 1, 1 + (i / 4) % 3, 1024 * (1 + i % 4), 10 + 20 * (i as u64 % 5)),
                    20_000.0 + 100.0 * i as f64,
                    1000.0,
                    100.0,
                )
            })
            .chain([
                profile(a, 45_000.0, 1000.0, 100.0),   // stable at a high rate
                profile(b, 15_000.0, 60_000.0, 360.0), // bottlenecked at a low rate
                profile(c, 35_000.0, 1000.0, 100.0),
            ])
            .collect();
        let current = profile(JobConfig::STATIC_DEFAULT, 33_000.0, 1000.0, -1.0);
        let prep = prepare(&raw, &current, 36_300.0);
        let (t0, t1) = prep.target_chunk();
        assert_eq!(t0, 15_000.0 + 30_000.0, "first chunk with t0 ≥ pred, chunks start at the minimum");
        assert_eq!(t1, t0 + 10_000.0);
        assert!(prep.chunks[0].0 == 15_000.0);
        let target = &prep.history[&prep.target];
        // `a` fits directly, `b` is bottlenecked below (so bottlenecked here), `c` is stable below.
        let cfgs: Vec<JobConfig> = target.iter().map(|&(i, _)| prep.profiles[i].config).collect();
        assert!(cfgs.contains(&a) && cfgs.contains(&b) && !cfgs.contains(&c));
        assert!(prep.bottlenecked_at_lower_rates().contains(&b));
        assert!(prep.stable_at_higher_rates().is_empty());
        // The 20k–23k profiles are stable: they count for every chunk below them.
        let first = &prep.history[&0];
        assert!(first.iter().any(|&(i, d)| !d && prep.profiles[i].throughput > 25_000.0));
        // Sorted by |thr − t1|, deduplicated by config.
        for list in prep.history.values() {
            let set: HashSet<JobConfig> = list.iter().map(|&(i, _)| prep.profiles[i].config).collect();
            assert_eq!(set.len(), list.len());
        }
    }

    #[test]
    fn num_init_filter_keeps_direct_fits_only_with_diversity() {
        let p = |lat: f64| NormProfile {
            config: JobConfig::STATIC_DEFAULT,
            throughput: 1.0,
            norm_latency: lat,
            recovery_s: 1.0,
        };
        let profiles = vec![p(0.0), p(0.0), p(0.9), p(0.0)];
        let list = vec![(0, true), (1, true), (2, true), (3, false)];
        assert_eq!(filter_by_num_init(&list, &profiles, 3), vec![0, 1, 2]);
        let list = vec![(0, true), (1, true), (3, false)];
        assert_eq!(filter_by_num_init(&list, &profiles, 3), vec![0, 1, 3]);
        let no_div = vec![(0, true), (1, true), (3, true)];
        assert_eq!(filter_by_num_init(&no_div, &profiles, 3), vec![0, 1, 3]);
    }

    struct Stub(HashMap<JobConfig, Prediction>, Prediction);

    impl OutcomePredictor for Stub {
        fn predict(&self, configs: &[JobConfig]) -> Vec<Prediction> {
            configs.iter().map(|c| *self.0.get(c).unwrap_or(&self.1)).collect()
        }
    }

    fn problem() -> Problem {
        Problem {
            thresholds: [4.72, 12.65],
            latency_bound: 0.5f64.ln_1p(),
            recovery_bound: 180f64.ln(),
            max_cluster_cpu: 50.0,
            max_cluster_memory_mb: 430_000.0,
        }
    }

    fn pred(cpu: f64, mem: f64, lat: f64, rec: f64) -> Prediction {
        [(cpu, 0.1), (mem, 0.1), (lat, 0.05), (rec, 0.1)]
    }

    #[test]
    fn quirk_switches_to_a_worse_scored_best_candidate() {
        let current = cfg(16, 1, 1, 2048, 30);
        let c = [
            cfg(8, 1, 1, 1024, 10),
            cfg(12, 1, 1, 1024, 10),
            cfg(16, 2, 1, 1024, 10),
            cfg(20, 1, 1, 1024, 10),
        ];
        let ok_lat = 0.1;
        let ok_rec = 100f64.ln();
        let mut m = HashMap::new();
        m.insert(current, pred(1.5, 8.5, ok_lat, ok_rec));
        m.insert(c[0], pred(1.0, 8.0, ok_lat, ok_rec));
        m.insert(c[1], pred(2.0, 9.0, ok_lat, ok_rec));
        m.insert(c[2], pred(2.5, 9.5, ok_lat, ok_rec));
        m.insert(c[3], pred(3.0, 10.0, ok_lat, ok_rec));
        let stub = Stub(m, pred(5.0, 12.0, 5.0, 9.0));
        let mut options = c.to_vec();
        options.push(current);
        let p = problem();
        let d = rescale_decision(Some(&stub), current, 0.2, JobConfig::STATIC_DEFAULT, &options, &p);
        // The cheapest quarter (c[0]) is filtered out; c[1] is the best remaining candidate and it
        // scores clearly worse than the current config — upstream still switches to it.
        assert_eq!(d.production, c[1]);
        assert_eq!(d.reason, RescaleReason::BestCandidate);
        let (cur, best) = (d.current_score.unwrap(), d.best_score.unwrap());
        assert!(best > cur * 1.05, "best {best} is worse than current {cur} by more than 5 %");
        assert_eq!(d.gt_factor, Some(0.25));

        // A better candidate within 5 % keeps the current config…
        let mut m = stub.0.clone();
        m.insert(current, pred(2.05, 9.05, ok_lat, ok_rec));
        let d = rescale_decision(
            Some(&Stub(m.clone(), stub.1)),
            current,
            0.2,
            JobConfig::STATIC_DEFAULT,
            &options,
            &p,
        );
        assert_eq!(d.reason, RescaleReason::WithinMinImprovement);
        assert_eq!(d.production, current);
        // …and one better by more than 5 % is taken.
        m.insert(current, pred(3.0, 11.0, ok_lat, ok_rec));
        let d =
            rescale_decision(Some(&Stub(m, stub.1)), current, 0.2, JobConfig::STATIC_DEFAULT, &options, &p);
        assert_eq!((d.production, d.reason), (c[1], RescaleReason::BestCandidate));
    }

    #[test]
    fn bad_latency_no_model_and_cannot_cope_paths() {
        let current = cfg(8, 1, 1, 1024, 10);
        let p = problem();
        let options = vec![current, cfg(12, 1, 1, 1024, 10)];
        let d = rescale_decision(None, current, 0.6, JobConfig::STATIC_DEFAULT, &options, &p);
        assert_eq!(
            (d.production, d.reason, d.gt_factor),
            (JobConfig::STATIC_DEFAULT, RescaleReason::BadLatency, Some(0.75))
        );
        let d = rescale_decision(None, current, 0.2, JobConfig::STATIC_DEFAULT, &options, &p);
        assert_eq!((d.production, d.reason, d.gt_factor), (current, RescaleReason::NoModel, None));
        // Everything violates the recovery bound (upper 1σ × 1.25 > 180 s): default.
        let stub = Stub(HashMap::new(), pred(2.0, 9.0, 0.1, 170f64.ln()));
        let d = rescale_decision(Some(&stub), current, 0.2, JobConfig::STATIC_DEFAULT, &options, &p);
        assert_eq!((d.production, d.reason), (JobConfig::STATIC_DEFAULT, RescaleReason::CannotCopeDefault));
        // The default itself always "can handle".
        let d = rescale_decision(
            Some(&stub),
            JobConfig::STATIC_DEFAULT,
            0.2,
            JobConfig::STATIC_DEFAULT,
            &options,
            &p,
        );
        assert_eq!(d.reason, RescaleReason::NoOtherCandidate);
    }

    #[test]
    fn objective_filter_drops_the_cheapest_quarter() {
        let p = problem();
        let preds: Vec<Prediction> =
            (0..8).map(|i| pred(1.0 + 0.3 * i as f64, 8.0 + 0.3 * i as f64, 0.1, 4.0)).collect();
        let ranked = p.rank_candidates(&preds);
        let kept: Vec<usize> = ranked.iter().map(|r| r.0).collect();
        // q25 of 1.0..3.1 is 1.525 and min + ln 1.25 = 1.223: indices 0 and 1 go.
        assert_eq!(kept, vec![2, 3, 4, 5, 6, 7]);
        // The constraint filter uses upper 1σ × 1.25.
        let bad = [pred(1.0, 8.0, 0.3, 4.0)]; // expm1(0.35) × 1.25 = 0.52 > 0.5
        assert!(p.rank_candidates(&bad).is_empty());
    }

    #[test]
    fn hypervolume_2d_is_exact() {
        assert!((hypervolume_2d(&[(1.0, 3.0), (2.0, 1.0)], (4.0, 4.0)) - 7.0).abs() < 1e-12);
        assert!((hypervolume_2d(&[(1.0, 3.0), (2.0, 1.0), (3.0, 3.5)], (4.0, 4.0)) - 7.0).abs() < 1e-12);
        assert_eq!(hypervolume_2d(&[(5.0, 1.0)], (4.0, 4.0)), 0.0);
    }

    #[test]
    fn sobol_walk_covers_the_grid_and_is_seeded() {
        let enc = Encoding::new(&SearchSpace::default(), &Quota::default());
        assert_eq!(enc.grid.len(), 1200);
        assert_eq!(enc.options.len(), 840);
        let walk = |seed: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut s = Sobol5::new(&mut rng);
            let mut seen = Vec::new();
            let mut set = HashSet::new();
            for _ in 0..200_000 {
                let c = enc.config_at(&s.next_point());
                if set.insert(c) {
                    seen.push(c);
                }
                if set.len() == enc.grid.len() {
                    break;
                }
            }
            seen
        };
        let a = walk(1);
        assert_eq!(a.len(), 1200);
        assert_eq!(a, walk(1));
        assert_ne!(a[..10], walk(2)[..10]);
        for c in &enc.grid {
            let f = enc.features(c);
            assert!(f.iter().all(|v| (0.0..=1.0).contains(v)));
            assert_eq!(enc.config_at(&f), *c);
        }
    }

    #[test]
    fn sobol_suggestions_respect_budget_and_exclusions() {
        let enc = Encoding::new(&SearchSpace::default(), &Quota::default());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let settings = UpstreamSettings::default();
        let p = Problem::new(&settings, &SearchSpace::default(), &mut rng);
        let decision = RescaleDecision {
            production: JobConfig::STATIC_DEFAULT,
            gt_factor: None,
            reason: RescaleReason::NoModel,
            current_score: None,
            best_score: None,
        };
        let bucket: Vec<JobConfig> = enc.options[..2].to_vec();
        let bottlenecked: HashSet<JobConfig> = enc.options[2..40].iter().copied().collect();
        let stable = HashSet::new();
        let input = SuggestionInput {
            enc: &enc,
            problem: &p,
            decision: &decision,
            bucket_configs: &bucket,
            bottlenecked: &bottlenecked,
            stable: &stable,
            proposals: 50,
            acq_samples: 16,
        };
        let s = profiling_suggestions(&input, &TargetModel::Sobol, &mut ChaCha8Rng::seed_from_u64(9));
        assert!(!s.is_empty());
        let budget = 26.0 * 0.95f64.powi(2);
        assert!(s.iter().map(|c| c.total_cpu()).sum::<f64>() <= budget + 1e-9);
        for c in &s {
            assert!(enc.options.contains(c) && !bucket.contains(c) && !bottlenecked.contains(c));
            assert_ne!(*c, JobConfig::STATIC_DEFAULT);
        }
        // Same seed, same answer.
        assert_eq!(s, profiling_suggestions(&input, &TargetModel::Sobol, &mut ChaCha8Rng::seed_from_u64(9)));
        // With the bad-latency factor (0.75 × default) no option of a 26 × 0.95^30 = 5.6 CPU budget
        // is "greater" than 18 CPU: upstream then falls back to every option within the budget.
        let d75 = RescaleDecision { gt_factor: Some(0.75), ..decision.clone() };
        let many: Vec<JobConfig> = enc.options[..30].to_vec();
        let input = SuggestionInput { decision: &d75, bucket_configs: &many, ..input };
        let s = profiling_suggestions(&input, &TargetModel::Sobol, &mut ChaCha8Rng::seed_from_u64(9));
        assert!(!s.is_empty());
        let budget = round2(26.0 * 0.95f64.powi(30));
        assert!(s.iter().map(|c| c.total_cpu()).sum::<f64>() <= budget);
        assert!(s.iter().all(|c| c.total_cpu() < 18.0 && !many.contains(c)));
    }

    #[test]
    fn reference_point_matches_upstream() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let p = Problem::new(&UpstreamSettings::default(), &SearchSpace::default(), &mut rng);
        assert!((p.thresholds[0] - 4.72).abs() < 0.03, "{}", p.thresholds[0]);
        assert!((p.thresholds[1] - 12.65).abs() < 0.01, "{}", p.thresholds[1]);
    }

    #[test]
    fn failure_detector_sees_collapses_but_not_redeploys() {
        let mut d = FailureDetector::default();
        let mut hits = Vec::new();
        for t in 0..3000 {
            let reconf = (1000..1060).contains(&t);
            let thr =
                if (500..530).contains(&t) || (2000..2040).contains(&t) || reconf { 0.0 } else { 30_000.0 };
            if d.observe(t, thr, 30_000.0, reconf) {
                hits.push(t);
            }
        }
        assert_eq!(hits, vec![500, 2000]);
    }

    /// Synthetic profiles: capacity 2,000 events/s per slot-CPU, bottlenecked above it.
    fn synthetic_profiles(enc: &Encoding, n: usize, rate: f64, seed: u64) -> Vec<UpstreamProfile> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::new();
        while out.len() < n {
            let c = enc.options[rng.random_range(0..enc.options.len())];
            if out.iter().any(|p: &UpstreamProfile| p.config == c) {
                continue;
            }
            let cap = 2_000.0 * c.parallelism as f64 * c.tm_cpu_cores().min(c.task_slots as f64)
                / c.task_slots as f64
                * 2.0;
            let offered = rate * rng.random_range(0.9..1.1);
            let ok = cap >= offered;
            let thr = if ok { offered } else { cap };
            let lat = if ok { 1_000.0 + rng.random_range(0.0..100.0) } else { 40_000.0 };
            let rec = if ok { 60.0 + 6.0 * c.checkpoint_interval_ms as f64 / 10_000.0 } else { 360.0 };
            out.push(UpstreamProfile { config: c, throughput: thr, latency_ms: lat, recovery_s: rec });
        }
        out
    }

    #[test]
    fn gp_bucket_model_learns_the_deterministic_objectives() {
        let enc = Encoding::new(&SearchSpace::default(), &Quota::default());
        // All healthy at 5k events/s: one bucket, no support buckets above it.
        let profiles = synthetic_profiles(&enc, 14, 5_000.0, 1);
        let current = profile(JobConfig::STATIC_DEFAULT, 5_000.0, 1_000.0, -1.0);
        let lowest = profiles.iter().map(|p| p.throughput).fold(current.throughput, f64::min);
        let prep = prepare(&profiles, &current, lowest);
        let settings = UpstreamSettings::default();
        let (model, idx) = build_target_model(&enc, &prep, 3, &settings);
        assert!(idx.len() >= NUM_INIT);
        assert!(matches!(model, TargetModel::Task(_)), "no buckets above the target: a plain bucket GP");
        let pr = BucketPredictor { model: &model, enc: &enc };
        let train: Vec<JobConfig> = idx.iter().map(|&i| prep.profiles[i].config).collect();
        for (c, p) in train.iter().zip(pr.predict(&train)) {
            assert!(
                (p[0].0 - c.total_cpu().ln()).abs() < 0.35,
                "{c}: ln cpu {} vs {}",
                p[0].0,
                c.total_cpu().ln()
            );
            assert!(p.iter().all(|(m, s)| m.is_finite() && s.is_finite() && *s >= 0.0));
        }
        // Deterministic for a seed.
        let (again, _) = build_target_model(&enc, &prep, 3, &settings);
        let a = pr.predict(&enc.options[..20]);
        let b = BucketPredictor { model: &again, enc: &enc }.predict(&enc.options[..20]);
        assert_eq!(a, b);
    }

    #[test]
    fn rgpe_combines_support_buckets_above_the_target() {
        let enc = Encoding::new(&SearchSpace::default(), &Quota::default());
        let mut profiles = synthetic_profiles(&enc, 8, 52_000.0, 2);
        profiles.extend(synthetic_profiles(&enc, 8, 42_000.0, 3));
        profiles.extend(synthetic_profiles(&enc, 4, 23_000.0, 4));
        let current = profile(JobConfig::STATIC_DEFAULT, 22_000.0, 1_000.0, -1.0);
        let prep = prepare(&profiles, &current, 24_000.0);
        let (model, idx) = build_target_model(&enc, &prep, 3, &UpstreamSettings::default());
        let TargetModel::Rgpe { supports, target, weights } = &model else { panic!("expected RGPE") };
        assert!(!supports.is_empty() && supports.len() <= MAX_SUPPORT_MODELS);
        assert_eq!(target.is_some(), idx.len() > 1);
        for w in weights {
            assert_eq!(w.len(), supports.len() + usize::from(target.is_some()));
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
        let preds = BucketPredictor { model: &model, enc: &enc }.predict(&enc.options);
        assert!(preds.iter().flatten().all(|(m, s)| m.is_finite() && s.is_finite()));
        // The whole request answers with configurations from the 840 options.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let settings = UpstreamSettings::default();
        let problem = Problem::new(&settings, &SearchSpace::default(), &mut rng);
        let a = Analytics {
            enc: &enc,
            problem: &problem,
            settings: &settings,
            seed: 3,
            default: JobConfig::STATIC_DEFAULT,
        };
        let req = analyse(&a, &profiles, &current, 24_000.0, true);
        assert!(enc.options.contains(&req.decision.production));
        assert!(req.suggestions.iter().all(|c| enc.options.contains(c)));
        assert_eq!(req, analyse(&a, &profiles, &current, 24_000.0, true));
    }
}
