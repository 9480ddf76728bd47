//! The oracle: knows the future offered rate and the true capacity and recovery model, and plans
//! the cheapest sequence of configurations with a bounded number of reconfigurations.
//!
//! The run is cut into blocks (5 min). A configuration is feasible for a segment of blocks if,
//! at the segment's highest offered rate (including the lead time before the segment, when the
//! switch happens), it stays below `max_utilization` of its capacity and recovers from a failure
//! within the recovery bound. Dynamic programming over (segments used, block) picks the segment
//! boundaries and configurations that minimise the normalised resource cost
//! `cores/24 + MB/98304` integrated over time, with at most `max_reconfigurations` switches.

use crate::strategy::{OracleView, ReconfigKind, StepContext, Strategy};
use demeter_common::{Constraints, JobConfig, Quota, SearchSpace};

#[derive(Clone, Debug, PartialEq)]
pub struct OracleOptions {
    pub space: SearchSpace,
    pub quota: Quota,
    pub constraints: Constraints,
    /// Reconfigurations allowed over the whole run (18 per 18 h).
    pub max_reconfigurations: u32,
    pub block_s: u64,
    /// Highest utilisation (offered ÷ capacity) allowed.
    pub max_utilization: f64,
    /// A switch starts this long before its segment (covers the redeploy and the catch-up).
    pub lead_s: u64,
}

impl OracleOptions {
    /// 18 reconfigurations per 18 h, scaled to `len_s`.
    pub fn for_len(len_s: u64) -> Self {
        OracleOptions {
            space: SearchSpace::default(),
            quota: Quota::default(),
            constraints: Constraints::default(),
            max_reconfigurations: ((18 * len_s) / 64_800).max(1) as u32,
            block_s: 300,
            max_utilization: 0.85,
            lead_s: 180,
        }
    }
}

/// One planned switch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannedSwitch {
    pub at_s: u64,
    pub config: JobConfig,
}

#[derive(Clone, Debug)]
pub struct Oracle {
    initial: JobConfig,
    plan: Vec<PlannedSwitch>,
    next: usize,
    t: u64,
    rates: Vec<f64>,
}

#[derive(Clone, Copy, Debug)]
struct Option_ {
    max_rate: f64,
    cost: f64,
    config: JobConfig,
}

impl Oracle {
    pub fn new(view: &dyn OracleView, opts: OracleOptions) -> Self {
        let len = view.len_s();
        let rates: Vec<f64> = (0..len).map(|t| view.offered_rate_at(t)).collect();
        let st = JobConfig::STATIC_DEFAULT;
        let norm = |c: &JobConfig| {
            c.total_cpu() / st.total_cpu() + c.total_memory_mb() as f64 / st.total_memory_mb() as f64
        };

        // Each candidate's highest sustainable rate under the utilisation and recovery bounds.
        let mut cands = opts.space.candidates(&opts.quota);
        if !cands.contains(&st) {
            cands.push(st);
        }
        let mut options: Vec<Option_> = cands
            .iter()
            .map(|c| {
                let cap = view.true_capacity(c);
                let mut hi = cap * opts.max_utilization;
                if view.true_recovery_s(c, hi) > opts.constraints.recovery_time_s {
                    let mut lo = 0.0;
                    for _ in 0..40 {
                        let mid = 0.5 * (lo + hi);
                        if view.true_recovery_s(c, mid) <= opts.constraints.recovery_time_s {
                            lo = mid;
                        } else {
                            hi = mid;
                        }
                    }
                    hi = lo;
                }
                Option_ { max_rate: hi, cost: norm(c), config: *c }
            })
            .collect();
        // Cheapest option for a required rate: sort by max rate, suffix minimum of cost.
        options.sort_by(|a, b| a.max_rate.total_cmp(&b.max_rate).then(a.cost.total_cmp(&b.cost)));
        let mut best_from: Vec<usize> = vec![0; options.len()];
        let mut best = options.len() - 1;
        for i in (0..options.len()).rev() {
            if options[i].cost < options[best].cost
                || (options[i].cost == options[best].cost && options[i].max_rate > options[best].max_rate)
            {
                best = i;
            }
            best_from[i] = best;
        }
        let strongest =
            options.iter().enumerate().max_by(|a, b| a.1.max_rate.total_cmp(&b.1.max_rate)).map(|x| x.0);
        let pick = |rate: f64| -> (f64, JobConfig) {
            let i = options.partition_point(|o| o.max_rate < rate);
            if i < options.len() {
                let o = options[best_from[i]];
                (o.cost, o.config)
            } else {
                // Nothing copes: the strongest configuration, heavily penalised.
                let o = options[strongest.unwrap_or(0)];
                (o.cost * 100.0, o.config)
            }
        };

        let b = opts.block_s.max(1);
        let nb = len.div_ceil(b) as usize;
        // Highest rate a segment starting at block a must carry, per block (lead included).
        let block_max: Vec<f64> = (0..nb)
            .map(|i| {
                let s = (i as u64 * b).saturating_sub(opts.lead_s) as usize;
                let e = (((i as u64 + 1) * b).min(len)) as usize;
                rates[s..e].iter().copied().fold(0.0, f64::max)
            })
            .collect();
        let block_len: Vec<f64> =
            (0..nb).map(|i| ((i as u64 + 1) * b).min(len).saturating_sub(i as u64 * b) as f64).collect();
        let segs = opts.max_reconfigurations as usize + 1;
        // f[s][e]: least cost covering blocks [0, e) with s segments; arg for reconstruction.
        let inf = f64::INFINITY;
        let mut f = vec![vec![inf; nb + 1]; segs + 1];
        let mut arg = vec![vec![(0usize, st); nb + 1]; segs + 1];
        f[0][0] = 0.0;
        for s in 1..=segs {
            for e in 1..=nb {
                let mut m = 0.0f64;
                let mut dur = 0.0;
                // Segment [a, e), grown backwards.
                for a in (0..e).rev() {
                    m = m.max(block_max[a]);
                    dur += block_len[a];
                    if f[s - 1][a] == inf {
                        continue;
                    }
                    let (cost, cfg) = pick(m);
                    let v = f[s - 1][a] + cost * dur;
                    if v < f[s][e] {
                        f[s][e] = v;
                        arg[s][e] = (a, cfg);
                    }
                }
            }
        }
        let s_best = (1..=segs).min_by(|&x, &y| f[x][nb].total_cmp(&f[y][nb])).unwrap_or(1);
        let mut segments = Vec::new();
        let (mut s, mut e) = (s_best, nb);
        while s > 0 && e > 0 {
            let (a, cfg) = arg[s][e];
            segments.push((a, cfg));
            e = a;
            s -= 1;
        }
        segments.reverse();
        // Merge neighbours with the same configuration.
        segments.dedup_by(|later, earlier| later.1 == earlier.1);
        let initial = segments.first().map_or(st, |x| x.1);
        let plan = segments
            .iter()
            .skip(1)
            .map(|&(a, cfg)| PlannedSwitch { at_s: (a as u64 * b).saturating_sub(opts.lead_s), config: cfg })
            .collect();
        Oracle { initial, plan, next: 0, t: 0, rates }
    }

    pub fn plan(&self) -> &[PlannedSwitch] {
        &self.plan
    }
}

impl Strategy for Oracle {
    fn name(&self) -> &str {
        "oracle"
    }

    fn initial_config(&self) -> JobConfig {
        self.initial
    }

    fn step(&mut self, ctx: &mut StepContext<'_>) {
        self.t += 1;
        while self.next < self.plan.len() && self.plan[self.next].at_s <= self.t {
            let to = self.plan[self.next].config;
            self.next += 1;
            let kind = if ctx.current.parallelism_only_change(&to) {
                ReconfigKind::InPlace
            } else {
                ReconfigKind::Redeploy
            };
            ctx.reconfigure(to, kind);
        }
    }

    fn forecast_rate(&self) -> Option<f64> {
        self.rates.get(self.t as usize).copied()
    }
}
