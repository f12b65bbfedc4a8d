"""`bench reading-by-source`: the per-unit table it reports (the fits are `training.nested.FoldScorer`'s)."""

from __future__ import annotations

import numpy as np
import pytest

from probewatch.benchmarks.reading_by_source import unit_scores


def test_unit_scores_give_pooled_and_per_kind_auroc_and_mean_score():
    scores = np.array([0.1, 0.9, 0.2, 0.8, 5.1, 5.9, 3.0])
    labels = np.array([0, 1, 0, 1, 0, 1, 1])
    kinds = np.array(["a", "a", "a", "a", "b", "b", "c"])
    out = unit_scores(scores, labels, kinds, np.arange(6))  # kind c is not in the unit
    assert set(out["kinds"]) == {"a", "b"}
    assert out["kinds"]["a"]["auroc"] == 1.0 and out["kinds"]["b"]["auroc"] == 1.0
    assert out["kinds"]["b"]["mean_score"] == pytest.approx(5.5)
    # each kind separates perfectly, but b sits above a: the pooled AUROC says so (b's negative outranks a's positives)
    assert out["pooled"] == pytest.approx(7 / 9)
    one_label = unit_scores(scores, labels, kinds, np.array([6, 0, 1]))
    assert one_label["kinds"]["c"]["auroc"] is None and one_label["kinds"]["c"]["mean_score"] == 3.0
