"""Embedded OpenAI-compatible inference server (`probewatch run`): the stand-in production endpoint.

    POST /v1/chat/completions   (stream: false -> one JSON; stream: true -> SSE chunks, then [DONE])
    GET  /v1/models
    GET  /metrics               the attach client's Prometheus series
    GET  /healthz

Generation goes through the attach client (the model's wrapped `generate`), so every response is
monitored exactly as a production server with the client attached would be. Responses carry the
probe results in an extra top-level field `probewatch` (for streaming: in the final chunk, the
one with `finish_reason`). One generation runs at a time (a lock): this server is a demo and
test endpoint on CPU, not a batching engine.

Prompts are rendered with the same chat template code as offline scoring
(`probewatch.data.chat.render`, tokenised without extra special tokens), so live and offline
scores of the same conversation are the same tokens.

Guard rails (`HTTPLimits`, flags of `probewatch run`): with API keys set, every /v1/ route needs
`Authorization: Bearer <key>` (401 otherwise, OpenAI's error shape); request bodies are capped
(413); prompt + completion must fit the model's context (400 `context_length_exceeded`) and
`max_tokens` a ceiling (400); at most `max_waiting` requests queue for the one-at-a-time
generation lock (429 beyond, with Retry-After). Errors never echo internals: an unexpected
exception is logged with a request id and answered 500 with that id only.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, Field

from probewatch.data.chat import render
from probewatch.jsonio import to_jsonable
from probewatch.stop_tokens import stop_token_ids

log = logging.getLogger(__name__)


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)  # None / 0: greedy (deterministic demo)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stream: bool = False
    user: str | None = None
    metadata: dict[str, str] | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    probewatch: dict[str, Any]


class GenerationTimeout(RuntimeError):
    """A streamed generation produced no token within the service's token timeout."""


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


@dataclass
class HTTPLimits:
    """What one client may ask of the embedded server (each a `probewatch run` flag)."""

    api_keys: tuple[str, ...] = ()  # empty: no key needed
    max_request_bytes: int = 1 << 20
    max_context_tokens: int | None = None  # None: the model's max_position_embeddings
    max_completion_tokens: int = 1024
    max_waiting: int = 16  # requests queued for the generation lock


def valid_key(presented: str | None, keys: tuple[str, ...]) -> bool:
    import hmac

    if not presented:
        return False
    ok = False
    for key in keys:  # constant time in which key matched
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok


class ChatService:
    """Model + tokenizer + attach monitor behind one lock."""

    def __init__(
        self,
        model,
        tokenizer,
        monitor,
        model_name: str,
        default_max_tokens: int = 128,
        result_timeout_s: float = 10.0,
        token_timeout_s: float = 120.0,
        limits: HTTPLimits | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.monitor = monitor
        self.model_name = model_name
        self.default_max_tokens = default_max_tokens
        self.result_timeout_s = result_timeout_s  # wait for the sidecar's summary of a generation
        self.token_timeout_s = token_timeout_s  # a streamed generation may go this long without a token
        self.limits = limits or HTTPLimits()
        context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.max_context_tokens = self.limits.max_context_tokens or (int(context) if context else 4096)
        self._lock = threading.Lock()
        self._waiting = 0
        self._waiting_lock = threading.Lock()

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """The generation lock, or 429 when `max_waiting` requests already wait for it."""
        with self._waiting_lock:
            if self._waiting >= self.limits.max_waiting:
                raise RequestRejected(
                    429,
                    f"{self._waiting} requests are already waiting for this one-at-a-time server; retry shortly",
                    "server_busy",
                    type="server_busy_error",
                    headers={"Retry-After": "1"},
                )
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    def max_new_tokens(self, request: ChatRequest) -> int:
        max_new = request.max_completion_tokens or request.max_tokens or self.default_max_tokens
        if max_new > self.limits.max_completion_tokens:
            raise RequestRejected(
                400,
                f"max_tokens {max_new} is over this server's limit of {self.limits.max_completion_tokens}",
                "max_tokens_too_large",
                param="max_tokens",
            )
        return max_new

    def _inputs(self, request: ChatRequest) -> dict[str, torch.Tensor]:
        text = render(self.tokenizer, [m.model_dump() for m in request.messages], add_generation_prompt=True)
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n_prompt, n_new = int(ids.shape[1]), self.max_new_tokens(request)
        if n_prompt + n_new > self.max_context_tokens:
            raise RequestRejected(
                400,
                f"This model's maximum context length is {self.max_context_tokens} tokens. However, you requested "
                f"{n_prompt + n_new} tokens ({n_prompt} in the messages, {n_new} in the completion).",
                "context_length_exceeded",
                param="messages",
            )
        device = next(self.model.parameters()).device
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}

    def _gen_kwargs(self, request: ChatRequest, generation_id: str) -> dict[str, Any]:
        max_new = self.max_new_tokens(request)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": self.tokenizer.pad_token_id}
        if request.temperature:
            kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p or 1.0)
            if request.seed is not None:
                torch.manual_seed(request.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.monitor is not None and self.monitor.enabled:
            kwargs["generation_ids"] = [generation_id]
            meta = dict(request.metadata or {})
            if request.user:
                meta["user"] = request.user
            kwargs["probewatch_metadata"] = meta
        return kwargs

    def _finish(self, sequences: torch.Tensor, n_prompt: int, generation_id: str, handles: list) -> Completion:
        generated = sequences[0, n_prompt:].tolist()
        stop_ids = stop_token_ids(self.model.generation_config, self.tokenizer)
        stop_at = next((i for i, t in enumerate(generated) if t in stop_ids), None)
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        n_completion = stop_at + 1 if stop_at is not None else len(generated)
        return Completion(
            text,
            "stop" if stop_at is not None else "length",
            n_prompt,
            n_completion,
            self._probewatch(generation_id, handles),
        )

    def _probewatch(self, generation_id: str, handles: list) -> dict[str, Any]:
        if self.monitor is None or not self.monitor.enabled:
            return {
                "generation_id": generation_id,
                "monitored": False,
                "status": "disabled",
                "reason": "monitoring disabled (PROBEWATCH_DISABLE)",
                "scores": {},
                "alerts": [],
            }
        if not handles:
            return {
                "generation_id": generation_id,
                "monitored": False,
                "status": "unmonitored",
                "scores": {},
                "alerts": [],
            }
        return handles[0].result(self.result_timeout_s).to_json()

    def _handles(self) -> list:
        return self.monitor.last_generations if self.monitor is not None and self.monitor.enabled else []

    def complete(self, request: ChatRequest) -> Completion:
        generation_id = f"gen-{uuid.uuid4().hex[:16]}"
        inputs = self._inputs(request)
        with self._turn(), torch.inference_mode():
            out = self.model.generate(**inputs, **self._gen_kwargs(request, generation_id))
            handles = self._handles()
        return self._finish(out, inputs["input_ids"].shape[1], generation_id, handles)

    def check_capacity(self) -> None:
        """429 now, before a streamed response commits to status 200, when the wait queue is full."""
        with self._waiting_lock:
            waiting = self._waiting
        if waiting >= self.limits.max_waiting:
            raise RequestRejected(
                429,
                f"{waiting} requests are already waiting for this one-at-a-time server; retry shortly",
                "server_busy",
                type="server_busy_error",
                headers={"Retry-After": "1"},
            )

    def prepare(self, request: ChatRequest) -> dict[str, torch.Tensor]:
        """The prompt's input tensors, after the context and max_tokens checks (RequestRejected)."""
        return self._inputs(request)

    def stream(
        self, request: ChatRequest, inputs: dict[str, torch.Tensor] | None = None
    ) -> Iterator[tuple[str, Completion | None]]:
        """Yields (text delta, None) while generating, then ("", Completion)."""
        from transformers import TextIteratorStreamer

        generation_id = f"gen-{uuid.uuid4().hex[:16]}"
        inputs = self._inputs(request) if inputs is None else inputs
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.token_timeout_s
        )
        box: dict[str, Any] = {}

        def run() -> None:  # generate in its own thread; the monitor's handles are thread-local there
            try:
                with torch.inference_mode():
                    box["out"] = self.model.generate(
                        **inputs, streamer=streamer, **self._gen_kwargs(request, generation_id)
                    )
                box["handles"] = self._handles()
            except Exception as exc:  # noqa: BLE001 - surfaced to the HTTP client by the caller
                box["error"] = exc
                streamer.end()

        with self._turn():
            worker = threading.Thread(target=run, name="probewatch-http-generate", daemon=True)
            worker.start()
            try:
                for delta in streamer:
                    if delta:
                        yield delta, None
            except queue.Empty:
                raise GenerationTimeout(
                    f"generation {generation_id}: no token within {self.token_timeout_s:g}s"
                ) from None
            finally:  # also when the HTTP client went away: the next request waits for this one
                worker.join(self.token_timeout_s)
                if worker.is_alive():
                    log.error("probewatch: generation %s still running after its stream ended", generation_id)
        if "error" in box:
            raise box["error"]
        yield "", self._finish(box["out"], inputs["input_ids"].shape[1], generation_id, box.get("handles", []))


def create_app(service: ChatService, metrics_registry=None):
    """The FastAPI application around a ChatService (limits and API keys from `service.limits`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    limits = service.limits
    app = FastAPI(title="probewatch embedded inference server", version="1")

    def rejected(exc: RequestRejected) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestRejected)
    async def on_rejected(request: Request, exc: RequestRejected) -> JSONResponse:
        return rejected(exc)

    def internal_error(what: str, exc: BaseException) -> JSONResponse:
        """500 with a request id; the exception itself goes to the log only."""
        incident = f"req-{uuid.uuid4().hex[:12]}"
        log.error("%s failed (%s, %s)", what, incident, type(exc).__name__, exc_info=exc)
        return JSONResponse(
            {"error": {"message": f"internal error ({incident}); see the server log", "type": "server_error"}},
            status_code=500,
        )

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """API key on /v1/, and the request body cap (Content-Length, or counted while it arrives)."""
        if limits.api_keys and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            scheme, _, key = header.partition(" ")
            if scheme.lower() != "bearer" or not valid_key(key.strip(), limits.api_keys):
                why = "Incorrect API key provided" if header else "Missing API key: send Authorization: Bearer <key>"
                return rejected(RequestRejected(401, why, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
        declared = request.headers.get("content-length")
        too_large = RequestRejected(
            413, f"request body over {limits.max_request_bytes} bytes (--max-request-bytes)", "request_too_large"
        )
        if declared is not None and declared.isdigit() and int(declared) > limits.max_request_bytes:
            return rejected(too_large)
        if request.method == "POST" and declared is None:  # chunked upload: read it here, within the cap
            body = b""
            async for part in request.stream():
                body += part
                if len(body) > limits.max_request_bytes:
                    return rejected(too_large)
            request._body = body  # starlette reads the cached body from here
        return await call_next(request)

    def check_model(request: ChatRequest) -> None:
        if request.model and request.model not in (service.model_name,):
            raise RequestRejected(
                404,
                f"model {request.model!r} is not served here; available: {service.model_name}",
                "model_not_found",
                param="model",
            )

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        monitor = service.monitor
        return {
            "status": "ok",
            "model": service.model_name,
            "monitoring": bool(monitor is not None and monitor.enabled and monitor.up),
        }

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": service.model_name, "object": "model", "created": 0, "owned_by": "probewatch"}],
        }

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        registry = metrics_registry or (service.monitor.metrics.registry if service.monitor is not None else None)
        body = generate_latest(registry) if registry is not None else b""
        return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest):
        check_model(request)
        created = int(time.time())
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if not request.stream:
            try:
                c = await run_in_threadpool(service.complete, request)
            except RequestRejected:
                raise
            except Exception as exc:  # noqa: BLE001 - logged in internal_error; never echoed to the client
                return internal_error(f"completion {completion_id}", exc)
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": service.model_name,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": c.text},
                            "finish_reason": c.finish_reason,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": c.prompt_tokens,
                        "completion_tokens": c.completion_tokens,
                        "total_tokens": c.prompt_tokens + c.completion_tokens,
                    },
                    "probewatch": to_jsonable(c.probewatch),
                }
            )

        try:
            inputs = await run_in_threadpool(service.prepare, request)  # 400s before the stream commits to 200
        except RequestRejected:
            raise
        except Exception as exc:  # noqa: BLE001 - logged in internal_error
            return internal_error(f"completion {completion_id}", exc)
        service.check_capacity()

        def events() -> Iterator[str]:
            def chunk(delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
                body = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": service.model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                if extra:
                    body.update(extra)
                return f"data: {json.dumps(to_jsonable(body))}\n\n"

            yield chunk({"role": "assistant", "content": ""})
            try:
                for delta, final in service.stream(request, inputs):
                    if final is None:
                        yield chunk({"content": delta})
                    else:
                        usage = {
                            "prompt_tokens": final.prompt_tokens,
                            "completion_tokens": final.completion_tokens,
                            "total_tokens": final.prompt_tokens + final.completion_tokens,
                        }
                        yield chunk({}, final.finish_reason, {"usage": usage, "probewatch": final.probewatch})
            except (GenerationTimeout, RequestRejected) as exc:  # our own messages: safe to show
                yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'server_error'}})}\n\n"
            except Exception:  # an SSE stream cannot change its status code any more; never echo internals
                incident = f"req-{uuid.uuid4().hex[:12]}"
                log.exception("streamed completion %s failed (%s)", completion_id, incident)
                message = f"internal error ({incident}); see the server log"
                yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class HTTPServerThread:
    """uvicorn in a background thread on a given (or ephemeral) port; `stop()` shuts it down."""

    def __init__(
        self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", proxy_headers: bool = True
    ) -> None:
        import socket

        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        # proxy_headers=False: the peer address stays the TCP peer (the review app decides from it whether
        # an identity header comes from its trusted proxy; X-Forwarded-For must not rewrite it)
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off", proxy_headers=proxy_headers)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, name="probewatch-http", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> HTTPServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError(f"HTTP server did not start on {self.url}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()
