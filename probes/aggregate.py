"""Per-generation aggregation of per-token scores, streaming and offline with the same numbers.

Long generations dilute a mean: a short deceptive passage inside a long honest answer barely
moves it. `max` and `rolling_mean_max` (max over time of the mean of the last `window` token
scores) keep such passages visible, but a maximum grows with length, so `max_norm` and
`rolling_mean_max_norm` subtract the growth length alone would give (`length_penalty`);
`softmax` (the softmax-weighted mean, sum_t w_t x_t with w = softmax(x / temperature): between
`mean` as temperature -> inf and `max` as it -> 0, the soft form of GDM's MultiMax pooling)
weights the highest-scoring tokens most without letting one token decide; `ema` tracks the
recent tail; `last` suits probes read at one position (e.g. the generation-prompt position for
refusal). `attention` (kind `attention` probes only) pools pairs
(a_t, v_t): sum_t softmax(a)_t v_t, the weights learned by a query direction (probes/attention.py).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

import numpy as np

from probewatch.probes.manifest import Aggregation


class Aggregator:
    """Streaming aggregate: feed token scores with `update`, read `value` (NaN until a token)."""

    def __init__(self) -> None:
        self.count = 0

    def update(self, scores: Iterable[float]) -> float:
        for x in np.asarray(scores, dtype=np.float64).reshape(-1):
            self.count += 1
            self._push(float(x))
        return self.value

    def _push(self, x: float) -> None:
        raise NotImplementedError

    @property
    def value(self) -> float:
        raise NotImplementedError


class MeanAggregator(Aggregator):
    def __init__(self) -> None:
        super().__init__()
        self._sum = 0.0

    def _push(self, x: float) -> None:
        self._sum += x

    @property
    def value(self) -> float:
        return self._sum / self.count if self.count else math.nan


class MaxAggregator(Aggregator):
    def __init__(self) -> None:
        super().__init__()
        self._max = -math.inf

    def _push(self, x: float) -> None:
        self._max = max(self._max, x)

    @property
    def value(self) -> float:
        return self._max if self.count else math.nan


class LastAggregator(Aggregator):
    def __init__(self) -> None:
        super().__init__()
        self._last = math.nan

    def _push(self, x: float) -> None:
        self._last = x

    @property
    def value(self) -> float:
        return self._last


class EmaAggregator(Aggregator):
    """s_1 = x_1; s_t = alpha * x_t + (1 - alpha) * s_{t-1}; value = s_T."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self._s = math.nan

    def _push(self, x: float) -> None:
        self._s = x if self.count == 1 else self.alpha * x + (1 - self.alpha) * self._s

    @property
    def value(self) -> float:
        return self._s


class RollingMeanMaxAggregator(Aggregator):
    """max_t mean(x[t-w+1 .. t]); the first w-1 windows average what is there so far."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window
        self._buf: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._max = -math.inf

    def _push(self, x: float) -> None:
        if len(self._buf) == self.window:
            self._sum -= self._buf[0]
        self._buf.append(x)
        self._sum += x
        self._max = max(self._max, self._sum / len(self._buf))

    @property
    def value(self) -> float:
        return self._max if self.count else math.nan


def length_penalty(scale: float, n_tokens: int, window: int = 1) -> float:
    """`scale * sqrt(2 ln n)`, n = n_tokens / window (at least 1): how much the maximum of n draws of
    spread `scale` grows with n, subtracted by the `*_norm` aggregations so length alone cannot alert."""
    n = n_tokens / max(1, window)
    return scale * math.sqrt(2.0 * math.log(n)) if scale and n > 1 else 0.0


class LengthNormalised(Aggregator):
    """A maximum (`max` or `rolling_mean_max`) minus `length_penalty`: still exact when streamed (the
    penalty depends on the token count only), but no longer monotone, so it alerts on its final value."""

    def __init__(self, inner: Aggregator, scale: float, window: int = 1) -> None:
        super().__init__()
        self.inner, self.scale, self.window = inner, float(scale), window

    def _push(self, x: float) -> None:
        self.inner.count += 1
        self.inner._push(x)

    @property
    def value(self) -> float:
        return self.inner.value - length_penalty(self.scale, self.count, self.window) if self.count else math.nan


class SoftmaxAggregator(Aggregator):
    """sum_t softmax(x / T)_t * x_t, streamed with a running max so no exponential overflows."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self._max = -math.inf
        self._z = 0.0  # sum exp((x - max) / T)
        self._s = 0.0  # sum x * exp((x - max) / T)

    def _push(self, x: float) -> None:
        if x > self._max:
            shrink = math.exp((self._max - x) / self.temperature) if self._z else 0.0
            self._z *= shrink
            self._s *= shrink
            self._max = x
        e = math.exp((x - self._max) / self.temperature)
        self._z += e
        self._s += e * x

    @property
    def value(self) -> float:
        return self._s / self._z if self.count else math.nan


class AttentionAggregator(Aggregator):
    """sum_t softmax(a)_t * v_t over (a_t, v_t) pairs, streamed with a running max of a like softmax.

    `update` takes [m, 2] (columns a, v; a flat sequence is read as pairs). Token by token, so
    the value after any prefix is the offline value of that prefix however the tokens were chunked.
    """

    def __init__(self) -> None:
        super().__init__()
        self._max = -math.inf
        self._z = 0.0  # sum exp(a - max)
        self._s = 0.0  # sum v * exp(a - max)

    def update(self, scores: Iterable[float] | np.ndarray) -> float:
        for a, v in np.asarray(scores, dtype=np.float64).reshape(-1, 2).tolist():
            self.count += 1
            if a > self._max:
                shrink = math.exp(self._max - a) if self._z else 0.0
                self._z *= shrink
                self._s *= shrink
                self._max = a
            e = math.exp(a - self._max)
            self._z += e
            self._s += e * v
        return self.value

    @property
    def value(self) -> float:
        return self._s / self._z if self.count else math.nan


def token_values(scores: np.ndarray) -> np.ndarray:
    """The per-token score a probe's columns show: the only column, or v_t of an attention probe's (a_t, v_t)."""
    scores = np.asarray(scores)
    return scores[:, -1] if scores.ndim == 2 else scores


def make_aggregator(spec: Aggregation) -> Aggregator:
    if spec.method == "mean":
        return MeanAggregator()
    if spec.method == "max":
        return MaxAggregator()
    if spec.method == "last":
        return LastAggregator()
    if spec.method == "ema":
        return EmaAggregator(spec.alpha)
    if spec.method == "rolling_mean_max":
        return RollingMeanMaxAggregator(spec.window)
    if spec.method == "softmax":
        return SoftmaxAggregator(spec.temperature)
    if spec.method == "attention":
        return AttentionAggregator()
    if spec.method == "max_norm":
        return LengthNormalised(MaxAggregator(), spec.length_scale)
    if spec.method == "rolling_mean_max_norm":
        return LengthNormalised(RollingMeanMaxAggregator(spec.window), spec.length_scale, spec.window)
    raise ValueError(f"unknown aggregation method {spec.method!r}")


def aggregate(scores: Iterable[float] | np.ndarray, spec: Aggregation) -> float:
    """Offline aggregate of a whole score sequence (identical to streaming it); [n, 2] (a, v) for attention."""
    agg = make_aggregator(spec)
    return agg.update(scores)
