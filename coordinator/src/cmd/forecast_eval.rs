//! `demeter-coordinator forecast-eval`: replays a workload trace through every forecasting model
//! with the decision protocol and prints how often each would have under-provisioned.

use clap::Args;
use demeter_core::forecast::eval::{self, EvalOptions};
use demeter_core::forecast::{SyntheticKind, synthetic_trace};
use std::path::PathBuf;
use std::process::ExitCode;

/// Evaluate the workload forecasters on a trace.
///
/// Protocol: a decision point every 600 s after a 2 h warm-up, using only data before each point.
/// Each model forecasts the next 600 s. F = the value a decision uses (peak of the ten 60-s bin
/// means, with the model's buffer or calibrated upper band); P = the real peak of the ten bin
/// means. Reported per model: `under_forecast_rate` (share of points with P > F),
/// `mean_overprovision` (mean of F / P − 1) and `wape` (Σ|forecast bin − real bin| / Σ real bin,
/// without the buffer). The default model is marked.
#[derive(Debug, Args)]
pub struct ForecastEvalArgs {
    /// A `timestamp|value` trace (1 s steps). Values are per generator and multiplied by
    /// `--scale` (3, as upstream replays its traces with three generators).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "datasets/CARS_3D_1S_4_sub_35K_max.csv",
        conflicts_with = "synthetic"
    )]
    pub workload: PathBuf,
    /// Evaluate a generated trace instead: daily_cycle, random_walk or step_changes (18 h, scale 1).
    #[arg(long, value_name = "KIND")]
    pub synthetic: Option<SyntheticKind>,
    /// Seed of the synthetic trace.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Factor applied to the trace's values.
    #[arg(long)]
    pub scale: Option<f64>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: ForecastEvalArgs) -> ExitCode {
    let (name, trace, default_scale) = match args.synthetic {
        Some(kind) => {
            (format!("synthetic:{kind}:seed{}", args.seed), synthetic_trace(kind, args.seed, 64_800), 1.0)
        }
        None => {
            let text = match std::fs::read_to_string(&args.workload) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: cannot read {}: {e}", args.workload.display());
                    return ExitCode::from(2);
                }
            };
            match eval::load_trace(&text) {
                Ok(t) => (args.workload.display().to_string(), t, 3.0),
                Err(e) => {
                    eprintln!("error: {}: {e}", args.workload.display());
                    return ExitCode::from(2);
                }
            }
        }
    };
    let scale = args.scale.unwrap_or(default_scale);
    if !(scale.is_finite() && scale > 0.0) {
        eprintln!("error: invalid value {scale} for `--scale`: allowed > 0");
        return ExitCode::from(2);
    }
    let opts = EvalOptions { workload: name, scale, ..EvalOptions::default() };
    let report = eval::run(&trace, &opts);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("{} ({} samples, ×{scale})\n", report.workload, report.samples);
        print!("{}", report.to_markdown());
    }
    ExitCode::SUCCESS
}
