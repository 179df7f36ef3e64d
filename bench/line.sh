#!/usr/bin/env bash
# Mapping `line` (de-duplication of repeated (order_id, line) pairs) against not mapping it, on
# the same generated file, in alternating rounds:
#   bash bench/line.sh [LINES]     (default 10000000; REPEATS=3 rounds, the median by wall time)
#   floor_*_mapped   one scan of every column the config without `line` maps, GROUP BY customer
#   floor_*_line     the same with the `line` column read as well (bench/floor.py)
#   all              `pipeline run` with every stage (bench/all_stages.toml), `line` not mapped
#   all_line         the same config with `line = "line"` mapped
# Prints wall s, CPU s, peak RSS MB per run and the ratios the inputs issue sets: all_line within
# 1.25x of all in wall time and peak RSS, and each run at most 2x its own floor.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh "${1:-10000000}"
PY=$(floor_python)

ALL=$(all_config "$FILE" "all_$LINES")
LINE="$DATA/bench_line_$LINES.toml"
sed -e "s#out_all_$LINES#out_line_$LINES#" -e 's#^channel = "channel"$#channel = "channel"\nline = "line"#' "$ALL" > "$LINE"
grep -q '^line = "line"' "$LINE"

cmd_floor_polars_mapped() { measure_once "$DATA/time_floor_polars_mapped.log" "$PY" bench/floor.py polars_mapped "$FILE" "$DATA/floor_polars.parquet"; }
cmd_floor_duckdb_mapped() { measure_once "$DATA/time_floor_duckdb_mapped.log" "$PY" bench/floor.py duckdb_mapped "$FILE" "$DATA/floor_duckdb.parquet"; }
cmd_floor_polars_line() { measure_once "$DATA/time_floor_polars_line.log" "$PY" bench/floor.py polars_line "$FILE" "$DATA/floor_polars.parquet"; }
cmd_floor_duckdb_line() { measure_once "$DATA/time_floor_duckdb_line.log" "$PY" bench/floor.py duckdb_line "$FILE" "$DATA/floor_duckdb.parquet"; }
cmd_all() { measure_once "$DATA/time_all.log" "$BIN" run "$ALL" --log warn; }
cmd_all_line() { measure_once "$DATA/time_all_line.log" "$BIN" run "$LINE" --log warn; }
measure_interleaved floor_polars_mapped floor_duckdb_mapped floor_polars_line floor_duckdb_line all all_line

printf '\n%s lines, %s cores, median of %s rounds\n\n' "$LINES" "$(nproc)" "$REPEATS"
printf '| run | wall s | CPU s | peak RSS MB |\n|---|---|---|---|\n'
for name in floor_polars_mapped floor_duckdb_mapped floor_polars_line floor_duckdb_line all all_line; do
  printf '| %s | %.2f | %.2f | %s |\n' "$name" "${WALL[$name]}" "${CPU[$name]}" "${RSS[$name]}"
done
ratio() { echo "$1 / $2" | bc -l; }
mapped=$(printf '%s\n' "${WALL[floor_polars_mapped]}" "${WALL[floor_duckdb_mapped]}" | sort -n | head -1)
line=$(printf '%s\n' "${WALL[floor_polars_line]}" "${WALL[floor_duckdb_line]}" | sort -n | head -1)
printf '\nratios:\n'
printf '* all_line / all, wall: %.2f (target ≤ 1.25)\n' "$(ratio "${WALL[all_line]}" "${WALL[all]}")"
printf '* all_line / all, peak RSS: %.2f (target ≤ 1.25)\n' "$(ratio "${RSS[all_line]}" "${RSS[all]}")"
printf '* all / fastest floor of its mapped columns, wall: %.2f (target ≤ 2)\n' "$(ratio "${WALL[all]}" "$mapped")"
printf '* all_line / fastest floor of its mapped columns (line included), wall: %.2f (target ≤ 2)\n' "$(ratio "${WALL[all_line]}" "$line")"
# Both configs must publish the same tables (the generator writes no repeated lines): the same
# data, byte for byte, before the footers (which name each run).
same_data() {
  python3 - "$1" "$2" <<'PY'
import struct, sys
def data(path):
    raw = open(path, "rb").read()
    return raw[: len(raw) - 8 - struct.unpack("<I", raw[-8:-4])[0]]
sys.exit(0 if data(sys.argv[1]) == data(sys.argv[2]) else 1)
PY
}
for table in customer_facts rfm_customers clv_customers cohorts; do
  same_data "$DATA/out_all_$LINES/latest/$table.parquet" "$DATA/out_line_$LINES/latest/$table.parquet" \
    || echo "warning: $table differs between the runs with and without line" >&2
done
