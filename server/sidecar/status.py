"""The one place sidecar refusals become gRPC status codes (the servicer and the stream state use it).

The code names are a contract twice over: clients branch on them (docs/architecture.md, "Wire")
and `probewatch_rejected_total{code}` is labelled with them (dashboards and alert rules).
"""

from __future__ import annotations

import grpc

from probewatch.proto.codec import CodecError
from probewatch.server.sidecar.errors import (
    AlreadyUsed,
    GenerationClosed,
    InvalidInput,
    Overloaded,
    Refused,
    ScoringFailed,
    ShuttingDown,
    TimedOut,
    TooLarge,
    UnknownGeneration,
    UnknownProbe,
    WrongModel,
)

__all__ = ["grpc_status"]

_STATUS: dict[type[Refused], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    AlreadyUsed: grpc.StatusCode.ALREADY_EXISTS,
    UnknownGeneration: grpc.StatusCode.NOT_FOUND,
    UnknownProbe: grpc.StatusCode.NOT_FOUND,
    GenerationClosed: grpc.StatusCode.FAILED_PRECONDITION,
    WrongModel: grpc.StatusCode.FAILED_PRECONDITION,
    ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    TimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
    ScoringFailed: grpc.StatusCode.INTERNAL,
}


def grpc_status(exc: Refused | CodecError) -> grpc.StatusCode:
    """The status a refusal is answered with (a tensor the codec cannot read is INVALID_ARGUMENT)."""
    if isinstance(exc, CodecError):
        return grpc.StatusCode.INVALID_ARGUMENT
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return grpc.StatusCode.INTERNAL
