//! Publishing outputs as snapshots: a run writes every table into its own folder
//! (`OUT/runs/.staging-<run id>/`), fsynced, adds its manifest, renames the folder to
//! `OUT/runs/<as_of>_<run id>/` and then points the symlink `OUT/latest` at it with one atomic
//! rename. Readers of `OUT/latest/<table>.parquet` therefore see the tables of one complete run,
//! never a mix, and a kill at any moment leaves `latest` on a complete snapshot. The newest
//! `keep_runs` snapshots are kept. `OUT/_last_run.json` records every run's outcome (`running`
//! while it holds the lock); a lock file keeps two runs apart.

use std::fs::{self, File};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use std::collections::BTreeSet;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use polars::prelude::DataFrame;
use serde::Serialize;

use super::{write_table, write_table_parts, FileMaker, SharedPages, Sink, TableMetadata};
use crate::core::manifest::{CarriedTable, Manifest};

pub const MANIFEST: &str = "_manifest.json";
pub const LAST_RUN: &str = "_last_run.json";
pub const LOCK: &str = ".pipeline.lock";
pub const LATEST: &str = "latest";
pub const RUNS: &str = "runs";
const STAGING_PREFIX: &str = ".tmp-";
const STAGING_DIR_PREFIX: &str = ".staging-";
const SCRATCH_DIR_PREFIX: &str = ".spill-";

/// Tables as Parquet files in snapshot folders under `root` (see the module's description).
pub struct SnapshotSink {
    root: PathBuf,
    lock_wait: std::time::Duration,
    keep_runs: usize,
    lock: Option<RunLock>,
    snapshot: Option<Snapshot>,
    staged: Mutex<Vec<StagedTable>>,
    shared: SharedPages,
}

impl SnapshotSink {
    /// A sink into output directory `root`: waits up to `lock_wait` for another run's lock,
    /// keeps the newest `keep_runs` snapshots.
    pub fn new(root: &Path, lock_wait: std::time::Duration, keep_runs: usize) -> SnapshotSink {
        SnapshotSink {
            root: root.to_path_buf(),
            lock_wait,
            keep_runs,
            lock: None,
            snapshot: None,
            staged: Mutex::new(Vec::new()),
            shared: SharedPages::default(),
        }
    }

    /// Where table `name` is written while staged (hidden from readers) and where it is
    /// published.
    fn staging_paths(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        let snapshot = self.snapshot.as_ref().context("the sink was not started")?;
        let temp = snapshot
            .dir
            .join(format!("{STAGING_PREFIX}{}-{name}.parquet", std::process::id()));
        Ok((temp, snapshot.dir.join(format!("{name}.parquet"))))
    }

    fn push_staged(&self, name: &str, temp: PathBuf, target: PathBuf) {
        // A panic while staging may have poisoned the lock: the entries are whole.
        self.staged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(StagedTable {
                name: name.to_string(),
                temp,
                target,
            });
    }

    fn staged(&mut self) -> Vec<StagedTable> {
        // A panic while staging may have poisoned the lock: the entries are whole.
        std::mem::take(self.staged.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

impl Sink for SnapshotSink {
    fn start(&mut self, manifest: &Manifest) -> Result<()> {
        self.lock = Some(RunLock::acquire(&self.root, self.lock_wait)?);
        clean_stale_temps(&self.root);
        write_json_atomic(&self.root, LAST_RUN, manifest)?;
        self.snapshot = Some(Snapshot::begin(&self.root, &manifest.run_id)?);
        Ok(())
    }

    fn share_columns_of(&mut self, frames: &[&DataFrame]) {
        self.shared = SharedPages::for_columns_of(frames.iter().copied());
    }

    fn stage(&self, name: &str, frame: &mut DataFrame, metadata: &TableMetadata) -> Result<usize> {
        let (temp, target) = self.staging_paths(name)?;
        let start = std::time::Instant::now();
        if let Err(error) = write_table(&temp, frame, metadata, &self.shared) {
            fs::remove_file(&temp).ok();
            return Err(error.context(format!("cannot write table `{name}`")));
        }
        tracing::debug!(
            "table `{name}`: {} rows written in {:.3} s",
            frame.height(),
            start.elapsed().as_secs_f64()
        );
        self.push_staged(name, temp, target);
        Ok(frame.height())
    }

    fn stage_parts(
        &self,
        name: &str,
        parts: &mut dyn Iterator<Item = Result<DataFrame>>,
        metadata: &TableMetadata,
    ) -> Result<usize> {
        let (temp, target) = self.staging_paths(name)?;
        let start = std::time::Instant::now();
        let rows = match write_table_parts(&temp, parts, metadata) {
            Ok(rows) => rows,
            Err(error) => {
                fs::remove_file(&temp).ok();
                return Err(error.context(format!("cannot write table `{name}`")));
            }
        };
        tracing::debug!(
            "table `{name}`: {rows} rows written in parts in {:.3} s",
            start.elapsed().as_secs_f64()
        );
        self.push_staged(name, temp, target);
        Ok(rows)
    }

    fn parts_dir(&self, name: &str) -> Result<Option<PathBuf>> {
        // Inside the snapshot's staging folder, which is published whole.
        let snapshot = self.snapshot.as_ref().context("the sink was not started")?;
        let dir = snapshot.dir.join(format!("{name}.parquet"));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
        Ok(Some(dir))
    }

    fn scratch_dir(&self, run_id: &str) -> Option<PathBuf> {
        Some(self.root.join(RUNS).join(format!("{SCRATCH_DIR_PREFIX}{run_id}")))
    }

    fn carry_over(&mut self, tables: &BTreeSet<String>, manifest: &mut Manifest) -> Result<()> {
        let snapshot = self.snapshot.as_ref().context("the sink was not started")?;
        let Some(previous) = latest_snapshot(&self.root).filter(|_| !tables.is_empty()) else {
            return Ok(());
        };
        let earlier: serde_json::Value = fs::read_to_string(previous.join(MANIFEST))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        for table in tables {
            // A file, or a folder of parts (the Spark job's per-customer tables).
            let file = previous.join(format!("{table}.parquet"));
            if !file.exists() {
                continue;
            }
            snapshot.carry_over(&file)?;
            let (from_run_id, as_of) = origin(&earlier, table);
            manifest.carried_over.push(CarriedTable {
                table: table.clone(),
                path: format!("{table}.parquet"),
                from_run_id,
                as_of,
                stage: None,
                kind: None,
                suffix: None,
            });
        }
        Ok(())
    }

    fn publish(&mut self, manifest: &mut Manifest) -> Result<()> {
        self.publish_with_files(manifest, &|_, _, _| Ok(Vec::new()))
    }

    fn publish_with_files(&mut self, manifest: &mut Manifest, make: &FileMaker) -> Result<()> {
        let snapshot = self.snapshot.take().context("the sink was not started")?;
        let staged = self.staged();
        if let Err(error) = publish(&snapshot.dir, &staged) {
            discard(&staged);
            return Err(error);
        }
        // Files made from the tables in place (the report), inside the snapshot's staging
        // folder: published with the tables, or not at all.
        let previous = latest_snapshot(&self.root);
        let manifest_value = serde_json::to_value(&*manifest)?;
        // A file that cannot be made is left out with a warning: the tables are the run's output.
        match make(&snapshot.dir, previous.as_deref(), &manifest_value) {
            Ok(files) => {
                for (name, contents) in files {
                    let path = snapshot.dir.join(&name);
                    fs::write(&path, contents).with_context(|| format!("cannot write `{}`", path.display()))?;
                }
            }
            Err(error) => {
                let warning = format!("published without it: {error:#}");
                tracing::warn!("{warning}");
                manifest.warnings.push(warning);
            }
        }
        let as_of = manifest.as_of.clone().unwrap_or_else(|| "none".into());
        manifest.snapshot = Some(snapshot.final_dir(&as_of).display().to_string());
        Snapshot::publish(snapshot, &as_of, manifest, self.keep_runs)?;
        write_json_atomic(&self.root, LAST_RUN, manifest)?;
        self.shared = SharedPages::default();
        self.lock = None;
        Ok(())
    }

    fn fail(&mut self, manifest: &Manifest) {
        discard(&self.staged());
        // The staging folder goes; `latest` and its manifest stay as they were.
        self.snapshot = None;
        self.shared = SharedPages::default();
        clean_stale_temps(&self.root);
        if let Err(error) = write_json_atomic(&self.root, LAST_RUN, manifest) {
            tracing::error!("could not write `{LAST_RUN}`: {error:#}");
        }
        self.lock = None;
    }
}

/// The run that built `table` of the previous snapshot and the as_of it was built for: its own
/// if it was carried there too, else that snapshot's.
fn origin(earlier: &serde_json::Value, table: &str) -> (Option<String>, Option<String>) {
    let text = |value: &serde_json::Value| value.as_str().map(str::to_string);
    if let Some(carried) = earlier["carried_over"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["table"] == table))
    {
        return (text(&carried["from_run_id"]), text(&carried["as_of"]));
    }
    (text(&earlier["run_id"]), text(&earlier["as_of"]))
}

/// The snapshot a run writes: `OUT/runs/.staging-<run id>/` until `publish` moves it into view.
#[derive(Debug)]
pub struct Snapshot {
    root: PathBuf,
    run_id: String,
    /// Where the run's tables are written.
    pub dir: PathBuf,
}

impl Snapshot {
    /// A fresh staging folder for `run_id` under `root` (the output directory).
    pub fn begin(root: &Path, run_id: &str) -> Result<Snapshot> {
        let runs = root.join(RUNS);
        fs::create_dir_all(&runs).with_context(|| format!("cannot create `{}`", runs.display()))?;
        let dir = runs.join(format!("{STAGING_DIR_PREFIX}{run_id}"));
        fs::create_dir(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
        Ok(Snapshot {
            root: root.to_path_buf(),
            run_id: run_id.to_string(),
            dir,
        })
    }

    /// The folder the snapshot gets when published.
    pub fn final_dir(&self, as_of: &str) -> PathBuf {
        self.root.join(RUNS).join(format!("{as_of}_{}", self.run_id))
    }

    /// Put `file` of an earlier snapshot into this one unchanged (a hard link, or a copy where
    /// links are not possible).
    pub fn carry_over(&self, file: &Path) -> Result<()> {
        let name = file.file_name().context("a table file has a name")?;
        link_or_copy(file, &self.dir.join(name))
    }

    /// Write `manifest` into the snapshot, move it to `runs/<as_of>_<run id>`, point `latest` at
    /// it, and remove all but the newest `keep_runs` snapshots (never the one `latest` names).
    pub fn publish<T: Serialize>(self, as_of: &str, manifest: &T, keep_runs: usize) -> Result<PathBuf> {
        write_json_atomic(&self.dir, MANIFEST, manifest)?;
        sync_dir(&self.dir);
        let target = self.final_dir(as_of);
        fs::rename(&self.dir, &target)
            .with_context(|| format!("cannot move `{}` to `{}`", self.dir.display(), target.display()))?;
        sync_dir(&self.root.join(RUNS));
        let name = target.file_name().expect("a snapshot folder has a name");
        if let Err(error) = point_latest(&self.root, &Path::new(RUNS).join(name)) {
            // Not in view: gone, as if never published.
            fs::remove_dir_all(&target).ok();
            return Err(error);
        }
        prune(&self.root, keep_runs.max(1), &target);
        Ok(target)
    }
}

/// The snapshot `OUT/latest` names, if any.
pub fn latest_snapshot(root: &Path) -> Option<PathBuf> {
    let latest = root.join(LATEST);
    latest.is_dir().then(|| fs::canonicalize(&latest).unwrap_or(latest))
}

/// Point `OUT/latest` at `relative` (below `root`) with one rename of a new symlink over it.
fn point_latest(root: &Path, relative: &Path) -> Result<()> {
    let latest = root.join(LATEST);
    if latest.is_dir() && !latest.is_symlink() {
        bail!(
            "`{}` is a directory, not the symlink this tool keeps there: move it away",
            latest.display()
        );
    }
    let temp = root.join(format!("{STAGING_PREFIX}{}-{LATEST}", std::process::id()));
    fs::remove_file(&temp).ok();
    #[cfg(unix)]
    std::os::unix::fs::symlink(relative, &temp)
        .with_context(|| format!("cannot create the symlink `{}`", temp.display()))?;
    #[cfg(windows)]
    std::os::windows::fs::symlink_dir(relative, &temp)
        .with_context(|| format!("cannot create the symlink `{}`", temp.display()))?;
    fs::rename(&temp, &latest).with_context(|| format!("cannot point `{}` at the new snapshot", latest.display()))?;
    sync_dir(root);
    Ok(())
}

/// Published snapshots (`runs/<as_of>_<run id>`), oldest run first (run ids sort by time).
pub fn snapshots(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(String, PathBuf)> = fs::read_dir(root.join(RUNS))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            let (_, run_id) = name.split_once('_')?;
            (!name.starts_with('.') && entry.path().is_dir()).then(|| (run_id.to_string(), entry.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, path)| path).collect()
}

/// Remove all but the newest `keep` snapshots, never `current`.
fn prune(root: &Path, keep: usize, current: &Path) {
    let all = snapshots(root);
    let excess = all.len().saturating_sub(keep);
    for old in all.into_iter().take(excess) {
        if old != current {
            if let Err(error) = fs::remove_dir_all(&old) {
                tracing::warn!("cannot remove the old snapshot `{}`: {error}", old.display());
            }
        }
    }
}

/// Holds the output directory's lock for the life of a run: an OS file lock (flock) on
/// `OUT/.pipeline.lock`, so a run that dies releases it with its process — no stale locks. The
/// file holds the pid of the run holding it and is emptied when a run ends normally; a pid found
/// there on start-up names a run that did not finish.
#[derive(Debug)]
pub struct RunLock {
    file: File,
}

impl RunLock {
    /// Take the lock, waiting up to `wait` for another run to finish, or fail naming the process
    /// that holds it.
    pub fn acquire(dir: &Path, wait: std::time::Duration) -> Result<RunLock> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create output directory `{}`", dir.display()))?;
        let path = dir.join(LOCK);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| {
                format!(
                    "cannot open lock file `{}` (is the output directory writable?)",
                    path.display()
                )
            })?;
        let deadline = std::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline {
                        let holder = fs::read_to_string(&path).unwrap_or_default();
                        bail!(
                            "output directory `{}` is locked by another run (pid {}); lock file `{}`{}",
                            dir.display(),
                            holder.trim(),
                            path.display(),
                            if wait.is_zero() {
                                String::new()
                            } else {
                                format!(" (waited {} s)", wait.as_secs())
                            }
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(fs::TryLockError::Error(error)) => {
                    return Err(error).with_context(|| format!("cannot lock `{}`", path.display()));
                }
            }
        }
        let previous = fs::read_to_string(&path).unwrap_or_default();
        if !previous.trim().is_empty() {
            tracing::warn!(
                "the previous run (pid {}) did not finish; its leftovers are cleaned up",
                previous.trim()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())
            .with_context(|| format!("cannot write lock file `{}`", path.display()))?;
        file.sync_all().ok();
        Ok(RunLock { file })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // A normal end: no pid in the file. The OS lock goes with the file handle.
        self.file.set_len(0).ok();
        self.file.sync_all().ok();
    }
}

/// A table written to a temporary file, ready to be renamed into place.
#[derive(Debug)]
pub struct StagedTable {
    pub name: String,
    pub temp: PathBuf,
    pub target: PathBuf,
}

/// `from` at `to` unchanged: a file hard-linked (copied where links are not possible), a folder
/// made anew with its files so.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        fs::create_dir_all(to).with_context(|| format!("cannot create `{}`", to.display()))?;
        for entry in fs::read_dir(from).with_context(|| format!("cannot read `{}`", from.display()))? {
            let entry = entry?;
            link_or_copy(&entry.path(), &to.join(entry.file_name()))?;
        }
        return Ok(());
    }
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).with_context(|| format!("cannot copy `{}` into the new snapshot", from.display()))?;
    }
    Ok(())
}

/// Rename staged tables into place, then fsync the directory.
pub fn publish(dir: &Path, staged: &[StagedTable]) -> Result<()> {
    for table in staged {
        if table.target.is_dir() {
            bail!(
                "cannot publish table `{}`: `{}` is a directory",
                table.name,
                table.target.display()
            );
        }
    }
    for table in staged {
        fs::rename(&table.temp, &table.target)
            .with_context(|| format!("cannot move `{}` to `{}`", table.temp.display(), table.target.display()))?;
    }
    sync_dir(dir);
    Ok(())
}

/// Remove staged files of a run that will not publish.
pub fn discard(staged: &[StagedTable]) {
    for table in staged {
        fs::remove_file(&table.temp).ok();
    }
}

/// Remove what a killed run left behind (only with the lock held): temporary files in the
/// output directory, staging folders of snapshots never published and spill folders.
pub fn clean_stale_temps(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(STAGING_PREFIX) || name.starts_with(&format!("{LOCK}.")) {
                fs::remove_file(entry.path()).ok();
            }
        }
    }
    if let Ok(entries) = fs::read_dir(dir.join(RUNS)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(STAGING_DIR_PREFIX) || name.starts_with(SCRATCH_DIR_PREFIX) {
                fs::remove_dir_all(entry.path()).ok();
            }
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        handle.sync_all().ok();
    }
}

/// Write a JSON document atomically (temp file, fsync, rename).
pub fn write_json_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    let target = dir.join(name);
    let temp = dir.join(format!("{STAGING_PREFIX}{}-{name}", std::process::id()));
    let text = serde_json::to_string_pretty(value).context("serializing the manifest")?;
    let result = (|| -> Result<()> {
        let mut file = File::create(&temp).with_context(|| format!("cannot create `{}`", temp.display()))?;
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&temp, &target)
            .with_context(|| format!("cannot move `{}` to `{}`", temp.display(), target.display()))?;
        Ok(())
    })();
    if result.is_err() {
        fs::remove_file(&temp).ok();
    }
    sync_dir(dir);
    result
}
