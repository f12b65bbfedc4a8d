"""The multi-layer decision on held-out sources (training/multilayer_sources.py), on the synthetic pool of
test_nested_sources: layer 0 carries the label on one direction in sources a, b, c and on another in the
shifted source d; layer 1 carries it weakly everywhere. Here layer 2 is added: as weak as layer 1, on its own
direction and noise, so the two weak layers together read the label better on every source."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from probewatch.training.features import LayerData
from probewatch.training.multilayer_sources import concat_on_sources, joined_layers
from probewatch.training.nested import FoldScorer, NestedSettings, config_score, folds_without, nested_estimate
from probewatch.training.nested_multilayer import multilayer_step
from probewatch.training.report_sources import ConfigScore, SourceSelection
from probewatch.training.stage_sources import SourceOutcome, concat_check
from probewatch.training.sweep import PoolArrays, SweepRow
from probewatch.training.train_config import TrainConfig
from tests.training.test_nested_sources import SOURCES, _pool, _row

SETTINGS = NestedSettings(top_k=2, hard_negative_fpr=0.2)


def three_layer_pool():
    """(pool, layer -> (rows, control), control calibration rows) with layers 0, 1 and 2."""
    pool, layers, control = _pool()
    rng = np.random.default_rng(7)
    n = len(pool.labels)
    x2 = rng.normal(0, 1, (n, 6)).astype(np.float32)
    x2[:, 3] += 0.7 * np.where(pool.labels == 1, 1.0, -1.0)
    rows = np.repeat(x2, 2, axis=0) + rng.normal(0, 0.05, (2 * n, 6)).astype(np.float32)
    layers[2] = LayerData(2, rows, np.arange(0, 2 * n + 1, 2), x2)
    return pool, (lambda layer: (layers[layer], control)), np.arange(0, 40, 2)


@pytest.fixture(scope="module")
def three_layers():
    return three_layer_pool()


def _single(row: SweepRow, pool: PoolArrays, layer_data, control_cal: np.ndarray) -> ConfigScore:
    """The single-layer row on the held-out-source folds, as the source choice scored it."""
    _, folds = folds_without(pool, None)
    scorer = FoldScorer(pool, layer_data, SETTINGS)
    scorer.run((row, fold.held) for fold in folds)
    return config_score(row, folds, scorer, control_cal)


def _multi(layers: list[int]) -> dict:
    per_kind = {f"{s}{k}": 0.99 for s in SOURCES for k in (1, 2)}  # held-out kinds: the concat looks better
    return {
        "layers": layers,
        "C": 1.0,
        "token_selection": "response",
        "concat": {"val_auroc": 0.99, "heldout_kind_auroc": 0.99, "heldout_per_kind": per_kind},
    }


def test_a_concat_that_wins_held_out_kinds_but_loses_a_held_out_source_does_not_ship(three_layers):
    """Adding layer 0 to the robust layer 1 reads the a/b/c direction: it cannot see the label in d once d is
    held out, so its worst source falls below the single layer's and the rule keeps the single layer, though the
    mean prefers the concat. The loss on d is reported with its paired interval: on 48 + 48 items a drop of 0.10
    is about the width of the noise."""
    pool, layer_data, cal = three_layers
    chosen = _row(1, 0.80)
    check = concat_on_sources(_multi([0, 1]), chosen, pool, layer_data, cal, SETTINGS)
    assert check is not None and check.holds is False
    assert check.single == _single(chosen, pool, layer_data, cal)  # the same fits the source choice scored
    assert set(check.concat.folds) == set(SOURCES) == set(check.single.folds)
    assert check.concat.folds["d"] < check.single.folds["d"] - 0.01
    assert check.concat.worst < check.single.worst - 0.01 and check.concat.mean > check.single.mean
    change, low, high = check.losses["d"]
    assert change == pytest.approx(check.concat.folds["d"] - check.single.folds["d"]) and low < change < high
    assert set(check.losses) == {f for f in SOURCES if check.concat.folds[f] < check.single.folds[f] - 0.01}
    assert check.concat.config["layers"] == [0, 1] and check.concat.config["method"] == "logistic"
    assert check.to_json()["concat"]["worst"] == check.concat.worst and check.to_json()["losses"] == check.losses


def test_a_concat_that_reads_more_of_the_label_on_every_source_ships(three_layers):
    pool, layer_data, cal = three_layers
    check = concat_on_sources(_multi([1, 2]), _row(1, 0.80), pool, layer_data, cal, SETTINGS)
    assert check is not None and check.holds is True and check.losses == {}
    assert check.concat.worst > check.single.worst + 0.01
    assert all(check.concat.folds[s] > check.single.folds[s] for s in SOURCES)


def test_without_two_sources_there_is_no_source_check(three_layers):
    pool, layer_data, cal = three_layers
    one = replace(pool, sources=np.array(["a"] * len(pool.labels), dtype=object))
    assert concat_on_sources(_multi([1, 2]), _row(1, 0.80), one, layer_data, cal, SETTINGS) is None


def test_the_concat_check_reads_the_joined_layers_once(three_layers):
    """Stage 4's whole-pool check fits the concat on its layers joined once on first use (`joined_layers`): each
    layer is read from the cache once for every fold, and the verdict is the one the same check reaches on the
    layers joined beforehand."""
    pool, layer_data, cal = three_layers
    reads: list[int] = []

    def counted(layer: int):
        reads.append(layer)
        return layer_data(layer)

    joined = joined_layers(counted, [1, 2])
    assert reads == []  # joined on first use
    assert joined(1)[0].rows.shape[1] == 2 * layer_data(1)[0].rows.shape[1] and reads == [1, 2]
    joined(2)
    assert reads == [1, 2]  # every later call gives the same joined rows
    reads.clear()
    rows = [_row(1, 0.80)]
    check = concat_on_sources(_multi([1, 2]), rows[0], pool, counted, cal, SETTINGS)
    assert sorted(reads) == [1, 1, 2]  # the single-layer probe's layer, then the concat's two joined once
    alone = concat_on_sources(_multi([1, 2]), rows[0], pool, layer_data, cal, SETTINGS)
    assert check is not None and alone is not None and check.holds is alone.holds is True
    assert check.concat.folds == pytest.approx(alone.concat.folds, abs=1e-12)


@pytest.mark.parametrize("selection", ["response", "prompt_last"])
def test_the_nested_step_reads_each_layer_once_as_one_row_per_example_scoring_as_the_tokens_do(three_layers, selection):
    """The nested step's search fits many sets on many folds: it reads every layer from the cache once, as one row
    per example (`one_row_each`), and a concat fitted on those rows scores every example and control row as the
    same concat fitted on the joined token rows does. Only each source's single-layer choice is read as tokens."""
    from dataclasses import replace

    from probewatch.training.multilayer import concat_layer_data, concat_row
    from probewatch.training.multilayer_sources import joined_layers
    from probewatch.training.nested_multilayer import one_row_each

    pool, layer_data, cal = three_layers
    reads: list[int] = []

    def counted(layer: int):
        reads.append(layer)
        return layer_data(layer)

    rows = [_row(1, 0.80), _row(2, 0.70)]
    nested = nested_estimate(rows, pool, layer_data, cal, np.arange(1, 40, 2), SETTINGS, (0.9, "heldout_source"), 0.9)
    assert nested is not None
    step = multilayer_step(_multi([0, 1, 2]), rows, nested, pool, counted, cal, np.arange(1, 40, 2), SETTINGS)
    assert step is not None
    singles = [nested.outer[name].selection.chosen.config["layer"] for name in step.outer]
    # every set, fold and source from one read of each layer, beside each source's single-layer choice, which the
    # kind gate reads from its token rows once
    assert sorted(reads) == sorted([0, 1, 2, *singles])

    def one_row(_layer: int):
        parts = [layer_data(x) for x in (1, 2)]
        return tuple(concat_layer_data([one_row_each(p[i], selection) for p in parts]) for i in (0, 1))

    multi = {**_multi([1, 2]), "token_selection": selection}
    row = concat_row(multi, replace(rows[0], token_selection=selection))
    tokens, collapsed = (
        FoldScorer(pool, joined_layers(layer_data, [1, 2]), SETTINGS),
        FoldScorer(pool, one_row, SETTINGS),
    )
    held = frozenset({("source", "d")})
    for scorer in (tokens, collapsed):
        scorer.run([(row, held)])
    for got, want in zip(collapsed.get(row, held), tokens.get(row, held)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_the_concat_check_runs_only_under_a_held_out_source_choice(three_layers):
    """Stage 4's check is built only where stage 4b chose by held-out source (None without a choice or with a
    held-out-kind one); it joins the concat's layers itself when it runs."""
    pool, layer_data, cal = three_layers
    score = _single(_row(1, 0.80), pool, layer_data, cal)
    for selection in (None, SourceSelection("heldout_kind", list(SOURCES), 1, score, score)):
        assert concat_check(TrainConfig(), None, None, SourceOutcome(selection, None, 0)) is None
    chosen_by_source = SourceSelection("heldout_source", list(SOURCES), 1, score, score)
    check = concat_check(TrainConfig(), None, None, SourceOutcome(chosen_by_source, None, 0))
    assert callable(check)
