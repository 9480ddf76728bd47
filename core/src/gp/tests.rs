use super::*;
use ndarray::{Array1, Array2, array};

fn f1(x: f64) -> f64 {
    (3.0 * x).sin() + 0.5 * x
}

fn grid(n: usize) -> Array2<f64> {
    Array2::from_shape_fn((n, 1), |(i, _)| i as f64 / (n - 1) as f64 * 3.0)
}

#[test]
fn interpolates_noise_free_points() {
    let x = grid(12);
    let y = x.column(0).mapv(f1);
    let cfg = GpConfig {
        noise_prior: LogPrior::new((1e-8f64).ln(), 0.1, (1e-10f64).ln(), (1e-6f64).ln()),
        ..GpConfig::default()
    };
    let gp = Gp::fit(x.view(), y.view(), &cfg).unwrap();
    let (m, v) = gp.predict(x.view());
    for i in 0..x.nrows() {
        assert!((m[i] - y[i]).abs() < 1e-3, "point {i}: {} vs {}", m[i], y[i]);
        assert!(v[i] < 1e-4, "variance at a training point {}", v[i]);
    }
    // Between the points the function is still recovered; far away the variance grows.
    let xt = array![[0.4], [1.7], [2.6]];
    let (mt, _) = gp.predict(xt.view());
    for (i, &xv) in [0.4, 1.7, 2.6].iter().enumerate() {
        assert!((mt[i] - f1(xv)).abs() < 0.05, "{} vs {}", mt[i], f1(xv));
    }
    let (_, vfar) = gp.predict(array![[10.0]].view());
    assert!(vfar[0] > 100.0 * v.iter().cloned().fold(0.0, f64::max));
}

#[test]
fn log_marginal_likelihood_matches_a_direct_computation() {
    let x = array![[0.0, 0.1], [0.5, 0.9], [1.0, 0.3], [1.5, 0.7], [2.0, 0.2]];
    let y = array![1.0, 2.0, 0.5, 1.5, 3.0];
    let hyper = GpHyper {
        log_lengthscales: vec![(0.7f64).ln(), (1.3f64).ln()],
        log_signal_var: (1.2f64).ln(),
        log_noise_var: (0.05f64).ln(),
        log_linear_var: Some((0.3f64).ln()),
    };
    let cfg = GpConfig {
        linear_dims: vec![0],
        y_scale: Some(2.0),
        init: Some(hyper),
        optimize: false,
        jitter: 0.0,
        ..GpConfig::default()
    };
    let gp = Gp::fit(x.view(), y.view(), &cfg).unwrap();
    // Direct: standardise, build K, solve by a naive inverse.
    let n = 5;
    let ym = y.sum() / 5.0;
    let ys = y.mapv(|v| (v - ym) / 2.0);
    let mut k = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..n {
            let r2 = ((x[[i, 0]] - x[[j, 0]]) / 0.7).powi(2) + ((x[[i, 1]] - x[[j, 1]]) / 1.3).powi(2);
            let r = (5.0 * r2).sqrt();
            k[[i, j]] = 1.2 * (1.0 + r + r * r / 3.0) * (-r).exp() + 1.0 + 0.3 * x[[i, 0]] * x[[j, 0]];
        }
        k[[i, i]] += 0.05;
    }
    let mut l = k.clone();
    cholesky_in_place(&mut l).unwrap();
    let li = inverse_lower(l.view());
    let kinv = li.t().dot(&li);
    let logdet: f64 = 2.0 * l.diag().iter().map(|v| v.ln()).sum::<f64>();
    let lml_std = -0.5 * ys.dot(&kinv.dot(&ys)) - 0.5 * logdet - 2.5 * (2.0 * PI).ln();
    let expect = lml_std - 5.0 * (2.0f64).ln();
    assert!(
        (gp.log_marginal_likelihood() - expect).abs() < 1e-9,
        "{} vs {expect}",
        gp.log_marginal_likelihood()
    );
}

#[test]
fn gradient_matches_finite_differences() {
    let x = array![[0.0, 0.1], [0.5, 0.9], [1.0, 0.3], [1.5, 0.7], [2.0, 0.2], [0.7, 0.5]];
    let y = array![0.3, -1.0, 0.5, 1.5, -0.2, 0.1];
    let w = array![1.0, 0.5, 1.0, 2.0, 1.0, 1.0];
    let cfg = GpConfig { linear_dims: vec![1], ..GpConfig::default() };
    let theta = vec![-0.3, 0.4, 0.2, -2.0, -1.0];
    let f = |t: &[f64]| neg_log_posterior(t, x.view(), y.view(), w.view(), &[0, 1], &[1], &cfg).unwrap();
    let (_, g) = f(&theta);
    for k in 0..theta.len() {
        let h = 1e-6;
        let mut tp = theta.clone();
        tp[k] += h;
        let mut tm = theta.clone();
        tm[k] -= h;
        let fd = (f(&tp).0 - f(&tm).0) / (2.0 * h);
        assert!((fd - g[k]).abs() < 1e-5 * (1.0 + fd.abs()), "param {k}: analytic {} fd {fd}", g[k]);
    }
}

#[test]
fn hyperparameter_search_finds_the_relevant_input_and_the_noise() {
    // y depends on x0 only; x1 is irrelevant. ARD must give x1 a much longer lengthscale.
    let n = 60;
    let mut s = 7u64;
    let mut r = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let x = Array2::from_shape_fn((n, 2), |_| r() * 2.0);
    let y = Array1::from_shape_fn(n, |i| (2.0 * x[[i, 0]]).sin() + 0.05 * (r() - 0.5));
    let gp = Gp::fit(x.view(), y.view(), &GpConfig::default()).unwrap();
    let h = gp.hyper();
    assert!(h.log_lengthscales[1] > h.log_lengthscales[0] + 1.0, "{h:?}");
    assert!(gp.noise_variance() < 0.01, "noise {}", gp.noise_variance());
    // Warm start from the fitted hyperparameters stays put (within a few steps).
    let warm = GpConfig { init: Some(h.clone()), max_iters: 5, ..GpConfig::default() };
    let gp2 = Gp::fit(x.view(), y.view(), &warm).unwrap();
    assert!((gp2.log_marginal_likelihood() - gp.log_marginal_likelihood()).abs() < 0.5);
}

#[test]
fn loo_matches_refitting_without_the_point() {
    let x = grid(8);
    let y = x.column(0).mapv(f1);
    let cfg = GpConfig { optimize: false, ..GpConfig::default() };
    let gp = Gp::fit(x.view(), y.view(), &cfg).unwrap();
    let (lm, lv) = gp.loo_predictive();
    // Refit with the same hyperparameters and standardisation on all points but #3.
    let keep: Vec<usize> = (0..8).filter(|&i| i != 3).collect();
    let st = gp.state().clone();
    let sub = Gp::from_state(GpState {
        x: st.x.select(Axis(0), &keep),
        y: st.y.select(Axis(0), &keep),
        noise_mult: st.noise_mult.select(Axis(0), &keep),
        ..st
    })
    .unwrap();
    let (m, v) = sub.predict(x.select(Axis(0), &[3]).view());
    assert!((m[0] - lm[3]).abs() < 1e-8, "{} vs {}", m[0], lm[3]);
    assert!((v[0] + sub.noise_variance() - lv[3]).abs() < 1e-8);
}

#[test]
fn serde_round_trip_predicts_identically() {
    let x = grid(10);
    let y = x.column(0).mapv(f1);
    let gp = Gp::fit(x.view(), y.view(), &GpConfig { linear_dims: vec![0], ..GpConfig::default() }).unwrap();
    let json = serde_json::to_string(&gp).unwrap();
    let back: Gp = serde_json::from_str(&json).unwrap();
    let xt = array![[0.3], [5.0]];
    let (a, b) = (gp.predict(xt.view()), back.predict(xt.view()));
    for i in 0..2 {
        assert!((a.0[i] - b.0[i]).abs() < 1e-12 && (a.1[i] - b.1[i]).abs() < 1e-12);
    }
    assert!((gp.log_marginal_likelihood() - back.log_marginal_likelihood()).abs() < 1e-9);
    assert_eq!(gp.hyper(), back.hyper());
}

#[test]
fn bad_inputs_are_errors() {
    let x = array![[0.0], [f64::NAN]];
    let y = array![1.0, 2.0];
    assert!(matches!(
        Gp::fit(x.view(), y.view(), &GpConfig::default()),
        Err(GpError::NonFinite { row: 1, .. })
    ));
    let x = array![[0.0], [1.0]];
    assert!(matches!(Gp::fit(x.view(), array![1.0].view(), &GpConfig::default()), Err(GpError::Shape(_))));
    let empty = Array2::<f64>::zeros((0, 1));
    assert!(matches!(
        Gp::fit(empty.view(), Array1::zeros(0).view(), &GpConfig::default()),
        Err(GpError::Empty)
    ));
    let cfg = GpConfig { linear_dims: vec![3], ..GpConfig::default() };
    assert!(matches!(Gp::fit(x.view(), y.view(), &cfg), Err(GpError::Config(_))));
}

#[test]
fn linear_part_extrapolates_a_trend() {
    // A power law in log space: the linear part carries it beyond the data, the plain Matérn
    // reverts towards the mean.
    let x = Array2::from_shape_fn((10, 1), |(i, _)| i as f64 * 0.2);
    let y = x.column(0).mapv(|v| 1.5 * v + 0.1 * (5.0 * v).sin());
    let lin = Gp::fit(x.view(), y.view(), &GpConfig { linear_dims: vec![0], ..GpConfig::default() }).unwrap();
    let plain = Gp::fit(x.view(), y.view(), &GpConfig::default()).unwrap();
    let (m, _) = lin.predict(array![[3.0]].view());
    let (p, _) = plain.predict(array![[3.0]].view());
    assert!((m[0] - 4.5).abs() < 1.0, "linear extrapolation {}", m[0]);
    assert!((m[0] - 4.5).abs() < (p[0] - 4.5).abs(), "linear {} vs plain {}", m[0], p[0]);
}
