"""The multi-layer step inside the nested, source-held-out estimate.

`nested.nested_estimate` measures the choice of one configuration (layer, method, C, token selection,
aggregation) on sources it never saw. The shipped probe can be more: where a run compared a multi-layer
probe, `multilayer.choose_layers` ships the concat of the layers its forward search found when it beats the
single-layer choice on held-out kinds (`multilayer.ship_concat`) and, where that choice was made by held-out
source, on the held-out-source folds too (`multilayer_sources.concat_on_sources`). Left out of the estimate,
that step is judged only on the data it was chosen on. Here, per outer source S, the whole step runs without S:

- the layer set: the run's forward search (`multilayer.forward_layers`) from the layer of S's single-layer
  choice, whose held-out kinds are the other sources' kinds, each fitted on the rest of them (S held out
  throughout: `kind_folds`), so the set S is scored with was never searched on S; where it adds no layer, the
  best pair it measured goes to the gate, as in the run;
- the kind gate (`ship_concat`) on the same kind folds: the set found against S's single-layer choice;
- the source gate: the concat and S's single-layer choice on the inner folds that chose the latter (the other
  sources, or their kinds), by the rule that chose it (`nested.pick`, no guard: both were judged);
- where both hold, the concat is fitted on the other sources and scored on S; otherwise S keeps the
  single-layer AUROC. The mean over S is the estimate of the whole procedure.

The candidates are the layers the run's search could add (the sweep's per-example logistic rows on the
comparison's token selection, and the run's own set), up to the run's `multi_layer` layers, at the C of the
run's comparison. Another source's rows of a pool kind (refusal's formats), which the run's search also reads,
are not read here: held-out sources are other sources already. The concat is a per-example probe read by its
mean, so every fit here reads each example as one row (`one_row_each`): the same fit and scores as on the token
rows, without holding or scoring millions of them per set and fold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from probewatch.training.features import LayerData
from probewatch.training.multilayer import (
    concat_candidate,
    concat_layer_data,
    concat_row,
    forward_layers,
    ship_concat,
)
from probewatch.training.nested import (
    Fold,
    FoldScorer,
    Held,
    LayerFn,
    NestedSettings,
    config_of,
    config_score,
    folds_without,
    kind_folds,
    mean_and_worst,
    pick,
    source_auroc,
)
from probewatch.training.report_sources import (
    ConfigScore,
    NestedEstimate,
    NestedMultiLayer,
    OuterMultiLayer,
    OuterSource,
)
from probewatch.training.sweep import PoolArrays, SweepRow

__all__ = ["multilayer_step", "search_candidates"]


def search_candidates(rows: Sequence[SweepRow], multi: Mapping[str, Any]) -> list[int]:
    """The layers the run's forward search could add: those with a per-example logistic row on the comparison's
    token selection and aggregation (`stage_sweep`'s candidates), and the run's own set."""
    selection = _comparison_selection(multi)
    return sorted({r.layer for r in rows if concat_candidate(r, selection)} | {int(x) for x in multi["layers"]})


def _comparison_selection(multi: Mapping[str, Any]) -> str:
    """The token selection the run's multi-layer comparison read (its concat candidates and every set here)."""
    return str(multi.get("token_selection", "response"))


class _SetFits:
    """One `FoldScorer` per layer set, each reading its layers' examples one row each (`one_row_each`): every
    layer is read from the activations once for the whole step, and no set ever holds token rows. The
    single-layer choices the kind gate compares with are fitted on token rows (`score_tokens`)."""

    def __init__(self, pool: PoolArrays, layer_data: LayerFn, settings: NestedSettings, selection: str) -> None:
        self.pool, self.layer_data, self.settings, self.selection = pool, layer_data, settings, selection
        self.layers: dict[int, tuple[LayerData, LayerData]] = {}
        self.scorers: dict[tuple[int, ...], FoldScorer] = {}
        self.tokens: FoldScorer | None = None  # single-layer choices, on token rows

    def scorer(self, layers: Sequence[int]) -> FoldScorer:
        key = tuple(layers)
        if key not in self.scorers:
            self.scorers[key] = FoldScorer(self.pool, lambda _layer: self._joined(key), self.settings)
        return self.scorers[key]

    def _joined(self, layers: tuple[int, ...]) -> tuple[LayerData, LayerData]:
        for layer in layers:
            if layer not in self.layers:
                data, control = self.layer_data(layer)
                self.layers[layer] = (one_row_each(data, self.selection), one_row_each(control, self.selection))
        parts = [self.layers[layer] for layer in layers]
        if len(parts) == 1:
            return parts[0]
        return concat_layer_data([d for d, _ in parts]), concat_layer_data([c for _, c in parts])

    def score(self, row: SweepRow, layers: Sequence[int], folds: Sequence[Fold], control: np.ndarray) -> ConfigScore:
        """A concat candidate (per-example logistic read by its mean or prompt row) on `folds`."""
        scorer = self.scorer(layers)
        scorer.run((row, f.held) for f in folds)
        return config_score(row, folds, scorer, control)

    def score_tokens(self, row: SweepRow, folds: Sequence[Fold], control: np.ndarray) -> ConfigScore:
        """A single-layer choice on `folds`, read from its token rows: it may pool them otherwise than by their
        mean (softmax, a maximum, attention) or read another token selection, which one row per example cannot."""
        if self.tokens is None:
            self.tokens = FoldScorer(self.pool, self.layer_data, self.settings)
        self.tokens.run((row, f.held) for f in folds)
        return config_score(row, folds, self.tokens, control)


def one_row_each(data: LayerData, selection: str) -> LayerData:
    """`data` with each example one row: the features a per-example probe on `selection` reads (the mean of its
    tokens; the prompt row for prompt_last). A concat candidate is such a probe read by its mean (or its one
    prompt row), and the mean of x.w + b over tokens is (mean x).w + b, so fitting and scoring these rows is
    fitting and scoring the tokens, at the cost of one row per example: a long-transcript pool's layer holds
    millions of token rows, which the search would otherwise score again for every set and fold."""
    x = np.ascontiguousarray(data.example_matrix(selection))
    n, d = x.shape
    return LayerData(
        data.layer,
        x,
        np.arange(n + 1, dtype=np.int64),
        data.last,
        np.zeros((n, d), dtype=x.dtype),  # nothing outside the row: 'all' reads the row itself
        np.zeros(n, dtype=np.int64),
        np.zeros((0, d), dtype=x.dtype),  # no option rows: 'answer' reads the row itself
        np.zeros(n, dtype=np.int64),
    )


@dataclass
class _Search:
    """One outer source's layer search and kind gate, decided on `kind_folds` without it."""

    layers: list[int]
    row: SweepRow  # the concat's row (its first layer's name) or the start's where the search added none
    kind_gate: bool


def _logistic_row(multi: Mapping[str, Any], single: SweepRow, layers: Sequence[int]) -> SweepRow:
    """The per-example logistic row a concat over `layers` is fitted from (`concat_row`, named by its first
    layer); the run's measurements of its own set are kept only on that set."""
    row = replace(concat_row(multi, single), layer=int(layers[0]))
    if [int(x) for x in multi["layers"]] == list(layers):
        return row
    return replace(row, val_auroc=None, heldout_kind_auroc=None, heldout_per_kind={}, heldout_other_source={})


def _on_kinds(row: SweepRow, score: ConfigScore) -> SweepRow:
    """`row` with its held-out-kind numbers those of `score` (the kind folds): what `ship_concat` reads."""
    return replace(row, heldout_per_kind=dict(score.folds), heldout_other_source={}, heldout_kind_auroc=score.mean)


def _search(
    name: str,
    multi: Mapping[str, Any],
    single: SweepRow,
    candidates: Sequence[int],
    max_layers: int,
    fits: _SetFits,
    pool: PoolArrays,
    control_cal: np.ndarray,
) -> _Search:
    folds = kind_folds(pool, name)
    start = _logistic_row(multi, single, [single.layer])
    measured: dict[tuple[int, ...], ConfigScore] = {
        (single.layer,): fits.score(start, [single.layer], folds, control_cal)
    }

    def measure(layers: list[int]) -> dict[str, Any]:
        key = tuple(layers)
        if key not in measured:
            measured[key] = fits.score(_logistic_row(multi, single, layers), layers, folds, control_cal)
        return {"heldout_per_kind": measured[key].folds, "heldout_other_source": {}}

    begin = _on_kinds(start, measured[(single.layer,)])
    layers, _, trail = forward_layers(measure, begin, candidates, max_layers)
    if len(layers) < 2 and not trail:
        return _Search(layers, start, False)
    if len(layers) < 2:  # nothing helped: the best pair measured goes to the gate, as in the run (`stage_sweep`)
        layers = max(trail, key=lambda t: t["mean"])["layers"]
    concat = measured[tuple(layers)]
    gated = {"concat": {"heldout_kind_auroc": concat.mean, "heldout_per_kind": concat.folds}}
    chosen = _on_kinds(single, fits.score_tokens(single, folds, control_cal))
    return _Search(layers, _logistic_row(multi, single, layers), ship_concat(gated, chosen))


def multilayer_step(
    multi: Mapping[str, Any] | None,
    rows: Sequence[SweepRow],
    estimate: NestedEstimate,
    pool: PoolArrays,
    layer_data: LayerFn,
    control_cal: np.ndarray,
    control_held: np.ndarray,
    settings: NestedSettings,
    max_layers: int = 3,
) -> NestedMultiLayer | None:
    """The nested estimate with the multi-layer step run per outer source without it (module docstring).
    None where the run compared no multi-layer probe. The single-layer choices' inner-fold scores are the
    estimate's own (`OuterSource.selection.chosen`: the same folds). `max_layers`: the run's `multi_layer`."""
    if not multi or len(multi.get("layers") or []) < 2 or not multi.get("concat"):
        return None
    run_layers = [int(x) for x in multi["layers"]]
    fits = _SetFits(pool, layer_data, settings, _comparison_selection(multi))
    by_config = {_key(config_of(r)): r for r in rows}
    candidates = search_candidates(rows, multi)
    steps: dict[str, OuterMultiLayer] = {}
    for name, outer in estimate.outer.items():
        single = by_config.get(_key(outer.selection.chosen.config))
        if single is None:
            raise ValueError(f"held-out source {name!r}: its chosen configuration is not among the sweep's rows")
        found = _search(name, multi, single, candidates, max_layers, fits, pool, control_cal)
        steps[name] = _decide(name, found, single, outer, fits, pool, control_cal, control_held)
    return _summary(run_layers, steps, estimate.mean)


def _decide(
    name: str,
    found: _Search,
    single: SweepRow,
    chosen: OuterSource,
    fits: _SetFits,
    pool: PoolArrays,
    control_cal: np.ndarray,
    control_held: np.ndarray,
) -> OuterMultiLayer:
    """The source gate on the inner folds that chose S's single layer, then the concat on S where it ships.
    The inner and the outer fits of the set run in one batch."""
    single_score, single_auroc = chosen.selection.chosen, chosen.auroc
    if not found.kind_gate:
        return OuterMultiLayer(single_auroc, False, None, None, False, single_auroc, layers=found.layers)
    _, folds = folds_without(pool, name)
    folds = folds if len(folds) >= 2 else []
    outer: Held = frozenset({("source", name)})
    scorer = fits.scorer(found.layers)
    scorer.run([*((found.row, f.held) for f in folds), (found.row, outer)])
    concat_score = None
    ships = True  # no inner fold to judge by: the kind gate decides alone
    if folds:
        concat_score = config_score(found.row, folds, scorer, control_cal)
        concat_score.config["layers"] = list(found.layers)
        ships = (
            single_score.worst is not None
            and concat_score.worst is not None
            and pick([(single, single_score), (found.row, concat_score)], margin=math.inf)[0] == 1
        )
    auroc = source_auroc(found.row, name, pool, scorer, control_held) if ships else single_auroc
    return OuterMultiLayer(
        single_auroc, True, single_score if folds else None, concat_score, ships, auroc, layers=found.layers
    )


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
