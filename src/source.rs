//! Order-line sources: resolving files, checking mapped columns and types, and the one streaming
//! pass that reduces lines to orders while counting every rejected or ignored line by reason.
//!
//! The pass groups lines by `order_id` on polars' streaming engine, so memory follows the number
//! of orders, never the number of lines. Rejections are not filtered out before the group-by:
//! each line carries a reason code and the per-order aggregates count them, so one scan yields
//! both the orders and the accounting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use polars::prelude::*;
use serde::Serialize;

use crate::config::{AsOf, FilterValue, PipelineSettings, SourceConfig};
use crate::period::from_days;

/// Why a line is not part of an order. Codes are what the scan computes per line.
const OK: i32 = 0;
const LINE_REASONS: &[(i32, &str)] = &[
    (1, "excluded_by_include"),
    (2, "null_customer_id"),
    (3, "null_order_id"),
    (4, "null_ordered_at"),
    (5, "null_amount"),
    (6, "after_as_of"),
];
/// Reasons that count as rejected (against `max_rejected_fraction`).
const REJECTED: &[&str] = &[
    "null_customer_id",
    "null_order_id",
    "null_ordered_at",
    "null_amount",
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

/// Orders of one source: one row per valid order with columns
/// `customer_id, date, ordered_ts, revenue[, channel]` (revenue in exact integer micro-units, see
/// `money`), plus the accounting.
pub struct SourceOrders {
    pub orders: DataFrame,
    pub stats: InputStats,
    pub as_of: NaiveDate,
    pub has_channel: bool,
}

/// Logical column types found in the file, checked against what the tool can use.
#[derive(Debug, Clone)]
pub struct SourceSchema {
    pub ordered_at: DataType,
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
        if logical == "ordered_at" {
            ordered_at = dtype.clone();
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
    Ok(SourceSchema {
        ordered_at,
        has_channel: source.columns.channel.is_some(),
    })
}

fn time_zone(name: &str) -> Result<TimeZone> {
    TimeZone::opt_try_new(Some(name))?.with_context(|| format!("time zone `{name}` is not known to polars"))
}

/// The local calendar date of `ordered_at` in the pipeline's zone.
fn local_date_expr(ordered_at: &DataType, source: &SourceConfig, settings: &PipelineSettings) -> Result<Expr> {
    let target = time_zone(&settings.timezone)?;
    Ok(match ordered_at {
        DataType::Date => col("ordered_at"),
        DataType::Datetime(_, Some(_)) => col("ordered_at").dt().convert_time_zone(target).dt().date(),
        DataType::Datetime(_, None) => col("ordered_at")
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

fn include_expr(source: &SourceConfig) -> Expr {
    let mut condition = lit(true);
    for (logical, values) in &source.include {
        let series = if values.iter().all(|v| matches!(v, FilterValue::Int(_))) {
            let ints: Vec<i64> = values
                .iter()
                .filter_map(|v| match v {
                    FilterValue::Int(i) => Some(*i),
                    FilterValue::Text(_) => None,
                })
                .collect();
            Series::new("values".into(), ints)
        } else {
            let texts: Vec<String> = values
                .iter()
                .map(|v| match v {
                    FilterValue::Int(i) => i.to_string(),
                    FilterValue::Text(s) => s.clone(),
                })
                .collect();
            Series::new("values".into(), texts)
        };
        let test = col(logical.as_str())
            .is_in(lit(series).implode(false), false)
            .fill_null(lit(false));
        condition = condition.and(test);
    }
    condition
}

/// The date `as_of` resolves to before data is read; `None` for `last_order`.
pub fn fixed_as_of(as_of: AsOf, timezone: &str) -> Result<Option<NaiveDate>> {
    let today = || -> Result<NaiveDate> {
        let zone: chrono_tz::Tz = timezone
            .parse()
            .map_err(|_| anyhow::anyhow!("unknown time zone `{timezone}`"))?;
        Ok(chrono::Utc::now().with_timezone(&zone).date_naive())
    };
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
        aggs.push(len().alias("copies"));
        lines = lines.group_by([col("order_id"), col("line")]).agg(aggs);
    } else {
        lines = lines.with_column(lit(1u32).alias("copies"));
    }

    let local_date = local_date_expr(&schema.ordered_at, source, settings)?;
    let after_as_of = match fixed_as_of {
        // A Date literal as days: polars turns a chrono date literal into nanoseconds, which
        // overflow after 2262 and would let far-future lines through.
        Some(date) => col("date").gt(lit(crate::period::to_days(date)).cast(DataType::Date)),
        None => lit(false),
    };
    let reason = when(include_expr(source).not())
        .then(lit(1i32))
        .when(col("customer_id").is_null())
        .then(lit(2i32))
        .when(col("order_id").is_null())
        .then(lit(3i32))
        .when(col("date").is_null())
        .then(lit(4i32))
        .when(col("amount").is_null())
        .then(lit(5i32))
        .when(after_as_of)
        .then(lit(6i32))
        .otherwise(lit(OK))
        .alias("reason");
    let ts_key = col("ordered_at").cast(DataType::Int64);
    let lines = lines
        .with_column(local_date.alias("date"))
        .with_column(reason)
        .with_column(crate::money::to_micros(col("amount")).alias("amount"));
    let ok = || col("reason").eq(lit(OK));
    let when_ok = |expr: Expr| when(ok()).then(expr).otherwise(lit(NULL));

    let mut aggs = vec![
        len().alias("lines"),
        (col("copies").cast(DataType::UInt64) - lit(1u64))
            .sum()
            .alias("duplicate_lines"),
        ok().cast(DataType::UInt32).sum().alias("ok_lines"),
        when_ok(col("customer_id")).min().alias("customer_id"),
        when_ok(col("customer_id")).max().alias("customer_id_max"),
        when_ok(col("date")).min().alias("date"),
        when_ok(ts_key.clone()).min().alias("ordered_ts"),
        when_ok(col("amount")).sum().alias("revenue"),
    ];
    for (code, name) in LINE_REASONS {
        aggs.push(col("reason").eq(lit(*code)).cast(DataType::UInt32).sum().alias(*name));
    }
    if has_channel {
        aggs.push(
            when_ok(col("channel").cast(DataType::String))
                .min_by(when_ok(ts_key))
                .alias("channel"),
        );
    }
    let per_order = lines
        .group_by([col("order_id")])
        .agg(aggs)
        .collect_with_engine(Engine::Streaming)
        .map(|result| result.unwrap_single())
        .map_err(anyhow::Error::from)
        .with_context(|| {
            format!(
                "source `{}`: reading order lines from `{}`",
                source.name,
                source.path.display()
            )
        })?;

    let mut stats = InputStats {
        source: source.name.clone(),
        path: source.path.display().to_string(),
        files: files.iter().map(|f| f.display().to_string()).collect(),
        ..Default::default()
    };
    let sum = |name: &str| -> Result<u64> {
        let column = per_order.column(name)?.cast(&DataType::UInt64)?;
        Ok(column.u64()?.sum().unwrap_or(0))
    };
    stats.duplicate_lines = sum("duplicate_lines")?;
    stats.rows_read = sum("lines")? + stats.duplicate_lines;
    for (_, name) in LINE_REASONS {
        let count = sum(name)?;
        match *name {
            "excluded_by_include" => stats.rows_excluded_by_include = count,
            "after_as_of" => stats.rows_ignored_after_as_of = count,
            _ => {
                stats.rows_rejected.insert(name.to_string(), count);
            }
        }
    }

    // An order_id whose valid lines name two customers is rejected whole.
    let several_customers = col("customer_id").neq(col("customer_id_max"));
    let conflicting = per_order
        .clone()
        .lazy()
        .filter(col("ok_lines").gt(lit(0u32)).and(several_customers.clone()))
        .select([col("ok_lines").cast(DataType::UInt64).sum()])
        .collect()?;
    let conflicting_lines = conflicting.column("ok_lines")?.u64()?.get(0).unwrap_or(0);
    stats
        .rows_rejected
        .insert("order_with_several_customers".into(), conflicting_lines);
    stats.rows_rejected_total = REJECTED
        .iter()
        .map(|r| stats.rows_rejected.get(*r).copied().unwrap_or(0))
        .sum();

    let mut keep = vec![col("customer_id"), col("date"), col("ordered_ts"), col("revenue")];
    if has_channel {
        keep.push(col("channel"));
    }
    let orders = per_order
        .lazy()
        .filter(col("ok_lines").gt(lit(0u32)).and(several_customers.not()))
        .select(keep)
        .collect()?;
    stats.orders = orders.height() as u64;
    if orders.height() == 0 {
        bail!(
            "source `{}`: no orders left after filters ({} rows read, {} excluded by include, {} rejected, {} after as_of)",
            source.name,
            stats.rows_read,
            stats.rows_excluded_by_include,
            stats.rows_rejected_total,
            stats.rows_ignored_after_as_of
        );
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
            bail!(
                "source `{}`: {} of {} rows rejected ({:.4}%), more than max_rejected_fraction = {} ({})",
                source.name,
                stats.rows_rejected_total,
                stats.rows_read,
                fraction * 100.0,
                settings.max_rejected_fraction,
                reasons.join(", ")
            );
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
        stats,
        as_of,
        has_channel,
    })
}
