"""Small bundle builders for probe tests (no training code: the serving side must stand alone)."""

from __future__ import annotations

from pathlib import Path

import torch

from probewatch.probes import Aggregation, Manifest, ModelRef, Threshold, save_bundle

FINGERPRINT = "pwfp1:" + "ab" * 16


def make_manifest(
    probe_id: str = "p",
    layer: int = 1,
    d: int = 8,
    kind: str = "linear",
    normalization: str = "none",
    aggregation: str = "mean",
    threshold: float = 0.0,
    behaviour: str = "deception",
    fingerprint: str = FINGERPRINT,
) -> Manifest:
    return Manifest(
        id=probe_id,
        behaviour=behaviour,
        kind=kind,
        model=ModelRef(id="tiny", fingerprint=fingerprint, d_model=d, n_layers=4),
        layer=layer,
        threshold=Threshold(value=threshold),
        aggregation=Aggregation(method=aggregation),
        normalization=normalization,
    )


def make_bundle(
    path: Path, probe_id: str = "p", layer: int = 1, d: int = 8, seed: int = 0, standardize: bool = False, **kwargs
) -> tuple[Path, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    tensors = {"weight": torch.randn(d, generator=g), "bias": torch.tensor([0.25])}
    if standardize:
        tensors["mean"] = torch.randn(d, generator=g)
        tensors["scale"] = torch.rand(d, generator=g) + 0.5
    manifest = make_manifest(probe_id, layer, d, normalization="standardize" if standardize else "none", **kwargs)
    return save_bundle(path / probe_id, manifest, tensors), tensors
