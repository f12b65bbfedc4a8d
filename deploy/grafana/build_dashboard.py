#!/usr/bin/env python3
"""Builds deploy/grafana/probewatch-dashboard.json (the Grafana dashboard for the probewatch sidecar).

The JSON file is what users import and what the Helm chart embeds (helm/probewatch/dashboards/
links to it); this script is its source, so panel ids and the grid layout stay consistent when
panels change. tests/deploy checks the checked-in JSON equals this script's output and that every
query in it returns data from a real Prometheus scraping a real sidecar.

    python deploy/grafana/build_dashboard.py            # rewrite the JSON
    python deploy/grafana/build_dashboard.py --check    # exit 1 if the JSON is stale

Metric names follow docs/architecture.md ("Prometheus metrics"). Variables: datasource, job,
namespace, instance, probe (multi-value; "All" is the regex `.*`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "probewatch-dashboard.json"
UID = "probewatch-sidecar"
DS = {"type": "prometheus", "uid": "${datasource}"}

# Label matchers shared by every sidecar query.
SEL = 'job=~"$job", namespace=~"$namespace", instance=~"$instance"'
PSEL = SEL + ', probe=~"$probe"'
# The attach client's series come from the inference server's /metrics (another job).
CSEL = 'namespace=~"$namespace"'
# The review app's series (probewatch review /metrics, its own job); max() folds its replicas.
RSEL = 'namespace=~"$namespace"'


class Layout:
    """Hands out panel ids and grid positions left to right, top to bottom (24 columns)."""

    def __init__(self) -> None:
        self.next_id = 1
        self.x = 0
        self.y = 0
        self.row_h = 0

    def place(self, w: int, h: int) -> tuple[int, dict]:
        if self.x + w > 24:
            self.newline()
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        pid = self.next_id
        self.next_id += 1
        return pid, pos

    def newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x = 0
        self.row_h = 0


def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, fmt: str = "time_series") -> dict:
    t = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }
    if fmt != "time_series":
        t["format"] = fmt
    return t


def row(lay: Layout, title: str, repeat: str | None = None) -> dict:
    lay.newline()
    pid, pos = lay.place(24, 1)
    lay.newline()
    panel = {"type": "row", "id": pid, "title": title, "collapsed": False, "gridPos": pos, "panels": []}
    if repeat:
        panel["repeat"] = repeat
    return panel


def state_stat(lay: Layout, title: str, expr: str, *, down: str, up: str, description: str) -> dict:
    """A 0/1 health stat: 0 shows `down` in red, 1 shows `up` in green."""
    return stat(
        lay,
        title,
        expr,
        w=4,
        description=description,
        mappings=[
            {
                "type": "value",
                "options": {
                    "0": {"text": down, "color": "red", "index": 0},
                    "1": {"text": up, "color": "green", "index": 1},
                },
            }
        ],
        thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
    )


def stat(
    lay: Layout,
    title: str,
    expr: str,
    *,
    unit: str = "short",
    description: str,
    w: int = 4,
    mappings: list | None = None,
    thresholds: list | None = None,
    decimals: int | None = None,
) -> dict:
    pid, pos = lay.place(w, 4)
    defaults: dict = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": {"mode": "absolute", "steps": thresholds or [{"color": "green", "value": None}]},
    }
    if mappings:
        defaults["mappings"] = mappings
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "id": pid,
        "title": title,
        "description": description,
        "gridPos": pos,
        "datasource": DS,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background" if mappings else "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        },
    }


def timeseries(
    lay: Layout,
    title: str,
    targets: list[dict],
    *,
    unit: str = "short",
    description: str,
    w: int = 12,
    h: int = 8,
    stack: bool = False,
    overrides: list | None = None,
) -> dict:
    pid, pos = lay.place(w, h)
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    return {
        "type": "timeseries",
        "id": pid,
        "title": title,
        "description": description,
        "gridPos": pos,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"}},
            "overrides": overrides or [],
        },
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
                "calcs": ["mean", "max", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def heatmap(lay: Layout, title: str, metric: str, *, description: str, w: int = 12) -> dict:
    pid, pos = lay.place(w, 9)
    expr = f"sum by (le) (increase({metric}_bucket{{{PSEL}}}[$__rate_interval]))"
    return {
        "type": "heatmap",
        "id": pid,
        "title": title,
        "description": description,
        "gridPos": pos,
        "datasource": DS,
        "maxDataPoints": 120,
        "targets": [target(expr, "{{le}}", fmt="heatmap")],
        "fieldConfig": {
            "defaults": {
                "custom": {
                    "scaleDistribution": {"type": "linear"},
                    "hideFrom": {"legend": False, "tooltip": False, "viz": False},
                }
            },
            "overrides": [],
        },
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {
                "mode": "scheme",
                "scheme": "Oranges",
                "scale": "exponential",
                "exponent": 0.5,
                "steps": 64,
                "fill": "dark-orange",
                "reverse": False,
            },
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "filterValues": {"le": 1e-09},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto", "value": "tokens"},
            "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False},
            "yAxis": {"axisPlacement": "left", "axisLabel": "score (logit)", "reverse": False},
        },
    }


def table(
    lay: Layout,
    title: str,
    targets: list[dict],
    *,
    description: str,
    w: int = 24,
    h: int = 8,
    transformations: list,
    overrides: list | None = None,
) -> dict:
    pid, pos = lay.place(w, h)
    return {
        "type": "table",
        "id": pid,
        "title": title,
        "description": description,
        "gridPos": pos,
        "datasource": DS,
        "targets": targets,
        "transformations": transformations,
        "fieldConfig": {
            "defaults": {"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
            "overrides": overrides or [],
        },
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}},
    }


def query_variable(name: str, label: str, query: str, *, multi: bool, include_all: bool, hide: int = 0) -> dict:
    var = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-var"},
        "refresh": 2,
        "sort": 1,
        "multi": multi,
        "includeAll": include_all,
        "hide": hide,
        "current": {},
        "options": [],
        "regex": "",
    }
    if include_all:
        var["allValue"] = ".*"
        var["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return var


def build() -> dict:
    lay = Layout()
    panels: list[dict] = []

    # -- Status ---------------------------------------------------------------------------
    panels.append(row(lay, "Status"))
    live_expr = (
        f"max(up{{{SEL}}}) + on() ((sum(rate(probewatch_tokens_scored_total{{{SEL}}}[2m])) > bool 0) or on() vector(0))"
    )
    panels.append(
        stat(
            lay,
            "Monitoring",
            live_expr,
            w=4,
            description="LIVE: the sidecar is scraped and scored tokens in the last 2 minutes. UP · NO SCORES: "
            "reachable but nothing scored (attach client off, PROBEWATCH_DISABLE, or no traffic). "
            "DOWN / no data: the sidecar is not scraped.",
            mappings=[
                {
                    "type": "value",
                    "options": {
                        "0": {"text": "DOWN", "color": "red", "index": 0},
                        "1": {"text": "UP · NO SCORES", "color": "orange", "index": 1},
                        "2": {"text": "LIVE", "color": "green", "index": 2},
                    },
                },
                {
                    "type": "special",
                    "options": {"match": "null", "result": {"text": "DOWN", "color": "red", "index": 3}},
                },
            ],
            thresholds=[
                {"color": "red", "value": None},
                {"color": "orange", "value": 1},
                {"color": "green", "value": 2},
            ],
        )
    )
    panels.append(
        state_stat(
            lay,
            "Attach clients",
            f"min(probewatch_client_monitoring_up{{{CSEL}}})",
            down="FAIL-OPEN",
            up="CONNECTED",
            description="probewatch_client_monitoring_up of the inference servers' attach clients (their own "
            "/metrics): CONNECTED when every client streams to its sidecar, FAIL-OPEN when at least "
            "one serves generations unmonitored. No data: no client is scraped.",
        )
    )
    panels.append(
        stat(
            lay,
            "Tokens scored / s",
            f"sum(rate(probewatch_tokens_scored_total{{{SEL}}}[$__rate_interval]))",
            unit="short",
            decimals=1,
            w=4,
            description="Token rows scored per second (residual rows and pushdown projections).",
        )
    )
    panels.append(
        stat(
            lay,
            "Generations / min",
            f"sum(rate(probewatch_generations_total{{{SEL}}}[$__rate_interval])) * 60",
            unit="short",
            decimals=1,
            w=4,
            description="Monitored generations finished per minute (closed + aborted).",
        )
    )
    panels.append(
        stat(
            lay,
            "Alerts in range",
            f"sum(increase(probewatch_alerts_total{{{PSEL}}}[$__range]))",
            unit="short",
            decimals=0,
            w=4,
            thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}],
            description="Alerts raised by the selected probes over the dashboard's time range.",
        )
    )
    panels.append(
        stat(
            lay,
            "Dropped chunks in range",
            f"sum(increase(probewatch_dropped_chunks_total{{{SEL}}}[$__range]))",
            unit="short",
            decimals=0,
            w=4,
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 1}],
            description="Activation chunks not scored over the range (sidecar queue full, or dropped by a client "
            "and reported at close): scores of those generations are partial.",
        )
    )

    # -- Alerts ---------------------------------------------------------------------------
    panels.append(row(lay, "Alerts"))
    panels.append(
        timeseries(
            lay,
            "Alert rate per probe",
            [target(f"sum by (probe) (rate(probewatch_alerts_total{{{PSEL}}}[$__rate_interval])) * 60", "{{probe}}")],
            unit="short",
            w=8,
            description="Alerts per minute per probe (one alert per generation and probe whose aggregate crossed "
            "the bundle's calibrated threshold).",
        )
    )
    panels.append(
        timeseries(
            lay,
            "Flagged fraction of generations",
            [
                target(
                    f"sum by (probe) (rate(probewatch_alerts_total{{{PSEL}}}[$__rate_interval])) / on () group_left "
                    f"sum(rate(probewatch_generations_total{{{SEL}}}[$__rate_interval]))",
                    "{{probe}}",
                )
            ],
            unit="percentunit",
            w=8,
            description="Share of finished generations each probe flagged: what the ProbewatchXxxAlertRateHigh "
            "rules compare against their thresholds.",
        )
    )
    panels.append(
        timeseries(
            lay,
            "Generation score p50 / p90 per probe",
            [
                target(
                    f"histogram_quantile(0.5, sum by (probe, le) (rate(probewatch_generation_score_bucket{{{PSEL}}}"
                    f"[$__rate_interval])))",
                    "p50 {{probe}}",
                    "A",
                ),
                target(
                    f"histogram_quantile(0.9, sum by (probe, le) (rate(probewatch_generation_score_bucket{{{PSEL}}}"
                    f"[$__rate_interval])))",
                    "p90 {{probe}}",
                    "B",
                ),
            ],
            unit="none",
            w=8,
            description="Quantiles of the per-generation aggregate score (calibrated logit: 0 = 50%). A drift "
            "after a model or prompt change shows here before alerts do.",
        )
    )
    panels.append(
        table(
            lay,
            "Recent flagged generations (per probe)",
            [
                target(
                    f"max by (probe) (probewatch_last_alert_timestamp_seconds{{{PSEL}}}) * 1000",
                    "",
                    "A",
                    instant=True,
                    fmt="table",
                ),
                target(
                    f"sum by (probe) (increase(probewatch_alerts_total{{{PSEL}}}[1h]))",
                    "",
                    "B",
                    instant=True,
                    fmt="table",
                ),
                target(
                    f"sum by (probe) (increase(probewatch_alerts_total{{{PSEL}}}[$__range]))",
                    "",
                    "C",
                    instant=True,
                    fmt="table",
                ),
                target(
                    f"max by (probe, behaviour) (probewatch_bundle_info{{{PSEL}}})", "", "D", instant=True, fmt="table"
                ),
            ],
            h=7,
            description="The last alert of every probe and how many it raised recently. The flagged generations "
            "themselves (ids, per-token scores, text) are incidents: `probewatch incidents list "
            "--probe <id>` / `probewatch incidents show <id>` (docs/deploy.md).",
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value #D": True},
                        "indexByName": {"probe": 0, "behaviour": 1, "Value #A": 2, "Value #B": 3, "Value #C": 4},
                        "renameByName": {
                            "Value #A": "Last alert",
                            "Value #B": "Alerts (1h)",
                            "Value #C": "Alerts (range)",
                        },
                    },
                },
                {"id": "sortBy", "options": {"sort": [{"field": "Last alert", "desc": True}]}},
            ],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Last alert"},
                    "properties": [{"id": "unit", "value": "dateTimeAsIso"}],
                }
            ],
        )
    )

    # -- Score distributions, one row per probe ------------------------------------------------
    panels.append(row(lay, "Score distribution: $probe", repeat="probe"))
    panels.append(
        heatmap(
            lay,
            "Token scores: $probe",
            "probewatch_token_score",
            description="Per-token scores of the tokens this probe selects, over time (calibrated logits, "
            "buckets -12..12; the bundle's threshold is in the same units).",
        )
    )
    panels.append(
        heatmap(
            lay,
            "Generation scores: $probe",
            "probewatch_generation_score",
            description="Per-generation aggregate scores at close (mean / max / EMA / rolling-mean-max as the "
            "bundle says).",
        )
    )

    # -- Throughput & latency ---------------------------------------------------------------------
    panels.append(row(lay, "Throughput and latency"))
    panels.append(
        timeseries(
            lay,
            "Tokens scored per second",
            [target(f"sum by (mode) (rate(probewatch_tokens_scored_total{{{SEL}}}[$__rate_interval]))", "{{mode}}")],
            unit="short",
            stack=True,
            w=8,
            description="rows: residual rows scored by the sidecar; projections: pushdown projections computed "
            "on the model's device.",
        )
    )
    panels.append(
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
        )
    )
    panels.append(
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
        )
    )
    panels.append(
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
        )
    )
    panels.append(
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
        )
    )

    # -- Errors and delivery ------------------------------------------------------------------------
    panels.append(row(lay, "Errors and alert delivery"))
    panels.append(
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
        )
    )
    panels.append(
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
        )
    )
    panels.append(
        timeseries(
            lay,
            "Attach client monitoring up",
            [target(f"probewatch_client_monitoring_up{{{CSEL}}}", "{{instance}}")],
            unit="short",
            w=8,
            description="1 while an inference server's attach client is connected to its sidecar, 0 while it "
            "serves unmonitored (fail-open).",
        )
    )

    # -- Bundles ----------------------------------------------------------------------------------
    panels.append(row(lay, "Bundles"))
    panels.append(
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
        )
    )

    # -- Incident review (probewatch review's /metrics, its own job) --------------------------------
    panels.append(row(lay, "Incident review"))
    panels.append(
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
        )
    )
    panels.append(
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
        )
    )
    panels.append(
        state_stat(
            lay,
            "Review store",
            f"min(probewatch_review_store_up{{{RSEL}}})",
            down="UNREACHABLE",
            up="OK",
            description="Whether the review app reads the incident store (the database the sidecars write).",
        )
    )
    panels.append(
        timeseries(
            lay,
            "Backlog by status",
            [target(f"max by (status) (probewatch_review_incidents{{{RSEL}}})", "{{status}}")],
            w=12,
            description="Incidents per review status. A rising `open` line means alerts arrive faster than "
            "reviewers label them (ProbewatchReviewBacklogGrowing).",
        )
    )
    lay.newline()
    panels.append(
        timeseries(
            lay,
            "Reviewed precision per probe",
            [target(f'max by (probe) (probewatch_review_precision{{{RSEL}, probe=~"$probe"}})', "{{probe}}")],
            unit="percentunit",
            description="true positives / (true + false positives) among reviewed incidents, per probe. A probe "
            "low here alerts on benign traffic: recalibrate it on the reviewed incidents "
            "(probewatch incidents export --labelled, then probewatch calibrate --extra-data).",
        )
    )
    panels.append(
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
        )
    )

    variables = [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "includeAll": False,
            "multi": False,
            "options": [],
            "refresh": 1,
            "regex": "",
        },
        query_variable("job", "Job", "label_values(probewatch_bundle_info, job)", multi=False, include_all=False),
        query_variable(
            "namespace",
            "Namespace",
            'label_values(probewatch_bundle_info{job=~"$job"}, namespace)',
            multi=True,
            include_all=True,
        ),
        query_variable(
            "instance",
            "Sidecar",
            'label_values(probewatch_bundle_info{job=~"$job", namespace=~"$namespace"}, instance)',
            multi=True,
            include_all=True,
        ),
        query_variable(
            "probe", "Probe", f"label_values(probewatch_bundle_info{{{SEL}}}, probe)", multi=True, include_all=True
        ),
    ]

    return {
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "heatmap", "name": "Heatmap", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "table", "name": "Table", "version": ""},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                {
                    "datasource": DS,
                    "enable": True,
                    "hide": False,
                    "iconColor": "red",
                    "name": "probewatch alerts firing",
                    "expr": 'ALERTS{alertname=~"Probewatch.*", alertstate="firing"}',
                    "step": "60s",
                    "titleFormat": "{{alertname}}",
                    "textFormat": "{{probe}} {{instance}}",
                    "useValueForTime": False,
                },
            ]
        },
        "description": "probewatch sidecar: live probe scores, alerts, throughput, latency and health "
        "(deception / refusal / alignment-faking probes on an LLM's residual stream).",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["probewatch", "llm", "safety"],
        "templating": {"list": variables},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "probewatch",
        "uid": UID,
        "version": 1,
        "weekStart": "",
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the checked-in JSON differs")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python deploy/grafana/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
