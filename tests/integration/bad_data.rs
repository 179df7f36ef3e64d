//! Bad data: exit 1 with a message naming the source, file and column; the previous outputs
//! stay byte for byte as they were, and the manifest records the failure.

use std::path::Path;

use polars::prelude::*;

use crate::common::*;

const STAGES: &str = "[stages.cohorts]\nkind = \"cohort_retention\"\ninput = \"orders\"\n";

/// Run once successfully, break the input, run again: returns the failing run's stderr.
fn fails_after_good_run(workspace: &Workspace, break_input: impl FnOnce(&Path)) -> String {
    let config = workspace.config("", STAGES);
    run_ok(&["run", config.to_str().unwrap()]);
    let table = workspace.out().join("cohorts.parquet");
    let before = std::fs::read(&table).unwrap();
    break_input(&workspace.path("lines.parquet"));
    let output = pipeline(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    assert_eq!(std::fs::read(&table).unwrap(), before, "previous output changed");
    let left = temporary_files(&workspace.root());
    assert!(left.is_empty(), "temporary files left: {left:?}");
    assert_eq!(
        std::fs::read_to_string(workspace.root().join(".pipeline.lock")).unwrap_or_default(),
        "",
        "the lock is released and names no run"
    );
    // The failure is recorded beside the snapshots; the published snapshot says succeeded.
    let last = last_run(&workspace.root());
    assert_eq!(last["status"], "failed");
    assert!(last["error"].as_str().unwrap().contains("source `orders`"));
    assert_eq!(manifest(&workspace.out())["status"], "succeeded");
    stderr(&output)
}

fn rewrite(path: &Path, change: impl FnOnce(DataFrame) -> DataFrame) {
    let frame = lines_frame(TINY);
    write_parquet(&mut change(frame), path);
}

#[test]
fn missing_mapped_column() {
    let workspace = Workspace::with_tiny();
    let text = fails_after_good_run(&workspace, |path| {
        rewrite(path, |frame| {
            frame
                .drop("line_amount")
                .unwrap()
                .lazy()
                .with_column(lit(1.0).alias("amount_eur"))
                .collect()
                .unwrap()
        })
    });
    assert!(text.contains("source `orders`"), "{text}");
    assert!(text.contains("lines.parquet"), "{text}");
    assert!(
        text.contains("column `line_amount` (mapped as `amount`) is not in the input"),
        "{text}"
    );
}

#[test]
fn amount_stored_as_text() {
    let workspace = Workspace::with_tiny();
    let text = fails_after_good_run(&workspace, |path| {
        rewrite(path, |frame| {
            frame
                .lazy()
                .with_column(col("line_amount").cast(DataType::String))
                .collect()
                .unwrap()
        })
    });
    assert!(
        text.contains("column `line_amount` (mapped as `amount`) has type str: expected a number"),
        "{text}"
    );
}

#[test]
fn ordered_at_stored_as_integer() {
    let workspace = Workspace::with_tiny();
    let text = fails_after_good_run(&workspace, |path| {
        rewrite(path, |frame| {
            frame
                .lazy()
                .with_column(col("created_at").cast(DataType::Int64))
                .collect()
                .unwrap()
        })
    });
    assert!(
        text.contains("column `created_at` (mapped as `ordered_at`) has type i64: expected a date, or a timestamp"),
        "{text}"
    );
}

#[test]
fn nulls_over_the_limit_fail_with_counts_by_reason() {
    let workspace = Workspace::with_tiny();
    let text = fails_after_good_run(&workspace, |path| {
        rewrite(path, |frame| {
            frame
                .lazy()
                .with_column(
                    when(col("order_id").lt(lit(300)))
                        .then(lit(NULL).cast(DataType::Int64))
                        .otherwise(col("customer_id"))
                        .alias("customer_id"),
                )
                .collect()
                .unwrap()
        })
    });
    // 7 null customer ids + 1 null amount + 2 lines of a shared order = 10 of 18 > 0.2.
    assert!(text.contains("10 of 18 rows rejected"), "{text}");
    assert!(
        text.contains("(55.5556%): null_amount 1, null_customer_id 7, order_with_several_customers 2;"),
        "{text}"
    );
    assert!(text.contains("more than max_rejected_fraction = 0.2;"), "{text}");
    // The value that would accept this run, and where it goes.
    assert!(
        text.contains("set `max_rejected_fraction = 0.56` under `[pipeline]`"),
        "{text}"
    );
    // The failure manifest carries the accounting too.
    let manifest = last_run(&workspace.root());
    assert_eq!(manifest["inputs"][0]["rows_rejected"]["null_customer_id"], 7);
    assert_eq!(manifest["inputs"][0]["rows_read"], 18);
}

#[test]
fn missing_input_file_is_named() {
    let workspace = Workspace::with_tiny();
    let text = fails_after_good_run(&workspace, |path| std::fs::remove_file(path).unwrap());
    assert!(text.contains("input path"), "{text}");
    assert!(text.contains("lines.parquet` does not exist"), "{text}");
}

#[test]
fn validate_reports_data_problems_without_running() {
    let workspace = Workspace::with_tiny();
    rewrite(&workspace.path("lines.parquet"), |frame| {
        frame
            .lazy()
            .with_column(col("customer_id").cast(DataType::Float64))
            .collect()
            .unwrap()
    });
    let config = workspace.config("", STAGES);
    let output = pipeline(&["validate", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains(
            "column `customer_id` (mapped as `customer_id`) has type f64: expected an integer of any width, or text"
        ),
        "{text}"
    );
    assert!(!workspace.root().exists());
}

/// A panic anywhere (here injected in the source scan and in a stage) is exit 1 with a message
/// saying it is a bug and where it happened, the manifest `failed`, the previous tables kept.
#[test]
fn a_panic_is_a_clean_failure_that_says_it_is_a_bug() {
    for target in ["orders", "cohorts"] {
        let workspace = Workspace::with_tiny();
        let config = workspace.config("", STAGES);
        run_ok(&["run", config.to_str().unwrap()]);
        let table = workspace.out().join("cohorts.parquet");
        let before = std::fs::read(&table).unwrap();
        let output = assert_cmd::Command::cargo_bin("pipeline")
            .unwrap()
            .args(["run", config.to_str().unwrap()])
            .env("PIPELINE_INJECT_PANIC", target)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{target}: {text}");
        assert!(!text.contains("panicked at"), "{target}: no raw panic report: {text}");
        assert!(
            text.contains("internal error: this is a bug in pipeline")
                && text.contains(&format!("injected panic in `{target}`"))
                && text.contains("(at src/"),
            "{target}: {text}"
        );
        assert_eq!(std::fs::read(&table).unwrap(), before, "{target}: previous table kept");
        let last = last_run(&workspace.root());
        assert_eq!(last["status"], "failed", "{target}");
        assert!(last["error"].as_str().unwrap().contains("this is a bug"), "{target}");
        assert_eq!(
            manifest(&workspace.out())["status"],
            "succeeded",
            "{target}: latest kept"
        );
    }
}
