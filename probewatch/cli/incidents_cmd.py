"""`probewatch incidents list|show|ack|resolve|reopen|delete|export|migrate`: the incident store from a terminal.

The web review queue is `probewatch review`; `export --labelled` turns its verdicts into training data.
"""

from __future__ import annotations

import argparse

from probewatch.arguments import add_json_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("incidents", help="list, show and review incidents raised by the sidecar")
    isub = p.add_subparsers(dest="incidents_command", metavar="ACTION", required=True)

    def db(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--db",
            default=None,
            metavar="PATH_OR_URL",
            help="incident store: SQLite file or postgresql:// URL "
            "(default: $PROBEWATCH_INCIDENT_DB or $PROBEWATCH_HOME/incidents.sqlite3)",
        )

    ls = isub.add_parser("list", help="newest incidents first")
    db(ls)
    ls.add_argument("--probe", default=None, help="only this probe id")
    ls.add_argument("--status", choices=["open", "acknowledged", "resolved"], default=None)
    ls.add_argument("--generation", default=None, help="only this generation id")
    ls.add_argument(
        "--generation-status",
        choices=["open", "closed", "aborted", "interrupted"],
        default=None,
        help="only incidents whose generation ended so (interrupted: the sidecar stopped mid-generation)",
    )
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

    rm = isub.add_parser(
        "delete",
        help="delete incidents for good (by id, generation, age, or all); the text is overwritten on disk",
    )
    db(rm)
    rm.add_argument("ids", type=int, nargs="*", metavar="ID", help="incident ids")
    rm.add_argument("--generation", default=None, help="every incident of this generation id")
    rm.add_argument(
        "--older-than-days", type=float, default=None, metavar="DAYS", help="every incident older than this"
    )
    rm.add_argument("--all", action="store_true", help="every incident in the store")
    add_json_arg(rm)
    rm.set_defaults(func=_delete)

    from probewatch.cli import incidents_export

    incidents_export.register(isub, db)


def _store(args: argparse.Namespace, readonly: bool = True):
    from probewatch import envs
    from probewatch.server.store import IncidentStore, IncidentStoreError, parse_location

    where = args.db or envs.incident_db()
    path = parse_location(where).path  # None: a database server
    if not readonly and path is not None and not path.is_file():  # review and deletion never create a store
        raise IncidentStoreError(f"no incident store at {path} (pass --db or set PROBEWATCH_INCIDENT_DB)")
    return IncidentStore.open(where, readonly=readonly)


def _list(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        rows = store.find(
            probe=args.probe,
            status=args.status,
            generation_id=args.generation,
            limit=args.limit,
            generation_status=args.generation_status,
        )
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
        events = store.events(args.id)
    finally:
        store.close()
    if args.json:
        print_json({**incident.to_json(), "events": [e.to_json() for e in events]})
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
        "label",
        "severity",
        "assignee",
    ):
        c.print(f"  {key:18} {getattr(incident, key)}")
    c.print(f"  {'prompt':18} {incident.prompt!r}")
    c.print(f"  {'response':18} {incident.response!r}")
    scores = " ".join(f"{int(p)}:{s:+.2f}" for p, s in incident.token_scores)
    c.print(f"  {'token scores':18} {scores or '(none)'}")
    for e in events:
        extra = " ".join(x for x in (e.value or "", f"“{e.comment}”" if e.comment else "") if x)
        c.print(f"  {e.at[:19]}  {e.reviewer}: {e.action} {extra}")
    return 0


def _cli_reviewer() -> str:
    """Who a terminal action is recorded as in the audit trail: the login name."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _set_status(args: argparse.Namespace) -> int:
    store = _store(args, readonly=False)
    try:
        incident = store.set_status(args.id, args.status, args.note, reviewer=_cli_reviewer())
    finally:
        store.close()
    if args.json:
        print_json({k: v for k, v in incident.to_json().items() if k != "token_scores"})
    else:
        print(f"incident {incident.id}: {incident.status}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    import datetime as dt

    from probewatch.errors import ProbewatchError

    if not (args.ids or args.generation or args.older_than_days is not None or args.all):
        raise ProbewatchError("incidents delete: name incident ids, --generation G, --older-than-days N or --all")
    if args.all and (args.ids or args.generation or args.older_than_days is not None):
        raise ProbewatchError("incidents delete: --all deletes everything; do not combine it with other selectors")
    if args.older_than_days is not None and args.older_than_days < 0:
        raise ProbewatchError("incidents delete: --older-than-days must be >= 0")
    before = None
    if args.older_than_days is not None:
        before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=args.older_than_days)
    store = _store(args, readonly=False)
    try:
        deleted = store.delete(ids=args.ids, generation_id=args.generation, before=before, everything=args.all)
    finally:
        store.close()
    if args.json:
        print_json({"deleted": deleted, "db": str(store.path)})
    else:
        print(f"deleted {deleted} incident(s) from {store.path}")
    return 0
