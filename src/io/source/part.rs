//! An orders source read by another engine (the Spark job, `runner::spark`): its lines arrive in
//! batches held in memory. Each batch is mapped and typed as a scan of the files maps and types
//! it (`LineMapper`), and all the lines of an order shard are folded into orders in one piece
//! (`fold_line_part`), with their accounting and a sample of their customer ids, which the driver
//! adds up and checks as one scan's (`LineTotals`). The rules are the scan's own: this file only
//! feeds them batches from memory instead of files.

use anyhow::{bail, Result};
use polars::prelude::*;

use super::spill::{sample_ids, with_customer_values};
use super::{check_schema, filter_column, lines_plan, LineScan, LineTotals, SourceSchema};
use crate::core::config::{AsOf, PipelineSettings, SourceConfig, SourceFormat};

/// Maps batches of an orders source's raw columns into the lines the fold reads.
pub struct LineMapper {
    source: SourceConfig,
    schema: SourceSchema,
}

impl LineMapper {
    /// The mapping of `source`, its schema checked from its files' metadata.
    pub fn new(source: &SourceConfig) -> Result<LineMapper> {
        if source.format != SourceFormat::Parquet {
            bail!(
                "source `{}` is CSV: the Spark job reads Parquet orders sources; run it on one machine (`pipeline run`, with `--memory-limit` if it is large), or convert it to Parquet",
                source.name
            );
        }
        Ok(LineMapper {
            source: source.clone(),
            schema: check_schema(source)?,
        })
    }

    /// The input's columns the lines are made of: the mapped ones and those the filters read.
    pub fn columns(&self) -> Vec<String> {
        let mut columns: Vec<String> = self
            .source
            .columns
            .mapped()
            .into_iter()
            .map(|(_, physical)| physical.to_string())
            .collect();
        for key in self.source.include.keys().chain(self.source.exclude.keys()) {
            columns.push(filter_column(&self.source, key).to_string());
        }
        let mut seen = std::collections::BTreeSet::new();
        columns.retain(|column| seen.insert(column.clone()));
        columns
    }

    /// One batch of the input's columns (`columns`) as lines. Columns are first cast back to
    /// their types in the files: another reader may widen them (Spark reads unsigned integers
    /// as wider signed ones, and timestamps in its session's zone).
    pub fn map(&self, batch: DataFrame) -> Result<DataFrame> {
        let types = &self.schema.column_types;
        let casts: Vec<Expr> = batch
            .columns()
            .iter()
            .map(|column| match types.get(column.name().as_str()) {
                Some(dtype) if dtype != column.dtype() => col(column.name().clone()).strict_cast(dtype.clone()),
                _ => col(column.name().clone()),
            })
            .collect();
        let input = batch.lazy().select(casts);
        let (lines, _) = lines_plan(&self.source, &self.schema, None, None, Some(input))?;
        Ok(lines.collect()?)
    }
}

/// One order shard's lines folded: their accounting, the usable orders with customer ids and
/// channel names (as spilled by `spill_orders`), and a sample of the customer ids.
pub(crate) struct LinePart {
    pub totals: LineTotals,
    pub orders: DataFrame,
    pub sample: Series,
}

/// Fold `lines` (every line of some orders, as `LineMapper::map` gives them) for a run as of
/// `as_of`, as a scan folds them.
pub(crate) fn fold_line_part(
    source: &SourceConfig,
    settings: &PipelineSettings,
    as_of: AsOf,
    lines: DataFrame,
) -> Result<LinePart> {
    let scan = LineScan::start(source, settings, as_of)?;
    let mut fold = scan.fold(source, rayon::current_num_threads());
    fold.expected_lines = None;
    if lines.height() > 0 {
        fold.add(lines)?;
    }
    let mut totals = LineTotals::default();
    let part = totals.add(source, settings, &scan.schema, fold)?;
    let sample = sample_ids(&part.customer_ids)?;
    let orders = with_customer_values(part.orders, &part.customer_ids, part.channels.as_ref())?;
    Ok(LinePart { totals, orders, sample })
}
