//! Choosing the production configuration, with an explanation.
//!
//! Every admissible candidate (in the search space and within the quota) is predicted at the
//! forecast peak and classified:
//! - **feasible**: its upper-confidence constraints hold, i.e. the lower end of its capacity band
//!   covers `capacity_margin × peak` and the upper ends of its latency and recovery bands (taken
//!   at the pessimistic utilisation, see [`crate::perf`]) are within the constraints;
//! - **infeasible**: predicted to fail, `P(feasible) < fail_probability`;
//! - **uncertain**: neither.
//!
//! The current configuration is scored the same way, except that it is **failing** when the job
//! is observed lagging or violating its latency bound, or no longer admissible.
//!
//! [`Score`] orders configurations: by class (feasible < uncertain < infeasible < failing),
//! then within feasible and uncertain by resource cost (normalised CPU and memory, known
//! exactly), within infeasible and failing by the lower end of the capacity band (higher is
//! safer). The rules:
//!
//! 1. **Never switch to a configuration scored worse than the current one** (upstream switches
//!    even then). Every switch below goes to a strictly better score.
//! 2. If the current configuration is failing or predicted to fail, switch to the cheapest
//!    feasible candidate, whatever it costs; if none is confidently feasible, to the *safest*
//!    admissible one (largest capacity lower bound).
//! 3. Otherwise switch only to a cheaper feasible candidate whose saving, net of the
//!    reconfiguration's cost, is at least `min_saving` (hysteresis). The cost of a switch is the
//!    time the job is down (`downtime_cost_s`: a full savepoint-and-restart, or an in-place
//!    rescale when only the parallelism changes) plus the time the candidate needs to drain the
//!    backlog built up meanwhile at its pessimistic capacity, as a fraction of the time the
//!    decision is expected to hold (`horizon_s`). A candidate that cannot drain that backlog
//!    within `catch_up_s` is not switched to.
//! 4. A model that is still prior-only keeps the current configuration unless it is failing.

mod bench;

pub use bench::{BenchReport, bench_decision, bench_decision_with_clock};

use crate::perf::{Criteria, PerfModel, Prediction};
use demeter_common::{Constraints, JobConfig, Quota, SearchSpace};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// How long a reconfiguration takes the job down.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DowntimeCost {
    /// Stop with savepoint and restart with new pods (s).
    pub restart_s: f64,
    /// Parallelism-only change applied in place by the adaptive scheduler (s).
    pub in_place_s: f64,
}

impl Default for DowntimeCost {
    fn default() -> Self {
        DowntimeCost { restart_s: 60.0, in_place_s: 15.0 }
    }
}

/// Relative weights of CPU and memory in the cost of a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostWeights {
    pub cpu: f64,
    pub memory: f64,
}

impl Default for CostWeights {
    fn default() -> Self {
        CostWeights { cpu: 1.0, memory: 1.0 }
    }
}

/// How decisions are made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecideConfig {
    /// A switch to save resources must save at least this fraction, net of its cost.
    pub min_saving: f64,
    /// Width of the confidence bands the constraints are checked against (standard deviations).
    pub confidence_z: f64,
    /// Capacity must cover the forecast peak times this.
    pub capacity_margin: f64,
    /// The current configuration is predicted to fail below this probability of feasibility.
    pub fail_probability: f64,
    pub downtime_cost_s: DowntimeCost,
    /// How long a decision is expected to hold (s): what a switch's cost is spread over.
    pub horizon_s: f64,
    /// A candidate must drain the backlog of a reconfiguration within this time (s); the
    /// controller also provisions `lag / catch_up_s` on top of the forecast.
    pub catch_up_s: f64,
    pub cost_weights: CostWeights,
    /// Candidates listed in the explanation.
    pub top_k: usize,
}

impl Default for DecideConfig {
    fn default() -> Self {
        DecideConfig {
            min_saving: 0.10,
            confidence_z: 1.645,
            capacity_margin: 1.1,
            fail_probability: 0.5,
            downtime_cost_s: DowntimeCost::default(),
            horizon_s: 1_800.0,
            catch_up_s: 300.0,
            cost_weights: CostWeights::default(),
            top_k: 5,
        }
    }
}

/// What the running job shows right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CurrentHealth {
    /// The backlog keeps growing while the job is busy: it cannot keep up.
    pub lagging: bool,
    /// The observed p95 latency exceeds the constraint.
    pub latency_violated: bool,
    pub observed_p95_ms: Option<f64>,
}

/// Why the decision is what it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reason {
    /// Switch: a feasible candidate saves at least `min_saving` net of the switch's cost.
    Cheaper { saving: f64 },
    /// Keep: the best cheaper feasible candidate saves too little.
    SavingBelowThreshold { saving: f64 },
    /// Keep: nothing better.
    NoBetterCandidate,
    /// Switch: the current configuration is predicted to fail at the forecast peak.
    CurrentPredictedToFail { p_feasible: f64 },
    /// Switch: the observed p95 latency violates the constraint.
    LatencyViolated,
    /// Switch: the job cannot keep up with its input.
    Lagging,
    /// Switch: the current configuration is outside the search space or the quota.
    CurrentOutOfBounds,
    /// The current configuration is failing and no candidate is confidently feasible: the safest
    /// admissible configuration (largest capacity lower bound), or stay if it is the current one.
    NoConfidentCandidate,
    /// Keep: the model has too little data to act on.
    InsufficientModel,
    /// Keep: no candidate is in the search space and within the quota.
    NoAdmissibleCandidate,
}

impl Reason {
    /// A stable snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Cheaper { .. } => "cheaper",
            Reason::SavingBelowThreshold { .. } => "saving_below_threshold",
            Reason::NoBetterCandidate => "no_better_candidate",
            Reason::CurrentPredictedToFail { .. } => "current_predicted_to_fail",
            Reason::LatencyViolated => "latency_violated",
            Reason::Lagging => "lagging",
            Reason::CurrentOutOfBounds => "current_out_of_bounds",
            Reason::NoConfidentCandidate => "no_confident_candidate",
            Reason::InsufficientModel => "insufficient_model",
            Reason::NoAdmissibleCandidate => "no_admissible_candidate",
        }
    }

    /// Whether the decision reacts to a (predicted or observed) failure, so that it should not
    /// wait for a rate limit meant for cost-saving moves.
    pub fn is_urgent(&self) -> bool {
        matches!(
            self,
            Reason::CurrentPredictedToFail { .. }
                | Reason::LatencyViolated
                | Reason::Lagging
                | Reason::CurrentOutOfBounds
                | Reason::NoConfidentCandidate
        )
    }
}

/// Feasibility class of a configuration at the forecast peak; lower is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeasibilityClass {
    Feasible,
    Uncertain,
    Infeasible,
    /// Only the current configuration: observed failing, or no longer admissible.
    Failing,
}

/// How good a configuration is for this decision. See the module documentation for the order.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub class: FeasibilityClass,
    /// Normalised resource cost (1 = the whole quota).
    pub cost: f64,
    /// Lower end of the capacity band (records/s).
    pub capacity_lower: f64,
}

impl Score {
    /// Total order: `Less` is better.
    pub fn compare(&self, other: &Score) -> Ordering {
        self.class.cmp(&other.class).then_with(|| match self.class {
            FeasibilityClass::Feasible | FeasibilityClass::Uncertain => self.cost.total_cmp(&other.cost),
            FeasibilityClass::Infeasible | FeasibilityClass::Failing => {
                other.capacity_lower.total_cmp(&self.capacity_lower).then(self.cost.total_cmp(&other.cost))
            }
        })
    }

    pub fn better_than(&self, other: &Score) -> bool {
        self.compare(other) == Ordering::Less
    }
}

/// One configuration as the decision saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredCandidate {
    pub config: JobConfig,
    pub total_cpu: f64,
    pub total_memory_mb: u64,
    pub score: Score,
    pub prediction: Prediction,
}

/// Everything needed to understand a decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The rate the decision provisions for (records/s).
    pub forecast_peak: f64,
    /// `capacity_margin × forecast_peak`.
    pub required_capacity: f64,
    /// Candidates passed in.
    pub n_candidates: usize,
    /// Of which in the search space and within the quota.
    pub n_admissible: usize,
    pub n_feasible: usize,
    pub n_uncertain: usize,
    pub model_samples: usize,
    pub model_prior_only: bool,
    pub health: CurrentHealth,
    pub current: ScoredCandidate,
    /// The best-scored admissible candidates, best first.
    pub top: Vec<ScoredCandidate>,
    pub target: ScoredCandidate,
    /// Relative saving of the target over the current cost, before the switch's cost.
    pub gross_saving: Option<f64>,
    /// Cost of the switch as a fraction of the horizon (downtime plus catch-up).
    pub switch_cost: Option<f64>,
    /// The decision fell back to the safest configuration.
    pub fallback_to_safest: bool,
    pub text: String,
}

/// The outcome of a decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub target: JobConfig,
    /// Whether `target` differs from the current configuration and should be applied.
    pub switch: bool,
    pub reason: Reason,
    pub explanation: Explanation,
}

/// Normalised resource cost: weighted mean of the CPU and memory shares of the quota.
pub fn resource_cost(c: &JobConfig, quota: &Quota, w: &CostWeights) -> f64 {
    let cpu = c.total_cpu() / quota.max_total_cpu.max(1e-9);
    let mem = c.total_memory_mb() as f64 / (quota.max_total_memory_mb.max(1) as f64);
    let total = (w.cpu + w.memory).max(1e-12);
    (w.cpu * cpu + w.memory * mem) / total
}

fn classify(p: &Prediction, peak: f64, constraints: &Constraints, cfg: &DecideConfig) -> FeasibilityClass {
    let confident = p.capacity.lower >= cfg.capacity_margin * peak
        && p.latency_p95_ms.upper <= constraints.latency_p95_ms
        && p.recovery_s.upper <= constraints.recovery_time_s;
    if confident {
        FeasibilityClass::Feasible
    } else if p.p_feasible < cfg.fail_probability {
        FeasibilityClass::Infeasible
    } else {
        FeasibilityClass::Uncertain
    }
}

/// Chooses the configuration to run at `forecast_peak_rate`. See the module documentation.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    model: &PerfModel,
    candidates: &[JobConfig],
    current: &JobConfig,
    forecast_peak_rate: f64,
    current_health: CurrentHealth,
    constraints: &Constraints,
    quota: &Quota,
    space: &SearchSpace,
    cfg: &DecideConfig,
) -> Decision {
    let peak = if forecast_peak_rate.is_finite() { forecast_peak_rate.max(0.0) } else { 0.0 };
    let mut admissible: Vec<JobConfig> =
        candidates.iter().filter(|c| space.contains(c) && quota.admits(c)).copied().collect();
    admissible.sort();
    admissible.dedup();
    let current_admissible = space.contains(current) && quota.admits(current);

    // One batched prediction for every admissible candidate and the current configuration.
    let mut configs = admissible.clone();
    configs.push(*current);
    let crit =
        Criteria { constraints: *constraints, capacity_margin: cfg.capacity_margin, z: cfg.confidence_z };
    let mut preds = model.predict_many_with(&configs, peak, &crit);
    let cur_pred = preds.pop().expect("the current configuration's prediction");
    let scored = |c: &JobConfig, p: Prediction, class: FeasibilityClass| ScoredCandidate {
        config: *c,
        total_cpu: c.total_cpu(),
        total_memory_mb: c.total_memory_mb(),
        score: Score {
            class,
            cost: resource_cost(c, quota, &cfg.cost_weights),
            capacity_lower: p.capacity.lower,
        },
        prediction: p,
    };
    let mut all: Vec<ScoredCandidate> = admissible
        .iter()
        .zip(preds)
        .map(|(c, p)| {
            let class = classify(&p, peak, constraints, cfg);
            scored(c, p, class)
        })
        .collect();
    let trigger = if !current_admissible {
        Some(Reason::CurrentOutOfBounds)
    } else if current_health.lagging {
        Some(Reason::Lagging)
    } else if current_health.latency_violated {
        Some(Reason::LatencyViolated)
    } else {
        None
    };
    let cur_class = if trigger.is_some() {
        FeasibilityClass::Failing
    } else {
        classify(&cur_pred, peak, constraints, cfg)
    };
    let current_sc = scored(current, cur_pred, cur_class);
    // The current configuration as a candidate is represented by `current_sc` alone.
    all.retain(|s| s.config != *current);
    all.sort_by(|a, b| a.score.compare(&b.score).then(a.config.cmp(&b.config)));

    let n_feasible = all.iter().filter(|s| s.score.class == FeasibilityClass::Feasible).count()
        + usize::from(current_sc.score.class == FeasibilityClass::Feasible);
    let n_uncertain = all.iter().filter(|s| s.score.class == FeasibilityClass::Uncertain).count()
        + usize::from(current_sc.score.class == FeasibilityClass::Uncertain);
    let mut ex = Explanation {
        forecast_peak: peak,
        required_capacity: cfg.capacity_margin * peak,
        n_candidates: candidates.len(),
        n_admissible: admissible.len(),
        n_feasible,
        n_uncertain,
        model_samples: model.n_samples(),
        model_prior_only: model.is_prior_only(),
        health: current_health,
        current: current_sc.clone(),
        top: all.iter().take(cfg.top_k).cloned().collect(),
        target: current_sc.clone(),
        gross_saving: None,
        switch_cost: None,
        fallback_to_safest: false,
        text: String::new(),
    };
    let keep = |reason: Reason, mut ex: Explanation, text: String| {
        ex.text = text;
        Decision { target: *current, switch: false, reason, explanation: ex }
    };
    let go = |to: &ScoredCandidate, reason: Reason, mut ex: Explanation, text: String| {
        debug_assert!(to.score.better_than(&ex.current.score));
        ex.target = to.clone();
        ex.text = text;
        Decision { target: to.config, switch: true, reason, explanation: ex }
    };

    if all.is_empty() && !current_admissible {
        let text = format!("no candidate is in the search space and within the quota; keeping {current}");
        return keep(Reason::NoAdmissibleCandidate, ex, text);
    }
    // A prior-only model's predictions are guesses: only an observed failure moves the job.
    let predicted_fail = cur_class == FeasibilityClass::Infeasible && !model.is_prior_only();
    let failing = trigger.clone().or_else(|| {
        predicted_fail
            .then_some(Reason::CurrentPredictedToFail { p_feasible: ex.current.prediction.p_feasible })
    });

    if let Some(why) = failing {
        let cheapest_feasible = all.iter().find(|s| s.score.class == FeasibilityClass::Feasible);
        if let Some(best) = cheapest_feasible.filter(|b| b.score.better_than(&ex.current.score)) {
            let text = format!(
                "{}: switching to the cheapest confidently feasible candidate {} (capacity ≥ {:.0} for a peak of {:.0}, p95 ≤ {:.0} ms, recovery ≤ {:.0} s)",
                why_text(&why, &ex),
                best.config,
                best.prediction.capacity.lower,
                peak,
                best.prediction.latency_p95_ms.upper,
                best.prediction.recovery_s.upper
            );
            let best = best.clone();
            return go(&best, why, ex, text);
        }
        // Nothing confidently feasible: the safest admissible configuration.
        ex.fallback_to_safest = true;
        let safest = all.iter().max_by(|a, b| {
            a.prediction
                .capacity
                .lower
                .total_cmp(&b.prediction.capacity.lower)
                .then(a.prediction.p_feasible.total_cmp(&b.prediction.p_feasible))
                .then(b.score.cost.total_cmp(&a.score.cost))
                .then(b.config.cmp(&a.config))
        });
        return match safest {
            Some(s) if s.score.better_than(&ex.current.score) => {
                let text = format!(
                    "{}; no candidate is confidently feasible at {peak:.0}/s: moving to the safest admissible configuration {} (capacity lower bound {:.0})",
                    why_text(&why, &ex),
                    s.config,
                    s.prediction.capacity.lower
                );
                let s = s.clone();
                go(&s, Reason::NoConfidentCandidate, ex, text)
            }
            _ => {
                let text = format!(
                    "{}; no candidate is confidently feasible and none is safer than the current {current}",
                    why_text(&why, &ex)
                );
                keep(Reason::NoConfidentCandidate, ex, text)
            }
        };
    }

    if model.is_prior_only() {
        let text = format!(
            "the model has {} usable samples and is prior-only; keeping {current} while it is healthy",
            model.n_samples()
        );
        return keep(Reason::InsufficientModel, ex, text);
    }

    // Normal mode: a cheaper feasible candidate, if it is worth its switch.
    let cur_cost = ex.current.score.cost;
    let mut best_saving: Option<(f64, f64, f64)> = None;
    for cand in all.iter().filter(|s| s.score.class == FeasibilityClass::Feasible && s.score.cost < cur_cost)
    {
        let gross = (cur_cost - cand.score.cost) / cur_cost.max(1e-12);
        let downtime = if current.parallelism_only_change(&cand.config) {
            cfg.downtime_cost_s.in_place_s
        } else {
            cfg.downtime_cost_s.restart_s
        };
        let headroom = cand.prediction.capacity.lower - peak;
        let catch_up = if headroom > 0.0 { peak * downtime / headroom } else { f64::INFINITY };
        if catch_up > cfg.catch_up_s {
            continue;
        }
        let switch_cost = (downtime + catch_up) / cfg.horizon_s.max(1.0);
        let net = gross - switch_cost;
        if best_saving.is_none_or(|(n, _, _)| net > n) {
            best_saving = Some((net, gross, switch_cost));
            ex.target = cand.clone();
        }
    }
    match best_saving {
        Some((net, gross, switch_cost)) => {
            ex.gross_saving = Some(gross);
            ex.switch_cost = Some(switch_cost);
            let target = ex.target.clone();
            if net >= cfg.min_saving && target.score.better_than(&ex.current.score) {
                let text = format!(
                    "{} saves {:.1} % of the resources ({:.1} % net of {:.1} % for the switch) and is confidently feasible at {peak:.0}/s",
                    target.config,
                    100.0 * gross,
                    100.0 * net,
                    100.0 * switch_cost
                );
                go(&target, Reason::Cheaper { saving: net }, ex, text)
            } else {
                ex.target = ex.current.clone();
                let text = format!(
                    "the best cheaper feasible candidate {} saves {:.1} % net, below the {:.0} % threshold; keeping {current}",
                    target.config,
                    100.0 * net,
                    100.0 * cfg.min_saving
                );
                keep(Reason::SavingBelowThreshold { saving: net }, ex, text)
            }
        }
        None => {
            let text = format!(
                "no cheaper candidate is confidently feasible at {peak:.0}/s (and worth its switch); keeping {current} ({:?}, P(feasible) {:.2})",
                ex.current.score.class, ex.current.prediction.p_feasible
            );
            keep(Reason::NoBetterCandidate, ex, text)
        }
    }
}

fn why_text(r: &Reason, ex: &Explanation) -> String {
    match r {
        Reason::CurrentPredictedToFail { p_feasible } => format!(
            "the current configuration is predicted to fail at {:.0}/s (P(feasible) {p_feasible:.2})",
            ex.forecast_peak
        ),
        Reason::LatencyViolated => match ex.health.observed_p95_ms {
            Some(p) => format!("observed p95 latency {p:.0} ms violates the constraint"),
            None => "the latency constraint is violated".to_string(),
        },
        Reason::Lagging => "the job cannot keep up with its input".to_string(),
        Reason::CurrentOutOfBounds => {
            "the current configuration is outside the search space or the quota".to_string()
        }
        other => other.label().to_string(),
    }
}

#[cfg(test)]
mod tests;
