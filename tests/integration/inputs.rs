//! Input layouts: one file, a glob over several files, a Hive-partitioned directory — the same
//! lines give the same tables.

use crate::common::*;

const FACTS: &str = "[stages.facts]\nkind = \"customer_facts\"\ninput = \"orders\"\n";

fn facts_revenue(workspace: &Workspace, path: &str) -> (Vec<String>, Vec<f64>, serde_json::Value) {
    let config = workspace.config("", FACTS);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("path = \"lines.parquet\"", &format!("path = \"{path}\""));
    std::fs::write(&config, text).unwrap();
    run_ok(&["run", config.to_str().unwrap()]);
    let facts = read_table(&workspace.out().join("facts.parquet"));
    (
        facts.text("customer_id"),
        facts.float("revenue"),
        manifest(&workspace.out()),
    )
}

#[test]
fn glob_and_hive_directory_read_the_same_lines() {
    let workspace = Workspace::new();
    let frame = lines_frame(TINY);
    // Glob: the first 9 lines in one file, the rest in another.
    write_parquet(&mut frame.slice(0, 9), &workspace.path("parts/a.parquet"));
    write_parquet(&mut frame.slice(9, 100), &workspace.path("parts/b.parquet"));
    let (ids, revenue, manifest) = facts_revenue(&workspace, "parts/*.parquet");
    assert_eq!(ids, ["1", "2", "3", "4"]);
    assert_eq!(revenue, [150.0, 90.0, 90.0, 20.0]);
    assert_eq!(manifest["inputs"][0]["files"].as_array().unwrap().len(), 2);
    assert_eq!(manifest["inputs"][0]["rows_read"], 18);

    // Hive layout: partition folders by customer parity.
    let workspace = Workspace::new();
    write_parquet(
        &mut frame.slice(0, 9),
        &workspace.path("hive/region=north/part-0.parquet"),
    );
    write_parquet(
        &mut frame.slice(9, 100),
        &workspace.path("hive/region=south/part-0.parquet"),
    );
    let (ids, revenue, manifest) = facts_revenue(&workspace, "hive");
    assert_eq!(ids, ["1", "2", "3", "4"]);
    assert_eq!(revenue, [150.0, 90.0, 90.0, 20.0]);
    assert_eq!(manifest["inputs"][0]["files"].as_array().unwrap().len(), 2);
}

#[test]
fn glob_matching_nothing_is_a_data_error_naming_the_pattern() {
    let workspace = Workspace::with_tiny();
    let config = workspace.config("", FACTS);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("path = \"lines.parquet\"", "path = \"nothing/*.parquet\"");
    std::fs::write(&config, text).unwrap();
    let output = pipeline(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("nothing/*.parquet` matches no file"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn text_customer_ids_work_like_integers() {
    let workspace = Workspace::new();
    let mut frame = lines_frame(TINY);
    let text_ids = frame
        .column("customer_id")
        .unwrap()
        .cast(&polars::prelude::DataType::String)
        .unwrap();
    frame.with_column(text_ids).unwrap();
    write_parquet(&mut frame, &workspace.path("lines.parquet"));
    let (ids, revenue, _) = facts_revenue(&workspace, "lines.parquet");
    assert_eq!(ids, ["1", "2", "3", "4"]);
    assert_eq!(revenue, [150.0, 90.0, 90.0, 20.0]);
}

#[test]
fn unsigned_ids_keep_numeric_order_and_ids_above_i64_fail_naming_the_column() {
    use polars::prelude::{DataType, IntoColumn};
    let workspace = Workspace::new();
    let mut frame = lines_frame(TINY);
    // Customers 1..4 as UInt64 9..12: "9" sorts after "12" as text, first as a number.
    let ids = frame.column("customer_id").unwrap().cast(&DataType::UInt64).unwrap();
    let ids = (ids.as_materialized_series() + 8u64).into_column();
    frame.with_column(ids).unwrap();
    write_parquet(&mut frame, &workspace.path("lines.parquet"));
    let (ids, revenue, _) = facts_revenue(&workspace, "lines.parquet");
    assert_eq!(ids, ["9", "10", "11", "12"]);
    assert_eq!(revenue, [150.0, 90.0, 90.0, 20.0]);

    let huge = frame.column("customer_id").unwrap().as_materialized_series() + u64::MAX / 2;
    frame.with_column(huge.into_column()).unwrap();
    write_parquet(&mut frame, &workspace.path("lines.parquet"));
    let config = workspace.config("", FACTS);
    let output = pipeline(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("customer_id"), "{message}");
    assert!(message.contains("reading order lines"), "{message}");
}
