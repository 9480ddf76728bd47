//! Evaluates the forecasting models on a trace with the protocol of `demeter_core::forecast::eval`.
//!
//! ```text
//! cargo run --release -p demeter-core --example forecast_eval -- --workload datasets/ADS_3D_1S_4_sub_30K_max.csv [--json]
//! cargo run --release -p demeter-core --example forecast_eval -- --synthetic daily_cycle --seed 1 [--json]
//! cargo run --release -p demeter-core --example forecast_eval -- --all [--json] [--config '{"band":{"coverage":0.97}}']
//! ```
//! `--workload` files are scaled by 3 (three generators, as upstream); synthetic traces by 1.
//! `--all` runs both datasets and the three synthetic traces (seed 1, 18 h) and prints Markdown.

use demeter_core::forecast::eval::{self, EvalOptions, EvalReport};
use demeter_core::forecast::{ForecastConfig, SyntheticKind, WorkloadForecaster, synthetic_trace};
use std::time::Instant;

/// A trace to evaluate: its name, its samples and the scale applied to them.
type Job = (String, Vec<(i64, f64)>, f64);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let json = args.iter().any(|a| a == "--json");
    let config: ForecastConfig = match get("--config") {
        Some(c) => serde_json::from_str(&c).unwrap_or_else(|e| panic!("--config: {e}")),
        None => ForecastConfig::default(),
    };
    let seed: u64 = get("--seed").map(|s| s.parse().expect("--seed: integer")).unwrap_or(1);
    let len_s: usize = get("--len").map(|s| s.parse().expect("--len: integer")).unwrap_or(64_800);
    let mut jobs: Vec<Job> = Vec::new();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let load = |path: &str| {
        let text = std::fs::read_to_string(path)
            .or_else(|_| std::fs::read_to_string(format!("{root}/{path}")))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        eval::load_trace(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    if args.iter().any(|a| a == "--all") {
        for f in ["datasets/ADS_3D_1S_4_sub_30K_max.csv", "datasets/CARS_3D_1S_4_sub_35K_max.csv"] {
            jobs.push((f.rsplit('/').next().unwrap().to_string(), load(f), 3.0));
        }
        for k in SyntheticKind::ALL {
            jobs.push((format!("synthetic:{k}:seed{seed}"), synthetic_trace(k, seed, len_s), 1.0));
        }
    }
    if let Some(f) = get("--workload") {
        jobs.push((f.rsplit('/').next().unwrap().to_string(), load(&f), 3.0));
    }
    if let Some(k) = get("--synthetic") {
        let kind: SyntheticKind = k.parse().unwrap_or_else(|e| panic!("{e}"));
        jobs.push((format!("synthetic:{kind}:seed{seed}"), synthetic_trace(kind, seed, len_s), 1.0));
    }
    if jobs.is_empty() {
        eprintln!(
            "usage: forecast_eval (--workload FILE | --synthetic KIND [--seed N] | --all) [--json] [--config JSON]"
        );
        std::process::exit(2);
    }
    let mut reports: Vec<EvalReport> = Vec::new();
    for (name, trace, scale) in &jobs {
        let keep_points = args.iter().any(|a| a == "--points");
        let opts = EvalOptions {
            workload: name.clone(),
            scale: *scale,
            config: config.clone(),
            keep_points,
            ..EvalOptions::default()
        };
        let t = Instant::now();
        let r = eval::run(trace, &opts);
        let elapsed = t.elapsed();
        if !json {
            println!(
                "### {name} (scale ×{scale}, {} samples, eval {:.2} s)\n",
                trace.len(),
                elapsed.as_secs_f64()
            );
            println!("{}", r.to_markdown());
            for m in r.models.iter().filter(|m| m.default) {
                for d in &m.detail {
                    println!(
                        "{:>6} P {:>9.0} F {:>9.0} mean-peak {:>9.0} F/P {:+6.1} % {} {}",
                        (d.t - trace[0].0) / 60,
                        d.real_peak,
                        d.decision_peak,
                        d.peak_mean,
                        100.0 * (d.decision_peak / d.real_peak - 1.0),
                        d.model,
                        if d.real_peak > d.decision_peak { "MISS" } else { "" }
                    );
                }
            }
        }
        reports.push(r);
    }
    if json {
        let out = if reports.len() == 1 {
            serde_json::to_string_pretty(&reports[0])
        } else {
            serde_json::to_string_pretty(&reports)
        };
        println!("{}", out.expect("serialisable"));
    } else {
        // Cost of one observe + forecast on a warmed-up default forecaster.
        let (_, trace, scale) = &jobs[0];
        let mut fc = WorkloadForecaster::new(config.clone());
        let cut = trace.len().saturating_sub(600);
        for &(t, v) in &trace[..cut] {
            fc.observe(t, v * scale);
        }
        let t = Instant::now();
        let mut n = 0u32;
        for &(ts, v) in &trace[cut..] {
            fc.observe(ts, v * scale);
            std::hint::black_box(fc.forecast(ts + 1));
            n += 1;
        }
        println!(
            "one observe + forecast: {:.1} µs on average ({n} calls)",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        let json = serde_json::to_vec(&fc).expect("serialisable").len();
        let msgpack = rmp_serde::to_vec(&fc).expect("serialisable").len();
        println!("forecaster state after the whole trace: {json} B as JSON, {msgpack} B as MessagePack");
    }
}
