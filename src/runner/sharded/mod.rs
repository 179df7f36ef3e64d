//! A run in customer shards with bounded memory (`--shards N`, `--memory-limit`).
//!
//! Each orders source is spilled into N customer shards on disk (`source::spill_orders`), then
//! the stages run in **sweeps** over the shards. A sweep reads each shard once (its orders
//! become its shared tables, as a whole run's are for all customers) and gives every stage that
//! can go on one step on it, in dependency order: a pass of its partial (`shard::Sharded`), or,
//! once finalized, its per-customer rows. After the sweep the driver merges each pass's
//! partials, runs the step between passes and finalizes. Only partials, aggregate tables and
//! globals stay in memory; per-customer rows go to spill files, shard by shard, which the
//! stages reading them get back per shard and the sink writes out part by part.
//!
//! A stage takes its first pass in the sweep after every stage it reads is finalized, and in
//! the same sweep as their per-customer rows (those come before it on each shard). The spill
//! folder is beside the outputs (`Sink::scratch_dir`) and is removed when the run ends; the
//! next run removes one a killed run left.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use polars::prelude::*;

mod local;
pub(crate) mod shard;

use super::stages::{add_as_of, file_metadata, stage_inputs, start_order, tables_of, upstream_of};
use crate::core::config::{AsOf, PipelineSettings, SourceConfig, SourceKind};
use crate::core::input::InputStats;
use crate::core::manifest::{Manifest, StageReport, TableReport};
use crate::core::plan::Plan;
use crate::core::stages::shard::{Partial, Sharded};
use crate::core::stages::SourceData;
use crate::io::sink::Sink;
use shard::{ShardPartial, SourceShards, StageWork, Step, SweepWork};

/// Peak bytes of a whole run per order line, and what it needs besides (the allocator, polars'
/// pools, the binary): measured at 10M and 50M lines with every stage (docs/performance.md).
const BYTES_PER_LINE: u64 = 36;
const BASE_BYTES: u64 = 300 << 20;
/// The shards for about `lines` order lines within `limit` bytes: `None` when one piece fits,
/// else enough that a shard's share of a whole run's memory takes half the limit (at least 2).
/// The other half is for what does not shrink with the shards: the spill pass (about 500 MB),
/// and merged partials that grow with the customers, such as clv's pattern counts (at 50M
/// lines, 8 shards peak at a third of a whole run: docs/scale-out.md).
pub(super) fn shards_for(lines: u64, limit: u64) -> Option<usize> {
    let whole = BASE_BYTES + lines * BYTES_PER_LINE;
    if whole <= limit {
        return None;
    }
    let room = (limit / 2).max(64 << 20);
    Some(((lines * BYTES_PER_LINE).div_ceil(room) as usize).clamp(2, 4096))
}

/// A folder of spill files, removed with everything in it when dropped.
pub(super) struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub(super) fn create(dir: PathBuf) -> Result<Scratch> {
        std::fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create the spill folder `{}` (a sharded run spills its input beside the outputs)",
                dir.display()
            )
        })?;
        Ok(Scratch { dir })
    }
}

impl Scratch {
    /// `error` of the run, with where the spill goes and what it needs when the disk filled.
    pub(super) fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        if !format!("{error:#}").contains("No space left on device") {
            return error;
        }
        error.context(format!(
            "the disk holding the spill folder `{}` is full: a sharded run needs free space beside the outputs of about 1.6 times the input's size (docs/scale-out.md); free some, or set `output_dir` on a larger disk",
            self.dir.display()
        ))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("cannot remove the spill folder `{}`: {error}", self.dir.display());
        }
    }
}

/// Where a sharded run's shards live and where their steps run: on this machine
/// (`local::LocalShards`), or in a Spark job's tasks (`runner::spark`). The driver (`Sweeps`)
/// decides each sweep's steps, merges the partials and finalizes; the executor reads the
/// shards, runs the steps (`shard::run_shard`) and keeps the per-customer rows.
pub(crate) trait Executor {
    /// Split orders source `source_config` into `shards` customer shards: its accounting (as
    /// one scan's; a rejection is a `DataRejected` error), the shards and the bytes spilled.
    fn split_orders(
        &mut self,
        source_config: &SourceConfig,
        settings: &PipelineSettings,
        as_of: AsOf,
        shards: usize,
    ) -> Result<(InputStats, SourceShards, u64)>;

    /// `work` on every shard; each shard's partials handed to `take` as they come. `whole`: the
    /// sources read whole by the driver (surveys, spend).
    fn sweep(
        &mut self,
        plan: &Plan,
        work: &SweepWork,
        whole: &BTreeMap<String, SourceData>,
        take: &mut dyn FnMut(ShardPartial) -> Result<()>,
    ) -> Result<()>;

    /// Stage `stage`'s per-customer table `table`, an id range at a time in range order (rows
    /// unsorted within a range; at least one frame, with the table's columns).
    fn table_ranges<'s>(
        &'s mut self,
        stage: usize,
        table: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<DataFrame>> + 's>>;

    /// Bytes of per-customer rows kept so far.
    fn spill_bytes(&self) -> u64;

    /// Whether it writes per-customer tables itself, as parts into a folder of the sink
    /// (`write_parts`), instead of handing their rows to the driver (`table_ranges`).
    fn writes_parts(&self) -> bool {
        false
    }

    /// Write stage `stage`'s per-customer table `table` into `dir` as one part per customer id
    /// range (`part-00000.parquet`, …), each sorted by customer_id, with the `as_of` column and
    /// the file metadata `key_values`; its rows.
    fn write_parts(
        &mut self,
        _stage: usize,
        _table: usize,
        _dir: &std::path::Path,
        _key_values: &[(String, String)],
        _as_of_days: Option<i32>,
    ) -> Result<usize> {
        bail!("this executor hands per-customer rows to the driver")
    }
}

/// Read the sources and run the selected stages in `shards` customer shards on this machine,
/// staging their tables in `sink`; the manifest gets the inputs' accounting and the stages'
/// reports.
pub(super) fn execute(
    plan: &Plan,
    options: &super::RunOptions,
    selected: &BTreeSet<usize>,
    manifest: &mut Manifest,
    sink: &mut dyn Sink,
    shards: usize,
) -> Result<()> {
    let dir = sink
        .scratch_dir(&manifest.run_id)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("pipeline-spill-{}", manifest.run_id)));
    let scratch = Scratch::create(dir)?;
    let mut executor = local::LocalShards::new(&scratch.dir);
    execute_with(plan, options, selected, manifest, sink, shards, &mut executor).map_err(|error| scratch.explain(error))
}

/// A sharded run with `executor`'s shards.
#[allow(clippy::too_many_arguments)]
pub(crate) fn execute_with(
    plan: &Plan,
    options: &super::RunOptions,
    selected: &BTreeSet<usize>,
    manifest: &mut Manifest,
    sink: &mut dyn Sink,
    shards: usize,
    executor: &mut dyn Executor,
) -> Result<()> {
    let prepare_start = Instant::now();
    let as_of = options.as_of.unwrap_or(plan.config.pipeline.as_of);
    let (sources, whole, spill_bytes) = read_sources(plan, selected, as_of, manifest, shards, executor)?;
    manifest.as_of = sources.values().map(|s| s.as_of).max().map(|d| d.to_string());
    manifest.prepare_seconds = prepare_start.elapsed().as_secs_f64();
    let mut sweeps = Sweeps::new(plan, selected, &sources, &whole, shards, manifest, &*sink, executor);
    manifest.stages = sweeps.run()?;
    let row_bytes = sweeps.executor.spill_bytes();
    manifest.shards = Some(crate::core::manifest::ShardedRun {
        shards,
        sweeps: sweeps.sweeps,
        spill_bytes: spill_bytes + row_bytes,
    });
    tracing::info!(
        "{shards} shards: {} sweeps, {:.1} MB spilled (input) and {:.1} MB (per-customer rows)",
        sweeps.sweeps,
        spill_bytes as f64 / 1e6,
        row_bytes as f64 / 1e6
    );
    super::record_scans(plan, manifest);
    Ok(())
}

/// The needed orders sources split into shards, the other sources read whole, and the bytes
/// spilled.
fn read_sources(
    plan: &Plan,
    selected: &BTreeSet<usize>,
    as_of: AsOf,
    manifest: &mut Manifest,
    shards: usize,
    executor: &mut dyn Executor,
) -> Result<(BTreeMap<String, SourceShards>, BTreeMap<String, SourceData>, u64)> {
    let mut sources = BTreeMap::new();
    let mut spill_bytes = 0;
    let needed: Vec<_> = plan
        .sources_needed(selected)
        .iter()
        .map(|name| &plan.config.sources[name])
        .collect();
    for source_config in needed.iter().filter(|s| s.kind == SourceKind::Orders) {
        let name = &source_config.name;
        tracing::info!(
            "reading orders source `{name}` ({}) into {shards} shards",
            source_config.path.display()
        );
        let (stats, split, bytes) = super::with_rejected(
            manifest,
            executor.split_orders(source_config, &plan.config.pipeline, as_of, shards),
        )?;
        manifest.inputs.push(stats);
        spill_bytes += bytes;
        sources.insert(name.clone(), split);
    }
    let run_as_of = sources
        .values()
        .map(|s| s.as_of)
        .max()
        .context("a sharded run reads an orders source")?;
    let mut whole = BTreeMap::new();
    for source_config in needed.iter().filter(|s| s.kind != SourceKind::Orders) {
        let data = super::read_other_source(plan, source_config, run_as_of, manifest)?;
        whole.insert(source_config.name.clone(), data);
    }
    Ok((sources, whole, spill_bytes))
}

/// One selected stage's progress through the sweeps.
struct StageState<'a> {
    index: usize,
    stage: &'a dyn Sharded,
    /// The selected stages it reads.
    upstream: Vec<usize>,
    /// Merged partials of the passes done.
    merged: Vec<Partial>,
    /// This sweep's partials, merged as they come: each with how many shards' partials it
    /// holds, a power of two, merged with one of its size (a binary counter), so a partial is
    /// merged about log₂(shards) times, not once per shard, and few are held.
    parts: Vec<(usize, Partial)>,
    /// Whether this sweep's pass also gave the per-customer rows.
    rows_given: bool,
    /// Its finalized tables: aggregate ones, `None` at a per-customer table.
    tables: Option<Vec<Option<DataFrame>>>,
    globals: Partial,
    rows_done: bool,
    busy: Duration,
    staged: bool,
}

impl StageState<'_> {
    fn finalized(&self) -> bool {
        self.tables.is_some()
    }

    fn complete(&self) -> bool {
        self.finalized() && self.rows_done
    }
}

/// The stages of one sharded run, swept over its shards until all are complete.
struct Sweeps<'a> {
    plan: &'a Plan,
    sources: &'a BTreeMap<String, SourceShards>,
    whole: &'a BTreeMap<String, SourceData>,
    shards: usize,
    sink: &'a dyn Sink,
    executor: &'a mut dyn Executor,
    states: Vec<StageState<'a>>,
    level_of: BTreeMap<usize, usize>,
    key_values: Vec<(String, String)>,
    as_of_days: Option<i32>,
    sweeps: usize,
    reports: Vec<(usize, StageReport)>,
}

impl<'a> Sweeps<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        plan: &'a Plan,
        selected: &BTreeSet<usize>,
        sources: &'a BTreeMap<String, SourceShards>,
        whole: &'a BTreeMap<String, SourceData>,
        shards: usize,
        manifest: &Manifest,
        sink: &'a dyn Sink,
        executor: &'a mut dyn Executor,
    ) -> Sweeps<'a> {
        let (order, level_of) = start_order(plan, selected);
        let states = order
            .iter()
            .map(|&index| StageState {
                index,
                stage: &**plan.config.stages[index]
                    .stage
                    .as_ref()
                    .expect("a validated plan has options for every stage"),
                upstream: upstream_of(plan, index)
                    .into_iter()
                    .filter(|dep| selected.contains(dep))
                    .collect(),
                merged: Vec::new(),
                parts: Vec::new(),
                rows_given: false,
                tables: None,
                globals: Vec::new(),
                rows_done: false,
                busy: Duration::ZERO,
                staged: false,
            })
            .collect();
        Sweeps {
            plan,
            sources,
            whole,
            shards,
            sink,
            executor,
            states,
            level_of,
            key_values: file_metadata(&plan.config, manifest),
            as_of_days: manifest
                .as_of
                .as_deref()
                .and_then(|d| d.parse().ok())
                .map(crate::core::period::to_days),
            sweeps: 0,
            reports: Vec::new(),
        }
    }

    /// Sweep until every stage is complete and staged; the reports by level, in config order
    /// within one.
    fn run(&mut self) -> Result<Vec<StageReport>> {
        let progress = crate::telemetry::progress_bar(self.states.len() as u64, "stages");
        while self.states.iter().any(|state| !state.staged) {
            let steps = self.steps();
            if steps.iter().all(|step| *step == Step::Wait) {
                bail!("no stage can go on in a sharded run (a stage waits for one never finished)");
            }
            self.sweep(&steps)?;
            self.after_sweep(&steps)?;
            let before = self.reports.len();
            self.stage_complete()?;
            progress.inc((self.reports.len() - before) as u64);
        }
        progress.finish_and_clear();
        let mut reports = std::mem::take(&mut self.reports);
        reports.sort_by_key(|(index, report)| (report.level, *index));
        Ok(reports.into_iter().map(|(_, report)| report).collect())
    }

    /// What each stage does in the next sweep: a pass when every stage it reads is finalized
    /// and has its per-customer rows (or gives them earlier in the same sweep), its rows once
    /// finalized.
    fn steps(&self) -> Vec<Step> {
        let position: BTreeMap<usize, usize> = self.states.iter().enumerate().map(|(i, s)| (s.index, i)).collect();
        let mut steps: Vec<Step> = Vec::with_capacity(self.states.len());
        for state in &self.states {
            let step = if state.complete() {
                Step::Wait
            } else if state.finalized() {
                Step::Rows
            } else {
                let ready = state.upstream.iter().all(|dep| {
                    let at = position[dep];
                    let dep_state = &self.states[at];
                    dep_state.finalized() && (dep_state.rows_done || (at < steps.len() && steps[at] == Step::Rows))
                });
                if ready {
                    Step::Pass(state.merged.len())
                } else {
                    Step::Wait
                }
            };
            steps.push(step);
        }
        steps
    }

    /// What every shard is sent for this sweep.
    fn work(&self, steps: &[Step]) -> SweepWork {
        let mut upstream = BTreeMap::new();
        let mut stages = Vec::new();
        for (position, (state, step)) in self.states.iter().zip(steps).enumerate() {
            if *step == Step::Wait {
                continue;
            }
            for dep in &state.upstream {
                if let Some(tables) = self
                    .states
                    .iter()
                    .find(|s| s.index == *dep)
                    .and_then(|s| s.tables.clone())
                {
                    upstream.insert(*dep, tables);
                }
            }
            stages.push(StageWork {
                position,
                index: state.index,
                step: *step,
                merged: match step {
                    Step::Pass(_) => state.merged.clone(),
                    _ => Vec::new(),
                },
                globals: match step {
                    Step::Rows => state.globals.clone(),
                    _ => Vec::new(),
                },
            });
        }
        SweepWork {
            sweep: self.sweeps,
            shards: self.shards,
            sources: self.sources.clone(),
            stages,
            upstream,
        }
    }

    /// Every shard read once, each stage taking its step on it; the partials merged as they
    /// come (merges are associative), so the driver holds a few, not one per shard.
    fn sweep(&mut self, steps: &[Step]) -> Result<()> {
        let work = self.work(steps);
        self.sweeps += 1;
        let active: Vec<String> = work
            .stages
            .iter()
            .map(|stage| format!("{} {:?}", self.plan.config.stages[stage.index].name, stage.step))
            .collect();
        tracing::info!(
            "sweep {} over {} shards: {}",
            work.sweep,
            self.shards,
            active.join(", ")
        );
        let states = &mut self.states;
        let stages = &self.plan.config.stages;
        let mut take = |shard_partial: ShardPartial| -> Result<()> {
            let state = &mut states[shard_partial.position];
            let Step::Pass(pass) = steps[shard_partial.position] else {
                bail!("a partial of a stage that took no pass");
            };
            let clock = Instant::now();
            state.rows_given |= shard_partial.with_rows;
            state.parts.push((1, shard_partial.partial));
            while let [.., (a, _), (b, _)] = state.parts.as_slice() {
                if a != b {
                    break;
                }
                let (size, second) = state.parts.pop().expect("two");
                let (_, first) = state.parts.pop().expect("two");
                let stage = state.stage;
                let merged = crate::catch_panics(|| stage.merge(pass, vec![first, second]));
                let stage_config = &stages[state.index];
                let merged =
                    merged.with_context(|| format!("stage `{}` ({})", stage_config.name, stage_config.kind.name))?;
                state.parts.push((2 * size, merged));
            }
            state.busy += clock.elapsed();
            Ok(())
        };
        let clock = Instant::now();
        self.executor.sweep(self.plan, &work, self.whole, &mut take)?;
        // The shards' own time is shared among the stages that took a step.
        let share = clock.elapsed() / work.stages.len().max(1) as u32;
        for stage in &work.stages {
            self.states[stage.position].busy += share;
        }
        Ok(())
    }

    /// Merge each pass's partials, run the step between passes and finalize the stages whose
    /// passes are done.
    fn after_sweep(&mut self, steps: &[Step]) -> Result<()> {
        for position in 0..self.states.len() {
            let clock = Instant::now();
            let index = self.states[position].index;
            let context = || {
                let stage = &self.plan.config.stages[index];
                format!("stage `{}` ({})", stage.name, stage.kind.name)
            };
            match steps[position] {
                Step::Pass(pass) => {
                    let finalized = self.finish_pass(position, pass).with_context(context)?;
                    let state = &mut self.states[position];
                    if let Some(finalized) = finalized {
                        let per_customer = finalized.tables.iter().any(Option::is_none);
                        // Rows given with the last pass are kept; otherwise they take a sweep.
                        state.rows_done = !per_customer || state.rows_given;
                        state.tables = Some(finalized.tables);
                        state.globals = finalized.globals;
                    }
                }
                Step::Rows => self.states[position].rows_done = true,
                Step::Wait => {}
            }
            if steps[position] != Step::Wait {
                crate::telemetry::release_freed_memory();
                tracing::debug!(
                    "stage `{}`: {:?} merged: {}",
                    self.plan.config.stages[index].name,
                    steps[position],
                    crate::telemetry::memory()
                );
            }
            self.states[position].busy += clock.elapsed();
        }
        Ok(())
    }

    /// The aggregate tables of the stages stage `position` reads, with empty frames at the
    /// per-customer ones (for finalize).
    fn upstream_aggregates(&self, position: usize) -> Result<Vec<Vec<DataFrame>>> {
        let state = &self.states[position];
        let mut all = Vec::new();
        for dep in upstream_of(self.plan, state.index) {
            let Some(dep_state) = self.states.iter().find(|s| s.index == dep) else {
                all.push(Vec::new());
                continue;
            };
            let tables = dep_state
                .tables
                .as_ref()
                .context("an upstream stage is finalized first")?;
            all.push(tables.iter().map(|frame| frame.clone().unwrap_or_default()).collect());
        }
        Ok(all)
    }

    /// The merge of pass `pass` of stage `position`, the step after it, and finalize after the
    /// last pass.
    fn finish_pass(&mut self, position: usize, pass: usize) -> Result<Option<crate::core::stages::shard::Finalized>> {
        let upstream = self.upstream_aggregates(position)?;
        let state = &mut self.states[position];
        let stage = state.stage;
        let parts = std::mem::take(&mut state.parts)
            .into_iter()
            .map(|(_, part)| part)
            .collect();
        let merged = crate::catch_panics(|| stage.merge(pass, parts))?;
        tracing::debug!("pass {pass} merged: {}", crate::telemetry::memory());
        state.merged.push(merged);
        let extra = crate::catch_panics(|| stage.between(pass, &state.merged))?;
        state.merged[pass].extend(extra);
        if state.merged.len() < stage.passes() {
            return Ok(None);
        }
        let index = state.index;
        let merged = std::mem::take(&mut state.merged);
        let source = self.plan.source_of(index);
        let as_of = source
            .as_ref()
            .and_then(|name| self.sources.get(name))
            .map(|source| source.as_of)
            .context("a stage reads an orders source")?;
        let frames: Vec<&[DataFrame]> = upstream.iter().map(Vec::as_slice).collect();
        let whole = stage_inputs(self.plan, index, self.whole, &frames);
        Ok(Some(crate::catch_panics(|| stage.finalize(merged, &whole, as_of))?))
    }

    /// Stage the tables of every stage complete and not yet staged; its report.
    fn stage_complete(&mut self) -> Result<()> {
        for position in 0..self.states.len() {
            let state = &self.states[position];
            if state.staged || !state.complete() {
                continue;
            }
            let clock = Instant::now();
            let index = state.index;
            let stage_config = &self.plan.config.stages[index];
            let tables = state.tables.clone().expect("complete");
            let mut reports = Vec::new();
            for (table, (name, metadata)) in tables_of(&self.plan.config, index, &self.key_values)
                .into_iter()
                .enumerate()
            {
                let rows = match tables.get(table).cloned().flatten() {
                    Some(mut frame) => {
                        add_as_of(&mut frame, self.as_of_days)?;
                        self.sink.stage(&name, &mut frame, &metadata)
                    }
                    None if self.executor.writes_parts() => match self.sink.parts_dir(&name)? {
                        Some(dir) => self
                            .executor
                            .write_parts(index, table, &dir, &self.key_values, self.as_of_days),
                        None => self.stage_rows(index, table, &name, &metadata),
                    },
                    None => self.stage_rows(index, table, &name, &metadata),
                }
                .with_context(|| format!("stage `{}` ({})", stage_config.name, stage_config.kind.name))?;
                reports.push(TableReport {
                    path: format!("{name}.parquet"),
                    table: name,
                    rows,
                });
            }
            tracing::debug!("stage `{}` staged: {}", stage_config.name, crate::telemetry::memory());
            let state = &self.states[position];
            let report = StageReport {
                stage: stage_config.name.clone(),
                kind: stage_config.kind.name.to_string(),
                level: self.level_of[&index] + 1,
                duration_seconds: (state.busy + clock.elapsed()).as_secs_f64(),
                tables: reports,
            };
            tracing::info!(
                "stage `{}` done in {:.3} s over {} shards ({} rows)",
                report.stage,
                report.duration_seconds,
                self.shards,
                report.tables.iter().map(|t| t.rows).sum::<usize>()
            );
            self.reports.push((index, report));
            self.states[position].staged = true;
        }
        Ok(())
    }

    /// Stage stage `index`'s per-customer table `table` through the sink, an id range at a
    /// time, each range sorted by customer_id: the table in customer_id order.
    fn stage_rows(
        &mut self,
        index: usize,
        table: usize,
        name: &str,
        metadata: &crate::io::sink::TableMetadata,
    ) -> Result<usize> {
        let as_of_days = self.as_of_days;
        let ranges = self.executor.table_ranges(index, table)?;
        let mut parts = ranges.map(|part| part.and_then(|frame| published_part(frame, as_of_days)));
        self.sink.stage_parts(name, &mut parts, metadata)
    }
}

/// One id range of a per-customer table as published: sorted by customer_id, with `as_of`.
pub(super) fn published_part(frame: DataFrame, as_of_days: Option<i32>) -> Result<DataFrame> {
    let mut frame = frame.sort(
        ["customer_id"],
        SortMultipleOptions::default().with_maintain_order(true),
    )?;
    add_as_of(&mut frame, as_of_days)?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One piece while it fits; past it, a shard's share takes half the limit.
    #[test]
    fn shards_follow_the_input_and_the_limit() {
        let gib = 1u64 << 30;
        assert_eq!(shards_for(10_000_000, 12 * gib), None);
        // 300 MB + 36 B × 50M = 2.1 GB > 1 GiB: 1.8 GB of lines in 512 MiB shares.
        assert_eq!(shards_for(50_000_000, gib), Some(4));
        // 1,000M lines in 12 GiB: 36 GB in 6 GiB shares.
        assert_eq!(shards_for(1_000_000_000, 12 * gib), Some(6));
        assert_eq!(shards_for(1_000, 1_024), Some(2));
    }
}
