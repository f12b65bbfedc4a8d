"""Review metrics, read from the incident store when Prometheus scrapes (names are a contract:
docs/architecture.md, the Grafana dashboard and the alert rules use them).

| metric | labels | meaning |
|---|---|---|
| `probewatch_review_incidents` | status | incidents per review status (the backlog: open + acknowledged) |
| `probewatch_review_oldest_incident_age_seconds` | status | age of the oldest open / acknowledged incident (0: none) |
| `probewatch_review_labels` | probe, verdict | reviewed incidents per probe and verdict |
| `probewatch_review_precision` | probe | reviewed precision: true / (true + false positives) |
| `probewatch_review_store_up` | — | 1 when the last read of the store worked |
| `probewatch_review_actions_total` | action | review actions taken through this app |
| `probewatch_review_rejected_hosts_total` | — | requests refused for their Host header (hosts.py) |

The store is read at most once per `cache_s` (several Prometheus replicas scraping must not turn
into load on the database); a failed read keeps the last values and sets `store_up` 0.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from probewatch.server.store.records import ACTIONS, LABELS, STATUSES
from probewatch.server.store.store import IncidentStore, ReviewStats

log = logging.getLogger(__name__)


class ReviewCollector(Collector):
    def __init__(self, store: IncidentStore, cache_s: float = 10.0) -> None:
        self.store = store
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._stats: ReviewStats | None = None
        self._read_at = -1e18
        self._up = 0

    def stats(self) -> ReviewStats | None:
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_s:
                try:
                    self._stats = self.store.review_stats()
                    self._up = 1
                except Exception as exc:  # noqa: BLE001 - a scrape must still answer (store_up 0)
                    log.warning("review metrics: cannot read the incident store: %s", exc)
                    self._up = 0
                self._read_at = time.monotonic()
            return self._stats

    def invalidate(self) -> None:
        """Re-read at the next scrape (after a review action, so /metrics shows it at once)."""
        with self._lock:
            self._read_at = -1e18

    def collect(self):
        stats = self.stats()
        up = GaugeMetricFamily("probewatch_review_store_up", "1 when the review app's last read of the store worked.")
        up.add_metric([], self._up)
        yield up
        incidents = GaugeMetricFamily(
            "probewatch_review_incidents",
            "Incidents per review status (open + acknowledged = backlog).",
            labels=["status"],
        )
        oldest = GaugeMetricFamily(
            "probewatch_review_oldest_incident_age_seconds",
            "Age of the oldest incident in a review status (0 when there is none).",
            labels=["status"],
        )
        labels = GaugeMetricFamily(
            "probewatch_review_labels", "Reviewed incidents per probe and verdict.", labels=["probe", "verdict"]
        )
        precision = GaugeMetricFamily(
            "probewatch_review_precision",
            "Reviewed precision per probe: true positives / (true + false positives).",
            labels=["probe"],
        )
        if stats is not None:
            for status in STATUSES:
                incidents.add_metric([status], stats.counts.get(status, 0))
            for status in ("open", "acknowledged"):
                oldest.add_metric([status], stats.oldest_age_s.get(status, 0.0))
            probes = sorted({p for p, _ in stats.labels})
            for probe in probes:
                for verdict in LABELS:
                    labels.add_metric([probe, verdict], stats.labels.get((probe, verdict), 0))
            for probe, value in stats.precision().items():
                precision.add_metric([probe], value)
        yield from (incidents, oldest, labels, precision)

    def describe(self):
        return []  # collected on demand (no descriptions before the first read)


def review_registry(store: IncidentStore, cache_s: float = 10.0) -> tuple[CollectorRegistry, ReviewCollector, Counter]:
    registry = CollectorRegistry()
    collector = ReviewCollector(store, cache_s)
    registry.register(collector)
    actions = Counter(
        "probewatch_review_actions_total", "Review actions taken, by action.", ["action"], registry=registry
    )
    for action in ACTIONS:
        actions.labels(action=action)
    return registry, collector, actions
