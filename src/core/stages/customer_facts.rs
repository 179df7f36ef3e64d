//! `customer_facts`: the shared per-customer table, written as an output.

use polars::prelude::*;
use serde::Deserialize;

use super::{Kind, Stage, StageInputs, ORDERS};

/// `kind = "customer_facts"` has no options of its own.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CustomerFactsOptions {}

pub static KIND: Kind = Kind {
    name: "customer_facts",
    summary: "one row per customer: purchase dates, orders, revenue, AOV, acquisition channel, BTYD fields",
    input: ORDERS,
    tables: &[""],
    customer_table: Some(0),
    options: serde_aux::serde_introspection::serde_introspect::<CustomerFactsOptions>,
    parse: |reader, common, diagnostics| {
        super::parse_options::<CustomerFactsOptions>(reader, common, diagnostics)
            .map(|options| Box::new(options) as Box<dyn Stage>)
    },
};

impl Stage for CustomerFactsOptions {
    fn reads_customer_periods(&self) -> bool {
        false
    }

    fn run(&self, inputs: &StageInputs) -> anyhow::Result<Vec<DataFrame>> {
        let facts = inputs
            .shared()?
            .customer_facts
            .drop_many(["customer_key", "revenue_micros", "cost_micros"]);
        Ok(vec![facts])
    }
}
