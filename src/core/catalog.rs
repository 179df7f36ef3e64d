//! What every column of every table means: one entry per column of each stage kind's tables,
//! with its type and a one-line description that names its unit. The Parquet writer puts the
//! description into each field's metadata (key `description`) and `pipeline docs` prints the
//! same entries, so the two never disagree.
//!
//! A column whose name depends on options is written as a pattern: `<dimension>` (a cohort
//! dimension), `<N>` (a number of days), `<unit>` (clv's time unit), `<by>` and `<metric>`
//! (segment_summary's groups and CLV columns).

use serde::Serialize;

/// One column of a table kind.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ColumnDoc {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub dtype: &'static str,
    pub description: &'static str,
}

const fn c(name: &'static str, dtype: &'static str, description: &'static str) -> ColumnDoc {
    ColumnDoc {
        name,
        dtype,
        description,
    }
}

/// Added to every table by the runner.
pub const AS_OF: ColumnDoc = c(
    "as_of",
    "date",
    "the date this table describes (the run's as_of), a local date in the pipeline's time zone",
);

const CUSTOMER_ID: ColumnDoc = c("customer_id", "as in the input", "the customer's id, as in the input");

const CUSTOMER_FACTS: &[ColumnDoc] = &[
    CUSTOMER_ID,
    c("first_purchase_date", "date", "local date of the first purchase (an order with revenue > 0)"),
    c("last_purchase_date", "date", "local date of the last purchase on or before as_of"),
    c("orders", "int64", "number of purchases (orders with revenue > 0), count"),
    c("revenue", "float64", "net revenue of all the customer's orders up to as_of, refunds netted, in the input's currency (no margin, not discounted)"),
    c("cost", "float64", "with `cost` mapped: the cost of all the customer's orders up to as_of (refund orders' costs netted), in the input's currency"),
    c("contribution", "float64", "with `cost` mapped: revenue − cost, in the input's currency"),
    c("aov", "float64", "average order value: purchase revenue / orders, in the input's currency"),
    c("acquisition_channel", "string", "channel of the first purchase (null when no channel is mapped)"),
    c("frequency", "int64", "BTYD frequency: distinct purchase days − 1, count"),
    c("t_x", "int64", "BTYD recency: days from the first to the last purchase day"),
    c("T", "int64", "BTYD age: days from the first purchase day to as_of"),
    c("monetary_value", "float64", "BTYD monetary value: mean revenue of the repeat purchase days, in the input's currency; 0 when frequency = 0"),
];

const COHORT_RETENTION: &[ColumnDoc] = &[
    c(
        "<dimension>",
        "string",
        "the cohort dimension (e.g. acquisition_channel) this row is split by",
    ),
    c(
        "cohort",
        "date",
        "start date of the cohort period (the period of the customers' first purchase)",
    ),
    c(
        "period_index",
        "int32",
        "periods since the cohort period (0 = the acquisition period)",
    ),
    c(
        "period_start",
        "date",
        "start date of this period: cohort + period_index periods",
    ),
    c(
        "cohort_customers",
        "int64",
        "customers acquired in the cohort period, count",
    ),
    c(
        "active_customers",
        "int64",
        "of them, customers with a purchase in this period, count",
    ),
    c(
        "retention",
        "float64",
        "active_customers / cohort_customers, a fraction 0–1",
    ),
    c(
        "unbounded_retention",
        "float64",
        "share of the cohort with a purchase in this period or any later one up to as_of, a fraction 0–1",
    ),
    c(
        "orders",
        "int64",
        "purchases of the cohort's customers in this period, count",
    ),
    c(
        "revenue",
        "float64",
        "net revenue of the cohort's customers in this period, in the input's currency (no margin, not discounted)",
    ),
    c(
        "revenue_per_customer",
        "float64",
        "revenue / cohort_customers, in the input's currency",
    ),
    c(
        "cumulative_revenue_per_customer",
        "float64",
        "running sum of revenue_per_customer over period_index, in the input's currency",
    ),
    c("period_complete", "bool", "whether the period ends on or before as_of"),
];

const RFM_CUSTOMERS: &[ColumnDoc] = &[
    CUSTOMER_ID,
    c("recency_days", "int64", "days from the last purchase to as_of"),
    c("frequency", "int64", "number of purchases, count"),
    c(
        "monetary",
        "float64",
        "net revenue (or AOV with monetary = \"average\"), in the input's currency",
    ),
    c("r_score", "int32", "recency score, 1 (oldest) to bins (most recent)"),
    c("f_score", "int32", "frequency score, 1 (fewest) to bins (most)"),
    c("m_score", "int32", "monetary score, 1 (least) to bins (most)"),
    c("rfm_score", "string", "the three scores as digits R F M, e.g. \"545\""),
    c(
        "segment",
        "string",
        "the segment the scores map to (first matching rule)",
    ),
];

const RFM_THRESHOLDS: &[ColumnDoc] = &[
    c("dimension", "string", "recency, frequency or monetary"),
    c("score", "int32", "the score of this range"),
    c(
        "min_value",
        "float64",
        "smallest value with this score (days, purchases or the input's currency)",
    ),
    c(
        "max_value",
        "float64",
        "largest value with this score (days, purchases or the input's currency)",
    ),
    c("customers", "int64", "customers with this score, count"),
];

const RFM_SEGMENTS: &[ColumnDoc] = &[
    c("segment", "string", "the RFM segment"),
    c("customers", "int64", "customers in the segment, count"),
    c("share", "float64", "customers / all customers, a fraction 0–1"),
    c(
        "revenue",
        "float64",
        "their net revenue to date, in the input's currency",
    ),
    c("revenue_share", "float64", "revenue / all revenue, a fraction"),
    c(
        "cost",
        "float64",
        "with `cost` mapped: the cost of serving the group (its orders' costs to date), in the input's currency",
    ),
    c(
        "contribution",
        "float64",
        "with `cost` mapped: revenue − cost of the group, in the input's currency",
    ),
    c(
        "contribution_share",
        "float64",
        "with `cost` mapped: contribution / all contribution, a fraction (negative for a group that loses money)",
    ),
    c("mean_recency_days", "float64", "mean days since the last purchase"),
    c("mean_frequency", "float64", "mean number of purchases"),
    c(
        "mean_monetary",
        "float64",
        "mean monetary value, in the input's currency",
    ),
];

const REPEAT_SUMMARY: &[ColumnDoc] = &[
    c("cohort", "date", "the cohort period's start; null on the overall row"),
    c("customers", "int64", "customers, count"),
    c("repeat_customers", "int64", "customers with 2 or more purchases, count"),
    c(
        "repeat_customer_rate",
        "float64",
        "repeat_customers / customers, a fraction 0–1",
    ),
    c(
        "customers_observed_<N>d",
        "int64",
        "customers whose first purchase is at least N days before as_of, count",
    ),
    c(
        "repeat_customers_<N>d",
        "int64",
        "of them, customers with a second purchase within N days of the first, count",
    ),
    c(
        "repeat_rate_<N>d",
        "float64",
        "repeat_customers_<N>d / customers_observed_<N>d, a fraction 0–1",
    ),
    c(
        "days_to_second_median",
        "float64",
        "median days from the first to the second purchase",
    ),
    c(
        "days_to_second_p25",
        "float64",
        "25th percentile of days from the first to the second purchase",
    ),
    c(
        "days_to_second_p75",
        "float64",
        "75th percentile of days from the first to the second purchase",
    ),
    c(
        "days_to_second_mean",
        "float64",
        "mean days from the first to the second purchase",
    ),
    c(
        "mean_days_between_purchases",
        "float64",
        "mean over repeat customers of (last − first purchase) / (orders − 1), days",
    ),
];

const REPEAT_TRANSITIONS: &[ColumnDoc] = &[
    c("cohort", "date", "the cohort period's start; null on the overall rows"),
    c("k", "int32", "number of purchases reached"),
    c(
        "customers_at_k",
        "int64",
        "customers with k or more purchases, the k-th at least min_observation_days before as_of, count",
    ),
    c(
        "customers_at_k_plus_1",
        "int64",
        "of them, customers with k + 1 or more purchases, count",
    ),
    c(
        "probability",
        "float64",
        "P(k + 1 | k) = customers_at_k_plus_1 / customers_at_k, a fraction 0–1",
    ),
];

const LIFECYCLE_SNAPSHOTS: &[ColumnDoc] = &[
    c(
        "snapshot_date",
        "date",
        "end of the snapshot period (as_of for the last)",
    ),
    c("period_start", "date", "start of the snapshot period"),
    c("new", "int64", "customers whose first purchase is in the period, count"),
    c(
        "reactivated",
        "int64",
        "customers who bought again after more than churn_days, count",
    ),
    c("active", "int64", "customers with a purchase within active_days, count"),
    c(
        "at_risk",
        "int64",
        "customers with a purchase within churn_days but not active_days, count",
    ),
    c(
        "churned",
        "int64",
        "customers without a purchase for more than churn_days, count",
    ),
    c(
        "start_customers",
        "int64",
        "customers not churned at the start of the period, count",
    ),
    c(
        "end_customers",
        "int64",
        "customers not churned at the end of the period, count",
    ),
    c("new_customers", "int64", "customers acquired in the period, count"),
    c(
        "retained_customers",
        "int64",
        "customers not churned at both ends of the period, count",
    ),
    c(
        "crr",
        "float64",
        "customer retention rate: retained_customers / start_customers, a fraction 0–1",
    ),
    c("churn_rate", "float64", "1 − crr, a fraction 0–1"),
];

const LIFECYCLE_CUSTOMERS: &[ColumnDoc] = &[
    CUSTOMER_ID,
    c(
        "stage",
        "string",
        "the customer's stage at as_of: new, reactivated, active, at_risk or churned",
    ),
    c(
        "days_since_last_purchase",
        "int64",
        "days from the last purchase to as_of",
    ),
];

const CLV_SIMPLE: &[ColumnDoc] = &[
    CUSTOMER_ID,
    c(
        "historic_clv",
        "float64",
        "net revenue to date, in the input's currency (no margin, not discounted)",
    ),
    c("aov", "float64", "average order value, in the input's currency"),
    c(
        "purchases_per_year",
        "float64",
        "orders / max(tenure years, min_tenure_years), purchases a year",
    ),
    c(
        "lifespan_years",
        "float64",
        "expected lifespan: lifespan_years, or 1 / annual churn, capped, years",
    ),
    c("margin", "float64", "the margin applied, a fraction"),
    c(
        "simple_clv",
        "float64",
        "aov × purchases_per_year × lifespan_years × margin, in the input's currency (margin applied, not discounted)",
    ),
];

const CLV_CUSTOMERS: &[ColumnDoc] = &[
    CUSTOMER_ID,
    c("frequency", "int64", "BTYD frequency: distinct purchase days − 1, count"),
    c("t_x_<unit>s", "float64", "BTYD recency: first to last purchase day, in the stage's time_unit (the name says which)"),
    c("T_<unit>s", "float64", "BTYD age: first purchase day to as_of, in the stage's time_unit (the name says which)"),
    c("monetary_value", "float64", "mean revenue of the repeat purchase days, in the input's currency"),
    c("p_alive", "float64", "BG/NBD probability that the customer is still active at as_of, 0–1"),
    c("expected_purchases", "float64", "BG/NBD expected purchases over the next horizon_months, count"),
    c("p_no_purchases", "float64", "probability of no purchase over the next horizon_months, 0–1"),
    c("expected_order_value", "float64", "Gamma-Gamma expected value of a future order, in the input's currency (no margin, not discounted)"),
    c("clv", "float64", "expected value of the next horizon_months, in the input's currency, margin applied and discounted monthly at annual_discount_rate"),
    c("historic_clv", "float64", "net revenue to date, in the input's currency (no margin, not discounted)"),
];

const CLV_MODEL: &[ColumnDoc] = &[
    c("model", "string", "bgnbd, gamma_gamma, clv or bgnbd_calibration"),
    c(
        "parameter",
        "string",
        "parameter name as in lifetimes (r, alpha, a, b; p, q, v) or a diagnostic",
    ),
    c("value", "float64", "the fitted value (alpha in the stage's time_unit)"),
    c(
        "std_error",
        "float64",
        "standard error from the inverse Hessian; null when singular",
    ),
    c("log_likelihood", "float64", "log-likelihood at the fit"),
    c("customers", "int64", "customers the model was fitted on, count"),
    c("iterations", "int64", "optimizer iterations"),
    c("converged", "bool", "whether the fit converged and gives usable values"),
    c("time_unit", "string", "the stage's time unit: day, week or month"),
];

const CLV_VALIDATION: &[ColumnDoc] = &[
    c("frequency_bucket", "string", "calibration frequency 0…6, 7+, or all"),
    c(
        "customers",
        "int64",
        "customers acquired by calibration_end in the bucket, count",
    ),
    c(
        "predicted_purchases",
        "float64",
        "purchases the calibration model predicts in (calibration_end, as_of], count",
    ),
    c(
        "actual_purchases",
        "float64",
        "repeat purchase days observed in (calibration_end, as_of], count",
    ),
    c("mae", "float64", "mean absolute error per customer, purchases"),
    c("rmse", "float64", "root mean squared error per customer, purchases"),
    c(
        "ratio",
        "float64",
        "predicted / actual purchases; null when actual is 0",
    ),
    c(
        "holdout_length",
        "float64",
        "length of the holdout, in the stage's time_unit",
    ),
];

const SEGMENT_SUMMARY: &[ColumnDoc] = &[
    c("<by>", "as in its stage", "the group: a per-customer column of an input stage (e.g. segment, stage, acquisition_channel)"),
    c("customers", "int64", "customers in the group, count"),
    c("share", "float64", "customers / all customers, a fraction 0–1"),
    c("revenue", "float64", "their net revenue to date, in the input's currency"),
    c("revenue_share", "float64", "revenue / all revenue, a fraction"),
    c("mean_<metric>", "float64", "mean of the input stage's <metric> column over the group, in the input's currency (historic_clv: no margin, not discounted; simple_clv: margin applied, not discounted; clv: margin applied, discounted)"),
    c("median_<metric>", "float64", "median of the input stage's <metric> column over the group, in the input's currency (units as mean_<metric>)"),
    c("repeat_rate", "float64", "share of the group's customers with 2 or more purchases, a fraction 0–1"),
    c("respondents", "int64", "with an `nps` input: the group's customers who answered the survey by as_of"),
    c("nps", "float64", "with an `nps` input: 100 × (promoters − detractors) / respondents from the customers' last scores, −100 to 100; null without respondents"),
];

const NPS_PERIODS: &[ColumnDoc] = &[
    c(
        "period_start",
        "date",
        "start of the period (local date); dense from the first answer's period to the as_of period",
    ),
    c(
        "responses",
        "int64",
        "answers given in the period, also from people who never purchased",
    ),
    c("promoters", "int64", "answers scoring 9–10"),
    c("passives", "int64", "answers scoring 7–8"),
    c("detractors", "int64", "answers scoring 0–6"),
    c(
        "nps",
        "float64",
        "Net Promoter Score, 100 × (promoters − detractors) / responses, from −100 to 100; null without answers",
    ),
];

const NPS_CUSTOMERS: &[ColumnDoc] = &[
    c(
        "customer_id",
        "as in the input",
        "the respondent's id, with the orders' type",
    ),
    c("responses", "int64", "the respondent's answers up to as_of"),
    c(
        "last_score",
        "int32",
        "score 0–10 of the latest answer (of answers at one instant, the lower)",
    ),
    c("last_responded_on", "date", "local date of the latest answer"),
    c(
        "nps_category",
        "string",
        "from last_score: `promoter` (9–10), `passive` (7–8) or `detractor` (0–6)",
    ),
];

const ACQUISITION: &[ColumnDoc] = &[
    c("cohort", "date", "start date of the cohort period: the period of the customers' first purchase, and of the spend counted in this row"),
    c("acquisition_channel", "string", "the channel (customers' acquisition channel, spend's channel); null on all-channels rows"),
    c("all_channels", "bool", "true on the row covering every channel, customers without a channel and unattributed spend; such rows are dense from the first cohort or spend period to the as_of period"),
    c("new_customers", "int64", "customers whose first purchase fell in the cohort period, count"),
    c("spend", "float64", "marketing spend dated in the cohort period, in the input's currency (negative for a net credit)"),
    c("cac", "float64", "customer acquisition cost: spend / new_customers, in the input's currency; null without new customers"),
    c("contribution_to_date_per_customer", "float64", "the new customers' contribution (revenue − cost, or revenue × margin) from their first purchase up to as_of, divided by new_customers, in the input's currency"),
    c("payback_period_index", "int32", "the first period since the cohort (0 = the cohort period) by whose end cumulative contribution covered the spend; 0 when cac ≤ 0; null without customers or when not paid back by as_of"),
    c("ltv_per_customer", "float64", "with `ltv`: mean lifetime value of the new customers (simple_clv, or historic contribution + clv), in the input's currency"),
    c("ltv_to_cac", "float64", "ltv_per_customer / cac, a ratio; null when cac is null or ≤ 0"),
];

const ACQUISITION_PAYBACK: &[ColumnDoc] = &[
    c("cohort", "date", "as in the acquisition table"),
    c("acquisition_channel", "string", "as in the acquisition table; null on all-channels rows"),
    c("all_channels", "bool", "as in the acquisition table"),
    c("period_index", "int32", "periods since the cohort period, from 0 to the as_of period"),
    c("cumulative_contribution_per_customer", "float64", "the cohort's contribution over periods 0..period_index, divided by new_customers, in the input's currency; null without new customers"),
    c("cac", "float64", "the row's cac, in the input's currency"),
    c("recovered_share", "float64", "cumulative_contribution_per_customer / cac, a fraction (1 = paid back); null when cac is null or ≤ 0"),
];

/// The columns of table `suffix` ("" for a one-table kind) of stage kind `kind`, without the
/// `as_of` every table ends with.
pub fn columns(kind: &str, suffix: &str) -> &'static [ColumnDoc] {
    match (kind, suffix) {
        ("customer_facts", _) => CUSTOMER_FACTS,
        ("cohort_retention", _) => COHORT_RETENTION,
        ("rfm", "customers") => RFM_CUSTOMERS,
        ("rfm", "thresholds") => RFM_THRESHOLDS,
        ("rfm", "segments") => RFM_SEGMENTS,
        ("repeat", "summary") => REPEAT_SUMMARY,
        ("repeat", "transitions") => REPEAT_TRANSITIONS,
        ("lifecycle", "snapshots") => LIFECYCLE_SNAPSHOTS,
        ("lifecycle", "customers") => LIFECYCLE_CUSTOMERS,
        ("clv_simple", _) => CLV_SIMPLE,
        ("clv", "customers") => CLV_CUSTOMERS,
        ("clv", "model") => CLV_MODEL,
        ("clv", "validation") => CLV_VALIDATION,
        ("segment_summary", _) => SEGMENT_SUMMARY,
        ("nps", "periods") => NPS_PERIODS,
        ("nps", "customers") => NPS_CUSTOMERS,
        ("acquisition", "") => ACQUISITION,
        ("acquisition", "payback") => ACQUISITION_PAYBACK,
        _ => &[],
    }
}

/// Whether a column `name` is an instance of the pattern `pattern` (`repeat_rate_<N>d` matches
/// `repeat_rate_30d`; a whole `<…>` matches any name).
fn matches(pattern: &str, name: &str) -> bool {
    match (pattern.find('<'), pattern.find('>')) {
        (Some(open), Some(close)) => {
            let (prefix, suffix) = (&pattern[..open], &pattern[close + 1..]);
            name.len() > prefix.len() + suffix.len() && name.starts_with(prefix) && name.ends_with(suffix)
        }
        _ => pattern == name,
    }
}

/// The entry describing column `name` of a table of `kind`: an exact name first, then a
/// pattern with a fixed part, then a whole-name pattern (`<dimension>`, `<by>`).
pub fn describe(kind: &str, suffix: &str, name: &str) -> Option<&'static ColumnDoc> {
    if name == AS_OF.name {
        return Some(&AS_OF);
    }
    let all = columns(kind, suffix);
    all.iter()
        .find(|doc| doc.name == name)
        .or_else(|| {
            all.iter()
                .find(|doc| !doc.name.starts_with('<') && matches(doc.name, name))
        })
        .or_else(|| {
            all.iter()
                .find(|doc| doc.name.starts_with('<') && matches(doc.name, name))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_exact_names_find_their_entries() {
        let rate = describe("repeat", "summary", "repeat_rate_30d").unwrap();
        assert_eq!(rate.name, "repeat_rate_<N>d");
        assert_eq!(
            describe("repeat", "summary", "repeat_customers").unwrap().name,
            "repeat_customers"
        );
        assert_eq!(describe("clv", "customers", "T_weeks").unwrap().name, "T_<unit>s");
        assert_eq!(
            describe("segment_summary", "", "mean_clv").unwrap().name,
            "mean_<metric>"
        );
        assert_eq!(describe("segment_summary", "", "segment").unwrap().name, "<by>");
        assert_eq!(describe("cohort_retention", "", "orders").unwrap().name, "orders");
        assert_eq!(
            describe("cohort_retention", "", "acquisition_channel").unwrap().name,
            "<dimension>"
        );
        assert_eq!(describe("rfm", "customers", "as_of").unwrap().name, "as_of");
        assert!(describe("rfm", "customers", "nonsense").is_none());
    }
}
