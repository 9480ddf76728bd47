//! `demeter-coordinator bench-decision`: times full decisions as the controller makes them.

use clap::Args;
use std::process::ExitCode;

/// Time full decisions: a forecaster update, a warm refit of the performance models on N
/// observations, and the scoring of every candidate of the default search space (840).
///
/// Prints p50 and p99 over the iterations (plus the cold first fit and a per-phase breakdown).
/// Run it on an idle machine: it measures wall-clock time on one thread.
#[derive(Debug, Args)]
pub struct BenchDecisionArgs {
    /// Training observations (profiling and production samples) the models are fitted on.
    #[arg(long, default_value_t = 500)]
    pub observations: usize,
    /// Decisions to time.
    #[arg(long, default_value_t = 100)]
    pub iterations: usize,
    /// Seed of the synthetic job the observations come from.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn main(args: BenchDecisionArgs) -> ExitCode {
    if !(1..=100_000).contains(&args.observations) {
        eprintln!("error: invalid value {} for `--observations`: allowed 1..=100000", args.observations);
        return ExitCode::from(2);
    }
    if !(1..=100_000).contains(&args.iterations) {
        eprintln!("error: invalid value {} for `--iterations`: allowed 1..=100000", args.iterations);
        return ExitCode::from(2);
    }
    let r = demeter_core::decide::bench_decision(args.observations, args.iterations, args.seed);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r).expect("plain data"));
    } else {
        println!(
            "{} decisions over {} candidates with {} observations: p50 {:.1} ms, p99 {:.1} ms (cold first fit {:.1} ms; forecast {:.2} ms, fit {:.1} ms, decide {:.1} ms on average)",
            r.iterations,
            r.n_candidates,
            r.n_observations,
            r.p50_ms,
            r.p99_ms,
            r.cold_fit_ms,
            r.forecast_ms,
            r.fit_ms,
            r.decide_ms
        );
    }
    ExitCode::SUCCESS
}
