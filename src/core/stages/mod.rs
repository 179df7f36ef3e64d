//! Stage kinds: the `Stage` trait and the one `KINDS` list.
//!
//! A stage is a pure function from its inputs (the shared per-customer tables of a source, or
//! other stages' output tables) and its typed options to its output tables. Adding a kind is one
//! file here plus one line in `KINDS`.

pub mod acquisition;
pub mod clv;
pub mod clv_simple;
pub mod cohort_retention;
pub mod customer_facts;
pub mod lifecycle;
pub mod nps;
pub mod repeat;
pub mod rfm;
pub mod segment_summary;
pub mod shard;

use std::fmt::Debug;

use polars::prelude::DataFrame;

use crate::core::diagnostic::Diagnostics;
use crate::core::input::{SourceKind, SpendRows, SurveyAnswers};
use crate::core::options::TableReader;
use crate::core::prepare::SharedTables;

/// What a kind reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Sources of these kinds, one each, in this order (`input = ["orders", "spend"]`); of an
    /// orders source, its shared tables (customer_facts, customer_periods).
    Sources(&'static [SourceKind]),
    /// Output tables of other stages.
    Stages,
}

impl InputKind {
    pub fn describe(self) -> String {
        match self {
            InputKind::Sources([kind]) => format!("the name of one {} source", kind.name()),
            InputKind::Sources(kinds) => format!(
                "the names of sources of kinds {}, in this order",
                kinds
                    .iter()
                    .map(|kind| format!("`{}`", kind.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            InputKind::Stages => "names of stages".into(),
        }
    }
}

/// One orders source: what most kinds read.
pub const ORDERS: InputKind = InputKind::Sources(&[SourceKind::Orders]);

/// A source's data as stages read it, by its kind.
#[derive(Debug)]
pub enum SourceData {
    /// The shared per-customer tables of an orders source.
    Orders(SharedTables),
    /// The answers of a survey source.
    Survey(SurveyAnswers),
    /// The rows of a spend source.
    Spend(SpendRows),
}

impl SourceData {
    pub fn orders(&self) -> Option<&SharedTables> {
        match self {
            SourceData::Orders(tables) => Some(tables),
            _ => None,
        }
    }

    pub fn survey(&self) -> Option<&SurveyAnswers> {
        match self {
            SourceData::Survey(answers) => Some(answers),
            _ => None,
        }
    }

    pub fn spend(&self) -> Option<&SpendRows> {
        match self {
            SourceData::Spend(spend) => Some(spend),
            _ => None,
        }
    }
}

/// Turns a stage's TOML table (minus the `common` keys) into a runnable stage, reporting problems.
pub type ParseFn = fn(reader: &TableReader, common: &[&str], diagnostics: &mut Diagnostics) -> Option<Box<dyn Stage>>;

/// A registered stage kind.
pub struct Kind {
    pub name: &'static str,
    pub summary: &'static str,
    pub input: InputKind,
    /// Table suffixes; a kind with one table writes it under the stage's name.
    pub tables: &'static [&'static str],
    /// Which of `tables` has one row per customer (with `customer_id`), for segment summaries.
    pub customer_table: Option<usize>,
    /// Turn the stage's TOML table into a runnable stage; `common` are keys handled by the config.
    pub parse: ParseFn,
    /// The option keys the kind accepts (besides kind, input, output, output_prefix).
    pub options: fn() -> &'static [&'static str],
}

impl Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The data a stage runs on.
pub struct StageInputs<'a> {
    /// The sources in the stage's `input`, by name; for a stage over other stages, the orders
    /// source they came from.
    pub sources: Vec<(&'a str, &'a SourceData)>,
    /// (stage name, its kind, its output tables in `Kind::tables` order), in `input` order.
    pub upstream: Vec<(&'a str, &'static Kind, &'a [DataFrame])>,
}

impl StageInputs<'_> {
    /// The shared tables of the stage's (first) orders source.
    pub fn shared(&self) -> anyhow::Result<&SharedTables> {
        self.sources
            .iter()
            .find_map(|(_, data)| data.orders())
            .ok_or_else(|| anyhow::anyhow!("this stage needs the shared tables of an orders source"))
    }
}

/// A stage another stage's option names, whose tables it reads (e.g. clv_simple's
/// `lifecycle`): the plan checks it exists and is of one of `kinds`, and runs it first.
#[derive(Debug, Clone)]
pub struct OptionInput {
    pub key: &'static str,
    pub stage: String,
    pub kinds: &'static [&'static str],
}

/// A configured stage: typed options plus the function that computes its tables. A column a
/// table takes unchanged from the shared tables (`customer_id`, revenue, …) should be that
/// column (a clone shares its buffer), not a copy: the sink writes its data once per run.
///
/// Its tables are computed over customer shards (`shard::Sharded`, the supertrait): a run
/// calls `shard::run_one_shard`; a sharded run takes the steps shard by shard
/// (`runner::sharded`).
pub trait Stage: shard::Sharded + Debug {
    /// The table suffixes this configured stage writes, when options change them.
    fn tables(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// Stages named by this stage's options (besides `input`) whose tables it reads; they come
    /// after the `input` stages in `StageInputs::upstream`.
    fn option_inputs(&self) -> Vec<OptionInput> {
        Vec::new()
    }

    /// Whether this stage reads customer_periods (`SharedTables::customer_periods`). The
    /// runner starts the stages that do first and releases the periods when the last is done;
    /// a kind that says no and reads them anyway fails with an error naming this method.
    fn reads_customer_periods(&self) -> bool {
        true
    }

    /// A problem with this stage's options for a run as of `as_of` (a date option not before
    /// it), found before any data is read.
    fn check_as_of(&self, _as_of: chrono::NaiveDate) -> Option<String> {
        None
    }

    /// Per-customer columns this stage reads from its input stages' customer tables (checked
    /// against the catalog before any data is read).
    fn customer_columns(&self) -> Vec<String> {
        Vec::new()
    }

    /// Optional logical columns its orders source must map, each with the option that needs it
    /// (`("cost", "margin = \"observed\"")`), checked before any data is read.
    fn source_columns(&self) -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }
}

/// A `margin` option: a fixed share of revenue (0 < margin ≤ 10, default 1), or `"observed"`:
/// Σ contribution / Σ revenue over all customers, which needs the `cost` column.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(try_from = "MarginValue")]
pub enum Margin {
    Fixed(f64),
    Observed,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum MarginValue {
    Number(f64),
    Text(String),
}

impl TryFrom<MarginValue> for Margin {
    type Error = String;

    fn try_from(value: MarginValue) -> Result<Self, String> {
        match value {
            MarginValue::Number(margin) => Ok(Margin::Fixed(margin)),
            MarginValue::Text(text) if text == "observed" => Ok(Margin::Observed),
            MarginValue::Text(text) => Err(format!("`margin` is a number or \"observed\", got \"{text}\"")),
        }
    }
}

impl Default for Margin {
    fn default() -> Self {
        Margin::Fixed(1.0)
    }
}

impl Margin {
    /// A problem with a fixed margin's value.
    pub fn check(self) -> Option<(&'static str, String)> {
        match self {
            Margin::Fixed(margin) if !(margin > 0.0 && margin <= 10.0) => Some((
                "margin",
                format!("`margin` must be in (0, 10] or \"observed\", got {margin}"),
            )),
            _ => None,
        }
    }

    /// The source columns it needs (`Stage::source_columns`).
    pub fn source_columns(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Margin::Observed => vec![("cost", "`margin = \"observed\"`")],
            Margin::Fixed(_) => Vec::new(),
        }
    }

    /// The margin as a number: observed as (revenue − cost) / revenue from the customers'
    /// total micro-units (a table of sharded partial sums with `revenue_micros` and
    /// `cost_micros`, one row).
    pub fn of_totals(self, totals: &DataFrame) -> anyhow::Result<f64> {
        let total = |name: &str| -> anyhow::Result<i128> {
            Ok(i128::from(
                shard::int_values(totals, name)?.first().copied().unwrap_or(0),
            ))
        };
        match self {
            Margin::Fixed(margin) => Ok(margin),
            Margin::Observed => {
                let (revenue, cost) = (total("revenue_micros")?, total("cost_micros")?);
                anyhow::ensure!(
                    revenue > 0,
                    "`margin = \"observed\"`: the customers' total revenue is not positive, so no margin can be observed"
                );
                Ok((revenue - cost) as f64 / revenue as f64)
            }
        }
    }
}

/// `columns` of a per-customer `table` in the row order of `customers`, matched by customer_id
/// (null for a customer the table lacks). Per-customer tables come in customer_key order, like
/// customer_facts: when the ids line up row for row, the columns are taken as they are.
pub fn columns_in_customer_order(
    customers: &DataFrame,
    table: &DataFrame,
    columns: &[String],
) -> anyhow::Result<Vec<polars::prelude::Column>> {
    use polars::prelude::*;
    let ids = customers.column("customer_id")?;
    let aligned = table.height() == customers.height()
        && table
            .column("customer_id")?
            .as_materialized_series()
            .equals_missing(ids.as_materialized_series());
    if aligned {
        return Ok(table.select(columns.iter().map(String::as_str))?.into_columns());
    }
    let mut wanted = vec![col("customer_id")];
    wanted.extend(columns.iter().map(|name| col(name.as_str())));
    let mut args = JoinArgs::new(JoinType::Left);
    args.maintain_order = MaintainOrderJoin::Left;
    let joined = customers
        .select(["customer_id"])?
        .lazy()
        .join(
            table.clone().lazy().select(wanted),
            [col("customer_id")],
            [col("customer_id")],
            args,
        )
        .collect()?;
    Ok(joined.select(columns.iter().map(String::as_str))?.into_columns())
}

pub static KINDS: &[&Kind] = &[
    &customer_facts::KIND,
    &cohort_retention::KIND,
    &rfm::KIND,
    &repeat::KIND,
    &lifecycle::KIND,
    &clv_simple::KIND,
    &clv::KIND,
    &segment_summary::KIND,
    &nps::KIND,
    &acquisition::KIND,
];

pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().copied().find(|kind| kind.name == name)
}

/// Parse a kind's options struct from the stage table: the common parse function of most kinds.
pub fn parse_options<T>(reader: &TableReader, common: &[&str], diagnostics: &mut Diagnostics) -> Option<T>
where
    T: serde::de::DeserializeOwned + Default,
{
    reader.options::<T>(common, diagnostics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Options {
        margin: Margin,
    }

    fn margin(toml_value: &str) -> Result<Margin, String> {
        toml_edit::de::from_str::<Options>(&format!("margin = {toml_value}"))
            .map(|options| options.margin)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn margin_is_a_number_or_observed() {
        assert_eq!(margin("0.3"), Ok(Margin::Fixed(0.3)));
        assert_eq!(margin("1"), Ok(Margin::Fixed(1.0)));
        assert_eq!(margin("\"observed\""), Ok(Margin::Observed));
        assert!(margin("\"seen\"").unwrap_err().contains("a number or \"observed\""));
        assert!(Margin::Fixed(0.0).check().is_some());
        assert!(Margin::Observed.check().is_none());
        assert_eq!(Margin::Observed.source_columns()[0].0, "cost");
    }

    #[test]
    fn observed_margin_is_contribution_over_revenue_from_the_exact_sums() {
        use polars::prelude::*;
        // Revenue 100 + 50 − 10, cost 60 + 20 − 4: (140 − 76) / 140.
        let totals = df! { "revenue_micros" => [140_000_000i64], "cost_micros" => [76_000_000i64] }.unwrap();
        assert_eq!(Margin::Observed.of_totals(&totals).unwrap(), 64.0 / 140.0);
        assert_eq!(Margin::Fixed(0.3).of_totals(&totals).unwrap(), 0.3);
        let none = df! { "revenue_micros" => [0i64], "cost_micros" => [0i64] }.unwrap();
        let error = Margin::Observed.of_totals(&none).unwrap_err().to_string();
        assert!(error.contains("not positive"), "{error}");
    }
}
