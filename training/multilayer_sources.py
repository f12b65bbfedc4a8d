"""The multi-layer decision on held-out sources, where the single-layer probe was chosen on them.

`multilayer.ship_concat` compares the concatenated probe with the chosen single-layer probe on held-out
*kinds*. Where the pool has two or more evaluable sources, stage 4b re-chooses the single-layer probe by
held-out *source* (training/nested.py), so a held-out-kind comparison alone would judge the concat on a
weaker basis than the probe it replaces: a concat can win every held-out kind yet lose on data written
elsewhere, which is what the source choice guards against. Here both probes are fitted on the same source
folds (the concat reads the layers side by side, `multilayer.concat_layer_data`, as the shipped bundle does)
and the concat ships only where the rule that chose the single probe prefers it (`nested.pick`: the best
worst fold, ties to 0.01 broken by the mean): where the worst fold and the mean disagree, the worst fold wins,
as it does for every other choice.

Two to four held-out sources of 60 to a few hundred items are a noisy judge (an AUROC on 120 + 120 items
moves by about 0.04 between resamples), so each fold where the concat scores more than 0.01 below the single
probe also gets the paired bootstrap interval of the difference (`compare.paired_auroc_delta`, both probes on
the same resampled items): it is reported, not used, so a reader sees whether the loss that kept the single
layer is one the data can show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from probewatch.training.compare import paired_auroc_delta
from probewatch.training.features import LayerData
from probewatch.training.multilayer import concat_layer_data, concat_row
from probewatch.training.nested import (
    TIE,
    Fold,
    FoldScorer,
    LayerFn,
    NestedSettings,
    config_score,
    folds_without,
    pick,
    unit_items,
)
from probewatch.training.report_sources import ConfigScore
from probewatch.training.sweep import PoolArrays, SweepRow

__all__ = [
    "REPLAYED_BY",
    "SourceCheck",
    "concat_on_sources",
    "fold_losses",
    "joined_layers",
    "loss_text",
]

#: report.json `multi_layer` key beside `heldout_source` where the check was replayed after the run that wrote
#: the report (`probewatch bench selection --record`, training/replay.py): the command that added it
REPLAYED_BY = "heldout_source_replayed_by"


@dataclass
class SourceCheck:
    """The concat and the chosen single-layer probe on the held-out-source folds that chose the latter."""

    single: ConfigScore
    concat: ConfigScore
    holds: bool  # the held-out-source rule prefers the concat: it ships
    #: per fold where the concat scores more than TIE below the single probe: [change, low, high] (95% interval)
    losses: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"single": vars(self.single), "concat": vars(self.concat), "holds": self.holds, "losses": self.losses}


def concat_on_sources(
    multi: Mapping[str, Any],
    chosen: SweepRow,
    pool: PoolArrays,
    layer_data: LayerFn,
    control_cal: np.ndarray,
    settings: NestedSettings,
) -> SourceCheck | None:
    """Fit the chosen single-layer probe and the concat of `multi["layers"]` on each held-out-source fold and
    judge them by the held-out-source rule. None where the pool has fewer than two evaluable sources (the held-out-kind
    comparison then stands alone). The concat's layers are joined once (`joined_layers`), for every fold."""
    basis, folds = folds_without(pool, None)
    if basis != "heldout_source" or len(folds) < 2:
        return None
    layers = [int(x) for x in multi["layers"]]
    row = concat_row(multi, chosen)
    single_fits = FoldScorer(pool, layer_data, settings)
    # its own memo: the row's layer key names the joined data
    concat_fits = FoldScorer(pool, joined_layers(layer_data, layers), settings)
    single_fits.run((chosen, fold.held) for fold in folds)
    concat_fits.run((row, fold.held) for fold in folds)
    single = config_score(chosen, folds, single_fits, control_cal)
    concat = config_score(row, folds, concat_fits, control_cal)
    concat.config["layers"] = layers
    if concat.worst is None or single.worst is None:
        return SourceCheck(single, concat, False)
    losses = fold_losses(folds, single, concat, single_fits, concat_fits, chosen, row, pool.labels, control_cal)
    chosen_index, _ = pick([(chosen, single), (row, concat)], margin=math.inf)  # the guard judged both already
    return SourceCheck(single, concat, chosen_index == 1, losses)


def joined_layers(layer_data: LayerFn, layers: list[int]) -> LayerFn:
    """A `LayerFn` whose every call gives `layers` side by side (pool, control), joined once on first use: one
    layer at a time comes from the activations cache, as it holds them."""
    joined: list[tuple[LayerData, LayerData]] = []

    def concat_data(_layer: int) -> tuple[LayerData, LayerData]:
        if not joined:
            parts = [layer_data(layer) for layer in layers]
            joined.append((concat_layer_data([d for d, _ in parts]), concat_layer_data([c for _, c in parts])))
        return joined[0]

    return concat_data


def fold_losses(
    folds: list[Fold],
    single: ConfigScore,
    concat: ConfigScore,
    single_fits: FoldScorer,
    concat_fits: FoldScorer,
    single_row: SweepRow,
    concat_row_: SweepRow,
    labels: np.ndarray,
    control_ref: np.ndarray,
) -> dict[str, list[float]]:
    """{fold: [concat - single AUROC, low, high]} for the folds where the concat scores more than `TIE` below,
    the interval from a paired bootstrap over the fold's items (positives against the control set's calibration
    half where the fold has no negatives, as `nested.unit_auroc` scores it)."""
    out: dict[str, list[float]] = {}
    for fold in folds:
        a, b = single.folds.get(fold.name), concat.folds.get(fold.name)
        if a is None or b is None or b >= a - TIE:
            continue
        got_single, got_concat = single_fits.get(single_row, fold.held), concat_fits.get(concat_row_, fold.held)
        if got_single is None or got_concat is None:
            continue
        before = unit_items(got_single[0], labels, fold.test, got_single[1][control_ref])
        after = unit_items(got_concat[0], labels, fold.test, got_concat[1][control_ref])
        if before is None or after is None:
            continue
        delta = paired_auroc_delta(before[0], after[0], before[1])
        if delta is not None:
            out[fold.name] = delta
    return out


def loss_text(name: str, loss: list[float]) -> str:
    """'greenblatt_prompts -0.043 (95% CI -0.092 to +0.004)': one of `SourceCheck.losses`, as the docs and
    `probewatch bench selection` print it."""
    change, low, high = loss
    return f"{name} {change:+.3f} (95% CI {low:+.3f} to {high:+.3f})"
