"""The chat service behind the embedded OpenAI endpoint: model + tokenizer + attach monitor behind one lock.

Generation goes through the attach client (the model's wrapped `generate`), so every completion is
monitored exactly as a production server with the client attached would be; each `Completion`
carries the probe results (`probewatch`). One generation runs at a time (a lock; at most
`HTTPLimits.max_waiting` requests wait for it, 429 beyond): a demo and test endpoint on CPU, not a
batching engine.

Prompts are rendered with the same chat template code as offline scoring
(`probewatch.data.chat.render`, tokenised without extra special tokens), so live and offline
scores of the same conversation are the same tokens.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, Field

from probewatch.data.chat import render
from probewatch.server.inference.limits import HTTPLimits, RequestRejected, server_busy
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
                raise server_busy(self._waiting)
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
            raise server_busy(waiting)

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
