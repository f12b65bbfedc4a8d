"""Multi-layer probes live: a probe's per-layer partial scores joined per token as its layers arrive.

A multi-layer linear probe scores sum_l w_l . h_l + b. Clients send each layer in its own chunk
(rows, or pushdown projections onto that layer's stack, which holds w_l as one column and the bias
on the probe's first layer only: `Bundle.layer_forms`), so each layer's GEMM gives a *partial*
column. `LayerJoins` keeps those partials per (generation, probe) and position until every layer of
the probe has arrived, then sums them in layer order (`probes.runtime.join_partials` does the same
offline) and hands the complete token scores to the aggregator in position order.

Why this needs no client change for pushdown: each layer's projection already is the probe's partial
dot product; the sidecar adds the per-layer bias and sums. Chunks of different layers may arrive in
any order and split differently; a layer's positions only increase (the reader checks), so once every
layer has passed a position, a position still missing a layer will never get it (a dropped or refused
chunk): it is left out and counted, not scored from part of its layers. Memory is bounded: a probe
holds at most `MAX_PENDING_TOKENS` positions per generation (beyond that the oldest are left out and
counted), and nothing outlives its generation. At close every position still waiting is left out, and
the stream gets an INVALID_ARGUMENT error naming the probe, the missing layer and the positions
(`probewatch_layer_join_missing_tokens_total{probe,layer}` counts them), never a silent partial score.

Joined token scores go back in their own ScoreUpdate per probe, with `layer` = `JOINED_LAYER` (-1);
a layer's ScoreUpdate carries only its single-layer probes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from probewatch.probes.selection import selection_mask
from probewatch.server.sidecar.columns import Columns
from probewatch.server.sidecar.errors import InvalidInput
from probewatch.server.sidecar.generations import Generation
from probewatch.server.sidecar.metrics import SidecarMetrics
from probewatch.server.sidecar.specs import ProbeSpec
from probewatch.server.sidecar.updates import PendingUpdate

__all__ = ["JOINED_LAYER", "MAX_PENDING_TOKENS", "ChunkTokens", "LayerJoins", "TokenJoin", "sequence_columns"]

#: ScoreUpdate.layer of a multi-layer probe's joined token scores
JOINED_LAYER = -1
#: positions one multi-layer probe may hold waiting for its other layers, per generation (~(9 + 5 L) bytes each)
MAX_PENDING_TOKENS = 1 << 16


@dataclass
class TokenJoin:
    """One multi-layer probe in one generation: its partial scores per position until every layer arrived."""

    layers: tuple[int, ...]
    high: np.ndarray = field(init=False)  # int64 [L]: the highest position each layer has sent (-1: none yet)
    positions: np.ndarray = field(init=False)  # int64 [m], sorted: positions waiting for a layer
    parts: np.ndarray = field(init=False)  # float32 [m, L]: their partial scores per layer
    seen: np.ndarray = field(init=False)  # bool [m, L]: which layers have arrived
    missing: np.ndarray = field(init=False)  # int64 [L]: tokens left out because this layer never arrived
    missing_span: tuple[int, int] | None = None  # first and last position left out
    joined: int = 0  # tokens scored

    def __post_init__(self) -> None:
        n = len(self.layers)
        self.high = np.full(n, -1, dtype=np.int64)
        self.positions = np.zeros(0, dtype=np.int64)
        self.parts = np.zeros((0, n), dtype=np.float32)
        self.seen = np.zeros((0, n), dtype=bool)
        self.missing = np.zeros(n, dtype=np.int64)

    def add(
        self, layer: int, chunk_positions: np.ndarray, positions: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Feed one chunk of `layer` (`chunk_positions`: all its positions; `positions`/`values`: the probe's
        selected ones and their partials). Returns (joined positions, their scores, tokens newly left out per
        layer), in position order."""
        i = self.layers.index(layer)
        if chunk_positions.size:
            self.high[i] = max(int(self.high[i]), int(chunk_positions[-1]))
        if positions.size:
            self._merge(i, positions, np.asarray(values, dtype=np.float32).reshape(-1))
        ready = int(np.searchsorted(self.positions, int(self.high.min()), side="right"))
        return self._release(max(ready, len(self.positions) - MAX_PENDING_TOKENS))

    def close(self) -> np.ndarray:
        """The generation ended: every position still waiting is left out; returns tokens newly left out per layer."""
        return self._release(len(self.positions))[2]

    def _merge(self, i: int, positions: np.ndarray, values: np.ndarray) -> None:
        merged = np.union1d(self.positions, positions)
        parts = np.zeros((len(merged), len(self.layers)), dtype=np.float32)
        seen = np.zeros(parts.shape, dtype=bool)
        old, new = np.searchsorted(merged, self.positions), np.searchsorted(merged, positions)
        parts[old], seen[old] = self.parts, self.seen
        parts[new, i], seen[new, i] = values, True
        self.positions, self.parts, self.seen = merged, parts, seen

    def _release(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Take the first `n` waiting positions out: the complete ones are summed, the others left out."""
        pos, parts, seen = self.positions[:n], self.parts[:n], self.seen[:n]
        self.positions, self.parts, self.seen = self.positions[n:], self.parts[n:], self.seen[n:]
        complete = seen.all(axis=1)
        newly = (~seen[~complete]).sum(axis=0).astype(np.int64)
        if newly.any():
            self.missing += newly
            lost = pos[~complete]
            lo, hi = int(lost[0]), int(lost[-1])
            self.missing_span = (min(lo, self.missing_span[0]), hi) if self.missing_span else (lo, hi)
        done = parts[complete]
        total = done[:, 0].copy()
        for j in range(1, done.shape[1]):  # layer order, float32: what join_partials does offline
            total += done[:, j]
        self.joined += int(total.size)
        return pos[complete], total, newly


@dataclass
class ChunkTokens:
    """One applied chunk: per probe (positions, columns [m, width]) for its aggregator, and its score updates."""

    tokens: list[tuple[str, np.ndarray, np.ndarray]]
    joined: list[tuple[str, np.ndarray, np.ndarray]]  # multi-layer probes with tokens joined by this chunk
    single: list[int]  # indices (in columns.probe_ids) of the single-layer probes

    def updates(
        self, gen: Generation, layer: int, columns: Columns, positions: np.ndarray, scores: np.ndarray, aggregates
    ) -> list[PendingUpdate]:
        """The layer's ScoreUpdate (its single-layer probes) and one per multi-layer probe that joined tokens."""
        out = []
        if len(self.single) == len(columns.probe_ids):
            out.append(
                PendingUpdate(gen, layer, columns.probe_ids, [positions], [columns.token_scores(scores)], aggregates)
            )
        elif self.single:
            ids = [columns.probe_ids[j] for j in self.single]
            out.append(
                PendingUpdate(gen, layer, ids, [positions], [columns.token_scores(scores)[:, self.single]], aggregates)
            )
        for pid, pos, total in self.joined:
            out.append(PendingUpdate(gen, JOINED_LAYER, [pid], [pos], [total.reshape(-1, 1)], aggregates))
        return out


class LayerJoins:
    """The engine's join desk: which loaded probes read several layers, and their per-generation joins."""

    def __init__(self, specs: Mapping[str, ProbeSpec], metrics: SidecarMetrics) -> None:
        self.specs = specs
        self.metrics = metrics
        self.multi: dict[str, tuple[int, ...]] = {pid: s.reads for pid, s in specs.items() if len(s.reads) > 1}

    def apply(
        self, gen: Generation, layer: int, columns: Columns, positions: np.ndarray, scores: np.ndarray
    ) -> ChunkTokens:
        """Select each probe's tokens of a scored chunk; a multi-layer probe's partials join its other layers'."""
        tokens, joined, single = [], [], []
        for j, (pid, cols) in enumerate(columns.slices()):
            mask = selection_mask(self.specs[pid].streamed_selection, positions, gen.prompt_length)
            if pid not in self.multi:
                single.append(j)
                tokens.append((pid, positions[mask], scores[mask, cols]))
                continue
            join = gen.joins.get(pid)
            if join is None:
                join = gen.joins[pid] = TokenJoin(self.multi[pid])
            pos, total, newly = join.add(layer, positions, positions[mask], scores[mask, cols.start])
            self._count(pid, join, newly)
            tokens.append((pid, pos, total.reshape(-1, 1)))
            if pos.size:
                joined.append((pid, pos, total))
        return ChunkTokens(tokens, joined, single)

    def finish(self, gen: Generation) -> None:
        """At close: leave out what still waits for a layer, count it, and tell the stream which layer never came."""
        for pid, join in gen.joins.items():
            self._count(pid, join, join.close())
            if not join.missing.any() or join.missing_span is None:
                continue
            absent = [(layer, int(n)) for layer, n in zip(join.layers, join.missing) if n]
            said = ", ".join(f"layer {layer} for {n}" for layer, n in absent)
            lo, hi = join.missing_span
            dropped = gen.client_dropped + gen.sidecar_dropped + gen.rejected_chunks
            why = f" ({dropped} chunk(s) of this generation were dropped or rejected)" if dropped else ""
            gen.stream.refuse(
                InvalidInput(
                    f"generation {gen.id}: probe {pid} reads layers {list(join.layers)}, but no row arrived on {said} "
                    f"of its selected tokens (positions {lo}..{hi}){why}; those tokens are left out of its score "
                    f"({join.joined} joined). Capture every layer of the plan (ListProbes.layers)"
                ),
                gen.id,
                absent[0][0],
            )

    def _count(self, pid: str, join: TokenJoin, newly: np.ndarray) -> None:
        for layer, n in zip(join.layers, newly.tolist()):
            if n:
                self.metrics.layer_join_missing.labels(probe=pid, layer=str(layer)).inc(n)


def sequence_columns(
    blocks: Mapping[int, tuple[Columns, np.ndarray]], multi: Mapping[str, Sequence[int]]
) -> Iterator[tuple[str, np.ndarray]]:
    """Unary scoring of one sequence: (probe id, its columns over every position); a multi-layer probe's
    partials summed in layer order when the request carries all its layers (left out otherwise)."""
    parts: dict[str, dict[int, np.ndarray]] = {}
    for layer, (columns, scores) in sorted(blocks.items()):
        for pid, cols in columns.slices():
            if pid in multi:
                parts.setdefault(pid, {})[layer] = scores[:, cols]
            else:
                yield pid, scores[:, cols]
    for pid, by_layer in parts.items():
        if len(by_layer) == len(multi[pid]):
            total = by_layer[multi[pid][0]].copy()
            for layer in multi[pid][1:]:
                total += by_layer[layer]
            yield pid, total
