//! `segment_summary`: per-customer outputs of other stages summarised by any per-customer
//! dimension (rfm segment, lifecycle stage, acquisition channel, cohort).
//!
//! The base table is the source's customers (customer_id, revenue, orders, acquisition_channel,
//! cohort = month of first purchase); each input stage's per-customer table is joined on
//! customer_id (a column already present is kept from the earlier table).

use anyhow::{bail, Result};
use polars::prelude::*;
use serde::Deserialize;

use super::{InputKind, Kind, Stage, StageInputs};
use crate::core::diagnostic::Diagnostics;
use crate::core::money::from_micros;
use crate::core::options::TableReader;

/// Options of `kind = "segment_summary"`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentSummaryOptions {
    /// Per-customer columns to group by, e.g. ["segment"] or ["acquisition_channel", "stage"].
    pub by: Vec<String>,
    /// Numeric per-customer columns reported as mean_<column> and median_<column>; default: the
    /// CLV columns present (historic_clv, simple_clv, clv).
    pub metrics: Vec<String>,
}

pub static KIND: Kind = Kind {
    name: "segment_summary",
    summary: "customers, revenue, mean/median CLV and repeat rate by any per-customer dimension",
    input: InputKind::Stages,
    tables: &[""],
    customer_table: None,
    options: serde_aux::serde_introspection::serde_introspect::<SegmentSummaryOptions>,
    parse,
};

fn parse(reader: &TableReader, common: &[&str], diagnostics: &mut Diagnostics) -> Option<Box<dyn Stage>> {
    let options = super::parse_options::<SegmentSummaryOptions>(reader, common, diagnostics)?;
    let errors = if options.by.is_empty() {
        vec![(
            "by",
            "`by` needs at least one per-customer column, e.g. `by = [\"segment\"]`".to_string(),
        )]
    } else {
        Vec::new()
    };
    super::lifecycle::report(reader, errors, diagnostics).then(|| Box::new(options) as Box<dyn Stage>)
}

const DEFAULT_METRICS: &[&str] = &["historic_clv", "simple_clv", "clv"];

impl Stage for SegmentSummaryOptions {
    fn customer_columns(&self) -> Vec<String> {
        self.by.iter().chain(&self.metrics).cloned().collect()
    }

    fn reads_customer_periods(&self) -> bool {
        false
    }

    fn run(&self, inputs: &StageInputs) -> Result<Vec<DataFrame>> {
        let shared = inputs.shared()?;
        let mut base = vec![
            col("customer_id"),
            col("revenue_micros"),
            col("orders"),
            col("acquisition_channel"),
        ];
        let has_cost = shared.customer_facts.column("cost_micros").is_ok();
        if has_cost {
            base.push(col("cost_micros"));
        }
        // The cohort only when asked for: truncating millions of dates is not free.
        let wants_cohort = self.by.iter().chain(&self.metrics).any(|c| c == "cohort");
        if wants_cohort {
            base.push(col("first_purchase_date").dt().truncate(lit("1mo")).alias("cohort"));
        }
        let mut table = shared.customer_facts.clone().lazy().select(base).collect()?;
        for (stage, kind, frames) in &inputs.upstream {
            let Some(index) = kind.customer_table else {
                bail!(
                    "input stage `{stage}` (kind `{}`) has no per-customer table to summarise",
                    kind.name
                );
            };
            let upstream = &frames[index];
            let present: Vec<String> = table.get_column_names().iter().map(|n| n.to_string()).collect();
            let added: Vec<String> = upstream
                .get_column_names()
                .iter()
                .map(|name| name.to_string())
                .filter(|name| !present.contains(name))
                .collect();
            // Per-customer tables come in customer_key order, like customer_facts: when the ids
            // line up row for row, the columns are placed beside them instead of joined.
            let aligned = upstream.height() == table.height()
                && upstream
                    .column("customer_id")?
                    .as_materialized_series()
                    .equals_missing(table.column("customer_id")?.as_materialized_series());
            if aligned {
                table.hstack_mut(upstream.select(&added)?.columns())?;
                continue;
            }
            let mut columns = vec![col("customer_id")];
            columns.extend(added.iter().map(|name| col(name.as_str())));
            table = table
                .lazy()
                .join(
                    upstream.clone().lazy().select(columns),
                    [col("customer_id")],
                    [col("customer_id")],
                    JoinArgs::new(JoinType::Left),
                )
                .collect()?;
        }
        let mut available: Vec<String> = table
            .get_column_names()
            .iter()
            .filter(|n| !matches!(n.as_str(), "revenue_micros" | "cost_micros"))
            .map(|n| n.to_string())
            .collect();
        if !wants_cohort {
            available.push("cohort".into());
        }
        for column in self.by.iter().chain(&self.metrics) {
            if !available.contains(column) {
                bail!(
                    "column `{column}` is not in the per-customer tables of the inputs; available: {}",
                    available
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let metrics: Vec<String> = if self.metrics.is_empty() {
            DEFAULT_METRICS
                .iter()
                .filter(|m| available.contains(&m.to_string()))
                .map(|m| m.to_string())
                .collect()
        } else {
            self.metrics.clone()
        };
        let mut summary = summarise(&table, &self.by, &metrics)?.lazy().with_columns([
            (col("customers").cast(DataType::Float64) / lit(table.height().max(1) as f64)).alias("share"),
            from_micros(col("revenue_micros")).alias("revenue"),
            (col("revenue_micros").cast(DataType::Float64) / col("revenue_micros").sum().cast(DataType::Float64))
                .alias("revenue_share"),
        ]);
        if has_cost {
            // Exact: contribution in micro-units, its share of the total.
            let contribution = col("revenue_micros") - col("cost_micros");
            summary = summary.with_columns([
                from_micros(col("cost_micros")).alias("cost"),
                from_micros(contribution.clone()).alias("contribution"),
                (contribution.clone().cast(DataType::Float64) / contribution.sum().cast(DataType::Float64))
                    .alias("contribution_share"),
            ]);
        }
        let by: Vec<Expr> = self.by.iter().map(|c| col(c.as_str())).collect();
        let mut output: Vec<Expr> = by.clone();
        output.extend([col("customers"), col("share"), col("revenue"), col("revenue_share")]);
        if has_cost {
            output.extend([col("cost"), col("contribution"), col("contribution_share")]);
        }
        for metric in &metrics {
            output.push(col(format!("mean_{metric}").as_str()));
            output.push(col(format!("median_{metric}").as_str()));
        }
        output.push(col("repeat_rate"));
        if table.column("last_score").is_ok() {
            output.extend([col("respondents"), col("nps")]);
        }
        let summary = summary
            .sort_by_exprs(by, SortMultipleOptions::default().with_nulls_last(true))
            .select(output)
            .collect()?;
        Ok(vec![summary])
    }
}

/// Per group of equal `by` values (nulls a value of their own), in order of first appearance:
/// the `by` values, customers, revenue_micros (sum), mean_<m> and median_<m> of each metric
/// (its non-null values as floats; median the midpoint of the middle two, as polars'), and
/// repeat_rate (the share of non-null `orders` of 2 or more).
///
/// Plain loops over group codes rather than polars' group_by: its mean and median gather each
/// group's values per aggregation, and text keys are hashed row by row.
fn summarise(table: &DataFrame, by: &[String], metrics: &[String]) -> Result<DataFrame> {
    use rayon::prelude::*;
    let groups = Groups::of(table, by)?;
    let count = groups.first_rows.len();
    let first_rows = IdxCa::from_vec("".into(), groups.first_rows.clone());
    let mut columns: Vec<Column> = table
        .select(by.iter().map(String::as_str))?
        .take(&first_rows)?
        .into_columns();
    let mut customers = vec![0i64; count];
    let mut revenue = vec![0i64; count];
    let (mut repeat, mut known) = (vec![0u64; count], vec![0u64; count]);
    let revenue_micros = table.column("revenue_micros")?.cast(&DataType::Int64)?;
    let orders = table.column("orders")?.cast(&DataType::Int64)?;
    let (revenue_micros, orders) = (revenue_micros.i64()?.rechunk(), orders.i64()?.rechunk());
    match (revenue_micros.cont_slice(), orders.cont_slice()) {
        (Ok(revenue_micros), Ok(orders)) => {
            for ((&group, &revenue_micros), &orders) in groups.of_row.iter().zip(revenue_micros).zip(orders) {
                let group = group as usize;
                customers[group] += 1;
                revenue[group] += revenue_micros;
                known[group] += 1;
                repeat[group] += u64::from(orders >= 2);
            }
        }
        _ => {
            for ((&group, revenue_micros), orders) in groups.of_row.iter().zip(revenue_micros.iter()).zip(orders.iter())
            {
                let group = group as usize;
                customers[group] += 1;
                revenue[group] += revenue_micros.unwrap_or(0);
                if let Some(orders) = orders {
                    known[group] += 1;
                    repeat[group] += u64::from(orders >= 2);
                }
            }
        }
    }
    columns.push(crate::core::columns::owned_column("customers", customers));
    columns.push(crate::core::columns::owned_column("revenue_micros", revenue));
    if let Ok(cost) = table.column("cost_micros") {
        let mut sums = vec![0i64; count];
        for (&group, cost) in groups.of_row.iter().zip(cost.i64()?.iter()) {
            sums[group as usize] += cost.unwrap_or(0);
        }
        columns.push(crate::core::columns::owned_column("cost_micros", sums));
    }
    let aggregated: Vec<MeansAndMedians> = metrics
        .par_iter()
        .map(|metric| -> Result<_> {
            let values = table.column(metric)?.cast(&DataType::Float64)?;
            Ok(mean_and_median(values.f64()?, &groups.of_row, count))
        })
        .collect::<Result<_>>()?;
    for (metric, (means, medians)) in metrics.iter().zip(aggregated) {
        columns.push(Series::new(format!("mean_{metric}").into(), means).into_column());
        columns.push(Series::new(format!("median_{metric}").into(), medians).into_column());
    }
    let repeat_rate: Vec<Option<f64>> = repeat
        .iter()
        .zip(&known)
        .map(|(&repeat, &known)| (known > 0).then(|| repeat as f64 / known as f64))
        .collect();
    columns.push(Series::new("repeat_rate".into(), repeat_rate).into_column());
    if let Ok(scores) = table.column("last_score") {
        columns.extend(nps_of_groups(scores, &groups.of_row, count)?);
    }
    Ok(DataFrame::new(count, columns)?)
}

/// Per group, from the customers' last NPS scores (`nps` stage): respondents, and NPS =
/// 100 × (promoters − detractors) / respondents (null without respondents).
fn nps_of_groups(scores: &Column, of_row: &[u32], count: usize) -> Result<[Column; 2]> {
    let scores = scores.cast(&DataType::Int32)?;
    let (mut respondents, mut net) = (vec![0i64; count], vec![0i64; count]);
    for (&group, score) in of_row.iter().zip(scores.i32()?.iter()) {
        if let Some(score) = score {
            respondents[group as usize] += 1;
            net[group as usize] += i64::from(score >= 9) - i64::from(score <= 6);
        }
    }
    let nps: Vec<Option<f64>> = respondents
        .iter()
        .zip(&net)
        .map(|(&n, &net)| (n > 0).then(|| 100.0 * net as f64 / n as f64))
        .collect();
    Ok([
        crate::core::columns::owned_column("respondents", respondents),
        Series::new("nps".into(), nps).into_column(),
    ])
}

/// Each row's group of equal key values and each group's first row; groups are numbered in
/// order of first appearance.
struct Groups {
    of_row: Vec<u32>,
    first_rows: Vec<IdxSize>,
}

impl Groups {
    fn of(table: &DataFrame, by: &[String]) -> Result<Groups> {
        let rows = table.height();
        let mut of_row = vec![0u32; rows];
        let mut count = usize::from(rows > 0);
        for name in by {
            let (codes, distinct) = key_codes(table.column(name)?)?;
            // The pair (group so far, code) renumbered in order of first appearance: through a
            // table when the pairs are few (the usual case), a hash map otherwise.
            let pairs = count as u64 * u64::from(distinct);
            let pair = |group: u32, code: u32| u64::from(group) * u64::from(distinct) + u64::from(code);
            if pairs <= 1 << 20 {
                let mut numbers = vec![u32::MAX; pairs as usize];
                let mut next = 0;
                for (group, &code) in of_row.iter_mut().zip(&codes) {
                    let number = &mut numbers[pair(*group, code) as usize];
                    if *number == u32::MAX {
                        (*number, next) = (next, next + 1);
                    }
                    *group = *number;
                }
                count = next as usize;
            } else {
                let mut numbers: hashbrown::HashMap<u64, u32, foldhash::fast::FixedState> = Default::default();
                for (group, &code) in of_row.iter_mut().zip(&codes) {
                    let next = numbers.len() as u32;
                    *group = *numbers.entry(pair(*group, code)).or_insert(next);
                }
                count = numbers.len();
            }
        }
        let mut first_rows = Vec::with_capacity(count);
        for (row, &group) in of_row.iter().enumerate() {
            if group as usize == first_rows.len() {
                first_rows.push(row as IdxSize);
            }
        }
        Ok(Groups { of_row, first_rows })
    }
}

/// Each row's code among the distinct values of `column` (null one of them, after the others)
/// and how many codes there are. Text goes through `text_codes` (rows looked up by view).
fn key_codes(column: &Column) -> Result<(Vec<u32>, u32)> {
    let (mut codes, distinct) = match column.dtype() {
        DataType::String => {
            let (texts, codes) = crate::core::columns::text_codes(column.str()?.downcast_iter(), usize::MAX)
                .expect("no limit on distinct texts");
            (codes, texts.len() as u32)
        }
        dtype if dtype.to_physical().is_primitive_numeric() || dtype.is_bool() => {
            // Integers (dates, booleans) by value; floats by bits, with -0 as 0 and one NaN,
            // the equality polars groups floats by.
            let physical = column.to_physical_repr();
            let keys: Vec<Option<u64>> = if physical.dtype().is_float() {
                let values = physical.cast(&DataType::Float64)?;
                values
                    .f64()?
                    .iter()
                    .map(|v| {
                        v.map(|v| {
                            if v.is_nan() {
                                f64::NAN.to_bits()
                            } else if v == 0.0 {
                                0
                            } else {
                                v.to_bits()
                            }
                        })
                    })
                    .collect()
            } else if matches!(physical.dtype(), DataType::UInt64) {
                physical.u64()?.iter().collect()
            } else {
                let values = physical.cast(&DataType::Int64)?;
                values.i64()?.iter().map(|v| v.map(|v| v as u64)).collect()
            };
            let mut numbers: hashbrown::HashMap<u64, u32, foldhash::fast::FixedState> = Default::default();
            let codes = keys
                .into_iter()
                .map(|key| {
                    key.map_or(u32::MAX, |key| {
                        let next = numbers.len() as u32;
                        *numbers.entry(key).or_insert(next)
                    })
                })
                .collect();
            (codes, numbers.len() as u32)
        }
        other => bail!(
            "column `{}` ({other}) cannot be summarised by: group by text, numbers, dates or booleans",
            column.name()
        ),
    };
    codes
        .iter_mut()
        .filter(|code| **code == u32::MAX)
        .for_each(|code| *code = distinct);
    Ok((codes, distinct + 1))
}

/// Per group: the mean and the median of a metric, or none for a group without values.
type MeansAndMedians = (Vec<Option<f64>>, Vec<Option<f64>>);

/// Per group (of `groups`, `count` of them): the mean and the median of its non-null values,
/// or none. Means are compensated sums (Neumaier) over the count; medians follow polars' linear
/// quantile at 0.5: the middle value, or the lower middle plus half the step to the upper.
fn mean_and_median(values: &Float64Chunked, groups: &[u32], count: usize) -> MeansAndMedians {
    let values = values.rechunk();
    // Each row's value (`None` for null), without a branch on validity when there are no nulls.
    let each = || -> Box<dyn Iterator<Item = Option<f64>> + '_> {
        match values.cont_slice() {
            Ok(slice) => Box::new(slice.iter().map(|&v| Some(v))),
            Err(_) => Box::new(values.iter()),
        }
    };
    let mut sizes = vec![0usize; count];
    let mut sums = vec![(0.0f64, 0.0f64); count];
    for (&group, value) in groups.iter().zip(each()) {
        if let Some(value) = value {
            sizes[group as usize] += 1;
            let (sum, compensation) = &mut sums[group as usize];
            let total = *sum + value;
            *compensation += if sum.abs() >= value.abs() {
                (*sum - total) + value
            } else {
                (value - total) + *sum
            };
            *sum = total;
        }
    }
    // Each group's values together (a counting sort by group), then the middle selected.
    let mut starts: Vec<usize> = sizes
        .iter()
        .scan(0, |at, &size| {
            let start = *at;
            *at += size;
            Some(start)
        })
        .collect();
    let mut together = vec![0.0f64; sizes.iter().sum()];
    for (&group, value) in groups.iter().zip(each()) {
        if let Some(value) = value {
            together[starts[group as usize]] = value;
            starts[group as usize] += 1;
        }
    }
    let mut means = Vec::with_capacity(count);
    let mut medians = Vec::with_capacity(count);
    let mut rest = together.as_mut_slice();
    for (&size, &(sum, compensation)) in sizes.iter().zip(&sums) {
        let (group, after) = std::mem::take(&mut rest).split_at_mut(size);
        rest = after;
        if size == 0 {
            means.push(None);
            medians.push(None);
            continue;
        }
        means.push(Some((sum + compensation) / size as f64));
        let middle = (size - 1) / 2;
        let (_, &mut lower, above) = group.select_nth_unstable_by(middle, f64::total_cmp);
        let median = if size % 2 == 1 {
            lower
        } else {
            let upper = above
                .iter()
                .copied()
                .min_by(f64::total_cmp)
                .expect("an even group has a value above");
            if lower == upper {
                lower
            } else {
                0.5 * (upper - lower) + lower
            }
        };
        medians.push(Some(median));
    }
    (means, medians)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `summarise` on a table with text (nulls among them, equal text in distinct views), integer
    /// and date keys and metrics with nulls gives polars' group_by: the same groups and key
    /// values, counts, sums and medians, and means within rounding.
    #[test]
    fn summaries_agree_with_polars_group_by() {
        let rows = 5000usize;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let names = ["web", "app", "a channel longer than twelve bytes", "store"];
        let channel: Vec<Option<String>> = (0..rows)
            .map(|_| match next(9) {
                0 => None,
                k => Some(names[(k % 4) as usize].to_string()),
            })
            .collect();
        let score: Vec<i32> = (0..rows).map(|_| next(3) as i32 + 1).collect();
        let cohort: Vec<i32> = (0..rows).map(|_| 19_000 + 31 * next(4) as i32).collect();
        let value: Vec<Option<f64>> = (0..rows)
            .map(|_| (next(7) != 0).then(|| next(100_000) as f64 / 7.0))
            .collect();
        let orders: Vec<i64> = (0..rows).map(|_| next(4) as i64 + 1).collect();
        let revenue: Vec<i64> = (0..rows).map(|_| next(10_000_000) as i64).collect();
        let table = df! {
            "channel" => channel,
            "score" => score,
            "cohort" => Series::new("cohort".into(), cohort).cast(&DataType::Date).unwrap(),
            "value" => value,
            "orders" => orders,
            "revenue_micros" => revenue,
        }
        .unwrap();
        for by in [
            vec!["channel"],
            vec!["channel", "score"],
            vec!["cohort", "score"],
            vec!["score"],
        ] {
            let by: Vec<String> = by.into_iter().map(String::from).collect();
            let keys: Vec<Expr> = by.iter().map(|c| col(c.as_str())).collect();
            let sort = SortMultipleOptions::default().with_nulls_last(true);
            let expected = table
                .clone()
                .lazy()
                .group_by(keys.clone())
                .agg([
                    len().cast(DataType::Int64).alias("customers"),
                    col("revenue_micros").sum(),
                    col("value").mean().alias("mean_value"),
                    col("value").median().alias("median_value"),
                    col("orders")
                        .gt_eq(lit(2i64))
                        .cast(DataType::Float64)
                        .mean()
                        .alias("repeat_rate"),
                ])
                .sort_by_exprs(keys.clone(), sort.clone())
                .collect()
                .unwrap();
            let got = summarise(&table, &by, &["value".to_string()])
                .unwrap()
                .lazy()
                .sort_by_exprs(keys, sort)
                .collect()
                .unwrap();
            assert_eq!(got.get_column_names(), expected.get_column_names(), "{by:?}");
            assert!(got.height() >= 3, "{by:?}: {got}");
            for name in [
                "channel",
                "score",
                "cohort",
                "customers",
                "revenue_micros",
                "median_value",
                "repeat_rate",
            ] {
                if let (Ok(a), Ok(b)) = (got.column(name), expected.column(name)) {
                    assert!(a.equals_missing(b), "{by:?} {name}: {a:?} vs {b:?}");
                }
            }
            let (means, reference) = (
                got.column("mean_value").unwrap(),
                expected.column("mean_value").unwrap(),
            );
            for (a, b) in means.f64().unwrap().iter().zip(reference.f64().unwrap().iter()) {
                let (a, b) = (a.unwrap(), b.unwrap());
                assert!((a - b).abs() <= 1e-12 * b.abs(), "{by:?}: mean {a} vs {b}");
            }
        }
    }

    /// An even group's median is the midpoint of its middle two values, an odd one's the middle;
    /// a group of nulls has neither mean nor median.
    #[test]
    fn medians_and_means_by_hand() {
        let values = Float64Chunked::new(
            "".into(),
            [Some(4.0), Some(1.0), None, Some(10.0), Some(2.0), Some(3.0), None],
        );
        let (means, medians) = mean_and_median(&values, &[0, 0, 1, 0, 2, 0, 1], 3);
        assert_eq!(means, [Some(4.5), None, Some(2.0)]);
        assert_eq!(medians, [Some(3.5), None, Some(2.0)]);
    }
}
