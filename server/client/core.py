"""`ClientCore`: the link, the capture queue, the sender thread and the generation registry wired
together, for any capture backend.

A backend calls `open()` when a generation starts (Open is queued, never dropped), `enqueue()` for
each captured `Block` (never waits: a full queue drops and counts), and `close()` when it ends
(Close carries the dropped-chunk count and, after a failed capture self-check, the abort reason).
Responses from the sidecar land on the `GenerationHandle`s.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.client.bounds import bound_generation_id, bound_metadata
from probewatch.server.client.config import AttachConfig
from probewatch.server.client.link import STOP, SidecarLink
from probewatch.server.client.metrics import ClientMetrics
from probewatch.server.client.plan import Plan
from probewatch.server.client.results import GenerationHandle
from probewatch.server.client.sender import Block, CloseMarker, Control, Sender, SendQueue

log = logging.getLogger(__name__)


class ClientCore:
    """Connection + queue + sender + handles; started at construction, `stop()` ends it."""

    def __init__(
        self, config: AttachConfig, fingerprint: str, device: torch.device, metrics: ClientMetrics | None = None
    ) -> None:
        self.config = config
        self.fingerprint = fingerprint
        self.device = device
        self.metrics = metrics or ClientMetrics()
        self._handles: dict[str, GenerationHandle] = {}
        self._handles_lock = threading.Lock()
        self._plans: dict[tuple[int, str], Plan] = {}
        self.queue = SendQueue(config.queue_size)
        self.link: SidecarLink = SidecarLink(
            config, fingerprint, device, self.metrics, self._on_response, self._on_down
        ).start()
        self.sender = Sender(config, self.queue, lambda: self.link, self.metrics, self.forget).start()

    # -- state -------------------------------------------------------------------------------------
    @property
    def up(self) -> bool:
        return self.link.up

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self.link.wait_up(timeout)

    def current_plan(self, mode: str | None = None) -> tuple[Plan | None, int]:
        """The plan of the live session for `mode` (cached per session), or (None, -1) when down."""
        link = self.link
        if not link.up or link.listing is None:
            return None, -1
        session, mode = link.session, mode or self.config.mode
        cached = self._plans.get((session, mode))
        if cached is None:
            cached = Plan.from_listing(link.listing, mode, self.device)
            self._plans = {(session, mode): cached, **{k: v for k, v in self._plans.items() if k[0] == session}}
        return cached, session

    # -- generations ---------------------------------------------------------------------------------
    def open(self, handle: GenerationHandle, session: int, metadata: dict[str, str] | None = None) -> None:
        """Queue the generation's Open; an over-long id or oversized metadata (caller input) is bounded first."""
        cfg = self.config
        bounded_id = bound_generation_id(handle.id, cfg.max_generation_id_bytes)
        if bounded_id != handle.id:
            self.metrics.bounded_inputs.labels(what="generation_id").inc()
            handle.rename(bounded_id)
        metadata, cut = bound_metadata(metadata or {}, cfg.max_metadata_entries, cfg.max_metadata_bytes)
        if cut:
            self.metrics.bounded_inputs.labels(what="metadata").inc()
        handle.session = session
        with self._handles_lock:
            self._handles[handle.id] = handle
        self.queue.put_control(
            Control(
                handle,
                pb.MonitorRequest(
                    open=pb.Open(
                        generation_id=handle.id,
                        model_fingerprint=self.fingerprint,
                        prompt_length=handle.prompt_length,
                        metadata=metadata,
                    )
                ),
            )
        )

    def close(
        self,
        handle: GenerationHandle,
        prompt_text: str,
        response_text: str,
        abort_reason: str = "",
        token_texts: Callable[[], tuple[int, list[str]]] | None = None,
    ) -> None:
        """`token_texts`: decoded by the sender thread (token_texts.texts_from), sent for the heatmap."""
        if abort_reason:
            handle.capture_error = abort_reason
        marker = CloseMarker(prompt_text, response_text, abort_reason, token_texts=token_texts)
        self.queue.put_control(Control(handle, marker))

    def close_lazy(
        self, handle: GenerationHandle, texts, token_texts: Callable[[], tuple[int, list[str]]] | None = None
    ) -> None:
        """Close with texts decoded by the sender thread (`texts() -> (prompt, response)`)."""
        self.queue.put_control(Control(handle, CloseMarker("", "", "", texts, token_texts)))

    def enqueue(self, block: Block) -> bool:
        """Hand a captured block to the sender; False (dropped and counted) when the queue is full."""
        if self.queue.put_data(block):
            return True
        self.metrics.dropped_chunks.labels(reason="queue_full").inc()
        for h in block.handles():
            h.dropped += 1
        return False

    @staticmethod
    def to_host(tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Start the device->host copy of `tensor` (non_blocking into pinned memory on CUDA)."""
        if tensor.device.type == "cuda":
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)  # cached by torch's host allocator
            host.copy_(tensor, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            return host, event
        if tensor.device.type != "cpu":
            return tensor.to("cpu"), None
        return tensor, None

    def stop(self) -> None:
        """Send what is queued, half-close the stream, end the threads."""
        self.queue.put_control(STOP)
        self.sender.thread.join(10)
        self.link.close()
        self.metrics.monitoring_up.set(0)

    # -- link thread ------------------------------------------------------------------------------------
    def _on_response(self, response: pb.MonitorResponse) -> None:
        which = response.WhichOneof("msg")
        if which is None:
            return
        msg = getattr(response, which)
        with self._handles_lock:
            handle = self._handles.get(msg.generation_id)
        if handle is None:
            if which == "error":
                log.warning("probewatch: sidecar error %s: %s", msg.code_name, msg.message)
            return
        if which == "score":
            handle._on_score(msg)
        elif which == "alert":
            handle._on_alert(msg)
        elif which == "summary":
            handle._on_summary(msg)
            self.forget(handle)
        elif which == "error":
            log.warning(
                "probewatch: sidecar rejected a message of generation %s: %s %s", handle.id, msg.code_name, msg.message
            )
            if handle._on_error(msg):  # it refused the Open: the generation runs unmonitored
                self.metrics.unmonitored.labels(reason="rejected").inc()

    def _on_down(self) -> None:
        with self._handles_lock:
            handles, self._handles = list(self._handles.values()), {}
        for h in handles:
            if h._resolve(False, "unmonitored", "sidecar connection lost", "sidecar_lost"):
                self.metrics.unmonitored.labels(reason="sidecar_lost").inc()

    def forget(self, handle: GenerationHandle) -> None:
        with self._handles_lock:
            self._handles.pop(handle.id, None)
        if handle._resolve(False, "unmonitored", "sidecar unreachable", "sidecar_lost"):
            self.metrics.unmonitored.labels(reason="sidecar_lost").inc()
