//! The shards of a sharded run on this machine: orders spilled to disk by customer shard
//! (`source::spill_orders`), the shards swept one after another in this process, per-customer
//! rows in spill files by shard and by customer id range.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::*;

use super::shard::{run_shard, ShardData, ShardPartial, SourceShards, SweepWork};
use super::Executor;
use crate::core::columns::stack_frames;
use crate::core::config::{AsOf, PipelineSettings, SourceConfig};
use crate::core::input::{InputStats, SurveyAnswers};
use crate::core::plan::Plan;
use crate::core::prepare::shared_tables;
use crate::core::stages::shard::shard_of_ids;
use crate::core::stages::SourceData;
use crate::io::source::{self, SpilledOrders};

/// Per shard, the files of its rows per id range (`None`: no row in the range).
type RowFiles = BTreeMap<usize, Vec<Option<PathBuf>>>;

/// The shards in spill files under `dir`.
pub(super) struct LocalShards {
    dir: PathBuf,
    spilled: BTreeMap<String, SpilledOrders>,
    /// Each survey source's answers per shard.
    survey_parts: BTreeMap<String, Vec<SurveyAnswers>>,
    /// Per (stage, per-customer table): per shard, the files of its rows per id range.
    row_files: BTreeMap<(usize, usize), RowFiles>,
    /// Per (stage, per-customer table), its columns with no row.
    row_schemas: BTreeMap<(usize, usize), DataFrame>,
    row_bytes: u64,
}

impl LocalShards {
    pub fn new(dir: &Path) -> LocalShards {
        LocalShards {
            dir: dir.to_path_buf(),
            spilled: BTreeMap::new(),
            survey_parts: BTreeMap::new(),
            row_files: BTreeMap::new(),
            row_schemas: BTreeMap::new(),
            row_bytes: 0,
        }
    }

    /// Each survey's answers split by the shard of their customer_id.
    fn split_surveys(&mut self, whole: &BTreeMap<String, SourceData>, shards: usize) -> Result<()> {
        for (name, data) in whole {
            let Some(answers) = data.survey() else { continue };
            if self.survey_parts.contains_key(name) {
                continue;
            }
            let shard_of = shard_of_ids(answers.answers.column("customer_id")?, shards)?;
            let parts = (0..shards as u32)
                .map(|shard| -> Result<_> {
                    let mask: BooleanChunked = shard_of.iter().map(|&s| s == shard).collect();
                    let mut part = answers.clone();
                    part.answers = answers.answers.filter(&mask)?;
                    Ok(part)
                })
                .collect::<Result<_>>()?;
            self.survey_parts.insert(name.clone(), parts);
        }
        Ok(())
    }

    /// Shard `shard`'s rows of `(stage, table)` from `files` (each range's file, if any).
    fn rows_of<'p>(&self, key: (usize, usize), files: impl Iterator<Item = &'p PathBuf>) -> Result<DataFrame> {
        match stack_frames(files.map(|file| source::read_spill(file)))? {
            Some(all) => Ok(all),
            None => Ok(self.row_schemas.get(&key).cloned().unwrap_or_default()),
        }
    }

    /// Write `frame`, shard `shard`'s rows of `(stage, table)` (of the customers of orders
    /// source `source`), in a file per id range.
    fn write_rows(
        &mut self,
        source: Option<String>,
        (stage, table): (usize, usize),
        shard: usize,
        frame: DataFrame,
    ) -> Result<()> {
        let spilled = source
            .and_then(|name| self.spilled.get(&name))
            .context("per-customer rows come from an orders source")?;
        let ranges = spilled.range_of(frame.column("customer_id")?)?;
        let mut files = vec![None; spilled.ranges()];
        for (range, file) in files.iter_mut().enumerate() {
            let mask: BooleanChunked = ranges.iter().map(|&r| r as usize == range).collect();
            let mut part = frame.filter(&mask)?;
            if part.height() == 0 {
                continue;
            }
            let path = self
                .dir
                .join(format!("rows-{stage}-{table}-{shard:04}-{range:04}.parquet"));
            self.row_bytes += source::write_spill(&path, &mut part)?;
            *file = Some(path);
        }
        self.row_schemas.entry((stage, table)).or_insert_with(|| frame.clear());
        self.row_files.entry((stage, table)).or_default().insert(shard, files);
        Ok(())
    }
}

/// One shard's data on disk.
struct LocalShard<'a> {
    shards: &'a LocalShards,
    whole: &'a BTreeMap<String, SourceData>,
    shard: usize,
}

impl ShardData for LocalShard<'_> {
    fn sources(&mut self, names: &BTreeSet<String>) -> Result<BTreeMap<String, SourceData>> {
        let mut sources = BTreeMap::new();
        for name in names {
            let data = if let Some(spilled) = self.shards.spilled.get(name) {
                let orders = source::read_order_shard(spilled, self.shard)?;
                SourceData::Orders(
                    shared_tables(orders).with_context(|| format!("source `{name}`, shard {}", self.shard))?,
                )
            } else if let Some(parts) = self.shards.survey_parts.get(name) {
                SourceData::Survey(parts[self.shard].clone())
            } else {
                match self.whole.get(name) {
                    Some(SourceData::Spend(spend)) => SourceData::Spend(spend.clone()),
                    _ => continue,
                }
            };
            sources.insert(name.clone(), data);
        }
        Ok(sources)
    }

    fn rows(&mut self, stage: usize, table: usize) -> Result<DataFrame> {
        let files = self
            .shards
            .row_files
            .get(&(stage, table))
            .and_then(|shards| shards.get(&self.shard));
        self.shards
            .rows_of((stage, table), files.into_iter().flatten().flatten())
    }
}

impl Executor for LocalShards {
    fn split_orders(
        &mut self,
        source_config: &SourceConfig,
        settings: &PipelineSettings,
        as_of: AsOf,
        shards: usize,
    ) -> Result<(InputStats, SourceShards, u64)> {
        let name = &source_config.name;
        let spilled = source::spill_orders(
            source_config,
            settings,
            as_of,
            shards,
            &self.dir.join(format!("source-{name}")),
        )?;
        let shards = SourceShards {
            as_of: spilled.as_of,
            schema: DataFrame::empty_with_schema(&spilled.schema),
            cuts: spilled.cuts.clone(),
        };
        let result = (spilled.stats.clone(), shards, spilled.spill_bytes);
        self.spilled.insert(name.clone(), spilled);
        Ok(result)
    }

    fn sweep(
        &mut self,
        plan: &Plan,
        work: &SweepWork,
        whole: &BTreeMap<String, SourceData>,
        take: &mut dyn FnMut(ShardPartial) -> Result<()>,
    ) -> Result<()> {
        self.split_surveys(whole, work.shards)?;
        let progress = crate::telemetry::progress_bar(work.shards as u64, "shards");
        for shard in 0..work.shards {
            let mut data = LocalShard {
                shards: self,
                whole,
                shard,
            };
            let output = run_shard(plan, work, &mut data)?;
            for partial in output.partials {
                take(partial)?;
            }
            for (stage, table, frame) in output.rows {
                self.write_rows(plan.source_of(stage), (stage, table), shard, frame)?;
            }
            progress.inc(1);
            crate::telemetry::release_freed_memory();
            tracing::debug!(
                "sweep {}, shard {shard} done: {}",
                work.sweep,
                crate::telemetry::memory()
            );
        }
        progress.finish_and_clear();
        Ok(())
    }

    fn table_ranges<'s>(
        &'s mut self,
        stage: usize,
        table: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<DataFrame>> + 's>> {
        let key = (stage, table);
        let shards: Vec<Vec<Option<PathBuf>>> = self
            .row_files
            .get(&key)
            .map(|shards| shards.values().cloned().collect())
            .unwrap_or_default();
        let ranges = shards.first().map_or(0, Vec::len).max(1);
        let this = &*self;
        Ok(Box::new((0..ranges).map(move |range| {
            let files: Vec<PathBuf> = shards
                .iter()
                .filter_map(|ranges| ranges.get(range).cloned().flatten())
                .collect();
            this.rows_of(key, files.iter())
        })))
    }

    fn spill_bytes(&self) -> u64 {
        self.row_bytes
    }
}
