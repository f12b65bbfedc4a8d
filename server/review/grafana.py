"""Links from the review app to the sidecar's Grafana dashboard (deploy/grafana/probewatch-dashboard.json).

A reviewer looking at one generation wants the fleet around it: was the probe's alert rate up at
that time, was the sidecar shedding, did scores drift? The link opens the dashboard on the time
window around the alert (± WINDOW) with the probes as the dashboard's multi-value `probe` variable;
from the queue, on the queue's time filter (default: the last 24 hours) and its probe filter.
The Grafana base URL is the operator's (`--grafana-url` / $PROBEWATCH_GRAFANA_URL / Helm
`review.grafanaUrl`); without one the app shows no links.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from urllib.parse import urlencode

#: the `uid` of deploy/grafana/probewatch-dashboard.json (a test keeps them equal)
DASHBOARD_UID = "probewatch-sidecar"
WINDOW = _dt.timedelta(minutes=15)


def _ms(when: _dt.datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return int(when.timestamp() * 1000)


def _parse(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def dashboard_url(base: str, start: int | str, end: int | str, probes: Sequence[str] = ()) -> str:
    """The dashboard at `base` from `start` to `end` (epoch ms, or Grafana's relative `now-24h`)
    with `var-probe` per probe (none: the variable's own default, i.e. all probes)."""
    params: list[tuple[str, str]] = [("from", str(start)), ("to", str(end))]
    params += [("var-probe", p) for p in dict.fromkeys(probes)]
    return f"{base.rstrip('/')}/d/{DASHBOARD_UID}?{urlencode(params)}"


def incident_window_url(base: str, created_at: str, probes: Sequence[str]) -> str:
    """The dashboard ± WINDOW around an alert raised at `created_at` (the store's ISO-8601 text)."""
    at = _parse(created_at)
    return dashboard_url(base, _ms(at - WINDOW), _ms(at + WINDOW), probes)


def queue_url(base: str, since: str | None, until: str | None, probe: str | None) -> str:
    """The dashboard over the queue's time filter (stored form; default the last 24 h) and probe."""
    start: int | str = _ms(_parse(since)) if since else "now-24h"
    end: int | str = _ms(_parse(until)) if until else "now"
    return dashboard_url(base, start, end, [probe] if probe else [])
