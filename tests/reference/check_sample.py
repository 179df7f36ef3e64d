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
    con, OUT, "cohorts", base.cohorts_sql("month", False), ["cohort", "period_index"], metric_columns
)
report["cohorts_weekly_by_channel"] = base.compare(
    con, OUT, "cohorts_weekly_by_channel",
    f"SELECT dim AS acquisition_channel, * EXCLUDE (dim) FROM ({base.cohorts_sql('week', True)})",
    ["acquisition_channel", "cohort", "period_index"],
    metric_columns,
)
print(json.dumps(report, indent=2))
