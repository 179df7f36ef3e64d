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

use crate::core::config::{AsOf, FilterValue, PipelineSettings, SourceConfig, SourceFormat};
pub use crate::core::input::{DataRejected, InputStats, SourceOrders};
use crate::core::orders::{OrderFold, LINE_REASONS};
use crate::core::period::from_days;

mod csv;
mod dates;
mod files;
mod mapped;
mod part;
mod spend;
mod spill;
mod survey;

use csv::*;
use dates::*;
pub use files::estimated_lines;
use files::*;
use mapped::*;
pub(crate) use part::{fold_line_part, LineMapper};
pub use spend::{check_spend, read_spend};
pub use spill::{
    cuts_of, number_orders, range_of, read_order_shard, read_spill, sample_ids, spill_orders, write_spill,
    NumberedOrders, SpilledOrders,
};
pub use survey::{check_survey, read_survey};

/// Reasons that count as rejected (against `max_rejected_fraction`).
const REJECTED: &[&str] = &[
    "null_customer_id",
    "null_order_id",
    "null_ordered_at",
    "null_amount",
    "invalid_amount",
    "invalid_cost",
    "order_with_several_customers",
];

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

/// The message of a caught panic.
pub fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_else(|| "no message".into())
}

/// Whether a column type holds text (plain, or dictionary-encoded as categories).
/// For a column `physical` the input lacks: the nearest name it has, or all of them.
fn column_hint(schema: &Schema, physical: &str) -> String {
    let names: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
    crate::core::diagnostic::suggest(physical, names.iter().copied()).unwrap_or_else(|| {
        format!(
            "the input has: {}",
            names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        )
    })
}

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
        format!(
            "column `{physical}` ({what}) is not in the input; {}",
            column_hint(&schema, physical)
        )
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
            "amount" | "cost" => {
                dtype.is_primitive_numeric() || dtype.is_decimal() || (csv && dtype == &DataType::String)
            }
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
                "amount" | "cost" => {
                    "a number: an integer of any width, float32/64, or a decimal of any precision and scale"
                }
                "currency" => "text",
                "line" => "an integer",
                _ => "text, integer or boolean",
            };
            problems.push(format!(
                "column `{physical}` (mapped as `{logical}`) has type {dtype}: expected {expected}"
            ));
        }
        match logical {
            "ordered_at" if csv && dtype == &DataType::String => {
                match csv_time_format(source, &files, physical, "ordered_at") {
                    Ok((format, kind)) => {
                        ordered_at = csv_time_dtype(kind);
                        time_format = Some((format, kind));
                    }
                    Err(error) => problems.push(format!("{error:#}")),
                }
            }
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
    let scan = LineScan::start(source, settings, as_of)?;
    let fold = scan.fold(source, rayon::current_num_threads());
    let fold = fold_lines(source, scan.lines.clone(), fold)?;
    tracing::debug!(
        "order fold: {} batches, {:.3} s busy, {}",
        fold.batches,
        fold.busy.as_secs_f64(),
        crate::telemetry::memory()
    );
    let mut totals = LineTotals::default();
    let part = totals.add(source, settings, &scan.schema, fold)?;
    let (stats, as_of) = totals.check(source, settings, &scan)?;
    Ok(SourceOrders {
        orders: part.orders,
        customer_ids: part.customer_ids,
        channels: part.channels,
        stats,
        as_of,
    })
}

/// A scan of a source's order lines, ready to fold: the checked schema, the as_of it is read
/// for, and the lazy lines (`lines_plan`).
pub(crate) struct LineScan {
    pub schema: SourceSchema,
    /// The as_of date when it does not depend on the data.
    pub fixed_as_of: Option<NaiveDate>,
    /// The first instant (µs) after a fixed as_of.
    pub first_after_as_of: Option<i64>,
    /// Lines the files hold (their metadata), when known.
    pub expected_lines: Option<u64>,
    pub lines: LazyFrame,
    /// Whether include/exclude run in the scan (unseen lines are then the excluded ones).
    pub filter_in_scan: bool,
}

impl LineScan {
    /// Check the source's schema and plan its scan for a run as of `as_of`.
    pub fn start(source: &SourceConfig, settings: &PipelineSettings, as_of: AsOf) -> Result<LineScan> {
        let schema = check_schema(source)?;
        crate::telemetry::inject_fault(&source.name);
        let fixed_as_of = fixed_as_of(as_of, &settings.timezone)?;
        if let Ok(mut scans) = SCANS.lock() {
            *scans.entry(source.path.clone()).or_insert(0) += 1;
        }
        let first_after_as_of = match fixed_as_of {
            Some(date) => Some(as_of_boundary(date, &schema.ordered_at, source, settings)?),
            None => None,
        };
        let expected_lines = total_rows(source, &schema.files);
        let (lines, filter_in_scan) = lines_plan(source, &schema, expected_lines, None, None)?;
        Ok(LineScan {
            schema,
            fixed_as_of,
            first_after_as_of,
            expected_lines,
            lines,
            filter_in_scan,
        })
    }

    /// The lines `offset..offset + len` of the files (before any filter), planned as `lines`.
    pub fn lines_slice(&self, source: &SourceConfig, offset: u64, len: u64) -> Result<LazyFrame> {
        let slice = (offset as i64, len.min(IdxSize::MAX as u64) as IdxSize);
        Ok(lines_plan(source, &self.schema, self.expected_lines, Some(slice), None)?.0)
    }

    /// An empty fold for these lines, in `shards` shards folded in parallel.
    pub fn fold(&self, source: &SourceConfig, shards: usize) -> OrderFold {
        let mut fold = OrderFold::new(
            &self.schema.order_id,
            &self.schema.customer_id,
            shards,
            source.columns.line.is_some(),
        );
        fold.expected_lines = self.expected_lines;
        fold.first_after_as_of = self.first_after_as_of;
        fold.has_cost = source.columns.cost.is_some();
        fold
    }
}

/// The usable orders of one fold, with their customers and channels.
pub(crate) struct FoldedPart {
    /// `id`, `date`, `ordered_ts`, `revenue`[, `channel`][, `cost`] (`usable_orders`).
    pub orders: DataFrame,
    pub customer_ids: Series,
    pub channels: Option<Series>,
}

/// The accounting of one or more folds of a source's lines (a sharded run folds its lines in
/// parts), checked together once every part is folded.
#[derive(Default)]
pub(crate) struct LineTotals {
    lines_by_reason: [u64; crate::core::orders::REASONS],
    duplicates: u64,
    several_customers: u64,
    no_local_time: u64,
    orders: u64,
    currencies: BTreeMap<Option<String>, u64>,
    /// The newest usable order's local date (days).
    newest: Option<i32>,
}

impl LineTotals {
    /// Finish `fold` into its usable orders, adding its accounting.
    pub fn add(
        &mut self,
        source: &SourceConfig,
        settings: &PipelineSettings,
        schema: &SourceSchema,
        mut fold: OrderFold,
    ) -> Result<FoldedPart> {
        for (currency, lines) in std::mem::take(&mut fold.currencies) {
            *self.currencies.entry(currency).or_insert(0) += lines;
        }
        let folded = fold
            .finish(&schema.customer_id, schema.has_channel)
            .map_err(anyhow::Error::from)
            .context("building orders")?;
        tracing::debug!("orders numbered: {}", crate::telemetry::memory());
        for (total, count) in self.lines_by_reason.iter_mut().zip(folded.lines_by_reason) {
            *total += count;
        }
        self.duplicates += folded.duplicate_lines;
        let (orders, several_customers, no_local_time) = usable_orders(source, settings, schema, folded.orders)?;
        self.several_customers += several_customers;
        self.no_local_time += no_local_time;
        self.orders += orders.height() as u64;
        let newest = orders.column("date")?.cast(&DataType::Int32)?.i32()?.max();
        self.newest = self.newest.max(newest);
        Ok(FoldedPart {
            orders,
            customer_ids: folded.customer_ids,
            channels: folded.channels,
        })
    }

    /// Add another part's accounting (`add` run elsewhere, e.g. in a Spark task).
    pub fn merge(&mut self, other: LineTotals) {
        for (total, count) in self.lines_by_reason.iter_mut().zip(other.lines_by_reason) {
            *total += count;
        }
        self.duplicates += other.duplicates;
        self.several_customers += other.several_customers;
        self.no_local_time += other.no_local_time;
        self.orders += other.orders;
        for (currency, lines) in other.currencies {
            *self.currencies.entry(currency).or_insert(0) += lines;
        }
        self.newest = self.newest.max(other.newest);
    }

    /// As JSON, for a part folded in another process.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "lines_by_reason": self.lines_by_reason.to_vec(),
            "duplicates": self.duplicates,
            "several_customers": self.several_customers,
            "no_local_time": self.no_local_time,
            "orders": self.orders,
            "currencies": self.currencies.iter().collect::<Vec<_>>(),
            "newest": self.newest,
        })
        .to_string()
    }

    /// Read back `to_json`.
    pub fn from_json(text: &str) -> Result<LineTotals> {
        #[derive(serde::Deserialize)]
        struct Wire {
            lines_by_reason: Vec<u64>,
            duplicates: u64,
            several_customers: u64,
            no_local_time: u64,
            orders: u64,
            currencies: Vec<(Option<String>, u64)>,
            newest: Option<i32>,
        }
        let wire: Wire = serde_json::from_str(text).context("reading a part's line accounting")?;
        let mut lines_by_reason = [0; crate::core::orders::REASONS];
        anyhow::ensure!(
            wire.lines_by_reason.len() == lines_by_reason.len(),
            "a part's line accounting has {} reasons, not {}",
            wire.lines_by_reason.len(),
            lines_by_reason.len()
        );
        lines_by_reason.copy_from_slice(&wire.lines_by_reason);
        Ok(LineTotals {
            lines_by_reason,
            duplicates: wire.duplicates,
            several_customers: wire.several_customers,
            no_local_time: wire.no_local_time,
            orders: wire.orders,
            currencies: wire.currencies.into_iter().collect(),
            newest: wire.newest,
        })
    }

    /// The source's accounting and the run's as_of, once every part is added; fails (exit 1)
    /// when more lines were rejected than `max_rejected_fraction` allows, when no order is
    /// left, on several currencies, or on stale data (`max_data_age_days`).
    pub fn check(
        self,
        source: &SourceConfig,
        settings: &PipelineSettings,
        scan: &LineScan,
    ) -> Result<(InputStats, NaiveDate)> {
        let mut lines_by_reason = self.lines_by_reason;
        // The lines the folds did not see were left out by a filter in the scan.
        if let Some(total) = scan.expected_lines.filter(|_| scan.filter_in_scan) {
            let folded: u64 = lines_by_reason.iter().sum();
            lines_by_reason[usize::from(crate::core::orders::EXCLUDED_BY_INCLUDE)] += total.saturating_sub(folded);
        }
        let mut stats = line_stats(source, &scan.schema.files, &lines_by_reason, self.duplicates);
        stats
            .rows_rejected
            .insert("order_with_several_customers".into(), self.several_customers);
        *stats.rows_rejected.entry("null_ordered_at".into()).or_insert(0) += self.no_local_time;
        stats.rows_rejected_total = REJECTED
            .iter()
            .map(|r| stats.rows_rejected.get(*r).copied().unwrap_or(0))
            .sum();
        stats.orders = self.orders;
        check_rejections(source, settings, &scan.schema, self.orders, &stats)?;
        if source.columns.currency.is_some() {
            stats.currency = single_currency(source, self.currencies, &stats)?;
        }
        let newest = from_days(self.newest.expect("orders are not empty"));
        stats.newest_order_date = Some(newest.to_string());
        let as_of = scan.fixed_as_of.unwrap_or(newest);
        check_freshness(source, settings, newest, as_of).map_err(|message| DataRejected {
            message,
            stats: stats.clone(),
        })?;
        Ok((stats, as_of))
    }
}

/// The lazy scan of the mapped columns as the fold reads them (keys as text or Int64, the
/// instant in µs, amounts as Float64 units or exact text/decimals, the optional columns), and
/// whether the include/exclude filters run in the scan.
fn lines_plan(
    source: &SourceConfig,
    schema: &SourceSchema,
    expected_lines: Option<u64>,
    slice: Option<(i64, IdxSize)>,
    input: Option<LazyFrame>,
) -> Result<(LazyFrame, bool)> {
    let column_type = |logical: &str| {
        source
            .columns
            .physical(logical)
            .and_then(|physical| schema.column_types.get(physical))
            .cloned()
    };
    let mut projection: Vec<Expr> = source
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
    // Each line gets a reason code (0 = usable) in the fold, from the columns below: the
    // filters, nulls, the amount and the first instant after as_of. Local dates are computed
    // per order afterwards, not per line.
    let ts = ts_micros_expr(&schema.ordered_at)?;
    // Keys as text or Int64, so the fold reads two physical types only.
    let key = |name: &str, dtype: &DataType| match dtype {
        DataType::String => col(name).cast(DataType::String),
        // Strict: a UInt64 id above 2^63 fails the run naming the column, never becomes null.
        _ => col(name).strict_cast(DataType::Int64),
    };
    // Amounts: numbers as Float64 units; decimals and CSV text are turned into micro-units
    // exactly by the fold.
    let money = |logical: &str| match column_type(logical) {
        Some(DataType::Decimal(_, _)) | Some(DataType::String) => col(logical),
        _ => col(logical).cast(DataType::Float64),
    };
    let mut columns = vec![
        key("order_id", &schema.order_id),
        key("customer_id", &schema.customer_id),
        col("ts"),
        money("amount").alias("amount"),
    ];
    if schema.has_channel {
        columns.push(col("channel").cast(DataType::String));
    }
    if source.columns.line.is_some() {
        columns.push(col("line").strict_cast(DataType::Int64));
    }
    if source.columns.currency.is_some() {
        columns.push(col("currency").cast(DataType::String));
    }
    if source.columns.cost.is_some() {
        columns.push(money("cost").alias("cost"));
    }
    // With the line count known from the files' metadata, the filters run in the scan: polars
    // decodes the other columns of included lines only, and the fold counts the rest as
    // excluded. Otherwise each line carries its `include` flag to the fold.
    let filter_in_scan = has_filters && expected_lines.is_some();
    let mut lines = match input {
        Some(lines) => lines,
        None => scan(source, &schema.files)?,
    };
    if let Some((offset, len)) = slice {
        lines = lines.slice(offset, len);
    }
    if filter_in_scan {
        lines = lines.filter(filters);
    } else if has_filters {
        projection.push(filters.alias("include"));
        columns.push(col("include"));
    }
    let lines = lines.select(projection).with_column(ts.alias("ts")).select(columns);
    Ok((lines, filter_in_scan))
}

/// Stream `lines` through `fold` with polars' streaming engine, showing progress.
fn fold_lines(source: &SourceConfig, lines: LazyFrame, fold: OrderFold) -> Result<OrderFold> {
    let expected = fold.expected_lines;
    // With `line` mapped the batches come in file order, so the copy of a repeated line that
    // counts is the first in the files.
    for_each_batch(
        source,
        lines,
        source.columns.line.is_some(),
        expected,
        "lines",
        fold,
        |fold, batch| fold.add(batch).map_err(anyhow::Error::from),
    )
}

/// Stream `lines` with polars' streaming engine into `state` with `add`, batch by batch (in file
/// order when `ordered`), showing progress against `expected` lines; returns the state.
fn for_each_batch<S: Send + 'static>(
    source: &SourceConfig,
    lines: LazyFrame,
    ordered: bool,
    expected: Option<u64>,
    what: &'static str,
    state: S,
    add: fn(&mut S, DataFrame) -> Result<()>,
) -> Result<S> {
    let state = Arc::new(Mutex::new(Some(state)));
    let progress = crate::telemetry::progress_bar(expected.unwrap_or(0), what);
    let sink = {
        let state = Arc::clone(&state);
        let progress = progress.clone();
        PlanCallback::new(move |batch: DataFrame| {
            let mut state = state
                .lock()
                .map_err(|_| polars_err!(ComputeError: "the line stream's state is poisoned"))?;
            progress.inc(batch.height() as u64);
            let state = state.as_mut().expect("the state is taken only after the scan");
            add(state, batch).map_err(|error| polars_err!(ComputeError: "{error:#}"))?;
            Ok(false)
        })
    };
    lines
        .sink_batches(sink, ordered, None)
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
    let state = state
        .lock()
        .ok()
        .and_then(|mut state| state.take())
        .expect("the scan has finished with the state");
    Ok(state)
}

/// An absolute path as text, so a manifest read anywhere names the files.
fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// The accounting of the lines the fold saw, by reason.
fn line_stats(source: &SourceConfig, files: &[PathBuf], lines_by_reason: &[u64], duplicates: u64) -> InputStats {
    let mut stats = InputStats {
        source: source.name.clone(),
        path: absolute(&source.path),
        files: files.iter().map(|f| absolute(f)).collect(),
        ..Default::default()
    };
    // Repeated (order_id, line) pairs are usable lines the fold counted once.
    stats.duplicate_lines = duplicates;
    stats.rows_read = lines_by_reason.iter().sum::<u64>();
    for (code, name) in LINE_REASONS {
        let count = lines_by_reason[*code as usize];
        match *name {
            "excluded_by_include" => stats.rows_excluded_by_include = count,
            "after_as_of" => stats.rows_ignored_after_as_of = count,
            _ => {
                stats.rows_rejected.insert(name.to_string(), count);
            }
        }
    }
    stats
}

/// The folded orders with their local dates, less those rejected whole: an order_id whose lines
/// name two customers, and one whose first local time does not exist (a DST gap for naive
/// times). Their lines are counted in `stats`.
/// Returns the orders and the lines of those two kinds of rejected orders.
fn usable_orders(
    source: &SourceConfig,
    settings: &PipelineSettings,
    schema: &SourceSchema,
    orders: DataFrame,
) -> Result<(DataFrame, u64, u64)> {
    let mut keep = vec![col("id"), col("date"), col("ordered_ts"), col("revenue")];
    if schema.has_channel {
        keep.push(col("channel"));
    }
    if source.columns.cost.is_some() {
        keep.push(col("cost"));
    }
    let usable = with_order_dates(orders, &schema.ordered_at, source, settings)?;
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
    let no_local_time = rejected_lines(col("date").is_null().and(col("several_customers").not()))?;
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
    tracing::debug!("orders filtered: {}", crate::telemetry::memory());
    Ok((orders, several_customers, no_local_time))
}

/// The run stops when no order is left, or when more lines were rejected than
/// `max_rejected_fraction` allows; the message says why and what to change.
fn check_rejections(
    source: &SourceConfig,
    settings: &PipelineSettings,
    schema: &SourceSchema,
    orders: u64,
    stats: &InputStats,
) -> Result<()> {
    let rejected = |message: String| -> Result<()> {
        Err(DataRejected {
            message,
            stats: stats.clone(),
        }
        .into())
    };
    if orders == 0 {
        let mut message = format!(
            "source `{}`: no orders left: {} rows read, {} excluded by include/exclude, {}, {} after as_of",
            source.name,
            thousands(stats.rows_read),
            thousands(stats.rows_excluded_by_include),
            rejected_summary(stats),
            thousands(stats.rows_ignored_after_as_of)
        );
        if stats.rows_read > 0 && stats.rows_excluded_by_include == stats.rows_read {
            message.push_str(&format!(
                "; the filters match no line ({}); check their values",
                frequent_values(source, schema)
            ));
        } else if stats.rows_read == 0 {
            message.push_str("; the input holds no line");
        }
        return rejected(message);
    }
    match too_many_rejected(source, settings, stats, "rows") {
        Some(message) => rejected(message),
        None => Ok(()),
    }
}

/// The error when more of `stats.rows_read` (`what`: rows, answers) were rejected than
/// `max_rejected_fraction` allows, naming the reasons and the value that would accept the run.
fn too_many_rejected(
    source: &SourceConfig,
    settings: &PipelineSettings,
    stats: &InputStats,
    what: &str,
) -> Option<String> {
    let fraction = stats.rows_rejected_total as f64 / stats.rows_read.max(1) as f64;
    (fraction > settings.max_rejected_fraction).then(|| {
        format!(
            "source `{}`: {} of {} {what} rejected ({:.4}%): {}; more than max_rejected_fraction = {}; to accept this run set `max_rejected_fraction = {}` under `[pipeline]`",
            source.name,
            thousands(stats.rows_rejected_total),
            thousands(stats.rows_read),
            fraction * 100.0,
            rejected_reasons(stats),
            settings.max_rejected_fraction,
            accepting_fraction(fraction),
        )
    })
}

/// The one currency of the lines used (`None` when they have none), or an error listing each
/// with its line count and the `include` that picks one.
fn single_currency(
    source: &SourceConfig,
    currencies: BTreeMap<Option<String>, u64>,
    stats: &InputStats,
) -> Result<Option<String>> {
    if currencies.len() <= 1 {
        return Ok(currencies.into_keys().next().flatten());
    }
    let physical = source.columns.currency.as_deref().unwrap_or("currency");
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
    Err(DataRejected {
        message,
        stats: stats.clone(),
    }
    .into())
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
