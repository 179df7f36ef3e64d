//! `repeat`: repeat-purchase rates overall and per cohort, repeat within N days, days to the
//! second purchase, mean days between purchases, and purchase-number transitions P(k+1 | k).
//!
//! Purchase k's date comes from customer_periods (purchases per customer and day): the day on
//! which the running count of purchases reaches k. Two purchases on one day make the second
//! purchase 0 days after the first.

use anyhow::Result;
use polars::prelude::*;
use serde::Deserialize;

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

impl Stage for RepeatOptions {
    fn run(&self, inputs: &StageInputs) -> Result<Vec<DataFrame>> {
        repeat(inputs.shared()?, self)
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
    /// Days from the first to the second purchase of each repeat customer.
    gaps: Vec<i32>,
    /// Sum and count of (last − first) / (orders − 1) over repeat customers.
    between_sum: f64,
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
        self.between_sum += other.between_sum;
        self.between_count += other.between_count;
    }
}

/// Linear-interpolated quantile of sorted values, as polars computes it: position
/// (n − 1)·q, interpolated between its neighbours; `None` when there are no values.
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
                tally.between_sum += f64::from(self.last[customer] - first) / (orders - 1) as f64;
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

pub fn repeat(shared: &SharedTables, options: &RepeatOptions) -> Result<Vec<DataFrame>> {
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
    let mut overall = Tally::new(options);
    cohorts.iter().for_each(|cohort| overall.add(cohort));
    // Rows: overall (cohort null, when there are customers), then each cohort with customers.
    let mut rows: Vec<(Option<i32>, Tally)> = Vec::new();
    if overall.customers > 0 {
        rows.push((None, overall));
    }
    rows.extend(
        cohorts
            .into_iter()
            .enumerate()
            .filter(|(_, tally)| tally.customers > 0)
            .map(|(slot, tally)| (Some(first_cohort + slot as i32), tally)),
    );
    rows.par_iter_mut().for_each(|(_, tally)| tally.gaps.sort_unstable());
    Ok(vec![summary(&rows, options)?, transitions(&rows, options)?])
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
        float("days_to_second_median".into(), &|t| quantile(&t.gaps, 0.5)),
        float("days_to_second_p25".into(), &|t| quantile(&t.gaps, 0.25)),
        float("days_to_second_p75".into(), &|t| quantile(&t.gaps, 0.75)),
        float("days_to_second_mean".into(), &|t| {
            let sum: i64 = t.gaps.iter().map(|&g| i64::from(g)).sum();
            (!t.gaps.is_empty()).then(|| sum as f64 / t.gaps.len() as f64)
        }),
        float("mean_days_between_purchases".into(), &|t| {
            (t.between_count > 0).then(|| t.between_sum / t.between_count as f64)
        }),
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
