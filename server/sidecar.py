"""The gRPC sidecar: `probewatch.v1.Monitor` servicer, health, reflection and /metrics.

The sidecar never loads the model's weights: it needs the model's fingerprint (to refuse bundles
and generations from a different model) and d_model, both read from the model folder
(`fingerprint_folder` reads a few slices lazily), or given outright.

Bad input inside the bidirectional stream is answered with an `Error` message carrying the
generation id, the layer and a gRPC status code; the stream stays open and every other
generation on it goes on (one bad chunk from one sequence of a batch must not cost the whole
batch its monitoring). The rejected chunk leaves no trace in the generation's state, so a
corrected chunk can follow.

Message size has two tiers. `max_message_bytes` (advertised by ListProbes; clients split chunks
below it) is checked per message: a bigger one is answered with an Error RESOURCE_EXHAUSTED and
the stream stays open. gRPC's own receive limit is set to twice that, as the memory backstop:
beyond it gRPC fails the whole RPC with RESOURCE_EXHAUSTED before the sidecar sees the message;
the stream's open generations are then finalised as `aborted` (aggregates, alerts and incidents
are kept: nothing recorded is lost).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import BaseModel, ConfigDict, Field

from probewatch.errors import ProbewatchError
from probewatch.probes.bundle import Bundle, load_bundles
from probewatch.probes.runtime import ProbeRuntime
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from probewatch.server.engine import (
    _END,
    PROJECTIONS,
    ROWS,
    ChunkWork,
    CloseWork,
    EndWork,
    ScoringEngine,
    StreamState,
    is_linear,
    layer_prompt_rows,
)
from probewatch.server.incidents import IncidentStore
from probewatch.server.metrics import SidecarMetrics, serve_metrics
from probewatch.server.webhook import WebhookSender, validate_webhook_url
from probewatch.server.wire import WireError, check_positions, decode_rows, encode_array, invalid

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Monitor"].full_name
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class SidecarConfig(BaseModel):
    """Everything `probewatch serve` configures (and what tests build directly)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_id: str
    fingerprint: str
    d_model: int | None = None  # None: taken from the bundles' manifests
    bundle_paths: list[Path] = Field(default_factory=list)
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = 9400  # None: no /metrics server
    incident_db: Path | None = None  # None: incidents are not recorded
    webhook_url: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    queue_size: int = 1024
    max_batch_rows: int = 16384
    max_workers: int = 64  # gRPC threads; each live stream holds one
    put_timeout_s: float = 5.0
    # SAE latents exported as probewatch_sae_feature_activation, {SAE name: latent ids};
    # None: the latents the loaded sae_feature probes read (at most 32 per SAE)
    watch: dict[str, list[int]] | None = None
    # TLS for the gRPC port (PEM files); with tls_client_ca, clients must present a certificate it signed
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None


def server_credentials(config: SidecarConfig) -> grpc.ServerCredentials | None:
    """gRPC TLS credentials from the config's PEM files (None: plaintext); CLI errors name the file."""
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        return None
    if not (config.tls_cert and config.tls_key):
        raise ProbewatchError("TLS needs both --tls-cert and --tls-key")

    def read(path: Path, what: str) -> bytes:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ProbewatchError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from exc
        if b"-----BEGIN" not in data:
            raise ProbewatchError(f"TLS {what} {path} is not a PEM file")
        return data

    ca = read(config.tls_client_ca, "client CA") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read(config.tls_key, "key"), read(config.tls_cert, "certificate"))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


@dataclass
class ModelIdentity:
    model_id: str
    fingerprint: str
    d_model: int | None
    folder: str | None


def resolve_model_identity(spec: str | None, fingerprint: str | None = None) -> ModelIdentity:
    """Fingerprint and d_model of a model spec without loading its weights."""
    from probewatch.models import fingerprint_folder, model_id_for, resolve_model_path

    model_id = model_id_for(spec)
    if fingerprint:
        return ModelIdentity(model_id, fingerprint, None, None)
    folder = resolve_model_path(spec)
    if not Path(folder).exists():  # a hub id: fetch only config + safetensors
        from probewatch import envs

        try:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(
                folder, allow_patterns=["config.json", "*.safetensors"], local_files_only=envs.offline()
            )
        except Exception as exc:  # any hub failure is the same CLI error
            raise ProbewatchError(
                f"cannot read model {spec!r} to fingerprint it: {exc}; pass a local folder "
                "with --model or the fingerprint with --fingerprint"
            ) from exc
    try:
        fp = fingerprint_folder(folder)
    except FileNotFoundError as exc:
        raise ProbewatchError(f"cannot fingerprint model folder {folder}: {exc}") from exc
    config = json.loads((Path(folder) / "config.json").read_text())
    text = config.get("text_config") or config
    d_model = next((int(text[k]) for k in ("hidden_size", "n_embd", "d_model") if text.get(k)), None)
    return ModelIdentity(model_id, fp, d_model, str(folder))


def sidecar_config_for(
    model: str | None, bundles: list[str] | None = None, fingerprint: str | None = None, **settings
) -> SidecarConfig:
    """Resolve a model spec and bundle specs (default: the shipped bundles for the model)."""
    from probewatch.bundle_index import default_bundle_dirs, resolve_bundle_specs, shipped_root

    identity = resolve_model_identity(model, fingerprint)
    paths = resolve_bundle_specs(bundles, identity.model_id) if bundles else default_bundle_dirs(identity.model_id)
    if not paths:
        raise ProbewatchError(
            f"no probe bundles for model {identity.model_id!r}: none shipped under {shipped_root()} and none given. "
            "Train them (the training pipeline exports bundles under probes/shipped/<model>/) or pass --bundles DIR"
        )
    if settings.get("webhook_url"):
        validate_webhook_url(settings["webhook_url"])
    return SidecarConfig(
        model_id=identity.model_id,
        fingerprint=identity.fingerprint,
        d_model=identity.d_model,
        bundle_paths=list(paths),
        **settings,
    )


class Sidecar:
    """A running sidecar; `with Sidecar(config) as s:` starts and stops it."""

    def __init__(self, config: SidecarConfig, bundles: list[Bundle] | None = None) -> None:
        self.config = config
        if bundles is None:
            bundles = load_bundles(
                config.bundle_paths, expected_fingerprint=config.fingerprint, expected_d_model=config.d_model
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
            for name, group in getattr(self.runtime, "sae_groups", {}).items():
                self.runtime.set_watch(name, group.feature_ids.tolist()[:32])
        if self.runtime.d_model is None:
            raise ProbewatchError("cannot tell the model's d_model from the bundles or the model folder")
        self.d_model = int(self.runtime.d_model)
        self.metrics = SidecarMetrics()
        self.metrics.register_bundles(bundles)
        self.incidents = IncidentStore.open(config.incident_db) if config.incident_db else None
        self.webhook = None
        if config.webhook_url:
            self.webhook = WebhookSender(
                config.webhook_url, on_outcome=lambda o: self.metrics.webhook_deliveries.labels(outcome=o).inc()
            )
        self.engine = ScoringEngine(
            self.runtime,
            self.metrics,
            config.fingerprint,
            incidents=self.incidents,
            webhook=self.webhook,
            queue_size=config.queue_size,
            max_batch_rows=config.max_batch_rows,
            put_timeout_s=config.put_timeout_s,
        )
        self.servicer = MonitorServicer(self)
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._metrics_server = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> Sidecar:
        self.engine.start()
        limit = 2 * self.config.max_message_bytes  # transport backstop; the per-message check is in the servicer
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.config.max_workers, thread_name_prefix="probewatch-grpc"),
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_MonitorServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        address = f"{self.config.host}:{self.config.port}"
        credentials = server_credentials(self.config)
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
        if self.config.metrics_port is not None:
            try:
                metrics_server, _ = serve_metrics(
                    self.metrics.registry, self.config.metrics_port, self.config.metrics_host
                )
            except OSError as exc:
                self.stop(0)
                raise ProbewatchError(f"cannot serve /metrics on port {self.config.metrics_port}: {exc}") from exc
            self._metrics_server = metrics_server
            self.metrics_port = metrics_server.server_port
        log.info(
            "probewatch sidecar: gRPC%s on %s:%s, /metrics on %s, %d probes on layers %s",
            " (TLS)" if credentials else "",
            self.config.host,
            port,
            self.metrics_port,
            len(self.runtime.bundles),
            self.runtime.layers,
        )
        return self

    @property
    def address(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "[::]") else "127.0.0.1"
        return f"{host}:{self.port}"

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop accepting, let streams end, score what is queued, flush incidents and webhooks."""
        self.health.enter_graceful_shutdown()
        if self._server is not None:
            self._server.stop(grace_s).wait(grace_s + 5)
            self._server = None
        self.engine.stop()
        if self.webhook is not None:
            self.webhook.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
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


class MonitorServicer(pb_grpc.MonitorServicer):
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.engine = sidecar.engine
        self.metrics = sidecar.metrics
        self.runtime = sidecar.runtime
        self.d_model = sidecar.d_model
        self.row_layers = set(self.runtime.layers)
        self._list_response = self._build_list_response()

    # -- discovery ------------------------------------------------------------------------------------
    def _build_list_response(self) -> pb.ListProbesResponse:
        config = self.sidecar.config
        specs = self.engine.specs
        probes = []
        for bundle in self.runtime.bundles:
            m = bundle.manifest
            probes.append(
                pb.ProbeInfo(
                    id=m.id,
                    behaviour=m.behaviour,
                    kind=m.kind,
                    layer=m.layer,
                    token_selection=m.token_selection,
                    aggregation=m.aggregation.method,
                    window=m.aggregation.window,
                    alpha=m.aggregation.alpha,
                    threshold=m.threshold.value,
                    version=str(m.version),
                    model_fingerprint=m.model.fingerprint,
                    description=m.description,
                    weights_sha256=m.weights_sha256,
                )
            )
        plans = []
        sae_layers = set(getattr(self.runtime, "sae_layers", []))
        for layer in self.runtime.layers:
            on_layer = [s for s in specs.values() if s.layer == layer]
            stack = self.runtime.stacks.get(layer)
            plans.append(
                pb.LayerPlan(
                    layer=layer,
                    probe_ids=list(stack.probe_ids) if stack else [],
                    projection=encode_array(stack.weight.cpu().numpy()) if stack else None,
                    rows_required=layer in sae_layers or any(not is_linear(s.kind) for s in on_layer),
                    prompt_rows=layer_prompt_rows(on_layer),
                )
            )
        return pb.ListProbesResponse(
            model_id=config.model_id,
            model_fingerprint=config.fingerprint,
            d_model=self.d_model,
            probes=probes,
            layers=self.runtime.layers,
            plans=plans,
            max_message_bytes=config.max_message_bytes,
        )

    def ListProbes(self, request, context):
        return self._list_response

    # -- unary scoring ----------------------------------------------------------------------------------
    def Score(self, request: pb.ScoreRequest, context):
        try:
            self._check_size(request, "ScoreRequest")
            return self._score(request)
        except WireError as exc:
            self.metrics.rejected.labels(code=exc.code.name).inc()
            context.abort(exc.code, exc.message)

    def _score(self, request: pb.ScoreRequest) -> pb.ScoreResponse:
        fp = self.sidecar.config.fingerprint
        if request.model_fingerprint and request.model_fingerprint != fp:
            raise WireError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model fingerprint {request.model_fingerprint} does not match the sidecar's {fp}",
            )
        unknown = [p for p in request.probe_ids if p not in self.engine.specs]
        if unknown:
            raise WireError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown probe(s) {', '.join(unknown)}; loaded probes: {', '.join(self.engine.specs)}",
            )
        if request.prompt_length < 0:
            raise invalid("negative prompt_length")
        payloads: dict[int, tuple[str, np.ndarray]] = {}
        n_rows = None
        for lp in request.layers:
            if lp.layer in payloads:
                raise invalid(f"layer {lp.layer} given twice")
            kind, width = self._layer_kind(lp.layer, lp.kind)
            shape = list(lp.payload.shape)
            n = int(shape[0]) if shape else 0
            data = decode_rows(lp.payload, n, width, f"layer {lp.layer}")
            if n_rows is not None and n != n_rows:
                raise invalid(
                    f"layer {lp.layer} carries {n} rows but an earlier layer {n_rows}; one sequence per request"
                )
            n_rows = n
            payloads[lp.layer] = (kind, data)
        if not payloads:
            raise invalid("ScoreRequest carries no layers")
        for pid in request.probe_ids:
            layer = self.engine.specs[pid].layer
            if layer not in payloads:
                raise invalid(f"probe {pid} reads layer {layer}, which the request does not carry")
        results = self.engine.score_now(payloads, int(request.prompt_length), list(request.probe_ids))
        return pb.ScoreResponse(
            probes=[
                pb.ProbeScores(
                    result=pb.ProbeResult(
                        probe_id=r.spec.id,
                        behaviour=r.spec.behaviour,
                        score=r.aggregate,
                        threshold=r.spec.threshold,
                        flagged=r.flagged,
                        n_tokens=len(r.scores),
                        aggregation=r.spec.aggregation.method,
                        token_selection=r.spec.token_selection,
                    ),
                    positions=r.positions.tolist(),
                    token_scores=encode_array(r.scores.astype(np.float32)),
                )
                for r in results
            ]
        )

    def _layer_kind(self, layer: int, kind: int) -> tuple[str, int]:
        """(kind name, expected width) of a payload for `layer`, or INVALID_ARGUMENT."""
        if kind == pb.PAYLOAD_KIND_RESIDUAL_ROWS:
            if layer not in self.row_layers:
                raise invalid(f"no probe reads layer {layer}; capture layers {sorted(self.row_layers)}")
            return ROWS, self.d_model
        if kind == pb.PAYLOAD_KIND_PROJECTIONS:
            stack = self.runtime.stacks.get(layer)
            if stack is None:
                raise invalid(
                    f"no linear probe reads layer {layer}: no projections to score "
                    f"(pushdown layers: {sorted(self.runtime.stacks)})"
                )
            return PROJECTIONS, stack.k
        raise invalid(f"payload kind {kind} is neither RESIDUAL_ROWS nor PROJECTIONS")

    # -- live stream ------------------------------------------------------------------------------------
    def Monitor(self, request_iterator, context):
        stream = StreamState(context.peer())
        self.metrics.active_streams.inc()

        def on_done() -> None:  # cancelled, deadline, transport error, or normal completion
            stream.alive = False
            stream.outbox.put(_END)

        context.add_callback(on_done)
        reader = threading.Thread(
            target=self._read,
            args=(request_iterator, context, stream),
            name=f"probewatch-stream-{stream.id}",
            daemon=True,
        )
        reader.start()
        try:
            while True:
                msg = stream.outbox.get()
                if msg is _END:
                    return
                yield msg
        finally:
            stream.alive = False
            self.metrics.active_streams.dec()

    def _read(self, request_iterator, context, stream: StreamState) -> None:
        try:
            for request in request_iterator:
                self._handle(stream, request)
        except Exception as exc:  # noqa: BLE001 - transport end: the stream's generations are aborted below
            code = getattr(context, "code", lambda: None)()
            if code is None and isinstance(exc, grpc.RpcError):
                code = exc.code() if callable(getattr(exc, "code", None)) else None
            if code is not None and code != grpc.StatusCode.CANCELLED:
                self.metrics.rejected.labels(code=code.name).inc()
            log.info("stream %s from %s ended abnormally: %s", stream.id, stream.peer, exc or type(exc).__name__)
        finally:
            for gen in list(stream.generations.values()):
                if not gen.closing:
                    self.engine.submit_control(CloseWork(gen, status="aborted"))
            self.engine.submit_control(EndWork(stream))

    def _handle(self, stream: StreamState, request: pb.MonitorRequest) -> None:
        which = request.WhichOneof("msg")
        gid, layer = "", -1
        try:
            if which == "chunk":
                gid, layer = request.chunk.generation_id, request.chunk.layer
            self._check_size(request, f"generation {gid or '?'} {which}")
            if which == "open":
                gid = request.open.generation_id
                self.engine.open_generation(stream, request.open)
            elif which == "chunk":
                gid, layer = request.chunk.generation_id, request.chunk.layer
                self._chunk(stream, request.chunk)
            elif which == "close":
                gid = request.close.generation_id
                gen = self.engine.lookup(stream, gid)
                close = request.close
                gen.prompt_text = close.prompt_text or None
                gen.response_text = close.response_text or None
                gen.client_dropped = int(close.dropped_chunks)
                if close.abort_reason:
                    log.warning("generation %s: the client stopped monitoring it: %s", gid, close.abort_reason)
                self.engine.submit_control(CloseWork(gen, status="aborted" if close.abort_reason else "closed"))
            else:
                raise invalid("empty MonitorRequest (set open, chunk or close)")
        except WireError as exc:
            self.metrics.rejected.labels(code=exc.code.name).inc()
            rejected = stream.generations.get(gid)
            if rejected is not None:
                rejected.rejected_chunks += 1
            stream.error(gid, exc, layer)

    def _check_size(self, message, what: str) -> None:
        limit = self.sidecar.config.max_message_bytes
        chunk = message.chunk if isinstance(message, pb.MonitorRequest) and message.HasField("chunk") else None
        if chunk is not None:
            # an upper bound of the encoded size: ByteSize() re-encodes the whole payload (~0.1 ms per chunk)
            size = (
                len(chunk.payload.data)
                + 11 * (len(chunk.positions) + len(chunk.token_ids) + len(chunk.payload.shape))
                + len(chunk.generation_id)
                + 64
            )
        else:
            size = message.ByteSize()
        if size > limit:
            raise WireError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{what}: message of {size} bytes is over the {limit}-byte limit; split it into smaller chunks",
            )

    def _chunk(self, stream: StreamState, chunk: pb.ActivationChunk) -> None:
        received = time.perf_counter()
        gen = self.engine.lookup(stream, chunk.generation_id)
        what = f"generation {gen.id} layer {chunk.layer}"
        kind, width = self._layer_kind(chunk.layer, chunk.kind)
        positions = check_positions(chunk.positions, gen.last_position.get(chunk.layer, -1), what)
        if chunk.token_ids and len(chunk.token_ids) != len(positions):
            raise invalid(f"{what}: {len(chunk.token_ids)} token_ids for {len(positions)} positions")
        data = decode_rows(chunk.payload, len(positions), width, what)
        gen.last_position[chunk.layer] = int(positions[-1])
        work = ChunkWork(
            generation=gen, layer=chunk.layer, kind=kind, positions=positions, data=data, received_at=received
        )
        if not self.engine.submit_chunk(work):
            # not a malformed message: counted in probewatch_dropped_chunks_total{reason="queue_full"}
            stream.error(
                gen.id,
                WireError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{what}: scoring queue full; chunk dropped"),
                chunk.layer,
            )
