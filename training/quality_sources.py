"""docs/quality.md helpers for the per-source sections (`templates/quality_sources.md.j2`, issue 22).

Pure functions of typed reports; `quality_doc.HELPERS` includes `SOURCE_HELPERS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from probewatch.training.calibration import MAX_FLAGGED_NEGATIVES, MIN_RECALL
from probewatch.training.doc_numbers import num, pct
from probewatch.training.estimators import C_METHODS
from probewatch.training.report import TrainReport
from probewatch.training.report_sources import (
    HeldOutThreshold,
    NestedEstimate,
    OuterMultiLayer,
    OuterSource,
    SourceSelection,
    SourcesReport,
)

#: how docs/quality.md names a token selection
SELECTION_NAMES = {"all": "prompt + response", "answer": "answer (the option a letter names, else the response)"}

BASIS_TEXT = {
    "heldout_source": "held-out source (worst source first)",
    "heldout_kind": "held-out kind",
    "heldout_group": "held-out part of the one source of one kind left, split by group",
    "ood": "validation and out-of-distribution AUROC",
    "validation": "validation AUROC",
    "prescreen": "the pre-screen's first within the validation guard (no fold could be scored)",
}


def c_setting(c: Mapping[str, Any]) -> str:
    """'C=0.01' for a method that has a C (`C_METHODS`) and a C set; '' otherwise. One format for every table."""
    return f"C={c['C']:g}" if c.get("C") is not None and c.get("method") in C_METHODS else ""


def config_text(c: Mapping[str, Any]) -> str:
    """`layer 15 logistic C=0.01, response, per-example, mean` from a `ConfigScore.config` (`layers 19+21 ...`
    for a multi-layer probe's)."""
    C = f" {c_setting(c)}" if c_setting(c) else ""
    where = f"layers {'+'.join(str(x) for x in c['layers'])}" if c.get("layers") else f"layer {c['layer']}"
    reads = SELECTION_NAMES.get(c["token_selection"], c["token_selection"])
    mode = "per-token" if c["per_token"] else "per-example"
    return f"{where} {c['method']}{C}, {reads}, {mode}, {c['aggregation']}"


def guard_text(sel: SourceSelection | None) -> str:
    """' ‡ (without the guard: <config>, mean / worst)' where the validation-AUROC guard changed the choice."""
    if sel is None or sel.unguarded is None:
        return ""
    u = sel.unguarded
    return f" ‡ (without the guard: {config_text(u.config)}, {num(u.mean)} / {num(u.worst)})"


def with_sources(results: Mapping[str, TrainReport]) -> list[tuple[TrainReport, SourcesReport]]:
    """The reports that carry a `sources` part (reports written before issue 22 have none)."""
    return [(r, r.sources) for r in results.values() if r.sources is not None]


def nested_rows(s: SourcesReport) -> list[dict[str, Any]]:
    """One row per held-out source of the nested estimate; where a later replay departs from it, each source's
    AUROC on today's pool beside the run's."""
    if s.nested is None:
        return []
    rows = [_outer_row(name, o) for name, o in s.nested.outer.items()]
    replayed = s.nested.replayed
    if replayed is not None:
        for row in rows:
            again = replayed.outer.get(row["source"])
            today = "not held out" if again is None else num(again.auroc) + _tied_text(again.tied, ", tied choices ")
            moved = (
                ""
                if again is None or again.config == s.nested.outer[row["source"]].selection.chosen.config
                else ", another choice"
            )
            row["auroc"] += f" (replayed on today's pool: {today}{moved})"
    return rows


def _basis_text(basis: str, folds: list[str]) -> str:
    """'held-out kind: a, b' — or the basis alone where no fold was scored (the pre-screen has none)."""
    text = BASIS_TEXT.get(basis, basis)
    return f"{text}: {', '.join(folds)}" if folds else text


def _outer_row(name: str, o: OuterSource) -> dict[str, Any]:
    sel, at = o.selection, o.at_threshold
    against = "" if o.against == "own_negatives" else " (vs control)"
    return {
        "source": name,
        "sizes": f"{o.n_pos} / {o.n_neg}{against}",
        "chosen": f"{config_text(sel.chosen.config)} ({_basis_text(sel.basis, sel.folds)}){guard_text(sel)}",
        "changed": sel.chosen.config != sel.mean_best.config,
        "selected_on": f"{num(sel.chosen.mean)} / {num(sel.chosen.worst)}",
        "auroc": heldout_auroc_text(o),
        "gap": num(o.gap, sign=True),
        "at_threshold": "n/a"
        if at is None
        else f"{num(at.recall)} / {pct(at.fpr_negatives)} / {pct(at.fpr_control_heldout)}",
    }


def step_rows(r: TrainReport, s: SourcesReport) -> list[dict[str, Any]]:
    """The nested estimate's multi-layer step (training/nested_multilayer.py): one row per held-out source,
    then the summary row; one row saying it is missing where the run compared a multi-layer probe before the
    step existed; none where the run compared none."""
    nested = s.nested
    step = nested.multi_layer if nested is not None else None
    multi = r.multi_layer or {}
    if nested is not None and step is None and multi.get("concat") and len(multi.get("layers") or []) > 1:
        # compared a multi-layer probe before the step: say so, not drop it, with a later replay's step per source
        today = nested.replayed.multi_layer if nested.replayed is not None else None
        per_source = [] if today is None else today.outer.items()
        return [_predates_step_row(nested), *(_step_row(f"{n} (replayed on today's pool)", o) for n, o in per_source)]
    if nested is None or step is None:
        return []
    rows = [_step_row(name, o) for name, o in step.outer.items()]
    shipped = bool(multi.get("shipped"))
    # what the shipped probe was selected on: the concat's held-out-source mean where the concat shipped
    check = multi.get("heldout_source") or {}
    selected_on = (check.get("concat") or {}).get("mean") if shipped else nested.selected_on
    gap = None if selected_on is None or step.mean is None else selected_on - step.mean
    replayed = " (replayed after the run: report.json `replayed_by` names the command)" if step.replayed_by else ""
    rows.append(
        {
            "source": f"**mean over sources** (worst: {step.worst_source or 'n/a'} {num(step.worst)})",
            "single": num(nested.mean),
            "kind_gate": "—",
            "inner": "—",
            "ships": f"shipped: {'layers ' + '+'.join(str(x) for x in step.layers) if shipped else 'one layer'}",
            "auroc": f"**{num(step.mean)}** (change {num(step.change, sign=True)}; selected on {num(selected_on)}: "
            f"optimism gap {num(gap, sign=True)}){replayed}",
        }
    )
    return rows


def _predates_step_row(nested: NestedEstimate) -> dict[str, Any]:
    """The row of a run that compared a multi-layer probe before the nested step existed: what adds the step, and
    where a later replay departs from the run's estimate (so it cannot add it), the step that replay measured."""
    replayed = nested.replayed
    source = (
        "— (the run predates the step; `probewatch bench selection --nested --record` adds it where a replay "
        "reproduces the run's nested estimate"
    )
    auroc = "—"
    if replayed is not None:
        source += f"; the replay of {replayed.on} does not: the table above"
        if replayed.multi_layer_mean is not None:
            change = None if replayed.mean is None else replayed.multi_layer_mean - replayed.mean
            auroc = (
                f"replayed on today's pool: {num(replayed.multi_layer_mean)} (single layer there "
                f"{num(replayed.mean)}, change {num(change, sign=True)})"
            )
    return {
        "source": source + ")",
        "single": num(nested.mean),
        "kind_gate": "—",
        "inner": "—",
        "ships": "—",
        "auroc": auroc,
    }


def _step_row(name: str, o: OuterMultiLayer) -> dict[str, Any]:
    inner = "—"
    if o.concat is not None and o.single is not None:
        inner = f"{num(o.concat.mean)} / {num(o.concat.worst)} vs {num(o.single.mean)} / {num(o.single.worst)}"
    return {
        "source": name,
        "single": num(o.single_auroc),
        "kind_gate": _searched_text(o),
        "inner": inner,
        "ships": "concat" if o.ships else "one layer",
        "auroc": num(o.auroc),
    }


def _searched_text(o: OuterMultiLayer) -> str:
    """'15+19+21: holds', 'one layer (none added)', or "the run's: fails" for a step recorded before the layer set
    was searched per source."""
    gate = "holds" if o.kind_gate else "fails"
    if o.layers is None:
        return f"the run's: {gate}"
    if len(o.layers) < 2:
        return "one layer (none added)"
    return f"{'+'.join(str(x) for x in o.layers)}: {gate}"


def heldout_auroc_text(o: OuterSource) -> str:
    """'0.649 (tied choices 0.630–0.649)': a held-out source's AUROC, with the range its tied choices score there
    (docs/quality.md's nested table and `probewatch bench selection` alike)."""
    return num(o.auroc) + _tied_text(o.tied, " (tied choices ", ")")


def _tied_text(tied: list[float] | None, before: str, after: str = "") -> str:
    """'<before>0.630–0.649<after>' for a source's tied choices' AUROCs (sorted); '' where none tied."""
    return f"{before}{num(tied[0])}–{num(tied[-1])}{after}" if tied else ""


def replayed_text(nested: NestedEstimate | None) -> str:
    """The text "; replayed on today's pool (2026-12-07): **0.662** (worst: x 0.490; every tie broken the worst / best
    way: 0.600 / 0.700; with the multi-layer step 0.652): the run's estimate no longer reproduces (report.json ...)"
    for the summary row of an estimate a later replay departs from (`sources.nested.replayed`); '' otherwise."""
    replayed = None if nested is None else nested.replayed
    if replayed is None:
        return ""
    step = "" if replayed.multi_layer_mean is None else f"; with the multi-layer step {num(replayed.multi_layer_mean)}"
    ties = _tie_range_text(replayed.tie_range, "; ")
    return (
        f"; replayed on today's pool ({replayed.on}): **{num(replayed.mean)}** (worst: {replayed.worst_source or 'n/a'} "
        f"{num(replayed.worst)}{ties}{step}): the run's estimate no longer reproduces (report.json "
        "`sources.nested.replayed` names the command and where it departs)"
    )


def tie_text(nested: NestedEstimate | None) -> str:
    """' (every tie broken the worst / best way: 0.638 / 0.705)' for the summary row where some source's choice
    was tied."""
    return _tie_range_text(None if nested is None else nested.tie_range, " (", ")")


def _tie_range_text(tie_range: list[float] | None, before: str, after: str = "") -> str:
    """'<before>every tie broken the worst / best way: 0.638 / 0.705<after>' for an estimate's tie range (the
    published one's and a replay's alike); '' where no choice tied."""
    if tie_range is None:
        return ""
    low, high = tie_range
    return f"{before}every tie broken the worst / best way: {num(low)} / {num(high)}{after}"


def threshold_rows(s: SourcesReport) -> list[dict[str, Any]]:
    """Per source: the shipped probe at the shipped threshold (test split), and held out (nested fold)."""
    outer = s.nested.outer if s.nested is not None else {}
    rows = []
    for name, counts in s.counts.items():
        shipped = s.at_threshold.get(name)
        held = outer.get(name)
        at = held.at_threshold if held is not None else None
        rows.append(
            {
                "source": name,
                "kinds": ", ".join(counts.kinds),
                "sizes": f"{shipped.n_pos} / {shipped.n_neg}" if shipped else "— (training only)",
                "recall": num(shipped.recall) if shipped else "—",
                "flagged": pct(shipped.fpr_negatives) if shipped else "—",
                "held_out": "—" if at is None else f"{num(at.recall)} / {pct(at.fpr_negatives)}",
                "transfer": _transfer_cell(at),
                "aims_met": _aims(shipped.recall, shipped.fpr_negatives) if shipped else "—",
            }
        )
    return rows


def _transfer_cell(at: HeldOutThreshold | None) -> str:
    """The rate this source asked for, then the transfer limit learnt from the other sources measured on it."""
    if at is None or at.transfer is None:
        return "—"  # no nested fold, or a report written before the transfer limit
    asked = "—" if at.transfer_rate is None else pct(at.transfer_rate)
    check = at.transfer
    learnt = "none" if check.rate is None else pct(check.rate)
    return f"{asked}; {learnt}: {num(check.recall)} / {pct(check.fpr_negatives)}"


def _aims(recall: float | None, flagged: float | None) -> str:
    """Recall at least MIN_RECALL with at most MAX_FLAGGED_NEGATIVES of the negatives flagged ('—' where a side is
    missing): the same aims as the summary's, per held-out source."""
    if recall is None or flagged is None:
        return "—"
    return "yes" if recall >= MIN_RECALL and flagged <= MAX_FLAGGED_NEGATIVES else "no"


SOURCE_HELPERS: dict[str, Any] = {
    "config_text": config_text,
    "guard_text": guard_text,
    "with_sources": with_sources,
    "nested_rows": nested_rows,
    "step_rows": step_rows,
    "tie_text": tie_text,
    "replayed_text": replayed_text,
    "threshold_rows": threshold_rows,
    "source_basis_text": lambda basis: BASIS_TEXT.get(basis, basis),
    "signed": partial(num, sign=True),
}
