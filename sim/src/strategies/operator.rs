//! The Flink Kubernetes Operator's autoscaler (FLIP-271), DS2-style, on the job's bottleneck
//! vertex.
//!
//! Every reconcile (60 s) with a full metric window collected after the stabilisation interval
//! since the job last (re)started:
//! - true processing rate `TPR = rate / busy` (busy time aggregated with MAX);
//! - target data rate = input rate + backlog growth; catch-up rate = lag ÷ catch-up duration;
//! - required capacity = `target/utilisation + lag/catch-up + target·restart/catch-up`;
//! - nothing happens while TPR lies between the capacities needed at `utilisation ± boundary`;
//! - otherwise `p' = ceil(p × required / TPR)`, no lower than `p × (1 − scale-down max factor)`,
//!   within the parallelism limits and rounded up to a divisor of the max parallelism while
//!   `p' ≤ max/2` (key-group alignment, operator 1.6);
//! - scale-downs are restricted: 1.6's grace period (none within 1 h of a scale-up) or the newer
//!   `scale-down.interval` (delayed by 1 h, at the highest parallelism recommended meanwhile).
//!
//! With Flink 1.17 (upstream) a new parallelism is applied by a savepoint upgrade (redeploy).

use crate::strategy::{ReconfigKind, StepContext, Strategy};
use demeter_common::JobConfig;
use std::collections::VecDeque;

/// How scale-downs are held back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScaleDownRule {
    /// Operator 1.6 `scale-up.grace-period`: no scale-down within this long after a scale-up.
    GraceAfterScaleUp { grace_s: u64 },
    /// Newer operators' `scale-down.interval`: a scale-down waits this long and then applies the
    /// highest parallelism recommended in between.
    Interval { interval_s: u64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct OperatorOptions {
    pub target_utilization: f64,
    pub utilization_boundary: f64,
    pub stabilization_s: u64,
    pub metrics_window_s: u64,
    pub restart_time_s: f64,
    pub catch_up_s: f64,
    /// The max parallelism the autoscaler aligns to (key groups, or the partition count).
    pub max_parallelism: u32,
    /// `pipeline.max-parallelism` set on the deployment (None: Flink's default key groups).
    pub key_groups: Option<u32>,
    /// Upper limit of a vertex's parallelism.
    pub vertex_max_parallelism: u32,
    pub vertex_min_parallelism: u32,
    pub scale_down_max_factor: f64,
    pub scale_up_max_factor: f64,
    pub scale_down: ScaleDownRule,
    /// `kubernetes.operator.reconcile.interval`.
    pub reconcile_s: u64,
    pub kind: ReconfigKind,
    /// The deployment's TaskManager and checkpointing; parallelism is what gets scaled.
    pub template: JobConfig,
}

impl OperatorOptions {
    /// Upstream's `operator.properties`: target 0.35, boundary 0.15, stabilisation 2 min,
    /// window 1 min, restart time 1 min, catch-up 5 min, max parallelism 24, on operator 1.6.
    pub fn upstream() -> Self {
        OperatorOptions {
            target_utilization: 0.35,
            utilization_boundary: 0.15,
            stabilization_s: 120,
            metrics_window_s: 60,
            restart_time_s: 60.0,
            catch_up_s: 300.0,
            max_parallelism: 24,
            key_groups: Some(24),
            vertex_max_parallelism: 24,
            vertex_min_parallelism: 1,
            scale_down_max_factor: 0.6,
            scale_up_max_factor: 100_000.0,
            scale_down: ScaleDownRule::GraceAfterScaleUp { grace_s: 3600 },
            reconcile_s: 60,
            kind: ReconfigKind::Redeploy,
            template: JobConfig::STATIC_DEFAULT,
        }
    }

    /// The operator's own defaults (utilisation 0.7 ± 0.3, stabilisation 5 min, window 15 min,
    /// restart time 5 min, catch-up 30 min, scale-down interval 1 h), capped at the same 24
    /// slots (the quota of the static configuration). No `pipeline.max-parallelism` is set (Flink's
    /// default key groups); parallelism is aligned to the topic's 24 partitions.
    pub fn defaults() -> Self {
        OperatorOptions {
            target_utilization: 0.7,
            utilization_boundary: 0.3,
            stabilization_s: 300,
            metrics_window_s: 900,
            restart_time_s: 300.0,
            catch_up_s: 1800.0,
            scale_down: ScaleDownRule::Interval { interval_s: 3600 },
            key_groups: None,
            ..Self::upstream()
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    throughput: f64,
    busy: f64,
    target_rate: f64,
    lag: f64,
}

#[derive(Clone, Debug)]
pub struct OperatorAutoscaler {
    name: String,
    opts: OperatorOptions,
    t: u64,
    restarted_at: u64,
    samples: VecDeque<Sample>,
    last_scale_up: Option<u64>,
    /// Scale-down waiting for its interval: (first recommended at, highest recommendation).
    delayed_down: Option<(u64, u32)>,
}

impl OperatorAutoscaler {
    pub fn new(name: &str, opts: OperatorOptions) -> Self {
        OperatorAutoscaler {
            name: name.to_string(),
            opts,
            t: 0,
            restarted_at: 0,
            samples: VecDeque::new(),
            last_scale_up: None,
            delayed_down: None,
        }
    }

    /// Rounds `p` up to a divisor of the max parallelism while that stays at or below half of it.
    fn align(&self, p: u32) -> u32 {
        let max = self.opts.max_parallelism.max(1);
        let mut q = p.max(1);
        while q <= max / 2 && q <= self.opts.vertex_max_parallelism {
            if max.is_multiple_of(q) {
                return q;
            }
            q += 1;
        }
        p
    }

    fn capacity_needed(&self, target: f64, lag: f64, utilization: f64, with_restart: bool) -> f64 {
        if utilization <= 0.0 {
            return f64::INFINITY;
        }
        let catch_up = if self.opts.catch_up_s > 0.0 { lag / self.opts.catch_up_s } else { 0.0 };
        let restart = if with_restart && self.opts.catch_up_s > 0.0 {
            target * self.opts.restart_time_s / self.opts.catch_up_s
        } else {
            0.0
        };
        target / utilization + catch_up + restart
    }

    /// The parallelism the autoscaler wants now, or None to keep the current one.
    fn evaluate(&mut self, p: u32) -> Option<u32> {
        let n = self.samples.len() as f64;
        let rate = self.samples.iter().map(|s| s.throughput).sum::<f64>() / n;
        let busy = self.samples.iter().map(|s| s.busy).sum::<f64>() / n;
        let target = self.samples.iter().map(|s| s.target_rate).sum::<f64>() / n;
        let lag = self.samples.back().map_or(0.0, |s| s.lag);
        let tpr = if busy > 1e-3 { rate / busy } else { f64::INFINITY };
        let u = self.opts.target_utilization;
        let b = self.opts.utilization_boundary;
        let up = self.capacity_needed(target, lag, u + b, false);
        let down = self.capacity_needed(target, lag, u - b, true);
        if tpr >= up && tpr <= down {
            self.delayed_down = None;
            return None;
        }
        if !tpr.is_finite() {
            return None;
        }
        let required = self.capacity_needed(target, lag, u, true);
        let factor =
            (required / tpr).clamp(1.0 - self.opts.scale_down_max_factor, self.opts.scale_up_max_factor);
        let raw = (factor * p as f64).ceil().min(u32::MAX as f64) as u32;
        let new_p = self.align(raw.clamp(self.opts.vertex_min_parallelism, self.opts.vertex_max_parallelism));
        match new_p.cmp(&p) {
            std::cmp::Ordering::Equal => None,
            std::cmp::Ordering::Greater => {
                self.delayed_down = None;
                self.last_scale_up = Some(self.t);
                Some(new_p)
            }
            std::cmp::Ordering::Less => match self.opts.scale_down {
                ScaleDownRule::GraceAfterScaleUp { grace_s } => {
                    if self.last_scale_up.is_some_and(|at| self.t < at + grace_s) {
                        None
                    } else {
                        Some(new_p)
                    }
                }
                ScaleDownRule::Interval { interval_s } => match self.delayed_down {
                    None => {
                        self.delayed_down = Some((self.t, new_p));
                        None
                    }
                    Some((since, highest)) => {
                        let highest = highest.max(new_p);
                        if self.t >= since + interval_s {
                            self.delayed_down = None;
                            (highest < p).then_some(highest)
                        } else {
                            self.delayed_down = Some((since, highest));
                            None
                        }
                    }
                },
            },
        }
    }
}

impl Strategy for OperatorAutoscaler {
    fn name(&self) -> &str {
        &self.name
    }

    fn initial_config(&self) -> JobConfig {
        self.opts.template
    }

    fn max_parallelism(&self) -> Option<u32> {
        self.opts.key_groups
    }

    fn step(&mut self, ctx: &mut StepContext<'_>) {
        self.t += 1;
        let obs = ctx.observation;
        // A (re)start — reconfiguration or failover — discards the collected metrics.
        if ctx.reconfiguring || obs.taskmanagers == 0 || obs.p95_latency_ms.is_none() {
            self.restarted_at = self.t;
            self.samples.clear();
            return;
        }
        if self.t < self.restarted_at + self.opts.stabilization_s {
            return;
        }
        self.samples.push_back(Sample {
            throughput: obs.throughput,
            busy: obs.busy_ratio,
            target_rate: obs.offered_rate,
            lag: obs.lag,
        });
        while self.samples.len() as u64 > self.opts.metrics_window_s {
            self.samples.pop_front();
        }
        if !self.t.is_multiple_of(self.opts.reconcile_s)
            || (self.samples.len() as u64) < self.opts.metrics_window_s
        {
            return;
        }
        let p = ctx.current.parallelism;
        if let Some(new_p) = self.evaluate(p) {
            let to =
                JobConfig { parallelism: new_p, task_slots: self.opts.template.task_slots, ..ctx.current };
            ctx.reconfigure(to, self.opts.kind);
            self.samples.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallelism_is_aligned_to_key_groups_below_half_of_max() {
        let o = OperatorAutoscaler::new("operator", OperatorOptions::upstream());
        assert_eq!(o.align(5), 6);
        assert_eq!(o.align(7), 8);
        assert_eq!(o.align(9), 12);
        assert_eq!(o.align(13), 13);
        assert_eq!(o.align(1), 1);
    }

    #[test]
    fn ds2_scales_to_the_target_utilisation() {
        let mut o = OperatorAutoscaler::new("operator", OperatorOptions::upstream());
        // 24 slots at 10 % busy processing 20k/s: TPR 200k/s, needed 20k/0.35 + restart share.
        for _ in 0..60 {
            o.samples.push_back(Sample { throughput: 20_000.0, busy: 0.1, target_rate: 20_000.0, lag: 0.0 });
        }
        o.t = 10_000;
        let p = o.evaluate(24).expect("scales down");
        // required = 57,143 + 4,000 = 61,143 → factor 0.306 → clamped to 0.4 → ceil(9.6) = 10 → 12.
        assert_eq!(p, 12);
        // Within the bounds nothing happens: busy 0.35 → TPR = target/0.35.
        o.samples.iter_mut().for_each(|s| s.busy = 0.35);
        assert_eq!(o.evaluate(24), None);
    }
}
