"""From captured row blocks to `ActivationChunk`s on the stream, off the serving thread.

The serving thread (HF `generate()`, a vLLM worker step) only appends to `SendQueue`: bounded for
data (full = drop and count, never wait), unbounded for control messages (Open/Close are never
dropped). The `Sender` thread waits for each block's device->host copy, asks the block which
(generation, position, token) each row is, merges up to `steps_per_message` steps per
(generation, layer) into one chunk (lingering `linger_s`), splits chunks below the sidecar's
message limit and hands them to the link. A stream that stalls makes `SidecarLink.send` give up
after `send_stall_s`: the message is dropped and counted (`stalled`), the sender moves on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from probewatch.proto.codec import encode_tensor
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.client.config import AttachConfig
from probewatch.server.client.link import STOP, SidecarLink, Stalled
from probewatch.server.client.metrics import ClientMetrics
from probewatch.server.client.results import GenerationHandle

log = logging.getLogger(__name__)


class Block:
    """Rows of one layer captured in one model forward; subclassed by each backend.

    `host` holds the gathered rows on the host ([n, d] residuals or [n, k] projections), its copy
    possibly still in flight until `event` (a CUDA event, or None) completes.
    """

    layer: int
    kind: pb.PayloadKind
    host: torch.Tensor
    event: Any

    def handles(self) -> Iterable[GenerationHandle]:
        """Generations with rows in this block (charged a dropped chunk when the block is dropped)."""
        raise NotImplementedError

    def rows(self) -> Iterable[tuple[GenerationHandle, int, int, int]]:
        """(generation, row index in `host`, sequence-local position, token id) for each row to send."""
        raise NotImplementedError


@dataclass
class CloseMarker:
    """Close is built by the sender, which knows how many chunks it dropped."""

    prompt_text: str
    response_text: str
    abort_reason: str = ""  # the capture self-check stopped monitoring (the sidecar ends it `aborted`)
    texts: Callable[[], tuple[str, str]] | None = None  # decoded in the sender (off the serving thread)
    token_texts: Callable[[], tuple[int, list[str]]] | None = None  # (start position, texts): token_texts.py

    def WhichOneof(self, _: str) -> str:
        return "close"


@dataclass
class Control:
    handle: GenerationHandle
    message: pb.MonitorRequest | CloseMarker


@dataclass
class _Pending:
    handle: GenerationHandle
    layer: int
    kind: pb.PayloadKind
    rows: list[torch.Tensor] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


class SendQueue:
    """Capture-side queue: bounded for data (`Block`s), never drops control messages."""

    def __init__(self, max_data: int) -> None:
        self.max_data = max_data
        self._items: deque = deque()
        self._data = 0
        self._cv = threading.Condition()

    def put_data(self, item: Block) -> bool:
        with self._cv:
            if self._data >= self.max_data:
                return False
            self._items.append(item)
            self._data += 1
            self._cv.notify()
            return True

    def put_control(self, item: Any) -> None:
        with self._cv:
            self._items.append(item)
            self._cv.notify()

    def get(self, timeout: float | None = None) -> Any:
        with self._cv:
            if not self._items and not self._cv.wait_for(lambda: bool(self._items), timeout):
                return None
            item = self._items.popleft()
            if isinstance(item, Block):
                self._data -= 1
            return item

    def __len__(self) -> int:
        return len(self._items)


class Sender:
    """The sender thread: drains a `SendQueue` into the link's stream."""

    def __init__(
        self,
        config: AttachConfig,
        queue: SendQueue,
        link: Callable[[], SidecarLink | None],
        metrics: ClientMetrics,
        forget: Callable[[GenerationHandle], None],
    ) -> None:
        self.config = config
        self.queue = queue
        self._link = link
        self.metrics = metrics
        self._forget = forget
        self.thread = threading.Thread(target=self._loop, name="probewatch-sender", daemon=True)

    def start(self) -> Sender:
        self.thread.start()
        return self

    def _loop(self) -> None:
        cfg = self.config
        while True:
            first = self.queue.get()
            if first is STOP:
                return
            batch = [first]
            link = self._link()
            n_layers = max(1, len(link.plan.layers) if link and link.plan else 1)
            target = cfg.steps_per_message * n_layers
            deadline = time.monotonic() + cfg.linger_s
            stop = False
            while len(batch) < target and not isinstance(batch[-1], Control):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                nxt = self.queue.get(remaining)
                if nxt is None:
                    break
                if nxt is STOP:
                    stop = True
                    break
                batch.append(nxt)
            try:
                self._send_batch(batch)
            except Exception:  # never let the sender die: monitoring would stop silently
                log.exception("probewatch: sender failed on a batch")
            if stop:
                return

    def _send_batch(self, batch: list) -> None:
        pending: dict[tuple[str, int], _Pending] = {}
        for item in batch:
            if isinstance(item, Control):
                h = item.handle
                for key in [k for k in pending if k[0] == h.id]:
                    self._flush(pending.pop(key))
                message = item.message
                if isinstance(message, CloseMarker):
                    prompt_text, response_text = message.prompt_text, message.response_text
                    if message.texts is not None:
                        try:
                            prompt_text, response_text = message.texts()
                        except Exception:
                            log.debug("probewatch: could not decode the texts of %s", h.id, exc_info=True)
                    start, pieces = message.token_texts() if message.token_texts is not None else (0, [])
                    message = pb.MonitorRequest(
                        close=pb.Close(
                            generation_id=h.id,
                            prompt_text=prompt_text,
                            response_text=response_text,
                            dropped_chunks=h.dropped,
                            # a self-check failure found by the sender itself ends it aborted too
                            abort_reason=message.abort_reason or (h.capture_error or ""),
                            token_texts=pieces,
                            token_texts_start=start,
                        )
                    )
                sent = not h.rejected and self._send(message, h)
                if not sent and message.WhichOneof("msg") == "open":
                    h.rejected = True  # never opened: none of its chunks may follow
                    why = "its Open could not be sent (sidecar down or stalled)"
                    if h._resolve(False, "unmonitored", why, "sidecar_lost"):
                        self.metrics.unmonitored.labels(reason="sidecar_lost").inc()
                if not sent and message.WhichOneof("msg") == "close":
                    self._forget(h)
                continue
            self._collect(item, pending)
        for acc in pending.values():
            self._flush(acc)

    def _collect(self, block: Block, pending: dict[tuple[str, int], _Pending]) -> None:
        if block.event is not None:
            block.event.synchronize()
        host = block.host
        for h, row, pos, tok in block.rows():
            if h.rejected:
                continue
            key = (h.id, block.layer)
            acc = pending.get(key)
            if acc is None:
                acc = pending[key] = _Pending(h, block.layer, block.kind)
            acc.rows.append(host[row])
            acc.positions.append(pos)
            acc.tokens.append(tok)

    def _flush(self, acc: _Pending) -> None:
        if not acc.rows:
            return
        rows = torch.stack(acc.rows)
        dtype = None if self.config.wire_dtype == "auto" else self.config.wire_dtype
        link = self._link()
        plan = link.plan if link else None
        limit = plan.max_message_bytes if plan else 4 * 1024 * 1024
        per_row = rows.shape[1] * rows.element_size() + 24
        step = max(1, (limit - 1024) // per_row)
        for i in range(0, rows.shape[0], step):
            chunk = pb.ActivationChunk(
                generation_id=acc.handle.id,
                layer=acc.layer,
                kind=acc.kind,
                positions=acc.positions[i : i + step],
                token_ids=acc.tokens[i : i + step],
                payload=encode_tensor(rows[i : i + step], dtype),
            )
            if self._send(pb.MonitorRequest(chunk=chunk), acc.handle):
                self.metrics.chunks_sent.inc()

    def _send(self, message: pb.MonitorRequest, handle: GenerationHandle) -> bool:
        link = self._link()
        reason = "rejected" if handle.rejected else "sidecar_down"
        try:
            if link is not None and link.send(message, handle.session):
                return True
        except Stalled as exc:
            reason = "stalled"
            log.debug("probewatch: %s", exc)
        if message.WhichOneof("msg") == "chunk":
            self.metrics.dropped_chunks.labels(reason=reason).inc()
            handle.dropped += 1
        return False
