"""The `probewatch.v1.Monitor` servicer: discovery, unary scoring and the live stream.

Bad input inside the bidirectional stream is answered with an `Error` message carrying the
generation id, the layer and a gRPC status code; the stream stays open and every other
generation on it goes on (one bad chunk from one sequence of a batch must not cost the whole
batch its monitoring). The rejected chunk leaves no trace in the generation's state, so a
corrected chunk can follow. This includes messages that do not even parse (invalid UTF-8 in a
string field, garbage bytes): the stream's deserializer turns them into a `BadMessage` that is
answered INVALID_ARGUMENT instead of failing the whole RPC with INTERNAL.

Message size has two tiers. `max_message_bytes` (advertised by ListProbes; clients split chunks
below it) is checked per message: a bigger one is answered with an Error RESOURCE_EXHAUSTED and
the stream stays open. gRPC's own receive limit is set to twice that, as the memory backstop:
beyond it gRPC fails the whole RPC with RESOURCE_EXHAUSTED before the sidecar sees the message;
the stream's open generations are then finalised as `aborted` (aggregates, alerts and incidents
are kept: nothing recorded is lost).

Each stream's sender loop (the RPC's own thread) also keeps the stream honest: a stream silent
for `stream_idle_timeout_s` while it holds open generations ends with DEADLINE_EXCEEDED (its
generations `aborted`, summaries sent first); a generation open longer than `generation_ttl_s`,
or without a chunk for `generation_idle_ttl_s`, is aborted alone; while the sidecar drains for
shutdown, a stream ends (UNAVAILABLE) as soon as its last generation is finalised; a stream whose
bearer token was removed from the token file ends UNAUTHENTICATED (its generations `aborted`,
summaries first). The loop runs these checks at least every tick, also while responses flow.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np

from probewatch.probes.bundle import STACK_KINDS
from probewatch.proto.codec import CodecError, check_positions, decode_rows, encode_array
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from probewatch.server.sidecar.auth import bearer_from_metadata
from probewatch.server.sidecar.engine import PROJECTIONS, ROWS
from probewatch.server.sidecar.errors import (
    InvalidInput,
    Refused,
    ScoringFailed,
    TooLarge,
    UnknownProbe,
    WrongModel,
)
from probewatch.server.sidecar.generations import client_identity, short_id
from probewatch.server.sidecar.pacing import ClientPacer
from probewatch.server.sidecar.specs import layer_prompt_rows
from probewatch.server.sidecar.status import grpc_status
from probewatch.server.sidecar.streams import END, StreamState
from probewatch.server.sidecar.work import ChunkWork, CloseWork, EndWork

if TYPE_CHECKING:
    from probewatch.server.sidecar.process import Sidecar

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Monitor"].full_name


@dataclass
class BadMessage:
    """A request whose bytes did not parse (answered INVALID_ARGUMENT; the stream goes on)."""

    reason: str


def lenient(message_type):
    """A request deserializer that returns `BadMessage` instead of raising (gRPC would fail the RPC)."""
    name = message_type.DESCRIPTOR.name

    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError (the only thing FromString raises)
            detail = "a string field holds invalid UTF-8" if "UTF-8" in str(exc) else str(exc)
            return BadMessage(f"{name} of {len(data)} bytes does not parse: {detail}")

    return parse


def add_to_server(servicer: MonitorServicer, server: grpc.Server) -> None:
    """Register the servicer with lenient deserializers (`add_MonitorServicer_to_server` has strict ones)."""
    handlers = {
        "Monitor": grpc.stream_stream_rpc_method_handler(
            servicer.Monitor, lenient(pb.MonitorRequest), pb.MonitorResponse.SerializeToString
        ),
        "Score": grpc.unary_unary_rpc_method_handler(
            servicer.Score, lenient(pb.ScoreRequest), pb.ScoreResponse.SerializeToString
        ),
        "ListProbes": grpc.unary_unary_rpc_method_handler(
            servicer.ListProbes, lenient(pb.ListProbesRequest), pb.ListProbesResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


class MonitorServicer(pb_grpc.MonitorServicer):
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self.config = sidecar.config
        self.engine = sidecar.engine
        self.metrics = sidecar.metrics
        self.runtime = sidecar.runtime
        self.d_model = sidecar.d_model
        self.row_layers = set(self.runtime.layers)
        self.pacer = ClientPacer(self.config.max_client_mb_per_s * 1e6)
        self._list_response = self._build_list_response()
        c = self.config
        # how often a stream's sender loop checks idle time, TTLs, draining and its token
        ttls = (c.stream_idle_timeout_s, c.generation_ttl_s, c.generation_idle_ttl_s)
        self.tick_s = max(0.05, min(1.0, *(t / 4 for t in ttls)))
        self._streams = threading.Condition()
        self.open_streams = 0  # Monitor RPCs in progress (shutdown waits for them to end)

    def wait_streams_ended(self, timeout: float) -> bool:
        """Wait up to `timeout` s for every Monitor stream to end (draining ends them); True if they did."""
        with self._streams:
            return self._streams.wait_for(lambda: self.open_streams == 0, timeout)

    def _reject(self, code: grpc.StatusCode) -> None:
        self.metrics.rejected.labels(code=code.name).inc()

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
                    uncertain_from=m.threshold.uncertain_from,  # None: the field stays unset (no band)
                    layers=list(specs[m.id].reads),
                    family=self.engine.families.member_of(m.id) or "",
                )
            )
        plans = []
        sae_layers = set(self.runtime.sae_layers)
        for layer in self.runtime.layers:
            on_layer = [s for s in specs.values() if layer in s.reads]  # each layer of a multi-layer probe too
            stack = self.runtime.stacks.get(layer)
            plans.append(
                pb.LayerPlan(
                    layer=layer,
                    probe_ids=list(stack.probe_ids) if stack else [],
                    projection=encode_array(stack.weight.cpu().numpy()) if stack else None,
                    rows_required=layer in sae_layers or any(s.kind not in STACK_KINDS for s in on_layer),
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
            families=[
                pb.FamilyInfo(
                    id=f.id,
                    behaviour=f.behaviour,
                    member_ids=list(f.members),
                    member_types=list(f.member_types),
                    threshold=f.threshold,
                    uncertain_from=f.uncertain_from,
                    version=str(f.version),
                    model_fingerprint=f.fingerprint,
                )
                for f in self.engine.families.specs.values()
            ],
        )

    def ListProbes(self, request, context):
        if isinstance(request, BadMessage):
            self._reject(grpc.StatusCode.INVALID_ARGUMENT)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return self._list_response

    # -- unary scoring ----------------------------------------------------------------------------------
    def Score(self, request, context):
        try:
            if isinstance(request, BadMessage):
                raise InvalidInput(request.reason)
            self._check_size(request, "ScoreRequest")
            return self._score(request)
        except (Refused, CodecError) as exc:
            code = grpc_status(exc)
            self._reject(code)
            context.abort(code, exc.message)
        except Exception:  # a bug answers INTERNAL without echoing internals
            log.exception("Score failed")
            self.metrics.internal_errors.labels(component="stream").inc()
            self._reject(grpc.StatusCode.INTERNAL)
            context.abort(grpc.StatusCode.INTERNAL, "scoring failed on the sidecar (logged there)")

    def _score_payloads(self, request: pb.ScoreRequest) -> tuple[dict[int, tuple[str, np.ndarray]], int]:
        """Each layer's decoded rows or projections, and the one row count they share."""
        payloads: dict[int, tuple[str, np.ndarray]] = {}
        n_rows = None
        for lp in request.layers:
            if lp.layer in payloads:
                raise InvalidInput(f"layer {lp.layer} given twice")
            kind, width = self._layer_kind(lp.layer, lp.kind)
            shape = list(lp.payload.shape)
            n = int(shape[0]) if shape else 0
            data = self._decode(lp.payload, n, width, f"layer {lp.layer}")
            if n_rows is not None and n != n_rows:
                raise InvalidInput(
                    f"layer {lp.layer} carries {n} rows but an earlier layer {n_rows}; one sequence per request"
                )
            n_rows = n
            payloads[lp.layer] = (kind, data)
        if not payloads:
            raise InvalidInput("ScoreRequest carries no layers")
        return payloads, int(n_rows or 0)

    def _score(self, request: pb.ScoreRequest) -> pb.ScoreResponse:
        fp = self.sidecar.config.fingerprint
        if request.model_fingerprint and request.model_fingerprint != fp:
            raise WrongModel(f"model fingerprint {request.model_fingerprint} does not match the sidecar's {fp}")
        families = self.engine.families.specs
        unknown = [p for p in request.probe_ids if p not in self.engine.specs and p not in families]
        if unknown:
            shown = ", ".join(short_id(p) for p in unknown[:5]) + (
                f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
            )
            raise UnknownProbe(f"unknown probe(s) {shown}; loaded probes: {', '.join([*self.engine.specs, *families])}")
        if request.prompt_length < 0:
            raise InvalidInput("negative prompt_length")
        payloads, n_rows = self._score_payloads(request)
        for pid in request.probe_ids:
            reads = (
                self.engine.families.reads(pid, self.engine.specs) if pid in families else self.engine.specs[pid].reads
            )
            missing = [layer for layer in reads if layer not in payloads]
            if missing:
                raise InvalidInput(f"probe {pid} reads layer(s) {missing}, which the request does not carry")
        token_ids = None
        if request.token_ids:  # an answer probe reads the option a reply names by them
            if len(request.token_ids) != n_rows:
                raise InvalidInput(f"{len(request.token_ids)} token_ids for {n_rows} rows; one id per row, or none")
            token_ids = np.asarray(request.token_ids, dtype=np.int64)
        results = self.engine.score_now(payloads, int(request.prompt_length), list(request.probe_ids), token_ids)
        for r in results:
            if not np.isfinite(r.scores).all():
                raise InvalidInput(f"probe {r.spec.id}: a row scores non-finite (activations beyond float32 range)")
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
                        member=r.member,
                    ),
                    positions=r.positions.tolist(),
                    token_scores=encode_array(r.scores.astype(np.float32)),
                )
                for r in results
            ]
        )

    def _decode(self, payload: pb.Tensor, n_rows: int, width: int, what: str) -> np.ndarray:
        """Rows or projections, finite and within ±max_abs_activation (so every score is finite)."""
        return decode_rows(payload, n_rows, width, what, self.config.max_abs_activation, limit="--max-abs-activation")

    def _layer_kind(self, layer: int, kind: int) -> tuple[str, int]:
        """(kind name, expected width) of a payload for `layer`, or INVALID_ARGUMENT."""
        if kind == pb.PAYLOAD_KIND_RESIDUAL_ROWS:
            if layer not in self.row_layers:
                raise InvalidInput(f"no probe reads layer {layer}; capture layers {sorted(self.row_layers)}")
            return ROWS, self.d_model
        if kind == pb.PAYLOAD_KIND_PROJECTIONS:
            stack = self.runtime.stacks.get(layer)
            if stack is None:
                raise InvalidInput(
                    f"no linear probe reads layer {layer}: no projections to score "
                    f"(pushdown layers: {sorted(self.runtime.stacks)})"
                )
            return PROJECTIONS, stack.k
        raise InvalidInput(f"payload kind {kind} is neither RESIDUAL_ROWS nor PROJECTIONS")

    # -- live stream ------------------------------------------------------------------------------------
    def Monitor(self, request_iterator, context):
        if self.engine.draining:
            self._reject(grpc.StatusCode.UNAVAILABLE)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the sidecar is shutting down; reconnect once it is back")
        stream = StreamState(context.peer(), self.config.outbox_size, self.metrics)
        if self.sidecar.tokens is not None:  # the guard admitted it with this token: re-checked every tick
            stream.token = bearer_from_metadata(context.invocation_metadata())
        self.metrics.active_streams.inc()
        with self._streams:
            self.open_streams += 1

        def on_overflow() -> None:  # from the scoring worker: the client stopped reading its responses
            self._reject(grpc.StatusCode.RESOURCE_EXHAUSTED)
            log.warning(
                "stream %s from %s: %d responses queued and not read (--outbox-size); cutting it off",
                stream.id,
                stream.peer,
                self.config.outbox_size,
            )
            stream.outbox.close()
            context.cancel()

        def on_done() -> None:  # cancelled, deadline, transport error, or normal completion
            stream.alive = False
            stream.outbox.close()

        stream.on_overflow = on_overflow
        context.add_callback(on_done)
        reader = threading.Thread(
            target=self._read,
            args=(request_iterator, context, stream),
            name=f"probewatch-stream-{stream.id}",
            daemon=True,
        )
        reader.start()
        checked = time.monotonic()
        try:
            while True:
                msg = stream.outbox.get(timeout=self.tick_s)
                if msg is END:
                    break
                if msg is None or time.monotonic() - checked >= self.tick_s:
                    checked = time.monotonic()
                    try:
                        self._housekeeping(stream)
                    except Exception:  # the stream goes on; the bug is logged and counted
                        log.exception("stream %s housekeeping failed", stream.id)
                        self.metrics.internal_errors.labels(component="stream").inc()
                if msg is not None:
                    yield msg
            if stream.end_status is not None and context.is_active():
                context.abort(*stream.end_status)
        finally:
            stream.alive = False
            self.metrics.active_streams.dec()
            with self._streams:
                self.open_streams -= 1
                self._streams.notify_all()

    def _housekeeping(self, stream: StreamState) -> None:
        """Idle timeout, generation TTL and draining, checked from the stream's own sender loop."""
        if stream.end_status is not None:
            return
        tokens = self.sidecar.tokens
        if tokens is not None and not tokens.valid(stream.token):  # re-reads the file every reload_every_s
            self._end_stream(
                stream,
                grpc.StatusCode.UNAUTHENTICATED,
                "the bearer token of this stream was removed from the token file; its generations ended aborted",
            )
            return
        config = self.config
        self.engine.expire_generations(stream)  # --generation-ttl and --generation-idle-ttl, each counted
        open_generations = [g for g in stream.generations.values() if not g.closing]
        idle = time.monotonic() - stream.last_activity
        if open_generations and idle > config.stream_idle_timeout_s:
            self._end_stream(
                stream,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no message for {idle:.0f}s with {len(open_generations)} generation(s) open "
                f"(--stream-idle-timeout {config.stream_idle_timeout_s:g}s); they ended aborted",
            )
        elif self.engine.draining and not stream.generations:
            self._end_stream(stream, grpc.StatusCode.UNAVAILABLE, "the sidecar is shutting down; reconnect later")

    def _end_stream(self, stream: StreamState, code: grpc.StatusCode, message: str) -> None:
        """Finalise the stream's generations (aborted, summaries sent), then end the RPC with `code`."""
        stream.end_status = (code, message)
        self._reject(code)
        if code != grpc.StatusCode.UNAVAILABLE:
            log.warning("stream %s from %s: %s", stream.id, stream.peer, message)
        for gen in list(stream.generations.values()):
            if not gen.closing:
                self.engine.submit_control(CloseWork(gen, status="aborted"))
        self.engine.submit_control(EndWork(stream))

    def _read(self, request_iterator, context, stream: StreamState) -> None:
        try:
            for request in request_iterator:
                stream.last_activity = time.monotonic()
                if stream.end_status is not None:
                    continue  # the stream is ending: nothing new is taken on
                try:
                    self._handle(stream, request)
                except Exception:  # one message's bug must not end the stream
                    log.exception("stream %s: handling a message failed", stream.id)
                    self.metrics.internal_errors.labels(component="stream").inc()
                    stream.refuse(ScoringFailed("the sidecar failed on this message (logged)"))
        except Exception as exc:  # noqa: BLE001 - transport end: the stream's generations are aborted below
            code = getattr(context, "code", lambda: None)()
            if code is None and isinstance(exc, grpc.RpcError):
                code = exc.code() if callable(getattr(exc, "code", None)) else None
            if code is not None and code != grpc.StatusCode.CANCELLED:
                self._reject(code)
            log.info("stream %s from %s ended abnormally: %s", stream.id, stream.peer, exc or type(exc).__name__)
        finally:
            for gen in list(stream.generations.values()):
                if not gen.closing:
                    self.engine.submit_control(CloseWork(gen, status="aborted"))
            self.engine.submit_control(EndWork(stream))

    def _close(self, stream: StreamState, gid: str, close: pb.Close) -> None:
        """What the client sent at the end (texts, token texts, drops), then the engine finalises it."""
        gen = self.engine.generations.lookup(stream, gid)
        if close.token_texts_start < 0:
            raise InvalidInput(f"close: token_texts_start {close.token_texts_start} is negative")
        gen.prompt_text = close.prompt_text or None
        gen.response_text = close.response_text or None
        if close.token_texts:
            gen.token_texts, gen.token_texts_start = list(close.token_texts), int(close.token_texts_start)
        gen.client_dropped = int(close.dropped_chunks)
        if close.abort_reason:
            log.warning("generation %s: the client stopped monitoring it: %s", gid, close.abort_reason[:200])
        self.engine.submit_control(CloseWork(gen, status="aborted" if close.abort_reason else "closed"))

    def _handle(self, stream: StreamState, request: pb.MonitorRequest | BadMessage) -> None:
        if isinstance(request, BadMessage):
            stream.refuse(InvalidInput(request.reason))
            return
        which = request.WhichOneof("msg")
        gid, layer = "", -1
        try:
            if which == "chunk":
                gid, layer = request.chunk.generation_id, request.chunk.layer
            elif which in ("open", "close"):
                gid = getattr(request, which).generation_id
            if gid:
                self.engine.generations.check_id(gid)
            self._check_size(request, f"generation {short_id(gid) or '?'} {which}")
            if which == "open":
                self.engine.open_generation(stream, request.open)
            elif which == "chunk":
                self._chunk(stream, request.chunk)
            elif which == "close":
                self._close(stream, gid, request.close)
            else:
                raise InvalidInput("empty MonitorRequest (set open, chunk or close)")
        except (Refused, CodecError) as exc:
            rejected = stream.generations.get(gid)
            if rejected is not None:
                rejected.rejected_chunks += 1
            stream.refuse(exc, short_id(gid, self.engine.limits.max_generation_id_bytes), layer)

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
            raise TooLarge(
                f"{what}: message of {size} bytes is over the {limit}-byte limit; split it into smaller chunks"
            )

    def _chunk(self, stream: StreamState, chunk: pb.ActivationChunk) -> None:
        received = time.perf_counter()
        gen = self.engine.generations.lookup(stream, chunk.generation_id)
        what = f"generation {gen.id} layer {chunk.layer}"
        kind, width = self._layer_kind(chunk.layer, chunk.kind)
        positions = check_positions(chunk.positions, gen.last_position.get(chunk.layer, -1), what)
        if chunk.token_ids and len(chunk.token_ids) != len(positions):
            raise InvalidInput(f"{what}: {len(chunk.token_ids)} token_ids for {len(positions)} positions")
        data = self._decode(chunk.payload, len(positions), width, what)
        gen.last_position[chunk.layer] = int(positions[-1])
        token_ids = np.asarray(chunk.token_ids, dtype=np.int64) if chunk.token_ids else None
        work = ChunkWork(
            generation=gen,
            layer=chunk.layer,
            kind=kind,
            positions=positions,
            data=data,
            received_at=received,
            token_ids=token_ids,
        )
        refusal = self.engine.submit_chunk(work)
        if self.pacer.enabled:  # over its rate: this stream is read later (HTTP/2 flow control slows the client)
            wait = self.pacer.charge(client_identity(stream.peer, stream.token), len(chunk.payload.data))
            if wait > 0:
                self.metrics.paced_seconds.inc(wait)
                time.sleep(wait)
        if refusal is not None:
            # not a malformed message: counted in probewatch_dropped_chunks_total{reason="queue_full"|"queue_bytes"}
            stream.refuse(refusal, gen.id, chunk.layer, count=False)
