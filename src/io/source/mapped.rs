//! What the sources read whole (survey answers, marketing spend) share: a mapped column's type
//! with a hint when it is missing, a mapped date or timestamp as instants in µs, and the read.

use super::*;

/// The type of `physical` (mapped as `logical`) in the source's files, or an error naming the
/// column and the nearest ones the files have.
pub(super) fn mapped_type(source: &SourceConfig, schema: &Schema, logical: &str, physical: &str) -> Result<DataType> {
    schema.get(physical).cloned().with_context(|| {
        format!(
            "source `{}`: no column `{physical}` (mapped as `{logical}`) in `{}`; {}",
            source.name,
            source.path.display(),
            column_hint(schema, physical)
        )
    })
}

/// A date or timestamp column (CSV text in any layout `csv.rs` knows) as Int64 µs, and the type
/// its local date is computed from (`local_date_of_micros`).
pub(super) fn mapped_time(
    source: &SourceConfig,
    files: &[PathBuf],
    dtype: &DataType,
    logical: &str,
    physical: &str,
) -> Result<(Expr, DataType)> {
    let (time, time_type) = match dtype {
        DataType::Date | DataType::Datetime(_, _) => (col(physical), dtype.clone()),
        DataType::String if source.format == SourceFormat::Csv => {
            let (format, kind) = csv_time_format(source, files, physical, logical)?;
            (csv_time_expr(physical, format, kind), csv_time_dtype(kind))
        }
        other => bail!(
            "source `{}`: column `{physical}` (mapped as `{logical}`) has type {other}: expected a date or timestamp",
            source.name
        ),
    };
    let micros = match &time_type {
        DataType::Datetime(_, zone) => time.cast(DataType::Datetime(TimeUnit::Microseconds, zone.clone())),
        _ => time.cast(DataType::Datetime(TimeUnit::Microseconds, None)),
    }
    .cast(DataType::Int64);
    Ok((micros, time_type))
}

/// Collect a whole source's rows; an error names the source and its path.
pub(super) fn read_whole(source: &SourceConfig, rows: LazyFrame, what: &str) -> Result<DataFrame> {
    rows.collect().map_err(anyhow::Error::from).with_context(|| {
        format!(
            "source `{}`: reading {what} from `{}`",
            source.name,
            source.path.display()
        )
    })
}

/// The accounting of a source read whole: rows read and ignored after as_of, and the rejected
/// rows by reason (`counts` holds one UInt64 column per reason).
pub(super) fn whole_stats(
    source: &SourceConfig,
    files: &[PathBuf],
    rows_read: usize,
    counts: &DataFrame,
    rejected: &[&str],
) -> Result<InputStats> {
    let count = |reason: &str| -> Result<u64> { Ok(counts.column(reason)?.u64()?.get(0).unwrap_or(0)) };
    let mut stats = InputStats {
        source: source.name.clone(),
        path: absolute(&source.path),
        files: files.iter().map(|file| absolute(file)).collect(),
        scans: 1,
        rows_read: rows_read as u64,
        rows_ignored_after_as_of: count("after_as_of")?,
        ..Default::default()
    };
    for reason in rejected {
        stats.rows_rejected.insert(reason.to_string(), count(reason)?);
    }
    stats.rows_rejected_total = stats.rows_rejected.values().sum();
    Ok(stats)
}
