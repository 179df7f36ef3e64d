//! Money is summed exactly: line amounts become integer micro-units (1e-6 of the currency unit)
//! when read, every sum is an integer sum, and values turn back into floating currency only in
//! output columns. Sums are therefore the same whatever order threads add them in, and a
//! re-run shows no diff. Amounts with more than six decimals are rounded half away from zero.

use polars::prelude::*;

pub const MICROS_PER_UNIT: f64 = 1_000_000.0;

/// One amount (finite, within ±9e12: the scan's usable lines) as Int64 micro-units, rounded
/// half away from zero: scaled, shifted by ±0.5, truncated (cheaper per line than a general
/// rounding kernel). The fold calls it per line.
pub fn micros_of(amount: f64) -> i64 {
    let scaled = amount * MICROS_PER_UNIT;
    (if scaled >= 0.0 { scaled + 0.5 } else { scaled - 0.5 }) as i64
}

/// Marks an amount that is not a usable number (NaN, beyond ±9e12 units, unparsable text)
/// in a column of micro-units: no usable amount is this far from zero.
pub const INVALID_MICROS: i64 = i64::MIN;

/// The largest usable amount in micro-units (9e12 units): beyond it, sums of a few lines
/// could leave an i64.
const MAX_MICROS: i128 = 9_000_000_000_000_000_000;

/// A decimal's unscaled value with `scale` digits after the point, as micro-units rounded half
/// away from zero; `INVALID_MICROS` beyond ±9e12 units.
pub fn decimal_micros(unscaled: i128, scale: usize) -> i64 {
    let micros = if scale <= 6 {
        10i128
            .checked_pow((6 - scale) as u32)
            .and_then(|factor| unscaled.checked_mul(factor))
    } else {
        match 10i128.checked_pow((scale - 6) as u32) {
            Some(divisor) => {
                let (quotient, remainder) = (unscaled / divisor, unscaled % divisor);
                Some(if remainder.unsigned_abs() * 2 >= divisor.unsigned_abs() {
                    quotient + unscaled.signum()
                } else {
                    quotient
                })
            }
            // More than 44 decimals: every i128 value is below half a micro-unit.
            None => Some(0),
        }
    };
    match micros {
        Some(micros) if (-MAX_MICROS..=MAX_MICROS).contains(&micros) => micros as i64,
        _ => INVALID_MICROS,
    }
}

/// A decimal written as text (`-12.50`, `+3`, `.5`, `1.0E-4`; surrounding blanks ignored) as
/// micro-units: plain decimals exactly (rounded half away from zero past six decimals), forms
/// with an exponent through a double; `INVALID_MICROS` for anything else or beyond ±9e12 units.
pub fn text_micros(text: &str) -> i64 {
    let text = text.trim();
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let plain = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !plain(whole) || !plain(fraction) || whole.len() > 30 {
        return match text.parse::<f64>() {
            Ok(value) if (-9.0e12..=9.0e12).contains(&value) => micros_of(value),
            _ => INVALID_MICROS,
        };
    }
    let mut unscaled: i128 = 0;
    for b in whole.bytes().chain(fraction.bytes().take(7)) {
        unscaled = unscaled * 10 + i128::from(b - b'0');
    }
    // Half away from zero is decided by the seventh decimal alone: digits past it never
    // carry a remainder below half a micro-unit to half or above.
    let mut micros = decimal_micros(unscaled, fraction.len().min(7));
    if negative && micros != INVALID_MICROS {
        micros = -micros;
    }
    micros
}

/// A batch's `amount` column as Int64 micro-units when it is a decimal or text (nulls stay
/// null, unusable values become `INVALID_MICROS`); `None` for numeric columns, which the fold
/// reads as Float64 units.
pub fn micros_column(amount: &Column) -> PolarsResult<Option<Column>> {
    let micros: Int64Chunked = match amount.dtype() {
        DataType::Decimal(_, scale) => {
            let scale = *scale;
            amount
                .decimal()?
                .physical()
                .apply_nonnull_values_generic(DataType::Int64, |unscaled: i128| decimal_micros(unscaled, scale))
        }
        DataType::String => amount.str()?.apply_nonnull_values_generic(DataType::Int64, text_micros),
        _ => return Ok(None),
    };
    Ok(Some(micros.with_name(amount.name().clone()).into_column()))
}

/// Any money column (numbers, decimals, CSV text) as Int64 micro-units: nulls stay null, a value
/// that is not a usable number (NaN, infinite, beyond ±9e12 units, unparsable) is
/// `INVALID_MICROS`. For columns read whole; the order fold reads Float64 amounts per line.
pub fn micros_of_column(money: &Column) -> PolarsResult<Int64Chunked> {
    if let Some(micros) = micros_column(money)? {
        return Ok(micros.i64()?.clone());
    }
    let units = money.cast(&DataType::Float64)?;
    Ok(units
        .f64()?
        .apply_nonnull_values_generic(DataType::Int64, |units: f64| {
            if (-9.0e12..=9.0e12).contains(&units) {
                micros_of(units)
            } else {
                INVALID_MICROS
            }
        }))
}

/// `micros_of` as a polars expression over a numeric column: the reference the tests hold
/// `micros_of` to, bit for bit.
#[cfg(test)]
pub fn to_micros(amount: Expr) -> Expr {
    let scaled = amount.cast(DataType::Float64) * lit(MICROS_PER_UNIT);
    when(scaled.clone().gt_eq(lit(0.0)))
        .then(scaled.clone() + lit(0.5))
        .otherwise(scaled - lit(0.5))
        .cast(DataType::Int64)
}

/// Int64 micro-units back to currency as Float64: the nearest double to the exact decimal
/// (polars divides by a scalar through its reciprocal, so the quotient is rounded once more).
pub fn from_micros(micros: Expr) -> Expr {
    (micros.cast(DataType::Float64) / lit(MICROS_PER_UNIT)).round(6, RoundMode::HalfAwayFromZero)
}

/// `from_micros` for one value, computed exactly as polars computes the expression (a multiply
/// by the reciprocal, then rounding to six decimals half away from zero), for tables built in
/// Rust.
pub fn micros_value(micros: i64) -> f64 {
    let value = micros as f64 * (1.0 / MICROS_PER_UNIT);
    let rounded = (value * MICROS_PER_UNIT).round() / MICROS_PER_UNIT;
    if rounded.is_finite() {
        rounded
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_value_is_the_expression_bit_for_bit() {
        let mut state = 11u64;
        let mut micros: Vec<i64> = vec![0, 1, -1, 999_999, 1_000_001, i64::MAX, i64::MIN, 19_990_000];
        for _ in 0..100_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let shift = (state >> 58) as u32; // magnitudes from units to ~1e18
            micros.push(((state >> 1) as i64) >> shift.min(62));
        }
        let frame = df!("micros" => micros.clone()).unwrap();
        let expected: Vec<u64> = frame
            .lazy()
            .select([from_micros(col("micros"))])
            .collect()
            .unwrap()
            .column("micros")
            .unwrap()
            .f64()
            .unwrap()
            .into_no_null_iter()
            .map(f64::to_bits)
            .collect();
        let ours: Vec<u64> = micros.iter().map(|&m| micros_value(m).to_bits()).collect();
        assert_eq!(ours, expected);
    }

    #[test]
    fn micros_round_half_away_from_zero_and_back() {
        let frame = df!("amount" => [19.99, -5.0, 0.0000005, -0.0000005, 1234567.891234, 0.1 + 0.2]).unwrap();
        let out = frame
            .lazy()
            .select([to_micros(col("amount")).alias("micros")])
            .with_column(from_micros(col("micros")).alias("back"))
            .collect()
            .unwrap();
        let micros: Vec<i64> = out
            .column("micros")
            .unwrap()
            .i64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(micros, [19_990_000, -5_000_000, 1, -1, 1_234_567_891_234, 300_000]);
        let back: Vec<f64> = out.column("back").unwrap().f64().unwrap().into_no_null_iter().collect();
        assert_eq!(back, [19.99, -5.0, 0.000001, -0.000001, 1234567.891234, 0.3]);
    }

    /// `micros_of` (the fold, per line) is the `to_micros` expression on every usable amount:
    /// random magnitudes up to the ±9e12 limit, halves, negative zero.
    #[test]
    fn micros_of_is_the_expression() {
        let mut state = 7u64;
        let mut amounts: Vec<f64> = vec![
            0.0,
            -0.0,
            0.0000005,
            -0.0000005,
            2.5e-7,
            9.0e12,
            -9.0e12,
            19.99,
            0.1 + 0.2,
        ];
        for _ in 0..100_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let magnitude = 10f64.powi((state >> 59) as i32 % 13 - 6);
            let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
            amounts.push(if state & 1 == 0 {
                unit * magnitude
            } else {
                -unit * magnitude
            });
        }
        let frame = df!("amount" => amounts.clone()).unwrap();
        let expected: Vec<i64> = frame
            .lazy()
            .select([to_micros(col("amount"))])
            .collect()
            .unwrap()
            .column("amount")
            .unwrap()
            .i64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        let ours: Vec<i64> = amounts.iter().map(|&a| micros_of(a)).collect();
        assert_eq!(ours, expected);
    }
}
