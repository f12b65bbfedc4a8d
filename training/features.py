"""Training matrices and cached scoring for one layer of an activation cache.

A probe reads the scored-region rows (`response`), the generation-prompt row (`prompt_last`),
every token of the dialogue (`all`: prompt + response; per-example, `mean` aggregation only,
from the cache's per-example sum of the rows outside the scored region), or what the reply means
(`answer`: the prompt rows of the option a multiple-choice reply names, the reply's rows for every
other example; `LayerData.reading` gives those rows, and every row-reading routine takes them as it
takes the reply's). Per-example training
uses the mean over an example's rows (what the runtime's `mean` aggregation of per-token scores
equals for a linear probe); per-token training
uses every row with its example's label and group. Evaluation scores every row and aggregates
per example with the runtime's aggregation rules, vectorised here because a layer sweep
aggregates millions of token scores (`tests/training` pins them to `probewatch.probes.aggregate`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from probewatch.probes.aggregate import length_penalty
from probewatch.probes.manifest import LENGTH_NORMALISED, Aggregation
from probewatch.training.activation_cache import ActivationSet, ActivationUnion, expand_ranges, segment_mean


@dataclass
class LayerData:
    """One layer's rows from an ActivationSet, in original example order."""

    layer: int
    rows: np.ndarray  # [n_rows, d] scored-region rows, example after example
    offsets: np.ndarray  # [n_examples + 1]
    last: np.ndarray  # [n_examples, d] generation-prompt rows
    rest_sum: np.ndarray | None = None  # [n_examples, d] sum of the rows outside the scored region
    n_rest: np.ndarray | None = None  # [n_examples] their count
    answer_rows: np.ndarray | None = None  # [sum(n_answer), d] option rows of the examples whose reply names one
    n_answer: np.ndarray | None = None  # [n_examples] their count (0: the reply is read)
    _means: np.ndarray | None = None
    _answer_view: LayerData | None = None

    @classmethod
    def load(cls, acts: ActivationSet | ActivationUnion, layer: int) -> LayerData:
        rows, offsets = acts.token_rows(layer)
        rest_sum, n_rest = acts.rest_sums(layer)
        return cls(
            layer, rows, offsets, acts.last_rows(layer), rest_sum, n_rest, acts.answer_rows(layer), acts.n_answer
        )

    def reading(self, token_selection: str) -> LayerData:
        """The LayerData whose `rows` a row-reading selection reads: for `answer`, each example's option rows
        where its reply names one and its reply's rows elsewhere (computed once); for any other, itself."""
        if token_selection != "answer":
            return self
        if self.answer_rows is None or self.n_answer is None:
            raise ValueError("this activation cache has no option rows; token_selection 'answer' needs a pwacts3 cache")
        if self._answer_view is None:
            n_resp = np.diff(self.offsets)
            use = self.n_answer > 0
            lengths = np.where(use, self.n_answer, n_resp)
            # one gather over [reply rows; option rows]: each example's block from one of the two
            source = np.where(use, _starts(self.n_answer) + len(self.rows), self.offsets[:-1])
            both = np.concatenate([self.rows, self.answer_rows.astype(self.rows.dtype, copy=False)])
            self._answer_view = LayerData(
                self.layer,
                both[expand_ranges(source, lengths)],
                np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                self.last,
                self.rest_sum,
                self.n_rest,
            )
        return self._answer_view

    @property
    def n_examples(self) -> int:
        return len(self.offsets) - 1

    @property
    def means(self) -> np.ndarray:
        """[n_examples, d] mean of each example's response rows (computed once)."""
        if self._means is None:
            self._means = segment_mean(self.rows, self.offsets)
        return self._means

    @property
    def all_means(self) -> np.ndarray:
        """[n_examples, d] mean over every token of each dialogue (prompt, response, closing tokens)."""
        if self.rest_sum is None or self.n_rest is None:
            raise ValueError("this activation cache has no prompt sums; token_selection 'all' needs a pwacts2 cache")
        n_resp = np.diff(self.offsets)
        total = self.rest_sum.astype(np.float64) + self.means.astype(np.float64) * n_resp[:, None]
        return (total / np.maximum(n_resp + self.n_rest, 1)[:, None]).astype(np.float32)

    def example_matrix(self, token_selection: str) -> np.ndarray:
        if token_selection == "prompt_last":
            return self.last
        if token_selection == "response":
            return self.means
        if token_selection == "all":
            return self.all_means
        if token_selection == "answer":
            return self.reading("answer").means
        raise ValueError(
            f"training reads token_selection 'response', 'prompt_last', 'all' or 'answer', not {token_selection!r}"
        )

    def subset(self, idx: np.ndarray) -> LayerData:
        """The examples `idx` (in that order) as a new LayerData."""
        idx = np.asarray(idx, dtype=np.int64)
        lengths = np.diff(self.offsets)[idx]
        rows = self.rows[expand_ranges(self.offsets[idx], lengths)]
        answer_rows = n_answer = None
        if self.answer_rows is not None and self.n_answer is not None:
            answer_rows = self.answer_rows[expand_ranges(_starts(self.n_answer)[idx], self.n_answer[idx])]
            n_answer = self.n_answer[idx]
        return LayerData(
            self.layer,
            rows,
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            self.last[idx],
            None if self.rest_sum is None else self.rest_sum[idx],
            None if self.n_rest is None else self.n_rest[idx],
            answer_rows,
            n_answer,
        )

    def token_matrix(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows of examples idx, example position in idx of each row)."""
        at, example = example_rows(self.offsets, idx)
        return self.rows[at], example


def example_rows(offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the rows of examples `idx`, in that order; each row's example position in `idx`) for rows
    stored example after example at `offsets`: what `token_matrix` reads, for any per-row array."""
    idx = np.asarray(idx, dtype=np.int64)
    lengths = np.diff(offsets)[idx]
    return expand_ranges(offsets[idx], lengths), np.repeat(np.arange(len(idx)), lengths)


def _starts(counts: np.ndarray) -> np.ndarray:
    """Where each example's block starts in rows stored example after example, `counts` rows each."""
    return np.concatenate([[0], np.cumsum(counts)])[:-1].astype(np.int64)


def example_weights(idx: np.ndarray, kinds: np.ndarray | None, balance_kinds: bool) -> np.ndarray:
    """1 per example, or (with balance_kinds) equal total weight per data kind."""
    idx = np.asarray(idx, dtype=np.int64)
    if not balance_kinds or kinds is None:
        return np.ones(len(idx))
    _, inverse, counts = np.unique(kinds[idx], return_inverse=True, return_counts=True)
    return (len(idx) / len(counts)) / counts[inverse]


def training_matrix(
    data: LayerData,
    idx: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    token_selection: str,
    per_token: bool,
    kinds: np.ndarray | None = None,
    balance_kinds: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, groups, sample_weight) for fitting on examples `idx`.

    Weights make every example count once (per-token rows share their example's weight) and,
    with `balance_kinds`, every data kind count equally, so a large kind does not drown the rest.
    """
    idx = np.asarray(idx, dtype=np.int64)
    weight = example_weights(idx, kinds, balance_kinds)
    if not per_token or token_selection in ("prompt_last", "all"):
        return data.example_matrix(token_selection)[idx], labels[idx], groups[idx], weight
    rows, rep = data.reading(token_selection).token_matrix(idx)
    counts = np.bincount(rep, minlength=len(idx))
    return rows, labels[idx][rep], groups[idx][rep], (weight / np.maximum(counts, 1))[rep]


#: bytes of float64 rows scored at a time by `row_scores`: small enough to stay in cache
ROW_BLOCK_BYTES = 1 << 21
#: blocks hold a multiple of this many rows (whole runs of the BLAS kernel's row groups)
ROW_BLOCK_MULTIPLE = 256


def row_scores(w: np.ndarray, b: float, data: LayerData, token_selection: str) -> np.ndarray:
    """x.w + b of every row a row-reading selection (`response`, `answer`) reads, in row order, in float64.

    Scoring a layer's rows was the sweep's dominant cost (hundreds of thousands of rows per fit, each time
    copied whole to float64). Rows are converted a cache-sized block at a time instead: the same products
    up to float64 rounding (tests pin 1e-12), twice as fast on an idle 2-core machine (`probewatch bench sweep`;
    far more when memory is contended), and no layer-sized temporary.
    Callers that need the scores twice (a softmax temperature on the fit rows, then every example's
    aggregate: `sweep.scaled_scores`) compute them once and pass them on as `rows_scored`."""
    rows = data.reading(token_selection).rows
    return _blocked_scores(rows, np.asarray(w, dtype=np.float64), float(b))


def _blocked_scores(rows: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    d = rows.shape[1]
    block = max(ROW_BLOCK_MULTIPLE, ROW_BLOCK_BYTES // (8 * max(d, 1)) // ROW_BLOCK_MULTIPLE * ROW_BLOCK_MULTIPLE)
    out = np.empty(len(rows), dtype=np.float64)
    buffer = np.empty((min(block, len(rows)), d), dtype=np.float64)
    for start in range(0, len(rows), block):
        part = rows[start : start + block]
        buffer[: len(part)] = part
        np.dot(buffer[: len(part)], w, out=out[start : start + len(part)])
    out += b
    return out


def score_all(
    w: np.ndarray,
    b: float,
    data: LayerData,
    token_selection: str,
    aggregations: list[Aggregation],
    rows_scored: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """{aggregation method: per-example scores} of the raw-space probe x.w + b for every example.

    `rows_scored`: `row_scores(w, b, data, token_selection)` where the caller already has it (row-reading
    selections only; identical to what this would compute)."""
    if token_selection == "prompt_last":
        scores = data.last.astype(np.float64) @ w + b  # one token per example: every aggregation returns it
        return {a.method: scores for a in aggregations}
    if token_selection == "all":
        # the mean of x.w + b over every token is (mean x).w + b; other aggregations would need every prompt row
        bad = [a.method for a in aggregations if a.method != "mean"]
        if bad:
            raise ValueError(f"token_selection 'all' is scored from cached sums: mean aggregation only, not {bad}")
        return {"mean": data.all_means.astype(np.float64) @ w + b}
    token_scores = row_scores(w, b, data, token_selection) if rows_scored is None else rows_scored
    offsets = data.reading(token_selection).offsets
    if len(token_scores) != offsets[-1]:
        raise ValueError(f"rows_scored holds {len(token_scores)} scores for {offsets[-1]} rows")
    return {a.method: aggregate_segments(token_scores, offsets, a) for a in aggregations}


def aggregate_segments(token_scores: np.ndarray, offsets: np.ndarray, aggregation: Aggregation) -> np.ndarray:
    """Aggregate per-token scores per segment exactly as `probewatch.probes.aggregate` (NaN if empty)."""
    x = np.asarray(token_scores, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offsets)
    out = np.full(len(counts), np.nan)
    ok = counts > 0
    if not ok.any():
        return out
    starts, ends = offsets[:-1][ok], offsets[1:][ok]
    method = aggregation.method
    if method in LENGTH_NORMALISED:
        inner = aggregate_segments(x, offsets, replace(aggregation, method=LENGTH_NORMALISED[method]))
        window = int(aggregation.window) if method == "rolling_mean_max_norm" else 1
        penalty = [length_penalty(aggregation.length_scale, int(n), window) for n in counts]
        return inner - np.asarray(penalty, dtype=np.float64)
    if method == "mean":
        out[ok] = np.add.reduceat(x, starts) / counts[ok]
    elif method == "max":
        out[ok] = np.maximum.reduceat(x, starts)
    elif method == "last":
        out[ok] = x[ends - 1]
    elif method == "rolling_mean_max":
        w = int(aggregation.window)
        seg_start = np.repeat(offsets[:-1], counts)
        pos = np.arange(len(x))
        csum = np.concatenate([[0.0], np.cumsum(x)])
        lo = np.maximum(seg_start, pos + 1 - w)
        rolling = (csum[pos + 1] - csum[lo]) / (pos + 1 - lo)
        out[ok] = np.maximum.reduceat(rolling, starts)
    elif method == "ema":
        a = float(aggregation.alpha)
        seg_len = np.repeat(counts, counts)
        rel = np.arange(len(x)) - np.repeat(offsets[:-1], counts)
        power = (seg_len - 1 - rel).astype(np.float64)
        weight = np.where(rel == 0, (1.0 - a) ** power, a * (1.0 - a) ** power)
        out[ok] = np.add.reduceat(weight * x, starts)
    elif method == "softmax":
        t = float(aggregation.temperature)
        # x holds exactly the rows of the non-empty segments, in order: subtract each segment's max
        seg_max = np.repeat(np.maximum.reduceat(x, starts), counts[ok])
        e = np.exp((x - seg_max) / t)
        out[ok] = np.add.reduceat(e * x, starts) / np.add.reduceat(e, starts)
    else:
        raise ValueError(f"unknown aggregation method {method!r}")
    return out
