//! Test helpers: fixtures written as Parquet, the real binary, and an independent reader
//! (arrow-rs `parquet`) for the tables it publishes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Output;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType as ArrowType, Float64Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use polars::prelude::*;

/// One order line of a fixture.
#[derive(Clone, Copy)]
pub struct Line {
    pub order_id: i64,
    pub line: i32,
    pub customer_id: i64,
    /// UTC timestamp "YYYY-MM-DD HH:MM".
    pub at: &'static str,
    pub amount: Option<f64>,
    pub status: &'static str,
    pub channel: &'static str,
}

const fn line(
    order_id: i64,
    line: i32,
    customer_id: i64,
    at: &'static str,
    amount: Option<f64>,
    status: &'static str,
    channel: &'static str,
) -> Line {
    Line {
        order_id,
        line,
        customer_id,
        at,
        amount,
        status,
        channel,
    }
}

/// The tiny hand-checkable fixture. With as_of 2024-03-15 (UTC):
/// customer 1: purchases 01-05 (50 in two lines), 01-20 (40), 03-02 (60)
/// customer 2: 01-10 09:00 app (100) and 15:00 web (20), refund order 02-05 (−30)
/// customer 3: 02-29 23:30 UTC (80; 03-01 in Berlin), 03-10 (10)
/// customer 4: 01-31 (25 with a −5 return line)
/// customer 5: 03-20 only (after as_of); 6: cancelled (excluded); 7: a zero-revenue order;
/// 8: a null amount (rejected); 9 and 10 share order 901 (rejected whole).
pub const TINY: &[Line] = &[
    line(101, 1, 1, "2024-01-05 10:00", Some(30.0), "completed", "web"),
    line(101, 2, 1, "2024-01-05 10:00", Some(20.0), "completed", "web"),
    line(102, 1, 1, "2024-01-20 12:00", Some(40.0), "shipped", "web"),
    line(103, 1, 1, "2024-03-02 12:00", Some(60.0), "completed", "app"),
    line(201, 1, 2, "2024-01-10 09:00", Some(100.0), "completed", "app"),
    line(202, 1, 2, "2024-01-10 15:00", Some(20.0), "completed", "web"),
    line(203, 1, 2, "2024-02-05 12:00", Some(-30.0), "completed", "web"),
    line(301, 1, 3, "2024-02-29 23:30", Some(80.0), "completed", "store"),
    line(302, 1, 3, "2024-03-10 12:00", Some(10.0), "completed", "store"),
    line(401, 1, 4, "2024-01-31 12:00", Some(25.0), "completed", "web"),
    line(401, 2, 4, "2024-01-31 12:05", Some(-5.0), "completed", "web"),
    line(501, 1, 5, "2024-03-20 12:00", Some(40.0), "completed", "web"),
    line(601, 1, 6, "2024-02-10 12:00", Some(70.0), "cancelled", "web"),
    line(701, 1, 7, "2024-02-15 12:00", Some(10.0), "completed", "app"),
    line(701, 2, 7, "2024-02-15 12:00", Some(-10.0), "completed", "app"),
    line(801, 1, 8, "2024-02-20 12:00", None, "completed", "web"),
    line(901, 1, 9, "2024-02-01 12:00", Some(15.0), "completed", "web"),
    line(901, 2, 10, "2024-02-01 12:00", Some(15.0), "completed", "web"),
];

/// TINY plus: customer 11 buys once on as_of − 1 (03-14); customer 12 once on 02-20 (a third
/// customer at frequency 1); customer 13 buys 2023-03-01 and again 2024-02-10 (346 days later:
/// churned, then reactivated).
pub fn extended() -> Vec<Line> {
    let mut lines = TINY.to_vec();
    lines.extend([
        line(1101, 1, 11, "2024-03-14 12:00", Some(35.0), "completed", "web"),
        line(1201, 1, 12, "2024-02-20 12:00", Some(20.0), "completed", "app"),
        line(1301, 1, 13, "2023-03-01 12:00", Some(50.0), "completed", "store"),
        line(1302, 1, 13, "2024-02-10 12:00", Some(30.0), "completed", "store"),
    ]);
    lines
}

pub fn lines_frame(lines: &[Line]) -> DataFrame {
    let micros: Vec<i64> = lines
        .iter()
        .map(|l| {
            chrono::NaiveDateTime::parse_from_str(l.at, "%Y-%m-%d %H:%M")
                .expect("fixture timestamps are valid")
                .and_utc()
                .timestamp_micros()
        })
        .collect();
    let mut frame = df!(
        "order_id" => lines.iter().map(|l| l.order_id).collect::<Vec<_>>(),
        "line" => lines.iter().map(|l| l.line).collect::<Vec<_>>(),
        "customer_id" => lines.iter().map(|l| l.customer_id).collect::<Vec<_>>(),
        "created_at" => micros,
        "line_amount" => lines.iter().map(|l| l.amount).collect::<Vec<_>>(),
        "status" => lines.iter().map(|l| l.status).collect::<Vec<_>>(),
        "channel" => lines.iter().map(|l| l.channel).collect::<Vec<_>>(),
    )
    .expect("fixture frame");
    let created_at = frame
        .column("created_at")
        .unwrap()
        .cast(&DataType::Datetime(
            TimeUnit::Microseconds,
            Some(polars::prelude::TimeZone::UTC),
        ))
        .unwrap();
    frame.with_column(created_at).unwrap();
    frame
}

pub fn write_parquet(frame: &mut DataFrame, path: &Path) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let file = File::create(path).unwrap();
    ParquetWriter::new(file).finish(frame).unwrap();
}

/// A scratch directory with the tiny fixture at `lines.parquet`.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Workspace { dir }
    }

    pub fn with_tiny() -> Self {
        Workspace::with_lines(TINY)
    }

    pub fn with_lines(lines: &[Line]) -> Self {
        let workspace = Workspace::new();
        write_parquet(&mut lines_frame(lines), &workspace.path("lines.parquet"));
        workspace
    }

    /// Run a config with these stages over `lines` (as_of 2024-03-15, UTC) and read `tables`.
    pub fn run_stages(lines: &[Line], stages: &str, tables: &[&str]) -> Vec<Table> {
        let workspace = Workspace::with_lines(lines);
        let config = workspace.config("", stages);
        run_ok(&["run", config.to_str().unwrap()]);
        tables
            .iter()
            .map(|t| read_table(&workspace.out().join(format!("{t}.parquet"))))
            .collect()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The snapshot readers see: `OUT/latest`.
    pub fn out(&self) -> PathBuf {
        self.path("out").join("latest")
    }

    /// The output directory: lock, `_last_run.json`, `runs/`, `latest`.
    pub fn root(&self) -> PathBuf {
        self.path("out")
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A config over `lines.parquet` with the given `[pipeline]` extras and stages.
    pub fn config(&self, pipeline_extra: &str, stages: &str) -> PathBuf {
        let text = format!(
            r#"[pipeline]
name = "tiny"
output_dir = "out"
as_of = "2024-03-15"
max_rejected_fraction = 0.2
{pipeline_extra}

[sources.orders]
path = "lines.parquet"
include = {{ status = ["completed", "shipped"] }}

[sources.orders.columns]
ordered_at = "created_at"
amount = "line_amount"
status = "status"
channel = "channel"

{stages}
"#
        );
        self.write("pipeline.toml", &text)
    }
}

pub fn pipeline(args: &[&str]) -> Output {
    assert_cmd::Command::cargo_bin("pipeline")
        .unwrap()
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

pub fn run_ok(args: &[&str]) -> Output {
    let output = pipeline(args);
    assert!(
        output.status.success(),
        "pipeline {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// A Parquet table read back with arrow-rs: column name → values rendered as text
/// ("" for null; floats rounded to 6 decimals).
pub struct Table {
    pub columns: Vec<String>,
    /// The columns stored as floating point.
    pub float_columns: std::collections::BTreeSet<String>,
    pub rows: usize,
    data: BTreeMap<String, Vec<Option<String>>>,
    floats: BTreeMap<String, Vec<Option<f64>>>,
}

pub fn read_table(path: &Path) -> Table {
    // A file, or a folder of parts read in name order (the Spark job's per-customer tables).
    let files = if path.is_dir() {
        let mut parts: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|part| part.extension().is_some_and(|e| e == "parquet"))
            .collect();
        parts.sort();
        assert!(!parts.is_empty(), "no part in {}", path.display());
        parts
    } else {
        vec![path.to_path_buf()]
    };
    let mut batches: Vec<RecordBatch> = Vec::new();
    for file in files {
        let file = File::open(&file).unwrap_or_else(|e| panic!("cannot open {}: {e}", file.display()));
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        batches.extend(reader.map(|b| b.unwrap()));
    }
    let schema = batches
        .first()
        .map(|b| b.schema())
        .expect("table has at least one batch");
    let mut table = Table {
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        float_columns: schema
            .fields()
            .iter()
            .filter(|f| matches!(f.data_type(), ArrowType::Float64 | ArrowType::Float32))
            .map(|f| f.name().clone())
            .collect(),
        rows: 0,
        data: BTreeMap::new(),
        floats: BTreeMap::new(),
    };
    for batch in &batches {
        table.rows += batch.num_rows();
        for (index, field) in schema.fields().iter().enumerate() {
            let array = batch.column(index);
            let text = arrow::compute::cast(array, &ArrowType::Utf8).unwrap();
            let text = text.as_string::<i32>();
            let values = table.data.entry(field.name().clone()).or_default();
            values.extend((0..text.len()).map(|i| (!text.is_null(i)).then(|| text.value(i).to_string())));
            if matches!(
                field.data_type(),
                ArrowType::Float64
                    | ArrowType::Float32
                    | ArrowType::Int64
                    | ArrowType::Int32
                    | ArrowType::UInt32
                    | ArrowType::UInt64
            ) {
                let floats = arrow::compute::cast(array, &ArrowType::Float64).unwrap();
                let floats = floats.as_primitive::<Float64Type>();
                table
                    .floats
                    .entry(field.name().clone())
                    .or_default()
                    .extend((0..floats.len()).map(|i| (!floats.is_null(i)).then(|| floats.value(i))));
            }
        }
    }
    let _ = Int64Type::DATA_TYPE;
    table
}

use arrow::datatypes::ArrowPrimitiveType;

impl Table {
    pub fn text(&self, column: &str) -> Vec<String> {
        self.data
            .get(column)
            .unwrap_or_else(|| panic!("no column `{column}` in {:?}", self.columns))
            .iter()
            .map(|v| v.clone().unwrap_or_default())
            .collect()
    }

    /// Numeric values; null is NaN (assert nulls with `text(..) == ""`).
    pub fn float(&self, column: &str) -> Vec<f64> {
        self.floats
            .get(column)
            .unwrap_or_else(|| panic!("no numeric column `{column}` in {:?}", self.columns))
            .iter()
            .map(|v| v.unwrap_or(f64::NAN))
            .collect()
    }

    pub fn int(&self, column: &str) -> Vec<i64> {
        self.float(column).iter().map(|v| *v as i64).collect()
    }

    /// Rows whose `key` columns equal `values`, as row indices.
    pub fn find(&self, keys: &[(&str, &str)]) -> usize {
        let matches: Vec<usize> = (0..self.rows)
            .filter(|&row| keys.iter().all(|(c, v)| self.text(c)[row] == *v))
            .collect();
        assert_eq!(
            matches.len(),
            1,
            "expected exactly one row with {keys:?}, got {matches:?}"
        );
        matches[0]
    }
}

pub fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= 1e-9 * expected.abs().max(1.0),
        "{what}: expected {expected}, got {actual}"
    );
}

/// Names of the temporary files (`.tmp-…`) an output directory holds, and of the staging
/// folders of unpublished snapshots (`runs/.staging-…`).
pub fn temporary_files(root: &Path) -> Vec<String> {
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found: Vec<String> = names(root).into_iter().filter(|n| n.starts_with(".tmp-")).collect();
    found.extend(
        names(&root.join("runs"))
            .into_iter()
            .filter(|n| n.starts_with(".staging-") || n.starts_with(".spill-")),
    );
    found
}

/// `OUT/_last_run.json`: the outcome of the last run, whether or not it published.
pub fn last_run(root: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(root.join("_last_run.json")).expect("_last_run.json exists");
    serde_json::from_str(&text).expect("_last_run.json is JSON")
}

/// The published snapshots under `OUT/runs`, by name.
pub fn snapshot_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

pub fn manifest(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("_manifest.json")).expect("manifest exists");
    serde_json::from_str(&text).expect("manifest is JSON")
}

/// A Python with DuckDB for reference checks: `PIPELINE_PYTHON`, or the repo's `.venv`.
pub fn python_with_duckdb() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("PIPELINE_PYTHON").map(PathBuf::from),
        Some(repo.join(".venv/bin/python")),
    ];
    candidates.into_iter().flatten().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import duckdb"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

/// Row counts of Parquet files as DuckDB reads them (a second, non-Rust reader), when available.
pub fn duckdb_row_counts(files: &[PathBuf]) -> Option<Vec<u64>> {
    let python = python_with_duckdb()?;
    let list: Vec<String> = files.iter().map(|f| format!("{:?}", f.to_str().unwrap())).collect();
    let script = format!(
        "import duckdb\nfor f in [{}]:\n    print(duckdb.execute(f\"select count(*) from read_parquet('{{f}}')\").fetchone()[0])",
        list.join(", ")
    );
    let output = std::process::Command::new(python)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "DuckDB could not read the tables: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect(),
    )
}

/// A Parquet file's data: every byte before its footer (the footer holds the run's id, so two
/// runs of the same tables differ there and only there).
pub fn table_data(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let footer = u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap()) as usize;
    bytes[..bytes.len() - 8 - footer].to_vec()
}

/// A Parquet file's key-value metadata (as_of, run_id, …), read by arrow-rs.
pub fn file_metadata(path: &Path) -> BTreeMap<String, String> {
    use parquet::file::reader::FileReader;
    let reader = parquet::file::reader::SerializedFileReader::new(File::open(path).unwrap()).unwrap();
    reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|pairs| {
            pairs
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}
