"""Our metrics (used on the serving side, no sklearn there) equal scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from probewatch.metrics import auroc, recall_at_threshold, threshold_at_fpr


def test_auroc_equals_sklearn_including_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 1)  # rounding creates ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    with pytest.raises(ValueError):
        auroc([1, 2], [1, 1])


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.2])
def test_threshold_at_fpr_bounds_false_positives(fpr):
    rng = np.random.default_rng(1)
    negatives = rng.normal(size=500)
    t = threshold_at_fpr(negatives, fpr)
    assert (negatives >= t).mean() <= fpr + 1e-12
    assert (negatives >= np.nextafter(t, -np.inf) - 1e-9).mean() >= (negatives >= t).mean()
    positives = rng.normal(2, 1, size=200)
    assert recall_at_threshold(positives, t) == pytest.approx((positives >= t).mean())
