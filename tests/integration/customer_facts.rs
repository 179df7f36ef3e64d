//! customer_facts on the tiny fixture, computed by hand (as_of 2024-03-15, UTC).

use crate::common::*;

const FACTS: &str = r#"
[stages.facts]
kind = "customer_facts"
input = "orders"
"#;

#[test]
fn customer_facts_match_hand_computed_rows() {
    let workspace = Workspace::with_tiny();
    let config = workspace.config("", FACTS);
    run_ok(&["run", config.to_str().unwrap()]);
    let facts = read_table(&workspace.out().join("facts.parquet"));
    assert_eq!(
        facts.columns,
        [
            "customer_id",
            "first_purchase_date",
            "last_purchase_date",
            "orders",
            "revenue",
            "aov",
            "acquisition_channel",
            "frequency",
            "t_x",
            "T",
            "monetary_value",
            "as_of"
        ]
    );
    // Customers 5 (after as_of), 6 (cancelled), 7 (zero revenue), 8 (null amount), 9/10 (shared
    // order) are not customers.
    assert_eq!(facts.text("customer_id"), ["1", "2", "3", "4"]);
    assert_eq!(
        facts.text("first_purchase_date"),
        ["2024-01-05", "2024-01-10", "2024-02-29", "2024-01-31"]
    );
    assert_eq!(
        facts.text("last_purchase_date"),
        ["2024-03-02", "2024-01-10", "2024-03-10", "2024-01-31"]
    );
    assert_eq!(facts.int("orders"), [3, 2, 2, 1]);
    // Customer 2's refund order (−30) nets against revenue but is not a purchase.
    assert_eq!(facts.float("revenue"), [150.0, 90.0, 90.0, 20.0]);
    assert_eq!(facts.float("aov"), [50.0, 60.0, 45.0, 20.0]);
    // Customer 2's first purchase of the day was at 09:00 in the app.
    assert_eq!(facts.text("acquisition_channel"), ["web", "app", "store", "web"]);
    // BTYD: same-day purchases merged, first purchase day excluded from monetary_value.
    assert_eq!(facts.int("frequency"), [2, 0, 1, 0]);
    assert_eq!(facts.int("t_x"), [57, 0, 10, 0]);
    assert_eq!(facts.int("T"), [70, 65, 15, 44]);
    assert_eq!(facts.float("monetary_value"), [50.0, 0.0, 10.0, 0.0]);
}

#[test]
fn manifest_counts_every_line_by_reason_and_one_scan() {
    let workspace = Workspace::with_tiny();
    let config = workspace.config(
        "",
        &format!("{FACTS}\n[stages.cohorts]\nkind = \"cohort_retention\"\ninput = \"orders\"\n"),
    );
    run_ok(&["run", config.to_str().unwrap()]);
    let manifest = manifest(&workspace.out());
    assert_eq!(manifest["status"], "succeeded");
    assert_eq!(manifest["as_of"], "2024-03-15");
    let input = &manifest["inputs"][0];
    // Two stages share one scan of the order lines.
    assert_eq!(input["scans"], 1);
    assert_eq!(manifest["inputs"].as_array().unwrap().len(), 1);
    assert_eq!(input["rows_read"], 18);
    assert_eq!(input["rows_excluded_by_include"], 1);
    assert_eq!(input["rows_ignored_after_as_of"], 1);
    assert_eq!(input["rows_rejected"]["null_amount"], 1);
    assert_eq!(input["rows_rejected"]["order_with_several_customers"], 2);
    assert_eq!(input["rows_rejected"]["null_customer_id"], 0);
    assert_eq!(input["rows_rejected_total"], 3);
    // 101 102 103 201 202 203 301 302 401 701
    assert_eq!(input["orders"], 10);
    let stages: Vec<&str> = manifest["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages.len(), 2);
    assert!(stages.contains(&"facts") && stages.contains(&"cohorts"));
    let rows: Vec<u64> = manifest["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tables"][0]["rows"].as_u64().unwrap())
        .collect();
    assert!(rows.contains(&4), "customer_facts has 4 rows: {rows:?}");
}

#[test]
fn duplicate_lines_count_once_when_line_is_mapped() {
    let workspace = Workspace::new();
    let mut lines = Vec::new();
    for l in TINY.iter().take(4) {
        lines.push(Line { ..*l });
    }
    // Line 1 of order 101 delivered twice.
    lines.push(Line { ..TINY[0] });
    write_parquet(&mut lines_frame(&lines), &workspace.path("lines.parquet"));
    let config = config_with_line_column(&workspace);
    run_ok(&["run", config.to_str().unwrap()]);
    let facts = read_table(&workspace.out().join("facts.parquet"));
    assert_eq!(facts.float("revenue"), [150.0]);
    let manifest = manifest(&workspace.out());
    assert_eq!(manifest["inputs"][0]["duplicate_lines"], 1);
    assert_eq!(manifest["inputs"][0]["rows_read"], 5);
}

#[test]
fn lines_without_a_line_number_are_not_merged() {
    use polars::prelude::*;
    let workspace = Workspace::new();
    // Order 101's two lines (30 + 20) lose their line numbers.
    let mut frame = lines_frame(&TINY[..4])
        .lazy()
        .with_column(
            when(col("order_id").eq(lit(101)))
                .then(lit(NULL).cast(DataType::Int32))
                .otherwise(col("line"))
                .alias("line"),
        )
        .collect()
        .unwrap();
    write_parquet(&mut frame, &workspace.path("lines.parquet"));
    let config = config_with_line_column(&workspace);
    run_ok(&["run", config.to_str().unwrap()]);
    assert_eq!(
        read_table(&workspace.out().join("facts.parquet")).float("revenue"),
        [150.0]
    );
    assert_eq!(manifest(&workspace.out())["inputs"][0]["duplicate_lines"], 0);
}

/// The customer_facts config with the `line` column mapped too.
fn config_with_line_column(workspace: &Workspace) -> std::path::PathBuf {
    let config = workspace.config("", FACTS);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("channel = \"channel\"", "channel = \"channel\"\nline = \"line\"");
    std::fs::write(&config, text).unwrap();
    config
}
