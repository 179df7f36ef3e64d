//! `repeat`: repeat-purchase rates overall and per cohort, repeat within N days, days to the
//! second purchase, mean days between purchases, and purchase-number transitions P(k+1 | k).
//!
//! Purchase k's date comes from customer_periods (purchases per customer and day): the day on
//! which the running count of purchases reaches k. Two purchases on one day make the second
//! purchase 0 days after the first.
//!
//! Sharded: a shard's partial is its counts per cohort, a histogram of days to the second
//! purchase per cohort, and per cohort and (purchases − 1) the sum of the days from first to
//! last purchase; all add up. Quantiles come from the merged histogram (exact: the days are
//! integers), and the mean days between purchases from the exact sums.

use anyhow::Result;
use polars::prelude::*;
use serde::Deserialize;

use super::shard::{merge_sums, tables_at, Finalized, Partial, Sharded};
use super::{Kind, Stage, StageInputs, ORDERS};
use crate::core::diagnostic::Diagnostics;
use crate::core::options::TableReader;
use crate::core::period::{to_days, Granularity, PeriodIndex};
use crate::core::prepare::{customer_rows, day_values, values, SharedTables};

/// Options of `kind = "repeat"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepeatOptions {
    /// Cohort period for the per-cohort rows. Default month.
    pub cohort_granularity: Granularity,
    /// Windows for "repeat within N days of the first purchase". Default [90].
    pub within_days: Vec<u32>,
    /// Transitions P(k+1 | k) for k = 1..max_purchases. Default 5.
    pub max_purchases: u32,
    /// A customer counts at step k only if purchase k is at least this many days before as_of.
    /// Default 90.
    pub min_observation_days: u32,
}

impl Default for RepeatOptions {
    fn default() -> Self {
        RepeatOptions {
            cohort_granularity: Granularity::Month,
            within_days: vec![90],
            max_purchases: 5,
            min_observation_days: 90,
        }
    }
}

impl RepeatOptions {
    fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.within_days.is_empty() || self.within_days.contains(&0) {
            errors.push((
                "within_days",
                format!("`within_days` needs positive day counts, got {:?}", self.within_days),
            ));
        }
        let mut sorted = self.within_days.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.within_days.len() {
            errors.push((
                "within_days",
                format!("`within_days` has duplicates: {:?}", self.within_days),
            ));
        }
        if !(1..=100).contains(&self.max_purchases) {
            errors.push((
                "max_purchases",
                format!("`max_purchases` must be between 1 and 100, got {}", self.max_purchases),
            ));
        }
        errors
    }
}

pub static KIND: Kind = Kind {
    name: "repeat",
    summary: "repeat rates overall and per cohort, repeat within N days, time to second purchase, P(k+1 | k)",
    input: ORDERS,
    tables: &["summary", "transitions"],
    customer_table: None,
    options: serde_aux::serde_introspection::serde_introspect::<RepeatOptions>,
    parse,
};

fn parse(reader: &TableReader, common: &[&str], diagnostics: &mut Diagnostics) -> Option<Box<dyn Stage>> {
    let options = super::parse_options::<RepeatOptions>(reader, common, diagnostics)?;
    super::lifecycle::report(reader, options.check(), diagnostics).then(|| Box::new(options) as Box<dyn Stage>)
}

impl Stage for RepeatOptions {}

impl Sharded for RepeatOptions {
    fn partial(&self, inputs: &StageInputs, _earlier: &[Partial]) -> Result<Partial> {
        let (first_cohort, tallies) = cohort_tallies(inputs.shared()?, self)?;
        partial_of(first_cohort, tallies, self)
    }

    fn merge(&self, _pass: usize, parts: Vec<Partial>) -> Result<Partial> {
        Ok(vec![
            merge_sums(tables_at(&parts, 0)?, &["cohort"])?,
            merge_sums(tables_at(&parts, 1)?, &["cohort", "gap"])?,
            merge_sums(tables_at(&parts, 2)?, &["cohort", "repeats"])?,
        ])
    }

    fn finalize(&self, merged: Vec<Partial>, _whole: &StageInputs, _as_of: chrono::NaiveDate) -> Result<Finalized> {
        let merged = super::shard::only_pass(merged)?;
        let rows = merged_rows(&merged, self)?;
        Ok(Finalized::tables(vec![
            summary(&rows, self)?,
            transitions(&rows, self)?,
        ]))
    }
}

/// One group's tallies: the overall row or one cohort.
#[derive(Debug, Clone, Default)]
struct Tally {
    customers: i64,
    repeat_customers: i64,
    /// Per `within_days` window: customers observed that long, and those who repeated in it.
    observed: Vec<i64>,
    repeated: Vec<i64>,
    /// Days from the first to the second purchase: each repeat customer's in the walk; after
    /// `merged_rows`, each distinct value once, sorted, with its count in `gap_counts`.
    gaps: Vec<i32>,
    gap_counts: Vec<i64>,
    /// Per purchases − 1 of repeat customers, the sum of their days from first to last
    /// purchase: Σ (last − first) / (orders − 1) is exact from it.
    between: std::collections::BTreeMap<i64, i64>,
    between_count: i64,
    /// Per k = 1..=max_purchases: customers whose k-th purchase is on or before the cutoff, and
    /// those of them with a (k+1)-th purchase.
    at: Vec<i64>,
    next: Vec<i64>,
}

impl Tally {
    fn new(options: &RepeatOptions) -> Self {
        let windows = options.within_days.len();
        let steps = options.max_purchases as usize;
        Tally {
            observed: vec![0; windows],
            repeated: vec![0; windows],
            at: vec![0; steps],
            next: vec![0; steps],
            ..Tally::default()
        }
    }

    fn add(&mut self, other: &Tally) {
        self.customers += other.customers;
        self.repeat_customers += other.repeat_customers;
        for (total, part) in [
            (&mut self.observed, &other.observed),
            (&mut self.repeated, &other.repeated),
            (&mut self.at, &other.at),
            (&mut self.next, &other.next),
        ] {
            total.iter_mut().zip(part).for_each(|(t, p)| *t += p);
        }
        self.gaps.extend_from_slice(&other.gaps);
        for (repeats, days) in &other.between {
            *self.between.entry(*repeats).or_insert(0) += days;
        }
        self.between_count += other.between_count;
    }

    /// The mean of (last − first) / (orders − 1) over repeat customers, from the exact sums.
    fn mean_between(&self) -> Option<f64> {
        let total: f64 = self
            .between
            .iter()
            .map(|(&repeats, &days)| days as f64 / repeats as f64)
            .sum();
        (self.between_count > 0).then(|| total / self.between_count as f64)
    }
}

/// Linear-interpolated quantile, as `quantile`, of the values `sorted` (ascending, distinct)
/// each repeated `counts` times.
fn histogram_quantile(sorted: &[i32], counts: &[i64], q: f64) -> Option<f64> {
    let n: i64 = counts.iter().sum();
    if n == 0 {
        return None;
    }
    // The value at 0-based position `at` of the expanded list.
    let value_at = |at: i64| -> f64 {
        let mut seen = 0;
        for (&value, &count) in sorted.iter().zip(counts) {
            seen += count;
            if at < seen {
                return f64::from(value);
            }
        }
        f64::from(*sorted.last().expect("n > 0"))
    };
    if n == 1 {
        return Some(value_at(0));
    }
    let position = (n - 1) as f64 * q;
    let (low, high) = (position as i64, position.ceil() as i64);
    let lower = value_at(low);
    if low == high {
        return Some(lower);
    }
    let upper = value_at(high);
    Some(if lower == upper {
        lower
    } else {
        (position - low as f64) * (upper - lower) + lower
    })
}

/// Linear-interpolated quantile of sorted values, as polars computes it (the reference
/// `histogram_quantile` is held to): position
/// (n − 1)·q, interpolated between its neighbours; `None` when there are no values.
#[cfg(test)]
fn quantile(sorted: &[i32], q: f64) -> Option<f64> {
    let (&first, n) = (sorted.first()?, sorted.len());
    if n == 1 {
        return Some(f64::from(first));
    }
    let position = (n - 1) as f64 * q;
    let (low, high) = (position as usize, position.ceil() as usize);
    let lower = f64::from(sorted[low]);
    if low == high {
        return Some(lower);
    }
    let upper = f64::from(sorted[high]);
    Some(if lower == upper {
        lower
    } else {
        (position - low as f64) * (upper - lower) + lower
    })
}

/// What the walk reads: customer_facts columns (rows = customer keys), customer_periods columns,
/// and each customer's cohort slot (cohort index − the first cohort's).
struct Walk<'a> {
    first: &'a [i32],
    last: &'a [i32],
    orders: &'a [i64],
    keys: &'a [u32],
    dates: &'a [i32],
    purchases: &'a [u32],
    cohort: &'a [u32],
    cohorts: usize,
    as_of: i32,
    cutoff: i32,
    options: &'a RepeatOptions,
}

impl Walk<'_> {
    /// The tallies of the customers in `range`, one per cohort slot.
    fn tallies(&self, range: std::ops::Range<usize>) -> Vec<Tally> {
        let mut tallies = vec![Tally::new(self.options); self.cohorts];
        let steps = self.options.max_purchases as usize;
        // Purchase k's day for k = 1..=max(steps, 2).
        let mut kth = vec![0i32; steps.max(2)];
        for (customer, rows) in customer_rows(self.keys, range) {
            let tally = &mut tallies[self.cohort[customer] as usize];
            let (first, orders) = (self.first[customer], self.orders[customer]);
            // The day on which the running count of purchases reaches each k.
            let mut running = 0usize;
            for row in rows {
                let bought = self.purchases[row] as usize;
                let reached = (running + bought).min(kth.len());
                for slot in kth.iter_mut().take(reached).skip(running) {
                    *slot = self.dates[row];
                }
                running += bought;
            }
            tally.customers += 1;
            let repeat = orders >= 2;
            tally.repeat_customers += i64::from(repeat);
            let observed_days = self.as_of - first;
            for (w, &n) in self.options.within_days.iter().enumerate() {
                let observed = observed_days >= n as i32;
                tally.observed[w] += i64::from(observed);
                tally.repeated[w] += i64::from(observed && repeat && kth[1] - first <= n as i32);
            }
            if repeat {
                tally.gaps.push(kth[1] - first);
                *tally.between.entry(orders - 1).or_insert(0) += i64::from(self.last[customer] - first);
                tally.between_count += 1;
            }
            for k in 1..=steps.min(orders.max(0) as usize) {
                if kth[k - 1] <= self.cutoff {
                    tally.at[k - 1] += 1;
                    tally.next[k - 1] += i64::from(orders > k as i64);
                }
            }
        }
        tallies
    }
}

/// The tallies of one shard's customers per cohort slot, and the first slot's cohort index.
fn cohort_tallies(shared: &SharedTables, options: &RepeatOptions) -> Result<(i32, Vec<Tally>)> {
    use rayon::prelude::*;
    let (facts, periods) = (&shared.customer_facts, &shared.customer_periods()?);
    let first = day_values(facts, "first_purchase_date")?;
    let as_of = to_days(shared.as_of);
    let granularity = options.cohort_granularity;
    let (low, high) = first.iter().fold((as_of, as_of), |(lo, hi), &d| (lo.min(d), hi.max(d)));
    let index = PeriodIndex::new(granularity, low, high);
    let first_cohort = index.of(low);
    let cohort: Vec<u32> = first.par_iter().map(|&d| (index.of(d) - first_cohort) as u32).collect();
    let walk = Walk {
        first,
        last: day_values(facts, "last_purchase_date")?,
        orders: values::<Int64Type>(facts, "orders")?,
        keys: values::<UInt32Type>(periods, "customer_key")?,
        dates: day_values(periods, "date")?,
        purchases: values::<UInt32Type>(periods, "purchases")?,
        cohort: &cohort,
        cohorts: (index.of(high) - first_cohort + 1) as usize,
        as_of,
        cutoff: as_of - options.min_observation_days as i32,
        options,
    };
    // Fixed-size chunks, added up in order a few at a time (each chunk holds a tally per
    // cohort): the sums come out the same whatever the thread count.
    const CHUNK: usize = 1 << 16;
    let customers = first.len();
    let chunks: Vec<usize> = (0..customers.div_ceil(CHUNK)).collect();
    let mut cohorts = vec![Tally::new(options); walk.cohorts];
    for batch in chunks.chunks(2 * rayon::current_num_threads().max(1)) {
        let parts: Vec<Vec<Tally>> = batch
            .par_iter()
            .map(|&chunk| walk.tallies(chunk * CHUNK..((chunk + 1) * CHUNK).min(customers)))
            .collect();
        for part in &parts {
            cohorts.iter_mut().zip(part).for_each(|(total, part)| total.add(part));
        }
    }
    Ok((first_cohort, cohorts))
}

/// The partial of one shard's tallies: `[counts, gaps, between]`. `counts`: cohort (index),
/// customers, repeat_customers, observed_<w> and repeated_<w> per window, at_<k> and next_<k>
/// per step, between_count; `gaps`: cohort, gap (days), customers; `between`: cohort, repeats
/// (purchases − 1), days (Σ last − first). Cohorts without customers are left out.
fn partial_of(first_cohort: i32, tallies: Vec<Tally>, options: &RepeatOptions) -> Result<Partial> {
    let kept: Vec<(i32, Tally)> = tallies
        .into_iter()
        .enumerate()
        .filter(|(_, tally)| tally.customers > 0)
        .map(|(slot, tally)| (first_cohort + slot as i32, tally))
        .collect();
    let each = |name: String, f: &dyn Fn(&Tally) -> i64| {
        Column::new(name.into(), kept.iter().map(|(_, t)| f(t)).collect::<Vec<i64>>())
    };
    let mut counts = vec![
        Column::new("cohort".into(), kept.iter().map(|(c, _)| *c).collect::<Vec<i32>>()),
        each("customers".into(), &|t| t.customers),
        each("repeat_customers".into(), &|t| t.repeat_customers),
        each("between_count".into(), &|t| t.between_count),
    ];
    for w in 0..options.within_days.len() {
        counts.push(each(format!("observed_{w}"), &|t| t.observed[w]));
        counts.push(each(format!("repeated_{w}"), &|t| t.repeated[w]));
    }
    for k in 0..options.max_purchases as usize {
        counts.push(each(format!("at_{k}"), &|t| t.at[k]));
        counts.push(each(format!("next_{k}"), &|t| t.next[k]));
    }
    let (mut gap_cohort, mut gap, mut gap_count) = (Vec::new(), Vec::new(), Vec::new());
    let (mut between_cohort, mut repeats, mut days) = (Vec::new(), Vec::new(), Vec::new());
    for (cohort, mut tally) in kept.iter().cloned() {
        tally.gaps.sort_unstable();
        for run in tally.gaps.chunk_by(|a, b| a == b) {
            gap_cohort.push(cohort);
            gap.push(run[0]);
            gap_count.push(run.len() as i64);
        }
        for (&r, &d) in &tally.between {
            between_cohort.push(cohort);
            repeats.push(r);
            days.push(d);
        }
    }
    Ok(vec![
        DataFrame::new_infer_height(counts)?,
        DataFrame::new_infer_height(vec![
            Column::new("cohort".into(), gap_cohort),
            Column::new("gap".into(), gap),
            Column::new("customers".into(), gap_count),
        ])?,
        DataFrame::new_infer_height(vec![
            Column::new("cohort".into(), between_cohort),
            Column::new("repeats".into(), repeats),
            Column::new("days".into(), days),
        ])?,
    ])
}

/// The summary rows from the merged partial: overall (cohort null, when there are customers),
/// then each cohort, their gaps as a histogram.
fn merged_rows(merged: &Partial, options: &RepeatOptions) -> Result<Vec<(Option<i32>, Tally)>> {
    let (counts, gaps, between) = (&merged[0], &merged[1], &merged[2]);
    let ints = super::shard::int_values;
    let cohorts: Vec<i64> = ints(counts, "cohort")?;
    let mut rows: Vec<(Option<i32>, Tally)> = Vec::new();
    for (row, &cohort) in cohorts.iter().enumerate() {
        let value = |name: &str| -> Result<i64> { Ok(counts.column(name)?.i64()?.get(row).unwrap_or(0)) };
        let mut tally = Tally::new(options);
        tally.customers = value("customers")?;
        tally.repeat_customers = value("repeat_customers")?;
        tally.between_count = value("between_count")?;
        for w in 0..options.within_days.len() {
            tally.observed[w] = value(&format!("observed_{w}"))?;
            tally.repeated[w] = value(&format!("repeated_{w}"))?;
        }
        for k in 0..options.max_purchases as usize {
            tally.at[k] = value(&format!("at_{k}"))?;
            tally.next[k] = value(&format!("next_{k}"))?;
        }
        rows.push((Some(cohort as i32), tally));
    }
    // Gaps and spans, sorted by (cohort, value) in the merge: each cohort's come together.
    let slot = |cohort: i64| {
        cohorts
            .binary_search(&cohort)
            .map_err(|_| anyhow::anyhow!("cohort {cohort} without counts"))
    };
    let (gap_cohorts, gap_values, gap_counts) = (ints(gaps, "cohort")?, ints(gaps, "gap")?, ints(gaps, "customers")?);
    for ((&cohort, &gap), &count) in gap_cohorts.iter().zip(&gap_values).zip(&gap_counts) {
        let tally = &mut rows[slot(cohort)?].1;
        tally.gaps.push(gap as i32);
        tally.gap_counts.push(count);
    }
    let (between_cohorts, repeats, days) = (
        ints(between, "cohort")?,
        ints(between, "repeats")?,
        ints(between, "days")?,
    );
    for ((&cohort, &r), &d) in between_cohorts.iter().zip(&repeats).zip(&days) {
        *rows[slot(cohort)?].1.between.entry(r).or_insert(0) += d;
    }
    // Overall: the cohorts' counts added, their histograms merged.
    let mut overall = Tally::new(options);
    let mut histogram = std::collections::BTreeMap::<i32, i64>::new();
    for (_, tally) in &rows {
        let mut plain = tally.clone();
        plain.gaps.clear();
        overall.add(&plain);
        for (&gap, &count) in tally.gaps.iter().zip(&tally.gap_counts) {
            *histogram.entry(gap).or_insert(0) += count;
        }
    }
    (overall.gaps, overall.gap_counts) = histogram.into_iter().unzip();
    if overall.customers > 0 {
        rows.insert(0, (None, overall));
    }
    Ok(rows)
}

fn ratio(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn summary(rows: &[(Option<i32>, Tally)], options: &RepeatOptions) -> Result<DataFrame> {
    let int = |name: String, f: &dyn Fn(&Tally) -> i64| {
        Column::new(name.into(), rows.iter().map(|(_, t)| f(t)).collect::<Vec<_>>())
    };
    let float = |name: String, f: &dyn Fn(&Tally) -> Option<f64>| {
        Column::new(name.into(), rows.iter().map(|(_, t)| f(t)).collect::<Vec<_>>())
    };
    let mut columns = vec![
        cohort_column(rows, options.cohort_granularity)?,
        int("customers".into(), &|t| t.customers),
        int("repeat_customers".into(), &|t| t.repeat_customers),
        float("repeat_customer_rate".into(), &|t| {
            ratio(t.repeat_customers, t.customers)
        }),
    ];
    for (w, n) in options.within_days.iter().enumerate() {
        columns.push(int(format!("customers_observed_{n}d"), &|t| t.observed[w]));
        columns.push(int(format!("repeat_customers_{n}d"), &|t| t.repeated[w]));
        columns.push(float(format!("repeat_rate_{n}d"), &|t| {
            ratio(t.repeated[w], t.observed[w])
        }));
    }
    columns.extend([
        float("days_to_second_median".into(), &|t| {
            histogram_quantile(&t.gaps, &t.gap_counts, 0.5)
        }),
        float("days_to_second_p25".into(), &|t| {
            histogram_quantile(&t.gaps, &t.gap_counts, 0.25)
        }),
        float("days_to_second_p75".into(), &|t| {
            histogram_quantile(&t.gaps, &t.gap_counts, 0.75)
        }),
        float("days_to_second_mean".into(), &|t| {
            let n: i64 = t.gap_counts.iter().sum();
            let sum: i64 = t.gaps.iter().zip(&t.gap_counts).map(|(&g, &c)| i64::from(g) * c).sum();
            (n > 0).then(|| sum as f64 / n as f64)
        }),
        float("mean_days_between_purchases".into(), &|t| t.mean_between()),
    ]);
    Ok(DataFrame::new_infer_height(columns)?)
}

fn transitions(rows: &[(Option<i32>, Tally)], options: &RepeatOptions) -> Result<DataFrame> {
    let steps = options.max_purchases as usize;
    let each = |f: &dyn Fn(&Tally, usize) -> Option<f64>| -> Vec<Option<f64>> {
        rows.iter()
            .flat_map(|(_, t)| (0..steps).map(move |k| f(t, k)))
            .collect()
    };
    let counts = |f: &dyn Fn(&Tally, usize) -> i64| -> Vec<i64> {
        rows.iter()
            .flat_map(|(_, t)| (0..steps).map(move |k| f(t, k)))
            .collect()
    };
    let cohorts: Vec<(Option<i32>, Tally)> = rows
        .iter()
        .flat_map(|(cohort, _)| std::iter::repeat_n((*cohort, Tally::default()), steps))
        .collect();
    Ok(DataFrame::new_infer_height(vec![
        cohort_column(&cohorts, options.cohort_granularity)?,
        Column::new(
            "k".into(),
            (0..rows.len()).flat_map(|_| 1..=steps as i32).collect::<Vec<_>>(),
        ),
        Column::new("customers_at_k".into(), counts(&|t, k| t.at[k])),
        Column::new("customers_at_k_plus_1".into(), counts(&|t, k| t.next[k])),
        Column::new("probability".into(), each(&|t, k| ratio(t.next[k], t.at[k]))),
    ])?)
}

/// The rows' cohort start dates (null for the overall row).
fn cohort_column(rows: &[(Option<i32>, Tally)], granularity: Granularity) -> Result<Column> {
    let dates: Vec<Option<i32>> = rows
        .iter()
        .map(|(index, _)| index.map(|i| to_days(granularity.start_of(i))))
        .collect();
    Ok(Column::new("cohort".into(), dates).cast(&DataType::Date)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stages::shard::tests::{assert_shards_merge, random_orders, shared_of};

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Any split of the customers into shards merges to the whole's partial and tables.
        #[test]
        fn shards_merge_to_the_whole(orders in random_orders(), shards in 1usize..6, weekly: bool) {
            let stage = RepeatOptions {
                cohort_granularity: if weekly { Granularity::Week } else { Granularity::Month },
                within_days: vec![30, 90],
                max_purchases: 3,
                min_observation_days: 60,
            };
            assert_shards_merge(&stage, &shared_of(&orders, 60), shards);
        }

        /// Quantiles of a histogram equal those of the values it counts.
        #[test]
        fn histogram_quantiles_are_the_quantiles_of_the_values(
            mut values in proptest::collection::vec(0i32..40, 0..60),
            q in 0.0f64..=1.0,
        ) {
            values.sort_unstable();
            let (mut distinct, mut counts) = (Vec::new(), Vec::new());
            for run in values.chunk_by(|a, b| a == b) {
                distinct.push(run[0]);
                counts.push(run.len() as i64);
            }
            proptest::prop_assert_eq!(histogram_quantile(&distinct, &counts, q), quantile(&values, q));
        }
    }
}
