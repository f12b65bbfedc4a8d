"""Attention-pooling bundles for the tiny model (live parity tests of the sidecar and the clients)."""

from __future__ import annotations

from pathlib import Path

import torch

from probewatch.probes import Threshold
from probewatch.probes.synthetic import synthetic_manifest, synthetic_tensors, write_synthetic_bundle
from tests.server.conftest import D_TINY


def write_attention_bundles(root: Path, fingerprint: str) -> list[Path]:
    """att (layer 1, response, standardized; shares layer 1 with the tiny `dec` probe) and att-sharp
    (layer 2, every token, a query 40x longer: logits in the hundreds, one token takes the weight)."""
    paths = []
    for probe_id, layer, selection, sharpen, standardize in (
        ("att", 1, "response", 1.0, True),
        ("att-sharp", 2, "all", 40.0, False),
    ):
        manifest = synthetic_manifest(
            probe_id,
            d_model=D_TINY,
            layer=layer,
            model_id="tiny",
            fingerprint=fingerprint,
            kind="attention",
            aggregation="attention",
            token_selection=selection,
            normalization="standardize" if standardize else "none",
            threshold=Threshold(value=0.1, method="fixed", fpr=None),
        )
        tensors = synthetic_tensors(
            D_TINY, torch.Generator().manual_seed(layer), bias=0.1, standardize=standardize, attention=True
        )
        tensors["query"] = tensors["query"] * sharpen * 4.0
        tensors["query_bias"] = torch.tensor([-0.5])
        paths.append(write_synthetic_bundle(root, manifest, tensors=tensors)[0])
    return paths


def _first_layer_part(bundle):
    """(manifest, tensors) of a linear bundle reduced to its first layer: a multi-layer source (e.g. the
    shipped concat probe) keeps its first layer's part of every [L * d] tensor."""
    manifest = bundle.manifest
    d = manifest.model.d_model
    tensors = {k: (v[:d] if v.numel() > 1 else v).clone() for k, v in bundle.tensors.items()}
    manifest.layers = None
    return manifest, tensors


def single_layer_linear(src: Path, out: Path, probe_id: str) -> Path:
    """A single-layer linear bundle from `src` (its first layer's part when it reads several)."""
    from probewatch.probes import load_bundle, save_bundle

    manifest, tensors = _first_layer_part(load_bundle(src))
    manifest.id, manifest.weights_sha256, manifest.extra = probe_id, "", {}
    return save_bundle(out / probe_id, manifest, tensors)


def attention_from_linear(src: Path, out: Path, probe_id: str, seed: int = 0, query_scale: float = 2.0) -> Path:
    """An attention bundle whose value direction is the linear bundle `src`'s (its mean/scale too) and
    whose query is a seeded random direction (logits with a spread of a few units on standardized rows)."""
    from probewatch.probes import load_bundle, save_bundle

    manifest, tensors = _first_layer_part(load_bundle(src))
    d = manifest.model.d_model
    query = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    tensors["query"] = query / query.norm() * query_scale
    tensors["query_bias"] = torch.tensor([0.0])
    manifest.id = probe_id
    manifest.kind = "attention"
    manifest.aggregation.method = "attention"
    manifest.weights_sha256 = ""
    manifest.extra = {}
    return save_bundle(out / probe_id, manifest, tensors)
