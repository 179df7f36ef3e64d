//! Gamma-Gamma spend model (Fader, Hardie & Lee 2005b, Hardie's note 025): likelihood with
//! analytic gradient, maximum-likelihood fit on repeat customers with positive monetary value,
//! and the conditional expected average order value. Penalty as in `lifetimes`.

use super::{digamma, ln_gamma};

use super::optimize::{self, Objective};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub p: f64,
    pub q: f64,
    pub v: f64,
}

impl Params {
    pub fn as_array(&self) -> [f64; 3] {
        [self.p, self.q, self.v]
    }
}

/// Repeat customers: frequency x > 0 and mean repeat order value m > 0, with weights.
#[derive(Debug, Clone, Default)]
pub struct Spend {
    pub x: Vec<f64>,
    pub m: Vec<f64>,
    pub weight: Vec<f64>,
}

pub fn log_likelihood(params: &Params, x: f64, m: f64) -> f64 {
    let Params { p, q, v } = *params;
    let px = p * x;
    ln_gamma(px + q) - ln_gamma(px) - ln_gamma(q) + q * v.ln() + (px - 1.0) * m.ln() + px * x.ln()
        - (px + q) * (x * m + v).ln()
}

/// Mean negative log-likelihood plus penalty over log-parameters. Log-gammas and digammas
/// depend on the customer only through x, so they are computed once per distinct x.
pub struct NegativeLogLikelihood<'a> {
    spend: &'a Spend,
    penalizer: f64,
    /// Per customer: index into `distinct_x`, ln m, ln x.
    x_index: Vec<usize>,
    distinct_x: Vec<f64>,
    ln_m: Vec<f64>,
    ln_x: Vec<f64>,
}

impl<'a> NegativeLogLikelihood<'a> {
    pub fn new(spend: &'a Spend, penalizer: f64) -> Self {
        let mut distinct_x: Vec<f64> = spend.x.clone();
        distinct_x.sort_by(f64::total_cmp);
        distinct_x.dedup();
        let x_index = spend
            .x
            .iter()
            .map(|x| {
                distinct_x
                    .binary_search_by(|d| d.total_cmp(x))
                    .expect("every x is in the list")
            })
            .collect();
        NegativeLogLikelihood {
            spend,
            penalizer,
            x_index,
            distinct_x,
            ln_m: spend.m.iter().map(|m| m.ln()).collect(),
            ln_x: spend.x.iter().map(|x| x.ln()).collect(),
        }
    }
}

impl Objective for NegativeLogLikelihood<'_> {
    fn value_and_gradient(&self, log_params: &[f64]) -> (f64, Vec<f64>) {
        use rayon::prelude::*;
        let params = Params {
            p: log_params[0].exp(),
            q: log_params[1].exp(),
            v: log_params[2].exp(),
        };
        let Params { p, q, v } = params;
        let (lg_q, dg_q, ln_v) = (ln_gamma(q), digamma(q), v.ln());
        // (lnΓ(px + q) − lnΓ(px), ψ(px + q), ψ(px)) per distinct x.
        let by_x: Vec<(f64, f64, f64)> = self
            .distinct_x
            .iter()
            .map(|x| {
                let px = p * x;
                (ln_gamma(px + q) - ln_gamma(px), digamma(px + q), digamma(px))
            })
            .collect();
        let data = self.spend;
        const CHUNK: usize = 8192;
        let n_items = data.x.len();
        let parts: Vec<(f64, [f64; 3])> = (0..n_items.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let mut total = 0.0;
                let mut grad = [0.0f64; 3];
                for i in c * CHUNK..((c + 1) * CHUNK).min(n_items) {
                    let (x, m, w) = (data.x[i], data.m[i], data.weight[i]);
                    let (lg_diff, dg_pxq, dg_px) = by_x[self.x_index[i]];
                    let px = p * x;
                    let ln_xmv = (x * m + v).ln();
                    let (ln_x, ln_m) = (self.ln_x[i], self.ln_m[i]);
                    total += w * (lg_diff - lg_q + q * ln_v + (px - 1.0) * ln_m + px * ln_x - (px + q) * ln_xmv);
                    grad[0] += w * x * (dg_pxq - dg_px + ln_m + ln_x - ln_xmv);
                    grad[1] += w * (dg_pxq - dg_q + ln_v - ln_xmv);
                    grad[2] += w * (q / v - (px + q) / (x * m + v));
                }
                (total, grad)
            })
            .collect();
        let (total, grad) = parts.iter().fold((0.0, [0.0; 3]), |(t, g), (pt, pg)| {
            (t + pt, [g[0] + pg[0], g[1] + pg[1], g[2] + pg[2]])
        });
        let n: f64 = data.weight.iter().sum();
        let theta = params.as_array();
        let penalty = self.penalizer * theta.iter().map(|t| t * t).sum::<f64>();
        let gradient = (0..3)
            .map(|k| theta[k] * (-grad[k] / n + 2.0 * self.penalizer * theta[k]))
            .collect();
        (-total / n + penalty, gradient)
    }
}

#[derive(Debug, Clone)]
pub struct Fit {
    pub params: Params,
    pub std_errors: Option<[f64; 3]>,
    pub log_likelihood: f64,
    pub iterations: u64,
    pub converged: bool,
}

pub fn fit(spend: &Spend, penalizer: f64) -> Option<Fit> {
    if spend.x.is_empty() {
        return None;
    }
    let objective = NegativeLogLikelihood::new(spend, penalizer);
    let mean_m = spend.m.iter().zip(&spend.weight).map(|(m, w)| m * w).sum::<f64>() / spend.weight.iter().sum::<f64>();
    let mut starts = vec![
        vec![0.0f64; 3],
        vec![(0.1f64).ln(); 3],
        vec![(2.0f64).ln(), (3.0f64).ln(), (mean_m.max(1e-6) * 2.0).ln()],
    ];
    if let Some(step) = optimize::subsample_step(spend.x.len()) {
        let sample = Spend {
            x: optimize::every(&spend.x, step),
            m: optimize::every(&spend.m, step),
            weight: optimize::every(&spend.weight, step),
        };
        optimize::prepend_warm_start(&NegativeLogLikelihood::new(&sample, penalizer), &mut starts, 2000);
    }
    let minimum = optimize::minimize(&objective, &starts, 2000)?;
    let params = Params {
        p: minimum.x[0].exp(),
        q: minimum.x[1].exp(),
        v: minimum.x[2].exp(),
    };
    let n: f64 = spend.weight.iter().sum();
    let std_errors = optimize::standard_errors(&objective, &minimum.x, params.as_array(), n);
    let log_likelihood = (0..spend.x.len())
        .map(|i| spend.weight[i] * log_likelihood(&params, spend.x[i], spend.m[i]))
        .sum::<f64>();
    Some(Fit {
        params,
        std_errors,
        log_likelihood,
        iterations: minimum.iterations,
        converged: minimum.converged && log_likelihood.is_finite(),
    })
}

/// E[order value | x, m] (`lifetimes`' conditional_expected_average_profit); needs q > 1.
pub fn expected_order_value(params: &Params, x: f64, m: f64) -> Option<f64> {
    let Params { p, q, v } = *params;
    if q <= 1.0 {
        return None;
    }
    let population = p * v / (q - 1.0);
    let weight = p * x / (p * x + q - 1.0);
    Some((1.0 - weight) * population + weight * m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let spend = Spend {
            x: vec![1.0, 2.0, 7.0],
            m: vec![20.0, 35.5, 12.0],
            weight: vec![3.0, 1.0, 2.0],
        };
        let objective = NegativeLogLikelihood::new(&spend, 0.0);
        let at = [(6.0f64).ln(), (4.0f64).ln(), (15.0f64).ln()];
        optimize::assert_gradient_matches(&objective, &at, 1e-6);
    }
}
