#!/usr/bin/env bash
# CLV benchmark: the `clv` stage (BG/NBD + Gamma-Gamma fit and scoring) against Python's
# `lifetimes` doing the same fit and predictions on the same customer summary.
#   bash bench/clv.sh [LINES]     (default 10000000 lines ≈ 950k customers)
# Needs .venv with lifetimes (`.venv/bin/pip install lifetimes`); generates data like run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh "${1:-10000000}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c "import lifetimes" 2>/dev/null || .venv/bin/pip install --quiet lifetimes pyarrow

cat > "$DATA/bench_clv.toml" <<TOML
[pipeline]
timezone = "Europe/Berlin"
output_dir = "out_clv"
$(source_toml "$FILE")
[stages.customer_facts]
kind = "customer_facts"
[stages.clv]
kind = "clv"
margin = 0.3
TOML
# --sequential: the customer_facts stage does not compete with the fit for the two cores.
# REPEATS runs (default 3); the median of each figure (this machine is noisy).
OURS_RUNS=(); STAGE_RUNS=()
for _ in $(seq "$REPEATS"); do
  /usr/bin/time -v "$BIN" run "$DATA/bench_clv.toml" --sequential --log info 2> "$DATA/time_clv.log" >/dev/null
  # "clv: fit and scored N customers in S s": fit + scoring, without building and writing tables.
  OURS_RUNS+=("$(sed -n 's/.*clv: fit and scored [0-9]* customers in \([0-9.]*\) s.*/\1/p' "$DATA/time_clv.log")")
  STAGE_RUNS+=("$(.venv/bin/python -c "
import json; m = json.load(open('$DATA/out_clv/latest/_manifest.json'))
print(next(s['duration_seconds'] for s in m['stages'] if s['stage'] == 'clv'))")")
done
median() { printf '%s\n' "$@" | sort -n | awk -v n=$# 'NR == int((n + 1) / 2)'; }
OURS=$(median "${OURS_RUNS[@]}")
STAGE=$(median "${STAGE_RUNS[@]}")
RSS=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$DATA/time_clv.log")
/usr/bin/time -v .venv/bin/python bench/lifetimes_clv.py "$DATA/out_clv/latest/customer_facts.parquet" "$DATA/out_clv/latest/clv_model.parquet" \
  > "$DATA/lifetimes.json" 2> "$DATA/time_lifetimes.log"
THEIRS=$(.venv/bin/python -c "import json; print(json.load(open('$DATA/lifetimes.json'))['total_seconds'])")
THEIR_RSS=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$DATA/time_lifetimes.log")
cat "$DATA/lifetimes.json"
printf '\n| implementation | customers | fit + score s | peak RSS MB (whole process) |\n|---|---|---|---|\n'
CUSTOMERS=$(.venv/bin/python -c "import json; print(json.load(open('$DATA/lifetimes.json'))['customers'])")
printf '| pipeline clv: fit + score (median of 3) | %s | %.2f | %s (whole run) |\n' "$CUSTOMERS" "$OURS" "$RSS"
printf '| pipeline clv stage incl. building and writing its tables | %s | %.2f | |\n' "$CUSTOMERS" "$STAGE"
printf '| lifetimes 0.11 | %s | %.2f | %s |\n' "$CUSTOMERS" "$THEIRS" "$THEIR_RSS"
printf '\nspeed-up: fit + score %.0f×, whole stage %.0f×\n' "$(echo "$THEIRS / $OURS" | bc -l)" "$(echo "$THEIRS / $STAGE" | bc -l)"
