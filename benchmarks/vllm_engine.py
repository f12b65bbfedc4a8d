"""The engine worker of `probewatch bench vllm`: one vLLM engine in its own process (a vLLM plugin
loads once per process), driven by the parent over a line protocol: JSON commands on stdin
(`run`, `parity`, `exit`), `BENCH <json>` replies on stdout (the first one once the engine is up).

Run as `python -m probewatch.benchmarks.vllm_engine <config> <spec json>` by
`probewatch.benchmarks.vllm` (a helper module: no CLI contract of its own). Needs vLLM (.venv-vllm).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _worker(config: str, spec: dict[str, Any]) -> None:
    import torch
    import vllm
    from vllm import LLM, SamplingParams

    layers = spec["layers"]
    gpu = torch.cuda.is_available()
    memory = {"gpu_memory_utilization": 0.85} if gpu else {"kv_cache_memory_bytes": 1 << 30}
    t0 = time.monotonic()
    llm = LLM(
        spec["model"],
        tokenizer=spec["tokenizer"],
        load_format=spec["load_format"],
        dtype=spec["dtype"] or ("bfloat16" if gpu else "float32"),
        max_model_len=spec["max_model_len"],
        max_num_seqs=16,
        enforce_eager=spec["eager"],
        seed=0,
        **memory,
    )
    startup = time.monotonic() - t0
    capture = None
    if config == "probewatch":
        from probewatch.server.client.vllm_plugin.capture import captures

        found = captures()
        if not found:
            raise SystemExit(
                "the probewatch plugin did not engage on this engine (see the log's 'monitoring OFF' line)"
            )
        capture = found[0]
    tok = llm.get_tokenizer()
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    model_config = llm.llm_engine.vllm_config.model_config
    _say(
        {
            "startup_s": startup,
            "enforce_eager": bool(model_config.enforce_eager),
            "runner": capture.runner_name if capture is not None else None,
            "vllm_version": getattr(vllm, "__version__", None),
            "device": torch.cuda.get_device_name(0) if gpu else "cpu",
            "dtype": str(model_config.dtype),
        }
    )
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "exit":
            _say({})
            return
        if cmd["cmd"] == "parity":
            _say(_parity(llm, capture, layers, tok))
            continue
        extra = {"output_residual_stream": layers} if config == "vllm_lens" else None
        params = SamplingParams(
            max_tokens=cmd["new_tokens"], min_tokens=cmd["new_tokens"], temperature=0, ignore_eos=True, extra_args=extra
        )
        if capture is not None:
            capture.set_mode(cmd["mode"])
            import probewatch.server.client.vllm_plugin as pv

            before = set(pv.results())
        t0 = time.perf_counter()
        with torch.inference_mode():
            outputs = llm.generate([prompt] * cmd["batch"], params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
        reply: dict[str, Any] = {"elapsed_s": elapsed, "tokens": sum(len(o.outputs[0].token_ids) for o in outputs)}
        if config == "vllm_lens":  # the peer really captured (its activations came back), else the run is void
            acts = [getattr(o, "activations", None) for o in outputs]
            reply["lens_captured"] = all(isinstance(a, dict) and a.get("residual_stream") is not None for a in acts)
        if capture is not None:
            fresh = [h.result(60) for rid, h in pv.results().items() if rid not in before]  # not timed
            reply["complete"] = len(fresh) == cmd["batch"] and all(r.status == "closed" for r in fresh)
            reply["dropped"] = sum(r.dropped_chunks for r in fresh)
        _say(reply)


def _parity(llm: Any, capture: Any, layers: list[int], tok: Any) -> dict[str, Any]:
    """Cosine between the plugin's captured rows and HF's capture of the same layers (fp32), same tokens."""
    import torch
    from transformers import AutoModelForCausalLM
    from vllm import SamplingParams

    from probewatch.capture import run_forward

    kept: list[Any] = []
    enqueue = capture.client.enqueue

    def keep(block: Any) -> bool:  # keep the rows, send nothing
        kept.append(block)
        return True

    capture.client.enqueue = keep
    capture.set_mode("rows")
    try:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": PROMPT}], tokenize=True, add_generation_prompt=True
        )
        if not isinstance(prompt, list):
            prompt = list(prompt["input_ids"])
        (out,) = llm.generate(
            [{"prompt_token_ids": prompt}], SamplingParams(max_tokens=16, temperature=0), use_tqdm=False
        )
    finally:
        capture.client.enqueue = enqueue
    ids = prompt + list(out.outputs[0].token_ids)
    model = AutoModelForCausalLM.from_pretrained(
        llm.llm_engine.vllm_config.model_config.model, dtype=torch.float32, use_kernels=False
    )
    # the reference is the HF capture the probes were trained on (decoder layer L's output, before any
    # final norm): `hidden_states[L + 1]` equals it except for the last layer, which HF returns normed
    with torch.inference_mode():
        hidden = run_forward(model, sorted({b.layer for b in kept}), torch.tensor([ids]))
    cos = []
    for block in kept:
        for _h, row, pos, _tok in block.rows():
            ref = hidden[block.layer][0, pos]
            cos.append(float(torch.nn.functional.cosine_similarity(block.host[row].float(), ref, dim=0)))
    return {"cos_min": min(cos) if cos else None, "rows": len(cos)}


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write("BENCH " + json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _worker(sys.argv[1], json.loads(sys.argv[2]))
    os._exit(0)
