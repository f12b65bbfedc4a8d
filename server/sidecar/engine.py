"""Scoring engine: one worker thread that scores the chunks of every live generation in batches.

Why a single worker with a bounded queue: probe cost is one small GEMM per layer, so per-call
overhead (Python, dispatch) dominates; the worker drains whatever is queued — chunks of many
streams and generations — and concatenates all rows of one layer into one GEMM
(`ProbeRuntime.score_layers`, so non-linear probe kinds plug in; pushdown projections go
through `score_projections`; an attention probe scores two columns per token: columns.py). The
bounded queue turns a slow sidecar into gRPC back-pressure towards the clients, where the attach
client drops and counts (fail-open), instead of unbounded memory here. It is bounded twice: in
items (`queue_size`) and in tensor bytes queued or being scored (`queue_bytes`,
server/sidecar/work.py `ByteBudget`); a chunk that does not fit the bytes is refused at once
(RESOURCE_EXHAUSTED, `dropped_chunks_total{reason="queue_bytes"}`).

Ordering and fairness: the queue (`fair_queue.py`) is first-in first-out per client and serves
clients by deficit round robin on bytes, so a generation's chunks, its Close and its stream's end
are processed in the order they came (aggregators are order-sensitive) while a client sending
multi-MiB chunks cannot make every other client's small chunks wait behind its own. Scoring itself is stateless, so a whole drained batch is
scored first and then applied item by item.

Around it: `generations.py` (the registry of open generations and its limits), `alerts.py`
(alert -> incident -> webhook, written on its own thread: `incident_queue.py`), `streams.py` (each
stream's bounded outbox), `joins.py` (a multi-layer probe's per-layer partials joined per token). Scores are always
finite: a chunk whose rows score non-finite (activations beyond what float32 can hold) is refused
(InvalidInput) before any aggregate sees it. The engine raises and reports refusals in its own
terms (server/sidecar/errors.py); the servicer maps them to gRPC status codes.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import cast

import numpy as np
import torch

from probewatch.probes.aggregate import make_aggregator
from probewatch.probes.runtime import ProbeRuntime
from probewatch.probes.selection import selection_mask
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.sidecar.answers import AnswerAggregator
from probewatch.server.sidecar.columns import PROJECTIONS, ROWS, Columns, score_block
from probewatch.server.sidecar.errors import InvalidInput, Overloaded, Refused, ScoringFailed, TimedOut
from probewatch.server.sidecar.fair_queue import FairQueue
from probewatch.server.sidecar.families import FamilyAlertDesk, FamilyScores
from probewatch.server.sidecar.generations import Generation, GenerationLimits, GenerationRegistry
from probewatch.server.sidecar.incident_queue import DEFAULT_INCIDENT_QUEUE, IncidentQueue
from probewatch.server.sidecar.joins import LayerJoins, sequence_columns
from probewatch.server.sidecar.memory import QUEUE_BYTES_UNLIMITED
from probewatch.server.sidecar.metrics import SidecarMetrics
from probewatch.server.sidecar.specs import ProbeSpec
from probewatch.server.sidecar.streams import StreamState
from probewatch.server.sidecar.updates import PendingUpdate
from probewatch.server.sidecar.work import (
    ByteBudget,
    ChunkWork,
    CloseWork,
    EndWork,
    ScoreWork,
    SequenceResult,
    client_of,
    nbytes,
)
from probewatch.server.store import IncidentStore
from probewatch.server.store.privacy import TextPolicy

__all__ = ["PROJECTIONS", "ROWS", "ScoringEngine"]

log = logging.getLogger(__name__)

_STOP = object()
#: one chunk's outcome of a batch GEMM: (its columns, scores [n, columns]), a refusal, or the exception it hit
_Scored = tuple[Columns, np.ndarray] | Exception


class ScoringEngine:
    """The queue and the worker: scores chunks in batches, applies them in order, finalises generations."""

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
        limits: GenerationLimits | None = None,
        policy: TextPolicy | None = None,
        queue_bytes: int = QUEUE_BYTES_UNLIMITED,
        incident_queue_size: int = DEFAULT_INCIDENT_QUEUE,
        families: Sequence = (),  # probes/family.py FamilyManifest: derived max-of-members scores (families.py)
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.fingerprint = fingerprint
        self.specs: dict[str, ProbeSpec] = {b.id: ProbeSpec.from_bundle(b) for b in runtime.bundles}
        self.families = FamilyScores(families, self.specs, {b.id: b.manifest for b in runtime.bundles})
        self.generations = GenerationRegistry(self.specs, fingerprint, limits or GenerationLimits())
        self.writer = IncidentQueue(metrics, incident_queue_size)
        every = {**self.specs, **self.families.specs}  # the desk alerts for families too (and names the member)
        self.alerts = FamilyAlertDesk(every, metrics, fingerprint, incidents, webhook, policy, self.writer)
        self.joins = LayerJoins(self.specs, metrics)  # multi-layer probes: partial scores joined per token
        self.answer_probes = [pid for pid, s in self.specs.items() if s.token_selection == "answer"]
        self.max_batch_rows = max_batch_rows
        self.put_timeout_s = put_timeout_s
        self.keep_token_scores = keep_token_scores
        self._queue = FairQueue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._release = threading.Event()
        self._release.set()
        self.batches = 0  # drained batches (tests assert cross-stream batching)
        self.max_items_per_batch = 0
        self.max_generations_per_gemm = 0
        metrics.set_queue_depth_source(self._queue.qsize, capacity=queue_size)
        self.budget = ByteBudget(queue_bytes)
        metrics.set_queue_bytes_source(lambda: self.budget.used, self.budget.capacity)

    @property
    def limits(self) -> GenerationLimits:
        return self.generations.limits

    @property
    def draining(self) -> bool:
        return self.generations.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.generations.draining = value

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> ScoringEngine:
        self.writer.start()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="probewatch-scoring", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Score what is queued, then stop the worker; then write every queued incident."""
        if self._thread is not None:
            self._queue.put(_STOP, "")
            self._thread.join(timeout_s)
            self._thread = None
        self.writer.stop(3 * timeout_s)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Let work queue up without scoring it until the block ends (deterministic batching in tests)."""
        self._release.clear()
        try:
            yield
        finally:
            self._release.set()

    # -- registry (called from stream reader threads) -------------------------------------------------
    def open_generation(self, stream: StreamState, msg: pb.Open) -> Generation:
        try:
            gen = self.generations.open(stream, msg)
        except Overloaded as exc:
            self.metrics.generation_limit_refusals.labels(limit=exc.reason or "total").inc()
            raise
        self.metrics.active_generations.inc()
        self.families.attach(gen)
        return gen

    def expire_generations(self, stream: StreamState) -> int:
        """Abort the stream's generations past their lifetime or idle TTL (each told why, and counted)."""
        expired = self.generations.expired(stream)
        for gen, reason, refusal in expired:
            log.warning("generation %r: %s", gen.id, refusal.message)
            self.metrics.generations_expired.labels(reason=reason).inc()
            stream.refuse(refusal, gen.id)
            self.submit_control(CloseWork(gen, status="aborted"))
        return len(expired)

    # -- queue --------------------------------------------------------------------------------------
    def submit_chunk(self, work: ChunkWork) -> Overloaded | None:
        """Enqueue a chunk; the refusal (counted as dropped) when it does not fit the byte budget, or when
        the queue stays full for put_timeout_s."""
        gen, size = work.generation, work.nbytes
        gen.last_activity = time.monotonic()
        what = f"generation {gen.id} layer {work.layer}"
        if not self.budget.take(size):
            self.metrics.dropped_chunks.labels(reason="queue_bytes").inc()
            gen.sidecar_dropped += 1
            return Overloaded(
                f"{what}: the scoring queue holds {self.budget.used} of its {self.budget.capacity} bytes "
                f"(--queue-bytes); chunk of {size} bytes dropped",
                reason="queue_bytes",
            )
        try:
            self._queue.put(work, client_of(work), size, timeout=self.put_timeout_s)
            return None
        except queue.Full:
            self.budget.release(size)
            self.metrics.dropped_chunks.labels(reason="queue_full").inc()
            gen.sidecar_dropped += 1
            return Overloaded(f"{what}: scoring queue full; chunk dropped", reason="queue_full")

    def score_now(
        self,
        payloads: Mapping[int, tuple[str, np.ndarray]],
        prompt_length: int,
        probe_ids: Sequence[str],
        token_ids: np.ndarray | None = None,
        timeout_s: float = 60.0,
    ) -> list[SequenceResult]:
        """Unary scoring through the worker (queued behind live chunks; raises on timeout)."""
        work = ScoreWork(payloads, prompt_length, probe_ids, token_ids)
        if not self.budget.take(work.nbytes):
            raise Overloaded(
                f"the scoring queue holds {self.budget.used} of its {self.budget.capacity} bytes (--queue-bytes); "
                f"a request of {work.nbytes} bytes does not fit now; retry later",
                reason="queue_bytes",
            )
        try:
            self._queue.put(work, client_of(work), work.nbytes, timeout=self.put_timeout_s)
        except queue.Full:
            self.budget.release(work.nbytes)
            raise Overloaded(
                f"scoring queue full for {self.put_timeout_s:g}s (live streams come first); retry later"
            ) from None
        if not work.done.wait(timeout_s):
            raise TimedOut(f"scoring took longer than {timeout_s}s")
        if work.error is not None:
            raise work.error
        return work.result or []

    def submit_control(self, work: CloseWork | EndWork) -> None:
        """Closes and stream ends are never dropped (they carry or finalise recorded state)."""
        if isinstance(work, CloseWork):
            work.generation.closing = True
        self._queue.put(work, client_of(work))

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
            finally:  # the batch's tensors are garbage now: their bytes may queue again
                self.budget.release(sum(nbytes(w) for w in batch))

    def _process(self, batch: list) -> None:
        self.batches += 1
        self.max_items_per_batch = max(self.max_items_per_batch, len(batch))
        chunks = [w for w in batch if isinstance(w, ChunkWork)]
        scored = self._score_chunks(chunks)
        # Score updates of consecutive chunks of one generation and layer in this batch go back as one
        # ScoreUpdate: under load one response per chunk costs a large share of the ingest rate. Pending
        # updates are flushed before any close/end so a summary never overtakes its scores.
        pending: dict[tuple, PendingUpdate] = {}
        for work in batch:
            try:
                if isinstance(work, ChunkWork):
                    self._apply_scored(work, scored.get(id(work)), pending)
                    continue
                self._flush_updates(pending)
                self._control(work)
            except Exception:
                log.exception("failed to apply %s", type(work).__name__)
                self.metrics.internal_errors.labels(component="scoring").inc()
                if isinstance(work, EndWork):
                    work.stream.finish()
        self._flush_updates(pending)

    def _apply_scored(self, work: ChunkWork, result: _Scored | None, pending: dict[tuple, PendingUpdate]) -> None:
        """Apply one chunk's scores (or refuse it on its stream), merging its update into `pending`."""
        if isinstance(result, Refused):  # rows that score non-finite: refused, nothing applied
            work.generation.rejected_chunks += 1
            work.generation.stream.refuse(result, work.generation.id, work.layer)
        elif isinstance(result, Exception):
            work.generation.stream.refuse(
                ScoringFailed("scoring failed on the sidecar (logged there)"), work.generation.id, work.layer
            )
        elif result is not None:
            for update in self._apply_chunk(work, *result):  # the layer's, and joined ones of multi-layer probes
                key = (id(work.generation), update.layer, tuple(update.probe_ids))
                if key in pending:
                    pending[key].merge(update)
                else:
                    pending[key] = update

    def _control(self, work: CloseWork | EndWork | ScoreWork) -> None:
        if isinstance(work, CloseWork):
            self._finalize(work.generation, work.status)
        elif isinstance(work, EndWork):
            if self.writer.pending(work.stream):  # after the summaries the incident writer still owes it
                self.writer.submit(work.stream.finish, work.stream, essential=True)
            else:
                work.stream.finish()
        elif isinstance(work, ScoreWork):
            try:
                work.result = self.score_sequence(work.payloads, work.prompt_length, work.probe_ids, work.token_ids)
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
                work.error = exc
            work.done.set()

    def _flush_updates(self, pending: dict[tuple, PendingUpdate]) -> None:
        for update in pending.values():
            try:
                update.send()
            except Exception:
                log.exception("failed to send a score update")
                self.metrics.internal_errors.labels(component="scoring").inc()
        pending.clear()

    def _score_chunks(self, chunks: Sequence[ChunkWork]) -> dict[int, _Scored]:
        """One GEMM per (layer, payload kind) over the rows of every chunk in the batch."""
        groups: dict[tuple[int, str], list[ChunkWork]] = {}
        for work in chunks:
            groups.setdefault((work.layer, work.kind), []).append(work)
        out: dict[int, _Scored] = {}
        for (layer, kind), members in groups.items():
            try:
                columns, scores = self.score_block(layer, kind, [w.data for w in members])
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
                    out[id(w)] = (columns, block)
                    continue
                row = int(np.flatnonzero(~finite.all(axis=1))[0])
                out[id(w)] = InvalidInput(
                    f"generation {w.generation.id} layer {layer}: the row at position {int(w.positions[row])} scores "
                    "non-finite (activations beyond float32 range); chunk refused"
                )
        return out

    def score_block(self, layer: int, kind: str, blocks: Sequence[np.ndarray]) -> tuple[Columns, np.ndarray]:
        """Concatenate blocks of one layer and score them: (their columns, float32 [n, columns]); columns.py."""
        return score_block(self.runtime, self.metrics, layer, kind, blocks)

    def _apply_chunk(self, work: ChunkWork, columns: Columns, scores: np.ndarray) -> list[PendingUpdate]:
        """Update the generation's aggregates (alerting as they cross) and return its score updates."""
        gen = work.generation
        if gen.finished:
            return []
        pos = work.positions
        aggregates: dict[str, float] = {}
        now = time.time()
        applied = self.joins.apply(gen, work.layer, columns, pos, scores)  # selected tokens; multi-layer: joined
        for pid in self.answer_probes:  # the token text an answer probe's reading is chosen by (answers.py)
            cast(AnswerAggregator, gen.aggregators[pid]).tokens(pos, work.token_ids)
        for pid, sel, picked in applied.tokens:  # picked: [m, 1], or [m, 2] = (a_t, v_t) of an attention probe
            spec = self.specs[pid]
            chosen = picked[:, -1]  # the token score
            agg = gen.aggregators[pid]
            if chosen.size:
                shown, shown_scores = sel, chosen  # what the incident's heatmap keeps
                if isinstance(agg, AnswerAggregator):
                    agg.add(sel, picked)
                    reply = sel >= gen.prompt_length  # the prompt's scores live in the aggregator (Snapshot.of)
                    shown, shown_scores = sel[reply], chosen[reply]
                else:
                    agg.update(picked)
                kept = gen.kept_scores.get(pid, 0)
                if kept < self.keep_token_scores and shown.size:  # bounded memory per generation
                    room = self.keep_token_scores - kept
                    gen.token_scores[pid].append((shown[:room], shown_scores[:room].copy()))
                    gen.kept_scores[pid] = kept + min(room, shown.size)
                self.metrics.token_score.observe_many((pid, spec.behaviour), chosen)
                if spec.alerts and spec.monotone and pid not in gen.alerts and agg.value >= spec.threshold:
                    self.alerts.raise_alert(gen, spec, agg.value, True, int(sel[-1]), now)
            aggregates[pid] = agg.value
        if self.families:  # families of the updated members: their maximum, and an early family alert
            self.families.update(gen, aggregates, self.alerts, int(pos[-1]) if len(pos) else -1)
        if work.token_ids is not None and len(gen.token_ids) < self.keep_token_scores:  # bounded like the scores
            room = self.keep_token_scores - len(gen.token_ids)
            gen.token_ids.update(zip(pos[:room].tolist(), work.token_ids[:room].tolist()))
        gen.rows_per_layer[work.layer] = gen.rows_per_layer.get(work.layer, 0) + len(pos)
        self.metrics.tokens_scored.labels(mode=work.kind).inc(len(pos))
        self.metrics.scoring_latency.observe(time.perf_counter() - work.received_at)
        return applied.updates(gen, work.layer, columns, pos, scores, aggregates)

    def _finalize(self, gen: Generation, status: str) -> None:
        """Final aggregates, late alerts, incidents and the summary; then the generation is forgotten."""
        if gen.finished:
            return
        gen.finished = True
        gen.closing = True
        self.joins.finish(gen)  # what still waits for a layer is left out, counted and reported
        now = time.time()
        results = [self.alerts.result(gen, spec, now) for spec in self.specs.values()]  # late alerts, bands
        results += self.families.finalize(gen, self.alerts, now)  # after members: max of finals
        if gen.client_dropped:
            self.metrics.dropped_chunks.labels(reason="client_dropped").inc(gen.client_dropped)
        summary = pb.GenerationSummary(  # its alerts (with their incident ids) are added once written
            generation_id=gen.id,
            status=status,
            results=results,
            tokens_scored=max(gen.rows_per_layer.values(), default=0),
            dropped_chunks=gen.client_dropped + gen.sidecar_dropped,
            rejected_chunks=gen.rejected_chunks,
        )
        self.metrics.generations.labels(status=status).inc()
        self.metrics.active_generations.dec()
        self.generations.forget(gen)
        self.alerts.settle(gen, status, summary)  # incidents and webhook off this thread; then the summary

    # -- unary scoring --------------------------------------------------------------------------------
    def score_sequence(
        self,
        payloads: Mapping[int, tuple[str, np.ndarray]],
        prompt_length: int,
        probe_ids: Sequence[str],
        token_ids: np.ndarray | None = None,
    ) -> list[SequenceResult]:
        """Score one sequence's rows/projections (positions 0..n-1) for the wanted probes (`token_ids`: the
        tokens, which an `answer` probe's reading is chosen by; without them it reads the reply)."""
        wanted = set(probe_ids)
        compute = self.families.with_members(wanted)  # a family id asks for its members' scores
        out: list[SequenceResult] = []
        blocks = {}
        for layer, (kind, data) in sorted(payloads.items()):
            blocks[layer] = self.score_block(layer, kind, [data])
            self.metrics.tokens_scored.labels(mode=kind).inc(data.shape[0])
        positions = np.arange(next(iter(payloads.values()))[1].shape[0], dtype=np.int64)
        for pid, columns in sequence_columns(blocks, self.joins.multi):  # multi-layer probes: partials summed
            if compute and pid not in compute:
                continue
            spec = self.specs[pid]
            vocab = spec.vocabulary
            pieces = None if vocab is None or token_ids is None else vocab.of(token_ids)
            mask = selection_mask(spec.token_selection, positions, prompt_length, pieces=pieces)
            picked = columns[mask]
            value = make_aggregator(spec.aggregation).update(picked) if len(picked) else math.nan
            out.append(SequenceResult(spec, positions[mask], picked[:, -1], value))
        out += self.families.sequence_results(out, wanted)
        return [r for r in out if not wanted or r.spec.id in wanted]


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


def _rows(item: object) -> int:
    return len(item.positions) if isinstance(item, ChunkWork) else 0
