//! A published snapshot as the report reads it: its manifest, and each stage's tables found by
//! the stage's kind (table names are the config's to choose).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::*;

/// One snapshot folder's tables, by stage kind.
pub struct Snapshot {
    pub dir: PathBuf,
    pub manifest: serde_json::Value,
    /// Per stage: its kind and its tables by suffix (`""` for a kind's only table).
    stages: Vec<(String, BTreeMap<&'static str, String>)>,
}

impl Snapshot {
    /// The snapshot at `dir` (a folder holding `_manifest.json`).
    pub fn open(dir: &Path) -> Result<Snapshot> {
        let path = dir.join("_manifest.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read `{}`: is `{}` a published snapshot?",
                path.display(),
                dir.display()
            )
        })?;
        let manifest: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("`{}` is not JSON", path.display()))?;
        Ok(Snapshot::with_manifest(dir, manifest))
    }

    /// The tables at `dir` as `manifest` lists them (a snapshot about to be published).
    pub fn with_manifest(dir: &Path, manifest: serde_json::Value) -> Snapshot {
        let stages = stage_tables(&manifest);
        Snapshot {
            dir: dir.to_path_buf(),
            manifest,
            stages,
        }
    }

    /// The run's as_of date, as the manifest gives it.
    pub fn as_of(&self) -> String {
        self.manifest["as_of"].as_str().unwrap_or("-").to_string()
    }

    /// The orders' currency, when the config maps one.
    pub fn currency(&self) -> Option<String> {
        self.manifest["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|input| input["currency"].as_str().map(str::to_string))
    }

    /// Every table of the stages of `kind` with a single table, by name.
    pub fn tables(&self, kind: &str) -> Result<Vec<(String, DataFrame)>> {
        let mut found = Vec::new();
        for (_, tables) in self.stages.iter().filter(|(stage_kind, _)| stage_kind == kind) {
            if let Some(name) = tables.get("") {
                let path = self.dir.join(format!("{name}.parquet"));
                if path.exists() {
                    found.push((name.clone(), read_table(&path, &|_| true)?));
                }
            }
        }
        Ok(found)
    }

    /// The first stage of `kind` with table `suffix`: its name and its rows (a file, or a folder
    /// of parts read in name order). `None` when no stage of that kind wrote it.
    pub fn table(&self, kind: &str, suffix: &str) -> Result<Option<(String, DataFrame)>> {
        self.table_with(kind, suffix, &|_| true)
    }

    /// `table` with only the columns `keep` picks (per-customer tables are large).
    pub fn table_with(
        &self,
        kind: &str,
        suffix: &str,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<Option<(String, DataFrame)>> {
        let Some(name) = self
            .stages
            .iter()
            .filter(|(stage_kind, _)| stage_kind == kind)
            .find_map(|(_, tables)| tables.get(suffix))
        else {
            return Ok(None);
        };
        let path = self.dir.join(format!("{name}.parquet"));
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some((name.clone(), read_table(&path, keep)?)))
    }
}

/// Every stage's kind and tables by suffix: the manifest's stages, then its carried-over tables.
fn stage_tables(manifest: &serde_json::Value) -> Vec<(String, BTreeMap<&'static str, String>)> {
    let suffixes = |kind: &str| {
        crate::core::stages::KINDS
            .iter()
            .find(|k| k.name == kind)
            .map(|k| k.tables)
            .unwrap_or_default()
    };
    let mut stages = Vec::new();
    for stage in manifest["stages"].as_array().into_iter().flatten() {
        let kind = stage["kind"].as_str().unwrap_or_default().to_string();
        let tables = stage["tables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|table| table["table"].as_str().map(str::to_string));
        stages.push((kind.clone(), suffixes(&kind).iter().copied().zip(tables).collect()));
    }
    // A `--select` run's carried-over tables: by the stage, kind and suffix the manifest gives;
    // a manifest from before those were recorded, by the config it names.
    let mut carried: BTreeMap<String, (String, BTreeMap<&'static str, String>)> = BTreeMap::new();
    let mut unknown = false;
    for table in manifest["carried_over"].as_array().into_iter().flatten() {
        let text = |key: &str| table[key].as_str().map(str::to_string);
        let (Some(name), Some(stage), Some(kind), Some(suffix)) =
            (text("table"), text("stage"), text("kind"), text("suffix"))
        else {
            unknown = true;
            continue;
        };
        let Some(&suffix) = suffixes(&kind).iter().find(|known| **known == suffix) else {
            continue;
        };
        carried
            .entry(stage)
            .or_insert_with(|| (kind, BTreeMap::new()))
            .1
            .insert(suffix, name);
    }
    stages.extend(carried.into_values());
    let config = manifest["config_path"].as_str().map(PathBuf::from);
    if let (true, Some(Ok(plan))) = (unknown, config.map(|path| crate::load_plan(&path))) {
        for stage in &plan.config.stages {
            let kind = stage.kind.name.to_string();
            let tables = stage.tables.iter().cloned();
            stages.push((kind.clone(), suffixes(&kind).iter().copied().zip(tables).collect()));
        }
    }
    stages
}

/// A table's rows, the columns `keep` picks: a Parquet file, or a folder of parts (the Spark
/// job's) one under the other.
pub fn read_table(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<DataFrame> {
    let read = |file: &Path| -> Result<DataFrame> {
        let open = || std::fs::File::open(file).with_context(|| format!("cannot open `{}`", file.display()));
        let schema = ParquetReader::new(open()?)
            .schema()
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot read `{}`", file.display()))?;
        let columns: Vec<String> = schema
            .iter_names()
            .map(|name| name.to_string())
            .filter(|name| keep(name))
            .collect();
        ParquetReader::new(open()?)
            .with_columns(Some(columns))
            .finish()
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot read `{}`", file.display()))
    };
    if !path.is_dir() {
        return read(path);
    }
    let mut parts: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|part| part.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parts.sort();
    crate::core::columns::stack_frames(parts.iter().map(|part| read(part)))?
        .with_context(|| format!("`{}` holds no part", path.display()))
}

/// A column as doubles (nulls as NaN).
pub fn floats(frame: &DataFrame, name: &str) -> Result<Vec<f64>> {
    Ok(frame
        .column(name)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("no column `{name}`"))?
        .cast(&DataType::Float64)?
        .f64()?
        .iter()
        .map(|value| value.unwrap_or(f64::NAN))
        .collect())
}

/// A column as text (dates as `YYYY-MM-DD`; nulls as `None`).
pub fn texts(frame: &DataFrame, name: &str) -> Result<Vec<Option<String>>> {
    let column = frame
        .column(name)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("no column `{name}`"))?;
    let text = column.cast(&DataType::String)?;
    Ok(text.str()?.iter().map(|value| value.map(str::to_string)).collect())
}
