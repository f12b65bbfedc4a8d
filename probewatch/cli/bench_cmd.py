"""`probewatch bench quality|overhead|ingest|soak|capture|vllm|review`: slow quality, speed and robustness checks.

Each subcommand's implementation lives beside the code it measures; this module only parses
arguments and dispatches, so the heavy imports happen on use.
"""

from __future__ import annotations

import argparse
import importlib

from probewatch.cli.common import add_json_arg, add_model_arg

# subcommand -> (module, function, help)
BENCHMARKS = {
    "capture": (
        "probewatch.benchmarks.capture",
        "main",
        "residual capture cost on a batch forward (hooked vs unhooked)",
    ),
    "quality": (
        "probewatch.training.bench_quality",
        "main",
        "train + evaluate every behaviour; writes docs/quality.md",
    ),
    "overhead": (
        "probewatch.benchmarks.overhead_ingest",
        "overhead_main",
        "generated tokens/s: monitoring off vs raw rows vs pushdown",
    ),
    "ingest": (
        "probewatch.benchmarks.overhead_ingest",
        "ingest_main",
        "sidecar ingest rate vs a raw socket copy of the same bytes",
    ),
    "vllm": (
        "probewatch.benchmarks.vllm",
        "vllm_main",
        "vLLM tokens/s: unmonitored (compiled) vs probewatch rows / pushdown vs vllm-lens (run in .venv-vllm)",
    ),
    "soak": (
        "probewatch.benchmarks.soak",
        "soak_main",
        "sidecar under sustained load with bad input and one kill -9 / restart: latency, RSS, rejections",
    ),
    "review": (
        "probewatch.benchmarks.review",
        "main",
        "review queue response times over real HTTP with 10,000 incidents in the store",
    ),
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="benchmarks: detection quality and monitoring overhead")
    bsub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    for name, (module, func, help_text) in BENCHMARKS.items():
        p = bsub.add_parser(name, help=help_text)
        add_model_arg(p)
        add_json_arg(p)
        mod = importlib.import_module(module) if _exists(module) else None
        if mod is not None and hasattr(mod, "add_arguments_" + name):
            getattr(mod, "add_arguments_" + name)(p)
        p.set_defaults(func=_dispatch(module, func))


def _exists(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _dispatch(module: str, func: str):
    def run(args: argparse.Namespace) -> int:
        from probewatch.errors import ProbewatchError

        if not _exists(module):
            raise ProbewatchError(f"benchmark module {module} is not installed")
        return int(getattr(importlib.import_module(module), func)(args) or 0)

    return run
