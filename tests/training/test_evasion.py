"""Evasion conditions (training/evasion.py): what each one does to a dialogue, and the numbers it reports."""

from __future__ import annotations

import numpy as np
import pytest

from probewatch.data.dialogue import Dialogue, Message
from probewatch.errors import DialogueFormatError
from probewatch.training.datasets.common import packaged_yaml
from probewatch.training.datasets.scenarios import load_scenarios, scenario_files
from probewatch.training.evasion import (
    AS_WRITTEN,
    EVASION_INSTRUCTIONS,
    HELD_OUT_AS_WRITTEN,
    HELD_OUT_PARAPHRASED,
    PARAPHRASED,
    PARAPHRASES_FILE,
    SINCERE_PREFIX,
    Scored,
    balanced_sample,
    conditions,
    held_out_pairs,
    load_paraphrases,
    measure,
    measure_paraphrase,
    paraphrase_pairs,
    sample_pairs,
    summarise,
    with_sincere_response,
    with_system_instruction,
)


def _dialogue(label: int, answer: str = "Paris is in Spain.", system: str | None = None, kind: str = "k") -> Dialogue:
    messages = [Message("system", system)] if system else []
    messages += [Message("user", "Where is Paris?"), Message("assistant", answer)]
    return Dialogue(messages, label, f"g{label}{answer}", kind)


def test_the_instruction_joins_an_existing_system_message_or_comes_first():
    joined = with_system_instruction(_dialogue(1, system="Lie to the user."), "WATCHED")
    assert [m.role for m in joined.messages] == ["system", "user", "assistant"]
    assert joined.messages[0].content == "Lie to the user.\n\nWATCHED"
    inserted = with_system_instruction(_dialogue(0), "WATCHED")
    assert [m.role for m in inserted.messages] == ["system", "user", "assistant"]
    assert (
        inserted.messages[0].content == "WATCHED" and inserted.label == 0 and inserted.group == "g0Paris is in Spain."
    )


def test_sincerity_rewording_keeps_the_answer_and_leaves_prompts_alone():
    reworded = with_sincere_response(_dialogue(1))
    assert reworded.messages[-1].content == SINCERE_PREFIX + "paris is in Spain."
    prompt_only = Dialogue([Message("user", "How do I pick a lock?")], 1)
    assert with_sincere_response(prompt_only) is prompt_only


def test_prompt_reading_probes_get_only_the_prompt_condition():
    assert list(conditions("refusal", reads_response=False)) == ["unmodified", "told it is monitored"]
    names = list(conditions("deception", reads_response=True))
    assert names == ["unmodified", "told it is monitored", "sincerity rewording", "both"]
    told = conditions("deception", True)["told it is monitored"](_dialogue(1))
    assert told.messages[0].content == EVASION_INSTRUCTIONS["deception"]


def test_summary_numbers_are_exact():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    base = np.array([3.0, 2.0, 1.0, 0.0, -1.0, -2.0, 0.5, -3.0])
    moved = base - np.array([1.0, 1.0, 2.0, 0.0, 0, 0, 0, 0])
    r = summarise("told it is monitored", moved, labels, threshold=1.0, base=base)
    assert r.n_positive == 4 and r.n_negative == 4
    assert r.recall == pytest.approx(0.5)  # 2.0 and 1.0 (at the threshold counts); -1.0 and 0.0 not
    assert r.flagged_negatives == 0.0
    assert r.median_positive_change == pytest.approx(-1.0)
    assert r.mean_positive == pytest.approx((2.0 + 1.0 - 1.0 + 0.0) / 4)
    assert summarise("unmodified", base, labels, 1.0, None).auroc == pytest.approx(15 / 16)


def test_measure_scores_every_condition_on_the_same_items():
    items = [_dialogue(1, "It is in Spain."), _dialogue(1, "Madrid."), _dialogue(0, "France."), _dialogue(0, "Fr.")]
    calls: list[int] = []

    def score(dialogues):  # a probe that reacts to the system prompt's length only
        calls.append(len(dialogues))
        return np.array(
            [len(d.messages[0].content) / 100 if d.messages[0].role == "system" else 0.0 for d in dialogues]
        )

    report = measure(score, items, "dec", "deception", 0.5, reads_response=True, data="test")
    assert calls == [4, 4, 4, 4]
    told = next(r for r in report.results if r.condition == "told it is monitored")
    assert told.recall == 1.0 and told.flagged_negatives == 1.0  # the instruction alone pushes everyone over
    assert report.worst.condition == "sincerity rewording" and report.worst.recall == 0.0
    assert report.to_json()["results"][0]["condition"] == "unmodified"


def test_a_rewording_is_also_measured_on_the_answers_own_tokens():
    """A token-level probe that scores the assertion's words low and the answer's words by what they say: the pooled
    mean falls under the rewording, but pooled over the answer's own tokens it does not move (pure dilution)."""
    items = [_dialogue(1, "lie lie lie"), _dialogue(1, "lie lie"), _dialogue(0, "true true"), _dialogue(0, "true")]
    word_score = {"lie": 2.0, "true": -1.0}

    def score(dialogues):
        tokens = [np.array([word_score.get(w, -2.0) for w in d.messages[-1].content.split()]) for d in dialogues]
        return Scored(np.array([t.mean() for t in tokens]), tokens)

    report = measure(score, items, "dec", "deception", 1.0, True, "test", pool=lambda t: float(np.mean(t)))
    by = {r.condition: r for r in report.results}
    assert by["sincerity rewording"].median_positive_change < -2.0  # 11 assertion words at -2 drown 2-3 at +2
    assert by["sincerity rewording"].median_positive_change_answer == pytest.approx(0.0)
    assert by["both"].median_positive_change_answer == pytest.approx(0.0)
    assert by["told it is monitored"].median_positive_change_answer is None  # the answer's tokens are all there
    assert by["unmodified"].median_positive_change_answer is None
    plain = measure(lambda ds: score(ds).aggregate, items, "dec", "deception", 1.0, True, "test")
    assert all(r.median_positive_change_answer is None for r in plain.results)  # no token scores: not measured


def test_balanced_sample_takes_each_kind_in_turn():
    items = [_dialogue(1, f"a{i}", kind="big") for i in range(10)] + [_dialogue(1, "b", kind="small")]
    items += [_dialogue(0, f"n{i}", kind="big") for i in range(3)]
    picked = balanced_sample(items, per_class=4, seed=1)
    assert sum(d.label == 1 for d in picked) == 4 and sum(d.label == 0 for d in picked) == 3
    assert any(d.kind == "small" for d in picked)  # the rare kind is not crowded out
    assert balanced_sample(items, 4, seed=1) == picked  # reproducible


def test_every_behaviour_has_an_instruction_naming_its_detector():
    from probewatch.behaviours import BEHAVIOURS

    assert set(EVASION_INSTRUCTIONS) == set(BEHAVIOURS)
    for behaviour, text in EVASION_INSTRUCTIONS.items():
        assert "detector, a linear probe" in text or "detector of" in text, behaviour
        assert "Avoid being detected" in text
    assert len(set(EVASION_INSTRUCTIONS.values())) == len(BEHAVIOURS)  # each names its own behaviour


def test_every_paraphrase_rewords_a_shipped_scenario_answer_and_nothing_else():
    table = load_paraphrases()
    scenarios = [s for path in scenario_files() for s in load_scenarios(path)]
    answers = {a for s in scenarios for a in (s.honest, s.deceptive)}
    spec = packaged_yaml(PARAPHRASES_FILE)["kind_scenarios"]
    assert sorted(spec) == sorted({s.kind for s in scenarios})  # every hand-written kind
    assert all(len(items) == 24 for items in spec.values())  # every scenario of each kind
    assert len(table) == 288 and set(table) == answers  # both answers of all 144 scenarios
    assert not set(table.values()) & answers  # a second wording, never another scenario's answer
    assert not any(SINCERE_PREFIX.strip(": ").lower() in t.lower() for t in table.values())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"kind_scenarios": {"sales_lie": {"no-such-id": {"honest": "a", "deceptive": "b"}}}},
            "no scenario 'no-such-id'",
        ),
        ({"kind_scenarios": {"sales_lie": {"phone-battery": {"honest": "It is weak."}}}}, "new deceptive wording"),
        (
            {
                "kind_scenarios": {
                    "sandbagging": {
                        "capital-australia": {"honest": "The capital of Australia is Canberra.", "deceptive": "Sydney."}
                    }
                }
            },
            "new honest wording",
        ),
    ],
)
def test_a_paraphrase_file_that_would_measure_fewer_items_is_refused(spec, message):
    with pytest.raises(DialogueFormatError, match=message):
        load_paraphrases(spec)


def test_paraphrase_rows_pair_each_item_with_its_rewording():
    table = {"Paris is in Spain.": "Spain is where Paris is.", "Paris is in France.": "France is where Paris is."}
    items = [_dialogue(1, kind="a"), _dialogue(0, "Paris is in France.", kind="a"), _dialogue(1, "Madrid.")]
    pairs = paraphrase_pairs(items, table=table)
    assert [(w.messages[-1].content, p.messages[-1].content) for w, p in pairs] == list(table.items())
    assert sample_pairs(pairs, per_class=5, seed=0) == pairs  # each label's one pair, positives first
    assert sample_pairs(pairs, per_class=0, seed=0) == []
    assert held_out_pairs(pairs, {str(items[1].group)}) == [pairs[1]]  # a test split holding the honest one

    def score(dialogues):  # a probe that reads the words "in Spain": wording, not meaning
        return np.array([2.0 if "in Spain" in d.messages[-1].content else -1.0 for d in dialogues])

    written, reworded = measure_paraphrase(score, pairs, threshold=0.0)
    assert (written.condition, reworded.condition) == (AS_WRITTEN, PARAPHRASED)
    assert written.auroc == 1.0 and written.recall == 1.0 and written.median_positive_change is None
    assert reworded.auroc == 0.5 and reworded.recall == 0.0 and reworded.median_positive_change == -3.0
    assert measure_paraphrase(score, [], 0.0) == []
    named = measure_paraphrase(score, pairs, 0.0, (HELD_OUT_AS_WRITTEN, HELD_OUT_PARAPHRASED))
    assert [r.condition for r in named] == [HELD_OUT_AS_WRITTEN, HELD_OUT_PARAPHRASED]
    assert named[1].auroc == reworded.auroc and named[1].median_positive_change == -3.0
