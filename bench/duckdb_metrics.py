"""The table metrics in hand-written DuckDB SQL, for comparison with `pipeline run`: customer
facts, dense monthly cohort retention, RFM (rank_min, default segments) with the segment summary,
repeat summary overall and per cohort, and historic CLV — each written to Parquet. The SQL is the
reference implementation the tests check the pipeline against (tests/reference/base.py).

usage: duckdb_metrics.py LINES.parquet OUT_DIR
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "reference"))
import base  # noqa: E402

LINES, OUT = sys.argv[1], sys.argv[2]
os.makedirs(OUT, exist_ok=True)
con = base.connect(LINES, "Europe/Berlin")
base.create_rfm(con)
base.create_repeat_inputs(con)


def write(name: str, sql: str) -> None:
    con.execute(f"COPY ({sql}) TO '{OUT}/{name}.parquet' (FORMAT parquet, COMPRESSION zstd)")


write("customer_facts", "SELECT * FROM facts")
write("cohorts", base.cohorts_sql("month", False))
write("rfm_customers", "SELECT * FROM rfm")
write("rfm_segments", """SELECT segment, count(*) AS customers, count(*) / (SELECT count(*) FROM rfm) AS share,
    sum(monetary) AS revenue, sum(monetary) / (SELECT sum(monetary) FROM rfm) AS revenue_share,
    avg(recency_days) AS mean_recency_days, avg(frequency) AS mean_frequency,
    avg(monetary) AS mean_monetary FROM rfm GROUP BY segment""")
summary = """count(*) AS customers, count(*) FILTER (WHERE orders >= 2) AS repeat_customers,
    count(*) FILTER (WHERE orders >= 2) / count(*) AS repeat_customer_rate,
    quantile_cont(days_to_second, 0.5) AS days_to_second_median,
    avg(days_between) AS mean_days_between_purchases"""
write("repeat_summary", f"SELECT NULL::DATE AS cohort, {summary} FROM rep UNION ALL "
                        f"SELECT cohort, {summary} FROM rep GROUP BY cohort")
write("historic_clv", "SELECT customer_id, revenue AS historic_clv FROM facts")
