//! Running a plan, in the order the data flows: the plan's selected stages → each needed
//! source read once into its shared tables → the stages (`stages.rs`, scheduled by
//! `schedule.rs`) → the sink, which publishes every table at once only when every stage
//! succeeded, with the manifest.

mod schedule;
mod sharded;
pub mod spark;
mod stages;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::core::config::AsOf;
use crate::core::config::{SourceConfig, SourceKind};
use crate::core::manifest::Manifest;
use crate::core::plan::Plan;
use crate::core::prepare::shared_tables;
use crate::core::stages::SourceData;
use crate::io::sink::{Sink, SnapshotSink};
use crate::io::source;
use crate::UsageError;

pub use crate::core::manifest::{CarriedTable, StageReport, TableReport};

/// Command-line overrides of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub select: Vec<String>,
    pub as_of: Option<AsOf>,
    pub output_dir: Option<PathBuf>,
    pub threads: Option<usize>,
    /// Run independent stages one after another instead of concurrently (benchmarks).
    pub sequential: bool,
    /// Run in this many customer shards with bounded memory (`sharded.rs`): the input spilled to
    /// disk by shard, the shards read one after another. `None`: from `memory_limit`, else one.
    pub shards: Option<usize>,
    /// Pick the shards from the input's size so the run stays within this many bytes
    /// (`--memory-limit`; overrides `[pipeline] memory_limit`).
    pub memory_limit: Option<u64>,
}

/// Run the plan into its output directory's snapshots; on failure the previous outputs stay as
/// they were and `_last_run.json` says why.
pub fn run(plan: &Plan, options: &RunOptions) -> Result<Manifest> {
    run_with(plan, options, &execute)
}

/// How a run reads its sources and stages its tables (`execute`, or the Spark job's).
type Execute<'e> = dyn Fn(&Plan, &RunOptions, &BTreeSet<usize>, &mut Manifest, &mut dyn Sink) -> Result<()> + 'e;

/// `run`, reading and staging with `execute`.
fn run_with(plan: &Plan, options: &RunOptions, execute: &Execute) -> Result<Manifest> {
    let settings = &plan.config.pipeline;
    let output_dir = options
        .output_dir
        .clone()
        .unwrap_or_else(|| settings.output_dir.clone());
    let output_dir = std::path::absolute(&output_dir).unwrap_or(output_dir);
    let wait = std::time::Duration::from_secs_f64(settings.lock_wait_seconds);
    let mut sink = SnapshotSink::new(&output_dir, wait, settings.keep_runs);
    run_into_with(plan, options, &output_dir, &mut sink, execute)
}

/// Run the plan into `sink` (`output` names it in the manifest).
pub fn run_into(plan: &Plan, options: &RunOptions, output: &Path, sink: &mut dyn Sink) -> Result<Manifest> {
    run_into_with(plan, options, output, sink, &execute)
}

fn run_into_with(
    plan: &Plan,
    options: &RunOptions,
    output: &Path,
    sink: &mut dyn Sink,
    execute: &Execute,
) -> Result<Manifest> {
    let started = Instant::now();
    let selected = plan.select(&options.select).map_err(UsageError::Usage)?;
    check_as_of_option(plan, options, &selected)?;
    let mut manifest = new_manifest(plan, &selected, output);
    crate::logging::set_run_id(&manifest.run_id);
    sink.start(&manifest)?;
    let result = crate::catch_panics(|| execute(plan, options, &selected, &mut manifest, &mut *sink))
        .and_then(|()| publish(plan, &selected, &mut manifest, sink, started));
    match result {
        Ok(()) => Ok(manifest),
        Err(error) => {
            manifest.status = "failed".into();
            manifest.warnings.extend(crate::logging::take_warnings());
            manifest.snapshot = None;
            manifest.error = Some(format!("{error:#}"));
            manifest.finished_at = chrono::Utc::now().to_rfc3339();
            manifest.duration_seconds = started.elapsed().as_secs_f64();
            sink.fail(&manifest);
            Err(error)
        }
    }
}

/// A date given on the command line is checked against the stages' date options before any
/// data is read, as the config's own as_of is when the plan is loaded.
fn check_as_of_option(plan: &Plan, options: &RunOptions, selected: &BTreeSet<usize>) -> Result<()> {
    let Some(AsOf::Date(as_of)) = options.as_of else {
        return Ok(());
    };
    for &index in selected {
        let stage = &plan.config.stages[index];
        if let Some(problem) = stage.stage.as_ref().and_then(|options| options.check_as_of(as_of)) {
            return Err(UsageError::Usage(format!("stage `{}`: {problem} (--as-of {as_of})", stage.name)).into());
        }
    }
    Ok(())
}

fn new_manifest(plan: &Plan, selected: &BTreeSet<usize>, output: &Path) -> Manifest {
    let config = &plan.config;
    let started_at = chrono::Utc::now();
    Manifest {
        status: "running".into(),
        run_id: format!("{}-{}", started_at.format("%Y%m%dT%H%M%S%3fZ"), std::process::id()),
        pid: std::process::id(),
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        pipeline: config.pipeline.name.clone(),
        config_path: std::path::absolute(&config.path)
            .unwrap_or_else(|_| config.path.clone())
            .display()
            .to_string(),
        output_dir: output.display().to_string(),
        snapshot: None,
        config_hash: config.hash.clone(),
        as_of: None,
        timezone: config.pipeline.timezone.clone(),
        selected_stages: selected.iter().map(|&i| config.stages[i].name.clone()).collect(),
        inputs: Vec::new(),
        prepare_seconds: 0.0,
        shards: None,
        stages: Vec::new(),
        carried_over: Vec::new(),
        warnings: Vec::new(),
        started_at: started_at.to_rfc3339(),
        finished_at: String::new(),
        duration_seconds: 0.0,
        error: None,
    }
}

/// Read the sources, run the stages and stage their tables in `sink`.
fn execute(
    plan: &Plan,
    options: &RunOptions,
    selected: &BTreeSet<usize>,
    manifest: &mut Manifest,
    sink: &mut dyn Sink,
) -> Result<()> {
    if let Some(shards) = shard_count(plan, options, selected)? {
        return sharded::execute(plan, options, selected, manifest, sink, shards);
    }
    let prepare_start = Instant::now();
    let as_of = options.as_of.unwrap_or(plan.config.pipeline.as_of);
    let sources = read_sources(plan, selected, as_of, manifest)?;
    manifest.as_of = stages::as_of(&sources).map(|d| d.to_string());
    manifest.prepare_seconds = prepare_start.elapsed().as_secs_f64();
    let facts: Vec<_> = sources
        .values()
        .filter_map(|data| Some(&data.orders()?.customer_facts))
        .collect();
    sink.share_columns_of(&facts);
    manifest.stages = stages::run_stages(plan, options, selected, &sources, manifest, &*sink)?;
    record_scans(plan, manifest);
    Ok(())
}

/// Each orders source's scans of its lines into the manifest (one, unless something rescanned).
fn record_scans(plan: &Plan, manifest: &mut Manifest) {
    for stats in &mut manifest.inputs {
        let config = plan.config.sources.get(&stats.source);
        if let Some(source_config) = config.filter(|source| source.kind == SourceKind::Orders) {
            stats.scans = source::scans_started(source_config);
        }
    }
}

/// Read each source the selected stages need, once; each source's accounting goes into the
/// manifest (also when its data is rejected).
fn read_sources(
    plan: &Plan,
    selected: &BTreeSet<usize>,
    as_of: AsOf,
    manifest: &mut Manifest,
) -> Result<BTreeMap<String, SourceData>> {
    let mut sources = BTreeMap::new();
    // Orders first: the others are read up to the run's as_of, which the orders may decide.
    let mut needed: Vec<&SourceConfig> = plan
        .sources_needed(selected)
        .iter()
        .map(|name| &plan.config.sources[name])
        .collect();
    needed.sort_by_key(|source| source.kind != SourceKind::Orders);
    for source_config in needed {
        let name = source_config.name.clone();
        tracing::info!(
            "reading {} source `{name}` ({})",
            source_config.kind.name(),
            source_config.path.display()
        );
        let data = match source_config.kind {
            SourceKind::Orders => SourceData::Orders(read_orders(plan, source_config, as_of, manifest)?),
            _ => {
                let as_of = stages::as_of(&sources).context("a survey or spend is read with an orders source")?;
                read_other_source(plan, source_config, as_of, manifest)?
            }
        };
        sources.insert(name, data);
    }
    Ok(sources)
}

/// A survey or spend source, read whole up to the run's `as_of`.
fn read_other_source(
    plan: &Plan,
    source_config: &SourceConfig,
    as_of: chrono::NaiveDate,
    manifest: &mut Manifest,
) -> Result<SourceData> {
    Ok(match source_config.kind {
        SourceKind::Survey => {
            let answers = with_rejected(
                manifest,
                source::read_survey(source_config, &plan.config.pipeline, as_of),
            )?;
            manifest.inputs.push(answers.stats.clone());
            SourceData::Survey(answers)
        }
        SourceKind::Spend => {
            let spend = with_rejected(
                manifest,
                source::read_spend(source_config, &plan.config.pipeline, as_of),
            )?;
            manifest.inputs.push(spend.stats.clone());
            SourceData::Spend(spend)
        }
        SourceKind::Orders => anyhow::bail!("orders source `{}` is not read whole here", source_config.name),
    })
}

/// The customer shards of a bounded-memory run (`None`: a whole run): `--shards`, else from the
/// memory limit (`--memory-limit`, else `[pipeline] memory_limit`) and the size of the orders
/// sources' input (`sharded::shards_for`).
fn shard_count(plan: &Plan, options: &RunOptions, selected: &BTreeSet<usize>) -> Result<Option<usize>> {
    if let Some(shards) = options.shards {
        return Ok((shards > 1).then_some(shards));
    }
    let Some(limit) = options.memory_limit.or(plan.config.pipeline.memory_limit) else {
        return Ok(None);
    };
    let lines = orders_lines(plan, selected);
    let shards = sharded::shards_for(lines, limit);
    tracing::info!(
        "memory limit {:.1} GiB, about {} order lines: {}",
        limit as f64 / (1u64 << 30) as f64,
        source::thousands(lines),
        match shards {
            Some(shards) => format!("{shards} customer shards"),
            None => "one piece".to_string(),
        }
    );
    Ok(shards)
}

/// About how many order lines the orders sources the selected stages read hold (Parquet row
/// counts, a CSV's bytes).
fn orders_lines(plan: &Plan, selected: &BTreeSet<usize>) -> u64 {
    plan.sources_needed(selected)
        .iter()
        .map(|name| &plan.config.sources[name])
        .filter(|source| source.kind == SourceKind::Orders)
        .map(source::estimated_lines)
        .sum()
}

/// `read`, with the accounting of a source whose data was rejected recorded in the manifest.
fn with_rejected<T>(manifest: &mut Manifest, read: Result<T>) -> Result<T> {
    if let Some(rejected) = read
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<source::DataRejected>())
    {
        manifest.inputs.push(rejected.stats.clone());
    }
    read
}

/// An orders source: its lines scanned once into orders, then its shared tables.
fn read_orders(
    plan: &Plan,
    source_config: &SourceConfig,
    as_of: AsOf,
    manifest: &mut Manifest,
) -> Result<crate::core::prepare::SharedTables> {
    let name = &source_config.name;
    let orders = with_rejected(
        manifest,
        source::scan_orders(source_config, &plan.config.pipeline, as_of),
    )?;
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
    Ok(tables)
}

/// Carry over the tables of configured stages this run did not run, then publish.
fn publish(
    plan: &Plan,
    selected: &BTreeSet<usize>,
    manifest: &mut Manifest,
    sink: &mut dyn Sink,
    started: Instant,
) -> Result<()> {
    let config = &plan.config;
    // The tables of the stages this run did not run, each with its stage, kind and suffix (for
    // readers of the manifest: the report).
    let mut others: BTreeMap<String, (String, &'static str, &'static str)> = BTreeMap::new();
    for index in (0..config.stages.len()).filter(|index| !selected.contains(index)) {
        for (table, metadata) in stages::tables_of(config, index, &[]) {
            others.insert(
                table,
                (config.stages[index].name.clone(), metadata.kind, metadata.suffix),
            );
        }
    }
    sink.carry_over(&others.keys().cloned().collect(), manifest)?;
    for carried in &mut manifest.carried_over {
        if let Some((stage, kind, suffix)) = others.get(&carried.table) {
            carried.stage = Some(stage.clone());
            carried.kind = Some(kind.to_string());
            carried.suffix = Some(suffix.to_string());
        }
    }
    manifest.warnings = crate::logging::take_warnings();
    manifest.status = "succeeded".into();
    manifest.finished_at = chrono::Utc::now().to_rfc3339();
    manifest.duration_seconds = started.elapsed().as_secs_f64();
    if !config.report {
        return sink.publish(manifest);
    }
    // `[report]`: the page of the tables as published, in the snapshot with them.
    sink.publish_with_files(manifest, &|dir, previous, manifest| {
        let page = crate::catch_panics(|| crate::report::render_staged(dir, manifest, previous))
            .context("writing `report.html` (`[report]`)")?;
        Ok(vec![("report.html".to_string(), page)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sink::MemorySink;

    /// The runner against the in-memory sink: every table of the sample config is published
    /// together; a failing stage publishes nothing and leaves the last publication; a
    /// `--select` run carries the other stages' tables over.
    #[test]
    fn a_run_publishes_all_its_tables_or_none() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let plan = crate::core::plan::load_plan(&root.join("pipelines/retail.toml")).expect("sample config loads");
        let tables: BTreeSet<String> = plan.config.stages.iter().flat_map(|s| s.tables.clone()).collect();
        let mut sink = MemorySink::default();
        let options = RunOptions::default();
        let manifest = run_into(&plan, &options, Path::new("memory"), &mut sink).expect("sample run");
        assert_eq!(manifest.status, "succeeded");
        assert_eq!(sink.published.keys().cloned().collect::<BTreeSet<_>>(), tables);
        let facts = &sink.published["customer_facts"];
        assert!(facts.height() > 100, "{}", facts.height());
        assert_eq!(
            facts.column("as_of").map(|c| c.dtype().clone()).ok(),
            Some(polars::prelude::DataType::Date)
        );
        let first_run = manifest.run_id.clone();

        let select = RunOptions {
            select: vec!["rfm".into()],
            ..RunOptions::default()
        };
        let manifest = run_into(&plan, &select, Path::new("memory"), &mut sink).expect("select run");
        assert_eq!(sink.published.len(), tables.len());
        let rebuilt: usize = manifest.stages.iter().map(|stage| stage.tables.len()).sum();
        assert_eq!(manifest.selected_stages, ["rfm"]);
        assert!(rebuilt >= 1);
        assert_eq!(manifest.carried_over.len() + rebuilt, tables.len());
        assert!(manifest
            .carried_over
            .iter()
            .all(|c| c.from_run_id.as_deref() == Some(&first_run)));

        let before = sink.published.clone();
        std::env::set_var("PIPELINE_INJECT_PANIC", "rfm");
        let failed = run_into(&plan, &options, Path::new("memory"), &mut sink);
        std::env::remove_var("PIPELINE_INJECT_PANIC");
        assert!(failed.is_err());
        assert_eq!(sink.last_run.as_ref().map(|m| m.status.as_str()), Some("failed"));
        assert_eq!(
            sink.published.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>()
        );
        assert!(sink
            .published
            .iter()
            .all(|(name, frame)| frame.equals_missing(&before[name])));
    }
}
