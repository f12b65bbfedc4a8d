"""Shared helpers of the deployment tests: the chart renderer module and repo paths."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = REPO / "helm" / "probewatch"
RULES_FILE = DEPLOY / "prometheus" / "probewatch-rules.yaml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yaml"))
DASHBOARD = DEPLOY / "grafana" / "probewatch-dashboard.json"


def load_script(rel: str, name: str):
    """Import one of deploy/'s scripts (they are scripts, not an installed package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / rel)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def chartkit():
    # helm-python-sdk, kubernetes-validate and cloudcoil-models-prometheus-operator are dev extras
    # (make test installs them): a missing one is a setup error, not a reason to skip.
    return load_script("deploy/scripts/render_chart.py", "probewatch_render_chart")


@pytest.fixture(scope="session")
def dashboard_builder():
    return load_script("deploy/grafana/build_dashboard.py", "probewatch_build_dashboard")
