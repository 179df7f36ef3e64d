"""Shared reference tables in DuckDB: order lines → orders → customer facts, per DESIGN.md.
A null line cost counts as 0 (the sample lines carry a `cost` column).

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
           CAST(round(line_amount * 1e6) AS BIGINT) AS micros,
           CAST(round(coalesce(cost, 0) * 1e6) AS BIGINT) AS cost_micros
    FROM read_parquet('{LINES}')
    WHERE status IN ('completed', 'shipped')
      AND customer_id IS NOT NULL AND order_id IS NOT NULL
      AND created_at IS NOT NULL AND line_amount IS NOT NULL;

    CREATE TABLE orders AS
    SELECT order_id, min(customer_id) AS c, min(d) AS d, sum(micros) AS rev, sum(cost_micros) AS cost,
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
    ), net AS (SELECT c, sum(rev) AS rev, sum(cost) AS cost FROM orders GROUP BY c),
    btyd AS (
      SELECT c, count(*) - 1 AS frequency, sum(day_rev) AS days_rev,
             arg_min(day_rev, d) AS first_day_rev
      FROM purchase_days GROUP BY c
    )
    SELECT p.c AS customer_id, first AS first_purchase_date, last AS last_purchase_date, orders,
           net.rev / 1e6 AS revenue, prev / 1e6 / orders AS aov, channel AS acquisition_channel,
           frequency, (last - first) AS t_x, ((SELECT as_of FROM as_of) - first) AS "T",
           CASE WHEN frequency > 0 THEN (days_rev - first_day_rev) / 1e6 / frequency ELSE 0 END
             AS monetary_value,
           net.cost / 1e6 AS cost, (net.rev - net.cost) / 1e6 AS contribution
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


def create_rfm(con) -> None:
    """Table `rfm`: rank_min scores with 5 bins and the default R×F segment map."""
    con.execute(
        """
CREATE TABLE rfm AS
WITH v AS (
  SELECT customer_id, ((SELECT as_of FROM as_of) - last_purchase_date) AS recency_days,
         orders AS frequency, revenue AS monetary, count(*) OVER () AS n
  FROM facts
), r AS (
  SELECT *,
    1 + floor(5 * (rank() OVER (ORDER BY recency_days DESC) - 1) / n) AS r_score,
    1 + floor(5 * (rank() OVER (ORDER BY frequency) - 1) / n) AS f_score,
    1 + floor(5 * (rank() OVER (ORDER BY round(monetary, 6)) - 1) / n) AS m_score
  FROM v
)
SELECT customer_id, recency_days, frequency, monetary,
       CAST(r_score AS INT) AS r_score, CAST(f_score AS INT) AS f_score,
       CAST(m_score AS INT) AS m_score,
       CAST(r_score AS INT)::VARCHAR || CAST(f_score AS INT)::VARCHAR || CAST(m_score AS INT)::VARCHAR AS rfm_score,
       CASE
         WHEN r_score = 5 AND f_score >= 4 THEN 'champions'
         WHEN r_score = 5 AND f_score = 1 THEN 'new_customers'
         WHEN r_score = 5 THEN 'potential_loyalists'
         WHEN r_score IN (3, 4) AND f_score >= 4 THEN 'loyal_customers'
         WHEN r_score = 4 AND f_score = 1 THEN 'promising'
         WHEN r_score = 4 THEN 'potential_loyalists'
         WHEN r_score = 3 AND f_score = 3 THEN 'need_attention'
         WHEN r_score = 3 THEN 'about_to_sleep'
         WHEN f_score = 5 THEN 'cannot_lose_them'
         WHEN f_score >= 3 THEN 'at_risk'
         ELSE 'hibernating'
       END AS segment
FROM r
"""
    )


def create_repeat_inputs(con) -> None:
    """Tables `nth` (k-th purchase per customer) and `rep` (per-customer repeat inputs)."""
    con.execute(
        """
CREATE TABLE nth AS
SELECT c AS customer_id, d, row_number() OVER (PARTITION BY c ORDER BY d, order_id) AS k
FROM orders WHERE rev > 0;

CREATE TABLE rep AS
SELECT f.customer_id, CAST(date_trunc('month', f.first_purchase_date) AS DATE) AS cohort, f.orders,
       (SELECT as_of FROM as_of) - f.first_purchase_date AS observed_days,
       n2.d - f.first_purchase_date AS days_to_second,
       CASE WHEN f.orders >= 2 THEN (f.last_purchase_date - f.first_purchase_date) / (f.orders - 1) END
         AS days_between
FROM facts f LEFT JOIN nth n2 ON n2.customer_id = f.customer_id AND n2.k = 2;
"""
    )
