//! Orders → the shared per-customer tables every stage reads: `customer_facts` (one row per
//! customer) and `customer_periods` (one row per customer and local day with an order).
//!
//! Orders arrive with dense integer customer ids in customer_id order (`orders`); customers with
//! a purchase are numbered again here, densely, as `customer_key` (still in customer_id order).
//! Stages join and group on the key and carry `customer_id` only into outputs.
//!
//! One counting sort groups the orders by customer id; each customer's few orders are then
//! sorted by day and walked once (customers in parallel chunks): its days with an order become
//! `customer_periods` rows, and its facts are plain aggregates of those days — first/last
//! purchase day, purchases, revenue, purchase days, the first purchase day's revenue for the
//! BTYD summary — plus the acquisition channel: the channel of the purchases at the earliest
//! purchase time (the smallest channel name when several share that instant). A polars
//! group-by + sort + join did the same several times slower.

use anyhow::{Context, Result};
use chrono::NaiveDate;
use polars::prelude::*;
use std::mem::MaybeUninit;

use crate::core::input::SourceOrders;
use crate::core::money::micros_value;
use crate::core::orders::NO_CHANNEL;
use crate::core::period::to_days;

/// The shared tables of one source for one run.
#[derive(Debug, Clone)]
pub struct SharedTables {
    /// customer_key, customer_id, first_purchase_date, last_purchase_date, orders, revenue,
    /// [cost, contribution,] aov, acquisition_channel, frequency, t_x, T, monetary_value,
    /// revenue_micros[, cost_micros] — sorted by customer_key. Money in currency (Float64) and,
    /// for exact sums, in micro-units (Int64). The cost columns are there when the source maps
    /// `cost`.
    pub customer_facts: DataFrame,
    /// customer_key, date, purchases (UInt32), revenue_micros[, cost_micros] — sorted by
    /// customer_key, date; read
    /// through `customer_periods()`. The runner releases them once the last stage that reads
    /// them is done, so the stages after reuse their memory.
    periods: std::sync::Arc<std::sync::Mutex<Option<DataFrame>>>,
    /// The distinct acquisition channels (ascending, null last if a customer has none) and each
    /// customer's position among them, in customer_key order: cohorts split by channel.
    pub acquisition: (Series, Vec<u32>),
    pub as_of: NaiveDate,
}

impl SharedTables {
    /// Shared tables from their parts; `customer_periods` is `None` once released.
    pub fn new(
        customer_facts: DataFrame,
        customer_periods: Option<DataFrame>,
        acquisition: (Series, Vec<u32>),
        as_of: NaiveDate,
    ) -> SharedTables {
        SharedTables {
            customer_facts,
            periods: std::sync::Arc::new(std::sync::Mutex::new(customer_periods)),
            acquisition,
            as_of,
        }
    }

    /// customer_periods (the columns are shared, not copied).
    pub fn customer_periods(&self) -> Result<DataFrame> {
        self.periods_slot().clone().ok_or_else(|| {
            anyhow::anyhow!(
                "customer_periods were released before a stage that reads them \
                 (its kind must say so in `Stage::reads_customer_periods`)"
            )
        })
    }

    /// Drop this handle on customer_periods: their memory is freed once the stages still
    /// reading them are done.
    pub fn release_customer_periods(&self) {
        self.periods_slot().take();
    }

    fn periods_slot(&self) -> std::sync::MutexGuard<'_, Option<DataFrame>> {
        // Only a clone or a take happens under the lock: a poisoned lock still holds the frame.
        self.periods.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Each customer of `customers` with its rows in customer_periods, whose `keys` (customer_key)
/// are sorted: the walks over a range of customers read their days through this.
pub fn customer_rows(
    keys: &[u32],
    customers: std::ops::Range<usize>,
) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> + '_ {
    let mut row = keys.partition_point(|&key| (key as usize) < customers.start);
    customers.map(move |customer| {
        let start = row;
        while row < keys.len() && keys[row] as usize == customer {
            row += 1;
        }
        (customer, start..row)
    })
}

/// The customer_periods rows of the customers in `customers` (see `customer_rows`).
pub fn rows_of(keys: &[u32], customers: std::ops::Range<usize>) -> std::ops::Range<usize> {
    keys.partition_point(|&key| (key as usize) < customers.start)
        ..keys.partition_point(|&key| (key as usize) < customers.end)
}

/// A numeric column of a shared table as a slice: the shared tables are built in one chunk and
/// without nulls in the columns stages walk.
pub fn values<'a, T: PolarsNumericType>(frame: &'a DataFrame, name: &str) -> Result<&'a [T::Native]> {
    let series = frame.column(name)?.as_materialized_series();
    series
        .unpack::<T>()?
        .cont_slice()
        .map_err(|_| anyhow::anyhow!("column `{name}` has nulls or several chunks"))
}

/// A `Date` column of a shared table as day numbers (see `values`).
pub fn day_values<'a>(frame: &'a DataFrame, name: &str) -> Result<&'a [i32]> {
    frame
        .column(name)?
        .as_materialized_series()
        .date()?
        .physical()
        .cont_slice()
        .map_err(|_| anyhow::anyhow!("column `{name}` has nulls or several chunks"))
}

/// The order columns the walk reads, as slices (the customer ids are read before it, by
/// `rows_by_customer`).
struct OrderColumns<'a> {
    dates: &'a [i32],
    instants: &'a [i64],
    revenues: &'a [i64],
    /// Channel codes, `NO_CHANNEL` for none; empty without a channel column.
    channels: &'a [u32],
    /// Order costs in micro-units, when the source maps `cost`.
    costs: Option<&'a [i64]>,
}

impl<'a> OrderColumns<'a> {
    fn of(orders: &'a DataFrame) -> Result<Self> {
        fn values<'b, T: PolarsNumericType>(ca: &'b ChunkedArray<T>, name: &str) -> Result<&'b [T::Native]> {
            ca.cont_slice()
                .map_err(|_| anyhow::anyhow!("orders column `{name}` has nulls or several chunks"))
        }
        let channels = match orders.column("channel") {
            Ok(column) => values(column.u32()?, "channel")?,
            Err(_) => &[],
        };
        Ok(OrderColumns {
            dates: values(
                orders.column("date")?.as_materialized_series().date()?.physical(),
                "date",
            )?,
            instants: values(orders.column("ordered_ts")?.i64()?, "ordered_ts")?,
            revenues: values(orders.column("revenue")?.i64()?, "revenue")?,
            channels,
            costs: match orders.column("cost") {
                Ok(column) => Some(values(column.i64()?, "cost")?),
                Err(_) => None,
            },
        })
    }
}

/// Order rows grouped by customer id: customer `id`'s rows are `rows[starts[id]..starts[id + 1]]`,
/// in file order (a counting sort: no comparisons). Each thread of the pool scatters the rows of
/// its own range of ids, so the random writes are shared out.
fn rows_by_customer(ids: &[u32], customers: usize) -> (Vec<u32>, Vec<u32>) {
    use rayon::prelude::*;
    let mut starts = vec![0u32; customers + 1];
    for &id in ids {
        starts[id as usize + 1] += 1;
    }
    for id in 0..customers {
        starts[id + 1] += starts[id];
    }
    // Not initialised: the scatter below writes every slot once (a zeroing pass would run on
    // one thread).
    let mut rows: Vec<u32> = Vec::with_capacity(ids.len());
    let parts = rayon::current_num_threads().max(1);
    let per_part = customers.div_ceil(parts).max(1);
    // Part p owns ids p·per_part.. and so the slice of `rows` from its first id's start on.
    let mut slices = Vec::with_capacity(parts);
    let mut rest = &mut rows.spare_capacity_mut()[..ids.len()];
    for part in 0..parts {
        let (low, high) = ((part * per_part).min(customers), ((part + 1) * per_part).min(customers));
        let (own, later) = rest.split_at_mut((starts[high] - starts[low]) as usize);
        slices.push((low, high, own));
        rest = later;
    }
    slices.into_par_iter().for_each(|(low, high, own)| {
        let base = starts[low];
        let mut next: Vec<u32> = starts[low..high].iter().map(|&start| start - base).collect();
        for (row, &id) in ids.iter().enumerate() {
            let id = id as usize;
            if (low..high).contains(&id) {
                let slot = &mut next[id - low];
                own[*slot as usize].write(row as u32);
                *slot += 1;
            }
        }
    });
    // SAFETY: each id's slots `starts[id]..starts[id + 1]` were written, one per row of
    // that id, and together they cover `0..ids.len()`.
    unsafe { rows.set_len(ids.len()) };
    (starts, rows)
}

/// The walk's output: customer_periods and the customers with a purchase, `period_key` counting
/// them from 0.
#[derive(Default)]
struct Walked {
    // customer_periods
    period_key: Vec<u32>,
    period_date: Vec<i32>,
    period_purchases: Vec<u32>,
    period_revenue: Vec<i64>,
    /// Empty unless the orders have a cost (as `cost` below).
    period_cost: Vec<i64>,
    // customers with a purchase
    id: Vec<u32>,
    first: Vec<i32>,
    last: Vec<i32>,
    orders: Vec<i64>,
    revenue: Vec<i64>,
    purchase_revenue: Vec<i64>,
    purchase_days: Vec<i64>,
    first_day_revenue: Vec<i64>,
    acquisition: Vec<Option<IdxSize>>,
    cost: Vec<i64>,
    has_cost: bool,
}

/// One chunk's share of the walk's columns: room for a period per order of its customers and a
/// row per customer id, filled from the front (`key` counting from 0 within the chunk).
struct WalkedPart<'a> {
    period_key: &'a mut [MaybeUninit<u32>],
    period_date: &'a mut [MaybeUninit<i32>],
    period_purchases: &'a mut [MaybeUninit<u32>],
    period_revenue: &'a mut [MaybeUninit<i64>],
    period_cost: &'a mut [MaybeUninit<i64>],
    id: &'a mut [MaybeUninit<u32>],
    first: &'a mut [MaybeUninit<i32>],
    last: &'a mut [MaybeUninit<i32>],
    orders: &'a mut [MaybeUninit<i64>],
    revenue: &'a mut [MaybeUninit<i64>],
    purchase_revenue: &'a mut [MaybeUninit<i64>],
    purchase_days: &'a mut [MaybeUninit<i64>],
    first_day_revenue: &'a mut [MaybeUninit<i64>],
    acquisition: &'a mut [MaybeUninit<Option<IdxSize>>],
    cost: &'a mut [MaybeUninit<i64>],
}

/// `column` cut into consecutive parts of `lens`.
fn cut<'a, T>(mut rest: &'a mut [T], lens: &[usize]) -> std::vec::IntoIter<&'a mut [T]> {
    let mut parts = Vec::with_capacity(lens.len());
    for &len in lens {
        let (own, later) = std::mem::take(&mut rest).split_at_mut(len);
        parts.push(own);
        rest = later;
    }
    parts.into_iter()
}

/// Each chunk's rows (`counts`) moved from its part's front (`starts`) to follow the chunks
/// before, one chunk after another (a chunk only moves towards the front, over rows already
/// moved), each value through `map(chunk, value)`; the column then holds just those rows. The
/// column's room (its spare capacity) holds the chunks' rows, written by the walk.
fn compact<T: Copy>(column: &mut Vec<T>, starts: &[usize], counts: &[usize], map: impl Fn(usize, T) -> T) {
    let room = column.spare_capacity_mut();
    let mut at = 0;
    for (chunk, (&start, &count)) in starts.iter().zip(counts).enumerate() {
        room.copy_within(start..start + count, at);
        for slot in &mut room[at..at + count] {
            // SAFETY: the walk wrote the first `count` rows of each chunk's part.
            let value = unsafe { slot.assume_init() };
            slot.write(map(chunk, value));
        }
        at += count;
    }
    // SAFETY: the first `at` rows of the room were written just above.
    unsafe { column.set_len(at) };
}

impl Walked {
    /// Columns with room for `periods` periods (one per order at most) and `customers` rows,
    /// not initialised: zeroing them would be a pass over the largest columns on one thread.
    /// Without `has_cost` the cost columns stay empty.
    fn with_room(periods: usize, customers: usize, has_cost: bool) -> Walked {
        let costs = |rows: usize| Vec::with_capacity(if has_cost { rows } else { 0 });
        Walked {
            period_cost: costs(periods),
            cost: costs(customers),
            has_cost,
            period_key: Vec::with_capacity(periods),
            period_date: Vec::with_capacity(periods),
            period_purchases: Vec::with_capacity(periods),
            period_revenue: Vec::with_capacity(periods),
            id: Vec::with_capacity(customers),
            first: Vec::with_capacity(customers),
            last: Vec::with_capacity(customers),
            orders: Vec::with_capacity(customers),
            revenue: Vec::with_capacity(customers),
            purchase_revenue: Vec::with_capacity(customers),
            purchase_days: Vec::with_capacity(customers),
            first_day_revenue: Vec::with_capacity(customers),
            acquisition: Vec::with_capacity(customers),
        }
    }

    /// The columns cut into the chunks' parts: `periods[k]` periods and `customers[k]` rows.
    fn parts(&mut self, periods: &[usize], customers: &[usize]) -> Vec<WalkedPart<'_>> {
        let mut period_key = cut(self.period_key.spare_capacity_mut(), periods);
        let mut period_date = cut(self.period_date.spare_capacity_mut(), periods);
        let mut period_purchases = cut(self.period_purchases.spare_capacity_mut(), periods);
        let mut period_revenue = cut(self.period_revenue.spare_capacity_mut(), periods);
        let mut id = cut(self.id.spare_capacity_mut(), customers);
        let mut first = cut(self.first.spare_capacity_mut(), customers);
        let mut last = cut(self.last.spare_capacity_mut(), customers);
        let mut orders = cut(self.orders.spare_capacity_mut(), customers);
        let mut revenue = cut(self.revenue.spare_capacity_mut(), customers);
        let mut purchase_revenue = cut(self.purchase_revenue.spare_capacity_mut(), customers);
        let mut purchase_days = cut(self.purchase_days.spare_capacity_mut(), customers);
        let mut first_day_revenue = cut(self.first_day_revenue.spare_capacity_mut(), customers);
        let mut acquisition = cut(self.acquisition.spare_capacity_mut(), customers);
        let none = vec![0; periods.len()];
        let (cost_periods, cost_customers) = match self.has_cost {
            true => (periods, customers),
            false => (none.as_slice(), none.as_slice()),
        };
        let mut period_cost = cut(self.period_cost.spare_capacity_mut(), cost_periods);
        let mut cost = cut(self.cost.spare_capacity_mut(), cost_customers);
        let mut next = || -> Option<WalkedPart<'_>> {
            Some(WalkedPart {
                period_key: period_key.next()?,
                period_date: period_date.next()?,
                period_purchases: period_purchases.next()?,
                period_revenue: period_revenue.next()?,
                period_cost: period_cost.next()?,
                id: id.next()?,
                first: first.next()?,
                last: last.next()?,
                orders: orders.next()?,
                revenue: revenue.next()?,
                purchase_revenue: purchase_revenue.next()?,
                purchase_days: purchase_days.next()?,
                first_day_revenue: first_day_revenue.next()?,
                acquisition: acquisition.next()?,
                cost: cost.next()?,
            })
        };
        std::iter::from_fn(&mut next).collect()
    }

    /// The chunks' rows one after another (`period_starts`/`customer_starts`: where each
    /// chunk's part begins; the counts: rows it filled), keys renumbered after the chunks before.
    fn compact(&mut self, period_starts: &[usize], customer_starts: &[usize], filled: &[(usize, usize)]) {
        let periods: Vec<usize> = filled.iter().map(|f| f.0).collect();
        let customers: Vec<usize> = filled.iter().map(|f| f.1).collect();
        let key_offsets: Vec<u32> = customers
            .iter()
            .scan(0u32, |before, &count| {
                let offset = *before;
                *before += count as u32;
                Some(offset)
            })
            .collect();
        fn same<T>(_chunk: usize, value: T) -> T {
            value
        }
        compact(&mut self.period_key, period_starts, &periods, |chunk, key| {
            key + key_offsets[chunk]
        });
        compact(&mut self.period_date, period_starts, &periods, same);
        compact(&mut self.period_purchases, period_starts, &periods, same);
        compact(&mut self.period_revenue, period_starts, &periods, same);
        compact(&mut self.id, customer_starts, &customers, same);
        compact(&mut self.first, customer_starts, &customers, same);
        compact(&mut self.last, customer_starts, &customers, same);
        compact(&mut self.orders, customer_starts, &customers, same);
        compact(&mut self.revenue, customer_starts, &customers, same);
        compact(&mut self.purchase_revenue, customer_starts, &customers, same);
        compact(&mut self.purchase_days, customer_starts, &customers, same);
        compact(&mut self.first_day_revenue, customer_starts, &customers, same);
        compact(&mut self.acquisition, customer_starts, &customers, same);
        if self.has_cost {
            compact(&mut self.period_cost, period_starts, &periods, same);
            compact(&mut self.cost, customer_starts, &customers, same);
        }
    }
}

impl WalkedPart<'_> {
    /// Walk customers `ids` into this part: (periods, customers) filled.
    fn walk(self, columns: &OrderColumns, starts: &[u32], rows: &[u32], ids: std::ops::Range<usize>) -> (usize, usize) {
        let (mut p, mut c) = (0, 0);
        // (date, revenue, cost: 0 without costs)
        let mut day_orders: Vec<(i32, i64, i64)> = Vec::new();
        for id in ids {
            let own = &rows[starts[id] as usize..starts[id + 1] as usize];
            // The earliest purchase instant and the smallest channel code there.
            let mut earliest = (i64::MAX, NO_CHANNEL);
            day_orders.clear();
            for &row in own {
                let row = row as usize;
                let revenue = columns.revenues[row];
                let cost = columns.costs.map_or(0, |costs| costs[row]);
                day_orders.push((columns.dates[row], revenue, cost));
                if revenue > 0 && !columns.channels.is_empty() {
                    earliest = earliest.min((columns.instants[row], columns.channels[row]));
                }
            }
            if !day_orders.iter().any(|&(_, revenue, _)| revenue > 0) {
                continue;
            }
            day_orders.sort_unstable_by_key(|&(date, _, _)| date);
            let key = c as u32;
            let (mut first, mut last) = (None, 0);
            let (mut orders, mut revenue, mut purchase_revenue, mut purchase_days) = (0, 0, 0, 0);
            let (mut first_day_revenue, mut cost) = (0, 0);
            for day in day_orders.chunk_by(|a, b| a.0 == b.0) {
                let date = day[0].0;
                let purchases = day.iter().filter(|(_, r, _)| *r > 0).count() as u32;
                let day_revenue: i64 = day.iter().map(|(_, r, _)| r).sum();
                let day_purchase_revenue: i64 = day.iter().map(|(_, r, _)| *r).filter(|&r| r > 0).sum();
                self.period_key[p].write(key);
                self.period_date[p].write(date);
                self.period_purchases[p].write(purchases);
                self.period_revenue[p].write(day_revenue);
                if columns.costs.is_some() {
                    let day_cost: i64 = day.iter().map(|(_, _, c)| c).sum();
                    self.period_cost[p].write(day_cost);
                    cost += day_cost;
                }
                p += 1;
                revenue += day_revenue;
                if purchases > 0 {
                    if first.is_none() {
                        first = Some(date);
                        first_day_revenue = day_purchase_revenue;
                    }
                    last = date;
                    orders += i64::from(purchases);
                    purchase_revenue += day_purchase_revenue;
                    purchase_days += 1;
                }
            }
            self.id[c].write(id as u32);
            self.first[c].write(first.expect("a customer with a purchase has a purchase day"));
            self.last[c].write(last);
            self.orders[c].write(orders);
            self.revenue[c].write(revenue);
            self.purchase_revenue[c].write(purchase_revenue);
            self.purchase_days[c].write(purchase_days);
            self.first_day_revenue[c].write(first_day_revenue);
            self.acquisition[c].write((earliest.1 != NO_CHANNEL).then_some(earliest.1 as IdxSize));
            if columns.costs.is_some() {
                self.cost[c].write(cost);
            }
            c += 1;
        }
        (p, c)
    }
}

/// Walk every customer, in parallel chunks of 2^16 ids.
fn walk(orders: DataFrame, customers: usize) -> Result<Walked> {
    walk_in_chunks(orders, customers, 1 << 16)
}

/// Walk every customer in parallel chunks of `chunk` ids, each writing its days and its
/// customers into its own part of columns allocated once (a period per order at most, a row
/// per customer id), then move the parts together. Walking into each chunk's own growing
/// columns and copying them into joined ones touched twice the memory, in fresh pages each
/// zeroed by the kernel.
fn walk_in_chunks(mut orders: DataFrame, customers: usize, chunk: usize) -> Result<Walked> {
    use rayon::prelude::*;
    orders.rechunk_mut();
    let clock = std::time::Instant::now();
    let (starts, rows) = rows_by_customer(values::<UInt32Type>(&orders, "id")?, customers);
    // The customer of each order is only needed to group the orders: its column is freed
    // before the walk's columns are allocated, so they can take its pages.
    drop(orders.drop_in_place("id")?);
    let columns = OrderColumns::of(&orders)?;
    let has_cost = columns.costs.is_some();
    tracing::debug!(
        "prepare: orders grouped by customer in {:.3} s",
        clock.elapsed().as_secs_f64()
    );
    let id_ranges: Vec<std::ops::Range<usize>> = (0..customers.div_ceil(chunk))
        .map(|k| k * chunk..((k + 1) * chunk).min(customers))
        .collect();
    let period_starts: Vec<usize> = id_ranges.iter().map(|ids| starts[ids.start] as usize).collect();
    let customer_starts: Vec<usize> = id_ranges.iter().map(|ids| ids.start).collect();
    let periods: Vec<usize> = id_ranges
        .iter()
        .map(|ids| (starts[ids.end] - starts[ids.start]) as usize)
        .collect();
    let sizes: Vec<usize> = id_ranges.iter().map(|ids| ids.len()).collect();
    let mut walked = Walked::with_room(rows.len(), customers, has_cost);
    let filled: Vec<(usize, usize)> = walked
        .parts(&periods, &sizes)
        .into_par_iter()
        .zip(id_ranges.par_iter())
        .map(|(part, ids)| part.walk(&columns, &starts, &rows, ids.clone()))
        .collect();
    tracing::debug!("prepare: chunks walked at {:.3} s", clock.elapsed().as_secs_f64());
    walked.compact(&period_starts, &customer_starts, &filled);
    Ok(walked)
}

fn date_column(name: &str, days: Vec<i32>) -> Result<Column> {
    Ok(crate::core::columns::owned_column(name, days).cast(&DataType::Date)?)
}

/// Build both shared tables from the orders of one source. The walk takes the orders and drops
/// them as soon as it is done with them (their customer column once they are grouped): the
/// customer facts are then built in their memory instead of in fresh pages.
pub fn shared_tables(source: SourceOrders) -> Result<SharedTables> {
    let SourceOrders {
        orders,
        customer_ids,
        channels,
        as_of,
        ..
    } = source;
    let clock = std::time::Instant::now();
    let walked = walk(orders, customer_ids.len()).context("building customer days")?;
    tracing::debug!("prepare: customers walked at {:.3} s", clock.elapsed().as_secs_f64());
    let Walked {
        period_key,
        period_date,
        period_purchases,
        period_revenue,
        id,
        first,
        last,
        orders,
        revenue,
        purchase_revenue,
        purchase_days,
        first_day_revenue,
        acquisition,
        period_cost,
        cost,
        has_cost,
    } = walked;

    let mut period_columns = vec![
        crate::core::columns::owned_column("customer_key", period_key),
        date_column("date", period_date)?,
        crate::core::columns::owned_column("purchases", period_purchases),
        crate::core::columns::owned_column("revenue_micros", period_revenue),
    ];
    if has_cost {
        period_columns.push(crate::core::columns::owned_column("cost_micros", period_cost));
    }
    let customer_periods = DataFrame::new_infer_height(period_columns)?;

    let ids = IdxCa::from_vec("".into(), id);
    let customer_ids = customer_ids.take(&ids)?.with_name("customer_id".into());
    let (acquisition_channel, acquisition) = match &channels {
        Some(channels) => {
            let codes: IdxCa = acquisition.iter().copied().collect_ca("".into());
            (channels.take(&codes)?, dense_codes(channels, &acquisition)?)
        }
        None => (
            Series::full_null("".into(), ids.len(), &DataType::String),
            dense_codes(&Series::new_empty("".into(), &DataType::String), &acquisition)?,
        ),
    };
    // The facts in Rust, customers in parallel: the same values polars' expressions gave
    // (`micros_value` is `from_micros` bit for bit), without a pass per expression. Columns
    // the facts do not keep are overwritten in place by ones they do (fresh columns are pages
    // the kernel zeroes): purchase days become the frequency, the first
    // day's revenue the monetary value, the purchase revenue the aov.
    use rayon::prelude::*;
    let as_of_day = i64::from(to_days(as_of));
    let n = ids.len();
    let each_i64 = |f: &(dyn Fn(usize) -> i64 + Sync)| -> Vec<i64> { (0..n).into_par_iter().map(f).collect() };
    let mut frequency = purchase_days;
    frequency.par_iter_mut().for_each(|days| *days -= 1);
    let t_x = each_i64(&|c| i64::from(last[c]) - i64::from(first[c]));
    let age = each_i64(&|c| as_of_day - i64::from(first[c]));
    let revenue_value: Vec<f64> = revenue.par_iter().map(|&micros| micros_value(micros)).collect();
    // With costs: cost and contribution (revenue − cost) in currency, and exact micro-units.
    let cost_columns = has_cost.then(|| {
        let cost_value: Vec<f64> = cost.par_iter().map(|&micros| micros_value(micros)).collect();
        let contribution: Vec<f64> = cost
            .par_iter()
            .zip(&revenue)
            .map(|(&cost, &revenue)| micros_value(revenue - cost))
            .collect();
        [
            crate::core::columns::owned_column("cost", cost_value),
            crate::core::columns::owned_column("contribution", contribution),
            crate::core::columns::owned_column("cost_micros", cost),
        ]
    });
    // BTYD: same-day purchases merged; the first purchase day is not a repeat purchase.
    let mut monetary_value: Vec<f64> = bytemuck::cast_vec(first_day_revenue);
    monetary_value
        .par_iter_mut()
        .zip(&purchase_revenue)
        .zip(&frequency)
        .for_each(|((value, &purchase), &frequency)| {
            let first_day = value.to_bits() as i64; // still the first day's revenue
            *value = if frequency > 0 {
                micros_value(purchase - first_day) / frequency as f64
            } else {
                0.0
            };
        });
    let mut aov: Vec<f64> = bytemuck::cast_vec(purchase_revenue);
    aov.par_iter_mut().zip(&orders).for_each(|(value, &orders)| {
        let purchase = value.to_bits() as i64; // still the purchase revenue
        *value = micros_value(purchase) / orders as f64;
    });
    let mut customer_facts = DataFrame::new_infer_height(vec![
        crate::core::columns::owned_column("customer_key", (0..n as IdxSize).collect::<Vec<_>>()),
        customer_ids.into_column(),
        date_column("first_purchase_date", first)?,
        date_column("last_purchase_date", last)?,
        crate::core::columns::owned_column("orders", orders),
        crate::core::columns::owned_column("revenue", revenue_value),
        crate::core::columns::owned_column("aov", aov),
        acquisition_channel
            .with_name("acquisition_channel".into())
            .into_column(),
        crate::core::columns::owned_column("frequency", frequency),
        crate::core::columns::owned_column("t_x", t_x),
        crate::core::columns::owned_column("T", age),
        crate::core::columns::owned_column("monetary_value", monetary_value),
        crate::core::columns::owned_column("revenue_micros", revenue),
    ])
    .map_err(anyhow::Error::from)
    .context("building customer_facts")?;
    if let Some([cost, contribution, cost_micros]) = cost_columns {
        // Beside revenue; `cost_micros` last, with the other exact sums.
        let at = customer_facts.get_column_index("aov").expect("built above");
        customer_facts.insert_column(at, cost)?;
        customer_facts.insert_column(at + 1, contribution)?;
        customer_facts.with_column(cost_micros)?;
    }
    tracing::debug!("prepare: customer facts at {:.3} s", clock.elapsed().as_secs_f64());

    // One chunk: stages read columns as slices (`values`).
    customer_facts.rechunk_mut();
    Ok(SharedTables {
        customer_facts,
        periods: std::sync::Arc::new(std::sync::Mutex::new(Some(customer_periods))),
        acquisition,
        as_of,
    })
}

/// The values present among `codes` (positions in `names`, ascending), null last when a code
/// is missing, and each code's position among them.
fn dense_codes(names: &Series, codes: &[Option<IdxSize>]) -> Result<(Series, Vec<u32>)> {
    use rayon::prelude::*;
    let mut present = vec![false; names.len()];
    let mut missing = false;
    for code in codes {
        match code {
            Some(code) => present[*code as usize] = true,
            None => missing = true,
        }
    }
    let mut rank = vec![0u32; names.len()];
    let mut kept: Vec<IdxSize> = Vec::new();
    for (code, _) in present.iter().enumerate().filter(|(_, &p)| p) {
        rank[code] = kept.len() as u32;
        kept.push(code as IdxSize);
    }
    let null_code = kept.len() as u32;
    let mut distinct = names.take(&IdxCa::from_vec("".into(), kept))?;
    if missing {
        distinct.append(&Series::full_null("".into(), 1, names.dtype()))?;
    }
    let dense = codes
        .par_iter()
        .map(|code| code.map_or(null_code, |code| rank[code as usize]))
        .collect();
    Ok((distinct, dense))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walked(orders: DataFrame, customers: usize) -> Walked {
        let mut orders = orders;
        let dates = orders.column("date").unwrap().cast(&DataType::Date).unwrap();
        orders.with_column(dates).unwrap();
        walk(orders, customers).expect("columns present")
    }

    #[test]
    fn customer_periods_are_read_until_released_then_a_late_reader_fails_naming_the_declaration() {
        // Customer 0 buys on days 10 and 12, customer 1 on day 11.
        let mut orders = df! {
            "id" => [0u32, 0, 1],
            "date" => [10i32, 12, 11],
            "ordered_ts" => [1i64, 3, 2],
            "revenue" => [1_000_000i64, 2_000_000, 500_000],
        }
        .expect("valid frame");
        let dates = orders.column("date").unwrap().cast(&DataType::Date).unwrap();
        orders.with_column(dates).unwrap();
        let source = SourceOrders {
            orders,
            customer_ids: Series::new("customer_id".into(), ["a", "b"]),
            channels: None,
            stats: crate::core::input::InputStats::default(),
            as_of: NaiveDate::from_ymd_opt(1970, 2, 1).expect("valid date"),
        };
        let tables = shared_tables(source).expect("shared tables");
        let before = tables.customer_periods().expect("not released yet");
        assert_eq!(values::<UInt32Type>(&before, "customer_key").unwrap(), [0, 0, 1]);
        assert_eq!(day_values(&before, "date").unwrap(), [10, 12, 11]);
        // A clone of the tables (as a stage may hold) shares the release.
        let clone = tables.clone();
        tables.release_customer_periods();
        let error = clone.customer_periods().unwrap_err().to_string();
        assert!(
            error.contains("released") && error.contains("reads_customer_periods"),
            "{error}"
        );
        // A stage that took them before the release still reads them whole.
        assert_eq!(
            values::<Int64Type>(&before, "revenue_micros").unwrap(),
            [1_000_000, 2_000_000, 500_000]
        );
    }

    #[test]
    fn acquisition_is_the_smallest_channel_at_the_earliest_purchase() {
        // Customer 0: two purchases at the first instant (codes 2 and 1) and an earlier refund.
        // Customer 1: no channel at its first purchase instant except one null, a later code 0.
        // Customer 2: a null and code 3 at the same first instant. Customer 3: no purchase.
        let orders = df! {
            "id" => [0u32, 0, 0, 1, 1, 2, 2, 3],
            "date" => [1i32; 8],
            "ordered_ts" => [10i64, 10, 5, 7, 9, 4, 4, 1],
            "revenue" => [5i64, 6, -3, 2, 2, 1, 1, 0],
            "channel" => [2u32, 1, 0, NO_CHANNEL, 0, NO_CHANNEL, 3, 0],
        }
        .expect("valid frame");
        let walked = walked(orders, 4);
        assert_eq!(walked.id, [0, 1, 2]);
        assert_eq!(walked.acquisition, [Some(1), None, Some(3)]);
    }

    #[test]
    fn days_and_facts_of_each_customer() {
        // Customer 0 (orders out of day order, across chunk-free ids): day 5 a refund only,
        // day 7 two purchases and a refund, day 9 one purchase. Customer 1: refunds only, left
        // out with its days. Customer 2: one purchase; no channel column at all.
        let orders = df! {
            "id" => [0u32, 2, 0, 1, 0, 0, 0],
            "date" => [9i32, 3, 7, 4, 5, 7, 7],
            "ordered_ts" => [0i64; 7],
            "revenue" => [40i64, 8, 10, -1, -5, 20, -3],
        }
        .expect("valid frame");
        let w = walked(orders, 3);
        assert_eq!(w.period_key, [0, 0, 0, 1]);
        assert_eq!(w.period_date, [5, 7, 9, 3]);
        assert_eq!(w.period_purchases, [0, 2, 1, 1]);
        assert_eq!(w.period_revenue, [-5, 27, 40, 8]);
        assert_eq!(w.id, [0, 2]);
        assert_eq!((w.first.clone(), w.last.clone()), (vec![7, 3], vec![9, 3]));
        assert_eq!(w.orders, [3, 1]);
        assert_eq!(w.revenue, [62, 8]);
        assert_eq!(w.purchase_revenue, [70, 8]);
        assert_eq!(w.purchase_days, [2, 1]);
        assert_eq!(w.first_day_revenue, [30, 8]);
        assert_eq!(w.acquisition, [None, None]);
    }

    #[test]
    fn acquisition_codes_count_only_channels_present_with_null_last() {
        let names = Series::new("".into(), ["app", "mail", "store", "web"]);
        let (distinct, codes) = dense_codes(&names, &[Some(3), None, Some(0), Some(3)]).unwrap();
        let distinct: Vec<Option<&str>> = distinct.str().unwrap().iter().collect();
        assert_eq!(distinct, [Some("app"), Some("web"), None]);
        assert_eq!(codes, [1, 2, 0, 1]);
        let none = Series::new_empty("".into(), &DataType::String);
        let (distinct, codes) = dense_codes(&none, &[None, None]).unwrap();
        assert_eq!((distinct.len(), distinct.null_count(), codes), (1, 1, vec![0, 0]));
    }

    /// Chunks of any size (customers split between them, chunks with no customer kept) give
    /// the columns of one chunk; order costs are summed per day and per customer like revenue.
    #[test]
    fn chunks_of_any_size_walk_alike() {
        let orders = df! {
            "id" => [0u32, 2, 0, 1, 0, 0, 0, 4, 3, 4],
            "date" => [9i32, 3, 7, 4, 5, 7, 7, 2, 6, 1],
            "ordered_ts" => [0i64; 10],
            "revenue" => [40i64, 8, 10, -1, -5, 20, -3, 4, -2, 6],
            "cost" => [4i64, 1, 2, 0, -1, 3, -2, 5, 7, 1],
        }
        .expect("valid frame");
        let dates = orders.column("date").unwrap().cast(&DataType::Date).unwrap();
        let mut orders = orders;
        orders.with_column(dates).unwrap();
        let whole = walk_in_chunks(orders.clone(), 5, 1 << 16).unwrap();
        assert_eq!(whole.id, [0, 2, 4]);
        assert_eq!(whole.period_key, [0, 0, 0, 1, 2, 2]);
        assert_eq!(whole.period_date, [5, 7, 9, 3, 1, 2]);
        // Customer 0: day 5 −1, day 7 2 + 3 − 2, day 9 4; customer 2: 1; customer 4: 1 and 5.
        assert_eq!(whole.period_cost, [-1, 3, 4, 1, 1, 5]);
        assert_eq!(whole.cost, [6, 1, 6]);
        for chunk in [1, 2, 3, 4] {
            let w = walk_in_chunks(orders.clone(), 5, chunk).unwrap();
            assert_eq!(w.period_key, whole.period_key, "chunks of {chunk}");
            assert_eq!(w.period_date, whole.period_date, "chunks of {chunk}");
            assert_eq!(w.period_purchases, whole.period_purchases, "chunks of {chunk}");
            assert_eq!(w.period_revenue, whole.period_revenue, "chunks of {chunk}");
            assert_eq!(w.id, whole.id, "chunks of {chunk}");
            assert_eq!((&w.first, &w.last), (&whole.first, &whole.last), "chunks of {chunk}");
            assert_eq!(w.orders, whole.orders, "chunks of {chunk}");
            assert_eq!(w.revenue, whole.revenue, "chunks of {chunk}");
            assert_eq!(w.purchase_revenue, whole.purchase_revenue, "chunks of {chunk}");
            assert_eq!(w.purchase_days, whole.purchase_days, "chunks of {chunk}");
            assert_eq!(w.first_day_revenue, whole.first_day_revenue, "chunks of {chunk}");
            assert_eq!(w.acquisition, whole.acquisition, "chunks of {chunk}");
            assert_eq!(
                (&w.period_cost, &w.cost),
                (&whole.period_cost, &whole.cost),
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn rows_grouped_by_customer_in_file_order_with_any_thread_count() {
        let ids = [2u32, 0, 2, 1, 0, 4, 2];
        for threads in [1, 2, 3, 8] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let (starts, rows) = pool.install(|| rows_by_customer(&ids, 5));
            assert_eq!(starts, [0, 2, 3, 6, 6, 7], "{threads} threads");
            assert_eq!(rows, [1, 4, 3, 0, 2, 6, 5], "{threads} threads");
        }
    }
}
