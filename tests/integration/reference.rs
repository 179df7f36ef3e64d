//! Independent reference: DuckDB SQL (tests/reference/check_sample.py) recomputes
//! customer_facts and cohort retention from the sample order lines and compares them with the
//! pipeline's tables row for row.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn python_with_duckdb() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("PIPELINE_PYTHON").map(PathBuf::from),
        Some(repo.join(".venv/bin/python")),
    ];
    candidates.into_iter().flatten().find(|python| {
        Command::new(python)
            .args(["-c", "import duckdb"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

#[test]
fn duckdb_reference_agrees_row_for_row_on_sample_data() {
    let Some(python) = python_with_duckdb() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide Python with duckdb (.ci/run creates .venv)"
        );
        eprintln!("SKIPPED: no Python with duckdb; run `bash .ci/run` once to create .venv");
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let config = repo.join("pipelines/cohorts.toml");
    run_ok(&["run", config.to_str().unwrap(), "--output-dir", out.path().to_str().unwrap()]);
    let output = Command::new(python)
        .arg(repo.join("tests/reference/check_sample.py"))
        .arg(repo.join("sample_data/order_lines.parquet"))
        .arg(out.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "reference failed:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(&report).expect("the reference prints JSON");
    for table in ["customer_facts", "cohorts", "cohorts_weekly_by_channel"] {
        let result = &report[table];
        assert!(result["rows"].as_u64().unwrap() > 100, "{table}: {result}");
        assert_eq!(result["pipeline_rows"], result["rows"], "{table}: {result}");
        assert_eq!(result["mismatches"], 0, "{table}: {result}");
    }
}
