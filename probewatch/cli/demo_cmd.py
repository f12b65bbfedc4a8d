"""`probewatch demo`: the main job (sidecar + monitored endpoint + scripted conversations)."""

from __future__ import annotations

import argparse

from probewatch.arguments import add_bundles_arg, add_json_arg, add_model_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="main job: live-monitor scripted conversations through the embedded endpoint")
    add_model_arg(p)
    add_arguments(p)
    add_json_arg(p)
    p.set_defaults(func=lambda args: _run(args))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bundles_arg(parser, "bundle folders (default: the shipped bundles for the model)")
    parser.add_argument("--mode", choices=["rows", "pushdown"], default="rows", help="attach mode")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens generated per conversation")
    parser.add_argument(
        "--incident-db",
        default=None,
        metavar="PATH_OR_URL",
        help="incident store (default: $PROBEWATCH_INCIDENT_DB or $PROBEWATCH_HOME/incidents.sqlite3)",
    )
    parser.add_argument(
        "--store-text",
        choices=["full", "redacted", "none"],
        default="full",
        help="what incidents keep of prompts, responses and token texts (default full: the demo's conversations "
        "are scripted, so the heatmaps show words; `probewatch serve` defaults to redacted)",
    )
    parser.add_argument("--serve", action="store_true", help="keep serving after the script (Ctrl-C to stop)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address")
    parser.add_argument(
        "--port", type=int, default=0, help="HTTP port (default: ephemeral; 8000 is usual with --serve)"
    )
    parser.add_argument("--metrics-port", type=int, default=0, help="sidecar /metrics port (default: ephemeral)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds one conversation may go without a response from the endpoint before the demo "
        "stops with an error naming it (default 180)",
    )


def _run(args: argparse.Namespace) -> int:
    from probewatch.server.local import demo

    return demo.main(args, on_summary=print_json if args.json else None)
