//! `demeter-coordinator calibrate`: fits the simulator to profiling measurements and evaluates the
//! fit on measurements it did not see.

use clap::Args;
use demeter_sim::SimParams;
use std::path::PathBuf;
use std::process::ExitCode;

/// Fit the simulator's parameters on profile files and evaluate them on another.
///
/// Profile files use upstream Demeter's CSV format with the `offeredRate` column
/// (`datasets/calibration/*_profiles.csv`). Prints, for the evaluated file, `bottleneck_accuracy`
/// (bottlenecked = p95 latency ≥ 5 s, predicted against measured), `throughput_mape` and
/// `recovery_mae_s`. Evaluate on a run you did not fit on.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// Profile files to fit on (one or more).
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    pub fit: Vec<PathBuf>,
    /// Profile file to evaluate the fitted parameters on.
    #[arg(long, value_name = "FILE")]
    pub evaluate: PathBuf,
    /// Start from these parameters instead of the embedded calibration (TOML).
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
    /// Write the fitted parameters (TOML) to this file.
    #[arg(long, value_name = "FILE")]
    pub write_params: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: CalibrateArgs) -> ExitCode {
    let base = match &args.params {
        Some(p) => match SimParams::load(p) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => SimParams::default(),
    };
    let report = match demeter_sim::calibrate::fit_and_evaluate(&args.fit, &args.evaluate, &base) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(out) = &args.write_params
        && let Err(e) = std::fs::write(out, report.params.to_toml())
    {
        eprintln!("error: writing {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("plain data"));
    } else {
        print!("{}", report.render_text());
    }
    ExitCode::SUCCESS
}
