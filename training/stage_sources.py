"""Stage 4b of `probewatch train`: the choice by held-out source and the nested, source-held-out estimate.

Runs between the sweep and the final fit, on the cached activations and the sweep's rows
(`training/nested.py` says how). With at least two evaluable sources and `select_by_source`, the
shipped configuration becomes the held-out-source choice (basis `heldout_source`), so the nested
estimate measures the procedure that chose the shipped probe, with the multi-layer step where the run
compared a multi-layer probe (`nested_multilayer.py`). `nested_top_k` 0 skips the stage.
After the final fit, `sources_report` adds the shipped probe's recall and flagged negatives per
source at the shipped threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from probewatch.training.features import LayerData
from probewatch.training.multilayer_sources import SourceCheck, concat_on_sources
from probewatch.training.nested import FoldScorer, LayerFn, NestedSettings, nested_estimate, select_by_source
from probewatch.training.nested_multilayer import multilayer_step
from probewatch.training.report_sources import NestedEstimate, SourceSelection, SourcesReport
from probewatch.training.sources import per_source_at_threshold, source_counts
from probewatch.training.stage_activations import Activations, Splits
from probewatch.training.stage_fit import FittedProbe
from probewatch.training.stage_sweep import SweepOutcome
from probewatch.training.sweep import SweepRow
from probewatch.training.train_config import TrainConfig

log = logging.getLogger("probewatch.training")


@dataclass
class SourceOutcome:
    """Stage 4b: the held-out-source choice (None: the sweep's basis chose) and the nested estimate."""

    selection: SourceSelection | None
    nested: NestedEstimate | None
    n_fits: int = 0


def settings_of(config: TrainConfig) -> NestedSettings:
    return NestedSettings(
        seed=config.seed,
        balance_kinds=config.balance_kinds,
        standardize=config.standardize,
        fpr=config.fpr,
        hard_negative_fpr=config.hard_negative_fpr,
        hard_negatives_per_kind=config.hard_negatives_per_kind,
        window=config.window,
        alpha=config.alpha,
        top_k=config.nested_top_k,
        val_margin=config.selection_margin,
        progress=config.progress,
    )


def pool_and_control(acts: Activations) -> LayerFn:
    """layer -> (pool rows, control rows) of that layer: what the held-out-source fits read."""

    def layer_data(layer: int) -> tuple[LayerData, LayerData]:
        data, _, control = acts.layer(layer)
        return data, control

    return layer_data


def run_sources(config: TrainConfig, acts: Activations, splits: Splits, sweep: SweepOutcome) -> SourceOutcome:
    """Choose by held-out source (replacing `sweep.chosen` / `sweep.basis`) and estimate it nested."""
    pool = splits.pool
    if pool.sources is None or config.nested_top_k <= 0:
        return SourceOutcome(None, None)
    settings = settings_of(config)
    layer_data = pool_and_control(acts)
    scorer = FoldScorer(pool, layer_data, settings)
    heldout_kind = sweep.chosen.heldout_kind_auroc
    selection = None
    if config.select_by_source:
        picked = select_by_source(sweep.rows, pool, layer_data, splits.control_cal, settings, scorer)
        if picked is not None:
            sweep.chosen, selection = picked
            sweep.basis = "heldout_source"
    selected_on = (
        (selection.chosen.mean, "heldout_source")
        if selection is not None
        else (sweep.chosen.selection_score(sweep.basis), sweep.basis)
    )
    nested = nested_estimate(
        sweep.rows,
        pool,
        layer_data,
        splits.control_cal,
        splits.control_held,
        settings,
        selected_on,
        heldout_kind,
        scorer,
    )
    if nested is not None:
        # the shipped probe may join layers (stage 4's multi-layer step): that decision is estimated nested too
        nested.multi_layer = multilayer_step(
            sweep.multi_layer,
            sweep.rows,
            nested,
            pool,
            layer_data,
            splits.control_cal,
            splits.control_held,
            settings,
            max_layers=config.multi_layer,
        )
        log.info(
            "held-out sources: nested AUROC mean %s, worst %s (%s); selected on %s (%s): optimism gap %s",
            nested.mean,
            nested.worst,
            nested.worst_source,
            nested.selected_on,
            nested.selected_on_basis,
            nested.optimism_gap,
        )
    return SourceOutcome(selection, nested, scorer.n_fits)


def concat_check(
    config: TrainConfig, acts: Activations, splits: Splits, outcome: SourceOutcome
) -> Callable[[Mapping[str, Any], SweepRow], SourceCheck | None] | None:
    """`multilayer.choose_layers`' held-out-source half: the concat judged on the folds that chose the single
    probe (None where no held-out-source choice was made). It joins the concat's layers itself, only when the
    kind gate lets it run, so the joined rows do not stay alive through the final fit."""
    if outcome.selection is None or outcome.selection.basis != "heldout_source":
        return None

    def check(multi: Mapping[str, Any], chosen: SweepRow) -> SourceCheck | None:
        return concat_on_sources(
            multi, chosen, splits.pool, pool_and_control(acts), splits.control_cal, settings_of(config)
        )

    return check


def sources_report(splits: Splits, outcome: SourceOutcome, fitted: FittedProbe) -> SourcesReport | None:
    """report.json `sources`: counts, the choice, the nested estimate, the shipped threshold per source
    (None with a single source)."""
    pool = splits.pool
    if pool.sources is None or len(set(pool.sources.tolist())) < 2:
        return None  # one source: the per-source numbers are the overall ones (report.json keeps its layout)
    mapping: dict[str, set[str]] = {}
    for kind, src in zip(pool.kinds.tolist(), pool.sources.tolist()):
        mapping.setdefault(str(kind), set()).add(str(src))
    return SourcesReport(
        mapping={k: ", ".join(sorted(v)) for k, v in mapping.items()},
        counts=source_counts(pool.sources, pool.kinds, pool.labels, pool.train_only),
        selection=outcome.selection,
        nested=outcome.nested,
        at_threshold=per_source_at_threshold(
            fitted.scores, pool.labels, np.asarray(pool.sources), pool.test_idx, fitted.point.value
        ),
    )
