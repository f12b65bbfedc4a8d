"""A vLLM engine in its own process (the plugin loads once per process): fail-open and kill-switch checks.

    python -m tests.vllm_backend.engine_script failopen|disabled|refused|speculative OUT.json

Prints nothing useful; writes one JSON object with what the test asserts on.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

REPEAT = "Repeat this list exactly, twice: apple, banana, cherry, grape, lemon, mango, orange, peach, plum."


def speculative(out_path: str) -> None:
    """n-gram speculative decoding with the plugin: the draft rows of every verify step are held until
    the rejection sampler decides, and only accepted ones are scored (against a sidecar in-process)."""
    from vllm import LLM, SamplingParams

    import probewatch.server.client.vllm_plugin as pv
    from probewatch.models import load_model
    from probewatch.server.client.vllm_plugin.capture import captures
    from probewatch.server.sidecar.config import sidecar_config_for
    from probewatch.server.sidecar.process import Sidecar
    from tests.vllm_backend.conftest import ENGINE_ARGS

    loaded = load_model("smollm2-135m-instruct")
    config = sidecar_config_for(None, None, host="127.0.0.1", port=0, metrics_port=None, incident_db=None)
    with Sidecar(config) as sidecar:
        os.environ["PROBEWATCH_SIDECAR"] = sidecar.address
        llm = LLM(
            loaded.path,
            enforce_eager=True,
            speculative_config={"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3},
            **ENGINE_ARGS,
        )
        tok = llm.get_tokenizer()
        questions = [REPEAT, "Count from one to twenty, separated by commas."]
        prompts = [
            tok.apply_chat_template([{"role": "user", "content": q}], tokenize=True, add_generation_prompt=True)
            for q in questions
        ]
        prompts = [list(p if isinstance(p, list) else p["input_ids"]) for p in prompts]
        outputs = llm.generate(
            [{"prompt_token_ids": p} for p in prompts], SamplingParams(max_tokens=40, temperature=0), use_tqdm=False
        )
        (capture,) = captures()
        handles = pv.results()  # keyed by vLLM's internal request id (the request id + a suffix)
        results = [
            next(h for rid, h in handles.items() if rid == o.request_id or rid.startswith(f"{o.request_id}-")).result(
                30
            )
            for o in outputs
        ]
        registry = capture.metrics.registry
        result = {
            "prompts": prompts,
            "tokens": [list(o.outputs[0].token_ids) for o in outputs],
            "finish": [o.outputs[0].finish_reason for o in outputs],
            "status": [r.status for r in results],
            "errors": [r.errors for r in results],
            "scores": [{p: sorted(s.items()) for p, s in r.token_scores.items()} for r in results],
            "accepted": registry.get_sample_value("probewatch_client_speculative_rows_total", {"outcome": "accepted"}),
            "rejected": registry.get_sample_value("probewatch_client_speculative_rows_total", {"outcome": "rejected"}),
            "capture_errors": sum(
                registry.get_sample_value("probewatch_client_capture_errors_total", {"reason": r}) or 0
                for r in ("position", "rows", "batch")
            ),
        }
        capture.stop()
    with open(out_path, "w") as fh:
        json.dump(result, fh)


def main(mode: str, out_path: str) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if mode == "speculative":
        speculative(out_path)
        return
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
    spec = os.environ.get("TEST_SPECULATIVE_CONFIG")  # refused mode: a drafter that owns the aux outputs
    extra = {"speculative_config": json.loads(spec)} if spec else {}
    llm = LLM(loaded.path, enforce_eager=True, **ENGINE_ARGS, **extra)
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
        from probewatch.server.client.vllm_plugin.engage import client_metrics

        registry = client_metrics().registry
        result["engaged"] = {
            s.labels["reason"]: s.value
            for metric in registry.collect()
            if metric.name == "probewatch_client_capture_engaged"
            for s in metric.samples
        }
        result["up"] = registry.get_sample_value("probewatch_client_monitoring_up")
    if mode == "failopen":
        import probewatch.server.client.vllm_plugin as pv
        from probewatch.server.client.vllm_plugin.capture import captures
        from probewatch.server.sidecar.config import sidecar_config_for
        from probewatch.server.sidecar.process import Sidecar

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
