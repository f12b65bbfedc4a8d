"""Data sources, the held-out-source choice and the nested estimate (issue 22), on synthetic arrays.

The pool: four sources of two kinds each. On layer 0 sources a, b, c carry the label on one
direction and the shifted source d on another; on layer 1 every source carries it, weaker, on a
third direction. Held-out kinds cannot see the shift (d's other kind is always in training); held-out
sources can.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from probewatch.data.dialogue import Dialogue, Message
from probewatch.training.features import LayerData
from probewatch.training.nested import (
    FoldScorer,
    NestedSettings,
    folds_without,
    nested_estimate,
    pick,
    prescreen,
    select_by_source,
    train_indices,
)
from probewatch.training.report_sources import ConfigScore, NestedEstimate, drop_unset
from probewatch.training.sources import (
    KIND_SOURCES,
    per_source_at_threshold,
    source_array,
    source_counts,
    source_of,
    tag_source,
)
from probewatch.training.sweep import PoolArrays, SweepRow

SOURCES = ("a", "b", "c", "d")
PER_KIND = 24  # pairs per kind


def _pool(seed: int = 0) -> tuple[PoolArrays, dict[int, LayerData], LayerData]:
    rng = np.random.default_rng(seed)
    labels, groups, kinds, sources, feats0, feats1 = [], [], [], [], [], []
    for src in SOURCES:
        for k in (1, 2):
            for g in range(PER_KIND):
                for y in (0, 1):
                    sign = 1.0 if y else -1.0
                    x0 = rng.normal(0, 1, 6)
                    x0[1 if src == "d" else 0] += 2.5 * sign  # layer 0: d is shifted
                    x1 = rng.normal(0, 1, 6)
                    x1[2] += 0.7 * sign  # layer 1: weaker, the same everywhere
                    labels.append(y)
                    groups.append(f"{src}{k}:{g}")
                    kinds.append(f"{src}{k}")
                    sources.append(src)
                    feats0.append(x0)
                    feats1.append(x1)
    n = len(labels)
    idx = np.arange(n)
    val = idx[
        np.isin(np.array(groups, dtype=object), [f"{s}{k}:{g}" for s in SOURCES for k in (1, 2) for g in (0, 1, 2)])
    ]
    test = idx[
        np.isin(np.array(groups, dtype=object), [f"{s}{k}:{g}" for s in SOURCES for k in (1, 2) for g in (3, 4, 5)])
    ]
    fit = np.setdiff1d(idx, np.concatenate([val, test]))
    pool = PoolArrays(
        np.array(labels),
        np.array(groups, dtype=object),
        np.array(kinds, dtype=object),
        fit,
        val,
        test,
        (),
        np.array(sources, dtype=object),
    )

    def layer(feats: list[np.ndarray], layer: int) -> LayerData:
        x = np.array(feats, dtype=np.float32)
        rows = np.repeat(x, 2, axis=0) + rng.normal(0, 0.05, (2 * n, 6)).astype(np.float32)  # two tokens each
        return LayerData(layer, rows, np.arange(0, 2 * n + 1, 2), x)

    control = LayerData(
        0, rng.normal(0, 1, (80, 6)).astype(np.float32), np.arange(0, 81, 2), np.zeros((40, 6), np.float32)
    )
    return pool, {0: layer(feats0, 0), 1: layer(feats1, 1)}, control


def _row(layer: int, per_kind: float, aggregation: str = "mean", val: float | None = None) -> SweepRow:
    """A sweep row whose held-out-kind AUROCs are all `per_kind`; its validation AUROC is `val` (default the same)."""
    kinds = {f"{s}{k}": per_kind for s in SOURCES for k in (1, 2)}
    val = per_kind if val is None else val
    return SweepRow("response", layer, "logistic", False, aggregation, val, per_kind, kinds, C=1.0)


@pytest.fixture(scope="module")
def synthetic():
    pool, layers, control = _pool()
    control_cal, control_held = np.arange(0, 40, 2), np.arange(1, 40, 2)
    return pool, (lambda layer: (layers[layer], control)), control_cal, control_held


def test_a_shifted_source_makes_the_nested_estimate_lower_than_the_selected_on_number(synthetic):
    pool, layer_data, cal, held = synthetic
    # the sweep's held-out-kind numbers: layer 0 wins; both separate their own pool alike (the guard keeps both)
    rows = [_row(0, 0.99, val=0.95), _row(1, 0.80, val=0.93)]
    settings = NestedSettings(top_k=2, hard_negative_fpr=0.2)
    nested = nested_estimate(rows, pool, layer_data, cal, held, settings, (0.99, "heldout_kind"), 0.99)
    assert nested is not None and set(nested.outer) == set(SOURCES)
    d = nested.outer["d"]
    # chosen on a, b, c (where layer 0 is near perfect), reported on d (where it reads noise)
    assert d.selection.basis == "heldout_source" and d.selection.folds == ["a", "b", "c"]
    assert d.selection.chosen.config["layer"] == 0 and d.selection.chosen.mean > 0.9
    assert d.auroc is not None and d.auroc < 0.75 and d.gap is not None and d.gap > 0.2
    # a held-out normal source is chosen on folds that include d: the robust layer 1
    assert nested.outer["a"].selection.chosen.config["layer"] == 1
    assert nested.worst_source == "d" and nested.worst == d.auroc
    assert nested.mean == pytest.approx(np.mean([o.auroc for o in nested.outer.values()]))
    assert nested.mean < 0.9 and nested.optimism_gap == pytest.approx(0.99 - nested.mean)
    assert nested.optimism_gap > 0.1 and nested.mean_inner_gap == pytest.approx(
        np.mean([o.gap for o in nested.outer.values()])
    )
    # the threshold set without d, measured on d: d's negatives and positives land on both sides alike
    at = d.at_threshold
    assert at is not None and at.recall is not None and at.fpr_negatives is not None
    assert abs(at.recall - at.fpr_negatives) < 0.35


def test_worst_source_rule_ships_the_robust_configuration_over_the_mean_best(synthetic):
    pool, layer_data, cal, _ = synthetic
    rows = [_row(0, 0.99, val=0.95), _row(1, 0.80, val=0.93)]
    picked = select_by_source(rows, pool, layer_data, cal, NestedSettings(top_k=2))
    assert picked is not None
    row, selection = picked
    assert selection.basis == "heldout_source" and selection.folds == list(SOURCES)
    assert selection.mean_best.config["layer"] == 0  # best mean over sources (three near 1, d near 0.5) ...
    assert row.layer == 1 and selection.chosen.config["layer"] == 1  # ... but its worst source is d
    assert selection.rule_changed_choice
    assert selection.chosen.worst > selection.mean_best.worst + 0.05
    assert selection.mean_best.mean > selection.chosen.mean


def test_pick_ranks_by_worst_with_a_001_tie_then_by_mean():
    rows = [_row(1, 0.8), _row(3, 0.8), _row(5, 0.8)]

    def cs(mean: float, worst: float) -> ConfigScore:
        return ConfigScore({}, mean, worst, {})

    # worst 0.70 vs 0.695 are tied (within 0.01): the better mean wins; 0.60 is out however high its mean
    chosen, mean_best = pick([(rows[0], cs(0.80, 0.70)), (rows[1], cs(0.83, 0.695)), (rows[2], cs(0.90, 0.60))])
    assert (chosen, mean_best) == (1, 2)
    chosen, _ = pick([(rows[0], cs(0.80, 0.70)), (rows[1], cs(0.83, 0.685)), (rows[2], cs(0.90, 0.60))])
    assert chosen == 0  # 0.015 below the best worst is not a tie
    with pytest.raises(ValueError):
        pick([(rows[0], cs(None, None))])  # type: ignore[arg-type]


def test_prescreen_takes_the_top_k_alternately_by_worst_source_and_by_mean(synthetic):
    pool = synthetic[0]
    uneven = _row(0, 0.95)
    uneven.heldout_per_kind = {**uneven.heldout_per_kind, "d1": 0.4, "d2": 0.4}  # mean 0.81, worst source 0.4
    even = _row(1, 0.80)  # mean 0.80, worst 0.80
    low = _row(2, 0.70)
    assert prescreen([low, uneven, even], pool, None, 1) == [even]
    assert prescreen([low, uneven, even], pool, None, 2) == [even, uneven]
    # held out d: d's kinds leave the proxy, so the uneven row is best both ways
    assert prescreen([low, uneven, even], pool, "d", 1) == [uneven]


def test_prescreen_adds_every_methods_best_after_the_top_k(synthetic):
    """A contrast probe scores lower within sources than it transfers across them: the best row of each method
    the top k lack is added after them (up to k/2 more), so the held-out-source fits see it and the top k
    stay exactly as a single-method ranking has them."""
    from dataclasses import replace

    pool = synthetic[0]
    logistic = [_row(layer, 0.90 - 0.01 * layer) for layer in range(4)]
    contrast = [replace(_row(5, 0.70), method="contrast"), replace(_row(6, 0.72), method="contrast")]
    lat = [replace(_row(7, 0.60), method="lat")]
    picked = prescreen([*logistic, *contrast, *lat], pool, None, 4)
    assert picked[:4] == logistic  # the top k as before
    assert picked[4:] == [contrast[1], lat[0]]  # then each missing method's best row by mean
    assert prescreen([*logistic, *contrast, *lat], pool, None, 2) == [*logistic[:2], contrast[1]]  # at most k/2
    assert prescreen([*logistic, *contrast], pool, None, 1) == [logistic[0]]  # no extra at k=1
    assert prescreen(logistic, pool, None, 4) == logistic  # one method: the ranking as before


def test_guard_keeps_a_configuration_that_separates_its_pool_far_worse_from_being_chosen():
    """Two to four held-out sources are a noisy judge: a configuration with the best worst fold but a validation
    AUROC more than VAL_MARGIN below the best candidate's is not eligible (the contrast run: 0.83 against
    0.98, no nested gain, 3% recall at its threshold)."""
    import math

    from probewatch.training.nested import eligible
    from probewatch.training.report_sources import VAL_MARGIN

    def cs(mean: float, worst: float) -> ConfigScore:
        return ConfigScore({}, mean, worst, {})

    strong, weak, near = _row(1, 0.8, val=0.97), _row(2, 0.8, val=0.83), _row(3, 0.8, val=0.97 - VAL_MARGIN)
    scored = [(strong, cs(0.66, 0.50)), (weak, cs(0.74, 0.53)), (near, cs(0.60, 0.45))]
    assert eligible(scored) == [0, 2]  # 0.83 is 0.14 below 0.97; exactly VAL_MARGIN below is still eligible
    assert pick(scored) == (0, 0)
    assert pick(scored, margin=math.inf) == (1, 1)  # the guard off: the weak one wins on both counts
    no_val = _row(4, 0.8)
    no_val.val_auroc = None
    assert eligible([*scored, (no_val, cs(0.7, 0.5))]) == [0, 2, 3]  # nothing to judge it by: eligible


def test_select_records_what_the_guard_changed(synthetic):
    """The selection keeps the unguarded choice and the number of eligible candidates for the report, and
    docs/quality.md marks the guarded choice with what the rule would have chosen."""
    from probewatch.training.nested import FoldScorer, folds_without, select
    from probewatch.training.quality_sources import guard_text
    from probewatch.training.report_sources import SourceSelection

    pool, layer_data, cal, _ = synthetic
    robust, fragile = _row(1, 0.80, val=0.80), _row(0, 0.99, val=0.99)  # layer 1 wins the folds (d is noise at 0)
    basis, folds = folds_without(pool, None)
    scorer = FoldScorer(pool, layer_data, NestedSettings(top_k=2))
    scorer.run((r, f.held) for r in (robust, fragile) for f in folds)
    row, sel = select([robust, fragile], basis, folds, scorer, cal)
    assert row is fragile and sel.n_eligible == 1  # layer 1's 0.80 is 0.19 below 0.99
    assert sel.guard_changed_choice and sel.unguarded is not None and sel.unguarded.config["layer"] == 1
    assert sel.unguarded.worst > sel.chosen.worst
    text = guard_text(sel)
    assert text.startswith(" ‡ (without the guard: layer 1 logistic C=1, response, per-example, mean, ")
    assert SourceSelection.from_json(json.loads(json.dumps(asdict(sel)))) == sel
    scorer.settings.val_margin = 0.25
    row, sel = select([robust, fragile], basis, folds, scorer, cal)
    assert row is robust and sel.n_eligible == 2 and sel.unguarded is None and guard_text(sel) == ""


def test_without_a_scorable_fold_the_guard_still_picks_among_the_pre_screen(synthetic):
    """One inner source of one kind leaves no fold to score (eval awareness held out by source): the choice is
    the first candidate in pre-screen order within the validation guard, never a configuration that separates
    its own pool far worse (the published fallback was layer 21 `lat` at validation 0.55 beside 0.99)."""
    from dataclasses import replace

    from probewatch.training.nested import FoldScorer, guarded_first, select

    pool, layer_data, cal, _ = synthetic
    lat = replace(_row(0, 0.95, val=0.55), method="lat")  # first by the pre-screen's proxy
    logistic, other = _row(1, 0.80, val=0.99), _row(2, 0.85, val=0.90)
    assert guarded_first([lat, logistic, other]) == 1
    assert guarded_first([lat, other, logistic]) == 1  # within 0.10 of the best: pre-screen order decides
    assert guarded_first([lat, logistic], margin=0.5) == 0  # a wide guard keeps the pre-screen's first
    no_val = replace(_row(3, 0.9), val_auroc=None)
    assert guarded_first([no_val, logistic]) == 0 and guarded_first([replace(lat, val_auroc=None)]) == 0
    scorer = FoldScorer(pool, layer_data, NestedSettings(top_k=3))
    row, sel = select([lat, logistic, other], "heldout_kind", [], scorer, cal)
    assert row is logistic and sel.basis == "prescreen" and sel.chosen.config["method"] == "logistic"


def test_one_source_of_one_kind_left_is_split_into_folds_of_its_groups(synthetic):
    """Eval awareness without `probewatch_written` keeps one source of one kind (`eval_cot`): no kind can be held
    out, so the inner folds are GROUP_FOLDS parts of it split by group, and the choice is made on them (it was
    the pre-screen's first, a choice no fold had judged)."""
    from probewatch.training.nested import GROUP_FOLDS, FoldScorer, select

    pool, layer_data, cal, _ = synthetic
    in_a = pool.sources == "a"
    one_kind = PoolArrays(
        pool.labels,
        pool.groups,
        np.where(in_a, pool.kinds, "b_only").astype(object),
        pool.fit_idx,
        pool.val_idx,
        pool.test_idx,
        (),
        np.where(in_a, "a", "b").astype(object),
    )
    basis, folds = folds_without(one_kind, "a")
    assert basis == "heldout_group" and len(folds) == GROUP_FOLDS
    left = np.flatnonzero(~in_a)
    assert sorted(np.concatenate([f.test for f in folds]).tolist()) == left.tolist()  # each example scored once
    for fold in folds:
        assert set(one_kind.sources[fold.test].tolist()) == {"b"} and set(one_kind.labels[fold.test]) == {0, 1}
        assert not np.isin(one_kind.groups[fold.train], one_kind.groups[fold.test]).any()  # a group on one side
        assert not in_a[fold.train].any() and not np.isin(fold.train, pool.val_idx).any()
        assert 0.15 < len(fold.test) / len(left) < 0.35  # hashed parts of about a quarter each
    assert [f.test.tolist() for f in folds_without(one_kind, "a")[1]] == [f.test.tolist() for f in folds]
    scorer = FoldScorer(one_kind, layer_data, NestedSettings(top_k=2))
    rows = [_row(1, 0.95, val=0.9), _row(0, 0.80, val=0.9)]  # the pre-screen's first is the weaker layer on b
    scorer.run((r, f.held) for r in rows for f in folds)
    row, sel = select(rows, basis, folds, scorer, cal)
    assert sel.basis == "heldout_group" and sel.folds == [f.name for f in folds]
    assert row.layer == 0 and sel.chosen.worst is not None and sel.chosen.worst > 0.8  # judged on the folds


def test_folds_drop_the_held_out_sources_their_groups_and_the_calibration_split(synthetic):
    pool = synthetic[0]
    basis, folds = folds_without(pool, "d")
    assert basis == "heldout_source" and [f.name for f in folds] == ["a", "b", "c"]
    for fold in folds:
        assert not np.isin(pool.sources[fold.train], ["d", fold.name]).any()
        assert not np.isin(fold.train, pool.val_idx).any()
        assert set(pool.sources[fold.test].tolist()) == {fold.name}
    # a group shared across sources leaves the training side with the held-out source
    groups = pool.groups.copy()
    groups[np.flatnonzero(pool.sources == "a")[-1]] = groups[np.flatnonzero(pool.sources == "b")[-1]]
    shared = PoolArrays(pool.labels, groups, pool.kinds, pool.fit_idx, pool.val_idx, pool.test_idx, (), pool.sources)
    tr = train_indices(shared, frozenset({("source", "a")}))
    assert np.flatnonzero(pool.sources == "b")[-1] not in tr
    # with one source left, the inner folds are its kinds
    two = PoolArrays(
        pool.labels,
        pool.groups,
        pool.kinds,
        pool.fit_idx,
        pool.val_idx,
        pool.test_idx,
        (),
        np.where(np.isin(pool.sources, ["a", "b"]), "ab", "cd").astype(object),
    )
    basis, folds = folds_without(two, "ab")
    assert basis == "heldout_kind" and [f.name for f in folds] == ["c1", "c2", "d1", "d2"]


def test_fold_fits_are_shared_between_folds_with_the_same_held_out_set(synthetic):
    pool, layer_data, cal, held = synthetic
    settings = NestedSettings(top_k=2)
    scorer = FoldScorer(pool, layer_data, settings)
    rows = [_row(0, 0.99), _row(0, 0.99, "max"), _row(1, 0.80)]  # one fit serves both layer-0 aggregations
    select_by_source(rows, pool, layer_data, cal, NestedSettings(top_k=3), scorer)
    assert scorer.n_fits == 2 * 4  # two fits (layer 0, layer 1) per held-out source
    nested_estimate(rows, pool, layer_data, cal, held, NestedSettings(top_k=3), (None, "heldout_kind"), None, scorer)
    # inner folds {S, T} (6 pairs) x 2 fits; the outer fits {S} were already made by the choice above
    assert scorer.n_fits == 2 * 4 + 2 * 6


def test_per_source_threshold_numbers_by_hand():
    scores = np.array([0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.8, 0.75])
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    sources = np.array(["a", "a", "a", "a", "b", "b", "b", "c"], dtype=object)
    out = per_source_at_threshold(scores, labels, sources, np.arange(8), 0.75)
    # a: positives 0.5, 0.9 -> 1 of 2; negatives 0.1, 0.3 -> none. b: positive 0.7 -> none; negatives
    # 0.2, 0.8 -> 1 of 2. c: one positive exactly at the threshold (alerts fire at >=) and no negatives
    assert (out["a"].recall, out["a"].fpr_negatives, out["a"].n_pos, out["a"].n_neg) == (0.5, 0.0, 2, 2)
    assert (out["b"].recall, out["b"].fpr_negatives, out["b"].n_pos, out["b"].n_neg) == (0.0, 0.5, 1, 2)
    assert (out["c"].recall, out["c"].fpr_negatives, out["c"].n_pos, out["c"].n_neg) == (1.0, None, 1, 0)
    only = per_source_at_threshold(scores, labels, sources, np.array([0, 1, 5]), 0.5)
    assert list(only) == ["a", "b"] and only["a"].recall == 1.0 and only["b"].recall is None
    assert only["b"].fpr_negatives == 0.0


def test_source_of_prefers_meta_then_the_kind_mapping_then_the_kind():
    msg = [Message("user", "q"), Message("assistant", "a")]
    assert source_of(Dialogue(msg, 1, "g", "liar_math")) == "liar_detector" == KIND_SOURCES["liar_questions"]
    assert source_of(Dialogue(msg, 1, "g", "sales_lie")) == source_of(Dialogue(msg, 0, "g", "af_training"))
    assert source_of(Dialogue(msg, 0, "g", "plain_traffic")) == "model_answers"
    assert source_of(Dialogue(msg, 1, "g", "new_kind")) == "new_kind"
    assert source_of(Dialogue(msg, 1, "g", "liar_math", {"data_source": "elsewhere"})) == "elsewhere"
    tagged = tag_source([Dialogue(msg, 1, "g", "k"), Dialogue(msg, 0, "g", "k", {"data_source": "own"})], "f.jsonl")
    assert source_array(tagged).tolist() == ["f.jsonl", "own"]
    counts = source_counts(
        np.array(["x", "x", "m"], dtype=object),
        np.array(["k1", "k2", "plain_traffic"], dtype=object),
        np.array([1, 0, 0]),
        ("plain_traffic",),
    )
    assert counts["x"].kinds == ["k1", "k2"] and counts["x"].held_out and not counts["m"].held_out
    assert (counts["x"].n, counts["x"].positive, counts["x"].negative) == (2, 1, 1)


def test_every_kind_of_the_shipped_pools_has_a_source_and_sources_are_coarser_than_kinds():
    import json

    from probewatch.bundle_index import shipped_root

    # composed kinds: each example carries its pair's source (meta data_source)
    composed = {"long_transcript", "long_generated", "af_long"}
    for path in sorted(shipped_root().glob("*/*/report.json")):
        kinds = [k for k in json.loads(path.read_text())["data"]["kinds"] if k not in composed]
        assert set(kinds) <= set(KIND_SOURCES), path.parent.name
        if len(kinds) > 2:
            assert len({KIND_SOURCES[k] for k in kinds}) < len(kinds), path.parent.name


def test_a_negative_nested_top_k_is_refused_with_the_flag_name():
    from probewatch.training.train_config import TrainConfig, TrainingError, check_config

    with pytest.raises(TrainingError, match="--nested-top-k must be >= 0"):
        check_config(TrainConfig(behaviour="deception", nested_top_k=-1), 4, "tiny")


def test_a_source_the_threshold_does_not_hold_on_asks_for_a_lower_rate_and_the_others_learn_it(synthetic):
    """Without d, the threshold sits among a, b, c's negatives (far below d's noise-level scores) and flags
    most of d: d asks for a lower calibration-negatives rate, and a threshold learnt with that rate (checked
    on every other source) is never lower and never flags more of that source's negatives."""
    pool, layer_data, cal, held = synthetic
    shifted = {}
    for layer in (0, 1):  # d sits 4 units up layer 0's label direction, both labels: a score shift
        data, control = layer_data(layer)
        x, rows = data.last.copy(), data.rows.copy()
        if layer == 0:
            in_d = pool.sources == "d"
            x[in_d, 0] += 4.0
            rows[np.repeat(in_d, 2), 0] += 4.0
        shifted[layer] = (LayerData(layer, rows, data.offsets, x), control)
    rows = [_row(0, 0.99), _row(1, 0.80)]
    settings = NestedSettings(top_k=2, hard_negative_fpr=0.2)
    nested = nested_estimate(rows, pool, shifted.__getitem__, cal, held, settings, (0.99, "heldout_kind"), 0.99)
    assert nested is not None
    d = nested.outer["d"].at_threshold
    assert d is not None and d.fpr_negatives is not None and d.fpr_negatives > 0.2  # the plain rule fails on d
    assert d.transfer_rate is not None and d.transfer_rate < 0.2
    rates = {s: o.at_threshold.transfer_rate for s, o in nested.outer.items() if o.at_threshold is not None}
    assert all(r is not None and 0.0 <= r <= 0.2 for r in rates.values())
    assert all(rates[s] == 0.2 for s, o in nested.outer.items() if (o.at_threshold.fpr_negatives or 0) <= 0.2)
    assert nested.transfer_fpr == min(rates.values()) < 0.2
    for s in ("a", "b", "c"):
        at = nested.outer[s].at_threshold
        check = at.transfer
        assert check is not None and check.rate == min(r for o, r in rates.items() if o != s)
        assert check.threshold >= at.threshold and check.fpr_negatives <= at.fpr_negatives
    check = d.transfer  # learnt from a, b, c, which all held: no limit, the plain threshold
    if all(rates[s] == 0.2 for s in ("a", "b", "c")):
        assert check is not None and check.rate is None and check.threshold == d.threshold


def test_fold_fits_show_progress_with_one_step_per_fit(synthetic, capsys):
    # the stage runs for minutes to an hour on a real pool: `probewatch train` shows a bar over its fits
    pool, layer_data, cal, _ = synthetic
    scorer = FoldScorer(pool, layer_data, NestedSettings(top_k=3, progress=True))
    rows = [_row(0, 0.99), _row(0, 0.99, "max"), _row(1, 0.80)]
    select_by_source(rows, pool, layer_data, cal, NestedSettings(top_k=3), scorer)
    err = capsys.readouterr().err
    assert "held-out-source fits" in err and f"{scorer.n_fits}/{scorer.n_fits}" in err and scorer.n_fits == 8
    quiet = FoldScorer(pool, layer_data, NestedSettings(top_k=3))
    select_by_source(rows, pool, layer_data, cal, NestedSettings(top_k=3), quiet)
    assert "held-out-source fits" not in capsys.readouterr().err


def test_a_fold_threshold_keeps_a_quarter_of_its_calibration_positives_under_a_zero_rate(synthetic):
    """A held-out source asking for a rate of 0 would put the fold's transfer threshold above every calibration
    negative; the fold caps it as the shipped threshold is capped, at `MIN_TRANSFER_RECALL` of the fold's own
    calibration positives (the held-out source's are not among them)."""
    from probewatch.training.calibration import MIN_TRANSFER_RECALL
    from probewatch.training.nested import _fold_point

    pool, _, cal, _ = synthetic
    rng = np.random.default_rng(0)
    s = np.where(pool.labels == 1, rng.normal(0.0, 1.0, pool.labels.size), rng.normal(-0.5, 1.0, pool.labels.size))
    c = rng.normal(-4.0, 1.0, 300)
    settings = NestedSettings(top_k=2, hard_negative_fpr=0.2)
    plain, hard = _fold_point("d", pool, s, c, cal, settings)
    point, same = _fold_point("d", pool, s, c, cal, settings, transfer_fpr=0.0)
    np.testing.assert_array_equal(hard, same)
    kept = pool.val_idx[(pool.labels[pool.val_idx] == 1) & (pool.sources[pool.val_idx] != "d")]
    assert point.set_by == "transfer" and point.transfer_recall_floor == MIN_TRANSFER_RECALL
    assert (s[kept] >= point.value).mean() >= MIN_TRANSFER_RECALL > (s[kept] > point.value).mean()
    assert point.value < s[hard].max() and point.value > plain.value


def test_tied_choices_record_what_the_estimate_would_read_had_a_tie_gone_the_other_way(synthetic, monkeypatch):
    """The rule counts worst folds within 0.01 as tied and lets the mean (to 0.001) decide: on three or four
    noisy folds a few pairs can flip that, so each held-out source records the AUROC every tied choice scores
    on it, and the estimate the range. Here no two candidates tie; with the tie widened for `tied_rows` only
    (the rule itself unchanged), both layers tie without each source: the chosen one's AUROC is among the tied,
    and held out d the other layer would have read it far better."""
    from probewatch.training import nested as nested_module

    pool, layer_data, cal, held = synthetic
    rows = [_row(0, 0.99, val=0.95), _row(1, 0.80, val=0.93)]
    settings = NestedSettings(top_k=2, hard_negative_fpr=0.2)
    plain = nested_estimate(rows, pool, layer_data, cal, held, settings, (0.99, "heldout_kind"), 0.99)
    assert plain is not None and plain.tie_range is None and all(o.tied is None for o in plain.outer.values())
    monkeypatch.setattr(nested_module, "TIE", 1.0)
    wide = nested_estimate(rows, pool, layer_data, cal, held, settings, (0.99, "heldout_kind"), 0.99)
    assert wide is not None
    for name, o in wide.outer.items():
        assert o.selection.chosen == plain.outer[name].selection.chosen and o.auroc == plain.outer[name].auroc
        assert o.tied is not None and len(o.tied) == 2 and o.tied == sorted(o.tied) and o.auroc in o.tied
    d = wide.outer["d"]
    assert d.selection.chosen.config["layer"] == 0 and d.tied[1] > d.auroc + 0.1  # layer 1 reads d
    low, high = wide.tie_range
    assert low == pytest.approx(np.mean([min(o.tied) for o in wide.outer.values()]))
    assert high == pytest.approx(np.mean([max(o.tied) for o in wide.outer.values()]))
    assert low <= wide.mean <= high and high > wide.mean + 0.02
    from probewatch.training.quality_sources import _outer_row, tie_text

    cell = _outer_row("d", d)["auroc"]  # docs/quality.md's nested table and summary row
    assert cell == f"{d.auroc:.3f} (tied choices {d.tied[0]:.3f}–{d.tied[1]:.3f})"
    assert tie_text(wide) == f" (every tie broken the worst / best way: {low:.3f} / {high:.3f})"
    assert tie_text(plain) == "" and _outer_row("d", plain.outer["d"])["auroc"] == f"{plain.outer['d'].auroc:.3f}"
    written = {"nested": json.loads(json.dumps(asdict(wide)))}  # report.json round trip
    assert NestedEstimate.from_json(written["nested"]) == wide
    old = {"nested": json.loads(json.dumps(asdict(plain)))}
    drop_unset(old)  # a report without ties keeps its layout
    assert "tie_range" not in old["nested"] and all("tied" not in o for o in old["nested"]["outer"].values())
