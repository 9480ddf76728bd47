//! Workload forecasting: a 10-minute horizon at 30-s steps on the smoothed input rate, with
//! prediction intervals and a calibrated *decision peak* for the scaling decision.
//!
//! # What the decision uses
//! The controller provisions for [`Forecast::decision_peak`]: the highest of the ten 60-s bin means
//! of the horizon, raised by the model's upper band (or, for the baselines, by a fixed safety
//! buffer, ×1.10 for Holt like upstream). For the calibrated models the band is *online
//! split-conformal on the peak itself*: every minute the forecaster makes a shadow forecast and,
//! ten minutes later, scores it with `ln(real peak / forecast peak)`; the multiplier is the
//! conformal quantile (level `band.coverage`, 98 %) of the last `band.window` (720, i.e. 12 h)
//! scores, never below `band.min_factor` (×1.02). Calibrating the one number the decision needs,
//! rather than widening every step, is what keeps the band tight. Optional adaptive conformal
//! inference (`band.aci_gamma`) moves the level after misses; it is off by default because on the
//! traces it added over-provision without removing misses (drift is the fallback's job).
//!
//! # Models
//! See [`ModelKind`]. The default, [`ModelKind::ConformalEnsemble`], calibrates three point models
//! side by side: Holt's linear trend, a local parabola over the last 5 min (slope plus ¾ of the
//! curvature: it follows the turns of smooth workloads) and, once a season is detected, a
//! level-adjusted seasonal naive. It uses the one whose calibrated band would have over-provisioned
//! least over its calibration window (each scored at the same coverage), switching only for a gain
//! of `band.select_margin`. Figures for every model and trace are in `docs/BENCHMARKS.md`
//! (Forecasting) and come from `eval::run`.
//!
//! # Fallback
//! The forecaster watches the realised under-forecast rate and WAPE of the model it uses over the
//! last `fallback.window` (60) matured shadow forecasts. Past `fallback.degrade_miss_rate` (20 %)
//! or `fallback.degrade_wape` (30 %), e.g. at a regime change that the calibration window has not
//! seen, it falls back to a *safe model*: the higher of the highest 30-s mean of the last 10 min
//! and the model's peak, times the larger of `fallback.safe_buffer` (×1.15) and the 95 % quantile
//! of the safe model's own scores. It returns once the model's own (still tracked) miss rate is at
//! most `fallback.recover_miss_rate` (5 %). [`Forecast::degraded`] tells when the fallback decides.
//!
//! # History needed
//! `forecast` returns `None` until `horizon_s` (10 min) of data has been seen, and when no sample
//! arrived in the last `max_gap_s` (10 min). Until a model has `band.min_scores` (30) matured
//! scores, about 50 min after the first sample, the safe model decides and the forecast is marked
//! `degraded`. A season needs one period plus `season.min_overlap_s` (1 h) of history.
//!
//! # Input handling
//! `observe` takes one value per second. Samples are averaged into `step_s` buckets on an absolute
//! grid (multiples of `step_s` since the epoch), so that a restored state lines up with new data.
//! NaN, infinite and negative values are dropped and counted; samples older than the open bucket
//! are dropped and counted; missing buckets (gaps up to `max_gap_s`) repeat the last mean; a longer
//! gap restarts the history (calibration scores are kept).
//!
//! # State and cost
//! [`WorkloadForecaster`] is `Serialize + Deserialize`: the whole state (at most `history_s` = 26 h
//! of 30-s means, pending shadow forecasts, calibration scores, counters) round-trips, and a
//! restored forecaster produces identical forecasts (bit-identical through MessagePack; JSON may
//! differ in the last bit of a float). With the defaults it holds at most about 14 k numbers:
//! 0.18 MB as JSON (0.09 MB as MessagePack) after 18 h, at most about 0.25 MB once the 26 h of
//! history are full. One `observe` + `forecast` costs about 0.25–0.35 ms in release.

pub mod eval;
mod models;
mod synthetic;

pub use synthetic::{SYNTHETIC_DAY_S, SYNTHETIC_START_S, SyntheticKind, synthetic_trace};

use models::{Point, PointParams, detect_period, point_forecast};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

/// The forecasting model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Last 30-s mean held flat; decision = its value × buffer (default ×1.0).
    Naive,
    /// Value one season earlier (the season is detected, or `season.period_s`); naive until a
    /// season is known; decision × buffer (default ×1.0).
    SeasonalNaive,
    /// Holt's linear trend fitted on the last `trend.holt_fit_window_s`; decision × buffer
    /// (default ×1.10, as upstream).
    Holt,
    /// Holt's linear trend with the online-calibrated (conformal + ACI) upper band instead of the
    /// buffer: the ablation that shows what the calibration alone brings.
    ConformalHolt,
    /// **Default.** Holt, a local parabola and (once a season is detected) a level-adjusted
    /// seasonal naive, each with its own online-calibrated band; the candidate whose calibrated
    /// band has been the tightest over the calibration window is used.
    #[default]
    ConformalEnsemble,
}

impl ModelKind {
    pub const ALL: [ModelKind; 5] = [
        ModelKind::Naive,
        ModelKind::SeasonalNaive,
        ModelKind::Holt,
        ModelKind::ConformalHolt,
        ModelKind::ConformalEnsemble,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Naive => "naive",
            ModelKind::SeasonalNaive => "seasonal_naive",
            ModelKind::Holt => "holt",
            ModelKind::ConformalHolt => "conformal_holt",
            ModelKind::ConformalEnsemble => "conformal_ensemble",
        }
    }

    /// Whether this is the default model.
    pub fn is_default(self) -> bool {
        self == ModelKind::default()
    }

    /// The fixed safety buffer of the buffered models, or `None` for the calibrated ones.
    pub fn default_buffer(self) -> Option<f64> {
        match self {
            ModelKind::Naive | ModelKind::SeasonalNaive => Some(1.0),
            ModelKind::Holt => Some(1.10),
            ModelKind::ConformalHolt | ModelKind::ConformalEnsemble => None,
        }
    }

    fn points(self) -> &'static [Point] {
        match self {
            ModelKind::Naive => &[Point::Naive],
            ModelKind::SeasonalNaive => &[Point::Seasonal],
            ModelKind::Holt => &[Point::Holt],
            ModelKind::ConformalHolt => &[Point::Holt],
            ModelKind::ConformalEnsemble => &[Point::Holt, Point::Quadratic, Point::SeasonalAdjusted],
        }
    }
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ModelKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        ModelKind::ALL.into_iter().find(|k| k.name() == norm).ok_or_else(|| {
            format!("unknown model {s:?} (expected one of: {})", ModelKind::ALL.map(|k| k.name()).join(", "))
        })
    }
}

/// Settings of the forecaster. Every field has a serde default, so `{}` is a valid config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForecastConfig {
    /// Forecast horizon (s). Must be a multiple of `bin_s`.
    pub horizon_s: u32,
    /// Step of the forecast and of the internal history (s).
    pub step_s: u32,
    /// Bin over which the decision peak is taken (s). Must be a multiple of `step_s`.
    pub bin_s: u32,
    pub model: ModelKind,
    /// Safety buffer of the buffered models; `None` = the model's default (see
    /// [`ModelKind::default_buffer`]). Ignored by the calibrated models.
    pub buffer: Option<f64>,
    pub band: BandConfig,
    pub trend: TrendConfig,
    pub season: SeasonConfig,
    pub fallback: FallbackConfig,
    /// History kept (s). Must cover the longest season plus `season.min_overlap_s`.
    pub history_s: u32,
    /// Longest gap filled by carrying the last mean forward (s); longer gaps restart the history.
    pub max_gap_s: u32,
    /// Interval between the forecaster's own rolling-origin (shadow) forecasts used for calibration
    /// and accuracy tracking (s). A multiple of `step_s`.
    pub shadow_every_s: u32,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            horizon_s: 600,
            step_s: 30,
            bin_s: 60,
            model: ModelKind::default(),
            buffer: None,
            band: BandConfig::default(),
            trend: TrendConfig::default(),
            season: SeasonConfig::default(),
            fallback: FallbackConfig::default(),
            history_s: 26 * 3600,
            max_gap_s: 600,
            shadow_every_s: 60,
        }
    }
}

/// The online-calibrated band.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BandConfig {
    /// Target share of decision points whose real peak stays under the decision peak.
    pub coverage: f64,
    /// Calibration scores kept (one per shadow forecast).
    pub window: usize,
    /// Scores needed before the band is trusted (the safe model is used until then).
    pub min_scores: usize,
    /// Scores a candidate of the ensemble needs before it may be selected.
    pub select_min_scores: usize,
    /// A candidate replaces the active one only if its expected over-provision is lower by this.
    pub select_margin: f64,
    /// ACI step size: how fast the quantile level reacts to misses (0 = plain split conformal).
    pub aci_gamma: f64,
    /// Smallest band multiplier: a floor for the measurement noise of the rate itself, so that a
    /// model that has been exact for hours (a trace that repeats) still keeps a margin.
    pub min_factor: f64,
    /// Two-sided coverage of the per-step `lower`/`upper` intervals.
    pub interval_coverage: f64,
    /// Per-bin scores kept for the per-step intervals.
    pub interval_window: usize,
}

impl Default for BandConfig {
    fn default() -> Self {
        BandConfig {
            coverage: 0.98,
            window: 720,
            min_scores: 30,
            select_min_scores: 60,
            select_margin: 0.02,
            aci_gamma: 0.0,
            min_factor: 1.02,
            interval_coverage: 0.9,
            interval_window: 240,
        }
    }
}

/// The trend models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrendConfig {
    /// Window on which Holt's (α, β) are fitted (s).
    pub holt_fit_window_s: u32,
    /// Window of the local parabola (s).
    pub quad_window_s: u32,
    /// Weight of the parabola's curvature in the extrapolation (0 = a line, 1 = the full parabola).
    pub quad_curvature: f64,
    /// Window over which the seasonal model's level is adjusted (s).
    pub level_window_s: u32,
}

impl Default for TrendConfig {
    fn default() -> Self {
        TrendConfig { holt_fit_window_s: 7200, quad_window_s: 300, quad_curvature: 0.75, level_window_s: 300 }
    }
}

/// Season detection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeasonConfig {
    /// A known season (s); `None` = detect it.
    pub period_s: Option<u32>,
    pub min_period_s: u32,
    pub max_period_s: u32,
    /// Overlap between the series and its lagged copy needed to accept a season (s).
    pub min_overlap_s: u32,
    /// Correlation of the differenced 5-min means at the lag needed to accept a season.
    pub min_corr: f64,
    /// Interval between detections (s).
    pub detect_every_s: u32,
}

impl Default for SeasonConfig {
    fn default() -> Self {
        SeasonConfig {
            period_s: None,
            min_period_s: 3600,
            max_period_s: 86_400,
            min_overlap_s: 3600,
            min_corr: 0.8,
            detect_every_s: 1800,
        }
    }
}

/// Accuracy monitoring and the safe fallback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FallbackConfig {
    pub enabled: bool,
    /// Matured shadow forecasts over which recent accuracy is judged.
    pub window: usize,
    /// Matured shadow forecasts needed before judging.
    pub min_matured: usize,
    /// Fall back when the active model's recent under-forecast rate exceeds this…
    pub degrade_miss_rate: f64,
    /// …or its recent WAPE exceeds this.
    pub degrade_wape: f64,
    /// Return to the model when its recent under-forecast rate is at most this (and WAPE is fine).
    pub recover_miss_rate: f64,
    /// Smallest multiplier of the safe model.
    pub safe_buffer: f64,
    /// The safe model's base is at least the highest step mean of this look-back (s).
    pub safe_lookback_s: u32,
    /// Quantile of the safe model's own scores used as its multiplier.
    pub safe_coverage: f64,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            enabled: true,
            window: 60,
            min_matured: 20,
            degrade_miss_rate: 0.2,
            degrade_wape: 0.3,
            recover_miss_rate: 0.05,
            safe_buffer: 1.15,
            safe_lookback_s: 600,
            safe_coverage: 0.95,
        }
    }
}

/// An invalid [`ForecastConfig`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("invalid forecast config: {0}")]
pub struct ForecastConfigError(pub String);

impl ForecastConfig {
    /// Checks the relations between the fields.
    pub fn validate(&self) -> Result<(), ForecastConfigError> {
        let err = |m: &str| Err(ForecastConfigError(m.to_string()));
        if self.step_s == 0 || self.bin_s == 0 || self.horizon_s == 0 {
            return err("horizon_s, step_s and bin_s must be positive");
        }
        if !self.bin_s.is_multiple_of(self.step_s) || !self.horizon_s.is_multiple_of(self.bin_s) {
            return err("bin_s must be a multiple of step_s and horizon_s a multiple of bin_s");
        }
        if self.shadow_every_s == 0 || !self.shadow_every_s.is_multiple_of(self.step_s) {
            return err("shadow_every_s must be a positive multiple of step_s");
        }
        if !(self.band.coverage > 0.5 && self.band.coverage < 1.0) {
            return err("band.coverage must be in (0.5, 1)");
        }
        if !(self.band.interval_coverage > 0.0 && self.band.interval_coverage < 1.0) {
            return err("band.interval_coverage must be in (0, 1)");
        }
        if self.band.window < self.band.min_scores || self.band.min_scores < 5 {
            return err("band.window must be ≥ band.min_scores ≥ 5");
        }
        if !(self.band.min_factor.is_finite() && self.band.min_factor > 0.0) {
            return err("band.min_factor must be positive");
        }
        if !(self.band.aci_gamma >= 0.0 && self.band.aci_gamma < 0.5) {
            return err("band.aci_gamma must be in [0, 0.5)");
        }
        if !(0.0..=1.0).contains(&self.trend.quad_curvature) {
            return err("trend.quad_curvature must be in [0, 1]");
        }
        if self.trend.quad_window_s < 4 * self.step_s {
            return err("trend.quad_window_s must span at least 4 steps");
        }
        if self.buffer.is_some_and(|b| !(b.is_finite() && b > 0.0)) {
            return err("buffer must be positive");
        }
        if !(self.fallback.safe_buffer.is_finite() && self.fallback.safe_buffer >= 1.0) {
            return err("fallback.safe_buffer must be ≥ 1");
        }
        if self.fallback.window == 0 || self.fallback.min_matured > self.fallback.window {
            return err("fallback.window must be ≥ fallback.min_matured and positive");
        }
        if self.history_s < 2 * self.horizon_s {
            return err("history_s must be at least twice horizon_s");
        }
        Ok(())
    }

    fn steps(&self) -> usize {
        (self.horizon_s / self.step_s) as usize
    }

    fn bins(&self) -> usize {
        (self.horizon_s / self.bin_s) as usize
    }

    fn steps_per_bin(&self) -> usize {
        (self.bin_s / self.step_s) as usize
    }

    fn buckets(&self, seconds: u32) -> usize {
        (seconds / self.step_s) as usize
    }
}

/// A forecast of the next `horizon_s` from `origin_s`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// First second of the horizon (the `now_s` passed to `forecast`).
    pub origin_s: i64,
    pub step_s: u32,
    /// Mean rate of each step `[origin_s + i·step_s, origin_s + (i+1)·step_s)`.
    pub mean: Vec<f64>,
    /// Lower end of each step's interval (`band.interval_coverage`, two-sided).
    pub lower: Vec<f64>,
    /// Upper end of each step's interval.
    pub upper: Vec<f64>,
    /// The value a decision uses: the peak of the `bin_s` means of `mean`, with the model's
    /// calibrated upper band (or safety buffer, or the safe model's margin when `degraded`).
    pub decision_peak: f64,
    /// The peak of the `bin_s` means of `mean`, without band or buffer.
    pub peak_mean: f64,
    /// The model that produced `mean` (for the ensemble: `conformal_ensemble/trend` or `/seasonal`).
    pub model: String,
    /// True when the safe fallback produced `decision_peak` (accuracy degraded, or still warming up).
    pub degraded: bool,
}

impl Forecast {
    /// Means of the `bin_s` bins of `mean` (steps per bin = `bin_s / step_s`).
    pub fn bin_means(&self, bin_s: u32) -> Vec<f64> {
        let per = (bin_s / self.step_s).max(1) as usize;
        self.mean.chunks(per).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect()
    }
}

/// Online accuracy of the forecaster, measured on its matured shadow forecasts (one every
/// `shadow_every_s`, independent of how often `forecast` is called).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AccuracyStats {
    /// Active model (`conformal_ensemble/trend`, …, or `safe_fallback`).
    pub active_model: String,
    pub degraded: bool,
    /// Shadow forecasts whose horizon has been observed.
    pub matured: u64,
    /// Σ|forecast bin − real bin| / Σ real bin over all matured forecasts (point forecast, no band).
    pub wape: f64,
    /// The same over the last `fallback.window` matured forecasts.
    pub recent_wape: f64,
    /// Share of matured forecasts whose real peak was ≤ the decision peak issued.
    pub coverage: f64,
    /// Matured forecasts whose real peak exceeded the decision peak issued.
    pub under_forecasts: u64,
    /// Under-forecast rate of the active model over the last `fallback.window` matured forecasts.
    pub recent_miss_rate: f64,
    /// Mean of decision peak / real peak − 1 over all matured forecasts.
    pub mean_overprovision: f64,
    /// Times the forecaster fell back to the safe model.
    pub fallbacks: u64,
    /// Samples dropped because they were NaN, infinite or negative.
    pub rejected_samples: u64,
    /// Samples dropped because they were older than the newest bucket.
    pub out_of_order_samples: u64,
    /// Buckets filled by carrying the last mean over a gap.
    pub filled_buckets: u64,
    /// Times a gap longer than `max_gap_s` restarted the history.
    pub history_resets: u64,
    /// Detected (or configured) season, in seconds.
    pub season_s: Option<u32>,
    /// Current multiplier of the active model's calibrated band (decision peak / peak mean).
    pub band_factor: Option<f64>,
}

/// A calibrated point model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Candidate {
    point: Point,
    /// `ln(real peak / forecast peak)` of the matured shadow forecasts, newest last.
    peak_scores: VecDeque<f64>,
    /// Per bin: `ln(real bin / forecast bin)`.
    bin_scores: Vec<VecDeque<f64>>,
}

/// A shadow forecast waiting for its horizon to be observed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pending {
    /// Bucket index of the first forecast step.
    origin: i64,
    /// Per candidate: forecast bin means (`None` when the model did not apply).
    bins: Vec<Option<Vec<f64>>>,
    /// The candidate that was active.
    active: usize,
    /// Its decision (`None` while its band was not ready).
    primary: Option<f64>,
    safe_base: f64,
    safe_decision: f64,
    /// The decision issued (safe one when degraded).
    issued: f64,
}

/// A bucket being filled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Accum {
    bucket: i64,
    sum: f64,
    count: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Counters {
    matured: u64,
    abs_err: f64,
    actual: f64,
    under: u64,
    overprov_sum: f64,
    fallbacks: u64,
    rejected: u64,
    out_of_order: u64,
    filled: u64,
    resets: u64,
}

/// Online workload forecaster. See the module documentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadForecaster {
    cfg: ForecastConfig,
    /// Bucket index of `history[0]`.
    first_bucket: i64,
    /// Complete bucket means, oldest first.
    history: VecDeque<f64>,
    acc: Option<Accum>,
    period: Option<usize>,
    next_detect: i64,
    candidates: Vec<Candidate>,
    active: usize,
    /// ACI miscoverage level shared by the candidates' bands.
    alpha: f64,
    pending: VecDeque<Pending>,
    /// Safe model scores `ln(real peak / safe base)`.
    safe_scores: VecDeque<f64>,
    /// Active model's recent outcomes: (under-forecast, |err| sum, actual sum).
    monitor: VecDeque<(bool, f64, f64)>,
    degraded: bool,
    counters: Counters,
}

impl WorkloadForecaster {
    /// A forecaster with `cfg`; an invalid config is replaced by the default one (use
    /// [`WorkloadForecaster::try_new`] to get the error instead).
    pub fn new(cfg: ForecastConfig) -> Self {
        Self::try_new(cfg)
            .unwrap_or_else(|_| Self::try_new(ForecastConfig::default()).expect("default is valid"))
    }

    pub fn try_new(cfg: ForecastConfig) -> Result<Self, ForecastConfigError> {
        cfg.validate()?;
        let alpha = 1.0 - cfg.band.coverage;
        let candidates = cfg
            .model
            .points()
            .iter()
            .map(|&point| Candidate {
                point,
                peak_scores: VecDeque::new(),
                bin_scores: vec![VecDeque::new(); cfg.bins()],
            })
            .collect();
        let period = cfg.season.period_s.map(|p| cfg.buckets(p)).filter(|&p| p > 0);
        Ok(WorkloadForecaster {
            first_bucket: 0,
            history: VecDeque::new(),
            acc: None,
            period,
            next_detect: i64::MIN,
            candidates,
            active: 0,
            alpha,
            pending: VecDeque::new(),
            safe_scores: VecDeque::new(),
            monitor: VecDeque::new(),
            degraded: false,
            counters: Counters::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &ForecastConfig {
        &self.cfg
    }

    /// Feeds one sample (normally one per second). NaN, infinite and negative rates are ignored
    /// and counted, as are samples older than the bucket being filled.
    pub fn observe(&mut self, t_s: i64, rate: f64) {
        if !rate.is_finite() || rate < 0.0 {
            self.counters.rejected += 1;
            return;
        }
        let bucket = t_s.div_euclid(self.cfg.step_s as i64);
        match &mut self.acc {
            Some(a) if a.bucket == bucket => {
                a.sum += rate;
                a.count += 1;
                return;
            }
            Some(a) if a.bucket > bucket => {
                self.counters.out_of_order += 1;
                return;
            }
            _ => {}
        }
        if !self.history.is_empty() && bucket < self.next_bucket() {
            self.counters.out_of_order += 1;
            return;
        }
        self.close_until(bucket);
        self.acc = Some(Accum { bucket, sum: rate, count: 1 });
    }

    /// Index of the bucket after the newest complete one.
    fn next_bucket(&self) -> i64 {
        self.first_bucket + self.history.len() as i64
    }

    /// Closes the open bucket if it lies before `bucket`.
    fn close_until(&mut self, bucket: i64) {
        if let Some(a) = self.acc.take_if(|a| a.bucket < bucket) {
            self.push_bucket(a.bucket, a.sum / a.count as f64);
        }
    }

    /// Appends a complete bucket, filling a gap before it, then runs the per-bucket work.
    fn push_bucket(&mut self, bucket: i64, mean: f64) {
        if self.history.is_empty() {
            self.first_bucket = bucket;
        } else {
            let gap = bucket - self.next_bucket();
            if gap * self.cfg.step_s as i64 > self.cfg.max_gap_s as i64 {
                self.counters.resets += 1;
                self.history.clear();
                self.pending.clear();
                self.monitor.clear();
                self.first_bucket = bucket;
                if self.cfg.season.period_s.is_none() && self.period.is_some() {
                    self.period = None;
                    self.forget_seasonal();
                }
                self.next_detect = i64::MIN;
            } else {
                let last = self.history.back().copied().unwrap_or(mean);
                for _ in 0..gap {
                    self.counters.filled += 1;
                    self.history.push_back(last);
                    self.after_bucket();
                }
            }
        }
        self.history.push_back(mean);
        self.after_bucket();
    }

    /// Work after each complete bucket: trim, mature shadow forecasts, detect the season, make a
    /// new shadow forecast.
    fn after_bucket(&mut self) {
        let cap = self.cfg.buckets(self.cfg.history_s).max(1);
        while self.history.len() > cap {
            self.history.pop_front();
            self.first_bucket += 1;
        }
        self.mature();
        let next = self.next_bucket();
        if self.cfg.season.period_s.is_none() && next >= self.next_detect {
            let x = self.history.make_contiguous();
            let s = &self.cfg.season;
            let period = detect_period(
                x,
                self.cfg.step_s,
                s.min_period_s,
                s.max_period_s,
                s.min_overlap_s,
                s.min_corr,
            );
            self.next_detect = next + self.cfg.buckets(s.detect_every_s).max(1) as i64;
            if period != self.period {
                self.period = period;
                self.forget_seasonal();
            }
        }
        let every = self.cfg.buckets(self.cfg.shadow_every_s).max(1) as i64;
        if next.rem_euclid(every) == 0 && self.history.len() >= self.cfg.steps() {
            let p = self.shadow();
            self.pending.push_back(p);
        }
    }

    /// A new season makes the seasonal candidates new models: their scores and pending forecasts
    /// describe the old one.
    fn forget_seasonal(&mut self) {
        for (i, c) in self.candidates.iter_mut().enumerate() {
            if matches!(c.point, Point::Seasonal | Point::SeasonalAdjusted) {
                c.peak_scores.clear();
                c.bin_scores.iter_mut().for_each(VecDeque::clear);
                for p in &mut self.pending {
                    p.bins[i] = None;
                }
            }
        }
    }

    fn params(&self) -> PointParams {
        let t = &self.cfg.trend;
        PointParams {
            quad_window: self.cfg.buckets(t.quad_window_s).max(4),
            quad_curvature: t.quad_curvature,
            level_window: self.cfg.buckets(t.level_window_s).max(1),
            holt_fit_window: self.cfg.buckets(t.holt_fit_window_s).max(4),
            period: self.period,
        }
    }

    /// The point forecasts of every candidate on the grid, `steps + 1` buckets from `next_bucket`.
    fn grids(&mut self) -> Vec<Option<Vec<f64>>> {
        let params = self.params();
        let steps = self.cfg.steps() + 1;
        let points: Vec<Point> = self.candidates.iter().map(|c| c.point).collect();
        let x = self.history.make_contiguous();
        points.into_iter().map(|p| point_forecast(p, x, steps, &params)).collect()
    }

    /// The band multiplier of candidate `i`: the buffer, or the conformal quantile of its scores
    /// (`None` until it has `band.min_scores`).
    fn factor(&self, i: usize) -> Option<f64> {
        if let Some(b) = self.cfg.model.default_buffer() {
            return Some(self.cfg.buffer.unwrap_or(b));
        }
        let c = &self.candidates[i];
        if c.peak_scores.len() < self.cfg.band.min_scores {
            return None;
        }
        let mut s: Vec<f64> = c.peak_scores.iter().copied().collect();
        s.sort_by(f64::total_cmp);
        Some(upper_quantile(&s, 1.0 - self.alpha).exp().max(self.cfg.band.min_factor))
    }

    fn safe_factor(&self) -> f64 {
        let fb = &self.cfg.fallback;
        let mut f = fb.safe_buffer;
        if self.safe_scores.len() >= self.cfg.band.min_scores {
            let mut s: Vec<f64> = self.safe_scores.iter().copied().collect();
            s.sort_by(f64::total_cmp);
            f = f.max(upper_quantile(&s, fb.safe_coverage).exp());
        }
        f
    }

    fn safe_base(&self, active_peak: f64) -> f64 {
        let look = self.cfg.buckets(self.cfg.fallback.safe_lookback_s).max(1);
        let recent = self.history.iter().rev().take(look).copied().fold(0.0, f64::max);
        recent.max(active_peak)
    }

    /// Whether the safe model decides now.
    fn use_safe(&self) -> bool {
        (self.cfg.fallback.enabled && self.degraded) || self.factor(self.active).is_none()
    }

    /// The candidate to use: the active one if it applies now, else the first that does (the
    /// first candidate, a trend model, always applies).
    fn usable(&self, grids: &[Option<Vec<f64>>]) -> usize {
        if grids[self.active].is_some() {
            self.active
        } else {
            grids.iter().position(Option::is_some).unwrap_or(0)
        }
    }

    /// A shadow forecast from the next bucket.
    fn shadow(&mut self) -> Pending {
        let grids = self.grids();
        let per = self.cfg.steps_per_bin();
        let nb = self.cfg.bins();
        let bins: Vec<Option<Vec<f64>>> =
            grids.iter().map(|g| g.as_ref().map(|g| bin_means(&g[..nb * per], per))).collect();
        let active = self.usable(&grids);
        let active_peak = bins[active].as_deref().map_or(0.0, peak);
        let primary = self.factor(active).map(|f| active_peak * f);
        let safe_base = self.safe_base(active_peak);
        let safe_decision = safe_base * self.safe_factor();
        let issued = match primary {
            Some(d) if !(self.cfg.fallback.enabled && self.degraded) => d,
            _ => safe_decision,
        };
        Pending { origin: self.next_bucket(), bins, active, primary, safe_base, safe_decision, issued }
    }

    /// Scores every pending shadow forecast whose horizon is now complete.
    fn mature(&mut self) {
        let steps = self.cfg.steps() as i64;
        let per = self.cfg.steps_per_bin();
        while let Some(p) = self.pending.front() {
            if p.origin + steps > self.next_bucket() {
                break;
            }
            let p = self.pending.pop_front().expect("front exists");
            let start = p.origin - self.first_bucket;
            if start < 0 {
                continue; // history was reset or trimmed under it
            }
            let real: Vec<f64> = (0..steps).map(|k| self.history[(start + k) as usize]).collect::<Vec<f64>>();
            let real_bins = bin_means(&real, per);
            let real_peak = peak(&real_bins);
            if real_peak <= 0.0 {
                continue;
            }
            self.score(&p, &real_bins, real_peak);
        }
    }

    fn score(&mut self, p: &Pending, real_bins: &[f64], real_peak: f64) {
        let band = self.cfg.band.clone();
        let fb = self.cfg.fallback.clone();
        for (c, bins) in self.candidates.iter_mut().zip(&p.bins) {
            let Some(bins) = bins else { continue };
            let pk = peak(bins);
            if pk > 0.0 {
                push_capped(&mut c.peak_scores, (real_peak / pk).ln(), band.window);
            }
            for (j, (&f, &r)) in bins.iter().zip(real_bins).enumerate() {
                if f > 0.0 && r > 0.0 {
                    push_capped(&mut c.bin_scores[j], (r / f).ln(), band.interval_window);
                }
            }
        }
        // ACI on the decisions the model issued (or would have, while the fallback decided).
        if let Some(d) = p.primary
            && band.aci_gamma > 0.0
        {
            let err = if real_peak > d { 1.0 } else { 0.0 };
            self.alpha = (self.alpha + band.aci_gamma * ((1.0 - band.coverage) - err)).clamp(0.001, 0.5);
        }
        if p.safe_base > 0.0 {
            push_capped(&mut self.safe_scores, (real_peak / p.safe_base).ln(), band.window);
        }
        // Accuracy of what was issued.
        let active_bins = p.bins[p.active].as_deref().unwrap_or(&[]);
        let abs_err: f64 = active_bins.iter().zip(real_bins).map(|(f, r)| (f - r).abs()).sum();
        let actual: f64 = real_bins.iter().sum();
        let k = &mut self.counters;
        k.matured += 1;
        k.abs_err += abs_err;
        k.actual += actual;
        if real_peak > p.issued {
            k.under += 1;
        }
        k.overprov_sum += p.issued / real_peak - 1.0;
        // Monitor the active model (its own decision, even while degraded).
        if let Some(d) = p.primary {
            push_capped(&mut self.monitor, (real_peak > d, abs_err, actual), fb.window);
        }
        self.update_state();
    }

    /// Expected over-provision of candidate `i` if its current band had been used over its
    /// calibration window: mean of `exp(q − score) − 1` (`None` with too few scores).
    fn sharpness(&self, i: usize) -> Option<f64> {
        let c = &self.candidates[i];
        if c.peak_scores.len() < self.cfg.band.select_min_scores.max(self.cfg.band.min_scores) {
            return None;
        }
        let q = self.factor(i)?.ln();
        Some(c.peak_scores.iter().map(|s| (q - s).exp() - 1.0).sum::<f64>() / c.peak_scores.len() as f64)
    }

    /// Chooses the active candidate and decides on the fallback.
    fn update_state(&mut self) {
        let fb = self.cfg.fallback.clone();
        if self.candidates.len() > 1 {
            let sharp: Vec<Option<f64>> = (0..self.candidates.len()).map(|i| self.sharpness(i)).collect();
            let cur = sharp[self.active];
            let best = (0..sharp.len())
                .filter_map(|i| sharp[i].map(|v| (i, v)))
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            if let Some((i, v)) = best
                && i != self.active
                && cur.is_none_or(|c| v < c - self.cfg.band.select_margin)
            {
                self.active = i;
            }
        }
        if !fb.enabled || self.monitor.len() < fb.min_matured {
            return;
        }
        let n = self.monitor.len() as f64;
        let miss = self.monitor.iter().filter(|m| m.0).count() as f64 / n;
        let (e, a) = self.monitor.iter().fold((0.0, 0.0), |(e, a), m| (e + m.1, a + m.2));
        let wape = if a > 0.0 { e / a } else { 0.0 };
        if !self.degraded && (miss > fb.degrade_miss_rate || wape > fb.degrade_wape) {
            self.degraded = true;
            self.counters.fallbacks += 1;
        } else if self.degraded && miss <= fb.recover_miss_rate && wape <= fb.degrade_wape {
            self.degraded = false;
        }
    }

    /// Forecast of the next `horizon_s` from `now_s`, using only samples before `now_s`.
    /// `None` until `horizon_s` of history, or when the newest sample is older than `max_gap_s`.
    pub fn forecast(&mut self, now_s: i64) -> Option<Forecast> {
        let step = self.cfg.step_s as i64;
        let now_bucket = now_s.div_euclid(step);
        self.close_until(now_bucket);
        if self.history.len() < self.cfg.steps() {
            return None;
        }
        let gap = now_bucket - self.next_bucket();
        if gap * step > self.cfg.max_gap_s as i64 {
            return None;
        }
        let steps = self.cfg.steps();
        let per = self.cfg.steps_per_bin();
        // Grid buckets from next_bucket; the forecast's steps start `offset` seconds later.
        let grids = self.grids();
        let active = self.usable(&grids);
        let offset = (now_s - self.next_bucket() * step).max(0) as f64;
        let shift = (offset / step as f64).floor() as usize;
        let frac = offset / step as f64 - shift as f64;
        let grid = grids[active].as_ref().expect("usable candidate has a forecast");
        let at = |k: usize| grid[(k + shift).min(grid.len() - 1)];
        let mean: Vec<f64> = (0..steps).map(|i| (1.0 - frac) * at(i) + frac * at(i + 1)).collect();
        let bins = bin_means(&mean, per);
        let peak_mean = peak(&bins);
        let factor = self.factor(active);
        let safe = (self.cfg.fallback.enabled && self.degraded) || factor.is_none();
        let decision_peak = match factor {
            Some(f) if !safe => peak_mean * f,
            _ => self.safe_base(peak_mean) * self.safe_factor(),
        };
        let (lower, upper) = self.intervals(active, &mean, decision_peak / peak_mean.max(f64::MIN_POSITIVE));
        Some(Forecast {
            origin_s: now_s,
            step_s: self.cfg.step_s,
            mean,
            lower,
            upper,
            decision_peak,
            peak_mean,
            model: if safe { "safe_fallback".to_string() } else { self.candidate_name(active) },
            degraded: safe,
        })
    }

    fn candidate_name(&self, i: usize) -> String {
        if self.candidates.len() > 1 {
            let part = match self.candidates[i].point {
                Point::SeasonalAdjusted | Point::Seasonal => "seasonal",
                Point::Quadratic => "parabola",
                Point::Holt => "holt",
                Point::Naive => "naive",
            };
            format!("{}/{}", self.cfg.model.name(), part)
        } else {
            self.cfg.model.name().to_string()
        }
    }

    /// Per-step intervals from the per-bin conformal scores of the active candidate (before there
    /// are enough, ± the decision factor).
    fn intervals(&self, active: usize, mean: &[f64], fallback_factor: f64) -> (Vec<f64>, Vec<f64>) {
        let per = self.cfg.steps_per_bin();
        let c = &self.candidates[active];
        let cov = self.cfg.band.interval_coverage;
        let ff = fallback_factor.max(1.0);
        let mut lower = Vec::with_capacity(mean.len());
        let mut upper = Vec::with_capacity(mean.len());
        let mut cache: Vec<Option<(f64, f64)>> = vec![None; c.bin_scores.len()];
        for (i, &m) in mean.iter().enumerate() {
            let j = (i / per).min(c.bin_scores.len() - 1);
            let (lo, hi) = *cache[j].get_or_insert_with(|| {
                let sc = &c.bin_scores[j];
                if sc.len() < self.cfg.band.min_scores {
                    return (1.0 / ff, ff);
                }
                let mut s: Vec<f64> = sc.iter().copied().collect();
                s.sort_by(f64::total_cmp);
                let lo = lower_quantile(&s, (1.0 - cov) / 2.0).min(0.0).exp();
                let hi = upper_quantile(&s, (1.0 + cov) / 2.0).max(0.0).exp();
                (lo, hi)
            });
            lower.push(m * lo);
            upper.push(m * hi);
        }
        (lower, upper)
    }

    /// Online accuracy and state.
    pub fn accuracy(&self) -> AccuracyStats {
        let k = &self.counters;
        let n = self.monitor.len() as f64;
        let (e, a) = self.monitor.iter().fold((0.0, 0.0), |(e, a), m| (e + m.1, a + m.2));
        AccuracyStats {
            active_model: if self.use_safe() {
                "safe_fallback".to_string()
            } else {
                self.candidate_name(self.active)
            },
            degraded: self.use_safe(),
            matured: k.matured,
            wape: if k.actual > 0.0 { k.abs_err / k.actual } else { 0.0 },
            recent_wape: if a > 0.0 { e / a } else { 0.0 },
            coverage: if k.matured > 0 { 1.0 - k.under as f64 / k.matured as f64 } else { 0.0 },
            under_forecasts: k.under,
            recent_miss_rate: if n > 0.0 {
                self.monitor.iter().filter(|m| m.0).count() as f64 / n
            } else {
                0.0
            },
            mean_overprovision: if k.matured > 0 { k.overprov_sum / k.matured as f64 } else { 0.0 },
            fallbacks: k.fallbacks,
            rejected_samples: k.rejected,
            out_of_order_samples: k.out_of_order,
            filled_buckets: k.filled,
            history_resets: k.resets,
            season_s: self.period.map(|p| (p as u32).saturating_mul(self.cfg.step_s)),
            band_factor: self.factor(self.active),
        }
    }

    /// Number of complete step means held (for tests and diagnostics).
    pub fn history_len(&self) -> usize {
        self.history.len()
    }
}

fn push_capped<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    q.push_back(v);
    while q.len() > cap {
        q.pop_front();
    }
}

fn bin_means(x: &[f64], per: usize) -> Vec<f64> {
    x.chunks(per).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect()
}

fn peak(x: &[f64]) -> f64 {
    x.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// The conformal upper quantile: the ⌈(n+1)·level⌉-th smallest of `sorted` (clamped to n).
fn upper_quantile(sorted: &[f64], level: f64) -> f64 {
    let n = sorted.len();
    let k = ((n as f64 + 1.0) * level).ceil() as usize;
    sorted[k.clamp(1, n) - 1]
}

/// The conformal lower quantile: the ⌊(n+1)·level⌋-th smallest of `sorted` (clamped to 1).
fn lower_quantile(sorted: &[f64], level: f64) -> f64 {
    let n = sorted.len();
    let k = ((n as f64 + 1.0) * level).floor() as usize;
    sorted[k.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests;
