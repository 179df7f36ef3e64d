//! Running the selected stages on the shared tables and staging their tables in the sink.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use polars::prelude::{AnyValue, Column, DataFrame, DataType, Scalar};

use super::schedule::{Schedule, StageOutcome};
use super::RunOptions;
use crate::core::config::Config;
use crate::core::manifest::{Manifest, StageReport, TableReport};
use crate::core::plan::{Input, Plan};
use crate::core::stages::{SourceData, StageInputs};
use crate::io::sink::{Sink, TableMetadata};

/// Run the selected stages, each as soon as the stages it reads are done, on a pool of
/// `options.threads` workers (one with `options.sequential`); their reports by level, in config
/// order within one, or the first error.
pub(super) fn run_stages(
    plan: &Plan,
    options: &RunOptions,
    selected: &BTreeSet<usize>,
    sources: &BTreeMap<String, SourceData>,
    manifest: &Manifest,
    sink: &dyn Sink,
) -> Result<Vec<StageReport>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads.unwrap_or(0))
        .thread_name(|i| format!("pipeline-stage-{i}"))
        .build()
        .context("cannot start the stage thread pool")?;
    let (order, level_of) = start_order(plan, selected);
    let runner = StageRun::new(plan, selected, sources, manifest, sink, level_of);
    let outputs = Mutex::new(BTreeMap::new());
    let run = |index: usize| runner.run(index, &outputs);
    let upstream = order
        .iter()
        .map(|&index| {
            upstream_of(plan, index)
                .into_iter()
                .filter(|dep| selected.contains(dep))
                .collect()
        })
        .collect();
    let workers = if options.sequential {
        1
    } else {
        pool.current_num_threads()
    };
    let schedule = Schedule::new(&order, upstream, &outputs, &run, workers);
    pool.scope(|scope| schedule.start(scope));
    let mut results = schedule.into_results();
    results.sort_by_key(|(index, _)| (runner.level_of[index], *index));
    let mut reports = Vec::new();
    for (_, result) in results {
        match result {
            Ok(report) => reports.push(report),
            Err(error) => {
                runner.progress.abandon();
                return Err(error);
            }
        }
    }
    runner.progress.finish_and_clear();
    Ok(reports)
}

/// The date a run describes: the latest as_of of its orders sources.
pub(super) fn as_of(sources: &BTreeMap<String, SourceData>) -> Option<chrono::NaiveDate> {
    sources.values().filter_map(|data| Some(data.orders()?.as_of)).max()
}

/// The order stages are taken in, and each one's level (for the manifest): by level; within
/// one, the stages that read customer_periods first, so the periods are released as early as
/// they can be; then those more selected stages wait for (directly or not), so the stages after
/// them can start; then config order.
pub(super) fn start_order(plan: &Plan, selected: &BTreeSet<usize>) -> (Vec<usize>, BTreeMap<usize, usize>) {
    let waiting = waiting_for(plan, selected);
    let mut level_of = BTreeMap::new();
    let mut order = Vec::new();
    for (level_number, level) in plan.levels.iter().enumerate() {
        let mut stages: Vec<usize> = level.iter().copied().filter(|i| selected.contains(i)).collect();
        stages.sort_by_key(|&i| (!reads_periods(&plan.config, i), std::cmp::Reverse(waiting[&i])));
        for &index in &stages {
            level_of.insert(index, level_number);
        }
        order.extend(stages);
    }
    (order, level_of)
}

/// For each selected stage, how many selected stages read its tables, directly or through
/// others.
fn waiting_for(plan: &Plan, selected: &BTreeSet<usize>) -> BTreeMap<usize, usize> {
    let mut readers: BTreeMap<usize, BTreeSet<usize>> = selected.iter().map(|&i| (i, BTreeSet::new())).collect();
    // Levels in reverse: a stage's readers are known before the stages it reads.
    for level in plan.levels.iter().rev() {
        for &index in level.iter().filter(|i| selected.contains(i)) {
            let mine = readers[&index].clone();
            for dep in upstream_of(plan, index) {
                if let Some(theirs) = readers.get_mut(&dep) {
                    theirs.insert(index);
                    theirs.extend(&mine);
                }
            }
        }
    }
    readers.into_iter().map(|(index, all)| (index, all.len())).collect()
}

fn reads_periods(config: &Config, index: usize) -> bool {
    config.stages[index]
        .stage
        .as_ref()
        .is_some_and(|stage| stage.reads_customer_periods())
}

/// The stages `index` reads.
pub(super) fn upstream_of(plan: &Plan, index: usize) -> Vec<usize> {
    plan.inputs[index]
        .iter()
        .filter_map(|input| match input {
            Input::Stage(dep) => Some(*dep),
            Input::Source(_) => None,
        })
        .collect()
}

/// What every stage of one run shares: its inputs, where its tables go, and when each source's
/// customer_periods can be released.
struct StageRun<'a> {
    plan: &'a Plan,
    sources: &'a BTreeMap<String, SourceData>,
    sink: &'a dyn Sink,
    level_of: BTreeMap<usize, usize>,
    /// Stages whose frames a selected stage reads; the others' frames are dropped once written.
    read_later: BTreeSet<usize>,
    /// Per source, the selected stages reading its customer_periods that have not finished.
    readers_left: BTreeMap<String, AtomicUsize>,
    /// What every table's file says about the run, and the date its `as_of` column holds.
    key_values: Vec<(String, String)>,
    as_of_days: Option<i32>,
    progress: indicatif::ProgressBar,
}

impl<'a> StageRun<'a> {
    fn new(
        plan: &'a Plan,
        selected: &BTreeSet<usize>,
        sources: &'a BTreeMap<String, SourceData>,
        manifest: &Manifest,
        sink: &'a dyn Sink,
        level_of: BTreeMap<usize, usize>,
    ) -> Self {
        let read_later = selected.iter().flat_map(|&index| upstream_of(plan, index)).collect();
        let readers_left = sources
            .keys()
            .map(|source| {
                let readers = selected
                    .iter()
                    .filter(|&&i| reads_periods(&plan.config, i) && plan.source_of(i).as_deref() == Some(source))
                    .count();
                (source.clone(), AtomicUsize::new(readers))
            })
            .collect();
        let run = StageRun {
            plan,
            sources,
            sink,
            level_of,
            read_later,
            readers_left,
            key_values: file_metadata(&plan.config, manifest),
            as_of_days: as_of(sources).map(crate::core::period::to_days),
            progress: crate::telemetry::progress_bar(selected.len() as u64, "stages"),
        };
        for (source, left) in &run.readers_left {
            if left.load(Ordering::Relaxed) == 0 {
                run.release_periods(source);
            }
        }
        run
    }

    /// Run stage `index` on its inputs (the frames of the stages it reads are in `outputs`)
    /// and stage its tables; its frames are returned when a later stage reads them.
    fn run(&self, index: usize, outputs: &Mutex<BTreeMap<usize, Arc<Vec<DataFrame>>>>) -> StageOutcome {
        let start = Instant::now();
        let stage_config = &self.plan.config.stages[index];
        let stage = stage_config
            .stage
            .as_ref()
            .expect("a validated plan has options for every stage");
        // The stages this one reads are done: their frames are held while it runs.
        let upstream: Vec<(usize, Arc<Vec<DataFrame>>)> = {
            let outputs = outputs.lock().expect("stage outputs lock");
            upstream_of(self.plan, index)
                .into_iter()
                .map(|dep| (dep, outputs.get(&dep).cloned().unwrap_or_default()))
                .collect()
        };
        let inputs = self.inputs(index, &upstream);
        // A panic inside a stage (polars or ours) becomes this stage's error, not a crash.
        let frames = crate::catch_panics(|| {
            crate::telemetry::inject_fault(&stage_config.name);
            crate::core::stages::shard::run_one_shard(&**stage, &inputs)
        });
        drop(inputs);
        drop(upstream);
        self.done_reading(index);
        let context = || format!("stage `{}` ({})", stage_config.name, stage_config.kind.name);
        let mut frames = frames.with_context(context)?;
        let tables = self.stage_tables(index, &mut frames).with_context(context)?;
        let report = StageReport {
            stage: stage_config.name.clone(),
            kind: stage_config.kind.name.to_string(),
            level: self.level_of[&index] + 1,
            duration_seconds: start.elapsed().as_secs_f64(),
            tables,
        };
        if !self.read_later.contains(&index) {
            frames = Vec::new();
        }
        self.progress.inc(1);
        tracing::info!(
            "stage `{}` done in {:.3} s ({} rows)",
            report.stage,
            report.duration_seconds,
            report.tables.iter().map(|t| t.rows).sum::<usize>()
        );
        tracing::debug!("stage `{}`: {}", report.stage, crate::telemetry::memory());
        Ok((index, frames, report))
    }

    /// The stage's sources (for a stage over other stages, the orders source they came from)
    /// and its input stages' frames.
    fn inputs<'b>(&'b self, index: usize, upstream: &'b [(usize, Arc<Vec<DataFrame>>)]) -> StageInputs<'b> {
        let frames: Vec<&[DataFrame]> = upstream.iter().map(|(_, frames)| frames.as_slice()).collect();
        stage_inputs(self.plan, index, self.sources, &frames)
    }

    /// Stage `frames` (the stage's tables, in order) in the sink, each with the `as_of` column.
    fn stage_tables(&self, index: usize, frames: &mut [DataFrame]) -> Result<Vec<TableReport>> {
        let mut reports = Vec::new();
        for (frame, (table, metadata)) in frames
            .iter_mut()
            .zip(tables_of(&self.plan.config, index, &self.key_values))
        {
            // The column is written, not kept for the stages that read this one.
            add_as_of(frame, self.as_of_days)?;
            let rows = self.sink.stage(&table, frame, &metadata);
            if self.as_of_days.is_some() {
                frame.drop_in_place("as_of").ok();
            }
            reports.push(TableReport {
                path: format!("{table}.parquet"),
                table,
                rows: rows?,
            });
        }
        Ok(reports)
    }

    /// A stage that read customer_periods is done: the last one of a source releases them, so
    /// the stages still running reuse their memory.
    fn done_reading(&self, index: usize) {
        if !reads_periods(&self.plan.config, index) {
            return;
        }
        let source = self.plan.source_of(index);
        if let Some((source, left)) = source.and_then(|source| self.readers_left.get_key_value(&source)) {
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.release_periods(source);
            }
        }
    }

    fn release_periods(&self, source: &str) {
        if let Some(tables) = self.sources.get(source).and_then(SourceData::orders) {
            tables.release_customer_periods();
            tracing::debug!(
                "source `{source}`: customer_periods released: {}",
                crate::telemetry::memory()
            );
        }
    }
}

/// Stage `index`'s inputs: those of `sources` it reads (`source_names`), and `upstream`, the
/// frames of the stages it reads in `upstream_of` order.
pub(super) fn stage_inputs<'b>(
    plan: &'b Plan,
    index: usize,
    sources: &'b BTreeMap<String, SourceData>,
    upstream: &[&'b [DataFrame]],
) -> StageInputs<'b> {
    let stages = &plan.config.stages;
    let mut inputs = StageInputs {
        sources: Vec::new(),
        upstream: upstream_of(plan, index)
            .into_iter()
            .zip(upstream)
            .map(|(dep, frames)| (stages[dep].name.as_str(), stages[dep].kind, *frames))
            .collect(),
    };
    for name in source_names(plan, index) {
        if let Some((name, data)) = sources.get_key_value(&name) {
            inputs.sources.push((name.as_str(), data));
        }
    }
    inputs
}

/// The sources stage `index` reads: those in its `input`, or for a stage over other stages, the
/// orders source they came from.
pub(super) fn source_names(plan: &Plan, index: usize) -> Vec<String> {
    let mut names: Vec<String> = plan.inputs[index]
        .iter()
        .filter_map(|input| match input {
            Input::Source(name) => Some(name.clone()),
            Input::Stage(_) => None,
        })
        .collect();
    if names.is_empty() {
        names.extend(plan.source_of(index));
    }
    names
}

/// Each table of stage `index`, in order: its name and what its file says about it.
pub(super) fn tables_of(
    config: &Config,
    index: usize,
    key_values: &[(String, String)],
) -> Vec<(String, TableMetadata)> {
    let stage_config = &config.stages[index];
    let suffixes = match stage_config.stage.as_ref().map(|stage| stage.tables()) {
        Some(custom) if !custom.is_empty() => custom,
        _ => stage_config.kind.tables.to_vec(),
    };
    stage_config
        .tables
        .iter()
        .zip(suffixes)
        .map(|(table, suffix)| {
            let metadata = TableMetadata {
                kind: stage_config.kind.name,
                suffix,
                key_values: key_values.to_vec(),
            };
            (table.clone(), metadata)
        })
        .collect()
}

/// The run's date as the table's `as_of` column (when the run has one).
pub(super) fn add_as_of(frame: &mut DataFrame, as_of_days: Option<i32>) -> Result<()> {
    if let Some(days) = as_of_days {
        let value = Scalar::new(DataType::Date, AnyValue::Date(days));
        frame.with_column(Column::new_scalar("as_of".into(), value, frame.height()))?;
    }
    Ok(())
}

/// What every table's file says about the run.
pub(super) fn file_metadata(config: &Config, manifest: &Manifest) -> Vec<(String, String)> {
    let mut key_values = vec![
        ("as_of".to_string(), manifest.as_of.clone().unwrap_or_default()),
        ("timezone".to_string(), config.pipeline.timezone.clone()),
        ("run_id".to_string(), manifest.run_id.clone()),
        ("config_hash".to_string(), config.hash.clone()),
        (
            "tool_version".to_string(),
            format!("{} {}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")),
        ),
    ];
    if let Some(currency) = manifest.inputs.iter().find_map(|input| input.currency.clone()) {
        key_values.push(("currency".to_string(), currency));
    }
    key_values
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In the sample config `lifecycle` is read by `clv_simple` (its churn), `lifecycle_by_channel`
    /// and, through `clv_simple`, `segments`: it starts before the other stages of its level
    /// that read customer_periods.
    #[test]
    fn stages_others_wait_for_start_first() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let plan = crate::core::plan::load_plan(&root.join("pipelines/retail.toml")).expect("sample config");
        let index = |name: &str| plan.config.stages.iter().position(|s| s.name == name).unwrap();
        let selected: BTreeSet<usize> = (0..plan.config.stages.len()).collect();
        let waiting = waiting_for(&plan, &selected);
        assert_eq!(waiting[&index("lifecycle")], 3);
        assert_eq!(waiting[&index("clv_simple")], 2);
        assert_eq!(waiting[&index("segments")], 0);
        let (order, level_of) = start_order(&plan, &selected);
        assert_eq!(order.len(), selected.len());
        let position = |name: &str| order.iter().position(|&i| i == index(name)).unwrap();
        assert!(position("lifecycle") < position("cohorts"), "{order:?}");
        assert!(position("lifecycle") < position("repeat"), "{order:?}");
        assert!(level_of[&index("clv_simple")] > level_of[&index("lifecycle")]);
    }
}
