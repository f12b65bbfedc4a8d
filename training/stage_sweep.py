"""Stage 4 of `probewatch train`: the configuration sweep, the choice, the multi-layer comparison."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from probewatch.probes import Aggregation
from probewatch.probes.manifest import ROW_SELECTIONS
from probewatch.training.estimators import C_METHODS
from probewatch.training.multilayer import OtherSource
from probewatch.training.stage_activations import Activations, Splits
from probewatch.training.stage_data import PreparedData
from probewatch.training.sweep import PoolArrays, SweepRow, best_row, selection_basis, sweep_layer
from probewatch.training.train_config import TrainConfig

log = logging.getLogger("probewatch.training")


@dataclass
class SweepOutcome:
    """Stage 4: every configuration scored, the chosen one, and the multi-layer comparison."""

    rows: list[SweepRow]
    chosen: SweepRow
    basis: str
    multi_layer: dict[str, Any] | None = None


def _aggregation_objs(names: Sequence[str], window: int, alpha: float) -> list[Aggregation]:
    return [Aggregation(method=n, window=window, alpha=alpha) for n in names]


def run_sweep(
    config: TrainConfig, prepared: PreparedData, acts: Activations, splits: Splits, layers: Sequence[int]
) -> SweepOutcome:
    from tqdm.auto import tqdm

    pool = splits.pool
    basis = selection_basis(pool, bool(prepared.data.ood))
    Cs = list(config.heldout_Cs) if (config.heldout_Cs and basis == "heldout_kind") else None
    aggregations = _aggregation_objs(prepared.aggregations, config.window, config.alpha)
    rows: list[SweepRow] = []
    per_token_sweep = bool(config.per_token)
    features: dict[tuple[str, int], np.ndarray] = {}  # per-example matrices for the multi-layer comparison
    ood_kinds = acts.ood_kinds
    shared = {n for n, k in ood_kinds.items() if set(k.tolist()) & set(pool.kinds.tolist())}  # OOD rows of pool kinds
    other_features: dict[tuple[str, int], dict[str, np.ndarray]] = {}

    def sweep(layer: int, selection: str, methods: Sequence[str], per_token: bool, grid=Cs) -> list[SweepRow]:
        ld, ood, control_ld = acts.layer(layer)
        if config.multi_layer:
            features[(selection, layer)] = ld.example_matrix(selection)
            other_features[(selection, layer)] = {n: ood[n][0].example_matrix(selection) for n in shared}
        return sweep_layer(
            ld,
            ood,
            pool,
            selection,
            methods,
            aggregations,
            per_token and selection == "response",
            config.seed,
            config.balance_kinds,
            config.standardize,
            control=control_ld.subset(splits.control_cal),
            fpr=config.fpr,
            Cs=grid,
            ood_kinds=ood_kinds,
        )

    bar = tqdm(
        total=len(prepared.token_selections) * len(layers),
        desc=f"sweep {config.behaviour}",
        unit="layer",
        disable=not config.progress,
    )
    for layer in layers:  # layer-major: each layer is loaded once for every token selection
        for selection in prepared.token_selections:
            rows += sweep(layer, selection, config.methods, per_token_sweep)
            bar.update(1)
    bar.close()
    readable = [s for s in prepared.token_selections if s in ROW_SELECTIONS] or ["response"]
    if not rows and "attention" in config.methods:  # --method attention alone: the attention probe on every layer
        rows = [_attention_row(config, acts, splits, layer, s) for layer in layers for s in readable]
    chosen = best_row(rows, basis)
    if config.per_token is None and chosen.token_selection == "response":
        grid = [chosen.C] if (Cs and chosen.method in C_METHODS) else None
        extra = sweep(chosen.layer, "response", [chosen.method], True, grid)
        rows += extra
        chosen = best_row([chosen, *extra], basis)
    for selection in readable if "attention" in config.methods else []:
        linear = [r for r in rows if r.token_selection == selection and r.method != "attention"]
        if linear:  # on the selection's best linear layer (one torch fit per fold)
            attention = _attention_row(config, acts, splits, best_row(linear, basis).layer, selection)
            rows.append(attention)
            chosen = best_row([chosen, attention], basis)  # chosen only where it wins on the same basis
    multi = None
    if config.multi_layer > 1 and basis == "heldout_kind" and len(layers) > 1:
        others = [
            OtherSource(
                {layer: f[name] for (s, layer), f in other_features.items() if s == chosen.token_selection},
                acts.ood[name].labels,
                ood_kinds[name],
            )
            for name in sorted(shared)
        ]
        multi = _multi_layer(config, rows, chosen, features, pool, others)
    log.info(
        "chosen: layer %d, %s (C=%s), %s, per_token=%s, aggregation %s (%s %.3f, validation %.3f)",
        chosen.layer,
        chosen.method,
        chosen.C,
        chosen.token_selection,
        chosen.per_token,
        chosen.aggregation,
        basis,
        chosen.selection_score(basis),
        chosen.val_auroc or float("nan"),
    )
    return SweepOutcome(rows, chosen, basis, multi)


def _attention_row(config: TrainConfig, acts: Activations, splits: Splits, layer: int, selection: str) -> SweepRow:
    """The attention probe on the tokens `selection` reads of one layer, scored like the sweep
    (training/attention_sweep.py)."""
    from probewatch.training.attention_sweep import attention_rows

    ld, ood, control_ld = acts.layer(layer)
    control = control_ld.subset(splits.control_cal)
    return attention_rows(ld, ood, splits.pool, config.seed, config.balance_kinds, control, config.fpr, selection)


def _multi_layer(
    config: TrainConfig,
    rows: Sequence[SweepRow],
    chosen: SweepRow,
    features: dict[tuple[str, int], np.ndarray],
    pool: PoolArrays,
    others: Sequence[OtherSource] = (),
) -> dict[str, Any] | None:
    """Concatenated / ensembled logistic probes (per-example, chosen token selection) on the layers a forward
    search from the chosen layer adds (`multilayer.forward_layers`, at most `config.multi_layer` layers)."""
    from probewatch.training.multilayer import (
        concat_candidate,
        evaluate_concat,
        forward_layers,
        multi_layer_comparison,
    )

    selection = chosen.token_selection
    single = [r for r in rows if concat_candidate(r, selection) and (selection, r.layer) in features]
    best_by_layer: dict[int, SweepRow] = {}
    for r in single:
        if r.layer not in best_by_layer or r.selection_score("heldout_kind") > best_by_layer[r.layer].selection_score(
            "heldout_kind"
        ):
            best_by_layer[r.layer] = r
    if len(best_by_layer) < 2:
        return None
    start = best_by_layer.get(chosen.layer) or max(
        best_by_layer.values(), key=lambda r: r.selection_score("heldout_kind")
    )
    by_layer = {layer: features[(selection, layer)] for layer in best_by_layer}
    measured: dict[tuple[int, ...], dict[str, Any]] = {}

    def measure(layers: list[int]) -> dict[str, Any]:
        key = tuple(layers)
        if key not in measured:
            measured[key] = evaluate_concat(by_layer, pool, layers, start.C, config.seed, config.balance_kinds, others)
        return measured[key]

    layers, _, trail = forward_layers(measure, start, sorted(best_by_layer), config.multi_layer)
    if len(layers) < 2:  # nothing helped: still report the best pair the search measured
        layers = max(trail, key=lambda t: t["mean"])["layers"]
    out = multi_layer_comparison(
        by_layer, pool, layers, start.C, config.seed, config.balance_kinds, others, concat=measure(layers)
    )
    out["token_selection"] = selection
    out["search"] = {"start": start.layer, "trail": trail}
    out["best_single"] = {
        "layer": start.layer,
        "val_auroc": start.val_auroc,
        "heldout_kind_auroc": start.heldout_kind_auroc,
        "heldout_per_kind": start.heldout_per_kind,
        "heldout_other_source": start.heldout_other_source,
    }
    return out
