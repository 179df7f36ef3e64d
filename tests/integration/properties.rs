//! Properties of the full retail pipeline on the sample data: every customer scored and placed
//! exactly once, shares that add up, rates in range, transition counts consistent with the
//! frequency distribution.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;

#[test]
fn retail_tables_are_consistent_on_sample_data() {
    let out = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/retail.toml");
    run_ok(&[
        "run",
        config.to_str().unwrap(),
        "--output-dir",
        out.path().to_str().unwrap(),
    ]);
    let table = |name: &str| read_table(&out.path().join("latest").join(format!("{name}.parquet")));
    let facts = table("customer_facts");
    let customers = facts.rows;

    let rfm = table("rfm_customers");
    assert_eq!(rfm.rows, customers);
    for score in ["r_score", "f_score", "m_score"] {
        assert!(
            rfm.int(score).iter().all(|s| (1..=5).contains(s)),
            "{score} outside 1..5"
        );
        // rank_min: the best score exists.
        assert!(rfm.int(score).contains(&5), "{score} never reaches 5");
    }
    assert!(
        rfm.text("segment").iter().all(|s| !s.is_empty()),
        "every customer has a segment"
    );
    let segments = table("rfm_segments");
    assert_eq!(segments.int("customers").iter().sum::<i64>() as usize, customers);
    assert_close(segments.float("share").iter().sum(), 1.0, "segment shares");
    assert_close(
        segments.float("revenue_share").iter().sum(),
        1.0,
        "segment revenue shares",
    );
    let by_segment = table("segments");
    assert_eq!(by_segment.int("customers").iter().sum::<i64>() as usize, customers);

    let lifecycle = table("lifecycle_customers");
    assert_eq!(lifecycle.rows, customers);
    let stages = ["new", "reactivated", "active", "at_risk", "churned"];
    assert!(lifecycle.text("stage").iter().all(|s| stages.contains(&s.as_str())));
    let snapshots = table("lifecycle_snapshots");
    let last = snapshots.rows - 1;
    let in_stages: i64 = stages.iter().map(|s| snapshots.int(s)[last]).sum();
    assert_eq!(
        in_stages as usize, customers,
        "the last snapshot places every customer once"
    );
    for (row, crr) in snapshots.float("crr").iter().enumerate() {
        if !crr.is_nan() {
            assert!((0.0..=1.0).contains(crr), "crr {crr} at row {row}");
            assert_close(snapshots.float("churn_rate")[row], 1.0 - crr, "churn = 1 − crr");
        }
    }

    // Without censoring, P(k+1 | k) counts are the frequency distribution's tail counts.
    let transitions = table("repeat_transitions");
    let mut at_least: BTreeMap<i64, i64> = BTreeMap::new();
    for orders in facts.int("orders") {
        for k in 1..=orders.min(6) {
            *at_least.entry(k).or_default() += 1;
        }
    }
    for row in 0..transitions.rows {
        if transitions.text("cohort")[row].is_empty() {
            let k = transitions.int("k")[row];
            let at_k = transitions.int("customers_at_k")[row];
            let next = transitions.int("customers_at_k_plus_1")[row];
            assert!(
                at_k <= at_least[&k] && next <= at_least[&(k + 1)] && next <= at_k,
                "k = {k}"
            );
        }
    }
    let summary = table("repeat_summary");
    assert_eq!(summary.int("customers")[0] as usize, customers);
    let repeaters = facts.int("orders").iter().filter(|o| **o >= 2).count();
    assert_eq!(summary.int("repeat_customers")[0] as usize, repeaters);
    assert_eq!(summary.int("customers")[1..].iter().sum::<i64>() as usize, customers);

    let clv = table("clv_simple");
    assert_eq!(clv.rows, customers);
    assert!(clv.float("simple_clv").iter().all(|v| v.is_finite() && *v > 0.0));
    assert_eq!(clv.float("historic_clv"), facts.float("revenue"));
}
