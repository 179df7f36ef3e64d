//! Orders → the shared per-customer tables every stage reads: `customer_facts` (one row per
//! customer) and `customer_periods` (one row per customer and local day with an order).
//!
//! Orders arrive with dense integer customer ids in customer_id order (`orders`); customers with
//! a purchase are numbered again here, densely, as `customer_key` (still in customer_id order).
//! Stages join and group on the key and carry `customer_id` only into outputs.
//!
//! Orders are aggregated once per (customer, day); every per-customer figure is then a plain
//! aggregate of those days (no per-group sorting): first/last purchase day, purchases, revenue,
//! purchase days and the first purchase day's revenue for the BTYD summary. Only the acquisition
//! channel goes back to the orders: the channel of the purchases at the customer's earliest
//! purchase time (the smallest channel name when several share that instant).

use anyhow::{Context, Result};
use chrono::NaiveDate;
use polars::prelude::*;

use crate::money::from_micros;
use crate::period::to_days;
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

/// Packing (id, date) into a UInt64: id × 2^32 + (day number + 2^31).
const DAY_SPAN: u64 = 1 << 32;
const DATE_OFFSET: i64 = 1 << 31;

fn collect(frame: LazyFrame, what: &str) -> Result<DataFrame> {
    frame
        .collect_with_engine(Engine::Streaming)
        .map(|result| result.unwrap_single())
        .map_err(anyhow::Error::from)
        .with_context(|| format!("building {what}"))
}

/// Build both shared tables from the orders of one source.
pub fn shared_tables(source: &SourceOrders) -> Result<SharedTables> {
    let as_of = source.as_of;
    let orders = source.orders.clone().lazy();
    let is_purchase = || col("revenue").gt(lit(0i64));
    let clock = std::time::Instant::now();
    let lap = |what: &str| {
        tracing::debug!(
            "prepare: {what} at {:.3} s ({})",
            clock.elapsed().as_secs_f64(),
            crate::runner::memory()
        )
    };

    // One row per customer and day with any order. (id, date) is packed into one UInt64 key:
    // one integer key groups and sorts several times faster than two columns.
    let day_key = col("id").cast(DataType::UInt64) * lit(DAY_SPAN)
        + (col("date").cast(DataType::Int32).cast(DataType::Int64) + lit(DATE_OFFSET)).cast(DataType::UInt64);
    let days = collect(
        orders
            .clone()
            .group_by([day_key.alias("day_key")])
            .agg([
                is_purchase().cast(DataType::Int64).sum().alias("purchases"),
                col("revenue").sum().alias("revenue_micros"),
                when(is_purchase())
                    .then(col("revenue"))
                    .otherwise(lit(0i64))
                    .sum()
                    .alias("purchase_revenue"),
            ])
            .with_columns([
                col("day_key")
                    .floor_div(lit(DAY_SPAN))
                    .cast(DataType::UInt32)
                    .alias("id"),
                ((col("day_key") % lit(DAY_SPAN)).cast(DataType::Int64) - lit(DATE_OFFSET))
                    .cast(DataType::Int32)
                    .cast(DataType::Date)
                    .alias("date"),
            ]),
        "customer days",
    )?;
    lap("customer days");

    let purchase_day = || col("purchases").gt(lit(0i64));
    let day_number = |expr: Expr| expr.cast(DataType::Int32).cast(DataType::Int64);
    // Customers with a purchase; ids are in customer_id order, so customer_key (the row index
    // after sorting by id) is too.
    let per_customer = collect(
        days.clone()
            .lazy()
            .group_by([col("id")])
            .agg([
                when(purchase_day())
                    .then(col("date"))
                    .otherwise(lit(NULL))
                    .min()
                    .alias("first_purchase_date"),
                when(purchase_day())
                    .then(col("date"))
                    .otherwise(lit(NULL))
                    .max()
                    .alias("last_purchase_date"),
                col("purchases").sum().alias("orders"),
                col("revenue_micros").sum(),
                col("purchase_revenue").sum(),
                purchase_day().cast(DataType::Int64).sum().alias("purchase_days"),
            ])
            .filter(col("orders").gt(lit(0i64))),
        "customers",
    )?
    .sort(["id"], SortMultipleOptions::default())?
    .with_row_index("customer_key".into(), None)?;
    let id_column = per_customer.column("id")?.as_materialized_series().clone();
    let customer_ids = source
        .customer_ids
        .take(id_column.idx()?)?
        .with_name("customer_id".into());
    let mut per_customer = per_customer;
    per_customer.with_column(customer_ids.into_column())?;
    lap("customers");

    // customer_periods: days of customers only, keyed; plus the first purchase day's revenue.
    // customer_key is per_customer's row: look it up by id (null for customers without a
    // purchase), then the first purchase date by key — lookups, not joins.
    let mut key_of_id: Vec<Option<IdxSize>> = vec![None; source.customer_ids.len()];
    for (key, id) in id_column.idx()?.into_no_null_iter().enumerate() {
        key_of_id[id as usize] = Some(key as IdxSize);
    }
    let first_purchase = per_customer
        .column("first_purchase_date")?
        .as_materialized_series()
        .clone();
    let keyed_days = collect(
        days.lazy()
            .with_column(
                lit(Series::new("customer_key".into(), key_of_id))
                    .gather(col("id"), false)
                    .alias("customer_key"),
            )
            .filter(col("customer_key").is_not_null())
            .with_column(
                lit(first_purchase)
                    .gather(col("customer_key"), false)
                    .alias("first_purchase_date"),
            )
            // customer_key follows id, so the packed key sorts by (customer_key, date).
            .sort(["day_key"], SortMultipleOptions::default()),
        "customer_periods",
    )?;
    lap("keyed days");
    let customer_periods = keyed_days.select(["customer_key", "date", "purchases", "revenue_micros"])?;
    let first_day = keyed_days
        .lazy()
        .filter(col("date").eq(col("first_purchase_date")))
        .select([col("customer_key"), col("purchase_revenue").alias("first_day_revenue")]);

    let acquisition_channel = match &source.channels {
        Some(channels) => {
            let codes: IdxCa = acquisition_codes(&source.orders, source.customer_ids.len())?
                .into_iter()
                .collect();
            let by_id = channels.take(&codes)?;
            by_id.take(id_column.idx()?)?
        }
        None => Series::full_null("".into(), per_customer.height(), &DataType::String),
    };
    per_customer.with_column(
        acquisition_channel
            .with_name("acquisition_channel".into())
            .into_column(),
    )?;

    let customer_facts = per_customer
        .lazy()
        .join(
            first_day,
            [col("customer_key")],
            [col("customer_key")],
            JoinArgs::new(JoinType::Left),
        )
        .sort(["customer_key"], SortMultipleOptions::default())
        .with_columns([
            (col("purchase_days") - lit(1i64)).alias("frequency"),
            (day_number(col("last_purchase_date")) - day_number(col("first_purchase_date"))).alias("t_x"),
            (lit(to_days(as_of) as i64) - day_number(col("first_purchase_date"))).alias("T"),
            (from_micros(col("purchase_revenue")) / col("orders").cast(DataType::Float64)).alias("aov"),
            from_micros(col("revenue_micros")).alias("revenue"),
        ])
        .with_column(
            // BTYD: same-day purchases merged; the first purchase day is not a repeat purchase.
            when(col("frequency").gt(lit(0i64)))
                .then(
                    from_micros(col("purchase_revenue") - col("first_day_revenue"))
                        / col("frequency").cast(DataType::Float64),
                )
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
        ]);
    let customer_facts = collect(customer_facts, "customer_facts")?;
    lap("customer facts");

    Ok(SharedTables {
        customer_facts,
        customer_periods,
        as_of,
    })
}

/// The acquisition channel code of each customer id: among its purchases at the earliest
/// purchase instant, the smallest code (codes follow name order, so the smallest name), ignoring
/// orders without a channel; `None` when there is no such purchase. One pass over the orders.
fn acquisition_codes(orders: &DataFrame, customers: usize) -> Result<Vec<Option<IdxSize>>> {
    const NONE: u32 = u32::MAX;
    let ids = orders.column("id")?.u32()?;
    let instants = orders.column("ordered_ts")?.i64()?;
    let revenues = orders.column("revenue")?.i64()?;
    let channels = orders.column("channel")?.u32()?;
    let mut earliest: Vec<(i64, u32)> = vec![(i64::MAX, NONE); customers];
    let rows = ids
        .iter()
        .zip(instants.iter())
        .zip(revenues.iter())
        .zip(channels.iter());
    for (((id, instant), revenue), channel) in rows {
        let (Some(id), Some(instant), Some(revenue)) = (id, instant, revenue) else {
            continue;
        };
        if revenue > 0 {
            let slot = &mut earliest[id as usize];
            *slot = (*slot).min((instant, channel.unwrap_or(NONE)));
        }
    }
    Ok(earliest
        .into_iter()
        .map(|(_, code)| (code != NONE).then_some(code as IdxSize))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquisition_is_the_smallest_channel_at_the_earliest_purchase() {
        // Customer 0: two purchases at the first instant (codes 2 and 1) and an earlier refund.
        // Customer 1: no channel at its first purchase instant except one null, a later code 0.
        // Customer 2: a null and code 3 at the same first instant. Customer 3: no purchase.
        let orders = df! {
            "id" => [0u32, 0, 0, 1, 1, 2, 2, 3],
            "ordered_ts" => [10i64, 10, 5, 7, 9, 4, 4, 1],
            "revenue" => [5i64, 6, -3, 2, 2, 1, 1, 0],
            "channel" => [Some(2u32), Some(1), Some(0), None, Some(0), None, Some(3), Some(0)],
        }
        .expect("valid frame");
        let codes = acquisition_codes(&orders, 4).expect("columns present");
        assert_eq!(codes, [Some(1), None, Some(3), None]);
    }
}
