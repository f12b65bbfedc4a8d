#!/usr/bin/env bash
# mypy over the installed layout: probes/, server/, training/ and proto/ install as
# probewatch.probes, probewatch.server, ... (setup.py's package_dir), which mypy cannot map by
# itself. A throw-away tree of symlinks under build/typecheck/ gives it that layout; the
# settings live in pyproject.toml ([tool.mypy]).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
tree=build/typecheck
rm -rf "$tree"
mkdir -p "$tree/probewatch"
for entry in probewatch/*; do
  case "$(basename "$entry")" in __pycache__) continue ;; esac
  ln -s "$PWD/$entry" "$tree/probewatch/$(basename "$entry")"
done
for pkg in probes server training proto; do
  ln -s "$PWD/$pkg" "$tree/probewatch/$pkg"
done
cd "$tree"
exec "$OLDPWD/$PY" -m mypy --config-file "$OLDPWD/pyproject.toml" "$@" \
  -p probewatch.probes -p probewatch.server -p probewatch.capture -p probewatch.scoring -p probewatch.envs
