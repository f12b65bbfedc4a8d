"""The embedded OpenAI-compatible inference server (`probewatch run`): the stand-in production endpoint.

`create_app(service)` assembles it: the OpenAI routes and the operations routes (routes.py) over a
`ChatService` (chat.py), behind the request guard (guard.py: API keys, body cap) with the limits of
`service.limits` (limits.py); refusals answer in OpenAI's error shape. `HTTPServerThread`
(server_thread.py) serves it, or any ASGI app, from a background thread.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from probewatch.server.inference.chat import ChatService
from probewatch.server.inference.guard import RequestGuard
from probewatch.server.inference.limits import RequestRejected
from probewatch.server.inference.routes import openai, ops


async def on_rejected(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestRejected)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def create_app(service: ChatService, metrics_registry=None) -> FastAPI:
    """The FastAPI application around a ChatService (limits and API keys from `service.limits`)."""
    app = FastAPI(title="probewatch embedded inference server", version="1")
    app.state.chat, app.state.metrics_registry = service, metrics_registry
    app.add_exception_handler(RequestRejected, on_rejected)
    app.add_middleware(RequestGuard, limits=service.limits)
    app.include_router(ops)
    app.include_router(openai)
    return app
