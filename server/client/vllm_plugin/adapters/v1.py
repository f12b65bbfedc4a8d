"""The V1 model runner (`vllm.v1.worker.gpu_model_runner.GPUModelRunner`; the V1 CPU runner subclasses it).

Shipped by vLLM up to 0.33 (deleted in 0.34). Wrapped at class level:
- `_setup_eagle3_aux_hidden_state_outputs` (the end of `load_model`, before any compilation or graph
  capture): `engage()`, then the runner unpacks `(hidden_states, aux)` like it does for EAGLE-3;
- `_update_states(scheduler_output)` (each step, before the runner applies it): `on_schedule`;
- `_model_forward(input_ids, positions, ...)` (each step, after the forward): the step's rows from
  `input_batch.req_ids`, `query_start_loc.np`, `input_batch.num_computed_tokens_cpu`: `on_step`;
- `_bookkeeping_sync` (after sampling): each request's `output_token_ids`: `on_sampled`.
"""

from __future__ import annotations

import functools
from typing import Any

from probewatch.server.client.vllm_plugin.adapters.base import RunnerAdapter, capture_of, guarded, wrap_after
from probewatch.server.client.vllm_plugin.contract import Requirement
from probewatch.server.client.vllm_plugin.engage import RunnerFacts, engage, speculative_method
from probewatch.server.client.vllm_plugin.step import StepView

_M = "vllm.v1.worker.gpu_model_runner"
_C = "GPUModelRunner"
_B = "vllm.v1.worker.gpu_input_batch"


class V1Adapter(RunnerAdapter):
    name = "vllm-v1"
    module = _M
    cls = _C
    summary = "V1 GPUModelRunner (vLLM <= 0.33; also its CPU subclass)"
    contract = (
        Requirement(_M, "_setup_eagle3_aux_hidden_state_outputs", _C, why="engage after load_model"),
        Requirement(_M, "_update_states", _C, prefix=("scheduler_output",), why="on_schedule"),
        Requirement(_M, "_model_forward", _C, prefix=("input_ids", "positions"), why="on_step"),
        Requirement(_M, "_bookkeeping_sync", _C, why="on_sampled"),
        Requirement(_M, "get_model", _C),
        Requirement(_M, "input_batch", _C, "attr"),
        Requirement(_M, "query_start_loc", _C, "attr"),
        Requirement(_M, "requests", _C, "attr", why="output_token_ids after sampling"),
        Requirement(_M, "speculative_config", _C, "attr"),
        Requirement(_M, "use_aux_hidden_state_outputs", _C, "attr"),
        Requirement(_M, "model_config", _C, "attr"),
        Requirement(_M, "device", _C, "attr"),
        Requirement(_M, "max_model_len", _C, "attr"),
        Requirement(_B, "req_ids", "InputBatch", "attr"),
        Requirement(_B, "num_reqs", "InputBatch", "attr"),
        Requirement(_B, "num_computed_tokens_cpu", "InputBatch", "attr"),
        Requirement("vllm.v1.worker.gpu_input_batch", "output_token_ids", "CachedRequestState", "attr"),
        # the V1 CPU runner must inherit the wrapped methods (a class-level patch on the base)
        *(
            Requirement("vllm.v1.worker.cpu_model_runner", name, "CPUModelRunner", "not_overridden")
            for name in (
                "_update_states",
                "_model_forward",
                "_bookkeeping_sync",
                "_setup_eagle3_aux_hidden_state_outputs",
            )
        ),
    )

    def _patch(self, runner_cls: type) -> None:
        setup = runner_cls._setup_eagle3_aux_hidden_state_outputs  # type: ignore[attr-defined]

        @functools.wraps(setup)
        def setup_aux(self) -> None:
            setup(self)
            guarded("engaging on the V1 runner", _engage, self)

        update = runner_cls._update_states  # type: ignore[attr-defined]

        @functools.wraps(update)
        def update_states(self, scheduler_output, *args, **kwargs):
            capture = capture_of(self)
            if capture is not None:
                guarded("reading a scheduler output", capture.on_schedule, scheduler_output)
            return update(self, scheduler_output, *args, **kwargs)

        runner_cls._setup_eagle3_aux_hidden_state_outputs = setup_aux  # type: ignore[attr-defined]
        runner_cls._update_states = update_states  # type: ignore[attr-defined]
        wrap_after(runner_cls, "_model_forward", _after_forward)
        wrap_after(runner_cls, "_bookkeeping_sync", _after_sampling)


def _engage(runner: Any) -> None:
    facts = RunnerFacts(
        V1Adapter.name,
        runner.get_model(),
        runner.model_config,
        runner.device,
        int(runner.max_model_len),
        speculative=speculative_method(runner.speculative_config),
        drafter_uses_aux=bool(runner.use_aux_hidden_state_outputs),  # set in __init__ for EAGLE-3 and kin
        speculation_supported=True,  # token-id drafters: drafts' rows are held until accepted (step.py, Verify)
    )
    capture = engage(facts)
    if capture is not None:
        runner.use_aux_hidden_state_outputs = True  # the runner unpacks (hidden, aux) from here on
        runner._probewatch = capture


def _after_forward(runner: Any, output: Any, *args: Any, **kwargs: Any) -> None:
    capture = capture_of(runner)
    if capture is None:
        return
    input_ids = kwargs.get("input_ids", args[0] if args else None)
    positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
    capture.on_step(step_view(runner, input_ids, positions, output))


def step_view(runner: Any, input_ids: Any, positions: Any, output: Any) -> StepView | None:
    """The V1 runner's bookkeeping for the forward that returned `output` (None: no aux outputs)."""
    if not isinstance(output, tuple) or len(output) != 2:
        return None
    batch = runner.input_batch
    num_reqs = int(batch.num_reqs)
    qsl = runner.query_start_loc.np[: num_reqs + 1]
    return StepView(
        req_ids=batch.req_ids[:num_reqs],
        query_start_loc=qsl,
        num_computed=batch.num_computed_tokens_cpu[:num_reqs],
        num_tokens=int(qsl[num_reqs]),
        input_ids=input_ids,
        positions=positions,
        aux=list(output[1]),
    )


def _after_sampling(runner: Any, _result: Any, *args: Any, **kwargs: Any) -> None:
    capture = capture_of(runner)
    if capture is None or not capture.requests:
        return
    batch = runner.input_batch
    outputs = {}
    for rid in batch.req_ids[: int(batch.num_reqs)]:
        state = runner.requests.get(rid) if rid in capture.requests else None
        if state is not None:
            outputs[rid] = state.output_token_ids
    capture.on_sampled(outputs, cumulative=True)
