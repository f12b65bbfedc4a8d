"""The attack mix of `probewatch bench soak --attacks`: misbehaving clients beside the well-behaved
streams, each the reproduction of one hardening finding (issue 20), each counting what the sidecar
answered it.

* `watch_flood` - anonymous Health.Watch streams, far more than their own pool: the pool fills, the
  rest get RESOURCE_EXHAUSTED, no Monitor slot is taken;
* `byte_heavy` - an authenticated tenant sending multi-MiB chunks open-loop (never waiting for its
  scores): the byte budget of the scoring queue sheds it with RESOURCE_EXHAUSTED;
* `never_close` - an authenticated tenant opening generations and never closing them: it fills its
  own share of the open-generation table, then RESOURCE_EXHAUSTED;
* `redos` - alerting generations whose Close carries adversarial text for the redaction rules
  (`"a-" * 15000`, long e-mail-like and base64-like runs): incidents are written off the scoring
  thread, so other streams' scores do not wait.

A helper of `probewatch.benchmarks.soak`, run as its own process (`python -m
probewatch.benchmarks.soak_attacks ...`, one JSON line out at the end): attackers are other clients,
so their serialisation work must not share the well-behaved streams' interpreter lock and bias
their latency. Attackers use their own token, so per-client limits tell them from the
well-behaved streams (which share the soak's other token).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from typing import Any

from probewatch.benchmarks.soak_stream import chunk_message, open_message

ATTACKS = ("watch_flood", "byte_heavy", "never_close", "redos")
#: adversarial texts for the redaction rules (each linear now; quadratic before issue 20)
REDOS_TEXTS = (
    "a-" * 15000,
    "x" * 20000 + "@" + "y." * 5000,
    "QUJD" * 8000 + "=" * 5000,
    '"' * 10000 + "'" * 10000,
)


class AttackTotals:
    """What every attacker adds to (under `lock`): sent messages and the answers by code."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: Counter = Counter()  # attack -> messages sent (streams opened, for watch_flood)
        self.answers: Counter = Counter()  # (attack, code) -> count
        self.served: Counter = Counter()  # attack -> what the sidecar accepted (Watch streams, generations)

    def count(self, attack: str, code: str) -> None:
        with self.lock:
            self.answers[(attack, code)] += 1

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {
                a: {
                    "sent": self.sent[a],
                    "served": self.served[a],
                    "answers": {code: n for (name, code), n in sorted(self.answers.items()) if name == a},
                }
                for a in ATTACKS
            }


class Attacker(threading.Thread):
    """One misbehaving client running `attack` from `start_at` until `deadline` (monotonic), reconnecting
    after the kill -9 like any client would."""

    def __init__(
        self,
        attack: str,
        address: str,
        token: str,
        totals: AttackTotals,
        start_at: float,
        deadline: float,
        *,
        d_model: int,
        hot: dict,
        chunk_mb: float,
        watch_streams: int,
    ) -> None:
        super().__init__(name=f"soak-attack-{attack}", daemon=True)
        self.attack, self.address, self.token, self.totals = attack, address, token, totals
        self.start_at, self.deadline = start_at, deadline
        self.d_model, self.hot, self.chunk_mb, self.watch_streams = d_model, hot, chunk_mb, watch_streams
        self.n = 0

    def run(self) -> None:
        time.sleep(max(0.0, self.start_at - time.monotonic()))
        while time.monotonic() < self.deadline:
            try:
                getattr(self, f"_{self.attack}")(self.n)
            except Exception:  # noqa: BLE001 - an attacker's own failure; it reconnects
                self.totals.count(self.attack, "client_exception")
            time.sleep(0.5)

    # -- plumbing ---------------------------------------------------------------------------------
    def _channel(self) -> Any:
        import grpc

        channel = grpc.insecure_channel(self.address, options=[("grpc.max_send_message_length", 64 << 20)])
        grpc.channel_ready_future(channel).result(timeout=30)
        return channel

    def _live(self, _session: int) -> bool:
        return time.monotonic() < self.deadline

    def _monitor(self, channel: Any, feed: queue.Queue) -> Any:
        """A Monitor stream fed from `feed` (None ends it), authenticated with the attacker's token;
        a reader thread counts every Error by code and every summary."""
        from probewatch.proto.probewatch.v1 import monitor_pb2 as pb

        def requests():
            while (item := feed.get()) is not None:
                yield item

        method = channel.stream_stream(
            "/probewatch.v1.Monitor/Monitor",
            request_serializer=lambda b: b,
            response_deserializer=pb.MonitorResponse.FromString,
        )
        call = method(requests(), metadata=(("authorization", f"Bearer {self.token}"),))

        def read() -> None:
            import grpc

            try:
                for response in call:
                    which = response.WhichOneof("msg")
                    if which == "error":
                        self.totals.count(self.attack, response.error.code_name)
                    elif which == "summary":
                        self.totals.count(self.attack, f"summary_{response.summary.status}")
            except grpc.RpcError as exc:
                self.totals.count(self.attack, f"stream_{exc.code().name}")

        threading.Thread(target=read, daemon=True).start()
        return call

    def _put(self, feed: queue.Queue, data: bytes) -> None:
        """Hand one message to the stream (bounded: an attacker's own memory stays flat), until the deadline."""
        while time.monotonic() < self.deadline:
            try:
                feed.put(data, timeout=0.5)
            except queue.Full:
                continue
            with self.totals.lock:
                self.totals.sent[self.attack] += 1
            return

    # -- the attacks ------------------------------------------------------------------------------
    def _watch_flood(self, generation: int) -> None:
        """Many anonymous Health.Watch streams held open: count those served and those refused."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        channel = self._channel()
        calls = []
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(self.watch_streams):
                call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
                with self.totals.lock:
                    self.totals.sent[self.attack] += 1
                try:
                    next(call)  # the first status: served
                    with self.totals.lock:
                        self.totals.served[self.attack] += 1
                    calls.append(call)
                except grpc.RpcError as exc:
                    self.totals.count(self.attack, exc.code().name)
            while self._live(generation) and all(not c.done() for c in calls):
                time.sleep(0.2)
        finally:
            for call in calls:
                call.cancel()
            channel.close()

    def _byte_heavy(self, generation: int) -> None:
        """One generation fed multi-MiB chunks as fast as the stream takes them (open loop)."""
        import numpy as np

        rows = max(1, int(self.chunk_mb * (1 << 20)) // (4 * self.d_model))
        block = np.random.default_rng(7).standard_normal((rows, self.d_model), dtype=np.float32)
        channel = self._channel()
        feed: queue.Queue = queue.Queue(maxsize=4)
        call = self._monitor(channel, feed)
        gid = f"bytes-{generation}-{self.n}"
        self.n += 1
        try:
            self._put(feed, open_message(gid, tag="attack"))
            pos = 0
            while self._live(generation) and not call.done():
                self._put(feed, chunk_message(gid, 1, list(range(pos, pos + rows)), block))
                pos += rows
        finally:
            feed.put(None)
            call.cancel()
            channel.close()

    def _never_close(self, generation: int) -> None:
        """Generations opened and never closed (nor fed), until the deadline."""
        channel = self._channel()
        feed: queue.Queue = queue.Queue(maxsize=64)
        call = self._monitor(channel, feed)
        try:
            while self._live(generation) and not call.done():
                gid = f"hoard-{generation}-{self.n}"
                self.n += 1
                self._put(feed, open_message(gid, tag="attack"))
                time.sleep(0.001)
        finally:
            feed.put(None)
            call.cancel()
            channel.close()

    def _redos(self, generation: int) -> None:
        """Alerting generations closed with adversarial text, two per second."""
        import numpy as np

        from probewatch.proto.probewatch.v1 import monitor_pb2 as pb

        channel = self._channel()
        feed: queue.Queue = queue.Queue(maxsize=16)
        call = self._monitor(channel, feed)
        try:
            while self._live(generation) and not call.done():
                gid = f"redos-{generation}-{self.n}"
                text = REDOS_TEXTS[self.n % len(REDOS_TEXTS)]
                self.n += 1
                self._put(feed, open_message(gid, tag="attack"))
                rows = np.zeros((2, self.d_model), np.float32)
                rows[0] = self.hot[1] * 5.0  # alerts: its incident carries the text below
                self._put(feed, chunk_message(gid, 1, [0, 1], rows))
                close = pb.MonitorRequest(close=pb.Close(generation_id=gid, prompt_text=text, response_text=text))
                self._put(feed, close.SerializeToString())
                time.sleep(0.5)
        finally:
            feed.put(None)
            call.cancel()
            channel.close()


def run_attacks(argv: list[str] | None = None) -> dict[str, Any]:
    """The attackers of one soak, from `start_in` seconds to `until` seconds from now; their totals."""
    import argparse

    import numpy as np

    p = argparse.ArgumentParser(prog="python -m probewatch.benchmarks.soak_attacks")
    p.add_argument("--address", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--hoard-token", default=None, help="never_close's own token (default: --token)")
    p.add_argument("--start-in", type=float, required=True)
    p.add_argument("--until", type=float, required=True)
    p.add_argument("--d-model", type=int, required=True)
    p.add_argument("--hot", required=True, help="path of a .npy: the alerting direction of layer 1")
    p.add_argument("--chunk-mb", type=float, default=8.0)
    p.add_argument("--watch-streams", type=int, default=48)
    p.add_argument("--attacks", default=",".join(ATTACKS))
    args = p.parse_args(argv)
    now = time.monotonic()
    totals = AttackTotals()
    hot = {1: np.load(args.hot)}
    attackers = [
        Attacker(
            name,
            args.address,
            args.hoard_token if name == "never_close" and args.hoard_token else args.token,
            totals,
            now + args.start_in,
            now + args.until,
            d_model=args.d_model,
            hot=hot,
            chunk_mb=args.chunk_mb,
            watch_streams=args.watch_streams,
        )
        for name in filter(None, args.attacks.split(","))
    ]
    for a in attackers:
        a.start()
    for a in attackers:
        a.join(max(0.0, now + args.until - time.monotonic()) + 10)
    return totals.report()


if __name__ == "__main__":
    import json

    print(json.dumps(run_attacks()), flush=True)


__all__ = ["ATTACKS", "REDOS_TEXTS", "AttackTotals", "Attacker", "run_attacks"]
