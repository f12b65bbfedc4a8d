"""Fitted probe -> probe bundle (manifest + weights) in the runtime's format.

The exported score is `coef_ . ((x - mean_) / scale_) + intercept_` after Platt folding, i.e. a
calibrated logit (docs/architecture.md "Score units"). Guards that refuse to update a bundle
with a model other than the one it was made for live here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from probewatch.jsonio import to_jsonable
from probewatch.probes import Aggregation, Manifest, ModelRef, Threshold, load_bundle, read_manifest, save_bundle
from probewatch.probes.bundle import MANIFEST_FILE
from probewatch.probes.errors import FingerprintMismatchError
from probewatch.training.estimators import KIND_BY_METHOD, LinearProbe

METHOD_BY_KIND = {v: k for k, v in KIND_BY_METHOD.items()}


def probe_tensors(probe: LinearProbe) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, normalization) for a fitted linear probe."""
    tensors = {
        "weight": torch.tensor(probe.coef_, dtype=torch.float32),
        "bias": torch.tensor([probe.intercept_], dtype=torch.float32),
    }
    if probe.standardize:
        tensors["mean"] = torch.tensor(probe.mean_, dtype=torch.float32)
        tensors["scale"] = torch.tensor(probe.scale_, dtype=torch.float32)
        return tensors, "standardize"
    return tensors, "none"


def export_bundle(
    out: Path,
    probe: LinearProbe,
    *,
    probe_id: str,
    behaviour: str,
    method: str,
    model_id: str,
    fingerprint: str,
    d_model: int,
    n_layers: int,
    layer: int,
    token_selection: str,
    aggregation: Aggregation,
    threshold: Threshold,
    metrics: dict[str, Any],
    training: dict[str, Any],
    description: str,
    version: str = "1",
    extra: dict[str, Any] | None = None,
) -> Path:
    tensors, normalization = probe_tensors(probe)
    manifest = Manifest(
        id=probe_id,
        behaviour=behaviour,
        kind=KIND_BY_METHOD[method],
        model=ModelRef(model_id, fingerprint, d_model, n_layers),
        layer=layer,
        threshold=threshold,
        aggregation=aggregation,
        token_selection=token_selection,
        normalization=normalization,
        version=version,
        description=description,
        metrics=to_jsonable(metrics),
        training=to_jsonable(training),
        extra=to_jsonable(extra or {}),
    )
    save_bundle(out, manifest, tensors)
    bundle = load_bundle(out, expected_fingerprint=fingerprint, expected_d_model=d_model)  # verify what we wrote
    w_expected, b_expected = probe.raw_linear_form()
    w, b = bundle.linear_form()
    if not np.allclose(w.numpy(), w_expected, rtol=1e-4, atol=1e-6) or abs(b - b_expected) > 1e-3 * (
        1 + abs(b_expected)
    ):
        raise RuntimeError(f"{out}: exported bundle does not reproduce the fitted probe")
    return out


def check_target(out: Path, fingerprint: str, overwrite_other_model: bool = False) -> Manifest | None:
    """The bundle already at `out` (if any); refuse to replace one made for another model."""
    if not (Path(out) / MANIFEST_FILE).is_file():
        return None
    existing = read_manifest(out)
    if existing.model.fingerprint != fingerprint and not overwrite_other_model:
        raise FingerprintMismatchError(
            f"{out} holds bundle {existing.id!r} trained on model {existing.model.id!r} ({existing.model.fingerprint}); "
            f"the model being trained has fingerprint {fingerprint}. Refusing to update a bundle with another model: "
            "choose a new --out (or --force to replace it)"
        )
    return existing
