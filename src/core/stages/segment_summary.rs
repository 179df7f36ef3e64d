//! `segment_summary`: per-customer outputs of other stages summarised by any per-customer
//! dimension (rfm segment, lifecycle stage, acquisition channel, cohort).
//!
//! The base table is the source's customers (customer_id, revenue, orders, acquisition_channel,
//! cohort = month of first purchase); each input stage's per-customer table is joined on
//! customer_id (a column already present is kept from the earlier table).

use anyhow::{bail, Result};
use polars::prelude::*;
use serde::Deserialize;

use super::shard::{merge_sums, tables_at, Finalized, Partial, Sharded};
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
}

impl SegmentSummaryOptions {
    /// The customers of the inputs with their per-customer columns, and the metrics to report.
    fn customer_table(&self, inputs: &StageInputs) -> Result<(DataFrame, Vec<String>)> {
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
            let columns = super::columns_in_customer_order(&table, upstream, &added)?;
            table.hstack_mut(&columns)?;
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
        Ok((table, metrics))
    }

    /// The output columns from the per-group summary: shares, money in currency, sorted by `by`.
    fn output(&self, summary: DataFrame) -> Result<DataFrame> {
        let has_cost = summary.column("cost_micros").is_ok();
        let has_nps = summary.column("respondents").is_ok();
        let metrics: Vec<String> = summary
            .get_column_names()
            .iter()
            .filter_map(|name| name.strip_prefix("mean_").map(str::to_string))
            .collect();
        let total: i64 = summary.column("customers")?.i64()?.sum().unwrap_or(0);
        let mut summary = summary.lazy().with_columns([
            (col("customers").cast(DataType::Float64) / lit(total.max(1) as f64)).alias("share"),
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
        if has_nps {
            output.extend([col("respondents"), col("nps")]);
        }
        Ok(summary
            .sort_by_exprs(by, SortMultipleOptions::default().with_nulls_last(true))
            .select(output)
            .collect()?)
    }
}

/// Sharded in two passes: pass 0 adds up counts and sums per group and a histogram of each
/// metric's values (`bucket_of`); pass 1 collects the values in the buckets where each group's
/// median falls, from which finalize selects it exactly.
impl Sharded for SegmentSummaryOptions {
    fn passes(&self) -> usize {
        2
    }

    fn partial(&self, inputs: &StageInputs, earlier: &[Partial]) -> Result<Partial> {
        let clock = std::time::Instant::now();
        let (table, metrics) = self.customer_table(inputs)?;
        tracing::debug!(
            "segment_summary: customer table in {:.3} s",
            clock.elapsed().as_secs_f64()
        );
        let partial = match earlier.first() {
            None => group_counts(&table, &self.by, &metrics)?.to_vec(),
            Some(counts) => vec![median_candidates(&table, &self.by, &metrics, &counts[1])?],
        };
        tracing::debug!(
            "segment_summary: pass {} partial at {:.3} s",
            earlier.len(),
            clock.elapsed().as_secs_f64()
        );
        Ok(partial)
    }

    fn merge(&self, pass: usize, parts: Vec<Partial>) -> Result<Partial> {
        let by: Vec<&str> = self.by.iter().map(String::as_str).collect();
        let with = |more: &[&'static str]| -> Vec<&str> { by.iter().copied().chain(more.iter().copied()).collect() };
        match pass {
            0 => Ok(vec![
                merge_sums(tables_at(&parts, 0)?, &by)?,
                merge_sums(tables_at(&parts, 1)?, &with(&["metric", "bucket"]))?,
            ]),
            // The candidates' order does not matter: finalize sorts each bucket's values.
            _ if parts.len() == 1 => Ok(parts.into_iter().next().expect("one part")),
            _ => {
                let frames: Vec<LazyFrame> = tables_at(&parts, 0)?.into_iter().map(DataFrame::lazy).collect();
                let keys: Vec<Expr> = with(&["metric", "bucket", "value"]).into_iter().map(col).collect();
                let sorted = concat(frames, UnionArgs::default())?
                    .sort_by_exprs(keys, SortMultipleOptions::default().with_nulls_last(true))
                    .collect()?;
                Ok(vec![sorted])
            }
        }
    }

    fn finalize(&self, merged: Vec<Partial>, _whole: &StageInputs, _as_of: chrono::NaiveDate) -> Result<Finalized> {
        let (counts, candidates) = (&merged[0], &merged[1][0]);
        let summary = summary_of(&counts[0], &counts[1], candidates, &self.by)?;
        Ok(Finalized::tables(vec![self.output(summary)?]))
    }
}

/// The whole summary of one table (one shard holding every customer): both passes and the
/// finalize step. Per group of equal `by` values (nulls a value of their own), sorted by them:
/// the `by` values, customers, revenue_micros (sum), mean_<m> and median_<m> of each metric (its
/// non-null values as floats; median the midpoint of the middle two, as polars'), and
/// repeat_rate (the share of non-null `orders` of 2 or more).
#[cfg(test)]
fn summarise(table: &DataFrame, by: &[String], metrics: &[String]) -> Result<DataFrame> {
    let [groups, buckets] = group_counts(table, by, metrics)?;
    let keys: Vec<&str> = by.iter().map(String::as_str).collect();
    let groups = crate::core::stages::shard::merge_sums(vec![groups], &keys)?;
    let candidates = median_candidates(table, by, metrics, &buckets)?;
    summary_of(&groups, &buckets, &candidates, by)
}

/// A metric value's bucket in pass 0's histograms: the top 20 bits of an order-preserving
/// transform of its bits (sign flipped for positives, all bits for negatives), so buckets are
/// ranges of values in `f64::total_cmp` order, 256 per binade.
fn bucket_of(value: f64) -> i64 {
    (super::shard::order_key(value) >> 44) as i64
}

/// A group's key values as one text, to match groups across tables of the same columns.
fn key_text(frame: &DataFrame, by: &[String], row: usize) -> Result<String> {
    let mut text = String::new();
    for name in by {
        // The value's text (whatever way the column holds it), null apart from every text.
        match frame.column(name.as_str())?.get(row)? {
            AnyValue::Null => text.push('\u{0}'),
            value => {
                text.push('=');
                text.push_str(&value.str_value());
            }
        }
        text.push('\u{1f}');
    }
    Ok(text)
}

/// Pass 0 over one table: `[groups, buckets]`. `groups`: the `by` values, customers,
/// revenue_micros, [cost_micros,] repeat (customers with ≥ 2 orders), known (customers with
/// orders), [respondents, net (promoters − detractors),] and per metric `sum_<m>` (a
/// compensated sum of its non-null values) and `count_<m>`; `buckets`: the `by` values, metric,
/// bucket (`bucket_of`), values (how many fall in it).
///
/// Plain loops over group codes rather than polars' group_by: text keys are hashed row by row.
fn group_counts(table: &DataFrame, by: &[String], metrics: &[String]) -> Result<[DataFrame; 2]> {
    use rayon::prelude::*;
    let groups = Groups::of(table, by)?;
    let count = groups.first_rows.len();
    let first_rows = IdxCa::from_vec("".into(), groups.first_rows.clone());
    let keys = table.select(by.iter().map(String::as_str))?.take(&first_rows)?;
    let mut columns: Vec<Column> = keys.columns().to_vec();
    let mut customers = vec![0i64; count];
    let mut revenue = vec![0i64; count];
    let (mut repeat, mut known) = (vec![0i64; count], vec![0i64; count]);
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
                repeat[group] += i64::from(orders >= 2);
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
                    repeat[group] += i64::from(orders >= 2);
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
    columns.push(crate::core::columns::owned_column("repeat", repeat));
    columns.push(crate::core::columns::owned_column("known", known));
    if let Ok(scores) = table.column("last_score") {
        let scores = scores.cast(&DataType::Int32)?;
        let (mut respondents, mut net) = (vec![0i64; count], vec![0i64; count]);
        for (&group, score) in groups.of_row.iter().zip(scores.i32()?.iter()) {
            if let Some(score) = score {
                respondents[group as usize] += 1;
                net[group as usize] += i64::from(score >= 9) - i64::from(score <= 6);
            }
        }
        columns.push(crate::core::columns::owned_column("respondents", respondents));
        columns.push(crate::core::columns::owned_column("net", net));
    }
    // Per metric: compensated sums (Neumaier), counts, and the histogram.
    type MetricCounts = (Vec<f64>, Vec<i64>, Vec<(u32, i64, i64)>);
    let counted: Vec<MetricCounts> = metrics
        .par_iter()
        .map(|metric| -> Result<MetricCounts> {
            let values = table.column(metric)?.cast(&DataType::Float64)?;
            let values = values.f64()?;
            let mut sums = vec![(0.0f64, 0.0f64); count];
            let mut sizes = vec![0i64; count];
            // (group, bucket) of each value as one sortable key: buckets have 20 bits.
            let mut keyed: Vec<u64> = Vec::with_capacity(values.len() - values.null_count());
            for (&group, value) in groups.of_row.iter().zip(values.iter()) {
                let Some(value) = value else { continue };
                sizes[group as usize] += 1;
                let (sum, compensation) = &mut sums[group as usize];
                let total = *sum + value;
                *compensation += if sum.abs() >= value.abs() {
                    (*sum - total) + value
                } else {
                    (value - total) + *sum
                };
                *sum = total;
                keyed.push((u64::from(group) << 20) | bucket_of(value) as u64);
            }
            let histogram = histogram_of(keyed, count);
            Ok((
                sums.iter().map(|(sum, compensation)| sum + compensation).collect(),
                sizes,
                histogram,
            ))
        })
        .collect::<Result<_>>()?;
    let (mut bucket_rows, mut bucket_metric, mut bucket, mut bucket_values) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (metric, (sums, sizes, histogram)) in metrics.iter().zip(counted) {
        columns.push(Series::new(format!("sum_{metric}").into(), sums).into_column());
        columns.push(crate::core::columns::owned_column(&format!("count_{metric}"), sizes));
        for (group, b, n) in histogram {
            bucket_rows.push(group as IdxSize);
            bucket_metric.push(metric.clone());
            bucket.push(b);
            bucket_values.push(n);
        }
    }
    let mut buckets = keys.take(&IdxCa::from_vec("".into(), bucket_rows))?;
    buckets.with_column(Column::new("metric".into(), bucket_metric))?;
    buckets.with_column(Column::new("bucket".into(), bucket))?;
    buckets.with_column(Column::new("values".into(), bucket_values))?;
    Ok([DataFrame::new(count, columns)?, buckets])
}

/// (group, bucket, values) of keys `(group << 20) | bucket`, ascending. The buckets a metric
/// spans are usually a few thousand: counted in an array per group over that span, no sort;
/// sorted otherwise.
fn histogram_of(mut keyed: Vec<u64>, groups: usize) -> Vec<(u32, i64, i64)> {
    let bucket = |key: u64| key & 0xF_FFFF;
    let (low, high) = keyed.iter().fold((u64::MAX, 0), |(lo, hi), &key| {
        (lo.min(bucket(key)), hi.max(bucket(key)))
    });
    let span = high.saturating_sub(low) as usize + 1;
    if !keyed.is_empty() && span * groups <= 1 << 22 {
        let mut counts = vec![0i64; span * groups];
        for &key in &keyed {
            counts[(key >> 20) as usize * span + (bucket(key) - low) as usize] += 1;
        }
        return counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(at, &n)| ((at / span) as u32, (low as usize + at % span) as i64, n))
            .collect();
    }
    radsort::sort(&mut keyed);
    keyed
        .chunk_by(|a, b| a == b)
        .map(|run| ((run[0] >> 20) as u32, bucket(run[0]) as i64, run.len() as i64))
        .collect()
}

/// Where each group's median falls, from the merged histograms: per (group key, metric), the
/// values counted and the (bucket, position within it) of the lower and upper middle value
/// (the same one when the count is odd).
type Targets = std::collections::HashMap<(String, String), (i64, [(i64, i64); 2])>;

fn median_targets(buckets: &DataFrame, by: &[String]) -> Result<Targets> {
    // The rows of each (group, metric): where they start and how many (a polars group-by; the
    // group's text is then made once per run, not once per bucket).
    let mut keys: Vec<Expr> = by.iter().map(|name| col(name.as_str())).collect();
    keys.push(col("metric"));
    let runs = buckets
        .clone()
        .lazy()
        .with_row_index("row", None)
        .group_by_stable(keys)
        .agg([col("row").first().alias("start"), len().alias("rows")])
        .collect()?;
    let starts = runs.column("start")?.cast(&DataType::Int64)?;
    let lengths = runs.column("rows")?.cast(&DataType::Int64)?;
    let metric = buckets.column("metric")?.str()?;
    let bucket: Vec<i64> = buckets.column("bucket")?.i64()?.into_no_null_iter().collect();
    let values: Vec<i64> = buckets.column("values")?.i64()?.into_no_null_iter().collect();
    let mut targets = Targets::new();
    for (start, length) in starts
        .i64()?
        .into_no_null_iter()
        .zip(lengths.i64()?.into_no_null_iter())
    {
        let (start, end) = (start as usize, (start + length) as usize);
        let mut run: Vec<(i64, i64)> = (start..end).map(|row| (bucket[row], values[row])).collect();
        run.sort_unstable();
        let n: i64 = run.iter().map(|(_, count)| count).sum();
        let find = |position: i64| -> (i64, i64) {
            let mut before = 0;
            for &(bucket, count) in &run {
                if position < before + count {
                    return (bucket, position - before);
                }
                before += count;
            }
            (run.last().map_or(0, |r| r.0), 0)
        };
        let key = (
            key_text(buckets, by, start)?,
            metric.get(start).unwrap_or_default().to_string(),
        );
        targets.insert(key, (n, [find((n - 1) / 2), find(n / 2)]));
    }
    Ok(targets)
}

/// Pass 1 over one table: its metric values in the buckets where their group's median falls
/// (by `buckets`, the merged histograms): the `by` values, metric, bucket, value.
fn median_candidates(table: &DataFrame, by: &[String], metrics: &[String], buckets: &DataFrame) -> Result<DataFrame> {
    let targets = median_targets(buckets, by)?;
    let groups = Groups::of(table, by)?;
    let (mut rows, mut metric_of, mut bucket_of_row, mut values) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for metric in metrics {
        // Each group's target buckets for this metric.
        let wanted: Vec<Option<[i64; 2]>> = groups
            .first_rows
            .iter()
            .map(|&row| -> Result<_> {
                let key = (key_text(table, by, row as usize)?, metric.clone());
                Ok(targets.get(&key).map(|(_, t)| [t[0].0, t[1].0]))
            })
            .collect::<Result<_>>()?;
        let column = table.column(metric)?.cast(&DataType::Float64)?;
        for (row, (&group, value)) in groups.of_row.iter().zip(column.f64()?.iter()).enumerate() {
            let (Some(value), Some(wanted)) = (value, wanted[group as usize]) else {
                continue;
            };
            let bucket = bucket_of(value);
            if wanted.contains(&bucket) {
                rows.push(row as IdxSize);
                metric_of.push(metric.clone());
                bucket_of_row.push(bucket);
                values.push(value);
            }
        }
    }
    let mut candidates = table
        .select(by.iter().map(String::as_str))?
        .take(&IdxCa::from_vec("".into(), rows))?;
    candidates.with_column(Column::new("metric".into(), metric_of))?;
    candidates.with_column(Column::new("bucket".into(), bucket_of_row))?;
    candidates.with_column(Column::new("value".into(), values))?;
    Ok(candidates)
}

/// The per-group summary from the merged passes: the `by` values, customers, revenue_micros,
/// [cost_micros,] mean_<m> and median_<m> per metric, repeat_rate[, respondents, nps], sorted
/// by the `by` values (as the merge sorts).
fn summary_of(groups: &DataFrame, buckets: &DataFrame, candidates: &DataFrame, by: &[String]) -> Result<DataFrame> {
    let targets = median_targets(buckets, by)?;
    // Candidates per (group key, metric, bucket), ascending.
    let mut values: std::collections::HashMap<(String, String, i64), Vec<f64>> = Default::default();
    let (metric, bucket, value) = (
        candidates.column("metric")?.str()?,
        candidates.column("bucket")?.i64()?,
        candidates.column("value")?.f64()?,
    );
    for row in 0..candidates.height() {
        let key = (
            key_text(candidates, by, row)?,
            metric.get(row).unwrap_or_default().to_string(),
            bucket.get(row).unwrap_or(0),
        );
        values.entry(key).or_default().push(value.get(row).unwrap_or(f64::NAN));
    }
    values
        .values_mut()
        .for_each(|list| list.sort_unstable_by(f64::total_cmp));
    let metrics: Vec<String> = groups
        .get_column_names()
        .iter()
        .filter_map(|name| name.strip_prefix("sum_").map(str::to_string))
        .collect();
    let mut columns: Vec<Column> = by
        .iter()
        .map(|name| Ok(groups.column(name.as_str())?.clone()))
        .collect::<Result<_>>()?;
    for name in ["customers", "revenue_micros", "cost_micros"] {
        if let Ok(column) = groups.column(name) {
            columns.push(column.clone());
        }
    }
    let keys: Vec<String> = (0..groups.height())
        .map(|row| key_text(groups, by, row))
        .collect::<Result<_>>()?;
    for metric in &metrics {
        let sums = groups.column(&format!("sum_{metric}"))?.f64()?;
        let counts = groups.column(&format!("count_{metric}"))?.i64()?;
        let (mut means, mut medians) = (Vec::new(), Vec::new());
        for (row, key) in keys.iter().enumerate() {
            let n = counts.get(row).unwrap_or(0);
            means.push((n > 0).then(|| sums.get(row).unwrap_or(0.0) / n as f64));
            let median = targets.get(&(key.clone(), metric.clone())).and_then(|&(n, middle)| {
                let at = |(bucket, offset): (i64, i64)| {
                    values
                        .get(&(key.clone(), metric.clone(), bucket))
                        .and_then(|list| list.get(offset as usize).copied())
                };
                let lower = at(middle[0])?;
                if n % 2 == 1 {
                    return Some(lower);
                }
                let upper = at(middle[1])?;
                Some(if lower == upper {
                    lower
                } else {
                    0.5 * (upper - lower) + lower
                })
            });
            medians.push(median);
        }
        columns.push(Series::new(format!("mean_{metric}").into(), means).into_column());
        columns.push(Series::new(format!("median_{metric}").into(), medians).into_column());
    }
    let ratio = |part: &str, whole: &str, scale: f64| -> Result<Vec<Option<f64>>> {
        let (part, whole) = (groups.column(part)?.i64()?, groups.column(whole)?.i64()?);
        Ok(part
            .iter()
            .zip(whole.iter())
            .map(|(p, w)| match (p, w) {
                (Some(p), Some(w)) if w > 0 => Some(scale * p as f64 / w as f64),
                _ => None,
            })
            .collect())
    };
    columns.push(Series::new("repeat_rate".into(), ratio("repeat", "known", 1.0)?).into_column());
    if groups.column("respondents").is_ok() {
        columns.push(groups.column("respondents")?.clone());
        columns.push(Series::new("nps".into(), ratio("net", "respondents", 100.0)?).into_column());
    }
    Ok(DataFrame::new(groups.height(), columns)?)
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Any split of the customers merges, in both passes, to the whole's counts, histograms
        /// and median candidates, and to the same summary (medians exact).
        #[test]
        fn shards_merge_to_the_whole(orders in crate::core::stages::shard::tests::random_orders(), shards in 1usize..6, by_cohort: bool) {
            let stage = SegmentSummaryOptions {
                by: vec![if by_cohort { "cohort" } else { "acquisition_channel" }.to_string()],
                metrics: vec!["orders".to_string()],
            };
            let shared = crate::core::stages::shard::tests::shared_of(&orders, 60);
            crate::core::stages::shard::tests::assert_shards_merge(&stage, &shared, shards);
        }
    }

    /// An even group's median is the midpoint of its middle two values, an odd one's the middle;
    /// a group of nulls has neither mean nor median.
    #[test]
    fn medians_and_means_by_hand() {
        let table = df! {
            "g" => [0i32, 0, 1, 0, 2, 0, 1],
            "value" => [Some(4.0), Some(1.0), None, Some(10.0), Some(2.0), Some(3.0), None],
            "orders" => [1i64; 7],
            "revenue_micros" => [0i64; 7],
        }
        .unwrap();
        let summary = summarise(&table, &["g".to_string()], &["value".to_string()]).unwrap();
        let column = |name: &str| -> Vec<Option<f64>> { summary.column(name).unwrap().f64().unwrap().iter().collect() };
        assert_eq!(column("mean_value"), [Some(4.5), None, Some(2.0)]);
        assert_eq!(column("median_value"), [Some(3.5), None, Some(2.0)]);
    }
}
