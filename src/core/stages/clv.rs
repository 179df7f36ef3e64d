//! `clv`: BG/NBD + Gamma-Gamma customer lifetime value, with p_alive, expected purchases, expected
//! order value, discounted CLV, the fitted model, and optional holdout validation.
//!
//! Units: customer_facts holds frequency, t_x and T in days; they are converted to `time_unit`
//! (day = 1, week = 7, month = 365.25 / 12 days) before fitting, so α is per time unit. The
//! horizon is `horizon_months` months, month m ending at t_m = m · (365.25 / 12) / unit days.
//! The monthly discount rate is d = (1 + annual_discount_rate)^(1/12) − 1, and
//! clv = margin · Σ_{m=1..H} E[order value] · (E[X(t_m)] − E[X(t_{m−1})]) / (1 + d)^m.

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use polars::prelude::*;
use rayon::prelude::*;
use serde::Deserialize;

use super::{Kind, Stage, StageInputs, ORDERS};
use crate::core::clv::{bgnbd, gamma_gamma};
use crate::core::diagnostic::Diagnostics;
use crate::core::options::TableReader;
use crate::core::period::to_days;

const DAYS_PER_MONTH: f64 = 365.25 / 12.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    #[default]
    BgnbdGammaGamma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    Day,
    #[default]
    Week,
    Month,
}

impl TimeUnit {
    pub fn days(self) -> f64 {
        match self {
            TimeUnit::Day => 1.0,
            TimeUnit::Week => 7.0,
            TimeUnit::Month => DAYS_PER_MONTH,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TimeUnit::Day => "day",
            TimeUnit::Week => "week",
            TimeUnit::Month => "month",
        }
    }
}

/// What to do when a model is degenerate (`model_problems`): did not converge, a parameter
/// outside `PARAMETER_RANGE` or not finite, no standard errors (a singular Hessian), more
/// customers with a null CLV than `max_null_clv_fraction`, or a spend model that cannot give
/// order values (no repeat customer with spend, q ≤ 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnModelFailure {
    /// Fail the run (exit 1): the previous snapshot stays.
    #[default]
    Error,
    /// Publish anyway (null order values and CLV where there are none), with each problem as
    /// a warning in the log and the manifest.
    Warn,
}

/// Fitted parameters outside this range are degenerate (a model that drifted to a boundary:
/// e.g. BG/NBD a and b in the millions, where P(alive) stops meaning anything).
pub const PARAMETER_RANGE: (f64, f64) = (1e-6, 1e6);

/// What is wrong with a fit, as "BG/NBD: …" sentences; empty when nothing is.
fn model_problems(
    model: &str,
    names: &[&str],
    values: &[f64],
    std_errors: Option<&[f64]>,
    converged: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !converged {
        problems.push(format!("{model}: the fit did not converge"));
    }
    for (name, value) in names.iter().zip(values) {
        if !value.is_finite() || !(PARAMETER_RANGE.0..=PARAMETER_RANGE.1).contains(value) {
            problems.push(format!(
                "{model}: parameter {name} = {value:.6e} is outside the sane range [{:e}, {:e}]",
                PARAMETER_RANGE.0, PARAMETER_RANGE.1
            ));
        }
    }
    match std_errors {
        None => problems.push(format!(
            "{model}: no standard errors (the Hessian is singular: the data do not pin the parameters down)"
        )),
        Some(errors) if errors.iter().any(|e| !e.is_finite()) => {
            problems.push(format!("{model}: a standard error is not finite"))
        }
        Some(_) => {}
    }
    problems
}

/// Options of `kind = "clv"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClvOptions {
    pub model: Model,
    /// day | week (default) | month.
    pub time_unit: TimeUnit,
    /// CLV horizon in months. Default 12.
    pub horizon_months: u32,
    /// Default 0.1 (10 % a year), applied monthly.
    pub annual_discount_rate: f64,
    /// Share of revenue kept, or "observed" (needs `cost`). Default 1.0.
    pub margin: super::Margin,
    /// L2 penalty on the parameters (as `lifetimes`' penalizer_coef). Default 0.
    pub penalizer: f64,
    /// Fit on purchases up to this date and validate on the rest: a date, or a distance before
    /// as_of (`"as_of - 26w"`).
    pub calibration_end: Option<crate::core::as_of::RelativeDate>,
    /// The same as `calibration_end = "as_of - Nd"`: the last N days are the holdout.
    pub holdout_days: Option<u32>,
    /// `error` (default): a degenerate model fails the run; `warn`: it is published with warnings.
    pub on_model_failure: OnModelFailure,
    /// The share of customers whose CLV may be null before the model counts as failed (default 0).
    pub max_null_clv_fraction: f64,
}

impl Default for ClvOptions {
    fn default() -> Self {
        ClvOptions {
            model: Model::BgnbdGammaGamma,
            time_unit: TimeUnit::Week,
            horizon_months: 12,
            annual_discount_rate: 0.1,
            margin: super::Margin::default(),
            penalizer: 0.0,
            calibration_end: None,
            holdout_days: None,
            on_model_failure: OnModelFailure::Error,
            max_null_clv_fraction: 0.0,
        }
    }
}

impl ClvOptions {
    fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if !(1..=600).contains(&self.horizon_months) {
            errors.push((
                "horizon_months",
                format!(
                    "`horizon_months` must be between 1 and 600, got {}",
                    self.horizon_months
                ),
            ));
        }
        if !(0.0..=10.0).contains(&self.annual_discount_rate) {
            errors.push((
                "annual_discount_rate",
                format!(
                    "`annual_discount_rate` must be between 0 and 10, got {}",
                    self.annual_discount_rate
                ),
            ));
        }
        errors.extend(self.margin.check());
        if self.calibration_end.is_some() && self.holdout_days.is_some() {
            errors.push((
                "holdout_days",
                "set `calibration_end` or `holdout_days`, not both".to_string(),
            ));
        }
        if self.holdout_days == Some(0) {
            errors.push(("holdout_days", "`holdout_days` must be at least 1".to_string()));
        }
        if !(0.0..=1.0).contains(&self.max_null_clv_fraction) {
            errors.push((
                "max_null_clv_fraction",
                format!(
                    "`max_null_clv_fraction` must be between 0 and 1, got {}",
                    self.max_null_clv_fraction
                ),
            ));
        }
        if !(self.penalizer >= 0.0 && self.penalizer.is_finite()) {
            errors.push(("penalizer", format!("`penalizer` must be ≥ 0, got {}", self.penalizer)));
        }
        errors
    }
}

pub static KIND: Kind = Kind {
    name: "clv",
    summary: "BG/NBD + Gamma-Gamma: p_alive, expected purchases and order value, discounted CLV",
    input: ORDERS,
    tables: &["customers", "model", "validation"],
    customer_table: Some(0),
    options: serde_aux::serde_introspection::serde_introspect::<ClvOptions>,
    parse,
};

fn parse(reader: &TableReader, common: &[&str], diagnostics: &mut Diagnostics) -> Option<Box<dyn Stage>> {
    let options = super::parse_options::<ClvOptions>(reader, common, diagnostics)?;
    super::lifecycle::report(reader, options.check(), diagnostics).then(|| Box::new(options) as Box<dyn Stage>)
}

/// One fitted model's rows of the model table.
struct ModelRows {
    model: Vec<&'static str>,
    parameter: Vec<String>,
    value: Vec<f64>,
    std_error: Vec<Option<f64>>,
    log_likelihood: Vec<Option<f64>>,
    customers: Vec<i64>,
    iterations: Vec<i64>,
    converged: Vec<bool>,
}

impl ModelRows {
    fn new() -> Self {
        ModelRows {
            model: Vec::new(),
            parameter: Vec::new(),
            value: Vec::new(),
            std_error: Vec::new(),
            log_likelihood: Vec::new(),
            customers: Vec::new(),
            iterations: Vec::new(),
            converged: Vec::new(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        model: &'static str,
        parameter: &str,
        value: f64,
        std_error: Option<f64>,
        log_likelihood: Option<f64>,
        customers: f64,
        iterations: u64,
        converged: bool,
    ) {
        self.model.push(model);
        self.parameter.push(parameter.to_string());
        self.value.push(value);
        self.std_error.push(std_error);
        self.log_likelihood.push(log_likelihood);
        self.customers.push(customers as i64);
        self.iterations.push(iterations as i64);
        self.converged.push(converged);
    }

    fn into_frame(self, unit: TimeUnit) -> Result<DataFrame> {
        let n = self.model.len();
        Ok(DataFrame::new_infer_height(vec![
            Column::new(
                "model".into(),
                self.model.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ),
            Column::new("parameter".into(), self.parameter),
            Column::new("value".into(), self.value),
            Column::new("std_error".into(), self.std_error),
            Column::new("log_likelihood".into(), self.log_likelihood),
            Column::new("customers".into(), self.customers),
            Column::new("iterations".into(), self.iterations),
            Column::new("converged".into(), self.converged),
            Column::new("time_unit".into(), vec![unit.name().to_string(); n]),
        ])?)
    }
}

/// BTYD inputs of every customer, in the model's time unit.
struct Summary<'a> {
    x: Vec<u32>,
    /// Recency and age in whole days (in the model's unit: divided by `TimeUnit::days`).
    t_x_days: Vec<u32>,
    t_days: Vec<u32>,
    /// The facts' own column (no nulls: a customer with no repeat has 0).
    monetary: &'a [f64],
}

/// The facts' BTYD columns, read in place (they are Int64 and Float64 without nulls).
fn summary(facts: &DataFrame) -> Result<Summary<'_>> {
    use crate::core::prepare::values;
    let narrow = |name: &str| -> Result<Vec<u32>> {
        Ok(values::<Int64Type>(facts, name)?
            .par_iter()
            .map(|&v| v as u32)
            .collect())
    };
    Ok(Summary {
        x: narrow("frequency")?,
        t_x_days: narrow("t_x")?,
        t_days: narrow("T")?,
        monetary: values::<Float64Type>(facts, "monetary_value")?,
    })
}

fn bgnbd_rows(rows: &mut ModelRows, fit: &bgnbd::Fit, customers: f64) {
    let names = ["r", "alpha", "a", "b"];
    for (k, value) in fit.params.as_array().iter().enumerate() {
        rows.push(
            "bgnbd",
            names[k],
            *value,
            fit.std_errors.map(|e| e[k]),
            Some(fit.log_likelihood),
            customers,
            fit.iterations,
            fit.converged,
        );
    }
}

impl ClvOptions {
    /// The end of the calibration period, when the stage validates against a holdout.
    pub fn calibration(&self) -> Option<crate::core::as_of::RelativeDate> {
        self.calibration_end.or(self
            .holdout_days
            .map(|days| crate::core::as_of::RelativeDate::BeforeAsOf { count: days, unit: 'd' }))
    }
}

impl Stage for ClvOptions {
    fn source_columns(&self) -> Vec<(&'static str, &'static str)> {
        self.margin.source_columns()
    }

    /// Only the validation against a holdout reads purchase days.
    fn reads_customer_periods(&self) -> bool {
        self.calibration().is_some()
    }

    fn check_as_of(&self, as_of: NaiveDate) -> Option<String> {
        let end = self.calibration()?.resolve(as_of);
        (end >= as_of).then(|| {
            format!(
                "`calibration_end` {end} is not before as_of {as_of}: the holdout would be empty; use an earlier date or a distance such as `\"as_of - 26w\"`"
            )
        })
    }

    fn tables(&self) -> Vec<&'static str> {
        match self.calibration() {
            Some(_) => KIND.tables.to_vec(),
            None => KIND.tables[..2].to_vec(),
        }
    }

    fn run(&self, inputs: &StageInputs) -> Result<Vec<DataFrame>> {
        let shared = inputs.shared()?;
        let facts = &shared.customer_facts;
        if facts.height() == 0 {
            bail!("no customers to fit");
        }
        let started = std::time::Instant::now();
        let data = summary(facts)?;
        tracing::debug!("clv: summary in {:.3} s", started.elapsed().as_secs_f64());
        let clock = std::time::Instant::now();
        let lap = |what: &str| tracing::debug!("clv: {what} at {:.3} s", clock.elapsed().as_secs_f64());
        // The two models are independent: fit them side by side (each is parallel inside too,
        // but both have sequential stretches).
        let ((patterns, pattern_of, bgnbd_fit), (spend, spend_fit)) = rayon::join(
            || {
                let (patterns, pattern_of) =
                    bgnbd::Patterns::compress_days(&data.x, &data.t_x_days, &data.t_days, self.time_unit.days());
                lap("BG/NBD patterns");
                let fit = patterns
                    .x
                    .iter()
                    .any(|&x| x > 0)
                    .then(|| bgnbd::fit(&patterns, self.penalizer));
                lap("BG/NBD fit");
                (patterns, pattern_of, fit)
            },
            || {
                // Gamma-Gamma on repeat customers with positive spend, as distinct (x, m).
                let spend = gamma_gamma::Spend::compress(&data.x, data.monetary);
                let fit = gamma_gamma::fit(&spend, self.penalizer);
                lap("Gamma-Gamma fit");
                (spend, fit)
            },
        );
        lap("BG/NBD and Gamma-Gamma fits");
        tracing::info!(
            "clv: fitted BG/NBD on {} customers in {} patterns, Gamma-Gamma on {} repeat customers in {} patterns",
            data.x.len(),
            patterns.len(),
            spend.customers(),
            spend.x.len()
        );
        let mut rows = ModelRows::new();
        let mut problems: Vec<String> = Vec::new();
        // Without a single repeat purchase BG/NBD has no interior maximum: nobody is expected
        // to buy again, and the model table says it was not fitted.
        let fit = match bgnbd_fit {
            Some(fit) => {
                let fit = fit.context("BG/NBD: no finite maximum of the likelihood")?;
                problems.extend(model_problems(
                    "BG/NBD",
                    &["r", "alpha", "a", "b"],
                    &fit.params.as_array(),
                    fit.std_errors.as_ref().map(|e| e.as_slice()),
                    fit.converged,
                ));
                bgnbd_rows(&mut rows, &fit, patterns.customers());
                Some(fit)
            }
            None => {
                tracing::warn!(
                    "clv: no customer has a repeat purchase; BG/NBD is not identifiable, expected purchases are 0"
                );
                rows.push(
                    "bgnbd",
                    "repeat_customers",
                    0.0,
                    None,
                    None,
                    patterns.customers(),
                    0,
                    false,
                );
                None
            }
        };
        let spend_params = match &spend_fit {
            Some(spend_fit) if spend_fit.params.q > 1.0 && spend_fit.converged => Some(spend_fit.params),
            _ => {
                let why = match &spend_fit {
                    None => format!(
                        "no repeat customer has a positive monetary value ({} repeat customers)",
                        spend.customers()
                    ),
                    Some(f) if f.params.q <= 1.0 => {
                        format!("q = {:.4} ≤ 1: expected order values are unbounded", f.params.q)
                    }
                    Some(_) => "the Gamma-Gamma fit did not converge".to_string(),
                };
                problems.push(format!("Gamma-Gamma: {why}; expected_order_value and clv are null"));
                None
            }
        };
        if let Some(spend_fit) = spend_fit.as_ref().filter(|_| spend_params.is_some()) {
            problems.extend(model_problems(
                "Gamma-Gamma",
                &["p", "q", "v"],
                &spend_fit.params.as_array(),
                spend_fit.std_errors.as_ref().map(|e| e.as_slice()),
                spend_fit.converged,
            ));
        }
        if let Some(spend_fit) = &spend_fit {
            let names = ["p", "q", "v"];
            for (k, value) in spend_fit.params.as_array().iter().enumerate() {
                rows.push(
                    "gamma_gamma",
                    names[k],
                    *value,
                    spend_fit.std_errors.map(|e| e[k]),
                    Some(spend_fit.log_likelihood),
                    spend.customers(),
                    spend_fit.iterations,
                    spend_fit.converged && spend_params.is_some(),
                );
            }
            // The model assumes spend independent of frequency: report how far that holds.
            rows.push(
                "gamma_gamma",
                "corr_frequency_monetary",
                spend.correlation(),
                None,
                None,
                spend.customers(),
                0,
                true,
            );
        }

        // Scores per pattern, in parallel, then per customer.
        let unit_months = DAYS_PER_MONTH / self.time_unit.days();
        let horizon = self.horizon_months as usize;
        let Some(params) = fit.as_ref().map(|fit| fit.params) else {
            let tables = self.finish(
                facts,
                &data,
                vec![Score {
                    p_alive: 1.0,
                    expected_if_alive: Some(0.0),
                    discounted_if_alive: Some(0.0),
                    no_purchase_if_alive: 1.0,
                }],
                &vec![0; data.x.len()],
                spend_params,
                rows,
                shared,
                &mut problems,
            )?;
            return self.judge(tables, problems);
        };
        // E[X(t)] = P(alive) · E[X(t) | alive], and the second factor depends on (x, T) only:
        // compute it once per distinct pair and month, reduced to the horizon's total and the
        // discounted sum of its monthly increments (CLV per unit of order value and P(alive)).
        let monthly_factor = 1.0 / (1.0 + monthly_discount(self.annual_discount_rate));
        // Patterns come sorted by (x, T, t_x): the pairs are runs.
        let mut pairs: Vec<(u32, u64)> = Vec::new();
        let mut pair_of = Vec::with_capacity(patterns.len());
        for i in 0..patterns.len() {
            let pair = (patterns.x[i], patterns.t[i].to_bits());
            if pairs.last() != Some(&pair) {
                pairs.push(pair);
            }
            pair_of.push(pairs.len() - 1);
        }
        let horizon_units = horizon as f64 * unit_months;
        let if_alive: Vec<(Option<f64>, Option<f64>)> = pairs
            .par_iter()
            .map(|&(x, t)| {
                let (mut previous, mut discounted, mut factor) = (0.0, 0.0, 1.0);
                for m in 1..=horizon {
                    let Some(cumulative) =
                        bgnbd::expected_if_alive(&params, m as f64 * unit_months, x, f64::from_bits(t))
                    else {
                        return (None, None);
                    };
                    factor *= monthly_factor;
                    discounted += (cumulative - previous) * factor;
                    previous = cumulative;
                }
                (Some(previous), Some(discounted))
            })
            .collect();
        lap(&format!("expectations for {} (x, T) pairs", pairs.len()));
        let scored: Vec<Score> = (0..patterns.len())
            .into_par_iter()
            .map(|i| {
                let (x, t) = (patterns.x[i], patterns.t[i]);
                let (expected, discounted) = if_alive[pair_of[i]];
                Score {
                    p_alive: bgnbd::p_alive(&params, x, patterns.t_x[i], t),
                    expected_if_alive: expected,
                    discounted_if_alive: discounted,
                    no_purchase_if_alive: bgnbd::no_purchase_if_alive(&params, horizon_units, x, t),
                }
            })
            .collect();
        lap("scores per pattern");
        tracing::info!(
            "clv: fit and scored {} customers in {:.3} s",
            data.x.len(),
            clock.elapsed().as_secs_f64()
        );
        let tables = self.finish(
            facts,
            &data,
            scored,
            &pattern_of,
            spend_params,
            rows,
            shared,
            &mut problems,
        )?;
        tracing::debug!("clv: tables built at {:.3} s", clock.elapsed().as_secs_f64());
        self.judge(tables, problems)
    }
}

impl ClvOptions {
    /// Publish `tables`, or fail, by `on_model_failure`: `problems` of the fits, and more
    /// customers with a null CLV than `max_null_clv_fraction` allows.
    fn judge(&self, tables: Vec<DataFrame>, mut problems: Vec<String>) -> Result<Vec<DataFrame>> {
        let clv = tables[0].column("clv")?;
        let customers = clv.len().max(1);
        let share = clv.null_count() as f64 / customers as f64;
        if share > self.max_null_clv_fraction {
            problems.push(format!(
                "{} of {} customers ({:.2}%) have a null clv, more than max_null_clv_fraction = {}",
                clv.null_count(),
                clv.len(),
                share * 100.0,
                self.max_null_clv_fraction
            ));
        }
        if problems.is_empty() {
            return Ok(tables);
        }
        match self.on_model_failure {
            OnModelFailure::Error => bail!(
                "the model is degenerate and was not published: {}; try a `penalizer` (e.g. 0.001) or a longer history, check the customer summary for outliers, or set `on_model_failure = \"warn\"` to publish it with warnings",
                problems.join("; ")
            ),
            OnModelFailure::Warn => {
                for problem in &problems {
                    tracing::warn!("clv: {problem} (published: on_model_failure = \"warn\")");
                }
                Ok(tables)
            }
        }
    }
}

/// Scores shared by every customer of a pattern: E[X(horizon)] = p_alive · expected_if_alive,
/// CLV = margin · E[order value] · p_alive · discounted_if_alive.
struct Score {
    p_alive: f64,
    expected_if_alive: Option<f64>,
    /// Σ over months m of (E[X(m) | alive] − E[X(m − 1) | alive]) / (1 + monthly rate)^m.
    discounted_if_alive: Option<f64>,
    /// P(no purchase over the horizon | alive): P(none) = 1 − p_alive + p_alive · this.
    no_purchase_if_alive: f64,
}

/// The monthly rate equivalent to an annual one: (1 + annual)^(1/12) − 1.
fn monthly_discount(annual: f64) -> f64 {
    (1.0 + annual).powf(1.0 / 12.0) - 1.0
}

impl ClvOptions {
    /// Per-customer table from per-pattern scores, the model table, and the validation.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        facts: &DataFrame,
        data: &Summary,
        scored: Vec<Score>,
        pattern_of: &[u32],
        spend_params: Option<gamma_gamma::Params>,
        mut rows: ModelRows,
        shared: &crate::core::prepare::SharedTables,
        problems: &mut Vec<String>,
    ) -> Result<Vec<DataFrame>> {
        let n = data.x.len();
        let margin = self.margin.value(shared)?;
        // Per customer, in parallel: p_alive, expected purchases, P(no purchase), expected order
        // value, CLV, straight into their columns (NaN for none: every value is finite), each
        // thread a block of customers.
        let mut values: [Vec<f64>; 5] = std::array::from_fn(|_| vec![f64::NAN; n]);
        let [p_alive, expected, no_purchases, order_value, clv] = &mut values;
        const BLOCK: usize = 1 << 14;
        p_alive
            .par_chunks_mut(BLOCK)
            .zip(expected.par_chunks_mut(BLOCK))
            .zip(no_purchases.par_chunks_mut(BLOCK))
            .zip(order_value.par_chunks_mut(BLOCK))
            .zip(clv.par_chunks_mut(BLOCK))
            .enumerate()
            .for_each(|(block, ((((p_alive, expected), no_purchases), order_value), clv))| {
                for j in 0..p_alive.len() {
                    let i = block * BLOCK + j;
                    let score = &scored[pattern_of[i] as usize];
                    let value = spend_params
                        .and_then(|sp| {
                            gamma_gamma::expected_order_value(&sp, data.x[i] as f64, data.monetary[i].max(0.0))
                        })
                        .and_then(finite);
                    let customer_clv = match (value, score.discounted_if_alive) {
                        (Some(value), Some(discounted)) => finite(margin * value * score.p_alive * discounted),
                        _ => None,
                    };
                    let none = f64::NAN;
                    p_alive[j] = finite(score.p_alive).unwrap_or(none);
                    expected[j] = score
                        .expected_if_alive
                        .map(|e| score.p_alive * e)
                        .and_then(finite)
                        .unwrap_or(none);
                    no_purchases[j] =
                        finite(1.0 - score.p_alive + score.p_alive * score.no_purchase_if_alive).unwrap_or(none);
                    order_value[j] = value.unwrap_or(none);
                    clv[j] = customer_clv.unwrap_or(none);
                }
            });
        let [p_alive, expected, no_purchases, order_value, clv] = values;
        let nulls = clv.iter().filter(|v| v.is_nan()).count();
        rows.push(
            "clv",
            "customers_with_null_clv",
            nulls as f64,
            None,
            None,
            n as f64,
            0,
            nulls == 0,
        );
        let in_unit = |days: &[u32]| -> Vec<f64> { days.iter().map(|&d| d as f64 / self.time_unit.days()).collect() };
        // The facts' own columns (the same values): the writer then compresses their pages
        // once for both tables.
        let customers = DataFrame::new_infer_height(vec![
            facts.column("customer_id")?.clone(),
            facts.column("frequency")?.clone(),
            // The unit is in the name: customer_facts has t_x and T in days.
            crate::core::columns::owned_column(&format!("t_x_{}s", self.time_unit.name()), in_unit(&data.t_x_days)),
            crate::core::columns::owned_column(&format!("T_{}s", self.time_unit.name()), in_unit(&data.t_days)),
            facts.column("monetary_value")?.clone(),
            nan_as_null("p_alive", p_alive),
            nan_as_null("expected_purchases", expected),
            nan_as_null("p_no_purchases", no_purchases),
            nan_as_null("expected_order_value", order_value),
            nan_as_null("clv", clv),
            facts.column("revenue")?.clone().with_name("historic_clv".into()),
        ])?;
        let validation = match self.calibration() {
            Some(end) => Some(validate(shared, end.resolve(shared.as_of), self, &mut rows, problems)?),
            None => None,
        };
        let mut tables = vec![customers, rows.into_frame(self.time_unit)?];
        tables.extend(validation);
        Ok(tables)
    }
}

/// A column of `values`, null where NaN (taken over when there is none, the usual case).
fn nan_as_null(name: &str, values: Vec<f64>) -> Column {
    if values.iter().any(|v| v.is_nan()) {
        let values: Vec<Option<f64>> = values.iter().map(|v| (!v.is_nan()).then_some(*v)).collect();
        Column::new(name.into(), values)
    } else {
        crate::core::columns::owned_column(name, values)
    }
}

fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

/// Fit on purchase days up to `end`, predict repeat purchases in (end, as_of], compare.
fn validate(
    shared: &crate::core::prepare::SharedTables,
    end: NaiveDate,
    options: &ClvOptions,
    rows: &mut ModelRows,
    problems: &mut Vec<String>,
) -> Result<DataFrame> {
    if end >= shared.as_of {
        bail!("calibration_end {end} must be before as_of {}", shared.as_of);
    }
    let (end_days, as_of_days) = (to_days(end), to_days(shared.as_of));
    let unit = options.time_unit.days();
    let periods = shared
        .customer_periods()?
        .lazy()
        .filter(col("purchases").gt(lit(0)))
        .select([col("customer_key"), col("date").cast(DataType::Int32)])
        .collect()?;
    let keys = periods.column("customer_key")?.u32()?;
    let dates = periods.column("date")?.i32()?;
    // Per customer: first day, last day ≤ end, days ≤ end, days in the holdout.
    let mut calibration: Vec<(i32, i32, u32, u32)> = Vec::new();
    let mut current = u32::MAX;
    for (key, day) in keys.into_no_null_iter().zip(dates.into_no_null_iter()) {
        if key != current {
            current = key;
            if day > end_days {
                // Acquired after the calibration period: not part of the validation.
                calibration.push((i32::MIN, 0, 0, 0));
                continue;
            }
            calibration.push((day, day, 1, 0));
            continue;
        }
        let entry = calibration.last_mut().expect("an entry per customer");
        if entry.0 == i32::MIN {
            continue;
        }
        if day <= end_days {
            entry.1 = day;
            entry.2 += 1;
        } else {
            entry.3 += 1;
        }
    }
    let kept: Vec<&(i32, i32, u32, u32)> = calibration.iter().filter(|c| c.0 != i32::MIN).collect();
    if kept.is_empty() {
        bail!("no customer was acquired by calibration_end {end}");
    }
    let x: Vec<u32> = kept.iter().map(|c| c.2 - 1).collect();
    let t_x_days: Vec<u32> = kept.iter().map(|c| (c.1 - c.0) as u32).collect();
    let t_days: Vec<u32> = kept.iter().map(|c| (end_days - c.0) as u32).collect();
    let actual: Vec<f64> = kept.iter().map(|c| c.3 as f64).collect();
    let (patterns, pattern_of) = bgnbd::Patterns::compress_days(&x, &t_x_days, &t_days, unit);
    if !x.iter().any(|&x| x > 0) {
        bail!("no repeat purchase before calibration_end {end}: the calibration model cannot be fitted");
    }
    let fit = bgnbd::fit(&patterns, options.penalizer).context("calibration BG/NBD: no finite maximum")?;
    problems.extend(model_problems(
        "calibration BG/NBD",
        &["r", "alpha", "a", "b"],
        &fit.params.as_array(),
        fit.std_errors.as_ref().map(|e| e.as_slice()),
        fit.converged,
    ));
    let mut calibration_rows = ModelRows::new();
    bgnbd_rows(&mut calibration_rows, &fit, patterns.customers());
    for k in 0..calibration_rows.model.len() {
        rows.push(
            "bgnbd_calibration",
            &calibration_rows.parameter[k],
            calibration_rows.value[k],
            calibration_rows.std_error[k],
            calibration_rows.log_likelihood[k],
            calibration_rows.customers[k] as f64,
            calibration_rows.iterations[k] as u64,
            calibration_rows.converged[k],
        );
    }
    let holdout = (as_of_days - end_days) as f64 / unit;
    // Once per pattern, then per customer by lookup.
    let by_pattern: Vec<f64> = (0..patterns.x.len())
        .into_par_iter()
        .map(|p| {
            bgnbd::expected_purchases(&fit.params, holdout, patterns.x[p], patterns.t_x[p], patterns.t[p])
                .unwrap_or(f64::NAN)
        })
        .collect();
    // Sums per frequency bucket (0…6, 7+, then all) in customer order, one thread: the same
    // bits for every thread count (a parallel group-by adds in an order that depends on it).
    #[derive(Default, Clone, Copy)]
    struct Bucket {
        customers: i64,
        predicted: f64,
        actual: f64,
        absolute_error: f64,
        squared_error: f64,
    }
    let mut buckets = [Bucket::default(); 9];
    for (i, &p) in pattern_of.iter().enumerate() {
        let predicted = by_pattern[p as usize];
        if !predicted.is_finite() {
            continue;
        }
        let actual = actual[i];
        let error = predicted - actual;
        for bucket in [x[i].min(7) as usize, 8] {
            let sums = &mut buckets[bucket];
            sums.customers += 1;
            sums.predicted += predicted;
            sums.actual += actual;
            sums.absolute_error += error.abs();
            sums.squared_error += error * error;
        }
    }
    let present: Vec<(usize, &Bucket)> = buckets.iter().enumerate().filter(|(_, b)| b.customers > 0).collect();
    let label = |bucket: usize| match bucket {
        8 => "all".to_string(),
        7 => "7+".to_string(),
        b => b.to_string(),
    };
    let n = |b: &Bucket| b.customers as f64;
    Ok(df!(
        "frequency_bucket" => present.iter().map(|(k, _)| label(*k)).collect::<Vec<_>>(),
        "customers" => present.iter().map(|(_, b)| b.customers).collect::<Vec<_>>(),
        "predicted_purchases" => present.iter().map(|(_, b)| b.predicted).collect::<Vec<_>>(),
        "actual_purchases" => present.iter().map(|(_, b)| b.actual).collect::<Vec<_>>(),
        "mae" => present.iter().map(|(_, b)| b.absolute_error / n(b)).collect::<Vec<_>>(),
        "rmse" => present.iter().map(|(_, b)| (b.squared_error / n(b)).sqrt()).collect::<Vec<_>>(),
        "ratio" => present
            .iter()
            .map(|(_, b)| (b.actual > 0.0).then(|| b.predicted / b.actual))
            .collect::<Vec<_>>(),
        "holdout_length" => vec![holdout; present.len()],
    )?)
}
