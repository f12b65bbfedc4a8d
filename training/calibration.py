"""Score units and thresholds: Platt scaling folded into the probe, thresholds at a target FPR.

Contract (docs/architecture.md "Score units"): an exported score is a calibrated logit, so that
`sigmoid(score)` reads as P(behaviour) and every probe shares one axis. We fit a 1-D logistic
regression of held-out labels on the probe's raw (aggregated) scores with Platt's smoothed
targets, which keeps the slope finite when the held-out scores separate perfectly, then fold
slope and offset into the weights. Every aggregation the runtime offers (mean, max, last, ema,
rolling mean-max) commutes with a positive affine map, so calibrating aggregated scores is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probewatch.errors import ProbewatchError
from probewatch.metrics import Scores, threshold_at_fpr


class CalibrationError(ProbewatchError):
    """Calibration data cannot define a score scale (one class only, or an anti-correlated probe)."""


def platt_fit(raw_scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """(slope, offset) minimising cross-entropy of sigmoid(slope * s + offset) vs Platt targets."""
    from scipy.optimize import minimize

    s = np.asarray(raw_scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise CalibrationError(f"Platt scaling needs both classes (got {n_pos} positives, {n_neg} negatives)")
    target = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    center, spread = float(s.mean()), float(s.std()) or 1.0
    z = (s - center) / spread

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = params
        t = a * z + b
        log1pexp = np.logaddexp(0.0, t)
        value = float(np.sum(log1pexp - target * t))
        p = 0.5 * (1.0 + np.tanh(0.5 * t))
        g = p - target
        return value, np.array([float(g @ z), float(g.sum())])

    result = minimize(loss, x0=np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
    a, b = result.x
    slope = a / spread
    offset = b - a * center / spread
    if slope <= 0:
        raise CalibrationError(
            f"held-out scores are anti-correlated with the labels (Platt slope {slope:.3g}); the probe does not transfer"
        )
    return float(slope), float(offset)


def calibrated_threshold(control_scores: Scores, fpr: float) -> float:
    """Threshold flagging at most `fpr` of the control set (same units as the scores)."""
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr must be in [0, 1), got {fpr}")
    return threshold_at_fpr(control_scores, fpr)


def clear_hard_negatives(threshold: float, hard_negative_scores: Sequence[float], margin: float) -> float:
    """The threshold raised, if needed, to `margin` above every reviewed false positive's score.

    A reviewer's "false positive" verdict is a constraint, not one more sample in the FPR budget:
    the same traffic must not page them again (alerts fire at score >= threshold).
    """
    scores = np.asarray(hard_negative_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return float(threshold)
    return float(max(threshold, float(scores.max()) + margin))


@dataclass
class OperatingPoint:
    """The shipped threshold: the larger of two thresholds, so that both targets hold on calibration data.

    1. `control_threshold` flags at most `fpr` of the benign, production-like control set;
    2. `hard_negative_threshold` flags at most `hard_negative_fpr` of the behaviour's own negatives
       (honest answers in deception-laden contexts, reasoning without the motive, ...: the
       calibration split's label-0 examples), which ordinary traffic says nothing about.
    """

    value: float
    control_threshold: float
    fpr: float
    hard_negative_threshold: float | None = None
    hard_negative_fpr: float | None = None

    @property
    def set_by(self) -> str:
        if self.hard_negative_threshold is not None and self.hard_negative_threshold > self.control_threshold:
            return "hard_negatives"
        return "control"


def operating_point(
    control_scores: Sequence[float],
    fpr: float,
    hard_negative_scores: Sequence[float] | None = None,
    hard_negative_fpr: float | None = 0.2,
) -> OperatingPoint:
    """`OperatingPoint` from control scores and (optionally) the behaviour's calibration negatives."""
    t_control = calibrated_threshold(control_scores, fpr)
    if hard_negative_fpr is None or hard_negative_scores is None or len(hard_negative_scores) == 0:
        return OperatingPoint(t_control, t_control, fpr)
    t_hard = calibrated_threshold(hard_negative_scores, hard_negative_fpr)
    return OperatingPoint(max(t_control, t_hard), t_control, fpr, t_hard, hard_negative_fpr)


def uncertainty_band(point: OperatingPoint, shipped: float, explicit: float | None = None) -> float | None:
    """The lower edge of the uncertainty band [edge, shipped) below the shipped threshold, or None (no band).

    `explicit` (`probewatch calibrate --uncertain-from`) wins and must lie below `shipped`. Otherwise the band
    exists where the shipped threshold is stricter than the control set alone asks for (it was raised by the
    behaviour's own negatives or by reviewed false positives): the band reaches down to the control threshold,
    so what ordinary traffic would have flagged at the target FPR is still recorded for review (low priority,
    at most `fpr` of that traffic) while only scores that also clear the look-alike negatives page anyone.
    """
    if explicit is not None:
        if not np.isfinite(explicit) or not explicit < shipped:
            raise CalibrationError(
                f"the uncertainty band must start below the threshold {shipped:.4g}, got {explicit!r}"
            )
        return float(explicit)
    if point.control_threshold < shipped and np.isfinite(point.control_threshold):
        return float(point.control_threshold)
    return None


def band_shares(scores: Sequence[float] | np.ndarray, lower: float | None, threshold: float) -> dict[str, float | None]:
    """Share of `scores` at or above the threshold (`flagged`), inside the band (`uncertain`), and at or above
    the band's lower edge (`recorded`: what reaches a reviewer at all); None for an empty set."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return {"flagged": None, "uncertain": None, "recorded": None}
    flagged = float(np.mean(s >= threshold))
    uncertain = float(np.mean((s >= lower) & (s < threshold))) if lower is not None else 0.0
    return {"flagged": flagged, "uncertain": uncertain, "recorded": flagged + uncertain}
