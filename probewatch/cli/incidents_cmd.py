"""`probewatch incidents list|show|ack|resolve`: review the sidecar's incident store."""

from __future__ import annotations

import argparse
from pathlib import Path

from probewatch.cli.common import add_json_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("incidents", help="list, show and review incidents raised by the sidecar")
    isub = p.add_subparsers(dest="incidents_command", metavar="ACTION", required=True)

    def db(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--db",
            type=Path,
            default=None,
            help="incident store (default: $PROBEWATCH_INCIDENT_DB or $PROBEWATCH_HOME/incidents.sqlite3)",
        )

    ls = isub.add_parser("list", help="newest incidents first")
    db(ls)
    ls.add_argument("--probe", default=None, help="only this probe id")
    ls.add_argument("--status", choices=["open", "acknowledged", "resolved"], default=None)
    ls.add_argument("--generation", default=None, help="only this generation id")
    ls.add_argument("--limit", type=int, default=50)
    add_json_arg(ls)
    ls.set_defaults(func=_list)

    show = isub.add_parser("show", help="one incident with its per-token scores and text")
    db(show)
    show.add_argument("id", type=int)
    add_json_arg(show)
    show.set_defaults(func=_show)

    for name, status, help_text in (
        ("ack", "acknowledged", "mark acknowledged (someone is looking)"),
        ("resolve", "resolved", "mark resolved"),
        ("reopen", "open", "mark open again"),
    ):
        q = isub.add_parser(name, help=help_text)
        db(q)
        q.add_argument("id", type=int)
        q.add_argument("--note", default=None, help="review note stored with the incident")
        add_json_arg(q)
        q.set_defaults(func=_set_status, status=status)


def _store(args: argparse.Namespace, readonly: bool = True):
    from probewatch import envs
    from probewatch.server.incidents import IncidentStore

    return IncidentStore.open(args.db or envs.incident_db(), readonly=readonly)


def _list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        rows = store.list(probe=args.probe, status=args.status, generation_id=args.generation, limit=args.limit)
    finally:
        store.close()
    if args.json:
        print_json([{k: v for k, v in r.to_json().items() if k != "token_scores"} for r in rows])
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"incidents ({store.path})")
    for col in ("id", "time", "probe", "behaviour", "score", "threshold", "status", "generation", "response"):
        table.add_column(
            col, overflow="ellipsis", no_wrap=col != "response", max_width=48 if col == "response" else None
        )
    for r in rows:
        table.add_row(
            str(r.id),
            r.created_at[:19],
            r.probe,
            r.behaviour,
            f"{r.score:+.2f}",
            f"{r.threshold:+.2f}",
            r.status,
            r.generation_id,
            (r.response or "").replace("\n", " "),
        )
    Console().print(table)
    if not rows:
        print("no incidents")
    return 0


def _show(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        incident = store.get(args.id)
    finally:
        store.close()
    if args.json:
        print_json(incident.to_json())
        return 0
    from rich.console import Console

    c = Console()
    c.print(f"[bold]incident {incident.id}[/bold]  {incident.status}  {incident.created_at}")
    for key in (
        "generation_id",
        "probe",
        "behaviour",
        "aggregation",
        "score",
        "threshold",
        "early",
        "generation_status",
        "model_fingerprint",
        "bundle_version",
        "metadata",
        "note",
    ):
        c.print(f"  {key:18} {getattr(incident, key)}")
    c.print(f"  {'prompt':18} {incident.prompt!r}")
    c.print(f"  {'response':18} {incident.response!r}")
    scores = " ".join(f"{int(p)}:{s:+.2f}" for p, s in incident.token_scores)
    c.print(f"  {'token scores':18} {scores or '(none)'}")
    return 0


def _set_status(args: argparse.Namespace) -> int:
    store = _store(args, readonly=False)
    try:
        incident = store.set_status(args.id, args.status, args.note)
    finally:
        store.close()
    if args.json:
        print_json({k: v for k, v in incident.to_json().items() if k != "token_scores"})
    else:
        print(f"incident {incident.id}: {incident.status}")
    return 0
