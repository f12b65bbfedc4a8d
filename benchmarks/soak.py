"""`probewatch bench soak`: the sidecar under sustained load with hostile input, and one crash.

N streams (threads, each its own gRPC connection) run generations against a `probewatch serve`
process on loopback for a bounded time: Open, chunks of residual rows, Close, with a share of
every stream's messages replaced by bad input (NaN rows, 3e38 rows, wrong widths, positions
sent twice, unknown generations, oversized ids, another model's fingerprint, invalid UTF-8). Each
stream keeps at most `--window` good chunks awaiting their scores (closed-loop load), so the
latency measured is what a client sees at that load, not an ever-growing backlog.

Halfway through, the sidecar is killed with SIGKILL and restarted on the same port and incident
store; the streams reconnect. Every early alert a client received before the kill must still be
in the store afterwards (written at alert time), and the generations open at the kill are
reported as `interrupted` by the new process.

Reported (`--json`: one object as the last stdout line; `--out DIR`: report.json + soak.png):
messages/s, p50/p99 latency from a chunk's send to the score update that covers it, the
sidecar's RSS over each phase, rejected messages by gRPC code (the sidecar's counter and what
the clients saw), dropped chunks, and whether every good generation got its summary (those cut
by the kill are counted apart).

This is a benchmark, not a test: it runs for `--duration` seconds and its figures depend on the
machine.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FINGERPRINT = "pwfp1:" + "50" * 16
OTHER_FINGERPRINT = "pwfp1:" + "0f" * 16
BAD_KINDS = ("nan", "huge", "width", "duplicate", "unknown", "long_id", "fingerprint", "utf8")


def add_arguments_soak(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams (default 8)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load in total (default 30)")
    parser.add_argument("--bad-fraction", type=float, default=0.1, help="share of messages that are bad input")
    parser.add_argument("--rows", type=int, default=4, help="residual rows per chunk (default 4)")
    parser.add_argument("--chunks", type=int, default=16, help="chunks per generation (default 16)")
    parser.add_argument("--d-model", type=int, default=576, help="row width (default: the reference model's)")
    parser.add_argument("--window", type=int, default=8, help="good chunks awaiting scores per stream (default 8)")
    parser.add_argument("--no-kill", action="store_true", help="skip the kill -9 / restart cycle")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/soak"), help="report.json and soak.png (default runs/soak)"
    )


@dataclass
class Totals:
    """What every stream worker adds to (under `lock`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: Counter = field(default_factory=Counter)  # good / bad messages sent
    bad_kinds: Counter = field(default_factory=Counter)
    client_errors: Counter = field(default_factory=Counter)  # Error responses by code
    latencies: list[float] = field(default_factory=list)
    good_generations: int = 0
    summaries: Counter = field(default_factory=Counter)  # by status
    missing: list[str] = field(default_factory=list)  # good generations closed without a summary
    cut_by_kill: int = 0
    early_alert_incidents: list[int] = field(default_factory=list)
    reconnects: int = 0
    stream_errors: Counter = field(default_factory=Counter)


class Target:
    """Where the sidecar is, and whether it is up (the kill cycle flips it)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.generation = 0  # bumped at each kill: streams of an older generation are dead
        self.killed_at: float | None = None


def _make_bundles(out: Path, d_model: int) -> list[Path]:
    """Two layers, two probes each; `soak-l1-max` (max aggregation, threshold 3) alerts on hot rows."""
    import torch

    from probewatch.probes import Aggregation, Manifest, ModelRef, Threshold, save_bundle

    g = torch.Generator().manual_seed(0)
    paths = []
    for layer in (1, 2):
        for method, behaviour in (("max", "deception"), ("mean", "refusal")):
            pid = f"soak-l{layer}-{method}"
            manifest = Manifest(
                id=pid,
                behaviour=behaviour,
                kind="linear",
                model=ModelRef(id="soak", fingerprint=FINGERPRINT, d_model=d_model, n_layers=4),
                layer=layer,
                threshold=Threshold(value=3.0, method="fixed", fpr=None),
                aggregation=Aggregation(method=method),
                version="soak",
            )
            w = torch.randn(d_model, generator=g)
            w = w / w.norm()  # a unit direction: a row of 5*w scores 5 (alerts), noise scores ~N(0, 1)
            paths.append(save_bundle(out / pid, manifest, {"weight": w, "bias": torch.tensor([0.0])}))
    return paths


class StreamWorker(threading.Thread):
    def __init__(self, index: int, target: Target, args: argparse.Namespace, deadline: float, totals: Totals, hot):
        super().__init__(name=f"soak-stream-{index}", daemon=True)
        self.index, self.target, self.args, self.deadline, self.totals, self.hot = (
            index,
            target,
            args,
            deadline,
            totals,
            hot,
        )
        import numpy as np

        self.rng = np.random.default_rng(index)
        self.n_generations = 0

    # -- messages ------------------------------------------------------------------------------------
    def _chunk(self, gid: str, layer: int, positions: list[int], rows) -> bytes:
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

    def _open(self, gid: str, fingerprint: str = FINGERPRINT) -> bytes:
        from probewatch.proto.probewatch.v1 import monitor_pb2 as pb

        return pb.MonitorRequest(
            open=pb.Open(generation_id=gid, model_fingerprint=fingerprint, prompt_length=0, metadata={"soak": "1"})
        ).SerializeToString()

    def _bad(self, gid: str, layer: int, next_pos: int) -> tuple[str, bytes]:
        import numpy as np

        d, kind = self.args.d_model, BAD_KINDS[int(self.rng.integers(len(BAD_KINDS)))]
        if kind == "nan":
            rows = np.zeros((1, d), np.float32)
            rows[0, 3] = np.nan
            return kind, self._chunk(gid, layer, [next_pos], rows)
        if kind == "huge":
            return kind, self._chunk(gid, layer, [next_pos], np.full((1, d), 3e38, np.float32))
        if kind == "duplicate" and next_pos > 0:  # a position this layer already received
            return kind, self._chunk(gid, layer, [next_pos - 1], np.zeros((1, d), np.float32))
        if kind in ("duplicate", "width"):
            return "width", self._chunk(gid, layer, [next_pos], np.zeros((1, d + 1), np.float32))
        if kind == "unknown":
            return kind, self._chunk(f"ghost-{self.index}-{next_pos}", layer, [0], np.zeros((1, d), np.float32))
        if kind == "long_id":
            return kind, self._open("L" * 5000)
        if kind == "fingerprint":
            return kind, self._open(f"other-{self.index}-{self.n_generations}-{next_pos}", OTHER_FINGERPRINT)
        raw = bytearray(self._open(f"utf8-{self.index}-xxxx"))
        raw[raw.index(b"xxxx")] = 0xFF
        return "utf8", bytes(raw)

    # -- one connection ------------------------------------------------------------------------------------
    def run(self) -> None:
        while time.monotonic() < self.deadline:
            generation = self.target.generation
            try:
                self._session(generation)
            except Exception as exc:  # noqa: BLE001 - counted; the stream reconnects like a client would
                with self.totals.lock:
                    self.totals.stream_errors[type(exc).__name__] += 1
            if time.monotonic() < self.deadline:
                with self.totals.lock:
                    self.totals.reconnects += 1
                time.sleep(0.2)

    def _session(self, generation: int) -> None:
        import queue

        import grpc

        from probewatch.proto.probewatch.v1 import monitor_pb2 as pb

        channel = grpc.insecure_channel(self.target.address, options=[("grpc.max_send_message_length", 64 << 20)])
        try:
            grpc.channel_ready_future(channel).result(timeout=30)
        except grpc.FutureTimeoutError:
            channel.close()
            return
        method = channel.stream_stream(
            "/probewatch.v1.Monitor/Monitor",
            request_serializer=lambda b: b,
            response_deserializer=pb.MonitorResponse.FromString,
        )
        feed: queue.Queue = queue.Queue()
        # (gid, layer, last position) -> send time (None: queued, not yet handed to gRPC); the window
        # counts both, so a stream never has more than `window` good chunks queued or in flight
        pending: dict[tuple[str, int, int], float | None] = {}
        cv = threading.Condition()
        closed: dict[str, bool] = {}  # good generations whose Close was sent -> summary seen
        broken = threading.Event()

        def requests():
            while True:
                item = feed.get()
                if item is None:
                    return
                data, key = item
                if key is not None:
                    with cv:
                        if key in pending:
                            pending[key] = time.perf_counter()
                yield data

        call = method(requests())

        def read() -> None:
            try:
                for response in call:
                    now = time.perf_counter()
                    which = response.WhichOneof("msg")
                    if which == "score":
                        u = response.score
                        with cv:
                            for p in u.positions:
                                sent = pending.pop((u.generation_id, u.layer, int(p)), None)
                                if sent is not None:  # (None: the update came before the send was stamped)
                                    with self.totals.lock:
                                        self.totals.latencies.append(now - sent)
                            cv.notify_all()
                    elif which == "error":
                        with self.totals.lock:
                            self.totals.client_errors[response.error.code_name] += 1
                    elif which == "alert" and response.alert.early and response.alert.incident_id:
                        with self.totals.lock:
                            self.totals.early_alert_incidents.append(int(response.alert.incident_id))
                    elif which == "summary":
                        s = response.summary
                        with cv:
                            for key in [k for k in pending if k[0] == s.generation_id]:
                                pending.pop(key)
                            if s.generation_id in closed:
                                closed[s.generation_id] = True
                            cv.notify_all()
                        with self.totals.lock:
                            self.totals.summaries[s.status] += 1
            except grpc.RpcError:
                pass
            finally:
                broken.set()
                with cv:
                    cv.notify_all()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        import numpy as np

        d, rows, bad_p = self.args.d_model, self.args.rows, self.args.bad_fraction
        try:
            while time.monotonic() < self.deadline and not broken.is_set() and self.target.generation == generation:
                gid = f"s{self.index}-g{generation}-{self.n_generations}"
                self.n_generations += 1
                hot = self.n_generations % 5 == 0
                feed.put((self._open(gid), None))
                with self.totals.lock:
                    self.totals.sent["good"] += 1
                next_pos = {1: 0, 2: 0}
                for c in range(self.args.chunks):
                    if broken.is_set():
                        break
                    layer = 1 + c % 2
                    if self.rng.random() < bad_p:
                        kind, data = self._bad(gid, layer, next_pos[layer])
                        feed.put((data, None))
                        with self.totals.lock:
                            self.totals.sent["bad"] += 1
                            self.totals.bad_kinds[kind] += 1
                    block = self.rng.standard_normal((rows, d), dtype=np.float32) * 0.5
                    if hot and c == 0:
                        block[0] = self.hot[layer] * 5.0
                    positions = list(range(next_pos[layer], next_pos[layer] + rows))
                    next_pos[layer] += rows
                    key = (gid, layer, positions[-1])
                    with cv:  # closed loop: at most `window` good chunks queued or awaiting scores
                        cv.wait_for(lambda: len(pending) < self.args.window or broken.is_set(), timeout=10)
                        pending[key] = None
                    feed.put((self._chunk(gid, layer, positions, block), key))
                    with self.totals.lock:
                        self.totals.sent["good"] += 1
                if broken.is_set():
                    break
                feed.put((pb.MonitorRequest(close=pb.Close(generation_id=gid)).SerializeToString(), None))
                with cv:
                    closed[gid] = False
                with self.totals.lock:
                    self.totals.sent["good"] += 1
                    self.totals.good_generations += 1
            # drain: wait for the summaries of what was closed (bounded)
            with cv:
                cv.wait_for(lambda: all(closed.values()) or broken.is_set(), timeout=15)
        finally:
            feed.put(None)
            reader.join(10)
            call.cancel()
            channel.close()
        killed = self.target.generation != generation
        with cv, self.totals.lock:
            missing = [g for g, seen in closed.items() if not seen]
            if killed:
                self.totals.cut_by_kill += len(missing)
            else:
                self.totals.missing.extend(missing)


def _scrape(port: int) -> dict[str, dict[str, float]]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {"rejected": {}, "dropped": {}, "internal": {}}
    names = {
        "probewatch_rejected_messages_total": ("rejected", "code"),
        "probewatch_dropped_chunks_total": ("dropped", "reason"),
        "probewatch_internal_errors_total": ("internal", "component"),
    }
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                bucket, label = names[sample.name]
                out[bucket][sample.labels[label]] = float(sample.value)
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in sorted(set(a) | set(b))}


def soak_main(args: argparse.Namespace) -> int:
    import json
    import signal
    import socket
    import tempfile

    from tqdm.auto import tqdm

    from probewatch.benchmarks.overhead_ingest import SidecarProcess, _emit
    from probewatch.errors import ProbewatchError
    from probewatch.probes import load_bundles
    from probewatch.server.store import IncidentStore

    if args.streams < 1 or args.duration <= 0 or not 0 <= args.bad_fraction < 1 or args.window < 1:
        raise ProbewatchError("soak: --streams, --duration and --window must be positive, 0 <= --bad-fraction < 1")
    command = "probewatch bench soak " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "probewatch bench soak"
    with tempfile.TemporaryDirectory(prefix="probewatch-soak-") as tmp_name:
        tmp = Path(tmp_name)
        bundles = _make_bundles(tmp / "bundles", args.d_model)
        stacks = {
            b.layer: b.tensors["weight"].numpy()
            for b in load_bundles(bundles)
            if b.manifest.aggregation.method == "max"
        }
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        db = tmp / "incidents.sqlite3"
        serve_args = [
            "--fingerprint",
            FINGERPRINT,
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--incident-db",
            str(db),
            "--bundles",
            *map(str, bundles),
        ]

        def start(run: int) -> SidecarProcess:
            workdir = tmp / f"run{run}"
            workdir.mkdir()
            return SidecarProcess(serve_args, workdir)

        sidecar = start(1)
        target = Target(sidecar.address)
        totals = Totals()
        rss: list[tuple[float, float, int]] = []  # (t, MB, phase)
        t0 = time.monotonic()
        deadline = t0 + args.duration
        workers = [StreamWorker(i, target, args, deadline, totals, stacks) for i in range(args.streams)]
        for w in workers:
            w.start()
        time.sleep(min(2.0, args.duration / 10))  # warm-up before the first RSS sample
        phase = {"n": 1, "rss_start": _rss_mb(sidecar.proc.pid), "pid": sidecar.proc.pid}
        kill_info: dict[str, Any] = {}
        metrics_phase1: dict[str, dict[str, float]] = {}
        kill_at = None if args.no_kill else t0 + args.duration / 2
        with tqdm(total=int(args.duration), desc="soak", unit="s", file=sys.stderr) as bar:
            while time.monotonic() < deadline:
                time.sleep(0.5)
                now = time.monotonic()
                rss.append((now - t0, _rss_mb(sidecar.proc.pid), int(phase["n"])))
                bar.n = min(int(now - t0), int(args.duration))
                bar.set_postfix(msgs=sum(totals.sent.values()), rss=f"{rss[-1][1]:.0f}MB")
                if kill_at is not None and now >= kill_at and not kill_info:
                    metrics_phase1 = _scrape(sidecar.metrics_port)
                    phase["rss_end_1"] = _rss_mb(sidecar.proc.pid)
                    alerts_before = list(totals.early_alert_incidents)
                    target.generation += 1
                    sidecar.proc.send_signal(signal.SIGKILL)
                    sidecar.proc.wait(10)
                    killed = time.monotonic()
                    sidecar.stop()
                    sidecar = start(2)
                    restarted = time.monotonic()
                    store = IncidentStore.open(db, readonly=True)
                    found = sum(1 for i in alerts_before if _exists(store, i))
                    interrupted = len(store.list(generation_status="interrupted", limit=1_000_000))
                    store.close()
                    kill_info = {
                        "killed_at_s": round(killed - t0, 2),
                        "restart_s": round(restarted - killed, 2),
                        "early_alerts_received_before_kill": len(alerts_before),
                        "their_incident_rows_after_restart": found,
                        "interrupted_rows_after_restart": interrupted,
                    }
                    phase.update(n=2, pid=sidecar.proc.pid, warm_at=time.monotonic() + min(2.0, args.duration / 10))
                if phase["n"] == 2 and "rss_start_2" not in phase and time.monotonic() >= phase["warm_at"]:
                    phase["rss_start_2"] = _rss_mb(sidecar.proc.pid)  # after the same warm-up as phase 1
                bar.refresh()
        for w in workers:
            w.join(60)
        elapsed = time.monotonic() - t0
        metrics_end = _scrape(sidecar.metrics_port)
        rss_end = _rss_mb(sidecar.proc.pid)
        sidecar.stop()

    lat = sorted(totals.latencies)
    rejected = _add(metrics_phase1.get("rejected", {}), metrics_end["rejected"])
    dropped = _add(metrics_phase1.get("dropped", {}), metrics_end["dropped"])
    internal = _add(metrics_phase1.get("internal", {}), metrics_end["internal"])

    def pct(q: float) -> float | None:
        return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None

    if kill_info and "rss_start_2" not in phase:
        phase["rss_start_2"] = rss_end
    if kill_info:
        rss_report = {
            "phase1_start": round(phase["rss_start"], 1),
            "phase1_end": round(phase["rss_end_1"], 1),
            "phase1_growth": round(phase["rss_end_1"] - phase["rss_start"], 1),
            "phase2_start": round(phase["rss_start_2"], 1),
            "phase2_end": round(rss_end, 1),
            "phase2_growth": round(rss_end - phase["rss_start_2"], 1),
        }
    else:
        rss_report = {
            "start": round(phase["rss_start"], 1),
            "end": round(rss_end, 1),
            "growth": round(rss_end - phase["rss_start"], 1),
        }
    rss_report["peak"] = round(max((r for _, r, _ in rss), default=float("nan")), 1)
    messages = sum(totals.sent.values())
    result = {
        "benchmark": "soak",
        "command": command,
        "streams": args.streams,
        "duration_s": round(elapsed, 1),
        "bad_fraction": args.bad_fraction,
        "rows_per_chunk": args.rows,
        "d_model": args.d_model,
        "window": args.window,
        "messages_sent": messages,
        "messages_per_s": round(messages / elapsed, 1),
        "good_messages": totals.sent["good"],
        "bad_messages": totals.sent["bad"],
        "bad_by_kind": dict(sorted(totals.bad_kinds.items())),
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "n": len(lat)},
        "sidecar_rss_mb": rss_report,
        "rejected_by_code": {k: v for k, v in rejected.items() if v},
        "client_errors_by_code": dict(sorted(totals.client_errors.items())),
        "dropped_by_reason": {k: v for k, v in dropped.items() if v},
        "internal_errors": {k: v for k, v in internal.items() if v},
        "generations": {
            "good_closed": totals.good_generations,
            "summaries": dict(totals.summaries),
            "missing_summary": len(totals.missing),
            "cut_by_kill": totals.cut_by_kill,
            "every_good_generation_got_a_summary": not totals.missing,
        },
        "reconnects": totals.reconnects,
        "kill_restart": kill_info or None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    from probewatch.jsonio import write_json_atomic

    write_json_atomic(args.out / "report.json", result)
    _plot(args.out / "soak.png", lat, rss, kill_info)
    lines = [
        f"soak: {args.streams} streams, {elapsed:.0f}s, {messages} messages ({result['messages_per_s']}/s), "
        f"{totals.sent['bad']} bad",
        f"  send->score latency p50 {pct(0.5)} ms, p99 {pct(0.99)} ms over {len(lat)} chunks",
        f"  sidecar RSS {json.dumps(rss_report)}",
        f"  rejected {json.dumps(result['rejected_by_code'])}; dropped {json.dumps(result['dropped_by_reason'])}",
        f"  generations {json.dumps(result['generations'])}",
        f"  kill -9 / restart {json.dumps(kill_info)}" if kill_info else "  (no kill cycle)",
        f"  report {args.out / 'report.json'}, plot {args.out / 'soak.png'}",
    ]
    _emit(result, args.json, lines)
    return 0 if not totals.missing else 1


def _exists(store, incident_id: int) -> bool:
    from probewatch.server.store import IncidentNotFoundError

    try:
        store.get(incident_id)
        return True
    except IncidentNotFoundError:
        return False


def _plot(path: Path, latencies: list[float], rss: list[tuple[float, float, int]], kill: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    if latencies:
        a.hist([1000 * x for x in latencies], bins=60, color="#4472c4")
        a.set_yscale("log")
    a.set_xlabel("send -> score latency (ms)")
    a.set_ylabel("chunks")
    a.set_title("latency")
    for phase, colour in ((1, "#4472c4"), (2, "#ed7d31")):
        points = [(t, r) for t, r, p in rss if p == phase]
        if points:
            b.plot(*zip(*points), color=colour, label=f"sidecar process {phase}")
    if kill:
        b.axvline(kill["killed_at_s"], color="red", linestyle="--", label="kill -9")
    b.set_xlabel("time (s)")
    b.set_ylabel("RSS (MB)")
    b.set_title("sidecar memory")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
