# Shared by the benchmark scripts: `source bench/lib.sh LINES` from the repository root.
# Builds the release binary ($BIN), generates $FILE (LINES order lines, git-ignored) once, and
# defines `measure NAME COMMAND...`, which fills WALL/CPU/RSS/FAULTS[NAME] with the median of
# REPEATS (default 3) runs by wall time, as /usr/bin/time -v reports them (this machine is noisy;
# page faults, the fresh pages a run touches, repeat within a few % where its times do not), and
# `measure_interleaved NAME...` for runs whose ratio counts.
LINES="${1:-10000000}"
DATA="bench/data"
REPEATS="${REPEATS:-3}"
mkdir -p "$DATA"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pipeline-target}"
# PIPELINE_BIN=path measures that binary instead of building this tree's release binary (to
# compare two builds in alternating pairs, or to keep editing while a benchmark runs).
if [ -n "${PIPELINE_BIN:-}" ]; then
  BIN="$(realpath "$PIPELINE_BIN")"
else
  cargo build --release --quiet
  BIN="$CARGO_TARGET_DIR/release/pipeline"
fi
FILE="$(realpath -m "$DATA/lines_$LINES.parquet")"
declare -A WALL CPU RSS FAULTS

time_stats() { # log of /usr/bin/time -v → "wall cpu rss_mb faults"
  local log="$1" wall cpu rss faults
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {print u + s}' "$log")
  rss=$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$log")
  faults=$(awk -F': ' '/Minor \(reclaiming a frame\) page faults/ {print $2}' "$log")
  echo "$wall $cpu $rss $faults"
}

measure_once() { # log, command... → "wall cpu rss_mb faults"
  local log="$1"; shift
  /usr/bin/time -v "$@" >/dev/null 2>"$log" || { cat "$log" >&2; exit 1; }
  time_stats "$log"
}

median_of() { # lines "wall cpu rss faults" → the line of the median wall time
  sort -n | awk -v n="$1" 'NR == int((n + 1) / 2)'
}

measure() { # name, command...
  local name="$1"; shift
  local runs=()
  for _ in $(seq "$REPEATS"); do runs+=("$(measure_once "$DATA/time_$name.log" "$@")"); done
  read -r WALL[$name] CPU[$name] RSS[$name] FAULTS[$name] <<< "$(printf '%s\n' "${runs[@]}" | median_of "${#runs[@]}")"
}

# `measure` for several runs taken in turn, REPEATS rounds of one run each: a ratio between
# them is then measured run beside run, not between blocks of runs minutes apart (this
# machine's speed drifts by tens of percent within minutes). Each NAME's command is the
# function `cmd_NAME`.
measure_interleaved() { # names...
  local -A runs=()
  local name
  for _ in $(seq "$REPEATS"); do
    for name in "$@"; do runs[$name]+="$("cmd_$name")"$'\n'; done
  done
  for name in "$@"; do
    read -r WALL[$name] CPU[$name] RSS[$name] FAULTS[$name] <<< "$(printf '%s' "${runs[$name]}" | median_of "$REPEATS")"
  done
}

if [ ! -f "$FILE" ]; then
  REPEATS=1 measure generate "$BIN" generate-sample --lines "$LINES" --out "$FILE"
fi

# The Python with polars and DuckDB that runs the floors (installed into .venv once).
floor_python() {
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -c "import polars, duckdb" 2>/dev/null || .venv/bin/pip install --quiet polars duckdb >&2
  echo .venv/bin/python
}

# The source section every benchmark config uses.
source_toml() {
  cat <<TOML
[sources.orders]
path = "$1"
include = { status = ["completed", "shipped"] }
[sources.orders.columns]
ordered_at = "created_at"
amount = "line_amount"
status = "status"
channel = "channel"
TOML
}

# The every-stage config (bench/all_stages.toml) for a source path or glob → its path.
all_config() { # path pattern, name
  { sed -e "s#__OUT__#out_$2#" bench/all_stages.toml; source_toml "$1"; } > "$DATA/bench_$2.toml"
  echo "$DATA/bench_$2.toml"
}

# Rows of the customer_facts table a run wrote (= customers), from its manifest.
customers_of() { # output folder name
  python3 -c "
import json; m = json.load(open('$DATA/out_$1/latest/_manifest.json'))
print(next(t['rows'] for s in m['stages'] for t in s['tables'] if t['table'] == 'customer_facts'))"
}
