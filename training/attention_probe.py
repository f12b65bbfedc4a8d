"""The learned attention-pooling probe (bundle kind `attention`, probes/attention.py), fitted with torch.

Per token t of an example: a_t = q·z_t + bq, v_t = w·z_t + bw on standardised rows z_t; the example's
score is sum_t softmax(a)_t v_t. Why beside the linear probes: a mean over a long transcript dilutes
the few tokens that carry a behaviour, and max-type aggregations grow with length; the query learns
which tokens to read, and the score stays a weighted mean of v whatever the length.

Fitting (CPU, one thread by default, deterministic for a seed): full-batch Adam on the weighted logistic loss with L2 on both
directions; the query starts at zero (uniform weights: exactly mean pooling) and the value direction
at the class-mean difference, so training starts from the mean-pooled probe and moves away from it
only as far as the data asks. Early stopping on a grouped validation slice of the training examples
picks the number of epochs; the probe is then refitted on every example for that many.

Examples are ragged: `X` is a sequence of [n_i, d] token matrices, or the stacked rows [N, d] with
`offsets` ([n + 1], example i = rows[offsets[i]:offsets[i + 1]]), the layout of `LayerData`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

__all__ = ["AttentionProbe", "attention_segments", "ragged"]


def ragged(X, offsets=None) -> tuple[np.ndarray, np.ndarray]:
    """(rows [N, d], offsets [n + 1]) from a sequence of token matrices or stacked rows + offsets."""
    if offsets is not None:
        rows = np.asarray(X)
        offsets = np.asarray(offsets, dtype=np.int64)
        if rows.ndim != 2 or offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(rows):
            raise ValueError("stacked rows need offsets [n + 1] from 0 to len(rows)")
        if (np.diff(offsets) < 0).any():
            raise ValueError("offsets must not decrease")
        return rows, offsets
    mats = [np.asarray(x) for x in X]
    if not mats or any(m.ndim != 2 for m in mats) or len({m.shape[1] for m in mats}) != 1:
        raise ValueError("X must be a non-empty sequence of [n_tokens, d] matrices with one d")
    lengths = np.array([len(m) for m in mats], dtype=np.int64)
    return np.concatenate(mats, axis=0), np.concatenate([[0], np.cumsum(lengths)])


def attention_segments(a: np.ndarray, v: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """sum_t softmax(a)_t v_t per segment, vectorised (NaN for an empty one); equals AttentionAggregator."""
    a = np.asarray(a, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    counts = np.diff(offsets)
    out = np.full(len(counts), np.nan)
    ok = counts > 0
    if not ok.any():
        return out
    starts = np.asarray(offsets[:-1])[ok]  # the rows are exactly those of the non-empty segments, in order
    e = np.exp(a - np.repeat(np.maximum.reduceat(a, starts), counts[ok]))
    out[ok] = np.add.reduceat(e * v, starts) / np.add.reduceat(e, starts)
    return out


class AttentionProbe(ClassifierMixin, BaseEstimator):
    """Attention pooling with a learned query; `q_`, `bq_`, `w_`, `bw_` live in standardised space."""

    standardize = True  # the export writes mean/scale like a standardised linear probe

    def __init__(
        self,
        weight_decay: float = 1e-3,
        lr: float = 0.02,
        max_epochs: int = 300,
        patience: int = 30,
        val_fraction: float = 0.2,
        random_state: int = 0,
        n_threads: int = 1,
    ) -> None:
        self.weight_decay = weight_decay
        self.lr = lr
        self.max_epochs = max_epochs
        self.patience = patience
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.n_threads = n_threads

    # -- sklearn API ---------------------------------------------------------------------------------------
    def fit(self, X, y, offsets=None, groups=None, sample_weight=None) -> AttentionProbe:
        rows, offsets = ragged(X, offsets)
        y = np.asarray(y).astype(np.int64)
        if len(y) != len(offsets) - 1:
            raise ValueError(f"{len(offsets) - 1} examples but {len(y)} labels")
        if not np.array_equal(np.unique(y), [0, 1]):
            raise ValueError(f"probes are binary with labels 0/1; got classes {np.unique(y).tolist()}")
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = rows.shape[1]
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        keep = np.diff(offsets) > 0  # an example without tokens has no score to learn from
        if not keep.all():
            rows = np.concatenate([rows[offsets[i] : offsets[i + 1]] for i in np.flatnonzero(keep)], axis=0)
            offsets = np.concatenate([[0], np.cumsum(np.diff(offsets)[keep])]).astype(np.int64)
            y, weight = y[keep], weight[keep]
            groups = None if groups is None else np.asarray(groups)[keep]
        mean = rows.mean(axis=0, dtype=np.float64)
        scale = rows.std(axis=0, dtype=np.float64)
        scale[scale < 1e-8] = 1.0
        self.mean_, self.scale_ = mean, scale
        z = ((rows - mean) / scale).astype(np.float32)
        train, val = self._split(y, groups)
        self.n_epochs_ = self.max_epochs
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.n_threads)  # tiny GEMMs: more OpenMP threads only contend on a shared CPU
        try:
            if val is not None:
                _, curve = self._train(z, offsets, y, weight, train, val)
                self.val_loss_curve_ = curve
                self.n_epochs_ = int(np.argmin(curve)) + 1
            (self.q_, self.bq_, self.w_, self.bw_), _ = self._train(z, offsets, y, weight, np.arange(len(y)), None)
        finally:
            torch.set_num_threads(previous)
        return self

    def decision_function(self, X, offsets=None) -> np.ndarray:
        rows, offsets = ragged(X, offsets)
        a, v = self.token_columns(rows)
        return attention_segments(a, v, offsets)

    def predict_proba(self, X, offsets=None) -> np.ndarray:
        p = 0.5 * (1.0 + np.tanh(0.5 * self.decision_function(X, offsets)))
        return np.column_stack([1.0 - p, p])

    def predict(self, X, offsets=None) -> np.ndarray:
        return self.classes_[(self.decision_function(X, offsets) > 0).astype(np.int64)]

    # -- the bundle's form -----------------------------------------------------------------------------------
    def raw_forms(self) -> tuple[tuple[np.ndarray, float], tuple[np.ndarray, float]]:
        """((q, bq), (w, bw)) in raw residual space: a_t = h_t·q + bq, v_t = h_t·w + bw."""
        out = []
        for d, b in ((self.q_, self.bq_), (self.w_, self.bw_)):
            raw = d / self.scale_
            out.append((raw, float(b - raw @ self.mean_)))
        return out[0], out[1]

    def token_columns(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(a [N], v [N]) of raw rows, float64."""
        (q, bq), (w, bw) = self.raw_forms()
        r = np.asarray(rows, dtype=np.float64)
        return r @ q + bq, r @ w + bw

    def affine_(self, slope: float, offset: float) -> AttentionProbe:
        """Fold score -> slope * score + offset into the value direction (softmax weights sum to one)."""
        self.w_ = self.w_ * slope
        self.bw_ = float(self.bw_ * slope + offset)
        return self

    # -- fitting ---------------------------------------------------------------------------------------------
    def _split(self, y: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray | None]:
        """A grouped validation slice for early stopping, or no slice when either side would lack a class."""
        rng = np.random.default_rng(self.random_state)
        keys = np.asarray(groups) if groups is not None else np.arange(len(y))
        unique = rng.permutation(np.unique(keys))
        n_val = int(round(self.val_fraction * len(unique)))
        if n_val < 2 or len(unique) - n_val < 2:
            return np.arange(len(y)), None
        val_mask = np.isin(keys, unique[:n_val])
        if len(np.unique(y[val_mask])) < 2 or len(np.unique(y[~val_mask])) < 2:
            return np.arange(len(y)), None
        return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)

    def _train(self, z, offsets, y, weight, train, val):
        """Full-batch Adam on `train`; returns the parameters after n_epochs_ (or max_epochs) and the
        validation loss per epoch (early stopping: stops `patience` epochs after the best)."""
        import torch

        torch.manual_seed(self.random_state)
        tz, seg, t_y, t_w = _tensors(z, offsets, y, weight, train)
        d = z.shape[1]
        means = _segment_mean(tz, seg, len(train))
        diff = means[t_y == 1].mean(0) - means[t_y == 0].mean(0)
        w = (diff / diff.norm().clamp_min(1e-8) ** 2).clone().requires_grad_(True)  # v difference of ~1 at start
        q = torch.zeros(d, requires_grad=True)
        bw = torch.zeros(1, requires_grad=True)
        bq = torch.zeros(1)  # softmax(a + c) = softmax(a): the query bias is kept at 0
        opt = torch.optim.Adam([q, w, bw], lr=self.lr)
        val_data = _tensors(z, offsets, y, weight, val) if val is not None else None
        curve: list[float] = []
        epochs = self.max_epochs if val is not None else self.n_epochs_
        for _ in range(epochs):
            opt.zero_grad()
            loss = _loss(tz, seg, t_y, t_w, q, bq, w, bw) + 0.5 * self.weight_decay * (
                q.square().sum() + w.square().sum()
            )
            loss.backward()
            opt.step()
            if val_data is not None:
                with torch.no_grad():
                    vz, vseg, vy, vw = val_data
                    curve.append(float(_loss(vz, vseg, vy, vw, q, bq, w, bw)))
                if len(curve) - 1 - int(np.argmin(curve)) >= self.patience:
                    break
        params = (q.detach().double().numpy(), float(bq), w.detach().double().numpy(), float(bw.detach()))
        return params, curve


def _tensors(
    z: np.ndarray, offsets: np.ndarray, y: np.ndarray, weight: np.ndarray, examples: Sequence[int]
) -> tuple[Any, Any, Any, Any]:
    """Rows, segment ids, labels and normalised weights of the examples, as torch tensors."""
    import torch

    idx = np.asarray(examples, dtype=np.int64)
    lengths = np.diff(offsets)[idx]
    take = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx])
    w = weight[idx] / weight[idx].sum()
    return (
        torch.from_numpy(z[take]),
        torch.from_numpy(np.repeat(np.arange(len(idx)), lengths)),
        torch.from_numpy(y[idx].astype(np.float32)),
        torch.from_numpy(w.astype(np.float32)),
    )


def _segment_mean(z, seg, n: int):
    import torch

    total = torch.zeros(n, z.shape[1]).index_add_(0, seg, z)
    return total / torch.bincount(seg, minlength=n).clamp_min(1)[:, None]


def _loss(z, seg, y, w, q, bq, wv, bw):
    """Weighted logistic loss of the attention-pooled scores (segment softmax with a detached max)."""
    import torch

    n = len(y)
    a = z @ q + bq
    v = z @ wv + bw
    amax = torch.full((n,), -torch.inf).scatter_reduce(0, seg, a.detach(), "amax", include_self=True)
    e = torch.exp(a - amax[seg])
    score = torch.zeros(n).index_add(0, seg, e * v) / torch.zeros(n).index_add(0, seg, e)
    return (w * torch.nn.functional.binary_cross_entropy_with_logits(score, y, reduction="none")).sum()
