"""Set a trained bundle's threshold again with the operating-point rules as they are now (issue 22).

A change to `calibration.operating_point` (a new limit, a cap) changes what the next training run ships, but
the shipped bundles keep the thresholds of the run that made them. This answers "what would today's rules
ship for this bundle, and what would it catch?" without a retrain: the report's `config` rebuilds the pool,
its splits and the control halves, the bundle scores the calibration and test items and the control set
through the live scoring path, and `operating_point` runs on those scores with the run's settings and the
transfer share its nested estimate asked for. `probewatch bench threshold` is the command
(benchmarks/threshold.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probewatch.training.bundle_split import rebuild_split, report_of
from probewatch.training.calibration import OperatingPoint
from probewatch.training.metrics import flagged_share
from probewatch.training.stage_fit import shipped_point

__all__ = ["AtThreshold", "Rethreshold", "rethreshold"]

#: thresholds closer than this (relative) count as the same: the live path and the training cache agree to ~1e-5
SAME = 1e-4


@dataclass
class AtThreshold:
    """What a threshold catches and flags, on the bundle's own data."""

    threshold: float
    calibration_recall: float | None  # the calibration split's positives (what the recall limits are set on)
    test_recall: float | None
    test_flagged_negatives: float | None
    control_heldout_flagged: float


@dataclass
class Rethreshold:
    """One bundle's recorded threshold beside the one today's rules set on the same scores."""

    probe_id: str
    recorded_set_by: str
    point: OperatingPoint
    recorded: AtThreshold
    now: AtThreshold

    @property
    def changed(self) -> bool:
        a, b = self.recorded.threshold, self.now.threshold
        return not math.isclose(a, b, rel_tol=SAME, abs_tol=SAME)


def rethreshold(
    bundle_dir: Path, loaded: Any, data_dir: str | Path | None = None, progress: bool = False
) -> Rethreshold:
    """The bundle in `bundle_dir` (with the report.json its training wrote) thresholded by today's rules.

    `loaded` must be the bundle's model. Raises ValueError for a report of another model."""
    from probewatch.data.dialogue import Dialogue
    from probewatch.probes import ProbeRuntime, load_bundle
    from probewatch.scoring import score_dialogues

    report = report_of(bundle_dir)
    rebuilt = rebuild_split(report, loaded, data_dir)
    splits, pool = rebuilt.splits, rebuilt.pool
    positives, test_idx = splits.calibration_positives, splits.pool.test_idx

    bundle = load_bundle(bundle_dir, expected_fingerprint=loaded.fingerprint)
    runtime = ProbeRuntime([bundle])

    def scored(dialogues: Sequence[Dialogue]) -> np.ndarray:
        done = score_dialogues(loaded.model, loaded.tokenizer, runtime, list(dialogues), progress=progress)
        return np.array([r.aggregate[bundle.id] for r in done], dtype=np.float64)

    needed = np.concatenate([splits.hard_negatives, positives, test_idx])
    scores = np.full(len(pool), np.nan)
    scores[needed] = scored([pool[i] for i in needed])
    control = scored(rebuilt.prepared.control)
    nested = (report.get("sources") or {}).get("nested") or {}
    point = shipped_point(rebuilt.config, splits, scores, control, nested.get("transfer_fpr"))
    y = rebuilt.labels[test_idx]

    def at(threshold: float) -> AtThreshold:
        return AtThreshold(
            threshold=float(threshold),
            calibration_recall=flagged_share(scores[positives], threshold),
            test_recall=flagged_share(scores[test_idx][y == 1], threshold),
            test_flagged_negatives=flagged_share(scores[test_idx][y == 0], threshold),
            control_heldout_flagged=float((control[splits.control_held] >= threshold).mean()),
        )

    op = report["operating_point"]
    return Rethreshold(report["probe_id"], str(op["set_by"]), point, at(op["threshold"]), at(point.value))
