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
from probewatch.probes.vocab import vocabulary_for
from probewatch.training.attention_probe import AttentionProbe
from probewatch.training.estimators import KIND_BY_METHOD, LinearProbe

METHOD_BY_KIND = {v: k for k, v in KIND_BY_METHOD.items()}


def probe_tensors(probe: LinearProbe | AttentionProbe) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, normalization) for a fitted linear or attention probe."""
    if isinstance(probe, AttentionProbe):  # query and value directions in standardised space + mean/scale
        return {
            "query": torch.tensor(probe.q_, dtype=torch.float32),
            "query_bias": torch.tensor([probe.bq_], dtype=torch.float32),
            "weight": torch.tensor(probe.w_, dtype=torch.float32),
            "bias": torch.tensor([probe.bw_], dtype=torch.float32),
            "mean": torch.tensor(probe.mean_, dtype=torch.float32),
            "scale": torch.tensor(probe.scale_, dtype=torch.float32),
        }, "standardize"
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
    probe: LinearProbe | AttentionProbe,
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
    layers: list[int] | None = None,
    tokenizer: Any = None,
) -> Path:
    """`layers`: a multi-layer probe fitted on those layers' rows side by side (coef_ [len(layers) * d]); the
    bundle's manifest names them and the runtime sums w_l . h_l over them (training/multilayer.py).
    `tokenizer`: the model's; a probe with token selection `answer` carries its vocabulary (probes/vocab.py)."""
    tensors, normalization = probe_tensors(probe)
    tensors.update(vocabulary_for(token_selection, tokenizer, probe_id))
    manifest = Manifest(
        id=probe_id,
        behaviour=behaviour,
        kind=KIND_BY_METHOD[method],
        model=ModelRef(model_id, fingerprint, d_model, n_layers),
        layer=layers[0] if layers else layer,
        layers=list(layers) if layers and len(layers) > 1 else None,
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
    W, bias = bundle.stack_form()  # one column (linear) or two (attention: query, value)
    forms = probe.raw_forms() if isinstance(probe, AttentionProbe) else [probe.raw_linear_form()]
    for j, (w_expected, b_expected) in enumerate(forms):
        b = float(bias[j])
        if not np.allclose(W[:, j].numpy(), w_expected, rtol=1e-4, atol=1e-6) or abs(b - b_expected) > 1e-3 * (
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
