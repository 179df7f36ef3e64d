//! Calendar periods: day, ISO week (Monday start), month, quarter, year.
//!
//! A period is identified by an integer index that increases by one per period, so
//! "periods since acquisition" is a subtraction. The same mapping exists as a polars expression
//! (for tables) and as plain Rust (for building dense grids); tests keep the two in step.

use chrono::{Datelike, Duration, NaiveDate};
use polars::prelude::*;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Day,
    /// ISO week, starting on Monday.
    Week,
    #[default]
    Month,
    Quarter,
    Year,
}

/// 1970-01-01 as a chrono date; polars' `Date` is days since this day.
pub fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch is a valid date")
}

pub fn to_days(date: NaiveDate) -> i32 {
    (date - epoch()).num_days() as i32
}

pub fn from_days(days: i32) -> NaiveDate {
    epoch() + Duration::days(days as i64)
}

impl Granularity {
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Day => "day",
            Granularity::Week => "week",
            Granularity::Month => "month",
            Granularity::Quarter => "quarter",
            Granularity::Year => "year",
        }
    }

    /// The period index of a `Date` column as an `Int32` expression.
    pub fn index_expr(self, date: Expr) -> Expr {
        let days = || date.clone().cast(DataType::Int32);
        let month_index = || {
            date.clone().dt().year().cast(DataType::Int32) * lit(12) + date.clone().dt().month().cast(DataType::Int32)
                - lit(1)
        };
        match self {
            Granularity::Day => days(),
            // 1969-12-29 was a Monday: days + 3 counts from it.
            Granularity::Week => (days() + lit(3)).floor_div(lit(7)),
            Granularity::Month => month_index(),
            Granularity::Quarter => month_index().floor_div(lit(3)),
            Granularity::Year => date.dt().year().cast(DataType::Int32),
        }
    }

    /// `index_expr` for dates known to lie in `first..=last`: calendar periods (month, quarter,
    /// year) by lookup in a table with one entry per day of that range, which is several times
    /// faster than taking dates apart per row; day and week are arithmetic anyway.
    pub fn index_in_range(self, date: Expr, first: NaiveDate, last: NaiveDate) -> Expr {
        match self {
            Granularity::Day | Granularity::Week => self.index_expr(date),
            _ => {
                let (first, last) = (to_days(first), to_days(last).max(to_days(first)));
                let table: Vec<i32> = (first..=last).map(|day| self.index_of(from_days(day))).collect();
                lit(Series::new("period_index".into(), table)).gather(date.cast(DataType::Int32) - lit(first), false)
            }
        }
    }

    /// The period index of one date (same mapping as `index_expr`).
    pub fn index_of(self, date: NaiveDate) -> i32 {
        let month_index = date.year() * 12 + date.month0() as i32;
        match self {
            Granularity::Day => to_days(date),
            Granularity::Week => (to_days(date) + 3).div_euclid(7),
            Granularity::Month => month_index,
            Granularity::Quarter => month_index.div_euclid(3),
            Granularity::Year => date.year(),
        }
    }

    /// First day of the period with this index.
    pub fn start_of(self, index: i32) -> NaiveDate {
        let month_start = |month_index: i32| {
            NaiveDate::from_ymd_opt(month_index.div_euclid(12), month_index.rem_euclid(12) as u32 + 1, 1)
                .expect("month index maps to a valid date")
        };
        match self {
            Granularity::Day => from_days(index),
            Granularity::Week => from_days(index * 7 - 3),
            Granularity::Month => month_start(index),
            Granularity::Quarter => month_start(index * 3),
            Granularity::Year => NaiveDate::from_ymd_opt(index, 1, 1).expect("year maps to a valid date"),
        }
    }

    /// Last day of the period with this index.
    pub fn end_of(self, index: i32) -> NaiveDate {
        self.start_of(index + 1) - Duration::days(1)
    }
}

/// Calendar index of each day number in `first..=last`, looked up instead of recomputed per row.
pub struct PeriodIndex {
    first: i32,
    index: Vec<i32>,
}

impl PeriodIndex {
    pub fn new(granularity: Granularity, first: i32, last: i32) -> Self {
        let index = (first..=last.max(first))
            .map(|day| granularity.index_of(from_days(day)))
            .collect();
        PeriodIndex { first, index }
    }

    pub fn of(&self, day: i32) -> i32 {
        self.index[(day - self.first) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Granularity; 5] = [
        Granularity::Day,
        Granularity::Week,
        Granularity::Month,
        Granularity::Quarter,
        Granularity::Year,
    ];

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn lookup_index_equals_the_calendar_index() {
        let (first, last) = (date(1999, 11, 3), date(2001, 3, 2));
        let days: Vec<i32> = (to_days(first)..=to_days(last)).rev().collect();
        let frame = df!("date" => days.clone())
            .unwrap()
            .lazy()
            .with_column(col("date").cast(DataType::Date));
        for granularity in ALL {
            let out = frame
                .clone()
                .select([
                    granularity.index_expr(col("date")).alias("calendar"),
                    granularity.index_in_range(col("date"), first, last).alias("lookup"),
                ])
                .collect()
                .unwrap();
            let calendar: Vec<i32> = out
                .column("calendar")
                .unwrap()
                .i32()
                .unwrap()
                .into_no_null_iter()
                .collect();
            let lookup: Vec<i32> = out
                .column("lookup")
                .unwrap()
                .i32()
                .unwrap()
                .into_no_null_iter()
                .collect();
            assert_eq!(calendar, lookup, "{granularity:?}");
            assert_eq!(lookup[0], granularity.index_of(last), "{granularity:?}");
        }
    }

    #[test]
    fn weeks_start_on_monday() {
        let week = Granularity::Week;
        // 2024-01-01 is a Monday, 2024-01-07 a Sunday.
        assert_eq!(week.index_of(date(2024, 1, 1)), week.index_of(date(2024, 1, 7)));
        assert_eq!(week.index_of(date(2024, 1, 8)), week.index_of(date(2024, 1, 7)) + 1);
        assert_eq!(week.start_of(week.index_of(date(2024, 1, 5))), date(2024, 1, 1));
        assert_eq!(week.end_of(week.index_of(date(2024, 1, 5))), date(2024, 1, 7));
        // Before 1970 too.
        assert_eq!(week.start_of(week.index_of(date(1969, 12, 31))), date(1969, 12, 29));
    }

    #[test]
    fn month_quarter_year_round_trip() {
        for (granularity, day, start, end) in [
            (
                Granularity::Month,
                date(2024, 2, 15),
                date(2024, 2, 1),
                date(2024, 2, 29),
            ),
            (
                Granularity::Quarter,
                date(2024, 5, 15),
                date(2024, 4, 1),
                date(2024, 6, 30),
            ),
            (
                Granularity::Year,
                date(2023, 7, 4),
                date(2023, 1, 1),
                date(2023, 12, 31),
            ),
            (Granularity::Day, date(1965, 7, 4), date(1965, 7, 4), date(1965, 7, 4)),
        ] {
            let index = granularity.index_of(day);
            assert_eq!(granularity.start_of(index), start, "{granularity:?}");
            assert_eq!(granularity.end_of(index), end, "{granularity:?}");
        }
        assert_eq!(
            Granularity::Month.index_of(date(2024, 1, 31)) + 1,
            Granularity::Month.index_of(date(2024, 2, 1))
        );
    }

    #[test]
    fn expression_matches_rust_mapping() {
        let days: Vec<NaiveDate> = (-800..800).map(|i| date(2000, 1, 1) + Duration::days(i * 5)).collect();
        let df = df!("date" => days.clone()).unwrap();
        for granularity in ALL {
            let out = df
                .clone()
                .lazy()
                .select([granularity.index_expr(col("date")).alias("index")])
                .collect()
                .unwrap();
            let index: Vec<i32> = out
                .column("index")
                .unwrap()
                .i32()
                .unwrap()
                .into_no_null_iter()
                .collect();
            let expected: Vec<i32> = days.iter().map(|d| granularity.index_of(*d)).collect();
            assert_eq!(index, expected, "{granularity:?}");
        }
    }
}
