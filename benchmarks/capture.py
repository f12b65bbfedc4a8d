"""`probewatch bench capture`: cost of residual capture on a batch forward (hooked vs unhooked).

Alternates unhooked / hooked forwards so drift on a noisy machine hits both equally; reports
medians over repeats and their ratio.
"""

from __future__ import annotations

import argparse
import statistics

from probewatch.benchmarks.harness import add_common_args, emit


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--layers", default="9", help="comma-separated layers to hook, or 'all'")
    parser.add_argument("--repeats", type=int, default=7)


def main(args: argparse.Namespace) -> int:
    import torch

    from probewatch.benchmarks.harness import timed
    from probewatch.capture import ResidualCapture, RowBlock, find_decoder_layers
    from probewatch.models import load_model

    loaded = load_model(args.model)
    model = loaded.model
    n = len(find_decoder_layers(model))
    layers = list(range(n)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    ids = torch.randint(100, 40000, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))

    def to_cpu(block: RowBlock) -> None:
        block.hidden.to("cpu")

    cap = ResidualCapture(model, layers, keep=False, sink=to_cpu)

    def forward() -> None:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)

    def run(hooked: bool) -> float:
        if hooked:
            cap.attach()
        try:
            return timed(forward)
        finally:
            cap.detach()

    run(False), run(True)  # warm-up
    off, on = [], []
    for _ in range(args.repeats):
        off.append(run(False))
        on.append(run(True))
    result = {
        "benchmark": "capture",
        "model": loaded.model_id,
        "batch": args.batch,
        "tokens": args.tokens,
        "layers_hooked": len(layers),
        "repeats": args.repeats,
        "unhooked_median_s": statistics.median(off),
        "hooked_median_s": statistics.median(on),
        "hooked_over_unhooked_ratio": statistics.median(on) / statistics.median(off),
    }
    lines = [f"{k:28s} {v:.4f}" if isinstance(v, float) else f"{k:28s} {v}" for k, v in result.items()]
    emit(result, args.json, lines)
    return 0
