"""What one client may ask of the embedded server, and the OpenAI-shaped error it gets otherwise.

`HTTPLimits` holds the `probewatch run` flags (API keys, body cap, context and completion ceilings,
wait queue); `RequestRejected` is a refusal with OpenAI's error body (`{"error": {message, type,
param, code}}`), raised by the chat service and the request guard and answered by the app.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any


@dataclass
class HTTPLimits:
    """What one client may ask of the embedded server (each a `probewatch run` flag)."""

    api_keys: tuple[str, ...] = ()  # empty: no key needed
    max_request_bytes: int = 1 << 20
    max_context_tokens: int | None = None  # None: the model's max_position_embeddings
    max_completion_tokens: int = 1024
    max_waiting: int = 16  # requests queued for the generation lock


class RequestRejected(Exception):
    """A request refused with an OpenAI-style error body (status, type, code, param)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def valid_key(presented: str | None, keys: tuple[str, ...]) -> bool:
    if not presented:
        return False
    ok = False
    for key in keys:  # constant time in which key matched
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok


def server_busy(waiting: int) -> RequestRejected:
    """429: `waiting` requests already queue for the one-at-a-time generation lock."""
    return RequestRejected(
        429,
        f"{waiting} requests are already waiting for this one-at-a-time server; retry shortly",
        "server_busy",
        type="server_busy_error",
        headers={"Retry-After": "1"},
    )


def too_large(limits: HTTPLimits) -> RequestRejected:
    """413: the request body is over `limits.max_request_bytes`."""
    return RequestRejected(
        413, f"request body over {limits.max_request_bytes} bytes (--max-request-bytes)", "request_too_large"
    )


def unmonitored_refused(reason: str) -> RequestRejected:
    """503: the generation cannot be monitored and this server refuses unmonitored ones (`reason`: a code)."""
    return RequestRejected(
        503,
        f"this server refuses generations it cannot monitor (--on-unmonitored reject); reason: {reason}",
        "monitoring_unavailable",
        type="server_error",
        headers={"Retry-After": "5"} if reason in ("sidecar_down", "sidecar_lost") else None,
    )
