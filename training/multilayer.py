"""Multi-layer probes, measured the way single-layer ones are chosen (leave-one-kind-out).

Two constructions from the field, per-example logistic on the chosen token selection:
- `concat`: one probe on the concatenation of the best layers' features (Apollo / GDM report
  small gains from several layers);
- `ensemble`: one probe per layer, each standardised to unit spread on its training examples,
  scores averaged.

`concat` can ship: a bundle may read several layers (manifest `layers`; the token score is
sum_l w_l . h_l + b, which is exactly the concatenated probe; the live sidecar joins the layers per
token, server/sidecar/joins.py). The pipeline ships it only where it beats the single-layer choice
on held-out kinds by more than `SHIP_MARGIN`, or on every one of at least `MIN_KINDS_ALL_BETTER` held-out
kinds (`ship_concat`); otherwise the comparison stays a
measurement and nothing changes. Shipping refits the concat probe through the same final stage as
a single layer: `MultiLayerActivations` hands stage 5 and 6 the layers' rows side by side, so the
Platt fold, operating point, calibration reference, plots and live-path parity check all apply.
`ensemble` stays a measurement (its per-layer rescaling is not one linear probe).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from probewatch.training.estimators import make_probe
from probewatch.training.features import LayerData, example_weights
from probewatch.training.sweep import PoolArrays, SweepRow, _safe_auroc

#: concat ships only when its held-out-kind AUROC beats the single-layer choice's by more than this
SHIP_MARGIN = 0.01
#: how much lower the concat probe's worst held-out kind may be than the single layer's and still ship
WORST_MARGIN = 0.01
#: concat also ships, whatever the margin, when it is better on every held-out kind and there are at least this many
MIN_KINDS_ALL_BETTER = 5


def _fit_score(X: np.ndarray, pool: PoolArrays, train: np.ndarray, C: float | None, seed: int, balance: bool):
    probe = make_probe("logistic", seed=seed, C=C)
    probe.fit(X[train], pool.labels[train], groups=pool.groups[train], sample_weight=_weights(pool, train, balance))
    return probe.decision_function(X)


def _weights(pool: PoolArrays, idx: np.ndarray, balance: bool) -> np.ndarray:
    return example_weights(idx, pool.kinds, balance)


def _evaluate(score_fn, pool: PoolArrays) -> dict[str, Any]:
    """Validation AUROC (fit split -> validation split) and held-out-kind AUROC per kind."""
    val = score_fn(pool.fit_idx)
    per_kind: dict[str, float] = {}
    for kind, tr, te in pool.loko():
        value = _safe_auroc(score_fn(tr)[te], pool.labels[te])
        if value is not None:
            per_kind[kind] = value
    return {
        "val_auroc": _safe_auroc(val[pool.val_idx], pool.labels[pool.val_idx]),
        "heldout_kind_auroc": float(np.mean(list(per_kind.values()))) if per_kind else None,
        "heldout_per_kind": per_kind,
    }


def multi_layer_comparison(
    features: Mapping[int, np.ndarray],
    pool: PoolArrays,
    layers: Sequence[int],
    C: float | None,
    seed: int = 0,
    balance_kinds: bool = True,
) -> dict[str, Any]:
    """Concatenated and ensembled probes over `layers` ({layer: [n_examples, d] example features})."""
    layers = list(layers)
    out: dict[str, Any] = {"layers": layers, "C": C}
    X = np.concatenate([features[layer] for layer in layers], axis=1)
    out["concat"] = _evaluate(lambda tr: _fit_score(X, pool, tr, C, seed, balance_kinds), pool)

    def ensemble(tr: np.ndarray) -> np.ndarray:
        parts = []
        for layer in layers:
            s = _fit_score(features[layer], pool, tr, C, seed, balance_kinds)
            parts.append(s / (np.std(s[tr]) or 1.0))
        return np.mean(parts, axis=0)

    out["ensemble"] = _evaluate(ensemble, pool)
    return out


def ship_concat(multi: Mapping[str, Any] | None, chosen: SweepRow, margin: float | None = None) -> bool:
    """True when the concatenated probe beats the single-layer choice on held-out kinds, either
    - by more than `margin` (default `SHIP_MARGIN`) on the mean, without being worse by more than
      `WORST_MARGIN` on its worst kind (the worst-first rule of the sweep: a mean gain that costs the
      hardest kind does not ship), or
    - on every held-out kind, with at least `MIN_KINDS_ALL_BETTER` of them: near the ceiling (refusal's
      held-out kinds sit at 0.97-0.999) an absolute margin of 0.01 is most of the remaining error, and
      a gain on each of several independent kinds is the stronger evidence (a sign test on 8 kinds: p = 0.004)."""
    if not multi or chosen.heldout_kind_auroc is None:
        return False
    margin = SHIP_MARGIN if margin is None else margin
    concat = multi.get("concat") or {}
    mean = concat.get("heldout_kind_auroc")
    if mean is None:
        return False
    per_kind, chosen_per_kind = concat.get("heldout_per_kind") or {}, chosen.heldout_per_kind or {}
    if _better_on_every_kind(per_kind, chosen_per_kind):
        return True
    if mean <= chosen.heldout_kind_auroc + margin:
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
        aggregation="last" if selection == "prompt_last" else "mean",
        val_auroc=concat.get("val_auroc"),
        heldout_kind_auroc=concat.get("heldout_kind_auroc"),
        heldout_per_kind=dict(concat.get("heldout_per_kind") or {}),
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
    return LayerData(
        first.layer,
        np.concatenate([p.rows for p in parts], axis=1),
        first.offsets,
        np.concatenate([p.last for p in parts], axis=1),
        rest,
        first.n_rest,
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


def choose_layers(sweep: Any, acts: Any) -> tuple[Any, list[int] | None]:
    """Stage 4's multi-layer decision: (activations for stages 5-6, the layers of a multi-layer probe or None).

    Where `ship_concat` holds, `sweep.chosen` becomes the concat row and `sweep.multi_layer["shipped"]` True;
    otherwise both are left as they were (and "shipped" False when a comparison was made)."""
    multi = sweep.multi_layer
    if not ship_concat(multi, sweep.chosen):
        if multi:
            multi["shipped"] = False
        return acts, None
    multi["shipped"] = True
    multi["single_layer_choice"] = sweep.chosen.to_json()
    sweep.chosen = concat_row(multi, sweep.chosen)
    layers = [int(x) for x in multi["layers"]]
    return MultiLayerActivations(acts, layers), layers
