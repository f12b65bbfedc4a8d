"""`probewatch run`: OpenAI-compatible chat endpoint on a model with the attach client on.

The sidecar is `--sidecar HOST:PORT`, else $PROBEWATCH_SIDECAR, else one started in this
process (with its own /metrics port and incident store).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probewatch.cli.common import add_model_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="serve /v1/chat/completions (OpenAI-compatible) with live monitoring attached")
    add_model_arg(p)
    p.add_argument(
        "--bundles",
        nargs="+",
        action="extend",
        default=None,
        metavar="DIR",
        help="bundles for the in-process sidecar (default: the shipped bundles for the model)",
    )
    p.add_argument(
        "--sidecar",
        default=None,
        help="address of a running sidecar (default: $PROBEWATCH_SIDECAR, else start one in-process)",
    )
    p.add_argument(
        "--mode",
        choices=["rows", "pushdown"],
        default="rows",
        help="ship residual rows, or on-device projections onto the probe matrices (pushdown)",
    )
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; 0 = ephemeral)")
    p.add_argument("--sidecar-port", type=int, default=0, help="in-process sidecar gRPC port (default: ephemeral)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9400,
        help="in-process sidecar /metrics port (default 9400; 0 = ephemeral; -1 = off)",
    )
    p.add_argument("--incident-db", type=Path, default=None, help="in-process sidecar incident store")
    p.add_argument("--webhook", default=None, help="in-process sidecar alert webhook")
    p.add_argument("--max-tokens", type=int, default=128, help="default max_tokens of a completion")
    p.add_argument("--tls-ca", default=None, help="PEM CA that signed the sidecar's certificate (TLS sidecar)")
    p.add_argument("--tls-cert", default=None, help="PEM client certificate (sidecar requiring client auth)")
    p.add_argument("--tls-key", default=None, help="PEM key of --tls-cert")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

    from probewatch import envs
    from probewatch.server.incidents import IncidentStore
    from probewatch.server.stack import LocalStack, StackOptions
    from probewatch.server.webhook import validate_webhook_url

    sidecar = args.sidecar or (envs.sidecar_address() if envs.sidecar_address_set() else None)
    incident_db = None
    if sidecar is None:
        incident_db = args.incident_db or envs.incident_db()
        IncidentStore.open(incident_db).close()
        webhook = args.webhook or envs.webhook_url()
        if webhook:
            validate_webhook_url(webhook)
    else:
        webhook = None
    tls = {k: v for k, v in (("tls_ca", args.tls_ca), ("tls_cert", args.tls_cert), ("tls_key", args.tls_key)) if v}
    options = StackOptions(
        model=args.model,
        bundles=args.bundles,
        sidecar=sidecar,
        mode=args.mode,
        host=args.host,
        port=args.port,
        sidecar_port=args.sidecar_port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        incident_db=incident_db,
        webhook_url=webhook,
        max_tokens=args.max_tokens,
        extra_attach=tls,
    )
    stack = LocalStack(options).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    where = (
        f"in-process sidecar {stack.sidecar.address} (/metrics :{stack.sidecar.metrics_port})"
        if stack.sidecar
        else f"sidecar {sidecar}"
    )
    print(
        f"probewatch run: {stack.loaded.model_id} on {stack.url}/v1/chat/completions, monitored by {where}\n"
        f"  try: curl -s {stack.url}/v1/chat/completions -H 'content-type: application/json' "
        f'-d \'{{"messages":[{{"role":"user","content":"Hello!"}}]}}\'',
        flush=True,
    )
    try:
        stop.wait()
    finally:
        print("probewatch run: shutting down", file=sys.stderr, flush=True)
        stack.stop()
    return 0
