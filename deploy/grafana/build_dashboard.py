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

The panel helpers (layout, one function per panel type) are in dashboard_panels.py next to this
script, the rows in dashboard_probe_rows.py (status, alerts, score distributions) and
dashboard_service_rows.py (throughput, errors, bundles, incident review); this script adds the
template variables and the dashboard frame.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The helper modules sit next to this script; tests (and other tools) load it by path, not as __main__.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from dashboard_panels import DS, SEL, Layout, query_variable  # noqa: E402
from dashboard_probe_rows import alerts_row, drift_row, score_distribution_row, status_row  # noqa: E402
from dashboard_service_rows import bundles_row, errors_row, review_row, throughput_row  # noqa: E402

OUT = HERE / "probewatch-dashboard.json"
UID = "probewatch-sidecar"

# The dashboard's rows, top to bottom; each takes the shared Layout and returns its panels.
ROWS = (
    status_row,
    alerts_row,
    drift_row,
    score_distribution_row,
    throughput_row,
    errors_row,
    bundles_row,
    review_row,
)


def panels() -> list[dict]:
    """Every panel of every row, with ids and grid positions handed out in order."""
    lay = Layout()
    return [panel for make_row in ROWS for panel in make_row(lay)]


def variables() -> list[dict]:
    """The template variables: datasource, job, namespace, instance (sidecar) and probe."""
    return [
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


def requires() -> list[dict]:
    """The Grafana version, datasource and panel plugins the dashboard needs."""
    return [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        {"type": "panel", "id": "heatmap", "name": "Heatmap", "version": ""},
        {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
        {"type": "panel", "id": "table", "name": "Table", "version": ""},
        {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
    ]


def annotations() -> dict:
    """Grafana's built-in annotations plus the firing probewatch alerts."""
    return {
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
    }


def build() -> dict:
    """The whole dashboard: frame, rows of panels and template variables."""
    return {
        "__requires": requires(),
        "annotations": annotations(),
        "description": "probewatch sidecar: live probe scores, alerts, throughput, latency and health "
        "(deception / refusal / alignment-faking probes on an LLM's residual stream).",
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": panels(),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["probewatch", "llm", "safety"],
        "templating": {"list": variables()},
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
