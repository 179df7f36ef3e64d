//! Unit economics by hand: order lines with a `cost` column and a marketing-spend source (both
//! CSV), the `acquisition` stage, cost in customer_facts and segment_summary, and
//! `margin = "observed"`.

use crate::common::*;

/// As of 2024-04-15 (UTC). Costs: customer 1's first order has two lines (cost 18 + 12);
/// customer 2 has a refund order in February (−10, cost −6); customer 4's second line has no
/// cost (counts as 0); customer 5 has no channel; customer 6's only line has an unusable cost
/// and is rejected.
///
/// Contribution (revenue − cost) by customer and month:
/// 1 search: Jan 20, Feb 15, Mar 25 · 2 search: Jan 10, Feb −4, Mar 20 · 3 social: Jan 5, Apr 2
/// 4 email: Feb 35 · 5 none: Mar 40.
const ORDERS: &str = "order_id,customer_id,created_at,amount,cost,channel
101,1,2024-01-10 10:00:00,30.00,18.00,search
101,1,2024-01-10 10:00:00,20.00,12.00,search
102,1,2024-02-10 10:00:00,40.00,25.00,search
103,1,2024-03-05 10:00:00,60.00,35.00,search
201,2,2024-01-20 10:00:00,30.00,20.00,search
202,2,2024-02-15 10:00:00,-10.00,-6.00,search
203,2,2024-03-15 10:00:00,50.00,30.00,search
301,3,2024-01-25 10:00:00,20.00,15.00,social
302,3,2024-04-02 10:00:00,10.00,8.00,social
401,4,2024-02-10 10:00:00,40.00,10.00,email
401,4,2024-02-10 10:00:00,5.00,,email
501,5,2024-03-03 10:00:00,100.00,60.00,
601,6,2024-03-04 10:00:00,70.00,n/a,search
";

/// Spend: search pays back in period 2 (80 against 30, 41, 86); social never does (100 against
/// 5, 5, 5, 7); tv has spend and no customer; 20 is unattributed; email's February is a net
/// credit (10 − 25); social has a credit in a month without customers; one row has no amount
/// (rejected) and one is after as_of (ignored).
const SPEND: &str = "date,channel,amount
2024-01-03,search,50.00
2024-01-20,search,30.00
2024-01-05,social,100
2024-01-07,tv,50
2024-01-31,,20
2024-02-01,search,
2024-02-03,email,10
2024-02-28,email,-25
2024-02-10,social,-30
2024-03-01,search,12.5
2024-04-20,search,999
";

fn config(workspace: &Workspace, stages: &str) -> std::path::PathBuf {
    workspace.write("orders.csv", ORDERS);
    workspace.write("spend.csv", SPEND);
    workspace.write(
        "pipeline.toml",
        &format!(
            r#"[pipeline]
output_dir = "out"
as_of = "2024-04-15"
max_rejected_fraction = 0.1

[sources.orders]
path = "orders.csv"
[sources.orders.columns]
ordered_at = "created_at"
channel = "channel"
cost = "cost"

[sources.spend]
kind = "spend"
path = "spend.csv"

{stages}"#
        ),
    )
}

const ACQUISITION: &str = r#"[stages.acquisition]
kind = "acquisition"
input = ["orders", "spend"]
ltv = "clv_simple"

[stages.clv_simple]
kind = "clv_simple"
margin = "observed"
lifespan_years = 1

[stages.customer_facts]
kind = "customer_facts"

[stages.by_channel]
kind = "segment_summary"
input = ["clv_simple"]
by = ["acquisition_channel"]
"#;

/// Observed margin: Σ contribution / Σ revenue = 168 / 395.
const MARGIN: f64 = 168.0 / 395.0;

#[test]
fn cac_payback_and_ltv_to_cac_by_cohort_and_channel() {
    let workspace = Workspace::new();
    let config = config(&workspace, ACQUISITION);
    run_ok(&["run", config.to_str().unwrap()]);
    let table = read_table(&workspace.out().join("acquisition.parquet"));
    assert_eq!(
        table.text("cohort"),
        [
            "2024-01-01",
            "2024-01-01",
            "2024-01-01",
            "2024-01-01",
            "2024-02-01",
            "2024-02-01",
            "2024-02-01",
            "2024-03-01",
            "2024-03-01",
            "2024-04-01"
        ]
    );
    assert_eq!(
        table.text("acquisition_channel"),
        ["search", "social", "tv", "", "email", "social", "", "search", "", ""]
    );
    assert_eq!(
        table.text("all_channels"),
        ["false", "false", "false", "true", "false", "false", "true", "false", "true", "true"]
    );
    assert_eq!(table.int("new_customers"), [2, 1, 0, 3, 1, 0, 1, 0, 1, 0]);
    let spend = table.float("spend");
    for (actual, expected) in spend
        .iter()
        .zip([80.0, 100.0, 50.0, 250.0, -15.0, -30.0, -45.0, 12.5, 12.5, 0.0])
    {
        assert_close(*actual, expected, "spend");
    }
    // cac = spend / new customers; null without new customers.
    let cac = table.text("cac");
    assert_eq!(cac[2], "");
    assert_eq!(cac[5], "");
    assert_eq!(cac[7], "");
    assert_eq!(cac[9], "");
    let cac = table.float("cac");
    assert_close(cac[0], 40.0, "search January");
    assert_close(cac[1], 100.0, "social January");
    assert_close(cac[3], 250.0 / 3.0, "all channels January");
    assert_close(cac[4], -15.0, "email February: a net credit");
    assert_close(cac[6], -45.0, "all channels February");
    assert_close(cac[8], 12.5, "all channels March: the customer without a channel");
    let contribution = table.float("contribution_to_date_per_customer");
    assert_close(contribution[0], 86.0 / 2.0, "search January");
    assert_close(contribution[1], 7.0, "social January, including April");
    assert_close(contribution[3], 93.0 / 3.0, "all channels January");
    assert_close(
        contribution[4],
        35.0,
        "email February: the line without a cost counts as 0",
    );
    assert_close(contribution[8], 40.0, "all channels March");
    assert_eq!(table.text("contribution_to_date_per_customer")[2], "");
    // Payback: search in period 2; social and January's all channels (250 against 93) never;
    // a credit (cac ≤ 0) at once; nothing without customers.
    assert_eq!(
        table.text("payback_period_index"),
        ["2", "", "", "", "0", "", "0", "", "0", ""]
    );
    // LTV: simple_clv with lifespan 1 and tenure under a year is purchase revenue × margin.
    let ltv = table.float("ltv_per_customer");
    assert_close(ltv[0], (150.0 + 80.0) / 2.0 * MARGIN, "search January");
    assert_close(ltv[1], 30.0 * MARGIN, "social January");
    assert_close(ltv[3], (150.0 + 80.0 + 30.0) / 3.0 * MARGIN, "all January");
    assert_eq!(table.text("ltv_per_customer")[2], "", "no customers, no LTV");
    let ratio = table.float("ltv_to_cac");
    assert_close(ratio[0], 115.0 * MARGIN / 40.0, "search January");
    assert_close(ratio[1], 30.0 * MARGIN / 100.0, "social January");
    assert_eq!(table.text("ltv_to_cac")[4], "", "a credit has no LTV:CAC");
    assert_eq!(table.text("as_of")[0], "2024-04-15");

    let payback = read_table(&workspace.out().join("acquisition_payback.parquet"));
    assert_eq!(payback.rows, 4 * 4 + 3 * 3 + 2 * 2 + 1);
    let search = payback.find(&[
        ("cohort", "2024-01-01"),
        ("acquisition_channel", "search"),
        ("period_index", "0"),
    ]);
    let cumulative = payback.float("cumulative_contribution_per_customer");
    let recovered = payback.float("recovered_share");
    for (k, (value, share)) in [(15.0, 0.375), (20.5, 0.5125), (43.0, 1.075), (43.0, 1.075)]
        .iter()
        .enumerate()
    {
        assert_eq!(payback.int("period_index")[search + k], k as i64);
        assert_close(cumulative[search + k], *value, "search cumulative");
        assert_close(recovered[search + k], *share, "search recovered");
        assert_close(payback.float("cac")[search + k], 40.0, "search cac");
    }
    let tv = payback.find(&[("acquisition_channel", "tv"), ("period_index", "3")]);
    assert_eq!(payback.text("cumulative_contribution_per_customer")[tv], "");
    assert_eq!(payback.text("recovered_share")[tv], "");

    // The manifest counts spend rows by reason.
    let manifest = manifest(&workspace.out());
    let input = |name: &str| {
        manifest["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|input| input["source"] == name)
            .unwrap()
            .clone()
    };
    let spend = input("spend");
    assert_eq!(spend["rows_read"], 11);
    assert_eq!(spend["rows_rejected"]["null_amount"], 1);
    assert_eq!(spend["rows_rejected_total"], 1);
    assert_eq!(spend["rows_ignored_after_as_of"], 1);
    assert_eq!(input("orders")["rows_rejected"]["invalid_cost"], 1);
}

#[test]
fn cost_and_contribution_per_customer_and_segment() {
    let workspace = Workspace::new();
    let config = config(&workspace, ACQUISITION);
    run_ok(&["run", config.to_str().unwrap()]);
    let facts = read_table(&workspace.out().join("customer_facts.parquet"));
    assert_eq!(facts.int("customer_id"), [1, 2, 3, 4, 5]);
    assert_eq!(facts.float("revenue"), [150.0, 70.0, 30.0, 45.0, 100.0]);
    assert_eq!(facts.float("cost"), [90.0, 44.0, 23.0, 10.0, 60.0]);
    assert_eq!(facts.float("contribution"), [60.0, 26.0, 7.0, 35.0, 40.0]);
    let clv = read_table(&workspace.out().join("clv_simple.parquet"));
    assert_close(clv.float("margin")[0], MARGIN, "observed margin");

    let groups = read_table(&workspace.out().join("by_channel.parquet"));
    assert_eq!(groups.text("acquisition_channel"), ["email", "search", "social", ""]);
    assert_eq!(groups.float("cost"), [10.0, 134.0, 23.0, 60.0]);
    assert_eq!(groups.float("contribution"), [35.0, 86.0, 7.0, 40.0]);
    for (actual, expected) in groups.float("contribution_share").iter().zip([35.0, 86.0, 7.0, 40.0]) {
        assert_close(*actual, expected / 168.0, "contribution_share");
    }
}

#[test]
fn without_cost_contribution_is_revenue_times_margin() {
    let workspace = Workspace::new();
    let path = config(
        &workspace,
        "[stages.acquisition]\nkind = \"acquisition\"\ninput = [\"orders\", \"spend\"]\nmargin = 0.5\n",
    );
    // The same lines without the cost column: customer 6 is no longer rejected (search, March).
    let text = std::fs::read_to_string(&path).unwrap().replace("cost = \"cost\"\n", "");
    std::fs::write(&path, text).unwrap();
    run_ok(&["run", path.to_str().unwrap()]);
    let table = read_table(&workspace.out().join("acquisition.parquet"));
    let row = table.find(&[("cohort", "2024-01-01"), ("acquisition_channel", "search")]);
    // Revenue per month: 80, 30, 110 → × 0.5: 40, 15, 55; cumulative 40, 55, 110 ≥ 80 at 2.
    assert_close(
        table.float("contribution_to_date_per_customer")[row],
        110.0 / 2.0,
        "search",
    );
    assert_eq!(table.text("payback_period_index")[row], "2");
    assert_eq!(table.text("ltv_per_customer")[row], "", "no ltv stage");
    let march = table.find(&[("cohort", "2024-03-01"), ("acquisition_channel", "search")]);
    assert_eq!(table.int("new_customers")[march], 1);
    assert_close(table.float("cac")[march], 12.5, "March search");
    assert_eq!(table.text("payback_period_index")[march], "0");
}

#[test]
fn unit_economics_config_errors_name_the_fix() {
    let workspace = Workspace::new();
    // margin = "observed" needs a cost column.
    let path = config(
        &workspace,
        "[stages.clv_simple]\nkind = \"clv_simple\"\nmargin = \"observed\"\n",
    );
    let text = std::fs::read_to_string(&path).unwrap().replace("cost = \"cost\"\n", "");
    std::fs::write(&path, text).unwrap();
    let output = pipeline(&["validate", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("`margin = \"observed\"` needs a `cost` column, and source `orders` maps none"),
        "{text}"
    );

    // An unknown margin word, an ltv stage of the wrong kind, and the inputs in the wrong order.
    let path = config(
        &workspace,
        "[stages.facts]\nkind = \"customer_facts\"\n\n[stages.a]\nkind = \"acquisition\"\ninput = [\"spend\", \"orders\"]\nltv = \"facts\"\n\n[stages.c]\nkind = \"clv_simple\"\nmargin = \"seen\"\n",
    );
    let output = pipeline(&["validate", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("`margin` is a number or \"observed\", got \"seen\""),
        "{text}"
    );
    assert!(text.contains("`facts`"), "{text}");
    assert!(text.contains("`spend`"), "{text}");

    // Filters are for orders; a misspelt spend column is suggested.
    let path = config(&workspace, "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "path = \"spend.csv\"\n",
        "path = \"spend.csv\"\ninclude = { channel = [\"search\"] }\n[sources.spend.columns]\namont = \"amount\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let output = pipeline(&["validate", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let text = stderr(&output);
    assert!(
        text.contains("key `include` of source `spend`: filters are for orders sources"),
        "{text}"
    );
    assert!(text.contains("did you mean `amount`?"), "{text}");

    // A spend column of the wrong type names the source and column.
    let path = config(
        &workspace,
        "[stages.a]\nkind = \"acquisition\"\ninput = [\"orders\", \"spend\"]\n",
    );
    workspace.write("spend.csv", "date,channel,amount\n2024-01-03,search,lots\n");
    let output = pipeline(&["run", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert!(text.contains("source `spend`"), "{text}");
    assert!(text.contains("invalid_amount"), "{text}");
}

#[test]
fn spend_timestamps_count_in_their_local_period_and_decimals_sum_exactly() {
    use polars::prelude::*;
    let workspace = Workspace::new();
    let path = config(
        &workspace,
        "[stages.acquisition]\nkind = \"acquisition\"\ninput = [\"orders\", \"spend\"]\n",
    );
    // Berlin time, spend from Parquet: zoned timestamps and Decimal(12, 2) amounts.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[pipeline]\n", "[pipeline]\ntimezone = \"Europe/Berlin\"\n")
        .replace("path = \"spend.csv\"", "path = \"spend.parquet\"");
    std::fs::write(&path, text).unwrap();
    // 2024-01-31 23:30 UTC is February 1 in Berlin; 2024-01-31 22:30 UTC is still January 31.
    let micros = |text: &str| {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp_micros()
    };
    let mut spend = DataFrame::new_infer_height(vec![
        Column::new(
            "date".into(),
            [
                micros("2024-01-31 23:30"),
                micros("2024-01-31 22:30"),
                micros("2024-01-10 12:00"),
            ],
        )
        .cast(&DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC)))
        .unwrap(),
        Column::new("channel".into(), ["search", "search", "search"]),
        Int128Chunked::from_vec("amount".into(), vec![1_001i128, 2_002, 7_997])
            .into_decimal_unchecked(12, 2)
            .into_series()
            .into_column(),
    ])
    .unwrap();
    write_parquet(&mut spend, &workspace.path("spend.parquet"));
    run_ok(&["run", path.to_str().unwrap()]);
    let table = read_table(&workspace.out().join("acquisition.parquet"));
    let january = table.find(&[("cohort", "2024-01-01"), ("acquisition_channel", "search")]);
    let february = table.find(&[("cohort", "2024-02-01"), ("acquisition_channel", "search")]);
    // 20.02 + 79.97 = 99.99 exactly; 10.01 in February.
    assert_eq!(table.float("spend")[january], 99.99);
    assert_eq!(table.float("spend")[february], 10.01);
    assert_eq!(table.int("new_customers")[february], 0);
    assert_close(table.float("cac")[january], 99.99 / 2.0, "January search");
}
