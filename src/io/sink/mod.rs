//! Where a run's tables go. A `Sink` is told the run started, is given every table to stage
//! where no reader sees it, and then either publishes them all at once with the manifest or
//! drops them: readers never see a half-written or mixed set. `SnapshotSink` is the one the
//! tool uses (Parquet files in a snapshot folder, `OUT/latest` swapped atomically);
//! `MemorySink` keeps tables in memory, for tests of the runner and as the model for a new
//! target (object storage, a database): see docs/architecture.md.

mod memory;
mod parquet;
mod snapshot;

use std::collections::BTreeSet;

use anyhow::Result;
use polars::prelude::DataFrame;

use crate::core::manifest::Manifest;

pub use memory::MemorySink;
pub use parquet::{write_table, write_table_parts, SharedPages};
pub use snapshot::{latest_snapshot, snapshots, SnapshotSink, LAST_RUN, LATEST, LOCK, MANIFEST, RUNS};

/// What a table says about itself where it is written: the stage kind and table suffix whose
/// catalog entries (`catalog::describe`) describe its columns, and run-level key-value pairs
/// (as_of, timezone, run id, …).
#[derive(Debug, Clone)]
pub struct TableMetadata {
    pub kind: &'static str,
    pub suffix: &'static str,
    pub key_values: Vec<(String, String)>,
}

/// Makes files from a snapshot folder of tables, the previous snapshot and the manifest.
pub type FileMaker =
    dyn Fn(&std::path::Path, Option<&std::path::Path>, &serde_json::Value) -> Result<Vec<(String, String)>>;

/// A target for one run's tables. The runner calls `start` once, `stage` for each table (from
/// several threads), then `carry_over` and `publish` when every stage succeeded, or `fail`.
pub trait Sink: Sync {
    /// Take the target for this run (no other run writes it until this one ends) and record
    /// the run as started.
    fn start(&mut self, manifest: &Manifest) -> Result<()>;

    /// `frames` live for the whole run and several tables hold their columns alike (the shared
    /// tables: stages pass `customer_id` and other facts through without copying them): a sink
    /// may write such a column's data once and reuse it.
    fn share_columns_of(&mut self, _frames: &[&DataFrame]) {}

    /// Write table `name` where readers cannot see it yet; returns its rows.
    fn stage(&self, name: &str, frame: &mut DataFrame, metadata: &TableMetadata) -> Result<usize>;

    /// Write table `name` from its parts, in order (a sharded run's per-customer rows, shard by
    /// shard), where readers cannot see it yet; returns its rows. By default the parts are put
    /// together and staged as one frame; a sink that can should write them one by one.
    fn stage_parts(
        &self,
        name: &str,
        parts: &mut dyn Iterator<Item = Result<DataFrame>>,
        metadata: &TableMetadata,
    ) -> Result<usize> {
        let all = crate::core::columns::stack_frames(parts)?;
        let mut all = all.ok_or_else(|| anyhow::anyhow!("table `{name}` has no part"))?;
        self.stage(name, &mut all, metadata)
    }

    /// `publish`, with files made from the staged tables just before they become visible (the
    /// report), published with them: `make(snapshot folder, the previous snapshot, manifest)`
    /// gives each file's name and contents. When `make` fails, the tables are published without
    /// the files and the manifest warns. A sink without folders publishes without them.
    fn publish_with_files(&mut self, manifest: &mut Manifest, make: &FileMaker) -> Result<()> {
        let _ = make;
        self.publish(manifest)
    }

    /// A folder where other processes write table `name` as parts (`part-00000.parquet`, …, in
    /// order: the Spark job's executors), created empty where readers cannot see it yet; it is
    /// published with the run's other tables. `None`: this sink takes tables from this
    /// process only (`stage`, `stage_parts`).
    fn parts_dir(&self, _name: &str) -> Result<Option<std::path::PathBuf>> {
        Ok(None)
    }

    /// A folder for this run's temporary files (a sharded run's spill files), beside the
    /// outputs; the run removes it, and `start` removes those a killed run left. `None`: a
    /// folder in the system's temporary directory.
    fn scratch_dir(&self, _run_id: &str) -> Option<std::path::PathBuf> {
        None
    }

    /// Keep `tables` (names) of the last publication that this run did not rebuild (a
    /// `--select` run), recording each in `manifest.carried_over`.
    fn carry_over(&mut self, tables: &BTreeSet<String>, manifest: &mut Manifest) -> Result<()>;

    /// Make every staged and carried table visible together, with `manifest` (which gets the
    /// publication's location).
    fn publish(&mut self, manifest: &mut Manifest) -> Result<()>;

    /// Drop what was staged and record the failed run; the last publication stays as it was.
    fn fail(&mut self, manifest: &Manifest);
}
