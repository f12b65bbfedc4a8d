"""Detection metrics for a probe's per-dialogue scores: AUROC and recall at a target FPR.

Threshold rule (issue 3): from the control set when one is given (the deployment's benign
traffic), else from the negatives of the evaluated data. Recall at that threshold equals the
best true-positive rate at FPR <= target on the ROC curve of (positives, threshold source); the
tests pin both numbers to scikit-learn's `roc_auc_score` and `roc_curve`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from probewatch.metrics import Labels, Scores, auroc, recall_at_threshold, threshold_at_fpr


def flagged_share(scores: Scores, threshold: float) -> float | None:
    """The share of `scores` at or above `threshold` (alerts fire at >=, as live); None when there are none.
    Recall on positives, flagged share on negatives or control traffic: one rule for every report."""
    s = np.asarray(scores, dtype=np.float64)
    return float((s >= threshold).mean()) if s.size else None


def detection_metrics(
    scores: Scores, labels: Labels, control_scores: Scores | None = None, fpr: float = 0.01
) -> dict[str, Any]:
    """auroc, recall_at_fpr (+ threshold and its source), n_pos, n_neg, realised FPRs."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    pos, neg = s[y == 1], s[y == 0]
    out: dict[str, Any] = {"n_pos": int(pos.size), "n_neg": int(neg.size), "fpr_target": fpr}
    out["auroc"] = auroc(s, y) if pos.size and neg.size else None
    if control_scores is not None and len(control_scores):
        threshold, source = threshold_at_fpr(control_scores, fpr), "control"
        out["n_control"] = len(control_scores)
        out["auroc_vs_control"] = (
            auroc(np.concatenate([pos, control_scores]), np.r_[np.ones(pos.size), np.zeros(len(control_scores))])
            if pos.size
            else None
        )
    elif neg.size:
        threshold, source = threshold_at_fpr(neg, fpr), "negatives"
    else:
        threshold, source = None, None
    out["threshold"] = threshold
    out["threshold_source"] = source
    if threshold is not None:
        out["recall_at_fpr"] = recall_at_threshold(pos, threshold) if pos.size else None
        out["fpr_on_negatives"] = flagged_share(neg, threshold)
    return out
