"""A vLLM engine in its own process (the plugin loads once per process): fail-open and kill-switch checks.

    python -m tests.vllm_backend.engine_script failopen|disabled|refused OUT.json

Prints nothing useful; writes one JSON object with what the test asserts on.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def main(mode: str, out_path: str) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from probewatch.models import load_model
    from tests.vllm_backend.conftest import ENGINE_ARGS

    originals = {
        name: getattr(GPUModelRunner, name)
        for name in ("_setup_eagle3_aux_hidden_state_outputs", "_update_states", "_model_forward", "_bookkeeping_sync")
    }
    free = Scheduler._free_request
    loaded = load_model("smollm2-135m-instruct")
    llm = LLM(loaded.path, enforce_eager=True, **ENGINE_ARGS)
    runner = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    params = SamplingParams(max_tokens=6, min_tokens=6, ignore_eos=True, temperature=0)
    prompts = ["The capital of France is", "Two plus two equals"]
    result: dict = {"mode": mode}
    t0 = time.monotonic()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    result["generate_s"] = time.monotonic() - t0
    result["texts"] = [o.outputs[0].text for o in outputs]
    result["n_tokens"] = [len(o.outputs[0].token_ids) for o in outputs]
    result["patched"] = bool(getattr(GPUModelRunner, "_probewatch_patched", False)) or any(
        getattr(GPUModelRunner, n) is not f for n, f in originals.items()
    )
    result["scheduler_patched"] = Scheduler._free_request is not free
    result["runner_capture"] = "_probewatch" in runner.__dict__
    result["aux_layers"] = list(getattr(runner.get_model().model, "aux_hidden_state_layers", ()))
    result["use_aux"] = bool(runner.use_aux_hidden_state_outputs)
    result["threads"] = sorted(t.name for t in threading.enumerate() if t.name.startswith("probewatch"))
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner as V2Runner

    result["v2_patched"] = bool(V2Runner.__dict__.get("_probewatch_patched", False))
    result["env_v2_runner"] = os.environ.get("VLLM_USE_V2_MODEL_RUNNER")  # the plugin must not set it
    if mode == "refused":
        from probewatch.server.vllm.engage import client_metrics

        registry = client_metrics().registry
        result["engaged"] = {
            s.labels["reason"]: s.value
            for metric in registry.collect()
            if metric.name == "probewatch_client_capture_engaged"
            for s in metric.samples
        }
        result["up"] = registry.get_sample_value("probewatch_client_monitoring_up")
    if mode == "failopen":
        import probewatch.server.vllm as pv
        from probewatch.server.sidecar import Sidecar, sidecar_config_for
        from probewatch.server.vllm.capture import captures

        capture = captures()[0]
        registry = capture.metrics.registry
        result["up_before"] = registry.get_sample_value("probewatch_client_monitoring_up")
        result["unmonitored_down"] = registry.get_sample_value(
            "probewatch_client_unmonitored_generations_total", {"reason": "sidecar_down"}
        )
        result["statuses_down"] = sorted(h.result(0).status for h in pv.results().values())
        port = int(os.environ["PROBEWATCH_SIDECAR"].rsplit(":", 1)[1])
        config = sidecar_config_for(None, None, host="127.0.0.1", port=port, metrics_port=None, incident_db=None)
        with Sidecar(config):
            result["reconnected"] = capture.client.wait_ready(30)
            before = set(pv.results())
            outputs2 = llm.generate(prompts, params, use_tqdm=False)
            result["texts_after"] = [o.outputs[0].text for o in outputs2]
            fresh = [h for rid, h in pv.results().items() if rid not in before]
            result["statuses_after"] = sorted(h.result(20).status for h in fresh)
            result["scored_after"] = [h.result(0).tokens_scored for h in fresh]
    with open(out_path, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    os._exit(0)  # vLLM's background threads must not hold the process
