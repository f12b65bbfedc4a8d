"""Behaviour datasets: builders from the public sources plus our own hand-written pairs.

`build_behaviour_data(behaviour, data_dir)` returns the pool (and out-of-distribution sets) a
behaviour trains on; `build_control` makes the benign control set with the model's own responses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from probewatch.behaviours import BEHAVIOURS
from probewatch.training.datasets.common import (
    LAYOUT,
    BehaviourData,
    DatasetNotFoundError,
    Source,
    resolve_data_dir,
)


def build_behaviour_data(behaviour: str, data_dir: str | Path | None = None, seed: int = 0, **options) -> BehaviourData:
    root = resolve_data_dir(data_dir)
    builder: Callable[..., BehaviourData]  # each behaviour's build takes its own options
    if behaviour == "deception":
        from probewatch.training.datasets.deception import build as builder
    elif behaviour == "refusal":
        from probewatch.training.datasets.refusal import build as builder
    elif behaviour == "alignment_faking":
        from probewatch.training.datasets.alignment_faking import build as builder
    elif behaviour == "eval_awareness":
        from probewatch.training.datasets.eval_awareness import build as builder
    elif behaviour == "monitored_framing":
        from probewatch.training.datasets.monitored_framing import build as builder
    else:
        raise ValueError(f"unknown behaviour {behaviour!r}; known: {', '.join(BEHAVIOURS)}")
    return builder(root, seed=seed, **options)


__all__ = [
    "BEHAVIOURS",
    "LAYOUT",
    "BehaviourData",
    "DatasetNotFoundError",
    "Source",
    "build_behaviour_data",
    "resolve_data_dir",
]
