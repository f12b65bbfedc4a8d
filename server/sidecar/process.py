"""The gRPC sidecar process: lifecycle (gRPC server, health, /metrics, housekeeping); settings in config.py.

The sidecar never loads the model's weights: it needs the model's fingerprint (to refuse bundles
and generations from a different model) and d_model, both read from the model folder
(`fingerprint_folder` reads a few slices lazily), or given outright. The servicer itself is
server/sidecar/servicer.py; scoring is server/sidecar/engine.py.

Exposure and admission (server/sidecar/admission.py, server/sidecar/auth.py): the gRPC port and /metrics bind
127.0.0.1 unless told otherwise, and a non-loopback address with neither a token file nor mutual
TLS is refused unless `allow_insecure`; with `auth_token_file`, every RPC but health needs a bearer
token, and a stream whose token is removed from the file ends UNAUTHENTICATED at its next
housekeeping tick after the re-read; long-lived RPCs are capped in total and per client address
(anonymous Health.Watch in a pool of its own), unary Score calls too, and the thread pool is sized
above those caps so `Health.Check` never waits behind streams. Reflection is off unless asked for.

Liveness: HTTP/2 keepalive both ways. The server pings each client every `keepalive_time_s`
and drops a connection that does not answer within `keepalive_timeout_s` (its streams' open
generations end `aborted`); clients may ping every `min_ping_interval_s` or slower, even with no
call in flight (the attach client pings every 5 s); faster pingers get GOAWAY (too_many_pings).

Shutdown (`stop`, SIGTERM in `probewatch serve`): health turns NOT_SERVING (the server keeps
accepting calls while it drains, so Health.Check answers NOT_SERVING instead of failing UNAVAILABLE),
new streams, Score/ListProbes calls and new generations are refused (UNAVAILABLE), open generations
have `shutdown_grace_s` to close and get their summaries (a stream ends as soon as it holds none),
then what is left is aborted, the queue is scored, incidents and webhooks are flushed.

Every limit is a field of `SidecarConfig` with its default below, and a `probewatch serve` flag.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from probewatch.errors import ProbewatchError
from probewatch.metrics_http import serve_metrics
from probewatch.probes.bundle import Bundle, load_bundles
from probewatch.probes.family import find_families
from probewatch.probes.runtime import ProbeRuntime
from probewatch.server.sidecar.admission import Guard, StreamSlots
from probewatch.server.sidecar.auth import TokenFile
from probewatch.server.sidecar.config import SidecarConfig, insecure_exposure, server_credentials
from probewatch.server.sidecar.engine import ScoringEngine
from probewatch.server.sidecar.metrics import SidecarMetrics
from probewatch.server.sidecar.servicer import SERVICE_NAME, MonitorServicer, add_to_server
from probewatch.server.sidecar.webhook import WebhookSender
from probewatch.server.store import IncidentStore
from probewatch.server.store.privacy import policy_without_store

log = logging.getLogger(__name__)


class Sidecar:
    """A running sidecar; `with Sidecar(config) as s:` starts and stops it."""

    def __init__(self, config: SidecarConfig, bundles: list[Bundle] | None = None) -> None:
        self.config = config
        if bundles is None:
            bundles = load_bundles(
                config.bundle_paths,
                expected_fingerprint=config.fingerprint,
                expected_d_model=config.d_model,
                allow_unverified=config.allow_unverified_bundles,
            )
        else:
            mismatched = [b.id for b in bundles if b.manifest.model.fingerprint != config.fingerprint]
            if mismatched:
                from probewatch.probes.errors import FingerprintMismatchError

                raise FingerprintMismatchError(
                    f"bundles {mismatched} were not trained on the model with fingerprint {config.fingerprint}"
                )
        if not bundles:
            raise ProbewatchError("the sidecar needs at least one probe bundle")
        self.runtime = ProbeRuntime(bundles, d_model=config.d_model, watch=config.watch)
        if config.watch is None:
            for name, group in self.runtime.sae_groups.items():
                self.runtime.set_watch(name, group.feature_ids.tolist()[:32])
        if self.runtime.d_model is None:
            raise ProbewatchError("cannot tell the model's d_model from the bundles or the model folder")
        self.d_model = int(self.runtime.d_model)
        self.tokens = TokenFile(config.auth_token_file) if config.auth_token_file else None
        self.metrics = SidecarMetrics()
        self.metrics.register_bundles(bundles)
        self.incidents = (
            IncidentStore.open(
                config.incident_db,
                store_text=config.store_text,
                max_text_chars=config.max_text_chars,
                pseudonym_key_file=config.pseudonym_key_file,
                private_metadata_keys=config.private_metadata_keys,
            )
            if config.incident_db
            else None
        )
        self.policy = (  # webhooks only: pseudonyms still with the key file's key when one is given
            self.incidents.policy
            if self.incidents is not None
            else policy_without_store(
                config.store_text, config.max_text_chars, config.private_metadata_keys, config.pseudonym_key_file
            )
        )
        self.webhook = None
        if config.webhook_url:
            self.webhook = WebhookSender(
                config.webhook_url,
                on_outcome=lambda o: self.metrics.webhook_deliveries.labels(outcome=o).inc(),
                on_error=lambda: self.metrics.internal_errors.labels(component="webhook").inc(),
                review_url=config.review_url,
            )
        self.engine = ScoringEngine(
            self.runtime,
            self.metrics,
            config.fingerprint,
            incidents=self.incidents,
            webhook=self.webhook,
            queue_size=config.queue_size,
            queue_bytes=config.queue_budget(),  # --queue-bytes, or from the container's memory limit
            max_batch_rows=config.max_batch_rows,
            put_timeout_s=config.put_timeout_s,
            limits=config.engine_limits(),
            policy=self.policy,
            families=find_families(config.bundle_paths),  # family.json among the bundle paths (probes/family.py)
        )
        self.engine.alerts.drift.configure(config.drift_window)
        self.servicer = MonitorServicer(self)
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._metrics_server = None
        self._housekeeper: threading.Thread | None = None
        self._stopping = threading.Event()
        self.port: int | None = None
        self.metrics_port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def server_options(self) -> list[tuple[str, int]]:
        c = self.config
        limit = 2 * c.max_message_bytes  # transport backstop; the per-message check is in the servicer
        return [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
            # the server's own pings: a client that stops answering is dropped and its generations aborted
            ("grpc.keepalive_time_ms", int(c.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(c.keepalive_timeout_s * 1000)),
            # gRPC >= 1.6x waits for any ping's ack `ping_timeout_ms` (default 60 s), keepalive pings included
            ("grpc.http2.ping_timeout_ms", int(c.keepalive_timeout_s * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
            # enforcement of the clients' pings: allowed every min_ping_interval_s, also with no call open;
            # faster ones are strikes, and after max_ping_strikes the connection gets GOAWAY(too_many_pings)
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", int(c.min_ping_interval_s * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
        ]

    def start(self) -> Sidecar:
        c = self.config
        exposure = insecure_exposure(
            c.host, c.port, token=c.auth_token_file is not None, mutual_tls=bool(c.tls_cert and c.tls_client_ca)
        )
        if exposure is not None and not c.allow_insecure:
            raise ProbewatchError(f"refusing to serve {exposure}")
        if self.incidents is not None:
            interrupted = self.incidents.mark_interrupted()
            if interrupted:
                log.warning("%d incident(s) left open by a previous run are now 'interrupted'", interrupted)
            self._purge()
        self.engine.start()
        # a Watch holds a thread like a Monitor stream does (the guard wraps it in a generator)
        workers = c.max_workers or (c.max_streams + c.max_watch_streams + c.max_concurrent_unary + 16)
        guard = Guard(
            StreamSlots(c.max_streams, c.max_streams_per_peer),
            c.max_concurrent_unary,
            limited_unary={f"/{SERVICE_NAME}/Score"},
            tokens=self.tokens,
            on_reject=lambda code: self.metrics.rejected.labels(code=code.name).inc(),
            watch_slots=StreamSlots(
                c.max_watch_streams,
                c.max_watch_streams_per_peer,
                what="Health.Watch streams without a token",
                flag="--max-watch-streams",
                advice="poll Health.Check instead, or send a bearer token",
            ),
            draining=lambda: self.engine.draining,
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probewatch-grpc"),
            interceptors=[guard],
            options=self.server_options(),
        )
        add_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if c.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
                server,
            )
        address = f"{c.host}:{c.port}"
        credentials = server_credentials(c)
        try:
            port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ProbewatchError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if not port:
            raise ProbewatchError(f"cannot listen for gRPC on {address} (port in use?)")
        server.start()
        self._server, self.port = server, port
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if c.metrics_port is not None:
            try:
                metrics_server, _ = serve_metrics(self.metrics.registry, c.metrics_port, c.metrics_host)
            except OSError as exc:
                self.stop(0)
                raise ProbewatchError(f"cannot serve /metrics on {c.metrics_host}:{c.metrics_port}: {exc}") from exc
            self._metrics_server = metrics_server
            self.metrics_port = metrics_server.server_port
        if self.incidents is not None and c.retention_days > 0:
            self._housekeeper = threading.Thread(target=self._retention_loop, name="probewatch-retention", daemon=True)
            self._housekeeper.start()
        if exposure is not None:  # allowed by --allow-insecure: said loudly, at every start
            log.warning("INSECURE (--allow-insecure): serving %s", exposure)
        log.info(
            "probewatch sidecar: gRPC%s%s on %s:%s, /metrics on %s:%s, %d probes on layers %s",
            " (TLS)" if credentials else "",
            " (token)" if self.tokens else "",
            c.host,
            port,
            c.metrics_host,
            self.metrics_port,
            len(self.runtime.bundles),
            self.runtime.layers,
        )
        return self

    def _purge(self) -> None:
        """Retention: delete incidents older than retention_days (at start-up and then periodically)."""
        if self.incidents is None or self.config.retention_days <= 0:
            return
        deleted = self.incidents.purge_older_than(self.config.retention_days)
        if deleted:
            log.info("retention: deleted %d incident(s) older than %g days", deleted, self.config.retention_days)

    def _retention_loop(self) -> None:
        while not self._stopping.wait(self.config.retention_interval_s):
            try:
                self._purge()
            except Exception:  # counted and retried next round; never ends the thread
                log.exception("retention run failed")
                self.metrics.internal_errors.labels(component="retention").inc()

    @property
    def address(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "[::]") else "127.0.0.1"
        return f"{host}:{self.port}"

    @property
    def draining(self) -> bool:
        return self.engine.draining

    def stop(self, grace_s: float | None = None) -> None:
        """Drain: refuse new streams and generations, give open ones `grace_s` (default: the config's
        shutdown_grace_s) to close with summaries, abort the rest, score what is queued, flush incidents
        and webhooks."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        self.engine.draining = True
        self.health.enter_graceful_shutdown()
        self._stopping.set()
        if self._server is not None:
            # the server still takes calls while Monitor streams drain: Health.Check answers NOT_SERVING
            self.servicer.wait_streams_ended(grace)
            left = max(0.0, deadline - time.monotonic())
            self._server.stop(left).wait(left + 5)
            self._server = None
        self.engine.stop()
        if self.webhook is not None:
            self.webhook.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._housekeeper is not None:
            self._housekeeper.join(5)
            self._housekeeper = None
        if self.incidents is not None:
            self.incidents.close()
            self.incidents = None

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def __enter__(self) -> Sidecar:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
