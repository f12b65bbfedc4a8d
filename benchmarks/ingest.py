"""`probewatch bench ingest`: how fast a sidecar process takes in raw residual chunks.

Chunks go over loopback gRPC to a `probewatch serve` process (received, validated, scored,
aggregated; timed until the generation's summary comes back), next to the same messages sent to a
no-op gRPC Monitor servicer (gRPC Python's own cost) and a raw TCP socket copy of the same bytes to
another process: the ratios are the price of the protocol and of the scoring over the wire itself.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from probewatch.benchmarks.harness import add_common_args

FINGERPRINT = "pwfp1:" + "be" * 16
MAX_MESSAGE = 64 << 20


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    parser.add_argument("--chunks", type=int, default=400, help="chunks per repeat")
    parser.add_argument("--rows", type=int, default=64, help="residual rows per chunk")
    parser.add_argument("--d-model", type=int, default=576, help="row width (default: the reference model's)")
    parser.add_argument("--layers", type=int, default=2, help="probe layers the chunks alternate between")
    parser.add_argument("--repeats", type=int, default=5)


_RECEIVER = r"""
import socket, sys
total = int(sys.argv[1])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    buf = bytearray(1 << 20); view = memoryview(buf); got = 0
    while got < total:
        n = conn.recv_into(view)
        if not n:
            break
        got += n
    conn.sendall(b"k"); conn.close()
"""


# A Monitor servicer that only counts positions and answers Close with a summary: the cost of
# gRPC Python itself (HTTP/2, protobuf parsing) for the same messages, without our validation/scoring.
_GRPC_NOOP = r"""
import sys
from concurrent import futures
import grpc
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb, monitor_pb2_grpc as pb_grpc

class Noop(pb_grpc.MonitorServicer):
    def Monitor(self, request_iterator, context):
        n, layers = 0, set()
        for r in request_iterator:
            which = r.WhichOneof("msg")
            if which == "chunk":
                n += len(r.chunk.positions)
                layers.add(r.chunk.layer)
            elif which == "close":  # tokens = rows per layer, as the sidecar counts them
                tokens = n // max(1, len(layers))
                yield pb.MonitorResponse(summary=pb.GenerationSummary(generation_id=r.close.generation_id,
                                                                      tokens_scored=tokens))
                n, layers = 0, set()

limit = int(sys.argv[1])
server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", limit),
                                                            ("grpc.max_send_message_length", limit)])
pb_grpc.add_MonitorServicer_to_server(Noop(), server)
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
server.wait_for_termination()
"""


def main(args: argparse.Namespace) -> int:
    import tempfile

    import numpy as np
    from tqdm.auto import tqdm

    from probewatch.benchmarks.harness import SidecarProcess, emit
    from probewatch.probes.synthetic import write_synthetic_bundles
    from probewatch.proto.codec import encode_array

    layers = list(range(1, args.layers + 1))
    rng = np.random.default_rng(0)
    blocks = [encode_array(rng.standard_normal((args.rows, args.d_model), dtype=np.float32)) for _ in range(8)]
    raw_payloads = [blocks[i % len(blocks)].data for i in range(args.chunks)]
    payload_bytes = sum(map(len, raw_payloads))
    with tempfile.TemporaryDirectory(prefix="probewatch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        paths = write_synthetic_bundles(
            tmp / "bundles",
            d_model=args.d_model,
            layers=layers,
            prefix="bench",
            model_id="bench",
            fingerprint=FINGERPRINT,
            threshold=1e9,
            version="bench",
        )
        serve_args = ["--model", "bench", "--fingerprint", FINGERPRINT, "--metrics-port", "-1", "--no-incidents"]
        serve_args += ["--queue-size", "4096", "--bundles", *map(str, paths)]
        with (
            _helpers(payload_bytes) as (raw_port, noop_stub),
            SidecarProcess(serve_args, tmp) as sidecar,
            _stub(sidecar.address) as sidecar_stub,
        ):
            targets = {
                "sidecar": _grpc_target(sidecar_stub, args, layers, blocks),
                "grpc_noop": _grpc_target(noop_stub, args, layers, blocks),
                "raw_socket": lambda rep: _raw_socket_seconds(raw_payloads, raw_port),
            }
            for target in targets.values():  # warm-up
                target(-1)
            times: dict[str, list[float]] = {name: [] for name in targets}
            for rep in tqdm(range(args.repeats), desc="ingest repeats", disable=args.json, leave=False):
                for name, target in targets.items():
                    times[name].append(target(rep))
    result = _result(args, times, len(blocks[0].data), payload_bytes, len(paths), layers)
    emit(result, args.json, _lines(result))
    return 0


@contextlib.contextmanager
def _stub(address: str, **options: int) -> Iterator[Any]:
    """A Monitor stub on a ready channel to `address`, closed on exit."""
    import grpc

    from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address, options=[(f"grpc.{k}", v) for k, v in options.items()]) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield pb_grpc.MonitorStub(channel)


@contextlib.contextmanager
def _helpers(payload_bytes: int) -> Iterator[tuple[int, Any]]:
    """The raw-socket receiver and the no-op gRPC server, each its own process: (receiver port, stub)."""
    import subprocess

    from probewatch.benchmarks.harness import read_port

    cmds = ([_RECEIVER, str(payload_bytes)], [_GRPC_NOOP, str(MAX_MESSAGE)])
    procs = [subprocess.Popen([sys.executable, "-c", *c], stdout=subprocess.PIPE, text=True) for c in cmds]
    try:
        port = read_port(procs[0], "the raw-socket receiver")
        address = f"127.0.0.1:{read_port(procs[1], 'the no-op gRPC server')}"
        with _stub(address, max_send_message_length=MAX_MESSAGE) as stub:
            yield port, stub
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)


def _messages(gid: str, args: argparse.Namespace, layers: list[int], blocks: list[Any]) -> list[Any]:
    """Open, `chunks` chunks alternating between the layers (consecutive positions per layer), Close."""
    from probewatch.proto.probewatch.v1 import monitor_pb2 as pb

    messages = [pb.MonitorRequest(open=pb.Open(generation_id=gid, model_fingerprint=FINGERPRINT, prompt_length=0))]
    next_pos = dict.fromkeys(layers, 0)
    for i in range(args.chunks):
        layer = layers[i % len(layers)]
        start = next_pos[layer]
        next_pos[layer] += args.rows
        chunk = pb.ActivationChunk(
            generation_id=gid,
            layer=layer,
            kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS,
            positions=range(start, start + args.rows),
            payload=blocks[i % len(blocks)],
        )
        messages.append(pb.MonitorRequest(chunk=chunk))
    messages.append(pb.MonitorRequest(close=pb.Close(generation_id=gid)))
    return messages


def _grpc_target(stub: Any, args: argparse.Namespace, layers: list[int], blocks: list[Any]):
    """seconds(rep): one generation's messages through `stub`'s Monitor, timed from the first message
    until its summary, which must count every row."""
    import queue
    import time

    expected = args.rows * args.chunks // len(layers)

    def seconds(rep: int) -> float:
        requests: queue.Queue = queue.Queue()
        for m in _messages(f"ingest-{rep}", args, layers, blocks):
            requests.put(m)
        requests.put(None)
        t0 = time.perf_counter()
        for response in stub.Monitor(iter(requests.get, None)):
            which = response.WhichOneof("msg")
            if which == "error":
                raise RuntimeError(f"sidecar rejected a chunk: {response.error.message}")
            if which == "summary":
                elapsed = time.perf_counter() - t0
                if response.summary.tokens_scored != expected:
                    raise RuntimeError(f"only {response.summary.tokens_scored} tokens scored")
                return elapsed
        raise RuntimeError("stream ended without a summary")

    return seconds


def _raw_socket_seconds(payloads: list[bytes], port: int) -> float:
    import socket
    import time

    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        for p in payloads:
            s.sendall(p)
        s.recv(1)
        return time.perf_counter() - t0


def _result(
    args: argparse.Namespace, times: dict[str, list[float]], chunk_bytes: int, payload_bytes: int, probes: int, layers
) -> dict[str, Any]:
    g, n, r = (statistics.median(times[k]) for k in ("sidecar", "grpc_noop", "raw_socket"))
    return {
        "benchmark": "ingest",
        "d_model": args.d_model,
        "rows_per_chunk": args.rows,
        "chunks": args.chunks,
        "chunk_bytes": chunk_bytes,
        "payload_bytes": payload_bytes,
        "repeats": args.repeats,
        "probes": probes,
        "layers": layers,
        "sidecar_median_seconds": g,
        "raw_socket_median_seconds": r,
        "sidecar_mb_per_s": payload_bytes / g / 1e6,
        "raw_socket_mb_per_s": payload_bytes / r / 1e6,
        "sidecar_rows_per_s": args.chunks * args.rows / g,
        "sidecar_chunks_per_s": args.chunks / g,
        "grpc_noop_median_seconds": n,
        "grpc_noop_mb_per_s": payload_bytes / n / 1e6,
        "sidecar_over_raw_socket_throughput_ratio": r / g,
        "sidecar_over_grpc_noop_throughput_ratio": n / g,
        "grpc_noop_over_raw_socket_throughput_ratio": r / n,
        "sidecar_seconds": times["sidecar"],
        "grpc_noop_seconds": times["grpc_noop"],
        "raw_socket_seconds": times["raw_socket"],
    }


def _lines(result: dict[str, Any]) -> list[str]:
    return [
        f"ingest: {result['chunks']} chunks x {result['rows_per_chunk']} rows x d={result['d_model']} float32 "
        f"({result['payload_bytes'] / 1e6:.1f} MB) over loopback, {result['repeats']} repeats:",
        f"  sidecar (gRPC, validate, score {result['probes']} probes, aggregate): "
        f"{result['sidecar_mb_per_s']:9.1f} MB/s = {result['sidecar_rows_per_s']:,.0f} rows/s",
        f"  bare gRPC (no-op Monitor servicer, same messages):      {result['grpc_noop_mb_per_s']:9.1f} MB/s",
        f"  raw TCP socket copy of the same bytes:                  {result['raw_socket_mb_per_s']:9.1f} MB/s",
        f"  sidecar_over_raw_socket_throughput_ratio = {result['sidecar_over_raw_socket_throughput_ratio']:.3f}",
        f"  sidecar_over_grpc_noop_throughput_ratio  = {result['sidecar_over_grpc_noop_throughput_ratio']:.3f} "
        "(our validation + scoring vs gRPC Python's own cost)",
    ]
