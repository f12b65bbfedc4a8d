"""Synthetic probe bundles: random directions in the real bundle format, for tests and benchmarks.

The one factory for bundles nobody trained. What a probe costs to score, or whether the sidecar,
the runtime and the clients handle a bundle, does not depend on its weights, so a seeded random
direction stands in for a fitted one. Every bundle goes through `save_bundle`, so it satisfies the
bundle contract (manifest validation, shapes, checksum) like a trained one.

- `synthetic_manifest`: a valid Manifest with test-friendly defaults (any field overridable);
- `synthetic_tensors`: weight (+ bias, + mean/scale when standardized, + query for kind attention)
  from a seeded generator;
- `write_synthetic_bundle`: one bundle -> (path, tensors);
- `write_synthetic_bundles`: probes on several layers -> paths (what the benchmarks serve).

Imports torch only (like the rest of `probewatch.probes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from probewatch.behaviours import BEHAVIOURS
from probewatch.probes.bundle import save_bundle
from probewatch.probes.manifest import Aggregation, Manifest, ModelRef, Threshold

SYNTHETIC_FINGERPRINT = "pwfp1:" + "5e" * 16

# how the random weight is scaled: raw N(0, 1) entries, divided by sqrt(d) (scores ~N(0, 1) on
# N(0, 1) rows: what a probe's cost is measured with), or a unit direction (a row of k * w scores k)
WeightScale = Literal["none", "sqrt_d", "unit"]


def synthetic_manifest(
    probe_id: str,
    *,
    d_model: int,
    layer: int,
    model_id: str = "synthetic",
    fingerprint: str = SYNTHETIC_FINGERPRINT,
    n_layers: int | None = None,
    behaviour: str = "deception",
    kind: str = "linear",
    threshold: float | Threshold = 0.0,
    aggregation: str | Aggregation = "mean",
    **fields: Any,
) -> Manifest:
    """A manifest for a probe nobody trained; a float threshold is a `fixed` one. `fields`: any
    other Manifest field (token_selection, normalization, version, description, ...)."""
    return Manifest(
        id=probe_id,
        behaviour=behaviour,
        kind=kind,
        model=ModelRef(id=model_id, fingerprint=fingerprint, d_model=d_model, n_layers=n_layers),
        layer=layer,
        threshold=threshold
        if isinstance(threshold, Threshold)
        else Threshold(value=float(threshold), method="fixed", fpr=None),
        aggregation=aggregation if isinstance(aggregation, Aggregation) else Aggregation(method=aggregation),
        **fields,
    )


def synthetic_tensors(
    d_model: int,
    generator: torch.Generator,
    *,
    weight_scale: WeightScale = "sqrt_d",
    bias: float = 0.0,
    standardize: bool = False,
    attention: bool = False,
) -> dict[str, torch.Tensor]:
    """weight ~ N(0, 1) scaled by `weight_scale`, bias; with `standardize`, mean ~ N(0, 1) and
    scale ~ U(0.5, 1.5) drawn after the weight from the same generator; with `attention` (kind
    attention) a query direction scaled like the weight and query_bias 0, drawn last."""
    weight = torch.randn(d_model, generator=generator)
    if weight_scale == "sqrt_d":
        weight = weight / d_model**0.5
    elif weight_scale == "unit":
        weight = weight / weight.norm()
    elif weight_scale != "none":
        raise ValueError(f"weight_scale {weight_scale!r}: one of none, sqrt_d, unit")
    tensors = {"weight": weight, "bias": torch.tensor([float(bias)])}
    if standardize:
        tensors["mean"] = torch.randn(d_model, generator=generator)
        tensors["scale"] = torch.rand(d_model, generator=generator) + 0.5
    if attention:
        query = torch.randn(d_model, generator=generator)
        tensors["query"] = query * (weight.norm() / query.norm()) if weight_scale != "none" else query
        tensors["query_bias"] = torch.tensor([0.0])
    return tensors


def write_synthetic_bundle(
    out: str | Path,
    manifest: Manifest,
    *,
    generator: torch.Generator | None = None,
    seed: int = 0,
    weight_scale: WeightScale = "sqrt_d",
    bias: float = 0.0,
    tensors: dict[str, torch.Tensor] | None = None,
) -> tuple[Path, dict[str, torch.Tensor]]:
    """Write `out/<manifest.id>`; the tensors are drawn (`generator`, else one seeded with `seed`;
    mean/scale too when the manifest standardizes) unless given. Returns (bundle dir, tensors)."""
    if tensors is None:
        tensors = synthetic_tensors(
            manifest.model.d_model,
            generator if generator is not None else torch.Generator().manual_seed(seed),
            weight_scale=weight_scale,
            bias=bias,
            standardize=manifest.normalization == "standardize",
            attention=manifest.kind == "attention",
        )
    return save_bundle(Path(out) / manifest.id, manifest, tensors), tensors


def write_synthetic_bundles(
    out: str | Path,
    *,
    d_model: int,
    layers: Sequence[int],
    per_layer: int = 2,
    prefix: str = "synthetic",
    seed: int = 0,
    weight_scale: WeightScale = "sqrt_d",
    behaviours: Sequence[str] = BEHAVIOURS[:3],
    aggregations: Sequence[str] = ("mean", "max"),
    **manifest_fields: Any,
) -> list[Path]:
    """`per_layer` probes on every layer, `<prefix>-l<layer>-<j>`: probe j aggregates with
    `aggregations[j]` (cycling) and its behaviour cycles over `behaviours`; one generator seeded
    with `seed` draws them all in order. `manifest_fields` go to `synthetic_manifest`."""
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for layer in layers:
        for j in range(per_layer):
            manifest = synthetic_manifest(
                f"{prefix}-l{layer}-{j}",
                d_model=d_model,
                layer=layer,
                behaviour=behaviours[(layer + j) % len(behaviours)],
                aggregation=aggregations[j % len(aggregations)],
                **manifest_fields,
            )
            paths.append(write_synthetic_bundle(out, manifest, generator=generator, weight_scale=weight_scale)[0])
    return paths
