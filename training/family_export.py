"""`probewatch train --family`: the per-type deception family beside the single probe (issue 22, item 4).

Runs after the single probe's export on the same cached activations, layer and settings (training/family.py),
and writes `<out>-family/`: one ordinary bundle per member (`<probe id>-<type>`, `extra.family` naming the
family) and `family.json` (probes/family.py) with the threshold on the maximum; `family_report.json` goes both
there and next to the single probe's report.json (training/family_eval.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probewatch.probes import Threshold
from probewatch.probes.calibration import reference_from_scores
from probewatch.probes.family import FamilyManifest, FamilyMember, write_family
from probewatch.training.export import export_bundle
from probewatch.training.family import FamilyFit, fit_family
from probewatch.training.family_eval import FAMILY_REPORT, family_report, heldout_kinds, markdown_table
from probewatch.training.stage_activations import Activations, Splits
from probewatch.training.stage_export import model_fields, operating_threshold
from probewatch.training.stage_fit import FittedProbe
from probewatch.training.stage_sweep import SweepOutcome
from probewatch.training.train_config import TrainConfig, require_behaviour

log = logging.getLogger("probewatch.training")


@dataclass
class FamilyResult:
    folder: Path
    report: dict[str, Any]
    fit: FamilyFit


def train_family(
    config: TrainConfig,
    loaded: Any,
    acts: Activations,
    splits: Splits,
    sweep: SweepOutcome,
    fitted: FittedProbe,
    out: Path,
    probe_id: str,
    calibration_set: str,
    layers: list[int] | None = None,
) -> FamilyResult:
    """Fit, measure and write the family; `out` is the single probe's bundle folder."""
    from probewatch.probes.manifest import Aggregation

    chosen, pool = sweep.chosen, splits.pool
    data, _ood, control = acts.layer(chosen.layer)
    base = Aggregation(method=chosen.aggregation, window=config.window, alpha=config.alpha)
    fit = fit_family(
        fitted.spec, data, control, pool, pool.fit_idx, pool.val_idx, splits.control_cal, splits.hard_negatives,
        base, config.fpr, config.hard_negative_fpr, config.seed, config.balance_kinds,
        hard_negatives_per_kind=config.hard_negatives_per_kind,
        transfer_fpr=fitted.point.transfer_fpr if config.transfer_threshold else None,
    )  # fmt: skip
    family_id = f"{probe_id}-family"
    folder = out.parent / family_id
    member_ids = {m.type: f"{probe_id}-{m.type.replace('_', '-')}" for m in fit.members}
    behaviour = require_behaviour(config)
    for m in fit.members:
        export_bundle(
            folder / member_ids[m.type],
            m.probe,
            probe_id=member_ids[m.type],
            behaviour=behaviour,
            method=chosen.method,
            **model_fields(loaded),
            layer=chosen.layer,
            token_selection=chosen.token_selection,
            aggregation=m.aggregation,
            threshold=Threshold(value=float(fit.point.value), method="fixed", fpr=None),  # the family's; never alerts
            metrics={},
            training={"family": family_id, "type": m.type, "kinds": m.kinds, "n_fit": m.n_fit, "seed": config.seed},
            description=f"{behaviour} family member for {m.type} ({', '.join(m.kinds)}); alerts through {family_id}",
            version=config.version or "1",
            layers=layers,
            extra={"family": family_id, "type": m.type, "score_units": "calibrated logit (Platt)"},
        )
    log.info("family: %d members, fitting the leave-one-kind-out folds", len(fit.members))
    held = heldout_kinds(
        fitted.spec, data, control, pool, base, config.seed, config.balance_kinds, progress=config.progress
    )
    single_held = {k: v.get("auroc") for k, v in fitted.heldout.items()}
    report = family_report(
        fit,
        pool,
        splits.control_held,
        fitted.scores,
        float(fitted.point.value),
        held,
        single_held,
        family_id,
        member_ids,
    )
    point = fit.point
    threshold = operating_threshold(point, config.fpr, calibration_set, len(splits.control_cal))
    reference = reference_from_scores(
        fit.control_scores[splits.control_cal], point.value, calibration_set=calibration_set
    )
    write_family(
        folder,
        FamilyManifest(
            id=family_id,
            behaviour=behaviour,
            members=[FamilyMember(member_ids[m.type], m.type) for m in fit.members],
            threshold=threshold,
            model_id=loaded.model_id,
            model_fingerprint=loaded.fingerprint,
            version=config.version or "1",
            description=f"{behaviour}: the maximum of {len(fit.members)} per-type probes' calibrated scores",
            metrics={
                "auroc": report["test"]["family"]["auroc"],
                "auroc_heldout_kind": report["heldout_kind"]["family_mean"],
            },
            extra={"calibration_reference": reference.to_json()} if reference is not None else {},
        ),
    )
    text = json.dumps(_finite(report), indent=2, allow_nan=False) + "\n"
    for where in (folder / FAMILY_REPORT, out / FAMILY_REPORT):
        where.write_text(text)
    (folder / "family_table.md").write_text(markdown_table(report))
    return FamilyResult(folder, report, fit)


def _finite(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python (the report is strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
