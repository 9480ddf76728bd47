//! Calibration on upstream's measurements: loading the profile files and the static baseline's
//! series, fitting the parameters, and evaluating them on profiles the fit did not see.
//!
//! What is fitted from what (per workload):
//! - profiles (config, offered rate → throughput, p95, recovery time):
//!   `rate_scale` (healthy throughput ÷ offered), the capacity model (a censored fit: a
//!   bottlenecked run's throughput is its capacity, a healthy run's offered rate a lower bound),
//!   the latency's queueing term, and the recovery model's catch-up factor and detector delay;
//! - the static baseline's series (first half only, so that the second half stays unseen):
//!   the healthy p95, the source lag (fetch delay), CPU per TaskManager versus throughput, the
//!   restart time after a failure and how fast the latency metric falls afterwards.
//!
//! [`evaluate`] replays each profile row in the simulator with upstream's protocol (deploy, read
//! from the latest offset, average the last 60 s of 180 s, inject the failure 5 s before a
//! checkpoint, measure recovery) and compares.

use crate::engine::{self, SimOptions};
use crate::model;
use crate::params::{CapacityParams, ParamsError, Provenance, SimParams, WorkloadParams};
use crate::strategy::{Command, ProfileOutcome, StepContext, Strategy};
use crate::trace::Trace;
use demeter_common::JobConfig;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// p95 latency at or above which a run counts as bottlenecked.
pub const BOTTLENECK_MS: f64 = 5_000.0;
/// The static baseline's series are fitted on their first half.
pub const STATIC_FIT_UNTIL_S: u64 = 32_400;

/// Why calibration input could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: missing column `{column}` (upstream's profile format with `offeredRate` is expected)")]
    MissingColumn { path: String, column: &'static str },
    #[error("{path}:{line}: {reason}")]
    Line { path: String, line: u64, reason: String },
    #[error("no profile rows for workload `{0}`")]
    NoRows(String),
    #[error(transparent)]
    Params(#[from] ParamsError),
    #[error(transparent)]
    Sim(#[from] engine::SimError),
}

/// One profiling run as upstream recorded it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfileRow {
    /// Lower-case workload (`genType`).
    pub workload: String,
    pub file: String,
    pub line: u64,
    pub config: JobConfig,
    /// `avgThr`, records/s.
    pub throughput: f64,
    /// `avgLat`, p95 ms.
    pub latency_ms: f64,
    /// `recTime`; None when upstream recorded −1 (not measured).
    pub recovery_s: Option<f64>,
    /// `offeredRate`: generators × mean trace value over the run.
    pub offered_rate: f64,
    pub start_ts: i64,
}

impl ProfileRow {
    pub fn bottlenecked(&self) -> bool {
        self.latency_ms >= BOTTLENECK_MS
    }
}

const PROFILE_COLUMNS: [&str; 11] = [
    "genType",
    "scaleOut",
    "chkInt",
    "cpuVal",
    "memVal",
    "taskSlots",
    "avgThr",
    "avgLat",
    "recTime",
    "startTs",
    "offeredRate",
];

/// Loads one profile file (`expId,genType,jobName,scaleOut,chkInt,cpuVal,memVal,taskSlots,
/// avgThr,avgLat,recTime,startTs,stopTs,offeredRate`). Errors name the file, line and column.
pub fn load_profiles(path: &Path) -> Result<Vec<ProfileRow>, CalibrateError> {
    let p = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| CalibrateError::Io { path: p.clone(), source })?;
    parse_profiles(&text, &p)
}

/// Parses the text of a profile file (`path` only names it in errors).
pub fn parse_profiles(text: &str, path: &str) -> Result<Vec<ProfileRow>, CalibrateError> {
    let mut rdr =
        csv::ReaderBuilder::new().has_headers(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = rdr
        .headers()
        .map_err(|e| CalibrateError::Line { path: path.to_string(), line: 1, reason: e.to_string() })?
        .clone();
    let mut idx = [0usize; PROFILE_COLUMNS.len()];
    for (i, c) in PROFILE_COLUMNS.iter().enumerate() {
        idx[i] = headers
            .iter()
            .position(|h| h == *c)
            .ok_or(CalibrateError::MissingColumn { path: path.to_string(), column: c })?;
    }
    let mut out = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| CalibrateError::Line {
            path: path.to_string(),
            line: e.position().map_or(0, |p| p.line()),
            reason: e.to_string(),
        })?;
        let line = rec.position().map_or(0, |p| p.line());
        let err = |reason: String| CalibrateError::Line { path: path.to_string(), line, reason };
        let field = |i: usize| rec.get(idx[i]).unwrap_or("");
        let num = |i: usize| -> Result<f64, CalibrateError> {
            let s = field(i);
            let v: f64 = s
                .parse()
                .map_err(|e| err(format!("column `{}`: bad number {s:?}: {e}", PROFILE_COLUMNS[i])))?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(err(format!("column `{}`: {v} is not finite", PROFILE_COLUMNS[i])))
            }
        };
        let positive = |i: usize| -> Result<f64, CalibrateError> {
            let v = num(i)?;
            if v > 0.0 {
                Ok(v)
            } else {
                Err(err(format!("column `{}`: {v} must be > 0", PROFILE_COLUMNS[i])))
            }
        };
        let workload = field(0).to_ascii_lowercase();
        if workload.is_empty() {
            return Err(err("column `genType` is empty".into()));
        }
        let config = JobConfig {
            parallelism: positive(1)? as u32,
            checkpoint_interval_ms: positive(2)? as u64,
            tm_cpu_milli: (positive(3)? * 1000.0).round() as u32,
            tm_memory_mb: positive(4)? as u32,
            task_slots: positive(5)? as u32,
        };
        let throughput = num(6)?;
        let latency_ms = num(7)?;
        if throughput < 0.0 || latency_ms < 0.0 {
            return Err(err(format!("negative throughput {throughput} or latency {latency_ms}")));
        }
        let rec_t = num(8)?;
        out.push(ProfileRow {
            workload,
            file: path.to_string(),
            line,
            config,
            throughput,
            latency_ms,
            recovery_s: (rec_t >= 0.0).then_some(rec_t),
            offered_rate: positive(10)?,
            start_ts: num(9)? as i64,
        });
    }
    Ok(out)
}

/// The static baseline's series of one workload, second by second from the first timestamp.
#[derive(Clone, Debug, Default)]
pub struct StaticSeries {
    pub workload: String,
    pub files: Vec<String>,
    pub throughput: Vec<Option<f64>>,
    pub latency_ms: Vec<Option<f64>>,
    /// Mean over source readers of `records-lag-max`.
    pub lag_per_reader: Vec<Option<f64>>,
    /// Mean over TaskManagers of the JVM CPU load (0..=1 of the TaskManager's one core).
    pub cpu_load: Vec<Option<f64>>,
}

fn load_pipe_series(path: &Path, start: Option<i64>) -> Result<(i64, Vec<Option<f64>>), CalibrateError> {
    let p = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| CalibrateError::Io { path: p.clone(), source })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.starts_with("timestamp")) {
            continue;
        }
        let err = |reason: String| CalibrateError::Line { path: p.clone(), line: i as u64 + 1, reason };
        let (a, b) =
            line.split_once('|').ok_or_else(|| err(format!("expected `timestamp|value`: {line:?}")))?;
        let ts: i64 = a.trim().parse().map_err(|e| err(format!("bad timestamp {a:?}: {e}")))?;
        let v: f64 = b.trim().parse().map_err(|e| err(format!("bad value {b:?}: {e}")))?;
        rows.push((ts, v));
    }
    let t0 = start.or_else(|| rows.iter().map(|r| r.0).min()).unwrap_or(0);
    let len = rows.iter().map(|r| r.0 - t0 + 1).max().unwrap_or(0).max(0) as usize;
    let mut out = vec![None; len];
    for (ts, v) in rows {
        let i = ts - t0;
        if i >= 0 && (i as usize) < len && v.is_finite() {
            out[i as usize] = Some(v);
        }
    }
    Ok((t0, out))
}

/// Loads `<W>_static24_{throughput,latency,consumer_lag,cpu_load}.csv` from `dir` if present.
pub fn load_static(dir: &Path, workload: &str) -> Result<Option<StaticSeries>, CalibrateError> {
    let up = workload.to_ascii_uppercase();
    let f = |m: &str| dir.join(format!("{up}_static24_{m}.csv"));
    let names = ["throughput", "latency", "consumer_lag", "cpu_load"];
    if !names.iter().all(|m| f(m).exists()) {
        return Ok(None);
    }
    let (t0, throughput) = load_pipe_series(&f("throughput"), None)?;
    let (_, latency_ms) = load_pipe_series(&f("latency"), Some(t0))?;
    let (_, lag_per_reader) = load_pipe_series(&f("consumer_lag"), Some(t0))?;
    let (_, cpu_load) = load_pipe_series(&f("cpu_load"), Some(t0))?;
    Ok(Some(StaticSeries {
        workload: workload.to_ascii_lowercase(),
        files: names.iter().map(|m| f(m).display().to_string()).collect(),
        throughput,
        latency_ms,
        lag_per_reader,
        cpu_load,
    }))
}

/// Finds the static series next to profile files (same directory, same workload).
pub fn discover_static(
    profile_files: &[PathBuf],
    workload: &str,
) -> Result<Option<StaticSeries>, CalibrateError> {
    let mut dirs: Vec<PathBuf> =
        profile_files.iter().map(|p| p.parent().map(Path::to_path_buf).unwrap_or_default()).collect();
    dirs.dedup();
    for d in dirs {
        if let Some(s) = load_static(&d, workload)? {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// Fitting.

/// Minimises `f` from `x0` with Nelder–Mead (deterministic).
pub fn nelder_mead(f: &mut dyn FnMut(&[f64]) -> f64, x0: &[f64], step: f64, iters: usize) -> (Vec<f64>, f64) {
    let n = x0.len();
    let mut pts: Vec<Vec<f64>> = vec![x0.to_vec()];
    for i in 0..n {
        let mut x = x0.to_vec();
        x[i] += step;
        pts.push(x);
    }
    let mut vals: Vec<f64> = pts.iter().map(|p| f(p)).collect();
    for _ in 0..iters {
        let mut order: Vec<usize> = (0..=n).collect();
        order.sort_by(|&a, &b| vals[a].total_cmp(&vals[b]));
        pts = order.iter().map(|&i| pts[i].clone()).collect();
        vals = order.iter().map(|&i| vals[i]).collect();
        if (vals[n] - vals[0]).abs() <= 1e-12 * (1.0 + vals[0].abs()) {
            break;
        }
        let c: Vec<f64> = (0..n).map(|j| pts[..n].iter().map(|p| p[j]).sum::<f64>() / n as f64).collect();
        let at = |s: f64| -> Vec<f64> { (0..n).map(|j| c[j] + s * (pts[n][j] - c[j])).collect() };
        let xr = at(-1.0);
        let fr = f(&xr);
        if fr < vals[0] {
            let xe = at(-2.0);
            let fe = f(&xe);
            if fe < fr {
                pts[n] = xe;
                vals[n] = fe;
            } else {
                pts[n] = xr;
                vals[n] = fr;
            }
        } else if fr < vals[n - 1] {
            pts[n] = xr;
            vals[n] = fr;
        } else {
            let xc = at(0.5);
            let fc = f(&xc);
            if fc < vals[n] {
                pts[n] = xc;
                vals[n] = fc;
            } else {
                for i in 1..=n {
                    let p: Vec<f64> = (0..n).map(|j| pts[0][j] + 0.5 * (pts[i][j] - pts[0][j])).collect();
                    vals[i] = f(&p);
                    pts[i] = p;
                }
            }
        }
    }
    let best = (0..=n).min_by(|&a, &b| vals[a].total_cmp(&vals[b])).unwrap_or(0);
    (pts[best].clone(), vals[best])
}

fn restarts(f: &mut dyn FnMut(&[f64]) -> f64, x0: &[f64], rounds: usize) -> (Vec<f64>, f64) {
    let mut x = x0.to_vec();
    let mut v = f64::INFINITY;
    for r in 0..rounds {
        let step = if r == 0 { 0.5 } else { 0.2 };
        let (nx, nv) = nelder_mead(f, &x, step, 3000);
        x = nx;
        v = nv;
    }
    (x, v)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z.clamp(-40.0, 40.0)).exp())
}

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) })
}

/// Capacity parameters from an unconstrained vector.
fn capacity_from(x: &[f64]) -> CapacityParams {
    CapacityParams {
        records_per_core_s: x[0].clamp(0.0, 25.0).exp(),
        parallelism_exponent: 0.5 + 0.8 * sigmoid(x[1]),
        slot_overhead_cores: 0.5 * sigmoid(x[2]),
        cpu_share_saturation: 0.25 + 15.75 * sigmoid(x[3]),
        memory_knee_mb: x[4].clamp(16f64.ln(), 4096f64.ln()).exp(),
        memory_penalty: sigmoid(x[5]),
        checkpoint_overhead_s: 30.0 * sigmoid(x[6]),
    }
}

fn capacity_to(c: &CapacityParams) -> Vec<f64> {
    vec![
        c.records_per_core_s.ln(),
        logit((c.parallelism_exponent - 0.5) / 0.8),
        logit(c.slot_overhead_cores / 0.5),
        logit((c.cpu_share_saturation - 0.25) / 15.75),
        c.memory_knee_mb.ln(),
        logit(c.memory_penalty),
        logit(c.checkpoint_overhead_s / 30.0),
    ]
}

/// Offered rate of a profile row as the job saw it.
fn row_rate(r: &ProfileRow, w: &WorkloadParams) -> f64 {
    r.offered_rate * w.rate_scale
}

/// Overload (offered ÷ capacity) at which a 60 s window after 120 s of running crosses 5 s.
const OVERLOAD_AT_THRESHOLD: f64 = 1.03;

fn capacity_loss(rows: &[ProfileRow], w: &WorkloadParams) -> f64 {
    let mut l = 0.0;
    for r in rows {
        let cap = model::capacity(&r.config, w).max(1e-9);
        let rate = row_rate(r, w);
        if r.bottlenecked() {
            let target = r.throughput.min(rate / OVERLOAD_AT_THRESHOLD).max(1.0);
            l += (cap.ln() - target.ln()).powi(2);
        } else {
            let d = rate.ln() - cap.ln();
            if d > 0.0 {
                l += 4.0 * d * d;
            }
        }
    }
    l / rows.len().max(1) as f64
}

fn recovery_mae_closed_form(rows: &[ProfileRow], params: &SimParams, w: &WorkloadParams) -> f64 {
    let mut s = 0.0;
    let mut n = 0.0;
    for r in rows {
        if let Some(m) = r.recovery_s {
            let p = model::recovery_s(&r.config, row_rate(r, w), &params.common, w);
            s += (p - m).abs();
            n += 1.0;
        }
    }
    if n > 0.0 { s / n } else { 0.0 }
}

/// One failure episode of the static series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Episode {
    /// First second without metrics (the job restarting).
    pub gap_start: u64,
    /// First second at or above 5 s after the gap (processing again, replaying).
    pub first_high: Option<u64>,
    /// Seconds at or above 5 s in the episode.
    pub seconds_over_5s: u64,
    /// Offered rate before the failure (mean throughput).
    pub rate: f64,
}

/// Finds the restarts (gaps of ≥ 5 s in the latency series) and what followed them.
pub fn failure_episodes(s: &StaticSeries, until_s: u64) -> Vec<Episode> {
    let lat = &s.latency_ms;
    let n = (until_s as usize).min(lat.len());
    let mut out: Vec<Episode> = Vec::new();
    let mut i = 0;
    while i < n {
        if lat[i].is_none() {
            let mut j = i;
            while j < lat.len() && lat[j].is_none() {
                j += 1;
            }
            if j - i >= 5 && out.last().is_none_or(|e| i as u64 > e.gap_start + 200) {
                let lo = i.saturating_sub(80);
                let hi = i.saturating_sub(25);
                let thr: Vec<f64> = s.throughput[lo..hi.max(lo)].iter().flatten().copied().collect();
                let rate = if thr.is_empty() { 0.0 } else { thr.iter().sum::<f64>() / thr.len() as f64 };
                let end = (i + 200).min(lat.len());
                let over = lat[i..end].iter().flatten().filter(|&&v| v >= BOTTLENECK_MS).count() as u64;
                let first_high =
                    (i..end).find(|&t| lat[t].is_some_and(|v| v >= BOTTLENECK_MS)).map(|t| t as u64);
                out.push(Episode { gap_start: i as u64, first_high, seconds_over_5s: over, rate });
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// Seconds at or above 5 s that the model predicts after a failure of the static job at `rate`.
fn predicted_seconds_over(
    rate: f64,
    cap: f64,
    common: &crate::params::CommonParams,
    w: &WorkloadParams,
) -> u64 {
    let k = 10.0;
    let outage = model::outage_s(common, w);
    let age0 = (k - common.failure_before_checkpoint_s) + outage;
    let speed = cap * w.recovery.catchup_factor / rate.max(1.0) - 1.0;
    let mut obs: Option<f64> = None;
    let mut n = 0;
    for tau in 0..600 {
        let age = if speed > 0.0 { (age0 - tau as f64 * speed).max(0.0) } else { age0 + tau as f64 * -speed };
        let target = w.latency.base_ms + 1000.0 * age;
        let o = match obs {
            None => target,
            Some(o) if target >= o => target,
            Some(o) => o + w.latency.decay_per_s * (target - o),
        };
        obs = Some(o);
        if o >= BOTTLENECK_MS {
            n += 1;
        } else if tau > 0 {
            break;
        }
    }
    n
}

/// In-sample figures of a fit, per workload.
#[derive(Clone, Debug, Serialize)]
pub struct FitSummary {
    pub workload: String,
    pub rows: usize,
    pub capacity_loss: f64,
    pub in_sample_recovery_mae_s: f64,
    pub static_episodes: usize,
}

/// The fitted parameters and what the fit saw.
#[derive(Clone, Debug)]
pub struct FitResult {
    pub params: SimParams,
    pub summaries: Vec<FitSummary>,
}

/// Fits every workload found in `rows` (and its static series, if given), starting from `base`
/// (its values are kept for workloads without rows and for what the inputs do not determine).
pub fn fit(
    rows: &[ProfileRow],
    statics: &[StaticSeries],
    base: &SimParams,
) -> Result<FitResult, CalibrateError> {
    let mut params = base.clone();
    let mut by_workload: BTreeMap<String, Vec<ProfileRow>> = BTreeMap::new();
    for r in rows {
        by_workload.entry(r.workload.clone()).or_default().push(r.clone());
    }
    let mut summaries = Vec::new();
    for (wname, wrows) in &by_workload {
        let start = match base.workloads.get(wname) {
            Some(w) => w.clone(),
            None => base
                .workloads
                .values()
                .next()
                .cloned()
                .ok_or_else(|| CalibrateError::NoRows(wname.clone()))?,
        };
        let st = statics.iter().find(|s| &s.workload == wname);
        let (w, summary) = fit_workload(wname, wrows, st, &params, start);
        params.workloads.insert(wname.clone(), w);
        summaries.push(summary);
    }
    params.validate()?;
    Ok(FitResult { params, summaries })
}

fn fit_workload(
    name: &str,
    rows: &[ProfileRow],
    st: Option<&StaticSeries>,
    params: &SimParams,
    mut w: WorkloadParams,
) -> (WorkloadParams, FitSummary) {
    // Generators' bias: a healthy run processes what is offered.
    let mut ratios: Vec<f64> = rows
        .iter()
        .filter(|r| !r.bottlenecked() && r.latency_ms < 2_000.0)
        .map(|r| r.throughput / r.offered_rate)
        .filter(|x| (0.8..1.3).contains(x))
        .collect();
    if let Some(m) = median(&mut ratios) {
        w.rate_scale = m;
    }

    // Capacity: censored least squares in log space, several starts.
    let starts = [
        CapacityParams {
            records_per_core_s: 8_000.0,
            parallelism_exponent: 1.0,
            slot_overhead_cores: 0.1,
            cpu_share_saturation: 2.0,
            memory_knee_mb: 300.0,
            memory_penalty: 0.5,
            checkpoint_overhead_s: 1.0,
        },
        CapacityParams {
            records_per_core_s: 20_000.0,
            parallelism_exponent: 0.85,
            slot_overhead_cores: 0.12,
            cpu_share_saturation: 8.0,
            memory_knee_mb: 200.0,
            memory_penalty: 0.9,
            checkpoint_overhead_s: 0.5,
        },
        w.capacity.clone(),
    ];
    let mut best: Option<(Vec<f64>, f64)> = None;
    for s in &starts {
        let mut wt = w.clone();
        let mut f = |x: &[f64]| {
            wt.capacity = capacity_from(x);
            capacity_loss(rows, &wt)
        };
        let (x, v) = restarts(&mut f, &capacity_to(s), 4);
        if best.as_ref().is_none_or(|b| v < b.1) {
            best = Some((x, v));
        }
    }
    let (bx, bv) = best.unwrap_or((capacity_to(&w.capacity), f64::INFINITY));
    w.capacity = capacity_from(&bx);

    // Static series: healthy latency, lag, CPU, restart time, metric decay (first half only).
    let mut episodes = Vec::new();
    if let Some(s) = st {
        fit_static(s, params, &mut w, &mut episodes);
    } else {
        let mut lats: Vec<f64> =
            rows.iter().filter(|r| r.latency_ms < 2_000.0).map(|r| r.latency_ms).collect();
        if let Some(m) = median(&mut lats) {
            w.latency.base_ms = m;
        }
    }

    // Queueing term from healthy profiles, relative to their own healthy level.
    let mut healthy: Vec<f64> =
        rows.iter().filter(|r| r.latency_ms < 2_000.0).map(|r| r.latency_ms).collect();
    if let Some(l0) = median(&mut healthy) {
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for r in rows.iter().filter(|r| !r.bottlenecked()) {
            let u = (row_rate(r, &w) / model::capacity(&r.config, &w)).min(0.99);
            let x = u / (1.0 - u);
            sxy += x * (r.latency_ms - l0);
            sxx += x * x;
        }
        if sxx > 0.0 {
            w.latency.queueing_ms = (sxy / sxx).clamp(1.0, 500.0);
        }
    }

    // Recovery: detector delay and catch-up factor with the outage fixed by the static series.
    let mut f = |x: &[f64]| {
        let mut wt = w.clone();
        wt.recovery.detector_margin_s = x[0].clamp(0.0, 300.0);
        wt.recovery.catchup_factor = 1.0 + x[1].clamp(0.0, 4.0);
        recovery_mae_closed_form(rows, params, &wt)
    };
    let (rx, rv) = restarts(&mut f, &[w.recovery.detector_margin_s, w.recovery.catchup_factor - 1.0], 4);
    w.recovery.detector_margin_s = rx[0].clamp(0.0, 300.0);
    w.recovery.catchup_factor = 1.0 + rx[1].clamp(0.0, 4.0);

    // The latency metric's decay after a restart, now that capacity and catch-up are known.
    if !episodes.is_empty() {
        let cap = model::capacity(&JobConfig::STATIC_DEFAULT, &w);
        let mut best = (f64::INFINITY, w.latency.decay_per_s);
        for i in 1..=100 {
            let a = i as f64 / 100.0;
            let mut wt = w.clone();
            wt.latency.decay_per_s = a;
            let err: f64 = episodes
                .iter()
                .map(|e| {
                    let p = predicted_seconds_over(e.rate, cap, &params.common, &wt);
                    (p as f64 - e.seconds_over_5s as f64).powi(2)
                })
                .sum();
            if err < best.0 {
                best = (err, a);
            }
        }
        w.latency.decay_per_s = best.1;
    }

    let mut files: Vec<String> = rows.iter().map(|r| r.file.clone()).collect();
    files.sort();
    files.dedup();
    w.provenance = Provenance {
        profile_files: files,
        profile_rows: rows.len(),
        static_files: st.map(|s| s.files.clone()).unwrap_or_default(),
        static_fit_until_s: if st.is_some() { STATIC_FIT_UNTIL_S } else { 0 },
    };
    let summary = FitSummary {
        workload: name.to_string(),
        rows: rows.len(),
        capacity_loss: bv,
        in_sample_recovery_mae_s: rv,
        static_episodes: episodes.len(),
    };
    (w, summary)
}

/// Solves a 3×3 linear system by Gaussian elimination with partial pivoting.
fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for i in 0..3 {
        let piv = (i..3).max_by(|&x, &y| a[x][i].abs().total_cmp(&a[y][i].abs()))?;
        a.swap(i, piv);
        b.swap(i, piv);
        if a[i][i].abs() < 1e-12 {
            return None;
        }
        let (row, bi) = (a[i], b[i]);
        for k in 0..3 {
            if k != i {
                let f = a[k][i] / row[i];
                for (x, r) in a[k].iter_mut().zip(row).skip(i) {
                    *x -= f * r;
                }
                b[k] -= f * bi;
            }
        }
    }
    Some([b[0] / a[0][0], b[1] / a[1][1], b[2] / a[2][2]])
}

fn fit_static(s: &StaticSeries, params: &SimParams, w: &mut WorkloadParams, episodes: &mut Vec<Episode>) {
    let until = STATIC_FIT_UNTIL_S as usize;
    let n = until.min(s.throughput.len());
    let eps = failure_episodes(s, STATIC_FIT_UNTIL_S);
    // Seconds near a failure are not "healthy".
    let near =
        |t: usize| eps.iter().any(|e| t + 120 >= e.gap_start as usize && t <= e.gap_start as usize + 200);
    let tms = JobConfig::STATIC_DEFAULT.taskmanagers() as f64;
    let mut lats = Vec::new();
    let mut lagdelay = Vec::new();
    // CPU load per TaskManager = idle + records/s per TM ÷ rate + growth per TM × age (least squares).
    let mut a = [[0.0f64; 3]; 3];
    let mut b = [0.0f64; 3];
    let mut cpu_n = 0usize;
    for t in 0..n {
        if near(t) {
            continue;
        }
        let (Some(thr), Some(lat)) = (s.throughput[t], s.latency_ms[t]) else { continue };
        if !(lat > 0.0 && lat < 2_000.0 && thr > 0.0) {
            continue;
        }
        lats.push(lat);
        if let Some(lag) = s.lag_per_reader.get(t).copied().flatten() {
            lagdelay.push(lag * tms / thr);
        }
        if let Some(cpu) = s.cpu_load.get(t).copied().flatten() {
            let x = [1.0, thr / tms, t as f64 / 3600.0];
            for i in 0..3 {
                for j in 0..3 {
                    a[i][j] += x[i] * x[j];
                }
                b[i] += x[i] * cpu;
            }
            cpu_n += 1;
        }
    }
    if let Some(m) = median(&mut lats) {
        w.latency.base_ms = m;
    }
    if let Some(m) = median(&mut lagdelay) {
        w.fetch_delay_s = m.clamp(0.0, 10.0);
    }
    if cpu_n > 10
        && let Some([idle, slope, growth]) = solve3(a, b)
        && slope > 0.0
    {
        w.cpu.records_per_core_s = 1.0 / slope;
        w.cpu.idle_cores_per_tm = idle.clamp(0.0, 1.0);
        w.cpu.state_growth_cores_per_h = (growth * tms).max(0.0);
    }
    // Restart: from the start of the metric gap (detection) to the first replayed record's
    // latency reading.
    let mut restarts: Vec<f64> = eps
        .iter()
        .filter_map(|e| e.first_high.map(|h| (h - e.gap_start) as f64))
        .filter(|&d| d < 120.0)
        .collect();
    if let Some(m) = median(&mut restarts) {
        w.recovery.restart_s = m;
    }
    let _ = params;
    episodes.extend(eps);
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

/// One profiling row replayed in the simulator.
#[derive(Clone, Debug, Serialize)]
pub struct RowPrediction {
    pub line: u64,
    pub config: JobConfig,
    pub offered_rate: f64,
    pub measured_throughput: f64,
    pub simulated_throughput: f64,
    pub measured_latency_ms: f64,
    pub simulated_latency_ms: f64,
    pub measured_recovery_s: Option<f64>,
    pub simulated_recovery_s: Option<f64>,
}

/// How well the parameters predict profiles.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub workload: String,
    pub rows: usize,
    /// Share of rows whose bottlenecked/healthy class (p95 ≥ 5 s) the simulator gets right.
    pub bottleneck_accuracy: f64,
    /// Mean |simulated − measured| ÷ measured throughput.
    pub throughput_mape: f64,
    /// Mean |simulated − measured| recovery time over rows with a measurement (both censored at
    /// the censoring bound).
    pub recovery_mae_s: f64,
    pub recovery_rows: usize,
    /// Share of rows with a measurement whose censoring (never recovered) is predicted right.
    pub recovery_censoring_accuracy: f64,
    pub true_bottlenecked: usize,
    pub true_healthy: usize,
    pub false_bottlenecked: usize,
    pub false_healthy: usize,
    pub predictions: Vec<RowPrediction>,
}

/// Starts one profiling run with upstream's protocol at the first step and keeps its outcome.
#[derive(Debug)]
struct ProfileOnce {
    config: JobConfig,
    measure_after_s: u32,
    started: bool,
    outcome: Option<ProfileOutcome>,
}

impl Strategy for ProfileOnce {
    fn name(&self) -> &str {
        "profile"
    }
    fn initial_config(&self) -> JobConfig {
        JobConfig::STATIC_DEFAULT
    }
    fn step(&mut self, ctx: &mut StepContext<'_>) {
        if !self.started {
            self.started = true;
            ctx.commands.push(Command::StartProfile {
                id: 1,
                config: self.config,
                duration_s: self.measure_after_s,
                inject_failure_after_s: Some(self.measure_after_s),
            });
        }
        if let Some(o) = ctx.profile_outcomes.first() {
            self.outcome = Some(o.clone());
        }
    }
}

/// Replays one profile row: the row's offered rate with the generators' noise, upstream's
/// protocol. Returns (throughput, p95, recovery).
pub fn simulate_profile(
    row: &ProfileRow,
    params: &SimParams,
    seed: u64,
) -> Result<(f64, f64, Option<f64>), CalibrateError> {
    let c = &params.common;
    let len = c.profile_measure_after_s as usize + c.recovery_censor_s as usize + 120;
    let per_gen = row.offered_rate / c.generators.max(1) as f64;
    let trace = Trace::constant(&row.workload, per_gen, len);
    let opts = SimOptions {
        params: params.clone(),
        seed,
        workload: Some(row.workload.clone()),
        record_series: false,
        failures: false,
        ..SimOptions::default()
    };
    let prepared = engine::prepare(&trace, &opts)?;
    let mut s = ProfileOnce {
        config: row.config,
        measure_after_s: c.profile_measure_after_s,
        started: false,
        outcome: None,
    };
    engine::run_one(&prepared, &mut s, &mut |_, _| {});
    Ok(match s.outcome {
        Some(o) => (o.sample.throughput, o.sample.p95_latency_ms, o.sample.recovery.map(|r| r.seconds())),
        None => (0.0, 0.0, None),
    })
}

/// Evaluates `params` on profile rows (all of one workload).
pub fn evaluate(params: &SimParams, rows: &[ProfileRow]) -> Result<EvalReport, CalibrateError> {
    let workload = rows.first().map(|r| r.workload.clone()).unwrap_or_default();
    if rows.is_empty() {
        return Err(CalibrateError::NoRows(workload));
    }
    params.workload(&workload)?;
    let censor = params.common.recovery_censor_s;
    let mut preds = Vec::with_capacity(rows.len());
    let (mut tb, mut th, mut fb, mut fh) = (0, 0, 0, 0);
    let mut ape = 0.0;
    let (mut rec_err, mut rec_n, mut cens_ok) = (0.0, 0usize, 0usize);
    for (i, r) in rows.iter().enumerate() {
        let (thr, lat, rec) = simulate_profile(r, params, 1000 + i as u64)?;
        let sim_b = lat >= BOTTLENECK_MS;
        match (sim_b, r.bottlenecked()) {
            (true, true) => tb += 1,
            (false, false) => th += 1,
            (true, false) => fb += 1,
            (false, true) => fh += 1,
        }
        ape += (thr - r.throughput).abs() / r.throughput.max(1.0);
        if let Some(m) = r.recovery_s {
            let p = rec.unwrap_or(censor).min(censor);
            rec_err += (p - m.min(censor)).abs();
            rec_n += 1;
            if (p >= censor) == (m >= censor) {
                cens_ok += 1;
            }
        }
        preds.push(RowPrediction {
            line: r.line,
            config: r.config,
            offered_rate: r.offered_rate,
            measured_throughput: r.throughput,
            simulated_throughput: thr,
            measured_latency_ms: r.latency_ms,
            simulated_latency_ms: lat,
            measured_recovery_s: r.recovery_s,
            simulated_recovery_s: rec,
        });
    }
    let n = rows.len();
    Ok(EvalReport {
        workload,
        rows: n,
        bottleneck_accuracy: (tb + th) as f64 / n as f64,
        throughput_mape: ape / n as f64,
        recovery_mae_s: if rec_n > 0 { rec_err / rec_n as f64 } else { 0.0 },
        recovery_rows: rec_n,
        recovery_censoring_accuracy: if rec_n > 0 { cens_ok as f64 / rec_n as f64 } else { 0.0 },
        true_bottlenecked: tb,
        true_healthy: th,
        false_bottlenecked: fb,
        false_healthy: fh,
        predictions: preds,
    })
}

// ---------------------------------------------------------------------------------------------
// The static baseline check.

/// Latency figures of one 18 h series, over the seconds with a value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencyFigures {
    pub mean_p95_latency_ms: f64,
    pub pct_seconds_latency_over_5s: f64,
    pub seconds: u64,
}

fn latency_figures<'a>(it: impl Iterator<Item = &'a Option<f64>>) -> LatencyFigures {
    let (mut s, mut n, mut over) = (0.0, 0u64, 0u64);
    for v in it.flatten() {
        s += v;
        n += 1;
        if *v >= BOTTLENECK_MS {
            over += 1;
        }
    }
    LatencyFigures {
        mean_p95_latency_ms: if n > 0 { s / n as f64 } else { 0.0 },
        pct_seconds_latency_over_5s: if n > 0 { 100.0 * over as f64 / n as f64 } else { 0.0 },
        seconds: n,
    }
}

/// The simulated `static` strategy against the measured static baseline.
#[derive(Clone, Debug, Serialize)]
pub struct StaticCheck {
    pub workload: String,
    pub measured: LatencyFigures,
    pub simulated: LatencyFigures,
    /// The second half only (not used by the fit).
    pub measured_second_half: LatencyFigures,
    pub simulated_second_half: LatencyFigures,
    pub measured_mean_throughput: f64,
    pub simulated_mean_throughput: f64,
    pub measured_mean_lag_per_reader: f64,
    pub simulated_mean_lag_per_subtask: f64,
    pub measured_mean_cpu_load: f64,
    pub simulated_mean_cpu_load: f64,
    /// Mean p95 within 30 % and seconds over 5 s within 1 percentage point.
    pub passes: bool,
}

/// Runs the `static` strategy on `trace` and compares with the measured series.
pub fn static_check(
    params: &SimParams,
    trace: &Trace,
    measured: &StaticSeries,
    seed: u64,
) -> Result<StaticCheck, CalibrateError> {
    let opts = SimOptions { params: params.clone(), seed, record_series: true, ..SimOptions::default() };
    let prepared = engine::prepare(trace, &opts)?;
    let mut s = crate::strategies::StaticStrategy::new();
    let run = engine::run_one(&prepared, &mut s, &mut |_, _| {});
    let half = STATIC_FIT_UNTIL_S as usize;
    let sim_lat: Vec<Option<f64>> = run.series.iter().map(|r| r.p95_latency_ms).collect();
    let mean = |v: &[Option<f64>]| {
        let x: Vec<f64> = v.iter().flatten().copied().collect();
        if x.is_empty() { 0.0 } else { x.iter().sum::<f64>() / x.len() as f64 }
    };
    let measured_f = latency_figures(measured.latency_ms.iter());
    let simulated_f = latency_figures(sim_lat.iter());
    let tms = JobConfig::STATIC_DEFAULT.taskmanagers() as f64;
    let cpu_sim: Vec<Option<f64>> = run.series.iter().map(|r| Some(r.cpu_used / tms)).collect();
    let passes = (simulated_f.mean_p95_latency_ms / measured_f.mean_p95_latency_ms - 1.0).abs() <= 0.30
        && (simulated_f.pct_seconds_latency_over_5s - measured_f.pct_seconds_latency_over_5s).abs() <= 1.0;
    Ok(StaticCheck {
        workload: measured.workload.clone(),
        measured: measured_f,
        simulated: simulated_f,
        measured_second_half: latency_figures(measured.latency_ms.iter().skip(half)),
        simulated_second_half: latency_figures(sim_lat.iter().skip(half)),
        measured_mean_throughput: mean(&measured.throughput),
        simulated_mean_throughput: run.series.iter().map(|r| r.throughput).sum::<f64>()
            / run.series.len().max(1) as f64,
        measured_mean_lag_per_reader: mean(&measured.lag_per_reader),
        simulated_mean_lag_per_subtask: run.summary.mean_lag_per_subtask,
        measured_mean_cpu_load: mean(&measured.cpu_load),
        simulated_mean_cpu_load: mean(&cpu_sim),
        passes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "expId,genType,jobName,scaleOut,chkInt,cpuVal,memVal,taskSlots,avgThr,avgLat,recTime,startTs,stopTs,offeredRate\n";

    #[test]
    fn profile_loader_reads_upstream_rows_and_names_bad_lines() {
        let ok = format!(
            "{HEADER}1,CARS,profile3,16,90000,1,3072,2,34121.4,1036.7,159,1697006121,1697006181,31921.9\n1,CARS,p,8,90000,1,1024,4,9801.9,82287.4,-1,1,2,31921.9\n"
        );
        let rows = parse_profiles(&ok, "x.csv").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].workload, "cars");
        assert_eq!(
            rows[0].config,
            JobConfig {
                parallelism: 16,
                task_slots: 2,
                tm_cpu_milli: 1000,
                tm_memory_mb: 3072,
                checkpoint_interval_ms: 90_000
            }
        );
        assert_eq!(rows[0].recovery_s, Some(159.0));
        assert_eq!(rows[1].recovery_s, None);
        assert!(rows[1].bottlenecked() && !rows[0].bottlenecked());

        let bad = format!("{HEADER}1,CARS,p,16,90000,1,3072,2,abc,1036.7,159,1,2,31921.9\n");
        let e = parse_profiles(&bad, "x.csv").unwrap_err().to_string();
        assert!(e.starts_with("x.csv:2: column `avgThr`: bad number \"abc\""), "{e}");
        let zero = format!("{HEADER}1,CARS,p,0,90000,1,3072,2,1,1,1,1,2,3\n");
        assert!(parse_profiles(&zero, "x.csv").unwrap_err().to_string().contains("`scaleOut`"));
        let missing = "expId,genType,scaleOut\n1,CARS,4\n";
        let e = parse_profiles(missing, "m.csv").unwrap_err().to_string();
        assert!(e.contains("missing column `chkInt`"), "{e}");
    }

    #[test]
    fn nelder_mead_finds_a_quadratic_minimum() {
        let mut f = |x: &[f64]| (x[0] - 3.0).powi(2) + 10.0 * (x[1] + 1.0).powi(2);
        let (x, v) = nelder_mead(&mut f, &[0.0, 0.0], 0.5, 2000);
        assert!(v < 1e-8 && (x[0] - 3.0).abs() < 1e-3 && (x[1] + 1.0).abs() < 1e-3, "{x:?} {v}");
    }

    #[test]
    fn capacity_transform_round_trips() {
        let c = SimParams::default().workload("ads").unwrap().capacity.clone();
        let back = capacity_from(&capacity_to(&c));
        assert!((back.records_per_core_s / c.records_per_core_s - 1.0).abs() < 1e-6);
        assert!((back.parallelism_exponent - c.parallelism_exponent).abs() < 1e-6);
    }
}

// ---------------------------------------------------------------------------------------------
// The `calibrate` command.

/// What `calibrate --fit FILE... --evaluate FILE` reports.
#[derive(Clone, Debug, Serialize)]
pub struct CalibrationReport {
    pub fit_files: Vec<String>,
    pub evaluate_file: String,
    pub fitted: Vec<FitSummary>,
    pub evaluation: EvalReport,
    /// The fitted parameters (TOML), e.g. for `sim/calibration/default.toml`.
    #[serde(skip)]
    pub params: SimParams,
}

impl CalibrationReport {
    /// The human-readable form (the CLI's output without `--json`).
    pub fn render_text(&self) -> String {
        let e = &self.evaluation;
        let mut s = String::new();
        s.push_str(&format!("fit on:    {}\n", self.fit_files.join(", ")));
        s.push_str(&format!(
            "evaluated: {} ({} rows, workload {})\n",
            self.evaluate_file, e.rows, e.workload
        ));
        s.push_str(&format!("bottleneck_accuracy  {:.3}\n", e.bottleneck_accuracy));
        s.push_str(&format!("throughput_mape      {:.3}\n", e.throughput_mape));
        s.push_str(&format!(
            "recovery_mae_s       {:.1}  ({} rows with a measurement)\n",
            e.recovery_mae_s, e.recovery_rows
        ));
        s.push_str(&format!(
            "confusion            bottlenecked {}/{} right, healthy {}/{} right\n",
            e.true_bottlenecked,
            e.true_bottlenecked + e.false_healthy,
            e.true_healthy,
            e.true_healthy + e.false_bottlenecked
        ));
        s.push_str(&format!("recovery censoring   {:.3}\n", e.recovery_censoring_accuracy));
        s
    }
}

/// Fits on `fit_files` (with the static series found next to them) starting from `base`, then
/// evaluates on `evaluate_file`. Only the evaluated file's workload is fitted.
pub fn fit_and_evaluate(
    fit_files: &[PathBuf],
    evaluate_file: &Path,
    base: &SimParams,
) -> Result<CalibrationReport, CalibrateError> {
    let eval_rows = load_profiles(evaluate_file)?;
    let workload = eval_rows
        .first()
        .map(|r| r.workload.clone())
        .ok_or_else(|| CalibrateError::NoRows(evaluate_file.display().to_string()))?;
    let mut rows = Vec::new();
    for f in fit_files {
        rows.extend(load_profiles(f)?.into_iter().filter(|r| r.workload == workload));
    }
    if rows.is_empty() {
        return Err(CalibrateError::NoRows(workload));
    }
    let statics: Vec<StaticSeries> = discover_static(fit_files, &workload)?.into_iter().collect();
    let fitted = fit(&rows, &statics, base)?;
    let evaluation = evaluate(&fitted.params, &eval_rows)?;
    Ok(CalibrationReport {
        fit_files: fit_files.iter().map(|p| p.display().to_string()).collect(),
        evaluate_file: evaluate_file.display().to_string(),
        fitted: fitted.summaries,
        evaluation,
        params: fitted.params,
    })
}

/// Fits every workload of `fit_files` (with the static series next to them): how
/// `sim/calibration/default.toml` is produced.
pub fn fit_files(fit_files: &[PathBuf], base: &SimParams) -> Result<FitResult, CalibrateError> {
    let mut rows = Vec::new();
    for f in fit_files {
        rows.extend(load_profiles(f)?);
    }
    let mut workloads: Vec<String> = rows.iter().map(|r| r.workload.clone()).collect();
    workloads.sort();
    workloads.dedup();
    let mut statics = Vec::new();
    for w in &workloads {
        statics.extend(discover_static(fit_files, w)?);
    }
    fit(&rows, &statics, base)
}
