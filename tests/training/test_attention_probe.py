"""The attention-pooling estimator: learns a planted direction, beats mean pooling when one token in a
long sequence carries the signal, is deterministic for a seed, keeps the sklearn contract, and exports
a bundle the serving runtime scores exactly like `decision_function`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone

from probewatch.metrics import auroc
from probewatch.probes import Aggregation, ProbeRuntime, Threshold, aggregate, load_bundle
from probewatch.training.attention_probe import AttentionProbe, attention_segments, ragged
from probewatch.training.estimators import LogisticProbe, make_attention_probe
from probewatch.training.export import export_bundle

D = 12
FP = "pwfp1:" + "cd" * 16
FAST = {"max_epochs": 200, "patience": 20, "lr": 0.05}


def _one_token_data(n: int, seed: int, strength: float = 3.0) -> tuple[list[np.ndarray], np.ndarray]:
    """Sequences of 15-45 noise tokens; one token per sequence is marked (a key direction) and carries
    +/- strength along the signal direction: the label lives in that token only."""
    rng = np.random.default_rng(seed)
    signal, key = np.eye(D)[0], np.eye(D)[1]
    xs, ys = [], []
    for i in range(n):
        length = int(rng.integers(15, 46))
        x = rng.normal(size=(length, D))
        label = i % 2
        x[rng.integers(length)] += 4.0 * key + (strength if label else -strength) * signal
        xs.append(x.astype(np.float32))
        ys.append(label)
    return xs, np.array(ys)


def _planted_data(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Every token of a positive sequence is shifted along a random unit direction."""
    rng = np.random.default_rng(seed)
    u = np.random.default_rng(99).normal(size=D)
    u /= np.linalg.norm(u)
    xs, ys = [], []
    for i in range(n):
        label = i % 2
        x = rng.normal(size=(int(rng.integers(5, 20)), D)) + (0.8 if label else 0.0) * u
        xs.append(x.astype(np.float32))
        ys.append(label)
    return xs, np.array(ys)


@pytest.fixture(scope="module")
def one_token():
    train, test = _one_token_data(240, 0), _one_token_data(200, 1)
    probe = AttentionProbe(random_state=0, **FAST).fit(*train)
    return probe, train, test


def test_learns_a_planted_direction():
    (x, y), (xt, yt) = _planted_data(200, 2), _planted_data(200, 3)
    probe = make_attention_probe(seed=0, **FAST).fit(x, y)
    assert auroc(probe.decision_function(xt), yt) > 0.95
    _, (w, _) = probe.raw_forms()
    u = np.random.default_rng(99).normal(size=D)
    assert abs(w @ u) / (np.linalg.norm(w) * np.linalg.norm(u)) > 0.8  # the value direction found it


def test_beats_mean_pooling_when_one_token_carries_the_signal(one_token):
    probe, (x, y), (xt, yt) = one_token
    attention = auroc(probe.decision_function(xt), yt)
    mean_probe = LogisticProbe().fit(np.stack([m.mean(0) for m in x]), y)
    mean = auroc(mean_probe.decision_function(np.stack([m.mean(0) for m in xt])), yt)
    assert attention > 0.95 and attention > mean + 0.15, (attention, mean)
    (q, _), _ = probe.raw_forms()
    assert np.argmax(np.abs(q)) == 1  # the query reads the key direction
    assert 1 <= probe.n_epochs_ < FAST["max_epochs"]  # early stopping chose the epochs


def test_deterministic_for_a_seed_and_sklearn_contract():
    x, y = _one_token_data(80, 5)
    a = AttentionProbe(random_state=3, max_epochs=40).fit(x, y)
    b = clone(a).fit(x, y)
    assert clone(a).get_params()["random_state"] == 3 and not hasattr(clone(a), "q_")
    np.testing.assert_array_equal(a.q_, b.q_)
    np.testing.assert_array_equal(a.w_, b.w_)
    proba = a.predict_proba(x)
    assert proba.shape == (80, 2) and np.allclose(proba.sum(1), 1.0)
    assert set(a.predict(x)) <= {0, 1}
    # stacked rows + offsets give the same scores as the list of matrices
    rows, offsets = ragged(x)
    np.testing.assert_allclose(a.decision_function(rows, offsets=offsets), a.decision_function(x))


def test_bad_input_is_refused():
    x, y = _one_token_data(10, 6)
    with pytest.raises(ValueError, match="binary with labels 0/1"):
        AttentionProbe().fit(x, y + 1)
    with pytest.raises(ValueError, match="10 examples but 9 labels"):
        AttentionProbe().fit(x, y[:9])
    with pytest.raises(ValueError, match="offsets"):
        AttentionProbe().fit(np.zeros((5, D)), y[:2], offsets=[0, 2, 4])
    with pytest.raises(ValueError, match="one d"):
        AttentionProbe().fit([np.zeros((3, D)), np.zeros((3, D + 1))], [0, 1])


def test_segments_equal_the_streaming_aggregator():
    rng = np.random.default_rng(0)
    a, v = rng.normal(size=50) * 30, rng.normal(size=50)
    offsets = np.array([0, 0, 7, 7, 31, 50])  # empty segments included
    got = attention_segments(a, v, offsets)
    assert np.isnan(got[0]) and np.isnan(got[2])
    for i in (1, 3, 4):
        pairs = np.column_stack([a, v])[offsets[i] : offsets[i + 1]]
        assert got[i] == pytest.approx(aggregate(pairs, Aggregation("attention")), rel=1e-12)


def test_export_scores_like_decision_function_after_platt(one_token, tmp_path):
    probe, _, (xt, _) = one_token
    probe = clone(probe).set_params(max_epochs=60).fit(*_one_token_data(60, 8))
    probe.affine_(1.7, -0.3)
    path = export_bundle(
        tmp_path / "att",
        probe,
        probe_id="att",
        behaviour="deception",
        method="attention",
        model_id="tiny",
        fingerprint=FP,
        d_model=D,
        n_layers=4,
        layer=2,
        token_selection="response",
        aggregation=Aggregation("attention"),
        threshold=Threshold(value=0.0, method="fixed", fpr=None),
        metrics={},
        training={},
        description="test",
    )
    runtime = ProbeRuntime([load_bundle(path)])
    want = probe.decision_function(xt[:20])
    for x, w in zip(xt[:20], want):
        pairs = runtime.score_layers({2: torch.from_numpy(x)})["att"].double().numpy()
        assert aggregate(pairs, Aggregation("attention")) == pytest.approx(w, abs=1e-4)
