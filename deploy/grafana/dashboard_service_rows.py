"""Dashboard rows about the sidecar service: throughput, errors and delivery, bundles, incident review.

One function per row; each returns the row panel followed by its panels, placed by the shared
Layout (the order of the calls fixes panel ids and grid positions).
"""

from __future__ import annotations

from dashboard_panels import CSEL, RSEL, SEL, Layout, row, stat, state_stat, table, target, timeseries


def throughput_row(lay: Layout) -> list[dict]:
    """Tokens scored, scoring latency, queue depth, finished generations and dropped chunks."""
    return [
        row(lay, "Throughput and latency"),
        timeseries(
            lay,
            "Tokens scored per second",
            [target(f"sum by (mode) (rate(probewatch_tokens_scored_total{{{SEL}}}[$__rate_interval]))", "{{mode}}")],
            unit="short",
            stack=True,
            w=8,
            description="rows: residual rows scored by the sidecar; projections: pushdown projections computed "
            "on the model's device.",
        ),
        timeseries(
            lay,
            "Scoring latency p50 / p99",
            [
                target(
                    f"histogram_quantile(0.5, sum by (le) (rate(probewatch_scoring_latency_seconds_bucket{{{SEL}}}"
                    f"[$__rate_interval])))",
                    "p50",
                    "A",
                ),
                target(
                    f"histogram_quantile(0.99, sum by (le) (rate(probewatch_scoring_latency_seconds_bucket{{{SEL}}}"
                    f"[$__rate_interval])))",
                    "p99",
                    "B",
                ),
            ],
            unit="s",
            w=8,
            description="From receiving a chunk to sending its scores (queue wait + GEMM).",
        ),
        timeseries(
            lay,
            "Queue depth and streams",
            [
                target(f"sum by (instance) (probewatch_queue_depth{{{SEL}}})", "queue {{instance}}", "A"),
                target(f"sum(probewatch_active_streams{{{SEL}}})", "open streams", "B"),
                target(f"sum(probewatch_active_generations{{{SEL}}})", "open generations", "C"),
            ],
            unit="short",
            w=8,
            description="Work items waiting for the scoring worker; connected clients; generations in flight.",
        ),
        timeseries(
            lay,
            "Generations finished by status",
            [
                target(
                    f"sum by (status) (rate(probewatch_generations_total{{{SEL}}}[$__rate_interval])) * 60",
                    "{{status}}",
                )
            ],
            unit="short",
            stack=True,
            w=12,
            description="Per minute. aborted: the stream broke before Close; the partial scores are kept.",
        ),
        timeseries(
            lay,
            "Dropped chunks",
            [
                target(
                    f"sum by (reason) (rate(probewatch_dropped_chunks_total{{{SEL}}}[$__rate_interval]))",
                    "sidecar {{reason}}",
                    "A",
                ),
                target(
                    f"sum by (reason) (rate(probewatch_client_dropped_chunks_total{{{CSEL}}}[$__rate_interval]))",
                    "client {{reason}}",
                    "B",
                ),
                target(
                    f"sum by (reason) (rate(probewatch_client_capture_errors_total{{{CSEL}}}[$__rate_interval]))",
                    "capture self-check {{reason}}",
                    "C",
                ),
            ],
            unit="short",
            w=12,
            description="Chunks per second not scored. sidecar queue_full: scoring cannot keep up; client_dropped / "
            "client reasons: the attach client's fail-open drops (queue full, sidecar down, rejected). "
            "capture self-check: generations per second whose monitoring stopped because the capture saw "
            "positions or shapes it could not trust (an unsupported inference-library version).",
        ),
    ]


def errors_row(lay: Layout) -> list[dict]:
    """Rejected messages, webhook / incident-store / internal errors and the attach clients."""
    return [
        row(lay, "Errors and alert delivery"),
        timeseries(
            lay,
            "Rejected messages by code",
            [
                target(
                    f"sum by (code) (rate(probewatch_rejected_messages_total{{{SEL}}}[$__rate_interval]))", "{{code}}"
                )
            ],
            unit="short",
            w=8,
            description="Client messages the sidecar refused, by gRPC status (FAILED_PRECONDITION: model "
            "fingerprint mismatch; INVALID_ARGUMENT: bad shape/dtype/NaN/out-of-range values, oversized id or "
            "metadata, undecodable message; NOT_FOUND: unknown generation or probe; RESOURCE_EXHAUSTED: message "
            "too large, a stream/open-generation/Score cap, or a client not reading its responses; "
            "UNAUTHENTICATED: no or a wrong bearer token; DEADLINE_EXCEEDED: stream idle timeout or generation "
            "TTL; UNAVAILABLE: refused while shutting down; INTERNAL: a bug answered instead of crashing).",
        ),
        timeseries(
            lay,
            "Webhook deliveries, incident store and internal errors",
            [
                target(
                    f"sum by (outcome) (rate(probewatch_webhook_deliveries_total{{{SEL}}}[$__rate_interval]))",
                    "webhook {{outcome}}",
                    "A",
                ),
                target(
                    f"sum(rate(probewatch_incident_store_errors_total{{{SEL}}}[$__rate_interval]))",
                    "incident store errors",
                    "B",
                ),
                target(
                    f"sum by (component) (rate(probewatch_internal_errors_total{{{SEL}}}[$__rate_interval]))",
                    "internal errors: {{component}}",
                    "C",
                ),
            ],
            unit="short",
            w=8,
            description="Alert webhook POSTs by outcome (after retries), failed incident writes, and exceptions "
            "a sidecar thread caught and survived (by component: a bug, see the sidecar log).",
        ),
        timeseries(
            lay,
            "Attach client monitoring up",
            [target(f"probewatch_client_monitoring_up{{{CSEL}}}", "{{instance}}")],
            unit="short",
            w=8,
            description="1 while an inference server's attach client is connected to its sidecar, 0 while it "
            "serves unmonitored (fail-open).",
        ),
    ]


def bundles_row(lay: Layout) -> list[dict]:
    """The probe bundles every sidecar has loaded (version and model fingerprint)."""
    return [
        row(lay, "Bundles"),
        table(
            lay,
            "Loaded probe bundles",
            [
                target(
                    f"count by (probe, behaviour, kind, layer, version, fingerprint) (probewatch_bundle_info{{{SEL}}})",
                    "",
                    "A",
                    instant=True,
                    fmt="table",
                )
            ],
            h=7,
            description="probewatch_bundle_info of every sidecar: bundle version and the model fingerprint the "
            "probes were trained on (sidecars refuse bundles whose fingerprint differs from their "
            "model). Sidecars: how many report this bundle.",
            transformations=[
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True},
                        "indexByName": {
                            "probe": 0,
                            "behaviour": 1,
                            "kind": 2,
                            "layer": 3,
                            "version": 4,
                            "fingerprint": 5,
                            "Value": 6,
                        },
                        "renameByName": {"Value": "Sidecars"},
                    },
                }
            ],
        ),
    ]


def review_backlog_panels(lay: Layout) -> list[dict]:
    """The review app's backlog, oldest open incident, store health and backlog by status."""
    return [
        row(lay, "Incident review"),
        stat(
            lay,
            "Review backlog",
            f'sum(max by (status) (probewatch_review_incidents{{{RSEL}, status=~"open|acknowledged"}}))',
            w=4,
            description="Incidents waiting for a verdict: open (nobody claimed them) plus acknowledged (claimed, "
            "not resolved), from the review app's view of the incident store.",
            thresholds=[
                {"color": "green", "value": None},
                {"color": "orange", "value": 20},
                {"color": "red", "value": 50},
            ],
        ),
        stat(
            lay,
            "Oldest open incident",
            f'max(probewatch_review_oldest_incident_age_seconds{{{RSEL}, status="open"}})',
            unit="s",
            w=4,
            description="How long the oldest unclaimed incident has waited (0: none open). "
            "ProbewatchReviewStale fires past a day.",
            thresholds=[
                {"color": "green", "value": None},
                {"color": "orange", "value": 3600},
                {"color": "red", "value": 86400},
            ],
        ),
        state_stat(
            lay,
            "Review store",
            f"min(probewatch_review_store_up{{{RSEL}}})",
            down="UNREACHABLE",
            up="OK",
            description="Whether the review app reads the incident store (the database the sidecars write).",
        ),
        timeseries(
            lay,
            "Backlog by status",
            [target(f"max by (status) (probewatch_review_incidents{{{RSEL}}})", "{{status}}")],
            w=12,
            description="Incidents per review status. A rising `open` line means alerts arrive faster than "
            "reviewers label them (ProbewatchReviewBacklogGrowing).",
        ),
    ]


def review_verdict_panels(lay: Layout) -> list[dict]:
    """Reviewed precision and verdicts per probe."""
    return [
        timeseries(
            lay,
            "Reviewed precision per probe",
            [target(f'max by (probe) (probewatch_review_precision{{{RSEL}, probe=~"$probe"}})', "{{probe}}")],
            unit="percentunit",
            description="true positives / (true + false positives) among reviewed incidents, per probe. A probe "
            "low here alerts on benign traffic: recalibrate it on the reviewed incidents "
            "(probewatch incidents export --labelled, then probewatch calibrate --extra-data).",
        ),
        timeseries(
            lay,
            "Verdicts by probe",
            [
                target(
                    f'max by (probe, verdict) (probewatch_review_labels{{{RSEL}, probe=~"$probe"}})',
                    "{{probe}} {{verdict}}",
                )
            ],
            stack=True,
            description="Reviewed incidents per probe and verdict (true_positive, false_positive, unsure).",
        ),
    ]


def review_row(lay: Layout) -> list[dict]:
    """Incident review, from the review app's /metrics (its own job): backlog on one line, verdicts on the next."""
    panels = review_backlog_panels(lay)
    lay.newline()
    return panels + review_verdict_panels(lay)
