//! `cohort_retention`: dense long-format retention triangle per acquisition cohort.
//!
//! One row per (dimensions…, cohort, period_index) from 0 to the period containing as_of, with
//! zero rows where nobody came back. Bracketed retention counts customers active in the period;
//! unbounded retention counts customers active in it or any later period up to as_of.

use anyhow::{bail, Result};
use polars::prelude::*;
use serde::Deserialize;

use super::{InputKind, Kind, Stage, StageInputs};
use crate::period::{to_days, Granularity};

/// Options of `kind = "cohort_retention"`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CohortRetentionOptions {
    /// day | week (ISO, Monday) | month | quarter | year. Default month.
    pub granularity: Granularity,
    /// Per-customer columns of customer_facts to split cohorts by, e.g. ["acquisition_channel"].
    pub dimensions: Vec<String>,
}

/// Columns of customer_facts that can be used as dimensions.
pub const DIMENSIONS: &[&str] = &["acquisition_channel"];

pub static KIND: Kind = Kind {
    name: "cohort_retention",
    summary: "dense cohort × period retention triangle with bracketed/unbounded retention and revenue",
    input: InputKind::Source,
    tables: &[""],
    customer_table: None,
    options: serde_aux::serde_introspection::serde_introspect::<CohortRetentionOptions>,
    parse: |reader, common, diagnostics| {
        let options = super::parse_options::<CohortRetentionOptions>(reader, common, diagnostics)?;
        let mut ok = true;
        for dimension in &options.dimensions {
            if !DIMENSIONS.contains(&dimension.as_str()) {
                ok = false;
                diagnostics.push(
                    crate::config::Diagnostic::new(
                        format!("{}: unknown dimension `{dimension}`", reader.context),
                        reader.value_span("dimensions"),
                    )
                    .with_help(
                        crate::config::diagnostic::suggest(dimension, DIMENSIONS.iter().copied())
                            .or_else(|| Some(format!("available: {}", crate::config::reader::backticked(DIMENSIONS)))),
                    ),
                );
            }
        }
        ok.then(|| Box::new(options) as Box<dyn Stage>)
    },
};

impl Stage for CohortRetentionOptions {
    fn run(&self, inputs: &StageInputs) -> Result<Vec<DataFrame>> {
        let shared = inputs.shared()?;
        Ok(vec![cohort_retention(
            &shared.customer_facts,
            &shared.customer_periods,
            shared.as_of,
            self.granularity,
            &self.dimensions,
        )?])
    }
}

/// The retention table; `facts` and `periods` are the shared tables.
pub fn cohort_retention(
    facts: &DataFrame,
    periods: &DataFrame,
    as_of: chrono::NaiveDate,
    granularity: Granularity,
    dimensions: &[String],
) -> Result<DataFrame> {
    let dims: Vec<Expr> = dimensions.iter().map(|d| col(d.as_str())).collect();
    let mut cohort_keys = dims.clone();
    cohort_keys.push(col("cohort_index"));
    let mut cell_keys = cohort_keys.clone();
    cell_keys.push(col("period_index"));
    let join_args = || {
        let mut args = JoinArgs::new(JoinType::Left);
        args.nulls_equal = true;
        args
    };

    let mut customer_columns = vec![col("customer_key")];
    customer_columns.extend(dims.iter().cloned());
    customer_columns.push(granularity.index_expr(col("first_purchase_date")).alias("cohort_index"));
    customer_columns.push(granularity.index_expr(col("last_purchase_date")).alias("last_index"));
    for dimension in dimensions {
        customer_columns.push(
            col(dimension.as_str())
                .rank(
                    RankOptions {
                        method: RankMethod::Dense,
                        descending: false,
                    },
                    None,
                )
                .alias(format!("{dimension}__code")),
        );
    }
    // Per customer, computed once: sizes, activity and last activity all read it.
    let by_key = facts.clone().lazy().select(customer_columns).collect()?;
    let customers = by_key.clone().lazy();

    let sizes = customers
        .clone()
        .group_by(cohort_keys.clone())
        .agg([len().cast(DataType::Int64).alias("cohort_customers")])
        .sort_by_exprs(
            cohort_keys.clone(),
            SortMultipleOptions::default().with_nulls_last(true),
        )
        .collect()?;

    // Activity per cell. customer_facts is sorted by customer_key = 0..n, so a customer's
    // cohort and dimensions are gathered by key (no join). customer_periods is sorted by
    // (customer_key, date): a customer's periods come in runs, and a customer is active in a
    // period when a run of purchase days starts there, so no per-customer group-by is needed.
    let of_customer = |name: &str| -> Result<Expr> {
        Ok(lit(by_key.column(name)?.as_materialized_series().clone()).gather(col("customer_key"), false))
    };
    // Dimensions are grouped on as dense integer codes (string keys cost several times more
    // per row) and decoded once per cell.
    let mut cell_columns = Vec::new();
    let mut code_keys = vec![col("cohort_index"), col("period_index")];
    let mut decode = Vec::new();
    for dimension in dimensions {
        let code = format!("{dimension}__code");
        cell_columns.push(of_customer(&code)?.alias(code.as_str()));
        code_keys.push(col(code.as_str()));
        decode.push(
            by_key
                .clone()
                .lazy()
                .select([col(code.as_str()), col(dimension.as_str())])
                .unique(None, UniqueKeepStrategy::Any),
        );
    }
    let first_date = periods
        .column("date")?
        .as_materialized_series()
        .min::<i32>()?
        .map_or(as_of, crate::period::from_days);
    let rows = periods
        .clone()
        .lazy()
        .select([
            col("customer_key"),
            of_customer("cohort_index")?.alias("cohort_index"),
            granularity
                .index_in_range(col("date"), first_date, as_of)
                .alias("date_index"),
            col("purchases"),
            col("revenue_micros"),
        ])
        .with_column((col("date_index") - col("cohort_index")).alias("period_index"))
        .filter(col("period_index").gt_eq(lit(0)))
        .with_columns(cell_columns)
        // Read by two aggregations: computed once.
        .collect()?
        .lazy();
    let changed = |name: &str| col(name).neq(col(name).shift(lit(1))).fill_null(lit(true));
    let active = rows
        .clone()
        .filter(col("purchases").gt(lit(0)))
        .filter(changed("customer_key").or(changed("period_index")))
        .group_by(code_keys.clone())
        .agg([len().cast(DataType::Int64).alias("active_customers")]);
    let mut activity = rows
        .group_by(code_keys.clone())
        .agg([
            col("purchases").sum().cast(DataType::Int64).alias("orders"),
            col("revenue_micros").sum().alias("revenue_micros"),
        ])
        .join(active, code_keys.clone(), code_keys, join_args());
    for (dimension, values) in dimensions.iter().zip(decode) {
        let code = format!("{dimension}__code");
        activity = activity.join(values, [col(code.as_str())], [col(code.as_str())], join_args());
    }
    // Customers whose last purchase falls in each period since acquisition.
    let last_active = customers
        .with_column((col("last_index") - col("cohort_index")).alias("period_index"))
        .group_by(cell_keys.clone())
        .agg([len().cast(DataType::Int64).alias("last_active")]);

    let grid = dense_grid(&sizes, as_of, granularity)?;
    let cohort_group: Vec<Expr> = cohort_keys.clone();
    let mut output: Vec<Expr> = dims.clone();
    output.extend([
        col("cohort"),
        col("period_index"),
        col("period_start"),
        col("cohort_customers"),
        col("active_customers"),
        col("retention"),
        col("unbounded_retention"),
        col("orders"),
        col("revenue"),
        col("revenue_per_customer"),
        col("cumulative_revenue_per_customer"),
        col("period_complete"),
    ]);
    let mut sort_keys = dims.clone();
    sort_keys.extend([col("cohort"), col("period_index")]);
    let customers_f = || col("cohort_customers").cast(DataType::Float64);
    let unbounded_active = col("last_active").cum_sum(true).over(cohort_group.clone())?;
    let cumulative_revenue = col("revenue_per_customer").cum_sum(false).over(cohort_group)?;
    let table = grid
        .lazy()
        .join(activity, cell_keys.clone(), cell_keys.clone(), join_args())
        .join(last_active, cell_keys.clone(), cell_keys, join_args())
        .with_columns([
            col("active_customers").fill_null(lit(0i64)),
            col("orders").fill_null(lit(0i64)),
            crate::money::from_micros(col("revenue_micros").fill_null(lit(0i64))).alias("revenue"),
            col("last_active").fill_null(lit(0i64)),
        ])
        .sort_by_exprs(sort_keys.clone(), SortMultipleOptions::default().with_nulls_last(true))
        .with_columns([
            (col("active_customers").cast(DataType::Float64) / customers_f()).alias("retention"),
            (unbounded_active.cast(DataType::Float64) / customers_f()).alias("unbounded_retention"),
            (col("revenue") / customers_f()).alias("revenue_per_customer"),
        ])
        .with_column(cumulative_revenue.alias("cumulative_revenue_per_customer"))
        .select(output)
        .sort_by_exprs(sort_keys, SortMultipleOptions::default().with_nulls_last(true))
        .collect()?;
    Ok(table)
}

/// Every (cohort, period_index) from 0 to the as-of period, with dates and completeness.
fn dense_grid(sizes: &DataFrame, as_of: chrono::NaiveDate, granularity: Granularity) -> Result<DataFrame> {
    let as_of_index = granularity.index_of(as_of);
    let cohort_index = sizes.column("cohort_index")?.i32()?;
    let mut take: Vec<IdxSize> = Vec::new();
    let mut period_index: Vec<i32> = Vec::new();
    let mut cohort: Vec<i32> = Vec::new();
    let mut period_start: Vec<i32> = Vec::new();
    let mut complete: Vec<bool> = Vec::new();
    for (row, index) in cohort_index.iter().enumerate() {
        let Some(index) = index else {
            bail!("a customer has no first purchase date")
        };
        for offset in 0..=(as_of_index - index).max(0) {
            take.push(row as IdxSize);
            period_index.push(offset);
            cohort.push(to_days(granularity.start_of(index)));
            period_start.push(to_days(granularity.start_of(index + offset)));
            complete.push(granularity.end_of(index + offset) <= as_of);
        }
    }
    let indices = IdxCa::from_vec("take".into(), take);
    let mut grid = sizes.take(&indices)?;
    grid.with_column(Column::new("period_index".into(), period_index))?;
    grid.with_column(Column::new("cohort".into(), cohort).cast(&DataType::Date)?)?;
    grid.with_column(Column::new("period_start".into(), period_start).cast(&DataType::Date)?)?;
    grid.with_column(Column::new("period_complete".into(), complete))?;
    Ok(grid)
}
