#!/usr/bin/env bash
# The Spark job in local mode beside the one-machine run: every stage (bench/all_stages.toml)
# over the same generated file, `pipeline run` against
# `spark-submit --master local[2] spark/pipeline_spark.py`, in alternating rounds. Wall and CPU
# time and peak RSS as /usr/bin/time -v gives them (for Spark, the largest of its processes:
# the JVM, the Python driver and its workers), the peak of all of a run's processes together
# (sampled every 0.2 s), and a check that every table equals the one-machine run's.
#   bash bench/spark.sh [LINES]          (default 10000000; REPEATS=1; SPARK_SHARDS=N to set them)
# Needs the Spark environment at .spark-venv, built optimised: `bash spark/setup.sh .spark-venv`.
set -euo pipefail
cd "$(dirname "$0")/.."
export REPEATS="${REPEATS:-1}"
source bench/lib.sh "${1:-10000000}"
VENV="$(realpath .spark-venv)"
[ -x "$VENV/bin/spark-submit" ] || { echo "no Spark environment: bash spark/setup.sh .spark-venv" >&2; exit 1; }

# /usr/bin/time -v of a command in its own session; the peak of the session's summed RSS goes
# to LOG.tree (the command runs in a subshell of measure_interleaved).
measure_tree() { # name, log, command...
  local name="$1" log="$2" peaks="0 0 0 0" now; shift 2
  setsid /usr/bin/time -v "$@" >"$log.out" 2>"$log" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    # MB of all processes, the Spark driver's Python, its Python workers together, the JVM.
    now=$(ps -o rss=,args= -s "$pid" 2>/dev/null | awk '
      { t += $1 } /pipeline_spark[.]py/ && !/java/ { d += $1 } /pyspark[.](daemon|worker)/ { w += $1 } /java/ { j += $1 }
      END { printf "%.0f %.0f %.0f %.0f", t / 1024, d / 1024, w / 1024, j / 1024 }')
    peaks=$(echo "$peaks $now" | awk '{ for (i = 1; i <= 4; i++) printf "%d ", ($i > $(i + 4) ? $i : $(i + 4)) }')
    sleep 0.2
  done
  wait "$pid" || { cat "$log" "$log.out" >&2; exit 1; }
  echo "$peaks" >> "$log.tree"
  time_stats "$log"
}

one=$(all_config "$FILE" "one_$LINES")
spark=$(all_config "$FILE" "spark_$LINES")
shards=()
[ -n "${SPARK_SHARDS:-}" ] && shards=(--shards "$SPARK_SHARDS")
cmd_one() { measure_tree one "$DATA/time_one_$LINES.log" "$BIN" run "$one" --log warn; }
cmd_spark() {
  PYSPARK_PYTHON="$VENV/bin/python" PYSPARK_DRIVER_PYTHON="$VENV/bin/python" \
    measure_tree spark "$DATA/time_spark_$LINES.log" "$VENV/bin/spark-submit" --master 'local[2]' \
    --driver-memory 4g spark/pipeline_spark.py "$spark" --log info "${shards[@]}"
}
rm -f "$DATA"/time_{one,spark}_"$LINES".log.tree
measure_interleaved one spark
declare -A TREE DRIVER WORKERS JVM
for name in one spark; do
  read -r TREE[$name] DRIVER[$name] WORKERS[$name] JVM[$name] <<< "$(sort -n "$DATA/time_${name}_$LINES.log.tree" | awk '{ v[NR] = $0 } END { print v[int((NR + 1) / 2)] }')"
done

"$VENV/bin/python" - "$DATA/out_one_$LINES/latest" "$DATA/out_spark_$LINES/latest" <<'PY'
import json, math, pathlib, sys
import pyarrow.parquet as pq
one, spark = map(pathlib.Path, sys.argv[1:])
bad = 0
tables = sorted(one.glob("*.parquet"))
for path in tables:
    a, b = pq.read_table(path), pq.read_table(spark / path.name)
    if a.schema.names != b.schema.names or a.num_rows != b.num_rows:
        print("differs:", path.name); bad += 1; continue
    for name in a.schema.names:
        x, y = a.column(name).to_pylist(), b.column(name).to_pylist()
        if str(a.schema.field(name).type) in ("double", "float"):
            same = all(u == v or (u is not None and v is not None and (math.isnan(u) and math.isnan(v) or abs(u - v) <= 1e-12 * max(abs(u), abs(v)))) for u, v in zip(x, y))
        else:
            same = x == y
        if not same:
            print("differs:", path.name, name); bad += 1
m = json.load(open(spark / "_manifest.json"))
print(f"{len(tables)} tables compared, {bad} differ; Spark: {m['shards']['shards']} shards, {m['shards']['sweeps']} sweeps")
PY
echo; grep -h "spark step" "$DATA/time_spark_$LINES.log.out" || true
printf '\nSpark peaks: Python driver %s MB, Python workers together %s MB, JVM %s MB\n' "${DRIVER[spark]}" "${WORKERS[spark]}" "${JVM[spark]}"
printf '\n%s cores, median of %s rounds, %s lines\n\n' "$(nproc)" "$REPEATS" "$LINES"
printf '| run | wall s | CPU s | peak RSS MB (largest process) | peak RSS MB (all processes) |\n|---|---|---|---|---|\n'
printf '| one machine, `pipeline run` | %.1f | %.1f | %s | %s |\n' "${WALL[one]}" "${CPU[one]}" "${RSS[one]}" "${TREE[one]}"
printf '| Spark local[2] | %.1f | %.1f | %s | %s |\n' "${WALL[spark]}" "${CPU[spark]}" "${RSS[spark]}" "${TREE[spark]}"
