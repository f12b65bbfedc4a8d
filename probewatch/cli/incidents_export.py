"""`probewatch incidents export|migrate`: reviewed incidents out as data, and the store's schema up to date."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from probewatch.arguments import add_json_arg, print_json


def register(isub: argparse._SubParsersAction, db: Callable[[argparse.ArgumentParser], None]) -> None:
    ex = isub.add_parser(
        "export",
        help="write incidents as JSONL; --labelled: reviewed true/false positives as dialogue JSONL for training",
    )
    db(ex)
    ex.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    ex.add_argument(
        "--labelled",
        action="store_true",
        help="dialogue JSONL of reviewed incidents (true positive: label 1, false positive: label 0), "
        "for `probewatch calibrate|train --extra-data`",
    )
    ex.add_argument("--probe", default=None, help="only this probe's incidents")
    ex.add_argument(
        "--priority",
        choices=("normal", "low"),
        default=None,
        help="only alerts (normal) or only uncertain incidents inside a probe's uncertainty band (low); "
        "without --labelled",
    )
    ex.add_argument(
        "--model",
        default=None,
        help="model whose chat template rebuilds the messages (--labelled; default: the reference model); "
        "incidents of other models are skipped",
    )
    add_json_arg(ex)
    ex.set_defaults(func=_export)

    mg = isub.add_parser("migrate", help="create the store or upgrade its schema (sidecars also do on start)")
    db(mg)
    add_json_arg(mg)
    mg.set_defaults(func=_migrate)


def _location(args: argparse.Namespace):
    from probewatch import envs

    return args.db or envs.incident_db()


def _export(args: argparse.Namespace) -> int:
    from probewatch.server.store import IncidentStore

    store = IncidentStore.open(_location(args), readonly=True)
    try:
        if args.labelled:
            summary = _export_labelled(store, args)
        else:
            summary = _export_all(store, args)
    finally:
        store.close()
    if args.json:
        print_json(summary)
    else:
        skipped = ", ".join(f"{n} {why}" for why, n in summary.get("skipped", {}).items())
        print(f"wrote {summary['written']} line(s) to {summary['out']}" + (f" (skipped: {skipped})" if skipped else ""))
        if summary.get("hint"):
            print(summary["hint"])
    return 0


def _export_labelled(store, args: argparse.Namespace) -> dict:
    from probewatch.errors import ProbewatchError
    from probewatch.models.fingerprint import fingerprint_folder
    from probewatch.models.loading import model_id_for, resolve_model_path
    from probewatch.models.registry import REFERENCE_MODEL
    from probewatch.models.tokenizer import load_tokenizer
    from probewatch.server.store.export import export_labelled

    incidents = store.labelled(probe=args.probe)
    if not incidents:  # nothing to rebuild: no model needed, and say why the file is empty
        return _nothing_labelled(store, args)
    spec = args.model or REFERENCE_MODEL
    folder = resolve_model_path(spec)
    if not Path(folder).is_dir():
        raise ProbewatchError(f"--model {spec!r}: export needs a local model folder (it reads the chat template)")
    tokenizer = load_tokenizer(spec, fetch_if_missing=True)
    summary = export_labelled(incidents, args.out, tokenizer, fingerprint=fingerprint_folder(folder))
    return {**summary.to_json(), "model": model_id_for(spec), "db": str(store.path)}


def _nothing_labelled(store, args: argparse.Namespace) -> dict:
    """An empty export (the file is still written) with the reason: no true/false-positive verdicts."""
    from probewatch.server.store.connect import open_private

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open_private(args.out):
        pass
    unsure = len(store.labelled(labels=("unsure",), probe=args.probe))
    scope = f" of probe {args.probe}" if args.probe else ""
    hint = (
        f"0 incidents{scope} labelled true_positive or false_positive in {store.location.display}"
        + (f" ({unsure} labelled unsure: those are not exported)" if unsure else "")
        + ": label some with `probewatch incidents label ID --verdict true_positive|false_positive` "
        "or in the review app (`probewatch review`)"
    )
    return {"out": str(args.out), "written": 0, "labels": {}, "skipped": {}, "db": str(store.path), "hint": hint}


def _export_all(store, args: argparse.Namespace) -> dict:
    from probewatch.server.store import QueueFilter
    from probewatch.server.store.connect import open_private
    from probewatch.server.store.export_lines import incident_lines

    args.out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open_private(args.out) as fh:  # 0600 like the store: it holds incident text
        flt = QueueFilter(probe=args.probe, priority=args.priority).validate()
        for line in incident_lines(store, flt):  # the review app's /export too
            fh.write(line)
            written += 1
    return {"out": str(args.out), "written": written, "db": str(store.path)}


def _migrate(args: argparse.Namespace) -> int:
    from probewatch.server.store import IncidentStore, migrate

    store = IncidentStore.open(_location(args))
    try:
        with store.engine.connect() as conn:
            revision = migrate.current_revision(conn)
    finally:
        store.close()
    result = {"db": str(store.path), "backend": store.backend, "revision": revision, "head": migrate.head_revision()}
    if args.json:
        print_json(result)
    else:
        print(f"incident store {result['db']} ({result['backend']}): schema {revision} (newest)")
    return 0
