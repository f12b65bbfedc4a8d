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
from typing import TypedDict

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


#: the share of production-like control traffic the alerting threshold flags (the page budget: ~1% of plain traffic)
CONTROL_FPR = 0.01
#: the recall the alerting threshold should keep on the behaviour's calibration positives (docs/quality.md aims)
MIN_RECALL = 0.5
#: the most of the behaviour's own negatives (honest answers in the same context) the threshold should flag
MAX_FLAGGED_NEGATIVES = 0.2
#: a kind's calibration negatives get their own `hard_negative_fpr` limit from this many on (fewer: one
#: example would set the threshold alone); smaller kinds still count in the pooled limit
MIN_KIND_NEGATIVES = 5
#: a held-out source's negatives ask for a transfer rate (`transfer_rate`) from this many on
MIN_SOURCE_NEGATIVES = 20
#: the most production-like control traffic a recall band may record as `uncertain` (review load, not pages)
BAND_CONTROL_FPR = 0.05
#: the least recall on the calibration positives the transfer limit may leave: it spends recall to hold held-out
#: sources' negatives, down to half of `MIN_RECALL` and no further. A source no threshold in the calibration
#: negatives' range can hold asks for a rate of 0, a threshold above every one of them, set by a single sample;
#: two deception runs shipped such thresholds with recall 0.013 and 0.038. Below this the recall band records
#: what the alert no longer catches.
MIN_TRANSFER_RECALL = 0.25


class RecallBandLimits(TypedDict):
    """`OperatingPoint.recall_band_limits()`: what the report's and the manifest's operating point keep of it."""

    min_recall: float | None
    recall_threshold: float | None
    band_floor: float | None
    band_control_fpr: float | None


@dataclass
class OperatingPoint:
    """The shipped threshold: the larger of two thresholds, so that both targets hold on calibration data.

    1. `control_threshold` flags at most `fpr` of the benign, production-like control set;
    2. `hard_negative_threshold` flags at most `hard_negative_fpr` of the behaviour's own negatives
       (honest answers in deception-laden contexts, reasoning without the motive, ...: the
       calibration split's label-0 examples), which ordinary traffic says nothing about. Where their
       kinds are given, the limit holds for each kind with `MIN_KIND_NEGATIVES` or more as well as for
       all of them pooled: a kind with few examples (long transcripts) barely moves a pooled quantile,
       yet is the kind whose negatives all cross a length-inflated threshold. `hard_negative_kind`
       names the kind that set it (None: the pooled limit).
    3. `transfer_threshold` flags at most `transfer_fpr` of the calibration negatives pooled, where the
       nested held-out-source estimate found that the rule above, learnt without a source, flags more than
       `hard_negative_fpr` of that source's negatives (`transfer_rate`): a threshold that holds on the pool
       but not on data from another author is raised to what held-out sources asked for, but never past the
       threshold that keeps `transfer_recall_floor` of the calibration positives (`MIN_TRANSFER_RECALL`; set
       only where that cap lowered the transfer threshold).

    Where the calibration positives are known, `recall_threshold` is the highest threshold that still
    keeps `min_recall` of them and `band_floor` the one that records `band_control_fpr` of the control set:
    the limits of a recall band (`uncertainty_band`) when the shipped threshold keeps less recall than that.
    """

    value: float
    control_threshold: float
    fpr: float
    hard_negative_threshold: float | None = None
    hard_negative_fpr: float | None = None
    hard_negative_kind: str | None = None
    hard_negatives_per_kind: bool = False
    transfer_threshold: float | None = None
    transfer_fpr: float | None = None
    transfer_recall_floor: float | None = None
    recall_threshold: float | None = None
    min_recall: float | None = None
    band_floor: float | None = None
    band_control_fpr: float | None = None

    def recall_band_limits(self) -> RecallBandLimits:
        """The recall band's limits by name, as the training report and the manifest's operating point keep them."""
        return RecallBandLimits(
            min_recall=self.min_recall,
            recall_threshold=self.recall_threshold,
            band_floor=self.band_floor,
            band_control_fpr=self.band_control_fpr,
        )

    @property
    def set_by(self) -> str:
        below = max(self.control_threshold, self.hard_negative_threshold or -np.inf)
        if self.transfer_threshold is not None and self.transfer_threshold > below:
            return "transfer"
        if self.hard_negative_threshold is not None and self.hard_negative_threshold > self.control_threshold:
            return "hard_negatives"
        return "control"


def threshold_at_recall(positive_scores: Sequence[float] | np.ndarray, recall: float) -> float:
    """The highest threshold at which at least `recall` of the (finite) positive scores are at or above it."""
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    s = np.sort(np.asarray(positive_scores, dtype=np.float64))
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise CalibrationError("no finite positive scores to set a recall threshold on")
    keep = int(np.ceil(recall * s.size - 1e-9))  # this many positives must score at or above the threshold
    return float(s[s.size - keep])


def negatives_threshold(
    scores: Sequence[float] | np.ndarray,
    fpr: float,
    kinds: Sequence[str] | np.ndarray | None = None,
    min_kind: int = MIN_KIND_NEGATIVES,
) -> tuple[float, str | None]:
    """(threshold, kind that set it or None) flagging at most `fpr` of the negatives pooled and, where `kinds`
    are given, of each kind with `min_kind` or more of them."""
    s = np.asarray(scores, dtype=np.float64)
    best, by = calibrated_threshold(s, fpr), None
    if kinds is None:
        return best, by
    k = np.asarray(kinds).astype(str)
    if k.shape != s.shape:
        raise ValueError(f"{k.size} kinds for {s.size} negative scores")
    for kind in sorted(set(k.tolist())):
        own = s[k == kind]
        if own.size >= min_kind and (t := calibrated_threshold(own, fpr)) > best:
            best, by = t, kind
    return best, by


def transfer_rate(
    calibration_negatives: Sequence[float] | np.ndarray,
    threshold: float,
    held_out_negatives: Sequence[float] | np.ndarray,
    target: float,
) -> float:
    """The share of `calibration_negatives` a threshold may flag so that it flags at most `target` of a
    held-out source's negatives: `target` itself where `threshold` already holds there, else the rate whose
    threshold (`calibrated_threshold`) sits at or above the lowest one that holds (0.0: even a threshold above
    every calibration negative does not). A rate, not a score: fold and shipped probes have their own scales."""
    held = np.asarray(held_out_negatives, dtype=np.float64)
    needed = calibrated_threshold(held, target)  # the lowest threshold flagging <= target of them
    if threshold >= needed:
        return float(target)
    cal = np.asarray(calibration_negatives, dtype=np.float64)
    above = int((cal >= needed).sum())  # a rate allowing fewer than these keeps the threshold >= needed
    return float(min(target, max(0, above - 1) / cal.size)) if cal.size else 0.0


def operating_point(
    control_scores: Sequence[float],
    fpr: float,
    hard_negative_scores: Sequence[float] | None = None,
    hard_negative_fpr: float | None = MAX_FLAGGED_NEGATIVES,
    positive_scores: Sequence[float] | np.ndarray | None = None,
    min_recall: float = MIN_RECALL,
    band_control_fpr: float = BAND_CONTROL_FPR,
    hard_negative_kinds: Sequence[str] | np.ndarray | None = None,
    transfer_fpr: float | None = None,
    min_transfer_recall: float = MIN_TRANSFER_RECALL,
) -> OperatingPoint:
    """`OperatingPoint` from control scores and (optionally) the behaviour's calibration negatives and positives
    (`hard_negative_kinds`: each negative's kind, for the per-kind limit; `transfer_fpr`: the nested
    estimate's `transfer_rate`, for the transfer limit, capped where the positives are given so that it keeps
    `min_transfer_recall` of them)."""
    t_control = calibrated_threshold(control_scores, fpr)
    point = OperatingPoint(t_control, t_control, fpr)
    positives = None if positive_scores is None else np.asarray(positive_scores, dtype=np.float64)
    if positives is not None and not np.isfinite(positives).any():
        positives = None
    if hard_negative_fpr is not None and hard_negative_scores is not None and len(hard_negative_scores) > 0:
        t_hard, kind = negatives_threshold(hard_negative_scores, hard_negative_fpr, hard_negative_kinds)
        point = OperatingPoint(max(t_control, t_hard), t_control, fpr, t_hard, hard_negative_fpr, kind)
        point.hard_negatives_per_kind = hard_negative_kinds is not None
        if transfer_fpr is not None and transfer_fpr < hard_negative_fpr:
            point.transfer_fpr = float(transfer_fpr)
            point.transfer_threshold = calibrated_threshold(hard_negative_scores, transfer_fpr)
            cap = None if positives is None else threshold_at_recall(positives, min_transfer_recall)
            if cap is not None and cap < point.transfer_threshold:
                point.transfer_threshold, point.transfer_recall_floor = cap, float(min_transfer_recall)
            point.value = max(point.value, point.transfer_threshold)
    if positives is not None:
        point.recall_threshold = threshold_at_recall(positives, min_recall)
        point.min_recall = min_recall
        point.band_control_fpr = max(band_control_fpr, fpr)  # a band never records less control than the threshold
        point.band_floor = calibrated_threshold(control_scores, point.band_control_fpr)
    return point


def uncertainty_band(point: OperatingPoint, shipped: float, explicit: float | None = None) -> float | None:
    """The lower edge of the uncertainty band [edge, shipped) below the shipped threshold, or None (no band).

    `explicit` (`probewatch calibrate --uncertain-from`) wins and must lie below `shipped`. Otherwise a band
    exists in one of two cases (`band_basis` names which):

    - the shipped threshold is stricter than the control set alone asks for (raised by the behaviour's own
      negatives or by reviewed false positives): the band reaches down to the control threshold, so what
      ordinary traffic would have flagged at the target FPR is still recorded for review (low priority, at
      most `fpr` of that traffic) while only scores that also clear the look-alike negatives page anyone;
    - the shipped threshold keeps less than `min_recall` of the calibration positives (one threshold cannot
      hold ~1% of ordinary traffic and half the behaviour): the band reaches down to where `min_recall` is
      kept, but never records more than `band_control_fpr` of the control set or `hard_negative_fpr` of the
      behaviour's own negatives, so the recall it buys costs bounded review time and no pages.
    """
    if explicit is not None:
        if not np.isfinite(explicit) or not explicit < shipped:
            raise CalibrationError(
                f"the uncertainty band must start below the threshold {shipped:.4g}, got {explicit!r}"
            )
        return float(explicit)
    return _automatic_band(point, shipped)[0]


def _automatic_band(point: OperatingPoint, shipped: float) -> tuple[float | None, str | None]:
    """(edge, basis) of the band `uncertainty_band` sets without `explicit`: one rule for the edge and its name."""
    if point.control_threshold < shipped and np.isfinite(point.control_threshold):
        return float(point.control_threshold), "control_threshold"
    if point.recall_threshold is not None and point.recall_threshold < shipped:
        floors = [point.recall_threshold, point.band_floor, point.hard_negative_threshold]
        edge = max(float(x) for x in floors if x is not None and np.isfinite(x))
        if edge < shipped:
            return edge, "recall"
    return None, None


def band_basis(point: OperatingPoint, shipped: float, edge: float | None) -> str | None:
    """Why a band computed by `uncertainty_band` (without `explicit`) is there: "control_threshold", "recall",
    or None for no band (`edge` None: the export or `calibrate` shipped none)."""
    return None if edge is None else _automatic_band(point, shipped)[1]


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
