#!/usr/bin/env bash
# Mapping `cost` and running the acquisition stage over a spend source, against the same
# every-stage config without them, on one generated file with a cost column, in alternating
# rounds:
#   bash bench/cost.sh [LINES]     (default 10000000; REPEATS=3 rounds, the median by wall time)
#   floor_*_mapped   one scan of every column the config without `cost` maps (bench/floor.py)
#   floor_*_cost     the same with the `cost` column read as well
#   all              `pipeline run` with every stage (bench/all_stages.toml), `cost` not mapped
#   all_cost         the same with `cost = "cost"` mapped (customer_facts and segment summaries
#                    gain cost columns) plus the spend source and an acquisition stage
# Prints wall s, CPU s, peak RSS MB per run, and each run's ratio to its own floor (target ≤ 2).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh "${1:-10000000}"
PY=$(floor_python)

# The lines with a cost column and their marketing spend (bench/data, git-ignored).
COST_FILE="$(realpath -m "$DATA/lines_cost_$LINES.parquet")"
SPEND="$(realpath -m "$DATA/spend_$LINES.parquet")"
if [ ! -f "$COST_FILE" ] || [ ! -f "$SPEND" ]; then
  "$BIN" generate-sample --lines "$LINES" --out "$COST_FILE" --spend "$SPEND" >&2
fi
ALL=$(all_config "$COST_FILE" "nocost_$LINES")
COST="$DATA/bench_cost_$LINES.toml"
{
  sed -e "s#out_nocost_$LINES#out_cost_$LINES#" -e 's#^channel = "channel"$#channel = "channel"\ncost = "cost"#' "$ALL"
  cat <<TOML
[sources.spend]
kind = "spend"
path = "$SPEND"
[stages.acquisition]
kind = "acquisition"
input = ["orders", "spend"]
ltv = "clv"
TOML
} > "$COST"
grep -q '^cost = "cost"' "$COST"

cmd_floor_polars_mapped() { measure_once "$DATA/time_floor_polars_mapped.log" "$PY" bench/floor.py polars_mapped "$COST_FILE" "$DATA/floor_polars.parquet"; }
cmd_floor_duckdb_mapped() { measure_once "$DATA/time_floor_duckdb_mapped.log" "$PY" bench/floor.py duckdb_mapped "$COST_FILE" "$DATA/floor_duckdb.parquet"; }
cmd_floor_polars_cost() { measure_once "$DATA/time_floor_polars_cost.log" "$PY" bench/floor.py polars_cost "$COST_FILE" "$DATA/floor_polars.parquet"; }
cmd_floor_duckdb_cost() { measure_once "$DATA/time_floor_duckdb_cost.log" "$PY" bench/floor.py duckdb_cost "$COST_FILE" "$DATA/floor_duckdb.parquet"; }
cmd_all() { measure_once "$DATA/time_all.log" "$BIN" run "$ALL" --log warn; }
cmd_all_cost() { measure_once "$DATA/time_all_cost.log" "$BIN" run "$COST" --log warn; }
measure_interleaved floor_polars_mapped floor_duckdb_mapped floor_polars_cost floor_duckdb_cost all all_cost

printf '\n%s lines, %s cores, median of %s rounds\n\n' "$LINES" "$(nproc)" "$REPEATS"
printf '| run | wall s | CPU s | peak RSS MB |\n|---|---|---|---|\n'
for name in floor_polars_mapped floor_duckdb_mapped floor_polars_cost floor_duckdb_cost all all_cost; do
  printf '| %s | %.2f | %.2f | %s |\n' "$name" "${WALL[$name]}" "${CPU[$name]}" "${RSS[$name]}"
done
ratio() { echo "$1 / $2" | bc -l; }
mapped=$(printf '%s\n' "${WALL[floor_polars_mapped]}" "${WALL[floor_duckdb_mapped]}" | sort -n | head -1)
cost=$(printf '%s\n' "${WALL[floor_polars_cost]}" "${WALL[floor_duckdb_cost]}" | sort -n | head -1)
printf '\nratios:\n'
printf '* all_cost / all, wall: %.2f; peak RSS: %.2f\n' "$(ratio "${WALL[all_cost]}" "${WALL[all]}")" "$(ratio "${RSS[all_cost]}" "${RSS[all]}")"
printf '* all / fastest floor of its mapped columns, wall: %.2f (target ≤ 2)\n' "$(ratio "${WALL[all]}" "$mapped")"
printf '* all_cost / fastest floor of its mapped columns (cost included), wall: %.2f (target ≤ 2)\n' "$(ratio "${WALL[all_cost]}" "$cost")"
