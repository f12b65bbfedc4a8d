"""The embedded server's routes: the OpenAI-compatible endpoint (`openai`) and the operations routes (`ops`).

    POST /v1/chat/completions   (stream: false -> one JSON; stream: true -> SSE chunks, then [DONE])
    GET  /v1/models
    GET  /metrics               the attach client's Prometheus series (or the app's `metrics_registry`)
    GET  /healthz

Responses carry the probe results in an extra top-level field `probewatch` (for streaming: in the
final chunk, the one with `finish_reason`). Errors never echo internals: an unexpected exception is
logged with a request id and answered 500 with that id only (in a stream, which has already sent
status 200: an error event, then [DONE]). The routes find the `ChatService` in `app.state.chat`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Generator
from contextlib import closing
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from probewatch.jsonio import to_jsonable
from probewatch.server.inference.chat import ChatRequest, ChatService, Completion, GenerationTimeout, Ticket
from probewatch.server.inference.limits import RequestRejected

log = logging.getLogger(__name__)

openai = APIRouter(prefix="/v1")
ops = APIRouter()


def chat_service(request: Request) -> ChatService:
    return request.app.state.chat


Service = Annotated[ChatService, Depends(chat_service)]


def internal_error(what: str, exc: BaseException) -> JSONResponse:
    """500 with a request id; the exception itself goes to the log only."""
    incident = f"req-{uuid.uuid4().hex[:12]}"
    log.error("%s failed (%s, %s)", what, incident, type(exc).__name__, exc_info=exc)
    return JSONResponse(
        error_body(f"internal error ({incident}); see the server log", "server_error", "internal_error"),
        status_code=500,
    )


def check_model(service: ChatService, request: ChatRequest) -> None:
    if request.model and request.model not in (service.model_name,):
        raise RequestRejected(
            404,
            f"model {request.model!r} is not served here; available: {service.model_name}",
            "model_not_found",
            param="model",
        )


def usage(c: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(to_jsonable(body))}\n\n"


class ChatCompletion:
    """One /v1/chat/completions answer: its id and creation time, as one JSON or as SSE chunks."""

    def __init__(self, service: ChatService, request: ChatRequest) -> None:
        self.service, self.request = service, request
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def json(self, c: Completion) -> JSONResponse:
        return JSONResponse(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.service.model_name,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason}
                ],
                "usage": usage(c),
                "probewatch": to_jsonable(c.probewatch),
            }
        )

    def chunk(self, delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
        body = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.service.model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return sse({**body, **(extra or {})})

    def events(self, inputs: dict, ticket: Ticket) -> Generator[str, None, None]:
        """The SSE stream: a role chunk, content deltas, the final chunk (usage + probewatch), [DONE].

        Holds `ticket` (the admitted place in the wait queue) until the generation lock is taken, or
        gives it back when the stream ends first (the client went away)."""
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            with closing(self.service.stream(self.request, inputs, ticket)) as chunks:  # closed: lock released
                for delta, final in chunks:
                    if final is None:
                        yield self.chunk({"content": delta})
                    else:
                        extra = {"usage": usage(final), "probewatch": final.probewatch}
                        yield self.chunk({}, final.finish_reason, extra)
        except RequestRejected as exc:  # our own messages: safe to show
            yield sse(exc.body())
        except GenerationTimeout as exc:
            yield sse(error_body(str(exc), "server_error", "generation_timeout"))
        except Exception:  # an SSE stream cannot change its status code any more; never echo internals
            incident = f"req-{uuid.uuid4().hex[:12]}"
            log.exception("streamed completion %s failed (%s)", self.id, incident)
            yield sse(error_body(f"internal error ({incident}); see the server log", "server_error", "internal_error"))
        finally:
            ticket.release()
        yield "data: [DONE]\n\n"


class AdmittedStream(StreamingResponse):
    """The SSE response of an admitted request. However the response ends (also when the client
    leaves mid-stream, where Starlette stops pulling and leaves the generator suspended), it gives
    its place in the wait queue back and closes the generator, so a generation lock it holds is
    released now, not whenever the generator happens to be garbage-collected."""

    def __init__(self, events: Generator[str, None, None], ticket: Ticket) -> None:
        super().__init__(events, media_type="text/event-stream")
        self._events, self._ticket = events, ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._ticket.release()
            await run_in_threadpool(self._close)  # its cleanup joins the generation thread: not on the loop

    def _close(self) -> None:
        try:
            self._events.close()
        except ValueError:  # still running in a threadpool thread: it ends (and cleans up) on its own
            log.debug("stream generator still executing at response end")


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@openai.post("/chat/completions")
async def chat_completions(request: ChatRequest, service: Service):
    check_model(service, request)
    answer = ChatCompletion(service, request)
    try:
        if not request.stream:
            return answer.json(await run_in_threadpool(service.complete, request))
        # 400 / 503 before the stream commits to 200
        inputs = await run_in_threadpool(service.prepare, request)
    except RequestRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - logged in internal_error; never echoed to the client
        return internal_error(f"completion {answer.id}", exc)
    ticket = service.admit()  # 429 now, not in the stream: an admitted stream never meets "busy" later
    return AdmittedStream(answer.events(inputs, ticket), ticket)


@openai.get("/models")
def models(service: Service) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": service.model_name, "object": "model", "created": 0, "owned_by": "probewatch"}],
    }


@ops.get("/healthz")
def healthz(service: Service) -> dict[str, Any]:
    monitor = service.monitor
    return {
        "status": "ok",
        "model": service.model_name,
        "monitoring": bool(monitor is not None and monitor.enabled and monitor.up),
    }


@ops.get("/metrics")
def metrics(request: Request, service: Service) -> PlainTextResponse:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    registry = request.app.state.metrics_registry or (
        service.monitor.metrics.registry if service.monitor is not None else None
    )
    body = generate_latest(registry) if registry is not None else b""
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)
