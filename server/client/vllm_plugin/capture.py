"""The vLLM backend's core: which rows of a step belong to which request and position.

Runner-agnostic: a runner adapter (`probewatch.server.client.vllm_plugin.adapters`: V1, V2, standalone CPU) turns
its runner's bookkeeping into a `StepView` and calls `on_schedule` (the scheduler output, before the
runner applies it), `on_step` (after the forward, with the auxiliary hidden states), `on_sampled`
(tokens sampled this step) and `on_request_finished` (the scheduler freed a request).

vLLM flattens a step's tokens of every scheduled request into one `[num_tokens, d]` batch; a
`StepView` says how: `req_ids` (request order), `query_start_loc` (row range of each request) and
`num_computed` (the position of each request's first row). The residuals come out of the compiled
(or graph-captured) model as auxiliary hidden states (`set_aux_hidden_state_layers`, the EAGLE-3
outputs: decoder layer L's `hidden_states + residual` = resid_post of layer L, at aux index L + 1),
so no hook runs inside the graph.

On the serving thread a step only: reads that bookkeeping (host arrays), builds one row index per
layer (prompt-row policy, request opt-outs), gathers the rows on the device (`index_select`;
pushdown: one `[n, d] @ [d, k]` GEMM), starts the host copies and enqueues — no sync, no network.
The self-check: rows per request equal the tokens the scheduler scheduled, a request's first
position continues where it stopped (or restarts lower only when vLLM resumes it after
preemption), and in the sender the positions the engine actually fed equal the bookkeeping's. On a
mismatch that generation stops being sent and closes `aborted` with the reason
(`probewatch_client_capture_errors_total{reason}`).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from probewatch import envs
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.client.core import ClientCore
from probewatch.server.client.results import GenerationHandle
from probewatch.server.client.sender import Block
from probewatch.server.client.vllm_plugin.policy import PolicyError, RequestPolicy, request_policy
from probewatch.server.client.vllm_plugin.step import VERIFY_WAIT_S, Gathered, RequestState, StepView, Verify

log = logging.getLogger(__name__)

_RECENT = 4096  # finished handles kept for `results()`
# MRV2 warms its kernels up with real-looking requests through execute_model (`_warmup_{i}_`,
# `_context_warmup_{i}_`, `_v2_mixed_warmup_prefill_{i}_`, vllm/v1/worker/gpu/warmup.py): never monitored
_WARMUP = re.compile(r"^_\w*warmup")
_captures: list[RunnerCapture] = []
#: one layer's rows of a step: batch-row index parts, (generation, position) per row, entry -> verify step
_LayerRows = tuple[list[np.ndarray], list[tuple[GenerationHandle, int]], dict[int, Verify]]


def request_finished(request: Any) -> None:
    """Called by the scheduler hook for every finished request (all captures of this process)."""
    for capture in list(_captures):
        capture.on_request_finished(request)


def captures() -> list[RunnerCapture]:
    """The captures installed in this process (one per monitored model runner)."""
    return list(_captures)


def all_results() -> dict[str, GenerationHandle]:
    out: dict[str, GenerationHandle] = {}
    for capture in list(_captures):
        out.update(capture.handles())
    return out


def stop_at(
    output: Sequence[int], start: int, prompt_len: int, params: Any, max_model_len: int
) -> tuple[int, int] | None:
    """Where the request ends within `output[start:]` (vLLM's `check_stop`, without stop strings).

    Returns (tokens the output keeps, end of the positions whose rows belong to the response: a stop
    token is kept in the output but, like offline, not scored), or None when it goes on. Several
    tokens can arrive in one step (speculative decoding), so the stop may sit before the last one:
    vLLM then drops what follows it, and so does the capture.
    """
    if params is None:
        return None
    max_tokens = params.max_tokens if params.max_tokens is not None else max_model_len - prompt_len
    limit = min(max_tokens, max_model_len - prompt_len)
    eos = None if getattr(params, "ignore_eos", False) else params.eos_token_id
    stop_ids = set(params.stop_token_ids or ())
    for i in range(start, len(output)):
        token = output[i]
        if token >= 0 and (token == eos or token in stop_ids):
            return i + 1, prompt_len + i
        if i + 1 >= limit:
            return i + 1, prompt_len + i + 1
    return None


@dataclass
class VllmBlock(Block):
    capture: RunnerCapture
    layer: int
    kind: pb.PayloadKind
    host: torch.Tensor
    event: Any
    entries: list[tuple[GenerationHandle, int]]  # (generation, bookkept position) per row
    fed: Gathered
    drafts: dict[int, Verify] = field(default_factory=dict)  # entry index -> its verify step (draft rows)

    def handles(self) -> list[GenerationHandle]:
        return list({id(h): h for h, _ in self.entries}.values())

    def rows(self) -> list[tuple[GenerationHandle, int, int, int]]:
        if self.fed.event is not None:
            self.fed.event.synchronize()
        fed_pos = self.fed.positions.tolist()
        tokens = self.fed.tokens.tolist()
        out = []
        for j, (h, pos) in enumerate(self.entries):
            if h.capture_error is not None or h.rejected:
                continue
            verify = self.drafts.get(j)
            if verify is not None:
                verify.event.wait(VERIFY_WAIT_S)
                if pos >= verify.end:
                    continue  # a rejected draft's row (or acceptance never came): not the sequence's
            if fed_pos[j] != pos:
                self.capture.fail(
                    h,
                    "position",
                    f"layer {self.layer}: the engine fed position {fed_pos[j]} where its bookkeeping says {pos}",
                )
                continue
            out.append((h, j, pos, int(tokens[j])))
        return out


class RunnerCapture:
    """Attached to one model runner (`runner._probewatch`); see the module docstring."""

    def __init__(
        self,
        client: ClientCore,
        layers: list[int],
        decode: Callable[[list[int]], str] | None,
        max_model_len: int = 1 << 62,
        runner_name: str = "",
    ) -> None:
        self.client = client
        self.layers = layers  # sorted; aux output i is layer layers[i]
        self.decode = decode
        self.max_model_len = max_model_len
        self.runner_name = runner_name  # which adapter drives it (logs, `probewatch vllm check`)
        self.default_monitor = envs.vllm_monitor_default()
        self.caller_opt_out = envs.vllm_caller_opt_out()
        self.requests: dict[str, RequestState] = {}
        self.recent: OrderedDict[str, GenerationHandle] = OrderedDict()
        self._lock = threading.Lock()
        self._sched: Any = None
        self._resumed: set[str] = set()
        self._drafts: dict[str, int] = {}  # request -> draft tokens in this step's verify (speculative decoding)
        self._warned: set[str] = set()
        _captures.append(self)

    @property
    def metrics(self):
        return self.client.metrics

    def set_mode(self, mode: str) -> None:
        """Switch between 'rows' and 'pushdown' for the next steps (benchmarks, A/B, tests)."""
        if mode not in ("rows", "pushdown"):
            raise ValueError(f"mode must be 'rows' or 'pushdown', got {mode!r}")
        self.client.config.mode = mode  # type: ignore[assignment]

    def handles(self) -> dict[str, GenerationHandle]:
        with self._lock:
            out = dict(self.recent)
            out.update({rid: r.handle for rid, r in self.requests.items() if r.handle is not None})
            return out

    # -- scheduler output (before the runner updates its states) ----------------------------------------
    def on_schedule(self, sched: Any) -> None:
        """A `SchedulerOutput` (the same dataclass on every runner): open new requests, close finished ones."""
        self._sched = sched
        for rid in sched.finished_req_ids:
            self._finish(rid)
        new = sched.scheduled_new_reqs
        # requests vLLM recomputes after a preemption: V1 lists them as resumed, V2 sends them again as new
        cached = sched.scheduled_cached_reqs
        self._resumed = set(getattr(cached, "resumed_req_ids", ()) or ()) | {
            d.req_id for d in new if d.req_id in self.requests
        }
        spec = getattr(sched, "scheduled_spec_decode_tokens", None) or {}
        self._drafts = {rid: len(tokens) for rid, tokens in spec.items() if tokens}
        if new:
            plan, session = self.client.current_plan()
            for data in new:
                self._open(data, plan, session)

    def _policy(self, rid: str, extra_args: Any) -> RequestPolicy:
        """The request's policy; caller input that would switch monitoring off is neutralised and counted
        (an opt-out the operator does not allow, an unreadable value)."""
        try:
            policy = request_policy(extra_args, self.default_monitor, self.caller_opt_out)
        except PolicyError as exc:
            log.warning("probewatch: request %s: %s (default policy applies)", rid, exc)
            self.metrics.bounded_inputs.labels(what="extra_args").inc()
            return RequestPolicy(self.default_monitor)
        if policy.opt_out_ignored:
            self.metrics.bounded_inputs.labels(what="opt_out").inc()
            self._warn_once("opt_out", "probewatch: callers' opt-outs are ignored (PROBEWATCH_CALLER_OPT_OUT=1 allows)")
        return policy

    def _open(self, data: Any, plan: Any, session: int) -> None:
        rid = data.req_id
        if rid in self.requests:
            return  # re-sent as new after a preemption: the same generation goes on (positions skip)
        if _WARMUP.match(rid):
            return
        prompt = data.prompt_token_ids
        prompt_len = len(prompt) if prompt is not None else 0
        params = data.sampling_params
        if params is None:  # pooling request: no generation to watch
            return
        self.metrics.generations.inc()
        policy = self._policy(rid, getattr(params, "extra_args", None))
        if not policy.monitored:
            self.metrics.unmonitored.labels(reason="opted_out").inc()
            return
        if prompt is None:
            self.metrics.unmonitored.labels(reason="unsupported_input").inc()
            self._warn_once("embeds", "probewatch: requests given as prompt embeddings are not monitored")
            return
        if plan is None:
            self.metrics.unmonitored.labels(reason="sidecar_down").inc()
            self._remember(rid, GenerationHandle(rid, prompt_len, monitored=False, reason="sidecar_down"))
            return
        layers = frozenset(layer for layer in self.layers if layer in plan.captures)
        if policy.probes is not None:
            by_id = {p["id"]: p["layers"] for p in plan.probes}  # every layer of a multi-layer probe
            unknown = [p for p in policy.probes if p not in by_id]
            if unknown:
                log.warning("probewatch: request %s names unknown probes %s (ignored)", rid, unknown)
            chosen = layers & {layer for p in policy.probes if p in by_id for layer in by_id[p]}
            if not chosen:  # a selection of nothing known must not switch monitoring off
                self.metrics.bounded_inputs.labels(what="probewatch_probes").inc()
            layers = chosen or layers
        if not layers:
            self.metrics.unmonitored.labels(reason="unsupported_input").inc()
            return
        handle = GenerationHandle(rid, prompt_len)
        self.client.open(handle, session, {"engine": "vllm", **policy.metadata})
        with self._lock:
            self.requests[rid] = RequestState(
                handle, prompt_len, layers, int(data.num_computed_tokens), list(prompt), [], params
            )

    # -- sampled tokens and finished requests ----------------------------------------------------------
    def on_sampled(self, outputs: Mapping[str, Sequence[int]], cumulative: bool = False) -> None:
        """Tokens the runner sampled for its requests this step (`cumulative`: the whole output so far).

        The worker learns of a finish only with the next scheduler output, which an idle server never
        sends; and the scheduler hook runs in another process when the executor is multi-process. So
        the worker closes, right after sampling, every request that stopped on EOS / a stop token or
        reached max_tokens / max_model_len (vLLM's own rules, mirrored). Aborts and stop strings close
        with the next scheduler output (`finished_req_ids`) or the scheduler hook.
        """
        if not self.requests:
            return
        for rid, tokens in outputs.items():
            req = self.requests.get(rid)
            if req is None:
                continue
            valid = [int(t) for t in tokens if t >= 0]
            start = len(req.output_ids)
            new = len(valid) - start if cumulative else len(valid)
            if cumulative:
                req.output_ids = valid
            else:
                req.output_ids.extend(valid)
            cut = stop_at(
                req.output_ids, min(start, len(req.output_ids)), req.prompt_len, req.params, self.max_model_len
            )
            if cut is not None:
                del req.output_ids[cut[0] :]
            verify = req.verify
            if verify is not None:  # accepted drafts + 1 new tokens: rows p0 .. p0 + accepted are valid
                req.verify = None
                req.floor = verify.p0 + max(1, new)
                accepted = max(0, new - 1)
                self.metrics.speculative_rows.labels(outcome="accepted").inc(accepted)
                self.metrics.speculative_rows.labels(outcome="rejected").inc(max(0, verify.drafts - accepted))
                verify.settle(min(req.floor, cut[1]) if cut is not None else req.floor)
            if cut is not None:
                self._finish(rid)

    def on_request_finished(self, request: Any) -> None:
        """The scheduler frees a finished request (stop, length, abort): close its generation now.

        Runs in the engine-core process, which holds the runner when the executor is uni-process
        (one device); other workers close at the next scheduler output (`finished_req_ids`).
        """
        req = self.requests.get(request.request_id)
        if req is not None:
            output = [int(t) for t in (getattr(request, "output_token_ids", None) or []) if t >= 0]
            if output:
                req.output_ids = output
        self._finish(request.request_id)

    def _finish(self, rid: str) -> None:
        with self._lock:
            req = self.requests.pop(rid, None)
        if req is None or req.handle is None:
            return
        if req.verify is not None:  # ended before its acceptance arrived: only the verified row counts
            req.verify.settle(req.verify.p0 + 1)
        prompt_ids, output_ids = req.prompt_ids, list(req.output_ids)
        decode = self.decode

        def texts() -> tuple[str, str]:
            if decode is None:
                return "", ""
            return decode(prompt_ids), decode(output_ids)

        # per-token texts for the review heatmap when the decoder can make them (engage._Decoder)
        token_texts = getattr(decode, "token_texts", None)
        self.client.close_lazy(req.handle, texts, token_texts(prompt_ids, output_ids) if token_texts else None)
        self._remember(rid, req.handle)

    def _remember(self, rid: str, handle: GenerationHandle) -> None:
        """Keep a finished handle for `results()`, under vLLM's request id (the handle's id may be bounded)."""
        with self._lock:
            self.recent[rid] = handle
            while len(self.recent) > _RECENT:
                self.recent.popitem(last=False)

    # -- one model forward ------------------------------------------------------------------------------
    def on_step(self, step: StepView | None) -> None:
        """After the forward of the scheduler output last passed to `on_schedule` (`None`: the runner
        returned no auxiliary outputs, so no rows exist for this step)."""
        sched, self._sched = self._sched, None  # one forward per scheduler output
        if sched is None or not self.requests:
            return
        problem = self._step_problem(sched, step)
        if problem is not None:
            self._fail_step(sched, *problem)
            return
        assert step is not None
        plan, session = self.client.current_plan()
        if plan is None:
            return
        per_layer: dict[int, _LayerRows] = {layer: ([], [], {}) for layer in self.layers if layer in plan.captures}
        qsl, computed = step.query_start_loc, step.num_computed
        for i, rid in enumerate(step.req_ids):
            req = self.requests.get(rid)
            if req is None or not req.live or req.handle is None or req.handle.session != session:
                continue  # not monitored, or its stream is gone (resolved unmonitored by the link)
            start, p0 = int(qsl[i]), int(computed[i])
            self._select_rows(rid, req, sched, start, p0, int(qsl[i + 1]) - start, plan, per_layer)
        self._gather_and_send(step, plan, per_layer)

    def _step_problem(self, sched: Any, step: StepView | None) -> tuple[str, str] | None:
        """(reason, detail) when this step's rows cannot be trusted for any request, else None."""
        if step is None or len(step.aux) != len(self.layers):
            return "rows", f"the model returned no auxiliary hidden state per captured layer {self.layers}"
        if step.input_ids is None or step.positions.dim() != 1:
            return "rows", "a step without flat input_ids / positions (embeddings or M-RoPE)"
        total = int(step.query_start_loc[len(step.req_ids)])
        if total != int(sched.total_num_scheduled_tokens) or step.num_tokens != total:
            return (
                "batch",
                f"{total} rows in the batch ({step.num_tokens} real), {sched.total_num_scheduled_tokens} scheduled",
            )
        return None

    def _select_rows(
        self, rid: str, req: RequestState, sched: Any, start: int, p0: int, n: int, plan: Any, per_layer: dict
    ) -> None:
        """Check one request's rows against the schedule and add the ones each layer sends to `per_layer`."""
        h = req.handle
        assert h is not None
        scheduled = sched.num_scheduled_tokens.get(rid)
        if scheduled != n:
            self.fail(h, "rows", f"{n} rows in the batch for request {rid}, {scheduled} tokens scheduled")
            return
        if p0 > req.floor or (p0 < req.floor and rid not in self._resumed):
            self.fail(h, "position", f"request {rid} continues at position {p0}, its last step ended at {req.floor}")
            return
        lo = max(p0, req.floor)
        req.floor = max(req.floor, p0 + n)
        verify = None
        if self._drafts.get(rid):  # a verify step: rows past p0 count once their drafts are accepted
            verify = req.verify = Verify(p0, p0 + 1, self._drafts[rid])
        if lo >= p0 + n:
            return
        P = req.prompt_len
        gen = np.arange(max(lo, P), p0 + n)
        for layer, (parts, entries, drafts) in per_layer.items():
            if layer not in req.layers:
                continue
            policy = plan.captures[layer].prompt_rows
            if policy == pb.PROMPT_ROWS_ALL:
                pos = np.arange(lo, p0 + n)
            elif policy == pb.PROMPT_ROWS_LAST and lo <= P - 1 < p0 + n:
                pos = np.concatenate([[P - 1], gen])
            else:
                pos = gen
            if pos.size:
                parts.append(start + pos - p0)
                if verify is not None:
                    drafts.update({len(entries) + j: verify for j, p in enumerate(pos) if p > p0})
                entries.extend((h, int(p)) for p in pos)

    def _gather_and_send(self, step: StepView, plan: Any, per_layer: dict[int, _LayerRows]) -> None:
        """Gather each layer's rows on the device (one index per distinct selection), start the host copies, enqueue."""
        input_ids, positions, aux = step.input_ids, step.positions, step.aux
        assert input_ids is not None
        gathered: dict[bytes, tuple[torch.Tensor, Gathered]] = {}
        for k, layer in enumerate(self.layers):
            if layer not in per_layer or not per_layer[layer][0]:
                continue
            idx_parts, entries, drafts = per_layer[layer]
            idx = np.concatenate(idx_parts).astype(np.int64)
            key = idx.tobytes()
            if key not in gathered:
                idx_t = torch.from_numpy(idx).to(aux[k].device, non_blocking=True)
                fed = torch.stack(
                    [
                        input_ids.index_select(0, idx_t).to(torch.int64),
                        positions.index_select(0, idx_t).to(torch.int64),
                    ]
                )
                fed_host, fed_event = ClientCore.to_host(fed)
                gathered[key] = (idx_t, Gathered(fed_host[0], fed_host[1], fed_event))
            idx_t, fed_rows = gathered[key]
            cap = plan.captures[layer]
            rows = aux[k].index_select(0, idx_t)
            if cap.projection is not None:
                rows = rows.to(torch.float32) @ cap.projection
            host, event = ClientCore.to_host(rows)
            self.client.enqueue(VllmBlock(self, layer, cap.kind, host, event, entries, fed_rows, drafts))

    # -- the self-check ------------------------------------------------------------------------------------
    def fail(self, handle: GenerationHandle, reason: str, detail: str) -> None:
        """Stop sending `handle`'s rows; it closes `aborted` with the reason. Logged and counted once."""
        if handle.capture_error is not None:
            return
        handle.capture_error = f"capture self-check failed ({reason}): {detail}"
        self.metrics.capture_errors.labels(reason=reason).inc()
        log.error(
            "probewatch: monitoring STOPPED for generation %s: %s; no further rows are sent for it "
            "(check the supported vLLM version in docs/live.md)",
            handle.id,
            handle.capture_error,
        )

    def _fail_step(self, sched: Any, reason: str, detail: str) -> None:
        for rid in sched.num_scheduled_tokens:
            req = self.requests.get(rid)
            if req is not None and req.handle is not None:
                self.fail(req.handle, reason, detail)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def stop(self) -> None:
        self.client.stop()
        if self in _captures:
            _captures.remove(self)
