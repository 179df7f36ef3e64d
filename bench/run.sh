#!/usr/bin/env bash
# The performance harness: the whole nightly pipeline against the alternatives a data engineer
# has, on the same generated file, in the same run.
#   bash bench/run.sh [LINES]      (default 10000000; REPEATS=3 runs each, the median by wall time)
# Generates bench/data/lines_LINES.parquet once (git-ignored; the project's generator), installs
# polars and duckdb into .venv, then measures with /usr/bin/time -v:
#   floor_polars / floor_duckdb  one scan of the needed columns, status filter, GROUP BY customer
#                                with count/sum/min/max, written to Parquet (bench/floor.py)
#   floor_*_mapped               the same reading every column the pipeline's config maps
#                                (order_id and channel as well; min/max of them)
#   duckdb_metrics               the table metrics in hand-written DuckDB SQL: customer facts,
#                                monthly cohort retention, RFM + segment summary, repeat, historic
#                                CLV (bench/duckdb_metrics.py, the SQL the reference tests use)
#   all                          `pipeline run` with every stage: customer_facts, monthly cohorts,
#                                weekly cohorts by channel, rfm, repeat, lifecycle, clv_simple,
#                                clv (BG/NBD + Gamma-Gamma), two segment summaries
#                                (bench/all_stages.toml)
#   seq                          all, independent stages one after another (--sequential)
#   threads1                     all on one thread (--threads 1)
#   x3                           all over the same file read three times through a glob: 3× the
#                                lines, the same orders and customers (set X3=0 to skip)
# Prints wall s, CPU s (user + sys), peak RSS MB, minor page faults and lines/s per run, and the
# ratios the performance issue sets targets for.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh "${1:-10000000}"
PY=$(floor_python)

ALL=$(all_config "$FILE" "all_$LINES")

# The floors and the pipeline in turn (the floor ratio is the target that needs them close).
cmd_floor_polars() { measure_once "$DATA/time_floor_polars.log" "$PY" bench/floor.py polars "$FILE" "$DATA/floor_polars.parquet"; }
cmd_floor_duckdb() { measure_once "$DATA/time_floor_duckdb.log" "$PY" bench/floor.py duckdb "$FILE" "$DATA/floor_duckdb.parquet"; }
cmd_floor_polars_mapped() { measure_once "$DATA/time_floor_polars_mapped.log" "$PY" bench/floor.py polars_mapped "$FILE" "$DATA/floor_polars.parquet"; }
cmd_floor_duckdb_mapped() { measure_once "$DATA/time_floor_duckdb_mapped.log" "$PY" bench/floor.py duckdb_mapped "$FILE" "$DATA/floor_duckdb.parquet"; }
cmd_all() { measure_once "$DATA/time_all.log" "$BIN" run "$ALL" --log warn; }
cmd_seq() { measure_once "$DATA/time_seq.log" "$BIN" run "$ALL" --log warn --sequential; }
cmd_threads1() { measure_once "$DATA/time_threads1.log" "$BIN" run "$ALL" --log warn --threads 1; }
# The pipeline's variants in the same rounds: blocks minutes apart once showed --sequential
# faster at 50M (0.95x) where alternating pairs show it 1.04x slower.
measure_interleaved floor_polars floor_duckdb floor_polars_mapped floor_duckdb_mapped all seq threads1
measure duckdb_metrics "$PY" bench/duckdb_metrics.py "$FILE" "$DATA/out_duckdb"
if [ "${X3:-1}" != 0 ]; then
  mkdir -p "$DATA/x3_$LINES"
  for i in 1 2 3; do ln -sf "$FILE" "$DATA/x3_$LINES/part$i.parquet"; done
  THREE=$(all_config "$(realpath "$DATA")/x3_$LINES/*.parquet" "x3_$LINES")
  measure x3 "$BIN" run "$THREE" --log warn
fi

CUSTOMERS=$(customers_of "all_$LINES")
printf '\n%s lines, %s customers, %s cores, median of %s\n\n' "$LINES" "$CUSTOMERS" "$(nproc)" "$REPEATS"
printf '| run | lines | wall s | CPU s | peak RSS MB | page faults k | lines/s |\n|---|---|---|---|---|---|---|\n'
for name in generate floor_polars floor_duckdb floor_polars_mapped floor_duckdb_mapped duckdb_metrics all seq threads1 x3; do
  [ -n "${WALL[$name]:-}" ] || continue
  n=$LINES; [ "$name" = x3 ] && n=$((LINES * 3))
  printf '| %s | %s | %.2f | %.2f | %s | %.0f | %.0f |\n' "$name" "$n" "${WALL[$name]}" "${CPU[$name]}" "${RSS[$name]}" \
    "$(echo "${FAULTS[$name]:-0} / 1000" | bc -l)" \
    "$(echo "$n / ${WALL[$name]}" | bc -l)"
done
ratio() { echo "$1 / $2" | bc -l; }
floor=$(printf '%s\n' "${WALL[floor_polars]}" "${WALL[floor_duckdb]}" | sort -n | head -1)
mapped=$(printf '%s\n' "${WALL[floor_polars_mapped]}" "${WALL[floor_duckdb_mapped]}" | sort -n | head -1)
printf '\nratios (targets from the performance issue):\n'
printf '* all / fastest floor, wall: %.2f (target ≤ 2)\n' "$(ratio "${WALL[all]}" "$floor")"
printf '* all / fastest floor reading the mapped columns, wall: %.2f\n' "$(ratio "${WALL[all]}" "$mapped")"
printf '* all / floor_duckdb, page faults: %.2f (fresh pages, whose cost varies most with the hour)\n' \
  "$(ratio "${FAULTS[all]}" "${FAULTS[floor_duckdb]}")"
printf '* duckdb_metrics / all, wall: %.2f (target ≥ 2.5)\n' "$(ratio "${WALL[duckdb_metrics]}" "${WALL[all]}")"
printf '* all / duckdb_metrics, peak RSS: %.2f (target < 1)\n' "$(ratio "${RSS[all]}" "${RSS[duckdb_metrics]}")"
printf '* seq / all, wall: %.2f (independent stages in parallel vs one after another)\n' "$(ratio "${WALL[seq]}" "${WALL[all]}")"
printf '* threads1 / all, wall: %.2f (one thread vs %s)\n' "$(ratio "${WALL[threads1]}" "${WALL[all]}")" "$(nproc)"
if [ -n "${WALL[x3]:-}" ]; then
  printf '* x3 / all, peak RSS: %.2f (3× the lines, the same customers)\n' "$(ratio "${RSS[x3]}" "${RSS[all]}")"
fi
