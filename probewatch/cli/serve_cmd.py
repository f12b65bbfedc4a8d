"""`probewatch serve`: the gRPC sidecar (scores live generations, /metrics, alerts, incidents).

Startup checks come first and fail as one-line CLI errors: a malformed --webhook URL, an
unwritable --incident-db, missing or mismatched bundles (fingerprint), a bundle without a weights
checksum, unreadable TLS or token files, an invalid limit, a port in use. The sidecar reads only
the model's config and a few weight slices (fingerprint).

Every limit's default is the `SidecarConfig` field's (server/sidecar/process.py): the help text shows it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from probewatch.arguments import add_bundles_arg, add_model_arg, byte_size
from probewatch.cli.private_data import add_private_data_arguments, private_data_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gRPC sidecar that scores live generations (Prometheus /metrics, alerts)")
    add_model_arg(p)
    add_bundles_arg(
        p, "bundle folders, folders of bundles or probe ids; repeatable (default: the shipped bundles for the model)"
    )
    p.add_argument(
        "--fingerprint",
        default=None,
        help="the model fingerprint (pwfp1:...), to run without access to the model folder",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="gRPC bind address (default 127.0.0.1: only this machine/pod; any other address needs "
        "--auth-token-file or mutual TLS, else --allow-insecure)",
    )
    p.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051; 0 = ephemeral)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="/metrics bind address (default 127.0.0.1)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=9400,
        help="Prometheus /metrics port (default 9400; 0 = ephemeral; -1 = off)",
    )
    p.add_argument(
        "--incident-db",
        default=None,
        metavar="PATH_OR_URL",
        help="incident store: a SQLite file, or a postgresql:// URL shared by a fleet of sidecars "
        "(default: $PROBEWATCH_INCIDENT_DB or $PROBEWATCH_HOME/incidents.sqlite3)",
    )
    p.add_argument("--no-incidents", action="store_true", help="do not record incidents")
    p.add_argument("--webhook", default=None, help="POST every alert as JSON here (default: $PROBEWATCH_WEBHOOK_URL)")
    p.add_argument(
        "--review-url",
        default=None,
        help="base URL of the review app (`probewatch review`): webhook payloads carry incident_url "
        "(default: $PROBEWATCH_REVIEW_URL)",
    )
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=16.0,
        help="largest accepted message (default 16 MiB; bigger: RESOURCE_EXHAUSTED)",
    )
    p.add_argument("--queue-size", type=int, default=1024, help="scoring queue capacity in chunks (default 1024)")
    p.add_argument(
        "--queue-bytes",
        type=byte_size,
        default=None,
        metavar="BYTES",
        help="bytes of activations queued or being scored (suffixes K/M/G, Ki/Mi/Gi); beyond, chunks are refused "
        "RESOURCE_EXHAUSTED (default: 25%% of the container's cgroup memory limit, at most 1 GiB; 512 MiB without "
        "a limit)",
    )
    p.add_argument(
        "--watch-sae",
        action="append",
        default=None,
        metavar="NAME:ID,ID",
        help="SAE latents to export as probewatch_sae_feature_activation, e.g. l15-topk-3k-k32:12,345 "
        "(repeatable; ';' separates SAEs, the same syntax as the runtime's watch-lists)",
    )
    sec = p.add_argument_group("security")
    sec.add_argument("--tls-cert", type=Path, default=None, help="PEM server certificate (enables TLS)")
    sec.add_argument("--tls-key", type=Path, default=None, help="PEM private key of --tls-cert")
    sec.add_argument("--tls-client-ca", type=Path, default=None, help="PEM CA: require client certificates it signed")
    sec.add_argument(
        "--auth-token-file",
        type=Path,
        default=None,
        help="bearer tokens (one per line) every RPC but health must send as `authorization: Bearer <token>`; "
        "re-read when it changes (default: $PROBEWATCH_AUTH_TOKEN_FILE; none: no token needed)",
    )
    sec.add_argument("--reflection", action="store_true", help="enable gRPC server reflection (off by default)")
    sec.add_argument(
        "--allow-insecure",
        action="store_true",
        help="serve a non-loopback --host with neither --auth-token-file nor mutual TLS (--tls-client-ca): "
        "anyone who reaches the port can read the probes and write incidents (refused without this flag)",
    )
    sec.add_argument(
        "--allow-unverified-bundles",
        action="store_true",
        help="load bundles whose manifest records no weights_sha256 (refused by default)",
    )
    lim = p.add_argument_group("limits (each refusal is counted in probewatch_rejected_messages_total{code})")

    def limit(flag: str, field: str, kind: type, unit: str, what: str, group=lim) -> None:
        default = _default(field)
        metavar = {" s": "SECONDS", " days": "DAYS"}.get(unit, "N")
        group.add_argument(
            flag, dest=field, type=kind, default=default, metavar=metavar, help=f"{what} (default {default:g}{unit})"
        )

    limit("--max-streams", "max_streams", int, "", "open streams in total; more: RESOURCE_EXHAUSTED")
    limit("--max-streams-per-peer", "max_streams_per_peer", int, "", "open streams per client address")
    limit(
        "--max-watch-streams",
        "max_watch_streams",
        int,
        "",
        "Health.Watch streams without a token, in their own pool (never Monitor slots); more: RESOURCE_EXHAUSTED",
    )
    limit("--max-watch-streams-per-peer", "max_watch_streams_per_peer", int, "", "same, per client address")
    limit("--max-concurrent-score", "max_concurrent_unary", int, "", "unary Score calls at once")
    limit("--keepalive-time", "keepalive_time_s", float, " s", "the server pings each client this often")
    limit(
        "--keepalive-timeout", "keepalive_timeout_s", float, " s", "a client not answering a ping this long is dropped"
    )
    limit("--min-ping-interval", "min_ping_interval_s", float, " s", "clients may ping this often; faster: GOAWAY")
    limit(
        "--stream-idle-timeout",
        "stream_idle_timeout_s",
        float,
        " s",
        "a stream holding open generations and silent this long ends DEADLINE_EXCEEDED, its generations aborted",
    )
    limit("--generation-ttl", "generation_ttl_s", float, " s", "a generation open longer is aborted")
    limit(
        "--generation-idle-ttl",
        "generation_idle_ttl_s",
        float,
        " s",
        "a generation that gets no chunk this long is aborted (DEADLINE_EXCEEDED)",
    )
    limit(
        "--max-generation-id-bytes",
        "max_generation_id_bytes",
        int,
        "",
        "longest generation id; longer: INVALID_ARGUMENT",
    )
    limit("--max-metadata-bytes", "max_metadata_bytes", int, "", "metadata keys + values of one Open")
    limit("--max-metadata-entries", "max_metadata_entries", int, "", "metadata entries of one Open")
    limit(
        "--max-open-generations-per-stream", "max_open_generations_per_stream", int, "", "open generations per stream"
    )
    limit("--max-open-generations", "max_open_generations", int, "", "open generations in total")
    lim.add_argument(
        "--max-open-generations-per-client",
        dest="max_open_generations_per_client",
        type=int,
        default=None,
        metavar="N",
        help="open generations per client (its bearer token, else its address); more: RESOURCE_EXHAUSTED "
        "(default: a quarter of --max-open-generations)",
    )
    limit(
        "--outbox-size", "outbox_size", int, "", "responses queued for a client that does not read them; more: cut off"
    )
    limit("--max-abs-activation", "max_abs_activation", float, "", "largest |value| in a row or projection")
    limit(
        "--max-client-mb-per-s",
        "max_client_mb_per_s",
        float,
        "",
        "chunk payload MB/s read from one client (its token, else its address); beyond, its stream is read later "
        "and gRPC flow control slows its sends (nothing dropped; 0 = unpaced)",
    )
    limit(
        "--shutdown-grace",
        "shutdown_grace_s",
        float,
        " s",
        "on SIGTERM, open generations get this long to close with summaries before they are aborted",
    )
    inc = p.add_argument_group("incidents and private data")
    inc.add_argument(
        "--store-text",
        choices=["full", "redacted", "none"],
        default=_default("store_text"),
        help="what incidents and webhooks keep of prompt, response and metadata: full, redacted (personal data "
        "and secrets masked, user ids pseudonymised) or none (default %(default)s)",
    )
    limit("--max-text-chars", "max_text_chars", int, "", "stored prompt/response/metadata value length cap", inc)
    limit("--retention-days", "retention_days", float, " days", "incidents older than this are deleted (0: keep)", inc)
    add_private_data_arguments(inc)
    p.add_argument(
        "--drift-window",
        type=int,
        default=_default("drift_window"),
        metavar="N",
        help="closed generations per probe over which live score drift from the bundle's calibration "
        "distribution (probewatch_probe_score_psi) and the live alert rate are measured (default %(default)s)",
    )
    p.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write {grpc_port, metrics_port, address} as JSON here once serving (for scripts)",
    )
    p.set_defaults(func=_run)


def _default(field: str):
    from probewatch.server.sidecar.config import SidecarConfig

    return SidecarConfig.model_fields[field].default


LIMIT_FIELDS = (
    "max_client_mb_per_s",
    "max_streams",
    "max_streams_per_peer",
    "max_watch_streams",
    "max_watch_streams_per_peer",
    "max_concurrent_unary",
    "keepalive_time_s",
    "keepalive_timeout_s",
    "min_ping_interval_s",
    "stream_idle_timeout_s",
    "generation_ttl_s",
    "generation_idle_ttl_s",
    "max_generation_id_bytes",
    "max_metadata_bytes",
    "max_metadata_entries",
    "max_open_generations_per_stream",
    "max_open_generations",
    "max_open_generations_per_client",
    "outbox_size",
    "max_abs_activation",
    "shutdown_grace_s",
    "max_text_chars",
    "retention_days",
)


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
    from probewatch.errors import ProbewatchError
    from probewatch.server.sidecar.config import insecure_exposure, server_credentials, sidecar_config_for
    from probewatch.server.sidecar.memory import bound_allocator_retention
    from probewatch.server.sidecar.process import Sidecar
    from probewatch.server.sidecar.webhook import validate_webhook_url
    from probewatch.server.store import IncidentStore, parse_location

    bound_allocator_retention()  # large freed messages go back to the OS (server/sidecar/memory.py)
    webhook = args.webhook or envs.webhook_url()
    if webhook:
        validate_webhook_url(webhook)
    token_file = args.auth_token_file or envs.auth_token_file()
    if token_file is not None:
        from probewatch.server.sidecar.auth import TokenFile

        TokenFile(token_file)  # a missing, empty or weak token file is a CLI error now
    exposure = insecure_exposure(
        args.host, args.port, token=token_file is not None, mutual_tls=bool(args.tls_cert and args.tls_client_ca)
    )
    if exposure is not None and not args.allow_insecure:
        raise ProbewatchError(f"refusing to serve {exposure}")
    incident_db = None if args.no_incidents else (args.incident_db or envs.incident_db())
    if incident_db is not None:
        IncidentStore.open(incident_db).close()  # fails now, as a CLI error, when the path is not writable
    settings = {
        "host": args.host,
        "port": args.port,
        "metrics_host": args.metrics_host,
        "metrics_port": None if args.metrics_port < 0 else args.metrics_port,
        "auth_token_file": token_file,
        "reflection": args.reflection,
        "allow_insecure": args.allow_insecure,
        "allow_unverified_bundles": args.allow_unverified_bundles,
        "store_text": args.store_text,
        "drift_window": args.drift_window,
        **private_data_settings(args),  # key file and patterns checked now: CLI errors
        **{field: getattr(args, field) for field in LIMIT_FIELDS},
        "incident_db": incident_db,
        "webhook_url": webhook,
        "review_url": args.review_url or envs.review_url(),
        "max_message_bytes": int(args.max_message_mb * 1024 * 1024),
        "queue_size": args.queue_size,
        "queue_bytes": args.queue_bytes,
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
    security = ("TLS" if config.tls_cert else "plaintext") + (", token" if token_file else "")
    if exposure is not None:
        security += ", INSECURE: no authentication (--allow-insecure)"
    print(
        f"probewatch sidecar: gRPC {sidecar.address} ({security}), /metrics on {config.metrics_host}:"
        f"{sidecar.metrics_port}, incidents {parse_location(incident_db) if incident_db else 'off'} "
        f"(text: {config.store_text}), probes {probes}",
        flush=True,
    )
    if args.ready_file:
        args.ready_file.write_text(
            json.dumps({"grpc_port": sidecar.port, "metrics_port": sidecar.metrics_port, "address": sidecar.address})
        )
    try:
        stop.wait()
    finally:
        print(
            f"probewatch sidecar: shutting down (open generations have {config.shutdown_grace_s:g}s to close)",
            file=sys.stderr,
            flush=True,
        )
        sidecar.stop()
    return 0
