//! Gaussian-process regression: Matérn-5/2 kernel with automatic relevance determination (one
//! lengthscale per input), plus an optional constant-and-linear part on chosen inputs, with
//! hyperparameters fitted by maximising the marginal likelihood (MAP under weak log-normal
//! priors, as BoTorch does with its Gamma priors).
//!
//! The model is `y_i = m + f(x_i) + ε_i` with
//!
//! ```text
//! k(x, x') = σ_f² · Matérn₅/₂(r) + σ_b² + σ_l² · Σ_{d∈linear} x_d x'_d,
//! r² = Σ_{d∈matern} (x_d − x'_d)² / ℓ_d²,       ε_i ~ N(0, σ_n² · w_i)
//! ```
//!
//! where `w_i` are known per-point noise multipliers (1 by default; smaller for a point that
//! averages several observations, larger for an imputed censored value). The linear part is the
//! "explicit basis functions" construction of Rasmussen & Williams §2.7: a linear mean with a
//! Gaussian prior on its coefficients, integrated out. It lets a model extrapolate a power law
//! (inputs in log space) instead of reverting to the mean away from the data. `y` is
//! standardised internally (by its own spread or by a fixed prior scale).
//!
//! Cost: the hyperparameter search evaluates the marginal likelihood and its gradient on at most
//! `max_opt_points` points (a deterministic stride through the data, the "subset of data"
//! estimator), so it is bounded whatever the number of observations; the final model is then
//! factorised once on all points. Prediction of `m` points costs one `m × n` cross-kernel and
//! one blocked triangular solve.

mod linalg;
pub mod normal;
mod optim;

pub use linalg::{NotPositiveDefinite, cholesky_in_place, inverse_lower, solve_lower_in_place};
pub use optim::{Minimum, lbfgs_minimize};

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// A log-normal prior `ln v ~ N(mu, sigma²)` on a positive hyperparameter, and the box
/// `[ln_min, ln_max]` the optimiser keeps `ln v` in.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogPrior {
    pub mu: f64,
    pub sigma: f64,
    pub ln_min: f64,
    pub ln_max: f64,
}

impl LogPrior {
    pub const fn new(mu: f64, sigma: f64, ln_min: f64, ln_max: f64) -> Self {
        LogPrior { mu, sigma, ln_min, ln_max }
    }

    fn log_density(&self, v: f64) -> (f64, f64) {
        let z = (v - self.mu) / self.sigma;
        (-0.5 * z * z, -z / self.sigma)
    }
}

/// How a [`Gp`] is fitted. Variances are in standardised `y` units; lengthscales in input units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpConfig {
    /// Input columns of the Matérn part (`None`: all columns).
    pub matern_dims: Option<Vec<usize>>,
    /// Input columns of the linear part (empty: no linear part).
    pub linear_dims: Vec<usize>,
    /// Variance of the constant part (uncertainty of the mean level), standardised units.
    pub bias_variance: f64,
    /// Fixed scale to standardise `y` by (`None`: the sample standard deviation, or 1 when the
    /// data has no spread). A fixed scale is a prior statement of how much `y` can vary, which
    /// keeps a model fitted on a handful of points from being overconfident.
    pub y_scale: Option<f64>,
    /// Starting hyperparameters (a previous fit's, to warm-start); ignored if their dimension
    /// does not match.
    pub init: Option<GpHyper>,
    /// Whether to optimise the hyperparameters at all.
    pub optimize: bool,
    /// L-BFGS iterations.
    pub max_iters: usize,
    /// The hyperparameter search uses at most this many points (a deterministic stride).
    pub max_opt_points: usize,
    /// Below this many points the hyperparameters stay at `init` or the priors' modes.
    pub min_points_to_optimize: usize,
    pub lengthscale_prior: LogPrior,
    pub signal_prior: LogPrior,
    pub noise_prior: LogPrior,
    pub linear_prior: LogPrior,
    /// Added to the diagonal for numerical stability (standardised units); escalated ×10 up to
    /// three times if the factorisation fails.
    pub jitter: f64,
}

impl Default for GpConfig {
    fn default() -> Self {
        GpConfig {
            matern_dims: None,
            linear_dims: Vec::new(),
            bias_variance: 1.0,
            y_scale: None,
            init: None,
            optimize: true,
            max_iters: 40,
            max_opt_points: 160,
            min_points_to_optimize: 4,
            // Inputs are expected on a unit-ish scale: lengthscales around 1, within [0.02, 50].
            lengthscale_prior: LogPrior::new(0.0, 1.0, (0.02f64).ln(), (50.0f64).ln()),
            signal_prior: LogPrior::new(0.0, 1.5, (1e-4f64).ln(), (1e2f64).ln()),
            noise_prior: LogPrior::new((0.01f64).ln(), 2.0, (1e-8f64).ln(), (4.0f64).ln()),
            linear_prior: LogPrior::new((0.1f64).ln(), 2.0, (1e-6f64).ln(), (1e2f64).ln()),
            jitter: 1e-8,
        }
    }
}

/// Fitted hyperparameters, in log space (variances in standardised `y` units).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpHyper {
    pub log_lengthscales: Vec<f64>,
    pub log_signal_var: f64,
    pub log_noise_var: f64,
    /// Present when the model has a linear part.
    pub log_linear_var: Option<f64>,
}

impl GpHyper {
    fn to_vec(&self) -> Vec<f64> {
        let mut v = self.log_lengthscales.clone();
        v.push(self.log_signal_var);
        v.push(self.log_noise_var);
        if let Some(l) = self.log_linear_var {
            v.push(l);
        }
        v
    }

    fn from_vec(v: &[f64], d: usize, linear: bool) -> Self {
        GpHyper {
            log_lengthscales: v[..d].to_vec(),
            log_signal_var: v[d],
            log_noise_var: v[d + 1],
            log_linear_var: linear.then(|| v[d + 2]),
        }
    }
}

/// Why a GP could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpError {
    #[error("no training points")]
    Empty,
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("non-finite {what} at row {row}")]
    NonFinite { what: &'static str, row: usize },
    #[error("kernel matrix not positive definite (pivot {} = {})", .0.index, .0.pivot)]
    NotPositiveDefinite(NotPositiveDefinite),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A fitted Gaussian process. Serialises as its training data, per-point noise multipliers,
/// standardisation and hyperparameters; deserialising refactorises.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "GpState", into = "GpState")]
pub struct Gp {
    state: GpState,
    /// Columns of `x` used by the Matérn part, and by the linear part.
    matern_dims: Vec<usize>,
    /// Cholesky factor of the standardised training covariance (noise and jitter included).
    chol: Array2<f64>,
    /// `K⁻¹ (y − ȳ)/s`.
    alpha: Array1<f64>,
    /// Log marginal likelihood of the standardised data.
    lml_std: f64,
}

/// The serialised form of a [`Gp`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GpState {
    pub x: Array2<f64>,
    pub y: Array1<f64>,
    pub noise_mult: Array1<f64>,
    pub y_mean: f64,
    pub y_scale: f64,
    pub hyper: GpHyper,
    pub matern_dims: Option<Vec<usize>>,
    pub linear_dims: Vec<usize>,
    pub bias_variance: f64,
    pub jitter: f64,
}

impl From<Gp> for GpState {
    fn from(gp: Gp) -> Self {
        gp.state
    }
}

impl TryFrom<GpState> for Gp {
    type Error = GpError;
    fn try_from(state: GpState) -> Result<Self, GpError> {
        Gp::from_state(state)
    }
}

/// Kernel hyperparameters in natural units, with the inputs pre-scaled by the lengthscales.
struct Kern<'a> {
    matern_dims: &'a [usize],
    linear_dims: &'a [usize],
    inv_ls: Vec<f64>,
    sf2: f64,
    sb2: f64,
    sl2: f64,
}

impl<'a> Kern<'a> {
    fn new(h: &GpHyper, matern_dims: &'a [usize], linear_dims: &'a [usize], sb2: f64) -> Self {
        Kern {
            matern_dims,
            linear_dims,
            inv_ls: h.log_lengthscales.iter().map(|l| (-l).exp()).collect(),
            sf2: h.log_signal_var.exp(),
            sb2,
            sl2: h.log_linear_var.map_or(0.0, f64::exp),
        }
    }

    /// Rows projected to the Matérn columns and divided by the lengthscales, and the rows
    /// projected to the linear columns.
    fn project(&self, x: ArrayView2<f64>) -> (Array2<f64>, Array2<f64>) {
        let n = x.nrows();
        let xm = Array2::from_shape_fn((n, self.matern_dims.len()), |(i, d)| {
            x[[i, self.matern_dims[d]]] * self.inv_ls[d]
        });
        let xl = Array2::from_shape_fn((n, self.linear_dims.len()), |(i, d)| x[[i, self.linear_dims[d]]]);
        (xm, xl)
    }

    fn prior_var(&self, xl_row: ArrayView1<f64>) -> f64 {
        self.sf2 + self.sb2 + self.sl2 * xl_row.dot(&xl_row)
    }

    /// Cross-covariance between two projected sets.
    fn cross(&self, am: &Array2<f64>, al: &Array2<f64>, bm: &Array2<f64>, bl: &Array2<f64>) -> Array2<f64> {
        let (na, nb) = (am.nrows(), bm.nrows());
        let mut k = Array2::zeros((na, nb));
        let lin = if self.linear_dims.is_empty() { None } else { Some(al.dot(&bl.t())) };
        let da = am.ncols();
        let a = am.as_slice().expect("standard layout");
        let b = bm.as_slice().expect("standard layout");
        for i in 0..na {
            let ai = &a[i * da..(i + 1) * da];
            let row = k.row_mut(i).into_slice().expect("standard layout");
            for (j, out) in row.iter_mut().enumerate() {
                let bj = &b[j * da..(j + 1) * da];
                let r2: f64 = ai.iter().zip(bj).map(|(p, q)| (p - q) * (p - q)).sum();
                let r = (5.0 * r2).sqrt();
                *out = self.sf2 * (1.0 + r + r * r / 3.0) * (-r).exp() + self.sb2;
            }
        }
        if let Some(l) = lin {
            k.scaled_add(self.sl2, &l);
        }
        k
    }
}

fn all_dims(d: usize) -> Vec<usize> {
    (0..d).collect()
}

/// Evenly strided subset of `0..n` with at most `m` indices.
fn stride_subset(n: usize, m: usize) -> Vec<usize> {
    if n <= m {
        return (0..n).collect();
    }
    (0..m).map(|i| i * n / m).collect()
}

/// Factorises `k` (adding the jitter, escalating it up to three times); returns the factor and
/// the jitter used.
fn factorise(mut k: Array2<f64>, jitter: f64) -> Result<(Array2<f64>, f64), NotPositiveDefinite> {
    let n = k.nrows();
    let mut jit = jitter;
    let mut added = 0.0;
    let mut last = NotPositiveDefinite { index: 0, pivot: f64::NAN };
    for _ in 0..4 {
        for i in 0..n {
            k[[i, i]] += jit - added;
        }
        added = jit;
        let mut l = k.clone();
        match cholesky_in_place(&mut l) {
            Ok(()) => return Ok((l, jit)),
            Err(e) => last = e,
        }
        jit *= 10.0;
    }
    Err(last)
}

/// Negative log posterior of the hyperparameters (minus LML minus log prior) and its gradient,
/// on standardised data.
#[allow(clippy::too_many_arguments)]
fn neg_log_posterior(
    theta: &[f64],
    x: ArrayView2<f64>,
    y: ArrayView1<f64>,
    w: ArrayView1<f64>,
    matern_dims: &[usize],
    linear_dims: &[usize],
    cfg: &GpConfig,
) -> Option<(f64, Vec<f64>)> {
    let d = matern_dims.len();
    let linear = !linear_dims.is_empty();
    let h = GpHyper::from_vec(theta, d, linear);
    let kern = Kern::new(&h, matern_dims, linear_dims, cfg.bias_variance);
    let sn2 = h.log_noise_var.exp();
    let n = x.nrows();
    let (xm, xl) = kern.project(x);
    let mut k = kern.cross(&xm, &xl, &xm, &xl);
    for i in 0..n {
        k[[i, i]] += sn2 * w[i];
    }
    let (l, _) = factorise(k, cfg.jitter).ok()?;
    let mut alpha = y.to_vec();
    linalg::solve_lower_vec(l.view(), &mut alpha);
    let half_logdet: f64 = l.diag().iter().map(|v| v.ln()).sum();
    let quad: f64 = alpha.iter().map(|v| v * v).sum();
    linalg::solve_upper_t_vec(l.view(), &mut alpha);
    let lml = -0.5 * quad - half_logdet - 0.5 * n as f64 * (2.0 * PI).ln();

    // K⁻¹ = L⁻ᵀ L⁻¹; W = α αᵀ − K⁻¹; dLML/dθ = ½ tr(W ∂K/∂θ).
    let linv = inverse_lower(l.view());
    let kinv = linv.t().dot(&linv);
    let np = theta.len();
    let mut grad = vec![0.0; np];
    let xs = xm.as_slice().expect("standard layout");
    for i in 0..n {
        let xi = &xs[i * d..(i + 1) * d];
        for j in 0..=i {
            let wij = alpha[i] * alpha[j] - kinv[[i, j]];
            // Off-diagonal pairs appear twice in the trace.
            let c = if i == j { 0.5 * wij } else { wij };
            if i == j {
                grad[d] += c * kern.sf2;
                grad[d + 1] += c * sn2 * w[i];
            } else {
                let xj = &xs[j * d..(j + 1) * d];
                let r2: f64 = xi.iter().zip(xj).map(|(p, q)| (p - q) * (p - q)).sum();
                let r = (5.0 * r2).sqrt();
                let e = (-r).exp();
                grad[d] += c * kern.sf2 * (1.0 + r + r * r / 3.0) * e;
                // ∂k/∂ln ℓ_t = σ_f² (5/3)(1 + √5 r') e^{−√5 r'} Δ_t²/ℓ_t² (r' the scaled distance).
                let g = c * kern.sf2 * (5.0 / 3.0) * (1.0 + r) * e;
                for t in 0..d {
                    let dt = xi[t] - xj[t];
                    grad[t] += g * dt * dt;
                }
            }
            if linear {
                let lin: f64 = linear_dims.iter().map(|&c2| x[[i, c2]] * x[[j, c2]]).sum();
                grad[d + 2] += c * kern.sl2 * lin;
            }
        }
    }
    let mut lp = 0.0;
    for (t, g) in grad.iter_mut().enumerate() {
        let prior = if t < d {
            &cfg.lengthscale_prior
        } else if t == d {
            &cfg.signal_prior
        } else if t == d + 1 {
            &cfg.noise_prior
        } else {
            &cfg.linear_prior
        };
        let (v, dv) = prior.log_density(theta[t]);
        lp += v;
        *g += dv;
    }
    let f = -(lml + lp);
    if !f.is_finite() {
        return None;
    }
    Some((f, grad.into_iter().map(|g| -g).collect()))
}

impl Gp {
    /// Fits a GP with unit noise multipliers.
    pub fn fit(x: ArrayView2<f64>, y: ArrayView1<f64>, cfg: &GpConfig) -> Result<Gp, GpError> {
        let w = Array1::ones(x.nrows());
        Gp::fit_heteroscedastic(x, y, w.view(), cfg)
    }

    /// Fits a GP where point `i` has noise variance `σ_n² · noise_mult[i]`.
    pub fn fit_heteroscedastic(
        x: ArrayView2<f64>,
        y: ArrayView1<f64>,
        noise_mult: ArrayView1<f64>,
        cfg: &GpConfig,
    ) -> Result<Gp, GpError> {
        let n = x.nrows();
        if n == 0 {
            return Err(GpError::Empty);
        }
        if y.len() != n || noise_mult.len() != n {
            return Err(GpError::Shape(format!(
                "x has {n} rows, y {} values, noise_mult {} values",
                y.len(),
                noise_mult.len()
            )));
        }
        let dim = x.ncols();
        let matern_dims = cfg.matern_dims.clone().unwrap_or_else(|| all_dims(dim));
        if matern_dims.iter().chain(&cfg.linear_dims).any(|&c| c >= dim) {
            return Err(GpError::Config(format!("a kernel column is out of range for {dim} inputs")));
        }
        for i in 0..n {
            if x.row(i).iter().any(|v| !v.is_finite()) {
                return Err(GpError::NonFinite { what: "input", row: i });
            }
            if !y[i].is_finite() {
                return Err(GpError::NonFinite { what: "target", row: i });
            }
            if !(noise_mult[i].is_finite() && noise_mult[i] > 0.0) {
                return Err(GpError::NonFinite { what: "noise multiplier", row: i });
            }
        }
        let y_mean = y.sum() / n as f64;
        let y_scale = match cfg.y_scale {
            Some(s) if s.is_finite() && s > 0.0 => s,
            Some(s) => return Err(GpError::Config(format!("y_scale must be positive, got {s}"))),
            None => {
                let var = y.iter().map(|v| (v - y_mean).powi(2)).sum::<f64>() / n as f64;
                if var > 1e-24 { var.sqrt() } else { 1.0 }
            }
        };
        let ys = y.mapv(|v| (v - y_mean) / y_scale);
        let d = matern_dims.len();
        let linear = !cfg.linear_dims.is_empty();
        let default_hyper = GpHyper {
            log_lengthscales: vec![cfg.lengthscale_prior.mu; d],
            log_signal_var: cfg.signal_prior.mu,
            log_noise_var: cfg.noise_prior.mu,
            log_linear_var: linear.then_some(cfg.linear_prior.mu),
        };
        let warm = cfg
            .init
            .clone()
            .filter(|h| h.log_lengthscales.len() == d && h.log_linear_var.is_some() == linear);
        let mut hyper = warm.clone().unwrap_or_else(|| default_hyper.clone());

        if cfg.optimize && n >= cfg.min_points_to_optimize && cfg.max_iters > 0 {
            let idx = stride_subset(n, cfg.max_opt_points.max(2));
            let xs = x.select(Axis(0), &idx);
            let yss = ys.select(Axis(0), &idx);
            let ws = noise_mult.select(Axis(0), &idx);
            let mut lo = vec![cfg.lengthscale_prior.ln_min; d];
            let mut hi = vec![cfg.lengthscale_prior.ln_max; d];
            lo.extend([cfg.signal_prior.ln_min, cfg.noise_prior.ln_min]);
            hi.extend([cfg.signal_prior.ln_max, cfg.noise_prior.ln_max]);
            if linear {
                lo.push(cfg.linear_prior.ln_min);
                hi.push(cfg.linear_prior.ln_max);
            }
            let objective = |t: &[f64]| {
                neg_log_posterior(t, xs.view(), yss.view(), ws.view(), &matern_dims, &cfg.linear_dims, cfg)
            };
            // A cold start also tries long lengthscales (a nearly linear fit), and keeps the better.
            let mut starts = vec![hyper.to_vec()];
            if warm.is_none() {
                let mut long = default_hyper.clone();
                long.log_lengthscales.iter_mut().for_each(|l| *l += 1.5);
                starts.push(long.to_vec());
            }
            let best = starts
                .iter()
                .filter_map(|s| lbfgs_minimize(objective, s, &lo, &hi, cfg.max_iters, 2.0))
                .min_by(|a, b| a.fx.total_cmp(&b.fx));
            if let Some(m) = best {
                hyper = GpHyper::from_vec(&m.x, d, linear);
            }
        }
        Gp::from_state(GpState {
            x: x.to_owned(),
            y: y.to_owned(),
            noise_mult: noise_mult.to_owned(),
            y_mean,
            y_scale,
            hyper,
            matern_dims: cfg.matern_dims.clone(),
            linear_dims: cfg.linear_dims.clone(),
            bias_variance: cfg.bias_variance,
            jitter: cfg.jitter,
        })
    }

    /// Rebuilds the factorisation from training data and hyperparameters.
    pub fn from_state(state: GpState) -> Result<Gp, GpError> {
        let n = state.x.nrows();
        if n == 0 {
            return Err(GpError::Empty);
        }
        if state.y.len() != n || state.noise_mult.len() != n {
            return Err(GpError::Shape("training data and targets differ in length".into()));
        }
        let matern_dims = state.matern_dims.clone().unwrap_or_else(|| all_dims(state.x.ncols()));
        if state.hyper.log_lengthscales.len() != matern_dims.len()
            || state.hyper.log_linear_var.is_some() == state.linear_dims.is_empty()
            || matern_dims.iter().chain(&state.linear_dims).any(|&c| c >= state.x.ncols())
        {
            return Err(GpError::Config("hyperparameters do not match the kernel's inputs".into()));
        }
        let ys = state.y.mapv(|v| (v - state.y_mean) / state.y_scale);
        let kern = Kern::new(&state.hyper, &matern_dims, &state.linear_dims, state.bias_variance);
        let (xm, xl) = kern.project(state.x.view());
        let mut k = kern.cross(&xm, &xl, &xm, &xl);
        let sn2 = state.hyper.log_noise_var.exp();
        for i in 0..n {
            k[[i, i]] += sn2 * state.noise_mult[i];
        }
        let (chol, _) = factorise(k, state.jitter).map_err(GpError::NotPositiveDefinite)?;
        let mut alpha = ys.to_vec();
        linalg::solve_lower_vec(chol.view(), &mut alpha);
        let quad: f64 = alpha.iter().map(|v| v * v).sum();
        linalg::solve_upper_t_vec(chol.view(), &mut alpha);
        let half_logdet: f64 = chol.diag().iter().map(|v| v.ln()).sum();
        let lml_std = -0.5 * quad - half_logdet - 0.5 * n as f64 * (2.0 * PI).ln();
        Ok(Gp { state, matern_dims, chol, alpha: Array1::from(alpha), lml_std })
    }

    fn kern(&self) -> Kern<'_> {
        Kern::new(&self.state.hyper, &self.matern_dims, &self.state.linear_dims, self.state.bias_variance)
    }

    /// Posterior mean and variance of the latent function `m + f(x)` (without observation noise)
    /// at each row of `x`, in the units of `y`.
    pub fn predict(&self, x: ArrayView2<f64>) -> (Array1<f64>, Array1<f64>) {
        assert_eq!(x.ncols(), self.state.x.ncols(), "predict: input dimension mismatch");
        let m = x.nrows();
        if m == 0 {
            return (Array1::zeros(0), Array1::zeros(0));
        }
        let kern = self.kern();
        let (tm, tl) = kern.project(self.state.x.view());
        let (qm, ql) = kern.project(x);
        // One cross-kernel for all test points; the transposed layout feeds the solve directly.
        let mut ks_t = kern.cross(&tm, &tl, &qm, &ql);
        let mean_std = ks_t.t().dot(&self.alpha);
        solve_lower_in_place(self.chol.view(), &mut ks_t);
        let explained = ks_t.map_axis(Axis(0), |c| c.dot(&c));
        let s = self.state.y_scale;
        let mean = mean_std.mapv(|v| self.state.y_mean + s * v);
        let var = Array1::from_shape_fn(m, |j| {
            let prior = kern.prior_var(ql.row(j));
            (prior - explained[j]).max(prior * 1e-12) * s * s
        });
        (mean, var)
    }

    /// Observation-noise variance (multiplier 1) in the units of `y`.
    pub fn noise_variance(&self) -> f64 {
        self.state.hyper.log_noise_var.exp() * self.state.y_scale.powi(2)
    }

    /// Log marginal likelihood of the training targets at the fitted hyperparameters, in the
    /// units of `y` (the standardised value minus `n · ln(scale)`).
    pub fn log_marginal_likelihood(&self) -> f64 {
        self.lml_std - self.n_train() as f64 * self.state.y_scale.ln()
    }

    /// Leave-one-out predictive mean and variance (noise included) of every training target,
    /// in closed form from `K⁻¹` (Rasmussen & Williams eq. 5.12).
    pub fn loo_predictive(&self) -> (Array1<f64>, Array1<f64>) {
        let linv = inverse_lower(self.chol.view());
        let diag = linv.map_axis(Axis(0), |c| c.dot(&c));
        let s = self.state.y_scale;
        let n = self.n_train();
        let ys = self.state.y.mapv(|v| (v - self.state.y_mean) / s);
        let mean = Array1::from_shape_fn(n, |i| self.state.y_mean + s * (ys[i] - self.alpha[i] / diag[i]));
        let var = diag.mapv(|d| s * s / d);
        (mean, var)
    }

    pub fn hyper(&self) -> &GpHyper {
        &self.state.hyper
    }

    pub fn n_train(&self) -> usize {
        self.state.x.nrows()
    }

    pub fn state(&self) -> &GpState {
        &self.state
    }
}

#[cfg(test)]
mod tests;
