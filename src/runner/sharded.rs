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
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use polars::prelude::*;

use super::stages::{add_as_of, file_metadata, source_names, stage_inputs, start_order, tables_of, upstream_of};
use crate::core::config::{AsOf, SourceKind};
use crate::core::manifest::{Manifest, StageReport, TableReport};
use crate::core::plan::Plan;
use crate::core::prepare::shared_tables;
use crate::core::stages::shard::{partial_of_pass, shard_of_ids, Partial, Sharded};
use crate::core::stages::SourceData;
use crate::io::sink::Sink;
use crate::io::source::{self, SpilledOrders};

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

/// Partials a stage's pass holds before they are merged into one.
const MERGE_AT: usize = 2;

/// A folder of spill files, removed with everything in it when dropped.
pub(super) struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    fn create(dir: PathBuf) -> Result<Scratch> {
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
    fn explain(&self, error: anyhow::Error) -> anyhow::Error {
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

/// Read the sources and run the selected stages in `shards` customer shards, staging their
/// tables in `sink`; the manifest gets the inputs' accounting and the stages' reports.
pub(super) fn execute(
    plan: &Plan,
    options: &super::RunOptions,
    selected: &BTreeSet<usize>,
    manifest: &mut Manifest,
    sink: &mut dyn Sink,
    shards: usize,
) -> Result<()> {
    let prepare_start = Instant::now();
    let dir = sink
        .scratch_dir(&manifest.run_id)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("pipeline-spill-{}", manifest.run_id)));
    let scratch = Scratch::create(dir)?;
    let mut run = || -> Result<()> {
        let as_of = options.as_of.unwrap_or(plan.config.pipeline.as_of);
        let (spilled, whole) = read_sources(plan, selected, as_of, manifest, shards, &scratch.dir)?;
        let spill_bytes: u64 = spilled.values().map(|s| s.spill_bytes).sum();
        manifest.as_of = spilled.values().map(|s| s.as_of).max().map(|d| d.to_string());
        manifest.prepare_seconds = prepare_start.elapsed().as_secs_f64();
        let mut sweeps = Sweeps::new(plan, selected, &spilled, &whole, shards, &scratch.dir, manifest, &*sink);
        manifest.stages = sweeps.run()?;
        manifest.shards = Some(crate::core::manifest::ShardedRun {
            shards,
            sweeps: sweeps.sweeps,
            spill_bytes: spill_bytes + sweeps.row_bytes,
        });
        tracing::info!(
            "{shards} shards: {} sweeps, {:.1} MB spilled (input) and {:.1} MB (per-customer rows)",
            sweeps.sweeps,
            spill_bytes as f64 / 1e6,
            sweeps.row_bytes as f64 / 1e6
        );
        super::record_scans(plan, manifest);
        Ok(())
    };
    run().map_err(|error| scratch.explain(error))
}

/// The needed orders sources spilled into shards, and the other sources read whole.
fn read_sources(
    plan: &Plan,
    selected: &BTreeSet<usize>,
    as_of: AsOf,
    manifest: &mut Manifest,
    shards: usize,
    dir: &Path,
) -> Result<(BTreeMap<String, SpilledOrders>, BTreeMap<String, SourceData>)> {
    let mut spilled = BTreeMap::new();
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
        let orders = super::with_rejected(
            manifest,
            source::spill_orders(
                source_config,
                &plan.config.pipeline,
                as_of,
                shards,
                &dir.join(format!("source-{name}")),
            ),
        )?;
        manifest.inputs.push(orders.stats.clone());
        spilled.insert(name.clone(), orders);
    }
    let run_as_of = spilled
        .values()
        .map(|s| s.as_of)
        .max()
        .context("a sharded run reads an orders source")?;
    let mut whole = BTreeMap::new();
    for source_config in needed.iter().filter(|s| s.kind != SourceKind::Orders) {
        let data = super::read_other_source(plan, source_config, run_as_of, manifest)?;
        whole.insert(source_config.name.clone(), data);
    }
    Ok((spilled, whole))
}

/// What a stage does in a sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Wait,
    Pass(usize),
    Rows,
}

/// One selected stage's progress through the sweeps.
struct StageState<'a> {
    index: usize,
    stage: &'a dyn Sharded,
    /// The selected stages it reads.
    upstream: Vec<usize>,
    /// Merged partials of the passes done.
    merged: Vec<Partial>,
    /// This sweep's partials, one per shard with data.
    parts: Vec<Partial>,
    /// Its finalized tables: aggregate ones, `None` at a per-customer table.
    tables: Option<Vec<Option<DataFrame>>>,
    globals: Partial,
    rows_done: bool,
    /// Per-customer rows in spill files: per table, per shard, per customer id range.
    row_files: BTreeMap<usize, Vec<Vec<Option<PathBuf>>>>,
    /// Per per-customer table, its columns with no row.
    row_schemas: BTreeMap<usize, DataFrame>,
    /// The orders source its customers come from (id ranges).
    source: Option<String>,
    busy: Duration,
    staged: bool,
}

impl StageState<'_> {
    /// Shard `shard`'s rows of per-customer table `table`, in customer_id order.
    fn shard_rows(&self, table: usize, shard: usize) -> Result<DataFrame> {
        let files = self.row_files.get(&table).and_then(|shards| shards.get(shard));
        self.rows_of(table, files.into_iter().flatten().flatten())
    }

    /// Every shard's rows of per-customer table `table` in customer id range `range`.
    fn range_rows(&self, table: usize, range: usize) -> Result<DataFrame> {
        let shards = self.row_files.get(&table).map(Vec::as_slice).unwrap_or_default();
        self.rows_of(
            table,
            shards
                .iter()
                .filter_map(|ranges| ranges.get(range).cloned().flatten())
                .collect::<Vec<_>>()
                .iter(),
        )
    }

    fn rows_of<'p>(&self, table: usize, files: impl Iterator<Item = &'p PathBuf>) -> Result<DataFrame> {
        let mut all: Option<DataFrame> = None;
        for file in files {
            let part = source::read_spill(file)?;
            match &mut all {
                Some(all) => {
                    all.vstack_mut(&part)?;
                }
                None => all = Some(part),
            }
        }
        match all {
            Some(all) => Ok(all),
            None => Ok(self.row_schemas.get(&table).cloned().unwrap_or_default()),
        }
    }

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
    spilled: &'a BTreeMap<String, SpilledOrders>,
    whole: &'a BTreeMap<String, SourceData>,
    /// Each survey source's answers per shard.
    survey_parts: BTreeMap<String, Vec<crate::core::input::SurveyAnswers>>,
    shards: usize,
    dir: &'a Path,
    sink: &'a dyn Sink,
    states: Vec<StageState<'a>>,
    level_of: BTreeMap<usize, usize>,
    key_values: Vec<(String, String)>,
    as_of_days: Option<i32>,
    sweeps: usize,
    row_bytes: u64,
    reports: Vec<(usize, StageReport)>,
}

impl<'a> Sweeps<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        plan: &'a Plan,
        selected: &BTreeSet<usize>,
        spilled: &'a BTreeMap<String, SpilledOrders>,
        whole: &'a BTreeMap<String, SourceData>,
        shards: usize,
        dir: &'a Path,
        manifest: &Manifest,
        sink: &'a dyn Sink,
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
                tables: None,
                globals: Vec::new(),
                rows_done: false,
                row_files: BTreeMap::new(),
                row_schemas: BTreeMap::new(),
                source: plan.source_of(index),
                busy: Duration::ZERO,
                staged: false,
            })
            .collect();
        Sweeps {
            plan,
            spilled,
            whole,
            survey_parts: BTreeMap::new(),
            shards,
            dir,
            sink,
            states,
            level_of,
            key_values: file_metadata(&plan.config, manifest),
            as_of_days: manifest
                .as_of
                .as_deref()
                .and_then(|d| d.parse().ok())
                .map(crate::core::period::to_days),
            sweeps: 0,
            row_bytes: 0,
            reports: Vec::new(),
        }
    }

    /// Sweep until every stage is complete and staged; the reports by level, in config order
    /// within one.
    fn run(&mut self) -> Result<Vec<StageReport>> {
        self.split_surveys()?;
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

    /// Each survey's answers split by the shard of their customer_id.
    fn split_surveys(&mut self) -> Result<()> {
        for (name, data) in self.whole {
            let Some(answers) = data.survey() else { continue };
            let shard_of = shard_of_ids(answers.answers.column("customer_id")?, self.shards)?;
            let parts = (0..self.shards as u32)
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

    /// One read of every shard, each stage taking its step on it.
    fn sweep(&mut self, steps: &[Step]) -> Result<()> {
        let sweep = self.sweeps;
        self.sweeps += 1;
        let active: Vec<String> = self
            .states
            .iter()
            .zip(steps)
            .filter(|(_, step)| **step != Step::Wait)
            .map(|(state, step)| format!("{} {step:?}", self.plan.config.stages[state.index].name))
            .collect();
        tracing::info!("sweep {sweep} over {} shards: {}", self.shards, active.join(", "));
        let progress = crate::telemetry::progress_bar(self.shards as u64, "shards");
        for shard in 0..self.shards {
            let sources = self.shard_sources(shard, steps)?;
            for position in 0..self.states.len() {
                let step = steps[position];
                if step == Step::Wait {
                    continue;
                }
                let clock = Instant::now();
                let index = self.states[position].index;
                let stage_name = &self.plan.config.stages[index].name;
                self.step(position, step, shard, &sources)
                    .with_context(|| format!("stage `{stage_name}` ({})", self.plan.config.stages[index].kind.name))?;
                self.states[position].busy += clock.elapsed();
            }
            progress.inc(1);
            drop(sources);
            crate::telemetry::release_freed_memory();
            tracing::debug!("sweep {sweep}, shard {shard} done: {}", crate::telemetry::memory());
        }
        progress.finish_and_clear();
        Ok(())
    }

    /// Shard `shard`'s sources: each orders source's shared tables, built from its spill file,
    /// each survey's answers of its customers, spend whole.
    fn shard_sources(&self, shard: usize, steps: &[Step]) -> Result<BTreeMap<String, SourceData>> {
        let mut needed = BTreeSet::new();
        for (state, step) in self.states.iter().zip(steps) {
            if *step != Step::Wait {
                needed.extend(source_names(self.plan, state.index));
            }
        }
        let mut sources = BTreeMap::new();
        for name in needed {
            let data = if let Some(spilled) = self.spilled.get(&name) {
                let orders = source::read_order_shard(spilled, shard)?;
                SourceData::Orders(shared_tables(orders).with_context(|| format!("source `{name}`, shard {shard}"))?)
            } else if let Some(parts) = self.survey_parts.get(&name) {
                SourceData::Survey(parts[shard].clone())
            } else {
                match self.whole.get(&name) {
                    Some(SourceData::Spend(spend)) => SourceData::Spend(spend.clone()),
                    _ => continue,
                }
            };
            sources.insert(name, data);
        }
        Ok(sources)
    }

    /// The upstream frames of stage `position` for `shard` (`None`: the aggregate tables only,
    /// with empty frames at the per-customer ones, for finalize).
    fn upstream_frames(&self, position: usize, shard: Option<usize>) -> Result<Vec<Vec<DataFrame>>> {
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
            let mut frames = Vec::with_capacity(tables.len());
            for (table, frame) in tables.iter().enumerate() {
                frames.push(match (frame, shard) {
                    (Some(frame), _) => frame.clone(),
                    (None, Some(shard)) => dep_state.shard_rows(table, shard)?,
                    (None, None) => DataFrame::empty(),
                });
            }
            all.push(frames);
        }
        Ok(all)
    }

    /// Stage `position`'s step on `shard`.
    fn step(
        &mut self,
        position: usize,
        step: Step,
        shard: usize,
        sources: &BTreeMap<String, SourceData>,
    ) -> Result<()> {
        let index = self.states[position].index;
        let upstream = self.upstream_frames(position, Some(shard))?;
        let stages = &self.plan.config.stages;
        let frames: Vec<&[DataFrame]> = upstream.iter().map(Vec::as_slice).collect();
        let inputs = stage_inputs(self.plan, index, sources, &frames);
        let state = &self.states[position];
        let rows = crate::catch_panics(|| {
            crate::telemetry::inject_fault(&stages[index].name);
            match step {
                Step::Pass(_) => {
                    let (partial, rows) = partial_of_pass(state.stage, &inputs, &state.merged)?;
                    Ok((Some(partial), rows))
                }
                Step::Rows => Ok((None, Some(state.stage.customer_rows(&inputs, &state.globals)?))),
                Step::Wait => Ok((None, None)),
            }
        })?;
        drop(inputs);
        let (partial, rows) = rows;
        if let (Some(partial), Step::Pass(pass)) = (partial, step) {
            // Merged as they come (merges are associative), so the driver holds a few partials,
            // not one per shard.
            let state = &mut self.states[position];
            state.parts.push(partial);
            if state.parts.len() >= MERGE_AT {
                let parts = std::mem::take(&mut state.parts);
                let stage = state.stage;
                state.parts = vec![crate::catch_panics(|| stage.merge(pass, parts))?];
            }
        }
        if let Some(rows) = rows {
            let spilled = self.states[position]
                .source
                .as_ref()
                .and_then(|name| self.spilled.get(name));
            let spilled = spilled.context("per-customer rows come from an orders source")?;
            for (table, frame) in rows.into_iter().enumerate() {
                let Some(frame) = frame else { continue };
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
                        .join(format!("rows-{index}-{table}-{shard:04}-{range:04}.parquet"));
                    self.row_bytes += source::write_spill(&path, &mut part)?;
                    *file = Some(path);
                }
                let state = &mut self.states[position];
                state.row_schemas.entry(table).or_insert_with(|| frame.clear());
                state.row_files.entry(table).or_default().push(files);
            }
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
                        // Rows given with the last pass are written; otherwise they take a sweep.
                        state.rows_done = !per_customer || !state.row_files.is_empty();
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

    /// The merge of pass `pass` of stage `position`, the step after it, and finalize after the
    /// last pass.
    fn finish_pass(&mut self, position: usize, pass: usize) -> Result<Option<crate::core::stages::shard::Finalized>> {
        let upstream = self.upstream_frames(position, None)?;
        let state = &mut self.states[position];
        let stage = state.stage;
        let parts = std::mem::take(&mut state.parts);
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
            .and_then(|name| self.spilled.get(name))
            .map(|spilled| spilled.as_of)
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
            let tables = state.tables.as_ref().expect("complete");
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
                    None => {
                        let ranges = state
                            .row_files
                            .get(&table)
                            .and_then(|shards| shards.first())
                            .map_or(0, Vec::len);
                        let as_of_days = self.as_of_days;
                        let mut parts = (0..ranges.max(1)).filter_map(|range| {
                            let part = state.range_rows(table, range).and_then(|frame| {
                                let mut frame = frame.sort(
                                    ["customer_id"],
                                    SortMultipleOptions::default().with_maintain_order(true),
                                )?;
                                add_as_of(&mut frame, as_of_days)?;
                                Ok(frame)
                            });
                            // Empty ranges are left out, unless the table is empty.
                            match part {
                                Ok(frame) if frame.height() == 0 && range + 1 < ranges => None,
                                part => Some(part),
                            }
                        });
                        self.sink.stage_parts(&name, &mut parts, &metadata)
                    }
                }
                .with_context(|| format!("stage `{}` ({})", stage_config.name, stage_config.kind.name))?;
                reports.push(TableReport {
                    path: format!("{name}.parquet"),
                    table: name,
                    rows,
                });
            }
            tracing::debug!("stage `{}` staged: {}", stage_config.name, crate::telemetry::memory());
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
