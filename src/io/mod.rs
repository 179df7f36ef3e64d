//! Where data comes from and goes to: sources by format (Parquet, CSV, directories) and the sink
//! that publishes tables as snapshots. Imports `core`, `tuning` and telemetry; `core` never
//! imports this.

pub mod sink;
pub mod source;
