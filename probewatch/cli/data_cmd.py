"""`probewatch data convert|validate`: the dialogue JSONL contract from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="convert public datasets to dialogue JSONL and validate files")
    dsub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    conv = dsub.add_parser("convert", help="convert statement CSVs / instruction JSON / liar questions to JSONL")
    conv.add_argument("inputs", nargs="+", type=Path)
    conv.add_argument("--out", "-o", type=Path, required=True, help="output .jsonl")
    conv.add_argument(
        "--format",
        choices=["statements", "instructions", "liar-questions"],
        default=None,
        help="input format (default: detected from the file)",
    )
    conv.add_argument(
        "--mode",
        default="instructed-pairs",
        choices=["instructed-pairs", "assertions"],
        help="statements only: RepE instructed pairs (default) or plain assertions",
    )
    conv.add_argument(
        "--label",
        type=int,
        choices=[0, 1],
        default=None,
        help="instructions only: label for every item (default: from the file name)",
    )
    conv.add_argument("--limit", type=int, default=None, help="at most this many dialogues per input file")
    conv.set_defaults(func=_convert)

    val = dsub.add_parser("validate", help="check a dialogue JSONL file; errors name file and line")
    val.add_argument("files", nargs="+", type=Path)
    val.set_defaults(func=_validate)


def _convert(args: argparse.Namespace) -> int:
    from itertools import islice

    from probewatch.data.convert import convert_file
    from probewatch.data.dialogue import write_dialogues

    def generate():
        for path in args.inputs:
            options = {"mode": args.mode, "label": args.label}
            yield from islice(convert_file(path, args.format, **options), args.limit)

    n = write_dialogues(args.out, generate())
    print(f"wrote {n} dialogues to {args.out}", file=sys.stderr)
    print(args.out)
    return 0


def _validate(args: argparse.Namespace) -> int:
    from collections import Counter

    from probewatch.data.dialogue import load_dialogues

    for path in args.files:
        dialogues = load_dialogues(path)
        labels = Counter(d.label for d in dialogues)
        kinds = Counter(d.kind for d in dialogues)
        print(
            f"{path}: {len(dialogues)} dialogues, label 1: {labels.get(1, 0)}, label 0: {labels.get(0, 0)}, "
            f"groups: {len({d.group for d in dialogues})}, kinds: {dict(kinds)}"
        )
    return 0
