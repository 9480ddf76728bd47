//! A small bound-constrained L-BFGS minimiser for the GP hyperparameters (a handful of log-scale
//! parameters), with projected steps and an Armijo backtracking line search.

/// Outcome of a minimisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Minimum {
    pub x: Vec<f64>,
    pub fx: f64,
    pub iterations: usize,
    pub evaluations: usize,
}

fn project(x: &mut [f64], lo: &[f64], hi: &[f64]) {
    for ((v, l), h) in x.iter_mut().zip(lo).zip(hi) {
        *v = v.clamp(*l, *h);
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises `f` (value and gradient; `None` means "not evaluable here", treated as +∞) from
/// `x0` within the box `[lo, hi]`. Steps are capped at `max_step` in the ∞-norm.
pub fn lbfgs_minimize<F>(
    mut f: F,
    x0: &[f64],
    lo: &[f64],
    hi: &[f64],
    max_iters: usize,
    max_step: f64,
) -> Option<Minimum>
where
    F: FnMut(&[f64]) -> Option<(f64, Vec<f64>)>,
{
    const MEMORY: usize = 6;
    let n = x0.len();
    let mut x = x0.to_vec();
    project(&mut x, lo, hi);
    let (mut fx, mut g) = f(&x)?;
    let mut evaluations = 1;
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut iterations = 0;
    // Variables pinned at a bound with the gradient pushing outwards do not move.
    let free =
        |x: &[f64], d: &[f64], i: usize| !((x[i] <= lo[i] && d[i] < 0.0) || (x[i] >= hi[i] && d[i] > 0.0));
    while iterations < max_iters {
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(s_hist.len());
        for (s, y) in s_hist.iter().zip(&y_hist).rev() {
            let rho = 1.0 / dot(y, s);
            let a = rho * dot(s, &q);
            for (qi, yi) in q.iter_mut().zip(y) {
                *qi -= a * yi;
            }
            alphas.push((a, rho));
        }
        if let (Some(s), Some(y)) = (s_hist.last(), y_hist.last()) {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        } else {
            let gn = dot(&g, &g).sqrt().max(1e-12);
            let scale = (1.0 / gn).min(1.0);
            q.iter_mut().for_each(|v| *v *= scale);
        }
        for ((s, y), (a, rho)) in s_hist.iter().zip(&y_hist).zip(alphas.into_iter().rev()) {
            let b = rho * dot(y, &q);
            for (qi, si) in q.iter_mut().zip(s) {
                *qi += (a - b) * si;
            }
        }
        let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
        for i in 0..n {
            if !free(&x, &d, i) {
                d[i] = 0.0;
            }
        }
        if dot(&d, &g) >= 0.0 {
            // Not a descent direction: restart from steepest descent.
            s_hist.clear();
            y_hist.clear();
            d = g.iter().map(|v| -v).collect();
            for i in 0..n {
                if !free(&x, &d, i) {
                    d[i] = 0.0;
                }
            }
        }
        let dmax = d.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        if dmax < 1e-10 {
            break;
        }
        if dmax > max_step {
            d.iter_mut().for_each(|v| *v *= max_step / dmax);
        }
        // Armijo backtracking on the projected path.
        let mut t = 1.0;
        let mut accepted = None;
        for _ in 0..20 {
            let mut xn: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a + t * b).collect();
            project(&mut xn, lo, hi);
            let step: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
            let decrease = dot(&g, &step);
            if decrease >= 0.0 {
                t *= 0.5;
                continue;
            }
            evaluations += 1;
            if let Some((fn_, gn)) = f(&xn)
                && fn_ <= fx + 1e-4 * decrease
            {
                accepted = Some((xn, fn_, gn, step));
                break;
            }
            t *= 0.5;
        }
        iterations += 1;
        let Some((xn, fn_, gn, step)) = accepted else { break };
        let yv: Vec<f64> = gn.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&step, &yv);
        if sy > 1e-12 {
            if s_hist.len() == MEMORY {
                s_hist.remove(0);
                y_hist.remove(0);
            }
            s_hist.push(step);
            y_hist.push(yv);
        }
        let improvement = fx - fn_;
        x = xn;
        fx = fn_;
        g = gn;
        if improvement < 1e-9 * (1.0 + fx.abs()) {
            break;
        }
    }
    Some(Minimum { x, fx, iterations, evaluations })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimises_a_rosenbrock_valley_and_respects_bounds() {
        let rosen = |x: &[f64]| {
            let (a, b) = (x[0], x[1]);
            let f = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
            let g = vec![-2.0 * (1.0 - a) - 400.0 * a * (b - a * a), 200.0 * (b - a * a)];
            Some((f, g))
        };
        let m = lbfgs_minimize(rosen, &[-1.2, 1.0], &[-5.0, -5.0], &[5.0, 5.0], 200, 1.0).unwrap();
        assert!((m.x[0] - 1.0).abs() < 1e-3 && (m.x[1] - 1.0).abs() < 1e-3, "{m:?}");
        // The unconstrained minimum (3, -2) lies outside the box: stop on the boundary.
        let quad = |x: &[f64]| {
            Some(((x[0] - 3.0).powi(2) + (x[1] + 2.0).powi(2), vec![2.0 * (x[0] - 3.0), 2.0 * (x[1] + 2.0)]))
        };
        let m = lbfgs_minimize(quad, &[0.0, 0.0], &[-1.0, -1.0], &[1.0, 1.0], 50, 1.0).unwrap();
        assert_eq!(m.x, vec![1.0, -1.0]);
    }
}
