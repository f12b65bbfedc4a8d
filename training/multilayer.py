"""Multi-layer probes, measured the way single-layer ones are chosen (leave-one-kind-out).

Two constructions from the field, per-example logistic on the chosen token selection:
- `concat`: one probe on the concatenation of several layers' features (Apollo / GDM report
  small gains from several layers);
- `ensemble`: one probe per layer, each standardised to unit spread on its training examples,
  scores averaged.

`concat` can ship: a bundle may read several layers (manifest `layers`; the token score is
sum_l w_l . h_l + b, which is exactly the concatenated probe; the live sidecar joins the layers per
token, server/sidecar/joins.py). The pipeline ships it only where it beats the single-layer choice
on held-out kinds by more than `SHIP_MARGIN` (or by more than `ERROR_SHARE` of the single probe's remaining
held-out error, where that is smaller), or on every one of at least `MIN_KINDS_ALL_BETTER` held-out
kinds (`ship_concat`), and, where the single-layer probe was chosen by held-out source, only where the
same held-out-source rule prefers the concat (`multilayer_sources`); otherwise the comparison stays a
measurement and nothing changes. Shipping refits the concat probe through the same final stage as
a single layer: `MultiLayerActivations` hands stage 5 and 6 the layers' rows side by side, so the
Platt fold, operating point, calibration reference, plots and live-path parity check all apply.
`ensemble` stays a measurement. It is linear in the joined layers too (mean over l of (w_l . h_l + b_l) / s_l), so
it could ship through the same path, but in the shipped runs (docs/quality/*/report.json `multi_layer`) it scored
below the concat on held-out kinds on four of five pools and 0.001 above it on refusal (0.992 vs 0.991), short of
any margin that would justify a second export.

Which layers: a forward search (`forward_layers`) from the chosen single layer adds, one at a time,
the layer whose concat scores best on held-out kinds (other-source rows included, as the sweep
reads them), while that improves the mean without costing the worst kind more than `WORST_MARGIN`.
The top layers by their own score are often neighbours that carry the same signal: for refusal,
layers 19+23+25 scored 0.985 (held-out kinds, other source included) where 7+19+23 scored 0.989 and
plain refusal_val 0.9976 against 0.9998.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from probewatch.training.estimators import make_probe
from probewatch.training.features import LayerData, example_weights
from probewatch.training.sweep import PoolArrays, SweepRow, _safe_auroc, checked_per_kind, ood_kind_rows

#: concat ships only when its held-out-kind AUROC beats the single-layer choice's by more than this
SHIP_MARGIN = 0.01
#: ... or, near the ceiling, by more than this share of the single probe's remaining error (1 - AUROC): at 0.98 a
#: gain of 0.01 is half the error left, while at 0.86 (deception) the absolute 0.01 is the smaller bar
ERROR_SHARE = 1 / 3
#: how much lower the concat probe's worst held-out kind may be than the single layer's and still ship
WORST_MARGIN = 0.01
#: concat also ships, whatever the margin, when it is better on every held-out kind and there are at least this many
MIN_KINDS_ALL_BETTER = 5


@dataclass
class OtherSource:
    """Another source's rows of pool kinds (an out-of-distribution set): per-layer example features, labels, kinds."""

    features: Mapping[int, np.ndarray]
    labels: np.ndarray
    kinds: np.ndarray


def _fit(X: np.ndarray, pool: PoolArrays, train: np.ndarray, C: float | None, seed: int, balance: bool):
    probe = make_probe("logistic", seed=seed, C=C)
    return probe.fit(
        X[train], pool.labels[train], groups=pool.groups[train], sample_weight=_weights(pool, train, balance)
    )


def _weights(pool: PoolArrays, idx: np.ndarray, balance: bool) -> np.ndarray:
    return example_weights(idx, pool.kinds, balance)


#: fit on the given pool rows -> (scores of every pool example, scores of every row of each other source)
ScoreFn = Callable[[np.ndarray], tuple[np.ndarray, list[np.ndarray]]]


def _evaluate(score_fn: ScoreFn, pool: PoolArrays, others: Sequence[OtherSource] = ()) -> dict[str, Any]:
    """Validation AUROC (fit split -> validation split), held-out-kind AUROC per kind and, where another
    source has rows of the held-out kind, that fold's AUROC on them (`heldout_other_source`)."""
    val, _ = score_fn(pool.fit_idx)
    per_kind: dict[str, float] = {}
    other_source: dict[str, float] = {}
    for kind, tr, te in pool.loko():
        scores, other_scores = score_fn(tr)
        value = _safe_auroc(scores[te], pool.labels[te])
        if value is not None:
            per_kind[kind] = value
        for o, s in zip(others, other_scores):
            for rows in ood_kind_rows({"o": o.kinds}, kind).values():
                if (v := _safe_auroc(s[rows], o.labels[rows])) is not None:
                    other_source[kind] = min(v, other_source.get(kind, v))
    return {
        "val_auroc": _safe_auroc(val[pool.val_idx], pool.labels[pool.val_idx]),
        "heldout_kind_auroc": float(np.mean(list(per_kind.values()))) if per_kind else None,
        "heldout_per_kind": per_kind,
        "heldout_other_source": other_source,
    }


def _concat(features: Mapping[int, np.ndarray], layers: Sequence[int]) -> np.ndarray:
    return np.concatenate([features[layer] for layer in layers], axis=1)


def evaluate_concat(
    features: Mapping[int, np.ndarray],
    pool: PoolArrays,
    layers: Sequence[int],
    C: float | None,
    seed: int = 0,
    balance_kinds: bool = True,
    others: Sequence[OtherSource] = (),
) -> dict[str, Any]:
    """The concatenated probe over `layers`, measured like a sweep row."""
    X = _concat(features, layers)
    Xo = [_concat(o.features, layers) for o in others]

    def score(tr: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        probe = _fit(X, pool, tr, C, seed, balance_kinds)
        return probe.decision_function(X), [probe.decision_function(x) for x in Xo]

    return _evaluate(score, pool, others)


def multi_layer_comparison(
    features: Mapping[int, np.ndarray],
    pool: PoolArrays,
    layers: Sequence[int],
    C: float | None,
    seed: int = 0,
    balance_kinds: bool = True,
    others: Sequence[OtherSource] = (),
    concat: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Concatenated and ensembled probes over `layers` ({layer: [n_examples, d] example features});
    `concat`: the concatenated probe's measurement when the caller already has it."""
    layers = list(layers)
    out: dict[str, Any] = {"layers": layers, "C": C}
    out["concat"] = concat or evaluate_concat(features, pool, layers, C, seed, balance_kinds, others)

    def ensemble(tr: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        parts, other_parts = [], []
        for layer in layers:
            probe = _fit(features[layer], pool, tr, C, seed, balance_kinds)
            s = probe.decision_function(features[layer])
            spread = np.std(s[tr]) or 1.0
            parts.append(s / spread)
            other_parts.append([probe.decision_function(o.features[layer]) / spread for o in others])
        return np.mean(parts, axis=0), [np.mean([p[i] for p in other_parts], axis=0) for i in range(len(others))]

    out["ensemble"] = _evaluate(ensemble, pool, others)
    return out


def _checked(result: Mapping[str, Any]) -> dict[str, float]:
    return checked_per_kind(dict(result.get("heldout_per_kind") or {}), dict(result.get("heldout_other_source") or {}))


def _mean_worst(result: Mapping[str, Any]) -> tuple[float, float]:
    checked = _checked(result)
    return (float(np.mean(list(checked.values()))), min(checked.values())) if checked else (-1.0, -1.0)


def concat_aggregation(selection: str) -> str:
    """How a concat probe on `selection` is read: the prompt row for prompt_last, else the mean of the token scores."""
    return "last" if selection == "prompt_last" else "mean"


def concat_candidate(row: SweepRow, selection: str) -> bool:
    """Whether `row` is a single-layer version of the concat probe on `selection`: per-example logistic, read as
    the concat is (`concat_aggregation`). The forward search's candidates."""
    return (
        row.method == "logistic"
        and not row.per_token
        and row.token_selection == selection
        and row.aggregation == concat_aggregation(selection)
    )


def forward_layers(
    measure: Callable[[list[int]], dict[str, Any]], start: SweepRow, candidates: Sequence[int], k: int
) -> tuple[list[int], dict[str, Any] | None, list[dict[str, Any]]]:
    """Greedy forward search from `start`'s layer: add the layer whose concat (`measure(layers)`) has the best
    held-out mean, as long as that beats the current set and costs the worst kind at most `WORST_MARGIN`.
    Returns (layers, the last concat measurement or None when no layer was added, the search trail)."""
    chosen = [start.layer]
    current = {"heldout_per_kind": start.heldout_per_kind, "heldout_other_source": start.heldout_other_source}
    mean, worst = _mean_worst(current)
    found: dict[str, Any] | None = None
    trail: list[dict[str, Any]] = []
    while len(chosen) < k:
        best: tuple[int, dict[str, Any], float, float] | None = None
        for layer in candidates:
            if layer in chosen:
                continue
            result = measure(sorted([*chosen, layer]))
            m, w = _mean_worst(result)
            trail.append({"layers": sorted([*chosen, layer]), "mean": m, "worst": w})
            if w >= worst - WORST_MARGIN and (best is None or m > best[2]):
                best = (layer, result, m, w)
        if best is None or best[2] <= mean:
            break
        chosen.append(best[0])
        found, mean, worst = best[1], best[2], best[3]
    return sorted(chosen), found, trail


def ship_concat(multi: Mapping[str, Any] | None, chosen: SweepRow, margin: float | None = None) -> bool:
    """True when the concatenated probe beats the single-layer choice on held-out kinds, either
    - by more than `margin` on the mean (default: `SHIP_MARGIN`, or `ERROR_SHARE` of the single probe's
      remaining error 1 - AUROC where that is smaller), without being worse by more than
      `WORST_MARGIN` on its worst kind (the worst-first rule of the sweep: a mean gain that costs the
      hardest kind does not ship), or
    - on every held-out kind, with at least `MIN_KINDS_ALL_BETTER` of them: near the ceiling (refusal's
      held-out kinds sit at 0.97-0.999) an absolute margin of 0.01 is most of the remaining error, and
      a gain on each of several independent kinds is the stronger evidence (a sign test on 8 kinds: p = 0.004).

    This is the held-out-kind half of the decision. Where the single-layer probe was chosen by held-out source
    (a contrast probe, say, chosen for a transfer that held-out kinds do not measure), `choose_layers` also
    asks the held-out-source rule (`multilayer_sources.concat_on_sources`)."""
    if not multi or chosen.heldout_kind_auroc is None:
        return False
    single = chosen.selection_score("heldout_kind")
    margin = min(SHIP_MARGIN, ERROR_SHARE * (1.0 - single)) if margin is None else margin
    concat = multi.get("concat") or {}
    if concat.get("heldout_kind_auroc") is None:
        return False
    # per kind as selection reads it: the lower of the pool's and another source's AUROC of the kind
    per_kind, chosen_per_kind = _checked(concat), chosen.checked_per_kind
    if _better_on_every_kind(per_kind, chosen_per_kind):
        return True
    mean = (
        float(np.mean(list(per_kind.values()))) if concat.get("heldout_other_source") else concat["heldout_kind_auroc"]
    )
    if mean <= single + margin:
        return False
    return not (per_kind and chosen_per_kind and min(per_kind.values()) < min(chosen_per_kind.values()) - WORST_MARGIN)


def _better_on_every_kind(per_kind: Mapping[str, float], chosen_per_kind: Mapping[str, float]) -> bool:
    kinds = set(per_kind) & set(chosen_per_kind)
    return (
        len(kinds) >= MIN_KINDS_ALL_BETTER
        and kinds == set(chosen_per_kind)
        and all(per_kind[k] > chosen_per_kind[k] for k in kinds)
    )


def concat_row(multi: Mapping[str, Any], chosen: SweepRow) -> SweepRow:
    """The sweep row the concat probe is fitted from: per-example logistic on the comparison's token selection,
    read as measured (mean of the token scores; the prompt row for prompt_last), on its first layer's name."""
    selection = multi.get("token_selection", chosen.token_selection)
    concat = multi["concat"]
    return replace(
        chosen,
        token_selection=selection,
        layer=int(multi["layers"][0]),
        method="logistic",
        per_token=False,
        aggregation=concat_aggregation(selection),
        val_auroc=concat.get("val_auroc"),
        heldout_kind_auroc=concat.get("heldout_kind_auroc"),
        heldout_per_kind=dict(concat.get("heldout_per_kind") or {}),
        heldout_other_source=dict(concat.get("heldout_other_source") or {}),
        ood_auroc={},
        C=multi.get("C"),
        temperature=None,
    )


def concat_layer_data(parts: Sequence[LayerData]) -> LayerData:
    """Several layers' rows of the same examples side by side ([.., L * d], in `parts` order): what a multi-layer
    bundle's weight [L * d] reads, so every single-layer routine (fit, score_all, Platt) applies unchanged."""
    first = parts[0]
    for other in parts[1:]:
        if not np.array_equal(other.offsets, first.offsets):
            raise ValueError(f"layers {first.layer} and {other.layer} hold different token rows; cannot concatenate")
    rest = None if any(p.rest_sum is None for p in parts) else np.concatenate([p.rest_sum for p in parts], axis=1)
    answer = None
    if all(p.answer_rows is not None for p in parts):  # the same option rows of every layer, side by side
        answer = np.concatenate([p.answer_rows for p in parts], axis=1)
    return LayerData(
        first.layer,
        np.concatenate([p.rows for p in parts], axis=1),
        first.offsets,
        np.concatenate([p.last for p in parts], axis=1),
        rest,
        first.n_rest,
        answer,
        first.n_answer if answer is not None else None,
    )


@dataclass
class MultiLayerActivations:
    """Stage 2's `Activations` as a multi-layer probe sees them: `layer(layers[0])` gives every layer's rows
    side by side (pool, each OOD set, control); any other layer passes through. Memory: the pool's rows of
    every probe layer at once (L times one layer's), for stages 5 and 6 only."""

    acts: Any  # training.stage_activations.Activations
    probe_layers: list[int]
    _joined: tuple | None = field(default=None, repr=False)

    def __getattr__(self, name: str) -> Any:  # pool, ood, control, layers (swept): the wrapped stage's
        if name.startswith("_") or name in ("acts", "probe_layers"):
            raise AttributeError(name)
        return getattr(self.acts, name)

    def layer(self, layer: int) -> tuple[LayerData, dict[str, tuple[LayerData, np.ndarray]], LayerData]:
        if layer != self.probe_layers[0]:
            return self.acts.layer(layer)
        if self._joined is None:
            loaded = [self.acts.layer(x) for x in self.probe_layers]  # one at a time: Activations keeps one layer
            pool = concat_layer_data([p for p, _, _ in loaded])
            ood = {
                name: (concat_layer_data([o[name][0] for _, o, _ in loaded]), labels)
                for name, (_, labels) in loaded[0][1].items()
            }
            self._joined = (pool, ood, concat_layer_data([c for _, _, c in loaded]))
        return self._joined


def concat_decision(
    multi: Mapping[str, Any] | None,
    chosen: SweepRow,
    on_sources: Callable[[Mapping[str, Any], SweepRow], Any] | None = None,
) -> tuple[bool, Any]:
    """(whether the concat ships, the held-out-source check or None): `ship_concat`, then, where it holds and a
    source choice was made, the check's verdict. One place for the rule `choose_layers` applies and
    `probewatch bench selection` replays."""
    if not ship_concat(multi, chosen):
        return False, None
    check = on_sources(multi, chosen) if (on_sources is not None and multi) else None
    return (True if check is None else bool(check.holds)), check


def choose_layers(
    sweep: Any, acts: Any, on_sources: Callable[[Mapping[str, Any], SweepRow], Any] | None = None
) -> tuple[Any, list[int] | None]:
    """Stage 4's multi-layer decision: (activations for stages 5-6, the layers of a multi-layer probe or None).

    Where `ship_concat` holds, and `on_sources` (the concat on the held-out-source folds that chose the single
    probe: a `multilayer_sources.SourceCheck`, or None where no source choice was made) does not object,
    `sweep.chosen` becomes the concat row and `sweep.multi_layer["shipped"]` True; otherwise both are left as
    they were (and "shipped" False when a comparison was made). The source check is kept in
    `multi_layer["heldout_source"]`."""
    multi = sweep.multi_layer
    ships, check = concat_decision(multi, sweep.chosen, on_sources)
    if check is not None:
        multi["heldout_source"] = check.to_json()
    if not ships:
        if multi:
            multi["shipped"] = False
        return acts, None
    multi["shipped"] = True
    multi["single_layer_choice"] = sweep.chosen.to_json()
    sweep.chosen = concat_row(multi, sweep.chosen)
    layers = [int(x) for x in multi["layers"]]
    return MultiLayerActivations(acts, layers), layers
