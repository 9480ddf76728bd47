//! `demeter-coordinator simulate`: runs sizing strategies side by side on a simulated Flink job
//! that replays a workload trace, and writes a summary, per-second CSV series and plots.

use clap::Args;
use demeter_common::JobConfig;
use demeter_core::controller::ControllerConfig;
use demeter_sim::strategies::demeter::DemeterStrategy;
use demeter_sim::strategies::demeter_upstream::DemeterUpstream;
use demeter_sim::{SimOptions, SimParams, SimReport, Strategy, StrategyRun, Trace};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Every strategy `--strategies all` runs, in table order.
pub const ALL_STRATEGIES: [&str; 7] =
    ["static", "hpa", "operator", "operator-defaults", "demeter-upstream", "demeter", "oracle"];

/// Compare sizing strategies on a simulated Flink job that replays a workload trace.
///
/// The job is calibrated on real measurements (`sim/calibration/default.toml`). Every strategy
/// runs on the same trace with the same noise seed; all but `oracle` see only what their metrics
/// and profiling runs show. `demeter` is this project's controller, driven through the same
/// aggregation path as in production.
///
/// Writes DIR/summary.json, DIR/<strategy>.csv (one row per simulated second) and, unless
/// --no-plots, DIR/rate.png, DIR/resources.png and DIR/latency.png.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// A `timestamp|value` trace at 1 s steps; values are per generator (replayed ×3 with up to
    /// 10 % noise, as upstream).
    #[arg(long, value_name = "FILE", default_value = "datasets/CARS_3D_1S_4_sub_35K_max.csv")]
    pub workload: PathBuf,
    /// Comma-separated strategies, or `all`: static, hpa, operator, operator-defaults,
    /// demeter-upstream, demeter, oracle.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    pub strategies: Vec<String>,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR", default_value = "out/simulate")]
    pub out: PathBuf,
    /// Seed of the input noise, the metrics' noise and every strategy's randomness.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Simulate only the first part of the trace (e.g. `1h`, `90m`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Calibrated parameter set to use: `cars` or `ads` (default: from the file name, else `cars`).
    #[arg(long, value_name = "NAME")]
    pub params_set: Option<String>,
    /// A simulator parameter file (TOML) instead of the embedded calibration.
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
    /// The coordinator's controller settings for `demeter` (TOML, `[controller]` keys of `run`).
    #[arg(long, value_name = "FILE")]
    pub controller_config: Option<PathBuf>,
    /// Skip the PNG plots.
    #[arg(long)]
    pub no_plots: bool,
    /// Print summary.json to stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// Builds a strategy by name.
pub fn build_strategy(
    name: &str,
    prepared: &demeter_sim::Prepared,
    controller: &ControllerConfig,
    seed: u64,
) -> Option<Box<dyn Strategy + Send>> {
    match name {
        "demeter" => {
            Some(Box::new(DemeterStrategy::new(controller.clone(), JobConfig::STATIC_DEFAULT, seed)))
        }
        "demeter-upstream" => Some(Box::new(DemeterUpstream::new(seed))),
        other => demeter_sim::strategies::build(other, prepared),
    }
}

pub fn main(args: SimulateArgs) -> ExitCode {
    let started = Instant::now();
    let trace = match Trace::load(&args.workload) {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let params = match &args.params {
        Some(p) => match SimParams::load(p) {
            Ok(p) => p,
            Err(e) => return fail(format!("{}: {e}", p.display())),
        },
        None => SimParams::default(),
    };
    let controller = match &args.controller_config {
        Some(p) => match std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str::<ControllerConfig>(&t).map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(e) => return fail(format!("{}: {e}", p.display())),
        },
        None => ControllerConfig::default(),
    };
    if let Err(e) = controller.validate() {
        return fail(e);
    }
    let workload = args.params_set.clone().or_else(|| {
        let key = trace.workload.clone();
        params.workloads.contains_key(&key).then_some(key)
    });
    let workload = workload.unwrap_or_else(|| {
        eprintln!(
            "note: no parameter set named after {}; using `cars` (choose with --params-set)",
            trace.name
        );
        "cars".to_string()
    });
    let opts = SimOptions {
        params,
        seed: args.seed,
        workload: Some(workload),
        duration_s: args.duration.map(|d| d.as_secs()),
        record_series: true,
        ..SimOptions::default()
    };
    let prepared = match demeter_sim::prepare(&trace, &opts) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let names: Vec<String> = if args.strategies.iter().any(|s| s == "all") {
        ALL_STRATEGIES.iter().map(|s| s.to_string()).collect()
    } else {
        args.strategies.clone()
    };
    if !names.iter().any(|n| n == "static") {
        // Ratios are relative to static: it always runs (and is cheap).
        eprintln!("note: adding `static`, the reference of every ratio");
    }
    let mut names = names;
    if !names.iter().any(|n| n == "static") {
        names.insert(0, "static".into());
    }
    let mut strategies = Vec::new();
    for n in &names {
        match build_strategy(n, &prepared, &controller, args.seed) {
            Some(s) => strategies.push(s),
            None => {
                return fail(format!("unknown strategy `{n}`: allowed all or {}", ALL_STRATEGIES.join(", ")));
            }
        }
    }

    let total = demeter_sim::OracleView::len_s(&prepared);
    let bars = MultiProgress::new();
    if args.json {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style =
        ProgressStyle::with_template("{prefix:>18} {bar:40.cyan/blue} {percent:>3}% {elapsed:>4} {msg}")
            .expect("static template")
            .progress_chars("█▉▊▋▌▍▎▏ ");
    // One thread per strategy; the prepared run is shared read-only.
    let runs: Vec<StrategyRun> = std::thread::scope(|scope| {
        let handles: Vec<_> = strategies
            .into_iter()
            .map(|mut s| {
                let bar = bars.add(ProgressBar::new(total));
                bar.set_style(style.clone());
                bar.set_prefix(s.name().to_string());
                let prepared = &prepared;
                scope.spawn(move || {
                    let mut last = 0;
                    let run = demeter_sim::run_one(prepared, s.as_mut(), &mut |done, _| {
                        if done >= last + 600 || done == total {
                            bar.set_position(done);
                            last = done;
                        }
                    });
                    bar.finish_with_message("done");
                    run
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a strategy thread panicked")).collect()
    });
    let report = demeter_sim::report(&prepared, runs);

    if let Err(e) = write_outputs(&args.out, &report, !args.no_plots) {
        return fail(format!("writing to {}: {e}", args.out.display()));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary_json(&report)).expect("plain data"));
    } else {
        print_table(&report);
        println!(
            "\n{} simulated seconds × {} strategies in {:.1} s; results in {}",
            report.duration_s,
            report.strategies.len(),
            started.elapsed().as_secs_f64(),
            args.out.display()
        );
    }
    ExitCode::SUCCESS
}

/// `summary.json`: `{"workload", "seed", "duration_s", "strategies": {name: {figures…}}}`.
pub fn summary_json(report: &SimReport) -> serde_json::Value {
    let mut strategies = serde_json::Map::new();
    for r in &report.strategies {
        strategies.insert(r.summary.strategy.clone(), serde_json::to_value(&r.summary).expect("plain data"));
    }
    serde_json::json!({
        "workload": report.trace,
        "parameters": report.workload,
        "seed": report.seed,
        "duration_s": report.duration_s,
        "strategies": strategies,
    })
}

fn write_outputs(dir: &Path, report: &SimReport, plots: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(&summary_json(report))?)?;
    for r in &report.strategies {
        let f = std::fs::File::create(dir.join(format!("{}.csv", r.summary.strategy)))?;
        r.write_series_csv(std::io::BufWriter::new(f))?;
        let events = serde_json::json!({
            "reconfigurations": r.reconfigurations,
            "profiles": r.profiles,
            "failures": r.failures,
        });
        std::fs::write(
            dir.join(format!("{}.events.json", r.summary.strategy)),
            serde_json::to_string_pretty(&events)?,
        )?;
    }
    if plots {
        crate::plot::write_all(dir, report)?;
    }
    Ok(())
}

fn print_table(report: &SimReport) {
    println!("\n{} ({} s simulated, seed {})\n", report.trace, report.duration_s, report.seed);
    println!(
        "| {:<18} | {:>5} | {:>6} | {:>9} | {:>7} | {:>9} | {:>8} | {:>10} |",
        "strategy", "CPU", "memory", "p95 (ms)", ">5 s %", "mean lag", "reconfig", "profiling"
    );
    println!(
        "|{:-<20}|{:->7}|{:->8}|{:->11}|{:->9}|{:->11}|{:->10}|{:->12}|",
        "", "", "", "", "", "", "", ""
    );
    for r in &report.strategies {
        let s = &r.summary;
        println!(
            "| {:<18} | {:>5.2} | {:>6.2} | {:>9.0} | {:>7.2} | {:>9.0} | {:>8} | {:>9.1} % |",
            s.strategy,
            s.cpu_ratio,
            s.memory_ratio,
            s.mean_p95_latency_ms,
            s.pct_seconds_latency_over_5s,
            s.mean_lag,
            s.reconfigurations,
            100.0 * s.profiling_cpu_overhead
        );
    }
    println!("\nCPU and memory: core-hours and GB-hours relative to `static`, profiling included.");
}
