"""docs/quality.md from training reports: a pure function of the reports (no model, no clock).

`probewatch bench quality` (benchmarks/quality.py) runs the training and collects the
reports; `render_markdown` turns them into the document, so the layout can be tested and
re-rendered (`--render-only`) without training anything.

The document's text and layout are the Jinja2 templates `training/templates/quality.md.j2` (and
`quality_sae.md.j2`, the SAE-vs-linear section it includes); this module gives them the typed
reports (`TrainReport`) and the few numbers that take more than a lookup (views of the layer
sweep, the best configurations, the before/after rows, verdicts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from probewatch.behaviours import DEFAULT_PROBE_IDS
from probewatch.training.calibration import MAX_FLAGGED_NEGATIVES, MIN_RECALL
from probewatch.training.doc_numbers import num, pct
from probewatch.training.estimators import C_METHODS
from probewatch.training.multilayer_sources import REPLAYED_BY, loss_text
from probewatch.training.plots import layer_view, sweep_mode
from probewatch.training.quality_changes import CHANGE_HELPERS
from probewatch.training.quality_extras_doc import EXTRA_HELPERS
from probewatch.training.quality_sources import SELECTION_NAMES, SOURCE_HELPERS, c_setting
from probewatch.training.report import Metrics, OperatingSummary, TrainReport, as_report
from probewatch.training.sweep import checked_per_kind

# the linear probe each behaviour's SAE-feature probes are compared with
LINEAR_FOR_BEHAVIOUR = DEFAULT_PROBE_IDS
BASIS_TEXT = {
    "heldout_kind": "held-out-kind AUROC",
    "heldout_source": "held-out-source AUROC (worst source first, then the mean; see the nested estimate)",
    "ood": "the mean of validation and out-of-distribution AUROC",
    "validation": "validation AUROC",
}
#: probes renamed by issue 14: where a baseline report of the new id is missing, use the old one's kinds
RENAMED_FROM = {"monitored-framing": ("alignment-faking",), "eval-awareness": ("alignment-faking",)}
TEMPLATES = Path(__file__).parent / "templates"
DOCUMENT = "quality.md.j2"
SAE_SECTION = "quality_sae.md.j2"
DEFAULT_PLOTS = ("auroc_by_layer.png", "roc.png", "score_hist.png")

#: a report as given: typed, or its JSON (read from a report.json)
ReportLike = TrainReport | Mapping[str, Any]


@dataclass
class RunInfo:
    """What the document says about the run that produced the reports."""

    model_id: str
    fingerprint: str
    n_layers: int
    d_model: int
    total_s: float
    generated_at: str
    cpu_count: int
    machine: str


def _metrics_json(m: Metrics | Mapping[str, Any]) -> Mapping[str, Any]:
    """A linear probe's Metrics or an SAE-feature probe summary's metrics dict, read alike."""
    return m.to_json() if isinstance(m, Metrics) else m


def _kind_range(per_kind: Mapping[str, Any]) -> str:
    vals = [v for v in per_kind.values() if v is not None]
    return f"{min(vals):.2f}–{max(vals):.2f}" if vals else "n/a"


def _heldout(metrics: Metrics | Mapping[str, Any]) -> str:
    m = _metrics_json(metrics)
    if m.get("auroc_heldout_kind") is None:
        return "— (one kind)"
    return f"{num(m['auroc_heldout_kind'])} ({_kind_range(m['auroc_heldout_kind_per_kind'])})"


def _ood(metrics: Metrics | Mapping[str, Any]) -> str:
    m = _metrics_json(metrics)
    recalls = m.get("recall_at_fpr_control_ood") or {}
    parts = [f"{k} {num(v)} ({num(recalls.get(k))})" for k, v in (m.get("auroc_ood") or {}).items()]
    return ", ".join(parts) or "—"


def _tokens(token_selection: str) -> str:
    return SELECTION_NAMES.get(token_selection, token_selection)


def _training_mode(per_token: bool) -> str:
    return "per-token" if per_token else "per-example"


def _minutes(timings: Mapping[str, float], key: str) -> str:
    return f"{timings.get(key, 0) / 60:.1f}"


# -- baseline (the previous run) ---------------------------------------------------------------------
def baseline_metrics(baseline: Mapping[str, ReportLike] | None) -> dict[str, Metrics]:
    """The metrics of each report of the previous run: all the before/after comparison reads (so a
    previous report is usable even where other parts of its layout have changed since)."""
    return {
        name: r.metrics if isinstance(r, TrainReport) else Metrics(**r["metrics"])
        for name, r in (baseline or {}).items()
    }


def baseline_kinds(probe_id: str, baseline: Mapping[str, ReportLike | Metrics]) -> dict[str, float | None]:
    """Held-out-kind AUROC per kind of the previous run of this probe (or of the probe it was renamed from)."""
    metrics = {k: v if isinstance(v, Metrics) else baseline_metrics({k: v})[k] for k, v in baseline.items()}
    if probe_id in metrics:
        return dict(metrics[probe_id].auroc_heldout_kind_per_kind or {})
    out: dict[str, float | None] = {}
    for old in RENAMED_FROM.get(probe_id, ()):
        if old in metrics:
            out.update(metrics[old].auroc_heldout_kind_per_kind or {})
    return out


def _before_after_rows(r: TrainReport, baseline: Mapping[str, Metrics]) -> list[dict[str, Any]]:
    """Per kind (before, after, change); then the mean over kinds (`kind` None) when both runs have one."""
    before = baseline_kinds(r.probe_id, baseline)
    after = r.metrics.auroc_heldout_kind_per_kind or {}
    rows: list[dict[str, Any]] = []
    for kind, value in after.items():
        b = before.get(kind)
        change = "new" if b is None else (f"{value - b:+.3f}" if value is not None else "n/a")
        rows.append({"kind": kind, "before": b, "after": value, "change": change})
    old = baseline.get(r.probe_id)
    if old is not None and old.auroc_heldout_kind is not None and r.metrics.auroc_heldout_kind is not None:
        rows.append(
            {
                "kind": None,
                "same_kinds": set(old.auroc_heldout_kind_per_kind or {}) == set(after),
                "before": old.auroc_heldout_kind,
                "after": r.metrics.auroc_heldout_kind,
                "change": f"{r.metrics.auroc_heldout_kind - old.auroc_heldout_kind:+.3f}",
            }
        )
    return rows


# -- thresholds section --------------------------------------------------------------------------------
def _control_kinds(results: Mapping[str, TrainReport]) -> list[str]:
    """Every kind of control traffic, in order of first appearance."""
    return list(dict.fromkeys(k for r in results.values() for k in r.operating_point.control_per_kind))


def _control_cells(op: OperatingSummary, kinds: list[str]) -> list[str]:
    return [pct(op.control_per_kind[k].fpr if k in op.control_per_kind else None) for k in kinds]


def _aims_met(op: OperatingSummary) -> bool:
    """Recall at least MIN_RECALL with at most MAX_FLAGGED_NEGATIVES of the test negatives flagged, at the
    shipped threshold (the aims calibration builds the threshold and its band for)."""
    s = op.shipped
    return (
        s.recall is not None
        and s.recall >= MIN_RECALL
        and s.fpr_negatives is not None
        and s.fpr_negatives <= MAX_FLAGGED_NEGATIVES
    )


def _band_cell(r: TrainReport) -> str:
    """'≥ 0.43 (recall): 0.62 / 24% / 4%': the band's edge, why it is there, and recall / test negatives /
    held-out control recorded at all (flagged or uncertain); '—' without a band."""
    from probewatch.training.band import CONTROL, NEGATIVES, POSITIVES

    edge, band = r.threshold.uncertain_from, r.operating_point.band or {}
    if edge is None:
        return "—"
    shares = band.get("shares") or {}
    recorded = [(shares.get(k) or {}).get("recorded") for k in (POSITIVES, NEGATIVES, CONTROL)]
    why = {"control_threshold": "control", "recall": "recall"}.get(band.get("set_by") or "", "")
    head = f"≥ {edge:.2f}" + (f" ({why})" if why else "")
    if recorded[0] is None:  # a report written before the band's shares were kept in it
        return head
    return f"{head}: {num(recorded[0])} / {pct(recorded[1])} / {pct(recorded[2])}"


# -- per-behaviour section -------------------------------------------------------------------------------
def _shipped_layers(r: TrainReport) -> list[int]:
    """The layers the shipped bundle reads: the concatenated layers where a multi-layer probe shipped."""
    multi = r.multi_layer or {}
    return list(multi["layers"]) if multi.get("shipped") and multi.get("layers") else [r.chosen["layer"]]


def _layer_cell(r: TrainReport) -> str:
    return "+".join(str(x) for x in _shipped_layers(r))


def _width_cell(r: TrainReport, d_model: int) -> str:
    """How many residual dimensions the shipped bundle reads: d_model per layer it concatenates."""
    return f"{d_model * len(_shipped_layers(r))} dims"


def _augment_text(r: TrainReport) -> str:
    """The copies training/augment.py added to the pool (counted in the kinds table), or nothing."""
    added = {k: v for k, v in (r.data.notes.get("augmented") or {}).items() if v}
    if not added:
        return ""
    parts = ", ".join(f"{n} {name}" for name, n in added.items())
    return (
        f" The pool holds augmented copies ({parts}; `training/augment.py`): answers of both labels behind a"
        ' sincerity assertion such as "Honestly, ", kept with their originals in every split and counted in the'
        " kinds below; the evasion section's assertion is not among them."
    )


def _layer_text(r: TrainReport) -> str:
    layers = _shipped_layers(r)
    if len(layers) == 1:
        return f"layer {layers[0]}"
    return (
        f"layers {', '.join(str(x) for x in layers)} (one probe on their concatenation, see multi-layer probes below)"
    )


def _aggregation_text(r: TrainReport) -> str:
    method = r.chosen["aggregation"]
    if method == "softmax":
        return f"{method} (temperature {r.aggregation.temperature:.3g} logits)"
    if method == "rolling_mean_max":
        return f"{method} (window {r.aggregation.window})"
    return method


def _c_text(c: Mapping[str, Any]) -> str:
    """', C=0.01' after a method name in the prose, or ''."""
    return f", {c_setting(c)}" if c_setting(c) else ""


def _kind_rows(r: TrainReport, before: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """One row per data kind of the pool: size, test and held-out AUROC, the previous run, the shipped threshold."""
    train_only = set(r.data.train_only_kinds)
    per_kind_test = r.metrics.auroc_test_per_kind
    rows = []
    for kind, info in r.data.kinds.items():
        pk = r.operating_point.per_kind.get(kind)
        rows.append(
            {
                "label": f"{kind} (auxiliary, training only)" if kind in train_only else kind,
                "n": info.n,
                "groups": info.groups,
                "test_auroc": per_kind_test.get(kind),
                "heldout_auroc": r.heldout_kinds.get(kind, {}).get("auroc"),
                "previous": (num(before.get(kind)) if kind in before else "new"),
                "at_shipped": f"{num(pk.recall)} / {pct(pk.fpr_negatives)}" if pk else "n/a",
            }
        )
    return rows


def _layer_table(r: TrainReport) -> dict[str, Any]:
    """The layer sweep at the chosen token selection and aggregation: per layer, per method
    `validation / held-out kinds` (or `/ ood` when the pool has one kind)."""
    view = layer_view(r.sweep, r.chosen)
    methods = sorted({method for _, method in view})
    heldout = any(s["heldout_kind_auroc"] is not None for s in view.values())
    rows = []
    for layer in sorted({layer for layer, _ in view}):
        cells = []
        for method in methods:
            row = view.get((layer, method))
            if row is None:
                cells.append("—")
                continue
            other = row["heldout_kind_auroc"] if heldout else row.get("ood_mean")
            cells.append(f"{num(row['val_auroc'])} / {num(other)}")
        rows.append((layer, cells))
    return {"second": "held-out kinds" if heldout else "ood", "methods": methods, "rows": rows}


def _alternatives(r: TrainReport) -> dict[str, list]:
    """Aggregations, C values and token selections at the chosen layer and method."""
    sweep, c = r.sweep, r.chosen

    def same(s: dict, *keys: str) -> bool:
        return all(s.get(k) == c.get(k) for k in keys)

    at = [s for s in sweep if same(s, "layer", "method", "token_selection", "per_token", "C")]
    by_c = [
        s
        for s in sweep
        if s["method"] == c["method"]
        and c["method"] in C_METHODS
        and same(s, "layer", "token_selection", "per_token", "aggregation")
    ]
    return {
        "aggregations": at if len({s["aggregation"] for s in at}) > 1 else [],
        "by_c": (
            sorted(by_c, key=lambda s: s["C"])
            if c["method"] in C_METHODS and len({s.get("C") for s in by_c}) > 1
            else []
        ),
        "best": _best_per_selection(sweep),
    }


def _best_per_selection(sweep: list[dict[str, Any]]) -> list[tuple[tuple[str, bool], dict[str, Any]]]:
    """The best row per (token selection, training mode), when more than one was tried."""
    best: dict[tuple[str, bool], dict] = {}
    for s in sweep:
        key = (s["token_selection"], s["per_token"])
        score = s["heldout_kind_auroc"] if s["heldout_kind_auroc"] is not None else (s.get("ood_mean") or 0)
        cur = best.get(key)
        cur_score = None if cur is None else (cur["heldout_kind_auroc"] if cur["heldout_kind_auroc"] is not None else 0)
        if cur is None or (score or 0) > (cur_score or 0):
            best[key] = s
    return list(best.items()) if len(best) > 1 else []


def _multi_layer_view(ml: dict[str, Any] | None) -> dict[str, Any] | None:
    if not ml:
        return None
    b, concat, ens = ml["best_single"], ml["concat"], ml["ensemble"]
    gain = max(concat["heldout_kind_auroc"] or 0, ens["heldout_kind_auroc"] or 0) - (b["heldout_kind_auroc"] or 0)
    search = ml.get("search") or {}

    def both_sides(r: dict[str, Any]) -> float | None:  # held-out kinds with another source's rows of each kind
        checked = checked_per_kind(r.get("heldout_per_kind") or {}, r.get("heldout_other_source") or {})
        return float(np.mean(list(checked.values()))) if r.get("heldout_other_source") and checked else None

    return {
        **ml,
        "best": b,
        "gain": gain,
        "shipped": bool(ml.get("shipped")),
        "search_start": search.get("start"),
        "search_n": len(search.get("trail") or []),
        "best_both": both_sides(b),
        "concat_both": both_sides(concat),
        "sources": ml.get("heldout_source"),  # the concat on the held-out-source folds (multilayer_sources)
        "sources_by": ml.get(REPLAYED_BY),  # the check was replayed after the run (training/replay.py)
        "losses": _losses_text((ml.get("heldout_source") or {}).get("losses") or {}),
    }


def _losses_text(losses: Mapping[str, list[float]]) -> str:
    """'greenblatt_prompts -0.043 (95% CI -0.101 to +0.016)': where the concat scored below the single probe."""
    return ", ".join(loss_text(name, loss) for name, loss in sorted(losses.items()))


# -- SAE-feature probes ----------------------------------------------------------------------------------
def _sae_names(sae_results: Mapping[str, dict]) -> str:
    return ", ".join(f"`{n}`" for n in sorted({r["sae"] for r in sae_results.values()}))


def _sae_table(
    results: Mapping[str, TrainReport], sae_results: Mapping[str, dict]
) -> list[tuple[str, TrainReport | None, list[tuple[str, dict]]]]:
    """Per behaviour with SAE-feature probes: (behaviour, its linear probe's report if present, [(id, summary)])."""
    out = []
    for behaviour, linear_name in LINEAR_FOR_BEHAVIOUR.items():
        saes = [(sid, r) for sid, r in sae_results.items() if r["behaviour"] == behaviour]
        if saes:
            out.append((behaviour, results.get(linear_name), saes))
    return out


def _sae_reading(results: Mapping[str, TrainReport], sae_results: Mapping[str, dict]) -> dict[str, Any]:
    """Per behaviour, computed from the numbers: is the best SAE probe within 0.01 AUROC of the linear one?"""
    parts = []
    for behaviour, linear_name in LINEAR_FOR_BEHAVIOUR.items():
        saes = [r for r in sae_results.values() if r["behaviour"] == behaviour and r["metrics"]["auroc"] is not None]
        if not saes or linear_name not in results:
            continue
        best = max(saes, key=lambda r: r["metrics"]["auroc"])
        lin = results[linear_name].metrics.auroc
        gap = lin - best["metrics"]["auroc"]
        verdict = "matches" if abs(gap) <= 0.01 else ("trails" if gap > 0 else "beats")
        parts.append({"behaviour": behaviour, "best": best, "verdict": verdict, "linear_auroc": lin})
    return {"parts": parts, "all_trail": bool(parts) and all(p["verdict"] == "trails" for p in parts)}


# -- caveats ------------------------------------------------------------------------------------------------
def _weak_kinds(r: TrainReport, below: float = 0.8) -> list[str]:
    per = r.metrics.auroc_heldout_kind_per_kind or {}
    return [f"{k} ({v:.2f})" for k, v in per.items() if v is not None and v < below]


def _by_behaviour(results: Mapping[str, TrainReport]) -> dict[str | None, TrainReport]:
    return {r.behaviour: r for r in results.values()}


def _diagnostics_of(results: Mapping[str, TrainReport], diagnostics: Mapping[str, dict], behaviour: str) -> dict | None:
    """The lexical-confound check of the first probe of `behaviour`."""
    return diagnostics.get(next(name for name, r in results.items() if r.behaviour == behaviour))


# -- rendering ---------------------------------------------------------------------------------------------
def _negatives_rule(op: OperatingSummary) -> str:
    """How the negatives threshold was set: pooled (runs before the per-kind limit) or per kind, naming the kind
    whose own negatives set it."""
    if op.hard_negative_threshold is None or op.hard_negative_fpr_target is None:
        return ""
    share = f"{100 * op.hard_negative_fpr_target:g}%"
    if not op.hard_negatives_per_kind:
        text = f" flagging {share} of them pooled"
    elif op.hard_negative_kind:
        text = f" flagging {share} of kind `{op.hard_negative_kind}`"
    else:
        text = f" flagging {share} of them pooled and at most that of each kind"
    if op.transfer_threshold is not None and op.transfer_fpr is not None:
        asked = f"{100 * op.transfer_fpr:.1f}% of them"
        if op.transfer_recall_floor is None:
            text += f"; transfer limit {op.transfer_threshold:.3f} flagging {asked}, the share the held-out sources asked for"
        else:
            text += (
                f"; transfer limit {op.transfer_threshold:.3f}, lowered from flagging the {asked} the held-out sources"
                f" asked for to keep {100 * op.transfer_recall_floor:g}% of the calibration positives"
            )
    return text


HELPERS: dict[str, Any] = {
    "negatives_rule": _negatives_rule,
    "fmt": num,
    "pct": pct,
    "heldout": _heldout,
    "ood": _ood,
    "tokens": _tokens,
    "training_mode": _training_mode,
    "minutes": _minutes,
    "basis_text": lambda basis: BASIS_TEXT.get(basis, basis),
    "baseline_kinds": baseline_kinds,
    "before_after_rows": _before_after_rows,
    "control_kinds": _control_kinds,
    "control_headers": lambda kinds: [f"control: {k}" for k in kinds],
    "control_cells": _control_cells,
    "aims_met": _aims_met,
    "band_cell": _band_cell,
    "aggregation_text": _aggregation_text,
    "layer_cell": _layer_cell,
    "width_cell": _width_cell,
    "augment_text": _augment_text,
    "layer_text": _layer_text,
    "c_text": _c_text,
    "kind_rows": _kind_rows,
    "layer_table": _layer_table,
    "alternatives": _alternatives,
    "multi_layer_view": _multi_layer_view,
    "sae_names": _sae_names,
    "sae_table": _sae_table,
    "sae_reading": _sae_reading,
    "weak_kinds": _weak_kinds,
    "by_behaviour_of": _by_behaviour,
    "diagnostics_of": _diagnostics_of,
    **SOURCE_HELPERS,  # the per-source sections (quality_sources.md.j2)
    **EXTRA_HELPERS,  # pooling, the deception family, evasion (quality_extras.md.j2)
    **CHANGE_HELPERS,  # the summary as previous run -> this run (quality_changes.py)
}


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=False,  # markdown, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["f"] = format  # `x|f(".3f")` == f"{x:.3f}"
    env.globals.update(HELPERS)
    return env


def _typed(reports: Mapping[str, ReportLike] | None) -> dict[str, TrainReport]:
    return {name: as_report(r) for name, r in (reports or {}).items()}


def render_markdown(
    results: Mapping[str, ReportLike],
    diagnostics: Mapping[str, dict],
    run: RunInfo,
    sae_results: Mapping[str, dict] | None = None,
    baseline: Mapping[str, ReportLike] | None = None,
    families: Mapping[str, dict] | None = None,
    evasion: Sequence[dict] | None = None,
    missing: Sequence[str] = (),
) -> str:
    """The whole document. `baseline` ({probe id: report} of the previous run) adds before/after columns;
    `families` ({probe name: family report}) and `evasion` (evasion reports) their sections; `missing` names
    the parts a full run would have that this render has no input for (said in the doc, not dropped silently)."""
    return (
        _environment()
        .get_template(DOCUMENT)
        .render(
            results=_typed(results),
            diagnostics=diagnostics,
            run=run,
            sae_results=sae_results or {},
            baseline=baseline_metrics(baseline),
            previous=dict(baseline or {}),
            families=families or {},
            evasion=list(evasion or []),
            missing=list(missing),
        )
    )


def render_sae_section(results: Mapping[str, ReportLike], sae_results: Mapping[str, dict], run: RunInfo) -> str:
    """The SAE-feature probes vs linear probes section alone (as `render_markdown` includes it)."""
    return _environment().get_template(SAE_SECTION).render(results=_typed(results), sae_results=sae_results, run=run)


__all__ = ["RunInfo", "baseline_kinds", "baseline_metrics", "render_markdown", "render_sae_section", "sweep_mode"]
