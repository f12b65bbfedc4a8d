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
    from rich.table import Table

    table = Table(title="probe bundles")
    for col in ("id", "behaviour", "kind", "model", "layer", "tokens", "aggregation", "threshold", "source", "path"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["id"],
            r["behaviour"],
            r["kind"],
            r["model"],
            str(r["layer"]),
            r["token_selection"],
            r["aggregation"],
            f"{r['threshold']:.3f}",
            r["source"],
            r["path"],
        )
    Console().print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    from probewatch.bundle_index import resolve_bundle_specs
    from probewatch.probes.bundle import load_bundle

    bundle = load_bundle(resolve_bundle_specs([args.bundle])[0])
    print(json.dumps(bundle.manifest.to_dict(), indent=2))
    return 0
