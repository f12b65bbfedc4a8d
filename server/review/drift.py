"""The probe card's "live drift" line: how far the probe's live scores have drifted from calibration.

The sidecars measure it (server/sidecar/drift.py: probewatch_probe_score_psi and the alert-rate
gauges), each over its own recent generations; the review app is a separate process and a fleet has
many sidecars, so the app asks the Prometheus that scrapes them all (`--prometheus-url`,
$PROBEWATCH_PROMETHEUS_URL, Helm `review.prometheusUrl`): one instant query for the four gauges,
the worst sidecar per probe (max), cached for CACHE_S so an incident page never waits on Prometheus
more than once a minute (TIMEOUT_S at most). Drift computed from the stored incidents would only see
flagged generations, not the traffic, so it is never offered as a stand-in. Without a URL, or when
Prometheus does not answer, the card says drift is unavailable and why.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["DriftReader", "ProbeDrift"]

CACHE_S = 30.0
ERROR_CACHE_S = 10.0  # a Prometheus that failed is asked again this much later (pages stay fast meanwhile)
TIMEOUT_S = 1.0
PSI_SHIFTED = 0.25  # the ProbewatchProbeScoreDrift rule's default
_GAUGES = {
    "probewatch_probe_score_psi": "psi",
    "probewatch_probe_alert_rate": "alert_rate",
    "probewatch_probe_expected_alert_rate": "expected_alert_rate",
    "probewatch_probe_alert_rate_ratio": "alert_rate_ratio",
}
QUERY = '{__name__=~"' + "|".join(_GAUGES) + '"}'


@dataclass
class ProbeDrift:
    psi: float | None = None
    alert_rate: float | None = None
    expected_alert_rate: float | None = None
    alert_rate_ratio: float | None = None

    def describe(self) -> str:
        if self.psi is None and self.alert_rate is None:
            return (
                "no data yet (the sidecars have seen fewer than 100 of its generations since they started, "
                "or its bundle has no calibration reference)"
            )
        parts = []
        if self.psi is not None:
            verdict = "shifted from calibration" if self.psi > PSI_SHIFTED else "close to calibration"
            parts.append(f"score PSI {self.psi:.2f} ({verdict})")
        else:
            parts.append("score PSI unknown (its bundle has no calibration reference)")
        if self.alert_rate is not None:
            rate = f"alert rate {self.alert_rate:.1%}"
            if self.expected_alert_rate is not None:
                rate += f" vs {self.expected_alert_rate:.1%} calibrated"
                if self.alert_rate_ratio is not None:
                    rate += f" ({self.alert_rate_ratio:.1f}×)"
            parts.append(rate)
        return " · ".join(parts)


class DriftReader:
    """Per-probe drift gauges from Prometheus, cached; `line(probe)` is what the probe card shows."""

    def __init__(self, prometheus_url: str | None, timeout_s: float = TIMEOUT_S, cache_s: float = CACHE_S) -> None:
        self.url = prometheus_url.rstrip("/") if prometheus_url else None
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._value: dict[str, ProbeDrift] | str = {}
        self._until = -1.0

    def line(self, probe: str) -> str:
        if self.url is None:
            return "unavailable: the review app has no Prometheus to ask (--prometheus-url)"
        drift = self._current()
        if isinstance(drift, str):
            return f"unavailable: {drift}"
        return drift.get(probe, ProbeDrift()).describe()

    def _current(self) -> dict[str, ProbeDrift] | str:
        with self._lock:  # one query at a time; the others wait for its answer rather than ask again
            now = time.monotonic()
            if now >= self._until:
                self._value = self._fetch()
                self._until = now + (ERROR_CACHE_S if isinstance(self._value, str) else self.cache_s)
            return self._value

    def _fetch(self) -> dict[str, ProbeDrift] | str:
        try:
            response = httpx.get(f"{self.url}/api/v1/query", params={"query": QUERY}, timeout=self.timeout_s)
            body: Any = response.json() if response.content else {}
        except (httpx.HTTPError, ValueError) as exc:
            return f"Prometheus at {self.url} did not answer ({type(exc).__name__})"
        if response.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            return f"Prometheus at {self.url} answered {response.status_code}{f': {error}' if error else ''}"
        out: dict[str, ProbeDrift] = {}
        for series in body.get("data", {}).get("result", []):
            metric = series.get("metric", {})
            field, probe = _GAUGES.get(metric.get("__name__", "")), metric.get("probe")
            try:
                value = float(series["value"][1])
            except (KeyError, IndexError, TypeError, ValueError):
                continue
            if field is None or not probe or value != value:  # NaN
                continue
            drift = out.setdefault(probe, ProbeDrift())
            old = getattr(drift, field)
            setattr(drift, field, value if old is None else max(old, value))  # the worst sidecar
        return out
