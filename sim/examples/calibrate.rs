//! Stand-in for `demeter-coordinator calibrate` until the CLI exists.
//!
//! ```text
//! cargo run -p demeter-sim --release --example calibrate -- --fit FILE... --evaluate FILE [--json]
//! cargo run -p demeter-sim --release --example calibrate -- --fit FILE... --write sim/calibration/default.toml
//! cargo run -p demeter-sim --release --example calibrate -- --static-check TRACE [--params FILE] [--json]
//! ```
//!
//! `--fit` fits on upstream's profile files (with `offeredRate`) and on the static baseline's
//! series found in the same directory; `--evaluate` replays a profile file the fit did not see;
//! `--write` writes the fitted parameters of every workload found; `--static-check` runs the
//! simulated `static` strategy on a trace and compares it with the measured static series
//! (`datasets/calibration/<W>_static24_*.csv`, next to the trace's directory).

use demeter_sim::calibrate;
use demeter_sim::{SimParams, Trace};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut fit = Vec::new();
    let mut evaluate = None;
    let mut write = None;
    let mut static_check = Vec::new();
    let mut params_file = None;
    let mut json = false;
    let mut seed = 42u64;
    let mut args = std::env::args().skip(1).peekable();
    while let Some(a) = args.next() {
        let mut many = |v: &mut Vec<PathBuf>| {
            while let Some(x) = args.next_if(|x| !x.starts_with("--")) {
                v.push(PathBuf::from(x));
            }
        };
        match a.as_str() {
            "--fit" => many(&mut fit),
            "--static-check" => many(&mut static_check),
            "--evaluate" => evaluate = Some(PathBuf::from(args.next().ok_or("--evaluate needs a file")?)),
            "--write" => write = Some(PathBuf::from(args.next().ok_or("--write needs a file")?)),
            "--params" => params_file = Some(PathBuf::from(args.next().ok_or("--params needs a file")?)),
            "--seed" => seed = args.next().ok_or("--seed needs a number")?.parse()?,
            "--json" => json = true,
            "-h" | "--help" => {
                println!(
                    "calibrate --fit FILE... [--evaluate FILE] [--write FILE] [--json]\ncalibrate --static-check TRACE... [--params FILE] [--seed N] [--json]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let base = match &params_file {
        Some(p) => SimParams::load(p)?,
        None => SimParams::default(),
    };
    if let Some(e) = &evaluate {
        if fit.is_empty() {
            return Err("--evaluate needs --fit FILE...".into());
        }
        let r = calibrate::fit_and_evaluate(&fit, e, &base)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print!("{}", r.render_text());
        }
    }
    if let Some(w) = &write {
        let r = calibrate::fit_files(&fit, &base)?;
        let header = format!(
            "# Simulator parameters, fitted by:\n#   cargo run -p demeter-sim --release --example calibrate -- --fit {} --write {}\n# (`demeter-coordinator calibrate` runs the same fit.) Edit by re-fitting, not by hand.\n\n",
            fit.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "),
            w.display()
        );
        std::fs::write(w, header + &r.params.to_toml())?;
        for s in &r.summaries {
            eprintln!(
                "fitted {}: {} rows, capacity loss {:.4}, in-sample recovery MAE {:.1} s, {} static failure episodes",
                s.workload, s.rows, s.capacity_loss, s.in_sample_recovery_mae_s, s.static_episodes
            );
        }
        eprintln!("wrote {}", w.display());
    }
    for t in &static_check {
        let trace = Trace::load(t)?;
        let dir = t.parent().map(|d| d.join("calibration")).unwrap_or_default();
        let measured = calibrate::load_static(&dir, &trace.workload)?
            .ok_or_else(|| format!("no static series for {} in {}", trace.workload, dir.display()))?;
        let c = calibrate::static_check(&base, &trace, &measured, seed)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&c)?);
        } else {
            println!(
                "{}: mean p95 {:.0} ms (measured {:.0}), seconds over 5 s {:.2} % (measured {:.2} %); second half {:.0} / {:.0} ms, {:.2} / {:.2} %; throughput {:.0} / {:.0}; cpu load {:.3} / {:.3}; lag per reader {:.0} / {:.0} -> {}",
                c.workload,
                c.simulated.mean_p95_latency_ms,
                c.measured.mean_p95_latency_ms,
                c.simulated.pct_seconds_latency_over_5s,
                c.measured.pct_seconds_latency_over_5s,
                c.simulated_second_half.mean_p95_latency_ms,
                c.measured_second_half.mean_p95_latency_ms,
                c.simulated_second_half.pct_seconds_latency_over_5s,
                c.measured_second_half.pct_seconds_latency_over_5s,
                c.simulated_mean_throughput,
                c.measured_mean_throughput,
                c.simulated_mean_cpu_load,
                c.measured_mean_cpu_load,
                c.simulated_mean_lag_per_subtask,
                c.measured_mean_lag_per_reader,
                if c.passes { "within bounds" } else { "OUTSIDE bounds" }
            );
        }
    }
    Ok(())
}
