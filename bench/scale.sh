#!/usr/bin/env bash
# Scale: `pipeline run` with every stage (bench/all_stages.toml) on generated files of each size,
# one run each: lines/s and peak RSS. A run that fails (e.g. killed by the kernel for lack of
# memory) is reported as such with the RSS it reached, and the next size still runs.
#   bash bench/scale.sh [LINES...]     (default 10000000 50000000 200000000)
# The 200M-line file takes ~3 minutes to generate and 3.5 GB of disk (bench/data, git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- 10000000 50000000 200000000
ROWS=()
for lines in "$@"; do
  source bench/lib.sh "$lines"
  log="$DATA/time_scale_$lines.log"
  status=ok
  /usr/bin/time -v "$BIN" run "$(all_config "$FILE" "scale_$lines")" --log warn >/dev/null 2>"$log" || status=failed
  read -r wall cpu rss _ <<< "$(time_stats "$log")"
  if [ "$status" = ok ]; then
    customers=$(customers_of "scale_$lines")
    rate=$(printf '%.0f' "$(echo "$lines / $wall" | bc -l)")
  else
    customers="?"; rate="failed: $(grep -m1 -o 'signal [0-9]*\|error: .*' "$log" || echo 'see log')"
  fi
  ROWS+=("$(printf '| %s | %s | %.1f | %.1f | %s | %s |' "$lines" "$customers" "$wall" "$cpu" "$rss" "$rate")")
done
printf '\n| lines | customers | wall s | CPU s | peak RSS MB | lines/s |\n|---|---|---|---|---|---|\n'
printf '%s\n' "${ROWS[@]}"
