"""`probewatch review`: the incident review web app (queue, incident pages, verdicts, review metrics).

Reviewer identity comes from a trusted proxy header (`--trusted-header X-Forwarded-User`, honoured
only from `--trusted-proxy` peers: oauth2-proxy in front of the app), from bearer tokens
(`--token-file`, `name:token` per line), or, on a loopback bind only, from `--reviewer NAME`
(default: your login name when nothing else is configured).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probewatch.arguments import add_bundles_arg

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("review", help="serve the incident review web app (queue, heatmaps, verdicts, metrics)")
    add_review_arguments(p, standalone=True)
    p.set_defaults(func=_run)


def add_review_arguments(p: argparse.ArgumentParser, standalone: bool = False) -> None:
    """The review options (`probewatch review`, and `probewatch run --review` takes the auth ones too)."""
    if standalone:
        p.add_argument(
            "--db",
            default=None,
            metavar="PATH_OR_URL",
            help="incident store: SQLite file or postgresql:// URL (default: $PROBEWATCH_INCIDENT_DB)",
        )
        p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080; 0 = ephemeral)")
        add_bundles_arg(
            p, "bundle folders whose manifests the incident pages show (the shipped and user bundles are always read)"
        )
        p.add_argument(
            "--tokenizer",
            default=None,
            help="model spec whose tokenizer spells out token ids (default: the model each bundle names, if local)",
        )
        p.add_argument(
            "--metrics-cache", type=float, default=10.0, help="seconds review metrics are cached (default 10)"
        )
        p.add_argument("--ready-file", type=Path, default=None, help="write {port, url} as JSON here once serving")
        p.add_argument(
            "--grafana-url",
            default=None,
            metavar="URL",
            help="Grafana base URL (e.g. https://grafana.example.com): the queue and each generation link to the "
            "probewatch dashboard at the alert's time ±15 min and its probes (default: $PROBEWATCH_GRAFANA_URL; "
            "unset: no links)",
        )
        p.add_argument(
            "--prometheus-url",
            default=None,
            metavar="URL",
            help="base URL of the Prometheus scraping the sidecars (e.g. http://prometheus:9090): each probe card "
            "shows the probe's live score drift from calibration and alert rate vs calibrated "
            "(default: $PROBEWATCH_PROMETHEUS_URL; unset: drift shows as unavailable)",
        )
    p.add_argument(
        "--trusted-header",
        action="append",
        default=None,
        metavar="NAME",
        help="reviewer identity header set by an authenticating proxy, e.g. X-Forwarded-User or "
        "X-Auth-Request-Email (repeatable; the first present wins)",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=None,
        metavar="CIDR",
        help="peers whose identity headers are believed (repeatable; default 127.0.0.1/32 and ::1/128)",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="reviewer bearer tokens, `name:token` per line (default: $PROBEWATCH_REVIEW_TOKEN_FILE)",
    )
    p.add_argument(
        "--reviewer",
        default=None,
        help="single local reviewer name (loopback binds only; default there: your login name when no other auth)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME",
        help="a Host name the app answers besides the --host bound, localhost and IP addresses, e.g. the "
        "ingress name (repeatable; *.example.com for subdomains, * for any; default: "
        "$PROBEWATCH_REVIEW_ALLOWED_HOSTS, comma-separated); other Hosts get 400 (DNS rebinding defence)",
    )


def auth_config(args: argparse.Namespace, host: str):
    """The AuthConfig the options ask for; a non-loopback bind without real authentication is refused."""
    import getpass

    from probewatch import envs
    from probewatch.errors import ProbewatchError
    from probewatch.server.review.auth import DEFAULT_TRUSTED_PROXIES, AuthConfig, read_reviewer_tokens
    from probewatch.server.review.hosts import allowed_hosts

    token_file = args.token_file or envs.review_token_file()
    tokens = read_reviewer_tokens(token_file) if token_file else {}
    headers = tuple(args.trusted_header or ())
    loopback = host in LOOPBACK
    reviewer = args.reviewer
    if reviewer and not loopback:
        raise ProbewatchError(
            f"--reviewer gives everyone one identity: only on a loopback bind, not {host} "
            "(use --trusted-header behind an authenticating proxy, or --token-file)"
        )
    if not (headers or tokens or reviewer):
        if not loopback:
            raise ProbewatchError(
                f"the review app on {host} needs reviewer authentication: --trusted-header NAME (behind oauth2-proxy "
                "or similar) or --token-file FILE"
            )
        try:
            reviewer = getpass.getuser()
        except (KeyError, OSError):
            reviewer = "local"
    return AuthConfig(
        trusted_headers=headers,
        trusted_proxies=tuple(args.trusted_proxy or DEFAULT_TRUSTED_PROXIES),
        tokens=tokens,
        local_reviewer=reviewer,
        allowed_hosts=allowed_hosts(host, args.allowed_host or envs.review_allowed_hosts()),
    )


def _run(args: argparse.Namespace) -> int:
    import json
    import signal
    import sys
    import threading

    from probewatch import envs
    from probewatch.server.inference.server_thread import HTTPServerThread
    from probewatch.server.review.app import create_review_app
    from probewatch.server.review.catalog import Catalog
    from probewatch.server.store import IncidentStore

    auth = auth_config(args, args.host)
    catalog = Catalog(args.bundles or (), tokenizer=args.tokenizer)
    store = IncidentStore.open(args.db or envs.incident_db())
    app = create_review_app(
        store,
        auth,
        catalog,
        metrics_cache_s=args.metrics_cache,
        grafana_url=args.grafana_url,
        prometheus_url=args.prometheus_url,
    )
    server = HTTPServerThread(app, args.host, args.port, proxy_headers=False).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"probewatch review: {server.url}/ on incident store {store.path} ({store.backend}); "
        f"reviewers: {auth.describe()}; hosts answered: {', '.join(auth.allowed_hosts)} and IP addresses; "
        "/metrics for Prometheus",
        flush=True,
    )
    if args.ready_file:
        args.ready_file.write_text(json.dumps({"port": server.port, "url": server.url}))
    try:
        stop.wait()
    finally:
        print("probewatch review: shutting down", file=sys.stderr, flush=True)
        server.stop()
        store.close()
    return 0
