//! Gamma-Gamma spend model (Fader, Hardie & Lee 2005b, Hardie's note 025): likelihood with
//! analytic gradient, maximum-likelihood fit on repeat customers with positive monetary value,
//! and the conditional expected average order value. Penalty as in `lifetimes`.

use super::{digamma, ln_gamma, trigamma};

use super::optimize::{self, Evaluation, Objective};

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

impl Spend {
    /// The distinct (x, m) of the customers with x > 0 and m > 0, sorted, each weighted by its
    /// customers: repeat customers share far fewer pairs, and each evaluation of the
    /// likelihood costs a term per pair.
    pub fn compress(x: &[u32], m: &[f64]) -> Spend {
        use rayon::prelude::*;
        let mut pairs: Vec<(u32, u64)> = (0..x.len())
            .into_par_iter()
            .filter(|&i| x[i] > 0 && m[i] > 0.0)
            .map(|i| (x[i], m[i].to_bits()))
            .collect();
        // Positive doubles order as their bits do.
        pairs.par_sort_unstable();
        let mut spend = Spend::default();
        for group in pairs.chunk_by(|a, b| a == b) {
            spend.x.push(f64::from(group[0].0));
            spend.m.push(f64::from_bits(group[0].1));
            spend.weight.push(group.len() as f64);
        }
        spend
    }

    /// Customers in all.
    pub fn customers(&self) -> f64 {
        self.weight.iter().sum()
    }

    /// The customers' mean of `values` (one per pair, counted by its weight).
    fn mean(&self, values: &[f64]) -> f64 {
        values.iter().zip(&self.weight).map(|(v, w)| v * w).sum::<f64>() / self.customers()
    }

    /// The customers' correlation of x and m (each pair counted by its weight).
    pub fn correlation(&self) -> f64 {
        if self.customers() < 2.0 {
            return f64::NAN;
        }
        let (mx, my) = (self.mean(&self.x), self.mean(&self.m));
        let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
        for ((x, y), w) in self.x.iter().zip(&self.m).zip(&self.weight) {
            sxy += w * (x - mx) * (y - my);
            sxx += w * (x - mx) * (x - mx);
            syy += w * (y - my) * (y - my);
        }
        sxy / (sxx * syy).sqrt()
    }
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
    /// Per customer: index into `distinct_x`, and ln m.
    x_index: Vec<u32>,
    distinct_x: Vec<f64>,
    ln_m: Vec<f64>,
    customers: f64,
}

impl<'a> NegativeLogLikelihood<'a> {
    pub fn new(spend: &'a Spend, penalizer: f64) -> Self {
        use rayon::prelude::*;
        let (distinct_x, x_index) = optimize::distinct_index(&spend.x);
        NegativeLogLikelihood {
            spend,
            penalizer,
            x_index,
            distinct_x,
            ln_m: spend.m.par_iter().map(|m| m.ln()).collect(),
            customers: spend.customers(),
        }
    }
}

impl Objective for NegativeLogLikelihood<'_> {
    fn evaluate(&self, log_params: &[f64], hessian: bool) -> Evaluation {
        let params = Params {
            p: log_params[0].exp(),
            q: log_params[1].exp(),
            v: log_params[2].exp(),
        };
        let Params { p, q, v } = params;
        let (lg_q, dg_q, tg_q, ln_v) = (ln_gamma(q), digamma(q), trigamma(q), v.ln());
        // (lnΓ(px + q) − lnΓ(px), ψ(px + q), ψ(px), ψ₁(px + q), ψ₁(px), ln x) per distinct x.
        let by_x: Vec<[f64; 6]> = self
            .distinct_x
            .iter()
            .map(|x| {
                let px = p * x;
                let (tg_pxq, tg_px) = if hessian {
                    (trigamma(px + q), trigamma(px))
                } else {
                    (0.0, 0.0)
                };
                [
                    ln_gamma(px + q) - ln_gamma(px),
                    digamma(px + q),
                    digamma(px),
                    tg_pxq,
                    tg_px,
                    x.ln(),
                ]
            })
            .collect();
        let data = self.spend;
        // Value, ∂p, ∂q, ∂v, then the upper triangle pp, pq, pv, qq, qv, vv.
        let term = |i: usize, sum: &mut [f64; 10]| {
            let (x, m, w) = (data.x[i], data.m[i], data.weight[i]);
            let [lg_diff, dg_pxq, dg_px, tg_pxq, tg_px, ln_x] = by_x[self.x_index[i] as usize];
            let px = p * x;
            let ln_xmv = (x * m + v).ln();
            let inv_xmv = 1.0 / (x * m + v);
            let ln_m = self.ln_m[i];
            sum[0] += w * (lg_diff - lg_q + q * ln_v + (px - 1.0) * ln_m + px * ln_x - (px + q) * ln_xmv);
            sum[1] += w * x * (dg_pxq - dg_px + ln_m + ln_x - ln_xmv);
            sum[2] += w * (dg_pxq - dg_q + ln_v - ln_xmv);
            sum[3] += w * (q / v - (px + q) * inv_xmv);
            if hessian {
                sum[4] += w * x * x * (tg_pxq - tg_px);
                sum[5] += w * x * tg_pxq;
                sum[6] -= w * x * inv_xmv;
                sum[7] += w * (tg_pxq - tg_q);
                sum[8] += w * (1.0 / v - inv_xmv);
                sum[9] += w * (-q / (v * v) + (px + q) * inv_xmv * inv_xmv);
            }
        };
        let sum = optimize::sum_chunks(data.x.len(), 8192, term, |total: [f64; 10], part| {
            std::array::from_fn(|k| total[k] + part[k])
        });
        optimize::log_space(
            &params.as_array(),
            self.customers,
            self.penalizer,
            sum[0],
            &sum[1..4],
            hessian.then_some(&sum[4..]),
        )
    }
}

/// A fitted Gamma-Gamma model (standard errors of p, q, v).
pub type Fit = optimize::Fit<Params, 3>;

pub fn fit(spend: &Spend, penalizer: f64) -> Option<Fit> {
    if spend.x.is_empty() {
        return None;
    }
    let mean_m = spend.mean(&spend.m);
    let starts = vec![
        vec![0.0f64; 3],
        vec![(0.1f64).ln(); 3],
        vec![(2.0f64).ln(), (3.0f64).ln(), (mean_m.max(1e-6) * 2.0).ln()],
    ];
    let sample = optimize::subsample_step(spend.x.len()).map(|step| Spend {
        x: optimize::every(&spend.x, step),
        m: optimize::every(&spend.m, step),
        weight: optimize::every(&spend.weight, step),
    });
    let (objective, minimum) = optimize::minimize_warm(
        || NegativeLogLikelihood::new(spend, penalizer),
        |starts| optimize::minimize(&NegativeLogLikelihood::new(sample.as_ref()?, penalizer), starts, 2000),
        starts,
        2000,
    )?;
    let params = Params {
        p: minimum.x[0].exp(),
        q: minimum.x[1].exp(),
        v: minimum.x[2].exp(),
    };
    let n = objective.customers;
    let log_likelihood = optimize::total_log_likelihood(&minimum, &params.as_array(), penalizer, n);
    Some(Fit::at(&minimum, params, params.as_array(), n, log_likelihood))
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

    /// Customers with the same (x, m) become one weighted pair (those without a repeat or with
    /// no spend are left out), and the weighted likelihood and correlation are the customers'.
    #[test]
    fn compressed_spend_is_the_customers_spend() {
        let x = [2u32, 0, 1, 2, 1, 3, 2, 1];
        let m = [10.0, 5.0, 7.5, 10.0, 7.5, 4.0, 12.0, 0.0];
        let spend = Spend::compress(&x, &m);
        assert_eq!(spend.x, [1.0, 2.0, 2.0, 3.0]);
        assert_eq!(spend.m, [7.5, 10.0, 12.0, 4.0]);
        assert_eq!(spend.weight, [2.0, 2.0, 1.0, 1.0]);
        assert_eq!(spend.customers(), 6.0);
        let each = Spend {
            x: vec![2.0, 1.0, 2.0, 1.0, 3.0, 2.0],
            m: vec![10.0, 7.5, 10.0, 7.5, 4.0, 12.0],
            weight: vec![1.0; 6],
        };
        let at = [(3.0f64).ln(), (2.5f64).ln(), (9.0f64).ln()];
        let (pairs, customers) = (
            NegativeLogLikelihood::new(&spend, 0.01).evaluate(&at, true),
            NegativeLogLikelihood::new(&each, 0.01).evaluate(&at, true),
        );
        assert!((pairs.value - customers.value).abs() < 1e-12);
        for (a, b) in pairs.gradient.iter().zip(&customers.gradient) {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        // Pearson over the six customers: x̄ = 11/6, m̄ = 51/6.
        let (mx, mm) = (11.0 / 6.0, 51.0 / 6.0);
        let (mut sxy, mut sxx, mut smm) = (0.0, 0.0, 0.0);
        for (x, m) in each.x.iter().zip(&each.m) {
            sxy += (x - mx) * (m - mm);
            sxx += (x - mx) * (x - mx);
            smm += (m - mm) * (m - mm);
        }
        assert!((spend.correlation() - sxy / (sxx * smm).sqrt()).abs() < 1e-12);
        assert!(Spend::compress(&[0, 1], &[3.0, 0.0]).x.is_empty());
    }

    #[test]
    fn derivatives_match_finite_differences() {
        let spend = Spend {
            x: vec![1.0, 2.0, 7.0],
            m: vec![20.0, 35.5, 12.0],
            weight: vec![3.0, 1.0, 2.0],
        };
        let objective = NegativeLogLikelihood::new(&spend, 0.05);
        let at = [(6.0f64).ln(), (4.0f64).ln(), (15.0f64).ln()];
        optimize::assert_derivatives_match(&objective, &at, 1e-6);
        let params = Params {
            p: 6.0,
            q: 4.0,
            v: 15.0,
        };
        let total: f64 = (0..3)
            .map(|i| spend.weight[i] * log_likelihood(&params, spend.x[i], spend.m[i]))
            .sum();
        let value = objective.evaluate(&at, false).value;
        let expected = -total / 6.0 + 0.05 * (36.0 + 16.0 + 225.0);
        assert!((value - expected).abs() < 1e-12, "{value} vs {expected}");
    }
}
