"""The V2 model runner (`vllm.v1.worker.gpu.model_runner.GPUModelRunner`, "MRV2"; the V2 CPU runner
`vllm.v1.worker.cpu.model_runner.CPUModelRunner` subclasses it).

Shipped from vLLM 0.32 (the only GPU runner from 0.34). It has first-class auxiliary outputs: with
`use_aux_hidden_state_outputs` set before `capture_model`, its CUDA-graph manager keeps persistent
aux buffers and `execute_model` leaves `(hidden, aux)` in `execute_model_state`. Wrapped at class
level:
- `load_model` (after it; compilation and graph capture come later): `engage()`, then
  `use_aux_hidden_state_outputs = True`;
- `execute_model(scheduler_output, ...)`: `on_schedule` before (not for dummy runs); after it, the
  step's rows from `execute_model_state.input_batch` (`req_ids`, `query_start_loc_np`,
  `num_computed_tokens_np`, `num_tokens`, `input_ids`, `positions`) and its `aux_hidden_states`:
  `on_step`;
- `sample_tokens`: the sampled ids reach `on_sampled` when vLLM reads them (`AsyncOutput.get_output`,
  which already waits for their device->host copy: no extra sync).
A preempted request is removed by the runner and comes back in `scheduled_new_reqs` with its
prompt and output so far; the core continues its generation (positions already sent are skipped).
"""

from __future__ import annotations

import functools
from typing import Any

from probewatch.server.client.vllm_plugin.adapters.base import RunnerAdapter, capture_of, guarded, wrap_after
from probewatch.server.client.vllm_plugin.capture import captures
from probewatch.server.client.vllm_plugin.contract import Requirement
from probewatch.server.client.vllm_plugin.engage import RunnerFacts, engage, speculative_method
from probewatch.server.client.vllm_plugin.step import StepView

_M = "vllm.v1.worker.gpu.model_runner"
_C = "GPUModelRunner"
_B = "vllm.v1.worker.gpu.input_batch"
_A = "vllm.v1.worker.gpu.async_utils"


def input_batch_contract(module: str) -> tuple[Requirement, ...]:
    """The InputBatch fields a StepView is read from (GPU and standalone CPU batches alike)."""
    return tuple(
        Requirement(module, name, "InputBatch", "attr", why="StepView")
        for name in ("req_ids", "num_reqs", "query_start_loc_np", "num_computed_tokens_np", "num_tokens")
        + ("input_ids", "positions")
    )


def mrv2_runner_contract(module: str, cls: str) -> tuple[Requirement, ...]:
    """The runner methods and attributes both MRV2 runners (GPU, standalone CPU) are wrapped through."""
    return (
        Requirement(module, "load_model", cls, prefix=("load_dummy_weights",), why="engage after loading"),
        Requirement(
            module,
            "execute_model",
            cls,
            prefix=("scheduler_output", "intermediate_tensors", "dummy_run"),
            why="on_schedule / on_step",
        ),
        Requirement(module, "sample_tokens", cls, prefix=("grammar_output",), why="on_sampled"),
        Requirement(module, "execute_model_state", cls, "attr", why="the step's input batch"),
        Requirement(module, "input_batch", "ExecuteModelState", "attr"),
        Requirement(module, "get_model", cls),
        Requirement(module, "model_config", cls, "attr"),
        Requirement(module, "vllm_config", cls, "attr"),
        Requirement(module, "device", cls, "attr"),
        Requirement(module, "max_model_len", cls, "attr"),
        Requirement("vllm.v1.outputs", "req_ids", "ModelRunnerOutput", "attr"),
        Requirement("vllm.v1.outputs", "sampled_token_ids", "ModelRunnerOutput", "attr"),
    )


class V2Adapter(RunnerAdapter):
    name = "vllm-v2"
    module = _M
    cls = _C
    summary = "V2 GPUModelRunner (MRV2; vLLM >= 0.32, the only GPU runner from 0.34; also its CPU subclass)"
    contract = (
        *mrv2_runner_contract(_M, _C),
        Requirement(_M, "use_aux_hidden_state_outputs", _C, "attr", why="aux outputs through CUDA graphs"),
        Requirement(_M, "speculative_config", _C, "attr"),
        Requirement(_M, "pcp_manager", _C, "attr", why="prefill context parallel: refused"),
        Requirement(_M, "aux_hidden_states", "ExecuteModelState", "attr"),
        *input_batch_contract(_B),
        Requirement(_A, "get_output", "AsyncOutput", why="sampled ids (on_sampled)"),
        *(
            Requirement("vllm.v1.worker.cpu.model_runner", name, "CPUModelRunner", "not_overridden")
            for name in ("load_model", "execute_model", "sample_tokens")
        ),
    )

    def _patch(self, runner_cls: type) -> None:
        patch_load_model(runner_cls, _engage)
        patch_execute_model(runner_cls, _aux_of)
        wrap_after(runner_cls, "sample_tokens", after_sample_tokens)
        _patch_async_output()


def patch_load_model(runner_cls: type, engage_fn) -> None:
    load = runner_cls.load_model  # type: ignore[attr-defined]

    @functools.wraps(load)
    def load_model(self, *args, **kwargs):
        out = load(self, *args, **kwargs)
        guarded(f"engaging on {runner_cls.__name__}", engage_fn, self)
        return out

    runner_cls.load_model = load_model  # type: ignore[attr-defined]


def patch_execute_model(runner_cls: type, aux_of) -> None:
    """`on_schedule` before, `on_step` after the forward (never for dummy / profiling runs)."""
    execute = runner_cls.execute_model  # type: ignore[attr-defined]

    @functools.wraps(execute)
    def execute_model(self, scheduler_output, *args, **kwargs):
        capture = capture_of(self)
        dummy = bool(kwargs.get("dummy_run", args[1] if len(args) > 1 else False))
        if capture is None or dummy:
            return execute(self, scheduler_output, *args, **kwargs)
        guarded("reading a scheduler output", capture.on_schedule, scheduler_output)
        out = execute(self, scheduler_output, *args, **kwargs)
        state = getattr(self, "execute_model_state", None)
        if state is not None:  # None: nothing was run this step (no tokens scheduled)
            guarded("capturing a step", capture.on_step, step_view(state.input_batch, aux_of(self)))
        return out

    runner_cls.execute_model = execute_model  # type: ignore[attr-defined]


def step_view(batch: Any, aux: Any) -> StepView | None:
    """An MRV2 `InputBatch` (GPU or standalone CPU) and the step's aux outputs as a StepView."""
    if aux is None:
        return None
    n = int(batch.num_reqs)
    return StepView(
        req_ids=list(batch.req_ids[:n]),
        query_start_loc=batch.query_start_loc_np[: n + 1],
        num_computed=batch.num_computed_tokens_np[:n],
        num_tokens=int(batch.num_tokens),
        input_ids=batch.input_ids,
        positions=batch.positions,
        aux=list(aux),
    )


def sampled_outputs(output: Any) -> dict[str, list[int]]:
    """req id -> token ids sampled this step, from a host-side `ModelRunnerOutput`."""
    req_ids = getattr(output, "req_ids", None)
    sampled = getattr(output, "sampled_token_ids", None)
    if not req_ids or sampled is None:
        return {}
    return {rid: list(tokens) for rid, tokens in zip(req_ids, sampled)}


def after_sample_tokens(runner: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    """A runner that returns host-side sampled ids at once (standalone CPU, V2 without async output)."""
    capture = capture_of(runner)
    if capture is not None and result is not None and isinstance(getattr(result, "sampled_token_ids", None), list):
        capture.on_sampled(sampled_outputs(result))


def _patch_async_output() -> None:
    """The GPU runner's `sample_tokens` returns an `AsyncOutput`; vLLM reads it with `get_output()`."""
    import importlib

    cls = importlib.import_module(_A).AsyncOutput
    if cls.__dict__.get("_probewatch_patched"):
        return

    def after(_self: Any, output: Any, *args: Any, **kwargs: Any) -> None:
        outputs = sampled_outputs(output)
        if outputs:
            for capture in captures():
                capture.on_sampled(outputs)

    wrap_after(cls, "get_output", after)
    cls._probewatch_patched = True


def _aux_of(runner: Any) -> Any:
    state = runner.execute_model_state
    return state.aux_hidden_states if runner.use_aux_hidden_state_outputs else None


def _engage(runner: Any) -> None:
    facts = RunnerFacts(
        V2Adapter.name,
        runner.get_model(),
        runner.model_config,
        runner.device,
        int(runner.max_model_len),
        speculative=speculative_method(runner.speculative_config),
        drafter_uses_aux=bool(runner.use_aux_hidden_state_outputs),
        context_parallel=getattr(runner, "pcp_manager", None) is not None,
    )
    capture = engage(facts)
    if capture is not None:
        runner.use_aux_hidden_state_outputs = True  # before capture_model: CUDA graphs keep aux buffers
        runner._probewatch = capture
