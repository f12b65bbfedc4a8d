"""Detection metrics without scikit-learn (the serving side and the CLI use them too).

Tests check these against scikit-learn on fixed inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# what the functions below take: anything np.asarray reads as a 1-d array
Scores = Sequence[float] | np.ndarray
Labels = Sequence[int] | np.ndarray


def auroc(scores: Scores, labels: Labels) -> float:
    """Area under the ROC curve via the rank statistic (ties get average ranks)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative examples")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty_like(s)
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def misordered_pairs(scores: Scores, labels: Labels) -> np.ndarray:
    """Per item, the (positive, negative) pairs it is ordered wrongly in: a positive scored below a negative,
    a tie counting half, as in AUROC. The sum over positives is (1 - AUROC) x n_pos x n_neg, so the items with
    the largest counts are the ones an AUROC change is made of (`probewatch eval --compare-with`)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    p, n = s[y == 1], s[y == 0]
    pos, neg = np.sort(p), np.sort(n)  # by sorting: no n_pos x n_neg matrix on a large set
    out = np.zeros(len(s))
    lo, hi = np.searchsorted(neg, p, "left"), np.searchsorted(neg, p, "right")
    out[y == 1] = (len(neg) - hi) + 0.5 * (hi - lo)  # negatives above, ties half
    lo, hi = np.searchsorted(pos, n, "left"), np.searchsorted(pos, n, "right")
    out[y == 0] = lo + 0.5 * (hi - lo)  # positives below, ties half
    return out


def threshold_at_fpr(negative_scores: Scores, fpr: float) -> float:
    """Smallest threshold t with mean(neg >= t) <= fpr, strictly above the allowed negatives.

    The rule "flag when score >= t" then flags at most floor(fpr * n) of these negatives.
    """
    neg = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    if neg.size == 0:
        raise ValueError("threshold calibration needs at least one negative score")
    allowed = int(np.floor(fpr * neg.size + 1e-9))
    if allowed >= neg.size:
        return float(neg[-1])
    return float(np.nextafter(neg[allowed], np.inf))


def recall_at_threshold(positive_scores: Scores, threshold: float) -> float:
    pos = np.asarray(positive_scores, dtype=np.float64)
    return float((pos >= threshold).mean()) if pos.size else float("nan")
