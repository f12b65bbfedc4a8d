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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
CONFIGS = ("off", "probewatch", "vllm_lens")


def add_arguments_vllm(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence (min = max)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats per batch size")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--eager", action="store_true", help="run every engine eager (default: vLLM's compiled mode)")
    parser.add_argument("--bundles", nargs="+", default=None, help="bundles (default: shipped for the model)")
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


# -- parent ---------------------------------------------------------------------------------------------
class _Engine:
    """One engine worker process; a line protocol over its stdin / stdout."""

    def __init__(self, config: str, args: argparse.Namespace, layers: list[int], env: dict) -> None:
        self.config = config
        self.log = open(Path(args.workdir) / f"engine-{config}.log", "w")  # noqa: SIM115 - lives with the process
        spec = json.dumps({**args.engine_spec, "layers": layers})
        cmd = [sys.executable, "-m", "probewatch.benchmarks.vllm", config, spec]
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


def vllm_main(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from probewatch.benchmarks.overhead_ingest import SidecarProcess, _emit
    from probewatch.bundle_index import default_bundle_dirs, resolve_bundle_specs
    from probewatch.models import resolve_model_path
    from probewatch.server.sidecar.process import resolve_model_identity

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if set(configs) - set(CONFIGS) or "off" not in configs:
        raise SystemExit(f"--configs: choose from {','.join(CONFIGS)} (off is the baseline)")
    batches = [int(b) for b in args.batches.split(",")]
    tokenizer = str(resolve_model_path(args.model))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    engines: dict[str, _Engine] = {}
    with tempfile.TemporaryDirectory(prefix="probewatch-bench-vllm-") as tmp:
        args.workdir = tmp
        if args.model_config:
            model_path, model_id, fingerprint, paths = _shape_model(Path(args.model_config), Path(tmp))
            serve = ["--fingerprint", fingerprint]
        else:
            model_path = tokenizer
            identity = resolve_model_identity(args.model, None)
            model_id, fingerprint = identity.model_id, None
            paths = (
                resolve_bundle_specs(args.bundles, identity.model_id)
                if args.bundles
                else default_bundle_dirs(identity.model_id)
            )
            serve = ["--model", model_path]
        if not paths:
            raise SystemExit(f"no bundles for {model_id}: pass --bundles")
        args.engine_spec = {
            "model": model_path,
            "tokenizer": tokenizer,
            "load_format": args.load_format,
            "dtype": args.dtype,
            "max_model_len": args.max_model_len,
            "eager": args.eager,
        }
        serve += ["--metrics-port", "-1", "--no-incidents", "--bundles", *map(str, paths)]
        with SidecarProcess(serve, Path(tmp)) as sidecar:
            import grpc

            from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
            from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc

            with grpc.insecure_channel(sidecar.address) as channel:
                layers = sorted(pb_grpc.MonitorStub(channel).ListProbes(pb.ListProbesRequest(), timeout=30).layers)
            base = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PROBEWATCH_SIDECAR": sidecar.address}
            if fingerprint is not None:  # a config-only folder has no weights to fingerprint
                base["PROBEWATCH_FINGERPRINT"] = fingerprint
            envs = {
                "off": {**base, "PROBEWATCH_DISABLE": "1", "VLLM_LENS_DISABLE": "1"},
                "probewatch": {**base, "VLLM_LENS_DISABLE": "1"},
                "vllm_lens": {**base, "PROBEWATCH_DISABLE": "1"},
            }
            try:
                for config in configs:
                    print(f"starting the {config} engine ...", file=sys.stderr, flush=True)
                    engines[config] = _Engine(config, args, layers, envs[config])
                    print(f"  up in {engines[config].ready['startup_s']:.1f}s", file=sys.stderr, flush=True)
                runs = [(c, m) for c in configs for m in (("rows", "pushdown") if c == "probewatch" else (c,))]
                times: dict[tuple[str, int], list[float]] = {}
                checks: dict[str, list[dict]] = {}
                lens_ok: list[bool] = []
                with Progress(transient=True) as progress:
                    task = progress.add_task("bench vllm", total=len(batches) * (args.repeats + 1) * len(runs))
                    for batch in batches:
                        for rep in range(-1, args.repeats):  # rep -1: warm-up, not timed
                            k = rep % len(runs)
                            for config, mode in runs[k:] + runs[:k]:
                                r = engines[config].ask(cmd="run", mode=mode, batch=batch, new_tokens=args.new_tokens)
                                progress.advance(task)
                                if rep < 0:
                                    continue
                                times.setdefault((mode, batch), []).append(r["elapsed_s"])
                                if "complete" in r:
                                    checks.setdefault(mode, []).append(r)
                                if "lens_captured" in r:
                                    lens_ok.append(r["lens_captured"])
                parity: dict[str, Any] = {}
                if args.load_format == "dummy":
                    parity = {"skipped": "dummy weights: no HF reference with the same weights"}
                elif "probewatch" in engines:
                    parity = engines["probewatch"].ask(cmd="parity")
            finally:
                for engine in engines.values():
                    engine.close()
    tps = {f"{m}_b{b}": b * args.new_tokens / statistics.median(v) for (m, b), v in times.items()}
    # the least disturbed run of each: on a shared machine the medians carry other people's load
    best = {f"{m}_b{b}": b * args.new_tokens / min(v) for (m, b), v in times.items()}
    result: dict[str, Any] = {
        "benchmark": "vllm",
        "model": model_id,
        "model_config": args.model_config,
        "load_format": args.load_format,
        "runner": engines["probewatch"].ready.get("runner") if "probewatch" in engines else None,
        "vllm_version": engines["off"].ready.get("vllm_version"),
        "device": engines["off"].ready.get("device"),
        "dtype": engines["off"].ready.get("dtype"),
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
        "command": "probewatch bench vllm " + " ".join(sys.argv[3:]),
    }
    top = max(batches)
    for mode, key in (("rows", "ratio_rows"), ("pushdown", "ratio_pushdown"), ("vllm_lens", "ratio_vllm_lens")):
        if f"{mode}_b{top}" in tps:
            result[key] = round(tps[f"{mode}_b{top}"] / tps[f"off_b{top}"], 3)
            result[key + "_best"] = round(best[f"{mode}_b{top}"] / best[f"off_b{top}"], 3)
    out.write_text(json.dumps(result, indent=2) + "\n")
    _plot(tps, batches, out.with_suffix(".png"))
    lines = [f"{k}: {v:.1f} tok/s" for k, v in sorted(tps.items())]
    lines += [
        f"{k}: {result[k]}"
        for k in ("ratio_rows", "ratio_pushdown", "ratio_vllm_lens", "parity_cos_min")
        if k in result
    ]
    lines.append(f"start-up: {result['startup_s']}; report {out} (+ .png)")
    _emit(result, args.json, lines)
    return 0


def _plot(tps: dict[str, float], batches: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({k.rsplit("_b", 1)[0] for k in tps}, key=["off", "rows", "pushdown", "vllm_lens"].index)
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


# -- engine worker ------------------------------------------------------------------------------------------
def _worker(config: str, spec: dict[str, Any]) -> None:
    import torch
    import vllm
    from vllm import LLM, SamplingParams

    layers = spec["layers"]
    gpu = torch.cuda.is_available()
    memory = {"gpu_memory_utilization": 0.85} if gpu else {"kv_cache_memory_bytes": 1 << 30}
    t0 = time.monotonic()
    llm = LLM(
        spec["model"],
        tokenizer=spec["tokenizer"],
        load_format=spec["load_format"],
        dtype=spec["dtype"] or ("bfloat16" if gpu else "float32"),
        max_model_len=spec["max_model_len"],
        max_num_seqs=16,
        enforce_eager=spec["eager"],
        seed=0,
        **memory,
    )
    startup = time.monotonic() - t0
    capture = None
    if config == "probewatch":
        from probewatch.server.client.vllm_plugin.capture import captures

        found = captures()
        if not found:
            raise SystemExit(
                "the probewatch plugin did not engage on this engine (see the log's 'monitoring OFF' line)"
            )
        capture = found[0]
    tok = llm.get_tokenizer()
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    model_config = llm.llm_engine.vllm_config.model_config
    _say(
        {
            "startup_s": startup,
            "enforce_eager": bool(model_config.enforce_eager),
            "runner": capture.runner_name if capture is not None else None,
            "vllm_version": getattr(vllm, "__version__", None),
            "device": torch.cuda.get_device_name(0) if gpu else "cpu",
            "dtype": str(model_config.dtype),
        }
    )
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            _say({})
            return
        if cmd["cmd"] == "parity":
            _say(_parity(llm, capture, layers, tok))
            continue
        extra = {"output_residual_stream": layers} if config == "vllm_lens" else None
        params = SamplingParams(
            max_tokens=cmd["new_tokens"], min_tokens=cmd["new_tokens"], temperature=0, ignore_eos=True, extra_args=extra
        )
        if capture is not None:
            capture.set_mode(cmd["mode"])
            import probewatch.server.client.vllm_plugin as pv

            before = set(pv.results())
        t0 = time.perf_counter()
        with torch.inference_mode():
            outputs = llm.generate([prompt] * cmd["batch"], params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        reply: dict[str, Any] = {"elapsed_s": elapsed, "tokens": sum(len(o.outputs[0].token_ids) for o in outputs)}
        if config == "vllm_lens":  # the peer really captured (its activations came back), else the run is void
            acts = [getattr(o, "activations", None) for o in outputs]
            reply["lens_captured"] = all(isinstance(a, dict) and a.get("residual_stream") is not None for a in acts)
        if capture is not None:
            fresh = [h.result(60) for rid, h in pv.results().items() if rid not in before]  # not timed
            reply["complete"] = len(fresh) == cmd["batch"] and all(r.status == "closed" for r in fresh)
            reply["dropped"] = sum(r.dropped_chunks for r in fresh)
        _say(reply)


def _parity(llm: Any, capture: Any, layers: list[int], tok: Any) -> dict[str, Any]:
    """Cosine between the plugin's captured rows and HF's capture of the same layers (fp32), same tokens."""
    import torch
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    from probewatch.capture import run_forward

    kept: list[Any] = []
    enqueue = capture.client.enqueue

    def keep(block: Any) -> bool:  # keep the rows, send nothing
        kept.append(block)
        return True

    capture.client.enqueue = keep
    capture.set_mode("rows")
    try:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": PROMPT}], tokenize=True, add_generation_prompt=True
        )
        if not isinstance(prompt, list):
            prompt = list(prompt["input_ids"])
        (out,) = llm.generate(
            [{"prompt_token_ids": prompt}], SamplingParams(max_tokens=16, temperature=0), use_tqdm=False
        )
    finally:
        capture.client.enqueue = enqueue
    ids = prompt + list(out.outputs[0].token_ids)
    model = AutoModelForCausalLM.from_pretrained(
        llm.llm_engine.vllm_config.model_config.model, dtype=torch.float32, use_kernels=False
    )
    # the reference is the HF capture the probes were trained on (decoder layer L's output, before any
    # final norm): `hidden_states[L + 1]` equals it except for the last layer, which HF returns normed
    with torch.inference_mode():
        hidden = run_forward(model, sorted({b.layer for b in kept}), torch.tensor([ids]))
    cos = []
    for block in kept:
        for _h, row, pos, _tok in block.rows():
            ref = hidden[block.layer][0, pos]
            cos.append(float(torch.nn.functional.cosine_similarity(block.host[row].float(), ref, dim=0)))
    return {"cos_min": min(cos) if cos else None, "rows": len(cos)}


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write("BENCH " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _shape_model(config_dir: Path, tmp: Path) -> tuple[str, str, str, list[Path]]:
    """A config-only model folder: (path, id, fingerprint, random bundles on 4 layers over its depth)."""
    import hashlib

    from probewatch.benchmarks.overhead_ingest import random_bundles

    config_path = config_dir / "config.json"
    if not config_path.is_file():
        raise SystemExit(f"--model-config {config_dir}: no config.json there")
    config = json.loads(config_path.read_text())
    text = config.get("text_config") or config
    d_model, n_layers = int(text["hidden_size"]), int(text["num_hidden_layers"])
    model_id = f"shape:{config_dir.name}"
    fingerprint = "pwfp1:" + hashlib.sha256(config_path.read_bytes()).hexdigest()[:32]
    layers = sorted({max(0, n_layers * k // 4 - 1) for k in (1, 2, 3)} | {n_layers - 2})
    paths = random_bundles(tmp / "bundles", model_id, fingerprint, d_model, n_layers, layers, per_layer=1)
    return str(config_dir.resolve()), model_id, fingerprint, paths


if __name__ == "__main__":
    _worker(sys.argv[1], json.loads(sys.argv[2]))
    os._exit(0)
