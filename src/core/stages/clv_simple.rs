//! `clv_simple`: historic CLV (net revenue to date) and the textbook formula
//! CLV = AOV × purchases per year × lifespan in years × margin.
//!
//! Lifespan is `lifespan_years` when set, otherwise 1 / annual churn, where annual churn comes from
//! the last 12 monthly lifecycle snapshots compounded (1 − Π crr; with fewer than 12 snapshots the
//! product is annualised by the power 12 / n), capped at `max_lifespan_years`. With
//! `lifecycle = "<stage>"` those CRRs are read from that lifecycle stage's snapshots (which must
//! be monthly) instead of walking the customers again.
//!
//! Sharded: see `impl Sharded` below.

use anyhow::Result;
use polars::prelude::*;
use serde::Deserialize;

use super::lifecycle::LifecycleOptions;
use super::shard::{merge_sums, only_pass, tables_at, Finalized, Partial, Sharded};
use super::{Kind, Margin, OptionInput, Stage, StageInputs, ORDERS};
use crate::core::diagnostic::Diagnostics;
use crate::core::options::TableReader;
use crate::core::period::Granularity;

/// Options of `kind = "clv_simple"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClvSimpleOptions {
    /// Gross margin applied to revenue, or "observed" (needs `cost`). Default 1.0.
    pub margin: Margin,
    /// Expected customer lifespan; default: derived from observed annual churn.
    pub lifespan_years: Option<f64>,
    /// Cap on the derived lifespan. Default 10.
    pub max_lifespan_years: f64,
    /// Tenure below this counts as this, so new customers are not extrapolated wildly. Default 1.
    pub min_tenure_years: f64,
    /// Lifecycle thresholds used for the churn rate. Defaults 90 and 180.
    pub active_days: u32,
    pub churn_days: u32,
    /// A monthly lifecycle stage whose snapshots' CRRs give the churn (its thresholds apply).
    pub lifecycle: Option<String>,
}

impl Default for ClvSimpleOptions {
    fn default() -> Self {
        ClvSimpleOptions {
            margin: Margin::default(),
            lifespan_years: None,
            max_lifespan_years: 10.0,
            min_tenure_years: 1.0,
            active_days: 90,
            churn_days: 180,
            lifecycle: None,
        }
    }
}

impl ClvSimpleOptions {
    fn lifecycle_options(&self) -> LifecycleOptions {
        LifecycleOptions {
            granularity: Granularity::Month,
            active_days: self.active_days,
            churn_days: self.churn_days,
        }
    }

    fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = self.lifecycle_options().check();
        errors.extend(self.margin.check());
        if let Some(years) = self.lifespan_years {
            if !(years > 0.0 && years.is_finite()) {
                errors.push((
                    "lifespan_years",
                    format!("`lifespan_years` must be positive, got {years}"),
                ));
            }
        }
        if !(self.max_lifespan_years > 0.0 && self.max_lifespan_years.is_finite()) {
            errors.push((
                "max_lifespan_years",
                format!("`max_lifespan_years` must be positive, got {}", self.max_lifespan_years),
            ));
        }
        if !(self.min_tenure_years > 0.0 && self.min_tenure_years.is_finite()) {
            errors.push((
                "min_tenure_years",
                format!("`min_tenure_years` must be positive, got {}", self.min_tenure_years),
            ));
        }
        errors
    }
}

pub static KIND: Kind = Kind {
    name: "clv_simple",
    summary: "historic CLV and AOV × purchases per year × lifespan × margin",
    input: ORDERS,
    tables: &[""],
    customer_table: Some(0),
    options: serde_aux::serde_introspection::serde_introspect::<ClvSimpleOptions>,
    parse,
};

fn parse(reader: &TableReader, common: &[&str], diagnostics: &mut Diagnostics) -> Option<Box<dyn Stage>> {
    let options = super::parse_options::<ClvSimpleOptions>(reader, common, diagnostics)?;
    let mut errors = options.check();
    if options.lifecycle.is_some() {
        // With a lifecycle stage the churn is that stage's: these keys would be ignored.
        for key in ["active_days", "churn_days", "lifespan_years"] {
            if reader.keys().iter().any(|k| k == key) {
                errors.push((
                    key,
                    format!(
                        "`{key}` and `lifecycle` exclude each other: the lifecycle stage's thresholds give the churn"
                    ),
                ));
            }
        }
    }
    super::lifecycle::report(reader, errors, diagnostics).then(|| Box::new(options) as Box<dyn Stage>)
}

/// Annual churn from monthly CRRs (the last 12 defined ones), compounded.
pub fn annual_churn(monthly_crr: &[f64]) -> Option<f64> {
    let last: Vec<f64> = monthly_crr.iter().rev().take(12).copied().collect();
    if last.is_empty() {
        return None;
    }
    let retention: f64 = last.iter().product();
    Some(1.0 - retention.powf(12.0 / last.len() as f64))
}

/// The CRRs of a lifecycle stage's snapshots (`frames[0]`), checked to be monthly.
fn snapshot_crr(stage: &str, frames: &[DataFrame]) -> Result<Vec<f64>> {
    let snapshots = frames
        .first()
        .ok_or_else(|| anyhow::anyhow!("lifecycle stage `{stage}` gave no snapshots"))?;
    let starts: Vec<Option<i32>> = snapshots.column("period_start")?.date()?.physical().iter().collect();
    let monthly = starts.windows(2).all(|pair| match (pair[0], pair[1]) {
        (Some(a), Some(b)) => {
            let (a, b) = (crate::core::period::from_days(a), crate::core::period::from_days(b));
            a + chrono::Months::new(1) == b && chrono::Datelike::day(&a) == 1
        }
        _ => false,
    });
    if !monthly {
        anyhow::bail!(
            "`lifecycle = \"{stage}\"`: that stage's snapshots are not monthly; give it `granularity = \"month\"`"
        );
    }
    Ok(snapshots.column("crr")?.f64()?.iter().flatten().collect())
}

impl Stage for ClvSimpleOptions {
    /// Only a lifespan derived by walking the customers reads them.
    fn reads_customer_periods(&self) -> bool {
        self.lifespan_years.is_none() && self.lifecycle.is_none()
    }

    fn option_inputs(&self) -> Vec<OptionInput> {
        self.lifecycle
            .iter()
            .map(|stage| OptionInput {
                key: "lifecycle",
                stage: stage.clone(),
                kinds: &["lifecycle"],
            })
            .collect()
    }

    fn source_columns(&self) -> Vec<(&'static str, &'static str)> {
        self.margin.source_columns()
    }
}

impl ClvSimpleOptions {
    /// Whether the churn comes from walking the customers (no `lifespan_years`, no lifecycle
    /// stage).
    fn walks(&self) -> bool {
        self.lifespan_years.is_none() && self.lifecycle.is_none()
    }
}

/// Sharded: the globals are the lifespan (from the merged lifecycle tallies of the customers, a
/// lifecycle stage's snapshots, or the option) and the margin (observed: from the customers'
/// revenue and cost, integer sums); the table is per customer.
impl Sharded for ClvSimpleOptions {
    fn partial(&self, inputs: &StageInputs, _earlier: &[Partial]) -> Result<Partial> {
        let facts = &inputs.shared()?.customer_facts;
        let total = |name: &str| -> Result<i64> {
            Ok(match facts.column(name) {
                Ok(column) => column.i64()?.sum().unwrap_or(0),
                Err(_) => 0,
            })
        };
        let mut partial = vec![df! {
            "key" => [0i32],
            "revenue_micros" => [total("revenue_micros")?],
            "cost_micros" => [total("cost_micros")?],
        }?];
        if self.walks() {
            partial.extend(self.lifecycle_options().partial(inputs, &[])?);
        }
        Ok(partial)
    }

    fn merge(&self, pass: usize, parts: Vec<Partial>) -> Result<Partial> {
        let mut merged = vec![merge_sums(tables_at(&parts, 0)?, &["key"])?];
        if self.walks() {
            let tallies = parts
                .into_iter()
                .map(|part| part.into_iter().skip(1).collect())
                .collect();
            merged.extend(self.lifecycle_options().merge(pass, tallies)?);
        }
        Ok(merged)
    }

    fn finalize(&self, merged: Vec<Partial>, whole: &StageInputs, as_of: chrono::NaiveDate) -> Result<Finalized> {
        let mut merged = only_pass(merged)?;
        let sums = merged.remove(0);
        let margin = self.margin.of_totals(&sums)?;
        let lifespan = match self.lifespan_years {
            Some(years) => years,
            None => {
                let crr: Vec<f64> = match &self.lifecycle {
                    Some(name) => {
                        let (_, _, frames) = whole
                            .upstream
                            .iter()
                            .find(|(stage, _, _)| stage == name)
                            .ok_or_else(|| anyhow::anyhow!("lifecycle stage `{name}` did not run"))?;
                        snapshot_crr(name, frames)?
                    }
                    None => {
                        let finalized = self.lifecycle_options().finalize(vec![merged], whole, as_of)?;
                        let snapshots = finalized.tables[0]
                            .as_ref()
                            .ok_or_else(|| anyhow::anyhow!("lifecycle snapshots missing"))?;
                        snapshots.column("crr")?.f64()?.iter().flatten().collect()
                    }
                };
                match annual_churn(&crr) {
                    Some(churn) if churn > 0.0 => (1.0 / churn).min(self.max_lifespan_years),
                    _ => self.max_lifespan_years,
                }
            }
        };
        Ok(Finalized {
            tables: vec![None],
            globals: vec![df! { "lifespan_years" => [lifespan], "margin" => [margin] }?],
        })
    }

    fn customer_rows(&self, inputs: &StageInputs, globals: &Partial) -> Result<Vec<Option<DataFrame>>> {
        let shared = inputs.shared()?;
        let global = |name: &str| -> Result<f64> {
            globals[0]
                .column(name)?
                .f64()?
                .get(0)
                .ok_or_else(|| anyhow::anyhow!("no {name}"))
        };
        let (lifespan, margin) = (global("lifespan_years")?, global("margin")?);
        let tenure_years = (col("T").cast(DataType::Float64) / lit(365.25)).clip_min(lit(self.min_tenure_years));
        let table = shared
            .customer_facts
            .clone()
            .lazy()
            .select([
                col("customer_id"),
                col("revenue").alias("historic_clv"),
                col("aov"),
                (col("orders").cast(DataType::Float64) / tenure_years).alias("purchases_per_year"),
                lit(lifespan).alias("lifespan_years"),
                lit(margin).alias("margin"),
            ])
            .with_column(
                (col("aov") * col("purchases_per_year") * col("lifespan_years") * col("margin")).alias("simple_clv"),
            )
            .collect()?;
        Ok(vec![Some(table)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stages::shard::tests::{assert_shards_merge, random_orders, shared_of};

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Any split merges to the whole's lifespan (churn from the customers' walk) and margin,
        /// and the shards' rows are the whole's.
        #[test]
        fn shards_merge_to_the_whole(orders in random_orders(), shards in 1usize..6, observed: bool, fixed_lifespan: bool) {
            let stage = ClvSimpleOptions {
                margin: if observed { Margin::Observed } else { Margin::Fixed(0.3) },
                lifespan_years: fixed_lifespan.then_some(2.5),
                ..ClvSimpleOptions::default()
            };
            assert_shards_merge(&stage, &shared_of(&orders, 60), shards);
        }
    }

    #[test]
    fn annual_churn_compounds_monthly_retention() {
        let churn = annual_churn(&[0.9; 12]).unwrap();
        assert!((churn - (1.0 - 0.9f64.powi(12))).abs() < 1e-12);
        // Only the last 12 count.
        assert_eq!(annual_churn(&[[0.1].as_slice(), &[0.9; 12]].concat()), Some(churn));
        // Six months of 0.95 annualise to twelve.
        assert!((annual_churn(&[0.95; 6]).unwrap() - (1.0 - 0.95f64.powi(12))).abs() < 1e-12);
        assert_eq!(annual_churn(&[]), None);
    }
}
