//! lifecycle on the extended tiny fixture, by hand (monthly snapshots 2023-03 … 2024-03-15).

use crate::common::*;

fn lifecycle(options: &str) -> Vec<Table> {
    Workspace::run_stages(
        &extended(),
        &format!("[stages.lifecycle]\nkind = \"lifecycle\"\ninput = \"orders\"\n{options}\n"),
        &["lifecycle_snapshots", "lifecycle_customers"],
    )
}

#[test]
fn snapshots_with_reactivation_and_crr() {
    let tables = lifecycle("");
    let snapshots = &tables[0];
    assert_eq!(snapshots.rows, 13);
    assert_eq!(snapshots.text("snapshot_date")[0], "2023-03-31");
    assert_eq!(snapshots.text("snapshot_date")[12], "2024-03-15");
    assert_eq!(snapshots.text("period_start")[12], "2024-03-01");
    // Customer 13 alone in 2023: new in March, at risk from May, churned in August (183 days).
    let august = snapshots.find(&[("snapshot_date", "2023-08-31")]);
    assert_eq!(snapshots.int("churned")[august], 1);
    assert_eq!(
        (
            snapshots.int("start_customers")[august],
            snapshots.int("end_customers")[august]
        ),
        (1, 0)
    );
    assert_close(snapshots.float("churn_rate")[august], 1.0, "August churn");
    let may = snapshots.find(&[("snapshot_date", "2023-05-31")]);
    assert_eq!(snapshots.int("at_risk")[may], 1);
    // Nobody un-churned at the start of January 2024: CRR undefined.
    let january = snapshots.find(&[("snapshot_date", "2024-01-31")]);
    assert_eq!(snapshots.int("new")[january], 3);
    assert_eq!(snapshots.text("crr")[january], "");
    // February: 3 and 12 are new, 13 comes back after 346 days, 1, 2 and 4 are active.
    let february = snapshots.find(&[("snapshot_date", "2024-02-29")]);
    let counts = |row: usize| ["new", "reactivated", "active", "at_risk", "churned"].map(|c| snapshots.int(c)[row]);
    assert_eq!(counts(february), [2, 1, 3, 0, 0]);
    assert_eq!(snapshots.int("start_customers")[february], 3);
    assert_eq!(snapshots.int("end_customers")[february], 6);
    assert_eq!(snapshots.int("retained_customers")[february], 3);
    assert_close(snapshots.float("crr")[february], 1.0, "February CRR");
    let march = 12;
    assert_eq!(counts(march), [1, 0, 6, 0, 0]);
    assert_eq!(snapshots.int("new_customers")[march], 1);

    let customers = &tables[1];
    assert_eq!(
        customers.text("stage"),
        ["active", "active", "active", "active", "new", "active", "active"]
    );
    assert_eq!(customers.int("days_since_last_purchase"), [13, 65, 5, 44, 1, 24, 34]);
}

#[test]
fn shorter_thresholds_put_customers_at_risk_and_churned() {
    let tables = lifecycle("active_days = 30\nchurn_days = 60");
    let customers = &tables[1];
    assert_eq!(
        customers.text("stage"),
        ["active", "churned", "active", "at_risk", "new", "active", "at_risk"]
    );
    let snapshots = &tables[0];
    let march = 12;
    assert_eq!(snapshots.int("start_customers")[march], 6);
    assert_eq!(snapshots.int("end_customers")[march], 6);
    assert_eq!(snapshots.int("retained_customers")[march], 5);
    assert_close(snapshots.float("crr")[march], 5.0 / 6.0, "March CRR");
    assert_close(snapshots.float("churn_rate")[march], 1.0 / 6.0, "March churn");
}

#[test]
fn churn_days_must_exceed_active_days() {
    let workspace = Workspace::with_tiny();
    let config = workspace.config(
        "",
        "[stages.lifecycle]\nkind = \"lifecycle\"\ninput = \"orders\"\nactive_days = 90\nchurn_days = 60\n",
    );
    let output = pipeline(&["validate", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("stage `lifecycle`: `churn_days` (60) must be greater than `active_days` (90)"),
        "{}",
        stderr(&output)
    );
}
