#!/usr/bin/env bash
# Installs what the Spark job needs into the virtual environment VENV_DIR (created if missing):
# Java 17 (Debian's openjdk-17-jre-headless, when no Java 17+ is on PATH; needs root), pyspark 4,
# pyarrow, and this checkout's extension module `pipeline_native` (built by maturin). Safe to run
# again: what is there is kept, and the module is rebuilt incrementally.
#
#   spark/setup.sh VENV_DIR
#
# PIPELINE_SPARK_PROFILE=dev builds the module without optimisation (CI: it shares the test
# build's compiled dependencies); the default is release.
set -euo pipefail
venv=$(realpath -m "${1:?usage: spark/setup.sh VENV_DIR}")
here=$(cd "$(dirname "$0")" && pwd)
profile=${PIPELINE_SPARK_PROFILE:-release}

java_ok() { command -v java >/dev/null 2>&1 && java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])'; }
if ! java_ok; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "spark/setup.sh: Spark 4 needs Java 17 or later; install it (e.g. sudo apt-get install openjdk-17-jre-headless) and run again" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"

wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
args=(--out "$wheels" --interpreter "$venv/bin/python")
[ "$profile" = release ] && args+=(--release)
(cd "$here" && "$venv/bin/maturin" build --quiet "${args[@]}")
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheels"/*.whl
"$venv/bin/python" -c "import pipeline_native, pyspark; print('spark/setup.sh: pyspark', pyspark.__version__, 'and pipeline_native ready in $venv')"
