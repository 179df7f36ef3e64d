"""Independent reference for the sample pipeline (pipelines/cohorts.toml), in DuckDB SQL.

Recomputes customer_facts, monthly cohort retention and weekly cohort retention by acquisition
channel from the raw order lines, following DESIGN.md's definitions, and compares them with the
pipeline's Parquet outputs row for row. Prints a JSON report; the Rust test asserts on it.

usage: check_sample.py ORDER_LINES.parquet OUTPUT_DIR
"""

import json
import sys

import base

LINES, OUT = sys.argv[1], sys.argv[2]
TZ = "Europe/Berlin"

con = base.connect(LINES, TZ)


def cohorts_sql(unit: str, dims: bool) -> str:
    """Dense retention triangle; unit is 'month' or 'week' (ISO weeks start on Monday)."""
    dim = "acquisition_channel" if dims else "NULL"
    diff = (
        "datediff('month', cohort, date_trunc('month', p.d))"
        if unit == "month"
        else "CAST(datediff('day', cohort, date_trunc('week', p.d)) / 7 AS BIGINT)"
    )
    last_diff = diff.replace("p.d", "f.last_purchase_date")
    step = "INTERVAL 1 MONTH" if unit == "month" else "INTERVAL 7 DAY"
    return f"""
WITH cust AS (
  SELECT customer_id, {dim} AS dim,
         CAST(date_trunc('{unit}', first_purchase_date) AS DATE) AS cohort,
         last_purchase_date
  FROM facts
), sizes AS (SELECT dim, cohort, count(*) AS n FROM cust GROUP BY ALL),
grid AS (
  SELECT dim, cohort, n, CAST(g.k AS BIGINT) AS period_index,
         CAST(cohort + g.k * {step} AS DATE) AS period_start
  FROM sizes, LATERAL (
    SELECT unnest(range(0, CAST(
      {"datediff('month', cohort, date_trunc('month', (SELECT as_of FROM as_of)))" if unit == "month"
       else "datediff('day', cohort, date_trunc('week', (SELECT as_of FROM as_of))) / 7"} + 1 AS BIGINT))) AS k
  ) g
), per_customer AS (
  SELECT cust.customer_id, cust.dim, cust.cohort,
         {diff.replace("cohort", "cust.cohort")} AS period_index,
         count(*) FILTER (WHERE p.rev > 0) AS purchases, sum(p.rev) AS rev
  FROM orders p JOIN cust ON p.c = cust.customer_id
  GROUP BY ALL
), cells AS (
  SELECT dim, cohort, period_index, count(*) FILTER (WHERE purchases > 0) AS active,
         sum(purchases) AS orders, sum(rev) AS rev
  FROM per_customer WHERE period_index >= 0 GROUP BY ALL
), last_active AS (
  SELECT cust.dim, cust.cohort,
         {last_diff.replace("cohort", "cust.cohort").replace("f.last_purchase_date", "cust.last_purchase_date")} AS period_index,
         count(*) AS k
  FROM cust GROUP BY ALL
)
SELECT g.dim, g.cohort, g.period_index, g.period_start, g.n AS cohort_customers,
       coalesce(c.active, 0) AS active_customers,
       coalesce(c.active, 0) / g.n AS retention,
       (SELECT coalesce(sum(k), 0) FROM last_active la
         WHERE la.dim IS NOT DISTINCT FROM g.dim AND la.cohort = g.cohort
           AND la.period_index >= g.period_index) / g.n AS unbounded_retention,
       coalesce(c.orders, 0) AS orders, coalesce(c.rev, 0) / 1e6 AS revenue,
       coalesce(c.rev, 0) / 1e6 / g.n AS revenue_per_customer,
       sum(coalesce(c.rev, 0) / 1e6 / g.n) OVER (
         PARTITION BY g.dim, g.cohort ORDER BY g.period_index) AS cumulative_revenue_per_customer,
       (CAST(g.period_start + {step} AS DATE) - 1) <= (SELECT as_of FROM as_of) AS period_complete
FROM grid g LEFT JOIN cells c
  ON c.dim IS NOT DISTINCT FROM g.dim AND c.cohort = g.cohort AND c.period_index = g.period_index
"""


report = {
    "customer_facts": base.compare(
        con, OUT, "customer_facts",
        "SELECT * FROM facts",
        ["customer_id"],
        ["first_purchase_date", "last_purchase_date", "orders", "revenue", "aov",
         "acquisition_channel", "frequency", "t_x", "T", "monetary_value"],
    )
}
metric_columns = ["period_start", "cohort_customers", "active_customers", "retention",
                  "unbounded_retention", "orders", "revenue", "revenue_per_customer",
                  "cumulative_revenue_per_customer", "period_complete"]
report["cohorts"] = base.compare(
    con, OUT, "cohorts", cohorts_sql("month", False), ["cohort", "period_index"], metric_columns
)
report["cohorts_weekly_by_channel"] = base.compare(
    con, OUT, "cohorts_weekly_by_channel",
    f"SELECT dim AS acquisition_channel, * EXCLUDE (dim) FROM ({cohorts_sql('week', True)})",
    ["acquisition_channel", "cohort", "period_index"],
    metric_columns,
)
print(json.dumps(report, indent=2))
