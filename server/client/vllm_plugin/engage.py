"""Attach a `RunnerCapture` to a freshly loaded model runner, or say exactly why not.

Every runner adapter calls `engage()` once, after its runner loaded the model and before any
compilation or CUDA-graph capture, with the `RunnerFacts` it read from its runner. The decision and
its reason are the same ones `probewatch vllm check` prints (`probewatch.server.client.vllm_plugin.preflight`),
logged as one start-up line (`probewatch: monitoring ON ...` / `OFF: ...`) and exported as
`probewatch_client_capture_engaged{runner, reason}` (1 engaged, 0 with the reason) beside
`probewatch_client_monitoring_up`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from probewatch import envs
from probewatch.metrics_http import serve_metrics
from probewatch.server.client.config import AttachConfig
from probewatch.server.client.core import ClientCore
from probewatch.server.client.metrics import ClientMetrics
from probewatch.server.client.token_texts import texts_from
from probewatch.server.client.vllm_plugin.capture import RunnerCapture

log = logging.getLogger(__name__)

_metrics: ClientMetrics | None = None  # one registry per process (one /metrics port)
# speculative methods whose drafter reads only token ids: the capture can switch the target's aux outputs
# on without changing what the drafter sees (EAGLE, MTP and draft models read the target's hidden states,
# which V1 replaces by the concatenated aux outputs once they are on)
TOKEN_DRAFTERS = frozenset({"ngram", "ngram_gpu", "suffix"})


@dataclass
class RunnerFacts:
    """What engagement needs from a runner, read by its adapter."""

    runner: str  # adapter name: vllm-v1 | vllm-v2 | vllm-cpu-standalone
    model: Any  # the loaded nn.Module (SupportsEagle3 or not)
    model_config: Any  # vLLM ModelConfig
    device: Any
    max_model_len: int
    speculative: str | None = None  # the speculative_config's method, if any
    drafter_uses_aux: bool = False  # its drafter reads the target's auxiliary outputs (EAGLE-3 and kin)
    # the runner's bookkeeping stays exact under speculation (V1: yes; V2 keeps only an upper bound of
    # num_computed_tokens on the host, so draft rows cannot be placed without a device sync)
    speculation_supported: bool = False
    context_parallel: bool = False  # prefill context parallelism splits a request's rows across ranks


def speculative_method(speculative_config: Any) -> str | None:
    """The method of an engine's `speculative_config` (None: no speculation)."""
    if speculative_config is None:
        return None
    return str(getattr(speculative_config, "method", "speculative"))


class NotEngaged(Exception):
    """The capture cannot run on this engine; `reason` is a short code, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def client_metrics() -> ClientMetrics:
    """The process's client metrics, served on PROBEWATCH_CLIENT_METRICS_PORT once (if set)."""
    global _metrics
    if _metrics is None:
        _metrics = ClientMetrics()
        port = envs.client_metrics_port()
        if port is not None:
            serve_metrics(_metrics.registry, port)
            log.info("probewatch: client /metrics on port %d", port)
    return _metrics


def engine_refusal(facts: RunnerFacts) -> NotEngaged | None:
    """The engine-level reasons not to capture (checked before any connection is made)."""
    from vllm.distributed import get_pp_group
    from vllm.model_executor.models.interfaces import supports_eagle3

    if facts.speculative and (facts.drafter_uses_aux or facts.speculative not in TOKEN_DRAFTERS):
        return NotEngaged(
            "speculative_decoding",
            f"speculative decoding ({facts.speculative}): its drafter reads the model's hidden or auxiliary "
            "outputs, which the capture would change (docs/live.md, 'Speculative decoding')",
        )
    if facts.speculative and not facts.speculation_supported:
        return NotEngaged(
            "speculative_decoding",
            f"speculative decoding ({facts.speculative}) on {facts.runner}: this runner keeps no exact host-side "
            "positions for draft rows (docs/live.md, 'Speculative decoding')",
        )
    if get_pp_group().world_size > 1:
        return NotEngaged("pipeline_parallel", "pipeline parallelism: the auxiliary outputs would span stages")
    if facts.context_parallel:
        return NotEngaged("context_parallel", "prefill context parallelism splits a request's rows across ranks")
    if not supports_eagle3(facts.model):
        return NotEngaged(
            "model_without_aux_outputs",
            f"{type(facts.model).__name__} has no auxiliary hidden-state outputs (vLLM's SupportsEagle3)",
        )
    return None


def layers_problem(layers: list[int], n_layers: int) -> str | None:
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        return f"layers {bad} out of range for a model with {n_layers} decoder layers"
    return None


def engage(facts: RunnerFacts) -> RunnerCapture | None:
    """Connect, agree on the layers, switch the model's auxiliary outputs on; None (logged) if not."""
    from vllm.distributed import get_tensor_model_parallel_rank

    if get_tensor_model_parallel_rank() != 0:
        return None  # the residual stream is replicated after each layer's all-reduce: rank 0 captures
    metrics = client_metrics()
    try:
        capture = _engage(facts, metrics)
    except NotEngaged as exc:
        metrics.engaged.labels(runner=facts.runner, reason=exc.reason).set(0)
        metrics.monitoring_up.set(0)
        log.warning(
            "probewatch: monitoring OFF on %s (%s): %s; this engine runs unmonitored", facts.runner, exc.reason, exc
        )
        return None
    metrics.engaged.labels(runner=facts.runner, reason="").set(1)
    return capture


def _engage(facts: RunnerFacts, metrics: ClientMetrics) -> RunnerCapture:
    refusal = engine_refusal(facts)
    if refusal is not None:
        raise refusal
    model_config = facts.model_config
    n_layers = int(model_config.hf_text_config.num_hidden_layers)
    try:
        fingerprint = envs.fingerprint_override() or _fingerprint(model_config.model)
    except ValueError as exc:
        raise NotEngaged("fingerprint", str(exc)) from None
    # Under continuous batching every step carries rows of every running request, and each (request,
    # layer) becomes its own chunk: lingering merges several steps per chunk, so the engine process
    # serialises and sends (and parses score updates for) a fraction of the messages.
    config = AttachConfig.model_validate(
        {"mode": envs.vllm_mode(), "linger_s": envs.vllm_send_linger_s(), "steps_per_message": 64}
    )  # sidecar: PROBEWATCH_SIDECAR
    if config.on_unmonitored == "reject":
        log.warning(
            "probewatch: PROBEWATCH_ON_UNMONITORED=reject is not enforced by the vLLM plugin: a scheduled request "
            "cannot be refused from the worker, so unmonitored ones are served and counted "
            "(probewatch_client_unmonitored_generations_total; docs/live.md)"
        )
    client = ClientCore(config, fingerprint, facts.device, metrics)
    wait_s = envs.vllm_wait_s()
    layers = envs.vllm_layers()
    if client.wait_ready(wait_s):
        plan, _ = client.current_plan()
        if layers is None and plan is not None:
            layers = sorted(plan.layers)
    if layers is None:
        client.stop()
        raise NotEngaged(
            "no_plan",
            f"no capture plan from the sidecar {config.sidecar} within {wait_s:g}s and PROBEWATCH_LAYERS is unset "
            "(the captured layers are fixed when the graph is compiled: restart the engine once the sidecar is up)",
        )
    problem = layers_problem(layers, n_layers)
    if problem:
        client.stop()
        raise NotEngaged("layers_out_of_range", problem)
    # aux index L + 1 is the residual after decoder layer L (vLLM adds it after each layer)
    facts.model.set_aux_hidden_state_layers(tuple(layer + 1 for layer in layers))
    capture = RunnerCapture(
        client, list(layers), _decoder(model_config.tokenizer), int(facts.max_model_len), facts.runner
    )
    log.info(
        "probewatch: monitoring ON on %s: capturing layers %s of %s (%s mode) through the model's auxiliary "
        "outputs (graph-safe)",
        facts.runner,
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


class _Decoder:
    """Lazy token decoder for prompt / response texts and per-token texts (loaded on first use, in the
    sender thread)."""

    def __init__(self, tokenizer_path: str) -> None:
        self.path = tokenizer_path
        self._tok: Any = None

    def tokenizer(self) -> Any:
        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.path)
        return self._tok

    def __call__(self, ids: list[int]) -> str:
        return str(self.tokenizer().decode(ids, skip_special_tokens=True))

    def token_texts(self, prompt_ids: list[int], output_ids: list[int]) -> Callable[[], tuple[int, list[str]]]:
        """The lazy per-token texts of Close (server/client/token_texts.py), decoded by the sender thread."""

        def texts() -> tuple[int, list[str]]:
            try:
                tok = self.tokenizer()
            except Exception:  # noqa: BLE001 - token texts are optional
                return 0, []
            return texts_from(tok, prompt_ids, output_ids)()

        return texts


def _decoder(tokenizer_path: str) -> _Decoder:
    return _Decoder(tokenizer_path)


__all__ = [
    "TOKEN_DRAFTERS",
    "NotEngaged",
    "RunnerFacts",
    "client_metrics",
    "engage",
    "engine_refusal",
    "layers_problem",
    "speculative_method",
]
