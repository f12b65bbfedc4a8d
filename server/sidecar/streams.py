"""One Monitor stream's state on the gRPC side: its bounded outbox and the generations it opened.

The scoring worker serves every stream, so it never waits on one: responses go into a bounded
`Outbox` (a client that stops reading is cut off instead of growing memory) and refusals go
through `StreamState.refuse`, which counts them and answers with an in-stream `Error` carrying
the gRPC status (server/sidecar/status.py) — the engine itself knows no gRPC.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from probewatch.proto.codec import CodecError
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.sidecar.errors import Refused
from probewatch.server.sidecar.status import grpc_status

if TYPE_CHECKING:
    from probewatch.server.sidecar.generations import Generation
    from probewatch.server.sidecar.metrics import SidecarMetrics

__all__ = ["DEFAULT_OUTBOX_SIZE", "END", "Outbox", "StreamState"]

END = object()  # what Outbox.get returns once the outbox is closed and drained
DEFAULT_OUTBOX_SIZE = 4096


class Outbox:
    """Responses waiting for a stream's sender; bounded, so a client that stops reading costs no memory.

    `put` never blocks (the scoring worker serves every stream and must not wait on one): past
    `capacity` it refuses and the caller ends the stream. `get` returns a message, None on timeout,
    or `END` once closed and drained.
    """

    def __init__(self, capacity: int = DEFAULT_OUTBOX_SIZE) -> None:
        self.capacity = capacity
        self._items: deque = deque()
        self._cv = threading.Condition()
        self._closed = False

    def put(self, msg: object) -> bool:
        with self._cv:
            if self._closed:
                return True  # the stream is over: nothing to deliver, nothing to complain about
            if len(self._items) >= self.capacity:
                return False
            self._items.append(msg)
            self._cv.notify()
            return True

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def get(self, timeout: float | None = None) -> object:
        with self._cv:
            if not self._items and not self._closed:
                self._cv.wait(timeout)
            if self._items:
                return self._items.popleft()
            return END if self._closed else None

    def __len__(self) -> int:
        return len(self._items)


class StreamState:
    """One Monitor stream: its outbound queue and the generations it opened."""

    def __init__(
        self, peer: str = "", outbox_size: int = DEFAULT_OUTBOX_SIZE, metrics: SidecarMetrics | None = None
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.peer = peer
        self.outbox = Outbox(outbox_size)
        self.metrics = metrics
        self.generations: dict[str, Generation] = {}
        self.alive = True
        self.last_activity = time.monotonic()  # last message received (the idle timeout counts from it)
        self.token: str | None = None  # the bearer token it was admitted with (None: no token file)
        # (status, message) the stream will end with once its generations are finalised; None: open
        self.end_status: tuple[grpc.StatusCode, str] | None = None
        # called (once) when the outbox overflows: the servicer counts it and cancels the RPC
        self.on_overflow: Callable[[], None] = lambda: None
        self._overflowed = False

    def send(self, msg: pb.MonitorResponse) -> None:
        if not self.alive:
            return
        if not self.outbox.put(msg) and not self._overflowed:
            self._overflowed = True
            self.alive = False
            self.on_overflow()

    def finish(self) -> None:
        self.outbox.close()

    def refuse(self, exc: Refused | CodecError, generation_id: str = "", layer: int = -1, count: bool = True) -> None:
        """Answer a refusal on the stream, which goes on; counted in `probewatch_rejected_total{code}`
        unless `count` is False (a chunk dropped for a full queue is counted as dropped instead)."""
        code = grpc_status(exc)
        if count and self.metrics is not None:
            self.metrics.rejected.labels(code=code.name).inc()
        self.send(
            pb.MonitorResponse(
                error=pb.Error(
                    generation_id=generation_id,
                    code=code.value[0],
                    code_name=code.name,
                    message=exc.message,
                    layer=layer,
                )
            )
        )
