//! CSV `ordered_at` text: its layout, detected from the first values, and the expression that
//! parses it.

use super::*;

/// Date and timestamp layouts CSV `ordered_at` values may have, tried in this order on the
/// first values of the column: the first under which all of them parse is used for the whole
/// column. `Zoned` values carry an offset and are instants; `Utc` ones end in `Z` or ` UTC`.
pub(super) const CSV_TIME_FORMATS: &[(&str, TimeKind)] = &[
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
pub(super) enum TimeKind {
    Zoned,
    Utc,
    Naive,
    Date,
}

/// Whether `value` has the layout `format` of `kind` (chrono's parser, as polars' strptime).
pub(super) fn parses_as(value: &str, format: &str, kind: TimeKind) -> bool {
    match kind {
        TimeKind::Zoned => chrono::DateTime::parse_from_str(value, format).is_ok(),
        TimeKind::Utc | TimeKind::Naive => chrono::NaiveDateTime::parse_from_str(value, format).is_ok(),
        TimeKind::Date => NaiveDate::parse_from_str(value, format).is_ok(),
    }
}

/// The layout of a CSV source's time text in column `physical` (mapped as `logical`), from its
/// first 1,000 non-null values.
pub(super) fn csv_time_format(
    source: &SourceConfig,
    files: &[PathBuf],
    physical: &str,
    logical: &str,
) -> Result<(&'static str, TimeKind)> {
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
                "source `{}`: column `{physical}` (mapped as `{logical}`) holds `{odd}`, which is no date or timestamp layout read from CSV; accepted: {} (one layout per column; %.f is optional fractional seconds)",
                source.name,
                CSV_TIME_FORMATS.iter().map(|(f, _)| format!("`{f}`")).collect::<Vec<_>>().join(", ")
            )
        })
}

/// `ordered_at` of a CSV source as a date or timestamp, parsed with `format`.
pub(super) fn csv_time_expr(physical: &str, format: &'static str, kind: TimeKind) -> Expr {
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
pub(super) fn csv_time_dtype(kind: TimeKind) -> DataType {
    match kind {
        TimeKind::Date => DataType::Date,
        TimeKind::Zoned | TimeKind::Utc => {
            DataType::Datetime(TimeUnit::Microseconds, Some(polars::prelude::TimeZone::UTC))
        }
        TimeKind::Naive => DataType::Datetime(TimeUnit::Microseconds, None),
    }
}
