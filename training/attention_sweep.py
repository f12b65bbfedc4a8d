"""The attention-pooling probe as a sweep candidate: fitted and scored on a layer's response tokens.

The linear sweep scores one direction per configuration and aggregates its token scores many ways;
the attention probe learns its own pooling, so it is one configuration per layer (method and
aggregation `attention`), scored the same three ways (validation, leave-one-kind-out, OOD sets) and
compared by the same rule (`best_row`). It is fitted with torch, so the sweep tries it on the layer
of the best response-reading linear configuration only (stage_sweep.py), not on every layer; it is
chosen only where it beats the linear choice on the selection basis.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from probewatch.probes.manifest import Aggregation
from probewatch.training.attention_probe import AttentionProbe, attention_segments
from probewatch.training.calibration import CONTROL_FPR
from probewatch.training.estimators import make_attention_probe
from probewatch.training.features import LayerData, example_weights, score_all

__all__ = ["ATTENTION", "attention_rows", "fit_attention", "probe_scorer", "score_attention"]

ATTENTION = "attention"


def fit_attention(
    data: LayerData,
    labels: np.ndarray,
    groups: np.ndarray,
    kinds: np.ndarray | None,
    idx: np.ndarray,
    seed: int,
    balance_kinds: bool,
) -> AttentionProbe:
    """Fit on the response tokens of examples `idx` (grouped validation slice for early stopping)."""
    idx = np.asarray(idx, dtype=np.int64)
    sub = data.subset(idx)
    return make_attention_probe(seed).fit(
        sub.rows,
        labels[idx],
        offsets=sub.offsets,
        groups=groups[idx],
        sample_weight=example_weights(idx, kinds, balance_kinds),
    )


def score_attention(probe: AttentionProbe, data: LayerData) -> np.ndarray:
    """Per-example scores of every example of `data` (NaN for one without response tokens)."""
    a, v = probe.token_columns(data.rows)
    return attention_segments(a, v, data.offsets)


def probe_scorer(probe, token_selection: str, aggregation: Aggregation) -> Callable[[LayerData], np.ndarray]:
    """data -> per-example scores, for a linear probe (its token scores aggregated) or an attention probe."""
    if isinstance(probe, AttentionProbe):
        return lambda data: score_attention(probe, data)
    w, b = probe.raw_linear_form()
    return lambda data: score_all(w, b, data, token_selection, [aggregation])[aggregation.method]


def attention_rows(
    data: LayerData,
    ood: dict[str, tuple[LayerData, np.ndarray]],
    pool,
    seed: int,
    balance_kinds: bool,
    control: LayerData | None = None,
    fpr: float = CONTROL_FPR,
):
    """One SweepRow: the attention probe on this layer's response tokens, scored like `sweep_layer`'s rows."""
    from probewatch.metrics import recall_at_threshold, threshold_at_fpr
    from probewatch.training.sweep import SweepRow, _safe_auroc

    def fit(idx: np.ndarray) -> AttentionProbe:
        return fit_attention(data, pool.labels, pool.groups, pool.kinds, idx, seed, balance_kinds)

    probe = fit(pool.fit_idx)
    scores = score_attention(probe, data)
    per_kind = {}
    for kind, tr, te in pool.loko():
        value = _safe_auroc(score_attention(fit(tr), data)[te], pool.labels[te])
        if value is not None:
            per_kind[kind] = value
    ood_auroc = {
        name: v
        for name, (od, labels) in ood.items()
        if (v := _safe_auroc(score_attention(probe, od), labels)) is not None
    }
    val_pos = pool.val_idx[pool.labels[pool.val_idx] == 1]
    recall = None
    if control is not None and len(val_pos):
        recall = recall_at_threshold(scores[val_pos], threshold_at_fpr(score_attention(probe, control), fpr))
    return SweepRow(
        token_selection="response",
        layer=data.layer,
        method=ATTENTION,
        per_token=False,
        aggregation=ATTENTION,
        val_auroc=_safe_auroc(scores[pool.val_idx], pool.labels[pool.val_idx]),
        heldout_kind_auroc=float(np.mean(list(per_kind.values()))) if per_kind else None,
        heldout_per_kind=per_kind,
        ood_auroc=ood_auroc,
        val_recall_control=recall,
    )
