"""What stream readers hand the scoring worker, in arrival order (one queue, so order is kept)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from probewatch.server.sidecar.generations import Generation
from probewatch.server.sidecar.specs import ProbeSpec
from probewatch.server.sidecar.streams import StreamState

__all__ = ["ChunkWork", "CloseWork", "EndWork", "ScoreWork", "SequenceResult"]


@dataclass
class ChunkWork:
    generation: Generation
    layer: int
    kind: str  # rows | projections
    positions: np.ndarray  # int64 [n]
    data: np.ndarray  # float32 [n, d] or [n, k]
    received_at: float
    token_ids: np.ndarray | None = None  # int64 [n] when the client sent them


@dataclass
class CloseWork:
    generation: Generation
    status: str = "closed"  # closed | aborted


@dataclass
class EndWork:
    stream: StreamState


@dataclass
class ScoreWork:
    """A unary Score request, scored by the worker like everything else."""

    payloads: Mapping[int, tuple[str, np.ndarray]]
    prompt_length: int
    probe_ids: Sequence[str]
    done: threading.Event = field(default_factory=threading.Event)
    result: list | None = None
    error: BaseException | None = None


@dataclass
class SequenceResult:
    """Unary Score output for one probe."""

    spec: ProbeSpec
    positions: np.ndarray
    scores: np.ndarray
    aggregate: float

    @property
    def flagged(self) -> bool:
        return len(self.scores) > 0 and self.aggregate >= self.spec.threshold
