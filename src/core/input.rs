//! What a source hands the domain: its rows reduced to orders, and the accounting of every line
//! it read (for the manifest, and for the error when too many were rejected).

use std::collections::BTreeMap;

use chrono::NaiveDate;
use polars::prelude::{DataFrame, Series};
use serde::Serialize;

/// What a source holds (`kind` under `[sources.NAME]`): it decides how the source is read and
/// which stage kinds can take it as input. Adding one: docs/architecture.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceKind {
    /// Order lines (the default).
    #[default]
    Orders,
    /// Survey answers: customer_id, responded_at, a score 0–10.
    Survey,
    /// Marketing spend: date, channel, amount.
    Spend,
}

impl SourceKind {
    pub const ALL: &'static [SourceKind] = &[SourceKind::Orders, SourceKind::Survey, SourceKind::Spend];

    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Orders => "orders",
            SourceKind::Survey => "survey",
            SourceKind::Spend => "spend",
        }
    }

    pub fn from_name(name: &str) -> Option<SourceKind> {
        SourceKind::ALL.iter().copied().find(|kind| kind.name() == name)
    }
}

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

/// The answers of a survey source up to as_of: `customer_id` (Int64 or text), `responded_ts`
/// (Int64 µs, for ordering), `score` (Int32, 0–10), `responded_on` (local date).
#[derive(Debug, Clone)]
pub struct SurveyAnswers {
    pub answers: DataFrame,
    pub stats: InputStats,
}

/// The spend of a spend source up to as_of: `spent_on` (local date), `channel` (text, null when
/// unattributed), `amount_micros` (Int64 micro-units; negative for a credit).
#[derive(Debug, Clone)]
pub struct SpendRows {
    pub spend: DataFrame,
    pub stats: InputStats,
}

/// The input was read but is not usable; carries the accounting so the failure manifest has it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DataRejected {
    pub message: String,
    pub stats: InputStats,
}

/// Orders of one source: one row per valid order with columns
/// `id, date, ordered_ts, revenue[, channel][, cost]` (money in exact integer micro-units, see `money`;
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
