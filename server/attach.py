"""Attach client for HF transformers: every `generate()` streams its residuals to the sidecar.

    monitor = attach(model, tokenizer, sidecar="localhost:50051", mode="pushdown")
    out = model.generate(**inputs, max_new_tokens=64)        # unchanged call, unchanged output
    result = monitor.last_generations[0].result(timeout=5)   # scores, alerts (optional)

Design, against what actually costs time in a monitored generation loop:
- The generation thread only gathers the wanted rows of each hooked layer (on the model's
  device; in pushdown mode after one [d, k] GEMM there), starts a device->host copy
  (non_blocking into pinned memory on CUDA, recorded with an event) and appends a reference to a
  bounded queue. It never serialises, never waits on the network, never blocks: when the queue is
  full the block is dropped and counted (`probewatch_client_dropped_chunks_total{reason}`).
- A sender thread waits for the copies, works out which rows belong to which sequence (left
  padding, sequences that already finished), merges several decode steps per (generation, layer)
  into one ActivationChunk (raw bytes + dtype + shape) and hands it to gRPC.
- A link thread owns the connection: ListProbes (layers to capture, pushdown matrices, prompt-row
  needs), then one bidirectional stream multiplexing every generation. When the sidecar is down
  or goes away, monitoring is off (`probewatch_client_monitoring_up` 0, one log line), generation
  goes on unmonitored, and the link reconnects with exponential backoff (fail-open).
- `PROBEWATCH_DISABLE=1` turns all of it off: no hooks, no threads, no connection.

Sequences of a batched generate are separate generations (ids from `generation_ids=[...]` or
random); positions are sequence-local (pads are never sent); a sequence's rows stop at its
end-of-sequence (or pad) token. The last generated token is never fed back through the model by
`generate()`, so by default one extra decode step on the returned KV cache scores it
(`score_final_token`), making a score for every generated token, like offline scoring.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import grpc
import torch
from pydantic import BaseModel, Field

from probewatch import envs
from probewatch.capture import ResidualCapture, RowBlock
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from probewatch.server.metrics import ClientMetrics
from probewatch.server.wire import decode_tensor, encode_tensor

log = logging.getLogger(__name__)

_STOP = object()


AttachMode = Literal["rows", "pushdown"]


class AttachConfig(BaseModel):
    """Attach-client settings (all optional)."""

    sidecar: str = Field(default_factory=envs.sidecar_address)
    mode: AttachMode = "rows"
    wire_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: the model's dtype
    queue_size: int = 1024  # captured blocks waiting for the sender; beyond: drop and count
    steps_per_message: int = 8  # decode steps merged into one chunk (at most)
    linger_s: float = 0.02  # how long the sender waits to merge steps
    send_queue_size: int = 256  # serialised messages waiting for gRPC
    connect_timeout_s: float = 2.0
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 15.0
    result_timeout_s: float = 10.0
    score_final_token: bool = True
    # TLS to the sidecar (PEM paths): CA to verify it, and a client certificate when it requires one
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_server_name: str | None = None  # expected name in the sidecar's certificate (default: the host)


# -- results -----------------------------------------------------------------------------------------
@dataclass
class GenerationResult:
    generation_id: str
    monitored: bool
    status: str  # closed | aborted | unmonitored | rejected | pending
    reason: str | None = None  # why not (fully) monitored
    prompt_length: int = 0
    scores: dict[str, float] = field(default_factory=dict)  # aggregate per probe
    flagged: dict[str, bool] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    token_scores: dict[str, dict[int, float]] = field(default_factory=dict)  # probe -> position -> score
    tokens_scored: int = 0
    dropped_chunks: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, token_scores: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "token_scores"}
        out["scores"] = {k: (None if v != v else v) for k, v in self.scores.items()}  # NaN -> null
        if token_scores:
            out["token_scores"] = {p: sorted(s.items()) for p, s in self.token_scores.items()}
        return out


class GenerationHandle:
    """One monitored sequence; filled by the link thread as responses arrive."""

    def __init__(self, generation_id: str, prompt_length: int, monitored: bool = True, reason: str | None = None):
        self.id = generation_id
        self.prompt_length = prompt_length
        self.session = -1
        self.dropped = 0
        self.rejected = False
        self.capture_error: str | None = None  # set when the capture self-check stopped monitoring
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._result = GenerationResult(
            generation_id, monitored, "pending" if monitored else "unmonitored", reason, prompt_length
        )
        if not monitored:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float = 10.0) -> GenerationResult:
        """The summary once the sidecar sent it; after `timeout` seconds, what arrived so far.

        A summary that does not come back in time leaves status 'pending' with a reason naming the
        wait (logged once): a caller never blocks longer than `timeout`.
        """
        if not self._done.wait(timeout):
            with self._lock:
                if self._result.reason is None:
                    self._result.reason = f"no summary from the sidecar within {timeout:g}s"
                    log.warning("probewatch: generation %s: %s", self.id, self._result.reason)
        with self._lock:
            r = self._result
            return GenerationResult(
                **{
                    **r.__dict__,
                    "scores": dict(r.scores),
                    "flagged": dict(r.flagged),
                    "thresholds": dict(r.thresholds),
                    "alerts": list(r.alerts),
                    "token_scores": {k: dict(v) for k, v in r.token_scores.items()},
                    "errors": list(r.errors),
                    "dropped_chunks": max(r.dropped_chunks, self.dropped),
                }
            )

    # -- called by the link thread ------------------------------------------------------------------
    def _on_score(self, update: pb.ScoreUpdate) -> None:
        scores = decode_tensor(update.scores, "scores")
        positions = list(update.positions)
        with self._lock:
            for j, pid in enumerate(update.probe_ids):
                per = self._result.token_scores.setdefault(pid, {})
                for i, p in enumerate(positions):
                    per[p] = float(scores[i, j])
            self._result.scores.update(update.aggregates)

    def _on_alert(self, alert: pb.Alert) -> None:
        with self._lock:
            self._result.alerts.append(_alert_json(alert))

    def _on_summary(self, summary: pb.GenerationSummary) -> None:
        with self._lock:
            r = self._result
            r.status = summary.status
            r.reason = self.capture_error  # a late summary replaces the 'no summary within' note
            r.tokens_scored = summary.tokens_scored
            r.dropped_chunks = summary.dropped_chunks
            for res in summary.results:
                r.scores[res.probe_id] = res.score
                r.flagged[res.probe_id] = res.flagged
                r.thresholds[res.probe_id] = res.threshold
            r.alerts = [_alert_json(a) for a in summary.alerts]
        self._done.set()

    def _on_error(self, error: pb.Error) -> None:
        with self._lock:
            self._result.errors.append({"code": error.code_name, "message": error.message, "layer": error.layer})
        if (
            error.layer == -1
            and error.code_name in ("FAILED_PRECONDITION", "ALREADY_EXISTS", "INVALID_ARGUMENT")
            and not self._result.token_scores
        ):
            self._resolve(False, "rejected", f"{error.code_name}: {error.message}")
            self.rejected = True

    def _resolve(self, monitored: bool, status: str, reason: str) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._result.monitored = monitored
            self._result.status = status
            self._result.reason = reason
        self._done.set()


def _alert_json(a: pb.Alert) -> dict[str, Any]:
    return {
        "probe": a.probe_id,
        "behaviour": a.behaviour,
        "score": a.score,
        "threshold": a.threshold,
        "early": a.early,
        "incident_id": a.incident_id or None,
        "position": a.position,
    }


# -- the capture plan from ListProbes --------------------------------------------------------------------
@dataclass
class LayerCapture:
    layer: int
    pushdown: bool
    projection: torch.Tensor | None  # [d, k] float32 on the model's device (pushdown layers)
    prompt_rows: int

    @property
    def kind(self) -> pb.PayloadKind:
        return pb.PAYLOAD_KIND_PROJECTIONS if self.pushdown else pb.PAYLOAD_KIND_RESIDUAL_ROWS


@dataclass
class Plan:
    fingerprint: str
    d_model: int
    layers: list[int]
    captures: dict[int, LayerCapture]
    max_message_bytes: int
    probes: list[dict[str, Any]]

    @classmethod
    def from_listing(cls, listing: pb.ListProbesResponse, mode: str, device: torch.device) -> Plan:
        captures = {}
        for plan in listing.plans:
            pushdown = mode == "pushdown" and bool(plan.probe_ids) and not plan.rows_required
            projection = None
            if pushdown:
                projection = torch.from_numpy(decode_tensor(plan.projection, "projection").copy()).to(device)
            captures[plan.layer] = LayerCapture(
                plan.layer, pushdown, projection, plan.prompt_rows or pb.PROMPT_ROWS_ALL
            )
        probes = [
            {
                "id": p.id,
                "behaviour": p.behaviour,
                "kind": p.kind,
                "layer": p.layer,
                "token_selection": p.token_selection,
                "aggregation": p.aggregation,
                "threshold": p.threshold,
            }
            for p in listing.probes
        ]
        return cls(
            listing.model_fingerprint,
            listing.d_model,
            list(listing.layers),
            captures,
            int(listing.max_message_bytes) or 4 * 1024 * 1024,
            probes,
        )


# -- connection ----------------------------------------------------------------------------------------
class SidecarLink:
    """ListProbes + one bidirectional stream to the sidecar; reconnects with backoff (fail-open)."""

    def __init__(
        self, config: AttachConfig, fingerprint: str, device: torch.device, metrics: ClientMetrics, on_response, on_down
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
        """Queue a message for the stream of `session`; False when that session is gone."""
        while self.up and self.session == session and not self._stopping.is_set():
            requests = self._requests
            if requests is None:
                return False
            try:
                requests.put(message, timeout=0.25)
                return True
            except queue.Full:
                continue  # gRPC flow control: the sender waits, the capture queue absorbs or drops
        return False

    def close(self, grace_s: float = 2.0) -> None:
        """Half-close the stream (the sidecar finishes what it has), then cancel what is left."""
        was_up = self.up
        self._stopping.set()
        requests = self._requests
        if was_up and requests is not None:
            with contextlib.suppress(queue.Full):
                requests.put(_STOP, timeout=grace_s)
            self._thread.join(grace_s)
        if self._thread.is_alive():
            self._teardown()
            self._thread.join(5)

    def _teardown(self) -> None:
        requests = self._requests
        if requests is not None:
            with contextlib.suppress(queue.Full):
                requests.put_nowait(_STOP)
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
                        _short(exc),
                    )
                else:
                    log.debug("probewatch: reconnect to %s failed: %s", self.config.sidecar, _short(exc))
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
        options: list[tuple[str, int | str]] = [
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        if cfg.tls_ca or cfg.tls_cert:
            if cfg.tls_server_name:
                options.append(("grpc.ssl_target_name_override", cfg.tls_server_name))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(cfg.tls_ca),
                private_key=_read(cfg.tls_key),
                certificate_chain=_read(cfg.tls_cert),
            )
            channel = grpc.secure_channel(cfg.sidecar, credentials, options=options)
        else:
            channel = grpc.insecure_channel(cfg.sidecar, options=options)
        self._channel = channel
        try:
            grpc.channel_ready_future(channel).result(timeout=cfg.connect_timeout_s)
            stub = pb_grpc.MonitorStub(channel)
            listing = stub.ListProbes(pb.ListProbesRequest(), timeout=cfg.connect_timeout_s)
            if listing.model_fingerprint != self.fingerprint:
                raise RuntimeError(
                    f"the sidecar's probes are for model fingerprint {listing.model_fingerprint}, "
                    f"this model's is {self.fingerprint}"
                )
            plan = Plan.from_listing(listing, cfg.mode, self.device)
            requests: queue.Queue = queue.Queue(maxsize=cfg.send_queue_size)
            call = stub.Monitor(iter(requests.get, _STOP))
            self._call = call
            self.plan, self.listing, self._requests = plan, listing, requests
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


def _cache_kwarg_name(model) -> str:
    """How this transformers' forward takes the KV cache (`cache` from 5.24, `past_key_values` before)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _transformers_version() -> str:
    try:
        import transformers

        return str(transformers.__version__)
    except Exception:  # noqa: BLE001 - only for a log line
        return "?"


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as fh:
        return fh.read()


def _short(exc: BaseException) -> str:
    if isinstance(exc, grpc.FutureTimeoutError):
        return "connect timeout"
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc) or type(exc).__name__


# -- capture-side queue: bounded for data, never drops control messages --------------------------------
class _SendQueue:
    def __init__(self, max_data: int) -> None:
        self.max_data = max_data
        self._items: deque = deque()
        self._data = 0
        self._cv = threading.Condition()

    def put_data(self, item) -> bool:
        with self._cv:
            if self._data >= self.max_data:
                return False
            self._items.append(item)
            self._data += 1
            self._cv.notify()
            return True

    def put_control(self, item) -> None:
        with self._cv:
            self._items.append(item)
            self._cv.notify()

    def get(self, timeout: float | None = None):
        with self._cv:
            if not self._items and not self._cv.wait_for(lambda: bool(self._items), timeout):
                return None
            item = self._items.popleft()
            if isinstance(item, _Block):
                self._data -= 1
            return item

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _Step:
    """One forward call of the model during generate (prefill, a decode step, or the tail step)."""

    ids: torch.Tensor  # [B, T] token ids fed (host copy, maybe still in flight)
    event: Any = None
    selection: list[tuple[int, int, int, int]] | None = None  # (b, t, position, token) rows to send
    expected_start: int = 0  # tokens this call has fed before this forward (the self-check's reference)
    n_tokens: int = 0  # tokens fed by this forward
    checked: bool = False


@dataclass
class _Block:
    call: _Call
    step: _Step
    layer: int
    start: int
    kind: pb.PayloadKind
    host: torch.Tensor  # gathered rows, on the host (copy maybe still in flight)
    event: Any
    prefill_rows: list[tuple[int, int, int]] | None  # (b, position, token) per row for prompt blocks


@dataclass
class _Control:
    handle: GenerationHandle
    message: pb.MonitorRequest | _CloseMarker


class _Call:
    """Bookkeeping of one `generate()` call: which rows of which forward belong to which sequence."""

    def __init__(
        self,
        monitor: Monitor,
        plan: Plan,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        handles: list[GenerationHandle],
        stop_ids: set[int],
    ) -> None:
        self.monitor = monitor
        self.plan = plan
        self.handles = handles
        self.stop_ids = stop_ids
        self.B, self.P = input_ids.shape
        self.device = input_ids.device
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        mask_cpu = mask.detach().to("cpu").bool()
        self.ids_cpu = input_ids.detach().to("cpu")
        self.prompt_len = [int(x) for x in mask_cpu.sum(1)]
        local = mask_cpu.long().cumsum(1) - 1
        b_idx, t_idx = mask_cpu.nonzero(as_tuple=True)
        pos = local[b_idx, t_idx]
        last = pos == torch.tensor(self.prompt_len)[b_idx] - 1
        self.prompt_sel: dict[int, tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]] = {}
        for policy, keep in ((pb.PROMPT_ROWS_ALL, torch.ones_like(last)), (pb.PROMPT_ROWS_LAST, last)):
            b, t, p = b_idx[keep], t_idx[keep], pos[keep]
            meta = [(int(bb), int(pp), int(self.ids_cpu[bb, tt])) for bb, tt, pp in zip(b, t, p)]
            self.prompt_sel[policy] = (b, t, meta)
        self.finished = [False] * self.B
        self.step: _Step | None = None
        self.fed = 0  # tokens fed through the model so far (counted, independent of transformers)
        self.failed: str | None = None  # set by the self-check; no row of this call is sent after it

    # -- generation-thread hooks (cheap: gather + async copy + enqueue) -----------------------------
    def on_model_call(self, module, args, kwargs) -> None:
        if self.failed:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            self.fail("rows", "a forward without 2-D input_ids (inputs_embeds?): its rows cannot be attributed")
            return
        if ids.shape[0] != self.B:
            self.fail("batch", f"a forward fed {ids.shape[0]} sequences, the generate() call has {self.B}")
            return
        host, event = self.monitor._to_host(ids.detach())
        self.step = _Step(ids=host, event=event, expected_start=self.fed, n_tokens=int(ids.shape[1]))
        self.fed += int(ids.shape[1])

    def check(self, block: RowBlock, step: _Step) -> bool:
        """The self-check: the capture's start position and row counts match what this call fed.

        A transformers release that changes how positions reach the hooks (5.24 stopped passing
        `cache_position`) would otherwise send every decode row at a wrong position, silently.
        """
        if step.checked:
            return True
        n_seq, n_tok = int(block.hidden.shape[0]), int(block.hidden.shape[1])
        if block.start != step.expected_start:
            self.fail(
                "position",
                f"layer {block.layer}: the capture placed a forward at position {block.start}, "
                f"but {step.expected_start} tokens were fed before it",
            )
        elif n_seq != self.B or n_tok != step.n_tokens:
            self.fail(
                "rows",
                f"layer {block.layer}: rows [{n_seq}, {n_tok}] for a forward that fed [{self.B}, {step.n_tokens}]",
            )
        else:
            step.checked = True
        return step.checked

    def fail(self, reason: str, detail: str) -> None:
        """Stop monitoring this call's generations (they close as aborted); logged and counted once."""
        if self.failed:
            return
        self.failed = f"capture self-check failed ({reason}): {detail}"
        self.step = None
        self.monitor.metrics.capture_errors.labels(reason=reason).inc(len(self.handles))
        log.error(
            "probewatch: monitoring STOPPED for generations %s: %s; no further rows are sent for them "
            "(transformers %s: check the supported range with `make test-compat`)",
            ", ".join(h.id for h in self.handles),
            self.failed,
            _transformers_version(),
        )

    def on_block(self, block: RowBlock) -> None:
        step = self.step
        if step is None or self.failed or not self.check(block, step):
            return
        cap = self.plan.captures[block.layer]
        hidden = block.hidden
        prefill_rows = None
        if block.start < self.P:  # prompt rows (prefill)
            if cap.prompt_rows == pb.PROMPT_ROWS_NONE:
                return
            b, t, meta = self.prompt_sel[cap.prompt_rows]
            t_rel = t - block.start
            keep = (t_rel >= 0) & (t_rel < hidden.shape[1])
            if not bool(keep.any()):
                return
            rows = hidden[b[keep].to(hidden.device), t_rel[keep].to(hidden.device)]
            prefill_rows = [m for m, k in zip(meta, keep.tolist()) if k]
        else:
            rows = hidden.reshape(-1, hidden.shape[-1])
            if rows.device.type == "cpu":
                rows = rows.clone()  # the layer output may be reused; decode blocks are tiny
        host, event = self.monitor._to_host(rows)
        item = _Block(self, step, block.layer, block.start, cap.kind, host, event, prefill_rows)
        self.monitor._enqueue_block(item)

    def transform(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        cap = self.plan.captures.get(layer)
        if cap is None or cap.projection is None:
            return hidden
        return hidden.to(torch.float32) @ cap.projection

    # -- sender-side: which rows of a decode block are real generated tokens --------------------------
    def decode_selection(self, block: _Block) -> list[tuple[int, int, int, int]]:
        step = block.step
        if step.selection is None:
            if step.event is not None:
                step.event.synchronize()
            ids = step.ids.tolist()
            sel = []
            for b in range(self.B):
                for t, token in enumerate(ids[b]):
                    if self.finished[b]:
                        break
                    if token in self.stop_ids:
                        self.finished[b] = True
                        break
                    sel.append((b, t, self.prompt_len[b] + block.start + t - self.P, token))
            step.selection = sel
        return step.selection


class Monitor:
    """The attach handle: wraps `model.generate`; `detach()` restores it."""

    def __init__(
        self, model, tokenizer=None, config: AttachConfig | None = None, metrics: ClientMetrics | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or AttachConfig()
        self.metrics = metrics or ClientMetrics()
        self.enabled = not envs.monitoring_disabled()
        self._tls = threading.local()
        self._handles: dict[str, GenerationHandle] = {}
        self._handles_lock = threading.Lock()
        self.link: SidecarLink | None = None
        self._sender: threading.Thread | None = None
        self._plans: dict[tuple[int, str], Plan] = {}
        # hooks live on the shared model: two monitored generate() calls at once would see each
        # other's rows, so monitored calls on one model take turns (unmonitored ones never wait)
        self._generate_lock = threading.Lock()
        if not self.enabled:
            log.info("probewatch: PROBEWATCH_DISABLE is set: monitoring is off (no hooks, no sidecar traffic)")
            self.metrics.monitoring_up.set(0)
            return
        from probewatch.models import fingerprint_model

        self.fingerprint = fingerprint_model(model)
        self.device = next(model.parameters()).device
        self._queue = _SendQueue(self.config.queue_size)
        self.link = SidecarLink(
            self.config, self.fingerprint, self.device, self.metrics, self._on_response, self._on_down
        ).start()
        self._sender = threading.Thread(target=self._send_loop, name="probewatch-sender", daemon=True)
        self._sender.start()
        original = model.generate
        self._original_generate = original

        @functools.wraps(original)
        def generate(*args, **kwargs):
            return self._generate(*args, **kwargs)

        model.generate = generate

    # -- public ------------------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        """Switch between 'rows' and 'pushdown' for the next generate() calls (benchmarks, A/B)."""
        if mode not in ("rows", "pushdown"):
            raise ValueError(f"mode must be 'rows' or 'pushdown', got {mode!r}")
        self.config.mode = cast(AttachMode, mode)

    def _current_plan(self) -> tuple[Plan | None, int]:
        link = self.link
        if link is None or not link.up or link.listing is None:
            return None, -1
        session, mode = link.session, self.config.mode
        cached = self._plans.get((session, mode))
        if cached is None:
            cached = Plan.from_listing(link.listing, mode, self.device)
            self._plans = {(session, mode): cached, **{k: v for k, v in self._plans.items() if k[0] == session}}
        return cached, session

    @property
    def up(self) -> bool:
        return bool(self.link and self.link.up)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return bool(self.link and self.link.wait_up(timeout))

    @property
    def last_generations(self) -> list[GenerationHandle]:
        """Handles of the last generate() call made by this thread (one per sequence)."""
        return getattr(self._tls, "handles", [])

    def detach(self) -> None:
        if not self.enabled:
            return
        if "generate" in self.model.__dict__:
            del self.model.generate
        self._queue.put_control(_STOP)
        if self._sender is not None:
            self._sender.join(10)
        if self.link is not None:
            self.link.close()
        self.metrics.monitoring_up.set(0)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- generate wrapper ----------------------------------------------------------------------------
    def _generate(self, *args, **kwargs):
        gen_ids = kwargs.pop("generation_ids", None)
        metadata = {str(k): str(v) for k, v in (kwargs.pop("probewatch_metadata", None) or {}).items()}
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        plan, session = self._current_plan()
        unsupported = self._unsupported(kwargs)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or plan is None or unsupported:
            reason = "sidecar_down" if plan is None else "unsupported_input"
            if unsupported and plan is not None:
                log.warning("probewatch: generate() with %s is not monitored (unsupported)", unsupported)
            n = input_ids.shape[0] if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 else 1
            self.metrics.unmonitored.labels(reason=reason).inc(n)
            ids = list(gen_ids) if gen_ids else [uuid.uuid4().hex for _ in range(n)]
            self._tls.handles = [GenerationHandle(i, 0, monitored=False, reason=reason) for i in ids]
            return self._original_generate(*args, **kwargs)

        B = input_ids.shape[0]
        ids = list(gen_ids) if gen_ids else [uuid.uuid4().hex for _ in range(B)]
        if len(ids) != B:
            raise ValueError(f"generation_ids has {len(ids)} ids for a batch of {B} sequences")
        attention_mask = kwargs.get("attention_mask")
        gen_config = kwargs.get("generation_config") or getattr(self.model, "generation_config", None)
        call = _Call(self, plan, input_ids, attention_mask, [], self._stop_ids(kwargs, gen_config))
        handles = [GenerationHandle(gid, call.prompt_len[b]) for b, gid in enumerate(ids)]
        call.handles = handles
        self._tls.handles = handles
        with self._handles_lock:
            for h in handles:
                h.session = session
                self._handles[h.id] = h
        for h in handles:
            self._queue.put_control(
                _Control(
                    h,
                    pb.MonitorRequest(
                        open=pb.Open(
                            generation_id=h.id,
                            model_fingerprint=self.fingerprint,
                            prompt_length=h.prompt_length,
                            metadata=metadata,
                        )
                    ),
                )
            )

        want_dict = kwargs.get("return_dict_in_generate", getattr(gen_config, "return_dict_in_generate", False))
        if self.config.score_final_token:
            kwargs["return_dict_in_generate"] = True
        capture = ResidualCapture(
            self.model,
            plan.layers,
            sink=call.on_block,
            keep=False,
            transform=call.transform if any(c.pushdown for c in plan.captures.values()) else None,
        )
        out = None
        self._generate_lock.acquire()
        pre_hook = self.model.register_forward_pre_hook(call.on_model_call, with_kwargs=True)
        try:
            with capture:
                out = self._original_generate(*args, **kwargs)
                if self.config.score_final_token:
                    self._tail_step(call, out, kwargs)
        finally:
            pre_hook.remove()
            self._generate_lock.release()
            sequences = getattr(out, "sequences", out) if out is not None else None
            for b, h in enumerate(handles):
                prompt_text, response_text = self._texts(call, sequences, b)
                self._queue.put_control(_Control(h, _CloseMarker(prompt_text, response_text, call.failed or "")))
                if call.failed:
                    h.capture_error = call.failed
        if self.config.score_final_token and not want_dict:
            return out.sequences
        return out

    def _unsupported(self, kwargs) -> str | None:
        """Generation modes whose forward batch is not one row per sequence, or feeds rejected tokens."""
        config = kwargs.get("generation_config") or getattr(self.model, "generation_config", None)

        def setting(name: str, default=None):
            return kwargs.get(name, getattr(config, name, default))

        if (setting("num_beams", 1) or 1) > 1:
            return "beam search (num_beams > 1)"
        if (setting("num_return_sequences", 1) or 1) > 1:
            return "num_return_sequences > 1"
        if kwargs.get("assistant_model") is not None or setting("prompt_lookup_num_tokens") is not None:
            return "assisted / speculative decoding"
        return None

    @torch.inference_mode()
    def _tail_step(self, call: _Call, out, kwargs) -> None:
        """Feed the last generated token once more so its residual (hence its score) exists."""
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)  # 5.24 renamed it `cache`
        sequences = getattr(out, "sequences", None)
        if call.failed or sequences is None or sequences.shape[1] <= call.P:
            return
        if cache is None:
            log.warning("probewatch: generate() returned no KV cache: the final generated token is not scored")
            return
        last = sequences[:, -1:]
        # (call.finished belongs to the sender thread; the sequences say the same thing exactly)
        if all(any(t in call.stop_ids for t in row) for row in sequences[:, call.P :].tolist()):
            return
        try:
            mask = kwargs.get("attention_mask")
            if mask is None:
                mask = torch.ones((call.B, call.P), dtype=torch.long, device=sequences.device)
            full = torch.cat(
                [
                    mask.to(sequences.device).long(),
                    torch.ones((call.B, sequences.shape[1] - call.P), dtype=torch.long, device=sequences.device),
                ],
                dim=1,
            )
            position_ids = (full.cumsum(-1) - 1).clamp(min=0)[:, -1:]
            cache_kwarg = {_cache_kwarg_name(self.model): cache}
            self.model(input_ids=last, attention_mask=full, position_ids=position_ids, use_cache=True, **cache_kwarg)
        except Exception as exc:  # noqa: BLE001 - the output is already generated: never fail it
            log.warning("probewatch: could not score the final generated token (%s)", exc)

    def _stop_ids(self, kwargs, gen_config) -> set[int]:
        ids: set[int] = set()
        for source in (
            kwargs.get("eos_token_id"),
            getattr(gen_config, "eos_token_id", None),
            kwargs.get("pad_token_id"),
            getattr(gen_config, "pad_token_id", None),
            getattr(self.tokenizer, "eos_token_id", None),
        ):
            if source is None:
                continue
            if isinstance(source, torch.Tensor):
                source = source.tolist()
            ids.update(int(x) for x in (source if isinstance(source, (list, tuple, set)) else [source]))
        return ids

    def _texts(self, call: _Call, sequences, b: int) -> tuple[str, str]:
        if self.tokenizer is None:
            return "", ""
        try:
            prompt = call.ids_cpu[b, call.P - call.prompt_len[b] :] if call.prompt_len[b] else call.ids_cpu[b, :0]
            prompt_text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            response_text = ""
            if isinstance(sequences, torch.Tensor):
                generated = sequences[b, call.P :].tolist()
                response_text = self.tokenizer.decode(generated, skip_special_tokens=True)
            return prompt_text, response_text
        except Exception:  # noqa: BLE001 - texts are optional
            return "", ""

    # -- generation thread -> sender -------------------------------------------------------------------
    def _to_host(self, tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if tensor.device.type == "cuda":
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)  # cached by torch's host allocator
            host.copy_(tensor, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            return host, event
        if tensor.device.type != "cpu":
            return tensor.to("cpu"), None
        return tensor, None

    def _enqueue_block(self, item: _Block) -> None:
        if self._queue.put_data(item):
            return
        self.metrics.dropped_chunks.labels(reason="queue_full").inc()
        for h in item.call.handles:
            h.dropped += 1

    # -- sender thread -----------------------------------------------------------------------------------
    def _send_loop(self) -> None:
        cfg = self.config
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            n_layers = max(1, len(self.link.plan.layers) if self.link and self.link.plan else 1)
            target = cfg.steps_per_message * n_layers
            deadline = time.monotonic() + cfg.linger_s
            stop = False
            while len(batch) < target and not isinstance(batch[-1], _Control):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                nxt = self._queue.get(remaining)
                if nxt is None:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            try:
                self._send_batch(batch)
            except Exception:  # never let the sender die: monitoring would stop silently
                log.exception("probewatch: sender failed on a batch")
            if stop:
                return

    def _send_batch(self, batch: list) -> None:
        pending: dict[tuple[str, int], _Pending] = {}
        for item in batch:
            if isinstance(item, _Control):
                h = item.handle
                for key in [k for k in pending if k[0] == h.id]:
                    self._flush(pending.pop(key))
                message = item.message
                if isinstance(message, _CloseMarker):
                    message = pb.MonitorRequest(
                        close=pb.Close(
                            generation_id=h.id,
                            prompt_text=message.prompt_text,
                            response_text=message.response_text,
                            dropped_chunks=h.dropped,
                            abort_reason=message.abort_reason,
                        )
                    )
                if (h.rejected or not self._send(message, h)) and message.WhichOneof("msg") == "close":
                    self._forget(h)
                continue
            self._collect(item, pending)
        for acc in pending.values():
            self._flush(acc)

    def _collect(self, block: _Block, pending: dict) -> None:
        if block.event is not None:
            block.event.synchronize()
        rows = block.host
        call = block.call
        if block.prefill_rows is not None:
            triples = [(b, i, pos, tok) for i, (b, pos, tok) in enumerate(block.prefill_rows)]
        else:
            T = rows.shape[0] // call.B
            triples = [(b, b * T + t, pos, tok) for b, t, pos, tok in call.decode_selection(block)]
        for b, row, pos, tok in triples:
            h = call.handles[b]
            if h.rejected:
                continue
            key = (h.id, block.layer)
            acc = pending.get(key)
            if acc is None:
                acc = pending[key] = _Pending(h, block.layer, block.kind)
            acc.rows.append(rows[row])
            acc.positions.append(pos)
            acc.tokens.append(tok)

    def _flush(self, acc: _Pending) -> None:
        if not acc.rows:
            return
        rows = torch.stack(acc.rows)
        dtype = None if self.config.wire_dtype == "auto" else self.config.wire_dtype
        plan = self.link.plan if self.link else None
        limit = plan.max_message_bytes if plan else 4 * 1024 * 1024
        per_row = rows.shape[1] * rows.element_size() + 24
        step = max(1, (limit - 1024) // per_row)
        for i in range(0, rows.shape[0], step):
            chunk = pb.ActivationChunk(
                generation_id=acc.handle.id,
                layer=acc.layer,
                kind=acc.kind,
                positions=acc.positions[i : i + step],
                token_ids=acc.tokens[i : i + step],
                payload=encode_tensor(rows[i : i + step], dtype),
            )
            if self._send(pb.MonitorRequest(chunk=chunk), acc.handle):
                self.metrics.chunks_sent.inc()

    def _send(self, message: pb.MonitorRequest, handle: GenerationHandle) -> bool:
        link = self.link
        if link is not None and link.send(message, handle.session):
            return True
        if message.WhichOneof("msg") == "chunk":
            self.metrics.dropped_chunks.labels(reason="rejected" if handle.rejected else "sidecar_down").inc()
            handle.dropped += 1
        return False

    # -- link thread ---------------------------------------------------------------------------------------
    def _on_response(self, response: pb.MonitorResponse) -> None:
        which = response.WhichOneof("msg")
        msg = getattr(response, which)
        with self._handles_lock:
            handle = self._handles.get(msg.generation_id)
        if handle is None:
            if which == "error":
                log.warning("probewatch: sidecar error %s: %s", msg.code_name, msg.message)
            return
        if which == "score":
            handle._on_score(msg)
        elif which == "alert":
            handle._on_alert(msg)
        elif which == "summary":
            handle._on_summary(msg)
            self._forget(handle)
        elif which == "error":
            log.warning(
                "probewatch: sidecar rejected a message of generation %s: %s %s", handle.id, msg.code_name, msg.message
            )
            handle._on_error(msg)

    def _on_down(self) -> None:
        with self._handles_lock:
            handles, self._handles = list(self._handles.values()), {}
        for h in handles:
            h._resolve(False, "unmonitored", "sidecar connection lost")

    def _forget(self, handle: GenerationHandle) -> None:
        with self._handles_lock:
            self._handles.pop(handle.id, None)
        if not handle.done:
            handle._resolve(False, "unmonitored", "sidecar unreachable")


@dataclass
class _CloseMarker:
    """Close is built by the sender, which knows how many chunks it dropped."""

    prompt_text: str
    response_text: str
    abort_reason: str = ""  # the capture self-check stopped monitoring (the sidecar ends it `aborted`)

    def WhichOneof(self, _: str) -> str:
        return "close"


@dataclass
class _Pending:
    handle: GenerationHandle
    layer: int
    kind: pb.PayloadKind
    rows: list[torch.Tensor] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


def attach(
    model,
    tokenizer=None,
    sidecar: str | None = None,
    mode: str = "rows",
    wait_s: float = 0.0,
    metrics: ClientMetrics | None = None,
    **settings,
) -> Monitor:
    """Wrap `model.generate` so every generation is monitored by the sidecar at `sidecar`.

    Returns immediately (the connection is made in the background); `wait_s` > 0 waits that long
    for the first connection so the first generation is monitored. With PROBEWATCH_DISABLE=1 the
    returned monitor is inert and the model is untouched.
    """
    config = AttachConfig.model_validate({"mode": mode, **({"sidecar": sidecar} if sidecar else {}), **settings})
    monitor = Monitor(model, tokenizer, config, metrics)
    if wait_s > 0 and monitor.enabled:
        monitor.wait_ready(wait_s)
    return monitor


__all__ = ["AttachConfig", "GenerationHandle", "GenerationResult", "Monitor", "attach"]
