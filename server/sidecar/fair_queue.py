"""The scoring queue: bounded, first-in first-out per client, and fair between clients by bytes.

Why not one FIFO: the worker is shared by every client, and a client's cost is the bytes it sends.
With one FIFO, a tenant that streams multi-MiB chunks as fast as it can puts its chunks ahead of
everyone else's small ones, and every well-behaved stream's scores wait behind them (issue 20:
`probewatch bench soak`'s 8 MiB-chunk tenant). Deficit round robin (Shreedhar and Varghese, 1995)
serves the clients that have work in turn, each up to a quantum of bytes per turn, so a chunk of a
light client waits for at most one quantum of each other client, whatever they queue; when only
one client has work it gets the whole worker (work-conserving).

Order: items of one client come out in the order they went in. A client is what the generation
table calls one (`generations.client_identity`: its token, else its address); every stream and
generation belongs to exactly one, so a generation's chunks, its Close and its stream's end keep
their order. Nothing is ordered across clients, and nothing needs to be.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any

#: bytes a client may be served per turn before the next client's turn (a few small chunks, or a
#: 256 KiB slice of a large one's cost: a large chunk waits for its deficit to grow over turns)
DEFAULT_QUANTUM = 256 << 10

__all__ = ["DEFAULT_QUANTUM", "FairQueue"]


class FairQueue:
    """Bounded in items (`maxsize`, like queue.Queue: `put` waits, then raises queue.Full), served by
    deficit round robin on each item's `cost` (bytes) across `client` keys."""

    def __init__(self, maxsize: int, quantum: int = DEFAULT_QUANTUM) -> None:
        if quantum < 1:
            raise ValueError("quantum must be at least one byte")
        self.maxsize = maxsize
        self.quantum = quantum
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._items: dict[str, deque[tuple[Any, int]]] = {}  # client -> its items in arrival order
        self._round: deque[str] = deque()  # clients with items, the head's turn first
        self._deficit: dict[str, int] = {}  # bytes the client may still be served this turn
        self._size = 0

    def qsize(self) -> int:
        with self._lock:
            return self._size

    def full(self) -> bool:
        with self._lock:
            return 0 < self.maxsize <= self._size

    def put(self, item: Any, client: str, cost: int = 0, timeout: float | None = None) -> None:
        """Append `item` to `client`'s items; waits while full (forever when `timeout` is None)."""
        with self._not_full:
            if self.maxsize > 0:
                deadline = None if timeout is None else time.monotonic() + timeout
                while self._size >= self.maxsize:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise queue.Full
                    self._not_full.wait(left)
            items = self._items.get(client)
            if items is None:
                items = self._items[client] = deque()
            if not items:
                self._round.append(client)
                self._deficit[client] = self.quantum  # its first turn's allowance
            items.append((item, max(0, int(cost))))
            self._size += 1
            self._not_empty.notify()

    def get(self, block: bool = True) -> Any:
        """The next item by deficit round robin; raises queue.Empty when empty and not `block`."""
        with self._not_empty:
            while not self._size:
                if not block:
                    raise queue.Empty
                self._not_empty.wait()
            item = self._next()
            self._size -= 1
            self._not_full.notify()
            return item

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def _next(self) -> Any:
        while True:
            client = self._round[0]
            items = self._items[client]
            item, cost = items[0]
            if cost <= self._deficit[client]:
                items.popleft()
                self._deficit[client] -= cost
                if not items:  # out of the round; an idle client keeps no credit
                    self._round.popleft()
                    del self._deficit[client], self._items[client]
                return item
            self._round.rotate(-1)  # its turn ends; the next turn adds a quantum
            self._deficit[client] += self.quantum
