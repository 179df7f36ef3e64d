//! BG/NBD (Fader, Hardie & Lee 2005): likelihood with analytic gradient, maximum-likelihood fit,
//! P(alive) and the conditional expected number of purchases.
//!
//! Customers come compressed into patterns (x, t_x, T) with weights. Terms that depend only on
//! x (log-gammas, digammas) are computed once per distinct x per evaluation, so an evaluation
//! costs a few logarithms per pattern. The fit runs in log-parameter space on time scaled so
//! that max T = 1 (as `lifetimes` does); the penalizer (`lifetimes`' penalizer_coef) adds
//! penalizer · Σ θ² in that scaled space to the mean negative log-likelihood.

use super::{digamma, ln_gamma};

use super::hyp2f1::ln_hyp2f1;
use super::optimize::{self, Objective};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub r: f64,
    pub alpha: f64,
    pub a: f64,
    pub b: f64,
}

impl Params {
    fn from_log(log: &[f64]) -> Params {
        Params {
            r: log[0].exp(),
            alpha: log[1].exp(),
            a: log[2].exp(),
            b: log[3].exp(),
        }
    }

    pub fn as_array(&self) -> [f64; 4] {
        [self.r, self.alpha, self.a, self.b]
    }
}

/// Customer histories, compressed: frequency x, recency t_x and age T (in the model's time
/// unit) with the number of customers sharing them.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    pub x: Vec<u32>,
    pub t_x: Vec<f64>,
    pub t: Vec<f64>,
    pub weight: Vec<f64>,
}

impl Patterns {
    /// Compress per-customer values into unique (x, t_x, T) patterns.
    pub fn compress(x: &[u32], t_x: &[f64], t: &[f64]) -> Patterns {
        Patterns::compress_indexed(x, t_x, t).0
    }

    /// Compress, and say which pattern each customer has.
    pub fn compress_indexed(x: &[u32], t_x: &[f64], t: &[f64]) -> (Patterns, Vec<u32>) {
        let mut keyed: Vec<(u32, u64, u64, u32)> = (0..x.len())
            .map(|i| (x[i], t_x[i].to_bits(), t[i].to_bits(), i as u32))
            .collect();
        keyed.sort_unstable();
        let mut patterns = Patterns::default();
        let mut pattern_of = vec![0u32; x.len()];
        for key in keyed {
            let same = patterns.x.last() == Some(&key.0)
                && patterns.t_x.last().map(|v| v.to_bits()) == Some(key.1)
                && patterns.t.last().map(|v| v.to_bits()) == Some(key.2);
            if same {
                *patterns.weight.last_mut().expect("a pattern exists") += 1.0;
            } else {
                patterns.x.push(key.0);
                patterns.t_x.push(f64::from_bits(key.1));
                patterns.t.push(f64::from_bits(key.2));
                patterns.weight.push(1.0);
            }
            pattern_of[key.3 as usize] = (patterns.len() - 1) as u32;
        }
        (patterns, pattern_of)
    }

    pub fn len(&self) -> usize {
        self.x.len()
    }

    pub fn is_empty(&self) -> bool {
        self.x.is_empty()
    }

    pub fn customers(&self) -> f64 {
        self.weight.iter().sum()
    }

    fn max_x(&self) -> usize {
        self.x.iter().copied().max().unwrap_or(0) as usize
    }
}

/// Per-customer log-likelihood (unweighted), for tests and diagnostics.
pub fn log_likelihood(params: &Params, x: u32, t_x: f64, t: f64) -> f64 {
    let Params { r, alpha, a, b } = *params;
    let x = x as f64;
    let a1 = ln_gamma(r + x) - ln_gamma(r) + r * alpha.ln();
    let a2 = ln_gamma(a + b) + ln_gamma(b + x) - ln_gamma(b) - ln_gamma(a + b + x);
    let a3 = -(r + x) * (alpha + t).ln();
    if x > 0.0 {
        let a4 = a.ln() - (b + x - 1.0).ln() - (r + x) * (alpha + t_x).ln();
        a1 + a2 + log_add_exp(a3, a4)
    } else {
        a1 + a2 + a3
    }
}

/// Σ over patterns of (value, gradient), in parallel chunks (summed in a fixed order, so the
/// result does not depend on the thread count).
fn sum_patterns(n: usize, term: impl Fn(usize) -> (f64, [f64; 4]) + Sync) -> (f64, [f64; 4]) {
    use rayon::prelude::*;
    const CHUNK: usize = 4096;
    let chunks: Vec<(f64, [f64; 4])> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let mut total = 0.0;
            let mut grad = [0.0; 4];
            for i in c * CHUNK..((c + 1) * CHUNK).min(n) {
                let (value, g) = term(i);
                total += value;
                for k in 0..4 {
                    grad[k] += g[k];
                }
            }
            (total, grad)
        })
        .collect();
    chunks.iter().fold((0.0, [0.0; 4]), |(total, grad), (value, g)| {
        (total + value, [0, 1, 2, 3].map(|k| grad[k] + g[k]))
    })
}

fn log_add_exp(u: f64, v: f64) -> f64 {
    let m = u.max(v);
    m + ((u - m).exp() + (v - m).exp()).ln()
}

/// Mean negative log-likelihood plus penalty, over log-parameters (scaled time).
///
/// Real summaries have few distinct ages T and recencies t_x (whole days), so ln(α + T) and
/// ln(α + t_x) are computed once per distinct value per evaluation, and terms of x once per x.
pub struct NegativeLogLikelihood<'a> {
    patterns: &'a Patterns,
    penalizer: f64,
    t_index: Vec<u32>,
    tx_index: Vec<u32>,
    distinct_t: Vec<f64>,
    distinct_tx: Vec<f64>,
}

fn distinct_index(values: &[f64]) -> (Vec<f64>, Vec<u32>) {
    let mut distinct = values.to_vec();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    let index = values
        .iter()
        .map(|v| {
            distinct
                .binary_search_by(|d| d.total_cmp(v))
                .expect("every value is listed") as u32
        })
        .collect();
    (distinct, index)
}

impl<'a> NegativeLogLikelihood<'a> {
    pub fn new(patterns: &'a Patterns, penalizer: f64) -> Self {
        let (distinct_t, t_index) = distinct_index(&patterns.t);
        let (distinct_tx, tx_index) = distinct_index(&patterns.t_x);
        NegativeLogLikelihood {
            patterns,
            penalizer,
            t_index,
            tx_index,
            distinct_t,
            distinct_tx,
        }
    }
}

impl Objective for NegativeLogLikelihood<'_> {
    fn value_and_gradient(&self, log_params: &[f64]) -> (f64, Vec<f64>) {
        let p = Params::from_log(log_params);
        let Params { r, alpha, a, b } = p;
        let data = self.patterns;
        let max_x = data.max_x();
        // Terms depending on x only.
        let (lg_r, lg_b, lg_ab) = (ln_gamma(r), ln_gamma(b), ln_gamma(a + b));
        let (dg_r, dg_b, dg_ab) = (digamma(r), digamma(b), digamma(a + b));
        let (ln_alpha, ln_a) = (alpha.ln(), a.ln());
        let mut base = vec![0.0; max_x + 1]; // a1 + a2
        let mut d_base = vec![[0.0; 4]; max_x + 1]; // d/dr, dα, da, db
        let mut a4_const = vec![0.0; max_x + 1]; // ln a − ln(b + x − 1)
        for x in 0..=max_x {
            let xf = x as f64;
            base[x] = ln_gamma(r + xf) - lg_r + r * ln_alpha + lg_ab + ln_gamma(b + xf) - lg_b - ln_gamma(a + b + xf);
            let dg_abx = digamma(a + b + xf);
            d_base[x] = [
                digamma(r + xf) - dg_r + ln_alpha,
                r / alpha,
                dg_ab - dg_abx,
                dg_ab + digamma(b + xf) - dg_b - dg_abx,
            ];
            if x > 0 {
                a4_const[x] = ln_a - (b + xf - 1.0).ln();
            }
        }
        // ln(α + T), 1 / (α + T) per distinct T; the same for t_x.
        let logs = |values: &[f64]| -> Vec<(f64, f64)> {
            values.iter().map(|v| ((alpha + v).ln(), 1.0 / (alpha + v))).collect()
        };
        let (by_t, by_tx) = (logs(&self.distinct_t), logs(&self.distinct_tx));
        let per_pattern = |i: usize| -> (f64, [f64; 4]) {
            let x = data.x[i] as usize;
            let xf = x as f64;
            let w = data.weight[i];
            let (ln_t, inv_t) = by_t[self.t_index[i] as usize];
            let a3 = -(r + xf) * ln_t;
            let d3 = [-ln_t, -(r + xf) * inv_t];
            if x == 0 {
                let d = &d_base[0];
                return (
                    w * (base[0] + a3),
                    [w * (d[0] + d3[0]), w * (d[1] + d3[1]), w * d[2], w * d[3]],
                );
            }
            let (ln_tx, inv_tx) = by_tx[self.tx_index[i] as usize];
            let a4 = a4_const[x] - (r + xf) * ln_tx;
            // log-sum-exp with one exp and one ln_1p; w3 + w4 = 1.
            let (high, low) = if a3 > a4 { (a3, a4) } else { (a4, a3) };
            let e = (low - high).exp();
            let l = high + e.ln_1p();
            let w_high = 1.0 / (1.0 + e);
            let (w3, w4) = if a3 > a4 {
                (w_high, 1.0 - w_high)
            } else {
                (1.0 - w_high, w_high)
            };
            let d = &d_base[x];
            let tail = [
                w3 * d3[0] - w4 * ln_tx,
                w3 * d3[1] - w4 * (r + xf) * inv_tx,
                w4 / a,
                -w4 / (b + xf - 1.0),
            ];
            (w * (base[x] + l), [0, 1, 2, 3].map(|k| w * (d[k] + tail[k])))
        };
        let (total, grad) = sum_patterns(data.len(), per_pattern);
        let n = data.customers();
        let theta = p.as_array();
        let penalty: f64 = theta.iter().map(|t| t * t).sum::<f64>() * self.penalizer;
        let value = -total / n + penalty;
        let gradient = (0..4)
            .map(|k| theta[k] * (-grad[k] / n + 2.0 * self.penalizer * theta[k]))
            .collect();
        (value, gradient)
    }
}

/// A fitted BG/NBD model.
#[derive(Debug, Clone)]
pub struct Fit {
    pub params: Params,
    /// Standard errors of r, α, a, b (delta method from the Hessian in log space), when the
    /// Hessian is invertible.
    pub std_errors: Option<[f64; 4]>,
    /// Total log-likelihood at the optimum (not penalised).
    pub log_likelihood: f64,
    pub iterations: u64,
    pub converged: bool,
}

/// Maximum-likelihood fit; `None` when no start gives a finite optimum.
pub fn fit(patterns: &Patterns, penalizer: f64) -> Option<Fit> {
    if patterns.is_empty() {
        return None;
    }
    let max_t = patterns.t.iter().copied().fold(0.0f64, f64::max).max(1e-12);
    let scale = 1.0 / max_t;
    let scaled = Patterns {
        x: patterns.x.clone(),
        t_x: patterns.t_x.iter().map(|v| v * scale).collect(),
        t: patterns.t.iter().map(|v| v * scale).collect(),
        weight: patterns.weight.clone(),
    };
    let objective = NegativeLogLikelihood::new(&scaled, penalizer);
    let mut starts = vec![
        vec![0.0f64; 4],
        vec![(0.1f64).ln(); 4],
        vec![0.0, (0.1f64).ln(), 0.0, (3.0f64).ln()],
        vec![(0.5f64).ln(), (0.05f64).ln(), (0.8f64).ln(), (2.5f64).ln()],
    ];
    if let Some(step) = optimize::subsample_step(scaled.len()) {
        let sample = Patterns {
            x: optimize::every(&scaled.x, step),
            t_x: optimize::every(&scaled.t_x, step),
            t: optimize::every(&scaled.t, step),
            weight: optimize::every(&scaled.weight, step),
        };
        optimize::prepend_warm_start(&NegativeLogLikelihood::new(&sample, penalizer), &mut starts, 2000);
    }
    let minimum = optimize::minimize(&objective, &starts, 2000)?;
    let scaled_params = Params::from_log(&minimum.x);
    let params = Params {
        alpha: scaled_params.alpha / scale,
        ..scaled_params
    };
    let n = patterns.customers();
    let std_errors = optimize::standard_errors(&objective, &minimum.x, params.as_array(), n);
    let log_likelihood: f64 = (0..patterns.len())
        .map(|i| patterns.weight[i] * log_likelihood(&params, patterns.x[i], patterns.t_x[i], patterns.t[i]))
        .sum();
    Some(Fit {
        params,
        std_errors,
        log_likelihood,
        iterations: minimum.iterations,
        converged: minimum.converged && log_likelihood.is_finite(),
    })
}

/// P(customer still alive | x, t_x, T) (`lifetimes`' conditional_probability_alive).
pub fn p_alive(params: &Params, x: u32, t_x: f64, t: f64) -> f64 {
    if x == 0 {
        return 1.0;
    }
    let Params { r, alpha, a, b } = *params;
    let x = x as f64;
    let log_div = (r + x) * ((alpha + t) / (alpha + t_x)).ln() + (a / (b + x - 1.0)).ln();
    1.0 / (1.0 + log_div.exp())
}

/// E[X(t) | x, t_x, T]: expected purchases in the next `t` time units (equation 10 of the paper,
/// `lifetimes`' conditional_expected_number_of_purchases_up_to_time). For a < 1 both factors of
/// the formula are negative and the product is still the expectation; a = 1 is a removable
/// singularity we do not evaluate (`None`).
pub fn expected_purchases(params: &Params, horizon: f64, x: u32, t_x: f64, t: f64) -> Option<f64> {
    if horizon <= 0.0 {
        return Some(0.0);
    }
    let ln_hyp = ln_hyp_term(params, horizon, x, t)?;
    expected_from_hyp(params, horizon, x, t_x, t, ln_hyp)
}

/// The 2F1 factor of the expectation: it depends on x and T but not on t_x, so callers scoring
/// many customers compute it once per (x, T).
pub fn ln_hyp_term(params: &Params, horizon: f64, x: u32, t: f64) -> Option<f64> {
    let Params { r, alpha, a, b } = *params;
    let xf = x as f64;
    let z = horizon / (alpha + t + horizon);
    ln_hyp2f1(r + xf, b + xf, a + b + xf - 1.0, z)
}

/// E[X(t) | x, t_x, T] given `ln_hyp_term` for the same horizon, x and T.
pub fn expected_from_hyp(params: &Params, horizon: f64, x: u32, t_x: f64, t: f64, ln_hyp: f64) -> Option<f64> {
    if horizon <= 0.0 {
        return Some(0.0);
    }
    let Params { r, alpha, a, b } = *params;
    if (a - 1.0).abs() < 1e-9 {
        return None;
    }
    let xf = x as f64;
    let first = (a + b + xf - 1.0) / (a - 1.0);
    let second = -(ln_hyp + (r + xf) * ((alpha + t) / (alpha + horizon + t)).ln()).exp_m1();
    let denominator = if x > 0 {
        1.0 + (a / (b + xf - 1.0)) * ((r + xf) * ((alpha + t) / (alpha + t_x)).ln()).exp()
    } else {
        1.0
    };
    let value = first * second / denominator;
    value.is_finite().then_some(value.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let patterns = Patterns {
            x: vec![0, 1, 4, 30],
            t_x: vec![0.0, 0.3, 0.7, 0.95],
            t: vec![0.5, 0.9, 1.0, 1.0],
            weight: vec![10.0, 3.0, 2.0, 1.0],
        };
        let objective = NegativeLogLikelihood::new(&patterns, 0.01);
        let at = [(0.3f64).ln(), (0.2f64).ln(), (0.9f64).ln(), (2.0f64).ln()];
        optimize::assert_gradient_matches(&objective, &at, 1e-6);
    }

    #[test]
    fn compress_counts_identical_histories() {
        let patterns = Patterns::compress(&[0, 2, 0, 2], &[0.0, 5.0, 0.0, 5.0], &[10.0, 20.0, 10.0, 21.0]);
        assert_eq!(patterns.x, [0, 2, 2]);
        assert_eq!(patterns.weight, [2.0, 1.0, 1.0]);
    }
}
