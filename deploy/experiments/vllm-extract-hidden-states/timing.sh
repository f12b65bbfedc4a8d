#!/usr/bin/env bash
# Alternating timing processes: ehs, then plain (one engine at a time), each 7 timed runs after a warm-up generate.
#
#   [PYTHON=...] deploy/experiments/vllm-extract-hidden-states/timing.sh [OUT_DIR] [TAG]
#
# PYTHON defaults to .venv-vllm/bin/python in the repo root; OUT_DIR (default runs/vllm-ehs/timing, relative to the
# current directory) receives log_<cfg>_<TAG>.txt (uptime first, then the run.py log and its rc) and
# out_<cfg>_<TAG>.json/.pt. TAG defaults to t1.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
python=${PYTHON:-$root/.venv-vllm/bin/python}
out=${1:-runs/vllm-ehs/timing}
tag=${2:-t1}
mkdir -p "$out"
for cfg in ehs plain; do
  log="$out/log_${cfg}_${tag}.txt"
  uptime > "$log"
  timeout 900 "$python" "$here/run.py" "$cfg" "$out/out_${cfg}_${tag}" --runs 7 >> "$log" 2>&1
  echo "rc=$?" >> "$log"
done
