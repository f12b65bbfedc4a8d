"""Entry point: builds the argparse tree from the command modules and maps errors to one line.

Each module in COMMAND_MODULES exposes `register(subparsers)`, which adds its parser(s) and sets
`func=<callable(args) -> int>`. Modules import heavy libraries (torch, transformers) inside their
handlers so `probewatch --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from probewatch import __version__

COMMAND_MODULES = [
    "probewatch.cli.models_cmd",
    "probewatch.cli.data_cmd",
    "probewatch.cli.probes_cmd",
    "probewatch.cli.score_cmd",
    "probewatch.cli.env_cmd",
    "probewatch.cli.bench_cmd",
    "probewatch.cli.train_cmd",
    "probewatch.cli.eval_cmd",
    "probewatch.cli.sae_cmd",
    "probewatch.cli.serve_cmd",
    "probewatch.cli.run_cmd",
    "probewatch.cli.demo_cmd",
    "probewatch.cli.incidents_cmd",
    "probewatch.cli.review_cmd",
    "probewatch.cli.vllm_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probewatch",
        description="Deception, refusal and alignment-faking probes that watch an LLM's residual stream.",
    )
    parser.add_argument("--version", action="version", version=f"probewatch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from probewatch import logsafe

    logsafe.install()  # a client's newline cannot forge a log line
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from probewatch.errors import ProbewatchError
    from probewatch.probes.errors import BundleError

    try:
        return int(args.func(args) or 0)
    except (ProbewatchError, BundleError) as exc:
        print(f"probewatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probewatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
