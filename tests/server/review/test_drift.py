"""The probe card's live drift line without a Prometheus: it says drift is unavailable and why, and a
Prometheus that does not answer costs a page at most one timeout per ERROR_CACHE_S (the positive path, a
real Prometheus scraping a real sidecar, is tests/deploy/test_prometheus_e2e.py)."""

from __future__ import annotations

import re
import socket
import time

import pytest
from fastapi.testclient import TestClient

from probewatch.server.review.app import create_review_app
from probewatch.server.review.auth import AuthConfig
from probewatch.server.review.catalog import Catalog
from probewatch.server.review.drift import DriftReader, ProbeDrift
from probewatch.server.store import IncidentStore
from tests.server.review.helpers import seed


@pytest.fixture
def store(store):
    seed(store, 2)
    return store


def _card(store: IncidentStore, **kw) -> str:
    app = create_review_app(store, AuthConfig(local_reviewer="alice"), Catalog([], discover=False), **kw)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        page = client.get("/incidents/1")
    assert page.status_code == 200
    return re.search(r'<dd id="probe-drift">([^<]*)</dd>', page.text).group(1)


def test_without_prometheus_the_card_says_unavailable(store, monkeypatch):
    monkeypatch.delenv("PROBEWATCH_PROMETHEUS_URL", raising=False)
    assert _card(store) == "unavailable: the review app has no Prometheus to ask (--prometheus-url)"


def test_an_unreachable_prometheus_is_named_and_asked_again_only_later(store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    url = f"http://127.0.0.1:{port}"
    assert _card(store, prometheus_url=url) == f"unavailable: Prometheus at {url} did not answer (ConnectError)"
    reader = DriftReader(url, timeout_s=0.5)
    reader.line("dec")
    started = time.perf_counter()
    assert "did not answer" in reader.line("dec")  # cached: no second connection attempt
    assert time.perf_counter() - started < 0.01


def test_describe():
    assert ProbeDrift(0.61, 0.5, 0.05, 10.0).describe() == (
        "score PSI 0.61 (shifted from calibration) · alert rate 50.0% vs 5.0% calibrated (10.0×)"
    )
    assert ProbeDrift(0.03, 0.05, 0.05, 1.0).describe().startswith("score PSI 0.03 (close to calibration)")
    assert ProbeDrift(alert_rate=0.1).describe() == (
        "score PSI unknown (its bundle has no calibration reference) · alert rate 10.0%"
    )
    assert ProbeDrift().describe().startswith("no data yet")
