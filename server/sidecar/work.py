"""What stream readers hand the scoring worker, in arrival order (one queue, so order is kept), and the
byte budget that bounds what that queue holds.

Why bytes and not only a count: a chunk can be anything from one row to `max_message_bytes`, so a
count bound says nothing about memory (8 streams of 16 MB chunks added 2.2 GB with the queue at 43
of 1,024 slots). Each work item's tensors count against `ByteBudget` from the moment it is queued
until the worker has scored it; an item that does not fit is refused at once (Overloaded), never
waited for, so memory stays under the budget whatever clients send.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from probewatch.server.sidecar.generations import Generation, client_identity
from probewatch.server.sidecar.specs import ProbeSpec
from probewatch.server.sidecar.streams import StreamState

__all__ = ["ByteBudget", "ChunkWork", "CloseWork", "EndWork", "ScoreWork", "SequenceResult", "client_of", "nbytes"]


@dataclass
class ChunkWork:
    generation: Generation
    layer: int
    kind: str  # rows | projections
    positions: np.ndarray  # int64 [n]
    data: np.ndarray  # float32 [n, d] or [n, k]
    received_at: float
    token_ids: np.ndarray | None = None  # int64 [n] when the client sent them

    @property
    def nbytes(self) -> int:
        """What this chunk holds in memory while it waits (its share of the queue's byte budget)."""
        extra = self.token_ids.nbytes if self.token_ids is not None else 0
        return int(self.data.nbytes + self.positions.nbytes + extra)


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
    token_ids: np.ndarray | None = None  # int64 [n] when the request carries them (token selection `answer`)
    done: threading.Event = field(default_factory=threading.Event)
    result: list | None = None
    error: BaseException | None = None

    @property
    def nbytes(self) -> int:
        return int(sum(data.nbytes for _, data in self.payloads.values()))


@dataclass
class SequenceResult:
    """Unary Score output for one probe."""

    spec: ProbeSpec
    positions: np.ndarray
    scores: np.ndarray
    aggregate: float
    member: str = ""  # a family's result: the member whose score is the family's

    @property
    def flagged(self) -> bool:
        return len(self.scores) > 0 and self.aggregate >= self.spec.threshold


def nbytes(item: object) -> int:
    """Bytes a queue item counts against the budget (control items: none)."""
    return item.nbytes if isinstance(item, (ChunkWork, ScoreWork)) else 0


def client_of(item: object) -> str:
    """Whose turn an item is served in (fair_queue.py): the client that opened its generation, the
    stream's client for a stream end; unary Score calls share one key."""
    if isinstance(item, (ChunkWork, CloseWork)):
        return item.generation.client
    if isinstance(item, EndWork):
        return client_identity(item.stream.peer, item.stream.token)
    return "unary"


class ByteBudget:
    """Bytes held by queued and in-scoring work; `take` refuses what would go over `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._lock = threading.Lock()
        self.used = 0
        self.peak = 0  # the most ever held (tests check it never passed capacity)

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.capacity:
                return False
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)
