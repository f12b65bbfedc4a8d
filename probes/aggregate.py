"""Per-generation aggregation of per-token scores, streaming and offline with the same numbers.

Long generations dilute a mean: a short deceptive passage inside a long honest answer barely
moves it. `max` and `rolling_mean_max` (max over time of the mean of the last `window` token
scores) keep such passages visible; `softmax` (the softmax-weighted mean, sum_t w_t x_t with
w = softmax(x / temperature): between `mean` as temperature -> inf and `max` as it -> 0, the
soft form of GDM's MultiMax pooling) weights the highest-scoring tokens most without letting one
token decide; `ema` tracks the recent tail; `last` suits probes read at one position (e.g. the
generation-prompt position for refusal).
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
    raise ValueError(f"unknown aggregation method {spec.method!r}")


def aggregate(scores: Iterable[float], spec: Aggregation) -> float:
    """Offline aggregate of a whole score sequence (identical to streaming it)."""
    agg = make_aggregator(spec)
    return agg.update(scores)
