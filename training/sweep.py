"""Layer x method x aggregation sweep on cached activations, scored three ways.

For every configuration we report
- `val_auroc`: fit on the fit split, score the grouped validation (calibration) split;
- `heldout_kind_auroc`: leave-one-kind-out: fit on every other kind, score the held-out kind
  (mean over kinds, plus each kind), the generalisation number;
- `ood_auroc`: fit on the fit split, score each out-of-distribution set.

Regularisation: with held-out kinds to judge by, a logistic probe's C is one more swept setting
(each C in `Cs` is its own configuration, scored by leave-one-kind-out like the layer), so C is
chosen by held-out kind rather than by in-distribution cross-validation. Without kinds, C comes
from grouped CV on the fit split (once per layer, reused in the folds; `heldout_kind_recall`
then selects it inside every fold).

`softmax` aggregation needs a temperature in the probe's score units: it is set per fitted probe
to the standard deviation of its token scores on its own training examples (the final bundle's
temperature is that, times the Platt slope, so it stays in calibrated-logit units).

Configurations are chosen by the held-out-kind numbers when the pool has at least two kinds (the
worst kind first, to 0.01, then the mean, to 0.001), else by the mean of out-of-distribution and
validation AUROC, else by validation; AUROCs within 0.01 count as ties, broken by recall at 1%
FPR on the control set's calibration half (validation positives), then validation AUROC, then the
earlier layer. The chosen number is a maximum over configurations, so it is mildly optimistic;
reports say how many configurations were compared.

Held out from two sides where the data allow: when an out-of-distribution set (another source of
items) carries rows of a pool kind, each leave-one-kind-out probe also scores those rows
(`heldout_other_source`): the kind's format is unseen *and* its items come from elsewhere, which is
what a jailbreak benchmark is to the refusal probe. A held-out kind then counts with the lower of
its two AUROCs (`SweepRow.checked_per_kind`). Refusal needs it: its kinds are wrappers around one
source's instructions, and by those alone the late layer 29 won (held-out kinds 0.987) while
scoring worst of the candidates on the other source (refusal_val 0.989, in formats 0.982).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from probewatch.metrics import auroc
from probewatch.probes.manifest import LENGTH_NORMALISED, ROW_SELECTIONS, Aggregation
from probewatch.training.calibration import CONTROL_FPR
from probewatch.training.estimators import C_METHODS, LinearProbe, make_probe
from probewatch.training.features import LayerData, example_rows, row_scores, score_all, training_matrix
from probewatch.training.splits import leave_one_kind_out


@dataclass
class PoolArrays:
    """Example metadata of the pool, as arrays aligned with the activation cache."""

    labels: np.ndarray
    groups: np.ndarray
    kinds: np.ndarray
    fit_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    train_only: tuple[str, ...] = ()
    sources: np.ndarray | None = None  # data source of each example (training/sources.py); None: not known

    def loko(self):
        """Leave-one-kind-out folds over the evaluable kinds (training-only kinds stay in every fold)."""
        return leave_one_kind_out(self.kinds, self.labels, self.groups, exclude=self.train_only)


@dataclass
class SweepRow:
    token_selection: str
    layer: int
    method: str
    per_token: bool
    aggregation: str
    val_auroc: float | None
    heldout_kind_auroc: float | None = None
    heldout_per_kind: dict[str, float] = field(default_factory=dict)
    ood_auroc: dict[str, float] = field(default_factory=dict)
    C: float | None = None
    val_recall_control: float | None = None  # validation positives above the control-calibrated threshold
    temperature: float | None = None  # softmax aggregation: raw-score temperature of this row's probe
    #: held-out kind -> AUROC of that fold's probe on the out-of-distribution rows of the same kind (another source)
    heldout_other_source: dict[str, float] = field(default_factory=dict)

    @property
    def checked_per_kind(self) -> dict[str, float]:
        """Per held-out kind, what selection reads: the lower of its pool and other-source AUROCs."""
        return checked_per_kind(self.heldout_per_kind, self.heldout_other_source)

    @property
    def ood_mean(self) -> float | None:
        return float(np.mean(list(self.ood_auroc.values()))) if self.ood_auroc else None

    def selection_score(self, by: str) -> float:
        if by == "ood":
            # out-of-distribution sets are often small (refusal: 39 harmful items): average with validation
            parts = [v for v in (self.ood_mean, self.val_auroc) if v is not None]
            return float(np.mean(parts)) if parts else -1.0
        if by == "heldout_kind" and self.heldout_other_source:
            checked = self.checked_per_kind
            return float(np.mean(list(checked.values()))) if checked else -1.0
        value = {"heldout_kind": self.heldout_kind_auroc, "validation": self.val_auroc}[by]
        return -1.0 if value is None else float(value)

    def to_json(self) -> dict:
        out = asdict(self)
        out["ood_mean"] = self.ood_mean
        return out


def checked_per_kind(per_kind: dict[str, float], other_source: dict[str, float]) -> dict[str, float]:
    """Per held-out kind, the lower of its AUROC in the pool and on another source's rows of that kind."""
    return {k: min(v, other_source.get(k, v)) for k, v in per_kind.items()}


def ood_kind_rows(ood_kinds: dict[str, np.ndarray] | None, kind: str) -> dict[str, np.ndarray]:
    """{out-of-distribution set: its row indices of `kind`} for the sets that carry that pool kind."""
    out = {}
    for name, kinds in (ood_kinds or {}).items():
        rows = np.flatnonzero(np.asarray(kinds) == kind)
        if len(rows):
            out[name] = rows
    return out


@dataclass
class ProbeSpec:
    """Everything that defines how one probe is fitted and read."""

    method: str
    layer: int
    token_selection: str
    per_token: bool
    aggregation: str
    standardize: bool | None = None
    C: float | None = None


def fit_probe(
    spec: ProbeSpec, data: LayerData, pool: PoolArrays, idx: np.ndarray, seed: int, balance_kinds: bool
) -> LinearProbe:
    if spec.method == "attention":  # token sequences, not a matrix: training/attention_sweep.py
        from probewatch.training.attention_sweep import fit_attention

        return fit_attention(data, pool.labels, pool.groups, pool.kinds, idx, seed, balance_kinds, spec.token_selection)
    X, y, g, w = training_matrix(
        data, idx, pool.labels, pool.groups, spec.token_selection, spec.per_token, pool.kinds, balance_kinds
    )
    probe = make_probe(spec.method, seed=seed, C=spec.C, standardize=spec.standardize)
    return probe.fit(X, y, groups=g, sample_weight=w)


def with_temperature(
    aggregations: Sequence[Aggregation],
    w: np.ndarray,
    b: float,
    data: LayerData,
    idx: np.ndarray,
    token_selection: str,
    rows_scored: np.ndarray | None = None,
) -> list[Aggregation]:
    """The aggregations with the scales this probe's scores set on `idx`: softmax's temperature = the std
    of its token scores; a length-normalised maximum's `length_scale` = the std of what it takes the
    maximum of (token scores, or window means per example). `rows_scored`: the probe's scores of every
    row (`features.row_scores`), computed here when not given; read at `idx`'s rows."""
    scaled = ("softmax", *LENGTH_NORMALISED)
    if token_selection not in ROW_SELECTIONS or not any(a.method in scaled for a in aggregations):
        return list(aggregations)
    if rows_scored is None:
        rows_scored = row_scores(w, b, data, token_selection)
    at, example = example_rows(data.reading(token_selection).offsets, idx)
    x = rows_scored[at]
    spread = max(float(np.std(x)) if len(x) else 1.0, 1e-6)
    out = []
    for a in aggregations:
        if a.method == "softmax":
            a = replace(a, temperature=spread)
        elif a.method == "rolling_mean_max_norm":
            a = replace(a, length_scale=_window_mean_spread(x, example, int(a.window)) or spread)
        elif a.method == "max_norm":
            a = replace(a, length_scale=spread)
        out.append(a)
    return out


def scaled_scores(
    aggregations: Sequence[Aggregation], w: np.ndarray, b: float, data: LayerData, idx: np.ndarray, token_selection: str
) -> tuple[list[Aggregation], dict[str, np.ndarray]]:
    """`with_temperature` on `idx`, then every example's score under each scaled aggregation (`score_all`), from
    one pass over the layer's rows: the same numbers as calling the two in turn, at half the row reads."""
    x = row_scores(w, b, data, token_selection) if token_selection in ROW_SELECTIONS else None
    aggs = with_temperature(aggregations, w, b, data, idx, token_selection, rows_scored=x)
    return aggs, score_all(w, b, data, token_selection, aggs, rows_scored=x)


def in_calibrated_units(aggregation: Aggregation, slope: float) -> Aggregation:
    """The aggregation's scales after the Platt map score -> slope * score + offset (softmax weights and
    the length penalty then match the raw-score ones exactly)."""
    return replace(
        aggregation, temperature=aggregation.temperature * slope, length_scale=aggregation.length_scale * slope
    )


def _window_mean_spread(x: np.ndarray, example: np.ndarray, window: int) -> float | None:
    """The std of the full `window`-token means inside each example (None: no example that long)."""
    if len(x) < window:
        return None
    csum = np.concatenate([[0.0], np.cumsum(x)])
    means = (csum[window:] - csum[:-window]) / window
    same = example[window - 1 :] == example[: len(example) - window + 1]  # the window stays in one example
    return float(np.std(means[same])) if same.any() else None


def usable_aggregations(aggregations: Sequence[Aggregation], token_selection: str) -> list[Aggregation]:
    """What a token selection can be scored with offline: `prompt_last` one token (`last`), `all` the mean."""
    if token_selection == "prompt_last":
        return [Aggregation(method="last")]
    if token_selection == "all":
        return [Aggregation(method="mean")]
    return list(aggregations)


def _safe_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    if len(np.unique(labels)) < 2 or not np.all(np.isfinite(scores)):
        return None
    return auroc(scores, labels)


def selection_basis(pool: PoolArrays, has_ood: bool) -> str:
    kinds = list(pool.loko())
    if len(kinds) >= 2:
        return "heldout_kind"
    return "ood" if has_ood else "validation"


def sweep_layer(
    data: LayerData,
    ood: dict[str, tuple[LayerData, np.ndarray]],
    pool: PoolArrays,
    token_selection: str,
    methods: Sequence[str],
    aggregations: Sequence[Aggregation],
    per_token: bool,
    seed: int,
    balance_kinds: bool,
    standardize: bool | None = None,
    do_heldout: bool = True,
    control: LayerData | None = None,
    fpr: float = CONTROL_FPR,
    Cs: Sequence[float] | None = None,
    ood_kinds: dict[str, np.ndarray] | None = None,
) -> list[SweepRow]:
    """Every (method, C, aggregation) on one layer; one fit per method, C and split.

    With `Cs`, each C of a logistic probe is its own configuration (chosen by held-out kind);
    without, C comes from grouped CV on the fit split. With `control` (the calibration half of the
    control set), each row also records the recall of validation positives at the threshold that
    flags `fpr` of the control set. With `ood_kinds` (each OOD set's row kinds), every held-out kind's probe
    also scores the OOD rows of that kind (`SweepRow.heldout_other_source`).
    """
    from probewatch.metrics import recall_at_threshold, threshold_at_fpr

    rows: list[SweepRow] = []
    aggregations = usable_aggregations(aggregations, token_selection)
    loko = list(pool.loko()) if do_heldout else []
    val_pos = pool.val_idx[pool.labels[pool.val_idx] == 1]
    for method in (m for m in methods if m != "attention"):  # the attention probe: attention_sweep.py
        grid: list[float | None] = list(Cs) if (method in C_METHODS and Cs) else [None]
        for C in grid:
            spec = ProbeSpec(method, data.layer, token_selection, per_token, aggregations[0].method, standardize, C=C)
            probe = fit_probe(spec, data, pool, pool.fit_idx, seed, balance_kinds)
            w, b = probe.raw_linear_form()
            aggs, scores = scaled_scores(aggregations, w, b, data, pool.fit_idx, token_selection)
            ood_scores = {name: score_all(w, b, od, token_selection, aggs) for name, (od, _) in ood.items()}
            control_scores = score_all(w, b, control, token_selection, aggs) if control is not None else {}
            heldout: dict[str, dict[str, float | None]] = {a.method: {} for a in aggs}
            other: dict[str, dict[str, float]] = {a.method: {} for a in aggs}
            for kind, tr, te in loko:
                # C is the swept value, or (no grid) the fit split's grouped-CV choice: one selection per
                # layer keeps the sweep affordable; `heldout_kind_recall` redoes it inside each fold
                spec_k = replace(spec, C=C if C is not None else getattr(probe, "C_", None))
                pk = fit_probe(spec_k, data, pool, tr, seed, balance_kinds)
                wk, bk = pk.raw_linear_form()
                aggs_k, sk = scaled_scores(aggs, wk, bk, data, tr, token_selection)
                for a in aggs:
                    heldout[a.method][kind] = _safe_auroc(sk[a.method][te], pool.labels[te])
                for name, at in ood_kind_rows(ood_kinds, kind).items():
                    od, od_labels = ood[name]
                    so = score_all(wk, bk, od, token_selection, aggs_k)
                    for a in aggs:
                        if (v := _safe_auroc(so[a.method][at], od_labels[at])) is not None:
                            other[a.method][kind] = min(v, other[a.method].get(kind, v))
            for a in aggs:
                per_kind = {k: v for k, v in heldout[a.method].items() if v is not None}
                rows.append(
                    SweepRow(
                        token_selection,
                        data.layer,
                        method,
                        per_token,
                        a.method,
                        _safe_auroc(scores[a.method][pool.val_idx], pool.labels[pool.val_idx]),
                        float(np.mean(list(per_kind.values()))) if per_kind else None,
                        per_kind,
                        {
                            name: v
                            for name, (od, labels) in ood.items()
                            if (v := _safe_auroc(ood_scores[name][a.method], labels)) is not None
                        },
                        getattr(probe, "C_", None),
                        recall_at_threshold(scores[a.method][val_pos], threshold_at_fpr(control_scores[a.method], fpr))
                        if control is not None and len(val_pos)
                        else None,
                        a.temperature if a.method == "softmax" else None,
                        other[a.method],
                    )
                )
    return rows


def worst_kind(row: SweepRow) -> float:
    """The row's lowest held-out-kind AUROC, other-source rows included (-1 when it has none)."""
    checked = row.checked_per_kind
    return min(checked.values()) if checked else -1.0


def best_row(rows: Sequence[SweepRow], by: str) -> SweepRow:
    def key(r: SweepRow) -> tuple:
        # AUROC to 0.01 (differences below that are noise at these sizes), then what a monitor needs:
        # recall at the control-calibrated threshold, then validation AUROC, then the earlier layer.
        # By held-out kind, the worst kind comes first and the mean breaks its ties (to 0.001): the
        # same rule as held-out sources (training/nested.py), because a mean over kinds hides the
        # format a probe fails on (refusal: a mean-best layer lost 0.06 on long-context requests)
        first = (round(worst_kind(r), 2), round(r.selection_score(by), 3)) if by == "heldout_kind" else ()
        return (
            *first,
            round(r.selection_score(by), 2),
            round(r.val_recall_control or 0.0, 3),
            round(r.val_auroc or 0.0, 3),
            -r.layer,
        )

    return max(rows, key=key)


def heldout_kind_recall(
    spec: ProbeSpec,
    data: LayerData,
    pool: PoolArrays,
    control: LayerData,
    fpr: float,
    seed: int,
    balance_kinds: bool,
    aggregation: Aggregation | None = None,
) -> dict[str, dict[str, float | None]]:
    """Per held-out kind: AUROC and recall at the control-calibrated `fpr` threshold of that fold's probe."""
    from probewatch.metrics import recall_at_threshold, threshold_at_fpr

    base = [aggregation or Aggregation(method=spec.aggregation)]
    out: dict[str, dict[str, float | None]] = {}
    for kind, tr, te in pool.loko():
        probe = fit_probe(spec, data, pool, tr, seed, balance_kinds)
        if spec.method == "attention":
            from probewatch.training.attention_sweep import score_attention

            s, c = (
                score_attention(probe, data, spec.token_selection),
                score_attention(probe, control, spec.token_selection),
            )
        else:
            w, b = probe.raw_linear_form()
            agg, scored = scaled_scores(base, w, b, data, tr, spec.token_selection)
            s = scored[spec.aggregation]
            c = score_all(w, b, control, spec.token_selection, agg)[spec.aggregation]
        t = threshold_at_fpr(c, fpr)
        y = pool.labels[te]
        out[kind] = {
            "auroc": _safe_auroc(s[te], y),
            "recall_at_fpr_control": recall_at_threshold(s[te][y == 1], t),
            "fpr_negatives": float((s[te][y == 0] >= t).mean()),
            "n": int(len(te)),
        }
    return out


ProgressFn = Callable[[str], None]
