"""The connection to the sidecar: ListProbes, then one bidirectional stream multiplexing every
generation; reconnects with exponential backoff; fail-open (monitoring off, never an exception in
the serving path).

HTTP/2 keepalive is on (`keepalive_time_s`, `keepalive_timeout_s`, pings also while no call is in
flight and with no data to send): a sidecar that hangs without closing its socket (SIGSTOP, a
wedged node, a half-open connection after a network cut) is detected within about
`keepalive_time_s + keepalive_timeout_s`, reported (`probewatch_client_monitoring_up` 0, one log
line), and reconnected to when it answers again. A send never blocks on a stalled stream for longer
than `send_stall_s` (`send` returns False; the sender drops and counts).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable

import grpc
import torch

from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from probewatch.server.client.auth import bearer_metadata, read_token_file
from probewatch.server.client.config import AttachConfig
from probewatch.server.client.metrics import ClientMetrics
from probewatch.server.client.plan import Plan

log = logging.getLogger(__name__)

STOP = object()  # ends the request iterator of a stream (and the sender loop)


class Stalled(Exception):
    """The stream took no message for `send_stall_s`: the sidecar is hung or far behind."""


def channel_options(config: AttachConfig) -> list[tuple[str, int | str]]:
    """gRPC channel arguments: message limits and HTTP/2 keepalive (a hung sidecar is noticed)."""
    options: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", int(config.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging an idle stream (0 = no limit)
        # the timer that actually fails an unanswered PING in gRPC >= 1.5x core (default 60 s)
        ("grpc.http2.ping_timeout_ms", int(config.keepalive_timeout_s * 1000)),
    ]
    if config.tls_server_name:
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    return options


class SidecarLink:
    """ListProbes + one bidirectional stream to the sidecar; reconnects with backoff (fail-open)."""

    def __init__(
        self,
        config: AttachConfig,
        fingerprint: str,
        device: torch.device,
        metrics: ClientMetrics,
        on_response: Callable[[pb.MonitorResponse], None],
        on_down: Callable[[], None],
    ) -> None:
        self.config = config
        self.fingerprint = fingerprint
        self.device = device
        self.metrics = metrics
        self.on_response = on_response
        self.on_down = on_down
        self.plan: Plan | None = None
        self.listing: pb.ListProbesResponse | None = None
        self.session = 0
        self._up = threading.Event()
        self._stopping = threading.Event()
        self._requests: queue.Queue | None = None
        self._stalled = False
        self._channel: grpc.Channel | None = None
        self._call = None
        self._thread = threading.Thread(target=self._loop, name="probewatch-link", daemon=True)
        self.metrics.monitoring_up.set(0)

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def start(self) -> SidecarLink:
        self._thread.start()
        return self

    def wait_up(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    def send(self, message: pb.MonitorRequest, session: int) -> bool:
        """Queue a message for the stream of `session`; False when that session is gone.

        Raises `Stalled` when the stream took nothing for `send_stall_s` (a hung sidecar: the caller
        drops and counts instead of waiting; keepalive ends such a stream soon after).
        """
        # once stalled, later sends only try without waiting until the stream takes a message again
        deadline = time.monotonic() + (0.0 if self._stalled else self.config.send_stall_s)
        while self.up and self.session == session and not self._stopping.is_set():
            requests = self._requests
            if requests is None:
                return False
            try:
                wait = deadline - time.monotonic()
                if wait > 0:
                    requests.put(message, timeout=min(0.25, wait))
                else:
                    requests.put_nowait(message)
                self._stalled = False
                return True
            except queue.Full:
                if time.monotonic() >= deadline:
                    self._stalled = True
                    raise Stalled(
                        f"the stream to {self.config.sidecar} took no message for {self.config.send_stall_s:g}s"
                    ) from None
                continue  # gRPC flow control: wait a little, then the caller drops
        return False

    def close(self, grace_s: float = 2.0) -> None:
        """Half-close the stream (the sidecar finishes what it has), then cancel what is left."""
        was_up = self.up
        self._stopping.set()
        requests = self._requests
        if was_up and requests is not None:
            with contextlib.suppress(queue.Full):
                requests.put(STOP, timeout=grace_s)
            self._thread.join(grace_s)
        if self._thread.is_alive():
            self._teardown()
            self._thread.join(5)

    def _teardown(self) -> None:
        requests = self._requests
        if requests is not None:
            with contextlib.suppress(queue.Full):
                requests.put_nowait(STOP)
        call = self._call
        if call is not None:
            call.cancel()
        if self._channel is not None:
            self._channel.close()

    def _loop(self) -> None:
        backoff = self.config.backoff_initial_s
        failures = 0
        while not self._stopping.is_set():
            connected = False
            try:
                connected = self._session()
            except Exception as exc:  # noqa: BLE001 - any failure means: monitoring off, retry later
                if failures == 0:
                    log.warning(
                        "probewatch: monitoring OFF: sidecar %s unreachable (%s); generation continues "
                        "unmonitored; reconnecting with backoff",
                        self.config.sidecar,
                        short_error(exc),
                    )
                else:
                    log.debug("probewatch: reconnect to %s failed: %s", self.config.sidecar, short_error(exc))
            if self._stopping.is_set():
                break
            if connected:
                backoff, failures = self.config.backoff_initial_s, 0
            else:
                failures += 1
                self.metrics.reconnects.inc()
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self.config.backoff_max_s)

    def _session(self) -> bool:
        """Connect, stream until the stream ends; True when it was up for a while."""
        cfg = self.config
        channel = open_channel(cfg)
        self._channel = channel
        try:
            # read at every (re)connect: a rotated token file is picked up with the next session
            metadata = call_metadata(cfg)
            grpc.channel_ready_future(channel).result(timeout=cfg.connect_timeout_s)
            stub = pb_grpc.MonitorStub(channel)
            listing = stub.ListProbes(pb.ListProbesRequest(), timeout=cfg.connect_timeout_s, metadata=metadata)
            if listing.model_fingerprint != self.fingerprint:
                raise RuntimeError(
                    f"the sidecar's probes are for model fingerprint {listing.model_fingerprint}, "
                    f"this model's is {self.fingerprint}"
                )
            plan = Plan.from_listing(listing, cfg.mode, self.device)
            requests: queue.Queue = queue.Queue(maxsize=cfg.send_queue_size)
            call = stub.Monitor(iter(requests.get, STOP), metadata=metadata)
            self._call = call
            self.plan, self.listing, self._requests = plan, listing, requests
            self._stalled = False
            self.session += 1
            self._up.set()
            self.metrics.monitoring_up.set(1)
            started = time.monotonic()
            log.info(
                "probewatch: monitoring ON: sidecar %s, %d probes on layers %s (%s mode)",
                cfg.sidecar,
                len(plan.probes),
                plan.layers,
                cfg.mode,
            )
            try:
                for response in call:
                    self.on_response(response)
                why = "stream ended"
            except grpc.RpcError as exc:
                why = f"{exc.code().name}: {exc.details()}" if hasattr(exc, "code") else str(exc)
            finally:
                self._up.clear()
                self.metrics.monitoring_up.set(0)
                self._requests = None
                self._call = None
                self.on_down()
            if not self._stopping.is_set():
                log.warning(
                    "probewatch: monitoring OFF: stream to sidecar %s lost (%s); generation continues "
                    "unmonitored; reconnecting",
                    cfg.sidecar,
                    why,
                )
            return time.monotonic() - started > 1.0
        finally:
            channel.close()
            self._channel = None


def open_channel(config: AttachConfig) -> grpc.Channel:
    """The channel to `config.sidecar` every client uses (TLS when configured, keepalive options)."""
    options = channel_options(config)
    if config.tls_ca or config.tls_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(config.tls_ca),
            private_key=_read(config.tls_key),
            certificate_chain=_read(config.tls_cert),
        )
        return grpc.secure_channel(config.sidecar, credentials, options=options)
    return grpc.insecure_channel(config.sidecar, options=options)


def call_metadata(config: AttachConfig) -> tuple[tuple[str, str], ...] | None:
    """The bearer-token metadata of every call (read from the token file each time: rotation)."""
    return bearer_metadata(read_token_file(config.auth_token_file)) if config.auth_token_file else None


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as fh:
        return fh.read()


def short_error(exc: BaseException) -> str:
    if isinstance(exc, grpc.FutureTimeoutError):
        return "connect timeout"
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__
