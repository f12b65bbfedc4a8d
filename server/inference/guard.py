"""The embedded server's request guard (an ASGI middleware, ahead of every route and of a mounted review app).

- With API keys set, every /v1/ path needs `Authorization: Bearer <key>` (401 in OpenAI's error
  shape otherwise), checked before any of the body is read.
- Request bodies are capped at `HTTPLimits.max_request_bytes` (413): a declared Content-Length
  over the cap is refused at once; a POST without one (a chunked upload) is read here, counting
  as it arrives, and handed on whole to the route through the ASGI `receive` channel.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from probewatch.server.inference.limits import HTTPLimits, RequestRejected, too_large, valid_key


class BodyTooLarge(Exception):
    pass


def key_refusal(limits: HTTPLimits, path: str, headers: Headers) -> RequestRejected | None:
    """401 for a /v1/ request without a valid API key (None: allowed, or no keys configured)."""
    if not limits.api_keys or not path.startswith("/v1/"):
        return None
    header = headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() == "bearer" and valid_key(key.strip(), limits.api_keys):
        return None
    why = "Incorrect API key provided" if header else "Missing API key: send Authorization: Bearer <key>"
    return RequestRejected(401, why, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def read_capped(receive: Receive, max_bytes: int) -> list[Message]:
    """The request's body messages, read to the end; BodyTooLarge once they pass `max_bytes`."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":  # the client went away: pass that on
            return messages
        size += len(message.get("body", b""))
        if size > max_bytes:
            raise BodyTooLarge()
        if not message.get("more_body", False):
            return messages


def replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives the messages already read, then whatever else comes (a disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


class RequestGuard:
    """API keys on /v1/ and the request body cap, from `limits`."""

    def __init__(self, app: ASGIApp, limits: HTTPLimits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = key_refusal(self.limits, scope["path"], headers)
        declared = headers.get("content-length")
        if refusal is None and declared is not None and declared.isdigit():
            if int(declared) > self.limits.max_request_bytes:
                refusal = too_large(self.limits)
        elif refusal is None and declared is None and scope["method"] == "POST":
            try:
                receive = replay(await read_capped(receive, self.limits.max_request_bytes), receive)
            except BodyTooLarge:
                refusal = too_large(self.limits)
        if refusal is not None:
            response = JSONResponse(refusal.body(), status_code=refusal.status, headers=refusal.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
