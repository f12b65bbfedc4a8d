"""Scoring engine: one worker thread that scores the chunks of every live generation in batches.

Why a single worker with a bounded queue: probe cost is one small GEMM per layer, so per-call
overhead (Python, dispatch) dominates; the worker drains whatever is queued — chunks of many
streams and generations — and concatenates all rows of one layer into one GEMM
(`ProbeRuntime.score_layers`, so non-linear probe kinds plug in; pushdown projections go
through `score_projections`). The bounded queue turns a slow sidecar into gRPC back-pressure
towards the clients, where the attach client drops and counts (fail-open), instead of
unbounded memory here.

Ordering: stream readers enqueue in arrival order and the worker applies results in queue order,
so a generation's chunks, its Close and its stream's end are processed in the order they came
(aggregators are order-sensitive). Scoring itself is stateless, so a whole drained batch is
scored first and then applied item by item.

Alerts: evaluated at close on the final aggregate. Monotone aggregations (max, rolling_mean_max)
can only grow, so for those an alert is raised early, as soon as the running aggregate crosses
the threshold. The incident row is written when the alert is raised (an early alert survives a
crash of the sidecar) and completed at close with the final score, all kept token scores and the
text (server/store/__init__.py).

Bounded state: a stream's responses wait in a bounded `Outbox` (a client that stops reading is
cut off instead of growing memory), generation ids and metadata have size limits, and the open
generations per stream and in total are capped (`EngineLimits`). Scores are always finite: a
chunk whose rows score non-finite (activations beyond what float32 can hold) is refused with
INVALID_ARGUMENT before any aggregate sees it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import threading
import time
import uuid
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np
import torch

from probewatch.jsonio import to_jsonable
from probewatch.probes.aggregate import Aggregator, make_aggregator
from probewatch.probes.bundle import LINEAR_KINDS, Bundle
from probewatch.probes.manifest import Aggregation
from probewatch.probes.runtime import ProbeRuntime
from probewatch.probes.selection import selection_mask
from probewatch.proto.codec import WireError, encode_array
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.sidecar.metrics import SidecarMetrics
from probewatch.server.store import Incident, IncidentNotFoundError, IncidentStore, probe_context
from probewatch.server.store.privacy import TextPolicy

log = logging.getLogger(__name__)

MONOTONE_AGGREGATIONS = ("max", "rolling_mean_max")
ROWS, PROJECTIONS = "rows", "projections"
_STOP = object()


@dataclass(frozen=True)
class ProbeSpec:
    """What the engine needs of a bundle's manifest."""

    id: str
    behaviour: str
    kind: str
    layer: int
    token_selection: str
    aggregation: Aggregation
    threshold: float
    version: str
    fingerprint: str

    @property
    def monotone(self) -> bool:
        return self.aggregation.method in MONOTONE_AGGREGATIONS

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ProbeSpec:
        m = bundle.manifest
        return cls(
            id=m.id,
            behaviour=m.behaviour,
            kind=m.kind,
            layer=m.layer,
            token_selection=m.token_selection,
            aggregation=m.aggregation,
            threshold=float(m.threshold.value),
            version=str(m.version),
            fingerprint=m.model.fingerprint,
        )


# -- per-stream and per-generation state ------------------------------------------------------------
_END = object()
DEFAULT_OUTBOX_SIZE = 4096


class Outbox:
    """Responses waiting for a stream's sender; bounded, so a client that stops reading costs no memory.

    `put` never blocks (the scoring worker serves every stream and must not wait on one): past
    `capacity` it refuses and the caller ends the stream. `get` returns a message, None on timeout,
    or `_END` once closed and drained.
    """

    def __init__(self, capacity: int = DEFAULT_OUTBOX_SIZE) -> None:
        self.capacity = capacity
        self._items: deque = deque()
        self._cv = threading.Condition()
        self._closed = False

    def put(self, msg: object) -> bool:
        with self._cv:
            if self._closed:
                return True  # the stream is over: nothing to deliver, nothing to complain about
            if len(self._items) >= self.capacity:
                return False
            self._items.append(msg)
            self._cv.notify()
            return True

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def get(self, timeout: float | None = None) -> object:
        with self._cv:
            if not self._items and not self._closed:
                self._cv.wait(timeout)
            if self._items:
                return self._items.popleft()
            return _END if self._closed else None

    def __len__(self) -> int:
        return len(self._items)


class StreamState:
    """One Monitor stream: its outbound queue and the generations it opened."""

    def __init__(self, peer: str = "", outbox_size: int = DEFAULT_OUTBOX_SIZE) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.peer = peer
        self.outbox = Outbox(outbox_size)
        self.generations: dict[str, Generation] = {}
        self.alive = True
        self.last_activity = time.monotonic()  # last message received (the idle timeout counts from it)
        # (status, message) the stream will end with once its generations are finalised; None: open
        self.end_status: tuple[grpc.StatusCode, str] | None = None
        # called (once) when the outbox overflows: the servicer counts it and cancels the RPC
        self.on_overflow: Callable[[], None] = lambda: None
        self._overflowed = False

    def send(self, msg: pb.MonitorResponse) -> None:
        if not self.alive:
            return
        if not self.outbox.put(msg) and not self._overflowed:
            self._overflowed = True
            self.alive = False
            self.on_overflow()

    def finish(self) -> None:
        self.outbox.close()

    def error(self, generation_id: str, exc: WireError, layer: int = -1) -> None:
        self.send(
            pb.MonitorResponse(
                error=pb.Error(
                    generation_id=generation_id,
                    code=exc.code.value[0],
                    code_name=exc.code.name,
                    message=exc.message,
                    layer=layer,
                )
            )
        )


#: [[position, token id], ...] and {probe: result}: stored once per generation with its incidents
_GenerationFacts = tuple[list[list[int]], dict[str, dict]]


@dataclass
class Generation:
    id: str
    stream: StreamState
    prompt_length: int
    metadata: dict[str, str]
    aggregators: dict[str, Aggregator]
    token_scores: dict[str, list[tuple[np.ndarray, np.ndarray]]]  # per probe: (positions, scores) blocks
    opened_at: float = field(default_factory=time.time)
    last_position: dict[int, int] = field(default_factory=dict)  # per layer, reader-side validation
    rows_per_layer: dict[int, int] = field(default_factory=dict)
    kept_scores: dict[str, int] = field(default_factory=dict)
    alerts: dict[str, pb.Alert] = field(default_factory=dict)
    closing: bool = False  # Close (or stream end) received: no more chunks accepted
    finished: bool = False  # finalised by the worker
    client_dropped: int = 0
    rejected_chunks: int = 0
    sidecar_dropped: int = 0
    prompt_text: str | None = None
    response_text: str | None = None
    incident_ids: dict[str, int] = field(default_factory=dict)  # probe -> incident row written at alert time
    token_ids: dict[int, int] = field(default_factory=dict)  # position -> token id (kept with incidents)


@dataclass(frozen=True)
class EngineLimits:
    """Bounds on what one client can make the sidecar hold (each a `probewatch serve` flag)."""

    max_generation_id_bytes: int = 256
    max_metadata_bytes: int = 16384  # keys + values of one Open, UTF-8
    max_metadata_entries: int = 64
    max_open_per_stream: int = 1024
    max_open_total: int = 16384
    closed_memory: int = 100_000  # ids remembered after close (as 16-byte digests) to refuse reuse


def _digest(gid: str) -> bytes:
    return hashlib.blake2b(gid.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def short_id(gid: str, limit: int = 64) -> str:
    """A generation id fit for an error message (an oversized id is not echoed back in full)."""
    return gid if len(gid) <= limit else f"{gid[:limit]}…({len(gid)} chars)"


# -- work items -------------------------------------------------------------------------------------
@dataclass
class ChunkWork:
    generation: Generation
    layer: int
    kind: str  # rows | projections
    positions: np.ndarray  # int64 [n]
    data: np.ndarray  # float32 [n, d] or [n, k]
    received_at: float
    token_ids: np.ndarray | None = None  # int64 [n] when the client sent them


@dataclass
class CloseWork:
    generation: Generation
    status: str = "closed"  # closed | aborted


@dataclass
class EndWork:
    stream: StreamState


@dataclass
class ScoreWork:
    """A unary Score request, scored by the worker like everything else."""

    payloads: Mapping[int, tuple[str, np.ndarray]]
    prompt_length: int
    probe_ids: Sequence[str]
    done: threading.Event = field(default_factory=threading.Event)
    result: list | None = None
    error: BaseException | None = None


@dataclass
class SequenceResult:
    """Unary Score output for one probe."""

    spec: ProbeSpec
    positions: np.ndarray
    scores: np.ndarray
    aggregate: float

    @property
    def flagged(self) -> bool:
        return len(self.scores) > 0 and self.aggregate >= self.spec.threshold


class ScoringEngine:
    def __init__(
        self,
        runtime: ProbeRuntime,
        metrics: SidecarMetrics,
        fingerprint: str,
        incidents: IncidentStore | None = None,
        webhook=None,
        queue_size: int = 1024,
        max_batch_rows: int = 16384,
        put_timeout_s: float = 5.0,
        keep_token_scores: int = 8192,
        limits: EngineLimits | None = None,
        policy: TextPolicy | None = None,
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.fingerprint = fingerprint
        self.incidents = incidents
        self.webhook = webhook
        self.limits = limits or EngineLimits()
        # what webhook payloads keep of client metadata (incident rows: the store's own policy)
        self.policy = policy or (incidents.policy if incidents is not None else TextPolicy("full"))
        self.specs: dict[str, ProbeSpec] = {b.id: ProbeSpec.from_bundle(b) for b in runtime.bundles}
        self.max_batch_rows = max_batch_rows
        self.put_timeout_s = put_timeout_s
        self.keep_token_scores = keep_token_scores
        self.draining = False  # set at shutdown: no new generations
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._generations: dict[str, Generation] = {}
        self._closed: OrderedDict[bytes, None] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._release = threading.Event()
        self._release.set()
        self.batches = 0  # drained batches (tests assert cross-stream batching)
        self.max_items_per_batch = 0
        self.max_generations_per_gemm = 0
        metrics.set_queue_depth_source(self._queue.qsize, capacity=queue_size)

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> ScoringEngine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="probewatch-scoring", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Score what is queued, then stop the worker."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout_s)
            self._thread = None

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Let work queue up without scoring it until the block ends (deterministic batching in tests)."""
        self._release.clear()
        try:
            yield
        finally:
            self._release.set()

    # -- registry (called from stream reader threads) -------------------------------------------------
    def check_generation_id(self, gid: str, message: str = "message") -> None:
        """INVALID_ARGUMENT for an empty or oversized generation id (`message`: the kind that named it)."""
        if not gid:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"{message} without generation_id")
        size = len(gid.encode("utf-8", "surrogatepass"))
        if size > self.limits.max_generation_id_bytes:
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"generation_id {short_id(gid)} is {size} bytes, over the {self.limits.max_generation_id_bytes}-byte "
                "limit (--max-generation-id-bytes)",
            )

    def open_generation(self, stream: StreamState, msg: pb.Open) -> Generation:
        gid = msg.generation_id
        self.check_generation_id(gid, "Open")
        limits = self.limits
        if len(msg.metadata) > limits.max_metadata_entries:
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"generation {gid}: {len(msg.metadata)} metadata entries, over the limit of "
                f"{limits.max_metadata_entries} (--max-metadata-entries)",
            )
        meta_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in msg.metadata.items())
        if meta_bytes > limits.max_metadata_bytes:
            raise WireError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"generation {gid}: metadata of {meta_bytes} bytes, over the {limits.max_metadata_bytes}-byte limit "
                "(--max-metadata-bytes)",
            )
        if self.draining:
            raise WireError(
                grpc.StatusCode.UNAVAILABLE,
                f"generation {gid}: the sidecar is shutting down; open it on a new stream once it is back",
            )
        if msg.model_fingerprint != self.fingerprint:
            raise WireError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"generation {gid}: model fingerprint {msg.model_fingerprint or '(empty)'} does not match the "
                f"sidecar's {self.fingerprint}; its probes were trained on a different model",
            )
        if msg.prompt_length < 0:
            raise WireError(grpc.StatusCode.INVALID_ARGUMENT, f"generation {gid}: negative prompt_length")
        if len(stream.generations) >= limits.max_open_per_stream:
            raise WireError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"generation {gid}: this stream already has {len(stream.generations)} open generations "
                f"(--max-open-generations-per-stream {limits.max_open_per_stream}); close some first",
            )
        gen = Generation(
            id=gid,
            stream=stream,
            prompt_length=int(msg.prompt_length),
            metadata=dict(msg.metadata),
            aggregators={pid: make_aggregator(s.aggregation) for pid, s in self.specs.items()},
            token_scores={pid: [] for pid in self.specs},
        )
        with self._lock:
            if gid in self._generations or _digest(gid) in self._closed:
                raise WireError(
                    grpc.StatusCode.ALREADY_EXISTS, f"generation id {gid} was already used; ids must be unique"
                )
            if len(self._generations) >= limits.max_open_total:
                raise WireError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"generation {gid}: the sidecar already tracks {len(self._generations)} open generations "
                    f"(--max-open-generations {limits.max_open_total}); retry later",
                )
            self._generations[gid] = gen
        stream.generations[gid] = gen
        self.metrics.active_generations.inc()
        return gen

    def lookup(self, stream: StreamState, gid: str) -> Generation:
        """The open generation `gid` of `stream`, or WireError NOT_FOUND / FAILED_PRECONDITION."""
        self.check_generation_id(gid)
        with self._lock:
            gen = self._generations.get(gid)
            closed = _digest(gid) in self._closed
        if gen is None or gen.stream is not stream:
            if closed or (gen is not None and gen.closing):
                raise WireError(grpc.StatusCode.FAILED_PRECONDITION, f"generation {gid} is already closed")
            raise WireError(grpc.StatusCode.NOT_FOUND, f"unknown generation {gid}: send Open on this stream first")
        if gen.closing:
            raise WireError(grpc.StatusCode.FAILED_PRECONDITION, f"generation {gid} is already closed")
        return gen

    # -- queue --------------------------------------------------------------------------------------
    def submit_chunk(self, work: ChunkWork) -> bool:
        """Enqueue a chunk; False (and counted as dropped) when the queue stays full for put_timeout_s."""
        try:
            self._queue.put(work, timeout=self.put_timeout_s)
            return True
        except queue.Full:
            self.metrics.dropped_chunks.labels(reason="queue_full").inc()
            work.generation.sidecar_dropped += 1
            return False

    def score_now(
        self,
        payloads: Mapping[int, tuple[str, np.ndarray]],
        prompt_length: int,
        probe_ids: Sequence[str],
        timeout_s: float = 60.0,
    ) -> list[SequenceResult]:
        """Unary scoring through the worker (queued behind live chunks; raises on timeout)."""
        work = ScoreWork(payloads, prompt_length, probe_ids)
        try:
            self._queue.put(work, timeout=self.put_timeout_s)
        except queue.Full:
            raise WireError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"scoring queue full for {self.put_timeout_s:g}s (live streams come first); retry later",
            ) from None
        if not work.done.wait(timeout_s):
            raise WireError(grpc.StatusCode.DEADLINE_EXCEEDED, f"scoring took longer than {timeout_s}s")
        if work.error is not None:
            raise work.error
        return work.result or []

    def submit_control(self, work: CloseWork | EndWork) -> None:
        """Closes and stream ends are never dropped (they carry or finalise recorded state)."""
        if isinstance(work, CloseWork):
            work.generation.closing = True
        self._queue.put(work)

    # -- worker -------------------------------------------------------------------------------------
    def _run(self) -> None:
        _one_torch_thread()
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            self._release.wait()
            batch, rows = [item], _rows(item)
            while rows < self.max_batch_rows:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
                rows += _rows(nxt)
            try:
                self._process(batch)
            except Exception:  # a bug must not kill the worker: every other stream depends on it
                log.exception("scoring worker failed on a batch of %d items", len(batch))
                self.metrics.internal_errors.labels(component="scoring").inc()

    def _process(self, batch: list) -> None:
        self.batches += 1
        self.max_items_per_batch = max(self.max_items_per_batch, len(batch))
        chunks = [w for w in batch if isinstance(w, ChunkWork)]
        scored = self._score_chunks(chunks)
        # Score updates of consecutive chunks of one generation and layer in this batch go back as one
        # ScoreUpdate: under load one response per chunk costs a large share of the ingest rate. Pending
        # updates are flushed before any close/end so a summary never overtakes its scores.
        pending: dict[tuple[int, int], _PendingUpdate] = {}
        for work in batch:
            try:
                if isinstance(work, ChunkWork):
                    result = scored.get(id(work))
                    if isinstance(result, WireError):  # rows that score non-finite: refused, nothing applied
                        self.metrics.rejected.labels(code=result.code.name).inc()
                        work.generation.rejected_chunks += 1
                        work.generation.stream.error(work.generation.id, result, work.layer)
                    elif isinstance(result, Exception):
                        self.metrics.rejected.labels(code="INTERNAL").inc()
                        work.generation.stream.error(
                            work.generation.id,
                            WireError(grpc.StatusCode.INTERNAL, "scoring failed on the sidecar (logged there)"),
                            work.layer,
                        )
                    elif result is not None:
                        update = self._apply_chunk(work, *result)
                        if update is not None:
                            key = (id(work.generation), work.layer)
                            if key in pending:
                                pending[key].merge(update)
                            else:
                                pending[key] = update
                    continue
                self._flush_updates(pending)
                if isinstance(work, CloseWork):
                    self._finalize(work.generation, work.status)
                elif isinstance(work, EndWork):
                    work.stream.finish()
                elif isinstance(work, ScoreWork):
                    try:
                        work.result = self.score_sequence(work.payloads, work.prompt_length, work.probe_ids)
                    except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
                        work.error = exc
                    work.done.set()
            except Exception:
                log.exception("failed to apply %s", type(work).__name__)
                self.metrics.internal_errors.labels(component="scoring").inc()
                if isinstance(work, EndWork):
                    work.stream.finish()
        self._flush_updates(pending)

    def _flush_updates(self, pending: dict[tuple[int, int], _PendingUpdate]) -> None:
        for update in pending.values():
            try:
                update.send()
            except Exception:
                log.exception("failed to send a score update")
                self.metrics.internal_errors.labels(component="scoring").inc()
        pending.clear()

    def _score_chunks(self, chunks: Sequence[ChunkWork]) -> dict[int, tuple[list[str], np.ndarray] | Exception]:
        """One GEMM per (layer, payload kind) over the rows of every chunk in the batch."""
        groups: dict[tuple[int, str], list[ChunkWork]] = {}
        for work in chunks:
            groups.setdefault((work.layer, work.kind), []).append(work)
        out: dict[int, tuple[list[str], np.ndarray] | Exception] = {}
        for (layer, kind), members in groups.items():
            try:
                probe_ids, scores = self.score_block(layer, kind, [w.data for w in members])
            except Exception as exc:  # reported per chunk on its stream
                log.exception("scoring layer %d (%s) failed", layer, kind)
                for w in members:
                    out[id(w)] = exc
                continue
            self.max_generations_per_gemm = max(self.max_generations_per_gemm, len({id(w.generation) for w in members}))
            offset = 0
            for w in members:
                n = len(w.positions)
                block = scores[offset : offset + n]
                offset += n
                finite = np.isfinite(block)
                if finite.all():
                    out[id(w)] = (probe_ids, block)
                    continue
                row = int(np.flatnonzero(~finite.all(axis=1))[0])
                out[id(w)] = WireError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"generation {w.generation.id} layer {layer}: the row at position {int(w.positions[row])} scores "
                    "non-finite (activations beyond float32 range); chunk refused",
                )
        return out

    def score_block(self, layer: int, kind: str, blocks: Sequence[np.ndarray]) -> tuple[list[str], np.ndarray]:
        """Concatenate blocks of one layer and score them: (probe ids, float32 [n, k])."""
        data = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only wire buffers: we never write to them
            tensor = torch.from_numpy(data)
        with torch.inference_mode():
            if kind == PROJECTIONS:
                scores = self.runtime.score_projections(layer, tensor)
                return list(self.runtime.stacks[layer].probe_ids), scores.cpu().numpy()
            if getattr(self.runtime, "sae_groups", None):
                # linear + SAE-feature probes, each SAE encoding the block once; watched latents -> metrics
                out = self.runtime.score_all({layer: tensor})
                by_probe = out.scores
                for fa in out.features.values():
                    values = fa.values.cpu().numpy()
                    for j, (fid, desc) in enumerate(zip(fa.feature_ids, fa.descriptions)):
                        self.metrics.sae_feature_activation.observe_many((fa.sae, str(fid), desc), values[:, j])
            else:
                by_probe = self.runtime.score_layers({layer: tensor})
            probe_ids = list(by_probe)
            if not probe_ids:
                return [], np.zeros((data.shape[0], 0), dtype=np.float32)
            return probe_ids, torch.stack([by_probe[p] for p in probe_ids], dim=1).cpu().numpy()

    def _apply_chunk(self, work: ChunkWork, probe_ids: list[str], scores: np.ndarray) -> _PendingUpdate | None:
        """Update the generation's aggregates (alerting as they cross) and return its score update."""
        gen = work.generation
        if gen.finished:
            return None
        pos = work.positions
        aggregates: dict[str, float] = {}
        now = time.time()
        for j, pid in enumerate(probe_ids):
            spec = self.specs[pid]
            mask = selection_mask(spec.token_selection, pos, gen.prompt_length)
            chosen = scores[mask, j]
            agg = gen.aggregators[pid]
            if chosen.size:
                agg.update(chosen)
                kept = gen.kept_scores.get(pid, 0)
                if kept < self.keep_token_scores:  # bounded memory per generation
                    room = self.keep_token_scores - kept
                    gen.token_scores[pid].append((pos[mask][:room], chosen[:room].copy()))
                    gen.kept_scores[pid] = kept + min(room, chosen.size)
                self.metrics.token_score.observe_many((pid, spec.behaviour), chosen)
                if spec.monotone and pid not in gen.alerts and agg.value >= spec.threshold:
                    alert = self._alert(gen, spec, agg.value, early=True, position=int(pos[mask][-1]), now=now)
                    gen.stream.send(pb.MonitorResponse(alert=alert))
            aggregates[pid] = agg.value
        if work.token_ids is not None and len(gen.token_ids) < self.keep_token_scores:  # bounded like the scores
            room = self.keep_token_scores - len(gen.token_ids)
            gen.token_ids.update(zip(pos[:room].tolist(), work.token_ids[:room].tolist()))
        gen.rows_per_layer[work.layer] = gen.rows_per_layer.get(work.layer, 0) + len(pos)
        self.metrics.tokens_scored.labels(mode=work.kind).inc(len(pos))
        self.metrics.scoring_latency.observe(time.perf_counter() - work.received_at)
        return _PendingUpdate(gen, work.layer, probe_ids, [pos], [scores], aggregates)

    def _alert(
        self, gen: Generation, spec: ProbeSpec, value: float, early: bool, position: int, now: float
    ) -> pb.Alert:
        alert = pb.Alert(
            generation_id=gen.id,
            probe_id=spec.id,
            behaviour=spec.behaviour,
            score=value,
            threshold=spec.threshold,
            early=early,
            position=position,
            bundle_version=spec.version,
            time_unix=now,
        )
        gen.alerts[spec.id] = alert
        self.metrics.alerts.labels(probe=spec.id, behaviour=spec.behaviour).inc()
        self.metrics.last_alert.labels(probe=spec.id).set(now)
        if early:  # written now, before the client sees the alert: a crash later does not lose it
            alert.incident_id = self._record_incident(gen, spec, alert, "open")
        return alert

    def _finalize(self, gen: Generation, status: str) -> None:
        if gen.finished:
            return
        gen.finished = True
        gen.closing = True
        now = time.time()
        results = []
        for pid, spec in self.specs.items():
            agg = gen.aggregators[pid]
            value = agg.value
            flagged = agg.count > 0 and value >= spec.threshold
            if agg.count:
                self.metrics.generation_score.observe_many((pid, spec.behaviour), [value])
            if flagged and pid not in gen.alerts:
                alert = self._alert(gen, spec, value, early=False, position=-1, now=now)
            results.append(
                pb.ProbeResult(
                    probe_id=pid,
                    behaviour=spec.behaviour,
                    score=value,
                    threshold=spec.threshold,
                    flagged=flagged,
                    n_tokens=agg.count,
                    aggregation=spec.aggregation.method,
                    token_selection=spec.token_selection,
                )
            )
        facts = self._generation_facts(gen) if gen.alerts and self.incidents is not None else None
        for pid, alert in gen.alerts.items():
            spec = self.specs[pid]
            alert.score = gen.aggregators[pid].value  # the final aggregate (>= the early one for monotone kinds)
            alert.incident_id = self._record_incident(gen, spec, alert, status, facts)
            if self.webhook is not None:
                try:
                    self.webhook.submit(_webhook_payload(gen, spec, alert, self.fingerprint, status, self.policy))
                except Exception:  # a payload problem must not cost the summary
                    log.exception("webhook payload for generation %s probe %s failed", gen.id, pid)
                    self.metrics.internal_errors.labels(component="webhook").inc()
            if not alert.early:
                gen.stream.send(pb.MonitorResponse(alert=alert))
        if gen.client_dropped:
            self.metrics.dropped_chunks.labels(reason="client_dropped").inc(gen.client_dropped)
        gen.stream.send(
            pb.MonitorResponse(
                summary=pb.GenerationSummary(
                    generation_id=gen.id,
                    status=status,
                    results=results,
                    alerts=list(gen.alerts.values()),
                    tokens_scored=max(gen.rows_per_layer.values(), default=0),
                    dropped_chunks=gen.client_dropped + gen.sidecar_dropped,
                    rejected_chunks=gen.rejected_chunks,
                )
            )
        )
        self.metrics.generations.labels(status=status).inc()
        self.metrics.active_generations.dec()
        with self._lock:
            self._generations.pop(gen.id, None)
            self._closed[_digest(gen.id)] = None
            while len(self._closed) > self.limits.closed_memory:
                self._closed.popitem(last=False)
        gen.stream.generations.pop(gen.id, None)

    def _record_incident(
        self, gen: Generation, spec: ProbeSpec, alert: pb.Alert, status: str, facts: _GenerationFacts | None = None
    ) -> int:
        """Write (status `open`: at alert time) or complete (at close) the incident row; its id, 0 on failure.

        `facts`: the generation's token ids and every probe's result, when the caller already has them
        (at close they are the same for each of the generation's alerts)."""
        if self.incidents is None:
            return 0
        tokens, context = facts or self._generation_facts(gen)
        known = gen.incident_ids.get(spec.id)
        if known and status != "open":
            try:
                self.incidents.complete(
                    known,
                    score=float(alert.score),
                    token_scores=_pairs(gen.token_scores[spec.id]),
                    generation_status=status,
                    prompt=gen.prompt_text,
                    response=gen.response_text,
                    prompt_length=gen.prompt_length,
                    tokens=tokens,
                    context=context,
                )
                return known
            except IncidentNotFoundError:  # deleted on purpose meanwhile (an erasure): do not write it back
                log.info("incident %d of generation %s was deleted before it completed", known, gen.id)
                return 0
            except Exception as exc:  # noqa: BLE001 - the disk failed: counted, then written anew below
                log.warning("completing incident %d of generation %s failed (%s); writing it again", known, gen.id, exc)
                self.metrics.incident_store_errors.inc()
        incident = Incident(
            generation_id=gen.id,
            probe=spec.id,
            behaviour=spec.behaviour,
            score=float(alert.score),
            threshold=spec.threshold,
            model_fingerprint=self.fingerprint,
            bundle_version=spec.version,
            aggregation=spec.aggregation.method,
            token_scores=_pairs(gen.token_scores[spec.id]),
            prompt=gen.prompt_text,
            response=gen.response_text,
            generation_status=status,
            early=alert.early,
            metadata=gen.metadata,
            prompt_length=gen.prompt_length,
            tokens=tokens,
            context=context,
        )
        try:
            if status == "open":
                incident_id = self.incidents.record_alert(incident)
            else:
                incident_id = self.incidents.record(incident)
        except Exception as exc:  # noqa: BLE001 - a failing disk must not stop scoring; it is counted
            log.error("incident store write failed for generation %s probe %s: %s", gen.id, spec.id, exc)
            self.metrics.incident_store_errors.inc()
            return 0
        gen.incident_ids[spec.id] = incident_id
        return incident_id

    def _generation_facts(self, gen: Generation) -> _GenerationFacts:
        """What the store keeps once per generation: [[position, token id]] and every probe's result."""
        return [[p, t] for p, t in sorted(gen.token_ids.items())], self._generation_context(gen)

    def _generation_context(self, gen: Generation) -> dict[str, dict]:
        """Every loaded probe's result on the generation (the review app's heatmaps and "other probes")."""
        out = {}
        for pid, spec in self.specs.items():
            agg = gen.aggregators[pid]
            out[pid] = probe_context(
                behaviour=spec.behaviour,
                score=float(agg.value) if agg.count else None,
                threshold=spec.threshold,
                n_tokens=int(agg.count),
                aggregation=spec.aggregation.method,
                token_selection=spec.token_selection,
                layer=spec.layer,
                version=spec.version,
                token_scores=_pairs(gen.token_scores[pid]),
            )
        return out

    # -- unary scoring --------------------------------------------------------------------------------
    def score_sequence(
        self, payloads: Mapping[int, tuple[str, np.ndarray]], prompt_length: int, probe_ids: Sequence[str]
    ) -> list[SequenceResult]:
        """Score one sequence's rows/projections (positions 0..n-1) for the wanted probes."""
        wanted = set(probe_ids)
        out: list[SequenceResult] = []
        for layer, (kind, data) in sorted(payloads.items()):
            ids, scores = self.score_block(layer, kind, [data])
            self.metrics.tokens_scored.labels(mode=kind).inc(data.shape[0])
            positions = np.arange(data.shape[0], dtype=np.int64)
            for j, pid in enumerate(ids):
                if wanted and pid not in wanted:
                    continue
                spec = self.specs[pid]
                mask = selection_mask(spec.token_selection, positions, prompt_length)
                chosen = scores[mask, j]
                agg = make_aggregator(spec.aggregation)
                value = agg.update(chosen) if chosen.size else math.nan
                out.append(SequenceResult(spec, positions[mask], chosen, value))
        return out


@dataclass
class _PendingUpdate:
    """The ScoreUpdate of one or more consecutive chunks of one generation and layer."""

    gen: Generation
    layer: int
    probe_ids: list[str]
    positions: list[np.ndarray]
    scores: list[np.ndarray]
    aggregates: dict[str, float]

    def merge(self, other: _PendingUpdate) -> None:
        if other.probe_ids != self.probe_ids:  # cannot happen for one layer's stack; keep both correct anyway
            self.send()
            self.positions, self.scores, self.probe_ids = other.positions, other.scores, other.probe_ids
        else:
            self.positions += other.positions
            self.scores += other.scores
        self.aggregates = other.aggregates  # running aggregates: the latest values

    def send(self) -> None:
        pos = self.positions[0] if len(self.positions) == 1 else np.concatenate(self.positions)
        scores = self.scores[0] if len(self.scores) == 1 else np.concatenate(self.scores, axis=0)
        self.gen.stream.send(
            pb.MonitorResponse(
                score=pb.ScoreUpdate(
                    generation_id=self.gen.id,
                    layer=self.layer,
                    positions=pos.tolist(),
                    probe_ids=self.probe_ids,
                    scores=encode_array(np.ascontiguousarray(scores, dtype=np.float32)),
                    aggregates=self.aggregates,
                )
            )
        )
        self.positions, self.scores = [], []


def _one_torch_thread() -> None:
    """Run this thread's GEMMs on one intra-op thread, without changing other threads' setting.

    The scoring GEMMs are tiny ([n, d] @ [d, k]); with several OpenMP threads MKL's parallel path
    costs 10-25 ms per call on a busy machine (measured: 1-row addmm 24 ms vs 0.005 ms single
    threaded). torch.set_num_threads sets a process-wide default that threads created later
    inherit (an in-process sidecar must not slow the model's generate threads), so the default is
    put back from a helper thread; this thread keeps its own OpenMP setting of 1.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    if previous != 1:
        restore = threading.Thread(target=torch.set_num_threads, args=(previous,), name="probewatch-threads")
        restore.start()
        restore.join()


def _pairs(blocks: list[tuple[np.ndarray, np.ndarray]]) -> list[list[float]]:
    """[[position, score], ...] of the kept token scores (what the incident row stores)."""
    return [[int(p), float(v)] for positions, scores in blocks for p, v in zip(positions.tolist(), scores.tolist())]


def _rows(item: object) -> int:
    return len(item.positions) if isinstance(item, ChunkWork) else 0


def _webhook_payload(
    gen: Generation, spec: ProbeSpec, alert: pb.Alert, fingerprint: str, status: str, policy: TextPolicy
) -> dict:
    """The alert as JSON-safe values (no NaN/inf: they become null); metadata under the text policy."""
    return to_jsonable(
        {
            "type": "probewatch.alert",
            "incident_id": int(alert.incident_id) or None,
            "generation_id": gen.id,
            "probe": spec.id,
            "behaviour": spec.behaviour,
            "score": float(alert.score),
            "threshold": spec.threshold,
            "aggregation": spec.aggregation.method,
            "early": bool(alert.early),
            "generation_status": status,
            "model_fingerprint": fingerprint,
            "bundle_version": spec.version,
            "time_unix": float(alert.time_unix),
            "metadata": policy.metadata(gen.metadata),
        }
    )


def layer_prompt_rows(specs: Sequence[ProbeSpec]) -> pb.PromptRows:
    """The PromptRows a set of probes on one layer needs."""
    selections = {s.token_selection for s in specs}
    if "all" in selections:
        return pb.PROMPT_ROWS_ALL
    if "prompt_last" in selections:
        return pb.PROMPT_ROWS_LAST
    return pb.PROMPT_ROWS_NONE


def is_linear(kind: str) -> bool:
    return kind in LINEAR_KINDS
