"""Multi-layer probes, measured the way single-layer ones are chosen (leave-one-kind-out).

Two constructions from the field, per-example logistic on the chosen token selection:
- `concat`: one probe on the concatenation of the best layers' features (Apollo / GDM report
  small gains from several layers);
- `ensemble`: one probe per layer, each standardised to unit spread on its training examples,
  scores averaged.

A shipped bundle reads one layer (`probewatch.probes` scores one layer per probe, and the live
sidecar receives each layer's rows in its own chunk), so these are a measurement: the report
shows whether several layers would transfer better than the chosen one, by how much, and the
pipeline does not ship them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from probewatch.training.estimators import make_probe
from probewatch.training.features import example_weights
from probewatch.training.sweep import PoolArrays, _safe_auroc


def _fit_score(X: np.ndarray, pool: PoolArrays, train: np.ndarray, C: float | None, seed: int, balance: bool):
    probe = make_probe("logistic", seed=seed, C=C)
    probe.fit(X[train], pool.labels[train], groups=pool.groups[train], sample_weight=_weights(pool, train, balance))
    return probe.decision_function(X)


def _weights(pool: PoolArrays, idx: np.ndarray, balance: bool) -> np.ndarray:
    return example_weights(idx, pool.kinds, balance)


def _evaluate(score_fn, pool: PoolArrays) -> dict[str, Any]:
    """Validation AUROC (fit split -> validation split) and held-out-kind AUROC per kind."""
    val = score_fn(pool.fit_idx)
    per_kind: dict[str, float] = {}
    for kind, tr, te in pool.loko():
        value = _safe_auroc(score_fn(tr)[te], pool.labels[te])
        if value is not None:
            per_kind[kind] = value
    return {
        "val_auroc": _safe_auroc(val[pool.val_idx], pool.labels[pool.val_idx]),
        "heldout_kind_auroc": float(np.mean(list(per_kind.values()))) if per_kind else None,
        "heldout_per_kind": per_kind,
    }


def multi_layer_comparison(
    features: Mapping[int, np.ndarray],
    pool: PoolArrays,
    layers: Sequence[int],
    C: float | None,
    seed: int = 0,
    balance_kinds: bool = True,
) -> dict[str, Any]:
    """Concatenated and ensembled probes over `layers` ({layer: [n_examples, d] example features})."""
    layers = list(layers)
    out: dict[str, Any] = {"layers": layers, "C": C}
    X = np.concatenate([features[layer] for layer in layers], axis=1)
    out["concat"] = _evaluate(lambda tr: _fit_score(X, pool, tr, C, seed, balance_kinds), pool)

    def ensemble(tr: np.ndarray) -> np.ndarray:
        parts = []
        for layer in layers:
            s = _fit_score(features[layer], pool, tr, C, seed, balance_kinds)
            parts.append(s / (np.std(s[tr]) or 1.0))
        return np.mean(parts, axis=0)

    out["ensemble"] = _evaluate(ensemble, pool)
    return out
