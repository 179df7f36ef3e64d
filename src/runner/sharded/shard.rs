//! One shard's part of a sweep: what the driver sends (`SweepWork`), the stages' steps on the
//! shard (`run_shard`) and what comes back (`ShardOutput`). The same code runs in the process
//! of a sharded run (`local.rs`) and in Spark's tasks (`runner::spark`), where the work crosses
//! in bytes (`SweepWork::encode`): a JSON header and the tables as Parquet.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::super::stages::{source_names, stage_inputs, upstream_of};
use crate::core::plan::Plan;
use crate::core::stages::shard::{partial_of_pass, Partial};
use crate::core::stages::SourceData;

/// What a stage does in a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) enum Step {
    Wait,
    Pass(usize),
    Rows,
}

/// An orders source in customer shards, as the driver knows it.
#[derive(Clone)]
pub(crate) struct SourceShards {
    pub as_of: NaiveDate,
    /// The spilled orders' columns (an empty frame).
    pub schema: DataFrame,
    /// Cut points of the customer id ranges per-customer rows are written by.
    pub cuts: Series,
}

/// One active stage of a sweep.
#[derive(Clone)]
pub(crate) struct StageWork {
    /// Its place among the driver's stages.
    pub position: usize,
    /// Its index in the config.
    pub index: usize,
    pub step: Step,
    /// The merged partials of its passes done (for a pass).
    pub merged: Vec<Partial>,
    /// Its finalized globals (for its rows).
    pub globals: Partial,
}

/// A sweep's work on every shard: the active stages in dependency order, and the aggregate
/// tables of the finalized stages they read (`None` at a per-customer table).
#[derive(Clone)]
pub(crate) struct SweepWork {
    pub sweep: usize,
    pub shards: usize,
    pub sources: BTreeMap<String, SourceShards>,
    pub stages: Vec<StageWork>,
    pub upstream: BTreeMap<usize, Vec<Option<DataFrame>>>,
}

/// Where one shard's inputs come from: its sources, and the per-customer rows the finalized
/// stages gave for its customers in earlier sweeps.
pub(crate) trait ShardData {
    fn sources(&mut self, names: &BTreeSet<String>) -> Result<BTreeMap<String, SourceData>>;
    /// Stage `stage`'s rows of per-customer table `table` for this shard's customers.
    fn rows(&mut self, stage: usize, table: usize) -> Result<DataFrame>;
}

/// A partial of one shard, for the driver to merge.
pub(crate) struct ShardPartial {
    pub position: usize,
    pub partial: Partial,
    /// Whether the pass also gave the stage's per-customer rows (`last_partial_with_rows`).
    pub with_rows: bool,
}

/// What one shard gives in a sweep.
pub(crate) struct ShardOutput {
    pub partials: Vec<ShardPartial>,
    /// (stage index, table, rows) of per-customer tables.
    pub rows: Vec<(usize, usize, DataFrame)>,
}

/// Every active stage's step on shard `shard`, in dependency order: rows a stage gives here
/// are read by the stages after it on the same shard.
pub(crate) fn run_shard(plan: &Plan, work: &SweepWork, data: &mut dyn ShardData) -> Result<ShardOutput> {
    let needed: BTreeSet<String> = work
        .stages
        .iter()
        .flat_map(|stage| source_names(plan, stage.index))
        .collect();
    let sources = data.sources(&needed)?;
    let mut fresh: BTreeMap<(usize, usize), DataFrame> = BTreeMap::new();
    let mut output = ShardOutput {
        partials: Vec::new(),
        rows: Vec::new(),
    };
    let stages = &plan.config.stages;
    for stage_work in &work.stages {
        let index = stage_work.index;
        let stage_config = &stages[index];
        let context = || format!("stage `{}` ({})", stage_config.name, stage_config.kind.name);
        let mut upstream = Vec::new();
        for dep in upstream_of(plan, index) {
            let Some(tables) = work.upstream.get(&dep) else {
                upstream.push(Vec::new());
                continue;
            };
            let mut frames = Vec::with_capacity(tables.len());
            for (table, frame) in tables.iter().enumerate() {
                frames.push(match (frame, fresh.get(&(dep, table))) {
                    (Some(frame), _) => frame.clone(),
                    (None, Some(rows)) => rows.clone(),
                    (None, None) => data.rows(dep, table).with_context(context)?,
                });
            }
            upstream.push(frames);
        }
        let frames: Vec<&[DataFrame]> = upstream.iter().map(Vec::as_slice).collect();
        let inputs = stage_inputs(plan, index, &sources, &frames);
        let stage = &**stage_config
            .stage
            .as_ref()
            .expect("a validated plan has options for every stage");
        let (partial, rows) = crate::catch_panics(|| {
            crate::telemetry::inject_fault(&stage_config.name);
            match stage_work.step {
                Step::Pass(_) => {
                    let (partial, rows) = partial_of_pass(stage, &inputs, &stage_work.merged)?;
                    Ok((Some(partial), rows))
                }
                Step::Rows => Ok((None, Some(stage.customer_rows(&inputs, &stage_work.globals)?))),
                Step::Wait => Ok((None, None)),
            }
        })
        .with_context(context)?;
        if let Some(partial) = partial {
            output.partials.push(ShardPartial {
                position: stage_work.position,
                partial,
                with_rows: rows.is_some(),
            });
        }
        for (table, frame) in rows.into_iter().flatten().enumerate() {
            if let Some(frame) = frame {
                fresh.insert((index, table), frame.clone());
                output.rows.push((index, table, frame));
            }
        }
    }
    Ok(output)
}

/// Named tables in bytes: a JSON header, then each table as Parquet (uncompressed).
pub(crate) fn encode_tables(header: &impl Serialize, tables: &mut [(String, DataFrame)]) -> Result<Vec<u8>> {
    let header = serde_json::to_vec(header)?;
    let mut bytes = Vec::new();
    bytes.extend((header.len() as u64).to_le_bytes());
    bytes.extend(header);
    for (name, frame) in tables.iter_mut() {
        let mut table = Vec::new();
        if frame.width() > 0 {
            ParquetWriter::new(&mut table)
                .with_compression(ParquetCompression::Uncompressed)
                .with_statistics(StatisticsOptions::empty())
                .finish(frame)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("encoding table `{name}`"))?;
        }
        bytes.extend((name.len() as u64).to_le_bytes());
        bytes.extend(name.as_bytes());
        bytes.extend((table.len() as u64).to_le_bytes());
        bytes.extend(table);
    }
    Ok(bytes)
}

/// Read back `encode_tables`: the header and the named tables, in order.
pub(crate) fn decode_tables<H: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<(H, Vec<(String, DataFrame)>)> {
    let mut at = 0usize;
    let mut take = |len: usize| -> Result<&[u8]> {
        let Some(slice) = bytes.get(at..at + len) else {
            bail!("encoded tables end early ({} bytes)", bytes.len())
        };
        at += len;
        Ok(slice)
    };
    fn length(bytes: &[u8]) -> usize {
        u64::from_le_bytes(bytes.try_into().expect("8 bytes")) as usize
    }
    let len = length(take(8)?);
    let header = serde_json::from_slice(take(len)?).context("reading encoded tables' header")?;
    let mut tables = Vec::new();
    loop {
        let Ok(len) = take(8).map(length) else { break };
        let name = String::from_utf8(take(len)?.to_vec())?;
        let len = length(take(8)?);
        let table = take(len)?;
        let frame = if table.is_empty() {
            DataFrame::empty()
        } else {
            ParquetReader::new(Cursor::new(table))
                .finish()
                .map_err(anyhow::Error::from)
                .with_context(|| format!("decoding table `{name}`"))?
        };
        tables.push((name, frame));
    }
    Ok((header, tables))
}

/// One table as Parquet bytes (compressed: rows that go through Spark's shuffle).
pub(crate) fn table_bytes(frame: &mut DataFrame) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes)
        .with_compression(ParquetCompression::Zstd(None))
        .with_statistics(StatisticsOptions::empty())
        .finish(frame)?;
    Ok(bytes)
}

/// Read back `table_bytes` (or any Parquet bytes).
pub(crate) fn bytes_table(bytes: &[u8]) -> Result<DataFrame> {
    Ok(ParquetReader::new(Cursor::new(bytes)).finish()?)
}

#[derive(Serialize, Deserialize)]
struct WorkHeader {
    sweep: usize,
    shards: usize,
    sources: Vec<(String, NaiveDate)>,
    stages: Vec<StageHeader>,
    /// Per upstream stage: its index and, per table, whether it is aggregate (sent).
    upstream: Vec<(usize, Vec<bool>)>,
}

#[derive(Serialize, Deserialize)]
struct StageHeader {
    position: usize,
    index: usize,
    step: Step,
    /// Tables per merged pass, and globals.
    merged: Vec<usize>,
    globals: usize,
}

impl SweepWork {
    /// In bytes, for Spark's tasks.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut tables: Vec<(String, DataFrame)> = Vec::new();
        let mut push = |name: String, frame: &DataFrame| tables.push((name, frame.clone()));
        for (name, source) in &self.sources {
            push(format!("schema/{name}"), &source.schema);
            let cuts = source.cuts.clone().with_name("cut".into()).into_frame();
            push(format!("cuts/{name}"), &cuts);
        }
        let mut stages = Vec::new();
        for stage in &self.stages {
            for (pass, partial) in stage.merged.iter().enumerate() {
                for (at, frame) in partial.iter().enumerate() {
                    push(format!("merged/{}/{pass}/{at}", stage.index), frame);
                }
            }
            for (at, frame) in stage.globals.iter().enumerate() {
                push(format!("globals/{}/{at}", stage.index), frame);
            }
            stages.push(StageHeader {
                position: stage.position,
                index: stage.index,
                step: stage.step,
                merged: stage.merged.iter().map(Vec::len).collect(),
                globals: stage.globals.len(),
            });
        }
        let mut upstream = Vec::new();
        for (dep, frames) in &self.upstream {
            for (at, frame) in frames.iter().enumerate() {
                if let Some(frame) = frame {
                    push(format!("upstream/{dep}/{at}"), frame);
                }
            }
            upstream.push((*dep, frames.iter().map(Option::is_some).collect()));
        }
        let header = WorkHeader {
            sweep: self.sweep,
            shards: self.shards,
            sources: self.sources.iter().map(|(name, s)| (name.clone(), s.as_of)).collect(),
            stages,
            upstream,
        };
        encode_tables(&header, &mut tables)
    }

    /// Read back `encode`.
    pub fn decode(bytes: &[u8]) -> Result<SweepWork> {
        let (header, tables): (WorkHeader, _) = decode_tables(bytes)?;
        let mut tables: BTreeMap<String, DataFrame> = tables.into_iter().collect();
        let mut take = |name: String| -> Result<DataFrame> {
            tables
                .remove(&name)
                .with_context(|| format!("the sweep's work has no table `{name}`"))
        };
        let mut sources = BTreeMap::new();
        for (name, as_of) in header.sources {
            let schema = take(format!("schema/{name}"))?;
            let cuts = take(format!("cuts/{name}"))?
                .column("cut")?
                .as_materialized_series()
                .clone()
                .with_name("".into());
            sources.insert(name, SourceShards { as_of, schema, cuts });
        }
        let mut stages = Vec::new();
        for stage in header.stages {
            let index = stage.index;
            let merged = (stage.merged.iter().enumerate())
                .map(|(pass, &len)| (0..len).map(|at| take(format!("merged/{index}/{pass}/{at}"))).collect())
                .collect::<Result<_>>()?;
            let globals = (0..stage.globals)
                .map(|at| take(format!("globals/{index}/{at}")))
                .collect::<Result<_>>()?;
            stages.push(StageWork {
                position: stage.position,
                index,
                step: stage.step,
                merged,
                globals,
            });
        }
        let mut upstream = BTreeMap::new();
        for (dep, aggregate) in header.upstream {
            let frames = (aggregate.iter().enumerate())
                .map(|(at, &sent)| sent.then(|| take(format!("upstream/{dep}/{at}"))).transpose())
                .collect::<Result<_>>()?;
            upstream.insert(dep, frames);
        }
        Ok(SweepWork {
            sweep: header.sweep,
            shards: header.shards,
            sources,
            stages,
            upstream,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweep's work crosses in bytes and back whole: partials, globals, aggregate tables and
    /// the places of per-customer ones, with their types.
    #[test]
    fn sweep_work_round_trips() {
        let frame = df!(
            "period" => [1i32, 2, 3],
            "customers" => [10u32, 0, 7],
            "share" => [0.5f64, 0.25, 1e-300],
            "name" => [Some("a"), None, Some("ü")],
        )
        .unwrap();
        let dates = df!("day" => [NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()]).unwrap();
        let work = SweepWork {
            sweep: 3,
            shards: 7,
            sources: BTreeMap::from([(
                "orders".to_string(),
                SourceShards {
                    as_of: NaiveDate::from_ymd_opt(2025, 1, 31).unwrap(),
                    schema: frame.clear(),
                    cuts: Series::new("".into(), ["c10", "c55"]),
                },
            )]),
            stages: vec![StageWork {
                position: 2,
                index: 5,
                step: Step::Pass(1),
                merged: vec![vec![frame.clone(), dates.clone()]],
                globals: vec![DataFrame::empty()],
            }],
            upstream: BTreeMap::from([(1, vec![Some(frame.clone()), None])]),
        };
        let back = SweepWork::decode(&work.encode().unwrap()).unwrap();
        assert_eq!((back.sweep, back.shards), (3, 7));
        let source = &back.sources["orders"];
        assert_eq!(source.as_of, NaiveDate::from_ymd_opt(2025, 1, 31).unwrap());
        assert_eq!(source.schema.schema(), frame.schema());
        assert_eq!(
            source.cuts.str().unwrap().iter().flatten().collect::<Vec<_>>(),
            ["c10", "c55"]
        );
        let stage = &back.stages[0];
        assert_eq!((stage.position, stage.index, stage.step), (2, 5, Step::Pass(1)));
        assert!(stage.merged[0][0].equals_missing(&frame));
        assert!(stage.merged[0][1].equals_missing(&dates));
        assert_eq!(stage.globals[0].width(), 0);
        assert!(back.upstream[&1][0].as_ref().unwrap().equals_missing(&frame));
        assert!(back.upstream[&1][1].is_none());
    }
}
