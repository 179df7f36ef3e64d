//! repeat on the extended tiny fixture, by hand (as_of 2024-03-15).
//!
//! customer  purchases (dates)                 days to 2nd  observed days
//! 1         01-05, 01-20, 03-02               15           70
//! 2         01-10, 01-10 (two that day)        0           65
//! 3         02-29, 03-10                      10           15
//! 4, 11, 12 one purchase each                  -           44, 1, 24
//! 13        2023-03-01, 2024-02-10           346           380

use crate::common::*;

const STAGE: &str = "[stages.repeat]\nkind = \"repeat\"\ninput = \"orders\"\nwithin_days = [30, 90]\nmax_purchases = 2\nmin_observation_days = 30\n";

#[test]
fn summary_overall_and_per_cohort() {
    let tables = Workspace::run_stages(&extended(), STAGE, &["repeat_summary", "repeat_transitions"]);
    let summary = &tables[0];
    assert_eq!(
        summary.text("cohort"),
        ["", "2023-03-01", "2024-01-01", "2024-02-01", "2024-03-01"]
    );
    assert_eq!(summary.int("customers"), [7, 1, 3, 2, 1]);
    assert_eq!(summary.int("repeat_customers"), [4, 1, 2, 1, 0]);
    let overall = 0;
    assert_close(summary.float("repeat_customer_rate")[overall], 4.0 / 7.0, "repeat rate");
    // Within 30 days: only customers observed ≥ 30 days count (1, 2, 4, 13); 1 and 2 repeated.
    assert_eq!(summary.int("customers_observed_30d")[overall], 4);
    assert_eq!(summary.int("repeat_customers_30d")[overall], 2);
    assert_close(summary.float("repeat_rate_30d")[overall], 0.5, "30d");
    // Within 90 days: only customer 13 is observable, and repeated after 346 days.
    assert_eq!(summary.int("customers_observed_90d")[overall], 1);
    assert_close(summary.float("repeat_rate_90d")[overall], 0.0, "90d");
    // Days to second purchase 0, 10, 15, 346 (linear quantiles).
    assert_close(summary.float("days_to_second_median")[overall], 12.5, "median");
    assert_close(summary.float("days_to_second_p25")[overall], 7.5, "p25");
    assert_close(summary.float("days_to_second_p75")[overall], 97.75, "p75");
    assert_close(summary.float("days_to_second_mean")[overall], 92.75, "mean");
    // (last − first) / (orders − 1): 28.5, 0, 10, 346.
    assert_close(summary.float("mean_days_between_purchases")[overall], 96.125, "between");

    let january = 2;
    assert_close(summary.float("repeat_rate_30d")[january], 2.0 / 3.0, "January 30d");
    assert_close(summary.float("days_to_second_median")[january], 7.5, "January median");
    assert_close(
        summary.float("mean_days_between_purchases")[january],
        14.25,
        "January between",
    );
    // The January cohort cannot be observed for 90 days yet, nor March's for 30: no rate.
    assert_eq!(summary.int("customers_observed_90d")[january], 0);
    assert_eq!(summary.text("repeat_rate_90d")[january], "");
    assert_eq!(summary.text("repeat_rate_30d")[4], "");
}

#[test]
fn transitions_count_only_customers_observed_long_enough() {
    let tables = Workspace::run_stages(&extended(), STAGE, &["repeat_transitions"]);
    let transitions = &tables[0];
    // Cutoff 2024-02-14. k = 1: customers 1, 2, 4, 13 (3 is too recent); 1, 2, 13 bought again.
    let row = transitions.find(&[("cohort", ""), ("k", "1")]);
    assert_eq!(transitions.int("customers_at_k")[row], 4);
    assert_eq!(transitions.int("customers_at_k_plus_1")[row], 3);
    assert_close(transitions.float("probability")[row], 0.75, "P(2|1)");
    // k = 2: second purchases by the cutoff: 1, 2, 13; only 1 made a third.
    let row = transitions.find(&[("cohort", ""), ("k", "2")]);
    assert_eq!(transitions.int("customers_at_k")[row], 3);
    assert_eq!(transitions.int("customers_at_k_plus_1")[row], 1);
    let row = transitions.find(&[("cohort", "2024-01-01"), ("k", "2")]);
    assert_eq!(
        (
            transitions.int("customers_at_k")[row],
            transitions.int("customers_at_k_plus_1")[row]
        ),
        (2, 1)
    );
    // February's customers (3, 12) bought after the cutoff: no one at k = 1, probability null.
    let row = transitions.find(&[("cohort", "2024-02-01"), ("k", "1")]);
    assert_eq!(transitions.int("customers_at_k")[row], 0);
    assert_eq!(transitions.text("probability")[row], "");
}
