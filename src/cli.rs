//! Command line: `run`, `validate`, `plan`, `generate-sample`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::core::config::AsOf;

#[derive(Debug, Parser)]
#[command(
    name = "pipeline",
    version,
    about = "Customer-retention tables (cohorts, RFM, repeat, lifecycle, CLV) from Parquet order histories",
    after_help = "Examples:
  pipeline run pipelines/cohorts.toml
  pipeline run pipelines/cohorts.toml --select cohorts --as-of 2024-12-31 --output-dir /tmp/out
  pipeline validate pipelines/cohorts.toml
  pipeline plan pipelines/cohorts.toml --format mermaid
  pipeline generate-sample --lines 10000000 --out bench/data/lines.parquet

Exit codes: 0 success, 1 run or data failure, 2 usage or config error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log level: error, warn, info, debug (also RUST_LOG).
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
    /// Log lines as text (colour only on a terminal, never with NO_COLOR) or as one JSON
    /// object per line with level, message and run id.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: crate::logging::LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the pipeline and publish its tables.
    Run(RunArgs),
    /// Check config, DAG, input files and column types without reading data.
    Validate {
        /// The pipeline's TOML file.
        config: PathBuf,
    },
    /// Print the stages in execution order with their inputs and output tables.
    Plan {
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: PlanFormat,
    },
    /// Print the catalog of the tables a config writes: columns, types and descriptions with
    /// units (the same text the Parquet files carry as field metadata).
    Docs {
        config: PathBuf,
        #[arg(long, value_enum, default_value = "markdown")]
        format: DocsFormat,
    },
    /// Write synthetic order lines (deterministic by seed) for demos and benchmarks.
    GenerateSample(GenerateArgs),
    /// Write `report.html`, one self-contained page of charts of a published snapshot.
    Report {
        /// An output folder (its `latest` snapshot) or a snapshot folder.
        out: PathBuf,
        /// Write the page here instead of `report.html` in the snapshot.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DocsFormat {
    Markdown,
    Json,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  pipeline run pipelines/cohorts.toml
  pipeline run pipelines/cohorts.toml --select cohorts --threads 1")]
pub struct RunArgs {
    /// The pipeline's TOML file.
    pub config: PathBuf,
    /// Run only these stages and the stages they need (repeatable).
    #[arg(long, value_name = "STAGE")]
    pub select: Vec<String>,
    /// Analysis date: YYYY-MM-DD, today, yesterday or last_order (overrides the config).
    #[arg(long, value_name = "DATE", value_parser = parse_as_of)]
    pub as_of: Option<AsOf>,
    /// Write tables here instead of the config's output_dir.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Worker threads for stages and for polars (default: all cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Run independent stages one after another (for benchmarking the parallel runner).
    #[arg(long)]
    pub sequential: bool,
    /// Bound memory: spill the input to disk in N customer shards (beside the outputs, removed
    /// after the run) and compute the shards one after another. 1: one piece.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub shards: Option<u16>,
    /// Bound memory to about SIZE (e.g. 12GiB, 800MiB): picks --shards from the input's size
    /// (overrides `memory_limit` under `[pipeline]`).
    #[arg(long, value_name = "SIZE", value_parser = crate::core::config::parse_size, conflicts_with = "shards")]
    pub memory_limit: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PlanFormat {
    Text,
    Mermaid,
    Dot,
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Stop after about this many order lines (whole customers are kept).
    #[arg(long, default_value_t = 50_000)]
    pub lines: u64,
    /// Output Parquet file.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// First day of the simulated history.
    #[arg(long, default_value = "2022-01-01")]
    pub start: chrono::NaiveDate,
    /// Length of the history in days.
    #[arg(long, default_value_t = 1095)]
    pub days: u32,
    /// Also write survey answers (customer_id, responded_at, score) to this Parquet file.
    #[arg(long, value_name = "FILE")]
    pub survey: Option<PathBuf>,
    /// Also write daily marketing spend (date, channel, amount) to this Parquet file.
    #[arg(long, value_name = "FILE")]
    pub spend: Option<PathBuf>,
}

fn parse_as_of(text: &str) -> Result<AsOf, String> {
    text.parse()
}
