//! clv_simple and segment_summary on the extended tiny fixture, by hand.

use crate::common::*;

#[test]
fn simple_clv_with_configured_and_derived_lifespan() {
    let tables = Workspace::run_stages(
        &extended(),
        "[stages.fixed]\nkind = \"clv_simple\"\ninput = \"orders\"\nmargin = 0.5\nlifespan_years = 2\n\n[stages.derived]\nkind = \"clv_simple\"\ninput = \"orders\"\nmargin = 0.5\n",
        &["fixed", "derived"],
    );
    let fixed = &tables[0];
    assert_eq!(
        fixed.columns,
        [
            "customer_id",
            "historic_clv",
            "aov",
            "purchases_per_year",
            "lifespan_years",
            "margin",
            "simple_clv",
            "as_of"
        ]
    );
    assert_eq!(fixed.float("historic_clv"), [150.0, 90.0, 90.0, 20.0, 35.0, 20.0, 80.0]);
    // Customer 1: tenure 70 days < 1 year → 3 purchases per year; 50 × 3 × 2 × 0.5.
    assert_close(fixed.float("purchases_per_year")[0], 3.0, "ppy 1");
    assert_close(fixed.float("simple_clv")[0], 150.0, "clv 1");
    // Customer 13: tenure 380 days: 2 / (380 / 365.25) purchases per year, AOV 40.
    let ppy = 2.0 / (380.0 / 365.25);
    assert_close(fixed.float("purchases_per_year")[6], ppy, "ppy 13");
    assert_close(fixed.float("simple_clv")[6], 40.0 * ppy * 2.0 * 0.5, "clv 13");
    // Derived: monthly CRRs 1, 1, 1, 1, 0 (August 2023), 1, 1 → annual churn 1 → lifespan 1 year.
    let derived = &tables[1];
    assert_close(derived.float("lifespan_years")[0], 1.0, "lifespan");
    assert_close(derived.float("simple_clv")[0], 75.0, "derived clv 1");
}

#[test]
fn segment_summary_joins_rfm_and_clv() {
    let tables = Workspace::run_stages(
        &extended(),
        "[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n\n[stages.clv]\nkind = \"clv_simple\"\ninput = \"orders\"\nmargin = 0.5\nlifespan_years = 1\n\n[stages.by_segment]\nkind = \"segment_summary\"\ninput = [\"rfm\", \"clv\"]\nby = [\"segment\"]\n",
        &["by_segment"],
    );
    let summary = &tables[0];
    assert_eq!(
        summary.columns,
        [
            "segment",
            "customers",
            "share",
            "revenue",
            "revenue_share",
            "mean_historic_clv",
            "median_historic_clv",
            "mean_simple_clv",
            "median_simple_clv",
            "repeat_rate",
            "as_of"
        ]
    );
    assert_eq!(
        summary.text("segment"),
        [
            "about_to_sleep",
            "at_risk",
            "hibernating",
            "loyal_customers",
            "new_customers",
            "potential_loyalists"
        ]
    );
    assert_eq!(summary.int("customers"), [1, 2, 1, 1, 1, 1]);
    let at_risk = 1;
    assert_close(summary.float("revenue")[at_risk], 170.0, "revenue");
    assert_close(summary.float("revenue_share")[at_risk], 170.0 / 485.0, "revenue share");
    assert_close(summary.float("mean_historic_clv")[at_risk], 85.0, "mean historic");
    // Customer 2: 60 × 2 × 1 × 0.5 = 60; customer 13: 40 × 2/(380/365.25) × 0.5.
    let clv_13 = 40.0 * 2.0 / (380.0 / 365.25) * 0.5;
    assert_close(
        summary.float("mean_simple_clv")[at_risk],
        (60.0 + clv_13) / 2.0,
        "mean simple",
    );
    assert_close(
        summary.float("median_simple_clv")[at_risk],
        (60.0 + clv_13) / 2.0,
        "median simple",
    );
    assert_eq!(summary.float("repeat_rate"), [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
}

#[test]
fn segment_summary_names_a_missing_column() {
    let workspace = Workspace::with_lines(&extended());
    let config = workspace.config("", "[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n\n[stages.by]\nkind = \"segment_summary\"\ninput = [\"rfm\"]\nby = [\"segmnt\"]\n");
    // Found before any data is read: a config error with a suggestion.
    let output = pipeline(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("stage `by`: column `segmnt` is in no per-customer table of its inputs"),
        "{text}"
    );
    assert!(text.contains("did you mean `segment`?"), "{text}");
    assert!(!workspace.root().exists(), "nothing written");
}

#[test]
fn segment_summary_by_first_purchase_month() {
    // First purchases: 13 in 2023-03; 1, 2, 4 in January; 3, 12 in February; 11 in March.
    let tables = Workspace::run_stages(
        &extended(),
        "[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n\n[stages.by_cohort]\nkind = \"segment_summary\"\ninput = [\"rfm\"]\nby = [\"cohort\"]\n",
        &["by_cohort"],
    );
    let summary = &tables[0];
    assert_eq!(
        summary.text("cohort"),
        ["2023-03-01", "2024-01-01", "2024-02-01", "2024-03-01"]
    );
    assert_eq!(summary.int("customers"), [1, 3, 2, 1]);
    assert_eq!(summary.float("repeat_rate"), [1.0, 2.0 / 3.0, 0.5, 0.0]);
    // Without a cohort column asked for, it is still named among the columns available.
    let workspace = Workspace::with_lines(&extended());
    let config = workspace.config("", "[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n\n[stages.by]\nkind = \"segment_summary\"\ninput = [\"rfm\"]\nby = [\"cohrt\"]\n");
    let text = stderr(&pipeline(&["run", config.to_str().unwrap()]));
    assert!(text.contains("`cohort`"), "{text}");
}

/// `lifecycle = "<stage>"` takes the churn from that stage's monthly snapshots: the same table as
/// walking the customers again, and the lifecycle stage runs first. A non-monthly stage, another
/// kind, an unknown name, or thresholds given beside it are errors.
#[test]
fn churn_from_a_lifecycle_stage_equals_the_walk() {
    let tables = Workspace::run_stages(
        &extended(),
        "[stages.life]\nkind = \"lifecycle\"\ninput = \"orders\"\n\n[stages.walked]\nkind = \"clv_simple\"\ninput = \"orders\"\nmargin = 0.5\n\n[stages.read]\nkind = \"clv_simple\"\ninput = \"orders\"\nmargin = 0.5\nlifecycle = \"life\"\n",
        &["walked", "read"],
    );
    let (walked, read) = (&tables[0], &tables[1]);
    assert_close(read.float("lifespan_years")[0], 1.0, "lifespan");
    for column in ["historic_clv", "purchases_per_year", "lifespan_years", "simple_clv"] {
        assert_eq!(walked.float(column), read.float(column), "{column}");
    }

    let workspace = Workspace::with_lines(&extended());
    let weekly = workspace.config(
        "",
        "[stages.life]\nkind = \"lifecycle\"\ninput = \"orders\"\ngranularity = \"week\"\n\n[stages.clv]\nkind = \"clv_simple\"\ninput = \"orders\"\nlifecycle = \"life\"\n",
    );
    let output = pipeline(&["run", weekly.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("snapshots are not monthly; give it `granularity = \"month\"`"),
        "{}",
        stderr(&output)
    );
    for (stages, message) in [
        (
            "[stages.rfm]\nkind = \"rfm\"\ninput = \"orders\"\n\n[stages.clv]\nkind = \"clv_simple\"\ninput = \"orders\"\nlifecycle = \"rfm\"\n",
            "key `lifecycle` of stage `clv`: `rfm` is a `rfm` stage; `lifecycle` takes a stage of kind `lifecycle`",
        ),
        (
            "[stages.life]\nkind = \"lifecycle\"\ninput = \"orders\"\n\n[stages.clv]\nkind = \"clv_simple\"\ninput = \"orders\"\nlifecycle = \"lif\"\n",
            "key `lifecycle` of stage `clv`: no stage `lif`",
        ),
        (
            "[stages.life]\nkind = \"lifecycle\"\ninput = \"orders\"\n\n[stages.clv]\nkind = \"clv_simple\"\ninput = \"orders\"\nlifecycle = \"life\"\nchurn_days = 200\n",
            "`churn_days` and `lifecycle` exclude each other",
        ),
    ] {
        let config = workspace.config("", stages);
        let output = pipeline(&["validate", config.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(stderr(&output).contains(message), "{}", stderr(&output));
    }
}
