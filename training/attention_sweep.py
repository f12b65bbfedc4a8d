"""The attention-pooling probe as a sweep candidate: fitted and scored on the token rows a selection reads.

The linear sweep scores one direction per configuration and aggregates its token scores many ways;
the attention probe learns its own pooling, so it is one configuration per layer and token selection
(method and aggregation `attention`), scored the same three ways (validation, leave-one-kind-out, OOD
sets) and compared by the same rule (`best_row`). It is fitted with torch, so the sweep tries it only on
the layer of the best linear configuration of each row-reading selection (`response`, and `answer` where
the pool has multiple-choice replies: stage_sweep.py), not on every layer; it is chosen only where it
beats the linear choice on the selection basis.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from probewatch.probes.manifest import ROW_SELECTIONS, Aggregation
from probewatch.training.attention_probe import AttentionProbe, attention_segments
from probewatch.training.calibration import CONTROL_FPR
from probewatch.training.estimators import make_attention_probe
from probewatch.training.features import LayerData, example_weights, score_all

__all__ = ["ATTENTION", "attention_rows", "fit_attention", "probe_scorer", "score_attention"]

ATTENTION = "attention"


def _reading(data: LayerData, token_selection: str) -> LayerData:
    """The rows `token_selection` reads (answer: the named option's or the reply's); others have no sequence."""
    if token_selection not in ROW_SELECTIONS:
        raise ValueError(
            f"an attention probe pools a sequence of rows: token selection {ROW_SELECTIONS}, not {token_selection!r}"
        )
    return data.reading(token_selection)


def fit_attention(
    data: LayerData,
    labels: np.ndarray,
    groups: np.ndarray,
    kinds: np.ndarray | None,
    idx: np.ndarray,
    seed: int,
    balance_kinds: bool,
    token_selection: str = "response",
) -> AttentionProbe:
    """Fit on the tokens `token_selection` reads of examples `idx` (grouped validation slice for early stopping)."""
    idx = np.asarray(idx, dtype=np.int64)
    sub = _reading(data, token_selection).subset(idx)
    return make_attention_probe(seed).fit(
        sub.rows,
        labels[idx],
        offsets=sub.offsets,
        groups=groups[idx],
        sample_weight=example_weights(idx, kinds, balance_kinds),
    )


def score_attention(probe: AttentionProbe, data: LayerData, token_selection: str = "response") -> np.ndarray:
    """Per-example scores of every example of `data` (NaN for one without tokens to read)."""
    data = _reading(data, token_selection)
    a, v = probe.token_columns(data.rows)
    return attention_segments(a, v, data.offsets)


def probe_scorer(probe, token_selection: str, aggregation: Aggregation) -> Callable[[LayerData], np.ndarray]:
    """data -> per-example scores, for a linear probe (its token scores aggregated) or an attention probe."""
    if isinstance(probe, AttentionProbe):
        return lambda data: score_attention(probe, data, token_selection)
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
    token_selection: str = "response",
):
    """One SweepRow: the attention probe on the tokens `token_selection` reads of this layer, scored like
    `sweep_layer`'s rows."""
    from probewatch.metrics import recall_at_threshold, threshold_at_fpr
    from probewatch.training.sweep import SweepRow, _safe_auroc

    def fit(idx: np.ndarray) -> AttentionProbe:
        return fit_attention(data, pool.labels, pool.groups, pool.kinds, idx, seed, balance_kinds, token_selection)

    def score(probe: AttentionProbe, on: LayerData) -> np.ndarray:
        return score_attention(probe, on, token_selection)

    probe = fit(pool.fit_idx)
    scores = score(probe, data)
    per_kind = {}
    for kind, tr, te in pool.loko():
        value = _safe_auroc(score(fit(tr), data)[te], pool.labels[te])
        if value is not None:
            per_kind[kind] = value
    ood_auroc = {
        name: v for name, (od, labels) in ood.items() if (v := _safe_auroc(score(probe, od), labels)) is not None
    }
    val_pos = pool.val_idx[pool.labels[pool.val_idx] == 1]
    recall = None
    if control is not None and len(val_pos):
        recall = recall_at_threshold(scores[val_pos], threshold_at_fpr(score(probe, control), fpr))
    return SweepRow(
        token_selection=token_selection,
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
