"""The multi-layer step inside the nested, source-held-out estimate.

`nested.nested_estimate` measures the choice of one configuration (layer, method, C, token selection,
aggregation) on sources it never saw. The shipped probe can be more: where a run compared a multi-layer
probe, `multilayer.choose_layers` ships the concat of several layers when it beats the single-layer choice
on held-out kinds (`multilayer.ship_concat`) and, where that choice was made by held-out source, on the
held-out-source folds too (`multilayer_sources.concat_on_sources`). Left out of the estimate, that step is
judged only on the data it was chosen on. Here, per outer source S, the step is decided without S:

- the kind gate (`ship_concat`) reads only the held-out kinds of the other sources (a kind shared with S, such
  as the long transcripts composed from every source, is left out, as the pre-screen leaves it out);
- the source gate fits the concat and S's single-layer choice on the inner folds that chose the latter (the
  other sources, or their kinds) and asks the rule that chose it (`nested.pick`, no guard: both were judged);
- where both hold, the concat is fitted on the other sources and scored on S; otherwise S keeps the
  single-layer AUROC. The mean over S is the estimate of the whole procedure.

What is not re-decided: the layer set itself. It comes from the run's forward search over the held-out kinds
of the whole pool (`multilayer.forward_layers`, S's kinds among them; the report keeps only the trail's means,
so the search cannot be replayed without them): the step here decides whether that set ships, not which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from probewatch.training.multilayer import concat_row, ship_concat
from probewatch.training.multilayer_sources import joined_layers
from probewatch.training.nested import (
    FoldScorer,
    LayerFn,
    NestedSettings,
    config_of,
    config_score,
    folds_without,
    kind_sources,
    mean_and_worst,
    pick,
    source_auroc,
)
from probewatch.training.report_sources import NestedEstimate, NestedMultiLayer, OuterMultiLayer
from probewatch.training.sweep import PoolArrays, SweepRow

__all__ = ["multilayer_step", "without_kinds", "row_without_kinds"]


def without_kinds(result: Mapping[str, Any], kinds: set[str]) -> dict[str, Any]:
    """A multi-layer comparison's result (`multi["concat"]`) as if `kinds` had not been held out: their
    AUROCs dropped, the held-out-kind mean over the rest (None where none is left)."""
    per = {k: v for k, v in (result.get("heldout_per_kind") or {}).items() if k not in kinds}
    other = {k: v for k, v in (result.get("heldout_other_source") or {}).items() if k not in kinds}
    mean = float(np.mean(list(per.values()))) if per else None
    return {**result, "heldout_per_kind": per, "heldout_other_source": other, "heldout_kind_auroc": mean}


def row_without_kinds(row: SweepRow, kinds: set[str]) -> SweepRow:
    """`without_kinds` for a sweep row."""
    kept = without_kinds(
        {"heldout_per_kind": row.heldout_per_kind, "heldout_other_source": row.heldout_other_source}, kinds
    )
    return replace(
        row,
        heldout_per_kind=kept["heldout_per_kind"],
        heldout_other_source=kept["heldout_other_source"],
        heldout_kind_auroc=kept["heldout_kind_auroc"],
    )


def multilayer_step(
    multi: Mapping[str, Any] | None,
    rows: Sequence[SweepRow],
    estimate: NestedEstimate,
    pool: PoolArrays,
    layer_data: LayerFn,
    control_cal: np.ndarray,
    control_held: np.ndarray,
    settings: NestedSettings,
    joined: LayerFn | None = None,
) -> NestedMultiLayer | None:
    """The nested estimate with the multi-layer step decided per outer source without it (module docstring).
    None where the run compared no multi-layer probe. The single-layer choices' inner-fold scores are the
    estimate's own (`OuterSource.selection.chosen`: the same folds), so only the concat is fitted here.
    `joined`: `multi["layers"]` already joined (`joined_layers`), shared with the whole-pool concat check."""
    if not multi or len(multi.get("layers") or []) < 2 or not multi.get("concat"):
        return None
    layers = [int(x) for x in multi["layers"]]
    concat_fits = FoldScorer(pool, joined or joined_layers(layer_data, layers), settings)
    by_config = {_key(config_of(r)): r for r in rows}
    sources_of = kind_sources(pool)
    plans = {}
    for name, outer in estimate.outer.items():
        single = by_config.get(_key(outer.selection.chosen.config))
        if single is None:
            raise ValueError(f"held-out source {name!r}: its chosen configuration is not among the sweep's rows")
        shared = {k for k, srcs in sources_of.items() if name in srcs}
        gate = ship_concat(
            {**multi, "concat": without_kinds(multi["concat"], shared)}, row_without_kinds(single, shared)
        )
        _, folds = folds_without(pool, name)
        plans[name] = (single, concat_row(multi, single), gate, folds if len(folds) >= 2 else [])
    concat_fits.run((row, f.held) for _, row, gate, folds in plans.values() if gate for f in folds)
    steps: dict[str, tuple[OuterMultiLayer, SweepRow]] = {}
    for name, (single, row, gate, folds) in plans.items():
        single_score = concat_score = None
        ships = gate
        if gate and folds:
            single_score = estimate.outer[name].selection.chosen
            concat_score = config_score(row, folds, concat_fits, control_cal)
            concat_score.config["layers"] = layers
            ships = (
                single_score.worst is not None
                and concat_score.worst is not None
                and pick([(single, single_score), (row, concat_score)], margin=math.inf)[0] == 1
            )
        single_auroc = estimate.outer[name].auroc
        step = OuterMultiLayer(single_auroc, gate, single_score, concat_score, ships, single_auroc)
        steps[name] = (step, row)
    concat_fits.run((row, frozenset({("source", name)})) for name, (step, row) in steps.items() if step.ships)
    for name, (step, row) in steps.items():
        if step.ships:
            step.auroc = source_auroc(row, name, pool, concat_fits, control_held)
    return _summary(layers, {name: step for name, (step, _) in steps.items()}, estimate.mean)


def _key(config: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, v) for k, v in config.items() if k != "layers"))


def _summary(layers: list[int], outer: dict[str, OuterMultiLayer], single_mean: float | None) -> NestedMultiLayer:
    mean, worst, worst_source = mean_and_worst({s: o.auroc for s, o in outer.items()})
    return NestedMultiLayer(
        layers=layers,
        outer=outer,
        mean=mean,
        worst=worst,
        worst_source=worst_source,
        change=(mean - single_mean) if (mean is not None and single_mean is not None) else None,
    )
