//! BG/NBD (Fader, Hardie & Lee 2005): likelihood with analytic gradient, maximum-likelihood fit,
//! P(alive) and the conditional expected number of purchases.
//!
//! Customers come compressed into patterns (x, t_x, T) with weights. Terms that depend only on
//! x (log-gammas, digammas) are computed once per distinct x per evaluation, so an evaluation
//! costs a few logarithms per pattern. The fit runs in log-parameter space on time scaled so
//! that max T = 1 (as `lifetimes` does); the penalizer (`lifetimes`' penalizer_coef) adds
//! penalizer · Σ θ² in that scaled space to the mean negative log-likelihood.

use super::{digamma, ln_gamma, trigamma};

use super::hyp2f1::ln_hyp2f1;
use super::optimize::{self, Evaluation, Objective};

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

    /// Compress, and say which pattern each customer has. Patterns come sorted by (x, T, t_x),
    /// so the patterns sharing (x, T) are adjacent.
    pub fn compress_indexed(x: &[u32], t_x: &[f64], t: &[f64]) -> (Patterns, Vec<u32>) {
        use rayon::prelude::*;
        let mut keyed: Vec<(u32, u64, u64, u32)> = (0..x.len())
            .into_par_iter()
            .map(|i| (x[i], t[i].to_bits(), t_x[i].to_bits(), i as u32))
            .collect();
        keyed.par_sort_unstable();
        Patterns::from_sorted(keyed.iter().map(|k| ((k.0, k.1, k.2), k.3)), x.len(), |i| {
            (x[i], t_x[i], t[i])
        })
    }

    /// `compress_indexed` for recency and age in whole days, converted to the model's unit
    /// (`unit_days` days): sorts one packed integer per customer, several times faster. When
    /// (x, T, t_x) pack into 32 bits (the usual case), key and customer share a u64 sorted by
    /// radix on the key's bytes, much cheaper than `par_sort_unstable` of (u64, u32) pairs.
    pub fn compress_days(x: &[u32], t_x_days: &[u32], t_days: &[u32], unit_days: f64) -> (Patterns, Vec<u32>) {
        use rayon::prelude::*;
        let in_unit = |days: u32| days as f64 / unit_days;
        let values = |i: usize| (x[i], in_unit(t_x_days[i]), in_unit(t_days[i]));
        let bits = |values: &[u32]| 32 - values.par_iter().max().map_or(0, |m| m.leading_zeros());
        let (x_bits, day_bits) = (bits(x), bits(t_days).max(bits(t_x_days)));
        if x_bits + 2 * day_bits <= 32 && u32::try_from(x.len()).is_ok() {
            let mut keyed: Vec<u64> = (0..x.len())
                .into_par_iter()
                .map(|i| {
                    let key = (x[i] << day_bits | t_days[i]) << day_bits | t_x_days[i];
                    u64::from(key) << 32 | i as u64
                })
                .collect();
            radsort::sort_by_key(&mut keyed, |packed| (packed >> 32) as u32);
            let sorted = keyed.iter().map(|&packed| (packed >> 32, packed as u32));
            return Patterns::from_sorted(sorted, x.len(), values);
        }
        if x_bits > 22 || day_bits > 21 {
            let t_x: Vec<f64> = t_x_days.iter().map(|&d| in_unit(d)).collect();
            let t: Vec<f64> = t_days.iter().map(|&d| in_unit(d)).collect();
            return Patterns::compress_indexed(x, &t_x, &t);
        }
        let mut keyed: Vec<(u64, u32)> = (0..x.len())
            .into_par_iter()
            .map(|i| {
                (
                    ((x[i] as u64) << 42) | ((t_days[i] as u64) << 21) | t_x_days[i] as u64,
                    i as u32,
                )
            })
            .collect();
        keyed.par_sort_unstable();
        Patterns::from_sorted(keyed.iter().copied(), x.len(), values)
    }

    /// Patterns from (key, customer) sorted by key: one pattern per run of equal keys.
    fn from_sorted<K: PartialEq>(
        sorted: impl Iterator<Item = (K, u32)>,
        customers: usize,
        values: impl Fn(usize) -> (u32, f64, f64),
    ) -> (Patterns, Vec<u32>) {
        let mut patterns = Patterns::default();
        let mut pattern_of = vec![0u32; customers];
        let mut previous: Option<K> = None;
        for (key, customer) in sorted {
            if previous.as_ref() == Some(&key) {
                *patterns.weight.last_mut().expect("a pattern exists") += 1.0;
            } else {
                let (x, t_x, t) = values(customer as usize);
                patterns.x.push(x);
                patterns.t_x.push(t_x);
                patterns.t.push(t);
                patterns.weight.push(1.0);
                previous = Some(key);
            }
            pattern_of[customer as usize] = (patterns.len() - 1) as u32;
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

fn log_add_exp(u: f64, v: f64) -> f64 {
    let m = u.max(v);
    m + ((u - m).exp() + (v - m).exp()).ln()
}

/// A log-likelihood total with its derivatives in θ = (r, α, a, b); `hessian` is the upper
/// triangle row by row: rr, rα, ra, rb, αα, αa, αb, aa, ab, bb.
#[derive(Debug, Clone, Copy, Default)]
struct Terms {
    value: f64,
    gradient: [f64; 4],
    hessian: [f64; 10],
}

impl Terms {
    fn add(mut self, other: &Terms) -> Terms {
        self.value += other.value;
        for k in 0..4 {
            self.gradient[k] += other.gradient[k];
        }
        for k in 0..10 {
            self.hessian[k] += other.hessian[k];
        }
        self
    }
}

const RR: usize = 0;
const R_ALPHA: usize = 1;
const ALPHA_ALPHA: usize = 4;
const AA: usize = 7;
const AB: usize = 8;
const BB: usize = 9;

/// Σ over patterns (`optimize::sum_chunks`: the same total whatever the thread count).
fn sum_patterns(n: usize, term: impl Fn(usize, &mut Terms) + Sync) -> Terms {
    optimize::sum_chunks(n, 4096, term, |sum, terms| sum.add(terms))
}

/// Mean negative log-likelihood plus penalty, over log-parameters (scaled time).
///
/// Terms that depend on x only (log-gammas and their derivatives) are summed once per distinct
/// x with the number of customers having it. Real summaries have few distinct ages T and
/// recencies t_x (whole days), so ln(α + T) and ln(α + t_x) are computed once per distinct
/// value per evaluation; what remains per pattern is one log-sum-exp.
pub struct NegativeLogLikelihood<'a> {
    patterns: &'a Patterns,
    penalizer: f64,
    customers: f64,
    weight_by_x: Vec<f64>,
    t_index: Vec<u32>,
    tx_index: Vec<u32>,
    distinct_t: Vec<f64>,
    distinct_tx: Vec<f64>,
}

impl<'a> NegativeLogLikelihood<'a> {
    pub fn new(patterns: &'a Patterns, penalizer: f64) -> Self {
        let ((distinct_t, t_index), (distinct_tx, tx_index)) = rayon::join(
            || optimize::distinct_index(&patterns.t),
            || optimize::distinct_index(&patterns.t_x),
        );
        let mut weight_by_x = vec![0.0; patterns.max_x() + 1];
        for (x, w) in patterns.x.iter().zip(&patterns.weight) {
            weight_by_x[*x as usize] += w;
        }
        NegativeLogLikelihood {
            patterns,
            penalizer,
            customers: patterns.customers(),
            weight_by_x,
            t_index,
            tx_index,
            distinct_t,
            distinct_tx,
        }
    }
}

impl Objective for NegativeLogLikelihood<'_> {
    fn evaluate(&self, log_params: &[f64], hessian: bool) -> Evaluation {
        let p = Params::from_log(log_params);
        let Params { r, alpha, a, b } = p;
        let data = self.patterns;
        let max_x = self.weight_by_x.len() - 1;
        // lnΓ(r + x) − lnΓ(r) + r ln α + lnΓ(a + b) + lnΓ(b + x) − lnΓ(b) − lnΓ(a + b + x),
        // summed over customers by x.
        let (lg_r, lg_b, lg_ab) = (ln_gamma(r), ln_gamma(b), ln_gamma(a + b));
        let (dg_r, dg_b, dg_ab) = (digamma(r), digamma(b), digamma(a + b));
        let (tg_r, tg_b, tg_ab) = (trigamma(r), trigamma(b), trigamma(a + b));
        let (ln_alpha, ln_a) = (alpha.ln(), a.ln());
        let mut by_x = Terms::default();
        let mut a4_const = vec![0.0; max_x + 1]; // ln a − ln(b + x − 1)
        let mut inv_bx = vec![0.0; max_x + 1]; // 1 / (b + x − 1)
        for x in 0..=max_x {
            let xf = x as f64;
            if x > 0 {
                a4_const[x] = ln_a - (b + xf - 1.0).ln();
                inv_bx[x] = 1.0 / (b + xf - 1.0);
            }
            let w = self.weight_by_x[x];
            if w == 0.0 {
                continue;
            }
            by_x.value +=
                w * (ln_gamma(r + xf) - lg_r + r * ln_alpha + lg_ab + ln_gamma(b + xf) - lg_b - ln_gamma(a + b + xf));
            let dg_abx = digamma(a + b + xf);
            let g = [
                digamma(r + xf) - dg_r + ln_alpha,
                r / alpha,
                dg_ab - dg_abx,
                dg_ab + digamma(b + xf) - dg_b - dg_abx,
            ];
            for (sum, g) in by_x.gradient.iter_mut().zip(g) {
                *sum += w * g;
            }
            if hessian {
                let tg_abx = tg_ab - trigamma(a + b + xf);
                by_x.hessian[RR] += w * (trigamma(r + xf) - tg_r);
                by_x.hessian[R_ALPHA] += w / alpha;
                by_x.hessian[ALPHA_ALPHA] -= w * r / (alpha * alpha);
                by_x.hessian[AA] += w * tg_abx;
                by_x.hessian[AB] += w * tg_abx;
                by_x.hessian[BB] += w * (tg_abx + trigamma(b + xf) - tg_b);
            }
        }
        // ln(α + T), 1 / (α + T) per distinct T; the same for t_x.
        let logs = |values: &[f64]| -> Vec<(f64, f64)> {
            values.iter().map(|v| ((alpha + v).ln(), 1.0 / (alpha + v))).collect()
        };
        let (by_t, by_tx) = (logs(&self.distinct_t), logs(&self.distinct_tx));
        let inv_a = 1.0 / a;
        // Per pattern: a3 = −(r + x) ln(α + T), and for x > 0 the log-sum-exp of a3 and
        // a4 = ln a − ln(b + x − 1) − (r + x) ln(α + t_x).
        let per_pattern = |i: usize, terms: &mut Terms| {
            let x = data.x[i] as usize;
            let rx = r + x as f64;
            let w = data.weight[i];
            let (ln_t, inv_t) = by_t[self.t_index[i] as usize];
            let a3 = -rx * ln_t;
            if x == 0 {
                terms.value += w * a3;
                terms.gradient[0] -= w * ln_t;
                terms.gradient[1] -= w * rx * inv_t;
                if hessian {
                    terms.hessian[R_ALPHA] -= w * inv_t;
                    terms.hessian[ALPHA_ALPHA] += w * rx * inv_t * inv_t;
                }
                return;
            }
            let (ln_tx, inv_tx) = by_tx[self.tx_index[i] as usize];
            let a4 = a4_const[x] - rx * ln_tx;
            // log-sum-exp with one exp and one ln_1p; w3 + w4 = 1.
            let (high, low) = if a3 > a4 { (a3, a4) } else { (a4, a3) };
            let e = (low - high).exp();
            let w_high = 1.0 / (1.0 + e);
            let (w3, w4) = if a3 > a4 {
                (w_high, 1.0 - w_high)
            } else {
                (1.0 - w_high, w_high)
            };
            terms.value += w * (high + e.ln_1p());
            let d3 = [-ln_t, -rx * inv_t];
            let d4 = [-ln_tx, -rx * inv_tx, inv_a, -inv_bx[x]];
            terms.gradient[0] += w * (w3 * d3[0] + w4 * d4[0]);
            terms.gradient[1] += w * (w3 * d3[1] + w4 * d4[1]);
            terms.gradient[2] += w * w4 * d4[2];
            terms.gradient[3] += w * w4 * d4[3];
            if hessian {
                // w3 ∂²a3 + w4 ∂²a4 + w3 w4 (∂a3 − ∂a4)(∂a3 − ∂a4)ᵀ
                let d = [d3[0] - d4[0], d3[1] - d4[1], -d4[2], -d4[3]];
                let ww = w * w3 * w4;
                let h = &mut terms.hessian;
                let mut at = 0;
                for i in 0..4 {
                    for j in i..4 {
                        h[at] += ww * d[i] * d[j];
                        at += 1;
                    }
                }
                h[R_ALPHA] -= w * (w3 * inv_t + w4 * inv_tx);
                h[ALPHA_ALPHA] += w * rx * (w3 * inv_t * inv_t + w4 * inv_tx * inv_tx);
                h[AA] -= w * w4 * inv_a * inv_a;
                h[BB] += w * w4 * inv_bx[x] * inv_bx[x];
            }
        };
        let sum = sum_patterns(data.len(), per_pattern).add(&by_x);
        optimize::log_space(
            &p.as_array(),
            self.customers,
            self.penalizer,
            sum.value,
            &sum.gradient,
            hessian.then_some(&sum.hessian[..]),
        )
    }
}

/// A fitted BG/NBD model (standard errors of r, α, a, b).
pub type Fit = optimize::Fit<Params, 4>;

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
    let starts = vec![
        vec![0.0f64; 4],
        vec![(0.1f64).ln(); 4],
        vec![0.0, (0.1f64).ln(), 0.0, (3.0f64).ln()],
        vec![(0.5f64).ln(), (0.05f64).ln(), (0.8f64).ln(), (2.5f64).ln()],
    ];
    let sample = optimize::subsample_step(scaled.len()).map(|step| Patterns {
        x: optimize::every(&scaled.x, step),
        t_x: optimize::every(&scaled.t_x, step),
        t: optimize::every(&scaled.t, step),
        weight: optimize::every(&scaled.weight, step),
    });
    let (_, minimum) = optimize::minimize_warm(
        || NegativeLogLikelihood::new(&scaled, penalizer),
        |starts| optimize::minimize(&NegativeLogLikelihood::new(sample.as_ref()?, penalizer), starts, 2000),
        starts,
        2000,
    )?;
    let scaled_params = Params::from_log(&minimum.x);
    let params = Params {
        alpha: scaled_params.alpha / scale,
        ..scaled_params
    };
    let n = patterns.customers();
    // The objective's likelihood is in scaled time: rescaling t and α by s shifts each
    // customer's log-likelihood by −x ln s.
    let purchases: f64 = (0..patterns.len())
        .map(|i| patterns.weight[i] * patterns.x[i] as f64)
        .sum();
    let log_likelihood =
        optimize::total_log_likelihood(&minimum, &scaled_params.as_array(), penalizer, n) + scale.ln() * purchases;
    Some(Fit::at(&minimum, params, params.as_array(), n, log_likelihood))
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
/// `lifetimes`' conditional_expected_number_of_purchases_up_to_time). It factors into
/// P(alive | x, t_x, T) times `expected_if_alive(x, T)`, which does not depend on t_x: callers
/// scoring many customers compute the second factor once per distinct (x, T).
pub fn expected_purchases(params: &Params, horizon: f64, x: u32, t_x: f64, t: f64) -> Option<f64> {
    Some(p_alive(params, x, t_x, t) * expected_if_alive(params, horizon, x, t)?)
}

/// P(no purchase in the next `horizon` time units | x, t_x, T) (`lifetimes`'
/// conditional_probability_of_n_purchases_up_to_time with n = 0): a customer who has dropped
/// out buys nothing; one still alive has a purchase rate distributed Gamma(r + x, α + T), so
/// P(none | alive) = ((α + T)/(α + T + t))^(r + x). Hence
/// 1 − p_alive + p_alive · `no_purchase_if_alive(x, T)`.
pub fn p_no_purchases(params: &Params, horizon: f64, x: u32, t_x: f64, t: f64) -> f64 {
    let alive = p_alive(params, x, t_x, t);
    1.0 - alive + alive * no_purchase_if_alive(params, horizon, x, t)
}

/// ((α + T)/(α + T + t))^(r + x): P(no purchase in the next t | alive, x, T).
pub fn no_purchase_if_alive(params: &Params, horizon: f64, x: u32, t: f64) -> f64 {
    let Params { r, alpha, .. } = *params;
    ((r + x as f64) * ((alpha + t) / (alpha + t + horizon.max(0.0))).ln()).exp()
}

/// The t_x-independent factor of E[X(t) | x, t_x, T]: (a + b + x − 1)/(a − 1) ·
/// (1 − ((α + T)/(α + T + t))^(r + x) · 2F1(r + x, b + x; a + b + x − 1; t/(α + T + t))).
/// For a < 1 both factors are negative and the product is still the expectation; a = 1 is a
/// removable singularity we do not evaluate (`None`), as is a 2F1 series that fails.
pub fn expected_if_alive(params: &Params, horizon: f64, x: u32, t: f64) -> Option<f64> {
    if horizon <= 0.0 {
        return Some(0.0);
    }
    let Params { r, alpha, a, b } = *params;
    if (a - 1.0).abs() < 1e-9 {
        return None;
    }
    let xf = x as f64;
    let z = horizon / (alpha + t + horizon);
    let ln_hyp = ln_hyp2f1(r + xf, b + xf, a + b + xf - 1.0, z)?;
    let first = (a + b + xf - 1.0) / (a - 1.0);
    let second = -(ln_hyp + (r + xf) * ((alpha + t) / (alpha + horizon + t)).ln()).exp_m1();
    let value = first * second;
    value.is_finite().then_some(value.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_finite_differences() {
        let patterns = Patterns {
            x: vec![0, 1, 4, 30],
            t_x: vec![0.0, 0.3, 0.7, 0.95],
            t: vec![0.5, 0.9, 1.0, 1.0],
            weight: vec![10.0, 3.0, 2.0, 1.0],
        };
        let objective = NegativeLogLikelihood::new(&patterns, 0.01);
        let at = [(0.3f64).ln(), (0.2f64).ln(), (0.9f64).ln(), (2.0f64).ln()];
        optimize::assert_derivatives_match(&objective, &at, 1e-6);
        // The objective's value is the mean negative log-likelihood of the per-customer formula.
        let params = Params::from_log(&at);
        let total: f64 = (0..4)
            .map(|i| patterns.weight[i] * log_likelihood(&params, patterns.x[i], patterns.t_x[i], patterns.t[i]))
            .sum();
        let penalty = optimize::penalty(&params.as_array(), 0.01);
        let value = objective.evaluate(&at, false).value;
        assert!(
            (value - (-total / 16.0 + penalty)).abs() < 1e-12,
            "{value} vs {}",
            -total / 16.0 + penalty
        );
    }

    #[test]
    fn compress_counts_identical_histories() {
        let patterns = Patterns::compress(&[0, 2, 0, 2], &[0.0, 5.0, 0.0, 5.0], &[10.0, 20.0, 10.0, 21.0]);
        assert_eq!(patterns.x, [0, 2, 2]);
        assert_eq!(patterns.weight, [2.0, 1.0, 1.0]);
        // Whole days in weeks: the same patterns, in the same order, with the same assignment.
        let x = [2, 0, 2, 2, 1];
        let (t_x, t) = ([14, 0, 7, 14, 3], [21, 7, 21, 21, 70]);
        let (by_days, of_days) = Patterns::compress_days(&x, &t_x, &t, 7.0);
        let weeks = |days: &[u32]| days.iter().map(|&d| d as f64 / 7.0).collect::<Vec<_>>();
        let (by_value, of_value) = Patterns::compress_indexed(&x, &weeks(&t_x), &weeks(&t));
        assert_eq!(by_days.x, [0, 1, 2, 2]);
        assert_eq!(by_days.t_x, [0.0, 3.0 / 7.0, 1.0, 2.0]);
        assert_eq!(by_days.weight, [1.0, 1.0, 1.0, 2.0]);
        assert_eq!(of_days, [3, 0, 2, 3, 1]);
        assert_eq!(
            (by_days.x, by_days.t_x, by_days.t, of_days),
            (by_value.x, by_value.t_x, by_value.t, of_value)
        );
    }

    /// Histories whose (x, T, t_x) need more than 32 bits (sorted as pairs) or more than 64
    /// (sorted as doubles) compress as the radix-sorted ones do: the same patterns by value.
    #[test]
    fn compress_days_agrees_with_compress_indexed_at_every_width() {
        for (x_max, day_max) in [(40u32, 1_500u32), (1 << 12, 1 << 16), (1 << 23, 1 << 21)] {
            let n = 5_000u32;
            // 7 × 11 × 13 histories, each about 5 times.
            let x: Vec<u32> = (0..n).map(|i| i % 7 * (x_max / 6)).collect();
            let t: Vec<u32> = (0..n).map(|i| day_max - i % 11).collect();
            let t_x: Vec<u32> = (0..n).map(|i| (i % 13) * (day_max / 13)).collect();
            let (by_days, of_days) = Patterns::compress_days(&x, &t_x, &t, 7.0);
            let weeks = |days: &[u32]| days.iter().map(|&d| d as f64 / 7.0).collect::<Vec<_>>();
            let (by_value, of_value) = Patterns::compress_indexed(&x, &weeks(&t_x), &weeks(&t));
            assert!(by_days.len() > 100 && by_days.len() < n as usize, "{}", by_days.len());
            assert_eq!(by_days.weight, by_value.weight, "x < {x_max}, days < {day_max}");
            assert_eq!(
                (by_days.x, by_days.t_x, by_days.t, of_days),
                (by_value.x, by_value.t_x, by_value.t, of_value)
            );
        }
    }
}
