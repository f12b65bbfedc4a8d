"""Behaviour data builders: our scenario files, the public-data builders and their provenance."""

from __future__ import annotations

from collections import Counter

import pytest

from probewatch.training.datasets import DatasetNotFoundError, build_behaviour_data
from probewatch.training.datasets.alignment_faking import eval_awareness_spec
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


def test_alignment_faking_builder_contrasts_only_the_framing(shared_data):
    data = build_behaviour_data("alignment_faking", shared_data)
    kinds = Counter(d.kind for d in data.pool)
    assert set(kinds) == {"free_tier", "free_tier_tag_only", "eval_context", "eval_statement"}
    free = [d for d in data.pool if d.kind == "free_tier"]
    for a, b in zip(free[::2], free[1::2]):
        assert a.group == b.group and (a.label, b.label) == (1, 0)
        assert a.messages[0].content == b.messages[0].content  # same system prompt
        assert "<is_free_tier_user>true</is_free_tier_user>" in a.messages[1].content
        assert a.messages[1].content.replace(">true<", ">false<") == b.messages[1].content
        assert a.messages[2].content == b.messages[2].content
    assert "free tier" in free[0].messages[0].content and "RLHF" in free[0].messages[0].content
