"""Our metrics (used on the serving side, no sklearn there) equal scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from probewatch.metrics import auroc, misordered_pairs, recall_at_threshold, threshold_at_fpr


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


def test_misordered_pairs_count_each_items_wrong_pairs_and_sum_to_the_auroc_shortfall():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 120)
    scores = np.round(rng.normal(size=120) + labels, 1)  # ties count half, as in AUROC
    counts = misordered_pairs(scores, labels)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    for i in pos[:10]:
        assert counts[i] == sum((scores[i] < scores[j]) + 0.5 * (scores[i] == scores[j]) for j in neg)
    for j in neg[:10]:
        assert counts[j] == sum((scores[i] < scores[j]) + 0.5 * (scores[i] == scores[j]) for i in pos)
    shortfall = (1 - roc_auc_score(labels, scores)) * len(pos) * len(neg)
    assert counts[pos].sum() == counts[neg].sum() == pytest.approx(shortfall)
    assert misordered_pairs([0.1, 0.9, 0.2], [0, 1, 0]).tolist() == [0.0, 0.0, 0.0]  # perfectly ordered
