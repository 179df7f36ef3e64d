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

use super::shard::{int_values, merge_sorted_sums, merge_sums, tables_at, Finalized, Partial, Sharded};
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
}

/// Positions of the tables in the merged partial of pass 0: the counts merged from the shards,
/// then what `between` adds.
const PATTERNS: usize = 0;
const SPEND: usize = 1;
const TOTALS: usize = 2;
const CALIBRATION: usize = 3;
const SCORES: usize = 4;
const MODEL_ROWS: usize = 5;
const PROBLEMS: usize = 6;
const PARAMS: usize = 7;
const CALIBRATION_SCORES: usize = 8;
const CALIBRATION_ROWS: usize = 9;

/// Sharded in two passes with the fits between them. Pass 0 merges the BG/NBD patterns as
/// customers per (x, t_x, T) in whole days, the Gamma-Gamma (x, m) counts of repeat customers,
/// the revenue and cost totals (observed margin) and, with a calibration, the calibration
/// patterns. Between the passes (once): both fits, the scores of every pattern, the model rows
/// and problems, and the calibration fit with its predictions per calibration pattern. Pass 1
/// scores each customer by its pattern (the per-customer rows come with it), counts the null
/// CLVs and adds up the holdout sums per frequency bucket. Finalize: the model table with the
/// null count, the validation table, and the `on_model_failure` judgement.
impl Sharded for ClvOptions {
    fn passes(&self) -> usize {
        2
    }

    fn partial(&self, inputs: &StageInputs, earlier: &[Partial]) -> Result<Partial> {
        match earlier.first() {
            None => {
                let clock = std::time::Instant::now();
                let counts = self.counts(inputs.shared()?);
                tracing::debug!("clv: pass 0 counts in {:.3} s", clock.elapsed().as_secs_f64());
                counts
            }
            Some(_) => {
                let (partial, _) = self
                    .last_partial_with_rows(inputs, earlier)?
                    .context("clv's last pass gives its rows")?;
                Ok(partial)
            }
        }
    }

    fn merge(&self, pass: usize, parts: Vec<Partial>) -> Result<Partial> {
        let pattern_keys = ["x", "t", "t_x"];
        match pass {
            // The pattern and spend counts are built sorted by their keys.
            0 => Ok(vec![
                merge_sorted_sums(tables_at(&parts, PATTERNS)?, &pattern_keys)?,
                merge_sorted_sums(tables_at(&parts, SPEND)?, &["x", "m"])?,
                merge_sums(tables_at(&parts, TOTALS)?, &["key", "as_of"])?,
                merge_sorted_sums(tables_at(&parts, CALIBRATION)?, &pattern_keys)?,
            ]),
            _ => Ok(vec![
                merge_sums(tables_at(&parts, 0)?, &["key"])?,
                merge_sums(tables_at(&parts, 1)?, &["bucket"])?,
            ]),
        }
    }

    fn between(&self, pass: usize, merged: &[Partial]) -> Result<Partial> {
        match pass {
            0 => self.fits(&merged[0]),
            _ => Ok(Vec::new()),
        }
    }

    fn finalize(&self, merged: Vec<Partial>, _whole: &StageInputs, as_of: NaiveDate) -> Result<Finalized> {
        let (first, second) = (&merged[0], &merged[1]);
        let customers = int_values(&second[0], "customers")?.first().copied().unwrap_or(0);
        let nulls = int_values(&second[0], "null_clv")?.first().copied().unwrap_or(0);
        let mut model = first[MODEL_ROWS].clone();
        let clv_row = df! {
            "model" => ["clv"],
            "parameter" => ["customers_with_null_clv"],
            "value" => [nulls as f64],
            "std_error" => [None::<f64>],
            "log_likelihood" => [None::<f64>],
            "customers" => [customers],
            "iterations" => [0i64],
            "converged" => [nulls == 0],
            "time_unit" => [self.time_unit.name()],
        }?;
        model.vstack_mut(&clv_row)?;
        let calibration_rows = first[CALIBRATION_ROWS].clone();
        if calibration_rows.height() > 0 {
            model.vstack_mut(&calibration_rows)?;
        }
        let mut tables = vec![None, Some(model)];
        if let Some(end) = self.calibration() {
            let holdout = (to_days(as_of) - to_days(end.resolve(as_of))) as f64 / self.time_unit.days();
            tables.push(Some(validation_table(&second[1], holdout)?));
        }
        let mut problems: Vec<String> = first[PROBLEMS]
            .column("problem")?
            .str()?
            .iter()
            .flatten()
            .map(str::to_string)
            .collect();
        let share = nulls as f64 / customers.max(1) as f64;
        if share > self.max_null_clv_fraction {
            problems.push(format!(
                "{nulls} of {customers} customers ({:.2}%) have a null clv, more than max_null_clv_fraction = {}",
                share * 100.0,
                self.max_null_clv_fraction
            ));
        }
        if !problems.is_empty() {
            match self.on_model_failure {
                OnModelFailure::Error => bail!(
                    "the model is degenerate and was not published: {}; try a `penalizer` (e.g. 0.001) or a longer history, check the customer summary for outliers, or set `on_model_failure = \"warn\"` to publish it with warnings",
                    problems.join("; ")
                ),
                OnModelFailure::Warn => {
                    for problem in &problems {
                        tracing::warn!("clv: {problem} (published: on_model_failure = \"warn\")");
                    }
                }
            }
        }
        Ok(Finalized {
            tables,
            globals: Vec::new(),
        })
    }

    /// The customers' scores need only the fits between the passes: they come with pass 1.
    fn last_partial_with_rows(
        &self,
        inputs: &StageInputs,
        earlier: &[Partial],
    ) -> Result<Option<(Partial, Vec<Option<DataFrame>>)>> {
        let clock = std::time::Instant::now();
        let shared = inputs.shared()?;
        let fitted = &earlier[0];
        let facts = &shared.customer_facts;
        let data = summary(facts)?;
        let values = self.customer_values(&data, fitted)?;
        tracing::debug!("clv: pass 1 customer values in {:.3} s", clock.elapsed().as_secs_f64());
        let nulls = values[4].iter().filter(|v| v.is_nan()).count() as i64;
        let counts = df! { "key" => [0i32], "customers" => [data.x.len() as i64], "null_clv" => [nulls] }?;
        let buckets = match self.calibration() {
            Some(end) => holdout_buckets(shared, end.resolve(shared.as_of), &fitted[CALIBRATION_SCORES])?,
            None => holdout_buckets_frame(&[Bucket::default(); 9])?,
        };
        let customers = self.customers_table(facts, &data, values)?;
        let mut rows = vec![Some(customers), None];
        if self.calibration().is_some() {
            rows.push(None);
        }
        Ok(Some((vec![counts, buckets], rows)))
    }
}

/// The monthly rate equivalent to an annual one: (1 + annual)^(1/12) − 1.
fn monthly_discount(annual: f64) -> f64 {
    (1.0 + annual).powf(1.0 / 12.0) - 1.0
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

/// (x, t, t_x) in whole days → customers, sorted by the key (the order the patterns are
/// fitted in).
fn pattern_counts(x: &[u32], t_x_days: &[u32], t_days: &[u32]) -> Result<DataFrame> {
    let (mut xs, mut ts, mut t_xs, mut counts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut push = |(x, t, t_x): (u32, u32, u32), count: usize| {
        xs.push(i64::from(x));
        ts.push(i64::from(t));
        t_xs.push(i64::from(t_x));
        counts.push(count as i64);
    };
    if let Some(mut keys) = packed_keys(x, t_days, t_x_days) {
        // The usual case: one u64 per customer, radix-sorted.
        radsort::sort(&mut keys);
        for run in keys.chunk_by(|a, b| a == b) {
            push(unpack(run[0]), run.len());
        }
    } else {
        let mut keyed: Vec<(u32, u32, u32)> = (0..x.len()).map(|i| (x[i], t_days[i], t_x_days[i])).collect();
        keyed.par_sort_unstable();
        for run in keyed.chunk_by(|a, b| a == b) {
            push(run[0], run.len());
        }
    }
    Ok(df! { "x" => xs, "t" => ts, "t_x" => t_xs, "customers" => counts }?)
}

/// Each customer's (x, T, t_x) packed into a u64 in that order (22 + 21 + 21 bits), when they
/// fit: sorting the keys sorts the patterns.
fn packed_keys(x: &[u32], t_days: &[u32], t_x_days: &[u32]) -> Option<Vec<u64>> {
    let fits = x.par_iter().all(|&x| x < 1 << 22)
        && t_days.par_iter().all(|&t| t < 1 << 21)
        && t_x_days.par_iter().all(|&t| t < 1 << 21);
    fits.then(|| {
        (0..x.len())
            .into_par_iter()
            .map(|i| pack((x[i], t_days[i], t_x_days[i])))
            .collect()
    })
}

fn pack((x, t, t_x): (u32, u32, u32)) -> u64 {
    (u64::from(x) << 42) | (u64::from(t) << 21) | u64::from(t_x)
}

fn unpack(key: u64) -> (u32, u32, u32) {
    (
        (key >> 42) as u32,
        ((key >> 21) & 0x1F_FFFF) as u32,
        (key & 0x1F_FFFF) as u32,
    )
}

/// BG/NBD patterns (in `unit_days`) from merged pattern counts.
fn patterns_of(counts: &DataFrame, unit_days: f64) -> Result<bgnbd::Patterns> {
    let (x, t, t_x, customers) = (
        int_values(counts, "x")?,
        int_values(counts, "t")?,
        int_values(counts, "t_x")?,
        int_values(counts, "customers")?,
    );
    Ok(bgnbd::Patterns {
        x: x.iter().map(|&x| x as u32).collect(),
        t_x: t_x.iter().map(|&d| d as f64 / unit_days).collect(),
        t: t.iter().map(|&d| d as f64 / unit_days).collect(),
        weight: customers.iter().map(|&c| c as f64).collect(),
    })
}

/// Each customer's pattern index in merged `counts` (x, t, t_x in days).
fn pattern_index(counts: &DataFrame, data: &Summary) -> Result<Vec<u32>> {
    let (x, t, t_x) = (
        int_values(counts, "x")?,
        int_values(counts, "t")?,
        int_values(counts, "t_x")?,
    );
    let missing = || anyhow::anyhow!("clv: a customer's pattern is missing from the merged patterns");
    if let Some(keys) = packed_keys(&data.x, &data.t_days, &data.t_x_days) {
        // The merged patterns are sorted by (x, T, t_x), as their packed keys: the customers,
        // radix-sorted by key, are walked beside them.
        let global: Vec<u64> = (0..x.len())
            .map(|i| pack((x[i] as u32, t[i] as u32, t_x[i] as u32)))
            .collect();
        let mut keyed: Vec<(u64, u32)> = keys.into_iter().zip(0u32..).collect();
        radsort::sort_by_key(&mut keyed, |k| k.0);
        let mut pattern_of = vec![0u32; keyed.len()];
        let mut at = 0;
        for (key, customer) in keyed {
            while at < global.len() && global[at] < key {
                at += 1;
            }
            if global.get(at) != Some(&key) {
                return Err(missing());
            }
            pattern_of[customer as usize] = at as u32;
        }
        return Ok(pattern_of);
    }
    let key = |x: i64, t: i64, t_x: i64| ((x as u128) << 64) | ((t as u128) << 32) | t_x as u128;
    let index: hashbrown::HashMap<u128, u32, foldhash::fast::FixedState> =
        (0..x.len()).map(|i| (key(x[i], t[i], t_x[i]), i as u32)).collect();
    (0..data.x.len())
        .into_par_iter()
        .map(|i| {
            index
                .get(&key(
                    i64::from(data.x[i]),
                    i64::from(data.t_days[i]),
                    i64::from(data.t_x_days[i]),
                ))
                .copied()
                .ok_or_else(missing)
        })
        .collect()
}

impl ClvOptions {
    /// Pass 0 of one shard: `[patterns, spend, totals, calibration]`.
    fn counts(&self, shared: &crate::core::prepare::SharedTables) -> Result<Partial> {
        let facts = &shared.customer_facts;
        let data = summary(facts)?;
        // The two histograms side by side.
        let (patterns, spend) = rayon::join(
            || pattern_counts(&data.x, &data.t_x_days, &data.t_days),
            || -> Result<DataFrame> {
                let mut pairs: Vec<(u32, u64)> = (0..data.x.len())
                    .into_par_iter()
                    .filter(|&i| data.x[i] > 0 && data.monetary[i] > 0.0)
                    .map(|i| (data.x[i], data.monetary[i].to_bits()))
                    .collect();
                // Positive doubles order as their bits do.
                pairs.par_sort_unstable();
                let (mut xs, mut ms, mut counts) = (Vec::new(), Vec::new(), Vec::new());
                for run in pairs.chunk_by(|a, b| a == b) {
                    xs.push(i64::from(run[0].0));
                    ms.push(f64::from_bits(run[0].1));
                    counts.push(run.len() as i64);
                }
                Ok(df! { "x" => xs, "m" => ms, "customers" => counts }?)
            },
        );
        let (patterns, spend) = (patterns?, spend?);
        let total = |name: &str| -> Result<i64> {
            Ok(match facts.column(name) {
                Ok(column) => column.i64()?.sum().unwrap_or(0),
                Err(_) => 0,
            })
        };
        // as_of is the same in every shard: a key, so the merge keeps it.
        let totals = df! {
            "key" => [0i32],
            "as_of" => [to_days(shared.as_of)],
            "revenue_micros" => [total("revenue_micros")?],
            "cost_micros" => [total("cost_micros")?],
        }?;
        let calibration = match self.calibration() {
            Some(end) => {
                let kept = calibration_summary(shared, end.resolve(shared.as_of))?;
                let x: Vec<u32> = kept.iter().map(|c| c.x).collect();
                let t_x: Vec<u32> = kept.iter().map(|c| c.t_x).collect();
                let t: Vec<u32> = kept.iter().map(|c| c.t).collect();
                pattern_counts(&x, &t_x, &t)?
            }
            None => pattern_counts(&[], &[], &[])?,
        };
        Ok(vec![patterns, spend, totals, calibration])
    }

    /// Between the passes: `[scores, model_rows, problems, params, calibration_scores,
    /// calibration_rows]` from the merged pass-0 counts.
    fn fits(&self, merged: &Partial) -> Result<Partial> {
        let clock = std::time::Instant::now();
        let lap = |what: &str| tracing::debug!("clv: {what} at {:.3} s", clock.elapsed().as_secs_f64());
        let unit = self.time_unit.days();
        let patterns = patterns_of(&merged[PATTERNS], unit)?;
        if patterns.x.is_empty() {
            bail!("no customers to fit");
        }
        let spend = {
            let (x, m, customers) = (
                int_values(&merged[SPEND], "x")?,
                merged[SPEND]
                    .column("m")?
                    .f64()?
                    .into_no_null_iter()
                    .collect::<Vec<f64>>(),
                int_values(&merged[SPEND], "customers")?,
            );
            gamma_gamma::Spend {
                x: x.iter().map(|&x| x as f64).collect(),
                m,
                weight: customers.iter().map(|&c| c as f64).collect(),
            }
        };
        // The two models are independent: fit them side by side.
        let (bgnbd_fit, spend_fit) = rayon::join(
            || {
                patterns
                    .x
                    .iter()
                    .any(|&x| x > 0)
                    .then(|| bgnbd::fit(&patterns, self.penalizer))
            },
            || gamma_gamma::fit(&spend, self.penalizer),
        );
        lap("BG/NBD and Gamma-Gamma fits");
        tracing::info!(
            "clv: fitted BG/NBD on {} customers in {} patterns, Gamma-Gamma on {} repeat customers in {} patterns",
            patterns.customers(),
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
        let scores = self.pattern_scores(&patterns, fit.as_ref().map(|fit| fit.params))?;
        lap("scores per pattern");
        let mut scores_frame = merged[PATTERNS].select(["x", "t", "t_x"])?;
        for (name, values) in scores {
            scores_frame.with_column(Column::new(name.into(), values))?;
        }
        let margin = self.margin.of_totals(&merged[TOTALS])?;
        let params = df! {
            "spend_p" => [spend_params.map(|p| p.p)],
            "spend_q" => [spend_params.map(|p| p.q)],
            "spend_v" => [spend_params.map(|p| p.v)],
            "margin" => [margin],
        }?;
        let as_of = crate::core::period::from_days(
            merged[TOTALS]
                .column("as_of")?
                .i32()?
                .get(0)
                .ok_or_else(|| anyhow::anyhow!("clv: no as_of"))?,
        );
        let (calibration_scores, calibration_rows) = match self.calibration() {
            Some(end) => self.calibration_fit(&merged[CALIBRATION], end.resolve(as_of), as_of, &mut problems)?,
            None => (
                df! { "x" => Vec::<i64>::new(), "t" => Vec::<i64>::new(), "t_x" => Vec::<i64>::new(), "predicted" => Vec::<f64>::new() }?,
                ModelRows::new().into_frame(self.time_unit)?,
            ),
        };
        Ok(vec![
            scores_frame,
            rows.into_frame(self.time_unit)?,
            df! { "problem" => problems }?,
            params,
            calibration_scores,
            calibration_rows,
        ])
    }

    /// Per pattern: p_alive, E[X(horizon) | alive], the discounted sum of its monthly increments
    /// (CLV per unit of order value and P(alive)), and P(no purchase | alive); NaN for none.
    fn pattern_scores(
        &self,
        patterns: &bgnbd::Patterns,
        params: Option<bgnbd::Params>,
    ) -> Result<Vec<(&'static str, Vec<f64>)>> {
        let n = patterns.len();
        let Some(params) = params else {
            return Ok(vec![
                ("p_alive", vec![1.0; n]),
                ("expected_if_alive", vec![0.0; n]),
                ("discounted_if_alive", vec![0.0; n]),
                ("no_purchase_if_alive", vec![1.0; n]),
            ]);
        };
        let unit_months = DAYS_PER_MONTH / self.time_unit.days();
        let horizon = self.horizon_months as usize;
        // E[X(t)] = P(alive) · E[X(t) | alive], and the second factor depends on (x, T) only:
        // compute it once per distinct pair and month.
        let monthly_factor = 1.0 / (1.0 + monthly_discount(self.annual_discount_rate));
        // Patterns come sorted by (x, T, t_x): the pairs are runs.
        let mut pairs: Vec<(u32, u64)> = Vec::new();
        let mut pair_of = Vec::with_capacity(n);
        for i in 0..n {
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
        let none = f64::NAN;
        let scored: Vec<[f64; 4]> = (0..n)
            .into_par_iter()
            .map(|i| {
                let (x, t) = (patterns.x[i], patterns.t[i]);
                let (expected, discounted) = if_alive[pair_of[i]];
                [
                    bgnbd::p_alive(&params, x, patterns.t_x[i], t),
                    expected.unwrap_or(none),
                    discounted.unwrap_or(none),
                    bgnbd::no_purchase_if_alive(&params, horizon_units, x, t),
                ]
            })
            .collect();
        let column = |k: usize| scored.iter().map(|s| s[k]).collect::<Vec<f64>>();
        Ok(vec![
            ("p_alive", column(0)),
            ("expected_if_alive", column(1)),
            ("discounted_if_alive", column(2)),
            ("no_purchase_if_alive", column(3)),
        ])
    }

    /// Each customer's p_alive, expected purchases, P(no purchase), expected order value and
    /// CLV (NaN for none) from its pattern's scores and the fitted spend model.
    fn customer_values(&self, data: &Summary, fitted: &Partial) -> Result<[Vec<f64>; 5]> {
        let pattern_of = pattern_index(&fitted[PATTERNS], data)?;
        let scores = &fitted[SCORES];
        let score = |name: &str| -> Result<Vec<f64>> { Ok(scores.column(name)?.f64()?.into_no_null_iter().collect()) };
        let (p_alive_of, expected_of, discounted_of, no_purchase_of) = (
            score("p_alive")?,
            score("expected_if_alive")?,
            score("discounted_if_alive")?,
            score("no_purchase_if_alive")?,
        );
        let params = &fitted[PARAMS];
        let param = |name: &str| -> Result<Option<f64>> { Ok(params.column(name)?.f64()?.get(0)) };
        let spend_params = match (param("spend_p")?, param("spend_q")?, param("spend_v")?) {
            (Some(p), Some(q), Some(v)) => Some(gamma_gamma::Params { p, q, v }),
            _ => None,
        };
        let margin = param("margin")?.unwrap_or(1.0);
        let n = data.x.len();
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
                    let pattern = pattern_of[i] as usize;
                    let (alive, expected_if_alive, discounted, no_purchase_if_alive) = (
                        p_alive_of[pattern],
                        finite(expected_of[pattern]),
                        finite(discounted_of[pattern]),
                        no_purchase_of[pattern],
                    );
                    let value = spend_params
                        .and_then(|sp| {
                            gamma_gamma::expected_order_value(&sp, data.x[i] as f64, data.monetary[i].max(0.0))
                        })
                        .and_then(finite);
                    let customer_clv = match (value, discounted) {
                        (Some(value), Some(discounted)) => finite(margin * value * alive * discounted),
                        _ => None,
                    };
                    let none = f64::NAN;
                    p_alive[j] = finite(alive).unwrap_or(none);
                    expected[j] = expected_if_alive.map(|e| alive * e).and_then(finite).unwrap_or(none);
                    no_purchases[j] = finite(1.0 - alive + alive * no_purchase_if_alive).unwrap_or(none);
                    order_value[j] = value.unwrap_or(none);
                    clv[j] = customer_clv.unwrap_or(none);
                }
            });
        Ok(values)
    }

    /// `_customers` of one shard.
    fn customers_table(&self, facts: &DataFrame, data: &Summary, values: [Vec<f64>; 5]) -> Result<DataFrame> {
        let [p_alive, expected, no_purchases, order_value, clv] = values;
        let in_unit = |days: &[u32]| -> Vec<f64> { days.iter().map(|&d| d as f64 / self.time_unit.days()).collect() };
        // The facts' own columns (the same values): the writer then compresses their pages
        // once for both tables.
        Ok(DataFrame::new_infer_height(vec![
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
        ])?)
    }

    /// The calibration fit on the merged calibration patterns (`end` the calibration end): the
    /// predicted holdout purchases per calibration pattern, and its model rows
    /// (`bgnbd_calibration`).
    fn calibration_fit(
        &self,
        counts: &DataFrame,
        end: NaiveDate,
        as_of: NaiveDate,
        problems: &mut Vec<String>,
    ) -> Result<(DataFrame, DataFrame)> {
        if end >= as_of {
            bail!("calibration_end {end} must be before as_of {as_of}");
        }
        let unit = self.time_unit.days();
        let patterns = patterns_of(counts, unit)?;
        if patterns.x.is_empty() {
            bail!("no customer was acquired by calibration_end {end}");
        }
        if !patterns.x.iter().any(|&x| x > 0) {
            bail!("no repeat purchase before calibration_end {end}: the calibration model cannot be fitted");
        }
        let fit = bgnbd::fit(&patterns, self.penalizer).context("calibration BG/NBD: no finite maximum")?;
        problems.extend(model_problems(
            "calibration BG/NBD",
            &["r", "alpha", "a", "b"],
            &fit.params.as_array(),
            fit.std_errors.as_ref().map(|e| e.as_slice()),
            fit.converged,
        ));
        let mut calibration_rows = ModelRows::new();
        bgnbd_rows(&mut calibration_rows, &fit, patterns.customers());
        calibration_rows.model = vec!["bgnbd_calibration"; calibration_rows.model.len()];
        let holdout = (to_days(as_of) - to_days(end)) as f64 / unit;
        // Once per pattern, then per customer by lookup.
        let predicted: Vec<f64> = (0..patterns.x.len())
            .into_par_iter()
            .map(|p| {
                bgnbd::expected_purchases(&fit.params, holdout, patterns.x[p], patterns.t_x[p], patterns.t[p])
                    .unwrap_or(f64::NAN)
            })
            .collect();
        let mut scores = counts.select(["x", "t", "t_x"])?;
        scores.with_column(Column::new("predicted".into(), predicted))?;
        Ok((scores, calibration_rows.into_frame(self.time_unit)?))
    }
}

/// A customer acquired by the calibration end: its BTYD summary up to it (x, t_x, T in days)
/// and its purchase days in the holdout.
struct Calibrated {
    x: u32,
    t_x: u32,
    t: u32,
    holdout: u32,
}

/// The customers acquired by `end`, in customer_key order, from their purchase days.
fn calibration_summary(shared: &crate::core::prepare::SharedTables, end: NaiveDate) -> Result<Vec<Calibrated>> {
    let end_days = to_days(end);
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
    Ok(calibration
        .into_iter()
        .filter(|c| c.0 != i32::MIN)
        .map(|c| Calibrated {
            x: c.2 - 1,
            t_x: (c.1 - c.0) as u32,
            t: (end_days - c.0) as u32,
            holdout: c.3,
        })
        .collect())
}

/// Holdout sums of one frequency bucket (0…6, 7+, then all).
#[derive(Default, Clone, Copy)]
struct Bucket {
    customers: i64,
    predicted: f64,
    actual: f64,
    absolute_error: f64,
    squared_error: f64,
}

/// The nine buckets as a partial table: bucket, customers, predicted, actual, absolute_error,
/// squared_error.
fn holdout_buckets_frame(buckets: &[Bucket; 9]) -> Result<DataFrame> {
    Ok(df! {
        "bucket" => (0..9i32).collect::<Vec<_>>(),
        "customers" => buckets.iter().map(|b| b.customers).collect::<Vec<_>>(),
        "predicted" => buckets.iter().map(|b| b.predicted).collect::<Vec<_>>(),
        "actual" => buckets.iter().map(|b| b.actual).collect::<Vec<_>>(),
        "absolute_error" => buckets.iter().map(|b| b.absolute_error).collect::<Vec<_>>(),
        "squared_error" => buckets.iter().map(|b| b.squared_error).collect::<Vec<_>>(),
    }?)
}

/// One shard's holdout sums per calibration frequency bucket, from the predictions per
/// calibration pattern. Sums in customer order, one thread: the same bits for every thread
/// count.
fn holdout_buckets(
    shared: &crate::core::prepare::SharedTables,
    end: NaiveDate,
    predictions: &DataFrame,
) -> Result<DataFrame> {
    let kept = calibration_summary(shared, end)?;
    let (x, t, t_x) = (
        int_values(predictions, "x")?,
        int_values(predictions, "t")?,
        int_values(predictions, "t_x")?,
    );
    let predicted_of: Vec<f64> = predictions.column("predicted")?.f64()?.into_no_null_iter().collect();
    let key = |x: i64, t: i64, t_x: i64| ((x as u128) << 64) | ((t as u128) << 32) | t_x as u128;
    let index: std::collections::HashMap<u128, usize> = (0..x.len()).map(|i| (key(x[i], t[i], t_x[i]), i)).collect();
    let mut buckets = [Bucket::default(); 9];
    for customer in &kept {
        let pattern = index
            .get(&key(
                i64::from(customer.x),
                i64::from(customer.t),
                i64::from(customer.t_x),
            ))
            .ok_or_else(|| anyhow::anyhow!("clv: a calibration pattern is missing"))?;
        let predicted = predicted_of[*pattern];
        if !predicted.is_finite() {
            continue;
        }
        let actual = f64::from(customer.holdout);
        let error = predicted - actual;
        for bucket in [customer.x.min(7) as usize, 8] {
            let sums = &mut buckets[bucket];
            sums.customers += 1;
            sums.predicted += predicted;
            sums.actual += actual;
            sums.absolute_error += error.abs();
            sums.squared_error += error * error;
        }
    }
    holdout_buckets_frame(&buckets)
}

/// `_validation` from the merged holdout sums.
fn validation_table(buckets: &DataFrame, holdout: f64) -> Result<DataFrame> {
    let customers = int_values(buckets, "customers")?;
    let float = |name: &str| -> Result<Vec<f64>> { Ok(buckets.column(name)?.f64()?.into_no_null_iter().collect()) };
    let (predicted, actual, absolute, squared) = (
        float("predicted")?,
        float("actual")?,
        float("absolute_error")?,
        float("squared_error")?,
    );
    let present: Vec<usize> = (0..customers.len()).filter(|&b| customers[b] > 0).collect();
    let label = |bucket: usize| match bucket {
        8 => "all".to_string(),
        7 => "7+".to_string(),
        b => b.to_string(),
    };
    let n = |b: usize| customers[b] as f64;
    Ok(df!(
        "frequency_bucket" => present.iter().map(|&b| label(b)).collect::<Vec<_>>(),
        "customers" => present.iter().map(|&b| customers[b]).collect::<Vec<_>>(),
        "predicted_purchases" => present.iter().map(|&b| predicted[b]).collect::<Vec<_>>(),
        "actual_purchases" => present.iter().map(|&b| actual[b]).collect::<Vec<_>>(),
        "mae" => present.iter().map(|&b| absolute[b] / n(b)).collect::<Vec<_>>(),
        "rmse" => present.iter().map(|&b| (squared[b] / n(b)).sqrt()).collect::<Vec<_>>(),
        "ratio" => present
            .iter()
            .map(|&b| (actual[b] > 0.0).then(|| predicted[b] / actual[b]))
            .collect::<Vec<_>>(),
        "holdout_length" => vec![holdout; present.len()],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stages::shard::tests::{assert_shards_merge, random_orders, shared_of};

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Any split of the customers merges to the whole's pattern counts, so both fits, the
        /// scores, the null count, the holdout sums and every table are the whole's.
        #[test]
        fn shards_merge_to_the_whole(orders in random_orders(), shards in 1usize..5, holdout: bool, weekly: bool) {
            let stage = ClvOptions {
                time_unit: if weekly { TimeUnit::Week } else { TimeUnit::Day },
                holdout_days: holdout.then_some(120),
                on_model_failure: OnModelFailure::Warn,
                max_null_clv_fraction: 1.0,
                ..ClvOptions::default()
            };
            assert_shards_merge(&stage, &shared_of(&orders, 60), shards);
        }
    }
}
