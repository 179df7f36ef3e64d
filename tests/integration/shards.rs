//! Scale-out: every stage computed over customer shards (`--shards N`, spilled to disk) gives
//! the tables of the one-shard run, on the sample data and on generated data: integers, text
//! and dates exactly, doubles to 1e-12 relative.

use std::path::{Path, PathBuf};

use crate::common::*;

pub fn run_into(config: &Path, out: &Path, shards: Option<usize>) {
    let mut args = vec![
        "run".to_string(),
        config.display().to_string(),
        "--output-dir".to_string(),
        out.display().to_string(),
        "--log".to_string(),
        "warn".to_string(),
    ];
    if let Some(shards) = shards {
        args.extend(["--shards".to_string(), shards.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(&args);
}

/// Every table of `expected` has its equal in `actual`.
pub fn assert_same_tables(expected: &Path, actual: &Path, what: &str) -> usize {
    let mut compared = 0;
    for entry in std::fs::read_dir(expected).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let (a, b) = (read_table(&path), read_table(&actual.join(&name)));
        assert_eq!(a.columns, b.columns, "{what}: {name}");
        assert_eq!(a.rows, b.rows, "{what}: {name}");
        for column in &a.columns {
            if a.float_columns.contains(column) {
                for (row, (x, y)) in a.float(column).iter().zip(b.float(column)).enumerate() {
                    let same = (x.is_nan() && y.is_nan()) || (x - y).abs() <= 1e-12 * x.abs().max(y.abs());
                    assert!(same, "{what}: {name}.{column} row {row}: {x} vs {y}");
                }
            } else {
                assert_eq!(a.text(column), b.text(column), "{what}: {name}.{column}");
            }
        }
        compared += 1;
    }
    compared
}

#[test]
fn shards_give_the_one_shard_tables_on_the_sample_data() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/retail.toml");
    let root = tempfile::tempdir().unwrap();
    let whole = root.path().join("whole");
    run_into(&config, &whole, None);
    let expected = manifest(&whole.join("latest"));
    for shards in [1, 2, 7, 16] {
        let out = root.path().join(format!("shards-{shards}"));
        run_into(&config, &out, Some(shards));
        let tables = assert_same_tables(&whole.join("latest"), &out.join("latest"), &format!("{shards} shards"));
        assert_eq!(tables, 20);
        // Every input's accounting (orders, survey, spend) is the whole run's.
        let sharded = manifest(&out.join("latest"));
        for index in 0..3 {
            let strip = |m: &serde_json::Value| {
                let mut input = m["inputs"][index].clone();
                input.as_object_mut().unwrap().remove("scans");
                input
            };
            assert_eq!(strip(&sharded), strip(&expected), "{shards} shards, input {index}");
        }
    }
    // A sharded `--select` run rebuilds the selected stages and carries the others over.
    let out = root.path().join("shards-16");
    let select = pipeline(&[
        "run",
        config.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--shards",
        "3",
        "--select",
        "rfm",
    ]);
    assert!(select.status.success(), "{}", stderr(&select));
    let published = manifest(&out.join("latest"));
    assert_eq!(published["selected_stages"], serde_json::json!(["rfm"]));
    assert_eq!(published["carried_over"].as_array().unwrap().len(), 17);
    assert_same_tables(&whole.join("latest"), &out.join("latest"), "select");
}

/// Generated lines (another seed, text-free integer ids) with a survey and spend, through
/// the retail config.
fn generated(workspace: &Workspace) -> PathBuf {
    let (lines, survey, spend) = (
        workspace.path("lines.parquet"),
        workspace.path("survey.parquet"),
        workspace.path("spend.parquet"),
    );
    run_ok(&[
        "generate-sample",
        "--lines",
        "40000",
        "--seed",
        "11",
        "--out",
        lines.to_str().unwrap(),
        "--survey",
        survey.to_str().unwrap(),
        "--spend",
        spend.to_str().unwrap(),
    ]);
    let retail = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/retail.toml")).unwrap();
    let text = retail
        .replace("../sample_data/order_lines.parquet", "lines.parquet")
        .replace("../sample_data/survey_answers.parquet", "survey.parquet")
        .replace("../sample_data/marketing_spend.parquet", "spend.parquet")
        // Another calibration end inside the generated history (2022-01-01 + 1,095 days).
        .replace("calibration_end = \"2024-06-30\"", "calibration_end = \"as_of - 26w\"");
    assert!(text.contains("lines.parquet") && text.contains("spend.parquet"));
    workspace.write("retail.toml", &text)
}

#[test]
fn shards_give_the_one_shard_tables_on_generated_data() {
    let workspace = Workspace::new();
    let config = generated(&workspace);
    let whole = workspace.path("whole");
    run_into(&config, &whole, None);
    for shards in [3, 5] {
        let out = workspace.path(&format!("shards-{shards}"));
        run_into(&config, &out, Some(shards));
        assert_same_tables(&whole.join("latest"), &out.join("latest"), &format!("{shards} shards"));
    }
}

/// A CSV export with what real ones hold: text ids, a refund, a line repeated (with `line`
/// mapped), an order whose lines name two customers, a null customer, lines filtered out, a
/// line after as_of, a decimal-text amount, zoned times. Many shards for few customers: most
/// shards are empty.
pub fn messy(workspace: &Workspace) -> PathBuf {
    let mut csv = String::from("order_id,line,customer_id,created_at,amount,status,channel\n");
    for row in MESSY_ROWS {
        csv.push_str(row);
        csv.push('\n');
    }
    workspace.write("lines.csv", &csv);
    workspace.write("messy.toml", MESSY_CONFIG)
}

/// The messy export's lines, as CSV rows.
pub const MESSY_ROWS: [&str; 15] = [
    "o1,1,C-ana,2024-01-05T10:00:00+01:00,10.50,completed,web",
    "o1,2,C-ana,2024-01-05T10:00:00+01:00,4.25,completed,web",
    "o1,2,C-ana,2024-01-05T10:00:00+01:00,4.25,completed,web",
    "o2,1,C-ana,2024-03-01T09:00:00+01:00,20.00,completed,web",
    "o3,1,C-bo,2024-01-20T23:30:00+00:00,7.00,completed,store",
    "o3,2,C-cy,2024-01-20T23:30:00+00:00,8.00,completed,store",
    "o4,1,C-bo,2024-02-10T12:00:00+01:00,15.00,completed,store",
    "o5,1,C-bo,2024-02-11T12:00:00+01:00,-15.00,refunded,store",
    "o6,1,,2024-02-12T12:00:00+01:00,3.00,completed,web",
    "o7,1,C-dee,2024-02-13T12:00:00+01:00,99.99,cancelled,web",
    "o8,1,C-dee,2024-04-02T12:00:00+01:00,12.34,completed,",
    "o9,1,C-eve,2024-05-01T08:00:00+02:00,5.00,completed,partner",
    "o10,1,C-eve,2024-05-20T08:00:00+02:00,6.00,completed,partner",
    "o11,1,C-fay,2024-06-01T08:00:00+02:00,30.00,completed,web",
    "o12,1,C-fay,2024-07-15T08:00:00+02:00,1.00,completed,web",
];

/// The messy export's config (orders at `lines.csv`).
pub const MESSY_CONFIG: &str = r#"[pipeline]
as_of = "2024-06-30"
timezone = "Europe/Berlin"
max_rejected_fraction = 0.5
output_dir = "out"
[sources.orders]
path = "lines.csv"
format = "csv"
exclude = { status = ["cancelled"] }
[sources.orders.csv]
text_ids = true
[sources.orders.columns]
ordered_at = "created_at"
line = "line"
status = "status"
channel = "channel"
[stages.customer_facts]
kind = "customer_facts"
[stages.cohorts]
kind = "cohort_retention"
dimensions = ["acquisition_channel"]
[stages.rfm]
kind = "rfm"
[stages.repeat]
kind = "repeat"
[stages.lifecycle]
kind = "lifecycle"
[stages.clv_simple]
kind = "clv_simple"
margin = 0.4
lifecycle = "lifecycle"
[stages.segments]
kind = "segment_summary"
input = ["rfm", "clv_simple"]
by = ["segment"]
"#;

/// The messy export's accounting, hand-counted: 15 lines; the cancelled one excluded; the
/// repeated (o1, 2) counted once; the null customer; o3's two lines (two customers); the line
/// after as_of ignored; 8 orders.
pub fn assert_messy_accounting(accounting: &serde_json::Value) {
    assert_eq!(accounting["rows_read"], 15);
    assert_eq!(accounting["rows_excluded_by_include"], 1);
    assert_eq!(accounting["duplicate_lines"], 1);
    assert_eq!(accounting["rows_rejected"]["null_customer_id"], 1);
    assert_eq!(accounting["rows_rejected"]["order_with_several_customers"], 2);
    assert_eq!(accounting["rows_ignored_after_as_of"], 1);
    assert_eq!(accounting["orders"], 8);
}

/// The accounting a manifest gives of its orders source.
pub fn accounting(manifest: &serde_json::Value) -> serde_json::Value {
    let mut input = manifest["inputs"][0].clone();
    for volatile in ["scans", "path", "files"] {
        input.as_object_mut().unwrap().remove(volatile);
    }
    input
}

/// A sharded run of a messy export counts every line as the whole run does (the order naming
/// two customers is rejected whole even when they fall in different shards), gives the same
/// tables, records its shards, and leaves no spill folder.
#[test]
fn a_sharded_run_of_a_messy_export_counts_and_computes_as_a_whole_run() {
    let workspace = Workspace::new();
    let config = messy(&workspace);
    let whole = workspace.path("whole");
    run_into(&config, &whole, None);
    let expected = accounting(&manifest(&whole.join("latest")));
    assert_messy_accounting(&expected);
    for shards in [2, 16] {
        let out = workspace.path(&format!("shards-{shards}"));
        run_into(&config, &out, Some(shards));
        let sharded = manifest(&out.join("latest"));
        assert_eq!(accounting(&sharded), expected, "{shards} shards");
        assert_eq!(sharded["shards"]["shards"], shards);
        assert!(sharded["shards"]["spill_bytes"].as_u64().unwrap() > 0);
        let tables = assert_same_tables(&whole.join("latest"), &out.join("latest"), &format!("{shards} shards"));
        assert_eq!(tables, 11);
        let facts = read_table(&out.join("latest/customer_facts.parquet"));
        assert_eq!(facts.text("customer_id"), ["C-ana", "C-bo", "C-dee", "C-eve", "C-fay"]);
        assert_eq!(facts.float("revenue"), [34.75, 0.0, 12.34, 11.0, 30.0]);
        let leftovers = temporary_files(&out);
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    assert!(whole.join("latest/_manifest.json").is_file());
    assert!(manifest(&whole.join("latest")).get("shards").is_none());
}

/// `memory_limit` under `[pipeline]` shards a run whose input would not fit; `--memory-limit`
/// overrides it; a limit that is not a size is a config error naming the key (exit 2).
#[test]
fn a_memory_limit_picks_the_shards() {
    let workspace = Workspace::new();
    let config = messy(&workspace);
    let text = std::fs::read_to_string(&config).unwrap();
    let limited = workspace.write(
        "limited.toml",
        &text.replace("[pipeline]\n", "[pipeline]\nmemory_limit = \"1KiB\"\n"),
    );
    let out = workspace.path("limited");
    run_into(&limited, &out, None);
    let published = manifest(&out.join("latest"));
    assert!(published["shards"]["shards"].as_u64().unwrap() >= 2, "{published}");
    let roomy = workspace.path("roomy");
    run_ok(&[
        "run",
        limited.to_str().unwrap(),
        "--output-dir",
        roomy.to_str().unwrap(),
        "--memory-limit",
        "8GiB",
    ]);
    assert!(manifest(&roomy.join("latest")).get("shards").is_none());
    assert_same_tables(&roomy.join("latest"), &out.join("latest"), "memory limit");

    let bad = workspace.write(
        "bad.toml",
        &text.replace("[pipeline]\n", "[pipeline]\nmemory_limit = \"lots\"\n"),
    );
    let output = pipeline(&["run", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("memory_limit") && message.contains("12GiB"),
        "{message}"
    );
    let output = pipeline(&["run", config.to_str().unwrap(), "--memory-limit", "12 parsecs"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}
