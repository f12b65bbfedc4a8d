"""Cached scoring equals the runtime's aggregation; eval metrics equal scikit-learn's; Platt and splits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve

from probewatch.probes.aggregate import aggregate
from probewatch.probes.manifest import Aggregation
from probewatch.training.calibration import CalibrationError, calibrated_threshold, platt_fit
from probewatch.training.features import LayerData, aggregate_segments, training_matrix
from probewatch.training.metrics import detection_metrics, flagged_share
from probewatch.training.splits import SplitError, check_disjoint, grouped_split, leave_one_kind_out


@pytest.mark.parametrize(
    "spec",
    [
        Aggregation("mean"),
        Aggregation("max"),
        Aggregation("last"),
        Aggregation("ema", alpha=0.3),
        Aggregation("ema", alpha=1.0),
        Aggregation("rolling_mean_max", window=3),
        Aggregation("rolling_mean_max", window=1),
        Aggregation("softmax", temperature=0.5),
        Aggregation("softmax", temperature=20.0),
    ],
)
def test_vectorised_aggregation_equals_the_runtime(spec):
    rng = np.random.default_rng(0)
    lengths = np.array([1, 5, 0, 3, 12, 2])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    x = rng.normal(size=offsets[-1])
    got = aggregate_segments(x, offsets, spec)
    for i in range(len(lengths)):
        seg = x[offsets[i] : offsets[i + 1]]
        if len(seg) == 0:
            assert np.isnan(got[i])
        else:
            assert got[i] == pytest.approx(aggregate(seg.tolist(), spec), abs=1e-9)


def test_training_matrix_per_example_and_per_token():
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    data = LayerData(0, rows, np.array([0, 1, 3, 6]), np.array([[9, 9], [8, 8], [7, 7]], dtype=np.float32))
    labels, groups, kinds = np.array([0, 1, 1]), np.array(["a", "b", "c"]), np.array(["k1", "k1", "k2"])
    X, y, g, w = training_matrix(data, np.array([2, 0]), labels, groups, "response", per_token=False)
    assert np.allclose(X, [[8, 9], [0, 1]]) and y.tolist() == [1, 0] and g.tolist() == ["c", "a"]
    X, y, g, w = training_matrix(data, np.array([2, 1]), labels, groups, "response", per_token=True)
    assert len(X) == 5 and y.tolist() == [1] * 5 and np.allclose(w, [1 / 3] * 3 + [1 / 2] * 2)
    X, *_ = training_matrix(data, np.array([1]), labels, groups, "prompt_last", per_token=True)
    assert np.allclose(X, [[8, 8]])
    _, _, _, w = training_matrix(
        data, np.array([0, 1, 2]), labels, groups, "response", False, kinds, balance_kinds=True
    )
    assert np.allclose([w[:2].sum(), w[2]], [1.5, 1.5])  # each kind weighs the same in total


def test_eval_metrics_equal_scikit_learn_on_fixed_inputs():
    rng = np.random.default_rng(42)
    labels = np.r_[np.ones(120), np.zeros(300)].astype(int)
    scores = np.r_[rng.normal(1.0, 1.0, 120), rng.normal(0.0, 1.0, 300)]
    scores[:5] = scores[200:205]  # ties across classes
    m = detection_metrics(scores, labels, fpr=0.01)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert m["recall_at_fpr"] == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-12)
    assert (m["n_pos"], m["n_neg"], m["threshold_source"]) == (120, 300, "negatives")
    assert m["fpr_on_negatives"] <= 0.01
    control = rng.normal(-0.5, 1.0, 500)
    mc = detection_metrics(scores, labels, control, fpr=0.01)
    fpr_c, tpr_c, _ = roc_curve(
        np.r_[np.ones(120), np.zeros(500)], np.r_[scores[labels == 1], control], drop_intermediate=False
    )
    assert mc["threshold_source"] == "control"
    assert mc["recall_at_fpr"] == pytest.approx(tpr_c[fpr_c <= 0.01].max(), abs=1e-12)


def test_flagged_share_counts_scores_at_the_threshold_as_flagged_and_none_for_no_scores():
    scores = np.array([0.5, 1.0, 1.0, 2.0])
    assert flagged_share(scores, 1.0) == 0.75  # >= as live alerts: a score equal to the threshold fires
    assert flagged_share(scores, 2.5) == 0.0 and flagged_share([], 0.0) is None


def test_platt_matches_sklearn_on_overlapping_scores_and_stays_finite_when_separable():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    s = 3.0 * y + rng.normal(0, 2.0, 2000) + 5.0
    slope, offset = platt_fit(s, y)
    ref = LogisticRegression(C=1e6).fit(s[:, None], y)
    assert slope == pytest.approx(ref.coef_[0, 0], rel=0.02)
    assert offset == pytest.approx(ref.intercept_[0], rel=0.05, abs=0.05)
    sep_slope, _ = platt_fit(np.r_[np.zeros(50), np.ones(50) * 10], np.r_[np.zeros(50), np.ones(50)])
    assert 0 < sep_slope < 10  # Platt's smoothed targets keep perfectly separated scores finite
    with pytest.raises(CalibrationError, match="anti-correlated"):
        platt_fit(-s, y)
    with pytest.raises(CalibrationError, match="both classes"):
        platt_fit(s[y == 1], y[y == 1])


def test_calibrated_threshold_flags_at_most_the_target_rate():
    control = np.random.default_rng(3).normal(size=1000)
    t = calibrated_threshold(control, 0.01)
    assert (control >= t).mean() <= 0.01 and (control >= np.nextafter(t, -np.inf) - 1e-9).mean() > 0.0


def test_grouped_split_and_leave_one_kind_out_keep_groups_apart():
    groups = np.repeat([f"g{i}" for i in range(40)], 2)
    labels = np.tile([0, 1], 40)
    kinds = np.repeat(np.array(["a", "b", "c", "d"] * 10), 2)  # a group's pair shares its kind
    tr, te = grouped_split(groups, labels, 0.25, seed=0)
    check_disjoint(groups, tr, te)
    assert len(tr) + len(te) == 80 and set(labels[te]) == {0, 1}
    folds = list(leave_one_kind_out(kinds, labels, groups))
    assert [k for k, _, _ in folds] == ["a", "b", "c", "d"]
    for kind, train, test in folds:
        assert set(kinds[test]) == {kind} and kind not in set(kinds[train])
        check_disjoint(groups, train, test)
    with pytest.raises(SplitError):
        check_disjoint(groups, np.array([0]), np.array([1]))
    with pytest.raises(SplitError):
        grouped_split(np.array(["x"] * 4), np.array([0, 1, 0, 1]), 0.5)


def test_all_token_selection_reads_prompt_and_response_means():
    """`all` = mean over every token: (sum of rows outside the scored region + scored rows) / count."""
    from probewatch.training.features import score_all

    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    rest = np.array([[10, 10], [0, 0], [6, 3]], dtype=np.float32)
    data = LayerData(0, rows, np.array([0, 1, 3, 6]), np.zeros((3, 2), np.float32), rest, np.array([2, 0, 3]))
    expected = np.array([[10 / 3, 11 / 3], [3, 4], [(6 + 6 + 8 + 10) / 6, (3 + 7 + 9 + 11) / 6]])
    assert np.allclose(data.example_matrix("all"), expected)
    X, *_ = training_matrix(data, np.array([0, 2]), np.array([0, 1, 1]), np.array(["a", "b", "c"]), "all", True)
    assert np.allclose(X, expected[[0, 2]])  # per-token training of `all` falls back to the per-example mean
    w = np.array([1.0, -2.0])
    got = score_all(w, 0.5, data, "all", [Aggregation("mean")])["mean"]
    assert np.allclose(got, expected @ w + 0.5)
    with pytest.raises(ValueError, match="mean aggregation only"):
        score_all(w, 0.5, data, "all", [Aggregation("max")])


def test_operating_point_is_the_larger_of_the_control_and_hard_negative_thresholds():
    from probewatch.training.calibration import operating_point

    control = np.linspace(-5, 0, 200)  # 1% -> flags the top 2
    negatives = np.linspace(-1, 3, 100)  # 20% -> flags the top 20
    point = operating_point(control, 0.01, negatives, 0.2)
    assert point.set_by == "hard_negatives" and point.value == point.hard_negative_threshold
    assert (negatives >= point.value).mean() <= 0.2 and (control >= point.value).mean() <= 0.01
    assert point.control_threshold < point.value
    easy = operating_point(control, 0.01, negatives - 10, 0.2)
    assert easy.set_by == "control" and easy.value == easy.control_threshold
    alone = operating_point(control, 0.01, None, None)
    assert alone.hard_negative_threshold is None and alone.value == calibrated_threshold(control, 0.01)


def test_the_negatives_limit_holds_for_each_kind_with_enough_examples_not_only_pooled():
    """Stop 32's alignment-faking retrain: 60 short negatives and 6 long ones that all score high. The pooled
    80th percentile sits among the short ones and flags every long negative; the per-kind limit does not."""
    from probewatch.training.calibration import MIN_KIND_NEGATIVES, negatives_threshold, operating_point

    short, long_ = np.linspace(-3, 0, 60), np.linspace(1, 2, 6)
    scores = np.r_[short, long_]
    kinds = ["af_training"] * 60 + ["af_long"] * 6
    control = np.linspace(-5, -1, 200)
    pooled = operating_point(control, 0.01, scores, 0.2)
    assert pooled.hard_negative_kind is None and (long_ >= pooled.value).mean() == 1.0  # the failure
    point = operating_point(control, 0.01, scores, 0.2, hard_negative_kinds=kinds)
    assert point.set_by == "hard_negatives" and point.hard_negative_kind == "af_long"
    assert (long_ >= point.value).mean() <= 0.2 and (short >= point.value).mean() <= 0.2
    assert point.value == pytest.approx(np.nextafter(long_[-2], np.inf))  # floor(0.2 * 6) = 1 long one flagged

    few = MIN_KIND_NEGATIVES - 1  # a kind under the minimum counts only in the pooled limit
    t, by = negatives_threshold(np.r_[short, long_[:few]], 0.2, ["a"] * 60 + ["b"] * few)
    assert by is None and t == negatives_threshold(np.r_[short, long_[:few]], 0.2)[0]
    low, by = negatives_threshold(np.r_[short, long_ - 10], 0.2, kinds)  # the low kind dilutes the pooled limit
    diluted = calibrated_threshold(np.r_[short, long_ - 10], 0.2)  # 13 of 66 pooled: 13 of the 60 short ones
    assert by == "af_training" and (short >= low).mean() <= 0.2 < (short >= diluted).mean()
    alike = np.r_[short, short[::10]]  # every kind scores alike: the pooled limit binds
    t, by = negatives_threshold(alike, 0.2, kinds)
    assert by is None and t == calibrated_threshold(alike, 0.2)
    with pytest.raises(ValueError, match="6 kinds for 66"):
        negatives_threshold(scores, 0.2, kinds[:6])


def test_threshold_at_recall_keeps_exactly_that_share_of_the_positives():
    from probewatch.training.calibration import threshold_at_recall

    positives = np.arange(10.0)  # 0..9
    assert threshold_at_recall(positives, 0.5) == 5.0 and (positives >= 5.0).mean() == 0.5
    assert threshold_at_recall(positives, 0.55) == 4.0  # 5.5 positives round up to 6 kept
    assert threshold_at_recall(np.r_[positives, np.nan], 1.0) == 0.0  # non-finite scores are no positives
    with pytest.raises(CalibrationError, match="no finite positive"):
        threshold_at_recall([np.nan], 0.5)
    with pytest.raises(ValueError, match="recall"):
        threshold_at_recall(positives, 0.0)


def test_a_threshold_that_keeps_too_little_recall_gets_a_band_down_to_half_the_positives_bounded_by_review_load():
    """One threshold cannot hold ~1% of control and half the behaviour: the band records down to where half the
    calibration positives are kept, but never more than 5% of control or 20% of the behaviour's negatives."""
    from probewatch.training.calibration import band_basis, operating_point, uncertainty_band

    control = np.linspace(-5, 5, 1000)  # 1% -> 4.9; 5% -> 4.5
    negatives = np.linspace(-6, 0, 100)  # 20% -> -1.2: below control, so control sets the threshold
    positives = np.linspace(3, 5, 101)  # half at or above 4.0, 4% of them at or above 4.9
    point = operating_point(control, 0.01, negatives, 0.2, positive_scores=positives)
    assert point.set_by == "control" and point.recall_threshold == pytest.approx(4.0)
    assert point.band_floor == pytest.approx(calibrated_threshold(control, 0.05)) and point.band_control_fpr == 0.05
    edge = uncertainty_band(point, point.value)
    assert edge == pytest.approx(point.band_floor) and edge > point.recall_threshold  # review load binds first
    assert (control >= edge).mean() <= 0.05 and band_basis(point, point.value, edge) == "recall"

    wide = operating_point(control, 0.01, negatives, 0.2, positive_scores=positives, band_control_fpr=0.2)
    edge = uncertainty_band(wide, wide.value)
    assert edge == pytest.approx(4.0) and (positives >= edge).mean() >= 0.5  # the recall aim binds
    look_alike = operating_point(control, 0.01, positives - 0.5, 0.2, positive_scores=positives, band_control_fpr=0.2)
    assert look_alike.set_by == "control"
    edge = uncertainty_band(look_alike, look_alike.value)
    assert edge == look_alike.hard_negative_threshold and edge > 4.0  # the behaviour's negatives bind

    enough = operating_point(control, 0.01, negatives, 0.2, positive_scores=positives + 2)
    assert uncertainty_band(enough, enough.value) is None and band_basis(enough, enough.value, None) is None
    unknown = operating_point(control, 0.01, negatives, 0.2)  # no positives (probewatch calibrate): no recall band
    assert unknown.recall_threshold is None and uncertainty_band(unknown, unknown.value) is None
    raised = operating_point(control, 0.01, np.linspace(0, 10, 100), 0.2, positive_scores=positives)
    edge = uncertainty_band(raised, raised.value)  # negatives raised the threshold: the band of that case
    assert edge == raised.control_threshold and band_basis(raised, raised.value, edge) == "control_threshold"


def test_control_halves_hold_every_kind():
    from probewatch.training.datasets.control import control_halves

    kinds = ["chat"] * 50 + ["code"] * 7 + ["multi_turn"] * 10 + ["roleplay"] * 2
    cal, held = control_halves(kinds, seed=3)
    assert sorted(np.concatenate([cal, held]).tolist()) == list(range(len(kinds)))
    for kind in set(kinds):
        n_cal = sum(kinds[i] == kind for i in cal)
        n_held = sum(kinds[i] == kind for i in held)
        assert n_cal >= 1 and n_held >= 1 and abs(n_cal - n_held) <= 1


def test_transfer_rate_is_the_calibration_share_whose_threshold_holds_on_the_held_out_source():
    from probewatch.training.calibration import operating_point, transfer_rate

    cal = np.linspace(-3, 3, 101)  # 20% -> flags the top 20 (> 1.8)
    held = np.linspace(0, 3.5, 50)  # a source whose negatives sit higher: 1.8 flags about half of them
    plain = calibrated_threshold(cal, 0.2)
    assert (held >= plain).mean() > 0.4
    rate = transfer_rate(cal, plain, held, 0.2)
    assert 0 < rate < 0.2
    raised = calibrated_threshold(cal, rate)
    assert (held >= raised).mean() <= 0.2  # holds on the held-out source ...
    assert (held >= calibrated_threshold(cal, rate + 2 / cal.size)).mean() > 0.2  # ... and no looser rate does
    assert transfer_rate(cal, plain, held - 5, 0.2) == 0.2  # a source the threshold already holds on
    assert transfer_rate(cal, plain, held + 10, 0.2) == 0.0  # not even above every calibration negative

    control = np.linspace(-5, -1, 200)
    point = operating_point(control, 0.01, cal, 0.2, transfer_fpr=rate)
    assert point.set_by == "transfer" and point.value == point.transfer_threshold == raised
    assert point.transfer_fpr == rate and point.hard_negative_threshold == plain < point.value
    same = operating_point(control, 0.01, cal, 0.2, transfer_fpr=0.2)  # no lower rate asked: no transfer limit
    assert same.transfer_threshold is None and same.set_by == "hard_negatives"


def test_the_transfer_limit_never_leaves_less_than_a_quarter_of_the_positives():
    """A source whose negatives outscore every calibration negative asks for a rate of 0: a threshold above all
    of them, set by one sample. It may spend recall down to `MIN_TRANSFER_RECALL` of the calibration positives,
    no further; the recall band records the rest."""
    from probewatch.training.calibration import (
        MIN_TRANSFER_RECALL,
        operating_point,
        threshold_at_recall,
        transfer_rate,
        uncertainty_band,
    )

    control = np.linspace(-5, -1, 200)
    cal = np.linspace(-3, 3, 101)
    positives = np.concatenate([np.linspace(0, 2.8, 140), np.linspace(2, 3.2, 60)])  # 5% above every negative
    rate = transfer_rate(cal, calibrated_threshold(cal, 0.2), cal + 10, 0.2)
    assert rate == 0.0
    blind = operating_point(control, 0.01, cal, 0.2, transfer_fpr=rate)  # no positives known: the rate alone
    assert blind.value == blind.transfer_threshold > cal.max() and blind.transfer_recall_floor is None
    assert (positives >= blind.value).mean() < MIN_TRANSFER_RECALL
    point = operating_point(control, 0.01, cal, 0.2, positive_scores=positives, transfer_fpr=rate)
    cap = threshold_at_recall(positives, MIN_TRANSFER_RECALL)
    assert point.set_by == "transfer" and point.value == point.transfer_threshold == cap < blind.value
    assert point.transfer_fpr == 0.0 and point.transfer_recall_floor == MIN_TRANSFER_RECALL == 0.25
    assert (positives >= point.value).mean() >= 0.25 and point.value > point.hard_negative_threshold
    edge = uncertainty_band(point, point.value)  # the band still records down to the control threshold
    assert edge == point.control_threshold < point.value

    mild = operating_point(control, 0.01, cal, 0.2, positive_scores=positives, transfer_fpr=0.1)
    assert mild.transfer_recall_floor is None and mild.value == calibrated_threshold(cal, 0.1)  # cap not binding
    strict = operating_point(control, 0.01, cal, 0.2, positive_scores=positives - 4, transfer_fpr=0.0)
    assert strict.transfer_recall_floor == 0.25 and strict.transfer_threshold < strict.hard_negative_threshold
    assert strict.value == strict.hard_negative_threshold and strict.set_by == "hard_negatives"  # never below it
