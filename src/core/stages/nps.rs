//! `nps`: Net Promoter Score from a survey source's answers up to as_of.
//!
//! Promoters score 9–10, passives 7–8, detractors 0–6; NPS = 100 × (promoters − detractors) /
//! responses. `<stage>_periods` is dense from the first answer's period to the as_of period and
//! counts every answer, also from people who never purchased. `<stage>_customers` has one row
//! per respondent: their answers, the last score (the latest answer; of answers at the same
//! instant, the lower score) and its category.
//!
//! Sharded: answers go to the shard of their customer_id; a shard's partial is its answer
//! counts per period, which add up; respondents are per-customer rows.

use anyhow::{Context, Result};
use polars::prelude::*;
use serde::Deserialize;

use super::shard::{merge_sums, tables_at, Finalized, Partial, Sharded};
use super::{InputKind, Kind, Stage, StageInputs};
use crate::core::input::SourceKind;
use crate::core::period::{to_days, Granularity};

/// Options of `kind = "nps"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NpsOptions {
    /// Period of `<stage>_periods`. Default month.
    pub granularity: Granularity,
}

pub static KIND: Kind = Kind {
    name: "nps",
    summary: "Net Promoter Score by period, and each respondent's last score and category",
    input: InputKind::Sources(&[SourceKind::Orders, SourceKind::Survey]),
    tables: &["periods", "customers"],
    customer_table: Some(1),
    options: serde_aux::serde_introspection::serde_introspect::<NpsOptions>,
    parse: |reader, common, diagnostics| {
        super::parse_options::<NpsOptions>(reader, common, diagnostics)
            .map(|options| Box::new(options) as Box<dyn Stage>)
    },
};

impl Stage for NpsOptions {
    fn reads_customer_periods(&self) -> bool {
        false
    }
}

/// The survey source's answers among the inputs.
fn answers<'a>(inputs: &'a StageInputs) -> Result<&'a DataFrame> {
    inputs
        .sources
        .iter()
        .find_map(|(_, data)| Some(&data.survey()?.answers))
        .ok_or_else(|| anyhow::anyhow!("this stage needs a survey source"))
}

/// Sharded by the respondents' ids (answers of people who never purchased included): a shard's
/// partial is its answer counts per period index; they add up; finalize lays out the periods.
/// Respondents are per-customer rows.
impl Sharded for NpsOptions {
    fn partial(&self, inputs: &StageInputs, _earlier: &[Partial]) -> Result<Partial> {
        let index = self.granularity.index_expr(col("responded_on"));
        let counts = answers(inputs)?
            .clone()
            .lazy()
            .group_by([index.alias("index")])
            .agg([
                len().cast(DataType::Int64).alias("responses"),
                category_count(col("score").gt_eq(lit(9))).alias("promoters"),
                category_count(col("score").gt_eq(lit(7)).and(col("score").lt_eq(lit(8)))).alias("passives"),
                category_count(col("score").lt_eq(lit(6))).alias("detractors"),
            ])
            .collect()?;
        Ok(vec![counts])
    }

    fn merge(&self, _pass: usize, parts: Vec<Partial>) -> Result<Partial> {
        Ok(vec![merge_sums(tables_at(&parts, 0)?, &["index"])?])
    }

    fn finalize(&self, merged: Vec<Partial>, _whole: &StageInputs, as_of: chrono::NaiveDate) -> Result<Finalized> {
        let merged = super::shard::only_pass(merged)?;
        let counts = merged.into_iter().next().context("no answer counts")?;
        anyhow::ensure!(
            counts.height() > 0,
            "the survey source has no usable answer up to as_of {as_of}"
        );
        let last = self.granularity.index_of(as_of);
        let first = counts.column("index")?.i32()?.min().unwrap_or(last).min(last);
        let dense =
            DataFrame::new_infer_height(vec![Column::new("index".into(), (first..=last).collect::<Vec<i32>>())])?;
        let starts: Vec<i32> = (first..=last).map(|i| to_days(self.granularity.start_of(i))).collect();
        let periods = dense
            .lazy()
            .join(
                counts.lazy(),
                [col("index")],
                [col("index")],
                JoinArgs::new(JoinType::Left),
            )
            .with_columns([
                lit(Series::new("period_start".into(), starts)).cast(DataType::Date),
                col("responses").fill_null(lit(0i64)),
                col("promoters").fill_null(lit(0i64)),
                col("passives").fill_null(lit(0i64)),
                col("detractors").fill_null(lit(0i64)),
            ])
            .with_column(
                when(col("responses").gt(lit(0i64)))
                    .then(
                        lit(100.0) * (col("promoters") - col("detractors")).cast(DataType::Float64)
                            / col("responses").cast(DataType::Float64),
                    )
                    .otherwise(lit(NULL).cast(DataType::Float64))
                    .alias("nps"),
            )
            .select([
                col("period_start"),
                col("responses"),
                col("promoters"),
                col("passives"),
                col("detractors"),
                col("nps"),
            ])
            .collect()?;
        Ok(Finalized {
            tables: vec![Some(periods), None],
            globals: Vec::new(),
        })
    }

    fn customer_rows(&self, inputs: &StageInputs, _globals: &Partial) -> Result<Vec<Option<DataFrame>>> {
        let id_type = inputs.shared()?.customer_facts.column("customer_id")?.dtype().clone();
        Ok(vec![None, Some(respondents(answers(inputs)?, &id_type)?)])
    }
}

/// Answers in a category, as Int64.
fn category_count(condition: Expr) -> Expr {
    condition.cast(DataType::Int64).sum()
}

/// One row per respondent, by customer_id (as the orders' `id_type`, so summaries join it):
/// answers, last score, its date and category.
fn respondents(answers: &DataFrame, id_type: &DataType) -> Result<DataFrame> {
    let table = answers
        .clone()
        .lazy()
        // Latest first; at one instant the lower score first.
        // The local date last: answers at one instant fall on one date, but the order of the
        // rows must not decide anything.
        .sort_by_exprs(
            [
                col("customer_id"),
                col("responded_ts"),
                col("score"),
                col("responded_on"),
            ],
            SortMultipleOptions::default()
                .with_order_descending_multi([false, true, false, true])
                .with_maintain_order(true),
        )
        .group_by_stable([col("customer_id")])
        .agg([
            len().cast(DataType::Int64).alias("responses"),
            col("score").first().alias("last_score"),
            col("responded_on").first().alias("last_responded_on"),
        ])
        .with_column(
            when(col("last_score").gt_eq(lit(9)))
                .then(lit("promoter"))
                .when(col("last_score").gt_eq(lit(7)))
                .then(lit("passive"))
                .otherwise(lit("detractor"))
                .alias("nps_category"),
        )
        .with_column(col("customer_id").cast(id_type.clone()))
        .collect()?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::input::{InputStats, SurveyAnswers};
    use crate::core::stages::shard::tests::{assert_merge_equal, random_orders, shared_of};
    use crate::core::stages::shard::{shard_of_ids, split};
    use crate::core::stages::SourceData;

    /// Answers of customers 0..80 (ids as in `shared_of`: 7c + 1; some never purchased).
    fn survey(answers: &[(u32, i32, i32)]) -> DataFrame {
        let start = to_days(chrono::NaiveDate::from_ymd_opt(2023, 1, 1).unwrap());
        let mut frame = df! {
            "customer_id" => answers.iter().map(|a| i64::from(a.0) * 7 + 1).collect::<Vec<i64>>(),
            // Instants on the answer's day (as a zone would give them), ties within a day.
            "responded_ts" => answers.iter().map(|a| i64::from(a.1) * 1_000 + i64::from(a.2 % 2)).collect::<Vec<i64>>(),
            "score" => answers.iter().map(|a| a.2).collect::<Vec<i32>>(),
            "responded_on" => answers.iter().map(|a| start + a.1).collect::<Vec<i32>>(),
        }
        .unwrap();
        let dates = frame.column("responded_on").unwrap().cast(&DataType::Date).unwrap();
        frame.with_column(dates).unwrap();
        frame
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Answers split with the customers by the same hash merge to the whole's counts and
        /// periods, and the respondents of the shards are the whole's.
        #[test]
        fn shards_merge_to_the_whole(
            orders in random_orders(),
            given in proptest::collection::vec((0u32..80, 0i32..545, 0i32..11), 1..120),
            shards in 1usize..5,
        ) {
            let shared = shared_of(&orders, 60);
            let answers = survey(&given);
            let of = |frame: DataFrame| SourceData::Survey(SurveyAnswers { answers: frame, stats: InputStats::default() });
            let whole = [("orders", SourceData::Orders(shared.clone())), ("survey", of(answers.clone()))];
            let shard_of = shard_of_ids(answers.column("customer_id").unwrap(), shards).unwrap();
            let parts: Vec<Vec<(&str, SourceData)>> = split(&shared, shards)
                .unwrap()
                .into_iter()
                .enumerate()
                .map(|(shard, tables)| {
                    let mask: BooleanChunked = shard_of.iter().map(|&s| s == shard as u32).collect();
                    vec![("orders", SourceData::Orders(tables)), ("survey", of(answers.filter(&mask).unwrap()))]
                })
                .collect();
            let stage = NpsOptions { granularity: Granularity::Month };
            assert_merge_equal(&stage, &whole, &parts, shared.as_of);
        }
    }
}
