"""`AnswerAggregator` on its own: the prompt's options are parsed once per generation, whatever the reply's length,
and the value is the offline rule's (`selection_mask`) on the same tokens."""

from __future__ import annotations

import numpy as np
import pytest

import probewatch.server.sidecar.answers as answers
from probewatch.probes.aggregate import aggregate
from probewatch.probes.manifest import Aggregation
from probewatch.probes.selection import selection_mask
from probewatch.probes.vocab import Vocabulary, vocab_tensors
from probewatch.server.sidecar.specs import ProbeSpec

WORDS = [f" w{i}" for i in range(50)]
PIECES = [*WORDS, "\n", "(A)", "(B)", "(C)", " yes", " no", "Answer", ":"]
ID = {p: i for i, p in enumerate(PIECES)}


def _spec(aggregation: str = "mean") -> ProbeSpec:
    vocab = Vocabulary.from_tensors(vocab_tensors(PIECES))
    return ProbeSpec(
        "p", "eval_awareness", "linear", 0, "answer", Aggregation(aggregation), 0.0, "1", "fp", vocabulary=vocab
    )


@pytest.mark.parametrize("aggregation", ["mean", "max", "softmax"])
def test_prompt_parsed_once_and_value_equals_offline(aggregation, monkeypatch):
    calls = []
    real = answers.option_positions
    monkeypatch.setattr(answers, "option_positions", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(1)
    prompt = [int(t) for t in rng.integers(0, 50, 300)]
    for letter in "ABC":
        prompt += [ID["\n"], ID[f"({letter})"], ID[" yes"], ID[" no"]]
    prompt += [ID["\n"], ID["Answer"], ID[":"]]
    reply = [ID["(B)"], *[int(t) for t in rng.integers(0, 50, 90)]]  # longer than the 64 tokens the rule reads
    tokens = np.asarray(prompt + reply)
    scores = rng.standard_normal(len(tokens))
    agg = answers.AnswerAggregator(_spec(aggregation), len(prompt))
    positions = np.arange(len(prompt))
    agg.tokens(positions, tokens[: len(prompt)])
    agg.add(positions, scores[: len(prompt), None])
    for p in range(len(prompt), len(tokens)):  # one token per chunk, the value read after each
        agg.tokens(np.array([p]), tokens[p : p + 1])
        agg.add(np.array([p]), scores[p : p + 1, None])
        _ = agg.value
    assert len(calls) == 1
    every = np.arange(len(tokens))
    mask = selection_mask("answer", every, len(prompt), pieces=[PIECES[t] for t in tokens])
    assert every[mask].tolist() == [len(prompt) - 9, len(prompt) - 8]  # option B's " yes no"
    assert agg.value == pytest.approx(aggregate(scores[mask], Aggregation(aggregation)))
    assert agg.count == 2


def test_the_update_of_a_plain_aggregator_is_refused():
    agg = answers.AnswerAggregator(_spec(), 3)
    with pytest.raises(TypeError, match="need their positions"):
        agg.update([1.0])
