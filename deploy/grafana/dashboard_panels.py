"""Panel helpers of the probewatch dashboard (deploy/grafana/build_dashboard.py builds the dashboard).

The shared label matchers, a grid layout that hands out panel ids and positions, and one function
per Grafana panel type (row, stat, timeseries, heatmap, table) plus the query template variable.
"""

from __future__ import annotations

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
