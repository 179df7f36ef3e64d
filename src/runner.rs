//! Running a plan: scan each needed source once, build its shared tables, run stages level by
//! level on our own rayon pool (independent stages concurrently), stage every table, publish all
//! of them only when every stage succeeded, and write the manifest last.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use polars::prelude::DataFrame;
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
    pub path: String,
    pub rows: usize,
}

/// `OUT/_manifest.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// `running` from the moment a run holds the lock, then `succeeded` or `failed`. A run that
    /// was killed leaves `running`: never `succeeded`.
    pub status: String,
    /// Process id of the run that wrote this manifest.
    pub pid: u32,
    pub tool: String,
    pub version: String,
    pub pipeline: String,
    pub config_path: String,
    pub config_hash: String,
    pub as_of: Option<String>,
    pub timezone: String,
    pub selected_stages: Vec<String>,
    pub inputs: Vec<InputStats>,
    pub prepare_seconds: f64,
    pub stages: Vec<StageReport>,
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
    let wait = std::time::Duration::from_secs_f64(config.pipeline.lock_wait_seconds);
    let _lock = sink::RunLock::acquire(&output_dir, wait)?;
    sink::clean_stale_temps(&output_dir);

    let mut manifest = Manifest {
        status: "running".into(),
        pid: std::process::id(),
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        pipeline: config.pipeline.name.clone(),
        config_path: config.path.display().to_string(),
        config_hash: config.hash.clone(),
        as_of: None,
        timezone: config.pipeline.timezone.clone(),
        selected_stages: selected.iter().map(|&i| config.stages[i].name.clone()).collect(),
        inputs: Vec::new(),
        prepare_seconds: 0.0,
        stages: Vec::new(),
        started_at: started_at.to_rfc3339(),
        finished_at: String::new(),
        duration_seconds: 0.0,
        error: None,
    };
    sink::write_json_atomic(&output_dir, sink::MANIFEST, &manifest)?;
    let staged = Mutex::new(Vec::<StagedTable>::new());
    let result = execute(plan, options, &selected, &output_dir, &mut manifest, &staged);
    let staged = staged
        .into_inner()
        .expect("no stage panicked while holding the staging list");
    let result = result.and_then(|()| sink::publish(&output_dir, &staged));
    manifest.finished_at = chrono::Utc::now().to_rfc3339();
    manifest.duration_seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            manifest.status = "succeeded".into();
            sink::write_json_atomic(&output_dir, sink::MANIFEST, &manifest)?;
            Ok(manifest)
        }
        Err(error) => {
            sink::discard(&staged);
            manifest.status = "failed".into();
            manifest.error = Some(format!("{error:#}"));
            if let Err(manifest_error) = sink::write_json_atomic(&output_dir, sink::MANIFEST, &manifest) {
                tracing::error!("could not write the failure manifest: {manifest_error:#}");
            }
            Err(error)
        }
    }
}

/// A stage's index, its frames kept for later stages and its report, or its error.
type StageOutcome = Result<(usize, Vec<DataFrame>, StageReport)>;

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
        tracing::debug!("source `{name}` scanned: {}", memory());
        let tables = shared_tables(orders).with_context(|| format!("source `{name}`"))?;
        tracing::debug!("source `{name}` shared tables built: {}", memory());
        tracing::info!("source `{name}`: {} customers", tables.customer_facts.height());
        shared.insert(name, tables);
    }
    manifest.as_of = shared.values().map(|t| t.as_of).max().map(|d| d.to_string());
    manifest.prepare_seconds = prepare_start.elapsed().as_secs_f64();

    let threads = options.threads.unwrap_or(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("pipeline-stage-{i}"))
        .build()
        .context("cannot start the stage thread pool")?;
    let total = selected.len();
    let progress = progress_bar(total as u64, "stages");
    let shared_pages = sink::SharedPages::for_columns_of(shared.values().map(|tables| &tables.customer_facts));
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
            tracing::debug!("source `{source}`: customer_periods released: {}", memory());
        }
    };
    for (source, _) in readers_left
        .iter()
        .filter(|(_, left)| left.load(Ordering::Relaxed) == 0)
    {
        release_periods(source);
    }
    let mut outputs: BTreeMap<usize, Vec<DataFrame>> = BTreeMap::new();
    for (level_number, level) in plan.levels.iter().enumerate() {
        let stages: Vec<usize> = level.iter().copied().filter(|i| selected.contains(i)).collect();
        warm_shared_work(&stages, config, plan, &shared, &pool);
        // The stages that read customer_periods start first, so the periods are released as
        // early as they can be; each worker takes the next stage when it is done with one.
        let mut order = stages.clone();
        order.sort_by_key(|&i| !reads_periods(i));
        let run_one = |index: usize| -> StageOutcome {
            let stage_config = &config.stages[index];
            let start = Instant::now();
            let stage = stage_config
                .stage
                .as_ref()
                .expect("a validated plan has options for every stage");
            let mut inputs = StageInputs {
                shared: None,
                upstream: Vec::new(),
            };
            for input in &plan.inputs[index] {
                match input {
                    Input::Source(name) => inputs.shared = shared.get(name),
                    Input::Stage(dep) => inputs.upstream.push((
                        config.stages[*dep].name.as_str(),
                        config.stages[*dep].kind,
                        outputs.get(dep).map(|v| v.as_slice()).unwrap_or(&[]),
                    )),
                }
            }
            if inputs.shared.is_none() {
                // A stage over other stages sees the customers of the source they came from.
                inputs.shared = plan.source_of(index).and_then(|name| shared.get(&name));
            }
            // A panic inside a stage (polars or ours) becomes this stage's error, not a crash.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage.run(&inputs)));
            let mut frames = match outcome {
                Ok(result) => result,
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(anyhow::anyhow!("internal error: {message}"))
                }
            }
            .with_context(|| format!("stage `{}` ({})", stage_config.name, stage_config.kind.name))?;
            let mut tables = Vec::new();
            for (frame, table) in frames.iter_mut().zip(&stage_config.tables) {
                let written = sink::stage_table(output_dir, table, frame, &shared_pages)
                    .with_context(|| format!("stage `{}`", stage_config.name))?;
                tables.push(TableReport {
                    table: table.clone(),
                    path: written.target.display().to_string(),
                    rows: written.rows,
                });
                staged.lock().expect("staging list lock").push(written);
            }
            let report = StageReport {
                stage: stage_config.name.clone(),
                kind: stage_config.kind.name.to_string(),
                level: level_number + 1,
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
            tracing::debug!("stage `{}`: {}", report.stage, memory());
            Ok((index, frames, report))
        };
        let run_and_count = |index: usize| {
            let result = run_one(index);
            let source = plan.source_of(index).filter(|_| reads_periods(index));
            if let Some((source, left)) = source.and_then(|source| readers_left.get_key_value(&source)) {
                if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                    release_periods(source);
                }
            }
            (index, result)
        };
        let mut results: Vec<(usize, StageOutcome)> = if options.sequential {
            order.iter().map(|&i| run_and_count(i)).collect()
        } else {
            let next = AtomicUsize::new(0);
            let finished = Mutex::new(Vec::new());
            pool.scope(|scope| {
                for _ in 0..pool.current_num_threads().min(order.len()) {
                    scope.spawn(|_| {
                        while let Some(&index) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                            let outcome = run_and_count(index);
                            finished.lock().expect("finished stages lock").push(outcome);
                        }
                    });
                }
            });
            finished.into_inner().expect("finished stages lock")
        };
        // The manifest lists a level's stages in config order, however they were scheduled.
        results.sort_by_key(|(index, _)| stages.iter().position(|i| i == index));
        let results = results.into_iter().map(|(_, result)| result);
        let mut failure = None;
        for result in results {
            match result {
                Ok((index, frames, report)) => {
                    outputs.insert(index, frames);
                    manifest.stages.push(report);
                }
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        if let Some(error) = failure {
            progress.abandon();
            return Err(error);
        }
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

/// Work several stages of a level share through the memo (one lifecycle walk for `lifecycle`
/// and `clv_simple`) is computed once, before they start: inside the pool a stage cannot wait
/// for another's computation without risking a deadlock, so they would each compute it. A
/// failure here is left for the stages themselves to report.
fn warm_shared_work(
    stages: &[usize],
    config: &crate::config::Config,
    plan: &Plan,
    shared: &BTreeMap<String, SharedTables>,
    pool: &rayon::ThreadPool,
) {
    let mut askers: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for &index in stages {
        let (Some(stage), Some(source)) = (config.stages[index].stage.as_ref(), plan.source_of(index)) else {
            continue;
        };
        for key in stage.memo_keys() {
            askers.entry((source.clone(), key)).or_default().push(index);
        }
    }
    for ((source, key), indexes) in askers {
        let (Some(tables), true) = (shared.get(&source), indexes.len() > 1) else {
            continue;
        };
        let stage = config.stages[indexes[0]]
            .stage
            .as_ref()
            .expect("a stage with memo keys has options");
        let warmed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.install(|| stage.warm(tables))));
        if !matches!(warmed, Ok(Ok(()))) {
            tracing::debug!("shared work `{key}` not computed ahead; the stages compute it");
        }
    }
}

/// "RSS 1234 MB (anon 1200, file 34), peak 2345 MB, CPU 12.3 s user + 1.2 s sys" from
/// /proc/self, for debug logs at phase boundaries (empty where those files do not exist).
pub fn memory() -> String {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return String::new();
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or("?".to_string(), |kb| (kb / 1024).to_string())
    };
    // utime and stime are fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second
    // on Linux), counted after the command name's closing parenthesis.
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<u64> = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|f| f.parse().ok())
                .collect();
            let [user, sys] = fields[..] else { return None };
            Some(format!(
                ", CPU {:.2} s user + {:.2} s sys",
                user as f64 / 100.0,
                sys as f64 / 100.0
            ))
        })
        .unwrap_or_default();
    format!(
        "RSS {} MB (anon {}, file {}), peak {} MB{cpu}",
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("VmHWM:")
    )
}

/// A bar on stderr counting `what` (hidden when stderr is not a terminal, as in scheduled runs).
pub fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {{human_pos}}/{{human_len}} [{{elapsed_precise}}] {{wide_bar}}"
        ))
        .expect("the progress template is valid"),
    );
    bar
}
