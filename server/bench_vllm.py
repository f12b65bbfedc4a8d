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
    parser.add_argument("--out", default="runs/bench-vllm.json", help="report path (the plot goes next to it)")


# -- parent ---------------------------------------------------------------------------------------------
class _Engine:
    """One engine worker process; a line protocol over its stdin / stdout."""

    def __init__(self, config: str, args: argparse.Namespace, model_path: str, layers: list[int], env: dict) -> None:
        self.config = config
        self.log = open(Path(args.workdir) / f"engine-{config}.log", "w")  # noqa: SIM115 - lives with the process
        cmd = [sys.executable, "-m", "probewatch.server.bench_vllm", config, model_path, ",".join(map(str, layers))]
        if args.eager:
            cmd.append("--eager")
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

    from probewatch.bundle_index import default_bundle_dirs, resolve_bundle_specs
    from probewatch.models import resolve_model_path
    from probewatch.server.bench import SidecarProcess, _emit
    from probewatch.server.sidecar import resolve_model_identity

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if set(configs) - set(CONFIGS) or "off" not in configs:
        raise SystemExit(f"--configs: choose from {','.join(CONFIGS)} (off is the baseline)")
    batches = [int(b) for b in args.batches.split(",")]
    model_path = str(resolve_model_path(args.model))
    identity = resolve_model_identity(args.model, None)
    paths = (
        resolve_bundle_specs(args.bundles, identity.model_id)
        if args.bundles
        else default_bundle_dirs(identity.model_id)
    )
    if not paths:
        raise SystemExit(f"no bundles for {identity.model_id}: pass --bundles")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    engines: dict[str, _Engine] = {}
    with tempfile.TemporaryDirectory(prefix="probewatch-bench-vllm-") as tmp:
        args.workdir = tmp
        serve = ["--model", model_path, "--metrics-port", "-1", "--no-incidents", "--bundles", *map(str, paths)]
        with SidecarProcess(serve, Path(tmp)) as sidecar:
            import grpc

            from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
            from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc

            with grpc.insecure_channel(sidecar.address) as channel:
                layers = sorted(pb_grpc.MonitorStub(channel).ListProbes(pb.ListProbesRequest(), timeout=30).layers)
            base = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PROBEWATCH_SIDECAR": sidecar.address}
            envs = {
                "off": {**base, "PROBEWATCH_DISABLE": "1", "VLLM_LENS_DISABLE": "1"},
                "probewatch": {**base, "VLLM_LENS_DISABLE": "1"},
                "vllm_lens": {**base, "PROBEWATCH_DISABLE": "1"},
            }
            try:
                for config in configs:
                    print(f"starting the {config} engine ...", file=sys.stderr, flush=True)
                    engines[config] = _Engine(config, args, model_path, layers, envs[config])
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
                parity = engines["probewatch"].ask(cmd="parity") if "probewatch" in engines else {}
            finally:
                for engine in engines.values():
                    engine.close()
    tps = {f"{m}_b{b}": b * args.new_tokens / statistics.median(v) for (m, b), v in times.items()}
    # the least disturbed run of each: on a shared machine the medians carry other people's load
    best = {f"{m}_b{b}": b * args.new_tokens / min(v) for (m, b), v in times.items()}
    result: dict[str, Any] = {
        "benchmark": "vllm",
        "model": identity.model_id,
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
def _worker(config: str, model_path: str, layers: list[int], eager: bool) -> None:
    import torch
    from vllm import LLM, SamplingParams

    t0 = time.monotonic()
    llm = LLM(
        model_path,
        dtype="float32",
        max_model_len=1024,
        max_num_seqs=16,
        enforce_eager=eager,
        kv_cache_memory_bytes=1 << 30,
        seed=0,
    )
    startup = time.monotonic() - t0
    capture = None
    if config == "probewatch":
        from probewatch.server.vllm.capture import captures

        capture = captures()[0]
    tok = llm.get_tokenizer()
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    enforce_eager = bool(llm.llm_engine.vllm_config.model_config.enforce_eager)
    _say({"startup_s": startup, "enforce_eager": enforce_eager})
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
            import probewatch.server.vllm as pv

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
    model = AutoModelForCausalLM.from_pretrained(llm.llm_engine.vllm_config.model_config.model, dtype=torch.float32)
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


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")], "--eager" in sys.argv[4:])
    os._exit(0)
