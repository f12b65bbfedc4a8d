"""The private-data flags `probewatch serve` and `probewatch run` share: where the metadata pseudonym
key lives and which metadata keys are pseudonymised (docs/deploy.md, "Private data")."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_private_data_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--pseudonym-key-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="key file of metadata pseudonyms, kept outside the incident store (a mounted Secret): one hex key "
        "per line, the first makes new pseudonyms, older ones below (`probewatch incidents rotate-key`); "
        "default: $PROBEWATCH_PSEUDONYM_KEY_FILE, else <store>.pseudonym-keys next to a SQLite store, "
        "created 0600",
    )
    group.add_argument(
        "--private-metadata-key",
        action="append",
        default=None,
        metavar="PATTERN",
        help="metadata keys matching PATTERN are pseudonymised too (repeatable; words, case and - _ . "
        "camelCase ignored, '*' at a word's ends: tenant, *shard*, ticket-no; adds to the built-in user*, "
        "*name, *email*, *phone*, session*, ip, ... and $PROBEWATCH_PRIVATE_METADATA_KEYS)",
    )


def private_data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The sidecar settings of those flags (with their environment defaults), checked now: a missing or
    malformed key file or pattern is a CLI error before anything is loaded."""
    from probewatch import envs
    from probewatch.errors import ProbewatchError
    from probewatch.server.store.metadata_keys import validate_patterns
    from probewatch.server.store.pseudonym_keys import read_key_file

    key_file = args.pseudonym_key_file or envs.pseudonym_key_file()
    if key_file is not None:
        read_key_file(key_file)  # PseudonymKeyError (a ProbewatchError) says what is wrong with it
    try:
        patterns = validate_patterns([*envs.private_metadata_keys(), *(args.private_metadata_key or [])])
    except ValueError as exc:
        raise ProbewatchError(f"--private-metadata-key: {exc}") from None
    return {"pseudonym_key_file": key_file, "private_metadata_keys": patterns}
