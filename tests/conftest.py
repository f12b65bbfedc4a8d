"""Shared fixtures: the reference model (fetched on first use) and tiny random-init models.

Unit tests use tiny models built from configs (milliseconds); integration tests mark themselves
`@pytest.mark.integration` and use `reference` (SmolLM2-135M-Instruct, fp32, loaded once).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from tests.components import missing

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("PROBEWATCH_DATA") or REPO_ROOT.parent / "shared" / "datasets")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _private_incident_store(tmp_path_factory):
    """Sidecars started without --incident-db (in this process or as subprocesses) write to a store of
    this session, never to the default one under PROBEWATCH_HOME that a user's own sidecar keeps."""
    path = tmp_path_factory.mktemp("default-incidents") / "incidents.sqlite3"
    previous = os.environ.get("PROBEWATCH_INCIDENT_DB")
    os.environ["PROBEWATCH_INCIDENT_DB"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("PROBEWATCH_INCIDENT_DB", None)
    else:
        os.environ["PROBEWATCH_INCIDENT_DB"] = previous


# tests/vllm_backend needs vLLM, which lives in its own venv (.venv-vllm, `make test-vllm`)
# tests/vllm_contract runs in it too, with a release's source first on PYTHONPATH (`make test-vllm-contract`)
collect_ignore_glob = [] if importlib.util.find_spec("vllm") else ["vllm_backend/*", "vllm_contract/*"]


def tiny_config(layout: str = "llama"):
    """A small random-init config of one of the supported module layouts."""
    from transformers import AutoConfig

    common = {
        "vocab_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "hidden_size": 64,
        "intermediate_size": 128,
        "max_position_embeddings": 256,
    }
    if layout == "llama":
        return AutoConfig.for_model("llama", num_key_value_heads=2, **common)
    if layout == "qwen2":
        return AutoConfig.for_model("qwen2", num_key_value_heads=2, **common)
    if layout == "gemma3":
        return AutoConfig.for_model("gemma3_text", num_key_value_heads=2, head_dim=16, sliding_window=32, **common)
    if layout == "gpt2":
        return AutoConfig.for_model("gpt2", vocab_size=256, n_layer=4, n_head=4, n_embd=64, n_positions=256)
    raise ValueError(layout)


def make_tiny_model(layout: str = "llama", seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(layout), dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_llama():
    return make_tiny_model("llama")


@pytest.fixture(scope="session")
def reference():
    """The reference model, provisioned into the cache when absent (LoadedModel)."""
    from probewatch.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        missing(f"public datasets not found at {SHARED_DATA} (set PROBEWATCH_DATA)")
    return SHARED_DATA
