"""Prometheus metrics of the sidecar (the client's own series live in server/client/metrics.py).

The names and labels are a contract (docs/architecture.md, "Prometheus metrics"): Grafana
dashboards and alert rules are built against them, so they change only together.

Each `SidecarMetrics` owns its own `CollectorRegistry` (several sidecars can live in one process,
e.g. in tests or `probewatch demo`); `probewatch.metrics_http.serve_metrics` exposes it over HTTP.

Token-score histograms are fed per chunk, not per value: `BulkHistogram` bins a whole numpy
array with one `searchsorted` (a Python `observe()` per token and probe would cost more than the
scoring GEMM itself).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

#: Score histograms share one axis: every exported bundle scores a calibrated logit.
LOGIT_BUCKETS: tuple[float, ...] = tuple(float(x) for x in range(-12, 13))
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SAE_BUCKETS: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


class BulkHistogram(Collector):
    """A labelled histogram observed with arrays; renders exactly like prometheus-client's Histogram."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], list] = {}  # labels -> [counts per bucket + inf, sum]

    def observe_many(self, labelvalues: Sequence[str], values: np.ndarray | Iterable[float]) -> None:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
        if not np.isfinite(arr).all():  # a non-finite value would poison _sum for good
            arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            return
        counts = np.bincount(np.searchsorted(self.bounds, arr, side="left"), minlength=len(self.bounds) + 1)
        key = tuple(str(v) for v in labelvalues)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [np.zeros(len(self.bounds) + 1, dtype=np.int64), 0.0]
            series[0] += counts
            series[1] += float(arr.sum())

    def get(self, labelvalues: Sequence[str]) -> tuple[int, float]:
        """(count, sum) of one series (tests, the demo summary)."""
        with self._lock:
            series = self._series.get(tuple(str(v) for v in labelvalues))
            return (int(series[0].sum()), float(series[1])) if series is not None else (0, 0.0)

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            items = [(k, v[0].copy(), v[1]) for k, v in self._series.items()]
        for key, counts, total in items:
            cumulative = np.cumsum(counts)
            buckets = [(_fmt(b), float(c)) for b, c in zip(self.bounds, cumulative[:-1])]
            buckets.append(("+Inf", float(cumulative[-1])))
            family.add_metric(list(key), buckets, None)
            # prometheus-client drops _sum/_count when buckets go negative (an OpenMetrics rule); the
            # classic Histogram always has them and dashboards rate() the _count: add them back.
            labels = dict(zip(self.labelnames, key))
            family.add_sample(self.name + "_count", labels, float(cumulative[-1]))
            family.add_sample(self.name + "_sum", labels, total)
        yield family

    def describe(self):
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)


def _fmt(bound: float) -> str:
    return repr(float(bound))


# gRPC status codes the sidecar answers bad input with (pre-created so a first rejection shows in rate()):
# UNAUTHENTICATED (no/bad bearer token), DEADLINE_EXCEEDED (stream idle timeout, generation TTL),
# UNAVAILABLE (shutting down), INTERNAL (a bug answered instead of crashing).
REJECTION_CODES = (
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "FAILED_PRECONDITION",
    "RESOURCE_EXHAUSTED",
    "ALREADY_EXISTS",
    "UNAUTHENTICATED",
    "DEADLINE_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
)
# Background work of the sidecar that catches, counts, logs and goes on (labels of probewatch_internal_errors_total).
INTERNAL_ERROR_COMPONENTS = ("scoring", "stream", "webhook", "retention", "incidents")
# Why a chunk was not scored (labels of probewatch_dropped_chunks_total).
DROP_REASONS = ("queue_full", "queue_bytes", "client_dropped")
# The open-generation limits an Open can hit (labels of probewatch_generation_limit_refusals_total).
GENERATION_LIMITS = ("per_stream", "per_client", "total")
# Why a generation was aborted by the sidecar itself (labels of probewatch_generations_expired_total).
EXPIRY_REASONS = ("lifetime", "idle")


class SidecarMetrics:
    """Every series the sidecar exports (docs/architecture.md names them)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.token_score = BulkHistogram(
            "probewatch_token_score",
            "Per-token probe score (calibrated logit) of the tokens each probe selects.",
            ["probe", "behaviour"],
            LOGIT_BUCKETS,
        )
        self.generation_score = BulkHistogram(
            "probewatch_generation_score",
            "Per-generation aggregate score (calibrated logit) at close.",
            ["probe", "behaviour"],
            LOGIT_BUCKETS,
        )
        self.sae_feature_activation = BulkHistogram(
            "probewatch_sae_feature_activation",
            "Per-token activation of SAE-feature probes.",
            ["sae", "feature", "description"],
            SAE_BUCKETS,
        )
        for collector in (self.token_score, self.generation_score, self.sae_feature_activation):
            r.register(collector)
        self.alerts = Counter(
            "probewatch_alerts_total",
            "Alerts raised (one per generation and probe).",
            ["probe", "behaviour"],
            registry=r,
        )
        self.uncertain = Counter(
            "probewatch_uncertain_total",
            "Generations whose final aggregate ended inside a probe's uncertainty band [uncertain_from, threshold): "
            "recorded as a low-priority incident, never alerted (one per generation and probe; 0 without a band).",
            ["probe", "behaviour"],
            registry=r,
        )
        self.generations = Counter(
            "probewatch_generations_total", "Generations finished, by how they ended.", ["status"], registry=r
        )
        self.tokens_scored = Counter(
            "probewatch_tokens_scored_total", "Token rows scored, by payload kind.", ["mode"], registry=r
        )
        self.scoring_latency = Histogram(
            "probewatch_scoring_latency_seconds",
            "Time from receiving a chunk to sending its scores (queue wait + GEMM).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("probewatch_queue_depth", "Work items waiting for the scoring worker.", registry=r)
        self.queue_capacity = Gauge(
            "probewatch_queue_capacity",
            "Bound of the scoring queue (alert rules compare queue depth with it).",
            registry=r,
        )
        self.queue_bytes = Gauge(
            "probewatch_queue_bytes", "Tensor bytes queued for or being scored by the scoring worker.", registry=r
        )
        self.queue_bytes_capacity = Gauge(
            "probewatch_queue_bytes_capacity",
            "Byte budget of the scoring queue (--queue-bytes, default from the container's memory limit).",
            registry=r,
        )
        self.dropped_chunks = Counter(
            "probewatch_dropped_chunks_total",
            "Chunks not scored: sidecar queue full (chunks or bytes), or dropped by a client (reported at close).",
            ["reason"],
            registry=r,
        )
        self.paced_seconds = Counter(
            "probewatch_paced_seconds_total",
            "Seconds stream readers waited before reading on, because their client sent chunk payloads faster than "
            "--max-client-mb-per-s (its sends are slowed by gRPC flow control; nothing dropped).",
            registry=r,
        )
        self.generation_limit_refusals = Counter(
            "probewatch_generation_limit_refusals_total",
            "Opens refused because a limit on open generations was reached (per stream, per client, in total).",
            ["limit"],
            registry=r,
        )
        self.generations_expired = Counter(
            "probewatch_generations_expired_total",
            "Generations the sidecar aborted: open past --generation-ttl, or no chunk for --generation-idle-ttl.",
            ["reason"],
            registry=r,
        )
        self.layer_join_missing = Counter(
            "probewatch_layer_join_missing_tokens_total",
            "Selected tokens a multi-layer probe left out of its score because this layer's row (or projection) never "
            "arrived: a dropped chunk, or a client that does not capture the layer (the stream gets an error at close).",
            ["probe", "layer"],
            registry=r,
        )
        self.incident_queue_depth = Gauge(
            "probewatch_incident_queue_depth",
            "Incident writes (and their webhooks) waiting for the incident writer thread.",
            registry=r,
        )
        self.incident_writes_dropped = Counter(
            "probewatch_incident_writes_dropped_total",
            "Incident writes dropped because the incident writer's queue was full (early: at alert time).",
            ["kind"],
            registry=r,
        )
        self.active_streams = Gauge(
            "probewatch_active_streams", "Open Monitor streams (connected clients).", registry=r
        )
        self.active_generations = Gauge(
            "probewatch_active_generations", "Generations opened and not yet finished.", registry=r
        )
        self.rejected = Counter(
            "probewatch_rejected_messages_total", "Messages refused, by gRPC status code name.", ["code"], registry=r
        )
        self.bundle_info = Info(
            "probewatch_bundle",
            "Loaded probe bundles.",
            ["probe", "behaviour", "kind", "layer", "version", "fingerprint"],
            registry=r,
        )
        self.last_alert = Gauge(
            "probewatch_last_alert_timestamp_seconds", "Unix time of the last alert per probe.", ["probe"], registry=r
        )
        self.incident_store_errors = Counter(
            "probewatch_incident_store_errors_total", "Incident rows that could not be written.", registry=r
        )
        self.webhook_deliveries = Counter(
            "probewatch_webhook_deliveries_total", "Webhook deliveries by outcome.", ["outcome"], registry=r
        )
        self.internal_errors = Counter(
            "probewatch_internal_errors_total",
            "Exceptions a sidecar thread caught, logged and survived, by component (a bug: look at the log).",
            ["component"],
            registry=r,
        )
        for component in INTERNAL_ERROR_COMPONENTS:
            self.internal_errors.labels(component=component)
        for reason in DROP_REASONS:
            self.dropped_chunks.labels(reason=reason)
        for limit in GENERATION_LIMITS:
            self.generation_limit_refusals.labels(limit=limit)
        for reason in EXPIRY_REASONS:
            self.generations_expired.labels(reason=reason)
        for kind in ("early", "close"):
            self.incident_writes_dropped.labels(kind=kind)
        for status in ("closed", "aborted"):
            self.generations.labels(status=status)
        for mode in ("rows", "projections"):
            self.tokens_scored.labels(mode=mode)
        for outcome in ("ok", "failed"):
            self.webhook_deliveries.labels(outcome=outcome)
        # Pre-create the codes the sidecar answers with, so the first rejection shows in rate()/increase().
        for code in REJECTION_CODES:
            self.rejected.labels(code=code)

    def set_queue_depth_source(self, fn: Callable[[], float], capacity: int | None = None) -> None:
        self.queue_depth.set_function(fn)
        if capacity is not None:
            self.queue_capacity.set(capacity)

    def set_queue_bytes_source(self, fn: Callable[[], float], capacity: int) -> None:
        self.queue_bytes.set_function(fn)
        self.queue_bytes_capacity.set(capacity)

    def register_bundles(self, bundles: Iterable) -> None:
        for b in bundles:
            m = b.manifest
            # Info carries its labels as the info dict: all six label names are declared up front.
            self.bundle_info.labels(
                probe=m.id,
                behaviour=m.behaviour,
                kind=m.kind,
                layer="+".join(map(str, m.all_layers)),  # a multi-layer probe: e.g. "3+5"
                version=str(m.version),
                fingerprint=m.model.fingerprint,
            ).info({})
            self.alerts.labels(probe=m.id, behaviour=m.behaviour)
            for layer in m.all_layers if len(m.all_layers) > 1 else ():  # a multi-layer probe: its series start at 0
                self.layer_join_missing.labels(probe=m.id, layer=str(layer))
            self.uncertain.labels(probe=m.id, behaviour=m.behaviour)  # 0 for good without a band
