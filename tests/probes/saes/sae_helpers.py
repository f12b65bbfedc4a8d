"""Write SAE folders by hand in SAELens's documented layout (no probewatch saver involved).

SAELens 6 `cfg.json`: d_in, d_sae, dtype, device, apply_b_dec_to_input, normalize_activations,
reshape_activations, architecture (+ k, rescale_acts_by_decoder_norm for topk) and a `metadata`
object with sae_lens_version, model_name, hook_name, context_size, dataset_path, ...; pre-6.0
files are flat (hook_name, hook_layer, model_name at the top level, topk via activation_fn_str +
activation_fn_kwargs). `sae_weights.safetensors`: W_enc [d_in, d_sae], b_enc [d_sae],
W_dec [d_sae, d_in], b_dec [d_in], threshold [d_sae] (jumprelu).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def random_weights(arch: str, d_in: int, d_sae: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    if arch == "jumprelu":
        w["threshold"] = torch.rand(d_sae, generator=g) * 0.3
    return w


def write_saelens_folder(
    path: Path,
    arch: str = "topk",
    d_in: int = 8,
    d_sae: int = 32,
    k: int = 4,
    layout: str = "v6",
    hook_name: str = "blocks.2.hook_resid_post",
    seed: int = 0,
    normalize: str = "none",
    apply_b_dec_to_input: bool = True,
    weights: dict[str, torch.Tensor] | None = None,
    cfg_updates: dict | None = None,
) -> dict[str, torch.Tensor]:
    path.mkdir(parents=True, exist_ok=True)
    weights = weights if weights is not None else random_weights(arch, d_in, d_sae, seed)
    meta = {
        "model_name": "tiny-llama",
        "hook_name": hook_name,
        "hook_head_index": None,
        "prepend_bos": True,
        "dataset_path": "synthetic",
        "context_size": 128,
    }
    if layout == "v6":
        cfg = {
            "d_in": d_in,
            "d_sae": d_sae,
            "dtype": "float32",
            "device": "cpu",
            "apply_b_dec_to_input": apply_b_dec_to_input,
            "normalize_activations": normalize,
            "reshape_activations": "none",
            "architecture": arch,
            "metadata": {"sae_lens_version": "6.5.1", "sae_lens_training_version": "6.5.1", **meta},
        }
        if arch == "topk":
            cfg.update(k=k, rescale_acts_by_decoder_norm=False)
    else:  # flat pre-6.0 layout (SAELens 3-5)
        cfg = {
            "d_in": d_in,
            "d_sae": d_sae,
            "dtype": "float32",
            "device": "cpu",
            "hook_layer": 2,
            "apply_b_dec_to_input": apply_b_dec_to_input,
            "normalize_activations": normalize,
            "sae_lens_training_version": "5.3.0",
            "finetuning_scaling_factor": False,
            **meta,
        }
        if arch == "topk":
            cfg.update(activation_fn_str="topk", activation_fn_kwargs={"k": k})
        else:
            cfg.update(architecture=arch, activation_fn_str="relu")
    cfg.update(cfg_updates or {})
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({n: t.contiguous() for n, t in weights.items()}, str(path / "sae_weights.safetensors"))
    return weights


def direct_latents(
    arch: str, w: dict[str, torch.Tensor], x: torch.Tensor, k: int = 4, apply_b_dec_to_input: bool = True
) -> torch.Tensor:
    """The textbook encode, written out in float64 (independent of probewatch's SAE classes)."""
    x = x.double()
    if apply_b_dec_to_input:
        x = x - w["b_dec"].double()
    pre = x @ w["W_enc"].double() + w["b_enc"].double()
    if arch == "standard":
        return pre.clamp(min=0)
    if arch == "jumprelu":
        return torch.where(pre > w["threshold"].double(), pre, torch.zeros_like(pre)).clamp(min=0)
    if arch == "topk":
        out = torch.zeros_like(pre)
        vals, idx = pre.topk(k, dim=-1)
        return out.scatter(-1, idx, vals.clamp(min=0))
    raise ValueError(arch)


def make_feature_bundle(
    bundle_dir: Path,
    sae_dir: Path,
    probe_id: str,
    feature_ids: list[int],
    weight: list[float],
    bias: float = 0.5,
    layer: int = 2,
    d: int = 8,
    standardize: bool = False,
    embed: bool = False,
    threshold: float = 0.0,
    aggregation: str = "max",
) -> tuple[Path, dict[str, torch.Tensor]]:
    """An sae_feature bundle over the SAE at `sae_dir` (what training/sae's exporter writes)."""
    from probewatch.probes import Aggregation, Manifest, ModelRef, Threshold, save_bundle
    from probewatch.probes.saes.feature_probe import sae_reference, save_feature_bundle
    from tests.probes.helpers import FINGERPRINT

    path = bundle_dir / probe_id
    tensors = {
        "feature_ids": torch.tensor(feature_ids, dtype=torch.long),
        "weight": torch.tensor(weight, dtype=torch.float32),
        "bias": torch.tensor([bias]),
    }
    if not standardize:  # the public helper (what training/sae and the sidecar tests use)
        manifest = Manifest(
            id=probe_id,
            behaviour="deception",
            kind="linear",
            model=ModelRef(id="tiny", fingerprint=FINGERPRINT, d_model=d, n_layers=4),
            layer=layer,
            threshold=Threshold(value=threshold),
            aggregation=Aggregation(method=aggregation),
            extra={"probe_type": "named_features"},
        )
        return save_feature_bundle(path, manifest, sae_dir, feature_ids, weight, bias, embed_sae=embed), tensors
    if standardize:
        g = torch.Generator().manual_seed(len(feature_ids))
        tensors["mean"] = torch.rand(len(feature_ids), generator=g)
        tensors["scale"] = torch.rand(len(feature_ids), generator=g) + 0.5
    manifest = Manifest(
        id=probe_id,
        behaviour="deception",
        kind="sae_feature",
        model=ModelRef(id="tiny", fingerprint=FINGERPRINT, d_model=d, n_layers=4),
        layer=layer,
        threshold=Threshold(value=threshold),
        aggregation=Aggregation(method=aggregation),
        normalization="standardize" if standardize else "none",
        extra={"sae": sae_reference(sae_dir, path, embed=embed), "probe_type": "named_features"},
    )
    return save_bundle(path, manifest, tensors), tensors
