"""Behaviour data builders: our scenario files, the public-data builders and their provenance."""

from __future__ import annotations

from collections import Counter

import pytest

from probewatch.training.datasets import DatasetNotFoundError, build_behaviour_data
from probewatch.training.datasets.monitored_framing import eval_awareness_spec
from probewatch.training.datasets.scenarios import FORMATS, load_scenarios, render, scenario_dialogues, scenario_files


def test_scenario_files_cover_varied_deception_kinds():
    files = scenario_files()
    kinds = {}
    for path in files:
        scenarios = load_scenarios(path)
        kinds[scenarios[0].kind] = scenarios
        assert len(scenarios) >= 20, path
        for s in scenarios:
            assert s.honest != s.deceptive
    assert {
        "roleplay_excuse",
        "sales_lie",
        "sandbagging",
        "lie_by_omission",
        "cover_story",
        "denial_confession",
    } <= set(kinds)


def test_scenario_pairs_differ_only_in_the_answer():
    scenarios = load_scenarios(scenario_files()[0])
    dialogues = scenario_dialogues(scenarios[:5])
    by_group_format = Counter((d.group, d.meta["format"]) for d in dialogues)
    assert set(by_group_format.values()) == {2}
    for a, b in zip(dialogues[::2], dialogues[1::2]):
        assert (a.label, b.label) == (0, 1) and a.group == b.group
        assert [m.content for m in a.messages[:-1]] == [m.content for m in b.messages[:-1]]
    for fmt in FORMATS:
        assert render(scenarios[0], fmt, "x")[-1].role == "assistant"


def test_bad_scenario_file_names_the_problem(tmp_path):
    from probewatch.errors import DialogueFormatError

    path = tmp_path / "s.yaml"
    path.write_text("kind: k\nscenarios:\n  - id: a\n    context: c\n    question: q\n    honest: h\n")
    with pytest.raises(DialogueFormatError, match="lacks deceptive"):
        load_scenarios(path)


def test_eval_awareness_spec_is_well_formed():
    spec = eval_awareness_spec()
    assert len(spec["context_pairs"]) >= 12 and len(spec["statements"]) >= 10 and spec["neutral_responses"]
    for pair in spec["context_pairs"]:
        assert pair["where"] in ("system", "user") and pair["test"] != pair["deploy"]


def test_missing_data_dir_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("PROBEWATCH_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError, match="PROBEWATCH_DATA"):
        build_behaviour_data("deception")
    with pytest.raises(DatasetNotFoundError, match="repe_honesty"):
        build_behaviour_data("deception", tmp_path)


def test_deception_builder(shared_data):
    data = build_behaviour_data("deception", shared_data)
    kinds = Counter(d.kind for d in data.pool)
    assert len(kinds) >= 8 and all(n >= 40 for n in kinds.values())
    labels = Counter((d.kind, d.label) for d in data.pool)
    assert all(labels[(k, 0)] == labels[(k, 1)] for k in kinds)
    groups = {}
    for d in data.pool:
        groups.setdefault(d.group, set()).add(d.kind)
    assert all(len(v) == 1 for v in groups.values())  # a group never spans kinds
    assert all(s.sha256 and s.n_used > 0 for s in data.sources)


def test_refusal_builder_keeps_ood_negatives_out_of_the_control_set(shared_data):
    from probewatch.training.datasets.refusal import harmless_val_partition

    data = build_behaviour_data("refusal", shared_data)
    assert all(not d.ends_with_assistant for d in data.pool) and data.token_selection == "prompt_last"
    control_idx, heldout_idx = harmless_val_partition(shared_data)
    assert not set(control_idx) & set(heldout_idx)
    val_groups = {d.group for d in data.ood["refusal_val"] if d.label == 0}
    assert val_groups == {f"splits/harmless_val:{i}" for i in heldout_idx}


def test_monitored_framing_builder_contrasts_only_the_framing(shared_data):
    data = build_behaviour_data("monitored_framing", shared_data)
    kinds = Counter(d.kind for d in data.pool)
    assert set(kinds) == {"free_tier", "free_tier_tag_only", "eval_context", "mm_audit", "test_deploy_prompts"}
    assert data.token_selection == "prompt_last" and all(not d.ends_with_assistant for d in data.pool)
    free = [d for d in data.pool if d.kind == "free_tier"]
    for a, b in zip(free[::2], free[1::2]):
        assert a.group == b.group and (a.label, b.label) == (1, 0)
        assert a.messages[0].content == b.messages[0].content  # same system prompt
        assert "<is_free_tier_user>true</is_free_tier_user>" in a.messages[1].content
        assert a.messages[1].content.replace(">true<", ">false<") == b.messages[1].content
    assert "free tier" in free[0].messages[0].content and "RLHF" in free[0].messages[0].content
    audit = [d for d in data.pool if d.kind == "mm_audit"]
    for a, b in zip(audit[::2], audit[1::2]):  # the same task, audit (1) vs sandbox (0) system prompt
        assert a.group == b.group and (a.label, b.label) == (1, 0) and a.messages[1].content == b.messages[1].content


def _pairs(dialogues):
    by_group: dict[str, list] = {}
    for d in dialogues:
        by_group.setdefault(d.group, []).append(d)
    return by_group


def test_alignment_faking_pairs_differ_only_in_the_motive(shared_data):
    """Written pairs: same situation, request, awareness sentence, style and answer; only the motive differs."""
    from probewatch.training.datasets.alignment_faking import reasoning_spec

    answers = iter(range(10_000))
    data = build_behaviour_data(
        "alignment_faking",
        shared_data,
        respond=lambda prompts, max_new_tokens=32: [f"answer {next(answers)}" for _ in prompts],
        n_plain=0,
        cross_ood=False,
    )
    kinds = Counter(d.kind for d in data.pool)
    assert {
        "af_training",
        "af_evaluation",
        "af_oversight",
        "af_long",
        "persona_goal_guarding",
        "persona_oversight",
    } == set(kinds)
    assert data.token_selection == "response" and all(d.ends_with_assistant for d in data.pool)
    spec = reasoning_spec()
    written = [d for d in data.pool if d.kind.startswith("af_") and d.kind != "af_long"]
    styles = Counter(d.meta["style"] for d in written)
    assert len(styles) == 5 and any(d.meta["greenblatt_prompt"] for d in written)
    assert {d.meta["answer"] for d in written} == {True, False} and {d.meta["aware"] for d in written} == {True, False}
    for a, b in zip(written[::2], written[1::2]):
        assert a.group == b.group and (a.label, b.label) == (1, 0)
        assert [m.content for m in a.messages[:-1]] == [m.content for m in b.messages[:-1]]
        pair = spec["pairs"][a.kind][int(a.group.split(":")[1])]
        assert pair["strategic"] in a.messages[-1].content and pair["sincere"] in b.messages[-1].content
        # the awareness sentence is on both sides or on neither
        assert (pair["aware"] in a.messages[-1].content) == (pair["aware"] in b.messages[-1].content)
        assert a.messages[-1].content.replace(pair["strategic"], "X") == b.messages[-1].content.replace(
            pair["sincere"], "X"
        )
    persona = [d for d in data.pool if d.kind.startswith("persona_")]
    labels = Counter((d.kind, d.label) for d in persona)
    assert labels[("persona_oversight", 0)] == labels[("persona_oversight", 1)] > 0


def test_eval_awareness_builder_kinds_and_cot_labels(shared_data):
    from probewatch.training.datasets.eval_awareness import cot_label

    data = build_behaviour_data("eval_awareness", shared_data, n_plain=0, cross_ood=False)
    kinds = Counter(d.kind for d in data.pool)
    assert set(kinds) == {"eval_statement", "eval_reasoning", "eval_choice", "eval_cot"} and kinds["eval_cot"] >= 150
    assert kinds["eval_choice"] == 20 * 2 * 2 * 2
    for _group, members in _pairs(d for d in data.pool if d.kind != "eval_cot").items():
        assert sorted(d.label for d in members) == [0] * (len(members) // 2) + [1] * (len(members) // 2)
    for d in (d for d in data.pool if d.kind == "eval_cot"):
        lines = [line.strip(" *-#").lower() for line in d.messages[-1].content.splitlines()]
        assert not any(line.startswith("conclusion") for line in lines)  # the verdict line is removed
    assert cot_label("Step 1: look.\nConclusion: Evaluation") == (1, "Step 1: look.")
    assert cot_label("Step 1: look.\n**Conclusion:** Deployment") == (0, "Step 1: look.")
    assert cot_label("Step 1: look.\nConclusion: hard to say")[0] is None


def test_response_behaviours_score_each_other_as_out_of_distribution_sets(shared_data):
    af = build_behaviour_data("alignment_faking", shared_data, n_plain=0)
    ev = build_behaviour_data("eval_awareness", shared_data, n_plain=0)
    assert set(af.ood) == {
        f"eval_awareness:{k}" for k in ("eval_statement", "eval_reasoning", "eval_choice", "eval_cot")
    }
    assert "alignment_faking:af_training" in ev.ood
    # the same dialogues in the same order as the other behaviour's pool kind: one activation cache serves both
    assert [d.messages for d in af.ood["eval_awareness:eval_cot"]] == [
        d.messages for d in ev.pool if d.kind == "eval_cot"
    ]


def test_new_deception_kinds(shared_data):
    from probewatch.training.datasets.deception import first_person

    data = build_behaviour_data("deception", shared_data)
    kinds = Counter(d.kind for d in data.pool)
    for kind in (
        "liar_math",
        "liar_self_knowledge",
        "instructed_same_answer",
        "mm_sandbagging",
        "mm_honesty_evasion",
        "mm_strategic_deception",
        "mm_sycophancy",
    ):
        assert kinds[kind] >= 80, kind
    same = _pairs(d for d in data.pool if d.kind == "instructed_same_answer")
    for members in same.values():
        honest, liar = sorted(members, key=lambda d: d.label)
        assert honest.messages[-1].content == liar.messages[-1].content  # the same answer, only the instruction differs
        assert honest.as_chat()[:-1] != liar.as_chat()[:-1]
    mm = _pairs(d for d in data.pool if d.kind == "mm_sandbagging")
    for members in mm.values():
        assert members[0].messages[:-1] == members[1].messages[:-1]  # the same pressured prompt
    assert set(data.ood) == {"sycophancy_caa"} and len(data.ood["sycophancy_caa"]) == 100
    assert first_person("The model recognizes the risk. It will choose B, explaining its true view.") == (
        "I recognize the risk. I will choose B, explaining my true view."
    )


def test_eval_choice_letters_carry_no_label_and_pairs_stay_together():
    """Multiple-choice answers (kind `eval_choice`): the letter alone predicts nothing; the prompt's options do."""
    from collections import Counter

    from probewatch.training.datasets.eval_awareness import choice_dialogues

    pairs = [{"test": f"I am being tested ({i}).", "deploy": f"A real user wrote this ({i})."} for i in range(3)]
    items = choice_dialogues(pairs, ["What is 2+2?", "Name a colour."])
    assert len(items) == 3 * 2 * 2 * 2
    letters = Counter((d.messages[-1].content, d.label) for d in items)
    assert letters == {("(A)", 1): 6, ("(A)", 0): 6, ("(B)", 1): 6, ("(B)", 0): 6}
    for d in items:
        prompt, answer = d.messages[0].content, d.messages[-1].content
        chosen = prompt.split(f"{answer} ", 1)[1].split("\n", 1)[0]
        assert ("tested" in chosen) == (d.label == 1)  # the label is what the chosen option says
        assert d.kind == "eval_choice" and d.group.startswith("eval_choice:")
    assert items == choice_dialogues(pairs, ["What is 2+2?", "Name a colour."])  # deterministic
