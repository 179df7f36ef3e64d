"""The single-scan floor: scan the needed columns, keep completed/shipped lines, group by
customer with count/sum/min/max, write Parquet. One engine per run.

usage: floor.py polars|duckdb LINES.parquet OUT.parquet
"""

import sys

ENGINE, LINES, OUT = sys.argv[1:4]
if ENGINE == "polars":
    import polars as pl

    c = pl.col
    (
        pl.scan_parquet(LINES)
        .filter(c("status").is_in(["completed", "shipped"]))
        .group_by("customer_id")
        .agg(pl.len().alias("lines"), c("line_amount").sum(), c("created_at").min().alias("first"),
             c("created_at").max().alias("last"))
        .sink_parquet(OUT)
    )
else:
    import duckdb

    duckdb.execute(f"""
        COPY (SELECT customer_id, count(*) AS lines, sum(line_amount) AS revenue,
                     min(created_at) AS first, max(created_at) AS last
              FROM read_parquet('{LINES}') WHERE status IN ('completed', 'shipped')
              GROUP BY customer_id) TO '{OUT}' (FORMAT parquet)""")
