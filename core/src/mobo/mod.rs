//! Multi-objective acquisition for profiling, and the rule that stops profiling.
//!
//! The objectives, total CPU and total memory, are known functions of a configuration; only
//! feasibility is uncertain. Expected hypervolume improvement with deterministic objectives and
//! an uncertain feasibility is therefore exact and cheap:
//!
//! ```text
//! EHVI(x) = P(x feasible) · HVI(f(x) | current feasible Pareto front)
//! ```
//!
//! where `HVI` is the exact two-dimensional hypervolume improvement. The "current feasible front"
//! is made of the candidates the model already deems feasible with probability at least
//! `front_probability`: profiling them would teach nothing about the front. Objectives are
//! normalised so the reference point (1.1 × the largest candidate, as upstream) is `(1, 1)`: an
//! acquisition value is then a fraction of the reference box.
//!
//! **Batches.** Up to `max_concurrent` runs are chosen greedily by their expected *joint*
//! improvement: a run's value is its EHVI averaged over which of the runs already chosen turn out
//! feasible (all `2^k` outcomes enumerated, feasibilities taken as independent), so a batch does
//! not spend two runs on the same gap of the front. Every run must fit the remaining resource
//! budget, and no configuration is profiled again at a rate within `similar_rate` of one it was
//! already measured at.
//!
//! **Stopping rule** (upstream has none and profiles all day, costing it 12–17 % extra CPU):
//! profiling stops when either
//! 1. the largest acquisition value is below `stop_threshold` (no candidate can improve the
//!    feasible front by that fraction of the reference box, in expectation), or
//! 2. the cheapest candidate feasible with probability ≥ `p_stop` has no cheaper candidate whose
//!    feasibility is still uncertain (probability in `[p_uncertain_low, p_stop)`).
//!
//! A model that is still prior-only never stops; with fewer than `n_init` profiling samples it
//! runs an initial space-filling design (seeded) instead of the acquisition, as upstream's Sobol
//! step does.

use crate::obs::{PerfSample, SampleOrigin};
use crate::perf::{Criteria, PerfModel, Prediction};
use demeter_common::{Constraints, JobConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How profiling runs are chosen, and when profiling stops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfilingPolicy {
    /// Profiling runs at the same time.
    pub max_concurrent: usize,
    /// Total CPU cores all concurrent profiling runs may use.
    pub budget_cpu: f64,
    /// Total memory (MiB) all concurrent profiling runs may use.
    pub budget_memory_mb: u64,
    /// Stop when the best acquisition value (a fraction of the reference box) is below this.
    pub stop_threshold: f64,
    /// Stop when the cheapest candidate this likely feasible has no uncertain cheaper rival.
    pub p_stop: f64,
    /// Feasibility probabilities below this count as settled (infeasible), not uncertain.
    pub p_uncertain_low: f64,
    /// Candidates at least this likely feasible make up the current feasible front.
    pub front_probability: f64,
    /// A configuration measured at a rate within this relative distance is not profiled again.
    pub similar_rate: f64,
    /// Profiling samples before the acquisition takes over from the initial design.
    pub n_init: usize,
    /// Lifetime of a profiling run (s); measurements are taken at its end.
    pub duration_s: u32,
    /// Inject a failure at this age and measure the recovery time.
    pub inject_failure_after_s: Option<u32>,
}

impl Default for ProfilingPolicy {
    fn default() -> Self {
        ProfilingPolicy {
            max_concurrent: 2,
            // Upstream's budget is what the cluster has left (50 cores, 430 GB); a quarter of a
            // 24-core, 96 GiB job's quota is a more modest default.
            budget_cpu: 12.0,
            budget_memory_mb: 49_152,
            stop_threshold: 0.005,
            p_stop: 0.9,
            p_uncertain_low: 0.1,
            front_probability: 0.9,
            similar_rate: 0.1,
            n_init: 3,
            duration_s: 180,
            inject_failure_after_s: Some(180),
        }
    }
}

/// Configurations to profile next, or the decision to stop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProfilingPlan {
    /// Configurations with their acquisition values (−1 for the initial design).
    pub configs: Vec<(JobConfig, f64)>,
    pub stop: bool,
    pub reason: String,
}

/// Hypervolume (area) dominated by `points` (both objectives minimised) and bounded by
/// `reference`; points not strictly better than the reference in both objectives add nothing.
pub fn hypervolume_2d(points: &[[f64; 2]], reference: [f64; 2]) -> f64 {
    let mut pts: Vec<[f64; 2]> =
        points.iter().copied().filter(|p| p[0] < reference[0] && p[1] < reference[1]).collect();
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    let mut area = 0.0;
    let mut prev_y = reference[1];
    for p in pts {
        if p[1] < prev_y {
            area += (reference[0] - p[0]) * (prev_y - p[1]);
            prev_y = p[1];
        }
    }
    area
}

/// Exact hypervolume improvement of adding `point` to `front`.
pub fn hvi_2d(point: [f64; 2], front: &[[f64; 2]], reference: [f64; 2]) -> f64 {
    if !(point[0] < reference[0] && point[1] < reference[1]) {
        return 0.0;
    }
    // Only the part of the box [point, reference] not dominated by the front is new: sweep the
    // front points that intersect that box.
    let inside: Vec<[f64; 2]> = front
        .iter()
        .filter(|q| q[0] < reference[0] && q[1] < reference[1])
        .map(|q| [q[0].max(point[0]), q[1].max(point[1])])
        .collect();
    let box_area = (reference[0] - point[0]) * (reference[1] - point[1]);
    let covered = hypervolume_2d(&inside, reference);
    (box_area - covered).max(0.0)
}

/// Expected hypervolume improvement of a candidate with known objectives `point` that is
/// feasible with probability `p_feasible` (exact: the objectives are deterministic).
pub fn ehvi_2d(point: [f64; 2], front: &[[f64; 2]], reference: [f64; 2], p_feasible: f64) -> f64 {
    p_feasible.clamp(0.0, 1.0) * hvi_2d(point, front, reference)
}

/// Non-dominated subset of `points` (minimisation).
pub fn pareto_front(points: &[[f64; 2]]) -> Vec<[f64; 2]> {
    let mut pts = points.to_vec();
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    let mut out: Vec<[f64; 2]> = Vec::new();
    for p in pts {
        if out.last().is_none_or(|q| p[1] < q[1]) {
            out.push(p);
        }
    }
    out
}

/// Normalised objectives of the candidates: the reference point is `(1, 1)`.
fn objectives(candidates: &[JobConfig]) -> Vec<[f64; 2]> {
    let max_cpu = candidates.iter().map(|c| c.total_cpu()).fold(0.0, f64::max).max(1e-9) * 1.1;
    let max_mem = candidates.iter().map(|c| c.total_memory_mb() as f64).fold(0.0, f64::max).max(1e-9) * 1.1;
    candidates.iter().map(|c| [c.total_cpu() / max_cpu, c.total_memory_mb() as f64 / max_mem]).collect()
}

/// Whether `c` was already measured at a rate within `tolerance` of `rate`.
fn measured_near(c: &JobConfig, rate: f64, already: &[PerfSample], tolerance: f64) -> bool {
    let tol = (1.0 + tolerance.max(0.0)).ln();
    already.iter().any(|s| {
        s.config == *c && s.offered_rate > 0.0 && (s.offered_rate / rate.max(1e-9)).ln().abs() <= tol
    })
}

/// Value of adding candidate `x` (objectives `o`, probability `p`) to the batch `chosen`:
/// its EHVI averaged over the feasibility outcomes of the chosen runs.
fn batch_value(
    o: [f64; 2],
    p: f64,
    front: &[[f64; 2]],
    chosen: &[([f64; 2], f64)],
    rng: &mut ChaCha8Rng,
) -> f64 {
    const REF: [f64; 2] = [1.0, 1.0];
    if p <= 0.0 {
        return 0.0;
    }
    let k = chosen.len();
    if k == 0 {
        return ehvi_2d(o, front, REF, p);
    }
    let mut aug = front.to_vec();
    if k <= 6 {
        let mut total = 0.0;
        for mask in 0u32..(1 << k) {
            let mut prob = 1.0;
            aug.truncate(front.len());
            for (j, (oj, pj)) in chosen.iter().enumerate() {
                if mask & (1 << j) != 0 {
                    prob *= pj;
                    aug.push(*oj);
                } else {
                    prob *= 1.0 - pj;
                }
            }
            if prob > 0.0 {
                total += prob * hvi_2d(o, &aug, REF);
            }
        }
        p * total
    } else {
        const DRAWS: usize = 256;
        let mut total = 0.0;
        for _ in 0..DRAWS {
            aug.truncate(front.len());
            for (oj, pj) in chosen {
                if rng.random::<f64>() < *pj {
                    aug.push(*oj);
                }
            }
            total += hvi_2d(o, &aug, REF);
        }
        p * total / DRAWS as f64
    }
}

/// Chooses the next profiling runs at offered rate `rate`, or says profiling can stop.
pub fn suggest_profiles(
    model: &PerfModel,
    candidates: &[JobConfig],
    already: &[PerfSample],
    rate: f64,
    constraints: &Constraints,
    policy: &ProfilingPolicy,
    rng_seed: u64,
) -> ProfilingPlan {
    let mut rng = ChaCha8Rng::seed_from_u64(rng_seed);
    let fits = |c: &JobConfig, cpu: f64, mem: u64| c.total_cpu() <= cpu + 1e-9 && c.total_memory_mb() <= mem;
    let eligible: Vec<usize> = (0..candidates.len())
        .filter(|&i| {
            let c = &candidates[i];
            fits(c, policy.budget_cpu, policy.budget_memory_mb)
                && !measured_near(c, rate, already, policy.similar_rate)
        })
        .collect();
    let n_profiled = already.iter().filter(|s| s.origin == SampleOrigin::Profiling).count();
    if candidates.is_empty() || policy.max_concurrent == 0 {
        return ProfilingPlan {
            configs: Vec::new(),
            stop: true,
            reason: "no candidates or no concurrency".into(),
        };
    }
    if model.is_prior_only() || n_profiled < policy.n_init {
        return initial_design(model, candidates, &eligible, policy, &mut rng, n_profiled);
    }
    let crit = Criteria { constraints: *constraints, ..model.default_criteria() };
    let preds: Vec<Prediction> = model.predict_many_with(candidates, rate, &crit);
    let obj = objectives(candidates);
    let front_pts: Vec<[f64; 2]> = (0..candidates.len())
        .filter(|&i| preds[i].p_feasible >= policy.front_probability)
        .map(|i| obj[i])
        .collect();
    let front = pareto_front(&front_pts);
    let acq: Vec<f64> =
        (0..candidates.len()).map(|i| ehvi_2d(obj[i], &front, [1.0, 1.0], preds[i].p_feasible)).collect();
    let best_acq = eligible.iter().map(|&i| acq[i]).fold(0.0, f64::max);

    // Stopping rule 1: nothing left worth the run.
    if best_acq < policy.stop_threshold {
        return ProfilingPlan {
            configs: Vec::new(),
            stop: true,
            reason: format!(
                "best expected hypervolume improvement {best_acq:.4} of the reference box is below the threshold {}",
                policy.stop_threshold
            ),
        };
    }
    // Stopping rule 2: a confident incumbent and no uncertain cheaper rival.
    let cost = |i: usize| obj[i][0] + obj[i][1];
    let incumbent = (0..candidates.len())
        .filter(|&i| preds[i].p_feasible >= policy.p_stop)
        .min_by(|&a, &b| cost(a).total_cmp(&cost(b)).then(a.cmp(&b)));
    if let Some(inc) = incumbent {
        let rivals = (0..candidates.len())
            .filter(|&i| cost(i) < cost(inc))
            .filter(|&i| (policy.p_uncertain_low..policy.p_stop).contains(&preds[i].p_feasible))
            .count();
        if rivals == 0 {
            return ProfilingPlan {
                configs: Vec::new(),
                stop: true,
                reason: format!(
                    "{} is feasible with probability {:.3} ≥ {} and no cheaper candidate is uncertain",
                    candidates[inc], preds[inc].p_feasible, policy.p_stop
                ),
            };
        }
    }

    // Greedy batch by expected joint improvement, within the budget.
    let mut chosen: Vec<(usize, f64)> = Vec::new();
    let (mut cpu_left, mut mem_left) = (policy.budget_cpu, policy.budget_memory_mb);
    while chosen.len() < policy.max_concurrent {
        let batch: Vec<([f64; 2], f64)> =
            chosen.iter().map(|&(i, _)| (obj[i], preds[i].p_feasible)).collect();
        let mut best: Option<(usize, f64)> = None;
        for &i in &eligible {
            if chosen.iter().any(|&(j, _)| j == i)
                || !fits(&candidates[i], cpu_left, mem_left)
                || acq[i] <= 0.0
            {
                continue;
            }
            let v = batch_value(obj[i], preds[i].p_feasible, &front, &batch, &mut rng);
            if best.is_none_or(|(b, bv)| v > bv || (v == bv && cost(i) < cost(b))) {
                best = Some((i, v));
            }
        }
        match best {
            Some((i, v)) if v > 0.0 && (chosen.is_empty() || v >= policy.stop_threshold) => {
                cpu_left -= candidates[i].total_cpu();
                mem_left -= candidates[i].total_memory_mb();
                chosen.push((i, v));
            }
            _ => break,
        }
    }
    let reason = format!(
        "{} run(s) by expected hypervolume improvement × P(feasible); best {best_acq:.4}, {} candidate(s) on the feasible front",
        chosen.len(),
        front.len()
    );
    ProfilingPlan {
        configs: chosen.into_iter().map(|(i, v)| (candidates[i], v)).collect(),
        stop: false,
        reason,
    }
}

/// The initial design: spread-out configurations (greedy max–min distance in the model's
/// feature space from a seeded random start and from what was already profiled), within budget.
fn initial_design(
    model: &PerfModel,
    candidates: &[JobConfig],
    eligible: &[usize],
    policy: &ProfilingPolicy,
    rng: &mut ChaCha8Rng,
    n_profiled: usize,
) -> ProfilingPlan {
    let feats = &model.config().features;
    let f: Vec<[f64; 5]> = candidates.iter().map(|c| feats.features(c)).collect();
    let dist = |a: &[f64; 5], b: &[f64; 5]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>();
    let mut chosen: Vec<usize> = Vec::new();
    let (mut cpu_left, mut mem_left) = (policy.budget_cpu, policy.budget_memory_mb);
    let want = policy.max_concurrent.min(policy.n_init.saturating_sub(n_profiled).max(1));
    while chosen.len() < want {
        let pool: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|i| !chosen.contains(i))
            .filter(|&i| {
                candidates[i].total_cpu() <= cpu_left + 1e-9 && candidates[i].total_memory_mb() <= mem_left
            })
            .collect();
        if pool.is_empty() {
            break;
        }
        let pick = if chosen.is_empty() {
            pool[rng.random_range(0..pool.len())]
        } else {
            *pool
                .iter()
                .max_by(|&&a, &&b| {
                    let da = chosen.iter().map(|&c| dist(&f[a], &f[c])).fold(f64::INFINITY, f64::min);
                    let db = chosen.iter().map(|&c| dist(&f[b], &f[c])).fold(f64::INFINITY, f64::min);
                    da.total_cmp(&db).then(b.cmp(&a))
                })
                .expect("non-empty pool")
        };
        cpu_left -= candidates[pick].total_cpu();
        mem_left -= candidates[pick].total_memory_mb();
        chosen.push(pick);
    }
    let reason = if model.is_prior_only() {
        format!("initial design: the model is prior-only ({} usable samples)", model.n_samples())
    } else {
        format!("initial design: {n_profiled} of {} profiling samples", policy.n_init)
    };
    ProfilingPlan {
        configs: chosen.into_iter().map(|i| (candidates[i], -1.0)).collect(),
        stop: false,
        reason,
    }
}

#[cfg(test)]
mod tests;
