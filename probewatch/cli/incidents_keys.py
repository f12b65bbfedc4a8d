"""`probewatch incidents rotate-key|move-key|pseudonym`: the metadata pseudonym key file.

The key lives outside the store (server/store/pseudonym_keys.py). Rotation puts a new key first and
keeps the older ones below it, so the pseudonym a known value had under an older key can still be
recomputed (an erasure request: find every incident of one user, across rotations).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from probewatch.arguments import add_json_arg, print_json


def register(isub: argparse._SubParsersAction, db: Callable[[argparse.ArgumentParser], None]) -> None:
    def key_file(parser: argparse.ArgumentParser) -> None:
        db(parser)
        parser.add_argument(
            "--key-file",
            type=Path,
            default=None,
            metavar="PATH",
            help="the pseudonym key file (default: $PROBEWATCH_PSEUDONYM_KEY_FILE, else <store>.pseudonym-keys "
            "next to the --db SQLite store, else $PROBEWATCH_HOME/pseudonym-keys)",
        )
        add_json_arg(parser)

    rot = isub.add_parser(
        "rotate-key",
        help="put a new pseudonym key first in the key file (older keys stay below it); restart the sidecars",
    )
    key_file(rot)
    rot.set_defaults(func=_rotate)

    mv = isub.add_parser(
        "move-key",
        help="move the pseudonym key an older probewatch kept in the database into the key file, and delete it there",
    )
    key_file(mv)
    mv.set_defaults(func=_move)

    ps = isub.add_parser(
        "pseudonym", help="the pseudonym a metadata value gets under every key of the key file (current first)"
    )
    key_file(ps)
    ps.add_argument("value", help="a metadata value, e.g. a user id (search incidents for what this prints)")
    ps.set_defaults(func=_pseudonym)


def _key_file(args: argparse.Namespace) -> Path:
    from probewatch import envs
    from probewatch.server.store import parse_location
    from probewatch.server.store.pseudonym_keys import default_key_file

    return args.key_file or envs.pseudonym_key_file() or default_key_file(parse_location(args.db or envs.incident_db()))


def _rotate(args: argparse.Namespace) -> int:
    from probewatch.server.store.pseudonym_keys import rotate_key_file

    path = _key_file(args)
    ring = rotate_key_file(path)
    result = {"key_file": str(path), "current": ring.ids[0], "older": ring.ids[1:]}
    if args.json:
        print_json(result)
    else:
        older = ", ".join(ring.ids[1:]) or "none"
        print(f"new pseudonym key {ring.ids[0]} first in {path} (0600); older keys kept below it: {older}")
        print(
            "restart the sidecars (roll the pods) to use it: new pseudonyms differ from older ones; "
            "`probewatch incidents pseudonym VALUE` prints a value's pseudonym under every key"
        )
    return 0


def _move(args: argparse.Namespace) -> int:
    from probewatch.cli.incidents_cmd import _store
    from probewatch.server.store.pseudonym_keys import add_older_key, key_id

    path = _key_file(args)
    with _store(args, readonly=False) as store:
        legacy = store.legacy_pseudonym_key()
        if legacy is None:
            result = {"key_file": str(path), "moved": None}
            message = f"the incident store {store.location.display} holds no pseudonym key: nothing to move"
        else:
            existed = path.exists()
            ring = add_older_key(path, legacy)  # written (fsync'd) before the database's copy goes
            store.drop_legacy_pseudonym_key()
            role = "the current key" if ring.current == legacy else "an older key"
            result = {"key_file": str(path), "moved": key_id(legacy), "current": ring.ids[0]}
            message = (
                f"moved pseudonym key {key_id(legacy)} out of {store.location.display} into "
                f"{'the existing' if existed else 'the new'} key file {path} as {role}; pass "
                f"--pseudonym-key-file {path} to the sidecars"
            )
    if args.json:
        print_json(result)
    else:
        print(message)
    return 0


def _pseudonym(args: argparse.Namespace) -> int:
    from probewatch.server.store.pseudonym_keys import pseudonym, read_key_file

    ring = read_key_file(_key_file(args))
    rows = []
    for i, key in enumerate(ring.keys):
        made = pseudonym(key, args.value)
        # rows written before pseudonyms carried a key id hold `anon:<16 hex>` (the same hash)
        rows.append({"key_id": ring.ids[i], "current": i == 0, "pseudonym": made, "before_key_ids": _bare(made)})
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            role = "current" if row["current"] else "older"
            print(
                f"{row['pseudonym']}  ({role} key {row['key_id']}; rows from before key ids: {row['before_key_ids']})"
            )
    return 0


def _bare(made: str) -> str:
    return "anon:" + made.rsplit(":", 1)[1]
