#!/usr/bin/env bash
# Scale: `pipeline run` with every stage (bench/all_stages.toml) on generated files of each size,
# one run each: lines/s and peak RSS, to show that memory follows customers, not lines.
#   bash bench/scale.sh [LINES...]     (default 10000000 50000000 200000000)
# The 200M-line file takes ~4 minutes to generate and 3.5 GB of disk (bench/data, git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- 10000000 50000000 200000000
ROWS=()
for lines in "$@"; do
  source bench/lib.sh "$lines"
  REPEATS=1 measure "scale_$lines" "$BIN" run "$(all_config "$FILE" "scale_$lines")" --log warn
  ROWS+=("$(printf '| %s | %s | %.1f | %.1f | %s | %.0f |' "$lines" "$(customers_of "scale_$lines")" \
    "${WALL[scale_$lines]}" "${CPU[scale_$lines]}" "${RSS[scale_$lines]}" "$(echo "$lines / ${WALL[scale_$lines]}" | bc -l)")")
done
printf '\n| lines | customers | wall s | CPU s | peak RSS MB | lines/s |\n|---|---|---|---|---|---|\n'
printf '%s\n' "${ROWS[@]}"
