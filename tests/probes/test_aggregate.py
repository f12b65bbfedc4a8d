"""Aggregators: hand-computed values; streaming in chunks == offline over the whole sequence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from probewatch.probes import Aggregation, aggregate, make_aggregator

SCORES = [1.0, -2.0, 4.0, 0.5, 3.0]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (Aggregation("mean"), sum(SCORES) / 5),
        (Aggregation("max"), 4.0),
        (Aggregation("last"), 3.0),
        (
            Aggregation("ema", alpha=0.5),
            0.5 * 3.0 + 0.5 * (0.5 * 0.5 + 0.5 * (0.5 * 4.0 + 0.5 * (0.5 * -2.0 + 0.5 * 1.0))),
        ),
        # windows of 2: [1], [1,-2], [-2,4], [4,.5], [.5,3] -> means 1, -0.5, 1, 2.25, 1.75
        (Aggregation("rolling_mean_max", window=2), 2.25),
    ],
)
def test_known_values(spec, expected):
    assert aggregate(SCORES, spec) == pytest.approx(expected)


@pytest.mark.parametrize("method", ["mean", "max", "last", "ema", "rolling_mean_max", "softmax"])
def test_streaming_in_chunks_equals_offline(method):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=97)
    spec = Aggregation(method, window=7, alpha=0.3, temperature=0.4)
    agg = make_aggregator(spec)
    for chunk in np.array_split(scores, [1, 5, 6, 40, 90]):
        agg.update(chunk)
    assert agg.value == pytest.approx(aggregate(scores, spec), abs=1e-12)
    assert agg.count == 97


def test_empty_is_nan_and_rolling_window_keeps_short_burst_visible():
    assert math.isnan(make_aggregator(Aggregation("mean")).value)
    long_honest = [-3.0] * 200 + [4.0] * 6 + [-3.0] * 200
    assert aggregate(long_honest, Aggregation("mean")) < 0  # diluted
    assert aggregate(long_honest, Aggregation("rolling_mean_max", window=6)) == pytest.approx(4.0)


def test_softmax_is_the_softmax_weighted_mean_between_mean_and_max():
    x = np.array(SCORES)
    t = 1.5
    weights = np.exp(x / t) / np.exp(x / t).sum()
    assert aggregate(SCORES, Aggregation("softmax", temperature=t)) == pytest.approx(float(weights @ x))
    assert aggregate(SCORES, Aggregation("softmax", temperature=1e4)) == pytest.approx(np.mean(SCORES), abs=1e-3)
    assert aggregate(SCORES, Aggregation("softmax", temperature=1e-3)) == pytest.approx(4.0)
    # huge scores overflow a naive exp; the running max keeps it finite (rising and falling sequences)
    big = [1000.0, 2000.0, 1500.0, 3000.0, -50.0]
    assert aggregate(big, Aggregation("softmax", temperature=1.0)) == pytest.approx(3000.0)
    assert aggregate(big[::-1], Aggregation("softmax", temperature=1.0)) == pytest.approx(3000.0)


def test_softmax_commutes_with_a_positive_affine_map_when_the_temperature_scales():
    """Platt scaling folds s -> a*s + b into the weights; the bundle's temperature is scaled by a."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    a, b, t = 2.5, -1.0, 0.7
    before = aggregate(x, Aggregation("softmax", temperature=t))
    after = aggregate(a * x + b, Aggregation("softmax", temperature=a * t))
    assert after == pytest.approx(a * before + b)


def test_manifest_refuses_a_bad_softmax_temperature():
    from probewatch.probes.errors import CorruptBundleError
    from tests.probes.helpers import make_manifest

    m = make_manifest()
    m.aggregation = Aggregation("softmax", temperature=0.0)
    with pytest.raises(CorruptBundleError, match="temperature"):
        m.validate()
