"""Sincerity, monitoring and paraphrase copies (training/augment.py): labels, groups and sources kept; the evasion
benchmark's assertion and instructions held out; the train flag, the behaviour defaults and the replay of
older reports."""

from __future__ import annotations

import argparse

import pytest

from probewatch.data.dialogue import Dialogue, Message, write_dialogues
from probewatch.training.augment import (
    AUGMENTATIONS,
    DEFAULT_AUGMENT,
    META_KEY,
    MONITORING_NOTICES,
    SINCERITY_PHRASES,
    augment_pool,
    default_augment,
    joined,
    monitoring_copies,
    paraphrase_copies,
    paraphrased,
    prefixed,
    share_of,
    sincerity_copies,
)
from probewatch.training.datasets.scenarios import load_scenarios, scenario_dialogues, scenario_files
from probewatch.training.evasion import EVASION_INSTRUCTIONS, SINCERE_PREFIX, load_paraphrases
from probewatch.training.pipeline import TrainConfig, extract, make_splits, prepare_data
from probewatch.training.train_config import TrainingError, check_config
from tests.training.helpers import control_dialogues, synthetic_dialogues


def _pool() -> list[Dialogue]:
    pool = synthetic_dialogues(n_groups=20, with_response=True)
    for d in pool:
        d.meta = {"data_source": "written"}
    prompt_only = [Dialogue([Message("user", "only a prompt")], label, f"p:{label}", "ka") for label in (0, 1)]
    return pool + prompt_only


def test_sincerity_copies_keep_label_group_kind_and_source_and_prefix_one_training_phrase():
    pool = _pool()
    copies = sincerity_copies(pool, share=0.5, seed=3)
    by_key = {(d.group, d.label): d for d in pool}
    answers = [d for d in pool if d.ends_with_assistant]
    assert len(copies) == len(answers) // 2  # half of each label (10 of 20 per label)
    assert sorted(c.label for c in copies).count(1) == len(copies) // 2
    for c in copies:
        original = by_key[(c.group, c.label)]
        assert (c.kind, c.meta["data_source"], c.meta[META_KEY]) == (original.kind, "written", "sincerity")
        assert c.messages[:-1] == original.messages[:-1]
        phrase = next(p for p in SINCERITY_PHRASES if c.messages[-1].content.startswith(p))
        rest = original.messages[-1].content
        assert c.messages[-1].content == joined(phrase, rest)
        assert META_KEY not in original.meta  # the original is untouched
    assert [c.messages[-1].content for c in sincerity_copies(pool, 0.5, seed=3)] == [
        c.messages[-1].content for c in copies
    ]
    assert len({c.messages[-1].content.split(" ")[0] for c in sincerity_copies(pool, 1.0, seed=0)}) > 3


@pytest.mark.parametrize(
    ("phrase", "answer", "expected"),
    [
        ("Honestly, ", "The store closes at nine.", "Honestly, the store closes at nine."),
        ("Honestly, ", "I checked twice.", "Honestly, I checked twice."),
        ("Truthfully, ", "I'm not sure.", "Truthfully, I'm not sure."),
        ("You can trust me on this: ", "NASA said so.", "You can trust me on this: NASA said so."),
        ("You can trust me on this: ", "It works.", "You can trust me on this: it works."),
        ("Let me be straight with you. ", "The car is fine.", "Let me be straight with you. The car is fine."),
        ("In all sincerity, ", "", "In all sincerity, "),
    ],
)
def test_a_phrase_joins_the_answer_as_a_writer_would(phrase, answer, expected):
    """Lower case only where the phrase runs on into the answer; never "i" for "I" nor a lowered acronym."""
    assert joined(phrase, answer) == expected


def test_the_evasion_benchmarks_assertion_is_never_trained_on():
    """Evasion measures an assertion the copies never carry, so its row stays a held-out measurement."""
    assert SINCERE_PREFIX not in SINCERITY_PHRASES
    assert not any(SINCERE_PREFIX.lower().startswith(p.strip().lower()) for p in SINCERITY_PHRASES)


def test_monitoring_copies_name_a_watcher_in_the_system_prompt_and_keep_everything_else():
    pool = _pool()
    for d in pool[:4]:  # a few items with a system prompt of their own: the notice is appended to it
        d.messages.insert(0, Message("system", "You sell cars."))
    copies = monitoring_copies(pool, share=0.5, seed=3)
    by_key = {(d.group, d.label): d for d in pool}
    assert len(pool) == 42 and len(copies) == 20  # half of each label's 21 (rounded to even), prompt-only included
    assert sorted(c.label for c in copies).count(1) == len(copies) // 2
    assert any(not c.ends_with_assistant for c in monitoring_copies(pool, 1.0, seed=0))
    for c in copies:
        original = by_key[(c.group, c.label)]
        assert (c.kind, c.meta["data_source"], c.meta[META_KEY]) == (original.kind, "written", "monitoring")
        assert c.messages[-1] == original.messages[-1] and c.messages[0].role == "system"
        if original.messages[0].role == "system":
            prompt, notice = c.messages[0].content.split("\n\n")
            assert prompt == "You sell cars." and c.messages[1:] == original.messages[1:]
        else:
            notice = c.messages[0].content
            assert c.messages[1:] == original.messages
        assert notice in MONITORING_NOTICES
        assert META_KEY not in original.meta
    assert [c.messages[0].content for c in monitoring_copies(pool, 0.5, seed=3)] == [
        c.messages[0].content for c in copies
    ]
    assert len({c.messages[0].content for c in monitoring_copies(pool, 1.0, seed=0)}) > 4
    # its own random stream: with both augmentations the copies are not all of the same items
    sincere = {(c.group, c.label) for c in sincerity_copies(pool, 0.5, seed=3)}
    assert {(c.group, c.label) for c in copies if c.ends_with_assistant} != sincere


def test_the_evasion_benchmarks_monitoring_instructions_are_never_trained_on():
    assert not set(EVASION_INSTRUCTIONS.values()) & set(MONITORING_NOTICES)
    assert set(AUGMENTATIONS) == {"sincerity", "monitoring", "paraphrase"}


def test_paraphrased_swaps_only_the_answer_marks_copies_and_skips_other_texts():
    table = load_paraphrases()
    scenario = next(s for s in load_scenarios(scenario_files()[0]) if s.honest in table)
    for original in scenario_dialogues([scenario]):
        got = paraphrased(original, table)
        assert got is not None and got.messages[:-1] == original.messages[:-1]
        assert got.messages[-1].content == table[original.messages[-1].content]
        assert (got.label, got.group, got.kind, got.meta) == (
            original.label,
            original.group,
            original.kind,
            original.meta,
        )
        marked = paraphrased(original, table, "paraphrase")
        assert marked is not None and marked.messages == got.messages
        assert marked.meta == {**(original.meta or {}), META_KEY: "paraphrase"}
        assert paraphrased(prefixed(original, SINCERE_PREFIX), table) is None  # a prefixed copy is another text
    unknown = Dialogue([Message("user", "q"), Message("assistant", "an answer the table does not hold")], 1)
    assert paraphrased(unknown, table) is None
    assert paraphrased(Dialogue([Message("user", "hi")], 1), table) is None


def test_paraphrase_copies_reword_a_share_of_the_scenario_answers_and_keep_everything_else():
    """Only answers paraphrases.yaml rewords get a copy (another source's answers and prefixed copies have none);
    the copy is the original with that wording, same label, group, kind and source, so a grouped split keeps it
    with its original."""
    table = load_paraphrases()
    scenarios = [s for path in scenario_files()[:2] for s in load_scenarios(path)]
    written = scenario_dialogues(scenarios)
    pool = [*written, *_pool(), *sincerity_copies(written, 1.0, seed=0)]
    copies = paraphrase_copies(pool, share=0.5, seed=1)
    assert len(copies) == len(written) // 2  # half of each label's scenario answers, nothing else
    assert sum(c.label for c in copies) == len(copies) // 2
    for c in copies:
        same = [d for d in written if (d.group, d.label, d.messages[:-1]) == (c.group, c.label, c.messages[:-1])]
        assert len(same) == 1  # the same scenario in another format is another item
        original = same[0]
        assert c.messages[-1].content == table[original.messages[-1].content]
        assert (c.kind, c.meta[META_KEY]) == (original.kind, "paraphrase")
        assert {k: v for k, v in c.meta.items() if k != META_KEY} == original.meta
        assert META_KEY not in (original.meta or {})
    assert [c.messages[-1].content for c in paraphrase_copies(pool, 0.5, seed=1)] == [
        c.messages[-1].content for c in copies
    ]
    assert len(paraphrase_copies(pool, 1.0, seed=0)) == len(written)
    # the trainer copies every scenario answer (share_of), as measured; the others keep half
    assert augment_pool(pool, ["paraphrase"])[1] == {"paraphrase": len(written)} and share_of("sincerity") == 0.5
    assert paraphrase_copies(_pool(), 1.0) == []  # no scenario answer: no copy


def test_augmenting_twice_does_not_copy_copies():
    pool, added = augment_pool(_pool(), ["sincerity"])
    again, added_again = augment_pool(pool, ["sincerity"])
    assert added == added_again == {"sincerity": 20}
    assert sum(1 for d in again if d.meta.get(META_KEY)) == 40
    both, added_both = augment_pool(_pool(), ["sincerity", "monitoring"])
    assert added_both == {"sincerity": 20, "monitoring": 20}  # 40 answers; 42 labelled items, 21 per label
    assert [d.meta.get(META_KEY) for d in both[len(_pool()) :]] == ["sincerity"] * 20 + ["monitoring"] * 20


def test_defaults_per_behaviour_and_for_user_files():
    assert default_augment("deception", custom_data=False) == ("sincerity",) == DEFAULT_AUGMENT["deception"]
    assert default_augment("alignment_faking", custom_data=False) == ()  # measured no gain there: opt-in
    assert default_augment("refusal", custom_data=False) == ()
    for cue_probe in ("eval_awareness", "monitored_framing"):  # a watcher in the prompt is what they detect
        assert "monitoring" not in default_augment(cue_probe, custom_data=False)
    assert default_augment("deception", custom_data=True) == ()


def test_train_flag_parses_none_and_refuses_an_unknown_name():
    from probewatch.cli.train_cmd import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert config_from_args(parser.parse_args(["--behaviour", "deception"])).augment is None
    assert config_from_args(parser.parse_args(["--behaviour", "deception", "--augment", "none"])).augment == ()
    given = config_from_args(parser.parse_args(["--behaviour", "refusal", "--augment", "sincerity"]))
    assert given.augment == ("sincerity",)
    both = config_from_args(parser.parse_args(["--behaviour", "deception", "--augment", "sincerity,monitoring"]))
    assert both.augment == ("sincerity", "monitoring")
    wrong = config_from_args(parser.parse_args(["--behaviour", "deception", "--augment", "sincerity,shouting"]))
    with pytest.raises(TrainingError, match="unknown --augment shouting; known: sincerity"):
        check_config(wrong, 4, "tiny")


def test_prepare_data_adds_copies_only_when_asked_for_user_files_and_splits_keep_them_with_their_originals(
    tiny_loaded, tmp_path
):
    data, control = tmp_path / "pairs.jsonl", tmp_path / "control.jsonl"
    write_dialogues(data, synthetic_dialogues(n_groups=24))
    write_dialogues(control, control_dialogues())
    plain = TrainConfig(behaviour="deception", data_files=[data], control_file=control, layers=[1], progress=False)
    assert len(prepare_data(plain, tiny_loaded).data.pool) == 48  # user files: no copies by default

    asked = TrainConfig(
        behaviour="deception",
        data_files=[data],
        control_file=control,
        layers=[1],
        progress=False,
        augment=("sincerity", "monitoring"),
    )
    prepared = prepare_data(asked, tiny_loaded)
    assert len(prepared.data.pool) == 48 + 48
    assert prepared.data.notes["augmented"] == {"sincerity": 24, "monitoring": 24}
    splits = make_splits(asked, extract(asked, tiny_loaded, prepared, [1]), prepared.data)
    pool = splits.pool
    side = {}
    for name, idx in (("fit", pool.fit_idx), ("val", pool.val_idx), ("test", pool.test_idx)):
        for i in idx:
            side.setdefault(pool.groups[i], set()).add(name)
    assert all(len(s) == 1 for s in side.values())  # a copy never sits on another side than its original
    copies = [i for i, d in enumerate(prepared.data.pool) if d.meta.get(META_KEY)]
    assert len(copies) == 48 and all(len(side[pool.groups[i]]) == 1 for i in copies)
    noticed = [d for d in prepared.data.pool if d.meta.get(META_KEY) == "monitoring"]
    assert all(d.messages[0].role == "system" and d.messages[0].content in MONITORING_NOTICES for d in noticed)


def test_replaying_a_report_from_before_augmentation_adds_no_copies():
    from probewatch.training.replay import config_from_report

    old = {"config": {"behaviour": "deception", "layers": [7], "seed": 0}}
    assert config_from_report(old).augment == ()
    new = {"config": {"behaviour": "deception", "layers": [7], "augment": ["sincerity"]}}
    assert list(config_from_report(new).augment) == ["sincerity"]
