//! Minimising a smooth objective with analytic derivatives, with argmin: L-BFGS with a
//! More–Thuente line search from several starting points (robust far from the optimum), and
//! BFGS started with the exact inverse Hessian to finish from a warm start (Newton-like: a
//! handful of evaluations where L-BFGS needs dozens). Also standard errors from the analytic
//! Hessian.

use argmin::core::{CostFunction, Executor, Gradient, State};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::{BFGS, LBFGS};

/// Value, gradient and (when asked for) Hessian of an objective at a point.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub value: f64,
    pub gradient: Vec<f64>,
    pub hessian: Option<Vec<Vec<f64>>>,
}

/// An objective with analytic derivatives.
pub trait Objective: Sync {
    /// Value and gradient at x, and the Hessian when `hessian` is set.
    fn evaluate(&self, x: &[f64], hessian: bool) -> Evaluation;
}

/// Σ over `0..n` of `term(i, &mut partial)`, in parallel chunks of `chunk` items whose partial
/// sums are added in chunk order: the total does not depend on the thread count.
pub fn sum_chunks<T: Default + Send>(
    n: usize,
    chunk: usize,
    term: impl Fn(usize, &mut T) + Sync,
    add: impl Fn(T, &T) -> T,
) -> T {
    use rayon::prelude::*;
    let parts: Vec<T> = (0..n.div_ceil(chunk))
        .into_par_iter()
        .map(|c| {
            let mut partial = T::default();
            for i in c * chunk..((c + 1) * chunk).min(n) {
                term(i, &mut partial);
            }
            partial
        })
        .collect();
    parts.iter().fold(T::default(), add)
}

/// Mean negative log-likelihood plus `penalizer · Σ θ²` over u = ln θ, from the total
/// log-likelihood of n customers and its derivatives with respect to θ (`hessian` is the upper
/// triangle, row by row). Both models are fitted this way, as `lifetimes` does.
pub fn log_space(
    theta: &[f64],
    n: f64,
    penalizer: f64,
    total: f64,
    gradient: &[f64],
    hessian: Option<&[f64]>,
) -> Evaluation {
    let k = theta.len();
    let value = -total / n + penalty(theta, penalizer);
    let d_u: Vec<f64> = (0..k).map(|i| theta[i] * (-gradient[i] / n)).collect();
    let hessian = hessian.map(|upper| {
        let mut h = vec![vec![0.0; k]; k];
        let mut at = 0;
        for i in 0..k {
            for j in i..k {
                let value = theta[i] * theta[j] * (-upper[at] / n);
                h[i][j] = value;
                h[j][i] = value;
                at += 1;
            }
            h[i][i] += d_u[i] + 4.0 * penalizer * theta[i] * theta[i];
        }
        h
    });
    Evaluation {
        value,
        gradient: (0..k).map(|i| d_u[i] + 2.0 * penalizer * theta[i] * theta[i]).collect(),
        hessian,
    }
}

/// `lifetimes`' L2 penalty: penalizer · Σ θ².
pub fn penalty(theta: &[f64], penalizer: f64) -> f64 {
    penalizer * theta.iter().map(|t| t * t).sum::<f64>()
}

/// The total log-likelihood of n customers at a minimum of `log_space`'s objective (θ the
/// parameters the objective saw).
pub fn total_log_likelihood(minimum: &Minimum, theta: &[f64], penalizer: f64, n: f64) -> f64 {
    -(minimum.value - penalty(theta, penalizer)) * n
}

/// The objective as argmin sees it. argmin asks for the cost, gradient and Hessian at the same
/// point separately; both come from one evaluation, so the last one is remembered.
struct Problem<'a, O: Objective> {
    objective: &'a O,
    last: std::sync::Mutex<Option<(Vec<f64>, Evaluation)>>,
}

impl<'a, O: Objective> Problem<'a, O> {
    fn new(objective: &'a O) -> Self {
        Problem {
            objective,
            last: std::sync::Mutex::new(None),
        }
    }

    fn evaluate(&self, x: &[f64]) -> Evaluation {
        let mut last = self.last.lock().expect("no evaluation panicked");
        if let Some((at, evaluation)) = last.as_ref() {
            if at.as_slice() == x {
                return evaluation.clone();
            }
        }
        let evaluation = self.objective.evaluate(x, false);
        *last = Some((x.to_vec(), evaluation.clone()));
        evaluation
    }
}

impl<O: Objective> CostFunction for Problem<'_, O> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, x: &Self::Param) -> Result<f64, argmin::core::Error> {
        let value = self.evaluate(x).value;
        Ok(if value.is_finite() { value } else { f64::INFINITY })
    }
}

impl<O: Objective> Gradient for Problem<'_, O> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, x: &Self::Param) -> Result<Vec<f64>, argmin::core::Error> {
        Ok(self.evaluate(x).gradient)
    }
}

/// The result of a minimisation, with the Hessian at the minimum.
#[derive(Debug, Clone)]
pub struct Minimum {
    pub x: Vec<f64>,
    pub value: f64,
    pub hessian: Vec<Vec<f64>>,
    pub iterations: u64,
    pub converged: bool,
    pub gradient_norm: f64,
}

/// A fitted model: parameters, their standard errors (delta method from the Hessian in log
/// space, when it is invertible), the total log-likelihood at the optimum (not penalised).
#[derive(Debug, Clone)]
pub struct Fit<P, const K: usize> {
    pub params: P,
    pub std_errors: Option<[f64; K]>,
    pub log_likelihood: f64,
    pub iterations: u64,
    pub converged: bool,
}

impl<P, const K: usize> Fit<P, K> {
    /// The fit at `minimum` of a mean negative log-likelihood over n customers; θ the model's
    /// parameters (for standard errors), converged only with a finite log-likelihood.
    pub fn at(minimum: &Minimum, params: P, theta: [f64; K], n: f64, log_likelihood: f64) -> Self {
        Fit {
            params,
            std_errors: standard_errors(minimum, theta, n),
            log_likelihood,
            iterations: minimum.iterations,
            converged: minimum.converged && log_likelihood.is_finite(),
        }
    }
}

/// Gradient norm the solvers aim for; a BFGS refinement counts as converged below it.
const GRADIENT_TOLERANCE: f64 = 1e-7;

/// The minimum found at `x`, evaluated once more with the Hessian; converged when the gradient
/// norm is below `tolerance`, whichever way the solver stopped.
fn minimum_at<O: Objective>(objective: &O, x: Vec<f64>, iterations: u64, tolerance: f64) -> Option<Minimum> {
    let evaluation = objective.evaluate(&x, true);
    let gradient_norm = evaluation.gradient.iter().map(|g| g * g).sum::<f64>().sqrt();
    evaluation.value.is_finite().then(|| Minimum {
        x,
        value: evaluation.value,
        hessian: evaluation.hessian.expect("evaluated with the Hessian"),
        iterations,
        converged: gradient_norm < tolerance,
        gradient_norm,
    })
}

fn run_from<O: Objective>(objective: &O, start: Vec<f64>, max_iterations: u64) -> Option<Minimum> {
    let line_search = MoreThuenteLineSearch::new();
    let solver = LBFGS::new(line_search, 10)
        .with_tolerance_grad(GRADIENT_TOLERANCE)
        .ok()?
        .with_tolerance_cost(1e-12)
        .ok()?;
    let result = Executor::new(Problem::new(objective), solver)
        .configure(|state| state.param(start).max_iters(max_iterations))
        .run()
        .ok()?;
    let state = result.state();
    // L-BFGS also reports convergence when the cost stops changing, whatever the gradient; a
    // minimum counts as converged when its gradient norm is below 1e-5 (the mean
    // log-likelihood's gradient over log-parameters), whichever way the solver stopped.
    let (x, iterations) = (state.get_best_param()?.clone(), state.get_iter());
    minimum_at(objective, x, iterations, LBFGS_ACCEPTANCE)
}

/// Gradient norm at which an L-BFGS result is accepted as converged (the solver itself aims
/// for `GRADIENT_TOLERANCE`).
const LBFGS_ACCEPTANCE: f64 = 1e-5;

/// From a start near the optimum (a warm start): BFGS whose initial inverse Hessian is the
/// inverse of `hessian` (the exact one at, or near, the start), so its first steps are Newton
/// steps (with a More–Thuente line search) and it converges in a handful of evaluations. `None`
/// when that Hessian is not positive definite or the solver fails.
pub fn refine<O: Objective>(
    objective: &O,
    start: Vec<f64>,
    hessian: &[Vec<f64>],
    max_iterations: u64,
) -> Option<Minimum> {
    let inverse = invert(hessian).filter(|inverse| (0..inverse.len()).all(|k| inverse[k][k] > 0.0))?;
    let solver = BFGS::new(MoreThuenteLineSearch::new())
        .with_tolerance_grad(GRADIENT_TOLERANCE)
        .ok()?
        .with_tolerance_cost(1e-14)
        .ok()?;
    let result = Executor::new(Problem::new(objective), solver)
        .configure(|state| state.param(start).inv_hessian(inverse).max_iters(max_iterations))
        .run()
        .ok()?;
    let state = result.state();
    let (x, iterations) = (state.get_best_param()?.clone(), state.get_iter());
    minimum_at(objective, x, iterations, GRADIENT_TOLERANCE)
}

/// Minimise from the starts in turn until one converges; otherwise the lowest minimum found,
/// with `converged = false`.
pub fn minimize<O: Objective>(objective: &O, starts: &[Vec<f64>], max_iterations: u64) -> Option<Minimum> {
    let mut best: Option<Minimum> = None;
    for start in starts {
        if best.as_ref().is_some_and(|b| b.converged) {
            break;
        }
        let Some(candidate) = run_from(objective, start.clone(), max_iterations) else {
            continue;
        };
        let better = match &best {
            None => true,
            Some(current) => {
                (candidate.converged && !current.converged)
                    || (candidate.converged == current.converged && candidate.value < current.value - 1e-12)
            }
        };
        if better {
            best = Some(candidate);
        }
    }
    best
}

/// Above this many data items, fits first minimise on a systematic subsample of about this size
/// and start the full fit from there (the full fit decides; the subsample only proposes a start).
const SUBSAMPLE: usize = 20_000;

/// The step of the systematic subsample for `len` items, when a warm start is worth it.
pub fn subsample_step(len: usize) -> Option<usize> {
    (len > 4 * SUBSAMPLE).then_some(len / SUBSAMPLE)
}

/// The distinct values (sorted), and the index of each value among them.
pub fn distinct_index(values: &[f64]) -> (Vec<f64>, Vec<u32>) {
    use rayon::prelude::*;
    let mut distinct = values.to_vec();
    distinct.par_sort_unstable_by(f64::total_cmp);
    distinct.dedup_by(|a, b| a.total_cmp(b).is_eq());
    let index = values
        .par_iter()
        .map(|v| {
            distinct
                .binary_search_by(|d| d.total_cmp(v))
                .expect("every value is listed") as u32
        })
        .collect();
    (distinct, index)
}

/// Every `step`-th value.
pub fn every<T: Copy>(values: &[T], step: usize) -> Vec<T> {
    values.iter().step_by(step).copied().collect()
}

/// Minimise the objective `build` makes. With `warm`, which fits a subsample's objective from
/// the starts it is given (callers use `minimize`), both run side by side, and the full data
/// are finished with `refine` from the subsample's optimum; when that does not converge, or
/// without a warm start, L-BFGS on the full data from the starts (the subsample's optimum
/// first). Returns the objective with its minimum.
pub fn minimize_warm<O: Objective + Send>(
    build: impl FnOnce() -> O + Send,
    warm: impl FnOnce(&[Vec<f64>]) -> Option<Minimum> + Send,
    mut starts: Vec<Vec<f64>>,
    max_iterations: u64,
) -> Option<(O, Minimum)> {
    let (objective, warm) = rayon::join(build, || warm(&starts));
    if let Some(warm) = warm {
        // Both objectives are means over customers: the subsample's Hessian at its optimum
        // is close to the full data's there.
        if let Some(minimum) = refine(&objective, warm.x.clone(), &warm.hessian, 50).filter(|m| m.converged) {
            return Some((objective, minimum));
        }
        tracing::debug!("Newton from the subsample's optimum did not converge; L-BFGS on all data");
        starts.insert(0, warm.x);
    }
    let minimum = minimize(&objective, &starts, max_iterations)?;
    Some((objective, minimum))
}

/// Hessian by central differences of the gradient, symmetrised (to check analytic ones).
#[cfg(test)]
#[allow(clippy::needless_range_loop)] // matrix code reads best with indices
pub fn numeric_hessian<O: Objective>(objective: &O, x: &[f64]) -> Vec<Vec<f64>> {
    let n = x.len();
    let mut h = vec![vec![0.0; n]; n];
    for i in 0..n {
        let step = 1e-5 * x[i].abs().max(1.0);
        let mut plus = x.to_vec();
        let mut minus = x.to_vec();
        plus[i] += step;
        minus[i] -= step;
        let g_plus = objective.evaluate(&plus, false).gradient;
        let g_minus = objective.evaluate(&minus, false).gradient;
        for j in 0..n {
            h[i][j] = (g_plus[j] - g_minus[j]) / (2.0 * step);
        }
    }
    for i in 0..n {
        for j in 0..i {
            let mean = 0.5 * (h[i][j] + h[j][i]);
            h[i][j] = mean;
            h[j][i] = mean;
        }
    }
    h
}

/// Standard errors of θ = exp(x) at a minimum of a mean negative log-likelihood over n
/// customers: delta method on the inverse Hessian in log space. `None` when it is singular.
pub fn standard_errors<const K: usize>(minimum: &Minimum, theta: [f64; K], n: f64) -> Option<[f64; K]> {
    let inverse = invert(&minimum.hessian)?;
    let errors: [f64; K] = std::array::from_fn(|k| theta[k] * (inverse[k][k] / n).sqrt());
    errors.iter().all(|e| e.is_finite()).then_some(errors)
}

/// Inverse of a small symmetric matrix by Gauss–Jordan elimination; `None` when singular.
#[allow(clippy::needless_range_loop)] // matrix code reads best with indices
pub fn invert(matrix: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = matrix.len();
    let mut a: Vec<Vec<f64>> = matrix
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut extended = row.clone();
            extended.extend((0..n).map(|j| if i == j { 1.0 } else { 0.0 }));
            extended
        })
        .collect();
    for col in 0..n {
        let pivot = (col..n).max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))?;
        if a[pivot][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, pivot);
        let divisor = a[col][col];
        for value in a[col].iter_mut() {
            *value /= divisor;
        }
        for row in 0..n {
            if row != col {
                let factor = a[row][col];
                if factor != 0.0 {
                    for k in 0..2 * n {
                        a[row][k] -= factor * a[col][k];
                    }
                }
            }
        }
    }
    let inverse: Vec<Vec<f64>> = a.into_iter().map(|row| row[n..].to_vec()).collect();
    inverse.iter().flatten().all(|v| v.is_finite()).then_some(inverse)
}

/// Test helper: the analytic gradient agrees with central differences of the value, and the
/// analytic Hessian with central differences of the gradient.
#[cfg(test)]
pub fn assert_derivatives_match<O: Objective>(objective: &O, at: &[f64], tolerance: f64) {
    let evaluation = objective.evaluate(at, true);
    for k in 0..at.len() {
        let mut plus = at.to_vec();
        let mut minus = at.to_vec();
        plus[k] += 1e-6;
        minus[k] -= 1e-6;
        let numeric = (objective.evaluate(&plus, false).value - objective.evaluate(&minus, false).value) / 2e-6;
        let analytic = evaluation.gradient[k];
        assert!(
            (numeric - analytic).abs() < tolerance,
            "parameter {k}: numeric {numeric} vs analytic {analytic}"
        );
    }
    let hessian = evaluation.hessian.expect("asked for the Hessian");
    let numeric = numeric_hessian(objective, at);
    for i in 0..at.len() {
        for j in 0..at.len() {
            assert!(
                (numeric[i][j] - hessian[i][j]).abs() < tolerance * numeric[i][j].abs().max(1.0),
                "Hessian ({i}, {j}): numeric {} vs analytic {}",
                numeric[i][j],
                hessian[i][j]
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rosenbrock;
    impl Objective for Rosenbrock {
        fn evaluate(&self, x: &[f64], hessian: bool) -> Evaluation {
            let (a, b) = (x[0], x[1]);
            Evaluation {
                value: (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2),
                gradient: vec![-2.0 * (1.0 - a) - 400.0 * a * (b - a * a), 200.0 * (b - a * a)],
                hessian: hessian.then(|| {
                    vec![
                        vec![2.0 - 400.0 * b + 1200.0 * a * a, -400.0 * a],
                        vec![-400.0 * a, 200.0],
                    ]
                }),
            }
        }
    }

    #[test]
    fn finds_the_rosenbrock_minimum_and_its_curvature() {
        let minimum = minimize(&Rosenbrock, &[vec![-1.2, 1.0], vec![0.0, 0.0]], 1000).unwrap();
        assert!(minimum.converged);
        assert!(
            (minimum.x[0] - 1.0).abs() < 1e-6 && (minimum.x[1] - 1.0).abs() < 1e-6,
            "{:?}",
            minimum.x
        );
        let h = &minimum.hessian;
        assert!((h[0][0] - 802.0).abs() < 1e-3 && (h[0][1] + 400.0).abs() < 1e-3 && (h[1][1] - 200.0).abs() < 1e-3);
        let inverse = invert(h).unwrap();
        assert!((inverse[0][0] - 0.5).abs() < 1e-6 && (inverse[1][1] - 2.005).abs() < 1e-6);
        assert_derivatives_match(&Rosenbrock, &[-0.7, 0.4], 1e-4);
    }

    #[test]
    fn refining_finishes_from_a_warm_start_in_few_iterations() {
        let start = vec![0.9, 0.8];
        let hessian = Rosenbrock.evaluate(&start, true).hessian.unwrap();
        let minimum = refine(&Rosenbrock, start, &hessian, 50).unwrap();
        assert!(minimum.converged, "{minimum:?}");
        assert!(
            (minimum.x[0] - 1.0).abs() < 1e-8 && (minimum.x[1] - 1.0).abs() < 1e-8,
            "{:?}",
            minimum.x
        );
        assert!(minimum.iterations <= 10, "{} iterations", minimum.iterations);
    }

    #[test]
    fn log_space_applies_the_chain_rule_and_the_penalty() {
        // f(θ) = −(θ0² θ1) as a "log-likelihood total" of n = 2 customers, penalizer 0.1.
        let theta = [1.5, 0.5];
        let total = theta[0] * theta[0] * theta[1];
        let gradient = [2.0 * theta[0] * theta[1], theta[0] * theta[0]];
        let upper = [2.0 * theta[1], 2.0 * theta[0], 0.0];
        let e = log_space(&theta, 2.0, 0.1, total, &gradient, Some(&upper));
        assert!((e.value - (-total / 2.0 + 0.1 * 2.5)).abs() < 1e-12);
        // d/du0 = θ0 · (−2 θ0 θ1 / 2) + 0.2 θ0² ; d²/du0² = θ0² (−2 θ1 / 2) + θ0 (−2 θ0 θ1 / 2) + 0.4 θ0²
        assert!((e.gradient[0] - (-1.5 * 0.75 + 0.2 * 2.25)).abs() < 1e-12);
        let h = e.hessian.unwrap();
        assert!((h[0][0] - (-2.25 * 0.5 - 1.5 * 0.75 + 0.4 * 2.25)).abs() < 1e-12);
        assert!((h[0][1] - (1.5 * 0.5 * (-3.0 / 2.0))).abs() < 1e-12 && h[0][1] == h[1][0]);
    }
}
