"""`probewatch demo`: the main job (sidecar + monitored endpoint + scripted conversations)."""

from __future__ import annotations

import argparse

from probewatch.cli.common import add_json_arg, add_model_arg


def register(sub: argparse._SubParsersAction) -> None:
    from probewatch.server.local import demo  # light: argparse, json, dataclasses only at import time

    p = sub.add_parser("demo", help="main job: live-monitor scripted conversations through the embedded endpoint")
    add_model_arg(p)
    demo.add_arguments(p)
    add_json_arg(p)
    p.set_defaults(func=lambda args: _run(args))


def _run(args: argparse.Namespace) -> int:
    from probewatch.server.local import demo

    return demo.main(args)
