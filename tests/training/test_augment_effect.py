"""training/augment_effect.py: the plain and the augmented probe on the same splits, scored under assertions."""

from __future__ import annotations

import numpy as np
import pytest

from probewatch.data.dialogue import Dialogue, Message
from probewatch.training.augment import MONITORING_NOTICES, SINCERITY_PHRASES
from probewatch.training.augment_effect import (
    AS_WRITTEN,
    HELD_OUT_ASSERTIONS,
    HELD_OUT_NOTICES,
    PARAPHRASED,
    effect_rows,
    held_out_conditions,
)
from probewatch.training.datasets.scenarios import load_scenarios, scenario_dialogues, scenario_files
from probewatch.training.evasion import EVASION_INSTRUCTIONS, load_paraphrases


def _features(n: int, rng: np.random.Generator, sincere_honest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Dim 0 carries the label; dim 1 is 'sounds sincere', which honest answers do more often here."""
    y = np.repeat([0, 1], n // 2)
    X = rng.normal(size=(n, 6))
    X[:, 0] += 1.5 * y
    if sincere_honest:
        X[:, 1] += 1.5 * (1 - y)
    return X, y


def test_copies_with_the_assertion_on_both_labels_stop_it_moving_the_score():
    """With 'sincere' correlated with honesty in the fit data, an assertion (a shift along dim 1) pulls the
    positives' scores down; copies that carry the shift on both labels decorrelate it, so the augmented
    probe keeps its recall under the assertion and loses nothing on clean data."""
    rng = np.random.default_rng(0)
    X_fit, y_fit = _features(400, rng)
    g_fit = np.arange(len(y_fit))
    half = rng.permutation(len(y_fit))[:200]
    shift = np.zeros(6)
    shift[1] = 3.0
    copies = (X_fit[half] + shift, y_fit[half], g_fit[half])
    X_test, y_test = _features(400, rng)
    rows = effect_rows(
        "3",
        (X_fit, y_fit, g_fit),
        copies,
        (X_test, y_test),
        {"asserted": (X_test + shift, np.arange(len(y_test)))},
        C=1.0,
    )

    plain, augmented = rows
    assert (plain.training, augmented.training) == ("plain", "augmented") and plain.layers == augmented.layers == "3"
    assert (plain.n_fit, augmented.n_fit) == (400, 600)
    assert all(0.5 < row.clean.recall <= 1.0 and set(row.results) == {"asserted"} for row in rows)
    assert augmented.clean.auroc is not None and plain.clean.auroc is not None
    assert augmented.clean.auroc > plain.clean.auroc - 0.05  # dim 1 is informative on clean data: a small price
    p, a = plain.results["asserted"], augmented.results["asserted"]
    assert p.median_positive_change is not None and a.median_positive_change is not None
    assert p.median_positive_change < -1.0 and abs(a.median_positive_change) < 0.5 * abs(p.median_positive_change)
    assert a.recall > p.recall + 0.1


def test_held_out_assertions_are_not_training_phrases():
    assert not set(HELD_OUT_ASSERTIONS.values()) & set(SINCERITY_PHRASES)
    first_words = {p.split()[0].strip(",.:").lower() for p in SINCERITY_PHRASES}
    assert not {p.split()[0].strip(",.:").lower() for p in HELD_OUT_ASSERTIONS.values()} & first_words


def test_held_out_notices_are_not_training_notices_and_take_the_behaviours_evasion_instruction():
    assert not set(HELD_OUT_NOTICES.values()) & set(MONITORING_NOTICES)
    dialogue = Dialogue([Message("user", "Is it safe?"), Message("assistant", "Yes.")], 1, "g", "k")
    for behaviour in ("deception", "alignment_faking"):
        conditions = held_out_conditions("monitoring", behaviour)
        assert list(conditions) == ["instruction", "logged", "researchers"]
        assert not set(conditions) & set(held_out_conditions("sincerity", behaviour))
        text, rewrite = conditions["instruction"]
        assert text == EVASION_INSTRUCTIONS[behaviour]
        assert rewrite(dialogue).messages == [Message("system", text), *dialogue.messages]
    assert (
        held_out_conditions("monitoring", None)["instruction"][0] == EVASION_INSTRUCTIONS["deception"]
    )  # --data files
    text, rewrite = held_out_conditions("sincerity", "deception")["frank"]
    assert rewrite(dialogue).messages[-1] == Message("assistant", text + "Yes.")  # a new sentence keeps its capital
    with pytest.raises(ValueError, match="no held-out conditions for augmentation 'shouting'"):
        held_out_conditions("shouting", "deception")


def test_a_condition_on_some_test_items_is_scored_and_paired_on_those_items_only():
    """The paraphrase condition has versions of some test items only: its row counts those items, pairs the
    positives' change against the same items clean, and keeps the threshold set on the whole clean split."""
    rng = np.random.default_rng(1)
    X_fit, y_fit = _features(200, rng)
    X_test, y_test = _features(200, rng)
    index = np.flatnonzero(np.arange(len(y_test)) % 4 == 0)
    shift = np.zeros(6)
    shift[0] = -1.0  # the reworded items read less like the behaviour
    fit = (X_fit, y_fit, np.arange(len(y_fit)))
    copies = (X_fit[:10], y_fit[:10], np.arange(10))
    rows = effect_rows("5", fit, copies, (X_test, y_test), {"some": (X_test[index] + shift, index)}, C=1.0)
    for row in rows:
        got = row.results["some"]
        assert (got.n_positive, got.n_negative) == (int(y_test[index].sum()), int((y_test[index] == 0).sum()))
        assert got.median_positive_change is not None and got.median_positive_change < 0
        assert row.clean.n_positive + row.clean.n_negative == len(y_test)


def test_the_paraphrase_condition_rewords_the_answers_it_has_and_pairs_them_as_written():
    table = load_paraphrases()
    written = scenario_dialogues(load_scenarios(scenario_files()[0])[:2])
    other = Dialogue([Message("user", "Is it safe?"), Message("assistant", "Yes.")], 1, "g", "k")
    conditions = held_out_conditions("paraphrase", "deception")
    assert list(conditions) == [AS_WRITTEN, PARAPHRASED]
    as_written, reworded = conditions[AS_WRITTEN][1], conditions[PARAPHRASED][1]
    for d in written:
        assert as_written(d) is d
        got = reworded(d)
        assert got is not None and got.messages[-1].content == table[d.messages[-1].content]
    assert as_written(other) is None and reworded(other) is None  # no version: not scored under the condition
    assert not set(conditions) & {
        *held_out_conditions("sincerity", "deception"),
        *held_out_conditions("monitoring", None),
    }
