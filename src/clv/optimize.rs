//! Minimising a smooth objective with analytic gradient: argmin's L-BFGS with a More–Thuente
//! line search, from several starting points, keeping the best converged result. Also the
//! numerical Hessian (central differences of the analytic gradient) for standard errors.

use argmin::core::{CostFunction, Executor, Gradient, State, TerminationReason, TerminationStatus};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;

/// An objective: value and gradient at a point.
pub trait Objective: Sync {
    fn value_and_gradient(&self, x: &[f64]) -> (f64, Vec<f64>);
}

/// A point with its value and gradient.
type Evaluation = (Vec<f64>, f64, Vec<f64>);

/// The objective as argmin sees it. argmin asks for the cost and the gradient at the same point
/// separately; both come from one evaluation, so the last one is remembered.
struct Problem<'a, O: Objective> {
    objective: &'a O,
    last: std::sync::Mutex<Option<Evaluation>>,
}

impl<O: Objective> Problem<'_, O> {
    fn evaluate(&self, x: &[f64]) -> (f64, Vec<f64>) {
        let mut last = self.last.lock().expect("no evaluation panicked");
        if let Some((at, value, gradient)) = last.as_ref() {
            if at.as_slice() == x {
                return (*value, gradient.clone());
            }
        }
        let (value, gradient) = self.objective.value_and_gradient(x);
        *last = Some((x.to_vec(), value, gradient.clone()));
        (value, gradient)
    }
}

impl<O: Objective> CostFunction for Problem<'_, O> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, x: &Self::Param) -> Result<f64, argmin::core::Error> {
        let value = self.evaluate(x).0;
        Ok(if value.is_finite() { value } else { f64::INFINITY })
    }
}

impl<O: Objective> Gradient for Problem<'_, O> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;
    fn gradient(&self, x: &Self::Param) -> Result<Vec<f64>, argmin::core::Error> {
        Ok(self.evaluate(x).1)
    }
}

/// The result of a minimisation.
#[derive(Debug, Clone)]
pub struct Minimum {
    pub x: Vec<f64>,
    pub value: f64,
    pub iterations: u64,
    pub converged: bool,
    pub gradient_norm: f64,
}

fn run_from<O: Objective>(objective: &O, start: Vec<f64>, max_iterations: u64) -> Option<Minimum> {
    let line_search = MoreThuenteLineSearch::new();
    let solver = LBFGS::new(line_search, 10)
        .with_tolerance_grad(1e-7)
        .ok()?
        .with_tolerance_cost(1e-12)
        .ok()?;
    let problem = Problem {
        objective,
        last: std::sync::Mutex::new(None),
    };
    let result = Executor::new(problem, solver)
        .configure(|state| state.param(start).max_iters(max_iterations))
        .run()
        .ok()?;
    let state = result.state();
    let x = state.get_best_param()?.clone();
    let (value, gradient) = objective.value_and_gradient(&x);
    let gradient_norm = gradient.iter().map(|g| g * g).sum::<f64>().sqrt();
    let converged = matches!(
        state.get_termination_status(),
        TerminationStatus::Terminated(TerminationReason::SolverConverged)
    ) || gradient_norm < 1e-5;
    value.is_finite().then_some(Minimum {
        x,
        value,
        iterations: state.get_iter(),
        converged,
        gradient_norm,
    })
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

/// Every `step`-th value.
pub fn every<T: Copy>(values: &[T], step: usize) -> Vec<T> {
    values.iter().step_by(step).copied().collect()
}

/// Put the subsample optimum first among `starts` (nothing when that fit fails).
pub fn prepend_warm_start<O: Objective>(sample: &O, starts: &mut Vec<Vec<f64>>, max_iterations: u64) {
    if let Some(warm) = minimize(sample, starts, max_iterations) {
        starts.insert(0, warm.x);
    }
}

/// Hessian by central differences of the gradient, symmetrised.
#[allow(clippy::needless_range_loop)] // matrix code reads best with indices
pub fn hessian<O: Objective>(objective: &O, x: &[f64]) -> Vec<Vec<f64>> {
    let n = x.len();
    let mut h = vec![vec![0.0; n]; n];
    for i in 0..n {
        let step = 1e-5 * x[i].abs().max(1.0);
        let mut plus = x.to_vec();
        let mut minus = x.to_vec();
        plus[i] += step;
        minus[i] -= step;
        let (_, g_plus) = objective.value_and_gradient(&plus);
        let (_, g_minus) = objective.value_and_gradient(&minus);
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

/// Standard errors of θ = exp(x) at a minimum x of a mean negative log-likelihood over n
/// customers: delta method on the inverse Hessian in log space. `None` when it is singular.
pub fn standard_errors<O: Objective, const K: usize>(
    objective: &O,
    x: &[f64],
    theta: [f64; K],
    n: f64,
) -> Option<[f64; K]> {
    let inverse = invert(&hessian(objective, x))?;
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

/// Test helper: the analytic gradient agrees with central differences of the value.
#[cfg(test)]
pub fn assert_gradient_matches<O: Objective>(objective: &O, at: &[f64], tolerance: f64) {
    let (_, gradient) = objective.value_and_gradient(at);
    for k in 0..at.len() {
        let mut plus = at.to_vec();
        let mut minus = at.to_vec();
        plus[k] += 1e-6;
        minus[k] -= 1e-6;
        let numeric = (objective.value_and_gradient(&plus).0 - objective.value_and_gradient(&minus).0) / 2e-6;
        assert!(
            (numeric - gradient[k]).abs() < tolerance,
            "parameter {k}: numeric {numeric} vs analytic {}",
            gradient[k]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rosenbrock;
    impl Objective for Rosenbrock {
        fn value_and_gradient(&self, x: &[f64]) -> (f64, Vec<f64>) {
            let (a, b) = (x[0], x[1]);
            let value = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
            let gradient = vec![-2.0 * (1.0 - a) - 400.0 * a * (b - a * a), 200.0 * (b - a * a)];
            (value, gradient)
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
        let h = hessian(&Rosenbrock, &minimum.x);
        assert!((h[0][0] - 802.0).abs() < 1e-3 && (h[0][1] + 400.0).abs() < 1e-3 && (h[1][1] - 200.0).abs() < 1e-3);
        let inverse = invert(&h).unwrap();
        assert!((inverse[0][0] - 0.5).abs() < 1e-6 && (inverse[1][1] - 2.005).abs() < 1e-6);
    }
}
