//! The Spark job (`spark/pipeline_spark.py`) in local mode gives the one-machine run's tables.
//!
//! It needs the environment `spark/setup.sh` makes: `PIPELINE_SPARK_VENV`, or the repo's
//! `.spark-venv` (`.ci/run` makes it). Without one, the tests say SKIPPED (outside CI).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::NaiveDate;
use polars::prelude::*;

use crate::common::*;
use crate::shards::{accounting, assert_messy_accounting, assert_same_tables, run_into, MESSY_CONFIG, MESSY_ROWS};

/// The Spark environment, when there is one with the module.
fn spark_venv() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("PIPELINE_SPARK_VENV").map(PathBuf::from),
        Some(repo.join(".spark-venv")),
    ];
    candidates.into_iter().flatten().find(|venv| {
        venv.join("bin/spark-submit").is_file()
            && Command::new(venv.join("bin/python"))
                .args(["-c", "import pipeline_native, pyspark"])
                .output()
                .is_ok_and(|o| o.status.success())
    })
}

/// `spark-submit --master local[2] spark/pipeline_spark.py CONFIG --output-dir OUT [args]`.
fn spark_command(venv: &Path, config: &Path, out: &Path, args: &[&str]) -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("spark/pipeline_spark.py");
    let python = venv.join("bin/python");
    let mut command = Command::new(venv.join("bin/spark-submit"));
    command
        .args(["--master", "local[2]"])
        .arg(&script)
        .arg(config)
        .arg("--output-dir")
        .arg(out)
        .args(["--log", "warn"])
        .args(args)
        .env("PYSPARK_PYTHON", &python)
        .env("PYSPARK_DRIVER_PYTHON", &python);
    command
}

fn spark_run(venv: &Path, config: &Path, out: &Path, args: &[&str]) -> Output {
    spark_command(venv, config, out, args)
        .output()
        .expect("spark-submit starts")
}

/// What the job printed: spark-submit passes the Python driver's stderr on to its stdout.
fn printed(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), stderr(output))
}

fn spark_ok(venv: &Path, config: &Path, out: &Path, args: &[&str]) {
    let output = spark_run(venv, config, out, args);
    assert!(
        output.status.success(),
        "the Spark job failed ({:?}): {}",
        output.status.code(),
        printed(&output)
    );
}

/// The retail pipeline on the sample data (20 tables: every stage kind, with survey and spend):
/// every table and every input's accounting equal the one-machine run's, and the scratch
/// folder is gone.
#[test]
fn the_spark_job_gives_the_one_machine_tables_on_the_sample_data() {
    let Some(venv) = spark_venv() else {
        eprintln!("SKIPPED: no Spark environment (spark/setup.sh .spark-venv, or PIPELINE_SPARK_VENV)");
        return;
    };
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/retail.toml");
    let root = tempfile::tempdir().unwrap();
    let whole = root.path().join("whole");
    run_into(&config, &whole, None);
    let spark = root.path().join("spark");
    spark_ok(&venv, &config, &spark, &["--shards", "3"]);
    let tables = assert_same_tables(&whole.join("latest"), &spark.join("latest"), "Spark");
    assert_eq!(tables, 20);
    let (expected, published) = (manifest(&whole.join("latest")), manifest(&spark.join("latest")));
    assert_eq!(published["status"], "succeeded");
    assert_eq!(published["shards"]["shards"], 3);
    assert_eq!(published["shards"]["sweeps"], 5);
    for index in 0..3 {
        let strip = |m: &serde_json::Value| {
            let mut input = m["inputs"][index].clone();
            input.as_object_mut().unwrap().remove("scans");
            input
        };
        assert_eq!(strip(&published), strip(&expected), "input {index}");
    }
    // Per-customer tables are folders of parts the executors wrote, one per customer id range
    // (in customer_id order, as compared above); aggregate tables are files.
    let facts = spark.join("latest/customer_facts.parquet");
    let parts = std::fs::read_dir(&facts).unwrap().count();
    assert!(parts >= 2, "{parts} parts in {}", facts.display());
    assert!(spark.join("latest/cohorts.parquet").is_file());
    let leftovers = temporary_files(&spark);
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A kill -9 of the whole job (JVM, Python driver and workers) in its second sweep leaves
    // the published snapshot as it was.
    let published_run = published["run_id"].clone();
    let killed = spark_child(&venv, &config, &spark, &["--shards", "3"]);
    let runs = spark.join("runs");
    let in_sweeps = || {
        std::fs::read_dir(&runs).unwrap().flatten().any(|entry| {
            entry.file_name().to_string_lossy().starts_with(".spill-") && entry.path().join("sweep-1").exists()
        })
    };
    let started = std::time::Instant::now();
    while !in_sweeps() {
        assert!(
            started.elapsed().as_secs() < 300,
            "the job never reached its second sweep"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    kill_group(killed);
    assert_eq!(manifest(&spark.join("latest"))["run_id"], published_run);
    assert!(
        !temporary_files(&spark).is_empty(),
        "the killed job left its scratch folder"
    );
    // A later `--select` run on one machine removes what the killed job left and carries the
    // part folders over.
    run_ok(&[
        "run",
        config.to_str().unwrap(),
        "--output-dir",
        spark.to_str().unwrap(),
        "--select",
        "rfm",
        "--log",
        "warn",
    ]);
    assert_eq!(
        manifest(&spark.join("latest"))["carried_over"]
            .as_array()
            .unwrap()
            .len(),
        17
    );
    assert_eq!(
        assert_same_tables(&whole.join("latest"), &spark.join("latest"), "carried over"),
        20
    );
    let leftovers = temporary_files(&spark);
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The job started in its own process group (so all of Spark can be killed at once).
fn spark_child(venv: &Path, config: &Path, out: &Path, args: &[&str]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    spark_command(venv, config, out, args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spark-submit starts")
}

/// kill -9 of a child's whole process group, waited for.
fn kill_group(mut child: std::process::Child) {
    let status = Command::new("kill")
        .args(["-9", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap();
    // The group's other processes (the Python driver and workers) go with it.
    std::thread::sleep(std::time::Duration::from_millis(500));
}

/// The messy export as a Spark/Hive directory of Parquet parts (`country=…` folders, a
/// `_SUCCESS` marker): text ids, zoned timestamps, Decimal(12, 2) amounts, a refund, a repeated
/// line, an order naming two customers, a null customer, a line filtered out and one after
/// as_of. Spark reads the directory; the accounting is the hand count, the tables the one-machine
/// run's. A CSV source is refused with a clear message (exit 1), a broken config exits 2.
#[test]
fn the_spark_job_reads_a_hive_directory_of_a_messy_export() {
    let Some(venv) = spark_venv() else {
        eprintln!("SKIPPED: no Spark environment (spark/setup.sh .spark-venv, or PIPELINE_SPARK_VENV)");
        return;
    };
    let workspace = Workspace::new();
    let mut rows: [Vec<&str>; 2] = [Vec::new(), Vec::new()];
    for (at, row) in MESSY_ROWS.iter().enumerate() {
        rows[at % 2].push(row);
    }
    for (part, rows) in rows.iter().enumerate() {
        let mut frame = messy_frame(rows);
        let country = ["DE", "FR"][part];
        write_parquet(
            &mut frame,
            &workspace.path(&format!("lines/country={country}/part-0000{part}.parquet")),
        );
    }
    workspace.write("lines/_SUCCESS", "");
    // Survey answers from two customers and from 20 people who never bought: with 16 shards for
    // 5 customers, most answers fall in shards with no order, which must run their step too.
    let mut survey = String::from("customer_id,responded_at,score\n");
    survey.push_str("C-ana,2024-02-01T10:00:00+01:00,9\nC-bo,2024-03-01T10:00:00+01:00,3\n");
    for prospect in 0..20 {
        survey.push_str(&format!(
            "P-{prospect},2024-0{}-15T10:00:00+01:00,{}\n",
            1 + prospect % 6,
            prospect % 11
        ));
    }
    workspace.write("survey.csv", &survey);
    let config = workspace.write(
        "messy.toml",
        &format!(
            "{}[sources.survey]\nkind = \"survey\"\npath = \"survey.csv\"\nformat = \"csv\"\n[stages.nps]\nkind = \"nps\"\ninput = [\"orders\", \"survey\"]\n",
            MESSY_CONFIG
                .replace("path = \"lines.csv\"\nformat = \"csv\"", "path = \"lines\"")
                .replace("[sources.orders.csv]\ntext_ids = true\n", "")
        ),
    );
    let whole = workspace.path("whole");
    run_into(&config, &whole, None);
    let expected = accounting(&manifest(&whole.join("latest")));
    assert_messy_accounting(&expected);

    let spark = workspace.path("spark");
    spark_ok(&venv, &config, &spark, &["--shards", "16"]);
    assert_eq!(accounting(&manifest(&spark.join("latest"))), expected);
    assert_eq!(
        assert_same_tables(&whole.join("latest"), &spark.join("latest"), "Spark"),
        13
    );
    // Every answer counts: 22 answers, 2 from customers.
    let periods = read_table(&spark.join("latest/nps_periods.parquet"));
    assert_eq!(
        periods.int("responses").iter().sum::<i64>(),
        22,
        "{:?}",
        periods.columns
    );
    let facts = read_table(&spark.join("latest/customer_facts.parquet"));
    assert_eq!(facts.text("customer_id"), ["C-ana", "C-bo", "C-dee", "C-eve", "C-fay"]);
    assert_eq!(facts.float("revenue"), [34.75, 0.0, 12.34, 11.0, 30.0]);

    // The CSV export is for one machine: refused before any Spark work, naming the source.
    let csv = workspace.write("messy-csv.toml", MESSY_CONFIG);
    let mut text = String::from("order_id,line,customer_id,created_at,amount,status,channel\n");
    for row in MESSY_ROWS {
        text.push_str(row);
        text.push('\n');
    }
    workspace.write("lines.csv", &text);
    let output = spark_run(&venv, &csv, &workspace.path("csv-out"), &[]);
    assert_eq!(output.status.code(), Some(1), "{}", printed(&output));
    let message = printed(&output);
    assert!(
        message.contains("source `orders` is CSV") && message.contains("pipeline run"),
        "{message}"
    );
    // A task's error (an order id past i64, which Spark reads as a decimal) fails the run
    // (exit 1) with the task's own message, not Spark's trace.
    let mut huge = DataFrame::new_infer_height(vec![
        Column::new("order_id".into(), [1u64, (1 << 63) + 5]),
        Column::new("customer_id".into(), [10i64, 11]),
        Column::new("ordered_at".into(), [NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(); 2]),
        Column::new("amount".into(), [1.5f64, 2.5]),
    ])
    .unwrap();
    write_parquet(&mut huge, &workspace.path("huge.parquet"));
    let huge_config = workspace.write(
        "huge.toml",
        "[pipeline]\nas_of = \"2024-06-30\"\n[sources.orders]\npath = \"huge.parquet\"\n[stages.customer_facts]\nkind = \"customer_facts\"\n",
    );
    let output = spark_run(&venv, &huge_config, &workspace.path("huge-out"), &[]);
    assert_eq!(output.status.code(), Some(1), "{}", printed(&output));
    let message = printed(&output);
    assert!(
        message.contains("error: the Spark job's `split_orders`: source `orders`: mapping a batch of lines")
            && message.contains("'order_id'")
            && !message.contains("at org.apache.spark"),
        "{message}"
    );
    let broken = workspace.write("broken.toml", "[pipeline]\nas_of = \"yesterday-ish\"\n");
    let output = spark_run(&venv, &broken, &workspace.path("broken-out"), &[]);
    assert_eq!(output.status.code(), Some(2), "{}", printed(&output));
    assert!(printed(&output).contains("as_of"), "{}", printed(&output));
}

/// The messy rows as typed Parquet columns: text ids, zoned UTC timestamps, Decimal(12, 2).
fn messy_frame(rows: &[&str]) -> DataFrame {
    let fields: Vec<Vec<&str>> = rows.iter().map(|row| row.split(',').collect()).collect();
    let text =
        |at: usize| -> Vec<Option<&str>> { fields.iter().map(|f| Some(f[at]).filter(|v| !v.is_empty())).collect() };
    let micros: Vec<i64> = fields
        .iter()
        .map(|f| chrono::DateTime::parse_from_rfc3339(f[3]).unwrap().timestamp_micros())
        .collect();
    let cents: Vec<i128> = fields
        .iter()
        .map(|f| (f[4].parse::<f64>().unwrap() * 100.0).round() as i128)
        .collect();
    DataFrame::new_infer_height(vec![
        Column::new("order_id".into(), text(0)),
        Column::new(
            "line".into(),
            fields.iter().map(|f| f[1].parse::<i32>().unwrap()).collect::<Vec<_>>(),
        ),
        Column::new("customer_id".into(), text(2)),
        Column::new("created_at".into(), micros)
            .cast(&DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC)))
            .unwrap(),
        Int128Chunked::from_vec("amount".into(), cents)
            .into_decimal_unchecked(12, 2)
            .into_series()
            .into_column(),
        Column::new("status".into(), text(5)),
        Column::new("channel".into(), text(6)),
    ])
    .unwrap()
}
