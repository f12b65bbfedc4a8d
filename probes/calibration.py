"""A probe's calibration score distribution, compact enough for the manifest: what live scores drift from.

The training export scores the control calibration set (the benign conversations its threshold was
set on) and keeps, in `extra.calibration_reference`, `bins` quantile bins of those per-conversation
aggregate scores (interior edges + each bin's share) and the share at or above the shipped threshold
(the alert rate to expect on traffic like it). The sidecar bins each live generation's aggregate into
the same bins over a sliding window and reports the population stability index (PSI) between the two
(server/sidecar/drift.py). Bundles exported before this have no reference: they report no drift.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from probewatch.probes.errors import BundleError

DEFAULT_BINS = 20
#: a share below this counts as this in PSI (an empty bin would make the index infinite)
PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class CalibrationReference:
    edges: tuple[float, ...]  # interior bin edges, strictly increasing; bin i = values in [edges[i-1], edges[i])
    fractions: tuple[float, ...]  # the calibration set's share per bin (len(edges) + 1, sums to 1)
    expected_alert_rate: float  # share of the calibration set at or above the shipped threshold
    n: int  # calibration conversations
    calibration_set: str = ""

    def bin(self, value: float) -> int:
        return bisect_right(self.edges, value)

    def psi(self, counts: Sequence[int] | np.ndarray) -> float:
        """Population stability index of live bin `counts` against this reference (0: same distribution;
        above 0.25 is the usual "shifted" mark)."""
        live = np.asarray(counts, dtype=np.float64)
        total = live.sum()
        if total <= 0:
            return math.nan
        p = np.maximum(live / total, PSI_FLOOR)
        q = np.maximum(np.asarray(self.fractions, dtype=np.float64), PSI_FLOOR)
        return float(np.sum((p - q) * np.log(p / q)))

    def to_json(self) -> dict[str, Any]:
        return {
            "bins": len(self.fractions),
            "edges": [float(e) for e in self.edges],
            "fractions": [float(f) for f in self.fractions],
            "expected_alert_rate": float(self.expected_alert_rate),
            "n": int(self.n),
            "calibration_set": self.calibration_set,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CalibrationReference:
        """BundleError naming what is wrong (a hand-edited manifest must not crash a sidecar later)."""
        try:
            edges = tuple(float(e) for e in data["edges"])
            fractions = tuple(float(f) for f in data["fractions"])
            rate, n = float(data["expected_alert_rate"]), int(data["n"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"calibration_reference: {exc!r} (needs edges, fractions, expected_alert_rate, n)"
            ) from None
        if len(fractions) != len(edges) + 1:
            raise BundleError(
                f"calibration_reference: {len(fractions)} fractions for {len(edges)} edges (need edges + 1)"
            )
        if not all(math.isfinite(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise BundleError("calibration_reference: edges must be finite and strictly increasing")
        if any(not 0 <= f <= 1 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise BundleError("calibration_reference: fractions must lie in [0, 1] and sum to 1")
        if not 0 <= rate <= 1 or n <= 0:
            raise BundleError("calibration_reference: expected_alert_rate must lie in [0, 1] and n be positive")
        return cls(edges, fractions, rate, n, str(data.get("calibration_set", "")))


def reference_from_scores(
    scores: Sequence[float] | np.ndarray, threshold: float, bins: int = DEFAULT_BINS, calibration_set: str = ""
) -> CalibrationReference | None:
    """Quantile bins of calibration `scores` (per-conversation aggregates, the probe's units); None when
    fewer than `bins` finite scores (too few to say anything about drift)."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < bins:
        return None
    edges = np.unique(np.quantile(s, np.arange(1, bins) / bins))  # ties (many equal scores) merge bins
    counts = np.bincount(np.searchsorted(edges, s, side="right"), minlength=edges.size + 1)
    fractions = counts / s.size
    return CalibrationReference(
        tuple(float(e) for e in edges),
        tuple(float(f) for f in fractions),
        float(np.mean(s >= threshold)),
        int(s.size),
        calibration_set,
    )
