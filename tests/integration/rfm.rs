//! rfm on the extended tiny fixture, by hand (as_of 2024-03-15; 7 customers).
//!
//! customer:      1    2    3    4   11   12   13
//! recency_days: 13   65    5   44    1   24   34
//! frequency:     3    2    2    1    1    1    2
//! revenue:     150   90   90   20   35   20   80

use crate::common::*;

fn rfm(options: &str) -> Vec<Table> {
    Workspace::run_stages(
        &extended(),
        &format!("[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n{options}\n"),
        &["rfm_customers", "rfm_thresholds", "rfm_segments"],
    )
}

#[test]
fn rank_min_scores_ties_and_default_segments() {
    let tables = rfm("");
    let customers = &tables[0];
    assert_eq!(customers.text("customer_id"), ["1", "2", "3", "4", "11", "12", "13"]);
    assert_eq!(customers.int("recency_days"), [13, 65, 5, 44, 1, 24, 34]);
    assert_eq!(customers.int("frequency"), [3, 2, 2, 1, 1, 1, 2]);
    assert_eq!(customers.float("monetary"), [150.0, 90.0, 90.0, 20.0, 35.0, 20.0, 80.0]);
    // R: worst first 65, 44, 34, 24, 13, 5, 1 → ranks 1..7 → 1 + ⌊5(r−1)/7⌋.
    assert_eq!(customers.int("r_score"), [3, 1, 4, 1, 5, 3, 2]);
    // F: three customers tie at frequency 1 (rank 1 → 1), three at 2 (rank 4 → 3), one at 3.
    assert_eq!(customers.int("f_score"), [5, 3, 3, 1, 1, 1, 3]);
    assert_eq!(customers.int("m_score"), [5, 3, 3, 1, 2, 1, 3]);
    assert_eq!(
        customers.text("rfm_score"),
        ["355", "133", "433", "111", "512", "311", "233"]
    );
    // Customer 11 bought only on as_of − 1: R 5, F 1 → new_customers.
    assert_eq!(
        customers.text("segment"),
        [
            "loyal_customers",
            "at_risk",
            "potential_loyalists",
            "hibernating",
            "new_customers",
            "about_to_sleep",
            "at_risk"
        ]
    );

    let thresholds = &tables[1];
    let row = thresholds.find(&[("dimension", "frequency"), ("score", "3")]);
    assert_eq!(
        (thresholds.float("min_value")[row], thresholds.float("max_value")[row]),
        (2.0, 2.0)
    );
    assert_eq!(thresholds.int("customers")[row], 3);
    let row = thresholds.find(&[("dimension", "recency"), ("score", "1")]);
    assert_eq!(
        (thresholds.float("min_value")[row], thresholds.float("max_value")[row]),
        (44.0, 65.0)
    );
    assert_eq!(
        thresholds.int("customers").iter().sum::<i64>(),
        21,
        "7 customers in each dimension"
    );

    let segments = &tables[2];
    assert_eq!(
        segments.text("segment"),
        [
            "champions",
            "new_customers",
            "potential_loyalists",
            "loyal_customers",
            "promising",
            "need_attention",
            "about_to_sleep",
            "cannot_lose_them",
            "at_risk",
            "hibernating"
        ]
    );
    assert_eq!(segments.int("customers"), [0, 1, 1, 1, 0, 0, 1, 0, 2, 1]);
    let at_risk = segments.find(&[("segment", "at_risk")]);
    assert_close(segments.float("share")[at_risk], 2.0 / 7.0, "share");
    assert_close(segments.float("revenue")[at_risk], 170.0, "revenue");
    assert_close(segments.float("revenue_share")[at_risk], 170.0 / 485.0, "revenue_share");
    assert_close(segments.float("mean_recency_days")[at_risk], 49.5, "mean recency");
    assert_close(segments.float("mean_frequency")[at_risk], 2.0, "mean frequency");
    assert_close(segments.float("mean_monetary")[at_risk], 85.0, "mean monetary");
}

#[test]
fn ntile_breaks_ties_by_customer_id() {
    let customers = &rfm("method = \"ntile\"")[0];
    // Frequency order (value, then id): 4, 11, 12, 2, 3, 13, 1 → positions 1..7.
    assert_eq!(customers.int("f_score"), [5, 3, 3, 1, 1, 2, 4]);
}

#[test]
fn explicit_thresholds_with_custom_rules() {
    let customers = &rfm(
        "method = \"thresholds\"\nthresholds = { recency = [30, 60], frequency = [2, 3], monetary = [50, 100] }\nsegments = [\n  { segment = \"best\", r = [3, 3], f = [2, 3] },\n  { segment = \"rest\" },\n]",
    )[0];
    // R = 1 + #{t ≥ recency}; F, M = 1 + #{t ≤ value}.
    assert_eq!(customers.int("r_score"), [3, 1, 3, 2, 3, 3, 2]);
    assert_eq!(customers.int("f_score"), [3, 2, 2, 1, 1, 1, 2]);
    assert_eq!(customers.int("m_score"), [3, 2, 2, 1, 1, 1, 2]);
    assert_eq!(
        customers.text("segment"),
        ["best", "rest", "best", "rest", "rest", "rest", "rest"]
    );
}

#[test]
fn shadowed_rule_and_uncovered_cells_are_config_errors() {
    let workspace = Workspace::with_tiny();
    let config = workspace.config(
        "",
        "[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\nbins = 3\nsegments = [\n  { segment = \"top\", r = [2, 3] },\n  { segment = \"also_top\", r = [3, 3], f = [1, 3] },\n]\n",
    );
    let output = pipeline(&["validate", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("stage `rfm`: rule `also_top` is fully shadowed by earlier rules"),
        "{text}"
    );
    assert!(
        text.contains("segment rules leave 9 of 27 score cells uncovered (e.g. R F M = 111, 112, 113"),
        "{text}"
    );
    assert!(text.contains("pipeline.toml:22:12"), "{text}");
}
