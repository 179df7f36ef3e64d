//! `repeat`: repeat-purchase rates overall and per cohort, repeat within N days, days to the
//! second purchase, mean days between purchases, and purchase-number transitions P(k+1 | k).
//!
//! Purchase k's date comes from customer_periods (purchases per customer and day): the day on
//! which the running count of purchases reaches k. Two purchases on one day make the second
//! purchase 0 days after the first.

use anyhow::Result;
use chrono::NaiveDate;
use polars::prelude::*;
use serde::Deserialize;

use super::{InputKind, Kind, Stage, StageInputs};
use crate::config::{reader::TableReader, Diagnostics};
use crate::period::{to_days, Granularity};

/// Options of `kind = "repeat"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepeatOptions {
    /// Cohort period for the per-cohort rows. Default month.
    pub cohort_granularity: Granularity,
    /// Windows for "repeat within N days of the first purchase". Default [90].
    pub within_days: Vec<u32>,
    /// Transitions P(k+1 | k) for k = 1..max_purchases. Default 5.
    pub max_purchases: u32,
    /// A customer counts at step k only if purchase k is at least this many days before as_of.
    /// Default 90.
    pub min_observation_days: u32,
}

impl Default for RepeatOptions {
    fn default() -> Self {
        RepeatOptions {
            cohort_granularity: Granularity::Month,
            within_days: vec![90],
            max_purchases: 5,
            min_observation_days: 90,
        }
    }
}

impl RepeatOptions {
    fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.within_days.is_empty() || self.within_days.contains(&0) {
            errors.push((
                "within_days",
                format!("`within_days` needs positive day counts, got {:?}", self.within_days),
            ));
        }
        let mut sorted = self.within_days.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.within_days.len() {
            errors.push((
                "within_days",
                format!("`within_days` has duplicates: {:?}", self.within_days),
            ));
        }
        if !(1..=100).contains(&self.max_purchases) {
            errors.push((
                "max_purchases",
                format!("`max_purchases` must be between 1 and 100, got {}", self.max_purchases),
            ));
        }
        errors
    }
}

pub static KIND: Kind = Kind {
    name: "repeat",
    summary: "repeat rates overall and per cohort, repeat within N days, time to second purchase, P(k+1 | k)",
    input: InputKind::Source,
    tables: &["summary", "transitions"],
    customer_table: None,
    options: serde_aux::serde_introspection::serde_introspect::<RepeatOptions>,
    parse,
};

fn parse(reader: &TableReader, common: &[&str], diagnostics: &mut Diagnostics) -> Option<Box<dyn Stage>> {
    let options = super::parse_options::<RepeatOptions>(reader, common, diagnostics)?;
    super::lifecycle::report(reader, options.check(), diagnostics).then(|| Box::new(options) as Box<dyn Stage>)
}

impl Stage for RepeatOptions {
    fn run(&self, inputs: &StageInputs) -> Result<Vec<DataFrame>> {
        let shared = inputs.shared()?;
        repeat(&shared.customer_facts, &shared.customer_periods, shared.as_of, self)
    }
}

fn kth(k: u32) -> String {
    format!("purchase_{k}_date")
}

/// Per customer: the date of purchases 1..=k_max (null when fewer), from purchases per day.
fn purchase_dates(facts: &DataFrame, periods: &DataFrame, k_max: u32) -> Result<Vec<Column>> {
    let customers = facts.height();
    let keys = periods.column("customer_key")?.u32()?;
    let dates = periods.column("date")?.cast(&DataType::Int32)?;
    let dates = dates.i32()?;
    let purchases = periods.column("purchases")?.i64()?;
    let mut kth_dates: Vec<Vec<Option<i32>>> = vec![vec![None; customers]; k_max as usize];
    let mut current = u32::MAX;
    let mut running = 0i64;
    for ((key, date), count) in keys
        .into_no_null_iter()
        .zip(dates.into_no_null_iter())
        .zip(purchases.into_no_null_iter())
    {
        if key != current {
            current = key;
            running = 0;
        }
        if count <= 0 {
            continue;
        }
        let before = running;
        running += count;
        for k in (before + 1)..=running.min(k_max as i64) {
            kth_dates[(k - 1) as usize][key as usize] = Some(date);
        }
    }
    kth_dates
        .into_iter()
        .enumerate()
        .map(|(i, values)| Ok(Column::new(kth(i as u32 + 1).into(), values).cast(&DataType::Date)?))
        .collect()
}

/// The summary and transitions tables.
pub fn repeat(
    facts: &DataFrame,
    periods: &DataFrame,
    as_of: NaiveDate,
    options: &RepeatOptions,
) -> Result<Vec<DataFrame>> {
    let k_max = options.max_purchases.max(1) + 1;
    let as_of_days = to_days(as_of);
    let days = |expr: Expr| expr.cast(DataType::Int32);
    let mut base = facts.select(["customer_key", "first_purchase_date", "last_purchase_date", "orders"])?;
    for column in purchase_dates(facts, periods, k_max)? {
        base.with_column(column)?;
    }
    let per_customer = base
        .lazy()
        .with_columns([
            options
                .cohort_granularity
                .index_expr(col("first_purchase_date"))
                .alias("cohort_index"),
            (days(col(kth(2).as_str())) - days(col("first_purchase_date"))).alias("days_to_second"),
            when(col("orders").gt_eq(lit(2i64)))
                .then(
                    (days(col("last_purchase_date")) - days(col("first_purchase_date"))).cast(DataType::Float64)
                        / (col("orders") - lit(1i64)).cast(DataType::Float64),
                )
                .otherwise(lit(NULL).cast(DataType::Float64))
                .alias("days_between_purchases"),
            (lit(as_of_days) - days(col("first_purchase_date"))).alias("observed_days"),
        ])
        .collect()?;

    // Summary: the same aggregations overall (cohort null) and per cohort.
    let customers_f = || len().cast(DataType::Float64);
    let mut aggs = vec![
        len().cast(DataType::Int64).alias("customers"),
        col("orders")
            .gt_eq(lit(2i64))
            .cast(DataType::Int64)
            .sum()
            .alias("repeat_customers"),
        (col("orders").gt_eq(lit(2i64)).cast(DataType::Float64).sum() / customers_f()).alias("repeat_customer_rate"),
    ];
    for &n in &options.within_days {
        let observed = col("observed_days").gt_eq(lit(n as i32));
        let repeated = observed
            .clone()
            .and(col("days_to_second").lt_eq(lit(n as i32)).fill_null(lit(false)));
        let observed_count = observed.cast(DataType::Int64).sum();
        aggs.push(observed_count.clone().alias(format!("customers_observed_{n}d")));
        aggs.push(
            repeated
                .clone()
                .cast(DataType::Int64)
                .sum()
                .alias(format!("repeat_customers_{n}d")),
        );
        aggs.push(
            when(observed_count.clone().gt(lit(0i64)))
                .then(repeated.cast(DataType::Float64).sum() / observed_count.cast(DataType::Float64))
                .otherwise(lit(NULL).cast(DataType::Float64))
                .alias(format!("repeat_rate_{n}d")),
        );
    }
    let gap = || col("days_to_second").cast(DataType::Float64);
    aggs.extend([
        gap().median().alias("days_to_second_median"),
        gap()
            .quantile(lit(0.25), QuantileMethod::Linear)
            .alias("days_to_second_p25"),
        gap()
            .quantile(lit(0.75), QuantileMethod::Linear)
            .alias("days_to_second_p75"),
        gap().mean().alias("days_to_second_mean"),
        col("days_between_purchases")
            .mean()
            .alias("mean_days_between_purchases"),
    ]);
    // Transitions P(k+1 | k) with censoring: counts per k in the same two group-bys, as
    // columns `__at_k`, `__next_k`, turned into rows below.
    let cutoff = as_of_days - options.min_observation_days as i32;
    let at = |k: u32| format!("__at_{k}");
    let next = |k: u32| format!("__next_{k}");
    for k in 1..=options.max_purchases {
        let at_k = days(col(kth(k).as_str())).lt_eq(lit(cutoff)).fill_null(lit(false));
        let next_k = at_k.clone().and(col(kth(k + 1).as_str()).is_not_null());
        aggs.push(at_k.cast(DataType::Int64).sum().alias(at(k)));
        aggs.push(next_k.cast(DataType::Int64).sum().alias(next(k)));
    }
    // Overall = one group with a null cohort, so both parts have the same columns.
    let overall_key = || lit(NULL).cast(DataType::Int32).alias("cohort_index");
    let overall = per_customer.clone().lazy().group_by([overall_key()]).agg(aggs.clone());
    let by_cohort = per_customer
        .lazy()
        .group_by([col("cohort_index")])
        .agg(aggs)
        .sort(["cohort_index"], SortMultipleOptions::default());
    let both = concat(
        [overall, by_cohort],
        UnionArgs {
            to_supertypes: true,
            ..Default::default()
        },
    )?
    .collect()?;
    let counts: Vec<String> = (1..=options.max_purchases).flat_map(|k| [at(k), next(k)]).collect();
    let summary = with_cohort_dates(both.drop_many(&counts), options.cohort_granularity)?;

    let frames: Vec<LazyFrame> = (1..=options.max_purchases)
        .map(|k| {
            both.clone().lazy().select([
                col("cohort_index"),
                lit(k as i32).alias("k"),
                col(at(k).as_str()).alias("customers_at_k"),
                col(next(k).as_str()).alias("customers_at_k_plus_1"),
            ])
        })
        .collect();
    let transitions = concat(frames, UnionArgs::default())?
        .with_column(
            when(col("customers_at_k").gt(lit(0i64)))
                .then(
                    col("customers_at_k_plus_1").cast(DataType::Float64)
                        / col("customers_at_k").cast(DataType::Float64),
                )
                .otherwise(lit(NULL).cast(DataType::Float64))
                .alias("probability"),
        )
        .sort_by_exprs(
            [col("cohort_index"), col("k")],
            SortMultipleOptions::default().with_nulls_last(false),
        )
        .collect()?;
    let transitions = with_cohort_dates(transitions, options.cohort_granularity)?;
    Ok(vec![summary, transitions])
}

/// Replace `cohort_index` with `cohort` (the period's start date), first column.
fn with_cohort_dates(frame: DataFrame, granularity: Granularity) -> Result<DataFrame> {
    let index = frame.column("cohort_index")?.i32()?;
    let dates: Vec<Option<i32>> = index
        .iter()
        .map(|i| i.map(|i| to_days(granularity.start_of(i))))
        .collect();
    let mut frame = frame.drop("cohort_index")?;
    frame.insert_column(0, Column::new("cohort".into(), dates).cast(&DataType::Date)?)?;
    Ok(frame)
}
