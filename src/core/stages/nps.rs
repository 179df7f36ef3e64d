//! `nps`: Net Promoter Score from a survey source's answers up to as_of.
//!
//! Promoters score 9–10, passives 7–8, detractors 0–6; NPS = 100 × (promoters − detractors) /
//! responses. `<stage>_periods` is dense from the first answer's period to the as_of period and
//! counts every answer, also from people who never purchased. `<stage>_customers` has one row
//! per respondent: their answers, the last score (the latest answer; of answers at the same
//! instant, the lower score) and its category.

use anyhow::Result;
use polars::prelude::*;
use serde::Deserialize;

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

    fn run(&self, inputs: &StageInputs) -> Result<Vec<DataFrame>> {
        let as_of = inputs.shared()?.as_of;
        let (name, answers) = inputs
            .sources
            .iter()
            .find_map(|(name, data)| Some((name, data.survey()?)))
            .ok_or_else(|| anyhow::anyhow!("this stage needs a survey source"))?;
        let answers = &answers.answers;
        anyhow::ensure!(
            answers.height() > 0,
            "survey source `{name}` has no usable answer up to as_of {as_of}"
        );
        let index = self.granularity.index_expr(col("responded_on"));
        let counts = answers
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
        let id_type = inputs.shared()?.customer_facts.column("customer_id")?.dtype().clone();
        Ok(vec![periods, respondents(answers, &id_type)?])
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
        .sort_by_exprs(
            [col("customer_id"), col("responded_ts"), col("score")],
            SortMultipleOptions::default().with_order_descending_multi([false, true, false]),
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
