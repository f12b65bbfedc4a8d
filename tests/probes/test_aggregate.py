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


@pytest.mark.parametrize("method", ["mean", "max", "last", "ema", "rolling_mean_max"])
def test_streaming_in_chunks_equals_offline(method):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=97)
    spec = Aggregation(method, window=7, alpha=0.3)
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
