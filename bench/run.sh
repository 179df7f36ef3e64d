#!/usr/bin/env bash
# Benchmark `pipeline run` on generated order lines.
#   bash bench/run.sh [LINES]      (default 10000000)
# Generates bench/data/lines_LINES.parquet once (git-ignored), then measures with /usr/bin/time -v:
#   base      customer_facts + monthly cohorts + weekly cohorts by channel (the foundation)
#   all       base + rfm, repeat, lifecycle, clv_simple, two segment summaries (every table stage)
#   threads1  all with --threads 1
#   seq       all with independent stages run one after another (--sequential)
#   x3        base over the same file read three times through a glob: 3× the lines, the same
#             orders and customers (duplicate order ids merge) — peak RSS must not grow with lines
# Prints a markdown table: wall s, CPU s (user+sys), peak RSS MB, lines/s — each the median run
# of REPEATS (default 3) by wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh "${1:-10000000}"

mkdir -p "$DATA/x3"
for i in 1 2 3; do ln -sf "$FILE" "$DATA/x3/part$i.parquet"; done

config() { # path pattern, name, extra stages → config file
  cat > "$DATA/bench_$2.toml" <<TOML
[pipeline]
name = "bench"
timezone = "Europe/Berlin"
output_dir = "out_$2"

$(source_toml "$1")

[stages.customer_facts]
kind = "customer_facts"

[stages.cohorts]
kind = "cohort_retention"
granularity = "month"

[stages.cohorts_by_channel]
kind = "cohort_retention"
granularity = "week"
dimensions = ["acquisition_channel"]
${3:-}
TOML
  echo "$DATA/bench_$2.toml"
}
MORE='
[stages.rfm]
kind = "rfm"
[stages.repeat]
kind = "repeat"
within_days = [30, 90, 365]
[stages.lifecycle]
kind = "lifecycle"
[stages.clv_simple]
kind = "clv_simple"
margin = 0.3
[stages.segments]
kind = "segment_summary"
input = ["rfm", "clv_simple"]
by = ["segment"]
[stages.lifecycle_by_channel]
kind = "segment_summary"
input = ["lifecycle", "clv_simple"]
by = ["acquisition_channel", "stage"]
'
BASE=$(config "$FILE" base)
ALL=$(config "$FILE" all "$MORE")
THREE=$(config "$(realpath "$DATA")/x3/*.parquet" three)

measure base "$BIN" run "$BASE" --log warn
measure all "$BIN" run "$ALL" --log warn
measure threads1 "$BIN" run "$ALL" --log warn --threads 1
measure seq "$BIN" run "$ALL" --log warn --sequential
measure x3 "$BIN" run "$THREE" --log warn

printf '\n%s lines (%s)\n\n' "$LINES" "$(nproc) cores"
printf '| run | lines | wall s | CPU s | peak RSS MB | lines/s |\n|---|---|---|---|---|---|\n'
for name in generate base all threads1 seq x3; do
  [ -n "${WALL[$name]:-}" ] || continue
  n=$LINES; [ "$name" = x3 ] && n=$((LINES * 3))
  printf '| %s | %s | %.2f | %.2f | %s | %.0f |\n' "$name" "$n" "${WALL[$name]}" "${CPU[$name]}" "${RSS[$name]}" "$(echo "$n / ${WALL[$name]}" | bc -l)"
done
printf '\nratios: all/base wall %.2f, threads1/all wall %.2f, seq/all wall %.2f, x3/base RSS %.2f\n' \
  "$(echo "${WALL[all]} / ${WALL[base]}" | bc -l)" \
  "$(echo "${WALL[threads1]} / ${WALL[all]}" | bc -l)" \
  "$(echo "${WALL[seq]} / ${WALL[all]}" | bc -l)" \
  "$(echo "${RSS[x3]} / ${RSS[base]}" | bc -l)"
