"""The command-line contract shared by the CLI and the benchmarks: one definition of --model,
--bundles and --json, and the --json output (one JSON object/list as the last stdout line).

Core, not `probewatch.cli`: nothing imports the CLI but the CLI, and the benchmarks
(`probewatch.benchmarks`) parse the same flags. Only argparse/json are imported here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from probewatch.models.registry import REFERENCE_MODEL


def add_model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=REFERENCE_MODEL,
        help=f"registry name, local HF folder or hub id (default: {REFERENCE_MODEL}, provisioned on first use)",
    )


def add_data_dir_arg(parser: argparse.ArgumentParser) -> None:
    """`--data-dir`: the public datasets the built-in data is read from (None = $PROBEWATCH_DATA)."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="public datasets folder (default: $PROBEWATCH_DATA); see docs/datasets.md for the layout",
    )


def layer_list(value: str) -> list[int]:
    """An argparse `type` for layer lists: '9', '3,9,15' or the range '4-12' (inclusive); the train CLI and the
    quality benchmark's `--layers` read the same forms."""
    try:
        if "-" in value and "," not in value:
            lo, hi = value.split("-", 1)
            return list(range(int(lo), int(hi) + 1))
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected layers like '9' or '3,9,15' or '4-12', got {value!r}") from None


def add_bundles_arg(parser: argparse.ArgumentParser, help: str) -> None:
    """`--bundles DIR ...`, repeatable (each use extends the list); None = the command's default."""
    parser.add_argument("--bundles", nargs="+", action="extend", default=None, metavar="DIR", help=help)


def add_extra_data_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    """`--extra-data JSONL ...`, repeatable: labelled dialogues such as reviewed incidents."""
    parser.add_argument("--extra-data", type=Path, nargs="+", action="extend", default=[], metavar="JSONL", help=help)


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object/list as the last stdout line")


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=float) + "\n")
    sys.stdout.flush()


_BYTE_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "KI": 1 << 10, "MI": 1 << 20, "GI": 1 << 30}


def byte_size(text: str) -> int:
    """`536870912`, `512Mi`, `1G` -> bytes (the Kubernetes quantity suffixes operators already use);
    an argparse `type=` (ArgumentTypeError on anything else)."""
    value = text.strip()
    digits = value.rstrip("KMGikmgBb")
    unit = value[len(digits) :].upper().removesuffix("B")
    if unit not in _BYTE_UNITS or not digits.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte size (e.g. 536870912, 512Mi, 1G)")
    return int(digits) * _BYTE_UNITS[unit]
