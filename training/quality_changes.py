"""The summary table of docs/quality.md as "previous run → this run", one row per probe (quality.md.j2).

The previous run is the report.json each probe had in docs/quality/ before this run replaced it (kept by
`bench quality` in runs/quality/baseline.json). Older reports are read as JSON, key by key, so a report
written before a field existed gives "—" for that field instead of failing the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from probewatch.training.report import TrainReport

__all__ = ["CHANGE_HELPERS", "same_data_change", "summary_change"]

#: the summary table's quantities, in its column order
COLUMNS = (
    "in-distribution AUROC",
    "held-out-kind AUROC (mean)",
    "out-of-distribution AUROC",
    "shipped threshold",
    "recall",
    "flagged test negatives",
    "flagged held-out control",
    "layer · method · aggregation",
)


def _get(report: Mapping[str, Any], *path: str) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _num(x: Any, digits: int = 3) -> str:
    return "—" if x is None else f"{float(x):.{digits}f}"


def _pct(x: Any) -> str:
    return "—" if x is None else f"{100 * float(x):.0f}%"


def _arrow(before: str, after: str) -> str:
    return after if before == after else f"{before} → {after}"


def _ood(report: Mapping[str, Any]) -> str:
    values = _get(report, "metrics", "auroc_ood") or {}
    return ", ".join(f"{k} {_num(v)}" for k, v in values.items()) or "—"


def _ood_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """Out-of-distribution AUROC as "set before → after" per set (one value where it did not change), so a
    long list with one moved set does not print twice; sets of either run, this run's first."""
    b = _get(before, "metrics", "auroc_ood") or {}
    a = _get(after, "metrics", "auroc_ood") or {}
    names = list(a) + [k for k in b if k not in a]
    return ", ".join(f"{k} {_arrow(_num(b.get(k)), _num(a.get(k)))}" for k in names) or "—"


def _setup(report: Mapping[str, Any]) -> str:
    chosen = _get(report, "selection", "chosen") or {}
    layers = _get(report, "multi_layer", "layers") if _get(report, "multi_layer", "shipped") else None
    layer = "+".join(str(x) for x in layers) if layers else str(chosen.get("layer", "—"))
    return f"L{layer} · {chosen.get('method', '—')} · {chosen.get('aggregation', '—')}"


def _cells(report: Mapping[str, Any]) -> list[str]:
    shipped = _get(report, "operating_point", "shipped") or {}
    return [
        _num(_get(report, "metrics", "auroc")),
        _num(_get(report, "metrics", "auroc_heldout_kind")),
        _ood(report),
        _num(_get(report, "operating_point", "threshold"), 2),
        _num(shipped.get("recall")),
        _pct(shipped.get("fpr_negatives")),
        _pct(shipped.get("fpr_control_heldout")),
        _setup(report),
    ]


def summary_change(report: TrainReport, previous: Mapping[str, Any] | TrainReport | None) -> list[str] | None:
    """The summary row's cells as "before → after" (just the value where it did not change); None without a
    previous report of this probe."""
    if previous is None:
        return None
    before = previous.to_json() if isinstance(previous, TrainReport) else previous
    after = report.to_json()
    cells = [_arrow(b, a) for b, a in zip(_cells(before), _cells(after))]
    cells[COLUMNS.index("out-of-distribution AUROC")] = _ood_change(before, after)
    return cells


def same_data_change(report: TrainReport) -> list[tuple[str, str, str]]:
    """(bundle, test split, out-of-distribution sets) for each bundle the run compared itself with
    (`--compare-with`: the shipped bundle it replaced, on this run's own sets), as "that bundle → this run"."""
    from probewatch.training.compare import TEST_SET, befores  # numpy/torch scoring module: only when rendering

    this = report.to_json()
    rows = []
    for c in report.compared or []:
        layers = "+".join(str(x) for x in c.get("layers") or []) or "—"
        name = f"`{c.get('probe_id') or c['path']}` L{layers}" + (
            f", {c['created_at'][:10]}" if c.get("created_at") else ""
        )
        if c.get("skipped"):
            rows.append((name, f"not scored: {c['skipped']}", "—"))
            continue
        now = {TEST_SET: _get(this, "metrics", "auroc"), **(_get(this, "metrics", "auroc_ood") or {})}
        sets = befores(c)
        chosen_on = set(c.get("selected_on") or [])  # a before that is its run's best of sweep on that set
        cells = {
            k: f"{_arrow(_num(v, 4), _num(now.get(k), 4))}{_interval(ci)}" + (SELECTED_ON if k in chosen_on else "")
            for k, (v, ci) in sets.items()
        }
        ood = ", ".join(f"{k} {cell}" for k, cell in cells.items() if k != TEST_SET)
        test = cells.get(TEST_SET) or (
            f"{_num(now[TEST_SET], 4)} (the replaced bundle's {_num(c.get('test_auroc'), 4)} is no before: "
            "trained on another pool)"
        )
        rows.append((name, test, ood or "—"))
    return rows


#: beside a before the replaced bundle's own run chose it on (compare.py `selected_on`)
SELECTED_ON = " (the replaced bundle was chosen on this set: its number is the best of its sweep there)"


def _interval(ci: Any) -> str:
    """' (+0.0189, 95% CI +0.0130 to +0.0261)': the paired change and its bootstrap interval, if measured."""
    return "" if not ci else f" ({ci[0]:+.4f}, 95% CI {ci[1]:+.4f} to {ci[2]:+.4f})"


CHANGE_HELPERS: dict[str, Any] = {
    "summary_change": summary_change,
    "summary_change_columns": COLUMNS,
    "same_data_change": same_data_change,
}
