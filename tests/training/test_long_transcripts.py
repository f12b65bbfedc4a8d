"""Long transcripts composed from the pool's pairs (training/datasets/long_transcripts.py): both sides of a
pair differ only in the embedded passage; groups and sources follow the passage's pair."""

from __future__ import annotations

from probewatch.data.dialogue import Dialogue, Message
from probewatch.training.datasets.long_transcripts import compose_long
from probewatch.training.sources import source_of


def _pool() -> list[Dialogue]:
    pool = []
    for g in range(6):
        for label, text in ((1, f"The moon is made of cheese ({g})."), (0, f"The moon is made of rock ({g}).")):
            pool.append(
                Dialogue([Message("user", "q"), Message("assistant", text)], label, f"p{g}", "instructed_pairs")
            )
    for i in range(30):
        pool.append(
            Dialogue(
                [Message("user", "q"), Message("assistant", f"Honest note {i}. " * 8)], 0, f"n{i}", "liar_questions"
            )
        )
    return pool


def test_pairs_differ_only_in_the_passage():
    long = compose_long(
        _pool(), "long_transcript", n_pairs=4, seed=3, from_kinds=["instructed_pairs"], filler_chars=600
    )
    assert len(long) == 8 and [d.label for d in long] == [1, 0] * 4
    for pos, neg in zip(long[::2], long[1::2]):
        assert pos.group == neg.group and pos.group.startswith("long_transcript:p")
        a, b = pos.messages[-1].content, neg.messages[-1].content
        assert "cheese" in a and "cheese" not in b and a.replace("cheese", "rock") == b
        assert len(a) >= 600 and pos.messages[0].content == neg.messages[0].content
        assert source_of(pos) == "truth_statements"  # the passage's source, held out with it
    assert long == compose_long(_pool(), "long_transcript", 4, 3, ["instructed_pairs"], 600)  # deterministic


def test_no_pairs_no_transcripts():
    unpaired = [d for d in _pool() if d.label == 0]
    assert compose_long(unpaired, "long_transcript", 4, 0) == []


def test_generated_long_transcripts_share_the_models_reasoning_and_differ_in_the_answer(tiny_loaded):
    """`long_generated`: one real generation per pair (the tiny model, cached), both sides the same up to the answer."""
    from probewatch import envs
    from probewatch.training.datasets.control import cached_responses
    from probewatch.training.datasets.long_transcripts import ANSWER_LEAD, REASON_SUFFIX, generate_long

    asked: list[tuple[list, dict]] = []

    def respond(prompts, **kw):
        asked.append((list(prompts), kw))
        return cached_responses(tiny_loaded, prompts, 12, "responses", False, kw.get("repetition_penalty"))

    long = generate_long(_pool(), "long_generated", n_pairs=3, seed=0, respond=respond)
    assert len(long) == 6 and [d.label for d in long] == [1, 0] * 3
    [(prompts, kw)] = asked  # one batch, one generation per pair
    assert len(prompts) == 3 and all(p == "q" + REASON_SUFFIX for p in prompts)
    assert kw == {"max_new_tokens": 896, "repetition_penalty": 1.3}
    for pos, neg in zip(long[::2], long[1::2]):
        a, b = pos.messages[-1].content, neg.messages[-1].content
        reasoning = a.split(ANSWER_LEAD)[0]
        assert reasoning and b.startswith(reasoning + ANSWER_LEAD)  # the same model text on both sides
        assert "cheese" in a.split(ANSWER_LEAD)[-1] and "rock" in b.split(ANSWER_LEAD)[-1] and "cheese" not in b
        assert pos.group == neg.group and pos.group.startswith("long_generated:p") and pos.kind == "long_generated"
        assert source_of(pos) == "truth_statements" and pos.meta["reasoning_chars"] == len(reasoning)
    cache = list((envs.generated_data_dir()).rglob("responses-t12-rp1.3.json"))
    assert len(cache) == 1  # the penalty is part of the cache's name: other settings never share answers
    again = generate_long(_pool(), "long_generated", 3, 0, respond)
    assert again == long  # deterministic and served from the cache
    assert generate_long([d for d in _pool() if d.label == 0], "long_generated", 3, 0, respond) == []
