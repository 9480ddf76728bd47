//! Performance models of a job: sustainable throughput (capacity), p95 latency and recovery time
//! after a failure, as functions of the configuration and the offered rate.
//!
//! # What is modelled, and what is not
//! The objectives, total CPU and total memory, are *known* functions of a configuration
//! (`JobConfig::total_cpu`, `total_memory_mb`): upstream models them with two GPs for nothing.
//! What is unknown is whether a configuration is *feasible* at a rate:
//!
//! 1. **Capacity** `c(x)`: a GP on `ln capacity` over the five configuration features
//!    ([`features`]: log parallelism, CPU and memory per slot, slots, checkpoint interval), with
//!    a linear part (capacity is close to a power law of those; the linear part extrapolates it)
//!    plus a Matérn-5/2 ARD residual. Training values come from profiling *and* production
//!    samples: a saturated window measured the capacity, a window with busy ratio `b` estimates
//!    it as `throughput / b` (DS2's true processing rate), any other healthy window says
//!    `capacity ≥ throughput`, a right-censored value handled by imputation (below).
//! 2. **Latency**: a GP on `ln p95` over the configuration features plus the log utilisation
//!    `v = ln(rate / c(x))` (and `max(v, 0)` in the linear part), around a queueing-shaped prior
//!    mean `base · (1 + k·u/(1−u))`. Latency is a function of utilisation first: flat while
//!    `u < 1`, rising near saturation, tens of seconds beyond. Using `v` rather than the raw
//!    rate lets a model trained at one workload level transfer to another (upstream's RGPE over
//!    10k events/s buckets needs separate data per bucket); see the tests for the transfer check.
//! 3. **Recovery time**: a GP on `ln seconds` over the same inputs, around the physical prior mean
//!    `base + (checkpoint/2 + outage) · u/(1−u)` (the backlog of the outage and the replay since
//!    the last checkpoint, drained at the headroom `capacity − rate`). Runs that never recovered
//!    (upstream's 360) are right-censored at their bound.
//!
//! **Censoring.** A censored value `y ≥ b` is replaced by the mean of a model's prediction there
//! truncated to `[b, ∞)` (capped at `b + censored_max_excess`), with the truncated variance as
//! that point's own noise; the model that predicts is fitted on the exact values only (or is
//! the prior when there are fewer than three), so bounds cannot reinforce one another. A
//! one-step approximation of the Tobit likelihood that keeps the model a plain GP. On top, a
//! configuration's capacity is conditioned exactly on its own floor (the most it was seen to
//! sustain healthily): its band never dips below what it demonstrably handled.
//!
//! **Feasibility at a rate** `r`, with margin `m` and band width `z`:
//! `P(feasible) = P(c ≥ m·r) · P(latency ≤ L | v̂) · P(recovery ≤ R | v̂)` with `v̂ = ln r − E[ln c]`.
//! Conditioning latency and recovery on the capacity's mean, rather than integrating over it,
//! avoids counting the capacity's uncertainty twice (the first factor already carries it). The
//! upper band of latency and recovery is evaluated at the *pessimistic* utilisation
//! `v_hi = ln r − (E[ln c] − z·sd)`: a configuration passes the upper-confidence test only if it
//! keeps its latency and recovery bounds even at the low end of its capacity band.

mod data;
pub mod features;
pub mod synthetic;

use crate::gp::normal::{norm_cdf, truncated_below};
use crate::gp::{Gp, GpConfig, GpError, GpHyper, LogPrior};
use crate::obs::{PerfSample, SampleOrigin};
use data::Point;
use demeter_common::{Constraints, JobConfig};
use features::{CHECKPOINT_FEATURE, FeatureScaling, N_CONFIG_FEATURES};
use ndarray::{Array1, Array2, Axis};
use serde::{Deserialize, Serialize};

pub use data::is_saturated;

/// Priors used where a model has no data, and as the mean functions of the latency and recovery
/// GPs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriorConfig {
    /// Capacity per CPU core (records/s) assumed with no data.
    pub capacity_per_core: f64,
    /// Log-scale standard deviation of that guess.
    pub capacity_log_sd: f64,
    /// Unloaded p95 latency (ms).
    pub latency_ms: f64,
    pub latency_log_sd: f64,
    /// Queueing factor `k` of the latency prior `base · (1 + k·u/(1−u))`.
    pub queueing_factor: f64,
    /// Detection plus restart time of a recovery (s).
    pub recovery_base_s: f64,
    /// Length of the outage whose backlog must be drained (s); upstream injects 30 s.
    pub recovery_outage_s: f64,
    pub recovery_log_sd: f64,
}

impl Default for PriorConfig {
    fn default() -> Self {
        PriorConfig {
            capacity_per_core: 5_000.0,
            capacity_log_sd: 1.0,
            latency_ms: 1_000.0,
            latency_log_sd: 1.0,
            queueing_factor: 0.05,
            recovery_base_s: 60.0,
            recovery_outage_s: 30.0,
            recovery_log_sd: 0.7,
        }
    }
}

/// Hyperparameter search settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HyperoptConfig {
    /// L-BFGS iterations of a cold fit.
    pub cold_iters: usize,
    /// L-BFGS iterations when warm-started from a previous model's hyperparameters.
    pub warm_iters: usize,
    /// Points the marginal likelihood is evaluated on during the search (a stride subset).
    pub max_opt_points: usize,
}

impl Default for HyperoptConfig {
    fn default() -> Self {
        HyperoptConfig { cold_iters: 40, warm_iters: 6, max_opt_points: 128 }
    }
}

/// How the performance model is built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerfModelConfig {
    /// Constraints used for [`Prediction::p_feasible`] by [`PerfModel::predict`]; the decision
    /// and the profiling policy pass their own through [`PerfModel::predict_many_with`].
    pub constraints: Constraints,
    /// Capacity must exceed the rate by this factor.
    pub capacity_margin: f64,
    /// Width of the bands in standard deviations (1.645: 90 % two-sided, 95 % one-sided).
    pub band_z: f64,
    /// A window with p95 latency at or above this is saturated (upstream's bottleneck class).
    pub saturation_latency_ms: f64,
    /// A window whose throughput is below this fraction of the offered rate is saturated.
    pub saturation_throughput_ratio: f64,
    /// Busy ratios below this are too small to estimate the capacity from.
    pub busy_ratio_min: f64,
    /// Pooled points never count as more than `1 / floor` observations (systematic errors do
    /// not average away).
    pub pooled_noise_floor: f64,
    /// Width of the utilisation bins (in `ln` units) samples of one configuration are pooled in.
    pub rate_pool_width: f64,
    /// An imputed censored value exceeds its bound by at most this (in `ln` units).
    pub censored_max_excess: f64,
    /// Below this many usable samples the model is prior-only.
    pub min_samples: usize,
    /// The controller keeps at most this many samples for training.
    pub max_training_samples: usize,
    pub features: FeatureScaling,
    pub prior: PriorConfig,
    pub hyperopt: HyperoptConfig,
}

impl Default for PerfModelConfig {
    fn default() -> Self {
        PerfModelConfig {
            constraints: Constraints::default(),
            capacity_margin: 1.1,
            band_z: 1.645,
            saturation_latency_ms: 5_000.0,
            saturation_throughput_ratio: 0.9,
            busy_ratio_min: 0.2,
            pooled_noise_floor: 0.1,
            rate_pool_width: 0.05,
            censored_max_excess: 1.0,
            min_samples: 3,
            max_training_samples: 2_000,
            features: FeatureScaling::default(),
            prior: PriorConfig::default(),
            hyperopt: HyperoptConfig::default(),
        }
    }
}

/// A central estimate with a band: `mean` is the median of the log-normal predictive
/// distribution (`exp` of the log-space mean), `lower`/`upper` its `±z` quantiles.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub mean: f64,
    pub lower: f64,
    pub upper: f64,
}

/// What the model predicts for one configuration at one rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Sustainable throughput (records/s).
    pub capacity: Band,
    /// p95 latency (ms); the upper end is at the pessimistic utilisation.
    pub latency_p95_ms: Band,
    /// Recovery time after a failure (s); the upper end is at the pessimistic utilisation.
    pub recovery_s: Band,
    /// Probability that all constraints hold: the product of the three below.
    pub p_feasible: f64,
    pub p_capacity: f64,
    pub p_latency: f64,
    pub p_recovery: f64,
    /// Rate over the capacity's median.
    pub utilisation: f64,
}

/// What a feasibility question is asked with.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Criteria {
    pub constraints: Constraints,
    pub capacity_margin: f64,
    pub z: f64,
}

/// What one of the three models was built from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// A GP was fitted (otherwise the prior is used).
    pub fitted: bool,
    /// Training points after pooling.
    pub n_points: usize,
    /// Of which right-censored.
    pub n_censored: usize,
    pub log_marginal_likelihood: Option<f64>,
}

/// What the model was built from, and anything worth saying about it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// Samples passed in.
    pub n_given: usize,
    /// Of which usable (valid, with a running job).
    pub n_samples: usize,
    pub n_profiling: usize,
    pub n_production: usize,
    pub capacity: ComponentStatus,
    pub latency: ComponentStatus,
    pub recovery: ComponentStatus,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Component {
    gp: Option<Gp>,
}

/// The fitted performance model of one job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PerfModel {
    cfg: PerfModelConfig,
    status: ModelStatus,
    /// Per configuration, the `ln capacity` its healthy windows showed it to exceed (sorted).
    capacity_floor: Vec<(JobConfig, f64)>,
    capacity: Component,
    latency: Component,
    recovery: Component,
}

fn gp_config(
    n_inputs: usize,
    linear: Vec<usize>,
    y_scale: f64,
    signal_sd: f64,
    noise_sd: f64,
    h: &HyperoptConfig,
) -> GpConfig {
    GpConfig {
        matern_dims: Some((0..n_inputs).collect()),
        linear_dims: linear,
        bias_variance: 1.0,
        y_scale: Some(y_scale),
        init: None,
        optimize: true,
        max_iters: h.cold_iters,
        max_opt_points: h.max_opt_points,
        min_points_to_optimize: 5,
        lengthscale_prior: LogPrior::new((0.7f64).ln(), 1.0, (0.05f64).ln(), (20.0f64).ln()),
        signal_prior: LogPrior::new(
            (signal_sd * signal_sd / (y_scale * y_scale)).ln(),
            1.5,
            (1e-4f64).ln(),
            1e1f64.ln(),
        ),
        noise_prior: LogPrior::new(
            (noise_sd * noise_sd / (y_scale * y_scale)).ln(),
            1.5,
            (1e-5f64).ln(),
            1.0f64.ln(),
        ),
        linear_prior: LogPrior::new(0.0, 1.5, (1e-4f64).ln(), (1e2f64).ln()),
        jitter: 1e-8,
    }
}

/// Fits a GP to points some of which are right-censored (`y ≥ bound`), in two stages: a GP on
/// the exact points alone (or the prior `fallback`, with fewer than three) predicts each
/// censored point; the point is replaced by the mean of that prediction truncated to
/// `[bound, ∞)` (capped at `bound + censored_max_excess`), carrying the truncated variance as
/// its own noise; the final GP is fitted on all points. A bound far below the prediction thus
/// adds almost nothing, a bound above it pulls the model up to just above the bound. Imputing
/// from a model that did not see the censored points keeps the bounds from reinforcing each
/// other (which leave-one-out imputation rounds do, collapsing the band onto the bounds).
fn fit_censored(
    points: &[Point],
    base: &GpConfig,
    warm: Option<&GpHyper>,
    cfg: &PerfModelConfig,
    fallback: &dyn Fn(usize) -> (f64, f64),
) -> Result<Gp, GpError> {
    let n = points.len();
    let d = points.first().map_or(0, |p| p.x.len());
    let x = Array2::from_shape_fn((n, d), |(i, j)| points[i].x[j]);
    let mut y = Array1::from_shape_fn(n, |i| points[i].y);
    let mut w = Array1::from_shape_fn(n, |i| points[i].w);
    let mut gcfg = base.clone();
    if let Some(h) = warm {
        gcfg.init = Some(h.clone());
        gcfg.max_iters = cfg.hyperopt.warm_iters;
    }
    let censored: Vec<usize> = (0..n).filter(|&i| points[i].censored).collect();
    if censored.is_empty() {
        return Gp::fit_heteroscedastic(x.view(), y.view(), w.view(), &gcfg);
    }
    let exact: Vec<usize> = (0..n).filter(|&i| !points[i].censored).collect();
    // Stage 1: the exact points' model (or the prior) at the censored points.
    let xc = x.select(Axis(0), &censored);
    let (mu, var, noise) = if exact.len() >= 3 {
        let gp = Gp::fit_heteroscedastic(
            x.select(Axis(0), &exact).view(),
            y.select(Axis(0), &exact).view(),
            w.select(Axis(0), &exact).view(),
            &gcfg,
        )?;
        let (m, v) = gp.predict(xc.view());
        let nv = gp.noise_variance();
        // The final fit starts from the exact points' hyperparameters and takes only a few
        // steps (reusing them unchanged was measured to transfer worse to unseen rates).
        gcfg.init = Some(gp.hyper().clone());
        gcfg.max_iters = cfg.hyperopt.warm_iters;
        (m.to_vec(), v.iter().map(|v| v + nv).collect::<Vec<_>>(), nv)
    } else {
        let (m, s): (Vec<f64>, Vec<f64>) = censored.iter().map(|&i| fallback(i)).unzip();
        let noise = base.noise_prior.mu.exp() * base.y_scale.unwrap_or(1.0).powi(2);
        (m, s.iter().map(|s| s * s).collect(), noise)
    };
    // Stage 2: impute and fit on everything.
    for (k, &i) in censored.iter().enumerate() {
        let bound = points[i].y;
        let (m, v) = truncated_below(mu[k], var[k].sqrt(), bound);
        y[i] = m.min(bound + cfg.censored_max_excess);
        w[i] = (v / noise.max(1e-12)).clamp(1.0, 1e4);
    }
    Gp::fit_heteroscedastic(x.view(), y.view(), w.view(), &gcfg)
}

/// Posterior of one configuration's `ln capacity`: normal, truncated below at its floor if any.
#[derive(Clone, Copy, Debug)]
struct CapPost {
    /// Mean and sd after conditioning on the floor.
    mean: f64,
    sd: f64,
    raw_mean: f64,
    raw_sd: f64,
    floor: Option<f64>,
}

impl CapPost {
    /// `P(ln capacity ≥ t)`.
    fn p_at_least(&self, t: f64) -> f64 {
        let s = self.raw_sd.max(1e-12);
        let q = |x: f64| norm_cdf(-(x - self.raw_mean) / s);
        match self.floor {
            None => q(t),
            Some(b) if t <= b => 1.0,
            Some(b) => {
                let (qt, qb) = (q(t), q(b));
                if qb > 1e-250 {
                    (qt / qb).min(1.0)
                } else {
                    // Both deep in the upper tail: ratio of the asymptotic tails.
                    let (at, ab) = ((t - self.raw_mean) / s, (b - self.raw_mean) / s);
                    ((-0.5 * (at * at - ab * ab)).exp() * ab / at).min(1.0)
                }
            }
        }
    }
}
fn q_util(v: f64) -> f64 {
    let u = v.exp().min(0.99);
    u / (1.0 - u)
}

impl PerfModel {
    /// Fits the three models on `samples`. Never fails: with fewer than `min_samples` usable
    /// samples (or if a fit fails numerically) the affected models fall back to their priors,
    /// and [`PerfModel::status`] says so.
    pub fn fit(samples: &[PerfSample], cfg: &PerfModelConfig) -> PerfModel {
        PerfModel::fit_warm(samples, cfg, None)
    }

    /// Refits on new samples with the same configuration, warm-starting the hyperparameter
    /// search from this model's (a few L-BFGS steps instead of a cold search).
    pub fn refit(&self, samples: &[PerfSample]) -> PerfModel {
        PerfModel::fit_warm(samples, &self.cfg, Some(self))
    }

    /// Fits, warm-starting the hyperparameters from `previous` where it has them.
    pub fn fit_warm(
        samples: &[PerfSample],
        cfg: &PerfModelConfig,
        previous: Option<&PerfModel>,
    ) -> PerfModel {
        let used: Vec<&PerfSample> = samples.iter().filter(|s| data::usable(s)).collect();
        let mut status = ModelStatus {
            n_given: samples.len(),
            n_samples: used.len(),
            n_profiling: used.iter().filter(|s| s.origin == SampleOrigin::Profiling).count(),
            n_production: used.iter().filter(|s| s.origin == SampleOrigin::Production).count(),
            ..ModelStatus::default()
        };
        if used.len() < samples.len() {
            status.notes.push(format!("{} invalid or idle samples ignored", samples.len() - used.len()));
        }
        let mut model = PerfModel {
            cfg: cfg.clone(),
            status,
            capacity_floor: Vec::new(),
            capacity: Component::default(),
            latency: Component::default(),
            recovery: Component::default(),
        };
        if used.len() < cfg.min_samples.max(1) {
            model.status.notes.push(format!(
                "prior-only model: {} usable samples, at least {} needed",
                used.len(),
                cfg.min_samples.max(1)
            ));
            return model;
        }
        let warm = |f: fn(&PerfModel) -> &Component| {
            previous.and_then(|p| f(p).gp.as_ref()).map(|g| g.hyper().clone())
        };

        // 1. Capacity.
        let (cap_configs, cap_points, floors) = data::capacity_points(&used, cfg);
        model.capacity_floor = floors;
        let cap_cfg =
            gp_config(N_CONFIG_FEATURES, (0..N_CONFIG_FEATURES).collect(), 1.0, 0.5, 0.1, &cfg.hyperopt);
        model.status.capacity.n_points = cap_points.len();
        model.status.capacity.n_censored = cap_points.iter().filter(|p| p.censored).count();
        let prior = |i: usize| {
            let c: &JobConfig = &cap_configs[i];
            ((cfg.prior.capacity_per_core * c.total_cpu().max(1e-3)).ln(), cfg.prior.capacity_log_sd)
        };
        match fit_censored(&cap_points, &cap_cfg, warm(|m| &m.capacity).as_ref(), cfg, &prior) {
            Ok(gp) => {
                model.status.capacity.fitted = true;
                model.status.capacity.log_marginal_likelihood = Some(gp.log_marginal_likelihood());
                model.capacity.gp = Some(gp);
            }
            Err(e) => model.status.notes.push(format!("capacity model fell back to its prior: {e}")),
        }

        // 2. Utilisation of every sample under the capacity model.
        let sample_configs: Vec<JobConfig> = used.iter().map(|s| s.config).collect();
        let log_cap = model.capacity_log(&sample_configs);
        let vs: Vec<f64> = used.iter().zip(&log_cap).map(|(s, lc)| data::sample_v(s, lc.mean, cfg)).collect();

        // 3. Latency, around the queueing prior.
        let raw: Vec<_> = used
            .iter()
            .zip(&vs)
            .map(|(s, &v)| {
                let y = s.p95_latency_ms.max(1.0).ln() - model.latency_prior(v);
                (
                    s.config,
                    Point { x: data::rate_inputs(&cfg.features, &s.config, v), y, w: 1.0, censored: false },
                )
            })
            .collect();
        let lat_points = data::pool_rate_points(raw, cfg.rate_pool_width, cfg.pooled_noise_floor);
        let n_rate = N_CONFIG_FEATURES + 2;
        let lat_cfg = gp_config(
            N_CONFIG_FEATURES + 1,
            vec![N_CONFIG_FEATURES, N_CONFIG_FEATURES + 1],
            1.0,
            0.5,
            0.15,
            &cfg.hyperopt,
        );
        model.status.latency.n_points = lat_points.len();
        match fit_censored(&lat_points, &lat_cfg, warm(|m| &m.latency).as_ref(), cfg, &|_| (0.0, 1.0)) {
            Ok(gp) => {
                model.status.latency.fitted = true;
                model.status.latency.log_marginal_likelihood = Some(gp.log_marginal_likelihood());
                model.latency.gp = Some(gp);
            }
            Err(e) => model.status.notes.push(format!("latency model fell back to its prior: {e}")),
        }

        // 4. Recovery, around the backlog-drain prior, right-censored where it never recovered.
        let raw: Vec<_> = used
            .iter()
            .zip(&vs)
            .filter_map(|(s, &v)| {
                let r = s.recovery.as_ref()?;
                let (y, censored) = data::recovery_target(r);
                let y = y - model.recovery_prior(&s.config, v);
                Some((
                    s.config,
                    Point { x: data::rate_inputs(&cfg.features, &s.config, v), y, w: 1.0, censored },
                ))
            })
            .collect();
        let rec_points = data::pool_rate_points(raw, cfg.rate_pool_width, cfg.pooled_noise_floor);
        model.status.recovery.n_points = rec_points.len();
        model.status.recovery.n_censored = rec_points.iter().filter(|p| p.censored).count();
        if rec_points.len() >= cfg.min_samples.max(1) {
            let rec_cfg = gp_config(
                N_CONFIG_FEATURES + 1,
                vec![CHECKPOINT_FEATURE, N_CONFIG_FEATURES, N_CONFIG_FEATURES + 1],
                0.5,
                0.3,
                0.15,
                &cfg.hyperopt,
            );
            let prior = |_| (0.0, cfg.prior.recovery_log_sd);
            match fit_censored(&rec_points, &rec_cfg, warm(|m| &m.recovery).as_ref(), cfg, &prior) {
                Ok(gp) => {
                    model.status.recovery.fitted = true;
                    model.status.recovery.log_marginal_likelihood = Some(gp.log_marginal_likelihood());
                    model.recovery.gp = Some(gp);
                }
                Err(e) => model.status.notes.push(format!("recovery model fell back to its prior: {e}")),
            }
        } else {
            model
                .status
                .notes
                .push(format!("recovery model is prior-only: {} recovery measurements", rec_points.len()));
        }
        debug_assert!(model.latency.gp.as_ref().is_none_or(|g| g.state().x.ncols() == n_rate));
        model
    }

    /// Posterior of `ln capacity` at each configuration: the GP's (or the prior's) normal
    /// distribution, conditioned on the configuration's own floor where it has one.
    fn capacity_log(&self, configs: &[JobConfig]) -> Vec<CapPost> {
        let (mean, var): (Vec<f64>, Vec<f64>) = match &self.capacity.gp {
            Some(gp) => {
                let x = Array2::from_shape_fn((configs.len(), N_CONFIG_FEATURES), |(i, j)| {
                    self.cfg.features.features(&configs[i])[j]
                });
                let (m, v) = gp.predict(x.view());
                (m.to_vec(), v.to_vec())
            }
            None => configs
                .iter()
                .map(|c| {
                    let p = &self.cfg.prior;
                    ((p.capacity_per_core * c.total_cpu().max(1e-3)).ln(), p.capacity_log_sd.powi(2))
                })
                .unzip(),
        };
        configs
            .iter()
            .zip(mean.into_iter().zip(var))
            .map(|(c, (m, v))| {
                let sd = v.max(1e-18).sqrt();
                let floor = self
                    .capacity_floor
                    .binary_search_by(|(k, _)| k.cmp(c))
                    .ok()
                    .map(|i| self.capacity_floor[i].1);
                match floor {
                    Some(b) => {
                        let (tm, tv) = truncated_below(m, sd, b);
                        CapPost { mean: tm, sd: tv.sqrt(), raw_mean: m, raw_sd: sd, floor }
                    }
                    None => CapPost { mean: m, sd, raw_mean: m, raw_sd: sd, floor },
                }
            })
            .collect()
    }

    /// Prior mean of `ln p95` at log utilisation `v`.
    fn latency_prior(&self, v: f64) -> f64 {
        let p = &self.cfg.prior;
        (p.latency_ms * (1.0 + p.queueing_factor * q_util(v))).ln()
    }

    /// Prior mean of `ln recovery` for `c` at log utilisation `v`.
    fn recovery_prior(&self, c: &JobConfig, v: f64) -> f64 {
        let p = &self.cfg.prior;
        let chk_s = c.checkpoint_interval_ms as f64 / 1000.0;
        (p.recovery_base_s + (chk_s / 2.0 + p.recovery_outage_s) * q_util(v)).ln()
    }

    /// Predicts one configuration at `rate` with the model's own criteria.
    pub fn predict(&self, config: &JobConfig, rate: f64) -> Prediction {
        self.predict_many(std::slice::from_ref(config), rate).pop().expect("one prediction")
    }

    /// Predicts many configurations at `rate` with the model's own criteria, batched.
    pub fn predict_many(&self, configs: &[JobConfig], rate: f64) -> Vec<Prediction> {
        let crit = self.default_criteria();
        self.predict_many_with(configs, rate, &crit)
    }

    /// The criteria [`PerfModel::predict`] uses (from the model's configuration).
    pub fn default_criteria(&self) -> Criteria {
        Criteria {
            constraints: self.cfg.constraints,
            capacity_margin: self.cfg.capacity_margin,
            z: self.cfg.band_z,
        }
    }

    /// Predicts many configurations at `rate` under the given criteria. Each of the three GPs
    /// makes one batched prediction: one cross-kernel against its training points for all
    /// configurations (two utilisations each for latency and recovery).
    pub fn predict_many_with(&self, configs: &[JobConfig], rate: f64, crit: &Criteria) -> Vec<Prediction> {
        let m = configs.len();
        if m == 0 {
            return Vec::new();
        }
        let p = &self.cfg.prior;
        let z = crit.z.max(0.0);
        let lr = rate.max(1.0).ln();
        let zs: Vec<[f64; N_CONFIG_FEATURES]> =
            configs.iter().map(|c| self.cfg.features.features(c)).collect();
        let cap = self.capacity_log(configs);
        let mc: Vec<f64> = cap.iter().map(|c| c.mean).collect();
        let sc: Vec<f64> = cap.iter().map(|c| c.sd).collect();
        let v_mid: Vec<f64> = (0..m).map(|i| data::clamp_v(lr - mc[i])).collect();
        let cap_lo: Vec<f64> =
            (0..m).map(|i| (mc[i] - z * sc[i]).max(cap[i].floor.unwrap_or(f64::NEG_INFINITY))).collect();
        let v_hi: Vec<f64> = (0..m).map(|i| data::clamp_v(lr - cap_lo[i])).collect();
        let n_rate = N_CONFIG_FEATURES + 2;
        let xq = Array2::from_shape_fn((2 * m, n_rate), |(r, j)| {
            let (i, v) = if r < m { (r, v_mid[r]) } else { (r - m, v_hi[r - m]) };
            if j < N_CONFIG_FEATURES {
                zs[i][j]
            } else if j == N_CONFIG_FEATURES {
                v
            } else {
                v.max(0.0)
            }
        });
        let vq = |r: usize| if r < m { v_mid[r] } else { v_hi[r - m] };
        // Log-space mean and predictive sd (noise included) of latency and recovery.
        let rate_model = |comp: &Component, prior_sd: f64, prior: &dyn Fn(usize, f64) -> f64| {
            let (mean, sd): (Vec<f64>, Vec<f64>) = match &comp.gp {
                Some(gp) => {
                    let (mu, var) = gp.predict(xq.view());
                    let nv = gp.noise_variance();
                    (0..2 * m).map(|r| (mu[r] + prior(r % m, vq(r)), (var[r] + nv).sqrt())).unzip()
                }
                None => (0..2 * m).map(|r| (prior(r % m, vq(r)), prior_sd)).unzip(),
            };
            (mean, sd)
        };
        let (lat_m, lat_s) = rate_model(&self.latency, p.latency_log_sd, &|_, v| self.latency_prior(v));
        let (rec_m, rec_s) =
            rate_model(&self.recovery, p.recovery_log_sd, &|i, v| self.recovery_prior(&configs[i], v));
        let ln_lat_bound = crit.constraints.latency_p95_ms.max(1e-9).ln();
        let ln_rec_bound = crit.constraints.recovery_time_s.max(1e-9).ln();
        let ln_need = (rate.max(1.0) * crit.capacity_margin.max(0.0)).max(1e-9).ln();
        (0..m)
            .map(|i| {
                let p_capacity = cap[i].p_at_least(ln_need);
                let p_latency = norm_cdf((ln_lat_bound - lat_m[i]) / lat_s[i].max(1e-9));
                let p_recovery = norm_cdf((ln_rec_bound - rec_m[i]) / rec_s[i].max(1e-9));
                let band =
                    |mu: f64, lo: f64, hi: f64| Band { mean: mu.exp(), lower: lo.exp(), upper: hi.exp() };
                Prediction {
                    capacity: band(mc[i], cap_lo[i], mc[i] + z * sc[i]),
                    latency_p95_ms: band(lat_m[i], lat_m[i] - z * lat_s[i], lat_m[i + m] + z * lat_s[i + m]),
                    recovery_s: band(rec_m[i], rec_m[i] - z * rec_s[i], rec_m[i + m] + z * rec_s[i + m]),
                    p_feasible: p_capacity * p_latency * p_recovery,
                    p_capacity,
                    p_latency,
                    p_recovery,
                    utilisation: (lr - mc[i]).exp(),
                }
            })
            .collect()
    }

    /// Usable samples the model was fitted on.
    pub fn n_samples(&self) -> usize {
        self.status.n_samples
    }

    pub fn status(&self) -> &ModelStatus {
        &self.status
    }

    /// No capacity model: every prediction is the prior's.
    pub fn is_prior_only(&self) -> bool {
        self.capacity.gp.is_none()
    }

    pub fn config(&self) -> &PerfModelConfig {
        &self.cfg
    }
}

#[cfg(test)]
mod tests;
