#!/usr/bin/env bash
# The tfmux benchmark in one command: installs the load generators if missing (Debian packages
# wrk and nghttp2-client), then runs benchmarks/run.py with the project's virtualenv.
# Arguments are passed on, e.g. `benchmarks/run.sh --duration 5`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

missing=()
command -v wrk >/dev/null || missing+=(wrk)
{ command -v h2load >/dev/null && command -v nghttp >/dev/null; } || missing+=(nghttp2-client)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing: ${missing[*]} (apt-get install them as root)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [[ $(nproc) -lt 2 ]]; then
  echo "the benchmark needs two cores (server on one, load generator on the other)" >&2
  exit 1
fi
if [[ ! -x "$PYTHON" ]]; then
  make setup
fi
export TFMUX_BENCH_COMMAND="benchmarks/run.sh${*:+ $*}"
exec "$PYTHON" -m benchmarks.run "$@"
