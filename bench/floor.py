"""The single-scan floor: scan the needed columns, keep completed/shipped lines, group by
customer with count/sum/min/max, write Parquet. One engine per run.

usage: floor.py polars|duckdb|polars_mapped|duckdb_mapped|polars_line|duckdb_line|polars_cost|duckdb_cost LINES.parquet OUT.parquet

`polars` / `duckdb` read the four columns the aggregates name (customer_id, line_amount,
created_at, status). The `_mapped` variants read every column the benchmark's pipeline config
maps — order_id and channel too, without which orders and acquisition channels cannot be told —
and take min/max of them, so the floor pays for the same bytes the pipeline decodes. The `_line`
variants read the `line` column as well (max of it), for configs that map it; the `_cost`
variants the `cost` column (sum of it).
"""

import sys

ENGINE, LINES, OUT = sys.argv[1:4]
LINE = ENGINE.endswith("_line")
COST = ENGINE.endswith("_cost")
MAPPED = ENGINE.endswith("_mapped") or LINE or COST
if ENGINE.startswith("polars"):
    import polars as pl

    c = pl.col
    extra = [c("order_id").max().alias("last_order"), c("channel").min()] if MAPPED else []
    extra += [c("line").max().alias("last_line")] if LINE else []
    extra += [c("cost").sum()] if COST else []
    (
        pl.scan_parquet(LINES)
        .filter(c("status").is_in(["completed", "shipped"]))
        .group_by("customer_id")
        .agg(pl.len().alias("lines"), c("line_amount").sum(), c("created_at").min().alias("first"),
             c("created_at").max().alias("last"), *extra)
        .sink_parquet(OUT)
    )
else:
    import duckdb

    extra = ", max(order_id) AS last_order, min(channel) AS channel" if MAPPED else ""
    extra += ", max(line) AS last_line" if LINE else ""
    extra += ", sum(cost) AS cost" if COST else ""
    duckdb.execute(f"""
        COPY (SELECT customer_id, count(*) AS lines, sum(line_amount) AS revenue,
                     min(created_at) AS first, max(created_at) AS last{extra}
              FROM read_parquet('{LINES}') WHERE status IN ('completed', 'shipped')
              GROUP BY customer_id) TO '{OUT}' (FORMAT parquet)""")
