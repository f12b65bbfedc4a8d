"""Model fingerprint: a stable hash of the architecture config and a slice of the weights.

Probes silently break when the weights under them change (a fine-tune, a different
quantisation, a swapped checkpoint). Every bundle records the fingerprint of the model it was
trained on; the runtime and the sidecar refuse a bundle whose fingerprint differs.

Design choices:
- Config: only architecture keys (sizes, layer counts, vocab, rope, norms), never run-time keys
  such as dtype, `_name_or_path` or `transformers_version`.
- Weights: the first `SLICE` values of the input embedding and of every weight matrix in the
  first, middle and last decoder layer (a fine-tune that freezes embeddings still shows),
  rounded through bfloat16 so that fp32 and bf16 loads of the same checkpoint agree.
- The same function serves a loaded model and a safetensors folder (the sidecar need not
  load the whole model to check bundles).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

FINGERPRINT_VERSION = "pwfp1"
SLICE = 2048
_CONFIG_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "n_embd",
    "d_model",
    "num_hidden_layers",
    "n_layer",
    "num_attention_heads",
    "n_head",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "n_inner",
    "vocab_size",
    "max_position_embeddings",
    "n_positions",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "rms_norm_eps",
    "layer_norm_epsilon",
    "layer_norm_eps",
    "tie_word_embeddings",
    "hidden_act",
    "activation_function",
    "sliding_window",
    "attention_bias",
    "mlp_bias",
)
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")


def config_digest_source(config: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture keys of an HF config dict that enter the fingerprint."""
    if "text_config" in config and isinstance(config["text_config"], Mapping):
        merged = dict(config["text_config"])
        merged.setdefault("model_type", config.get("model_type"))
        config = merged
    return {k: config[k] for k in _CONFIG_KEYS if k in config and config[k] is not None}


def select_tensor_names(names: Iterable[str], n_layers: int) -> list[str]:
    """Deterministic choice of tensors to hash: embedding + first/middle/last layer matrices."""
    names = sorted(n for n in names if not n.startswith("lm_head"))
    wanted_layers = {0, n_layers // 2, max(n_layers - 1, 0)}
    chosen = [n for n in names if ("embed_tokens" in n or n.endswith("wte.weight")) and n.endswith("weight")][:1]
    for name in names:
        match = _LAYER_INDEX.search(name)
        if match and int(match.group(1)) in wanted_layers and name.endswith("weight"):
            chosen.append(name)
    return chosen


def _digest(config: Mapping[str, Any], names: list[str], get_slice: Callable[[str], torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(config_digest_source(config), sort_keys=True, default=str).encode())
    for name in names:
        values = get_slice(name).detach().reshape(-1)[:SLICE].to("cpu", torch.float32).to(torch.bfloat16)
        h.update(name.encode())
        h.update(values.view(torch.int16).numpy().tobytes())
    return f"{FINGERPRINT_VERSION}:{h.hexdigest()[:32]}"


def _n_layers(config: Mapping[str, Any]) -> int:
    source = config_digest_source(config)
    return int(source.get("num_hidden_layers") or source.get("n_layer") or 0)


def fingerprint_model(model: torch.nn.Module) -> str:
    """Fingerprint of a loaded HF model (any dtype/device)."""
    config = model.config.to_dict()  # type: ignore[union-attr,operator]  # an HF PreTrainedModel
    if not config.get("architectures"):
        # a model built with from_config has none until save_pretrained writes its class name:
        # use that name now, so the in-memory model and its saved folder share one fingerprint
        config["architectures"] = [type(model).__name__]
    state = model.state_dict()
    names = select_tensor_names(state.keys(), _n_layers(config))
    return _digest(config, names, lambda n: state[n])


def fingerprint_folder(folder: str | Path) -> str:
    """Fingerprint of an HF safetensors folder, read lazily (no full model load)."""
    from safetensors import safe_open

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    where: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                where[key] = file
    names = select_tensor_names(where.keys(), _n_layers(config))

    def get_slice(name: str) -> torch.Tensor:
        with safe_open(str(where[name]), framework="pt") as fh:
            tensor_slice = fh.get_slice(name)
            shape = tensor_slice.get_shape()
            rows = max(1, -(-SLICE // max(1, int(torch.tensor(shape[1:]).prod().item()) if len(shape) > 1 else SLICE)))
            return tensor_slice[:rows] if len(shape) > 1 else tensor_slice[:SLICE]

    return _digest(config, names, get_slice)
