"""The load of `probewatch bench soak`: stream workers, each its own gRPC connection, sending
generations with a share of bad input, closed-loop (at most `window` good chunks awaiting scores).

A helper of `probewatch.benchmarks.soak` (no CLI contract of its own).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

FINGERPRINT = "pwfp1:" + "50" * 16
OTHER_FINGERPRINT = "pwfp1:" + "0f" * 16
BAD_KINDS = ("nan", "huge", "width", "duplicate", "unknown", "long_id", "fingerprint", "utf8")


@dataclass
class Totals:
    """What every stream worker adds to (under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: Counter = field(default_factory=Counter)  # good / bad messages sent
    bad_kinds: Counter = field(default_factory=Counter)
    client_errors: Counter = field(default_factory=Counter)  # Error responses by code
    latencies: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # perf_counter at each latency's send, same order
    good_generations: int = 0
    summaries: Counter = field(default_factory=Counter)  # by status
    missing: list[str] = field(default_factory=list)  # good generations closed without a summary
    cut_by_kill: int = 0
    early_alert_incidents: list[int] = field(default_factory=list)
    reconnects: int = 0
    stream_errors: Counter = field(default_factory=Counter)


class Target:
    """Where the sidecar is, the token the well-behaved streams send, and whether it is up (the kill
    cycle flips it)."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.address = address
        self.token = token
        self.generation = 0  # bumped at each kill: streams of an older generation are dead
        self.killed_at: float | None = None


# -- messages (serialized: bad input must reach the server byte for byte) --------------------------------
def chunk_message(gid: str, layer: int, positions: list[int], rows: Any) -> bytes:
    from probewatch.proto.codec import encode_array
    from probewatch.proto.probewatch.v1 import monitor_pb2 as pb

    return pb.MonitorRequest(
        chunk=pb.ActivationChunk(
            generation_id=gid,
            layer=layer,
            kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS,
            positions=positions,
            payload=encode_array(rows),
        )
    ).SerializeToString()


def open_message(gid: str, fingerprint: str = FINGERPRINT, tag: str = "1") -> bytes:
    from probewatch.proto.probewatch.v1 import monitor_pb2 as pb

    return pb.MonitorRequest(
        open=pb.Open(generation_id=gid, model_fingerprint=fingerprint, prompt_length=0, metadata={"soak": tag})
    ).SerializeToString()


def close_message(gid: str) -> bytes:
    from probewatch.proto.probewatch.v1 import monitor_pb2 as pb

    return pb.MonitorRequest(close=pb.Close(generation_id=gid)).SerializeToString()


def bad_message(kind: str, d: int, gid: str, layer: int, next_pos: int, tag: str) -> tuple[str, bytes]:
    """One bad message of `kind` (BAD_KINDS) in generation `gid`: (the kind actually sent, bytes).
    `tag` makes the ids of messages outside the generation unique to the stream."""
    import numpy as np

    if kind == "nan":
        rows = np.zeros((1, d), np.float32)
        rows[0, 3] = np.nan
        return kind, chunk_message(gid, layer, [next_pos], rows)
    if kind == "huge":
        return kind, chunk_message(gid, layer, [next_pos], np.full((1, d), 3e38, np.float32))
    if kind == "duplicate" and next_pos > 0:  # a position this layer already received
        return kind, chunk_message(gid, layer, [next_pos - 1], np.zeros((1, d), np.float32))
    if kind in ("duplicate", "width"):
        return "width", chunk_message(gid, layer, [next_pos], np.zeros((1, d + 1), np.float32))
    if kind == "unknown":
        return kind, chunk_message(f"ghost-{tag}-{next_pos}", layer, [0], np.zeros((1, d), np.float32))
    if kind == "long_id":
        return kind, open_message("L" * 5000)
    if kind == "fingerprint":
        return kind, open_message(f"other-{tag}-{next_pos}", OTHER_FINGERPRINT)
    raw = bytearray(open_message(f"utf8-{tag}-xxxx"))
    raw[raw.index(b"xxxx")] = 0xFF
    return "utf8", bytes(raw)


# -- one connection ---------------------------------------------------------------------------------------
class Session:
    """One Monitor stream: a feeder queue, a reader thread, and what awaits an answer.

    `pending`: (gid, layer, last position) -> send time (None: queued, not yet handed to gRPC); the
    window counts both, so a stream never has more than `window` good chunks queued or in flight.
    `closed`: good generations whose Close was sent -> summary seen."""

    def __init__(self, channel: Any, totals: Totals, token: str | None = None) -> None:
        import queue

        from probewatch.proto.probewatch.v1 import monitor_pb2 as pb

        self.totals = totals
        self.feed: queue.Queue = queue.Queue()
        self.pending: dict[tuple[str, int, int], float | None] = {}
        self.closed: dict[str, bool] = {}
        self.cv = threading.Condition()
        self.broken = threading.Event()
        method = channel.stream_stream(
            "/probewatch.v1.Monitor/Monitor",
            request_serializer=lambda b: b,
            response_deserializer=pb.MonitorResponse.FromString,
        )
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.call = method(self._requests(), metadata=metadata)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _requests(self):
        while True:
            item = self.feed.get()
            if item is None:
                return
            data, key = item
            if key is not None:
                with self.cv:
                    if key in self.pending:
                        self.pending[key] = time.perf_counter()
            yield data

    def _read(self) -> None:
        import grpc

        try:
            for response in self.call:
                self._on_response(response, time.perf_counter())
        except grpc.RpcError:
            pass
        finally:
            self.broken.set()
            with self.cv:
                self.cv.notify_all()

    def _on_response(self, response: Any, now: float) -> None:
        which = response.WhichOneof("msg")
        if which == "score":
            u = response.score
            with self.cv:
                sent = [self.pending.pop((u.generation_id, u.layer, int(p)), None) for p in u.positions]
                self.cv.notify_all()
            stamped = [s for s in sent if s is not None]  # (None: the update came before the send was stamped)
            with self.totals.lock:
                self.totals.latencies.extend(now - s for s in stamped)
                self.totals.sent_at.extend(stamped)
        elif which == "error":
            with self.totals.lock:
                self.totals.client_errors[response.error.code_name] += 1
        elif which == "alert" and response.alert.early and response.alert.incident_id:
            with self.totals.lock:
                self.totals.early_alert_incidents.append(int(response.alert.incident_id))
        elif which == "summary":
            s = response.summary
            with self.cv:
                for key in [k for k in self.pending if k[0] == s.generation_id]:
                    self.pending.pop(key)
                if s.generation_id in self.closed:
                    self.closed[s.generation_id] = True
                self.cv.notify_all()
            with self.totals.lock:
                self.totals.summaries[s.status] += 1

    def send(self, data: bytes, good: bool = True) -> None:
        self.feed.put((data, None))
        with self.totals.lock:
            self.totals.sent["good" if good else "bad"] += 1

    def send_good_chunk(self, key: tuple[str, int, int], data: bytes, window: int) -> None:
        """Closed loop: wait until fewer than `window` good chunks are queued or awaiting scores."""
        with self.cv:
            self.cv.wait_for(lambda: len(self.pending) < window or self.broken.is_set(), timeout=10)
            self.pending[key] = None
        self.feed.put((data, key))
        with self.totals.lock:
            self.totals.sent["good"] += 1

    def close_generation(self, gid: str) -> None:
        self.feed.put((close_message(gid), None))
        with self.cv:
            self.closed[gid] = False
        with self.totals.lock:
            self.totals.sent["good"] += 1
            self.totals.good_generations += 1

    def finish(self, killed: bool) -> None:
        """Wait (bounded) for the summaries of what was closed, end the stream, count what is missing."""
        try:
            with self.cv:
                self.cv.wait_for(lambda: all(self.closed.values()) or self.broken.is_set(), timeout=15)
        finally:
            self.feed.put(None)
            self.reader.join(10)
            self.call.cancel()
        with self.cv, self.totals.lock:
            missing = [g for g, seen in self.closed.items() if not seen]
            if killed:
                self.totals.cut_by_kill += len(missing)
            else:
                self.totals.missing.extend(missing)


class StreamWorker(threading.Thread):
    """One client: sessions until the deadline, reconnecting after each (as a client would)."""

    def __init__(
        self, index: int, target: Target, args: argparse.Namespace, deadline: float, totals: Totals, hot: dict
    ) -> None:
        super().__init__(name=f"soak-stream-{index}", daemon=True)
        import numpy as np

        self.index, self.target, self.args, self.deadline, self.totals = index, target, args, deadline, totals
        self.hot = hot  # layer -> the alerting probe's direction (a row of 5 * it alerts)
        self.rng = np.random.default_rng(index)
        self.n_generations = 0

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            try:
                self._session(self.target.generation)
            except Exception as exc:  # noqa: BLE001 - counted; the stream reconnects like a client would
                with self.totals.lock:
                    self.totals.stream_errors[type(exc).__name__] += 1
            if time.monotonic() < self.deadline:
                with self.totals.lock:
                    self.totals.reconnects += 1
                time.sleep(0.2)

    def _session(self, generation: int) -> None:
        import grpc

        channel = grpc.insecure_channel(self.target.address, options=[("grpc.max_send_message_length", 64 << 20)])
        try:
            grpc.channel_ready_future(channel).result(timeout=30)
        except grpc.FutureTimeoutError:
            channel.close()
            return
        try:
            session = Session(channel, self.totals, self.target.token)
            try:
                while self._live(session, generation) and self._generation(session, generation):
                    pass
            finally:
                session.finish(killed=self.target.generation != generation)
        finally:
            channel.close()

    def _live(self, session: Session, generation: int) -> bool:
        return time.monotonic() < self.deadline and not session.broken.is_set() and self.target.generation == generation

    def _generation(self, session: Session, generation: int) -> bool:
        """Open, `chunks` chunks (one in five generations hot: its first row alerts), bad input
        among them, Close. False when the stream broke midway."""
        import numpy as np

        d, rows = self.args.d_model, self.args.rows
        gid = f"s{self.index}-g{generation}-{self.n_generations}"
        self.n_generations += 1
        hot = self.n_generations % 5 == 0
        session.send(open_message(gid))
        next_pos = {1: 0, 2: 0}
        for c in range(self.args.chunks):
            if session.broken.is_set():
                return False
            layer = 1 + c % 2
            if self.rng.random() < self.args.bad_fraction:
                self._send_bad(session, gid, layer, next_pos[layer])
            block = self.rng.standard_normal((rows, d), dtype=np.float32) * 0.5
            if hot and c == 0:
                block[0] = self.hot[layer] * 5.0
            positions = list(range(next_pos[layer], next_pos[layer] + rows))
            next_pos[layer] += rows
            session.send_good_chunk(
                (gid, layer, positions[-1]), chunk_message(gid, layer, positions, block), self.args.window
            )
        if session.broken.is_set():
            return False
        session.close_generation(gid)
        return True

    def _send_bad(self, session: Session, gid: str, layer: int, next_pos: int) -> None:
        kind = BAD_KINDS[int(self.rng.integers(len(BAD_KINDS)))]
        tag = f"{self.index}-{self.n_generations}" if kind == "fingerprint" else str(self.index)
        kind, data = bad_message(kind, self.args.d_model, gid, layer, next_pos, tag)
        session.send(data, good=False)
        with self.totals.lock:
            self.totals.bad_kinds[kind] += 1
