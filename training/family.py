"""Deception types and the per-type family of probes (issue 22, item 4), fitted on cached activations.

Deception is heterogeneous: a sandbagged answer, a false denial, a lie by omission and an instructed lie
need not share one direction, and targeted probes per type beat one universal probe in recent work. The
family trains one probe per type with the single probe's estimator and settings (the sweep's chosen
layer, method, C, token selection and aggregation: no new sweep, so it stays affordable), Platt-calibrates
each on held-out data so every member's score is a calibrated logit, and scores a generation by the
maximum over members. Its threshold comes from the same operating-point rule as the single probe
(`calibration.operating_point`: `fpr` of the control set's calibration half, `hard_negative_fpr` of the
pool's calibration negatives), applied to that maximum.

Training data per member: the type's own examples (both labels) plus the shared honest negatives: the
label-0 examples of every other kind (honest answers are honest whatever the type; without them a
narrow member fires on other types' honest text and the maximum inherits it) and the training-only
plain-traffic negatives. Platt scaling uses the same mix from the calibration split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from probewatch.probes.manifest import Aggregation
from probewatch.training.attention_sweep import probe_scorer
from probewatch.training.calibration import (
    CONTROL_FPR,
    MAX_FLAGGED_NEGATIVES,
    CalibrationError,
    OperatingPoint,
    operating_point,
    platt_fit,
)
from probewatch.training.features import LayerData
from probewatch.training.sweep import PoolArrays, ProbeSpec, fit_probe, in_calibrated_units, with_temperature

#: pool kind -> deception type (docs/training.md "Deception family"); kinds not listed fall under OTHER
DECEPTION_TYPES: dict[str, str] = {
    "sandbagging": "sandbagging",  # probewatch scenarios: deliberately worse answers
    "mm_sandbagging": "sandbagging",  # Mesa & Mask
    "denial_confession": "denial_confession",  # false denials vs confessions
    "lie_by_omission": "omission",
    "instructed_pairs": "instructed_lying",  # RepE / Azaria & Mitchell: told to be dishonest
    "liar_questions": "instructed_lying",  # how_to_catch_an_ai_liar
    "liar_math": "instructed_lying",
    "liar_self_knowledge": "instructed_lying",
    "instructed_same_answer": "instructed_lying",  # same answer, lying instruction: intent in the context
    "false_assertions": "instructed_lying",  # training-only: false statements asserted plainly
    "cover_story": "strategic_deception",  # insider-trading-style cover stories
    "sales_lie": "strategic_deception",  # lying to a customer for a sale
    "roleplay_excuse": "strategic_deception",  # role-play with an incentive to lie
    "mm_strategic_deception": "strategic_deception",
    "mm_honesty_evasion": "strategic_deception",  # evasive answers under pressure
    "mm_sycophancy": "sycophancy",  # Mesa & Mask: endorsing a user's false belief to please them
}
#: the type of a kind the table does not know (user data, reviewed incidents)
OTHER = "other"
#: label-0 kinds shared by every member and owned by none
SHARED_NEGATIVE_KINDS = ("plain_traffic",)
#: fewer fit positives or negatives than this and a type gets no member (reported as skipped)
MIN_PER_CLASS = 4


def type_of(kind: str, table: Mapping[str, str] = DECEPTION_TYPES) -> str | None:
    """The deception type of a pool kind; None for the shared negatives."""
    if kind in SHARED_NEGATIVE_KINDS:
        return None
    return table.get(kind, OTHER)


@dataclass
class Member:
    """One fitted, Platt-calibrated member: its type, kinds, probe and calibrated scores."""

    type: str
    kinds: list[str]
    probe: Any
    aggregation: Aggregation
    platt: tuple[float, float]
    scores: np.ndarray  # every pool example, calibrated logits
    control_scores: np.ndarray
    n_fit: dict[str, int]


@dataclass
class FamilyFit:
    """The family: its members, max scores over the pool and the control set, and its operating point."""

    members: list[Member]
    scores: np.ndarray
    control_scores: np.ndarray
    winners: np.ndarray  # per pool example, the index of the member holding the maximum (-1: none scored)
    point: OperatingPoint
    skipped: dict[str, str] = field(default_factory=dict)  # type -> why it has no member


def member_indices(pool: PoolArrays, idx: np.ndarray, kinds: Sequence[str]) -> np.ndarray:
    """The type's own examples among `idx` plus the shared honest negatives (every other label-0 example)."""
    own = np.isin(pool.kinds[idx], list(kinds))
    return idx[own | (pool.labels[idx] == 0)]


def types_in(pool: PoolArrays, table: Mapping[str, str] = DECEPTION_TYPES) -> dict[str, list[str]]:
    """type -> its kinds present in the pool (sorted), in first-seen order of types."""
    out: dict[str, list[str]] = {}
    for kind in sorted(set(pool.kinds.tolist())):
        t = type_of(kind, table)
        if t is not None:
            out.setdefault(t, []).append(kind)
    return out


def fit_member(
    spec: ProbeSpec,
    data: LayerData,
    control: LayerData,
    pool: PoolArrays,
    kinds: Sequence[str],
    fit_idx: np.ndarray,
    cal_idx: np.ndarray,
    base: Aggregation,
    seed: int,
    balance_kinds: bool,
) -> Member | str:
    """Fit and Platt-calibrate one type's probe; a string says why it cannot be (too few examples, anti-correlated)."""
    tr, cal = member_indices(pool, fit_idx, kinds), member_indices(pool, cal_idx, kinds)
    own_tr = tr[np.isin(pool.kinds[tr], list(kinds))]
    n_pos, n_neg = int((pool.labels[own_tr] == 1).sum()), int((pool.labels[tr] == 0).sum())
    if n_pos < MIN_PER_CLASS or n_neg < MIN_PER_CLASS:
        return f"{n_pos} positives / {n_neg} negatives to fit (needs {MIN_PER_CLASS} of each)"
    cal_y = pool.labels[cal]
    if (cal_y == 1).sum() == 0 or (cal_y == 0).sum() == 0:
        return "no positive (or negative) calibration example of its own"
    probe = fit_probe(spec, data, pool, tr, seed, balance_kinds)
    agg = base
    if spec.method != "attention":
        (agg,) = with_temperature([base], *probe.raw_linear_form(), data, tr, spec.token_selection)
    raw = probe_scorer(probe, spec.token_selection, agg)(data)
    try:
        slope, offset = platt_fit(raw[cal], cal_y)
    except CalibrationError as exc:
        return str(exc)
    probe.affine_(slope, offset)
    agg = in_calibrated_units(agg, slope)
    scored = probe_scorer(probe, spec.token_selection, agg)
    return Member(
        "",
        list(kinds),
        probe,
        agg,
        (slope, offset),
        scored(data),
        scored(control),
        {"positive": n_pos, "negative": n_neg},
    )


def max_over(rows: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(element-wise max over members ignoring NaN, index of the member holding it; -1 and NaN where none)."""
    stacked = np.vstack([np.asarray(r, dtype=np.float64) for r in rows])
    filled = np.where(np.isnan(stacked), -np.inf, stacked)
    winners = np.argmax(filled, axis=0)
    best = filled[winners, np.arange(stacked.shape[1])]
    none = ~np.isfinite(best) & np.isnan(stacked).all(axis=0)
    return np.where(none, np.nan, best), np.where(none, -1, winners)


def fit_family(
    spec: ProbeSpec,
    data: LayerData,
    control: LayerData,
    pool: PoolArrays,
    fit_idx: np.ndarray,
    cal_idx: np.ndarray,
    control_cal: np.ndarray,
    hard_negatives: np.ndarray | None,
    base: Aggregation,
    fpr: float = CONTROL_FPR,
    hard_negative_fpr: float | None = MAX_FLAGGED_NEGATIVES,
    seed: int = 0,
    balance_kinds: bool = True,
    table: Mapping[str, str] = DECEPTION_TYPES,
    hard_negatives_per_kind: bool = True,
    transfer_fpr: float | None = None,
) -> FamilyFit:
    """One member per type of the pool (fitted on `fit_idx`, calibrated on `cal_idx`), their maximum, and the
    family's operating point on the maximum. `transfer_fpr`: the share of the calibration negatives the single
    probe's nested held-out-source estimate allowed (a rate, so it carries over to the family's own score
    scale). Raises ValueError when no type can have a member."""
    members: list[Member] = []
    skipped: dict[str, str] = {}
    for t, kinds in types_in(pool, table).items():
        got = fit_member(spec, data, control, pool, kinds, fit_idx, cal_idx, base, seed, balance_kinds)
        if isinstance(got, str):
            skipped[t] = got
            continue
        got.type = t
        members.append(got)
    if not members:
        raise ValueError(f"no deception type has enough data for a family member: {skipped}")
    scores, winners = max_over([m.scores for m in members])
    control_scores, _ = max_over([m.control_scores for m in members])
    hard = scores[hard_negatives] if hard_negative_fpr is not None and hard_negatives is not None else None
    per_kind = pool.kinds[hard_negatives] if hard is not None and hard_negatives_per_kind else None
    positives = cal_idx[(pool.labels[cal_idx] == 1) & ~np.isin(pool.kinds[cal_idx], list(pool.train_only))]
    point = operating_point(
        control_scores[control_cal],
        fpr,
        hard,
        hard_negative_fpr,
        positive_scores=scores[positives] if positives.size else None,  # caps the transfer limit, as the single's
        hard_negative_kinds=per_kind,
        transfer_fpr=transfer_fpr,
    )
    return FamilyFit(members, scores, control_scores, winners, point, skipped)
