//! Orders → the shared per-customer tables every stage reads: `customer_facts` (one row per
//! customer) and `customer_periods` (one row per customer and local day with an order).
//!
//! Customer ids are mapped here, once, to a dense `customer_key` (0..n in customer_id order);
//! stages join and group on the key and carry `customer_id` only into outputs.

use anyhow::{Context, Result};
use chrono::NaiveDate;
use polars::prelude::*;

use crate::money::from_micros;
use crate::source::SourceOrders;

/// The shared tables of one source for one run.
#[derive(Debug, Clone)]
pub struct SharedTables {
    /// customer_key, customer_id, first_purchase_date, last_purchase_date, orders, revenue, aov,
    /// acquisition_channel, frequency, t_x, T, monetary_value, revenue_micros — sorted by
    /// customer_key. Money in currency (Float64) and, for exact sums, `revenue_micros` (Int64).
    pub customer_facts: DataFrame,
    /// customer_key, date, purchases, revenue_micros — sorted by customer_key, date.
    pub customer_periods: DataFrame,
    pub as_of: NaiveDate,
}

/// Build both shared tables from the orders of one source.
pub fn shared_tables(source: &SourceOrders) -> Result<SharedTables> {
    let as_of = source.as_of;
    let orders = source.orders.clone().lazy();
    let purchases = orders.clone().filter(col("revenue").gt(lit(0i64)));

    let channel = if source.has_channel {
        col("channel")
            .sort_by([col("ordered_ts"), col("channel")], SortMultipleOptions::default())
            .first()
    } else {
        lit(NULL).cast(DataType::String)
    };
    let per_customer = purchases.clone().group_by([col("customer_id")]).agg([
        col("date").min().alias("first_purchase_date"),
        col("date").max().alias("last_purchase_date"),
        len().cast(DataType::Int64).alias("orders"),
        col("revenue").sum().alias("purchase_revenue"),
        channel.alias("acquisition_channel"),
    ]);
    let net_revenue = orders
        .clone()
        .group_by([col("customer_id")])
        .agg([col("revenue").sum().alias("revenue_micros")]);
    // BTYD: same-day purchases merged; the first purchase day is excluded from monetary_value.
    let purchase_days = purchases
        .clone()
        .group_by([col("customer_id"), col("date")])
        .agg([col("revenue").sum().alias("day_revenue")]);
    let btyd = purchase_days.group_by([col("customer_id")]).agg([
        len().cast(DataType::Int64).alias("purchase_days"),
        col("day_revenue").sum().alias("days_revenue"),
        col("day_revenue")
            .sort_by([col("date")], SortMultipleOptions::default())
            .first()
            .alias("first_day_revenue"),
    ]);
    let days = |expr: Expr| expr.cast(DataType::Int32).cast(DataType::Int64);
    let customer_facts = per_customer
        .join(net_revenue, [col("customer_id")], [col("customer_id")], JoinArgs::new(JoinType::Left))
        .join(btyd, [col("customer_id")], [col("customer_id")], JoinArgs::new(JoinType::Left))
        .sort(["customer_id"], SortMultipleOptions::default())
        .with_row_index("customer_key", None)
        .with_columns([
            (col("purchase_days") - lit(1i64)).alias("frequency"),
            (days(col("last_purchase_date")) - days(col("first_purchase_date"))).alias("t_x"),
            (lit(crate::period::to_days(as_of) as i64) - days(col("first_purchase_date"))).alias("T"),
            (from_micros(col("purchase_revenue")) / col("orders").cast(DataType::Float64)).alias("aov"),
            from_micros(col("revenue_micros")).alias("revenue"),
        ])
        .with_column(
            when(col("frequency").gt(lit(0i64)))
                .then(from_micros(col("days_revenue") - col("first_day_revenue")) / col("frequency").cast(DataType::Float64))
                .otherwise(lit(0.0))
                .alias("monetary_value"),
        )
        .select([
            col("customer_key"),
            col("customer_id"),
            col("first_purchase_date"),
            col("last_purchase_date"),
            col("orders"),
            col("revenue"),
            col("aov"),
            col("acquisition_channel"),
            col("frequency"),
            col("t_x"),
            col("T"),
            col("monetary_value"),
            col("revenue_micros"),
        ])
        .collect()
        .map_err(anyhow::Error::from)
        .context("building customer_facts")?;

    let keys = customer_facts.select(["customer_key", "customer_id"])?.lazy();
    let customer_periods = orders
        .group_by([col("customer_id"), col("date")])
        .agg([
            col("revenue").gt(lit(0i64)).cast(DataType::Int64).sum().alias("purchases"),
            col("revenue").sum().alias("revenue_micros"),
        ])
        .join(keys, [col("customer_id")], [col("customer_id")], JoinArgs::new(JoinType::Inner))
        .select([col("customer_key"), col("date"), col("purchases"), col("revenue_micros")])
        .sort(["customer_key", "date"], SortMultipleOptions::default())
        .collect()
        .map_err(anyhow::Error::from)
        .context("building customer_periods")?;

    Ok(SharedTables {
        customer_facts,
        customer_periods,
        as_of,
    })
}
