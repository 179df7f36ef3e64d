//! The tables' Parquet writer when the `parallel-writer` feature is on: the pages of a window
//! of row groups are encoded and compressed in parallel while the window before is written, and
//! the pages of columns several tables of a run hold alike (`SharedPages`) are encoded once per
//! run. At zstd level 1 the bytes are those polars' `ParquetWriter::finish` writes (a test
//! checks it); the run's level is −1, which polars' options cannot express. A build without the
//! feature writes the same values at level 1, only slower.

use std::io::Write;

use anyhow::Result;
use polars::prelude::*;
use polars_arrow::datatypes::ArrowDataType;

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
    let (distinct, mut keys) = crate::core::columns::text_codes([text], most)?;
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

/// The zstd level of the tables' pages: −1, below polars' range. Most of their bytes are doubles
/// that zstd barely shrinks (CLV, probabilities, averages), which level −1 compresses much faster
/// than level 1 for a few % more bytes (docs/performance.md).
const ZSTD_LEVEL: i32 = -1;

/// Compress a page into the page polars' `compress` makes (the whole buffer of a V1 data page or
/// of a dictionary page), at zstd `level`, with this thread's compression context (polars makes
/// a context per page) into a buffer it does not zero first.
fn compress_page(
    page: polars_parquet::parquet::page::Page,
    level: i32,
) -> PolarsResult<polars_parquet::write::CompressedPage> {
    use polars_parquet::parquet::page::{CompressedDataPage, CompressedDictPage, CompressedPage, Page};
    use polars_parquet::parquet::{compression::Compression, CowBuffer};
    use std::cell::RefCell;
    thread_local! {
        static CONTEXT: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    }
    let zstd = |input: &[u8]| -> PolarsResult<CowBuffer> {
        let mut output = Vec::with_capacity(zstd::zstd_safe::compress_bound(input.len()));
        CONTEXT
            .with_borrow_mut(|context| -> std::io::Result<()> {
                if !matches!(context, Some((current, _)) if *current == level) {
                    *context = Some((level, zstd::bulk::Compressor::new(level)?));
                }
                let (_, compressor) = context.as_mut().expect("set above");
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

/// Write `frame` as zstd Parquet with statistics and `key_values`, in polars' row groups, with
/// the columns of a window of row groups encoded and compressed in parallel while the window
/// before is written; pages of `shared` columns are taken from there or kept there. polars' own
/// `ParquetWriter::finish` compresses pages lazily while it writes them, on one thread. Holding
/// every compressed page of a table until the end would hold the whole file in fresh memory.
pub fn write_in_windows<W: Write + Send>(
    file: W,
    frame: &mut DataFrame,
    key_values: KeyValueMetadata,
    shared: Option<&SharedPages>,
) -> Result<()> {
    write_windows(file, frame, WINDOW_CELLS, ZSTD_LEVEL, Some(key_values), shared)
}

fn write_windows<W: Write + Send>(
    file: W,
    frame: &mut DataFrame,
    window_cells: usize,
    level: i32,
    key_values: Option<KeyValueMetadata>,
    shared: Option<&SharedPages>,
) -> Result<()> {
    use polars::io::parquet::write::get_encodings;
    use polars_parquet::write::{array_to_columns, CompressedPage, CompressionOptions, Version, WriteOptions};
    use rayon::prelude::*;
    // The codec polars' writer and page headers are told of (the level is not recorded in the
    // file); `compress_page` compresses the pages at `level`.
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
    if key_values.is_some() {
        writer = writer.with_key_value_metadata(key_values);
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
                        .map(|pages| pages.map(|page| compress_page(page?, level)).collect())
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

#[cfg(test)]
mod tests {
    use std::fs::{self, File};
    use std::path::Path;

    use super::*;

    /// At level 1 the parallel writer writes the same bytes as polars' `ParquetWriter::finish`
    /// with the same options: row groups, pages, statistics and all.
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
        write_windows(File::create(&ours).unwrap(), &mut frame.clone(), 4, 1, None, None).unwrap();
        let whole = dir.join("whole.parquet");
        write_windows(File::create(&whole).unwrap(), &mut frame.clone(), 1000, 1, None, None).unwrap();
        let theirs = polars_bytes(&mut frame, &theirs);
        let ours = fs::read(&ours).unwrap();
        let whole = fs::read(&whole).unwrap();
        fs::remove_dir_all(&dir).ok();
        assert!(ours.len() > 100_000);
        assert!(whole == theirs, "{} bytes vs polars' {}", whole.len(), theirs.len());
        assert!(ours == theirs, "{} bytes vs polars' {}", ours.len(), theirs.len());
    }

    /// polars and arrow-rs read the pages back to the same frame; doubles of few distinct values
    /// get a dictionary, noise does not.
    #[test]
    fn pages_read_back_as_written() {
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
        let path = std::env::temp_dir().join(format!("pipeline-read-back-{}.parquet", std::process::id()));
        write_windows(
            File::create(&path).unwrap(),
            &mut frame.clone(),
            4,
            ZSTD_LEVEL,
            None,
            None,
        )
        .unwrap();
        let back = ParquetReader::new(File::open(&path).unwrap()).finish().unwrap();
        assert!(back.equals_missing(&frame));
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        for group in reader.metadata().row_groups() {
            let has_dictionary = |column: usize| {
                group
                    .column(column)
                    .encodings()
                    .any(|e| e == parquet::basic::Encoding::RLE_DICTIONARY)
            };
            assert!(has_dictionary(4) && !has_dictionary(2));
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
        fs::remove_file(&path).ok();
        assert_eq!(rows_back, rows);
        /// splitmix64: doubles with random mantissas.
        fn noise_at(i: usize) -> f64 {
            let mut z = (i as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
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
            write_windows(File::create(&ours).unwrap(), frame, 4, 1, None, Some(&shared)).unwrap();
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
