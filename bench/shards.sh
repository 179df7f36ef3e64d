#!/usr/bin/env bash
# Bounded memory: `pipeline run` with every stage (bench/all_stages.toml) in one piece and with
# `--shards 4` and `--shards 8`, in alternating rounds, on generated files of each size: wall,
# CPU, peak RSS, spill bytes (input and per-customer rows, from the manifest) and RSS against
# the run in one piece.
#   bash bench/shards.sh [LINES...]                  (default 10000000 50000000; REPEATS=1)
#   MEMORY_LIMIT=12GiB bash bench/shards.sh 1000000000
#                     one run with --memory-limit instead (it picks the shards); the 1,000M-line
#                     file takes 17.5 GB of disk and the run needs about 30 GB more while it
#                     spills (bench/data, git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- 10000000 50000000
export REPEATS="${REPEATS:-1}"
SHARDS="${SHARDS:-1 4 8}"

spill_of() { # output folder name → "shards sweeps spill_MB"
  python3 -c "
import json; m = json.load(open('$DATA/out_$1/latest/_manifest.json'))
s = m.get('shards') or {'shards': 1, 'sweeps': 0, 'spill_bytes': 0}
print(s['shards'], s['sweeps'], round(s['spill_bytes'] / 1e6))"
}

ROWS=()
for lines in "$@"; do
  source bench/lib.sh "$lines"
  config=$(all_config "$FILE" "shards_$lines")
  if [ -n "${MEMORY_LIMIT:-}" ]; then
    cmd_limit() { measure_once "$DATA/time_shards_limit_$lines.log" "$BIN" run "$config" --memory-limit "$MEMORY_LIMIT" --log info; }
    measure_interleaved limit
    read -r shards sweeps spill <<< "$(spill_of "shards_$lines")"
    rate=$(printf '%.0f' "$(echo "$lines / ${WALL[limit]}" | bc -l)")
    ROWS+=("$(printf '| %s | --memory-limit %s → %s shards | %.1f | %.1f | %s | %s | %s | — |' "$lines" "$MEMORY_LIMIT" "$shards" "${WALL[limit]}" "${CPU[limit]}" "${RSS[limit]}" "$spill" "$rate")")
    continue
  fi
  names=()
  for n in $SHARDS; do
    # Each shard count writes its own output folder (its manifest gives the spill bytes).
    eval "cmd_s$n() { measure_once \"\$DATA/time_shards_${n}_$lines.log\" \"\$BIN\" run \"$(all_config "$FILE" "shards${n}_$lines")\" --shards $n --log warn; }"
    names+=("s$n")
  done
  measure_interleaved "${names[@]}"
  base="${RSS[s1]:-}"
  for n in $SHARDS; do
    read -r _ _ spill <<< "$(spill_of "shards${n}_$lines")"
    rate=$(printf '%.0f' "$(echo "$lines / ${WALL[s$n]}" | bc -l)")
    ratio=$([ -n "$base" ] && printf '%.2f' "$(echo "${RSS[s$n]} / $base" | bc -l)" || echo "—")
    ROWS+=("$(printf '| %s | %s | %.1f | %.1f | %s | %s | %s | %s |' "$lines" "$n" "${WALL[s$n]}" "${CPU[s$n]}" "${RSS[s$n]}" "$spill" "$rate" "$ratio")")
  done
done
printf '\n%s cores, median of %s rounds\n\n' "$(nproc)" "$REPEATS"
printf '| lines | shards | wall s | CPU s | peak RSS MB | spilled MB | lines/s | RSS / one piece |\n|---|---|---|---|---|---|---|---|\n'
printf '%s\n' "${ROWS[@]}"
