"""vLLM 0.34's standalone CPU runner (`vllm.v1.worker.cpu.standalone_model_runner.StandaloneCPUModelRunner`).

MRV2's structure without Triton (C++ / PyTorch batch preparation and sampling), picked on CPUs
without a Triton CPU backend. It has no auxiliary-output path of its own (`execute_model` asserts a
plain tensor), so the adapter switches the model's aux layers on and wraps the *model instance's*
`forward`, outside the compiled region (the compiled inner model still produces the rows; no CUDA
graphs on CPU): the wrapper hands the runner the hidden states and keeps the aux list for `on_step`.
Otherwise the same wrappers as the V2 adapter (`load_model`, `execute_model`, `sample_tokens`, whose
`ModelRunnerOutput` carries host-side sampled ids).
"""

from __future__ import annotations

import functools
from typing import Any

from probewatch.server.client.vllm_plugin.adapters.base import RunnerAdapter, wrap_after
from probewatch.server.client.vllm_plugin.adapters.v2 import (
    after_sample_tokens,
    input_batch_contract,
    mrv2_runner_contract,
    patch_execute_model,
    patch_load_model,
)
from probewatch.server.client.vllm_plugin.contract import Requirement
from probewatch.server.client.vllm_plugin.engage import RunnerFacts, engage, speculative_method

_M = "vllm.v1.worker.cpu.standalone_model_runner"
_C = "StandaloneCPUModelRunner"
_AUX = "_probewatch_aux"


class StandaloneCPUAdapter(RunnerAdapter):
    name = "vllm-cpu-standalone"
    module = _M
    cls = _C
    summary = "standalone CPU runner (MRV2 without Triton; vLLM >= 0.34)"
    contract = (
        *mrv2_runner_contract(_M, _C),
        Requirement(_M, "model", _C, "attr", why="its forward is wrapped to split (hidden, aux)"),
        *input_batch_contract("vllm.v1.worker.cpu.input_batch"),
    )

    def _patch(self, runner_cls: type) -> None:
        patch_load_model(runner_cls, _engage)
        patch_execute_model(runner_cls, lambda runner: runner.__dict__.pop(_AUX, None))
        wrap_after(runner_cls, "sample_tokens", after_sample_tokens)


def _engage(runner: Any) -> None:
    model = runner.get_model()
    facts = RunnerFacts(
        StandaloneCPUAdapter.name,
        model,
        runner.model_config,
        runner.device,
        int(runner.max_model_len),
        speculative=speculative_method(runner.vllm_config.speculative_config),
    )
    capture = engage(facts)
    if capture is None:
        return
    split_aux_outputs(runner, model)
    runner._probewatch = capture


def split_aux_outputs(runner: Any, model: Any) -> None:
    """Make `model(...)` return only the hidden states; the aux list of each call goes to the runner."""
    forward = model.forward

    @functools.wraps(forward)
    def forward_without_aux(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], list | tuple):
            runner.__dict__[_AUX] = out[1]
            return out[0]
        return out

    model.forward = forward_without_aux
