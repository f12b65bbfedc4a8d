"""The serving path imports only torch, safetensors and numpy (no training stack)."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("sklearn", "matplotlib", "pydantic", "probewatch.training", "probewatch.server", "transformers")


def test_probes_package_imports_without_training_dependencies():
    code = (
        "import sys, probewatch.probes, probewatch.probes.runtime, probewatch.probes.aggregate;"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} or m.startswith({FORBIDDEN!r})];"
        "print(','.join(sorted(bad)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"probewatch.probes pulled in: {out.stdout.strip()}"


def test_design_card_folders_install_under_the_namespace():
    import probewatch.probes
    import probewatch.proto
    import probewatch.server
    import probewatch.training

    for module in (probewatch.probes, probewatch.training, probewatch.server, probewatch.proto):
        assert module.__name__.startswith("probewatch.")
    code = "import importlib.util as u; print([n for n in ('server', 'training', 'probes', 'proto') if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"
