"""`probewatch bench <name>`: slow quality, speed and robustness checks (one module per benchmark).

A registry of subcommand -> benchmark module (`probewatch.benchmarks.<name>`); every module follows
one contract, `add_cli_args(parser)` and `main(args) -> int` (see `probewatch.benchmarks`), so this
module only builds the parsers and dispatches. Benchmark modules import their heavy dependencies on use.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from types import ModuleType

# subcommand -> (module, help); the order is the order of `probewatch bench --help`
BENCHMARKS: dict[str, tuple[str, str]] = {
    "capture": (
        "probewatch.benchmarks.capture",
        "residual capture cost on a batch forward (hooked vs unhooked)",
    ),
    "quality": (
        "probewatch.benchmarks.quality",
        "train + evaluate every behaviour; writes docs/quality.md",
    ),
    "overhead": (
        "probewatch.benchmarks.overhead",
        "generated tokens/s: monitoring off vs raw rows vs pushdown",
    ),
    "ingest": (
        "probewatch.benchmarks.ingest",
        "sidecar ingest rate vs a raw socket copy of the same bytes",
    ),
    "vllm": (
        "probewatch.benchmarks.vllm",
        "vLLM tokens/s: unmonitored (compiled) vs probewatch rows / pushdown vs vllm-lens (run in .venv-vllm)",
    ),
    "soak": (
        "probewatch.benchmarks.soak",
        "sidecar under sustained load with bad input and one kill -9 / restart: latency, RSS, rejections",
    ),
    "review": (
        "probewatch.benchmarks.review",
        "review queue response times over real HTTP with 10,000 incidents in the store",
    ),
    "evasion": (
        "probewatch.benchmarks.evasion",
        "deception/refusal probes when the prompt says a probe is watching, and under sincerity rewording",
    ),
    "selection": (
        "probewatch.benchmarks.selection",
        "replay the shipped reports' held-out-source choice with today's selection code (drift check)",
    ),
    "threshold": (
        "probewatch.benchmarks.threshold",
        "set the trained bundles' thresholds again with today's rules, on their own data (drift check)",
    ),
    "augmentation": (
        "probewatch.benchmarks.augmentation",
        "a probe fitted with and without sincerity copies, scored under assertions it never saw",
    ),
    "multiple-choice": (
        "probewatch.benchmarks.multiple_choice",
        "multiple-choice answers: a probe on the answer letter vs on the option it names (probes/answer_option.py)",
    ),
    "reading-by-source": (
        "probewatch.benchmarks.reading_by_source",
        "one chosen probe configuration under several token selections, each source of its pool held out",
    ),
    "sweep": (
        "probewatch.benchmarks.sweep",
        "the training sweep's time on one synthetic layer of a pool's shape, and its row scoring",
    ),
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="benchmarks: detection quality and monitoring overhead")
    bsub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        p = bsub.add_parser(name, help=help_text)
        mod = _load(module)
        if mod is not None:
            mod.add_cli_args(p)
        p.set_defaults(func=_dispatch(module))


def _load(module: str) -> ModuleType | None:
    """The benchmark module, or None when it is not installed."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return importlib.import_module(module) if found else None


def _dispatch(module: str):
    def run(args: argparse.Namespace) -> int:
        from probewatch.errors import ProbewatchError

        mod = _load(module)
        if mod is None:
            raise ProbewatchError(f"benchmark module {module} is not installed")
        return int(mod.main(args) or 0)

    return run
