"""The incident writer: one thread that persists incidents (and hands them to the webhook) off the scoring thread.

Why: writing an incident redacts its prompt, response and metadata, converts up to 8192 kept
token scores per probe and commits to the store; on the scoring thread that cost was paid by
every stream (a 30,000-character response on one alerting generation froze all other streams'
score updates for 11.6 s). Here the scoring thread only snapshots what the incident needs and
queues a job; this thread does the rest and then sends what depended on it (the early alert
with its incident id, the late alerts and the summary), so the stream's contract is unchanged.

Bounded: at most `capacity` jobs wait; beyond, a job is dropped and counted
(probewatch_incident_writes_dropped_total{kind}) and the caller answers without persisting: scoring
never waits on the store. Early-alert jobs run before close jobs, so the row of an early alert is
on disk promptly (a SIGKILL right after the client saw the alert keeps it). Per stream, jobs run
in the order they were queued, and `pending(stream)` lets the engine defer a stream's end until
its queued summaries went out. `stop` runs everything still queued (SIGTERM keeps incidents).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from probewatch.server.sidecar.metrics import SidecarMetrics

__all__ = ["DEFAULT_INCIDENT_QUEUE", "IncidentQueue"]

log = logging.getLogger(__name__)
DEFAULT_INCIDENT_QUEUE = 1024  # jobs waiting (each holds one generation's snapshot until written)

_Job = tuple[Callable[[], None], int]  # (what to run, id of the stream it answers on)


class IncidentQueue:
    """A bounded two-lane job queue (early alerts first) and the one thread that runs it."""

    def __init__(self, metrics: SidecarMetrics, capacity: int = DEFAULT_INCIDENT_QUEUE) -> None:
        self.metrics = metrics
        self.capacity = capacity
        self._urgent: deque[_Job] = deque()
        self._normal: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._pending: dict[int, int] = {}  # id(stream) -> queued or running jobs that answer on it
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.written = 0  # jobs run (tests)
        metrics.incident_queue_depth.set_function(self.depth)

    def depth(self) -> int:
        with self._cv:
            return len(self._urgent) + len(self._normal)

    def pending(self, stream: object) -> int:
        """Jobs queued or running that answer on `stream` (its end must wait for them)."""
        with self._cv:
            return self._pending.get(id(stream), 0)

    def start(self) -> IncidentQueue:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="probewatch-incidents", daemon=True)
            self._thread.start()
        return self

    def submit(
        self,
        job: Callable[[], None],
        stream: object,
        kind: str = "close",
        urgent: bool = False,
        essential: bool = False,
    ) -> bool:
        """Queue `job`; False (counted under `kind`) when full. `essential` jobs (a stream's end, a summary
        that must keep its place) are always taken: they are cheap and at most one per generation."""
        with self._cv:
            if not essential and len(self._urgent) + len(self._normal) >= self.capacity:
                self.metrics.incident_writes_dropped.labels(kind=kind).inc()
                return False
            (self._urgent if urgent else self._normal).append((job, id(stream)))
            self._pending[id(stream)] = self._pending.get(id(stream), 0) + 1
            self._cv.notify()
        if self._thread is None:  # not started (or already stopped): run it here rather than lose it
            self._drain()
        return True

    def stop(self, timeout_s: float = 30.0) -> None:
        """Run every queued job, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("incident writer still busy after %gs at shutdown; %d job(s) left", timeout_s, self.depth())
            self._thread = None

    def _next(self, block: bool) -> _Job | None:
        with self._cv:
            while block and not (self._urgent or self._normal or self._stopping):
                self._cv.wait()
            if self._urgent:
                return self._urgent.popleft()
            if self._normal:
                return self._normal.popleft()
            return None

    def _run(self) -> None:
        while True:
            item = self._next(block=True)
            if item is None:  # stopping and nothing left
                return
            self._execute(item)

    def _drain(self) -> None:
        while (item := self._next(block=False)) is not None:
            self._execute(item)

    def _execute(self, item: _Job) -> None:
        job, key = item
        try:
            job()
        except Exception:  # a bug in one write must not end the thread: every later incident depends on it
            log.exception("incident writer job failed")
            self.metrics.internal_errors.labels(component="incidents").inc()
        finally:
            with self._cv:
                left = self._pending.get(key, 1) - 1
                if left > 0:
                    self._pending[key] = left
                else:
                    self._pending.pop(key, None)
                self.written += 1
