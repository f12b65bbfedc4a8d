"""`probewatch probes list|show`: shipped and user bundles."""

from __future__ import annotations

import argparse
import json

from probewatch.arguments import add_json_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("probes", help="list and inspect probe bundles")
    psub = parser.add_subparsers(dest="probes_command", metavar="ACTION", required=True)
    lst = psub.add_parser("list", help="shipped and user bundles")
    lst.add_argument("--model", default=None, help="only bundles trained for this model id")
    add_json_arg(lst)
    lst.set_defaults(func=_list)
    show = psub.add_parser("show", help="print a bundle's manifest (by id or folder) after verifying it")
    show.add_argument("bundle")
    show.set_defaults(func=_show)


def _list(args: argparse.Namespace) -> int:
    from probewatch.bundle_index import discover

    rows = [b.to_json() for b in discover(args.model)]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no bundles found (shipped or under $PROBEWATCH_HOME/bundles)")
        return 0
    from rich.console import Console

    console = Console()
    console.print(_table(rows, wide=console.width >= WIDE))
    if console.width < WIDE:  # where they live, once per folder rather than a folded column per row
        from pathlib import Path

        folders = sorted({(r["source"], r["model"], str(Path(r["path"]).parent)) for r in rows})
        for source, model, folder in folders:
            console.print(f"{source} bundles for {model}: {folder}/<id>", overflow="fold", markup=False)
    return 0


#: from this many columns the table also shows model, source and path per bundle
WIDE = 140


def _table(rows: list[dict], wide: bool = True):
    """Ids and numbers whole (an id is what `probes show`, `--bundles` and `eval --bundle` take); text folds."""
    from rich.text import Text

    from probewatch import tables

    t = tables.table("probe bundles")
    tables.key(t, "id", [r["id"] for r in rows])
    tables.text(t, "behaviour")
    tables.text(t, "kind")
    tables.key(t, "layer", [str(r["layer"]) for r in rows], justify="right")
    tables.key(t, "threshold", [f"{r['threshold']:+.3f}" for r in rows], justify="right")
    tables.text(t, "tokens → aggregation", ratio=2)
    if wide:
        tables.text(t, "model", ratio=2)
        tables.text(t, "source")
        tables.text(t, "path", ratio=3)
    for r in rows:
        cells = [
            r["id"],
            Text(r["behaviour"]),
            Text(r["kind"]),
            str(r["layer"]),
            f"{r['threshold']:+.3f}",
            Text(f"{r['token_selection']} → {r['aggregation']}"),
        ]
        if wide:
            cells += [Text(r["model"]), Text(r["source"]), Text(r["path"])]
        t.add_row(*cells)
    return t


def _show(args: argparse.Namespace) -> int:
    from probewatch.bundle_index import resolve_bundle_specs
    from probewatch.probes.bundle import load_bundle

    bundle = load_bundle(resolve_bundle_specs([args.bundle])[0])
    print(json.dumps(bundle.manifest.to_dict(), indent=2))
    return 0
