//! Flink reactive mode under a Kubernetes HorizontalPodAutoscaler (upstream's `reactive`
//! baseline): TaskManagers of 1 slot × 1 CPU × 4096 MB, parallelism = replicas, the HPA keeps the
//! pods' mean CPU utilisation (usage ÷ request) near 35 %.
//!
//! The HPA's algorithm as Kubernetes implements it (`pkg/controller/podautoscaler`):
//! - every sync period (15 s) it reads the pods' CPU usage from metrics-server (a rate over the
//!   last scrape window) and computes `desired = ceil(current × utilisation / target)`, unless
//!   `|utilisation / target − 1| ≤ tolerance` (0.1);
//! - scale-up is immediate but limited per period to `max(2 × current, current + 4)`;
//! - scale-down uses the highest recommendation of the last 5 minutes (stabilisation window).
//!
//! Reactive mode rescales the job whenever the set of TaskManagers changes: new pods start and
//! register, then the job restarts from its last checkpoint with the new parallelism.

use crate::strategy::{ReconfigKind, StepContext, Strategy};
use demeter_common::JobConfig;
use std::collections::VecDeque;

#[derive(Clone, Debug, PartialEq)]
pub struct HpaOptions {
    /// Target mean CPU utilisation of the pods (upstream: 35 %).
    pub target_utilization: f64,
    pub tolerance: f64,
    pub sync_period_s: u64,
    pub scale_down_stabilization_s: u64,
    /// metrics-server's resolution: the usage the HPA reads is the mean over this many seconds
    /// (metrics-server's `--metric-resolution` defaults to 60 s; its own manifests use 15 s).
    pub metric_window_s: u64,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// The TaskManager (and checkpointing) of every pod.
    pub pod: JobConfig,
}

impl Default for HpaOptions {
    fn default() -> Self {
        HpaOptions {
            target_utilization: 0.35,
            tolerance: 0.1,
            sync_period_s: 15,
            scale_down_stabilization_s: 300,
            metric_window_s: 60,
            min_replicas: 1,
            max_replicas: 24,
            pod: JobConfig { parallelism: 24, task_slots: 1, ..JobConfig::STATIC_DEFAULT },
        }
    }
}

#[derive(Clone, Debug)]
pub struct Hpa {
    opts: HpaOptions,
    replicas: u32,
    t: u64,
    usage: VecDeque<f64>,
    recommendations: VecDeque<(u64, u32)>,
}

impl Hpa {
    pub fn new(opts: HpaOptions) -> Self {
        let replicas = opts.pod.parallelism.clamp(opts.min_replicas, opts.max_replicas);
        Hpa { opts, replicas, t: 0, usage: VecDeque::new(), recommendations: VecDeque::new() }
    }

    fn config(&self, replicas: u32) -> JobConfig {
        JobConfig { parallelism: replicas * self.opts.pod.task_slots.max(1), ..self.opts.pod }
    }

    /// One HPA sync: the replica count it wants now.
    fn sync(&mut self) -> u32 {
        let cur = self.replicas.max(1);
        if self.usage.is_empty() {
            return cur;
        }
        let request = self.opts.pod.tm_cpu_cores() * cur as f64;
        let used = self.usage.iter().sum::<f64>() / self.usage.len() as f64;
        let ratio = used / request / self.opts.target_utilization;
        let desired = if (ratio - 1.0).abs() <= self.opts.tolerance {
            cur
        } else {
            ((cur as f64 * ratio).ceil() as u32).clamp(self.opts.min_replicas, self.opts.max_replicas)
        };
        self.recommendations.push_back((self.t, desired));
        while self
            .recommendations
            .front()
            .is_some_and(|&(t, _)| t + self.opts.scale_down_stabilization_s < self.t)
        {
            self.recommendations.pop_front();
        }
        if desired > cur {
            desired.min((2 * cur).max(cur + 4)).min(self.opts.max_replicas)
        } else {
            // Scale-down stabilisation: the highest recommendation within the window.
            let stabilized = self.recommendations.iter().map(|&(_, r)| r).max().unwrap_or(cur);
            stabilized.min(cur)
        }
    }
}

impl Strategy for Hpa {
    fn name(&self) -> &str {
        "hpa"
    }

    fn initial_config(&self) -> JobConfig {
        self.config(self.replicas)
    }

    fn step(&mut self, ctx: &mut StepContext<'_>) {
        self.t += 1;
        // The pods' CPU (cAdvisor/metrics-server), not Flink's metrics.
        self.usage.push_back(ctx.observation.cpu_cores_used);
        while self.usage.len() as u64 > self.opts.metric_window_s {
            self.usage.pop_front();
        }
        if !self.t.is_multiple_of(self.opts.sync_period_s) {
            return;
        }
        let want = self.sync();
        if want != self.replicas {
            self.replicas = want;
            ctx.reconfigure(self.config(want), ReconfigKind::InPlace);
        }
    }
}
