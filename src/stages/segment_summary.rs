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
use crate::config::{reader::TableReader, Diagnostics};
use crate::money::from_micros;

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
            .filter(|n| n.as_str() != "revenue_micros")
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
        let total_customers = table.height().max(1) as f64;
        let mut aggs = vec![
            len().cast(DataType::Int64).alias("customers"),
            col("revenue_micros").sum().alias("revenue_micros"),
        ];
        for metric in &metrics {
            let value = || col(metric.as_str()).cast(DataType::Float64);
            aggs.push(value().mean().alias(format!("mean_{metric}")));
            aggs.push(value().median().alias(format!("median_{metric}")));
        }
        aggs.push(
            col("orders")
                .gt_eq(lit(2i64))
                .cast(DataType::Float64)
                .mean()
                .alias("repeat_rate"),
        );
        let keys = group_keys(&mut table, &self.by, &mut aggs)?;
        let by: Vec<Expr> = self.by.iter().map(|c| col(c.as_str())).collect();
        let mut output: Vec<Expr> = by.clone();
        output.extend([col("customers"), col("share"), col("revenue"), col("revenue_share")]);
        for metric in &metrics {
            output.push(col(format!("mean_{metric}").as_str()));
            output.push(col(format!("median_{metric}").as_str()));
        }
        output.push(col("repeat_rate"));
        let summary = table
            .lazy()
            .group_by(keys)
            .agg(aggs)
            .with_columns([
                (col("customers").cast(DataType::Float64) / lit(total_customers)).alias("share"),
                from_micros(col("revenue_micros")).alias("revenue"),
                (col("revenue_micros").cast(DataType::Float64) / col("revenue_micros").sum().cast(DataType::Float64))
                    .alias("revenue_share"),
            ])
            .sort_by_exprs(by, SortMultipleOptions::default().with_nulls_last(true))
            .select(output)
            .collect()?;
        Ok(vec![summary])
    }
}

/// The keys to group `table` by for the dimensions `by`. Text dimensions are grouped by codes
/// found here (a hash lookup per row, in a column added to `table`), each group's text taken
/// back by an aggregation (its first value) added to `aggs`: polars row-encodes text keys (~5M
/// rows of two keys at 50M lines: ~200 MB of fresh memory, a third of the stage's time).
fn group_keys(table: &mut DataFrame, by: &[String], aggs: &mut Vec<Expr>) -> Result<Vec<Expr>> {
    let mut keys: Vec<Expr> = Vec::new();
    for name in by {
        let column = table.column(name)?;
        if column.dtype() == &DataType::String {
            let mut code = format!("__code_{name}");
            while table.column(&code).is_ok() {
                code.push('_');
            }
            let codes = text_codes(column.str()?);
            table.with_column(crate::owned_column(&code, codes))?;
            keys.push(col(code.as_str()));
            aggs.push(col(name.as_str()).first());
        } else {
            keys.push(col(name.as_str()));
        }
    }
    Ok(keys)
}

/// Each value's code: its rank in order of first appearance, `u32::MAX` for null.
fn text_codes(values: &StringChunked) -> Vec<u32> {
    let mut seen: hashbrown::HashMap<&str, u32, foldhash::fast::FixedState> = Default::default();
    values
        .iter()
        .map(|value| match value {
            None => u32::MAX,
            Some(text) => {
                let next = seen.len() as u32;
                *seen.entry(text).or_insert(next)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grouping by codes of text keys (nulls included, beside a numeric key) gives the groups,
    /// key values and aggregates of grouping by the text itself.
    #[test]
    fn text_keys_grouped_by_codes_as_by_text() {
        let mut table = df! {
            "channel" => [Some("web"), None, Some("app"), Some("web"), None, Some("app"), Some("web")],
            "stage" => ["new", "new", "active", "new", "lapsed", "active", "lapsed"],
            "cohort" => [1i32, 1, 2, 1, 2, 2, 1],
            "value" => [1.5f64, 2.0, 3.25, 4.0, 5.5, 6.0, 7.75],
            // An upstream column with the name a code column would take: left alone.
            "__code_channel" => [9u32; 7],
        }
        .unwrap();
        let by: Vec<String> = ["channel", "stage", "cohort"].map(String::from).to_vec();
        let aggs = || {
            vec![
                len().alias("customers"),
                col("value").mean().alias("mean"),
                col("value").median().alias("median"),
            ]
        };
        let names: Vec<Expr> = by.iter().map(|c| col(c.as_str())).collect();
        let mut output = names.clone();
        output.extend([col("customers"), col("mean"), col("median")]);
        let sort = SortMultipleOptions::default().with_nulls_last(true);
        let expected = table
            .clone()
            .lazy()
            .group_by(names.clone())
            .agg(aggs())
            .sort_by_exprs(names.clone(), sort.clone())
            .select(output.clone())
            .collect()
            .unwrap();
        let mut with_codes = aggs();
        let keys = group_keys(&mut table, &by, &mut with_codes).unwrap();
        assert_eq!(table.column("__code_channel").unwrap().u32().unwrap().get(0), Some(9));
        let got = table
            .lazy()
            .group_by(keys)
            .agg(with_codes)
            .sort_by_exprs(names, sort)
            .select(output)
            .collect()
            .unwrap();
        assert_eq!(got.height(), 5);
        assert!(got.equals_missing(&expected), "{got}\n{expected}");
    }
}
