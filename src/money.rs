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
