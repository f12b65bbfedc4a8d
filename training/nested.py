"""Held-out-source selection and the nested, source-held-out estimate of it (issue 22).

The sweep chooses among hundreds of configurations by held-out *kind*, and kinds of one source
share its author and format, so the chosen number is optimistic for data written elsewhere. Here:

- **folds**: hold out one evaluable source (`sources.evaluable_sources`) at a time; where fewer than
  two sources are left, hold out one kind of what is left instead, and where that leaves fewer than two
  folds to score (one source of one kind), one of `GROUP_FOLDS` parts of what is left, split by group
  (a stable hash of the group's name, so a group is never on both sides). A fold's training side drops
  every example of the held-out sources (training-only kinds included), every example sharing a
  group with them, and the calibration split (its negatives set the fold's threshold). A fold with
  both labels is scored by its own AUROC; one with positives only against the control set.
- **selection** (`pick`): `report_sources.rule_text`: among the candidates whose validation AUROC is within
  `VAL_MARGIN` of the best candidate's (the guard), worst fold first (within 0.01), then the mean. The guard
  exists because two to four held-out sources are a noisy judge: without it a configuration that separates
  its own pool far worse (a contrast probe, validation AUROC 0.83 against the best candidate's 0.98) won on
  inner folds, predicted unseen sources no better, and shipped a threshold that caught 3% of deceptive answers.
  Where no fold can be scored at all (too few examples to split), the first candidate in pre-screen order
  within the same guard (`guarded_first`).
- **nested estimate** (`nested_estimate`): for each outer source S, the selection runs on folds of
  the other sources only; the chosen configuration is fitted on the other sources and scored on S.
  Per S: the selected-on score (the chosen configuration's inner mean), the reported-on AUROC,
  their gap, and S's recall / flagged negatives at a threshold set without S.
- **affordable**: only the top-k configurations of a pre-screen are fitted (`prescreen`: the sweep's
  own leave-one-kind-out AUROCs of the kinds outside S, averaged per source; half the k by the worst
  source, half by the mean, plus up to k/2 extra candidates, the best of each method the k lack: a
  method that scores lower within sources still gets a held-out-source evaluation, and adding them
  instead of replacing picks keeps the top k exactly as they were). Those sweep fits saw
  S as training data, never as scored data. Fits are planned layer by layer (one layer in memory) and
  shared between folds with the same held-out set.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from probewatch.metrics import auroc
from probewatch.probes.manifest import Aggregation
from probewatch.training.calibration import (
    CONTROL_FPR,
    MAX_FLAGGED_NEGATIVES,
    MIN_SOURCE_NEGATIVES,
    operating_point,
    transfer_rate,
)
from probewatch.training.features import LayerData, score_all
from probewatch.training.metrics import flagged_share
from probewatch.training.report_sources import (
    VAL_MARGIN,
    ConfigScore,
    HeldOutThreshold,
    NestedEstimate,
    OuterSource,
    SourceSelection,
    TransferCheck,
    rule_text,
)
from probewatch.training.sources import evaluable_sources
from probewatch.training.sweep import PoolArrays, ProbeSpec, SweepRow, fit_probe, scaled_scores

#: a held-out set: ("source", name) / ("kind", name) units
Held = frozenset[tuple[str, str]]
#: layer -> (pool rows, control rows) of that layer
LayerFn = Callable[[int], tuple[LayerData, LayerData]]
TIE = 0.01
#: parts of the one source of one kind that is left, where no kind can be held out (a ("group", "i/k") unit)
GROUP_FOLDS = 4


@dataclass
class NestedSettings:
    """What the folds fit and how thresholds are set (the training config's values)."""

    seed: int = 0
    balance_kinds: bool = True
    standardize: bool | None = None
    fpr: float = CONTROL_FPR
    hard_negative_fpr: float | None = MAX_FLAGGED_NEGATIVES
    hard_negatives_per_kind: bool = True
    window: int = 8
    alpha: float = 0.2
    top_k: int = 8
    val_margin: float = VAL_MARGIN
    progress: bool = False  # a bar over the fold fits: on a real pool this stage runs for minutes to an hour


@dataclass
class Fold:
    name: str
    held: Held
    train: np.ndarray
    test: np.ndarray


def config_of(row: SweepRow) -> dict:
    """The fields that define a configuration (what `ConfigScore.config` records)."""
    return {
        "token_selection": row.token_selection,
        "layer": row.layer,
        "method": row.method,
        "C": row.C,
        "per_token": row.per_token,
        "aggregation": row.aggregation,
    }


def _fit_key(row: SweepRow) -> tuple:
    return (row.token_selection, row.layer, row.method, row.per_token, row.C)


# -- folds ------------------------------------------------------------------------------------------------
def _sources(pool: PoolArrays) -> np.ndarray:
    if pool.sources is None:
        raise ValueError("the pool has no sources (PoolArrays.sources)")
    return pool.sources


def group_parts(groups: np.ndarray, k: int) -> np.ndarray:
    """Each example's part (0 .. k-1) by its group's name: crc32, the same on every run and machine."""
    return np.array([zlib.crc32(str(g).encode()) % k for g in groups], dtype=np.int64)


def held_mask(pool: PoolArrays, held: Iterable[tuple[str, str]]) -> np.ndarray:
    """Examples of the held-out sources / kinds / group parts ("i/k": part i of k, from 1)."""
    mask = np.zeros(len(pool.labels), dtype=bool)
    for what, name in held:
        if what == "group":
            part, k = (int(x) for x in name.split("/"))
            mask |= group_parts(pool.groups, k) == part - 1
        else:
            mask |= (_sources(pool) if what == "source" else pool.kinds) == name
    return mask


def train_indices(pool: PoolArrays, held: Held) -> np.ndarray:
    """Everything but the held-out units, their groups and the calibration split."""
    mask = held_mask(pool, held)
    keep = ~mask & ~np.isin(pool.groups, np.unique(pool.groups[mask]))
    keep[pool.val_idx] = False
    return np.flatnonzero(keep)


def test_indices(pool: PoolArrays, unit: tuple[str, str], outer: Held = frozenset()) -> np.ndarray:
    """The scored examples of one unit (training-only kinds and the outer source excluded)."""
    sel = held_mask(pool, [unit]) & ~np.isin(pool.kinds, list(pool.train_only)) & ~held_mask(pool, outer)
    return np.flatnonzero(sel)


def folds_without(pool: PoolArrays, outer: str | None) -> tuple[str, list[Fold]]:
    """(basis, folds) over the evaluable sources other than `outer`; if fewer than two, their kinds; if that
    leaves fewer than two folds to score (one source of one kind), `GROUP_FOLDS` parts of its groups."""
    base: Held = frozenset({("source", outer)}) if outer is not None else frozenset()
    sources = [s for s in evaluable_sources(_sources(pool), pool.kinds, pool.labels, pool.train_only) if s != outer]
    if len(sources) >= 2:
        return "heldout_source", _folds(pool, base, [("source", s) for s in sources])
    folds = kind_folds(pool, outer)
    if len(folds) >= 2:
        return "heldout_kind", folds
    return "heldout_group", _folds(pool, base, [("group", f"{i}/{GROUP_FOLDS}") for i in range(1, GROUP_FOLDS + 1)])


def kind_folds(pool: PoolArrays, outer: str | None) -> list[Fold]:
    """One fold per kind with positives outside source `outer` (a train-only kind is never held out), `outer`
    held out beside it: leave-one-kind-out on the other sources, as the sweep's held-out kinds are on the pool."""
    base: Held = frozenset({("source", outer)}) if outer is not None else frozenset()
    rest = ~held_mask(pool, base) & ~np.isin(pool.kinds, list(pool.train_only)) & (pool.labels == 1)
    return _folds(pool, base, [("kind", str(k)) for k in sorted(set(pool.kinds[rest].tolist()))])


def _folds(pool: PoolArrays, base: Held, units: Sequence[tuple[str, str]]) -> list[Fold]:
    """One fold per unit held out beside `base`, where it has examples to score and its training side both labels."""
    folds = []
    for unit in units:
        held = base | {unit}
        train, test = train_indices(pool, held), test_indices(pool, unit, base)
        if len(test) and len(np.unique(pool.labels[train])) == 2:
            folds.append(Fold(unit[1], held, train, test))
    return folds


def unit_items(
    scores: np.ndarray, labels: np.ndarray, test: np.ndarray, control: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(scores, labels) a unit is judged on: its examples, or its positives against the control scores when it
    has no negatives; None without positives or with a non-finite score."""
    s, y = scores[test], labels[test]
    if not np.all(np.isfinite(s)) or not (y == 1).any():
        return None
    if (y == 0).any():
        return s, y
    return np.concatenate([s, control]), np.r_[np.ones(len(s)), np.zeros(len(control))]


def unit_auroc(scores: np.ndarray, labels: np.ndarray, test: np.ndarray, control: np.ndarray) -> float | None:
    """AUROC on a unit's examples; positives against the control scores when it has no negatives."""
    items = unit_items(scores, labels, test, control)
    return None if items is None else auroc(*items)


# -- fitting, planned by layer ------------------------------------------------------------------------------
class FoldScorer:
    """Fits each (configuration, held-out set) once, one layer at a time; keeps pool and control scores."""

    def __init__(self, pool: PoolArrays, layer_data: LayerFn, settings: NestedSettings) -> None:
        self.pool, self.layer_data, self.settings = pool, layer_data, settings
        self.memo: dict[tuple, tuple[np.ndarray, np.ndarray] | None] = {}
        self.n_fits = 0

    def run(self, requests: Iterable[tuple[SweepRow, Held]]) -> None:
        plan: dict[int, dict[tuple, dict[Held, set[str]]]] = {}
        for row, held in requests:
            if (_fit_key(row), held, row.aggregation) not in self.memo:
                plan.setdefault(row.layer, {}).setdefault(_fit_key(row), {}).setdefault(held, set()).add(
                    row.aggregation
                )
        from tqdm.auto import tqdm

        total = sum(len(helds) for keys in plan.values() for helds in keys.values())
        bar = tqdm(
            total=total, desc="held-out-source fits", unit="fit", disable=not self.settings.progress or not total
        )
        for layer in sorted(plan):
            data, control = self.layer_data(layer)
            for key, helds in plan[layer].items():
                for held, aggs in helds.items():
                    self._fit(key, held, sorted(aggs), data, control)
                    bar.update(1)
        bar.close()

    def _fit(self, key: tuple, held: Held, aggs: list[str], data: LayerData, control: LayerData) -> None:
        token_selection, layer, method, per_token, C = key
        st, pool = self.settings, self.pool
        train = train_indices(pool, held)
        if len(np.unique(pool.labels[train])) < 2:
            self.memo.update({(key, held, a): None for a in aggs})
            return
        spec = ProbeSpec(method, layer, token_selection, per_token, aggs[0], st.standardize, C=C)
        probe = fit_probe(spec, data, pool, train, st.seed, st.balance_kinds)
        self.n_fits += 1
        if method == "attention":  # its own pooling (training/attention_sweep.py): one score per example
            from probewatch.training.attention_sweep import score_attention

            attention = cast(Any, probe)
            scored = (
                score_attention(attention, data, token_selection),
                score_attention(attention, control, token_selection),
            )
            self.memo.update({(key, held, a): scored for a in aggs})
            return
        w, b = probe.raw_linear_form()
        objs = [Aggregation(method=a, window=st.window, alpha=st.alpha) for a in aggs]
        objs, s = scaled_scores(objs, w, b, data, train, token_selection)
        c = score_all(w, b, control, token_selection, objs)
        for a in aggs:
            self.memo[(key, held, a)] = (s[a], c[a])

    def get(self, row: SweepRow, held: Held) -> tuple[np.ndarray, np.ndarray] | None:
        return self.memo[(_fit_key(row), held, row.aggregation)]


# -- selection --------------------------------------------------------------------------------------------
def _tiebreak(row: SweepRow) -> tuple:
    return (round(row.val_recall_control or 0.0, 3), round(row.val_auroc or 0.0, 3), -row.layer)


def _guarded(rows: Sequence[SweepRow], margin: float) -> list[int]:
    """Indices of `rows` whose validation AUROC is within `margin` of the best of them (a row without one
    stays: nothing to judge it by). The guard every choice of the rule applies."""
    val = [r.val_auroc for r in rows if r.val_auroc is not None]
    if not val:
        return list(range(len(rows)))
    floor = max(val) - margin - 1e-9
    return [i for i, r in enumerate(rows) if r.val_auroc is None or r.val_auroc >= floor]


def eligible(scored: Sequence[tuple[SweepRow, ConfigScore]], margin: float = VAL_MARGIN) -> list[int]:
    """Indices of the configurations with fold scores whose validation AUROC is within `margin` of the best
    such configuration's (a row without one stays eligible: nothing to judge it by)."""
    valid = [i for i, (_, cs) in enumerate(scored) if cs.worst is not None and cs.mean is not None]
    return [valid[k] for k in _guarded([scored[i][0] for i in valid], margin)]


def guarded_first(candidates: Sequence[SweepRow], margin: float = VAL_MARGIN) -> int:
    """Where no fold can be scored (too few examples left to split): the first candidate, in pre-screen order,
    whose validation AUROC is within `margin` of the best candidate's. The pre-screen ranks by what the other
    source's held-out kinds predicted; the guard still applies, so a configuration that separates its own
    pool far worse (a `lat` direction at validation 0.55 beside logistic's 0.99) is never the fallback."""
    return _guarded(candidates, margin)[0]


def pick(
    scored: Sequence[tuple[SweepRow, ConfigScore]], tie: float = TIE, margin: float = VAL_MARGIN
) -> tuple[int, int]:
    """(index chosen by the rule, index the mean alone would choose) among the eligible configurations.

    The rule: the best worst fold; worst scores within `tie` of it are ties, broken by the mean (to
    0.001), then the sweep's tie-breakers (recall at the control threshold, validation AUROC, layer).
    `margin` is the guard (`eligible`); `math.inf` turns it off."""
    valid, near = _near(scored, tie, margin)

    def by_mean(i: int) -> tuple:
        return (round(scored[i][1].mean, 3), *_tiebreak(scored[i][0]))  # type: ignore[arg-type]

    return max(near, key=by_mean), max(valid, key=by_mean)


def _near(scored: Sequence[tuple[SweepRow, ConfigScore]], tie: float, margin: float) -> tuple[list[int], list[int]]:
    """(eligible indices, those whose worst fold is within `tie` of the best worst: the rule's ties)."""
    valid = eligible(scored, margin)
    if not valid:
        raise ValueError("no configuration has a score on the folds")
    best_worst = max(scored[i][1].worst for i in valid)  # type: ignore[type-var]
    return valid, [i for i in valid if scored[i][1].worst >= best_worst - tie - 1e-9]  # type: ignore[operator]


def tied_rows(
    candidates: Sequence[SweepRow], folds: Sequence[Fold], scorer: FoldScorer, control_ref: np.ndarray
) -> list[SweepRow]:
    """The candidates the rule counts as tied on the worst fold (the chosen one among them; empty where no fold
    could be scored). The mean breaks their tie to 0.001, so on three or four noisy folds which of them is
    chosen can turn on a few pairs: their held-out AUROCs show how much the estimate rests on that."""
    scored = [(r, config_score(r, folds, scorer, control_ref)) for r in candidates]
    if not any(cs.worst is not None for _, cs in scored):
        return []
    _, near = _near(scored, TIE, scorer.settings.val_margin)
    return [scored[i][0] for i in near]


def kind_sources(pool: PoolArrays) -> dict[str, set[str]]:
    """Each kind's sources (a kind composed from every source, such as the long transcripts, has several)."""
    out: dict[str, set[str]] = {}
    for kind, src in zip(pool.kinds.tolist(), _sources(pool).tolist()):
        out.setdefault(str(kind), set()).add(str(src))
    return out


def prescreen(rows: Sequence[SweepRow], pool: PoolArrays, outer: str | None, k: int) -> list[SweepRow]:
    """The top-k rows by the sweep's held-out-kind AUROCs of the kinds outside `outer`, averaged per
    source: alternately the best by worst source and by mean (validation AUROC where no kind was held out),
    then up to k/2 more: the best row by mean of each method the top k lack."""
    sources_of = kind_sources(pool)

    def proxy(row: SweepRow) -> tuple[float, float]:
        per_source: dict[str, list[float]] = {}
        for kind, v in row.heldout_per_kind.items():
            srcs = sources_of.get(kind, {kind})
            if outer not in srcs and v is not None:
                per_source.setdefault(min(srcs), []).append(v)
        if not per_source:
            v = row.val_auroc if row.val_auroc is not None else -1.0
            return v, v
        means = [float(np.mean(vs)) for vs in per_source.values()]
        return float(np.mean(means)), min(means)

    scores = [proxy(r) for r in rows]
    by_mean = sorted(range(len(rows)), key=lambda i: (-scores[i][0], [-x for x in _tiebreak(rows[i])]))
    by_worst = sorted(range(len(rows)), key=lambda i: (-round(scores[i][1], 2), -scores[i][0]))
    chosen: list[int] = []
    for a, b in zip(by_worst, by_mean):
        for i in (a, b):
            if i not in chosen and len(chosen) < k:
                chosen.append(i)
    return [rows[i] for i in _with_every_method(chosen, by_mean, rows, k // 2)]


def _with_every_method(chosen: list[int], by_mean: list[int], rows: Sequence[SweepRow], extra: int) -> list[int]:
    """`chosen` followed by the best row by mean of each method it lacks, at most `extra` of them. A method that
    scores lower within sources (contrast pairs) may never reach the top k of a within-source proxy, and then
    would never be judged on held-out sources at all; it is added, not swapped in, so the top k stay as they
    were and the guard in `pick` decides whether it may be chosen."""
    out = list(chosen)
    have = {rows[i].method for i in out}
    for method in dict.fromkeys(rows[i].method for i in by_mean):
        if len(out) - len(chosen) >= extra:
            break
        if method not in have:
            out.append(next(i for i in by_mean if rows[i].method == method))
            have.add(method)
    return out


def config_score(row: SweepRow, folds: Sequence[Fold], scorer: FoldScorer, control_ref: np.ndarray) -> ConfigScore:
    """`row` (fitted by `scorer` on every fold) scored on each fold's held-out examples: mean, worst, per fold."""
    per: dict[str, float] = {}
    for fold in folds:
        got = scorer.get(row, fold.held)
        if got is None:
            continue
        v = unit_auroc(got[0], scorer.pool.labels, fold.test, got[1][control_ref])
        if v is not None:
            per[fold.name] = v
    vals = list(per.values())
    return ConfigScore(config_of(row), float(np.mean(vals)) if vals else None, min(vals) if vals else None, per)


def select(
    candidates: Sequence[SweepRow], basis: str, folds: Sequence[Fold], scorer: FoldScorer, control_ref: np.ndarray
) -> tuple[SweepRow, SourceSelection]:
    """Score the (already fitted) candidates on the folds and apply the rule."""
    scored = [(r, config_score(r, folds, scorer, control_ref)) for r in candidates]
    margin = scorer.settings.val_margin
    if not any(cs.worst is not None for _, cs in scored):
        first = scored[guarded_first(candidates, margin)]
        return first[0], SourceSelection("prescreen", [f.name for f in folds], len(candidates), first[1], first[1])
    i, j = pick(scored, margin=margin)
    free, _ = pick(scored, margin=math.inf)
    selection = SourceSelection(
        basis,
        [f.name for f in folds],
        len(candidates),
        scored[i][1],
        scored[j][1],
        n_eligible=len(eligible(scored, margin)),
        unguarded=scored[free][1] if free != i else None,
    )
    return scored[i][0], selection


# -- the two entry points -------------------------------------------------------------------------------------
def select_by_source(
    rows: Sequence[SweepRow],
    pool: PoolArrays,
    layer_data: LayerFn,
    control_cal: np.ndarray,
    settings: NestedSettings,
    scorer: FoldScorer | None = None,
) -> tuple[SweepRow, SourceSelection] | None:
    """The shipped choice by held-out source over the whole pool; None with fewer than two evaluable sources."""
    basis, folds = folds_without(pool, None)
    if basis != "heldout_source" or len(folds) < 2:
        return None
    scorer = scorer or FoldScorer(pool, layer_data, settings)
    candidates = prescreen(rows, pool, None, settings.top_k)
    scorer.run((r, f.held) for r in candidates for f in folds)
    return select(candidates, basis, folds, scorer, control_cal)


def nested_estimate(
    rows: Sequence[SweepRow],
    pool: PoolArrays,
    layer_data: LayerFn,
    control_cal: np.ndarray,
    control_held: np.ndarray,
    settings: NestedSettings,
    selected_on: tuple[float | None, str],
    heldout_kind_selected_on: float | None = None,
    scorer: FoldScorer | None = None,
) -> NestedEstimate | None:
    """Per outer source: select on the other sources, fit there, score the outer source. None with fewer
    than two evaluable sources. `selected_on`: (the shipped configuration's selection number, its basis)."""
    outers = evaluable_sources(_sources(pool), pool.kinds, pool.labels, pool.train_only)
    if len(outers) < 2:
        return None
    scorer = scorer or FoldScorer(pool, layer_data, settings)
    plans = {s: (folds_without(pool, s), prescreen(rows, pool, s, settings.top_k)) for s in outers}
    scorer.run((r, f.held) for (_, folds), cands in plans.values() for r in cands for f in folds)
    chosen = {s: select(cands, basis, folds, scorer, control_cal) for s, ((basis, folds), cands) in plans.items()}
    ties = {s: tied_rows(cands, folds, scorer, control_cal) for s, ((_, folds), cands) in plans.items()}
    scorer.run((row, frozenset({("source", s)})) for s, (row, _) in chosen.items())
    scorer.run((row, frozenset({("source", s)})) for s, rows in ties.items() for row in rows)
    outer = {
        s: _outer(s, row, sel, pool, scorer, control_cal, control_held, settings) for s, (row, sel) in chosen.items()
    }
    for s, rows in ties.items():
        if len(rows) > 1:  # the chosen row is among them
            outer[s].tied = _tied_aurocs(s, rows, pool, scorer, control_held)
    rates = {s: o.at_threshold.transfer_rate for s, o in outer.items() if o.at_threshold is not None}
    for s, (row, _) in chosen.items():  # the transfer limit learnt without s, measured on s
        at = outer[s].at_threshold
        others = [r for other, r in rates.items() if other != s and r is not None]
        if at is not None:
            at.transfer = _transfer_check(s, row, pool, scorer, control_cal, control_held, settings, others)
    estimate = summarise(outer, settings.top_k, selected_on, heldout_kind_selected_on, settings.val_margin)
    asked = [r for r in rates.values() if r is not None]
    if settings.hard_negative_fpr is not None and asked and min(asked) < settings.hard_negative_fpr:
        estimate.transfer_fpr = min(asked)
    return estimate


def _tied_aurocs(
    source: str, rows: Sequence[SweepRow], pool: PoolArrays, scorer: FoldScorer, control_held: np.ndarray
) -> list[float]:
    """Each tied choice, fitted without `source`, on it (sorted): what the estimate would read had the mean
    broken the tie otherwise."""
    values = (source_auroc(row, source, pool, scorer, control_held) for row in rows)
    return sorted(v for v in values if v is not None)


def source_auroc(
    row: SweepRow, source: str, pool: PoolArrays, scorer: FoldScorer, control_held: np.ndarray
) -> float | None:
    """`row` fitted without `source` (already run by `scorer`), scored on it as the outer fold scores it (positives
    against the held-out control where the source has no negatives); None where that fit could not be made."""
    got = scorer.get(row, frozenset({("source", source)}))
    if got is None:
        return None
    return unit_auroc(got[0], pool.labels, test_indices(pool, ("source", source)), got[1][control_held])


def _fold_point(source: str, pool: PoolArrays, s: np.ndarray, c: np.ndarray, control_cal: np.ndarray,
                settings: NestedSettings, transfer_fpr: float | None = None) -> tuple[Any, np.ndarray]:  # fmt: skip
    """(operating point, calibration negatives) of the fold without `source`, set as the shipped one is (the
    calibration positives cap the transfer limit there too)."""
    cal = pool.val_idx[~np.isin(pool.kinds[pool.val_idx], list(pool.train_only))]
    cal = cal[~held_mask(pool, {("source", source)})[cal]]
    hard, positives = cal[pool.labels[cal] == 0], cal[pool.labels[cal] == 1]
    point = operating_point(
        c[control_cal],
        settings.fpr,
        s[hard] if settings.hard_negative_fpr is not None else None,
        settings.hard_negative_fpr,
        positive_scores=s[positives] if positives.size else None,
        hard_negative_kinds=pool.kinds[hard] if settings.hard_negatives_per_kind else None,
        transfer_fpr=transfer_fpr,
    )
    return point, hard


def _transfer_check(
    source: str,
    row: SweepRow,
    pool: PoolArrays,
    scorer: FoldScorer,
    control_cal: np.ndarray,
    control_held: np.ndarray,
    settings: NestedSettings,
    other_rates: list[float],
) -> TransferCheck | None:
    """The fold without `source` thresholded with the transfer limit the other sources asked for."""
    got = scorer.get(row, frozenset({("source", source)}))
    if got is None:
        return None
    s, c = got
    point, _ = _fold_point(source, pool, s, c, control_cal, settings, min(other_rates, default=None))
    test = test_indices(pool, ("source", source))
    recall, fpr_negatives, fpr_control = _flagged_at(point.value, s, c, test, pool.labels[test], control_held)
    # the rate the limit applied: operating_point takes it only below hard_negative_fpr, with negatives to hold
    return TransferCheck(point.transfer_fpr, float(point.value), recall, fpr_negatives, fpr_control)


def _flagged_at(
    t: float, s: np.ndarray, c: np.ndarray, test: np.ndarray, y: np.ndarray, control_held: np.ndarray
) -> tuple[float | None, float | None, float]:
    """(recall, flagged negatives) on a held-out source's test items (`test`, labels `y`) and flagged held-out
    control at threshold `t`, from a fold's pool scores `s` and control scores `c`."""
    return (
        flagged_share(s[test][y == 1], t),
        flagged_share(s[test][y == 0], t),
        float((c[control_held] >= t).mean()),
    )


def _outer(
    source: str,
    row: SweepRow,
    selection: SourceSelection,
    pool: PoolArrays,
    scorer: FoldScorer,
    control_cal: np.ndarray,
    control_held: np.ndarray,
    settings: NestedSettings,
) -> OuterSource:
    """The chosen configuration fitted without `source`, scored and thresholded on it."""
    held: Held = frozenset({("source", source)})
    test = test_indices(pool, ("source", source))
    y = pool.labels[test]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    against = "own_negatives" if n_neg else "control"
    got = scorer.get(row, held)
    if got is None:
        return OuterSource(selection, against, n_pos, n_neg, None, None, None)
    s, c = got
    value = unit_auroc(s, pool.labels, test, c[control_held])
    point, hard = _fold_point(source, pool, s, c, control_cal, settings)
    t = point.value
    negatives = s[test][y == 0]
    asks = settings.hard_negative_fpr is not None and n_neg >= MIN_SOURCE_NEGATIVES and hard.size > 0
    recall, fpr_negatives, fpr_control = _flagged_at(t, s, c, test, y, control_held)
    at = HeldOutThreshold(
        threshold=float(t),
        set_by=point.set_by,
        recall=recall,
        fpr_negatives=fpr_negatives,
        fpr_control_heldout=fpr_control,
        transfer_rate=transfer_rate(s[hard], t, negatives, cast(float, settings.hard_negative_fpr)) if asks else None,
    )
    inner = selection.chosen.mean
    gap = inner - value if (inner is not None and value is not None) else None
    return OuterSource(selection, against, n_pos, n_neg, value, gap, at)


def mean_and_worst(aurocs: Mapping[str, float | None]) -> tuple[float | None, float | None, str | None]:
    """Mean, worst and worst source over the held-out sources that were scored (None where none was): the
    summary of the estimate and of its multi-layer step alike."""
    scored = {s: a for s, a in aurocs.items() if a is not None}
    if not scored:
        return None, None, None
    worst_source = min(scored, key=lambda s: scored[s])
    return float(np.mean(list(scored.values()))), scored[worst_source], worst_source


def summarise(
    outer: dict[str, OuterSource],
    top_k: int,
    selected_on: tuple[float | None, str],
    heldout_kind_selected_on: float | None,
    margin: float = VAL_MARGIN,
) -> NestedEstimate:
    """Mean and worst outer AUROC, and the optimism gaps."""
    mean, worst, worst_source = mean_and_worst({s: o.auroc for s, o in outer.items()})
    gaps = [o.gap for o in outer.values() if o.gap is not None]
    value, basis = selected_on
    low = [min(o.tied) if o.tied else o.auroc for o in outer.values() if o.auroc is not None]
    high = [max(o.tied) if o.tied else o.auroc for o in outer.values() if o.auroc is not None]
    any_tie = any(o.tied for o in outer.values())
    return NestedEstimate(
        rule=rule_text(margin),
        top_k=top_k,
        outer=outer,
        mean=mean,
        worst=worst,
        worst_source=worst_source,
        selected_on=value,
        selected_on_basis=basis,
        heldout_kind_selected_on=heldout_kind_selected_on,
        optimism_gap=(value - mean) if (value is not None and mean is not None) else None,
        mean_inner_gap=float(np.mean(gaps)) if gaps else None,
        tie_range=[float(np.mean(low)), float(np.mean(high))] if any_tie and low else None,
    )
