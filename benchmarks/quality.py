"""`probewatch bench quality`: train + evaluate every behaviour and write docs/quality.md.

A thin adapter to the benchmark contract (`add_cli_args` / `main`) until the benchmark itself
(`probewatch.training.bench_quality`: `add_arguments_quality`, `main`) moves into this package;
it is imported on use, so the training stack loads only for this subcommand.
"""

from __future__ import annotations

import argparse

from probewatch.benchmarks.harness import add_common_args


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    from probewatch.training.bench_quality import add_arguments_quality

    add_common_args(parser)
    add_arguments_quality(parser)


def main(args: argparse.Namespace) -> int:
    from probewatch.training.bench_quality import main as quality_main

    return int(quality_main(args) or 0)
