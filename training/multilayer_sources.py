"""The multi-layer decision on held-out sources, where the single-layer probe was chosen on them.

`multilayer.ship_concat` compares the concatenated probe with the chosen single-layer probe on held-out
*kinds*. Where the pool has two or more evaluable sources, stage 4b re-chooses the single-layer probe by
held-out *source* (training/nested.py), so a held-out-kind comparison alone would judge the concat on a
weaker basis than the probe it replaces: a concat can win every held-out kind yet lose on data written
elsewhere, which is what the source choice guards against. Here the concat is fitted on the same source
folds as the chosen probe and put through the same rule (`nested.pick`: the best worst fold, ties to
0.01 broken by the mean); it ships only where that rule prefers it. The fold fits read the layers side by
side (`multilayer.concat_layer_data`), as the shipped multi-layer probe does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from probewatch.training.features import LayerData
from probewatch.training.multilayer import concat_layer_data, concat_row
from probewatch.training.nested import FoldScorer, LayerFn, NestedSettings, config_score, folds_without, pick
from probewatch.training.report_sources import ConfigScore
from probewatch.training.sweep import PoolArrays, SweepRow

__all__ = ["SourceCheck", "concat_on_sources"]


@dataclass
class SourceCheck:
    """The concat and the chosen single-layer probe on the held-out-source folds that chose the latter."""

    single: ConfigScore
    concat: ConfigScore
    holds: bool  # the held-out-source rule prefers the concat

    def to_json(self) -> dict[str, Any]:
        return {"single": vars(self.single), "concat": vars(self.concat), "holds": self.holds}


def concat_on_sources(
    multi: Mapping[str, Any],
    chosen: SweepRow,
    single: ConfigScore,
    pool: PoolArrays,
    layer_data: LayerFn,
    control_cal: np.ndarray,
    settings: NestedSettings,
) -> SourceCheck | None:
    """Fit the concat of `multi["layers"]` on each held-out-source fold and judge it against `single` (the
    chosen probe's `ConfigScore` on the same folds) by the rule that chose `chosen`. None where the pool
    has fewer than two evaluable sources (the held-out-kind comparison then stands alone)."""
    basis, folds = folds_without(pool, None)
    if basis != "heldout_source" or len(folds) < 2:
        return None
    layers = [int(x) for x in multi["layers"]]
    joined: list[tuple[LayerData, LayerData]] = []

    def concat_data(_layer: int) -> tuple[LayerData, LayerData]:
        if not joined:  # one layer at a time, as the activations cache holds them
            parts = [layer_data(layer) for layer in layers]
            joined.append((concat_layer_data([d for d, _ in parts]), concat_layer_data([c for _, c in parts])))
        return joined[0]

    row = concat_row(multi, chosen)
    scorer = FoldScorer(pool, concat_data, settings)  # its own memo: the row's layer key names the joined data
    scorer.run((row, fold.held) for fold in folds)
    concat = config_score(row, folds, scorer, control_cal)
    concat.config["layers"] = layers
    if concat.worst is None or single.worst is None:
        return SourceCheck(single, concat, holds=False)
    chosen_index, _ = pick([(chosen, single), (row, concat)], margin=math.inf)  # the guard judged the candidates
    return SourceCheck(single, concat, holds=chosen_index == 1)
