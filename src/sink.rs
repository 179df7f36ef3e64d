//! Publishing outputs: Parquet tables written to temporary files in the output directory,
//! fsynced, then renamed into place; the run manifest last; a lock file keeps two runs apart.
//!
//! A run stages every table first and publishes only when all of them are written, so a failed
//! run publishes nothing. Each rename is atomic, so a reader (or a kill) sees for every table
//! either the complete previous file or the complete new one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use serde::Serialize;

pub const MANIFEST: &str = "_manifest.json";
pub const LOCK: &str = ".pipeline.lock";
const STAGING_PREFIX: &str = ".tmp-";

/// Holds the output directory's lock for the life of a run.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    /// Take the lock, waiting up to `wait` for another run to finish, or fail naming the process
    /// that holds it. A lock whose process is gone (a killed run) is stale and taken over.
    ///
    /// The lock file is created complete (pid written to a private file, then hard-linked to the
    /// lock name, which fails if the lock exists), so nobody ever reads a half-written lock.
    pub fn acquire(dir: &Path, wait: std::time::Duration) -> Result<RunLock> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create output directory `{}`", dir.display()))?;
        let path = dir.join(LOCK);
        let mine = dir.join(format!("{LOCK}.{}", std::process::id()));
        fs::write(&mine, format!("{}\n", std::process::id())).with_context(|| {
            format!(
                "cannot write lock file `{}` (is the output directory writable?)",
                mine.display()
            )
        })?;
        let deadline = std::time::Instant::now() + wait;
        let result = loop {
            match fs::hard_link(&mine, &path) {
                Ok(()) => break Ok(RunLock { path }),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&path).unwrap_or_default();
                    match holder.trim().parse::<u32>() {
                        Ok(pid) if process_alive(pid) => {
                            if std::time::Instant::now() >= deadline {
                                break Err(anyhow::anyhow!(
                                    "output directory `{}` is locked by another run (pid {pid}); lock file `{}`{}",
                                    dir.display(),
                                    path.display(),
                                    if wait.is_zero() {
                                        String::new()
                                    } else {
                                        format!(" (waited {} s)", wait.as_secs())
                                    }
                                ));
                            }
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                        holder_pid => {
                            tracing::warn!(
                                "removing stale lock `{}` (process {:?} is gone)",
                                path.display(),
                                holder_pid.ok()
                            );
                            fs::remove_file(&path).ok();
                        }
                    }
                }
                Err(error) => {
                    break Err(error).with_context(|| format!("cannot create lock file `{}`", path.display()));
                }
            }
        };
        fs::remove_file(&mine).ok();
        result
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        fs::remove_file(&self.path).ok();
    }
}

fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A table written to a temporary file, ready to be renamed into place.
#[derive(Debug)]
pub struct StagedTable {
    pub name: String,
    pub temp: PathBuf,
    pub target: PathBuf,
    pub rows: usize,
}

/// Write one table to a temporary file in `dir` (zstd Parquet) and fsync it.
pub fn stage_table(dir: &Path, name: &str, frame: &mut DataFrame) -> Result<StagedTable> {
    let target = dir.join(format!("{name}.parquet"));
    let temp = dir.join(format!("{STAGING_PREFIX}{}-{name}.parquet", std::process::id()));
    let result = (|| -> Result<()> {
        let file = File::create(&temp).with_context(|| format!("cannot create `{}`", temp.display()))?;
        ParquetWriter::new(&file)
            // zstd level 1: nearly level 3's size at a fraction of the time on wide tables.
            .with_compression(ParquetCompression::Zstd(Some(
                polars_utils::compression::ZstdLevel::try_new(1)?,
            )))
            .with_statistics(StatisticsOptions::default())
            .finish(frame)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot write table `{name}` to `{}`", temp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot fsync `{}`", temp.display()))?;
        Ok(())
    })();
    if let Err(error) = result {
        fs::remove_file(&temp).ok();
        return Err(error);
    }
    Ok(StagedTable {
        name: name.to_string(),
        temp,
        target,
        rows: frame.height(),
    })
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

/// Remove temporary files a killed run left behind (only with the lock held): staged tables, and
/// the private lock files of processes that are gone.
pub fn clean_stale_temps(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let dead_lock_file = name
                .strip_prefix(&format!("{LOCK}."))
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !process_alive(pid));
            if name.starts_with(STAGING_PREFIX) || dead_lock_file {
                fs::remove_file(entry.path()).ok();
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
