"""Installs the capture into vLLM's V1 model runner (`GPUModelRunner`, which the CPU runner subclasses).

Four runner methods and one scheduler method are wrapped, once per process, at class level:
- `_setup_eagle3_aux_hidden_state_outputs` (the end of `load_model`, before any compilation or
  graph capture): asks the sidecar for its plan, sets the model's auxiliary hidden-state layers to
  the probe layers and lets the runner unpack `(hidden_states, aux)` like it does for EAGLE-3. The
  compiled graph (Inductor on CPU, CUDA graphs on GPU) then produces the residuals itself: no
  Python hook in the forward, no `enforce_eager`.
- `_update_states` (each step, before the runner applies the scheduler output): opens new requests'
  generations, closes finished / aborted ones.
- `_model_forward` (each step, after the forward): maps the aux rows to (request, position) and
  enqueues them (`RunnerCapture.on_forward`).
- `_bookkeeping_sync` (each step, after sampling): closes the requests the sampled token ends.
- `Scheduler._free_request` (engine core): closes a finished / aborted request's generation with
  its full output as soon as it ends.
Every wrapper catches its own failures: a capture problem is logged, never raised into the engine.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from probewatch import envs
from probewatch.server.client.config import AttachConfig
from probewatch.server.client.core import ClientCore
from probewatch.server.metrics import ClientMetrics, serve_metrics
from probewatch.server.vllm.capture import RunnerCapture, request_finished

log = logging.getLogger(__name__)

_metrics: ClientMetrics | None = None  # one registry per process (one /metrics port)


def patch_model_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner, "_probewatch_patched", False):
        return
    setup = GPUModelRunner._setup_eagle3_aux_hidden_state_outputs
    update = GPUModelRunner._update_states
    forward = GPUModelRunner._model_forward

    @functools.wraps(setup)
    def setup_aux(self) -> None:
        setup(self)
        try:
            install(self)
        except Exception:
            log.exception("probewatch: could not attach to the model runner; this engine runs unmonitored")

    @functools.wraps(update)
    def update_states(self, scheduler_output):
        capture = self.__dict__.get("_probewatch")
        if capture is not None:
            try:
                capture.on_schedule(self, scheduler_output)
            except Exception:
                log.exception("probewatch: failed to read a scheduler output (monitoring of this step skipped)")
        return update(self, scheduler_output)

    @functools.wraps(forward)
    def model_forward(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        capture = self.__dict__.get("_probewatch")
        if capture is not None:
            try:
                input_ids = kwargs.get("input_ids", args[0] if args else None)
                positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
                capture.on_forward(self, input_ids, positions, output)
            except Exception:
                log.exception("probewatch: capture failed on a step (its rows are not sent)")
        return output

    _patch_scheduler()
    bookkeeping = GPUModelRunner._bookkeeping_sync

    @functools.wraps(bookkeeping)
    def bookkeeping_sync(self, *args, **kwargs):
        out = bookkeeping(self, *args, **kwargs)
        capture = self.__dict__.get("_probewatch")
        if capture is not None:
            try:
                capture.after_sampling(self)
            except Exception:
                log.exception("probewatch: failed to close the generations finished by this step")
        return out

    GPUModelRunner._bookkeeping_sync = bookkeeping_sync
    GPUModelRunner._setup_eagle3_aux_hidden_state_outputs = setup_aux
    GPUModelRunner._update_states = update_states
    GPUModelRunner._model_forward = model_forward
    GPUModelRunner._probewatch_patched = True


def _patch_scheduler() -> None:
    """Close a generation the moment the scheduler frees its request (full output, exact timing)."""
    from vllm.v1.core.sched.scheduler import Scheduler

    free = Scheduler._free_request

    @functools.wraps(free)
    def free_request(self, request, *args, **kwargs):
        try:
            request_finished(request)
        except Exception:
            log.exception("probewatch: failed to close the generation of request %s", request.request_id)
        return free(self, request, *args, **kwargs)

    Scheduler._free_request = free_request


def install(runner: Any) -> RunnerCapture | None:
    """Attach a `RunnerCapture` to `runner` (or log why this engine is not monitored)."""
    from vllm.distributed import get_pp_group, get_tensor_model_parallel_rank
    from vllm.model_executor.models.interfaces import supports_eagle3

    if runner.speculative_config is not None or runner.use_aux_hidden_state_outputs:
        log.warning("probewatch: speculative decoding is on: this engine is not monitored (docs/live.md, gaps)")
        return None
    if get_pp_group().world_size > 1:
        log.warning("probewatch: pipeline parallelism is not supported: this engine is not monitored")
        return None
    if get_tensor_model_parallel_rank() != 0:
        return None  # the residual stream is replicated after each layer's all-reduce: rank 0 captures
    model = runner.get_model()
    if not supports_eagle3(model):
        log.warning(
            "probewatch: %s has no auxiliary hidden-state outputs (vLLM's SupportsEagle3): not monitored",
            type(model).__name__,
        )
        return None
    model_config = runner.model_config
    n_layers = int(model_config.hf_text_config.num_hidden_layers)
    fingerprint = envs.fingerprint_override() or _fingerprint(model_config.model)
    global _metrics
    if _metrics is None:
        _metrics = ClientMetrics()
        port = envs.client_metrics_port()
        if port is not None:
            serve_metrics(_metrics.registry, port)
            log.info("probewatch: client /metrics on port %d", port)
    # Under continuous batching every step carries rows of every running request, and each (request,
    # layer) becomes its own chunk: lingering merges several steps per chunk, so the engine process
    # serialises and sends (and parses score updates for) a fraction of the messages.
    config = AttachConfig.model_validate(
        {"mode": envs.vllm_mode(), "linger_s": envs.vllm_send_linger_s(), "steps_per_message": 64}
    )  # sidecar: PROBEWATCH_SIDECAR
    client = ClientCore(config, fingerprint, runner.device, _metrics)
    wait_s = envs.vllm_wait_s()
    layers = envs.vllm_layers()
    if client.wait_ready(wait_s):
        plan, _ = client.current_plan()
        if layers is None and plan is not None:
            layers = sorted(plan.layers)
    if layers is None:
        log.error(
            "probewatch: no capture plan from the sidecar %s within %gs and PROBEWATCH_LAYERS is unset: "
            "this engine runs unmonitored until it restarts",
            config.sidecar,
            wait_s,
        )
        client.stop()
        return None
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        client.stop()
        raise ValueError(f"layers {bad} out of range for a model with {n_layers} decoder layers")
    # aux index L + 1 is the residual after decoder layer L (vLLM adds it after each layer)
    model.set_aux_hidden_state_layers(tuple(layer + 1 for layer in layers))
    runner.use_aux_hidden_state_outputs = True
    capture = RunnerCapture(client, list(layers), _decoder(model_config.tokenizer))
    runner._probewatch = capture
    log.info(
        "probewatch: capturing layers %s of %s (%s mode) through the model's auxiliary outputs (graph-safe)",
        layers,
        model_config.model,
        config.mode,
    )
    return capture


def _fingerprint(model: str) -> str:
    from pathlib import Path

    from probewatch.models import fingerprint_folder

    if not Path(model, "config.json").is_file():
        raise ValueError(
            f"cannot fingerprint {model!r}: not a local model folder; set PROBEWATCH_FINGERPRINT "
            "(`probewatch models info` prints it)"
        )
    return fingerprint_folder(model)


def _decoder(tokenizer_path: str):
    """Lazy token decoder for prompt / response texts (loaded on first use, in the sender thread)."""
    state: dict[str, Any] = {}

    def decode(ids: list[int]) -> str:
        tok = state.get("tok")
        if tok is None:
            from transformers import AutoTokenizer

            tok = state["tok"] = AutoTokenizer.from_pretrained(tokenizer_path)
        return str(tok.decode(ids, skip_special_tokens=True))

    return decode
