//! Scale-out: every stage computed over customer shards (`--shards N`, split in memory) gives
//! the tables of the one-shard run, on the sample data and on generated data: integers, text
//! and dates exactly, doubles to 1e-12 relative.

use std::path::{Path, PathBuf};

use crate::common::*;

fn run_into(config: &Path, out: &Path, shards: Option<usize>) {
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
fn assert_same_tables(expected: &Path, actual: &Path, what: &str) -> usize {
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
    for shards in [1, 2, 7, 16] {
        let out = root.path().join(format!("shards-{shards}"));
        run_into(&config, &out, Some(shards));
        let tables = assert_same_tables(&whole.join("latest"), &out.join("latest"), &format!("{shards} shards"));
        assert_eq!(tables, 20);
    }
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
