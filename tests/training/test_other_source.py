"""Held out from two sides (issue 22 item 5): a held-out kind's probe also scores another source's rows of that
kind, selection reads the lower of the two AUROCs, and the multi-layer search adds layers that help on both."""

from __future__ import annotations

import numpy as np
import pytest

from probewatch.probes import Aggregation
from probewatch.training.features import LayerData
from probewatch.training.multilayer import OtherSource, evaluate_concat, forward_layers, ship_concat
from probewatch.training.sweep import PoolArrays, SweepRow, best_row, checked_per_kind, ood_kind_rows, sweep_layer

KINDS = ("a", "b", "c")
D = 6


def _pool(n_per_kind: int = 40, seed: int = 0) -> tuple[np.ndarray, PoolArrays]:
    """Three kinds; the label lives in feature 0 and (for the pool only) also in feature 1."""
    rng = np.random.default_rng(seed)
    n = n_per_kind * len(KINDS)
    labels = np.tile([0, 1], n // 2)
    X = rng.normal(size=(n, D)).astype(np.float32)
    X[:, 0] += 2.0 * labels
    X[:, 1] += 3.0 * labels  # a shortcut that holds in this source only
    kinds = np.repeat(KINDS, n_per_kind)
    groups = np.array([f"g{i // 2}" for i in range(n)])  # a pair per group, within a kind
    idx = np.arange(n)
    pool = PoolArrays(labels, groups, kinds, idx[idx % 4 < 2], idx[idx % 4 == 2], idx[idx % 4 == 3])
    return X, pool


def _other_source(n: int = 60, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of kind "a" from elsewhere: feature 0 carries the label, feature 1 carries its opposite."""
    rng = np.random.default_rng(seed)
    labels = np.tile([0, 1], n // 2)
    X = rng.normal(size=(n, D)).astype(np.float32)
    X[:, 0] += 2.0 * labels
    X[:, 1] -= 3.0 * labels
    kinds = np.array(["a"] * (n - 10) + ["elsewhere"] * 10)
    return X, labels, kinds


def _data(X: np.ndarray, layer: int = 1) -> LayerData:
    return LayerData(layer, X, np.arange(len(X) + 1), X)


def test_ood_rows_of_a_pool_kind_are_found_per_set():
    rows = ood_kind_rows({"x": np.array(["a", "b", "a"]), "y": np.array(["c"]), "z": np.array([])}, "a")
    assert list(rows) == ["x"] and rows["x"].tolist() == [0, 2]
    assert ood_kind_rows(None, "a") == {}
    assert checked_per_kind({"a": 0.9, "b": 0.8}, {"a": 0.6}) == {"a": 0.6, "b": 0.8}


def test_sweep_scores_a_held_out_kind_on_the_other_sources_rows_and_selection_reads_the_lower():
    X, pool = _pool()
    Xo, yo, ko = _other_source()
    ood = {"elsewhere": (_data(Xo), yo)}
    kw = {"token_selection": "prompt_last", "methods": ["logistic"], "aggregations": [Aggregation(method="last")],
          "per_token": False, "seed": 0, "balance_kinds": True, "Cs": [1.0]}  # fmt: skip
    [row] = sweep_layer(_data(X), ood, pool, ood_kinds={"elsewhere": ko}, **kw)
    [plain] = sweep_layer(_data(X), ood, pool, **kw)  # without kinds: no other-source check
    assert set(row.heldout_per_kind) == set(KINDS) and set(row.heldout_other_source) == {"a"}
    assert row.heldout_per_kind["a"] > 0.95  # inside the pool the shortcut works
    assert row.heldout_other_source["a"] < row.heldout_per_kind["a"] - 0.1  # elsewhere it does not
    assert row.checked_per_kind["a"] == row.heldout_other_source["a"]
    assert row.heldout_kind_auroc == pytest.approx(plain.heldout_kind_auroc)  # the pool's number is unchanged
    assert plain.heldout_other_source == {}
    assert row.selection_score("heldout_kind") == pytest.approx(np.mean(list(row.checked_per_kind.values())))
    assert row.selection_score("heldout_kind") < plain.selection_score("heldout_kind")


def test_best_row_prefers_the_layer_that_holds_on_the_other_source():
    pool_only = SweepRow("prompt_last", 29, "logistic", False, "last", 0.99, 0.987, {"a": 0.99, "b": 0.985},
                         heldout_other_source={"a": 0.93, "b": 0.94})  # fmt: skip
    both = SweepRow("prompt_last", 19, "logistic", False, "last", 0.99, 0.975, {"a": 0.97, "b": 0.98},
                    heldout_other_source={"a": 0.965, "b": 0.975})  # fmt: skip
    assert best_row([pool_only, both], "heldout_kind").layer == 19
    stripped = [SweepRow(**{**r.__dict__, "heldout_other_source": {}}) for r in (pool_only, both)]
    assert best_row(stripped, "heldout_kind").layer == 29  # by the pool's kinds alone the late layer wins


def _result(per_kind: dict[str, float], other: dict[str, float] | None = None) -> dict:
    return {
        "val_auroc": 0.9,
        "heldout_kind_auroc": float(np.mean(list(per_kind.values()))),
        "heldout_per_kind": per_kind,
        "heldout_other_source": other or {},
    }


def test_forward_search_adds_the_layer_that_helps_most_and_stops_when_nothing_does():
    start = SweepRow("prompt_last", 19, "logistic", False, "last", 0.99, 0.90, {"a": 0.90, "b": 0.90}, C=0.1)
    table = {
        (7, 19): _result({"a": 0.95, "b": 0.94}),
        (19, 23): _result({"a": 0.92, "b": 0.92}),
        (19, 29): _result({"a": 0.99, "b": 0.80}),  # best mean of the pairs, but costs the worst kind 0.10
        (7, 19, 23): _result({"a": 0.95, "b": 0.95}),
        (7, 19, 29): _result({"a": 0.94, "b": 0.94}),
    }
    asked: list[list[int]] = []

    def measure(layers: list[int]) -> dict:
        asked.append(layers)
        return table[tuple(layers)]

    layers, found, trail = forward_layers(measure, start, [7, 19, 23, 29], k=3)
    assert layers == [7, 19, 23] and found == table[(7, 19, 23)]
    assert [t["layers"] for t in trail] == asked == [[7, 19], [19, 23], [19, 29], [7, 19, 23], [7, 19, 29]]
    # a set that does not beat the current one ends the search
    layers, found, _ = forward_layers(measure, start, [19, 23], k=3)
    assert layers == [19, 23]
    flat = {(19, 23): _result({"a": 0.89, "b": 0.90})}
    layers, found, trail = forward_layers(lambda ls: flat[tuple(ls)], start, [19, 23], k=3)
    assert layers == [19] and found is None and len(trail) == 1


def test_concat_is_measured_on_the_other_source_and_ships_only_if_it_holds_there():
    X, pool = _pool()
    Xo, yo, ko = _other_source()
    features = {1: X[:, :3], 2: X[:, 3:]}
    other = OtherSource({1: Xo[:, :3], 2: Xo[:, 3:]}, yo, ko)
    concat = evaluate_concat(features, pool, [1, 2], C=1.0, others=[other])
    assert set(concat["heldout_per_kind"]) == set(KINDS) and set(concat["heldout_other_source"]) == {"a"}
    assert concat["heldout_other_source"]["a"] < concat["heldout_per_kind"]["a"]
    without = evaluate_concat(features, pool, [1, 2], C=1.0)
    assert without["heldout_other_source"] == {} and without["heldout_per_kind"] == concat["heldout_per_kind"]
    # better than the single layer in the pool, worse on the other source: does not ship
    single = SweepRow("prompt_last", 1, "logistic", False, "last", 0.9, 0.90, {"a": 0.90, "b": 0.90, "c": 0.90},
                      heldout_other_source={"a": 0.89})  # fmt: skip
    multi = {"layers": [1, 2], "concat": _result({"a": 0.99, "b": 0.99, "c": 0.99}, {"a": 0.80})}
    assert ship_concat(multi, single) is False
    multi_holds = {"layers": [1, 2], "concat": _result({"a": 0.99, "b": 0.99, "c": 0.99}, {"a": 0.95})}
    assert ship_concat(multi_holds, single) is True
