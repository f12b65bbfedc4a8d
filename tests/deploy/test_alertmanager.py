"""The Alertmanager example routes every probewatch alert where docs/deploy.md says it goes.

`amtool check-config` validates the file (receivers, matchers, *_file secrets); `amtool config
routes test --verify.receivers` runs the routing tree on each alert's real labels. amtool is in
Debian's prometheus-alertmanager package (deploy/scripts/ensure-prometheus.sh installs it).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.components import missing
from tests.deploy.conftest import DEPLOY, RULES_FILE

CONFIG = DEPLOY / "alertmanager" / "alertmanager-probewatch.yaml"
BEHAVIOUR_RATES = {
    "ProbewatchDeceptionAlertRateHigh",
    "ProbewatchAlignmentFakingAlertRateHigh",
    "ProbewatchRefusalAlertRateHigh",
}
# review alerts that go to the reviewers (the review app's store being down pages on-call: critical)
REVIEW = {"ProbewatchReviewBacklogGrowing", "ProbewatchReviewStale", "ProbewatchReviewedPrecisionLow"}


@pytest.fixture(scope="module")
def amtool() -> str:
    exe = shutil.which("amtool")
    if exe is None:
        missing(
            "amtool not installed (Debian package prometheus-alertmanager; `make test` installs it via "
            "deploy/scripts/ensure-prometheus.sh when run as root)"
        )
    return exe


def test_config_is_valid(amtool):
    proc = subprocess.run([amtool, "check-config", str(CONFIG)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def expected_receiver(alert: str, severity: str) -> str:
    if severity == "critical":
        return "probewatch-oncall"
    if alert in BEHAVIOUR_RATES or alert in REVIEW:
        return "ai-safety-review"
    return "ml-platform"


def test_every_probewatch_alert_reaches_its_receiver(amtool):
    rules = [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= BEHAVIOUR_RATES | REVIEW
    for rule in rules:
        severity = rule["labels"]["severity"]
        receiver = expected_receiver(rule["alert"], severity)
        labels = [f"alertname={rule['alert']}", f"severity={severity}", "namespace=llm", "probe=deception-lr"]
        proc = subprocess.run(
            [amtool, "config", "routes", "test", f"--config.file={CONFIG}", f"--verify.receivers={receiver}", *labels],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"{rule['alert']} ({severity}) -> {proc.stdout.strip()}, expected {receiver}"
    # Someone else's alert keeps the default route.
    proc = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={CONFIG}",
            "--verify.receivers=default",
            "alertname=KubePodCrashLooping",
            "severity=critical",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout


def test_sidecar_down_inhibits_its_consequences():
    config = yaml.safe_load(CONFIG.read_text())
    (rule,) = config["inhibit_rules"]
    assert rule["source_matchers"] == ['alertname = "ProbewatchSidecarDown"']
    targets = rule["target_matchers"][0].split("=~", 1)[1].strip().strip('"').split("|")
    names = {r["alert"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]}
    assert set(targets) <= names  # inhibits alerts that exist
