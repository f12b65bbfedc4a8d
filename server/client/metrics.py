"""Prometheus series of the client that runs inside an inference server (HF attach or the vLLM plugin).

The names and labels are a contract (docs/architecture.md, "Prometheus metrics"). The client owns
its registry so several clients can share a process (tests, `probewatch demo`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["CAPTURE_ERROR_REASONS", "UNMONITORED_REASONS", "ClientMetrics"]

# Why a capture self-check failed (labels of probewatch_client_capture_errors_total).
CAPTURE_ERROR_REASONS = ("position", "rows", "batch")
# Why a generation was not (fully) monitored (labels of probewatch_client_unmonitored_generations_total
# and probewatch_client_refused_generations_total; meanings in server/client/unmonitored.py).
UNMONITORED_REASONS = ("sidecar_down", "sidecar_lost", "rejected", "unsupported_input", "opted_out")


class ClientMetrics:
    """The attach client's own series (exposed by `probewatch run` at /metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.monitoring_up = Gauge(
            "probewatch_client_monitoring_up",
            "1 while the attach client is connected to its sidecar, else 0 (fail-open).",
            registry=r,
        )
        self.dropped_chunks = Counter(
            "probewatch_client_dropped_chunks_total",
            "Captured chunks not delivered to the sidecar, by reason.",
            ["reason"],
            registry=r,
        )
        self.chunks_sent = Counter("probewatch_client_chunks_sent_total", "Activation chunks sent.", registry=r)
        self.generations = Counter(
            "probewatch_client_generations_total",
            "Generations the client saw start, monitored or not (the denominator of the unmonitored ratio).",
            registry=r,
        )
        self.unmonitored = Counter(
            "probewatch_client_unmonitored_generations_total",
            "Generations that could not be (fully) monitored, by reason (server/client/unmonitored.py), "
            "whatever the on_unmonitored policy did with them.",
            ["reason"],
            registry=r,
        )
        self.refused = Counter(
            "probewatch_client_refused_generations_total",
            "Generations refused to the caller because they could not be monitored (on_unmonitored=reject).",
            ["reason"],
            registry=r,
        )
        for reason in UNMONITORED_REASONS:
            self.unmonitored.labels(reason=reason)
            if reason != "opted_out":
                self.refused.labels(reason=reason)
        self.reconnects = Counter(
            "probewatch_client_reconnects_total", "Connection attempts to the sidecar that failed.", registry=r
        )
        self.capture_errors = Counter(
            "probewatch_client_capture_errors_total",
            "Generations whose capture failed its self-check (positions or rows per step not as expected); "
            "their monitoring stopped instead of sending rows at wrong positions.",
            ["reason"],
            registry=r,
        )
        self.engaged = Gauge(
            "probewatch_client_capture_engaged",
            "1 when the capture is installed on this engine's model runner (label runner: vllm-v1, "
            "vllm-v2, vllm-cpu-standalone), 0 with the reason it is not (the engine then runs unmonitored).",
            ["runner", "reason"],
            registry=r,
        )
        self.bounded_inputs = Counter(
            "probewatch_client_bounded_inputs_total",
            "Caller-controlled input that could have switched monitoring off, neutralised: a generation id or "
            "metadata cut to the sidecar's limits before the Open, and in the vLLM plugin an opt-out not allowed "
            "(PROBEWATCH_CALLER_OPT_OUT), an unreadable extra_args value or a probe selection naming no known "
            "probe (the request is monitored with the defaults).",
            ["what"],
            registry=r,
        )
        for what in ("generation_id", "metadata", "opt_out", "extra_args", "probewatch_probes"):
            self.bounded_inputs.labels(what=what)
        self.speculative_rows = Counter(
            "probewatch_client_speculative_rows_total",
            "Draft-token rows of speculative-decoding verify steps: accepted ones are scored, rejected ones "
            "(tokens that never happened) are not sent.",
            ["outcome"],
            registry=r,
        )
        for reason in CAPTURE_ERROR_REASONS:
            self.capture_errors.labels(reason=reason)
        for reason in ("queue_full", "sidecar_down", "rejected", "stalled"):
            self.dropped_chunks.labels(reason=reason)
