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

use crate::config::{AsOf, FilterValue, PipelineSettings, SourceConfig};
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
    pub ordered_at: DataType,
    pub order_id: DataType,
    pub customer_id: DataType,
    pub has_channel: bool,
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

/// Files a source path names: one file, a glob, or every `.parquet` file below a directory.
pub fn resolve_files(source: &SourceConfig) -> Result<Vec<PathBuf>> {
    let path = &source.path;
    let text = path.to_string_lossy();
    let mut files = Vec::new();
    if text.contains(['*', '?', '[']) {
        let matches = glob::glob(&text).with_context(|| format!("source `{}`: invalid glob `{text}`", source.name))?;
        for entry in matches {
            let file = entry.with_context(|| format!("source `{}`: reading glob `{text}`", source.name))?;
            if file.is_file() {
                files.push(file);
            }
        }
        if files.is_empty() {
            bail!("source `{}`: glob `{text}` matches no file", source.name);
        }
    } else if path.is_dir() {
        collect_parquet_files(path, &mut files)
            .with_context(|| format!("source `{}`: listing directory `{text}`", source.name))?;
        if files.is_empty() {
            bail!("source `{}`: directory `{text}` contains no .parquet file", source.name);
        }
    } else if path.is_file() {
        files.push(path.clone());
    } else {
        bail!("source `{}`: input path `{text}` does not exist", source.name);
    }
    files.sort();
    Ok(files)
}

fn collect_parquet_files(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        if path.is_dir() {
            collect_parquet_files(&path, files)?;
        } else if name.ends_with(".parquet") {
            files.push(path);
        }
    }
    Ok(())
}

fn scan(source: &SourceConfig) -> Result<LazyFrame> {
    let path = source.path.to_string_lossy().to_string();
    let args = ScanArgsParquet::default();
    LazyFrame::scan_parquet(PlRefPath::new(path.as_str()), args)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("source `{}`: cannot scan `{path}` as Parquet", source.name))
}

/// Lines in the source's files from Parquet metadata, for the progress bar and the fold's
/// reservations; `None` when the count fails (the scan then reports the problem).
fn total_rows(source: &SourceConfig) -> Option<u64> {
    let counted = scan(source)
        .ok()?
        .select([len().cast(DataType::UInt64)])
        .collect()
        .ok()?;
    counted.column("len").ok()?.u64().ok()?.get(0)
}

/// Check that every mapped column exists with a usable type; reads only file metadata.
pub fn check_schema(source: &SourceConfig) -> Result<SourceSchema> {
    resolve_files(source)?;
    let schema = scan(source)?
        .collect_schema()
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "source `{}`: cannot read the Parquet schema of `{}`",
                source.name,
                source.path.display()
            )
        })?;
    let mut problems = Vec::new();
    let mut ordered_at = DataType::Date;
    let mut key_types = [DataType::String, DataType::String];
    for (logical, physical) in source.columns.mapped() {
        let Some(dtype) = schema.get(physical) else {
            let names: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
            let hint = crate::config::diagnostic::suggest(physical, names.iter().copied()).unwrap_or_else(|| {
                format!(
                    "the file has: {}",
                    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                )
            });
            problems.push(format!(
                "column `{physical}` (mapped as `{logical}`) is not in the input; {hint}"
            ));
            continue;
        };
        let usable = match logical {
            "customer_id" | "order_id" => dtype.is_integer() || dtype == &DataType::String,
            "ordered_at" => matches!(dtype, DataType::Date | DataType::Datetime(_, _)),
            "amount" => dtype.is_primitive_numeric() || dtype.is_decimal(),
            "status" | "channel" => dtype == &DataType::String || dtype.is_integer() || dtype.is_bool(),
            "line" => dtype.is_integer(),
            _ => true,
        };
        if !usable {
            let expected = match logical {
                "customer_id" | "order_id" => "an integer or text",
                "ordered_at" => "a date or timestamp",
                "amount" => "a number (integer, floating or decimal)",
                "line" => "an integer",
                _ => "text, integer or boolean",
            };
            problems.push(format!(
                "column `{physical}` (mapped as `{logical}`) has type {dtype}: expected {expected}"
            ));
        }
        match logical {
            "ordered_at" => ordered_at = dtype.clone(),
            "order_id" => key_types[0] = dtype.clone(),
            "customer_id" => key_types[1] = dtype.clone(),
            _ => {}
        }
        if let Some(values) = source.include.get(logical) {
            let is_text = dtype == &DataType::String;
            for value in values {
                let fits = matches!(
                    (value, is_text),
                    (FilterValue::Text(_), true) | (FilterValue::Int(_), false)
                );
                if !fits {
                    problems.push(format!(
                        "`include.{logical}` value {value:?} does not match column `{physical}` of type {dtype}"
                    ));
                }
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
        order_id,
        customer_id,
        has_channel: source.columns.channel.is_some(),
    })
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
            // mostly near in time, so the last day is checked first). Parts checking their own
            // days cost ~1.8 % of a 50M-line run's CPU: a customer's orders come together, so
            // every part spans every day.
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

fn include_expr(include: &BTreeMap<String, Vec<FilterValue>>) -> Expr {
    // An OR of equalities, not `is_in`: the streaming engine lowers `is_in` to a semi-join
    // beside the scan whose multiplexer buffered decoded batches while the fold was busy
    // (~2 GB of a 50M-line run's peak). `check_schema` has matched each value's kind to the
    // column's type; integer columns are compared as Int64 (a UInt64 above 2^63, which no
    // value can equal, becomes null: not included).
    let mut condition = lit(true);
    for (logical, values) in include {
        let equals = |value: &FilterValue| match value {
            FilterValue::Int(i) => col(logical.as_str()).cast(DataType::Int64).eq(lit(*i)),
            FilterValue::Text(s) => col(logical.as_str()).eq(lit(s.as_str())),
        };
        let test = values
            .iter()
            .map(equals)
            .reduce(Expr::or)
            .unwrap_or(lit(false))
            .fill_null(lit(false));
        condition = condition.and(test);
    }
    condition
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
    let files = resolve_files(source)?;
    let fixed_as_of = fixed_as_of(as_of, &settings.timezone)?;
    if let Ok(mut scans) = SCANS.lock() {
        *scans.entry(source.path.clone()).or_insert(0) += 1;
    }

    let projection: Vec<Expr> = source
        .columns
        .mapped()
        .into_iter()
        .map(|(logical, physical)| col(physical).alias(logical))
        .collect();
    let mut lines = scan(source)?.select(projection);

    let has_line = source.columns.line.is_some();
    let has_channel = schema.has_channel;
    let mut value_columns = vec!["customer_id", "ordered_at", "amount"];
    for logical in ["status", "channel"] {
        if source.columns.physical(logical).is_some() {
            value_columns.push(logical);
        }
    }
    // Exact repeats of (order_id, line) count once: keep the first copy, count the others.
    if has_line {
        let mut aggs: Vec<Expr> = value_columns.iter().map(|c| col(*c).first()).collect();
        aggs.push(len().cast(DataType::UInt32).alias("copies"));
        // Lines without a line number are never duplicates of each other.
        let mut columns = vec![col("order_id"), col("line")];
        columns.extend(value_columns.iter().map(|c| col(*c)));
        columns.push(lit(1u32).cast(DataType::UInt32).alias("copies"));
        let numbered = lines
            .clone()
            .filter(col("line").is_not_null())
            .group_by([col("order_id"), col("line")])
            .agg(aggs);
        let unnumbered = lines.filter(col("line").is_null()).select(columns);
        lines = concat([numbered, unnumbered], UnionArgs::default())?;
    }

    // Each line gets a reason code (0 = usable) in the fold, from the columns below: the
    // include filter, nulls, the amount (as Float64) and the first instant after as_of. Local
    // dates are computed per order afterwards, not per line.
    let ts = ts_micros_expr(&schema.ordered_at)?;
    let first_after_as_of = match fixed_as_of {
        Some(date) => Some(as_of_boundary(date, &schema.ordered_at, source, settings)?),
        None => None,
    };
    // Keys as text or Int64, so the fold reads two physical types only.
    let key = |name: &str, dtype: &DataType| match dtype {
        DataType::String => col(name),
        // Strict: a UInt64 id above 2^63 fails the run naming the column, never becomes null.
        _ => col(name).strict_cast(DataType::Int64),
    };
    let mut columns = vec![
        key("order_id", &schema.order_id),
        key("customer_id", &schema.customer_id),
        col("ts"),
        col("amount"),
    ];
    if has_channel {
        columns.push(col("channel").cast(DataType::String));
    }
    if has_line {
        columns.push(col("copies"));
    }
    let expected_lines = total_rows(source);
    // With the line count known from the files' metadata (and no duplicate lines to fold
    // first), the include filter runs in the scan: polars decodes the other columns of the
    // included lines only, and the fold counts the rest as excluded. Otherwise each line
    // carries its `include` flag to the fold.
    let filter_in_scan = !source.include.is_empty() && !has_line && expected_lines.is_some();
    if filter_in_scan {
        lines = lines.filter(include_expr(&source.include));
    } else if !source.include.is_empty() {
        columns.push(include_expr(&source.include).alias("include"));
    }
    let lines = lines
        .with_column(ts.alias("ts"))
        .with_column(col("amount").cast(DataType::Float64))
        .select(columns);
    let mut fold = OrderFold::new(&schema.order_id, &schema.customer_id, rayon::current_num_threads());
    fold.expected_lines = expected_lines;
    fold.first_after_as_of = first_after_as_of;
    let fold = Arc::new(Mutex::new(Some(fold)));
    let progress = crate::runner::progress_bar(expected_lines.unwrap_or(0), "lines");
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
    lines
        .sink_batches(sink, false, None)
        .and_then(|plan| plan.collect_with_engine(Engine::Streaming))
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "source `{}`: reading order lines from `{}`",
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
        crate::runner::memory()
    );
    let folded = fold
        .finish(&schema.customer_id, has_channel)
        .map_err(anyhow::Error::from)
        .context("building orders")?;
    tracing::debug!("orders numbered: {}", crate::runner::memory());

    let mut stats = InputStats {
        source: source.name.clone(),
        path: source.path.display().to_string(),
        files: files.iter().map(|f| f.display().to_string()).collect(),
        ..Default::default()
    };
    stats.duplicate_lines = folded.duplicate_lines;
    stats.rows_read = folded.lines_by_reason.iter().sum::<u64>() + stats.duplicate_lines;
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
    tracing::debug!("order dates: {}", crate::runner::memory());
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
    tracing::debug!("orders filtered: {}", crate::runner::memory());
    if orders.height() == 0 {
        let message = format!(
            "source `{}`: no orders left after filters ({} rows read, {} excluded by include, {} rejected, {} after as_of)",
            source.name,
            stats.rows_read,
            stats.rows_excluded_by_include,
            stats.rows_rejected_total,
            stats.rows_ignored_after_as_of
        );
        return Err(DataRejected { message, stats }.into());
    }

    if stats.rows_read > 0 {
        let fraction = stats.rows_rejected_total as f64 / stats.rows_read as f64;
        if fraction > settings.max_rejected_fraction {
            let reasons: Vec<String> = stats
                .rows_rejected
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(reason, n)| format!("{reason}: {n}"))
                .collect();
            let message = format!(
                "source `{}`: {} of {} rows rejected ({:.4}%), more than max_rejected_fraction = {} ({})",
                source.name,
                stats.rows_rejected_total,
                stats.rows_read,
                fraction * 100.0,
                settings.max_rejected_fraction,
                reasons.join(", ")
            );
            return Err(DataRejected { message, stats }.into());
        }
    }
    let as_of = match fixed_as_of {
        Some(date) => date,
        None => {
            let latest = orders.column("date")?.cast(&DataType::Int32)?.i32()?.max();
            from_days(latest.expect("orders are not empty"))
        }
    };
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
            let mask = lines
                .clone()
                .lazy()
                .with_column(include_expr(&include).alias("keep"))
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
