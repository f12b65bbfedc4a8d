"""`probewatch bench vllm`: generated tokens/s of vLLM monitored by probewatch against the same engine
unmonitored and against vllm-lens capturing the same layers (a benchmark, not a test).

Configurations, each a vLLM engine in its own process (a vLLM plugin loads once per process):
- `off`: unmonitored vLLM in its default mode (compiled; `--eager` to compare eager engines);
- `probewatch`: the plugin, serving both `rows` and `pushdown` (switched between runs);
- `vllm_lens`: vllm-lens 1.3.0 capturing the probe layers for every request (its plugin forces
  `enforce_eager`; install it with `make bench-vllm`).
All engines are started first (start-up times reported), then the parent alternates the configs
run by run (rotating the order every repeat) at each batch size, so machine noise spreads over all
of them; tokens/s are medians. Monitored runs must come back complete (every summary, nothing
dropped). `parity_cos_min` is the smallest cosine between a row the plugin captured and the HF
capture of decoder layer L's output (`probewatch.capture.run_forward`, what the probes were trained on;
HF's `hidden_states[L+1]` except for the last layer, which HF returns after the final norm) for the same
tokens (fp32). The last stdout line is one JSON
object (`--json`); a plot of tokens/s per configuration and batch goes next to `--out`.

GPU hosts: `--model-config deploy/bench/llama-8b-shape --load-format dummy --dtype bfloat16` builds an
8B Llama with random weights from a written config (no download; the reference model's tokenizer),
monitors it with random probes on 4 layers spread over its depth, and keeps vLLM's defaults (CUDA
graphs, compiled). Parity needs real weights, so it is skipped there (`parity_skipped`). The JSON says
which model runner the plugin engaged on (`runner`), the vLLM version and the device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from probewatch.arguments import add_bundles_arg
from probewatch.benchmarks.harness import add_common_args

CONFIGS = ("off", "probewatch", "vllm_lens")
MODES = ("off", "rows", "pushdown", "vllm_lens")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence (min = max)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats per batch size")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--eager", action="store_true", help="run every engine eager (default: vLLM's compiled mode)")
    add_bundles_arg(parser, "bundles (default: shipped for the model)")
    parser.add_argument(
        "--model-config",
        default=None,
        help="a folder with only a config.json (e.g. deploy/bench/llama-8b-shape): benchmark that shape with "
        "random probes; the tokenizer is --model's",
    )
    parser.add_argument(
        "--load-format", default="auto", choices=("auto", "dummy"), help="vLLM load format (dummy: random weights)"
    )
    parser.add_argument("--dtype", default=None, help="vLLM dtype (default float32 on CPU, bfloat16 on GPU)")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--out", default="runs/bench-vllm.json", help="report path (the plot goes next to it)")


class _Engine:
    """One engine worker process (`probewatch.benchmarks.vllm_engine`); a line protocol over its stdin / stdout."""

    def __init__(self, config: str, spec: dict[str, Any], workdir: Path, env: dict) -> None:
        self.config = config
        self.log = open(workdir / f"engine-{config}.log", "w")  # noqa: SIM115 - lives with the process
        cmd = [sys.executable, "-m", "probewatch.benchmarks.vllm_engine", config, json.dumps(spec)]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, bufsize=1
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the {self.config} engine exited; see {self.log.name}")
            if line.startswith("BENCH "):
                return json.loads(line[6:])

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(RuntimeError, BrokenPipeError):
                self.ask(cmd="exit")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def main(args: argparse.Namespace) -> int:
    import tempfile

    from probewatch.benchmarks.harness import SidecarProcess, emit
    from probewatch.models import resolve_model_path

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if set(configs) - set(CONFIGS) or "off" not in configs:
        raise SystemExit(f"--configs: choose from {','.join(CONFIGS)} (off is the baseline)")
    batches = [int(b) for b in args.batches.split(",")]
    tokenizer = str(resolve_model_path(args.model))
    out = Path(args.out)
    engines: dict[str, _Engine] = {}
    with tempfile.TemporaryDirectory(prefix="probewatch-bench-vllm-") as tmp:
        model_path, model_id, fingerprint, paths = _model_and_bundles(args, tokenizer, Path(tmp))
        serve = ["--fingerprint", fingerprint] if fingerprint is not None else ["--model", model_path]
        serve += ["--metrics-port", "-1", "--no-incidents", "--bundles", *map(str, paths)]
        spec = {
            "model": model_path,
            "tokenizer": tokenizer,
            "load_format": args.load_format,
            "dtype": args.dtype,
            "max_model_len": args.max_model_len,
            "eager": args.eager,
        }
        with SidecarProcess(serve, Path(tmp)) as sidecar:
            spec["layers"] = layers = _probe_layers(sidecar.address)
            envs = _envs(sidecar.address, fingerprint)
            try:
                for config in configs:
                    print(f"starting the {config} engine ...", file=sys.stderr, flush=True)
                    engines[config] = _Engine(config, spec, Path(tmp), envs[config])
                    print(f"  up in {engines[config].ready['startup_s']:.1f}s", file=sys.stderr, flush=True)
                times, checks, lens_ok = _measure(engines, batches, args)
                parity = _parity(engines, args)
            finally:
                for engine in engines.values():
                    engine.close()
    result = _result(args, model_id, engines, layers, batches, times, checks, lens_ok, parity)
    _plot(result["tokens_per_s"], batches, out.with_suffix(".png"))
    emit(result, args.json, _lines(result, out), report=out)
    return 0


def _model_and_bundles(args: argparse.Namespace, tokenizer: str, tmp: Path) -> tuple[str, str, str | None, list[Path]]:
    """(model path, model id, fingerprint to announce (None: the sidecar computes it), bundles)."""
    if args.model_config:
        return _shape_model(Path(args.model_config), tmp)
    from probewatch.bundle_index import default_bundle_dirs, resolve_bundle_specs
    from probewatch.server.sidecar.config import resolve_model_identity

    model_id = resolve_model_identity(args.model, None).model_id
    paths = resolve_bundle_specs(args.bundles, model_id) if args.bundles else default_bundle_dirs(model_id)
    if not paths:
        raise SystemExit(f"no bundles for {model_id}: pass --bundles")
    return tokenizer, model_id, None, paths


def _probe_layers(address: str) -> list[int]:
    import grpc

    from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
    from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        return sorted(pb_grpc.MonitorStub(channel).ListProbes(pb.ListProbesRequest(), timeout=30).layers)


def _envs(address: str, fingerprint: str | None) -> dict[str, dict[str, str]]:
    """Each config's environment: which plugins are off, where the sidecar is."""
    base = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PROBEWATCH_SIDECAR": address}
    if fingerprint is not None:  # a config-only folder has no weights to fingerprint
        base["PROBEWATCH_FINGERPRINT"] = fingerprint
    return {
        "off": {**base, "PROBEWATCH_DISABLE": "1", "VLLM_LENS_DISABLE": "1"},
        "probewatch": {**base, "VLLM_LENS_DISABLE": "1"},
        "vllm_lens": {**base, "PROBEWATCH_DISABLE": "1"},
    }


def _measure(
    engines: dict[str, _Engine], batches: list[int], args: argparse.Namespace
) -> tuple[dict[tuple[str, int], list[float]], dict[str, list[dict]], list[bool]]:
    """At each batch size, a warm-up round then `repeats` rounds of every (config, mode) in a rotating
    order: (seconds per (mode, batch), monitored runs' checks per mode, vllm-lens capture checks)."""
    from rich.progress import Progress

    from probewatch.benchmarks.harness import rotated

    runs = [(c, m) for c in engines for m in (("rows", "pushdown") if c == "probewatch" else (c,))]
    times: dict[tuple[str, int], list[float]] = {}
    checks: dict[str, list[dict]] = {}
    lens_ok: list[bool] = []
    with Progress(transient=True) as progress:
        task = progress.add_task("bench vllm", total=len(batches) * (args.repeats + 1) * len(runs))
        for batch in batches:
            for rep in range(-1, args.repeats):  # rep -1: warm-up, not timed
                for config, mode in rotated(runs, rep):
                    r = engines[config].ask(cmd="run", mode=mode, batch=batch, new_tokens=args.new_tokens)
                    progress.advance(task)
                    if rep < 0:
                        continue
                    times.setdefault((mode, batch), []).append(r["elapsed_s"])
                    if "complete" in r:
                        checks.setdefault(mode, []).append(r)
                    if "lens_captured" in r:
                        lens_ok.append(r["lens_captured"])
    return times, checks, lens_ok


def _parity(engines: dict[str, _Engine], args: argparse.Namespace) -> dict[str, Any]:
    if args.load_format == "dummy":
        return {"skipped": "dummy weights: no HF reference with the same weights"}
    if "probewatch" in engines:
        return engines["probewatch"].ask(cmd="parity")
    return {}


def _result(
    args: argparse.Namespace,
    model_id: str,
    engines: dict[str, _Engine],
    layers: list[int],
    batches: list[int],
    times: dict[tuple[str, int], list[float]],
    checks: dict[str, list[dict]],
    lens_ok: list[bool],
    parity: dict[str, Any],
) -> dict[str, Any]:
    from probewatch.benchmarks.harness import command_line, rates

    _medians, tps_by, best_by = rates(times, lambda key: key[1] * args.new_tokens)
    tps = {f"{m}_b{b}": v for (m, b), v in tps_by.items()}
    best = {f"{m}_b{b}": v for (m, b), v in best_by.items()}  # the least disturbed run of each
    off = engines["off"].ready
    result: dict[str, Any] = {
        "benchmark": "vllm",
        "model": model_id,
        "model_config": args.model_config,
        "load_format": args.load_format,
        "runner": engines["probewatch"].ready.get("runner") if "probewatch" in engines else None,
        "vllm_version": off.get("vllm_version"),
        "device": off.get("device"),
        "dtype": off.get("dtype"),
        "compiled": not args.eager,
        "layers": layers,
        "new_tokens": args.new_tokens,
        "batches": batches,
        "repeats": args.repeats,
        "tokens_per_s": {k: round(v, 2) for k, v in tps.items()},
        "tokens_per_s_best": {k: round(v, 2) for k, v in best.items()},
        "run_seconds": {f"{m}_b{b}": [round(t, 3) for t in v] for (m, b), v in times.items()},
        "startup_s": {c: round(e.ready["startup_s"], 1) for c, e in engines.items()},
        "engine_enforce_eager": {c: e.ready["enforce_eager"] for c, e in engines.items()},
        "monitored_complete": {m: all(c["complete"] for c in v) for m, v in checks.items()},
        "monitored_dropped": {m: sum(c["dropped"] for c in v) for m, v in checks.items()},
        "vllm_lens_captured": all(lens_ok) if lens_ok else None,
        "parity_cos_min": parity.get("cos_min"),
        "parity_rows": parity.get("rows"),
        "parity_skipped": parity.get("skipped"),
        "command": command_line("vllm"),
    }
    top = max(batches)
    for mode in ("rows", "pushdown", "vllm_lens"):
        if f"{mode}_b{top}" in tps:
            result[f"ratio_{mode}"] = round(tps[f"{mode}_b{top}"] / tps[f"off_b{top}"], 3)
            result[f"ratio_{mode}_best"] = round(best[f"{mode}_b{top}"] / best[f"off_b{top}"], 3)
    return result


def _lines(result: dict[str, Any], out: Path) -> list[str]:
    lines = [f"{k}: {v:.1f} tok/s" for k, v in sorted(result["tokens_per_s"].items())]
    keys = ("ratio_rows", "ratio_pushdown", "ratio_vllm_lens", "parity_cos_min")
    lines += [f"{k}: {result[k]}" for k in keys if k in result]
    lines.append(f"start-up: {result['startup_s']}; report {out} (+ .png)")
    return lines


def _plot(tps: dict[str, float], batches: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    modes = sorted({k.rsplit("_b", 1)[0] for k in tps}, key=list(MODES).index)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        xs = [j + i * width for j in range(len(batches))]
        ax.bar(xs, [tps.get(f"{mode}_b{b}", 0.0) for b in batches], width, label=mode)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
    ax.set_ylabel("generated tokens/s (median)")
    ax.set_title("vLLM: unmonitored vs probewatch vs vllm-lens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _shape_model(config_dir: Path, tmp: Path) -> tuple[str, str, str, list[Path]]:
    """A config-only model folder: (path, id, fingerprint, random bundles on 4 layers over its depth)."""
    import hashlib

    from probewatch.probes.synthetic import write_synthetic_bundles

    config_path = config_dir / "config.json"
    if not config_path.is_file():
        raise SystemExit(f"--model-config {config_dir}: no config.json there")
    config = json.loads(config_path.read_text())
    text = config.get("text_config") or config
    d_model, n_layers = int(text["hidden_size"]), int(text["num_hidden_layers"])
    model_id = f"shape:{config_dir.name}"
    fingerprint = "pwfp1:" + hashlib.sha256(config_path.read_bytes()).hexdigest()[:32]
    layers = sorted({max(0, n_layers * k // 4 - 1) for k in (1, 2, 3)} | {n_layers - 2})
    paths = write_synthetic_bundles(
        tmp / "bundles",
        d_model=d_model,
        layers=layers,
        per_layer=1,
        prefix="bench",
        model_id=model_id,
        fingerprint=fingerprint,
        n_layers=n_layers,
        threshold=1e9,
        version="bench",
    )
    return str(config_dir.resolve()), model_id, fingerprint, paths
