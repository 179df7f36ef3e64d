"""Independent reference for pipelines/retail.toml's rfm, repeat, lifecycle, segment summary,
nps and acquisition tables and the cost columns, in DuckDB.

Follows DESIGN.md: RFM rank_min with 5 bins and the default R×F map; repeat with
within_days = [30, 90, 365], max_purchases = 5, min_observation_days = 90, monthly cohorts;
monthly lifecycle snapshots with active_days = 90, churn_days = 180. Prints a JSON report.

usage: check_retail.py ORDER_LINES.parquet OUTPUT_DIR
"""

import json
import os
import sys

import base

LINES, OUT = sys.argv[1], sys.argv[2]
con = base.connect(LINES, "Europe/Berlin")
report = {}

# ---------------------------------------------------------------- rfm
base.create_rfm(con)
report["rfm_customers"] = base.compare(
    con, OUT, "rfm_customers", "SELECT * FROM rfm", ["customer_id"],
    ["recency_days", "frequency", "monetary", "r_score", "f_score", "m_score", "rfm_score", "segment"],
)
report["rfm_segments"] = base.compare(
    con, OUT, "rfm_segments",
    """
    WITH names(segment) AS (VALUES ('champions'), ('new_customers'), ('potential_loyalists'),
      ('loyal_customers'), ('promising'), ('need_attention'), ('about_to_sleep'),
      ('cannot_lose_them'), ('at_risk'), ('hibernating')),
    s AS (SELECT segment, count(*) AS customers, sum(monetary) AS revenue,
                 avg(recency_days) AS mean_recency_days, avg(frequency) AS mean_frequency,
                 avg(monetary) AS mean_monetary FROM rfm GROUP BY segment)
    SELECT names.segment, coalesce(customers, 0) AS customers,
           coalesce(customers, 0) / (SELECT count(*) FROM rfm) AS share,
           coalesce(revenue, 0) AS revenue,
           coalesce(revenue, 0) / (SELECT sum(monetary) FROM rfm) AS revenue_share,
           mean_recency_days, mean_frequency, mean_monetary
    FROM names LEFT JOIN s USING (segment)
    """,
    ["segment"],
    ["customers", "share", "revenue", "revenue_share", "mean_recency_days", "mean_frequency", "mean_monetary"],
)

# ---------------------------------------------------------------- repeat
base.create_repeat_inputs(con)
windows = [30, 90, 365]
window_columns = ",\n".join(
    f"""count(*) FILTER (WHERE observed_days >= {n}) AS customers_observed_{n}d,
        count(*) FILTER (WHERE observed_days >= {n} AND days_to_second <= {n}) AS repeat_customers_{n}d,
        count(*) FILTER (WHERE observed_days >= {n} AND days_to_second <= {n})
          / nullif(count(*) FILTER (WHERE observed_days >= {n}), 0) AS repeat_rate_{n}d"""
    for n in windows
)
summary_columns = f"""count(*) AS customers, count(*) FILTER (WHERE orders >= 2) AS repeat_customers,
        count(*) FILTER (WHERE orders >= 2) / count(*) AS repeat_customer_rate,
        {window_columns},
        quantile_cont(days_to_second, 0.5) AS days_to_second_median,
        quantile_cont(days_to_second, 0.25) AS days_to_second_p25,
        quantile_cont(days_to_second, 0.75) AS days_to_second_p75,
        avg(days_to_second) AS days_to_second_mean,
        avg(days_between) AS mean_days_between_purchases"""
metric_names = ["customers", "repeat_customers", "repeat_customer_rate"]
for n in windows:
    metric_names += [f"customers_observed_{n}d", f"repeat_customers_{n}d", f"repeat_rate_{n}d"]
metric_names += ["days_to_second_median", "days_to_second_p25", "days_to_second_p75",
                 "days_to_second_mean", "mean_days_between_purchases"]
report["repeat_summary"] = base.compare(
    con, OUT, "repeat_summary",
    f"""SELECT NULL::DATE AS cohort, {summary_columns} FROM rep
        UNION ALL SELECT cohort, {summary_columns} FROM rep GROUP BY cohort""",
    ["cohort"], metric_names,
)
report["repeat_transitions"] = base.compare(
    con, OUT, "repeat_transitions",
    """
    WITH steps AS (
      SELECT r.customer_id, r.cohort, ks.k, r.orders, nk.d AS kth
      FROM rep r CROSS JOIN range(1, 6) ks(k)
      LEFT JOIN nth nk ON nk.customer_id = r.customer_id AND nk.k = ks.k
    ), counted AS (
      SELECT cohort, k,
        count(*) FILTER (WHERE kth <= (SELECT as_of FROM as_of) - 90) AS at_k,
        count(*) FILTER (WHERE kth <= (SELECT as_of FROM as_of) - 90 AND orders >= k + 1) AS at_k1
      FROM steps GROUP BY GROUPING SETS ((cohort, k), (k))
    )
    SELECT cohort, CAST(k AS INT) AS k, at_k AS customers_at_k, at_k1 AS customers_at_k_plus_1,
           at_k1 / nullif(at_k, 0) AS probability FROM counted
    """,
    ["cohort", "k"],
    ["customers_at_k", "customers_at_k_plus_1", "probability"],
)

# ---------------------------------------------------------------- lifecycle
con.execute(
    """
CREATE TABLE pdays AS
SELECT c AS customer_id, d, d - lag(d) OVER (PARTITION BY c ORDER BY d) AS gap
FROM (SELECT DISTINCT c, d FROM orders WHERE rev > 0);

CREATE TABLE snaps AS
WITH months AS (
  SELECT CAST(m AS DATE) AS period_start
  FROM range(date_trunc('month', (SELECT min(first_purchase_date) FROM facts)),
             date_trunc('month', (SELECT as_of FROM as_of)) + INTERVAL 1 MONTH,
             INTERVAL 1 MONTH) t(m)
)
SELECT period_start,
       least(CAST(period_start + INTERVAL 1 MONTH AS DATE) - 1, (SELECT as_of FROM as_of)) AS snapshot_date
FROM months;

CREATE TABLE states AS
SELECT f.customer_id, s.period_start, s.snapshot_date,
  f.first_purchase_date AS first,
  (SELECT max(p.d) FROM pdays p WHERE p.customer_id = f.customer_id AND p.d <= s.snapshot_date) AS last_end,
  (SELECT max(p.d) FROM pdays p WHERE p.customer_id = f.customer_id AND p.d < s.period_start) AS last_start,
  EXISTS (SELECT 1 FROM pdays p WHERE p.customer_id = f.customer_id AND p.d BETWEEN s.period_start
          AND s.snapshot_date AND p.gap > 180) AS came_back
FROM facts f, snaps s
WHERE f.first_purchase_date <= s.snapshot_date;

CREATE TABLE staged AS
SELECT *,
  CASE WHEN first >= period_start THEN 'new'
       WHEN came_back THEN 'reactivated'
       WHEN snapshot_date - last_end <= 90 THEN 'active'
       WHEN snapshot_date - last_end <= 180 THEN 'at_risk'
       ELSE 'churned' END AS stage,
  coalesce((period_start - 1) - last_start <= 180, false) AS alive_start
FROM states;
"""
)
report["lifecycle_snapshots"] = base.compare(
    con, OUT, "lifecycle_snapshots",
    """
    SELECT snapshot_date, period_start,
      count(*) FILTER (WHERE stage = 'new') AS new,
      count(*) FILTER (WHERE stage = 'reactivated') AS reactivated,
      count(*) FILTER (WHERE stage = 'active') AS active,
      count(*) FILTER (WHERE stage = 'at_risk') AS at_risk,
      count(*) FILTER (WHERE stage = 'churned') AS churned,
      count(*) FILTER (WHERE alive_start) AS start_customers,
      count(*) FILTER (WHERE stage <> 'churned') AS end_customers,
      count(*) FILTER (WHERE stage = 'new') AS new_customers,
      count(*) FILTER (WHERE alive_start AND stage <> 'churned') AS retained_customers,
      count(*) FILTER (WHERE alive_start AND stage <> 'churned')
        / nullif(count(*) FILTER (WHERE alive_start), 0) AS crr,
      1 - count(*) FILTER (WHERE alive_start AND stage <> 'churned')
        / nullif(count(*) FILTER (WHERE alive_start), 0) AS churn_rate
    FROM staged GROUP BY snapshot_date, period_start
    """,
    ["snapshot_date"],
    ["period_start", "new", "reactivated", "active", "at_risk", "churned", "start_customers",
     "end_customers", "new_customers", "retained_customers", "crr", "churn_rate"],
)
report["lifecycle_customers"] = base.compare(
    con, OUT, "lifecycle_customers",
    """SELECT customer_id, stage, snapshot_date - last_end AS days_since_last_purchase
       FROM staged WHERE snapshot_date = (SELECT as_of FROM as_of)""",
    ["customer_id"], ["stage", "days_since_last_purchase"],
)
# ---------------------------------------------------------------- segment summaries
# The aggregation only: the customers as computed above (facts), joined with the pipeline's
# per-customer tables, whose values the comparisons above (rfm, lifecycle) and the CLV tests
# check. A column two inputs carry comes from the first (historic_clv from clv_simple).


def summary_sql(by: list[str], joins: list[tuple[str, list[str]]], metrics: list[str]) -> str:
    """The summary per group, with the cost columns (the sample maps `cost`)."""
    selected = ", ".join(f"{alias}.{c}" for alias, (_, columns) in zip("abc", joins) for c in columns)
    joined = " ".join(
        f"LEFT JOIN read_parquet('{OUT}/{table}.parquet') {alias} USING (customer_id)"
        for alias, (table, _) in zip("abc", joins)
    )
    aggregates = ", ".join(
        f"avg({m}) AS mean_{m}, quantile_cont({m}, 0.5) AS median_{m}" for m in metrics
    )
    return f"""
    WITH t AS (SELECT f.customer_id, f.revenue, f.cost, f.contribution, f.orders,
                      f.acquisition_channel, {selected}
               FROM facts f {joined})
    SELECT {", ".join(by)}, count(*) AS customers, count(*) / (SELECT count(*) FROM t) AS share,
           sum(revenue) AS revenue, sum(revenue) / (SELECT sum(revenue) FROM t) AS revenue_share,
           sum(cost) AS cost, sum(contribution) AS contribution,
           sum(contribution) / (SELECT sum(contribution) FROM t) AS contribution_share,
           {aggregates}, avg(CASE WHEN orders >= 2 THEN 1.0 ELSE 0.0 END) AS repeat_rate
    FROM t GROUP BY {", ".join(by)}
    """


def summary_columns(metrics: list[str]) -> list[str]:
    columns = ["customers", "share", "revenue", "revenue_share", "cost", "contribution", "contribution_share"]
    for m in metrics:
        columns += [f"mean_{m}", f"median_{m}"]
    return columns + ["repeat_rate"]


metrics = ["historic_clv", "simple_clv", "clv"]
report["segments"] = base.compare(
    con, OUT, "segments",
    summary_sql(["segment"], [("rfm_customers", ["segment"]),
                              ("clv_simple", ["historic_clv", "simple_clv"]),
                              ("clv_customers", ["clv"])], metrics),
    ["segment"], summary_columns(metrics),
)
metrics = ["historic_clv", "simple_clv"]
report["lifecycle_by_channel"] = base.compare(
    con, OUT, "lifecycle_by_channel",
    summary_sql(["acquisition_channel", "stage"], [("lifecycle_customers", ["stage"]),
                                                   ("clv_simple", ["historic_clv", "simple_clv"])],
                metrics),
    ["acquisition_channel", "stage"], summary_columns(metrics),
)

# ---------------------------------------------------------------- nps
# The survey beside the order lines; answers up to as_of (a local date in Europe/Berlin).
SURVEY = os.path.join(os.path.dirname(LINES), "survey_answers.parquet")
con.execute(
    f"""
    CREATE TABLE answers AS
    SELECT customer_id, responded_at, score,
           CAST(timezone('Europe/Berlin', responded_at) AS DATE) AS d
    FROM read_parquet('{SURVEY}')
    WHERE customer_id IS NOT NULL AND responded_at IS NOT NULL AND score BETWEEN 0 AND 10
      AND CAST(timezone('Europe/Berlin', responded_at) AS DATE) <= (SELECT as_of FROM as_of)
    """
)
report["nps_periods"] = base.compare(
    con, OUT, "nps_periods",
    """
    WITH months AS (
      SELECT CAST(unnest(generate_series(date_trunc('month', (SELECT min(d) FROM answers)),
                                         date_trunc('month', (SELECT as_of FROM as_of)),
                                         INTERVAL 1 MONTH)) AS DATE) AS period_start
    ), c AS (
      SELECT CAST(date_trunc('month', d) AS DATE) AS period_start, count(*) AS responses,
             count(*) FILTER (WHERE score >= 9) AS promoters,
             count(*) FILTER (WHERE score BETWEEN 7 AND 8) AS passives,
             count(*) FILTER (WHERE score <= 6) AS detractors
      FROM answers GROUP BY 1
    )
    SELECT period_start, coalesce(responses, 0) AS responses, coalesce(promoters, 0) AS promoters,
           coalesce(passives, 0) AS passives, coalesce(detractors, 0) AS detractors,
           CASE WHEN responses > 0 THEN 100.0 * (promoters - detractors) / responses END AS nps
    FROM months LEFT JOIN c USING (period_start)
    """,
    ["period_start"],
    ["responses", "promoters", "passives", "detractors", "nps"],
)
con.execute(
    """
    CREATE TABLE last_answer AS
    SELECT customer_id, count(*) AS responses,
           arg_min(score, [-epoch_us(responded_at), score]) AS last_score,
           arg_min(d, [-epoch_us(responded_at), score]) AS last_responded_on
    FROM answers GROUP BY customer_id
    """
)
report["nps_customers"] = base.compare(
    con, OUT, "nps_customers",
    """
    SELECT *, CASE WHEN last_score >= 9 THEN 'promoter' WHEN last_score >= 7 THEN 'passive'
                   ELSE 'detractor' END AS nps_category
    FROM last_answer
    """,
    ["customer_id"],
    ["responses", "last_score", "last_responded_on", "nps_category"],
)
report["nps_by_segment"] = base.compare(
    con, OUT, "nps_by_segment",
    """
    SELECT r.segment, count(*) AS customers, count(l.last_score) AS respondents,
           CASE WHEN count(l.last_score) > 0 THEN 100.0 * (count(*) FILTER (WHERE l.last_score >= 9)
                - count(*) FILTER (WHERE l.last_score <= 6)) / count(l.last_score) END AS nps
    FROM rfm r LEFT JOIN last_answer l USING (customer_id)
    GROUP BY r.segment
    """,
    ["segment"],
    ["customers", "respondents", "nps"],
)

# ---------------------------------------------------------------- cost and acquisition
report["customer_facts_cost"] = base.compare(
    con, OUT, "customer_facts", "SELECT customer_id, cost, contribution FROM facts",
    ["customer_id"], ["cost", "contribution"],
)
# Spend beside the order lines (dates are local dates already), up to as_of; the cohort is the
# month of the first purchase and of the spend; contribution = revenue − cost per order, in the
# months since the cohort (earlier refunds not counted). LTV = historic contribution + clv.
SPEND = os.path.join(os.path.dirname(LINES), "marketing_spend.parquet")
con.execute(
    f"""
    CREATE TABLE acq_customers AS
    SELECT customer_id, CAST(date_trunc('month', first_purchase_date) AS DATE) AS cohort,
           acquisition_channel AS ch, contribution
    FROM facts;
    CREATE TABLE acq_spend AS
    SELECT CAST(date_trunc('month', date) AS DATE) AS cohort, channel AS ch,
           CAST(amount * 1000000 AS BIGINT) AS micros
    FROM read_parquet('{SPEND}')
    WHERE date IS NOT NULL AND amount IS NOT NULL AND date <= (SELECT as_of FROM as_of);
    CREATE TABLE acq_contribution AS
    SELECT a.cohort, a.ch, datediff('month', a.cohort, date_trunc('month', o.d)) AS k,
           sum(o.rev - o.cost) AS micros
    FROM orders o JOIN acq_customers a ON o.c = a.customer_id
    GROUP BY ALL HAVING k >= 0;
    CREATE TABLE acq_keys AS
    SELECT DISTINCT cohort, false AS all_channels, ch FROM (
      SELECT cohort, ch FROM acq_customers UNION ALL SELECT cohort, ch FROM acq_spend
    ) WHERE ch IS NOT NULL
    UNION ALL
    SELECT CAST(m AS DATE), true, NULL
    FROM range((SELECT least(min(cohort), (SELECT min(cohort) FROM acq_spend)) FROM acq_customers),
               date_trunc('month', (SELECT as_of FROM as_of)) + INTERVAL 1 MONTH,
               INTERVAL 1 MONTH) t(m);
    CREATE TABLE acq_curve AS
    SELECT key.cohort, key.all_channels, key.ch, CAST(k.k AS INT) AS k,
           sum(coalesce((SELECT sum(micros) FROM acq_contribution c
                         WHERE c.cohort = key.cohort AND c.k = k.k
                           AND (key.all_channels OR c.ch = key.ch)), 0))
             OVER (PARTITION BY key.cohort, key.all_channels, key.ch ORDER BY k.k) AS cumulative
    FROM acq_keys key, LATERAL (
      SELECT unnest(range(0, datediff('month', key.cohort,
                                      date_trunc('month', (SELECT as_of FROM as_of))) + 1)) AS k
    ) k;
    CREATE TABLE acq AS
    SELECT key.*,
      (SELECT count(*) FROM acq_customers a
        WHERE a.cohort = key.cohort AND (key.all_channels OR a.ch = key.ch)) AS new_customers,
      (SELECT coalesce(sum(micros), 0) FROM acq_spend s
        WHERE s.cohort = key.cohort AND (key.all_channels OR s.ch = key.ch)) AS spend_micros,
      (SELECT avg(a.contribution + l.clv) FROM acq_customers a
         JOIN read_parquet('{OUT}/clv_customers.parquet') l USING (customer_id)
        WHERE a.cohort = key.cohort AND (key.all_channels OR a.ch = key.ch)) AS ltv
    FROM acq_keys key
    WHERE key.all_channels
       OR EXISTS (SELECT 1 FROM acq_customers a WHERE a.cohort = key.cohort AND a.ch = key.ch)
       OR (SELECT coalesce(sum(micros), 0) FROM acq_spend s
            WHERE s.cohort = key.cohort AND s.ch = key.ch) <> 0;
    """
)
report["acquisition"] = base.compare(
    con, OUT, "acquisition",
    """
    SELECT cohort, all_channels, ch AS acquisition_channel, new_customers, spend_micros / 1e6 AS spend,
      CASE WHEN new_customers > 0 THEN spend_micros / 1e6 / new_customers END AS cac,
      CASE WHEN new_customers > 0 THEN
        (SELECT max_by(cumulative, k) FROM acq_curve c WHERE c.cohort = acq.cohort
           AND c.all_channels = acq.all_channels AND c.ch IS NOT DISTINCT FROM acq.ch) / 1e6 / new_customers
      END AS contribution_to_date_per_customer,
      CASE WHEN new_customers = 0 THEN NULL WHEN spend_micros <= 0 THEN 0 ELSE
        (SELECT min(k) FROM acq_curve c WHERE c.cohort = acq.cohort AND c.all_channels = acq.all_channels
           AND c.ch IS NOT DISTINCT FROM acq.ch AND c.cumulative >= acq.spend_micros)
      END AS payback_period_index,
      CASE WHEN new_customers > 0 THEN ltv END AS ltv_per_customer,
      CASE WHEN new_customers > 0 AND spend_micros > 0 THEN ltv / (spend_micros / 1e6 / new_customers) END
        AS ltv_to_cac
    FROM acq
    """,
    ["cohort", "all_channels", "acquisition_channel"],
    ["new_customers", "spend", "cac", "contribution_to_date_per_customer", "payback_period_index",
     "ltv_per_customer", "ltv_to_cac"],
)
report["acquisition_payback"] = base.compare(
    con, OUT, "acquisition_payback",
    """
    SELECT c.cohort, c.all_channels, c.ch AS acquisition_channel, c.k AS period_index,
      CASE WHEN a.new_customers > 0 THEN c.cumulative / 1e6 / a.new_customers END
        AS cumulative_contribution_per_customer,
      CASE WHEN a.new_customers > 0 THEN a.spend_micros / 1e6 / a.new_customers END AS cac,
      CASE WHEN a.new_customers > 0 AND a.spend_micros > 0 THEN c.cumulative / a.spend_micros END
        AS recovered_share
    FROM acq_curve c JOIN acq a ON a.cohort = c.cohort AND a.all_channels = c.all_channels
      AND a.ch IS NOT DISTINCT FROM c.ch
    """,
    ["cohort", "all_channels", "acquisition_channel", "period_index"],
    ["cumulative_contribution_per_customer", "cac", "recovered_share"],
)
print(json.dumps(report, indent=2))
