//! `demeter`: the coordinator's own controller, run unmodified against the simulated job.
//!
//! This adapter is as thin as the coordinator's runtime: the agents' batches go through the same
//! [`JobAggregator`], every observation and outcome goes into the same [`Controller`], and its
//! actions become simulator commands. Nothing here reads the simulator's parameters.

use crate::strategy::{Command, StepContext, Strategy};
use demeter_common::JobConfig;
use demeter_core::aggregate::{AggregatorConfig, JobAggregator};
use demeter_core::controller::{Action, Controller, ControllerConfig, Mode, Outcome};

/// The Demeter controller as a simulator strategy.
#[derive(Debug)]
pub struct DemeterStrategy {
    name: String,
    initial: JobConfig,
    cfg: ControllerConfig,
    ctrl: Option<Controller>,
    agg: JobAggregator,
    in_flight: Option<u64>,
    forecast: Option<f64>,
}

impl DemeterStrategy {
    /// `cfg.mode` is forced to `apply`: in the simulator every decision is carried out.
    pub fn new(mut cfg: ControllerConfig, initial: JobConfig, seed: u64) -> Self {
        cfg.mode = Mode::Apply;
        cfg.seed = seed;
        DemeterStrategy {
            name: "demeter".into(),
            initial,
            cfg,
            ctrl: None,
            agg: JobAggregator::new(AggregatorConfig::default()),
            in_flight: None,
            forecast: None,
        }
    }

    /// Renames the strategy (to compare several settings side by side).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The controller, once the run has started.
    pub fn controller(&self) -> Option<&Controller> {
        self.ctrl.as_ref()
    }
}

impl Strategy for DemeterStrategy {
    fn name(&self) -> &str {
        &self.name
    }

    fn initial_config(&self) -> JobConfig {
        self.initial
    }

    fn wants_batches(&self) -> bool {
        true
    }

    fn step(&mut self, ctx: &mut StepContext<'_>) {
        let now = ctx.now;
        let ctrl = match &mut self.ctrl {
            Some(c) => c,
            None => {
                let c = Controller::new(self.cfg.clone(), ctx.current, now)
                    .expect("the simulator's controller configuration is validated by its caller");
                self.ctrl.insert(c)
            }
        };
        for b in ctx.batches {
            // Rejections (duplicates, late batches) are counted by the aggregator.
            let _ = self.agg.handle_batch(now, b);
        }
        if let Some(obs) = self.agg.poll_observation(now) {
            ctrl.handle_observation(now, &obs);
        }
        for o in ctx.reconfig_outcomes {
            if let Some(id) = self.in_flight.take() {
                ctrl.handle_outcome(now, Outcome::ReconfigApplied { id, downtime_s: o.downtime_s });
            }
        }
        for p in ctx.profile_outcomes {
            ctrl.handle_outcome(now, Outcome::ProfileFinished { run_id: p.id, sample: p.sample.clone() });
        }
        if ctrl.poll_timeout().is_some_and(|t| t <= now) {
            ctrl.handle_timeout(now);
        }
        while let Some(a) = ctrl.poll_action() {
            match a {
                Action::Reconfigure(r) => {
                    self.in_flight = Some(r.id);
                    ctx.reconfigure(r.to, r.kind);
                }
                Action::StartProfiling(run) => ctx.commands.push(Command::StartProfile {
                    id: run.run_id,
                    config: run.config,
                    duration_s: run.duration_s,
                    inject_failure_after_s: run.inject_failure_after_s,
                }),
                Action::StopProfiling { run_id } => ctx.commands.push(Command::StopProfile { id: run_id }),
                Action::Recommend(_) => {}
            }
        }
        while ctrl.poll_event().is_some() {}
        self.forecast = ctrl.last_forecast().map(|f| f.decision_peak);
    }

    fn forecast_rate(&self) -> Option<f64> {
        self.forecast
    }
}
