//! Marketing-spend sources (`kind = "spend"`): one row per date and channel with `date` (a date
//! or timestamp; CSV text in any layout `csv.rs` knows), `channel` (text matched against the
//! orders' channels; null for unattributed spend) and `amount` (an integer, float or decimal,
//! summed exactly in micro-units; negative for a credit). Rows with a null date or amount, or an
//! amount that is not a usable number, are rejected and counted (under
//! `max_rejected_fraction`); spend dated after as_of is ignored and counted.

use super::*;
use crate::core::input::SpendRows;

/// A spend source's files and mapped columns, checked: the lazy scan of spent_ts (Int64 µs),
/// channel (text) and amount (as stored), and the type of `date` as read.
pub struct SpendSchema {
    pub files: Vec<PathBuf>,
    spend: LazyFrame,
    time_type: DataType,
}

/// The spend of `source` up to `as_of` (a local date in the pipeline's zone).
pub fn read_spend(source: &SourceConfig, settings: &PipelineSettings, as_of: NaiveDate) -> Result<SpendRows> {
    let SpendSchema {
        files,
        spend,
        time_type,
    } = check_spend(source)?;
    crate::telemetry::inject_fault(&source.name);
    let local = local_date_of_micros(col("spent_ts"), &time_type, source, settings)?;
    let mut all = read_whole(source, spend.with_column(local.alias("spent_on")), "spend")?;
    let micros = crate::core::money::micros_of_column(all.column("amount")?)?;
    all.with_column(micros.with_name("amount_micros".into()).into_column())?;
    spend_up_to(source, settings, &files, all, as_of)
}

/// Check a spend source's files and column types (`validate` and every run).
pub fn check_spend(source: &SourceConfig) -> Result<SpendSchema> {
    let files = resolve_files(source)?;
    let columns = &source.spend_columns;
    let schema = file_schema(source, &files)?;
    let time_type = mapped_type(source, &schema, "date", &columns.date)?;
    let channel_type = mapped_type(source, &schema, "channel", &columns.channel)?;
    let amount_type = mapped_type(source, &schema, "amount", &columns.amount)?;
    let (micros, time_type) = mapped_time(source, &files, &time_type, "date", &columns.date)?;
    if !(is_text(&channel_type) || channel_type.is_integer() || channel_type.is_bool() || channel_type.is_null()) {
        bail!(
            "source `{}`: column `{}` (mapped as `channel`) has type {channel_type}: expected text",
            source.name,
            columns.channel
        );
    }
    let csv_text = source.format == SourceFormat::Csv && amount_type == DataType::String;
    if !(amount_type.is_primitive_numeric() || amount_type.is_decimal() || csv_text) {
        bail!(
            "source `{}`: column `{}` (mapped as `amount`) has type {amount_type}: expected a number (an integer, float or decimal)",
            source.name,
            columns.amount
        );
    }
    let spend = scan(source, &files)?.select([
        micros.alias("spent_ts"),
        col(columns.channel.as_str()).cast(DataType::String).alias("channel"),
        col(columns.amount.as_str()).alias("amount"),
    ]);
    Ok(SpendSchema {
        files,
        spend,
        time_type,
    })
}

/// Count and drop the rejected rows and those after `as_of`.
fn spend_up_to(
    source: &SourceConfig,
    settings: &PipelineSettings,
    files: &[PathBuf],
    all: DataFrame,
    as_of: NaiveDate,
) -> Result<SpendRows> {
    let dated = col("spent_on").is_not_null();
    let valued = col("amount_micros").is_not_null();
    let valid = valued
        .clone()
        .and(col("amount_micros").neq(lit(crate::core::money::INVALID_MICROS)));
    let usable = dated.clone().and(valid.clone());
    let as_of_date = lit(as_of).cast(DataType::Date);
    let reasons = [
        ("null_date", dated.clone().not()),
        ("null_amount", dated.clone().and(valued.clone().not())),
        ("invalid_amount", dated.and(valued).and(valid.not())),
        (
            "after_as_of",
            usable.clone().and(col("spent_on").gt(as_of_date.clone())),
        ),
    ];
    let counts = all
        .clone()
        .lazy()
        .select(reasons.map(|(reason, rows)| rows.cast(DataType::UInt64).sum().alias(reason)))
        .collect()?;
    let stats = whole_stats(
        source,
        files,
        all.height(),
        &counts,
        &["null_date", "null_amount", "invalid_amount"],
    )?;
    let mut spend = all
        .lazy()
        .filter(usable.and(col("spent_on").lt_eq(as_of_date)))
        .select([col("spent_on"), col("channel"), col("amount_micros")])
        .collect()?;
    // One chunk: the stages read the columns as slices.
    spend.rechunk_mut();
    if let Some(message) = too_many_rejected(source, settings, &stats, "spend rows") {
        return Err(DataRejected { message, stats }.into());
    }
    Ok(SpendRows { spend, stats })
}
