//! `cohort_retention`: dense long-format retention triangle per acquisition cohort.
//!
//! One row per (dimensions…, cohort, period_index) from 0 to the period containing as_of, with
//! zero rows where nobody came back. Bracketed retention counts customers active in the period;
//! unbounded retention counts customers active in it or any later period up to as_of.
//!
//! Sharded (`shard::Sharded`): a shard's partial is its cohort sizes and its non-zero cells
//! (active customers, orders, revenue, customers last active there), keyed by dimension values
//! and period indices; partials merge by adding; finalize lays out the dense triangle, with
//! unbounded retention as the sum of last-active counts from each period on.

use anyhow::Result;
use polars::prelude::*;
use serde::Deserialize;

use super::shard::{merge_sums, tables_at, Finalized, Partial, Sharded};
use super::{Kind, Stage, StageInputs, ORDERS};
use crate::core::period::{to_days, Granularity, PeriodIndex};
use crate::core::prepare::{self, SharedTables};

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
    input: ORDERS,
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
                    crate::core::diagnostic::Diagnostic::new(
                        format!("{}: unknown dimension `{dimension}`", reader.context),
                        reader.value_span("dimensions"),
                    )
                    .with_help(
                        crate::core::diagnostic::suggest(dimension, DIMENSIONS.iter().copied())
                            .or_else(|| Some(format!("available: {}", crate::core::options::backticked(DIMENSIONS)))),
                    ),
                );
            }
        }
        ok.then(|| Box::new(options) as Box<dyn Stage>)
    },
};

impl Stage for CohortRetentionOptions {}

impl Sharded for CohortRetentionOptions {
    fn partial(&self, inputs: &StageInputs, _earlier: &[Partial]) -> Result<Partial> {
        cohort_cells(inputs.shared()?, self.granularity, &self.dimensions)
    }

    fn merge(&self, _pass: usize, parts: Vec<Partial>) -> Result<Partial> {
        let keys: Vec<&str> = self.dimensions.iter().map(String::as_str).chain(["cohort"]).collect();
        let cell_keys: Vec<&str> = keys.iter().copied().chain(["period_index"]).collect();
        Ok(vec![
            merge_sums(tables_at(&parts, 0)?, &keys)?,
            merge_sums(tables_at(&parts, 1)?, &cell_keys)?,
        ])
    }

    fn finalize(&self, merged: Vec<Partial>, _whole: &StageInputs, as_of: chrono::NaiveDate) -> Result<Finalized> {
        let merged = super::shard::only_pass(merged)?;
        Ok(Finalized::tables(vec![triangle(
            &merged,
            self.granularity,
            &self.dimensions,
            as_of,
        )?]))
    }
}

/// A dimension's distinct values in output order (ascending, null last) and each customer's
/// position among them; `DIMENSIONS` lists the dimensions the config accepts.
fn dimension_codes<'a>(shared: &'a SharedTables, dimension: &str) -> Result<(&'a Series, &'a [u32])> {
    match dimension {
        "acquisition_channel" => Ok((&shared.acquisition.0, &shared.acquisition.1)),
        other => anyhow::bail!("unknown cohort dimension `{other}`"),
    }
}

/// The partial of one shard: `[sizes, cells]`. `sizes`: dimensions…, cohort (period index),
/// cohort_customers; `cells`: dimensions…, cohort, period_index, active_customers, orders,
/// revenue_micros, last_active (customers whose last purchase falls in the period), the cells
/// with any of them non-zero.
///
/// One walk: customer_facts (sorted by customer_key = row) gives each customer's group (the
/// dimension values, mixed-radix coded), cohort and last period; customer_periods (sorted by
/// customer_key, date) is read once into the dense (group, cohort, period) cells that exist.
/// A customer is active in a period when a run of its purchase days starts there.
fn cohort_cells(shared: &SharedTables, granularity: Granularity, dimensions: &[String]) -> Result<Partial> {
    use rayon::prelude::*;
    let (facts, periods, as_of) = (&shared.customer_facts, &shared.customer_periods()?, shared.as_of);
    let first_days = prepare::day_values(facts, "first_purchase_date")?;
    let last_days = prepare::day_values(facts, "last_purchase_date")?;
    let period_days = prepare::day_values(periods, "date")?;
    let as_of_day = to_days(as_of);
    let span = first_days
        .iter()
        .chain(last_days)
        .chain(period_days)
        .fold((as_of_day, as_of_day), |(lo, hi), &d| (lo.min(d), hi.max(d)));
    let index = PeriodIndex::new(granularity, span.0, span.1);
    let as_of_index = granularity.index_of(as_of);

    let clock = std::time::Instant::now();
    // Groups: mixed-radix codes over the dimensions, in output order.
    let mut group = vec![0u32; facts.height()];
    let mut values = Vec::new();
    let mut radix = Vec::new();
    for dimension in dimensions {
        let (distinct, codes) = dimension_codes(shared, dimension)?;
        let n = distinct.len().max(1) as u32;
        for (g, &code) in group.iter_mut().zip(codes) {
            *g = *g * n + code;
        }
        values.push(distinct.clone());
        radix.push(n);
    }
    let groups = radix.iter().product::<u32>() as usize;

    tracing::debug!("cohorts: dimension codes at {:.3} s", clock.elapsed().as_secs_f64());
    // Cohorts from the earliest to the as-of period; each existing (group, cohort) owns the
    // cells of periods 0..=max(as_of - cohort, 0).
    let cohort: Vec<i32> = first_days.iter().map(|&d| index.of(d)).collect();
    let first_cohort = cohort.iter().copied().min().unwrap_or(as_of_index).min(as_of_index);
    let last_cohort = cohort.iter().copied().max().unwrap_or(as_of_index).max(as_of_index);
    let cohorts = (last_cohort - first_cohort + 1) as usize;
    let slot = |customer: usize| group[customer] as usize * cohorts + (cohort[customer] - first_cohort) as usize;
    let mut sizes = vec![0i64; groups * cohorts];
    for customer in 0..facts.height() {
        sizes[slot(customer)] += 1;
    }
    let periods_of = |c: i32| (as_of_index - c).max(0) as usize + 1;
    let mut offset = vec![usize::MAX; groups * cohorts];
    let mut cells = 0;
    for (s, &size) in sizes.iter().enumerate() {
        if size > 0 {
            offset[s] = cells;
            cells += periods_of(first_cohort + (s % cohorts) as i32);
        }
    }
    let cell = |customer: usize, period: i32| -> Option<usize> {
        (period >= 0 && (period as usize) < periods_of(cohort[customer]))
            .then(|| offset[slot(customer)] + period as usize)
    };

    let mut last_active = vec![0i64; cells];
    for customer in 0..facts.height() {
        if let Some(at) = cell(customer, index.of(last_days[customer]) - cohort[customer]) {
            last_active[at] += 1;
        }
    }
    // Customers in parts counted in parallel, each part into its own cells (as many parts as
    // keep those copies small), then summed: integer sums, the same whatever the split.
    let keys = prepare::values::<UInt32Type>(periods, "customer_key")?;
    let purchases = prepare::values::<UInt32Type>(periods, "purchases")?;
    let revenues = prepare::values::<Int64Type>(periods, "revenue_micros")?;
    let customers = facts.height();
    let parts = (rayon::current_num_threads() * 4).min((1 << 20) / cells.max(1)).max(1);
    let per_part = customers.div_ceil(parts).max(1);
    let counted: Vec<[Vec<i64>; 3]> = (0..parts)
        .into_par_iter()
        .map(|part| {
            let (low, high) = ((part * per_part).min(customers), ((part + 1) * per_part).min(customers));
            let rows = prepare::rows_of(keys, low..high);
            let [mut active, mut orders, mut revenue] = [vec![0i64; cells], vec![0i64; cells], vec![0i64; cells]];
            // A customer's rows come together, in period order: its cohort, its cells' offset
            // and its periods are looked up once (`cell` per row was a call and a dozen loads),
            // and the cell it was last counted active in is remembered.
            let (mut customer, mut cohort_index, mut first_cell, mut periods) = (usize::MAX, 0, 0, 0);
            let mut counted = usize::MAX;
            for row in rows {
                if keys[row] as usize != customer {
                    customer = keys[row] as usize;
                    cohort_index = cohort[customer];
                    first_cell = offset[slot(customer)];
                    periods = periods_of(cohort_index);
                    counted = usize::MAX;
                }
                let period = index.of(period_days[row]) - cohort_index;
                if period < 0 || period as usize >= periods {
                    continue;
                }
                let at = first_cell + period as usize;
                let bought = i64::from(purchases[row]);
                orders[at] += bought;
                revenue[at] += revenues[row];
                if bought > 0 && counted != at {
                    active[at] += 1;
                    counted = at;
                }
            }
            [active, orders, revenue]
        })
        .collect();
    let [mut active, mut orders, mut revenue] = [vec![0i64; cells], vec![0i64; cells], vec![0i64; cells]];
    for [part_active, part_orders, part_revenue] in &counted {
        for (total, part) in [
            (&mut active, part_active),
            (&mut orders, part_orders),
            (&mut revenue, part_revenue),
        ] {
            total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
        }
    }
    drop(counted);
    tracing::debug!("cohorts: cells counted at {:.3} s", clock.elapsed().as_secs_f64());
    // Sizes and the non-zero cells, keyed by the dimension values.
    let mut size_group: Vec<Vec<IdxSize>> = vec![Vec::new(); dimensions.len()];
    let mut cell_group: Vec<Vec<IdxSize>> = vec![Vec::new(); dimensions.len()];
    let (mut size_cohort, mut size_count) = (Vec::new(), Vec::new());
    let mut table = Cells::default();
    for (s, &size) in sizes.iter().enumerate() {
        if size == 0 {
            continue;
        }
        let (g, c) = (s / cohorts, first_cohort + (s % cohorts) as i32);
        let mut digits = vec![0u32; dimensions.len()];
        let mut rest = g as u32;
        for (digit, &n) in digits.iter_mut().zip(&radix).rev() {
            *digit = rest % n;
            rest /= n;
        }
        for (take, &digit) in size_group.iter_mut().zip(&digits) {
            take.push(digit as IdxSize);
        }
        size_cohort.push(c);
        size_count.push(size);
        for p in 0..periods_of(c) {
            let at = offset[s] + p;
            if active[at] == 0 && orders[at] == 0 && revenue[at] == 0 && last_active[at] == 0 {
                continue;
            }
            for (take, &digit) in cell_group.iter_mut().zip(&digits) {
                take.push(digit as IdxSize);
            }
            table.cohort.push(c);
            table.period_index.push(p as i32);
            table.active_customers.push(active[at]);
            table.orders.push(orders[at]);
            table.revenue_micros.push(revenue[at]);
            table.last_active.push(last_active[at]);
        }
    }
    tracing::debug!("cohorts: partial at {:.3} s", clock.elapsed().as_secs_f64());
    let keyed = |takes: Vec<Vec<IdxSize>>| -> Result<Vec<Column>> {
        dimensions
            .iter()
            .zip(&values)
            .zip(takes)
            .map(|((dimension, values), take)| {
                let take = IdxCa::from_vec("".into(), take);
                Ok(values.take(&take)?.with_name(dimension.as_str().into()).into_column())
            })
            .collect()
    };
    let mut size_columns = keyed(size_group)?;
    size_columns.push(Column::new("cohort".into(), size_cohort));
    size_columns.push(Column::new("cohort_customers".into(), size_count));
    let mut cell_columns = keyed(cell_group)?;
    cell_columns.extend(table.columns());
    Ok(vec![
        DataFrame::new_infer_height(size_columns)?,
        DataFrame::new_infer_height(cell_columns)?,
    ])
}

/// The dense triangle from the merged partial: every (dimensions…, cohort) with customers gets
/// periods 0 to the as_of period (at least 0), zeros where no cell was counted; unbounded
/// retention counts the customers last active in this period or a later one.
fn triangle(
    merged: &Partial,
    granularity: Granularity,
    dimensions: &[String],
    as_of: chrono::NaiveDate,
) -> Result<DataFrame> {
    let (sizes, cells) = (&merged[0], &merged[1]);
    let as_of_index = granularity.index_of(as_of);
    let cohorts = sizes.column("cohort")?.i32()?;
    let counts = sizes.column("cohort_customers")?.i64()?;
    // The cells of each (group, cohort) come together, in period order (merged sorted by keys):
    // a group is the row of `sizes` with the same dimension values (text) and cohort.
    let text_columns = |frame: &DataFrame| -> Result<Vec<StringChunked>> {
        dimensions
            .iter()
            .map(|d| Ok(frame.column(d.as_str())?.cast(&DataType::String)?.str()?.clone()))
            .collect()
    };
    let (size_text, cell_text) = (text_columns(sizes)?, text_columns(cells)?);
    let cell_cohorts = cells.column("cohort")?.i32()?;
    let same_group = |row: usize, cell: usize| -> bool {
        cell_cohorts.get(cell) == cohorts.get(row)
            && size_text
                .iter()
                .zip(&cell_text)
                .all(|(size, cell_values)| size.get(row) == cell_values.get(cell))
    };
    let cell_period = cells.column("period_index")?.i32()?;
    let cell_value = |name: &str| -> Result<Vec<i64>> { Ok(cells.column(name)?.i64()?.into_no_null_iter().collect()) };
    let (cell_active, cell_orders, cell_revenue, cell_last) = (
        cell_value("active_customers")?,
        cell_value("orders")?,
        cell_value("revenue_micros")?,
        cell_value("last_active")?,
    );
    let mut table = Rows::default();
    let mut take: Vec<IdxSize> = Vec::new();
    let mut next_cell = 0;
    for row in 0..sizes.height() {
        let (c, size) = (cohorts.get(row).unwrap_or(0), counts.get(row).unwrap_or(0));
        let n = (as_of_index - c).max(0) as usize + 1;
        let mut values = vec![[0i64; 4]; n];
        while next_cell < cells.height() && same_group(row, next_cell) {
            let p = cell_period.get(next_cell).unwrap_or(0) as usize;
            if p < n {
                values[p] = [
                    cell_active[next_cell],
                    cell_orders[next_cell],
                    cell_revenue[next_cell],
                    cell_last[next_cell],
                ];
            }
            next_cell += 1;
        }
        let mut unbounded: i64 = values.iter().map(|v| v[3]).sum();
        for (p, [active, orders, revenue, last]) in values.into_iter().enumerate() {
            take.push(row as IdxSize);
            let period = p as i32;
            table.cohort.push(to_days(granularity.start_of(c)));
            table.period_index.push(period);
            table.period_start.push(to_days(granularity.start_of(c + period)));
            table.cohort_customers.push(size);
            table.active_customers.push(active);
            table.unbounded_active.push(unbounded);
            table.orders.push(orders);
            table.revenue_micros.push(revenue);
            table.period_complete.push(granularity.end_of(c + period) <= as_of);
            unbounded -= last;
        }
    }
    let take = IdxCa::from_vec("".into(), take);
    let mut columns: Vec<Column> = dimensions
        .iter()
        .map(|d| Ok(sizes.column(d.as_str())?.take(&take)?))
        .collect::<Result<_>>()?;
    columns.extend(table.columns()?);
    let mut cohort_group: Vec<Expr> = dimensions.iter().map(|d| col(d.as_str())).collect();
    cohort_group.push(col("cohort"));
    let customers_f = || col("cohort_customers").cast(DataType::Float64);
    let mut output: Vec<Expr> = dimensions.iter().map(|d| col(d.as_str())).collect();
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
    let table = DataFrame::new_infer_height(columns)?
        .lazy()
        .with_column(crate::core::money::from_micros(col("revenue_micros")).alias("revenue"))
        .with_columns([
            (col("active_customers").cast(DataType::Float64) / customers_f()).alias("retention"),
            (col("unbounded_active").cast(DataType::Float64) / customers_f()).alias("unbounded_retention"),
            (col("revenue") / customers_f()).alias("revenue_per_customer"),
        ])
        .with_column(
            col("revenue_per_customer")
                .cum_sum(false)
                .over(cohort_group)?
                .alias("cumulative_revenue_per_customer"),
        )
        .select(output)
        .collect()?;
    Ok(table)
}

/// A shard's non-zero cells.
#[derive(Default)]
struct Cells {
    cohort: Vec<i32>,
    period_index: Vec<i32>,
    active_customers: Vec<i64>,
    orders: Vec<i64>,
    revenue_micros: Vec<i64>,
    last_active: Vec<i64>,
}

impl Cells {
    fn columns(self) -> Vec<Column> {
        vec![
            Column::new("cohort".into(), self.cohort),
            Column::new("period_index".into(), self.period_index),
            Column::new("active_customers".into(), self.active_customers),
            Column::new("orders".into(), self.orders),
            Column::new("revenue_micros".into(), self.revenue_micros),
            Column::new("last_active".into(), self.last_active),
        ]
    }
}

/// The per-row columns of the dense table before the ratios.
#[derive(Default)]
struct Rows {
    cohort: Vec<i32>,
    period_index: Vec<i32>,
    period_start: Vec<i32>,
    cohort_customers: Vec<i64>,
    active_customers: Vec<i64>,
    unbounded_active: Vec<i64>,
    orders: Vec<i64>,
    revenue_micros: Vec<i64>,
    period_complete: Vec<bool>,
}

impl Rows {
    fn columns(self) -> Result<Vec<Column>> {
        Ok(vec![
            Column::new("cohort".into(), self.cohort).cast(&DataType::Date)?,
            Column::new("period_index".into(), self.period_index),
            Column::new("period_start".into(), self.period_start).cast(&DataType::Date)?,
            Column::new("cohort_customers".into(), self.cohort_customers),
            Column::new("active_customers".into(), self.active_customers),
            Column::new("unbounded_active".into(), self.unbounded_active),
            Column::new("orders".into(), self.orders),
            Column::new("revenue_micros".into(), self.revenue_micros),
            Column::new("period_complete".into(), self.period_complete),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stages::shard::tests::{assert_shards_merge, random_orders, shared_of};

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Any split of the customers into shards merges to the whole's partial and table, by
        /// month and by week, with and without the channel dimension (null channels included).
        #[test]
        fn shards_merge_to_the_whole(orders in random_orders(), shards in 1usize..6, weekly: bool, by_channel: bool) {
            let stage = CohortRetentionOptions {
                granularity: if weekly { Granularity::Week } else { Granularity::Month },
                dimensions: if by_channel { vec!["acquisition_channel".into()] } else { Vec::new() },
            };
            assert_shards_merge(&stage, &shared_of(&orders, 60), shards);
        }
    }
}
