"""`probewatch incidents list|show|label|ack|resolve|reopen|delete|export|migrate|rotate-key|move-key|pseudonym`:
the incident store (and its pseudonym key file) from a terminal.

The web review queue is `probewatch review`; `label`, `ack`, `resolve` and `reopen` go through the same
service layer as its forms (`probewatch.server.review.actions.apply`: same rules, same audit trail), and
`export --labelled` turns the verdicts into training data.
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
        # `serve`, `run` and `demo` call it --incident-db: accepted here too (hidden)
        parser.add_argument("--incident-db", dest="db", default=None, help=argparse.SUPPRESS)

    from probewatch.server.store.records import PRIORITIES

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
    ls.add_argument(
        "--priority",
        choices=list(PRIORITIES),
        default=None,
        help="only alerts (normal) or uncertain results (low: the score ended in the probe's band below its "
        "threshold; recorded for review, never alerted)",
    )
    ls.add_argument("--limit", type=int, default=50)
    add_json_arg(ls)
    ls.set_defaults(func=_list)

    show = isub.add_parser("show", help="one incident: its conversation, per-token scores and review trail")
    db(show)
    show.add_argument("id", type=int)
    show.add_argument(
        "--tokens", type=int, default=20, metavar="N", help="show the N highest-scoring tokens (0: all; default 20)"
    )
    show.add_argument(
        "--tokenizer",
        default=None,
        metavar="SPEC",
        help="tokenizer that turns stored token ids into text (default: the probe's model, if on this machine)",
    )
    add_json_arg(show)
    show.set_defaults(func=_show)

    from probewatch.server.store.records import LABELS

    lab = isub.add_parser("label", help="record a verdict (as the review app does; needed before resolve)")
    db(lab)
    lab.add_argument("id", type=int)
    lab.add_argument("--verdict", required=True, choices=LABELS, help="the review app's verdicts")
    _review_args(lab, "comment stored in the audit trail with the verdict")
    lab.set_defaults(func=_review, action="label")

    for name, action, help_text in (
        ("ack", "claim", "claim an incident (acknowledged: someone is looking)"),
        ("resolve", "resolve", "close the review (refused until the incident has a verdict: `incidents label`)"),
        ("reopen", "reopen", "open a resolved incident again"),
    ):
        q = isub.add_parser(name, help=help_text)
        db(q)
        q.add_argument("id", type=int)
        _review_args(q, "comment stored in the audit trail")
        if name == "ack":
            q.add_argument("--takeover", action="store_true", help="take it over from the reviewer who claimed it")
        q.set_defaults(func=_review, action=action)

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

    from probewatch.cli import incidents_keys

    incidents_keys.register(isub, db)


def _review_args(parser: argparse.ArgumentParser, note_help: str) -> None:
    parser.add_argument("--note", default=None, help=note_help)
    parser.add_argument(
        "--reviewer",
        default=None,
        help="who the audit trail records (default: cli:<your login name>); use your review-app name to match",
    )
    add_json_arg(parser)


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
            priority=args.priority,
        )
    finally:
        store.close()
    if args.json:
        print_json([{k: v for k, v in r.to_json().items() if k != "token_scores"} for r in rows])
        return 0
    from rich.console import Console

    from probewatch.cli.incidents_view import list_table

    console = Console()
    console.print(list_table(rows, f"incidents ({store.location.display})", console.width))
    if not rows:
        print("no incidents")
    return 0


def _show(args: argparse.Namespace) -> int:
    if args.tokens < 0:
        from probewatch.errors import ProbewatchError

        raise ProbewatchError(f"incidents show: --tokens must be >= 0 (0: all), got {args.tokens}")
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

    from probewatch.cli.incidents_view import print_incident

    print_incident(Console(), incident, events, _tokenizer(incident, args.tokenizer), top=args.tokens)
    return 0


def _tokenizer(incident, spec: str | None):
    """The tokenizer that decodes the stored token ids, as the review app finds it (never downloaded)."""
    if not (incident.tokens or incident.prompt):
        return None
    from probewatch.server.review.catalog import Catalog

    catalog = Catalog(tokenizer=spec, discover=spec is None)
    return catalog.tokenizer(catalog.manifest(incident.probe, incident.bundle_version, incident.model_fingerprint))


def _cli_reviewer() -> str:
    """Who a terminal action is recorded as in the audit trail: the login name."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _review(args: argparse.Namespace) -> int:
    """label / ack / resolve / reopen through the review app's service layer: same rules, same audit trail."""
    from probewatch.server.review.actions import apply

    reviewer = args.reviewer or _cli_reviewer()
    fields = {"label": getattr(args, "verdict", None), "force": getattr(args, "takeover", False), "comment": args.note}
    store = _store(args, readonly=False)
    try:
        incident = apply(store, args.id, reviewer, args.action, fields)
        if args.action == "claim" and args.note:  # a claim carries no comment of its own
            incident = apply(store, args.id, reviewer, "comment", {"comment": args.note})
    finally:
        store.close()
    if args.json:
        print_json({k: v for k, v in incident.to_json().items() if k not in ("token_scores", "tokens", "context")})
    else:
        verdict = f", verdict {incident.label.replace('_', ' ')}" if incident.label else ""
        print(f"incident {incident.id}: {incident.status}{verdict} (by {reviewer})")
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
