//! Money is summed exactly: line amounts become integer micro-units (1e-6 of the currency unit)
//! when read, every sum is an integer sum, and values turn back into floating currency only in
//! output columns. Sums are therefore the same whatever order threads add them in, and a
//! re-run shows no diff. Amounts with more than six decimals are rounded half away from zero.

use polars::prelude::*;

pub const MICROS_PER_UNIT: f64 = 1_000_000.0;

/// A numeric amount column as Int64 micro-units.
pub fn to_micros(amount: Expr) -> Expr {
    (amount.cast(DataType::Float64) * lit(MICROS_PER_UNIT))
        .round(0, RoundMode::HalfAwayFromZero)
        .cast(DataType::Int64)
}

/// Int64 micro-units back to currency as Float64: the nearest double to the exact decimal
/// (polars divides by a scalar through its reciprocal, so the quotient is rounded once more).
pub fn from_micros(micros: Expr) -> Expr {
    (micros.cast(DataType::Float64) / lit(MICROS_PER_UNIT)).round(6, RoundMode::HalfAwayFromZero)
}
