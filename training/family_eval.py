"""What the deception family is worth beside the single universal probe (issue 22, item 4).

Per type: the member's AUROC on that type's test items, and the family's and the single probe's on the
same items. Whole test split: family vs single AUROC, and recall / flagged negatives at each one's shipped
threshold. Per held-out kind: the family refitted without the kind (members fitted on the rest of the fit
and test splits, calibrated on the rest of the calibration split; a type whose only kind is held out
has no member in that fold) and scored on it, beside the single probe's leave-one-kind-out AUROC. The
report is JSON (`family_report.json`, its own layout: the TrainReport's stays fixed) plus a Markdown
table for docs/quality.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from probewatch.metrics import auroc
from probewatch.probes.manifest import Aggregation
from probewatch.training.family import DECEPTION_TYPES, FamilyFit, fit_family
from probewatch.training.features import LayerData
from probewatch.training.metrics import flagged_share
from probewatch.training.report_sources import omit_unset
from probewatch.training.sweep import PoolArrays, ProbeSpec

FAMILY_REPORT = "family_report.json"


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    ok = np.isfinite(scores)
    s, y = scores[ok], labels[ok]
    return float(auroc(s, y)) if len(np.unique(y)) == 2 else None


def _at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float | None]:
    pos, neg = scores[labels == 1], scores[labels == 0]
    return {
        "threshold": float(threshold),
        "recall": flagged_share(pos, threshold),
        "fpr_negatives": flagged_share(neg, threshold),
    }


def per_type(fit: FamilyFit, pool: PoolArrays, single: np.ndarray | None) -> dict[str, dict[str, Any]]:
    """type -> member / family / single AUROC on that type's test items, with its kinds and sizes."""
    test = pool.test_idx
    out: dict[str, dict[str, Any]] = {}
    for m in fit.members:
        sel = test[np.isin(pool.kinds[test], m.kinds)]
        y = pool.labels[sel]
        out[m.type] = {
            "kinds": m.kinds,
            "n_test": int(len(sel)),
            "n_fit": m.n_fit,
            "platt": {"slope": m.platt[0], "offset": m.platt[1]},
            "auroc_member": _auroc(m.scores[sel], y),
            "auroc_family": _auroc(fit.scores[sel], y),
            "auroc_single": _auroc(single[sel], y) if single is not None else None,
            "wins_on_positives": float(np.mean(fit.winners[sel][y == 1] == fit.members.index(m)))
            if (y == 1).any()
            else None,
        }
    return out


def heldout_kinds(
    spec: ProbeSpec,
    data: LayerData,
    control: LayerData,
    pool: PoolArrays,
    base: Aggregation,
    seed: int,
    balance_kinds: bool,
    table: Mapping[str, str] = DECEPTION_TYPES,
    progress: bool = False,
) -> dict[str, float | None]:
    """Leave-one-kind-out AUROC of the family (calibration and fit sides both exclude the kind). `progress`:
    a bar over the folds (each fits every member; on the deception pool the stage runs for 8 to 17 minutes)."""
    from tqdm.auto import tqdm

    out: dict[str, float | None] = {}
    cal_side = np.zeros(len(pool.labels), dtype=bool)
    cal_side[pool.val_idx] = True
    folds = list(pool.loko())
    for kind, tr, te in tqdm(folds, desc="family held-out kinds", unit="kind", disable=not progress or not folds):
        fit_idx, cal_idx = tr[~cal_side[tr]], tr[cal_side[tr]]
        try:
            fold = fit_family(
                spec, data, control, pool, fit_idx, cal_idx, np.arange(control.n_examples), None, base,
                hard_negative_fpr=None, seed=seed, balance_kinds=balance_kinds, table=table,
            )  # fmt: skip
        except ValueError:
            out[kind] = None
            continue
        out[kind] = _auroc(fold.scores[te], pool.labels[te])
    return out


def family_report(
    fit: FamilyFit,
    pool: PoolArrays,
    control_held: np.ndarray,
    single_scores: np.ndarray | None,
    single_threshold: float | None,
    heldout: Mapping[str, float | None],
    single_heldout: Mapping[str, float | None],
    family_id: str,
    member_ids: Mapping[str, str],
) -> dict[str, Any]:
    """The family report (JSON-safe): members, per type, whole test split, held-out kinds, both probes."""
    test = pool.test_idx
    y = pool.labels[test]
    fam_held = [v for v in heldout.values() if v is not None]
    single_held = [v for k in heldout if (v := single_heldout.get(k)) is not None]
    whole = {
        "family": {
            "auroc": _auroc(fit.scores[test], y),
            **_at(fit.scores[test], y, fit.point.value),
            "fpr_control_heldout": float((fit.control_scores[control_held] >= fit.point.value).mean()),
        },
        "single": None,
    }
    if single_scores is not None:
        at = _at(single_scores[test], y, single_threshold) if single_threshold is not None else {}
        whole["single"] = {"auroc": _auroc(single_scores[test], y), **at}
    threshold = {
        "value": fit.point.value,
        "set_by": fit.point.set_by,
        "control_threshold": fit.point.control_threshold,
        "hard_negative_threshold": fit.point.hard_negative_threshold,
        "fpr": fit.point.fpr,
        "hard_negative_fpr": fit.point.hard_negative_fpr,
        "hard_negative_kind": fit.point.hard_negative_kind,
        "transfer_fpr": fit.point.transfer_fpr,
        "transfer_threshold": fit.point.transfer_threshold,
        "transfer_recall_floor": fit.point.transfer_recall_floor,
    }
    unused = ("hard_negative_kind", "transfer_fpr", "transfer_threshold", "transfer_recall_floor")
    omit_unset(threshold, unused)  # rules a fit did not use
    return {
        "family_id": family_id,
        "members": {m.type: member_ids[m.type] for m in fit.members},
        "skipped_types": fit.skipped,
        "threshold": threshold,
        "per_type": per_type(fit, pool, single_scores),
        "test": whole,
        "heldout_kind": {
            "family": dict(heldout),
            "single": {k: single_heldout.get(k) for k in heldout},
            "family_mean": float(np.mean(fam_held)) if fam_held else None,
            "single_mean": float(np.mean(single_held)) if single_held else None,
        },
        "n_test": int(len(test)),
    }


def _f(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def markdown_table(report: Mapping[str, Any]) -> str:
    """The family rows for docs/quality.md: per type, the whole test split and the held-out-kind mean."""
    lines = [
        "| deception type | kinds | test items | member AUROC | family AUROC | single probe AUROC |",
        "|---|---|---|---|---|---|",
    ]
    for t, row in report["per_type"].items():
        lines.append(
            f"| {t} | {', '.join(row['kinds'])} | {row['n_test']} | {_f(row['auroc_member'])} | "
            f"{_f(row['auroc_family'])} | {_f(row['auroc_single'])} |"
        )
    test, held = report["test"], report["heldout_kind"]
    single = test["single"] or {}
    lines.append(
        f"| **whole test split** | | {report['n_test']} | | {_f(test['family']['auroc'])} | {_f(single.get('auroc'))} |"
    )
    lines.append(f"| **held-out kind (mean)** | | | | {_f(held['family_mean'])} | {_f(held['single_mean'])} |")
    return "\n".join(lines) + "\n"
