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


@pytest.mark.parametrize(
    "method", ["mean", "max", "last", "ema", "rolling_mean_max", "softmax", "max_norm", "rolling_mean_max_norm"]
)
def test_streaming_in_chunks_equals_offline(method):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=97)
    spec = Aggregation(method, window=7, alpha=0.3, temperature=0.4, length_scale=0.6)
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


def test_length_penalty_is_the_growth_of_a_maximum():
    from probewatch.probes.aggregate import length_penalty

    assert length_penalty(0.5, 1) == 0.0 and length_penalty(0.5, 7, window=8) == 0.0  # one draw: no growth
    assert length_penalty(0.0, 10_000) == 0.0
    assert length_penalty(2.0, 100) == pytest.approx(2.0 * math.sqrt(2 * math.log(100)))
    assert length_penalty(2.0, 800, window=8) == pytest.approx(length_penalty(2.0, 100))
    # hand-computed: max 4.0 of 5 tokens minus 0.5 * sqrt(2 ln 5)
    assert aggregate(SCORES, Aggregation("max_norm", length_scale=0.5)) == pytest.approx(
        4.0 - 0.5 * math.sqrt(2 * math.log(5))
    )


def test_a_long_honest_transcript_does_not_cross_by_length_alone():
    """Null token scores (spread 1): the raw maximum climbs ~1.5 from 50 to 5,000 tokens, the
    normalised one stays put, and a real burst still stands out in the long transcript."""
    rng = np.random.default_rng(1)

    def median_value(spec, n):
        return float(np.median([aggregate(rng.normal(size=n), spec) for _ in range(60)]))

    raw, norm = Aggregation("max"), Aggregation("max_norm", length_scale=1.0)
    assert median_value(raw, 5000) - median_value(raw, 50) > 1.2
    assert abs(median_value(norm, 5000) - median_value(norm, 50)) < 0.45
    burst = np.concatenate([rng.normal(size=2500), [6.0], rng.normal(size=2500)])
    assert aggregate(burst, norm) > median_value(norm, 5001) + 1.5


def test_length_normalised_offline_segments_equal_streaming():
    from probewatch.training.features import aggregate_segments

    rng = np.random.default_rng(2)
    x = rng.normal(size=400)
    offsets = np.array([0, 1, 1, 60, 400])
    for spec in (
        Aggregation("max_norm", length_scale=0.8),
        Aggregation("rolling_mean_max_norm", window=8, length_scale=0.3),
    ):
        offline = aggregate_segments(x, offsets, spec)
        streamed = [aggregate(x[a:b], spec) if b > a else math.nan for a, b in zip(offsets[:-1], offsets[1:])]
        np.testing.assert_allclose(offline, streamed, rtol=0, atol=1e-12)


def test_manifest_refuses_a_bad_length_scale_and_omits_a_zero_one():
    from probewatch.probes.errors import CorruptBundleError
    from tests.probes.helpers import make_manifest

    m = make_manifest()
    assert "length_scale" not in m.to_dict()["aggregation"]  # older runtimes read it unchanged
    for bad in (-1.0, math.inf, math.nan, True):
        m.aggregation = Aggregation("max_norm", length_scale=bad)
        with pytest.raises(CorruptBundleError, match="length_scale"):
            m.validate()
    m.aggregation = Aggregation("max_norm", length_scale=0.7)
    m.validate()
    assert m.to_dict()["aggregation"]["length_scale"] == 0.7


def test_length_normalised_maxima_alert_on_their_final_value():
    from probewatch.server.sidecar.specs import MONOTONE_AGGREGATIONS

    assert "max_norm" not in MONOTONE_AGGREGATIONS and "rolling_mean_max_norm" not in MONOTONE_AGGREGATIONS
