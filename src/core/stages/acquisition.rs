//! `acquisition`: what acquiring customers cost (CAC), when their contribution paid it back,
//! and LTV:CAC, per cohort period and acquisition channel, from an orders source and a spend
//! source.
//!
//! A customer's cohort is the period of their first purchase and their channel the acquisition
//! channel, as in cohort_retention. Spend counts in the period of its local date, for the
//! channel it names (matched against the acquisition channels by exact name); spend without a
//! channel, and customers without one, count only in the `all_channels` rows. Contribution is
//! revenue − cost when the orders map `cost`, else revenue × `margin`; it is summed per period
//! since the cohort (orders before the first purchase, such as an earlier refund, do not count,
//! as in cohort_retention). Money is summed in exact micro-units; payback compares the sums
//! (Σ contribution ≥ spend), not rounded per-customer ratios.
//!
//! `<stage>`: one row per (cohort, channel) with customers or spend, and one all-channels row per
//! period, dense from the first cohort or spend period to the as_of period. `<stage>_payback`:
//! each of those rows once per period since the cohort, for payback curves.

use anyhow::{Context, Result};
use polars::prelude::*;
use serde::Deserialize;

use super::shard::{merge_sums, only_pass, tables_at, Finalized, Partial, Sharded};
use super::{InputKind, Kind, OptionInput, Stage, StageInputs};
use crate::core::input::{SourceKind, SpendRows};
use crate::core::money::micros_value;
use crate::core::period::{to_days, Granularity, PeriodIndex};
use crate::core::prepare::{self, SharedTables};

/// Options of `kind = "acquisition"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcquisitionOptions {
    /// Cohort and spend period. Default month.
    pub granularity: Granularity,
    /// Share of revenue kept as contribution when the orders map no `cost` (default 1.0).
    pub margin: Option<f64>,
    /// A `clv_simple` or `clv` stage giving each customer's lifetime value: `simple_clv`, or
    /// historic contribution + `clv`.
    pub ltv: Option<String>,
}

pub static KIND: Kind = Kind {
    name: "acquisition",
    summary: "CAC, payback period and LTV:CAC by cohort and acquisition channel, with payback curves",
    input: InputKind::Sources(&[SourceKind::Orders, SourceKind::Spend]),
    tables: &["", "payback"],
    customer_table: None,
    options: serde_aux::serde_introspection::serde_introspect::<AcquisitionOptions>,
    parse: |reader, common, diagnostics| {
        let options = super::parse_options::<AcquisitionOptions>(reader, common, diagnostics)?;
        let errors = match options.margin {
            Some(margin) if !(margin > 0.0 && margin <= 10.0) => {
                vec![("margin", format!("`margin` must be in (0, 10], got {margin}"))]
            }
            _ => Vec::new(),
        };
        super::lifecycle::report(reader, errors, diagnostics).then(|| Box::new(options) as Box<dyn Stage>)
    },
};

impl Stage for AcquisitionOptions {
    fn option_inputs(&self) -> Vec<OptionInput> {
        self.ltv
            .iter()
            .map(|stage| OptionInput {
                key: "ltv",
                stage: stage.clone(),
                kinds: &["clv_simple", "clv"],
            })
            .collect()
    }
}

/// Sharded: a shard's partial is its new customers, Σ LTV and contribution per period since
/// the cohort, per (acquisition channel, cohort) — null channel: customers without one — and
/// whether the orders map `cost`; all add up. Spend is not per customer: finalize reads it
/// whole and lays out the rows.
impl Sharded for AcquisitionOptions {
    fn partial(&self, inputs: &StageInputs, _earlier: &[Partial]) -> Result<Partial> {
        let shared = inputs.shared()?;
        let has_cost = shared.customer_facts.column("cost_micros").is_ok();
        let contribution = self.contribution(has_cost);
        let ltv = match &self.ltv {
            Some(stage) => Some(customer_ltv(inputs, stage, shared, contribution)?),
            None => None,
        };
        shard_partial(shared, self.granularity, has_cost, ltv.as_deref())
    }

    fn merge(&self, _pass: usize, parts: Vec<Partial>) -> Result<Partial> {
        Ok(vec![
            merge_sums(tables_at(&parts, 0)?, &["acquisition_channel", "cohort"])?,
            merge_sums(tables_at(&parts, 1)?, &["acquisition_channel", "cohort", "since"])?,
            merge_sums(tables_at(&parts, 2)?, &["key"])?,
        ])
    }

    fn finalize(&self, merged: Vec<Partial>, whole: &StageInputs, as_of: chrono::NaiveDate) -> Result<Finalized> {
        let merged = only_pass(merged)?;
        let (name, spend) = whole
            .sources
            .iter()
            .find_map(|(name, data)| Some((name, data.spend()?)))
            .ok_or_else(|| anyhow::anyhow!("this stage needs a spend source"))?;
        let has_cost = merged[2].column("with_cost")?.i64()?.get(0).unwrap_or(0) > 0;
        if has_cost && self.margin.is_some() {
            tracing::warn!(
                "acquisition: `margin` is not used: the orders map `cost`, so contribution = revenue − cost"
            );
        }
        let channels = Channels::new(&merged[0], spend)?;
        let unmatched = channels.unmatched_spend_channels();
        if !unmatched.is_empty() {
            tracing::warn!(
                "acquisition: spend source `{name}` names channels no customer was acquired through ({}); check their spelling against the orders' channel values",
                unmatched.join(", ")
            );
        }
        let cells = Cells::of_merged(
            &merged,
            spend,
            &channels,
            self.granularity,
            as_of,
            self.contribution(has_cost),
            self.ltv.is_some(),
        )?;
        Ok(Finalized::tables(cells.tables(&channels, self.granularity)?))
    }
}

impl AcquisitionOptions {
    fn contribution(&self, has_cost: bool) -> Contribution {
        match has_cost {
            true => Contribution::RevenueLessCost,
            false => Contribution::Margin(self.margin.unwrap_or(1.0)),
        }
    }
}

/// One shard's partial: `[customers, contribution, meta]`. `customers`: acquisition_channel
/// (null: none), cohort (period index), new_customers, ltv_sum, ltv_customers; `contribution`:
/// acquisition_channel, cohort, since (periods since the cohort), micros (revenue − cost, or
/// revenue), for every cell with an order (a zero sum included: shards' sums may cancel); `meta`: key, with_cost (1 when the orders map `cost`).
fn shard_partial(
    shared: &SharedTables,
    granularity: Granularity,
    has_cost: bool,
    ltv: Option<&[f64]>,
) -> Result<Partial> {
    use std::collections::BTreeMap;
    let facts = &shared.customer_facts;
    let periods = shared.customer_periods()?;
    let first_days = prepare::day_values(facts, "first_purchase_date")?;
    let period_days = prepare::day_values(&periods, "date")?;
    let as_of_day = to_days(shared.as_of);
    // Every day looked up: first purchases and every order day (a refund may come before the
    // first purchase).
    let span = first_days
        .iter()
        .chain(period_days)
        .fold((as_of_day, as_of_day), |(lo, hi), &d| (lo.min(d), hi.max(d)));
    let index = PeriodIndex::new(granularity, span.0, span.1);
    let cohort: Vec<i32> = first_days.iter().map(|&d| index.of(d)).collect();
    let (distinct, codes) = (&shared.acquisition.0, &shared.acquisition.1);
    let names: Vec<Option<&str>> = distinct.str()?.iter().collect();
    let channel = |customer: usize| names.get(codes[customer] as usize).copied().flatten();
    // (channel, cohort) → (new customers, Σ ltv, customers with one)
    let mut customers: BTreeMap<(Option<&str>, i32), (i64, f64, i64)> = BTreeMap::new();
    for customer in 0..facts.height() {
        let cell = customers.entry((channel(customer), cohort[customer])).or_default();
        cell.0 += 1;
        if let Some(value) = ltv.map(|values| values[customer]).filter(|v| v.is_finite()) {
            cell.1 += value;
            cell.2 += 1;
        }
    }
    let keys = prepare::values::<UInt32Type>(&periods, "customer_key")?;
    let revenue = prepare::values::<Int64Type>(&periods, "revenue_micros")?;
    let cost = match periods.column("cost_micros") {
        Ok(_) if has_cost => Some(prepare::values::<Int64Type>(&periods, "cost_micros")?),
        _ => None,
    };
    let mut contribution: BTreeMap<(Option<&str>, i32, i32), i64> = BTreeMap::new();
    for row in 0..keys.len() {
        let customer = keys[row] as usize;
        let since = index.of(period_days[row]) - cohort[customer];
        if since < 0 {
            continue;
        }
        let micros = revenue[row] - cost.map_or(0, |cost| cost[row]);
        *contribution
            .entry((channel(customer), cohort[customer], since))
            .or_insert(0) += micros;
    }
    let text = |values: Vec<Option<&str>>| Column::new("acquisition_channel".into(), values);
    Ok(vec![
        DataFrame::new_infer_height(vec![
            text(customers.keys().map(|k| k.0).collect()),
            Column::new("cohort".into(), customers.keys().map(|k| k.1).collect::<Vec<i32>>()),
            Column::new(
                "new_customers".into(),
                customers.values().map(|v| v.0).collect::<Vec<i64>>(),
            ),
            Column::new("ltv_sum".into(), customers.values().map(|v| v.1).collect::<Vec<f64>>()),
            Column::new(
                "ltv_customers".into(),
                customers.values().map(|v| v.2).collect::<Vec<i64>>(),
            ),
        ])?,
        DataFrame::new_infer_height(vec![
            text(contribution.keys().map(|k| k.0).collect()),
            Column::new("cohort".into(), contribution.keys().map(|k| k.1).collect::<Vec<i32>>()),
            Column::new("since".into(), contribution.keys().map(|k| k.2).collect::<Vec<i32>>()),
            Column::new("micros".into(), contribution.values().copied().collect::<Vec<i64>>()),
        ])?,
        df! { "key" => [0i32], "with_cost" => [i64::from(has_cost)] }?,
    ])
}

/// How an order's contribution is computed.
#[derive(Debug, Clone, Copy)]
enum Contribution {
    RevenueLessCost,
    /// Revenue × margin (applied to the exact sums).
    Margin(f64),
}

impl Contribution {
    /// A sum of contribution micro-units (revenue − cost, or revenue) in currency.
    fn value(self, micros: i64) -> f64 {
        match self {
            Contribution::RevenueLessCost => micros_value(micros),
            Contribution::Margin(margin) => micros_value(micros) * margin,
        }
    }

    /// Whether contribution micro-units `micros` pay back spend `spend` (both exact sums).
    fn covers(self, micros: i64, spend: i64) -> bool {
        match self {
            Contribution::RevenueLessCost => micros >= spend,
            Contribution::Margin(margin) => micros as f64 * margin >= spend as f64,
        }
    }
}

/// Each customer's lifetime value (in customer_key order; NaN when unknown) from stage `stage`:
/// clv_simple's `simple_clv`, or clv's `clv` plus the customer's historic contribution.
fn customer_ltv(
    inputs: &StageInputs,
    stage: &str,
    shared: &SharedTables,
    contribution: Contribution,
) -> Result<Vec<f64>> {
    let (_, kind, frames) = inputs
        .upstream
        .iter()
        .find(|(name, _, _)| *name == stage)
        .with_context(|| format!("ltv stage `{stage}` did not run"))?;
    let (table, column) = match kind.name {
        "clv_simple" => (&frames[0], "simple_clv"),
        _ => (&frames[0], "clv"),
    };
    let facts = &shared.customer_facts;
    let values = super::columns_in_customer_order(facts, table, &[column.to_string()])?.remove(0);
    let values = values.cast(&DataType::Float64)?;
    let mut ltv: Vec<f64> = values.f64()?.iter().map(|v| v.unwrap_or(f64::NAN)).collect();
    if kind.name == "clv" {
        let revenue = prepare::values::<Int64Type>(facts, "revenue_micros")?;
        let cost = match facts.column("cost_micros") {
            Ok(_) => Some(prepare::values::<Int64Type>(facts, "cost_micros")?),
            Err(_) => None,
        };
        for (customer, value) in ltv.iter_mut().enumerate() {
            let micros = revenue[customer] - cost.map_or(0, |cost| cost[customer]);
            *value += contribution.value(micros);
        }
    }
    Ok(ltv)
}

/// The channels of the per-channel rows: every acquisition channel and every channel spend
/// names, ascending; the position among them of each row of the merged customers partial and
/// of each spend row (`None`: no channel).
struct Channels {
    names: Vec<String>,
    of_customer: Vec<Option<u32>>,
    of_spend: Vec<Option<u32>>,
    /// Whether a channel is some customer's acquisition channel.
    acquired: Vec<bool>,
}

impl Channels {
    /// From the merged customers partial (its channels) and the spend rows.
    fn new(customers: &DataFrame, spend: &SpendRows) -> Result<Channels> {
        let acquisition: Vec<Option<&str>> = customers.column("acquisition_channel")?.str()?.iter().collect();
        let spend_channels: Vec<Option<&str>> = spend.spend.column("channel")?.str()?.iter().collect();
        let mut names: Vec<String> = acquisition
            .iter()
            .chain(&spend_channels)
            .flatten()
            .map(|name| name.to_string())
            .collect();
        names.sort_unstable();
        names.dedup();
        let position = |name: Option<&str>| {
            name.map(|name| names.binary_search_by(|n| n.as_str().cmp(name)).expect("listed") as u32)
        };
        let of_customer: Vec<Option<u32>> = acquisition.iter().map(|&name| position(name)).collect();
        let of_spend = spend_channels.iter().map(|&name| position(name)).collect();
        let mut acquired = vec![false; names.len()];
        for channel in of_customer.iter().flatten() {
            acquired[*channel as usize] = true;
        }
        Ok(Channels {
            names,
            of_customer,
            of_spend,
            acquired,
        })
    }

    fn unmatched_spend_channels(&self) -> Vec<String> {
        let mut spent = vec![false; self.names.len()];
        for channel in self.of_spend.iter().flatten() {
            spent[*channel as usize] = true;
        }
        (0..self.names.len())
            .filter(|&c| spent[c] && !self.acquired[c])
            .map(|c| format!("`{}`", self.names[c]))
            .collect()
    }
}

/// Sums per (channel, cohort): channel `names.len()` is all channels. Cohorts run from
/// `first` to the as_of period; a cohort's contribution has a slot per period since it.
struct Cells {
    first: i32,
    last: i32,
    new_customers: Vec<i64>,
    spend: Vec<i64>,
    /// Σ LTV and customers with one, per cell.
    ltv: Option<(Vec<f64>, Vec<i64>)>,
    /// Per cell, contribution micro-units per period index (0..=last − cohort).
    contribution: Vec<Vec<i64>>,
    kind: Contribution,
}

impl Cells {
    /// The dense cells from the merged partial and the spend rows.
    fn of_merged(
        merged: &Partial,
        spend: &SpendRows,
        channels: &Channels,
        granularity: Granularity,
        as_of: chrono::NaiveDate,
        kind: Contribution,
        with_ltv: bool,
    ) -> Result<Cells> {
        let (customers, contribution) = (&merged[0], &merged[1]);
        let spend_days = prepare::day_values(&spend.spend, "spent_on")?;
        let spend_micros = prepare::values::<Int64Type>(&spend.spend, "amount_micros")?;
        let ints = super::shard::int_values;
        let customer_cohorts = ints(customers, "cohort")?;
        let last = granularity.index_of(as_of);
        let spend_periods: Vec<i32> = spend_days
            .iter()
            .map(|&d| granularity.index_of(crate::core::period::from_days(d)))
            .collect();
        let first = customer_cohorts
            .iter()
            .map(|&c| c as i32)
            .chain(spend_periods.iter().copied())
            .min()
            .unwrap_or(last)
            .min(last);
        let cohorts = (last - first + 1) as usize;
        let all = channels.names.len();
        let cell = |channel: usize, cohort: i32| channel * cohorts + (cohort - first) as usize;
        let cells = (all + 1) * cohorts;
        let mut counted = Cells {
            first,
            last,
            new_customers: vec![0; cells],
            spend: vec![0; cells],
            ltv: with_ltv.then(|| (vec![0.0; cells], vec![0; cells])),
            contribution: (0..cells)
                .map(|c| vec![0; (last - (first + (c % cohorts) as i32)) as usize + 1])
                .collect(),
            kind,
        };
        for (row, &period) in spend_periods.iter().enumerate() {
            counted.spend[cell(all, period)] += spend_micros[row];
            if let Some(channel) = channels.of_spend[row] {
                counted.spend[cell(channel as usize, period)] += spend_micros[row];
            }
        }
        let cells_of =
            |channel: Option<u32>, cohort: i32| [Some(cell(all, cohort)), channel.map(|c| cell(c as usize, cohort))];
        let (new, ltv_sum, ltv_customers) = (
            ints(customers, "new_customers")?,
            customers
                .column("ltv_sum")?
                .f64()?
                .into_no_null_iter()
                .collect::<Vec<f64>>(),
            ints(customers, "ltv_customers")?,
        );
        for (row, &cohort) in customer_cohorts.iter().enumerate() {
            for at in cells_of(channels.of_customer[row], cohort as i32).into_iter().flatten() {
                counted.new_customers[at] += new[row];
                if let Some((sums, known)) = counted.ltv.as_mut() {
                    sums[at] += ltv_sum[row];
                    known[at] += ltv_customers[row];
                }
            }
        }
        // Contribution rows carry their channel name: looked up among the channels.
        let names: Vec<Option<&str>> = contribution.column("acquisition_channel")?.str()?.iter().collect();
        let (cohort_of, since, micros) = (
            ints(contribution, "cohort")?,
            ints(contribution, "since")?,
            ints(contribution, "micros")?,
        );
        for row in 0..contribution.height() {
            let channel = names[row].map(|name| {
                channels
                    .names
                    .binary_search_by(|n| n.as_str().cmp(name))
                    .expect("a customer channel") as u32
            });
            let (cohort, since) = (cohort_of[row] as i32, since[row] as usize);
            for at in cells_of(channel, cohort).into_iter().flatten() {
                if let Some(slot) = counted.contribution[at].get_mut(since) {
                    *slot += micros[row];
                }
            }
        }
        Ok(counted)
    }

    /// `<stage>` and `<stage>_payback`.
    fn tables(&self, channels: &Channels, granularity: Granularity) -> Result<Vec<DataFrame>> {
        let cohorts = (self.last - self.first + 1) as usize;
        let all = channels.names.len();
        let mut rows = Rows::default();
        let mut payback = Rows::default();
        for c in 0..cohorts {
            let cohort = self.first + c as i32;
            for channel in (0..all).chain([all]) {
                let at = channel * cohorts + c;
                let (new, spend) = (self.new_customers[at], self.spend[at]);
                let all_channels = channel == all;
                if !all_channels && new == 0 && spend == 0 {
                    continue;
                }
                let name = (!all_channels).then(|| channels.names[channel].clone());
                let per_customer = |micros: i64| (new > 0).then(|| self.kind.value(micros) / new as f64);
                let cac = (new > 0).then(|| micros_value(spend) / new as f64);
                let mut cumulative = 0i64;
                let mut payback_index = None;
                for (k, &micros) in self.contribution[at].iter().enumerate() {
                    cumulative += micros;
                    if payback_index.is_none() && new > 0 && (spend <= 0 || self.kind.covers(cumulative, spend)) {
                        payback_index = Some(k as i32);
                    }
                    let recovered = match (per_customer(cumulative), cac) {
                        (Some(value), Some(cac)) if cac > 0.0 => Some(value / cac),
                        _ => None,
                    };
                    payback.push_curve(cohort, &name, k as i32, per_customer(cumulative), cac, recovered);
                }
                let ltv = self
                    .ltv
                    .as_ref()
                    .and_then(|(sums, known)| (known[at] > 0).then(|| sums[at] / known[at] as f64));
                let ltv_to_cac = match (ltv, cac) {
                    (Some(ltv), Some(cac)) if cac > 0.0 => Some(ltv / cac),
                    _ => None,
                };
                rows.push_summary(
                    cohort,
                    &name,
                    new,
                    micros_value(spend),
                    cac,
                    per_customer(cumulative),
                    payback_index,
                    ltv,
                    ltv_to_cac,
                );
            }
        }
        Ok(vec![rows.summary(granularity)?, payback.curves(granularity)?])
    }
}

/// The columns of both tables, row by row.
#[derive(Default)]
struct Rows {
    cohort: Vec<i32>,
    channel: Vec<Option<String>>,
    new_customers: Vec<i64>,
    spend: Vec<f64>,
    cac: Vec<Option<f64>>,
    contribution: Vec<Option<f64>>,
    payback_index: Vec<Option<i32>>,
    ltv: Vec<Option<f64>>,
    ltv_to_cac: Vec<Option<f64>>,
    period_index: Vec<i32>,
    recovered: Vec<Option<f64>>,
}

impl Rows {
    #[allow(clippy::too_many_arguments)]
    fn push_summary(
        &mut self,
        cohort: i32,
        channel: &Option<String>,
        new_customers: i64,
        spend: f64,
        cac: Option<f64>,
        contribution: Option<f64>,
        payback_index: Option<i32>,
        ltv: Option<f64>,
        ltv_to_cac: Option<f64>,
    ) {
        self.cohort.push(cohort);
        self.channel.push(channel.clone());
        self.new_customers.push(new_customers);
        self.spend.push(spend);
        self.cac.push(cac);
        self.contribution.push(contribution);
        self.payback_index.push(payback_index);
        self.ltv.push(ltv);
        self.ltv_to_cac.push(ltv_to_cac);
    }

    fn push_curve(
        &mut self,
        cohort: i32,
        channel: &Option<String>,
        period_index: i32,
        cumulative: Option<f64>,
        cac: Option<f64>,
        recovered: Option<f64>,
    ) {
        self.cohort.push(cohort);
        self.channel.push(channel.clone());
        self.period_index.push(period_index);
        self.contribution.push(cumulative);
        self.cac.push(cac);
        self.recovered.push(recovered);
    }

    /// The cohort start dates, the channel and all_channels columns.
    fn keys(&self, granularity: Granularity) -> Result<Vec<Column>> {
        let starts: Vec<i32> = self.cohort.iter().map(|&c| to_days(granularity.start_of(c))).collect();
        Ok(vec![
            Column::new("cohort".into(), starts).cast(&DataType::Date)?,
            Column::new("acquisition_channel".into(), self.channel.clone()),
            Column::new(
                "all_channels".into(),
                self.channel.iter().map(Option::is_none).collect::<Vec<bool>>(),
            ),
        ])
    }

    fn summary(self, granularity: Granularity) -> Result<DataFrame> {
        let mut columns = self.keys(granularity)?;
        columns.extend([
            Column::new("new_customers".into(), self.new_customers),
            Column::new("spend".into(), self.spend),
            Column::new("cac".into(), self.cac),
            Column::new("contribution_to_date_per_customer".into(), self.contribution),
            Column::new("payback_period_index".into(), self.payback_index),
            Column::new("ltv_per_customer".into(), self.ltv),
            Column::new("ltv_to_cac".into(), self.ltv_to_cac),
        ]);
        Ok(DataFrame::new_infer_height(columns)?)
    }

    fn curves(self, granularity: Granularity) -> Result<DataFrame> {
        let mut columns = self.keys(granularity)?;
        columns.extend([
            Column::new("period_index".into(), self.period_index),
            Column::new("cumulative_contribution_per_customer".into(), self.contribution),
            Column::new("cac".into(), self.cac),
            Column::new("recovered_share".into(), self.recovered),
        ]);
        Ok(DataFrame::new_infer_height(columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::input::InputStats;
    use crate::core::stages::shard::split;
    use crate::core::stages::shard::tests::{assert_merge_equal, random_orders, shared_of};
    use crate::core::stages::SourceData;

    /// Spend rows: (day from 2023-01-01, channel: 0–2 as in `shared_of`, 3 unattributed, 4 a
    /// channel nobody came through, amount in cents).
    fn spend(rows: &[(i32, u8, i64)]) -> SourceData {
        let start = to_days(chrono::NaiveDate::from_ymd_opt(2023, 1, 1).unwrap());
        let names = ["app", "store", "web"];
        let mut frame = df! {
            "spent_on" => rows.iter().map(|r| start + r.0).collect::<Vec<i32>>(),
            "channel" => rows.iter().map(|r| match r.1 { 4 => Some("tv"), c => names.get(usize::from(c)).copied() }).collect::<Vec<_>>(),
            "amount_micros" => rows.iter().map(|r| r.2 * 10_000).collect::<Vec<i64>>(),
        }
        .unwrap();
        let dates = frame.column("spent_on").unwrap().cast(&DataType::Date).unwrap();
        frame.with_column(dates).unwrap();
        SourceData::Spend(SpendRows {
            spend: frame,
            stats: InputStats::default(),
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Any split of the customers merges to the whole's cells and tables.
        #[test]
        fn shards_merge_to_the_whole(
            orders in random_orders(),
            rows in proptest::collection::vec((0i32..545, 0u8..5, -500i64..50_000), 0..40),
            shards in 1usize..5,
            weekly: bool,
        ) {
            let shared = shared_of(&orders, 60);
            let whole = [("orders", SourceData::Orders(shared.clone())), ("spend", spend(&rows))];
            let parts: Vec<Vec<(&str, SourceData)>> = split(&shared, shards)
                .unwrap()
                .into_iter()
                .map(|tables| vec![("orders", SourceData::Orders(tables))])
                .collect();
            let stage = AcquisitionOptions {
                granularity: if weekly { Granularity::Week } else { Granularity::Month },
                margin: Some(0.4),
                ltv: None,
            };
            assert_merge_equal(&stage, &whole, &parts, shared.as_of);
        }
    }
}
