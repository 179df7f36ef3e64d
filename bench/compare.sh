#!/usr/bin/env bash
# The pipeline against the alternatives a data engineer has, on the same file in the same run:
#   floor_polars / floor_duckdb  one scan + GROUP BY customer (count, sum, min, max) → Parquet
#   duckdb_metrics               the table metrics in DuckDB SQL (bench/duckdb_metrics.py)
#   pipeline                     `pipeline run` with customer_facts, monthly cohorts, rfm,
#                                repeat, clv_simple (historic CLV) and a segment summary
#   bash bench/compare.sh [LINES]   (default 10000000; installs polars and duckdb into .venv)
# Prints wall s, CPU s and peak RSS (median of REPEATS=3 by wall time) and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh "${1:-10000000}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import polars, duckdb" 2>/dev/null || .venv/bin/pip install --quiet polars duckdb
PY=.venv/bin/python

cat > "$DATA/bench_compare.toml" <<TOML
[pipeline]
timezone = "Europe/Berlin"
output_dir = "out_compare"
$(source_toml "$FILE")
[stages.customer_facts]
kind = "customer_facts"
[stages.cohorts]
kind = "cohort_retention"
granularity = "month"
[stages.rfm]
kind = "rfm"
[stages.repeat]
kind = "repeat"
[stages.clv_simple]
kind = "clv_simple"
[stages.segments]
kind = "segment_summary"
input = ["rfm", "clv_simple"]
by = ["segment"]
TOML

measure floor_polars "$PY" bench/floor.py polars "$FILE" "$DATA/floor_polars.parquet"
measure floor_duckdb "$PY" bench/floor.py duckdb "$FILE" "$DATA/floor_duckdb.parquet"
measure duckdb_metrics "$PY" bench/duckdb_metrics.py "$FILE" "$DATA/out_duckdb"
measure pipeline "$BIN" run "$DATA/bench_compare.toml" --log warn

printf '\n%s lines, %s cores, median of %s\n\n| run | wall s | CPU s | peak RSS MB |\n|---|---|---|---|\n' "$LINES" "$(nproc)" "$REPEATS"
for name in floor_polars floor_duckdb duckdb_metrics pipeline; do
  printf '| %s | %.2f | %.2f | %s |\n' "$name" "${WALL[$name]}" "${CPU[$name]}" "${RSS[$name]}"
done
floor=$(printf '%s\n' "${WALL[floor_polars]}" "${WALL[floor_duckdb]}" | sort -n | head -1)
printf '\nratios: pipeline / fastest floor %.2f (target ≤ 2), duckdb_metrics / pipeline %.2f (target ≥ 2.5), pipeline RSS / duckdb_metrics RSS %.2f (target < 1)\n' \
  "$(echo "${WALL[pipeline]} / $floor" | bc -l)" \
  "$(echo "${WALL[duckdb_metrics]} / ${WALL[pipeline]}" | bc -l)" \
  "$(echo "${RSS[pipeline]} / ${RSS[duckdb_metrics]}" | bc -l)"
