"""Length-normalised maxima in training: the scale each fitted probe sets, and the Platt map."""

from __future__ import annotations

import numpy as np
import pytest

from probewatch.probes import Aggregation
from probewatch.training.features import LayerData, aggregate_segments
from probewatch.training.sweep import in_calibrated_units, with_temperature


def _layer(lengths, d=4, seed=0) -> LayerData:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = rng.normal(size=(int(offsets[-1]), d)).astype(np.float32)
    return LayerData(3, rows, offsets, rng.normal(size=(len(lengths), d)).astype(np.float32))


def test_each_scale_comes_from_the_probe_scores_it_is_applied_to():
    data = _layer([40, 3, 90, 12])
    w, b = np.array([0.5, -1.0, 0.25, 2.0]), 0.3
    idx = np.array([0, 2, 3])
    aggs = [
        Aggregation("max_norm"),
        Aggregation("rolling_mean_max_norm", window=8),
        Aggregation("softmax"),
        Aggregation("max"),
    ]
    out = with_temperature(aggs, w, b, data, idx, "response")
    rows, example = data.token_matrix(idx)
    x = rows.astype(np.float64) @ w + b
    assert out[0].length_scale == pytest.approx(np.std(x))
    assert out[2].temperature == pytest.approx(np.std(x))
    assert out[3] == aggs[3]  # untouched
    means = [np.convolve(x[example == e], np.ones(8) / 8, mode="valid") for e in range(3)]
    assert out[1].length_scale == pytest.approx(np.std(np.concatenate(means)))
    assert out[1].length_scale < out[0].length_scale  # window means spread less than tokens
    assert with_temperature(aggs, w, b, data, idx, "prompt_last") == aggs  # one token: nothing to scale


def test_the_platt_map_moves_the_penalty_with_the_scores():
    data = _layer([30, 200])
    x = data.rows.astype(np.float64) @ np.array([1.0, 0.5, -0.5, 0.2])
    raw_agg = Aggregation("rolling_mean_max_norm", window=4, length_scale=0.4, temperature=0.9)
    slope, offset = 1.7, -0.3
    cal = in_calibrated_units(raw_agg, slope)
    assert (cal.length_scale, cal.temperature) == pytest.approx((0.4 * 1.7, 0.9 * 1.7))
    raw = aggregate_segments(x, data.offsets, raw_agg)
    calibrated = aggregate_segments(slope * x + offset, data.offsets, cal)
    np.testing.assert_allclose(calibrated, slope * raw + offset, rtol=1e-12, atol=1e-12)
