"""The live generations: their per-generation state, the registry that opens and finds them, its limits.

Bounded state: generation ids and metadata have size limits, and the open generations per stream,
per client and in total are capped (`GenerationLimits`, each a `probewatch serve` flag). The
per-client share exists because the table is shared: one client that opens generations and never
closes them would otherwise lock every other client out (and pin their memory) until the TTL.
A client is its bearer token when the sidecar checks tokens, else its address (`client_identity`).
A generation ends `aborted` when it is open past its lifetime or gets no chunk for the idle TTL
(`GenerationRegistry.expired`). Closed ids are remembered (as 16-byte digests, a bounded number of
them) so an id cannot be used twice.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from probewatch.probes.aggregate import Aggregator
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.sidecar.answers import aggregator_for
from probewatch.server.sidecar.errors import (
    AlreadyUsed,
    GenerationClosed,
    InvalidInput,
    Overloaded,
    ShuttingDown,
    TimedOut,
    UnknownGeneration,
    WrongModel,
)
from probewatch.server.sidecar.specs import ProbeSpec

if TYPE_CHECKING:
    from probewatch.server.sidecar.streams import StreamState

__all__ = ["Generation", "GenerationLimits", "GenerationRegistry", "client_identity", "short_id"]


@dataclass
class Generation:
    """One monitored generation: running aggregates, kept token scores, alerts, and what the client sent."""

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
    uncertain: dict[str, pb.Alert] = field(default_factory=dict)  # final aggregate in a probe's band: never sent
    closing: bool = False  # Close (or stream end) received: no more chunks accepted
    finished: bool = False  # finalised by the worker
    client_dropped: int = 0
    rejected_chunks: int = 0
    sidecar_dropped: int = 0
    prompt_text: str | None = None
    response_text: str | None = None
    incident_ids: dict[str, int] = field(default_factory=dict)  # probe -> incident row written at alert time
    token_ids: dict[int, int] = field(default_factory=dict)  # position -> token id (kept with incidents)
    token_texts: list[str] = field(default_factory=list)  # Close.token_texts: the text of each token ...
    token_texts_start: int = 0  # ... from this position on (kept with incidents under the text policy)
    client: str = ""  # who opened it (client_identity): its share of the open-generation table
    last_activity: float = field(default_factory=time.monotonic)  # last chunk received (the idle TTL)
    joins: dict[str, Any] = field(default_factory=dict)  # multi-layer probe -> its TokenJoin (joins.py)


@dataclass(frozen=True)
class GenerationLimits:
    """Bounds on what one client can make the sidecar hold (each a `probewatch serve` flag)."""

    max_generation_id_bytes: int = 256
    max_metadata_bytes: int = 16384  # keys + values of one Open, UTF-8
    max_metadata_entries: int = 64
    max_open_per_stream: int = 1024
    max_open_total: int = 16384
    max_open_per_client: int | None = None  # None: a quarter of max_open_total
    max_lifetime_s: float = 3600.0  # a generation open longer is aborted (--generation-ttl)
    idle_ttl_s: float = 600.0  # ... and one that got no chunk this long (--generation-idle-ttl)
    closed_memory: int = 100_000  # ids remembered after close (as 16-byte digests) to refuse reuse

    @property
    def per_client(self) -> int:
        """Open generations one client may hold (default: a quarter of the table, at least one)."""
        return self.max_open_per_client or max(1, self.max_open_total // 4)


def client_identity(peer: str, token: str | None = None) -> str:
    """Who a stream belongs to: a digest of its bearer token when tokens are checked, else its address.

    The token itself is never kept (only 8 bytes of its BLAKE2b digest, enough to tell tokens apart);
    without tokens, streams from one address (any port) are one client."""
    if token:
        return "token:" + hashlib.blake2b(token.encode(), digest_size=8).hexdigest()
    if peer.startswith(("ipv4:", "ipv6:")):
        peer = peer.rsplit(":", 1)[0]
    return "peer:" + peer


def _digest(gid: str) -> bytes:
    return hashlib.blake2b(gid.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def short_id(gid: str, limit: int = 64) -> str:
    """A generation id fit for an error message (an oversized id is not echoed back in full)."""
    return gid if len(gid) <= limit else f"{gid[:limit]}…({len(gid)} chars)"


class GenerationRegistry:
    """Open generations by id (stream reader threads open and look up; the worker forgets)."""

    def __init__(self, specs: Mapping[str, ProbeSpec], fingerprint: str, limits: GenerationLimits) -> None:
        self.specs = specs
        self.fingerprint = fingerprint
        self.limits = limits
        self.draining = False  # set at shutdown: no new generations
        self._lock = threading.Lock()
        self._open: dict[str, Generation] = {}
        self._by_client: dict[str, int] = {}  # open generations per client
        self._closed: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def check_id(self, gid: str, message: str = "message") -> None:
        """InvalidInput for an empty or oversized generation id (`message`: the kind that named it)."""
        if not gid:
            raise InvalidInput(f"{message} without generation_id")
        size = len(gid.encode("utf-8", "surrogatepass"))
        if size > self.limits.max_generation_id_bytes:
            raise InvalidInput(
                f"generation_id {short_id(gid)} is {size} bytes, over the {self.limits.max_generation_id_bytes}-byte "
                "limit (--max-generation-id-bytes)"
            )

    def _check_open(self, stream: StreamState, msg: pb.Open) -> None:
        gid, limits = msg.generation_id, self.limits
        self.check_id(gid, "Open")
        if len(msg.metadata) > limits.max_metadata_entries:
            raise InvalidInput(
                f"generation {gid}: {len(msg.metadata)} metadata entries, over the limit of "
                f"{limits.max_metadata_entries} (--max-metadata-entries)"
            )
        meta_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in msg.metadata.items())
        if meta_bytes > limits.max_metadata_bytes:
            raise InvalidInput(
                f"generation {gid}: metadata of {meta_bytes} bytes, over the {limits.max_metadata_bytes}-byte limit "
                "(--max-metadata-bytes)"
            )
        if self.draining:
            raise ShuttingDown(
                f"generation {gid}: the sidecar is shutting down; open it on a new stream once it is back"
            )
        if msg.model_fingerprint != self.fingerprint:
            raise WrongModel(
                f"generation {gid}: model fingerprint {msg.model_fingerprint or '(empty)'} does not match the "
                f"sidecar's {self.fingerprint}; its probes were trained on a different model"
            )
        if msg.prompt_length < 0:
            raise InvalidInput(f"generation {gid}: negative prompt_length")
        if len(stream.generations) >= limits.max_open_per_stream:
            raise Overloaded(
                f"generation {gid}: this stream already has {len(stream.generations)} open generations "
                f"(--max-open-generations-per-stream {limits.max_open_per_stream}); close some first",
                reason="per_stream",
            )

    def open(self, stream: StreamState, msg: pb.Open) -> Generation:
        """Register a new generation on `stream`, or raise the refusal that says why not."""
        self._check_open(stream, msg)
        gid = msg.generation_id
        client = client_identity(stream.peer, stream.token)
        gen = Generation(
            id=gid,
            stream=stream,
            prompt_length=int(msg.prompt_length),
            metadata=dict(msg.metadata),
            aggregators={pid: aggregator_for(s, int(msg.prompt_length)) for pid, s in self.specs.items()},
            token_scores={pid: [] for pid in self.specs},
            client=client,
        )
        with self._lock:
            if gid in self._open or _digest(gid) in self._closed:
                raise AlreadyUsed(f"generation id {gid} was already used; ids must be unique")
            if len(self._open) >= self.limits.max_open_total:
                raise Overloaded(
                    f"generation {gid}: the sidecar already tracks {len(self._open)} open generations "
                    f"(--max-open-generations {self.limits.max_open_total}); retry later",
                    reason="total",
                )
            held = self._by_client.get(client, 0)
            if held >= self.limits.per_client:
                raise Overloaded(
                    f"generation {gid}: this client already holds {held} open generations "
                    f"(--max-open-generations-per-client {self.limits.per_client}); close some first",
                    reason="per_client",
                )
            self._open[gid] = gen
            self._by_client[client] = held + 1
        stream.generations[gid] = gen
        return gen

    def lookup(self, stream: StreamState, gid: str) -> Generation:
        """The open generation `gid` of `stream`, or UnknownGeneration / GenerationClosed."""
        self.check_id(gid)
        with self._lock:
            gen = self._open.get(gid)
            closed = _digest(gid) in self._closed
        if gen is None or gen.stream is not stream:
            if closed or (gen is not None and gen.closing):
                raise GenerationClosed(f"generation {gid} is already closed")
            raise UnknownGeneration(f"unknown generation {gid}: send Open on this stream first")
        if gen.closing:
            raise GenerationClosed(f"generation {gid} is already closed")
        return gen

    def forget(self, gen: Generation) -> None:
        """Drop a finalised generation, remembering its id (bounded) so it cannot be reused."""
        with self._lock:
            if self._open.pop(gen.id, None) is not None:
                left = self._by_client.get(gen.client, 1) - 1
                if left > 0:
                    self._by_client[gen.client] = left
                else:
                    self._by_client.pop(gen.client, None)
            self._closed[_digest(gen.id)] = None
            while len(self._closed) > self.limits.closed_memory:
                self._closed.popitem(last=False)
        gen.stream.generations.pop(gen.id, None)

    def held_by(self, client: str) -> int:
        """Open generations of one client (tests, the soak report)."""
        with self._lock:
            return self._by_client.get(client, 0)

    def expired(self, stream: StreamState, now: float | None = None) -> list[tuple[Generation, str, TimedOut]]:
        """The stream's open generations past their lifetime or idle TTL: (generation, reason, refusal).

        `reason` is `lifetime` or `idle` (probewatch_generations_expired_total{reason}); the caller
        answers the refusal on the stream and aborts the generation."""
        limits, out = self.limits, []
        wall, mono = time.time() if now is None else now, time.monotonic()
        for gen in list(stream.generations.values()):
            if gen.closing:
                continue
            if wall - gen.opened_at > limits.max_lifetime_s:
                message = (
                    f"generation {gen.id} was open for over {limits.max_lifetime_s:g}s (--generation-ttl); "
                    "it ends aborted"
                )
                out.append((gen, "lifetime", TimedOut(message)))
            elif mono - gen.last_activity > limits.idle_ttl_s:
                message = (
                    f"generation {gen.id} got no chunk for over {limits.idle_ttl_s:g}s (--generation-idle-ttl); "
                    "it ends aborted"
                )
                out.append((gen, "idle", TimedOut(message)))
        return out
