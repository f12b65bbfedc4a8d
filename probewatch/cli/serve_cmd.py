"""`probewatch serve`: the gRPC sidecar (scores live generations, /metrics, alerts, incidents).

Startup checks come first and fail as one-line CLI errors: a malformed --webhook URL, an
unwritable --incident-db, missing or mismatched bundles (fingerprint), unreadable TLS files, a
port in use. The sidecar reads only the model's config and a few weight slices (fingerprint).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probewatch.cli.common import add_model_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gRPC sidecar that scores live generations (Prometheus /metrics, alerts)")
    add_model_arg(p)
    p.add_argument(
        "--bundles",
        nargs="+",
        action="extend",
        default=None,
        metavar="DIR",
        help="bundle folders, folders of bundles or probe ids; repeatable (default: the shipped bundles for the model)",
    )
    p.add_argument(
        "--fingerprint",
        default=None,
        help="the model fingerprint (pwfp1:...), to run without access to the model folder",
    )
    p.add_argument("--host", default="0.0.0.0", help="gRPC bind address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051; 0 = ephemeral)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9400,
        help="Prometheus /metrics port (default 9400; 0 = ephemeral; -1 = off)",
    )
    p.add_argument(
        "--incident-db",
        type=Path,
        default=None,
        help="SQLite incident store (default: $PROBEWATCH_INCIDENT_DB or $PROBEWATCH_HOME/incidents.sqlite3)",
    )
    p.add_argument("--no-incidents", action="store_true", help="do not record incidents")
    p.add_argument("--webhook", default=None, help="POST every alert as JSON here (default: $PROBEWATCH_WEBHOOK_URL)")
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=16.0,
        help="largest accepted message (default 16 MiB; bigger: RESOURCE_EXHAUSTED)",
    )
    p.add_argument("--queue-size", type=int, default=1024, help="scoring queue capacity in chunks (default 1024)")
    p.add_argument(
        "--watch-sae",
        action="append",
        default=None,
        metavar="NAME:ID,ID",
        help="SAE latents to export as probewatch_sae_feature_activation, e.g. l15-topk-3k-k32:12,345 "
        "(repeatable; ';' separates SAEs, the same syntax as the runtime's watch-lists)",
    )
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM server certificate (enables TLS)")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", type=Path, default=None, help="PEM CA: require client certificates it signed")
    p.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write {grpc_port, metrics_port, address} as JSON here once serving (for scripts)",
    )
    p.set_defaults(func=_run)


def _watch(values: list[str] | None) -> dict[str, list[int]] | None:
    from probewatch.errors import ProbewatchError
    from probewatch.probes.saes import SAEConfigError, parse_watch_spec

    if not values:
        return None
    out: dict[str, list[int]] = {}
    for value in values:
        try:
            parsed = parse_watch_spec(value)
        except SAEConfigError as exc:
            raise ProbewatchError(f"--watch-sae {value!r}: {exc}") from None
        if not parsed or not all(parsed.values()):
            raise ProbewatchError(f"--watch-sae {value!r}: expected NAME:ID,ID,...")
        for name, ids in parsed.items():
            out.setdefault(name, []).extend(ids)
    return out


def _run(args: argparse.Namespace) -> int:
    import json
    import signal
    import sys
    import threading

    from probewatch import envs
    from probewatch.server.incidents import IncidentStore
    from probewatch.server.sidecar import Sidecar, server_credentials, sidecar_config_for
    from probewatch.server.webhook import validate_webhook_url

    webhook = args.webhook or envs.webhook_url()
    if webhook:
        validate_webhook_url(webhook)
    incident_db = None if args.no_incidents else (args.incident_db or envs.incident_db())
    if incident_db is not None:
        IncidentStore.open(incident_db).close()  # fails now, as a CLI error, when the path is not writable
    settings = {
        "host": args.host,
        "port": args.port,
        "metrics_port": None if args.metrics_port < 0 else args.metrics_port,
        "incident_db": incident_db,
        "webhook_url": webhook,
        "max_message_bytes": int(args.max_message_mb * 1024 * 1024),
        "queue_size": args.queue_size,
        "watch": _watch(args.watch_sae),
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_client_ca": args.tls_client_ca,
    }
    config = sidecar_config_for(args.model, args.bundles, fingerprint=args.fingerprint, **settings)
    server_credentials(config)  # TLS file errors before loading bundles
    sidecar = Sidecar(config).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    probes = ", ".join(f"{b.id}@L{b.layer}" for b in sidecar.runtime.bundles)
    print(
        f"probewatch sidecar: gRPC {sidecar.address} ({'TLS' if config.tls_cert else 'plaintext'}), "
        f"/metrics on port {sidecar.metrics_port}, incidents {incident_db or 'off'}, probes {probes}",
        flush=True,
    )
    if args.ready_file:
        args.ready_file.write_text(
            json.dumps({"grpc_port": sidecar.port, "metrics_port": sidecar.metrics_port, "address": sidecar.address})
        )
    try:
        stop.wait()
    finally:
        print("probewatch sidecar: shutting down (draining queued chunks)", file=sys.stderr, flush=True)
        sidecar.stop()
    return 0
