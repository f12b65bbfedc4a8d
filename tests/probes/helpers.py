"""Small bundle builders for probe tests (no training code: the serving side must stand alone).

Thin defaults over the one synthetic-bundle factory, `probewatch.probes.synthetic`."""

from __future__ import annotations

from pathlib import Path

import torch

from probewatch.probes import Manifest, Threshold
from probewatch.probes.synthetic import synthetic_manifest, write_synthetic_bundle

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
    return synthetic_manifest(
        probe_id,
        d_model=d,
        layer=layer,
        model_id="tiny",
        fingerprint=fingerprint,
        n_layers=4,
        behaviour=behaviour,
        kind=kind,
        threshold=Threshold(value=threshold),
        aggregation=aggregation,
        normalization=normalization,
    )


def make_bundle(
    path: Path, probe_id: str = "p", layer: int = 1, d: int = 8, seed: int = 0, standardize: bool = False, **kwargs
) -> tuple[Path, dict[str, torch.Tensor]]:
    """Raw N(0, 1) weight, bias 0.25 (+ mean/scale with `standardize`), seeded."""
    manifest = make_manifest(probe_id, layer, d, normalization="standardize" if standardize else "none", **kwargs)
    return write_synthetic_bundle(path, manifest, seed=seed, weight_scale="none", bias=0.25)
