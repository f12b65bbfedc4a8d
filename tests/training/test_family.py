"""The deception family on synthetic activations: one member per type, Platt-calibrated, scored by the maximum."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from probewatch.metrics import auroc
from probewatch.probes.manifest import Aggregation
from probewatch.training.family import DECEPTION_TYPES, OTHER, fit_family, max_over, type_of, types_in
from probewatch.training.family_eval import family_report, heldout_kinds, markdown_table, per_type
from probewatch.training.features import LayerData
from probewatch.training.sweep import PoolArrays, ProbeSpec

D = 24
#: kind -> (type, planted direction index): two sandbagging kinds share a direction, the others differ
KINDS = {"sandbagging": 0, "mm_sandbagging": 0, "denial_confession": 1, "lie_by_omission": 2, "liar_questions": 3}


def _pool(seed: int = 0, per_kind: int = 40, tokens: int = 5):
    """Paired examples per kind; label 1 shifts every token along its type's direction."""
    rng = np.random.default_rng(seed)
    rows, offsets, labels, kinds, groups = [], [0], [], [], []
    for kind, direction in KINDS.items():
        for i in range(per_kind):
            base = rng.normal(size=D)
            for label in (0, 1):
                x = base + 0.5 * rng.normal(size=(tokens, D))
                if label:
                    x[:, direction] += 4.0
                rows.append(x)
                offsets.append(offsets[-1] + tokens)
                labels.append(label)
                kinds.append(kind)
                groups.append(f"{kind}:{i}")
    n = len(labels)
    order = rng.permutation(per_kind * len(KINDS))  # split by pair
    pair = np.arange(n) // 2
    fit_pairs, val_pairs = set(order[: len(order) // 2]), set(order[len(order) // 2 : 3 * len(order) // 4])
    fit_idx = np.flatnonzero([p in fit_pairs for p in pair])
    val_idx = np.flatnonzero([p in val_pairs for p in pair])
    test_idx = np.setdiff1d(np.arange(n), np.r_[fit_idx, val_idx])
    data = LayerData(1, np.concatenate(rows).astype(np.float32), np.array(offsets), np.zeros((n, D), np.float32))
    pool = PoolArrays(np.array(labels), np.array(groups), np.array(kinds), fit_idx, val_idx, test_idx)
    control_rows = rng.normal(size=(60 * tokens, D)).astype(np.float32)
    control = LayerData(1, control_rows, np.arange(0, 60 * tokens + 1, tokens), np.zeros((60, D), np.float32))
    return data, pool, control


SPEC = ProbeSpec("logistic", 1, "response", False, "max", None, C=0.1)
BASE = Aggregation(method="max")


def test_every_deception_kind_of_the_pool_has_a_type():
    root = Path(__file__).resolve().parents[2] / "training" / "datasets"
    source = (root / "deception.py").read_text()
    from probewatch.training.datasets.deception import MM_KINDS

    named = ("instructed_pairs", "liar_questions", "liar_math", "liar_self_knowledge", "instructed_same_answer",
             "false_assertions")  # fmt: skip
    assert all(f'"{k}"' in source for k in named)  # the builder's kind names as written there
    kinds = set(named) | {f"mm_{k}" for k in MM_KINDS}
    kinds |= {re.search(r"^kind: (\w+)", p.read_text(), re.M).group(1) for p in (root / "scenarios").glob("*.yaml")}
    unknown = sorted(k for k in kinds if k not in DECEPTION_TYPES)
    assert not unknown, unknown
    assert {DECEPTION_TYPES[k] for k in kinds} == {
        "sandbagging", "denial_confession", "omission", "instructed_lying", "strategic_deception", "sycophancy"
    }  # fmt: skip
    assert type_of("plain_traffic") is None and type_of("reviewed_incidents") == OTHER


def test_family_members_per_type_and_score_is_their_maximum():
    data, pool, control = _pool()
    fit = fit_family(
        SPEC, data, control, pool, pool.fit_idx, pool.val_idx, np.arange(60), None, BASE, hard_negative_fpr=None
    )
    assert [m.type for m in fit.members] == ["denial_confession", "instructed_lying", "omission", "sandbagging"]
    assert types_in(pool)["sandbagging"] == ["mm_sandbagging", "sandbagging"]
    stacked = np.vstack([m.scores for m in fit.members])
    np.testing.assert_array_equal(fit.scores, stacked.max(axis=0))
    np.testing.assert_array_equal(fit.winners, stacked.argmax(axis=0))
    np.testing.assert_array_equal(fit.control_scores, np.vstack([m.control_scores for m in fit.members]).max(axis=0))
    # each member reads its own direction: high AUROC on its own type's test items
    report = per_type(fit, pool, None)
    for t, row in report.items():
        assert row["auroc_member"] > 0.9, (t, row)
        assert row["wins_on_positives"] > 0.5, (t, row)  # the type's own member holds the max on its positives
    assert 0.9 < auroc(fit.scores[pool.test_idx], pool.labels[pool.test_idx]) <= 1.0
    # calibrated logits: a member's positives sit above 0 on average and its negatives below
    m = fit.members[0]
    own = pool.test_idx[np.isin(pool.kinds[pool.test_idx], m.kinds)]
    assert m.scores[own][pool.labels[own] == 1].mean() > 0 > m.scores[own][pool.labels[own] == 0].mean()
    # threshold: 1% of the control set (no hard negatives asked for)
    assert (fit.control_scores >= fit.point.value).mean() <= 0.01 + 1e-9
    assert fit.point.set_by == "control"


def test_family_threshold_honours_the_hard_negative_rule():
    data, pool, control = _pool(seed=1)
    hard = pool.val_idx[pool.labels[pool.val_idx] == 0]
    fit = fit_family(SPEC, data, control, pool, pool.fit_idx, pool.val_idx, np.arange(60), hard, BASE, 0.01, 0.2)
    assert (fit.scores[hard] >= fit.point.value).mean() <= 0.2 + 1e-9
    assert fit.point.value == max(fit.point.control_threshold, fit.point.hard_negative_threshold)
    for kind in set(pool.kinds[hard].tolist()):  # and on each kind's own negatives (5 or more of them)
        own = hard[pool.kinds[hard] == kind]
        assert own.size < 5 or (fit.scores[own] >= fit.point.value).mean() <= 0.2 + 1e-9, kind


def test_family_threshold_takes_the_transfer_limit_as_a_rate_of_its_own_negatives():
    data, pool, control = _pool(seed=1)
    hard = pool.val_idx[pool.labels[pool.val_idx] == 0]
    plain = fit_family(SPEC, data, control, pool, pool.fit_idx, pool.val_idx, np.arange(60), hard, BASE, 0.01, 0.2)
    limited = fit_family(
        SPEC, data, control, pool, pool.fit_idx, pool.val_idx, np.arange(60), hard, BASE, 0.01, 0.2, transfer_fpr=0.05
    )
    np.testing.assert_array_equal(limited.scores, plain.scores)  # same members: only the threshold moves
    # the rate the single probe's held-out sources asked for, measured on the family's own (max) score
    assert (limited.scores[hard] >= limited.point.transfer_threshold).mean() <= 0.05 + 1e-9
    assert limited.point.value == max(plain.point.value, limited.point.transfer_threshold)
    assert limited.point.value > plain.point.value and limited.point.set_by == "transfer"
    report = family_report(limited, pool, np.arange(60), None, None, {}, {}, "dec-family",
                           {m.type: f"dec-{m.type}" for m in limited.members})  # fmt: skip
    assert report["threshold"]["transfer_fpr"] == 0.05 and report["threshold"]["set_by"] == "transfer"
    plain_report = family_report(plain, pool, np.arange(60), None, None, {}, {}, "dec-family",
                                 {m.type: f"dec-{m.type}" for m in plain.members})  # fmt: skip
    assert "transfer_fpr" not in plain_report["threshold"]  # a family without the limit keeps its old report


def test_type_with_too_little_data_is_skipped_and_reported():
    data, pool, control = _pool(seed=2)
    keep = ~((pool.kinds == "lie_by_omission") & (pool.labels == 1))
    pool.fit_idx = pool.fit_idx[keep[pool.fit_idx]]
    fit = fit_family(
        SPEC, data, control, pool, pool.fit_idx, pool.val_idx, np.arange(60), None, BASE, hard_negative_fpr=None
    )
    assert "omission" in fit.skipped and "0 positives" in fit.skipped["omission"]
    assert "omission" not in [m.type for m in fit.members]


def test_max_over_skips_members_without_tokens():
    best, who = max_over([np.array([1.0, np.nan, np.nan]), np.array([0.5, 2.0, np.nan])])
    assert best[:2].tolist() == [1.0, 2.0] and np.isnan(best[2])
    assert who.tolist() == [0, 1, -1]


def test_report_and_table_beside_the_single_probe():
    data, pool, control = _pool(seed=3, per_kind=24)
    fit = fit_family(
        SPEC, data, control, pool, pool.fit_idx, pool.val_idx, np.arange(60), None, BASE, hard_negative_fpr=None
    )
    held = heldout_kinds(SPEC, data, control, pool, BASE, 0, True)
    assert set(held) == set(KINDS)
    # mm_sandbagging held out: the sandbagging member trained on `sandbagging` (same direction) still finds it
    assert held["mm_sandbagging"] > 0.9
    single = fit.members[0].scores  # stands in for the universal probe
    report = family_report(fit, pool, np.arange(60), single, 0.0, held, dict.fromkeys(KINDS, 0.5), "dec-family",
                           {m.type: f"dec-{m.type}" for m in fit.members})  # fmt: skip
    assert report["heldout_kind"]["single_mean"] == 0.5
    assert report["test"]["family"]["auroc"] == pytest.approx(
        auroc(fit.scores[pool.test_idx], pool.labels[pool.test_idx])
    )
    table = markdown_table(report)
    assert "| sandbagging | mm_sandbagging, sandbagging |" in table and "**whole test split**" in table


def test_heldout_kinds_shows_one_bar_step_per_fold(capsys):
    # on the deception pool this stage runs for 8 to 17 minutes: `probewatch train --family` shows a bar over it
    data, pool, control = _pool(seed=3, per_kind=24)
    quiet = heldout_kinds(SPEC, data, control, pool, BASE, 0, True)
    assert "family held-out kinds" not in capsys.readouterr().err
    shown = heldout_kinds(SPEC, data, control, pool, BASE, 0, True, progress=True)
    err = capsys.readouterr().err
    n = len(list(pool.loko()))
    assert "family held-out kinds" in err and f"{n}/{n}" in err and n == len(KINDS)
    assert shown == quiet  # the bar changes nothing it measures
