use super::synthetic::SyntheticJob;
use super::*;
use crate::obs::RecoveryTime;
use demeter_common::{Quota, SearchSpace, UnixMillis};

/// Profiling runs from the calibration data (real Flink 1.17 measurements, upstream's runs).
pub(crate) fn calibration(csv_text: &str) -> Vec<PerfSample> {
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    let h = r.headers().unwrap().clone();
    let col = |name: &str| h.iter().position(|c| c == name).unwrap();
    let (p, chk, cpu, mem, slots, thr, lat, rec, start, off) = (
        col("scaleOut"),
        col("chkInt"),
        col("cpuVal"),
        col("memVal"),
        col("taskSlots"),
        col("avgThr"),
        col("avgLat"),
        col("recTime"),
        col("startTs"),
        col("offeredRate"),
    );
    r.records()
        .map(|row| {
            let row = row.unwrap();
            let f = |i: usize| row[i].parse::<f64>().unwrap();
            let rec_s = f(rec);
            PerfSample {
                config: JobConfig {
                    parallelism: f(p) as u32,
                    task_slots: f(slots) as u32,
                    tm_cpu_milli: (f(cpu) * 1000.0).round() as u32,
                    tm_memory_mb: f(mem) as u32,
                    checkpoint_interval_ms: f(chk) as u64,
                },
                at: UnixMillis(f(start) as i64 * 1000),
                origin: SampleOrigin::Profiling,
                offered_rate: f(off),
                throughput: f(thr),
                p95_latency_ms: f(lat),
                busy_ratio: None,
                recovery: if rec_s < 0.0 {
                    None
                } else if rec_s >= 360.0 {
                    Some(RecoveryTime::NotRecovered(360.0))
                } else {
                    Some(RecoveryTime::Measured(rec_s))
                },
            }
        })
        .collect()
}

pub(crate) const CARS_RUN1: &str = include_str!("../../../datasets/calibration/CARS_run1_profiles.csv");
pub(crate) const CARS_RUN2: &str = include_str!("../../../datasets/calibration/CARS_run2_profiles.csv");
pub(crate) const ADS_RUN1: &str = include_str!("../../../datasets/calibration/ADS_run1_profiles.csv");
pub(crate) const ADS_RUN2: &str = include_str!("../../../datasets/calibration/ADS_run2_profiles.csv");

/// Accuracy of "p95 ≥ 5 s" predicted by the median latency at each test sample's rate.
fn bottleneck_accuracy(model: &PerfModel, test: &[PerfSample]) -> (f64, usize) {
    let correct = test
        .iter()
        .filter(|s| {
            let p = model.predict(&s.config, s.offered_rate);
            (p.latency_p95_ms.mean >= 5_000.0) == (s.p95_latency_ms >= 5_000.0)
        })
        .count();
    (correct as f64 / test.len() as f64, correct)
}

#[test]
fn calibration_bottleneck_classification_transfers_between_runs() {
    let cfg = PerfModelConfig::default();
    for (name, train, test, floor) in
        [("CARS", CARS_RUN1, CARS_RUN2, 0.85), ("ADS", ADS_RUN1, ADS_RUN2, 0.80)]
    {
        let (train, test) = (calibration(train), calibration(test));
        let model = PerfModel::fit(&train, &cfg);
        assert!(!model.is_prior_only());
        let (acc, correct) = bottleneck_accuracy(&model, &test);
        eprintln!(
            "{name}: bottleneck classification run1 -> run2: {correct}/{} = {acc:.3}; status {:?}",
            test.len(),
            model.status()
        );
        assert!(acc >= floor, "{name} accuracy {acc:.3} below {floor}");
    }
}

#[test]
fn calibration_recovery_classification_transfers_between_runs() {
    // Recovery ≤ 180 s (upstream's constraint), predicted by the median, on runs with a
    // measured or censored recovery time.
    let cfg = PerfModelConfig::default();
    let model = PerfModel::fit(&calibration(CARS_RUN1), &cfg);
    let test: Vec<PerfSample> = calibration(CARS_RUN2).into_iter().filter(|s| s.recovery.is_some()).collect();
    let correct = test
        .iter()
        .filter(|s| {
            let p = model.predict(&s.config, s.offered_rate);
            (p.recovery_s.mean <= 180.0) == (s.recovery.unwrap().seconds() <= 180.0)
        })
        .count();
    let acc = correct as f64 / test.len() as f64;
    eprintln!("CARS recovery <= 180 s classification run1 -> run2: {correct}/{} = {acc:.3}", test.len());
    assert!(acc >= 0.75, "recovery accuracy {acc:.3}");
}

#[test]
fn too_few_samples_give_a_prior_only_model_that_says_so() {
    let cfg = PerfModelConfig::default();
    let m = PerfModel::fit(&[], &cfg);
    assert!(m.is_prior_only());
    assert_eq!(m.n_samples(), 0);
    assert!(m.status().notes.iter().any(|n| n.contains("prior-only")));
    let p = m.predict(&JobConfig::STATIC_DEFAULT, 50_000.0);
    // Wide bands: a factor of e^(2·1.645) ≈ 27 between the ends of the capacity band.
    assert!(p.capacity.upper / p.capacity.lower > 20.0);
    assert!(p.p_feasible < 0.9 && p.p_feasible > 0.0);
    assert!(
        p.latency_p95_ms.lower <= p.latency_p95_ms.mean && p.latency_p95_ms.mean <= p.latency_p95_ms.upper
    );
    // Invalid samples do not count.
    let bad = PerfSample { throughput: f64::NAN, ..calibration(CARS_RUN1)[0].clone() };
    let m = PerfModel::fit(&[bad.clone(), bad], &cfg);
    assert!(m.is_prior_only());
    assert_eq!(m.status().n_given, 2);
    assert_eq!(m.n_samples(), 0);
}

#[test]
fn batched_prediction_equals_single_predictions() {
    let model = PerfModel::fit(&calibration(CARS_RUN1), &PerfModelConfig::default());
    let cands = SearchSpace::default().candidates(&Quota::default());
    let some: Vec<JobConfig> = cands.iter().step_by(97).copied().collect();
    let many = model.predict_many(&some, 45_000.0);
    for (c, p) in some.iter().zip(&many) {
        let one = model.predict(c, 45_000.0);
        assert!((one.capacity.mean - p.capacity.mean).abs() < 1e-6 * p.capacity.mean);
        assert!((one.p_feasible - p.p_feasible).abs() < 1e-9);
        assert!((one.recovery_s.upper - p.recovery_s.upper).abs() < 1e-6 * p.recovery_s.upper);
    }
}

#[test]
fn censoring_keeps_capacity_above_healthy_measurements() {
    // Healthy runs only bound the capacity from below: the fitted capacity must not sit below
    // what the configuration was seen to sustain.
    let train = calibration(CARS_RUN1);
    let model = PerfModel::fit(&train, &PerfModelConfig::default());
    let mut below = 0;
    let healthy: Vec<&PerfSample> = train.iter().filter(|s| !is_saturated(s, model.config())).collect();
    for s in &healthy {
        if model.predict(&s.config, s.offered_rate).capacity.mean < 0.95 * s.throughput {
            below += 1;
        }
    }
    assert!(
        below * 10 <= healthy.len(),
        "{below} of {} healthy configs predicted below their throughput",
        healthy.len()
    );
}

#[test]
fn production_busy_ratio_informs_the_capacity() {
    // A production job at 30k records/s and 50 % busy has about 60k of capacity; without the
    // busy ratio the model only knows "at least 30k".
    let c = JobConfig { parallelism: 12, task_slots: 2, tm_cpu_milli: 2000, ..JobConfig::STATIC_DEFAULT };
    let mk = |busy: Option<f64>, i: i64| PerfSample {
        config: c,
        at: UnixMillis(i * 60_000),
        origin: SampleOrigin::Production,
        offered_rate: 30_000.0 + 100.0 * i as f64,
        throughput: 30_000.0 + 100.0 * i as f64,
        p95_latency_ms: 1_050.0,
        busy_ratio: busy,
        recovery: None,
    };
    let with: Vec<PerfSample> = (0..10).map(|i| mk(Some(0.5), i)).collect();
    let without: Vec<PerfSample> = (0..10).map(|i| mk(None, i)).collect();
    let cfg = PerfModelConfig::default();
    let a = PerfModel::fit(&with, &cfg).predict(&c, 30_000.0);
    let b = PerfModel::fit(&without, &cfg).predict(&c, 30_000.0);
    assert!((a.capacity.mean / 60_000.0 - 1.0).abs() < 0.15, "capacity from busy ratio {:?}", a.capacity);
    // Without it: at least what was sustained, and a much wider band.
    assert!(b.capacity.lower >= 29_000.0, "{:?}", b.capacity);
    assert!(b.capacity.upper / b.capacity.lower > 2.0 * a.capacity.upper / a.capacity.lower, "{a:?} {b:?}");
    // At 45k the busy-ratio model is confident, the other is not.
    let a45 = PerfModel::fit(&with, &cfg).predict(&c, 45_000.0);
    let b45 = PerfModel::fit(&without, &cfg).predict(&c, 45_000.0);
    assert!(a45.p_capacity > 0.8 && a45.p_capacity > b45.p_capacity, "{a45:?} {b45:?}");
}

#[test]
fn utilisation_input_transfers_across_workload_levels() {
    // Train only on samples below 50k records/s, test at 50k and above: the model must still
    // tell saturated from healthy runs (upstream's RGPE needs profiles in the target bucket).
    let all: Vec<PerfSample> = calibration(CARS_RUN1).into_iter().chain(calibration(CARS_RUN2)).collect();
    let (low, high): (Vec<PerfSample>, Vec<PerfSample>) =
        all.into_iter().partition(|s| s.offered_rate < 50_000.0);
    let model = PerfModel::fit(&low, &PerfModelConfig::default());
    let (acc, correct) = bottleneck_accuracy(&model, &high);
    eprintln!("transfer <50k -> >=50k: {correct}/{} = {acc:.3}", high.len());
    // Baseline: upstream's bucket rules without a model for the unseen bucket: a config stable at a
    // higher rate is stable, one bottlenecked at a lower rate is bottlenecked, anything else gets
    // the training data's majority class.
    let bottleneck = |s: &PerfSample| s.p95_latency_ms >= 5_000.0;
    let majority_bottleneck = low.iter().filter(|s| bottleneck(s)).count() * 2 > low.len();
    let baseline = high
        .iter()
        .filter(|t| {
            let same: Vec<&PerfSample> = low.iter().filter(|s| s.config == t.config).collect();
            let guess = if same.iter().any(|s| !bottleneck(s) && s.throughput >= t.offered_rate) {
                false
            } else if same.iter().any(|s| bottleneck(s) && s.throughput <= t.offered_rate) {
                true
            } else {
                majority_bottleneck
            };
            guess == bottleneck(t)
        })
        .count() as f64
        / high.len() as f64;
    eprintln!("bucket-rule baseline: {baseline:.3}");
    assert!(acc >= 0.75 && acc > baseline, "transfer accuracy {acc:.3}, baseline {baseline:.3}");
}

#[test]
fn recovers_the_synthetic_truth_from_a_production_history() {
    let job = SyntheticJob::default();
    let cands = SearchSpace::default().candidates(&Quota::default());
    let hist = job.history(&cands, 300, 11);
    let model = PerfModel::fit(&hist, &PerfModelConfig::default());
    assert!(
        model.status().capacity.fitted && model.status().latency.fitted && model.status().recovery.fitted
    );
    let preds = model.predict_many(&cands, 60_000.0);
    // Feasibility at 60k with the 1.1 margin: compare with the truth on every candidate.
    let mut agree = 0;
    for (c, p) in cands.iter().zip(&preds) {
        let truth = job.capacity(c) >= 66_000.0;
        if (p.p_capacity >= 0.5) == truth {
            agree += 1;
        }
    }
    let acc = agree as f64 / cands.len() as f64;
    eprintln!("synthetic capacity-feasibility agreement over 840 candidates: {acc:.3}");
    assert!(acc >= 0.85, "{acc}");
    // Warm refit on more data.
    let more = job.history(&cands, 320, 11);
    let warm = model.refit(&more);
    assert_eq!(warm.n_samples(), 320);
    assert!(warm.status().capacity.fitted);
}

#[test]
fn serde_round_trip_of_a_fitted_model() {
    let model = PerfModel::fit(&calibration(CARS_RUN1), &PerfModelConfig::default());
    let json = serde_json::to_string(&model).unwrap();
    let back: PerfModel = serde_json::from_str(&json).unwrap();
    let c = JobConfig::STATIC_DEFAULT;
    let (a, b) = (model.predict(&c, 50_000.0), back.predict(&c, 50_000.0));
    assert!((a.p_feasible - b.p_feasible).abs() < 1e-9 && (a.capacity.mean - b.capacity.mean).abs() < 1e-6);
}

/// `cargo test --release -p demeter-core perf_timing_report -- --ignored --nocapture`
#[test]
#[ignore = "timing report; run in release mode"]
fn perf_timing_report() {
    let job = SyntheticJob::default();
    let cands = SearchSpace::default().candidates(&Quota::default());
    let hist = job.history(&cands, 520, 1);
    let cfg = PerfModelConfig::default();
    let t = std::time::Instant::now();
    let m0 = PerfModel::fit(&hist[..500], &cfg);
    eprintln!("cold fit {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let mut fits = Vec::new();
    let mut preds = Vec::new();
    let mut m = m0.clone();
    for k in 1..=20 {
        let t = std::time::Instant::now();
        m = m.refit(&hist[k..k + 500]);
        fits.push(t.elapsed().as_secs_f64() * 1e3);
        let t = std::time::Instant::now();
        let p = m.predict_many(&cands, 60_000.0);
        preds.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(p.len(), cands.len());
    }
    eprintln!("warm refit ms {fits:.1?}");
    eprintln!("predict 840 ms {preds:.1?}");
    eprintln!("{:?}", m.status());
}
