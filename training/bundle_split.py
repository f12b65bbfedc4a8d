"""The pool and splits a trained bundle was made with, rebuilt from its report.json (no activations needed).

A grouped split is a pure function of the pool's labels, groups and kinds and the run's seed
(`stage_activations.splits_of`), so the report's `config` rebuilds it exactly, as long as the pool has not
changed since: `same_pool` compares the rebuilt pool with the examples and groups per kind and the test
split's size the report recorded (`compare.pool_signature`). Used where a benchmark must tell the bundle's
test items from the ones it trained on (`training/rethreshold.py`, the evasion benchmark's held-out rows).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probewatch.data.dialogue import Dialogue
from probewatch.training.stage_activations import Splits, splits_of
from probewatch.training.stage_data import PreparedData, prepare_data
from probewatch.training.train_config import TrainConfig

__all__ = ["BundleSplit", "rebuild_split", "report_of"]


@dataclass
class BundleSplit:
    """The run's config, the rebuilt pool (rows in `prepared.data.pool` order), its splits, and whether it is the
    report's pool."""

    config: TrainConfig
    prepared: PreparedData
    splits: Splits
    labels: np.ndarray
    same_pool: bool

    @property
    def pool(self) -> list[Dialogue]:
        return self.prepared.data.pool

    def test_groups(self) -> set[str]:
        """Groups of the test split: items the bundle was neither fitted nor calibrated on."""
        return {str(self.pool[i].group) for i in self.splits.pool.test_idx}


def report_of(bundle_dir: Path) -> dict[str, Any]:
    """The bundle's training report.json (raises FileNotFoundError without one)."""
    from probewatch.training.report import REPORT_FILENAME

    return json.loads((Path(bundle_dir) / REPORT_FILENAME).read_text())


def rebuild_split(report: dict[str, Any], loaded: Any, data_dir: str | Path | None = None) -> BundleSplit:
    """The report's pool and splits on `loaded` (the report's model: raises ValueError for another one)."""
    from probewatch.training.compare import pool_signature
    from probewatch.training.replay import config_from_report, require_model
    from probewatch.training.stage_export import kinds_summary

    require_model(report, loaded)
    config = config_from_report(report, data_dir)
    prepared = prepare_data(config, loaded)
    pool = prepared.data.pool
    labels = np.array([d.label for d in pool], dtype=np.int64)
    splits = splits_of(
        config,
        prepared.data,
        labels,
        np.array([d.group for d in pool], dtype=object),
        np.array([d.kind for d in pool], dtype=object),
        np.array([d.kind for d in prepared.control], dtype=object),
    )
    kinds: dict[str, Any] = (report.get("data") or {}).get("kinds") or {}
    n_test: int | None = (report.get("splits") or {}).get("test")
    now = {k: {"n": v.n, "groups": v.groups} for k, v in kinds_summary(pool).items()}
    same = (
        bool(kinds)
        and n_test is not None
        and pool_signature(kinds, n_test) == pool_signature(now, len(splits.pool.test_idx))
    )
    return BundleSplit(config, prepared, splits, labels, same)
