//! cohort_retention on the tiny fixture against hand-computed rows (as_of 2024-03-15).

use crate::common::*;

fn cohorts(granularity: &str, extra: &str, pipeline_extra: &str) -> Table {
    let workspace = Workspace::with_tiny();
    let stages = format!(
        "[stages.cohorts]\nkind = \"cohort_retention\"\ninput = \"orders\"\ngranularity = \"{granularity}\"\n{extra}\n"
    );
    let config = workspace.config(pipeline_extra, &stages);
    run_ok(&["run", config.to_str().unwrap()]);
    read_table(&workspace.out().join("cohorts.parquet"))
}

#[test]
fn monthly_triangle_is_dense_with_bracketed_and_unbounded_retention() {
    let table = cohorts("month", "", "");
    assert_eq!(
        table.columns,
        [
            "cohort",
            "period_index",
            "period_start",
            "cohort_customers",
            "active_customers",
            "retention",
            "unbounded_retention",
            "orders",
            "revenue",
            "revenue_per_customer",
            "cumulative_revenue_per_customer",
            "period_complete",
            "as_of"
        ]
    );
    // January cohort: customers 1, 2, 4 — three periods up to March; February cohort: customer 3.
    assert_eq!(
        table.text("cohort"),
        ["2024-01-01", "2024-01-01", "2024-01-01", "2024-02-01", "2024-02-01"]
    );
    assert_eq!(table.int("period_index"), [0, 1, 2, 0, 1]);
    assert_eq!(
        table.text("period_start"),
        ["2024-01-01", "2024-02-01", "2024-03-01", "2024-02-01", "2024-03-01"]
    );
    assert_eq!(table.int("cohort_customers"), [3, 3, 3, 1, 1]);
    // February for the January cohort: nobody purchased (a dense zero row), but customer 2's
    // refund of −30 still nets into revenue.
    assert_eq!(table.int("active_customers"), [3, 0, 1, 1, 1]);
    assert_eq!(table.int("orders"), [5, 0, 1, 1, 1]);
    assert_eq!(table.float("revenue"), [230.0, -30.0, 60.0, 80.0, 10.0]);
    let retention = table.float("retention");
    let unbounded = table.float("unbounded_retention");
    for (actual, expected) in retention.iter().zip([1.0, 0.0, 1.0 / 3.0, 1.0, 1.0]) {
        assert_close(*actual, expected, "retention");
    }
    // Customer 1 buys again in March, so they count as retained in February too (unbounded).
    for (actual, expected) in unbounded.iter().zip([1.0, 1.0 / 3.0, 1.0 / 3.0, 1.0, 1.0]) {
        assert_close(*actual, expected, "unbounded_retention");
    }
    for (u, r) in unbounded.iter().zip(&retention) {
        assert!(u >= r, "unbounded {u} < bracketed {r}");
    }
    let per_customer = table.float("revenue_per_customer");
    for (actual, expected) in per_customer.iter().zip([230.0 / 3.0, -10.0, 20.0, 80.0, 10.0]) {
        assert_close(*actual, expected, "revenue_per_customer");
    }
    let cumulative = table.float("cumulative_revenue_per_customer");
    for (actual, expected) in cumulative
        .iter()
        .zip([230.0 / 3.0, 200.0 / 3.0, 260.0 / 3.0, 80.0, 90.0])
    {
        assert_close(*actual, expected, "cumulative_revenue_per_customer");
    }
    // March ends after as_of (2024-03-15): incomplete.
    assert_eq!(
        table.text("period_complete"),
        ["true", "true", "false", "true", "false"]
    );
}

#[test]
fn berlin_time_moves_an_order_across_the_month_boundary() {
    // 2024-02-29 23:30 UTC is 2024-03-01 00:30 in Berlin: customer 3 joins the March cohort.
    let table = cohorts("month", "", "timezone = \"Europe/Berlin\"");
    assert_eq!(
        table.text("cohort"),
        ["2024-01-01", "2024-01-01", "2024-01-01", "2024-03-01"]
    );
    let march = table.find(&[("cohort", "2024-03-01"), ("period_index", "0")]);
    assert_eq!(table.int("cohort_customers")[march], 1);
    assert_eq!(table.int("active_customers")[march], 1);
    assert_eq!(table.int("orders")[march], 2);
    assert_close(table.float("revenue")[march], 90.0, "March revenue");
    assert_eq!(table.text("period_complete")[march], "false");
}

#[test]
fn weeks_start_on_monday_and_run_to_the_as_of_week() {
    let table = cohorts("week", "", "");
    // Customer 1's first order is Friday 2024-01-05: week of Monday 2024-01-01.
    let rows: Vec<usize> = (0..table.rows)
        .filter(|&r| table.text("cohort")[r] == "2024-01-01")
        .collect();
    // Weeks of 01-01 … 03-11 (as_of, a Friday, is in the week of Monday 03-11): 11 rows.
    assert_eq!(rows.len(), 11);
    let period = |index: &str| table.find(&[("cohort", "2024-01-01"), ("period_index", index)]);
    assert_eq!(table.text("period_start")[period("10")], "2024-03-11");
    assert_eq!(table.text("period_complete")[period("10")], "false");
    assert_eq!(table.text("period_complete")[period("9")], "true");
    // Saturday 01-20 is in the week of 01-15 (period 2); Saturday 03-02 in the week of 02-26 (8).
    assert_eq!(table.int("active_customers")[period("1")], 0);
    assert_eq!(table.int("active_customers")[period("2")], 1);
    assert_eq!(table.int("active_customers")[period("8")], 1);
    assert_close(table.float("unbounded_retention")[period("8")], 1.0, "unbounded week 8");
    assert_close(table.float("unbounded_retention")[period("9")], 0.0, "unbounded week 9");
    // Other cohorts: customer 2 (Wed 01-10 → 01-08), 4 (Wed 01-31 → 01-29), 3 (Thu 02-29 → 02-26).
    let cohorts: std::collections::BTreeSet<String> = table.text("cohort").into_iter().collect();
    assert_eq!(
        cohorts.into_iter().collect::<Vec<_>>(),
        ["2024-01-01", "2024-01-08", "2024-01-29", "2024-02-26"]
    );
    for cohort in ["2024-01-01", "2024-01-08", "2024-01-29", "2024-02-26"] {
        let start = table.find(&[("cohort", cohort), ("period_index", "0")]);
        let date = chrono::NaiveDate::parse_from_str(&table.text("period_start")[start], "%Y-%m-%d").unwrap();
        assert_eq!(chrono::Datelike::weekday(&date), chrono::Weekday::Mon);
    }
}

#[test]
fn dimensions_split_cohorts_by_acquisition_channel() {
    let table = cohorts("quarter", "dimensions = [\"acquisition_channel\"]", "");
    assert_eq!(table.columns[0], "acquisition_channel");
    // Q1 2024 only, one row per channel: app (customer 2), store (3), web (1 and 4).
    assert_eq!(table.text("acquisition_channel"), ["app", "store", "web"]);
    assert_eq!(table.text("cohort"), ["2024-01-01", "2024-01-01", "2024-01-01"]);
    assert_eq!(table.int("cohort_customers"), [1, 1, 2]);
    assert_eq!(table.int("orders"), [2, 2, 4]);
    assert_eq!(table.float("revenue"), [90.0, 90.0, 170.0]);
    assert_eq!(table.text("period_complete"), ["false", "false", "false"]);
}

#[test]
fn yearly_granularity_has_one_incomplete_period() {
    let table = cohorts("year", "", "");
    assert_eq!(table.rows, 1);
    assert_eq!(table.int("cohort_customers"), [4]);
    assert_eq!(table.int("orders"), [8]);
    assert_eq!(table.float("revenue"), [350.0]);
}
