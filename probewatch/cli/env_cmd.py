"""`probewatch env`: the environment settings probewatch reads and their current values."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("env", help="list the PROBEWATCH_* settings and their values")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from probewatch import envs

    for name, description in envs.DESCRIPTIONS.items():
        print(f"{name}={os.environ.get(name, '')!s:30s} # {description}")
    print(f"# resolved home: {envs.home()}")
    return 0
