"""`probewatch score`: capture + score a dialogue file offline with one or more bundles."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from probewatch.arguments import add_bundles_arg, add_json_arg, add_model_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("score", help="score every dialogue of a JSONL file with probe bundles (offline)")
    add_model_arg(parser)
    parser.add_argument("--data", type=Path, required=True, help="dialogue JSONL (labels optional)")
    add_bundles_arg(
        parser, "bundle folders, folders of bundles or probe ids (default: the shipped bundles for the model)"
    )
    # `eval` and `calibrate` spell it `--bundle`: accepted here too (hidden)
    parser.add_argument("--bundle", dest="bundles", nargs="+", action="extend", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="write per-dialogue scores as JSONL here")
    add_json_arg(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from probewatch.bundle_index import default_bundle_dirs, resolve_bundle_specs
    from probewatch.data.dialogue import load_dialogues
    from probewatch.errors import ProbewatchError
    from probewatch.family_scoring import add_family_scores
    from probewatch.models import load_model, model_id_for
    from probewatch.probes import ProbeRuntime, load_bundles
    from probewatch.probes.family import find_families
    from probewatch.scoring import score_dialogues

    dialogues = load_dialogues(args.data, require_label=False)
    model_id = model_id_for(args.model)
    paths = resolve_bundle_specs(args.bundles, model_id) if args.bundles else default_bundle_dirs(model_id)
    if not paths:
        raise ProbewatchError(f"no bundles given and none shipped for model {model_id!r}; pass --bundles")
    loaded = load_model(args.model)
    runtime = ProbeRuntime(
        load_bundles(paths, expected_fingerprint=loaded.fingerprint, expected_d_model=loaded.d_model)
    )
    results = score_dialogues(loaded.model, loaded.tokenizer, runtime, dialogues, batch_size=args.batch_size)
    families = find_families(paths)  # a family folder among the bundles: its score is its members' maximum
    add_family_scores(results, families)
    probe_ids = [*runtime.probe_ids, *(f.id for f in families)]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as fh:
            for r in results:
                fh.write(json.dumps(r.__dict__) + "\n")
    summary = _summary(probe_ids, results)
    if args.json:
        print_json(summary)
    else:
        _print_table(probe_ids, results, dialogues)
        for probe_id, s in summary["probes"].items():
            print(
                f"{probe_id}: flagged {s['flagged']}/{s['n']}"
                + (f", AUROC {s['auroc']:.3f}" if s.get("auroc") is not None else ""),
                file=sys.stderr,
            )
    return 0


def _summary(probe_ids: list[str], results) -> dict:
    from probewatch.metrics import auroc

    probes = {}
    for probe_id in probe_ids:
        scored = [r for r in results if probe_id in r.aggregate]
        labels = [r.label for r in scored if r.label is not None]
        entry = {"n": len(scored), "flagged": sum(r.flagged[probe_id] for r in scored)}
        if len(labels) == len(scored) and 0 < sum(labels) < len(labels):
            entry["auroc"] = auroc([r.aggregate[probe_id] for r in scored], labels)
        probes[probe_id] = entry
    return {"n_dialogues": len(results), "probes": probes}


def _print_table(probe_ids: list[str], results, dialogues) -> None:
    from rich.console import Console

    console = Console()
    console.print(score_table(probe_ids, results, dialogues, console.width))


def score_table(probe_ids: list[str], results, dialogues, width: int = 80):
    """Scores whole at any width: a column per probe when they fit, else every probe's score stacked in
    one cell per dialogue; the last message folds into what is left."""
    from rich.text import Text

    from probewatch import tables

    t = tables.table("probe scores (aggregate per dialogue; * = above threshold)")
    tables.key(t, "#", [str(r.index) for r in results], justify="right")
    tables.key(t, "label", ["" if r.label is None else str(r.label) for r in results])
    tables.text(t, "last message")
    probe_widths = [max(len(p), len("+00.00*")) for p in probe_ids]
    wide = tables.fits([len(str(len(results))), 5, 20, *probe_widths], width)
    if wide:
        for p, w in zip(probe_ids, probe_widths):
            t.add_column(p, justify="right", no_wrap=True, min_width=w)
    else:
        t.add_column("scores", no_wrap=True, min_width=tables.stacked_width(probe_ids))
    for r, d in zip(results, dialogues):
        row: list[str | Text] = [str(r.index), "" if r.label is None else str(r.label)]
        row.append(Text(tables.preview(d.messages[-1].content, 160)))
        if wide:
            row += [tables.score_text(r.aggregate.get(p), r.flagged.get(p, False)) for p in probe_ids]
        else:
            row.append(tables.stacked_scores(probe_ids, r.aggregate, r.flagged))
        t.add_row(*row)
    return t
