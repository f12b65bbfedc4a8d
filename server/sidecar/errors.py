"""Why the sidecar refuses something, in its own words (no transport here).

The engine, the generation registry and the request validation raise these; only the gRPC layer
(server/sidecar/status.py, used by the servicer and the stream state) turns them into status
codes, the way KServe's interceptors map data-plane errors. A refused message leaves no trace in
a generation's state, so the client can send a corrected one.
"""

from __future__ import annotations

__all__ = [
    "AlreadyUsed",
    "GenerationClosed",
    "InvalidInput",
    "Overloaded",
    "Refused",
    "ScoringFailed",
    "ShuttingDown",
    "TimedOut",
    "TooLarge",
    "UnknownGeneration",
    "UnknownProbe",
    "WrongModel",
]


class Refused(Exception):
    """Something a client sent (or asked for) that the sidecar does not take; `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(Refused):
    """Malformed: wrong shape, dtype, width, positions, NaN/Inf, a limit on ids or metadata."""


class TooLarge(Refused):
    """A message over the advertised size limit (split it)."""


class Overloaded(Refused):
    """A capacity limit: the scoring queue (chunks or bytes), open generations per stream, client or in total.

    `reason` names the limit (a metric label: queue_full, queue_bytes, per_stream, per_client, total)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class AlreadyUsed(Refused):
    """A generation id that was used before (ids must be unique)."""


class UnknownGeneration(Refused):
    """A chunk or Close for a generation this stream never opened."""


class UnknownProbe(Refused):
    """A probe id no loaded bundle has."""


class GenerationClosed(Refused):
    """A chunk or Close for a generation that is already closed."""


class WrongModel(Refused):
    """The client's model fingerprint is not the one the probes were trained on."""


class ShuttingDown(Refused):
    """The sidecar is draining: no new generations or streams."""


class TimedOut(Refused):
    """Work that did not finish in time (a generation past its TTL, a unary Score)."""


class ScoringFailed(Refused):
    """A bug on the sidecar's side (logged there); the message never echoes internals."""
