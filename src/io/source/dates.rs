//! Order times to local dates in the pipeline's time zone, and the as_of boundary.

use super::*;

/// The type the fold reads a key column as: text for text of any encoding, else Int64.
pub(super) fn key_type(dtype: &DataType) -> DataType {
    if is_text(dtype) {
        DataType::String
    } else {
        dtype.clone()
    }
}

/// A zone of the tz database by name, for computing with chrono.
pub(super) fn chrono_zone(name: &str) -> Result<chrono_tz::Tz> {
    name.parse().map_err(|_| anyhow::anyhow!("unknown time zone `{name}`"))
}

pub(super) fn time_zone(name: &str) -> Result<TimeZone> {
    TimeZone::opt_try_new(Some(name))?.with_context(|| format!("time zone `{name}` is not known to polars"))
}

/// `ordered_at` as Int64 microseconds in the column's own frame: UTC instants for zoned
/// timestamps, wall-clock time for naive ones, midnight for dates. Comparable with
/// `as_of_boundary` without converting every line to a local date.
pub(super) fn ts_micros_expr(ordered_at: &DataType) -> Result<Expr> {
    Ok(match ordered_at {
        DataType::Date => col("ordered_at").cast(DataType::Datetime(TimeUnit::Microseconds, None)),
        DataType::Datetime(_, zone) => col("ordered_at").cast(DataType::Datetime(TimeUnit::Microseconds, zone.clone())),
        other => bail!("ordered_at has type {other}: expected a date or timestamp"),
    }
    .cast(DataType::Int64))
}

/// The first microsecond after `as_of` (local midnight starting the next day in the pipeline's
/// zone), in the same frame as `ts_micros_expr`.
pub(super) fn as_of_boundary(
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
pub(super) fn fast_local_dates(orders: &DataFrame, ordered_at: &DataType, timezone: &str) -> Result<Option<Series>> {
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
pub(super) const DAY: i64 = 86_400_000_000;

/// Days of orders the local-date table covers at most (~110 years): each day costs 97 offset
/// lookups, once.
pub(super) const TABLE_DAYS: i64 = 40_000;

/// `(first day, steady(day) for each day from the first)` over the UTC days of `instants` (µs),
/// computed in parallel; `None` when they span `max_days` days or more, more days than there
/// are instants (a stray old date among a few orders: the per-part caches check only the days
/// seen), or none.
pub(super) fn day_table(
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
pub(super) fn in_parallel<T: Sync, U: Send>(values: &[T], f: impl Fn(&[T], &mut Vec<U>) + Sync) -> Vec<U> {
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
pub(super) fn with_order_dates(
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
pub(super) fn local_date_of_micros(
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
