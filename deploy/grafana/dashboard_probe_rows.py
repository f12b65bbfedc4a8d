"""Dashboard rows about what the probes see: status, alerts and score distributions.

One function per row; each returns the row panel followed by its panels, placed by the shared
Layout (the order of the calls fixes panel ids and grid positions).
"""

from __future__ import annotations

from dashboard_panels import CSEL, PSEL, SEL, Layout, heatmap, row, stat, state_stat, table, target, timeseries


def monitoring_stat(lay: Layout) -> dict:
    """LIVE / UP · NO SCORES / DOWN: whether the sidecar is scraped and scores tokens."""
    live_expr = (
        f"max(up{{{SEL}}}) + on() ((sum(rate(probewatch_tokens_scored_total{{{SEL}}}[2m])) > bool 0) or on() vector(0))"
    )
    return stat(
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


def status_row(lay: Layout) -> list[dict]:
    """Health at a glance: monitoring state, attach clients, throughput, alerts and drops."""
    return [
        row(lay, "Status"),
        monitoring_stat(lay),
        state_stat(
            lay,
            "Attach clients",
            f"min(probewatch_client_monitoring_up{{{CSEL}}})",
            down="FAIL-OPEN",
            up="CONNECTED",
            description="probewatch_client_monitoring_up of the inference servers' attach clients (their own "
            "/metrics): CONNECTED when every client streams to its sidecar, FAIL-OPEN when at least "
            "one serves generations unmonitored. No data: no client is scraped.",
        ),
        stat(
            lay,
            "Tokens scored / s",
            f"sum(rate(probewatch_tokens_scored_total{{{SEL}}}[$__rate_interval]))",
            unit="short",
            decimals=1,
            w=4,
            description="Token rows scored per second (residual rows and pushdown projections).",
        ),
        stat(
            lay,
            "Generations / min",
            f"sum(rate(probewatch_generations_total{{{SEL}}}[$__rate_interval])) * 60",
            unit="short",
            decimals=1,
            w=4,
            description="Monitored generations finished per minute (closed + aborted).",
        ),
        stat(
            lay,
            "Alerts in range",
            f"sum(increase(probewatch_alerts_total{{{PSEL}}}[$__range]))",
            unit="short",
            decimals=0,
            w=4,
            thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 1}],
            description="Alerts raised by the selected probes over the dashboard's time range.",
        ),
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
        ),
    ]


def recent_alerts_table(lay: Layout) -> dict:
    """The last alert of every probe and its alert counts over the last hour and the range."""
    return table(
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
            target(f"max by (probe, behaviour) (probewatch_bundle_info{{{PSEL}}})", "", "D", instant=True, fmt="table"),
            target(
                f"sum by (probe) (increase(probewatch_uncertain_total{{{PSEL}}}[$__range]))",
                "",
                "E",
                instant=True,
                fmt="table",
            ),
        ],
        h=7,
        description="The last alert of every probe and how many it raised recently. The flagged generations "
        "themselves (ids, per-token scores, text) are incidents: `probewatch incidents list "
        "--probe <id>` / `probewatch incidents show <id>` (docs/deploy.md). Uncertain: generations that ended "
        "inside the probe's uncertainty band below its threshold (low-priority incidents, no alert; "
        "`probewatch incidents list --priority low`; always 0 for a probe without a band).",
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value #D": True},
                    "indexByName": {
                        "probe": 0,
                        "behaviour": 1,
                        "Value #A": 2,
                        "Value #B": 3,
                        "Value #C": 4,
                        "Value #E": 5,
                    },
                    "renameByName": {
                        "Value #A": "Last alert",
                        "Value #B": "Alerts (1h)",
                        "Value #C": "Alerts (range)",
                        "Value #E": "Uncertain (range)",
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


def alerts_row(lay: Layout) -> list[dict]:
    """Alert rate, flagged fraction and generation-score quantiles per probe, then the recent alerts."""
    return [
        row(lay, "Alerts"),
        timeseries(
            lay,
            "Alert rate per probe",
            [target(f"sum by (probe) (rate(probewatch_alerts_total{{{PSEL}}}[$__rate_interval])) * 60", "{{probe}}")],
            unit="short",
            w=8,
            description="Alerts per minute per probe (one alert per generation and probe whose aggregate crossed "
            "the bundle's calibrated threshold).",
        ),
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
        ),
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
        ),
        recent_alerts_table(lay),
    ]


def drift_row(lay: Layout) -> list[dict]:
    """Monitor the monitor: each probe's live score drift from its calibration set, and its alert rate
    against the rate expected at the shipped threshold (server/sidecar/drift.py)."""
    return [
        row(lay, "Calibration drift"),
        timeseries(
            lay,
            "Score drift from calibration (PSI) per probe",
            [target(f"max by (probe) (probewatch_probe_score_psi{{{PSEL}}})", "{{probe}}")],
            unit="none",
            w=12,
            description="Population stability index of each probe's last --drift-window generation scores against "
            "its bundle's calibration score bins: about 0.02-0.1 from sampling noise, above 0.25 (the "
            "ProbewatchProbeScoreDrift rule) the traffic no longer scores like the set the threshold was "
            "calibrated on, so the shipped false-positive rate no longer holds. No line: a bundle exported "
            "without a calibration reference, or fewer than 100 generations seen.",
        ),
        timeseries(
            lay,
            "Alert rate: live vs calibrated",
            [
                target(f"max by (probe) (probewatch_probe_alert_rate{{{PSEL}}})", "live {{probe}}", "A"),
                target(f"max by (probe) (probewatch_probe_expected_alert_rate{{{PSEL}}})", "calibrated {{probe}}", "B"),
            ],
            unit="percentunit",
            w=12,
            description="Share of each probe's drift-window generations that alerted, beside the share of its "
            "calibration set at or above the shipped threshold. ProbewatchProbeAlertRateAboveCalibration "
            "fires when live runs at more than 3x calibrated (prometheusRule.drift.alertRateRatio).",
        ),
    ]


def score_distribution_row(lay: Layout) -> list[dict]:
    """Token and generation score heatmaps, one row per selected probe (Grafana repeats the row)."""
    return [
        row(lay, "Score distribution: $probe", repeat="probe"),
        heatmap(
            lay,
            "Token scores: $probe",
            "probewatch_token_score",
            description="Per-token scores of the tokens this probe selects, over time (calibrated logits, "
            "buckets -12..12; the bundle's threshold is in the same units).",
        ),
        heatmap(
            lay,
            "Generation scores: $probe",
            "probewatch_generation_score",
            description="Per-generation aggregate scores at close (mean / max / EMA / rolling-mean-max as the "
            "bundle says).",
        ),
    ]
