//! The Spark job (`spark/pipeline_spark.py`): the sharded run's protocol (`runner::sharded`)
//! with Spark's tasks as the executor. Spark reads the input, moves the data and schedules the
//! work; every metric is computed by this crate's code, called from the Python tasks through
//! the `pipeline_native` extension module (`python.rs`, built with maturin).
//!
//! 1. **Lines by order shard.** A `mapInArrow` task maps each batch of the input's columns into
//!    lines as a scan of the files would (`map_lines`), and cuts them by a hash of order_id.
//! 2. **Orders by customer shard.** A `groupBy(shard).applyInArrow` task folds each order shard
//!    (`fold_orders`): its usable orders by customer shard, its line accounting and a sample of
//!    its customer ids. The driver adds up the accounting and checks it as one scan's.
//! 3. **Sweeps.** Each sweep sends every customer shard the same work (`SweepWork`, broadcast in
//!    bytes); a task runs the active stages' steps on its shard (`sweep_shard`) and gives back
//!    partials, which the driver merges and finalizes, and per-customer rows, which later
//!    sweeps read and the driver publishes a customer id range at a time.
//!
//! Everything between tasks and the driver is a *blob*: (shard, kind, name, table, part,
//! payload), the payload a table as Parquet bytes or the accounting as JSON. Each step's blobs
//! are written by Spark into the run's scratch folder (beside the outputs, removed after the
//! run), so no task runs twice for one answer.

#[cfg(feature = "python")]
mod python;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use serde::{Deserialize, Serialize};

use super::sharded::shard::{
    bytes_table, decode_tables, encode_tables, run_shard, table_bytes, ShardData, ShardPartial, SourceShards, SweepWork,
};
use super::sharded::{execute_with, Executor, Scratch};
use super::RunOptions;
use crate::core::config::{AsOf, PipelineSettings, SourceConfig, SourceKind};
use crate::core::input::{InputStats, SourceOrders};
use crate::core::manifest::Manifest;
use crate::core::plan::Plan;
use crate::core::prepare::shared_tables;
use crate::core::stages::shard::shard_of_ids;
use crate::core::stages::SourceData;
use crate::io::source::{self, LineMapper, LineScan, LineTotals};

/// Lines per customer shard the job aims at when no shard count is given.
const LINES_PER_SHARD: u64 = 4 << 20;

/// What every task is told: the config (a path the driver and the executors both read, checked
/// by its hash), the number of shards, and the run's as_of as the driver resolved it (`None`: the
/// last order's date), so a task never resolves `today` by its own clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub config: PathBuf,
    pub config_hash: String,
    pub shards: usize,
    pub as_of: Option<chrono::NaiveDate>,
}

impl Job {
    /// The as_of the lines are read for.
    fn as_of(&self) -> AsOf {
        self.as_of.map_or(AsOf::LastOrder, AsOf::Date)
    }
}

impl Job {
    pub fn from_json(text: &str) -> Result<Job> {
        serde_json::from_str(text).context("reading the Spark job's description")
    }
}

/// One piece of data between Spark's tasks and the driver.
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    /// The customer (or order) shard it belongs to; -1 for what goes to the driver.
    pub shard: i32,
    /// `lines`, `orders`, `totals`, `sample`, `schema`, `partial` or `rows`.
    pub kind: String,
    /// The source (lines, orders, totals, sample, schema), the stage's place (partial) or index
    /// (rows).
    pub name: String,
    /// The per-customer table (rows).
    pub table: i32,
    /// The customer id range (rows; -1: no rows, the table's columns), or 1 when a partial came
    /// with the stage's rows.
    pub part: i32,
    pub payload: Vec<u8>,
}

impl Blob {
    fn new(shard: i32, kind: &str, name: impl Into<String>, table: i32, part: i32, payload: Vec<u8>) -> Blob {
        Blob {
            shard,
            kind: kind.into(),
            name: name.into(),
            table,
            part,
            payload,
        }
    }
}

/// Blobs from the Spark job, pulled one at a time.
pub type Blobs = Box<dyn Iterator<Item = Result<Blob>>>;

/// The Spark side of the driver: runs each step as Spark jobs (`spark/pipeline_spark.py`).
pub trait Backend {
    /// The scratch folder for the run's blobs, and the job every task is given (JSON).
    fn start(&mut self, scratch: &Path, job: &str) -> Result<()>;
    /// Read the input's `columns` at `path`, map its lines, shuffle them by order shard and
    /// fold them (`map_lines`, `fold_orders`); keep the orders and return the blobs for the
    /// driver (totals, samples, schemas), and the bytes of orders kept.
    fn split_orders(&mut self, source: &str, path: &Path, columns: &[String]) -> Result<(Vec<Blob>, u64)>;
    /// Run `work` on every customer shard (`sweep_shard`): keep the rows, return the bytes kept
    /// and the partials.
    fn sweep(&mut self, work: Vec<u8>) -> Result<(u64, Blobs)>;
    /// Stage `stage`'s rows of per-customer table `table`, ordered by range (`part`).
    fn table_rows(&mut self, stage: usize, table: usize) -> Result<Blobs>;
    /// Write stage `stage`'s per-customer table `table`, a task per id range (`write_part`, told
    /// `spec`); its rows.
    fn write_parts(&mut self, stage: usize, table: usize, spec: &str) -> Result<u64>;
}

/// What a task writing a per-customer table's part is told.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartSpec {
    /// The table's folder (in the snapshot's staging folder).
    pub dir: PathBuf,
    pub stage: usize,
    pub table: usize,
    pub key_values: Vec<(String, String)>,
    pub as_of_days: Option<i32>,
}

/// Run the config at `config` through `backend`'s Spark jobs, published as the one-machine run
/// publishes (the snapshot, the manifest, `_last_run.json`). `shards`: the customer shards, by
/// default `parallelism` or one per 4M lines, whichever is more.
pub fn run(
    config: &Path,
    output_dir: Option<PathBuf>,
    shards: Option<usize>,
    parallelism: usize,
    backend: &mut dyn Backend,
) -> Result<Manifest> {
    let plan = crate::load_plan(config)?;
    let options = RunOptions {
        output_dir,
        ..RunOptions::default()
    };
    let backend = std::cell::RefCell::new(backend);
    let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    super::run_with(&plan, &options, &|plan, options, selected, manifest, sink| {
        let lines = super::orders_lines(plan, selected);
        let shards = shards
            .unwrap_or_else(|| parallelism.max(lines.div_ceil(LINES_PER_SHARD) as usize))
            .max(1);
        let dir = sink
            .scratch_dir(&manifest.run_id)
            .context("the Spark job publishes into an output folder")?;
        let scratch = Scratch::create(dir)?;
        let as_of = options.as_of.unwrap_or(plan.config.pipeline.as_of);
        let job = Job {
            config: config.clone(),
            config_hash: plan.config.hash.clone(),
            shards,
            as_of: source::fixed_as_of(as_of, &plan.config.pipeline.timezone)?,
        };
        let mut backend = backend.borrow_mut();
        backend.start(&scratch.dir, &serde_json::to_string(&job)?)?;

        tracing::info!(
            "Spark job: {shards} customer shards, about {} lines",
            source::thousands(lines)
        );
        let mut executor = SparkShards {
            backend: &mut **backend,
            job: job.clone(),
            row_bytes: 0,
        };
        let options = RunOptions {
            as_of: Some(job.as_of()),
            ..options.clone()
        };
        let options = &options;
        execute_with(plan, options, selected, manifest, sink, shards, &mut executor).map_err(|e| scratch.explain(e))
    })
}

/// The driver's view of the shards Spark keeps.
struct SparkShards<'b> {
    backend: &'b mut dyn Backend,
    job: Job,
    row_bytes: u64,
}

impl Executor for SparkShards<'_> {
    fn split_orders(
        &mut self,
        source_config: &SourceConfig,
        settings: &PipelineSettings,
        as_of: AsOf,
        shards: usize,
    ) -> Result<(InputStats, SourceShards, u64)> {
        let mapper = LineMapper::new(source_config)?;
        let (blobs, bytes) = self
            .backend
            .split_orders(&source_config.name, &source_config.path, &mapper.columns())?;
        let mut totals = LineTotals::default();
        let mut samples = Vec::new();
        let mut schema = None;
        for blob in blobs {
            let what = || format!("source `{}`: the `{}` of an order shard", source_config.name, blob.kind);
            match blob.kind.as_str() {
                "totals" => {
                    let text = std::str::from_utf8(&blob.payload).map_err(anyhow::Error::from);
                    totals.merge(text.and_then(LineTotals::from_json).with_context(what)?);
                }
                "sample" => samples.push(
                    bytes_table(&blob.payload)
                        .and_then(|frame| Ok(frame.column("customer_id")?.as_materialized_series().clone()))
                        .with_context(what)?,
                ),
                "schema" => schema = Some(bytes_table(&blob.payload).with_context(what)?),
                other => bail!("the Spark job returned a `{other}` blob for the driver"),
            }
        }
        // Checked as one scan's: the scan is only planned here, its lines were Spark's.
        let scan = LineScan::start(source_config, settings, as_of)?;
        let (stats, as_of) = totals.check(source_config, settings, &scan)?;
        let schema = schema.context("no order shard was folded")?;
        let dtype = schema.column("customer_id")?.dtype().clone();
        let cuts = source::cuts_of(&samples, shards, &dtype)?;
        Ok((stats, SourceShards { as_of, schema, cuts }, bytes))
    }

    fn sweep(
        &mut self,
        _plan: &Plan,
        work: &SweepWork,
        _whole: &BTreeMap<String, SourceData>,
        take: &mut dyn FnMut(ShardPartial) -> Result<()>,
    ) -> Result<()> {
        let (kept, partials) = self.backend.sweep(work.encode()?)?;
        self.row_bytes += kept;
        // Every shard gives a partial for every stage taking a pass (a lost one would be a
        // silently smaller table).
        let mut given: BTreeMap<usize, BTreeSet<i32>> = BTreeMap::new();
        for blob in partials {
            let blob = blob?;
            let position: usize = blob
                .name
                .parse()
                .map_err(|_| anyhow::anyhow!("a partial names no stage"))?;
            given.entry(position).or_default().insert(blob.shard);
            let ((), tables): ((), _) = decode_tables(&blob.payload).context("a shard's partial")?;
            take(ShardPartial {
                position,
                partial: tables.into_iter().map(|(_, frame)| frame).collect(),
                with_rows: blob.part == 1,
            })?;
        }
        for stage in work
            .stages
            .iter()
            .filter(|stage| matches!(stage.step, super::sharded::shard::Step::Pass(_)))
        {
            let shards = given.get(&stage.position).map_or(0, BTreeSet::len);
            if shards != work.shards {
                bail!(
                    "sweep {}: {shards} of {} shards gave a partial of stage {} (a Spark task's output was lost)",
                    work.sweep,
                    work.shards,
                    stage.index
                );
            }
        }
        Ok(())
    }

    fn table_ranges<'s>(
        &'s mut self,
        stage: usize,
        table: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<DataFrame>> + 's>> {
        let blobs = self.backend.table_rows(stage, table)?;
        Ok(Box::new(Ranges {
            blobs: blobs.peekable(),
            columns: None,
            given: false,
        }))
    }

    fn spill_bytes(&self) -> u64 {
        self.row_bytes
    }

    fn writes_parts(&self) -> bool {
        true
    }

    fn write_parts(
        &mut self,
        stage: usize,
        table: usize,
        dir: &Path,
        key_values: &[(String, String)],
        as_of_days: Option<i32>,
    ) -> Result<usize> {
        let spec = PartSpec {
            dir: dir.to_path_buf(),
            stage,
            table,
            key_values: key_values.to_vec(),
            as_of_days,
        };
        let rows = self.backend.write_parts(stage, table, &serde_json::to_string(&spec)?)? as usize;
        if rows == 0 {
            // No row: the table's columns, as one empty part.
            let columns = self
                .table_ranges(stage, table)?
                .next()
                .context("a per-customer table has its columns")??;
            write_part_file(&*plan_of(&self.job)?, &spec, 0, columns)?;
        }
        // What a task killed while writing left (its temporary file) is not published.
        for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read `{}`", dir.display()))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if !(name.starts_with("part-") && name.ends_with(".parquet")) {
                std::fs::remove_file(&path).ok();
            }
        }
        std::fs::File::open(dir)
            .and_then(|folder| folder.sync_all())
            .with_context(|| format!("cannot sync `{}`", dir.display()))?;
        Ok(rows)
    }
}

/// Task of the publication: one id range's rows of a per-customer table (the payloads of its
/// blobs) written as part `part` of the table's folder; its rows.
pub fn write_part(job: &Job, spec: &str, part: usize, payloads: &[&[u8]]) -> Result<usize> {
    let spec: PartSpec = serde_json::from_str(spec).context("reading a part's description")?;
    let plan = plan_of(job)?;
    let rows = stacked(payloads.iter().copied())?.context("a part with no rows")?;
    write_part_file(&plan, &spec, part, rows)
}

/// `frame` sorted by customer_id with `as_of`, at `part-<part>.parquet` in the table's folder
/// (written under a temporary name, then renamed: a retried task leaves one whole part).
fn write_part_file(plan: &Plan, spec: &PartSpec, part: usize, frame: DataFrame) -> Result<usize> {
    let (name, metadata) = super::stages::tables_of(&plan.config, spec.stage, &spec.key_values)
        .into_iter()
        .nth(spec.table)
        .context("a part of a table the stage has")?;
    let mut frame = super::sharded::published_part(frame, spec.as_of_days)?;
    let target = spec.dir.join(format!("part-{part:05}.parquet"));
    // Unique per attempt: a retried or speculative task on another host may share the pid.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let temp = spec
        .dir
        .join(format!(".part-{part:05}.parquet.{}-{nanos}.tmp", std::process::id()));
    crate::io::sink::write_table(&temp, &mut frame, &metadata, &crate::io::sink::SharedPages::default())
        .with_context(|| format!("writing part {part} of table `{name}`"))?;
    std::fs::File::open(&temp)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("cannot sync `{}`", temp.display()))?;
    std::fs::rename(&temp, &target).with_context(|| format!("cannot move `{}` into place", temp.display()))?;
    Ok(frame.height())
}

/// Rows blobs ordered by range, as one frame per range (the table's columns alone when it has
/// no row).
struct Ranges {
    blobs: std::iter::Peekable<Blobs>,
    columns: Option<DataFrame>,
    given: bool,
}

impl Iterator for Ranges {
    type Item = Result<DataFrame>;

    fn next(&mut self) -> Option<Result<DataFrame>> {
        let mut range: Option<(i32, DataFrame)> = None;
        loop {
            let part = match self.blobs.peek() {
                None => break,
                Some(Err(_)) => return self.blobs.next().and_then(|blob| blob.err()).map(Err),
                Some(Ok(blob)) => blob.part,
            };
            if range.as_ref().is_some_and(|(at, _)| *at != part) {
                break;
            }
            let blob = self.blobs.next().expect("peeked").expect("peeked ok");
            let frame = match bytes_table(&blob.payload) {
                Ok(frame) => frame,
                Err(error) => return Some(Err(error)),
            };
            if part < 0 {
                self.columns.get_or_insert(frame);
                continue;
            }
            match &mut range {
                Some((_, all)) => {
                    if let Err(error) = all.vstack_mut(&frame) {
                        return Some(Err(error.into()));
                    }
                }
                None => range = Some((part, frame)),
            }
        }
        match range {
            Some((_, frame)) => {
                self.given = true;
                Some(Ok(frame))
            }
            None if !self.given => {
                self.given = true;
                Some(Ok(self.columns.clone().unwrap_or_default()))
            }
            None => None,
        }
    }
}

/// A sweep's work decoded once per process: Spark's Python workers run many tasks of a sweep,
/// and the work holds clv's merged pattern counts, which grow with the customers.
static WORK: Mutex<Option<(u64, Arc<SweepWork>)>> = Mutex::new(None);

fn decoded(bytes: &[u8]) -> Result<Arc<SweepWork>> {
    use std::hash::BuildHasher;
    let key = foldhash::fast::FixedState::with_seed(0x5EED).hash_one(bytes);
    let mut cached = WORK.lock().map_err(|_| anyhow::anyhow!("the work cache is poisoned"))?;
    if let Some((_, work)) = cached.as_ref().filter(|(at, _)| *at == key) {
        return Ok(Arc::clone(work));
    }
    let work = Arc::new(SweepWork::decode(bytes)?);
    *cached = Some((key, Arc::clone(&work)));
    Ok(work)
}

/// Tasks load the plan and map lines once per process.
static PLANS: Mutex<Option<HashMap<PathBuf, Arc<Plan>>>> = Mutex::new(None);
type Mappers = HashMap<(PathBuf, String), Arc<LineMapper>>;
static MAPPERS: Mutex<Option<Mappers>> = Mutex::new(None);

fn plan_of(job: &Job) -> Result<Arc<Plan>> {
    let mut plans = PLANS
        .lock()
        .map_err(|_| anyhow::anyhow!("the plan cache is poisoned"))?;
    let plans = plans.get_or_insert_with(HashMap::new);
    if let Some(plan) = plans.get(&job.config) {
        return Ok(Arc::clone(plan));
    }
    let plan = Arc::new(crate::load_plan(&job.config)?);
    if plan.config.hash != job.config_hash {
        bail!(
            "the config `{}` changed since the job started (or reads differently here: check the environment variables it uses on the executors); run the job again",
            job.config.display()
        );
    }
    plans.insert(job.config.clone(), Arc::clone(&plan));
    Ok(plan)
}

fn source_of<'p>(plan: &'p Plan, name: &str) -> Result<&'p SourceConfig> {
    plan.config
        .sources
        .get(name)
        .with_context(|| format!("the config has no source `{name}`"))
}

/// Task of step 1: one batch of the input's columns as lines, cut by order shard: (shard, the
/// lines as Parquet bytes) per shard with lines.
pub fn map_lines(job: &Job, source: &str, batch: DataFrame) -> Result<Vec<Blob>> {
    let mapper = {
        let mut mappers = MAPPERS
            .lock()
            .map_err(|_| anyhow::anyhow!("the mapper cache is poisoned"))?;
        let mappers = mappers.get_or_insert_with(HashMap::new);
        let key = (job.config.clone(), source.to_string());
        match mappers.get(&key) {
            Some(mapper) => Arc::clone(mapper),
            None => {
                let plan = plan_of(job)?;
                let mapper = Arc::new(LineMapper::new(source_of(&plan, source)?)?);
                mappers.insert(key, Arc::clone(&mapper));
                mapper
            }
        }
    };
    let lines = mapper
        .map(batch)
        .with_context(|| format!("source `{source}`: mapping a batch of lines"))?;
    let shard_of = shard_of_ids(lines.column("order_id")?, job.shards)?;
    split_by(&lines, &shard_of, job.shards, |shard, mut part| {
        Ok(Blob::new(shard as i32, "lines", source, 0, 0, table_bytes(&mut part)?))
    })
}

/// The tables of `payloads` (Parquet bytes) one under the other; `None` when there is none.
fn stacked<'p>(payloads: impl Iterator<Item = &'p [u8]>) -> Result<Option<DataFrame>> {
    crate::core::columns::stack_frames(payloads.map(bytes_table))
}

/// Each shard's rows of `frame` (`shard_of` per row) through `blob`, for shards with rows.
fn split_by(
    frame: &DataFrame,
    shard_of: &[u32],
    shards: usize,
    mut blob: impl FnMut(usize, DataFrame) -> Result<Blob>,
) -> Result<Vec<Blob>> {
    let mut rows: Vec<Vec<IdxSize>> = vec![Vec::new(); shards];
    for (row, &shard) in shard_of.iter().enumerate() {
        rows[shard as usize].push(row as IdxSize);
    }
    let mut blobs = Vec::new();
    for (shard, rows) in rows.into_iter().enumerate() {
        if !rows.is_empty() {
            blobs.push(blob(shard, frame.take(&IdxCa::from_vec("".into(), rows))?)?);
        }
    }
    Ok(blobs)
}

/// Task of step 2: every lines blob of one order shard folded into orders: blobs of the orders
/// by customer shard, and for the driver the accounting, a sample of customer ids and the
/// orders' columns.
pub fn fold_orders(job: &Job, source: &str, lines: &[&[u8]]) -> Result<Vec<Blob>> {
    let plan = plan_of(job)?;
    let source_config = source_of(&plan, source)?;
    let mut lines = stacked(lines.iter().copied())?.context("an order shard with no lines")?;
    lines.rechunk_mut();
    let part = source::fold_line_part(source_config, &plan.config.pipeline, job.as_of(), lines)
        .with_context(|| format!("source `{source}`: folding an order shard"))?;
    let shard_of = shard_of_ids(part.orders.column("customer_id")?, job.shards)?;
    let mut blobs = split_by(&part.orders, &shard_of, job.shards, |shard, mut orders| {
        Ok(Blob::new(
            shard as i32,
            "orders",
            source,
            0,
            0,
            table_bytes(&mut orders)?,
        ))
    })?;
    blobs.push(Blob::new(
        -1,
        "totals",
        source,
        0,
        0,
        part.totals.to_json().into_bytes(),
    ));
    let mut sample = part.sample.with_name("customer_id".into()).into_frame();
    blobs.push(Blob::new(-1, "sample", source, 0, 0, table_bytes(&mut sample)?));
    blobs.push(Blob::new(
        -1,
        "schema",
        source,
        0,
        0,
        table_bytes(&mut part.orders.clear())?,
    ));
    Ok(blobs)
}

/// Task of step 3: the sweep's `work` on customer shard `shard`, from its blobs (its orders, and
/// the rows earlier sweeps gave for its customers): its partials and its new rows.
pub fn sweep_shard(job: &Job, work: &[u8], shard: usize, blobs: Vec<Blob>) -> Result<Vec<Blob>> {
    let plan = plan_of(job)?;
    let work = decoded(work)?;
    let mut data = SparkShard {
        plan: &plan,
        work: &work,
        shard,
        blobs,
    };
    let output = run_shard(&plan, &work, &mut data)?;
    let mut blobs = Vec::new();
    for partial in output.partials {
        let mut tables: Vec<(String, DataFrame)> = partial
            .partial
            .into_iter()
            .enumerate()
            .map(|(at, frame)| (at.to_string(), frame))
            .collect();
        blobs.push(Blob::new(
            shard as i32,
            "partial",
            partial.position.to_string(),
            0,
            i32::from(partial.with_rows),
            encode_tables(&(), &mut tables)?,
        ));
    }
    for (stage, table, frame) in output.rows {
        let cuts = &plan
            .source_of(stage)
            .and_then(|name| work.sources.get(&name))
            .context("per-customer rows come from an orders source")?
            .cuts;
        let ranges = source::range_of(cuts, frame.column("customer_id")?)?;
        let name = stage.to_string();
        blobs.extend(split_by(&frame, &ranges, cuts.len() + 1, |range, mut rows| {
            Ok(Blob::new(
                shard as i32,
                "rows",
                name.clone(),
                table as i32,
                range as i32,
                table_bytes(&mut rows)?,
            ))
        })?);
        blobs.push(Blob::new(
            shard as i32,
            "rows",
            name,
            table as i32,
            -1,
            table_bytes(&mut frame.clear())?,
        ));
    }
    Ok(blobs)
}

/// One customer shard's data in a Spark task: its blobs, and the surveys and spend read whole.
struct SparkShard<'a> {
    plan: &'a Plan,
    work: &'a SweepWork,
    shard: usize,
    blobs: Vec<Blob>,
}

impl SparkShard<'_> {
    /// The frames of the blobs `wanted` picks, as one (or `None` when there is none).
    fn frames(&self, wanted: impl Fn(&Blob) -> bool) -> Result<Option<DataFrame>> {
        stacked(
            self.blobs
                .iter()
                .filter(|blob| wanted(blob))
                .map(|blob| blob.payload.as_slice()),
        )
    }
}

impl ShardData for SparkShard<'_> {
    fn sources(&mut self, names: &BTreeSet<String>) -> Result<BTreeMap<String, SourceData>> {
        let run_as_of = self
            .work
            .sources
            .values()
            .map(|source| source.as_of)
            .max()
            .context("a sharded run reads an orders source")?;
        let settings = &self.plan.config.pipeline;
        let mut sources = BTreeMap::new();
        for name in names {
            let source_config = source_of(self.plan, name)?;
            let data = match source_config.kind {
                SourceKind::Orders => {
                    let shards = self.work.sources.get(name).context("an orders source in shards")?;
                    let frame = self
                        .frames(|blob| blob.kind == "orders" && &blob.name == name)?
                        .unwrap_or_else(|| shards.schema.clone());
                    let numbered = source::number_orders(frame)?;
                    let orders = SourceOrders {
                        orders: numbered.orders,
                        customer_ids: numbered.customer_ids,
                        channels: numbered.channels,
                        stats: InputStats::default(),
                        as_of: shards.as_of,
                    };
                    SourceData::Orders(
                        shared_tables(orders).with_context(|| format!("source `{name}`, shard {}", self.shard))?,
                    )
                }
                SourceKind::Survey => {
                    let mut answers = source::read_survey(source_config, settings, run_as_of)?;
                    let shard_of = shard_of_ids(answers.answers.column("customer_id")?, self.work.shards)?;
                    let mask: BooleanChunked = shard_of.iter().map(|&s| s as usize == self.shard).collect();
                    answers.answers = answers.answers.filter(&mask)?;
                    SourceData::Survey(answers)
                }
                SourceKind::Spend => SourceData::Spend(source::read_spend(source_config, settings, run_as_of)?),
            };
            sources.insert(name.clone(), data);
        }
        Ok(sources)
    }

    fn rows(&mut self, stage: usize, table: usize) -> Result<DataFrame> {
        let name = stage.to_string();
        let is_table = |blob: &Blob| blob.kind == "rows" && blob.name == name && blob.table == table as i32;
        if let Some(rows) = self.frames(|blob| is_table(blob) && blob.part >= 0)? {
            return Ok(rows);
        }
        Ok(self.frames(|blob| is_table(blob) && blob.part < 0)?.unwrap_or_default())
    }
}
