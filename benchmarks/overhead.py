"""`probewatch bench overhead`: what live monitoring costs a generating model, as ratios in one run.

Generated tokens/s of the model with monitoring off, streaming raw residual rows, and with
projection pushdown, alternating the three modes in every repeat in a rotating order (drift and
order effects on a shared machine hit all of them equally) and reporting medians, best runs and
ratios. The sidecar runs in its own process, as beside a production server. Monitored runs must
deliver: each run's dropped chunks and scored tokens are reported, so a fast-because-it-dropped
result shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from probewatch.arguments import add_bundles_arg
from probewatch.benchmarks.harness import add_common_args

MODES = ("off", "rows", "pushdown")
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run (fixed: min = max)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per generate() call")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats of (off, rows, pushdown)")
    add_bundles_arg(parser, "bundles (default: shipped for the model; else random probes on 3 layers)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of off,rows,pushdown")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads for the model (0: torch's default). On a shared CPU, 1 removes "
        "OpenMP spin-contention that otherwise makes run times vary 5x",
    )


def main(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from probewatch.benchmarks.harness import SidecarProcess, emit
    from probewatch.models import load_model

    modes = _modes(args.modes)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    with tempfile.TemporaryDirectory(prefix="probewatch-bench-") as tmp_name:
        tmp = Path(tmp_name)
        paths, bundle_note = _bundles(args.bundles, loaded, tmp / "bundles")
        serve_args = ["--model", loaded.path, "--metrics-port", "-1", "--no-incidents"]
        with SidecarProcess([*serve_args, "--bundles", *map(str, paths)], tmp) as sidecar:
            plan, times, checks = _measure(loaded, sidecar.address, modes, args)
    result = _result(args, loaded, modes, times, checks, plan)
    result.update(bundles=bundle_note, probes=len(paths))
    emit(result, args.json, _lines(result, modes))
    return 0


def _modes(spec: str) -> list[str]:
    modes = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown or not modes:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}; choose from off,rows,pushdown")
    return modes


def _bundles(given: list[str] | None, loaded: Any, out: Path) -> tuple[list[Path], str]:
    """The bundles served and what they are: given, shipped for the model, else random on 3 layers."""
    from probewatch.bundle_index import default_bundle_dirs, resolve_bundle_specs

    if given:
        return resolve_bundle_specs(given, loaded.model_id), "given"
    paths = default_bundle_dirs(loaded.model_id)
    if paths:
        return paths, "shipped"
    from probewatch.probes.synthetic import write_synthetic_bundles

    n = loaded.n_layers
    paths = write_synthetic_bundles(
        out,
        d_model=loaded.d_model,
        layers=[n // 3, n // 2, 2 * n // 3],
        prefix="bench",
        model_id=loaded.model_id,
        fingerprint=loaded.fingerprint,
        n_layers=n,
        threshold=1e9,
        version="bench",
    )
    return paths, "random (no shipped bundles)"


def _measure(loaded: Any, address: str, modes: list[str], args: argparse.Namespace) -> tuple[Any, dict, dict]:
    """Attach to the sidecar, warm every mode up, then time `repeats` rotations of the modes:
    (the monitoring plan, seconds per mode, per monitored run its delivery check)."""
    from probewatch.benchmarks.harness import rotated
    from probewatch.server.client.hf_attach import Plan, attach

    model, tok = loaded.model, loaded.tokenizer
    monitor = attach(model, tok, sidecar=address, wait_s=30, result_timeout_s=60)
    if not monitor.up:
        raise SystemExit(f"could not connect to the benchmark sidecar at {address}")
    listing = monitor.link.listing if monitor.link is not None else None
    if listing is None:
        raise SystemExit(f"the benchmark sidecar at {address} sent no probe listing")
    plan = Plan.from_listing(listing, "pushdown", monitor.device)  # which layers can push down
    run = _runner(model, monitor, _generate_kwargs(tok, args))
    for mode in modes:  # warm-up (allocator, kernels, connection)
        run(mode)
    times: dict[str, list[float]] = {m: [] for m in modes}
    checks: dict[str, list[dict]] = {m: [] for m in modes if m != "off"}
    for rep in range(args.repeats):
        for mode in rotated(modes, rep):
            elapsed, check = run(mode)
            times[mode].append(elapsed)
            if mode != "off":
                checks[mode].append(check)
    monitor.detach()
    return plan, times, checks


def _generate_kwargs(tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    from probewatch.data.chat import render

    prompt = render(tok, [{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    enc = tok([prompt] * args.batch, add_special_tokens=False, return_tensors="pt")
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens,
        "do_sample": False,
        "pad_token_id": tok.pad_token_id,
    }


def _runner(model: Any, monitor: Any, kwargs: dict[str, Any]):
    """run(mode) -> (seconds, check): one timed generate(); monitored runs then wait (untimed) for
    every result, which must arrive and be complete."""
    import torch

    from probewatch.benchmarks.harness import timed

    plain = type(model).generate  # the unwrapped method: monitoring off, no hooks at all

    def run(mode: str) -> tuple[float, dict]:
        with torch.inference_mode():
            if mode == "off":
                return timed(lambda: plain(model, **kwargs)), {}
            monitor.set_mode(mode)
            elapsed = timed(lambda: model.generate(**kwargs))
        results = [h.result(60) for h in monitor.last_generations]
        return elapsed, {
            "tokens_scored": sum(r.tokens_scored for r in results),
            "dropped": sum(r.dropped_chunks for r in results),
            "complete": all(r.status == "closed" for r in results),
        }

    return run


def _result(
    args: argparse.Namespace, loaded: Any, modes: list[str], times: dict, checks: dict, plan: Any
) -> dict[str, Any]:
    import torch

    from probewatch.benchmarks.harness import rates

    tokens = args.new_tokens * args.batch
    medians, tps, best = rates(times, lambda _mode: tokens)
    param = next(loaded.model.parameters())
    result: dict[str, Any] = {
        "benchmark": "overhead",
        "model": loaded.model_id,
        "device": str(param.device),
        "dtype": str(param.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
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
    return result


def _lines(result: dict[str, Any], modes: list[str]) -> list[str]:
    tps, best, medians = result["tokens_per_s"], result["best_tokens_per_s"], result["median_seconds"]
    lines = [
        f"overhead on {result['model']} ({result['device']}, {result['dtype']}, batch {result['batch']}, "
        f"{result['new_tokens']} new tokens, {result['repeats']} alternating repeats, {result['probes']} "
        f"{result['bundles']} probes on layers {result['layers']}):"
    ]
    for mode in modes:
        lines.append(
            f"  {mode:9} {tps[mode]:8.2f} tokens/s (median {medians[mode] * 1000:.0f} ms; "
            f"best run {best[mode]:.2f} tokens/s)"
        )
    lines += [f"  {key} = {result[key]:.3f}" for key in sorted(k for k in result if "ratio" in k)]
    lines.append(
        f"  dropped chunks: {result['dropped_chunks']}; every monitored run complete: {result['all_complete']}"
    )
    return lines
