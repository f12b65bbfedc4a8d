"""Stage 4 of `probewatch train`: the configuration sweep, the choice, the multi-layer comparison."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from probewatch.probes import Aggregation
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

    def sweep(layer: int, selection: str, methods: Sequence[str], per_token: bool, grid=Cs) -> list[SweepRow]:
        ld, ood, control_ld = acts.layer(layer)
        if config.multi_layer and selection != "prompt_last":
            features[(selection, layer)] = ld.example_matrix(selection)
        elif config.multi_layer:
            features[(selection, layer)] = ld.last
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
    if not rows and "attention" in config.methods:  # --method attention alone: the attention probe on every layer
        rows = [_attention_row(config, acts, splits, layer) for layer in layers]
    chosen = best_row(rows, basis)
    if config.per_token is None and chosen.token_selection == "response":
        grid = [chosen.C] if (Cs and chosen.method == "logistic") else None
        extra = sweep(chosen.layer, "response", [chosen.method], True, grid)
        rows += extra
        chosen = best_row([chosen, *extra], basis)
    response = [r for r in rows if r.token_selection == "response" and r.method != "attention"]
    if "attention" in config.methods and response:  # on the best response layer (one torch fit per fold)
        attention = _attention_row(config, acts, splits, best_row(response, basis).layer)
        rows.append(attention)
        chosen = best_row([chosen, attention], basis)  # chosen only where it wins on the same basis
    multi = None
    if config.multi_layer > 1 and basis == "heldout_kind" and len(layers) > 1:
        multi = _multi_layer(config, rows, chosen, features, pool)
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


def _attention_row(config: TrainConfig, acts: Activations, splits: Splits, layer: int) -> SweepRow:
    """The attention probe on one layer's response tokens, scored like the sweep (training/attention_sweep.py)."""
    from probewatch.training.attention_sweep import attention_rows

    ld, ood, control_ld = acts.layer(layer)
    control = control_ld.subset(splits.control_cal)
    return attention_rows(ld, ood, splits.pool, config.seed, config.balance_kinds, control, config.fpr)


def _multi_layer(
    config: TrainConfig,
    rows: Sequence[SweepRow],
    chosen: SweepRow,
    features: dict[tuple[str, int], np.ndarray],
    pool: PoolArrays,
) -> dict[str, Any] | None:
    """Concatenated / ensembled logistic probes on the best layers (per-example, chosen token selection)."""
    from probewatch.training.multilayer import multi_layer_comparison

    selection = chosen.token_selection
    agg = "mean" if selection != "prompt_last" else "last"
    single = [
        r
        for r in rows
        if r.method == "logistic" and not r.per_token and r.token_selection == selection and r.aggregation == agg
    ]
    if not single:
        return None
    best_by_layer: dict[int, SweepRow] = {}
    for r in single:
        if r.layer not in best_by_layer or (r.heldout_kind_auroc or 0) > (
            best_by_layer[r.layer].heldout_kind_auroc or 0
        ):
            best_by_layer[r.layer] = r
    ranked = sorted(best_by_layer.values(), key=lambda r: -(r.heldout_kind_auroc or 0))[: config.multi_layer]
    layers = sorted(r.layer for r in ranked)
    if len(layers) < 2 or any((selection, layer) not in features for layer in layers):
        return None
    out = multi_layer_comparison(
        {layer: features[(selection, layer)] for layer in layers},
        pool,
        layers,
        ranked[0].C,
        config.seed,
        config.balance_kinds,
    )
    best = ranked[0]
    out["token_selection"] = selection
    out["best_single"] = {
        "layer": best.layer,
        "val_auroc": best.val_auroc,
        "heldout_kind_auroc": best.heldout_kind_auroc,
        "heldout_per_kind": best.heldout_per_kind,
    }
    return out
