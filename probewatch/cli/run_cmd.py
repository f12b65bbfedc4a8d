"""`probewatch run`: OpenAI-compatible chat endpoint on a model with the attach client on.

The sidecar is `--sidecar HOST:PORT`, else $PROBEWATCH_SIDECAR, else one started in this
process (with its own /metrics port and incident store).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probewatch.arguments import add_bundles_arg, add_model_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="serve /v1/chat/completions (OpenAI-compatible) with live monitoring attached")
    add_model_arg(p)
    add_bundles_arg(p, "bundles for the in-process sidecar (default: the shipped bundles for the model)")
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
    p.add_argument(
        "--on-unmonitored",
        choices=["allow", "reject"],
        default=None,
        help="a generation that cannot be monitored (sidecar down or lost, Open refused): 'allow' serves it "
        "unmonitored and counts it (fail-open, so a monitor outage is no serving outage), 'reject' answers 503 "
        "instead (default: $PROBEWATCH_ON_UNMONITORED, else allow)",
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
    p.add_argument(
        "--incident-db", default=None, metavar="PATH_OR_URL", help="in-process sidecar incident store (file or URL)"
    )
    p.add_argument("--webhook", default=None, help="in-process sidecar alert webhook")
    p.add_argument("--max-tokens", type=int, default=128, help="default max_tokens of a completion")
    g = p.add_argument_group("access and limits of the HTTP endpoint")
    g.add_argument(
        "--api-key",
        default=None,
        help="require `Authorization: Bearer <key>` on /v1/ (default: $PROBEWATCH_API_KEY; prefer --api-key-file: "
        "a command line is visible to other users)",
    )
    g.add_argument("--api-key-file", type=Path, default=None, help="file of accepted API keys, one per line")
    g.add_argument(
        "--max-request-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB; larger: 413)"
    )
    g.add_argument(
        "--max-context-tokens",
        type=int,
        default=None,
        help="prompt + max_tokens limit (default: the model's max_position_embeddings; over: 400)",
    )
    g.add_argument("--max-completion-tokens", type=int, default=1024, help="largest max_tokens (default 1024)")
    g.add_argument(
        "--max-waiting", type=int, default=16, help="requests queued for the generation lock (default 16; more: 429)"
    )
    inc = p.add_argument_group("the in-process sidecar's incident store")
    inc.add_argument(
        "--store-text",
        choices=["full", "redacted", "none"],
        default="redacted",
        help="what incidents keep of prompt, response and metadata (default redacted; see probewatch serve)",
    )
    inc.add_argument(
        "--retention-days", type=float, default=30.0, help="delete incidents older than this (default 30; 0: keep)"
    )
    from probewatch.cli.private_data import add_private_data_arguments

    add_private_data_arguments(inc)
    p.add_argument("--tls-ca", default=None, help="PEM CA that signed the sidecar's certificate (TLS sidecar)")
    p.add_argument("--tls-cert", default=None, help="PEM client certificate (sidecar requiring client auth)")
    p.add_argument("--tls-key", default=None, help="PEM key of --tls-cert")
    p.add_argument(
        "--review",
        action="store_true",
        help="also serve the incident review app at /review (its reviewer options below)",
    )
    p.add_argument(
        "--review-url",
        default=None,
        help="base URL reviewers open the review app at; webhook payloads link to incident pages "
        "(default: $PROBEWATCH_REVIEW_URL, else this server's /review with --review and a fixed --port)",
    )
    from probewatch.cli.review_cmd import add_review_arguments

    add_review_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

    from probewatch import envs
    from probewatch.cli.private_data import private_data_settings
    from probewatch.errors import ProbewatchError
    from probewatch.server.local.stack import LocalStack, StackOptions
    from probewatch.server.sidecar.webhook import validate_webhook_url
    from probewatch.server.store import IncidentStore

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
    review = None
    if args.review:
        from probewatch.cli.review_cmd import auth_config

        if incident_db is None:
            raise ProbewatchError("--review needs the in-process sidecar's incident store (not --sidecar ADDRESS)")
        review = auth_config(args, args.host)
    review_url = args.review_url or envs.review_url()
    if review_url is None and args.review and args.port:
        review_url = f"http://{args.host}:{args.port}/review"
    tls = {k: v for k, v in (("tls_ca", args.tls_ca), ("tls_cert", args.tls_cert), ("tls_key", args.tls_key)) if v}
    try:
        attach_settings = {**tls, "on_unmonitored": args.on_unmonitored or envs.on_unmonitored()}
    except ValueError as exc:  # a bad PROBEWATCH_ON_UNMONITORED
        raise ProbewatchError(str(exc)) from None
    limits = _http_limits(args)
    if not limits.api_keys and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"probewatch run: WARNING: serving {args.host} without an API key: anyone who can reach it can generate "
            "(set --api-key-file or PROBEWATCH_API_KEY)",
            file=sys.stderr,
            flush=True,
        )
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
        extra_attach=attach_settings,
        http_limits=limits,
        sidecar_settings={
            "store_text": args.store_text,
            "retention_days": args.retention_days,
            **private_data_settings(args),
        },
        review=review,
        review_url=review_url,
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
    assert stack.loaded is not None  # start() returned: the model is loaded
    print(
        f"probewatch run: {stack.loaded.model_id} on {stack.url}/v1/chat/completions, monitored by {where}\n"
        + (f"  review: {stack.url}/review/\n" if review is not None else "")
        + f"  try: curl -s {stack.url}/v1/chat/completions -H 'content-type: application/json' "
        f'-d \'{{"messages":[{{"role":"user","content":"Hello!"}}]}}\'',
        flush=True,
    )
    try:
        stop.wait()
    finally:
        print("probewatch run: shutting down", file=sys.stderr, flush=True)
        stack.stop()
    return 0


def _http_limits(args: argparse.Namespace):
    from probewatch import envs
    from probewatch.errors import ProbewatchError
    from probewatch.server.inference.limits import HTTPLimits

    keys = [k for k in (args.api_key, envs.api_key()) if k]
    if args.api_key_file is not None:
        try:
            text = args.api_key_file.read_text()
        except OSError as exc:
            raise ProbewatchError(f"cannot read --api-key-file {args.api_key_file}: {exc}") from exc
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
        if not keys:
            raise ProbewatchError(f"--api-key-file {args.api_key_file} holds no key")
    for name in ("max_request_bytes", "max_completion_tokens", "max_waiting"):
        if getattr(args, name) < 1:
            raise ProbewatchError(f"--{name.replace('_', '-')} must be >= 1")
    return HTTPLimits(
        api_keys=tuple(keys),
        max_request_bytes=args.max_request_bytes,
        max_context_tokens=args.max_context_tokens,
        max_completion_tokens=args.max_completion_tokens,
        max_waiting=args.max_waiting,
    )
