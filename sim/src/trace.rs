//! Workload traces (`timestamp|value`, one row per second, events/s per generator) and the
//! offered-rate series a run replays: `generators × value`, each generator with seeded noise.

use crate::params::{CommonParams, WorkloadParams};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {reason}")]
    Line { path: String, line: usize, reason: String },
    #[error("{0}: the trace has no rows")]
    Empty(String),
}

/// One workload trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// File stem, e.g. `CARS_3D_1S_4_sub_35K_max`.
    pub name: String,
    /// Workload key for the parameters (`ads`, `cars`): the file name up to its first `_`.
    pub workload: String,
    /// Unix seconds of the first row.
    pub start_unix_s: i64,
    /// Events/s per generator, one value per second.
    pub values: Vec<f64>,
}

impl Trace {
    /// Reads a `timestamp|value` file. Rows must be one second apart; a gap is filled with the
    /// previous value.
    pub fn load(path: &Path) -> Result<Trace, TraceError> {
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| TraceError::Io { path: p.clone(), source })?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let workload = name.split('_').next().unwrap_or("").to_ascii_lowercase();
        Self::parse(&text, &p, name, workload)
    }

    /// Parses the text of a trace file (`path` only names it in errors).
    pub fn parse(text: &str, path: &str, name: String, workload: String) -> Result<Trace, TraceError> {
        let mut values: Vec<f64> = Vec::new();
        let mut start = None;
        let mut last_ts: Option<i64> = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (i == 0 && line.starts_with("timestamp")) {
                continue;
            }
            let err = |reason: String| TraceError::Line { path: path.to_string(), line: i + 1, reason };
            let (ts, v) = line
                .split_once('|')
                .ok_or_else(|| err(format!("expected `timestamp|value`, found {line:?}")))?;
            let ts: i64 = ts.trim().parse().map_err(|e| err(format!("bad timestamp {ts:?}: {e}")))?;
            let v: f64 = v.trim().parse().map_err(|e| err(format!("bad value {v:?}: {e}")))?;
            if !(v.is_finite() && v >= 0.0) {
                return Err(err(format!("value {v} is not a finite rate >= 0")));
            }
            match last_ts {
                None => start = Some(ts),
                Some(prev) if ts <= prev => {
                    return Err(err(format!("timestamp {ts} does not follow {prev}")));
                }
                Some(prev) => {
                    let fill = *values.last().unwrap_or(&v);
                    for _ in prev + 1..ts {
                        values.push(fill);
                    }
                }
            }
            values.push(v);
            last_ts = Some(ts);
        }
        match start {
            Some(start_unix_s) => Ok(Trace { name, workload, start_unix_s, values }),
            None => Err(TraceError::Empty(path.to_string())),
        }
    }

    /// A constant trace (tests, profiling-row evaluation).
    pub fn constant(workload: &str, value: f64, len_s: usize) -> Trace {
        Trace {
            name: format!("constant-{value}"),
            workload: workload.to_ascii_lowercase(),
            start_unix_s: 1_700_000_000,
            values: vec![value; len_s],
        }
    }

    pub fn len_s(&self) -> u64 {
        self.values.len() as u64
    }
}

/// The offered rate of one run, second by second, with its running sum.
#[derive(Clone, Debug)]
pub struct OfferedRate {
    /// Records offered during second `t`.
    pub rate: Vec<f64>,
    /// `cum[t]`: records offered before second `t` (length `len + 1`).
    pub cum: Vec<f64>,
}

impl OfferedRate {
    /// `rate_scale × Σ_g value × (1 + U(−noise, noise))` over the generators, seeded.
    pub fn new(trace: &Trace, common: &CommonParams, w: &WorkloadParams, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6f66_6665_7265_6421);
        let g = common.generators.max(1);
        let a = common.noise_max;
        let rate: Vec<f64> = trace
            .values
            .iter()
            .map(|&v| {
                let mut s = 0.0;
                for _ in 0..g {
                    let e: f64 = if a > 0.0 { rng.random_range(-a..=a) } else { 0.0 };
                    s += v * (1.0 + e);
                }
                s * w.rate_scale
            })
            .collect();
        Self::from_rates(rate)
    }

    pub fn from_rates(rate: Vec<f64>) -> Self {
        let mut cum = Vec::with_capacity(rate.len() + 1);
        let mut acc = 0.0;
        cum.push(0.0);
        for r in &rate {
            acc += r;
            cum.push(acc);
        }
        OfferedRate { rate, cum }
    }

    pub fn len_s(&self) -> u64 {
        self.rate.len() as u64
    }

    /// Rate during second `t` (the last second's rate past the end).
    pub fn at(&self, t: u64) -> f64 {
        self.rate.get(t as usize).or(self.rate.last()).copied().unwrap_or(0.0)
    }

    /// Records offered before time `x` (seconds, fractional), extrapolated past the end.
    pub fn cum_at(&self, x: f64) -> f64 {
        if x <= 0.0 {
            return 0.0;
        }
        let n = self.rate.len();
        let i = x.floor() as usize;
        if i >= n {
            return self.cum[n] + (x - n as f64) * self.at(n as u64);
        }
        self.cum[i] + (x - i as f64) * self.rate[i]
    }

    /// The time at which the `pos`-th record was offered (inverse of [`Self::cum_at`]).
    pub fn time_of(&self, pos: f64) -> f64 {
        let n = self.rate.len();
        if pos <= 0.0 {
            return 0.0;
        }
        if pos >= self.cum[n] {
            let last = self.at(n as u64).max(1e-9);
            return n as f64 + (pos - self.cum[n]) / last;
        }
        // First index with cum > pos, minus one: the second in which record `pos` was offered.
        let i = self.cum.partition_point(|&c| c <= pos).saturating_sub(1).min(n - 1);
        let r = self.rate[i];
        if r <= 0.0 { i as f64 } else { i as f64 + (pos - self.cum[i]) / r }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reports_the_line_and_fills_gaps() {
        let t = Trace::parse("timestamp|value\n10|5\n11|6\n13|7\n", "x", "x".into(), "ads".into()).unwrap();
        assert_eq!(t.values, vec![5.0, 6.0, 6.0, 7.0]);
        assert_eq!(t.start_unix_s, 10);
        let e = Trace::parse("timestamp|value\n10|5\n11|x\n", "f.csv", "f".into(), "ads".into()).unwrap_err();
        assert!(e.to_string().starts_with("f.csv:3: bad value"), "{e}");
        assert!(Trace::parse("timestamp|value\n", "e", "e".into(), "ads".into()).is_err());
    }

    #[test]
    fn cumulative_offered_rate_inverts() {
        let o = OfferedRate::from_rates(vec![10.0, 0.0, 30.0, 20.0]);
        assert_eq!(o.cum, vec![0.0, 10.0, 10.0, 40.0, 60.0]);
        assert_eq!(o.cum_at(2.5), 25.0);
        for x in [0.3, 2.2, 3.9, 5.5] {
            assert!((o.time_of(o.cum_at(x)) - x).abs() < 1e-9, "{x}");
        }
    }
}
