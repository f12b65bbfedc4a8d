"""One vLLM engine per process.

    python run.py plain|ehs|ehs-example [OUT_PREFIX] [--runs N] [--eager] [--prefix-caching] [--no-chunked]
        [--max-num-batched-tokens N] [--no-async] [--repeat-prompts]

Writes OUT_PREFIX.json (token ids, timings, config flags, metrics) and, for ehs, OUT_PREFIX.pt
(captured rows per prompt index: {pos: [n_layers, hidden]}); with --repeat-prompts also
OUT_PREFIX.repeat.pt. OUT_PREFIX defaults to runs/vllm-ehs/<mode> below the current directory;
ehs-example lets vLLM's ExampleHiddenStatesConnector write into OUT_PREFIX.example_out/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common  # noqa: F401  (env + metadata patch first)
from common import DEFAULT_OUT_DIR, ENGINE_ARGS, MODEL, PROMPTS, ehs_kwargs, params


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("out", nargs="?", help="output prefix (default: runs/vllm-ehs/<mode>)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--eager", action="store_true")
    ap.add_argument("--prefix-caching", action="store_true")
    ap.add_argument("--no-chunked", action="store_true")
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--no-async", action="store_true")
    ap.add_argument("--repeat-prompts", action="store_true", help="second pass reuses prompts (prefix-cache hits)")
    a = ap.parse_args()
    if a.out is None:
        a.out = str(DEFAULT_OUT_DIR / a.mode)
    return a


def engine_kwargs(a: argparse.Namespace) -> dict:
    """ENGINE_ARGS with the command line's engine flags and the mode's connector settings."""
    kw = dict(ENGINE_ARGS)
    if a.eager:
        kw["enforce_eager"] = True
    if a.prefix_caching:
        kw["enable_prefix_caching"] = True
    if a.no_chunked:
        kw["enable_chunked_prefill"] = False
    if a.max_num_batched_tokens:
        kw["max_num_batched_tokens"] = a.max_num_batched_tokens
    if a.no_async:
        kw["async_scheduling"] = False
    if a.mode == "ehs":
        kw.update(ehs_kwargs())
    elif a.mode == "ehs-example":
        extra = {"shared_storage_path": a.out + ".example_out"}
        kw.update(ehs_kwargs("ExampleHiddenStatesConnector", None, extra))
    return kw


def engine_info(llm, a: argparse.Namespace, startup: float) -> dict:
    """The engine's effective configuration, plus its model runner's details when reachable."""
    vc = llm.llm_engine.vllm_config
    info = {
        "mode": a.mode,
        "args": vars(a),
        "startup_s": startup,
        "enforce_eager": vc.model_config.enforce_eager,
        "compilation_mode": str(vc.compilation_config.mode),
        "cudagraph_mode": str(vc.compilation_config.cudagraph_mode),
        "enable_prefix_caching": vc.cache_config.enable_prefix_caching,
        "enable_chunked_prefill": vc.scheduler_config.enable_chunked_prefill,
        "max_num_batched_tokens": vc.scheduler_config.max_num_batched_tokens,
        "async_scheduling": vc.scheduler_config.async_scheduling,
        "spec": repr(vc.speculative_config),
        "use_v2_model_runner": vc.use_v2_model_runner,
    }
    try:
        runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
        info["runner"] = type(runner).__module__ + "." + type(runner).__name__
        info["kv_groups"] = [
            (type(g.kv_cache_spec).__name__, g.kv_cache_spec.block_size, len(g.layer_names))
            for g in runner.kv_cache_config.kv_cache_groups
        ]
        info["num_blocks"] = runner.kv_cache_config.num_blocks
        model = runner.get_model()
        info["aux_layers"] = list(getattr(getattr(model, "model", model), "aux_hidden_state_layers", ()))
    except Exception as e:  # noqa: BLE001
        info["runner_err"] = repr(e)
    return info


def captures_by_prompt(outs, capture: dict) -> dict:
    """The captured rows per prompt index (the engine may suffix the internal request ids)."""
    captures = {}
    for idx, o in enumerate(outs):
        keys = [k for k in capture if k == o.request_id or k.startswith(o.request_id + "-")]
        if keys:
            captures[idx] = {pos: r.clone() for pos, r in capture[keys[0]].items()}
    return captures


def record_first_run(info: dict, outs, hs_connector) -> tuple[list, dict]:
    """Token ids, request details and captures of the first (warm-up) run; returns (token_ids, captures)."""
    token_ids = [list(o.outputs[0].token_ids) for o in outs]
    info["prompt_token_ids"] = [list(o.prompt_token_ids) for o in outs]
    info["request_ids"] = [o.request_id for o in outs]
    info["kv_transfer_params"] = [getattr(o, "kv_transfer_params", None) for o in outs]
    info["capture_keys"] = sorted(hs_connector.CAPTURE)
    info["steps_first_run"] = [{k: list(v) for k, v in s.items()} for s in hs_connector.STEPS]
    return token_ids, captures_by_prompt(outs, hs_connector.CAPTURE)


def generate_runs(llm, p, a: argparse.Namespace, info: dict) -> tuple[list | None, dict | None, list[dict]]:
    """One warm-up run (recorded into info) then a.runs timed runs; returns (token_ids, captures, runs)."""
    runs = []
    token_ids = None
    captures = None
    import hs_connector

    for i in range(a.runs + 1):
        hs_connector.CAPTURE.clear()
        hs_connector.STEPS.clear()
        t = time.perf_counter()
        c = time.process_time()
        outs = llm.generate(PROMPTS, p, use_tqdm=False)
        dt = time.perf_counter() - t
        dc = time.process_time() - c
        ntok = sum(len(o.outputs[0].token_ids) for o in outs)
        if i == 0:
            token_ids, captures = record_first_run(info, outs, hs_connector)
        else:
            runs.append(
                {
                    "s": dt,
                    "tokens": ntok,
                    "tok_s": ntok / dt,
                    "cpu_s": dc,
                    "tok_per_cpu_s": ntok / dc,
                    "hs_wait_for_save_s": hs_connector.TIMING["wait_for_save_s"],
                }
            )
            print(f"run {i}: {dt:.2f}s {ntok / dt:.1f} tok/s cpu {dc:.2f}s", flush=True)
        hs_connector.TIMING["wait_for_save_s"] = 0.0
    return token_ids, captures, runs


def repeat_prompts(llm, p, info: dict) -> dict:
    """A second pass over the same prompts (prefix-cache hits); returns its captures per prompt index."""
    import hs_connector

    hs_connector.CAPTURE.clear()
    hs_connector.STEPS.clear()
    outs = llm.generate(PROMPTS, p, use_tqdm=False)
    info["repeat_token_ids"] = [list(o.outputs[0].token_ids) for o in outs]
    info["repeat_steps"] = [{k: list(v) for k, v in s.items()} for s in hs_connector.STEPS]
    return captures_by_prompt(outs, hs_connector.CAPTURE)


def record_metrics(llm, info: dict) -> None:
    """The engine's spec-decode, prefix-cache and generation-token metrics (or why they are missing)."""
    try:
        mets = {}
        for m in llm.get_metrics():
            if "spec_decode" in m.name or "prefix_cache" in m.name or m.name.endswith("generation_tokens"):
                mets[m.name] = getattr(m, "value", None) if hasattr(m, "value") else str(m)
        info["metrics"] = mets
    except Exception as e:  # noqa: BLE001
        info["metrics_err"] = repr(e)


def record_runs(info: dict, token_ids: list | None, runs: list[dict]) -> None:
    info["token_ids"] = token_ids
    info["runs"] = runs
    if runs:
        info["median_tok_s"] = sorted(r["tok_s"] for r in runs)[len(runs) // 2]
        info["median_tok_per_cpu_s"] = sorted(r["tok_per_cpu_s"] for r in runs)[len(runs) // 2]


def main():
    a = parse_args()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)

    import torch
    from vllm import LLM

    kw = engine_kwargs(a)
    t0 = time.perf_counter()
    llm = LLM(MODEL, **kw)
    startup = time.perf_counter() - t0
    info = engine_info(llm, a, startup)
    print("INFO", json.dumps(info), flush=True)

    p = params()
    token_ids, captures, runs = generate_runs(llm, p, a, info)
    if a.repeat_prompts:
        torch.save(repeat_prompts(llm, p, info), a.out + ".repeat.pt")
    record_metrics(llm, info)
    record_runs(info, token_ids, runs)
    with open(a.out + ".json", "w") as fh:
        json.dump(info, fh)
    if captures is not None:
        torch.save(captures, a.out + ".pt")
    print(
        "DONE",
        json.dumps({k: info[k] for k in ("startup_s", "median_tok_s", "median_tok_per_cpu_s") if k in info}),
        flush=True,
    )


if __name__ == "__main__":
    main()
    import os

    os._exit(0)
