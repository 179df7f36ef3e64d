//! Customer shards: a stage's work split by customer, in the spirit of DataFusion's
//! Accumulator (state → merge → evaluate).
//!
//! All per-customer work depends only on that customer's orders, so the customers can be split
//! into shards (by a hash of their id) and a stage run over each shard alone. A kind that
//! implements `Sharded` computes a **partial** from one shard's inputs: plain tables of sums,
//! counts or histograms, keyed by values that mean the same in every shard (period indices,
//! channel names, integer values), never by a shard's own numbering. Partials **merge** by adding
//! those tables key by key, which is associative and commutative, so any split of the customers
//! merges to the partial of all of them. **Finalize** turns the merged partial into the stage's
//! tables. The single-machine run is the same code with one shard (`run_one_shard`).
//!
//! As tables, partials cross process boundaries as they are (Arrow batches), which is how a
//! Spark job will carry them from its tasks to the driver. The merge math of every kind:
//! docs/scale-out.md.

use anyhow::Result;
use chrono::NaiveDate;
use polars::prelude::*;

use super::StageInputs;
use crate::core::prepare::SharedTables;

/// What a stage keeps of one shard: keyed tables that merge by adding (`merge_sums`).
pub type Partial = Vec<DataFrame>;

/// A stage kind's work over customer shards.
pub trait Sharded: Send + Sync {
    /// Passes over the shards before finalize (default 1). A later pass's partials may use the
    /// merged partials of the passes before, e.g. to select exact order statistics in two.
    fn passes(&self) -> usize {
        1
    }

    /// The partial of one shard's inputs in pass `earlier.len()`, `earlier` the merged partials
    /// of the passes before.
    fn partial(&self, inputs: &StageInputs, earlier: &[Partial]) -> Result<Partial>;

    /// The partials of all shards in `pass` as one.
    fn merge(&self, pass: usize, parts: Vec<Partial>) -> Result<Partial>;

    /// Tables computed once from the merged partials after `pass` (by the driver, not per
    /// shard), added to the merged partial of that pass: what the next pass needs of all
    /// customers, e.g. fitted models. None by default.
    fn between(&self, _pass: usize, _merged: &[Partial]) -> Result<Partial> {
        Ok(Vec::new())
    }

    /// The stage's aggregate tables from the merged partials of every pass, for a run as of
    /// `as_of`, and the global values its per-customer tables need. `whole` holds what is not
    /// split by customer: sources read whole (spend) and the upstream stages' aggregate
    /// tables; it must not be read for customers.
    fn finalize(&self, merged: Vec<Partial>, whole: &StageInputs, as_of: NaiveDate) -> Result<Finalized>;

    /// One shard's rows of the per-customer tables (`None` at the aggregate tables' places),
    /// from its inputs and the finalized globals. The whole table is the shards' rows.
    fn customer_rows(&self, _inputs: &StageInputs, _globals: &Partial) -> Result<Vec<Option<DataFrame>>> {
        Ok(Vec::new())
    }

    /// The last pass's partial with the shard's per-customer rows, for a kind whose last pass
    /// already knows all they need (RFM's bounds come from the passes before): `customer_rows`
    /// is then not called, so the rows are computed once. `None` (the default): the last pass
    /// is `partial`, and the rows come after finalize.
    fn last_partial_with_rows(
        &self,
        _inputs: &StageInputs,
        _earlier: &[Partial],
    ) -> Result<Option<(Partial, Vec<Option<DataFrame>>)>> {
        Ok(None)
    }
}

/// One shard's partial of `pass`, and its per-customer rows when the last pass gives them.
pub fn partial_of_pass(
    stage: &dyn Sharded,
    inputs: &StageInputs,
    earlier: &[Partial],
) -> Result<(Partial, Option<Vec<Option<DataFrame>>>)> {
    if earlier.len() + 1 == stage.passes() {
        if let Some((partial, rows)) = stage.last_partial_with_rows(inputs, earlier)? {
            return Ok((partial, Some(rows)));
        }
    }
    Ok((stage.partial(inputs, earlier)?, None))
}

/// What finalize gives: the aggregate tables (`None` where a per-customer table goes), and the
/// globals for `Sharded::customer_rows` (e.g. RFM cut points, fitted model parameters).
pub struct Finalized {
    pub tables: Vec<Option<DataFrame>>,
    pub globals: Partial,
}

impl Finalized {
    /// Aggregate tables only.
    pub fn tables(tables: Vec<DataFrame>) -> Finalized {
        Finalized {
            tables: tables.into_iter().map(Some).collect(),
            globals: Vec::new(),
        }
    }
}

/// A sharded stage's tables over one shard holding every customer: the single-machine run.
pub fn run_one_shard(stage: &dyn Sharded, inputs: &StageInputs) -> Result<Vec<DataFrame>> {
    let as_of = inputs.shared()?.as_of;
    let clock = std::time::Instant::now();
    let lap = |what: &str| tracing::trace!("one shard: {what} at {:.3} s", clock.elapsed().as_secs_f64());
    let mut merged = Vec::new();
    let mut early_rows = None;
    for pass in 0..stage.passes() {
        let (partial, rows) = partial_of_pass(stage, inputs, &merged)?;
        lap(&format!("pass {pass} partial"));
        early_rows = early_rows.or(rows);
        merged.push(stage.merge(pass, vec![partial])?);
        let extra = stage.between(pass, &merged)?;
        merged[pass].extend(extra);
        lap(&format!("pass {pass} merged"));
    }
    let finalized = stage.finalize(merged, inputs, as_of)?;
    lap("finalized");
    let mut rows = match early_rows {
        Some(rows) => rows,
        None => stage.customer_rows(inputs, &finalized.globals)?,
    };
    rows.resize(finalized.tables.len(), None);
    finalized
        .tables
        .into_iter()
        .zip(rows)
        .enumerate()
        .map(|(index, (table, rows))| {
            table
                .or(rows)
                .ok_or_else(|| anyhow::anyhow!("table {index} is neither aggregate nor per customer"))
        })
        .collect()
}

/// The merged partial of a one-pass kind.
pub fn only_pass(merged: Vec<Partial>) -> Result<Partial> {
    merged
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no merged partial"))
}

/// A double's bits as a u64 that orders as `f64::total_cmp` does (sign flipped for positives,
/// all bits for negatives): the keys of exact order statistics over doubles.
pub fn order_key(value: f64) -> u64 {
    let bits = value.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// An integer column of a partial's table as i64 values (nulls as 0).
pub fn int_values(frame: &DataFrame, name: &str) -> Result<Vec<i64>> {
    Ok(frame
        .column(name)?
        .cast(&DataType::Int64)?
        .i64()?
        .iter()
        .map(|value| value.unwrap_or(0))
        .collect())
}

/// The `index`-th table of every partial, one frame each (for merging a kind's tables one by
/// one).
pub fn tables_at(parts: &[Partial], index: usize) -> Result<Vec<DataFrame>> {
    parts
        .iter()
        .map(|part| {
            part.get(index)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("a partial has no table {index}"))
        })
        .collect()
}

/// Frames with the same columns as one: every other column summed per distinct `keys` (a null
/// key is a value of its own), sorted by the keys (nulls last). Integer sums, so exact whatever
/// the order of the frames. A partial has one row per key, in the order its kind builds it:
/// one frame is returned as it is (no polars call for the one-shard run, where the pool is
/// busy with other stages' writes).
pub fn merge_sums(mut frames: Vec<DataFrame>, keys: &[&str]) -> Result<DataFrame> {
    if frames.len() == 1 {
        return Ok(frames.pop().expect("one frame"));
    }
    let first = frames.first().ok_or_else(|| anyhow::anyhow!("nothing to merge"))?;
    let sums: Vec<Expr> = first
        .get_column_names()
        .iter()
        .filter(|name| !keys.contains(&name.as_str()))
        .map(|name| col(name.as_str()).sum())
        .collect();
    let schema = first.schema().clone();
    let frames: Vec<LazyFrame> = frames.into_iter().map(DataFrame::lazy).collect();
    let all = concat(frames, UnionArgs::default())?;
    let key_exprs: Vec<Expr> = keys.iter().map(|key| col(*key)).collect();
    let merged = all
        .group_by(key_exprs.clone())
        .agg(sums)
        .sort_by_exprs(
            key_exprs,
            SortMultipleOptions::default()
                .with_nulls_last(true)
                .with_maintain_order(true),
        )
        .collect()?;
    // Sums keep each column's type (a sum of Int64 is Int64; of UInt32, UInt32 widened back).
    let columns: Vec<Column> = schema
        .iter_names()
        .map(|name| -> Result<Column> {
            let dtype = schema.get(name).expect("listed");
            Ok(merged.column(name)?.cast(dtype)?)
        })
        .collect::<Result<_>>()?;
    Ok(DataFrame::new(merged.height(), columns)?)
}

/// `merge_sums` for frames each sorted by `keys` (ascending, one row per key, no null key), as
/// clv's pattern and spend counts are built: a linear merge, two frames at a time, instead of a
/// group-by over their concatenation. Those tables hold nearly a row per customer, and the
/// group-by's hash tables and row encodings were the peak of a sharded run at 50M lines
/// (docs/scale-out.md). Frames that are not sorted go to `merge_sums`.
pub fn merge_sorted_sums(frames: Vec<DataFrame>, keys: &[&str]) -> Result<DataFrame> {
    let mut frames = frames.into_iter();
    let mut merged = frames.next().ok_or_else(|| anyhow::anyhow!("nothing to merge"))?;
    for next in frames {
        merged = match merge_two_sorted(&merged, &next, keys)? {
            Some(both) => both,
            None => merge_sums(vec![merged, next], keys)?,
        };
    }
    Ok(merged)
}

/// A column's values as one slice (Int64 or Float64, one chunk, no nulls): what a merge of
/// sorted counts reads without copying.
#[derive(Clone, Copy)]
enum Values<'a> {
    Int(&'a [i64]),
    Float(&'a [f64]),
}

impl<'a> Values<'a> {
    fn of(column: &'a Column) -> Option<Values<'a>> {
        if column.null_count() > 0 {
            return None;
        }
        match column.dtype() {
            DataType::Int64 => column.i64().ok()?.cont_slice().ok().map(Values::Int),
            DataType::Float64 => column.f64().ok()?.cont_slice().ok().map(Values::Float),
            _ => None,
        }
    }

    /// Doubles compare as `f64::total_cmp` (as `order_key` orders them).
    fn compare(self, i: usize, other: Values, j: usize) -> std::cmp::Ordering {
        match (self, other) {
            (Values::Int(a), Values::Int(b)) => a[i].cmp(&b[j]),
            (Values::Float(a), Values::Float(b)) => a[i].total_cmp(&b[j]),
            _ => std::cmp::Ordering::Equal,
        }
    }
}

/// Two frames sorted by `keys` merged by walking both, their other columns added where a key is
/// in both; `None` when a column is not a one-chunk Int64 or Float64 without nulls, the two
/// differ, or either frame is not sorted (the caller then groups).
fn merge_two_sorted(a: &DataFrame, b: &DataFrame, keys: &[&str]) -> Result<Option<DataFrame>> {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a.clone(), b.clone());
    a.rechunk_mut();
    b.rechunk_mut();
    let names: Vec<String> = a.get_column_names().iter().map(|n| n.to_string()).collect();
    let mut columns = Vec::with_capacity(names.len());
    for name in &names {
        let (Some(x), Some(y)) = (Values::of(a.column(name)?), Values::of(b.column(name)?)) else {
            return Ok(None);
        };
        if std::mem::discriminant(&x) != std::mem::discriminant(&y) {
            return Ok(None);
        }
        columns.push((keys.contains(&name.as_str()), x, y));
    }
    let key_columns: Vec<(Values, Values)> = columns.iter().filter(|c| c.0).map(|c| (c.1, c.2)).collect();
    let compare = |i: usize, j: usize| {
        key_columns
            .iter()
            .map(|(x, y)| x.compare(i, *y, j))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    };
    let ascending = |side: usize, n: usize| {
        (1..n).all(|i| {
            key_columns
                .iter()
                .map(|&(x, y)| if side == 0 { x } else { y })
                .map(|values| values.compare(i - 1, values, i))
                .find(|o| o.is_ne())
                == Some(Ordering::Less)
        })
    };
    if !ascending(0, a.height()) || !ascending(1, b.height()) {
        return Ok(None);
    }
    // Each output row: its row in `a` and in `b` (`u32::MAX`: none).
    const NONE: u32 = u32::MAX;
    let mut picks: Vec<(u32, u32)> = Vec::with_capacity(a.height().max(b.height()));
    let (mut i, mut j) = (0, 0);
    while i < a.height() || j < b.height() {
        let order = match (i < a.height(), j < b.height()) {
            (true, true) => compare(i, j),
            (true, false) => Ordering::Less,
            _ => Ordering::Greater,
        };
        let from_a = if order != Ordering::Greater { i as u32 } else { NONE };
        let from_b = if order != Ordering::Less { j as u32 } else { NONE };
        picks.push((from_a, from_b));
        i += usize::from(order != Ordering::Greater);
        j += usize::from(order != Ordering::Less);
    }
    let merged = names
        .iter()
        .zip(&columns)
        .map(|(name, &(key, x, y))| -> Column {
            let pick = |(p, q): (u32, u32)| (p != NONE).then_some(p as usize).ok_or(q as usize);
            match (x, y) {
                (Values::Int(x), Values::Int(y)) => {
                    let values: Vec<i64> = picks
                        .iter()
                        .map(|&(p, q)| match (key, pick((p, q))) {
                            (true, Ok(p)) => x[p],
                            (true, Err(q)) => y[q],
                            (false, _) => {
                                (if p != NONE { x[p as usize] } else { 0 })
                                    + (if q != NONE { y[q as usize] } else { 0 })
                            }
                        })
                        .collect();
                    Column::new(name.as_str().into(), values)
                }
                (Values::Float(x), Values::Float(y)) => {
                    let values: Vec<f64> = picks
                        .iter()
                        .map(|&(p, q)| match (key, pick((p, q))) {
                            (true, Ok(p)) => x[p],
                            (true, Err(q)) => y[q],
                            (false, _) => match (p != NONE, q != NONE) {
                                (true, true) => x[p as usize] + y[q as usize],
                                (true, false) => x[p as usize],
                                _ => y[q as usize],
                            },
                        })
                        .collect();
                    Column::new(name.as_str().into(), values)
                }
                _ => unreachable!("checked above"),
            }
        })
        .collect();
    Ok(Some(DataFrame::new(picks.len(), merged)?))
}

/// The shard of a customer id among `shards`: a fixed hash of the id's value (integers by
/// value, text by bytes), so every reader of the data puts a customer in the same shard.
pub fn shard_of_ids(ids: &Column, shards: usize) -> Result<Vec<u32>> {
    use std::hash::BuildHasher;
    let hasher = foldhash::fast::FixedState::with_seed(0x5_4A2D);
    let shards = shards.max(1) as u64;
    let of = |hash: u64| ((hash >> 32) % shards) as u32;
    let ids = ids.as_materialized_series();
    Ok(match ids.dtype() {
        DataType::String => ids
            .str()?
            .iter()
            .map(|id| of(hasher.hash_one(id.unwrap_or_default().as_bytes())))
            .collect(),
        _ => ids
            .cast(&DataType::Int64)?
            .i64()?
            .iter()
            .map(|id| of(hasher.hash_one(id.unwrap_or_default())))
            .collect(),
    })
}

/// The shared tables of each of `shards` customer shards (by `shard_of_ids`), each with its
/// customers renumbered from 0 in the same order. Released customer_periods (no stage left
/// reads them) stay released in the shards.
pub fn split(shared: &SharedTables, shards: usize) -> Result<Vec<SharedTables>> {
    let facts = &shared.customer_facts;
    let shard_of = shard_of_ids(facts.column("customer_id")?, shards)?;
    let periods = shared.customer_periods().ok();
    let keys = match &periods {
        Some(periods) => crate::core::prepare::values::<UInt32Type>(periods, "customer_key")?,
        None => &[],
    };
    let (distinct, codes) = &shared.acquisition;
    (0..shards as u32)
        .map(|shard| {
            let own: Vec<IdxSize> = (0..facts.height() as IdxSize)
                .filter(|&c| shard_of[c as usize] == shard)
                .collect();
            let mut new_key = vec![u32::MAX; facts.height()];
            for (key, &customer) in own.iter().enumerate() {
                new_key[customer as usize] = key as u32;
            }
            let mut shard_facts = facts.take(&IdxCa::from_vec("".into(), own.clone()))?;
            shard_facts.with_column(Column::new(
                "customer_key".into(),
                (0..own.len() as IdxSize).collect::<Vec<_>>(),
            ))?;
            shard_facts.rechunk_mut();
            let shard_periods = match &periods {
                Some(periods) => {
                    let rows: Vec<IdxSize> = (0..keys.len() as IdxSize)
                        .filter(|&row| new_key[keys[row as usize] as usize] != u32::MAX)
                        .collect();
                    let mut shard_periods = periods.take(&IdxCa::from_vec("".into(), rows.clone()))?;
                    let renumbered: Vec<u32> = rows.iter().map(|&row| new_key[keys[row as usize] as usize]).collect();
                    shard_periods.with_column(Column::new("customer_key".into(), renumbered))?;
                    shard_periods.rechunk_mut();
                    Some(shard_periods)
                }
                None => None,
            };
            let shard_codes: Vec<u32> = own.iter().map(|&c| codes[c as usize]).collect();
            Ok(SharedTables::new(
                shard_facts,
                shard_periods,
                (distinct.clone(), shard_codes),
                shared.as_of,
            ))
        })
        .collect()
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::core::input::{InputStats, SourceOrders};
    use crate::core::stages::SourceData;

    /// Shared tables of random orders: `(customer, day, revenue in units, channel)`, days
    /// counted from 2023-01-01, as of 2024-06-30.
    pub fn shared_of(orders: &[(u32, i32, i64, u8)], customers: u32) -> SharedTables {
        let start = crate::core::period::to_days(NaiveDate::from_ymd_opt(2023, 1, 1).unwrap());
        let mut frame = df! {
            "id" => orders.iter().map(|o| o.0 % customers).collect::<Vec<u32>>(),
            "date" => orders.iter().map(|o| start + o.1).collect::<Vec<i32>>(),
            "ordered_ts" => orders.iter().map(|o| i64::from(o.1) * 1_000).collect::<Vec<i64>>(),
            "revenue" => orders.iter().map(|o| o.2 * 1_000_000).collect::<Vec<i64>>(),
            "channel" => orders.iter().map(|o| if o.3 == 3 { crate::core::orders::NO_CHANNEL } else { u32::from(o.3) }).collect::<Vec<u32>>(),
        }
        .unwrap();
        let dates = frame.column("date").unwrap().cast(&DataType::Date).unwrap();
        frame.with_column(dates).unwrap();
        crate::core::prepare::shared_tables(SourceOrders {
            orders: frame,
            customer_ids: Series::new(
                "customer_id".into(),
                (0..customers as i64).map(|c| c * 7 + 1).collect::<Vec<_>>(),
            ),
            channels: Some(Series::new("".into(), ["app", "store", "web"])),
            stats: InputStats::default(),
            as_of: NaiveDate::from_ymd_opt(2024, 6, 30).unwrap(),
        })
        .unwrap()
    }

    /// The stage's partials of the `shards` (each a list of named sources) merge to the
    /// merged partial of `whole`, finalize to the same tables, and their per-customer rows,
    /// put together and sorted by customer_id, are the whole's.
    pub fn assert_merge_equal(
        stage: &dyn Sharded,
        whole: &[(&str, SourceData)],
        shards: &[Vec<(&str, SourceData)>],
        as_of: NaiveDate,
    ) {
        fn inputs<'a>(sources: &'a [(&'a str, SourceData)]) -> Vec<(&'a str, &'a SourceData)> {
            sources.iter().map(|(name, data)| (*name, data)).collect()
        }
        let of = |sources: &[(&str, SourceData)], earlier: &[Partial]| {
            partial_of_pass(
                stage,
                &StageInputs {
                    sources: inputs(sources),
                    upstream: Vec::new(),
                },
                earlier,
            )
            .unwrap()
            .0
        };
        let count = shards.len();
        let (mut whole_merged, mut merged) = (Vec::new(), Vec::new());
        for pass in 0..stage.passes() {
            let whole_partial = stage.merge(pass, vec![of(whole, &whole_merged)]).unwrap();
            let parts = shards.iter().map(|shard| of(shard, &merged)).collect();
            let pass_merged = stage.merge(pass, parts).unwrap();
            assert_eq!(pass_merged.len(), whole_partial.len());
            for (a, b) in pass_merged.iter().zip(&whole_partial) {
                assert_frames_equal(a, b, &format!("{count} shards, pass {pass}"));
            }
            whole_merged.push(whole_partial);
            merged.push(pass_merged);
            let (extra, whole_extra) = match (stage.between(pass, &merged), stage.between(pass, &whole_merged)) {
                (Ok(extra), Ok(whole_extra)) => (extra, whole_extra),
                (Err(a), Err(b)) => {
                    assert_eq!(a.to_string(), b.to_string(), "{count} shards");
                    return;
                }
                (a, b) => panic!("{count} shards: {:?} but whole {:?}", a.err(), b.err()),
            };
            for (a, b) in extra.iter().zip(&whole_extra) {
                assert_frames_equal(a, b, &format!("{count} shards, between pass {pass}"));
            }
            merged[pass].extend(extra);
            whole_merged[pass].extend(whole_extra);
        }
        let context = StageInputs {
            sources: inputs(whole),
            upstream: Vec::new(),
        };
        let (merged_passes, whole_passes) = (merged.clone(), whole_merged.clone());
        // A run that fails (e.g. no margin to observe) fails alike, whatever the split.
        let (a, b) = match (
            stage.finalize(merged, &context, as_of),
            stage.finalize(whole_merged, &context, as_of),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string(), "{count} shards");
                return;
            }
            (a, b) => panic!("{count} shards: {:?} but whole {:?}", a.err(), b.err()),
        };
        for (a, b) in a.tables.iter().zip(&b.tables) {
            match (a, b) {
                (Some(a), Some(b)) => assert_frames_equal(a, b, &format!("{count} shards")),
                (None, None) => {}
                _ => panic!("a table is aggregate in one and per customer in the other"),
            }
        }
        // The shard's rows: from the last pass (given the merged passes before) or after finalize.
        let rows_of = |sources: &[(&str, SourceData)], globals: &Partial, earlier: &[Partial]| {
            let inputs = StageInputs {
                sources: inputs(sources),
                upstream: Vec::new(),
            };
            match stage
                .last_partial_with_rows(&inputs, &earlier[..earlier.len() - 1])
                .unwrap()
            {
                Some((_, rows)) => rows,
                None => stage.customer_rows(&inputs, globals).unwrap(),
            }
        };
        let whole_rows = rows_of(whole, &b.globals, &whole_passes);
        for (index, whole_table) in whole_rows.iter().enumerate() {
            let Some(whole_table) = whole_table else { continue };
            let parts: Vec<DataFrame> = shards
                .iter()
                .filter_map(|shard| rows_of(shard, &a.globals, &merged_passes)[index].clone())
                .collect();
            let mut together = parts[0].clone();
            for part in &parts[1..] {
                together.vstack_mut(part).unwrap();
            }
            let sorted = |frame: &DataFrame| frame.sort(["customer_id"], SortMultipleOptions::default()).unwrap();
            let (a, b) = (sorted(&together), sorted(whole_table));
            assert_frames_equal(&a, &b, &format!("{count} shards, table {index}"));
        }
    }

    /// The same columns and rows, in any order (a merged partial is sorted by its keys, one
    /// shard's is in the order its kind builds it; keys lead, so rows sorted by every column
    /// line up): integers, text and dates exactly, doubles to 1e-12 relative (a sum of doubles
    /// depends on the order of its terms).
    pub fn assert_frames_equal(a: &DataFrame, b: &DataFrame, what: &str) {
        assert_eq!(a.get_column_names(), b.get_column_names(), "{what}");
        assert_eq!(a.height(), b.height(), "{what}:\n{a}\n{b}");
        let sorted = |frame: &DataFrame| {
            let names: Vec<PlSmallStr> = frame.get_column_names().into_iter().cloned().collect();
            frame
                .sort(names, SortMultipleOptions::default().with_nulls_last(true))
                .unwrap()
        };
        let (a, b) = (&sorted(a), &sorted(b));
        for (x, y) in a.columns().iter().zip(b.columns()) {
            let equal = match x.dtype() {
                DataType::Float64 | DataType::Float32 => {
                    let (x, y) = (x.cast(&DataType::Float64).unwrap(), y.cast(&DataType::Float64).unwrap());
                    let (x, y) = (x.f64().unwrap(), y.f64().unwrap());
                    let close = x.iter().zip(y.iter()).all(|pair| match pair {
                        (Some(u), Some(v)) => {
                            u == v || (u.is_nan() && v.is_nan()) || (u - v).abs() <= 1e-12 * u.abs().max(v.abs())
                        }
                        (None, None) => true,
                        _ => false,
                    });
                    close
                }
                _ => x.as_materialized_series().equals_missing(y.as_materialized_series()),
            };
            assert!(equal, "{what}: column `{}` differs:\n{a}\n{b}", x.name());
        }
    }

    /// `assert_merge_equal` for a stage over one orders source, split into `shards`.
    pub fn assert_shards_merge(stage: &dyn Sharded, shared: &SharedTables, shards: usize) {
        let whole = [("orders", SourceData::Orders(shared.clone()))];
        let parts: Vec<Vec<(&str, SourceData)>> = split(shared, shards)
            .unwrap()
            .into_iter()
            .map(|tables| vec![("orders", SourceData::Orders(tables))])
            .collect();
        assert_merge_equal(stage, &whole, &parts, shared.as_of);
    }

    /// Random orders: (customer, day, revenue in units with refunds, channel with none).
    pub fn random_orders() -> impl proptest::strategy::Strategy<Value = Vec<(u32, i32, i64, u8)>> {
        proptest::collection::vec((0u32..60, 0i32..545, -20i64..200, 0u8..4), 1..300)
    }

    #[test]
    fn shards_hold_every_customer_once_with_their_days() {
        let orders: Vec<(u32, i32, i64, u8)> = (0..200)
            .map(|i| (i * 7 % 41, (i * 13 % 500) as i32, 5 + i64::from(i % 9), (i % 4) as u8))
            .collect();
        let shared = shared_of(&orders, 41);
        let parts = split(&shared, 3).unwrap();
        let customers: usize = parts.iter().map(|p| p.customer_facts.height()).sum();
        assert_eq!(customers, shared.customer_facts.height());
        let periods: usize = parts.iter().map(|p| p.customer_periods().unwrap().height()).sum();
        assert_eq!(periods, shared.customer_periods().unwrap().height());
        // A customer's shard is the same however the ids are held.
        let ints = shard_of_ids(&Column::new("".into(), [1i64, 8, 15]), 4).unwrap();
        let int32 = shard_of_ids(&Column::new("".into(), [1i32, 8, 15]), 4).unwrap();
        assert_eq!(ints, int32);
    }

    #[test]
    fn merging_adds_per_key_with_null_keys_of_their_own() {
        let a = df! { "k" => [Some("x"), None, Some("y")], "n" => [1i64, 2, 3] }.unwrap();
        let b = df! { "k" => [None, Some("x")], "n" => [10i64, 20] }.unwrap();
        let merged = merge_sums(vec![a, b], &["k"]).unwrap();
        let keys: Vec<Option<&str>> = merged.column("k").unwrap().str().unwrap().iter().collect();
        assert_eq!(keys, [Some("x"), Some("y"), None]);
        let sums: Vec<Option<i64>> = merged.column("n").unwrap().i64().unwrap().iter().collect();
        assert_eq!(sums, [Some(21), Some(3), Some(12)]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Sorted partials merged by walking them equal the group-by merge, whatever the split
        /// and the order of the merges; a partial out of order falls back to it.
        #[test]
        fn sorted_merges_equal_the_group_by(
            rows in proptest::collection::vec((0i64..4, -2i64..3, 0u8..5, 1i64..9), 0..60),
            parts in 1usize..5,
            shuffled: bool,
        ) {
            use std::collections::BTreeMap;
            let mut split: Vec<BTreeMap<(i64, u64), (i64, f64)>> = vec![BTreeMap::new(); parts];
            for (i, &(x, t, m, n)) in rows.iter().enumerate() {
                let m = f64::from(m) * 0.25 + 0.5;
                let cell = split[i % parts].entry((x * 10 + t, order_key(m))).or_insert((0, 0.0));
                cell.0 += n;
                cell.1 += m * n as f64;
            }
            let frames: Vec<DataFrame> = split
                .iter()
                .map(|part| {
                    let mut rows: Vec<_> = part.iter().collect();
                    if shuffled {
                        rows.reverse();
                    }
                    df! {
                        "k" => rows.iter().map(|((k, _), _)| *k).collect::<Vec<i64>>(),
                        "m" => rows.iter().map(|((_, m), _)| f64::from_bits(if m >> 63 == 1 { m & !(1 << 63) } else { !m })).collect::<Vec<f64>>(),
                        "n" => rows.iter().map(|(_, (n, _))| *n).collect::<Vec<i64>>(),
                        "s" => rows.iter().map(|(_, (_, s))| *s).collect::<Vec<f64>>(),
                    }
                    .unwrap()
                })
                .collect();
            let walked = merge_sorted_sums(frames.clone(), &["k", "m"]).unwrap();
            let grouped = merge_sums(frames, &["k", "m"]).unwrap();
            assert_frames_equal(&walked, &grouped, "sorted merge");
        }
    }
}
