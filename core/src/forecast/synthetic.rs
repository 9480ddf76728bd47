//! Deterministic synthetic workload traces, for judging the forecaster on data it was not tuned on.
//!
//! Every trace is a pure function of `(kind, seed, len_s)`: one sample per second, starting at
//! [`SYNTHETIC_START_S`], values in events/s (already the *offered* rate: no ×3 scaling applies; the
//! evaluation CLI passes `scale = 1.0` for them). The generators use `rand_chacha::ChaCha8Rng`, whose
//! stream is stable across platforms and versions.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

/// First timestamp of every synthetic trace (Unix seconds, a multiple of 60).
pub const SYNTHETIC_START_S: i64 = 1_699_999_200;

/// Period of the synthetic "day": 6 h, a day compressed 4× like the upstream traces.
pub const SYNTHETIC_DAY_S: f64 = 21_600.0;

/// The shapes of synthetic trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyntheticKind {
    /// A two-harmonic daily cycle (6 h "day"), a slow multiplicative wobble, 3 % per-second noise and
    /// unannounced bursts (+20…60 % for 4–20 min, about one every 90 min).
    DailyCycle,
    /// A geometric random walk whose drift is itself a mean-reverting process (trends that start and
    /// stop at random), weakly pulled back towards 15k/s, plus 2 % per-second noise. No season.
    RandomWalk,
    /// Piecewise-constant levels that change by ×0.67…×1.5 every 75 min on average, through ramps of
    /// 30 s to 5 min, plus 3 % per-second noise: regime changes that no model can anticipate.
    StepChanges,
}

impl SyntheticKind {
    pub const ALL: [SyntheticKind; 3] =
        [SyntheticKind::DailyCycle, SyntheticKind::RandomWalk, SyntheticKind::StepChanges];

    pub fn name(self) -> &'static str {
        match self {
            SyntheticKind::DailyCycle => "daily_cycle",
            SyntheticKind::RandomWalk => "random_walk",
            SyntheticKind::StepChanges => "step_changes",
        }
    }
}

impl fmt::Display for SyntheticKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SyntheticKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        SyntheticKind::ALL.into_iter().find(|k| k.name() == norm).ok_or_else(|| {
            format!(
                "unknown synthetic trace kind {s:?} (expected one of: {})",
                SyntheticKind::ALL.map(|k| k.name()).join(", ")
            )
        })
    }
}

/// A deterministic synthetic trace of `len_s` one-second samples `(unix_s, events_per_s)`.
pub fn synthetic_trace(kind: SyntheticKind, seed: u64, len_s: usize) -> Vec<(i64, f64)> {
    // Mix the kind into the seed so that the three kinds never share a random stream.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(kind as u64 + 1)));
    let values = match kind {
        SyntheticKind::DailyCycle => daily_cycle(&mut rng, len_s),
        SyntheticKind::RandomWalk => random_walk(&mut rng, len_s),
        SyntheticKind::StepChanges => step_changes(&mut rng, len_s),
    };
    values.into_iter().enumerate().map(|(i, v)| (SYNTHETIC_START_S + i as i64, v.max(0.0))).collect()
}

fn std_normal() -> Normal<f64> {
    Normal::new(0.0, 1.0).expect("valid normal")
}

/// A burst: trapezoid of relative amplitude `amp` starting at `start` (s).
struct Burst {
    start: f64,
    up: f64,
    hold: f64,
    down: f64,
    amp: f64,
}

impl Burst {
    fn factor(&self, t: f64) -> f64 {
        let x = t - self.start;
        if x <= 0.0 {
            0.0
        } else if x < self.up {
            self.amp * x / self.up
        } else if x < self.up + self.hold {
            self.amp
        } else if x < self.up + self.hold + self.down {
            self.amp * (1.0 - (x - self.up - self.hold) / self.down)
        } else {
            0.0
        }
    }
}

fn daily_cycle(rng: &mut ChaCha8Rng, len_s: usize) -> Vec<f64> {
    let n = std_normal();
    let phase = rng.random_range(0.0..2.0 * PI);
    // Bursts: Poisson arrivals, one per 90 min on average.
    let mut bursts = Vec::new();
    let mut t = 0.0;
    loop {
        t += -(1.0 - rng.random::<f64>()).ln() * 5_400.0;
        if t >= len_s as f64 {
            break;
        }
        bursts.push(Burst {
            start: t,
            up: rng.random_range(60.0..300.0),
            hold: rng.random_range(120.0..600.0),
            down: rng.random_range(60.0..300.0),
            amp: rng.random_range(0.2..0.6),
        });
    }
    // Slow multiplicative wobble: AR(1) on the log scale, correlation time 15 min, sd 5 %.
    let rho: f64 = (-1.0f64 / 900.0).exp();
    let wobble_sd = 0.05 * (1.0 - rho * rho).sqrt();
    let mut wobble = 0.0;
    let mut out = Vec::with_capacity(len_s);
    for i in 0..len_s {
        let ts = i as f64;
        let w = 2.0 * PI * ts / SYNTHETIC_DAY_S + phase;
        let base = 15_000.0 * (1.0 + 0.45 * w.sin() + 0.15 * (2.0 * w + 1.0).sin());
        wobble = rho * wobble + wobble_sd * n.sample(rng);
        let burst: f64 = bursts.iter().map(|b| b.factor(ts)).sum();
        let noise = 1.0 + 0.03 * n.sample(rng);
        out.push(base * wobble.exp() * (1.0 + burst) * noise);
    }
    out
}

fn random_walk(rng: &mut ChaCha8Rng, len_s: usize) -> Vec<f64> {
    let n = std_normal();
    let mean = 15_000f64.ln();
    // Drift (per second, log scale): OU with correlation time 20 min and stationary sd 1.3e-4/s,
    // i.e. trends of about ±8 % per 10 min.
    let rho_d: f64 = (-1.0f64 / 1_200.0).exp();
    let drift_sd = 1.3e-4 * (1.0 - rho_d * rho_d).sqrt();
    let mut drift = 0.0;
    let mut level = mean + rng.random_range(-0.2..0.2);
    let mut out = Vec::with_capacity(len_s);
    for _ in 0..len_s {
        drift = rho_d * drift + drift_sd * n.sample(rng);
        // Brownian part of 2 % per 10 min, and a 3 h pull back to the mean.
        level += drift + 8e-4 * n.sample(rng) - (level - mean) / 10_800.0;
        level = level.clamp(mean - 1.2, mean + 1.0);
        out.push(level.exp() * (1.0 + 0.02 * n.sample(rng)));
    }
    out
}

fn step_changes(rng: &mut ChaCha8Rng, len_s: usize) -> Vec<f64> {
    let n = std_normal();
    let mut out = Vec::with_capacity(len_s);
    let mut level = rng.random_range(10_000.0..20_000.0);
    let mut from = level;
    let mut ramp_start = 0.0;
    let mut ramp_len = 1.0;
    let mut next_change = -(1.0 - rng.random::<f64>()).ln() * 4_500.0;
    for i in 0..len_s {
        let t = i as f64;
        if t >= next_change {
            from = current(from, level, ramp_start, ramp_len, t);
            let factor = rng.random_range(-0.4f64..0.4).exp();
            level = (from * factor).clamp(5_000.0, 40_000.0);
            ramp_start = t;
            ramp_len = rng.random_range(30.0..300.0);
            next_change = t + 600.0 + -(1.0 - rng.random::<f64>()).ln() * 3_900.0;
        }
        let v = current(from, level, ramp_start, ramp_len, t);
        out.push(v * (1.0 + 0.03 * n.sample(rng)));
    }
    out
}

fn current(from: f64, to: f64, start: f64, len: f64, t: f64) -> f64 {
    let x = ((t - start) / len).clamp(0.0, 1.0);
    from + (to - from) * x
}
