"""`probewatch data convert|export|validate`: the dialogue JSONL contract from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from probewatch.arguments import add_data_dir_arg
from probewatch.behaviours import BEHAVIOURS

#: `data export --set` value for the training pool itself
POOL_SET = "pool"


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

    exp = dsub.add_parser(
        "export",
        help="write a behaviour's built-in pool or one of its out-of-distribution sets (e.g. refusal_val) as JSONL",
    )
    exp.add_argument("--behaviour", required=True, choices=BEHAVIOURS)
    exp.add_argument(
        "--set",
        dest="set_name",
        default=POOL_SET,
        help=f"{POOL_SET} (default: the training pool) or an out-of-distribution set by name, e.g. refusal_val",
    )
    add_data_dir_arg(exp)
    exp.add_argument("--seed", type=int, default=0, help="the builder's seed (training's --seed; default 0)")
    exp.add_argument("--out", "-o", type=Path, required=True, help="output .jsonl")
    exp.set_defaults(func=_export)

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


def _export(args: argparse.Namespace) -> int:
    """The builder's dialogues without the model: what `train` reads except the model's own answers
    (plain traffic, generated long transcripts), which only a run with the model adds."""
    from collections import Counter

    from probewatch.data.dialogue import write_dialogues
    from probewatch.errors import ProbewatchError
    from probewatch.training.datasets import build_behaviour_data

    data = build_behaviour_data(args.behaviour, args.data_dir, seed=args.seed)
    sets = {POOL_SET: data.pool, **data.ood}
    if args.set_name not in sets:
        raise ProbewatchError(f"--set {args.set_name!r}: {args.behaviour} has {', '.join(sorted(sets))}")
    dialogues = sets[args.set_name]
    n = write_dialogues(args.out, dialogues)
    labels = Counter(d.label for d in dialogues)
    print(
        f"wrote {n} dialogues of {args.behaviour} {args.set_name} (label 1: {labels.get(1, 0)}, "
        f"label 0: {labels.get(0, 0)}) to {args.out}",
        file=sys.stderr,
    )
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
