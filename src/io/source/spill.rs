//! An orders source in customer shards on disk, for runs whose memory is bounded (`--shards`).
//!
//! Two passes, each holding a shard's share at most:
//! 1. the lines, as the scan gives them to the fold (`lines_plan`), are written into one spill
//!    file per **order** shard (a hash of `order_id`), so every line of an order lands in one
//!    file, even when its lines name two customers;
//! 2. each order shard is folded into orders as a whole run folds every line (duplicates,
//!    refunds, rejections, the order naming two customers), and its usable orders are written
//!    into one spill file per **customer** shard (`shard::shard_of_ids` of `customer_id`).
//!
//! The accounting of every part adds up to the whole run's and is checked once, as one scan's
//! is. A customer shard is then read back into the orders a whole run would have of its
//! customers (`read_order_shard`). Spill files are Parquet, zstd-compressed; a lines file goes
//! as soon as it is folded.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::NaiveDate;
use polars::prelude::*;

use super::{fold_lines, for_each_batch, LineScan, LineTotals};
use crate::core::config::{AsOf, PipelineSettings, SourceConfig};
use crate::core::input::{InputStats, SourceOrders};
use crate::core::orders::NO_CHANNEL;
use crate::core::stages::shard::shard_of_ids;

/// An orders source spilled into customer shards.
#[derive(Debug)]
pub struct SpilledOrders {
    /// Each customer shard's orders file (`None` when the shard has no order).
    pub files: Vec<Option<PathBuf>>,
    /// The folder of the files, where a shard's numbered orders are kept after its first read.
    pub dir: PathBuf,
    /// The orders files' columns: `customer_id` (the source's type), `date`, `ordered_ts`,
    /// `revenue`[, `channel` (text)][, `cost`].
    pub schema: Schema,
    /// The whole source's accounting, as one scan gives it.
    pub stats: InputStats,
    pub as_of: NaiveDate,
    /// Bytes written into spill files by both passes.
    pub spill_bytes: u64,
    /// Cut points between the customer id ranges per-customer rows are put in order by
    /// (`range_of`): quantiles of a sample of the customers, as many ranges as shards.
    pub cuts: Series,
}

impl SpilledOrders {
    /// The id range of each of `ids` (customer_id values): rows of one range from every shard,
    /// sorted, come before the next range's, so per-customer tables are written in customer_id
    /// order, a range at a time.
    pub fn range_of(&self, ids: &Column) -> Result<Vec<u32>> {
        range_of(&self.cuts, ids)
    }

    /// How many id ranges `range_of` puts customers in.
    pub fn ranges(&self) -> usize {
        self.cuts.len() + 1
    }
}

/// The id range of each of `ids` (customer_id values) between `cuts` (ascending): range `r`
/// holds the ids from cut `r − 1` up to, not including, cut `r`.
pub fn range_of(cuts: &Series, ids: &Column) -> Result<Vec<u32>> {
    let ids = ids.as_materialized_series();
    Ok(match ids.dtype() {
        DataType::String => {
            let cuts: Vec<&str> = cuts.str()?.iter().flatten().collect();
            ids.str()?
                .iter()
                .map(|id| cuts.partition_point(|cut| *cut <= id.unwrap_or_default()) as u32)
                .collect()
        }
        _ => {
            let cuts: Vec<i64> = cuts.cast(&DataType::Int64)?.i64()?.iter().flatten().collect();
            ids.cast(&DataType::Int64)?
                .i64()?
                .iter()
                .map(|id| cuts.partition_point(|cut| *cut <= id.unwrap_or_default()) as u32)
                .collect()
        }
    })
}

/// Customers sampled for the id ranges: the `SAMPLED` with the smallest hashes of their id (a
/// bottom-k sample of the distinct customers, the same whatever the order they are seen in).
const SAMPLED: usize = 1 << 14;

/// A bottom-k sample of distinct customer ids.
struct IdSample {
    /// (hash, row in `ids`) of the kept ids, at most `SAMPLED` after each `add`.
    kept: Vec<(u64, Series)>,
}

impl IdSample {
    /// Offer the distinct ids of one part.
    fn add(&mut self, ids: &Series) -> Result<()> {
        use std::hash::BuildHasher;
        let hasher = foldhash::fast::FixedState::with_seed(0x5A_4D1E);
        let hashes: Vec<u64> = match ids.dtype() {
            DataType::String => ids
                .str()?
                .iter()
                .map(|id| hasher.hash_one(id.unwrap_or_default().as_bytes()))
                .collect(),
            _ => ids
                .cast(&DataType::Int64)?
                .i64()?
                .iter()
                .map(|id| hasher.hash_one(id.unwrap_or_default()))
                .collect(),
        };
        // Only ids below the largest kept hash can enter a full sample.
        let below = match self.kept.len() {
            SAMPLED => self.kept[SAMPLED - 1].0,
            _ => u64::MAX,
        };
        let mut rows: Vec<u32> = (0..hashes.len() as u32)
            .filter(|&row| hashes[row as usize] <= below)
            .collect();
        if rows.len() > SAMPLED {
            rows.select_nth_unstable_by_key(SAMPLED - 1, |&row| hashes[row as usize]);
            rows.truncate(SAMPLED);
        }
        let taken = ids.take(&IdxCa::from_vec("".into(), rows.clone()))?;
        for (at, &row) in rows.iter().enumerate() {
            self.kept.push((hashes[row as usize], taken.slice(at as i64, 1)));
        }
        self.kept.sort_by_key(|(hash, _)| *hash);
        self.kept.dedup_by_key(|(hash, _)| *hash);
        self.kept.truncate(SAMPLED);
        Ok(())
    }

    /// The `ranges − 1` cut points: the sampled ids at even quantiles, ascending.
    fn cuts(self, ranges: usize, dtype: &DataType) -> Result<Series> {
        let mut values = Series::new_empty("".into(), dtype);
        for (_, id) in &self.kept {
            values.append(id)?;
        }
        let sorted = values.sort(SortOptions::default())?;
        let n = sorted.len();
        let rows: Vec<IdxSize> = (1..ranges)
            .map(|range| (range * n / ranges) as IdxSize)
            .filter(|&row| (row as usize) < n)
            .collect();
        let cuts = sorted.take(&IdxCa::from_vec("".into(), rows))?;
        // Equal cuts make empty ranges: harmless, but one is enough.
        Ok(cuts.unique_stable()?)
    }
}

/// One part's bottom-k sample of its distinct customer ids (`ids`): the parts' samples together
/// give the cut points of the id ranges (`cuts_of`), as the sample of all would.
pub fn sample_ids(ids: &Series) -> Result<Series> {
    let mut sample = IdSample { kept: Vec::new() };
    sample.add(ids)?;
    let mut values = Series::new_empty("customer_id".into(), ids.dtype());
    for (_, id) in &sample.kept {
        values.append(id)?;
    }
    Ok(values)
}

/// The cut points of `ranges` customer id ranges from the parts' samples (`sample_ids`).
pub fn cuts_of(samples: &[Series], ranges: usize, dtype: &DataType) -> Result<Series> {
    let mut sample = IdSample { kept: Vec::new() };
    for part in samples {
        sample.add(part)?;
    }
    sample.cuts(ranges, dtype)
}

/// Lines of a Parquet input read by one scan in the spill pass.
const SLICE_LINES: u64 = 1 << 22;

/// Rows all of a pass's spill writers buffer together before writing (each shard's share
/// becomes a row group, of at least `MIN_BUFFERED_ROWS`).
const BUFFERED_ROWS: usize = 1 << 20;
const MIN_BUFFERED_ROWS: usize = 1 << 12;

/// Lines an order shard holds at most (its fold's memory): the spill pass writes at least
/// `lines / ORDER_SHARD_LINES` order shards, however few customer shards.
const ORDER_SHARD_LINES: u64 = 1 << 22;

/// Spill files of one kind, one per shard, written batch by batch; the shards' parts are cut
/// and written in parallel.
struct ShardFiles {
    files: Vec<ShardFile>,
}

/// One shard's spill file: its rows buffered until `flush_at`, then written as a row group.
struct ShardFile {
    path: PathBuf,
    flush_at: usize,
    writer: Option<polars::io::parquet::write::BatchedWriter<File>>,
    buffer: Vec<DataFrame>,
    buffered: usize,
}

impl ShardFiles {
    fn new(dir: &Path, prefix: &str, shards: usize) -> ShardFiles {
        let flush_at = (BUFFERED_ROWS / shards.max(1)).max(MIN_BUFFERED_ROWS);
        ShardFiles {
            files: (0..shards)
                .map(|shard| ShardFile {
                    path: dir.join(format!("{prefix}-{shard:04}.parquet")),
                    flush_at,
                    writer: None,
                    buffer: Vec::new(),
                    buffered: 0,
                })
                .collect(),
        }
    }

    fn len(&self) -> usize {
        self.files.len()
    }

    /// Add `frame`'s rows to the shards `shard_of` names (one per row).
    fn add(&mut self, frame: &DataFrame, shard_of: &[u32]) -> Result<()> {
        use rayon::prelude::*;
        let mut rows: Vec<Vec<IdxSize>> = vec![Vec::new(); self.files.len()];
        for (row, &shard) in shard_of.iter().enumerate() {
            rows[shard as usize].push(row as IdxSize);
        }
        self.files
            .par_iter_mut()
            .zip(rows)
            .try_for_each(|(file, rows)| file.add(frame, rows))
    }

    /// Every file finished: the shards' paths (`None` for a shard with no row) and the bytes
    /// written.
    fn finish(self) -> Result<(Vec<Option<PathBuf>>, u64)> {
        let mut bytes = 0;
        let mut paths = Vec::new();
        for mut file in self.files {
            file.flush()?;
            match file.writer.take() {
                Some(writer) => {
                    writer.finish()?;
                    bytes += std::fs::metadata(&file.path).map(|m| m.len()).unwrap_or(0);
                    paths.push(Some(file.path));
                }
                None => paths.push(None),
            }
        }
        Ok((paths, bytes))
    }
}

impl ShardFile {
    /// Add the `rows` of `frame`.
    fn add(&mut self, frame: &DataFrame, rows: Vec<IdxSize>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let part = if rows.len() == frame.height() {
            frame.clone()
        } else {
            frame.take(&IdxCa::from_vec("".into(), rows))?
        };
        self.buffered += part.height();
        self.buffer.push(part);
        if self.buffered >= self.flush_at {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let mut parts = std::mem::take(&mut self.buffer).into_iter();
        self.buffered = 0;
        let Some(mut frame) = parts.next() else {
            return Ok(());
        };
        for part in parts {
            frame.vstack_mut(&part)?;
        }
        // One row group per flush.
        frame.rechunk_mut();
        let path = &self.path;
        if self.writer.is_none() {
            let file = File::create(path).with_context(|| format!("cannot create spill file `{}`", path.display()))?;
            let writer = ParquetWriter::new(file)
                .with_compression(ParquetCompression::Zstd(Some(
                    polars_utils::compression::ZstdLevel::try_new(1)?,
                )))
                .with_statistics(StatisticsOptions::empty())
                .set_parallel(false)
                .batched(frame.schema())?;
            self.writer = Some(writer);
        }
        let writer = self.writer.as_mut().expect("created above");
        writer
            .write_batch(&frame)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot write spill file `{}`", path.display()))?;
        Ok(())
    }
}

/// Spill the orders source `source` into `shards` customer shards under `dir` (created): its
/// lines by order shard, then each order shard's usable orders by customer shard. Fails as a
/// whole scan does (rejections, stale data, several currencies).
pub fn spill_orders(
    source: &SourceConfig,
    settings: &PipelineSettings,
    as_of: AsOf,
    shards: usize,
    dir: &Path,
) -> Result<SpilledOrders> {
    let shards = shards.max(1);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the spill folder `{}`", dir.display()))?;
    let scan = LineScan::start(source, settings, as_of)?;
    let ordered = source.columns.line.is_some();

    // Pass 1: lines by order shard.
    // Parquet files are read in slices of `SLICE_LINES`: the pages of a file polars maps stay
    // resident until its scan ends, so one scan of a large file would hold all of it.
    let slices: Vec<Option<(u64, u64)>> = match scan.expected_lines {
        Some(total) if total > SLICE_LINES => (0..total.div_ceil(SLICE_LINES))
            .map(|slice| Some((slice * SLICE_LINES, SLICE_LINES)))
            .collect(),
        _ => vec![None],
    };
    let order_shards = match scan.expected_lines {
        Some(lines) => shards.max(lines.div_ceil(ORDER_SHARD_LINES) as usize),
        None => shards,
    };
    let mut spilling = (ShardFiles::new(dir, "lines", order_shards), 0u64);
    for slice in slices {
        let lines = match slice {
            Some((offset, len)) => scan.lines_slice(source, offset, len)?,
            None => scan.lines.clone(),
        };
        spilling = for_each_batch(
            source,
            lines,
            ordered,
            slice.map(|(_, len)| len),
            "lines spilled",
            spilling,
            |(lines, seen), batch| {
                *seen += batch.height() as u64;
                let shard_of = shard_of_ids(batch.column("order_id")?, lines.len())?;
                lines.add(&batch, &shard_of)
            },
        )?;
    }
    let (lines, seen) = spilling;
    let (line_files, mut spill_bytes) = lines.finish()?;
    crate::telemetry::release_freed_memory();
    tracing::debug!("lines spilled: {}", crate::telemetry::memory());
    tracing::info!(
        "source `{}`: {} lines spilled into {order_shards} order shards ({:.1} MB)",
        source.name,
        super::thousands(seen),
        spill_bytes as f64 / 1e6
    );

    // Pass 2: each order shard folded, its orders by customer shard.
    let mut totals = LineTotals::default();
    let mut orders = ShardFiles::new(dir, "orders", shards);
    let mut schema = None;
    let mut sample = IdSample { kept: Vec::new() };
    let progress = crate::telemetry::progress_bar(order_shards as u64, "order shards folded");
    for file in line_files.iter().flatten() {
        let lines = LazyFrame::scan_parquet(
            PlRefPath::new(file.to_string_lossy().as_ref()),
            ScanArgsParquet::default(),
        )?;
        let mut fold = scan.fold(source, rayon::current_num_threads());
        fold.expected_lines = None;
        let fold = fold_lines(source, lines, fold)?;
        let part = totals.add(source, settings, &scan.schema, fold)?;
        std::fs::remove_file(file).ok();
        crate::telemetry::release_freed_memory();
        sample.add(&part.customer_ids)?;
        let frame = with_customer_values(part.orders, &part.customer_ids, part.channels.as_ref())?;
        let shard_of = shard_of_ids(frame.column("customer_id")?, shards)?;
        orders.add(&frame, &shard_of)?;
        schema.get_or_insert_with(|| frame.schema().as_ref().clone());
        progress.inc(1);
    }
    progress.finish_and_clear();
    let (order_files, bytes) = orders.finish()?;
    spill_bytes += bytes;
    let (stats, as_of) = totals.check(source, settings, &scan)?;
    let schema: Schema = schema.context("no order left")?;
    let cuts = sample.cuts(shards, schema.get("customer_id").context("orders have customer ids")?)?;
    tracing::debug!("source `{}`: customer id ranges cut at {cuts:?}", source.name);
    tracing::info!(
        "source `{}`: {} orders spilled into {shards} customer shards; {:.1} MB spilled in all",
        source.name,
        super::thousands(stats.orders),
        spill_bytes as f64 / 1e6
    );
    Ok(SpilledOrders {
        files: order_files,
        dir: dir.to_path_buf(),
        schema,
        stats,
        as_of,
        spill_bytes,
        cuts,
    })
}

/// Folded orders with their customer's id and their channel's name in place of the fold's
/// numbers (which mean nothing outside it).
pub(super) fn with_customer_values(
    orders: DataFrame,
    customer_ids: &Series,
    channels: Option<&Series>,
) -> Result<DataFrame> {
    let ids = orders.column("id")?.u32()?;
    let mut columns = vec![customer_ids.take(ids)?.with_name("customer_id".into()).into_column()];
    for name in ["date", "ordered_ts", "revenue"] {
        columns.push(orders.column(name)?.clone());
    }
    if let Some(channels) = channels {
        let codes: IdxCa = orders
            .column("channel")?
            .u32()?
            .iter()
            .map(|code| code.filter(|&code| code != NO_CHANNEL))
            .collect();
        columns.push(channels.take(&codes)?.with_name("channel".into()).into_column());
    }
    if let Ok(cost) = orders.column("cost") {
        columns.push(cost.clone());
    }
    Ok(DataFrame::new(orders.height(), columns)?)
}

/// The orders of customer shard `shard`, as a whole run's scan gives them for these customers:
/// customers numbered from 0 in id order, channels coded in name order.
pub fn read_order_shard(spilled: &SpilledOrders, shard: usize) -> Result<SourceOrders> {
    // The first read numbers the shard's customers and channels and keeps the numbered orders
    // beside the spilled ones, so later reads (one per sweep) only read them back.
    let kept = |what: &str| spilled.dir.join(format!("orders-{shard:04}.{what}.parquet"));
    let (numbered, customers, channels) = (kept("numbered"), kept("customers"), kept("channels"));
    if numbered.exists() {
        let orders = read_spill(&numbered)?;
        let customer_ids = read_spill(&customers)?
            .column("customer_id")?
            .as_materialized_series()
            .clone();
        let channels = match orders.column("channel") {
            Ok(_) => Some(
                read_spill(&channels)?
                    .column("channel")?
                    .as_materialized_series()
                    .clone(),
            ),
            Err(_) => None,
        };
        return Ok(SourceOrders {
            orders,
            customer_ids,
            channels,
            stats: spilled.stats.clone(),
            as_of: spilled.as_of,
        });
    }
    let frame = match &spilled.files[shard] {
        Some(path) => read_spill(path)?,
        None => DataFrame::empty_with_schema(&spilled.schema),
    };
    let NumberedOrders {
        mut orders,
        customer_ids,
        channels: channel_names,
    } = number_orders(frame)?;
    write_spill(&numbered, &mut orders)?;
    write_spill(
        &customers,
        &mut DataFrame::new(
            customer_ids.len(),
            vec![customer_ids.clone().with_name("customer_id".into()).into_column()],
        )?,
    )?;
    if let Some(names) = &channel_names {
        write_spill(
            &channels,
            &mut DataFrame::new(
                names.len(),
                vec![names.clone().with_name("channel".into()).into_column()],
            )?,
        )?;
    }
    Ok(SourceOrders {
        orders,
        customer_ids,
        channels: channel_names,
        stats: spilled.stats.clone(),
        as_of: spilled.as_of,
    })
}

/// Orders with customer ids and channel names (a customer shard's, as spilled), numbered as a
/// whole run's scan numbers them: customers from 0 in id order, channels in name order.
pub struct NumberedOrders {
    /// `id`, `date`, `ordered_ts`, `revenue`[, `channel` (code)][, `cost`].
    pub orders: DataFrame,
    pub customer_ids: Series,
    pub channels: Option<Series>,
}

/// Number the orders of `frame` (`customer_id`, `date`, `ordered_ts`, `revenue`[, `channel`]
/// [, `cost`]): see `NumberedOrders`.
pub fn number_orders(frame: DataFrame) -> Result<NumberedOrders> {
    let ids = frame.column("customer_id")?.as_materialized_series();
    let (customer_ids, codes) = dense_codes(ids)?;
    let mut columns = vec![crate::core::columns::owned_column("id", codes)];
    for name in ["date", "ordered_ts", "revenue"] {
        columns.push(frame.column(name)?.clone());
    }
    let channel_names = match frame.column("channel") {
        Ok(channel) => {
            let (names, codes) = dense_codes(channel.as_materialized_series())?;
            columns.push(crate::core::columns::owned_column("channel", codes));
            Some(names)
        }
        Err(_) => None,
    };
    if let Ok(cost) = frame.column("cost") {
        columns.push(cost.clone());
    }
    let orders = DataFrame::new(frame.height(), columns)?;
    Ok(NumberedOrders {
        orders,
        customer_ids,
        channels: channel_names,
    })
}

/// Read a whole spill file.
pub fn read_spill(path: &Path) -> Result<DataFrame> {
    let file = File::open(path).with_context(|| format!("cannot open spill file `{}`", path.display()))?;
    ParquetReader::new(file)
        .finish()
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot read spill file `{}`", path.display()))
}

/// Write a whole spill file (zstd, fast); its bytes.
pub fn write_spill(path: &Path, frame: &mut DataFrame) -> Result<u64> {
    let file = File::create(path).with_context(|| format!("cannot create spill file `{}`", path.display()))?;
    ParquetWriter::new(file)
        .with_compression(ParquetCompression::Zstd(Some(
            polars_utils::compression::ZstdLevel::try_new(1)?,
        )))
        .with_statistics(StatisticsOptions::empty())
        .finish(frame)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot write spill file `{}`", path.display()))
}

/// The distinct non-null values of `values` in ascending order (as polars sorts them: numbers
/// by value, text by bytes), and each row's position among them (`NO_CHANNEL` for a null).
fn dense_codes(values: &Series) -> Result<(Series, Vec<u32>)> {
    fn dense<T: Ord + Copy + Send + Sync>(keys: &[Option<T>]) -> (Vec<IdxSize>, Vec<u32>) {
        use rayon::prelude::*;
        let mut order: Vec<u32> = (0..keys.len() as u32)
            .filter(|&row| keys[row as usize].is_some())
            .collect();
        order.par_sort_unstable_by_key(|&row| keys[row as usize]);
        let mut codes = vec![NO_CHANNEL; keys.len()];
        let mut firsts: Vec<IdxSize> = Vec::new();
        let mut previous = None;
        for row in order {
            let key = keys[row as usize];
            if key != previous {
                firsts.push(row as IdxSize);
                previous = key;
            }
            codes[row as usize] = firsts.len() as u32 - 1;
        }
        (firsts, codes)
    }
    let (firsts, codes) = match values.dtype() {
        DataType::String => {
            let text = values.str()?;
            let keys: Vec<Option<&str>> = text.iter().collect();
            dense(&keys)
        }
        _ => {
            let numbers = values.cast(&DataType::Int64)?;
            let keys: Vec<Option<i64>> = numbers.i64()?.iter().collect();
            dense(&keys)
        }
    };
    let distinct = values.take(&IdxCa::from_vec("".into(), firsts))?;
    Ok((distinct, codes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_codes_number_values_in_sort_order() {
        let text = Series::new("c".into(), [Some("b"), None, Some("a"), Some("b"), Some("c")]);
        let (names, codes) = dense_codes(&text).unwrap();
        assert_eq!(
            names.str().unwrap().iter().flatten().collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(codes, [1, NO_CHANNEL, 0, 1, 2]);
        let numbers = Series::new("c".into(), [30u64, 7, 30, 1_000]);
        let (ids, codes) = dense_codes(&numbers).unwrap();
        assert_eq!(ids.dtype(), &DataType::UInt64);
        assert_eq!(
            ids.u64().unwrap().into_no_null_iter().collect::<Vec<_>>(),
            [7, 30, 1_000]
        );
        assert_eq!(codes, [1, 0, 1, 2]);
    }
}
