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

import functools
import inspect
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch

from probewatch import envs
from probewatch.capture import ResidualCapture, RowBlock
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.client.config import AttachConfig, AttachMode
from probewatch.server.client.core import ClientCore
from probewatch.server.client.link import SidecarLink
from probewatch.server.client.metrics import ClientMetrics
from probewatch.server.client.plan import LayerCapture, Plan
from probewatch.server.client.results import GenerationHandle, GenerationResult
from probewatch.server.client.sender import Block
from probewatch.server.client.token_texts import texts_from
from probewatch.server.client.unmonitored import UnmonitoredGenerationRefused, check_settled, refusal, require_monitored
from probewatch.stop_tokens import stop_token_ids

log = logging.getLogger(__name__)


def _cache_kwarg_name(model) -> str:
    """How this transformers' forward takes the KV cache (`cache` from 5.24, `past_key_values` before)."""

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
class _Block(Block):
    call: _Call
    step: _Step
    layer: int
    start: int
    kind: pb.PayloadKind
    host: torch.Tensor  # gathered rows, on the host (copy maybe still in flight)
    event: Any
    prefill_rows: list[tuple[int, int, int]] | None  # (b, position, token) per row for prompt blocks

    def handles(self) -> list[GenerationHandle]:
        return self.call.handles

    def rows(self) -> list[tuple[GenerationHandle, int, int, int]]:
        call = self.call
        if self.prefill_rows is not None:
            return [(call.handles[b], i, pos, tok) for i, (b, pos, tok) in enumerate(self.prefill_rows)]
        T = self.host.shape[0] // call.B
        return [(call.handles[b], b * T + t, pos, tok) for b, t, pos, tok in call.decode_selection(self)]


class _Call:
    """Bookkeeping of one `generate()` call: which rows of which forward belong to which sequence."""

    def __init__(
        self,
        monitor: AttachedModel,
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
        self.refused: UnmonitoredGenerationRefused | None = None  # `reject`: counted once, raised until it ends

    # -- generation-thread hooks (cheap: gather + async copy + enqueue) -----------------------------
    def on_model_call(self, module, args, kwargs) -> None:
        if self.monitor.config.on_unmonitored == "reject":  # stop early once a sequence is known unmonitored
            if self.refused is None:
                self.refused = check_settled(self.handles, self.monitor.metrics)
            if self.refused is not None:
                raise self.refused
        if self.failed:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            self.fail("rows", "a forward without 2-D input_ids (inputs_embeds?): its rows cannot be attributed")
            return
        if ids.shape[0] != self.B:
            self.fail("batch", f"a forward fed {ids.shape[0]} sequences, the generate() call has {self.B}")
            return
        host, event = ClientCore.to_host(ids.detach())
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
        host, event = ClientCore.to_host(rows)
        item = _Block(self, step, block.layer, block.start, cap.kind, host, event, prefill_rows)
        cast(ClientCore, self.monitor.client).enqueue(item)

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


class AttachedModel:
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
        self.client: ClientCore | None = None
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
        self.client = ClientCore(self.config, self.fingerprint, self.device, self.metrics)
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

    @property
    def link(self) -> SidecarLink | None:
        """The connection to the sidecar (None when disabled)."""
        return self.client.link if self.client is not None else None

    def _current_plan(self) -> tuple[Plan | None, int]:
        if self.client is None:
            return None, -1
        return self.client.current_plan(self.config.mode)

    @property
    def up(self) -> bool:
        return bool(self.client and self.client.up)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return bool(self.client and self.client.wait_ready(timeout))

    @property
    def last_generations(self) -> list[GenerationHandle]:
        """Handles of the last generate() call made by this thread (one per sequence)."""
        return getattr(self._tls, "handles", [])

    def detach(self) -> None:
        if not self.enabled:
            return
        if "generate" in self.model.__dict__:
            del self.model.generate
        if self.client is not None:
            self.client.stop()
        self.metrics.monitoring_up.set(0)

    def __enter__(self) -> AttachedModel:
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
            self.metrics.generations.inc(n)
            self.metrics.unmonitored.labels(reason=reason).inc(n)
            if self.config.on_unmonitored == "reject":  # before generating: nothing unmonitored is produced
                detail = f"no connection to the sidecar {self.config.sidecar}" if plan is None else unsupported
                raise refusal(self.metrics, reason, n, detail or "input the capture cannot attribute")
            ids = list(gen_ids) if gen_ids else [uuid.uuid4().hex for _ in range(n)]
            self._tls.handles = [GenerationHandle(i, 0, monitored=False, reason=reason) for i in ids]
            return self._original_generate(*args, **kwargs)

        B = input_ids.shape[0]
        ids = list(gen_ids) if gen_ids else [uuid.uuid4().hex for _ in range(B)]
        if len(ids) != B:
            raise ValueError(f"generation_ids has {len(ids)} ids for a batch of {B} sequences")
        attention_mask = kwargs.get("attention_mask")
        gen_config = kwargs.get("generation_config") or getattr(self.model, "generation_config", None)
        call = _Call(self, plan, input_ids, attention_mask, [], stop_token_ids(gen_config, self.tokenizer, kwargs))
        handles = [GenerationHandle(gid, call.prompt_len[b]) for b, gid in enumerate(ids)]
        call.handles = handles
        self._tls.handles = handles
        self.metrics.generations.inc(B)
        client = cast(ClientCore, self.client)
        for h in handles:
            client.open(h, session, metadata)

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
                prompt_text, response_text, token_texts = self._texts(call, sequences, b)
                client.close(h, prompt_text, response_text, call.failed or "", token_texts)
        if self.config.on_unmonitored == "reject":  # the output only leaves once its monitoring is confirmed
            if call.refused is not None:  # found during the call (e.g. at the final token's step): counted then
                raise call.refused
            require_monitored(handles, self.metrics, self.config.result_timeout_s)
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
        if call.failed or call.refused is not None or sequences is None or sequences.shape[1] <= call.P:
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

    def _texts(self, call: _Call, sequences, b: int) -> tuple[str, str, Callable[[], tuple[int, list[str]]] | None]:
        """(prompt text, response text, the token texts decoded later by the sender thread)."""
        if self.tokenizer is None:
            return "", "", None
        try:
            prompt = call.ids_cpu[b, call.P - call.prompt_len[b] :] if call.prompt_len[b] else call.ids_cpu[b, :0]
            prompt_text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            response_text, generated = "", []
            if isinstance(sequences, torch.Tensor):
                generated = sequences[b, call.P :].tolist()
                response_text = self.tokenizer.decode(generated, skip_special_tokens=True)
            return prompt_text, response_text, texts_from(self.tokenizer, prompt.tolist(), generated)
        except Exception:  # noqa: BLE001 - texts are optional
            return "", "", None


def attach(
    model,
    tokenizer=None,
    sidecar: str | None = None,
    mode: str = "rows",
    wait_s: float = 0.0,
    metrics: ClientMetrics | None = None,
    **settings,
) -> AttachedModel:
    """Wrap `model.generate` so every generation is monitored by the sidecar at `sidecar`.

    Returns immediately (the connection is made in the background); `wait_s` > 0 waits that long
    for the first connection so the first generation is monitored. With PROBEWATCH_DISABLE=1 the
    returned monitor is inert and the model is untouched.
    """
    config = AttachConfig.model_validate({"mode": mode, **({"sidecar": sidecar} if sidecar else {}), **settings})
    monitor = AttachedModel(model, tokenizer, config, metrics)
    if wait_s > 0 and monitor.enabled:
        monitor.wait_ready(wait_s)
    return monitor


__all__ = [
    "UnmonitoredGenerationRefused",
    "AttachConfig",
    "GenerationHandle",
    "GenerationResult",
    "LayerCapture",
    "AttachedModel",
    "Plan",
    "SidecarLink",
    "attach",
]
