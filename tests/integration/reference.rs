//! Independent reference: DuckDB SQL (tests/reference/) recomputes customer_facts, cohort
//! retention, rfm, repeat, lifecycle, nps, acquisition (CAC, payback, LTV:CAC), cost and segment
//! summaries from the sample order lines, survey and spend, and compares them with the pipeline's
//! tables row for row.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Run `config` on the sample data, then `script` over its outputs; the script's JSON report.
fn reference_report(config: &str, script: &str) -> Option<serde_json::Value> {
    let Some(python) = python_with_duckdb() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide Python with duckdb (.ci/run creates .venv)"
        );
        eprintln!("SKIPPED: no Python with duckdb; run `bash .ci/run` once to create .venv");
        return None;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let config = repo.join(config);
    run_ok(&[
        "run",
        config.to_str().unwrap(),
        "--output-dir",
        out.path().to_str().unwrap(),
    ]);
    let output = Command::new(python)
        .arg(repo.join(script))
        .arg(repo.join("sample_data/order_lines.parquet"))
        .arg(out.path().join("latest"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "reference failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_str(&report).expect("the reference prints JSON"))
}

fn assert_all_rows_agree(report: &serde_json::Value, tables: &[&str]) {
    for table in tables {
        let result = &report[table];
        assert!(result["rows"].as_u64().unwrap() >= 10, "{table}: {result}");
        assert_eq!(result["pipeline_rows"], result["rows"], "{table}: {result}");
        assert_eq!(result["mismatches"], 0, "{table}: {result}");
    }
}

#[test]
fn duckdb_reference_agrees_on_facts_and_cohorts() {
    if let Some(report) = reference_report("pipelines/cohorts.toml", "tests/reference/check_sample.py") {
        assert_all_rows_agree(&report, &["customer_facts", "cohorts", "cohorts_weekly_by_channel"]);
    }
}

#[test]
fn duckdb_reference_agrees_on_rfm_repeat_lifecycle_nps_acquisition_cost_and_segment_summaries() {
    if let Some(report) = reference_report("pipelines/retail.toml", "tests/reference/check_retail.py") {
        assert_all_rows_agree(
            &report,
            &[
                "rfm_customers",
                "rfm_segments",
                "repeat_summary",
                "repeat_transitions",
                "lifecycle_snapshots",
                "lifecycle_customers",
                "segments",
                "lifecycle_by_channel",
                "nps_periods",
                "nps_customers",
                "nps_by_segment",
                "customer_facts_cost",
                "acquisition",
                "acquisition_payback",
            ],
        );
    }
}
