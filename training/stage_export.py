"""Stage 6 of `probewatch train`: the bundle, its `TrainReport`, the plots and the live-path parity check."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probewatch.behaviours import DESCRIPTIONS
from probewatch.data.dialogue import Dialogue
from probewatch.probes import Threshold
from probewatch.probes.calibration import reference_from_scores
from probewatch.training import band as uncertainty
from probewatch.training.attention_sweep import probe_scorer
from probewatch.training.export import export_bundle
from probewatch.training.report import (
    REPORT_FILENAME,
    DataSummary,
    KindCounts,
    ModelInfo,
    Parity,
    Platt,
    Selection,
    TrainReport,
)
from probewatch.training.stage_activations import Activations, Splits
from probewatch.training.stage_data import PreparedData
from probewatch.training.stage_fit import FittedProbe
from probewatch.training.stage_sweep import SweepOutcome
from probewatch.training.sweep import SweepRow
from probewatch.training.train_config import TrainConfig, require_behaviour

log = logging.getLogger("probewatch.training")


@dataclass
class TrainResult:
    bundle_path: Path
    report_path: Path
    report: TrainReport


def kinds_summary(pool: Sequence[Dialogue]) -> dict[str, KindCounts]:
    """Examples, labels and groups per data kind of the pool."""
    out: dict[str, KindCounts] = {}
    for d in pool:
        entry = out.setdefault(d.kind or "?", KindCounts())
        entry.n += 1
        if d.label == 1:
            entry.positive += 1
        else:
            entry.negative += 1
    for kind, entry in out.items():
        entry.groups = len({d.group for d in pool if (d.kind or "?") == kind})
    return out


def export(
    config: TrainConfig,
    loaded: Any,
    prepared: PreparedData,
    acts: Activations,
    splits: Splits,
    sweep: SweepOutcome,
    fitted: FittedProbe,
    out: Path,
    probe_id: str,
    timings: dict[str, float],
    provenance_extra: dict[str, Any],
    layers: list[int] | None = None,
) -> TrainResult:
    """Write the bundle, check it on the live scoring path, draw the plots; returns the report (not yet written).

    `layers`: the pipeline chose a multi-layer (concat) probe on these layers (training/multilayer.py)."""
    chosen, point = sweep.chosen, fitted.point
    threshold = operating_threshold(
        point,
        config.fpr,
        prepared.control_source.name,
        len(splits.control_cal),
        # None unless the behaviour's negatives or too little recall ask for one
        uncertain_from=uncertainty.export_band(config.uncertainty_band, point),
    )
    band = uncertainty.band_record(threshold, uncertainty.score_sets(fitted, splits), point)
    fitted.operating.band = fitted.metrics.operating_point["band"] = band  # the report and manifest metrics say it
    export_bundle(
        out,
        fitted.probe,
        probe_id=probe_id,
        behaviour=require_behaviour(config),
        method=chosen.method,
        **model_fields(loaded),
        layer=chosen.layer,
        token_selection=chosen.token_selection,
        aggregation=fitted.aggregation,
        threshold=threshold,
        metrics=fitted.metrics.to_json(),
        training=_bundle_training(config, prepared, acts, splits, sweep, fitted, provenance_extra),
        description=_description(require_behaviour(config), chosen, sweep.basis, layers),
        version=config.version or "1",
        layers=layers,
        extra={
            "direction_norm": _direction_norm(fitted.probe),
            "score_units": "calibrated logit (Platt)",
            "operating_point": {
                "control_threshold": point.control_threshold,
                "fpr": point.fpr,
                "hard_negative_threshold": point.hard_negative_threshold,
                "hard_negative_fpr": point.hard_negative_fpr,
                "hard_negative_kind": point.hard_negative_kind,
                "hard_negatives_per_kind": point.hard_negatives_per_kind,
                "transfer_fpr": point.transfer_fpr,
                "transfer_threshold": point.transfer_threshold,
                "transfer_recall_floor": point.transfer_recall_floor,
                "set_by": point.set_by,
                "uncertainty_band": band,
                **point.recall_band_limits(),
            },
            **_calibration_reference(fitted, splits, threshold, prepared.control_source.name),
        },
    )
    parity = (
        _parity_check(out, loaded, prepared.data.pool, splits.pool.test_idx, fitted.scores, config)
        if config.parity_check
        else None
    )
    report = build_report(config, loaded, prepared, splits, sweep, fitted, out, probe_id, threshold, parity, timings)
    if config.plots:
        report.plots = _plots(out, report, fitted, acts, splits)
    return TrainResult(out, out / REPORT_FILENAME, report)


def operating_threshold(
    point: Any, fpr: float, calibration_set: str, n_calibration: int, uncertain_from: float | None = None
) -> Threshold:
    """The manifest threshold of an operating point (`training/calibration.py`): what set it and on what data."""
    return Threshold(
        value=float(point.value),
        method="fpr" if point.hard_negative_threshold is None else "fpr+hard_negatives",
        fpr=fpr,
        calibration_set=calibration_set,
        n_calibration=n_calibration,
        uncertain_from=uncertain_from,
    )


def model_fields(loaded: Any) -> dict[str, Any]:
    """The model a bundle belongs to, as `export_bundle` takes it (its tokenizer: an `answer` probe's vocabulary)."""
    return {
        "model_id": loaded.model_id,
        "fingerprint": loaded.fingerprint,
        "d_model": loaded.d_model,
        "n_layers": loaded.n_layers,
        "tokenizer": getattr(loaded, "tokenizer", None),
    }


def _calibration_reference(fitted: FittedProbe, splits: Splits, threshold: Threshold, name: str) -> dict[str, Any]:
    """`calibration_reference`: the control calibration set's score bins, what the sidecar measures live drift
    against (probes/calibration.py); nothing when the set is too small to bin."""
    ref = reference_from_scores(fitted.control_scores[splits.control_cal], threshold.value, calibration_set=name)
    return {"calibration_reference": ref.to_json()} if ref is not None else {}


def split_sizes(splits: Splits) -> dict[str, int]:
    pool = splits.pool
    return {
        "pool": len(pool.labels),
        "fit": len(pool.fit_idx),
        "calibration": len(pool.val_idx),
        "test": len(pool.test_idx),
        "control_calibration": len(splits.control_cal),
        "control_heldout": len(splits.control_held),
        "hard_negatives_calibration": len(splits.hard_negatives),
    }


def _bundle_training(
    config: TrainConfig,
    prepared: PreparedData,
    acts: Activations,
    splits: Splits,
    sweep: SweepOutcome,
    fitted: FittedProbe,
    provenance_extra: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's `training` provenance."""
    chosen, data = sweep.chosen, prepared.data
    slope, offset = fitted.platt
    return {
        "method": chosen.method,
        "layer": chosen.layer,
        "per_token": chosen.per_token,
        "C": getattr(fitted.probe, "C_", None),
        "C_selected_by": (
            ("held-out source" if sweep.basis == "heldout_source" else "held-out kind")
            if fitted.spec.C is not None
            else "grouped CV on the fit split"
        ),
        "standardize": bool(fitted.probe.standardize),
        "seed": config.seed,
        "token_selection": chosen.token_selection,
        "aggregation": chosen.aggregation,
        "balance_kinds": config.balance_kinds,
        "selected_by": sweep.basis,
        "n_configurations": len(sweep.rows),
        "layers_swept": acts.layers,
        "sizes": split_sizes(splits),
        "kinds": {k: asdict(v) for k, v in kinds_summary(data.pool).items()},
        "train_only_kinds": list(data.train_only_kinds),
        "data": [asdict(s) for s in data.sources],
        "control": asdict(prepared.control_source),
        "activation_cache": acts.pool.index["key"][:16],
        "platt": {"slope": slope, "offset": offset, "fitted_on": "calibration split"},
        "command": config.command,
        **provenance_extra,
    }


def build_report(
    config: TrainConfig,
    loaded: Any,
    prepared: PreparedData,
    splits: Splits,
    sweep: SweepOutcome,
    fitted: FittedProbe,
    out: Path,
    probe_id: str,
    threshold: Threshold,
    parity: Parity | None,
    timings: dict[str, float],
) -> TrainReport:
    data = prepared.data
    slope, offset = fitted.platt
    return TrainReport(
        probe_id=probe_id,
        behaviour=config.behaviour,
        bundle=str(out),
        model=ModelInfo(loaded.model_id, loaded.fingerprint, loaded.n_layers, loaded.d_model),
        command=config.command,
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        data=DataSummary(
            kinds=kinds_summary(data.pool),
            train_only_kinds=list(data.train_only_kinds),
            sources=list(data.sources),
            ood={k: len(v) for k, v in data.ood.items()},
            control=prepared.control_source,
            control_kinds=dict(Counter(str(k) for k in splits.control_kinds.tolist())),
            notes=data.notes,
        ),
        splits=split_sizes(splits),
        selection=Selection(sweep.basis, len(sweep.rows), sweep.chosen.to_json()),
        metrics=fitted.metrics,
        test=fitted.test,
        heldout_kinds=fitted.heldout,
        ood=fitted.ood,
        operating_point=fitted.operating,
        multi_layer=sweep.multi_layer,
        threshold=threshold,
        aggregation=fitted.aggregation,
        platt=Platt(slope, offset),
        parity=parity,
        sweep=[r.to_json() for r in sweep.rows],
        timings=timings,  # the same dict: train() adds total_s before the report is written
    )


def _description(behaviour: str, chosen: SweepRow, basis: str, layers: list[int] | None = None) -> str:
    what = DESCRIPTIONS.get(behaviour, behaviour)
    where = f"layers {', '.join(map(str, layers))} (summed per token)" if layers else f"layer {chosen.layer}"
    return (
        f"{chosen.method} probe on {where} ({chosen.token_selection}, {'per-token' if chosen.per_token else 'per-example'} "
        f"training, {chosen.aggregation} aggregation) for {what}; chosen by {basis.replace('_', '-')} AUROC. "
        f"Scores are calibrated logits."
    )


def _direction_norm(probe: Any) -> float:
    """|w| in raw residual space (the value direction of an attention probe)."""
    if hasattr(probe, "raw_forms"):
        return float(np.linalg.norm(probe.raw_forms()[1][0]))
    return float(np.linalg.norm(probe.raw_linear_form()[0]))


def _parity_check(
    out: Path, loaded: Any, pool: Sequence[Dialogue], test_idx: np.ndarray, cached: np.ndarray, config: TrainConfig
) -> Parity:
    """Score a few test dialogues through the live scoring path and compare with the cached scores."""
    from probewatch.probes import ProbeRuntime, load_bundle
    from probewatch.scoring import score_dialogues

    idx = test_idx[: config.parity_check]
    bundle = load_bundle(out, expected_fingerprint=loaded.fingerprint)
    runtime = ProbeRuntime([bundle])
    results = score_dialogues(
        loaded.model,
        loaded.tokenizer,
        runtime,
        [pool[i] for i in idx],
        batch_size=4,
        max_tokens=config.max_tokens,
        progress=False,
    )
    live = np.array([r.aggregate[bundle.id] for r in results])
    diff = float(np.max(np.abs(live - cached[idx])))
    if diff > 1e-2:
        log.warning("parity check: live scoring differs from cached scoring by %.4g (logit units)", diff)
    return Parity(n=int(len(idx)), max_abs_diff=diff)


def _plots(out: Path, report: TrainReport, fitted: FittedProbe, acts: Activations, splits: Splits) -> list[str]:
    from probewatch.training.plots import plot_histograms, plot_layer_sweep, plot_operating_points, plot_roc

    name = report.probe_id
    chosen = report.selection.chosen
    scores, labels, test_idx = fitted.scores, splits.pool.labels, splits.pool.test_idx
    control_scores, threshold = fitted.control_scores, fitted.point.value
    scored = probe_scorer(fitted.probe, fitted.spec.token_selection, fitted.aggregation)
    paths = [plot_layer_sweep(report.sweep, chosen, out / "auroc_by_layer.png", f"{name}: AUROC per layer")]
    curves = {f"test split (AUROC {report.metrics.auroc:.3f})": (scores[test_idx], labels[test_idx])}
    y_test = labels[test_idx]
    curves["test positives vs control"] = (
        np.concatenate([scores[test_idx][y_test == 1], control_scores]),
        np.r_[np.ones(int((y_test == 1).sum())), np.zeros(len(control_scores))],
    )
    _, ood, _ = acts.layer(fitted.spec.layer)
    for oname, (od, od_labels) in ood.items():
        s = scored(od)
        curves[f"ood: {oname}"] = (s, od_labels)
    op = report.operating_point
    points = {
        f"shipped threshold (set by {op.set_by})": (op.shipped.fpr_negatives or 0.0, op.shipped.recall or 0.0),
        f"{100 * fitted.point.fpr:g}% control FPR only": (
            op.control_only.fpr_negatives or 0.0,
            op.control_only.recall or 0.0,
        ),
    }
    paths.append(plot_roc(curves, out / "roc.png", f"{name}: ROC (points: FPR on test negatives)", points))
    paths.append(
        plot_histograms(
            {
                "positives (test)": scores[test_idx][y_test == 1],
                "negatives (test)": scores[test_idx][y_test == 0],
                "control": control_scores,
            },
            threshold,
            out / "score_hist.png",
            f"{name}: score distributions",
        )
    )
    paths.append(
        plot_operating_points(
            op, out / "operating_points.png", f"{name}: false-positive rates at the shipped threshold"
        )
    )
    paths.append(uncertainty.plot_band(out, name, report.threshold, uncertainty.score_sets(fitted, splits)))
    return [p.name for p in paths]
