//! `demeter-coordinator`: see `--help` for the subcommands.

use clap::{Parser, Subcommand};
use demeter_coordinator::cmd;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "demeter-coordinator", version, about = "Demeter: proactive, resource-efficient autoscaling of Flink jobs")]
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
    // other subcommands: simulate, calibrate, forecast-eval, bench-decision
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => cmd::run::main(*a),
        Command::Tail(a) => cmd::tail::main(*a),
        // other subcommands
    }
}
