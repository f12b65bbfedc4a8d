#!/usr/bin/env bash
# mypy over the installed layout: probes/, server/, training/, proto/ and benchmarks/ install as
# probewatch.probes, probewatch.server, ... (setup.py's package_dir), which mypy cannot map by
# itself. A throw-away tree of symlinks under build/typecheck/ gives it that layout; the
# settings live in pyproject.toml ([tool.mypy]). It checks the whole probewatch package.
# PYTHON: an absolute path, a path relative to the repository root, or a command name.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
case "$PY" in
  /*) ;;
  */*) PY="$PWD/$PY" ;;
  *) PY="$(command -v "$PY")" ;;
esac
root="$PWD"
tree=build/typecheck
rm -rf "$tree"
mkdir -p "$tree/probewatch"
for entry in probewatch/*; do
  case "$(basename "$entry")" in __pycache__) continue ;; esac
  ln -s "$PWD/$entry" "$tree/probewatch/$(basename "$entry")"
done
for pkg in probes server training proto benchmarks; do
  ln -s "$PWD/$pkg" "$tree/probewatch/$pkg"
done
cd "$tree"
exec "$PY" -m mypy --config-file "$root/pyproject.toml" "$@" -p probewatch
