"""Length-normalised maxima in training: the scale each fitted probe sets, the row scores it is set from, and the Platt map."""

from __future__ import annotations

import numpy as np
import pytest

from probewatch.probes import Aggregation
from probewatch.training.features import ROW_BLOCK_MULTIPLE, LayerData, aggregate_segments, row_scores, score_all
from probewatch.training.sweep import in_calibrated_units, scaled_scores, with_temperature


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


@pytest.mark.parametrize("d", [4, 576])
def test_row_scores_are_the_whole_matrix_product_in_blocks(d):
    data = _layer([700, 1, 333, 2 * ROW_BLOCK_MULTIPLE + 5], d=d, seed=d)
    w, b = np.random.default_rng(1).normal(size=d), -0.7
    x = row_scores(w, b, data, "response")
    assert x.dtype == np.float64 and x.shape == (len(data.rows),)
    np.testing.assert_allclose(x, data.rows.astype(np.float64) @ w + b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="rows_scored holds 3 scores for 1551 rows"):
        score_all(w, b, data, "response", [Aggregation("mean")], rows_scored=x[:3])


def test_scaled_scores_equal_scaling_on_the_fit_rows_then_scoring_every_example():
    """One pass over the rows gives what gathering the fit examples' rows, scaling, then scoring all did."""
    data = _layer([40, 3, 90, 12, 0, 7, 300], d=6, seed=4)
    w, b = np.random.default_rng(2).normal(size=6), 0.2
    idx = np.array([6, 0, 3, 5])  # not sorted: the fit split's order
    aggs = [Aggregation("softmax"), Aggregation("rolling_mean_max_norm", window=8), Aggregation("max_norm")]
    scaled, scores = scaled_scores(aggs, w, b, data, idx, "response")
    rows, example = data.token_matrix(idx)
    x = rows.astype(np.float64) @ w + b
    assert scaled[0].temperature == pytest.approx(np.std(x), rel=1e-12)
    assert scaled[2].length_scale == pytest.approx(np.std(x), rel=1e-12)
    assert scaled[1].length_scale == pytest.approx(
        np.std(np.concatenate([np.convolve(x[example == e], np.ones(8) / 8, mode="valid") for e in (0, 1, 2)])),
        rel=1e-12,
    )
    direct = score_all(w, b, data, "response", scaled)
    for a in scaled:
        np.testing.assert_allclose(scores[a.method], direct[a.method], rtol=1e-12, equal_nan=True)
    assert np.isnan(scores["softmax"][4]) and np.isfinite(scores["softmax"][[0, 1, 2, 3, 5, 6]]).all()
    last_only, last_scores = scaled_scores([Aggregation("last")], w, b, data, idx, "prompt_last")
    assert last_only == [Aggregation("last")]
    np.testing.assert_allclose(last_scores["last"], data.last.astype(np.float64) @ w + b)
