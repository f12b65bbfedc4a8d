"""Stage 5 of `probewatch train`: the final fit, Platt calibration, operating point and measurements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from probewatch.probes import Aggregation
from probewatch.training.attention_sweep import probe_scorer
from probewatch.training.calibration import OperatingPoint, operating_point, platt_fit
from probewatch.training.datasets import BehaviourData
from probewatch.training.estimators import C_METHODS
from probewatch.training.metrics import detection_metrics, flagged_share
from probewatch.training.report import AtThreshold, ControlKindOperating, KindOperating, Metrics, OperatingSummary
from probewatch.training.stage_activations import Activations, Splits
from probewatch.training.stage_sweep import SweepOutcome
from probewatch.training.sweep import (
    PoolArrays,
    ProbeSpec,
    fit_probe,
    heldout_kind_recall,
    in_calibrated_units,
    with_temperature,
)
from probewatch.training.train_config import TrainConfig


@dataclass
class FittedProbe:
    """Stage 5: the final probe (Platt-folded), its operating point and every measurement."""

    probe: Any
    spec: ProbeSpec
    aggregation: Aggregation
    platt: tuple[float, float]
    scores: np.ndarray  # every pool example, calibrated logits
    control_scores: np.ndarray
    point: OperatingPoint
    metrics: Metrics
    test: dict[str, Any]
    ood: dict[str, dict[str, Any]]
    heldout: dict[str, dict[str, Any]]
    operating: OperatingSummary
    ood_scores: dict[str, np.ndarray] = field(default_factory=dict)  # calibrated logits per OOD set


def shipped_point(
    config: TrainConfig,
    splits: Splits,
    scores: np.ndarray,
    control_scores: np.ndarray,
    transfer_fpr: float | None = None,
) -> OperatingPoint:
    """The operating point a run ships, from its calibrated pool and control scores: the run's settings on the
    calibration split and the control set's calibration half (`transfer_fpr`: the nested estimate's share,
    used unless the run turned the transfer limit off). `training/rethreshold.py` calls it on live scores."""
    hard = splits.hard_negatives
    return operating_point(
        control_scores[splits.control_cal],
        config.fpr,
        scores[hard] if config.hard_negative_fpr is not None else None,
        config.hard_negative_fpr,
        positive_scores=scores[splits.calibration_positives],
        band_control_fpr=config.band_control_fpr,
        hard_negative_kinds=splits.pool.kinds[hard] if config.hard_negatives_per_kind else None,
        transfer_fpr=transfer_fpr if config.transfer_threshold else None,
    )


def fit_final(
    config: TrainConfig,
    acts: Activations,
    splits: Splits,
    sweep: SweepOutcome,
    data: BehaviourData,
    transfer_fpr: float | None = None,
) -> FittedProbe:
    chosen, pool = sweep.chosen, splits.pool
    labels, fit_idx, val_idx, test_idx = pool.labels, pool.fit_idx, pool.val_idx, pool.test_idx
    spec = ProbeSpec(
        chosen.method,
        chosen.layer,
        chosen.token_selection,
        chosen.per_token,
        chosen.aggregation,
        config.standardize,
        C=chosen.C
        if (sweep.basis in ("heldout_kind", "heldout_source") and config.heldout_Cs and chosen.method in C_METHODS)
        else None,
    )
    ld, ood, control_ld = acts.layer(chosen.layer)
    probe = fit_probe(spec, ld, pool, fit_idx, config.seed, config.balance_kinds)
    base = Aggregation(method=chosen.aggregation, window=config.window, alpha=config.alpha)
    agg = base
    if chosen.method != "attention":  # the attention probe pools with its own query: no temperature
        (agg,) = with_temperature([base], *probe.raw_linear_form(), ld, fit_idx, spec.token_selection)
    raw = probe_scorer(probe, spec.token_selection, agg)(ld)
    slope, offset = platt_fit(raw[val_idx], labels[val_idx])
    probe.affine_(slope, offset)  # attention: folded into the value direction (the weights sum to one)
    agg = in_calibrated_units(agg, slope)  # softmax weights and length penalties unchanged by the Platt map
    scored = probe_scorer(probe, spec.token_selection, agg)

    scores, control_scores = scored(ld), scored(control_ld)
    point = shipped_point(config, splits, scores, control_scores, transfer_fpr)
    threshold = point.value
    test = detection_metrics(scores[test_idx], labels[test_idx], control_scores[splits.control_cal], config.fpr)
    test["fpr_control_heldout"] = float((control_scores[splits.control_held] >= point.control_threshold).mean())
    test["recall_at_fpr_negatives"] = detection_metrics(scores[test_idx], labels[test_idx], None, config.fpr)[
        "recall_at_fpr"
    ]
    operating = operating_summary(scores, labels, pool, splits, control_scores, point)
    ood_metrics, ood_scores = {}, {}
    for name, (od, od_labels) in ood.items():
        s = ood_scores[name] = scored(od)
        ood_metrics[name] = detection_metrics(s, od_labels, control_scores[splits.control_cal], config.fpr)
        y = np.asarray(od_labels)
        ood_metrics[name]["at_shipped_threshold"] = {
            "recall": flagged_share(s[y == 1], threshold),
            "fpr_negatives": flagged_share(s[y == 0], threshold),
        }
    heldout = heldout_kind_recall(
        spec, ld, pool, control_ld.subset(splits.control_cal), config.fpr, config.seed, config.balance_kinds, base
    )
    heldout_aurocs = [v["auroc"] for v in heldout.values() if v["auroc"] is not None]
    test_kinds = pool.kinds[test_idx]
    per_kind_test = {}
    for kind in sorted(set(test_kinds.tolist())):
        sel = test_kinds == kind
        if len(set(labels[test_idx][sel].tolist())) == 2:
            per_kind_test[kind] = detection_metrics(scores[test_idx][sel], labels[test_idx][sel])["auroc"]
    metrics = Metrics(
        auroc=test["auroc"],
        auroc_test_per_kind=per_kind_test,
        recall_at_fpr_control=test["recall_at_fpr"],
        fpr=config.fpr,
        fpr_control_heldout=test["fpr_control_heldout"],
        auroc_heldout_kind=float(np.mean(heldout_aurocs)) if heldout_aurocs else None,
        auroc_heldout_kind_per_kind={k: v["auroc"] for k, v in heldout.items()},
        auroc_ood={k: v["auroc"] for k, v in ood_metrics.items()},
        recall_at_fpr_control_ood={k: v["recall_at_fpr"] for k, v in ood_metrics.items()},
        operating_point={k: v for k, v in operating.to_json().items() if k != "per_kind"},
        n_test=len(test_idx),
        split="grouped by source item (group)",
    )
    return FittedProbe(
        probe,
        spec,
        agg,
        (slope, offset),
        scores,
        control_scores,
        point,
        metrics,
        test,
        ood_metrics,
        heldout,
        operating,
        ood_scores,
    )


def operating_summary(
    scores: np.ndarray,
    labels: np.ndarray,
    pool: PoolArrays,
    splits: Splits,
    control_scores: np.ndarray,
    point: OperatingPoint,
) -> OperatingSummary:
    """Both operating points measured on held-out data: test split (recall, FPR on its negatives =
    honest answers in behaviour-laden contexts, per kind) and the held-out control half (per kind)."""
    test = pool.test_idx
    y = labels[test]
    s = scores[test]
    kinds = pool.kinds[test]

    def at(t: float) -> AtThreshold:
        held = splits.control_held
        return AtThreshold(
            threshold=float(t),
            recall=flagged_share(s[y == 1], t),
            fpr_negatives=flagged_share(s[y == 0], t),
            fpr_control_heldout=float((control_scores[held] >= t).mean()),
        )

    per_kind: dict[str, KindOperating] = {}
    for kind in sorted(set(kinds.tolist())):
        sel = kinds == kind
        yk, sk = y[sel], s[sel]
        per_kind[kind] = KindOperating(
            recall=float((sk[yk == 1] >= point.value).mean()) if (yk == 1).any() else None,
            fpr_negatives=float((sk[yk == 0] >= point.value).mean()) if (yk == 0).any() else None,
            n=int(sel.sum()),
        )
    control_per_kind: dict[str, ControlKindOperating] = {}
    held_kinds = splits.control_kinds[splits.control_held]
    for kind in dict.fromkeys(held_kinds.tolist()):
        sel = splits.control_held[held_kinds == kind]
        control_per_kind[str(kind)] = ControlKindOperating(
            fpr=float((control_scores[sel] >= point.value).mean()), n=int(len(sel))
        )
    return OperatingSummary(
        threshold=float(point.value),
        set_by=point.set_by,
        fpr_target=point.fpr,
        hard_negative_fpr_target=point.hard_negative_fpr,
        control_threshold=point.control_threshold,
        hard_negative_threshold=point.hard_negative_threshold,
        hard_negative_kind=point.hard_negative_kind,
        hard_negatives_per_kind=point.hard_negatives_per_kind if point.hard_negative_threshold is not None else None,
        transfer_fpr=point.transfer_fpr,
        transfer_threshold=point.transfer_threshold,
        transfer_recall_floor=point.transfer_recall_floor,
        n_hard_negatives_calibration=int(len(splits.hard_negatives)),
        shipped=at(point.value),
        control_only=at(point.control_threshold),
        per_kind=per_kind,
        control_per_kind=control_per_kind,
        **point.recall_band_limits(),
    )
