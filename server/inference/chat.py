"""The chat service behind the embedded OpenAI endpoint: model + tokenizer + attach monitor behind one lock.

Generation goes through the attach client (the model's wrapped `generate`), so every completion is
monitored exactly as a production server with the client attached would be; each `Completion`
carries the probe results (`probewatch`). One generation runs at a time (a lock; at most
`HTTPLimits.max_waiting` requests wait for it, 429 beyond, decided by `admit()` before any response
starts): a demo and test endpoint on CPU, not a batching engine.

A generation that cannot be monitored is served unmonitored (`on_unmonitored` 'allow', the default)
or refused with 503 (`--on-unmonitored reject`: before generating when the sidecar is down; at the
end, before the answer leaves, when its Open was refused or its stream lost). `probewatch.reason`
is a stable code (server/client/unmonitored.py); the sidecar's own words stay in the log.

Prompts are rendered with the same chat template code as offline scoring
(`probewatch.data.chat.render`, tokenised without extra special tokens), so live and offline
scores of the same conversation are the same tokens.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, Field

from probewatch.data.chat import render
from probewatch.server.client.unmonitored import UnmonitoredGenerationRefused
from probewatch.server.inference.limits import HTTPLimits, RequestRejected, server_busy, unmonitored_refused
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


class Ticket:
    """A place in the wait queue, reserved by `ChatService.admit()` before a response starts; given
    back when the generation lock is taken (or by `release()` when the request ends without it)."""

    def __init__(self, service: ChatService) -> None:
        self._service, self._held = service, True

    def release(self) -> None:
        service = self._service
        with service._waiting_lock:
            if self._held:
                self._held = False
                service._waiting -= 1


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

    def admit(self) -> Ticket:
        """A reserved place in the wait queue, or 429 now when `max_waiting` requests already wait.

        Reserving (not just checking) is what lets a stream commit to status 200: of many concurrent
        requests, exactly the admitted ones generate, and every other one gets its 429 up front.
        """
        with self._waiting_lock:
            if self._waiting >= self.limits.max_waiting:
                raise server_busy(self._waiting)
            self._waiting += 1
        return Ticket(self)

    @contextmanager
    def _turn(self, ticket: Ticket | None = None) -> Iterator[None]:
        """The generation lock, waited for on `ticket` (admitted now when None: 429 if the queue is full)."""
        ticket = ticket or self.admit()
        try:
            self._lock.acquire()
        finally:
            ticket.release()
        try:
            yield
        finally:
            self._lock.release()

    @property
    def rejects_unmonitored(self) -> bool:
        """`--on-unmonitored reject` on an enabled monitor (PROBEWATCH_DISABLE: the operator's choice wins)."""
        m = self.monitor
        return m is not None and m.enabled and m.config.on_unmonitored == "reject"

    def check_monitoring(self) -> None:
        """503 before generating when unmonitored generations are refused and the sidecar is not connected."""
        if self.rejects_unmonitored and not self.monitor.up:
            self.monitor.metrics.generations.inc()
            self.monitor.metrics.unmonitored.labels(reason="sidecar_down").inc()
            self.monitor.metrics.refused.labels(reason="sidecar_down").inc()
            log.warning("probewatch: refused a request: no connection to the sidecar (on-unmonitored reject)")
            raise unmonitored_refused("sidecar_down")

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
        """The response's `probewatch` field: `reason` is a stable code, never the sidecar's words."""
        if self.monitor is None or not self.monitor.enabled or not handles:
            disabled = self.monitor is None or not self.monitor.enabled
            return {
                "generation_id": generation_id,
                "monitored": False,
                "status": "disabled" if disabled else "unmonitored",
                "reason": "disabled" if disabled else "sidecar_down",
                "scores": {},
                "alerts": [],
            }
        return handles[0].result(self.result_timeout_s).to_json(public=True)

    def _handles(self) -> list:
        return self.monitor.last_generations if self.monitor is not None and self.monitor.enabled else []

    def complete(self, request: ChatRequest) -> Completion:
        generation_id = f"gen-{uuid.uuid4().hex[:16]}"
        inputs = self._inputs(request)
        self.check_monitoring()
        try:
            with self._turn(), torch.inference_mode():
                out = self.model.generate(**inputs, **self._gen_kwargs(request, generation_id))
                handles = self._handles()
        except UnmonitoredGenerationRefused as exc:  # counted and logged (with the details) by the client
            raise unmonitored_refused(exc.reason) from None
        return self._finish(out, inputs["input_ids"].shape[1], generation_id, handles)

    def prepare(self, request: ChatRequest) -> dict[str, torch.Tensor]:
        """The prompt's input tensors, after the context, max_tokens and monitoring checks (RequestRejected)."""
        inputs = self._inputs(request)
        self.check_monitoring()
        return inputs

    def stream(
        self, request: ChatRequest, inputs: dict[str, torch.Tensor] | None = None, ticket: Ticket | None = None
    ) -> Generator[tuple[str, Completion | None], None, None]:
        """Yields (text delta, None) while generating, then ("", Completion); waits on `ticket` (`admit()`)."""
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

        with self._turn(ticket):
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
        if isinstance(box.get("error"), UnmonitoredGenerationRefused):
            raise unmonitored_refused(box["error"].reason)
        if "error" in box:
            raise box["error"]
        yield "", self._finish(box["out"], inputs["input_ids"].shape[1], generation_id, box.get("handles", []))
