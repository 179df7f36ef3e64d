//! The record of a run: a snapshot's `_manifest.json` and `OUT/_last_run.json`.

use serde::Serialize;

use crate::core::input::InputStats;

#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub kind: String,
    pub level: usize,
    pub duration_seconds: f64,
    pub tables: Vec<TableReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: String,
    /// The file, relative to the snapshot folder.
    pub path: String,
    pub rows: usize,
}

/// A table a `--select` run did not rebuild, carried over unchanged from the previous snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct CarriedTable {
    pub table: String,
    /// The file, relative to the snapshot folder.
    pub path: String,
    /// The run that built it, and the as_of it was built for.
    pub from_run_id: Option<String>,
    pub as_of: Option<String>,
    /// The stage that writes it, the stage's kind and the table's suffix in the kind's tables
    /// (what the report finds tables by).
    pub stage: Option<String>,
    pub kind: Option<String>,
    pub suffix: Option<String>,
}

/// How a bounded-memory run went (`--shards`, `--memory-limit`).
#[derive(Debug, Clone, Serialize)]
pub struct ShardedRun {
    pub shards: usize,
    pub sweeps: usize,
    pub spill_bytes: u64,
}

/// A snapshot's `_manifest.json`, and `OUT/_last_run.json` for every run.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// `running` from the moment a run holds the lock, then `succeeded` or `failed`. A run that
    /// was killed leaves `running` in `_last_run.json`: never `succeeded`.
    pub status: String,
    /// This run's id (UTC start time and process id): its snapshot is `runs/<as_of>_<run_id>`.
    pub run_id: String,
    /// Process id of the run that wrote this manifest.
    pub pid: u32,
    pub tool: String,
    pub version: String,
    pub pipeline: String,
    /// Absolute paths, as every path in the manifest.
    pub config_path: String,
    pub output_dir: String,
    /// The snapshot folder this run published (absolute; `None` until published).
    pub snapshot: Option<String>,
    pub config_hash: String,
    pub as_of: Option<String>,
    pub timezone: String,
    pub selected_stages: Vec<String>,
    pub inputs: Vec<InputStats>,
    pub prepare_seconds: f64,
    /// A bounded-memory run's customer shards and the bytes it spilled (input and per-customer
    /// rows); absent for a run in one piece.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardedRun>,
    pub stages: Vec<StageReport>,
    /// Tables of the previous snapshot a `--select` run carried over without rebuilding them.
    pub carried_over: Vec<CarriedTable>,
    /// Every warning the run logged (stale data, models published with `on_model_failure =
    /// "warn"`, …).
    pub warnings: Vec<String>,
    pub started_at: String,
    pub finished_at: String,
    pub duration_seconds: f64,
    pub error: Option<String>,
}
