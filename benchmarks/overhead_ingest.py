"""`probewatch bench overhead|ingest`: what live monitoring costs, measured as ratios in one run.

overhead: generated tokens/s of the model with monitoring off, streaming raw residual rows, and
    with projection pushdown, alternating the three modes in every repeat in a rotating order
    (drift and order effects on a shared machine hit all of them equally) and reporting medians,
    best runs and ratios. The sidecar runs in its
    own process, as beside a production server. Monitored runs must deliver: each run's dropped
    chunks and scored tokens are reported, so a fast-because-it-dropped result shows.
ingest: how fast a sidecar process takes in raw residual chunks over loopback gRPC (received,
    validated, scored, aggregated; timed until the generation's summary comes back), next to a
    raw TCP socket copy of the same bytes to another process: the ratio is the price of the
    protocol and the scoring over the wire itself.

Only argparse/statistics/time are imported at module level: `probewatch --help` imports this.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from probewatch.cli.common import add_bundles_arg


def add_arguments_overhead(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run (fixed: min = max)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per generate() call")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats of (off, rows, pushdown)")
    add_bundles_arg(parser, "bundles (default: shipped for the model; else random probes on 3 layers)")
    parser.add_argument("--modes", default="off,rows,pushdown", help="comma-separated subset of off,rows,pushdown")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads for the model (0: torch's default). On a shared CPU, 1 removes "
        "OpenMP spin-contention that otherwise makes run times vary 5x",
    )


def add_arguments_ingest(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chunks", type=int, default=400, help="chunks per repeat")
    parser.add_argument("--rows", type=int, default=64, help="residual rows per chunk")
    parser.add_argument("--d-model", type=int, default=576, help="row width (default: the reference model's)")
    parser.add_argument("--layers", type=int, default=2, help="probe layers the chunks alternate between")
    parser.add_argument("--repeats", type=int, default=5)


# -- a sidecar in its own process ----------------------------------------------------------------------
class SidecarProcess:
    """`probewatch serve ...` as a subprocess on ephemeral ports; `address` once ready."""

    def __init__(self, args: list[str], workdir: Path, timeout_s: float = 120.0) -> None:
        import json
        import subprocess

        self.ready_file = workdir / "sidecar-ready.json"
        self.log_file = workdir / "sidecar.log"
        cmd = [
            sys.executable,
            "-m",
            "probewatch.cli.main",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--ready-file",
            str(self.ready_file),
            *args,
        ]
        self._log = open(self.log_file, "w")  # noqa: SIM115 - held open for the child process's lifetime
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"sidecar did not start (exit {self.proc.returncode}):\n{self.log_file.read_text()[-2000:]}"
                )
            time.sleep(0.05)
        time.sleep(0.05)
        info = json.loads(self.ready_file.read_text())
        self.address = info["address"]
        self.metrics_port = info["metrics_port"]

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> SidecarProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def random_bundles(
    out: Path,
    model_id: str,
    fingerprint: str,
    d_model: int,
    n_layers: int | None,
    layers: list[int],
    per_layer: int = 2,
) -> list[Path]:
    """Random linear probes (the cost of a probe does not depend on its weights)."""
    import torch

    from probewatch.probes import Aggregation, Manifest, ModelRef, Threshold, save_bundle

    g = torch.Generator().manual_seed(0)
    paths = []
    from probewatch.behaviours import BEHAVIOURS as behaviours

    for layer in layers:
        for j in range(per_layer):
            pid = f"bench-l{layer}-{j}"
            manifest = Manifest(
                id=pid,
                behaviour=behaviours[(layer + j) % 3],
                kind="linear",
                model=ModelRef(id=model_id, fingerprint=fingerprint, d_model=d_model, n_layers=n_layers),
                layer=layer,
                threshold=Threshold(value=1e9, method="fixed", fpr=None),
                aggregation=Aggregation(method="max" if j % 2 else "mean"),
                version="bench",
            )
            w = torch.randn(d_model, generator=g) / d_model**0.5
            paths.append(save_bundle(out / pid, manifest, {"weight": w, "bias": torch.tensor([0.0])}))
    return paths


def _emit(result: dict, as_json: bool, lines: list[str]) -> None:
    from probewatch.cli.common import print_json

    for line in lines:
        print(line, file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print_json(result)


# -- overhead -------------------------------------------------------------------------------------------
def overhead_main(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from probewatch.bundle_index import default_bundle_dirs, resolve_bundle_specs
    from probewatch.models import load_model
    from probewatch.server.client.hf_attach import attach

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - {"off", "rows", "pushdown"}
    if unknown or not modes:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}; choose from off,rows,pushdown")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    model, tok = loaded.model, loaded.tokenizer
    with tempfile.TemporaryDirectory(prefix="probewatch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        bundle_note = "given"
        paths = (
            resolve_bundle_specs(args.bundles, loaded.model_id)
            if args.bundles
            else default_bundle_dirs(loaded.model_id)
        )
        if not paths:
            n = loaded.n_layers
            paths = random_bundles(
                tmp / "bundles", loaded.model_id, loaded.fingerprint, loaded.d_model, n, [n // 3, n // 2, 2 * n // 3]
            )
            bundle_note = "random (no shipped bundles)"
        elif not args.bundles:
            bundle_note = "shipped"
        serve_args = [
            "--model",
            loaded.path,
            "--metrics-port",
            "-1",
            "--no-incidents",
            "--bundles",
            *[str(p) for p in paths],
        ]
        with SidecarProcess(serve_args, tmp) as sidecar:
            monitor = attach(model, tok, sidecar=sidecar.address, wait_s=30, result_timeout_s=60)
            if not monitor.up:
                raise SystemExit(f"could not connect to the benchmark sidecar at {sidecar.address}")
            from probewatch.server.client.hf_attach import Plan

            listing = monitor.link.listing if monitor.link is not None else None
            if listing is None:
                raise SystemExit(f"the benchmark sidecar at {sidecar.address} sent no probe listing")
            plan = Plan.from_listing(listing, "pushdown", monitor.device)  # which layers can push down
            text = "Write a short story about a lighthouse keeper who finds a message in a bottle."
            from probewatch.data.chat import render

            prompt = render(tok, [{"role": "user", "content": text}], add_generation_prompt=True)
            enc = tok([prompt] * args.batch, add_special_tokens=False, return_tensors="pt")
            kwargs = {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "max_new_tokens": args.new_tokens,
                "min_new_tokens": args.new_tokens,
                "do_sample": False,
                "pad_token_id": tok.pad_token_id,
            }
            plain = type(model).generate  # the unwrapped method: monitoring off, no hooks at all

            def run(mode: str) -> tuple[float, dict]:
                with torch.inference_mode():
                    if mode == "off":
                        t0 = time.perf_counter()
                        plain(model, **kwargs)
                        return time.perf_counter() - t0, {}
                    monitor.set_mode(mode)
                    t0 = time.perf_counter()
                    model.generate(**kwargs)
                    elapsed = time.perf_counter() - t0
                results = [h.result(60) for h in monitor.last_generations]  # not timed: must arrive, must be complete
                return elapsed, {
                    "tokens_scored": sum(r.tokens_scored for r in results),
                    "dropped": sum(r.dropped_chunks for r in results),
                    "complete": all(r.status == "closed" for r in results),
                }

            for mode in modes:  # warm-up (allocator, kernels, connection)
                run(mode)
            times: dict[str, list[float]] = {m: [] for m in modes}
            checks: dict[str, list[dict]] = {m: [] for m in modes if m != "off"}
            for rep in range(args.repeats):
                # rotate the order every repeat: a mode never always runs right after the same other mode
                for mode in modes[rep % len(modes) :] + modes[: rep % len(modes)]:
                    elapsed, check = run(mode)
                    times[mode].append(elapsed)
                    if mode != "off":
                        checks[mode].append(check)
            monitor.detach()
    tokens = args.new_tokens * args.batch
    medians = {m: statistics.median(v) for m, v in times.items()}
    tps = {m: tokens / t for m, t in medians.items()}
    best = {m: tokens / min(v) for m, v in times.items()}  # least disturbed run: robust on a shared machine
    result: dict = {
        "benchmark": "overhead",
        "model": loaded.model_id,
        "device": str(next(model.parameters()).device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "bundles": bundle_note,
        "probes": len(paths),
        "layers": plan.layers if plan else [],
        "pushdown_layers": [c.layer for c in plan.captures.values() if c.pushdown] if plan else [],
        "median_seconds": medians,
        "tokens_per_s": tps,
        "best_tokens_per_s": best,
        "seconds": times,
        "dropped_chunks": {m: sum(c["dropped"] for c in v) for m, v in checks.items()},
        "tokens_scored_per_run": {m: [c["tokens_scored"] for c in v] for m, v in checks.items()},
        "all_complete": all(c["complete"] for v in checks.values() for c in v),
    }
    for mode in ("rows", "pushdown"):
        if mode in tps and "off" in tps:
            result[f"{mode}_over_off_tokens_per_s_ratio"] = tps[mode] / tps["off"]
            result[f"{mode}_over_off_best_tokens_per_s_ratio"] = best[mode] / best["off"]
    if "rows" in tps and "pushdown" in tps:
        result["pushdown_over_rows_tokens_per_s_ratio"] = tps["pushdown"] / tps["rows"]
    lines = [
        f"overhead on {result['model']} ({result['device']}, {result['dtype']}, batch {args.batch}, "
        f"{args.new_tokens} new tokens, {args.repeats} alternating repeats, {len(paths)} {bundle_note} probes "
        f"on layers {result['layers']}):"
    ]
    for mode in modes:
        lines.append(
            f"  {mode:9} {tps[mode]:8.2f} tokens/s (median {medians[mode] * 1000:.0f} ms; "
            f"best run {best[mode]:.2f} tokens/s)"
        )
    for key in sorted(k for k in result if "ratio" in k):
        lines.append(f"  {key} = {result[key]:.3f}")
    lines.append(
        f"  dropped chunks: {result['dropped_chunks']}; every monitored run complete: {result['all_complete']}"
    )
    _emit(result, args.json, lines)
    return 0


# -- ingest ---------------------------------------------------------------------------------------------
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


def _read_port(proc: Any, what: str, timeout_s: float = 30.0) -> int:
    """The port a helper process prints on its first stdout line; a bounded wait with a clear error."""
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        raise SystemExit(f"{what} did not report its port within {timeout_s:g}s (exit code {proc.poll()})")
    return int(line)


def _raw_socket_seconds(payloads: list[bytes], port: int) -> float:
    import socket

    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        for p in payloads:
            s.sendall(p)
        s.recv(1)
        return time.perf_counter() - t0


def ingest_main(args: argparse.Namespace) -> int:
    import queue
    import subprocess
    import tempfile

    import grpc
    import numpy as np
    from tqdm.auto import tqdm

    from probewatch.proto.codec import encode_array
    from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
    from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc

    fingerprint = "pwfp1:" + "be" * 16
    d = args.d_model
    layers = list(range(1, args.layers + 1))
    rng = np.random.default_rng(0)
    blocks = [encode_array(rng.standard_normal((args.rows, d), dtype=np.float32)) for _ in range(8)]
    payload_bytes = len(blocks[0].data) * args.chunks
    with tempfile.TemporaryDirectory(prefix="probewatch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        paths = random_bundles(tmp / "bundles", "bench", fingerprint, d, None, layers, per_layer=2)
        serve_args = [
            "--model",
            "bench",
            "--fingerprint",
            fingerprint,
            "--metrics-port",
            "-1",
            "--no-incidents",
            "--queue-size",
            "4096",
            "--bundles",
            *[str(p) for p in paths],
        ]
        receiver = subprocess.Popen(
            [sys.executable, "-c", _RECEIVER, str(payload_bytes)], stdout=subprocess.PIPE, text=True
        )
        noop = subprocess.Popen([sys.executable, "-c", _GRPC_NOOP, str(64 << 20)], stdout=subprocess.PIPE, text=True)
        try:
            port = _read_port(receiver, "the raw-socket receiver")
            noop_channel = grpc.insecure_channel(
                f"127.0.0.1:{_read_port(noop, 'the no-op gRPC server')}",
                options=[("grpc.max_send_message_length", 64 << 20)],
            )
            grpc.channel_ready_future(noop_channel).result(timeout=30)
            with SidecarProcess(serve_args, tmp) as sidecar:
                channel = grpc.insecure_channel(sidecar.address)
                grpc.channel_ready_future(channel).result(timeout=30)
                stub = pb_grpc.MonitorStub(channel)

                def grpc_seconds(rep: int, target: Any = None) -> float:
                    gid = f"ingest-{rep}"
                    requests: queue.Queue = queue.Queue()
                    messages = [
                        pb.MonitorRequest(
                            open=pb.Open(generation_id=gid, model_fingerprint=fingerprint, prompt_length=0)
                        )
                    ]
                    per_layer = dict.fromkeys(layers, 0)
                    for i in range(args.chunks):
                        layer = layers[i % len(layers)]
                        start = per_layer[layer]
                        per_layer[layer] += args.rows
                        messages.append(
                            pb.MonitorRequest(
                                chunk=pb.ActivationChunk(
                                    generation_id=gid,
                                    layer=layer,
                                    kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS,
                                    positions=range(start, start + args.rows),
                                    payload=blocks[i % len(blocks)],
                                )
                            )
                        )
                    messages.append(pb.MonitorRequest(close=pb.Close(generation_id=gid)))
                    for m in messages:
                        requests.put(m)
                    requests.put(None)
                    t0 = time.perf_counter()
                    for response in (target or stub).Monitor(iter(requests.get, None)):
                        which = response.WhichOneof("msg")
                        if which == "error":
                            raise RuntimeError(f"sidecar rejected a chunk: {response.error.message}")
                        if which == "summary":
                            elapsed = time.perf_counter() - t0
                            if response.summary.tokens_scored != args.rows * args.chunks // len(layers):
                                raise RuntimeError(f"only {response.summary.tokens_scored} tokens scored")
                            return elapsed
                    raise RuntimeError("stream ended without a summary")

                raw_payloads = [blocks[i % len(blocks)].data for i in range(args.chunks)]
                noop_stub = pb_grpc.MonitorStub(noop_channel)
                grpc_seconds(-1)  # warm-up
                grpc_seconds(-2, noop_stub)
                _raw_socket_seconds(raw_payloads, port)
                g_times, n_times, r_times = [], [], []
                for rep in tqdm(range(args.repeats), desc="ingest repeats", disable=args.json, leave=False):
                    g_times.append(grpc_seconds(rep))
                    n_times.append(grpc_seconds(rep, noop_stub))
                    r_times.append(_raw_socket_seconds(raw_payloads, port))
                channel.close()
                noop_channel.close()
        finally:
            for proc in (receiver, noop):
                proc.kill()
                proc.wait(5)
    g, n, r = statistics.median(g_times), statistics.median(n_times), statistics.median(r_times)
    rows_total = args.chunks * args.rows
    result = {
        "benchmark": "ingest",
        "d_model": d,
        "rows_per_chunk": args.rows,
        "chunks": args.chunks,
        "chunk_bytes": len(blocks[0].data),
        "payload_bytes": payload_bytes,
        "repeats": args.repeats,
        "probes": len(paths),
        "layers": layers,
        "sidecar_median_seconds": g,
        "raw_socket_median_seconds": r,
        "sidecar_mb_per_s": payload_bytes / g / 1e6,
        "raw_socket_mb_per_s": payload_bytes / r / 1e6,
        "sidecar_rows_per_s": rows_total / g,
        "sidecar_chunks_per_s": args.chunks / g,
        "grpc_noop_median_seconds": n,
        "grpc_noop_mb_per_s": payload_bytes / n / 1e6,
        "sidecar_over_raw_socket_throughput_ratio": r / g,
        "sidecar_over_grpc_noop_throughput_ratio": n / g,
        "grpc_noop_over_raw_socket_throughput_ratio": r / n,
        "sidecar_seconds": g_times,
        "grpc_noop_seconds": n_times,
        "raw_socket_seconds": r_times,
    }
    lines = [
        f"ingest: {args.chunks} chunks x {args.rows} rows x d={d} float32 ({payload_bytes / 1e6:.1f} MB) over loopback, "
        f"{args.repeats} repeats:",
        f"  sidecar (gRPC, validate, score {len(paths)} probes, aggregate): {result['sidecar_mb_per_s']:9.1f} MB/s "
        f"= {result['sidecar_rows_per_s']:,.0f} rows/s",
        f"  bare gRPC (no-op Monitor servicer, same messages):      {result['grpc_noop_mb_per_s']:9.1f} MB/s",
        f"  raw TCP socket copy of the same bytes:                  {result['raw_socket_mb_per_s']:9.1f} MB/s",
        f"  sidecar_over_raw_socket_throughput_ratio = {result['sidecar_over_raw_socket_throughput_ratio']:.3f}",
        f"  sidecar_over_grpc_noop_throughput_ratio  = {result['sidecar_over_grpc_noop_throughput_ratio']:.3f} "
        "(our validation + scoring vs gRPC Python's own cost)",
    ]
    _emit(result, args.json, lines)
    return 0
