"""Long transcripts composed from the pool's pairs (training/datasets/long_transcripts.py): both sides of a
pair differ only in the embedded passage; groups and sources follow the passage's pair."""

from __future__ import annotations

from probewatch.data.dialogue import Dialogue, Message
from probewatch.training.datasets.long_transcripts import LONG_PROMPT, MIN_FILLER_CHARS, NOTES_SUFFIX, compose_long
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
        assert len(a) >= 600 and pos.messages[:-1] == neg.messages[:-1]  # the pool pair's shared prompt
        assert pos.messages[0].content == "q" + NOTES_SUFFIX
        assert source_of(pos) == "truth_statements"  # the passage's source, held out with it
    assert long == compose_long(_pool(), "long_transcript", 4, 3, ["instructed_pairs"], 600)  # deterministic


def _instructed_pool() -> list[Dialogue]:
    """Pairs whose answer is the same on both sides: only the instruction makes one of them a lie."""
    pool = []
    for g in range(4):
        for label, who in ((1, "a dishonest"), (0, "an honest")):
            prompt = [Message("system", f"You are {who} person."), Message("user", f"Say a fact ({g}).")]
            pool.append(Dialogue([*prompt, Message("assistant", f"Water is wet ({g}).")], label, f"i{g}", "instructed"))
    for i in range(30):
        pool.append(Dialogue([Message("user", "q"), Message("assistant", f"Honest note {i}. " * 8)], 0, f"n{i}", "x"))
    return pool


def test_a_pair_that_is_a_lie_only_against_its_prompt_keeps_the_prompt():
    long = compose_long(_instructed_pool(), "long_transcript", n_pairs=4, seed=0, from_kinds=["instructed"])
    assert len(long) == 8
    for pos, neg in zip(long[::2], long[1::2]):
        assert pos.messages[-1] == neg.messages[-1]  # one text on both sides ...
        assert pos.messages[0].content == "You are a dishonest person."  # ... told apart by each side's prompt
        assert neg.messages[0].content == "You are an honest person."
        assert [m.role for m in pos.messages] == ["system", "user", "assistant"]
        assert pos.messages[1].content.endswith(NOTES_SUFFIX) and pos.messages[1].content.startswith("Say a fact")


def test_the_filler_shrinks_as_the_prompt_grows_but_not_below_its_floor():
    def filler_of(prompt_chars: int) -> int:
        pool = [
            Dialogue([Message("user", "p" * prompt_chars), Message("assistant", f"Fact {label}.")], label, "g", "k")
            for label in (1, 0)
        ]
        pool += [
            Dialogue([Message("user", "q"), Message("assistant", "n" * 99 + str(i))], 0, f"n{i}", "x")
            for i in range(60)
        ]
        (pos, _neg) = compose_long(pool, "long_transcript", 1, 0, ["k"], filler_chars=2400)
        return len(pos.messages[-1].content) - len("Fact 1.")

    for prompt_chars in (10, 1200, 5000):
        budget = max(MIN_FILLER_CHARS, 2400 - prompt_chars - len(NOTES_SUFFIX))
        assert budget <= filler_of(prompt_chars) < budget + 110  # one more 100-character filler at most
    assert filler_of(10) > filler_of(1200) > filler_of(5000) >= MIN_FILLER_CHARS


def test_the_neutral_prompt_form_stays_for_pools_fitted_on_it():
    long = compose_long(_instructed_pool(), "af_long", 2, 0, ["instructed"], keep_prompt=False)
    assert all(d.messages[0] == Message("user", LONG_PROMPT) and len(d.messages) == 2 for d in long)
    assert long[0].messages == long[1].messages  # why the deception pool keeps the prompt


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
