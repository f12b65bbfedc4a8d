"""Score updates on their way back to a stream: consecutive chunks of one generation and layer go as one.

Under load one ScoreUpdate per chunk costs a large share of the ingest rate, so the worker merges
the updates of a drained batch per (generation, layer) and flushes them before any Close or
stream end, so a summary never overtakes its scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probewatch.proto.codec import encode_array
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.sidecar.generations import Generation

__all__ = ["PendingUpdate"]


@dataclass
class PendingUpdate:
    """The ScoreUpdate of one or more consecutive chunks of one generation and layer."""

    gen: Generation
    layer: int
    probe_ids: list[str]
    positions: list[np.ndarray]
    scores: list[np.ndarray]
    aggregates: dict[str, float]

    def merge(self, other: PendingUpdate) -> None:
        if other.probe_ids != self.probe_ids:  # cannot happen for one layer's stack; keep both correct anyway
            self.send()
            self.positions, self.scores, self.probe_ids = other.positions, other.scores, other.probe_ids
        else:
            self.positions += other.positions
            self.scores += other.scores
        self.aggregates = other.aggregates  # running aggregates: the latest values

    def send(self) -> None:
        pos = self.positions[0] if len(self.positions) == 1 else np.concatenate(self.positions)
        scores = self.scores[0] if len(self.scores) == 1 else np.concatenate(self.scores, axis=0)
        self.gen.stream.send(
            pb.MonitorResponse(
                score=pb.ScoreUpdate(
                    generation_id=self.gen.id,
                    layer=self.layer,
                    positions=pos.tolist(),
                    probe_ids=self.probe_ids,
                    scores=encode_array(np.ascontiguousarray(scores, dtype=np.float32)),
                    aggregates=self.aggregates,
                )
            )
        )
        self.positions, self.scores = [], []
