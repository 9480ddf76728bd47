//! A synthetic ground-truth job shaped like the calibration data (CARS on Flink 1.17), for
//! benchmarks and tests of the models and decisions: capacity per slot grows with CPU per slot
//! (about 2k records/s at 0.25 core, 5k at 0.5, 12k at 1), a little less with small memory per
//! slot or very frequent checkpoints; p95 latency is about 1 s below saturation and 20–80 s
//! beyond; recovery time is detection plus the drain of the outage's backlog, and never
//! happens (censored at 360 s) near saturation. Not a simulator of Flink: a smooth,
//! deterministic function with noise, to have something whose truth is known.

use crate::obs::{PerfSample, RecoveryTime, SampleOrigin};
use demeter_common::{JobConfig, UnixMillis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Parameters of the synthetic job.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticJob {
    /// Records/s one slot sustains at one core per slot.
    pub per_slot_at_one_core: f64,
    pub cpu_exponent: f64,
    pub base_latency_ms: f64,
    /// Log-normal measurement noise (sd of `ln`).
    pub noise: f64,
    /// Recovery censoring bound (s).
    pub recovery_bound_s: f64,
}

impl Default for SyntheticJob {
    fn default() -> Self {
        SyntheticJob {
            per_slot_at_one_core: 12_000.0,
            cpu_exponent: 1.3,
            base_latency_ms: 1_035.0,
            noise: 0.05,
            recovery_bound_s: 360.0,
        }
    }
}

impl SyntheticJob {
    /// True sustainable throughput of `c`.
    pub fn capacity(&self, c: &JobConfig) -> f64 {
        let slots = c.task_slots.max(1) as f64;
        let cps = (c.tm_cpu_cores() / slots).min(1.5);
        let mps = c.tm_memory_mb as f64 / slots;
        let mem = 1.0 - 0.15 * (-(mps - 256.0).max(0.0) / 256.0).exp();
        let chk = 1.0 - 0.3 / (c.checkpoint_interval_ms as f64 / 1000.0).max(1.0);
        c.parallelism as f64 * self.per_slot_at_one_core * cps.powf(self.cpu_exponent) * mem * chk
    }

    /// Noise-free p95 latency (ms) of `c` at `rate`.
    pub fn latency_ms(&self, c: &JobConfig, rate: f64) -> f64 {
        let u = rate / self.capacity(c);
        if u < 1.0 {
            self.base_latency_ms * (1.0 + 0.04 * (u / (1.0 - u)).min(200.0))
        } else {
            20_000.0 + 60_000.0 * (u - 1.0).min(1.0)
        }
    }

    /// Noise-free recovery time (s) of `c` at `rate`, censored at the bound.
    pub fn recovery(&self, c: &JobConfig, rate: f64) -> RecoveryTime {
        let u = rate / self.capacity(c);
        let chk_s = c.checkpoint_interval_ms as f64 / 1000.0;
        let t = if u < 0.99 { 75.0 + 0.8 * (chk_s / 2.0 + 30.0) * u / (1.0 - u) } else { f64::INFINITY };
        if t < self.recovery_bound_s {
            RecoveryTime::Measured(t)
        } else {
            RecoveryTime::NotRecovered(self.recovery_bound_s)
        }
    }

    /// One measured window of `c` at `rate`.
    pub fn sample(
        &self,
        c: &JobConfig,
        rate: f64,
        origin: SampleOrigin,
        with_recovery: bool,
        at: UnixMillis,
        rng: &mut ChaCha8Rng,
    ) -> PerfSample {
        let normal = Normal::new(0.0, self.noise).expect("finite sd");
        let mut e = || normal.sample(rng).exp();
        let cap = self.capacity(c) * e();
        let u = rate / cap;
        let throughput = if u < 1.0 { rate * (1.0 + 0.4 * (e() - 1.0)) } else { cap };
        let busy = (u * e()).clamp(0.0, 1.0);
        let recovery = with_recovery.then(|| match self.recovery(c, rate * cap / self.capacity(c)) {
            RecoveryTime::Measured(s) => {
                let s = s * e();
                if s < self.recovery_bound_s {
                    RecoveryTime::Measured(s)
                } else {
                    RecoveryTime::NotRecovered(self.recovery_bound_s)
                }
            }
            r => r,
        });
        PerfSample {
            config: *c,
            at,
            origin,
            offered_rate: rate,
            throughput,
            p95_latency_ms: self.latency_ms(c, rate * self.capacity(c) / cap) * e(),
            busy_ratio: (origin == SampleOrigin::Production).then_some(busy),
            recovery,
        }
    }

    /// Offered rate at second `t`: a 6-hour cycle between about 25k and 95k records/s.
    pub fn rate_at(&self, t_s: i64) -> f64 {
        let phase = (t_s as f64) / 21_600.0 * std::f64::consts::TAU;
        60_000.0 + 35_000.0 * phase.sin() + 5_000.0 * (3.0 * phase).sin()
    }

    /// `n` samples as a running Demeter would have collected them: one in five from a
    /// profiling run of a random candidate (with a failure injected), the rest 60-second
    /// windows of the production job, which changes configuration every 30 windows to one
    /// that fits the coming rate with some headroom, with a failure every 45 windows.
    pub fn history(&self, candidates: &[JobConfig], n: usize, seed: u64) -> Vec<PerfSample> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(n);
        let mut prod = candidates[0];
        for i in 0..n {
            let t = i as i64 * 60;
            let rate = self.rate_at(t);
            let at = UnixMillis(t * 1000);
            if i % 5 == 4 {
                let c = candidates[rng.random_range(0..candidates.len())];
                let s = self.sample(&c, rate, SampleOrigin::Profiling, true, at, &mut rng);
                out.push(s);
                continue;
            }
            if i % 30 == 0 {
                let peak = (0..30).map(|k| self.rate_at(t + k * 60)).fold(0.0, f64::max);
                let headroom = 1.1 + 0.5 * rng.random::<f64>();
                let fitting: Vec<&JobConfig> =
                    candidates.iter().filter(|c| self.capacity(c) >= headroom * peak).collect();
                prod = match fitting.len() {
                    0 => *candidates
                        .iter()
                        .max_by(|a, b| self.capacity(a).total_cmp(&self.capacity(b)))
                        .expect("candidates"),
                    k => *fitting[rng.random_range(0..k.min(40))],
                };
            }
            out.push(self.sample(&prod, rate, SampleOrigin::Production, i % 45 == 44, at, &mut rng));
        }
        out
    }
}
