"""The uncertainty band in training and calibration: where `probewatch train` sets it, what it costs, and
`threshold_band.png`, the trade-off of a threshold and its band, one plot per probe.

The band (`threshold.uncertain_from`, docs/architecture.md "Probe bundle"): scores in [uncertain_from,
threshold) are recorded by the sidecar as `uncertain` (a counter and a low-priority incident) and never alert.
The training export sets it in two cases (calibration.uncertainty_band): where the shipped threshold is the stricter
one the behaviour's own negatives ask for, the band reaches down to the control threshold, so what production-like
traffic alone would flag at the target FPR still reaches a reviewer without paging anyone; where the shipped
threshold keeps less than half of the calibration positives, the band reaches down to where half are kept, but
records at most 5% of the control set and 20% of the behaviour's own negatives.

Drawn next to the training report (`probewatch train`) and next to a re-thresholded bundle (`probewatch
calibrate`): for each score set, the share at or above a threshold as the threshold sweeps the score axis
(recall for positives, flagged share for negatives and control), the shipped threshold as a line and the band
[uncertain_from, threshold) shaded. Reading it: everything right of the line pages someone; the shaded part
reaches a reviewer as low-priority incidents and pages no one; moving the line left buys recall with flagged
negatives, widening the band buys it with review load instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from probewatch.training.calibration import band_basis, band_shares, uncertainty_band
from probewatch.training.plots import _finish, _plt

if TYPE_CHECKING:
    from probewatch.probes import Threshold
    from probewatch.training.calibration import OperatingPoint
    from probewatch.training.stage_activations import Splits
    from probewatch.training.stage_fit import FittedProbe

BAND_PLOT = "threshold_band.png"
POSITIVES = "positives (test)"
NEGATIVES = "negatives (test)"
CONTROL = "control (held out)"


def export_band(enabled: bool, point: OperatingPoint) -> float | None:
    """The band a trained bundle ships with (`--no-uncertainty-band`: none)."""
    return uncertainty_band(point, point.value) if enabled else None


def score_sets(fitted: FittedProbe, splits: Splits) -> dict[str, np.ndarray]:
    """Held-out score sets the band is measured on: test positives and negatives, the held-out control half."""
    scores, labels, test = fitted.scores, splits.pool.labels, splits.pool.test_idx
    y = labels[test]
    return {
        POSITIVES: scores[test][y == 1],
        NEGATIVES: scores[test][y == 0],
        CONTROL: fitted.control_scores[splits.control_held],
    }


def band_record(threshold: Threshold, sets: Mapping[str, np.ndarray], point: OperatingPoint) -> dict[str, Any]:
    """extra.operating_point.uncertainty_band: the edge, why it is there (`calibration.band_basis`) and, per
    held-out set, the share flagged, uncertain and recorded (what a reviewer sees at all); null edge when the
    bundle has no band."""
    return {
        "uncertain_from": threshold.uncertain_from,
        "set_by": band_basis(point, threshold.value, threshold.uncertain_from),
        "shares": {k: band_shares(v, threshold.uncertain_from, threshold.value) for k, v in sets.items()},
    }


def plot_band(out: Path, probe_id: str, threshold: Threshold, sets: Mapping[str, np.ndarray]) -> Path:
    """`threshold_band.png` of a trained probe (next to its report)."""
    title = f"{probe_id}: recall / flagged vs threshold" + (
        " (band shaded)" if threshold.uncertain_from is not None else ""
    )
    return plot_threshold_band(sets, threshold.value, threshold.uncertain_from, out / BAND_PLOT, title, (POSITIVES,))


def share_above(scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """For each threshold in `grid`, the share of (finite) `scores` at or above it (alerts fire at >=)."""
    s = np.sort(np.asarray(scores, dtype=np.float64)[np.isfinite(scores)])
    if s.size == 0:
        return np.full(grid.shape, np.nan)
    return 1.0 - np.searchsorted(s, grid, side="left") / s.size


def plot_threshold_band(
    groups: Mapping[str, np.ndarray],
    threshold: float,
    uncertain_from: float | None,
    path: Path,
    title: str,
    positives: tuple[str, ...] = (),
) -> Path:
    """Share at or above each threshold per score set (`positives` are labelled recall), the threshold and band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    finite = [np.asarray(g, dtype=np.float64) for g in groups.values() if len(g)]
    values = np.concatenate([g[np.isfinite(g)] for g in finite]) if finite else np.zeros(0)
    edges = [threshold] + ([uncertain_from] if uncertain_from is not None else [])
    lo = float(np.percentile(values, 0.5)) if values.size else min(edges)
    hi = float(np.percentile(values, 99.5)) if values.size else max(edges)
    lo, hi = min(lo, *edges) - 0.5, max(hi, *edges) + 0.5
    grid = np.linspace(lo, hi, 400)
    for name, scores in groups.items():
        if not len(scores):
            continue
        what = "recall" if name in positives else "flagged"
        style = "-" if name in positives else "--"
        ax.plot(grid, share_above(np.asarray(scores), grid), style, label=f"{name}: {what} (n={len(scores)})")
    if uncertain_from is not None:
        ax.axvspan(
            uncertain_from,
            threshold,
            color="tab:orange",
            alpha=0.18,
            label=f"uncertain [{uncertain_from:.2f}, {threshold:.2f}): low-priority review, no alert",
        )
    ax.axvline(threshold, color="black", linestyle="-", linewidth=1, label=f"threshold {threshold:.2f}")
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("threshold (calibrated logit)")
    ax.set_ylabel("share of the set at or above it")
    return _finish(plt, fig, ax, path, title, grid=True)
