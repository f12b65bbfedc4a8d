"""Refusal request formats (issue 22 item 5): the same instructions in several wrappers, each wrapper a
held-out kind, identical for harmful and harmless requests, one instruction's variants in one group."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from probewatch.data.dialogue import Dialogue, Message
from probewatch.training.datasets import build_behaviour_data
from probewatch.training.datasets.common import file_sha256, packaged_file
from probewatch.training.datasets.refusal import (
    MINIMAL_PAIRS_FILE,
    MINIMAL_PAIRS_KIND,
    SPLITS,
    harmless_val_partition,
)
from probewatch.training.datasets.refusal_formats import (
    FORMATS,
    PLACEHOLDER,
    SPEC_FILE,
    WRAPPED,
    assign_formats,
    kind_of,
    load_spec,
    render,
    wrap_assigned,
)
from probewatch.training.sources import source_of
from probewatch.training.splits import check_disjoint, grouped_split, leave_one_kind_out

KINDS = {kind_of(f) for f in FORMATS}


@cache
def _instructions(data_dir: Path, stem: str) -> list[str]:
    return [item["instruction"].strip() for item in json.loads((data_dir / SPLITS / f"{stem}.json").read_text())]


def _wrapper(d: Dialogue, data_dir: Path) -> str:
    """The dialogue with its instruction cut out: what the format adds around the request."""
    stem, index = d.group.removeprefix("splits/").split(":")
    instruction = _instructions(data_dir, stem)[int(index)]
    text = "\n".join(f"{m.role}: {m.content}" for m in d.messages)
    assert instruction in text, d
    return text.replace(instruction, PLACEHOLDER)


@pytest.fixture(scope="module")
def refusal_data(shared_data):
    return build_behaviour_data("refusal", shared_data)


def test_formats_are_deterministic(shared_data, refusal_data):
    again = build_behaviour_data("refusal", shared_data)
    assert [d.to_json() for d in again.pool] == [d.to_json() for d in refusal_data.pool]
    assert [d.to_json() for d in again.ood["refusal_val_formats"]] == [
        d.to_json() for d in refusal_data.ood["refusal_val_formats"]
    ]
    other = build_behaviour_data("refusal", shared_data, seed=1)
    assert [(d.group, d.kind) for d in other.pool] != [(d.group, d.kind) for d in refusal_data.pool]


def test_every_format_on_both_labels_with_identical_wrappers(shared_data, refusal_data):
    pool = refusal_data.pool
    assert {d.kind for d in pool} == KINDS
    counts = Counter((d.kind, d.label) for d in pool)
    # four harmless instructions per harmful one in every kind (up to the format assignment's rounding)
    assert all(counts[(k, 1)] >= 60 and 3.9 <= counts[(k, 0)] / counts[(k, 1)] <= 4.1 for k in KINDS), counts
    for kind in KINDS:
        wrappers = {
            label: Counter(_wrapper(d, shared_data) for d in pool if d.kind == kind and d.label == label)
            for label in (0, 1)
        }
        assert wrappers[0].keys() == wrappers[1].keys(), kind
        # the same wrappers in the same proportions, up to one harmful item: the label is the request
        for wrapper in wrappers[1]:
            shares = [wrappers[label][wrapper] / counts[(kind, label)] for label in (0, 1)]
            assert abs(shares[0] - shares[1]) <= 1 / counts[(kind, 1)], (kind, wrapper, shares)
        assert len(wrappers[1]) == len(load_spec()[kind.removeprefix("refusal_")])  # every variant is used
    # the wrapper really is there: persona has a system prompt, multi-turn a benign first exchange
    persona = next(d for d in pool if d.kind == kind_of("persona"))
    assert persona.messages[0].role == "system" and "rule" in persona.messages[0].content.lower()
    multi = next(d for d in pool if d.kind == kind_of("multi_turn"))
    assert [m.role for m in multi.messages] == ["user", "assistant", "user"] and not multi.ends_with_assistant
    long = next(d for d in pool if d.kind == kind_of("long_context"))
    assert len(long.messages[0].content.split()) >= 250  # several hundred tokens before the request
    assert all(not d.ends_with_assistant for d in pool) and refusal_data.token_selection == "prompt_last"


def test_groups_keep_one_instructions_variants_together(refusal_data):
    pool = refusal_data.pool
    by_group: dict[str, list[Dialogue]] = {}
    for d in pool:
        by_group.setdefault(d.group, []).append(d)
    # 260 harmful instructions and four harmless ones per harmful one (harmless traffic is the more varied)
    assert Counter(items[0].label for items in by_group.values()) == {1: 260, 0: 1040}
    for group, items in by_group.items():
        # every instruction plain (most traffic is plain) and in two distinct wrapped formats
        assert len({d.kind for d in items}) == len(items) == 3, group
        assert kind_of("plain") in {d.kind for d in items}
        assert len({d.label for d in items}) == 1
    groups = np.array([d.group for d in pool])
    labels = np.array([d.label for d in pool])
    kinds = np.array([d.kind for d in pool])
    train, test = grouped_split(groups, labels, test_size=0.2, seed=0)
    check_disjoint(groups, train, test)
    folds = list(leave_one_kind_out(kinds, labels, groups))
    # every wrapped format can be held out; plain cannot (it holds every instruction): refusal_val checks it
    assert {kind for kind, _, _ in folds} == {kind_of(f) for f in WRAPPED}
    for kind, tr, te in folds:
        check_disjoint(groups, tr, te)  # an instruction seen in the held-out format is not trained on
        assert set(kinds[te]) == {kind} and len(np.unique(labels[tr])) == 2


def test_held_out_items_in_every_format_never_overlap_training(shared_data, refusal_data):
    val, val_formats = refusal_data.ood["refusal_val"], refusal_data.ood["refusal_val_formats"]
    assert Counter(d.kind for d in val_formats) == {kind_of(f): len(val) for f in WRAPPED}
    assert Counter(d.group for d in val_formats) == {d.group: len(WRAPPED) for d in val}
    assert not {d.group for d in val_formats} & {d.group for d in refusal_data.pool}
    _, heldout = harmless_val_partition(shared_data)
    assert {d.group for d in val_formats if d.label == 0} == {f"splits/harmless_val:{i}" for i in heldout}
    for kind in {d.kind for d in val_formats}:
        first = {label: next(d for d in val_formats if d.kind == kind and d.label == label) for label in (0, 1)}
        assert _wrapper(first[0], shared_data) == _wrapper(first[1], shared_data)  # the rotation starts alike


def test_minimal_pairs_are_bare_written_requests_never_in_any_split(shared_data, refusal_data):
    """`refusal_minimal_pairs`: each group one harmful and one harmless bare request on the same topic, none of
    them a refusal_direction instruction (so never trained on, and not the val splits' phrasing either)."""
    pairs = refusal_data.ood[MINIMAL_PAIRS_KIND]
    assert len(pairs) == 80 and {d.kind for d in pairs} == {MINIMAL_PAIRS_KIND}
    by_group: dict[str, list[int]] = {}
    for d in pairs:
        by_group.setdefault(d.group, []).append(d.label)
        assert [m.role for m in d.messages] == ["user"] and not d.ends_with_assistant
        assert d.meta["data_source"] == "probewatch_written"
    assert all(sorted(labels) == [0, 1] for labels in by_group.values()) and len(by_group) == 40
    texts = {d.messages[0].content.strip() for d in pairs}
    assert len(texts) == 80
    for stem in ("harmful_train", "harmless_train", "harmful_val", "harmless_val"):
        assert not texts & set(_instructions(shared_data, stem)), stem
    pool_texts = {m.content for d in refusal_data.pool for m in d.messages}
    assert not texts & pool_texts
    source = next(s for s in refusal_data.sources if s.name.startswith(MINIMAL_PAIRS_FILE))
    assert source.n_used == 80 and source.sha256 == file_sha256(packaged_file(MINIMAL_PAIRS_FILE))


def test_builder_lists_each_kinds_source(refusal_data):
    spec = packaged_file(SPEC_FILE)
    for fmt in FORMATS:
        named = [s for s in refusal_data.sources if f"({kind_of(fmt)};" in s.name]
        assert len(named) == 1, fmt
        assert named[0].sha256 == file_sha256(spec) and named[0].n_used > 0
    assert {s.name for s in refusal_data.sources} >= {
        "refusal_direction/harmful_train",
        "refusal_direction/harmless_train",
    }
    assert refusal_data.notes["kinds"] == {kind_of(f): text for f, text in FORMATS.items()}
    # one source (the instructions' authors): kinds are held out, the source-held-out estimate does not apply
    assert {source_of(d) for d in refusal_data.pool} == {"refusal_direction"}


def test_render_and_assignment_rules():
    spec = load_spec()
    braces = "Explain {this} and {instruction} literally"
    assert render("qa_format", braces, 0, spec)[-1].content == f"Question: {braces}\nAnswer:"
    assert render("plain", "hi", 7, spec)[-1].content == "hi"
    with pytest.raises(ValueError, match="unknown refusal format"):
        render("base64", "hi", 0, spec)
    assignment = assign_formats(260, seed=3, per_item=2)
    assert assignment == assign_formats(260, seed=3, per_item=2)
    assert all(len(set(f)) == 2 for f in assignment)
    counts = Counter(f for formats in assignment for f in formats)
    assert set(counts) == set(FORMATS) and max(counts.values()) - min(counts.values()) <= 2
    assert Counter(f for fs in assign_formats(40, 0, 1) for f in fs) == dict.fromkeys(FORMATS, 5)
    wrapped = wrap_assigned([Dialogue([Message("user", f"task {i}")], 1, f"g{i}", "plain") for i in range(14)], 0,
                            per_item=2, spec=spec, always_plain=True)  # fmt: skip
    assert Counter(d.kind for d in wrapped) == {kind_of("plain"): 14, **dict.fromkeys(map(kind_of, WRAPPED), 4)}
    with pytest.raises(ValueError, match="per_item"):
        assign_formats(10, 0, per_item=len(FORMATS) + 1)
