//! The `clv` stage end to end: finite, validated outputs on the sample data; units that do not
//! change predictions; populations the spend model cannot fit; option errors.

use std::path::Path;

use crate::common::*;

fn sample_run(stages: &str) -> (tempfile::TempDir, Workspace) {
    let workspace = Workspace::new();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_data/order_lines.parquet");
    std::fs::copy(sample, workspace.path("lines.parquet")).unwrap();
    let config = workspace.config("", stages);
    // The sample runs to 2024-12-31; drop the tiny fixture's as_of.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("as_of = \"2024-03-15\"", "as_of = \"last_order\"");
    std::fs::write(&config, text).unwrap();
    run_ok(&["run", config.to_str().unwrap()]);
    (tempfile::tempdir().unwrap(), workspace)
}

#[test]
fn sample_data_gives_finite_scores_a_converged_model_and_a_calibrated_holdout() {
    let (_keep, workspace) = sample_run(
        "[stages.clv]\nkind = \"clv\"\ninput = \"orders\"\nmargin = 0.3\ncalibration_end = \"2024-06-30\"\n",
    );
    let customers = read_table(&workspace.out().join("clv_customers.parquet"));
    assert_eq!(
        customers.columns,
        [
            "customer_id",
            "frequency",
            "t_x_weeks",
            "T_weeks",
            "monetary_value",
            "p_alive",
            "expected_purchases",
            "p_no_purchases",
            "expected_order_value",
            "clv",
            "historic_clv",
            "as_of"
        ]
    );
    assert!(customers.rows > 5000);
    for row in 0..customers.rows {
        let alive = customers.float("p_alive")[row];
        assert!((0.0..=1.0).contains(&alive), "p_alive {alive}");
        // P(none) = 1 − p_alive + p_alive · P(none | alive): between 1 − p_alive and 1, and
        // below 1 for anyone alive (a horizon of 12 months leaves a chance to buy).
        let none = customers.float("p_no_purchases")[row];
        assert!(
            none >= 1.0 - alive - 1e-12 && none <= 1.0,
            "p_no_purchases {none}, p_alive {alive}"
        );
        assert!(alive < 1e-9 || none < 1.0, "p_no_purchases {none}, p_alive {alive}");
        for column in ["expected_purchases", "expected_order_value", "clv"] {
            let value = customers.float(column)[row];
            assert!(value.is_finite() && value >= 0.0, "{column} = {value} at row {row}");
        }
        // Time is in weeks: T ≤ 3 years.
        assert!(customers.float("T_weeks")[row] <= 157.0);
    }
    let model = read_table(&workspace.out().join("clv_model.parquet"));
    let parameters: Vec<String> = (0..model.rows)
        .map(|r| format!("{}.{}", model.text("model")[r], model.text("parameter")[r]))
        .collect();
    for expected in [
        "bgnbd.r",
        "bgnbd.alpha",
        "bgnbd.a",
        "bgnbd.b",
        "gamma_gamma.p",
        "gamma_gamma.q",
        "gamma_gamma.v",
        "gamma_gamma.corr_frequency_monetary",
        "bgnbd_calibration.r",
    ] {
        assert!(
            parameters.contains(&expected.to_string()),
            "{expected} missing from {parameters:?}"
        );
    }
    assert!(
        model.text("converged").iter().all(|c| c == "true"),
        "{:?}",
        model.text("converged")
    );
    assert!(model.text("time_unit").iter().all(|u| u == "week"));
    let corr = model.float("value")[parameters
        .iter()
        .position(|p| p == "gamma_gamma.corr_frequency_monetary")
        .unwrap()];
    assert!(
        corr.abs() < 0.2,
        "the generator draws spend independently of frequency: corr {corr}"
    );

    let validation = read_table(&workspace.out().join("clv_validation.parquet"));
    let all = validation.find(&[("frequency_bucket", "all")]);
    let ratio = validation.float("ratio")[all];
    assert!(
        (0.85..=1.15).contains(&ratio),
        "predicted / actual holdout purchases = {ratio}"
    );
    let buckets: i64 = (0..validation.rows)
        .filter(|&r| r != all)
        .map(|r| validation.int("customers")[r])
        .sum();
    assert_eq!(buckets, validation.int("customers")[all]);
}

#[test]
fn the_time_unit_does_not_change_predictions() {
    let stages = "[stages.weeks]\nkind = \"clv\"\ninput = \"orders\"\ntime_unit = \"week\"\n\n[stages.days]\nkind = \"clv\"\ninput = \"orders\"\ntime_unit = \"day\"\n\n[stages.months]\nkind = \"clv\"\ninput = \"orders\"\ntime_unit = \"month\"\n";
    let (_keep, workspace) = sample_run(stages);
    let weeks = read_table(&workspace.out().join("weeks_customers.parquet"));
    for other in ["days", "months"] {
        let table = read_table(&workspace.out().join(format!("{other}_customers.parquet")));
        let total = |t: &Table, c: &str| t.float(c).iter().sum::<f64>();
        for column in ["expected_purchases", "clv"] {
            let (a, b) = (total(&weeks, column), total(&table, column));
            assert!((a - b).abs() < 2e-3 * a, "{column}: weeks {a} vs {other} {b}");
        }
    }
    let days = read_table(&workspace.out().join("days_customers.parquet"));
    assert_close(
        days.float("T_days")[0],
        weeks.float("T_weeks")[0] * 7.0,
        "T in days = 7 × T in weeks",
    );
}

#[test]
fn no_repeat_spend_gives_null_clv_or_a_clear_error() {
    // Only first purchases: Gamma-Gamma has nothing to fit.
    let lines: Vec<Line> = TINY
        .iter()
        .copied()
        .filter(|l| [101, 201, 301, 401].contains(&l.order_id))
        .collect();
    // Published only when asked to, with the problems as warnings.
    let warned = Workspace::with_lines(&lines);
    let config = warned.config(
        "",
        "[stages.clv]\nkind = \"clv\"\ninput = \"orders\"\non_model_failure = \"warn\"\n",
    );
    run_ok(&["run", config.to_str().unwrap()]);
    let tables: Vec<Table> = ["clv_customers", "clv_model"]
        .iter()
        .map(|t| read_table(&warned.out().join(format!("{t}.parquet"))))
        .collect();
    let warnings = manifest(&warned.out())["warnings"].clone();
    let warnings: Vec<&str> = warnings
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("Gamma-Gamma: no repeat customer has a positive monetary value")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("4 of 4 customers (100.00%) have a null clv, more than max_null_clv_fraction = 0")),
        "{warnings:?}"
    );
    let customers = &tables[0];
    assert_eq!(customers.rows, 4);
    assert!(
        customers.text("clv").iter().all(|v| v.is_empty()),
        "clv is null: {:?}",
        customers.text("clv")
    );
    assert!(
        customers.float("p_alive").iter().all(|p| *p == 1.0),
        "nobody repeated: p_alive = 1"
    );
    assert!(customers
        .float("expected_purchases")
        .iter()
        .all(|v| v.is_finite() && *v >= 0.0));
    let model = &tables[1];
    let null_row = model.find(&[("parameter", "customers_with_null_clv")]);
    assert_eq!(model.int("value")[null_row], 4);
    assert_eq!(model.text("converged")[null_row], "false");

    // By default a degenerate model fails the run, naming the model, the symptom and what to try.
    let workspace = Workspace::with_lines(&lines);
    let config = workspace.config("", "[stages.clv]\nkind = \"clv\"\ninput = \"orders\"\n");
    let output = pipeline(&["run", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(
        text.contains("stage `clv` (clv): the model is degenerate and was not published: Gamma-Gamma: no repeat customer has a positive monetary value"),
        "{text}"
    );
    assert!(
        text.contains("or set `on_model_failure = \"warn\"` to publish it with warnings"),
        "{text}"
    );
    assert!(!workspace.out().exists(), "nothing published");
    assert_eq!(last_run(&workspace.root())["status"], "failed");
}

#[test]
fn bad_options_are_config_errors() {
    let check = |options: &str| {
        let workspace = Workspace::with_tiny();
        let config = workspace.config(
            "",
            &format!("[stages.clv]\nkind = \"clv\"\ninput = \"orders\"\n{options}\n"),
        );
        let output = pipeline(&["validate", config.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2));
        stderr(&output)
    };
    let text = check("horizon_months = 0\nmargin = -1.0");
    assert!(
        text.contains("stage `clv`: `horizon_months` must be between 1 and 600, got 0"),
        "{text}"
    );
    assert!(
        text.contains("stage `clv`: `margin` must be in (0, 10] or \"observed\", got -1"),
        "{text}"
    );
    let text = check("time_unit = \"fortnight\"\ncalibration_end = \"June\"");
    assert!(
        text.contains("key `time_unit` of stage `clv` is invalid: unknown variant `fortnight`"),
        "{text}"
    );
    assert!(
        text.contains("key `calibration_end` of stage `clv` is invalid"),
        "{text}"
    );
}
