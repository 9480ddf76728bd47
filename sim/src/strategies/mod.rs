//! The strategies Demeter is compared with, each on the same simulated job, trace and seed.
//!
//! - [`StaticStrategy`]: upstream's static baseline, 24 × 1 slot × 1 CPU × 4096 MB, checkpoint 10 s.
//! - [`Hpa`]: Flink reactive mode scaled by a Kubernetes HorizontalPodAutoscaler at 35 % CPU.
//! - [`OperatorAutoscaler`]: the Flink Kubernetes Operator's DS2-style autoscaler, with upstream's
//!   settings (`operator`) or the operator's defaults (`operator-defaults`).
//! - [`Oracle`]: knows the future rate and the true model; the lower bound on resources.
//!
//! Demeter itself (`demeter`, `demeter-upstream`) lives in its own modules.

pub mod demeter;
pub mod demeter_upstream;
pub mod hpa;
pub mod operator;
pub mod oracle;

pub use hpa::{Hpa, HpaOptions};
pub use operator::{OperatorAutoscaler, OperatorOptions, ScaleDownRule};
pub use oracle::{Oracle, OracleOptions};

use crate::strategy::{StepContext, Strategy};
use demeter_common::JobConfig;

/// Never changes its configuration.
#[derive(Clone, Debug)]
pub struct StaticStrategy {
    config: JobConfig,
}

impl StaticStrategy {
    /// Upstream's static baseline.
    pub fn new() -> Self {
        StaticStrategy { config: JobConfig::STATIC_DEFAULT }
    }

    pub fn with_config(config: JobConfig) -> Self {
        StaticStrategy { config }
    }
}

impl Default for StaticStrategy {
    fn default() -> Self {
        Self::new()
    }
}

impl Strategy for StaticStrategy {
    fn name(&self) -> &str {
        "static"
    }
    fn initial_config(&self) -> JobConfig {
        self.config
    }
    fn step(&mut self, _ctx: &mut StepContext<'_>) {}
}

/// The names [`build`] knows.
pub const NAMES: [&str; 5] = ["static", "hpa", "operator", "operator-defaults", "oracle"];

/// Builds one of this module's strategies by name, for the given prepared run (the oracle reads
/// the truth from it). `None` for a name it does not know.
pub fn build(name: &str, prepared: &crate::Prepared) -> Option<Box<dyn Strategy + Send>> {
    Some(match name {
        "static" => Box::new(StaticStrategy::new()),
        "hpa" => Box::new(Hpa::new(HpaOptions::default())),
        "operator" => Box::new(OperatorAutoscaler::new("operator", OperatorOptions::upstream())),
        "operator-defaults" => {
            Box::new(OperatorAutoscaler::new("operator-defaults", OperatorOptions::defaults()))
        }
        "oracle" => {
            Box::new(Oracle::new(prepared, OracleOptions::for_len(crate::OracleView::len_s(prepared))))
        }
        _ => return None,
    })
}
