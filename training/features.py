"""Training matrices and cached scoring for one layer of an activation cache.

A probe reads either the scored-region rows (`response`) or the generation-prompt row
(`prompt_last`). Per-example training uses the mean over an example's response rows (what the
runtime's `mean` aggregation of per-token scores equals for a linear probe); per-token training
uses every row with its example's label and group. Evaluation scores every row and aggregates
per example exactly like the runtime (`probewatch.probes.aggregate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probewatch.probes.aggregate import aggregate
from probewatch.probes.manifest import Aggregation
from probewatch.training.extract import ActivationSet, segment_mean


@dataclass
class LayerData:
    """One layer's rows from an ActivationSet, in original example order."""

    layer: int
    rows: np.ndarray      # [n_rows, d] scored-region rows
    offsets: np.ndarray   # [n_examples + 1]
    last: np.ndarray      # [n_examples, d] generation-prompt rows

    @classmethod
    def load(cls, acts: ActivationSet, layer: int) -> LayerData:
        rows, offsets = acts.token_rows(layer)
        return cls(layer, rows, offsets, acts.last_rows(layer))

    @property
    def n_examples(self) -> int:
        return len(self.offsets) - 1

    def subset(self, idx: np.ndarray) -> LayerData:
        """The examples `idx` (in that order) as a new LayerData."""
        from probewatch.training.extract import expand_ranges

        idx = np.asarray(idx, dtype=np.int64)
        lengths = np.diff(self.offsets)[idx]
        rows = self.rows[expand_ranges(self.offsets[idx], lengths)]
        return LayerData(self.layer, rows, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), self.last[idx])


def training_matrix(data: LayerData, idx: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                    token_selection: str, per_token: bool, kinds: np.ndarray | None = None,
                    balance_kinds: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, groups, sample_weight) for fitting on examples `idx`.

    Weights make every example count once (per-token rows share their example's weight) and,
    with `balance_kinds`, every data kind count equally, so a large kind does not drown the rest.
    """
    idx = np.asarray(idx, dtype=np.int64)
    ex_weight = np.ones(len(idx))
    if balance_kinds and kinds is not None:
        k = kinds[idx]
        uniq, inverse, counts = np.unique(k, return_inverse=True, return_counts=True)
        ex_weight = (len(idx) / len(uniq)) / counts[inverse]
    if token_selection == "prompt_last":
        return data.last[idx], labels[idx], groups[idx], ex_weight
    if token_selection != "response":
        raise ValueError(f"training reads token_selection 'response' or 'prompt_last', not {token_selection!r}")
    sub = data.subset(idx)
    if not per_token:
        return segment_mean(sub.rows, sub.offsets), labels[idx], groups[idx], ex_weight
    counts = np.diff(sub.offsets)
    rep = np.repeat(np.arange(len(idx)), counts)
    return sub.rows, labels[idx][rep], groups[idx][rep], (ex_weight / np.maximum(counts, 1))[rep]


def score_examples(w: np.ndarray, b: float, data: LayerData, idx: np.ndarray, token_selection: str,
                   aggregation: Aggregation) -> np.ndarray:
    """Per-example aggregated scores of the raw-space linear probe x.w + b (runtime-identical)."""
    idx = np.asarray(idx, dtype=np.int64)
    if token_selection == "prompt_last":
        scores = data.last[idx] @ w + b
        return scores.astype(np.float64)  # one token per example: every aggregation returns it
    sub = data.subset(idx)
    token_scores = (sub.rows.astype(np.float64) @ w + b)
    return aggregate_segments(token_scores, sub.offsets, aggregation)


def aggregate_segments(token_scores: np.ndarray, offsets: np.ndarray, aggregation: Aggregation) -> np.ndarray:
    """Aggregate per-token scores per segment; vectorised where the method allows it."""
    counts = np.diff(offsets)
    n = len(counts)
    out = np.full(n, np.nan)
    nonempty = counts > 0
    starts = offsets[:-1]
    method = aggregation.method
    if method == "mean" and len(token_scores):
        sums = np.add.reduceat(token_scores, starts[nonempty])
        out[nonempty] = sums / counts[nonempty]
    elif method == "max" and len(token_scores):
        out[nonempty] = np.maximum.reduceat(token_scores, starts[nonempty])
    elif method == "last":
        out[nonempty] = token_scores[offsets[1:][nonempty] - 1]
    else:
        for i in np.flatnonzero(nonempty):
            out[i] = aggregate(token_scores[offsets[i]:offsets[i + 1]], aggregation)
    return out
