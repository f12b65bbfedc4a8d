"""The embedded OpenAI-compatible inference server (`probewatch run`): the stand-in production endpoint.

`create_app(service)` assembles it: the OpenAI routes and the operations routes (routes.py) over a
`ChatService` (chat.py), behind the request guard (guard.py: API keys, body cap) with the limits of
`service.limits` (limits.py). Every 4xx/5xx answers in OpenAI's error shape (`{"error": {message,
type, param, code}}`): refusals, request validation (400 `invalid_request_error`, as OpenAI and vLLM
answer it, not FastAPI's 422 list), unknown routes and methods, and unexpected exceptions (500 with a
request id only). `HTTPServerThread` (server_thread.py) serves it, or any ASGI app, from a background thread.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from probewatch.server.inference.chat import ChatService
from probewatch.server.inference.guard import RequestGuard
from probewatch.server.inference.limits import RequestRejected
from probewatch.server.inference.routes import error_body, internal_error, openai, ops

_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


async def on_rejected(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestRejected)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
    """400 naming the first invalid field (`param`); the offending input is never echoed."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    where = ".".join(loc)
    message = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    param = loc[0] if loc and not loc[0].isdigit() else None
    return JSONResponse(error_body(message, "invalid_request_error", "invalid_request", param), status_code=400)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404 / 405 (unknown route, wrong method) in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    return JSONResponse(error_body(str(exc.detail), kind, code), status_code=exc.status_code, headers=exc.headers)


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return internal_error(f"{request.method} {request.url.path}", exc)


def create_app(service: ChatService, metrics_registry=None) -> FastAPI:
    """The FastAPI application around a ChatService (limits and API keys from `service.limits`)."""
    app = FastAPI(title="probewatch embedded inference server", version="1")
    app.state.chat, app.state.metrics_registry = service, metrics_registry
    app.add_exception_handler(RequestRejected, on_rejected)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_middleware(RequestGuard, limits=service.limits)
    app.include_router(ops)
    app.include_router(openai)
    return app
