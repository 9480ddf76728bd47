//! Runs the baseline strategies on a trace and prints their summary figures.
//!
//! ```text
//! cargo run -p demeter-sim --release --example compare -- datasets/CARS_3D_1S_4_sub_35K_max.csv [--seed N] [--json] [--series DIR]
//! ```

use demeter_sim::{SimOptions, Trace, strategies};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut traces = Vec::new();
    let mut seed = 42;
    let mut json = false;
    let mut series: Option<PathBuf> = None;
    let mut names: Vec<String> = strategies::NAMES.iter().map(|s| s.to_string()).collect();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seed" => seed = args.next().ok_or("--seed N")?.parse()?,
            "--json" => json = true,
            "--series" => series = Some(PathBuf::from(args.next().ok_or("--series DIR")?)),
            "--strategies" => {
                names = args.next().ok_or("--strategies a,b")?.split(',').map(str::to_string).collect()
            }
            t => traces.push(PathBuf::from(t)),
        }
    }
    for t in traces {
        let trace = Trace::load(&t)?;
        let opts = SimOptions { seed, record_series: series.is_some(), ..SimOptions::default() };
        let prepared = demeter_sim::prepare(&trace, &opts)?;
        let started = Instant::now();
        let mut runs = Vec::new();
        for n in &names {
            let mut s: Box<dyn demeter_sim::Strategy + Send> = match n.as_str() {
                "demeter" => Box::new(strategies::demeter::DemeterStrategy::new(
                    demeter_core::controller::ControllerConfig::default(),
                    demeter_common::JobConfig::STATIC_DEFAULT,
                    seed,
                )),
                "demeter-upstream" => Box::new(strategies::demeter_upstream::DemeterUpstream::new(seed)),
                _ => strategies::build(n, &prepared).ok_or_else(|| format!("unknown strategy {n}"))?,
            };
            runs.push(demeter_sim::run_one(&prepared, s.as_mut(), &mut |_, _| {}));
        }
        let report = demeter_sim::report(&prepared, runs);
        let elapsed = started.elapsed();
        if let Some(dir) = &series {
            std::fs::create_dir_all(dir)?;
            for r in &report.strategies {
                let f = std::fs::File::create(
                    dir.join(format!("{}_{}.csv", trace.workload, r.summary.strategy)),
                )?;
                r.write_series_csv(f)?;
            }
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
            continue;
        }
        println!(
            "{} (seed {seed}, {} s simulated per strategy, {:.2} s wall)",
            trace.name,
            report.duration_s,
            elapsed.as_secs_f64()
        );
        println!(
            "{:<18} {:>6} {:>6} {:>9} {:>7} {:>9} {:>8} {:>7} {:>7} {:>6} {:>6} {:>7}",
            "strategy",
            "cpu",
            "mem",
            "p95 ms",
            ">5s %",
            "lag",
            "lag/sub",
            "reconf",
            "down s",
            "mean p",
            "TMs",
            "rec s"
        );
        for s in report.summaries() {
            println!(
                "{:<18} {:>6.3} {:>6.3} {:>9.0} {:>7.2} {:>9.0} {:>8.0} {:>7} {:>7.0} {:>6.1} {:>6.1} {:>7.1}",
                s.strategy,
                s.cpu_ratio,
                s.memory_ratio,
                s.mean_p95_latency_ms,
                s.pct_seconds_latency_over_5s,
                s.mean_lag,
                s.mean_lag_per_subtask,
                s.reconfigurations,
                s.downtime_s,
                s.mean_parallelism,
                s.mean_taskmanagers,
                s.mean_recovery_s
            );
        }
    }
    Ok(())
}
