//! Order-line sources: resolving files, checking mapped columns and types, and the one streaming
//! pass that reduces lines to orders while counting every rejected or ignored line by reason.
//!
//! Polars' streaming engine reads the lines and gives each a reason code (0 = usable); the
//! batches are folded into orders by `orders::OrderFold`, which also counts lines per reason, so
//! one scan yields both the orders and the accounting, and memory follows the number of orders,
//! never the number of lines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use polars::prelude::*;
use serde::Serialize;

use crate::config::{AsOf, FilterValue, PipelineSettings, SourceConfig, SourceFormat};
use crate::orders::{OrderFold, LINE_REASONS};
use crate::period::from_days;

/// Reasons that count as rejected (against `max_rejected_fraction`).
const REJECTED: &[&str] = &[
    "null_customer_id",
    "null_order_id",
    "null_ordered_at",
    "null_amount",
    "invalid_amount",
    "order_with_several_customers",
];

/// What one source contributed to a run; goes into the manifest.
#[derive(Debug, Clone, Serialize, Default)]
pub struct InputStats {
    pub source: String,
    pub path: String,
    pub files: Vec<String>,
    /// How many times this run scanned the source's lines (1: stages never rescan).
    pub scans: u32,
    pub rows_read: u64,
    pub rows_excluded_by_include: u64,
    pub rows_rejected: BTreeMap<String, u64>,
    pub rows_rejected_total: u64,
    pub rows_ignored_after_as_of: u64,
    pub duplicate_lines: u64,
    pub orders: u64,
    /// The local date of the newest order used.
    pub newest_order_date: Option<String>,
    /// The one currency of the lines used, when the source maps a `currency` column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

/// The input was read but is not usable; carries the accounting so the failure manifest has it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DataRejected {
    pub message: String,
    pub stats: InputStats,
}

/// Orders of one source: one row per valid order with columns
/// `id, date, ordered_ts, revenue[, channel]` (revenue in exact integer micro-units, see `money`;
/// `id` indexes `customer_ids`, `channel` indexes `channels`), plus the accounting.
pub struct SourceOrders {
    pub orders: DataFrame,
    /// customer_id of each `id`, ascending.
    pub customer_ids: Series,
    /// Channel name of each `channel` code, ascending (`None` without a channel column).
    pub channels: Option<Series>,
    pub stats: InputStats,
    pub as_of: NaiveDate,
}

/// Logical column types found in the file, checked against what the tool can use.
#[derive(Debug, Clone)]
pub struct SourceSchema {
    /// `ordered_at` as the scan gives it (CSV text already parsed).
    pub ordered_at: DataType,
    /// CSV: the layout `ordered_at` text is parsed with.
    time_format: Option<(&'static str, TimeKind)>,
    /// Key types: text (any encoding) as `String`, integers as stored.
    pub order_id: DataType,
    pub customer_id: DataType,
    pub has_channel: bool,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// Every column of the input as stored.
    pub column_types: SchemaRef,
}

/// Order-line scans started by this process, per source path: the manifest reports them, so a
/// second scan of the same lines would show.
static SCANS: Mutex<BTreeMap<PathBuf, u32>> = Mutex::new(BTreeMap::new());

pub fn scans_started(source: &SourceConfig) -> u32 {
    SCANS
        .lock()
        .map(|scans| scans.get(&source.path).copied().unwrap_or(0))
        .unwrap_or(0)
}

/// Files a source path names: one file, a glob, or every file of the source's format below a
/// directory, read the way Spark, Hive and Delta readers do: names starting with `_` or `.`
/// (`_SUCCESS`, `_committed_*`, `.part-0.crc`, `_delta_log/`) and files of another extension
/// are skipped, `key=value` folders are Hive partitions. Each file must be whole: a zero-byte
/// or truncated file is an error naming it, so nothing is published from part of the input.
pub fn resolve_files(source: &SourceConfig) -> Result<Vec<PathBuf>> {
    let path = &source.path;
    let text = path.to_string_lossy();
    let mut files = Vec::new();
    if text.contains(['*', '?', '[']) {
        let matches = glob::glob(&text).with_context(|| format!("source `{}`: invalid glob `{text}`", source.name))?;
        for entry in matches {
            let file = entry.with_context(|| format!("source `{}`: reading glob `{text}`", source.name))?;
            if file.is_file() && !is_hidden(&file) {
                files.push(file);
            }
        }
        if files.is_empty() {
            bail!("source `{}`: glob `{text}` matches no file", source.name);
        }
    } else if path.is_dir() {
        let extension = source.format.extension();
        collect_files(path, extension, &mut files)
            .with_context(|| format!("source `{}`: listing directory `{text}`", source.name))?;
        if files.is_empty() {
            let hint = match source.format {
                SourceFormat::Parquet => "; for CSV files set `format = \"csv\"` on the source",
                SourceFormat::Csv => "",
            };
            bail!(
                "source `{}`: directory `{text}` contains no .{extension} file (names starting with `_` or `.` are skipped){hint}",
                source.name
            );
        }
    } else if path.is_file() {
        files.push(path.clone());
    } else {
        bail!("source `{}`: input path `{text}` does not exist", source.name);
    }
    files.sort();
    for file in &files {
        check_whole(file, source.format).with_context(|| {
            format!(
                "source `{}`: `{}` cannot be read; re-export it, or remove it from the input",
                source.name,
                file.display()
            )
        })?;
    }
    Ok(files)
}

/// A name Spark, Hive and Delta readers skip: starting with `_` or `.`.
fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .map(|name| name.to_string_lossy().starts_with(['_', '.']))
        .unwrap_or(false)
}

fn collect_files(dir: &Path, extension: &str, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_hidden(&path) {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, extension, files)?;
        } else if path
            .extension()
            .is_some_and(|found| found.to_string_lossy().eq_ignore_ascii_case(extension))
        {
            files.push(path);
        }
    }
    Ok(())
}

/// A file that is not empty and, for Parquet, starts and ends with the `PAR1` magic (a file
/// cut short loses its footer).
fn check_whole(file: &Path, format: SourceFormat) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut handle = std::fs::File::open(file)?;
    let size = handle.metadata()?.len();
    if size == 0 {
        bail!("the file is empty (0 bytes)");
    }
    if format == SourceFormat::Parquet {
        let mut head = [0u8; 4];
        let mut tail = [0u8; 4];
        if size < 12 {
            bail!("the file has {size} bytes, too few for Parquet");
        }
        handle.read_exact(&mut head)?;
        handle.seek(SeekFrom::End(-4))?;
        handle.read_exact(&mut tail)?;
        if &head != b"PAR1" {
            bail!(
                "the file is not Parquet (it does not start with `PAR1`); for CSV set `format = \"csv\"` on the source"
            );
        }
        if &tail != b"PAR1" {
            bail!("the Parquet file is truncated or still being written (no `PAR1` footer)");
        }
    }
    Ok(())
}

/// The lines of a source's files, every column as stored (CSV: amount, ordered_at and the
/// text columns as text, ids inferred unless `text_ids`).
fn scan(source: &SourceConfig, files: &[PathBuf]) -> Result<LazyFrame> {
    let paths = files.iter().map(|file| PlRefPath::new(file.to_string_lossy().as_ref()));
    let scanned = match source.format {
        SourceFormat::Parquet => {
            let mut args = ScanArgsParquet::default();
            if source.path.is_dir() {
                // Hive `key=value` folders below the directory become columns.
                args.hive_options.enabled = Some(true);
            }
            LazyFrame::scan_parquet_files(paths.collect(), args)
        }
        SourceFormat::Csv => {
            let options = &source.csv;
            let mut text_columns: Vec<&str> = ["ordered_at", "amount", "status", "channel", "currency"]
                .into_iter()
                .filter_map(|logical| source.columns.physical(logical))
                .collect();
            if options.text_ids {
                text_columns.extend([source.columns.customer_id.as_str(), source.columns.order_id.as_str()]);
            }
            let overrides = Schema::from_iter(
                text_columns
                    .into_iter()
                    .map(|name| Field::new(name.into(), DataType::String)),
            );
            let quote = options.quote.bytes().next();
            LazyCsvReader::new_paths(paths.collect())
                .with_has_header(options.header)
                .with_separator(options.delimiter as u8)
                .with_quote_char(quote)
                .with_infer_schema_length(Some(options.infer_schema_rows.max(1)))
                .with_dtype_overwrite(Some(Arc::new(overrides)))
                .finish()
                // Every field of every row is parsed, so a row with more fields than the
                // header is an error rather than silently cut (polars checks only when it
                // reads all columns).
                .map(|lines| lines.with_projection_pushdown(false))
        }
    };
    scanned.map_err(anyhow::Error::from).with_context(|| {
        format!(
            "source `{}`: cannot scan `{}` as {}",
            source.name,
            source.path.display(),
            source.format.extension()
        )
    })
}

/// The schema of a source's files, every column as stored; a file polars cannot describe is
/// an error naming it (polars panics on some column types it was not built for).
fn file_schema(source: &SourceConfig, files: &[PathBuf]) -> Result<SchemaRef> {
    let described = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        scan(source, files).and_then(|mut lines| lines.collect_schema().map_err(anyhow::Error::from))
    }));
    match described {
        Ok(schema) => schema.with_context(|| {
            format!(
                "source `{}`: cannot read the {} schema of `{}`",
                source.name,
                match source.format {
                    SourceFormat::Parquet => "Parquet",
                    SourceFormat::Csv => "CSV",
                },
                source.path.display()
            )
        }),
        Err(panic) => bail!(
            "source `{}`: a column of `{}` has a type this build cannot read ({}); drop that column from the export or cast it to a plain type",
            source.name,
            source.path.display(),
            panic_text(&panic)
        ),
    }
}

/// The message of a caught panic.
pub fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_else(|| "no message".into())
}

/// Lines in the source's files from Parquet metadata, for the progress bar and the fold's
/// reservations; `None` for CSV (counting needs a pass) or when the count fails (the scan
/// then reports the problem).
fn total_rows(source: &SourceConfig, files: &[PathBuf]) -> Option<u64> {
    if source.format == SourceFormat::Csv {
        return None;
    }
    let counted = scan(source, files)
        .ok()?
        .select([len().cast(DataType::UInt64)])
        .collect()
        .ok()?;
    counted.column("len").ok()?.u64().ok()?.get(0)
}

/// Date and timestamp layouts CSV `ordered_at` values may have, tried in this order on the
/// first values of the column: the first under which all of them parse is used for the whole
/// column. `Zoned` values carry an offset and are instants; `Utc` ones end in `Z` or ` UTC`.
const CSV_TIME_FORMATS: &[(&str, TimeKind)] = &[
    ("%Y-%m-%dT%H:%M:%S%.f%:z", TimeKind::Zoned),
    ("%Y-%m-%d %H:%M:%S%.f%:z", TimeKind::Zoned),
    ("%Y-%m-%dT%H:%M:%S%.f%z", TimeKind::Zoned),
    ("%Y-%m-%d %H:%M:%S%.f%z", TimeKind::Zoned),
    ("%Y-%m-%dT%H:%M:%S%.fZ", TimeKind::Utc),
    ("%Y-%m-%d %H:%M:%S%.f UTC", TimeKind::Utc),
    ("%Y-%m-%dT%H:%M:%S%.f", TimeKind::Naive),
    ("%Y-%m-%d %H:%M:%S%.f", TimeKind::Naive),
    ("%Y-%m-%dT%H:%M", TimeKind::Naive),
    ("%Y-%m-%d %H:%M", TimeKind::Naive),
    ("%Y-%m-%d", TimeKind::Date),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeKind {
    Zoned,
    Utc,
    Naive,
    Date,
}

/// Whether `value` has the layout `format` of `kind` (chrono's parser, as polars' strptime).
fn parses_as(value: &str, format: &str, kind: TimeKind) -> bool {
    match kind {
        TimeKind::Zoned => chrono::DateTime::parse_from_str(value, format).is_ok(),
        TimeKind::Utc | TimeKind::Naive => chrono::NaiveDateTime::parse_from_str(value, format).is_ok(),
        TimeKind::Date => NaiveDate::parse_from_str(value, format).is_ok(),
    }
}

/// The layout of a CSV source's `ordered_at` text, from its first 1,000 non-null values.
fn csv_time_format(source: &SourceConfig, files: &[PathBuf]) -> Result<(&'static str, TimeKind)> {
    let physical = source.columns.ordered_at.as_str();
    let sample = scan(source, files)?
        .select([col(physical)])
        .drop_nulls(None)
        .limit(1_000)
        .collect()
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "reading the first values of `{physical}` from `{}` (check `delimiter`, `quote` and `header` under `[sources.{}.csv]`)",
                source.path.display(),
                source.name
            )
        })?;
    let values: Vec<String> = sample
        .column(physical)?
        .str()?
        .iter()
        .flatten()
        .map(|value| value.trim().to_string())
        .collect();
    if values.is_empty() {
        return Ok(CSV_TIME_FORMATS[0]);
    }
    CSV_TIME_FORMATS
        .iter()
        .find(|(format, kind)| values.iter().all(|value| parses_as(value, format, *kind)))
        .copied()
        .with_context(|| {
            let odd = values
                .iter()
                .find(|value| !CSV_TIME_FORMATS.iter().any(|(f, k)| parses_as(value, f, *k)))
                .unwrap_or(&values[0]);
            format!(
                "source `{}`: column `{physical}` (mapped as `ordered_at`) holds `{odd}`, which is no date or timestamp layout read from CSV; accepted: {} (one layout per column; %.f is optional fractional seconds)",
                source.name,
                CSV_TIME_FORMATS.iter().map(|(f, _)| format!("`{f}`")).collect::<Vec<_>>().join(", ")
            )
        })
}

/// `ordered_at` of a CSV source as a date or timestamp, parsed with `format`.
fn csv_time_expr(physical: &str, format: &'static str, kind: TimeKind) -> Expr {
    let options = |format: &str| StrptimeOptions {
        format: Some(format.into()),
        strict: true,
        exact: true,
        cache: true,
    };
    let text = col(physical).str().strip_chars(lit(NULL));
    match kind {
        TimeKind::Date => text.str().to_date(options(format)),
        TimeKind::Zoned | TimeKind::Naive => {
            text.str()
                .to_datetime(Some(TimeUnit::Microseconds), None, options(format), lit("raise"))
        }
        TimeKind::Utc => text
            .str()
            .to_datetime(Some(TimeUnit::Microseconds), None, options(format), lit("raise"))
            .dt()
            .replace_time_zone(Some(polars::prelude::TimeZone::UTC), lit("raise"), NonExistent::Raise),
    }
}

/// The logical type `csv_time_expr` gives.
fn csv_time_dtype(kind: TimeKind) -> DataType {
    match kind {
        TimeKind::Date => DataType::Date,
        TimeKind::Zoned | TimeKind::Utc => {
            DataType::Datetime(TimeUnit::Microseconds, Some(polars::prelude::TimeZone::UTC))
        }
        TimeKind::Naive => DataType::Datetime(TimeUnit::Microseconds, None),
    }
}

/// Whether a column type holds text (plain, or dictionary-encoded as categories).
fn is_text(dtype: &DataType) -> bool {
    matches!(
        dtype,
        DataType::String | DataType::Categorical(_, _) | DataType::Enum(_, _)
    )
}

/// The input column a filter key names: a mapped logical name's column, else the key itself.
pub fn filter_column<'a>(source: &'a SourceConfig, key: &'a str) -> &'a str {
    source.columns.physical(key).unwrap_or(key)
}

/// Check that every mapped column exists with a usable type, and every filter column exists;
/// reads only file metadata (and, for CSV, the first rows).
pub fn check_schema(source: &SourceConfig) -> Result<SourceSchema> {
    let files = resolve_files(source)?;
    let schema = file_schema(source, &files)?;
    let csv = source.format == SourceFormat::Csv;
    let mut problems = Vec::new();
    let mut ordered_at = DataType::Date;
    let mut time_format = None;
    let mut key_types = [DataType::String, DataType::String];
    let missing = |physical: &str, what: String| {
        let names: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
        let hint = crate::config::diagnostic::suggest(physical, names.iter().copied()).unwrap_or_else(|| {
            format!(
                "the input has: {}",
                names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            )
        });
        format!("column `{physical}` ({what}) is not in the input; {hint}")
    };
    for (logical, physical) in source.columns.mapped() {
        let Some(dtype) = schema.get(physical) else {
            problems.push(missing(physical, format!("mapped as `{logical}`")));
            continue;
        };
        let usable = match logical {
            "customer_id" | "order_id" => dtype.is_integer() || is_text(dtype),
            "ordered_at" => {
                matches!(dtype, DataType::Date | DataType::Datetime(_, _)) || (csv && dtype == &DataType::String)
            }
            "amount" => dtype.is_primitive_numeric() || dtype.is_decimal() || (csv && dtype == &DataType::String),
            "status" | "channel" => is_text(dtype) || dtype.is_integer() || dtype.is_bool(),
            "currency" => is_text(dtype),
            "line" => dtype.is_integer(),
            _ => true,
        };
        if !usable {
            let expected = match logical {
                "customer_id" | "order_id" => {
                    "an integer of any width, or text (string, large string, view, dictionary or categorical)"
                }
                "ordered_at" => "a date, or a timestamp in s, ms, us or ns with or without a zone",
                "amount" => "a number: an integer of any width, float32/64, or a decimal of any precision and scale",
                "currency" => "text",
                "line" => "an integer",
                _ => "text, integer or boolean",
            };
            problems.push(format!(
                "column `{physical}` (mapped as `{logical}`) has type {dtype}: expected {expected}"
            ));
        }
        match logical {
            "ordered_at" if csv && dtype == &DataType::String => match csv_time_format(source, &files) {
                Ok((format, kind)) => {
                    ordered_at = csv_time_dtype(kind);
                    time_format = Some((format, kind));
                }
                Err(error) => problems.push(format!("{error:#}")),
            },
            "ordered_at" => ordered_at = dtype.clone(),
            "order_id" => key_types[0] = key_type(dtype),
            "customer_id" => key_types[1] = key_type(dtype),
            _ => {}
        }
    }
    for (filter, list) in [("include", &source.include), ("exclude", &source.exclude)] {
        for (key, values) in list {
            let physical = filter_column(source, key);
            let Some(dtype) = schema.get(physical) else {
                problems.push(missing(physical, format!("in `{filter}`")));
                continue;
            };
            let bools = values.iter().filter(|v| matches!(v, FilterValue::Bool(_))).count();
            if (bools > 0) != dtype.is_bool() || (bools > 0 && bools < values.len()) {
                problems.push(format!(
                    "`{filter}.{key}` values {} do not fit column `{physical}` of type {dtype}: use true/false for a boolean column, text or integers otherwise",
                    values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "source `{}` (`{}`):\n  - {}",
            source.name,
            source.path.display(),
            problems.join("\n  - ")
        );
    }
    let [order_id, customer_id] = key_types;
    Ok(SourceSchema {
        ordered_at,
        time_format,
        order_id,
        customer_id,
        has_channel: source.columns.channel.is_some(),
        files,
        column_types: schema,
    })
}

/// The type the fold reads a key column as: text for text of any encoding, else Int64.
fn key_type(dtype: &DataType) -> DataType {
    if is_text(dtype) {
        DataType::String
    } else {
        dtype.clone()
    }
}

/// A zone of the tz database by name, for computing with chrono.
fn chrono_zone(name: &str) -> Result<chrono_tz::Tz> {
    name.parse().map_err(|_| anyhow::anyhow!("unknown time zone `{name}`"))
}

fn time_zone(name: &str) -> Result<TimeZone> {
    TimeZone::opt_try_new(Some(name))?.with_context(|| format!("time zone `{name}` is not known to polars"))
}

/// `ordered_at` as Int64 microseconds in the column's own frame: UTC instants for zoned
/// timestamps, wall-clock time for naive ones, midnight for dates. Comparable with
/// `as_of_boundary` without converting every line to a local date.
fn ts_micros_expr(ordered_at: &DataType) -> Result<Expr> {
    Ok(match ordered_at {
        DataType::Date => col("ordered_at").cast(DataType::Datetime(TimeUnit::Microseconds, None)),
        DataType::Datetime(_, zone) => col("ordered_at").cast(DataType::Datetime(TimeUnit::Microseconds, zone.clone())),
        other => bail!("ordered_at has type {other}: expected a date or timestamp"),
    }
    .cast(DataType::Int64))
}

/// The first microsecond after `as_of` (local midnight starting the next day in the pipeline's
/// zone), in the same frame as `ts_micros_expr`.
fn as_of_boundary(
    as_of: NaiveDate,
    ordered_at: &DataType,
    source: &SourceConfig,
    settings: &PipelineSettings,
) -> Result<i64> {
    use chrono::TimeZone as _;
    let next_midnight = (as_of + chrono::Duration::days(1))
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists");
    let instant = |naive: chrono::NaiveDateTime, tz: chrono_tz::Tz| -> Result<chrono::DateTime<chrono::Utc>> {
        // Midnight can fall in a DST gap in a few zones: take the first instant after it.
        let local = tz
            .from_local_datetime(&naive)
            .earliest()
            .or_else(|| tz.from_local_datetime(&(naive + chrono::Duration::hours(1))).earliest())
            .with_context(|| format!("local time {naive} does not exist in `{tz}`"))?;
        Ok(local.with_timezone(&chrono::Utc))
    };
    Ok(match ordered_at {
        DataType::Date => next_midnight.and_utc().timestamp_micros(),
        DataType::Datetime(_, Some(_)) => instant(next_midnight, chrono_zone(&settings.timezone)?)?.timestamp_micros(),
        DataType::Datetime(_, None) => {
            // Naive values are wall-clock time in `naive_timestamps_are`.
            let utc = instant(next_midnight, chrono_zone(&settings.timezone)?)?;
            let wall = utc
                .with_timezone(&chrono_zone(&source.naive_timestamps_are)?)
                .naive_local();
            wall.and_utc().timestamp_micros()
        }
        other => bail!("ordered_at has type {other}: expected a date or timestamp"),
    })
}

/// `date` for the orders' `ordered_ts` when it is a plain date or a UTC instant (`None` for naive
/// timestamps: `local_date_of_micros` handles their gaps and folds). Same result as
/// `local_date_of_micros`, without a time zone lookup per order: the UTC offset is looked up
/// once per UTC day with one offset throughout (checked at every 15 minutes), else once per
/// 15-minute slot whose two ends share it (every transition in the current tz database falls on
/// a slot boundary; a slot with a transition inside is looked up per order).
fn fast_local_dates(orders: &DataFrame, ordered_at: &DataType, timezone: &str) -> Result<Option<Series>> {
    use chrono::{Offset, TimeZone as _};
    const SLOT: i64 = 15 * 60 * 1_000_000;
    let instants = orders.column("ordered_ts")?;
    if instants.null_count() > 0 {
        return Ok(None);
    }
    let instants = instants.i64()?.rechunk();
    let values = instants.downcast_as_array().values().as_slice();
    // i32::MIN stands for "no date" (the day number of no real timestamp).
    const NONE: i32 = i32::MIN;
    let day_of = |micros: i64, offset: i64| i32::try_from((micros + offset).div_euclid(DAY)).ok();
    let days: Vec<i32> = match ordered_at {
        DataType::Date => in_parallel(values, |chunk, out| {
            out.extend(chunk.iter().map(|&micros| day_of(micros, 0).unwrap_or(NONE)))
        }),
        DataType::Datetime(_, Some(_)) => {
            let zone = chrono_zone(timezone)?;
            let offset_at = |micros: i64| -> Option<i64> {
                let utc = chrono::DateTime::from_timestamp_micros(micros)?.naive_utc();
                Some(i64::from(zone.offset_from_utc_datetime(&utc).fix().local_minus_utc()) * 1_000_000)
            };
            // The offset over [start, start + length) when it is the same at the start, every
            // 15 minutes and the end.
            let steady_over = |start: i64, length: i64| -> Option<i64> {
                let first = offset_at(start)?;
                let mut at = start + SLOT;
                while at < start + length {
                    if offset_at(at)? != first {
                        return None;
                    }
                    at += SLOT;
                }
                (offset_at(start + length - 1)? == first).then_some(first)
            };
            // A UTC day with one offset throughout (checked every 15 minutes, so no transition
            // hides in it) needs no slot lookups. When the orders span at most `TABLE_DAYS`
            // days, each day is checked once, in parallel, into a table indexed by day; else
            // each part keeps its own cache of days (orders near each other in a file are
            // mostly near in time, so the last day is checked first). The table is preferred:
            // a customer's orders come together, so every part spans every day.
            let table = day_table(&instants, TABLE_DAYS, &|day| steady_over(day * DAY, DAY));
            in_parallel(values, |chunk, out| {
                type Cache = hashbrown::HashMap<i64, Option<i64>, foldhash::fast::FixedState>;
                let (mut days, mut slots) = (Cache::default(), Cache::default());
                let mut last: Option<(i64, Option<i64>)> = None;
                out.extend(chunk.iter().map(|&micros| {
                    let day = micros.div_euclid(DAY);
                    let whole_day = match (&table, last) {
                        (Some((first, steady)), _) => steady[(day - first) as usize],
                        (None, Some((seen, steady))) if seen == day => steady,
                        (None, _) => {
                            let steady = *days.entry(day).or_insert_with(|| steady_over(day * DAY, DAY));
                            last = Some((day, steady));
                            steady
                        }
                    };
                    let steady = whole_day.or_else(|| {
                        let slot = micros.div_euclid(SLOT);
                        *slots.entry(slot).or_insert_with(|| steady_over(slot * SLOT, SLOT))
                    });
                    steady
                        .or_else(|| offset_at(micros))
                        .and_then(|offset| day_of(micros, offset))
                        .unwrap_or(NONE)
                }))
            })
        }
        _ => return Ok(None),
    };
    let days: Int32Chunked = if days.contains(&NONE) {
        days.into_iter().map(|day| (day != NONE).then_some(day)).collect()
    } else {
        Int32Chunked::from_vec("".into(), days)
    };
    Ok(Some(days.into_series().cast(&DataType::Date)?.with_name("date".into())))
}

/// Microseconds in a day.
const DAY: i64 = 86_400_000_000;

/// Days of orders the local-date table covers at most (~110 years): each day costs 97 offset
/// lookups, once.
const TABLE_DAYS: i64 = 40_000;

/// `(first day, steady(day) for each day from the first)` over the UTC days of `instants` (µs),
/// computed in parallel; `None` when they span `max_days` days or more, more days than there
/// are instants (a stray old date among a few orders: the per-part caches check only the days
/// seen), or none.
fn day_table(
    instants: &Int64Chunked,
    max_days: i64,
    steady: &(dyn Fn(i64) -> Option<i64> + Sync),
) -> Option<(i64, Vec<Option<i64>>)> {
    use rayon::prelude::*;
    let (first, last) = (instants.min()?.div_euclid(DAY), instants.max()?.div_euclid(DAY));
    if last - first >= max_days || (last - first) as u64 >= instants.len() as u64 {
        return None;
    }
    Some((first, (first..=last).into_par_iter().map(steady).collect()))
}

/// `f(part, out)` over consecutive parts of `values` on the rayon pool, each part's output
/// appended to its own vector, the vectors joined in order.
fn in_parallel<T: Sync, U: Send>(values: &[T], f: impl Fn(&[T], &mut Vec<U>) + Sync) -> Vec<U> {
    use rayon::prelude::*;
    let parts: Vec<Vec<U>> = values
        .par_chunks(1 << 18)
        .map(|part| {
            let mut out = Vec::with_capacity(part.len());
            f(part, &mut out);
            out
        })
        .collect();
    parts.into_iter().flatten().collect()
}

/// `orders` with `date`, the local calendar date of `ordered_ts` in the pipeline's zone.
fn with_order_dates(
    mut orders: DataFrame,
    ordered_at: &DataType,
    source: &SourceConfig,
    settings: &PipelineSettings,
) -> Result<DataFrame> {
    if let Some(dates) = fast_local_dates(&orders, ordered_at, &settings.timezone)? {
        orders.with_column(dates.into_column())?;
        return Ok(orders);
    }
    let local_date = local_date_of_micros(col("ordered_ts"), ordered_at, source, settings)?;
    Ok(orders.lazy().with_column(local_date.alias("date")).collect()?)
}

/// The local calendar date in the pipeline's zone of Int64 microseconds from `ts_micros_expr`.
fn local_date_of_micros(
    micros: Expr,
    ordered_at: &DataType,
    source: &SourceConfig,
    settings: &PipelineSettings,
) -> Result<Expr> {
    let target = time_zone(&settings.timezone)?;
    Ok(match ordered_at {
        DataType::Date => micros
            .cast(DataType::Datetime(TimeUnit::Microseconds, None))
            .dt()
            .date(),
        DataType::Datetime(_, Some(_)) => micros
            .cast(DataType::Datetime(
                TimeUnit::Microseconds,
                Some(polars::prelude::TimeZone::UTC),
            ))
            .dt()
            .convert_time_zone(target)
            .dt()
            .date(),
        DataType::Datetime(_, None) => micros
            .cast(DataType::Datetime(TimeUnit::Microseconds, None))
            .dt()
            .replace_time_zone(
                Some(time_zone(&source.naive_timestamps_are)?),
                lit("earliest"),
                NonExistent::Null,
            )
            .dt()
            .convert_time_zone(target)
            .dt()
            .date(),
        other => bail!("ordered_at has type {other}: expected a date or timestamp"),
    })
}

/// Whether a line passes the filters, over the input's own columns: for every `include`
/// column its value is one of the listed ones, and for no `exclude` column is it. Values match
/// exactly: integers as integers on integer columns, text as text (an integer value matches
/// its digits in a text column, a text value the printed value of a number column); a null
/// matches nothing. `column_of` turns a filter key into the input column.
fn filter_expr<'a>(
    include: &'a BTreeMap<String, Vec<FilterValue>>,
    exclude: &'a BTreeMap<String, Vec<FilterValue>>,
    column_of: impl Fn(&'a str) -> &'a str,
    schema: &Schema,
) -> Expr {
    // An OR of equalities, not `is_in`: the streaming engine lowers `is_in` to a semi-join
    // beside the scan whose multiplexer buffered decoded batches while the fold was busy.
    let matches = |key: &'a str, values: &[FilterValue]| -> Expr {
        let physical = column_of(key);
        let integer = schema.get(physical).is_some_and(|dtype| dtype.is_integer());
        let column = || col(physical);
        let text = || column().cast(DataType::String);
        values
            .iter()
            .map(|value| match value {
                FilterValue::Bool(flag) => column().eq(lit(*flag)),
                // A UInt64 above 2^63, which no value can equal, becomes null: no match.
                FilterValue::Int(number) if integer => column().cast(DataType::Int64).eq(lit(*number)),
                FilterValue::Int(number) => text().eq(lit(number.to_string())),
                FilterValue::Text(value) => text().eq(lit(value.as_str())),
            })
            .reduce(Expr::or)
            .unwrap_or(lit(false))
            .fill_null(lit(false))
    };
    let mut condition = lit(true);
    for (key, values) in include {
        condition = condition.and(matches(key, values));
    }
    for (key, values) in exclude {
        condition = condition.and(matches(key, values).not());
    }
    condition
}

/// "1,234,567": counts in messages.
pub fn thousands(count: u64) -> String {
    let digits = count.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// "1 line", "12,004 lines".
fn count_of(count: u64, what: &str) -> String {
    match count {
        1 => format!("1 {what}"),
        _ => format!("{} {what}s", thousands(count)),
    }
}

/// "null_amount 3, null_customer_id 125,097": the reasons lines were rejected for.
fn rejected_reasons(stats: &InputStats) -> String {
    let reasons: Vec<String> = stats
        .rows_rejected
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| format!("{reason} {}", thousands(*n)))
        .collect();
    reasons.join(", ")
}

/// "125,100 rows rejected: null_amount 3, null_customer_id 125,097".
fn rejected_summary(stats: &InputStats) -> String {
    match stats.rows_rejected_total {
        0 => "0 rows rejected".into(),
        total => format!("{} rows rejected: {}", thousands(total), rejected_reasons(stats)),
    }
}

/// The smallest round value of `max_rejected_fraction` (two significant digits, rounded up)
/// that accepts `fraction`.
fn accepting_fraction(fraction: f64) -> String {
    let magnitude = 10f64.powf(fraction.log10().floor() - 1.0);
    let value = ((fraction / magnitude).ceil() * magnitude).min(1.0);
    // Printed with just the digits it has.
    let text = format!("{value:.12}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// For a filter that left no line: its columns' most frequent values (five each, with counts).
fn frequent_values(source: &SourceConfig, schema: &SourceSchema) -> String {
    let mut parts = Vec::new();
    for (filter, list) in [("include", &source.include), ("exclude", &source.exclude)] {
        for key in list.keys() {
            let physical = filter_column(source, key);
            let counted = scan(source, &schema.files).and_then(|lines| {
                lines
                    .group_by([col(physical).cast(DataType::String).alias("value")])
                    .agg([len().cast(DataType::UInt64).alias("lines")])
                    .sort_by_exprs(
                        [col("lines"), col("value")],
                        SortMultipleOptions::default().with_order_descending_multi([true, false]),
                    )
                    .limit(5)
                    .collect()
                    .map_err(anyhow::Error::from)
            });
            let Ok(counted) = counted else { continue };
            let (Ok(values), Ok(lines)) = (counted.column("value"), counted.column("lines")) else {
                continue;
            };
            let (Ok(values), Ok(lines)) = (values.str(), lines.u64()) else {
                continue;
            };
            let seen: Vec<String> = values
                .iter()
                .zip(lines.iter())
                .map(|(value, lines)| {
                    let value = value.map_or("null".to_string(), |v| format!("{v:?}"));
                    format!("{value} ({})", count_of(lines.unwrap_or(0), "line"))
                })
                .collect();
            parts.push(format!(
                "most frequent values of `{physical}` (in `{filter}`): {}",
                seen.join(", ")
            ));
        }
    }
    parts.join("; ")
}

/// Days of data older than as_of past which a run warns (in the log and the manifest).
pub const STALE_WARNING_DAYS: i64 = 7;

/// `max_data_age_days` (an error message when the newest order is older than it allows), and a
/// warning when the data is more than `STALE_WARNING_DAYS` older than as_of.
fn check_freshness(
    source: &SourceConfig,
    settings: &PipelineSettings,
    newest: NaiveDate,
    as_of: NaiveDate,
) -> std::result::Result<(), String> {
    let age = (as_of - newest).num_days();
    if let Some(limit) = settings.max_data_age_days {
        if age > i64::from(limit) {
            return Err(format!(
                "source `{}`: the newest order is from {newest}, {age} days before as_of {as_of}: more than max_data_age_days = {limit}; the export looks stale (check that it ran), or raise `max_data_age_days` under `[pipeline]`",
                source.name
            ));
        }
    }
    if age > STALE_WARNING_DAYS {
        tracing::warn!(
            "source `{}`: the newest order is from {newest}, {age} days before as_of {as_of}: recent customers may show as lapsing or churned",
            source.name
        );
    }
    Ok(())
}

/// The date `as_of` resolves to before data is read; `None` for `last_order`.
pub fn fixed_as_of(as_of: AsOf, timezone: &str) -> Result<Option<NaiveDate>> {
    let today = || -> Result<NaiveDate> { Ok(chrono::Utc::now().with_timezone(&chrono_zone(timezone)?).date_naive()) };
    Ok(match as_of {
        AsOf::Date(date) => Some(date),
        AsOf::Today => Some(today()?),
        AsOf::Yesterday => Some(today()? - chrono::Duration::days(1)),
        AsOf::LastOrder => None,
    })
}

/// The one pass over order lines: lines → orders, with accounting. Fails (exit 1) when more
/// lines are rejected than `max_rejected_fraction` allows or when nothing is left.
pub fn scan_orders(source: &SourceConfig, settings: &PipelineSettings, as_of: AsOf) -> Result<SourceOrders> {
    let schema = check_schema(source)?;
    crate::telemetry::inject_fault(&source.name);
    let files = schema.files.clone();
    let fixed_as_of = fixed_as_of(as_of, &settings.timezone)?;
    if let Ok(mut scans) = SCANS.lock() {
        *scans.entry(source.path.clone()).or_insert(0) += 1;
    }

    let column_type = |logical: &str| {
        source
            .columns
            .physical(logical)
            .and_then(|physical| schema.column_types.get(physical))
            .cloned()
    };
    let projection: Vec<Expr> = source
        .columns
        .mapped()
        .into_iter()
        .map(|(logical, physical)| match (logical, schema.time_format) {
            ("ordered_at", Some((format, kind))) => csv_time_expr(physical, format, kind).alias(logical),
            _ => col(physical).alias(logical),
        })
        .collect();
    let has_filters = !source.include.is_empty() || !source.exclude.is_empty();
    let filters = filter_expr(
        &source.include,
        &source.exclude,
        |key| filter_column(source, key),
        &schema.column_types,
    );
    let has_line = source.columns.line.is_some();
    let has_channel = schema.has_channel;
    let has_currency = source.columns.currency.is_some();

    // Each line gets a reason code (0 = usable) in the fold, from the columns below: the
    // filters, nulls, the amount and the first instant after as_of. Local dates are computed
    // per order afterwards, not per line.
    let ts = ts_micros_expr(&schema.ordered_at)?;
    let first_after_as_of = match fixed_as_of {
        Some(date) => Some(as_of_boundary(date, &schema.ordered_at, source, settings)?),
        None => None,
    };
    // Keys as text or Int64, so the fold reads two physical types only.
    let key = |name: &str, dtype: &DataType| match dtype {
        DataType::String => col(name).cast(DataType::String),
        // Strict: a UInt64 id above 2^63 fails the run naming the column, never becomes null.
        _ => col(name).strict_cast(DataType::Int64),
    };
    // Amounts: numbers as Float64 units; decimals and CSV text are turned into micro-units
    // exactly by the fold.
    let amount = match column_type("amount") {
        Some(DataType::Decimal(_, _)) | Some(DataType::String) => col("amount"),
        _ => col("amount").cast(DataType::Float64),
    };
    let mut columns = vec![
        key("order_id", &schema.order_id),
        key("customer_id", &schema.customer_id),
        col("ts"),
        amount.alias("amount"),
    ];
    if has_channel {
        columns.push(col("channel").cast(DataType::String));
    }
    if has_line {
        columns.push(col("line").strict_cast(DataType::Int64));
    }
    if has_currency {
        columns.push(col("currency").cast(DataType::String));
    }
    let expected_lines = total_rows(source, &files);
    // With the line count known from the files' metadata, the filters run in the scan: polars
    // decodes the other columns of included lines only, and the fold counts the rest as
    // excluded. Otherwise each line carries its `include` flag to the fold.
    let filter_in_scan = has_filters && expected_lines.is_some();
    let mut projection = projection;
    let mut lines = scan(source, &files)?;
    if filter_in_scan {
        lines = lines.filter(filters);
    } else if has_filters {
        projection.push(filters.alias("include"));
        columns.push(col("include"));
    }
    let lines = lines.select(projection).with_column(ts.alias("ts")).select(columns);
    let mut fold = OrderFold::new(
        &schema.order_id,
        &schema.customer_id,
        rayon::current_num_threads(),
        has_line,
    );
    fold.expected_lines = expected_lines;
    fold.first_after_as_of = first_after_as_of;
    let fold = Arc::new(Mutex::new(Some(fold)));
    let progress = crate::telemetry::progress_bar(expected_lines.unwrap_or(0), "lines");
    let sink = {
        let fold = Arc::clone(&fold);
        let progress = progress.clone();
        PlanCallback::new(move |batch: DataFrame| {
            let mut fold = fold
                .lock()
                .map_err(|_| polars_err!(ComputeError: "order fold poisoned"))?;
            progress.inc(batch.height() as u64);
            fold.as_mut()
                .expect("the fold is taken only after the scan")
                .add(batch)?;
            Ok(false)
        })
    };
    // With `line` mapped the batches come in file order, so the copy of a repeated line that
    // counts is the first in the files.
    lines
        .sink_batches(sink, has_line, None)
        .and_then(|plan| plan.collect_with_engine(Engine::Streaming))
        .map_err(anyhow::Error::from)
        .with_context(|| {
            let hint = match source.format {
                SourceFormat::Csv => format!(
                    " (check `delimiter`, `quote` and `header` under `[sources.{}.csv]`)",
                    source.name
                ),
                SourceFormat::Parquet => String::new(),
            };
            format!(
                "source `{}`: reading order lines from `{}`{hint}",
                source.name,
                source.path.display()
            )
        })?;
    progress.finish_and_clear();
    let mut fold = fold
        .lock()
        .ok()
        .and_then(|mut fold| fold.take())
        .expect("the scan has finished with the fold");
    if let Some(total) = expected_lines.filter(|_| filter_in_scan) {
        fold.count_unseen_as_excluded(total);
    }
    tracing::debug!(
        "order fold: {} batches, {:.3} s busy, {}",
        fold.batches,
        fold.busy.as_secs_f64(),
        crate::telemetry::memory()
    );
    let currencies = std::mem::take(&mut fold.currencies);
    let folded = fold
        .finish(&schema.customer_id, has_channel)
        .map_err(anyhow::Error::from)
        .context("building orders")?;
    tracing::debug!("orders numbered: {}", crate::telemetry::memory());

    // Absolute paths, so a manifest read anywhere names the files.
    let absolute = |path: &Path| {
        std::path::absolute(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string()
    };
    let mut stats = InputStats {
        source: source.name.clone(),
        path: absolute(&source.path),
        files: files.iter().map(|f| absolute(f)).collect(),
        ..Default::default()
    };
    // Repeated (order_id, line) pairs are usable lines the fold counted once.
    stats.duplicate_lines = folded.duplicate_lines;
    stats.rows_read = folded.lines_by_reason.iter().sum::<u64>();
    for (code, name) in LINE_REASONS {
        let count = folded.lines_by_reason[*code as usize];
        match *name {
            "excluded_by_include" => stats.rows_excluded_by_include = count,
            "after_as_of" => stats.rows_ignored_after_as_of = count,
            _ => {
                stats.rows_rejected.insert(name.to_string(), count);
            }
        }
    }

    // An order_id whose lines name two customers is rejected whole, and so is one whose first
    // local time does not exist (a DST gap for naive times).
    let mut keep = vec![col("id"), col("date"), col("ordered_ts"), col("revenue")];
    if has_channel {
        keep.push(col("channel"));
    }
    let usable = with_order_dates(folded.orders, &schema.ordered_at, source, settings)?;
    tracing::debug!("order dates: {}", crate::telemetry::memory());
    let rejected_lines = |condition: Expr| -> Result<u64> {
        let frame = usable
            .clone()
            .lazy()
            .filter(condition)
            .select([col("lines").cast(DataType::UInt64).sum()])
            .collect()?;
        Ok(frame.column("lines")?.u64()?.get(0).unwrap_or(0))
    };
    let several_customers = rejected_lines(col("several_customers"))?;
    stats
        .rows_rejected
        .insert("order_with_several_customers".into(), several_customers);
    let no_local_time = rejected_lines(col("date").is_null().and(col("several_customers").not()))?;
    *stats.rows_rejected.entry("null_ordered_at".into()).or_insert(0) += no_local_time;
    stats.rows_rejected_total = REJECTED
        .iter()
        .map(|r| stats.rows_rejected.get(*r).copied().unwrap_or(0))
        .sum();
    // Every order has a line, so no rejected lines means no rejected order.
    let orders = if several_customers == 0 && no_local_time == 0 {
        // The usual case: no copy, the columns stay in one chunk each.
        usable.lazy().select(keep).collect()?
    } else {
        usable
            .lazy()
            .filter(col("several_customers").not().and(col("date").is_not_null()))
            .select(keep)
            .collect()?
    };
    stats.orders = orders.height() as u64;
    tracing::debug!("orders filtered: {}", crate::telemetry::memory());
    if orders.height() == 0 {
        let mut message = format!(
            "source `{}`: no orders left: {} rows read, {} excluded by include/exclude, {}, {} after as_of",
            source.name,
            thousands(stats.rows_read),
            thousands(stats.rows_excluded_by_include),
            rejected_summary(&stats),
            thousands(stats.rows_ignored_after_as_of)
        );
        if stats.rows_read > 0 && stats.rows_excluded_by_include == stats.rows_read {
            message.push_str(&format!(
                "; the filters match no line ({}); check their values",
                frequent_values(source, &schema)
            ));
        } else if stats.rows_read == 0 {
            message.push_str("; the input holds no line");
        }
        return Err(DataRejected { message, stats }.into());
    }

    if stats.rows_read > 0 {
        let fraction = stats.rows_rejected_total as f64 / stats.rows_read as f64;
        if fraction > settings.max_rejected_fraction {
            let message = format!(
                "source `{}`: {} of {} rows rejected ({:.4}%): {}; more than max_rejected_fraction = {}; to accept this run set `max_rejected_fraction = {}` under `[pipeline]`",
                source.name,
                thousands(stats.rows_rejected_total),
                thousands(stats.rows_read),
                fraction * 100.0,
                rejected_reasons(&stats),
                settings.max_rejected_fraction,
                accepting_fraction(fraction),
            );
            return Err(DataRejected { message, stats }.into());
        }
    }
    if let Some(physical) = &source.columns.currency {
        if currencies.len() > 1 {
            let name = |currency: &Option<String>| currency.as_deref().unwrap_or("null").to_string();
            let listed: Vec<String> = currencies
                .iter()
                .map(|(currency, lines)| format!("{} ({})", name(currency), count_of(*lines, "line")))
                .collect();
            let (largest, _) = currencies
                .iter()
                .filter(|(currency, _)| currency.is_some())
                .max_by_key(|(_, lines)| **lines)
                .unwrap_or((&None, &0));
            let message = format!(
                "source `{}`: the lines left after the filters hold {} currencies in column `{physical}`: {}; a run sums one currency: pick one with `include = {{ {physical} = [\"{}\"] }}` on `[sources.{}]` (one run per currency)",
                source.name,
                currencies.len(),
                listed.join(", "),
                name(largest),
                source.name
            );
            return Err(DataRejected { message, stats }.into());
        }
        stats.currency = currencies.into_keys().next().flatten();
    }
    let newest = from_days(
        orders
            .column("date")?
            .cast(&DataType::Int32)?
            .i32()?
            .max()
            .expect("orders are not empty"),
    );
    stats.newest_order_date = Some(newest.to_string());
    let as_of = fixed_as_of.unwrap_or(newest);
    check_freshness(source, settings, newest, as_of).map_err(|message| DataRejected {
        message,
        stats: stats.clone(),
    })?;
    Ok(SourceOrders {
        orders,
        customer_ids: folded.customer_ids,
        channels: folded.channels,
        stats,
        as_of,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Local dates by slot-cached offsets equal polars' per-value conversion, around DST
    /// transitions, in half-hour and 45-minute zones, with a 30-minute DST shift, and in the
    /// 19th century (local mean time offsets such as +0:53:28 in Berlin): over 134 years (each
    /// part of the orders caches its own days) and over each 80-day stretch alone (one table
    /// of days).
    #[test]
    fn fast_local_dates_match_polars_conversion() {
        let utc = DataType::Datetime(TimeUnit::Microseconds, Some(polars::prelude::TimeZone::UTC));
        let mut stretches: Vec<Vec<i64>> = Vec::new();
        for start in [-2_524_521_600i64, -1_000_000_000, 0, 1_711_846_800, 1_729_990_800] {
            // From 40 days before `start` (seconds), every 7 min 13.000017 s for 80 days.
            let first = (start - 40 * 86_400) * 1_000_000;
            stretches.push((0..(80 * 86_400 / 433)).map(|i| first + i * 433_000_017).collect());
        }
        let all: Vec<i64> = stretches.concat();
        let day = |micros: i64| micros.div_euclid(86_400_000_000);
        assert!(
            day(all[all.len() - 1]) - day(all[0]) > TABLE_DAYS,
            "the whole span is checked per part"
        );
        let table_of =
            |instants: &[i64]| day_table(&Int64Chunked::from_slice("".into(), instants), TABLE_DAYS, &|_| None);
        assert!(table_of(&all).is_none());
        assert!(stretches.iter().all(|s| table_of(s).is_some()));
        // More days than orders: the days seen are checked per part, not the whole span.
        assert!(table_of(&[0, 1000 * 86_400_000_000]).is_none());
        stretches.push(all);
        for zone in [
            "Europe/Berlin",
            "America/New_York",
            "Asia/Kolkata",
            "Asia/Kathmandu",
            "Australia/Lord_Howe",
            "UTC",
        ] {
            for instants in &stretches {
                let orders = df! { "ordered_ts" => instants }.unwrap();
                let fast = fast_local_dates(&orders, &utc, zone).unwrap().unwrap();
                let expected = orders
                    .clone()
                    .lazy()
                    .select([col("ordered_ts")
                        .cast(utc.clone())
                        .dt()
                        .convert_time_zone(time_zone(zone).unwrap())
                        .dt()
                        .date()
                        .alias("date")])
                    .collect()
                    .unwrap();
                let expected = expected.column("date").unwrap().as_materialized_series();
                assert!(
                    fast.equals_missing(expected),
                    "zone {zone}, {} instants",
                    instants.len()
                );
            }
        }
        let dates = fast_local_dates(
            &df! { "ordered_ts" => [-1i64, 0, 86_399_999_999] }.unwrap(),
            &DataType::Date,
            "UTC",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            dates.cast(&DataType::Int32).unwrap().i32().unwrap().to_vec(),
            [Some(-1), Some(0), Some(0)]
        );
    }

    /// `include` keeps the rows whose column equals one of its values: text and integer
    /// columns of any width, nulls never included, every listed column must match.
    #[test]
    fn include_keeps_rows_equal_to_a_listed_value() {
        let lines = df! {
            "status" => [Some("completed"), Some("shipped"), None, Some("returned"), Some("completed")],
            "store" => [Some(3u32), Some(7), Some(3), Some(3), None],
            "region" => [Some(-2i32), Some(-2), Some(-2), Some(5), Some(-2)],
        }
        .unwrap();
        let kept = |include: &[(&str, Vec<FilterValue>)]| -> Vec<bool> {
            let include: BTreeMap<String, Vec<FilterValue>> =
                include.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            let none = BTreeMap::new();
            let schema = lines.schema().clone();
            let mask = lines
                .clone()
                .lazy()
                .with_column(filter_expr(&include, &none, |key| key, &schema).alias("keep"))
                .collect()
                .unwrap();
            mask.column("keep")
                .unwrap()
                .bool()
                .unwrap()
                .iter()
                .map(|keep| keep.expect("include is never null"))
                .collect()
        };
        let text = |s: &str| FilterValue::Text(s.into());
        let shipped = vec![text("completed"), text("shipped")];
        assert_eq!(kept(&[("status", shipped.clone())]), [true, true, false, false, true]);
        assert_eq!(
            kept(&[("store", vec![FilterValue::Int(3)])]),
            [true, false, true, true, false]
        );
        assert_eq!(
            kept(&[("region", vec![FilterValue::Int(-2), FilterValue::Int(9)])]),
            [true, true, true, false, true]
        );
        assert_eq!(
            kept(&[("status", shipped), ("store", vec![FilterValue::Int(3)])]),
            [true, false, false, false, false]
        );
        assert_eq!(kept(&[("status", vec![])]), [false; 5]);
        assert_eq!(kept(&[]), [true; 5]);
    }
}
