//! Publishing outputs as snapshots: a run writes every table into its own folder
//! (`OUT/runs/.staging-<run id>/`), fsynced, adds its manifest, renames the folder to
//! `OUT/runs/<as_of>_<run id>/` and then points the symlink `OUT/latest` at it with one atomic
//! rename. Readers of `OUT/latest/<table>.parquet` therefore see the tables of one complete run,
//! never a mix, and a kill at any moment leaves `latest` on a complete snapshot. The newest
//! `keep_runs` snapshots are kept. `OUT/_last_run.json` records every run's outcome (`running`
//! while it holds the lock); a lock file keeps two runs apart.

use std::fs::{self, File};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use serde::Serialize;

pub const MANIFEST: &str = "_manifest.json";
pub const LAST_RUN: &str = "_last_run.json";
pub const LOCK: &str = ".pipeline.lock";
pub const LATEST: &str = "latest";
pub const RUNS: &str = "runs";
const STAGING_PREFIX: &str = ".tmp-";
const STAGING_DIR_PREFIX: &str = ".staging-";

/// The snapshot a run writes: `OUT/runs/.staging-<run id>/` until `publish` moves it into view.
#[derive(Debug)]
pub struct Snapshot {
    root: PathBuf,
    run_id: String,
    /// Where the run's tables are written.
    pub dir: PathBuf,
}

impl Snapshot {
    /// A fresh staging folder for `run_id` under `root` (the output directory).
    pub fn begin(root: &Path, run_id: &str) -> Result<Snapshot> {
        let runs = root.join(RUNS);
        fs::create_dir_all(&runs).with_context(|| format!("cannot create `{}`", runs.display()))?;
        let dir = runs.join(format!("{STAGING_DIR_PREFIX}{run_id}"));
        fs::create_dir(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
        Ok(Snapshot {
            root: root.to_path_buf(),
            run_id: run_id.to_string(),
            dir,
        })
    }

    /// The folder the snapshot gets when published.
    pub fn final_dir(&self, as_of: &str) -> PathBuf {
        self.root.join(RUNS).join(format!("{as_of}_{}", self.run_id))
    }

    /// Put `file` of an earlier snapshot into this one unchanged (a hard link, or a copy where
    /// links are not possible).
    pub fn carry_over(&self, file: &Path) -> Result<()> {
        let name = file.file_name().context("a table file has a name")?;
        let target = self.dir.join(name);
        if fs::hard_link(file, &target).is_err() {
            fs::copy(file, &target)
                .with_context(|| format!("cannot copy `{}` into the new snapshot", file.display()))?;
        }
        Ok(())
    }

    /// Write `manifest` into the snapshot, move it to `runs/<as_of>_<run id>`, point `latest` at
    /// it, and remove all but the newest `keep_runs` snapshots (never the one `latest` names).
    pub fn publish<T: Serialize>(self, as_of: &str, manifest: &T, keep_runs: usize) -> Result<PathBuf> {
        write_json_atomic(&self.dir, MANIFEST, manifest)?;
        sync_dir(&self.dir);
        let target = self.final_dir(as_of);
        fs::rename(&self.dir, &target)
            .with_context(|| format!("cannot move `{}` to `{}`", self.dir.display(), target.display()))?;
        sync_dir(&self.root.join(RUNS));
        let name = target.file_name().expect("a snapshot folder has a name");
        if let Err(error) = point_latest(&self.root, &Path::new(RUNS).join(name)) {
            // Not in view: gone, as if never published.
            fs::remove_dir_all(&target).ok();
            return Err(error);
        }
        prune(&self.root, keep_runs.max(1), &target);
        Ok(target)
    }

    /// Remove the staging folder of a run that will not publish.
    pub fn discard(self) {
        fs::remove_dir_all(&self.dir).ok();
    }
}

/// The snapshot `OUT/latest` names, if any.
pub fn latest_snapshot(root: &Path) -> Option<PathBuf> {
    let latest = root.join(LATEST);
    latest.is_dir().then(|| fs::canonicalize(&latest).unwrap_or(latest))
}

/// Point `OUT/latest` at `relative` (below `root`) with one rename of a new symlink over it.
fn point_latest(root: &Path, relative: &Path) -> Result<()> {
    let latest = root.join(LATEST);
    if latest.is_dir() && !latest.is_symlink() {
        bail!(
            "`{}` is a directory, not the symlink this tool keeps there: move it away",
            latest.display()
        );
    }
    let temp = root.join(format!("{STAGING_PREFIX}{}-{LATEST}", std::process::id()));
    fs::remove_file(&temp).ok();
    #[cfg(unix)]
    std::os::unix::fs::symlink(relative, &temp)
        .with_context(|| format!("cannot create the symlink `{}`", temp.display()))?;
    #[cfg(windows)]
    std::os::windows::fs::symlink_dir(relative, &temp)
        .with_context(|| format!("cannot create the symlink `{}`", temp.display()))?;
    fs::rename(&temp, &latest).with_context(|| format!("cannot point `{}` at the new snapshot", latest.display()))?;
    sync_dir(root);
    Ok(())
}

/// Published snapshots (`runs/<as_of>_<run id>`), oldest run first (run ids sort by time).
pub fn snapshots(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(String, PathBuf)> = fs::read_dir(root.join(RUNS))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            let (_, run_id) = name.split_once('_')?;
            (!name.starts_with('.') && entry.path().is_dir()).then(|| (run_id.to_string(), entry.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, path)| path).collect()
}

/// Remove all but the newest `keep` snapshots, never `current`.
fn prune(root: &Path, keep: usize, current: &Path) {
    let all = snapshots(root);
    let excess = all.len().saturating_sub(keep);
    for old in all.into_iter().take(excess) {
        if old != current {
            if let Err(error) = fs::remove_dir_all(&old) {
                tracing::warn!("cannot remove the old snapshot `{}`: {error}", old.display());
            }
        }
    }
}

/// Holds the output directory's lock for the life of a run: an OS file lock (flock) on
/// `OUT/.pipeline.lock`, so a run that dies releases it with its process — no stale locks. The
/// file holds the pid of the run holding it and is emptied when a run ends normally; a pid found
/// there on start-up names a run that did not finish.
#[derive(Debug)]
pub struct RunLock {
    file: File,
}

impl RunLock {
    /// Take the lock, waiting up to `wait` for another run to finish, or fail naming the process
    /// that holds it.
    pub fn acquire(dir: &Path, wait: std::time::Duration) -> Result<RunLock> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create output directory `{}`", dir.display()))?;
        let path = dir.join(LOCK);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot open lock file `{}` (is the output directory writable?)",
                    path.display()
                )
            })?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline {
                        let holder = fs::read_to_string(&path).unwrap_or_default();
                        bail!(
                            "output directory `{}` is locked by another run (pid {}); lock file `{}`{}",
                            dir.display(),
                            holder.trim(),
                            path.display(),
                            if wait.is_zero() {
                                String::new()
                            } else {
                                format!(" (waited {} s)", wait.as_secs())
                            }
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(fs::TryLockError::Error(error)) => {
                    return Err(error).with_context(|| format!("cannot lock `{}`", path.display()));
                }
            }
        }
        let previous = fs::read_to_string(&path).unwrap_or_default();
        if !previous.trim().is_empty() {
            tracing::warn!(
                "the previous run (pid {}) did not finish; its leftovers are cleaned up",
                previous.trim()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())
            .with_context(|| format!("cannot write lock file `{}`", path.display()))?;
        file.sync_all().ok();
        Ok(RunLock { file })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // A normal end: no pid in the file. The OS lock goes with the file handle.
        self.file.set_len(0).ok();
        self.file.sync_all().ok();
    }
}

/// A table written to a temporary file, ready to be renamed into place.
#[derive(Debug)]
pub struct StagedTable {
    pub name: String,
    pub temp: PathBuf,
    pub target: PathBuf,
    pub rows: usize,
}

/// Write one table to a temporary file in `dir` (zstd Parquet) and fsync it; the pages of
/// columns another table of the run shares are taken from `shared` (or left there).
/// What a table says about itself in its Parquet file: the stage kind and table suffix whose
/// catalog entries (`catalog::describe`) become each field's `description`, and file-level
/// key-value pairs (as_of, timezone, run id, …).
#[derive(Debug, Clone)]
pub struct TableMetadata {
    pub kind: &'static str,
    pub suffix: &'static str,
    pub key_values: Vec<(String, String)>,
}

pub fn stage_table(
    dir: &Path,
    name: &str,
    frame: &mut DataFrame,
    shared: &SharedPages,
    metadata: &TableMetadata,
) -> Result<StagedTable> {
    let target = dir.join(format!("{name}.parquet"));
    let temp = dir.join(format!("{STAGING_PREFIX}{}-{name}.parquet", std::process::id()));
    let start = std::time::Instant::now();
    let result = (|| -> Result<()> {
        let writing = || format!("cannot write table `{name}` to `{}`", temp.display());
        let file = File::create(&temp).with_context(|| format!("cannot create `{}`", temp.display()))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        write_parquet_in_windows(&mut out, frame, WINDOW_CELLS, Some(shared), RUN_ZSTD, Some(metadata))
            .with_context(writing)?;
        let file = out.into_inner().map_err(|e| e.into_error()).with_context(writing)?;
        file.sync_all()
            .with_context(|| format!("cannot fsync `{}`", temp.display()))?;
        Ok(())
    })();
    if let Err(error) = result {
        fs::remove_file(&temp).ok();
        return Err(error);
    }
    tracing::debug!(
        "table `{name}`: {} rows written in {:.3} s",
        frame.height(),
        start.elapsed().as_secs_f64()
    );
    Ok(StagedTable {
        name: name.to_string(),
        temp,
        target,
        rows: frame.height(),
    })
}

/// The file's key-value metadata: the Arrow schema with a `description` on every field the
/// catalog knows (readers such as pyarrow and arrow-rs take field metadata from it), then
/// `metadata.key_values`.
fn key_value_metadata(frame: &DataFrame, metadata: &TableMetadata) -> polars::io::parquet::write::KeyValueMetadata {
    use polars_arrow::datatypes::{ArrowSchema, Metadata};
    use polars_parquet::write::KeyValue;
    let schema: ArrowSchema = frame
        .schema()
        .to_arrow(CompatLevel::newest())
        .iter_values()
        .map(|field| {
            let mut field = field.clone();
            if let Some(doc) = crate::catalog::describe(metadata.kind, metadata.suffix, field.name.as_str()) {
                field = field.with_metadata(Metadata::from([("description".into(), doc.description.into())]));
            }
            (field.name.clone(), field)
        })
        .collect();
    let mut pairs = vec![polars_parquet::write::schema_to_metadata_key(&schema)];
    pairs.extend(metadata.key_values.iter().map(|(key, value)| KeyValue {
        key: key.clone(),
        value: Some(value.clone()),
    }));
    polars::io::parquet::write::KeyValueMetadata::Static(pairs)
}

/// (row group, column) cells encoded together: enough to keep the pool busy, few enough that a
/// window's pages are a few tens of MB.
const WINDOW_CELLS: usize = 24;

/// The compressed pages of columns that several tables of a run hold alike — the same buffer,
/// not merely equal values: `customer_id` in every per-customer table, the facts' `revenue` as
/// `historic_clv` and rfm's `monetary`, `aov` — each encoded and compressed once per run (about
/// a third of the bytes the per-customer tables hold). Only the columns of the frames it
/// is made for (`for_columns_of`: the shared tables, which live for the whole run) are kept;
/// a cell is found by its column's buffer (address, bytes, validity), its rows, and its Parquet
/// type and encoding without the name. The columns are held here as well, so no other buffer
/// can take their address while it lives.
#[derive(Default)]
pub struct SharedPages {
    /// The buffers whose pages are kept, and their columns (held: see above).
    candidates: std::collections::HashSet<Buffer>,
    _held: Vec<Column>,
    pages: std::sync::Mutex<std::collections::HashMap<CellKey, std::sync::Arc<Vec<PageCopy>>>>,
    /// Cells taken from here rather than encoded.
    pub reused: std::sync::atomic::AtomicUsize,
}

/// A column's values: (address, bytes, whether it has a validity bitmap); see `column_buffer`.
type Buffer = (usize, usize, bool);

/// One row group of a column whose buffer may be shared (`column_buffer`).
#[derive(Clone, PartialEq, Eq, Hash)]
struct CellKey {
    buffer: Buffer,
    rows: std::ops::Range<usize>,
    /// The column's Parquet type with an empty name, and its encoding.
    descriptor: polars_parquet::parquet::metadata::Descriptor,
    encoding: Vec<polars_parquet::write::Encoding>,
}

/// A compressed data page, to be written again (polars' pages cannot be cloned).
struct PageCopy {
    header: polars_parquet::parquet::page::DataPageHeader,
    bytes: Vec<u8>,
    compression: polars_parquet::parquet::compression::Compression,
    uncompressed: usize,
    rows: usize,
}

/// A column's values when it is one chunk of numbers without nulls (the only columns whose
/// pages are shared): their address, their length in bytes, and whether a validity bitmap
/// (all set) comes with them, which polars encodes differently from none.
fn column_buffer(column: &Column) -> Option<Buffer> {
    fn of<T: PolarsNumericType>(values: &ChunkedArray<T>) -> Option<Buffer> {
        let array = values.downcast_iter().next()?;
        let bytes = std::mem::size_of::<T::Native>() * array.len();
        Some((array.values().as_ptr() as usize, bytes, array.validity().is_some()))
    }
    let series = column.as_series()?;
    if series.n_chunks() != 1 || series.null_count() != 0 {
        return None;
    }
    match series.dtype() {
        DataType::Int64 => of(series.i64().ok()?),
        DataType::Float64 => of(series.f64().ok()?),
        DataType::UInt32 => of(series.u32().ok()?),
        DataType::Int32 => of(series.i32().ok()?),
        _ => None,
    }
}

impl SharedPages {
    /// Pages of the columns of `frames` (and of other frames' columns sharing their buffers).
    pub fn for_columns_of<'a>(frames: impl IntoIterator<Item = &'a DataFrame>) -> SharedPages {
        let held: Vec<Column> = frames
            .into_iter()
            .flat_map(|frame| frame.columns().iter().filter(|column| column_buffer(column).is_some()))
            .cloned()
            .collect();
        SharedPages {
            candidates: held.iter().filter_map(column_buffer).collect(),
            _held: held,
            ..SharedPages::default()
        }
    }

    /// The pages kept for `key`, for a column of Parquet type `descriptor`.
    fn pages(
        &self,
        key: &CellKey,
        descriptor: &polars_parquet::parquet::metadata::Descriptor,
    ) -> Option<Vec<polars_parquet::write::CompressedPage>> {
        use polars_parquet::write::{CompressedDataPage, CompressedPage};
        let copies = self.pages.lock().expect("shared pages lock").get(key).cloned()?;
        self.reused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pages = copies.iter().map(|copy| {
            CompressedPage::Data(CompressedDataPage::new(
                copy.header.clone(),
                polars_parquet::parquet::CowBuffer::Owned(copy.bytes.clone()),
                copy.compression,
                copy.uncompressed,
                descriptor.clone(),
                copy.rows,
            ))
        });
        Some(pages.collect())
    }

    /// Keep copies of `pages` for `key` (data pages only: a dictionary page's bytes are not
    /// reachable from outside polars).
    fn keep(&self, key: CellKey, pages: &mut [polars_parquet::write::CompressedPage]) {
        use polars_parquet::write::CompressedPage;
        let mut copies = Vec::with_capacity(pages.len());
        for page in pages {
            let CompressedPage::Data(page) = page else {
                return;
            };
            copies.push(PageCopy {
                header: page.header().clone(),
                compression: page.compression(),
                uncompressed: page.uncompressed_size(),
                rows: page.num_rows().unwrap_or(0),
                bytes: page.slice_mut().to_vec(),
            });
        }
        let mut kept = self.pages.lock().expect("shared pages lock");
        kept.entry(key).or_insert_with(|| std::sync::Arc::new(copies));
    }
}

/// A text column of few distinct values as the dictionary array polars' writer makes of it
/// (codes in order of first appearance, so the same pages), or none to leave the choice to
/// polars (many distinct values). polars hashes every row's text for that; here a row is looked
/// up by its view first, and the stages' text columns (segment, stage, channel, rfm_score) are
/// gathered from a handful of names, so their views repeat (a small lookup per row).
fn text_dictionary(array: &dyn polars_arrow::array::Array) -> Option<Box<dyn polars_arrow::array::Array>> {
    use polars_arrow::array::{Array, MutableBinaryViewArray, PrimitiveArray, Utf8ViewArray};
    use polars_arrow::datatypes::ArrowDataType;
    let text = array.as_any().downcast_ref::<Utf8ViewArray>()?;
    // polars writes plain above 3/4 distinct (by an estimate) past 128 rows: past half, it decides.
    let most = if text.len() > 128 { text.len() / 2 } else { text.len() };
    let (distinct, mut keys) = crate::text_codes([text], most)?;
    // A null row's key is never written; any valid one will do.
    keys.iter_mut().filter(|key| **key == u32::MAX).for_each(|key| *key = 0);
    let values: Utf8ViewArray = MutableBinaryViewArray::<str>::from_values_iter(distinct.into_iter()).into();
    let keys = PrimitiveArray::new(ArrowDataType::UInt32, keys.into(), text.validity().cloned());
    dictionary_array(keys, values.boxed())
}

/// `keys` (u32 positions) into `values` as a dictionary array of the values' type.
fn dictionary_array(
    keys: polars_arrow::array::PrimitiveArray<u32>,
    values: Box<dyn polars_arrow::array::Array>,
) -> Option<Box<dyn polars_arrow::array::Array>> {
    use polars_arrow::array::DictionaryArray;
    use polars_arrow::datatypes::{ArrowDataType, IntegerType};
    let dtype = ArrowDataType::Dictionary(IntegerType::UInt32, Box::new(values.dtype().clone()), false);
    DictionaryArray::try_new(dtype, keys, values)
        .ok()
        .map(|dictionary| dictionary.boxed())
}

/// A column of doubles without nulls or NaN that holds few distinct values in this row group
/// (at most `FLOAT_DICTIONARY` of them, and an eighth as many as rows in its first
/// `SAMPLE_ROWS`), as a dictionary array (values in order of first appearance), to be written
/// with a dictionary as polars writes integers: polars writes every double plain. clv's ages
/// and recencies in weeks (whole days over 7) are such columns: bit-packed keys instead of
/// 8 bytes a row for zstd to shrink. Other doubles stop at the sample.
fn float_dictionary(array: &dyn polars_arrow::array::Array) -> Option<Box<dyn polars_arrow::array::Array>> {
    use polars_arrow::array::{Array, PrimitiveArray};
    use polars_arrow::datatypes::ArrowDataType;
    const FLOAT_DICTIONARY: usize = 1 << 12;
    const SAMPLE_ROWS: usize = 1 << 14;
    let doubles = array.as_any().downcast_ref::<PrimitiveArray<f64>>()?;
    if doubles.null_count() > 0 || doubles.len() < 2 * SAMPLE_ROWS {
        return None;
    }
    let mut codes: hashbrown::HashMap<u64, u32, foldhash::fast::FixedState> = Default::default();
    let mut distinct: Vec<f64> = Vec::new();
    let mut keys: Vec<u32> = Vec::with_capacity(doubles.len());
    for (row, &value) in doubles.values().iter().enumerate() {
        if row == SAMPLE_ROWS && distinct.len() > SAMPLE_ROWS / 8 {
            return None;
        }
        let code = *codes.entry(value.to_bits()).or_insert_with(|| {
            distinct.push(value);
            (distinct.len() - 1) as u32
        });
        if distinct.len() > FLOAT_DICTIONARY || value.is_nan() {
            return None;
        }
        keys.push(code);
    }
    let keys = PrimitiveArray::new(ArrowDataType::UInt32, keys.into(), None);
    dictionary_array(
        keys,
        PrimitiveArray::new(ArrowDataType::Float64, distinct.into(), None).boxed(),
    )
}

/// How the tables' pages are compressed: zstd at `level`, and pages that zstd would hardly
/// shrink stored in raw blocks.
#[derive(Clone, Copy, Debug)]
struct Zstd {
    level: i32,
    /// A page whose first `SAMPLE` bytes zstd shrinks less than this ratio is stored in a zstd
    /// frame of raw blocks (a copy, any zstd decoder reads it) instead of compressed; `None`:
    /// every page compressed (polars' bytes at level 1).
    store_below: Option<f64>,
}

/// The tables' pages: level −1, as most of their bytes are doubles that zstd barely shrinks
/// (CLV, probabilities, averages), where level −1 compresses much faster than level 1 for a
/// few % more bytes. Pages under 1.25× in a sample are stored (expected purchases, no-purchase
/// probabilities, CLV, bit-packed dictionary keys): compressing them buys almost nothing.
const RUN_ZSTD: Zstd = Zstd {
    level: -1,
    store_below: Some(1.25),
};

/// The bytes of a page that `Zstd::store_below` looks at (16 KiB: as a whole page, the columns
/// above come out at 1.00–1.10× in such a sample, the others at 1.5× and more).
const SAMPLE: usize = 16 << 10;

/// `input` as a zstd frame of raw blocks (RFC 8878: single segment, the content size in 4 or 8
/// bytes, blocks of at most 128 KiB, no checksum) appended to `output`.
fn raw_zstd_frame(input: &[u8], output: &mut Vec<u8>) {
    const MAX_BLOCK: usize = 128 << 10;
    output.reserve(input.len() + 14 + 3 * (input.len() / MAX_BLOCK + 1));
    output.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    match u32::try_from(input.len()) {
        Ok(size) => {
            output.push(0b1010_0000); // content size in 4 bytes, single segment
            output.extend_from_slice(&size.to_le_bytes());
        }
        Err(_) => {
            output.push(0b1110_0000); // in 8 bytes
            output.extend_from_slice(&(input.len() as u64).to_le_bytes());
        }
    }
    let mut blocks = input.chunks(MAX_BLOCK).peekable();
    if blocks.peek().is_none() {
        output.extend_from_slice(&[1, 0, 0]); // one empty last block
    }
    while let Some(block) = blocks.next() {
        let last = u32::from(blocks.peek().is_none());
        let header = (block.len() as u32) << 3 | last; // block type 0: raw
        output.extend_from_slice(&header.to_le_bytes()[..3]);
        output.extend_from_slice(block);
    }
}

/// Compress a page as `zstd` says into the page polars' `compress` makes (the whole buffer of
/// a V1 data page or of a dictionary page), with this thread's compression context (polars
/// makes a context per page) into a buffer it does not zero first.
fn compress_page(
    page: polars_parquet::parquet::page::Page,
    zstd: Zstd,
) -> PolarsResult<polars_parquet::write::CompressedPage> {
    use polars_parquet::parquet::page::{CompressedDataPage, CompressedDictPage, CompressedPage, Page};
    use polars_parquet::parquet::{compression::Compression, CowBuffer};
    use std::cell::RefCell;
    thread_local! {
        static CONTEXT: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    }
    let Zstd { level, store_below } = zstd;
    let zstd = |input: &[u8]| -> PolarsResult<CowBuffer> {
        let mut output = Vec::with_capacity(zstd::zstd_safe::compress_bound(input.len()));
        CONTEXT
            .with_borrow_mut(|context| -> std::io::Result<()> {
                if !matches!(context, Some((current, _)) if *current == level) {
                    *context = Some((level, zstd::bulk::Compressor::new(level)?));
                }
                let (_, compressor) = context.as_mut().expect("set above");
                if let Some(ratio) = store_below.filter(|_| input.len() >= 2 * SAMPLE) {
                    let sample = compressor.compress_to_buffer(&input[..SAMPLE], &mut output)?;
                    output.clear();
                    if (SAMPLE as f64) < ratio * sample as f64 {
                        raw_zstd_frame(input, &mut output);
                        return Ok(());
                    }
                }
                compressor.compress_to_buffer(input, &mut output)?;
                Ok(())
            })
            .map_err(|error| polars_err!(ComputeError: "zstd: {error}"))?;
        Ok(CowBuffer::Owned(output))
    };
    Ok(match page {
        Page::Data(page) => {
            let uncompressed = page.buffer().len();
            let num_rows = page.num_rows().expect("written pages know their rows");
            let buffer = zstd(page.buffer())?;
            CompressedPage::Data(CompressedDataPage::new(
                page.header().clone(),
                buffer,
                Compression::Zstd,
                uncompressed,
                page.descriptor,
                num_rows,
            ))
        }
        Page::Dict(page) => CompressedPage::Dict(CompressedDictPage::new(
            zstd(&page.buffer)?,
            Compression::Zstd,
            page.buffer.len(),
            page.num_values,
            page.is_sorted,
        )),
    })
}

/// Write `frame` as zstd Parquet (as `zstd` says; at level 1 with nothing stored, the bytes are those of polars'
/// `ParquetWriter::finish` with zstd level 1, nearly level 3's size at a fraction of the time) with
/// statistics, in polars' row groups, with the columns of a window of row groups encoded and
/// compressed in parallel (`window_cells` cells at a time) while the window before is written.
/// polars' own `ParquetWriter::finish` compresses pages lazily while it writes them, on one
/// thread. Holding every compressed page of a table until the end would hold the whole file in
/// fresh memory.
fn write_parquet_in_windows<W: Write + Send>(
    file: W,
    frame: &mut DataFrame,
    window_cells: usize,
    shared: Option<&SharedPages>,
    zstd: Zstd,
    metadata: Option<&TableMetadata>,
) -> Result<()> {
    use polars::io::parquet::write::get_encodings;
    use polars_parquet::write::{array_to_columns, CompressedPage, CompressionOptions, Version, WriteOptions};
    use rayon::prelude::*;
    // The codec polars' writer and page headers are told of; the pages themselves are
    // compressed by `compress_page`, as `zstd` says.
    let compression = ParquetCompression::Zstd(Some(polars_utils::compression::ZstdLevel::try_new(1)?));
    let statistics = StatisticsOptions::default();
    let options = WriteOptions {
        statistics,
        compression: CompressionOptions::from(compression),
        version: Version::V1,
        data_page_size: None,
    };
    let mut writer = ParquetWriter::new(file)
        .with_compression(compression)
        .with_statistics(statistics);
    if let Some(metadata) = metadata {
        writer = writer.with_key_value_metadata(Some(key_value_metadata(frame, metadata)));
    }
    let mut writer = writer.batched(frame.schema())?;
    let arrow_schema = frame.schema().to_arrow(CompatLevel::newest());
    // polars asks for a dictionary on every number column, and for floats estimates the
    // cardinality of each row group before its cast to a dictionary fails
    // and the values are written plain: float columns are asked for plain at once.
    let encodings: Vec<Vec<polars_parquet::write::Encoding>> = get_encodings(&arrow_schema)
        .iter()
        .zip(arrow_schema.iter_values())
        .map(|(encodings, field)| match field.dtype() {
            ArrowDataType::Float32 | ArrowDataType::Float64 => vec![polars_parquet::write::Encoding::Plain],
            _ => encodings.clone(),
        })
        .collect();
    let dictionary_encoding = vec![polars_parquet::write::Encoding::RleDictionary];
    let fields = writer.parquet_schema().fields().to_vec();
    let leaves = writer.parquet_schema().columns().to_vec();
    // Per column: its buffer, when its pages may be shared with another table's (a plain
    // column: one leaf, the column's own).
    let buffers: Vec<Option<Buffer>> = frame
        .columns()
        .iter()
        .map(|column| {
            let shared = shared?;
            column_buffer(column).filter(|buffer| shared.candidates.contains(buffer) && leaves.len() == fields.len())
        })
        .collect();
    // The row groups `ParquetWriter::finish` would write.
    let chunked = polars::frame::chunk_df_for_writing(frame, 512 * 512)?;
    let batches: Vec<_> = chunked
        .iter_chunks(CompatLevel::newest(), false)
        .filter(|batch| !batch.is_empty())
        .collect();
    let starts: Vec<usize> = batches
        .iter()
        .scan(0, |row, batch| {
            let start = *row;
            *row += batch.len();
            Some(start)
        })
        .collect();
    let key_of = |group: usize, column: usize| -> Option<CellKey> {
        let buffer = buffers[column]?;
        let mut descriptor = leaves[column].descriptor.clone();
        descriptor.primitive_type.field_info.name = PlSmallStr::EMPTY;
        Some(CellKey {
            buffer,
            rows: starts[group]..starts[group] + batches[group].len(),
            descriptor,
            encoding: encodings[column].clone(),
        })
    };
    /// A row group's rows and, per column, the compressed pages of each of its leaf columns.
    type Group = (u64, Vec<Vec<CompressedPage>>);
    let encode = |groups: std::ops::Range<usize>| -> PolarsResult<Vec<Group>> {
        let cells: Vec<(usize, usize)> = groups
            .clone()
            .flat_map(|group| (0..fields.len()).map(move |column| (group, column)))
            .collect();
        let encoded: Vec<Vec<Vec<CompressedPage>>> = cells
            .par_iter()
            .map(|&(group, column)| -> PolarsResult<Vec<Vec<CompressedPage>>> {
                let key = key_of(group, column);
                if let (Some(shared), Some(key)) = (shared, &key) {
                    if let Some(pages) = shared.pages(key, &leaves[column].descriptor) {
                        return Ok(vec![pages]);
                    }
                }
                let array = &batches[group].columns()[column];
                // polars' own encoding for text is this dictionary too.
                let dictionary = text_dictionary(array.as_ref()).or_else(|| float_dictionary(array.as_ref()));
                let (array, encoding) = match &dictionary {
                    Some(dictionary) => (dictionary, &dictionary_encoding),
                    None => (array, &encodings[column]),
                };
                let mut pages: Vec<Vec<CompressedPage>> =
                    array_to_columns(array, fields[column].clone(), options, encoding)?
                        .into_iter()
                        .map(|pages| pages.map(|page| compress_page(page?, zstd)).collect())
                        .collect::<PolarsResult<_>>()?;
                if let (Some(shared), Some(key), [leaf]) = (shared, key, pages.as_mut_slice()) {
                    shared.keep(key, leaf);
                }
                Ok(pages)
            })
            .collect::<PolarsResult<_>>()?;
        let mut encoded = encoded.into_iter();
        Ok(groups
            .map(|group| {
                let leaves = encoded.by_ref().take(fields.len()).flatten().collect();
                (batches[group].len() as u64, leaves)
            })
            .collect())
    };
    let mut write = |groups: Vec<Group>| -> PolarsResult<()> {
        for (rows, leaves) in groups {
            writer.write_row_group(rows, &leaves)?;
        }
        Ok(())
    };
    let per_window = (window_cells / fields.len().max(1)).max(1);
    let mut pending: Vec<Group> = Vec::new();
    for start in (0..batches.len()).step_by(per_window) {
        let window = start..(start + per_window).min(batches.len());
        let (written, encoded) = rayon::join(|| write(std::mem::take(&mut pending)), || encode(window));
        written?;
        pending = encoded?;
    }
    write(pending)?;
    writer.finish()?;
    Ok(())
}

/// Rename staged tables into place, then fsync the directory.
pub fn publish(dir: &Path, staged: &[StagedTable]) -> Result<()> {
    for table in staged {
        if table.target.is_dir() {
            bail!(
                "cannot publish table `{}`: `{}` is a directory",
                table.name,
                table.target.display()
            );
        }
    }
    for table in staged {
        fs::rename(&table.temp, &table.target)
            .with_context(|| format!("cannot move `{}` to `{}`", table.temp.display(), table.target.display()))?;
    }
    sync_dir(dir);
    Ok(())
}

/// Remove staged files of a run that will not publish.
pub fn discard(staged: &[StagedTable]) {
    for table in staged {
        fs::remove_file(&table.temp).ok();
    }
}

/// Remove what a killed run left behind (only with the lock held): temporary files in the
/// output directory and staging folders of snapshots never published.
pub fn clean_stale_temps(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(STAGING_PREFIX) || name.starts_with(&format!("{LOCK}.")) {
                fs::remove_file(entry.path()).ok();
            }
        }
    }
    if let Ok(entries) = fs::read_dir(dir.join(RUNS)) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(STAGING_DIR_PREFIX) {
                fs::remove_dir_all(entry.path()).ok();
            }
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        handle.sync_all().ok();
    }
}

/// Write a JSON document atomically (temp file, fsync, rename).
pub fn write_json_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    let target = dir.join(name);
    let temp = dir.join(format!("{STAGING_PREFIX}{}-{name}", std::process::id()));
    let text = serde_json::to_string_pretty(value).context("serializing the manifest")?;
    let result = (|| -> Result<()> {
        let mut file = File::create(&temp).with_context(|| format!("cannot create `{}`", temp.display()))?;
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&temp, &target)
            .with_context(|| format!("cannot move `{}` to `{}`", temp.display(), target.display()))?;
        Ok(())
    })();
    if result.is_err() {
        fs::remove_file(&temp).ok();
    }
    sync_dir(dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parallel writer writes the same bytes as polars' `ParquetWriter::finish` with the same
    /// options: row groups, pages, statistics and all.
    #[test]
    fn parallel_writer_writes_what_polars_writes() {
        let rows = 600_000; // three row groups
        let ids: Vec<i64> = (0..rows).map(|i| (i * 7919) % 1_000_003).collect();
        let names: Vec<Option<&str>> = (0..rows)
            .map(|i| match i % 5 {
                0 => None,
                1 => Some("web"),
                2 => Some("app"),
                3 => Some("a shop with a long name"),
                _ => Some("shop"),
            })
            .collect();
        let values: Vec<Option<f64>> = (0..rows).map(|i| (i % 11 != 0).then(|| i as f64 / 3.0)).collect();
        let days: Vec<i32> = (0..rows).map(|i| 19_000 + (i % 700) as i32).collect();
        // Text of many distinct values (left to polars, which writes it plain) beside few.
        let labels: Vec<String> = (0..rows).map(|i| format!("customer {}", i / 2)).collect();
        let mut frame = df! {
            "id" => ids,
            "label" => labels,
            "channel" => names,
            "value" => values,
            "day" => days,
        }
        .unwrap();
        frame
            .with_column(frame.column("day").unwrap().cast(&DataType::Date).unwrap())
            .unwrap();
        let dir = std::env::temp_dir().join(format!("pipeline-sink-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (ours, theirs) = (dir.join("ours.parquet"), dir.join("theirs.parquet"));
        // One row group per window (the writes overlap the encoding), and all in one.
        write_parquet_in_windows(
            File::create(&ours).unwrap(),
            &mut frame.clone(),
            4,
            None,
            POLARS_ZSTD,
            None,
        )
        .unwrap();
        let whole = dir.join("whole.parquet");
        write_parquet_in_windows(
            File::create(&whole).unwrap(),
            &mut frame.clone(),
            1000,
            None,
            POLARS_ZSTD,
            None,
        )
        .unwrap();
        let theirs = polars_bytes(&mut frame, &theirs);
        let ours = fs::read(&ours).unwrap();
        let whole = fs::read(&whole).unwrap();
        fs::remove_dir_all(&dir).ok();
        assert!(ours.len() > 100_000);
        assert!(whole == theirs, "{} bytes vs polars' {}", whole.len(), theirs.len());
        assert!(ours == theirs, "{} bytes vs polars' {}", ours.len(), theirs.len());
    }

    /// polars' own setting: level 1, every page compressed.
    const POLARS_ZSTD: Zstd = Zstd {
        level: 1,
        store_below: None,
    };

    /// At the run's level (below polars' range) the pages are still zstd that polars and arrow-rs
    /// read back to the same frame: the column of noise in raw blocks, the others compressed.
    #[test]
    fn run_level_reads_back_as_written() {
        let rows = 300_000usize;
        let frame = df! {
            "id" => (0..rows as i64).collect::<Vec<_>>(),
            "value" => (0..rows).map(|i| (i % 13 != 0).then(|| (i % 1000) as f64 / 4.0)).collect::<Vec<_>>(),
            "noise" => (0..rows).map(noise_at).collect::<Vec<_>>(),
            "stage" => (0..rows).map(|i| ["new", "active", "lapsed"][i % 3]).collect::<Vec<_>>(),
            // Ages in weeks: 1500 distinct doubles, written with a dictionary.
            "weeks" => (0..rows).map(|i| (i * 7919 % 1500) as f64 / 7.0).collect::<Vec<_>>(),
        }
        .unwrap();
        let path = std::env::temp_dir().join(format!("pipeline-level-{}.parquet", std::process::id()));
        write_parquet_in_windows(
            File::create(&path).unwrap(),
            &mut frame.clone(),
            4,
            None,
            RUN_ZSTD,
            None,
        )
        .unwrap();
        let back = ParquetReader::new(File::open(&path).unwrap()).finish().unwrap();
        assert!(back.equals_missing(&frame));
        // arrow-rs reads the raw frames too, and its metadata shows which chunks were stored.
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let mut sizes = [(0i64, 0i64); 5]; // (compressed, uncompressed) per column
        for group in reader.metadata().row_groups() {
            for (size, chunk) in sizes.iter_mut().zip(group.columns()) {
                size.0 += chunk.compressed_size();
                size.1 += chunk.uncompressed_size();
            }
            let weeks = group.column(4);
            assert!(
                weeks.encodings().any(|e| e == parquet::basic::Encoding::RLE_DICTIONARY),
                "{:?}",
                weeks.encodings().collect::<Vec<_>>()
            );
            assert!(!group
                .column(2)
                .encodings()
                .any(|e| e == parquet::basic::Encoding::RLE_DICTIONARY));
        }
        let mut rows_back = 0;
        let arrow = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in arrow {
            let batch = batch.unwrap();
            let noise = batch
                .column(2)
                .as_any()
                .downcast_ref::<arrow::array::Float64Array>()
                .unwrap();
            for (row, value) in noise.values().iter().enumerate() {
                assert_eq!(*value, noise_at(rows_back + row), "noise row {}", rows_back + row);
            }
            rows_back += batch.num_rows();
        }
        /// splitmix64: doubles with random mantissas, which zstd cannot shrink.
        fn noise_at(i: usize) -> f64 {
            let mut z = (i as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        }
        fs::remove_file(&path).ok();
        assert_eq!(rows_back, rows);
        let [id, value, noise, _stage, weeks] = sizes;
        // 11-bit keys and the 1500 values of each row group.
        assert!(weeks.1 < (rows * 2) as i64, "{weeks:?}");
        // Stored: the frame's bytes plus a few per 128 KiB block.
        assert!(noise.0 > noise.1 && noise.0 < noise.1 + noise.1 / 1000, "{noise:?}");
        assert!(value.0 * 3 < value.1, "{value:?}");
        assert!(id.0 * 2 < id.1, "{id:?}");
    }

    /// A raw frame of any length decodes to its input with the zstd library.
    #[test]
    fn raw_frames_are_zstd() {
        for len in [0usize, 1, 255, 256, 131_071, 131_072, 131_073, 400_000] {
            let input: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut frame = vec![7];
            raw_zstd_frame(&input, &mut frame);
            assert_eq!(frame[0], 7);
            assert_eq!(frame.len(), 1 + 4 + 1 + 4 + 3 * len.div_ceil(131_072).max(1) + len);
            assert_eq!(zstd::bulk::decompress(&frame[1..], len).unwrap(), input, "{len} bytes");
        }
    }

    fn polars_bytes(frame: &mut DataFrame, path: &Path) -> Vec<u8> {
        ParquetWriter::new(File::create(path).unwrap())
            .with_compression(ParquetCompression::Zstd(Some(
                polars_utils::compression::ZstdLevel::try_new(1).unwrap(),
            )))
            .with_statistics(StatisticsOptions::default())
            .finish(frame)
            .unwrap();
        fs::read(path).unwrap()
    }

    /// Tables holding the same column buffers (renamed, beside other columns) take its pages
    /// from the first one written, and every file is still the bytes polars writes; a slice of
    /// a shared buffer (another address) and equal values in another buffer are encoded anew.
    #[test]
    fn shared_columns_are_compressed_once_and_written_alike() {
        let rows = 700_000i64; // two row groups of four pages per column
        let ids: Vec<i64> = (0..rows).map(|i| 1_000 + i * 3).collect();
        let values: Vec<f64> = (0..rows).map(|i| (i as f64).sqrt() / 7.0).collect();
        let facts = df! { "customer_id" => ids, "revenue" => values.clone() }.unwrap();
        let scores: Vec<u32> = (0..rows).map(|i| (i % 5) as u32 + 1).collect();
        let copy_of_values: Vec<f64> = values;
        let mut tables = [
            facts.clone(),
            DataFrame::new_infer_height(vec![
                facts.column("customer_id").unwrap().clone(),
                facts.column("revenue").unwrap().clone().with_name("monetary".into()),
                Column::new("score".into(), scores),
            ])
            .unwrap(),
            DataFrame::new_infer_height(vec![
                facts.column("customer_id").unwrap().clone(),
                Column::new("revenue".into(), copy_of_values),
            ])
            .unwrap(),
            facts.slice(1, rows as usize - 1),
        ];
        let dir = std::env::temp_dir().join(format!("pipeline-shared-pages-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let shared = SharedPages::for_columns_of([&facts]);
        for (n, frame) in tables.iter_mut().enumerate() {
            let ours = dir.join(format!("ours{n}.parquet"));
            write_parquet_in_windows(File::create(&ours).unwrap(), frame, 4, Some(&shared), POLARS_ZSTD, None).unwrap();
            let theirs = polars_bytes(&mut frame.clone(), &dir.join(format!("theirs{n}.parquet")));
            assert!(
                fs::read(&ours).unwrap() == theirs,
                "table {n} differs from polars' bytes"
            );
        }
        fs::remove_dir_all(&dir).ok();
        // Table 1 takes customer_id and revenue (2 columns × 2 groups), table 2 customer_id.
        assert_eq!(shared.reused.load(std::sync::atomic::Ordering::Relaxed), 6);
    }
}
