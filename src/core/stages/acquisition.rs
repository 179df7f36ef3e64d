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

    fn run(&self, inputs: &StageInputs) -> Result<Vec<DataFrame>> {
        let shared = inputs.shared()?;
        let (name, spend) = inputs
            .sources
            .iter()
            .find_map(|(name, data)| Some((name, data.spend()?)))
            .ok_or_else(|| anyhow::anyhow!("this stage needs a spend source"))?;
        let has_cost = shared.customer_facts.column("cost_micros").is_ok();
        if has_cost && self.margin.is_some() {
            tracing::warn!(
                "acquisition: `margin` is not used: the orders map `cost`, so contribution = revenue − cost"
            );
        }
        let contribution = match has_cost {
            true => Contribution::RevenueLessCost,
            false => Contribution::Margin(self.margin.unwrap_or(1.0)),
        };
        let ltv = match &self.ltv {
            Some(stage) => Some(customer_ltv(inputs, stage, shared, contribution)?),
            None => None,
        };
        let channels = Channels::new(shared, spend)?;
        let unmatched = channels.unmatched_spend_channels();
        if !unmatched.is_empty() {
            tracing::warn!(
                "acquisition: spend source `{name}` names channels no customer was acquired through ({}); check their spelling against the orders' channel values",
                unmatched.join(", ")
            );
        }
        let cells = Cells::count(shared, spend, &channels, self.granularity, contribution, ltv.as_deref())?;
        cells.tables(&channels, self.granularity)
    }
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
    let values = in_facts_order(facts, table, column)?;
    let mut ltv: Vec<f64> = values.iter().map(|v| v.unwrap_or(f64::NAN)).collect();
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

/// `column` of a per-customer `table`, in the row order of `facts` (by customer_id).
fn in_facts_order(facts: &DataFrame, table: &DataFrame, column: &str) -> Result<Float64Chunked> {
    let ids = facts.column("customer_id")?;
    let aligned = table.height() == facts.height()
        && table
            .column("customer_id")?
            .as_materialized_series()
            .equals_missing(ids.as_materialized_series());
    let values = if aligned {
        table.column(column)?.clone()
    } else {
        facts
            .select(["customer_id"])?
            .lazy()
            .join(
                table.clone().lazy().select([col("customer_id"), col(column)]),
                [col("customer_id")],
                [col("customer_id")],
                JoinArgs::new(JoinType::Left),
            )
            .collect()?
            .column(column)?
            .clone()
    };
    Ok(values.cast(&DataType::Float64)?.f64()?.rechunk().into_owned())
}

/// The channels of the per-channel rows: every acquisition channel and every channel spend
/// names, ascending; each customer's and each spend row's position among them (`None`: none).
struct Channels {
    names: Vec<String>,
    of_customer: Vec<Option<u32>>,
    of_spend: Vec<Option<u32>>,
    /// Whether a channel is some customer's acquisition channel.
    acquired: Vec<bool>,
}

impl Channels {
    fn new(shared: &SharedTables, spend: &SpendRows) -> Result<Channels> {
        let (distinct, codes) = (&shared.acquisition.0, &shared.acquisition.1);
        let acquisition: Vec<Option<&str>> = distinct.str()?.iter().collect();
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
        let by_code: Vec<Option<u32>> = acquisition.iter().map(|&name| position(name)).collect();
        let of_customer = codes
            .iter()
            .map(|&code| by_code.get(code as usize).copied().flatten())
            .collect();
        let of_spend = spend_channels.iter().map(|&name| position(name)).collect();
        let mut acquired = vec![false; names.len()];
        for channel in by_code.iter().flatten() {
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
    fn count(
        shared: &SharedTables,
        spend: &SpendRows,
        channels: &Channels,
        granularity: Granularity,
        kind: Contribution,
        ltv: Option<&[f64]>,
    ) -> Result<Cells> {
        let facts = &shared.customer_facts;
        let periods = shared.customer_periods()?;
        let first_days = prepare::day_values(facts, "first_purchase_date")?;
        let spend_days = prepare::day_values(&spend.spend, "spent_on")?;
        let spend_micros = prepare::values::<Int64Type>(&spend.spend, "amount_micros")?;
        let as_of_day = to_days(shared.as_of);
        let span = first_days
            .iter()
            .chain(spend_days)
            .fold((as_of_day, as_of_day), |(lo, hi), &d| (lo.min(d), hi.max(d)));
        let index = PeriodIndex::new(granularity, span.0, span.1);
        let last = granularity.index_of(shared.as_of);
        let cohort: Vec<i32> = first_days.iter().map(|&d| index.of(d)).collect();
        let first = cohort
            .iter()
            .chain(&spend_days.iter().map(|&d| index.of(d)).collect::<Vec<_>>())
            .copied()
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
            ltv: ltv.map(|_| (vec![0.0; cells], vec![0; cells])),
            contribution: (0..cells)
                .map(|c| vec![0; (last - (first + (c % cohorts) as i32)) as usize + 1])
                .collect(),
            kind,
        };
        for (row, &day) in spend_days.iter().enumerate() {
            let period = index.of(day);
            counted.spend[cell(all, period)] += spend_micros[row];
            if let Some(channel) = channels.of_spend[row] {
                counted.spend[cell(channel as usize, period)] += spend_micros[row];
            }
        }
        let cells_of = |customer: usize| {
            let own = channels.of_customer[customer].map(|channel| cell(channel as usize, cohort[customer]));
            [Some(cell(all, cohort[customer])), own]
        };
        for customer in 0..facts.height() {
            for at in cells_of(customer).into_iter().flatten() {
                counted.new_customers[at] += 1;
                if let (Some(values), Some((sums, known))) = (ltv, counted.ltv.as_mut()) {
                    if values[customer].is_finite() {
                        sums[at] += values[customer];
                        known[at] += 1;
                    }
                }
            }
        }
        let keys = prepare::values::<UInt32Type>(&periods, "customer_key")?;
        let period_days = prepare::day_values(&periods, "date")?;
        let revenue = prepare::values::<Int64Type>(&periods, "revenue_micros")?;
        let cost = match (kind, periods.column("cost_micros")) {
            (Contribution::RevenueLessCost, Ok(_)) => Some(prepare::values::<Int64Type>(&periods, "cost_micros")?),
            _ => None,
        };
        for row in 0..keys.len() {
            let customer = keys[row] as usize;
            let since = index.of(period_days[row]) - cohort[customer];
            if since < 0 {
                continue;
            }
            let micros = revenue[row] - cost.map_or(0, |cost| cost[row]);
            for at in cells_of(customer).into_iter().flatten() {
                counted.contribution[at][since as usize] += micros;
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
