"""Pure loader / saver functions for SAEs in the SAELens on-disk format.

An SAE folder holds `cfg.json` (SAELens 6 layout; the flat pre-6.0 layout is read too) and
`sae_weights.safetensors` (`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`,
`b_dec [d_in]`, plus `threshold [d_sae]` for JumpReLU). probewatch adds optional files beside
them that SAELens ignores: `features.json` (feature interpretation) and `training_report.json`.

`load_sae` checks, in order: files present, cfg parses, architecture known, config values
servable, hook point maps onto our layer contract, weights present / shaped / finite, and (when
given) d_in against the model's d_model, the layer, and the model fingerprint. Every failure
raises an `SAEError` subclass naming the folder and the problem.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from probewatch.probes.errors import FingerprintMismatchError
from probewatch.probes.saes.config import METADATA_KEYS, SAEConfig, hook_names_for_layer
from probewatch.probes.saes.errors import (
    SAEConfigError,
    SAEDimensionMismatchError,
    SAEHookError,
    SAENotFoundError,
    SAEWeightsError,
)
from probewatch.probes.saes.registry import get_sae_class
from probewatch.probes.saes.sae import SAE, str_to_dtype

SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"  # SAELens's optional log feature density
FEATURES_FILENAME = "features.json"  # probewatch: feature interpretation
TRAINING_REPORT_FILENAME = "training_report.json"  # probewatch: how it was trained + its figures

#: What we write as metadata.sae_lens_version: the cfg layout version. SAELens treats files
#: without it (or older than 6.0) as the flat pre-6.0 layout and would drop our metadata block.
SAELENS_FORMAT_VERSION = "6.0.0"


# -- cfg.json ---------------------------------------------------------------------------------------
def read_sae_cfg_dict(path: str | Path) -> dict[str, Any]:
    """The raw cfg.json object of the SAE folder `path`."""
    path = Path(path)
    if not path.is_dir():
        raise SAENotFoundError(f"SAE folder not found: {path}")
    cfg_path = path / SAE_CFG_FILENAME
    if not cfg_path.is_file():
        raise SAENotFoundError(f"{cfg_path}: missing ({path} is not an SAE folder in the SAELens format)")
    try:
        data = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SAEConfigError(f"{cfg_path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SAEConfigError(f"{cfg_path}: must hold a JSON object")
    return data


def _version_tuple(version: Any) -> tuple[int, ...]:
    parts = re.findall(r"\d+", str(version))[:3]
    return tuple(int(p) for p in parts) if parts else (0,)


def normalize_cfg_dict(raw: dict[str, Any], source: str = SAE_CFG_FILENAME) -> dict[str, Any]:
    """Return the SAELens 6 layout of a cfg dict, converting the flat pre-6.0 layout.

    Mirrors SAELens's `handle_pre_6_0_config`: `hook_point` -> `hook_name`, topk via
    `activation_fn(_str)` + `activation_fn_kwargs.k`, boolean `normalize_activations`, and the
    metadata keys moved from the top level into `metadata`.
    """
    cfg = dict(raw)
    metadata = cfg.get("metadata")
    version = (metadata or {}).get("sae_lens_version") if isinstance(metadata, dict) else None
    version = version or cfg.get("sae_lens_version")
    if isinstance(metadata, dict) and version and _version_tuple(version) >= (6,):
        cfg["metadata"] = dict(metadata)
        return cfg
    # pre-6.0 flat layout
    renames = {
        "hook_point": "hook_name",
        "hook_point_layer": "hook_layer",
        "hook_point_head_index": "hook_head_index",
        "activation_fn_str": "activation_fn",
    }
    cfg = {renames.get(k, k): v for k, v in cfg.items()}
    meta = dict(metadata) if isinstance(metadata, dict) else {}
    for key in (*METADATA_KEYS, "hook_layer"):
        if key in cfg and key not in meta:
            meta[key] = cfg[key]
    cfg["metadata"] = meta
    activation = cfg.get("activation_fn", "relu")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if "architecture" not in cfg:
        cfg["architecture"] = "topk" if activation == "topk" else "standard"
    if cfg["architecture"] == "topk" and "k" not in cfg and isinstance(kwargs, dict) and "k" in kwargs:
        cfg["k"] = kwargs["k"]
    if cfg["architecture"] == "standard" and activation not in (None, "relu"):
        raise SAEConfigError(f"{source}: activation_fn {activation!r} is not supported for a standard SAE (relu only)")
    norm = cfg.get("normalize_activations")
    if isinstance(norm, bool):
        cfg["normalize_activations"] = "expected_average_only_in" if norm else "none"
    elif norm is None:
        cfg["normalize_activations"] = "none"
    cfg.setdefault("apply_b_dec_to_input", True)
    return cfg


def sae_config_from_dict(raw: dict[str, Any], source: str = SAE_CFG_FILENAME) -> SAEConfig:
    """Build and validate the architecture's config dataclass from a cfg.json object."""
    cfg = normalize_cfg_dict(raw, source)
    if "architecture" not in cfg:
        raise SAEConfigError(f"{source}: missing field 'architecture'")
    _, config_cls = get_sae_class(cfg["architecture"], source)
    names = {f.name for f in fields(config_cls)}
    for required in ("d_in", "d_sae"):
        if required not in cfg:
            raise SAEConfigError(f"{source}: missing field {required!r}")
    kwargs = {k: v for k, v in cfg.items() if k in names}
    kwargs["metadata"] = dict(cfg.get("metadata") or {})
    kwargs.setdefault("dtype", "float32")
    try:
        config = config_cls(**kwargs)
    except TypeError as exc:
        raise SAEConfigError(f"{source}: {exc}") from exc
    config.validate(source)
    config.layer  # noqa: B018 - raises SAEHookError when the hook point is not one we capture
    return config


# -- weights ----------------------------------------------------------------------------------------
def _expected_shapes(cfg: SAEConfig, names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    shapes = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
        "threshold": (cfg.d_sae,),
    }
    return {n: shapes[n] for n in names}


def read_sae_weights(
    path: str | Path, cfg: SAEConfig, sae_class: type[SAE], dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Read and check sae_weights.safetensors against the config (names, shapes, finiteness)."""
    weights_path = Path(path) / SAE_WEIGHTS_FILENAME
    if not weights_path.is_file():
        raise SAENotFoundError(f"{weights_path}: missing")
    try:
        tensors = load_safetensors_bytes(weights_path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise SAEWeightsError(f"{weights_path}: not a readable safetensors file ({exc})") from exc
    # compatible spellings SAELens also accepts
    if "threshold" in sae_class.WEIGHT_NAMES and "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").double().exp()
    if "scaling_factor" in tensors:
        scale = tensors.pop("scaling_factor")
        if not torch.allclose(scale.double(), torch.ones_like(scale, dtype=torch.float64)):
            raise SAEWeightsError(
                f"{weights_path}: holds a non-trivial 'scaling_factor' (SAELens finetuning scaling); fold it into W_dec first"
            )
    expected = _expected_shapes(cfg, sae_class.WEIGHT_NAMES)
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise SAEWeightsError(
            f"{weights_path}: missing weights key(s) {', '.join(map(repr, missing))} "
            f"(architecture {cfg.architecture()!r} needs {', '.join(expected)})"
        )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise SAEWeightsError(
            f"{weights_path}: unexpected tensor(s) {', '.join(map(repr, unexpected))} for architecture "
            f"{cfg.architecture()!r} (expected {', '.join(expected)}); is cfg.json's architecture right?"
        )
    target = dtype or str_to_dtype(cfg.dtype)
    out: dict[str, torch.Tensor] = {}
    for name, shape in expected.items():
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise SAEWeightsError(
                f"{weights_path}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {shape} "
                f"from cfg.json (d_in={cfg.d_in}, d_sae={cfg.d_sae})"
            )
        if not tensor.is_floating_point():
            raise SAEWeightsError(f"{weights_path}: tensor {name!r} has non-float dtype {tensor.dtype}")
        bad = (~torch.isfinite(tensor)).sum().item()
        if bad:
            raise SAEWeightsError(f"{weights_path}: tensor {name!r} contains {bad} NaN/Inf value(s)")
        out[name] = tensor.to(target)
    return out


# -- whole SAE ---------------------------------------------------------------------------------------
def build_sae(
    cfg: SAEConfig, state_dict: dict[str, torch.Tensor] | None = None, device: str | torch.device = "cpu"
) -> SAE:
    """Instantiate the architecture's SAE class for `cfg` (zeros unless a state dict is given)."""
    sae_cls, _ = get_sae_class(cfg.architecture())
    sae = sae_cls(cfg)
    if state_dict is not None:
        with torch.no_grad():
            for name in sae_cls.WEIGHT_NAMES:
                param = getattr(sae, name)
                param.data = state_dict[name].to(param.dtype)
    return sae.to(device)


def load_sae(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    expected_d_model: int | None = None,
    expected_layer: int | None = None,
    expected_fingerprint: str | None = None,
) -> SAE:
    """Load an SAE folder in the SAELens format; see the module docstring for the checks."""
    path = Path(path)
    source = str(path / SAE_CFG_FILENAME)
    cfg = sae_config_from_dict(read_sae_cfg_dict(path), source)
    if isinstance(dtype, str):
        dtype = str_to_dtype(dtype)
    if dtype is not None:
        cfg.dtype = str(dtype).replace("torch.", "")
    cfg.device = str(device)
    if expected_d_model is not None and cfg.d_in != expected_d_model:
        raise SAEDimensionMismatchError(
            f"SAE {path} reads d_in={cfg.d_in} but the model has d_model={expected_d_model}; "
            "it was trained for a different model (or a different hook point)"
        )
    if expected_layer is not None and cfg.layer != expected_layer:
        raise SAEHookError(
            f"SAE {path} reads layer {cfg.layer} ({cfg.hook_name}) but layer {expected_layer} was expected"
        )
    fingerprint = cfg.metadata.get("model_fingerprint")
    if expected_fingerprint is not None and fingerprint and fingerprint != expected_fingerprint:
        raise FingerprintMismatchError(
            f"SAE {path} was trained on model {cfg.model_name!r} with fingerprint {fingerprint}, "
            f"but the attached model's fingerprint is {expected_fingerprint}"
        )
    sae_cls, _ = get_sae_class(cfg.architecture(), source)
    state = read_sae_weights(path, cfg, sae_cls, str_to_dtype(cfg.dtype))
    sae = build_sae(cfg, state, device)
    sae.source_path = path  # where it came from, for messages and metrics
    return sae.eval()


def save_sae(
    sae: SAE,
    path: str | Path,
    weights_dtype: torch.dtype | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write cfg.json + sae_weights.safetensors in the SAELens 6 layout; returns both paths.

    `weights_dtype` stores the tensors in a narrower dtype than `cfg.dtype` (e.g. float16 to
    halve a shipped SAE): both SAELens and `load_sae` cast to `cfg.dtype` on load.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg
    meta = dict(cfg.metadata)
    meta.update(metadata or {})
    meta.setdefault("sae_lens_version", SAELENS_FORMAT_VERSION)
    meta.setdefault("sae_lens_training_version", None)
    if "hook_name" not in meta and "hook_layer" in meta:
        meta.update(hook_names_for_layer(int(meta["hook_layer"])))
    cfg.metadata = meta
    cfg.validate(str(path / SAE_CFG_FILENAME))
    weights_path = path / SAE_WEIGHTS_FILENAME
    tensors = {name: t.detach().to("cpu", weights_dtype or t.dtype).contiguous() for name, t in sae.weights().items()}
    save_file(tensors, str(weights_path), metadata={"format": "pt"})
    cfg_path = path / SAE_CFG_FILENAME
    cfg_dict = cfg.to_dict()
    cfg_dict["device"] = "cpu"
    cfg_path.write_text(json.dumps(cfg_dict, indent=2) + "\n")
    return weights_path, cfg_path


def sae_file_checksums(path: str | Path) -> dict[str, str]:
    """sha256 of cfg.json and sae_weights.safetensors (what an sae_feature bundle pins)."""
    path = Path(path)
    out = {}
    for name in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME):
        file = path / name
        if not file.is_file():
            raise SAENotFoundError(f"{file}: missing")
        out[name] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def load_feature_descriptions(path: str | Path) -> dict[int, str]:
    """{latent id: one-line description} from features.json beside the SAE ({} when absent)."""
    file = Path(path) / FEATURES_FILENAME
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SAEConfigError(f"{file}: not valid JSON ({exc})") from exc
    out: dict[int, str] = {}
    for entry in data.get("features", []) if isinstance(data, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), int):
            out[entry["id"]] = str(entry.get("description", ""))
    return out
