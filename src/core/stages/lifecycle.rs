//! `lifecycle`: every customer's stage at the end of each snapshot period, with customer
//! retention (CRR) and churn rates per period, and each customer's stage at as_of.
//!
//! Stages in precedence order: `new` (first purchase in the period), `reactivated` (a purchase in
//! the period more than `churn_days` after the previous one), `active` (last purchase ≤
//! `active_days` ago), `at_risk` (≤ `churn_days` ago), `churned`. The state walk is plain Rust
//! over each customer's sorted purchase days (one pass per customer, customers in parallel):
//! O(purchase days + snapshots) per customer.
//!
//! Sharded: a shard's partial is its tallies per snapshot period (stage counts, start, end,
//! retained, and customers churned for good from a period on), which add up; finalize lays out
//! the snapshots from the first acquisition and counts the settled customers as churned in every
//! later one. A customer's stage at as_of is per-customer: it needs its own days only.

use anyhow::Result;
use chrono::NaiveDate;
use polars::prelude::*;
use rayon::prelude::*;
use serde::Deserialize;

use super::shard::{merge_sums, tables_at, Finalized, Partial, Sharded};
use super::{Kind, Stage, StageInputs, ORDERS};
use crate::core::diagnostic::{Diagnostic, Diagnostics};
use crate::core::options::TableReader;
use crate::core::period::{from_days, to_days, Granularity};
use crate::core::prepare::{customer_rows, day_values, values, SharedTables};

/// Options of `kind = "lifecycle"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleOptions {
    /// Snapshot period: day | week | month (default) | quarter | year.
    pub granularity: Granularity,
    /// A customer is `active` when the last purchase is at most this many days old. Default 90.
    pub active_days: u32,
    /// … `at_risk` up to this many days, `churned` after. Default 180.
    pub churn_days: u32,
}

impl Default for LifecycleOptions {
    fn default() -> Self {
        LifecycleOptions {
            granularity: Granularity::Month,
            active_days: 90,
            churn_days: 180,
        }
    }
}

impl LifecycleOptions {
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.active_days == 0 {
            errors.push(("active_days", "`active_days` must be at least 1".to_string()));
        }
        if self.churn_days <= self.active_days {
            errors.push((
                "churn_days",
                format!(
                    "`churn_days` ({}) must be greater than `active_days` ({})",
                    self.churn_days, self.active_days
                ),
            ));
        }
        errors
    }
}

pub const STAGES: [&str; 5] = ["new", "reactivated", "active", "at_risk", "churned"];
const NEW: usize = 0;
const REACTIVATED: usize = 1;
const ACTIVE: usize = 2;
const AT_RISK: usize = 3;
const CHURNED: usize = 4;

pub static KIND: Kind = Kind {
    name: "lifecycle",
    summary: "new/active/at_risk/churned/reactivated per snapshot with CRR and churn; stage per customer",
    input: ORDERS,
    tables: &["snapshots", "customers"],
    customer_table: Some(1),
    options: serde_aux::serde_introspection::serde_introspect::<LifecycleOptions>,
    parse,
};

fn parse(reader: &TableReader, common: &[&str], diagnostics: &mut Diagnostics) -> Option<Box<dyn Stage>> {
    let options = super::parse_options::<LifecycleOptions>(reader, common, diagnostics)?;
    report(reader, options.check(), diagnostics).then(|| Box::new(options) as Box<dyn Stage>)
}

/// Push option errors as diagnostics at their keys; true when there were none.
pub fn report(reader: &TableReader, errors: Vec<(&'static str, String)>, diagnostics: &mut Diagnostics) -> bool {
    let ok = errors.is_empty();
    for (key, message) in errors {
        diagnostics.push(Diagnostic::new(
            format!("{}: {message}", reader.context),
            reader.value_span(key).or_else(|| reader.span.clone()),
        ));
    }
    ok
}

impl Stage for LifecycleOptions {}

/// The tally columns of a partial, in `Tally` order: the five stages, then start, end,
/// retained, settled.
const TALLY_COLUMNS: [&str; 9] = [
    "new",
    "reactivated",
    "active",
    "at_risk",
    "churned",
    "start",
    "end",
    "retained",
    "settled",
];

impl Sharded for LifecycleOptions {
    fn partial(&self, inputs: &StageInputs, _earlier: &[Partial]) -> Result<Partial> {
        let shared = inputs.shared()?;
        let (windows, tallies, _) = walk_unsettled(shared, self, false)?;
        tallies_partial(self.granularity, &windows, &tallies)
    }

    /// The walk gives each customer's stage at as_of too: the rows come with the one pass.
    fn last_partial_with_rows(
        &self,
        inputs: &StageInputs,
        _earlier: &[Partial],
    ) -> Result<Option<(Partial, Vec<Option<DataFrame>>)>> {
        let shared = inputs.shared()?;
        let (windows, tallies, stages) = walk_unsettled(shared, self, true)?;
        let partial = tallies_partial(self.granularity, &windows, &tallies)?;
        Ok(Some((partial, vec![None, Some(customers_table(shared, &stages)?)])))
    }

    fn merge(&self, _pass: usize, parts: Vec<Partial>) -> Result<Partial> {
        Ok(vec![merge_sums(tables_at(&parts, 0)?, &["period"])?])
    }

    fn finalize(&self, merged: Vec<Partial>, _whole: &StageInputs, as_of: NaiveDate) -> Result<Finalized> {
        let merged = super::shard::only_pass(merged)?;
        let counts = &merged[0];
        let periods: Vec<i32> = counts.column("period")?.i32()?.into_no_null_iter().collect();
        // Snapshots from the first period with a customer (the shards' walks start at their own
        // first acquisition: their leading periods count nothing).
        let columns: Vec<Vec<i64>> = TALLY_COLUMNS
            .iter()
            .map(|name| Ok(counts.column(name)?.i64()?.into_no_null_iter().collect()))
            .collect::<Result<_>>()?;
        let first = (0..periods.len())
            .find(|&row| columns.iter().any(|values| values[row] != 0))
            .map(|row| periods[row])
            .unwrap_or(self.granularity.index_of(as_of));
        let windows = windows(self.granularity.start_of(first).min(as_of), as_of, self.granularity);
        let mut tallies = vec![Tally::default(); windows.len()];
        for (row, &period) in periods.iter().enumerate() {
            if let Some(tally) = usize::try_from(period - first).ok().and_then(|w| tallies.get_mut(w)) {
                let values: [u64; 9] = std::array::from_fn(|c| columns[c][row] as u64);
                tally.add(&Tally::from_values(values));
            }
        }
        settle(&mut tallies);
        Ok(Finalized {
            tables: vec![Some(snapshots(&windows, &tallies)?), None],
            globals: Vec::new(),
        })
    }
}

/// A shard's partial: its tallies per snapshot period (absolute index), unsettled.
fn tallies_partial(granularity: Granularity, windows: &[(i32, i32)], tallies: &[Tally]) -> Result<Partial> {
    let period = granularity.index_of(from_days(windows[0].0));
    let mut columns = vec![Column::new(
        "period".into(),
        (period..period + windows.len() as i32).collect::<Vec<i32>>(),
    )];
    for (c, name) in TALLY_COLUMNS.iter().enumerate() {
        let values: Vec<i64> = tallies.iter().map(|t| t.values()[c] as i64).collect();
        columns.push(Column::new((*name).into(), values));
    }
    Ok(vec![DataFrame::new_infer_height(columns)?])
}

/// The stage in snapshot `window` of a customer whose purchase days before the period are
/// `days[..seen]` and by its snapshot date `days[..upto]` (`upto` ≥ 1), in precedence order.
fn stage_in(days: &[i32], seen: usize, upto: usize, window: (i32, i32), options: &LifecycleOptions) -> usize {
    let (start, end) = window;
    let (first, last) = (days[0], days[upto - 1]);
    let (churn, active) = (options.churn_days as i32, options.active_days as i32);
    if first >= start {
        NEW
    } else if (seen.max(1)..upto).any(|i| days[i] - days[i - 1] > churn) {
        REACTIVATED
    } else if end - last <= active {
        ACTIVE
    } else if end - last <= churn {
        AT_RISK
    } else {
        CHURNED
    }
}

/// Per-snapshot tallies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub stages: [u64; 5],
    pub start: u64,
    pub end: u64,
    pub retained: u64,
    /// Customers churned for good from this snapshot on (no purchase left), counted into
    /// `stages[churned]` of this and every later snapshot by `settle`: the walk stops there.
    pub settled: u64,
}

impl Tally {
    /// The counts in `TALLY_COLUMNS` order.
    fn values(&self) -> [u64; 9] {
        let [new, reactivated, active, at_risk, churned] = self.stages;
        [
            new,
            reactivated,
            active,
            at_risk,
            churned,
            self.start,
            self.end,
            self.retained,
            self.settled,
        ]
    }

    fn from_values(values: [u64; 9]) -> Tally {
        let [new, reactivated, active, at_risk, churned, start, end, retained, settled] = values;
        Tally {
            stages: [new, reactivated, active, at_risk, churned],
            start,
            end,
            retained,
            settled,
        }
    }

    fn add(&mut self, other: &Tally) {
        self.stages
            .iter_mut()
            .zip(other.stages)
            .for_each(|(total, part)| *total += part);
        self.start += other.start;
        self.end += other.end;
        self.retained += other.retained;
        self.settled += other.settled;
    }
}

/// Count settled customers as churned in their snapshot and every later one.
pub fn settle(tallies: &mut [Tally]) {
    let mut settled = 0;
    for tally in tallies {
        settled += std::mem::take(&mut tally.settled);
        tally.stages[CHURNED] += settled;
    }
}

/// Snapshot windows: (period start, snapshot date) from the first acquisition to as_of.
pub fn windows(first: NaiveDate, as_of: NaiveDate, granularity: Granularity) -> Vec<(i32, i32)> {
    let first_index = granularity.index_of(first);
    let last_index = granularity.index_of(as_of);
    (first_index..=last_index)
        .map(|index| {
            let end = if index == last_index {
                as_of
            } else {
                granularity.end_of(index)
            };
            (to_days(granularity.start_of(index)), to_days(end))
        })
        .collect()
}

/// The state walk for one customer; `days` are its sorted purchase days. Adds to `tallies` and
/// returns the stage at the last snapshot. Once churned with no purchase left, the customer
/// stays churned (not alive: no start, end or retained counts): the walk marks the next
/// snapshot `settled` and stops, so a customer costs its active snapshots, not all of them.
pub fn walk_customer(days: &[i32], windows: &[(i32, i32)], options: &LifecycleOptions, tallies: &mut [Tally]) -> usize {
    let first = days[0];
    let mut seen = 0usize; // purchase days on or before the previous snapshot
    let mut alive_before = false; // not churned at the end of the previous snapshot
    let mut stage = CHURNED;
    // The snapshots before the first purchase count nothing: start at the first one after it.
    let from = windows.partition_point(|&(_, end)| end < first);
    for (w, window) in windows.iter().enumerate().skip(from) {
        let end = window.1;
        let mut upto = seen;
        while upto < days.len() && days[upto] <= end {
            upto += 1;
        }
        stage = stage_in(days, seen, upto, *window, options);
        let alive = stage != CHURNED;
        let tally = &mut tallies[w];
        tally.stages[stage] += 1;
        tally.start += alive_before as u64;
        tally.end += alive as u64;
        tally.retained += (alive_before && alive) as u64;
        alive_before = alive;
        seen = upto;
        if !alive && upto == days.len() {
            if let Some(next) = tallies.get_mut(w + 1) {
                next.settled += 1;
            }
            return CHURNED;
        }
    }
    stage
}

/// The walk over every customer: the snapshot windows, their tallies (settled) and each
/// customer's stage code at as_of, in customer_key order.
pub struct Walked {
    pub windows: Vec<(i32, i32)>,
    pub tallies: Vec<Tally>,
    pub stages: Vec<u8>,
}

impl Walked {
    /// (snapshot date, crr) in order, crr `None` when nobody was un-churned at the start.
    pub fn crr(&self) -> Vec<(NaiveDate, Option<f64>)> {
        self.windows
            .iter()
            .zip(&self.tallies)
            .map(|(window, t)| {
                (
                    from_days(window.1),
                    (t.start > 0).then(|| t.retained as f64 / t.start as f64),
                )
            })
            .collect()
    }
}

/// Walk every customer's purchase days (customer_periods rows with a purchase), customers in
/// parallel chunks of fixed size.
pub fn walk(shared: &SharedTables, options: &LifecycleOptions) -> Result<Walked> {
    let (windows, mut tallies, stages) = walk_unsettled(shared, options, true)?;
    settle(&mut tallies);
    Ok(Walked {
        windows,
        tallies,
        stages,
    })
}

/// The walk's windows (from these customers' first acquisition to as_of), tallies before
/// `settle`, and each customer's stage code at as_of (when `with_stages`).
fn walk_unsettled(
    shared: &SharedTables,
    options: &LifecycleOptions,
    with_stages: bool,
) -> Result<(Vec<(i32, i32)>, Vec<Tally>, Vec<u8>)> {
    let periods = &shared.customer_periods()?;
    let keys = values::<UInt32Type>(periods, "customer_key")?;
    let dates = day_values(periods, "date")?;
    let purchases = values::<UInt32Type>(periods, "purchases")?;
    let customers = shared.customer_facts.height();
    let earliest = day_values(&shared.customer_facts, "first_purchase_date")?
        .iter()
        .min()
        .copied()
        .map(from_days)
        .unwrap_or(shared.as_of);
    let windows = windows(earliest.min(shared.as_of), shared.as_of, options.granularity);

    const CHUNK: usize = 1 << 16;
    let results: Vec<(Vec<Tally>, Vec<u8>)> = (0..customers.div_ceil(CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let range = chunk * CHUNK..((chunk + 1) * CHUNK).min(customers);
            let mut tallies = vec![Tally::default(); windows.len()];
            let mut stages = Vec::with_capacity(range.len());
            let mut days = Vec::new();
            for (_, rows) in customer_rows(keys, range) {
                // Days with a purchase (refund-only days are left out).
                days.clear();
                days.extend(rows.filter(|&r| purchases[r] > 0).map(|r| dates[r]));
                let stage = if days.is_empty() {
                    CHURNED
                } else {
                    walk_customer(&days, &windows, options, &mut tallies)
                };
                if with_stages {
                    stages.push(stage as u8);
                }
            }
            (tallies, stages)
        })
        .collect();
    let mut tallies = vec![Tally::default(); windows.len()];
    let mut stages: Vec<u8> = Vec::with_capacity(customers);
    for (chunk_tallies, chunk_stages) in &results {
        tallies
            .iter_mut()
            .zip(chunk_tallies)
            .for_each(|(total, part)| total.add(part));
        stages.extend_from_slice(chunk_stages);
    }
    tracing::debug!(
        "lifecycle: {customers} customers walked ({:?}, active {} d, churn {} d)",
        options.granularity,
        options.active_days,
        options.churn_days
    );
    Ok((windows, tallies, stages))
}

/// The snapshots table of settled tallies.
fn snapshots(windows: &[(i32, i32)], tallies: &[Tally]) -> Result<DataFrame> {
    let crr: Vec<Option<f64>> = tallies
        .iter()
        .map(|t| (t.start > 0).then(|| t.retained as f64 / t.start as f64))
        .collect();
    let count = |f: &dyn Fn(&Tally) -> u64| tallies.iter().map(|t| f(t) as i64).collect::<Vec<i64>>();
    let mut columns = vec![
        Column::new("snapshot_date".into(), windows.iter().map(|w| w.1).collect::<Vec<_>>()).cast(&DataType::Date)?,
        Column::new("period_start".into(), windows.iter().map(|w| w.0).collect::<Vec<_>>()).cast(&DataType::Date)?,
    ];
    for (s, name) in STAGES.iter().enumerate() {
        columns.push(Column::new((*name).into(), count(&|t| t.stages[s])));
    }
    columns.extend([
        Column::new("start_customers".into(), count(&|t| t.start)),
        Column::new("end_customers".into(), count(&|t| t.end)),
        Column::new("new_customers".into(), count(&|t| t.stages[NEW])),
        Column::new("retained_customers".into(), count(&|t| t.retained)),
        Column::new("crr".into(), crr.clone()),
        Column::new(
            "churn_rate".into(),
            crr.iter().map(|c| c.map(|v| 1.0 - v)).collect::<Vec<_>>(),
        ),
    ]);
    Ok(DataFrame::new_infer_height(columns)?)
}

/// Each customer's stage at as_of (codes in customer_key order) and days since the last
/// purchase.
fn customers_table(shared: &SharedTables, stages: &[u8]) -> Result<DataFrame> {
    let as_of_days = to_days(shared.as_of) as i64;
    let stage_codes = IdxCa::from_vec("".into(), stages.par_iter().map(|&s| IdxSize::from(s)).collect());
    Ok(shared
        .customer_facts
        .clone()
        .lazy()
        .select([
            col("customer_id"),
            // Stage names looked up by code: five strings, not one per customer.
            lit(Series::new("stage".into(), STAGES))
                .gather(lit(stage_codes.into_series()), false)
                .alias("stage"),
            (lit(as_of_days) - col("last_purchase_date").cast(DataType::Int32).cast(DataType::Int64))
                .alias("days_since_last_purchase"),
        ])
        .collect()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> i32 {
        to_days(NaiveDate::from_ymd_opt(y, m, d).unwrap())
    }

    /// One customer's tallies by `walk_customer` (settled), and its stage at the last snapshot.
    fn walked(days: &[i32], windows: &[(i32, i32)], options: &LifecycleOptions) -> (Vec<Tally>, usize) {
        let mut tallies = vec![Tally::default(); windows.len()];
        let stage = walk_customer(days, windows, options, &mut tallies);
        settle(&mut tallies);
        (tallies, stage)
    }

    /// The definition snapshot by snapshot, from the first snapshot at or after the first
    /// purchase to the last: the reference `walk_customer` is held to.
    fn by_definition(days: &[i32], windows: &[(i32, i32)], options: &LifecycleOptions) -> (Vec<Tally>, usize) {
        let (active, churn) = (options.active_days as i32, options.churn_days as i32);
        let mut tallies = vec![Tally::default(); windows.len()];
        let (mut alive_before, mut stage) = (false, CHURNED);
        for (w, &(start, end)) in windows.iter().enumerate() {
            let seen: Vec<i32> = days.iter().copied().filter(|&d| d <= end).collect();
            let Some(&last) = seen.last() else {
                continue;
            };
            let in_window = seen.iter().filter(|&&d| d >= start).count();
            let gap_in_window = (seen.len() - in_window..seen.len()).any(|i| i > 0 && seen[i] - seen[i - 1] > churn);
            stage = if days[0] >= start {
                NEW
            } else if gap_in_window {
                REACTIVATED
            } else if end - last <= active {
                ACTIVE
            } else if end - last <= churn {
                AT_RISK
            } else {
                CHURNED
            };
            let alive = stage != CHURNED;
            tallies[w].stages[stage] += 1;
            tallies[w].start += u64::from(alive_before);
            tallies[w].end += u64::from(alive);
            tallies[w].retained += u64::from(alive_before && alive);
            alive_before = alive;
        }
        (tallies, stage)
    }

    #[test]
    fn a_customer_churns_and_is_reactivated() {
        let options = LifecycleOptions::default();
        let as_of = NaiveDate::from_ymd_opt(2024, 12, 15).unwrap();
        let windows = windows(NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(), as_of, Granularity::Month);
        assert_eq!(windows.len(), 12);
        assert_eq!(windows[11], (day(2024, 12, 1), day(2024, 12, 15)));
        // Purchases 01-10 and 10-20 (284 days later > 180: reactivated in October).
        let days = [day(2024, 1, 10), day(2024, 10, 20)];
        let (tallies, stage) = walked(&days, &windows, &options);
        let stage_in = |month: usize| STAGES[(0..5).find(|&s| tallies[month].stages[s] == 1).unwrap()];
        assert_eq!(stage_in(0), "new");
        assert_eq!(stage_in(1), "active"); // 02-29: 50 days
        assert_eq!(stage_in(3), "at_risk"); // 04-30: 111 days
        assert_eq!(stage_in(5), "at_risk"); // 06-30: 172 days
        assert_eq!(stage_in(6), "churned"); // 07-31: 203 days
        assert_eq!(stage_in(9), "reactivated");
        assert_eq!(stage_in(10), "active");
        assert_eq!(STAGES[stage], "active");
        // Not churned at the start of July, churned at its end: counts in S, not retained.
        assert_eq!((tallies[6].start, tallies[6].end, tallies[6].retained), (1, 0, 0));
        // Reactivated in October: not in S, in E.
        assert_eq!((tallies[9].start, tallies[9].end, tallies[9].retained), (0, 1, 0));
        // January: acquired, so not in S.
        assert_eq!((tallies[0].start, tallies[0].end), (0, 1));
        assert_eq!((tallies, stage), by_definition(&days, &windows, &options));
    }

    #[test]
    fn a_churned_customer_with_no_purchase_left_stays_churned() {
        let options = LifecycleOptions::default();
        let as_of = NaiveDate::from_ymd_opt(2024, 12, 15).unwrap();
        let windows = windows(NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(), as_of, Granularity::Month);
        // One purchase 01-10: at risk until June, churned from July (203 days) to December.
        let (tallies, stage) = walked(&[day(2024, 1, 10)], &windows, &options);
        assert_eq!(STAGES[stage], "churned");
        // The walk stops once the customer is churned for good: settled in August (July is
        // counted as the first churned month), counted churned from there on by `settle`.
        let mut unsettled = vec![Tally::default(); windows.len()];
        walk_customer(&[day(2024, 1, 10)], &windows, &options, &mut unsettled);
        let settled: Vec<u64> = unsettled.iter().map(|tally| tally.settled).collect();
        assert_eq!(
            settled,
            (0..windows.len())
                .map(|month| u64::from(month == 7))
                .collect::<Vec<_>>()
        );
        for (month, tally) in tallies.iter().enumerate() {
            let churned = u64::from(month >= 6);
            assert_eq!(tally.stages[CHURNED], churned, "month {month}");
            assert_eq!(tally.stages.iter().sum::<u64>(), 1, "month {month}");
            assert_eq!(tally.end, 1 - churned, "month {month}");
            assert_eq!(tally.start, u64::from((1..=6).contains(&month)), "month {month}");
        }
    }

    /// Random customers (bursts of purchases, long gaps) over every granularity and several
    /// thresholds: the walk (which starts at the first purchase and stops once a customer is
    /// churned for good) counts what the definition counts snapshot by snapshot, alone and
    /// summed over customers.
    #[test]
    fn walk_is_the_definition_snapshot_by_snapshot() {
        let mut state = 5u64;
        let mut next = |below: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % below
        };
        let first = NaiveDate::from_ymd_opt(2021, 3, 17).unwrap();
        let as_of = NaiveDate::from_ymd_opt(2024, 11, 30).unwrap();
        let span = (to_days(as_of) - to_days(first)) as u64;
        for granularity in [
            Granularity::Day,
            Granularity::Week,
            Granularity::Month,
            Granularity::Quarter,
            Granularity::Year,
        ] {
            let windows = windows(first, as_of, granularity);
            for (active_days, churn_days) in [(90, 180), (1, 2), (30, 400), (7, 8)] {
                let options = LifecycleOptions {
                    granularity,
                    active_days,
                    churn_days,
                };
                let mut all = vec![Tally::default(); windows.len()];
                let mut expected = vec![Tally::default(); windows.len()];
                for _ in 0..60 {
                    let mut days: Vec<i32> = (0..1 + next(12))
                        .map(|_| {
                            let day = next(span + 1) as i32;
                            let burst = if next(2) == 0 { next(10) as i32 } else { 0 };
                            to_days(first) + (day + burst).min(span as i32)
                        })
                        .collect();
                    days.sort_unstable();
                    days.dedup();
                    let (want, want_stage) = by_definition(&days, &windows, &options);
                    let (got, stage) = walked(&days, &windows, &options);
                    assert_eq!(got, want, "{granularity:?} {active_days}/{churn_days} {days:?}");
                    assert_eq!(stage, want_stage, "{granularity:?} {days:?}");
                    walk_customer(&days, &windows, &options, &mut all);
                    for (total, one) in expected.iter_mut().zip(&want) {
                        for s in 0..5 {
                            total.stages[s] += one.stages[s];
                        }
                        total.start += one.start;
                        total.end += one.end;
                        total.retained += one.retained;
                    }
                }
                settle(&mut all);
                assert_eq!(all, expected);
            }
        }
    }
}

#[cfg(test)]
mod shard_tests {
    use super::*;
    use crate::core::stages::shard::tests::{assert_shards_merge, random_orders, shared_of};

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Any split of the customers into shards merges to the whole's tallies, snapshots and
        /// per-customer stages.
        #[test]
        fn shards_merge_to_the_whole(orders in random_orders(), shards in 1usize..6, weekly: bool) {
            let stage = LifecycleOptions {
                granularity: if weekly { Granularity::Week } else { Granularity::Month },
                active_days: 30,
                churn_days: 90,
            };
            assert_shards_merge(&stage, &shared_of(&orders, 60), shards);
        }
    }
}
