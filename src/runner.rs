//! Running a plan: scan each needed source once, build its shared tables, run stages level by
//! level on our own rayon pool (independent stages concurrently), stage every table, publish all
//! of them only when every stage succeeded, and write the manifest last.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use polars::prelude::{AnyValue, Column, DataFrame, DataType, Scalar};
use serde::Serialize;

use crate::config::AsOf;
use crate::plan::{Input, Plan};
use crate::prepare::{shared_tables, SharedTables};
use crate::sink::{self, StagedTable};
use crate::source::{self, InputStats};
use crate::stages::StageInputs;
use crate::UsageError;

/// Command-line overrides of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub select: Vec<String>,
    pub as_of: Option<AsOf>,
    pub output_dir: Option<PathBuf>,
    pub threads: Option<usize>,
    /// Run independent stages one after another instead of concurrently (benchmarks).
    pub sequential: bool,
}

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

/// Run the plan; on failure the previous outputs stay as they were and the manifest says why.
pub fn run(plan: &Plan, options: &RunOptions) -> Result<Manifest> {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let config = &plan.config;
    let output_dir = options
        .output_dir
        .clone()
        .unwrap_or_else(|| config.pipeline.output_dir.clone());
    let selected = plan.select(&options.select).map_err(UsageError::Usage)?;
    // A date given on the command line is checked against the stages' date options before
    // any data is read, as the config's own as_of is when the plan is loaded.
    if let Some(AsOf::Date(as_of)) = options.as_of {
        for &index in &selected {
            let stage = &config.stages[index];
            if let Some(problem) = stage.stage.as_ref().and_then(|options| options.check_as_of(as_of)) {
                return Err(UsageError::Usage(format!("stage `{}`: {problem} (--as-of {as_of})", stage.name)).into());
            }
        }
    }
    let wait = std::time::Duration::from_secs_f64(config.pipeline.lock_wait_seconds);
    let _lock = sink::RunLock::acquire(&output_dir, wait)?;
    sink::clean_stale_temps(&output_dir);
    let output_dir = std::path::absolute(&output_dir).unwrap_or(output_dir);
    let run_id = format!("{}-{}", started_at.format("%Y%m%dT%H%M%S%3fZ"), std::process::id());
    crate::logging::set_run_id(&run_id);

    let mut manifest = Manifest {
        status: "running".into(),
        run_id: run_id.clone(),
        pid: std::process::id(),
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        pipeline: config.pipeline.name.clone(),
        config_path: std::path::absolute(&config.path)
            .unwrap_or_else(|_| config.path.clone())
            .display()
            .to_string(),
        output_dir: output_dir.display().to_string(),
        snapshot: None,
        config_hash: config.hash.clone(),
        as_of: None,
        timezone: config.pipeline.timezone.clone(),
        selected_stages: selected.iter().map(|&i| config.stages[i].name.clone()).collect(),
        inputs: Vec::new(),
        prepare_seconds: 0.0,
        stages: Vec::new(),
        carried_over: Vec::new(),
        warnings: Vec::new(),
        started_at: started_at.to_rfc3339(),
        finished_at: String::new(),
        duration_seconds: 0.0,
        error: None,
    };
    sink::write_json_atomic(&output_dir, sink::LAST_RUN, &manifest)?;
    let result = sink::Snapshot::begin(&output_dir, &run_id).and_then(|snapshot| {
        let staged = Mutex::new(Vec::<StagedTable>::new());
        let result = crate::catch_panics(|| execute(plan, options, &selected, &snapshot.dir, &mut manifest, &staged));
        // A panic caught above may have left the list's lock poisoned: its entries are whole.
        let staged = staged.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        let published = result
            .and_then(|()| sink::publish(&snapshot.dir, &staged))
            .and_then(|()| {
                // The tables of the configured stages this run did not run.
                let others: BTreeSet<String> = (0..config.stages.len())
                    .filter(|index| !selected.contains(index))
                    .flat_map(|index| config.stages[index].tables.iter().map(|t| format!("{t}.parquet")))
                    .collect();
                carry_over(&output_dir, &snapshot, &others, &mut manifest)
            })
            .and_then(|()| {
                manifest.warnings = crate::logging::take_warnings();
                manifest.status = "succeeded".into();
                manifest.finished_at = chrono::Utc::now().to_rfc3339();
                manifest.duration_seconds = started.elapsed().as_secs_f64();
                let as_of = manifest.as_of.clone().unwrap_or_else(|| "none".into());
                manifest.snapshot = Some(snapshot.final_dir(&as_of).display().to_string());
                sink::Snapshot::publish(snapshot, &as_of, &manifest, config.pipeline.keep_runs)
            });
        if published.is_err() {
            sink::discard(&staged);
        }
        published
    });
    manifest.finished_at = chrono::Utc::now().to_rfc3339();
    manifest.duration_seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(_) => {
            sink::write_json_atomic(&output_dir, sink::LAST_RUN, &manifest)?;
            Ok(manifest)
        }
        Err(error) => {
            // The staging folder goes; `latest` and its manifest stay as they were.
            sink::clean_stale_temps(&output_dir);
            manifest.status = "failed".into();
            manifest.warnings.extend(crate::logging::take_warnings());
            manifest.snapshot = None;
            manifest.error = Some(format!("{error:#}"));
            if let Err(manifest_error) = sink::write_json_atomic(&output_dir, sink::LAST_RUN, &manifest) {
                tracing::error!("could not write `{}`: {manifest_error:#}", sink::LAST_RUN);
            }
            Err(error)
        }
    }
}

/// Carry `tables` (files of the configured stages a `--select` run did not run) from the
/// previous snapshot into the new one, recording where each came from. Tables of stages no
/// longer configured are not carried.
fn carry_over(
    output_dir: &std::path::Path,
    snapshot: &sink::Snapshot,
    tables: &BTreeSet<String>,
    manifest: &mut Manifest,
) -> Result<()> {
    let Some(previous) = sink::latest_snapshot(output_dir).filter(|_| !tables.is_empty()) else {
        return Ok(());
    };
    let earlier: serde_json::Value = std::fs::read_to_string(previous.join(sink::MANIFEST))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    // The as_of of each table in the previous snapshot: its own if it was carried, else the run's.
    let origin = |path: &str| -> (Option<String>, Option<String>) {
        let text = |value: &serde_json::Value| value.as_str().map(str::to_string);
        if let Some(carried) = earlier["carried_over"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["path"] == path))
        {
            return (text(&carried["from_run_id"]), text(&carried["as_of"]));
        }
        (text(&earlier["run_id"]), text(&earlier["as_of"]))
    };
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&previous)
        .with_context(|| format!("reading the previous snapshot `{}`", previous.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    for file in files {
        let name = file
            .file_name()
            .expect("listed files have names")
            .to_string_lossy()
            .to_string();
        if !tables.contains(&name) {
            continue;
        }
        snapshot.carry_over(&file)?;
        let (from_run_id, as_of) = origin(&name);
        manifest.carried_over.push(CarriedTable {
            table: name.trim_end_matches(".parquet").to_string(),
            path: name,
            from_run_id,
            as_of,
        });
    }
    Ok(())
}

/// A stage's index, its frames kept for later stages and its report, or its error.
type StageOutcome = Result<(usize, Vec<DataFrame>, StageReport)>;

/// Which stages have started and finished, and how many workers are taking stages.
struct Board {
    /// Per position in `Schedule::order`.
    started: Vec<bool>,
    /// Per position: waiting for the shared work (`shared_work`) the schedule computes first.
    held: Vec<bool>,
    done: BTreeSet<usize>,
    failed: bool,
    workers: usize,
}

/// Stages run as soon as the stages they read are done, by at most `workers` workers on the
/// stage pool, each taking the first ready stage in `order` when it is free. A worker with
/// nothing ready ends (its thread helps the running stages' parallel work instead of waiting);
/// one that finishes a stage starts more workers when that made several stages ready. After a
/// failure no stage starts; the running ones finish.
struct Schedule<'a> {
    order: &'a [usize],
    /// The selected stages each stage of `order` reads.
    upstream: Vec<Vec<usize>>,
    board: Mutex<Board>,
    outputs: &'a Mutex<BTreeMap<usize, std::sync::Arc<Vec<DataFrame>>>>,
    results: Mutex<Vec<(usize, Result<StageReport>)>>,
    run: &'a (dyn Fn(usize) -> StageOutcome + Sync),
    workers: usize,
}

impl<'a> Schedule<'a> {
    /// Positions in `order` of the stages not started whose inputs are done.
    fn ready<'b>(&'b self, board: &'b Board) -> impl Iterator<Item = usize> + 'b {
        (0..self.order.len()).filter(|&p| {
            !board.started[p] && !board.held[p] && self.upstream[p].iter().all(|dep| board.done.contains(dep))
        })
    }

    /// Start workers on the stages that need no shared work (leaving a thread for it), compute
    /// the shared work with `warm` on this thread, then start workers for the rest.
    fn start<'s>(&'s self, scope: &rayon::Scope<'s>, warm: &dyn Fn()) {
        let early = {
            let mut board = self.board.lock().expect("schedule lock");
            let early = self.ready(&board).count().min(self.workers - 1);
            board.workers = early;
            early
        };
        for _ in 0..early {
            scope.spawn(move |scope| self.work(scope));
        }
        warm();
        let more = {
            let mut board = self.board.lock().expect("schedule lock");
            board.held.fill(false);
            let ready = if board.failed { 0 } else { self.ready(&board).count() };
            let more = ready.min(self.workers - board.workers);
            board.workers += more;
            more
        };
        for _ in 0..more {
            scope.spawn(move |scope| self.work(scope));
        }
    }

    fn work<'s>(&'s self, scope: &rayon::Scope<'s>) {
        loop {
            let index = {
                let mut board = self.board.lock().expect("schedule lock");
                let next = if board.failed { None } else { self.ready(&board).next() };
                let Some(position) = next else {
                    board.workers -= 1;
                    return;
                };
                board.started[position] = true;
                self.order[position]
            };
            let outcome = (self.run)(index);
            let more = {
                let mut board = self.board.lock().expect("schedule lock");
                let result = match outcome {
                    Ok((index, frames, report)) => {
                        if !frames.is_empty() {
                            let frames = std::sync::Arc::new(frames);
                            self.outputs.lock().expect("stage outputs lock").insert(index, frames);
                        }
                        board.done.insert(index);
                        Ok(report)
                    }
                    Err(error) => {
                        board.failed = true;
                        Err(error)
                    }
                };
                self.results.lock().expect("stage results lock").push((index, result));
                // This worker takes one of the ready stages; more workers for the others.
                let ready = if board.failed { 0 } else { self.ready(&board).count() };
                let more = ready.saturating_sub(1).min(self.workers - board.workers);
                board.workers += more;
                more
            };
            for _ in 0..more {
                scope.spawn(move |scope| self.work(scope));
            }
        }
    }
}

fn execute(
    plan: &Plan,
    options: &RunOptions,
    selected: &BTreeSet<usize>,
    output_dir: &std::path::Path,
    manifest: &mut Manifest,
    staged: &Mutex<Vec<StagedTable>>,
) -> Result<()> {
    let config = &plan.config;
    let as_of = options.as_of.unwrap_or(config.pipeline.as_of);
    let prepare_start = Instant::now();
    let mut shared: BTreeMap<String, SharedTables> = BTreeMap::new();
    for name in plan.sources_needed(selected) {
        let source_config = config
            .sources
            .get(&name)
            .expect("plan inputs name only configured sources");
        tracing::info!("scanning source `{name}` ({})", source_config.path.display());
        let orders = match source::scan_orders(source_config, &config.pipeline, as_of) {
            Ok(orders) => orders,
            Err(error) => {
                // Rejected data still has counts by reason: the failure manifest records them.
                if let Some(rejected) = error.downcast_ref::<source::DataRejected>() {
                    manifest.inputs.push(rejected.stats.clone());
                }
                return Err(error);
            }
        };
        tracing::info!(
            "source `{name}`: {} rows read, {} orders, as of {}",
            orders.stats.rows_read,
            orders.stats.orders,
            orders.as_of
        );
        manifest.inputs.push(orders.stats.clone());
        tracing::debug!("source `{name}` scanned: {}", crate::telemetry::memory());
        let tables = shared_tables(orders).with_context(|| format!("source `{name}`"))?;
        tracing::debug!("source `{name}` shared tables built: {}", crate::telemetry::memory());
        tracing::info!("source `{name}`: {} customers", tables.customer_facts.height());
        shared.insert(name, tables);
    }
    let as_of_date = shared.values().map(|t| t.as_of).max();
    manifest.as_of = as_of_date.map(|d| d.to_string());
    manifest.prepare_seconds = prepare_start.elapsed().as_secs_f64();

    let threads = options.threads.unwrap_or(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("pipeline-stage-{i}"))
        .build()
        .context("cannot start the stage thread pool")?;
    let total = selected.len();
    let progress = crate::telemetry::progress_bar(total as u64, "stages");
    let shared_pages = sink::SharedPages::for_columns_of(shared.values().map(|tables| &tables.customer_facts));
    // What every table's file says about the run.
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
    // Stages whose tables a selected stage reads: the others' frames are dropped once written,
    // so the stages after them reuse that memory instead of the kernel handing out fresh pages.
    let read_later: BTreeSet<usize> = selected
        .iter()
        .flat_map(|&index| &plan.inputs[index])
        .filter_map(|input| match input {
            Input::Stage(dep) => Some(*dep),
            Input::Source(_) => None,
        })
        .collect();
    // Each source's customer_periods are released when the last selected stage reading them is
    // done (levels run in order, so that stage is in the last level with a reader); the stages
    // still running then reuse their memory.
    let reads_periods = |index: usize| {
        config.stages[index]
            .stage
            .as_ref()
            .is_some_and(|stage| stage.reads_customer_periods())
    };
    let readers_left: BTreeMap<String, AtomicUsize> = shared
        .keys()
        .map(|source| {
            let readers = selected
                .iter()
                .filter(|&&i| reads_periods(i) && plan.source_of(i).as_deref() == Some(source.as_str()))
                .count();
            (source.clone(), AtomicUsize::new(readers))
        })
        .collect();
    let release_periods = |source: &str| {
        if let Some(tables) = shared.get(source) {
            tables.release_customer_periods();
            tracing::debug!(
                "source `{source}`: customer_periods released: {}",
                crate::telemetry::memory()
            );
        }
    };
    for (source, _) in readers_left
        .iter()
        .filter(|(_, left)| left.load(Ordering::Relaxed) == 0)
    {
        release_periods(source);
    }
    // The level of each stage (for the manifest) and the order stages start in: by level, the
    // long ones first within one (`Stage::is_long`: the clv fits, which the short stages then
    // fill the other worker beside), then the stages that read customer_periods (so the
    // periods are released as early as they can be), then config order. A stage starts as soon as the stages it reads
    // are done, not when its whole level before is: a segment summary runs beside a long
    // `clv` fit instead of after it.
    let mut level_of: BTreeMap<usize, usize> = BTreeMap::new();
    let mut order: Vec<usize> = Vec::new();
    for (level_number, level) in plan.levels.iter().enumerate() {
        let mut stages: Vec<usize> = level.iter().copied().filter(|i| selected.contains(i)).collect();
        let is_long = |index: usize| config.stages[index].stage.as_ref().is_some_and(|stage| stage.is_long());
        stages.sort_by_key(|&i| (!is_long(i), !reads_periods(i)));
        for &index in &stages {
            level_of.insert(index, level_number);
        }
        order.extend(stages);
    }
    // Work several stages share (one lifecycle walk for `lifecycle` and `clv_simple`) is
    // computed once, ahead of them; the stages that need none start beside it.
    let work = shared_work(&order, config, plan);
    let waiting: BTreeSet<usize> = work.iter().flat_map(|(_, _, stages)| stages.iter().copied()).collect();
    let warm = || warm_shared_work(&work, config, &shared);
    let upstream_of = |index: usize| -> Vec<usize> {
        plan.inputs[index]
            .iter()
            .filter_map(|input| match input {
                Input::Stage(dep) => Some(*dep),
                Input::Source(_) => None,
            })
            .collect()
    };
    // Frames of finished stages that a later stage reads.
    let outputs: Mutex<BTreeMap<usize, std::sync::Arc<Vec<DataFrame>>>> = Mutex::new(BTreeMap::new());
    let run_one = |index: usize| -> StageOutcome {
        let stage_config = &config.stages[index];
        let start = Instant::now();
        let stage = stage_config
            .stage
            .as_ref()
            .expect("a validated plan has options for every stage");
        // The stages this one reads are done: their frames are held while it runs.
        let upstream_frames: Vec<(usize, std::sync::Arc<Vec<DataFrame>>)> = {
            let outputs = outputs.lock().expect("stage outputs lock");
            upstream_of(index)
                .into_iter()
                .map(|dep| (dep, outputs.get(&dep).cloned().unwrap_or_default()))
                .collect()
        };
        let mut inputs = StageInputs {
            shared: None,
            upstream: Vec::new(),
        };
        for input in &plan.inputs[index] {
            if let Input::Source(name) = input {
                inputs.shared = shared.get(name);
            }
        }
        for (dep, frames) in &upstream_frames {
            inputs.upstream.push((
                config.stages[*dep].name.as_str(),
                config.stages[*dep].kind,
                frames.as_slice(),
            ));
        }
        if inputs.shared.is_none() {
            // A stage over other stages sees the customers of the source they came from.
            inputs.shared = plan.source_of(index).and_then(|name| shared.get(&name));
        }
        // A panic inside a stage (polars or ours) becomes this stage's error, not a crash.
        let frames = crate::catch_panics(|| {
            crate::telemetry::inject_fault(&stage_config.name);
            stage.run(&inputs)
        });
        let mut frames =
            frames.with_context(|| format!("stage `{}` ({})", stage_config.name, stage_config.kind.name))?;
        drop(inputs);
        drop(upstream_frames);
        let mut tables = Vec::new();
        let suffixes = match stage.tables() {
            custom if !custom.is_empty() => custom,
            _ => stage_config.kind.tables.to_vec(),
        };
        for ((frame, table), suffix) in frames.iter_mut().zip(&stage_config.tables).zip(suffixes) {
            let metadata = sink::TableMetadata {
                kind: stage_config.kind.name,
                suffix,
                key_values: key_values.clone(),
            };
            // Every table says which date it describes; the column is written, not kept for
            // the stages that read this one.
            if let Some(date) = as_of_date {
                let days = crate::period::to_days(date);
                let column = Column::new_scalar(
                    "as_of".into(),
                    Scalar::new(DataType::Date, AnyValue::Date(days)),
                    frame.height(),
                );
                frame
                    .with_column(column)
                    .with_context(|| format!("stage `{}`", stage_config.name))?;
            }
            let written = sink::stage_table(output_dir, table, frame, &shared_pages, &metadata)
                .with_context(|| format!("stage `{}`", stage_config.name));
            if as_of_date.is_some() {
                frame.drop_in_place("as_of").ok();
            }
            let written = written?;
            tables.push(TableReport {
                table: table.clone(),
                path: format!("{table}.parquet"),
                rows: written.rows,
            });
            staged.lock().expect("staging list lock").push(written);
        }
        let report = StageReport {
            stage: stage_config.name.clone(),
            kind: stage_config.kind.name.to_string(),
            level: level_of[&index] + 1,
            duration_seconds: start.elapsed().as_secs_f64(),
            tables,
        };
        if !read_later.contains(&index) {
            frames = Vec::new();
        }
        progress.inc(1);
        tracing::info!(
            "stage `{}` done in {:.3} s ({} rows)",
            report.stage,
            report.duration_seconds,
            report.tables.iter().map(|t| t.rows).sum::<usize>()
        );
        tracing::debug!("stage `{}`: {}", report.stage, crate::telemetry::memory());
        Ok((index, frames, report))
    };
    let run_and_count = |index: usize| -> StageOutcome {
        let result = run_one(index);
        let source = plan.source_of(index).filter(|_| reads_periods(index));
        if let Some((source, left)) = source.and_then(|source| readers_left.get_key_value(&source)) {
            if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                release_periods(source);
            }
        }
        result
    };
    let schedule = Schedule {
        upstream: order
            .iter()
            .map(|&index| {
                let mut deps = upstream_of(index);
                deps.retain(|dep| level_of.contains_key(dep));
                deps
            })
            .collect(),
        order: &order,
        board: Mutex::new(Board {
            started: vec![false; order.len()],
            held: order.iter().map(|index| waiting.contains(index)).collect(),
            done: BTreeSet::new(),
            failed: false,
            workers: 0,
        }),
        outputs: &outputs,
        results: Mutex::new(Vec::new()),
        run: &run_and_count,
        workers: if options.sequential {
            1
        } else {
            pool.current_num_threads().max(1)
        },
    };
    pool.scope(|scope| schedule.start(scope, &warm));
    let mut results = schedule.results.into_inner().expect("stage results lock");
    // The manifest lists stages by level, in config order within one, however they ran.
    results.sort_by_key(|(index, _)| (level_of[index], *index));
    let mut failure = None;
    for (_, result) in results {
        match result {
            Ok(report) => manifest.stages.push(report),
            Err(error) => {
                failure.get_or_insert(error);
            }
        }
    }
    if let Some(error) = failure {
        progress.abandon();
        return Err(error);
    }
    progress.finish_and_clear();
    tracing::debug!(
        "{} (row group, column) cells written from another table's pages",
        shared_pages.reused.load(std::sync::atomic::Ordering::Relaxed)
    );
    for stats in &mut manifest.inputs {
        if let Some(source_config) = config.sources.get(&stats.source) {
            stats.scans = source::scans_started(source_config);
        }
    }
    Ok(())
}

/// Work several stages share through the memo (one lifecycle walk for `lifecycle` and
/// `clv_simple`): (source, memo key, the stages asking). It is computed once before they start
/// (`warm_shared_work`): inside the pool a stage cannot wait for another's computation without
/// risking a deadlock, so they would each compute it.
fn shared_work(stages: &[usize], config: &crate::config::Config, plan: &Plan) -> Vec<(String, String, Vec<usize>)> {
    let mut askers: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for &index in stages {
        let (Some(stage), Some(source)) = (config.stages[index].stage.as_ref(), plan.source_of(index)) else {
            continue;
        };
        for key in stage.memo_keys() {
            askers.entry((source.clone(), key)).or_default().push(index);
        }
    }
    askers
        .into_iter()
        .filter(|(_, indexes)| indexes.len() > 1)
        .map(|((source, key), indexes)| (source, key, indexes))
        .collect()
}

/// Compute `shared_work`, each by the first stage asking. A failure here is left for the
/// stages themselves to report.
fn warm_shared_work(
    work: &[(String, String, Vec<usize>)],
    config: &crate::config::Config,
    shared: &BTreeMap<String, SharedTables>,
) {
    for (source, key, indexes) in work {
        let Some(tables) = shared.get(source) else {
            continue;
        };
        let stage = config.stages[indexes[0]]
            .stage
            .as_ref()
            .expect("a stage with memo keys has options");
        let warmed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.warm(tables)));
        if !matches!(warmed, Ok(Ok(()))) {
            tracing::debug!("shared work `{key}` not computed ahead; the stages compute it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stage 0 is long; 1 and 2 are short, and 3 reads 1 and 2 (a later level than 0): on
    /// two workers 3 runs while 0 still does. One worker runs them in order. After stage 1
    /// fails, stage 3 (which reads it) never starts.
    #[test]
    fn stages_start_when_their_inputs_are_done_not_their_level() {
        let order = [0usize, 1, 2, 3];
        let upstream = vec![vec![], vec![], vec![], vec![1, 2]];
        let run_with = |workers: usize, failing: Option<usize>| {
            let events: Mutex<Vec<(usize, &str)>> = Mutex::new(Vec::new());
            let outputs = Mutex::new(BTreeMap::new());
            let run = |index: usize| -> StageOutcome {
                events.lock().unwrap().push((index, "start"));
                std::thread::sleep(std::time::Duration::from_millis(if index == 0 { 300 } else { 20 }));
                events.lock().unwrap().push((index, "end"));
                if failing == Some(index) {
                    anyhow::bail!("stage {index} failed");
                }
                let report = StageReport {
                    stage: index.to_string(),
                    kind: "test".into(),
                    level: 1,
                    duration_seconds: 0.0,
                    tables: Vec::new(),
                };
                Ok((index, vec![DataFrame::empty()], report))
            };
            let schedule = Schedule {
                order: &order,
                upstream: upstream.clone(),
                board: Mutex::new(Board {
                    started: vec![false; order.len()],
                    held: vec![false; order.len()],
                    done: BTreeSet::new(),
                    failed: false,
                    workers: 0,
                }),
                outputs: &outputs,
                results: Mutex::new(Vec::new()),
                run: &run,
                workers,
            };
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            pool.scope(|scope| schedule.start(scope, &|| {}));
            let results: Vec<(usize, bool)> = schedule
                .results
                .into_inner()
                .unwrap()
                .into_iter()
                .map(|(index, result)| (index, result.is_ok()))
                .collect();
            let kept: Vec<usize> = outputs.into_inner().unwrap().into_keys().collect();
            (events.into_inner().unwrap(), results, kept)
        };
        let position =
            |events: &[(usize, &str)], event: (usize, &str)| events.iter().position(|e| *e == event).unwrap();

        let (events, results, kept) = run_with(2, None);
        assert!(
            position(&events, (3, "start")) < position(&events, (0, "end")),
            "{events:?}"
        );
        assert!(
            position(&events, (3, "start")) > position(&events, (2, "end")),
            "{events:?}"
        );
        assert_eq!(results.len(), 4);
        assert_eq!(kept, [0, 1, 2, 3]);

        let (events, _, _) = run_with(1, None);
        let starts: Vec<usize> = events.iter().filter(|e| e.1 == "start").map(|e| e.0).collect();
        assert_eq!(starts, [0, 1, 2, 3]);

        let (events, results, kept) = run_with(2, Some(1));
        assert!(!events.contains(&(3, "start")), "{events:?}");
        assert!(
            results.contains(&(1, false)) && results.contains(&(0, true)),
            "{results:?}"
        );
        assert!(!kept.contains(&1));
    }
}
