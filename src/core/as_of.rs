//! The date a run describes (`as_of`) and date options that follow it.

use std::str::FromStr;

use chrono::NaiveDate;
use serde::Deserialize;

/// When the analysis is "as of".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    Date(NaiveDate),
    Today,
    Yesterday,
    /// The local date of the latest order in the input (the default).
    LastOrder,
}

impl FromStr for AsOf {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "today" => Ok(AsOf::Today),
            "yesterday" => Ok(AsOf::Yesterday),
            "last_order" => Ok(AsOf::LastOrder),
            _ => NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(AsOf::Date)
                .map_err(|_| format!("`{text}` is not a date (YYYY-MM-DD), `today`, `yesterday` or `last_order`")),
        }
    }
}

/// A date option that may follow as_of: a date (`"2024-06-30"`), or a distance before as_of
/// (`"as_of - 26w"`: a count of days `d`, weeks `w`, calendar months `m` or years `y`), so
/// rolling nightly runs and `--as-of` backfills keep the same window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelativeDate {
    Fixed(NaiveDate),
    BeforeAsOf { count: u32, unit: char },
}

impl RelativeDate {
    /// The date for a run as of `as_of`.
    pub fn resolve(self, as_of: NaiveDate) -> NaiveDate {
        match self {
            RelativeDate::Fixed(date) => date,
            RelativeDate::BeforeAsOf { count, unit } => match unit {
                'd' => as_of - chrono::Duration::days(i64::from(count)),
                'w' => as_of - chrono::Duration::weeks(i64::from(count)),
                'm' => as_of - chrono::Months::new(count),
                _ => as_of - chrono::Months::new(count * 12),
            },
        }
    }
}

impl std::str::FromStr for RelativeDate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if let Some(distance) = squeezed.strip_prefix("as_of-") {
            let unit = distance.chars().last().unwrap_or(' ');
            let count = distance[..distance.len().saturating_sub(1)].parse::<u32>().ok();
            return match (count, unit) {
                (Some(count), 'd' | 'w' | 'm' | 'y') if count > 0 && count <= 100_000 => {
                    Ok(RelativeDate::BeforeAsOf { count, unit })
                }
                _ => Err(format!(
                    "`{text}` is not a distance before as_of: write e.g. `as_of - 182d`, `as_of - 26w`, `as_of - 6m` or `as_of - 1y`"
                )),
            };
        }
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map(RelativeDate::Fixed)
            .map_err(|_| format!("`{text}` is not a date (YYYY-MM-DD) or a distance before as_of (`as_of - 26w`)"))
    }
}

impl<'de> Deserialize<'de> for RelativeDate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for RelativeDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelativeDate::Fixed(date) => write!(f, "{date}"),
            RelativeDate::BeforeAsOf { count, unit } => write!(f, "as_of - {count}{unit}"),
        }
    }
}
