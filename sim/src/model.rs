//! The closed-form parts of the job model: capacity of a configuration, CPU used, steady-state
//! latency and the recovery time after a failure. The time-stepped job in [`crate::job`] uses
//! these; the fit uses them directly, and the oracle sees them through [`crate::OracleView`].

use crate::params::{CommonParams, WorkloadParams};
use demeter_common::JobConfig;

/// The smallest effective CPU share per slot (a slot always makes some progress).
const MIN_SHARE: f64 = 0.01;

/// Sustainable records/s of `cfg`.
///
/// Capacity per slot follows the CPU share of a slot (`cpu per TM / slots`) minus a per-slot
/// overhead, up to a saturation share; memory per slot below a knee slows RocksDB down; each
/// checkpoint costs a fixed amount of processing time; and parallelism scales with an exponent.
pub fn capacity(cfg: &JobConfig, w: &WorkloadParams) -> f64 {
    let c = &w.capacity;
    let p = cfg.parallelism.max(1) as f64;
    let slots = cfg.task_slots.max(1) as f64;
    let share = (cfg.tm_cpu_cores() / slots - c.slot_overhead_cores).clamp(MIN_SHARE, c.cpu_share_saturation);
    let mem_per_slot = cfg.tm_memory_mb as f64 / slots;
    let memory = 1.0 - c.memory_penalty * (-mem_per_slot / c.memory_knee_mb).exp();
    let k = (cfg.checkpoint_interval_ms as f64 / 1000.0).max(0.001);
    let checkpoint = 1.0 / (1.0 + c.checkpoint_overhead_s / k);
    c.records_per_core_s * p.powf(c.parallelism_exponent) * share * memory * checkpoint
}

/// Flink's default number of key groups for `parallelism` (`computeDefaultMaxParallelism`).
pub fn default_key_groups(parallelism: u32) -> u32 {
    let p = parallelism.max(1);
    (p + p / 2).next_power_of_two().clamp(128, 32_768)
}

/// Mean ÷ busiest load of a keyed subtask when `key_groups` are spread over `parallelism`
/// subtasks in contiguous ranges (1 when they divide evenly).
pub fn key_group_balance(parallelism: u32, key_groups: u32) -> f64 {
    let p = parallelism.max(1) as f64;
    let g = key_groups.max(1) as f64;
    (g / p) / (g / p).ceil()
}

/// Capacity of `cfg` deployed with `key_groups` (None: Flink's default). The calibration runs
/// used the default, so the fitted capacity already holds its (small) imbalance; other key-group
/// counts scale it by the change in balance of the busiest keyed subtask.
pub fn capacity_with_key_groups(cfg: &JobConfig, key_groups: Option<u32>, w: &WorkloadParams) -> f64 {
    let base = capacity(cfg, w);
    match key_groups {
        None => base,
        Some(g) => {
            let p = cfg.parallelism.min(g.max(1));
            let default = default_key_groups(p);
            base * key_group_balance(p, g) / key_group_balance(p, default)
        }
    }
}

/// CPU cores one TaskManager of `cfg` uses while processing `rate` records/s in total, when the
/// job's state is `age_h` hours old.
pub fn cpu_per_tm(cfg: &JobConfig, rate: f64, age_h: f64, w: &WorkloadParams) -> f64 {
    let tms = cfg.taskmanagers().max(1) as f64;
    let state = w.cpu.state_growth_cores_per_h * age_h.max(0.0) / tms;
    (w.cpu.idle_cores_per_tm + state + rate.max(0.0) / tms / w.cpu.records_per_core_s).min(cfg.tm_cpu_cores())
}

/// Steady-state p95 latency (ms) at utilisation `u` without backlog.
pub fn steady_latency_ms(u: f64, w: &WorkloadParams) -> f64 {
    let u = u.clamp(0.0, 0.99);
    w.latency.base_ms + w.latency.queueing_ms * u / (1.0 - u)
}

/// Seconds from the failure until the job processes again (stall until detection, restart).
pub fn outage_s(common: &CommonParams, w: &WorkloadParams) -> f64 {
    common.heartbeat_timeout_s + w.recovery.restart_s
}

/// Recovery time after a failure injected `failure_before_checkpoint_s` before a checkpoint, as
/// upstream measures it (detection and anomaly-detector delay included), censored.
///
/// The job replays what arrived since its last checkpoint plus what arrived during the outage,
/// draining it with the headroom `catchup · capacity − rate`.
pub fn recovery_s(cfg: &JobConfig, rate: f64, common: &CommonParams, w: &WorkloadParams) -> f64 {
    let cap = capacity(cfg, w) * w.recovery.catchup_factor;
    let outage = outage_s(common, w);
    let k = cfg.checkpoint_interval_ms as f64 / 1000.0;
    let since_checkpoint = (k - common.failure_before_checkpoint_s).max(0.0);
    if rate >= cap {
        return common.recovery_censor_s;
    }
    let catch_up = rate.max(0.0) * (since_checkpoint + outage) / (cap - rate.max(0.0));
    let measured = outage + catch_up + w.recovery.detector_margin_s;
    if measured - common.heartbeat_timeout_s > common.recovery_search_s {
        common.recovery_censor_s
    } else {
        measured.min(common.recovery_censor_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::SimParams;

    fn ads() -> (SimParams, WorkloadParams) {
        let p = SimParams::default();
        let w = p.workload("ads").unwrap().clone();
        (p, w)
    }

    #[test]
    fn capacity_grows_with_each_resource() {
        let (_, w) = ads();
        let base =
            JobConfig { parallelism: 8, task_slots: 2, tm_cpu_milli: 1000, ..JobConfig::STATIC_DEFAULT };
        let c0 = capacity(&base, &w);
        assert!(c0 > 0.0);
        assert!(capacity(&JobConfig { parallelism: 16, ..base }, &w) > c0);
        assert!(capacity(&JobConfig { tm_cpu_milli: 2000, ..base }, &w) > c0);
        assert!(capacity(&JobConfig { tm_memory_mb: 1024, ..base }, &w) <= c0);
        assert!(capacity(&JobConfig { checkpoint_interval_ms: 90_000, ..base }, &w) >= c0);
    }

    #[test]
    fn few_key_groups_make_uneven_parallelism_no_better_than_the_next_divisor() {
        let (_, w) = ads();
        assert_eq!(default_key_groups(24), 128);
        assert_eq!(key_group_balance(12, 24), 1.0);
        assert_eq!(key_group_balance(20, 24), 0.6);
        let cfg = |p| JobConfig { parallelism: p, ..JobConfig::STATIC_DEFAULT };
        let c20 = capacity_with_key_groups(&cfg(20), Some(24), &w);
        let c12 = capacity_with_key_groups(&cfg(12), Some(24), &w);
        assert!(c20 < capacity(&cfg(20), &w));
        assert!((c20 / c12 - 1.0).abs() < 0.2, "{c20} vs {c12}");
        assert_eq!(capacity_with_key_groups(&cfg(24), Some(24), &w), capacity(&cfg(24), &w) * 1.125);
        assert_eq!(capacity_with_key_groups(&cfg(16), None, &w), capacity(&cfg(16), &w));
    }

    #[test]
    fn recovery_grows_with_interval_and_load_and_is_censored() {
        let (p, w) = ads();
        let cfg = JobConfig { checkpoint_interval_ms: 10_000, ..JobConfig::STATIC_DEFAULT };
        let cap = capacity(&cfg, &w);
        let r1 = recovery_s(&cfg, 0.2 * cap, &p.common, &w);
        let r2 = recovery_s(&JobConfig { checkpoint_interval_ms: 90_000, ..cfg }, 0.2 * cap, &p.common, &w);
        let r3 = recovery_s(&cfg, 0.6 * cap, &p.common, &w);
        assert!(r1 >= outage_s(&p.common, &w));
        assert!(r2 > r1 && r3 > r1, "{r1} {r2} {r3}");
        assert_eq!(recovery_s(&cfg, 2.0 * cap, &p.common, &w), p.common.recovery_censor_s);
    }
}
