"""Stages 2 and 3 of `probewatch train`: cached activations of every set, and the grouped splits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from probewatch.data.dialogue import Dialogue
from probewatch.training.activation_cache import ActivationSet, ActivationUnion
from probewatch.training.datasets import BehaviourData
from probewatch.training.extract import extract_activations, extract_by_kind
from probewatch.training.features import LayerData
from probewatch.training.sources import source_array
from probewatch.training.splits import check_disjoint, grouped_split
from probewatch.training.stage_data import PreparedData
from probewatch.training.sweep import PoolArrays
from probewatch.training.train_config import TrainConfig, require_behaviour


@dataclass
class Activations:
    """Stage 2: cached activations; `layer(L)` loads one layer of everything (one layer in memory)."""

    pool: ActivationSet | ActivationUnion
    ood: dict[str, ActivationSet]
    control: ActivationSet
    layers: list[int]
    _cache: dict[int, tuple[LayerData, dict[str, tuple[LayerData, np.ndarray]], LayerData]] = field(
        default_factory=dict, repr=False
    )

    @property
    def ood_kinds(self) -> dict[str, np.ndarray]:
        """{ood name: the kind of each of its rows} (a row of a pool kind is that kind from another source)."""
        return {name: a.kinds for name, a in self.ood.items()}

    def layer(self, layer: int) -> tuple[LayerData, dict[str, tuple[LayerData, np.ndarray]], LayerData]:
        """(pool, {ood name: (data, labels)}, control) rows of one layer."""
        if layer not in self._cache:
            self._cache.clear()
            self._cache[layer] = (
                LayerData.load(self.pool, layer),
                {name: (LayerData.load(a, layer), a.labels) for name, a in self.ood.items()},
                LayerData.load(self.control, layer),
            )
        return self._cache[layer]


@dataclass
class Splits:
    """Stage 3: grouped pool splits and the control halves (calibration / held-out), by kind."""

    pool: PoolArrays
    control_cal: np.ndarray
    control_held: np.ndarray
    control_kinds: np.ndarray

    @property
    def hard_negatives(self) -> np.ndarray:
        """Calibration-split negatives of the evaluable kinds: the second operating point's reference."""
        p = self.pool
        idx = p.val_idx[p.labels[p.val_idx] == 0]
        return idx[~np.isin(p.kinds[idx], list(p.train_only))]

    @property
    def calibration_positives(self) -> np.ndarray:
        """Calibration-split positives of the evaluable kinds: the recall a band keeps is measured on them."""
        p = self.pool
        idx = p.val_idx[p.labels[p.val_idx] == 1]
        return idx[~np.isin(p.kinds[idx], list(p.train_only))]


def extract(config: TrainConfig, loaded: Any, prepared: PreparedData, layers: Sequence[int]) -> Activations:
    def one(name: str, dialogues: Sequence[Dialogue]) -> ActivationSet:
        # the cache key is model + data + layers; the name only labels the folder (the control set is shared)
        return extract_activations(
            loaded.model,
            loaded.tokenizer,
            dialogues,
            layers,
            loaded.fingerprint,
            name=name,
            max_tokens=config.max_tokens,
            batch_size=config.batch_size,
            dtype=config.cache_dtype,
            progress=config.progress,
        )

    pool = extract_by_kind(
        loaded.model,
        loaded.tokenizer,
        prepared.data.pool,
        layers,
        loaded.fingerprint,
        name=require_behaviour(config),
        max_tokens=config.max_tokens,
        batch_size=config.batch_size,
        dtype=config.cache_dtype,
        progress=config.progress,
    )
    ood = {name: one(f"{config.behaviour}-ood-{name}", ds) for name, ds in prepared.data.ood.items()}
    return Activations(pool, ood, one("control", prepared.control), list(layers))


# -- 3. splits ----------------------------------------------------------------------------------------------
def splits_of(
    config: TrainConfig,
    data: BehaviourData,
    labels: np.ndarray,
    groups: np.ndarray,
    kinds: np.ndarray,
    control_kinds: np.ndarray,
) -> Splits:
    """Grouped fit / calibration / test splits of the pool rows (training-only kinds all go to fit) and the
    control halves. A pure function of the rows' labels, groups and kinds, so a trained bundle's splits are
    rebuilt without its activations (`training/rethreshold.py`)."""
    from probewatch.training.datasets.control import control_halves

    train_only = tuple(data.train_only_kinds)
    auxiliary = np.isin(kinds, list(train_only))
    rest, test_idx = grouped_split(groups, labels, config.test_size, config.seed, idx=np.flatnonzero(~auxiliary))
    fit_idx, val_idx = grouped_split(groups, labels, config.cal_size, config.seed + 1, idx=rest)
    fit_idx = np.sort(np.concatenate([fit_idx, np.flatnonzero(auxiliary)]))
    check_disjoint(groups, rest, test_idx)
    check_disjoint(groups, fit_idx, val_idx)
    check_disjoint(groups, fit_idx, test_idx)
    cal, held = control_halves(control_kinds.tolist(), config.seed)
    aligned = len(data.pool) == len(labels) and all(d.kind == k for d, k in zip(data.pool, kinds.tolist()))
    sources = source_array(data.pool) if aligned else None  # rows follow data.pool (extract_by_kind)
    pool = PoolArrays(labels, groups, kinds, fit_idx, val_idx, test_idx, train_only, sources)
    return Splits(pool, cal, held, control_kinds)


def make_splits(config: TrainConfig, acts: Activations, data: BehaviourData) -> Splits:
    p = acts.pool
    return splits_of(config, data, p.labels, p.groups, p.kinds, acts.control.kinds)
