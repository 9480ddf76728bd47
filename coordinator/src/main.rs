//! `demeter-coordinator`: see `--help` for the subcommands.

use clap::{Parser, Subcommand};
use demeter_coordinator::cmd;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "demeter-coordinator",
    version,
    about = "Demeter: proactive, resource-efficient autoscaling of Flink jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the coordinator: ingest metrics from NATS, decide per job, serve the API.
    Run(Box<cmd::run::RunArgs>),
    /// Print the agents' metric batches from NATS as JSON lines.
    Tail(Box<cmd::tail::TailArgs>),
    /// Evaluate the workload forecasters on a trace (under-forecast rate, over-provision, WAPE).
    ForecastEval(cmd::forecast_eval::ForecastEvalArgs),
    /// Compare sizing strategies on a simulated Flink job replaying a workload trace.
    Simulate(Box<cmd::simulate::SimulateArgs>),
    /// Fit the simulator to profiling measurements and evaluate it on unseen ones.
    Calibrate(Box<cmd::calibrate::CalibrateArgs>),
    /// Time full decisions (forecast, model fit on N observations, scoring every candidate).
    BenchDecision(cmd::bench::BenchDecisionArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => cmd::run::main(*a),
        Command::Tail(a) => cmd::tail::main(*a),
        Command::ForecastEval(a) => cmd::forecast_eval::main(a),
        Command::Simulate(a) => cmd::simulate::main(*a),
        Command::Calibrate(a) => cmd::calibrate::main(*a),
        Command::BenchDecision(a) => cmd::bench::main(a),
    }
}
