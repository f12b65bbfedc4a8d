"""Multi-layer linear bundles for the tiny model (live parity tests of the sidecar and the clients)."""

from __future__ import annotations

from pathlib import Path

import torch

from probewatch.probes import Threshold
from probewatch.probes.synthetic import synthetic_manifest, synthetic_tensors, write_synthetic_bundle
from tests.server.conftest import D_TINY


def write_multilayer_bundles(root: Path, fingerprint: str) -> list[Path]:
    """ml (layers 1 and 3, response, standardized, mean; layer 3 is read by no other tiny probe) and
    ml-all (layers 0 and 2, every token, max with a low threshold: early alerts come from joined tokens)."""
    paths = []
    for probe_id, layers, selection, aggregation, standardize, threshold in (
        ("ml", [1, 3], "response", "mean", True, 50.0),
        ("ml-all", [0, 2], "all", "max", False, -5.0),
    ):
        manifest = synthetic_manifest(
            probe_id,
            d_model=D_TINY,
            layer=layers[0],
            layers=layers,
            model_id="tiny",
            fingerprint=fingerprint,
            n_layers=4,
            aggregation=aggregation,
            token_selection=selection,
            normalization="standardize" if standardize else "none",
            threshold=Threshold(value=threshold, method="fixed", fpr=None),
        )
        tensors = synthetic_tensors(
            D_TINY * len(layers), torch.Generator().manual_seed(10 + layers[-1]), bias=0.2, standardize=standardize
        )
        paths.append(write_synthetic_bundle(root, manifest, tensors=tensors)[0])
    return paths


def multilayer_from_linear(sources: list[Path], out: Path, probe_id: str, scales: list[float]) -> Path:
    """A multi-layer bundle summing linear bundles on distinct layers: w = concat(scale_i * w_eff_i) in layer
    order, b = sum(scale_i * b_eff_i); selection, aggregation and threshold of the first source."""
    from probewatch.probes import load_bundle, save_bundle

    loaded = sorted(((load_bundle(p), s) for p, s in zip(sources, scales)), key=lambda bs: bs[0].layer)
    forms = [(b.linear_form(), s) for b, s in loaded]
    manifest = load_bundle(sources[0]).manifest
    manifest.id = probe_id
    manifest.layers = [b.layer for b, _ in loaded]
    manifest.layer = manifest.layers[0]
    manifest.normalization = "none"
    manifest.weights_sha256 = ""
    manifest.extra = {}
    tensors = {
        "weight": torch.cat([w * s for (w, _), s in forms]),
        "bias": torch.tensor([sum(b * s for (_, b), s in forms)], dtype=torch.float32),
    }
    return save_bundle(out / probe_id, manifest, tensors)
