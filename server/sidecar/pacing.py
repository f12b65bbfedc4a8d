"""Per-client byte-rate pacing of what the sidecar reads (`--max-client-mb-per-s`).

Why pace reads instead of refusing: the sidecar's CPU is shared, and its cost is the bytes it
decodes and scores. A tenant streaming multi-MiB chunks as fast as the wire allows takes that CPU
from every other client even while the scoring queue keeps up (issue 20; `probewatch bench soak`).
When a client is over its rate, the reader of its stream waits before taking the next message:
gRPC's HTTP/2 flow control then stops that client's sends at the source, nothing is dropped, no CPU
is spent on it, and its own generations just score later. A token bucket per client (its token, else
its address: `generations.client_identity`) with a burst of `burst_s` seconds of rate.
"""

from __future__ import annotations

import threading
import time

__all__ = ["ClientPacer"]


class ClientPacer:
    """Token buckets of bytes per client; `charge` returns how long the caller should wait (0: none)."""

    def __init__(self, bytes_per_s: float, burst_s: float = 1.0, max_wait_s: float = 5.0) -> None:
        self.rate = float(bytes_per_s)
        self.burst = max(self.rate * burst_s, 1.0)
        self.max_wait_s = max_wait_s
        self._lock = threading.Lock()
        self._buckets: dict[str, list[float]] = {}  # client -> [tokens, last refill (monotonic)]

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def charge(self, client: str, nbytes: int) -> float:
        """Take `nbytes` from the client's bucket (it may go negative: the debt is the wait)."""
        if not self.enabled or nbytes <= 0:
            return 0.0
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(client)
            if bucket is None:
                bucket = self._buckets[client] = [self.burst, now]
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate) - nbytes
            bucket[0], bucket[1] = tokens, now
            if len(self._buckets) > 4096:  # forget full buckets of clients gone quiet (bounded memory)
                for key in [k for k, (t, _) in self._buckets.items() if t >= self.burst and k != client]:
                    del self._buckets[key]
        return 0.0 if tokens >= 0 else min(-tokens / self.rate, self.max_wait_s)
