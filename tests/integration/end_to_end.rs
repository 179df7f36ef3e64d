//! The real binary on the bundled sample data and the shipped config.

use std::path::Path;

use crate::common::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Run the bundled sample job into `out` with extra arguments.
fn run_sample(out: &Path, extra: &[&str]) {
    let config = repo().join("pipelines/cohorts.toml");
    let mut args = vec!["run", config.to_str().unwrap(), "--output-dir", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_ok(&args);
}

#[test]
fn sample_pipeline_publishes_consistent_tables() {
    let out = tempfile::tempdir().unwrap();
    run_sample(out.path(), &[]);

    let facts = read_table(&out.path().join("latest").join("customer_facts.parquet"));
    let customers = facts.rows;
    assert!(customers > 3000, "sample has a few thousand customers, got {customers}");
    let cohorts = read_table(&out.path().join("latest").join("cohorts.parquet"));
    // Period 0: everybody acquired in the cohort period is active: retention 1.
    let mut cohort_total = 0;
    for row in 0..cohorts.rows {
        if cohorts.int("period_index")[row] == 0 {
            assert_close(cohorts.float("retention")[row], 1.0, "period 0 retention");
            cohort_total += cohorts.int("cohort_customers")[row];
        }
        assert!(cohorts.float("unbounded_retention")[row] >= cohorts.float("retention")[row]);
    }
    assert_eq!(
        cohort_total as usize, customers,
        "cohort sizes sum to the customer count"
    );
    // 36 monthly cohorts (2022-01 … 2024-12) → 36·37/2 rows in the dense triangle.
    assert_eq!(cohorts.rows, 666);
    let by_channel = read_table(&out.path().join("latest").join("cohorts_weekly_by_channel.parquet"));
    let mut channel_total = 0;
    for row in 0..by_channel.rows {
        if by_channel.int("period_index")[row] == 0 {
            channel_total += by_channel.int("cohort_customers")[row];
        }
    }
    assert_eq!(channel_total as usize, customers);
    // Orders: the sum over the triangle equals the customers' purchases.
    let orders: i64 = facts.int("orders").iter().sum();
    assert_eq!(cohorts.int("orders").iter().sum::<i64>(), orders);

    let manifest = manifest(&out.path().join("latest"));
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(manifest["inputs"][0]["scans"], 1);
    assert_eq!(manifest["stages"].as_array().unwrap().len(), 3);
}

#[test]
fn select_runs_only_the_named_stage() {
    let out = tempfile::tempdir().unwrap();
    run_sample(out.path(), &["--select", "cohorts", "--threads", "1"]);
    assert!(out.path().join("latest").join("cohorts.parquet").exists());
    assert!(!out.path().join("latest").join("customer_facts.parquet").exists());
    let manifest = manifest(&out.path().join("latest"));
    assert_eq!(manifest["selected_stages"], serde_json::json!(["cohorts"]));
}

#[test]
fn plan_lists_stages_with_inputs_and_tables() {
    let config = repo().join("pipelines/cohorts.toml");
    let output = run_ok(&["plan", config.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("source `orders`"), "{text}");
    assert!(text.contains("scanned once → customer_facts, customer_periods (shared by `customer_facts`, `cohorts`, `cohorts_by_channel`)"), "{text}");
    assert!(
        text.contains("cohorts_by_channel (cohort_retention) ← source `orders` → cohorts_weekly_by_channel"),
        "{text}"
    );
    let mermaid = run_ok(&["plan", config.to_str().unwrap(), "--format", "mermaid"]);
    let text = String::from_utf8_lossy(&mermaid.stdout);
    assert!(text.starts_with("flowchart LR"), "{text}");
    assert!(text.contains("src_orders --> st_cohorts"), "{text}");
    let dot = run_ok(&["plan", config.to_str().unwrap(), "--format", "dot"]);
    assert!(String::from_utf8_lossy(&dot.stdout).contains("src_orders -> st_cohorts;"));
}

#[test]
fn same_input_gives_identical_tables() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    run_sample(first.path(), &[]);
    run_sample(second.path(), &["--threads", "1"]);
    for table in ["customer_facts", "cohorts", "cohorts_weekly_by_channel"] {
        let a = table_data(&first.path().join("latest").join(format!("{table}.parquet")));
        let b = table_data(&second.path().join("latest").join(format!("{table}.parquet")));
        assert!(a == b, "table {table} differs between runs");
    }
}
