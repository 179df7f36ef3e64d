"""Shared reference tables in DuckDB: order lines → orders → customer facts, per DESIGN.md.

Used by check_sample.py (customer_facts, cohorts) and check_retail.py (rfm, repeat, lifecycle).
"""

import duckdb


def connect(lines: str, tz: str = "Europe/Berlin") -> duckdb.DuckDBPyConnection:
    """Tables `lines`, `orders`, `as_of`, `purchase_days`, `facts` for the sample pipelines
    (status in completed/shipped, as_of = last order, money as integer micro-units)."""
    TZ, LINES = tz, lines
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"""
    CREATE TABLE lines AS
    SELECT order_id, customer_id, created_at, channel,
           CAST(timezone('{TZ}', created_at) AS DATE) AS d,
           CAST(round(line_amount * 1e6) AS BIGINT) AS micros
    FROM read_parquet('{LINES}')
    WHERE status IN ('completed', 'shipped')
      AND customer_id IS NOT NULL AND order_id IS NOT NULL
      AND created_at IS NOT NULL AND line_amount IS NOT NULL;

    CREATE TABLE orders AS
    SELECT order_id, min(customer_id) AS c, min(d) AS d, sum(micros) AS rev,
           arg_min(channel, created_at) AS ch, min(created_at) AS ts
    FROM lines GROUP BY order_id
    HAVING min(customer_id) = max(customer_id);

    CREATE TABLE as_of AS SELECT max(d) AS as_of FROM orders;

    CREATE TABLE purchase_days AS
    SELECT c, d, sum(rev) AS day_rev FROM orders WHERE rev > 0 GROUP BY c, d;

    CREATE TABLE facts AS
    WITH p AS (
      SELECT c, min(d) AS first, max(d) AS last, count(*) AS orders, sum(rev) AS prev,
             arg_min(ch, ts) AS channel
      FROM orders WHERE rev > 0 GROUP BY c
    ), net AS (SELECT c, sum(rev) AS rev FROM orders GROUP BY c),
    btyd AS (
      SELECT c, count(*) - 1 AS frequency, sum(day_rev) AS days_rev,
             arg_min(day_rev, d) AS first_day_rev
      FROM purchase_days GROUP BY c
    )
    SELECT p.c AS customer_id, first AS first_purchase_date, last AS last_purchase_date, orders,
           net.rev / 1e6 AS revenue, prev / 1e6 / orders AS aov, channel AS acquisition_channel,
           frequency, (last - first) AS t_x, ((SELECT as_of FROM as_of) - first) AS "T",
           CASE WHEN frequency > 0 THEN (days_rev - first_day_rev) / 1e6 / frequency ELSE 0 END
             AS monetary_value
    FROM p JOIN net USING (c) JOIN btyd USING (c);
    """
    )


    return con


def compare(con, out: str, name: str, reference_sql: str, keys: list[str], columns: list[str]) -> dict:
    con.execute(f"CREATE OR REPLACE TABLE ref AS {reference_sql}")
    con.execute(f"CREATE OR REPLACE TABLE ours AS SELECT * FROM read_parquet('{out}/{name}.parquet')")
    join = " AND ".join(f"r.{k} IS NOT DISTINCT FROM o.{k}" for k in keys)
    checks = []
    for column in columns:
        r, o = f'r."{column}"', f'o."{column}"'
        checks.append(
            f"(CASE WHEN typeof({r}) IN ('DOUBLE', 'DECIMAL', 'FLOAT') OR typeof({o}) = 'DOUBLE' "
            f"THEN abs(CAST({r} AS DOUBLE) - CAST({o} AS DOUBLE)) > 1e-9 * greatest(1, abs(CAST({r} AS DOUBLE))) "
            f"ELSE CAST({r} AS VARCHAR) IS DISTINCT FROM CAST({o} AS VARCHAR) END)"
        )
    mismatch = " OR ".join(checks)
    rows = con.execute("SELECT count(*) FROM ref").fetchone()[0]
    ours = con.execute("SELECT count(*) FROM ours").fetchone()[0]
    bad = con.execute(
        f"SELECT count(*) FROM ref r FULL OUTER JOIN ours o ON {join} "
        f"WHERE r.{keys[0]} IS NULL AND o.{keys[0]} IS NOT NULL "
        f"   OR o.{keys[0]} IS NULL AND r.{keys[0]} IS NOT NULL OR ({mismatch})"
    ).fetchone()[0]
    examples = con.execute(
        f"SELECT r.*, o.* FROM ref r FULL OUTER JOIN ours o ON {join} WHERE {mismatch} LIMIT 3"
    ).fetchall()
    return {"rows": rows, "pipeline_rows": ours, "mismatches": bad, "examples": [str(e) for e in examples]}
