//! `customer_facts`: the shared per-customer table, written as an output. Sharded: per customer
//! only, each shard's rows.

use polars::prelude::*;
use serde::Deserialize;

use super::shard::{Finalized, Partial, Sharded};
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
}

/// Per customer only: no partial, each shard's rows.
impl Sharded for CustomerFactsOptions {
    fn partial(&self, _inputs: &StageInputs, _earlier: &[Partial]) -> anyhow::Result<Partial> {
        Ok(Vec::new())
    }

    fn merge(&self, _pass: usize, _parts: Vec<Partial>) -> anyhow::Result<Partial> {
        Ok(Vec::new())
    }

    fn finalize(
        &self,
        _merged: Vec<Partial>,
        _whole: &StageInputs,
        _as_of: chrono::NaiveDate,
    ) -> anyhow::Result<Finalized> {
        Ok(Finalized {
            tables: vec![None],
            globals: Vec::new(),
        })
    }

    fn customer_rows(&self, inputs: &StageInputs, _globals: &Partial) -> anyhow::Result<Vec<Option<DataFrame>>> {
        let facts = inputs
            .shared()?
            .customer_facts
            .drop_many(["customer_key", "revenue_micros", "cost_micros"]);
        Ok(vec![Some(facts)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stages::shard::tests::{assert_shards_merge, random_orders, shared_of};

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]

        /// The shards' rows are the whole's.
        #[test]
        fn shards_hold_the_whole_table(orders in random_orders(), shards in 1usize..6) {
            assert_shards_merge(&CustomerFactsOptions {}, &shared_of(&orders, 60), shards);
        }
    }
}
