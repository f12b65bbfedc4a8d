"""Grafana dashboard and alert rules: structure, sync with their sources, metric-name contract,
and the promtool rule unit tests.

Whether every query returns data from a real Prometheus scraping a real sidecar is
test_prometheus_e2e.py; this file holds what needs no running service (plus promtool, which the
e2e test's setup installs as well).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.components import missing
from tests.deploy.conftest import DASHBOARD, REPO, RULE_TESTS, RULES_FILE

METRIC_RE = re.compile(r"\b(probewatch_[a-z0-9_]+)")
REQUIRED_VARIABLES = {"datasource", "job", "namespace", "instance", "probe"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dash: dict) -> list[dict]:
    out = []
    for panel in dash["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_exprs(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in all_panels(dash) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"] if a.get("expr")]
    return exprs


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


def exported_metric_names() -> set[str]:
    """Every sample name the sidecar, the attach client and the review app export (their real collectors)."""
    import tempfile
    from pathlib import Path

    from probewatch.server.client.metrics import ClientMetrics
    from probewatch.server.review.metrics import review_registry
    from probewatch.server.sidecar.drift import DriftMonitor
    from probewatch.server.sidecar.metrics import SidecarMetrics
    from probewatch.server.store import IncidentStore

    names = set()
    with tempfile.TemporaryDirectory() as tmp:
        store = IncidentStore.open(Path(tmp) / "incidents.sqlite3")
        review, _, _ = review_registry(store)
        families = [f for m in (SidecarMetrics(), ClientMetrics()) for f in m.registry.collect()]
        families += list(review.collect())
        families += list(DriftMonitor({}).collect())  # the sidecar's AlertDesk registers one per engine
        store.close()
    for family in families:
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "info":
            names.add(family.name + "_info")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return {n for n in names if n.startswith("probewatch_")}


def contract_metric_names() -> set[str]:
    """The metric names of docs/architecture.md's "Prometheus metrics" table."""
    text = (REPO / "docs" / "architecture.md").read_text()
    table = text.split("### Prometheus metrics", 1)[1]
    return set(re.findall(r"`(probewatch_[a-z0-9_]+)`", table))


# -- dashboard ------------------------------------------------------------------------------------


def test_dashboard_json_is_generated_by_its_builder(dashboard_builder):
    assert DASHBOARD.read_text() == dashboard_builder.render(), (
        "deploy/grafana/probewatch-dashboard.json is stale: python deploy/grafana/build_dashboard.py"
    )


def test_dashboard_structure(dashboard):
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dashboard["uid"] == "probewatch-sidecar" and dashboard["schemaVersion"] >= 36
    # Grid: inside 24 columns and no two panels overlap.
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("description"), f"panel {p['title']!r} has no description"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip()


def test_dashboard_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) >= REQUIRED_VARIABLES
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "instance", "probe"):
        assert variables[name]["multi"] and variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    used = set()
    for text in (
        dashboard_exprs(dashboard)
        + [p["title"] for p in all_panels(dashboard)]
        + [v.get("definition", "") for v in variables.values()]
    ):
        used.update(re.findall(r"\$(?!__)(\w+)", text))
    assert used <= set(variables), f"undefined variables: {used - set(variables)}"


def test_dashboard_has_the_required_views(dashboard):
    panels = all_panels(dashboard)
    by_type: dict[str, list[dict]] = {}
    for p in panels:
        by_type.setdefault(p["type"], []).append(p)
    exprs = "\n".join(dashboard_exprs(dashboard))
    # Score distributions per probe over time: heatmaps of both histograms, repeated per probe.
    heat = {t["expr"] for p in by_type["heatmap"] for t in p["targets"]}
    assert any("probewatch_token_score_bucket" in e for e in heat)
    assert any("probewatch_generation_score_bucket" in e for e in heat)
    assert all(t.get("format") == "heatmap" for p in by_type["heatmap"] for t in p["targets"])
    assert any(p.get("repeat") == "probe" for p in by_type["row"])
    # Alert rate per probe, recent flagged generations, tokens/s, latency p50/p99, dropped chunks,
    # monitoring live, bundle versions and fingerprint.
    assert "sum by (probe) (rate(probewatch_alerts_total" in exprs
    assert "probewatch_last_alert_timestamp_seconds" in exprs
    assert "rate(probewatch_tokens_scored_total" in exprs
    assert "histogram_quantile(0.5, sum by (le) (rate(probewatch_scoring_latency_seconds_bucket" in exprs
    assert "histogram_quantile(0.99, sum by (le) (rate(probewatch_scoring_latency_seconds_bucket" in exprs
    assert "probewatch_dropped_chunks_total" in exprs and "probewatch_client_dropped_chunks_total" in exprs
    live = next(p for p in by_type["stat"] if p["title"] == "Monitoring")
    texts = {
        v["text"]
        for m in live["fieldConfig"]["defaults"]["mappings"]
        for v in (m["options"].values() if m["type"] == "value" else [m["options"]["result"]])
    }
    assert {"LIVE", "DOWN", "UP · NO SCORES"} <= texts
    bundles = next(p for p in by_type["table"] if p["title"] == "Loaded probe bundles")
    assert "version, fingerprint" in bundles["targets"][0]["expr"]


# -- metric names: dashboard and rules use only what the sidecar exports ---------------------------


def test_every_metric_used_is_exported_and_in_the_contract(dashboard):
    used = set()
    for expr in dashboard_exprs(dashboard) + rule_exprs():
        used.update(METRIC_RE.findall(expr))
    exported = exported_metric_names()
    missing = used - exported
    assert not missing, f"used by the dashboard/rules but not exported by probewatch.server.sidecar.metrics: {missing}"
    contract = contract_metric_names()
    undocumented = {m for m in used if not any(m == c or m.startswith(c + "_") for c in contract)}
    assert not undocumented, f"not in docs/architecture.md's metric table: {undocumented}"


# -- rules ------------------------------------------------------------------------------------------


def test_rule_set_covers_the_required_alerts():
    rules = {r["alert"]: r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]}
    assert {
        "ProbewatchDeceptionAlertRateHigh",
        "ProbewatchNoScores",
        "ProbewatchClientMonitoringOff",
        "ProbewatchDroppingChunks",
        "ProbewatchSidecarDown",
        "ProbewatchScoringLatencyHigh",
        "ProbewatchQueueNearFull",
        "ProbewatchWebhookFailing",
    } <= set(rules)
    assert "[5m]" in rules["ProbewatchDeceptionAlertRateHigh"]["expr"]
    assert "[2m]" in rules["ProbewatchNoScores"]["expr"]
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    # Every alert has a promtool unit test case.
    tested = set()
    for f in RULE_TESTS:
        for case in yaml.safe_load(f.read_text())["tests"]:
            tested.update(t["alertname"] for t in case["alert_rule_test"] if t["exp_alerts"])
    assert set(rules) <= tested, f"alerts never tested firing: {set(rules) - tested}"


def promtool_or_skip() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        missing(
            "promtool not installed (Debian package `prometheus`; `make test` runs "
            "deploy/scripts/ensure-prometheus.sh, which installs it when run as root)"
        )
    return exe


def test_promtool_check_rules():
    proc = subprocess.run(
        [promtool_or_skip(), "check", "rules", str(RULES_FILE)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in proc.stdout


def test_promtool_rule_unit_tests():
    assert RULE_TESTS
    proc = subprocess.run(
        [promtool_or_skip(), "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout and "FAILED" not in proc.stdout
